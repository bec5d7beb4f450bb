//! The consumer-group process: one reader per queue stream (every shard of
//! every queue; a paused queue is not read until it is resumed), at most
//! `concurrency` jobs at once, a batched heartbeat, and a graceful drain on
//! shutdown (stop reading, let in-flight jobs finish within the grace period,
//! leave the rest to the reaper).
//!
//! A job's slot is freed as soon as its handler returns; its terminal write
//! and XACK then join the next group commit in the background (River's batch
//! completer works alike), so slots never wait on Postgres. How many runs may
//! wait like that is bounded ([`SETTLE_BACKLOG`]); until written they stay
//! held and heartbeated, and shutdown waits for them.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use opsrun::lifecycle::{Lifecycle, heartbeat_loop};
use opsrun::transport::{QueueStream, StreamReader};
use opsrun::{Ledger, Transport};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Default jobs run at once.
pub const DEFAULT_CONCURRENCY: usize = 10;
/// Default BLOCK of one wait for entries.
pub const DEFAULT_BLOCK: Duration = Duration::from_secs(2);
/// Default interval of the batched heartbeat.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// Default interval of the cancel check: a cancelled run's job is stopped
/// within about this long.
pub const DEFAULT_CANCEL_CHECK: Duration = Duration::from_secs(1);
/// Default time in-flight jobs get to finish after SIGTERM.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Most entries taken in one read.
const MAX_READ_COUNT: usize = 64;
/// Most finished jobs whose results wait to be written, beyond the running
/// ones: two group-commit batches (256 each), one being written while the
/// next gathers.
pub const SETTLE_BACKLOG: usize = 512;

/// How a worker process consumes.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Queues to read.
    pub queues: Vec<String>,
    /// Streams per queue (the registry's `shards`); a queue not listed has
    /// one. Every shard is read, each by its own reader: they take turns
    /// for free slots, so a backlog in one shard never starves another.
    pub shards: BTreeMap<String, i16>,
    /// Jobs run at once.
    pub concurrency: usize,
    /// BLOCK time of one wait for entries.
    pub block: Duration,
    /// Heartbeat interval (well below the reaper's lease).
    pub heartbeat_interval: Duration,
    /// Time in-flight jobs get after shutdown is requested.
    pub shutdown_grace: Duration,
    /// How often the worker asks whether someone cancelled a run it runs.
    pub cancel_check: Duration,
    /// Runs claimed ahead of free slots: up to `concurrency + prefetch` are
    /// held at once, those beyond `concurrency` waiting in the worker for a
    /// slot, in claim order. Fewer, larger claims for many short jobs; 0
    /// (the default) claims only what can start at once.
    pub prefetch: usize,
}

impl WorkerConfig {
    /// Defaults for `queues`.
    pub fn new(queues: Vec<String>) -> Self {
        WorkerConfig {
            queues,
            shards: BTreeMap::new(),
            concurrency: DEFAULT_CONCURRENCY,
            block: DEFAULT_BLOCK,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            cancel_check: DEFAULT_CANCEL_CHECK,
            prefetch: 0,
        }
    }

    /// Every stream this worker reads.
    pub fn streams(&self) -> Vec<QueueStream> {
        self.queues
            .iter()
            .flat_map(|q| QueueStream::all(q, self.shards.get(q).copied().unwrap_or(1)))
            .collect()
    }
}

/// What a worker did before it stopped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerReport {
    /// Runs completed.
    pub completed: u64,
    /// Entries skipped (duplicate, forged, malformed).
    pub skipped: u64,
    /// Attempts that failed retryably and were scheduled again.
    pub retried: u64,
    /// Results dropped after a lost claim.
    pub lease_lost: u64,
    /// Entries left pending (Postgres unreachable).
    pub deferred: u64,
    /// Jobs still running when the grace period ended (left to the reaper).
    pub abandoned: usize,
}

/// A name unique to this process in the consumer group: host and pid.
pub fn consumer_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let host = if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "unknown-host".to_string()
    };
    format!("{host}:{}", std::process::id())
}

/// Consume until `shutdown` is cancelled, then drain. Groups must exist
/// (see [`Transport::ensure_group`]); a vanished group is recreated.
pub async fn run(
    lifecycle: Arc<Lifecycle>,
    ledger: Ledger,
    transport: Transport,
    config: WorkerConfig,
    shutdown: CancellationToken,
) -> WorkerReport {
    let capacity = Capacity::new(config.concurrency.max(1), config.prefetch);
    let jobs = TaskTracker::new();
    let stop_heartbeat = CancellationToken::new();
    let ledger_for_pauses = ledger.clone();
    let heartbeat = tokio::spawn(heartbeat_loop(
        ledger,
        lifecycle.holder().to_string(),
        lifecycle.in_flight().clone(),
        config.heartbeat_interval,
        config.cancel_check,
        stop_heartbeat.clone(),
    ));

    let paused = watch_pauses(
        ledger_for_pauses,
        config.cancel_check,
        stop_heartbeat.clone(),
    )
    .await;
    let streams = config.streams();
    let readers: Vec<_> = streams
        .iter()
        .map(|stream| {
            let reader = transport.reader(stream.clone(), lifecycle.holder(), config.block);
            tokio::spawn(read_loop(
                reader,
                Arc::clone(&lifecycle),
                capacity.clone(),
                jobs.clone(),
                paused.clone(),
                shutdown.clone(),
            ))
        })
        .collect();
    let streams: Vec<String> = streams.iter().map(|s| s.to_string()).collect();
    tracing::info!(
        consumer = lifecycle.holder(),
        ?streams,
        concurrency = config.concurrency,
        prefetch = config.prefetch,
        "worker started"
    );
    for reader in readers {
        let _ = reader.await;
    }

    // Readers have stopped: nothing new is claimed. Let in-flight jobs finish.
    jobs.close();
    let in_flight = lifecycle.in_flight().len();
    if in_flight > 0 {
        tracing::info!(
            in_flight,
            grace_s = config.shutdown_grace.as_secs(),
            "draining in-flight jobs"
        );
    }
    let drained = tokio::time::timeout(config.shutdown_grace, jobs.wait())
        .await
        .is_ok();
    let abandoned = if drained {
        0
    } else {
        lifecycle.in_flight().len()
    };
    if abandoned > 0 {
        tracing::warn!(
            abandoned,
            "grace period over; unfinished runs are left to the reaper"
        );
    }
    // Nothing more is claimed: unused slot credits go back at once rather
    // than when they expire.
    lifecycle.give_back_credits().await;
    stop_heartbeat.cancel();
    let _ = heartbeat.await;

    let stats = lifecycle.stats();
    let report = WorkerReport {
        completed: stats.completed.load(Ordering::Relaxed),
        skipped: stats.skipped.load(Ordering::Relaxed),
        retried: stats.retried.load(Ordering::Relaxed),
        lease_lost: stats.lease_lost.load(Ordering::Relaxed),
        deferred: stats.deferred.load(Ordering::Relaxed),
        abandoned,
    };
    tracing::info!(?report, "worker stopped");
    report
}

/// Claim one read's entries and run each claimed run in its own task: the
/// handler once a slot is free, holding it, then the terminal write holding
/// only its hold. Permits of entries that were not claimed are released on
/// return.
async fn claim_and_run(
    lifecycle: Arc<Lifecycle>,
    deliveries: Vec<opsrun::transport::Delivery>,
    mut permits: Vec<JobPermit>,
    slots: Arc<Semaphore>,
    jobs: TaskTracker,
) {
    for (delivery, claim) in lifecycle.claim(deliveries).await {
        let Ok(claimed) = claim else { continue };
        // A read never returns more entries than permits were taken for it.
        let Some(permit) = permits.pop() else {
            tracing::error!(run_id = %claimed.run.id, "more entries than permits; left to the reaper");
            lifecycle.in_flight().remove(claimed.run.id);
            continue;
        };
        // Claimed runs wait their turn here when prefetched, one after the
        // other, so they start in claim order.
        let slot = Arc::clone(&slots)
            .acquire_owned()
            .await
            .expect("slots are never closed");
        let lifecycle = Arc::clone(&lifecycle);
        jobs.spawn(async move {
            let finished = lifecycle.run_job(delivery, claimed).await;
            drop(slot);
            drop(permit.turn);
            lifecycle.settle(finished).await;
            drop(permit.hold);
        });
    }
}

/// What a job needs before its entry is read: a turn among the runs held
/// at once (`concurrency + prefetch`), and a hold that lasts until its
/// result is written. Its slot to run the handler in is taken once
/// claimed.
#[derive(Clone)]
struct Capacity {
    slots: Arc<Semaphore>,
    turns: Arc<Semaphore>,
    holds: Arc<Semaphore>,
}

/// A job's turn and hold.
struct JobPermit {
    turn: OwnedSemaphorePermit,
    hold: OwnedSemaphorePermit,
}

impl Capacity {
    fn new(concurrency: usize, prefetch: usize) -> Self {
        Capacity {
            slots: Arc::new(Semaphore::new(concurrency)),
            turns: Arc::new(Semaphore::new(concurrency + prefetch)),
            holds: Arc::new(Semaphore::new(concurrency + prefetch + SETTLE_BACKLOG)),
        }
    }

    async fn acquire(&self) -> Option<JobPermit> {
        let hold = Arc::clone(&self.holds).acquire_owned().await.ok()?;
        let turn = Arc::clone(&self.turns).acquire_owned().await.ok()?;
        Some(JobPermit { turn, hold })
    }

    fn try_acquire(&self) -> Option<JobPermit> {
        let hold = Arc::clone(&self.holds).try_acquire_owned().ok()?;
        let turn = Arc::clone(&self.turns).try_acquire_owned().ok()?;
        Some(JobPermit { turn, hold })
    }
}

/// The paused queues, as last read from Postgres.
type Paused = watch::Receiver<Arc<HashSet<String>>>;

/// Read the paused queues now, then every `every` until `stop`.
async fn watch_pauses(ledger: Ledger, every: Duration, stop: CancellationToken) -> Paused {
    async fn read(ledger: &Ledger) -> Option<HashSet<String>> {
        match ledger.paused_queues().await {
            Ok(list) => Some(list.into_iter().map(|p| p.queue).collect()),
            Err(e) => {
                tracing::warn!(error = %e, "reading the paused queues failed; retrying");
                None
            }
        }
    }
    let (tx, rx) = watch::channel(Arc::new(read(&ledger).await.unwrap_or_default()));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Some(now) = read(&ledger).await {
                tx.send_if_modified(|known| {
                    let changed = **known != now;
                    if changed {
                        *known = Arc::new(now);
                    }
                    changed
                });
            }
        }
    });
    rx
}

/// Wait while `queue` is paused; false when shutdown came first.
async fn while_paused(queue: &str, paused: &mut Paused, shutdown: &CancellationToken) -> bool {
    if !paused.borrow().contains(queue) {
        return true;
    }
    tracing::info!(queue, "queue paused; not reading it until it is resumed");
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            changed = paused.changed() => if changed.is_err() { return false },
        }
        if !paused.borrow_and_update().contains(queue) {
            tracing::info!(queue, "queue resumed; reading it again");
            return true;
        }
    }
}

/// Read one stream: wait for capacity, take as many entries as there are
/// free turns, hand them to [`claim_and_run`] and read again. When the
/// stream has none, the turns go back (to the worker's other streams) and
/// the reader waits for an entry holding none.
async fn read_loop(
    mut reader: StreamReader,
    lifecycle: Arc<Lifecycle>,
    capacity: Capacity,
    jobs: TaskTracker,
    mut paused: Paused,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    let queue = reader.stream().queue.clone();
    loop {
        if !while_paused(&queue, &mut paused, &shutdown).await {
            return;
        }
        let first = tokio::select! {
            _ = shutdown.cancelled() => return,
            permit = capacity.acquire() => match permit { Some(p) => p, None => return },
        };
        let mut permits = vec![first];
        while permits.len() < MAX_READ_COUNT {
            match capacity.try_acquire() {
                Some(p) => permits.push(p),
                None => break,
            }
        }
        // A read is never cancelled: entries Redis hands over must reach a
        // job. It does not block, so shutdown never waits long for it.
        if shutdown.is_cancelled() {
            return;
        }
        let read = match reader.read(permits.len()).await {
            Ok(deliveries) if deliveries.is_empty() => {
                drop(permits);
                // A wait takes nothing, so it may be cut short (a pause
                // is then seen at once).
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = paused.changed() => Ok(()),
                    waited = reader.wait() => waited,
                }
            }
            Ok(deliveries) => {
                // Claimed in the background, so the next read goes out while
                // this one commits; reads that meet share a claim statement.
                jobs.spawn(claim_and_run(
                    Arc::clone(&lifecycle),
                    deliveries,
                    permits,
                    Arc::clone(&capacity.slots),
                    jobs.clone(),
                ));
                Ok(())
            }
            Err(e) => Err(e),
        };
        match read {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(e) => {
                tracing::warn!(stream = %reader.stream(), error = %e, retry_in_ms = backoff.as_millis() as u64, "reading the queue failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
