//! `reaper`: runs the reaper passes on an interval (`--once`: one round,
//! counts printed as JSON). Several reapers may run at once.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use opsrun::{RunService, Transport};
use opsrun_cli::{
    DatabaseArgs, Failure, LogArgs, MetricsArgs, RedisArgs, RegistryArgs, duration, exit,
};
use opsrun_reaper::{ReaperConfig, due, lost_dispatch, pending, retention, schedules, stuck, trim};
use tokio_util::sync::CancellationToken;

const EXIT_CODES: &str = "\
Exit codes:
  0  --once: every pass ran; otherwise: stopped by SIGTERM/SIGINT
  1  --once: a pass failed (see failed_passes in the report and the log)
  2  invalid configuration
  4  Postgres unreachable at start
  5  Redis unreachable at start
  7  TLS refused by Redis or Postgres: a certificate not trusted (CA, host
     name), or TLS required by one side and not used by the other";

#[derive(Parser)]
#[command(name = "reaper", version, about = "Retention, reclaiming stuck runs, re-dispatching lost ones, trimming streams", after_help = EXIT_CODES)]
struct Cli {
    /// Run one round, print its counts as JSON, and exit.
    #[arg(long)]
    once: bool,
    /// Time between rounds.
    #[arg(long, env = "OPSRUN_REAPER_INTERVAL", default_value = "15s", value_parser = duration)]
    interval: Duration,
    /// Queues whose streams are checked, comma-separated (default: the
    /// registry's queues and every queue stream found).
    #[arg(long, env = "OPSRUN_QUEUES", value_delimiter = ',')]
    queues: Vec<String>,
    /// Time between due-pass rounds (scheduled runs and retries).
    #[arg(long, env = "OPSRUN_DUE_INTERVAL", default_value = "1s", value_parser = duration)]
    due_interval: Duration,
    /// Age of a queued run's dispatch before its stream entry is checked.
    #[arg(long, env = "OPSRUN_REDISPATCH_AFTER", default_value = "60s", value_parser = duration)]
    redispatch_after: Duration,
    /// Idle time before a pending entry is examined.
    #[arg(long, env = "OPSRUN_PENDING_IDLE", default_value = "5m", value_parser = duration)]
    pending_idle: Duration,
    /// Deliveries after which an entry is dead-lettered.
    #[arg(long, env = "OPSRUN_POISON_DELIVERIES", default_value_t = pending::DEFAULT_POISON_DELIVERIES)]
    poison_deliveries: u64,
    /// Acknowledged stream entries newer than this are kept for inspection.
    #[arg(long, env = "OPSRUN_TRIM_KEEP", default_value = "1h", value_parser = duration)]
    trim_keep: Duration,
    /// Completed runs older than this are deleted.
    #[arg(long, env = "OPSRUN_RETENTION", default_value = "90days", value_parser = duration)]
    retention: Duration,
    /// Rows per retention delete statement.
    #[arg(long, env = "OPSRUN_RETENTION_BATCH", default_value_t = retention::DEFAULT_BATCH,
          value_parser = clap::value_parser!(i64).range(1..=100_000))]
    retention_batch: i64,
    /// Runs examined per round by the stuck and lost-dispatch passes.
    #[arg(long, env = "OPSRUN_REAPER_BATCH", default_value_t = stuck::DEFAULT_BATCH,
          value_parser = clap::value_parser!(i64).range(1..=100_000))]
    batch: i64,
    #[command(flatten)]
    registry: RegistryArgs,
    #[command(flatten)]
    redis: RedisArgs,
    #[command(flatten)]
    database: DatabaseArgs,
    #[command(flatten)]
    metrics: MetricsArgs,
    /// Time between settings of the queue gauges (with --metrics-listen).
    #[arg(long, env = "OPSRUN_METRICS_INTERVAL", default_value = "5s", value_parser = duration)]
    metrics_interval: Duration,
    #[command(flatten)]
    log: LogArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Kept to the end of main: dropping it flushes the spans not yet sent.
    let _traces = match cli.log.init("info", "opsrun-reaper") {
        Ok(traces) => traces,
        Err(failure) => return failure.report(),
    };
    opsrun_cli::run_main(false, run(cli))
}

async fn run(cli: Cli) -> Result<u8, Failure> {
    for queue in &cli.queues {
        opsrun::request::validate_queue(queue)?;
    }
    let registry = cli.registry.load()?;
    let config = ReaperConfig {
        queues: cli.queues.clone(),
        due: due::DueConfig { batch: cli.batch },
        stuck: stuck::StuckConfig { batch: cli.batch },
        lost_dispatch: lost_dispatch::LostDispatchConfig {
            after: cli.redispatch_after,
            batch: cli.batch,
        },
        pending: pending::PendingConfig {
            idle: cli.pending_idle,
            poison_deliveries: cli.poison_deliveries,
            batch: cli.batch as usize,
        },
        trim: trim::TrimConfig {
            keep: cli.trim_keep,
        },
        retention: retention::RetentionConfig {
            after: cli.retention,
            batch: cli.retention_batch,
            max_batches: retention::DEFAULT_MAX_BATCHES,
        },
    };
    let transport = Transport::new(&cli.redis.transport_config()?)?;
    cli.database.refuse_unconfigured_pooler().await?;
    let ledger = cli.database.ledger(4).await?;
    transport.ping().await.map_err(opsrun_cli::redis_failure)?;
    // The registry's shards say where re-dispatched runs go.
    let service = RunService::new(ledger, transport).with_registry(std::sync::Arc::new(registry));

    if cli.once {
        let report = opsrun_reaper::run_once(&service, &config).await;
        println!("{}", serde_json::to_string(&report).unwrap_or_default());
        return Ok(if report.failed_passes.is_empty() {
            exit::OK
        } else {
            exit::INTERNAL
        });
    }

    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        if let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        }
        token.cancel();
    });
    if cli.metrics.metrics_listen.is_some() {
        cli.metrics.install("reaper")?;
        tokio::spawn(set_gauges(
            service.clone(),
            config.queues.clone(),
            cli.metrics_interval,
            shutdown.clone(),
        ));
    }
    tracing::info!(interval_s = cli.interval.as_secs(), "reaper started");
    // The due pass runs often so delays are honoured to about a second; the
    // full round (which includes it) every --interval.
    let mut last_round: Option<tokio::time::Instant> = None;
    loop {
        if last_round.is_none_or(|at| at.elapsed() >= cli.interval) {
            last_round = Some(tokio::time::Instant::now());
            let report = opsrun_reaper::run_once(&service, &config).await;
            let json = serde_json::to_string(&report).unwrap_or_default();
            if report == Default::default() {
                tracing::debug!(report = %json, "reaper round: nothing to do");
            } else {
                tracing::info!(report = %json, "reaper round");
            }
        } else {
            match schedules::run_once(&service).await {
                Ok(report) if report.fired + report.skipped > 0 => {
                    tracing::info!(
                        fired = report.fired,
                        skipped = report.skipped,
                        "schedule slots settled"
                    )
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %opsrun::sanitize::redact(&e.to_string()), "schedules pass failed")
                }
            }
            match due::run_once(&service, &config.due).await {
                Ok(report)
                    if report.dispatched
                        + report.dispatch_failed
                        + report.woken
                        + report.credits_returned
                        > 0 =>
                {
                    tracing::info!(
                        dispatched = report.dispatched,
                        failed = report.dispatch_failed,
                        woken = report.woken,
                        credits_returned = report.credits_returned,
                        "due runs dispatched"
                    )
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %opsrun::sanitize::redact(&e.to_string()), "due pass failed")
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(cli.due_interval.min(cli.interval)) => {}
        }
    }
    tracing::info!("reaper stopped");
    Ok(exit::OK)
}

/// Set the queue gauges every `every` until `shutdown`.
async fn set_gauges(
    service: RunService,
    queues: Vec<String>,
    every: Duration,
    shutdown: CancellationToken,
) {
    let queues = if queues.is_empty() {
        service.registry().queues()
    } else {
        queues
    };
    loop {
        if let Err(e) = opsrun_reaper::gauges::set_once(&service, &queues).await {
            tracing::warn!(error = %opsrun::sanitize::redact(&e.to_string()), "setting the queue gauges failed");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
