//! The readable form of a run, shared by the JSON API, the HTML pages and
//! the CLI: status and outcome labels, a timeline, related links built from
//! known context keys. Pure: everything here comes from the run row.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use opsrun::service::view_url;
use opsrun::{Failure, Run, RunId, SummaryCounts};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Serialize;
use serde_json::Value;

/// Context keys linked by default, and where they point (`{tenant_id}` and
/// `{value}` are filled in; the value is percent-encoded).
pub const DEFAULT_LINKS: [(&str, &str); 4] = [
    ("restore_run_id", "/tenants/{tenant_id}/restores/{value}"),
    (
        "backup_schedule_id",
        "/tenants/{tenant_id}/backup-schedules/{value}",
    ),
    (
        "provider_connection_id",
        "/tenants/{tenant_id}/provider-connections/{value}",
    ),
    ("target_scope", "/tenants/{tenant_id}/scopes/{value}"),
];

/// Link templates by context key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Links(BTreeMap<String, String>);

impl Default for Links {
    fn default() -> Self {
        Links(
            DEFAULT_LINKS
                .iter()
                .map(|(k, t)| (k.to_string(), t.to_string()))
                .collect(),
        )
    }
}

impl Links {
    /// The defaults with `overrides` (`KEY=TEMPLATE`) applied; an empty
    /// template removes a key's link.
    pub fn with_overrides(overrides: &[String]) -> Result<Links, String> {
        let mut links = Links::default();
        for spec in overrides {
            let (key, template) = spec
                .split_once('=')
                .ok_or_else(|| format!("link {spec:?} is not KEY=TEMPLATE"))?;
            if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!("link key {key:?} is not a context key"));
            }
            if template.is_empty() {
                links.0.remove(key);
                continue;
            }
            // Only paths and http(s) URLs: a template can never make a javascript: link.
            if !(template.starts_with('/')
                || template.starts_with("https://")
                || template.starts_with("http://"))
            {
                return Err(format!(
                    "link template {template:?} must start with /, http:// or https://"
                ));
            }
            if !template.contains("{value}") {
                return Err(format!("link template {template:?} has no {{value}}"));
            }
            links.0.insert(key.to_string(), template.to_string());
        }
        Ok(links)
    }

    /// Links for the known keys present in a run's context (scalar values only).
    pub fn for_run(&self, run: &Run) -> Vec<RelatedLink> {
        self.0
            .iter()
            .filter_map(|(key, template)| {
                let value = match run.context.0.get(key)? {
                    Value::String(s) if !s.is_empty() => s.clone(),
                    Value::Number(n) => n.to_string(),
                    _ => return None,
                };
                let url = template
                    .replace("{tenant_id}", &run.tenant_id.to_string())
                    .replace(
                        "{value}",
                        &utf8_percent_encode(&value, NON_ALPHANUMERIC).to_string(),
                    );
                Some(RelatedLink {
                    key: key.clone(),
                    value,
                    url,
                })
            })
            .collect()
    }
}

/// A link to a related record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RelatedLink {
    /// The context key.
    pub key: String,
    /// Its value.
    pub value: String,
    /// Where it points.
    pub url: String,
}

/// A run as a list shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub id: RunId,
    #[serde(rename = "type")]
    pub run_type: String,
    pub status: opsrun::Status,
    pub status_label: &'static str,
    pub outcome: opsrun::Outcome,
    pub outcome_label: &'static str,
    pub initiator_name: String,
    pub user_id: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    /// Wall time from start (or creation) to completion, or to now while active.
    pub duration_seconds: Option<f64>,
    pub summary_counts: SummaryCounts,
    /// Failure codes, in stored order.
    pub failure_codes: Vec<String>,
    pub view_url: String,
}

/// One moment in a run's life.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimelineEvent {
    pub at: DateTime<Utc>,
    /// `created`, `scheduled`, `dispatched`, `started`, `reclaimed` or `completed`.
    pub event: &'static str,
    pub detail: String,
}

/// A run as its detail page shows it: every field, readable.
#[derive(Debug, Clone, Serialize)]
pub struct RunDetail {
    #[serde(flatten)]
    pub summary: RunSummary,
    pub tenant_id: i64,
    pub queue: String,
    pub attempt: i32,
    pub max_attempts: i32,
    pub identity_rule: String,
    pub run_identity_hash: String,
    /// The tenant's runs with this identity (a deduplicated start folded into one of them).
    pub same_identity_url: String,
    pub domain_id: Option<String>,
    /// The run this one retries.
    pub retry_of: Option<opsrun::RunId>,
    /// The W3C trace context it was started under (its trace id finds the
    /// worker's spans in a tracing backend).
    pub traceparent: Option<String>,
    /// When someone asked to cancel it, and their request.
    pub cancel_requested_at: Option<DateTime<Utc>>,
    pub cancel_request: Option<String>,
    pub not_before: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    pub failure_summary: Vec<Failure>,
    pub context: Value,
    pub inputs: Value,
    pub timeline: Vec<TimelineEvent>,
    pub links: Vec<RelatedLink>,
    /// What a queued or running run waits for (see [`opsrun::explain`]);
    /// set by the callers that read Redis.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<opsrun::explain::Explanation>,
}

/// The list form of `run`; `base` is the monitor's public URL.
pub fn summary(run: &Run, base: &str, now: DateTime<Utc>) -> RunSummary {
    let end = run.completed_at.unwrap_or(now);
    let from = run.started_at.unwrap_or(run.created_at);
    RunSummary {
        id: run.id,
        run_type: run.run_type.clone(),
        status: run.status,
        status_label: run.status.label(),
        outcome: run.outcome,
        outcome_label: run.outcome.label(),
        initiator_name: run.initiator_name.clone(),
        user_id: run.user_id,
        created_at: run.created_at,
        started_at: run.started_at,
        completed_at: run.completed_at,
        duration_seconds: (run.started_at.is_some() || run.completed_at.is_some())
            .then(|| (end - from).num_milliseconds().max(0) as f64 / 1000.0),
        summary_counts: run.summary_counts.0,
        failure_codes: run
            .failure_summary
            .0
            .iter()
            .map(|f| f.code.clone())
            .collect(),
        view_url: view_url(base, run),
    }
}

/// The detail form of `run`.
pub fn detail(run: &Run, base: &str, links: &Links, now: DateTime<Utc>) -> RunDetail {
    RunDetail {
        summary: summary(run, base, now),
        tenant_id: run.tenant_id,
        queue: run.queue.clone(),
        attempt: run.attempt,
        max_attempts: run.max_attempts,
        identity_rule: run.identity_rule.clone(),
        run_identity_hash: run.run_identity_hash.clone(),
        same_identity_url: format!(
            "{}/tenants/{}/operations?identity={}&since=2000-01-01",
            base.trim_end_matches('/'),
            run.tenant_id,
            run.run_identity_hash
        ),
        domain_id: run.domain_id.clone(),
        retry_of: run.retry_of,
        traceparent: run.traceparent.clone(),
        cancel_requested_at: run.cancel_requested_at,
        cancel_request: run.cancel_request.clone(),
        not_before: run.not_before,
        updated_at: run.updated_at,
        failure_summary: run.failure_summary.0.clone(),
        context: run.context.0.clone(),
        inputs: run.inputs.0.clone(),
        timeline: timeline(run),
        links: links.for_run(run),
        waiting_for: None,
    }
}

/// Created, scheduled, dispatched, reclaims, started, cancel asked,
/// completed; oldest first.
pub fn timeline(run: &Run) -> Vec<TimelineEvent> {
    let mut events = vec![TimelineEvent {
        at: run.created_at,
        event: "created",
        detail: format!("by {}", run.initiator_name),
    }];
    if let Some(at) = run.not_before {
        events.push(TimelineEvent {
            at,
            event: "scheduled",
            detail: "not dispatched before this time".into(),
        });
    }
    if let Some(at) = run.dispatched_at {
        // The entry id is known once a worker claimed the run (a producer
        // does not record it).
        let queue = match run.shard {
            0 => run.queue.clone(),
            shard => format!("{}, shard {shard}", run.queue),
        };
        let detail = match &run.dispatch_entry_id {
            Some(entry) => format!("to queue {queue} as entry {entry}"),
            None => format!("to queue {queue}"),
        };
        events.push(TimelineEvent {
            at,
            event: "dispatched",
            detail,
        });
    }
    for reclaim in &run.reclaims.0 {
        events.push(TimelineEvent {
            at: reclaim.at,
            event: "reclaimed",
            detail: match &reclaim.holder {
                Some(holder) => format!(
                    "{} (attempt {}, held by {holder})",
                    reclaim.reason.as_str(),
                    reclaim.attempt
                ),
                None => format!("{} (attempt {})", reclaim.reason.as_str(), reclaim.attempt),
            },
        });
    }
    if let Some(at) = run.started_at {
        events.push(TimelineEvent {
            at,
            event: "started",
            detail: format!("attempt {} of {}", run.attempt, run.max_attempts),
        });
    }
    if let Some(at) = run.cancel_requested_at {
        events.push(TimelineEvent {
            at,
            event: "cancel asked",
            detail: run.cancel_request.clone().unwrap_or_default(),
        });
    }
    if let Some(at) = run.completed_at {
        events.push(TimelineEvent {
            at,
            event: "completed",
            detail: run.outcome.label().to_string(),
        });
    }
    events.sort_by_key(|e| e.at);
    events
}

/// `1h 2m`, `3m 4s`, `5.2s`.
pub fn human_duration(seconds: f64) -> String {
    let whole = seconds as u64;
    if whole >= 3600 {
        format!("{}h {}m", whole / 3600, whole % 3600 / 60)
    } else if whole >= 60 {
        format!("{}m {}s", whole / 60, whole % 60)
    } else if seconds < 1.0 {
        format!("{:.0}ms", seconds * 1000.0)
    } else {
        format!("{seconds:.1}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_overrides_are_checked() {
        let links = Links::with_overrides(&["restore_run_id=https://app.example/r/{value}".into()])
            .unwrap();
        assert_eq!(links.0["restore_run_id"], "https://app.example/r/{value}");
        let removed = Links::with_overrides(&["target_scope=".into()]).unwrap();
        assert!(!removed.0.contains_key("target_scope"));
        assert!(Links::with_overrides(&["x=javascript:alert(1)//{value}".into()]).is_err());
        assert!(Links::with_overrides(&["x=/no-value".into()]).is_err());
        assert!(Links::with_overrides(&["no-equals".into()]).is_err());
    }

    #[test]
    fn durations_read_like_people_say_them() {
        assert_eq!(human_duration(5.24), "5.2s");
        assert_eq!(human_duration(184.0), "3m 4s");
        assert_eq!(human_duration(3720.0), "1h 2m");
    }
}
