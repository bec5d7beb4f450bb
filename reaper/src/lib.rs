//! The opsrun reaper: the passes that keep the promise that an accepted run
//! always reaches a terminal state and never finishes twice. Each pass is
//! idempotent, safe with several reapers running, and reports counts:
//!
//! - [`due`]: scheduled runs and retries are dispatched when their time comes;
//! - [`stuck`]: running runs that stopped heartbeating are requeued or failed;
//! - [`lost_dispatch`]: queued runs whose entry is gone are dispatched again;
//! - [`pending`]: stale pending entries acknowledged, poison dead-lettered;
//! - [`trim`]: streams trimmed below the oldest entry that still matters;
//! - [`retention`]: completed runs past retention deleted in batches;
//! - rollups: closed hours of completed runs counted for the monitor's
//!   chart (`Ledger::roll_up`).
//!
//! And, with `--metrics-listen`, [`gauges`]: the queues' Prometheus gauges.
//!
//! Staleness is judged on the Postgres clock (and Redis idle times on the
//! Redis clock), never on this host's.

pub mod due;
pub mod gauges;
pub mod lost_dispatch;
pub mod pending;
pub mod retention;
pub mod schedules;
pub mod stuck;
pub mod trim;

use opsrun::RunService;
use opsrun::transport::QueueStream;
use serde::Serialize;

/// Options of every pass.
#[derive(Debug, Clone, Default)]
pub struct ReaperConfig {
    /// Queues whose streams the Redis passes visit; empty: the service
    /// registry's queues (visited even when listing the streams fails) and
    /// every queue stream found under the prefix. Every shard of a queue is
    /// visited: those the registry declares, and any other found.
    pub queues: Vec<String>,
    /// Due pass.
    pub due: due::DueConfig,
    /// Stuck-running pass.
    pub stuck: stuck::StuckConfig,
    /// Lost-dispatch pass.
    pub lost_dispatch: lost_dispatch::LostDispatchConfig,
    /// Pending-entries pass.
    pub pending: pending::PendingConfig,
    /// Trim pass.
    pub trim: trim::TrimConfig,
    /// Retention pass.
    pub retention: retention::RetentionConfig,
}

/// What one round of every pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RoundReport {
    /// Schedules pass.
    pub schedules: schedules::SchedulesReport,
    /// Due pass.
    pub due: due::DueReport,
    /// Stuck-running pass.
    pub stuck: stuck::StuckReport,
    /// Lost-dispatch pass.
    pub lost_dispatch: lost_dispatch::LostDispatchReport,
    /// Pending-entries pass.
    pub pending: pending::PendingReport,
    /// Trim pass.
    pub trim: trim::TrimReport,
    /// Retention pass.
    pub retention: retention::RetentionReport,
    /// Hours of completed runs rolled up for the monitor's chart.
    pub rolled_up_hours: u32,
    /// Passes that stopped on an error (logged); the others still ran.
    pub failed_passes: Vec<&'static str>,
}

/// Run every pass once, in order: schedules, due runs, then reclaim (so requeued runs get a fresh
/// dispatch), then dispatch repair, pending-list hygiene, trimming, retention.
pub async fn run_once(service: &RunService, config: &ReaperConfig) -> RoundReport {
    let mut failed_passes = Vec::new();
    let mut failed = |pass: &'static str, error: opsrun::Error| {
        tracing::error!(pass, error = %opsrun::sanitize::redact(&error.to_string()), "reaper pass failed; the next round retries");
        failed_passes.push(pass);
    };
    // Declared shards are visited even when listing fails; found streams
    // add shards no longer declared (their entries still need looking after).
    let mut found = service.transport().streams().await.unwrap_or_else(|e| {
        failed("queues", e);
        Vec::new()
    });
    let registry = service.registry();
    let queues = match &config.queues {
        q if !q.is_empty() => {
            found.retain(|s| q.contains(&s.queue));
            q.clone()
        }
        _ => registry.queues(),
    };
    let mut streams: Vec<QueueStream> = queues
        .iter()
        .flat_map(|q| QueueStream::all(q, registry.shards(q)))
        .chain(found)
        .collect();
    streams.sort();
    streams.dedup();
    if let Err(e) = schedules::sync_declared(service).await {
        failed("schedules", e);
    }
    let schedules = schedules::run_once(service).await.unwrap_or_else(|e| {
        failed("schedules", e);
        Default::default()
    });
    let due = due::run_once(service, &config.due)
        .await
        .unwrap_or_else(|e| {
            failed("due", e);
            Default::default()
        });
    let stuck = stuck::run_once(service, &config.stuck)
        .await
        .unwrap_or_else(|e| {
            failed("stuck", e);
            Default::default()
        });
    let lost_dispatch = lost_dispatch::run_once(service, &config.lost_dispatch)
        .await
        .unwrap_or_else(|e| {
            failed("lost_dispatch", e);
            Default::default()
        });
    let pending = pending::run_once(service, &streams, &config.pending)
        .await
        .unwrap_or_else(|e| {
            failed("pending", e);
            Default::default()
        });
    let trim = trim::run_once(service.transport(), &streams, &config.trim)
        .await
        .unwrap_or_else(|e| {
            failed("trim", e);
            Default::default()
        });
    let retention = retention::run_once(service.ledger(), &config.retention)
        .await
        .unwrap_or_else(|e| {
            failed("retention", e);
            Default::default()
        });
    // Closed hours into the chart's rollups, a day's worth a round at most
    // (a first start over a long history catches up over a few rounds).
    let rolled_up_hours = service.ledger().roll_up(24).await.unwrap_or_else(|e| {
        failed("rollups", e);
        0
    });
    RoundReport {
        rolled_up_hours,
        schedules,
        due,
        stuck,
        lost_dispatch,
        pending,
        trim,
        retention,
        failed_passes,
    }
}
