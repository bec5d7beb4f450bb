//! The queue gauges of the Prometheus metrics (see [`opsrun::telemetry`]),
//! set every `--metrics-interval` while `--metrics-listen` is given: per
//! stream its length, pending entries, lag and consumers (Redis); per queue
//! its active runs by status, the age of its oldest due queued run, and
//! whether it is paused (Postgres). The reaper sets them because it
//! already visits every queue; a second reaper sets the same values.

use metrics::gauge;
use opsrun::telemetry::{
    QUEUE_CONSUMERS, QUEUE_LAG, QUEUE_LENGTH, QUEUE_OLDEST_AGE, QUEUE_PAUSED, QUEUE_PENDING,
    QUEUE_RUNS,
};
use opsrun::{Result, RunService};

/// Set every gauge once; `queues` are the queues to visit besides every
/// queue stream found.
pub async fn set_once(service: &RunService, queues: &[String]) -> Result<()> {
    let transport = service.transport();
    let mut streams = transport.streams().await?;
    for queue in queues {
        let shards = service.registry().shards(queue);
        streams.extend(opsrun::transport::QueueStream::all(queue, shards));
    }
    streams.sort();
    streams.dedup();
    for stream in &streams {
        let labels = [
            ("queue", stream.queue.clone()),
            ("shard", stream.shard.to_string()),
        ];
        gauge!(QUEUE_LENGTH, &labels).set(transport.length(stream).await? as f64);
        let group = transport.group_state(stream).await?.unwrap_or_default();
        gauge!(QUEUE_PENDING, &labels).set(group.pending as f64);
        gauge!(QUEUE_LAG, &labels).set(group.lag.unwrap_or(0) as f64);
        gauge!(QUEUE_CONSUMERS, &labels).set(group.consumers as f64);
    }
    let ledger = service.ledger();
    let activity = ledger.queue_activity().await?;
    let paused = ledger.paused_queues().await?;
    let mut names: Vec<String> = streams.iter().map(|s| s.queue.clone()).collect();
    names.extend(activity.iter().map(|a| a.queue.clone()));
    names.extend(paused.iter().map(|p| p.queue.clone()));
    names.sort();
    names.dedup();
    for queue in names {
        let active = activity.iter().find(|a| a.queue == queue);
        for (status, n) in [
            ("queued", active.map_or(0, |a| a.queued)),
            ("running", active.map_or(0, |a| a.running)),
        ] {
            gauge!(QUEUE_RUNS, "queue" => queue.clone(), "status" => status).set(n as f64);
        }
        let oldest = active.and_then(|a| a.oldest_due_seconds).unwrap_or(0.0);
        gauge!(QUEUE_OLDEST_AGE, "queue" => queue.clone()).set(oldest);
        let is_paused = paused.iter().any(|p| p.queue == queue);
        gauge!(QUEUE_PAUSED, "queue" => queue).set(if is_paused { 1.0 } else { 0.0 });
    }
    Ok(())
}
