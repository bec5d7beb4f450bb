//! Slots freed, waiters woken: when a run of a limited type stops running
//! (completed, or queued for a retry), the runs waiting for a slot of its
//! key are woken and sent again (see [`crate::concurrency`]). Keys freed
//! while a wake is in flight share the next one (no timer). A job's task
//! does not wait for it: the result is written already, and a wake that
//! fails is done by the reaper's due pass within a second or so.

use std::collections::BTreeSet;

use tokio::sync::mpsc;

use super::batch::next_batch;
use crate::ledger::Ledger;
use crate::transport::Transport;

/// Most keys woken by one statement.
const MAX_KEYS: usize = 256;

/// Hands freed keys to the waking task.
#[derive(Clone)]
pub(super) struct Waker {
    tx: mpsc::Sender<String>,
}

impl Waker {
    /// Start the waking task; it ends when every handle is dropped.
    pub(super) fn start(ledger: Ledger, transport: Transport) -> Waker {
        let (tx, rx) = mpsc::channel(MAX_KEYS * 4);
        tokio::spawn(wake_loop(ledger, transport, rx));
        Waker { tx }
    }

    /// A slot of `key` was freed.
    pub(super) async fn freed(&self, key: &str) {
        let _ = self.tx.send(key.to_string()).await;
    }
}

async fn wake_loop(ledger: Ledger, transport: Transport, mut rx: mpsc::Receiver<String>) {
    while let Some(batch) = next_batch(&mut rx, MAX_KEYS).await {
        let keys: Vec<String> = batch
            .into_iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if let Err(e) = crate::concurrency::wake(&ledger, &transport, Some(&keys)).await {
            tracing::warn!(keys = keys.len(), error = %e, "waking runs waiting for a slot failed; the reaper's due pass will");
        }
    }
}
