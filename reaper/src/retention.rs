//! Retention: completed runs whose completion is older than `after` (90 days
//! by default) are deleted in batches, each one short statement that skips
//! rows another deleter holds, so no long locks are taken and workers keep
//! writing. Active runs are never deleted.
//!
//! Touches: `completed` rows by `completed_at`.
//! Options: [`RetentionConfig`]. Reports: [`RetentionReport`].

use std::time::Duration;

use opsrun::{Ledger, Result};
use serde::Serialize;

/// Default retention of completed runs.
pub const DEFAULT_AFTER: Duration = Duration::from_secs(90 * 24 * 3600);
/// Default rows per delete statement.
pub const DEFAULT_BATCH: i64 = 1000;
/// Default batches per round (bounds one round's work; the next round continues).
pub const DEFAULT_MAX_BATCHES: u64 = 200;

/// Options of the retention pass.
#[derive(Debug, Clone)]
pub struct RetentionConfig {
    /// Completed runs older than this are deleted.
    pub after: Duration,
    /// Rows per delete statement.
    pub batch: i64,
    /// Batches per round.
    pub max_batches: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            after: DEFAULT_AFTER,
            batch: DEFAULT_BATCH,
            max_batches: DEFAULT_MAX_BATCHES,
        }
    }
}

/// What one round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RetentionReport {
    /// Runs deleted.
    pub deleted: u64,
    /// Delete statements run.
    pub batches: u64,
}

/// Run one round.
pub async fn run_once(ledger: &Ledger, config: &RetentionConfig) -> Result<RetentionReport> {
    let mut report = RetentionReport::default();
    while report.batches < config.max_batches {
        let deleted = ledger
            .delete_completed_before(config.after, config.batch)
            .await?;
        report.batches += 1;
        report.deleted += deleted;
        if deleted < config.batch as u64 {
            break;
        }
    }
    Ok(report)
}
