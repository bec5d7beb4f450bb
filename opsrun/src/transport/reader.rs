//! A blocking consumer-group reader for one queue, on a connection of its
//! own: redis-rs's default 500 ms response timeout would cut BLOCK short, and
//! a blocked connection stalls every command multiplexed behind it.

use std::time::Duration;

use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamReadOptions, StreamReadReply};

use super::{Delivery, Entry, GROUP, Keys};
use crate::error::{Error, Result};

/// Reads new entries of one queue for one consumer.
pub struct StreamReader {
    client: redis::Client,
    keys: Keys,
    queue: String,
    consumer: String,
    connection: Option<MultiplexedConnection>,
}

impl StreamReader {
    pub(super) fn new(client: redis::Client, keys: Keys, queue: &str, consumer: &str) -> Self {
        StreamReader {
            client,
            keys,
            queue: queue.to_string(),
            consumer: consumer.to_string(),
            connection: None,
        }
    }

    /// The queue this reader consumes.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// Wait up to `block` for at most `count` new entries. On any error the
    /// connection is dropped (a timed-out BLOCK may still be pending on it)
    /// and the next call reconnects; a missing group or stream (Redis
    /// restarted without data) is recreated from id `0` before returning.
    pub async fn read(&mut self, count: usize, block: Duration) -> Result<Vec<Delivery>> {
        let stream = self.keys.queue_stream(&self.queue);
        let operation = || format!("reading stream {stream}");
        let connection = match self.connection.as_mut() {
            Some(c) => c,
            None => {
                // A margin above BLOCK: the server may answer late (redis#12998).
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(3)))
                    .set_response_timeout(Some(block + Duration::from_secs(5)));
                let c = self
                    .client
                    .get_multiplexed_async_connection_with_config(&config)
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
        let reply: redis::RedisResult<Option<StreamReadReply>> =
            redis::AsyncCommands::xread_options(connection, &[&stream], &[">"], &options).await;
        match reply {
            Ok(reply) => Ok(self.deliveries(reply)),
            Err(source) => {
                self.connection = None;
                if matches!(source.code(), Some("NOGROUP") | Some("UNBLOCKED")) {
                    self.recreate_group(&stream).await?;
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
                queue: self.queue.clone(),
                entry: Entry::from_stream_id(&item),
                entry_id: item.id,
            })
            .collect()
    }

    async fn recreate_group(&self, stream: &str) -> Result<()> {
        let operation = || format!("recreating group {GROUP} on stream {stream}");
        let mut conn = self
            .client
            .get_multiplexed_async_connection()
            .await
            .map_err(|source| Error::Redis {
                operation: operation(),
                source,
            })?;
        let created: redis::RedisResult<()> =
            redis::AsyncCommands::xgroup_create_mkstream(&mut conn, stream, GROUP, "0").await;
        match created {
            Err(e) if e.code() != Some("BUSYGROUP") => Err(Error::Redis {
                operation: operation(),
                source: e,
            }),
            _ => {
                tracing::warn!(queue = %self.queue, "consumer group was missing (redis restarted?); recreated from id 0");
                Ok(())
            }
        }
    }
}
