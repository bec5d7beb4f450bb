//! Schedules: each due schedule's slots are settled under its missed-slot
//! policy (see [`opsrun::schedule`]): the slots to fire become runs (strict
//! on the schedule and the slot, so a slot runs once however many reapers
//! fire it, and a round repeated after a crash adds nothing), the others are
//! recorded as skipped, and the schedule moves past them with a
//! compare-and-set on its last slot. Runs with the due pass, every
//! `--due-interval`.
//!
//! Schedules declared in the registry are kept in Postgres as declared by
//! every full round ([`sync_declared`]): created, or changed when their
//! declaration changed; a schedule of the same name made through the CLI or
//! the API is left alone (with a warning).
//!
//! Touches: `schedules` whose `next_slot` has come; their slot history;
//! the runs they fire. Reports: [`SchedulesReport`].

use opsrun::schedule::{MissedPolicy, Timing, due, slot_request};
use opsrun::{Result, RunService};
use serde::Serialize;

/// Schedules settled per round.
const BATCH: i64 = 500;

/// What one round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SchedulesReport {
    /// Slots that became runs (or found the run another reaper made).
    pub fired: u64,
    /// Slots skipped under their schedule's policy.
    pub skipped: u64,
    /// Schedules another reaper moved first.
    pub raced: u64,
}

/// Who declared-schedules are created by.
pub const REGISTRY: &str = "registry";

/// Keep the registry's schedules in Postgres as declared; returns how many
/// were created or changed.
pub async fn sync_declared(service: &RunService) -> Result<u64> {
    let mut changed = 0;
    let now = chrono::Utc::now();
    for declared in &service.registry().schedules {
        let definition = declared.definition()?;
        match service
            .ledger()
            .sync_schedule(&definition.spec(REGISTRY, now))
            .await?
        {
            "created" | "changed" => changed += 1,
            "not_ours" => tracing::warn!(tenant_id = declared.tenant_id, name = %declared.name,
                "a schedule declared in the registry has the name of one made through the CLI or API; that one is kept"),
            _ => {}
        }
    }
    Ok(changed)
}

/// Run one round.
pub async fn run_once(service: &RunService) -> Result<SchedulesReport> {
    let mut report = SchedulesReport::default();
    let now = chrono::Utc::now();
    for schedule in service.ledger().due_schedules(BATCH).await? {
        let timing = match Timing::parse(&schedule.cron, &schedule.timezone) {
            Ok(timing) => timing,
            Err(e) => {
                tracing::error!(schedule_id = schedule.id, error = %e, "a stored schedule no longer parses; skipped");
                continue;
            }
        };
        let policy = MissedPolicy::from_parts(&schedule.missed, schedule.catch_up_max)?;
        let slots = due(&timing, policy, schedule.last_slot, now);
        let mut fired = Vec::with_capacity(slots.fire.len());
        for slot in &slots.fire {
            let ensured = service.ensure_run(&slot_request(&schedule, *slot)).await?;
            fired.push((*slot, ensured.run.id));
        }
        service
            .ledger()
            .record_slots(schedule.id, &fired, &slots.skip)
            .await?;
        let settled = slots.last().unwrap_or(schedule.last_slot);
        let next = timing.next_after(settled.max(now));
        if service
            .ledger()
            .advance_schedule(schedule.id, schedule.last_slot, settled, next)
            .await?
        {
            report.fired += fired.len() as u64;
            report.skipped += slots.skip.len() as u64;
            if !slots.skip.is_empty() {
                tracing::warn!(
                    schedule_id = schedule.id,
                    tenant_id = schedule.tenant_id,
                    skipped = slots.skip.len(),
                    policy = schedule.missed,
                    "missed schedule slots skipped"
                );
            }
        } else {
            report.raced += 1;
        }
    }
    Ok(report)
}
