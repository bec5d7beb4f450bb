//! Nothing lost when workers, Redis or Postgres fail: fault injection against
//! servers and processes the tests own, each ending with an audit. Rows are
//! aged in SQL instead of sleeping through leases.

mod support;

use std::time::Duration;

use opsrun::{Outcome, ReclaimReason, RunRequest, RunService, Status, Transport, TransportConfig};
use opsrun_reaper::{ReaperConfig, RoundReport};
use serde_json::json;
use support::{TestEnv, Worker, completed, enqueue, wait_until};

/// One reaper round (leases are per run; tests age rows instead of waiting).
async fn reap(service: &RunService) -> RoundReport {
    let config = ReaperConfig {
        queues: vec!["default".into()],
        ..Default::default()
    };
    let report = opsrun_reaper::run_once(service, &config).await;
    assert!(report.failed_passes.is_empty(), "{report:?}");
    report
}

/// Make every running run look abandoned and every queued dispatch old.
async fn age(env: &TestEnv) {
    sqlx::query("UPDATE operation_runs SET heartbeat_at = now() - interval '1 hour' WHERE status = 'running'")
        .execute(&env.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE operation_runs SET dispatched_at = now() - interval '1 hour' WHERE status = 'queued'")
        .execute(&env.pool)
        .await
        .unwrap();
}

/// Every accepted run is completed; returns (runs, by outcome).
async fn audit(env: &TestEnv) -> (i64, Vec<(String, i64)>) {
    let active: i64 =
        sqlx::query_scalar("SELECT count(*) FROM operation_runs WHERE status <> 'completed'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(active, 0, "runs left active");
    let outcomes: Vec<(String, i64)> = sqlx::query_as(
        "SELECT outcome, count(*) FROM operation_runs GROUP BY outcome ORDER BY outcome",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    (outcomes.iter().map(|o| o.1).sum(), outcomes)
}

/// `count` runs of tenant 6 that completed 100 days ago (past retention).
async fn insert_expired_runs(env: &TestEnv, count: i32) {
    sqlx::query(
        "INSERT INTO operation_runs (tenant_id, initiator_name, type, run_identity_hash, queue, status, outcome, \
             created_at, started_at, completed_at, attempt, holder, heartbeat_at) \
         SELECT 6, 'System', 'test.old', md5(g::text) || md5(g::text), 'default', 'completed', 'succeeded', \
             now() - interval '200 days', now() - interval '200 days', now() - interval '100 days', 1, 'w', now() \
         FROM generate_series(1, $1) g",
    )
    .bind(count)
    .execute(&env.pool)
    .await
    .unwrap();
}

fn wait_for_exit(worker: &mut Worker, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(status)) = worker.child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[tokio::test]
async fn worker_killed_mid_job_is_reclaimed_and_completes() {
    let env = TestEnv::new().await;
    let worker = Worker::spawn(&env, &env.redis_url, &[]);
    let run = enqueue(&env.service, 1, "test.slow").await;
    wait_until(Duration::from_secs(10), || async {
        (worker.executions_of(run.id) == 1).then_some(())
    })
    .await
    .expect("job started");
    worker.signal(9);
    drop(worker);

    // Its heartbeat stops; once the lease has passed the reaper requeues it.
    let report = reap(&env.service).await;
    assert_eq!(
        report.stuck.requeued, 0,
        "a heartbeat within the lease is never taken"
    );
    age(&env).await;
    let report = reap(&env.service).await;
    assert_eq!(report.stuck.requeued, 1);

    let worker = Worker::spawn(&env, &env.redis_url, &[]);
    let done = completed(&env, &run).await;
    assert_eq!(done.outcome, Outcome::Succeeded);
    assert_eq!(done.attempt, 2);
    assert_eq!(done.reclaims.0.len(), 1);
    assert_eq!(done.reclaims.0[0].reason, ReclaimReason::LeaseExpired);
    assert_eq!(done.reclaims.0[0].attempt, 1);
    assert!(worker.executions_of(run.id) <= 2);
    audit(&env).await;
}

#[tokio::test]
async fn redis_restarted_without_data_loses_no_run() {
    let env = TestEnv::new().await;
    let mut redis = devstack::Redis::start().unwrap();
    let mut config = TransportConfig::new(redis.url());
    config.prefix = env.prefix.clone();
    let service = RunService::new(env.ledger().clone(), Transport::new(&config).unwrap());
    let worker = Worker::spawn(&env, &redis.url(), &["--concurrency", "1"]);
    let running = enqueue(&service, 1, "test.long").await;
    wait_until(Duration::from_secs(10), || async {
        (worker.executions_of(running.id) == 1).then_some(())
    })
    .await
    .expect("long job started");
    let mut queued = Vec::new();
    for _ in 0..5 {
        queued.push(enqueue(&service, 1, "test.succeed").await);
    }

    redis.restart_empty().unwrap();
    // The running job finishes (its XACK finds nothing); the queued runs'
    // entries are gone until the reaper dispatches them again.
    completed(&env, &running).await;
    age(&env).await;
    let report = reap(&service).await;
    assert_eq!(report.lost_dispatch.missing, 5, "{report:?}");
    for run in &queued {
        let done = completed(&env, run).await;
        assert_eq!(done.outcome, Outcome::Succeeded);
        assert_eq!(done.reclaims.0[0].reason, ReclaimReason::DispatchMissing);
        assert_eq!(worker.executions_of(run.id), 1);
    }
    assert_eq!(worker.executions_of(running.id), 1);
    let (total, _) = audit(&env).await;
    assert_eq!(total, 6);
}

#[tokio::test]
async fn dispatch_that_lands_after_the_producer_gave_up_executes_nothing() {
    let env = TestEnv::new().await;
    // Its own Redis: pausing it must not stall other tests.
    let redis = devstack::Redis::start().unwrap();
    let mut config = TransportConfig::new(redis.url());
    config.prefix = env.prefix.clone();
    config.command_timeout = Duration::from_millis(300);
    let service = RunService::new(env.ledger().clone(), Transport::new(&config).unwrap());
    service
        .transport()
        .ensure_group(&"default".into())
        .await
        .unwrap();
    let mut admin = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    // Hold writes: the XADD waits on an open socket past the caller's timeout,
    // and is applied when the pause ends (the ambiguous case).
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(1500)
        .arg("WRITE")
        .query_async(&mut admin)
        .await
        .unwrap();
    let ensured = service
        .ensure_run(&RunRequest::new(4, "test.succeed"))
        .await
        .unwrap();
    assert!(ensured.dispatch_failed(), "{ensured:?}");
    let run = ensured.run;
    assert_eq!(
        (run.status, run.outcome),
        (Status::Completed, Outcome::Failed)
    );
    assert_eq!(run.failure_summary.0[0].code, "queue.dispatch_failed");

    let worker = Worker::spawn(&env, &redis.url(), &[]);
    let stream = env.stream("default");
    let handled = wait_until(Duration::from_secs(10), || async {
        let mut conn = redis::Client::open(redis.url())
            .ok()?
            .get_multiplexed_async_connection()
            .await
            .ok()?;
        let len: usize = redis::cmd("XLEN")
            .arg(&stream)
            .query_async(&mut conn)
            .await
            .ok()?;
        let (pending, ..): (i64, redis::Value, redis::Value, redis::Value) = redis::cmd("XPENDING")
            .arg(&stream)
            .arg("workers")
            .query_async(&mut conn)
            .await
            .ok()?;
        let groups: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&stream)
            .query_async(&mut conn)
            .await
            .ok()?;
        let read: i64 = groups
            .first()
            .and_then(|g| redis::from_redis_value(g.get("entries-read")?.clone()).ok())
            .unwrap_or(0);
        (len == 1 && read == 1 && pending == 0).then_some(())
    })
    .await;
    assert!(
        handled.is_some(),
        "the late entry landed, was delivered and acknowledged"
    );
    let after = env.ledger().get(4, run.id).await.unwrap().unwrap();
    assert_eq!(after.attempt, 0, "never claimed");
    assert_eq!(worker.executions_of(run.id), 0);
}

#[tokio::test]
async fn postgres_restarted_mid_load_loses_no_run() {
    let mut postgres = devstack::Postgres::start(devstack::PostgresOptions::fast()).unwrap();
    let url = postgres.create_database("opsrun").await.unwrap();
    let env = TestEnv::on_database(&url).await;
    let worker = Worker::spawn(&env, &env.redis_url, &["--concurrency", "4"]);
    let mut runs = Vec::new();
    for i in 0..20 {
        runs.push(
            env.service
                .ensure_run(&RunRequest::new(1, "test.succeed").inputs(json!({"i": i})))
                .await
                .unwrap()
                .run,
        );
        if i == 10 {
            // Mid load, not mid start: a worker still starting (migrating,
            // probing its connections) gives up on an unreachable Postgres,
            // as it should, and this test is about the load.
            wait_until(Duration::from_secs(30), || async {
                let done: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM operation_runs WHERE status = 'completed'",
                )
                .fetch_one(&env.pool)
                .await
                .unwrap();
                (done > 0).then_some(())
            })
            .await
            .expect("the worker runs the first runs");
            postgres.crash_restart().unwrap();
        }
        if i >= 10 {
            // The pool reconnects on its own; a start that failed is retried by its caller.
            let request = RunRequest::new(1, "test.succeed").inputs(json!({"late": i}));
            let run = wait_until(Duration::from_secs(10), || async {
                env.service.ensure_run(&request).await.ok().map(|e| e.run)
            })
            .await;
            runs.push(run.expect("enqueue after the restart"));
        }
    }
    // Whatever was in flight when Postgres died is finished by the worker's
    // retries, or by the reaper once its lease is seen to have passed.
    for _ in 0..50 {
        let active: i64 =
            sqlx::query_scalar("SELECT count(*) FROM operation_runs WHERE status <> 'completed'")
                .fetch_one(&env.pool)
                .await
                .unwrap_or(1);
        if active == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        if active > 0 {
            age(&env).await;
            reap(&env.service).await;
        }
    }
    let (total, outcomes) = audit(&env).await;
    assert_eq!(total as usize, runs.len());
    assert_eq!(outcomes, vec![("succeeded".to_string(), total)]);
    for run in &runs {
        let executions = worker.executions_of(run.id);
        assert!(
            (1..=2).contains(&executions),
            "run {} executed {executions} times",
            run.id
        );
    }
}

#[tokio::test]
async fn poison_job_fails_after_exactly_the_attempt_limit_and_is_dead_lettered() {
    let env = TestEnv::new().await;
    let poison = enqueue(&env.service, 2, "test.poison").await;
    assert_eq!(poison.max_attempts, 3);
    for attempt in 1..=3 {
        let mut worker = Worker::spawn(&env, &env.redis_url, &[]);
        assert!(
            wait_for_exit(&mut worker, Duration::from_secs(20)).is_some(),
            "the job kills its worker (attempt {attempt})"
        );
        age(&env).await;
        reap(&env.service).await;
    }
    let done = env.ledger().get(2, poison.id).await.unwrap().unwrap();
    assert_eq!(
        (done.status, done.outcome),
        (Status::Completed, Outcome::Failed)
    );
    assert_eq!(done.attempt, 3);
    assert_eq!(done.failure_summary.0[0].code, "job.attempts_exhausted");
    assert_eq!(done.reclaims.0.len(), 3);
    let executions = std::fs::read_to_string(env.job_dir().join("executions.log")).unwrap();
    assert_eq!(
        executions.lines().count(),
        3,
        "exactly the attempt limit: {executions}"
    );
    let dead: usize = redis::cmd("XLEN")
        .arg(format!("{}:dead:default", env.prefix))
        .query_async(&mut env.redis().await)
        .await
        .unwrap();
    assert_eq!(dead, 1);

    // Other runs keep flowing.
    let worker = Worker::spawn(&env, &env.redis_url, &[]);
    let ok = enqueue(&env.service, 2, "test.succeed").await;
    assert_eq!(completed(&env, &ok).await.outcome, Outcome::Succeeded);
    assert_eq!(worker.executions_of(poison.id), 3);
    audit(&env).await;
}

#[tokio::test]
async fn a_job_longer_than_the_lease_that_keeps_heartbeating_runs_once() {
    let env = TestEnv::new().await;
    let worker = Worker::spawn(&env, &env.redis_url, &["--heartbeat-interval", "200ms"]);
    let run = enqueue(&env.service, 3, "test.long").await;
    wait_until(Duration::from_secs(10), || async {
        (worker.executions_of(run.id) == 1).then_some(())
    })
    .await
    .expect("job started");
    // Reaper rounds with a 1 s lease throughout the 3 s job.
    sqlx::query("UPDATE operation_runs SET lease_seconds = 1 WHERE id = $1")
        .bind(run.id)
        .execute(&env.pool)
        .await
        .unwrap();
    let mut requeued = 0;
    for _ in 0..12 {
        requeued += reap(&env.service).await.stuck.requeued;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let done = completed(&env, &run).await;
    assert_eq!(requeued, 0);
    assert_eq!(done.outcome, Outcome::Succeeded);
    assert!(done.reclaims.0.is_empty());
    assert_eq!(worker.executions_of(run.id), 1);
}

#[tokio::test]
async fn concurrent_reapers_reclaim_each_run_once_and_delete_nothing_active() {
    let env = TestEnv::new().await;
    // 100 runs held by a worker that died long ago.
    for i in 0..100 {
        let run = env
            .service
            .ensure_run(&RunRequest::new(5, "test.succeed").inputs(json!({"i": i})))
            .await
            .unwrap()
            .run;
        env.ledger()
            .mark_running(
                5,
                run.id,
                1,
                "dead-host:1",
                std::time::Duration::from_secs(60),
            )
            .await
            .unwrap()
            .unwrap();
    }
    // 3000 completed runs past retention, and 10 active runs created as long ago.
    insert_expired_runs(&env, 3000).await;
    sqlx::query(
        "INSERT INTO operation_runs (tenant_id, initiator_name, type, run_identity_hash, queue, created_at) \
         SELECT 7, 'System', 'test.old', md5(g::text) || md5(g::text), 'default', now() - interval '200 days' \
         FROM generate_series(1, 10) g",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    age(&env).await;
    let xlen_before = env.xlen("default").await;

    let mut config = ReaperConfig {
        queues: vec!["default".into()],
        ..Default::default()
    };
    config.retention.batch = 100;
    let rounds = (0..3).map(|_| {
        let service = env.service.clone();
        let config = config.clone();
        tokio::spawn(async move { opsrun_reaper::run_once(&service, &config).await })
    });
    let reports: Vec<RoundReport> = futures::future::join_all(rounds)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let requeued: u64 = reports.iter().map(|r| r.stuck.requeued).sum();
    let deleted: u64 = reports.iter().map(|r| r.retention.deleted).sum();
    let redispatched: u64 = reports.iter().map(|r| r.lost_dispatch.missing).sum();
    assert_eq!(requeued, 100, "{reports:?}");
    assert_eq!(
        redispatched, 10,
        "the old queued runs had no entry: sent once each"
    );
    assert_eq!(deleted, 3000);

    let reclaims: Vec<i64> = sqlx::query_scalar(
        "SELECT jsonb_array_length(reclaims)::bigint FROM operation_runs WHERE tenant_id = 5",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(reclaims.len(), 100);
    assert!(
        reclaims.iter().all(|&n| n == 1),
        "each run reclaimed exactly once"
    );
    assert_eq!(
        env.xlen("default").await - xlen_before,
        110,
        "one new dispatch per reclaimed or lost run"
    );
    let active_old: i64 =
        sqlx::query_scalar("SELECT count(*) FROM operation_runs WHERE tenant_id = 7")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(active_old, 10, "active runs are never deleted");
}

#[tokio::test]
async fn a_reaper_killed_mid_retention_leaves_a_consistent_ledger() {
    let env = TestEnv::new().await;
    insert_expired_runs(&env, 20000).await;
    let active = enqueue(&env.service, 6, "test.succeed").await;
    let mut reaper = env
        .command("reaper")
        .args(["--once", "--retention-batch", "20"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(10), || async {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM operation_runs")
            .fetch_one(&env.pool)
            .await
            .ok()?;
        (left < 20001).then_some(())
    })
    .await
    .expect("retention started");
    let _ = reaper.kill();
    let _ = reaper.wait();
    let out = env.command("reaper").args(["--once"]).output().unwrap();
    support::assert_exit(&out, 0);
    let report: serde_json::Value = support::json_stdout(&out);
    assert!(report["retention"]["deleted"].as_u64().unwrap() > 0);
    let left: Vec<i64> = sqlx::query_scalar("SELECT id FROM operation_runs")
        .fetch_all(&env.pool)
        .await
        .unwrap();
    assert_eq!(
        left,
        vec![active.id.0],
        "every expired run deleted, the active one kept"
    );
}

/// Claims commit without waiting for the WAL flush. A Postgres crash right
/// after a claim undoes it: the run is queued again as if never claimed,
/// the job that ran meanwhile finds its claim gone, and the reaper sends
/// the run again, so it completes (having run twice, as after any crash
/// mid-job). The WAL writer is slowed down so the crash surely lands
/// before the claim reaches the disk.
#[tokio::test]
async fn a_claim_undone_by_a_postgres_crash_is_run_again() {
    let mut postgres = devstack::Postgres::start(devstack::PostgresOptions {
        wal_writer_delay: Duration::from_secs(10),
        ..devstack::PostgresOptions::fast()
    })
    .unwrap();
    let url = postgres.create_database("opsrun").await.unwrap();
    let env = TestEnv::on_database(&url).await;
    let worker = Worker::spawn(&env, &env.redis_url, &[]);
    let run = enqueue(&env.service, 1, "test.slow").await;
    let claimed = wait_until(Duration::from_secs(10), || async {
        let run = env.ledger().get(1, run.id).await.unwrap().unwrap();
        (run.status == Status::Running).then_some(run)
    })
    .await
    .expect("the worker claims the run");
    assert_eq!(claimed.attempt, 1);

    postgres.crash_restart().unwrap();
    let undone = wait_until(Duration::from_secs(10), || async {
        env.ledger().get(1, run.id).await.ok().flatten()
    })
    .await
    .expect("Postgres is back");
    assert_eq!(
        (
            undone.status,
            undone.attempt,
            undone.dispatch_entry_id.as_deref()
        ),
        (Status::Queued, 0, None),
        "the claim was not flushed before the crash, so recovery undid it"
    );

    // The job (2 s) ends, finds no claim to complete and acknowledges its
    // entry; the lost-dispatch pass then finds no entry and sends the run again.
    wait_until(Duration::from_secs(15), || async {
        let pending: redis::streams::StreamPendingReply = redis::cmd("XPENDING")
            .arg(env.stream("default"))
            .arg("workers")
            .query_async(&mut env.redis().await)
            .await
            .unwrap();
        (worker.executions_of(run.id) == 1 && pending.count() == 0).then_some(())
    })
    .await
    .expect("the first execution ends and its entry is acknowledged");
    age(&env).await;
    let report = reap(&env.service).await;
    assert_eq!(report.lost_dispatch.missing, 1, "{report:?}");
    let done = completed(&env, &run).await;
    assert_eq!((done.outcome, done.attempt), (Outcome::Succeeded, 1));
    assert_eq!(worker.executions_of(run.id), 2);
}
