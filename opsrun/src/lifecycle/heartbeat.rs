//! Heartbeats for every run a worker holds, batched into one UPDATE per
//! interval however many are in flight. The Postgres heartbeat, not the Redis
//! pending list, is what proves a run is alive.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::ledger::Ledger;
use crate::run::RunId;

/// The runs this process currently holds, each with the tokens that stop
/// its job: `lost` when the run turns out to be held by someone else,
/// `cancel` when someone asked to cancel it.
#[derive(Debug, Clone, Default)]
pub struct InFlight {
    runs: Arc<Mutex<HashMap<RunId, Held>>>,
}

/// What stops a held run's job.
#[derive(Debug, Clone, Default)]
pub struct Stops {
    /// Cancelled when the claim was taken over: stop at once.
    pub lost: CancellationToken,
    /// Cancelled when someone asked to cancel the run: stop soon.
    pub cancel: CancellationToken,
}

#[derive(Debug)]
struct Held {
    /// `None` once its job has finished and only the terminal write remains
    /// (still heartbeated, nothing to stop).
    stops: Option<Stops>,
    /// Who asked to cancel it and why, once someone did.
    cancel_request: Option<String>,
}

impl InFlight {
    /// Start heartbeating `id`; returns what stops its job.
    pub fn insert(&self, id: RunId) -> Stops {
        let stops = Stops::default();
        self.runs.lock().expect("in-flight set").insert(
            id,
            Held {
                stops: Some(stops.clone()),
                cancel_request: None,
            },
        );
        stops
    }

    /// The job of `id` finished; keep heartbeating until its terminal write.
    pub fn job_finished(&self, id: RunId) {
        if let Some(held) = self.runs.lock().expect("in-flight set").get_mut(&id) {
            held.stops = None;
        }
    }

    /// Stop heartbeating `id`.
    pub fn remove(&self, id: RunId) {
        self.runs.lock().expect("in-flight set").remove(&id);
    }

    /// Who asked to cancel `id`, if someone did while its job ran.
    pub fn cancel_request(&self, id: RunId) -> Option<String> {
        let runs = self.runs.lock().expect("in-flight set");
        runs.get(&id).and_then(|held| held.cancel_request.clone())
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

    /// Held runs whose job still runs and was not asked to stop yet.
    fn running_jobs(&self) -> Vec<RunId> {
        let runs = self.runs.lock().expect("in-flight set");
        runs.iter()
            .filter(|(_, held)| held.stops.is_some() && held.cancel_request.is_none())
            .map(|(id, _)| *id)
            .collect()
    }

    /// Stop the jobs of held runs that were not refreshed while their job
    /// still runs: their claim was taken over. (A run whose job finished may
    /// just have been completed by this worker; the fence settles it.)
    fn lost(&self, held: &[RunId], refreshed: &[RunId]) -> usize {
        let runs = self.runs.lock().expect("in-flight set");
        let mut lost = 0;
        for id in held.iter().filter(|id| !refreshed.contains(id)) {
            if let Some(Held {
                stops: Some(stops), ..
            }) = runs.get(id)
            {
                stops.lost.cancel();
                lost += 1;
            }
        }
        lost
    }

    /// Ask the job of `id` to stop, for `request` (who asked and why).
    fn cancel(&self, id: RunId, request: String) {
        let mut runs = self.runs.lock().expect("in-flight set");
        if let Some(held) = runs.get_mut(&id)
            && let Some(stops) = &held.stops
        {
            stops.cancel.cancel();
            held.cancel_request = Some(request);
        }
    }
}

/// Refresh the heartbeat of every held run each `interval` until `stop`,
/// and every `cancel_check` ask which of the held runs whose job still runs
/// someone asked to cancel (a statement, so it works through a transaction
/// pooler and whatever Redis is). A failed beat is logged and retried on the
/// next tick: one missed beat is well inside the lease.
pub async fn heartbeat_loop(
    ledger: Ledger,
    holder: String,
    in_flight: InFlight,
    interval: Duration,
    cancel_check: Duration,
    stop: CancellationToken,
) {
    let mut beat = tokio::time::interval(interval);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut check = tokio::time::interval(cancel_check);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = beat.tick() => beat_once(&ledger, &holder, &in_flight).await,
            _ = check.tick() => check_cancels(&ledger, &holder, &in_flight).await,
        }
    }
}

async fn beat_once(ledger: &Ledger, holder: &str, in_flight: &InFlight) {
    let ids = in_flight.snapshot();
    match ledger.heartbeat(holder, &ids).await {
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

async fn check_cancels(ledger: &Ledger, holder: &str, in_flight: &InFlight) {
    let ids = in_flight.running_jobs();
    if ids.is_empty() {
        return;
    }
    match ledger.cancel_requests(holder, &ids).await {
        Ok(requests) => {
            for (id, request) in requests {
                tracing::info!(run_id = %id, %request, "cancel requested; stopping the job");
                in_flight.cancel(id, request);
            }
        }
        Err(e) => tracing::warn!(error = %e, "checking for cancel requests failed; retrying"),
    }
}
