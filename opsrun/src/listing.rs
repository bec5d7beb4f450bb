//! What Monitoring → Operations asks of the ledger: a validated filter over
//! one tenant's runs (the 30-day default window, capped page sizes) and the
//! keyset position of a page. Parsing only; the ledger runs the query.

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, Utc};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::run::{Outcome, Run, RunId, Status};

/// How far back a list looks when no `since` is given.
pub const DEFAULT_WINDOW_DAYS: i64 = 30;
/// Runs per page when no `limit` is given.
pub const DEFAULT_PAGE_SIZE: u32 = 50;
/// The largest page served; larger `limit`s are capped to it.
pub const MAX_PAGE_SIZE: u32 = 200;

/// Who started the runs to list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitiatorFilter {
    /// Runs without a user (system, scheduler).
    System,
    /// Runs started by this user id.
    User(i64),
    /// Runs whose initiator name is this, ignoring case.
    Name(String),
}

/// A validated filter over one tenant's runs. Every value is bound as a
/// query parameter, never spliced into SQL.
#[derive(Debug, Clone, PartialEq)]
pub struct RunFilter {
    /// Exact run type.
    pub run_type: Option<String>,
    /// Status.
    pub status: Option<Status>,
    /// Outcome.
    pub outcome: Option<Outcome>,
    /// Initiator.
    pub initiator: Option<InitiatorFilter>,
    /// Runs with a failure of this code.
    pub failure_code: Option<String>,
    /// Runs with this identity hash (the runs one identity folded into).
    pub identity: Option<String>,
    /// Created at or after (default: 30 days ago).
    pub since: DateTime<Utc>,
    /// Created before.
    pub until: Option<DateTime<Utc>>,
    /// Page size, at most [`MAX_PAGE_SIZE`].
    pub limit: u32,
    /// Continue after this position (from the previous page's `next`).
    pub after: Option<Cursor>,
}

impl RunFilter {
    /// Everything in the default window, first page.
    pub fn recent(now: DateTime<Utc>) -> Self {
        RunFilter {
            run_type: None,
            status: None,
            outcome: None,
            initiator: None,
            failure_code: None,
            identity: None,
            since: now - chrono::Duration::days(DEFAULT_WINDOW_DAYS),
            until: None,
            limit: DEFAULT_PAGE_SIZE,
            after: None,
        }
    }
}

/// A filter as people and programs write it (query string, CLI flags):
/// every field text, unknown fields rejected. [`FilterParams::parse`]
/// validates it into a [`RunFilter`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct FilterParams {
    /// Run type, e.g. `inventory.sync`.
    #[serde(rename = "type", default, skip_serializing_if = "blank")]
    pub run_type: Option<String>,
    /// `queued`, `running` or `completed`.
    #[serde(default, skip_serializing_if = "blank")]
    pub status: Option<String>,
    /// `pending`, `succeeded`, `partially_succeeded`, `failed` or `cancelled`.
    #[serde(default, skip_serializing_if = "blank")]
    pub outcome: Option<String>,
    /// `system`, a user id, or an initiator name.
    #[serde(default, skip_serializing_if = "blank")]
    pub initiator: Option<String>,
    /// A failure code such as `job.timeout`.
    #[serde(default, skip_serializing_if = "blank")]
    pub failure_code: Option<String>,
    /// A run identity hash (64 hex digits).
    #[serde(default, skip_serializing_if = "blank")]
    pub identity: Option<String>,
    /// Created at or after: RFC 3339, `YYYY-MM-DDTHH:MM` (UTC) or `YYYY-MM-DD`.
    #[serde(default, skip_serializing_if = "blank")]
    pub since: Option<String>,
    /// Created before, same forms as `since`.
    #[serde(default, skip_serializing_if = "blank")]
    pub until: Option<String>,
    /// Page size (capped to 200).
    #[serde(default, skip_serializing_if = "blank")]
    pub limit: Option<String>,
    /// The `next` cursor of the previous page.
    #[serde(default, skip_serializing_if = "blank")]
    pub cursor: Option<String>,
}

fn blank(value: &Option<String>) -> bool {
    value.as_deref().is_none_or(|v| v.trim().is_empty())
}

/// The field's value, with an empty form field counting as absent.
fn given(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

impl FilterParams {
    /// Validate into a filter; the error names the field and what it accepts.
    pub fn parse(&self, now: DateTime<Utc>) -> Result<RunFilter> {
        let mut filter = RunFilter::recent(now);
        if let Some(t) = given(&self.run_type) {
            crate::request::validate_type(t)?;
            filter.run_type = Some(t.to_string());
        }
        if let Some(s) = given(&self.status) {
            filter.status = Some(s.parse().map_err(|()| {
                Error::invalid(
                    "status",
                    format!("{s:?} is not a status: use queued, running or completed"),
                )
            })?);
        }
        if let Some(o) = given(&self.outcome) {
            filter.outcome = Some(o.parse().map_err(|()| {
                Error::invalid("outcome", format!("{o:?} is not an outcome: use pending, succeeded, partially_succeeded, failed or cancelled"))
            })?);
        }
        if let Some(i) = given(&self.initiator) {
            filter.initiator = Some(if i.eq_ignore_ascii_case("system") {
                InitiatorFilter::System
            } else if i.bytes().all(|b| b.is_ascii_digit()) {
                InitiatorFilter::User(crate::request::parse_positive_id("initiator", i)?)
            } else if i.chars().count() <= crate::request::MAX_INITIATOR_NAME_CHARS {
                InitiatorFilter::Name(i.to_string())
            } else {
                return Err(Error::invalid("initiator", "is longer than 200 characters"));
            });
        }
        if let Some(code) = given(&self.failure_code) {
            if code.len() > 100 || !crate::sanitize::is_valid_code(code) {
                return Err(Error::invalid(
                    "failure_code",
                    format!("{code:?} is not a failure code such as job.timeout"),
                ));
            }
            filter.failure_code = Some(code.to_string());
        }
        if let Some(hash) = given(&self.identity) {
            if hash.len() != 64 || !hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                return Err(Error::invalid(
                    "identity",
                    "is not a run identity hash (64 lowercase hex digits)",
                ));
            }
            filter.identity = Some(hash.to_string());
        }
        if let Some(since) = given(&self.since) {
            filter.since = parse_time("since", since)?;
        }
        if let Some(until) = given(&self.until) {
            let until = parse_time("until", until)?;
            if until <= filter.since {
                return Err(Error::invalid("until", "must be later than since"));
            }
            filter.until = Some(until);
        }
        if let Some(limit) = given(&self.limit) {
            filter.limit = match limit.parse::<u64>() {
                Ok(n) if n >= 1 => n.min(u64::from(MAX_PAGE_SIZE)) as u32,
                _ => {
                    return Err(Error::invalid(
                        "limit",
                        format!("{limit:?} is not a page size from 1 to {MAX_PAGE_SIZE}"),
                    ));
                }
            };
        }
        if let Some(cursor) = given(&self.cursor) {
            filter.after = Some(Cursor::decode(cursor)?);
        }
        Ok(filter)
    }

    /// These parameters with the cursor replaced, for the next page's link.
    pub fn with_cursor(&self, cursor: Option<&Cursor>) -> FilterParams {
        FilterParams {
            cursor: cursor.map(Cursor::encode),
            ..self.clone()
        }
    }
}

/// Parse a time: RFC 3339, or `YYYY-MM-DDTHH:MM[:SS]` / `YYYY-MM-DD` read as UTC
/// (what an HTML date or datetime-local field sends).
fn parse_time(field: &'static str, text: &str) -> Result<DateTime<Utc>> {
    let parsed = DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"]
                .iter()
                .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
                .map(|t| t.and_utc())
        })
        .or_else(|| {
            NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .ok()
                .map(|d| d.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc())
        });
    match parsed {
        Some(t) if in_listable_range(t) => Ok(t),
        Some(_) => Err(Error::invalid(
            field,
            format!("{text:?} is outside the years 1970 to 9999"),
        )),
        None => Err(Error::invalid(
            field,
            format!("{text:?} is not a time such as 2026-11-22T10:00:00Z or 2026-11-22"),
        )),
    }
}

/// Whether `t` is a time a filter or cursor may name: Postgres's timestamp
/// range is wider than chrono's in places and narrower in others, so
/// anything outside 1970–9999 (no run is created there) is refused before
/// it reaches a statement.
fn in_listable_range(t: DateTime<Utc>) -> bool {
    (1970..=9999).contains(&t.year())
}

/// A keyset position: the last run of a page, by `(created_at, id)`
/// descending. Encoded as `<created_at in µs>.<id>`; opaque to callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// The last run's creation time.
    pub created_at: DateTime<Utc>,
    /// The last run's id.
    pub id: RunId,
}

impl Cursor {
    /// The position just after `run`.
    pub fn after(run: &Run) -> Self {
        Cursor {
            created_at: run.created_at,
            id: run.id,
        }
    }

    /// The text form.
    pub fn encode(&self) -> String {
        format!("{}.{}", self.created_at.timestamp_micros(), self.id)
    }

    /// Parse the text form.
    pub fn decode(text: &str) -> Result<Self> {
        let bad = || Error::invalid("cursor", "is not a cursor from a previous page");
        let (micros, id) = text.split_once('.').ok_or_else(bad)?;
        let micros: i64 = micros.parse().map_err(|_| bad())?;
        let id: i64 = id.parse().map_err(|_| bad())?;
        let created_at = DateTime::from_timestamp_micros(micros)
            .filter(|t| in_listable_range(*t))
            .ok_or_else(bad)?;
        if id <= 0 {
            return Err(bad());
        }
        Ok(Cursor {
            created_at,
            id: RunId(id),
        })
    }
}

/// One page of runs, newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// The runs.
    pub runs: Vec<Run>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<Cursor>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> std::result::Result<FilterParams, String> {
        let map: serde_json::Map<String, serde_json::Value> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
            .collect();
        serde_json::from_value(map.into()).map_err(|e| e.to_string())
    }

    fn now() -> DateTime<Utc> {
        "2026-11-22T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn defaults_to_the_last_30_days_and_50_runs() {
        let filter = FilterParams::default().parse(now()).unwrap();
        assert_eq!(
            filter.since,
            "2026-10-23T12:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert_eq!(filter.limit, DEFAULT_PAGE_SIZE);
        assert_eq!(filter, RunFilter::recent(now()));
    }

    #[test]
    fn parses_every_filter() {
        let p = params(&[
            ("type", "inventory.sync"),
            ("status", "completed"),
            ("outcome", "partially_succeeded"),
            ("initiator", "42"),
            ("failure_code", "job.timeout"),
            ("since", "2026-11-01"),
            ("until", "2026-11-02T10:30"),
            ("limit", "10"),
        ])
        .unwrap();
        let f = p.parse(now()).unwrap();
        assert_eq!(f.run_type.as_deref(), Some("inventory.sync"));
        assert_eq!(f.status, Some(Status::Completed));
        assert_eq!(f.outcome, Some(Outcome::PartiallySucceeded));
        assert_eq!(f.initiator, Some(InitiatorFilter::User(42)));
        assert_eq!(f.failure_code.as_deref(), Some("job.timeout"));
        assert_eq!(f.since.to_rfc3339(), "2026-11-01T00:00:00+00:00");
        assert_eq!(f.until.unwrap().to_rfc3339(), "2026-11-02T10:30:00+00:00");
        assert_eq!(f.limit, 10);
        let named = params(&[("initiator", "Ada Lovelace")]).unwrap();
        assert_eq!(
            named.parse(now()).unwrap().initiator,
            Some(InitiatorFilter::Name("Ada Lovelace".into()))
        );
        let system = params(&[("initiator", "System")]).unwrap();
        assert_eq!(
            system.parse(now()).unwrap().initiator,
            Some(InitiatorFilter::System)
        );
    }

    #[test]
    fn empty_form_fields_count_as_absent() {
        let p = params(&[("type", ""), ("status", " "), ("limit", "")]).unwrap();
        assert_eq!(p.parse(now()).unwrap(), RunFilter::recent(now()));
    }

    #[test]
    fn rejects_bad_values_naming_the_field() {
        for (field, value) in [
            ("status", "done"),
            ("outcome", "ok"),
            ("type", "Robert'); DROP TABLE operation_runs;--"),
            ("failure_code", "x' OR '1'='1"),
            ("identity", "abc"),
            ("since", "yesterday"),
            ("limit", "0"),
            ("limit", "-5"),
            ("cursor", "nope"),
            ("cursor", "-8000000000000000000.1"),
            ("cursor", "1795350439883000.0"),
            ("since", "0001-01-01"),
            ("until", "+275760-01-01T00:00:00Z"),
            ("initiator", "0"),
        ] {
            let err = params(&[(field, value)]).unwrap().parse(now()).unwrap_err();
            assert!(
                matches!(&err, Error::Invalid { field: f, .. } if *f == field),
                "{field}={value}: {err}"
            );
        }
        let err = params(&[("since", "2026-11-02"), ("until", "2026-11-01")])
            .unwrap()
            .parse(now())
            .unwrap_err();
        assert!(err.to_string().contains("until"), "{err}");
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = params(&[("tenant_id", "2")]).unwrap_err();
        assert!(err.contains("unknown field `tenant_id`"), "{err}");
    }

    #[test]
    fn page_sizes_are_capped() {
        let p = params(&[("limit", "100000")]).unwrap();
        assert_eq!(p.parse(now()).unwrap().limit, MAX_PAGE_SIZE);
    }

    #[test]
    fn cursors_round_trip() {
        let cursor = Cursor {
            created_at: "2026-11-22T10:00:00.123456Z".parse().unwrap(),
            id: RunId(77),
        };
        assert_eq!(Cursor::decode(&cursor.encode()).unwrap(), cursor);
        assert!(Cursor::decode("1.x").is_err());
    }
}
