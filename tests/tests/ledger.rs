//! The run ledger and service interface against a real Postgres and Redis.

mod support;

use futures::future::join_all;
use opsrun::{Dispatch, Failure, Initiator, Outcome, RunRequest, Status, SummaryCounts};
use serde_json::json;
use support::TestEnv;

#[tokio::test]
async fn concurrent_ensure_with_same_identity_creates_one_run_and_one_entry() {
    let env = TestEnv::new().await;
    let calls = (0..50).map(|i| {
        let service = env.service.clone();
        async move {
            let request = RunRequest::new(7, "inventory.sync")
                .inputs(json!({"site": "paris"}))
                .initiator(Initiator::user(100 + i, format!("user {i}")));
            service.ensure_run(&request).await.unwrap()
        }
    });
    let results = join_all(calls).await;
    let created: Vec<_> = results.iter().filter(|r| !r.deduplicated()).collect();
    assert_eq!(created.len(), 1, "exactly one caller creates the run");
    let run_id = created[0].run.id;
    assert!(
        results.iter().all(|r| r.run.id == run_id),
        "every caller gets the same run"
    );
    assert_eq!(env.count_runs().await, 1);
    assert_eq!(env.xlen("default").await, 1, "exactly one stream entry");
    let run = env.ledger().get(7, run_id).await.unwrap().unwrap();
    assert_eq!(
        run.user_id, created[0].run.user_id,
        "the initiator stays the first one"
    );
    assert_eq!(run.initiator_name, created[0].run.initiator_name);
}

#[tokio::test]
async fn identity_dedupes_per_tenant_and_only_while_active() {
    let env = TestEnv::new().await;
    let request = RunRequest::new(1, "backup.run").inputs(json!({"scope": "all"}));
    let first = env.service.ensure_run(&request).await.unwrap();
    assert!(matches!(first.dispatch, Dispatch::Sent { .. }));
    assert_eq!(first.run.status, Status::Queued);
    assert_eq!(first.run.outcome, Outcome::Pending);
    assert!(first.run.dispatch_entry_id.is_some());

    let again = env.service.ensure_run(&request).await.unwrap();
    assert!(again.deduplicated());
    assert_eq!(again.run.id, first.run.id);

    let other_tenant = env
        .service
        .ensure_run(&RunRequest::new(2, "backup.run").inputs(json!({"scope": "all"})))
        .await
        .unwrap();
    assert!(!other_tenant.deduplicated());

    // Once the run completes its identity is free again.
    let done = env
        .service
        .fail_run(&first.run, &"gave up")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (done.status, done.outcome),
        (Status::Completed, Outcome::Failed)
    );
    let fresh = env.service.ensure_run(&request).await.unwrap();
    assert!(!fresh.deduplicated());
    assert_ne!(fresh.run.id, first.run.id);
    assert_eq!(fresh.run.run_identity_hash, first.run.run_identity_hash);
}

#[tokio::test]
async fn update_run_follows_the_lifecycle_and_sanitizes() {
    let env = TestEnv::new().await;
    let ensured = env
        .service
        .ensure_run(&RunRequest::new(3, "inventory.sync"))
        .await
        .unwrap();
    let counts = SummaryCounts {
        total: 10,
        success: 8,
        failed: 2,
        skipped: 0,
    };
    let running = env
        .service
        .update_run(
            &ensured.run,
            Status::Running,
            Outcome::Pending,
            counts,
            vec![],
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(running.status, Status::Running);
    assert!(running.started_at.is_some());
    let secret = Failure {
        code: "item.failed".into(),
        message: "GET https://u:hunter2@api/x".into(),
        count: 2,
    };
    let done = env
        .service
        .update_run(
            &running,
            Status::Completed,
            Outcome::PartiallySucceeded,
            counts,
            vec![secret.clone(), secret],
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.outcome, Outcome::PartiallySucceeded);
    assert!(done.completed_at.is_some());
    assert_eq!(done.failure_summary.0.len(), 1);
    assert_eq!(done.failure_summary.0[0].count, 4);
    assert!(!done.failure_summary.0[0].message.contains("hunter2"));
    // A completed run is final: the code refuses, and so does the database.
    assert!(
        env.service
            .update_run(&done, Status::Queued, Outcome::Pending, counts, vec![])
            .await
            .is_err()
    );
    let forced = sqlx::query("UPDATE operation_runs SET status = 'queued', outcome = 'pending', completed_at = NULL WHERE id = $1")
        .bind(done.id)
        .execute(&env.pool)
        .await;
    assert!(forced.is_err(), "the trigger rejects leaving completed");
    // Stale expectations change nothing.
    assert!(
        env.service
            .update_run(&running, Status::Completed, Outcome::Failed, counts, vec![])
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn schema_rejects_inconsistent_rows() {
    let env = TestEnv::new().await;
    let ensured = env
        .service
        .ensure_run(&RunRequest::new(3, "inventory.sync"))
        .await
        .unwrap();
    for bad in [
        "UPDATE operation_runs SET outcome = 'succeeded' WHERE id = $1",
        "UPDATE operation_runs SET status = 'completed' WHERE id = $1",
        "UPDATE operation_runs SET status = 'done' WHERE id = $1",
        "UPDATE operation_runs SET status = 'running' WHERE id = $1",
        "UPDATE operation_runs SET tenant_id = 4 WHERE id = $1",
    ] {
        let result = sqlx::query(bad)
            .bind(ensured.run.id)
            .execute(&env.pool)
            .await;
        assert!(result.is_err(), "accepted: {bad}");
    }
}

#[tokio::test]
async fn dispatch_failure_fails_the_run_and_frees_the_identity() {
    let env = TestEnv::new().await;
    let port = devstack::free_port().unwrap();
    let mut config = opsrun::TransportConfig::new(format!("redis://127.0.0.1:{port}/"));
    config.command_timeout = std::time::Duration::from_millis(300);
    let dead = opsrun::RunService::new(
        env.ledger().clone(),
        opsrun::Transport::new(&config).unwrap(),
    );
    let request = RunRequest::new(5, "inventory.sync");
    let failed = dead.ensure_run(&request).await.unwrap();
    let Dispatch::Failed(failure) = &failed.dispatch else {
        panic!("expected a failed dispatch: {failed:?}")
    };
    assert_eq!(failure.code, "queue.dispatch_failed");
    assert_eq!(
        (failed.run.status, failed.run.outcome),
        (Status::Completed, Outcome::Failed)
    );
    assert_eq!(
        failed.run.failure_summary.0[0].code,
        "queue.dispatch_failed"
    );
    // The identity is free: a later start creates a new run.
    let retried = env.service.ensure_run(&request).await.unwrap();
    assert!(matches!(retried.dispatch, Dispatch::Sent { .. }));
    assert_ne!(retried.run.id, failed.run.id);
}

#[tokio::test]
async fn batches_dedupe_exactly_and_dispatch_in_one_round_trip() {
    let env = TestEnv::new().await;
    // Ten identities already active before the batch.
    let mut before = std::collections::HashMap::new();
    for i in 0..10 {
        let run = env
            .service
            .ensure_run(&RunRequest::new(9, "sync.batch").inputs(json!({"i": i})))
            .await
            .unwrap()
            .run;
        before.insert(i, run.id);
    }
    let xlen_before = env.xlen("default").await;
    // 150 identities (10 of them the active ones), each twice in the batch, plus invalid requests.
    let mut requests = Vec::new();
    for round in 0..2 {
        for i in 0..150 {
            requests.push(
                RunRequest::new(9, "sync.batch")
                    .inputs(json!({"i": i}))
                    .context(json!({"round": round})),
            );
        }
    }
    requests.push(RunRequest::new(0, "sync.batch"));
    requests.push(RunRequest::new(9, "Bad Type"));
    let results = env.service.ensure_runs(&requests).await;
    assert_eq!(results.len(), requests.len());
    assert!(
        results[300].is_err() && results[301].is_err(),
        "invalid requests get their own errors"
    );
    for i in 0..150usize {
        let first = results[i].as_ref().unwrap();
        let second = results[150 + i].as_ref().unwrap();
        assert_eq!(first.run.id, second.run.id, "one run per identity");
        assert!(second.deduplicated());
        match before.get(&(i as i32)) {
            Some(id) => assert!(
                first.deduplicated() && first.run.id == *id,
                "folded into the active run"
            ),
            None => {
                assert!(
                    matches!(first.dispatch, Dispatch::Sent { .. }),
                    "{:?}",
                    first.dispatch
                );
                assert_eq!(first.run.context.0["round"], 0, "the first request's run");
            }
        }
    }
    assert_eq!(env.count_runs().await, 150);
    assert_eq!(
        env.xlen("default").await - xlen_before,
        140,
        "one entry per created run"
    );
    // Every run is stamped as dispatched by its insert; its entry id is
    // recorded by the claim (or by the reaper, should it wait long).
    let stamped: i64 =
        sqlx::query_scalar("SELECT count(*) FROM operation_runs WHERE dispatched_at IS NOT NULL")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(stamped, 150);
}

/// A batch's inserts return only what Postgres chose (id, times); the rest
/// of each run is built from the request. It must be the row as stored.
#[tokio::test]
async fn a_batchs_runs_are_the_rows_as_stored() {
    let env = TestEnv::new().await;
    let later = chrono::Utc::now() + chrono::Duration::hours(1);
    let trace = opsrun::trace::TraceContext::parse(
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    )
    .unwrap();
    // Enough runs for two insert statements at once, of every shape.
    let requests: Vec<RunRequest> = (0..120)
        .map(|i| {
            let request = RunRequest::new(11 + i % 2, "sync.shapes")
                .inputs(json!({"i": i, "ratio": 1.5, "name": "Zoë", "nested": {"b": [1, 2], "a": null}}))
                .context(json!({"ticket": format!("T-{i}")}));
            match i % 4 {
                0 => request.initiator(Initiator::user(100 + i, format!("user {i}"))).queue("q0"),
                1 => request.not_before(later),
                2 => request.traceparent(trace).queue("other"),
                _ => request,
            }
        })
        .collect();
    let results = env.service.ensure_runs(&requests).await;
    for result in results {
        let ensured = result.unwrap();
        let mut returned = ensured.run;
        // The entry id is the dispatch's, recorded on the row by the claim.
        returned.dispatch_entry_id = None;
        let stored = env
            .ledger()
            .get(returned.tenant_id, returned.id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(returned, stored);
    }
}

#[tokio::test]
async fn a_failed_half_of_a_large_batch_is_started_run_by_run() {
    let env = TestEnv::new().await;
    // The database refuses one row, which fails the statement holding it:
    // the half of the batch inserted beside it must still be dispatched,
    // and the refused half started alone, each run reporting for itself.
    for statement in [
        "CREATE FUNCTION refuse_marked() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN IF NEW.inputs ? 'refuse' THEN RAISE EXCEPTION 'refused'; END IF; RETURN NEW; END $$",
        "CREATE TRIGGER refuse_marked BEFORE INSERT ON operation_runs \
         FOR EACH ROW EXECUTE FUNCTION refuse_marked()",
    ] {
        sqlx::query(statement).execute(&env.pool).await.unwrap();
    }
    let xlen_before = env.xlen("default").await;
    let requests: Vec<_> = (0..300)
        .map(|n| {
            let inputs = if n == 250 {
                json!({"i": n, "refuse": true})
            } else {
                json!({"i": n})
            };
            RunRequest::new(5, "sync.batch").inputs(inputs)
        })
        .collect();
    let results = env.service.ensure_runs(&requests).await;
    for (n, result) in results.iter().enumerate() {
        match result {
            Err(e) => assert_eq!(n, 250, "only the refused run fails: {e}"),
            Ok(ensured) => assert!(
                matches!(ensured.dispatch, Dispatch::Sent { .. }),
                "run {n}: {:?}",
                ensured.dispatch
            ),
        }
    }
    assert!(results[250].is_err());
    assert_eq!(env.count_runs().await, 299);
    assert_eq!(env.xlen("default").await - xlen_before, 299);
}

#[tokio::test]
async fn chunked_batches_keep_order_and_dedupe_across_chunks() {
    let env = TestEnv::new().await;
    let xlen_before = env.xlen("default").await;
    // 250 requests in chunks of 40 (two chunks overlap at a time): 200
    // identities, the last 50 repeating identities of earlier chunks.
    let requests: Vec<_> = (0..250)
        .map(|n| {
            RunRequest::new(5, "sync.batch")
                .inputs(json!({"i": n % 200}))
                .context(json!({"n": n}))
        })
        .collect();
    let mut results = Vec::new();
    let mut chunk_sizes = Vec::new();
    env.service
        .ensure_runs_chunked(&requests, 40, |chunk, chunk_results| {
            assert_eq!(chunk.len(), chunk_results.len());
            chunk_sizes.push(chunk.len());
            results.extend(chunk_results);
        })
        .await;
    assert_eq!(chunk_sizes, [40, 40, 40, 40, 40, 40, 10]);
    for (n, result) in results.iter().enumerate() {
        let ensured = result.as_ref().unwrap();
        if n < 200 {
            assert!(
                matches!(ensured.dispatch, Dispatch::Sent { .. }),
                "request {n}"
            );
            assert_eq!(ensured.run.context.0["n"], n, "results follow the requests");
        } else {
            let first = results[n - 200].as_ref().unwrap();
            assert!(
                ensured.deduplicated(),
                "request {n} repeats request {}",
                n - 200
            );
            assert_eq!(ensured.run.id, first.run.id);
        }
    }
    assert_eq!(env.count_runs().await, 200);
    assert_eq!(env.xlen("default").await - xlen_before, 200);
}

#[tokio::test]
async fn a_batch_whose_dispatch_fails_fails_its_new_runs_only() {
    let env = TestEnv::new().await;
    let active = env
        .service
        .ensure_run(&RunRequest::new(2, "sync.batch").inputs(json!({"i": 0})))
        .await
        .unwrap()
        .run;
    let port = devstack::free_port().unwrap();
    let mut config = opsrun::TransportConfig::new(format!("redis://127.0.0.1:{port}/"));
    config.command_timeout = std::time::Duration::from_millis(300);
    let dead = opsrun::RunService::new(
        env.ledger().clone(),
        opsrun::Transport::new(&config).unwrap(),
    );
    let requests: Vec<_> = (0..5)
        .map(|i| RunRequest::new(2, "sync.batch").inputs(json!({"i": i})))
        .collect();
    let results = dead.ensure_runs(&requests).await;
    assert!(results[0].as_ref().unwrap().deduplicated());
    assert_eq!(results[0].as_ref().unwrap().run.id, active.id);
    for result in &results[1..] {
        let ensured = result.as_ref().unwrap();
        assert!(ensured.dispatch_failed());
        assert_eq!(
            (ensured.run.status, ensured.run.outcome),
            (Status::Completed, Outcome::Failed)
        );
        assert_eq!(
            ensured.run.failure_summary.0[0].code,
            "queue.dispatch_failed"
        );
    }
}

#[tokio::test]
async fn a_late_dispatch_record_never_passes_for_the_next_attempt() {
    let env = TestEnv::new().await;
    let ledger = env.ledger();
    let run = env
        .service
        .ensure_run(&RunRequest::new(3, "sync.batch").inputs(json!({"late": true})))
        .await
        .unwrap()
        .run;
    let first_entry = run.dispatch_entry_id.clone().expect("dispatch recorded");
    // A worker claims attempt 1, which fails retryably: the run is queued
    // again, awaiting attempt 2, with no dispatch.
    let lease = std::time::Duration::from_secs(60);
    ledger
        .mark_running(3, run.id, 1, "w:1", lease)
        .await
        .unwrap()
        .expect("claimed");
    let claim = opsrun::ledger::Claim {
        tenant_id: 3,
        run_id: run.id,
        holder: "w:1",
        attempt: 1,
    };
    ledger
        .retry(&claim, std::time::Duration::ZERO, &[])
        .await
        .unwrap()
        .expect("queued for a retry");
    // The record of attempt 1's entry arrives only now, alone and in a batch.
    let late = opsrun::DispatchRecord {
        tenant_id: 3,
        run_id: run.id,
        attempt: 0,
        entry_id: first_entry,
        shard: 0,
    };
    ledger
        .record_dispatches(std::slice::from_ref(&late))
        .await
        .unwrap();
    ledger
        .record_dispatches(&[late.clone(), late.clone()])
        .await
        .unwrap();
    let queued = ledger.get(3, run.id).await.unwrap().unwrap();
    assert_eq!((queued.status, queued.attempt), (Status::Queued, 1));
    assert_eq!(
        (queued.dispatch_entry_id, queued.dispatched_at),
        (None, None),
        "the late record changed nothing"
    );
    // So the due pass sends attempt 2, and that dispatch is recorded.
    let due = ledger.take_due(10).await.unwrap();
    assert_eq!(due.iter().map(|r| r.id).collect::<Vec<_>>(), [run.id]);
    let entry_id = env.service.dispatch(&due[0]).await.unwrap();
    let sent = ledger.get(3, run.id).await.unwrap().unwrap();
    assert_eq!(sent.dispatch_entry_id, Some(entry_id));
}

/// The row's shape is Postgres's to enforce, not only the library's: a write
/// that bypasses validation is refused (identity hash, type, queue and JSON
/// columns are domains checked when written), and the claim of a valid row
/// passes without re-checking them.
#[tokio::test]
async fn postgres_refuses_malformed_runs_written_past_the_library() {
    let env = TestEnv::new().await;
    let pool = env.ledger().pool();
    let insert = |hash: &str, run_type: &str, queue: &str, inputs: &str| {
        format!(
            "INSERT INTO operation_runs (tenant_id, initiator_name, type, run_identity_hash, queue, inputs) \
             VALUES (1, 'System', '{run_type}', '{hash}', '{queue}', '{inputs}'::jsonb)"
        )
    };
    let good_hash = "ab".repeat(32);
    for (why, statement) in [
        (
            "uppercase hash",
            insert(&"AB".repeat(32), "backup.run", "default", "{}"),
        ),
        (
            "short hash",
            insert(&"ab".repeat(31), "backup.run", "default", "{}"),
        ),
        (
            "non-hex hash",
            insert(
                &format!("{}zz", "ab".repeat(31)),
                "backup.run",
                "default",
                "{}",
            ),
        ),
        (
            "undotted type",
            insert(&good_hash, "backup", "default", "{}"),
        ),
        (
            "queue with a space",
            insert(&good_hash, "backup.run", "bad queue", "{}"),
        ),
        (
            "inputs not an object",
            insert(&good_hash, "backup.run", "default", "[1]"),
        ),
    ] {
        let refused = sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
            .execute(pool)
            .await
            .expect_err(why);
        let code = refused
            .as_database_error()
            .and_then(|e| e.code())
            .map(|c| c.to_string());
        assert_eq!(code.as_deref(), Some("23514"), "{why}: {refused}");
    }
    assert_eq!(env.count_runs().await, 0, "nothing was written");

    sqlx::raw_sql(sqlx::AssertSqlSafe(insert(
        &good_hash,
        "backup.run",
        "default",
        r#"{"scope": "all"}"#,
    )))
    .execute(pool)
    .await
    .unwrap();
    let id: i64 = sqlx::query_scalar("SELECT id FROM operation_runs")
        .fetch_one(pool)
        .await
        .unwrap();
    let claimed = env
        .ledger()
        .mark_running(
            1,
            opsrun::RunId(id),
            1,
            "w:1",
            std::time::Duration::from_secs(60),
        )
        .await
        .unwrap()
        .expect("a valid row is claimed");
    assert_eq!(claimed.run_identity_hash, good_hash);
    assert_eq!(claimed.run_type, "backup.run");
}

#[tokio::test]
async fn a_session_lets_a_dead_connection_go_and_takes_a_fresh_one() {
    let env = TestEnv::new().await;
    let ledger = env.ledger();
    let mut runs = Vec::new();
    for i in 0..3 {
        let request = RunRequest::new(5, "sync.batch").inputs(json!({"session": i}));
        runs.push(env.service.ensure_run(&request).await.unwrap().run);
    }
    let claim =
        |run: &opsrun::Run| first_claim(run, run.dispatch_entry_id.clone().expect("dispatched"));
    let mut session = ledger.session();
    let claimed = session
        .mark_running_many(&[claim(&runs[0])], "w:1")
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);

    // Postgres ends every other backend of this test's database, the
    // session's held connection among them.
    let ended: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()) AS ended",
    )
    .fetch_one(ledger.pool())
    .await
    .unwrap();
    assert!(ended >= 1, "the session's connection was ended");

    // The next statement fails on the dead connection, retryably, and writes nothing;
    let error = session
        .mark_running_many(&[claim(&runs[1])], "w:1")
        .await
        .unwrap_err();
    assert!(error.is_retryable(), "{error}");
    let untouched = ledger.get(5, runs[1].id).await.unwrap().unwrap();
    assert_eq!(untouched.status, Status::Queued);
    // the one after it runs on a fresh connection.
    let claimed = session
        .mark_running_many(&[claim(&runs[1]), claim(&runs[2])], "w:1")
        .await
        .unwrap();
    assert_eq!(claimed.len(), 2);
}

/// The lifecycle's rules hold for every writer, not only the library's
/// statements: Postgres refuses an update that changes what never changes,
/// takes an edge the state machine lacks or rewrites a final outcome; an
/// update that does not set `updated_at` gets it stamped; a run asked to
/// stop that is put back in the queue ends cancelled instead.
#[tokio::test]
async fn postgres_refuses_updates_that_break_the_lifecycle() {
    let env = TestEnv::new().await;
    let pool = env.ledger().pool();
    let start = |n: i64| {
        let service = env.service.clone();
        async move {
            let request = RunRequest::new(9, "backup.run").inputs(json!({ "n": n }));
            service.ensure_run(&request).await.unwrap().run.id.0
        }
    };
    let update = |statement: String| async move {
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
            .execute(pool)
            .await
    };
    let refused = |result: Result<sqlx::postgres::PgQueryResult, sqlx::Error>, why: &str| {
        let error = result.expect_err(why);
        let database = error.as_database_error().expect("a database error");
        assert_eq!(database.code().as_deref(), Some("23514"), "{why}: {error}");
        database.message().to_string()
    };
    let id = start(1).await;
    for (why, set) in [
        ("type", "type = 'restore.run'"),
        ("tenant", "tenant_id = 10"),
        (
            "identity",
            &format!("run_identity_hash = '{}'", "cd".repeat(32)) as &str,
        ),
        (
            "creation time",
            "created_at = created_at - interval '1 day'",
        ),
    ] {
        let message = refused(
            update(format!("UPDATE operation_runs SET {set} WHERE id = {id}")).await,
            why,
        );
        assert!(message.contains("immutable"), "{why}: {message}");
    }

    // An update that leaves updated_at alone gets it stamped.
    let stamp = || async {
        sqlx::query_scalar::<_, chrono::DateTime<chrono::Utc>>(
            "SELECT updated_at FROM operation_runs WHERE id = $1",
        )
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
    };
    let before = stamp().await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    update(format!(
        "UPDATE operation_runs SET domain_id = 'd-1' WHERE id = {id}"
    ))
    .await
    .unwrap();
    assert!(stamp().await > before, "updated_at was stamped");

    // queued -> completed is an edge; completed -> queued is not, and the
    // outcome of a completed run is final.
    update(format!(
        "UPDATE operation_runs SET status = 'completed', outcome = 'failed', completed_at = now() WHERE id = {id}"
    ))
    .await
    .unwrap();
    let message = refused(
        update(format!(
            "UPDATE operation_runs SET status = 'queued', outcome = 'pending', completed_at = NULL WHERE id = {id}"
        ))
        .await,
        "completed -> queued",
    );
    assert!(
        message.contains("illegal status transition completed -> queued"),
        "{message}"
    );
    let message = refused(
        update(format!(
            "UPDATE operation_runs SET outcome = 'succeeded' WHERE id = {id}"
        ))
        .await,
        "a new outcome",
    );
    assert!(message.contains("outcome is final"), "{message}");

    // A running run asked to stop and put back in the queue ends cancelled.
    let id = start(2).await;
    let run = env
        .ledger()
        .mark_running(
            9,
            opsrun::RunId(id),
            1,
            "w:1",
            std::time::Duration::from_secs(60),
        )
        .await
        .unwrap()
        .expect("claimed");
    update(format!(
        "UPDATE operation_runs SET cancel_requested_at = now(), cancel_request = 'stopped by Ada' WHERE id = {id}"
    ))
    .await
    .unwrap();
    update(format!(
        "UPDATE operation_runs SET status = 'queued', holder = NULL WHERE id = {id}"
    ))
    .await
    .unwrap();
    let ended = env.ledger().get(9, run.id).await.unwrap().unwrap();
    assert_eq!(ended.status, Status::Completed);
    assert_eq!(ended.outcome, Outcome::Cancelled);
    assert_eq!(ended.failure_summary[0].code, "run.cancelled");
    assert_eq!(ended.failure_summary[0].message, "stopped by Ada");
}

/// Behind a transaction pooler the worker's claim and completion go as one
/// simple query with their values written into its text: every value comes
/// back exactly as it comes from the statements sent with parameters, quotes,
/// backslashes and all.
#[tokio::test]
async fn claims_and_completions_written_into_the_query_keep_every_value() {
    let env = TestEnv::new().await;
    let written = opsrun::Ledger::behind(env.ledger().pool().clone(), opsrun::Pooler::Transaction);
    let awkward = "it's \\' \"q\" \\\\ '); DROP TABLE operation_runs; -- ünï ✓ 😀 {a,b} $1 E'x'";
    let request = RunRequest::new(11, "backup.run")
        .inputs(json!({ "s": awkward, "n": [1, 2.5, null] }))
        .context(json!({ "why": awkward }));
    let run = env.service.ensure_run(&request).await.unwrap().run;
    let holder = "w:1 'odd\\holder\"";
    let claimed = written
        .session()
        .mark_running_many(
            &[first_claim(
                &run,
                run.dispatch_entry_id.clone().expect("dispatched"),
            )],
            holder,
        )
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1, "the run is claimed");
    let stored = env.ledger().get(11, run.id).await.unwrap().unwrap();
    assert_eq!(claimed[0], stored, "the claim returns the row as stored");
    assert_eq!(stored.holder.as_deref(), Some(holder));
    assert_eq!(stored.inputs.0["s"], awkward);

    let counts = SummaryCounts {
        total: 3,
        success: 1,
        failed: 2,
        skipped: 0,
    };
    let failures = [Failure {
        code: "job.odd".into(),
        message: awkward.into(),
        count: 2,
    }];
    let completed = written
        .complete_many(&[(
            opsrun::ledger::Claim {
                tenant_id: 11,
                run_id: run.id,
                holder,
                attempt: 1,
            },
            opsrun::ledger::Terminal {
                outcome: Outcome::PartiallySucceeded,
                counts: &counts,
                failures: &failures,
                reclaim: None,
            },
        )])
        .await
        .unwrap();
    assert_eq!(completed.len(), 1, "the run is completed");
    assert!(!completed[0].slot_waiters);
    let stored = env.ledger().get(11, run.id).await.unwrap().unwrap();
    assert_eq!(stored.status, Status::Completed);
    assert_eq!(stored.outcome, Outcome::PartiallySucceeded);
    assert_eq!(stored.summary_counts.0, counts);
    assert_eq!(stored.failure_summary.0, failures);
    // A value Postgres cannot store is refused (as a parameter would be), and
    // only its own claim is skipped.
    let mut others = Vec::new();
    for n in 0..2 {
        let request = RunRequest::new(11, "backup.run").inputs(json!({ "other": n }));
        others.push(env.service.ensure_run(&request).await.unwrap().run);
    }
    let claimed = written
        .session()
        .mark_running_many(
            &[
                first_claim(&others[0], "1-0\0".into()),
                first_claim(&others[1], others[1].dispatch_entry_id.clone().unwrap()),
            ],
            "w:1",
        )
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1, "the claim with a NUL is not made");
    assert_eq!(claimed[0].id, others[1].id);
    let untouched = env.ledger().get(11, others[0].id).await.unwrap().unwrap();
    assert_eq!(untouched.status, Status::Queued);
}

/// The claim of `run`'s first attempt by the entry `entry_id`.
fn first_claim(run: &opsrun::Run, entry_id: String) -> opsrun::ClaimRequest {
    opsrun::ClaimRequest {
        tenant_id: run.tenant_id,
        run_id: run.id,
        attempt: 1,
        lease: std::time::Duration::from_secs(60),
        entry_id,
        shard: 0,
        limit: None,
        concurrency_key_digest: None,
    }
}

/// A batch start goes first as a plain insert; one that meets an active
/// identity is sent again with `ON CONFLICT`: that run is skipped (the
/// service then reports the active one), the rest are inserted, and so are
/// later batches that meet one too.
#[tokio::test]
async fn a_batch_start_meeting_an_active_identity_skips_that_run_and_inserts_the_rest() {
    let env = TestEnv::new().await;
    // A ledger of its own, which has met no conflict yet.
    let ledger = opsrun::Ledger::new(env.pool.clone());
    let active = env
        .service
        .ensure_run(&RunRequest::new(3, "test.succeed").inputs(json!({"n": 1})))
        .await
        .unwrap()
        .run;
    let request = RunRequest::new(3, "test.succeed");
    let new_run = |identity| opsrun::ledger::NewRun {
        request: &request,
        queue: "default",
        identity,
        rule: &opsrun::registry::IdentityRule::Deterministic,
        max_attempts: 3,
        lease_seconds: 60,
        domain_id: None,
        shard: 0,
        concurrency_key: None,
    };
    let fresh: Vec<String> = (0..3).map(|i| format!("{:064x}", 0xf00d_u64 + i)).collect();
    for (round, fresh) in fresh.iter().enumerate() {
        let inserted = ledger
            .insert_many(&[new_run(&active.run_identity_hash), new_run(fresh)])
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        let identities: Vec<&str> = inserted
            .iter()
            .map(|r| r.run_identity_hash.as_str())
            .collect();
        assert_eq!(identities, [fresh.as_str()], "round {round}");
    }
    let holding: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM operation_runs WHERE tenant_id = 3 AND run_identity_hash = $1",
    )
    .bind(&active.run_identity_hash)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(holding, 1, "the active identity still has one run");
}

/// ANALYZE keeps statistics for the columns queries select rows by and
/// skips the payload columns nothing filters on (migration 000025): sorting
/// sampled jsonb values was most of what autovacuum's frequent analyzes of
/// a busy ledger cost.
#[tokio::test]
async fn analyze_skips_the_columns_no_query_filters_on() {
    let env = TestEnv::new().await;
    let requests: Vec<RunRequest> = (0..200)
        .map(|i| {
            RunRequest::new(1 + i % 3, "backup.run")
                .inputs(json!({"n": i}))
                .context(json!({"ticket": i}))
        })
        .collect();
    for result in env.service.ensure_runs(&requests).await {
        result.unwrap();
    }
    let pool = env.ledger().pool();
    sqlx::query("ANALYZE operation_runs")
        .execute(pool)
        .await
        .unwrap();
    let analyzed: Vec<String> = sqlx::query_scalar(
        "SELECT attname::text FROM pg_stats WHERE schemaname = current_schema() \
         AND tablename = 'operation_runs' ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    for filtered in [
        "tenant_id",
        "status",
        "type",
        "queue",
        "created_at",
        "completed_at",
    ] {
        assert!(
            analyzed.iter().any(|c| c == filtered),
            "{filtered} keeps its statistics: {analyzed:?}"
        );
    }
    for payload in [
        "inputs",
        "context",
        "summary_counts",
        "failure_summary",
        "initiator_name",
    ] {
        assert!(
            !analyzed.iter().any(|c| c == payload),
            "{payload} is not analyzed: {analyzed:?}"
        );
    }
}
