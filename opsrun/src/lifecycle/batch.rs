//! Natural batching, shared by group commit and batched XACKs: wait for one
//! item, then take whatever else has piled up (at most `max`), with no
//! timer. While one batch is being written the next one gathers, so batches
//! grow with the load and a lone item goes at once.

use tokio::sync::mpsc;

/// The next batch from `rx`; `None` once every sender is gone.
pub(crate) async fn next_batch<T>(rx: &mut mpsc::Receiver<T>, max: usize) -> Option<Vec<T>> {
    let first = rx.recv().await?;
    let mut batch = vec![first];
    while batch.len() < max {
        match rx.try_recv() {
            Ok(item) => batch.push(item),
            Err(_) => break,
        }
    }
    Some(batch)
}
