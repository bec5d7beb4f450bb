//! Trimming: queue streams are trimmed below the oldest entry that may still
//! matter (the oldest pending entry, the first undelivered one, and anything
//! newer than `keep`), never dropping an entry still pending or undelivered.
//! On Redis 7.0 XTRIM ignores the pending list, hence the explicit floor.
//!
//! Touches: every queue stream, every shard (or the configured queues').
//! Options: [`TrimConfig`]. Reports: [`TrimReport`].

use std::time::Duration;

use opsrun::transport::QueueStream;
use opsrun::{Result, Transport};
use serde::Serialize;

/// Default age of acknowledged entries kept for inspection.
pub const DEFAULT_KEEP: Duration = Duration::from_secs(3600);

/// Options of the trim pass.
#[derive(Debug, Clone)]
pub struct TrimConfig {
    /// Acknowledged entries newer than this are kept for inspection.
    pub keep: Duration,
}

impl Default for TrimConfig {
    fn default() -> Self {
        TrimConfig { keep: DEFAULT_KEEP }
    }
}

/// What one round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TrimReport {
    /// Entries removed.
    pub trimmed: u64,
}

/// Run one round over `streams`.
pub async fn run_once(
    transport: &Transport,
    streams: &[QueueStream],
    config: &TrimConfig,
) -> Result<TrimReport> {
    let mut report = TrimReport::default();
    for stream in streams {
        report.trimmed += transport.trim(stream, config.keep).await?;
    }
    Ok(report)
}
