//! `make bench`: producer latency (ensure + dispatch in process, and one
//! `producer enqueue` process) and end-to-end throughput (enqueue to
//! completed) of no-op runs through one worker process. Uses DATABASE_URL /
//! REDIS_URL when set, otherwise ephemeral servers with fsync on, so figures
//! include durable commits.

mod control;
mod observability;
mod pooler;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use devstack::{PostgresOptions, Stack};
use opsrun::{Ledger, RunRequest, RunService, Transport, TransportConfig};
use serde_json::json;

/// The database the benchmark creates on an ephemeral Postgres.
const DATABASE: &str = "opsrun_bench";

#[derive(Parser)]
#[command(about = "opsrun benchmark: producer latency and end-to-end throughput")]
struct Cli {
    /// In-process ensure+dispatch samples.
    #[arg(long, default_value_t = 1000)]
    samples: usize,
    /// `producer enqueue` process samples.
    #[arg(long, default_value_t = 100)]
    process_samples: usize,
    /// No-op runs for the throughput figures.
    #[arg(long, default_value_t = 50_000)]
    runs: usize,
    /// Worker concurrency for the end-to-end figure.
    #[arg(long, default_value_t = 50)]
    concurrency: usize,
    /// The workers' `--prefetch` in the rows compared with the peers (drain,
    /// end to end): runs claimed ahead of free slots, as graphile-worker's
    /// local queue (500 here) fetches jobs ahead. The side-by-side rows of
    /// one opsrun setting against another keep the worker's default, 0.
    #[arg(long, default_value_t = 200)]
    prefetch: usize,
    /// Also measure end to end on a 3-master Redis Cluster (a replica each)
    /// started here, beside the single server.
    #[arg(long)]
    cluster: bool,
    /// Measure only the control rows (concurrency limits and the cancel
    /// check), for a quick look at their cost.
    #[arg(long)]
    control_only: bool,
    /// Measure only the observability rows (metrics and traces on or off).
    #[arg(long)]
    observability_only: bool,
    /// Measure only the Postgres pooling rows (direct, the pooler setting,
    /// through PgBouncer); needs the Postgres this benchmark starts.
    #[arg(long)]
    pooler_only: bool,
    /// Measure only end to end (1 and 2 workers), side by side with the
    /// peers: a quick look at the comparison.
    #[arg(long)]
    end_to_end_only: bool,
    /// Rounds of the side-by-side rows (pooling, control, observability): the
    /// configurations take turns, and each ratio is the median over rounds.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..))]
    rounds: u16,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let bin = std::env::current_exe()?
        .parent()
        .context("binary directory")?
        .to_path_buf();
    let stack = Stack::from_env_or_start(DATABASE, PostgresOptions::durable()).await?;
    // The library's pool, as the binaries build it.
    let pool = opsrun::config::connect_postgres(
        opsrun::config::postgres_options(&stack.database_url)?,
        16,
        opsrun::config::DEFAULT_CONNECT_TIMEOUT,
    )
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

    if cli.observability_only {
        let direct = WorkerDb::direct(&stack);
        return observability::side_by_side(
            &bin,
            &direct,
            &stack.redis_url,
            &prefix,
            &service,
            &cli,
        )
        .await;
    }
    if cli.control_only {
        let direct = WorkerDb::direct(&stack);
        return control::side_by_side(&bin, &direct, &stack.redis_url, &prefix, &service, &cli)
            .await;
    }

    if cli.pooler_only {
        return pooler::side_by_side(&bin, &stack, DATABASE, &prefix, &cli).await;
    }
    if cli.end_to_end_only {
        let direct = WorkerDb::direct(&stack);
        let pair = one_and_two_workers(
            &bin,
            &direct,
            &stack.redis_url,
            &prefix,
            &service,
            &pool,
            ["e2e1", "e2e2"],
            &cli,
        )
        .await?;
        for (workers, e2e) in [1, 2].iter().zip(&pair) {
            println!(
                "end to end, {workers} worker(s) x{} prefetch {}: {:.0} runs/s, CPU per run: machine {:.0} us, workers {:.0} us",
                cli.concurrency,
                cli.prefetch,
                e2e.per_second,
                e2e.machine_cpu_us,
                e2e.worker_cpu_us
            );
        }
        let ours = Figures {
            add_p50_ms: f64::NAN,
            add_p99_ms: f64::NAN,
            add_bulk_per_s: f64::NAN,
            end_to_end_per_s: pair[0].per_second,
            end_to_end_2_workers_per_s: pair[1].per_second,
            worker_rss_mb_c100: None,
            add_bulk_machine_us: f64::NAN,
            end_to_end_machine_us: pair[0].machine_cpu_us,
            end_to_end_2_workers_machine_us: pair[1].machine_cpu_us,
        };
        compare_with_peers(&stack, &cli, &ours);
        return Ok(());
    }

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
    let (p50_in_process, p99_in_process) = (p50, p99);
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

    // 3. Bulk enqueue through the batch API, 1000 runs per call, no worker running.
    let busy_before = machine_busy_seconds();
    let bulk_rate = bulk_enqueue(&service, "bulk", cli.runs).await?;
    let bulk_machine_us = machine_us_per_run(busy_before, cli.runs);
    // 4. One worker drains that backlog, timed on the Postgres clock from its start.
    let epoch = "SELECT extract(epoch FROM clock_timestamp())::float8";
    let started: f64 = opsrun::sqlx::query_scalar(epoch).fetch_one(&pool).await?;
    let direct = WorkerDb::direct(&stack);
    let worker = Worker::start(
        &bin,
        &direct,
        &stack.redis_url,
        &prefix,
        "bulk",
        cli.concurrency,
        &prefetch_flag(&cli),
    )?;
    wait_completed(&pool, "bulk", cli.runs).await?;
    let finished: f64 = opsrun::sqlx::query_scalar(
        "SELECT extract(epoch FROM max(completed_at))::float8 FROM operation_runs WHERE queue = 'bulk'",
    )
    .fetch_one(&pool)
    .await?;
    let drain_rate = cli.runs as f64 / (finished - started);
    drop(worker);
    // 5. End to end as BullMQ's is measured: bulk enqueue while the workers run.
    let [e2e_one, e2e_two] = one_and_two_workers(
        &bin,
        &direct,
        &stack.redis_url,
        &prefix,
        &service,
        &pool,
        ["e2e1", "e2e2"],
        &cli,
    )
    .await?;
    let wide = end_to_end(
        &bin,
        &direct,
        &stack.redis_url,
        &prefix,
        &service,
        &pool,
        "e2e100",
        1,
        100,
        cli.runs,
        &prefetch_flag(&cli),
    )
    .await?;

    println!("\n{:<46} {:>10}", "throughput", "runs/s");
    let row = |label: String, value: f64| println!("{label:<46} {value:>10.0}");
    row(
        format!(
            "bulk enqueue (ensure_runs_chunked, 1000 per chunk, n={})",
            cli.runs
        ),
        bulk_rate,
    );
    row(
        format!(
            "worker drain, 1 process x{} prefetch {} (n={})",
            cli.concurrency, cli.prefetch, cli.runs
        ),
        drain_rate,
    );
    row(
        format!(
            "end to end, 1 worker x{} prefetch {} (n={})",
            cli.concurrency, cli.prefetch, cli.runs
        ),
        e2e_one.per_second,
    );
    row(
        format!(
            "end to end, 2 workers x{} prefetch {} (n={})",
            cli.concurrency, cli.prefetch, cli.runs
        ),
        e2e_two.per_second,
    );
    row(
        format!(
            "end to end, 1 worker x100 prefetch {} (n={})",
            cli.prefetch, cli.runs
        ),
        wide.per_second,
    );
    println!(
        "{:<46} {:>7.1} MB",
        "worker peak RSS at concurrency 100", wide.rss_mb
    );
    // Statistics reach the view within a second or so of each transaction.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (updates, hot): (i64, i64) = opsrun::sqlx::query_as(
        "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'operation_runs'",
    )
    .fetch_one(&pool)
    .await?;
    println!(
        "{:<46} {:>9.0}%",
        format!("row updates that were HOT ({hot} of {updates})"),
        100.0 * hot as f64 / updates.max(1) as f64
    );

    // 6. BullMQ on the same Redis and graphile-worker (Postgres only) on the
    // same Postgres, side by side.
    let ours = Figures {
        add_p50_ms: p50_in_process.as_secs_f64() * 1e3,
        add_p99_ms: p99_in_process.as_secs_f64() * 1e3,
        add_bulk_per_s: bulk_rate,
        end_to_end_per_s: e2e_one.per_second,
        end_to_end_2_workers_per_s: e2e_two.per_second,
        worker_rss_mb_c100: Some(wide.rss_mb),
        add_bulk_machine_us: bulk_machine_us,
        end_to_end_machine_us: e2e_one.machine_cpu_us,
        end_to_end_2_workers_machine_us: e2e_two.machine_cpu_us,
    };
    compare_with_peers(&stack, &cli, &ours);
    pooler::side_by_side(&bin, &stack, DATABASE, &prefix, &cli).await?;
    control::side_by_side(&bin, &direct, &stack.redis_url, &prefix, &service, &cli).await?;
    observability::side_by_side(&bin, &direct, &stack.redis_url, &prefix, &service, &cli).await?;
    if cli.cluster {
        cluster_side_by_side(
            &bin,
            &stack,
            &pool,
            &cli,
            &[e2e_one.per_second, e2e_two.per_second],
        )
        .await?;
    }
    Ok(())
}

/// End to end (1 and 2 workers) on a 3-master Redis Cluster with a replica
/// each, started here on the same machine, beside the single server's
/// figures measured above, with the queue's stream on one master as a hot
/// queue's would be.
async fn cluster_side_by_side(
    bin: &std::path::Path,
    stack: &Stack,
    pool: &opsrun::sqlx::PgPool,
    cli: &Cli,
    single: &[f64; 2],
) -> Result<()> {
    let cluster = tokio::task::spawn_blocking(|| devstack::RedisCluster::start(3, 1)).await??;
    let prefix = format!("benchcluster{}", std::process::id());
    let mut config = TransportConfig::new(cluster.url());
    config.prefix = prefix.clone();
    let service = RunService::new(Ledger::new(pool.clone()), Transport::new(&config)?);
    let pair = one_and_two_workers(
        bin,
        &WorkerDb::direct(stack),
        &cluster.url(),
        &prefix,
        &service,
        pool,
        ["cluster1", "cluster2"],
        cli,
    )
    .await?;
    let figures = [pair[0].per_second, pair[1].per_second];
    println!(
        "\nside by side (Redis Cluster, 3 masters + 3 replicas)   single    cluster  cluster/single"
    );
    for (label, single, cluster) in [
        ("end to end, 1 worker (runs/s)", single[0], figures[0]),
        ("end to end, 2 workers (runs/s)", single[1], figures[1]),
    ] {
        println!(
            "{label:<46} {single:>10.0} {cluster:>10.0} {:>10.2}",
            cluster / single
        );
    }

    println!(
        "\na backlog and a later tenant on the cluster: {FAIRNESS_BACKLOG} runs of one tenant, then {FAIRNESS_LATER} of another \
         1 s later\n(2 workers at concurrency {FAIRNESS_CONCURRENCY}, {FAIRNESS_SLEEP_MS} ms jobs); wait = start - creation, seconds"
    );
    println!(
        "{:<34} {:>13} {:>13} {:>13} {:>13}",
        "", "backlog p50", "backlog p99", "later p50", "later p99"
    );
    for shards in [1, 4] {
        let waits = fairness(
            bin,
            &WorkerDb::direct(stack),
            &cluster.url(),
            &prefix,
            &service,
            shards,
        )
        .await?;
        let label = match shards {
            1 => "one stream (shards = 1)",
            _ => "4 shards, by tenant",
        };
        println!(
            "{label:<34} {:>13.2} {:>13.2} {:>13.2} {:>13.2}",
            waits[0].0, waits[0].1, waits[1].0, waits[1].1
        );
    }
    Ok(())
}

const FAIRNESS_BACKLOG: usize = 10_000;
const FAIRNESS_LATER: usize = 100;
const FAIRNESS_CONCURRENCY: usize = 10;
const FAIRNESS_SLEEP_MS: u64 = 10;

/// One tenant starts [`FAIRNESS_BACKLOG`] runs on a queue of `shards`
/// streams, another (on another shard) [`FAIRNESS_LATER`] a second later;
/// two workers drain both. Returns each tenant's (p50, p99) wait from
/// creation to start, in seconds: backlog tenant first.
async fn fairness(
    bin: &std::path::Path,
    db: &WorkerDb,
    redis_url: &str,
    prefix: &str,
    service: &RunService,
    shards: i16,
) -> Result<[(f64, f64); 2]> {
    use opsrun::transport::shard_for;
    let queue = format!("fair{shards}");
    let registry_text = format!("[queues.{queue}]\nshards = {shards}\n");
    let registry_path =
        std::env::temp_dir().join(format!("opsrun-bench-{}-{queue}.toml", std::process::id()));
    std::fs::write(&registry_path, &registry_text)?;
    let registry = opsrun::registry::Registry::parse(&registry_text).map_err(anyhow::Error::msg)?;
    let service = service.clone().with_registry(std::sync::Arc::new(registry));
    // Two tenants on different shards (the same one when there is one).
    let backlog_tenant = 1_000 + i64::from(shards) * 10_000;
    let later_tenant = (backlog_tenant + 1..)
        .find(|&t| shards == 1 || shard_for(t, 4) != shard_for(backlog_tenant, 4))
        .expect("a tenant on another shard");
    let workers: Vec<Worker> = (0..2)
        .map(|_| {
            Worker::start(
                bin,
                db,
                redis_url,
                prefix,
                &queue,
                FAIRNESS_CONCURRENCY,
                &[
                    "--registry".to_string(),
                    registry_path.display().to_string(),
                ],
            )
        })
        .collect::<Result<_>>()?;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let pool = service.ledger().pool();
    let before = latest_run_id(pool).await?;
    let job = |tenant: i64, n: usize| {
        RunRequest::new(tenant, "demo.sleep")
            .queue(&queue)
            .inputs(json!({"n": n, "sleep_ms": FAIRNESS_SLEEP_MS}))
    };
    let backlog: Vec<RunRequest> = (0..FAIRNESS_BACKLOG)
        .map(|n| job(backlog_tenant, n))
        .collect();
    service.ensure_runs_chunked(&backlog, 1000, |_, _| {}).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let later: Vec<RunRequest> = (0..FAIRNESS_LATER).map(|n| job(later_tenant, n)).collect();
    service.ensure_runs(&later).await;
    wait_completed(pool, &queue, FAIRNESS_BACKLOG + FAIRNESS_LATER).await?;
    drop(workers);
    let _ = std::fs::remove_file(&registry_path);
    let mut waits = [(0.0, 0.0); 2];
    for (i, tenant) in [backlog_tenant, later_tenant].into_iter().enumerate() {
        waits[i] = opsrun::sqlx::query_as(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - created_at))::float8, \
                    percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - created_at))::float8 \
             FROM operation_runs WHERE queue = $1 AND tenant_id = $2 AND id > $3",
        )
        .bind(&queue)
        .bind(tenant)
        .bind(before)
        .fetch_one(pool)
        .await?;
    }
    Ok(waits)
}

/// The figures compared side by side.
struct Figures {
    add_p50_ms: f64,
    add_p99_ms: f64,
    add_bulk_per_s: f64,
    end_to_end_per_s: f64,
    end_to_end_2_workers_per_s: f64,
    worker_rss_mb_c100: Option<f64>,
    /// The machine's CPU (every process) per run in the bulk and end-to-end
    /// figures, in microseconds (NaN where not measured): the same work's
    /// cost whatever else the host ran at the time, where the rates swing
    /// with it.
    add_bulk_machine_us: f64,
    end_to_end_machine_us: f64,
    end_to_end_2_workers_machine_us: f64,
}

/// A peer measured by its own script, `bench/<dir>/bench.mjs` (installed
/// with npm by `make bench`), on the server it shares with opsrun.
struct Peer {
    name: &'static str,
    dir: &'static str,
    package: &'static str,
    /// The variable naming the shared server.
    env: &'static str,
    shares: &'static str,
}

impl Peer {
    const BULLMQ: Peer = Peer {
        name: "BullMQ",
        dir: "bullmq",
        package: "bullmq",
        env: "REDIS_URL",
        shares: "same Redis",
    };
    const GRAPHILE_WORKER: Peer = Peer {
        name: "graphile-worker",
        dir: "graphile",
        package: "graphile-worker",
        env: "DATABASE_URL",
        shares: "same Postgres",
    };

    /// Run the script against `server`; its version and figures.
    fn measure(
        &self,
        server: &str,
        jobs: usize,
        concurrency: usize,
        samples: usize,
    ) -> std::result::Result<(String, Figures), String> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(self.dir);
        if !dir.join("node_modules").join(self.package).exists() {
            return Err(format!(
                "{} is not installed (run `npm install` in {})",
                self.package,
                dir.display()
            ));
        }
        let out = Command::new("node")
            .arg("bench.mjs")
            .args([
                jobs.to_string(),
                concurrency.to_string(),
                samples.to_string(),
            ])
            .current_dir(&dir)
            .env(self.env, server)
            .output()
            .map_err(|e| format!("node is not available: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "the {} script failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .next()
                    .unwrap_or("")
            ));
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("unreadable {} output: {e}", self.name))?;
        let num = |k: &str| {
            v[k].as_f64()
                .ok_or_else(|| format!("{} output lacks {k}", self.name))
        };
        // Busy clock ticks of the whole machine during a figure, per job.
        let machine_us = |k: &str| {
            v[k].as_f64()
                .map_or(f64::NAN, |ticks| ticks / clock_ticks() * 1e6 / jobs as f64)
        };
        Ok((
            v["version"].as_str().unwrap_or("?").to_string(),
            Figures {
                add_p50_ms: num("add_p50_ms")?,
                add_p99_ms: num("add_p99_ms")?,
                add_bulk_per_s: num("add_bulk_per_s")?,
                end_to_end_per_s: num("end_to_end_per_s")?,
                end_to_end_2_workers_per_s: num("end_to_end_2_workers_per_s")?,
                worker_rss_mb_c100: v["worker_rss_mb_c100"].as_f64(),
                add_bulk_machine_us: machine_us("add_bulk_busy_ticks"),
                end_to_end_machine_us: machine_us("end_to_end_busy_ticks"),
                end_to_end_2_workers_machine_us: machine_us("end_to_end_2_workers_busy_ticks"),
            },
        ))
    }
}

/// Measure BullMQ (on the same Redis) and graphile-worker (on the same
/// Postgres) and print each beside `ours`.
fn compare_with_peers(stack: &Stack, cli: &Cli, ours: &Figures) {
    for peer in [Peer::BULLMQ, Peer::GRAPHILE_WORKER] {
        let server = match peer.env {
            "REDIS_URL" => &stack.redis_url,
            _ => &stack.database_url,
        };
        match peer.measure(server, cli.runs, cli.concurrency, cli.samples) {
            Ok((version, theirs)) => side_by_side(&peer, &version, ours, &theirs),
            Err(why) => println!("\n{} baseline skipped: {why}", peer.name),
        }
    }
}

/// opsrun's figures beside a peer's, with their ratio (rows opsrun did not
/// measure, NaN, are left out).
fn side_by_side(peer: &Peer, version: &str, ours: &Figures, theirs: &Figures) {
    let heading = format!("side by side ({} {version}, {})", peer.name, peer.shares);
    println!("\n{heading:<46}     opsrun {:>10}     ratio", peer.name);
    let row = |label: &str, ours: f64, theirs: f64| {
        if !ours.is_nan() && !theirs.is_nan() {
            println!(
                "{label:<46} {ours:>10.2} {theirs:>10.2} {:>10.2}",
                ours / theirs
            );
        }
    };
    row(
        "single enqueue p50 (ms, lower is better)",
        ours.add_p50_ms,
        theirs.add_p50_ms,
    );
    row(
        "single enqueue p99 (ms, lower is better)",
        ours.add_p99_ms,
        theirs.add_p99_ms,
    );
    row(
        "bulk enqueue (runs/s; chunks of 1000, 2 in flight)",
        ours.add_bulk_per_s,
        theirs.add_bulk_per_s,
    );
    row(
        "end to end, 1 worker (runs/s)",
        ours.end_to_end_per_s,
        theirs.end_to_end_per_s,
    );
    row(
        "end to end, 2 workers (runs/s)",
        ours.end_to_end_2_workers_per_s,
        theirs.end_to_end_2_workers_per_s,
    );
    if let (Some(ours), Some(theirs)) = (ours.worker_rss_mb_c100, theirs.worker_rss_mb_c100) {
        row("worker peak RSS, concurrency 100 (MB)", ours, theirs);
    }
    row(
        "bulk enqueue, machine CPU per run (us, lower is better)",
        ours.add_bulk_machine_us,
        theirs.add_bulk_machine_us,
    );
    row(
        "end to end, 1 worker, machine CPU per run (us, lower is better)",
        ours.end_to_end_machine_us,
        theirs.end_to_end_machine_us,
    );
    row(
        "end to end, 2 workers, machine CPU per run (us, lower is better)",
        ours.end_to_end_2_workers_machine_us,
        theirs.end_to_end_2_workers_machine_us,
    );
}

/// Start `runs` no-op runs on `queue` through the batch API, in chunks of
/// 1000 with two in flight; returns runs/s.
async fn bulk_enqueue(service: &RunService, queue: &str, runs: usize) -> Result<f64> {
    let requests: Vec<RunRequest> = (0..runs)
        .map(|i| {
            RunRequest::new(4, "demo.noop")
                .queue(queue)
                .inputs(json!({"i": i}))
        })
        .collect();
    let started = Instant::now();
    let mut failed = None;
    service
        .ensure_runs_chunked(&requests, 1000, |_, results| {
            for result in results {
                match result {
                    Ok(ensured) if ensured.dispatch_failed() => {
                        failed.get_or_insert_with(|| "dispatch failed".to_string());
                    }
                    Ok(_) => {}
                    Err(e) => {
                        failed.get_or_insert(e.to_string());
                    }
                }
            }
        })
        .await;
    if let Some(error) = failed {
        bail!("a bulk start failed during the benchmark: {error}");
    }
    Ok(runs as f64 / started.elapsed().as_secs_f64())
}

/// Runs/s from the first creation to the last completion, and the workers' peak RSS.
struct EndToEnd {
    per_second: f64,
    rss_mb: f64,
    /// CPU time the worker processes used, per run, in microseconds.
    worker_cpu_us: f64,
    /// CPU time the whole machine used (every process: Postgres, Redis,
    /// this one, the workers), per run, in microseconds: less sensitive to
    /// a noisy neighbour than the rate.
    machine_cpu_us: f64,
}

/// `workers` worker processes at `concurrency` drain `runs` no-op runs
/// enqueued in bulk while they run, each worker started with the flags
/// `extra`. Timed on the Postgres clock, from the first run's creation to
/// the last one's completion.
#[allow(clippy::too_many_arguments)]
async fn end_to_end(
    bin: &std::path::Path,
    db: &WorkerDb,
    redis_url: &str,
    prefix: &str,
    service: &RunService,
    observer: &opsrun::sqlx::PgPool,
    queue: &'static str,
    workers: usize,
    concurrency: usize,
    runs: usize,
    extra: &[String],
) -> Result<EndToEnd> {
    let started: Vec<Worker> = (0..workers)
        .map(|_| Worker::start(bin, db, redis_url, prefix, queue, concurrency, extra))
        .collect::<Result<_>>()?;
    // Let the workers connect and block on their reads.
    tokio::time::sleep(Duration::from_millis(800)).await;
    // Read straight from Postgres, whatever the service goes through.
    let pool = observer;
    let before = latest_run_id(pool).await?;
    let busy_before = machine_busy_seconds();
    bulk_enqueue(service, queue, runs).await?;
    wait_completed(pool, queue, runs).await?;
    let machine_cpu_us = machine_us_per_run(busy_before, runs);
    let worker_cpu_us = started.iter().map(Worker::cpu_seconds).sum::<f64>() * 1e6 / runs as f64;
    let seconds: f64 = opsrun::sqlx::query_scalar(
        "SELECT extract(epoch FROM max(completed_at) - min(created_at))::float8 FROM operation_runs \
         WHERE queue = $1 AND id > $2",
    )
    .bind(queue)
    .bind(before)
    .fetch_one(pool)
    .await?;
    let rss_mb = started.iter().map(Worker::peak_rss_mb).fold(0.0, f64::max);
    drop(started);
    Ok(EndToEnd {
        per_second: runs as f64 / seconds,
        rss_mb,
        worker_cpu_us,
        machine_cpu_us,
    })
}

/// End to end with 1 and then 2 worker processes at `--concurrency`, on
/// `queues` (one each).
#[allow(clippy::too_many_arguments)]
async fn one_and_two_workers(
    bin: &std::path::Path,
    db: &WorkerDb,
    redis_url: &str,
    prefix: &str,
    service: &RunService,
    pool: &opsrun::sqlx::PgPool,
    queues: [&'static str; 2],
    cli: &Cli,
) -> Result<[EndToEnd; 2]> {
    let mut pair = Vec::with_capacity(2);
    for (queue, workers) in queues.into_iter().zip([1, 2]) {
        pair.push(
            end_to_end(
                bin,
                db,
                redis_url,
                prefix,
                service,
                pool,
                queue,
                workers,
                cli.concurrency,
                cli.runs,
                &prefetch_flag(cli),
            )
            .await?,
        );
    }
    let two = pair.pop().context("the second figure")?;
    let one = pair.pop().context("the first figure")?;
    Ok([one, two])
}

/// The workers' flag for `--prefetch` in the rows compared with the peers.
fn prefetch_flag(cli: &Cli) -> [String; 1] {
    [format!("--prefetch={}", cli.prefetch)]
}

/// Clock ticks per second, the unit of `/proc`'s CPU times.
fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

/// Seconds every CPU of this machine spent busy since boot (user, nice,
/// system, irq and softirq from `/proc/stat`; not idle, I/O wait or time
/// stolen by the host).
fn machine_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: f64 = stat
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("cpu "))
        .map(|l| {
            let fields: Vec<f64> = l
                .split_whitespace()
                .filter_map(|f| f.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal ...
            [0, 1, 2, 5, 6].iter().filter_map(|&i| fields.get(i)).sum()
        })
        .unwrap_or(f64::NAN);
    ticks / clock_ticks()
}

/// The machine's CPU per run, in microseconds, over `runs` runs done since
/// [`machine_busy_seconds`] was `busy_before`.
fn machine_us_per_run(busy_before: f64, runs: usize) -> f64 {
    (machine_busy_seconds() - busy_before) * 1e6 / runs as f64
}

/// The newest run's id: runs of an earlier invocation on the same database
/// are not this one's.
async fn latest_run_id(pool: &opsrun::sqlx::PgPool) -> Result<i64> {
    Ok(
        opsrun::sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM operation_runs")
            .fetch_one(pool)
            .await?,
    )
}

/// Wait until every one of the `runs` runs already started on `queue` has
/// completed. Asks only whether any is still active, which stops at the
/// first one found: counting them read every active row (~100 ms per poll
/// with a 20,000-run backlog, half a core taken from the system measured).
async fn wait_completed(pool: &opsrun::sqlx::PgPool, queue: &str, runs: usize) -> Result<()> {
    let started = Instant::now();
    loop {
        // Walks the active runs' partial index (operation_runs_active) in
        // its order, so it reads active rows only: asked as a bare EXISTS,
        // the planner chose a sequential scan of the whole ledger (443 ms
        // per poll at 1.7M runs, the newest at the end), which took CPU
        // from the runs being measured.
        let active: Option<i64> = opsrun::sqlx::query_scalar(
            "SELECT id FROM operation_runs WHERE completed_at IS NULL AND queue = $1 \
             ORDER BY tenant_id, created_at, id LIMIT 1",
        )
        .bind(queue)
        .fetch_optional(pool)
        .await?;
        if active.is_none() {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(600) {
            let states: Vec<(String, i64)> = opsrun::sqlx::query_as(
                "SELECT status || '/' || (dispatch_entry_id IS NOT NULL)::text, count(*) FROM operation_runs \
                 WHERE queue = $1 GROUP BY 1",
            )
            .bind(queue)
            .fetch_all(pool)
            .await?;
            bail!(
                "not all {runs} runs on {queue} completed in 10 minutes (status/entry recorded: {states:?})"
            );
        }
        // The figure is timed on the Postgres clock, so a slow poll costs
        // no precision; a frequent one costs the system CPU.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// How worker processes reach Postgres.
struct WorkerDb {
    url: String,
    /// `OPSRUN_DATABASE_POOLER`.
    pooler: &'static str,
    /// `--db-pool-size`, when not the default.
    pool_size: Option<u32>,
}

impl WorkerDb {
    /// Straight to the benchmark's Postgres, with the default pool.
    fn direct(stack: &Stack) -> WorkerDb {
        WorkerDb {
            url: stack.database_url.clone(),
            pooler: "direct",
            pool_size: None,
        }
    }
}

/// A worker process, stopped with SIGTERM when dropped.
struct Worker(std::process::Child);

impl Worker {
    /// `extra`: flags (`--name=value`) and environment (`NAME=value`).
    fn start(
        bin: &std::path::Path,
        db: &WorkerDb,
        redis_url: &str,
        prefix: &str,
        queue: &str,
        concurrency: usize,
        extra: &[String],
    ) -> Result<Worker> {
        let (flags, env): (Vec<&String>, Vec<&String>) =
            extra.iter().partition(|e| e.starts_with("--"));
        let child = Command::new(bin.join("worker"))
            .args(flags)
            .envs(env.iter().filter_map(|e| e.split_once('=')))
            .args([
                "--queues",
                queue,
                "--no-migrate",
                "--concurrency",
                &concurrency.to_string(),
            ])
            .args(db.pool_size.map(|n| format!("--db-pool-size={n}")))
            .env("DATABASE_URL", &db.url)
            .env("OPSRUN_DATABASE_POOLER", db.pooler)
            .env("REDIS_URL", redis_url)
            .env("OPSRUN_PREFIX", prefix)
            .env("RUST_LOG", "warn")
            .spawn()?;
        Ok(Worker(child))
    }
}

impl Worker {
    /// CPU time (user and system) the process used so far, in seconds.
    fn cpu_seconds(&self) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/stat", self.0.id()))
            .ok()
            .and_then(|stat| {
                // Fields after the parenthesised command: state is the 3rd
                // field, utime and stime the 14th and 15th.
                let rest = &stat[stat.rfind(')')? + 2..];
                let fields: Vec<&str> = rest.split_whitespace().collect();
                let user: f64 = fields.get(11)?.parse().ok()?;
                let system: f64 = fields.get(12)?.parse().ok()?;
                Some((user + system) / clock_ticks())
            })
            .unwrap_or(f64::NAN)
    }

    /// Peak resident memory so far (VmHWM), in MB.
    fn peak_rss_mb(&self) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.0.id()))
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            })
            .map_or(f64::NAN, |kb| kb / 1024.0)
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
