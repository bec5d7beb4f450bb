//! Stuck running: a running run whose heartbeat (Postgres clock) is older
//! than its lease (per type, from the registry, stamped on the run) lost its
//! worker. It is requeued and dispatched again
//! (reason `lease_expired`), or failed with `job.attempts_exhausted` and
//! dead-lettered once it used its attempts; one someone asked to cancel is
//! completed `cancelled` instead (the requeue is turned into the cancel by
//! the ledger, see migration 000011). A run that still heartbeats is
//! never taken, however long it runs: every write re-checks the heartbeat and
//! is fenced on the claim the reaper saw, so each run is reclaimed once even
//! with several reapers.
//!
//! Touches: `running` rows with a stale `heartbeat_at`; their stream entries.
//! Options: [`StuckConfig`]. Reports: [`StuckReport`].

use std::time::Duration;

use opsrun::ledger::{Claim, Fence, Terminal};
use opsrun::{Outcome, ReclaimReason, Result, Run, RunService, Status, sanitize};
use serde::Serialize;

/// Default runs examined per round.
pub const DEFAULT_BATCH: i64 = 500;

/// Options of the stuck-running pass.
#[derive(Debug, Clone)]
pub struct StuckConfig {
    /// Runs examined per round.
    pub batch: i64,
}

impl Default for StuckConfig {
    fn default() -> Self {
        StuckConfig {
            batch: DEFAULT_BATCH,
        }
    }
}

/// What one round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StuckReport {
    /// Runs requeued and dispatched again.
    pub requeued: u64,
    /// Runs failed after their last attempt, and dead-lettered.
    pub failed: u64,
    /// Runs someone asked to cancel, completed `cancelled`.
    pub cancelled: u64,
    /// Requeued runs whose new dispatch failed (the lost-dispatch pass retries).
    pub dispatch_failed: u64,
    /// Candidates another reaper or a late heartbeat got first.
    pub skipped: u64,
}

/// Run one round.
pub async fn run_once(service: &RunService, config: &StuckConfig) -> Result<StuckReport> {
    let mut report = StuckReport::default();
    for run in service.ledger().stale_running(config.batch).await? {
        let Some(holder) = run.holder.clone() else {
            continue;
        };
        let claim = Claim {
            tenant_id: run.tenant_id,
            run_id: run.id,
            holder: &holder,
            attempt: run.attempt,
        };
        if run.attempt >= run.max_attempts && run.cancel_requested_at.is_none() {
            let lease = Duration::from_secs(run.lease_seconds.max(1) as u64);
            match fail_exhausted(service, &run, claim, lease).await? {
                true => report.failed += 1,
                false => report.skipped += 1,
            }
            continue;
        }
        let Some(requeued) = service
            .ledger()
            .requeue_expired(&claim, Duration::from_secs(run.lease_seconds.max(1) as u64))
            .await?
        else {
            report.skipped += 1;
            continue;
        };
        opsrun::telemetry::reclaimed(ReclaimReason::LeaseExpired.as_str());
        if requeued.status == Status::Completed {
            tracing::info!(run_id = %run.id, tenant_id = run.tenant_id, holder = %holder,
                "run stopped heartbeating after a cancel was asked for; cancelled");
            opsrun::telemetry::run_completed(&run, Outcome::Cancelled, None);
            report.cancelled += 1;
            ack_old_entry(service, &run).await;
            continue;
        }
        tracing::warn!(run_id = %run.id, tenant_id = run.tenant_id, attempt = run.attempt, holder = %holder,
            "run stopped heartbeating; requeued (lease_expired)");
        report.requeued += 1;
        if let Err(e) = service.dispatch(&requeued).await {
            tracing::warn!(run_id = %run.id, error = %e, "re-dispatch failed; the lost-dispatch pass will retry");
            report.dispatch_failed += 1;
        }
        ack_old_entry(service, &run).await;
    }
    Ok(report)
}

/// End a run that used its last attempt, through the same terminal write as
/// a worker, then dead-letter its entry. Returns whether this reaper did it.
async fn fail_exhausted(
    service: &RunService,
    run: &Run,
    claim: Claim<'_>,
    lease: Duration,
) -> Result<bool> {
    let failure = sanitize::failure(
        "job.attempts_exhausted",
        &format!(
            "the worker running attempt {} of {} stopped heartbeating for over {}s; no attempts left",
            run.attempt,
            run.max_attempts,
            lease.as_secs()
        ),
    );
    let failures = [failure];
    let terminal = Terminal {
        outcome: Outcome::Failed,
        counts: &run.summary_counts.0,
        failures: &failures,
        reclaim: Some(ReclaimReason::LeaseExpired),
    };
    if service
        .ledger()
        .complete(Fence::Expired { claim, lease }, terminal)
        .await?
        .is_none()
    {
        return Ok(false);
    }
    tracing::error!(run_id = %run.id, tenant_id = run.tenant_id, attempt = run.attempt,
        "run failed: attempts exhausted (job.attempts_exhausted); dead-lettered");
    opsrun::telemetry::reclaimed(ReclaimReason::LeaseExpired.as_str());
    opsrun::telemetry::run_completed(run, Outcome::Failed, None);
    opsrun::telemetry::dead_lettered(&run.queue, 1);
    let entry_id = run.dispatch_entry_id.as_deref().unwrap_or("");
    let entry = opsrun::transport::Entry {
        run_id: run.id,
        tenant_id: run.tenant_id,
        run_type: run.run_type.clone(),
        attempt: run.attempt,
        concurrency_key_digest: None,
    };
    if let Err(e) = service
        .transport()
        .dead_letter(&run.queue, entry_id, Some(&entry), "attempts_exhausted")
        .await
    {
        tracing::warn!(run_id = %run.id, error = %e, "dead letter not written; the run is failed in Postgres regardless");
    }
    ack_old_entry(service, run).await;
    Ok(true)
}

/// Acknowledge the entry the lost worker held, so it leaves the pending list.
async fn ack_old_entry(service: &RunService, run: &Run) {
    if let Some(entry_id) = &run.dispatch_entry_id
        && let Err(e) = service.transport().ack(&run.stream(), &[entry_id]).await
    {
        tracing::debug!(run_id = %run.id, error = %e, "old entry not acknowledged; the pending pass will");
    }
}
