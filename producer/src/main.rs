//! `producer`: other services invoke it to start a run. It validates the
//! request before any I/O, ensures the run (dedupe), dispatches it, and prints
//! one JSON object describing the run.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use opsrun::mirror::{DomainStatus, MirrorRequest};
use opsrun::request::{parse_json_object, parse_positive_id, validate_queue, validate_type};
use opsrun::service::view_url;
use opsrun::trace::TraceContext;
use opsrun::{Dispatch, Initiator, RunRequest, RunService, Transport};
use opsrun_cli::{DatabaseArgs, Failure, LogArgs, RedisArgs, RegistryArgs, duration, exit};
use serde_json::json;

const EXIT_CODES: &str = "\
Exit codes:
  0  run created and dispatched, or an active run with the same identity returned (deduplicated)
  1  unexpected error (a statement was rejected, migrations missing, ...)
  2  invalid input or configuration; nothing was written
  3  dispatch to Redis failed; the run is recorded as completed/failed with
     queue.dispatch_failed and its JSON is still printed
  4  Postgres unreachable; nothing was written
  7  TLS refused by Redis or Postgres: a certificate not trusted (CA, host
     name), or TLS required by one side and not used by the other; when
     Redis refused it, the run is recorded as failed with
     queue.dispatch_failed, as for 3";

#[derive(Parser)]
#[command(name = "producer", version, about = "Start opsrun runs: validate, ensure (dedupe), dispatch", after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Create a run (or return the active one with the same identity) and dispatch it.
    #[command(after_help = EXIT_CODES)]
    Enqueue(Box<EnqueueArgs>),
    /// Keep the shadow run of a domain record (e.g. a restore) in line with the record:
    /// none before it is previewed, then queued, running and completed as it moves.
    /// Idempotent; needs no Redis (nothing is dispatched).
    #[command(after_help = EXIT_CODES)]
    Mirror(Box<MirrorArgs>),
    /// Cancel a run: a queued or waiting run completes `cancelled` at once, a
    /// running one is stopped by its worker within a second or two. Recorded
    /// in the tenant's audit trail with who and why. Needs no Redis.
    #[command(after_help = CANCEL_EXIT_CODES)]
    Cancel(Box<CancelArgs>),
    /// Retry a run that failed, partly succeeded or was cancelled: a new run
    /// with the same type, inputs, context and queue, linked to it (the old
    /// one keeps its history). Recorded in the tenant's audit trail.
    #[command(after_help = RETRY_EXIT_CODES)]
    Retry(Box<RetryArgs>),
    /// Create, change, pause, resume, delete and list a tenant's schedules
    /// (cron in a time zone; the reaper fires each slot once).
    #[command(subcommand)]
    Schedule(ScheduleCommand),
    /// Pause a queue: workers stop taking its runs within a second or two,
    /// let those in flight finish, and take the rest once it is resumed.
    /// Recorded (in no tenant's trail: a queue serves them all).
    #[command(after_help = QUEUE_EXIT_CODES)]
    Pause(Box<QueueActionArgs>),
    /// Resume a paused queue.
    #[command(after_help = QUEUE_EXIT_CODES)]
    Resume(Box<QueueActionArgs>),
    /// List the paused queues as JSON.
    #[command(after_help = QUEUE_EXIT_CODES)]
    Paused(DatabaseArgs),
    /// Apply the database migrations.
    #[command(after_help = EXIT_CODES)]
    Migrate(DatabaseArgs),
}

const RETRY_EXIT_CODES: &str = "\
Exit codes:
  0  the retry was started (or folded into the active run with the same identity)
  1  unexpected error
  2  invalid input or configuration, or a run that cannot be retried (it
     succeeded, or has not completed); nothing was written
  3  the retry's dispatch to Redis failed; it is recorded as failed
  4  Postgres unreachable; nothing was written
  6  the tenant has no such run; nothing was written
  7  TLS refused by Redis or Postgres";

const QUEUE_EXIT_CODES: &str = "\"
Exit codes:
  0  done, or nothing to do (\"result\" says: paused, already_paused,
     resumed, not_paused)
  1  unexpected error
  2  invalid input or configuration; nothing was written
  4  Postgres unreachable; nothing was written
  7  TLS refused by Postgres";

#[derive(Args)]
struct RetryArgs {
    /// Tenant of the run.
    #[arg(long = "tenant",
          value_parser = positive_id("tenant_id"))]
    tenant: i64,
    /// The run to retry.
    #[arg(long = "run",
          value_parser = positive_id("run_id"))]
    run: i64,
    #[command(flatten)]
    actor: ActorArgs,
    /// How long the XADD may take before the dispatch counts as failed.
    #[arg(long, env = "OPSRUN_DISPATCH_TIMEOUT", default_value = "2s", value_parser = duration)]
    dispatch_timeout: Duration,
    #[command(flatten)]
    view: ViewArgs,
    #[command(flatten)]
    registry: RegistryArgs,
    #[command(flatten)]
    redis: RedisArgs,
    #[command(flatten)]
    database: DatabaseArgs,
}

const SCHEDULE_EXIT_CODES: &str = "\
Exit codes:
  0  done; the schedule is printed as JSON (list: all of them)
  1  unexpected error
  2  invalid input (a cron expression, zone, type, inputs or policy that is
     not one, a name already used); nothing was written
  4  Postgres unreachable; nothing was written
  6  the tenant has no such schedule
  7  TLS refused by Postgres";

#[derive(Subcommand)]
enum ScheduleCommand {
    /// Create a schedule; its first slot is the next one after now.
    #[command(after_help = SCHEDULE_EXIT_CODES)]
    Create(Box<ScheduleArgs>),
    /// Change a schedule's timing, type, inputs or policy (slots start again from now).
    #[command(after_help = SCHEDULE_EXIT_CODES)]
    Update(Box<ScheduleArgs>),
    /// Pause a schedule: it fires nothing until resumed (then its missed
    /// slots are settled under its policy).
    #[command(after_help = SCHEDULE_EXIT_CODES)]
    Pause(ScheduleName),
    /// Resume a paused schedule.
    #[command(after_help = SCHEDULE_EXIT_CODES)]
    Resume(ScheduleName),
    /// Delete a schedule (its runs stay).
    #[command(after_help = SCHEDULE_EXIT_CODES)]
    Delete(ScheduleName),
    /// The tenant's schedules (or one), each with its next slots and its
    /// last slots with their runs.
    #[command(after_help = SCHEDULE_EXIT_CODES)]
    List(ScheduleList),
}

#[derive(Args)]
struct ScheduleArgs {
    /// Tenant the runs belong to.
    #[arg(long = "tenant",
          value_parser = positive_id("tenant_id"))]
    tenant: i64,
    /// Schedule name, unique in the tenant.
    #[arg(long)]
    name: String,
    /// Five-field cron expression, e.g. "30 2 * * *".
    #[arg(long)]
    cron: String,
    /// IANA time zone the expression is read in.
    #[arg(long, default_value = "UTC")]
    timezone: String,
    /// Run type it fires.
    #[arg(long = "type")]
    run_type: String,
    /// Run inputs as a JSON object (schedule_id and scheduled_for are added).
    #[arg(long, default_value = "{}")]
    inputs: String,
    /// Missed slots after downtime: skip, latest or catch-up:N.
    #[arg(long, default_value = "skip")]
    missed: String,
    /// Who creates or changes it.
    #[arg(long, default_value = opsrun::request::SYSTEM_INITIATOR)]
    actor_name: String,
    #[command(flatten)]
    database: DatabaseArgs,
}

#[derive(Args)]
struct ScheduleName {
    /// Tenant of the schedule.
    #[arg(long = "tenant",
          value_parser = positive_id("tenant_id"))]
    tenant: i64,
    /// Its name.
    #[arg(long)]
    name: String,
    #[command(flatten)]
    database: DatabaseArgs,
}

#[derive(Args)]
struct ScheduleList {
    /// Tenant of the schedules.
    #[arg(long = "tenant",
          value_parser = positive_id("tenant_id"))]
    tenant: i64,
    /// Only this one.
    #[arg(long)]
    name: Option<String>,
    #[command(flatten)]
    database: DatabaseArgs,
}

/// Who performs an operator action, and why.
#[derive(Args)]
struct ActorArgs {
    /// Who acts: a user id…
    #[arg(long,
          value_parser = positive_id("user_id"))]
    user_id: Option<i64>,
    /// …and name (as shown in the audit trail, and in a cancelled run's failure).
    #[arg(long, default_value = opsrun::request::SYSTEM_INITIATOR)]
    actor_name: String,
    /// Why (recorded with the action; sanitized).
    #[arg(long)]
    reason: Option<String>,
}

impl ActorArgs {
    fn initiator(&self) -> Initiator {
        Initiator {
            user_id: self.user_id,
            name: self.actor_name.clone(),
        }
    }
}

#[derive(Args)]
struct QueueActionArgs {
    /// The queue.
    #[arg(long)]
    queue: String,
    #[command(flatten)]
    actor: ActorArgs,
    #[command(flatten)]
    database: DatabaseArgs,
}

const CANCEL_EXIT_CODES: &str = "\
Exit codes:
  0  cancelled, cancel requested, or nothing to do (already completed, or
     already asked): \"result\" in the printed JSON says which
  1  unexpected error
  2  invalid input or configuration; nothing was written
  4  Postgres unreachable; nothing was written
  6  the tenant has no such run; nothing was written
  7  TLS refused by Postgres";

#[derive(Args)]
struct CancelArgs {
    /// Tenant of the run.
    #[arg(long = "tenant",
          value_parser = positive_id("tenant_id"))]
    tenant: i64,
    /// The run to cancel.
    #[arg(long = "run",
          value_parser = positive_id("run_id"))]
    run: i64,
    #[command(flatten)]
    actor: ActorArgs,
    #[command(flatten)]
    view: ViewArgs,
    #[command(flatten)]
    database: DatabaseArgs,
}

#[derive(Args)]
struct EnqueueArgs {
    /// Tenant id (positive integer).
    #[arg(long, required_unless_present = "batch", allow_hyphen_values = true,
          value_parser = positive_id("tenant_id"))]
    tenant: Option<i64>,
    /// Run type: lowercase dotted segments such as inventory.sync.
    #[arg(long = "type", required_unless_present = "batch",
          value_parser = |s: &str| validate_type(s).map(|_| s.to_string()).map_err(|e| e.to_string()))]
    run_type: Option<String>,
    /// Start many runs from NDJSON (a file, or "-" for stdin): one object per line with
    /// tenant_id, type and optionally inputs, context, user_id, initiator_name, queue, at,
    /// traceparent.
    /// Prints one result line per input line, in order.
    #[arg(long, conflicts_with_all = ["tenant", "run_type", "inputs", "inputs_file", "context", "user_id", "initiator_name", "at", "in_"])]
    batch: Option<PathBuf>,
    /// The caller's W3C trace context: the worker's spans for this run join
    /// that trace (a batch line may carry its own "traceparent").
    #[arg(long, env = "TRACEPARENT", value_parser = |s: &str| TraceContext::parse(s).map_err(|e| e.to_string()))]
    traceparent: Option<TraceContext>,
    /// Job inputs as a JSON object (part of the run identity).
    #[arg(long, conflicts_with = "inputs_file")]
    inputs: Option<String>,
    /// File with the job inputs as a JSON object ("-" for stdin).
    #[arg(long)]
    inputs_file: Option<PathBuf>,
    #[command(flatten)]
    initiator: InitiatorArgs,
    /// Context as a JSON object (links, scopes; not part of the identity).
    #[arg(long)]
    context: Option<String>,
    /// Queue to dispatch on (default: the type's queue in the registry, else "default").
    #[arg(long, env = "OPSRUN_QUEUE",
          value_parser = |s: &str| validate_queue(s).map(|_| s.to_string()).map_err(|e| e.to_string()))]
    queue: Option<String>,
    /// Start no earlier than this time (RFC 3339, e.g. 2026-11-23T02:00:00Z).
    #[arg(long, conflicts_with = "in_", value_parser = |s: &str| s.parse::<chrono::DateTime<chrono::Utc>>()
          .map_err(|e| format!("{s:?} is not an RFC 3339 time such as 2026-11-23T02:00:00Z: {e}")))]
    at: Option<chrono::DateTime<chrono::Utc>>,
    /// Start no earlier than this long from now (e.g. 90s, 15m, 2h).
    #[arg(long = "in", id = "in_", value_parser = duration)]
    in_: Option<Duration>,
    /// How long the XADD may take before the dispatch counts as failed.
    #[arg(long, env = "OPSRUN_DISPATCH_TIMEOUT", default_value = "2s", value_parser = duration)]
    dispatch_timeout: Duration,
    #[command(flatten)]
    view: ViewArgs,
    #[command(flatten)]
    registry: RegistryArgs,
    #[command(flatten)]
    redis: RedisArgs,
    #[command(flatten)]
    database: DatabaseArgs,
}

/// Where people view runs.
#[derive(Args)]
struct ViewArgs {
    /// Base URL of Monitoring → Operations, for view_url.
    #[arg(
        long,
        env = "OPSRUN_MONITOR_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    monitor_url: String,
}

/// Who starts the run.
#[derive(Args)]
struct InitiatorArgs {
    /// Initiating user id; omit for system runs.
    #[arg(long, requires = "initiator_name", allow_hyphen_values = true,
          value_parser = positive_id("user_id"))]
    user_id: Option<i64>,
    /// Snapshot of the initiating user's name (required with --user-id).
    #[arg(long)]
    initiator_name: Option<String>,
}

impl InitiatorArgs {
    /// The initiator, when one was named (a name alone names a system initiator).
    fn initiator(&self) -> Option<Initiator> {
        match (self.user_id, &self.initiator_name) {
            (Some(id), name) => Some(Initiator::user(id, name.clone().unwrap_or_default())),
            (None, Some(name)) => Some(Initiator {
                user_id: None,
                name: name.clone(),
            }),
            (None, None) => None,
        }
    }
}

#[derive(Args)]
struct MirrorArgs {
    /// Tenant id (positive integer).
    #[arg(long, allow_hyphen_values = true,
          value_parser = positive_id("tenant_id"))]
    tenant: i64,
    /// Run type of the shadow run, e.g. restore.execute.
    #[arg(long = "type",
          value_parser = |s: &str| validate_type(s).map(|_| s.to_string()).map_err(|e| e.to_string()))]
    run_type: String,
    /// The domain record's id (one shadow run per record and type).
    #[arg(long)]
    domain_id: String,
    /// Where the record stands: draft, previewing, previewed, queued, running,
    /// succeeded, partially_succeeded, failed or cancelled.
    #[arg(long, value_parser = |s: &str| s.parse::<DomainStatus>().map_err(|e| e.to_string()))]
    domain_status: DomainStatus,
    #[command(flatten)]
    initiator: InitiatorArgs,
    /// Context as a JSON object, e.g. {"restore_run_id": 12}.
    #[arg(long)]
    context: Option<String>,
    /// Item counts of a finished record, e.g. {"total":10,"success":8,"failed":2}.
    #[arg(long)]
    summary_counts: Option<String>,
    /// A failure of a finished record as CODE=MESSAGE (repeatable; messages are sanitized).
    #[arg(long = "failure", value_parser = parse_failure)]
    failures: Vec<opsrun::Failure>,
    #[command(flatten)]
    view: ViewArgs,
    #[command(flatten)]
    registry: RegistryArgs,
    #[command(flatten)]
    database: DatabaseArgs,
}

/// A clap parser of a positive id flag, errors naming `field`.
fn positive_id(
    field: &'static str,
) -> impl Fn(&str) -> Result<i64, String> + Clone + Send + Sync + 'static {
    move |s: &str| parse_positive_id(field, s).map_err(|e| e.to_string())
}

fn parse_failure(text: &str) -> Result<opsrun::Failure, String> {
    let (code, message) = text.split_once('=').ok_or_else(|| {
        format!("{text:?} is not CODE=MESSAGE, e.g. restore.item_failed=disk full")
    })?;
    if !opsrun::sanitize::is_valid_code(code) {
        return Err(format!(
            "{code:?} is not a failure code such as restore.item_failed"
        ));
    }
    Ok(opsrun::sanitize::failure(code, message))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Kept to the end of main: dropping it flushes the spans not yet sent.
    let _traces = match cli.log.init("warn", "opsrun-producer") {
        Ok(traces) => traces,
        Err(failure) => return failure.report(),
    };
    // One thread: a producer does one thing, and starts fast.
    opsrun_cli::run_main(true, async {
        match cli.command {
            Command::Enqueue(args) => enqueue(*args).await,
            Command::Mirror(args) => mirror(*args).await,
            Command::Cancel(args) => cancel(*args).await,
            Command::Retry(args) => retry(*args).await,
            Command::Schedule(command) => schedule(command).await,
            Command::Pause(args) => pause_or_resume(*args, true).await,
            Command::Resume(args) => pause_or_resume(*args, false).await,
            Command::Paused(args) => paused(args).await,
            Command::Migrate(args) => migrate(args).await,
        }
    })
}

async fn mirror(args: MirrorArgs) -> Result<u8, Failure> {
    let registry = args.registry.load()?;
    let mut run = RunRequest::new(args.tenant, &args.run_type);
    if let Some(text) = &args.context {
        run = run.context(parse_json_object("context", text)?);
    }
    if let Some(initiator) = args.initiator.initiator() {
        run = run.initiator(initiator);
    }
    let summary_counts = match &args.summary_counts {
        Some(text) => {
            let object = parse_json_object("summary_counts", text)?;
            serde_json::from_value(object).map_err(|e| {
                Failure::new(
                    exit::INVALID,
                    format!("invalid summary_counts: {e} (expected counts such as {{\"total\":10,\"success\":8,\"failed\":2,\"skipped\":0}})"),
                )
            })?
        }
        None => opsrun::SummaryCounts::default(),
    };
    let request = MirrorRequest {
        run,
        domain_id: args.domain_id.clone(),
        status: args.domain_status,
        summary_counts,
        failures: args.failures.clone(),
    };
    // Validate everything before connecting: the run request, the domain id and the type.
    request.validate()?;
    registry.spec(&request.run.run_type)?;
    let ledger = args.database.ledger(1).await?;
    let mirrored = opsrun::mirror::apply(&ledger, &registry, &request).await?;
    let output = match &mirrored.run {
        Some(run) => json!({
            "run_id": run.id,
            "tenant_id": run.tenant_id,
            "type": run.run_type,
            "domain_id": run.domain_id,
            "status": run.status,
            "outcome": run.outcome,
            "changed": mirrored.changed,
            "view_url": view_url(&args.view.monitor_url, run),
            "failure_summary": run.failure_summary,
            "summary_counts": run.summary_counts,
        }),
        None => json!({"run_id": null, "domain_id": request.domain_id, "changed": false,
                       "note": "no run before the domain record is previewed"}),
    };
    println!("{output}");
    Ok(exit::OK)
}

async fn cancel(args: CancelArgs) -> Result<u8, Failure> {
    let ledger = args.database.ledger(1).await?;
    let found = opsrun::service::cancel(
        &ledger,
        args.tenant,
        opsrun::RunId(args.run),
        &args.actor.initiator(),
        args.actor.reason.as_deref(),
    )
    .await?;
    let Some((result, run)) = found else {
        return Err(Failure::new(
            NOT_FOUND,
            format!("tenant {} has no run {}", args.tenant, args.run),
        ));
    };
    println!(
        "{}",
        json!({
            "run_id": run.id,
            "tenant_id": run.tenant_id,
            "result": result,
            "status": run.status,
            "outcome": run.outcome,
            "view_url": view_url(&args.view.monitor_url, &run),
        })
    );
    Ok(exit::OK)
}

async fn retry(args: RetryArgs) -> Result<u8, Failure> {
    let registry = std::sync::Arc::new(args.registry.load()?);
    let service = service(
        &args.redis,
        args.dispatch_timeout,
        &args.database,
        registry,
        1,
    )
    .await?;
    let ensured = service
        .retry(
            args.tenant,
            opsrun::RunId(args.run),
            &args.actor.initiator(),
            args.actor.reason.as_deref(),
        )
        .await?
        .ok_or_else(|| {
            Failure::new(
                NOT_FOUND,
                format!("tenant {} has no run {}", args.tenant, args.run),
            )
        })?;
    let run = &ensured.run;
    println!(
        "{}",
        json!({
            "run_id": run.id,
            "retry_of": args.run,
            "tenant_id": run.tenant_id,
            "status": run.status,
            "deduplicated": ensured.deduplicated(),
            "view_url": view_url(&args.view.monitor_url, run),
        })
    );
    Ok(if ensured.dispatch_failed() {
        exit::DISPATCH_FAILED
    } else {
        exit::OK
    })
}

async fn schedule(command: ScheduleCommand) -> Result<u8, Failure> {
    let missing = |tenant: i64, name: &str| {
        Failure::new(
            NOT_FOUND,
            format!("tenant {tenant} has no schedule named {name:?}"),
        )
    };
    let changed = match command {
        ScheduleCommand::Create(args) => {
            let definition = schedule_definition(&args)?;
            let ledger = args.database.ledger(1).await?;
            ledger
                .create_schedule(&definition.spec(&args.actor_name, chrono::Utc::now()))
                .await?
        }
        ScheduleCommand::Update(args) => {
            let definition = schedule_definition(&args)?;
            let ledger = args.database.ledger(1).await?;
            ledger
                .update_schedule(&definition.spec(&args.actor_name, chrono::Utc::now()))
                .await?
                .ok_or_else(|| missing(args.tenant, &args.name))?
        }
        ScheduleCommand::Pause(args) => args
            .database
            .ledger(1)
            .await?
            .set_schedule_paused(args.tenant, &args.name, true)
            .await?
            .ok_or_else(|| missing(args.tenant, &args.name))?,
        ScheduleCommand::Resume(args) => args
            .database
            .ledger(1)
            .await?
            .set_schedule_paused(args.tenant, &args.name, false)
            .await?
            .ok_or_else(|| missing(args.tenant, &args.name))?,
        ScheduleCommand::Delete(args) => {
            let ledger = args.database.ledger(1).await?;
            if !ledger.delete_schedule(args.tenant, &args.name).await? {
                return Err(missing(args.tenant, &args.name));
            }
            println!(
                "{}",
                json!({"tenant_id": args.tenant, "name": args.name, "deleted": true})
            );
            return Ok(exit::OK);
        }
        ScheduleCommand::List(args) => {
            let ledger = args.database.ledger(1).await?;
            let found = ledger.schedules(args.tenant, args.name.as_deref()).await?;
            if let Some(name) = &args.name
                && found.is_empty()
            {
                return Err(missing(args.tenant, name));
            }
            let mut listed = Vec::with_capacity(found.len());
            for schedule in found {
                let next = opsrun::schedule::Timing::parse(&schedule.cron, &schedule.timezone)
                    .map(|t| t.upcoming(schedule.last_slot.max(chrono::Utc::now()), 5))
                    .unwrap_or_default();
                let last = ledger.schedule_slots(schedule.id, 10).await?;
                listed.push(json!({"schedule": schedule, "next_slots": next, "last_slots": last}));
            }
            println!("{}", json!({ "schedules": listed }));
            return Ok(exit::OK);
        }
    };
    println!("{}", json!(changed));
    Ok(exit::OK)
}

fn schedule_definition(args: &ScheduleArgs) -> Result<opsrun::schedule::Definition, Failure> {
    let inputs = parse_json_object("inputs", &args.inputs)?;
    let missed: opsrun::schedule::MissedPolicy = args.missed.parse()?;
    Ok(opsrun::schedule::Definition::new(
        args.tenant,
        &args.name,
        &args.cron,
        &args.timezone,
        &args.run_type,
        inputs,
        missed,
    )?)
}

async fn pause_or_resume(args: QueueActionArgs, pause: bool) -> Result<u8, Failure> {
    let ledger = args.database.ledger(1).await?;
    let result = opsrun::service::pause_queue(
        &ledger,
        &args.queue,
        pause,
        None,
        &args.actor.initiator(),
        args.actor.reason.as_deref(),
    )
    .await?;
    println!("{}", json!({"queue": args.queue, "result": result}));
    Ok(exit::OK)
}

async fn paused(args: DatabaseArgs) -> Result<u8, Failure> {
    let paused = args.ledger(1).await?.paused_queues().await?;
    println!("{}", json!({ "paused": paused }));
    Ok(exit::OK)
}

/// Exit code: the tenant has no such run.
const NOT_FOUND: u8 = 6;

async fn migrate(args: DatabaseArgs) -> Result<u8, Failure> {
    args.refuse_unconfigured_pooler().await?;
    let ledger = args.ledger(1).await?;
    ledger.migrate().await?;
    eprintln!("migrations applied");
    Ok(exit::OK)
}

/// Everything is validated before the first connection is opened.
fn build_request(args: &EnqueueArgs) -> Result<RunRequest, Failure> {
    let invalid = |message: String| Failure::new(exit::INVALID, message);
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
    let (Some(tenant), Some(run_type)) = (args.tenant, &args.run_type) else {
        return Err(Failure::new(
            exit::INVALID,
            "--tenant and --type are required without --batch",
        ));
    };
    let mut request = RunRequest::new(tenant, run_type);
    if let Some(queue) = &args.queue {
        request = request.queue(queue);
    }
    let now = chrono::Utc::now();
    let not_before = match (args.at, args.in_) {
        (Some(at), _) => Some(at),
        // A delay past what a time can hold is refused, never dropped.
        (None, Some(delay)) => Some(
            chrono::TimeDelta::from_std(delay)
                .ok()
                .and_then(|d| now.checked_add_signed(d))
                .ok_or_else(|| invalid(format!("invalid --in: {delay:?} is too far ahead")))?,
        ),
        (None, None) => None,
    };
    if let Some(at) = not_before {
        request = request.not_before(at);
    }
    if let Some(context) = args.traceparent {
        request = request.traceparent(context);
    }
    if let Some(text) = inputs_text {
        request = request.inputs(parse_json_object("inputs", &text)?);
    }
    if let Some(text) = &args.context {
        request = request.context(parse_json_object("context", text)?);
    }
    if let Some(initiator) = args.initiator.initiator() {
        request = request.initiator(initiator);
    }
    request.validate()?;
    Ok(request)
}

/// One line of `--batch` input.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchLine {
    tenant_id: i64,
    #[serde(rename = "type")]
    run_type: String,
    #[serde(default)]
    inputs: Option<serde_json::Value>,
    #[serde(default)]
    context: Option<serde_json::Value>,
    #[serde(default)]
    user_id: Option<i64>,
    #[serde(default)]
    initiator_name: Option<String>,
    #[serde(default)]
    queue: Option<String>,
    #[serde(default)]
    at: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(default)]
    traceparent: Option<TraceContext>,
}

impl BatchLine {
    fn into_request(self, default_trace: Option<TraceContext>) -> RunRequest {
        let mut request = RunRequest::new(self.tenant_id, self.run_type);
        if let Some(inputs) = self.inputs {
            request = request.inputs(inputs);
        }
        if let Some(context) = self.context {
            request = request.context(context);
        }
        match (self.user_id, self.initiator_name) {
            (Some(id), name) => {
                request = request.initiator(Initiator::user(id, name.unwrap_or_default()))
            }
            (None, Some(name)) => {
                request = request.initiator(Initiator {
                    user_id: None,
                    name,
                })
            }
            (None, None) => {}
        }
        if let Some(queue) = self.queue {
            request = request.queue(queue);
        }
        if let Some(at) = self.at {
            request = request.not_before(at);
        }
        // A line without its own trace context joins the command's.
        if let Some(context) = self.traceparent.or(default_trace) {
            request = request.traceparent(context);
        }
        request
    }
}

/// Runs started per multi-row statement and pipelined XADD.
const BATCH_CHUNK: usize = 1000;

/// Connect the service the way `enqueue` does, with `connections` to
/// Postgres (a batch inserts the two halves of a chunk at once).
async fn service(
    redis: &RedisArgs,
    dispatch_timeout: Duration,
    database: &DatabaseArgs,
    registry: std::sync::Arc<opsrun::registry::Registry>,
    connections: u32,
) -> Result<RunService, Failure> {
    let mut transport_config = redis.transport_config()?;
    transport_config.command_timeout = dispatch_timeout;
    transport_config.pool_size = 1;
    // Opens no connection: Redis is contacted only when there is something to send.
    let transport = Transport::new(&transport_config)?;
    let ledger = database.ledger(connections).await?;
    Ok(RunService::new(ledger, transport).with_registry(registry))
}

async fn enqueue(args: EnqueueArgs) -> Result<u8, Failure> {
    let registry = std::sync::Arc::new(args.registry.load()?);
    if let Some(path) = &args.batch {
        return enqueue_batch(&args, path, registry).await;
    }
    let request = build_request(&args)?;
    // Refuse an undeclared type (strict_types) before anything is contacted.
    registry.spec(&request.run_type)?;
    let service = service(
        &args.redis,
        args.dispatch_timeout,
        &args.database,
        registry,
        1,
    )
    .await?;
    let ensured = service.ensure_run(&request).await?;
    let (output, code) = result_json(&ensured, &args.view.monitor_url);
    println!("{output}");
    Ok(code)
}

/// Every line is parsed and validated before anything is written: one bad
/// line refuses the whole batch (exit 2), naming each bad line and field.
async fn enqueue_batch(
    args: &EnqueueArgs,
    path: &std::path::Path,
    registry: std::sync::Arc<opsrun::registry::Registry>,
) -> Result<u8, Failure> {
    let invalid = |message: String| Failure::new(exit::INVALID, message);
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
            .map_err(|e| invalid(format!("reading --batch from stdin: {e}")))?
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| invalid(format!("reading --batch {}: {e}", path.display())))?
    };
    let mut requests = Vec::new();
    let mut lines = Vec::new();
    let mut problems = Vec::new();
    for (n, line) in text.lines().enumerate().map(|(n, l)| (n + 1, l.trim())) {
        if line.is_empty() {
            continue;
        }
        let parsed = serde_json::from_str::<BatchLine>(line)
            .map_err(|e| e.to_string())
            .and_then(|l| {
                let request = l.into_request(args.traceparent);
                request.validate().map_err(|e| e.to_string())?;
                registry
                    .spec(&request.run_type)
                    .map_err(|e| e.to_string())?;
                Ok(request)
            });
        match parsed {
            Ok(request) => {
                requests.push(request);
                lines.push(n);
            }
            Err(e) => problems.push(format!("line {n}: {e}")),
        }
    }
    if !problems.is_empty() {
        let shown: Vec<&str> = problems.iter().take(20).map(String::as_str).collect();
        return Err(invalid(format!(
            "{} of the batch's lines are invalid; nothing was written:\n  {}{}",
            problems.len(),
            shown.join("\n  "),
            if problems.len() > shown.len() {
                "\n  …"
            } else {
                ""
            }
        )));
    }
    let service = service(
        &args.redis,
        args.dispatch_timeout,
        &args.database,
        registry,
        2,
    )
    .await?;
    let mut code = exit::OK;
    let mut lines = lines.iter();
    service
        .ensure_runs_chunked(&requests, BATCH_CHUNK, |_, results| {
            // One write per chunk: stdout flushes every line otherwise.
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            for (result, line) in results.into_iter().zip(lines.by_ref()) {
                let output = match result {
                    Ok(ensured) => {
                        let (mut output, line_code) = result_json(&ensured, &args.view.monitor_url);
                        output["line"] = json!(line);
                        code = code.max(line_code);
                        output
                    }
                    Err(e) => {
                        let failure = Failure::from(e);
                        code = code.max(failure.code);
                        json!({"line": line, "error": opsrun::sanitize::redact(&failure.message)})
                    }
                };
                if writeln!(out, "{output}").is_err() {
                    code = code.max(exit::INTERNAL);
                }
            }
            if out.flush().is_err() {
                code = code.max(exit::INTERNAL);
            }
        })
        .await;
    Ok(code)
}

/// The JSON printed for one ensured run, and the exit code it calls for.
fn result_json(ensured: &opsrun::EnsuredRun, monitor_url: &str) -> (serde_json::Value, u8) {
    let run = &ensured.run;
    let mut output = json!({
        "run_id": run.id,
        "tenant_id": run.tenant_id,
        "type": run.run_type,
        "status": run.status,
        "outcome": run.outcome,
        "deduplicated": ensured.deduplicated(),
        "view_url": view_url(monitor_url, run),
        "queue": run.queue,
        "shard": run.shard,
        "run_identity_hash": run.run_identity_hash,
        "initiator_name": run.initiator_name,
        "user_id": run.user_id,
        "created_at": run.created_at,
        "dispatch_entry_id": run.dispatch_entry_id,
        "identity_rule": run.identity_rule,
        "not_before": run.not_before,
        "attempt": run.attempt,
        "max_attempts": run.max_attempts,
    });
    match &ensured.dispatch {
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
            let code = if opsrun::error::tls_refused(&failure.message) {
                exit::TLS_REFUSED
            } else {
                exit::DISPATCH_FAILED
            };
            (output, code)
        }
        _ => (output, exit::OK),
    }
}
