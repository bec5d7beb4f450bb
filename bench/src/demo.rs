//! `make demo`: the main job end to end. Uses DATABASE_URL/REDIS_URL when set,
//! otherwise starts ephemeral Postgres and Redis; migrates; starts two worker
//! processes; enqueues a mixed batch through the `producer` binary; shows
//! progress; ends with a summary by outcome, the runs as `monitor` lists
//! them, and how to inspect them (`--keep` also serves the monitor).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use devstack::{PostgresOptions, Stack};
use opsrun::Ledger;
use serde_json::Value;

#[derive(Parser)]
#[command(about = "Run opsrun end to end: servers, workers, a mixed batch of runs, a summary")]
struct Cli {
    /// Runs to enqueue (besides one deduplicated start).
    #[arg(long, default_value_t = 24)]
    runs: usize,
    /// Worker processes.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Keep servers and workers running after the summary until Ctrl-C, to inspect them.
    #[arg(long)]
    keep: bool,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let bin = std::env::current_exe()?
        .parent()
        .context("binary directory")?
        .to_path_buf();
    for name in ["producer", "worker", "monitor"] {
        if !bin.join(name).exists() {
            bail!(
                "{} is missing: build the binaries first (make demo does)",
                bin.join(name).display()
            );
        }
    }

    step("servers");
    let stack = Stack::from_env_or_start("opsrun", PostgresOptions::fast()).await?;
    println!(
        "  postgres: {}\n  redis:    {}",
        if stack.postgres.is_some() {
            "ephemeral, started for this demo"
        } else {
            "from DATABASE_URL"
        },
        if stack.redis.is_some() {
            "ephemeral, started for this demo"
        } else {
            "from REDIS_URL"
        },
    );

    step("migrations");
    let status = command(&bin, "producer", &stack).arg("migrate").status()?;
    if !status.success() {
        bail!("producer migrate failed");
    }
    let pool = opsrun::sqlx::PgPool::connect(&stack.database_url).await?;
    let ledger = Ledger::new(pool.clone());

    step(&format!("{} workers", cli.workers));
    let mut workers: Vec<Child> = (0..cli.workers)
        .map(|_| {
            command(&bin, "worker", &stack)
                .args(["--concurrency", "4", "--no-migrate"])
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .spawn()
                .context("starting a worker")
        })
        .collect::<Result<_>>()?;

    step(&format!(
        "enqueue {} runs with `producer enqueue`",
        cli.runs
    ));
    let started = Instant::now();
    // A long run first, so that starting it again shows dedupe.
    let long_inputs = r#"{"batch":"nightly","sleep_ms":4000,"items":50}"#;
    let first = enqueue(&bin, &stack, 1, "demo.succeed", long_inputs)?;
    println!(
        "  $ producer enqueue --tenant 1 --type demo.succeed --inputs '{long_inputs}' --user-id 7 --initiator-name Ada\n  {first}"
    );
    let again = enqueue(&bin, &stack, 1, "demo.succeed", long_inputs)?;
    println!(
        "  the same identity again while it is active → deduplicated: {}, run_id {} (no new run, no new dispatch)",
        again["deduplicated"], again["run_id"]
    );
    let mut shown = 1;
    for i in 0..cli.runs {
        let run_type = match i % 6 {
            0..=2 => "demo.succeed",
            3 | 4 => "demo.partial",
            _ => "demo.fail",
        };
        let tenant = 1 + (i % 3) as i64;
        let inputs = format!(
            r#"{{"batch":{i},"sleep_ms":{},"items":{}}}"#,
            300 + (i * 137) % 1200,
            10 + i % 7
        );
        let out = enqueue(&bin, &stack, tenant, run_type, &inputs)?;
        if shown < 3 {
            println!(
                "  $ producer enqueue --tenant {tenant} --type {run_type} --inputs '{inputs}' --user-id 7 --initiator-name Ada\n  {out}"
            );
            shown += 1;
        }
    }

    step("progress");
    loop {
        let counts: Vec<(String, i64)> =
            opsrun::sqlx::query_as("SELECT status, count(*) FROM operation_runs GROUP BY status")
                .fetch_all(&pool)
                .await?;
        let counts: BTreeMap<String, i64> = counts.into_iter().collect();
        let get = |s: &str| counts.get(s).copied().unwrap_or(0);
        println!(
            "  {:>5.1}s  queued {:>3}  running {:>3}  completed {:>3}",
            started.elapsed().as_secs_f64(),
            get("queued"),
            get("running"),
            get("completed")
        );
        if get("queued") + get("running") == 0 {
            break;
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("runs did not complete within 2 minutes");
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
    }

    step("summary by outcome");
    let outcomes: Vec<(String, i64)> = opsrun::sqlx::query_as(
        "SELECT outcome, count(*) FROM operation_runs GROUP BY outcome ORDER BY outcome",
    )
    .fetch_all(&pool)
    .await?;
    for (outcome, count) in &outcomes {
        println!("  {outcome:<20} {count}");
    }
    let sample: Option<(i64, i64, Value)> = opsrun::sqlx::query_as(
        "SELECT id, tenant_id, failure_summary FROM operation_runs WHERE outcome = 'failed' ORDER BY id LIMIT 1",
    )
    .fetch_optional(&pool)
    .await?;
    if let Some((id, tenant, failures)) = sample {
        let run = ledger
            .get(tenant, opsrun::RunId(id))
            .await?
            .context("sample run")?;
        println!("  a failed run ({id}) stores only sanitized failures:\n    {failures}");
        println!(
            "  view: {}",
            opsrun::service::view_url("http://127.0.0.1:8080", &run)
        );
    }

    step("Monitoring → Operations (`monitor`)");
    for args in [
        &["runs", "list", "--tenant", "1", "--limit", "5"][..],
        &[
            "notifications",
            "list",
            "--tenant",
            "1",
            "--user-id",
            "7",
            "--limit",
            "3",
        ][..],
    ] {
        println!("  $ monitor {}", args.join(" "));
        let out = command(&bin, "monitor", &stack).args(args).output()?;
        if !out.status.success() {
            bail!(
                "monitor {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            println!("    {line}");
        }
    }
    let mut monitor = None;
    if cli.keep {
        let token = command(&bin, "monitor", &stack)
            .args([
                "token",
                "create",
                "--tenant",
                "1",
                "--role",
                "operator",
                "--user-id",
                "7",
                "--user-name",
                "Ada",
            ])
            .stderr(Stdio::null())
            .output()?;
        let token = String::from_utf8_lossy(&token.stdout).trim().to_string();
        let mut child = command(&bin, "monitor", &stack)
            .args(["serve", "--listen", "127.0.0.1:0", "--no-migrate"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the monitor")?;
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().context("monitor stdout")?),
            &mut line,
        )?;
        let url = line.trim().trim_start_matches("listening on ").to_string();
        println!("  the monitor serves {url}/login; log in with the token {token}");
        monitor = Some(child);
    }

    step("inspect");
    println!(
        "  psql {} -c \"SELECT id, tenant_id, type, status, outcome, summary_counts FROM operation_runs ORDER BY id DESC LIMIT 10\"",
        stack.database_url
    );
    let redis_cli = redis_cli_args(&stack.redis_url);
    println!("  redis-cli {redis_cli} XLEN opsrun:queue:default");
    println!("  redis-cli {redis_cli} XINFO GROUPS opsrun:queue:default");
    println!("  redis-cli {redis_cli} XPENDING opsrun:queue:default workers");
    println!("  redis-cli {redis_cli} XRANGE opsrun:queue:default - + COUNT 3");

    if cli.keep {
        println!("\nservers and workers keep running; press Ctrl-C to stop");
        tokio::signal::ctrl_c().await?;
    } else if stack.postgres.is_some() || stack.redis.is_some() {
        println!(
            "\n(the ephemeral servers stop with this demo; run `make demo ARGS=--keep` to keep them for inspection)"
        );
    }
    if let Some(mut monitor) = monitor {
        let _ = monitor.kill();
        let _ = monitor.wait();
    }
    for worker in &mut workers {
        // SAFETY: signalling our own child; SIGTERM asks it to drain and exit.
        unsafe { libc::kill(worker.id() as i32, 15) };
    }
    for worker in &mut workers {
        let _ = worker.wait();
    }
    Ok(())
}

fn step(title: &str) {
    println!("\n== {title}");
}

fn command(bin: &std::path::Path, name: &str, stack: &Stack) -> Command {
    let mut cmd = Command::new(PathBuf::from(bin).join(name));
    cmd.env("DATABASE_URL", &stack.database_url)
        .env("REDIS_URL", &stack.redis_url);
    cmd
}

fn enqueue(
    bin: &std::path::Path,
    stack: &Stack,
    tenant: i64,
    run_type: &str,
    inputs: &str,
) -> Result<Value> {
    let out = command(bin, "producer", stack)
        .args([
            "enqueue",
            "--tenant",
            &tenant.to_string(),
            "--type",
            run_type,
            "--inputs",
            inputs,
        ])
        .args(["--user-id", "7", "--initiator-name", "Ada"])
        .output()?;
    if !out.status.success() {
        bail!(
            "producer exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// `-h HOST -p PORT` for redis-cli from a redis:// URL (credentials left out).
fn redis_cli_args(url: &str) -> String {
    let rest = url
        .trim_start_matches("redis://")
        .trim_start_matches("rediss://");
    let host_port = rest
        .rsplit('@')
        .next()
        .unwrap_or(rest)
        .split('/')
        .next()
        .unwrap_or("127.0.0.1:6379");
    let (host, port) = host_port.rsplit_once(':').unwrap_or((host_port, "6379"));
    format!("-h {host} -p {port}")
}
