//! The tenant's schedules page: each schedule's timing, its next slots and
//! its last slots with the runs they fired (or that they were skipped).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use maud::html;

use crate::AppState;
use crate::pages::{PageCaller, PageError, layout, time};

/// `GET /tenants/{tenant}/schedules`.
pub async fn page(State(state): State<AppState>, PageCaller(caller): PageCaller) -> Response {
    let tenant = caller.tenant_id();
    let schedules = match state.ledger.schedules(tenant, None).await {
        Ok(list) => list,
        Err(e) => return PageError(e.into(), Some(caller)).into_response(),
    };
    let mut rows = Vec::with_capacity(schedules.len());
    for schedule in schedules {
        let next = opsrun::schedule::Timing::parse(&schedule.cron, &schedule.timezone)
            .map(|t| t.upcoming(schedule.last_slot.max(chrono::Utc::now()), 3))
            .unwrap_or_default();
        let last = match state.ledger.schedule_slots(schedule.id, 5).await {
            Ok(last) => last,
            Err(e) => return PageError(e.into(), Some(caller)).into_response(),
        };
        rows.push((schedule, next, last));
    }
    let body = html! {
        h1 { "Schedules" }
        @if rows.is_empty() { p #no-schedules { "No schedule." } } @else {
            table #schedules {
                thead { tr { th { "Name" } th { "When" } th { "Type" } th { "Missed slots" } th { "Next" } th { "Last" } } }
                @for (s, next, last) in &rows {
                    tr.schedule {
                        td { (s.name) @if s.paused { " " span.badge { "paused" } } }
                        td { code { (s.cron) } " (" (s.timezone) ")" }
                        td { (s.run_type) }
                        td { (s.missed.replace('_', " ")) @if s.missed == "catch_up" { " " (s.catch_up_max) } }
                        td { @for t in next { div { (time(*t)) } } }
                        td { @for slot in last {
                            div {
                                (time(slot.slot)) " "
                                @match slot.run_id {
                                    Some(id) => a href=(format!("/tenants/{tenant}/operations/{id}")) { "#" (id) },
                                    None => "skipped",
                                }
                            }
                        } }
                    }
                }
            }
        }
    };
    layout("Schedules", Some(&caller), body).into_response()
}
