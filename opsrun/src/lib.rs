//! opsrun: one canonical Postgres row per operation run, work carried to
//! horizontally scaled workers over Redis Streams.
//!
//! The lifecycle of a run:
//! 1. [`RunService::ensure_run`] validates a [`RunRequest`], computes its
//!    [`identity`], and inserts a `queued` row, or returns the active run
//!    with the same identity (dedupe by a partial unique index).
//! 2. The row is committed, then an entry is XADDed to `opsrun:queue:<queue>`.
//!    If that fails the run is completed as `failed` with `queue.dispatch_failed`.
//! 3. A worker's [`lifecycle::Lifecycle`] claims the run (`queued → running`,
//!    tenant and attempt checked), heartbeats it, runs the handler under a time
//!    limit, writes the terminal state fenced on its claim, then XACKs.
//!
//! Modules: [`run`] (the model), [`identity`], [`request`] (validation),
//! [`sanitize`], [`ledger`] (all SQL), [`transport`] (all stream commands),
//! [`lifecycle`] (worker middleware), [`service`] (the service interface),
//! [`listing`] (Monitoring → Operations filters and pages), [`access`]
//! (monitor tokens and roles), [`notification`] (initiator notifications),
//! [`mirror`] (adapter runs that shadow a domain record).
//!
//! ```no_run
//! use opsrun::{Ledger, RunRequest, RunService, Transport, TransportConfig};
//! use serde_json::json;
//!
//! # async fn example() -> anyhow::Result<()> {
//! let pool = sqlx::PgPool::connect(&std::env::var("DATABASE_URL")?).await?;
//! let ledger = Ledger::new(pool);
//! ledger.migrate().await?;
//! let transport = Transport::new(&TransportConfig::new(std::env::var("REDIS_URL")?))?;
//! let service = RunService::new(ledger, transport);
//!
//! let request = RunRequest::new(42, "inventory.sync").inputs(json!({"site": "paris"}));
//! let ensured = service.ensure_run(&request).await?;
//! println!("run {} is {:?} (deduplicated: {})", ensured.run.id, ensured.run.status, ensured.deduplicated());
//! # Ok(())
//! # }
//! ```

pub mod access;
pub mod chart;
pub mod concurrency;
pub mod config;
pub mod error;
pub mod explain;
pub mod identity;
pub mod ledger;
pub mod lifecycle;
pub mod listing;
pub mod mirror;
pub mod notification;
pub mod queue_health;
pub mod registry;
pub mod request;
pub mod run;
pub mod sanitize;
pub mod schedule;
pub mod service;
pub mod telemetry;
pub mod trace;
pub mod transport;

pub use error::{Error, Result};
pub use ledger::{
    CancelResult, ClaimRequest, DispatchRecord, Ledger, OperatorAction, Pooler,
    behind_transaction_pooler,
};
pub use request::{Initiator, RunRequest};
pub use run::{Failure, Outcome, Reclaim, ReclaimReason, Run, RunId, Status, SummaryCounts};
pub use service::{Dispatch, EnsuredRun, RunService};
pub use transport::{Transport, TransportConfig};

/// Re-exported so library users name the same versions.
pub use sqlx;
