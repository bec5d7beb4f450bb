//! Starting many runs in one statement (the service's batch starts).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::types::Json;

use super::{Ledger, NewRun, sql};
use crate::error::{Result, db};
use crate::run::{Outcome, Run, RunId, Status, SummaryCounts};

/// How long a batch start that met an active identity makes this ledger's
/// batch starts go with `ON CONFLICT` straight away.
const CONFLICT_MEMORY: Duration = Duration::from_secs(60);

/// The batch insert, with `$conflict` (empty, or the `ON CONFLICT` clause)
/// before its `RETURNING`.
macro_rules! insert_many_sql {
    ($conflict:literal) => {
        concat!(
            "WITH keys AS ( \
                 INSERT INTO concurrency_claims (concurrency_key, runs) \
                 SELECT DISTINCT k, 0 FROM unnest($15::text[]) AS k WHERE k IS NOT NULL \
                   AND NOT EXISTS (SELECT 1 FROM concurrency_claims WHERE concurrency_key = k) ORDER BY 1 \
                 ON CONFLICT DO NOTHING) \
             INSERT INTO operation_runs \
               (tenant_id, user_id, initiator_name, type, run_identity_hash, context, inputs, queue, \
                identity_rule, max_attempts, lease_seconds, not_before, shard, retry_of, concurrency_key, traceparent, \
                dispatched_at) \
             SELECT *, CASE WHEN u.not_before IS NULL THEN now() END \
             FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[], \
                 $6::jsonb[], $7::jsonb[], $8::text[], $9::text[], $10::int[], $11::int[], $12::timestamptz[], \
                 $13::smallint[], $14::bigint[], $15::text[], $16::text[]) \
                 AS u(tenant_id, user_id, initiator_name, type, run_identity_hash, context, inputs, queue, \
                      identity_rule, max_attempts, lease_seconds, not_before, shard, retry_of, concurrency_key, \
                      traceparent) ",
            $conflict,
            " RETURNING tenant_id, run_identity_hash, id, created_at, updated_at, dispatched_at, not_before"
        )
    };
}

/// When a batch start last met an identity already active.
#[derive(Debug, Default)]
pub(super) struct LastConflict(Mutex<Option<Instant>>);

impl LastConflict {
    /// Remember a conflict now.
    fn now(&self) {
        *self.0.lock().expect("last conflict") = Some(Instant::now());
    }

    /// True within [`CONFLICT_MEMORY`] of the last conflict.
    fn recent(&self) -> bool {
        self.0
            .lock()
            .expect("last conflict")
            .is_some_and(|at| at.elapsed() < CONFLICT_MEMORY)
    }
}

/// What Postgres chose for a run [`Ledger::insert_many`] inserted.
#[derive(sqlx::FromRow)]
pub(super) struct Inserted {
    tenant_id: i64,
    run_identity_hash: String,
    id: RunId,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    dispatched_at: Option<DateTime<Utc>>,
    /// As sent, at Postgres's precision (microseconds).
    not_before: Option<DateTime<Utc>>,
}

impl NewRun<'_> {
    /// The row this run became, given what Postgres returned: every other
    /// column is as sent or its default (the table's defaults, and no
    /// trigger changes a run as it is inserted). Tested against the row
    /// read back (`tests/tests/ledger.rs`).
    fn inserted(&self, row: Inserted) -> Run {
        let request = self.request;
        Run {
            id: row.id,
            tenant_id: request.tenant_id,
            user_id: request.initiator.user_id,
            initiator_name: request.initiator.name.clone(),
            run_type: request.run_type.clone(),
            status: Status::Queued,
            outcome: Outcome::Pending,
            run_identity_hash: self.identity.to_string(),
            summary_counts: Json(SummaryCounts::default()),
            failure_summary: Json(Vec::new()),
            context: Json(request.context.clone()),
            inputs: Json(request.inputs.clone()),
            queue: self.queue.to_string(),
            shard: self.shard,
            attempt: 0,
            max_attempts: self.max_attempts,
            holder: None,
            heartbeat_at: None,
            dispatch_entry_id: None,
            dispatched_at: row.dispatched_at,
            reclaims: Json(Vec::new()),
            identity_rule: self.rule.as_str().to_string(),
            lease_seconds: self.lease_seconds,
            not_before: row.not_before,
            // Not written by the batch statement (mirrors start one by one).
            domain_id: None,
            started_at: None,
            completed_at: None,
            created_at: row.created_at,
            updated_at: row.updated_at,
            cancel_requested_at: None,
            cancel_request: None,
            retry_of: request.retry_of,
            concurrency_key: self.concurrency_key.map(str::to_string),
            slot_wait_since: None,
            traceparent: request.traceparent.map(|t| t.to_string()),
        }
    }
}

impl Ledger {
    /// Insert many deterministic or nonce runs; a run whose identity is
    /// already active is skipped (the caller reads the active one with
    /// [`Ledger::active_by_identity`]). Stamps `dispatched_at` as
    /// [`Ledger::insert_or_get`] does, and makes its keys' count rows as
    /// [`CLAIMS_ROW`] does. Returns the runs inserted.
    ///
    /// The batch goes first as a plain insert: `ON CONFLICT DO NOTHING`
    /// makes Postgres probe the identity index before each row and then
    /// insert it speculatively and confirm it (one more WAL record per
    /// row), where a plain insert checks uniqueness once, inside the index
    /// insertion. A batch that meets an active identity fails whole and is
    /// sent again with `ON CONFLICT`, which then serves this ledger's
    /// batches for [`CONFLICT_MEMORY`], so a caller that often starts what
    /// is already running does not pay twice per batch.
    ///
    /// Only what Postgres chose (id and times) comes back; the rest of each
    /// row is what was sent (see [`NewRun::inserted`]). Returning whole rows
    /// made Postgres serialize four jsonb columns per run and the service
    /// parse them again: about a third of the statement's time for 1,000
    /// runs.
    pub async fn insert_many(&self, runs: &[NewRun<'_>]) -> Result<Vec<Run>> {
        if runs.is_empty() {
            return Ok(Vec::new());
        }
        if !self.last_conflict.recent() {
            match self.insert_statement(insert_many_sql!(""), runs).await {
                Ok(inserted) => return Ok(runs_inserted(runs, inserted)),
                Err(sqlx::Error::Database(e))
                    if e.constraint() == Some("operation_runs_active_identity") =>
                {
                    self.last_conflict.now();
                }
                Err(e) => return Err(db("inserting runs")(e)),
            }
        }
        let inserted = self
            .insert_statement(
                insert_many_sql!(
                    " ON CONFLICT (tenant_id, run_identity_hash) WHERE completed_at IS NULL DO NOTHING"
                ),
                runs,
            )
            .await
            .map_err(db("inserting runs"))?;
        Ok(runs_inserted(runs, inserted))
    }

    /// One batch insert of `runs` with `statement` (see [`insert_many_sql`]).
    async fn insert_statement(
        &self,
        statement: &'static str,
        runs: &[NewRun<'_>],
    ) -> std::result::Result<Vec<Inserted>, sqlx::Error> {
        // Text columns bound as borrowed: no copy of each run's strings.
        fn texts<'r, 'a>(runs: &'r [NewRun<'a>], f: fn(&'r NewRun<'a>) -> &'r str) -> Vec<&'r str> {
            runs.iter().map(f).collect()
        }
        sqlx::query_as(sql(statement))
            .bind(runs.iter().map(|r| r.request.tenant_id).collect::<Vec<_>>())
            .bind(
                runs.iter()
                    .map(|r| r.request.initiator.user_id)
                    .collect::<Vec<_>>(),
            )
            .bind(texts(runs, |r| &r.request.initiator.name))
            .bind(texts(runs, |r| &r.request.run_type))
            .bind(texts(runs, |r| r.identity))
            .bind(
                runs.iter()
                    .map(|r| Json(&r.request.context))
                    .collect::<Vec<_>>(),
            )
            .bind(
                runs.iter()
                    .map(|r| Json(&r.request.inputs))
                    .collect::<Vec<_>>(),
            )
            .bind(texts(runs, |r| r.queue))
            .bind(texts(runs, |r| r.rule.as_str()))
            .bind(runs.iter().map(|r| r.max_attempts).collect::<Vec<_>>())
            .bind(runs.iter().map(|r| r.lease_seconds).collect::<Vec<_>>())
            .bind(
                runs.iter()
                    .map(|r| r.request.not_before)
                    .collect::<Vec<_>>(),
            )
            .bind(runs.iter().map(|r| r.shard).collect::<Vec<_>>())
            .bind(runs.iter().map(|r| r.request.retry_of).collect::<Vec<_>>())
            .bind(runs.iter().map(|r| r.concurrency_key).collect::<Vec<_>>())
            .bind(
                runs.iter()
                    .map(|r| r.request.traceparent.map(|t| t.to_string()))
                    .collect::<Vec<_>>(),
            )
            .fetch_all(&self.db)
            .await
    }
}

/// The runs `inserted` made of `runs`. Identities are distinct within a
/// batch (the service folds duplicates first), so each returned row names
/// one of `runs`.
fn runs_inserted(runs: &[NewRun<'_>], inserted: Vec<Inserted>) -> Vec<Run> {
    let by_identity: std::collections::HashMap<(i64, &str), &NewRun<'_>> = runs
        .iter()
        .map(|r| ((r.request.tenant_id, r.identity), r))
        .collect();
    inserted
        .into_iter()
        .filter_map(|row| {
            let new = by_identity.get(&(row.tenant_id, row.run_identity_hash.as_str()))?;
            Some(new.inserted(row))
        })
        .collect()
}
