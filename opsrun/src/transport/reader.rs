//! A blocking consumer-group reader for one queue stream, on a connection of its
//! own: redis-rs's default 500 ms response timeout would cut BLOCK short, and
//! a blocked connection stalls every command multiplexed behind it (on a
//! cluster, every command for that node).

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
    connection: Option<ReadConnection>,
}

impl StreamReader {
    pub(super) fn new(transport: Transport, stream: QueueStream, consumer: &str) -> Self {
        StreamReader {
            transport,
            stream,
            consumer: consumer.to_string(),
            connection: None,
        }
    }

    /// The stream this reader consumes.
    pub fn stream(&self) -> &QueueStream {
        &self.stream
    }

    /// Wait up to `block` for at most `count` new entries. On any error the
    /// connection is dropped (a timed-out BLOCK may still be pending on it)
    /// and the next call reconnects; a missing group or stream (Redis
    /// restarted without data) is recreated from id `0` before returning.
    pub async fn read(&mut self, count: usize, block: Duration) -> Result<Vec<Delivery>> {
        let stream = self.transport.keys.queue_stream(&self.stream);
        let operation = || format!("reading stream {stream}");
        let connection = match self.connection.as_mut() {
            Some(c) => c,
            None => {
                let c = self
                    .transport
                    .backend
                    .read_connection(block)
                    .await
                    .map_err(|source| Error::Redis {
                        operation: operation(),
                        source,
                    })?;
                self.connection.insert(c)
            }
        };
        let options = StreamReadOptions::default()
            .group(GROUP, &self.consumer)
            .count(count.max(1))
            .block(block.as_millis() as usize);
        // XREADGROUP names one stream: one key, one slot.
        let keys = [&stream];
        let reply: redis::RedisResult<Option<StreamReadReply>> = match connection {
            ReadConnection::Single(c) => {
                redis::AsyncCommands::xread_options(c, &keys, &[">"], &options).await
            }
            ReadConnection::Cluster(c) => {
                redis::AsyncCommands::xread_options(c, &keys, &[">"], &options).await
            }
        };
        match reply {
            Ok(reply) => Ok(self.deliveries(reply)),
            Err(source) => {
                self.connection = None;
                if matches!(source.code(), Some("NOGROUP") | Some("UNBLOCKED")) {
                    self.transport.ensure_group(&self.stream).await?;
                    tracing::warn!(stream = %self.stream, "consumer group was missing (redis restarted?); recreated from id 0");
                }
                Err(Error::Redis {
                    operation: operation(),
                    source,
                })
            }
        }
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
