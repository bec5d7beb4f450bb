//! Slots freed, waiters woken: when a run of a limited type stops running
//! (completed, or queued for a retry), the runs waiting for a slot of its
//! key are woken and sent again (see [`crate::concurrency`]). Keys freed
//! while a wake is in flight share the next one (no timer). A job's task
//! does not wait for it: the result is written already, and a wake that
//! fails is done by the reaper's due pass within a second or so.
//!
//! A worker with slot credits gives back the unused ones of the keys it is
//! told have waiters before it wakes them: the wake can then use them.
//! Its credits are renewed here too, every second, and those of keys it
//! has not claimed from lately given back.

use std::collections::BTreeSet;
use std::sync::{Arc, Weak};

use tokio::sync::mpsc;

use super::batch::next_batch;
use crate::concurrency::credits::{Credits, RENEW_EVERY};
use crate::ledger::{GiveBack, Ledger};
use crate::transport::Transport;

/// Most keys woken by one statement.
const MAX_KEYS: usize = 256;

/// Hands freed keys to the waking task.
#[derive(Clone)]
pub(super) struct Waker {
    tx: mpsc::Sender<String>,
}

impl Waker {
    /// Start the waking task (giving back unused `credits` of the keys
    /// first); it ends when every handle is dropped.
    pub(super) fn start(
        ledger: Ledger,
        transport: Transport,
        credits: Option<Arc<Credits>>,
    ) -> Waker {
        let (tx, rx) = mpsc::channel(MAX_KEYS * 4);
        tokio::spawn(wake_loop(ledger, transport, credits, rx));
        Waker { tx }
    }

    /// A slot of `key` was freed.
    pub(super) async fn freed(&self, key: &str) {
        let _ = self.tx.send(key.to_string()).await;
    }
}

async fn wake_loop(
    ledger: Ledger,
    transport: Transport,
    credits: Option<Arc<Credits>>,
    mut rx: mpsc::Receiver<String>,
) {
    while let Some(batch) = next_batch(&mut rx, MAX_KEYS).await {
        let keys: Vec<String> = batch
            .into_iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if let Some(credits) = &credits
            && let Err(e) = ledger
                .give_back_credits(credits, GiveBack::Keys(&keys))
                .await
        {
            tracing::warn!(keys = keys.len(), error = %e, "giving back concurrency credits of keys with waiters failed");
        }
        if let Err(e) = crate::concurrency::wake(&ledger, &transport, Some(&keys)).await {
            tracing::warn!(keys = keys.len(), error = %e, "waking runs waiting for a slot failed; the reaper's due pass will");
        }
    }
}

/// Renew the worker's slot credits every [`RENEW_EVERY`] and give back
/// those of keys it has not claimed from lately, until the worker is gone.
pub(super) async fn keep_credits(ledger: Ledger, credits: Weak<Credits>) {
    let mut every = tokio::time::interval(RENEW_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(credits) = credits.upgrade() else {
            return;
        };
        if let Err(e) = ledger.renew_credits(&credits).await {
            tracing::warn!(error = %e, "renewing concurrency credits failed; they expire unless renewed in time");
        }
        if let Err(e) = ledger.give_back_credits(&credits, GiveBack::Idle).await {
            tracing::warn!(error = %e, "giving back idle concurrency credits failed");
        }
    }
}
