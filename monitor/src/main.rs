//! `monitor`: serve Monitoring → Operations over HTTP, manage its tokens,
//! and give operators the same list, detail and notifications on the
//! command line (straight from Postgres).

use std::io::Write;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use opsrun::access::{Role, generate_token};
use opsrun::ledger::NewToken;
use opsrun::listing::FilterParams;
use opsrun::request::parse_positive_id;
use opsrun::{RunId, RunService, Transport};
use opsrun_cli::{
    DatabaseArgs, Failure, LogArgs, MetricsArgs, RedisArgs, RegistryArgs, duration, exit,
};
use opsrun_monitor::{AppState, router, security, server, views};
use serde_json::json;

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  unexpected error
  2  invalid input or configuration; nothing was changed
  4  Postgres unreachable
  6  no such run or token in that tenant
  7  TLS refused by Postgres: a certificate not trusted (CA, host name), or
     TLS required by one side and not used by the other";

/// A run or token that the tenant does not have.
const NOT_FOUND: u8 = 6;

#[derive(Parser)]
#[command(name = "monitor", version, about = "Monitoring → Operations: tenant-scoped runs over HTTP and the CLI", after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTML pages and the JSON API.
    Serve(Box<ServeArgs>),
    /// Create, list and revoke access tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// List and show a tenant's runs.
    #[command(subcommand)]
    Runs(RunsCommand),
    /// List a user's notifications and mark them read.
    #[command(subcommand)]
    Notifications(NotificationsCommand),
}

fn session_ttl(s: &str) -> Result<Duration, String> {
    let ttl = duration(s)?;
    if ttl < Duration::from_secs(60) || ttl > Duration::from_secs(30 * 86_400) {
        return Err("a session lasts from 1m to 30days".into());
    }
    Ok(ttl)
}

fn queue_name(s: &str) -> Result<String, String> {
    opsrun::request::validate_queue(s)
        .map(|()| s.to_string())
        .map_err(|e| e.to_string())
}

fn tenant_id(s: &str) -> Result<i64, String> {
    parse_positive_id("tenant_id", s).map_err(|e| e.to_string())
}

fn user_id(s: &str) -> Result<i64, String> {
    parse_positive_id("user_id", s).map_err(|e| e.to_string())
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "OPSRUN_MONITOR_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Public base URL, for the view_url of runs in JSON.
    #[arg(
        long,
        env = "OPSRUN_MONITOR_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    public_url: String,
    /// Related link for a context key, KEY=TEMPLATE with {value} and {tenant_id}
    /// (repeatable; an empty template removes a default).
    #[arg(long = "link", env = "OPSRUN_MONITOR_LINKS", value_delimiter = ',')]
    links: Vec<String>,
    /// Postgres connections.
    #[arg(long, env = "OPSRUN_MONITOR_POOL", default_value_t = 8)]
    pool: u32,
    /// Do not apply migrations at start.
    #[arg(long, env = "OPSRUN_NO_MIGRATE")]
    no_migrate: bool,
    /// A streaming replica's URL to read lists, run pages and notification
    /// lists from (writes and token checks stay on DATABASE_URL).
    #[arg(long, env = "OPSRUN_READ_DATABASE_URL", hide_env_values = true)]
    read_database_url: Option<String>,
    /// File holding the replica's URL.
    #[arg(long, env = "OPSRUN_READ_DATABASE_URL_FILE")]
    read_database_url_file: Option<std::path::PathBuf>,
    /// Replica lag after which pages read from it say so.
    #[arg(long, env = "OPSRUN_REPLICA_LAG_WARNING", default_value = "5s", value_parser = duration)]
    replica_lag_warning: Duration,
    /// How long a login lasts.
    #[arg(long, env = "OPSRUN_MONITOR_SESSION_TTL", default_value = "8h", value_parser = session_ttl)]
    session_ttl: Duration,
    /// Login attempts allowed a minute from one client address.
    #[arg(long, env = "OPSRUN_MONITOR_LOGIN_ATTEMPTS", default_value_t = NonZeroU32::new(opsrun_monitor::DEFAULT_LOGIN_ATTEMPTS_PER_MINUTE).expect("non-zero"))]
    login_attempts_per_minute: NonZeroU32,
    /// Time a client has to send a request's headers; also the longest an
    /// idle keep-alive connection stays open.
    #[arg(long, env = "OPSRUN_MONITOR_HEADER_TIMEOUT", default_value = "10s", value_parser = duration)]
    header_timeout: Duration,
    /// Longest a request may take, body included (answered 408).
    #[arg(long, env = "OPSRUN_MONITOR_REQUEST_TIMEOUT", default_value = "30s", value_parser = duration)]
    request_timeout: Duration,
    /// Connections served at once (default: half the open-file limit, at most 4096).
    #[arg(long, env = "OPSRUN_MONITOR_MAX_CONNECTIONS", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_connections: Option<u32>,
    /// After SIGTERM/SIGINT, time in-flight requests get to finish.
    #[arg(long, env = "OPSRUN_SHUTDOWN_GRACE", default_value = "10s", value_parser = duration)]
    shutdown_grace: Duration,
    #[command(flatten)]
    registry: RegistryArgs,
    #[command(flatten)]
    redis: RedisArgs,
    #[command(flatten)]
    database: DatabaseArgs,
    #[command(flatten)]
    metrics: MetricsArgs,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token and print it once (only its hash is stored).
    Create {
        /// The tenant it sees (not for a platform token).
        #[arg(long, value_parser = tenant_id, required_unless_present = "platform")]
        tenant: Option<i64>,
        /// A platform token: no tenant, queue health across tenants only.
        #[arg(long, conflicts_with_all = ["tenant", "role", "user_id", "allow_queues"])]
        platform: bool,
        /// readonly (view) or operator (view and start runs).
        #[arg(long, required_unless_present = "platform")]
        role: Option<Role>,
        /// The user the token acts for: initiator of the runs it starts, reader of their notifications.
        #[arg(long, requires = "user_name", value_parser = user_id)]
        user_id: Option<i64>,
        /// That user's name (required with --user-id).
        #[arg(long, requires = "user_id")]
        user_name: Option<String>,
        /// What the token is for.
        #[arg(long)]
        label: Option<String>,
        /// A queue this token may start runs on besides each type's own
        /// queue from the registry (repeatable).
        #[arg(long = "allow-queue", value_parser = queue_name)]
        allow_queues: Vec<String>,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// List a tenant's tokens, or the platform tokens (never their secrets).
    List {
        #[arg(long, value_parser = tenant_id, required_unless_present = "platform")]
        tenant: Option<i64>,
        #[arg(long, conflicts_with = "tenant")]
        platform: bool,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Revoke a token by id.
    Revoke {
        #[arg(long, value_parser = tenant_id, required_unless_present = "platform")]
        tenant: Option<i64>,
        #[arg(long, conflicts_with = "tenant")]
        platform: bool,
        #[arg(long)]
        id: i64,
        #[command(flatten)]
        database: DatabaseArgs,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
}

/// The list filters, as flags; the same names and forms as the API's query.
#[derive(Args)]
struct FilterArgs {
    /// Run type, e.g. inventory.sync.
    #[arg(long = "type")]
    run_type: Option<String>,
    /// queued, running or completed.
    #[arg(long)]
    status: Option<String>,
    /// pending, succeeded, partially_succeeded, failed or cancelled.
    #[arg(long)]
    outcome: Option<String>,
    /// system, a user id, or an initiator name.
    #[arg(long)]
    initiator: Option<String>,
    /// A failure code, e.g. job.timeout.
    #[arg(long)]
    failure_code: Option<String>,
    /// A run identity hash.
    #[arg(long)]
    identity: Option<String>,
    /// Created at or after (RFC 3339 or YYYY-MM-DD; default 30 days ago).
    #[arg(long)]
    since: Option<String>,
    /// Created before.
    #[arg(long)]
    until: Option<String>,
    /// Page size (default 50, capped to 200).
    #[arg(long)]
    limit: Option<String>,
    /// The next_cursor printed with the previous page.
    #[arg(long)]
    cursor: Option<String>,
}

impl FilterArgs {
    fn params(&self) -> FilterParams {
        FilterParams {
            run_type: self.run_type.clone(),
            status: self.status.clone(),
            outcome: self.outcome.clone(),
            initiator: self.initiator.clone(),
            failure_code: self.failure_code.clone(),
            identity: self.identity.clone(),
            since: self.since.clone(),
            until: self.until.clone(),
            limit: self.limit.clone(),
            cursor: self.cursor.clone(),
        }
    }
}

#[derive(Subcommand)]
enum RunsCommand {
    /// One page of a tenant's runs, newest first.
    List {
        #[arg(long, value_parser = tenant_id)]
        tenant: i64,
        #[command(flatten)]
        filter: Box<FilterArgs>,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Every field of one run.
    Show {
        #[arg(long, value_parser = tenant_id)]
        tenant: i64,
        /// The run id.
        run_id: i64,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
        #[arg(long = "link", env = "OPSRUN_MONITOR_LINKS", value_delimiter = ',')]
        links: Vec<String>,
        /// Redis, to say where a waiting run's entry stands (optional).
        #[command(flatten)]
        redis: RedisArgs,
        #[command(flatten)]
        database: DatabaseArgs,
    },
}

#[derive(Subcommand)]
enum NotificationsCommand {
    /// A user's notifications, newest first.
    List {
        #[arg(long, value_parser = tenant_id)]
        tenant: i64,
        #[arg(long, value_parser = user_id)]
        user_id: i64,
        /// Only unread ones.
        #[arg(long)]
        unread: bool,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Mark notifications read: the ids given, or all with --all.
    Read {
        #[arg(long, value_parser = tenant_id)]
        tenant: i64,
        #[arg(long, value_parser = user_id)]
        user_id: i64,
        #[arg(long = "id", required_unless_present = "all")]
        ids: Vec<i64>,
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        #[command(flatten)]
        database: DatabaseArgs,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Kept to the end of main: dropping it flushes the spans not yet sent.
    let _traces = match cli.log.init("info", "opsrun-monitor") {
        Ok(traces) => traces,
        Err(failure) => return failure.report(),
    };
    let serving = matches!(cli.command, Command::Serve(_));
    opsrun_cli::run_main(!serving, async {
        match cli.command {
            Command::Serve(args) => serve(*args).await,
            Command::Token(command) => token(command).await,
            Command::Runs(command) => runs(command).await,
            Command::Notifications(command) => notifications(command).await,
        }
    })
}

async fn serve(args: ServeArgs) -> Result<u8, Failure> {
    let links =
        views::Links::with_overrides(&args.links).map_err(|e| Failure::new(exit::INVALID, e))?;
    let registry = Arc::new(args.registry.load()?);
    // Redis is optional: without it the monitor is read-only.
    let transport = match args.redis.transport_config() {
        Ok(config) => Some(Transport::new(&config)?),
        Err(_) if args.redis.redis_url.is_none() && args.redis.redis_url_file.is_none() => None,
        Err(e) => return Err(e),
    };
    args.metrics.install("monitor")?;
    args.database.refuse_unconfigured_pooler().await?;
    let ledger = args.database.ledger(args.pool).await?;
    if !args.no_migrate {
        ledger.migrate().await?;
    }
    let service = transport.map(|t| RunService::new(ledger.clone(), t).with_registry(registry));
    if service.is_none() {
        tracing::warn!(
            "REDIS_URL is not set: the monitor is read-only (POST /api/v1/runs answers 503)"
        );
    }
    let mut state = AppState::new(ledger, service, links, &args.public_url);
    if args.read_database_url.is_some() || args.read_database_url_file.is_some() {
        let url = opsrun::config::resolve_secret(
            "read_database_url",
            args.read_database_url.as_deref(),
            args.read_database_url_file.as_deref(),
        )?;
        let options = opsrun::config::postgres_options_of("read_database_url", &url)?;
        let replica = opsrun::config::connect_postgres(options, args.pool, args.database.timeout())
            .await
            .map_err(opsrun_cli::postgres_failure)?;
        state = state.with_replica(args.database.ledger_over(replica), args.replica_lag_warning);
    }
    state.session_ttl = args.session_ttl;
    state.login_limiter = security::LoginLimiter::per_minute(args.login_attempts_per_minute);
    state.request_timeout = args.request_timeout;
    let app = router(state);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| Failure::new(exit::INVALID, format!("listening on {}: {e}", args.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Failure::new(exit::INTERNAL, e.to_string()))?;
    tracing::info!(%addr, "monitor listening");
    // The tests and scripts read the bound address (port 0 picks a free one).
    println!("listening on http://{addr}");
    let limits = server::ServerLimits {
        header_timeout: args.header_timeout,
        max_connections: args
            .max_connections
            .map_or_else(server::ServerLimits::default_max_connections, |n| {
                n as usize
            }),
        shutdown_grace: args.shutdown_grace,
    };
    server::serve(listener, app, limits, stop_signal()).await;
    tracing::info!("monitor stopped");
    Ok(exit::OK)
}

/// Completes at the first SIGTERM or SIGINT.
async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn token(command: TokenCommand) -> Result<u8, Failure> {
    match command {
        TokenCommand::Create {
            tenant,
            platform,
            role,
            user_id,
            user_name,
            label,
            allow_queues,
            database,
        } => {
            let user = match (user_id, user_name.as_deref()) {
                (Some(id), Some(name)) => {
                    // The name becomes the initiator of the runs the token starts.
                    opsrun::request::check_label(
                        "user_name",
                        name,
                        opsrun::request::MAX_INITIATOR_NAME_CHARS,
                    )?;
                    Some((id, name))
                }
                _ => None,
            };
            let role = match (platform, role) {
                (true, _) => Role::Platform,
                (false, Some(Role::Platform)) => {
                    return Err(Failure::new(
                        exit::INVALID,
                        "a platform token has no tenant: use --platform instead of --tenant and --role platform",
                    ));
                }
                (false, Some(role)) => role,
                (false, None) => {
                    return Err(Failure::new(
                        exit::INVALID,
                        "--role is required with --tenant",
                    ));
                }
            };
            let ledger = database.ledger(1).await?;
            let (secret, hash) = generate_token();
            let stored = ledger
                .create_token(
                    &NewToken {
                        tenant_id: tenant,
                        role,
                        user,
                        label: label.as_deref(),
                        queues: &allow_queues,
                    },
                    &hash,
                )
                .await?;
            let scope = match stored.tenant_id {
                Some(tenant) => format!("tenant {tenant}"),
                None => "the platform".to_string(),
            };
            eprintln!(
                "created token {} for {scope} ({}); it is shown once, store it now",
                stored.id,
                stored.role.as_str()
            );
            println!("{secret}");
            Ok(exit::OK)
        }
        TokenCommand::List {
            tenant, database, ..
        } => {
            let ledger = database.ledger(1).await?;
            for t in ledger.tokens(tenant).await? {
                println!("{}", json!(t));
            }
            Ok(exit::OK)
        }
        TokenCommand::Revoke {
            tenant,
            id,
            database,
            ..
        } => {
            let ledger = database.ledger(1).await?;
            if ledger.revoke_token(tenant, id).await? {
                eprintln!("revoked token {id}");
                Ok(exit::OK)
            } else {
                Err(Failure::new(
                    NOT_FOUND,
                    match tenant {
                        Some(tenant) => format!("tenant {tenant} has no live token {id}"),
                        None => format!("there is no live platform token {id}"),
                    },
                ))
            }
        }
    }
}

async fn runs(command: RunsCommand) -> Result<u8, Failure> {
    let now = chrono::Utc::now();
    match command {
        RunsCommand::List {
            tenant,
            filter,
            format,
            database,
        } => {
            let filter = filter.params().parse(now)?;
            let ledger = database.ledger(1).await?;
            let page = ledger.list_runs(tenant, &filter).await?;
            let summaries: Vec<views::RunSummary> = page
                .runs
                .iter()
                .map(|r| views::summary(r, "", now))
                .collect();
            let next = page.next.map(|c| c.encode());
            match format {
                Format::Json => println!("{}", json!({"runs": summaries, "next_cursor": next})),
                Format::Table => {
                    let mut out = tabwriter::TabWriter::new(std::io::stdout());
                    let _ = writeln!(
                        out,
                        "ID\tTYPE\tSTATUS\tOUTCOME\tINITIATOR\tCREATED\tDURATION\tITEMS\tFAILURES"
                    );
                    for s in &summaries {
                        let _ = writeln!(
                            out,
                            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                            s.id,
                            s.run_type,
                            s.status_label,
                            s.outcome_label,
                            s.initiator_name,
                            s.created_at.format("%Y-%m-%d %H:%M:%S"),
                            s.duration_seconds
                                .map(views::human_duration)
                                .unwrap_or_default(),
                            if s.summary_counts.total > 0 {
                                format!("{}/{}", s.summary_counts.success, s.summary_counts.total)
                            } else {
                                String::new()
                            },
                            s.failure_codes.join(",")
                        );
                    }
                    let _ = out.flush();
                    if let Some(next) = next {
                        eprintln!("more: --cursor {next}");
                    }
                }
            }
            Ok(exit::OK)
        }
        RunsCommand::Show {
            tenant,
            run_id,
            format,
            links,
            redis,
            database,
        } => {
            let links =
                views::Links::with_overrides(&links).map_err(|e| Failure::new(exit::INVALID, e))?;
            let ledger = database.ledger(1).await?;
            let Some(run) = ledger.get(tenant, RunId(run_id)).await? else {
                return Err(Failure::new(
                    NOT_FOUND,
                    format!("tenant {tenant} has no run {run_id}"),
                ));
            };
            let mut d = views::detail(&run, "", &links, now);
            // Where its stream entry stands, when Redis is given.
            let transport = match redis.transport_config() {
                Ok(config) => Some(Transport::new(&config)?),
                Err(_) => None,
            };
            if run.status != opsrun::Status::Completed {
                d.waiting_for =
                    Some(opsrun::explain::explain(&ledger, transport.as_ref(), &run, now).await?);
            }
            match format {
                Format::Json => println!("{}", json!(d)),
                Format::Table => print_detail(&d),
            }
            Ok(exit::OK)
        }
    }
}

fn print_detail(d: &views::RunDetail) {
    let s = &d.summary;
    let when = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map(|t| t.to_rfc3339()).unwrap_or_else(|| "-".into())
    };
    println!("run {} ({}) of tenant {}", s.id, s.run_type, d.tenant_id);
    println!("  status     {} / {}", s.status_label, s.outcome_label);
    println!(
        "  initiator  {}{}",
        s.initiator_name,
        s.user_id
            .map(|u| format!(" (user {u})"))
            .unwrap_or_default()
    );
    println!(
        "  queue      {}, attempt {} of {}",
        d.queue, d.attempt, d.max_attempts
    );
    println!("  created    {}", s.created_at.to_rfc3339());
    println!("  started    {}", when(s.started_at));
    println!("  completed  {}", when(s.completed_at));
    println!("  counts     {}", json!(s.summary_counts));
    println!("  identity   {} ({})", d.run_identity_hash, d.identity_rule);
    if let Some(domain) = &d.domain_id {
        println!("  domain     {domain}");
    }
    println!("  context    {}", d.context);
    println!("  inputs     {}", d.inputs);
    if let Some(why) = &d.waiting_for {
        println!("waiting    {}", why.summary);
        for fact in &why.facts {
            println!("           - {fact}");
        }
    }
    println!("timeline");
    for e in &d.timeline {
        println!("  {}  {:<10} {}", e.at.to_rfc3339(), e.event, e.detail);
    }
    if !d.failure_summary.is_empty() {
        println!("failures");
        for f in &d.failure_summary {
            println!("  {} x{}: {}", f.code, f.count, f.message);
        }
    }
    if !d.links.is_empty() {
        println!("related");
        for l in &d.links {
            println!("  {} {} -> {}", l.key, l.value, l.url);
        }
    }
}

async fn notifications(command: NotificationsCommand) -> Result<u8, Failure> {
    match command {
        NotificationsCommand::List {
            tenant,
            user_id,
            unread,
            limit,
            format,
            database,
        } => {
            if !(1..=200).contains(&limit) {
                return Err(Failure::new(exit::INVALID, "invalid limit: use 1 to 200"));
            }
            let ledger = database.ledger(1).await?;
            let list = ledger.notifications(tenant, user_id, unread, limit).await?;
            match format {
                Format::Json => println!("{}", json!({"notifications": list})),
                Format::Table => {
                    let mut out = tabwriter::TabWriter::new(std::io::stdout());
                    let _ = writeln!(out, "ID\tRUN\tKIND\tREAD\tCREATED\tTITLE\tBODY");
                    for n in &list {
                        let _ = writeln!(
                            out,
                            "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                            n.id,
                            n.run_id,
                            n.kind,
                            if n.read_at.is_some() { "yes" } else { "no" },
                            n.created_at.format("%Y-%m-%d %H:%M:%S"),
                            n.title,
                            n.body
                        );
                    }
                    let _ = out.flush();
                }
            }
            Ok(exit::OK)
        }
        NotificationsCommand::Read {
            tenant,
            user_id,
            ids,
            all,
            database,
        } => {
            let ledger = database.ledger(1).await?;
            let marked = ledger
                .mark_notifications_read(tenant, user_id, if all { None } else { Some(&ids) })
                .await?;
            println!("{}", json!({"marked": marked}));
            Ok(exit::OK)
        }
    }
}
