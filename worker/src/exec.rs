//! The exec handler: runs a job as a process, in any language.
//!
//! Protocol: the job gets the run as JSON on stdin (`run_id`, `tenant_id`,
//! `type`, `attempt`, `queue`, `inputs`, `context`, `initiator`) and the same
//! ids in `OPSRUN_RUN_ID`, `OPSRUN_TENANT_ID`, `OPSRUN_TYPE`,
//! `OPSRUN_ATTEMPT`, `OPSRUN_QUEUE`. Its last non-empty stdout line may be a
//! JSON result `{"summary_counts":{..},"failures":[..],"outcome":".."}`.
//! Exit 0 succeeds unless the result says otherwise; exit 75 (EX_TEMPFAIL)
//! asks for a retry (`job.retry`) after the type's backoff, or after
//! `retry_after_seconds` from the result line; any other non-zero exit fails
//! the run with `job.exit_nonzero` and the sanitized tail of stderr. When the
//! time limit passes the whole process group is killed; when the run is
//! cancelled it gets SIGTERM, and is killed after the worker's cancel grace.
//!
//! Isolation: a job's environment starts empty; it gets the `OPSRUN_*`
//! variables, its type's `env`, and the worker variables its type's
//! `inherit_env` names (never the worker's database and Redis credentials).
//! With `run_as` it runs as another user, who cannot read the worker's
//! memory, environment or secret files; the worker itself is not dumpable
//! and forgets its secrets' variables once read (see the worker binary).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;

use async_trait::async_trait;
use opsrun::lifecycle::{Handler, Job, JobReport, JobResult};
use opsrun::{Failure, Outcome, SummaryCounts};
use serde::Deserialize;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// How much of stdout is kept to find the result line.
const STDOUT_KEEP: usize = 256 * 1024;
/// How much of stderr is read for the failure message: all of it is
/// redacted before its tail is kept, so a secret printed across the cut (a
/// private key's body) is seen whole.
const STDERR_KEEP: usize = 64 * 1024;
/// How much of stderr's redacted tail the failure message keeps.
const STDERR_TAIL: usize = 800;
/// Exit code that asks for a retry (sysexits' EX_TEMPFAIL).
pub const EXIT_RETRY: i32 = 75;

/// The user a job runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobUser {
    /// Its name, for messages.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory (the job's `HOME`).
    pub home: PathBuf,
}

impl JobUser {
    /// Look up a registry `run_as` (a user name or a numeric uid) in the
    /// user database.
    pub fn resolve(run_as: &str) -> Result<JobUser, String> {
        let found = match run_as.parse::<u32>() {
            Ok(uid) => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)),
            Err(_) => nix::unistd::User::from_name(run_as),
        };
        match found {
            Ok(Some(user)) => Ok(JobUser {
                name: user.name,
                uid: user.uid.as_raw(),
                gid: user.gid.as_raw(),
                home: user.dir,
            }),
            Ok(None) => Err(format!("run_as: no user {run_as:?} on this machine")),
            Err(e) => Err(format!("run_as: looking up user {run_as:?}: {e}")),
        }
    }
}

/// Runs one type's jobs as processes.
#[derive(Debug, Clone)]
pub struct ExecHandler {
    command: Vec<String>,
    working_dir: Option<PathBuf>,
    env: Vec<(String, String)>,
    user: Option<JobUser>,
}

impl ExecHandler {
    /// A handler running `command` (program and arguments, no shell) with
    /// exactly `env` (plus the `OPSRUN_*` variables), as `user` when given.
    pub fn new(
        command: Vec<String>,
        working_dir: Option<PathBuf>,
        env: BTreeMap<String, String>,
        user: Option<JobUser>,
    ) -> Self {
        ExecHandler {
            command,
            working_dir,
            env: env.into_iter().collect(),
            user,
        }
    }

    /// The environment a job of a type gets: the worker variables its
    /// `inherit_env` names (from `worker_env`, a snapshot taken before the
    /// worker forgot its secrets), then its own `env`, and `HOME` of its
    /// `run_as` user.
    pub fn job_env(
        inherit_env: &[String],
        env: &BTreeMap<String, String>,
        worker_env: &BTreeMap<String, String>,
        user: Option<&JobUser>,
    ) -> BTreeMap<String, String> {
        // The registry refuses the worker's credentials in `inherit_env`,
        // and the snapshot never holds them.
        let mut job_env: BTreeMap<String, String> = inherit_env
            .iter()
            .filter_map(|name| worker_env.get(name).map(|v| (name.clone(), v.clone())))
            .collect();
        job_env.extend(env.iter().map(|(k, v)| (k.clone(), v.clone())));
        if let Some(user) = user {
            job_env.insert("HOME".into(), user.home.display().to_string());
        }
        job_env
    }
}

/// The optional result line.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecResult {
    outcome: Option<Outcome>,
    #[serde(default)]
    summary_counts: SummaryCounts,
    #[serde(default)]
    failures: Vec<Failure>,
    /// With exit 75: how long to wait before the next attempt.
    retry_after_seconds: Option<f64>,
}

/// Kills the job's process group when dropped before the job exited
/// (time limit, shutdown), so grandchildren do not outlive it.
struct GroupGuard {
    pgid: Option<i32>,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.pgid {
            // SAFETY: signals a process group this handler created.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
    }
}

#[async_trait]
impl Handler for ExecHandler {
    async fn handle(&self, job: Job) -> JobResult {
        let run = &job.run;
        let mut cmd = tokio::process::Command::new(&self.command[0]);
        cmd.args(&self.command[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("OPSRUN_RUN_ID", run.id.to_string())
            .env("OPSRUN_TENANT_ID", run.tenant_id.to_string())
            .env("OPSRUN_TYPE", &run.run_type)
            .env("OPSRUN_ATTEMPT", run.attempt.to_string())
            .env("OPSRUN_QUEUE", &run.queue);
        if let Some(traceparent) = job.traceparent() {
            cmd.env("TRACEPARENT", traceparent);
        }
        if let Some(user) = &self.user {
            // Supplementary groups are dropped too (std does when root).
            cmd.uid(user.uid).gid(user.gid);
        }
        // If the worker dies (SIGKILL, OOM), its job must not run on unseen:
        // the reaper will reclaim the run and may start it elsewhere.
        // SAFETY: prctl is async-signal-safe and only affects the child.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        if let Some(dir) = &self.working_dir {
            cmd.current_dir(dir);
        }
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => {
                let who = match &self.user {
                    Some(user) => format!(
                        " as user {} (running a job as another user needs a worker running as root or with CAP_SETUID and CAP_SETGID)",
                        user.name
                    ),
                    None => String::new(),
                };
                return JobResult::failed(
                    "job.spawn_failed",
                    format!("could not start {}{who}: {e}", self.command[0]),
                );
            }
        };
        let mut guard = GroupGuard {
            pgid: child.id().map(|id| id as i32),
        };

        let payload = json!({
            "run_id": run.id,
            "tenant_id": run.tenant_id,
            "type": run.run_type,
            "attempt": run.attempt,
            "queue": run.queue,
            "inputs": run.inputs.0,
            "context": run.context.0,
            "initiator": {"user_id": run.user_id, "name": run.initiator_name},
        });
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let feed = async move {
            // A job that ignores stdin may close it early: not an error.
            let _ = stdin.write_all(payload.to_string().as_bytes()).await;
            let _ = stdin.shutdown().await;
        };
        let stdout = tail(child.stdout.take().expect("stdout is piped"), STDOUT_KEEP);
        let stderr = tail(child.stderr.take().expect("stderr is piped"), STDERR_KEEP);
        // A cancel asks the whole process group to stop (SIGTERM); the
        // lifecycle kills it (SIGKILL, on drop) if it has not after the grace.
        let pgid = guard.pgid;
        let terminate = async {
            job.cancelled().await;
            if let Some(pgid) = pgid {
                // SAFETY: signals a process group this handler created.
                unsafe { libc::kill(-pgid, libc::SIGTERM) };
            }
            std::future::pending::<()>().await
        };
        let (_, stdout, stderr, status) = tokio::select! {
            ended = async { tokio::join!(feed, stdout, stderr, child.wait()) } => ended,
            _ = terminate => unreachable!("never resolves"),
        };
        guard.pgid = None;

        let status = match status {
            Ok(status) => status,
            Err(e) => {
                return JobResult::failed(
                    "job.wait_failed",
                    format!("waiting for the job process: {e}"),
                );
            }
        };
        let result = match parse_result(&stdout) {
            Ok(result) => result,
            Err(message) => return JobResult::failed("job.bad_result", message),
        };
        if status.success() {
            return JobResult::Finished(match result {
                Some(r) => JobReport {
                    outcome: r.outcome,
                    summary_counts: r.summary_counts,
                    failures: r.failures,
                },
                None => JobReport::default(),
            });
        }
        let how = match (
            status.code(),
            std::os::unix::process::ExitStatusExt::signal(&status),
        ) {
            (Some(code), _) => format!("exited with status {code}"),
            (None, Some(signal)) => format!("was killed by signal {signal}"),
            _ => "failed".to_string(),
        };
        // Redacted whole, then cut: a secret is never split by the cut.
        let stderr = opsrun::sanitize::redact_tail(&String::from_utf8_lossy(&stderr), STDERR_TAIL);
        let message = match stderr.trim() {
            "" => format!("the job {how}"),
            tail => format!("the job {how}: {tail}"),
        };
        if status.code() == Some(EXIT_RETRY) {
            let delay = result
                .as_ref()
                .and_then(|r| r.retry_after_seconds)
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(|s| std::time::Duration::from_secs_f64(s.min(86_400.0)));
            let message = match stderr.trim() {
                "" => "the job asked to be retried (exit 75)".to_string(),
                tail => tail.to_string(),
            };
            return JobResult::Retry {
                code: "job.retry".into(),
                message,
                delay,
            };
        }
        let mut report = result
            .map(|r| JobReport {
                outcome: None,
                summary_counts: r.summary_counts,
                failures: r.failures,
            })
            .unwrap_or_default();
        report
            .failures
            .push(opsrun::sanitize::failure("job.exit_nonzero", &message));
        // A non-zero exit fails the run whatever the result line said.
        report.outcome = Some(Outcome::Failed);
        JobResult::Finished(report)
    }
}

/// Read a stream to its end, keeping only its last `keep` bytes; once
/// bytes were dropped, from the start of a line (a line cut in the middle
/// is the part of a secret the redaction could not recognise).
async fn tail(mut reader: impl AsyncRead + Unpin, keep: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut dropped = false;
    let mut chunk = vec![0u8; 16 * 1024];
    while let Ok(n) = reader.read(&mut chunk).await {
        if n == 0 {
            break;
        }
        kept.extend_from_slice(&chunk[..n]);
        if kept.len() > keep * 2 {
            kept.drain(..kept.len() - keep);
            dropped = true;
        }
    }
    let cut = dropped || kept.len() > keep;
    if kept.len() > keep {
        kept.drain(..kept.len() - keep);
    }
    if cut {
        let line_start = kept
            .iter()
            .position(|b| *b == b'\n')
            .map_or(kept.len(), |i| i + 1);
        kept.drain(..line_start);
    }
    kept
}

/// The result line, if the last non-empty stdout line is a JSON object.
/// A line that is JSON but not a valid result is an error naming why.
fn parse_result(stdout: &[u8]) -> Result<Option<ExecResult>, String> {
    let text = String::from_utf8_lossy(stdout);
    let Some(line) = text.lines().map(str::trim).rfind(|l| !l.is_empty()) else {
        return Ok(None);
    };
    if !line.starts_with('{') {
        return Ok(None);
    }
    match serde_json::from_str::<serde_json::Value>(line) {
        Err(_) => Ok(None),
        Ok(value) => serde_json::from_value::<ExecResult>(value)
            .map(Some)
            .map_err(|e| format!("the job's result line is not a valid result: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_lines_are_found_and_checked() {
        assert!(parse_result(b"").unwrap().is_none());
        assert!(parse_result(b"hello\nworld\n").unwrap().is_none());
        let r = parse_result(
            b"log line\n{\"summary_counts\":{\"total\":3,\"success\":2,\"failed\":1}}\n\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.summary_counts.failed, 1);
        assert!(r.outcome.is_none());
        let r = parse_result(b"{\"outcome\":\"partially_succeeded\",\"failures\":[{\"code\":\"a.b\",\"message\":\"m\"}]}").unwrap().unwrap();
        assert_eq!(r.outcome, Some(Outcome::PartiallySucceeded));
        assert_eq!(r.failures[0].count, 1);
        assert!(parse_result(b"{\"outcome\":\"great\"}").is_err());
        assert!(parse_result(b"{\"sumary_counts\":{}}").is_err());
        assert!(parse_result(b"{not json").unwrap().is_none());
    }
}
