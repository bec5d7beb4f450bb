//! Pages for operator actions: the cancel button's confirmation step (a
//! page of its own, so it works without JavaScript: a stray click cancels
//! nothing) and the tenant's audit trail.

use axum::Form;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use opsrun::OperatorAction;
use serde::Deserialize;

use crate::AppState;
use crate::api::run_id;
use crate::error::ApiError;
use crate::pages::{PageCaller, PageError, layout, replica_noted, time};

/// The actions of `tenant` as a table, newest first.
pub fn table(tenant: i64, actions: &[OperatorAction]) -> Markup {
    html! {
        table .actions {
            thead { tr { th { "When" } th { "Action" } th { "Run" } th { "By" } th { "Why" } th { "Result" } } }
            @for a in actions {
                tr {
                    td { (time(a.at)) }
                    td { (a.action) }
                    td { @if let Some(id) = a.run_id {
                        a href=(format!("/tenants/{tenant}/operations/{id}")) { "#" (id) }
                    } @else if let Some(queue) = &a.queue { "queue " (queue) } }
                    td { (a.actor_name) @if let Some(u) = a.actor_user_id { " (user " (u) ")" } }
                    td { (a.reason.as_deref().unwrap_or("")) }
                    td { (a.result.replace('_', " ")) }
                }
            }
        }
    }
}

/// `GET /tenants/{tenant}/operations/{id}/cancel`: what cancelling will do,
/// a reason field, and the button that does it (operators only).
pub async fn cancel_form(
    State(state): State<AppState>,
    PageCaller(caller): PageCaller,
    Path((_, id)): Path<(String, String)>,
) -> Response {
    if let Err(e) = caller.operator("cancel runs") {
        return PageError(e, Some(caller)).into_response();
    }
    let run = match run_id(&id) {
        Ok(id) => state
            .ledger
            .get(caller.tenant_id(), id)
            .await
            .map_err(ApiError::from),
        Err(e) => Err(e),
    };
    let run = match run {
        Ok(Some(run)) => run,
        Ok(None) => return PageError(ApiError::not_found(), Some(caller)).into_response(),
        Err(e) => return PageError(e, Some(caller)).into_response(),
    };
    let back = format!("/tenants/{}/operations/{}", run.tenant_id, run.id);
    let title = format!("Cancel {} #{}?", run.run_type, run.id);
    let what = match run.status {
        opsrun::Status::Queued => {
            "It has not started: it will be completed as cancelled at once, and never run."
        }
        opsrun::Status::Running => {
            "It is running: its worker will stop the job within a second or two (an exec job gets SIGTERM, then SIGKILL) and complete it as cancelled, keeping the counts it reported."
        }
        opsrun::Status::Completed => "It has already completed: cancelling changes nothing.",
    };
    let body = html! {
        h1 #confirm-title { (title) }
        p #confirm-what { (what) }
        form #confirm-cancel method="post" action=(format!("{back}/cancel")) {
            label { "Why (recorded in the audit trail) " input name="reason" type="text" maxlength="500"; }
            " "
            button #confirm type="submit" { "Cancel this run" }
            " "
            a #keep href=(back) { "Keep it" }
        }
    };
    layout(&title, Some(&caller), body).into_response()
}

/// The confirmation form.
#[derive(Debug, Deserialize)]
pub struct CancelForm {
    #[serde(default)]
    reason: Option<String>,
}

/// `POST /tenants/{tenant}/operations/{id}/cancel`: cancel, then back to
/// the run's page, which shows what happened.
pub async fn cancel(
    State(state): State<AppState>,
    PageCaller(caller): PageCaller,
    Path((_, id)): Path<(String, String)>,
    Form(form): Form<CancelForm>,
) -> Response {
    if let Err(e) = caller.operator("cancel runs") {
        return PageError(e, Some(caller)).into_response();
    }
    let done = match run_id(&id) {
        Ok(id) => opsrun::service::cancel(
            &state.ledger,
            caller.tenant_id(),
            id,
            &caller.actor(),
            form.reason.as_deref(),
        )
        .await
        .map_err(ApiError::from),
        Err(e) => Err(e),
    };
    match done {
        Ok(Some((_, run))) => {
            Redirect::to(&format!("/tenants/{}/operations/{}", run.tenant_id, run.id))
                .into_response()
        }
        Ok(None) => PageError(ApiError::not_found(), Some(caller)).into_response(),
        Err(e) => PageError(e, Some(caller)).into_response(),
    }
}

/// `POST /tenants/{tenant}/operations/{id}/retry`: retry, then to the new
/// run's page (or the active run it was folded into).
pub async fn retry(
    State(state): State<AppState>,
    PageCaller(caller): PageCaller,
    Path((_, id)): Path<(String, String)>,
) -> Response {
    if let Err(e) = caller.operator("retry runs") {
        return PageError(e, Some(caller)).into_response();
    }
    let Some(service) = state.service.as_ref() else {
        let e = ApiError::invalid(
            "run_id",
            "this monitor was started without REDIS_URL: it cannot start runs",
        );
        return PageError(e, Some(caller)).into_response();
    };
    let done = match run_id(&id) {
        Ok(id) => service
            .retry(caller.tenant_id(), id, &caller.actor(), None)
            .await
            .map_err(ApiError::from),
        Err(e) => Err(e),
    };
    match done {
        Ok(Some(ensured)) => Redirect::to(&format!(
            "/tenants/{}/operations/{}",
            ensured.run.tenant_id, ensured.run.id
        ))
        .into_response(),
        Ok(None) => PageError(ApiError::not_found(), Some(caller)).into_response(),
        Err(e) => PageError(e, Some(caller)).into_response(),
    }
}

/// `GET /tenants/{tenant}/actions`: the tenant's audit trail, newest first.
pub async fn actions(State(state): State<AppState>, PageCaller(caller): PageCaller) -> Response {
    match state
        .reads
        .operator_actions(caller.tenant_id(), None, 200)
        .await
    {
        Ok(list) => {
            let body = html! {
                h1 { "Audit trail" }
                @if list.is_empty() { p #no-actions { "No operator action yet." } } @else { (table(caller.tenant_id(), &list)) }
            };
            layout("Audit trail", Some(&caller), replica_noted(&state, body)).into_response()
        }
        Err(e) => PageError(e.into(), Some(caller)).into_response(),
    }
}
