//! OpenTelemetry traces, off unless the standard variables configure them:
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`)
//! turns OTLP over HTTP on; `OTEL_EXPORTER_OTLP_PROTOCOL` picks
//! `http/protobuf` (the default) or `http/json`; `OTEL_EXPORTER_OTLP_HEADERS`,
//! `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`
//! and `OTEL_BSP_*` are read by the SDK as its documentation says;
//! `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` turn it off.
//! Spans are exported by the SDK's batch processor on its own thread, so a
//! slow collector never holds a job up (spans are dropped past its queue).

use std::env;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;

use crate::{Failure, exit};

/// The configured pipeline; dropping it flushes the spans not yet sent.
pub struct Traces {
    provider: SdkTracerProvider,
}

impl Drop for Traces {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("opsrun: flushing traces at exit: {e}");
        }
    }
}

/// Whether the environment asks for traces.
pub fn configured() -> bool {
    let set = |name: &str| env::var(name).is_ok_and(|v| !v.trim().is_empty());
    let disabled = env::var("OTEL_SDK_DISABLED")
        .is_ok_and(|v| v.trim().eq_ignore_ascii_case("true"))
        || env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v.trim().eq_ignore_ascii_case("none"));
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// Build the OTLP pipeline for `service` (the default service name) when
/// [`configured`]; a variable it cannot use is exit 2, naming it.
pub fn pipeline(
    service: &str,
) -> Result<Option<(Traces, opentelemetry_sdk::trace::Tracer)>, Failure> {
    if !configured() {
        return Ok(None);
    }
    let invalid = |what: String| Failure::new(exit::INVALID, what);
    if let Ok(exporter) = env::var("OTEL_TRACES_EXPORTER")
        && !exporter.trim().eq_ignore_ascii_case("otlp")
    {
        return Err(invalid(format!(
            "OTEL_TRACES_EXPORTER={exporter}: only otlp (or none) is supported"
        )));
    }
    let protocol = match env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|_| env::var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .as_deref()
        .map(str::trim)
    {
        Err(_) | Ok("http/protobuf") => Protocol::HttpBinary,
        Ok("http/json") => Protocol::HttpJson,
        Ok(other) => {
            return Err(invalid(format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL={other}: opsrun exports OTLP over HTTP, http/protobuf or http/json (run a collector for grpc)"
            )));
        }
    };
    // The reqwest client below takes TLS from rustls' process-wide provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let exporter = SpanExporter::builder()
        .with_http()
        .with_protocol(protocol)
        .build()
        .map_err(|e| invalid(format!("OpenTelemetry exporter: {e}")))?;
    let mut resource = Resource::builder();
    if env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name(service.to_string());
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    let tracer = provider.tracer("opsrun");
    opentelemetry::global::set_tracer_provider(provider.clone());
    opsrun::trace::start_recording();
    Ok(Some((Traces { provider }, tracer)))
}
