//! A consumer-group reader for one queue stream, on a connection of its
//! own: redis-rs's default 500 ms response timeout would cut BLOCK short, and
//! a blocked connection stalls every command multiplexed behind it (on a
//! cluster, every command for that node).
//!
//! Taking entries never blocks: a worker takes only as many as it has free
//! job slots, and a reader that waited for entries while holding slots would
//! keep them from the worker's other streams (an idle shard would sit on the
//! slots a busy one could use). Waiting is separate ([`StreamReader::wait`])
//! and holds no slot.

use std::time::Duration;

use redis::streams::{StreamReadOptions, StreamReadReply};

use super::connect::ReadConnection;
use super::{Delivery, Entry, GROUP, QueueStream, Transport};
use crate::error::{Error, Result};

/// Reads new entries of one queue stream for one consumer.
pub struct StreamReader {
    transport: Transport,
    stream: QueueStream,
    consumer: String,
    block: Duration,
    connection: Option<ReadConnection>,
}

impl StreamReader {
    pub(super) fn new(
        transport: Transport,
        stream: QueueStream,
        consumer: &str,
        block: Duration,
    ) -> Self {
        StreamReader {
            transport,
            stream,
            consumer: consumer.to_string(),
            block,
            connection: None,
        }
    }

    /// The stream this reader consumes.
    pub fn stream(&self) -> &QueueStream {
        &self.stream
    }

    /// Take at most `count` entries not yet delivered to the group, without
    /// waiting. On any error the connection is dropped and the next call
    /// reconnects; a missing group or stream (Redis restarted without data)
    /// is recreated from id `0` before returning.
    pub async fn read(&mut self, count: usize) -> Result<Vec<Delivery>> {
        let options = StreamReadOptions::default()
            .group(GROUP, &self.consumer)
            .count(count.max(1));
        match self.xread(">", &options).await {
            Ok(reply) => Ok(self.deliveries(reply)),
            Err(Error::Redis { source, operation })
                if matches!(source.code(), Some("NOGROUP") | Some("UNBLOCKED")) =>
            {
                self.transport.ensure_group(&self.stream).await?;
                tracing::warn!(stream = %self.stream, "consumer group was missing (redis restarted?); recreated from id 0");
                Err(Error::Redis { source, operation })
            }
            Err(e) => Err(e),
        }
    }

    /// Wait up to the reader's BLOCK time until the stream holds an entry
    /// not yet delivered to the group, without taking it: a plain XREAD
    /// from the group's last-delivered id, which answers at once when such
    /// an entry already exists (so none added since the last [`read`] is
    /// missed) and otherwise when one is added.
    ///
    /// [`read`]: StreamReader::read
    pub async fn wait(&mut self) -> Result<()> {
        let Some(last_delivered) = self.transport.last_delivered(&self.stream).await? else {
            self.transport.ensure_group(&self.stream).await?;
            return Ok(());
        };
        let options = StreamReadOptions::default()
            .count(1)
            .block(self.block.as_millis().max(1) as usize);
        self.xread(&last_delivered, &options).await.map(drop)
    }

    /// One XREAD or XREADGROUP of this reader's stream from `id`.
    async fn xread(
        &mut self,
        id: &str,
        options: &StreamReadOptions,
    ) -> Result<Option<StreamReadReply>> {
        let stream = self.transport.keys.queue_stream(&self.stream);
        let operation = || format!("reading stream {stream}");
        let connection = match self.connection.as_mut() {
            Some(c) => c,
            None => {
                let c = self
                    .transport
                    .backend
                    .read_connection(self.block)
                    .await
                    .map_err(|source| Error::Redis {
                        operation: operation(),
                        source,
                    })?;
                self.connection.insert(c)
            }
        };
        // One stream per read: one key, one slot.
        let keys = [&stream];
        let reply: redis::RedisResult<Option<StreamReadReply>> = match connection {
            ReadConnection::Single(c) => {
                redis::AsyncCommands::xread_options(c, &keys, &[id], options).await
            }
            ReadConnection::Cluster(c) => {
                redis::AsyncCommands::xread_options(c, &keys, &[id], options).await
            }
        };
        reply.map_err(|source| {
            // A timed-out BLOCK may still be pending on the connection.
            self.connection = None;
            Error::Redis {
                operation: operation(),
                source,
            }
        })
    }

    fn deliveries(&self, reply: Option<StreamReadReply>) -> Vec<Delivery> {
        reply
            .into_iter()
            .flat_map(|r| r.keys)
            .flat_map(|key| key.ids)
            .map(|item| Delivery {
                stream: self.stream.clone(),
                entry: Entry::from_stream_id(&item),
                entry_id: item.id,
            })
            .collect()
    }
}
