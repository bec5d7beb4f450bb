//! Reading streams without consuming them, for the reaper and operators:
//! single entries, pending lists, where an entry stands, finding the
//! entries of runs, trimming, discovering queues, and server checks.

use std::time::Duration;

use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::streams::StreamId;

use super::connect::Backend;
use super::{
    ConsumerState, Entry, EntryState, GROUP, GroupState, PendingEntry, QueueStream, Request,
    Transport, min_id, parse_id, successor, text,
};
use crate::error::{Error, Result};
use crate::run::RunId;

impl Transport {
    /// The entry `entry_id` of `stream`, if it still exists. `Some(None)`
    /// when it exists but its fields do not parse.
    pub async fn entry(
        &self,
        stream: &QueueStream,
        entry_id: &str,
    ) -> Result<Option<Option<Entry>>> {
        let stream = self.keys.queue_stream(stream);
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

    /// Entries of `stream` delivered to some consumer and not acknowledged
    /// for at least `min_idle`, oldest first, at most `count`.
    pub async fn pending_idle(
        &self,
        stream: &QueueStream,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<PendingEntry>> {
        let stream = self.keys.queue_stream(stream);
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

    /// Every queue stream under this prefix, every shard of every queue
    /// (those no longer declared too, so that their entries are still seen
    /// to): on a cluster, on every master (a key lives on one node only).
    pub async fn streams(&self) -> Result<Vec<QueueStream>> {
        let pattern = format!("{}*", self.keys.queue_streams_prefix());
        let mut streams = Vec::new();
        // Keys are bytes: one that is not a queue stream's name (not UTF-8,
        // or outside the queue alphabet) is skipped, not allowed to fail the
        // listing of every other queue.
        for key in self.scan_streams(&pattern).await? {
            match std::str::from_utf8(&key)
                .ok()
                .and_then(|k| self.keys.parse_queue_stream(k))
            {
                Some(stream) => streams.push(stream),
                None => tracing::warn!(
                    key = %String::from_utf8_lossy(&key).escape_debug(),
                    "a stream under the queue prefix is not named like a queue stream; skipped"
                ),
            }
        }
        streams.sort();
        streams.dedup();
        Ok(streams)
    }

    /// The queues that have a stream under this prefix (see [`Transport::streams`]).
    pub async fn queues(&self) -> Result<Vec<String>> {
        let mut queues: Vec<String> = self.streams().await?.into_iter().map(|s| s.queue).collect();
        queues.dedup();
        Ok(queues)
    }

    /// Every stream key matching `pattern`, on the server or on every
    /// cluster master.
    async fn scan_streams(&self, pattern: &str) -> Result<Vec<Vec<u8>>> {
        let scan = |cursor: u64| {
            let mut cmd = redis::cmd("SCAN");
            cmd.arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1000)
                .arg("TYPE")
                .arg("stream");
            cmd
        };
        let operation = || "listing queue streams".to_string();
        let mut keys = Vec::new();
        match &self.backend {
            Backend::Single { .. } => {
                let mut cursor = 0;
                loop {
                    let (next, page): (u64, Vec<Vec<u8>>) =
                        self.run(operation, &scan(cursor)).await?;
                    keys.extend(page);
                    if next == 0 {
                        break;
                    }
                    cursor = next;
                }
            }
            Backend::Cluster(cluster) => {
                let redis_err = |source| Error::Redis {
                    operation: operation(),
                    source,
                };
                let work = async {
                    let mut conn = cluster.connection().await.map_err(redis_err)?;
                    for (host, port) in cluster_masters(&mut conn).await.map_err(redis_err)? {
                        let node = || {
                            RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                                host: host.clone(),
                                port,
                            })
                        };
                        let mut cursor = 0;
                        loop {
                            let reply = conn
                                .route_command(scan(cursor), node())
                                .await
                                .map_err(redis_err)?;
                            let (next, page): (u64, Vec<Vec<u8>>) =
                                redis::FromRedisValue::from_redis_value(reply)
                                    .map_err(|e| redis_err(redis::RedisError::from(e)))?;
                            keys.extend(page);
                            if next == 0 {
                                break;
                            }
                            cursor = next;
                        }
                    }
                    Ok::<(), Error>(())
                };
                let limit = self.command_timeout * 10;
                tokio::time::timeout(limit, work)
                    .await
                    .map_err(|_| Error::RedisTimeout {
                        operation: operation(),
                        after: limit,
                    })??;
            }
        }
        Ok(keys)
    }

    /// The workers' group on `stream`, or `None` when the stream or the
    /// group does not exist (no worker ever read it).
    pub async fn group_state(&self, stream: &QueueStream) -> Result<Option<GroupState>> {
        let stream = self.keys.queue_stream(stream);
        let mut info = redis::cmd("XINFO");
        info.arg("GROUPS").arg(&stream);
        let groups: Vec<std::collections::HashMap<String, redis::Value>> = match self
            .run(|| format!("reading groups of {stream}"), &info)
            .await
        {
            Ok(groups) => groups,
            Err(Error::Redis { source, .. }) if source.code() == Some("ERR") => return Ok(None),
            Err(e) => return Err(e),
        };
        let number =
            |g: &std::collections::HashMap<String, redis::Value>, key: &str| match g.get(key) {
                Some(redis::Value::Int(n)) => u64::try_from(*n).ok(),
                _ => None,
            };
        Ok(groups
            .iter()
            .find(|g| g.get("name").and_then(text).as_deref() == Some(GROUP))
            .map(|g| GroupState {
                consumers: number(g, "consumers").unwrap_or(0),
                pending: number(g, "pending").unwrap_or(0),
                lag: number(g, "lag"),
            }))
    }

    /// The consumers of the workers' group on `stream` (empty when the
    /// stream or the group does not exist).
    pub async fn consumers(&self, stream: &QueueStream) -> Result<Vec<ConsumerState>> {
        let stream = self.keys.queue_stream(stream);
        let mut info = redis::cmd("XINFO");
        info.arg("CONSUMERS").arg(&stream).arg(GROUP);
        let consumers: Vec<std::collections::HashMap<String, redis::Value>> = match self
            .run(|| format!("reading consumers of {stream}"), &info)
            .await
        {
            Ok(consumers) => consumers,
            Err(Error::Redis { source, .. })
                if source.code() == Some("NOGROUP") || source.code() == Some("ERR") =>
            {
                return Ok(Vec::new());
            }
            Err(e) => return Err(e),
        };
        let number =
            |c: &std::collections::HashMap<String, redis::Value>, key: &str| match c.get(key) {
                Some(redis::Value::Int(n)) => u64::try_from(*n).unwrap_or(0),
                _ => 0,
            };
        Ok(consumers
            .iter()
            .map(|c| ConsumerState {
                name: c.get("name").and_then(text).unwrap_or_default(),
                pending: number(c, "pending"),
                idle_ms: number(c, "idle"),
            })
            .collect())
    }

    /// The delivery of entry `entry_id` of `stream` not yet acknowledged,
    /// if it is one.
    pub async fn pending_entry(
        &self,
        queue_stream: &QueueStream,
        entry_id: &str,
    ) -> Result<Option<PendingEntry>> {
        let stream = self.keys.queue_stream(queue_stream);
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
        Ok(rows
            .into_iter()
            .next()
            .map(|(entry_id, consumer, idle_ms, deliveries)| PendingEntry {
                entry_id,
                consumer,
                idle: Duration::from_millis(idle_ms),
                deliveries,
            }))
    }

    /// The group's last-delivered id on `stream`, or `None` when the stream
    /// or the group does not exist.
    pub(super) async fn last_delivered(&self, stream: &QueueStream) -> Result<Option<String>> {
        let stream = self.keys.queue_stream(stream);
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

    /// Where entry `entry_id` of `stream` stands.
    pub async fn entry_state(
        &self,
        queue_stream: &QueueStream,
        entry_id: &str,
    ) -> Result<EntryState> {
        if self.entry(queue_stream, entry_id).await?.is_none() {
            return Ok(EntryState::Missing);
        }
        if let Some(pending) = self.pending_entry(queue_stream, entry_id).await? {
            return Ok(EntryState::Pending {
                idle: pending.idle,
                deliveries: pending.deliveries,
            });
        }
        match self.last_delivered(queue_stream).await? {
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
        queue_stream: &QueueStream,
        wanted: &std::collections::HashSet<(i64, RunId, i32)>,
        scan: usize,
    ) -> Result<std::collections::HashMap<(i64, RunId, i32), (String, EntryState)>> {
        let mut found = std::collections::HashMap::new();
        let stream = self.keys.queue_stream(queue_stream);
        let keep = |found: &mut std::collections::HashMap<_, _>, item: &StreamId, state| {
            if let Some(e) = Entry::from_stream_id(item)
                && wanted.contains(&(e.tenant_id, e.run_id, e.attempt))
            {
                found.insert((e.tenant_id, e.run_id, e.attempt), (item.id.clone(), state));
            }
        };
        let pending = self
            .pending_idle(queue_stream, Duration::ZERO, 1000)
            .await?;
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
        let mut from = match self.last_delivered(queue_stream).await? {
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

    /// Trim `stream` below the oldest entry that may still matter: the
    /// oldest pending entry, the first undelivered one, and anything newer
    /// than `keep` (kept for inspection). A stream without the group is left
    /// alone: its entries were never delivered. Returns entries removed.
    pub async fn trim(&self, queue_stream: &QueueStream, keep: Duration) -> Result<u64> {
        let Some(last_delivered) = self.last_delivered(queue_stream).await? else {
            return Ok(0);
        };
        let stream = self.keys.queue_stream(queue_stream);
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

    /// Entries in `stream` (XLEN; 0 when it does not exist).
    pub async fn length(&self, stream: &QueueStream) -> Result<u64> {
        let stream = self.keys.queue_stream(stream);
        let mut xlen = redis::cmd("XLEN");
        xlen.arg(&stream);
        self.run(|| format!("measuring {stream}"), &xlen).await
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

/// The address of every master of the cluster that is not failing, from
/// `CLUSTER NODES` (`<id> <host:port@cport> <flags> <master> …`).
async fn cluster_masters(conn: &mut ClusterConnection) -> redis::RedisResult<Vec<(String, u16)>> {
    let mut cmd = redis::cmd("CLUSTER");
    cmd.arg("NODES");
    let reply = conn
        .route_command(cmd, RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random))
        .await?;
    let text: String = redis::FromRedisValue::from_redis_value(reply)?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags = fields.get(2)?;
            if !flags.split(',').any(|f| f == "master") || flags.contains("fail") {
                return None;
            }
            let address = fields.get(1)?.split(['@', ',']).next()?;
            let (host, port) = address.rsplit_once(':')?;
            Some((host.to_string(), port.parse().ok()?))
        })
        .filter(|(host, port)| !host.is_empty() && *port != 0)
        .collect())
}
