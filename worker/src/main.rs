//! `worker`: joins the consumer group of its queues and runs jobs inside the
//! run lifecycle until SIGTERM/SIGINT, then drains.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use opsrun::config::{connect_postgres, postgres_options, resolve_secret};
use opsrun::{Error, Ledger, Transport, TransportConfig};
use opsrun_worker::consumer::{self, WorkerConfig};
use opsrun_worker::handlers::HandlersFile;
use tokio_util::sync::CancellationToken;

mod exit {
    pub const OK: u8 = 0;
    pub const INTERNAL: u8 = 1;
    pub const INVALID: u8 = 2;
    pub const DATABASE_UNAVAILABLE: u8 = 4;
    pub const REDIS_UNAVAILABLE: u8 = 5;
}

const EXIT_CODES: &str = "\
Exit codes:
  0  stopped by SIGTERM/SIGINT after draining in-flight jobs
  1  unexpected error
  2  invalid configuration (flags, environment or handlers file)
  4  Postgres unreachable for the whole --startup-timeout
  5  Redis unreachable for the whole --startup-timeout";

#[derive(Parser)]
#[command(name = "worker", version, about = "Run opsrun jobs from Redis Streams inside the run lifecycle", after_help = EXIT_CODES)]
struct Cli {
    /// Queues to consume, comma-separated (default: the handlers file's queues and "default").
    #[arg(long, env = "OPSRUN_QUEUES", value_delimiter = ',')]
    queues: Vec<String>,
    /// Jobs run at once.
    #[arg(long, env = "OPSRUN_CONCURRENCY", default_value_t = consumer::DEFAULT_CONCURRENCY as u16,
          value_parser = clap::value_parser!(u16).range(1..=4096))]
    concurrency: u16,
    /// Handlers file (TOML): exec command, time limit and queue per run type.
    #[arg(long, env = "OPSRUN_HANDLERS")]
    handlers: Option<PathBuf>,
    /// Do not apply migrations at start.
    #[arg(long, env = "OPSRUN_NO_MIGRATE")]
    no_migrate: bool,
    /// Postgres URL. Prefer the environment or --database-url-file.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// File holding the Postgres URL.
    #[arg(long, env = "DATABASE_URL_FILE")]
    database_url_file: Option<PathBuf>,
    /// Redis URL. Prefer the environment or --redis-url-file.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    redis_url: Option<String>,
    /// File holding the Redis URL.
    #[arg(long, env = "REDIS_URL_FILE")]
    redis_url_file: Option<PathBuf>,
    /// Redis key prefix.
    #[arg(long, env = "OPSRUN_PREFIX", default_value = opsrun::transport::DEFAULT_PREFIX)]
    prefix: String,
    /// Postgres connections (claims, heartbeats and completions are short).
    #[arg(long, env = "OPSRUN_DB_POOL_SIZE", default_value_t = 10)]
    db_pool_size: u32,
    /// Time in-flight jobs get to finish after SIGTERM/SIGINT.
    #[arg(long, env = "OPSRUN_SHUTDOWN_GRACE", default_value = "30s", value_parser = duration)]
    shutdown_grace: Duration,
    /// Interval of the batched Postgres heartbeat.
    #[arg(long, env = "OPSRUN_HEARTBEAT_INTERVAL", default_value = "5s", value_parser = duration)]
    heartbeat_interval: Duration,
    /// BLOCK time of one stream read.
    #[arg(long, env = "OPSRUN_BLOCK", default_value = "2s", value_parser = duration)]
    block: Duration,
    /// How long to keep trying Postgres and Redis at start.
    #[arg(long, env = "OPSRUN_STARTUP_TIMEOUT", default_value = "60s", value_parser = duration)]
    startup_timeout: Duration,
}

fn duration(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err("must be longer than zero".into()),
        Err(e) => Err(format!("{s:?} is not a duration like 500ms, 5s or 1m: {e}")),
    }
}

struct Failure(u8, String);

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let code = match &e {
            Error::Invalid { .. } => exit::INVALID,
            e if e.is_database_unavailable() => exit::DATABASE_UNAVAILABLE,
            _ => exit::INTERNAL,
        };
        Failure(code, opsrun::sanitize::redact(&e.to_string()))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    // A job's panic message is job data: log it sanitized, like every failure.
    std::panic::set_hook(Box::new(|info| {
        tracing::error!(panic = %opsrun::sanitize::redact(&info.to_string()), "a task panicked");
    }));
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::from(exit::INTERNAL);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::from(exit::OK),
        Err(Failure(code, message)) => {
            eprintln!("error: {message}");
            ExitCode::from(code)
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    // Configuration is validated whole before anything is contacted.
    let handlers = match &cli.handlers {
        Some(path) => {
            HandlersFile::load(path).map_err(|e| Failure(exit::INVALID, e.to_string()))?
        }
        None => HandlersFile::parse("").map_err(|e| Failure(exit::INVALID, e))?,
    };
    let mut queues = cli.queues.clone();
    if queues.is_empty() {
        queues.push(handlers.default_queue.clone());
        queues.extend(handlers.types.values().map(|t| t.queue.clone()));
    }
    queues.sort();
    queues.dedup();
    for queue in &queues {
        opsrun::request::validate_queue(queue)?;
    }
    let database_url = resolve_secret(
        "database_url",
        cli.database_url.as_deref(),
        cli.database_url_file.as_deref(),
    )?;
    let pg_options = postgres_options(&database_url)?;
    let redis_url = resolve_secret(
        "redis_url",
        cli.redis_url.as_deref(),
        cli.redis_url_file.as_deref(),
    )?;
    let mut transport_config = TransportConfig::new(redis_url);
    transport_config.prefix = cli.prefix.clone();
    let transport = Transport::new(&transport_config)?;

    let shutdown = CancellationToken::new();
    tokio::spawn(watch_signals(shutdown.clone()));

    let pool = retry_at_start("postgres", cli.startup_timeout, &shutdown, || {
        connect_postgres(
            pg_options.clone(),
            cli.db_pool_size.max(2),
            Duration::from_secs(5),
        )
    })
    .await
    .map_err(|e| Failure(exit::DATABASE_UNAVAILABLE, e.to_string()))?;
    let ledger = Ledger::new(pool);
    if !cli.no_migrate {
        ledger.migrate().await?;
    }
    for queue in &queues {
        retry_at_start("redis", cli.startup_timeout, &shutdown, || {
            transport.ensure_group(queue)
        })
        .await
        .map_err(|e| Failure(exit::REDIS_UNAVAILABLE, e.to_string()))?;
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
    let lifecycle = Arc::new(opsrun_worker::lifecycle_for(
        ledger.clone(),
        transport.clone(),
        &holder,
        &handlers,
    ));
    let config = WorkerConfig {
        queues,
        concurrency: usize::from(cli.concurrency),
        block: cli.block,
        heartbeat_interval: cli.heartbeat_interval,
        shutdown_grace: cli.shutdown_grace,
    };
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
            Err(e)
                if tokio::time::Instant::now() + delay < deadline && !shutdown.is_cancelled() =>
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
