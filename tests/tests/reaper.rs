//! Reaper passes one by one: trimming never drops what still matters, stale
//! pending entries are acknowledged, poison is dead-lettered, stalled
//! deliveries are dispatched again; and the binary as operators run it.

mod support;

use std::time::Duration;

use opsrun::transport::Entry;
use opsrun::{Outcome, ReclaimReason, RunRequest, Status};
use opsrun_reaper::{lost_dispatch, pending, trim};
use serde_json::json;
use support::{TestEnv, json_stdout};

async fn xpending_count(env: &TestEnv) -> i64 {
    let (count, ..): (i64, redis::Value, redis::Value, redis::Value) = redis::cmd("XPENDING")
        .arg(env.stream("default"))
        .arg("workers")
        .query_async(&mut env.redis().await)
        .await
        .unwrap();
    count
}

/// One lost-dispatch round as if every queued run's dispatch were an hour
/// old (and every delivery idle longer than the pass's grace).
async fn lost_dispatch_an_hour_later(env: &TestEnv) -> lost_dispatch::LostDispatchReport {
    sqlx::query("UPDATE operation_runs SET dispatched_at = now() - interval '1 hour' WHERE status = 'queued'")
        .execute(&env.pool)
        .await
        .unwrap();
    let config = lost_dispatch::LostDispatchConfig {
        after: Duration::from_millis(1),
        ..Default::default()
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    lost_dispatch::run_once(&env.service, &config)
        .await
        .unwrap()
}

/// Publish `count` entries (runs 1 to `count`) on the default queue.
async fn publish_entries(env: &TestEnv, count: i64) {
    let transport = env.service.transport();
    transport.ensure_group(&"default".into()).await.unwrap();
    for i in 1..=count {
        let entry = Entry {
            run_id: opsrun::RunId(i),
            tenant_id: 1,
            run_type: "a.b".into(),
            attempt: 1,
            concurrency_key_digest: None,
        };
        transport.publish(&"default".into(), &entry).await.unwrap();
    }
}

/// Deliver up to `count` new entries to consumer `name` without processing them.
async fn deliver(env: &TestEnv, name: &str, count: usize) -> Vec<String> {
    let reply: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("workers")
        .arg(name)
        .arg("COUNT")
        .arg(count)
        .arg("STREAMS")
        .arg(env.stream("default"))
        .arg(">")
        .query_async(&mut env.redis().await)
        .await
        .unwrap();
    reply
        .keys
        .into_iter()
        .flat_map(|k| k.ids)
        .map(|i| i.id)
        .collect()
}

#[tokio::test]
async fn trimming_removes_acknowledged_entries_and_keeps_pending_and_undelivered_ones() {
    let env = TestEnv::new().await;
    let transport = env.service.transport();
    publish_entries(&env, 400).await;
    // 250 delivered and acknowledged, 50 delivered and pending, 100 never delivered.
    let acked = deliver(&env, "c1", 250).await;
    let ids: Vec<&str> = acked.iter().map(String::as_str).collect();
    transport.ack(&"default".into(), &ids).await.unwrap();
    let pending = deliver(&env, "c2", 50).await;

    let keep_all = trim::TrimConfig {
        keep: Duration::from_secs(3600),
    };
    let report = trim::run_once(transport, &["default".into()], &keep_all)
        .await
        .unwrap();
    assert_eq!(report.trimmed, 0, "recent entries are kept for inspection");
    let report = trim::run_once(
        transport,
        &["default".into()],
        &trim::TrimConfig {
            keep: Duration::ZERO,
        },
    )
    .await
    .unwrap();
    // Approximate trimming drops whole nodes (100 entries) below the oldest pending entry.
    assert!((100..=250).contains(&report.trimmed), "{report:?}");
    assert_eq!(env.xlen("default").await as u64, 400 - report.trimmed);
    for id in &pending {
        assert!(
            transport
                .entry(&"default".into(), id)
                .await
                .unwrap()
                .is_some(),
            "pending entry {id} kept"
        );
    }
    assert_eq!(
        deliver(&env, "c3", 1000).await.len(),
        100,
        "undelivered entries kept"
    );
}

#[tokio::test]
async fn stale_pending_entries_are_acknowledged_and_live_ones_left() {
    let env = TestEnv::new().await;
    let transport = env.service.transport();
    transport.ensure_group(&"default".into()).await.unwrap();
    let done = env
        .service
        .ensure_run(&RunRequest::new(1, "a.b").inputs(json!({"k": "done"})))
        .await
        .unwrap()
        .run;
    let live = env
        .service
        .ensure_run(&RunRequest::new(1, "a.b").inputs(json!({"k": "live"})))
        .await
        .unwrap()
        .run;
    transport
        .publish(
            &"default".into(),
            &Entry {
                run_id: opsrun::RunId(424242),
                tenant_id: 1,
                run_type: "a.b".into(),
                attempt: 1,
                concurrency_key_digest: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(deliver(&env, "gone-worker:1", 10).await.len(), 3);
    env.service
        .fail_run(&done, &"finished elsewhere")
        .await
        .unwrap()
        .unwrap();
    env.ledger()
        .mark_running(
            1,
            live.id,
            1,
            "slow-worker:2",
            std::time::Duration::from_secs(60),
        )
        .await
        .unwrap()
        .unwrap();

    let config = pending::PendingConfig {
        idle: Duration::ZERO,
        ..Default::default()
    };
    let report = pending::run_once(&env.service, &["default".into()], &config)
        .await
        .unwrap();
    assert_eq!(
        (report.acknowledged, report.left, report.dead_lettered),
        (2, 1, 0),
        "{report:?}"
    );
    assert_eq!(
        xpending_count(&env).await,
        1,
        "only the live run's entry stays pending"
    );
}

#[tokio::test]
async fn an_entry_delivered_too_often_is_dead_lettered_and_its_run_failed() {
    let env = TestEnv::new().await;
    let transport = env.service.transport();
    transport.ensure_group(&"default".into()).await.unwrap();
    let run = env
        .service
        .ensure_run(&RunRequest::new(2, "a.b"))
        .await
        .unwrap()
        .run;
    let entry_id = deliver(&env, "crashy:1", 1).await.remove(0);
    // Redelivered again and again (as XCLAIM by crashing consumers would).
    for n in 0..6 {
        let _: redis::Value = redis::cmd("XCLAIM")
            .arg(env.stream("default"))
            .arg("workers")
            .arg(format!("crashy:{n}"))
            .arg(0)
            .arg(&entry_id)
            .query_async(&mut env.redis().await)
            .await
            .unwrap();
    }
    let config = pending::PendingConfig {
        idle: Duration::ZERO,
        poison_deliveries: 5,
        ..Default::default()
    };
    let report = pending::run_once(&env.service, &["default".into()], &config)
        .await
        .unwrap();
    assert_eq!(report.dead_lettered, 1, "{report:?}");
    let failed = env.ledger().get(2, run.id).await.unwrap().unwrap();
    assert_eq!(
        (failed.status, failed.outcome),
        (Status::Completed, Outcome::Failed)
    );
    assert_eq!(failed.failure_summary.0[0].code, "queue.poison");
    let dead: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(format!("{}:dead:default", env.prefix))
        .arg("-")
        .arg("+")
        .query_async(&mut env.redis().await)
        .await
        .unwrap();
    assert_eq!(dead.ids.len(), 1);
    assert_eq!(
        dead.ids[0].get::<String>("reason").as_deref(),
        Some("poison")
    );
    assert_eq!(
        dead.ids[0].get::<String>("run_id"),
        Some(run.id.to_string())
    );
    assert_eq!(xpending_count(&env).await, 0);
}

#[tokio::test]
async fn a_delivery_nobody_claimed_is_dispatched_again() {
    let env = TestEnv::new().await;
    let transport = env.service.transport();
    transport.ensure_group(&"default".into()).await.unwrap();
    let run = env
        .service
        .ensure_run(&RunRequest::new(3, "a.b"))
        .await
        .unwrap()
        .run;
    let waiting = env
        .service
        .ensure_run(&RunRequest::new(3, "a.c"))
        .await
        .unwrap()
        .run;
    // The first entry goes to a consumer that dies before claiming the run.
    deliver(&env, "died-before-claim:1", 1).await;
    let report = lost_dispatch_an_hour_later(&env).await;
    assert_eq!(
        (report.stalled, report.waiting, report.missing),
        (1, 1, 0),
        "{report:?}"
    );
    let again = env.ledger().get(3, run.id).await.unwrap().unwrap();
    assert_eq!(again.reclaims.0[0].reason, ReclaimReason::DeliveryStalled);
    assert_ne!(again.dispatch_entry_id, run.dispatch_entry_id);
    assert_eq!(
        xpending_count(&env).await,
        0,
        "the stalled entry was acknowledged"
    );
    let untouched = env.ledger().get(3, waiting.id).await.unwrap().unwrap();
    assert!(
        untouched.reclaims.0.is_empty(),
        "a run waiting in the backlog is left alone"
    );
    assert_eq!(
        untouched.dispatch_entry_id, waiting.dispatch_entry_id,
        "its entry, never recorded by the producer, was found and recorded"
    );
}

#[tokio::test]
async fn unrecorded_entries_of_a_backlog_are_found_and_lost_ones_sent_again() {
    let env = TestEnv::new().await;
    env.service
        .transport()
        .ensure_group(&"default".into())
        .await
        .unwrap();
    // 400 runs started in bulk: their producer records no entry id.
    let requests: Vec<_> = (0..400)
        .map(|n| RunRequest::new(3, "a.b").inputs(json!({ "n": n })))
        .collect();
    let ensured: Vec<_> = env
        .service
        .ensure_runs(&requests)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let entry = |n: usize| ensured[n].run.dispatch_entry_id.clone().unwrap();
    // The first 100 were delivered and acknowledged without a claim, the last
    // 10 deleted (as a trim would); the 290 between wait in the stream.
    let acked = deliver(&env, "skipped:1", 100).await;
    assert_eq!(acked, (0..100).map(entry).collect::<Vec<_>>());
    let mut redis = env.redis().await;
    let _: i64 = redis::cmd("XACK")
        .arg(env.stream("default"))
        .arg("workers")
        .arg(&acked)
        .query_async(&mut redis)
        .await
        .unwrap();
    let _: i64 = redis::cmd("XDEL")
        .arg(env.stream("default"))
        .arg((390..400).map(entry).collect::<Vec<_>>())
        .query_async(&mut redis)
        .await
        .unwrap();
    let report = lost_dispatch_an_hour_later(&env).await;
    assert_eq!(
        (report.waiting, report.missing, report.stalled),
        (290, 110, 0),
        "{report:?}"
    );
    for (n, sent) in ensured.iter().enumerate() {
        let run = env.ledger().get(3, sent.run.id).await.unwrap().unwrap();
        if (100..390).contains(&n) {
            assert!(run.reclaims.0.is_empty(), "run {n} is left waiting");
            assert_eq!(
                run.dispatch_entry_id,
                Some(entry(n)),
                "run {n}'s entry found"
            );
        } else {
            assert_eq!(run.reclaims.0[0].reason, ReclaimReason::DispatchMissing);
            assert_ne!(run.dispatch_entry_id, Some(entry(n)), "run {n} sent again");
        }
    }
}

#[tokio::test]
async fn reaper_once_prints_counts_and_rejects_bad_configuration() {
    let env = TestEnv::new().await;
    env.service
        .ensure_run(&RunRequest::new(1, "a.b"))
        .await
        .unwrap();
    let out = env
        .command("reaper")
        .args(["--once", "--queues", "default"])
        .output()
        .unwrap();
    support::assert_exit(&out, 0);
    let report = json_stdout(&out);
    for pass in ["stuck", "lost_dispatch", "pending", "trim", "retention"] {
        assert!(report[pass].is_object(), "{pass} missing from {report}");
    }
    assert_eq!(report["failed_passes"], json!([]));
    for (args, expected) in [
        (&["--once", "--lease", "soon"][..], "lease"),
        (&["--once", "--queues", "Bad Queue"][..], "queue"),
        (&["--once", "--retention-batch", "0"][..], "retention-batch"),
    ] {
        let out = env.command("reaper").args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    let closed = support::unreachable_postgres_url();
    let out = env
        .command("reaper")
        .env("DATABASE_URL", closed)
        .arg("--once")
        .output()
        .unwrap();
    support::assert_exit(&out, 4);
    let closed = format!("redis://127.0.0.1:{}/", devstack::free_port().unwrap());
    let out = env
        .command("reaper")
        .env("REDIS_URL", closed)
        .arg("--once")
        .output()
        .unwrap();
    support::assert_exit(&out, 5);
}

#[tokio::test]
async fn a_stream_key_that_is_not_a_queue_name_is_skipped_and_every_queue_still_trimmed() {
    let env = TestEnv::new().await;
    let transport = env.service.transport();
    publish_entries(&env, 300).await;
    let acked = deliver(&env, "c1", 300).await;
    let ids: Vec<&str> = acked.iter().map(String::as_str).collect();
    transport.ack(&"default".into(), &ids).await.unwrap();
    // A stream under the queue prefix whose name is not UTF-8 (anyone with
    // write access to Redis can make one).
    let mut bad_key = format!("{}:queue:", env.prefix).into_bytes();
    bad_key.extend_from_slice(b"\xff\xfeq");
    let _: String = redis::cmd("XADD")
        .arg(&bad_key)
        .arg("*")
        .arg("run_id")
        .arg("1")
        .query_async(&mut env.redis().await)
        .await
        .unwrap();

    assert_eq!(transport.queues().await.unwrap(), ["default"]);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let out = env
        .command("reaper")
        .args(["--once", "--trim-keep", "10ms"])
        .output()
        .unwrap();
    support::assert_exit(&out, 0);
    let report = json_stdout(&out);
    assert_eq!(report["failed_passes"], json!([]), "{report}");
    assert!(
        report["trim"]["trimmed"].as_u64().unwrap() >= 200,
        "{report}"
    );
}
