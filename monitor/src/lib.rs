//! Monitoring → Operations: a tenant-scoped view of the run ledger. HTML
//! pages and a JSON API, rendered from Postgres only (Redis is touched only
//! when an operator starts a run), behind bearer tokens bound to one tenant
//! and a role. `main.rs` adds the CLI equivalents.
//!
//! Routes:
//! - `GET /api/v1/runs`, `GET /api/v1/runs/{id}`, `POST /api/v1/runs`
//! - `GET /api/v1/notifications`, `POST /api/v1/notifications/read`, `GET /api/v1/me`
//! - `GET /login`, `POST /login`, `POST /logout`, `GET /`
//! - `GET /tenants/{tenant}/operations[/{id}]`, `GET /tenants/{tenant}/notifications`,
//!   `POST /tenants/{tenant}/notifications/read`
//! - `GET /healthz`

pub mod api;
pub mod auth;
pub mod error;
pub mod pages;
pub mod views;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use opsrun::{Ledger, RunService};

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The run ledger (every read goes through it).
    pub ledger: Ledger,
    /// Starts runs; `None` when the monitor runs without Redis (read-only).
    pub service: Option<RunService>,
    /// Related-link templates by context key.
    pub links: Arc<views::Links>,
    /// The monitor's public base URL, for `view_url`s in JSON.
    pub public_url: String,
}

/// The whole application.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/v1/runs", get(api::list_runs).post(api::start_run))
        .route("/api/v1/runs/{id}", get(api::show_run))
        .route("/api/v1/notifications", get(api::notifications))
        .route("/api/v1/notifications/read", post(api::mark_read))
        .route("/api/v1/me", get(api::me))
        .route("/", get(pages::index))
        .route("/login", get(pages::login_form).post(pages::login))
        .route("/logout", post(pages::logout))
        .route("/tenants/{tenant}/operations", get(pages::operations))
        .route("/tenants/{tenant}/operations/{id}", get(pages::operation))
        .route("/tenants/{tenant}/notifications", get(pages::notifications))
        .route(
            "/tenants/{tenant}/notifications/read",
            post(pages::mark_all_read),
        )
        .route("/healthz", get(healthz))
        .with_state(state)
}

/// `GET /healthz`: 200 when Postgres answers.
async fn healthz(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> axum::http::StatusCode {
    match opsrun::sqlx::query("SELECT 1")
        .execute(state.ledger.pool())
        .await
    {
        Ok(_) => axum::http::StatusCode::OK,
        Err(_) => axum::http::StatusCode::SERVICE_UNAVAILABLE,
    }
}
