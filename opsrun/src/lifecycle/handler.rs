//! What a job is given and what it returns. A job's outcome is not an error:
//! the result variants steer the lifecycle.

use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::run::{Failure, Outcome, Run, SummaryCounts};
use crate::trace::TraceContext;

/// The claimed run a handler executes.
#[derive(Debug, Clone)]
pub struct Job {
    /// The run as claimed: status `running`, `attempt` already counted.
    pub run: Run,
    cancel: CancellationToken,
    trace: Option<TraceContext>,
}

impl Job {
    /// A job for `run`, never cancelled.
    pub fn new(run: Run) -> Job {
        Job {
            run,
            cancel: CancellationToken::new(),
            trace: None,
        }
    }

    /// The same job, run under this W3C trace context.
    pub fn traced(mut self, trace: Option<TraceContext>) -> Job {
        self.trace = trace;
        self
    }

    /// The W3C `traceparent` of the attempt's span (or of the run's stored
    /// context when spans are not exported), for work the job hands on: an
    /// exec job gets it as `TRACEPARENT`. Formatted only when asked for.
    pub fn traceparent(&self) -> Option<String> {
        self.trace.map(|t| t.to_string())
    }

    /// The same job, cancelled when `cancel` is.
    pub fn stopped_by(mut self, cancel: CancellationToken) -> Job {
        self.cancel = cancel;
        self
    }

    /// Resolves when someone asked to cancel the run. A handler that can
    /// stop cleanly selects on it and returns what it did so far (its counts
    /// are kept, the outcome is `cancelled`); one that does not is dropped
    /// after the worker's cancel grace.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }

    /// True once someone asked to cancel the run.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// The job's inputs (a JSON object).
    pub fn inputs(&self) -> &serde_json::Value {
        &self.run.inputs.0
    }
}

/// What a job reports when it ran to the end.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobReport {
    /// Outcome the job chose; derived from counts and failures when `None`.
    pub outcome: Option<Outcome>,
    /// Item counts.
    pub summary_counts: SummaryCounts,
    /// Item failures (sanitized before they are stored).
    pub failures: Vec<Failure>,
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq)]
pub enum JobResult {
    /// The job ran to the end and reports what happened.
    Finished(JobReport),
    /// The attempt failed in a way worth retrying (a throttled remote API,
    /// a timeout upstream): the run goes back to the queue until its type's
    /// attempt limit, after `delay` or the type's exponential backoff.
    Retry {
        /// Stable code such as `graph.throttled`.
        code: String,
        /// Human text; redacted before it is stored.
        message: String,
        /// Delay asked for; `None`: the type's backoff.
        delay: Option<Duration>,
    },
    /// The job failed as a whole, with a stable code and a message
    /// (sanitized before it is stored).
    Failed {
        /// Stable code such as `job.exit_nonzero`.
        code: String,
        /// Human text; may contain secrets, which are redacted.
        message: String,
    },
}

impl JobResult {
    /// A success with no counts.
    pub fn succeeded() -> Self {
        JobResult::Finished(JobReport::default())
    }

    /// A retryable failure, after the type's backoff.
    pub fn retry(code: impl Into<String>, message: impl Into<String>) -> Self {
        JobResult::Retry {
            code: code.into(),
            message: message.into(),
            delay: None,
        }
    }

    /// A whole-job failure.
    pub fn failed(code: impl Into<String>, message: impl Into<String>) -> Self {
        JobResult::Failed {
            code: code.into(),
            message: message.into(),
        }
    }
}

/// Executes jobs of one or more run types.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Run the job. A cancel is signalled first ([`Job::cancelled`]); a
    /// job is otherwise stopped by dropping the future (time limit, lease
    /// lost, shutdown, or a cancel it did not heed within the grace), so
    /// hold resources in types that clean up on drop.
    async fn handle(&self, job: Job) -> JobResult;
}

/// A handler and the limits it runs under, for one run type.
#[derive(Clone)]
pub struct Route {
    /// The handler.
    pub handler: std::sync::Arc<dyn Handler>,
    /// Longest a job may run before it is stopped and fails with `job.timeout`.
    pub time_limit: Duration,
    /// Delay between attempts after a retryable failure.
    pub retry: crate::registry::RetryBackoff,
    /// Time without a heartbeat before the reaper reclaims a run of this type.
    pub lease: Duration,
    /// Runs of one concurrency key running at once (see
    /// [`crate::concurrency`]); `None`: unlimited.
    pub concurrency_limit: Option<u32>,
}

impl Route {
    /// A route for `handler` with the limits `spec` declares.
    pub fn new(handler: std::sync::Arc<dyn Handler>, spec: &crate::registry::TypeSpec) -> Self {
        Route {
            handler,
            time_limit: spec.time_limit,
            retry: spec.retry,
            lease: spec.lease,
            concurrency_limit: spec.concurrency.as_ref().map(|c| c.limit),
        }
    }
}
