//! Postgres (sqlx): the only place that holds SQL. Every statement filters by
//! `tenant_id` where a caller names a run, and every status change states the
//! status it expects, so a late or forged writer changes nothing. Batches
//! that may meet on the same rows never wait on each other in a cycle:
//! heartbeats and completions lock their runs in id order first, dispatch
//! records skip rows a worker is claiming; what is left (a duplicate entry
//! claimed by two workers at once) is retried when Postgres reports a deadlock.
//!
//! No index mentions `status` (see migration 000007): a claim, heartbeat
//! or dispatch record then touches no index (a HOT update), and a
//! status condition is always checked on the row, never used to pick a
//! small partial index (which, with statistics saying it was nearly empty,
//! was once scanned whole per listed run: 515 ms for 1,000 completions).
//! "Active" is written `completed_at IS NULL`, the predicate of the indexes
//! over active runs. Batch statements find their rows by primary key.
//! The producer's batch statements (1 to 1,000 rows per call) are also
//! planned per call (`persistent(false)`, ~0.4 ms against ~30 ms of work):
//! a plan cached while the table was small (a hash join over a sequential
//! scan) made bulk starts 20 times slower once it had grown.

mod access;
mod actions;
mod batch_start;
mod concurrency;
mod credits;
mod listing;
mod literal;
mod notifications;
mod pooler;
mod queues;
mod rollups;
mod schedules;
mod session;

pub use access::NewToken;
pub use actions::{CancelResult, OperatorAction, QueuePause};
pub use credits::GiveBack;
pub use pooler::{Pooler, behind_transaction_pooler};
pub use queues::{QueueActivity, QueueThroughput};
pub use rollups::ROLLUP_DELAY;
pub use schedules::{Schedule, ScheduleSlot, ScheduleSpec};
pub use session::Session;

use pooler::Db;

use sqlx::PgPool;
use sqlx::types::Json;

use crate::error::{Error, Result, db};
use crate::registry::IdentityRule;
use crate::request::RunRequest;
use crate::run::{Failure, Outcome, ReclaimReason, Run, RunId, Status, SummaryCounts};

/// The embedded schema migrations (`migrations/` at the workspace root).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Columns of [`Run`], for `SELECT` and `RETURNING`.
const RUN_COLUMNS: &str = "id, tenant_id, user_id, initiator_name, type, status, outcome, run_identity_hash, \
     summary_counts, failure_summary, context, inputs, queue, shard, attempt, max_attempts, holder, heartbeat_at, \
     dispatch_entry_id, dispatched_at, reclaims, identity_rule, lease_seconds, not_before, domain_id, \
     started_at, completed_at, created_at, updated_at, cancel_requested_at, cancel_request, retry_of, \
     concurrency_key, slot_wait_since, traceparent";

/// A one-row `FROM` item that makes the statement's own transaction commit
/// without waiting for the WAL flush (`synchronous_commit` is local to that
/// transaction). Only for claims and heartbeats: a crash of Postgres may undo
/// the last fraction of a second of them, which leaves the run queued (or its
/// heartbeat older) exactly as if the worker had died before claiming, and the
/// reaper's lost-dispatch and stuck passes recover it. Any later durable
/// commit, such as the run's completion, flushes the claim with it, so a
/// completion never survives without its claim. Creations and completions
/// stay durable: a producer and XACK act on them.
const ASYNC_COMMIT: &str = "(SELECT set_config('synchronous_commit', 'off', true)) AS async_commit";

/// What a claim sets on a queued run it takes (`c` names the claim). The
/// plain claim, `opsrun_claim_queued` (migration 000024), sets the same:
/// change both together.
const CLAIMED_SET: &str = "status = 'running', attempt = attempt + 1, holder = $5, lease_seconds = c.c_lease, \
     heartbeat_at = now(), started_at = now(), dispatch_entry_id = c.c_entry, shard = c.c_shard, \
     updated_at = now()";

/// The claimed count of a new run's concurrency key (`$16`), made with the
/// run if it has none yet: a claim locks it to count the key's runs (see
/// migration 000020), so it must exist before the first claim. Looked for
/// first: an insert that conflicts waits for a claim updating the row to
/// commit, which would make every start of a key wait on its claims.
const CLAIMS_ROW: &str = "INSERT INTO concurrency_claims (concurrency_key, runs) \
     SELECT $16::text, 0 WHERE $16::text IS NOT NULL \
       AND NOT EXISTS (SELECT 1 FROM concurrency_claims WHERE concurrency_key = $16::text) \
     ON CONFLICT DO NOTHING";

/// How often `insert_or_get_active` retries when the active twin completes
/// between the insert and the read.
const DEDUPE_ROUNDS: usize = 8;

/// A run to insert: a validated request resolved against the registry.
#[derive(Debug, Clone, Copy)]
pub struct NewRun<'a> {
    /// The caller's request.
    pub request: &'a RunRequest,
    /// The queue it goes to.
    pub queue: &'a str,
    /// Its identity hash.
    pub identity: &'a str,
    /// How the identity was computed.
    pub rule: &'a IdentityRule,
    /// Attempts allowed.
    pub max_attempts: i32,
    /// Lease in seconds.
    pub lease_seconds: i32,
    /// The domain record an adapter run mirrors; `None` for dispatched runs.
    pub domain_id: Option<&'a str>,
    /// The shard of the queue it is sent to (see [`crate::transport::shard_for`]).
    pub shard: i16,
    /// The concurrency key it counts against (see [`crate::concurrency`]).
    pub concurrency_key: Option<&'a str>,
}

/// A delivered entry whose run a worker claims (see [`Ledger::mark_running_many`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRequest {
    /// The tenant the entry names.
    pub tenant_id: i64,
    /// The run the entry names.
    pub run_id: RunId,
    /// The attempt the entry was sent for.
    pub attempt: i32,
    /// The lease the claimant heartbeats against.
    pub lease: std::time::Duration,
    /// The stream entry that delivered it, recorded as the run's dispatch:
    /// the entry the reaper acknowledges should this worker vanish.
    pub entry_id: String,
    /// The shard of the run's queue that entry is in.
    pub shard: i16,
    /// The claimant's concurrency limit for the run's type, if it has one
    /// (see [`crate::concurrency`]).
    pub limit: Option<u32>,
    /// The digest of the run's concurrency key as its entry names it (see
    /// [`Entry::concurrency_key_digest`](crate::transport::Entry::concurrency_key_digest)).
    pub concurrency_key_digest: Option<String>,
}

/// A run written completed by [`Ledger::complete_many`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct Completed {
    /// The run.
    pub run_id: RunId,
    /// Whether runs wait for a concurrency slot of its key (see
    /// [`crate::concurrency`]): its slot is free now, so wake them.
    pub slot_waiters: bool,
}

/// A sent stream entry to record on its run (see [`Ledger::record_dispatches`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DispatchRecord {
    /// The run's tenant.
    pub tenant_id: i64,
    /// The run.
    pub run_id: RunId,
    /// The run's attempt count when the entry was sent (the entry carries
    /// the next attempt).
    pub attempt: i32,
    /// The stream entry.
    pub entry_id: String,
    /// The shard of the run's queue it was sent to.
    pub shard: i16,
}

/// A worker's hold on a running run: completion is fenced on all of it, so a
/// worker whose run was reclaimed (new holder or attempt) writes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim<'a> {
    /// The run's tenant.
    pub tenant_id: i64,
    /// The run.
    pub run_id: RunId,
    /// The consumer holding it.
    pub holder: &'a str,
    /// The attempt it is running.
    pub attempt: i32,
}

/// What a terminal write is fenced on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fence<'a> {
    /// The worker holding the claim completes its own run.
    Claim(Claim<'a>),
    /// The reaper ends a run whose holder stopped heartbeating: the claim
    /// must be unchanged and its heartbeat older than `lease`, so a run that
    /// still heartbeats is never taken.
    Expired {
        /// The claim the reaper saw.
        claim: Claim<'a>,
        /// How long without a heartbeat counts as stuck.
        lease: std::time::Duration,
    },
}

impl<'a> Fence<'a> {
    fn claim(&self) -> &Claim<'a> {
        match self {
            Fence::Claim(claim) | Fence::Expired { claim, .. } => claim,
        }
    }

    /// The lease in seconds, or `None` for a live claim.
    fn lease_secs(&self) -> Option<f64> {
        match self {
            Fence::Claim(_) => None,
            Fence::Expired { lease, .. } => Some(lease.as_secs_f64()),
        }
    }
}

/// The terminal state of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Terminal<'a> {
    /// How it ended.
    pub outcome: Outcome,
    /// Item counts.
    pub counts: &'a SummaryCounts,
    /// Sanitized, folded failures.
    pub failures: &'a [Failure],
    /// A reclaim to record with it (the reaper's `lease_expired`), stamped
    /// with the holder, the attempt and the Postgres clock.
    pub reclaim: Option<ReclaimReason>,
}

/// The run ledger over a Postgres pool.
#[derive(Debug, Clone)]
pub struct Ledger {
    db: Db,
    /// When a batch start last met an identity already active (shared by
    /// the clones of this ledger; see [`Ledger::insert_many`]).
    last_conflict: std::sync::Arc<batch_start::LastConflict>,
}

/// Build a statement from a template with `{cols}` replaced by
/// [`RUN_COLUMNS`], `{async_commit}` by [`ASYNC_COMMIT`] and `{claims_row}`
/// by [`CLAIMS_ROW`]. Only ever called with `'static` templates, so no
/// caller text reaches SQL.
fn sql(template: &'static str) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(
        template
            .replace("{cols}", RUN_COLUMNS)
            .replace("{async_commit}", ASYNC_COMMIT)
            .replace("{claims_row}", CLAIMS_ROW)
            .replace("{claimed_set}", CLAIMED_SET),
    )
}

impl Ledger {
    /// A ledger over `pool`.
    pub fn new(pool: PgPool) -> Self {
        Self::behind(pool, Pooler::Direct)
    }

    /// A ledger over `pool`, whose connections go through `pooler`.
    pub fn behind(pool: PgPool, pooler: Pooler) -> Self {
        Ledger {
            db: Db { pool, pooler },
            last_conflict: Default::default(),
        }
    }

    /// The underlying pool.
    pub fn pool(&self) -> &PgPool {
        &self.db.pool
    }

    /// What sits between this ledger and Postgres.
    pub fn pooler(&self) -> Pooler {
        self.db.pooler
    }

    /// A session that keeps one connection across its statements, for a loop
    /// that writes many times a second (see [`Session`]).
    pub fn session(&self) -> Session {
        Session::new(self.db.clone())
    }

    /// Apply pending migrations (serialized across processes by an advisory
    /// lock, which a transaction pooler would leave held on whichever server
    /// connection took it: refused there, see [`Pooler`]).
    pub async fn migrate(&self) -> Result<()> {
        if self.db.pooler == Pooler::Transaction {
            return Err(Error::invalid(
                "database_url",
                "migrations cannot run through a transaction pooler: run `producer migrate` with a \
                 direct DATABASE_URL and start the services with --no-migrate",
            ));
        }
        MIGRATOR.run(&self.db.pool).await?;
        Ok(())
    }

    /// Whether Postgres answers a statement (a health check).
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.db)
            .await
            .map_err(db("checking postgres"))?;
        Ok(())
    }

    /// How far this ledger's server is behind its primary: zero for a
    /// primary or a replica that has replayed all it received, else the time
    /// since the last transaction it replayed.
    pub async fn replay_lag(&self) -> Result<std::time::Duration> {
        let seconds: f64 = sqlx::query_scalar(
            "SELECT CASE WHEN NOT pg_is_in_recovery() THEN 0 \
                         WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 \
                         ELSE coalesce(extract(epoch FROM now() - pg_last_xact_replay_timestamp()), 0) \
                    END::float8",
        )
        .fetch_one(&self.db)
        .await
        .map_err(db("measuring replica lag"))?;
        Ok(std::time::Duration::from_secs_f64(seconds.max(0.0)))
    }

    /// Create a queued run, or return the run that holds its identity:
    /// for `deterministic` the active run (unchanged: its initiator is never
    /// replaced), for `strict` the run in any state (that occurrence runs
    /// once); `nonce` identities never collide. The unique indexes decide
    /// races; each statement runs with a fresh snapshot, and the loop covers
    /// a twin completing in between. A run without a start time (and not an
    /// adapter's, which is never dispatched) is stamped as dispatched now
    /// (`dispatched_at`): its XADD follows the commit, and the lost-dispatch
    /// pass counts its grace period from here. Returns the run and whether
    /// it was created.
    pub async fn insert_or_get(&self, new: &NewRun<'_>) -> Result<(Run, bool)> {
        // Deterministic and nonce runs conflict only on the active-identity
        // index; a strict run may also conflict on the strict index, in any
        // state, hence no conflict target there.
        const INSERT_ACTIVE: &str = "WITH key AS ({claims_row}) INSERT INTO operation_runs \
               (tenant_id, user_id, initiator_name, type, run_identity_hash, context, inputs, queue, \
                identity_rule, max_attempts, lease_seconds, not_before, domain_id, shard, retry_of, concurrency_key, \
                traceparent, dispatched_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
                 CASE WHEN $12::timestamptz IS NULL AND $13::text IS NULL THEN now() END) \
             ON CONFLICT (tenant_id, run_identity_hash) WHERE completed_at IS NULL DO NOTHING \
             RETURNING {cols}";
        const INSERT_STRICT: &str = "WITH key AS ({claims_row}) INSERT INTO operation_runs \
               (tenant_id, user_id, initiator_name, type, run_identity_hash, context, inputs, queue, \
                identity_rule, max_attempts, lease_seconds, not_before, domain_id, shard, retry_of, concurrency_key, \
                traceparent, dispatched_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
                 CASE WHEN $12::timestamptz IS NULL AND $13::text IS NULL THEN now() END) \
             ON CONFLICT DO NOTHING RETURNING {cols}";
        const SELECT_ACTIVE: &str = "SELECT {cols} FROM operation_runs \
             WHERE tenant_id = $1 AND run_identity_hash = $2 AND completed_at IS NULL";
        const SELECT_STRICT: &str = "SELECT {cols} FROM operation_runs \
             WHERE tenant_id = $1 AND run_identity_hash = $2 AND (identity_rule = 'strict' OR completed_at IS NULL) \
             ORDER BY status = 'completed', id LIMIT 1";
        let strict = matches!(new.rule, IdentityRule::Strict { .. });
        let request = new.request;
        for _ in 0..DEDUPE_ROUNDS {
            let created =
                sqlx::query_as::<_, Run>(sql(if strict { INSERT_STRICT } else { INSERT_ACTIVE }))
                    .bind(request.tenant_id)
                    .bind(request.initiator.user_id)
                    .bind(&request.initiator.name)
                    .bind(&request.run_type)
                    .bind(new.identity)
                    .bind(Json(&request.context))
                    .bind(Json(&request.inputs))
                    .bind(new.queue)
                    .bind(new.rule.as_str())
                    .bind(new.max_attempts)
                    .bind(new.lease_seconds)
                    .bind(request.not_before)
                    .bind(new.domain_id)
                    .bind(new.shard)
                    .bind(request.retry_of)
                    .bind(new.concurrency_key)
                    .bind(request.traceparent.map(|t| t.to_string()))
                    .fetch_optional(&self.db)
                    .await
                    .map_err(db("inserting run"))?;
            if let Some(run) = created {
                return Ok((run, true));
            }
            let existing =
                sqlx::query_as::<_, Run>(sql(if strict { SELECT_STRICT } else { SELECT_ACTIVE }))
                    .bind(request.tenant_id)
                    .bind(new.identity)
                    .fetch_optional(&self.db)
                    .await
                    .map_err(db("reading the run with this identity"))?;
            if let Some(run) = existing {
                return Ok((run, false));
            }
        }
        Err(crate::Error::DedupeContention)
    }

    /// The run holding a strict identity, in any state.
    pub async fn run_by_strict_identity(
        &self,
        tenant_id: i64,
        identity: &str,
    ) -> Result<Option<Run>> {
        sqlx::query_as::<_, Run>(sql("SELECT {cols} FROM operation_runs \
             WHERE tenant_id = $1 AND run_identity_hash = $2 AND identity_rule = 'strict'"))
        .bind(tenant_id)
        .bind(identity)
        .fetch_optional(&self.db)
        .await
        .map_err(db("reading the run with this identity"))
    }

    /// The active runs holding any of these `(tenant_id, identity)` pairs.
    pub async fn active_by_identity(&self, identities: &[(i64, &str)]) -> Result<Vec<Run>> {
        if identities.is_empty() {
            return Ok(Vec::new());
        }
        sqlx::query_as::<_, Run>(sql(
            "SELECT {cols} FROM unnest($1::bigint[], $2::text[]) AS k(k_tenant, k_hash) \
             JOIN operation_runs ON tenant_id = k.k_tenant AND run_identity_hash = k.k_hash \
             WHERE completed_at IS NULL",
        ))
        .persistent(false)
        .bind(identities.iter().map(|i| i.0).collect::<Vec<_>>())
        .bind(
            identities
                .iter()
                .map(|i| i.1.to_string())
                .collect::<Vec<_>>(),
        )
        .fetch_all(&self.db)
        .await
        .map_err(db("reading active runs"))
    }

    /// Record the stream entries of many dispatches in one statement, each
    /// on its run only while that run still awaits the attempt the entry was
    /// sent for: a record arriving after the run was claimed, failed and
    /// queued for its next attempt must not pass for that attempt's dispatch
    /// (the due pass would never send it). `dispatched_at` is left alone: the
    /// statement that decided the dispatch stamped it. A run a worker is
    /// claiming right now is skipped rather than waited for (its claim
    /// records the delivering entry itself).
    ///
    /// Only the reaper's dispatches, and the entries it finds for runs that
    /// have waited long, are recorded: a producer's are not (one write per
    /// run saved), since a claim records the entry it came from.
    pub async fn record_dispatches(&self, dispatches: &[DispatchRecord]) -> Result<()> {
        if dispatches.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "WITH d AS (SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::int[], $4::text[], $5::smallint[]) \
                 AS d(tenant_id, id, attempt, entry_id, shard)), \
             locked AS (SELECT r.id, d.entry_id, d.shard FROM d JOIN operation_runs r \
                     ON r.id = d.id AND r.tenant_id = d.tenant_id AND r.attempt = d.attempt \
                 WHERE r.status = 'queued' FOR NO KEY UPDATE OF r SKIP LOCKED) \
             UPDATE operation_runs r SET dispatch_entry_id = l.entry_id, shard = l.shard \
             FROM locked l WHERE r.id = l.id AND r.status = 'queued'",
        )
        .persistent(false)
        .bind(dispatches.iter().map(|d| d.tenant_id).collect::<Vec<_>>())
        .bind(dispatches.iter().map(|d| d.run_id.0).collect::<Vec<_>>())
        .bind(dispatches.iter().map(|d| d.attempt).collect::<Vec<_>>())
        .bind(
            dispatches
                .iter()
                .map(|d| d.entry_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(dispatches.iter().map(|d| d.shard).collect::<Vec<_>>())
        .execute(&self.db)
        .await
        .map_err(db("recording dispatches"))?;
        Ok(())
    }

    /// One run of one tenant.
    pub async fn get(&self, tenant_id: i64, id: RunId) -> Result<Option<Run>> {
        sqlx::query_as::<_, Run>(sql(
            "SELECT {cols} FROM operation_runs WHERE tenant_id = $1 AND id = $2",
        ))
        .bind(tenant_id)
        .bind(id)
        .fetch_optional(&self.db)
        .await
        .map_err(db("reading run"))
    }

    /// End a run that never started (`queued → completed/failed`), e.g. when
    /// its dispatch failed. `None` when it is no longer queued.
    pub async fn fail_queued(
        &self,
        tenant_id: i64,
        id: RunId,
        failure: &Failure,
    ) -> Result<Option<Run>> {
        sqlx::query_as::<_, Run>(sql("UPDATE operation_runs \
             SET status = 'completed', outcome = 'failed', completed_at = now(), \
                 failure_summary = failure_summary || $3 \
             WHERE tenant_id = $1 AND id = $2 AND status = 'queued' RETURNING {cols}"))
        .bind(tenant_id)
        .bind(id)
        .bind(Json([failure]))
        .fetch_optional(&self.db)
        .await
        .map_err(db("failing queued run"))
    }

    /// Claim a run for `holder` (`queued → running`) if it is queued, belongs
    /// to `tenant_id`, awaits exactly `attempt` and is due. Counts the attempt
    /// before the job body runs, and stamps the `lease` the claimant
    /// heartbeats against (the worker's registry is the one that counts). `None` means a duplicate, late or forged entry.
    pub async fn mark_running(
        &self,
        tenant_id: i64,
        id: RunId,
        attempt: i32,
        holder: &str,
        lease: std::time::Duration,
    ) -> Result<Option<Run>> {
        sqlx::query_as::<_, Run>(sql("UPDATE operation_runs \
             SET status = 'running', attempt = attempt + 1, holder = $4, lease_seconds = $5, \
                 heartbeat_at = now(), started_at = now() \
             WHERE tenant_id = $1 AND id = $2 AND status = 'queued' AND attempt = $3 - 1 \
               AND (not_before IS NULL OR not_before <= now()) \
             RETURNING {cols}"))
        .bind(tenant_id)
        .bind(id)
        .bind(attempt)
        .bind(holder)
        .bind(lease.as_secs().clamp(1, i32::MAX as u64) as i32)
        .fetch_optional(&self.db)
        .await
        .map_err(db("claiming run"))
    }

    /// Claim many runs in one statement, as [`Ledger::mark_running`] does one:
    /// each request's run is claimed if it is queued, of that tenant,
    /// awaiting that attempt and due; the delivering entry is recorded as its
    /// dispatch. Returns the runs claimed (a run listed twice is claimed once).
    /// Commits asynchronously (see `ASYNC_COMMIT` in this module).
    pub async fn mark_running_many(
        &self,
        claims: &[ClaimRequest],
        holder: &str,
    ) -> Result<Vec<Run>> {
        self.session().mark_running_many(claims, holder).await
    }

    /// Refresh the heartbeat of every listed run `holder` still holds, in one
    /// statement. Returns the runs refreshed; a listed run missing from it is
    /// no longer held by `holder`. Commits asynchronously (see `ASYNC_COMMIT` in this module).
    pub async fn heartbeat(&self, holder: &str, ids: &[RunId]) -> Result<Vec<RunId>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<i64> = ids.iter().map(|id| id.0).collect();
        sqlx::query_scalar::<_, RunId>(sql("WITH locked AS (SELECT id FROM operation_runs \
                 WHERE id = ANY($1) AND status = 'running' AND holder = $2 \
                 ORDER BY id FOR NO KEY UPDATE) \
             UPDATE operation_runs SET heartbeat_at = now(), updated_at = now() FROM {async_commit} \
             WHERE id IN (SELECT id FROM locked) AND status = 'running' AND holder = $2 \
             RETURNING id"))
        .bind(&ids)
        .bind(holder)
        .fetch_all(&self.db)
        .await
        .map_err(db("heartbeating runs"))
    }

    /// Write the terminal state: the one terminal path of workers and the
    /// reaper alike. Fenced on the claim (holder and attempt), and for the
    /// reaper also on an expired heartbeat; a writer that lost the run changes
    /// nothing and gets `None`.
    pub async fn complete(&self, fence: Fence<'_>, terminal: Terminal<'_>) -> Result<Option<Run>> {
        let claim = fence.claim();
        sqlx::query_as::<_, Run>(sql("UPDATE operation_runs \
             SET status = 'completed', outcome = $5, summary_counts = $6, \
                 failure_summary = CASE WHEN $8::float8 IS NULL THEN $7 ELSE failure_summary || $7 END, \
                 reclaims = CASE WHEN $9::text IS NULL THEN reclaims ELSE reclaims || jsonb_build_array( \
                     jsonb_build_object('reason', $9::text, 'attempt', attempt, 'holder', holder, 'at', now())) END, \
                 completed_at = now() \
             WHERE tenant_id = $1 AND id = $2 AND status = 'running' AND holder = $3 AND attempt = $4 \
               AND ($8::float8 IS NULL OR heartbeat_at < now() - make_interval(secs => $8)) \
             RETURNING {cols}"))
        .bind(claim.tenant_id)
        .bind(claim.run_id)
        .bind(claim.holder)
        .bind(claim.attempt)
        .bind(terminal.outcome)
        .bind(Json(terminal.counts))
        .bind(Json(terminal.failures))
        .bind(fence.lease_secs())
        .bind(terminal.reclaim.map(ReclaimReason::as_str))
        .fetch_optional(&self.db)
        .await
        .map_err(db("completing run"))
    }

    /// Put a run whose attempt failed retryably back in the queue, fenced on
    /// the claim: not due before `delay` from now (Postgres clock), with the
    /// failures so far. The due pass dispatches it when it comes.
    pub async fn retry(
        &self,
        claim: &Claim<'_>,
        delay: std::time::Duration,
        failures: &[Failure],
    ) -> Result<Option<Run>> {
        sqlx::query_as::<_, Run>(sql("UPDATE operation_runs \
             SET status = 'queued', holder = NULL, dispatch_entry_id = NULL, dispatched_at = NULL, \
                 not_before = now() + make_interval(secs => $5), failure_summary = $6 \
             WHERE tenant_id = $1 AND id = $2 AND status = 'running' AND holder = $3 AND attempt = $4 \
             RETURNING {cols}"))
        .bind(claim.tenant_id)
        .bind(claim.run_id)
        .bind(claim.holder)
        .bind(claim.attempt)
        .bind(delay.as_secs_f64())
        .bind(Json(failures))
        .fetch_optional(&self.db)
        .await
        .map_err(db("scheduling a retry"))
    }

    /// Take up to `limit` queued runs that have come due and were never
    /// dispatched, earliest first, marking them as being dispatched. Rows
    /// another scheduler holds are skipped, so each due run is taken once.
    pub async fn take_due(&self, limit: i64) -> Result<Vec<Run>> {
        sqlx::query_as::<_, Run>(sql("UPDATE operation_runs SET dispatched_at = now() \
             WHERE id IN (SELECT id FROM operation_runs \
                 WHERE completed_at IS NULL AND status = 'queued' AND dispatch_entry_id IS NULL AND dispatched_at IS NULL \
                   AND not_before <= now() AND slot_wait_since IS NULL \
                 ORDER BY not_before, id LIMIT $1 FOR UPDATE SKIP LOCKED) \
               AND status = 'queued' AND dispatched_at IS NULL \
             RETURNING {cols}"))
        .bind(limit)
        .fetch_all(&self.db)
        .await
        .map_err(db("taking due runs"))
    }

    /// Write the terminal states of many runs in one statement, each fenced
    /// on its claim exactly as [`Ledger::complete`] with [`Fence::Claim`]
    /// does. Returns the runs completed; a run missing from the result was
    /// no longer held by that claim. (The rows are not read back: the caller
    /// knows what it wrote, and reading five JSON columns back per run cost
    /// both sides for nothing.)
    pub async fn complete_many(
        &self,
        completions: &[(Claim<'_>, Terminal<'_>)],
    ) -> Result<Vec<Completed>> {
        self.session().complete_many(completions).await
    }

    /// Running runs whose heartbeat is older than their lease (Postgres
    /// clock), stalest first. Adapter runs are the domain's to move.
    pub async fn stale_running(&self, limit: i64) -> Result<Vec<Run>> {
        sqlx::query_as::<_, Run>(sql("SELECT {cols} FROM operation_runs \
             WHERE completed_at IS NULL AND status = 'running' AND domain_id IS NULL \
               AND heartbeat_at < now() - make_interval(secs => lease_seconds) \
             ORDER BY heartbeat_at LIMIT $1"))
        .bind(limit)
        .fetch_all(&self.db)
        .await
        .map_err(db("finding stale running runs"))
    }

    /// Take a stuck run back (`running → queued`), recording the reclaim, if
    /// its claim is unchanged and its heartbeat still older than `lease`. The
    /// caller dispatches it again; `dispatched_at` is stamped now so the
    /// lost-dispatch pass gives that dispatch its full grace period. `None` when someone else got there first
    /// or the run heartbeated meanwhile.
    pub async fn requeue_expired(
        &self,
        claim: &Claim<'_>,
        lease: std::time::Duration,
    ) -> Result<Option<Run>> {
        sqlx::query_as::<_, Run>(sql("UPDATE operation_runs \
             SET status = 'queued', holder = NULL, dispatch_entry_id = NULL, dispatched_at = now(), \
                 reclaims = reclaims || jsonb_build_array(jsonb_build_object( \
                     'reason', 'lease_expired', 'attempt', attempt, 'holder', holder, 'at', now())) \
             WHERE tenant_id = $1 AND id = $2 AND status = 'running' AND holder = $3 AND attempt = $4 \
               AND heartbeat_at < now() - make_interval(secs => $5) \
             RETURNING {cols}"))
        .bind(claim.tenant_id)
        .bind(claim.run_id)
        .bind(claim.holder)
        .bind(claim.attempt)
        .bind(lease.as_secs_f64())
        .fetch_optional(&self.db)
        .await
        .map_err(db("requeueing expired run"))
    }

    /// Queued runs whose latest dispatch (or creation, if none was recorded)
    /// is older than `age`, oldest first. Adapter runs are never dispatched.
    pub async fn queued_dispatched_before(
        &self,
        age: std::time::Duration,
        limit: i64,
    ) -> Result<Vec<Run>> {
        sqlx::query_as::<_, Run>(sql("SELECT {cols} FROM operation_runs \
             WHERE completed_at IS NULL AND status = 'queued' AND domain_id IS NULL AND slot_wait_since IS NULL \
               AND COALESCE(dispatched_at, created_at) < now() - make_interval(secs => $1) \
             ORDER BY COALESCE(dispatched_at, created_at) LIMIT $2"))
        .bind(age.as_secs_f64())
        .bind(limit)
        .fetch_all(&self.db)
        .await
        .map_err(db("finding queued runs with old dispatches"))
    }

    /// Claim the right to dispatch a queued run again: only the caller that
    /// saw the same latest dispatch (entry and time) wins, so two reapers
    /// never both send it.
    /// Records the reason and stamps `dispatched_at`.
    pub async fn begin_redispatch(
        &self,
        run: &Run,
        reason: crate::run::ReclaimReason,
    ) -> Result<Option<Run>> {
        sqlx::query_as::<_, Run>(sql("UPDATE operation_runs \
             SET dispatched_at = now(), \
                 reclaims = reclaims || jsonb_build_array(jsonb_build_object( \
                     'reason', $4::text, 'attempt', attempt, 'at', now())) \
             WHERE tenant_id = $1 AND id = $2 AND status = 'queued' AND attempt = $5 \
               AND dispatch_entry_id IS NOT DISTINCT FROM $3 AND dispatched_at IS NOT DISTINCT FROM $6 \
             RETURNING {cols}"))
        .bind(run.tenant_id)
        .bind(run.id)
        .bind(&run.dispatch_entry_id)
        .bind(reason.as_str())
        .bind(run.attempt)
        .bind(run.dispatched_at)
        .fetch_optional(&self.db)
        .await
        .map_err(db("claiming a re-dispatch"))
    }

    /// Delete up to `batch` runs completed before `age` ago, in one short
    /// statement; rows another deleter holds are skipped. Active runs are
    /// never touched. Returns how many were deleted.
    pub async fn delete_completed_before(
        &self,
        age: std::time::Duration,
        batch: i64,
    ) -> Result<u64> {
        // The runs' notifications go in the same statement (no foreign key:
        // a per-row cascade halved the rate).
        let deleted: i64 = sqlx::query_scalar(
            "WITH doomed AS ( \
                 SELECT id FROM operation_runs \
                 WHERE status = 'completed' AND completed_at < now() - make_interval(secs => $1) \
                 ORDER BY completed_at LIMIT $2 FOR UPDATE SKIP LOCKED), \
             gone AS (DELETE FROM operation_runs WHERE id IN (SELECT id FROM doomed) \
                 AND status = 'completed' RETURNING id), \
             notes AS (DELETE FROM notifications WHERE run_id IN (SELECT id FROM gone)) \
             SELECT count(*) FROM gone",
        )
        .bind(age.as_secs_f64())
        .bind(batch)
        .fetch_one(&self.db)
        .await
        .map_err(db("deleting completed runs"))?;
        Ok(deleted as u64)
    }

    /// Move a run from `expected` to `status` with the given outcome, counts
    /// and failures (the original service interface). Sets `started_at` on
    /// the way to running and `completed_at` on completion. `None` when the
    /// run is not in `expected` any more.
    #[allow(clippy::too_many_arguments)]
    pub async fn update_status(
        &self,
        tenant_id: i64,
        id: RunId,
        expected: Status,
        status: Status,
        outcome: Outcome,
        counts: &SummaryCounts,
        failures: &[Failure],
    ) -> Result<Option<Run>> {
        sqlx::query_as::<_, Run>(sql("UPDATE operation_runs \
             SET status = $4, outcome = $5, summary_counts = $6, failure_summary = $7, \
                 started_at = CASE WHEN $4 = 'running' THEN COALESCE(started_at, now()) ELSE started_at END, \
                 holder = CASE WHEN $4 = 'running' THEN COALESCE(holder, 'service') ELSE holder END, \
                 heartbeat_at = CASE WHEN $4 = 'running' THEN now() ELSE heartbeat_at END, \
                 completed_at = CASE WHEN $4 = 'completed' THEN now() ELSE NULL END \
             WHERE tenant_id = $1 AND id = $2 AND status = $3 RETURNING {cols}"))
        .bind(tenant_id)
        .bind(id)
        .bind(expected)
        .bind(status)
        .bind(outcome)
        .bind(Json(counts))
        .bind(Json(failures))
        .fetch_optional(&self.db)
        .await
        .map_err(db("updating run"))
    }
}
