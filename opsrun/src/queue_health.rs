//! Queue health across tenants, for the monitor's platform view: per queue
//! its streams (length, pending, lag, consumers and their idle time), its
//! active runs, the age of its oldest due run, whether it is paused, and
//! the runs it completed in the last minutes. Counts and ages only, never a
//! run's contents.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::error::Result;
use crate::ledger::{Ledger, QueuePause};
use crate::service::RunService;
use crate::transport::{ConsumerState, QueueStream};

/// Minutes of completions [`queue_health`] reports.
pub const THROUGHPUT_MINUTES: i32 = 15;

/// One stream of a queue, as Redis holds it now.
#[derive(Debug, Clone, Serialize)]
pub struct StreamHealth {
    /// Which shard.
    pub shard: i16,
    /// Entries in the stream (XLEN).
    pub length: u64,
    /// Delivered and not acknowledged.
    pub pending: u64,
    /// Not yet delivered, when Redis knows.
    pub lag: Option<u64>,
    /// The workers reading it.
    pub consumers: Vec<ConsumerState>,
}

/// Runs a queue completed in one minute.
#[derive(Debug, Clone, Serialize)]
pub struct MinuteCount {
    /// The minute's start.
    pub minute: DateTime<Utc>,
    /// Completed in it.
    pub completed: i64,
    /// Of which failed.
    pub failed: i64,
}

/// One queue.
#[derive(Debug, Clone, Serialize)]
pub struct QueueHealth {
    /// Its name.
    pub queue: String,
    /// Its streams; empty when the monitor has no Redis.
    pub streams: Vec<StreamHealth>,
    /// Runs queued (for a worker, a retry, a start time or a slot).
    pub queued: i64,
    /// Runs running.
    pub running: i64,
    /// Age of the oldest queued run that is due, in seconds.
    pub oldest_due_seconds: Option<f64>,
    /// Set while it is paused.
    pub paused: Option<QueuePause>,
    /// Completions per minute over the last [`THROUGHPUT_MINUTES`], oldest
    /// first, minutes without any left out.
    pub throughput: Vec<MinuteCount>,
}

/// Every queue with a stream, active runs, recent completions or a pause.
/// `service` gives Redis (and the registry's shards); without it the
/// streams are left empty.
pub async fn queue_health(
    ledger: &Ledger,
    service: Option<&RunService>,
) -> Result<Vec<QueueHealth>> {
    let activity = ledger.queue_activity().await?;
    let paused = ledger.paused_queues().await?;
    let throughput = ledger.queue_throughput(THROUGHPUT_MINUTES).await?;
    let mut streams: Vec<QueueStream> = Vec::new();
    if let Some(service) = service {
        streams = service.transport().streams().await?;
    }
    let mut names: Vec<String> = streams.iter().map(|s| s.queue.clone()).collect();
    names.extend(activity.iter().map(|a| a.queue.clone()));
    names.extend(paused.iter().map(|p| p.queue.clone()));
    names.extend(throughput.iter().map(|t| t.queue.clone()));
    names.sort();
    names.dedup();
    let mut health = Vec::with_capacity(names.len());
    for queue in names {
        let mut queue_streams = Vec::new();
        if let Some(service) = service {
            let transport = service.transport();
            let mut shards: Vec<QueueStream> =
                QueueStream::all(&queue, service.registry().shards(&queue)).collect();
            shards.extend(streams.iter().filter(|s| s.queue == queue).cloned());
            shards.sort();
            shards.dedup();
            for stream in shards {
                let group = transport.group_state(&stream).await?.unwrap_or_default();
                queue_streams.push(StreamHealth {
                    shard: stream.shard,
                    length: transport.length(&stream).await?,
                    pending: group.pending,
                    lag: group.lag,
                    consumers: transport.consumers(&stream).await?,
                });
            }
        }
        let active = activity.iter().find(|a| a.queue == queue);
        health.push(QueueHealth {
            streams: queue_streams,
            queued: active.map_or(0, |a| a.queued),
            running: active.map_or(0, |a| a.running),
            oldest_due_seconds: active.and_then(|a| a.oldest_due_seconds),
            paused: paused.iter().find(|p| p.queue == queue).cloned(),
            throughput: throughput
                .iter()
                .filter(|t| t.queue == queue)
                .map(|t| MinuteCount {
                    minute: t.minute,
                    completed: t.completed,
                    failed: t.failed,
                })
                .collect(),
            queue,
        });
    }
    Ok(health)
}
