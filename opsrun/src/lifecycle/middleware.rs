//! User middleware around handlers (tracing, metrics, limits). The lifecycle
//! itself (claim, heartbeat, time limit, fenced completion, ack) wraps the
//! whole stack, so a middleware can neither skip nor duplicate it.

use std::sync::Arc;

use async_trait::async_trait;

use super::handler::{Handler, Job, JobResult};

/// A layer around the handler; call `next.run(job)` to continue.
#[async_trait]
pub trait Middleware: Send + Sync + 'static {
    /// Handle `job`, usually by delegating to `next`.
    async fn call(&self, job: Job, next: Next<'_>) -> JobResult;
}

/// The rest of the stack after a middleware.
pub struct Next<'a> {
    pub(crate) rest: &'a [Arc<dyn Middleware>],
    pub(crate) handler: &'a dyn Handler,
}

impl Next<'_> {
    /// Run the remaining middleware and then the handler.
    pub async fn run(self, job: Job) -> JobResult {
        match self.rest.split_first() {
            Some((first, rest)) => {
                first
                    .call(
                        job,
                        Next {
                            rest,
                            handler: self.handler,
                        },
                    )
                    .await
            }
            None => self.handler.handle(job).await,
        }
    }
}
