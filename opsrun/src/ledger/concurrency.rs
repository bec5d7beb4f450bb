//! Concurrency slots (see [`crate::concurrency`] and migration 000020): the
//! claims themselves are in the session's claim statement; here, waking the
//! runs that wait for a slot, folding the releases, and who holds a key's
//! slots.

use super::{Ledger, sql};
use crate::concurrency::SlotHolders;
use crate::error::{Result, db};
use crate::run::Run;

impl Ledger {
    /// Take the oldest runs waiting for a slot of `keys` (of every key with
    /// waiters when `None`), as many per key as it has free slots, stamping
    /// them as dispatched; the caller sends them.
    pub async fn wake_slot_waiters(&self, keys: Option<&[String]>) -> Result<Vec<Run>> {
        sqlx::query_as::<_, Run>(sql(
            "SELECT {cols} FROM opsrun_wake_slot_waiters($1::text[])",
        ))
        .bind(keys)
        .fetch_all(&self.db)
        .await
        .map_err(db("waking runs waiting for a slot"))
    }

    /// Fold each key's releases into one row (see migration 000020), so a
    /// claim sums few rows however many workers came and went.
    pub async fn fold_releases(&self) -> Result<()> {
        sqlx::query("SELECT opsrun_fold_releases()")
            .execute(&self.db)
            .await
            .map_err(db("folding concurrency releases"))?;
        Ok(())
    }

    /// The slots of `run`'s key (a key is always within one tenant): the
    /// limit that made it wait, the runs holding them, how many runs of the
    /// key wait ahead of it, and how many are held as credits no run uses.
    pub async fn slot_holders(&self, key: &str, run: &Run) -> Result<SlotHolders> {
        let (limit, held_by, waiting_ahead, unused_credits) =
            sqlx::query_as::<_, (Option<i32>, Vec<i64>, i64, i64)>(
                "SELECT (SELECT slot_wait_limit FROM operation_runs WHERE id = $2), \
                    ARRAY(SELECT id FROM operation_runs WHERE tenant_id = $3 AND completed_at IS NULL \
                        AND concurrency_key = $1 AND status = 'running' AND concurrency_slot IS NOT NULL \
                        ORDER BY id), \
                    (SELECT count(*) FROM operation_runs WHERE concurrency_key = $1 AND id < $2 \
                        AND slot_wait_since IS NOT NULL AND completed_at IS NULL), \
                    greatest((SELECT coalesce(sum(credits), 0) FROM concurrency_credits WHERE concurrency_key = $1) \
                        - (SELECT count(*) FROM operation_runs WHERE tenant_id = $3 AND completed_at IS NULL \
                            AND concurrency_key = $1 AND status = 'running' AND concurrency_slot = -1), 0)::bigint",
            )
            .bind(key)
            .bind(run.id.0)
            .bind(run.tenant_id)
            .fetch_one(&self.db)
            .await
            .map_err(db("reading a key's concurrency slots"))?;
        Ok(SlotHolders {
            key: key.to_string(),
            limit,
            held_by,
            waiting_ahead,
            unused_credits,
        })
    }
}
