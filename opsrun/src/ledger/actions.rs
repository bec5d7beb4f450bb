//! Operator actions on runs (cancel) and queues (pause, resume), and their
//! audit trail: every action is recorded with who, when, why and what it
//! did, in the statement that acts (the `opsrun_cancel_run` and
//! `opsrun_pause_queue` functions of migrations 000011 and 000012).

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::Ledger;
use crate::error::{Result, db};
use crate::request::Initiator;
use crate::run::RunId;

/// What a cancel did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelResult {
    /// The run was queued (or waiting to retry) and is now completed `cancelled`.
    Cancelled,
    /// The run is running: its worker was asked to stop it, and will
    /// complete it `cancelled` (unless the job's own completion came first).
    CancelRequested,
    /// A cancel of this running run was already asked for; nothing changed.
    AlreadyRequested,
    /// The run had already completed; nothing changed.
    AlreadyCompleted,
}

impl CancelResult {
    /// The name stored in the audit trail and printed by the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            CancelResult::Cancelled => "cancelled",
            CancelResult::CancelRequested => "cancel_requested",
            CancelResult::AlreadyRequested => "already_requested",
            CancelResult::AlreadyCompleted => "already_completed",
        }
    }

    fn parse(text: &str) -> Option<CancelResult> {
        [
            CancelResult::Cancelled,
            CancelResult::CancelRequested,
            CancelResult::AlreadyRequested,
            CancelResult::AlreadyCompleted,
        ]
        .into_iter()
        .find(|r| r.as_str() == text)
    }
}

/// A paused queue.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct QueuePause {
    /// The queue.
    pub queue: String,
    /// Since when (Postgres clock).
    pub paused_at: DateTime<Utc>,
    /// Who paused it.
    pub paused_by: String,
    /// Why, as they said it (sanitized).
    pub reason: Option<String>,
}

/// One recorded operator action.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct OperatorAction {
    /// Its id (order of recording).
    pub id: i64,
    /// The tenant acted in; `None` for a queue paused or resumed from the
    /// command line (a queue serves every tenant).
    pub tenant_id: Option<i64>,
    /// `cancel`, `retry`, `pause` or `resume`.
    pub action: String,
    /// The run acted on, if any.
    pub run_id: Option<RunId>,
    /// The queue acted on, if any.
    pub queue: Option<String>,
    /// Who acted: their user id…
    pub actor_user_id: Option<i64>,
    /// …and name.
    pub actor_name: String,
    /// Why, as they said it (sanitized).
    pub reason: Option<String>,
    /// What the action did (for a cancel, a [`CancelResult`] name).
    pub result: String,
    /// When (Postgres clock).
    pub at: DateTime<Utc>,
}

impl Ledger {
    /// Cancel run `run_id` of `tenant_id` for `actor`, recording the
    /// action; `request` becomes the run's `run.cancelled` failure message.
    /// `None` when the tenant has no such run.
    pub async fn cancel(
        &self,
        tenant_id: i64,
        run_id: RunId,
        actor: &Initiator,
        reason: Option<&str>,
        request: &str,
    ) -> Result<Option<CancelResult>> {
        let did: Option<String> =
            sqlx::query_scalar("SELECT opsrun_cancel_run($1, $2, $3, $4, $5, $6)")
                .bind(tenant_id)
                .bind(run_id)
                .bind(actor.user_id)
                .bind(&actor.name)
                .bind(reason)
                .bind(request)
                .fetch_one(&self.db)
                .await
                .map_err(db("cancelling run"))?;
        Ok(did.as_deref().and_then(CancelResult::parse))
    }

    /// Of the runs `holder` holds among `ids`, those someone asked to
    /// cancel, with the request (who and why).
    pub async fn cancel_requests(
        &self,
        holder: &str,
        ids: &[RunId],
    ) -> Result<Vec<(RunId, String)>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        sqlx::query_as(
            "SELECT id, coalesce(cancel_request, 'cancelled') FROM operation_runs \
             WHERE id = ANY($1) AND holder = $2 AND status = 'running' \
               AND cancel_requested_at IS NOT NULL",
        )
        .bind(ids.iter().map(|id| id.0).collect::<Vec<_>>())
        .bind(holder)
        .fetch_all(&self.db)
        .await
        .map_err(db("reading cancel requests"))
    }

    /// A tenant's operator actions, newest first: all of them, or those on
    /// one run.
    pub async fn operator_actions(
        &self,
        tenant_id: i64,
        run_id: Option<RunId>,
        limit: i64,
    ) -> Result<Vec<OperatorAction>> {
        sqlx::query_as(
            "SELECT id, tenant_id, action, run_id, queue, actor_user_id, actor_name, reason, result, at \
             FROM operator_actions \
             WHERE tenant_id = $1 AND ($2::bigint IS NULL OR run_id = $2) \
             ORDER BY id DESC LIMIT $3",
        )
        .bind(tenant_id)
        .bind(run_id)
        .bind(limit)
        .fetch_all(&self.db)
        .await
        .map_err(db("listing operator actions"))
    }

    /// Pause (`pause`) or resume `queue` for `actor`, recording the action
    /// in `tenant_id`'s trail (or in none). Returns `paused`,
    /// `already_paused`, `resumed` or `not_paused`.
    pub async fn pause_queue(
        &self,
        queue: &str,
        pause: bool,
        tenant_id: Option<i64>,
        actor: &Initiator,
        reason: Option<&str>,
    ) -> Result<String> {
        sqlx::query_scalar("SELECT opsrun_pause_queue($1, $2, $3, $4, $5, $6)")
            .bind(queue)
            .bind(pause)
            .bind(tenant_id)
            .bind(actor.user_id)
            .bind(&actor.name)
            .bind(reason)
            .fetch_one(&self.db)
            .await
            .map_err(db("pausing or resuming a queue"))
    }

    /// The paused queues, by name.
    pub async fn paused_queues(&self) -> Result<Vec<QueuePause>> {
        sqlx::query_as(
            "SELECT queue, paused_at, paused_by, reason FROM queue_pauses ORDER BY queue",
        )
        .fetch_all(&self.db)
        .await
        .map_err(db("listing paused queues"))
    }

    /// Record an action whose effect another statement made (a retry's new
    /// run, which links to the run it retries whatever happens here).
    pub async fn record_action(
        &self,
        tenant_id: i64,
        action: &str,
        run_id: Option<RunId>,
        actor: &Initiator,
        reason: Option<&str>,
        result: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO operator_actions (tenant_id, action, run_id, actor_user_id, actor_name, reason, result) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(tenant_id)
        .bind(action)
        .bind(run_id)
        .bind(actor.user_id)
        .bind(&actor.name)
        .bind(reason)
        .bind(result)
        .execute(&self.db)
        .await
        .map_err(db("recording an operator action"))?;
        Ok(())
    }
}
