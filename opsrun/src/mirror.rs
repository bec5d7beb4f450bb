//! Adapter runs: domain workflows that keep their own record (a restore,
//! say) get one shadow run per record, so Monitoring → Operations and
//! notifications cover them too. No run exists before the record is
//! `previewed`; from then on the run follows the record (`queued`, `running`,
//! `completed` with the mapped outcome) and never moves back. A shadow run is
//! never dispatched or reclaimed: the domain executes itself. Calls are
//! idempotent: repeating one, or a stale one arriving late, changes nothing.

use serde_json::json;

use crate::error::{Error, Result};
use crate::identity::strict_identity_hash;
use crate::ledger::Ledger;
use crate::ledger::NewRun;
use crate::registry::{IdentityRule, Registry};
use crate::request::RunRequest;
use crate::run::{Failure, Outcome, Run, Status, SummaryCounts, fold_failures};
use crate::sanitize;
use crate::service::RunService;

/// Failure code of a run whose domain record was cancelled (the run outcome
/// `cancelled` stays reserved).
pub const DOMAIN_CANCELLED: &str = "domain.cancelled";

/// Longest domain record id.
pub const MAX_DOMAIN_ID_CHARS: usize = 200;

/// Where a domain record stands, in the words domain workflows use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainStatus {
    /// Being drafted: no run yet.
    Draft,
    /// Being previewed: no run yet.
    Previewing,
    /// Previewed and ready to execute: the run is `queued`.
    Previewed,
    /// Accepted for execution: the run is `queued`.
    Queued,
    /// Executing: the run is `running`.
    Running,
    /// Done, everything succeeded.
    Succeeded,
    /// Done, some items failed.
    PartiallySucceeded,
    /// Done, failed.
    Failed,
    /// Stopped by someone: the run fails with `domain.cancelled`.
    Cancelled,
}

/// Every status, with its spelling.
const SPELLINGS: [(DomainStatus, &str); 9] = [
    (DomainStatus::Draft, "draft"),
    (DomainStatus::Previewing, "previewing"),
    (DomainStatus::Previewed, "previewed"),
    (DomainStatus::Queued, "queued"),
    (DomainStatus::Running, "running"),
    (DomainStatus::Succeeded, "succeeded"),
    (DomainStatus::PartiallySucceeded, "partially_succeeded"),
    (DomainStatus::Failed, "failed"),
    (DomainStatus::Cancelled, "cancelled"),
];

impl std::str::FromStr for DomainStatus {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        SPELLINGS
            .iter()
            .find(|(_, spelling)| *spelling == s)
            .map(|(status, _)| *status)
            .ok_or_else(|| {
                let known: Vec<&str> = SPELLINGS.iter().map(|(_, s)| *s).collect();
                Error::invalid(
                    "domain_status",
                    format!(
                        "{s:?} is not a domain status: use one of {}",
                        known.join(", ")
                    ),
                )
            })
    }
}

impl DomainStatus {
    /// The run status and outcome this record status maps to; `None` before
    /// the record is previewed.
    pub fn run_state(self) -> Option<(Status, Outcome)> {
        use DomainStatus::*;
        match self {
            Draft | Previewing => None,
            Previewed | Queued => Some((Status::Queued, Outcome::Pending)),
            Running => Some((Status::Running, Outcome::Pending)),
            Succeeded => Some((Status::Completed, Outcome::Succeeded)),
            PartiallySucceeded => Some((Status::Completed, Outcome::PartiallySucceeded)),
            Failed | Cancelled => Some((Status::Completed, Outcome::Failed)),
        }
    }
}

/// How far along the lifecycle a status is; runs only move forward.
fn rank(status: Status) -> u8 {
    match status {
        Status::Queued => 0,
        Status::Running => 1,
        Status::Completed => 2,
    }
}

/// One report of a domain record's state.
#[derive(Debug, Clone, PartialEq)]
pub struct MirrorRequest {
    /// Tenant, run type, initiator and context of the shadow run (its
    /// inputs are set to `{"domain_id": ...}`; queue and `not_before` are unused).
    pub run: RunRequest,
    /// The domain record's id.
    pub domain_id: String,
    /// Where the record stands.
    pub status: DomainStatus,
    /// Item counts, for a finished record.
    pub summary_counts: SummaryCounts,
    /// Failures, for a finished record (sanitized and folded here).
    pub failures: Vec<Failure>,
}

impl MirrorRequest {
    /// Check every field (no I/O) and return the shadow run's request, its
    /// inputs set to `{"domain_id": ...}`.
    pub fn validate(&self) -> Result<RunRequest> {
        let id = &self.domain_id;
        crate::request::check_label("domain_id", id, MAX_DOMAIN_ID_CHARS)?;
        let mut run = self.run.clone();
        run.inputs = json!({ "domain_id": id });
        run.validate()?;
        Ok(run)
    }
}

/// What a mirror call did.
#[derive(Debug, Clone, PartialEq)]
pub struct Mirrored {
    /// The shadow run as it stands; `None` while the record is not previewed.
    pub run: Option<Run>,
    /// Whether this call created or moved it.
    pub changed: bool,
}

/// How often a transition is retried when a concurrent call moved the run.
const MIRROR_ROUNDS: usize = 4;

impl RunService {
    /// Bring the shadow run of a domain record in line with the record (see [`apply`]).
    pub async fn mirror(&self, request: &MirrorRequest) -> Result<Mirrored> {
        apply(self.ledger(), self.registry(), request).await
    }
}

/// Bring the shadow run of a domain record in line with the record: create
/// it once the record is previewed (the type's queue and lease from
/// `registry`, a strict identity over the domain id), then move it forward.
/// Needs no Redis: nothing is dispatched.
pub async fn apply(
    ledger: &Ledger,
    registry: &Registry,
    request: &MirrorRequest,
) -> Result<Mirrored> {
    let run_request = request.validate()?;
    let domain_id = request.domain_id.as_str();
    let spec = registry.spec(&run_request.run_type)?;
    let rule = IdentityRule::Strict {
        keys: vec!["domain_id".to_string()],
    };
    let keys = ["domain_id".to_string()];
    let identity = strict_identity_hash(
        run_request.tenant_id,
        &run_request.run_type,
        &run_request.inputs,
        &keys,
    )
    .expect("domain_id is set");

    let Some((target, outcome)) = request.status.run_state() else {
        let run = ledger
            .run_by_strict_identity(run_request.tenant_id, &identity)
            .await?;
        return Ok(Mirrored {
            run,
            changed: false,
        });
    };
    let new = NewRun {
        request: &run_request,
        queue: run_request.queue.as_deref().unwrap_or(&spec.queue),
        identity: &identity,
        rule: &rule,
        max_attempts: 1,
        lease_seconds: spec.lease.as_secs().clamp(1, i32::MAX as u64) as i32,
        domain_id: Some(domain_id),
        // Never dispatched: no stream, no claim, no slot.
        shard: 0,
        concurrency_key: None,
    };
    let (mut run, mut changed) = ledger.insert_or_get(&new).await?;
    if run.domain_id.as_deref() != Some(domain_id) {
        return Err(Error::invalid(
            "domain_id",
            format!(
                "run {} holds this identity but does not mirror a domain record",
                run.id
            ),
        ));
    }
    let mut failures: Vec<Failure> = request
        .failures
        .iter()
        .cloned()
        .map(sanitize::sanitize_failure)
        .collect();
    if request.status == DomainStatus::Cancelled {
        failures.push(sanitize::failure(
            DOMAIN_CANCELLED,
            "the domain record was cancelled",
        ));
    }
    let failures = fold_failures(failures);
    for _ in 0..MIRROR_ROUNDS {
        if rank(run.status) >= rank(target) {
            return Ok(Mirrored {
                run: Some(run),
                changed,
            });
        }
        // Through running on the way to completed, so the timeline has a start.
        let (next, next_outcome, counts, next_failures) = if run.status == Status::Queued {
            (
                Status::Running,
                Outcome::Pending,
                SummaryCounts::default(),
                &[][..],
            )
        } else {
            (target, outcome, request.summary_counts, &failures[..])
        };
        match ledger
            .update_status(
                run.tenant_id,
                run.id,
                run.status,
                next,
                next_outcome,
                &counts,
                next_failures,
            )
            .await?
        {
            Some(moved) => {
                run = moved;
                changed = true;
            }
            // A concurrent call moved it: look again.
            None => match ledger.get(run.tenant_id, run.id).await? {
                Some(current) => run = current,
                None => {
                    return Err(Error::invalid(
                        "domain_id",
                        "the run of this record was deleted meanwhile",
                    ));
                }
            },
        }
    }
    Ok(Mirrored {
        run: Some(run),
        changed,
    })
}
