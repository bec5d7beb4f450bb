//! Group commit of terminal writes: jobs that finish around the same time
//! have their fenced completions written by one statement. A job hands its
//! completion over and waits for its own answer. No timer: a batch is
//! whatever piled up while the previous statement was committing, so a lone
//! completion is written at once and batches grow with the load.

use tokio::sync::{mpsc, oneshot};

use super::batch::next_batch;
use crate::error::{Error, Result};
use crate::ledger::{Claim, Ledger, Session, Terminal};
use crate::run::{Failure, Outcome, RunId, SummaryCounts};
use crate::sanitize;

/// Most completions written by one statement.
pub const MAX_BATCH: usize = 256;

/// One completion waiting to be written.
struct Pending {
    tenant_id: i64,
    run_id: RunId,
    holder: String,
    attempt: i32,
    outcome: Outcome,
    counts: SummaryCounts,
    failures: Vec<Failure>,
    reply: oneshot::Sender<Result<Option<Written>>>,
}

/// A completion written: the outcome (the job's, or `failed` when
/// Postgres refused the job's result), and whether runs wait for a
/// concurrency slot of the run's key.
pub type Written = (Outcome, bool);

/// Hands completions to the batching task.
#[derive(Clone)]
pub struct Completer {
    tx: mpsc::Sender<Pending>,
}

impl Completer {
    /// Start the batching task over `ledger`; it ends when every handle is dropped.
    pub fn start(ledger: Ledger) -> Completer {
        let (tx, rx) = mpsc::channel(MAX_BATCH * 4);
        tokio::spawn(flush_loop(ledger, rx));
        Completer { tx }
    }

    /// Write `terminal` fenced on `claim`, together with whatever else is
    /// completing now. Returns what was written (see [`Written`]; the
    /// outcome is `failed` with `ledger.write_rejected` when Postgres refused
    /// the job's result), or `None` when the claim was lost. An error means nothing was written
    /// (Postgres unreachable, say) and the call may be retried.
    pub async fn complete(
        &self,
        claim: &Claim<'_>,
        terminal: Terminal<'_>,
    ) -> Result<Option<Written>> {
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            tenant_id: claim.tenant_id,
            run_id: claim.run_id,
            holder: claim.holder.to_string(),
            attempt: claim.attempt,
            outcome: terminal.outcome,
            counts: *terminal.counts,
            failures: terminal.failures.to_vec(),
            reply,
        };
        let gone = || Error::invalid("completer", "the completion task has stopped");
        self.tx.send(pending).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

impl Pending {
    fn row(&self) -> (Claim<'_>, Terminal<'_>) {
        (
            Claim {
                tenant_id: self.tenant_id,
                run_id: self.run_id,
                holder: &self.holder,
                attempt: self.attempt,
            },
            Terminal {
                outcome: self.outcome,
                counts: &self.counts,
                failures: &self.failures,
                reclaim: None,
            },
        )
    }
}

async fn flush_loop(ledger: Ledger, mut rx: mpsc::Receiver<Pending>) {
    let mut session = ledger.session();
    while let Some(batch) = next_batch(&mut rx, MAX_BATCH).await {
        let rows: Vec<(Claim<'_>, Terminal<'_>)> = batch.iter().map(Pending::row).collect();
        let written = session.complete_many(&rows).await;
        drop(rows);
        match written {
            Ok(completed) => {
                crate::telemetry::completion_statement(completed.len());
                let written: std::collections::HashMap<RunId, bool> = completed
                    .into_iter()
                    .map(|c| (c.run_id, c.slot_waiters))
                    .collect();
                for p in batch {
                    let outcome = written.get(&p.run_id).map(|waiters| (p.outcome, *waiters));
                    let _ = p.reply.send(Ok(outcome));
                }
            }
            Err(e) if e.is_retryable() => {
                for p in batch {
                    let _ = p.reply.send(Err(e.for_batch_member()));
                }
            }
            // Postgres refused the statement because of some row's values:
            // write the rows one by one, so only the bad one is affected.
            Err(e) => {
                tracing::warn!(runs = batch.len(), error = %e, "a grouped completion was refused; writing its runs one by one");
                for p in batch {
                    let written = complete_alone(&mut session, &p).await;
                    let _ = p.reply.send(written);
                }
            }
        }
    }
}

/// Write one completion on its own. When Postgres refuses this run's result,
/// the run still ends: `failed`, with a failure saying its result could not
/// be stored and why.
async fn complete_alone(session: &mut Session, p: &Pending) -> Result<Option<Written>> {
    let written = |completed: Vec<crate::ledger::Completed>, outcome: Outcome| {
        completed
            .iter()
            .find(|c| c.run_id == p.run_id)
            .map(|c| (outcome, c.slot_waiters))
    };
    let refused = match session.complete_many(&[p.row()]).await {
        Ok(completed) => return Ok(written(completed, p.outcome)),
        Err(e) if e.is_retryable() => return Err(e),
        Err(e) => e,
    };
    tracing::error!(run_id = %p.run_id, tenant_id = p.tenant_id, error = %refused, "the job's result was refused by Postgres; failing the run");
    let failures = [sanitize::failure(
        "ledger.write_rejected",
        &format!("the job's result could not be stored: {refused}"),
    )];
    let (claim, _) = p.row();
    let substitute = Terminal {
        outcome: Outcome::Failed,
        counts: &SummaryCounts::default(),
        failures: &failures,
        reclaim: None,
    };
    let completed = session.complete_many(&[(claim, substitute)]).await?;
    Ok(written(completed, Outcome::Failed))
}
