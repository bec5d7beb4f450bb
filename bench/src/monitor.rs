//! `make bench-monitor`: Monitoring → Operations latency at scale. Fills the
//! ledger with 1M runs for one tenant (over 120 days) plus 9 other tenants
//! (100k runs each), then times list and detail requests through the
//! monitor's router in process (token check, query, JSON or HTML), p50/p99.

use std::time::{Duration, Instant};

use anyhow::Result;
use axum::body::Body;
use axum::http::{Request, header};
use clap::Parser;
use devstack::{PostgresOptions, Stack};
use opsrun::Ledger;
use opsrun::access::{Role, generate_token};
use opsrun::ledger::NewToken;
use opsrun_monitor::{AppState, router, views};
use tower::ServiceExt;

#[derive(Parser)]
#[command(about = "Monitor benchmark: list and detail latency with millions of runs")]
struct Cli {
    /// Runs of the measured tenant, spread over 120 days.
    #[arg(long, default_value_t = 1_000_000)]
    runs: i64,
    /// Other tenants in the table.
    #[arg(long, default_value_t = 9)]
    other_tenants: i64,
    /// Runs of each other tenant.
    #[arg(long, default_value_t = 100_000)]
    other_runs: i64,
    /// Requests per measured case.
    #[arg(long, default_value_t = 300)]
    requests: usize,
}

/// Insert `count` completed runs of `tenant` over 120 days: four types, 90%
/// succeeded, 5% partially succeeded, 5% failed (half by timeout), a fifth
/// started by the system and the rest by 50 users.
async fn fill(pool: &opsrun::sqlx::PgPool, tenant: i64, count: i64) -> Result<()> {
    let chunk = 200_000;
    let mut done = 0;
    while done < count {
        let n = chunk.min(count - done);
        opsrun::sqlx::query(
            "INSERT INTO operation_runs (tenant_id, user_id, initiator_name, type, run_identity_hash, queue, status, outcome, \
                 summary_counts, failure_summary, context, created_at, started_at, completed_at, attempt, holder, heartbeat_at) \
             SELECT $1, CASE WHEN g % 5 = 0 THEN NULL ELSE 1 + g % 50 END, \
                 CASE WHEN g % 5 = 0 THEN 'System' ELSE 'user ' || (1 + g % 50) END, \
                 (ARRAY['inventory.sync','backup.run','restore.execute','verify.run'])[1 + g % 4], \
                 md5($1::text || g::text) || md5(g::text), 'default', 'completed', \
                 CASE WHEN g % 20 = 1 THEN 'failed' WHEN g % 20 = 2 THEN 'partially_succeeded' ELSE 'succeeded' END, \
                 '{\"total\":10,\"success\":9,\"failed\":1,\"skipped\":0}', \
                 CASE WHEN g % 40 = 1 THEN '[{\"code\":\"job.timeout\",\"message\":\"the job ran longer than 15m\",\"count\":1}]'::jsonb \
                      WHEN g % 20 IN (1, 2) THEN '[{\"code\":\"item.failed\",\"message\":\"1 item failed\",\"count\":1}]'::jsonb \
                      ELSE '[]'::jsonb END, \
                 jsonb_build_object('provider_connection_id', g % 100), \
                 t - interval '2 minutes', t - interval '1 minute', t, 1, 'w', t \
             FROM (SELECT g, now() - (g::float8 / $4 * interval '120 days') AS t \
                   FROM generate_series($2::bigint, $3::bigint) g) s",
        )
        .bind(tenant)
        .bind(done)
        .bind(done + n - 1)
        .bind(count as f64)
        .execute(pool)
        .await?;
        done += n;
    }
    Ok(())
}

/// A measured request: its name, and its i-th sample.
type Case<'a> = (&'a str, Box<dyn Fn(usize) -> Request<Body> + 'a>);

fn get(uri: &str, token: &str) -> Request<Body> {
    Request::get(uri)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .expect("request")
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let stack =
        Stack::from_env_or_start("opsrun_monitor_bench", PostgresOptions::durable()).await?;
    let pool = opsrun::sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect(&stack.database_url)
        .await?;
    let ledger = Ledger::new(pool.clone());
    ledger.migrate().await?;

    let filled = Instant::now();
    let existing: i64 =
        opsrun::sqlx::query_scalar("SELECT count(*) FROM operation_runs WHERE tenant_id = 1")
            .fetch_one(&pool)
            .await?;
    if existing != cli.runs {
        opsrun::sqlx::query("TRUNCATE operation_runs, run_rollups, run_rollup_durations CASCADE")
            .execute(&pool)
            .await?;
        opsrun::sqlx::query("UPDATE run_rollup_progress SET rolled_until = NULL")
            .execute(&pool)
            .await?;
        fill(&pool, 1, cli.runs).await?;
        for tenant in 2..2 + cli.other_tenants {
            fill(&pool, tenant, cli.other_runs).await?;
        }
        opsrun::sqlx::query("VACUUM ANALYZE operation_runs")
            .execute(&pool)
            .await?;
    }
    // What the reaper does a day at a time: roll every closed hour up for
    // the chart (here the whole history at once).
    let rolling = Instant::now();
    let mut hours = 0;
    loop {
        let rolled = ledger.roll_up(1000).await?;
        hours += rolled;
        if rolled < 1000 {
            break;
        }
    }
    println!(
        "rollups: {hours} hours rolled up in {:.1}s",
        rolling.elapsed().as_secs_f64()
    );
    let (total, size): (i64, String) = opsrun::sqlx::query_as(
        "SELECT (SELECT count(*) FROM operation_runs), pg_size_pretty(pg_total_relation_size('operation_runs'))",
    )
    .fetch_one(&pool)
    .await?;
    println!(
        "ledger: {total} runs ({} for tenant 1, {} other tenants x {}), {size} with indexes; ready in {:.1}s",
        cli.runs,
        cli.other_tenants,
        cli.other_runs,
        filled.elapsed().as_secs_f64()
    );

    let (secret, hash) = generate_token();
    ledger
        .create_token(
            &NewToken {
                tenant_id: Some(1),
                role: Role::Readonly,
                user: None,
                label: Some("bench"),
                queues: &[],
            },
            &hash,
        )
        .await?;
    let (small_secret, small_hash) = generate_token();
    ledger
        .create_token(
            &NewToken {
                tenant_id: Some(2),
                role: Role::Readonly,
                user: None,
                label: Some("bench"),
                queues: &[],
            },
            &small_hash,
        )
        .await?;
    let (operator, operator_hash) = generate_token();
    ledger
        .create_token(
            &NewToken {
                tenant_id: Some(1),
                role: Role::Operator,
                user: Some((42, "user 42")),
                label: Some("bench"),
                queues: &[],
            },
            &operator_hash,
        )
        .await?;
    let mut transport = opsrun::TransportConfig::new(stack.redis_url.clone());
    transport.prefix = "bench_monitor".into();
    let service = opsrun::RunService::new(ledger.clone(), opsrun::Transport::new(&transport)?);
    let app = router(AppState::new(
        ledger.clone(),
        Some(service),
        views::Links::default(),
        "http://127.0.0.1:8080",
    ));
    let send = |request: Request<Body>| {
        let app = app.clone();
        async move {
            let uri = request.uri().to_string();
            let response = app.oneshot(request).await.expect("infallible");
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), 64 << 20)
                .await
                .expect("body");
            assert!(
                status.is_success(),
                "{uri}: {status} {}",
                String::from_utf8_lossy(&body)
            );
            body
        }
    };

    // A cursor 100 pages (5,000 runs) deep, and run ids to show.
    let mut deep = "/api/v1/runs".to_string();
    for _ in 0..100 {
        let page: serde_json::Value = serde_json::from_slice(&send(get(&deep, &secret)).await)?;
        deep = page["next_url"].as_str().expect("more pages").to_string();
    }
    let ids: Vec<i64> = opsrun::sqlx::query_scalar(
        "SELECT id FROM operation_runs WHERE tenant_id = 1 ORDER BY random() LIMIT $1",
    )
    .bind(cli.requests as i64)
    .fetch_all(&pool)
    .await?;

    let start = |i: usize| {
        let body = serde_json::json!({"type": "inventory.sync", "inputs": {"site": i, "bench": "monitor"}});
        Request::post("/api/v1/runs")
            .header(header::AUTHORIZATION, format!("Bearer {operator}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .expect("request")
    };
    let since_120_days = (chrono::Utc::now() - chrono::Duration::days(120))
        .format("/api/v1/chart?since=%Y-%m-%d")
        .to_string();
    let cases: Vec<Case> = vec![
        (
            "chart, 30 days (hourly rollups + live hour)",
            Box::new(|_| get("/api/v1/chart", &secret)),
        ),
        (
            "chart, 120 days",
            Box::new(|_| get(&since_120_days, &secret)),
        ),
        (
            "list, first page (50)",
            Box::new(|_| get("/api/v1/runs", &secret)),
        ),
        ("list, 100 pages deep", Box::new(|_| get(&deep, &secret))),
        (
            "list, limit=200",
            Box::new(|_| get("/api/v1/runs?limit=200", &secret)),
        ),
        (
            "list, type=backup.run",
            Box::new(|_| get("/api/v1/runs?type=backup.run", &secret)),
        ),
        (
            "list, outcome=failed",
            Box::new(|_| get("/api/v1/runs?outcome=failed", &secret)),
        ),
        (
            "list, failure_code=job.timeout",
            Box::new(|_| get("/api/v1/runs?failure_code=job.timeout", &secret)),
        ),
        (
            "list, initiator=42",
            Box::new(|_| get("/api/v1/runs?initiator=42", &secret)),
        ),
        (
            "list, status=running (none exist)",
            Box::new(|_| get("/api/v1/runs?status=running", &secret)),
        ),
        (
            "list, initiator=nobody (no match: whole window)",
            Box::new(|_| get("/api/v1/runs?initiator=nobody", &secret)),
        ),
        (
            "list, small tenant (100k)",
            Box::new(|_| get("/api/v1/runs", &small_secret)),
        ),
        (
            "list page with its chart, HTML",
            Box::new(|_| get("/tenants/1/operations", &secret)),
        ),
        (
            "detail, JSON",
            Box::new(|i| get(&format!("/api/v1/runs/{}", ids[i % ids.len()]), &secret)),
        ),
        (
            "detail page, HTML",
            Box::new(|i| {
                get(
                    &format!("/tenants/1/operations/{}", ids[i % ids.len()]),
                    &secret,
                )
            }),
        ),
        ("start a run (POST, dispatched to Redis)", Box::new(start)),
    ];
    println!(
        "\n{:<48} {:>9} {:>9} {:>6}",
        "request (tenant 1 unless said)", "p50 ms", "p99 ms", "n"
    );
    for (name, request) in &cases {
        // A filter that matches nothing reads the whole 30-day window: fewer samples.
        let n = if name.contains("whole window") {
            cli.requests.min(20)
        } else {
            cli.requests
        };
        for i in 0..5 {
            send(request(n + i)).await;
        }
        let mut times = Vec::with_capacity(n);
        for i in 0..n {
            let request = request(i);
            let t = Instant::now();
            send(request).await;
            times.push(t.elapsed());
        }
        times.sort();
        println!(
            "{name:<48} {:>9.2} {:>9.2} {n:>6}",
            percentile(&times, 0.5),
            percentile(&times, 0.99)
        );
    }
    println!(
        "\n(2-core machine; in process through the router: token lookup, query, rendering; Postgres fsync on)"
    );
    Ok(())
}
