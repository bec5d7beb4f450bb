//! Heartbeats for every run a worker holds, batched into one UPDATE per
//! interval however many are in flight. The Postgres heartbeat, not the Redis
//! pending list, is what proves a run is alive.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::ledger::Ledger;
use crate::run::RunId;

/// The runs this process currently holds.
#[derive(Debug, Clone, Default)]
pub struct InFlight {
    runs: Arc<Mutex<HashSet<RunId>>>,
}

impl InFlight {
    /// Start heartbeating `id`.
    pub fn insert(&self, id: RunId) {
        self.runs.lock().expect("in-flight set").insert(id);
    }

    /// Stop heartbeating `id`.
    pub fn remove(&self, id: RunId) {
        self.runs.lock().expect("in-flight set").remove(&id);
    }

    /// How many runs are held.
    pub fn len(&self) -> usize {
        self.runs.lock().expect("in-flight set").len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn snapshot(&self) -> Vec<RunId> {
        self.runs
            .lock()
            .expect("in-flight set")
            .iter()
            .copied()
            .collect()
    }
}

/// Refresh the heartbeat of every held run each `interval` until `stop`.
/// A failed beat is logged and retried on the next tick: one missed beat is
/// well inside the lease.
pub async fn heartbeat_loop(
    ledger: Ledger,
    holder: String,
    in_flight: InFlight,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let ids = in_flight.snapshot();
        match ledger.heartbeat(&holder, &ids).await {
            Ok(n) if (n as usize) < ids.len() => {
                tracing::debug!(
                    held = ids.len(),
                    refreshed = n,
                    "some runs were completed or taken over since the last beat"
                )
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, held = ids.len(), "heartbeat failed; retrying next tick")
            }
        }
    }
}
