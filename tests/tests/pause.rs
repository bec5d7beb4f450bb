//! Paused queues: a worker stops taking a paused queue's runs within a
//! second or two while other queues flow, lets in-flight jobs finish, and
//! takes the waiting runs once the queue is resumed; nothing is lost.

mod support;

use std::time::Duration;

use opsrun::{Outcome, RunRequest, Status};
use serde_json::json;
use support::{TestEnv, Worker, assert_exit, json_stdout, wait_until};

async fn start(env: &TestEnv, queue: &str, run_type: &str, n: usize) -> Vec<opsrun::Run> {
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
    let in_flight = start(&env, "held", "test.slow", 1).await;
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

    let held = start(&env, "held", "test.succeed", 20).await;
    let flowing = start(&env, "default", "test.succeed", 20).await;
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
