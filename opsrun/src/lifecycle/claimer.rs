//! Group commit of claims: reads that arrive while a claim statement is in
//! flight are claimed together by the next one, so a worker keeps reading
//! while Postgres commits, and claim batches grow with the load. No timer:
//! a lone read is claimed at once.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::batch::next_batch;
use crate::concurrency::credits::Credits;
use crate::error::{Error, Result};
use crate::ledger::{ClaimRequest, Ledger, Session};
use crate::run::{Run, RunId};

/// Most reads claimed by one statement (each read is at most a few dozen entries).
const MAX_READS: usize = 16;

struct Pending {
    requests: Vec<ClaimRequest>,
    reply: oneshot::Sender<Result<Vec<Run>>>,
}

/// Hands claims to the batching task.
#[derive(Clone)]
pub(super) struct Claimer {
    tx: mpsc::Sender<Pending>,
}

impl Claimer {
    /// Start the batching task claiming for `holder` (against `credits`
    /// when given); it ends when every handle is dropped.
    pub(super) fn start(ledger: Ledger, holder: String, credits: Option<Arc<Credits>>) -> Claimer {
        let (tx, rx) = mpsc::channel(MAX_READS * 4);
        let mut session = ledger.session();
        if let Some(credits) = credits {
            session = session.with_credits(credits);
        }
        tokio::spawn(flush_loop(session, holder, rx));
        Claimer { tx }
    }

    /// Claim `requests` together with whatever else is being claimed now;
    /// returns the runs claimed for these requests. An error means the
    /// statement was not committed and may be retried.
    pub(super) async fn claim(&self, requests: Vec<ClaimRequest>) -> Result<Vec<Run>> {
        let (reply, answer) = oneshot::channel();
        let gone = || Error::invalid("claimer", "the claim task has stopped");
        self.tx
            .send(Pending { requests, reply })
            .await
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

async fn flush_loop(mut session: Session, holder: String, mut rx: mpsc::Receiver<Pending>) {
    while let Some(batch) = next_batch(&mut rx, MAX_READS).await {
        let all: Vec<ClaimRequest> = batch
            .iter()
            .flat_map(|p| p.requests.iter().cloned())
            .collect();
        match session.mark_running_many(&all, &holder).await {
            Ok(runs) => {
                crate::telemetry::claim_statement(runs.len());
                // A run listed by two reads (a duplicate entry) goes to the first.
                let mut runs: HashMap<RunId, Run> = runs.into_iter().map(|r| (r.id, r)).collect();
                for p in batch {
                    let mine = p
                        .requests
                        .iter()
                        .filter_map(|r| runs.remove(&r.run_id))
                        .collect();
                    let _ = p.reply.send(Ok(mine));
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
