//! The HTML pages: login, the Operations list with its filters, a run's
//! detail, and the user's notifications. Rendered with maud (every value
//! escaped) from the same views as the JSON API; a login exchanges a token
//! for a server-side session whose secret the cookie carries.

use axum::Form;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Path, Query, RawPathParams, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::CookieJar;
use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};
use opsrun::listing::FilterParams;
use serde::Deserialize;

use crate::api::{query, run_id};
use crate::auth::{COOKIE, Caller, cleared_cookie, session_cookie};
use crate::error::ApiError;
use crate::security::local_path;
use crate::{AppState, views};

const STYLE: &str = "
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d2430;background:#f6f7f9}
header{background:#1d2430;color:#fff;padding:10px 24px;display:flex;gap:24px;align-items:center}
header a{color:#cfe0ff;text-decoration:none} header .who{margin-left:auto;opacity:.85}
main{padding:16px 24px;max-width:1200px}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{text-align:left;padding:6px 8px;border-bottom:1px solid #e3e6ea;vertical-align:top}
th{font-weight:600;background:#eef0f3}
form.filters{display:flex;flex-wrap:wrap;gap:8px;align-items:end;margin-bottom:12px}
form.filters label{display:flex;flex-direction:column;font-size:12px;color:#555}
.badge{padding:1px 8px;border-radius:10px;font-size:12px;background:#e3e6ea}
.succeeded{background:#d5f5dd}.partially_succeeded{background:#fff1c2}.failed{background:#ffd9d6}.pending{background:#dde9ff}.cancelled{background:#e8e0f5}
.error{background:#ffd9d6;padding:8px 12px;border-radius:4px}
dl{display:grid;grid-template-columns:200px 1fr;gap:4px 12px;background:#fff;padding:12px}
dt{color:#555} dd{margin:0} pre{background:#fff;padding:8px;overflow:auto}
#chart{background:#fff;padding:8px 12px;margin:12px 0} #chart h2{font-size:15px;margin:6px 0}
.small{font-size:12px;color:#555} #live{font-size:12px;color:#3aa55d}
";

/// The page frame: header with navigation for a logged-in caller.
/// `body` read from the replica, under a note when it is far behind.
pub(crate) fn replica_noted(state: &AppState, body: Markup) -> Markup {
    html! {
        @if let Some(note) = state.replica_note() { p.notice #replica-lag { (note) } }
        (body)
    }
}

pub(crate) fn layout(title: &str, caller: Option<&Caller>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · opsrun" }
                link rel="stylesheet" href="/static/opsrun.css";
            }
            body {
                header {
                    strong { "opsrun" }
                    @if let Some(caller) = caller {
                        a href=(format!("/tenants/{}/operations", caller.tenant_id())) { "Monitoring → Operations" }
                        a href=(format!("/tenants/{}/schedules", caller.tenant_id())) { "Schedules" }
                        a href=(format!("/tenants/{}/actions", caller.tenant_id())) { "Audit trail" }
                        @if caller.0.user_id.is_some() {
                            a href=(format!("/tenants/{}/notifications", caller.tenant_id())) { "Notifications" }
                        }
                        span.who {
                            "Tenant " (caller.tenant_id()) " · "
                            (caller.0.user_name.as_deref().unwrap_or("service token")) " · " (caller.0.role.as_str())
                        }
                        form method="post" action="/logout" { button type="submit" { "Log out" } }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// An error as a page, with the same status the API would answer.
pub(crate) struct PageError(pub ApiError, pub Option<Caller>);

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let title = match self.0.status {
            StatusCode::NOT_FOUND => "Not found",
            StatusCode::BAD_REQUEST => "Bad request",
            _ => "Error",
        };
        let body = html! {
            h1 { (title) }
            p.error { (opsrun::sanitize::redact(&self.0.message)) }
        };
        (self.0.status, layout(title, self.1.as_ref(), body)).into_response()
    }
}

/// The caller of a page under `/tenants/{tenant}/…`. Not logged in: a
/// redirect to the login form that comes back here. Another tenant in the
/// path answers as missing (404).
pub struct PageCaller(pub Caller);

impl FromRequestParts<AppState> for PageCaller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let caller = match Caller::from_request_parts(parts, state).await {
            Ok(caller) => caller,
            Err(e) if e.status == StatusCode::UNAUTHORIZED => {
                let next = parts
                    .uri
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/");
                let query = serde_urlencoded::to_string([("next", next)]).unwrap_or_default();
                return Err(Redirect::to(&format!("/login?{query}")).into_response());
            }
            Err(e) => return Err(PageError(e, None).into_response()),
        };
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let tenant = params
            .iter()
            .find(|(key, _)| *key == "tenant")
            .map(|(_, v)| v);
        if tenant.is_some_and(|t| t.parse::<i64>().ok() != Some(caller.tenant_id())) {
            return Err(PageError(ApiError::not_found(), Some(caller)).into_response());
        }
        Ok(PageCaller(caller))
    }
}

pub(crate) fn time(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn outcome_badge(outcome: opsrun::Outcome) -> Markup {
    html! { span class=(format!("badge {}", outcome.as_str())) { (outcome.label()) } }
}

/// `GET /`: the caller's Operations, or the login form.
pub async fn index(caller: Result<Caller, ApiError>) -> Redirect {
    match caller {
        Ok(caller) => Redirect::to(&format!("/tenants/{}/operations", caller.tenant_id())),
        // A platform token: its one page.
        Err(e) if e.status == StatusCode::FORBIDDEN => Redirect::to("/queues"),
        Err(_) => Redirect::to("/login"),
    }
}

/// Query of the login form.
#[derive(Debug, Default, Deserialize)]
pub struct LoginQuery {
    #[serde(default)]
    next: Option<String>,
}

/// `GET /static/opsrun.css`: the pages' one stylesheet (the content
/// security policy allows no inline style).
pub async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        STYLE,
    )
        .into_response()
}

fn login_page(next: Option<&str>, error: Option<&str>) -> Markup {
    layout(
        "Log in",
        None,
        html! {
            h1 { "Log in" }
            @if let Some(error) = error { p.error #login-error { (error) } }
            form #login method="post" action="/login" {
                p { label { "Access token " input type="password" name="token" autocomplete="off" required; } }
                @if let Some(next) = local_path(next) { input type="hidden" name="next" value=(next); }
                button type="submit" { "Log in" }
            }
            p { "Tokens come from " code { "monitor token create --tenant ID --role readonly|operator" } "." }
        },
    )
}

/// `GET /login`.
pub async fn login_form(Query(q): Query<LoginQuery>) -> Markup {
    login_page(q.next.as_deref(), None)
}

/// The login form's fields.
#[derive(Debug, Deserialize)]
pub struct LoginForm {
    token: String,
    #[serde(default)]
    next: Option<String>,
}

/// `POST /login`: check the token, start a session, set its cookie, go on.
/// Attempts are limited per client address.
pub async fn login(
    State(state): State<AppState>,
    jar: CookieJar,
    extensions: axum::http::Extensions,
    Form(form): Form<LoginForm>,
) -> Response {
    if let Err(wait) = state
        .login_limiter
        .attempt(crate::security::client_address(&extensions))
    {
        let message = format!("Too many login attempts; try again in {wait} s.");
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, wait.to_string())],
            login_page(form.next.as_deref(), Some(&message)),
        )
            .into_response();
    }
    let secret = form.token.trim().to_string();
    let token = if secret.starts_with(opsrun::access::TOKEN_PREFIX) && secret.len() <= 128 {
        state.ledger.token_by_secret(&secret).await
    } else {
        Ok(None)
    };
    match token {
        Ok(Some(token)) => {
            let (session, hash) = opsrun::access::generate_token();
            if let Err(e) = state
                .ledger
                .create_session(token.id, &hash, state.session_ttl)
                .await
            {
                return PageError(e.into(), None).into_response();
            }
            let to = local_path(form.next.as_deref())
                .map(str::to_string)
                .unwrap_or_else(|| match token.tenant_id {
                    Some(tenant) => format!("/tenants/{tenant}/operations"),
                    None => "/queues".to_string(),
                });
            (
                jar.add(session_cookie(session, state.session_ttl)),
                Redirect::to(&to),
            )
                .into_response()
        }
        Ok(None) => (
            StatusCode::UNAUTHORIZED,
            login_page(form.next.as_deref(), Some("That token is not valid.")),
        )
            .into_response(),
        Err(e) => PageError(e.into(), None).into_response(),
    }
}

/// `POST /logout`: end the session (the cookie's secret no longer logs
/// anyone in, wherever it was copied) and clear the cookie.
pub async fn logout(State(state): State<AppState>, jar: CookieJar) -> Response {
    if let Some(secret) = jar.get(COOKIE).map(|c| c.value().to_string())
        && let Err(e) = state.ledger.end_session(&secret).await
    {
        return PageError(e.into(), None).into_response();
    }
    (jar.remove(cleared_cookie()), Redirect::to("/login")).into_response()
}

/// `GET /tenants/{tenant}/operations`: the filtered list.
pub async fn operations(
    State(state): State<AppState>,
    PageCaller(caller): PageCaller,
    params: Result<Query<FilterParams>, QueryRejection>,
) -> Response {
    let now = Utc::now();
    let params_in = params
        .as_ref()
        .map(|Query(p)| p.clone())
        .unwrap_or_default();
    let page = match query(params)
        .and_then(|p| p.parse(now).map(|f| (p, f)).map_err(ApiError::from))
    {
        Ok((params, filter)) => match state.reads.list_runs(caller.tenant_id(), &filter).await {
            Ok(page) => Ok((params, filter, page)),
            Err(e) => Err(ApiError::from(e)),
        },
        Err(e) => Err(e),
    };
    let chart = match &page {
        Ok((_, filter, _)) => {
            let (since, until) = crate::chart::window(filter, now);
            match state.reads.chart(caller.tenant_id(), since, until).await {
                Ok(chart) => Some(chart),
                Err(e) => {
                    tracing::warn!(error = %e, "reading the chart failed; the page is shown without it");
                    None
                }
            }
        }
        Err(_) => None,
    };
    let (status, body) = match &page {
        Ok((params, filter, page)) => (
            StatusCode::OK,
            operations_body(&caller, params, filter, page, chart.as_ref(), now),
        ),
        Err(e) => (
            e.status,
            html! {
                h1 { "Operations" }
                (filter_form(&caller, &params_in))
                p.error #filter-error { (opsrun::sanitize::redact(&e.message)) }
            },
        ),
    };
    // Paused queues hold runs of every tenant: said above the list.
    let paused = state.ledger.paused_queues().await.unwrap_or_default();
    let body = html! {
        @for p in &paused {
            p.notice .paused-queue { "Queue " strong { (p.queue) } " is paused since " (time(p.paused_at))
                @if let Some(reason) = &p.reason { ": " (reason) }
                ". Its runs wait and start once it is resumed." }
        }
        (body)
    };
    let body = replica_noted(&state, body);
    (status, layout("Operations", Some(&caller), body)).into_response()
}

fn filter_form(caller: &Caller, p: &FilterParams) -> Markup {
    let v = |o: &Option<String>| o.clone().unwrap_or_default();
    let select = |name: &str, current: &Option<String>, options: &[&str]| {
        html! {
            select name=(name) {
                option value="" { "any" }
                @for o in options {
                    option value=(o) selected[current.as_deref() == Some(*o)] { (o) }
                }
            }
        }
    };
    html! {
        form.filters #filters method="get" action=(format!("/tenants/{}/operations", caller.tenant_id())) {
            label { "Type" input name="type" value=(v(&p.run_type)) placeholder="inventory.sync"; }
            label { "Status" (select("status", &p.status, &["queued", "running", "completed"])) }
            label { "Outcome" (select("outcome", &p.outcome, &["pending", "succeeded", "partially_succeeded", "failed", "cancelled"])) }
            label { "Initiator" input name="initiator" value=(v(&p.initiator)) placeholder="name, user id or system"; }
            label { "Failure code" input name="failure_code" value=(v(&p.failure_code)) placeholder="job.timeout"; }
            label { "Since" input type="date" name="since" value=(v(&p.since)); }
            label { "Until" input type="date" name="until" value=(v(&p.until)); }
            @if let Some(identity) = &p.identity { input type="hidden" name="identity" value=(identity); }
            button type="submit" { "Filter" }
        }
    }
}

fn operations_body(
    caller: &Caller,
    params: &FilterParams,
    filter: &opsrun::listing::RunFilter,
    page: &opsrun::listing::Page,
    chart: Option<&opsrun::chart::Chart>,
    now: DateTime<Utc>,
) -> Markup {
    let query = serde_urlencoded::to_string(params).unwrap_or_default();
    html! {
        h1 { "Operations" }
        (filter_form(caller, params))
        p { "Created since " (time(filter.since)) @if let Some(until) = filter.until { " until " (time(until)) } ", newest first."
            // The first page follows new runs and status changes (live.js).
            @if params.cursor.is_none() {
                " " span #live data-rows-url=(format!("/tenants/{}/operations/rows?{query}", caller.tenant_id())) { "Live" }
            }
        }
        @if let Some(chart) = chart { (crate::chart::render(chart)) }
        table #runs {
            thead { tr { th { "Run" } th { "Type" } th { "Status" } th { "Outcome" } th { "Initiator" } th { "Created" } th { "Duration" } th { "Items" } th { "Failures" } } }
            tbody #runs-body { (run_rows(page, now)) }
        }
        @if let Some(next) = &page.next {
            p { a #next-page href=(format!("?{}", serde_urlencoded::to_string(params.with_cursor(Some(next))).unwrap_or_default())) { "Older runs →" } }
        }
        script src="/static/live.js" defer {}
    }
}

/// The list's rows (the body live updates replace).
fn run_rows(page: &opsrun::listing::Page, now: DateTime<Utc>) -> Markup {
    html! {
        @if page.runs.is_empty() {
            tr #no-runs { td colspan="9" { "No runs match." } }
        }
        @for run in &page.runs {
            @let s = views::summary(run, "", now);
            tr.run data-run-id=(run.id) data-status=(run.status.as_str()) {
                td { a href=(s.view_url) { "#" (run.id) } }
                td { (run.run_type) }
                td.status { (s.status_label) }
                td.outcome { (outcome_badge(run.outcome)) }
                td { (run.initiator_name) }
                td { (time(run.created_at)) }
                td { @if let Some(d) = s.duration_seconds { (views::human_duration(d)) } }
                td { @if s.summary_counts.total > 0 { (s.summary_counts.success) " / " (s.summary_counts.total) } }
                td { (s.failure_codes.join(", ")) }
            }
        }
    }
}

/// `GET /tenants/{tenant}/operations/rows`: the first page's rows for the
/// same filter, polled by the open page every two seconds (plain reads, so
/// it works behind a transaction pooler and from a replica).
pub async fn operation_rows(
    State(state): State<AppState>,
    PageCaller(caller): PageCaller,
    params: Result<Query<FilterParams>, QueryRejection>,
) -> Response {
    let now = Utc::now();
    let page = match query(params).and_then(|p| p.parse(now).map_err(ApiError::from)) {
        Ok(filter) => state
            .reads
            .list_runs(caller.tenant_id(), &filter)
            .await
            .map_err(ApiError::from),
        Err(e) => Err(e),
    };
    match page {
        Ok(page) => ([(header::CACHE_CONTROL, "no-store")], run_rows(&page, now)).into_response(),
        Err(e) => (e.status, opsrun::sanitize::redact(&e.message)).into_response(),
    }
}

/// `GET /static/live.js`: the operations page's live updates.
pub async fn live_script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        LIVE_SCRIPT,
    )
        .into_response()
}

/// Every two seconds, fetch the first page's rows again and swap them in;
/// say so when it cannot (logged out: the answer is a redirect to the login
/// form, never swapped in; monitor away) and keep trying.
const LIVE_SCRIPT: &str = r#"(function () {
  var live = document.getElementById("live");
  var body = document.getElementById("runs-body");
  if (!live || !body) return;
  function refresh() {
    fetch(live.dataset.rowsUrl, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) {
        if (r.redirected) throw new Error("logged out");
        if (!r.ok) throw new Error(String(r.status));
        return r.text();
      })
      .then(function (rows) {
        body.innerHTML = rows;
        live.textContent = "Live · " + new Date().toLocaleTimeString();
      })
      .catch(function (e) { live.textContent = "Live updates paused (" + e.message + ")"; })
      .finally(function () { setTimeout(refresh, 2000); });
  }
  setTimeout(refresh, 2000);
})();
"#;

/// `GET /tenants/{tenant}/operations/{id}`: one run, every field.
pub async fn operation(
    State(state): State<AppState>,
    PageCaller(caller): PageCaller,
    Path((_, id)): Path<(String, String)>,
) -> Response {
    let found = match run_id(&id) {
        Ok(id) => state
            .reads
            .get(caller.tenant_id(), id)
            .await
            .map_err(ApiError::from),
        Err(e) => Err(e),
    };
    let run = match found {
        Ok(Some(run)) => run,
        Ok(None) => return PageError(ApiError::not_found(), Some(caller)).into_response(),
        Err(e) => return PageError(e, Some(caller)).into_response(),
    };
    let mut d = views::detail(&run, "", &state.links, Utc::now());
    d.waiting_for = state.explain(&run).await;
    let actions = match state
        .reads
        .operator_actions(caller.tenant_id(), Some(run.id), 50)
        .await
    {
        Ok(actions) => actions,
        Err(e) => return PageError(e.into(), Some(caller)).into_response(),
    };
    let title = format!("{} #{}", run.run_type, run.id);
    let json = |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap_or_default();
    let body = html! {
        h1 #run-title { (title) }
        dl #run-fields {
            dt { "Status" } dd #status { (d.summary.status_label) }
            dt { "Outcome" } dd #outcome { (outcome_badge(run.outcome)) }
            dt { "Initiator" } dd { (run.initiator_name) @if let Some(u) = run.user_id { " (user " (u) ")" } }
            dt { "Tenant" } dd { (run.tenant_id) }
            dt { "Queue" } dd { (run.queue) @if run.shard > 0 { ", shard " (run.shard) } }
            dt { "Attempt" } dd { (run.attempt) " of " (run.max_attempts) }
            dt { "Created" } dd { (time(run.created_at)) }
            dt { "Started" } dd { @if let Some(t) = run.started_at { (time(t)) } @else { "—" } }
            dt { "Completed" } dd { @if let Some(t) = run.completed_at { (time(t)) } @else { "—" } }
            dt { "Duration" } dd { @if let Some(s) = d.summary.duration_seconds { (views::human_duration(s)) } @else { "—" } }
            dt { "Summary" } dd #summary-counts {
                (d.summary.summary_counts.total) " total, " (d.summary.summary_counts.success) " succeeded, "
                (d.summary.summary_counts.failed) " failed, " (d.summary.summary_counts.skipped) " skipped"
            }
            dt { "Identity" } dd { code { (run.run_identity_hash) } " (" (run.identity_rule) ") · " a href=(d.same_identity_url) { "runs with this identity" } }
            @if let Some(domain) = &run.domain_id { dt { "Domain record" } dd { (domain) } }
            @if let Some(earlier) = run.retry_of {
                dt { "Retry of" } dd #retry-of { a href=(format!("/tenants/{}/operations/{}", run.tenant_id, earlier)) { "#" (earlier) } }
            }
            @if let Some(t) = run.not_before { dt { "Not before" } dd { (time(t)) } }
            @if let Some(trace) = run.traceparent.as_deref().and_then(|t| t.get(3..35)) {
                dt { "Trace" } dd #trace-id { code { (trace) } }
            }
            @if let (Some(t), None) = (run.cancel_requested_at, run.completed_at) {
                dt { "Cancel" } dd #cancel-requested { "Asked for at " (time(t)) ": " (run.cancel_request.as_deref().unwrap_or("")) }
            }
        }
        @if let Some(why) = &d.waiting_for {
            section #waiting {
                p #waiting-summary { strong { (why.summary) } }
                @if !why.facts.is_empty() { ul { @for f in &why.facts { li { (f) } } } }
            }
        }
        @if run.completed_at.is_none() && run.cancel_requested_at.is_none() && caller.0.role.may_start_runs() {
            p { a #cancel-run .button href=(format!("/tenants/{}/operations/{}/cancel", run.tenant_id, run.id)) { "Cancel this run…" } }
        }
        @if matches!(run.outcome, opsrun::Outcome::Failed | opsrun::Outcome::PartiallySucceeded | opsrun::Outcome::Cancelled)
            && caller.0.role.may_start_runs() {
            form #retry-run method="post" action=(format!("/tenants/{}/operations/{}/retry", run.tenant_id, run.id)) {
                button type="submit" { "Retry as a new run" }
            }
        }
        h2 { "Timeline" }
        table #timeline { @for e in &d.timeline { tr { td { (time(e.at)) } td { (e.event) } td { (e.detail) } } } }
        @if !actions.is_empty() {
            h2 { "Operator actions" }
            (crate::actions::table(run.tenant_id, &actions))
        }
        h2 { "Failures" }
        @if d.failure_summary.is_empty() { p #no-failures { "None." } } @else {
            table #failures {
                thead { tr { th { "Code" } th { "Count" } th { "Message" } } }
                @for f in &d.failure_summary { tr { td { code { (f.code) } } td { (f.count) } td { (f.message) } } }
            }
        }
        @if !d.links.is_empty() {
            h2 { "Related" }
            ul #links { @for l in &d.links { li { (l.key) ": " a href=(l.url) { (l.value) } } } }
        }
        h2 { "Context" } pre #context { (json(&d.context)) }
        h2 { "Inputs" } pre #inputs { (json(&d.inputs)) }
    };
    layout(&title, Some(&caller), replica_noted(&state, body)).into_response()
}

/// `GET /tenants/{tenant}/notifications`: the user's notifications.
pub async fn notifications(
    State(state): State<AppState>,
    PageCaller(caller): PageCaller,
) -> Response {
    let user = match caller.user_id() {
        Ok(user) => user,
        Err(e) => return PageError(e, Some(caller)).into_response(),
    };
    let list = match state
        .reads
        .notifications(caller.tenant_id(), user, false, 100)
        .await
    {
        Ok(list) => list,
        Err(e) => return PageError(e.into(), Some(caller)).into_response(),
    };
    let body = html! {
        h1 { "Notifications" }
        form method="post" action=(format!("/tenants/{}/notifications/read", caller.tenant_id())) { button type="submit" { "Mark all read" } }
        table #notifications {
            @for n in &list {
                tr { td { @if n.read_at.is_none() { strong { "new" } } } td { (time(n.created_at)) }
                     td { a href=(format!("/tenants/{}/operations/{}", n.tenant_id, n.run_id)) { (n.title) } } td { (n.body) } }
            }
        }
    };
    layout("Notifications", Some(&caller), replica_noted(&state, body)).into_response()
}

/// `POST /tenants/{tenant}/notifications/read`.
pub async fn mark_all_read(
    State(state): State<AppState>,
    PageCaller(caller): PageCaller,
) -> Response {
    let marked = match caller.user_id() {
        Ok(user) => state
            .ledger
            .mark_notifications_read(caller.tenant_id(), user, None)
            .await
            .map_err(ApiError::from),
        Err(e) => Err(e),
    };
    match marked {
        Ok(_) => {
            Redirect::to(&format!("/tenants/{}/notifications", caller.tenant_id())).into_response()
        }
        Err(e) => PageError(e, Some(caller)).into_response(),
    }
}
