//! Operator actions, each recorded in the audit trail.
//!
//! Cancel: a queued or waiting run completes `cancelled` at once; a running
//! one is stopped by its worker (an exec job's process group with it, a Rust
//! handler through `Job::cancelled`) and completes `cancelled` with the
//! counts it reported; a cancel racing a completion or a reclaim leaves one
//! terminal state.
//!
//! Retry: a new run like a failed one, linked to it.
//!
//! Pause: a worker stops taking a paused queue's runs within a second or two
//! while other queues flow, lets in-flight jobs finish, and takes the
//! waiting runs once the queue is resumed; nothing is lost.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use opsrun::lifecycle::{Handler, Job, JobReport, JobResult, Lifecycle, Route};
use opsrun::{CancelResult, Initiator, Outcome, RunId, RunRequest, Status, SummaryCounts};
use opsrun_worker::consumer::{self, WorkerConfig};
use serde_json::json;
use support::{TestEnv, Worker, assert_exit, json_stdout, wait_until};
use tokio_util::sync::CancellationToken;

fn ada() -> Initiator {
    Initiator::user(7, "Ada")
}

/// Wait until run `id` of `tenant` is in `status` with `attempt`.
async fn reaches(
    env: &TestEnv,
    tenant: i64,
    id: RunId,
    status: Status,
    attempt: i32,
) -> opsrun::Run {
    wait_until(Duration::from_secs(15), || async {
        env.ledger()
            .get(tenant, id)
            .await
            .unwrap()
            .filter(|r| r.status == status && r.attempt == attempt)
    })
    .await
    .unwrap_or_else(|| panic!("run {id} never was {status:?} at attempt {attempt}"))
}

#[tokio::test]
async fn a_queued_run_is_cancelled_at_once_with_who_and_why_recorded() {
    let env = TestEnv::new().await;
    let request = RunRequest::new(1, "test.succeed")
        .inputs(json!({"site": "paris"}))
        .initiator(Initiator::user(3, "Grace"));
    let run = env.service.ensure_run(&request).await.unwrap().run;

    // Another tenant cannot see it, let alone cancel it.
    let out = env.producer(&["cancel", "--tenant", "2", "--run", &run.id.to_string()]);
    let stderr = assert_exit(&out, 6);
    assert!(stderr.contains("no run"), "{stderr}");
    assert_eq!(
        env.ledger().get(1, run.id).await.unwrap().unwrap().status,
        Status::Queued
    );

    let out = env.producer(&[
        "cancel",
        "--tenant",
        "1",
        "--run",
        &run.id.to_string(),
        "--user-id",
        "7",
        "--actor-name",
        "Ada",
        "--reason",
        "wrong site; token=abcd1234efgh5678ijkl",
    ]);
    assert_exit(&out, 0);
    let printed = json_stdout(&out);
    assert_eq!(printed["result"], "cancelled");
    assert_eq!(printed["outcome"], "cancelled");
    let cancelled = env.ledger().get(1, run.id).await.unwrap().unwrap();
    assert_eq!(cancelled.status, Status::Completed);
    assert_eq!(cancelled.outcome, Outcome::Cancelled);
    let failure = &cancelled.failure_summary.0[0];
    assert_eq!(failure.code, "run.cancelled");
    assert!(
        failure
            .message
            .starts_with("cancelled by Ada (user 7): wrong site"),
        "{failure:?}"
    );
    assert!(
        !failure.message.contains("abcd1234efgh5678ijkl"),
        "secret kept: {failure:?}"
    );

    // Again: nothing changes, and it says so.
    let (again, _) = env
        .service
        .cancel(1, run.id, &ada(), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again, CancelResult::AlreadyCompleted);
    assert_eq!(
        env.ledger().get(1, run.id).await.unwrap().unwrap(),
        cancelled
    );
    // A run that is not there.
    assert!(
        env.service
            .cancel(1, RunId(999_999), &ada(), None)
            .await
            .unwrap()
            .is_none()
    );

    // The trail: both actions, newest first, with their actor; none in tenant 2.
    let actions = env
        .ledger()
        .operator_actions(1, Some(run.id), 10)
        .await
        .unwrap();
    let results: Vec<&str> = actions.iter().map(|a| a.result.as_str()).collect();
    assert_eq!(results, ["already_completed", "cancelled"]);
    assert!(
        actions
            .iter()
            .all(|a| a.actor_name == "Ada" && a.actor_user_id == Some(7) && a.action == "cancel")
    );
    assert!(
        env.ledger()
            .operator_actions(2, None, 10)
            .await
            .unwrap()
            .is_empty()
    );

    // The initiator is told it was cancelled, and by whom.
    let notes = env.ledger().notifications(1, 3, false, 10).await.unwrap();
    let done = notes
        .iter()
        .find(|n| n.kind == "completed")
        .expect("a terminal notification");
    assert!(done.title.ends_with("was cancelled"), "{done:?}");
    assert!(done.body.contains("cancelled by Ada (user 7)"), "{done:?}");

    // Bad input changes nothing.
    let out = env.producer(&["cancel", "--tenant", "1", "--run", "0"]);
    assert_exit(&out, 2);
    let long = "x".repeat(600);
    let refused = env.service.cancel(1, run.id, &ada(), Some(&long)).await;
    assert!(refused.unwrap_err().to_string().contains("reason"));
}

#[tokio::test]
async fn a_run_waiting_to_retry_is_cancelled_and_never_runs_again() {
    let env = TestEnv::new().await;
    let worker = Worker::spawn(&env, &env.redis_url, &[]);
    let run = support::enqueue(&env.service, 1, "test.throttled").await;
    // Its first attempt asks for a retry; with no reaper the retry stays due.
    let waiting = reaches(&env, 1, run.id, Status::Queued, 1).await;
    assert!(waiting.not_before.is_some());
    let (result, after) = env
        .service
        .cancel(1, run.id, &ada(), Some("not needed"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(result, CancelResult::Cancelled);
    assert_eq!(after.outcome, Outcome::Cancelled);
    let codes: Vec<&str> = after
        .failure_summary
        .0
        .iter()
        .map(|f| f.code.as_str())
        .collect();
    assert_eq!(codes, ["job.retry", "run.cancelled"]);
    // The due pass finds nothing to send.
    let config = opsrun_reaper::ReaperConfig {
        queues: vec!["default".into()],
        ..Default::default()
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = opsrun_reaper::run_once(&env.service, &config).await;
    assert_eq!(report.due.dispatched, 0, "{report:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(worker.executions_of(run.id), 1);
}

#[tokio::test]
async fn a_running_exec_job_is_stopped_with_its_process_group_and_keeps_its_counts() {
    let env = TestEnv::new().await;
    let worker = Worker::spawn(&env, &env.redis_url, &["--cancel-grace", "5s"]);
    let run = support::enqueue(&env.service, 1, "test.cancellable").await;
    reaches(&env, 1, run.id, Status::Running, 1).await;
    let pgid_file = env.job_dir().join(format!("pgid-{}", run.id));
    let pgid: i32 = wait_until(Duration::from_secs(10), || async {
        std::fs::read_to_string(&pgid_file)
            .ok()?
            .trim()
            .parse()
            .ok()
    })
    .await
    .expect("the job wrote its process group");
    // SAFETY: signal 0 only checks that the group exists.
    assert_eq!(unsafe { libc::kill(-pgid, 0) }, 0, "the job's group runs");

    let asked = Instant::now();
    let (result, _) = env
        .service
        .cancel(1, run.id, &ada(), Some("runaway"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(result, CancelResult::CancelRequested);
    let (again, _) = env
        .service
        .cancel(1, run.id, &ada(), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again, CancelResult::AlreadyRequested);
    let done = support::completed_within(&env, &run, Duration::from_secs(10)).await;
    let took = asked.elapsed();
    assert_eq!(done.outcome, Outcome::Cancelled);
    assert_eq!(
        done.summary_counts.0,
        SummaryCounts {
            total: 5,
            success: 2,
            failed: 0,
            skipped: 3
        }
    );
    assert!(
        done.failure_summary.0.iter().any(|f| f.code == "run.cancelled" && f.message == "cancelled by Ada (user 7): runaway"),
        "{:?}",
        done.failure_summary
    );
    // Stopped by SIGTERM well before its 30 s sleep or the 5 s grace.
    assert!(took < Duration::from_secs(4), "took {took:?}");
    let gone = wait_until(Duration::from_secs(5), || async {
        // SAFETY: signal 0 only checks that the group exists.
        (unsafe { libc::kill(-pgid, 0) } != 0).then_some(())
    })
    .await;
    assert!(
        gone.is_some(),
        "the job's process group outlived the cancel"
    );
    assert_eq!(worker.executions_of(run.id), 1);
}

/// `rust.cancellable` counts an item every 50 ms until it is cancelled,
/// then reports what it did.
struct Counting;

#[async_trait]
impl Handler for Counting {
    async fn handle(&self, job: Job) -> JobResult {
        let mut done = 0;
        loop {
            tokio::select! {
                _ = job.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(50)) => done += 1,
            }
        }
        JobResult::Finished(JobReport {
            summary_counts: SummaryCounts {
                total: done,
                success: done,
                ..Default::default()
            },
            ..Default::default()
        })
    }
}

/// An in-process worker on the `default` queue running `handler` for
/// every type, as `holder`, checking for cancels every 200 ms; `tune`
/// changes its configuration first. Stops when the token is cancelled.
fn rust_worker(
    env: &TestEnv,
    handler: Arc<dyn Handler>,
    holder: &str,
    tune: impl FnOnce(&mut WorkerConfig),
) -> (
    CancellationToken,
    tokio::task::JoinHandle<consumer::WorkerReport>,
) {
    let transport = env.service.transport().clone();
    let route = Route::new(handler, &opsrun::registry::Registry::default().defaults);
    let lifecycle = Lifecycle::new(env.ledger().clone(), transport.clone(), holder)
        .group_commit()
        .fallback(route);
    let mut config = WorkerConfig::new(vec!["default".into()]);
    config.block = Duration::from_millis(300);
    config.cancel_check = Duration::from_millis(200);
    tune(&mut config);
    let stop = CancellationToken::new();
    let (ledger, token) = (env.ledger().clone(), stop.clone());
    let task = tokio::spawn(async move {
        transport.ensure_group(&"default".into()).await.unwrap();
        consumer::run(Arc::new(lifecycle), ledger, transport, config, token).await
    });
    (stop, task)
}

#[tokio::test]
async fn a_rust_handler_sees_the_cancel_and_its_counts_are_kept() {
    let env = TestEnv::new().await;
    let (stop, task) = rust_worker(&env, Arc::new(Counting), "rust-worker:1", |_| {});
    let run = support::enqueue(&env.service, 4, "rust.cancellable").await;
    reaches(&env, 4, run.id, Status::Running, 1).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    env.service.cancel(4, run.id, &ada(), None).await.unwrap();
    let done = support::completed_within(&env, &run, Duration::from_secs(5)).await;
    assert_eq!(done.outcome, Outcome::Cancelled);
    let counted = done.summary_counts.0.total;
    assert!(counted >= 4, "the handler's counts were kept: {counted}");
    assert_eq!(done.summary_counts.0.success, counted);
    stop.cancel();
    task.await.unwrap();
}

/// Notes each run it is called for, then works a second without looking
/// at cancels.
struct Heedless(Arc<std::sync::Mutex<Vec<RunId>>>);

#[async_trait]
impl Handler for Heedless {
    async fn handle(&self, job: Job) -> JobResult {
        self.0.lock().unwrap().push(job.run.id);
        tokio::time::sleep(Duration::from_secs(1)).await;
        JobResult::succeeded()
    }
}

/// A worker that claims ahead (`prefetch`): a run cancelled while it waits
/// for a slot never reaches its handler, even one that ignores cancels.
#[tokio::test]
async fn a_run_cancelled_while_claimed_ahead_never_reaches_its_handler() {
    let env = TestEnv::new().await;
    let called = Arc::new(std::sync::Mutex::new(Vec::new()));
    let handler = Arc::new(Heedless(Arc::clone(&called)));
    let (stop, task) = rust_worker(&env, handler, "rust-worker:2", |config| {
        config.concurrency = 1;
        config.prefetch = 1;
    });
    let first = support::enqueue(&env.service, 4, "rust.heedless").await;
    let waiting = support::enqueue(&env.service, 4, "rust.heedless").await;
    reaches(&env, 4, waiting.id, Status::Running, 1).await;
    env.service
        .cancel(4, waiting.id, &ada(), None)
        .await
        .unwrap();
    let done = support::completed_within(&env, &waiting, Duration::from_secs(5)).await;
    assert_eq!(done.outcome, Outcome::Cancelled);
    let first = support::completed_within(&env, &first, Duration::from_secs(5)).await;
    assert_eq!(first.outcome, Outcome::Succeeded);
    assert_eq!(
        *called.lock().unwrap(),
        [first.id],
        "only the first run reached the handler"
    );
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn a_cancel_racing_a_completion_leaves_one_terminal_state() {
    let env = TestEnv::new().await;
    let runs: Vec<_> = env
        .service
        .ensure_runs(
            &(0..40)
                .map(|i| RunRequest::new(1, "test.brief").inputs(json!({"i": i})))
                .collect::<Vec<_>>(),
        )
        .await
        .into_iter()
        .map(|e| e.unwrap().run)
        .collect();
    // Cancels spread over the time the worker takes to run them: the first
    // ones meet completed runs, then running ones, then queued ones.
    let worker = Worker::spawn(&env, &env.redis_url, &["--concurrency", "4"]);
    support::completed(&env, &runs[0]).await;
    let mut results = Vec::new();
    for (i, run) in runs.iter().enumerate() {
        if i % 4 == 0 {
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
        let (result, _) = env
            .service
            .cancel(1, run.id, &ada(), None)
            .await
            .unwrap()
            .unwrap();
        results.push(result);
    }
    for (run, result) in runs.iter().zip(&results) {
        let done = support::completed(&env, run).await;
        let executions = worker.executions_of(run.id);
        match result {
            CancelResult::Cancelled => {
                assert_eq!(done.outcome, Outcome::Cancelled);
                assert_eq!(executions, 0, "a run cancelled while queued ran");
            }
            CancelResult::AlreadyCompleted => {
                assert_eq!(done.outcome, Outcome::Succeeded);
                assert_eq!(executions, 1);
            }
            // Asked while it ran: cancelled, unless its completion came first.
            CancelResult::CancelRequested => {
                assert!(
                    matches!(done.outcome, Outcome::Cancelled | Outcome::Succeeded),
                    "{done:?}"
                );
                assert_eq!(executions, 1);
            }
            CancelResult::AlreadyRequested => panic!("asked once"),
        }
        // One terminal notification-worthy change: completed once, never again.
        assert_eq!(done.status, Status::Completed);
    }
    let outcomes: std::collections::HashSet<_> = results.iter().collect();
    assert!(
        outcomes.len() >= 2,
        "the cancels did not race anything: {results:?}"
    );
}

#[tokio::test]
async fn a_cancel_racing_a_reclaim_ends_the_run_cancelled_once() {
    let env = TestEnv::new().await;
    let config = opsrun_reaper::ReaperConfig {
        queues: vec!["default".into()],
        ..Default::default()
    };
    for round in 0..3 {
        // A worker dies holding a run someone asked to cancel.
        let mut worker = Worker::spawn(&env, &env.redis_url, &["--cancel-check", "1h"]);
        let run = support::enqueue(&env.service, 1, "test.long").await;
        reaches(&env, 1, run.id, Status::Running, 1).await;
        worker.signal(libc::SIGKILL);
        let _ = worker.child.wait();
        let (result, _) = env
            .service
            .cancel(1, run.id, &ada(), None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(result, CancelResult::CancelRequested, "round {round}");
        sqlx::query(
            "UPDATE operation_runs SET heartbeat_at = now() - interval '1 hour' WHERE id = $1",
        )
        .bind(run.id.0)
        .execute(&env.pool)
        .await
        .unwrap();
        // Two reapers at once: the reclaim becomes the cancel, once.
        let (a, b) = tokio::join!(
            opsrun_reaper::run_once(&env.service, &config),
            opsrun_reaper::run_once(&env.service, &config)
        );
        assert_eq!(
            a.stuck.cancelled + b.stuck.cancelled,
            1,
            "round {round}: {a:?} {b:?}"
        );
        assert_eq!(a.stuck.requeued + b.stuck.requeued, 0);
        let done = env.ledger().get(1, run.id).await.unwrap().unwrap();
        assert_eq!(done.status, Status::Completed);
        assert_eq!(done.outcome, Outcome::Cancelled);
        assert_eq!(done.attempt, 1, "never attempted again");
    }
}

async fn start_on(env: &TestEnv, queue: &str, run_type: &str, n: usize) -> Vec<opsrun::Run> {
    let requests: Vec<_> = (0..n)
        .map(|i| {
            RunRequest::new(1, run_type)
                .queue(queue)
                .inputs(json!({"i": i, "q": queue}))
        })
        .collect();
    env.service
        .ensure_runs(&requests)
        .await
        .into_iter()
        .map(|e| e.unwrap().run)
        .collect()
}

async fn statuses(env: &TestEnv, queue: &str) -> Vec<(String, i64)> {
    sqlx::query_as(
        "SELECT status, count(*) FROM operation_runs WHERE queue = $1 GROUP BY 1 ORDER BY 1",
    )
    .bind(queue)
    .fetch_all(&env.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_paused_queue_waits_while_others_flow_and_resuming_drains_it() {
    let env = TestEnv::new().await;
    let worker = Worker::spawn(
        &env,
        &env.redis_url,
        &["--queues", "default,held", "--concurrency", "4"],
    );
    // A job in flight on the queue when it is paused finishes.
    let in_flight = start_on(&env, "held", "test.slow", 1).await;
    wait_until(Duration::from_secs(10), || async {
        (env.ledger().get(1, in_flight[0].id).await.unwrap()?.status == Status::Running)
            .then_some(())
    })
    .await
    .expect("the slow run started");

    let out = env.producer(&[
        "pause",
        "--queue",
        "held",
        "--actor-name",
        "Ops",
        "--reason",
        "provider outage",
    ]);
    assert_exit(&out, 0);
    assert_eq!(json_stdout(&out)["result"], "paused");
    let again = env.producer(&["pause", "--queue", "held"]);
    assert_eq!(json_stdout(&again)["result"], "already_paused");
    let listed = json_stdout(&env.producer(&["paused"]));
    assert_eq!(listed["paused"][0]["queue"], "held");
    assert_eq!(listed["paused"][0]["reason"], "provider outage");
    // The worker polls every second; after two, nothing new is taken.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let held = start_on(&env, "held", "test.succeed", 20).await;
    let flowing = start_on(&env, "default", "test.succeed", 20).await;
    for run in &flowing {
        assert_eq!(
            support::completed(&env, run).await.outcome,
            Outcome::Succeeded
        );
    }
    let slow = support::completed(&env, &in_flight[0]).await;
    assert_eq!(
        slow.outcome,
        Outcome::Succeeded,
        "the in-flight job finished"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        statuses(&env, "held").await,
        vec![("completed".into(), 1), ("queued".into(), 20)]
    );
    assert!(held.iter().all(|r| worker.executions_of(r.id) == 0));

    // The reaper leaves the waiting runs alone: their entries wait in the stream.
    sqlx::query("UPDATE operation_runs SET dispatched_at = now() - interval '1 hour' WHERE queue = 'held' AND status = 'queued'")
        .execute(&env.pool)
        .await
        .unwrap();
    let config = opsrun_reaper::ReaperConfig {
        queues: vec!["default".into(), "held".into()],
        ..Default::default()
    };
    let report = opsrun_reaper::run_once(&env.service, &config).await;
    assert_eq!(
        report.lost_dispatch.missing + report.lost_dispatch.stalled,
        0,
        "{report:?}"
    );

    let out = env.producer(&["resume", "--queue", "held", "--actor-name", "Ops"]);
    assert_eq!(json_stdout(&out)["result"], "resumed");
    for run in &held {
        assert_eq!(
            support::completed(&env, run).await.outcome,
            Outcome::Succeeded
        );
        assert_eq!(worker.executions_of(run.id), 1);
    }
    let out = env.producer(&["resume", "--queue", "held"]);
    assert_eq!(json_stdout(&out)["result"], "not_paused");

    // Recorded, in no tenant's trail (a queue serves them all).
    let recorded: Vec<(String, String, Option<i64>)> = sqlx::query_as(
        "SELECT action, result, tenant_id FROM operator_actions WHERE queue = 'held' ORDER BY id",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        recorded,
        vec![
            ("pause".into(), "paused".into(), None),
            ("pause".into(), "already_paused".into(), None),
            ("resume".into(), "resumed".into(), None),
            ("resume".into(), "not_paused".into(), None),
        ]
    );
    assert!(
        env.ledger()
            .operator_actions(1, None, 10)
            .await
            .unwrap()
            .is_empty()
    );

    // Bad input changes nothing.
    let out = env.producer(&["pause", "--queue", "Not A Queue"]);
    let stderr = assert_exit(&out, 2);
    assert!(stderr.contains("queue"), "{stderr}");
    assert!(env.ledger().paused_queues().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_failed_run_is_retried_as_a_new_linked_run() {
    let env = TestEnv::new().await;
    let worker = Worker::spawn(&env, &env.redis_url, &[]);
    let failed = support::enqueue(&env.service, 1, "test.fail").await;
    let failed = support::completed(&env, &failed).await;
    assert_eq!(failed.outcome, Outcome::Failed);

    let out = env.producer(&[
        "retry",
        "--tenant",
        "1",
        "--run",
        &failed.id.to_string(),
        "--user-id",
        "7",
        "--actor-name",
        "Ada",
        "--reason",
        "credentials fixed",
    ]);
    assert_exit(&out, 0);
    let printed = json_stdout(&out);
    let retry_id = RunId(printed["run_id"].as_i64().unwrap());
    assert_ne!(retry_id, failed.id);
    assert_eq!(printed["retry_of"], failed.id.0);
    let retry = env.ledger().get(1, retry_id).await.unwrap().unwrap();
    assert_eq!(retry.retry_of, Some(failed.id));
    assert_eq!(
        (retry.run_type.as_str(), &retry.inputs.0),
        ("test.fail", &failed.inputs.0)
    );
    assert_eq!(retry.initiator_name, "Ada");
    support::completed(&env, &retry).await;
    assert_eq!(worker.executions_of(retry_id), 1);
    // The retried run keeps its history.
    assert_eq!(
        env.ledger().get(1, failed.id).await.unwrap().unwrap(),
        failed
    );
    let trail = env
        .ledger()
        .operator_actions(1, Some(failed.id), 10)
        .await
        .unwrap();
    assert_eq!(trail[0].action, "retry");
    assert_eq!(trail[0].result, format!("started #{retry_id}"));
    assert_eq!(trail[0].reason.as_deref(), Some("credentials fixed"));

    // A run that succeeded, or is still going, is not retried; nor another tenant's.
    let ok = support::enqueue(&env.service, 1, "test.succeed").await;
    let ok = support::completed(&env, &ok).await;
    let out = env.producer(&["retry", "--tenant", "1", "--run", &ok.id.to_string()]);
    let stderr = assert_exit(&out, 2);
    assert!(
        stderr.contains("only a failed, partially succeeded or cancelled run"),
        "{stderr}"
    );
    let out = env.producer(&["retry", "--tenant", "2", "--run", &failed.id.to_string()]);
    assert_exit(&out, 6);
    assert_eq!(env.count_runs().await, 3);
}

/// The summary of what `run` waits for, as the monitor and the CLI say it.
async fn why(env: &TestEnv, run: &opsrun::Run) -> opsrun::explain::Explanation {
    let run = env
        .ledger()
        .get(run.tenant_id, run.id)
        .await
        .unwrap()
        .unwrap();
    opsrun::explain::explain(
        env.ledger(),
        Some(env.service.transport()),
        &run,
        chrono::Utc::now(),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn a_run_that_is_not_moving_says_what_it_waits_for() {
    let env = TestEnv::new().await;
    // Nobody reads its queue yet.
    let lonely = support::enqueue(&env.service, 1, "test.succeed").await;
    let said = why(&env, &lonely).await;
    assert!(
        said.summary.contains("no worker has read this queue yet"),
        "{said:?}"
    );
    // Scheduled.
    let later = chrono::Utc::now() + chrono::TimeDelta::hours(2);
    let scheduled = env
        .service
        .ensure_run(
            &RunRequest::new(1, "test.succeed")
                .inputs(json!({"later": 1}))
                .not_before(later),
        )
        .await
        .unwrap()
        .run;
    let said = why(&env, &scheduled).await;
    assert!(
        said.summary.starts_with("Scheduled: starts in 1h 59m"),
        "{said:?}"
    );
    // Its queue is paused.
    let out = env.producer(&["pause", "--queue", "held", "--reason", "maintenance"]);
    assert_exit(&out, 0);
    let held = start_on(&env, "held", "test.succeed", 1).await;
    let said = why(&env, &held[0]).await;
    assert!(
        said.summary.contains("Its queue held is paused since")
            && said.summary.contains("(maintenance)"),
        "{said:?}"
    );

    let worker = Worker::spawn(&env, &env.redis_url, &[]);
    // Backing off after a retryable failure (no reaper: the retry stays due later).
    let throttled = support::enqueue(&env.service, 1, "test.throttled").await;
    let waiting = reaches(&env, 1, throttled.id, Status::Queued, 1).await;
    sqlx::query(
        "UPDATE operation_runs SET not_before = now() + interval '10 minutes' WHERE id = $1",
    )
    .bind(waiting.id.0)
    .execute(&env.pool)
    .await
    .unwrap();
    let said = why(&env, &waiting).await;
    assert!(
        said.summary
            .starts_with("Backing off after attempt 1 of 3 (job.retry): retries in 9m"),
        "{said:?}"
    );
    // Running, then silent past its lease.
    let slow = support::enqueue(&env.service, 1, "test.long").await;
    reaches(&env, 1, slow.id, Status::Running, 1).await;
    let said = why(&env, &slow).await;
    assert!(
        said.summary.starts_with("Running attempt 1 of 3 on "),
        "{said:?}"
    );
    assert!(
        said.facts.iter().any(|f| f.starts_with("Last heartbeat")),
        "{said:?}"
    );
    drop(worker);
    sqlx::query(
        "UPDATE operation_runs SET heartbeat_at = now() - interval '5 minutes' WHERE id = $1",
    )
    .bind(slow.id.0)
    .execute(&env.pool)
    .await
    .unwrap();
    let said = why(&env, &slow).await;
    assert!(
        said.summary
            .starts_with("Its worker stopped heartbeating 30"),
        "{said:?}"
    );

    // The CLI says the same.
    let out = env
        .command("monitor")
        .args(["runs", "show", "--tenant", "1", &held[0].id.to_string()])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("waiting    Its queue held is paused"),
        "{printed}"
    );
}
