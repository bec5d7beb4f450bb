//! Redis Streams: the only place that issues stream commands. A queue has
//! one stream, or `shards` streams when the registry declares it so (see
//! [`QueueStream`] for the key layout); consumer group `workers`; entries
//! carry only `run_id`, `tenant_id`, `type` and `attempt`: Postgres holds
//! the rest. Every command touches one key, so any key may live on any
//! cluster node.
//!
//! This file holds the transport's types and how a command reaches Redis;
//! `publish` writes to streams, `reader` consumes them, `inspect` reads
//! them for the reaper and operators, `pool` keeps the connections.

mod connect;
mod inspect;
mod pool;
mod publish;
mod reader;

use std::time::Duration;

use redis::streams::StreamId;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::run::RunId;
use connect::Backend;

pub use reader::StreamReader;

/// The consumer group every worker joins.
pub const GROUP: &str = "workers";
/// Default key prefix.
pub const DEFAULT_PREFIX: &str = "opsrun";
/// Default limit for one non-blocking command (XADD, XACK, XGROUP).
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Default size of the pool for non-blocking commands.
pub const DEFAULT_POOL_SIZE: usize = 16;

/// Key names under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix` (e.g. `opsrun`).
    pub fn new(prefix: impl Into<String>) -> Self {
        Keys {
            prefix: prefix.into(),
        }
    }

    /// The key of one stream of a queue.
    pub fn queue_stream(&self, stream: &QueueStream) -> String {
        match stream.shard {
            0 => format!("{}:queue:{}", self.prefix, stream.queue),
            k => format!("{}:queue:{{{}:{k}}}", self.prefix, stream.queue),
        }
    }

    /// What every queue stream's key starts with.
    pub fn queue_streams_prefix(&self) -> String {
        format!("{}:queue:", self.prefix)
    }

    /// The stream a queue-stream key names, or `None` for a key that is not
    /// one (not under this prefix, or not a queue name and shard).
    pub fn parse_queue_stream(&self, key: &str) -> Option<QueueStream> {
        let rest = key.strip_prefix(&self.queue_streams_prefix())?;
        let stream = match rest.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
            Some(tagged) => {
                let (queue, digits) = tagged.rsplit_once(':')?;
                let shard: i16 = digits.parse().ok()?;
                // Written as 1 to MAX_SHARDS - 1 in plain digits (shard 0
                // has no tag): any other spelling is not a key of ours.
                if !(1..MAX_SHARDS).contains(&shard) || shard.to_string() != digits {
                    return None;
                }
                QueueStream::new(queue, shard)
            }
            None => QueueStream::new(rest, 0),
        };
        crate::request::validate_queue(&stream.queue).ok()?;
        Some(stream)
    }

    /// The dead-letter stream of `queue`.
    pub fn dead_stream(&self, queue: &str) -> String {
        format!("{}:dead:{queue}", self.prefix)
    }
}

/// Most streams one queue may have.
pub const MAX_SHARDS: i16 = 64;

/// One stream of a queue. Shard 0 is `<prefix>:queue:<queue>`, the queue's
/// only stream when it is not sharded, so declaring shards on a queue in use
/// moves nothing; shard `k` ≥ 1 is `<prefix>:queue:{<queue>:<k>}`, whose hash
/// tag gives each shard its own cluster slot, so a queue's shards spread
/// over the masters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueStream {
    /// The queue.
    pub queue: String,
    /// Which of its streams, from 0.
    pub shard: i16,
}

impl QueueStream {
    /// Shard `shard` of `queue`.
    pub fn new(queue: impl Into<String>, shard: i16) -> Self {
        QueueStream {
            queue: queue.into(),
            shard,
        }
    }

    /// Every stream of `queue` when it has `shards` of them.
    pub fn all(queue: &str, shards: i16) -> impl Iterator<Item = QueueStream> + '_ {
        (0..shards.max(1)).map(move |shard| QueueStream::new(queue, shard))
    }
}

impl From<&str> for QueueStream {
    /// A queue's first stream, its only one when it is not sharded.
    fn from(queue: &str) -> Self {
        QueueStream::new(queue, 0)
    }
}

impl std::fmt::Display for QueueStream {
    /// `inventory` for shard 0, `inventory:3` for shard 3.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.shard {
            0 => f.write_str(&self.queue),
            k => write!(f, "{}:{k}", self.queue),
        }
    }
}

/// The shard a tenant's runs go to when their queue has `shards` streams:
/// the first 8 bytes (big-endian) of SHA-256 of the tenant id's decimal
/// text, modulo `shards`. By tenant, so that one tenant's runs keep their
/// order in one stream and a tenant that starts thousands at once fills its
/// own shard only: workers read every shard in turn, so the other shards'
/// tenants are not queued behind it. Stable across processes and versions
/// (operators may compute it), and moves a tenant only when `shards` changes.
pub fn shard_for(tenant_id: i64, shards: i16) -> i16 {
    if shards <= 1 {
        return 0;
    }
    let digest = Sha256::digest(tenant_id.to_string().as_bytes());
    let head = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
    (head % shards as u64) as i16
}

/// The fields of one stream entry: which run, for which tenant, which attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The run to execute.
    pub run_id: RunId,
    /// Its tenant; checked against the row on claim.
    pub tenant_id: i64,
    /// Its type (informational; the row is authoritative).
    pub run_type: String,
    /// The attempt this dispatch is for (the row's `attempt + 1` when sent).
    pub attempt: i32,
    /// The digest of the run's concurrency key, when its type is limited
    /// ([`crate::concurrency::key_digest`]): a claim counts the run against
    /// its key without reading the run first. A digest, because a key may
    /// hold an input's value and inputs stay in Postgres. The row is
    /// authoritative: a run whose entry names no key or another key waits
    /// for a slot and is sent again with its own.
    pub concurrency_key_digest: Option<String>,
}

impl Entry {
    /// The entry dispatching `run` for its next attempt.
    pub fn next_attempt(run: &crate::run::Run) -> Entry {
        Entry {
            run_id: run.id,
            tenant_id: run.tenant_id,
            run_type: run.run_type.clone(),
            attempt: run.attempt + 1,
            concurrency_key_digest: run
                .concurrency_key
                .as_deref()
                .map(crate::concurrency::key_digest),
        }
    }

    /// The entry's fields, or `None` when one is missing or out of range:
    /// ids are positive and an attempt is at least 1, as the ledger writes
    /// them. Anyone who can XADD can forge an entry, and a value the claim
    /// cannot compute with (`attempt - 1` of `i32::MIN`) must not reach it.
    fn from_stream_id(item: &StreamId) -> Option<Entry> {
        let text = |field: &str| item.get::<String>(field);
        let positive = |value: i64| (value > 0).then_some(value);
        Some(Entry {
            run_id: RunId(positive(text("run_id")?.parse().ok()?)?),
            tenant_id: positive(text("tenant_id")?.parse().ok()?)?,
            run_type: text("type")?,
            attempt: text("attempt")?.parse().ok().filter(|a: &i32| *a >= 1)?,
            concurrency_key_digest: text("concurrency_key_digest"),
        })
    }
}

/// One entry handed to this consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The stream it came from.
    pub stream: QueueStream,
    /// The stream entry id (needed to XACK it).
    pub entry_id: String,
    /// The parsed fields, or `None` when the entry is malformed or its
    /// payload was trimmed away (acknowledge and skip those).
    pub entry: Option<Entry>,
}

/// An entry delivered but not yet acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingEntry {
    /// The stream entry id.
    pub entry_id: String,
    /// The consumer it was delivered to.
    pub consumer: String,
    /// Time since it was last delivered (Redis clock).
    pub idle: Duration,
    /// How many times it was delivered.
    pub deliveries: u64,
}

/// The workers' consumer group on one stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupState {
    /// Consumers that ever read it (live or not).
    pub consumers: u64,
    /// Entries delivered and not acknowledged.
    pub pending: u64,
    /// Entries not yet delivered, when Redis knows (7.0+).
    pub lag: Option<u64>,
}

/// One consumer of the workers' group on a stream (a worker process).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConsumerState {
    /// Its name (`host:pid` for opsrun workers).
    pub name: String,
    /// Entries delivered to it and not acknowledged.
    pub pending: u64,
    /// Milliseconds since it last read or claimed.
    pub idle_ms: u64,
}

/// Where a dispatched entry stands in its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryState {
    /// Gone: trimmed, deleted, or lost with Redis.
    Missing,
    /// In the stream, not yet delivered to any consumer.
    Waiting,
    /// Delivered and not acknowledged.
    Pending {
        /// Time since its last delivery (Redis clock).
        idle: Duration,
        /// Deliveries so far.
        deliveries: u64,
    },
    /// Delivered and acknowledged.
    Acknowledged,
}

/// A stream id as `(ms, seq)`.
fn parse_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// The smallest id after `id`.
fn successor(id: &str) -> String {
    let (ms, seq) = parse_id(id);
    format!("{ms}-{}", seq + 1)
}

fn min_id(a: String, b: String) -> String {
    if parse_id(&a) <= parse_id(&b) { a } else { b }
}

fn text(value: &redis::Value) -> Option<String> {
    redis::FromRedisValue::from_redis_value(value.clone()).ok()
}

/// Connection settings for the transport.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// `redis://` or `rediss://` URL of one server, or
    /// `redis+cluster://host:port,host:port` (`rediss+cluster://`) of a
    /// cluster's seed nodes.
    pub url: String,
    /// Key prefix.
    pub prefix: String,
    /// Limit for one non-blocking command.
    pub command_timeout: Duration,
    /// Pooled connections for non-blocking commands.
    pub pool_size: usize,
    /// CA certificates (PEM) to verify a `rediss` server with, instead of
    /// the system's roots.
    pub ca_file: Option<std::path::PathBuf>,
}

impl TransportConfig {
    /// Defaults for everything but the URL.
    pub fn new(url: impl Into<String>) -> Self {
        TransportConfig {
            url: url.into(),
            prefix: DEFAULT_PREFIX.to_string(),
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            pool_size: DEFAULT_POOL_SIZE,
            ca_file: None,
        }
    }
}

/// Non-blocking stream commands over shared connections. Blocking reads use
/// a [`StreamReader`], which owns its own connection.
#[derive(Clone)]
pub struct Transport {
    backend: Backend,
    keys: Keys,
    command_timeout: Duration,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the URL: it may carry a password.
        f.debug_struct("Transport")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

/// What [`Transport::with_connection`] sends: one command or a pipeline.
#[derive(Clone, Copy)]
enum Request<'a> {
    Command(&'a redis::Cmd),
    Pipeline(&'a redis::Pipeline),
}

impl Transport {
    /// Build the connections; connects lazily, so this fails only on a bad
    /// URL (see [`connect`] for the URL forms).
    pub fn new(config: &TransportConfig) -> Result<Self> {
        Ok(Transport {
            backend: Backend::open(config)?,
            keys: Keys::new(config.prefix.clone()),
            command_timeout: config.command_timeout,
        })
    }

    /// Whether this transport talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.backend, Backend::Cluster(_))
    }

    /// The key names in use.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// A reader of `stream` on a connection of its own, consuming as
    /// `consumer`, whose waits last up to `block`.
    pub fn reader(&self, stream: QueueStream, consumer: &str, block: Duration) -> StreamReader {
        StreamReader::new(self.clone(), stream, consumer, block)
    }

    /// Send `request` under the command timeout. On one server, a command
    /// that fails because its pooled connection broke (Redis restarted since
    /// the connection was last used) runs once more on a fresh one: every
    /// command here may run twice (a second queue entry is skipped by the
    /// claim's fencing, a second dead-letter record names the same entry,
    /// XGROUP CREATE answers BUSYGROUP, XACK, XTRIM and reads are
    /// idempotent). See [`pool`]. On a cluster, the cluster client retries
    /// and follows redirections itself. A pipeline must hold commands for
    /// one stream (one slot) only.
    async fn with_connection<T: redis::FromRedisValue>(
        &self,
        operation: impl Fn() -> String,
        request: Request<'_>,
    ) -> Result<T> {
        let work = async {
            match &self.backend {
                Backend::Single { pool, .. } => {
                    let mut retried = false;
                    loop {
                        let mut conn = pool.get().await.map_err(|source| Error::RedisPool {
                            operation: operation(),
                            source,
                        })?;
                        let reply = match request {
                            Request::Command(cmd) => cmd.query_async(&mut conn.connection).await,
                            Request::Pipeline(pipe) => pipe.query_async(&mut conn.connection).await,
                        };
                        match reply {
                            Ok(value) => return Ok(value),
                            Err(source) => {
                                if pool::after_error(conn, &source) == pool::Kept::No && !retried {
                                    retried = true;
                                    continue;
                                }
                                return Err(Error::Redis {
                                    operation: operation(),
                                    source,
                                });
                            }
                        }
                    }
                }
                Backend::Cluster(cluster) => {
                    let redis_err = |source| Error::Redis {
                        operation: operation(),
                        source,
                    };
                    let mut conn = cluster.connection().await.map_err(redis_err)?;
                    match request {
                        Request::Command(cmd) => cmd.query_async(&mut conn).await,
                        Request::Pipeline(pipe) => pipe.query_async(&mut conn).await,
                    }
                    .map_err(redis_err)
                }
            }
        };
        // Connections have their own response timeout; this bounds pool
        // waits and connects too, so a caller is never held longer than
        // promised.
        match tokio::time::timeout(self.command_timeout * 2, work).await {
            Ok(result) => result,
            Err(_) => Err(Error::RedisTimeout {
                operation: operation(),
                after: self.command_timeout * 2,
            }),
        }
    }

    /// Run one command on a pooled connection under the command timeout.
    async fn run<T: redis::FromRedisValue>(
        &self,
        operation: impl Fn() -> String,
        cmd: &redis::Cmd,
    ) -> Result<T> {
        self.with_connection(operation, Request::Command(cmd)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_documented_layout() {
        let keys = Keys::new("opsrun");
        let default = QueueStream::new("default", 0);
        let third = QueueStream::new("inventory", 3);
        assert_eq!(keys.queue_stream(&default), "opsrun:queue:default");
        assert_eq!(keys.queue_stream(&third), "opsrun:queue:{inventory:3}");
        assert_eq!(keys.dead_stream("inventory"), "opsrun:dead:inventory");
        for stream in [default, third] {
            let key = keys.queue_stream(&stream);
            assert_eq!(keys.parse_queue_stream(&key), Some(stream));
        }
        for foreign in [
            "other:queue:default",
            "opsrun:queue:{inventory:0}",
            "opsrun:queue:{inventory:03}",
            "opsrun:queue:{inventory:64}",
            "opsrun:queue:{inventory}",
            "opsrun:queue:Bad Name",
            "opsrun:dead:default",
        ] {
            assert_eq!(keys.parse_queue_stream(foreign), None, "{foreign}");
        }
    }

    #[test]
    fn tenants_spread_over_shards_and_stay_put() {
        assert_eq!(shard_for(42, 1), 0);
        assert_eq!(shard_for(42, 0), 0);
        let mut seen = [0usize; 4];
        for tenant in 1..=4_000 {
            let shard = shard_for(tenant, 4);
            assert_eq!(shard, shard_for(tenant, 4));
            seen[shard as usize] += 1;
        }
        // Roughly even: each shard within 20% of a quarter.
        assert!(seen.iter().all(|&n| (800..=1200).contains(&n)), "{seen:?}");
    }

    #[test]
    fn stream_ids_order_numerically() {
        assert_eq!(successor("1700-5"), "1700-6");
        assert_eq!(min_id("999-9".into(), "1000-0".into()), "999-9");
        assert_eq!(min_id("1000-10".into(), "1000-9".into()), "1000-9");
    }

    #[test]
    fn malformed_entries_do_not_parse() {
        let mut item = StreamId {
            id: "1-0".into(),
            ..Default::default()
        };
        for (k, v) in [
            ("run_id", "7"),
            ("tenant_id", "3"),
            ("type", "a.b"),
            ("attempt", "1"),
        ] {
            item.map
                .insert(k.into(), redis::Value::BulkString(v.as_bytes().to_vec()));
        }
        let entry = Entry::from_stream_id(&item).unwrap();
        assert_eq!(
            entry,
            Entry {
                run_id: RunId(7),
                tenant_id: 3,
                run_type: "a.b".into(),
                attempt: 1,
                concurrency_key_digest: None,
            }
        );
        item.map.insert(
            "concurrency_key_digest".into(),
            redis::Value::BulkString(b"00ff".to_vec()),
        );
        let entry = Entry::from_stream_id(&item).unwrap();
        assert_eq!(entry.concurrency_key_digest.as_deref(), Some("00ff"));
        item.map
            .insert("run_id".into(), redis::Value::BulkString(b"x".to_vec()));
        assert!(Entry::from_stream_id(&item).is_none());
        assert!(Entry::from_stream_id(&StreamId::default()).is_none());
    }
}
