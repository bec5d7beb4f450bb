//! Initiator notifications: queued and terminal, for users only, never for a
//! deduplicated caller, also when the reaper or a failed dispatch ends a
//! run, sanitized, listed and marked read per user, removed with their runs.

mod support;

use std::time::Duration;

use opsrun::{Initiator, Outcome, RunRequest, RunService, Status, Transport, TransportConfig};
use opsrun_reaper::{ReaperConfig, retention, stuck};
use serde_json::json;
use support::{TestEnv, Worker, assert_exit, completed, json_stdout};

/// (kind, outcome, title, body) of a user's notifications, oldest first.
async fn notes(env: &TestEnv, user: i64) -> Vec<(String, Option<String>, String, String)> {
    sqlx::query_as(
        "SELECT kind, outcome, title, body FROM notifications WHERE user_id = $1 ORDER BY id",
    )
    .bind(user)
    .fetch_all(&env.pool)
    .await
    .unwrap()
}

fn started_by(user: i64, run_type: &str) -> RunRequest {
    RunRequest::new(5, run_type)
        .inputs(json!({"n": user}))
        .initiator(Initiator::user(user, format!("user {user}")))
}

/// A run of `run_type` started by `user`.
async fn start(env: &TestEnv, user: i64, run_type: &str) -> opsrun::Run {
    env.service
        .ensure_run(&started_by(user, run_type))
        .await
        .unwrap()
        .run
}

#[tokio::test]
async fn a_users_run_notifies_them_when_queued_and_when_it_ends_with_a_sanitized_summary() {
    let env = TestEnv::new().await;
    let _worker = Worker::spawn(&env, &env.redis_url, &[]);
    let partial = start(&env, 7, "test.partial").await;
    let failing = start(&env, 8, "test.fail").await;
    assert_eq!(
        completed(&env, &partial).await.outcome,
        Outcome::PartiallySucceeded
    );
    assert_eq!(completed(&env, &failing).await.outcome, Outcome::Failed);

    let ada = notes(&env, 7).await;
    assert_eq!(ada.len(), 2, "{ada:?}");
    assert_eq!(ada[0].0, "queued");
    assert_eq!(ada[0].2, format!("test.partial #{} queued", partial.id));
    assert_eq!(
        (ada[1].0.as_str(), ada[1].1.as_deref()),
        ("completed", Some("partially_succeeded"))
    );
    assert_eq!(
        ada[1].2,
        format!("test.partial #{} partially succeeded", partial.id)
    );
    assert!(
        ada[1].3.contains("8 of 10 items succeeded, 2 failed"),
        "{}",
        ada[1].3
    );

    let lin = notes(&env, 8).await;
    assert_eq!(lin[1].1.as_deref(), Some("failed"));
    assert!(lin[1].3.contains("job.exit_nonzero"), "{}", lin[1].3);
    assert!(
        !lin[1].3.contains("hunter2secret"),
        "secret in a notification: {}",
        lin[1].3
    );
}

#[tokio::test]
async fn system_runs_and_deduplicated_callers_get_no_notification() {
    let env = TestEnv::new().await;
    let system = env
        .service
        .ensure_run(&RunRequest::new(5, "test.succeed"))
        .await
        .unwrap();
    assert!(system.run.user_id.is_none());
    let first = env
        .service
        .ensure_run(&started_by(7, "test.succeed").inputs(json!({"same": 1})))
        .await
        .unwrap();
    let second = env
        .service
        .ensure_run(&started_by(9, "test.succeed").inputs(json!({"same": 1})))
        .await
        .unwrap();
    assert!(second.deduplicated());
    assert_eq!(second.run.id, first.run.id);
    // Batch starts follow the same rule.
    let batch = env
        .service
        .ensure_runs(&[
            started_by(9, "test.succeed").inputs(json!({"same": 1})),
            started_by(10, "test.succeed"),
        ])
        .await;
    assert!(batch[0].as_ref().unwrap().deduplicated());
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM notifications")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(total, 2, "one for user 7's run, one for user 10's");
    assert!(notes(&env, 9).await.is_empty());
    assert_eq!(notes(&env, 10).await.len(), 1);
}

#[tokio::test]
async fn runs_the_reaper_or_a_failed_dispatch_ends_notify_too() {
    let env = TestEnv::new().await;
    // Reaper: a running run whose holder vanished after its last attempt.
    let run = start(&env, 7, "test.succeed").await;
    sqlx::query(
        "UPDATE operation_runs SET status = 'running', attempt = max_attempts, holder = 'gone', \
             started_at = now(), heartbeat_at = now() - interval '1 hour' WHERE id = $1",
    )
    .bind(run.id)
    .execute(&env.pool)
    .await
    .unwrap();
    let report = stuck::run_once(&env.service, &ReaperConfig::default().stuck)
        .await
        .unwrap();
    assert_eq!(report.failed, 1, "{report:?}");
    let ada = notes(&env, 7).await;
    assert_eq!(ada.last().unwrap().1.as_deref(), Some("failed"));
    assert!(
        ada.last().unwrap().3.contains("job.attempts_exhausted"),
        "{ada:?}"
    );

    // Dispatch failure: Redis unreachable.
    let mut config = TransportConfig::new("redis://127.0.0.1:1");
    config.command_timeout = Duration::from_millis(300);
    let broken = RunService::new(env.ledger().clone(), Transport::new(&config).unwrap());
    let failed = broken
        .ensure_run(&started_by(8, "test.succeed"))
        .await
        .unwrap();
    assert!(failed.dispatch_failed());
    let lin = notes(&env, 8).await;
    assert_eq!(
        lin.iter().map(|n| n.0.as_str()).collect::<Vec<_>>(),
        ["queued", "completed"]
    );
    assert!(lin[1].3.contains("queue.dispatch_failed"), "{lin:?}");
}

#[tokio::test]
async fn notifications_are_listed_per_user_marked_read_and_removed_by_retention() {
    let env = TestEnv::new().await;
    let run = start(&env, 7, "test.succeed").await;
    env.service
        .ensure_run(&started_by(8, "test.succeed"))
        .await
        .unwrap();
    env.service
        .update_run(
            &run,
            Status::Completed,
            Outcome::Succeeded,
            Default::default(),
            vec![],
        )
        .await
        .unwrap()
        .unwrap();

    let list = |args: &[&str]| {
        let out = env
            .command("monitor")
            .args(["notifications", "list", "--tenant", "5", "--format", "json"])
            .args(args)
            .output()
            .unwrap();
        assert_exit(&out, 0);
        json_stdout(&out)["notifications"]
            .as_array()
            .unwrap()
            .clone()
    };
    let ada = list(&["--user-id", "7"]);
    assert_eq!(ada.len(), 2);
    assert!(ada.iter().all(|n| n["user_id"] == 7 && n["tenant_id"] == 5));
    assert_eq!(ada[0]["kind"], "completed", "newest first");
    // Another tenant, same user id: nothing.
    let out = env
        .command("monitor")
        .args([
            "notifications",
            "list",
            "--tenant",
            "6",
            "--user-id",
            "7",
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    assert_eq!(json_stdout(&out)["notifications"], json!([]));

    let first = ada[1]["id"].as_i64().unwrap().to_string();
    let read = env
        .command("monitor")
        .args([
            "notifications",
            "read",
            "--tenant",
            "5",
            "--user-id",
            "7",
            "--id",
            &first,
        ])
        .output()
        .unwrap();
    assert_exit(&read, 0);
    assert_eq!(json_stdout(&read)["marked"], 1);
    assert_eq!(list(&["--user-id", "7", "--unread"]).len(), 1);
    // User 8 cannot mark user 7's.
    let other = env
        .command("monitor")
        .args([
            "notifications",
            "read",
            "--tenant",
            "5",
            "--user-id",
            "8",
            "--all",
        ])
        .output()
        .unwrap();
    assert_eq!(json_stdout(&other)["marked"], 1, "only user 8's own");
    assert_eq!(list(&["--user-id", "7", "--unread"]).len(), 1);

    // Retention deletes the run and its notifications with it (the run is
    // aged past retention with the refusing trigger off: completed_at is final).
    sqlx::query("ALTER TABLE operation_runs DISABLE TRIGGER operation_runs_2_refuse")
        .execute(&env.pool)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE operation_runs SET completed_at = now() - interval '100 days' WHERE id = $1",
    )
    .bind(run.id)
    .execute(&env.pool)
    .await
    .unwrap();
    sqlx::query("ALTER TABLE operation_runs ENABLE TRIGGER operation_runs_2_refuse")
        .execute(&env.pool)
        .await
        .unwrap();
    let report = retention::run_once(env.ledger(), &Default::default())
        .await
        .unwrap();
    assert_eq!(report.deleted, 1);
    assert!(list(&["--user-id", "7"]).is_empty());
    assert_eq!(list(&["--user-id", "8"]).len(), 1);
}
