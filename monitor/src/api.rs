//! The JSON API under `/api/v1`: list and show the caller's tenant's runs,
//! start and cancel them (operators), read the tenant's audit trail and the
//! caller's notifications. Every query is scoped to the token's tenant;
//! another tenant's run is a 404.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use opsrun::listing::FilterParams;
use opsrun::{Dispatch, Initiator, RunId, RunRequest};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::{AppState, views};

/// Largest page of notifications or actions.
const MAX_NOTIFICATIONS: i64 = 200;

/// A query string that failed to parse (an unknown filter, say) is a 400.
pub fn query<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    query
        .map(|Query(q)| q)
        .map_err(|e| ApiError::invalid("query", e.body_text()))
}

/// `GET /api/v1/runs`: one page of runs, newest first.
pub async fn list_runs(
    State(state): State<AppState>,
    caller: Caller,
    params: Result<Query<FilterParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let params = query(params)?;
    let now = Utc::now();
    let filter = params.parse(now)?;
    let page = state.reads.list_runs(caller.tenant_id(), &filter).await?;
    let runs: Vec<views::RunSummary> = page
        .runs
        .iter()
        .map(|r| views::summary(r, &state.public_url, now))
        .collect();
    let next_cursor = page.next.map(|c| c.encode());
    let next_url = page.next.as_ref().map(|c| {
        format!(
            "/api/v1/runs?{}",
            serde_urlencoded::to_string(params.with_cursor(Some(c))).unwrap_or_default()
        )
    });
    Ok(Json(json!({
        "runs": runs,
        "since": filter.since,
        "until": filter.until,
        "limit": filter.limit,
        "next_cursor": next_cursor,
        "next_url": next_url,
    })))
}

/// Parse a run id from a path; anything that is not one answers as missing.
pub fn run_id(text: &str) -> Result<RunId, ApiError> {
    text.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .map(RunId)
        .ok_or_else(ApiError::not_found)
}

/// `GET /api/v1/runs/{id}`: every field of one run, and what it waits for
/// (`waiting_for`) when it has not completed.
pub async fn show_run(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<views::RunDetail>, ApiError> {
    let run = state
        .reads
        .get(caller.tenant_id(), run_id(&id)?)
        .await?
        .ok_or_else(ApiError::not_found)?;
    let mut detail = views::detail(&run, &state.public_url, &state.links, Utc::now());
    detail.waiting_for = state.explain(&run).await;
    Ok(Json(detail))
}

/// Body of `POST /api/v1/runs`. The tenant and the initiator come from the token.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartRun {
    #[serde(rename = "type")]
    run_type: String,
    #[serde(default)]
    inputs: Option<Value>,
    #[serde(default)]
    context: Option<Value>,
    #[serde(default)]
    queue: Option<String>,
    /// Start no earlier than this time.
    #[serde(default)]
    at: Option<chrono::DateTime<Utc>>,
}

/// `POST /api/v1/runs`: the producer's validation, dedupe and dispatch.
/// 201 for a new run, 200 for a start folded into the active run with the
/// same identity, 502 when the dispatch failed (the run is recorded as failed).
/// A W3C `traceparent` header puts the run's spans in the caller's trace; a
/// malformed one is a 400 naming it, like any bad field.
pub async fn start_run(
    State(state): State<AppState>,
    caller: Caller,
    headers: axum::http::HeaderMap,
    body: Result<Json<StartRun>, JsonRejection>,
) -> Result<Response, ApiError> {
    caller.operator("start runs")?;
    let Json(body) = body.map_err(|e| ApiError::invalid("body", e.body_text()))?;
    let mut request = RunRequest::new(caller.tenant_id(), body.run_type);
    if let Some(value) = headers.get("traceparent") {
        let text = value.to_str().map_err(|_| {
            ApiError::invalid("traceparent", "the traceparent header is not visible ASCII")
        })?;
        request = request.traceparent(opsrun::trace::TraceContext::parse(text)?);
    }
    if let Some(inputs) = body.inputs {
        request = request.inputs(inputs);
    }
    if let Some(context) = body.context {
        request = request.context(context);
    }
    if let Some(queue) = body.queue {
        // A token sends a type's runs to the type's own queue (from the
        // registry), or to a queue it was created for with --allow-queue.
        let type_queue = state
            .service
            .as_ref()
            .and_then(|s| s.registry().spec(&request.run_type).ok())
            .map(|spec| spec.queue.clone());
        if let Some(type_queue) = type_queue
            && !caller.0.may_use_queue(&queue, &type_queue)
        {
            return Err(ApiError::forbidden(format!(
                "this token may start {} runs only on their queue {type_queue:?}; \
                 a token created with --allow-queue {queue} may use {queue:?}",
                request.run_type
            )));
        }
        request = request.queue(queue);
    }
    if let Some(at) = body.at {
        request = request.not_before(at);
    }
    if let (Some(id), Some(name)) = (caller.0.user_id, &caller.0.user_name) {
        request = request.initiator(Initiator::user(id, name.clone()));
    }
    request.validate()?;
    let service = starter(&state)?;
    let ensured = service.ensure_run(&request).await?;
    let run = &ensured.run;
    let (status, dispatch, failure) = match &ensured.dispatch {
        Dispatch::Sent { .. } => (StatusCode::CREATED, "sent", None),
        Dispatch::Scheduled => (StatusCode::CREATED, "scheduled", None),
        Dispatch::Deduplicated => (StatusCode::OK, "deduplicated", None),
        Dispatch::Failed(f) => (StatusCode::BAD_GATEWAY, "failed", Some(f.clone())),
    };
    let body = json!({
        "run": views::detail(run, &state.public_url, &state.links, Utc::now()),
        "deduplicated": ensured.deduplicated(),
        // For a deduplicated start: the run it was folded into.
        "folded_into": ensured.deduplicated().then_some(run.id),
        "dispatch": dispatch,
        "failure": failure,
        "view_url": opsrun::service::view_url(&state.public_url, run),
    });
    Ok((status, Json(body)).into_response())
}

/// Body of `POST /api/v1/runs/{id}/cancel` and of a queue's pause or
/// resume (optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancelRun {
    /// Why; recorded in the audit trail and the run's failure (sanitized).
    #[serde(default)]
    reason: Option<String>,
}

/// `POST /api/v1/runs/{id}/cancel` (operators): a queued or waiting run
/// completes `cancelled` now, a running one is stopped by its worker within
/// a second or two. 200 with what it did (`result`, `changed`) and the run;
/// a completed run is left alone (`already_completed`).
pub async fn cancel_run(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Result<Json<CancelRun>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    caller.operator("cancel runs")?;
    let run_id = run_id(&id)?;
    let reason = optional_reason(body)?;
    let (result, run) = opsrun::service::cancel(
        &state.ledger,
        caller.tenant_id(),
        run_id,
        &caller.actor(),
        reason.as_deref(),
    )
    .await?
    .ok_or_else(ApiError::not_found)?;
    let changed = matches!(
        result,
        opsrun::CancelResult::Cancelled | opsrun::CancelResult::CancelRequested
    );
    Ok(Json(json!({
        "result": result,
        "changed": changed,
        "run": views::detail(&run, &state.public_url, &state.links, Utc::now()),
    })))
}

/// `POST /api/v1/runs/{id}/retry` (operators): a new run like one that
/// failed, partly succeeded or was cancelled, linked to it. 201 with the
/// new run, 200 when folded into the active run with the same identity,
/// 400 for a run that cannot be retried, 502 when the dispatch failed.
pub async fn retry_run(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Result<Json<CancelRun>, JsonRejection>,
) -> Result<Response, ApiError> {
    caller.operator("retry runs")?;
    let run_id = run_id(&id)?;
    let reason = optional_reason(body)?;
    let service = starter(&state)?;
    let ensured = service
        .retry(
            caller.tenant_id(),
            run_id,
            &caller.actor(),
            reason.as_deref(),
        )
        .await?
        .ok_or_else(ApiError::not_found)?;
    let status = match &ensured.dispatch {
        Dispatch::Deduplicated => StatusCode::OK,
        Dispatch::Failed(_) => StatusCode::BAD_GATEWAY,
        _ => StatusCode::CREATED,
    };
    let body = json!({
        "run": views::detail(&ensured.run, &state.public_url, &state.links, Utc::now()),
        "retry_of": run_id,
        "deduplicated": ensured.deduplicated(),
    });
    Ok((status, Json(body)).into_response())
}

/// `POST /api/v1/queues/{queue}/pause` and `…/resume`: for an operator
/// token created for that queue (`--allow-queue`), since a queue serves
/// every tenant. 200 with `result` (`paused`, `already_paused`, `resumed`,
/// `not_paused`); recorded in the token's tenant's trail.
pub async fn pause_queue(
    State(state): State<AppState>,
    caller: Caller,
    Path((queue, verb)): Path<(String, String)>,
    body: Result<Json<CancelRun>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let pause = match verb.as_str() {
        "pause" => true,
        "resume" => false,
        _ => return Err(ApiError::not_found()),
    };
    caller.operator("pause or resume queues")?;
    if !caller.0.queues.contains(&queue) {
        return Err(ApiError::forbidden(format!(
            "queue {queue:?} serves every tenant: only a token created with --allow-queue {queue} may pause or resume it"
        )));
    }
    let reason = optional_reason(body)?;
    let result = opsrun::service::pause_queue(
        &state.ledger,
        &queue,
        pause,
        Some(caller.tenant_id()),
        &caller.actor(),
        reason.as_deref(),
    )
    .await?;
    Ok(Json(json!({ "queue": queue, "result": result })))
}

/// `GET /api/v1/queues`: the paused queues.
pub async fn queues(
    State(state): State<AppState>,
    _caller: Caller,
) -> Result<Json<Value>, ApiError> {
    let paused = state.ledger.paused_queues().await?;
    Ok(Json(json!({ "paused": paused })))
}

/// The reason of an optional JSON body `{"reason": …}`; no body (no JSON
/// content type) is none.
fn optional_reason(
    body: Result<Json<CancelRun>, JsonRejection>,
) -> Result<Option<String>, ApiError> {
    match body {
        Ok(Json(body)) => Ok(body.reason),
        Err(JsonRejection::MissingJsonContentType(_)) => Ok(None),
        Err(e) => Err(ApiError::invalid("body", e.body_text())),
    }
}

/// Query of `GET /api/v1/actions`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionQuery {
    /// Only the actions on this run.
    #[serde(default)]
    pub run_id: Option<i64>,
    /// At most this many (capped to 200).
    #[serde(default)]
    pub limit: Option<i64>,
}

/// `GET /api/v1/actions`: the tenant's operator actions, newest first.
pub async fn actions(
    State(state): State<AppState>,
    caller: Caller,
    params: Result<Query<ActionQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let params = query(params)?;
    let limit = page_limit(params.limit)?;
    let list = state
        .reads
        .operator_actions(caller.tenant_id(), params.run_id.map(RunId), limit)
        .await?;
    Ok(Json(json!({ "actions": list })))
}

/// A page size: 50 by default, at most 200.
fn page_limit(limit: Option<i64>) -> Result<i64, ApiError> {
    match limit {
        None => Ok(50),
        Some(n) if n >= 1 => Ok(n.min(MAX_NOTIFICATIONS)),
        Some(_) => Err(ApiError::invalid("limit", "must be at least 1")),
    }
}

/// Body of `POST /api/v1/schedules` and `PUT /api/v1/schedules/{name}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleBody {
    #[serde(default)]
    name: Option<String>,
    cron: String,
    #[serde(default = "utc")]
    timezone: String,
    #[serde(rename = "type")]
    run_type: String,
    #[serde(default)]
    inputs: Option<Value>,
    /// `skip` (default), `latest` or `catch-up:N`.
    #[serde(default)]
    missed: Option<String>,
}

fn utc() -> String {
    "UTC".into()
}

impl ScheduleBody {
    fn definition(
        self,
        tenant_id: i64,
        name: &str,
    ) -> Result<opsrun::schedule::Definition, ApiError> {
        let missed = self.missed.as_deref().unwrap_or("skip").parse()?;
        Ok(opsrun::schedule::Definition::new(
            tenant_id,
            name,
            &self.cron,
            &self.timezone,
            &self.run_type,
            self.inputs.unwrap_or_else(|| json!({})),
            missed,
        )?)
    }
}

/// A schedule with its next slots and its last ones with their runs.
async fn schedule_view(
    state: &AppState,
    schedule: opsrun::ledger::Schedule,
) -> Result<Value, ApiError> {
    let next = opsrun::schedule::Timing::parse(&schedule.cron, &schedule.timezone)
        .map(|t| t.upcoming(schedule.last_slot.max(Utc::now()), 5))
        .unwrap_or_default();
    let last = state.ledger.schedule_slots(schedule.id, 10).await?;
    Ok(json!({ "schedule": schedule, "next_slots": next, "last_slots": last }))
}

/// `GET /api/v1/schedules`: the tenant's schedules, each with its next
/// slots and its last ones with their runs.
pub async fn schedules(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    let mut listed = Vec::new();
    for schedule in state.ledger.schedules(caller.tenant_id(), None).await? {
        listed.push(schedule_view(&state, schedule).await?);
    }
    Ok(Json(json!({ "schedules": listed })))
}

/// `POST /api/v1/schedules` (operators): create one; 201 with it, 400
/// naming a bad field or a name already used.
pub async fn create_schedule(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Json<ScheduleBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    caller.operator("manage schedules")?;
    let Json(body) = body.map_err(|e| ApiError::invalid("body", e.body_text()))?;
    let name = body.name.clone().unwrap_or_default();
    let definition = body.definition(caller.tenant_id(), &name)?;
    let by = caller.actor().name;
    let created = state
        .ledger
        .create_schedule(&definition.spec(&by, Utc::now()))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(schedule_view(&state, created).await?),
    )
        .into_response())
}

/// `PUT /api/v1/schedules/{name}` (operators): change one (slots start
/// again from now).
pub async fn update_schedule(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    body: Result<Json<ScheduleBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    caller.operator("manage schedules")?;
    let Json(body) = body.map_err(|e| ApiError::invalid("body", e.body_text()))?;
    let definition = body.definition(caller.tenant_id(), &name)?;
    let by = caller.actor().name;
    let changed = state
        .ledger
        .update_schedule(&definition.spec(&by, Utc::now()))
        .await?
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(schedule_view(&state, changed).await?))
}

/// `POST /api/v1/schedules/{name}/pause` and `…/resume` (operators).
pub async fn pause_schedule(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, verb)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let paused = match verb.as_str() {
        "pause" => true,
        "resume" => false,
        _ => return Err(ApiError::not_found()),
    };
    caller.operator("manage schedules")?;
    let changed = state
        .ledger
        .set_schedule_paused(caller.tenant_id(), &name, paused)
        .await?
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(schedule_view(&state, changed).await?))
}

/// `DELETE /api/v1/schedules/{name}` (operators); its runs stay.
pub async fn delete_schedule(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.operator("manage schedules")?;
    if !state
        .ledger
        .delete_schedule(caller.tenant_id(), &name)
        .await?
    {
        return Err(ApiError::not_found());
    }
    Ok(Json(json!({ "name": name, "deleted": true })))
}

/// The service that starts runs, or 503 when this monitor has no Redis.
fn starter(state: &AppState) -> Result<&opsrun::RunService, ApiError> {
    state.service.as_ref().ok_or_else(|| ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: "unavailable",
        message: "this monitor cannot start runs: it was started without REDIS_URL".into(),
        field: None,
    })
}

/// Query of `GET /api/v1/notifications`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationQuery {
    /// Only unread ones.
    #[serde(default)]
    pub unread: bool,
    /// At most this many (capped to 200).
    #[serde(default)]
    pub limit: Option<i64>,
}

/// `GET /api/v1/notifications`: the caller's own notifications, newest first.
pub async fn notifications(
    State(state): State<AppState>,
    caller: Caller,
    params: Result<Query<NotificationQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let params = query(params)?;
    let limit = page_limit(params.limit)?;
    let list = state
        .reads
        .notifications(caller.tenant_id(), caller.user_id()?, params.unread, limit)
        .await?;
    Ok(Json(json!({ "notifications": list })))
}

/// Body of `POST /api/v1/notifications/read`: some ids, or none for all.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarkRead {
    #[serde(default)]
    ids: Option<Vec<i64>>,
}

/// `POST /api/v1/notifications/read`: mark the caller's notifications read.
pub async fn mark_read(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Json<MarkRead>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(body) = body.map_err(|e| ApiError::invalid("body", e.body_text()))?;
    let marked = state
        .ledger
        .mark_notifications_read(caller.tenant_id(), caller.user_id()?, body.ids.as_deref())
        .await?;
    Ok(Json(json!({ "marked": marked })))
}

/// `GET /api/v1/me`: what the token is.
pub async fn me(caller: Caller) -> Json<Value> {
    let t = &caller.0;
    Json(json!({
        "tenant_id": t.tenant_id,
        "role": t.role,
        "user_id": t.user_id,
        "user_name": t.user_name,
        "label": t.label,
    }))
}
