//! Redis Streams: the only place that issues stream commands. One stream per
//! queue (`<prefix>:queue:<queue>`), consumer group `workers`, entries carry
//! only `run_id`, `tenant_id`, `type` and `attempt`: Postgres holds the rest.
//! Every command touches one key, so any key may live on any cluster shard.

mod pool;
mod reader;

use std::time::Duration;

use deadpool_redis::Runtime;
use redis::AsyncConnectionConfig;
use redis::streams::StreamId;

use crate::error::{Error, Result};
use crate::run::RunId;
use pool::{Manager, Pool};

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

    /// The work stream of `queue`.
    pub fn queue_stream(&self, queue: &str) -> String {
        format!("{}:queue:{queue}", self.prefix)
    }

    /// The dead-letter stream of `queue`.
    pub fn dead_stream(&self, queue: &str) -> String {
        format!("{}:dead:{queue}", self.prefix)
    }
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
}

impl Entry {
    /// The entry dispatching `run` for its next attempt.
    pub fn next_attempt(run: &crate::run::Run) -> Entry {
        Entry {
            run_id: run.id,
            tenant_id: run.tenant_id,
            run_type: run.run_type.clone(),
            attempt: run.attempt + 1,
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
        })
    }
}

/// One entry handed to this consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The queue it came from.
    pub queue: String,
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
    /// `redis://` or `rediss://` URL.
    pub url: String,
    /// Key prefix.
    pub prefix: String,
    /// Limit for one non-blocking command.
    pub command_timeout: Duration,
    /// Pooled connections for non-blocking commands.
    pub pool_size: usize,
}

impl TransportConfig {
    /// Defaults for everything but the URL.
    pub fn new(url: impl Into<String>) -> Self {
        TransportConfig {
            url: url.into(),
            prefix: DEFAULT_PREFIX.to_string(),
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            pool_size: DEFAULT_POOL_SIZE,
        }
    }
}

/// Non-blocking stream commands over a pool. Blocking reads use a
/// [`StreamReader`], which owns its own connection.
#[derive(Clone)]
pub struct Transport {
    pool: Pool,
    client: redis::Client,
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
    /// Build the pool; connects lazily, so this fails only on a bad URL.
    pub fn new(config: &TransportConfig) -> Result<Self> {
        let redis_err = |source| Error::Redis {
            operation: "opening redis client".into(),
            source,
        };
        if config.url.contains("#insecure") {
            return Err(Error::invalid(
                "redis_url",
                "'#insecure' turns off TLS verification; remove it",
            ));
        }
        let client = redis::Client::open(config.url.as_str()).map_err(redis_err)?;
        let connection = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(config.command_timeout))
            .set_response_timeout(Some(config.command_timeout));
        let manager = Manager(
            deadpool_redis::Manager::new_with_config(config.url.as_str(), connection)
                .map_err(redis_err)?,
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(config.command_timeout))
            .create_timeout(Some(config.command_timeout))
            .recycle_timeout(Some(config.command_timeout))
            .build()
            .map_err(|e| Error::invalid("redis_url", format!("building the redis pool: {e}")))?;
        Ok(Transport {
            pool,
            client,
            keys: Keys::new(config.prefix.clone()),
            command_timeout: config.command_timeout,
        })
    }

    /// The key names in use.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// A dedicated blocking reader for `queue`, consuming as `consumer`.
    pub fn reader(&self, queue: &str, consumer: &str) -> StreamReader {
        StreamReader::new(self.client.clone(), self.keys.clone(), queue, consumer)
    }

    /// Send `request` on a pooled connection under the command timeout. A command
    /// that fails because its connection broke (Redis restarted since the
    /// connection was last used) runs once more on a fresh one: every
    /// command here may run twice (a second queue entry is skipped by the
    /// claim's fencing, a second dead-letter record names the same entry,
    /// XGROUP CREATE answers BUSYGROUP, XACK, XTRIM and reads are
    /// idempotent). See [`pool`].
    async fn with_connection<T: redis::FromRedisValue>(
        &self,
        operation: impl Fn() -> String,
        request: Request<'_>,
    ) -> Result<T> {
        let work = async {
            let mut retried = false;
            loop {
                let mut conn = self.pool.get().await.map_err(|source| Error::RedisPool {
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
        };
        // The connection has its own response timeout; this bounds pool waits
        // and connects too, so a caller is never held longer than promised.
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

    /// XADD an entry to `queue`'s stream; returns the entry id. An error
    /// (notably a timeout) does not prove the entry was not added: a late
    /// XADD is harmless because the claim checks the row's status.
    pub async fn publish(&self, queue: &str, entry: &Entry) -> Result<String> {
        let mut ids = self.publish_many(&[(queue, entry.clone())]).await?;
        ids.pop()
            .ok_or_else(|| Error::invalid("redis", "XADD returned no entry id"))
    }

    /// XADD many entries in one pipelined round trip; returns their ids in
    /// order. All or nothing as far as the caller knows: on an error, any of
    /// them may or may not have been added (a late entry is harmless).
    pub async fn publish_many(&self, entries: &[(&str, Entry)]) -> Result<Vec<String>> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for (queue, entry) in entries {
            pipe.cmd("XADD")
                .arg(self.keys.queue_stream(queue))
                .arg("*")
                .arg("run_id")
                .arg(entry.run_id.0)
                .arg("tenant_id")
                .arg(entry.tenant_id)
                .arg("type")
                .arg(&entry.run_type)
                .arg("attempt")
                .arg(entry.attempt);
        }
        let operation = || match entries {
            [(queue, _)] => format!("publishing to stream {}", self.keys.queue_stream(queue)),
            _ => format!("publishing {} entries", entries.len()),
        };
        self.with_connection(operation, Request::Pipeline(&pipe))
            .await
    }

    /// Create the consumer group of `queue` (and its stream) if missing.
    /// Starts from id `0`, never `$`: entries added before the group existed
    /// (e.g. after Redis restarted empty) must still be delivered.
    pub async fn ensure_group(&self, queue: &str) -> Result<()> {
        let stream = self.keys.queue_stream(queue);
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

    /// XACK entries of `queue`. Only after the run's state is committed.
    pub async fn ack(&self, queue: &str, entry_ids: &[&str]) -> Result<usize> {
        if entry_ids.is_empty() {
            return Ok(0);
        }
        let stream = self.keys.queue_stream(queue);
        let mut cmd = redis::cmd("XACK");
        cmd.arg(&stream).arg(GROUP).arg(entry_ids);
        self.run(|| format!("acknowledging on stream {stream}"), &cmd)
            .await
    }

    /// The entry `entry_id` of `queue`'s stream, if it still exists. `Some(None)`
    /// when it exists but its fields do not parse.
    pub async fn entry(&self, queue: &str, entry_id: &str) -> Result<Option<Option<Entry>>> {
        let stream = self.keys.queue_stream(queue);
        let mut cmd = redis::cmd("XRANGE");
        cmd.arg(&stream)
            .arg(entry_id)
            .arg(entry_id)
            .arg("COUNT")
            .arg(1);
        let reply: redis::streams::StreamRangeReply = self
            .run(|| format!("reading entry of stream {stream}"), &cmd)
            .await?;
        Ok(reply.ids.first().map(Entry::from_stream_id))
    }

    /// Entries of `queue` delivered to some consumer and not acknowledged for
    /// at least `min_idle`, oldest first, at most `count`.
    pub async fn pending_idle(
        &self,
        queue: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<PendingEntry>> {
        let stream = self.keys.queue_stream(queue);
        let mut cmd = redis::cmd("XPENDING");
        cmd.arg(&stream)
            .arg(GROUP)
            .arg("IDLE")
            .arg(min_idle.as_millis() as u64)
            .arg("-")
            .arg("+")
            .arg(count);
        match self
            .run::<Vec<(String, String, u64, u64)>>(
                || format!("listing pending entries of {stream}"),
                &cmd,
            )
            .await
        {
            Ok(rows) => Ok(rows
                .into_iter()
                .map(|(entry_id, consumer, idle_ms, deliveries)| PendingEntry {
                    entry_id,
                    consumer,
                    idle: Duration::from_millis(idle_ms),
                    deliveries,
                })
                .collect()),
            // No stream or no group yet: nothing is pending.
            Err(Error::Redis { source, .. }) if source.code() == Some("NOGROUP") => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Copy an entry to `queue`'s dead-letter stream with why it was given up.
    /// Done before the acknowledgement, so a crash in between leaves a
    /// duplicate dead letter, never a lost one.
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
            cmd.arg("run_id")
                .arg(e.run_id.0)
                .arg("tenant_id")
                .arg(e.tenant_id)
                .arg("type")
                .arg(&e.run_type)
                .arg("attempt")
                .arg(e.attempt);
        }
        self.run(|| format!("dead-lettering to stream {stream}"), &cmd)
            .await
    }

    /// The queues that have a stream under this prefix.
    pub async fn queues(&self) -> Result<Vec<String>> {
        let pattern = self.keys.queue_stream("*");
        let prefix_len = pattern.len() - 1;
        let mut queues = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let mut cmd = redis::cmd("SCAN");
            cmd.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .arg("TYPE")
                .arg("stream");
            // Keys are bytes: one that is not a queue name (not UTF-8, or
            // outside the queue alphabet) is skipped, not allowed to fail
            // the listing of every other queue.
            let (next, keys): (u64, Vec<Vec<u8>>) = self
                .run(|| "listing queue streams".to_string(), &cmd)
                .await?;
            for key in keys {
                let queue = std::str::from_utf8(&key[prefix_len..])
                    .ok()
                    .filter(|q| crate::request::validate_queue(q).is_ok());
                match queue {
                    Some(queue) => queues.push(queue.to_string()),
                    None => tracing::warn!(
                        key = %String::from_utf8_lossy(&key).escape_debug(),
                        "a stream under the queue prefix is not named like a queue; skipped"
                    ),
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        queues.sort();
        queues.dedup();
        Ok(queues)
    }

    /// The group's last-delivered id on `queue`'s stream, or `None` when the
    /// stream or the group does not exist.
    async fn last_delivered(&self, queue: &str) -> Result<Option<String>> {
        let stream = self.keys.queue_stream(queue);
        let mut info = redis::cmd("XINFO");
        info.arg("GROUPS").arg(&stream);
        let groups: Vec<std::collections::HashMap<String, redis::Value>> = match self
            .run(|| format!("reading groups of {stream}"), &info)
            .await
        {
            Ok(groups) => groups,
            // "ERR no such key": no stream, so no group either.
            Err(Error::Redis { source, .. }) if source.code() == Some("ERR") => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(groups
            .iter()
            .find(|g| g.get("name").and_then(text).as_deref() == Some(GROUP))
            .map(|g| {
                g.get("last-delivered-id")
                    .and_then(text)
                    .unwrap_or_else(|| "0-0".to_string())
            }))
    }

    /// Where entry `entry_id` of `queue` stands.
    pub async fn entry_state(&self, queue: &str, entry_id: &str) -> Result<EntryState> {
        if self.entry(queue, entry_id).await?.is_none() {
            return Ok(EntryState::Missing);
        }
        let stream = self.keys.queue_stream(queue);
        let mut cmd = redis::cmd("XPENDING");
        cmd.arg(&stream)
            .arg(GROUP)
            .arg(entry_id)
            .arg(entry_id)
            .arg(1);
        let rows: Vec<(String, String, u64, u64)> = match self
            .run(|| format!("reading a pending entry of {stream}"), &cmd)
            .await
        {
            Ok(rows) => rows,
            Err(Error::Redis { source, .. }) if source.code() == Some("NOGROUP") => Vec::new(),
            Err(e) => return Err(e),
        };
        if let Some((_, _, idle_ms, deliveries)) = rows.first() {
            return Ok(EntryState::Pending {
                idle: Duration::from_millis(*idle_ms),
                deliveries: *deliveries,
            });
        }
        match self.last_delivered(queue).await? {
            Some(last) if parse_id(entry_id) <= parse_id(&last) => Ok(EntryState::Acknowledged),
            _ => Ok(EntryState::Waiting),
        }
    }

    /// Find the entries dispatching `wanted` runs, keyed by `(tenant, run,
    /// attempt)` as the entries carry them, for runs whose entry id was never recorded
    /// (a producer does not record it; the claim does). An entry not yet
    /// acknowledged is either pending (delivered) or among the undelivered
    /// ones, oldest first, where a long-waiting run's entry sits near the
    /// front: the pending list (up to 1,000) and the first `scan`
    /// undelivered entries are read. A run not found had its entry
    /// acknowledged without a claim, trimmed, or lost with Redis.
    pub async fn locate_entries(
        &self,
        queue: &str,
        wanted: &std::collections::HashSet<(i64, RunId, i32)>,
        scan: usize,
    ) -> Result<std::collections::HashMap<(i64, RunId, i32), (String, EntryState)>> {
        let mut found = std::collections::HashMap::new();
        let stream = self.keys.queue_stream(queue);
        let keep = |found: &mut std::collections::HashMap<_, _>, item: &StreamId, state| {
            if let Some(e) = Entry::from_stream_id(item)
                && wanted.contains(&(e.tenant_id, e.run_id, e.attempt))
            {
                found.insert((e.tenant_id, e.run_id, e.attempt), (item.id.clone(), state));
            }
        };
        let pending = self.pending_idle(queue, Duration::ZERO, 1000).await?;
        if !pending.is_empty() {
            let mut pipe = redis::pipe();
            for p in &pending {
                pipe.cmd("XRANGE")
                    .arg(&stream)
                    .arg(&p.entry_id)
                    .arg(&p.entry_id);
            }
            let replies: Vec<redis::streams::StreamRangeReply> = self
                .with_connection(
                    || format!("reading pending entries of {stream}"),
                    Request::Pipeline(&pipe),
                )
                .await?;
            for (p, reply) in pending.iter().zip(&replies) {
                for item in &reply.ids {
                    let state = EntryState::Pending {
                        idle: p.idle,
                        deliveries: p.deliveries,
                    };
                    keep(&mut found, item, state);
                }
            }
        }
        // No group yet: nothing was delivered, every entry is undelivered.
        let mut from = match self.last_delivered(queue).await? {
            Some(last) => successor(&last),
            None => "-".to_string(),
        };
        let mut scanned = 0;
        while scanned < scan && found.len() < wanted.len() {
            let page = (scan - scanned).min(1000);
            let mut cmd = redis::cmd("XRANGE");
            cmd.arg(&stream).arg(&from).arg("+").arg("COUNT").arg(page);
            let reply: redis::streams::StreamRangeReply = self
                .run(|| format!("reading undelivered entries of {stream}"), &cmd)
                .await?;
            for item in &reply.ids {
                keep(&mut found, item, EntryState::Waiting);
            }
            scanned += reply.ids.len();
            match reply.ids.last() {
                Some(last) if reply.ids.len() == page => from = successor(&last.id),
                _ => break,
            }
        }
        Ok(found)
    }

    /// Trim `queue`'s stream below the oldest entry that may still matter:
    /// the oldest pending entry, the first undelivered one, and anything newer
    /// than `keep` (kept for inspection). A stream without the group is left
    /// alone: its entries were never delivered. Returns entries removed.
    pub async fn trim(&self, queue: &str, keep: Duration) -> Result<u64> {
        let Some(last_delivered) = self.last_delivered(queue).await? else {
            return Ok(0);
        };
        let stream = self.keys.queue_stream(queue);
        let mut floor = successor(&last_delivered);
        let mut summary = redis::cmd("XPENDING");
        summary.arg(&stream).arg(GROUP);
        let (pending, oldest, _, _): (u64, Option<String>, Option<String>, redis::Value) = self
            .run(
                || format!("summarizing pending entries of {stream}"),
                &summary,
            )
            .await?;
        if pending > 0
            && let Some(oldest) = oldest
        {
            floor = min_id(floor, oldest);
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        floor = min_id(
            floor,
            format!("{}-0", now_ms.saturating_sub(keep.as_millis() as u64)),
        );
        let mut trim = redis::cmd("XTRIM");
        trim.arg(&stream).arg("MINID").arg("~").arg(&floor);
        self.run(|| format!("trimming stream {stream}"), &trim)
            .await
    }

    /// Check that Redis answers.
    pub async fn ping(&self) -> Result<()> {
        let reply: String = self
            .run(|| "pinging redis".to_string(), &redis::cmd("PING"))
            .await?;
        debug_assert_eq!(reply, "PONG");
        Ok(())
    }

    /// The `maxmemory-policy` of the server; streams need `noeviction`.
    pub async fn maxmemory_policy(&self) -> Result<String> {
        let mut cmd = redis::cmd("CONFIG");
        cmd.arg("GET").arg("maxmemory-policy");
        let reply: Vec<String> = self
            .run(|| "reading maxmemory-policy".to_string(), &cmd)
            .await?;
        Ok(reply.get(1).cloned().unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_documented_layout() {
        let keys = Keys::new("opsrun");
        assert_eq!(keys.queue_stream("default"), "opsrun:queue:default");
        assert_eq!(keys.dead_stream("inventory"), "opsrun:dead:inventory");
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
                attempt: 1
            }
        );
        item.map
            .insert("run_id".into(), redis::Value::BulkString(b"x".to_vec()));
        assert!(Entry::from_stream_id(&item).is_none());
        assert!(Entry::from_stream_id(&StreamId::default()).is_none());
    }
}
