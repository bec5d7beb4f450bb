//! `make bench-retention`: fill the ledger with completed runs spread over
//! 120 days, then time retention rounds (90 days) while simulated workers
//! keep claiming and completing runs, and report rows/s and how long the
//! workers' writes waited (p50, p99, max) before and during retention.
//! Postgres runs with fsync on.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;
use devstack::{PostgresOptions, Stack};
use opsrun::ledger::{Claim, Fence, NewRun, Terminal};
use opsrun::registry::IdentityRule;
use opsrun::{Ledger, Outcome, RunRequest, SummaryCounts};
use opsrun_reaper::retention::{self, RetentionConfig};
use serde_json::json;
use tokio::sync::Mutex;

#[derive(Parser)]
#[command(about = "Retention benchmark: delete rate and worker write latency at scale")]
struct Cli {
    /// Completed runs to create, spread evenly over 120 days.
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// Rows per delete statement.
    #[arg(long, default_value_t = retention::DEFAULT_BATCH)]
    batch: i64,
    /// Simulated workers writing during the benchmark.
    #[arg(long, default_value_t = 4)]
    writers: usize,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let stack =
        Stack::from_env_or_start("opsrun_retention_bench", PostgresOptions::durable()).await?;
    let pool = opsrun::sqlx::postgres::PgPoolOptions::new()
        .max_connections(16)
        .connect(&stack.database_url)
        .await?;
    let ledger = Ledger::new(pool.clone());
    ledger.migrate().await?;

    let filled = Instant::now();
    let chunk = 100_000u64;
    let mut done = 0;
    while done < cli.rows {
        let n = chunk.min(cli.rows - done);
        // Completion times evenly over the last 120 days; 10 tenants, 4 types.
        opsrun::sqlx::query(
            "INSERT INTO operation_runs (tenant_id, initiator_name, type, run_identity_hash, queue, status, outcome, \
                 summary_counts, created_at, started_at, completed_at, attempt, holder, heartbeat_at) \
             SELECT 1 + g % 10, 'System', (ARRAY['inventory.sync','backup.run','restore.execute','verify.run'])[1 + g % 4], \
                 md5(g::text) || md5((g * 7)::text), 'default', 'completed', 'succeeded', '{\"total\":10,\"success\":10}', \
                 t - interval '2 minutes', t - interval '1 minute', t, 1, 'w', t \
             FROM (SELECT g, now() - (g::float8 / $3 * interval '120 days') AS t \
                   FROM generate_series($1::bigint, $2::bigint) g) s",
        )
        .bind(done as i64)
        .bind((done + n - 1) as i64)
        .bind(cli.rows as f64)
        .execute(&pool)
        .await?;
        done += n;
    }
    opsrun::sqlx::query("VACUUM ANALYZE operation_runs")
        .execute(&pool)
        .await?;
    let size: String = opsrun::sqlx::query_scalar(
        "SELECT pg_size_pretty(pg_total_relation_size('operation_runs'))",
    )
    .fetch_one(&pool)
    .await?;
    let expired: i64 = opsrun::sqlx::query_scalar(
        "SELECT count(*) FROM operation_runs WHERE status = 'completed' AND completed_at < now() - interval '90 days'",
    )
    .fetch_one(&pool)
    .await?;
    println!(
        "filled {} completed runs over 120 days in {:.1}s ({size} with indexes); {expired} older than 90 days",
        cli.rows,
        filled.elapsed().as_secs_f64()
    );

    // Simulated workers: claim and complete runs, timing each write.
    let latencies = Arc::new(Mutex::new(Vec::<Duration>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..cli.writers)
        .map(|w| {
            let (ledger, latencies, stop) = (ledger.clone(), latencies.clone(), stop.clone());
            tokio::spawn(async move { write_loop(w, ledger, latencies, stop).await })
        })
        .collect();

    let window = Duration::from_secs(5);
    tokio::time::sleep(window).await;
    let before = take(&latencies).await;

    let started = Instant::now();
    let config = RetentionConfig {
        after: retention::DEFAULT_AFTER,
        batch: cli.batch,
        max_batches: u64::MAX,
    };
    let report = retention::run_once(&ledger, &config).await?;
    let elapsed = started.elapsed();
    let during = take(&latencies).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await??;
    }

    println!(
        "retention: deleted {} rows in {} batches of {} in {:.1}s = {:.0} rows/s",
        report.deleted,
        report.batches,
        cli.batch,
        elapsed.as_secs_f64(),
        report.deleted as f64 / elapsed.as_secs_f64()
    );
    println!(
        "\nworker writes ({} writers)          {:>8} {:>8} {:>8} {:>8}",
        cli.writers, "n", "p50", "p99", "max"
    );
    for (label, mut samples) in [
        ("before retention (5 s)", before),
        ("during retention", during),
    ] {
        samples.sort();
        let at = |q: f64| {
            samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1]
        };
        if samples.is_empty() {
            continue;
        }
        println!(
            "{label:<35} {:>8} {:>8} {:>8} {:>8}",
            samples.len(),
            ms(at(0.5)),
            ms(at(0.99)),
            ms(*samples.last().unwrap())
        );
    }
    Ok(())
}

async fn take(latencies: &Mutex<Vec<Duration>>) -> Vec<Duration> {
    std::mem::take(&mut *latencies.lock().await)
}

fn ms(d: Duration) -> String {
    format!("{:.1}ms", d.as_secs_f64() * 1000.0)
}

/// Insert, claim and complete runs in a loop, timing the claim and the completion.
async fn write_loop(
    writer: usize,
    ledger: Ledger,
    latencies: Arc<Mutex<Vec<Duration>>>,
    stop: Arc<AtomicBool>,
) -> Result<()> {
    let holder = format!("bench-writer:{writer}");
    let counts = SummaryCounts {
        total: 1,
        success: 1,
        failed: 0,
        skipped: 0,
    };
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let request = RunRequest::new(100 + writer as i64, "bench.write").inputs(json!({"n": n}));
        let identity =
            opsrun::identity::identity_hash(request.tenant_id, &request.run_type, &request.inputs);
        let new = NewRun {
            request: &request,
            queue: "bench",
            identity: &identity,
            rule: &IdentityRule::Deterministic,
            max_attempts: 3,
            lease_seconds: 60,
            domain_id: None,
            shard: 0,
            concurrency_key: None,
        };
        let (run, _) = ledger.insert_or_get(&new).await?;
        let t = Instant::now();
        let claimed = ledger
            .mark_running(
                run.tenant_id,
                run.id,
                1,
                &holder,
                std::time::Duration::from_secs(60),
            )
            .await?
            .expect("claim");
        let claim_took = t.elapsed();
        let claim = Claim {
            tenant_id: claimed.tenant_id,
            run_id: claimed.id,
            holder: &holder,
            attempt: claimed.attempt,
        };
        let t = Instant::now();
        ledger
            .complete(
                Fence::Claim(claim),
                Terminal {
                    outcome: Outcome::Succeeded,
                    counts: &counts,
                    failures: &[],
                    reclaim: None,
                },
            )
            .await?;
        let complete_took = t.elapsed();
        latencies.lock().await.extend([claim_took, complete_took]);
    }
    Ok(())
}
