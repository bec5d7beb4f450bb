//! `worker`: joins the consumer group of its queues and runs jobs inside the
//! run lifecycle until SIGTERM/SIGINT, then drains.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use opsrun::Transport;
use opsrun::config::connect_postgres;
use opsrun_cli::{
    DatabaseArgs, Failure, LogArgs, MetricsArgs, RedisArgs, RegistryArgs, duration, exit,
};
use opsrun_worker::consumer::{self, WorkerConfig};
use opsrun_worker::isolation;
use tokio_util::sync::CancellationToken;

/// mimalloc rather than the system allocator: a job's claim, row decoding,
/// completion and acknowledgement allocate and free many small buffers
/// across the runtime's threads, and glibc's malloc was about a third of
/// the worker's CPU in `make bench`'s end to end (perf).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EXIT_CODES: &str = "\
Exit codes:
  0  stopped by SIGTERM/SIGINT after draining in-flight jobs
  1  unexpected error
  2  invalid configuration (flags, environment or type registry)
  4  Postgres unreachable for the whole --startup-timeout
  5  Redis unreachable for the whole --startup-timeout
  7  TLS refused by Redis or Postgres: a certificate not trusted (CA, host
     name), or TLS required by one side and not used by the other";

#[derive(Parser)]
#[command(name = "worker", version, about = "Run opsrun jobs from Redis Streams inside the run lifecycle", after_help = EXIT_CODES)]
struct Cli {
    /// Queues to consume, comma-separated (default: every queue of the registry).
    #[arg(long, env = "OPSRUN_QUEUES", value_delimiter = ',')]
    queues: Vec<String>,
    /// Jobs run at once.
    #[arg(long, env = "OPSRUN_CONCURRENCY", default_value_t = consumer::DEFAULT_CONCURRENCY as u16,
          value_parser = clap::value_parser!(u16).range(1..=4096))]
    concurrency: u16,
    /// Runs claimed ahead of free slots, beyond --concurrency: they count as
    /// running (started, heartbeated) from their claim and wait here for a
    /// slot. For many short jobs: fewer, larger claims. Keep 0 for long
    /// jobs, which would hold runs that another worker could start.
    #[arg(long, env = "OPSRUN_PREFETCH", default_value_t = 0,
          value_parser = clap::value_parser!(u16).range(0..=4096))]
    prefetch: u16,
    #[command(flatten)]
    registry: RegistryArgs,
    /// Do not apply migrations at start.
    #[arg(long, env = "OPSRUN_NO_MIGRATE")]
    no_migrate: bool,
    /// Postgres connections (at least 3: the claim and completion loops each
    /// keep one, heartbeats and retries share the rest).
    #[arg(long, env = "OPSRUN_DB_POOL_SIZE", default_value_t = 10)]
    db_pool_size: u32,
    /// Time in-flight jobs get to finish after SIGTERM/SIGINT.
    #[arg(long, env = "OPSRUN_SHUTDOWN_GRACE", default_value = "30s", value_parser = duration)]
    shutdown_grace: Duration,
    /// Interval of the batched Postgres heartbeat.
    #[arg(long, env = "OPSRUN_HEARTBEAT_INTERVAL", default_value = "5s", value_parser = duration)]
    heartbeat_interval: Duration,
    /// How often to ask whether a running run was cancelled.
    #[arg(long, env = "OPSRUN_CANCEL_CHECK", default_value = "1s", value_parser = duration)]
    cancel_check: Duration,
    /// Time a cancelled job gets to stop on its own (an exec job's process
    /// group has had SIGTERM) before it is killed.
    #[arg(long, env = "OPSRUN_CANCEL_GRACE", default_value = "10s", value_parser = duration)]
    cancel_grace: Duration,
    /// BLOCK time of one stream read.
    #[arg(long, env = "OPSRUN_BLOCK", default_value = "2s", value_parser = duration)]
    block: Duration,
    /// How long to keep trying Postgres and Redis at start.
    #[arg(long, env = "OPSRUN_STARTUP_TIMEOUT", default_value = "60s", value_parser = duration)]
    startup_timeout: Duration,
    #[command(flatten)]
    redis: RedisArgs,
    #[command(flatten)]
    database: DatabaseArgs,
    #[command(flatten)]
    metrics: MetricsArgs,
    #[command(flatten)]
    log: LogArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Kept to the end of main: dropping it flushes the spans not yet sent.
    let _traces = match cli.log.init("info", "opsrun-worker") {
        Ok(traces) => traces,
        Err(failure) => return failure.report(),
    };
    // A job's panic message is job data: log it sanitized, like every failure.
    std::panic::set_hook(Box::new(|info| {
        tracing::error!(panic = %opsrun::sanitize::redact(&info.to_string()), "a task panicked");
    }));
    // Jobs must not reach the worker's credentials: what they may inherit
    // is kept aside, then the secrets leave the environment, before any
    // thread starts.
    if let Err(e) = isolation::make_undumpable() {
        tracing::warn!(error = %e, "could not make the worker undumpable");
    }
    let worker_env = isolation::snapshot_env();
    // SAFETY: no other thread runs yet (the runtime starts below).
    let forgotten = unsafe { isolation::forget_secret_env() };
    tracing::debug!(?forgotten, "secret variables removed from the environment");
    opsrun_cli::run_main(false, async {
        run(cli, worker_env).await.map(|()| exit::OK)
    })
}

async fn run(cli: Cli, worker_env: BTreeMap<String, String>) -> Result<(), Failure> {
    // Configuration is validated whole before anything is contacted.
    let registry = cli.registry.load()?;
    opsrun_worker::check_handlers(&registry).map_err(|e| Failure::new(exit::INVALID, e))?;
    let mut queues = cli.queues.clone();
    if queues.is_empty() {
        queues = registry.queues();
    }
    queues.sort();
    queues.dedup();
    for queue in &queues {
        opsrun::request::validate_queue(queue)?;
    }
    let pg_options = cli.database.options()?;
    let transport = Transport::new(&cli.redis.transport_config()?)?;
    cli.metrics.install("worker")?;
    opsrun::telemetry::worker_concurrency(cli.concurrency);

    let shutdown = CancellationToken::new();
    tokio::spawn(watch_signals(shutdown.clone()));

    let pool = retry_at_start("postgres", cli.startup_timeout, &shutdown, || {
        connect_postgres(
            pg_options.clone(),
            cli.db_pool_size.max(3),
            cli.database.timeout(),
        )
    })
    .await
    .map_err(opsrun_cli::postgres_failure)?;
    cli.database.refuse_unconfigured_pooler().await?;
    let ledger = cli.database.ledger_over(pool);
    if !cli.no_migrate {
        // Postgres going away mid-migration (a restart) is waited out like
        // an unreachable Postgres; a migration that fails on its own is not.
        retry_at_start("postgres", cli.startup_timeout, &shutdown, || async {
            match ledger.migrate().await {
                Err(e) if e.is_database_unavailable() => Err(e),
                applied => Ok(applied),
            }
        })
        .await
        .map_err(opsrun_cli::postgres_failure)??;
    }
    let config = WorkerConfig {
        queues,
        shards: registry.shards.clone(),
        concurrency: usize::from(cli.concurrency),
        block: cli.block,
        heartbeat_interval: cli.heartbeat_interval,
        shutdown_grace: cli.shutdown_grace,
        cancel_check: cli.cancel_check,
        prefetch: usize::from(cli.prefetch),
    };
    for stream in config.streams() {
        retry_at_start("redis", cli.startup_timeout, &shutdown, || {
            transport.ensure_group(&stream)
        })
        .await
        .map_err(opsrun_cli::redis_failure)?;
    }
    match transport.maxmemory_policy().await {
        Ok(policy) if policy != "noeviction" => tracing::warn!(
            policy,
            "redis maxmemory-policy is not noeviction: Redis may evict streams under memory pressure \
             (runs stay safe in Postgres, but are delayed until the reaper re-dispatches them)"
        ),
        _ => {}
    }

    let holder = consumer::consumer_name();
    let lifecycle = opsrun_worker::lifecycle_for(
        ledger.clone(),
        transport.clone(),
        &holder,
        &registry,
        &worker_env,
        u32::from(cli.concurrency),
    )
    .map_err(|e| Failure::new(exit::INVALID, e))?
    .cancel_grace(cli.cancel_grace);
    let lifecycle = Arc::new(lifecycle);
    consumer::run(lifecycle, ledger, transport, config, shutdown).await;
    Ok(())
}

/// Retry `connect` with backoff until it succeeds, `timeout` passes or
/// shutdown is requested (compose may start workers before their servers).
async fn retry_at_start<T, F, Fut>(
    what: &str,
    timeout: Duration,
    shutdown: &CancellationToken,
    mut connect: F,
) -> opsrun::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = opsrun::Result<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut delay = Duration::from_millis(200);
    loop {
        match connect().await {
            Ok(v) => return Ok(v),
            // An untrusted certificate or refused credentials do not fix
            // themselves: no waiting.
            Err(e)
                if tokio::time::Instant::now() + delay < deadline
                    && !shutdown.is_cancelled()
                    && !e.is_tls_refused()
                    && !e.is_refused_credentials() =>
            {
                tracing::warn!(error = %opsrun::sanitize::redact(&e.to_string()), retry_in_ms = delay.as_millis() as u64, "{what} not reachable yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// First SIGTERM/SIGINT: drain. A second one: exit at once (runs in flight
/// are left to the reaper, as after a crash).
async fn watch_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::info!("shutdown requested: no new jobs; draining in-flight jobs");
    shutdown.cancel();
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::warn!("second signal: exiting now");
    std::process::exit(130);
}
