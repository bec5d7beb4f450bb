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

impl Ledger {
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
