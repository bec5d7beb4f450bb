//! opsrun on a Redis Cluster: 3 masters with a replica each, started once
//! for this test binary. Queues whose streams live on three different
//! masters are started singly and in one batch, drained by the worker
//! binary, and visited by the reaper binary on every master; a sharded
//! queue spreads over the masters and keeps one tenant's backlog from
//! holding up another's; changing a queue's shards, killing a master and
//! resharding a busy queue's slots (on clusters of their own) lose nothing.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use devstack::RedisCluster;
use opsrun::registry::Registry;
use opsrun::run::ReclaimReason;
use opsrun::transport::{QueueStream, shard_for};
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
        env.service
            .transport()
            .ensure_group(&queue.as_str().into())
            .await
            .unwrap();
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

/// The first tenant from `from` on whose runs go to `shard` of `shards`.
fn tenant_on_shard(shard: i16, shards: i16, from: i64) -> i64 {
    (from..).find(|&t| shard_for(t, shards) == shard).unwrap()
}

/// A sharded queue's streams spread over the masters (one hash tag per
/// shard); a tenant's 10,000-run backlog stays on its shard, so a tenant on
/// another shard that starts 100 runs a second later finishes long before
/// it; and no shard is skipped.
#[tokio::test]
async fn a_sharded_queue_spreads_over_masters_and_a_backlog_stays_on_its_shard() {
    let cluster = cluster().await;
    let mut env = TestEnv::with_redis(&cluster.url()).await;
    let keys = env.service.transport().keys().clone();
    // A queue name whose 4 shards cover all 3 masters.
    let queue = (0..)
        .map(|n| format!("hot{n}"))
        .find(|q| {
            let masters: BTreeSet<u16> = QueueStream::all(q, 4)
                .map(|s| cluster.master_of(&keys.queue_stream(&s)).unwrap())
                .collect();
            masters.len() == 3
        })
        .unwrap();
    let registry = format!("[queues.{queue}]\nshards = 4\n");
    env.service = env
        .service
        .clone()
        .with_registry(Arc::new(Registry::parse(&registry).unwrap()));
    assert_eq!(
        keys.queue_stream(&QueueStream::new(&queue, 3)),
        format!("{}:queue:{{{queue}:3}}", env.prefix)
    );

    let mut command = env.command("worker");
    command.args(["--concurrency", "8"]);
    let _worker = Worker::spawn_with_registry(&env, &registry, command);
    let job = |tenant: i64, n: usize| {
        RunRequest::new(tenant, "demo.sleep")
            .queue(&queue)
            .inputs(json!({"n": n, "sleep_ms": 2}))
    };
    // A few runs of a tenant on every shard.
    for shard in 0..4 {
        let tenant = tenant_on_shard(shard, 4, 100);
        for ensured in env
            .service
            .ensure_runs(&(0..5).map(|n| job(tenant, n)).collect::<Vec<_>>())
            .await
        {
            assert!(!ensured.unwrap().dispatch_failed());
        }
    }
    let noisy = tenant_on_shard(1, 4, 1);
    let quiet = tenant_on_shard(2, 4, 1);
    let backlog: Vec<RunRequest> = (0..10_000).map(|n| job(noisy, n)).collect();
    for chunk in backlog.chunks(1_000) {
        for ensured in env.service.ensure_runs(chunk).await {
            assert!(!ensured.unwrap().dispatch_failed());
        }
    }
    // As autovacuum would within a minute: the worker's cached claim plan,
    // made while this fresh table was nearly empty, scans it whole until
    // statistics change (4 times slower here); measured is the steady state.
    sqlx::query("ANALYZE operation_runs")
        .execute(&env.pool)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let later: Vec<RunRequest> = (0..100).map(|n| job(quiet, n)).collect();
    for ensured in env.service.ensure_runs(&later).await {
        assert!(!ensured.unwrap().dispatch_failed());
    }

    let drained = wait_until(Duration::from_secs(240), || async {
        let active: i64 =
            sqlx::query_scalar("SELECT count(*) FROM operation_runs WHERE completed_at IS NULL")
                .fetch_one(&env.pool)
                .await
                .unwrap();
        (active == 0).then_some(())
    })
    .await;
    assert!(drained.is_some(), "the runs were not all completed");
    let waits: Vec<(i64, f64, f64, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "SELECT tenant_id, \
             percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM completed_at - created_at)), \
             percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM completed_at - created_at)), \
             max(completed_at) \
         FROM operation_runs WHERE tenant_id = ANY($1) GROUP BY tenant_id ORDER BY tenant_id = $2",
    )
    .bind(vec![noisy, quiet])
    .bind(quiet)
    .fetch_all(&env.pool)
    .await
    .unwrap();
    let [(_, noisy_p50, _, noisy_last), (_, _, quiet_p99, quiet_last)] = waits[..] else {
        panic!("{waits:?}")
    };
    eprintln!("waits: backlog tenant p50 {noisy_p50:.2}s; later tenant p99 {quiet_p99:.2}s");
    assert!(
        quiet_p99 < noisy_p50 && quiet_last < noisy_last,
        "the later tenant waited behind the backlog: {waits:?}"
    );
    // Every shard was read: every run succeeded, on all four.
    let by_shard: Vec<(i16, i64)> = sqlx::query_as(
        "SELECT shard, count(*) FROM operation_runs WHERE outcome = 'succeeded' GROUP BY shard ORDER BY shard",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        by_shard.iter().map(|s| s.0).collect::<Vec<_>>(),
        [0, 1, 2, 3]
    );
    assert_eq!(by_shard.iter().map(|s| s.1).sum::<i64>(), 10_120);
}

/// Lowering a queue's shards while runs wait in the shards that go: the
/// reaper moves them to their tenant's shard as the queue stands now
/// (`shard_retired`); raising it: runs sent to shard 0 are still read.
#[tokio::test]
async fn changing_a_queues_shards_in_flight_loses_nothing() {
    let cluster = cluster().await;
    let mut env = TestEnv::with_redis(&cluster.url()).await;
    let four = "[queues.elastic]\nshards = 4\n";
    let two = "[queues.elastic]\nshards = 2\n";
    let with = |registry: &str| {
        env.service
            .clone()
            .with_registry(Arc::new(Registry::parse(registry).unwrap()))
    };
    let start = |service: opsrun::RunService, tenants: std::ops::RangeInclusive<i64>| async move {
        let mut accepted = Vec::new();
        for tenant in tenants {
            let request = RunRequest::new(tenant, "demo.succeed").queue("elastic");
            let ensured = service.ensure_run(&request).await.unwrap();
            assert!(!ensured.dispatch_failed());
            accepted.push(ensured.run);
        }
        accepted
    };

    // Sent on four shards while no worker runs.
    let accepted = start(with(four), 1..=40).await;
    let shards: BTreeSet<i16> = accepted.iter().map(|r| r.shard).collect();
    assert_eq!(shards, BTreeSet::from([0, 1, 2, 3]));
    // Workers and the reaper now declare two.
    let worker = Worker::spawn_with_registry(&env, two, env.command("worker"));
    let reaper = support::fast_reaper_with_registry(&env, two);
    support::audit_accepted(&env, &accepted).await;
    for run in accepted.iter().filter(|r| r.shard >= 2) {
        let done = env
            .ledger()
            .get(run.tenant_id, run.id)
            .await
            .unwrap()
            .unwrap();
        assert!(
            done.shard < 2,
            "run {} still on shard {}",
            run.id,
            done.shard
        );
        assert_eq!(done.reclaims.0.len(), 1, "{:?}", done.reclaims);
        assert_eq!(done.reclaims.0[0].reason, ReclaimReason::ShardRetired);
    }
    drop((worker, reaper));

    // Back up to four: what was sent on two shards is read by a worker of four.
    env.service = with(two);
    let accepted = start(env.service.clone(), 41..=60).await;
    let _worker = Worker::spawn_with_registry(&env, four, env.command("worker"));
    support::audit_accepted(&env, &accepted).await;
}

/// `redis-cli --cluster reshard` moves the slots of a busy queue's stream
/// (keys, consumer group and pending entries) to another master while runs
/// are started and worked on it: every accepted run completes once.
#[tokio::test]
async fn resharding_a_busy_queues_slots_mid_load_loses_nothing() {
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3, 0).unwrap())
        .await
        .unwrap();
    let cluster = Arc::new(cluster);
    let env = TestEnv::with_redis(&cluster.url()).await;
    // A queue whose stream is in the lowest slots of its master, so that
    // moving that master's first 200 slots moves it.
    let (queue, from) = (0..)
        .map(|n| format!("busy{n}"))
        .find_map(|q| {
            let key = env.stream(&q);
            (cluster.slot_of(&key).unwrap() < 200).then(|| {
                let master = cluster.master_of(&key).unwrap();
                (q, master)
            })
        })
        .unwrap();
    let to = *cluster.master_ports().iter().find(|&&p| p != from).unwrap();
    env.service
        .transport()
        .ensure_group(&queue.as_str().into())
        .await
        .unwrap();
    let mut command = env.command("worker");
    command.env("OPSRUN_QUEUES", &queue);
    let _worker = Worker::spawn_with_registry(&env, "", command);
    let _reaper = support::fast_reaper(&env, std::slice::from_ref(&queue));

    let mut accepted = Vec::new();
    let mut reshard = None;
    for n in 0..300 {
        if n == 50 {
            let cluster = Arc::clone(&cluster);
            reshard = Some(tokio::task::spawn_blocking(move || {
                cluster.reshard(from, to, 200)
            }));
        }
        let request = RunRequest::new(1, "demo.succeed")
            .queue(&queue)
            .inputs(json!({"n": n}));
        let ensured = env.service.ensure_run(&request).await.unwrap();
        if !ensured.dispatch_failed() {
            accepted.push(ensured.run);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    reshard.unwrap().await.unwrap().expect("resharding");
    assert_eq!(
        cluster.master_of(&env.stream(&queue)).unwrap(),
        to,
        "the queue's slot moved"
    );
    assert!(accepted.len() >= 280, "accepted {} of 300", accepted.len());
    support::audit_accepted(&env, &accepted).await;
}
