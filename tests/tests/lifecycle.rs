//! The lifecycle middleware in process, with Rust handlers: middleware
//! order, panics, heartbeats, and the fence that drops a lost claim's result.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use opsrun::ledger::{Claim, Fence, Terminal};
use opsrun::lifecycle::{Handler, Job, JobResult, Lifecycle, Middleware, Next, Route};
use opsrun::{Outcome, RunRequest, Status};
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
                JobResult::succeeded()
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
    let stop = CancellationToken::new();
    let ledger = env.ledger().clone();
    let token = stop.clone();
    let task = tokio::spawn(async move {
        transport.ensure_group("default").await.unwrap();
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
        queue: "default".into(),
        entry_id: id.into(),
        entry,
    };
    let entry = |run: &opsrun::Run, tenant: i64, attempt: i32| Entry {
        run_id: run.id,
        tenant_id: tenant,
        run_type: "rust.ok".into(),
        attempt,
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
        .map(|(d, r)| (d.entry_id.as_str(), r.as_ref().map(|run| run.id)))
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
