//! `producer`: other services invoke it to start a run. It validates the
//! request before any I/O, ensures the run (dedupe), dispatches it, and prints
//! one JSON object describing the run.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use opsrun::config::{DEFAULT_CONNECT_TIMEOUT, connect_postgres, postgres_options, resolve_secret};
use opsrun::request::{parse_json_object, parse_positive_id, validate_queue, validate_type};
use opsrun::service::view_url;
use opsrun::{
    Dispatch, Error, Initiator, Ledger, RunRequest, RunService, Transport, TransportConfig,
};
use serde_json::json;

/// Documented exit codes.
mod exit {
    pub const OK: u8 = 0;
    pub const INTERNAL: u8 = 1;
    pub const INVALID: u8 = 2;
    pub const DISPATCH_FAILED: u8 = 3;
    pub const DATABASE_UNAVAILABLE: u8 = 4;
}

const EXIT_CODES: &str = "\
Exit codes:
  0  run created and dispatched, or an active run with the same identity returned (deduplicated)
  1  unexpected error (a statement was rejected, migrations missing, ...)
  2  invalid input or configuration; nothing was written
  3  dispatch to Redis failed; the run is recorded as completed/failed with
     queue.dispatch_failed and its JSON is still printed
  4  Postgres unreachable; nothing was written";

#[derive(Parser)]
#[command(name = "producer", version, about = "Start opsrun runs: validate, ensure (dedupe), dispatch", after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a run (or return the active one with the same identity) and dispatch it.
    #[command(after_help = EXIT_CODES)]
    Enqueue(Box<EnqueueArgs>),
    /// Apply the database migrations.
    #[command(after_help = EXIT_CODES)]
    Migrate(DatabaseArgs),
}

#[derive(Args)]
struct DatabaseArgs {
    /// Postgres URL. Prefer the environment or --database-url-file: argv is visible to every user.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// File holding the Postgres URL (for mounted secrets).
    #[arg(long, env = "DATABASE_URL_FILE")]
    database_url_file: Option<PathBuf>,
    /// How long to wait for Postgres, e.g. "5s".
    #[arg(long, env = "OPSRUN_CONNECT_TIMEOUT", default_value = "5s", value_parser = humantime_duration)]
    connect_timeout: Duration,
}

#[derive(Args)]
struct EnqueueArgs {
    /// Tenant id (positive integer).
    #[arg(long, value_parser = |s: &str| parse_positive_id("tenant_id", s).map_err(|e| e.to_string()))]
    tenant: i64,
    /// Run type: lowercase dotted segments such as inventory.sync.
    #[arg(long = "type", value_parser = |s: &str| validate_type(s).map(|_| s.to_string()).map_err(|e| e.to_string()))]
    run_type: String,
    /// Job inputs as a JSON object (part of the run identity).
    #[arg(long, conflicts_with = "inputs_file")]
    inputs: Option<String>,
    /// File with the job inputs as a JSON object ("-" for stdin).
    #[arg(long)]
    inputs_file: Option<PathBuf>,
    /// Initiating user id; omit for system runs.
    #[arg(long, requires = "initiator_name", value_parser = |s: &str| parse_positive_id("user_id", s).map_err(|e| e.to_string()))]
    user_id: Option<i64>,
    /// Snapshot of the initiating user's name (required with --user-id).
    #[arg(long)]
    initiator_name: Option<String>,
    /// Context as a JSON object (links, scopes; not part of the identity).
    #[arg(long)]
    context: Option<String>,
    /// Queue to dispatch on.
    #[arg(long, env = "OPSRUN_QUEUE", default_value = opsrun::request::DEFAULT_QUEUE,
          value_parser = |s: &str| validate_queue(s).map(|_| s.to_string()).map_err(|e| e.to_string()))]
    queue: String,
    /// Redis URL. Prefer the environment or --redis-url-file.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    redis_url: Option<String>,
    /// File holding the Redis URL.
    #[arg(long, env = "REDIS_URL_FILE")]
    redis_url_file: Option<PathBuf>,
    /// Redis key prefix.
    #[arg(long, env = "OPSRUN_PREFIX", default_value = opsrun::transport::DEFAULT_PREFIX)]
    prefix: String,
    /// How long the XADD may take before the dispatch counts as failed, e.g. "2s".
    #[arg(long, env = "OPSRUN_DISPATCH_TIMEOUT", default_value = "2s", value_parser = humantime_duration)]
    dispatch_timeout: Duration,
    /// Base URL of Monitoring → Operations, for view_url.
    #[arg(
        long,
        env = "OPSRUN_MONITOR_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    monitor_url: String,
    #[command(flatten)]
    database: DatabaseArgs,
}

fn humantime_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration like 250ms, 2s or 5m: {e}"))
}

/// A failure with the exit code it maps to and its message (one line; the
/// library's errors already include their causes).
struct Failure {
    code: u8,
    message: String,
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let code = match &e {
            Error::Invalid { .. } => exit::INVALID,
            e if e.is_database_unavailable() => exit::DATABASE_UNAVAILABLE,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::from(exit::INTERNAL);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Enqueue(args) => enqueue(*args).await,
            Command::Migrate(args) => migrate(args).await,
        }
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(Failure { code, message }) => {
            eprintln!("error: {}", opsrun::sanitize::redact(&message));
            ExitCode::from(code)
        }
    }
}

async fn connect(args: &DatabaseArgs, max_connections: u32) -> Result<Ledger, Failure> {
    let url = resolve_secret(
        "database_url",
        args.database_url.as_deref(),
        args.database_url_file.as_deref(),
    )?;
    let options = postgres_options(&url)?;
    let timeout = if args.connect_timeout.is_zero() {
        DEFAULT_CONNECT_TIMEOUT
    } else {
        args.connect_timeout
    };
    Ok(Ledger::new(
        connect_postgres(options, max_connections, timeout).await?,
    ))
}

async fn migrate(args: DatabaseArgs) -> Result<u8, Failure> {
    let ledger = connect(&args, 1).await?;
    ledger.migrate().await?;
    eprintln!("migrations applied");
    Ok(exit::OK)
}

/// Everything is validated before the first connection is opened.
fn build_request(args: &EnqueueArgs) -> Result<RunRequest, Failure> {
    let inputs_text = match (&args.inputs, &args.inputs_file) {
        (Some(text), _) => Some(text.clone()),
        (None, Some(path)) if path.as_os_str() == "-" => Some(
            std::io::read_to_string(std::io::stdin())
                .map_err(|e| invalid(format!("reading --inputs-file from stdin: {e}")))?,
        ),
        (None, Some(path)) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| invalid(format!("reading --inputs-file {}: {e}", path.display())))?,
        ),
        (None, None) => None,
    };
    let mut request = RunRequest::new(args.tenant, &args.run_type).queue(&args.queue);
    if let Some(text) = inputs_text {
        request = request.inputs(parse_json_object("inputs", &text)?);
    }
    if let Some(text) = &args.context {
        request = request.context(parse_json_object("context", text)?);
    }
    if let Some(user_id) = args.user_id {
        request = request.initiator(Initiator::user(
            user_id,
            args.initiator_name.clone().unwrap_or_default(),
        ));
    } else if let Some(name) = &args.initiator_name {
        request = request.initiator(Initiator {
            user_id: None,
            name: name.clone(),
        });
    }
    request.validate()?;
    Ok(request)
}

fn invalid(message: String) -> Failure {
    Failure {
        code: exit::INVALID,
        message,
    }
}

async fn enqueue(args: EnqueueArgs) -> Result<u8, Failure> {
    let request = build_request(&args)?;
    let redis_url = resolve_secret(
        "redis_url",
        args.redis_url.as_deref(),
        args.redis_url_file.as_deref(),
    )?;
    let mut transport_config = TransportConfig::new(redis_url);
    transport_config.prefix = args.prefix.clone();
    transport_config.command_timeout = args.dispatch_timeout;
    transport_config.pool_size = 1;
    // Opens no connection: Redis is contacted only when there is something to send.
    let transport = Transport::new(&transport_config)?;
    let ledger = connect(&args.database, 1).await?;
    let service = RunService::new(ledger, transport);

    let ensured = service.ensure_run(&request).await?;
    let run = &ensured.run;
    let mut output = json!({
        "run_id": run.id,
        "tenant_id": run.tenant_id,
        "type": run.run_type,
        "status": run.status,
        "outcome": run.outcome,
        "deduplicated": ensured.deduplicated(),
        "view_url": view_url(&args.monitor_url, run),
        "queue": run.queue,
        "run_identity_hash": run.run_identity_hash,
        "initiator_name": run.initiator_name,
        "user_id": run.user_id,
        "created_at": run.created_at,
        "dispatch_entry_id": run.dispatch_entry_id,
    });
    let code = match &ensured.dispatch {
        Dispatch::Failed(failure) => {
            output["failure"] = json!(failure);
            eprintln!(
                "error: dispatch failed ({}): {}; run {} recorded as {}/{}",
                failure.code,
                failure.message,
                run.id,
                run.status.as_str(),
                run.outcome.as_str()
            );
            exit::DISPATCH_FAILED
        }
        _ => exit::OK,
    };
    println!("{output}");
    Ok(code)
}
