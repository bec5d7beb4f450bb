//! Heartbeats for every run a worker holds, batched into one UPDATE per
//! interval however many are in flight. The Postgres heartbeat, not the Redis
//! pending list, is what proves a run is alive.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::ledger::Ledger;
use crate::run::RunId;

/// The runs this process currently holds, each with a token cancelled when
/// the run turns out to be held by someone else (its job is then stopped).
#[derive(Debug, Clone, Default)]
pub struct InFlight {
    /// The stop token of each held run; `None` once its job has finished
    /// and only the terminal write remains (still heartbeated, nothing to stop).
    runs: Arc<Mutex<HashMap<RunId, Option<CancellationToken>>>>,
}

impl InFlight {
    /// Start heartbeating `id`; the token is cancelled if the claim is lost.
    pub fn insert(&self, id: RunId) -> CancellationToken {
        let token = CancellationToken::new();
        self.runs
            .lock()
            .expect("in-flight set")
            .insert(id, Some(token.clone()));
        token
    }

    /// The job of `id` finished; keep heartbeating until its terminal write.
    pub fn job_finished(&self, id: RunId) {
        if let Some(token) = self.runs.lock().expect("in-flight set").get_mut(&id) {
            *token = None;
        }
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
            .keys()
            .copied()
            .collect()
    }

    /// Stop the jobs of held runs that were not refreshed while their job
    /// still runs: their claim was taken over. (A run whose job finished may
    /// just have been completed by this worker; the fence settles it.)
    fn lost(&self, held: &[RunId], refreshed: &[RunId]) -> usize {
        let runs = self.runs.lock().expect("in-flight set");
        let mut lost = 0;
        for id in held.iter().filter(|id| !refreshed.contains(id)) {
            if let Some(Some(token)) = runs.get(id) {
                token.cancel();
                lost += 1;
            }
        }
        lost
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
            Ok(refreshed) if refreshed.len() < ids.len() => {
                let lost = in_flight.lost(&ids, &refreshed);
                if lost > 0 {
                    tracing::warn!(
                        lost,
                        "runs were taken over (reclaimed); stopping their jobs"
                    );
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, held = ids.len(), "heartbeat failed; retrying next tick")
            }
        }
    }
}
