//! Slot credits in Postgres (migration 000023; the worker's side is
//! [`crate::concurrency::credits`]): a block taken on a key's count, runs
//! claimed against it, credits renewed, given back, and returned by the
//! reaper once expired. Every statement that changes a worker's credits
//! runs under its [`Credits::statement`] lock and after it sets what the
//! worker holds from Postgres' answer.

use super::{ClaimRequest, Ledger, Session, sql};
use crate::concurrency::credits::{CREDIT_TTL, Credits, Returns};
use crate::error::{Result, db};
use crate::run::Run;

/// Which unused credits to give back.
pub enum GiveBack<'a> {
    /// Those of these keys (their runs wait for a slot).
    Keys(&'a [String]),
    /// Those of keys not claimed from for a while.
    Idle,
    /// All of them (the worker stops).
    All,
}

impl Session {
    /// Take a block of credits of the key `digest` names for `credits`'
    /// holder, if the key has room for two blocks under `limit` and no run
    /// waits for one of its slots: counted as claimed on the key's row
    /// (locked, as a claim locks it). What the worker holds is then set
    /// from the answer (a refusal is remembered for a while).
    pub async fn take_block(&mut self, credits: &Credits, digest: &str, limit: u32) -> Result<()> {
        let _turn = credits.statement().await;
        let statement = sqlx::query_as::<_, (String, i32)>(
            "WITH k AS (SELECT k.concurrency_key AS key, k.runs - coalesce((SELECT sum(x.runs) \
                     FROM concurrency_releases x WHERE x.concurrency_key = k.concurrency_key), 0) AS running \
                 FROM concurrency_claims k WHERE k.key_digest = $2 FOR UPDATE OF k), \
             granted AS (SELECT key FROM k WHERE running + 2 * $3 <= $4 \
                 AND (SELECT w.id FROM operation_runs w WHERE w.concurrency_key = k.key \
                     AND w.slot_wait_since IS NOT NULL AND w.completed_at IS NULL \
                     ORDER BY w.concurrency_key, w.id LIMIT 1) IS NULL), \
             counted AS (UPDATE concurrency_claims c SET runs = c.runs + $3 \
                 FROM granted g WHERE c.concurrency_key = g.key) \
             INSERT INTO concurrency_credits (concurrency_key, holder, credits, expires_at) \
             SELECT key, $1, $3, now() + make_interval(secs => $5) FROM granted \
             ON CONFLICT (concurrency_key, holder) DO UPDATE \
                 SET credits = concurrency_credits.credits + EXCLUDED.credits, expires_at = EXCLUDED.expires_at \
             RETURNING concurrency_key, credits",
        )
        .bind(credits.holder())
        .bind(digest)
        .bind(credits.block() as i32)
        .bind(limit as i32)
        .bind(CREDIT_TTL.as_secs_f64());
        let granted = statement.fetch_optional(self.connection().await?).await;
        let granted = self
            .kept(granted)
            .map_err(db("taking concurrency credits"))?;
        match granted {
            Some((key, held)) => credits.granted(digest, &key, held.max(0) as u32),
            None => credits.refused(digest),
        }
        Ok(())
    }

    /// Claim runs against credits of `holder` (each claim with the key its
    /// credit is of): as a plain claim, and only where the run has that key,
    /// the credit is there and not expired (its row locked FOR KEY SHARE, so
    /// the reaper's return of expired credits waits for this claim, or this
    /// claim for the return), and no run of the key waits for a slot (a
    /// credit never lets a run pass one that waits: the claim goes through
    /// the exact path, which makes it wait its turn). The runs' slots are
    /// -1: under their holder's credit.
    ///
    /// The waiter probe is written as the first entry of the key in
    /// `operation_runs_slot_waiting`, so its plan is a point lookup there
    /// whatever the statistics say: as `NOT EXISTS`, the plan cached on a
    /// fresh ledger (statistics taken with no run active) scanned every
    /// active run per claim, 2.1 ms per claim of 22 runs against 0.6 for a
    /// plain claim (`pg_stat_statements`, `make bench` on a new database).
    pub(super) async fn claim_credited(
        &mut self,
        claims: &[(&ClaimRequest, String)],
        holder: &str,
    ) -> Result<Vec<Run>> {
        if claims.is_empty() {
            return Ok(Vec::new());
        }
        let statement = sqlx::query_as::<_, Run>(sql("WITH held AS (SELECT k.concurrency_key AS credit_key FROM concurrency_credits k \
                 WHERE k.holder = $5 AND k.concurrency_key = ANY($8) AND k.expires_at > now() \
                   AND (SELECT w.id FROM operation_runs w WHERE w.concurrency_key = k.concurrency_key \
                       AND w.slot_wait_since IS NOT NULL AND w.completed_at IS NULL \
                       ORDER BY w.concurrency_key, w.id LIMIT 1) IS NULL \
                 FOR KEY SHARE OF k) \
             UPDATE operation_runs \
             SET {claimed_set}, concurrency_slot = -1 \
             FROM unnest($1::bigint[], $2::bigint[], $3::int[], $4::int[], $6::text[], $7::smallint[], $8::text[]) \
                 AS c(c_tenant, c_id, c_attempt, c_lease, c_entry, c_shard, c_key) \
                 JOIN held h ON h.credit_key = c.c_key, {async_commit} \
             WHERE tenant_id = c.c_tenant AND id = c.c_id AND status = 'queued' \
               AND attempt = c.c_attempt - 1 AND concurrency_key = c.c_key \
               AND (not_before IS NULL OR not_before <= now()) \
             RETURNING {cols}"))
        .bind(claims.iter().map(|(c, _)| c.tenant_id).collect::<Vec<_>>())
        .bind(claims.iter().map(|(c, _)| c.run_id.0).collect::<Vec<_>>())
        .bind(claims.iter().map(|(c, _)| c.attempt).collect::<Vec<_>>())
        .bind(claims.iter().map(|(c, _)| super::session::lease_seconds(c.lease)).collect::<Vec<_>>())
        .bind(holder)
        .bind(claims.iter().map(|(c, _)| c.entry_id.as_str()).collect::<Vec<_>>())
        .bind(claims.iter().map(|(c, _)| c.shard).collect::<Vec<_>>())
        .bind(claims.iter().map(|(_, key)| key.as_str()).collect::<Vec<_>>());
        let claimed = statement.fetch_all(self.connection().await?).await;
        self.kept(claimed)
            .map_err(db("claiming runs against concurrency credits"))
    }
}

impl Ledger {
    /// Give back `which` unused credits of `credits`' holder: released on
    /// its own row of each key, as its completions release runs.
    pub async fn give_back_credits(&self, credits: &Credits, which: GiveBack<'_>) -> Result<()> {
        let _turn = credits.statement().await;
        let offered: Returns = match which {
            GiveBack::Keys(keys) => credits.take_unused(Some(keys)),
            GiveBack::Idle => credits.take_idle(),
            GiveBack::All => {
                credits.close();
                credits.take_unused(None)
            }
        };
        if offered.is_empty() {
            return Ok(());
        }
        let returned: Vec<String> = sqlx::query_scalar(
            "WITH c AS (SELECT * FROM unnest($2::text[], $3::int[]) AS c(c_key, c_credits)), \
             held AS (UPDATE concurrency_credits k SET credits = k.credits - c.c_credits FROM c \
                 WHERE k.concurrency_key = c.c_key AND k.holder = $1 AND k.credits >= c.c_credits \
                 RETURNING k.concurrency_key, c.c_credits) \
             INSERT INTO concurrency_releases (concurrency_key, releaser, runs) \
             SELECT concurrency_key, $1, c_credits FROM held ORDER BY 1 \
             ON CONFLICT (concurrency_key, releaser) \
             DO UPDATE SET runs = concurrency_releases.runs + EXCLUDED.runs \
             RETURNING concurrency_key",
        )
        .bind(credits.holder())
        .bind(
            offered
                .iter()
                .map(|(key, _)| key.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(offered.iter().map(|(_, n)| *n as i32).collect::<Vec<_>>())
        .fetch_all(&self.db)
        .await
        .map_err(db("giving back concurrency credits"))?;
        credits.given_back(&offered, &returned);
        Ok(())
    }

    /// Renew the credits `credits`' holder holds, so they do not expire;
    /// those no longer there are forgotten (they expired and the reaper
    /// returned them). Credits expired and not yet returned are renewed:
    /// nothing was returned of them.
    pub async fn renew_credits(&self, credits: &Credits) -> Result<()> {
        let _turn = credits.statement().await;
        let keys = credits.held_keys();
        if keys.is_empty() {
            return Ok(());
        }
        let renewed: Vec<(String, i32)> = sqlx::query_as(
            "UPDATE concurrency_credits SET expires_at = now() + make_interval(secs => $3) \
             WHERE concurrency_key = ANY($2) AND holder = $1 \
             RETURNING concurrency_key, credits",
        )
        .bind(credits.holder())
        .bind(&keys)
        .bind(CREDIT_TTL.as_secs_f64())
        .fetch_all(&self.db)
        .await
        .map_err(db("renewing concurrency credits"))?;
        credits.renewed(&keys, &renewed);
        Ok(())
    }

    /// Return the credits not renewed in time (the reaper, every round; see
    /// migration 000023). Returns how many were released.
    pub async fn return_expired_credits(&self) -> Result<i64> {
        sqlx::query_scalar("SELECT opsrun_return_expired_credits()")
            .fetch_one(&self.db)
            .await
            .map_err(db("returning expired concurrency credits"))
    }
}
