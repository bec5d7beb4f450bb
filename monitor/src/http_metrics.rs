//! The monitor's own Prometheus metrics: requests by route template (never
//! the path itself, which names tenants and runs), method and status, and
//! their durations. Free until `--metrics-listen` installs an exporter.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics::{counter, histogram};

/// Requests answered: `route`, `method`, `status`.
pub const REQUESTS: &str = "opsrun_http_requests_total";
/// Request durations: `route`, `method`.
pub const DURATION: &str = "opsrun_http_request_duration_seconds";

/// Count and time one request.
pub async fn record(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_string();
    let method = request.method().as_str().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    let took = started.elapsed().as_secs_f64();
    histogram!(DURATION, "route" => route.clone(), "method" => method.clone()).record(took);
    counter!(REQUESTS, "route" => route, "method" => method,
        "status" => response.status().as_u16().to_string())
    .increment(1);
    response
}
