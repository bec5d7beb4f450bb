//! The worker lifecycle for one delivered entry: conditional claim
//! (`queued → running`, tenant and attempt checked), the handler stack under
//! a time limit with panics caught, a terminal write fenced on the claim, and
//! only then XACK. Delivery is at-least-once; the terminal state is written
//! exactly once.

mod acker;
mod batch;
mod claimer;
mod completer;
mod handler;
mod heartbeat;
mod middleware;
mod waker;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tracing::Instrument;

pub use acker::Acker;
pub use completer::Completer;
pub use handler::{Handler, Job, JobReport, JobResult, Route};
pub use heartbeat::{InFlight, Stops, heartbeat_loop};
pub use middleware::{Middleware, Next};

use crate::concurrency::credits::Credits;
use crate::error::Result;
use crate::ledger::{Claim, ClaimRequest, Fence, GiveBack, Ledger, Terminal};
use crate::run::{Failure, Outcome, Run, RunId, fold_failures};
use crate::sanitize;
use crate::trace::{self, TraceContext};
use crate::transport::{Delivery, QueueStream, Transport};

/// How long a claim keeps retrying while Postgres is unreachable before the
/// entry is left pending for the reaper. Generous: while Postgres is down no
/// worker can make progress anyway, and a pending entry waits for a reclaim.
pub const CLAIM_RETRY_BUDGET: Duration = Duration::from_secs(60);
/// How long a terminal write keeps retrying while Postgres is unreachable.
/// Kept below the default lease so a reclaim does not race a late write.
pub const COMPLETE_RETRY_BUDGET: Duration = Duration::from_secs(30);

/// Why a delivery was acknowledged without running anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// The entry's fields were missing or unparsable (or trimmed away).
    Malformed,
    /// No queued run matched: unknown run, other tenant, already running or
    /// completed, or a stale attempt (duplicate, late or forged entry).
    NotClaimable,
}

/// What happened to one delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Processed {
    /// The job ran and its terminal state was written, with this outcome.
    Completed(Outcome),
    /// Nothing ran; the entry was acknowledged.
    Skipped(SkipReason),
    /// The attempt failed retryably; the run is queued again for later.
    Retried,
    /// The job ran but the claim had been taken over; its result was dropped.
    LeaseLost,
    /// Postgres was unreachable; the entry stays pending for the reaper.
    Deferred,
}

/// A run this worker claimed, with the span its attempt is recorded under
/// (a child of the run's stored trace context when spans are exported).
pub struct Claimed {
    /// The run as claimed: `running`, its attempt counted.
    pub run: Run,
    span: tracing::Span,
    /// What stops its job. The run is heartbeated from its claim, so one
    /// that waits in the worker for a free slot (see the worker's
    /// `--prefetch`) keeps its lease and sees a cancel before it starts.
    stops: Stops,
}

/// A claimed run whose job has finished and whose result is not written
/// yet (see [`Lifecycle::settle`]).
pub struct Finished {
    delivery: Delivery,
    run: Run,
    result: JobResult,
    retry_backoff: Option<crate::registry::RetryBackoff>,
    span: tracing::Span,
    /// Who asked to cancel the run while its job ran, and why.
    cancelled: Option<String>,
    /// How long the job ran.
    took: Duration,
}

/// Counters of processed deliveries.
#[derive(Debug, Default)]
pub struct LifecycleStats {
    /// Runs completed by this process.
    pub completed: AtomicU64,
    /// Entries acknowledged without running (duplicate, forged, malformed).
    pub skipped: AtomicU64,
    /// Attempts that failed retryably and were scheduled again.
    pub retried: AtomicU64,
    /// Results dropped because the claim was lost.
    pub lease_lost: AtomicU64,
    /// Entries left pending because Postgres was unreachable.
    pub deferred: AtomicU64,
}

/// Runs delivered entries through claim → handler → fenced completion → ack.
pub struct Lifecycle {
    ledger: Ledger,
    transport: Transport,
    holder: String,
    routes: HashMap<String, Route>,
    fallback: Option<Route>,
    middleware: Arc<Vec<Arc<dyn Middleware>>>,
    in_flight: InFlight,
    stats: Arc<LifecycleStats>,
    claimer: Option<claimer::Claimer>,
    completer: Option<Completer>,
    acker: Option<Acker>,
    waker: Option<waker::Waker>,
    credits: Option<Arc<Credits>>,
    cancel_grace: Duration,
}

/// Default time a job gets to stop on its own after a cancel (an exec job's
/// process group has had SIGTERM) before it is dropped (SIGKILL).
pub const DEFAULT_CANCEL_GRACE: Duration = Duration::from_secs(10);

impl Lifecycle {
    /// A lifecycle whose claims are held as `holder` (the consumer name).
    pub fn new(ledger: Ledger, transport: Transport, holder: impl Into<String>) -> Self {
        Lifecycle {
            ledger,
            transport,
            holder: holder.into(),
            routes: HashMap::new(),
            fallback: None,
            middleware: Arc::new(Vec::new()),
            in_flight: InFlight::default(),
            stats: Arc::default(),
            claimer: None,
            completer: None,
            acker: None,
            waker: None,
            credits: None,
            cancel_grace: DEFAULT_CANCEL_GRACE,
        }
    }

    /// How long a job gets to stop on its own after a cancel before it is
    /// dropped (default [`DEFAULT_CANCEL_GRACE`]).
    pub fn cancel_grace(mut self, grace: Duration) -> Self {
        self.cancel_grace = grace;
        self
    }

    /// Handle `run_type` with `route`.
    pub fn route(mut self, run_type: impl Into<String>, route: Route) -> Self {
        self.routes.insert(run_type.into(), route);
        self
    }

    /// Handle every type without its own route with `route`.
    pub fn fallback(mut self, route: Route) -> Self {
        self.fallback = Some(route);
        self
    }

    /// Claim runs of limited types against slot credits taken in blocks of
    /// `block` (the worker's concurrency) while their key has room to spare
    /// (see [`crate::concurrency::credits`]). Call before
    /// [`Lifecycle::group_commit`], whose claims use them.
    pub fn slot_credits(mut self, block: u32) -> Self {
        self.credits = Some(Arc::new(Credits::new(self.holder.clone(), block)));
        self
    }

    /// Give back every unused slot credit and take no more: the worker
    /// stops. A credit still used by a run left to the reaper comes back
    /// when it expires.
    pub async fn give_back_credits(&self) {
        if let Some(credits) = &self.credits
            && let Err(e) = self.ledger.give_back_credits(credits, GiveBack::All).await
        {
            tracing::warn!(error = %e, "giving back concurrency credits failed; the reaper returns them once they expire");
        }
    }

    /// Write claims and terminal states in groups: reads claimed while a
    /// claim is committing share the next statement, completions that happen
    /// together share one statement (same fencing), and their entries one
    /// XACK, and slots freed together one wake of their waiters. Starts four
    /// tasks (five with slot credits: their renewal), so call it inside a
    /// Tokio runtime.
    pub fn group_commit(mut self) -> Self {
        self.claimer = Some(claimer::Claimer::start(
            self.ledger.clone(),
            self.holder.clone(),
            self.credits.clone(),
        ));
        self.completer = Some(Completer::start(self.ledger.clone()));
        self.acker = Some(Acker::start(self.transport.clone()));
        self.waker = Some(waker::Waker::start(
            self.ledger.clone(),
            self.transport.clone(),
            self.credits.clone(),
        ));
        if let Some(credits) = &self.credits {
            tokio::spawn(waker::keep_credits(
                self.ledger.clone(),
                Arc::downgrade(credits),
            ));
        }
        self
    }

    /// Add a middleware; the first added is the outermost.
    pub fn layer(mut self, middleware: impl Middleware) -> Self {
        Arc::get_mut(&mut self.middleware)
            .expect("layers are added before use")
            .push(Arc::new(middleware));
        self
    }

    /// The claim holder name.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// The runs currently held (for the heartbeat loop).
    pub fn in_flight(&self) -> &InFlight {
        &self.in_flight
    }

    /// Counters so far.
    pub fn stats(&self) -> &LifecycleStats {
        &self.stats
    }

    /// Process one delivery end to end.
    pub async fn process(&self, delivery: Delivery) -> Processed {
        match self.claim(vec![delivery]).await.pop() {
            Some((delivery, Ok(claimed))) => self.run_claimed(delivery, claimed).await,
            Some((_, Err(processed))) => processed,
            None => Processed::Deferred,
        }
    }

    /// How runs of `run_type` are run: its route, or the fallback.
    fn route_of(&self, run_type: &str) -> Option<&Route> {
        self.routes.get(run_type).or(self.fallback.as_ref())
    }

    /// Claim the runs of a batch of deliveries in one statement. Each
    /// delivery comes back with its claimed run, or with why nothing will
    /// run: skipped entries (malformed, duplicate, late, forged) are
    /// acknowledged together; when Postgres is unreachable all stay pending.
    /// A claimed run is held (heartbeated, its cancel watched) from here
    /// until [`Lifecycle::settle`]: give each to [`Lifecycle::run_job`].
    pub async fn claim(
        &self,
        deliveries: Vec<Delivery>,
    ) -> Vec<(Delivery, Result<Claimed, Processed>)> {
        // Each attempt's span opens before its claim, so the claim (recorded
        // below with the statement's times) falls inside it.
        let spans: Vec<tracing::Span> = deliveries.iter().map(attempt_span).collect();
        let claim_started = std::time::Instant::now();
        let requests: Vec<ClaimRequest> = deliveries
            .iter()
            .filter_map(|d| d.entry.as_ref().map(|e| (d, e)))
            .map(|(d, e)| {
                let route = self.route_of(&e.run_type);
                ClaimRequest {
                    tenant_id: e.tenant_id,
                    run_id: e.run_id,
                    attempt: e.attempt,
                    lease: route.map_or(crate::registry::DEFAULT_LEASE, |r| r.lease),
                    entry_id: d.entry_id.clone(),
                    shard: d.stream.shard,
                    limit: route.and_then(|r| r.concurrency_limit),
                    concurrency_key_digest: e.concurrency_key_digest.clone(),
                }
            })
            .collect();
        let claimed = match retry_while_unavailable(CLAIM_RETRY_BUDGET, || async {
            match &self.claimer {
                Some(claimer) => claimer.claim(requests.clone()).await,
                None => self.ledger.mark_running_many(&requests, &self.holder).await,
            }
        })
        .await
        {
            Ok(runs) => runs,
            Err(e) => {
                tracing::error!(entries = deliveries.len(), error = %e, "could not claim runs; leaving the entries pending");
                self.stats
                    .deferred
                    .fetch_add(deliveries.len() as u64, Ordering::Relaxed);
                return deliveries
                    .into_iter()
                    .map(|d| (d, Err(Processed::Deferred)))
                    .collect();
            }
        };
        let claim_seconds = claim_started.elapsed().as_secs_f64();
        let statement_runs = claimed.len() as i64;
        claimed.iter().for_each(crate::telemetry::run_started);
        let mut claimed: HashMap<RunId, Run> = claimed.into_iter().map(|r| (r.id, r)).collect();
        let mut skipped: Vec<(QueueStream, String)> = Vec::new();
        let results: Vec<(Delivery, Result<Claimed, Processed>)> = deliveries
            .into_iter()
            .zip(spans)
            .map(|(delivery, span)| {
                let outcome = match &delivery.entry {
                    None => {
                        tracing::warn!(stream = %delivery.stream, entry_id = %delivery.entry_id, "malformed entry acknowledged and skipped");
                        crate::telemetry::entries_skipped("malformed", 1);
                        Err(Processed::Skipped(SkipReason::Malformed))
                    }
                    // The run is handed to the first of its deliveries that carries
                    // the claimed attempt; a duplicate in the same batch is skipped.
                    Some(entry) => match claimed.remove(&entry.run_id).filter(|r| r.attempt == entry.attempt) {
                        Some(run) => {
                            if let Some(context) = run.traceparent.as_deref().and_then(|t| TraceContext::parse(t).ok()) {
                                context.attach(&span);
                            }
                            trace::annotate(&span, "opsrun.claim.statement_runs", statement_runs);
                            trace::annotate(&span, "opsrun.claim.seconds", claim_seconds);
                            let stops = self.in_flight.insert(run.id);
                            Ok(Claimed { run, span, stops })
                        }
                        None => {
                            span.record("skipped", "not claimable");
                            tracing::info!(run_id = %entry.run_id, tenant_id = entry.tenant_id, attempt = entry.attempt,
                                entry_id = %delivery.entry_id, "entry matches no queued run (duplicate, late, forged, or waiting for a slot); skipped");
                            crate::telemetry::entries_skipped("not_claimable", 1);
                            Err(Processed::Skipped(SkipReason::NotClaimable))
                        }
                    },
                };
                if outcome.is_err() {
                    skipped.push((delivery.stream.clone(), delivery.entry_id.clone()));
                }
                (delivery, outcome)
            })
            .collect();
        self.stats
            .skipped
            .fetch_add(skipped.len() as u64, Ordering::Relaxed);
        // A run this claim made wait for a slot may have missed the wake of
        // a slot freed while the claim ran (that completion saw no waiter
        // yet): look again now that the wait is committed, or it waits for
        // the key's next completion, or the reaper's due pass if none comes.
        let refused_limited = results.iter().any(|(d, outcome)| {
            matches!(outcome, Err(Processed::Skipped(SkipReason::NotClaimable)))
                && d.entry.as_ref().is_some_and(|e| {
                    self.route_of(&e.run_type)
                        .is_some_and(|r| r.concurrency_limit.is_some())
                })
        });
        if refused_limited
            && let Err(e) = Box::pin(crate::concurrency::wake(
                &self.ledger,
                &self.transport,
                None,
            ))
            .await
        {
            tracing::warn!(error = %e, "waking runs waiting for a slot failed; the reaper's due pass will");
        }
        let mut by_stream: HashMap<&QueueStream, Vec<&str>> = HashMap::new();
        for (stream, entry_id) in &skipped {
            by_stream.entry(stream).or_default().push(entry_id);
        }
        for (stream, entry_ids) in by_stream {
            if let Err(e) = self.transport.ack(stream, &entry_ids).await {
                tracing::warn!(%stream, error = %e, "acknowledge failed; entries stay pending");
            }
        }
        results
    }

    /// Run a claimed run: the handler stack, then the fenced terminal write
    /// (or a retry), then the acknowledgement.
    pub async fn run_claimed(&self, delivery: Delivery, claimed: Claimed) -> Processed {
        let finished = self.run_job(delivery, claimed).await;
        self.settle(finished).await
    }

    /// Run the handler stack of a claimed run. The run stays held (and
    /// heartbeated) until [`Lifecycle::settle`] has written its result.
    pub async fn run_job(&self, delivery: Delivery, claimed: Claimed) -> Finished {
        let Claimed { run, span, stops } = claimed;
        let started = std::time::Instant::now();
        crate::telemetry::job_started();
        tracing::info!(parent: &span, "run started");
        // A child process continues the trace from the attempt's span, or
        // from the stored context when spans are not exported.
        let trace = TraceContext::of(&span).or_else(|| {
            run.traceparent
                .as_deref()
                .and_then(|t| TraceContext::parse(t).ok())
        });
        // The span follows the job into its task, so handler logs carry the run's fields.
        let route = self.route_of(&run.run_type).cloned();
        let retry_backoff = route.as_ref().map(|r| r.retry);
        let job = Job::new(run.clone())
            .stopped_by(stops.cancel.clone())
            .traced(trace);
        let result = self
            .execute(job, route, stops)
            .instrument(span.clone())
            .await;
        if let JobResult::Failed { code, .. } | JobResult::Retry { code, .. } = &result {
            trace::fail(&span, code.clone());
        }
        // A cancel asked for while the job ran decides the outcome, whatever
        // the job returned (its counts are kept).
        let cancelled = self.in_flight.cancel_request(run.id);
        self.in_flight.job_finished(run.id);
        crate::telemetry::job_finished();
        Finished {
            delivery,
            run,
            result,
            retry_backoff,
            span,
            cancelled,
            took: started.elapsed(),
        }
    }

    /// Write a finished job's result, fenced on its claim (or schedule its
    /// retry), then acknowledge its entry.
    pub async fn settle(&self, finished: Finished) -> Processed {
        let span = finished.span.clone();
        let processed = self.write_result(finished).await;
        let written = match &processed {
            Processed::Completed(outcome) => outcome.as_str(),
            Processed::Retried => "retried",
            Processed::LeaseLost => "claim_lost",
            Processed::Deferred => "deferred",
            Processed::Skipped(_) => "skipped",
        };
        trace::annotate(&span, "opsrun.written", written);
        if processed == Processed::Deferred {
            trace::fail(
                &span,
                "the result could not be written; the reaper will reclaim the run",
            );
        }
        processed
    }

    async fn write_result(&self, finished: Finished) -> Processed {
        let Finished {
            delivery,
            run,
            result,
            retry_backoff,
            span,
            cancelled,
            took,
        } = finished;
        let claim = Claim {
            tenant_id: run.tenant_id,
            run_id: run.id,
            holder: &self.holder,
            attempt: run.attempt,
        };
        // Failures of earlier attempts stay on the run, folded by code.
        let prior = run.failure_summary.0.clone();
        if let (
            JobResult::Retry {
                code,
                message,
                delay,
            },
            Some(backoff),
        ) = (&result, retry_backoff)
            && run.attempt < run.max_attempts
            && cancelled.is_none()
        {
            let failures =
                fold_failures(prior.into_iter().chain([sanitize::failure(code, message)]));
            let delay = delay.unwrap_or_else(|| backoff.delay(run.attempt));
            // Rare paths are boxed: inlined, their statement futures made
            // every job's task 11 KB (3 KB now), copied on each spawn and poll.
            let retried = Box::pin(retry_while_unavailable(COMPLETE_RETRY_BUDGET, || {
                self.ledger.retry(&claim, delay, &failures)
            }))
            .await;
            self.in_flight.remove(run.id);
            if retried.is_ok() {
                self.run_ended(run.id);
            }
            match &retried {
                Ok(Some(_)) => {
                    crate::telemetry::run_retried(&run);
                    self.slot_freed(&run).await;
                }
                Ok(None) => crate::telemetry::claim_lost(&run),
                Err(_) => {}
            }
            return Box::pin(self.after_retry(retried, &delivery, &span, delay)).await;
        }
        let (mut outcome, counts, mut failures) = terminal_state(result, prior);
        if let Some(request) = cancelled {
            outcome = Outcome::Cancelled;
            failures = fold_failures(failures.into_iter().chain([Failure {
                code: "run.cancelled".into(),
                message: request,
                count: 1,
            }]));
        }
        let terminal = Terminal {
            outcome,
            counts: &counts,
            failures: &failures,
            reclaim: None,
        };
        // The outcome written, or `None` when the claim was lost.
        let completion = retry_while_unavailable(COMPLETE_RETRY_BUDGET, || async {
            match &self.completer {
                Some(completer) => completer.complete(&claim, terminal).await,
                // Alone, the row is read back, not whether its key has
                // waiters: wake them in case.
                None => Box::pin(self.ledger.complete(Fence::Claim(claim), terminal))
                    .await
                    .map(|done| done.map(|run| (run.outcome, run.concurrency_key.is_some()))),
            }
        })
        .await;
        self.in_flight.remove(run.id);
        if completion.is_ok() {
            self.run_ended(run.id);
        }

        match completion {
            Ok(Some((outcome, slot_waiters))) => {
                tracing::info!(parent: &span, outcome = outcome.as_str(), "run completed");
                crate::telemetry::run_completed(&run, outcome, Some(took));
                if slot_waiters {
                    self.slot_freed(&run).await;
                }
                self.ack(&delivery.stream, &delivery.entry_id).await;
                self.stats.completed.fetch_add(1, Ordering::Relaxed);
                Processed::Completed(outcome)
            }
            Ok(None) => {
                // Another holder took the run over; it owns the result now.
                tracing::warn!(parent: &span, "claim was lost before completion; result dropped");
                crate::telemetry::claim_lost(&run);
                self.ack(&delivery.stream, &delivery.entry_id).await;
                self.stats.lease_lost.fetch_add(1, Ordering::Relaxed);
                Processed::LeaseLost
            }
            Err(e) => {
                tracing::error!(parent: &span, error = %e, "could not write the terminal state; the reaper will reclaim the run");
                self.stats.deferred.fetch_add(1, Ordering::Relaxed);
                Processed::Deferred
            }
        }
    }

    /// Run the middleware stack and handler in their own task, under the
    /// route's time limit, turning panics and timeouts into failures.
    async fn execute(&self, job: Job, route: Option<Route>, stops: Stops) -> JobResult {
        let Some(route) = route else {
            return JobResult::failed(
                "job.unknown_type",
                format!("no handler for type {} on this worker", job.run.run_type),
            );
        };
        // A run claimed ahead of a free slot (the worker's prefetch) may be
        // taken over or cancelled while it waits: its job does not start.
        if stops.lost.is_cancelled() {
            return JobResult::failed(
                "job.lease_lost",
                "the run was taken over by another worker before its job started",
            );
        }
        if stops.cancel.is_cancelled() {
            return JobResult::failed(
                "job.cancelled",
                "the run was cancelled before its job started",
            );
        }
        let middleware = Arc::clone(&self.middleware);
        let stack = async move {
            Next {
                rest: &middleware,
                handler: route.handler.as_ref(),
            }
            .run(job)
            .await
        };
        let mut task = tokio::spawn(stack.in_current_span());
        let stopped = |code: &str, message: String| (code.to_string(), message);
        let stop = tokio::select! {
            joined = &mut task => {
                return match joined {
                    Ok(result) => result,
                    Err(join) if join.is_panic() => {
                        let payload = join.into_panic();
                        let text = payload
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| payload.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "non-text panic payload".to_string());
                        JobResult::failed("job.panicked", format!("the job panicked: {text}"))
                    }
                    Err(_) => JobResult::failed("job.cancelled", "the job task was cancelled"),
                };
            }
            _ = tokio::time::sleep(route.time_limit) => stopped(
                "job.timeout",
                format!("the job exceeded its time limit of {}s and was stopped", route.time_limit.as_secs_f64()),
            ),
            _ = stops.lost.cancelled() => stopped(
                "job.lease_lost",
                "the run was taken over by another worker; this attempt was stopped".to_string(),
            ),
            // The job saw the cancel too (`Job::cancelled`; an exec job's
            // process group got SIGTERM) and may stop on its own, with its
            // counts, within the grace.
            _ = stops.cancel.cancelled() => match tokio::time::timeout(self.cancel_grace, &mut task).await {
                Ok(Ok(result)) => return result,
                Ok(Err(_)) => return JobResult::failed("job.cancelled", "the job task failed while stopping"),
                Err(_) => stopped(
                    "job.cancelled",
                    format!("the job did not stop within {}s of the cancel and was killed", self.cancel_grace.as_secs_f64()),
                ),
            },
        };
        // Dropping the task drops the handler future, which kills an exec
        // job's process group.
        task.abort();
        let _ = task.await;
        JobResult::failed(stop.0, stop.1)
    }

    /// Acknowledge and count after a retry was (or was not) scheduled.
    async fn after_retry(
        &self,
        retried: Result<Option<Run>>,
        delivery: &Delivery,
        span: &tracing::Span,
        delay: Duration,
    ) -> Processed {
        match retried {
            Ok(Some(_)) => {
                tracing::info!(parent: span, retry_in_ms = delay.as_millis() as u64, "attempt failed retryably; retry scheduled");
                self.ack(&delivery.stream, &delivery.entry_id).await;
                self.stats.retried.fetch_add(1, Ordering::Relaxed);
                Processed::Retried
            }
            Ok(None) => {
                tracing::warn!(parent: span, "claim was lost before the retry was scheduled; result dropped");
                self.ack(&delivery.stream, &delivery.entry_id).await;
                self.stats.lease_lost.fetch_add(1, Ordering::Relaxed);
                Processed::LeaseLost
            }
            Err(e) => {
                tracing::error!(parent: span, error = %e, "could not schedule the retry; the reaper will reclaim the run");
                self.stats.deferred.fetch_add(1, Ordering::Relaxed);
                Processed::Deferred
            }
        }
    }

    /// `run` is no longer `running` under this worker's claim (Postgres
    /// said so): a slot credit it used is free again. (Not after an error:
    /// the run may still be running, and keeps its credit.)
    fn run_ended(&self, run: RunId) {
        if let Some(credits) = &self.credits {
            credits.run_ended(run);
        }
    }

    /// `run` stopped running and freed a concurrency slot: wake the runs
    /// waiting for one of its key.
    async fn slot_freed(&self, run: &Run) {
        let Some(key) = &run.concurrency_key else {
            return;
        };
        match &self.waker {
            Some(waker) => waker.freed(key).await,
            None => {
                let keys = std::slice::from_ref(key);
                if let Err(e) = Box::pin(crate::concurrency::wake(
                    &self.ledger,
                    &self.transport,
                    Some(keys),
                ))
                .await
                {
                    tracing::warn!(error = %e, "waking runs waiting for a slot failed; the reaper's due pass will");
                }
            }
        }
    }

    async fn ack(&self, stream: &QueueStream, entry_id: &str) {
        if let Some(acker) = &self.acker {
            return acker.ack(stream, entry_id).await;
        }
        if let Err(e) = Box::pin(self.transport.ack(stream, &[entry_id])).await {
            // The run's state is already committed; a stale pending entry is
            // only a hint and the reaper clears it.
            tracing::warn!(%stream, entry_id, error = %e, "acknowledge failed; entry stays pending");
        }
    }
}

/// Outcome, counts and sanitized failures for a job result, with the
/// failures of earlier attempts (`prior`) folded in by code. The outcome
/// comes from this attempt alone.
fn terminal_state(
    result: JobResult,
    prior: Vec<crate::Failure>,
) -> (Outcome, crate::SummaryCounts, Vec<crate::Failure>) {
    let (outcome, counts, failures) = match result {
        // Counts a run cannot store fail the run, by name, instead of
        // failing the statement that writes it and every run grouped with it.
        JobResult::Finished(report) => match report.summary_counts.out_of_range() {
            Some((name, n)) => (
                Outcome::Failed,
                Default::default(),
                vec![sanitize::failure(
                    "job.bad_result",
                    &format!(
                        "the job reported summary_counts.{name} = {n}, above the largest count a run stores ({})",
                        crate::run::MAX_COUNT
                    ),
                )],
            ),
            None => {
                let failures =
                    fold_failures(report.failures.into_iter().map(sanitize::sanitize_failure));
                let outcome = match report.outcome {
                    Some(o) if o.is_terminal() && o != Outcome::Cancelled => o,
                    _ => Outcome::derive(&report.summary_counts, &failures),
                };
                (outcome, report.summary_counts, failures)
            }
        },
        // A retryable failure on the last attempt is a failure.
        JobResult::Failed { code, message } | JobResult::Retry { code, message, .. } => (
            Outcome::Failed,
            Default::default(),
            vec![sanitize::failure(&code, &message)],
        ),
    };
    (
        outcome,
        counts,
        fold_failures(prior.into_iter().chain(failures)),
    )
}

/// The span of one delivered attempt; its fields are on every log line the
/// run's job writes (the JSON format's `span`).
fn attempt_span(delivery: &Delivery) -> tracing::Span {
    match &delivery.entry {
        Some(e) => tracing::info_span!("run", run_id = %e.run_id, tenant_id = e.tenant_id,
            r#type = %e.run_type, attempt = e.attempt, queue = %delivery.stream.queue,
            skipped = tracing::field::Empty),
        None => tracing::Span::none(),
    }
}

/// Retry `op` with backoff while Postgres is unreachable (or a statement
/// lost a deadlock), up to `budget`. Other errors (a rejected statement) are
/// returned at once.
async fn retry_while_unavailable<T, F, Fut>(budget: Duration, mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let started = tokio::time::Instant::now();
    let mut delay = Duration::from_millis(100);
    loop {
        match op().await {
            Err(e) if e.is_retryable() && started.elapsed() + delay < budget => {
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "postgres unavailable or conflict; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::{Failure, SummaryCounts};

    #[test]
    fn terminal_state_derives_outcome_and_sanitizes() {
        let (o, _, f) = terminal_state(
            JobResult::failed("job.exit_nonzero", "password=hunter2 failed"),
            vec![],
        );
        assert_eq!(o, Outcome::Failed);
        assert!(!f[0].message.contains("hunter2"));

        let report = JobReport {
            outcome: None,
            summary_counts: SummaryCounts {
                total: 3,
                success: 2,
                failed: 1,
                skipped: 0,
            },
            failures: vec![
                Failure {
                    code: "item.failed".into(),
                    message: "token=abc123456".into(),
                    count: 1,
                },
                Failure {
                    code: "item.failed".into(),
                    message: "other".into(),
                    count: 1,
                },
            ],
        };
        let (o, counts, f) = terminal_state(JobResult::Finished(report), vec![]);
        assert_eq!(o, Outcome::PartiallySucceeded);
        assert_eq!(counts.failed, 1);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].count, 2);
        assert!(!f[0].message.contains("abc123456"));

        // Earlier attempts' failures are kept; the outcome is this attempt's.
        let throttled = Failure {
            code: "graph.throttled".into(),
            message: "Throttled (retrying)".into(),
            count: 2,
        };
        let (o, _, f) = terminal_state(JobResult::succeeded(), vec![throttled.clone()]);
        assert_eq!(o, Outcome::Succeeded);
        assert_eq!(f, vec![throttled.clone()]);
        let (o, _, f) = terminal_state(
            JobResult::retry("graph.throttled", "Throttled (retrying)"),
            vec![throttled],
        );
        assert_eq!(
            o,
            Outcome::Failed,
            "a retry on the last attempt fails the run"
        );
        assert_eq!(f[0].count, 3);

        // A job cannot claim the reserved outcome or "pending".
        let pending = JobReport {
            outcome: Some(Outcome::Pending),
            ..Default::default()
        };
        assert_eq!(
            terminal_state(JobResult::Finished(pending), vec![]).0,
            Outcome::Succeeded
        );
    }
}
