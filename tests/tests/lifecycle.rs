//! The lifecycle middleware in process, with Rust handlers: middleware
//! order, panics, heartbeats, and the fence that drops a lost claim's result.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use opsrun::ledger::{Claim, Fence, Terminal};
use opsrun::lifecycle::{
    Completer, Handler, Job, JobReport, JobResult, Lifecycle, Middleware, Next, Route,
};
use opsrun::{Initiator, Outcome, RunRequest, Status, SummaryCounts};
use opsrun_worker::consumer::{self, WorkerConfig};
use serde_json::json;
use support::{TestEnv, wait_until};
use tokio_util::sync::CancellationToken;

type Trace = Arc<Mutex<Vec<String>>>;

struct Recording(&'static str, Trace);

#[async_trait]
impl Middleware for Recording {
    async fn call(&self, job: Job, next: Next<'_>) -> JobResult {
        self.1.lock().unwrap().push(format!("{} before", self.0));
        let result = next.run(job).await;
        self.1.lock().unwrap().push(format!("{} after", self.0));
        result
    }
}

/// `rust.ok` succeeds, `rust.panic` panics, `rust.slow` sleeps `inputs.ms`.
struct TestHandler(Trace);

#[async_trait]
impl Handler for TestHandler {
    async fn handle(&self, job: Job) -> JobResult {
        self.0
            .lock()
            .unwrap()
            .push(format!("handler {}", job.run.run_type));
        match job.run.run_type.as_str() {
            "rust.panic" => panic!("boom with password=hunter2"),
            "rust.slow" => {
                let ms = job.inputs()["ms"].as_u64().unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                // `inputs.total`: report that many items, all succeeded.
                let total = job.inputs()["total"].as_u64().unwrap_or(0);
                JobResult::Finished(JobReport {
                    summary_counts: SummaryCounts {
                        total,
                        success: total,
                        ..Default::default()
                    },
                    ..Default::default()
                })
            }
            _ => JobResult::succeeded(),
        }
    }
}

struct Running {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<consumer::WorkerReport>,
}

fn start(env: &TestEnv, trace: &Trace) -> Running {
    let transport = env.service.transport().clone();
    let route = Route::new(
        Arc::new(TestHandler(trace.clone())),
        &opsrun::registry::Registry::default().defaults,
    );
    let lifecycle = Lifecycle::new(env.ledger().clone(), transport.clone(), "test-worker:1")
        .group_commit()
        .fallback(route)
        .layer(Recording("outer", trace.clone()))
        .layer(Recording("inner", trace.clone()));
    let mut config = WorkerConfig::new(vec!["default".into()]);
    config.block = Duration::from_millis(300);
    config.heartbeat_interval = Duration::from_millis(200);
    config.concurrency = 40;
    let stop = CancellationToken::new();
    let ledger = env.ledger().clone();
    let token = stop.clone();
    let task = tokio::spawn(async move {
        transport.ensure_group(&"default".into()).await.unwrap();
        consumer::run(Arc::new(lifecycle), ledger, transport, config, token).await
    });
    Running { stop, task }
}

async fn finished(env: &TestEnv, tenant: i64, id: opsrun::RunId) -> opsrun::Run {
    wait_until(Duration::from_secs(15), || async {
        env.ledger()
            .get(tenant, id)
            .await
            .unwrap()
            .filter(|r| r.status == Status::Completed)
    })
    .await
    .expect("run completed")
}

#[tokio::test]
async fn middleware_wraps_the_handler_in_order_and_panics_fail_the_run() {
    let env = TestEnv::new().await;
    let trace: Trace = Arc::default();
    let worker = start(&env, &trace);

    let ok = env
        .service
        .ensure_run(&RunRequest::new(1, "rust.ok"))
        .await
        .unwrap()
        .run;
    let done = finished(&env, 1, ok.id).await;
    assert_eq!(done.outcome, Outcome::Succeeded);
    assert_eq!(
        trace.lock().unwrap().clone(),
        [
            "outer before",
            "inner before",
            "handler rust.ok",
            "inner after",
            "outer after"
        ]
    );

    let panics = env
        .service
        .ensure_run(&RunRequest::new(1, "rust.panic"))
        .await
        .unwrap()
        .run;
    let done = finished(&env, 1, panics.id).await;
    assert_eq!(done.outcome, Outcome::Failed);
    let failure = &done.failure_summary.0[0];
    assert_eq!(failure.code, "job.panicked");
    assert!(
        failure.message.contains("boom") && !failure.message.contains("hunter2"),
        "{}",
        failure.message
    );

    // The worker survived the panic.
    let after = env
        .service
        .ensure_run(&RunRequest::new(1, "rust.ok").inputs(json!({"n": 2})))
        .await
        .unwrap()
        .run;
    assert_eq!(
        finished(&env, 1, after.id).await.outcome,
        Outcome::Succeeded
    );

    worker.stop.cancel();
    let report = worker.task.await.unwrap();
    assert_eq!(report.completed, 3);
}

#[tokio::test]
async fn long_jobs_heartbeat_and_a_lost_claim_drops_its_result() {
    let env = TestEnv::new().await;
    let trace: Trace = Arc::default();
    let worker = start(&env, &trace);
    let run = env
        .service
        .ensure_run(&RunRequest::new(4, "rust.slow").inputs(json!({"ms": 2000})))
        .await
        .unwrap()
        .run;

    let claimed = wait_until(Duration::from_secs(10), || async {
        env.ledger()
            .get(4, run.id)
            .await
            .unwrap()
            .filter(|r| r.status == Status::Running)
    })
    .await
    .unwrap();
    assert_eq!(claimed.holder.as_deref(), Some("test-worker:1"));
    let first_beat = claimed.heartbeat_at.unwrap();
    let beaten = wait_until(Duration::from_secs(5), || async {
        let r = env.ledger().get(4, run.id).await.unwrap().unwrap();
        (r.heartbeat_at.unwrap() > first_beat).then_some(())
    })
    .await;
    assert!(
        beaten.is_some(),
        "the heartbeat advances while the job runs"
    );

    // Someone else takes the claim over (as a reaper reclaim would).
    sqlx::query("UPDATE operation_runs SET holder = 'other:2' WHERE id = $1")
        .bind(run.id)
        .execute(&env.pool)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let after = env.ledger().get(4, run.id).await.unwrap().unwrap();
    assert_eq!(
        after.status,
        Status::Running,
        "the fenced completion changed nothing"
    );
    assert_eq!(after.holder.as_deref(), Some("other:2"));

    worker.stop.cancel();
    let report = worker.task.await.unwrap();
    assert_eq!((report.completed, report.lease_lost), (0, 1));
}

#[tokio::test]
async fn completion_is_fenced_on_holder_and_attempt() {
    let env = TestEnv::new().await;
    let run = env
        .service
        .ensure_run(&RunRequest::new(6, "rust.ok"))
        .await
        .unwrap()
        .run;
    let ledger = env.ledger();
    assert!(
        ledger
            .mark_running(7, run.id, 1, "w:1", std::time::Duration::from_secs(60))
            .await
            .unwrap()
            .is_none(),
        "other tenant"
    );
    assert!(
        ledger
            .mark_running(6, run.id, 2, "w:1", std::time::Duration::from_secs(60))
            .await
            .unwrap()
            .is_none(),
        "wrong attempt"
    );
    let claimed = ledger
        .mark_running(6, run.id, 1, "w:1", std::time::Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claimed.attempt, 1);
    assert!(
        ledger
            .mark_running(6, run.id, 1, "w:2", std::time::Duration::from_secs(60))
            .await
            .unwrap()
            .is_none(),
        "already running"
    );
    let counts = opsrun::SummaryCounts::default();
    let claim = |holder, attempt| Claim {
        tenant_id: 6,
        run_id: run.id,
        holder,
        attempt,
    };
    assert!(
        ledger
            .complete(
                Fence::Claim(claim("w:2", 1)),
                done_as(Outcome::Succeeded, &counts)
            )
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        ledger
            .complete(
                Fence::Claim(claim("w:1", 0)),
                done_as(Outcome::Succeeded, &counts)
            )
            .await
            .unwrap()
            .is_none()
    );
    let done = ledger
        .complete(
            Fence::Claim(claim("w:1", 1)),
            done_as(Outcome::Succeeded, &counts),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.status, Status::Completed);
    assert!(
        ledger
            .complete(
                Fence::Claim(claim("w:1", 1)),
                done_as(Outcome::Failed, &counts)
            )
            .await
            .unwrap()
            .is_none(),
        "written once"
    );
}

#[test]
fn the_embedded_example_runs_a_run_to_completion() {
    let example = support::bin_path("examples/embedded");
    let out = std::process::Command::new(example)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout {stdout}\nstderr {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("succeeded with 12 of 12 items"), "{stdout}");
}

fn done_as(outcome: Outcome, counts: &opsrun::SummaryCounts) -> Terminal<'_> {
    Terminal {
        outcome,
        counts,
        failures: &[],
        reclaim: None,
    }
}

#[tokio::test]
async fn a_batch_claim_gives_each_run_to_exactly_one_delivery() {
    use opsrun::lifecycle::{Processed, SkipReason};
    use opsrun::transport::{Delivery, Entry};
    let env = TestEnv::new().await;
    let a = env
        .service
        .ensure_run(&RunRequest::new(8, "rust.ok").inputs(json!({"k": "a"})))
        .await
        .unwrap()
        .run;
    let b = env
        .service
        .ensure_run(&RunRequest::new(8, "rust.ok").inputs(json!({"k": "b"})))
        .await
        .unwrap()
        .run;
    let lifecycle = Lifecycle::new(
        env.ledger().clone(),
        env.service.transport().clone(),
        "batch-worker:1",
    );
    let delivery = |id: &str, entry: Option<Entry>| Delivery {
        stream: "default".into(),
        entry_id: id.into(),
        entry,
    };
    let entry = |run: &opsrun::Run, tenant: i64, attempt: i32| Entry {
        run_id: run.id,
        tenant_id: tenant,
        run_type: "rust.ok".into(),
        attempt,
        concurrency_key_digest: None,
    };
    let claimed = lifecycle
        .claim(vec![
            delivery("1-1", Some(entry(&a, 8, 1))),
            delivery("1-2", Some(entry(&a, 8, 1))),
            delivery("1-3", Some(entry(&b, 9, 1))),
            delivery("1-4", Some(entry(&b, 8, 2))),
            delivery("1-5", None),
        ])
        .await;
    let outcomes: Vec<_> = claimed
        .iter()
        .map(|(d, r)| {
            (
                d.entry_id.as_str(),
                r.as_ref().map(|claimed| claimed.run.id),
            )
        })
        .collect();
    assert_eq!(outcomes[0], ("1-1", Ok(a.id)));
    assert_eq!(
        outcomes[1].1,
        Err(&Processed::Skipped(SkipReason::NotClaimable)),
        "duplicate in the same batch"
    );
    assert_eq!(
        outcomes[2].1,
        Err(&Processed::Skipped(SkipReason::NotClaimable)),
        "other tenant"
    );
    assert_eq!(
        outcomes[3].1,
        Err(&Processed::Skipped(SkipReason::NotClaimable)),
        "wrong attempt"
    );
    assert_eq!(
        outcomes[4].1,
        Err(&Processed::Skipped(SkipReason::Malformed))
    );
    let b_now = env.ledger().get(8, b.id).await.unwrap().unwrap();
    assert_eq!(
        (b_now.status, b_now.attempt),
        (Status::Queued, 0),
        "untouched"
    );
    assert_eq!(
        lifecycle
            .stats()
            .skipped
            .load(std::sync::atomic::Ordering::Relaxed),
        4
    );
}

#[tokio::test]
async fn a_result_too_large_to_store_fails_its_run_and_the_runs_completed_with_it_succeed() {
    let env = TestEnv::new().await;
    let trace: Trace = Arc::default();
    // 31 jobs that finish together, so their completions share statements.
    let mut runs = Vec::new();
    for n in 0..30 {
        let request = RunRequest::new(2, "rust.slow")
            .inputs(json!({"ms": 500, "total": 3, "n": n}))
            .initiator(Initiator::user(7, "Ada"));
        runs.push(env.service.ensure_run(&request).await.unwrap().run);
    }
    let bad = RunRequest::new(1, "rust.slow")
        .inputs(json!({"ms": 500, "total": u64::MAX}))
        .initiator(Initiator::user(7, "Ada"));
    let bad = env.service.ensure_run(&bad).await.unwrap().run;
    let worker = start(&env, &trace);

    let bad = finished(&env, 1, bad.id).await;
    assert_eq!(bad.outcome, Outcome::Failed);
    assert_eq!(bad.failure_summary.0[0].code, "job.bad_result");
    assert!(
        bad.failure_summary.0[0]
            .message
            .contains("summary_counts.total"),
        "{:?}",
        bad.failure_summary
    );
    assert_eq!(bad.attempt, 1, "the bad result ran once");
    for run in runs {
        let done = finished(&env, 2, run.id).await;
        assert_eq!(
            done.outcome,
            Outcome::Succeeded,
            "{:?}",
            done.failure_summary
        );
        assert_eq!(done.summary_counts.0.total, 3);
    }
    worker.stop.cancel();
    worker.task.await.unwrap();
}

#[tokio::test]
async fn a_grouped_completion_postgres_refuses_is_written_run_by_run() {
    let env = TestEnv::new().await;
    let mut runs = Vec::new();
    for n in 0..31 {
        let request = RunRequest::new(if n == 0 { 1 } else { 2 }, "a.b")
            .inputs(json!({"n": n}))
            .initiator(Initiator::user(7, "Ada"));
        runs.push(env.service.ensure_run(&request).await.unwrap().run);
    }
    let claims: Vec<opsrun::ledger::ClaimRequest> = runs
        .iter()
        .map(|r| opsrun::ledger::ClaimRequest {
            tenant_id: r.tenant_id,
            run_id: r.id,
            attempt: 1,
            lease: Duration::from_secs(60),
            entry_id: "1-0".into(),
            shard: 0,
            limit: None,
            concurrency_key_digest: None,
        })
        .collect();
    assert_eq!(
        env.ledger()
            .mark_running_many(&claims, "h:1")
            .await
            .unwrap()
            .len(),
        31
    );
    // Past the library's own range check: a count Postgres cannot take
    // (the notification trigger reads the total as bigint).
    let too_large = SummaryCounts {
        total: u64::MAX,
        ..Default::default()
    };
    let fine = SummaryCounts {
        total: 1,
        success: 1,
        ..Default::default()
    };
    let completer = Completer::start(env.ledger().clone());
    let written = futures::future::join_all(runs.iter().map(|r| {
        let completer = completer.clone();
        let counts = if r.tenant_id == 1 { too_large } else { fine };
        async move {
            let claim = Claim {
                tenant_id: r.tenant_id,
                run_id: r.id,
                holder: "h:1",
                attempt: 1,
            };
            let terminal = Terminal {
                outcome: Outcome::Succeeded,
                counts: &counts,
                failures: &[],
                reclaim: None,
            };
            completer.complete(&claim, terminal).await.unwrap()
        }
    }))
    .await;
    assert_eq!(written[0], Some((Outcome::Failed, false)));
    assert!(
        written[1..]
            .iter()
            .all(|w| *w == Some((Outcome::Succeeded, false)))
    );
    let bad = env.ledger().get(1, runs[0].id).await.unwrap().unwrap();
    assert_eq!(bad.status, Status::Completed);
    assert_eq!(bad.failure_summary.0[0].code, "ledger.write_rejected");
    for run in &runs[1..] {
        let done = env.ledger().get(2, run.id).await.unwrap().unwrap();
        assert_eq!(done.outcome, Outcome::Succeeded);
    }
}

#[tokio::test]
async fn a_grouped_claim_postgres_refuses_is_claimed_run_by_run() {
    let env = TestEnv::new().await;
    let mut claims = Vec::new();
    for n in 0..10 {
        let run = env
            .service
            .ensure_run(&RunRequest::new(3, "a.b").inputs(json!({"n": n})))
            .await
            .unwrap()
            .run;
        claims.push(opsrun::ledger::ClaimRequest {
            tenant_id: 3,
            run_id: run.id,
            attempt: 1,
            lease: Duration::from_secs(60),
            entry_id: format!("{n}-0"),
            shard: 0,
            limit: None,
            concurrency_key_digest: None,
        });
    }
    // An attempt the claim cannot compute with (`attempt - 1` overflows).
    let mut forged = claims[0].clone();
    forged.attempt = i32::MIN;
    claims.insert(5, forged);
    let claimed = env
        .ledger()
        .mark_running_many(&claims, "h:1")
        .await
        .unwrap();
    assert_eq!(claimed.len(), 10, "every good claim went through");
}

#[tokio::test]
async fn a_forged_entry_out_of_range_is_skipped_and_the_entries_read_with_it_run() {
    let env = TestEnv::new().await;
    let trace: Trace = Arc::default();
    env.service
        .transport()
        .ensure_group(&"default".into())
        .await
        .unwrap();
    let _: String = redis::cmd("XADD")
        .arg(env.stream("default"))
        .arg("*")
        .arg("run_id")
        .arg("1")
        .arg("tenant_id")
        .arg("1")
        .arg("type")
        .arg("a.b")
        .arg("attempt")
        .arg("-2147483648")
        .query_async(&mut env.redis().await)
        .await
        .unwrap();
    let mut runs = Vec::new();
    for n in 0..10 {
        let request = RunRequest::new(4, "rust.ok").inputs(json!({"n": n}));
        runs.push(env.service.ensure_run(&request).await.unwrap().run);
    }
    let worker = start(&env, &trace);
    for run in runs {
        assert_eq!(finished(&env, 4, run.id).await.outcome, Outcome::Succeeded);
    }
    worker.stop.cancel();
    let report = worker.task.await.unwrap();
    assert_eq!(report.completed, 10);
    assert_eq!(
        report.skipped, 1,
        "the forged entry was acknowledged and skipped"
    );
}
