//! The consumer-group process: one blocking reader per queue, at most
//! `concurrency` jobs at once, a batched heartbeat, and a graceful drain on
//! shutdown (stop reading, let in-flight jobs finish within the grace period,
//! leave the rest to the reaper).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use opsrun::lifecycle::{Lifecycle, heartbeat_loop};
use opsrun::transport::StreamReader;
use opsrun::{Ledger, Transport};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Default jobs run at once.
pub const DEFAULT_CONCURRENCY: usize = 10;
/// Default BLOCK of one read; also bounds how long shutdown waits for readers.
pub const DEFAULT_BLOCK: Duration = Duration::from_secs(2);
/// Default interval of the batched heartbeat.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// Default time in-flight jobs get to finish after SIGTERM.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Most entries taken in one read.
const MAX_READ_COUNT: usize = 64;

/// How a worker process consumes.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Queues to read.
    pub queues: Vec<String>,
    /// Jobs run at once.
    pub concurrency: usize,
    /// BLOCK time of one read.
    pub block: Duration,
    /// Heartbeat interval (well below the reaper's lease).
    pub heartbeat_interval: Duration,
    /// Time in-flight jobs get after shutdown is requested.
    pub shutdown_grace: Duration,
}

impl WorkerConfig {
    /// Defaults for `queues`.
    pub fn new(queues: Vec<String>) -> Self {
        WorkerConfig {
            queues,
            concurrency: DEFAULT_CONCURRENCY,
            block: DEFAULT_BLOCK,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
        }
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
    let slots = Arc::new(Semaphore::new(config.concurrency.max(1)));
    let jobs = TaskTracker::new();
    let stop_heartbeat = CancellationToken::new();
    let heartbeat = tokio::spawn(heartbeat_loop(
        ledger,
        lifecycle.holder().to_string(),
        lifecycle.in_flight().clone(),
        config.heartbeat_interval,
        stop_heartbeat.clone(),
    ));

    let readers: Vec<_> = config
        .queues
        .iter()
        .map(|queue| {
            let reader = transport.reader(queue, lifecycle.holder());
            tokio::spawn(read_loop(
                reader,
                Arc::clone(&lifecycle),
                Arc::clone(&slots),
                jobs.clone(),
                config.block,
                shutdown.clone(),
            ))
        })
        .collect();
    tracing::info!(consumer = lifecycle.holder(), queues = ?config.queues, concurrency = config.concurrency, "worker started");
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

/// Read one queue: wait for a free slot, read as many entries as there are
/// free slots, run each in its own task holding its slot.
async fn read_loop(
    mut reader: StreamReader,
    lifecycle: Arc<Lifecycle>,
    slots: Arc<Semaphore>,
    jobs: TaskTracker,
    block: Duration,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => return,
            permit = Arc::clone(&slots).acquire_owned() => match permit { Ok(p) => p, Err(_) => return },
        };
        let mut permits = vec![first];
        while permits.len() < MAX_READ_COUNT {
            match Arc::clone(&slots).try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        // The read is never cancelled mid-BLOCK: entries Redis hands over
        // must reach a job, so shutdown waits for the read to return.
        if shutdown.is_cancelled() {
            return;
        }
        match reader.read(permits.len(), block).await {
            Ok(deliveries) => {
                backoff = Duration::from_millis(100);
                // One claim statement for the whole read; each claimed run
                // then runs in its own task, holding its slot.
                let claimed = lifecycle.claim(deliveries).await;
                for (delivery, claim) in claimed {
                    let Ok(run) = claim else { continue };
                    // A read never returns more entries than free slots were asked for.
                    let permit = match permits.pop() {
                        Some(permit) => permit,
                        None => match Arc::clone(&slots).acquire_owned().await {
                            Ok(permit) => permit,
                            Err(_) => return,
                        },
                    };
                    let lifecycle = Arc::clone(&lifecycle);
                    jobs.spawn(async move {
                        lifecycle.run_claimed(delivery, run).await;
                        drop(permit);
                    });
                }
            }
            Err(e) => {
                tracing::warn!(queue = reader.queue(), error = %e, retry_in_ms = backoff.as_millis() as u64, "reading the queue failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
