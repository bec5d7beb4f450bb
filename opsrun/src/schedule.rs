//! Schedules: a cron expression in a time zone fires a run of a type for a
//! tenant at each slot. Each slot is a `strict` run keyed on the schedule
//! and the slot time, so however many reapers fire it, and however often a
//! round is repeated after a crash, a slot runs once. Slots are computed in
//! the schedule's zone by a maintained cron parser (croner), which follows
//! DST: a slot in the hour that does not exist fires at the hour's end, a
//! slot in the hour that repeats fires once.
//!
//! After downtime several slots may be due at once; the missed-slot policy
//! says what happens to them: `skip` fires only a slot that came within the
//! last minute and records the others as skipped, `latest` fires the latest
//! one and skips the rest, `catch_up` fires up to N of the latest, oldest
//! first, and skips older ones.

use std::str::FromStr;

use crate::error::{Error, Result};
use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;
use croner::Cron;

/// How long after its time a slot still counts as on time under `skip`.
pub const ON_TIME: TimeDelta = TimeDelta::minutes(1);
/// Most slots one schedule fires in one round.
pub const MAX_CATCH_UP: u32 = 1000;

/// What happens to slots missed while nothing fired them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissedPolicy {
    /// Fire only a slot within [`ON_TIME`] of now; record older ones as skipped.
    Skip,
    /// Fire the latest due slot; record older ones as skipped.
    Latest,
    /// Fire up to this many of the latest due slots, oldest first.
    CatchUp(u32),
}

impl MissedPolicy {
    /// Its stored name (`skip`, `latest`, `catch_up`) and bound.
    pub fn parts(self) -> (&'static str, i32) {
        match self {
            MissedPolicy::Skip => ("skip", 0),
            MissedPolicy::Latest => ("latest", 0),
            MissedPolicy::CatchUp(n) => ("catch_up", n as i32),
        }
    }

    /// From its stored name and bound.
    pub fn from_parts(name: &str, max: i32) -> Result<MissedPolicy> {
        match name {
            "skip" => Ok(MissedPolicy::Skip),
            "latest" => Ok(MissedPolicy::Latest),
            "catch_up" => Ok(MissedPolicy::CatchUp(
                max.clamp(1, MAX_CATCH_UP as i32) as u32
            )),
            other => Err(Error::invalid(
                "missed",
                format!("unknown policy {other:?}"),
            )),
        }
    }
}

impl FromStr for MissedPolicy {
    type Err = Error;

    /// `skip`, `latest` or `catch-up:N` (1 to 1000).
    fn from_str(text: &str) -> Result<MissedPolicy> {
        match text {
            "skip" => Ok(MissedPolicy::Skip),
            "latest" => Ok(MissedPolicy::Latest),
            other => match other.strip_prefix("catch-up:").map(str::parse::<u32>) {
                Some(Ok(n)) if (1..=MAX_CATCH_UP).contains(&n) => Ok(MissedPolicy::CatchUp(n)),
                _ => Err(Error::invalid(
                    "missed",
                    format!(
                        "{other:?} is not skip, latest or catch-up:N (N from 1 to {MAX_CATCH_UP})"
                    ),
                )),
            },
        }
    }
}

/// A parsed cron expression in a time zone.
#[derive(Debug, Clone)]
pub struct Timing {
    cron: Cron,
    zone: Tz,
}

impl Timing {
    /// Parse a five-field cron expression (`30 2 * * *`; ranges, lists,
    /// steps, `L`, `#` as croner reads them) and an IANA zone name.
    pub fn parse(cron: &str, zone: &str) -> Result<Timing> {
        let parsed = Cron::from_str(cron.trim()).map_err(|e| {
            Error::invalid("cron", format!("{cron:?} is not a cron expression: {e}"))
        })?;
        let zone = zone.parse::<Tz>().map_err(|_| {
            Error::invalid(
                "timezone",
                format!("{zone:?} is not an IANA time zone such as Europe/Paris"),
            )
        })?;
        Ok(Timing { cron: parsed, zone })
    }

    /// The first slot after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&after.with_timezone(&self.zone), false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// The next `n` slots after `after`.
    pub fn upcoming(&self, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let mut slots = Vec::with_capacity(n);
        let mut from = after;
        while slots.len() < n {
            match self.next_after(from) {
                Some(slot) => {
                    slots.push(slot);
                    from = slot;
                }
                None => break,
            }
        }
        slots
    }
}

/// A validated schedule: what [`Definition::spec`] stores.
#[derive(Debug, Clone)]
pub struct Definition {
    /// Its tenant.
    pub tenant_id: i64,
    /// Its name, unique in the tenant.
    pub name: String,
    /// Cron expression, as given.
    pub cron: String,
    /// Time zone, as given.
    pub timezone: String,
    /// Both, parsed.
    pub timing: Timing,
    /// The run type it fires.
    pub run_type: String,
    /// The runs' inputs.
    pub inputs: serde_json::Value,
    /// Missed-slot policy.
    pub missed: MissedPolicy,
}

/// Longest schedule name.
pub const MAX_NAME_CHARS: usize = 100;

impl Definition {
    /// Check every field; the first problem is returned, naming its field.
    pub fn new(
        tenant_id: i64,
        name: &str,
        cron: &str,
        timezone: &str,
        run_type: &str,
        inputs: serde_json::Value,
        missed: MissedPolicy,
    ) -> Result<Definition> {
        if tenant_id <= 0 {
            return Err(Error::invalid("tenant_id", "must be a positive integer"));
        }
        crate::request::check_label("name", name, MAX_NAME_CHARS)?;
        crate::request::validate_type(run_type)?;
        if !inputs.is_object() {
            return Err(Error::invalid("inputs", "must be a JSON object"));
        }
        for key in ["schedule_id", "scheduled_for"] {
            if inputs.get(key).is_some() {
                return Err(Error::invalid(
                    "inputs",
                    format!("{key} is set by the schedule"),
                ));
            }
        }
        Ok(Definition {
            tenant_id,
            name: name.trim().to_string(),
            cron: cron.trim().to_string(),
            timezone: timezone.trim().to_string(),
            timing: Timing::parse(cron, timezone)?,
            run_type: run_type.to_string(),
            inputs,
            missed,
        })
    }

    /// What to store, by `by`, its first slot after `now`.
    pub fn spec<'a>(&'a self, by: &'a str, now: DateTime<Utc>) -> crate::ledger::ScheduleSpec<'a> {
        crate::ledger::ScheduleSpec {
            tenant_id: self.tenant_id,
            name: &self.name,
            cron: &self.cron,
            timezone: &self.timezone,
            run_type: &self.run_type,
            inputs: &self.inputs,
            missed: self.missed.parts(),
            next_slot: self.timing.next_after(now),
            by,
        }
    }
}

/// The run request of `schedule`'s slot `slot`: its type and inputs (plus
/// `schedule_id` and `scheduled_for`), started by the system, strict on the
/// slot.
pub fn slot_request(schedule: &crate::ledger::Schedule, slot: DateTime<Utc>) -> crate::RunRequest {
    let mut inputs = match &schedule.inputs.0 {
        serde_json::Value::Object(map) => map.clone(),
        _ => serde_json::Map::new(),
    };
    inputs.insert("schedule_id".into(), schedule.id.into());
    inputs.insert("scheduled_for".into(), slot.to_rfc3339().into());
    let mut request = crate::RunRequest::new(schedule.tenant_id, schedule.run_type.clone())
        .inputs(serde_json::Value::Object(inputs))
        .context(serde_json::json!({ "schedule": schedule.name }));
    request.schedule_slot = Some((schedule.id, slot));
    request
}

/// The slots of one round: those to fire (oldest first) and those skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Due {
    /// Slots to fire, oldest first.
    pub fire: Vec<DateTime<Utc>>,
    /// Slots passed over under the missed-slot policy.
    pub skip: Vec<DateTime<Utc>>,
}

impl Due {
    /// The latest slot this round settles (fired or skipped).
    pub fn last(&self) -> Option<DateTime<Utc>> {
        self.fire.iter().chain(&self.skip).max().copied()
    }
}

/// The slots after `after` and up to `now`, split by `policy`. At most
/// [`MAX_CATCH_UP`] are fired; skipped ones beyond that many are not listed
/// one by one (the schedule still moves past them).
pub fn due(timing: &Timing, policy: MissedPolicy, after: DateTime<Utc>, now: DateTime<Utc>) -> Due {
    // The slots are walked newest-last; only the latest few matter to any
    // policy, so older ones are counted as skipped without being kept.
    let keep = match policy {
        MissedPolicy::CatchUp(n) => n as usize,
        _ => 1,
    };
    let mut recent: std::collections::VecDeque<DateTime<Utc>> = std::collections::VecDeque::new();
    let mut skipped = Vec::new();
    let mut from = after;
    while let Some(slot) = timing.next_after(from).filter(|slot| *slot <= now) {
        recent.push_back(slot);
        if recent.len() > keep
            && let Some(old) = recent.pop_front()
            && skipped.len() < MAX_CATCH_UP as usize
        {
            skipped.push(old);
        }
        from = slot;
    }
    let mut fire: Vec<DateTime<Utc>> = recent.into();
    if policy == MissedPolicy::Skip {
        let (on_time, late): (Vec<_>, Vec<_>) =
            fire.into_iter().partition(|slot| now - *slot <= ON_TIME);
        fire = on_time;
        skipped.extend(late);
    }
    // The latest settled slot must be among the listed ones.
    skipped.sort();
    Due {
        fire,
        skip: skipped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    #[test]
    fn slots_follow_the_zone_across_dst() {
        let daily = Timing::parse("30 2 * * *", "Europe/Paris").unwrap();
        // Spring forward (29 March 2026): 02:30 does not exist; fires at 03:00 CEST.
        assert_eq!(
            daily.upcoming(utc(2026, 3, 27, 12, 0), 3),
            vec![
                utc(2026, 3, 28, 1, 30), // 02:30 CET
                utc(2026, 3, 29, 1, 0),  // 03:00 CEST
                utc(2026, 3, 30, 0, 30), // 02:30 CEST
            ]
        );
        // Fall back (25 October 2026): 02:30 happens twice; fires once.
        assert_eq!(
            daily.upcoming(utc(2026, 10, 24, 12, 0), 2),
            vec![
                utc(2026, 10, 25, 0, 30), // 02:30 CEST
                utc(2026, 10, 26, 1, 30), // 02:30 CET
            ]
        );
    }

    #[test]
    fn missed_slots_follow_the_policy() {
        let hourly = Timing::parse("0 * * * *", "UTC").unwrap();
        // Down from 09:30 to 12:00:20: the 10:00, 11:00 and 12:00 slots are due.
        let after = utc(2026, 12, 2, 9, 30);
        let now = utc(2026, 12, 2, 12, 0) + TimeDelta::seconds(20);
        let (ten, eleven, noon) = (
            utc(2026, 12, 2, 10, 0),
            utc(2026, 12, 2, 11, 0),
            utc(2026, 12, 2, 12, 0),
        );
        assert_eq!(
            due(&hourly, MissedPolicy::Skip, after, now),
            Due {
                fire: vec![noon],
                skip: vec![ten, eleven]
            }
        );
        assert_eq!(
            due(&hourly, MissedPolicy::Latest, after, now),
            Due {
                fire: vec![noon],
                skip: vec![ten, eleven]
            }
        );
        assert_eq!(
            due(&hourly, MissedPolicy::CatchUp(2), after, now),
            Due {
                fire: vec![eleven, noon],
                skip: vec![ten]
            }
        );
        assert_eq!(
            due(&hourly, MissedPolicy::CatchUp(5), after, now),
            Due {
                fire: vec![ten, eleven, noon],
                skip: vec![]
            }
        );
        // Two minutes late: `skip` fires nothing, `latest` still fires noon.
        let late = utc(2026, 12, 2, 12, 2);
        assert_eq!(
            due(&hourly, MissedPolicy::Skip, after, late),
            Due {
                fire: vec![],
                skip: vec![ten, eleven, noon]
            }
        );
        assert_eq!(
            due(&hourly, MissedPolicy::Latest, after, late).fire,
            vec![noon]
        );
        // Nothing due.
        assert_eq!(due(&hourly, MissedPolicy::Skip, noon, late), Due::default());
    }

    #[test]
    fn bad_timings_and_policies_are_refused() {
        assert!(
            Timing::parse("61 * * * *", "UTC")
                .unwrap_err()
                .to_string()
                .contains("cron")
        );
        assert!(
            Timing::parse("0 3 * * *", "Mars/Olympus")
                .unwrap_err()
                .to_string()
                .contains("timezone")
        );
        assert_eq!(
            "catch-up:3".parse::<MissedPolicy>().unwrap(),
            MissedPolicy::CatchUp(3)
        );
        assert!("catch-up:0".parse::<MissedPolicy>().is_err());
        assert!("sometimes".parse::<MissedPolicy>().is_err());
    }
}
