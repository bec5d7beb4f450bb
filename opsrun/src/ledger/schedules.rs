//! Schedules and their settled slots (see [`crate::schedule`]), always for
//! one tenant when a caller names one; the reaper reads the due ones of
//! every tenant and advances each with a compare-and-set on its last slot.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::types::Json;

use super::Ledger;
use crate::error::{Error, Result, db};
use crate::run::RunId;

const COLUMNS: &str = "id, tenant_id, name, cron, timezone, type, inputs, missed, catch_up_max, \
     paused, last_slot, next_slot, created_by, created_at, updated_at";

/// A stored schedule.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct Schedule {
    /// Its id (the `schedule_id` of the runs it fires).
    pub id: i64,
    /// The tenant its runs belong to.
    pub tenant_id: i64,
    /// Its name, unique in the tenant.
    pub name: String,
    /// Five-field cron expression.
    pub cron: String,
    /// IANA time zone the expression is read in.
    pub timezone: String,
    /// The run type it fires.
    #[sqlx(rename = "type")]
    #[serde(rename = "type")]
    pub run_type: String,
    /// The runs' inputs (plus `schedule_id` and `scheduled_for`).
    pub inputs: Json<serde_json::Value>,
    /// Missed-slot policy name: `skip`, `latest` or `catch_up`.
    pub missed: String,
    /// `catch_up`'s bound.
    pub catch_up_max: i32,
    /// A paused schedule fires nothing; its slots are settled as skipped
    /// under its policy once it is resumed.
    pub paused: bool,
    /// The latest slot settled.
    pub last_slot: DateTime<Utc>,
    /// The next slot to fire.
    pub next_slot: Option<DateTime<Utc>>,
    /// Who created it.
    pub created_by: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// A schedule to create or change.
#[derive(Debug, Clone, Copy)]
pub struct ScheduleSpec<'a> {
    /// Its tenant.
    pub tenant_id: i64,
    /// Its name.
    pub name: &'a str,
    /// Cron expression.
    pub cron: &'a str,
    /// Time zone.
    pub timezone: &'a str,
    /// Run type.
    pub run_type: &'a str,
    /// Run inputs.
    pub inputs: &'a serde_json::Value,
    /// Missed-slot policy name and bound.
    pub missed: (&'a str, i32),
    /// Its first slot after now.
    pub next_slot: Option<DateTime<Utc>>,
    /// Who creates or changes it.
    pub by: &'a str,
}

/// One settled slot.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct ScheduleSlot {
    /// The slot time.
    pub slot: DateTime<Utc>,
    /// The run it fired (`None` when skipped).
    pub run_id: Option<RunId>,
    /// Whether it was skipped under the missed-slot policy.
    pub skipped: bool,
    /// When it was settled.
    pub settled_at: DateTime<Utc>,
}

/// Binds a [`ScheduleSpec`] as `$1` to `$9` (tenant, name, cron, zone,
/// type, inputs, policy, bound, next slot), in the order every schedule
/// statement takes them.
trait BindSpec<'q> {
    fn bind_spec(self, spec: &ScheduleSpec<'q>) -> Self;
}

impl<'q, O> BindSpec<'q>
    for sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>
{
    fn bind_spec(self, spec: &ScheduleSpec<'q>) -> Self {
        self.bind(spec.tenant_id)
            .bind(spec.name)
            .bind(spec.cron)
            .bind(spec.timezone)
            .bind(spec.run_type)
            .bind(Json(spec.inputs))
            .bind(spec.missed.0)
            .bind(spec.missed.1)
            .bind(spec.next_slot)
    }
}

impl Ledger {
    /// Create a schedule; its slots start after now. A name already used
    /// in the tenant is refused.
    pub async fn create_schedule(&self, spec: &ScheduleSpec<'_>) -> Result<Schedule> {
        sqlx::query_as::<_, Schedule>(sqlx::AssertSqlSafe(format!(
            "INSERT INTO schedules (tenant_id, name, cron, timezone, type, inputs, missed, catch_up_max, next_slot, created_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (tenant_id, name) DO NOTHING RETURNING {COLUMNS}"
        )))
        .bind_spec(spec)
        .bind(spec.by)
        .fetch_optional(&self.db)
        .await
        .map_err(db("creating a schedule"))?
        .ok_or_else(|| {
            Error::invalid("name", format!("tenant {} already has a schedule named {:?}", spec.tenant_id, spec.name))
        })
    }

    /// Change a schedule's timing, type, inputs and policy; its next slot
    /// is recomputed from now. `None` when the tenant has no such schedule.
    pub async fn update_schedule(&self, spec: &ScheduleSpec<'_>) -> Result<Option<Schedule>> {
        sqlx::query_as::<_, Schedule>(sqlx::AssertSqlSafe(format!(
            "UPDATE schedules SET cron = $3, timezone = $4, type = $5, inputs = $6, missed = $7, \
                 catch_up_max = $8, next_slot = $9, last_slot = greatest(last_slot, now()), updated_at = now() \
             WHERE tenant_id = $1 AND name = $2 RETURNING {COLUMNS}"
        )))
        .bind_spec(spec)
        .fetch_optional(&self.db)
        .await
        .map_err(db("changing a schedule"))
    }

    /// Keep a schedule declared in the registry (`by` = `registry`) as
    /// declared: created when missing, changed when its declaration changed
    /// (its slots then start again from now). A schedule of the same name
    /// made through the CLI or the API is left alone. Returns `created`,
    /// `changed`, `unchanged` or `not_ours`.
    pub async fn sync_schedule(&self, spec: &ScheduleSpec<'_>) -> Result<&'static str> {
        let done: Option<(bool,)> = sqlx::query_as(
            "INSERT INTO schedules (tenant_id, name, cron, timezone, type, inputs, missed, catch_up_max, next_slot, created_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (tenant_id, name) DO UPDATE SET cron = EXCLUDED.cron, timezone = EXCLUDED.timezone, \
                 type = EXCLUDED.type, inputs = EXCLUDED.inputs, missed = EXCLUDED.missed, \
                 catch_up_max = EXCLUDED.catch_up_max, next_slot = EXCLUDED.next_slot, \
                 last_slot = greatest(schedules.last_slot, now()), updated_at = now() \
             WHERE schedules.created_by = EXCLUDED.created_by \
               AND (schedules.cron, schedules.timezone, schedules.type, schedules.inputs, schedules.missed, schedules.catch_up_max) \
                   IS DISTINCT FROM (EXCLUDED.cron, EXCLUDED.timezone, EXCLUDED.type, EXCLUDED.inputs, EXCLUDED.missed, EXCLUDED.catch_up_max) \
             RETURNING (xmax = 0)",
        )
        .bind_spec(spec)
        .bind(spec.by)
        .fetch_optional(&self.db)
        .await
        .map_err(db("keeping a declared schedule"))?;
        Ok(match done {
            Some((true,)) => "created",
            Some((false,)) => "changed",
            None => {
                let mine = self.schedules(spec.tenant_id, Some(spec.name)).await?;
                match mine.first() {
                    Some(s) if s.created_by == spec.by => "unchanged",
                    _ => "not_ours",
                }
            }
        })
    }

    /// Pause or resume a schedule. `None` when the tenant has no such schedule.
    pub async fn set_schedule_paused(
        &self,
        tenant_id: i64,
        name: &str,
        paused: bool,
    ) -> Result<Option<Schedule>> {
        sqlx::query_as::<_, Schedule>(sqlx::AssertSqlSafe(format!(
            "UPDATE schedules SET paused = $3, updated_at = now() \
             WHERE tenant_id = $1 AND name = $2 RETURNING {COLUMNS}"
        )))
        .bind(tenant_id)
        .bind(name)
        .bind(paused)
        .fetch_optional(&self.db)
        .await
        .map_err(db("pausing a schedule"))
    }

    /// Delete a schedule and its slot history (its runs stay). Whether it existed.
    pub async fn delete_schedule(&self, tenant_id: i64, name: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM schedules WHERE tenant_id = $1 AND name = $2")
            .bind(tenant_id)
            .bind(name)
            .execute(&self.db)
            .await
            .map_err(db("deleting a schedule"))?;
        Ok(done.rows_affected() > 0)
    }

    /// A tenant's schedules by name, or the one named `name`.
    pub async fn schedules(&self, tenant_id: i64, name: Option<&str>) -> Result<Vec<Schedule>> {
        sqlx::query_as::<_, Schedule>(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM schedules WHERE tenant_id = $1 AND ($2::text IS NULL OR name = $2) ORDER BY name"
        )))
        .bind(tenant_id)
        .bind(name)
        .fetch_all(&self.db)
        .await
        .map_err(db("listing schedules"))
    }

    /// Schedules of every tenant whose next slot has come, earliest first.
    pub async fn due_schedules(&self, limit: i64) -> Result<Vec<Schedule>> {
        sqlx::query_as::<_, Schedule>(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM schedules WHERE NOT paused AND next_slot <= now() \
             ORDER BY next_slot LIMIT $1"
        )))
        .bind(limit)
        .fetch_all(&self.db)
        .await
        .map_err(db("reading due schedules"))
    }

    /// Record settled slots (fired with their run, or skipped); a slot
    /// already recorded is left as it is.
    pub async fn record_slots(
        &self,
        schedule_id: i64,
        fired: &[(DateTime<Utc>, RunId)],
        skipped: &[DateTime<Utc>],
    ) -> Result<()> {
        let slots: Vec<DateTime<Utc>> = fired
            .iter()
            .map(|f| f.0)
            .chain(skipped.iter().copied())
            .collect();
        let runs: Vec<Option<i64>> = fired
            .iter()
            .map(|f| Some(f.1.0))
            .chain(skipped.iter().map(|_| None))
            .collect();
        sqlx::query(
            "INSERT INTO schedule_slots (schedule_id, slot, run_id, skipped) \
             SELECT $1, s.slot, s.run_id, s.run_id IS NULL FROM unnest($2::timestamptz[], $3::bigint[]) AS s(slot, run_id) \
             ON CONFLICT DO NOTHING",
        )
        .bind(schedule_id)
        .bind(slots)
        .bind(runs)
        .execute(&self.db)
        .await
        .map_err(db("recording schedule slots"))?;
        Ok(())
    }

    /// Move a schedule past `settled` to `next`, only if its last slot is
    /// still `seen` (another reaper did not move it first). Whether it moved.
    pub async fn advance_schedule(
        &self,
        id: i64,
        seen: DateTime<Utc>,
        settled: DateTime<Utc>,
        next: Option<DateTime<Utc>>,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE schedules SET last_slot = $3, next_slot = $4 WHERE id = $1 AND last_slot = $2",
        )
        .bind(id)
        .bind(seen)
        .bind(settled)
        .bind(next)
        .execute(&self.db)
        .await
        .map_err(db("advancing a schedule"))?;
        Ok(done.rows_affected() > 0)
    }

    /// A schedule's latest settled slots, newest first.
    pub async fn schedule_slots(&self, schedule_id: i64, limit: i64) -> Result<Vec<ScheduleSlot>> {
        sqlx::query_as(
            "SELECT slot, run_id, skipped, settled_at FROM schedule_slots WHERE schedule_id = $1 \
             ORDER BY slot DESC LIMIT $2",
        )
        .bind(schedule_id)
        .bind(limit)
        .fetch_all(&self.db)
        .await
        .map_err(db("listing schedule slots"))
    }
}
