//! What the opsrun binaries share on their command line: the connection
//! flags (each with its environment variable; secrets may come from `*_FILE`
//! so they never need to be on argv), durations, the documented exit codes
//! and how library errors map to them, and logging. The library itself never
//! reads argv or the environment.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use opsrun::config::{DEFAULT_CONNECT_TIMEOUT, connect_postgres, postgres_options, resolve_secret};
use opsrun::sqlx::PgPool;
use opsrun::sqlx::postgres::PgConnectOptions;
use opsrun::{Error, Ledger, Pooler, TransportConfig};

mod metrics;
pub mod traces;
pub use metrics::MetricsArgs;
pub use traces::Traces;

/// Exit codes shared by every binary (each documents the ones it uses).
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// Unexpected error.
    pub const INTERNAL: u8 = 1;
    /// Invalid input or configuration; nothing was written.
    pub const INVALID: u8 = 2;
    /// The run was recorded but its dispatch failed (`queue.dispatch_failed`).
    pub const DISPATCH_FAILED: u8 = 3;
    /// Postgres unreachable.
    pub const DATABASE_UNAVAILABLE: u8 = 4;
    /// Redis unreachable.
    pub const REDIS_UNAVAILABLE: u8 = 5;
    /// TLS refused, with Redis or Postgres: a server's certificate is not
    /// trusted (unknown CA, wrong name, expired), or one side requires TLS
    /// and the other does not use it. A configuration problem, not an outage.
    pub const TLS_REFUSED: u8 = 7;
}

/// The exit code for a Redis error at start: refused credentials or ACL
/// rights (invalid configuration), an untrusted certificate, or Redis
/// unreachable.
pub fn redis_failure(e: Error) -> Failure {
    if e.is_refused_credentials() {
        return Failure::new(
            exit::INVALID,
            format!("redis refused the credentials or ACL rights in REDIS_URL: {e}"),
        );
    }
    let code = if e.is_tls_refused() {
        exit::TLS_REFUSED
    } else {
        exit::REDIS_UNAVAILABLE
    };
    Failure::new(code, e.to_string())
}

/// The exit code for a Postgres error at start: TLS refused, or Postgres
/// unreachable.
pub fn postgres_failure(e: Error) -> Failure {
    let code = if e.is_tls_refused() {
        exit::TLS_REFUSED
    } else {
        exit::DATABASE_UNAVAILABLE
    };
    Failure::new(code, e.to_string())
}

/// Where Postgres is.
#[derive(Args, Debug, Clone)]
pub struct DatabaseArgs {
    /// Postgres URL. Prefer the environment or --database-url-file: argv is visible to every user.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// File holding the Postgres URL (for mounted secrets).
    #[arg(long, env = "DATABASE_URL_FILE")]
    pub database_url_file: Option<PathBuf>,
    /// How long to wait for a Postgres connection.
    #[arg(long, env = "OPSRUN_CONNECT_TIMEOUT", default_value = "5s", value_parser = duration)]
    pub connect_timeout: Duration,
    /// What sits between opsrun and Postgres: `direct` (nothing, or a
    /// session pooler) or `transaction` (a transaction-mode pooler such as
    /// PgBouncer with pool_mode = transaction: each statement is sent
    /// unnamed in its own transaction; migrations then need a direct URL).
    #[arg(long, env = "OPSRUN_DATABASE_POOLER", default_value = "direct")]
    pub database_pooler: Pooler,
}

impl DatabaseArgs {
    /// The parsed connection options (no I/O).
    pub fn options(&self) -> Result<PgConnectOptions, Failure> {
        let url = resolve_secret(
            "database_url",
            self.database_url.as_deref(),
            self.database_url_file.as_deref(),
        )?;
        Ok(postgres_options(&url)?)
    }

    /// Connect a pool of at most `max_connections`.
    pub async fn connect(&self, max_connections: u32) -> Result<PgPool, Failure> {
        Ok(connect_postgres(self.options()?, max_connections, self.timeout()).await?)
    }

    /// A ledger over a pool of at most `max_connections`, behind the
    /// configured pooler.
    pub async fn ledger(&self, max_connections: u32) -> Result<Ledger, Failure> {
        Ok(self.ledger_over(self.connect(max_connections).await?))
    }

    /// A ledger over `pool` (connected with [`DatabaseArgs::options`]),
    /// behind the configured pooler.
    pub fn ledger_over(&self, pool: PgPool) -> Ledger {
        Ledger::behind(pool, self.database_pooler)
    }

    /// For a service or a migration (not a one-shot command: it costs two
    /// connections): refuse to go on when `direct` is configured and the
    /// connections turn out to go through a transaction-mode pooler, where
    /// cached statements would fail or mix up and a migration's lock would be
    /// left held.
    pub async fn refuse_unconfigured_pooler(&self) -> Result<(), Failure> {
        if self.database_pooler == Pooler::Transaction {
            return Ok(());
        }
        let found = opsrun::behind_transaction_pooler(&self.options()?, self.timeout())
            .await
            .map_err(postgres_failure)?;
        if found {
            return Err(Failure::new(
                exit::INVALID,
                "DATABASE_URL goes through a transaction-mode pooler (a connection did not keep its \
                 Postgres backend): set OPSRUN_DATABASE_POOLER=transaction (--database-pooler \
                 transaction) and run `producer migrate` over a direct DATABASE_URL",
            ));
        }
        Ok(())
    }

    /// The connect timeout.
    pub fn timeout(&self) -> Duration {
        if self.connect_timeout.is_zero() {
            DEFAULT_CONNECT_TIMEOUT
        } else {
            self.connect_timeout
        }
    }
}

/// Where Redis is, and the key prefix.
#[derive(Args, Debug, Clone)]
pub struct RedisArgs {
    /// Redis URL. Prefer the environment or --redis-url-file.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// File holding the Redis URL.
    #[arg(long, env = "REDIS_URL_FILE")]
    pub redis_url_file: Option<PathBuf>,
    /// Redis key prefix.
    #[arg(long, env = "OPSRUN_PREFIX", default_value = opsrun::transport::DEFAULT_PREFIX)]
    pub prefix: String,
    /// CA certificates (PEM) to verify a rediss:// server with, instead of
    /// the system's roots.
    #[arg(long, env = "REDIS_CA_FILE")]
    pub redis_ca_file: Option<PathBuf>,
}

impl RedisArgs {
    /// A transport configuration with default timeouts (no I/O).
    pub fn transport_config(&self) -> Result<TransportConfig, Failure> {
        let url = resolve_secret(
            "redis_url",
            self.redis_url.as_deref(),
            self.redis_url_file.as_deref(),
        )?;
        let mut config = TransportConfig::new(url);
        config.prefix = self.prefix.clone();
        config.ca_file = self.redis_ca_file.clone();
        Ok(config)
    }
}

/// Where the type registry is.
#[derive(Args, Debug, Clone)]
pub struct RegistryArgs {
    /// Type registry (TOML): queue, identity rule, time limit, lease, attempts, backoff and handler per type.
    #[arg(long, env = "OPSRUN_REGISTRY", visible_alias = "handlers")]
    pub registry: Option<PathBuf>,
}

impl RegistryArgs {
    /// The validated registry, or the defaults when none is given.
    pub fn load(&self) -> Result<opsrun::registry::Registry, Failure> {
        match &self.registry {
            Some(path) => Ok(opsrun::registry::Registry::load(path)?),
            None => Ok(opsrun::registry::Registry::default()),
        }
    }
}

/// Parse a positive duration such as `250ms`, `5s` or `15m`.
pub fn duration(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err("must be longer than zero".into()),
        Err(e) => Err(format!(
            "{s:?} is not a duration like 250ms, 5s or 15m: {e}"
        )),
    }
}

/// A failure with its exit code and a one-line, sanitized message.
#[derive(Debug)]
pub struct Failure {
    /// The exit code.
    pub code: u8,
    /// What went wrong.
    pub message: String,
}

impl Failure {
    /// A failure with `code`.
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }

    /// Print the message to stderr and return the exit code.
    pub fn report(self) -> ExitCode {
        eprintln!("error: {}", opsrun::sanitize::redact(&self.message));
        ExitCode::from(self.code)
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let code = match &e {
            Error::Invalid { .. } | Error::TransactionPooler { .. } => exit::INVALID,
            e if e.is_tls_refused() => exit::TLS_REFUSED,
            e if e.is_database_unavailable() => exit::DATABASE_UNAVAILABLE,
            Error::Redis { .. } | Error::RedisPool { .. } | Error::RedisTimeout { .. } => {
                exit::REDIS_UNAVAILABLE
            }
            _ => exit::INTERNAL,
        };
        let message = match &e {
            Error::Database {
                source: opsrun::sqlx::Error::Database(db),
                ..
            } if db.code().as_deref() == Some("42P01") => {
                format!("{e} (the schema is missing: run `producer migrate` first)")
            }
            _ => e.to_string(),
        };
        Failure { code, message }
    }
}

/// Run a binary's `main`: build the runtime (one thread for short-lived
/// commands, a pool otherwise), run `body`, and turn its result into the
/// exit code, printing a failure's message to stderr.
pub fn run_main<F>(single_thread: bool, body: F) -> ExitCode
where
    F: std::future::Future<Output = Result<u8, Failure>>,
{
    let runtime = if single_thread {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Runtime::new()
    };
    match runtime {
        Ok(runtime) => match runtime.block_on(body) {
            Ok(code) => ExitCode::from(code),
            Err(failure) => failure.report(),
        },
        Err(e) => Failure::new(exit::INTERNAL, format!("starting the runtime: {e}")).report(),
    }
}

/// How the binaries log (to stderr).
#[derive(Args, Debug, Clone)]
pub struct LogArgs {
    /// Log format: text, for people, or json, one object per line with the
    /// event's fields at the top and its span's (run_id, tenant_id, type,
    /// attempt, queue while a run is handled) under "span".
    #[arg(
        long,
        env = "OPSRUN_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,
}

/// See [`LogArgs`].
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// JSON lines.
    Json,
}

impl LogArgs {
    /// Log to stderr in the chosen format, filtered by `RUST_LOG` or
    /// `default_filter`, and export spans when the `OTEL_*` variables ask
    /// for it (see [`traces`]) under `service`'s name. Keep the returned
    /// pipeline until exit: dropping it flushes the spans not yet sent.
    pub fn init(&self, default_filter: &str, service: &str) -> Result<Option<Traces>, Failure> {
        use tracing_subscriber::Layer as _;
        use tracing_subscriber::layer::SubscriberExt as _;
        use tracing_subscriber::util::SubscriberInitExt as _;

        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| default_filter.into());
        let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
        let logs = match self.log_format {
            LogFormat::Text => logs.with_filter(filter).boxed(),
            LogFormat::Json => logs
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false)
                .with_filter(filter)
                .boxed(),
        };
        let (traces, spans) = match traces::pipeline(service)? {
            // Spans are exported at info and above whatever RUST_LOG keeps
            // in the logs (a run's span is info); events become span events
            // from warn up only (see `WarningEvents`).
            Some((traces, tracer)) => (
                Some(traces),
                Some(
                    traces::WarningEvents(
                        tracing_opentelemetry::layer()
                            .with_tracer(tracer)
                            // Per-poll timing, thread ids, source
                            // locations and module paths cost on every
                            // span and say little about a run.
                            .with_tracked_inactivity(false)
                            .with_threads(false)
                            .with_location(false)
                            .with_target(false),
                    )
                    .with_filter(tracing_subscriber::filter::LevelFilter::INFO),
                ),
            ),
            None => (None, None),
        };
        tracing_subscriber::registry().with(logs).with(spans).init();
        Ok(traces)
    }
}
