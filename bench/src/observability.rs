//! `make bench`'s observability rows: what Prometheus metrics and exported
//! traces cost end to end. The same end to end (one worker at the
//! benchmark's concurrency, no-op runs) with both off, with metrics served
//! (`--metrics-listen`, scraped by nobody: recording is the cost), and with
//! metrics plus traces exported over OTLP/HTTP (protobuf, the default) to a
//! receiver in this process (runs started without a traceparent: each
//! attempt a new trace, as many as with one). The
//! configurations take turns over `--rounds` rounds, each first in turn;
//! the median of per-round ratios is compared.

use anyhow::Result;
use devstack::OtlpReceiver;
use opsrun::RunService;

use crate::control::{print_medians, round_order, settle};
use crate::{Cli, WorkerDb, end_to_end};

/// Measure and print the rows.
pub async fn side_by_side(
    bin: &std::path::Path,
    db: &WorkerDb,
    redis_url: &str,
    prefix: &str,
    service: &RunService,
    cli: &Cli,
) -> Result<()> {
    let receiver = OtlpReceiver::start().await?;
    let metrics = "--metrics-listen=127.0.0.1:0".to_string();
    let configurations: [(&str, Vec<String>); 3] = [
        ("metrics and traces off", vec![]),
        ("metrics on", vec![metrics.clone()]),
        (
            "metrics on, traces exported (OTLP/HTTP)",
            vec![
                metrics,
                format!("OTEL_EXPORTER_OTLP_ENDPOINT={}", receiver.endpoint()),
            ],
        ),
    ];
    let queues = ["obs0", "obs1", "obs2"];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); configurations.len()];
    let mut worker_cpu: Vec<Vec<f64>> = vec![Vec::new(); configurations.len()];
    let mut machine_cpu: Vec<Vec<f64>> = vec![Vec::new(); configurations.len()];
    for round in 0..usize::from(cli.rounds) {
        for i in round_order(round, configurations.len()) {
            let extra = &configurations[i].1;
            settle(service.ledger().pool()).await?;
            let e2e = end_to_end(
                bin,
                db,
                redis_url,
                prefix,
                service,
                service.ledger().pool(),
                queues[i],
                1,
                cli.concurrency,
                cli.runs,
                extra,
            )
            .await?;
            rates[i].push(e2e.per_second);
            worker_cpu[i].push(e2e.worker_cpu_us);
            machine_cpu[i].push(e2e.machine_cpu_us);
        }
    }
    let labels = || configurations.iter().map(|(label, _)| *label);
    print_medians(
        &format!(
            "observability, end to end 1 worker x{} (n={})",
            cli.concurrency, cli.runs
        ),
        labels().zip(rates),
    );
    print_medians(
        "the same: worker CPU per run (us)",
        labels().zip(worker_cpu),
    );
    print_medians(
        "the same: machine CPU per run (us, every process)",
        labels().zip(machine_cpu),
    );
    println!(
        "(the receiver took {} OTLP export requests)",
        receiver.requests()
    );
    Ok(())
}
