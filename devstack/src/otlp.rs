//! A stand-in OpenTelemetry collector: an OTLP/HTTP receiver on loopback
//! that keeps the spans it is sent as JSON (`OTEL_EXPORTER_OTLP_PROTOCOL=
//! http/json`) and counts the protobuf requests it cannot read, for the
//! tests of trace propagation and the benchmark's tracing-on rows.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::post;

/// One span as received.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// `service.name` of the resource that sent it.
    pub service: String,
    /// Span name.
    pub name: String,
    /// Trace id, 32 hex digits.
    pub trace_id: String,
    /// Span id, 16 hex digits.
    pub span_id: String,
    /// Parent span id, empty for a root.
    pub parent_span_id: String,
    /// The span's attributes, as OTLP JSON `{key, value}` objects.
    pub attributes: Vec<serde_json::Value>,
    /// The names of the span's events, in order.
    pub events: Vec<String>,
    /// Whether the span's status is an error.
    pub failed: bool,
}

impl ReceivedSpan {
    /// The string value of attribute `key`, if any.
    pub fn attribute(&self, key: &str) -> Option<String> {
        let attribute = self.attributes.iter().find(|a| a["key"] == key)?;
        let value = &attribute["value"];
        value["stringValue"]
            .as_str()
            .map(str::to_string)
            .or_else(|| value["intValue"].as_str().map(str::to_string))
            .or_else(|| value["intValue"].as_i64().map(|v| v.to_string()))
            .or_else(|| value["doubleValue"].as_f64().map(|v| v.to_string()))
    }
}

#[derive(Default)]
struct Received {
    spans: Vec<ReceivedSpan>,
    requests: u64,
}

/// The receiver; stops with the process.
pub struct OtlpReceiver {
    addr: SocketAddr,
    received: Arc<Mutex<Received>>,
}

impl OtlpReceiver {
    /// Listen on a free loopback port (call from a Tokio runtime).
    pub async fn start() -> Result<OtlpReceiver> {
        let received = Arc::new(Mutex::new(Received::default()));
        let app = Router::new()
            .route("/v1/traces", post(receive))
            .with_state(Arc::clone(&received));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the OTLP receiver")?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(OtlpReceiver { addr, received })
    }

    /// The base URL for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The spans received so far (JSON requests only).
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.received.lock().expect("receiver lock").spans.clone()
    }

    /// Export requests received so far, of either encoding.
    pub fn requests(&self) -> u64 {
        self.received.lock().expect("receiver lock").requests
    }
}

async fn receive(
    State(received): State<Arc<Mutex<Received>>>,
    headers: HeaderMap,
    body: Bytes,
) -> (
    StatusCode,
    [(header::HeaderName, &'static str); 1],
    &'static str,
) {
    let json = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    let mut received = received.lock().expect("receiver lock");
    received.requests += 1;
    if !json {
        // An empty ExportTraceServiceResponse: full success.
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/x-protobuf")],
            "",
        );
    }
    let Ok(request) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "application/json")],
            "{}",
        );
    };
    let empty = Vec::new();
    for resource in request["resourceSpans"].as_array().unwrap_or(&empty) {
        let service = resource["resource"]["attributes"]
            .as_array()
            .and_then(|a| a.iter().find(|a| a["key"] == "service.name"))
            .and_then(|a| a["value"]["stringValue"].as_str())
            .unwrap_or_default()
            .to_string();
        for scope in resource["scopeSpans"].as_array().unwrap_or(&empty) {
            for span in scope["spans"].as_array().unwrap_or(&empty) {
                let text = |key: &str| span[key].as_str().unwrap_or_default().to_lowercase();
                received.spans.push(ReceivedSpan {
                    service: service.clone(),
                    name: text("name"),
                    trace_id: text("traceId"),
                    span_id: text("spanId"),
                    parent_span_id: text("parentSpanId"),
                    attributes: span["attributes"].as_array().cloned().unwrap_or_default(),
                    events: span["events"]
                        .as_array()
                        .unwrap_or(&empty)
                        .iter()
                        .filter_map(|e| e["name"].as_str().map(str::to_string))
                        .collect(),
                    // STATUS_CODE_ERROR, as a number or by name.
                    failed: span["status"]["code"] == 2
                        || span["status"]["code"] == "STATUS_CODE_ERROR",
                });
            }
        }
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        "{}",
    )
}
