//! Monitoring → Operations: a tenant-scoped view of the run ledger. HTML
//! pages and a JSON API, rendered from Postgres (Redis is read only to
//! start or retry a run, to say where a waiting run's entry stands, and for
//! the platform's queue health), behind bearer tokens bound to one tenant
//! and a role, or platform tokens bound to none that see queue health only;
//! the pages use server-side login sessions. `main.rs` adds the CLI
//! equivalents.
//!
//! Routes:
//! - `GET /api/v1/runs`, `GET /api/v1/runs/{id}`, `POST /api/v1/runs`
//! - `GET /api/v1/notifications`, `POST /api/v1/notifications/read`, `GET /api/v1/me`
//! - `GET /api/v1/chart` (the operations chart's numbers)
//! - `GET /queues`, `GET /api/v1/platform/queues` (platform tokens)
//! - `GET /login`, `POST /login`, `POST /logout`, `GET /`
//! - `GET /tenants/{tenant}/operations[/{id}]`, `GET /tenants/{tenant}/operations/rows`
//!   (the list's live updates), `GET /tenants/{tenant}/notifications`,
//!   `POST /tenants/{tenant}/notifications/read`
//! - `GET /static/opsrun.css`, `GET /static/live.js`, `GET /healthz`

pub mod actions;
pub mod api;
pub mod auth;
pub mod chart;
pub mod error;
pub mod http_metrics;
pub mod pages;
pub mod queues;
pub mod replica;
pub mod schedules;
pub mod security;
pub mod server;
pub mod views;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post};
use opsrun::{Ledger, RunService};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;

/// Default length of a login session.
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// Default login attempts a minute from one address.
pub const DEFAULT_LOGIN_ATTEMPTS_PER_MINUTE: u32 = 10;
/// Default time a request may take, body included.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The run ledger on the primary: writes, token and session checks.
    pub ledger: Ledger,
    /// Where lists, run pages and notification lists are read: a replica
    /// (see [`replica`]) or the primary.
    pub reads: Ledger,
    /// The replica's lag, when `reads` is a replica.
    pub replica_lag: Option<Arc<replica::ReplicaLag>>,
    /// Starts runs; `None` when the monitor runs without Redis (read-only).
    pub service: Option<RunService>,
    /// Related-link templates by context key.
    pub links: Arc<views::Links>,
    /// The monitor's public base URL, for `view_url`s in JSON and the
    /// same-origin check.
    pub public_url: String,
    /// How long a login lasts.
    pub session_ttl: Duration,
    /// Login attempts per client address.
    pub login_limiter: Arc<security::LoginLimiter>,
    /// Longest a request may take.
    pub request_timeout: Duration,
}

impl AppState {
    /// A state with the documented defaults for sessions, login attempts and
    /// request time.
    pub fn new(
        ledger: Ledger,
        service: Option<RunService>,
        links: views::Links,
        public_url: &str,
    ) -> AppState {
        AppState {
            reads: ledger.clone(),
            replica_lag: None,
            ledger,
            service,
            links: Arc::new(links),
            public_url: public_url.trim_end_matches('/').to_string(),
            session_ttl: DEFAULT_SESSION_TTL,
            login_limiter: security::LoginLimiter::per_minute(
                NonZeroU32::new(DEFAULT_LOGIN_ATTEMPTS_PER_MINUTE).expect("non-zero"),
            ),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

impl AppState {
    /// What `run` waits for, unless it completed: read from the primary
    /// and, when this monitor has Redis, from its stream. `None` when it
    /// could not be read (the page is shown without it).
    pub async fn explain(&self, run: &opsrun::Run) -> Option<opsrun::explain::Explanation> {
        if run.status == opsrun::Status::Completed {
            return None;
        }
        let transport = self.service.as_ref().map(|s| s.transport());
        match opsrun::explain::explain(&self.ledger, transport, run, chrono::Utc::now()).await {
            Ok(explanation) => Some(explanation),
            Err(e) => {
                tracing::warn!(run_id = %run.id, error = %e, "explaining a run failed");
                None
            }
        }
    }

    /// Read lists, run pages and notification lists from `replica`,
    /// watching its lag.
    pub fn with_replica(mut self, replica: Ledger, warn_after: Duration) -> AppState {
        self.replica_lag = Some(replica::ReplicaLag::watch(replica.clone(), warn_after));
        self.reads = replica;
        self
    }

    /// What a page read from the replica says when it is far behind.
    pub fn replica_note(&self) -> Option<String> {
        self.replica_lag.as_ref().and_then(|lag| lag.note())
    }
}

/// The whole application.
pub fn router(state: AppState) -> Router {
    let https = state.public_url.starts_with("https://");
    let mut app = Router::new()
        .route("/api/v1/runs", get(api::list_runs).post(api::start_run))
        .route("/api/v1/runs/{id}", get(api::show_run))
        .route("/api/v1/runs/{id}/cancel", post(api::cancel_run))
        .route("/api/v1/runs/{id}/retry", post(api::retry_run))
        .route("/api/v1/actions", get(api::actions))
        .route("/api/v1/queues", get(api::queues))
        .route("/api/v1/platform/queues", get(queues::api))
        .route("/api/v1/chart", get(chart::api))
        .route("/queues", get(queues::page))
        .route(
            "/api/v1/schedules",
            get(api::schedules).post(api::create_schedule),
        )
        .route(
            "/api/v1/schedules/{name}",
            axum::routing::put(api::update_schedule).delete(api::delete_schedule),
        )
        .route("/api/v1/schedules/{name}/{verb}", post(api::pause_schedule))
        .route("/api/v1/queues/{queue}/{verb}", post(api::pause_queue))
        .route("/api/v1/notifications", get(api::notifications))
        .route("/api/v1/notifications/read", post(api::mark_read))
        .route("/api/v1/me", get(api::me))
        .route("/", get(pages::index))
        .route("/login", get(pages::login_form).post(pages::login))
        .route("/logout", post(pages::logout))
        .route("/tenants/{tenant}/operations", get(pages::operations))
        .route(
            "/tenants/{tenant}/operations/rows",
            get(pages::operation_rows),
        )
        .route("/tenants/{tenant}/operations/{id}", get(pages::operation))
        .route(
            "/tenants/{tenant}/operations/{id}/cancel",
            get(actions::cancel_form).post(actions::cancel),
        )
        .route("/tenants/{tenant}/actions", get(actions::actions))
        .route("/tenants/{tenant}/schedules", get(schedules::page))
        .route(
            "/tenants/{tenant}/operations/{id}/retry",
            post(actions::retry),
        )
        .route("/tenants/{tenant}/notifications", get(pages::notifications))
        .route(
            "/tenants/{tenant}/notifications/read",
            post(pages::mark_all_read),
        )
        .route("/static/opsrun.css", get(pages::stylesheet))
        .route("/static/live.js", get(pages::live_script))
        .route("/healthz", get(healthz))
        .layer(axum::middleware::from_fn(http_metrics::record))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            security::same_origin_only,
        ))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            state.request_timeout,
        ));
    for (name, value) in security::headers(https) {
        app = app.layer(SetResponseHeaderLayer::if_not_present(name, value));
    }
    if let Some(lag) = state.replica_lag.clone() {
        app = app.layer(axum::middleware::map_response(
            move |mut response: axum::response::Response| {
                let lag = lag.clone();
                async move {
                    let seconds = format!("{:.1}", lag.current().as_secs_f64());
                    if let Ok(value) = axum::http::HeaderValue::from_str(&seconds) {
                        response.headers_mut().insert("x-opsrun-replica-lag", value);
                    }
                    response
                }
            },
        ));
    }
    app.with_state(state)
}

/// `GET /healthz`: 200 when Postgres answers.
async fn healthz(axum::extract::State(state): axum::extract::State<AppState>) -> StatusCode {
    match state.ledger.ping().await {
        Ok(_) => StatusCode::OK,
        Err(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}
