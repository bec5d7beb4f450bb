//! The run: one row of `operation_runs`, its status and outcome vocabulary,
//! summary counts and failures, and which status transitions are legal.
//! No I/O here; the ledger reads and writes these types.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::types::Json;

/// Primary key of a run.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, sqlx::Type,
)]
#[sqlx(transparent)]
#[serde(transparent)]
pub struct RunId(pub i64);

impl std::fmt::Display for RunId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Where a run stands: `queued → running → completed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Created and dispatched (or waiting to be), not yet claimed by a worker.
    Queued,
    /// Claimed by a worker that heartbeats it.
    Running,
    /// Finished; the outcome is final.
    Completed,
}

impl Status {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Completed => "completed",
        }
    }

    /// How people read it: `Queued`, `Running`, `Completed`.
    pub fn label(self) -> &'static str {
        match self {
            Status::Queued => "Queued",
            Status::Running => "Running",
            Status::Completed => "Completed",
        }
    }

    /// Whether the run still holds its identity (the dedupe index covers it).
    pub fn is_active(self) -> bool {
        matches!(self, Status::Queued | Status::Running)
    }

    /// Whether `self → to` is a legal move. Mirrors the database trigger:
    /// the only way back is `running → queued` (retry or reclaim).
    pub fn can_move_to(self, to: Status) -> bool {
        matches!(
            (self, to),
            (Status::Queued, Status::Running)
                | (Status::Queued, Status::Completed)
                | (Status::Running, Status::Completed)
                | (Status::Running, Status::Queued)
        )
    }
}

impl std::str::FromStr for Status {
    type Err = ();

    /// Parse the stored spelling.
    fn from_str(s: &str) -> Result<Self, ()> {
        [Status::Queued, Status::Running, Status::Completed]
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or(())
    }
}

/// How a run ended; `pending` exactly while it is active.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Not finished yet.
    Pending,
    /// Everything succeeded.
    Succeeded,
    /// Some items failed, some succeeded.
    PartiallySucceeded,
    /// Nothing succeeded, or the job errored, panicked or timed out.
    Failed,
    /// Stopped by an explicit cancel (see [`crate::RunService::cancel`]).
    Cancelled,
}

impl Outcome {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pending => "pending",
            Outcome::Succeeded => "succeeded",
            Outcome::PartiallySucceeded => "partially_succeeded",
            Outcome::Failed => "failed",
            Outcome::Cancelled => "cancelled",
        }
    }

    /// How people read it: `Pending`, `Succeeded`, `Partially succeeded`,
    /// `Failed`, `Cancelled`.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Pending => "Pending",
            Outcome::Succeeded => "Succeeded",
            Outcome::PartiallySucceeded => "Partially succeeded",
            Outcome::Failed => "Failed",
            Outcome::Cancelled => "Cancelled",
        }
    }

    /// Whether this outcome ends a run.
    pub fn is_terminal(self) -> bool {
        self != Outcome::Pending
    }

    /// The outcome a job reached when it did not say: `succeeded` with no
    /// failed items, `partially_succeeded` when some failed and some
    /// succeeded, `failed` when items failed and none succeeded.
    pub fn derive(counts: &SummaryCounts, failures: &[Failure]) -> Outcome {
        let failed_items = counts
            .failed
            .max(failures.iter().map(|f| f.count).sum::<u64>());
        if failed_items == 0 {
            Outcome::Succeeded
        } else if counts.success > 0 {
            Outcome::PartiallySucceeded
        } else {
            Outcome::Failed
        }
    }
}

impl std::str::FromStr for Outcome {
    type Err = ();

    /// Parse the stored spelling.
    fn from_str(s: &str) -> Result<Self, ()> {
        [
            Outcome::Pending,
            Outcome::Succeeded,
            Outcome::PartiallySucceeded,
            Outcome::Failed,
            Outcome::Cancelled,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
        .ok_or(())
    }
}

/// The largest count a run stores: 2^53 − 1, the largest integer every JSON
/// reader holds exactly (and far inside Postgres's bigint, which the
/// notification trigger reads the total as).
pub const MAX_COUNT: u64 = (1 << 53) - 1;

/// Item counts a job reports, e.g. `{"total":10,"success":8,"failed":2,"skipped":0}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SummaryCounts {
    /// Items considered.
    pub total: u64,
    /// Items that succeeded.
    pub success: u64,
    /// Items that failed.
    pub failed: u64,
    /// Items skipped.
    pub skipped: u64,
}

impl SummaryCounts {
    /// The first count above [`MAX_COUNT`], by name, if any.
    pub fn out_of_range(&self) -> Option<(&'static str, u64)> {
        [
            ("total", self.total),
            ("success", self.success),
            ("failed", self.failed),
            ("skipped", self.skipped),
        ]
        .into_iter()
        .find(|(_, n)| *n > MAX_COUNT)
    }
}

/// One entry of `failure_summary`: a stable code, a sanitized message and how
/// many times it occurred. Build stored failures with [`crate::sanitize::failure`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// Stable, machine-readable code such as `job.timeout`.
    pub code: String,
    /// Short, sanitized, bounded human text.
    pub message: String,
    /// Occurrences folded into this entry.
    #[serde(default = "one")]
    pub count: u64,
}

fn one() -> u64 {
    1
}

/// Fold failures by code, adding counts and keeping the first message, so a
/// summary never lists one code twice.
pub fn fold_failures(failures: impl IntoIterator<Item = Failure>) -> Vec<Failure> {
    let mut folded: Vec<Failure> = Vec::new();
    for f in failures {
        match folded.iter_mut().find(|g| g.code == f.code) {
            Some(g) => g.count = g.count.saturating_add(f.count).min(MAX_COUNT),
            None => folded.push(Failure {
                count: f.count.min(MAX_COUNT),
                ..f
            }),
        }
    }
    folded
}

/// Why the reaper took a run back or dispatched it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReclaimReason {
    /// A running run stopped heartbeating for longer than its lease.
    LeaseExpired,
    /// A queued run's stream entry is gone (Redis lost it, or a crash fell
    /// between the insert and the XADD).
    DispatchMissing,
    /// A queued run's entry was delivered to a consumer that never claimed it.
    DeliveryStalled,
    /// A queued run's entry waits in a shard its queue no longer has (the
    /// registry lowered `shards`), which no worker reads.
    ShardRetired,
}

impl ReclaimReason {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ReclaimReason::LeaseExpired => "lease_expired",
            ReclaimReason::DispatchMissing => "dispatch_missing",
            ReclaimReason::DeliveryStalled => "delivery_stalled",
            ReclaimReason::ShardRetired => "shard_retired",
        }
    }
}

/// One entry of a run's `reclaims`: what the reaper did, at which attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reclaim {
    /// Why.
    pub reason: ReclaimReason,
    /// The run's attempt count when it happened.
    pub attempt: i32,
    /// The holder that lost the run, for `lease_expired`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
    /// When (Postgres clock).
    pub at: DateTime<Utc>,
}

impl Run {
    /// The stream its latest entry was sent to.
    pub fn stream(&self) -> crate::transport::QueueStream {
        crate::transport::QueueStream::new(self.queue.clone(), self.shard)
    }
}

/// One row of `operation_runs`.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct Run {
    /// Primary key.
    pub id: RunId,
    /// Owning tenant; every query filters by it.
    pub tenant_id: i64,
    /// Initiating user, `None` for system runs.
    pub user_id: Option<i64>,
    /// Snapshot of the initiator's name, or `System`.
    pub initiator_name: String,
    /// Taxonomy name such as `inventory.sync`.
    #[sqlx(rename = "type")]
    #[serde(rename = "type")]
    pub run_type: String,
    /// Where the run stands.
    pub status: Status,
    /// How it ended (`pending` while active).
    pub outcome: Outcome,
    /// sha256 identity (see [`crate::identity`]).
    pub run_identity_hash: String,
    /// Item counts reported by the job.
    pub summary_counts: Json<SummaryCounts>,
    /// Sanitized failures, folded by code.
    pub failure_summary: Json<Vec<Failure>>,
    /// Caller-supplied context (links, scopes); never executed.
    pub context: Json<serde_json::Value>,
    /// The job's inputs.
    pub inputs: Json<serde_json::Value>,
    /// The queue the run is dispatched on.
    pub queue: String,
    /// Which of the queue's streams its latest entry was sent to (0 unless
    /// the queue is sharded): see [`Run::stream`].
    pub shard: i16,
    /// Claims so far; the attempt a worker runs is this value after its claim.
    pub attempt: i32,
    /// Claims allowed before the run fails for good.
    pub max_attempts: i32,
    /// Consumer holding the running claim.
    pub holder: Option<String>,
    /// Last heartbeat (Postgres clock).
    pub heartbeat_at: Option<DateTime<Utc>>,
    /// Stream entry id of the latest dispatch.
    pub dispatch_entry_id: Option<String>,
    /// When the latest dispatch was sent.
    pub dispatched_at: Option<DateTime<Utc>>,
    /// Reclaims and re-dispatches by the reaper, oldest first.
    pub reclaims: Json<Vec<Reclaim>>,
    /// How the identity was computed: `deterministic`, `nonce` or `strict`.
    pub identity_rule: String,
    /// Time without a heartbeat before the reaper reclaims the run.
    pub lease_seconds: i32,
    /// Not dispatched before this time (scheduled runs, retries in backoff).
    pub not_before: Option<DateTime<Utc>>,
    /// The domain record an adapter run mirrors (never dispatched or
    /// reclaimed: see [`crate::mirror`]); `None` for runs opsrun executes.
    pub domain_id: Option<String>,
    /// When the latest attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// When the run completed.
    pub completed_at: Option<DateTime<Utc>>,
    /// When the run was created.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// When someone asked to cancel the run (see [`crate::RunService::cancel`]).
    pub cancel_requested_at: Option<DateTime<Utc>>,
    /// Who asked to cancel it, and why: its `run.cancelled` failure message.
    pub cancel_request: Option<String>,
    /// The run an operator retried by starting this one.
    pub retry_of: Option<RunId>,
    /// The concurrency key it counts against, if its type is limited (see
    /// [`crate::concurrency`]).
    pub concurrency_key: Option<String>,
    /// Since when it has been waiting for a slot of that key (`None` unless
    /// it is waiting now).
    pub slot_wait_since: Option<DateTime<Utc>>,
    /// The W3C trace context it was started under (version 00 form).
    pub traceparent: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(success: u64, failed: u64) -> SummaryCounts {
        SummaryCounts {
            total: success + failed,
            success,
            failed,
            skipped: 0,
        }
    }

    #[test]
    fn outcome_is_derived_from_counts_and_failures() {
        assert_eq!(Outcome::derive(&counts(10, 0), &[]), Outcome::Succeeded);
        assert_eq!(
            Outcome::derive(&SummaryCounts::default(), &[]),
            Outcome::Succeeded
        );
        assert_eq!(
            Outcome::derive(&counts(8, 2), &[]),
            Outcome::PartiallySucceeded
        );
        assert_eq!(Outcome::derive(&counts(0, 2), &[]), Outcome::Failed);
        let f = Failure {
            code: "x.y".into(),
            message: "m".into(),
            count: 1,
        };
        assert_eq!(
            Outcome::derive(&SummaryCounts::default(), std::slice::from_ref(&f)),
            Outcome::Failed
        );
        assert_eq!(
            Outcome::derive(&counts(3, 0), &[f]),
            Outcome::PartiallySucceeded
        );
    }

    #[test]
    fn only_lifecycle_transitions_are_legal() {
        use Status::*;
        for (from, to, ok) in [
            (Queued, Running, true),
            (Running, Completed, true),
            (Queued, Completed, true),
            (Running, Queued, true),
            (Completed, Queued, false),
            (Completed, Running, false),
            (Queued, Queued, false),
        ] {
            assert_eq!(from.can_move_to(to), ok, "{from:?} -> {to:?}");
        }
    }

    #[test]
    fn failures_fold_by_code() {
        let f = |code: &str, count| Failure {
            code: code.into(),
            message: code.into(),
            count,
        };
        let folded = fold_failures([f("a", 1), f("b", 2), f("a", 3)]);
        assert_eq!(folded, vec![f("a", 4), f("b", 2)]);
    }
}
