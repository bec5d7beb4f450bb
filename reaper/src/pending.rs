//! Pending entries: the consumer group's pending list is only a hint, but it
//! must not grow forever. Entries idle for longer than `idle` are
//! acknowledged when their run has moved on (completed, unknown, another
//! tenant, a later attempt) or their payload is gone. An entry delivered
//! more than `poison_deliveries` times is poison: it is copied to the
//! dead-letter stream `<prefix>:dead:<queue>`, its run failed with
//! `queue.poison` if still queued, and acknowledged. Entries of live runs are
//! left to their worker; entries of stuck runs to the stuck pass.
//!
//! Touches: the pending lists of every queue stream, every shard (or the
//! configured queues').
//! Options: [`PendingConfig`]. Reports: [`PendingReport`].

use std::time::Duration;

use opsrun::transport::QueueStream;
use opsrun::{Result, RunService, Status, sanitize};
use serde::Serialize;

/// Default idle time before a pending entry is examined.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(300);
/// Default deliveries after which an entry is poison.
pub const DEFAULT_POISON_DELIVERIES: u64 = 5;
/// Default entries examined per stream per round.
pub const DEFAULT_BATCH: usize = 500;

/// Options of the pending pass.
#[derive(Debug, Clone)]
pub struct PendingConfig {
    /// Idle time before a pending entry is examined.
    pub idle: Duration,
    /// Deliveries after which an entry is dead-lettered.
    pub poison_deliveries: u64,
    /// Entries examined per stream per round.
    pub batch: usize,
}

impl Default for PendingConfig {
    fn default() -> Self {
        PendingConfig {
            idle: DEFAULT_IDLE,
            poison_deliveries: DEFAULT_POISON_DELIVERIES,
            batch: DEFAULT_BATCH,
        }
    }
}

/// What one round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PendingReport {
    /// Stale entries acknowledged.
    pub acknowledged: u64,
    /// Poison entries dead-lettered.
    pub dead_lettered: u64,
    /// Entries left to a live worker or to the stuck and lost-dispatch passes.
    pub left: u64,
}

/// Run one round over `streams`.
pub async fn run_once(
    service: &RunService,
    streams: &[QueueStream],
    config: &PendingConfig,
) -> Result<PendingReport> {
    let mut report = PendingReport::default();
    let transport = service.transport();
    for stream in streams {
        for pending in transport
            .pending_idle(stream, config.idle, config.batch)
            .await?
        {
            let entry = transport.entry(stream, &pending.entry_id).await?.flatten();
            let run = match &entry {
                Some(e) => service.ledger().get(e.tenant_id, e.run_id).await?,
                None => None,
            };
            let live = match (&entry, &run) {
                // This entry is the run's current dispatch or current claim.
                (Some(e), Some(r)) => match r.status {
                    Status::Queued => r.attempt == e.attempt - 1,
                    Status::Running => r.attempt == e.attempt,
                    Status::Completed => false,
                },
                _ => false,
            };
            if live && pending.deliveries > config.poison_deliveries {
                let (Some(e), Some(r)) = (&entry, &run) else {
                    continue;
                };
                if r.status == Status::Queued {
                    let failure = sanitize::failure(
                        "queue.poison",
                        &format!(
                            "the entry was delivered {} times without completing",
                            pending.deliveries
                        ),
                    );
                    if service
                        .ledger()
                        .fail_queued(r.tenant_id, r.id, &failure)
                        .await?
                        .is_some()
                    {
                        transport
                            .dead_letter(&stream.queue, &pending.entry_id, Some(e), "poison")
                            .await?;
                        transport.ack(stream, &[&pending.entry_id]).await?;
                        tracing::error!(run_id = %r.id, tenant_id = r.tenant_id, deliveries = pending.deliveries, "poison entry dead-lettered; run failed");
                        opsrun::telemetry::run_completed(r, opsrun::Outcome::Failed, None);
                        opsrun::telemetry::dead_lettered(&stream.queue, 1);
                        report.dead_lettered += 1;
                        continue;
                    }
                }
                report.left += 1;
            } else if live {
                report.left += 1;
            } else {
                transport.ack(stream, &[&pending.entry_id]).await?;
                report.acknowledged += 1;
            }
        }
    }
    Ok(report)
}
