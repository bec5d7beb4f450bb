//! Prometheus metrics: what the library records, under which names and
//! labels. Recorded through the `metrics` facade, so they cost next to
//! nothing until a binary installs an exporter (`--metrics-listen`); the
//! names follow Prometheus conventions (`opsrun_…_total` counters, base
//! units in `_seconds`), and labels stay bounded: run type, queue, shard,
//! outcome, reason, never a run or tenant id.
//!
//! Counters count what this process did (the runs a worker completed, the
//! reclaims a reaper made); sum them over processes. Queue gauges are set
//! by the reaper's gauge loop (see `opsrun_reaper::gauges`).

use std::time::Duration;

use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};

use crate::run::{Outcome, Run};

/// Attempts claimed: `type`, `queue`.
pub const RUNS_STARTED: &str = "opsrun_runs_started_total";
/// Terminal states written by this process: `type`, `queue`, `outcome`.
pub const RUNS_COMPLETED: &str = "opsrun_runs_completed_total";
/// Attempts that failed retryably and were queued again: `type`, `queue`.
pub const RUNS_RETRIED: &str = "opsrun_runs_retried_total";
/// Results dropped because the claim was taken over: `type`, `queue`.
pub const CLAIMS_LOST: &str = "opsrun_claims_lost_total";
/// Delivered entries acknowledged without running: `reason`.
pub const ENTRIES_SKIPPED: &str = "opsrun_entries_skipped_total";
/// Attempt durations, claim to result: `type`, `queue`, `outcome`.
pub const RUN_DURATION: &str = "opsrun_run_duration_seconds";
/// Time from dispatch (or creation) to claim: `type`, `queue`.
pub const QUEUE_WAIT: &str = "opsrun_run_queue_wait_seconds";
/// Runs per claim statement (group commit).
pub const CLAIM_BATCH: &str = "opsrun_claim_statement_runs";
/// Runs per completion statement (group commit).
pub const COMPLETION_BATCH: &str = "opsrun_completion_statement_runs";
/// Runs created whose dispatch failed (`queue.dispatch_failed`): `queue`.
pub const DISPATCH_FAILURES: &str = "opsrun_dispatch_failures_total";
/// Reclaims and re-dispatches by the reaper: `reason`.
pub const RECLAIMS: &str = "opsrun_reclaims_total";
/// Entries moved to a dead-letter stream: `queue`.
pub const DEAD_LETTERS: &str = "opsrun_dead_letters_total";
/// Jobs running in this worker now.
pub const JOBS_IN_FLIGHT: &str = "opsrun_worker_jobs_in_flight";
/// Jobs this worker runs at once at most (`--concurrency`).
pub const CONCURRENCY: &str = "opsrun_worker_concurrency";
/// Entries in a queue stream (XLEN): `queue`, `shard`.
pub const QUEUE_LENGTH: &str = "opsrun_queue_length";
/// Entries delivered and not acknowledged: `queue`, `shard`.
pub const QUEUE_PENDING: &str = "opsrun_queue_pending";
/// Entries not yet delivered to any worker: `queue`, `shard`.
pub const QUEUE_LAG: &str = "opsrun_queue_lag";
/// Consumers of the workers' group: `queue`, `shard`.
pub const QUEUE_CONSUMERS: &str = "opsrun_queue_consumers";
/// Active runs per queue and status (Postgres): `queue`, `status`.
pub const QUEUE_RUNS: &str = "opsrun_queue_runs";
/// Age of the oldest run queued and due on a queue: `queue`.
pub const QUEUE_OLDEST_AGE: &str = "opsrun_queue_oldest_queued_age_seconds";
/// 1 while a queue is paused: `queue`.
pub const QUEUE_PAUSED: &str = "opsrun_queue_paused";

/// Histogram buckets for durations (seconds): a no-op job to a long backup.
pub const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
    3600.0,
];
/// Histogram buckets for runs per statement.
pub const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// Give every metric its help text and unit (call once, after installing
/// an exporter).
pub fn describe() {
    describe_counter!(RUNS_STARTED, "Attempts claimed by this worker.");
    describe_counter!(RUNS_COMPLETED, "Terminal states written by this process.");
    describe_counter!(
        RUNS_RETRIED,
        "Attempts that failed retryably and were queued again."
    );
    describe_counter!(
        CLAIMS_LOST,
        "Results dropped because another holder had taken the run."
    );
    describe_counter!(
        ENTRIES_SKIPPED,
        "Delivered entries acknowledged without running anything."
    );
    describe_histogram!(
        RUN_DURATION,
        Unit::Seconds,
        "Attempt durations, claim to result."
    );
    describe_histogram!(
        QUEUE_WAIT,
        Unit::Seconds,
        "Time from a run's dispatch (or creation) to its claim."
    );
    describe_histogram!(CLAIM_BATCH, "Runs claimed per claim statement.");
    describe_histogram!(COMPLETION_BATCH, "Runs completed per completion statement.");
    describe_counter!(DISPATCH_FAILURES, "Runs whose dispatch to Redis failed.");
    describe_counter!(
        RECLAIMS,
        "Reclaims and re-dispatches by the reaper, by reason."
    );
    describe_counter!(DEAD_LETTERS, "Entries moved to a dead-letter stream.");
    describe_gauge!(JOBS_IN_FLIGHT, "Jobs running in this worker.");
    describe_gauge!(CONCURRENCY, "Jobs this worker runs at once at most.");
    describe_gauge!(QUEUE_LENGTH, "Entries in a queue stream (XLEN).");
    describe_gauge!(QUEUE_PENDING, "Entries delivered and not acknowledged.");
    describe_gauge!(QUEUE_LAG, "Entries not yet delivered to any worker.");
    describe_gauge!(QUEUE_CONSUMERS, "Consumers of the workers' group.");
    describe_gauge!(QUEUE_RUNS, "Active runs per queue and status.");
    describe_gauge!(
        QUEUE_OLDEST_AGE,
        Unit::Seconds,
        "Age of the oldest due queued run."
    );
    describe_gauge!(QUEUE_PAUSED, "1 while the queue is paused.");
}

fn labels(run: &Run) -> [(&'static str, String); 2] {
    [("type", run.run_type.clone()), ("queue", run.queue.clone())]
}

/// A job started running in this worker.
pub fn job_started() {
    gauge!(JOBS_IN_FLIGHT).increment(1.0);
}

/// A job that [`job_started`] counted has finished.
pub fn job_finished() {
    gauge!(JOBS_IN_FLIGHT).decrement(1.0);
}

/// This worker runs at most `n` jobs at once.
pub fn worker_concurrency(n: u16) {
    gauge!(CONCURRENCY).set(f64::from(n));
}

/// A run was claimed: counted, and its wait since dispatch (Postgres clock
/// on both ends) observed.
pub fn run_started(run: &Run) {
    counter!(RUNS_STARTED, &labels(run)).increment(1);
    if let Some(started) = run.started_at {
        let since = run.dispatched_at.unwrap_or(run.created_at);
        let wait = (started - since).to_std().unwrap_or_default();
        histogram!(QUEUE_WAIT, &labels(run)).record(wait.as_secs_f64());
    }
}

/// This process wrote `run`'s terminal state; its attempt took `took`
/// (`None` when this process did not run it, e.g. the reaper).
pub fn run_completed(run: &Run, outcome: Outcome, took: Option<Duration>) {
    let [kind, queue] = labels(run);
    let labels = [kind, queue, ("outcome", outcome.as_str().to_string())];
    counter!(RUNS_COMPLETED, &labels).increment(1);
    if let Some(took) = took {
        histogram!(RUN_DURATION, &labels).record(took.as_secs_f64());
    }
}

/// `run`'s attempt failed retryably and it was queued again.
pub fn run_retried(run: &Run) {
    counter!(RUNS_RETRIED, &labels(run)).increment(1);
}

/// `run`'s result was dropped: the claim had been taken over.
pub fn claim_lost(run: &Run) {
    counter!(CLAIMS_LOST, &labels(run)).increment(1);
}

/// Entries acknowledged without running, for `reason`.
pub fn entries_skipped(reason: &'static str, n: usize) {
    counter!(ENTRIES_SKIPPED, "reason" => reason).increment(n as u64);
}

/// A claim statement claimed `n` runs.
pub fn claim_statement(n: usize) {
    histogram!(CLAIM_BATCH).record(n as f64);
}

/// A completion statement completed `n` runs.
pub fn completion_statement(n: usize) {
    histogram!(COMPLETION_BATCH).record(n as f64);
}

/// A run of `queue` could not be dispatched.
pub fn dispatch_failed(queue: &str) {
    counter!(DISPATCH_FAILURES, "queue" => queue.to_string()).increment(1);
}

/// The reaper reclaimed or re-dispatched a run, for `reason`.
pub fn reclaimed(reason: &'static str) {
    counter!(RECLAIMS, "reason" => reason).increment(1);
}

/// `n` entries of `queue` were dead-lettered.
pub fn dead_lettered(queue: &str, n: u64) {
    counter!(DEAD_LETTERS, "queue" => queue.to_string()).increment(n);
}
