//! Cancel: a queued or waiting run completes `cancelled` at once; a running
//! one is stopped by its worker (an exec job's process group with it, a Rust
//! handler through `Job::cancelled`) and completes `cancelled` with the
//! counts it reported; a cancel racing a completion or a reclaim leaves one
//! terminal state; every cancel is in the tenant's audit trail.

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

#[tokio::test]
async fn a_rust_handler_sees_the_cancel_and_its_counts_are_kept() {
    let env = TestEnv::new().await;
    let transport = env.service.transport().clone();
    let route = Route::new(
        Arc::new(Counting),
        &opsrun::registry::Registry::default().defaults,
    );
    let lifecycle = Lifecycle::new(env.ledger().clone(), transport.clone(), "rust-worker:1")
        .group_commit()
        .fallback(route);
    let mut config = WorkerConfig::new(vec!["default".into()]);
    config.block = Duration::from_millis(300);
    config.cancel_check = Duration::from_millis(200);
    let stop = CancellationToken::new();
    let (ledger, token) = (env.ledger().clone(), stop.clone());
    let task = tokio::spawn(async move {
        transport.ensure_group(&"default".into()).await.unwrap();
        consumer::run(Arc::new(lifecycle), ledger, transport, config, token).await
    });
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
