//! Writing to streams: dispatching runs (XADD, grouped per stream so that
//! no command spans two keys), creating consumer groups, acknowledging, and
//! dead-lettering.

use super::{Entry, GROUP, QueueStream, Request, Transport};
use crate::error::{Error, Result};

impl Transport {
    /// XADD an entry to `stream`; returns the entry id. An error (notably
    /// a timeout) does not prove the entry was not added: a late XADD is
    /// harmless because the claim checks the row's status.
    pub async fn publish(&self, stream: &QueueStream, entry: &Entry) -> Result<String> {
        self.publish_many(&[(stream, entry.clone())])
            .await
            .pop()
            .unwrap_or_else(|| Err(Error::invalid("redis", "XADD returned no entry id")))
    }

    /// XADD many entries; returns each one's id or error, in order. Entries
    /// are sent as one pipeline per stream (a pipeline never spans two
    /// keys, so each may go to its own cluster node), the streams' pipelines
    /// at once. A stream's error is its entries' error only; any of them
    /// may still have been added (a late entry is harmless).
    pub async fn publish_many(&self, entries: &[(&QueueStream, Entry)]) -> Vec<Result<String>> {
        let mut by_stream: Vec<(&QueueStream, Vec<usize>)> = Vec::new();
        for (i, (stream, _)) in entries.iter().enumerate() {
            match by_stream.iter_mut().find(|(s, _)| s == stream) {
                Some((_, members)) => members.push(i),
                None => by_stream.push((stream, vec![i])),
            }
        }
        let sent = futures::future::join_all(by_stream.iter().map(|(stream, members)| {
            let stream = self.keys.queue_stream(stream);
            let mut pipe = redis::pipe();
            for &i in members {
                let mut xadd = redis::cmd("XADD");
                xadd.arg(&stream).arg("*");
                entries[i].1.add_fields(&mut xadd);
                pipe.add_command(xadd);
            }
            async move {
                let operation = || format!("publishing to stream {stream}");
                self.with_connection::<Vec<String>>(operation, Request::Pipeline(&pipe))
                    .await
            }
        }))
        .await;
        let mut ids: Vec<Option<Result<String>>> = entries.iter().map(|_| None).collect();
        for ((_, members), sent) in by_stream.iter().zip(sent) {
            match sent {
                Ok(stream_ids) => {
                    for (&i, id) in members.iter().zip(stream_ids) {
                        ids[i] = Some(Ok(id));
                    }
                }
                Err(e) => {
                    for &i in members {
                        ids[i] = Some(Err(e.for_batch_member()));
                    }
                }
            }
        }
        ids.into_iter()
            .map(|id| {
                id.unwrap_or_else(|| Err(Error::invalid("redis", "XADD returned no entry id")))
            })
            .collect()
    }

    /// Create the consumer group of `stream` (and the stream) if missing.
    /// Starts from id `0`, never `$`: entries added before the group existed
    /// (e.g. after Redis restarted empty) must still be delivered.
    pub async fn ensure_group(&self, stream: &QueueStream) -> Result<()> {
        let stream = self.keys.queue_stream(stream);
        let mut cmd = redis::cmd("XGROUP");
        cmd.arg("CREATE")
            .arg(&stream)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM");
        match self
            .run::<()>(
                || format!("creating group {GROUP} on stream {stream}"),
                &cmd,
            )
            .await
        {
            Err(Error::Redis { source, .. }) if source.code() == Some("BUSYGROUP") => Ok(()),
            other => other,
        }
    }

    /// XACK entries of `stream`. Only after the run's state is committed.
    pub async fn ack(&self, stream: &QueueStream, entry_ids: &[&str]) -> Result<usize> {
        if entry_ids.is_empty() {
            return Ok(0);
        }
        let stream = self.keys.queue_stream(stream);
        let mut cmd = redis::cmd("XACK");
        cmd.arg(&stream).arg(GROUP).arg(entry_ids);
        self.run(|| format!("acknowledging on stream {stream}"), &cmd)
            .await
    }

    /// Copy an entry to `queue`'s dead-letter stream (one per queue, whatever
    /// its shards) with why it was given up. Done before the
    /// acknowledgement, so a crash in between leaves a duplicate dead
    /// letter, never a lost one.
    pub async fn dead_letter(
        &self,
        queue: &str,
        entry_id: &str,
        entry: Option<&Entry>,
        reason: &str,
    ) -> Result<String> {
        let stream = self.keys.dead_stream(queue);
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&stream)
            .arg("*")
            .arg("entry_id")
            .arg(entry_id)
            .arg("reason")
            .arg(reason);
        if let Some(e) = entry {
            e.add_fields(&mut cmd);
        }
        self.run(|| format!("dead-lettering to stream {stream}"), &cmd)
            .await
    }
}

impl Entry {
    /// Append the entry's fields to an XADD.
    fn add_fields(&self, cmd: &mut redis::Cmd) {
        cmd.arg("run_id")
            .arg(self.run_id.0)
            .arg("tenant_id")
            .arg(self.tenant_id)
            .arg("type")
            .arg(&self.run_type)
            .arg("attempt")
            .arg(self.attempt);
        if let Some(digest) = &self.concurrency_key_digest {
            cmd.arg("concurrency_key_digest").arg(digest);
        }
    }
}
