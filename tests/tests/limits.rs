//! Per-key concurrency limits, decided in Postgres at claim: exact across
//! worker processes, runs over the limit wait without an attempt or a
//! worker slot and start as a slot frees, another tenant (or another input
//! value) is never held back, and a waiting run says what it waits for.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use opsrun::concurrency::key_digest;
use opsrun::registry::Registry;
use opsrun::{Outcome, RunRequest, Status};
use serde_json::json;
use support::{TestEnv, Worker, assert_exit, wait_until};

const REGISTRY: &str = r#"
[types."sync.tenant"]
command = ["sh", "-c", "sleep 0.05"]
concurrency = { limit = 2, per = "tenant" }

[types."sync.connection"]
command = ["sh", "-c", "sleep 0.1"]
concurrency = { limit = 1, per = "inputs.connection" }
"#;

/// Most runs seen running at once, per key, while `sampling` holds; and
/// every sample where a key's count (claimed less released) was not the
/// number of its runs running with a slot. The count is written in the
/// same transaction as the run's state, so the two agree in every snapshot.
async fn sample_running(
    pool: sqlx::PgPool,
    sampling: Arc<AtomicBool>,
) -> (HashMap<String, i64>, Vec<(String, i64, i64)>) {
    let mut most: HashMap<String, i64> = HashMap::new();
    let mut disagreements = Vec::new();
    while sampling.load(Ordering::Relaxed) {
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT k.concurrency_key, \
                    (SELECT count(*) FROM operation_runs r WHERE r.concurrency_key = k.concurrency_key \
                       AND r.status = 'running'), \
                    opsrun_running_of(k.concurrency_key) \
             FROM concurrency_claims k",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        for (key, running, counted) in rows {
            if running != counted {
                disagreements.push((key.clone(), running, counted));
            }
            let seen = most.entry(key).or_default();
            *seen = (*seen).max(running);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (most, disagreements)
}

#[tokio::test]
async fn four_workers_keep_each_key_to_its_limit_and_other_keys_flow() {
    let env = TestEnv::new().await;
    let registry = Arc::new(Registry::parse(REGISTRY).unwrap());
    let service = env.service.clone().with_registry(registry);
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = tokio::spawn(sample_running(env.pool.clone(), Arc::clone(&sampling)));

    // 200 runs of tenant 1 (limit 2 per tenant) and 45 of three
    // connections of tenant 1 (limit 1 per connection), all sent at once.
    let mut requests: Vec<RunRequest> = (0..200)
        .map(|n| RunRequest::new(1, "sync.tenant").inputs(json!({"n": n})))
        .collect();
    for n in 0..45 {
        let connection = ["a", "b", "c"][n % 3];
        requests.push(
            RunRequest::new(1, "sync.connection").inputs(json!({"n": n, "connection": connection})),
        );
    }
    let accepted: Vec<opsrun::Run> = service
        .ensure_runs(&requests)
        .await
        .into_iter()
        .map(|r| r.unwrap().run)
        .collect();
    assert_eq!(
        accepted[0].concurrency_key.as_deref(),
        Some("sync.tenant/1")
    );
    assert_eq!(
        accepted[200].concurrency_key.as_deref(),
        Some("sync.connection/1/connection=a")
    );

    let _workers: Vec<Worker> = (0..4)
        .map(|_| {
            let mut command = env.command("worker");
            command.args(["--concurrency", "10"]);
            Worker::spawn_with_registry(&env, REGISTRY, command)
        })
        .collect();
    let _reaper = support::fast_reaper_with_registry(&env, REGISTRY);

    // A run held back says so, and names the runs holding the slots. (A
    // run seen waiting may be woken before it is explained: then another.)
    let (waiting, why) = wait_until(Duration::from_secs(20), || async {
        let runs: Vec<opsrun::Run> =
            futures::future::join_all(accepted[100..200].iter().map(|r| env.ledger().get(1, r.id)))
                .await
                .into_iter()
                .filter_map(|r| r.unwrap())
                .filter(|r| r.slot_wait_since.is_some() && r.status == Status::Queued)
                .collect();
        let waiting = runs.into_iter().next()?;
        let why = opsrun::explain::explain(
            env.ledger(),
            Some(env.service.transport()),
            &waiting,
            chrono::Utc::now(),
        )
        .await
        .unwrap();
        let still = env.ledger().get(1, waiting.id).await.unwrap()?;
        (still.slot_wait_since.is_some() && still.status == Status::Queued)
            .then_some((waiting, why))
    })
    .await
    .expect("a run waits for a slot");
    assert!(
        why.summary.contains("Waiting for a concurrency slot")
            && why.summary.contains("at most 2 run(s) of sync.tenant/1"),
        "{why:?}"
    );
    assert_eq!(waiting.attempt, 0, "waiting uses no attempt");

    // Another tenant's runs of the same type are not held back by that backlog.
    let started = Instant::now();
    let others: Vec<opsrun::Run> = service
        .ensure_runs(
            &(0..10)
                .map(|n| RunRequest::new(2, "sync.tenant").inputs(json!({"n": n})))
                .collect::<Vec<_>>(),
        )
        .await
        .into_iter()
        .map(|r| r.unwrap().run)
        .collect();
    for run in &others {
        let done = support::completed_within(&env, run, Duration::from_secs(20)).await;
        assert_eq!(done.outcome, Outcome::Succeeded);
    }
    let behind: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM operation_runs WHERE tenant_id = 1 AND type = 'sync.tenant' AND completed_at IS NULL",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert!(
        behind > 20,
        "tenant 2's 10 runs (done in {:?}) should finish well before tenant 1's backlog; {behind} left",
        started.elapsed()
    );

    for run in &accepted {
        let done = support::completed_within(&env, run, Duration::from_secs(120)).await;
        assert_eq!(done.outcome, Outcome::Succeeded, "run {}", run.id);
        assert_eq!(
            done.attempt, 1,
            "run {}: waiting never used an attempt",
            run.id
        );
    }
    sampling.store(false, Ordering::Relaxed);
    let (most, disagreements) = sampler.await.unwrap();
    assert!(
        disagreements.is_empty(),
        "counts that disagreed with the running runs (key, running, counted): {disagreements:?}"
    );
    assert_eq!(most.get("sync.tenant/1"), Some(&2), "{most:?}");
    assert!(
        most.get("sync.tenant/2").is_some_and(|n| *n <= 2),
        "{most:?}"
    );
    for connection in ["a", "b", "c"] {
        assert_eq!(
            most.get(&format!("sync.connection/1/connection={connection}")),
            Some(&1),
            "{most:?}"
        );
    }
    // Every slot was given back: each key's claims are all released.
    let held: Vec<(String, i64)> = sqlx::query_as(
        "SELECT concurrency_key, opsrun_running_of(concurrency_key) FROM concurrency_claims",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(held.len(), 5, "{held:?}");
    assert!(held.iter().all(|(_, n)| *n == 0), "{held:?}");
}

#[tokio::test]
async fn a_waiting_run_can_be_cancelled_and_a_missing_key_input_is_refused() {
    let env = TestEnv::new().await;
    let registry = Arc::new(Registry::parse(REGISTRY).unwrap());
    let service = env.service.clone().with_registry(registry);
    let path = env.write_registry(REGISTRY);

    // The input a limit is kept per is required: exit 2, nothing created.
    let out = env.producer(&[
        "enqueue",
        "--registry",
        path.to_str().unwrap(),
        "--tenant",
        "3",
        "--type",
        "sync.connection",
        "--inputs",
        r#"{"n": 1}"#,
    ]);
    let stderr = assert_exit(&out, 2);
    assert!(stderr.contains("\"connection\""), "{stderr}");
    assert_eq!(env.count_runs().await, 0);

    // One connection, limit 1: the second run waits, and a cancel ends it
    // at once; the first finishes, and a third takes the slot.
    let start =
        |n: i64| RunRequest::new(3, "sync.connection").inputs(json!({"n": n, "connection": "x"}));
    let mut command = env.command("worker");
    command.args(["--concurrency", "4"]);
    let registry_slow = REGISTRY.replace("sleep 0.1", "sleep 2");
    let _worker = Worker::spawn_with_registry(&env, &registry_slow, command);
    let first = service.ensure_run(&start(1)).await.unwrap().run;
    support::wait_until(Duration::from_secs(10), || async {
        let run = env.ledger().get(3, first.id).await.unwrap()?;
        (run.status == Status::Running).then_some(())
    })
    .await
    .expect("the first run starts");
    let second = service.ensure_run(&start(2)).await.unwrap().run;
    let second = wait_until(Duration::from_secs(10), || async {
        env.ledger()
            .get(3, second.id)
            .await
            .unwrap()
            .filter(|r| r.slot_wait_since.is_some())
    })
    .await
    .expect("the second run waits for the slot");
    assert_eq!(second.status, Status::Queued);
    let (result, _) = service
        .cancel(3, second.id, &opsrun::Initiator::user(7, "Ada"), None)
        .await
        .unwrap()
        .expect("tenant 3 has the run");
    assert_eq!(result, opsrun::CancelResult::Cancelled);
    let third = service.ensure_run(&start(3)).await.unwrap().run;
    let first = support::completed_within(&env, &first, Duration::from_secs(10)).await;
    assert_eq!(first.outcome, Outcome::Succeeded);
    let third = support::completed_within(&env, &third, Duration::from_secs(10)).await;
    assert_eq!(third.outcome, Outcome::Succeeded);
    let second = env.ledger().get(3, second.id).await.unwrap().unwrap();
    assert_eq!(second.outcome, Outcome::Cancelled);
    assert_eq!(second.attempt, 0);
}

/// The holder the lifecycle tests below claim as.
const HOLDER: &str = "limits:1";

/// A service whose `sync.one` runs one at a time per tenant, and a
/// lifecycle (claiming as [`HOLDER`]) that runs them as no-ops.
fn limited_to_one(env: &TestEnv) -> (opsrun::RunService, opsrun::lifecycle::Lifecycle) {
    use opsrun::lifecycle::{Handler, Job, JobResult, Lifecycle, Route};

    struct Noop;
    #[async_trait::async_trait]
    impl Handler for Noop {
        async fn handle(&self, _job: Job) -> JobResult {
            JobResult::succeeded()
        }
    }

    const ONE: &str = r#"
[types."sync.one"]
command = ["true"]
concurrency = { limit = 1, per = "tenant" }
"#;
    let registry = Arc::new(Registry::parse(ONE).unwrap());
    let service = env.service.clone().with_registry(Arc::clone(&registry));
    let route = Route::new(Arc::new(Noop), registry.spec("sync.one").unwrap());
    let lifecycle = Lifecycle::new(
        env.ledger().clone(),
        env.service.transport().clone(),
        HOLDER,
    )
    .route("sync.one", route);
    (service, lifecycle)
}

/// `outcome` (a claim's, by `what`) claimed nothing, and `run` is queued,
/// woken and sent again at once rather than left waiting.
async fn assert_refused_then_sent_again(
    env: &TestEnv,
    outcome: &Result<opsrun::lifecycle::Claimed, opsrun::lifecycle::Processed>,
    run: &opsrun::Run,
    what: &str,
) {
    use opsrun::lifecycle::{Processed, SkipReason};
    assert_eq!(
        outcome.as_ref().err(),
        Some(&Processed::Skipped(SkipReason::NotClaimable)),
        "{what} claims nothing"
    );
    let now = env
        .ledger()
        .get(run.tenant_id, run.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(now.status, Status::Queued);
    assert!(
        now.slot_wait_since.is_none() && now.dispatched_at.is_some(),
        "{what}: woken and sent again at once: {now:?}"
    );
}

/// A run whose claim decides it must wait while the slot's holder completes
/// is not left waiting with the slot free: that completion cannot see the
/// waiter (not committed yet) to wake it, so the claim looks for room once
/// its wait is committed and wakes the run itself. Forced here: the run's
/// row is locked as it is marked waiting (after its claim found the key
/// full), the holder completes, the lock goes.
#[tokio::test]
async fn a_slot_freed_while_a_claim_decides_to_wait_is_not_left_unused() {
    use opsrun::ledger::{Claim, Terminal};
    use opsrun::transport::{Delivery, Entry};

    let env = TestEnv::new().await;
    let (service, lifecycle) = limited_to_one(&env);
    let start = |n: i64| {
        let service = service.clone();
        async move {
            let request = RunRequest::new(6, "sync.one").inputs(json!({ "n": n }));
            service.ensure_run(&request).await.unwrap().run
        }
    };
    let (a, b) = (start(1).await, start(2).await);
    let lifecycle = Arc::new(lifecycle);
    let delivery = |run: &opsrun::Run| Delivery {
        stream: "default".into(),
        entry_id: run.dispatch_entry_id.clone().unwrap(),
        entry: Some(Entry {
            run_id: run.id,
            tenant_id: 6,
            run_type: "sync.one".into(),
            attempt: 1,
            concurrency_key_digest: run.concurrency_key.as_deref().map(key_digest),
        }),
    };
    let claimed = lifecycle.claim(vec![delivery(&a)]).await;
    assert!(claimed[0].1.is_ok(), "a takes the only slot");

    // b's claim finds the key full; marking b as waiting for a slot then
    // waits for b's row.
    let mut lock = env.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM operation_runs WHERE id = $1 FOR SHARE")
        .bind(b.id.0)
        .execute(&mut *lock)
        .await
        .unwrap();
    let claiming = tokio::spawn({
        let lifecycle = Arc::clone(&lifecycle);
        let b = delivery(&b);
        async move { lifecycle.claim(vec![b]).await }
    });
    wait_until(Duration::from_secs(10), || async {
        let blocked: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
             AND datname = current_database() AND query LIKE '%SET slot_wait_since%'",
        )
        .fetch_one(&env.pool)
        .await
        .unwrap();
        (blocked > 0).then_some(())
    })
    .await
    .expect("b's wait blocks on b's row");

    // a completes meanwhile, and sees no waiter to wake.
    let completed = env
        .ledger()
        .complete_many(&[(
            Claim {
                tenant_id: 6,
                run_id: a.id,
                holder: HOLDER,
                attempt: 1,
            },
            Terminal {
                outcome: Outcome::Succeeded,
                counts: &Default::default(),
                failures: &[],
                reclaim: None,
            },
        )])
        .await
        .unwrap();
    assert!(!completed[0].slot_waiters, "b does not wait yet");
    lock.commit().await.unwrap();

    let claimed = claiming.await.unwrap();
    assert_refused_then_sent_again(&env, &claimed[0].1, &b, "b's claim").await;
}

/// Entries carry their run's concurrency key, so a claim counts a run
/// without reading it first. An entry that names no key (sent before
/// entries carried keys) or another key than its run's (forged) claims
/// nothing under it: the run waits, is sent again with its own key, and
/// runs under that key's count.
#[tokio::test]
async fn an_entry_that_does_not_name_its_runs_key_is_sent_again_with_it() {
    use opsrun::transport::{Delivery, Entry};
    use redis::streams::StreamRangeReply;

    let env = TestEnv::new().await;
    let (service, lifecycle) = limited_to_one(&env);
    let run = service
        .ensure_run(&RunRequest::new(8, "sync.one"))
        .await
        .unwrap()
        .run;
    let key = run
        .concurrency_key
        .clone()
        .expect("a limited run has a key");
    // Another tenant's key, with a count to be wrongly counted against.
    let other = service
        .ensure_run(&RunRequest::new(9, "sync.one"))
        .await
        .unwrap()
        .run;
    assert_eq!(other.concurrency_key.as_deref(), Some("sync.one/9"));
    let mut redis = env.redis().await;
    let entries = |redis: &mut redis::aio::MultiplexedConnection| {
        let stream = env.stream("default");
        let mut redis = redis.clone();
        async move {
            let reply: StreamRangeReply = redis::cmd("XRANGE")
                .arg(stream)
                .arg("-")
                .arg("+")
                .query_async(&mut redis)
                .await
                .unwrap();
            reply
                .ids
                .into_iter()
                .filter(|e| e.get::<String>("run_id") == Some(run.id.0.to_string()))
                .map(|e| (e.id.clone(), e.get::<String>("concurrency_key_digest")))
                .collect::<Vec<_>>()
        }
    };
    let sent = entries(&mut redis).await;
    assert_eq!(sent.len(), 1);
    let digest = key_digest(&key);
    assert_eq!(
        sent[0].1.as_deref(),
        Some(digest.as_str()),
        "the start's entry names the key by its digest"
    );

    let delivery = |entry_id: &str, digest: Option<&str>| Delivery {
        stream: "default".into(),
        entry_id: entry_id.to_string(),
        entry: Some(Entry {
            run_id: run.id,
            tenant_id: 8,
            run_type: "sync.one".into(),
            attempt: 1,
            concurrency_key_digest: digest.map(str::to_string),
        }),
    };
    let forged = key_digest("sync.one/9");
    for (n, named) in [None, Some(forged.as_str())].into_iter().enumerate() {
        let claimed = lifecycle.claim(vec![delivery(&sent[0].0, named)]).await;
        let what = format!("an entry naming {named:?}");
        assert_refused_then_sent_again(&env, &claimed[0].1, &run, &what).await;
        let resent = entries(&mut redis).await;
        assert_eq!(resent.len(), n + 2, "sent again: {resent:?}");
        assert_eq!(
            resent[n + 1].1.as_deref(),
            Some(digest.as_str()),
            "with its own key"
        );
    }
    for counted in [key.as_str(), "sync.one/9"] {
        let running: Option<i64> = sqlx::query_scalar("SELECT opsrun_running_of($1)")
            .bind(counted)
            .fetch_one(&env.pool)
            .await
            .unwrap();
        assert_eq!(running, Some(0), "nothing counted against {counted}");
    }

    let resent = entries(&mut redis).await;
    let last = resent.last().unwrap();
    let claimed = lifecycle
        .claim(vec![delivery(&last.0, last.1.as_deref())])
        .await;
    assert!(
        claimed[0].1.is_ok(),
        "the entry with its key claims the run"
    );
    let running: i64 = sqlx::query_scalar("SELECT opsrun_running_of($1)")
        .bind(&key)
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(running, 1, "counted against its own key");
}

/// A claim holds its keys' count rows until it commits; starting runs of a
/// key never waits for that (one start and a batch of starts), so a busy
/// key's claims do not hold up its producers.
#[tokio::test]
async fn starts_do_not_wait_for_a_claim_holding_their_keys_count() {
    let env = TestEnv::new().await;
    let registry = Arc::new(Registry::parse(REGISTRY).unwrap());
    let service = env.service.clone().with_registry(registry);
    let first = service
        .ensure_run(&RunRequest::new(4, "sync.tenant"))
        .await
        .unwrap()
        .run;
    let key = first.concurrency_key.clone().unwrap();
    // What a claim does to the count row while it runs.
    let mut claim = env.pool.begin().await.unwrap();
    sqlx::query("UPDATE concurrency_claims SET runs = runs + 1 WHERE concurrency_key = $1")
        .bind(&key)
        .execute(&mut *claim)
        .await
        .unwrap();
    let one = tokio::time::timeout(
        Duration::from_secs(5),
        service.ensure_run(&RunRequest::new(4, "sync.tenant").inputs(json!({"n": 1}))),
    )
    .await
    .expect("a start does not wait for the claim");
    assert!(matches!(
        one.unwrap().dispatch,
        opsrun::Dispatch::Sent { .. }
    ));
    let batch: Vec<RunRequest> = (2..5)
        .map(|n| RunRequest::new(4, "sync.tenant").inputs(json!({ "n": n })))
        .collect();
    let many = tokio::time::timeout(Duration::from_secs(5), service.ensure_runs(&batch))
        .await
        .expect("a batch of starts does not wait for the claim");
    assert!(many.iter().all(|r| {
        r.as_ref()
            .is_ok_and(|e| matches!(e.dispatch, opsrun::Dispatch::Sent { .. }))
    }));
    claim.rollback().await.unwrap();
}

/// A limit far from reached, so workers claim against slot credits.
const WIDE: &str = r#"
[types."sync.wide"]
command = ["sh", "-c", "sleep 0.02"]
concurrency = { limit = 1000, per = "tenant" }
"#;

/// The key's count (claimed less released, credits included) and its runs
/// running, all and under a credit.
async fn counted_and_running(pool: &sqlx::PgPool, key: &str) -> (i64, i64, i64) {
    sqlx::query_as(
        "SELECT opsrun_running_of($1), \
                (SELECT count(*) FROM operation_runs WHERE concurrency_key = $1 AND status = 'running'), \
                (SELECT count(*) FROM operation_runs WHERE concurrency_key = $1 AND status = 'running' \
                   AND concurrency_slot = -1)",
    )
    .bind(key)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_limit_far_from_reached_is_claimed_against_credits_and_every_credit_comes_back() {
    let env = TestEnv::new().await;
    let service = env
        .service
        .clone()
        .with_registry(Arc::new(Registry::parse(WIDE).unwrap()));
    let workers: Vec<Worker> = (0..2)
        .map(|_| {
            let mut command = env.command("worker");
            command.args(["--concurrency", "10"]);
            Worker::spawn_with_registry(&env, WIDE, command)
        })
        .collect();
    let accepted: Vec<opsrun::Run> = service
        .ensure_runs(
            &(0..300)
                .map(|n| RunRequest::new(1, "sync.wide").inputs(json!({"n": n})))
                .collect::<Vec<_>>(),
        )
        .await
        .into_iter()
        .map(|r| r.unwrap().run)
        .collect();

    // Sampled throughout: the count never says fewer runs than are running
    // (credits held and unused make it say more), and runs do run under
    // credits.
    let mut under_credit = 0;
    let mut undercounted = Vec::new();
    let started = Instant::now();
    loop {
        let (counted, running, credited) = counted_and_running(&env.pool, "sync.wide/1").await;
        if counted < running {
            undercounted.push((counted, running));
        }
        under_credit = under_credit.max(credited);
        let active: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM operation_runs WHERE type = 'sync.wide' AND completed_at IS NULL",
        )
        .fetch_one(&env.pool)
        .await
        .unwrap();
        if active == 0 || started.elapsed() > Duration::from_secs(60) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        undercounted.is_empty(),
        "(counted, running): {undercounted:?}"
    );
    assert!(under_credit > 0, "no run was claimed against a credit");
    for run in &accepted {
        let done = support::completed_within(&env, run, Duration::from_secs(10)).await;
        assert_eq!(done.outcome, Outcome::Succeeded, "run {}", run.id);
        assert_eq!(done.attempt, 1, "run {}", run.id);
    }

    // Idle, the workers give their credits back while still running: the
    // key counts nothing any more.
    let settled = wait_until(Duration::from_secs(8), || async {
        let held: i64 = sqlx::query_scalar(
            "SELECT coalesce(sum(credits), 0)::bigint FROM concurrency_credits WHERE concurrency_key = 'sync.wide/1'",
        )
        .fetch_one(&env.pool)
        .await
        .unwrap();
        let (counted, _, _) = counted_and_running(&env.pool, "sync.wide/1").await;
        (held == 0 && counted == 0).then_some(())
    })
    .await;
    assert!(
        settled.is_some(),
        "credits still held: {:?}",
        counted_and_running(&env.pool, "sync.wide/1").await
    );
    drop(workers);
}

#[tokio::test]
async fn the_credits_of_a_killed_worker_come_back_when_they_expire() {
    let env = TestEnv::new().await;
    let slow = WIDE.replace("sleep 0.02", "sleep 60");
    let service = env
        .service
        .clone()
        .with_registry(Arc::new(Registry::parse(&slow).unwrap()));
    let mut command = env.command("worker");
    command.args(["--concurrency", "10"]);
    let worker = Worker::spawn_with_registry(&env, &slow, command);
    let _ = service
        .ensure_runs(
            &(0..4)
                .map(|n| RunRequest::new(1, "sync.wide").inputs(json!({"n": n})))
                .collect::<Vec<_>>(),
        )
        .await;
    wait_until(Duration::from_secs(15), || async {
        let (counted, _, credited) = counted_and_running(&env.pool, "sync.wide/1").await;
        (credited == 4 && counted == 10).then_some(())
    })
    .await
    .expect("the four runs run under a block of ten credits");

    // The worker dies holding ten credits, four of them used. Once they
    // expire, the reaper returns the six unused and counts the four runs
    // one by one (still `running`: their lease has not run out).
    worker.signal(libc::SIGKILL);
    drop(worker);
    let _reaper = support::fast_reaper_with_registry(&env, &slow);
    wait_until(Duration::from_secs(30), || async {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM concurrency_credits")
            .fetch_one(&env.pool)
            .await
            .unwrap();
        (left == 0).then_some(())
    })
    .await
    .expect("the expired credits are returned");
    let (counted, running, credited) = counted_and_running(&env.pool, "sync.wide/1").await;
    assert_eq!(
        (counted, credited),
        (running, 0),
        "after the return, the count is the runs still running, each counted on its own"
    );
}
