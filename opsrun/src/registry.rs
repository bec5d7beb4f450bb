//! The type registry: one TOML file, shared by producer, worker and reaper,
//! declaring for each run type its queue, identity rule, time limit, lease,
//! attempts and retry backoff, and its handler. Validated once at start;
//! every error names the file, the type and the field, and unknown keys get a
//! did-you-mean. Pure: no I/O beyond reading the file.
//!
//! ```toml
//! strict_types = false          # true: undeclared types are refused
//!
//! [defaults]                    # for undeclared types and unset fields
//! queue = "default"
//! time_limit = "15m"
//! lease = "60s"
//! max_attempts = 3
//! retry_backoff = "10s"         # first retry delay; doubles each attempt
//! retry_backoff_max = "1h"
//!
//! [types."inventory.sync"]
//! queue = "inventory"
//! identity = "deterministic"    # deterministic | nonce | strict
//! command = ["python3", "jobs/inventory_sync.py"]   # exec handler
//! env = { REGION = "eu" }       # variables the job gets
//! inherit_env = ["PATH", "LANG", "AWS_PROFILE"]      # the worker's variables it may see
//! run_as = "opsrun-job"         # the user it runs as (the worker needs root or CAP_SETUID)
//! concurrency = { limit = 2, per = "tenant" }   # or per = "inputs.<name>"
//!
//! [queues.inventory]           # queue settings (optional)
//! shards = 4                    # streams; a tenant's runs go to one of them
//!
//! [types."backup.scheduled"]
//! identity = "strict"
//! identity_keys = ["backup_schedule_id", "scheduled_for"]
//! handler = "backup"            # a Rust handler registered under this name
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::Rng;

use crate::error::{Error, Result};
use crate::request::{validate_queue, validate_type};

/// Default time limit of a job.
pub const DEFAULT_TIME_LIMIT: Duration = Duration::from_secs(15 * 60);
/// Default lease: time without a heartbeat before a run is considered stuck.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);
/// Default attempts before a run fails for good.
pub const DEFAULT_MAX_ATTEMPTS: i32 = 3;
/// Default first retry delay.
pub const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_secs(10);
/// Default longest retry delay.
pub const DEFAULT_RETRY_BACKOFF_MAX: Duration = Duration::from_secs(3600);
/// The worker's variables an exec job sees unless its type says otherwise:
/// enough to find programs and format text, nothing that grants access.
pub const DEFAULT_INHERIT_ENV: &[&str] =
    &["PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "HOME"];
/// The worker's own credentials: never passed to a job, whatever a type lists.
pub const WORKER_CREDENTIALS: &[&str] = &[
    "DATABASE_URL",
    "DATABASE_URL_FILE",
    "REDIS_URL",
    "REDIS_URL_FILE",
    "PGPASSWORD",
    "PGPASSFILE",
];

/// How a run's identity is computed and how long it deduplicates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityRule {
    /// From all inputs; starts are folded into the active run.
    Deterministic,
    /// Unique per start: every start creates a run.
    Nonce,
    /// From the named input keys; deduplicated across all states, so that
    /// occurrence runs once, ever (until retention removes it).
    Strict {
        /// Input keys that make up the identity, all required.
        keys: Vec<String>,
    },
}

impl IdentityRule {
    /// The stored spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            IdentityRule::Deterministic => "deterministic",
            IdentityRule::Nonce => "nonce",
            IdentityRule::Strict { .. } => "strict",
        }
    }
}

/// Exponential backoff with jitter between attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryBackoff {
    /// Delay before the first retry.
    pub base: Duration,
    /// Longest delay.
    pub max: Duration,
}

impl RetryBackoff {
    /// The delay after failed attempt `attempt` (1-based): `base × 2^(attempt-1)`,
    /// capped at `max`, then drawn uniformly from its upper half so retries
    /// of many runs spread out.
    pub fn delay(&self, attempt: i32) -> Duration {
        let exponent = attempt.saturating_sub(1).clamp(0, 30) as u32;
        let full = self.base.saturating_mul(1u32 << exponent).min(self.max);
        let half = full / 2;
        half + rand::rng().random_range(Duration::ZERO..=full - half)
    }
}

/// What executes a type's jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandlerSpec {
    /// A process, in any language (see the worker's exec protocol).
    Exec {
        /// Program and arguments (no shell).
        command: Vec<String>,
        /// Working directory.
        working_dir: Option<PathBuf>,
        /// Variables set for the job.
        env: BTreeMap<String, String>,
        /// Names of the worker's variables the job sees (its environment
        /// starts empty otherwise).
        inherit_env: Vec<String>,
        /// The user the job runs as (a name or a numeric uid); `None`: the
        /// worker's own user.
        run_as: Option<String>,
    },
    /// A Rust handler registered with the worker under this name.
    Rust {
        /// The registered name.
        name: String,
    },
}

/// The `[defaults]` of exec types' isolation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecDefaults {
    /// See [`HandlerSpec::Exec::inherit_env`].
    pub inherit_env: Vec<String>,
    /// See [`HandlerSpec::Exec::run_as`].
    pub run_as: Option<String>,
}

/// Everything declared about one run type (defaults filled in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeSpec {
    /// Queue its runs are dispatched on.
    pub queue: String,
    /// Identity rule.
    pub identity: IdentityRule,
    /// Longest a job may run.
    pub time_limit: Duration,
    /// Time without a heartbeat before the run is reclaimed.
    pub lease: Duration,
    /// Attempts before the run fails for good.
    pub max_attempts: i32,
    /// Delay between attempts after a retryable failure.
    pub retry: RetryBackoff,
    /// Its handler, if this file declares one.
    pub handler: Option<HandlerSpec>,
    /// Its per-key concurrency limit, if it has one (types only, not
    /// `[defaults]`).
    pub concurrency: Option<crate::concurrency::ConcurrencyLimit>,
}

/// A validated registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registry {
    /// Refuse types that are not declared.
    pub strict_types: bool,
    /// What undeclared types get (with no handler).
    pub defaults: TypeSpec,
    /// What exec types get when they leave `inherit_env` or `run_as` out.
    pub exec_defaults: ExecDefaults,
    /// Declared types.
    pub types: BTreeMap<String, TypeSpec>,
    /// Streams per queue declared under `[queues]` (others have 1).
    pub shards: BTreeMap<String, i16>,
    /// Schedules declared under `[schedules.<name>]`, kept in Postgres by
    /// the reaper (see [`crate::schedule`]).
    pub schedules: Vec<DeclaredSchedule>,
}

/// A schedule declared in the registry (validated when it is read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredSchedule {
    /// Its name (unique per tenant).
    pub name: String,
    /// The tenant its runs belong to.
    pub tenant_id: i64,
    /// Five-field cron expression.
    pub cron: String,
    /// IANA time zone.
    pub timezone: String,
    /// Run type.
    pub run_type: String,
    /// Run inputs.
    pub inputs: serde_json::Value,
    /// Missed-slot policy.
    pub missed: crate::schedule::MissedPolicy,
}

impl DeclaredSchedule {
    /// The validated definition.
    pub fn definition(&self) -> Result<crate::schedule::Definition> {
        crate::schedule::Definition::new(
            self.tenant_id,
            &self.name,
            &self.cron,
            &self.timezone,
            &self.run_type,
            self.inputs.clone(),
            self.missed,
        )
    }
}

impl Default for Registry {
    /// No declared types; documented defaults for all.
    fn default() -> Self {
        Registry::parse("").expect("the empty registry is valid")
    }
}

impl Registry {
    /// Read and validate the registry at `path`.
    pub fn load(path: &Path) -> Result<Registry> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::invalid("registry", format!("{}: cannot read: {e}", path.display()))
        })?;
        Registry::parse(&text)
            .map_err(|e| Error::invalid("registry", format!("{}: {e}", path.display())))
    }

    /// Parse and validate registry TOML; the error names the type and field.
    pub fn parse(text: &str) -> std::result::Result<Registry, String> {
        let root: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
        check_keys(
            "",
            &root,
            &["strict_types", "defaults", "queues", "types", "schedules"],
        )?;
        let strict_types = match root.get("strict_types") {
            None => false,
            Some(v) => v.as_bool().ok_or("strict_types: must be true or false")?,
        };
        let empty = toml::Table::new();
        let defaults_table = table(&root, "defaults", "defaults")?.unwrap_or(&empty);
        check_keys("defaults", defaults_table, DEFAULT_KEYS)?;
        let builtin = TypeSpec {
            queue: crate::request::DEFAULT_QUEUE.to_string(),
            identity: IdentityRule::Deterministic,
            time_limit: DEFAULT_TIME_LIMIT,
            lease: DEFAULT_LEASE,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            retry: RetryBackoff {
                base: DEFAULT_RETRY_BACKOFF,
                max: DEFAULT_RETRY_BACKOFF_MAX,
            },
            handler: None,
            concurrency: None,
        };
        let defaults = type_spec("defaults", defaults_table, &builtin, None)?;
        let exec_defaults = ExecDefaults {
            inherit_env: inherit_env("defaults", defaults_table)?
                .unwrap_or_else(|| DEFAULT_INHERIT_ENV.iter().map(|n| n.to_string()).collect()),
            run_as: run_as("defaults", defaults_table)?,
        };
        let mut types = BTreeMap::new();
        if let Some(declared) = table(&root, "types", "types")? {
            for (name, value) in declared {
                let at = format!("types.\"{name}\"");
                validate_type(name).map_err(|e| format!("{at}: {e}"))?;
                let t = value
                    .as_table()
                    .ok_or_else(|| format!("{at}: must be a table"))?;
                check_keys(&at, t, TYPE_KEYS)?;
                types.insert(
                    name.clone(),
                    type_spec(&at, t, &defaults, Some(&exec_defaults))?,
                );
            }
        }
        let mut shards = BTreeMap::new();
        if let Some(declared) = table(&root, "queues", "queues")? {
            for (name, value) in declared {
                let at = format!("queues.\"{name}\"");
                validate_queue(name).map_err(|e| format!("{at}: {e}"))?;
                let t = value
                    .as_table()
                    .ok_or_else(|| format!("{at}: must be a table"))?;
                check_keys(&at, t, QUEUE_KEYS)?;
                let max = crate::transport::MAX_SHARDS;
                let n = match t.get("shards") {
                    None => 1,
                    Some(n) => n
                        .as_integer()
                        .filter(|n| (1..=max as i64).contains(n))
                        .ok_or_else(|| {
                            format!("{at}.shards: must be a whole number from 1 to {max}")
                        })?,
                };
                shards.insert(name.clone(), n as i16);
            }
        }
        let mut schedules = Vec::new();
        if let Some(declared) = table(&root, "schedules", "schedules")? {
            for (name, value) in declared {
                let at = format!("schedules.\"{name}\"");
                let t = value
                    .as_table()
                    .ok_or_else(|| format!("{at}: must be a table"))?;
                check_keys(&at, t, SCHEDULE_KEYS)?;
                let text = |key: &str, default: Option<&str>| match (t.get(key), default) {
                    (Some(v), _) => v
                        .as_str()
                        .map(str::to_string)
                        .ok_or_else(|| format!("{at}.{key}: must be a string")),
                    (None, Some(d)) => Ok(d.to_string()),
                    (None, None) => Err(format!("{at}.{key}: is required")),
                };
                let tenant_id = t
                    .get("tenant")
                    .and_then(toml::Value::as_integer)
                    .ok_or_else(|| format!("{at}.tenant: must be a tenant id"))?;
                let inputs = match t.get("inputs") {
                    None => serde_json::json!({}),
                    Some(v) => serde_json::to_value(v).map_err(|e| format!("{at}.inputs: {e}"))?,
                };
                let declared = DeclaredSchedule {
                    name: name.clone(),
                    tenant_id,
                    cron: text("cron", None)?,
                    timezone: text("timezone", Some("UTC"))?,
                    run_type: text("type", None)?,
                    inputs,
                    missed: text("missed", Some("skip"))?
                        .parse()
                        .map_err(|e: Error| format!("{at}: {e}"))?,
                };
                declared.definition().map_err(|e| format!("{at}: {e}"))?;
                schedules.push(declared);
            }
        }
        Ok(Registry {
            strict_types,
            defaults,
            exec_defaults,
            types,
            shards,
            schedules,
        })
    }

    /// The spec of `run_type`: its declaration, or the defaults for an
    /// undeclared type unless `strict_types` refuses it.
    pub fn spec(&self, run_type: &str) -> Result<&TypeSpec> {
        match self.types.get(run_type) {
            Some(spec) => Ok(spec),
            None if self.strict_types => Err(Error::invalid(
                "type",
                format!(
                    "{run_type:?} is not declared in the registry, which sets strict_types = true"
                ),
            )),
            None => Ok(&self.defaults),
        }
    }

    /// How many streams `queue` has: its declared `shards`, or 1.
    pub fn shards(&self, queue: &str) -> i16 {
        self.shards.get(queue).copied().unwrap_or(1)
    }

    /// Every queue a declared type or the defaults use, or declared under `[queues]`.
    pub fn queues(&self) -> Vec<String> {
        let mut queues: Vec<String> = std::iter::once(&self.defaults)
            .chain(self.types.values())
            .map(|t| t.queue.clone())
            .chain(self.shards.keys().cloned())
            .collect();
        queues.sort();
        queues.dedup();
        queues
    }
}

const QUEUE_KEYS: &[&str] = &["shards"];
const SCHEDULE_KEYS: &[&str] = &["tenant", "cron", "timezone", "type", "inputs", "missed"];
const DEFAULT_KEYS: &[&str] = &[
    "queue",
    "time_limit",
    "lease",
    "max_attempts",
    "retry_backoff",
    "retry_backoff_max",
    "inherit_env",
    "run_as",
];
const TYPE_KEYS: &[&str] = &[
    "queue",
    "identity",
    "identity_keys",
    "time_limit",
    "lease",
    "max_attempts",
    "retry_backoff",
    "retry_backoff_max",
    "command",
    "working_dir",
    "env",
    "inherit_env",
    "run_as",
    "handler",
    "concurrency",
];

/// Reject keys outside `allowed`, suggesting the closest allowed one.
fn check_keys(at: &str, t: &toml::Table, allowed: &[&str]) -> std::result::Result<(), String> {
    for key in t.keys() {
        if !allowed.contains(&key.as_str()) {
            let place = if at.is_empty() {
                String::new()
            } else {
                format!("{at}: ")
            };
            let closest = allowed
                .iter()
                .map(|a| (strsim::jaro_winkler(key, a), a))
                .max_by(|x, y| x.0.total_cmp(&y.0))
                .filter(|(score, _)| *score > 0.8);
            return Err(match closest {
                Some((_, suggestion)) => {
                    format!("{place}unknown key {key:?}; did you mean {suggestion:?}?")
                }
                None => format!(
                    "{place}unknown key {key:?}; expected one of {}",
                    allowed.join(", ")
                ),
            });
        }
    }
    Ok(())
}

fn table<'a>(
    t: &'a toml::Table,
    key: &str,
    at: &str,
) -> std::result::Result<Option<&'a toml::Table>, String> {
    match t.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_table()
            .map(Some)
            .ok_or_else(|| format!("{at}: must be a table")),
    }
}

fn string<'a>(
    t: &'a toml::Table,
    key: &str,
    at: &str,
) -> std::result::Result<Option<&'a str>, String> {
    match t.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_str()
            .map(Some)
            .ok_or_else(|| format!("{at}.{key}: must be a string")),
    }
}

fn strings(
    t: &toml::Table,
    key: &str,
    at: &str,
) -> std::result::Result<Option<Vec<String>>, String> {
    match t.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_array()
            .and_then(|items| {
                items
                    .iter()
                    .map(|i| i.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
            })
            .map(Some)
            .ok_or_else(|| format!("{at}.{key}: must be a list of strings")),
    }
}

fn duration(
    t: &toml::Table,
    key: &str,
    at: &str,
    default: Duration,
) -> std::result::Result<Duration, String> {
    match string(t, key, at)? {
        None => Ok(default),
        Some(text) => match humantime::parse_duration(text) {
            Ok(d) if !d.is_zero() => Ok(d),
            Ok(_) => Err(format!("{at}.{key}: must be longer than zero")),
            Err(e) => Err(format!(
                "{at}.{key}: {text:?} is not a duration like \"90s\" or \"15m\" ({e})"
            )),
        },
    }
}

/// `inherit_env`: variable names, never one of the worker's credentials.
fn inherit_env(at: &str, t: &toml::Table) -> std::result::Result<Option<Vec<String>>, String> {
    let Some(names) = strings(t, "inherit_env", at)? else {
        return Ok(None);
    };
    for name in &names {
        let valid = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!("{at}.inherit_env: {name:?} is not a variable name"));
        }
        if WORKER_CREDENTIALS.contains(&name.as_str()) {
            return Err(format!(
                "{at}.inherit_env: {name} is the worker's own credential and is never passed to a job"
            ));
        }
    }
    Ok(Some(names))
}

/// `run_as`: a user name or a numeric uid.
fn run_as(at: &str, t: &toml::Table) -> std::result::Result<Option<String>, String> {
    match string(t, "run_as", at)? {
        Some(user) if user.is_empty() || user.chars().any(|c| c.is_whitespace() || c == ':') => {
            Err(format!("{at}.run_as: {user:?} is not a user name or uid"))
        }
        user => Ok(user.map(str::to_string)),
    }
}

/// `concurrency = { limit = 2, per = "tenant" | "inputs.<name>" }`.
fn concurrency(
    at: &str,
    t: &toml::Table,
) -> std::result::Result<Option<crate::concurrency::ConcurrencyLimit>, String> {
    let Some(limit) = table(t, "concurrency", &format!("{at}.concurrency"))? else {
        return Ok(None);
    };
    let at = format!("{at}.concurrency");
    check_keys(&at, limit, &["limit", "per"])?;
    let max = crate::concurrency::MAX_LIMIT;
    let n = limit
        .get("limit")
        .and_then(toml::Value::as_integer)
        .filter(|n| (1..=max as i64).contains(n))
        .ok_or_else(|| format!("{at}.limit: must be a whole number from 1 to {max}"))?;
    let per = string(limit, "per", &at)?.unwrap_or("tenant");
    crate::concurrency::ConcurrencyLimit::new(n as u32, per)
        .map(Some)
        .map_err(|e| format!("{at}.{e}"))
}

/// A type's spec from its table, `base` filling what it leaves out;
/// `exec` fills an exec handler's isolation (`None` for `[defaults]`,
/// which declares no handler).
fn type_spec(
    at: &str,
    t: &toml::Table,
    base: &TypeSpec,
    exec: Option<&ExecDefaults>,
) -> std::result::Result<TypeSpec, String> {
    let queue = string(t, "queue", at)?
        .map(str::to_string)
        .unwrap_or_else(|| base.queue.clone());
    validate_queue(&queue).map_err(|e| format!("{at}.queue: {e}"))?;
    let keys = strings(t, "identity_keys", at)?;
    let identity = match (string(t, "identity", at)?, keys) {
        (None | Some("deterministic"), None) => IdentityRule::Deterministic,
        (Some("nonce"), None) => IdentityRule::Nonce,
        (Some("strict"), Some(keys)) if !keys.is_empty() => IdentityRule::Strict { keys },
        (Some("strict"), _) => {
            return Err(format!(
                "{at}.identity_keys: a strict identity names at least one input key"
            ));
        }
        (None | Some("deterministic" | "nonce"), Some(_)) => {
            return Err(format!(
                "{at}.identity_keys: only a strict identity takes keys"
            ));
        }
        (Some(other), _) => {
            return Err(format!(
                "{at}.identity: {other:?} is not one of deterministic, nonce, strict"
            ));
        }
    };
    let max_attempts = match t.get("max_attempts") {
        None => base.max_attempts,
        Some(v) => match v.as_integer() {
            Some(n @ 1..=1000) => n as i32,
            _ => {
                return Err(format!(
                    "{at}.max_attempts: must be a whole number from 1 to 1000"
                ));
            }
        },
    };
    let retry = RetryBackoff {
        base: duration(t, "retry_backoff", at, base.retry.base)?,
        max: duration(t, "retry_backoff_max", at, base.retry.max)?,
    };
    if retry.max < retry.base {
        return Err(format!(
            "{at}.retry_backoff_max: must not be shorter than retry_backoff"
        ));
    }
    let lease = duration(t, "lease", at, base.lease)?;
    if lease < Duration::from_secs(1) {
        return Err(format!("{at}.lease: must be at least 1s"));
    }
    let command = strings(t, "command", at)?;
    let handler = match (command, string(t, "handler", at)?) {
        (Some(_), Some(_)) => {
            return Err(format!(
                "{at}: give either command (exec) or handler (Rust), not both"
            ));
        }
        (Some(command), None) => {
            if command.first().is_none_or(|p| p.is_empty()) {
                return Err(format!(
                    "{at}.command: must name a program, e.g. [\"python3\", \"job.py\"]"
                ));
            }
            let env = match table(t, "env", &format!("{at}.env"))? {
                None => BTreeMap::new(),
                Some(env) => env
                    .iter()
                    .map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                    .collect::<Option<_>>()
                    .ok_or_else(|| format!("{at}.env: values must be strings"))?,
            };
            let working_dir = string(t, "working_dir", at)?.map(PathBuf::from);
            let exec = exec.ok_or_else(|| format!("{at}: a command belongs to a type"))?;
            Some(HandlerSpec::Exec {
                command,
                working_dir,
                env,
                inherit_env: inherit_env(at, t)?.unwrap_or_else(|| exec.inherit_env.clone()),
                run_as: run_as(at, t)?.or_else(|| exec.run_as.clone()),
            })
        }
        (None, Some(name)) if !name.is_empty() => Some(HandlerSpec::Rust {
            name: name.to_string(),
        }),
        (None, Some(_)) => {
            return Err(format!("{at}.handler: must name a registered Rust handler"));
        }
        (None, None) => {
            let exec_keys = ["env", "working_dir", "inherit_env", "run_as"];
            if exec.is_some() && exec_keys.iter().any(|k| t.contains_key(*k)) {
                return Err(format!(
                    "{at}: env, working_dir, inherit_env and run_as go with command"
                ));
            }
            None
        }
    };
    Ok(TypeSpec {
        queue,
        identity,
        time_limit: duration(t, "time_limit", at, base.time_limit)?,
        lease,
        max_attempts,
        retry,
        handler,
        concurrency: concurrency(at, t)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_registry_parses_with_defaults_applied() {
        let registry = Registry::parse(
            r#"
            strict_types = true
            [defaults]
            queue = "ops"
            lease = "2m"
            max_attempts = 4
            run_as = "opsrun-job"
            [types."inventory.sync"]
            queue = "inventory"
            command = ["python3", "sync.py"]
            env = { REGION = "eu" }
            retry_backoff = "30s"
            [types."backup.run"]
            command = ["backup"]
            inherit_env = ["PATH", "AWS_PROFILE"]
            run_as = "1001"
            [types."backup.scheduled"]
            identity = "strict"
            identity_keys = ["backup_schedule_id", "scheduled_for"]
            handler = "backup"
            time_limit = "2h"
            [queues.inventory]
            shards = 4
            [queues.bulk]
            [types."report.build"]
            identity = "nonce"
            "#,
        )
        .unwrap();
        let sync = registry.spec("inventory.sync").unwrap();
        assert_eq!(
            (sync.queue.as_str(), sync.max_attempts, sync.lease),
            ("inventory", 4, Duration::from_secs(120))
        );
        assert_eq!(
            sync.retry,
            RetryBackoff {
                base: Duration::from_secs(30),
                max: DEFAULT_RETRY_BACKOFF_MAX
            }
        );
        let Some(HandlerSpec::Exec {
            env,
            inherit_env,
            run_as,
            ..
        }) = &sync.handler
        else {
            panic!("inventory.sync is an exec type");
        };
        assert_eq!(env["REGION"], "eu");
        assert_eq!(inherit_env, DEFAULT_INHERIT_ENV);
        assert_eq!(run_as.as_deref(), Some("opsrun-job"));
        let Some(HandlerSpec::Exec {
            inherit_env,
            run_as,
            ..
        }) = &registry.spec("backup.run").unwrap().handler
        else {
            panic!("backup.run is an exec type");
        };
        assert_eq!(inherit_env, &["PATH", "AWS_PROFILE"]);
        assert_eq!(run_as.as_deref(), Some("1001"));
        let backup = registry.spec("backup.scheduled").unwrap();
        assert_eq!(
            backup.identity,
            IdentityRule::Strict {
                keys: vec!["backup_schedule_id".into(), "scheduled_for".into()]
            }
        );
        assert_eq!(backup.queue, "ops");
        assert_eq!(
            backup.handler,
            Some(HandlerSpec::Rust {
                name: "backup".into()
            })
        );
        assert_eq!(
            registry.spec("report.build").unwrap().identity,
            IdentityRule::Nonce
        );
        assert!(
            registry.spec("undeclared.type").is_err(),
            "strict_types refuses undeclared types"
        );
        assert_eq!(registry.queues(), ["bulk", "inventory", "ops"]);
        assert_eq!(
            (registry.shards("inventory"), registry.shards("ops")),
            (4, 1)
        );
        assert_eq!(registry.shards("bulk"), 1, "a queue table without shards");
    }

    #[test]
    fn undeclared_types_get_the_defaults_unless_strict() {
        let registry = Registry::default();
        let spec = registry.spec("any.type").unwrap();
        assert_eq!(
            (spec.max_attempts, spec.lease, spec.time_limit),
            (3, DEFAULT_LEASE, DEFAULT_TIME_LIMIT)
        );
        assert_eq!(spec.identity, IdentityRule::Deterministic);
        assert!(spec.handler.is_none());
    }

    #[test]
    fn bad_registries_name_the_type_and_field() {
        for (text, expected) in [
            (
                "[types.\"a.b\"]\ncomand = [\"x\"]",
                "types.\"a.b\": unknown key \"comand\"; did you mean \"command\"?",
            ),
            (
                "[defaults]\nleese = \"1m\"",
                "defaults: unknown key \"leese\"; did you mean \"lease\"?",
            ),
            (
                "strict_type = true",
                "unknown key \"strict_type\"; did you mean \"strict_types\"?",
            ),
            ("[types.\"a.b\"]\nzzz = 1", "expected one of"),
            ("[types.\"a.b\"]\ncommand = []", "types.\"a.b\".command"),
            (
                "[types.\"a.b\"]\ntime_limit = \"soon\"",
                "types.\"a.b\".time_limit",
            ),
            ("[types.\"a.b\"]\nlease = \"0s\"", "types.\"a.b\".lease"),
            (
                "[types.\"a.b\"]\nqueue = \"Bad Queue\"",
                "types.\"a.b\".queue",
            ),
            (
                "[types.\"a.b\"]\nmax_attempts = 0",
                "types.\"a.b\".max_attempts",
            ),
            (
                "[types.\"a.b\"]\nidentity = \"fuzzy\"",
                "types.\"a.b\".identity",
            ),
            (
                "[types.\"a.b\"]\nidentity = \"strict\"",
                "types.\"a.b\".identity_keys",
            ),
            (
                "[types.\"a.b\"]\nidentity_keys = [\"k\"]",
                "only a strict identity",
            ),
            (
                "[types.\"a.b\"]\ncommand = [\"x\"]\nhandler = \"y\"",
                "either command",
            ),
            (
                "[types.\"a.b\"]\nretry_backoff = \"1h\"\nretry_backoff_max = \"1m\"",
                "retry_backoff_max",
            ),
            ("[types.\"Bad\"]\nqueue = \"q\"", "types.\"Bad\""),
            (
                "[queues.q]\nshards = 0",
                "queues.\"q\".shards: must be a whole number from 1 to 64",
            ),
            ("[queues.q]\nshards = 65", "queues.\"q\".shards"),
            ("[queues.q]\nshards = \"4\"", "queues.\"q\".shards"),
            ("[queues.q]\nshard = 4", "did you mean \"shards\"?"),
            ("[queues.\"Bad Q\"]\nshards = 2", "queues.\"Bad Q\""),
            (
                "[types.\"a.b\"]\ncommand = [\"x\"]\ninherit_env = [\"DATABASE_URL\"]",
                "worker's own credential",
            ),
            (
                "[defaults]\ninherit_env = [\"A B\"]",
                "defaults.inherit_env",
            ),
            (
                "[types.\"a.b\"]\ncommand = [\"x\"]\nrun_as = \"\"",
                "types.\"a.b\".run_as",
            ),
            ("[types.\"a.b\"]\nrun_as = \"nobody\"", "go with command"),
            ("strict_types = \"yes\"", "strict_types"),
            ("not toml [", "expected"),
        ] {
            let err = Registry::parse(text).unwrap_err();
            assert!(
                err.contains(expected),
                "{text:?}: {err:?} should mention {expected:?}"
            );
        }
    }

    #[test]
    fn backoff_grows_exponentially_within_bounds() {
        let backoff = RetryBackoff {
            base: Duration::from_secs(10),
            max: Duration::from_secs(60),
        };
        for _ in 0..200 {
            let d1 = backoff.delay(1);
            assert!(
                d1 >= Duration::from_secs(5) && d1 <= Duration::from_secs(10),
                "{d1:?}"
            );
            let d3 = backoff.delay(3);
            assert!(
                d3 >= Duration::from_secs(20) && d3 <= Duration::from_secs(40),
                "{d3:?}"
            );
            let d9 = backoff.delay(9);
            assert!(
                d9 >= Duration::from_secs(30) && d9 <= Duration::from_secs(60),
                "{d9:?}"
            );
            assert!(backoff.delay(1000) <= Duration::from_secs(60));
        }
    }
}
