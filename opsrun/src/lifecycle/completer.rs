//! Group commit of terminal writes: jobs that finish around the same time
//! have their fenced completions written by one statement. A job hands its
//! completion over and waits for its own answer. No timer: a batch is
//! whatever piled up while the previous statement was committing, so a lone
//! completion is written at once and batches grow with the load.

use tokio::sync::{mpsc, oneshot};

use super::batch::next_batch;
use crate::error::{Error, Result};
use crate::ledger::{Claim, Ledger, Terminal};
use crate::run::{Failure, Outcome, RunId, SummaryCounts};

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
    reply: oneshot::Sender<Result<bool>>,
}

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
    /// completing now. `false`: the claim was lost. An error means the batch
    /// was not written (Postgres unreachable, say) and may be retried.
    pub async fn complete(&self, claim: &Claim<'_>, terminal: Terminal<'_>) -> Result<bool> {
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

async fn flush_loop(ledger: Ledger, mut rx: mpsc::Receiver<Pending>) {
    let mut session = ledger.session();
    while let Some(batch) = next_batch(&mut rx, MAX_BATCH).await {
        let rows: Vec<(Claim<'_>, Terminal<'_>)> = batch
            .iter()
            .map(|p| {
                (
                    Claim {
                        tenant_id: p.tenant_id,
                        run_id: p.run_id,
                        holder: &p.holder,
                        attempt: p.attempt,
                    },
                    Terminal {
                        outcome: p.outcome,
                        counts: &p.counts,
                        failures: &p.failures,
                        reclaim: None,
                    },
                )
            })
            .collect();
        let written = session.complete_many(&rows).await;
        drop(rows);
        match written {
            Ok(ids) => {
                let written: std::collections::HashSet<RunId> = ids.into_iter().collect();
                for p in batch {
                    let _ = p.reply.send(Ok(written.contains(&p.run_id)));
                }
            }
            Err(e) => {
                for p in batch {
                    let _ = p.reply.send(Err(e.for_batch_member()));
                }
            }
        }
    }
}
