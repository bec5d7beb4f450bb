//! opsrun through PgBouncer in transaction mode (Debian's 1.18, which does
//! not track prepared statements), with fewer server connections than
//! clients: the service, the producer, workers and the reaper all connect
//! through it with `OPSRUN_DATABASE_POOLER=transaction`; migrations run over
//! the direct URL. Assertions read Postgres directly.

mod support;

use std::sync::Arc;
use std::time::Duration;

use devstack::{PgBouncer, Postgres, PostgresOptions};
use opsrun::{Outcome, RunRequest, RunService, Status};
use opsrun_reaper::ReaperConfig;
use serde_json::json;
use support::{TestEnv, Worker, assert_exit, json_stdout, run_with_stdin, wait_until};
use tokio::sync::OnceCell;

/// Server connections PgBouncer keeps per database: fewer than the clients
/// of every test here (a service pool of 10, workers of 3, a reaper of 4).
const SERVER_POOL: u32 = 2;

/// A Postgres with PgBouncer in front.
struct Pooled {
    postgres: Postgres,
    bouncer: PgBouncer,
}

impl Pooled {
    fn start() -> Pooled {
        let postgres = Postgres::start(PostgresOptions::fast()).unwrap();
        let bouncer = PgBouncer::start(&postgres, SERVER_POOL).unwrap();
        Pooled { postgres, bouncer }
    }

    /// A fresh database reached through the pooler.
    async fn env(&self, database: &str) -> TestEnv {
        let direct = self.postgres.create_database(database).await.unwrap();
        TestEnv::through_pooler(&direct, &self.bouncer.url(database)).await
    }
}

static SHARED: OnceCell<Arc<Pooled>> = OnceCell::const_new();

/// The Postgres and PgBouncer shared by the tests that inject no fault.
async fn shared() -> Arc<Pooled> {
    SHARED
        .get_or_init(|| async { Arc::new(Pooled::start()) })
        .await
        .clone()
}

/// One reaper round through the pooler (a pass may fail while Postgres
/// recovers; the next round runs it again).
async fn reap(service: &RunService) {
    let config = ReaperConfig {
        queues: vec!["default".into()],
        ..Default::default()
    };
    opsrun_reaper::run_once(service, &config).await;
}

/// Make every queued run's dispatch look old, and every running run whose
/// heartbeat stopped (workers here heartbeat every second) look abandoned,
/// instead of waiting through leases.
async fn age(env: &TestEnv) {
    sqlx::query(
        "UPDATE operation_runs SET dispatched_at = now() - interval '1 hour', \
             heartbeat_at = CASE WHEN heartbeat_at < now() - interval '3 seconds' \
                 THEN now() - interval '1 hour' ELSE heartbeat_at END \
         WHERE completed_at IS NULL",
    )
    .execute(&env.pool)
    .await
    .unwrap();
}

/// Runs not completed yet (read directly).
async fn active(env: &TestEnv) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM operation_runs WHERE completed_at IS NULL")
        .fetch_one(&env.pool)
        .await
        .unwrap_or(-1)
}

/// Reap (through the pooler) until nothing is active; panics after `limit`.
async fn reap_until_done(env: &TestEnv, limit: Duration) {
    let done = wait_until(limit, || async {
        if active(env).await == 0 {
            return Some(());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        age(env).await;
        reap(&env.service).await;
        None
    })
    .await;
    assert!(done.is_some(), "{} runs left active", active(env).await);
}

#[tokio::test]
async fn the_lifecycle_runs_through_pgbouncer_with_fewer_server_connections_than_clients() {
    let servers = shared().await;
    let env = servers.env("lifecycle").await;
    let workers = [
        Worker::spawn(
            &env,
            &env.redis_url,
            &["--concurrency", "8", "--db-pool-size", "3", "--no-migrate"],
        ),
        Worker::spawn(
            &env,
            &env.redis_url,
            &["--concurrency", "8", "--db-pool-size", "3", "--no-migrate"],
        ),
    ];
    // Retries become due through the reaper's due pass.
    let _reaper = support::Spawned(
        env.command("reaper")
            .args(["--queues", "default", "--due-interval", "200ms"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );

    // Starts through the library, one by one and in a batch.
    let mut runs = Vec::new();
    for (i, run_type) in ["test.succeed", "test.partial", "test.fail", "test.flaky"]
        .iter()
        .cycle()
        .take(40)
        .enumerate()
    {
        let request = RunRequest::new(1 + (i % 3) as i64, *run_type).inputs(json!({"i": i}));
        runs.push(env.service.ensure_run(&request).await.unwrap().run);
    }
    let batch: Vec<RunRequest> = (0..100)
        .map(|i| RunRequest::new(4, "test.succeed").inputs(json!({"batch": i})))
        .collect();
    for ensured in env.service.ensure_runs(&batch).await {
        runs.push(ensured.unwrap().run);
    }
    // Concurrent starts of one identity: one run.
    let racing = RunRequest::new(5, "test.succeed").inputs(json!({"site": "paris"}));
    let raced = futures::future::join_all((0..16).map(|_| env.service.ensure_run(&racing))).await;
    let raced: Vec<_> = raced.into_iter().map(|e| e.unwrap().run.id).collect();
    assert!(raced.iter().all(|id| *id == raced[0]), "{raced:?}");
    let racing_runs: i64 =
        sqlx::query_scalar("SELECT count(*) FROM operation_runs WHERE tenant_id = 5")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(racing_runs, 1);

    // Starts through the producer binary, single and batched: each a new
    // client of the pooler, whose statements must not meet earlier ones.
    for i in 0..5 {
        let out = env.producer(&[
            "enqueue",
            "--tenant",
            "6",
            "--type",
            "test.succeed",
            "--inputs",
            &json!({"cli": i}).to_string(),
        ]);
        assert_exit(&out, 0);
        assert_eq!(json_stdout(&out)["status"], "queued");
    }
    let lines: String = (0..50)
        .map(|i| {
            format!(
                "{{\"tenant_id\": 7, \"type\": \"test.succeed\", \"inputs\": {{\"n\": {i}}}}}\n"
            )
        })
        .collect();
    let out = run_with_stdin(
        env.command("producer").args(["enqueue", "--batch", "-"]),
        lines.as_bytes(),
    );
    assert_exit(&out, 0);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 50);

    let done = wait_until(Duration::from_secs(60), || async {
        (active(&env).await == 0).then_some(())
    })
    .await;
    assert!(done.is_some(), "{} runs left active", active(&env).await);
    for run in &runs {
        let run = env
            .ledger()
            .get(run.tenant_id, run.id)
            .await
            .unwrap()
            .unwrap();
        let expected = match run.run_type.as_str() {
            "test.partial" => Outcome::PartiallySucceeded,
            "test.fail" => Outcome::Failed,
            _ => Outcome::Succeeded,
        };
        assert_eq!(run.outcome, expected, "{run:?}");
        if run.run_type == "test.flaky" {
            assert_eq!(run.attempt, 3, "retried twice: {run:?}");
        }
        // Both workers log to the same file.
        let executions = workers[0].executions_of(run.id);
        let expected_executions = if run.run_type == "test.flaky" { 3 } else { 1 };
        assert_eq!(executions, expected_executions, "{run:?}");
    }
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM operation_runs")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(total, 140 + 1 + 5 + 50);

    // A worker killed mid-job: the reaper (the binary, through the pooler)
    // takes its runs back and the other worker finishes them.
    let [mut doomed, survivor] = workers;
    let long = start_running(&env, 8, "test.long", 4).await;
    doomed.signal(libc::SIGKILL);
    let _ = doomed.child.wait();
    // Its runs' leases (60 s) are made to have passed.
    sqlx::query(
        "UPDATE operation_runs SET heartbeat_at = now() - interval '1 hour' \
         WHERE status = 'running' AND holder LIKE '%:' || $1",
    )
    .bind(doomed.child.id().to_string())
    .execute(&env.pool)
    .await
    .unwrap();
    let out = env
        .command("reaper")
        .args(["--once", "--queues", "default"])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    assert_eq!(json_stdout(&out)["failed_passes"], json!([]));
    for run in &long {
        let run = support::completed(&env, run).await;
        assert_eq!(run.outcome, Outcome::Succeeded);
        assert!(run.reclaims.len() <= 1, "{run:?}");
    }
    drop(survivor);
    assert_eq!(active(&env).await, 0);
}

/// Start `count` runs of `run_type` for `tenant`, returned once all are running.
async fn start_running(
    env: &TestEnv,
    tenant: i64,
    run_type: &str,
    count: usize,
) -> Vec<opsrun::Run> {
    let requests: Vec<_> = (0..count)
        .map(|i| RunRequest::new(tenant, run_type).inputs(json!({"i": i})))
        .collect();
    let runs = env
        .service
        .ensure_runs(&requests)
        .await
        .into_iter()
        .map(|e| e.unwrap().run)
        .collect();
    wait_until(Duration::from_secs(10), || async {
        let running: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM operation_runs WHERE tenant_id = $1 AND status = 'running'",
        )
        .bind(tenant)
        .fetch_one(&env.pool)
        .await
        .unwrap();
        (running == count as i64).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("the {run_type} runs did not all start"));
    runs
}

/// Run `command` to its end; a service that does not stop within `limit`
/// is killed and fails the test.
fn output_within(command: &mut std::process::Command, limit: Duration) -> std::process::Output {
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let exited = devstack::wait_until(limit, || matches!(child.try_wait(), Ok(Some(_))));
    if !exited {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        exited,
        "still running after {limit:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[tokio::test]
async fn a_service_not_told_about_the_pooler_refuses_to_start_and_says_why() {
    let servers = shared().await;
    let env = servers.env("unconfigured").await;
    let told = "goes through a transaction-mode pooler";

    // Services probe at start and refuse with exit 2.
    let mut worker = env.command("worker");
    worker.env("OPSRUN_DATABASE_POOLER", "direct").args([
        "--no-migrate",
        "--handlers",
        env.write_registry("").to_str().unwrap(),
    ]);
    let out = output_within(&mut worker, Duration::from_secs(30));
    let stderr = assert_exit(&out, 2);
    assert!(stderr.contains(told), "{stderr}");
    let out = output_within(
        env.command("reaper")
            .env("OPSRUN_DATABASE_POOLER", "direct")
            .arg("--once"),
        Duration::from_secs(30),
    );
    let stderr = assert_exit(&out, 2);
    assert!(stderr.contains(told), "{stderr}");

    // Migrations need the direct URL, whatever the setting says.
    for pooler in ["direct", "transaction"] {
        let out = env
            .command("producer")
            .env("OPSRUN_DATABASE_POOLER", pooler)
            .arg("migrate")
            .output()
            .unwrap();
        let stderr = assert_exit(&out, 2);
        assert!(stderr.contains("pooler"), "{pooler}: {stderr}");
    }

    // A one-shot enqueue does not probe; the first statement that meets
    // another client's prepared statement is reported, exit 2, and the
    // runs that were accepted are all there, queued.
    let mut refused = None;
    for i in 0..6 {
        let out = env
            .command("producer")
            .env("OPSRUN_DATABASE_POOLER", "direct")
            .args(["enqueue", "--tenant", "9", "--type", "test.succeed"])
            .args(["--inputs", &json!({"i": i}).to_string()])
            .output()
            .unwrap();
        match out.status.code() {
            Some(0) => assert_eq!(json_stdout(&out)["status"], "queued"),
            _ => {
                refused = Some(assert_exit(&out, 2));
                break;
            }
        }
    }
    let stderr = refused.expect("mixed-up statements were noticed");
    assert!(stderr.contains(told), "{stderr}");
    assert!(
        stderr.contains("OPSRUN_DATABASE_POOLER=transaction"),
        "{stderr}"
    );
    let statuses: Vec<String> =
        sqlx::query_scalar("SELECT status FROM operation_runs WHERE tenant_id = 9")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert!(statuses.iter().all(|s| s == "queued"), "{statuses:?}");

    // The same URL with the setting works.
    let out = env.producer(&["enqueue", "--tenant", "9", "--type", "test.succeed"]);
    assert_exit(&out, 0);
}

#[tokio::test]
async fn postgres_crashing_behind_pgbouncer_loses_no_run() {
    // Its own servers: the crashes would disturb the other tests.
    let mut servers = Pooled::start();
    let env = servers.env("faults").await;
    let worker = Worker::spawn(
        &env,
        &env.redis_url,
        &["--concurrency", "8", "--db-pool-size", "3", "--no-migrate"],
    );

    // Crash mid-load: starts that fail while Postgres recovers are retried
    // by their caller, as a producer's caller would.
    let mut runs = Vec::new();
    for i in 0..40 {
        if i == 20 {
            servers.postgres.crash_restart().unwrap();
        }
        let request = RunRequest::new(1, "test.succeed").inputs(json!({"i": i}));
        let run = wait_until(Duration::from_secs(20), || async {
            env.service.ensure_run(&request).await.ok().map(|e| e.run)
        })
        .await;
        runs.push(run.expect("a start after the crash"));
    }
    reap_until_done(&env, Duration::from_secs(60)).await;

    // Postgres away while jobs finish: their completions wait for it.
    let slow = start_running(&env, 2, "test.slow", 6).await;
    servers.postgres.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    servers.postgres.restart().unwrap();
    // Claims committed asynchronously just before the kill may be undone:
    // those runs are queued again and the reaper sends them again.
    reap_until_done(&env, Duration::from_secs(60)).await;

    runs.extend(slow);
    let completed: Vec<(i64, String)> = sqlx::query_as(
        "SELECT id, outcome FROM operation_runs WHERE status = 'completed' ORDER BY id",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        completed.len(),
        runs.len(),
        "every accepted run completed once"
    );
    for run in &runs {
        let run = env
            .ledger()
            .get(run.tenant_id, run.id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(run.status, Status::Completed);
        assert_eq!(run.outcome, Outcome::Succeeded, "{run:?}");
        let executions = worker.executions_of(run.id);
        assert!(
            (1..=2).contains(&executions),
            "run {} executed {executions} times",
            run.id
        );
    }
}
