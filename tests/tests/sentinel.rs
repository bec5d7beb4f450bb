//! opsrun on a Sentinel-managed primary: runs are started while a worker
//! and a reaper (the binaries) run, the primary is SIGKILLed mid-load, the
//! Sentinels promote the replica, and every accepted run completes (none
//! lost), each within its attempts.

mod support;

use std::time::Duration;

use devstack::RedisSentinel;
use opsrun::RunRequest;
use serde_json::json;
use support::{TestEnv, Worker};

#[tokio::test]
async fn the_primary_dies_mid_load_and_no_accepted_run_is_lost() {
    let mut sentinel = tokio::task::spawn_blocking(|| RedisSentinel::start().unwrap())
        .await
        .unwrap();
    let env = TestEnv::with_redis(&sentinel.url()).await;
    let _worker = Worker::spawn_with_registry(&env, "", env.command("worker"));
    let _reaper = support::fast_reaper(&env, &[]);

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

    support::audit_accepted(&env, &accepted).await;
    println!("{refused} starts were refused during the failover");
}
