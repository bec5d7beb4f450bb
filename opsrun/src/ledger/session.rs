//! A ledger session: one connection kept across statements, for the loops
//! that write many times a second (the group commit of claims and of
//! completions).
//!
//! A statement through the pool costs more round trips than its own: sqlx
//! pings a connection when it goes back to the pool, and did when it left
//! it too (now only after a second idle, see
//! [`PING_IDLE_AFTER`](crate::config::PING_IDLE_AFTER)). Each ping wakes a
//! Postgres backend, and on a machine whose cores Postgres shares with the
//! workers each wakeup waits its turn; the claim loop has one statement in
//! flight, so those waits set the worker's pace. Keeping one connection per
//! loop took one worker's drain at concurrency 50 from 11.7–12.4k to
//! 14.7–15.6k runs/s (2 cores, three runs each).
//!
//! A failed statement lets its connection go: after an I/O error or a server
//! restart its state is unknown. The next statement takes another from the
//! pool; callers retry a statement that failed for want of Postgres.

use sqlx::pool::PoolConnection;
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::{Executor, FromRow, Postgres};

use std::collections::BTreeMap;
use std::sync::Arc;

use super::pooler::{Db, Held, Pooler};
use super::{Claim, ClaimRequest, Completed, RUN_COLUMNS, Terminal, literal, sql};
use crate::concurrency::credits::Credits;
use crate::error::{Result, db};
use crate::run::Run;

/// Statements on one connection held across calls (see the module docs).
pub struct Session {
    db: Db,
    connection: Option<PoolConnection<Postgres>>,
    /// The worker's slot credits, when its claims use them.
    credits: Option<Arc<Credits>>,
}

impl Session {
    pub(super) fn new(db: Db) -> Self {
        Session {
            db,
            connection: None,
            credits: None,
        }
    }

    /// Claim runs of limited types against `credits` where they can (see
    /// [`crate::concurrency::credits`]).
    pub fn with_credits(mut self, credits: Arc<Credits>) -> Self {
        self.credits = Some(credits);
        self
    }

    /// The held connection, taken from the pool when none is held.
    pub(super) async fn connection(&mut self) -> Result<Held<'_>> {
        let connection = match self.connection.take() {
            Some(connection) => connection,
            None => self
                .db
                .pool
                .acquire()
                .await
                .map_err(db("taking a connection from the pool"))?,
        };
        Ok(Held {
            connection: self.connection.insert(connection),
            pooler: self.db.pooler,
        })
    }

    /// Keep the connection only after a statement that succeeded.
    pub(super) fn kept<T>(&mut self, result: sqlx::Result<T>) -> sqlx::Result<T> {
        if result.is_err() {
            self.connection = None;
        }
        result
    }

    /// `call` (a function's call with its arguments written in, see
    /// [`super::literal`]) as one simple query: one round trip behind a
    /// transaction pooler, where a statement with parameters takes four.
    async fn call_written<T>(
        &mut self,
        call: sqlx::Result<String>,
        operation: &'static str,
    ) -> Result<Vec<T>>
    where
        T: for<'r> FromRow<'r, PgRow>,
    {
        let call = call.map_err(db(operation))?;
        let held = self.connection().await?;
        let rows = held
            .connection
            .fetch_all(sqlx::raw_sql(sqlx::AssertSqlSafe(call)))
            .await;
        self.kept(rows)
            .and_then(|rows| rows.iter().map(T::from_row).collect())
            .map_err(db(operation))
    }

    /// [`Ledger::mark_running_many`](super::Ledger::mark_running_many) on the held connection.
    ///
    /// When Postgres refuses the statement for a value in it (not for want
    /// of Postgres), the claims are tried one by one, so one bad entry never
    /// holds up the others: a claim refused on its own is left unclaimed,
    /// which its caller acknowledges and skips like any unclaimable entry.
    pub async fn mark_running_many(
        &mut self,
        claims: &[ClaimRequest],
        holder: &str,
    ) -> Result<Vec<Run>> {
        match self.claim_statement(claims, holder).await {
            Err(e) if claims.len() > 1 && !e.is_retryable() => {
                tracing::warn!(claims = claims.len(), error = %e, "a grouped claim was refused; claiming its runs one by one");
                let mut claimed = Vec::with_capacity(claims.len());
                for claim in claims {
                    match self
                        .claim_statement(std::slice::from_ref(claim), holder)
                        .await
                    {
                        Ok(runs) => claimed.extend(runs),
                        Err(e) if e.is_retryable() => return Err(e),
                        Err(e) => {
                            tracing::error!(run_id = %claim.run_id, tenant_id = claim.tenant_id, attempt = claim.attempt,
                                entry_id = %claim.entry_id, error = %e, "claim refused by Postgres; the entry is skipped");
                        }
                    }
                }
                Ok(claimed)
            }
            other => other,
        }
    }

    /// Claims of limited types go against the worker's credits where it
    /// has them ([`Session::claim_credited`]), otherwise through
    /// [`Session::claim_limited`] (migration 000020: counted against their
    /// key, or left waiting for a slot); the others through one plain
    /// statement, so a worker without limits pays nothing for them.
    async fn claim_statement(&mut self, claims: &[ClaimRequest], holder: &str) -> Result<Vec<Run>> {
        let (limited, plain): (Vec<&ClaimRequest>, Vec<&ClaimRequest>) =
            claims.iter().partition(|c| c.limit.is_some());
        let mut claimed = self.claim_plain(&plain, holder).await?;
        let (credited, exact) = match self.credits.clone() {
            Some(credits) => self.against_credits(&credits, limited, holder).await?,
            None => (Vec::new(), limited),
        };
        claimed.extend(credited);
        claimed.extend(self.claim_limited(&exact, holder).await?);
        Ok(claimed)
    }

    /// Claim what it can of `limited` against `credits`, taking a block of
    /// a key first when its free credits fall short (a block refused, or
    /// an error taking it, leaves those claims to the exact path). Returns
    /// the runs claimed and the claims left for the exact path: those
    /// without credits, and those refused here (the credit expired, or the
    /// run not claimable: the exact path sorts that out).
    async fn against_credits<'c>(
        &mut self,
        credits: &Credits,
        limited: Vec<&'c ClaimRequest>,
        holder: &str,
    ) -> Result<(Vec<Run>, Vec<&'c ClaimRequest>)> {
        let mut by_key: BTreeMap<&str, Vec<&ClaimRequest>> = BTreeMap::new();
        let mut exact = Vec::new();
        for claim in limited {
            match claim.concurrency_key_digest.as_deref() {
                Some(digest) => by_key.entry(digest).or_default().push(claim),
                None => exact.push(claim),
            }
        }
        let mut against: Vec<(&ClaimRequest, String)> = Vec::new();
        let mut reserved: Vec<(&str, u32)> = Vec::new();
        for (digest, claims) in by_key {
            let n = claims.len() as u32;
            let limit = claims.iter().filter_map(|c| c.limit).min().unwrap_or(0);
            if credits.wants_block(digest, n)
                && let Err(e) = self.take_block(credits, digest, limit).await
            {
                tracing::warn!(error = %e, "taking concurrency credits failed; claiming through the exact path");
                credits.refused(digest);
            }
            match credits.reserve(digest, n) {
                Some(key) => {
                    reserved.push((digest, n));
                    against.extend(claims.iter().map(|c| (*c, key.clone())));
                }
                None => exact.extend(claims),
            }
        }
        let claimed = match self.claim_credited(&against, holder).await {
            Ok(claimed) => claimed,
            Err(e) => {
                // Nothing was claimed: the credits are free again. Refused
                // for its values, the claims go through the exact path.
                for (digest, n) in reserved {
                    credits.settle_reserved(digest, n, &[]);
                }
                if e.is_retryable() {
                    return Err(e);
                }
                tracing::warn!(claims = against.len(), error = %e, "a claim against concurrency credits was refused; claiming through the exact path");
                exact.extend(against.iter().map(|(c, _)| *c));
                return Ok((Vec::new(), exact));
            }
        };
        let (taken, refused): (Vec<_>, Vec<_>) = against
            .iter()
            .map(|(c, _)| *c)
            .partition(|c| claimed.iter().any(|r| r.id == c.run_id));
        for (digest, n) in reserved {
            let runs: Vec<_> = taken
                .iter()
                .filter(|c| c.concurrency_key_digest.as_deref() == Some(digest))
                .map(|c| c.run_id)
                .collect();
            credits.settle_reserved(digest, n, &runs);
        }
        exact.extend(refused);
        Ok((claimed, exact))
    }

    /// Claim runs of limited types, each against its claimer's limit, in
    /// one statement, counted against the key their entries name (by its
    /// digest): the keys' claimed counts locked in key order (`counts`:
    /// claims of one key take turns; a count updated while this statement
    /// waited is read again, the releases as of its start, so a key may
    /// look fuller than it is, never emptier), with each key's oldest
    /// waiting run; the runs that fit (a run takes the slot after the
    /// runs of its key before it in the batch: that place is passed with
    /// it) and are not behind a waiting run, claimed if their row has that
    /// key, and counted. The others are then made to wait for a slot
    /// ([`Session::wait_for_slots`]), among them a run whose entry named no
    /// key or another key (an entry sent before entries named keys, or
    /// forged): the wake sends it again with its own.
    ///
    /// Taking the key from the entry spares reading each run before the
    /// claim, and its place from the caller a window over the batch: that
    /// read, a probe for an older waiter per run and the ranking made a
    /// limited claim of 20 runs 1.22 ms of Postgres against a plain
    /// claim's 0.55; with the waits in this statement it took 0.83
    /// (`pg_stat_statements`, runs claimed in turn on an idle server).
    /// The waits have their own statement because a limit that is never
    /// reached never needs it, and running its two empty steps cost every
    /// claim of ~20 runs about 0.13 ms (a backend's CPU time over 300
    /// claims; in `make bench`'s control rows, 47 -> 41 µs of Postgres per
    /// run claimed, against 37–39 for a plain claim).
    async fn claim_limited(&mut self, claims: &[&ClaimRequest], holder: &str) -> Result<Vec<Run>> {
        if claims.is_empty() {
            return Ok(Vec::new());
        }
        let statement = sqlx::query_as::<_, Run>(sql("WITH c AS ( \
                 SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::int[], $4::int[], $5::text[], $6::smallint[], $7::int[], $9::text[], $10::int[]) \
                 AS c(c_tenant, c_id, c_attempt, c_lease, c_entry, c_shard, c_limit, c_digest, c_place)), \
             counts AS (SELECT k.concurrency_key AS key, k.key_digest AS digest, k.runs - coalesce((SELECT sum(x.runs) \
                     FROM concurrency_releases x WHERE x.concurrency_key = k.concurrency_key), 0) AS running, \
                     (SELECT min(w.id) FROM operation_runs w WHERE w.concurrency_key = k.concurrency_key \
                         AND w.slot_wait_since IS NOT NULL AND w.completed_at IS NULL) AS first_waiter \
                 FROM concurrency_claims k WHERE k.key_digest = ANY($9) \
                 ORDER BY k.concurrency_key FOR UPDATE OF k), \
             claimed AS (UPDATE operation_runs r \
                 SET status = 'running', attempt = r.attempt + 1, holder = $8, lease_seconds = c.c_lease, \
                     heartbeat_at = now(), started_at = now(), dispatch_entry_id = c.c_entry, shard = c.c_shard, \
                     concurrency_slot = CASE WHEN r.concurrency_key IS NOT NULL THEN (n.running + c.c_place)::int END, \
                     slot_wait_since = NULL, slot_wait_limit = NULL, updated_at = now() \
                 FROM c LEFT JOIN counts n ON n.digest = c.c_digest AND n.running + c.c_place < c.c_limit \
                     AND (n.first_waiter IS NULL OR c.c_id <= n.first_waiter), {async_commit} \
                 WHERE r.id = c.c_id AND r.tenant_id = c.c_tenant \
                   AND r.status = 'queued' AND r.attempt = c.c_attempt - 1 \
                   AND (r.not_before IS NULL OR r.not_before <= now()) \
                   AND (r.concurrency_key IS NULL OR r.concurrency_key = n.key) \
                 RETURNING r.*), \
             counted AS (UPDATE concurrency_claims k SET runs = k.runs + n.runs \
                 FROM (SELECT concurrency_key, count(*) AS runs FROM claimed \
                     WHERE concurrency_slot IS NOT NULL GROUP BY concurrency_key) AS n \
                 WHERE k.concurrency_key = n.concurrency_key) \
             SELECT {cols} FROM claimed"))
        .bind(claims.iter().map(|c| c.tenant_id).collect::<Vec<_>>())
        .bind(claims.iter().map(|c| c.run_id.0).collect::<Vec<_>>())
        .bind(claims.iter().map(|c| c.attempt).collect::<Vec<_>>())
        .bind(claims.iter().map(|c| lease_seconds(c.lease)).collect::<Vec<_>>())
        .bind(claims.iter().map(|c| c.entry_id.as_str()).collect::<Vec<_>>())
        .bind(claims.iter().map(|c| c.shard).collect::<Vec<_>>())
        .bind(claims.iter().map(|c| c.limit.map(|l| l as i32)).collect::<Vec<_>>())
        .bind(holder)
        .bind(claims.iter().map(|c| c.concurrency_key_digest.as_deref()).collect::<Vec<_>>())
        .bind(places_within_key(claims));
        let claimed = statement.fetch_all(self.connection().await?).await;
        let claimed = self
            .kept(claimed)
            .map_err(db("claiming runs of limited types"))?;
        let refused: Vec<&ClaimRequest> = claims
            .iter()
            .filter(|c| !claimed.iter().any(|r| r.id == c.run_id))
            .copied()
            .collect();
        if let Err(e) = self.wait_for_slots(&refused).await {
            // The claims stand (their runs are running here); a refused run
            // stays queued as sent, its entry acknowledged, and the
            // lost-dispatch pass sends it again.
            tracing::warn!(runs = refused.len(), error = %e, "could not mark refused runs as waiting for a slot; the lost-dispatch pass will send them again");
        }
        Ok(claimed)
    }

    /// Make the queued runs of `refused` claims wait for a slot of their
    /// key: marked waiting (and no longer sent, as their entries are
    /// acknowledged), a key without a count given one. A claim refused for
    /// another reason (its run no longer queued at that attempt: a late or
    /// duplicate entry) changes nothing. A slot freed between the claim and
    /// this mark finds no waiter to wake: the worker wakes the keys itself
    /// after a claim that refused runs.
    async fn wait_for_slots(&mut self, refused: &[&ClaimRequest]) -> Result<()> {
        if refused.is_empty() {
            return Ok(());
        }
        let statement = sqlx::query(sql("WITH c AS ( \
                 SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::int[], $4::int[]) \
                 AS c(c_tenant, c_id, c_attempt, c_limit)), \
             waiting AS (UPDATE operation_runs r \
                 SET slot_wait_since = coalesce(r.slot_wait_since, now()), slot_wait_limit = c.c_limit, \
                     dispatch_entry_id = NULL, dispatched_at = NULL \
                 FROM c WHERE r.id = c.c_id AND r.tenant_id = c.c_tenant AND r.concurrency_key IS NOT NULL \
                   AND r.status = 'queued' AND r.attempt = c.c_attempt - 1 \
                   AND (r.not_before IS NULL OR r.not_before <= now()) \
                 RETURNING r.concurrency_key) \
             INSERT INTO concurrency_claims (concurrency_key, runs) \
                 SELECT DISTINCT w.concurrency_key, 0 FROM waiting w WHERE NOT EXISTS \
                     (SELECT 1 FROM concurrency_claims k WHERE k.concurrency_key = w.concurrency_key) \
                 ORDER BY 1 ON CONFLICT DO NOTHING"))
        .bind(refused.iter().map(|c| c.tenant_id).collect::<Vec<_>>())
        .bind(refused.iter().map(|c| c.run_id.0).collect::<Vec<_>>())
        .bind(refused.iter().map(|c| c.attempt).collect::<Vec<_>>())
        .bind(refused.iter().map(|c| c.limit.map(|l| l as i32)).collect::<Vec<_>>());
        let marked = statement.execute(self.connection().await?).await;
        self.kept(marked)
            .map_err(db("marking runs as waiting for a slot"))?;
        Ok(())
    }

    async fn claim_plain(&mut self, claims: &[&ClaimRequest], holder: &str) -> Result<Vec<Run>> {
        if claims.is_empty() {
            return Ok(Vec::new());
        }
        // Queued rows are touched by no other batch that waits for locks
        // (dispatch records skip locked rows), so no ordering is needed here.
        // The statement is a function (migration 000024), so its plan is
        // cached on the server connection even where this call is sent
        // unnamed (behind a transaction pooler, where it goes in one round
        // trip with its arguments written in).
        if self.db.pooler == Pooler::Transaction {
            let call = written_claim(claims, holder);
            return self.call_written(call, "claiming runs").await;
        }
        let statement = sqlx::query_as::<_, Run>(sql("SELECT {cols} FROM opsrun_claim_queued( \
             $1::bigint[], $2::bigint[], $3::int[], $4::int[], $5::text, $6::text[], $7::smallint[])"))
        .bind(claims.iter().map(|c| c.tenant_id).collect::<Vec<_>>())
        .bind(claims.iter().map(|c| c.run_id.0).collect::<Vec<_>>())
        .bind(claims.iter().map(|c| c.attempt).collect::<Vec<_>>())
        .bind(claims.iter().map(|c| lease_seconds(c.lease)).collect::<Vec<_>>())
        .bind(holder)
        .bind(claims.iter().map(|c| c.entry_id.as_str()).collect::<Vec<_>>())
        .bind(claims.iter().map(|c| c.shard).collect::<Vec<_>>());
        let claimed = statement.fetch_all(self.connection().await?).await;
        self.kept(claimed).map_err(db("claiming runs"))
    }

    /// [`Ledger::complete_many`](super::Ledger::complete_many) on the held
    /// connection. Releases the concurrency slots of the runs it completes
    /// in the same statement, one count per key on the worker's own row,
    /// rather than through the trigger that releases them on other paths
    /// (it sets `concurrency_slot` to NULL to say so; see migration 000020),
    /// and says of each run whether its key has runs waiting for a slot
    /// (looked up once per key, not once per run, as the key's first entry
    /// in `operation_runs_slot_waiting`: a point lookup whatever the
    /// statistics, see [`Session::claim_credited`]). The statement is a
    /// function (migration 000024), so its plan is cached on the server
    /// connection even behind a transaction pooler.
    pub async fn complete_many(
        &mut self,
        completions: &[(Claim<'_>, Terminal<'_>)],
    ) -> Result<Vec<Completed>> {
        if completions.is_empty() {
            return Ok(Vec::new());
        }
        if self.db.pooler == Pooler::Transaction {
            let call = written_completion(completions);
            return self.call_written(call, "completing runs").await;
        }
        let statement = sqlx::query_as::<_, Completed>(
            "SELECT run_id, slot_waiters FROM opsrun_complete_runs( \
             $1::bigint[], $2::bigint[], $3::text[], $4::int[], $5::text[], $6::jsonb[], $7::jsonb[])",
        )
        .bind(completions.iter().map(|(c, _)| c.tenant_id).collect::<Vec<_>>())
        .bind(completions.iter().map(|(c, _)| c.run_id.0).collect::<Vec<_>>())
        .bind(completions.iter().map(|(c, _)| c.holder.to_string()).collect::<Vec<_>>())
        .bind(completions.iter().map(|(c, _)| c.attempt).collect::<Vec<_>>())
        .bind(completions.iter().map(|(_, t)| t.outcome.as_str().to_string()).collect::<Vec<_>>())
        .bind(completions.iter().map(|(_, t)| Json(t.counts)).collect::<Vec<_>>())
        .bind(completions.iter().map(|(_, t)| Json(t.failures)).collect::<Vec<_>>());
        let written = statement.fetch_all(self.connection().await?).await;
        self.kept(written).map_err(db("completing runs"))
    }
}

/// The plain claim's call with its values written in (see [`literal`]).
fn written_claim(claims: &[&ClaimRequest], holder: &str) -> sqlx::Result<String> {
    Ok(format!(
        "SELECT {RUN_COLUMNS} FROM opsrun_claim_queued({}, {}, {}, {}, {}, {}, {})",
        literal::numbers(claims.iter().map(|c| c.tenant_id), "bigint"),
        literal::numbers(claims.iter().map(|c| c.run_id.0), "bigint"),
        literal::numbers(claims.iter().map(|c| c.attempt), "int"),
        literal::numbers(claims.iter().map(|c| lease_seconds(c.lease)), "int"),
        literal::text(holder)?,
        literal::texts(claims.iter().map(|c| c.entry_id.as_str()), "text")?,
        literal::numbers(claims.iter().map(|c| c.shard), "smallint"),
    ))
}

/// The grouped completion's call with its values written in (see [`literal`]).
fn written_completion(completions: &[(Claim<'_>, Terminal<'_>)]) -> sqlx::Result<String> {
    fn json<T: serde::Serialize + ?Sized>(value: &T) -> sqlx::Result<String> {
        serde_json::to_string(value).map_err(|e| sqlx::Error::Encode(Box::new(e)))
    }
    let counts = completions
        .iter()
        .map(|(_, t)| json(t.counts))
        .collect::<sqlx::Result<Vec<_>>>()?;
    let failures = completions
        .iter()
        .map(|(_, t)| json(t.failures))
        .collect::<sqlx::Result<Vec<_>>>()?;
    Ok(format!(
        "SELECT run_id, slot_waiters FROM opsrun_complete_runs({}, {}, {}, {}, {}, {}, {})",
        literal::numbers(completions.iter().map(|(c, _)| c.tenant_id), "bigint"),
        literal::numbers(completions.iter().map(|(c, _)| c.run_id.0), "bigint"),
        literal::texts(completions.iter().map(|(c, _)| c.holder), "text")?,
        literal::numbers(completions.iter().map(|(c, _)| c.attempt), "int"),
        literal::texts(completions.iter().map(|(_, t)| t.outcome.as_str()), "text")?,
        literal::texts(counts.iter().map(String::as_str), "jsonb")?,
        literal::texts(failures.iter().map(String::as_str), "jsonb")?,
    ))
}

/// Each claim's place among the batch's claims of its key, by run id (0
/// for the first): the slot it takes is the key's running runs plus its
/// place. A claim that turns out unclaimable leaves a gap, so a key may
/// look fuller than it is, never emptier.
fn places_within_key(claims: &[&ClaimRequest]) -> Vec<i32> {
    claims
        .iter()
        .map(|c| {
            claims
                .iter()
                .filter(|o| {
                    o.concurrency_key_digest == c.concurrency_key_digest && o.run_id.0 < c.run_id.0
                })
                .count() as i32
        })
        .collect()
}

/// A lease as the whole seconds stored on the run.
pub(super) fn lease_seconds(lease: std::time::Duration) -> i32 {
    lease.as_secs().clamp(1, i32::MAX as u64) as i32
}
