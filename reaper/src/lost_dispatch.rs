//! Lost dispatch: a queued run must always have a live stream entry. When
//! its latest dispatch is older than `after` and the entry is gone (Redis
//! restarted without data, trimmed, or a crash fell between the insert and
//! the XADD), it is dispatched again (reason `dispatch_missing`); when the
//! entry was delivered to a consumer that never claimed it, likewise
//! (`delivery_stalled`), and the stalled entry is acknowledged. An entry
//! still waiting in the stream is left alone: the run is merely in a backlog.
//! Two reapers never both re-send a run: the re-dispatch is claimed in
//! Postgres first, on the entry both saw.
//!
//! Touches: `queued` rows with an old `dispatched_at`; their stream entries.
//! Options: [`LostDispatchConfig`]. Reports: [`LostDispatchReport`].

use std::time::Duration;

use opsrun::transport::EntryState;
use opsrun::{ReclaimReason, Result, RunService};
use serde::Serialize;

/// Default age of a dispatch before its entry is checked.
pub const DEFAULT_AFTER: Duration = Duration::from_secs(60);
/// Default runs examined per round.
pub const DEFAULT_BATCH: i64 = 500;

/// Options of the lost-dispatch pass.
#[derive(Debug, Clone)]
pub struct LostDispatchConfig {
    /// Age of the latest dispatch before its entry is checked; also how long
    /// a delivered entry may stay unclaimed.
    pub after: Duration,
    /// Runs examined per round.
    pub batch: i64,
}

impl Default for LostDispatchConfig {
    fn default() -> Self {
        LostDispatchConfig {
            after: DEFAULT_AFTER,
            batch: DEFAULT_BATCH,
        }
    }
}

/// What one round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LostDispatchReport {
    /// Runs dispatched again because their entry was gone.
    pub missing: u64,
    /// Runs dispatched again because their entry was delivered but never claimed.
    pub stalled: u64,
    /// Runs whose entry is still waiting in the stream.
    pub waiting: u64,
    /// Re-dispatches that failed (retried next round).
    pub dispatch_failed: u64,
    /// Runs another reaper or a worker got first.
    pub skipped: u64,
}

/// Run one round.
pub async fn run_once(
    service: &RunService,
    config: &LostDispatchConfig,
) -> Result<LostDispatchReport> {
    let mut report = LostDispatchReport::default();
    for run in service
        .ledger()
        .queued_dispatched_before(config.after, config.batch)
        .await?
    {
        let state = match &run.dispatch_entry_id {
            None => EntryState::Missing,
            Some(entry_id) => {
                service
                    .transport()
                    .entry_state(&run.queue, entry_id)
                    .await?
            }
        };
        let reason = match state {
            EntryState::Waiting => {
                report.waiting += 1;
                continue;
            }
            EntryState::Pending { idle, .. } if idle < config.after => {
                report.waiting += 1;
                continue;
            }
            EntryState::Pending { .. } => ReclaimReason::DeliveryStalled,
            // Acknowledged while the run is still queued means the claim never
            // happened (the worker skipped it): as good as missing.
            EntryState::Missing | EntryState::Acknowledged => ReclaimReason::DispatchMissing,
        };
        let Some(claimed) = service.ledger().begin_redispatch(&run, reason).await? else {
            report.skipped += 1;
            continue;
        };
        tracing::warn!(run_id = %run.id, tenant_id = run.tenant_id, reason = reason.as_str(), "dispatching queued run again");
        match service.dispatch(&claimed).await {
            Ok(_) => match reason {
                ReclaimReason::DeliveryStalled => report.stalled += 1,
                _ => report.missing += 1,
            },
            Err(e) => {
                tracing::warn!(run_id = %run.id, error = %e, "re-dispatch failed; retried next round");
                report.dispatch_failed += 1;
            }
        }
        if let (ReclaimReason::DeliveryStalled, Some(old)) = (reason, &run.dispatch_entry_id) {
            let _ = service.transport().ack(&run.queue, &[old]).await;
        }
    }
    Ok(report)
}
