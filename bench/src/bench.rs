//! `make bench`: producer latency (ensure + dispatch in process, and one
//! `producer enqueue` process) and end-to-end throughput (enqueue to
//! completed) of no-op runs through one worker process. Uses DATABASE_URL /
//! REDIS_URL when set, otherwise ephemeral servers with fsync on, so figures
//! include durable commits.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use devstack::{PostgresOptions, Stack};
use opsrun::{Ledger, RunRequest, RunService, Transport, TransportConfig};
use serde_json::json;

#[derive(Parser)]
#[command(about = "opsrun benchmark: producer latency and end-to-end throughput")]
struct Cli {
    /// In-process ensure+dispatch samples.
    #[arg(long, default_value_t = 1000)]
    samples: usize,
    /// `producer enqueue` process samples.
    #[arg(long, default_value_t = 100)]
    process_samples: usize,
    /// No-op runs for the end-to-end figure.
    #[arg(long, default_value_t = 5000)]
    runs: usize,
    /// Worker concurrency for the end-to-end figure.
    #[arg(long, default_value_t = 50)]
    concurrency: usize,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let bin = std::env::current_exe()?
        .parent()
        .context("binary directory")?
        .to_path_buf();
    let stack = Stack::from_env_or_start("opsrun_bench", PostgresOptions::durable()).await?;
    let pool = opsrun::sqlx::postgres::PgPoolOptions::new()
        .max_connections(16)
        .connect(&stack.database_url)
        .await?;
    let ledger = Ledger::new(pool.clone());
    ledger.migrate().await?;
    let prefix = format!("bench{}", std::process::id());
    let mut config = TransportConfig::new(stack.redis_url.clone());
    config.prefix = prefix.clone();
    let service = RunService::new(ledger, Transport::new(&config)?);

    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let pg_version: String = opsrun::sqlx::query_scalar("SHOW server_version")
        .fetch_one(&pool)
        .await?;
    println!(
        "opsrun bench — {cores} cores, PostgreSQL {pg_version} ({}), Redis {}",
        fsync_note(&stack),
        redis_version(&stack.redis_url).await
    );

    // 1. ensure + dispatch in process, one at a time.
    let mut latencies = Vec::with_capacity(cli.samples);
    for i in 0..cli.samples {
        let request = RunRequest::new(1, "bench.latency")
            .queue("latency")
            .inputs(json!({"i": i}));
        let started = Instant::now();
        let ensured = service.ensure_run(&request).await?;
        latencies.push(started.elapsed());
        if ensured.dispatch_failed() {
            bail!("dispatch failed during the benchmark");
        }
    }
    let (p50, p99) = percentiles(&mut latencies);
    println!("\n{:<46} {:>10} {:>10}", "producer latency", "p50", "p99");
    println!(
        "{:<46} {:>10} {:>10}",
        format!("ensure_run + dispatch, in process (n={})", cli.samples),
        ms(p50),
        ms(p99)
    );

    // 2. One `producer enqueue` process per run, start to exit.
    let mut latencies = Vec::with_capacity(cli.process_samples);
    for i in 0..cli.process_samples {
        let started = Instant::now();
        let out = Command::new(bin.join("producer"))
            .args([
                "enqueue",
                "--tenant",
                "2",
                "--type",
                "bench.process",
                "--queue",
                "latency",
                "--inputs",
            ])
            .arg(format!(r#"{{"i":{i}}}"#))
            .env("DATABASE_URL", &stack.database_url)
            .env("REDIS_URL", &stack.redis_url)
            .env("OPSRUN_PREFIX", &prefix)
            .stderr(Stdio::inherit())
            .output()?;
        latencies.push(started.elapsed());
        if !out.status.success() {
            bail!("producer exited with {}", out.status);
        }
    }
    let (p50, p99) = percentiles(&mut latencies);
    println!(
        "{:<46} {:>10} {:>10}",
        format!("`producer enqueue` process (n={})", cli.process_samples),
        ms(p50),
        ms(p99)
    );

    // 3. Enqueue with no worker running, then one worker drains the backlog.
    let service = Arc::new(service);
    let enqueue_rate = enqueue_noops(&service, "drain", cli.runs).await?;
    let started = Instant::now();
    let worker = Worker::start(&bin, &stack, &prefix, "drain", cli.concurrency)?;
    wait_completed(&pool, "drain", cli.runs).await?;
    let drain_rate = cli.runs as f64 / started.elapsed().as_secs_f64();
    drop(worker);

    // 4. End to end: enqueue while one worker runs, until the last completes.
    let worker = Worker::start(&bin, &stack, &prefix, "e2e", cli.concurrency)?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    enqueue_noops(&service, "e2e", cli.runs).await?;
    wait_completed(&pool, "e2e", cli.runs).await?;
    let e2e_rate = cli.runs as f64 / started.elapsed().as_secs_f64();
    drop(worker);

    println!("\n{:<46} {:>10}", "throughput", "runs/s");
    println!(
        "{:<46} {:>10.0}",
        format!(
            "enqueue (ensure+dispatch, {PRODUCER_TASKS} tasks, n={})",
            cli.runs
        ),
        enqueue_rate
    );
    println!(
        "{:<46} {:>10.0}",
        format!(
            "worker drain, 1 process x{} (n={})",
            cli.concurrency, cli.runs
        ),
        drain_rate
    );
    println!(
        "{:<46} {:>10.0}",
        format!("end to end, enqueue→completed (n={})", cli.runs),
        e2e_rate
    );
    Ok(())
}

/// Concurrent in-process producers for the throughput figures.
const PRODUCER_TASKS: usize = 8;

/// Enqueue `runs` no-op runs on `queue`; returns runs/s.
async fn enqueue_noops(service: &Arc<RunService>, queue: &'static str, runs: usize) -> Result<f64> {
    let started = Instant::now();
    let tasks: Vec<_> = (0..PRODUCER_TASKS)
        .map(|p| {
            let service = Arc::clone(service);
            tokio::spawn(async move {
                for i in (p..runs).step_by(PRODUCER_TASKS) {
                    let request = RunRequest::new(3, "demo.noop")
                        .queue(queue)
                        .inputs(json!({"i": i}));
                    service.ensure_run(&request).await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    Ok(runs as f64 / started.elapsed().as_secs_f64())
}

async fn wait_completed(pool: &opsrun::sqlx::PgPool, queue: &str, runs: usize) -> Result<()> {
    let started = Instant::now();
    loop {
        let done: i64 = opsrun::sqlx::query_scalar(
            "SELECT count(*) FROM operation_runs WHERE queue = $1 AND status = 'completed'",
        )
        .bind(queue)
        .fetch_one(pool)
        .await?;
        if done as usize >= runs {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("only {done} of {runs} runs on {queue} completed in 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A worker process, stopped with SIGTERM when dropped.
struct Worker(std::process::Child);

impl Worker {
    fn start(
        bin: &std::path::Path,
        stack: &Stack,
        prefix: &str,
        queue: &str,
        concurrency: usize,
    ) -> Result<Worker> {
        let child = Command::new(bin.join("worker"))
            .args([
                "--queues",
                queue,
                "--no-migrate",
                "--concurrency",
                &concurrency.to_string(),
            ])
            .env("DATABASE_URL", &stack.database_url)
            .env("REDIS_URL", &stack.redis_url)
            .env("OPSRUN_PREFIX", prefix)
            .env("RUST_LOG", "warn")
            .spawn()?;
        Ok(Worker(child))
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // SAFETY: signalling our own child; SIGTERM drains and exits.
        unsafe { libc::kill(self.0.id() as i32, 15) };
        let _ = self.0.wait();
    }
}

fn percentiles(samples: &mut [Duration]) -> (Duration, Duration) {
    samples.sort();
    let at =
        |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1];
    (at(0.50), at(0.99))
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn fsync_note(stack: &Stack) -> &'static str {
    if stack.postgres.is_some() {
        "ephemeral, fsync on"
    } else {
        "DATABASE_URL"
    }
}

async fn redis_version(url: &str) -> String {
    let info: Result<String, _> = async {
        let client = redis::Client::open(url)?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("INFO")
            .arg("server")
            .query_async::<String>(&mut conn)
            .await
    }
    .await;
    info.ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("redis_version:").map(str::to_string))
        })
        .unwrap_or_else(|| "?".into())
}
