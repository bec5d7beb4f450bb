//! Due runs: scheduled runs and retries waiting out their backoff are queued
//! with a `not_before` and no dispatch. When their time comes they are taken
//! (earliest first, each by exactly one scheduler: rows another one holds are
//! skipped) and dispatched. If the send fails, the lost-dispatch pass sends
//! it again later. Runs every `--due-interval` (1 s), apart from the other
//! passes, so delays are honoured to about a second.
//!
//! The same round wakes runs waiting for a concurrency slot whose key has a
//! free one (see [`opsrun::concurrency`]): a worker wakes them when its own
//! run frees a slot; this catches slots freed elsewhere (the stuck pass's
//! reclaims and failures) and wakes a worker could not send. It first
//! folds each key's counts of released runs into one row, so that claims
//! sum few rows however many workers have come and gone, after returning
//! the slot credits their workers stopped renewing (migration 000023).
//!
//! Touches: `queued` rows with `not_before <= now()` and no dispatch, and
//! `queued` rows waiting for a slot; `concurrency_releases`; expired
//! `concurrency_credits` (and the runs still running under them).
//! Options: [`DueConfig`]. Reports: [`DueReport`].

use opsrun::{Result, RunService};
use serde::Serialize;

/// Default runs dispatched per round.
pub const DEFAULT_BATCH: i64 = 1000;

/// Options of the due pass.
#[derive(Debug, Clone)]
pub struct DueConfig {
    /// Runs dispatched per round.
    pub batch: i64,
}

impl Default for DueConfig {
    fn default() -> Self {
        DueConfig {
            batch: DEFAULT_BATCH,
        }
    }
}

/// What one round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DueReport {
    /// Runs dispatched.
    pub dispatched: u64,
    /// Sends that failed (the lost-dispatch pass retries them).
    pub dispatch_failed: u64,
    /// Runs woken for a free concurrency slot and sent.
    pub woken: u64,
    /// Expired slot credits released.
    pub credits_returned: u64,
}

/// Run one round.
pub async fn run_once(service: &RunService, config: &DueConfig) -> Result<DueReport> {
    let mut report = DueReport::default();
    let mut due = service.ledger().take_due(config.batch).await?;
    due.sort_by_key(|run| (run.not_before, run.id));
    for run in due {
        match service.dispatch(&run).await {
            Ok(_) => report.dispatched += 1,
            Err(e) => {
                tracing::warn!(run_id = %run.id, error = %e, "dispatching a due run failed; the lost-dispatch pass will retry");
                report.dispatch_failed += 1;
            }
        }
    }
    report.credits_returned = service.ledger().return_expired_credits().await?.max(0) as u64;
    service.ledger().fold_releases().await?;
    report.woken = opsrun::concurrency::wake(service.ledger(), service.transport(), None).await?;
    Ok(report)
}
