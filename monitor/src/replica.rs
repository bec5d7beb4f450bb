//! Reads from a streaming replica. With `--read-database-url`, the lists,
//! run pages and notification lists are read from the replica; everything
//! that writes (starts, marking read, logins) and every token and session
//! check (a revocation takes effect at once) go to the primary, and a start
//! answers with the run as the primary wrote it. How far the replica is
//! behind is measured every second and sent on every response
//! (`x-opsrun-replica-lag`, seconds), and the pages read from the replica
//! say so when it is further behind than `--replica-lag-warning`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use opsrun::Ledger;

/// Default lag after which pages say the replica is behind.
pub const DEFAULT_LAG_WARNING: Duration = Duration::from_secs(5);

/// The replica's lag, as last measured.
#[derive(Debug)]
pub struct ReplicaLag {
    millis: AtomicU64,
    warn_after: Duration,
}

impl ReplicaLag {
    /// Measure `replica`'s lag every second, in a task of its own.
    pub fn watch(replica: Ledger, warn_after: Duration) -> Arc<ReplicaLag> {
        let lag = Arc::new(ReplicaLag {
            millis: AtomicU64::new(0),
            warn_after,
        });
        let watched = Arc::clone(&lag);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                match replica.replay_lag().await {
                    Ok(behind) => watched
                        .millis
                        .store(behind.as_millis() as u64, Ordering::Relaxed),
                    Err(e) => tracing::warn!(error = %e, "measuring the replica's lag failed"),
                }
            }
        });
        lag
    }

    /// The lag last measured.
    pub fn current(&self) -> Duration {
        Duration::from_millis(self.millis.load(Ordering::Relaxed))
    }

    /// What a page read from the replica says, when it is far behind.
    pub fn note(&self) -> Option<String> {
        let behind = self.current();
        (behind > self.warn_after).then(|| {
            format!(
                "Shown from a replica {} s behind the primary: the latest changes may be missing.",
                behind.as_secs()
            )
        })
    }
}
