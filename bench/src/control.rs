//! `make bench`'s control rows: what per-key concurrency limits and the
//! running runs' cancel check cost end to end. The same end to end (one
//! worker at the benchmark's concurrency, no-op runs of one tenant) with
//! limits off, with a limit per tenant that is never reached (every claim
//! takes a slot and every completion frees one), and with the cancel check
//! off (`--cancel-check 1h`) against its default of a second; the
//! configurations take turns over `--rounds` rounds (each first in turn)
//! and the median of per-round ratios is compared.
//! A last row shows a limit that binds (25 at concurrency 50): the waiting
//! and waking at work.

use std::sync::Arc;

use anyhow::Result;
use opsrun::RunService;
use opsrun::registry::Registry;

use crate::{Cli, EndToEnd, WorkerDb, end_to_end};

/// A limit no tenant reaches at the benchmark's concurrency.
const HIGH_LIMIT: &str = r#"
[types."demo.noop"]
concurrency = { limit = 100000, per = "tenant" }
"#;

/// A limit that binds at concurrency 50.
const BINDING_LIMIT: &str = r#"
[types."demo.noop"]
concurrency = { limit = 25, per = "tenant" }
"#;

struct Configuration {
    label: &'static str,
    registry: Option<&'static str>,
    cancel_check: &'static str,
}

/// Measure and print the rows.
pub async fn side_by_side(
    bin: &std::path::Path,
    db: &WorkerDb,
    redis_url: &str,
    prefix: &str,
    service: &RunService,
    cli: &Cli,
) -> Result<()> {
    let configurations = [
        Configuration {
            label: "limits off, cancel check every 1s (default)",
            registry: None,
            cancel_check: "1s",
        },
        Configuration {
            label: "limit per tenant 100000 (never reached)",
            registry: Some(HIGH_LIMIT),
            cancel_check: "1s",
        },
        Configuration {
            label: "limits off, cancel check off (1h)",
            registry: None,
            cancel_check: "1h",
        },
    ];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); configurations.len()];
    let mut worker_cpu: Vec<Vec<f64>> = vec![Vec::new(); configurations.len()];
    let mut machine_cpu: Vec<Vec<f64>> = vec![Vec::new(); configurations.len()];
    let queues = ["ctl0", "ctl1", "ctl2"];
    for round in 0..usize::from(cli.rounds) {
        for i in round_order(round, configurations.len()) {
            let configuration = &configurations[i];
            let e2e = run(
                bin,
                db,
                redis_url,
                prefix,
                service,
                cli,
                configuration,
                queues[i],
                cli.runs,
            )
            .await?;
            rates[i].push(e2e.per_second);
            worker_cpu[i].push(e2e.worker_cpu_us);
            machine_cpu[i].push(e2e.machine_cpu_us);
        }
    }
    let binding = Configuration {
        label: "limit per tenant 25 (binding at x50)",
        registry: Some(BINDING_LIMIT),
        cancel_check: "1s",
    };
    let binding_runs = cli.runs / 5;
    let bound = run(
        bin,
        db,
        redis_url,
        prefix,
        service,
        cli,
        &binding,
        "ctl3",
        binding_runs,
    )
    .await?
    .per_second;

    print_medians(
        &format!(
            "control costs, end to end 1 worker x{} (n={})",
            cli.concurrency, cli.runs
        ),
        configurations.iter().map(|c| c.label).zip(rates),
    );
    print_medians(
        "the same: worker CPU per run (us)",
        configurations.iter().map(|c| c.label).zip(worker_cpu),
    );
    print_medians(
        "the same: machine CPU per run (us, every process)",
        configurations.iter().map(|c| c.label).zip(machine_cpu),
    );
    println!(
        "{:<46} {:>10.0} {:>22}",
        format!("{} (n={binding_runs})", binding.label),
        bound,
        "1 round"
    );
    Ok(())
}

/// One end to end under `configuration`.
#[allow(clippy::too_many_arguments)]
async fn run(
    bin: &std::path::Path,
    db: &WorkerDb,
    redis_url: &str,
    prefix: &str,
    service: &RunService,
    cli: &Cli,
    configuration: &Configuration,
    queue: &'static str,
    runs: usize,
) -> Result<EndToEnd> {
    let mut flags = vec![format!("--cancel-check={}", configuration.cancel_check)];
    let service = match configuration.registry {
        None => service.clone(),
        Some(text) => {
            let path = std::env::temp_dir()
                .join(format!("opsrun-bench-{}-{queue}.toml", std::process::id()));
            std::fs::write(&path, text)?;
            flags.push(format!("--registry={}", path.display()));
            let registry = Registry::parse(text).map_err(anyhow::Error::msg)?;
            service.clone().with_registry(Arc::new(registry))
        }
    };
    settle(service.ledger().pool()).await?;
    end_to_end(
        bin,
        db,
        redis_url,
        prefix,
        &service,
        service.ledger().pool(),
        queue,
        1,
        cli.concurrency,
        runs,
        &flags,
    )
    .await
}

/// Vacuum the ledger's busiest tables before a side-by-side run, so each
/// configuration starts from the same state and autovacuum, which a round's
/// dead rows would otherwise start at some point of some round, does not
/// land inside one configuration's measure: without it, autovacuum ran on
/// `operation_runs` (~400k rows) twice in 40 s of these rows and a
/// configuration's machine CPU per run swung by 20% between rounds; with
/// it, two invocations read alike. The workers' released counts are
/// folded first, as the reaper (which the benchmark does not run) does
/// every second.
pub(crate) async fn settle(pool: &opsrun::sqlx::PgPool) -> Result<()> {
    opsrun::sqlx::query("SELECT opsrun_fold_releases()")
        .execute(pool)
        .await?;
    opsrun::sqlx::query(
        "VACUUM (ANALYZE) operation_runs, concurrency_claims, concurrency_releases",
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// The order configurations run in, in round `round` of `n`: each starts a
/// round once and takes each place once over `n` rounds, so a drift within
/// a round (the ledger growing, autovacuum, the machine warming) is shared
/// instead of landing on the last configuration.
pub(crate) fn round_order(round: usize, n: usize) -> impl Iterator<Item = usize> {
    (0..n).map(move |k| (k + round) % n)
}

/// Print a table of configurations' rates: each one's median, its rounds,
/// and against the first configuration the median of its per-round ratios
/// (a round's configurations ran back to back, so a slow stretch of the
/// machine weighs on both sides of a ratio alike).
pub(crate) fn print_medians<'a>(title: &str, rows: impl IntoIterator<Item = (&'a str, Vec<f64>)>) {
    let mut first: Option<Vec<f64>> = None;
    for (label, rates) in rows {
        let base = first.get_or_insert_with(|| {
            println!(
                "\n{title:<46} {:>10} {:>28} {:>9}",
                "median",
                format!("{} rounds", rates.len()),
                "vs first"
            );
            rates.clone()
        });
        let mut ratios: Vec<f64> = rates.iter().zip(base.iter()).map(|(r, b)| r / b).collect();
        let rounds = rates
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(" ");
        let median_rate = median(&mut rates.clone());
        println!(
            "{label:<46} {median_rate:>10.0} {rounds:>28} {:>9.2}",
            median(&mut ratios)
        );
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
