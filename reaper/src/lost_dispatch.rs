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
//! A run whose entry waits in a shard its queue no longer has (the registry
//! lowered `shards`; no worker reads that stream) is dispatched again to its
//! tenant's shard as the queue stands now (`shard_retired`). The entry left
//! behind is harmless: should the shard come back, the claim skips it.
//!
//! A producer does not record the entry it sent (a claim records the entry
//! it came from, so most runs never need it); for a run that waited long
//! with none recorded, the entry is looked for by its fields among the
//! pending and the first undelivered entries, and recorded when it is
//! found waiting, so later rounds look it up by id.
//!
//! Touches: `queued` rows with an old `dispatched_at`; their stream entries.
//! Options: [`LostDispatchConfig`]. Reports: [`LostDispatchReport`].

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use opsrun::transport::{EntryState, QueueStream};
use opsrun::{DispatchRecord, ReclaimReason, Result, Run, RunId, RunService};
use serde::Serialize;

/// Default age of a dispatch before its entry is checked.
pub const DEFAULT_AFTER: Duration = Duration::from_secs(60);
/// Default runs examined per round.
pub const DEFAULT_BATCH: i64 = 500;
/// Undelivered entries read per queue and round when looking for entries
/// that were never recorded.
const LOCATE_SCAN: usize = 20_000;

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
    /// Runs dispatched again because their entry waited in a retired shard.
    pub retired: u64,
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
    let runs = service
        .ledger()
        .queued_dispatched_before(config.after, config.batch)
        .await?;
    let mut located = locate_unrecorded(service, &runs).await?;
    let mut found_waiting = Vec::new();
    for run in runs {
        let stream = run.stream();
        let (entry_id, state) = match &run.dispatch_entry_id {
            Some(entry_id) => (
                Some(entry_id.clone()),
                service.transport().entry_state(&stream, entry_id).await?,
            ),
            None => match located.remove(&(run.tenant_id, run.id, run.attempt + 1)) {
                Some((entry_id, state)) => (Some(entry_id), state),
                None => (None, EntryState::Missing),
            },
        };
        let retired = run.shard >= service.registry().shards(&run.queue);
        let reason = match state {
            EntryState::Waiting if retired => ReclaimReason::ShardRetired,
            EntryState::Waiting => {
                if run.dispatch_entry_id.is_none()
                    && let Some(entry_id) = entry_id
                {
                    found_waiting.push(DispatchRecord {
                        tenant_id: run.tenant_id,
                        run_id: run.id,
                        attempt: run.attempt,
                        entry_id,
                        shard: run.shard,
                    });
                }
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
        opsrun::telemetry::reclaimed(reason.as_str());
        match service.dispatch(&claimed).await {
            Ok(_) => match reason {
                ReclaimReason::DeliveryStalled => report.stalled += 1,
                ReclaimReason::ShardRetired => report.retired += 1,
                _ => report.missing += 1,
            },
            Err(e) => {
                tracing::warn!(run_id = %run.id, error = %e, "re-dispatch failed; retried next round");
                report.dispatch_failed += 1;
            }
        }
        if let (ReclaimReason::DeliveryStalled, Some(old)) = (reason, &entry_id) {
            let _ = service.transport().ack(&stream, &[old]).await;
        }
    }
    // Bookkeeping only: without it the next round looks for them again.
    if let Err(e) = service.ledger().record_dispatches(&found_waiting).await {
        tracing::warn!(error = %e, "recording found entries failed");
    }
    Ok(report)
}

/// The entries of the runs among `runs` whose entry was never recorded,
/// looked for in their queues' streams, keyed by `(tenant, run, attempt)`.
async fn locate_unrecorded(
    service: &RunService,
    runs: &[Run],
) -> Result<HashMap<(i64, RunId, i32), (String, EntryState)>> {
    let mut wanted: HashMap<QueueStream, HashSet<(i64, RunId, i32)>> = HashMap::new();
    for run in runs.iter().filter(|r| r.dispatch_entry_id.is_none()) {
        wanted
            .entry(run.stream())
            .or_default()
            .insert((run.tenant_id, run.id, run.attempt + 1));
    }
    let mut located = HashMap::new();
    for (stream, wanted) in wanted {
        located.extend(
            service
                .transport()
                .locate_entries(&stream, &wanted, LOCATE_SCAN)
                .await?,
        );
    }
    Ok(located)
}
