//! `make chaos`: a mixed load for a given time while worker processes are
//! killed (SIGKILL) or stopped (SIGTERM) and restarted, the reaper is killed
//! and restarted, and Redis is restarted without its data. Then it waits for
//! every accepted run to finish and prints the audit: runs accepted,
//! completed by outcome, lost (must be 0), executed more than once.
//! Exits 1 when a run was lost.
//!
//! `--cluster`: the same on a 3-master Redis Cluster (a replica each)
//! started here, the queue sharded over 4 streams; instead of restarting
//! Redis, a master is SIGKILLed (its replica takes over; the old master
//! comes back as a replica) or slots are moved between masters with
//! `redis-cli --cluster reshard`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use devstack::{PostgresOptions, Stack};
use opsrun::transport::QueueStream;
use opsrun::{Ledger, RunRequest, RunService, Transport, TransportConfig};
use rand::Rng;
use serde_json::json;

#[derive(Parser)]
#[command(about = "Chaos run: load while killing workers, the reaper and Redis; then audit")]
struct Cli {
    /// How long to run the load and the faults, e.g. "5m".
    #[arg(long, default_value = "60s", value_parser = humantime_duration)]
    duration: Duration,
    /// Worker processes.
    #[arg(long, default_value_t = 3)]
    workers: usize,
    /// Runs started per second.
    #[arg(long, default_value_t = 40)]
    rate: u32,
    /// Mean time between faults, e.g. "3s".
    #[arg(long, default_value = "3s", value_parser = humantime_duration)]
    fault_every: Duration,
    /// Run on a Redis Cluster started here, killing masters and resharding.
    #[arg(long)]
    cluster: bool,
}

/// Streams of the chaos queue in cluster mode.
const CLUSTER_SHARDS: i16 = 4;

fn humantime_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))
}

/// Job types of the mixed load: (type, share of starts, shell body).
const TYPES: &[(&str, u32, &str)] = &[
    ("chaos.quick", 60, "sleep 0.05"),
    ("chaos.slow", 20, "sleep 2"),
    (
        "chaos.partial",
        10,
        r#"echo '{"summary_counts":{"total":4,"success":3,"failed":1}}'"#,
    ),
    ("chaos.fail", 10, "echo 'provider said no' >&2; exit 2"),
];

struct Processes {
    bin: PathBuf,
    dir: PathBuf,
    database_url: String,
    redis_url: String,
    workers: Vec<Child>,
    reaper: Option<Child>,
}

impl Processes {
    fn command(&self, name: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(name));
        cmd.env("DATABASE_URL", &self.database_url)
            .env("REDIS_URL", &self.redis_url)
            .env("OPSRUN_PREFIX", "chaos")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null());
        cmd
    }

    fn worker(&self) -> Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("workers.log"))?;
        let child = self
            .command("worker")
            .args([
                "--no-migrate",
                "--concurrency",
                "8",
                "--heartbeat-interval",
                "1s",
                "--shutdown-grace",
                "5s",
            ])
            .arg("--registry")
            .arg(self.dir.join("handlers.toml"))
            .stderr(log)
            .spawn()?;
        started(child, "a worker", &self.dir.join("workers.log"))
    }

    fn reaper(&self) -> Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("reaper.log"))?;
        let child = self
            .command("reaper")
            .args([
                "--interval",
                "1s",
                "--redispatch-after",
                "5s",
                "--pending-idle",
                "10s",
            ])
            .arg("--registry")
            .arg(self.dir.join("handlers.toml"))
            .stderr(log)
            .spawn()?;
        started(child, "the reaper", &self.dir.join("reaper.log"))
    }
}

/// A child that exits right after starting is misconfigured: stop the run
/// rather than measure nothing.
fn started(mut child: Child, what: &str, log: &Path) -> Result<Child> {
    std::thread::sleep(Duration::from_millis(300));
    if let Some(status) = child.try_wait()? {
        let tail = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = tail.lines().rev().take(5).collect();
        bail!("{what} exited at start with {status}: {}", tail.join(" | "));
    }
    Ok(child)
}

fn signal(child: &Child, signal: i32) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, signal) };
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let bin = std::env::current_exe()?
        .parent()
        .context("binary directory")?
        .to_path_buf();
    let mut stack = Stack::from_env_or_start("opsrun_chaos", PostgresOptions::fast()).await?;
    let mut cluster = match cli.cluster {
        true => Some(tokio::task::spawn_blocking(|| devstack::RedisCluster::start(3, 1)).await??),
        false => None,
    };
    let redis_url = cluster
        .as_ref()
        .map_or(stack.redis_url.clone(), |c| c.url());
    let shards = if cli.cluster { CLUSTER_SHARDS } else { 1 };
    let dir = std::env::temp_dir().join(format!("opsrun-chaos-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let executions = dir.join("executions.log");
    write_handlers(&dir, &executions, shards)?;

    let pool = opsrun::sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect(&stack.database_url)
        .await?;
    let ledger = Ledger::new(pool.clone());
    ledger.migrate().await?;
    let mut config = TransportConfig::new(redis_url.clone());
    config.prefix = "chaos".into();
    config.command_timeout = Duration::from_millis(500);
    // The producer side shares the workers' registry, as every component should.
    let registry = Arc::new(opsrun::registry::Registry::load(
        &dir.join("handlers.toml"),
    )?);
    let service =
        Arc::new(RunService::new(ledger, Transport::new(&config)?).with_registry(registry));
    for stream in QueueStream::all("default", shards) {
        service.transport().ensure_group(&stream).await?;
    }

    let mut procs = Processes {
        bin,
        dir: dir.clone(),
        database_url: stack.database_url.clone(),
        redis_url,
        workers: Vec::new(),
        reaper: None,
    };
    for _ in 0..cli.workers {
        let w = procs.worker()?;
        procs.workers.push(w);
    }
    procs.reaper = Some(procs.reaper()?);
    let can_restart_redis = stack.redis.is_some() && cluster.is_none();
    println!(
        "chaos: {}s of load at {}/s on {} workers; faults every ~{}s ({})",
        cli.duration.as_secs(),
        cli.rate,
        cli.workers,
        cli.fault_every.as_secs(),
        match (&cluster, can_restart_redis) {
            (Some(_), _) =>
                "Redis Cluster, 3 masters + 3 replicas, 4 shards: masters killed, slots resharded",
            (None, true) => "redis restarts: yes",
            (None, false) => "redis restarts: no, REDIS_URL is set",
        }
    );

    // Load: starts at a steady rate; one in ten repeats a recent identity (dedupe).
    let accepted = Arc::new(AtomicU64::new(0));
    let dispatch_failed = Arc::new(AtomicU64::new(0));
    let deduplicated = Arc::new(AtomicU64::new(0));
    let start_errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let load = {
        let (service, accepted, dispatch_failed, deduplicated, start_errors) = (
            service.clone(),
            accepted.clone(),
            dispatch_failed.clone(),
            deduplicated.clone(),
            start_errors.clone(),
        );
        let (rate, duration) = (cli.rate, cli.duration);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
            let mut n: u64 = 0;
            while started.elapsed() < duration {
                tick.tick().await;
                n += 1;
                let (run_type, nonce) = {
                    let mut rng = rand::rng();
                    let pick = rng.random_range(0..100);
                    let mut acc = 0;
                    let run_type = TYPES
                        .iter()
                        .find(|t| {
                            acc += t.1;
                            pick < acc
                        })
                        .map(|t| t.0)
                        .unwrap_or("chaos.quick");
                    let nonce = if rng.random_ratio(1, 10) {
                        n.saturating_sub(rng.random_range(1..5))
                    } else {
                        n
                    };
                    (run_type, nonce)
                };
                let request =
                    RunRequest::new(1 + (nonce % 5) as i64, run_type).inputs(json!({"n": nonce}));
                let service = service.clone();
                let (accepted, dispatch_failed, deduplicated, start_errors) = (
                    accepted.clone(),
                    dispatch_failed.clone(),
                    deduplicated.clone(),
                    start_errors.clone(),
                );
                tokio::spawn(async move {
                    match service.ensure_run(&request).await {
                        Ok(e) if e.deduplicated() => deduplicated.fetch_add(1, Ordering::Relaxed),
                        Ok(e) if e.dispatch_failed() => {
                            accepted.fetch_add(1, Ordering::Relaxed);
                            dispatch_failed.fetch_add(1, Ordering::Relaxed)
                        }
                        Ok(_) => accepted.fetch_add(1, Ordering::Relaxed),
                        Err(_) => start_errors.fetch_add(1, Ordering::Relaxed),
                    };
                });
            }
        })
    };

    // Faults.
    let mut events: BTreeMap<&str, u32> = BTreeMap::new();
    while started.elapsed() < cli.duration {
        let wait = rand::rng().random_range(cli.fault_every / 2..cli.fault_every * 3 / 2);
        tokio::time::sleep(wait).await;
        let roll = rand::rng().random_range(0..100);
        let i = rand::rng().random_range(0..procs.workers.len());
        match roll {
            0..45 => {
                signal(&procs.workers[i], libc::SIGKILL);
                let _ = procs.workers[i].wait();
                procs.workers[i] = procs.worker()?;
                *events.entry("worker SIGKILL + restart").or_default() += 1;
            }
            45..75 => {
                signal(&procs.workers[i], libc::SIGTERM);
                let _ = procs.workers[i].wait();
                procs.workers[i] = procs.worker()?;
                *events.entry("worker SIGTERM + restart").or_default() += 1;
            }
            75..88 if can_restart_redis => {
                if let Some(redis) = stack.redis.as_mut() {
                    redis.restart_empty()?;
                }
                *events.entry("redis restart without data").or_default() += 1;
            }
            75..82 if let Some(cluster) = cluster.as_mut() => {
                // One failover at a time: the cluster heals before the next.
                tokio::task::block_in_place(|| kill_a_master(cluster))?;
                *events.entry("cluster master SIGKILL + rejoin").or_default() += 1;
            }
            82..88 if let Some(cluster) = cluster.as_ref() => {
                tokio::task::block_in_place(|| reshard(cluster))?;
                *events.entry("cluster reshard (200 slots)").or_default() += 1;
            }
            _ => {
                if let Some(mut reaper) = procs.reaper.take() {
                    signal(&reaper, libc::SIGKILL);
                    let _ = reaper.wait();
                }
                procs.reaper = Some(procs.reaper()?);
                *events.entry("reaper SIGKILL + restart").or_default() += 1;
            }
        }
    }
    load.await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let load_secs = started.elapsed().as_secs_f64();

    // Drain: every accepted run must reach a terminal state.
    let drain_started = Instant::now();
    let mut active: i64;
    loop {
        active = opsrun::sqlx::query_scalar(
            "SELECT count(*) FROM operation_runs WHERE status <> 'completed'",
        )
        .fetch_one(&pool)
        .await?;
        if active == 0 || drain_started.elapsed() > Duration::from_secs(180) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let drain_secs = drain_started.elapsed().as_secs_f64();
    for w in &procs.workers {
        signal(w, libc::SIGTERM);
    }
    for w in &mut procs.workers {
        let _ = w.wait();
    }
    if let Some(mut reaper) = procs.reaper.take() {
        signal(&reaper, libc::SIGTERM);
        let _ = reaper.wait();
    }

    let audit = audit(&pool, &executions).await?;
    println!("\nfaults during {load_secs:.0}s of load:");
    for (event, count) in &events {
        println!("  {event:<32} {count}");
    }
    println!(
        "\nruns accepted                      {}",
        accepted.load(Ordering::Relaxed)
    );
    println!(
        "  of which dispatch failed (told)  {}",
        dispatch_failed.load(Ordering::Relaxed)
    );
    println!(
        "starts deduplicated                {}",
        deduplicated.load(Ordering::Relaxed)
    );
    println!(
        "starts refused (errors)            {}",
        start_errors.load(Ordering::Relaxed)
    );
    println!("runs in the ledger                 {}", audit.total);
    for (state, count) in &audit.outcomes {
        println!("  {state:<32} {count}");
    }
    println!("lost (still active after a {drain_secs:.0}s drain) {active}");
    println!(
        "executed more than once            {} (max {} executions of one run)",
        audit.executed_twice, audit.max_executions
    );
    println!("reclaims by reason                 {:?}", audit.reclaims);
    let _ = std::fs::remove_dir_all(&dir);
    if active > 0 {
        bail!("{active} runs were lost");
    }
    Ok(())
}

struct Audit {
    total: i64,
    outcomes: Vec<(String, i64)>,
    executed_twice: usize,
    max_executions: usize,
    reclaims: Vec<(String, i64)>,
}

async fn audit(pool: &opsrun::sqlx::PgPool, executions: &Path) -> Result<Audit> {
    let outcomes: Vec<(String, i64)> = opsrun::sqlx::query_as(
        "SELECT outcome, count(*) FROM operation_runs GROUP BY outcome ORDER BY outcome",
    )
    .fetch_all(pool)
    .await?;
    let reclaims: Vec<(String, i64)> = opsrun::sqlx::query_as(
        "SELECT r->>'reason', count(*) FROM operation_runs, jsonb_array_elements(reclaims) r GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(pool)
    .await?;
    let mut per_run: HashMap<String, usize> = HashMap::new();
    for line in std::fs::read_to_string(executions)
        .unwrap_or_default()
        .lines()
    {
        if let Some(run) = line.split(' ').next() {
            *per_run.entry(run.to_string()).or_default() += 1;
        }
    }
    Ok(Audit {
        total: outcomes.iter().map(|o| o.1).sum(),
        outcomes,
        executed_twice: per_run.values().filter(|&&n| n > 1).count(),
        max_executions: per_run.values().copied().max().unwrap_or(0),
        reclaims,
    })
}

/// SIGKILL a random master, wait for its replica to take over, then start
/// it again (it rejoins as a replica) and wait until every replica is in
/// sync.
fn kill_a_master(cluster: &mut devstack::RedisCluster) -> Result<()> {
    let masters = cluster.master_ports();
    let victim = masters[rand::rng().random_range(0..masters.len())];
    cluster.kill(victim);
    let promoted = devstack::wait_until(Duration::from_secs(30), || {
        let masters = cluster.master_ports();
        masters.len() == 3 && !masters.contains(&victim)
    });
    if !promoted {
        bail!("no replica took over from the master on port {victim}");
    }
    cluster.restart(victim)?;
    if !devstack::wait_until(Duration::from_secs(60), || cluster.healthy()) {
        bail!("the cluster did not heal after the master on port {victim} rejoined");
    }
    Ok(())
}

/// Move 200 slots from a random master to another.
fn reshard(cluster: &devstack::RedisCluster) -> Result<()> {
    let masters = cluster.master_ports();
    let from = rand::rng().random_range(0..masters.len());
    let to = (from + rand::rng().random_range(1..masters.len())) % masters.len();
    cluster.reshard(masters[from], masters[to], 200)
}

fn write_handlers(dir: &Path, executions: &Path, shards: i16) -> Result<()> {
    let mut toml = String::from("[defaults]\ntime_limit = \"30s\"\nlease = \"5s\"\n");
    toml.push_str(&format!("[queues.default]\nshards = {shards}\n"));
    for (name, _, body) in TYPES {
        toml.push_str(&format!(
            "[types.\"{name}\"]\ncommand = [\"sh\", \"-c\", '''echo \"$OPSRUN_RUN_ID $OPSRUN_ATTEMPT\" >> {}; {body}''']\n",
            executions.display()
        ));
    }
    std::fs::write(dir.join("handlers.toml"), toml)?;
    Ok(())
}
