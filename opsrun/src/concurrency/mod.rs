//! Per-key concurrency limits: at most `limit` runs of a type running at
//! once per tenant, or per tenant and input value (a provider connection
//! that throttles, say), declared in the registry:
//!
//! ```toml
//! [types."inventory.sync"]
//! concurrency = { limit = 2, per = "tenant" }
//! # or: concurrency = { limit = 2, per = "inputs.provider_connection_id" }
//! ```
//!
//! A run's key is fixed when it is created (its type, tenant and, for
//! `inputs.<name>`, that input's value); the limit is the claiming worker's,
//! like its lease. Postgres decides at claim, inside the claim's own
//! transaction (so it works behind a transaction pooler): a key's running
//! runs are its claimed count less its released counts (migration 000020).
//! A claim statement locks the key's claimed count (claims of one key take
//! turns, so two workers never both take the last slot), reads the
//! releases, claims the runs that fit and no older run of their key waits
//! for, and adds them; the workers' grouped completion adds its runs to the
//! worker's own released count in the same statement, and a trigger counts
//! every other way out of `running`. Two row writes per claim or
//! completion statement, not per run.
//! A run that does not fit is left queued *waiting for a slot* (no attempt
//! counted, its entry acknowledged, no worker slot held). When a worker
//! completes a limited run whose key has waiters, it wakes that key's
//! oldest waiters, as many as there are free slots, and sends them again;
//! the reaper's due pass does the same every second for slots freed
//! elsewhere.

pub mod credits;

use crate::error::{Error, Result};
use crate::ledger::{DispatchRecord, Ledger};
use crate::transport::{Entry, QueueStream, Transport};

/// Largest limit a type may declare.
pub const MAX_LIMIT: u32 = 100_000;

/// What one slot count is kept per.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitPer {
    /// Each tenant's runs of the type.
    Tenant,
    /// Each tenant's runs of the type with the same value of this input.
    Input(String),
}

/// A type's concurrency limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConcurrencyLimit {
    /// Runs of one key running at once.
    pub limit: u32,
    /// What a key is.
    pub per: LimitPer,
}

impl ConcurrencyLimit {
    /// Parse the registry's `per` spelling: `tenant` or `inputs.<name>`.
    pub fn new(limit: u32, per: &str) -> std::result::Result<Self, String> {
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(format!("limit must be from 1 to {MAX_LIMIT}"));
        }
        let per = match per.strip_prefix("inputs.") {
            _ if per == "tenant" => LimitPer::Tenant,
            Some(name) if !name.is_empty() => LimitPer::Input(name.to_string()),
            _ => {
                return Err(format!(
                    "per: {per:?} is not \"tenant\" or \"inputs.<name>\""
                ));
            }
        };
        Ok(ConcurrencyLimit { limit, per })
    }

    /// The key a run of `run_type` for `tenant_id` with `inputs` counts
    /// against. Always within the tenant, so one tenant's runs never hold
    /// back another's. An input the limit names must be present.
    pub fn key_for(
        &self,
        run_type: &str,
        tenant_id: i64,
        inputs: &serde_json::Value,
    ) -> Result<String> {
        match &self.per {
            LimitPer::Tenant => Ok(format!("{run_type}/{tenant_id}")),
            LimitPer::Input(name) => {
                let value = match inputs.get(name) {
                    Some(serde_json::Value::String(s)) => s.clone(),
                    Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                        v.to_string()
                    }
                    _ => {
                        return Err(Error::invalid(
                            "inputs",
                            format!(
                                "type {run_type} limits concurrency per input {name:?}, \
                                 which must be a string, number or boolean in the inputs"
                            ),
                        ));
                    }
                };
                Ok(format!("{run_type}/{tenant_id}/{name}={value}"))
            }
        }
    }
}

/// The digest a stream entry names a run's concurrency key by: the first
/// 16 bytes of the key's SHA-256, in hex. Postgres computes the same
/// (`opsrun_key_digest`, migration 000021) beside each key's count.
pub fn key_digest(key: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut hex = format!("{:x}", Sha256::digest(key.as_bytes()));
    hex.truncate(32);
    hex
}

/// Wake the oldest runs waiting for a slot of `keys` (every key with
/// waiters when `None`), as many per key as it has free slots, and send
/// them again. A send that fails is left to the lost-dispatch pass (the run
/// is stamped as dispatched). Returns the runs sent.
pub async fn wake(ledger: &Ledger, transport: &Transport, keys: Option<&[String]>) -> Result<u64> {
    let woken = ledger.wake_slot_waiters(keys).await?;
    let mut sent = 0;
    let mut records = Vec::with_capacity(woken.len());
    for run in &woken {
        // The shard it was last sent to: a queue's shards changing is the
        // reaper's to handle (`shard_retired`), as for any queued run.
        let stream = QueueStream::new(run.queue.clone(), run.shard);
        match transport.publish(&stream, &Entry::next_attempt(run)).await {
            Ok(entry_id) => {
                sent += 1;
                records.push(DispatchRecord {
                    tenant_id: run.tenant_id,
                    run_id: run.id,
                    attempt: run.attempt,
                    entry_id,
                    shard: run.shard,
                });
            }
            Err(e) => {
                tracing::warn!(run_id = %run.id, error = %e, "sending a run woken for a slot failed; the lost-dispatch pass will resend it")
            }
        }
    }
    if let Err(e) = ledger.record_dispatches(&records).await {
        tracing::warn!(error = %e, "woken runs sent but their dispatches not recorded");
    }
    Ok(sent)
}

/// The slots of a key and who holds them, for explaining a waiting run.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SlotHolders {
    /// The key.
    pub key: String,
    /// The limit that made the run wait.
    pub limit: Option<i32>,
    /// Runs holding its slots, oldest first.
    pub held_by: Vec<i64>,
    /// Runs waiting ahead of this one.
    pub waiting_ahead: i64,
    /// Slots workers hold as credits that no run of theirs uses (see
    /// [`credits`]).
    pub unused_credits: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Computed independently with Python's hashlib (the first 32 hex
    /// digits of the SHA-256 of the key's UTF-8).
    #[test]
    fn a_key_digest_is_the_head_of_its_sha256() {
        assert_eq!(
            key_digest("inventory.sync/42/connection=\u{e9}"),
            "f2d082a780f1182dbb3d6761ec6f6912"
        );
    }

    #[test]
    fn keys_stay_within_the_tenant() {
        let per_tenant = ConcurrencyLimit::new(2, "tenant").unwrap();
        assert_eq!(
            per_tenant.key_for("inventory.sync", 7, &json!({})).unwrap(),
            "inventory.sync/7"
        );
        let per_connection = ConcurrencyLimit::new(2, "inputs.connection").unwrap();
        assert_eq!(
            per_connection
                .key_for("inventory.sync", 7, &json!({"connection": "c-1"}))
                .unwrap(),
            "inventory.sync/7/connection=c-1"
        );
        assert_eq!(
            per_connection
                .key_for("inventory.sync", 8, &json!({"connection": 12}))
                .unwrap(),
            "inventory.sync/8/connection=12"
        );
        let missing = per_connection
            .key_for("inventory.sync", 7, &json!({"other": 1}))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("\"connection\""), "{missing}");
    }

    #[test]
    fn bad_declarations_are_named() {
        assert!(ConcurrencyLimit::new(0, "tenant").is_err());
        assert!(ConcurrencyLimit::new(2, "inputs.").is_err());
        assert!(
            ConcurrencyLimit::new(2, "user")
                .unwrap_err()
                .contains("user")
        );
    }
}
