//! Reading and marking initiator notifications, always for one tenant and
//! one user. The triggers that write them are in the migrations.

use super::Ledger;
use crate::error::{Result, db};
use crate::notification::Notification;

const NOTIFICATION_COLUMNS: &str =
    "id, tenant_id, user_id, run_id, kind, outcome, title, body, created_at, read_at";

impl Ledger {
    /// A user's notifications in a tenant, newest first; only unread ones
    /// when `unread_only`.
    pub async fn notifications(
        &self,
        tenant_id: i64,
        user_id: i64,
        unread_only: bool,
        limit: i64,
    ) -> Result<Vec<Notification>> {
        sqlx::query_as::<_, Notification>(sqlx::AssertSqlSafe(format!(
            "SELECT {NOTIFICATION_COLUMNS} FROM notifications \
             WHERE tenant_id = $1 AND user_id = $2 AND (NOT $3 OR read_at IS NULL) \
             ORDER BY id DESC LIMIT $4"
        )))
        .bind(tenant_id)
        .bind(user_id)
        .bind(unread_only)
        .bind(limit)
        .fetch_all(&self.db)
        .await
        .map_err(db("listing notifications"))
    }

    /// Mark a user's notifications read: those in `ids`, or all of them when
    /// `ids` is `None`. Returns how many changed; others' ids change nothing.
    pub async fn mark_notifications_read(
        &self,
        tenant_id: i64,
        user_id: i64,
        ids: Option<&[i64]>,
    ) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE notifications SET read_at = now() \
             WHERE tenant_id = $1 AND user_id = $2 AND read_at IS NULL \
               AND ($3::bigint[] IS NULL OR id = ANY($3))",
        )
        .bind(tenant_id)
        .bind(user_id)
        .bind(ids)
        .execute(&self.db)
        .await
        .map_err(db("marking notifications read"))?;
        Ok(done.rows_affected())
    }
}
