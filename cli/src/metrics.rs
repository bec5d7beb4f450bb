//! `--metrics-listen`: serve the Prometheus metrics of [`opsrun::telemetry`]
//! (and a binary's own) over HTTP, every path answering with the text
//! format (`/metrics` is what Prometheus asks for), each series labelled
//! with the service that serves it.

use std::net::SocketAddr;

use clap::Args;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use opsrun::telemetry;

use crate::{Failure, exit};

/// Where to serve Prometheus metrics.
#[derive(Args, Debug, Clone)]
pub struct MetricsArgs {
    /// Serve Prometheus metrics on this address (for example
    /// 127.0.0.1:9464; scrape http://ADDR/metrics). Off unless given.
    #[arg(long, env = "OPSRUN_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
}

impl MetricsArgs {
    /// Start serving, labelled `service`, when an address was given: call
    /// inside the runtime, before the work starts. An address that cannot
    /// be bound is exit 2.
    pub fn install(&self, service: &'static str) -> Result<(), Failure> {
        let Some(address) = self.metrics_listen else {
            return Ok(());
        };
        let invalid = |e: &dyn std::fmt::Display| {
            Failure::new(exit::INVALID, format!("--metrics-listen {address}: {e}"))
        };
        PrometheusBuilder::new()
            .with_http_listener(address)
            .add_global_label("service", service)
            .set_buckets_for_metric(
                Matcher::Suffix("_seconds".into()),
                telemetry::DURATION_BUCKETS,
            )
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Suffix("_runs".into()), telemetry::BATCH_BUCKETS)
            })
            .map_err(|e| invalid(&e))?
            .install()
            .map_err(|e| invalid(&e))?;
        telemetry::describe();
        tracing::info!(%address, "serving Prometheus metrics");
        Ok(())
    }
}
