//! The platform view of queue health: `GET /queues` (HTML) and
//! `GET /api/v1/platform/queues` (JSON), for platform tokens only (a
//! tenant's token gets 403). Per queue: its streams' length, pending, lag
//! and consumers with their idle time, its queued and running runs, the age
//! of its oldest due run, whether it is paused, and what it completed in
//! the last minutes. Counts and ages only, never a run's contents.

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use opsrun::queue_health::{QueueHealth, THROUGHPUT_MINUTES, queue_health};

use crate::AppState;
use crate::auth::Platform;
use crate::error::ApiError;
use crate::pages::{PageError, layout, time};

/// `GET /api/v1/platform/queues`.
pub async fn api(
    State(state): State<AppState>,
    _platform: Platform,
) -> Result<Json<Vec<QueueHealth>>, ApiError> {
    Ok(Json(
        queue_health(&state.ledger, state.service.as_ref()).await?,
    ))
}

/// The caller of the queues page: not logged in, a redirect to the login
/// form; a tenant's token, 403.
pub struct PagePlatform(pub Platform);

impl FromRequestParts<AppState> for PagePlatform {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        match Platform::from_request_parts(parts, state).await {
            Ok(platform) => Ok(PagePlatform(platform)),
            Err(e) if e.status == StatusCode::UNAUTHORIZED => {
                Err(Redirect::to("/login?next=%2Fqueues").into_response())
            }
            Err(e) => Err(PageError(e, None).into_response()),
        }
    }
}

/// `GET /queues`.
pub async fn page(State(state): State<AppState>, _platform: PagePlatform) -> Response {
    let queues = match queue_health(&state.ledger, state.service.as_ref()).await {
        Ok(queues) => queues,
        Err(e) => return PageError(e.into(), None).into_response(),
    };
    let body = html! {
        h1 { "Queues" }
        @if state.service.is_none() {
            p.notice { "This monitor has no Redis: stream lengths and consumers are not shown." }
        }
        @if queues.is_empty() { p #no-queues { "No queue has runs or streams." } } @else {
            table #queues {
                thead { tr {
                    th { "Queue" } th { "Stream length" } th { "Pending" } th { "Lag" }
                    th { "Queued" } th { "Running" } th { "Oldest due" }
                    th { "Consumers (idle)" } th { "Completed, last " (THROUGHPUT_MINUTES) " min" }
                } }
                tbody { @for q in &queues { (row(q)) } }
            }
        }
        form method="post" action="/logout" { button type="submit" { "Log out" } }
    };
    layout("Queues", None, body).into_response()
}

fn row(q: &QueueHealth) -> Markup {
    let length: u64 = q.streams.iter().map(|s| s.length).sum();
    let pending: u64 = q.streams.iter().map(|s| s.pending).sum();
    let lag: u64 = q.streams.iter().filter_map(|s| s.lag).sum();
    let completed: i64 = q.throughput.iter().map(|m| m.completed).sum();
    let failed: i64 = q.throughput.iter().map(|m| m.failed).sum();
    html! {
        tr.queue data-queue=(q.queue) {
            td {
                strong { (q.queue) }
                @if let Some(p) = &q.paused {
                    " " span.badge.failed.paused { "paused" }
                    div.small { "since " (time(p.paused_at)) " by " (p.paused_by) @if let Some(r) = &p.reason { ": " (r) } }
                }
            }
            td.length { (length) }
            td.pending-entries { (pending) }
            td.lag { (lag) }
            td.queued { (q.queued) }
            td.running { (q.running) }
            td.oldest { @if let Some(age) = q.oldest_due_seconds { (crate::views::human_duration(age)) } @else { "—" } }
            td.consumers {
                @for s in &q.streams { @for c in &s.consumers {
                    div { (c.name) " (" (crate::views::human_duration(c.idle_ms as f64 / 1000.0)) ", " (c.pending) " pending)" }
                } }
            }
            td.throughput {
                span.completed { (completed) } @if failed > 0 { " (" (failed) " failed)" }
                (sparkline(q))
            }
        }
    }
}

/// Completions per minute over the window as small SVG bars.
fn sparkline(q: &QueueHealth) -> Markup {
    const WIDTH: f64 = 6.0;
    let minutes = THROUGHPUT_MINUTES as usize;
    let now = chrono::Utc::now();
    let most = q
        .throughput
        .iter()
        .map(|m| m.completed)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    html! {
        svg.sparkline width=(WIDTH * minutes as f64) height="20" role="img"
            aria-label=(format!("runs completed per minute over the last {minutes} minutes")) {
            @for m in &q.throughput {
                @let ago = (now - m.minute).num_minutes().clamp(0, minutes as i64 - 1) as f64;
                @let h = (m.completed as f64 / most * 18.0).max(1.0);
                rect x=(format!("{:.0}", (minutes as f64 - 1.0 - ago) * WIDTH)) y=(format!("{:.1}", 20.0 - h))
                    width=(WIDTH - 1.0) height=(format!("{h:.1}")) fill="#4c7bd9" { title { (m.completed) " at " (time(m.minute)) } }
            }
        }
    }
}
