//! Use opsrun from a Rust service: start a run with `RunService::ensure_run`
//! and execute it with your own `Handler` in an in-process worker.
//!
//! ```sh
//! cargo run -p opsrun-worker --example embedded
//! ```
//! Uses DATABASE_URL and REDIS_URL when set; otherwise starts ephemeral
//! Postgres and Redis for the example.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use opsrun::lifecycle::{Handler, Job, JobReport, JobResult, Lifecycle, Route};
use opsrun::{
    Initiator, Ledger, RunRequest, RunService, Status, SummaryCounts, Transport, TransportConfig,
};
use opsrun_worker::consumer::{self, WorkerConfig};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// Your job: here, "sync" a number of items and report counts.
struct InventorySync;

#[async_trait]
impl Handler for InventorySync {
    async fn handle(&self, job: Job) -> JobResult {
        let items = job.inputs()["items"].as_u64().unwrap_or(0);
        JobResult::Finished(JobReport {
            summary_counts: SummaryCounts {
                total: items,
                success: items,
                failed: 0,
                skipped: 0,
            },
            ..Default::default()
        })
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let stack =
        devstack::Stack::from_env_or_start("opsrun_example", devstack::PostgresOptions::fast())
            .await?;

    // The ledger (Postgres) and the transport (Redis Streams).
    let ledger = Ledger::new(opsrun::sqlx::PgPool::connect(&stack.database_url).await?);
    ledger.migrate().await?;
    let mut config = TransportConfig::new(stack.redis_url.clone());
    config.prefix = "example".into();
    let transport = Transport::new(&config)?;
    transport.ensure_group(&"inventory".into()).await?;

    // A worker in this process, with your handler for your run type.
    let route = Route::new(
        Arc::new(InventorySync),
        &opsrun::registry::Registry::default().defaults,
    );
    let lifecycle = Lifecycle::new(ledger.clone(), transport.clone(), consumer::consumer_name())
        .route("inventory.sync", route);
    let stop = CancellationToken::new();
    let worker = tokio::spawn(consumer::run(
        Arc::new(lifecycle),
        ledger.clone(),
        transport.clone(),
        WorkerConfig::new(vec!["inventory".into()]),
        stop.clone(),
    ));

    // Start a run, as a service handling a user's click would.
    let service = RunService::new(ledger.clone(), transport);
    let request = RunRequest::new(42, "inventory.sync")
        .queue("inventory")
        .inputs(json!({"site": "paris", "items": 12}))
        .initiator(Initiator::user(7, "Ada"));
    let ensured = service.ensure_run(&request).await?;
    println!(
        "started run {} (deduplicated: {})",
        ensured.run.id,
        ensured.deduplicated()
    );

    // Wait for the canonical record to say how it ended.
    let run = loop {
        let run = ledger
            .get(42, ensured.run.id)
            .await?
            .expect("the run exists");
        if run.status == Status::Completed {
            break run;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!(
        "run {} {} with {} of {} items",
        run.id,
        run.outcome.as_str(),
        run.summary_counts.0.success,
        run.summary_counts.0.total
    );
    stop.cancel();
    worker.await?;
    Ok(())
}
