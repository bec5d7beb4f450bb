//! The handlers file (TOML): which command runs each run type, its time limit
//! and its queue. Parsed and validated once at start; errors name the file,
//! the type and the field.
//!
//! ```toml
//! [defaults]
//! time_limit = "15m"     # any humantime duration
//! queue = "default"
//!
//! [types."inventory.sync"]
//! command = ["python3", "jobs/inventory_sync.py"]
//! time_limit = "10m"
//! queue = "inventory"
//! working_dir = "/srv/jobs"          # optional
//! env = { PROVIDER_REGION = "eu" }   # optional, added to the job's environment
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Time limit of a type that names none.
pub const DEFAULT_TIME_LIMIT: Duration = Duration::from_secs(15 * 60);

/// A handlers file, validated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HandlersFile {
    /// Time limit for types that set none.
    pub default_time_limit: Duration,
    /// Queue for types that set none.
    pub default_queue: String,
    /// Exec handlers by run type.
    pub types: BTreeMap<String, ExecSpec>,
}

/// How to run one type's jobs as a process.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecSpec {
    /// Program and arguments (no shell).
    pub command: Vec<String>,
    /// Longest a job may run.
    pub time_limit: Duration,
    /// Queue its runs are dispatched on.
    pub queue: String,
    /// Working directory, if any.
    pub working_dir: Option<PathBuf>,
    /// Extra environment variables.
    pub env: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    defaults: RawDefaults,
    #[serde(default)]
    types: BTreeMap<String, RawType>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    time_limit: Option<String>,
    queue: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawType {
    command: Vec<String>,
    time_limit: Option<String>,
    queue: Option<String>,
    working_dir: Option<PathBuf>,
    #[serde(default)]
    env: BTreeMap<String, String>,
}

/// A handlers file problem, naming where it is.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct HandlersError {
    path: String,
    message: String,
}

impl HandlersFile {
    /// Read and validate `path`.
    pub fn load(path: &Path) -> Result<HandlersFile, HandlersError> {
        let err = |message: String| HandlersError {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        Self::parse(&text).map_err(err)
    }

    /// Parse and validate handlers TOML.
    pub fn parse(text: &str) -> Result<HandlersFile, String> {
        let raw: RawFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let default_time_limit = match &raw.defaults.time_limit {
            Some(t) => duration("defaults.time_limit", t)?,
            None => DEFAULT_TIME_LIMIT,
        };
        let default_queue = raw
            .defaults
            .queue
            .unwrap_or_else(|| opsrun::request::DEFAULT_QUEUE.to_string());
        opsrun::request::validate_queue(&default_queue)
            .map_err(|e| format!("defaults.queue: {e}"))?;
        let mut types = BTreeMap::new();
        for (name, t) in raw.types {
            let at = |field: &str| format!("types.\"{name}\".{field}");
            opsrun::request::validate_type(&name).map_err(|e| format!("types.\"{name}\": {e}"))?;
            if t.command.is_empty() || t.command[0].is_empty() {
                return Err(format!(
                    "{}: must name a program, e.g. [\"python3\", \"job.py\"]",
                    at("command")
                ));
            }
            let time_limit = match &t.time_limit {
                Some(text) => duration(&at("time_limit"), text)?,
                None => default_time_limit,
            };
            let queue = t.queue.unwrap_or_else(|| default_queue.clone());
            opsrun::request::validate_queue(&queue).map_err(|e| format!("{}: {e}", at("queue")))?;
            types.insert(
                name,
                ExecSpec {
                    command: t.command,
                    time_limit,
                    queue,
                    working_dir: t.working_dir,
                    env: t.env,
                },
            );
        }
        Ok(HandlersFile {
            default_time_limit,
            default_queue,
            types,
        })
    }
}

fn duration(field: &str, text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err(format!("{field}: must be longer than zero")),
        Err(e) => Err(format!(
            "{field}: {text:?} is not a duration like \"90s\" or \"15m\" ({e})"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_file_parses_with_defaults_applied() {
        let file = HandlersFile::parse(
            r#"
            [defaults]
            time_limit = "5m"
            queue = "ops"
            [types."inventory.sync"]
            command = ["python3", "sync.py"]
            queue = "inventory"
            [types."backup.run"]
            command = ["backup"]
            time_limit = "2h"
            env = { REGION = "eu" }
            "#,
        )
        .unwrap();
        let sync = &file.types["inventory.sync"];
        assert_eq!(
            (sync.time_limit, sync.queue.as_str()),
            (Duration::from_secs(300), "inventory")
        );
        let backup = &file.types["backup.run"];
        assert_eq!(
            (backup.time_limit, backup.queue.as_str()),
            (Duration::from_secs(7200), "ops")
        );
        assert_eq!(backup.env["REGION"], "eu");
    }

    #[test]
    fn bad_files_name_the_field() {
        for (text, expected) in [
            ("[types.\"a.b\"]\ncommand = []", "types.\"a.b\".command"),
            (
                "[types.\"a.b\"]\ncommand = [\"x\"]\ntime_limit = \"soon\"",
                "types.\"a.b\".time_limit",
            ),
            (
                "[types.\"a.b\"]\ncommand = [\"x\"]\nqueue = \"Bad Queue\"",
                "types.\"a.b\".queue",
            ),
            ("[types.\"Bad\"]\ncommand = [\"x\"]", "types.\"Bad\""),
            (
                "[types.\"a.b\"]\ncommand = [\"x\"]\ncomand = 1",
                "unknown field `comand`",
            ),
            ("[defaults]\ntime_limit = \"0s\"", "defaults.time_limit"),
            ("not toml [", "expected"),
        ] {
            let err = HandlersFile::parse(text).unwrap_err();
            assert!(
                err.contains(expected),
                "{err:?} should mention {expected:?}"
            );
        }
    }
}
