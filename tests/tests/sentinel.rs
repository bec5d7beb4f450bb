//! opsrun on a Sentinel-managed primary: runs are started while a worker
//! and a reaper (the binaries) run, the primary is SIGKILLed mid-load, the
//! Sentinels promote the replica, and every accepted run completes (none
//! lost), each within its attempts.

mod support;

use std::time::Duration;

use devstack::RedisSentinel;
use opsrun::{Outcome, RunRequest, Status};
use serde_json::json;
use support::{TestEnv, Worker, wait_until};

#[tokio::test]
async fn the_primary_dies_mid_load_and_no_accepted_run_is_lost() {
    let mut sentinel = tokio::task::spawn_blocking(|| RedisSentinel::start().unwrap())
        .await
        .unwrap();
    let env = TestEnv::with_redis(&sentinel.url()).await;
    let _worker = Worker::spawn_with_registry(&env, "", env.command("worker"));
    let mut reaper = env
        .command("reaper")
        .args([
            "--interval",
            "1s",
            "--redispatch-after",
            "3s",
            "--pending-idle",
            "5s",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();

    let mut accepted = Vec::new();
    let mut refused = 0;
    let mut killed = None;
    for n in 0..150 {
        if n == 50 {
            killed = Some(sentinel.kill_primary().unwrap());
        }
        let request = RunRequest::new(1, "demo.succeed").inputs(json!({"n": n}));
        let ensured = env.service.ensure_run(&request).await.unwrap();
        if ensured.dispatch_failed() {
            refused += 1;
        } else {
            accepted.push(ensured.run);
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let promoted = sentinel.primary_port().unwrap();
    assert_ne!(Some(promoted), killed, "the replica was promoted");
    assert!(accepted.len() >= 100, "accepted {} of 150", accepted.len());

    for run in &accepted {
        let done = wait_until(Duration::from_secs(60), || async {
            env.ledger()
                .get(run.tenant_id, run.id)
                .await
                .unwrap()
                .filter(|r| r.status == Status::Completed)
        })
        .await
        .unwrap_or_else(|| panic!("accepted run {} was lost", run.id));
        assert_eq!(
            done.outcome,
            Outcome::Succeeded,
            "{:?}",
            done.failure_summary
        );
        assert!(done.attempt <= done.max_attempts);
    }
    // Runs told their dispatch failed were recorded as failed, not left queued.
    let active: i64 =
        sqlx::query_scalar("SELECT count(*) FROM operation_runs WHERE completed_at IS NULL")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(
        active, 0,
        "{refused} starts were refused during the failover"
    );
    let _ = reaper.kill();
    let _ = reaper.wait();
}
