//! Batched acknowledgements: entries whose runs are settled in Postgres are
//! XACKed together, one XACK per stream for whatever piled up while the
//! previous one was in flight (no timer: a lone ack goes at once). A job's
//! task waits for its own ack, so a worker that waits for its tasks when it
//! drains leaves nothing pending.

use std::collections::BTreeMap;

use tokio::sync::{mpsc, oneshot};

use super::batch::next_batch;
use crate::transport::{QueueStream, Transport};

/// Most entries acknowledged by one round of XACKs.
pub const MAX_BATCH: usize = 512;

struct Pending {
    stream: QueueStream,
    entry_id: String,
    done: oneshot::Sender<()>,
}

/// Hands acknowledgements to the batching task.
#[derive(Clone)]
pub struct Acker {
    tx: mpsc::Sender<Pending>,
}

impl Acker {
    /// Start the batching task over `transport`; it ends when every handle is dropped.
    pub fn start(transport: Transport) -> Acker {
        let (tx, rx) = mpsc::channel(MAX_BATCH);
        tokio::spawn(flush_loop(transport, rx));
        Acker { tx }
    }

    /// Acknowledge `entry_id` of `queue` with whatever else is being
    /// acknowledged now; returns once its XACK was answered (or failed: a
    /// stale pending entry is only a hint, the reaper clears it).
    pub async fn ack(&self, stream: &QueueStream, entry_id: &str) {
        let (done, answered) = oneshot::channel();
        let pending = Pending {
            stream: stream.clone(),
            entry_id: entry_id.to_string(),
            done,
        };
        if self.tx.send(pending).await.is_ok() {
            let _ = answered.await;
        }
    }
}

async fn flush_loop(transport: Transport, mut rx: mpsc::Receiver<Pending>) {
    while let Some(batch) = next_batch(&mut rx, MAX_BATCH).await {
        let mut by_stream: BTreeMap<&QueueStream, Vec<&str>> = BTreeMap::new();
        for p in &batch {
            by_stream.entry(&p.stream).or_default().push(&p.entry_id);
        }
        for (stream, ids) in by_stream {
            if let Err(e) = transport.ack(stream, &ids).await {
                tracing::warn!(%stream, entries = ids.len(), error = %e, "acknowledge failed; entries stay pending");
            }
        }
        for p in batch {
            let _ = p.done.send(());
        }
    }
}
