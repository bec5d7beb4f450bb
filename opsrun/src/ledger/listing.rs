//! The Monitoring → Operations list: one tenant's runs newest first, by
//! keyset on `(created_at, id)` so every page costs the same however deep.
//! Only the clauses a filter uses are added, each value bound.

use sqlx::types::Json;
use sqlx::{Postgres, QueryBuilder};

use super::{Ledger, RUN_COLUMNS};
use crate::error::{Result, db};
use crate::listing::{Cursor, InitiatorFilter, Page, RunFilter};
use crate::run::{Run, Status};

impl Ledger {
    /// One page of `tenant_id`'s runs matching `filter`, newest first.
    pub async fn list_runs(&self, tenant_id: i64, filter: &RunFilter) -> Result<Page> {
        let mut q = QueryBuilder::<Postgres>::new("SELECT ");
        q.push(RUN_COLUMNS)
            .push(" FROM operation_runs WHERE tenant_id = ")
            .push_bind(tenant_id)
            .push(" AND created_at >= ")
            .push_bind(filter.since);
        if let Some(until) = filter.until {
            q.push(" AND created_at < ").push_bind(until);
        }
        if let Some(run_type) = &filter.run_type {
            q.push(" AND type = ").push_bind(run_type.clone());
        }
        if let Some(status) = filter.status {
            q.push(" AND status = ").push_bind(status.as_str());
            if status != Status::Completed {
                // Same rows; lets the index over active runs serve the page.
                q.push(" AND completed_at IS NULL");
            }
        }
        if let Some(outcome) = filter.outcome {
            q.push(" AND outcome = ").push_bind(outcome.as_str());
        }
        match &filter.initiator {
            None => {}
            Some(InitiatorFilter::System) => {
                q.push(" AND user_id IS NULL");
            }
            Some(InitiatorFilter::User(id)) => {
                q.push(" AND user_id = ").push_bind(*id);
            }
            Some(InitiatorFilter::Name(name)) => {
                q.push(" AND lower(initiator_name) = lower(")
                    .push_bind(name.clone())
                    .push(")");
            }
        }
        if let Some(code) = &filter.failure_code {
            q.push(" AND failure_summary @> ")
                .push_bind(Json(serde_json::json!([{ "code": code }])));
        }
        if let Some(identity) = &filter.identity {
            q.push(" AND run_identity_hash = ")
                .push_bind(identity.clone());
        }
        if let Some(after) = filter.after {
            q.push(" AND (created_at, id) < (")
                .push_bind(after.created_at)
                .push(", ")
                .push_bind(after.id)
                .push(")");
        }
        // One more than the page: whether it exists says if there is a next page.
        q.push(" ORDER BY created_at DESC, id DESC LIMIT ")
            .push_bind(i64::from(filter.limit) + 1);
        let mut runs: Vec<Run> = q
            .build_query_as()
            .fetch_all(&self.db)
            .await
            .map_err(db("listing runs"))?;
        let next = if runs.len() > filter.limit as usize {
            runs.truncate(filter.limit as usize);
            runs.last().map(Cursor::after)
        } else {
            None
        };
        Ok(Page { runs, next })
    }
}
