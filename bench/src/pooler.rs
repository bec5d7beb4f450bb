//! `make bench`'s PgBouncer rows: what a transaction-mode pooler costs.
//! The same end to end and single start as above, four ways: straight to
//! Postgres with cached statements (the default), straight to Postgres with
//! the pooler setting (each statement unnamed in its own transaction: the
//! cost of the setting alone), and through PgBouncer in transaction mode
//! (the setting plus the pooler's hop), workers holding a pool of 3, and
//! through PgBouncer at the default pool of 10 (what the small pool costs). The
//! end-to-end ways take turns over `--rounds` rounds, as the control rows'
//! configurations do, and the median of per-round ratios is compared.

use std::time::Instant;

use anyhow::Result;
use devstack::{PgBouncer, Stack};
use opsrun::{Ledger, Pooler, RunRequest, RunService, Transport, TransportConfig};
use serde_json::json;

use crate::control::{print_medians, round_order, settle};
use crate::{Cli, WorkerDb, end_to_end, ms, percentiles};

/// Server connections PgBouncer keeps: what 100 workers of 3 would share.
const SERVER_POOL: u32 = 20;
/// The workers' `--db-pool-size` (the least a worker runs with).
const WORKER_POOL: u32 = 3;
/// The default `--db-pool-size`, for the row that shows what a small pool
/// costs behind PgBouncer.
const DEFAULT_WORKER_POOL: u32 = 10;

/// Measure and print the rows; `database` is the benchmark's database on
/// `stack`'s ephemeral Postgres.
pub async fn side_by_side(
    bin: &std::path::Path,
    stack: &Stack,
    database: &str,
    prefix: &str,
    cli: &Cli,
) -> Result<()> {
    let Some(postgres) = &stack.postgres else {
        println!(
            "\nPgBouncer rows skipped: DATABASE_URL names a server this benchmark did not start"
        );
        return Ok(());
    };
    let bouncer = match PgBouncer::start(postgres, SERVER_POOL) {
        Ok(bouncer) => bouncer,
        Err(why) => {
            println!("\nPgBouncer rows skipped: {why:#}");
            return Ok(());
        }
    };
    let ways = [
        (
            "direct, cached statements",
            stack.database_url.clone(),
            Pooler::Direct,
            WORKER_POOL,
        ),
        (
            "direct, pooler setting",
            stack.database_url.clone(),
            Pooler::Transaction,
            WORKER_POOL,
        ),
        (
            "through PgBouncer (transaction mode)",
            bouncer.url(database),
            Pooler::Transaction,
            WORKER_POOL,
        ),
        (
            "through PgBouncer, worker pool 10",
            bouncer.url(database),
            Pooler::Transaction,
            DEFAULT_WORKER_POOL,
        ),
    ];
    let observer = opsrun::config::connect_postgres(
        opsrun::config::postgres_options(&stack.database_url)?,
        2,
        opsrun::config::DEFAULT_CONNECT_TIMEOUT,
    )
    .await?;
    // Each way's own service (its starts go the same way as its worker's
    // statements), and its single-start latency, measured once.
    let mut services = Vec::new();
    let mut latency_rows = Vec::new();
    for (i, (label, url, pooler, pool_size)) in ways.iter().enumerate() {
        let options = opsrun::config::postgres_options(url)?;
        let pool =
            opsrun::config::connect_postgres(options, 16, opsrun::config::DEFAULT_CONNECT_TIMEOUT)
                .await?;
        let mut config = TransportConfig::new(stack.redis_url.clone());
        config.prefix = prefix.to_string();
        let service = RunService::new(Ledger::behind(pool, *pooler), Transport::new(&config)?);
        let mut latencies = Vec::with_capacity(cli.samples);
        for n in 0..cli.samples {
            let request = RunRequest::new(3, "bench.pooler")
                .queue("latency")
                .inputs(json!({"way": i, "n": n}));
            let started = Instant::now();
            service.ensure_run(&request).await?;
            latencies.push(started.elapsed());
        }
        let (p50, p99) = percentiles(&mut latencies);
        latency_rows.push((label, p50, p99));
        let db = WorkerDb {
            url: url.clone(),
            pooler: match pooler {
                Pooler::Direct => "direct",
                Pooler::Transaction => "transaction",
            },
            pool_size: Some(*pool_size),
        };
        services.push((service, db));
    }
    println!(
        "\n{:<46} {:>10} {:>10}",
        format!("Postgres pooling: single start (n={})", cli.samples),
        "p50",
        "p99"
    );
    for (label, p50, p99) in latency_rows {
        println!("{label:<46} {:>10} {:>10}", ms(p50), ms(p99));
    }

    // End to end: the ways take turns over the rounds, as the control rows.
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); ways.len()];
    let mut worker_cpu: Vec<Vec<f64>> = vec![Vec::new(); ways.len()];
    let mut machine_cpu: Vec<Vec<f64>> = vec![Vec::new(); ways.len()];
    let queues = ["pool0", "pool1", "pool2", "pool3"];
    for round in 0..usize::from(cli.rounds) {
        for i in round_order(round, ways.len()) {
            let (service, db) = &services[i];
            settle(&observer).await?;
            let e2e = end_to_end(
                bin,
                db,
                &stack.redis_url,
                prefix,
                service,
                &observer,
                queues[i],
                1,
                cli.concurrency,
                cli.runs,
                &[],
            )
            .await?;
            rates[i].push(e2e.per_second);
            worker_cpu[i].push(e2e.worker_cpu_us);
            machine_cpu[i].push(e2e.machine_cpu_us);
        }
    }
    let labels = ways.iter().map(|(label, ..)| *label);
    print_medians(
        &format!(
            "pooling, e2e 1 worker x{}, pool {WORKER_POOL} unless said (n={})",
            cli.concurrency, cli.runs
        ),
        labels.clone().zip(rates),
    );
    print_medians(
        "the same: worker CPU per run (us)",
        labels.clone().zip(worker_cpu),
    );
    print_medians(
        "the same: machine CPU per run (us, every process)",
        labels.zip(machine_cpu),
    );
    Ok(())
}
