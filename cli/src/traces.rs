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
use tracing::span;
use tracing_subscriber::layer::Context;

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

/// The OpenTelemetry layer with log events below warn kept out of spans:
/// the logs carry them, and two info events ("run started", "run
/// completed") as span events on every run took about a sixth of what
/// tracing cost the worker (measured with `make bench
/// ARGS=--observability-only`). Everything else is forwarded as is. (A
/// per-layer filter by kind disabled some run spans for every layer.)
pub(crate) struct WarningEvents<L>(pub(crate) L);

impl<S, L> tracing_subscriber::Layer<S> for WarningEvents<L>
where
    S: tracing::Subscriber,
    L: tracing_subscriber::Layer<S>,
{
    fn on_register_dispatch(&self, subscriber: &tracing::Dispatch) {
        self.0.on_register_dispatch(subscriber)
    }
    fn on_layer(&mut self, subscriber: &mut S) {
        self.0.on_layer(subscriber)
    }
    fn register_callsite(
        &self,
        metadata: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        self.0.register_callsite(metadata)
    }
    fn enabled(&self, metadata: &tracing::Metadata<'_>, ctx: Context<'_, S>) -> bool {
        self.0.enabled(metadata, ctx)
    }
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        self.0.on_new_span(attrs, id, ctx)
    }
    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, ctx: Context<'_, S>) {
        self.0.on_record(id, values, ctx)
    }
    fn on_follows_from(&self, id: &span::Id, follows: &span::Id, ctx: Context<'_, S>) {
        self.0.on_follows_from(id, follows, ctx)
    }
    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        if *event.metadata().level() <= tracing::Level::WARN {
            self.0.on_event(event, ctx)
        }
    }
    fn on_enter(&self, id: &span::Id, ctx: Context<'_, S>) {
        self.0.on_enter(id, ctx)
    }
    fn on_exit(&self, id: &span::Id, ctx: Context<'_, S>) {
        self.0.on_exit(id, ctx)
    }
    fn on_close(&self, id: span::Id, ctx: Context<'_, S>) {
        self.0.on_close(id, ctx)
    }
    fn on_id_change(&self, old: &span::Id, new: &span::Id, ctx: Context<'_, S>) {
        self.0.on_id_change(old, new, ctx)
    }
    // `OpenTelemetrySpanExt` (set_parent, context) finds the inner layer
    // through this.
    unsafe fn downcast_raw(&self, id: std::any::TypeId) -> Option<*const ()> {
        if id == std::any::TypeId::of::<Self>() {
            Some(self as *const Self as *const ())
        } else {
            // SAFETY: forwarded as the trait requires.
            unsafe { self.0.downcast_raw(id) }
        }
    }
}
