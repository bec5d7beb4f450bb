//! What a caller asks to start, and the validation it passes before any I/O.
//! Every rejection names the field; nothing is written for a rejected request.

use std::sync::LazyLock;

use regex::Regex;
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// Longest accepted run type.
pub const MAX_TYPE_LEN: usize = 100;
/// Largest accepted `inputs` or `context`, in bytes of JSON text.
pub const MAX_JSON_BYTES: usize = 64 * 1024;
/// Deepest accepted nesting of `inputs` or `context`.
pub const MAX_JSON_DEPTH: usize = 32;
/// Longest accepted initiator name, in characters.
pub const MAX_INITIATOR_NAME_CHARS: usize = 200;
/// Queue used when the caller names none.
pub const DEFAULT_QUEUE: &str = "default";
/// Initiator name of runs started without a user.
pub const SYSTEM_INITIATOR: &str = "System";

/// Run types are lowercase dotted segments: `inventory.sync`, `backup.run`.
static TYPE_PATTERN: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$").expect("type pattern"));
/// Queue names become stream keys: keep them plain.
static QUEUE_PATTERN: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-z0-9][a-z0-9_.-]{0,63}$").expect("queue pattern"));

/// Who started a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Initiator {
    /// The user, or `None` for system and scheduler runs.
    pub user_id: Option<i64>,
    /// Snapshot of the user's name, or [`SYSTEM_INITIATOR`].
    pub name: String,
}

impl Initiator {
    /// A system (non-user) initiator.
    pub fn system() -> Self {
        Initiator {
            user_id: None,
            name: SYSTEM_INITIATOR.to_string(),
        }
    }

    /// A user initiator.
    pub fn user(user_id: i64, name: impl Into<String>) -> Self {
        Initiator {
            user_id: Some(user_id),
            name: name.into(),
        }
    }
}

/// A request to start a run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRequest {
    /// Owning tenant (positive).
    pub tenant_id: i64,
    /// Taxonomy name.
    pub run_type: String,
    /// Job inputs (a JSON object); part of the identity.
    pub inputs: Value,
    /// Caller context (a JSON object); not part of the identity.
    pub context: Value,
    /// Who starts it.
    pub initiator: Initiator,
    /// Queue to dispatch on; `None`: the type's queue from the registry.
    pub queue: Option<String>,
    /// Do not start before this time (a scheduled run); `None`: now.
    pub not_before: Option<chrono::DateTime<chrono::Utc>>,
    /// The run this one retries (see [`crate::RunService::retry`]).
    pub retry_of: Option<crate::run::RunId>,
    /// The schedule slot this run is: `(schedule_id, slot)`. Its identity is
    /// then `strict` on the two, whatever its type's rule, so a slot runs
    /// once (see [`crate::schedule`]).
    pub schedule_slot: Option<(i64, chrono::DateTime<chrono::Utc>)>,
    /// The caller's trace (W3C `traceparent`): the worker's spans for every
    /// attempt join it (see [`crate::trace`]).
    pub traceparent: Option<crate::trace::TraceContext>,
}

impl RunRequest {
    /// A system-initiated request with empty inputs and context on the default queue.
    pub fn new(tenant_id: i64, run_type: impl Into<String>) -> Self {
        RunRequest {
            tenant_id,
            run_type: run_type.into(),
            inputs: Value::Object(Map::new()),
            context: Value::Object(Map::new()),
            initiator: Initiator::system(),
            queue: None,
            not_before: None,
            retry_of: None,
            schedule_slot: None,
            traceparent: None,
        }
    }

    /// Set the inputs.
    pub fn inputs(mut self, inputs: Value) -> Self {
        self.inputs = inputs;
        self
    }

    /// Set the context.
    pub fn context(mut self, context: Value) -> Self {
        self.context = context;
        self
    }

    /// Set the initiator.
    pub fn initiator(mut self, initiator: Initiator) -> Self {
        self.initiator = initiator;
        self
    }

    /// Set the queue (overriding the type's).
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// Schedule the run: it is not dispatched before `at`.
    pub fn not_before(mut self, at: chrono::DateTime<chrono::Utc>) -> Self {
        self.not_before = Some(at);
        self
    }

    /// Start the run under the caller's trace.
    pub fn traceparent(mut self, context: crate::trace::TraceContext) -> Self {
        self.traceparent = Some(context);
        self
    }

    /// Check every field; the first problem is returned, naming its field.
    pub fn validate(&self) -> Result<()> {
        if self.tenant_id <= 0 {
            return Err(Error::invalid("tenant_id", "must be a positive integer"));
        }
        validate_type(&self.run_type)?;
        if let Some(queue) = &self.queue {
            validate_queue(queue)?;
        }
        if let Some(at) = self.not_before {
            check_not_before(at, chrono::Utc::now())?;
        }
        check_json_object("inputs", &self.inputs)?;
        check_json_object("context", &self.context)?;
        if let Some(user_id) = self.initiator.user_id
            && user_id <= 0
        {
            return Err(Error::invalid("user_id", "must be a positive integer"));
        }
        check_label(
            "initiator_name",
            &self.initiator.name,
            MAX_INITIATOR_NAME_CHARS,
        )?;
        Ok(())
    }
}

/// How far ahead a run may be scheduled.
pub const MAX_SCHEDULE_AHEAD_DAYS: i64 = 3660;

/// Check a run's start time: at most [`MAX_SCHEDULE_AHEAD_DAYS`] ahead of
/// `now` (a time in the past starts the run now).
pub fn check_not_before(
    at: chrono::DateTime<chrono::Utc>,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<()> {
    if at > now + chrono::TimeDelta::days(MAX_SCHEDULE_AHEAD_DAYS) {
        return Err(Error::invalid(
            "at",
            format!(
                "{} is more than {MAX_SCHEDULE_AHEAD_DAYS} days ahead",
                at.to_rfc3339()
            ),
        ));
    }
    Ok(())
}

/// Check a short human-readable value (a name, an external id): 1 to `max`
/// characters, not blank, no control characters.
pub fn check_label(field: &'static str, value: &str, max: usize) -> Result<()> {
    if value.trim().is_empty() || value.chars().count() > max {
        return Err(Error::invalid(
            field,
            format!("must be 1 to {max} characters"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::invalid(field, "must not contain control characters"));
    }
    Ok(())
}

/// Parse a tenant or user id as strict decimal: digits only, no sign, no
/// leading zeros, positive, fits in i64.
pub fn parse_positive_id(field: &'static str, text: &str) -> Result<i64> {
    let well_formed = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && !(text.len() > 1 && text.starts_with('0'));
    match text.parse::<i64>() {
        Ok(id) if well_formed && id > 0 => Ok(id),
        _ => Err(Error::invalid(
            field,
            format!(
                "{text:?} is not a positive integer (digits only, no sign or leading zeros, at most 9223372036854775807)"
            ),
        )),
    }
}

/// Check a run type against the taxonomy pattern.
pub fn validate_type(run_type: &str) -> Result<()> {
    if run_type.len() > MAX_TYPE_LEN || !TYPE_PATTERN.is_match(run_type) {
        return Err(Error::invalid(
            "type",
            format!(
                "{:?} must be lowercase dotted segments such as \"inventory.sync\" \
                 (letters, digits, underscores; at least two segments; at most {MAX_TYPE_LEN} characters)",
                truncated(run_type)
            ),
        ));
    }
    Ok(())
}

/// Check a queue name.
pub fn validate_queue(queue: &str) -> Result<()> {
    if !QUEUE_PATTERN.is_match(queue) {
        return Err(Error::invalid(
            "queue",
            format!(
                "{:?} must be 1 to 64 of a-z, 0-9, '_', '.', '-', starting with a letter or digit",
                truncated(queue)
            ),
        ));
    }
    Ok(())
}

/// Parse JSON text for `field` ("inputs" or "context"): size-checked before
/// parsing, then it must be an object within the depth limit, without NUL.
pub fn parse_json_object(field: &'static str, text: &str) -> Result<Value> {
    if text.len() > MAX_JSON_BYTES {
        return Err(Error::invalid(
            field,
            format!("is {} bytes; the limit is {MAX_JSON_BYTES}", text.len()),
        ));
    }
    let value: Value = serde_json::from_str(text)
        .map_err(|e| Error::invalid(field, format!("is not valid JSON: {e}")))?;
    check_json_object(field, &value)?;
    Ok(value)
}

/// Check an already-parsed value for `field`.
pub fn check_json_object(field: &'static str, value: &Value) -> Result<()> {
    if !value.is_object() {
        return Err(Error::invalid(field, "must be a JSON object"));
    }
    let depth = depth_of(value);
    if depth > MAX_JSON_DEPTH {
        return Err(Error::invalid(
            field,
            format!("nests {depth} levels deep; the limit is {MAX_JSON_DEPTH}"),
        ));
    }
    if contains_nul(value) {
        return Err(Error::invalid(
            field,
            "must not contain NUL characters (\\u0000)",
        ));
    }
    let size = value.to_string().len();
    if size > MAX_JSON_BYTES {
        return Err(Error::invalid(
            field,
            format!("is {size} bytes; the limit is {MAX_JSON_BYTES}"),
        ));
    }
    Ok(())
}

fn depth_of(value: &Value) -> usize {
    match value {
        Value::Object(map) => 1 + map.values().map(depth_of).max().unwrap_or(0),
        Value::Array(items) => 1 + items.iter().map(depth_of).max().unwrap_or(0),
        _ => 0,
    }
}

fn contains_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)),
        Value::Array(items) => items.iter().any(contains_nul),
        _ => false,
    }
}

/// Echo at most 60 characters of a rejected value.
fn truncated(text: &str) -> String {
    text.chars().take(60).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(err: Error) -> &'static str {
        match err {
            Error::Invalid { field, .. } => field,
            other => panic!("not a validation error: {other}"),
        }
    }

    #[test]
    fn tenant_ids_are_strict_positive_decimals() {
        assert_eq!(parse_positive_id("tenant_id", "42").unwrap(), 42);
        assert_eq!(
            parse_positive_id("tenant_id", "9223372036854775807").unwrap(),
            i64::MAX
        );
        for bad in [
            "0",
            "-1",
            "+1",
            "1e3",
            " 1",
            "01",
            "9223372036854775808",
            "",
            "abc",
            "1.0",
        ] {
            assert_eq!(
                field_of(parse_positive_id("tenant_id", bad).unwrap_err()),
                "tenant_id",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn types_follow_the_taxonomy() {
        for good in [
            "inventory.sync",
            "backup.run",
            "a.b.c",
            "demo.succeed",
            "x1.y_2",
        ] {
            validate_type(good).unwrap();
        }
        let long = format!("a.{}", "b".repeat(120));
        for bad in [
            "inventory",
            "Inventory.sync",
            "inventory..sync",
            ".a.b",
            "a.b.",
            "a-b.c",
            "a.1b",
            "",
            &long,
        ] {
            assert_eq!(field_of(validate_type(bad).unwrap_err()), "type", "{bad:?}");
        }
    }

    #[test]
    fn json_fields_must_be_bounded_objects() {
        parse_json_object("inputs", r#"{"a":[1,{"b":2}]}"#).unwrap();
        let deep = format!("{}1{}", "{\"a\":".repeat(40), "}".repeat(40));
        let big = format!(r#"{{"a":"{}"}}"#, "x".repeat(MAX_JSON_BYTES));
        for bad in ["[]", "\"x\"", "null", "{", r#"{"a":"\u0000"}"#, &deep, &big] {
            assert_eq!(
                field_of(parse_json_object("inputs", bad).unwrap_err()),
                "inputs",
                "{bad:.40}"
            );
        }
    }

    #[test]
    fn requests_are_checked_field_by_field() {
        RunRequest::new(1, "inventory.sync").validate().unwrap();
        let bad = |r: RunRequest| field_of(r.validate().unwrap_err());
        assert_eq!(bad(RunRequest::new(0, "a.b")), "tenant_id");
        assert_eq!(bad(RunRequest::new(1, "ab")), "type");
        assert_eq!(bad(RunRequest::new(1, "a.b").queue("Bad Queue")), "queue");
        assert_eq!(
            bad(RunRequest::new(1, "a.b").context(Value::Null)),
            "context"
        );
        assert_eq!(
            bad(RunRequest::new(1, "a.b").initiator(Initiator::user(0, "x"))),
            "user_id"
        );
        assert_eq!(
            bad(RunRequest::new(1, "a.b").initiator(Initiator::user(3, " "))),
            "initiator_name"
        );
    }
}
