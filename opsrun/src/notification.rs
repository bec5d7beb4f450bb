//! Initiator notifications: one when a user's run is queued, one when it
//! ends (with outcome and a summary built from sanitized failures). Written
//! by database triggers on the run row (migration `..._monitoring.sql`), so
//! every path that creates or ends a run notifies alike; read and marked
//! read here, always for one tenant and one user.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::run::RunId;

/// One notification to the user who started a run.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct Notification {
    /// Row id.
    pub id: i64,
    /// The run's tenant.
    pub tenant_id: i64,
    /// The initiator it is for.
    pub user_id: i64,
    /// The run it is about.
    pub run_id: RunId,
    /// `queued` or `completed`.
    pub kind: String,
    /// The run's outcome, for `completed`.
    pub outcome: Option<String>,
    /// One line, e.g. `inventory.sync #42 partially succeeded`.
    pub title: String,
    /// Counts and the first failures (sanitized).
    pub body: String,
    /// When it was written.
    pub created_at: DateTime<Utc>,
    /// When the user marked it read.
    pub read_at: Option<DateTime<Utc>>,
}
