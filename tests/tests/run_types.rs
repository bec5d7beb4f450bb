//! Run types from the registry: identity rules under concurrency, retries
//! with backoff, scheduled runs, undeclared types.

mod support;

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use opsrun::{Dispatch, Outcome, RunRequest, RunService, Status};
use opsrun_reaper::due;
use serde_json::json;
use support::{TestEnv, Worker, completed, json_stdout, wait_until};
use tokio_util::sync::CancellationToken;

/// The test's service on the test workers' registry.
fn service(env: &TestEnv) -> RunService {
    env.service.clone().with_registry(Arc::new(env.registry()))
}

/// Due passes in a loop until cancelled (`copies` of them, racing).
fn schedulers(
    service: &RunService,
    copies: usize,
) -> (CancellationToken, Vec<tokio::task::JoinHandle<u64>>) {
    let stop = CancellationToken::new();
    let tasks = (0..copies)
        .map(|_| {
            let (service, stop) = (service.clone(), stop.clone());
            tokio::spawn(async move {
                let mut dispatched = 0;
                while !stop.is_cancelled() {
                    dispatched += due::run_once(&service, &due::DueConfig::default())
                        .await
                        .unwrap()
                        .dispatched;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                dispatched
            })
        })
        .collect();
    (stop, tasks)
}

#[tokio::test]
async fn nonce_identities_create_a_run_per_start_even_concurrently() {
    let env = TestEnv::new().await;
    let _worker = Worker::spawn(&env, &env.redis_url, &["--queues", "unused"]);
    let service = service(&env);
    let starts = (0..50).map(|_| {
        let service = service.clone();
        async move {
            service
                .ensure_run(&RunRequest::new(1, "test.nonce").inputs(json!({"same": true})))
                .await
                .unwrap()
        }
    });
    let runs = join_all(starts).await;
    assert!(
        runs.iter()
            .all(|r| !r.deduplicated() && r.run.identity_rule == "nonce")
    );
    let mut ids: Vec<_> = runs.iter().map(|r| r.run.id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 50);
    assert_eq!(env.xlen("default").await, 50);
}

#[tokio::test]
async fn strict_identities_run_an_occurrence_once_ever() {
    let env = TestEnv::new().await;
    let worker = Worker::spawn(&env, &env.redis_url, &[]);
    let service = service(&env);
    let occurrence = json!({"schedule_id": 12, "scheduled_for": "2026-11-23T02:00:00Z"});
    let starts = (0..50).map(|i| {
        let service = service.clone();
        let mut inputs = occurrence.clone();
        inputs["note"] = json!(i);
        async move {
            service
                .ensure_run(&RunRequest::new(3, "test.strict").inputs(inputs))
                .await
                .unwrap()
        }
    });
    let results = join_all(starts).await;
    assert_eq!(
        results.iter().filter(|r| !r.deduplicated()).count(),
        1,
        "one start creates the run"
    );
    let run = results[0].run.clone();
    assert!(results.iter().all(|r| r.run.id == run.id));
    assert_eq!(env.count_runs().await, 1);
    let done = completed(&env, &run).await;
    assert_eq!(done.outcome, Outcome::Succeeded);

    // After completion the same occurrence is returned, never run again.
    let again = service
        .ensure_run(&RunRequest::new(3, "test.strict").inputs(occurrence.clone()))
        .await
        .unwrap();
    assert!(again.deduplicated());
    assert_eq!(
        (again.run.id, again.run.status),
        (run.id, Status::Completed)
    );
    assert_eq!(env.xlen("default").await, 1, "no new dispatch");
    assert_eq!(worker.executions_of(run.id), 1);
    // Another occurrence, or another tenant, is a new run.
    let next = json!({"schedule_id": 12, "scheduled_for": "2026-11-24T02:00:00Z"});
    assert!(
        !service
            .ensure_run(&RunRequest::new(3, "test.strict").inputs(next))
            .await
            .unwrap()
            .deduplicated()
    );
    assert!(
        !service
            .ensure_run(&RunRequest::new(4, "test.strict").inputs(occurrence))
            .await
            .unwrap()
            .deduplicated()
    );
    // The identity keys are required.
    let missing = service
        .ensure_run(&RunRequest::new(3, "test.strict").inputs(json!({"schedule_id": 12})))
        .await;
    let err = missing.unwrap_err().to_string();
    assert!(
        err.contains("inputs") && err.contains("scheduled_for"),
        "{err}"
    );
}

#[tokio::test]
async fn retries_back_off_and_end_in_success_with_folded_failures() {
    let env = TestEnv::new().await;
    let worker = Worker::spawn(&env, &env.redis_url, &[]);
    let service = service(&env);
    let (stop, tasks) = schedulers(&service, 1);
    let run = service
        .ensure_run(&RunRequest::new(5, "test.flaky"))
        .await
        .unwrap()
        .run;
    assert_eq!(run.max_attempts, 5, "stamped from the registry");
    let done = completed(&env, &run).await;
    stop.cancel();
    join_all(tasks).await;
    assert_eq!(done.outcome, Outcome::Succeeded);
    assert_eq!(done.attempt, 3);
    assert_eq!(done.failure_summary.0.len(), 1);
    let failure = &done.failure_summary.0[0];
    assert_eq!((failure.code.as_str(), failure.count), ("job.retry", 2));
    assert_eq!(
        failure.message, "Throttled (retrying)",
        "the stderr tail of the retried attempt"
    );
    assert_eq!(worker.executions_of(run.id), 3);
}

#[tokio::test]
async fn retries_end_in_failure_when_attempts_are_exhausted() {
    let env = TestEnv::new().await;
    let worker = Worker::spawn(&env, &env.redis_url, &[]);
    let service = service(&env);
    let (stop, tasks) = schedulers(&service, 2);
    let run = service
        .ensure_run(&RunRequest::new(6, "test.throttled"))
        .await
        .unwrap()
        .run;
    // While it waits out its backoff, it stays active: starts fold into it.
    let waiting = wait_until(Duration::from_secs(10), || async {
        let r = env.ledger().get(6, run.id).await.unwrap()?;
        (r.status == Status::Queued && r.attempt >= 1).then_some(r)
    })
    .await
    .expect("requeued for a retry");
    assert!(waiting.not_before.is_some());
    assert!(
        service
            .ensure_run(&RunRequest::new(6, "test.throttled"))
            .await
            .unwrap()
            .deduplicated()
    );

    let done = completed(&env, &run).await;
    stop.cancel();
    join_all(tasks).await;
    assert_eq!((done.outcome, done.attempt), (Outcome::Failed, 3));
    assert_eq!(done.failure_summary.0.len(), 1);
    assert_eq!(
        (
            done.failure_summary.0[0].code.as_str(),
            done.failure_summary.0[0].count
        ),
        ("job.retry", 3)
    );
    assert_eq!(worker.executions_of(run.id), 3);
}

#[tokio::test]
async fn scheduled_runs_wait_for_their_time_and_run_once_with_two_schedulers() {
    let env = TestEnv::new().await;
    let worker = Worker::spawn(&env, &env.redis_url, &[]);
    let out = env.producer(&[
        "enqueue",
        "--tenant",
        "7",
        "--type",
        "test.succeed",
        "--in",
        "2s",
        "--inputs",
        r#"{"slot":1}"#,
    ]);
    support::assert_exit(&out, 0);
    let printed = json_stdout(&out);
    assert_eq!(printed["status"], "queued");
    assert!(printed["not_before"].is_string());
    let run = env
        .ledger()
        .get(7, opsrun::RunId(printed["run_id"].as_i64().unwrap()))
        .await
        .unwrap()
        .unwrap();
    // Dedupe folds starts into a scheduled run too.
    let again = env.producer(&[
        "enqueue",
        "--tenant",
        "7",
        "--type",
        "test.succeed",
        "--inputs",
        r#"{"slot":1}"#,
    ]);
    assert_eq!(json_stdout(&again)["deduplicated"], true);

    let (stop, tasks) = schedulers(&env.service, 2);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        env.xlen("default").await,
        0,
        "not dispatched before its time"
    );
    assert_eq!(worker.executions_of(run.id), 0);
    let done = completed(&env, &run).await;
    assert!(
        done.started_at.unwrap() >= run.not_before.unwrap(),
        "never started early"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    let dispatched: u64 = join_all(tasks).await.into_iter().map(Result::unwrap).sum();
    assert_eq!(dispatched, 1, "dispatched once across two schedulers");
    assert_eq!(env.xlen("default").await, 1);
    assert_eq!(worker.executions_of(run.id), 1);

    // A scheduled start through the library reports it as scheduled.
    let at = opsrun::sqlx::types::chrono::Utc::now() + std::time::Duration::from_secs(3600);
    let later = env
        .service
        .ensure_run(&RunRequest::new(7, "test.succeed").not_before(at))
        .await
        .unwrap();
    assert_eq!(later.dispatch, Dispatch::Scheduled);
    let bad = env.producer(&[
        "enqueue", "--tenant", "7", "--type", "a.b", "--at", "tomorrow",
    ]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("RFC 3339"));
}

#[tokio::test]
async fn undeclared_types_follow_the_defaults_or_are_refused_when_strict() {
    let env = TestEnv::new().await;
    let dir = env.job_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let lenient = dir.join("lenient.toml");
    std::fs::write(&lenient, "[defaults]\nmax_attempts = 7\nlease = \"2m\"\nqueue = \"ops\"\n[types.\"known.type\"]\nqueue = \"known\"\n").unwrap();
    let strict = dir.join("strict.toml");
    std::fs::write(
        &strict,
        "strict_types = true\n[types.\"known.type\"]\nqueue = \"known\"\n",
    )
    .unwrap();

    let out = env
        .command("producer")
        .env("OPSRUN_REGISTRY", &lenient)
        .args(["enqueue", "--tenant", "1", "--type", "other.type"])
        .output()
        .unwrap();
    support::assert_exit(&out, 0);
    let run = json_stdout(&out);
    assert_eq!(
        (run["queue"].as_str(), run["max_attempts"].as_i64()),
        (Some("ops"), Some(7))
    );
    let stored: i32 = sqlx::query_scalar("SELECT lease_seconds FROM operation_runs WHERE id = $1")
        .bind(run["run_id"].as_i64().unwrap())
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(stored, 120);
    let known = env
        .command("producer")
        .env("OPSRUN_REGISTRY", &lenient)
        .args(["enqueue", "--tenant", "1", "--type", "known.type"])
        .output()
        .unwrap();
    assert_eq!(json_stdout(&known)["queue"], "known");

    let refused = env
        .command("producer")
        .env("OPSRUN_REGISTRY", &strict)
        .args(["enqueue", "--tenant", "1", "--type", "other.type"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("not declared"), "{stderr}");
    assert_eq!(
        env.count_runs().await,
        2,
        "nothing written for the refused start"
    );

    let broken = dir.join("broken.toml");
    std::fs::write(&broken, "[types.\"a.b\"]\nmax_atempts = 2\n").unwrap();
    for binary in ["producer", "worker"] {
        let mut cmd = env.command(binary);
        cmd.env("OPSRUN_REGISTRY", &broken);
        if binary == "producer" {
            cmd.args(["enqueue", "--tenant", "1", "--type", "a.b"]);
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{binary}: {stderr}");
        assert!(
            stderr.contains("broken.toml") && stderr.contains("did you mean \"max_attempts\""),
            "{binary}: {stderr}"
        );
    }
}
