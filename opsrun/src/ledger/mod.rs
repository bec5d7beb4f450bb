//! Postgres (sqlx): the only place that holds SQL. Every statement filters by
//! `tenant_id` where a caller names a run, and every status change states the
//! status it expects, so a late or forged writer changes nothing.

use sqlx::PgPool;
use sqlx::types::Json;

use crate::error::{Result, db};
use crate::request::RunRequest;
use crate::run::{Failure, Outcome, Run, RunId, Status, SummaryCounts};

/// The embedded schema migrations (`migrations/` at the workspace root).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Columns of [`Run`], for `SELECT` and `RETURNING`.
const RUN_COLUMNS: &str = "id, tenant_id, user_id, initiator_name, type, status, outcome, run_identity_hash, \
     summary_counts, failure_summary, context, inputs, queue, attempt, max_attempts, holder, heartbeat_at, \
     dispatch_entry_id, dispatched_at, started_at, completed_at, created_at, updated_at";

/// How often `insert_or_get_active` retries when the active twin completes
/// between the insert and the read.
const DEDUPE_ROUNDS: usize = 8;

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

/// The run ledger over a Postgres pool.
#[derive(Debug, Clone)]
pub struct Ledger {
    pool: PgPool,
}

/// Build a statement from a template with `{cols}` replaced by [`RUN_COLUMNS`].
/// Only ever called with `'static` templates, so no caller text reaches SQL.
fn sql(template: &'static str) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(template.replace("{cols}", RUN_COLUMNS))
}

impl Ledger {
    /// A ledger over `pool`.
    pub fn new(pool: PgPool) -> Self {
        Ledger { pool }
    }

    /// The underlying pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Apply pending migrations (serialized across processes by an advisory lock).
    pub async fn migrate(&self) -> Result<()> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// Create a queued run for `request`, or return the active run that holds
    /// the same identity (unchanged: its initiator is never replaced). The
    /// partial unique index decides races; each statement runs with a fresh
    /// snapshot, and the loop covers a twin completing in between.
    /// Returns the run and whether it was created.
    pub async fn insert_or_get_active(
        &self,
        request: &RunRequest,
        identity: &str,
    ) -> Result<(Run, bool)> {
        const INSERT: &str = "INSERT INTO operation_runs \
               (tenant_id, user_id, initiator_name, type, run_identity_hash, context, inputs, queue) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (tenant_id, run_identity_hash) WHERE status IN ('queued', 'running') DO NOTHING \
             RETURNING {cols}";
        const SELECT: &str = "SELECT {cols} FROM operation_runs \
             WHERE tenant_id = $1 AND run_identity_hash = $2 AND status IN ('queued', 'running')";
        for _ in 0..DEDUPE_ROUNDS {
            let created = sqlx::query_as::<_, Run>(sql(INSERT))
                .bind(request.tenant_id)
                .bind(request.initiator.user_id)
                .bind(&request.initiator.name)
                .bind(&request.run_type)
                .bind(identity)
                .bind(Json(&request.context))
                .bind(Json(&request.inputs))
                .bind(&request.queue)
                .fetch_optional(&self.pool)
                .await
                .map_err(db("inserting run"))?;
            if let Some(run) = created {
                return Ok((run, true));
            }
            let active = sqlx::query_as::<_, Run>(sql(SELECT))
                .bind(request.tenant_id)
                .bind(identity)
                .fetch_optional(&self.pool)
                .await
                .map_err(db("reading active run"))?;
            if let Some(run) = active {
                return Ok((run, false));
            }
        }
        Err(crate::Error::DedupeContention)
    }

    /// One run of one tenant.
    pub async fn get(&self, tenant_id: i64, id: RunId) -> Result<Option<Run>> {
        sqlx::query_as::<_, Run>(sql(
            "SELECT {cols} FROM operation_runs WHERE tenant_id = $1 AND id = $2",
        ))
        .bind(tenant_id)
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("reading run"))
    }

    /// Record the stream entry of the latest dispatch.
    pub async fn record_dispatch(&self, tenant_id: i64, id: RunId, entry_id: &str) -> Result<()> {
        sqlx::query(
            "UPDATE operation_runs SET dispatch_entry_id = $3, dispatched_at = now() \
             WHERE tenant_id = $1 AND id = $2 AND status <> 'completed'",
        )
        .bind(tenant_id)
        .bind(id)
        .bind(entry_id)
        .execute(&self.pool)
        .await
        .map_err(db("recording dispatch"))?;
        Ok(())
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
        .fetch_optional(&self.pool)
        .await
        .map_err(db("failing queued run"))
    }

    /// Claim a run for `holder` (`queued → running`) if it is queued, belongs
    /// to `tenant_id` and awaits exactly `attempt`. Counts the attempt before
    /// the job body runs. `None` means a duplicate, late or forged entry.
    pub async fn mark_running(
        &self,
        tenant_id: i64,
        id: RunId,
        attempt: i32,
        holder: &str,
    ) -> Result<Option<Run>> {
        sqlx::query_as::<_, Run>(sql("UPDATE operation_runs \
             SET status = 'running', attempt = attempt + 1, holder = $4, \
                 heartbeat_at = now(), started_at = now() \
             WHERE tenant_id = $1 AND id = $2 AND status = 'queued' AND attempt = $3 - 1 \
             RETURNING {cols}"))
        .bind(tenant_id)
        .bind(id)
        .bind(attempt)
        .bind(holder)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("claiming run"))
    }

    /// Refresh the heartbeat of every listed run `holder` still holds, in one
    /// statement. Returns how many were refreshed.
    pub async fn heartbeat(&self, holder: &str, ids: &[RunId]) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let ids: Vec<i64> = ids.iter().map(|id| id.0).collect();
        let done = sqlx::query(
            "UPDATE operation_runs SET heartbeat_at = now() \
             WHERE id = ANY($1) AND status = 'running' AND holder = $2",
        )
        .bind(&ids)
        .bind(holder)
        .execute(&self.pool)
        .await
        .map_err(db("heartbeating runs"))?;
        Ok(done.rows_affected())
    }

    /// Write the terminal state, fenced on the claim (`holder`, `attempt`):
    /// a worker that lost its run changes nothing and gets `None`.
    pub async fn complete(
        &self,
        claim: &Claim<'_>,
        outcome: Outcome,
        counts: &SummaryCounts,
        failures: &[Failure],
    ) -> Result<Option<Run>> {
        sqlx::query_as::<_, Run>(sql("UPDATE operation_runs \
             SET status = 'completed', outcome = $5, summary_counts = $6, failure_summary = $7, \
                 completed_at = now() \
             WHERE tenant_id = $1 AND id = $2 AND status = 'running' AND holder = $3 AND attempt = $4 \
             RETURNING {cols}"))
        .bind(claim.tenant_id)
        .bind(claim.run_id)
        .bind(claim.holder)
        .bind(claim.attempt)
        .bind(outcome)
        .bind(Json(counts))
        .bind(Json(failures))
        .fetch_optional(&self.pool)
        .await
        .map_err(db("completing run"))
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
        .fetch_optional(&self.pool)
        .await
        .map_err(db("updating run"))
    }
}
