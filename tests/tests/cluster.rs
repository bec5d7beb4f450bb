//! opsrun on a Redis Cluster: 3 masters with a replica each, started once
//! for this test binary. Queues whose streams live on three different
//! masters are started singly and in one batch, drained by the worker
//! binary, and visited by the reaper binary on every master.

mod support;

use std::time::Duration;

use devstack::RedisCluster;
use opsrun::{Outcome, RunRequest};
use serde_json::json;
use support::{TestEnv, Worker, json_stdout, wait_until};
use tokio::sync::OnceCell;

static CLUSTER: OnceCell<RedisCluster> = OnceCell::const_new();

async fn cluster() -> &'static RedisCluster {
    CLUSTER
        .get_or_init(|| async {
            tokio::task::spawn_blocking(|| {
                RedisCluster::start(3, 1).expect("starting a redis cluster")
            })
            .await
            .unwrap()
        })
        .await
}

/// Three queue names whose streams (under `prefix`) live on three
/// different masters.
fn queues_on_every_master(cluster: &RedisCluster, prefix: &str) -> Vec<String> {
    let mut chosen: Vec<(String, u16)> = Vec::new();
    for n in 0.. {
        let queue = format!("q{n}");
        let master = cluster
            .master_of(&format!("{prefix}:queue:{queue}"))
            .unwrap();
        if !chosen.iter().any(|(_, m)| *m == master) {
            chosen.push((queue, master));
        }
        if chosen.len() == 3 {
            break;
        }
    }
    chosen.into_iter().map(|(q, _)| q).collect()
}

/// XLEN of `queue`'s stream, asked of the master that holds it.
fn xlen(cluster: &RedisCluster, env: &TestEnv, queue: &str) -> usize {
    let key = env.stream(queue);
    let port = cluster.master_of(&key).unwrap();
    let node = cluster.nodes().iter().find(|n| n.port() == port).unwrap();
    node.cli(&["XLEN", &key]).unwrap().trim().parse().unwrap()
}

#[tokio::test]
async fn runs_on_three_masters_start_singly_and_in_a_batch_drain_and_are_reaped() {
    let cluster = cluster().await;
    let env = TestEnv::with_redis(&cluster.url()).await;
    let queues = queues_on_every_master(cluster, &env.prefix);
    assert!(env.service.transport().is_cluster());

    // One start per queue, then one batch spanning all three.
    let mut runs = Vec::new();
    for (n, queue) in queues.iter().enumerate() {
        let request = RunRequest::new(1, "demo.succeed")
            .queue(queue)
            .inputs(json!({"n": n}));
        let ensured = env.service.ensure_run(&request).await.unwrap();
        assert!(!ensured.dispatch_failed(), "{:?}", ensured.dispatch);
        runs.push(ensured.run);
    }
    let batch: Vec<RunRequest> = (0..30)
        .map(|n| {
            RunRequest::new(2, "demo.succeed")
                .queue(&queues[n % 3])
                .inputs(json!({"batch": n}))
        })
        .collect();
    for ensured in env.service.ensure_runs(&batch).await {
        let ensured = ensured.unwrap();
        assert!(!ensured.dispatch_failed(), "{:?}", ensured.dispatch);
        runs.push(ensured.run);
    }
    for queue in &queues {
        assert_eq!(xlen(cluster, &env, queue), 11, "{queue}");
    }
    assert_eq!(env.service.transport().queues().await.unwrap(), {
        let mut sorted = queues.clone();
        sorted.sort();
        sorted
    });

    // The worker binary drains every master.
    let mut command = env.command("worker");
    command.env("OPSRUN_QUEUES", queues.join(","));
    let worker = Worker::spawn_with_registry(&env, "", command);
    for run in &runs {
        let done = support::completed_within(&env, run, Duration::from_secs(30)).await;
        assert_eq!(done.outcome, Outcome::Succeeded);
        assert_eq!(done.attempt, 1);
    }
    drop(worker);

    // The reaper binary finds every queue on every master: stale pending
    // entries (delivered, never processed) of completed runs on each are
    // acknowledged, and every stream is trimmed.
    for queue in &queues {
        let request = RunRequest::new(3, "demo.succeed").queue(queue);
        let run = env.service.ensure_run(&request).await.unwrap().run;
        let key = env.stream(queue);
        let port = cluster.master_of(&key).unwrap();
        let node = cluster.nodes().iter().find(|n| n.port() == port).unwrap();
        node.cli(&[
            "XREADGROUP",
            "GROUP",
            "workers",
            "ghost",
            "COUNT",
            "10",
            "STREAMS",
            &key,
            ">",
        ])
        .unwrap();
        env.service
            .fail_run(&run, &opsrun::Error::invalid("test", "ended elsewhere"))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let out = env
        .command("reaper")
        .args(["--once", "--pending-idle", "10ms", "--trim-keep", "10ms"])
        .output()
        .unwrap();
    support::assert_exit(&out, 0);
    let report = json_stdout(&out);
    assert_eq!(report["failed_passes"], json!([]), "{report}");
    assert_eq!(report["pending"]["acknowledged"], 3, "{report}");
    assert!(report["trim"]["trimmed"].as_u64().unwrap() > 0, "{report}");
}

#[tokio::test]
async fn a_cluster_url_that_does_not_parse_is_a_configuration_error() {
    let env = TestEnv::with_redis(&cluster().await.url()).await;
    for url in ["redis://127.0.0.1:1,127.0.0.1:2", "redis+cluster://"] {
        let out = env
            .command("producer")
            .env("REDIS_URL", url)
            .args(["enqueue", "--tenant", "1", "--type", "demo.succeed"])
            .output()
            .unwrap();
        let stderr = support::assert_exit(&out, 2);
        assert!(stderr.contains("redis_url"), "{url}: {stderr}");
    }
}

/// A master SIGKILLed mid-load on a cluster of its own: its replica is
/// promoted, and every accepted run on every queue completes within its
/// attempts (runs whose start was refused during the failover are recorded
/// failed, never left queued).
#[tokio::test]
async fn a_master_dies_mid_load_and_no_accepted_run_is_lost() {
    let mut cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3, 1).unwrap())
        .await
        .unwrap();
    let env = TestEnv::with_redis(&cluster.url()).await;
    let queues = queues_on_every_master(&cluster, &env.prefix);
    for queue in &queues {
        env.service.transport().ensure_group(&queue.as_str().into()).await.unwrap();
    }
    let mut command = env.command("worker");
    command.env("OPSRUN_QUEUES", queues.join(","));
    let _worker = Worker::spawn_with_registry(&env, "", command);
    let _reaper = support::fast_reaper(&env, &queues);

    let victim = cluster.master_of(&env.stream(&queues[0])).unwrap();
    let mut accepted = Vec::new();
    for n in 0..150 {
        if n == 50 {
            cluster.kill(victim);
        }
        let request = RunRequest::new(1, "demo.succeed")
            .queue(&queues[n % 3])
            .inputs(json!({"n": n}));
        let ensured = env.service.ensure_run(&request).await.unwrap();
        if !ensured.dispatch_failed() {
            accepted.push(ensured.run);
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let promoted = wait_until(Duration::from_secs(20), || async {
        let port = cluster.master_of(&env.stream(&queues[0])).ok()?;
        (port != victim).then_some(port)
    })
    .await;
    assert!(promoted.is_some(), "the replica was not promoted");
    assert!(accepted.len() >= 100, "accepted {} of 150", accepted.len());
    support::audit_accepted(&env, &accepted).await;
}
