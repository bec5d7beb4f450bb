//! The `worker` binary end to end: exec outcomes, duplicate and forged
//! entries, secrets in stderr, graceful shutdown, Redis restarting empty.

mod support;

use std::time::Duration;

use opsrun::transport::{Entry, Transport, TransportConfig};
use opsrun::{Outcome, RunId, RunRequest, RunService, Status};
use serde_json::json;
use support::{TestEnv, Worker, completed, enqueue, wait_until};

#[tokio::test]
async fn exec_results_map_to_outcomes_with_timestamps() {
    let env = TestEnv::new().await;
    let worker = Worker::spawn(&env, &env.redis_url, &[]);
    let succeed = enqueue(&env.service, 1, "test.succeed").await;
    let partial = enqueue(&env.service, 1, "test.partial").await;
    let fail = enqueue(&env.service, 1, "test.fail").await;
    let timeout = enqueue(&env.service, 1, "test.timeout").await;
    let unknown = enqueue(&env.service, 1, "test.unknown").await;

    let done = completed(&env, &succeed).await;
    assert_eq!(done.outcome, Outcome::Succeeded);
    assert!(done.started_at.is_some() && done.completed_at.is_some());
    assert!(
        done.started_at.unwrap() >= done.created_at
            && done.completed_at.unwrap() >= done.started_at.unwrap()
    );
    assert_eq!(done.attempt, 1);

    let done = completed(&env, &partial).await;
    assert_eq!(done.outcome, Outcome::PartiallySucceeded);
    assert_eq!(
        (done.summary_counts.0.success, done.summary_counts.0.failed),
        (8, 2)
    );

    let done = completed(&env, &fail).await;
    assert_eq!(done.outcome, Outcome::Failed);
    let failure = &done.failure_summary.0[0];
    assert_eq!(failure.code, "job.exit_nonzero");
    assert!(
        failure.message.contains("exited with status 3"),
        "{}",
        failure.message
    );
    let stored: String =
        sqlx::query_scalar("SELECT row_to_json(r)::text FROM operation_runs r WHERE id = $1")
            .bind(fail.id)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert!(
        !stored.contains("hunter2secret"),
        "a secret from stderr reached Postgres: {stored}"
    );

    let done = completed(&env, &timeout).await;
    assert_eq!(done.outcome, Outcome::Failed);
    assert_eq!(done.failure_summary.0[0].code, "job.timeout");

    let done = completed(&env, &unknown).await;
    assert_eq!(done.failure_summary.0[0].code, "job.unknown_type");

    for run in [&succeed, &partial, &fail, &timeout] {
        assert_eq!(worker.executions_of(run.id), 1, "run {} executions", run.id);
    }
    let pending: (i64,) = redis::cmd("XPENDING")
        .arg(env.stream("default"))
        .arg("workers")
        .query_async::<(i64, redis::Value, redis::Value, redis::Value)>(&mut env.redis().await)
        .await
        .map(|r| (r.0,))
        .unwrap();
    assert_eq!(
        pending.0, 0,
        "every entry acknowledged after its terminal write"
    );
}

#[tokio::test]
async fn jobs_get_the_run_on_stdin_and_not_the_workers_secrets() {
    let env = TestEnv::new().await;
    let worker = Worker::spawn(&env, &env.redis_url, &[]);
    let request = RunRequest::new(5, "test.stdin")
        .inputs(json!({"site": "paris"}))
        .context(json!({"restore_run_id": 9}));
    let run = env.service.ensure_run(&request).await.unwrap().run;
    completed(&env, &run).await;
    let dir = worker.log.parent().unwrap();
    let stdin: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join(format!("stdin-{}.json", run.id))).unwrap(),
    )
    .unwrap();
    assert_eq!(stdin["run_id"], run.id.0);
    assert_eq!(stdin["tenant_id"], 5);
    assert_eq!(stdin["type"], "test.stdin");
    assert_eq!(stdin["attempt"], 1);
    assert_eq!(stdin["inputs"]["site"], "paris");
    assert_eq!(stdin["context"]["restore_run_id"], 9);
    let leaked = std::fs::read_to_string(dir.join(format!("dburl-{}", run.id))).unwrap();
    assert_eq!(leaked.trim(), "0", "DATABASE_URL must not reach the job");
}

#[tokio::test]
async fn duplicated_and_forged_entries_execute_nothing() {
    let env = TestEnv::new().await;
    let worker = Worker::spawn(&env, &env.redis_url, &[]);
    let run = enqueue(&env.service, 3, "test.succeed").await;
    let transport = env.service.transport();
    // The same run dispatched a second time while queued: one execution.
    let dup = Entry {
        run_id: run.id,
        tenant_id: 3,
        run_type: "test.succeed".into(),
        attempt: 1,
        concurrency_key_digest: None,
    };
    transport.publish(&"default".into(), &dup).await.unwrap();
    let done = completed(&env, &run).await;
    assert_eq!(done.outcome, Outcome::Succeeded);

    let other = enqueue(&env.service, 3, "test.slow").await;
    let forged = [
        Entry {
            run_id: RunId(999_999),
            tenant_id: 3,
            run_type: "test.succeed".into(),
            attempt: 1,
            concurrency_key_digest: None,
        },
        Entry {
            run_id: other.id,
            tenant_id: 4,
            run_type: "test.slow".into(),
            attempt: 1,
            concurrency_key_digest: None,
        },
        Entry {
            run_id: run.id,
            tenant_id: 3,
            run_type: "test.succeed".into(),
            attempt: 1,
            concurrency_key_digest: None,
        },
        Entry {
            run_id: run.id,
            tenant_id: 3,
            run_type: "test.succeed".into(),
            attempt: 2,
            concurrency_key_digest: None,
        },
    ];
    for entry in &forged {
        transport.publish(&"default".into(), entry).await.unwrap();
    }
    let _: String = redis::cmd("XADD")
        .arg(env.stream("default"))
        .arg("*")
        .arg("junk")
        .arg("1")
        .query_async(&mut env.redis().await)
        .await
        .unwrap();
    completed(&env, &other).await;
    let drained = wait_until(Duration::from_secs(10), || async {
        let pending: i64 = redis::cmd("XPENDING")
            .arg(env.stream("default"))
            .arg("workers")
            .query_async::<(i64, redis::Value, redis::Value, redis::Value)>(&mut env.redis().await)
            .await
            .unwrap()
            .0;
        (pending == 0).then_some(())
    })
    .await;
    assert!(drained.is_some(), "forged entries are acknowledged");
    assert_eq!(worker.executions_of(run.id), 1);
    assert_eq!(worker.executions_of(other.id), 1);
    assert_eq!(
        worker.executions().len(),
        2,
        "nothing else executed: {:?}",
        worker.executions()
    );
    let after = env.ledger().get(3, run.id).await.unwrap().unwrap();
    assert_eq!(after.attempt, 1, "a completed run is never claimed again");
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_job_finish() {
    let env = TestEnv::new().await;
    let mut worker = Worker::spawn(&env, &env.redis_url, &["--shutdown-grace", "20s"]);
    let run = enqueue(&env.service, 2, "test.slow").await;
    let started = wait_until(Duration::from_secs(10), || async {
        (worker.executions_of(run.id) == 1).then_some(())
    })
    .await;
    assert!(started.is_some(), "job started");
    worker.signal(15);
    let status = tokio::task::spawn_blocking(move || {
        let status = worker.child.wait().unwrap();
        (status, worker)
    })
    .await
    .unwrap();
    assert_eq!(
        status.0.code(),
        Some(0),
        "worker exits cleanly after draining"
    );
    let done = env.ledger().get(2, run.id).await.unwrap().unwrap();
    assert_eq!(
        (done.status, done.outcome),
        (Status::Completed, Outcome::Succeeded)
    );
    assert_eq!(status.1.executions_of(run.id), 1);
}

#[tokio::test]
async fn worker_keeps_working_after_redis_restarts_without_data() {
    let env = TestEnv::new().await;
    let mut redis = devstack::Redis::start().unwrap();
    let mut config = TransportConfig::new(redis.url());
    config.prefix = env.prefix.clone();
    let service = RunService::new(env.ledger().clone(), Transport::new(&config).unwrap());
    let worker = Worker::spawn(&env, &redis.url(), &[]);
    let before = enqueue(&service, 1, "test.succeed").await;
    completed(&env, &before).await;

    redis.restart_empty().unwrap();
    let after = enqueue(&service, 1, "test.succeed").await;
    let done = completed(&env, &after).await;
    assert_eq!(done.outcome, Outcome::Succeeded);
    assert_eq!(worker.executions_of(after.id), 1);
}

#[tokio::test]
async fn worker_recovers_when_postgres_restarts() {
    let mut postgres = devstack::Postgres::start(devstack::PostgresOptions::fast()).unwrap();
    let url = postgres.create_database("opsrun").await.unwrap();
    let env = TestEnv::on_database(&url).await;
    let worker = Worker::spawn(&env, &env.redis_url, &[]);
    let before = enqueue(&env.service, 1, "test.succeed").await;
    completed(&env, &before).await;

    postgres.crash_restart().unwrap();
    // The test's own pool reconnects too; the first use after the crash may fail.
    let after = wait_until(Duration::from_secs(10), || async {
        let request = RunRequest::new(1, "test.succeed").inputs(json!({"after": "restart"}));
        env.service.ensure_run(&request).await.ok().map(|e| e.run)
    })
    .await
    .expect("enqueue after the restart");
    let done = completed(&env, &after).await;
    assert_eq!(done.outcome, Outcome::Succeeded);
    assert_eq!(worker.executions_of(after.id), 1);
}

#[tokio::test]
async fn bad_configuration_exits_2_and_unreachable_postgres_exits_4() {
    let env = TestEnv::new().await;
    let dir = std::env::temp_dir().join(format!("opsrun-worker-config-{}", env.prefix));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[types.\"a.b\"]\ncommand = [\"x\"]\ntime_limit = \"soon\"\n",
    )
    .unwrap();
    let cases: [(&[&str], &str); 4] = [
        (&["--handlers", bad.to_str().unwrap()], "time_limit"),
        (&["--handlers", "/nonexistent/handlers.toml"], "cannot read"),
        (&["--queues", "Bad Queue"], "queue"),
        (&["--concurrency", "0"], "concurrency"),
    ];
    for (args, expected) in cases {
        let out = env.command("worker").args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    let closed = support::unreachable_postgres_url();
    let out = env
        .command("worker")
        .env("DATABASE_URL", closed)
        .args(["--startup-timeout", "1s"])
        .output()
        .unwrap();
    support::assert_exit(&out, 4);
    std::fs::remove_dir_all(dir).unwrap();
}

/// What a job can find of its worker's credentials: the worker's
/// environment through `/proc/$PPID/environ`, its own environment, the
/// worker's command line and (as another user) the worker's secret file.
#[tokio::test]
async fn a_job_finds_no_credential_of_its_worker() {
    use std::os::unix::fs::PermissionsExt;
    let env = TestEnv::new().await;
    let dir = env.job_dir().join("peek");
    std::fs::create_dir_all(&dir).unwrap();
    // Jobs running as another user write what they saw here.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    // A password in the database URL (the test Postgres trusts loopback, so
    // it is never asked for) and a cloud secret in the worker's environment.
    let db_password = format!("db-pw-{}", env.prefix);
    let (scheme, rest) = env.database_url.split_once("://").unwrap();
    let (user, host) = rest.split_once('@').unwrap();
    let database_url = format!("{scheme}://{user}:{db_password}@{host}");
    assert!(database_url.contains(&db_password), "{database_url}");
    let secret_file = dir.join("database_url");
    std::fs::write(&secret_file, &database_url).unwrap();
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cloud_secret = format!("aws-secret-{}", env.prefix);

    let peek = |name: &str| {
        format!(
            r#"["sh", "-c", '''out={dir}/{name}-$OPSRUN_RUN_ID; {{ echo '# environ'; tr '\0' '\n' < /proc/$PPID/environ; echo '# env'; env; echo '# cmdline'; tr '\0' ' ' < /proc/$PPID/cmdline; echo; echo '# file'; cat {file}; }} > $out.tmp 2>&1; mv $out.tmp $out''']"#,
            dir = dir.display(),
            file = secret_file.display(),
        )
    };
    let root = nix_is_root();
    let mut registry = format!(
        "[types.\"test.peek\"]\ncommand = {}\ninherit_env = [\"PATH\", \"OPSRUN_TEST_VISIBLE\"]\n",
        peek("same-user")
    );
    if root {
        registry.push_str(&format!(
            "[types.\"test.peek_as_nobody\"]\ncommand = {}\nrun_as = \"nobody\"\n",
            peek("nobody")
        ));
    }
    let mut command = env.command("worker");
    command
        .env_remove("DATABASE_URL")
        .env("DATABASE_URL_FILE", &secret_file)
        .env("AWS_SECRET_ACCESS_KEY", &cloud_secret)
        .env("OPSRUN_TEST_VISIBLE", "visible-to-jobs");
    let _worker = Worker::spawn_with_registry(&env, &registry, command);

    let mut seen = Vec::new();
    let same = enqueue(&env.service, 1, "test.peek").await;
    completed(&env, &same).await;
    seen.push(("same-user", same.id));
    if root {
        let nobody = enqueue(&env.service, 1, "test.peek_as_nobody").await;
        completed(&env, &nobody).await;
        seen.push(("nobody", nobody.id));
    }
    for (name, id) in seen {
        let mut text = std::fs::read_to_string(dir.join(format!("{name}-{id}"))).unwrap();
        if name == "same-user" {
            // The worker's own user can read its secret file: keeping the
            // file from jobs is what run_as is for.
            text = text.split("# file").next().unwrap().to_string();
        }
        for credential in [&db_password, &cloud_secret, &env.redis_url] {
            assert!(
                !text.contains(credential.as_str()),
                "{name}: the job found {credential:?}:\n{text}"
            );
        }
        let (job_env, _) = text
            .split_once("# env\n")
            .and_then(|(_, rest)| rest.split_once("# cmdline"))
            .unwrap();
        assert!(!job_env.contains("AWS_SECRET_ACCESS_KEY"), "{job_env}");
        assert!(job_env.contains("OPSRUN_RUN_ID="), "{job_env}");
        if name == "same-user" {
            assert!(
                job_env.contains("OPSRUN_TEST_VISIBLE=visible-to-jobs"),
                "{job_env}"
            );
        } else {
            // Another user: neither the worker's environment nor its
            // secret file can be read at all.
            assert!(!job_env.contains("OPSRUN_TEST_VISIBLE"), "{job_env}");
            assert_eq!(text.matches("Permission denied").count(), 2, "{text}");
        }
    }
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[tokio::test]
async fn json_logs_carry_the_runs_fields() {
    let env = TestEnv::new().await;
    let _worker = Worker::spawn(&env, &env.redis_url, &["--log-format", "json"]);
    let run = enqueue(&env.service, 6, "test.succeed").await;
    completed(&env, &run).await;
    let line = wait_until(Duration::from_secs(10), || async {
        std::fs::read_dir(env.job_dir())
            .unwrap()
            .flatten()
            .filter(|f| f.file_name().to_string_lossy().starts_with("worker-"))
            .flat_map(|f| {
                std::fs::read_to_string(f.path())
                    .unwrap_or_default()
                    .lines()
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .find(|l| l.contains("run completed"))
    })
    .await
    .expect("the worker logged the completion");
    let event: serde_json::Value = serde_json::from_str(&line).expect("one JSON object per line");
    assert_eq!(event["message"], "run completed", "{event}");
    assert_eq!(event["outcome"], "succeeded", "{event}");
    assert_eq!(event["level"], "INFO");
    let span = &event["span"];
    assert_eq!(span["run_id"], run.id.to_string(), "{event}");
    assert_eq!(span["tenant_id"], 6, "{event}");
    assert_eq!(span["type"], "test.succeed", "{event}");
    assert_eq!(span["attempt"], 1, "{event}");
    assert_eq!(span["queue"], "default", "{event}");
}

/// `--prefetch`: a worker holds up to `concurrency + prefetch` runs, claimed
/// ahead and waiting for a slot in claim order, never running more than
/// `concurrency` at once. A run waiting longer than its lease keeps it:
/// it is heartbeated from its claim, so the reaper leaves it alone. A run
/// whose handler has returned gives its turn back before its completion is
/// written (the group commit), so it is not counted as held while it still
/// reads `running`.
#[tokio::test]
async fn prefetched_runs_wait_for_a_slot_and_keep_their_lease() {
    let env = TestEnv::new().await;
    let _reaper = support::fast_reaper(&env, &[]);
    let _worker = Worker::spawn(
        &env,
        &env.redis_url,
        &[
            "--concurrency",
            "1",
            "--prefetch",
            "3",
            "--heartbeat-interval",
            "300ms",
        ],
    );
    // Five runs of a second each, leases of 2 s: the fourth and fifth wait
    // about 3 s for the one slot.
    let mut runs = Vec::new();
    for _ in 0..5 {
        runs.push(enqueue(&env.service, 6, "test.serial").await);
    }
    let ids: Vec<i64> = runs.iter().map(|r| r.id.0).collect();
    let most_held = std::cell::Cell::new(0);
    let all_done = wait_until(Duration::from_secs(30), || {
        let env = &env;
        let ids = &ids;
        let most_held = &most_held;
        async move {
            let (running, done): (Vec<i64>, i64) = sqlx::query_as(
                "SELECT coalesce(array_agg(id) FILTER (WHERE status = 'running'), '{}'), \
                        count(*) FILTER (WHERE status = 'completed') \
                 FROM operation_runs WHERE id = ANY($1)",
            )
            .bind(ids)
            .fetch_one(&env.pool)
            .await
            .unwrap();
            // Read after the ledger: a run still `running` there whose
            // handler had returned by then had given its turn back.
            let finished =
                std::fs::read_to_string(env.job_dir().join("finished")).unwrap_or_default();
            let finished: Vec<i64> = finished
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect();
            let held = running.iter().filter(|id| !finished.contains(id)).count();
            most_held.set(most_held.get().max(held));
            tokio::time::sleep(Duration::from_millis(50)).await;
            (done == 5).then_some(())
        }
    })
    .await;
    assert!(all_done.is_some(), "every run completes");
    assert_eq!(
        most_held.get(),
        4,
        "one running and three claimed ahead, never the fifth as well"
    );
    let overlaps = std::fs::read_to_string(env.job_dir().join("overlaps")).unwrap_or_default();
    assert!(overlaps.is_empty(), "runs ran at once: {overlaps}");
    for run in &runs {
        let done = env.ledger().get(6, run.id).await.unwrap().unwrap();
        assert_eq!(done.outcome, Outcome::Succeeded, "run {}", run.id);
        assert_eq!(
            (done.attempt, done.reclaims.0.len()),
            (1, 0),
            "run {} waited for its slot without losing its claim",
            run.id
        );
    }
}

/// A run cancelled while it waits for a slot, claimed ahead, never starts:
/// it ends cancelled when its turn comes.
#[tokio::test]
async fn a_prefetched_run_cancelled_while_it_waits_never_starts() {
    let env = TestEnv::new().await;
    let worker = Worker::spawn(
        &env,
        &env.redis_url,
        &[
            "--concurrency",
            "1",
            "--prefetch",
            "1",
            "--cancel-check",
            "200ms",
        ],
    );
    let slow = enqueue(&env.service, 7, "test.slow").await;
    let waiting = enqueue(&env.service, 7, "test.succeed").await;
    let claimed_ahead = wait_until(Duration::from_secs(10), || async {
        let run = env.ledger().get(7, waiting.id).await.unwrap().unwrap();
        (worker.executions_of(slow.id) == 1 && run.status == Status::Running).then_some(())
    })
    .await;
    assert!(
        claimed_ahead.is_some(),
        "the second run is claimed while the first runs"
    );
    let out = env.producer(&["cancel", "--tenant", "7", "--run", &waiting.id.to_string()]);
    support::assert_exit(&out, 0);
    let done = completed(&env, &waiting).await;
    assert_eq!(done.outcome, Outcome::Cancelled);
    assert_eq!(
        worker.executions_of(waiting.id),
        0,
        "the cancelled run's job never started"
    );
    assert_eq!(completed(&env, &slow).await.outcome, Outcome::Succeeded);
}
