//! Per-queue aggregates across tenants, for the metrics and for operators'
//! view of queue health: counts and ages only, never a run's contents.

use serde::Serialize;

use super::Ledger;
use crate::error::{Result, db};

/// The active runs of one queue.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct QueueActivity {
    /// The queue.
    pub queue: String,
    /// Runs queued (waiting for a worker, a retry, a start time or a slot).
    pub queued: i64,
    /// Runs running.
    pub running: i64,
    /// Age in seconds of the oldest queued run that is due (no start time
    /// ahead), `None` when there is none.
    pub oldest_due_seconds: Option<f64>,
}

/// Runs of one queue completed in one minute.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct QueueThroughput {
    /// The queue.
    pub queue: String,
    /// The minute's start.
    pub minute: chrono::DateTime<chrono::Utc>,
    /// Runs completed in it.
    pub completed: i64,
    /// Of which failed.
    pub failed: i64,
}

impl Ledger {
    /// Runs completed per queue and minute over the last `minutes` minutes
    /// (minutes without any are left out). Reads the completion-time index.
    pub async fn queue_throughput(&self, minutes: i32) -> Result<Vec<QueueThroughput>> {
        sqlx::query_as::<_, QueueThroughput>(
            "SELECT queue, date_trunc('minute', completed_at) AS minute, count(*) AS completed, \
                    count(*) FILTER (WHERE outcome = 'failed') AS failed \
             FROM operation_runs \
             WHERE status = 'completed' AND completed_at > date_trunc('minute', now()) - make_interval(mins => $1) \
             GROUP BY 1, 2 ORDER BY 1, 2",
        )
        .bind(minutes)
        .fetch_all(&self.db)
        .await
        .map_err(db("reading queue throughput"))
    }

    /// Every queue with active runs, by name. Reads the active runs (the
    /// index over them), as the reaper's stuck pass does.
    pub async fn queue_activity(&self) -> Result<Vec<QueueActivity>> {
        sqlx::query_as::<_, QueueActivity>(
            "SELECT queue, \
                    count(*) FILTER (WHERE status = 'queued') AS queued, \
                    count(*) FILTER (WHERE status = 'running') AS running, \
                    extract(epoch FROM now() - min(coalesce(not_before, created_at)) FILTER ( \
                        WHERE status = 'queued' AND (not_before IS NULL OR not_before <= now())))::float8 \
                        AS oldest_due_seconds \
             FROM operation_runs WHERE completed_at IS NULL GROUP BY queue ORDER BY queue",
        )
        .fetch_all(&self.db)
        .await
        .map_err(db("reading queue activity"))
    }
}
