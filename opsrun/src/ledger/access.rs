//! Monitor tokens and login sessions: created with their hash, looked up
//! by it, revoked or ended.

use super::Ledger;
use crate::access::{Role, Token, token_hash};
use crate::error::{Result, db};

const TOKEN_COLUMNS: &str =
    "id, tenant_id, role, user_id, user_name, label, created_at, revoked_at, queues";

/// A token to create.
#[derive(Debug, Clone, Copy)]
pub struct NewToken<'a> {
    /// The only tenant it sees; `None` for (and only for) a platform token.
    pub tenant_id: Option<i64>,
    /// What it may do.
    pub role: Role,
    /// The person it acts for, with their name; `None` for a service token.
    pub user: Option<(i64, &'a str)>,
    /// What it is for.
    pub label: Option<&'a str>,
    /// Queues it may start runs on besides each type's own.
    pub queues: &'a [String],
}

impl Ledger {
    /// Store a token by its hash (see [`crate::access::generate_token`]).
    pub async fn create_token(&self, new: &NewToken<'_>, hash: &str) -> Result<Token> {
        sqlx::query_as::<_, Token>(sqlx::AssertSqlSafe(format!(
            "INSERT INTO api_tokens (tenant_id, role, user_id, user_name, label, token_sha256, queues) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {TOKEN_COLUMNS}"
        )))
        .bind(new.tenant_id)
        .bind(new.role)
        .bind(new.user.map(|u| u.0))
        .bind(new.user.map(|u| u.1))
        .bind(new.label)
        .bind(hash)
        .bind(new.queues)
        .fetch_one(&self.db)
        .await
        .map_err(db("creating token"))
    }

    /// The live (unrevoked) token whose text is `secret`.
    pub async fn token_by_secret(&self, secret: &str) -> Result<Option<Token>> {
        sqlx::query_as::<_, Token>(sqlx::AssertSqlSafe(format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE token_sha256 = $1 AND revoked_at IS NULL"
        )))
        .bind(token_hash(secret))
        .fetch_optional(&self.db)
        .await
        .map_err(db("reading token"))
    }

    /// A tenant's tokens (`None`: the platform tokens), newest first,
    /// revoked ones included.
    pub async fn tokens(&self, tenant_id: Option<i64>) -> Result<Vec<Token>> {
        sqlx::query_as::<_, Token>(sqlx::AssertSqlSafe(format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE tenant_id IS NOT DISTINCT FROM $1 ORDER BY id DESC"
        )))
        .bind(tenant_id)
        .fetch_all(&self.db)
        .await
        .map_err(db("listing tokens"))
    }

    /// Revoke a tenant's token (`None`: a platform token); false when there
    /// is no such live token.
    pub async fn revoke_token(&self, tenant_id: Option<i64>, id: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE api_tokens SET revoked_at = now() \
             WHERE tenant_id IS NOT DISTINCT FROM $1 AND id = $2 AND revoked_at IS NULL",
        )
        .bind(tenant_id)
        .bind(id)
        .execute(&self.db)
        .await
        .map_err(db("revoking token"))?;
        Ok(done.rows_affected() == 1)
    }

    /// Start a login session for `token_id` lasting `ttl`, stored by the
    /// hash of its secret (see [`crate::access::generate_token`]). Sessions
    /// that have expired are deleted on the way.
    pub async fn create_session(
        &self,
        token_id: i64,
        secret_hash: &str,
        ttl: std::time::Duration,
    ) -> Result<()> {
        sqlx::query(
            "WITH expired AS (DELETE FROM monitor_sessions WHERE expires_at < now()) \
             INSERT INTO monitor_sessions (session_sha256, token_id, expires_at) \
             VALUES ($1, $2, now() + make_interval(secs => $3))",
        )
        .bind(secret_hash)
        .bind(token_id)
        .bind(ttl.as_secs_f64())
        .execute(&self.db)
        .await
        .map_err(db("starting a session"))?;
        Ok(())
    }

    /// The live token of the unexpired session whose secret is `secret`.
    pub async fn token_by_session(&self, secret: &str) -> Result<Option<Token>> {
        sqlx::query_as::<_, Token>(sqlx::AssertSqlSafe(format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE revoked_at IS NULL AND id = \
             (SELECT token_id FROM monitor_sessions WHERE session_sha256 = $1 AND expires_at > now())"
        )))
        .bind(token_hash(secret))
        .fetch_optional(&self.db)
        .await
        .map_err(db("reading session"))
    }

    /// End the session whose secret is `secret`; false when there was none.
    pub async fn end_session(&self, secret: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM monitor_sessions WHERE session_sha256 = $1")
            .bind(token_hash(secret))
            .execute(&self.db)
            .await
            .map_err(db("ending session"))?;
        Ok(done.rows_affected() == 1)
    }
}
