//! The operations chart, rendered on the server as SVG (no JavaScript, and
//! the content security policy allows no inline style, so colours are SVG
//! attributes): runs completed per hour (per day past a week) by outcome
//! over the page's window, and duration percentiles per type. Read from the
//! reaper's hourly rollups plus the runs since (see [`opsrun::chart`]), so
//! it stays fast at millions of runs per tenant. `GET /api/v1/chart` gives
//! the same numbers as JSON.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use chrono::{DateTime, Utc};
use maud::{Markup, html};
use opsrun::chart::{Chart, OutcomeCount};
use opsrun::listing::{FilterParams, RunFilter};

use crate::AppState;
use crate::api::query;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::pages::time;

/// Outcomes stacked bottom up, with their colours.
const OUTCOMES: &[(&str, &str)] = &[
    ("succeeded", "#3aa55d"),
    ("partially_succeeded", "#e0a800"),
    ("failed", "#d9534f"),
    ("cancelled", "#8e7cc3"),
];
const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 160.0;

/// The window a page's filter charts: its creation window, up to now.
pub fn window(filter: &RunFilter, now: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    (filter.since, filter.until.unwrap_or(now).min(now))
}

/// `GET /api/v1/chart`: the chart of the page with the same filter (only
/// `since` and `until` matter).
pub async fn api(
    State(state): State<AppState>,
    caller: Caller,
    params: Result<Query<FilterParams>, QueryRejection>,
) -> Result<Json<Chart>, ApiError> {
    let now = Utc::now();
    let filter = query(params)?.parse(now)?;
    let (since, until) = window(&filter, now);
    Ok(Json(
        state.reads.chart(caller.tenant_id(), since, until).await?,
    ))
}

/// The chart's SVG figures.
pub fn render(chart: &Chart) -> Markup {
    let step = chart.step.length();
    let bars =
        ((chart.until - chart.since).num_seconds() / step.num_seconds().max(1)).max(1) as usize;
    let mut stacks = vec![[0i64; 4]; bars];
    for OutcomeCount { at, outcome, runs } in &chart.counts {
        let bar = ((*at - chart.since).num_seconds() / step.num_seconds().max(1)) as usize;
        if let (Some(stack), Some(o)) = (
            stacks.get_mut(bar),
            OUTCOMES.iter().position(|(name, _)| name == outcome),
        ) {
            stack[o] += runs;
        }
    }
    let most = stacks
        .iter()
        .map(|s| s.iter().sum::<i64>())
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let bar_width = WIDTH / bars as f64;
    let per = match chart.step {
        opsrun::chart::Step::Hour => "hour",
        opsrun::chart::Step::Day => "day",
    };
    html! {
        section #chart {
            h2 { "Runs completed per " (per) }
            p.legend {
                "Total " strong #chart-total { (chart.total()) }
                @for (name, colour) in OUTCOMES {
                    " · " svg width="10" height="10" { rect width="10" height="10" fill=(colour) {} }
                    " " (name.replace('_', " ")) " "
                    strong.chart-outcome data-outcome=(name) { (chart.total_of(name)) }
                }
            }
            svg #runs-chart viewBox=(format!("0 0 {WIDTH} {}", HEIGHT + 18.0)) width="100%" role="img"
                aria-label=(format!("runs completed per {per} by outcome")) {
                line x1="0" y1=(HEIGHT) x2=(WIDTH) y2=(HEIGHT) stroke="#b8bec7" {}
                @for (i, stack) in stacks.iter().enumerate() {
                    @let x = i as f64 * bar_width;
                    @let mut y = HEIGHT;
                    @let at = chart.since + step * i as i32;
                    g.bar {
                        title { (time(at)) ": " (stack.iter().sum::<i64>()) " completed" }
                        @for (o, (_, colour)) in OUTCOMES.iter().enumerate() {
                            @if stack[o] > 0 {
                                @let h = stack[o] as f64 / most * (HEIGHT - 4.0);
                                @let top = { y -= h; y };
                                rect x=(format!("{x:.1}")) y=(format!("{top:.1}")) width=(format!("{:.1}", (bar_width - 1.0).max(0.5)))
                                    height=(format!("{h:.1}")) fill=(colour) {}
                            }
                        }
                    }
                }
                text x="0" y=(HEIGHT + 14.0) font-size="11" fill="#555" { (time(chart.since)) }
                text x=(WIDTH) y=(HEIGHT + 14.0) font-size="11" fill="#555" text-anchor="end" { (time(chart.until)) }
                text x="2" y="11" font-size="11" fill="#555" { "max " (most as i64) " per " (per) }
            }
            (durations(chart))
        }
    }
}

/// p50, p95 and p99 per type on a log scale from 10 ms.
fn durations(chart: &Chart) -> Markup {
    const ROW: f64 = 22.0;
    const LABEL: f64 = 220.0;
    let types: Vec<_> = chart.durations.iter().take(12).collect();
    if types.is_empty() {
        return html! {};
    }
    let longest = types.iter().map(|t| t.p99).fold(1.0_f64, f64::max);
    let (low, high) = (0.01_f64.ln(), (longest * 1.2).ln());
    let scale = |s: f64| LABEL + (s.max(0.01).ln() - low) / (high - low) * (WIDTH - LABEL - 180.0);
    html! {
        h2 { "Duration percentiles per type" }
        svg #durations-chart viewBox=(format!("0 0 {WIDTH} {}", ROW * types.len() as f64 + 4.0)) width="100%" role="img"
            aria-label="run duration percentiles per type" {
            @for (i, t) in types.iter().enumerate() {
                @let y = i as f64 * ROW + 4.0;
                g.type-durations data-type=(t.run_type) {
                    text x="0" y=(y + 13.0) font-size="12" fill="#1d2430" { (t.run_type) " (" (t.runs) ")" }
                    rect x=(LABEL) y=(y + 3.0) width=(format!("{:.1}", scale(t.p99) - LABEL)) height="12" fill="#dde9ff" {}
                    rect x=(LABEL) y=(y + 3.0) width=(format!("{:.1}", scale(t.p95) - LABEL)) height="12" fill="#9bb8f0" {}
                    rect x=(format!("{:.1}", scale(t.p50) - 1.5)) y=(y + 1.0) width="3" height="16" fill="#1d2430" {}
                    text x=(WIDTH - 175.0) y=(y + 13.0) font-size="11" fill="#555" {
                        "p50 " (crate::views::human_duration(t.p50)) " · p95 " (crate::views::human_duration(t.p95))
                        " · p99 " (crate::views::human_duration(t.p99))
                    }
                }
            }
        }
    }
}
