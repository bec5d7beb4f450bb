//! "Why is this run not moving?": what a queued or running run waits for,
//! in plain words, from the facts the ledger and Redis hold (its start time
//! and backoff, a paused queue, a concurrency slot it waits for and who
//! holds them, where its stream entry stands, its worker's
//! heartbeat against its lease, a cancel asked for). Redis facts are left
//! out when there is no transport or Redis does not answer; each
//! explanation says only what it read.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::error::Result;
use crate::ledger::Ledger;
use crate::run::{Run, Status};
use crate::transport::{EntryState, Transport};

/// What a run is waiting for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Explanation {
    /// One sentence: the main reason.
    pub summary: String,
    /// Every fact that bears on it, main one first.
    pub facts: Vec<String>,
}

/// Explain `run` as of `now`; `transport` adds where its stream entry
/// stands.
pub async fn explain(
    ledger: &Ledger,
    transport: Option<&Transport>,
    run: &Run,
    now: DateTime<Utc>,
) -> Result<Explanation> {
    let mut facts = match run.status {
        Status::Completed => vec![format!(
            "Completed {} ago: {}.",
            ago(now, run.completed_at.unwrap_or(run.updated_at)),
            run.outcome.label().to_lowercase()
        )],
        Status::Running => running(run, now),
        Status::Queued => queued(ledger, transport, run, now).await?,
    };
    let summary = facts.first().cloned().unwrap_or_default();
    if facts.len() == 1 {
        facts.clear();
    }
    Ok(Explanation { summary, facts })
}

fn running(run: &Run, now: DateTime<Utc>) -> Vec<String> {
    let mut facts = Vec::new();
    if let Some(at) = run.cancel_requested_at {
        facts.push(format!(
            "A cancel was asked for {} ago ({}): its worker stops the job within a second or two.",
            ago(now, at),
            run.cancel_request.as_deref().unwrap_or("cancelled")
        ));
    }
    let holder = run.holder.as_deref().unwrap_or("a worker");
    let since = run.started_at.map(|t| ago(now, t)).unwrap_or_default();
    facts.push(format!(
        "Running attempt {} of {} on {holder} for {since}.",
        run.attempt, run.max_attempts
    ));
    if let Some(beat) = run.heartbeat_at {
        let silent = (now - beat).num_seconds().max(0);
        if silent > i64::from(run.lease_seconds) {
            facts.insert(
                0,
                format!(
                    "Its worker stopped heartbeating {silent}s ago, past its {}s lease: the reaper takes the run back on its next round.",
                    run.lease_seconds
                ),
            );
        } else {
            facts.push(format!(
                "Last heartbeat {silent}s ago (lease {}s).",
                run.lease_seconds
            ));
        }
    }
    facts
}

async fn queued(
    ledger: &Ledger,
    transport: Option<&Transport>,
    run: &Run,
    now: DateTime<Utc>,
) -> Result<Vec<String>> {
    let mut facts = Vec::new();
    if let Some(at) = run.not_before.filter(|at| *at > now) {
        facts.push(match run.failure_summary.0.last() {
            Some(failure) if run.attempt > 0 => format!(
                "Backing off after attempt {} of {} ({}): retries in {} (at {}).",
                run.attempt,
                run.max_attempts,
                failure.code,
                until(now, at),
                at.format("%H:%M:%S UTC")
            ),
            _ => format!(
                "Scheduled: starts in {} (at {}).",
                until(now, at),
                at.format("%Y-%m-%d %H:%M:%S UTC")
            ),
        });
        return Ok(facts);
    }
    let paused = ledger.paused_queues().await?;
    if let Some(pause) = paused.iter().find(|p| p.queue == run.queue) {
        facts.push(format!(
            "Its queue {} is paused since {}{}: it starts once the queue is resumed.",
            run.queue,
            pause.paused_at.format("%Y-%m-%d %H:%M:%S UTC"),
            pause
                .reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        ));
    }
    if let (Some(since), Some(key)) = (run.slot_wait_since, &run.concurrency_key) {
        let slots = ledger.slot_holders(key, run).await?;
        let held_by = match slots.held_by.as_slice() {
            [] => "none held now: it is sent again within a second".to_string(),
            ids => format!(
                "held by {}",
                ids.iter()
                    .map(|id| format!("run #{id}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let credits = match slots.unused_credits {
            0 => String::new(),
            n => format!(
                ", and {n} taken by workers as credits and not in use (given back within seconds)"
            ),
        };
        let ahead = match slots.waiting_ahead {
            0 => String::new(),
            n => format!("; {n} older run(s) of the key wait ahead of it"),
        };
        facts.push(format!(
            "Waiting for a concurrency slot for {}: at most {} run(s) of {key} at once, {held_by}{credits}{ahead}. \
             It starts as soon as a slot frees, without using an attempt.",
            ago(now, since),
            slots.limit.map_or("its limit".to_string(), |l| l.to_string()),
        ));
        return Ok(facts);
    }
    let due_unsent = run
        .not_before
        .is_some_and(|at| run.dispatched_at.is_none_or(|sent| sent < at));
    if due_unsent {
        facts.push(
            "Due, not sent yet: the reaper's due pass sends it within a second (is a reaper running?)."
                .to_string(),
        );
        return Ok(facts);
    }
    let Some(transport) = transport else {
        facts.push(format!(
            "Queued on {} (where its entry stands is not known here).",
            run.queue
        ));
        return Ok(facts);
    };
    let stream = run.stream();
    let entry = match &run.dispatch_entry_id {
        Some(id) => Some((id.clone(), transport.entry_state(&stream, id).await)),
        None => None,
    };
    match entry {
        Some((id, Ok(EntryState::Missing))) => facts.push(format!(
            "Its stream entry {id} is gone from Redis: the reaper sends the run again once its dispatch is older than --redispatch-after."
        )),
        Some((id, Ok(EntryState::Pending { .. }))) => {
            if let Ok(Some(p)) = transport.pending_entry(&stream, &id).await {
                facts.push(format!(
                    "Its entry was delivered to {} {}s ago ({} deliveries) and not claimed yet; if that worker is gone, the reaper sends it again.",
                    p.consumer,
                    p.idle.as_secs(),
                    p.deliveries
                ));
            }
        }
        _ => {}
    }
    match transport.group_state(&stream).await {
        Ok(None) => facts.push(format!(
            "Waiting in queue {}: no worker has read this queue yet (start one with --queues {}).",
            stream, run.queue
        )),
        Ok(Some(group)) if group.consumers == 0 => facts.push(format!(
            "Waiting in queue {stream}: no worker reads it."
        )),
        Ok(Some(group)) => facts.push(match group.lag {
            Some(lag) => format!(
                "Waiting in queue {stream}: {lag} entries not yet taken by its {} worker(s), {} running.",
                group.consumers, group.pending
            ),
            None => format!("Waiting in queue {stream}."),
        }),
        Err(e) => facts.push(format!("Waiting in queue {stream} (Redis did not answer: {e}).")),
    }
    Ok(facts)
}

/// `3s`, `4m 5s`, `2h 3m` since `at`.
fn ago(now: DateTime<Utc>, at: DateTime<Utc>) -> String {
    span((now - at).num_seconds().max(0))
}

/// The same until `at`.
fn until(now: DateTime<Utc>, at: DateTime<Utc>) -> String {
    span((at - now).num_seconds().max(0))
}

fn span(seconds: i64) -> String {
    match seconds {
        s if s >= 3600 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m {}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}
