//! Hourly rollups of completed runs and the chart read from them (see
//! [`crate::chart`] and migration 000018).

use chrono::{DateTime, TimeDelta, Utc};

use super::Ledger;
use crate::chart::{self, Chart, DurationCount, OutcomeCount, Step};
use crate::error::{Result, db};

/// An hour is rolled up once it ended this long ago, so completions still
/// committing (whose `completed_at` is their statement's start) are in.
pub const ROLLUP_DELAY: TimeDelta = TimeDelta::minutes(2);

impl Ledger {
    /// Roll up at most `max_hours` closed hours that hold completions
    /// (empty stretches are skipped in one step), one statement per hour.
    /// Several reapers take turns on the progress row. Returns the hours
    /// rolled up.
    pub async fn roll_up(&self, max_hours: u32) -> Result<u32> {
        let mut rolled = 0;
        while rolled < max_hours {
            // `next`: the first hour from `rolled_until` with a completion,
            // if it has closed; without one, the progress moves on to the
            // last closed hour, where the chart's live part starts. (The
            // data-modifying parts run whether or not they are read.)
            let hours: i64 = sqlx::query_scalar(
                "WITH progress AS ( \
                   SELECT rolled_until, date_trunc('hour', now() - $1::interval) AS closed \
                   FROM run_rollup_progress FOR UPDATE), \
                 next AS ( \
                   SELECT p.rolled_until, p.closed, \
                          (SELECT date_trunc('hour', min(completed_at)) FROM operation_runs \
                           WHERE status = 'completed' AND completed_at >= coalesce(p.rolled_until, '-infinity')) AS hour \
                   FROM progress p), \
                 h AS (SELECT hour FROM next WHERE hour < closed), \
                 counts AS ( \
                   INSERT INTO run_rollups (tenant_id, hour, type, outcome, runs) \
                   SELECT r.tenant_id, h.hour, r.type, r.outcome, count(*) \
                   FROM h JOIN operation_runs r ON r.status = 'completed' \
                     AND r.completed_at >= h.hour AND r.completed_at < h.hour + interval '1 hour' \
                   GROUP BY r.tenant_id, h.hour, r.type, r.outcome \
                   ON CONFLICT DO NOTHING RETURNING 1), \
                 durations AS ( \
                   INSERT INTO run_rollup_durations (tenant_id, hour, type, bucket, runs) \
                   SELECT r.tenant_id, h.hour, r.type, \
                          width_bucket(extract(epoch FROM r.completed_at - r.started_at)::float8, $2::float8[]), count(*) \
                   FROM h JOIN operation_runs r ON r.status = 'completed' AND r.started_at IS NOT NULL \
                     AND r.completed_at >= h.hour AND r.completed_at < h.hour + interval '1 hour' \
                   GROUP BY 1, 2, 3, 4 \
                   ON CONFLICT DO NOTHING RETURNING 1), \
                 moved AS ( \
                   UPDATE run_rollup_progress SET rolled_until = ( \
                     SELECT CASE WHEN n.hour < n.closed THEN n.hour + interval '1 hour' \
                                 ELSE greatest(n.rolled_until, n.closed) END FROM next n) \
                   RETURNING 1) \
                 SELECT count(*) FROM h",
            )
            .bind(ROLLUP_DELAY)
            .bind(chart::DURATION_BOUNDS)
            .fetch_one(&self.db)
            .await
            .map_err(db("rolling up runs"))?;
            if hours == 0 {
                break;
            }
            rolled += 1;
        }
        Ok(rolled)
    }

    /// A tenant's chart of runs completed from `since` to `until` (moved
    /// out to the step's boundaries).
    pub async fn chart(
        &self,
        tenant_id: i64,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Chart> {
        let step = Step::for_window(since, until);
        // The window moved out to the step's boundaries, and where the live
        // part starts (the rollups end), as values: with them bound, each
        // statement below is planned for its own range (unnamed), so the
        // live part reads the last hour through the completion index instead
        // of the tenant's whole history.
        let (since, until, live_from): (DateTime<Utc>, DateTime<Utc>, DateTime<Utc>) =
            sqlx::query_as(
                "SELECT s, u, greatest(s, coalesce((SELECT rolled_until FROM run_rollup_progress), '-infinity')) \
                 FROM (SELECT date_trunc($1, $2::timestamptz) AS s, \
                              CASE WHEN date_trunc($1, $3::timestamptz) = $3 THEN $3 \
                                   ELSE date_trunc($1, $3::timestamptz) + $4::interval END AS u) w",
            )
            .bind(step.unit())
            .bind(since)
            .bind(until)
            .bind(step.length())
            .fetch_one(&self.db)
            .await
            .map_err(db("reading the chart"))?;
        let counts = sqlx::query_as::<_, OutcomeCount>(
            "SELECT date_trunc($5, hour) AS at, outcome, sum(runs)::bigint AS runs FROM ( \
               SELECT hour, outcome, runs FROM run_rollups \
               WHERE tenant_id = $1 AND hour >= $2 AND hour < least($3, $4) \
               UNION ALL \
               SELECT completed_at, outcome, 1 FROM operation_runs \
               WHERE tenant_id = $1 AND status = 'completed' AND completed_at >= $4 AND completed_at < $3 \
             ) c GROUP BY 1, 2 ORDER BY 1, 2",
        )
        .bind(tenant_id)
        .bind(since)
        .bind(until)
        .bind(live_from)
        .bind(step.unit())
        .persistent(false)
        .fetch_all(&self.db)
        .await
        .map_err(db("reading the chart"))?;
        let durations = sqlx::query_as::<_, DurationCount>(
            "SELECT type, bucket::smallint AS bucket, sum(runs)::bigint AS runs FROM ( \
               SELECT type, bucket::int AS bucket, runs FROM run_rollup_durations \
               WHERE tenant_id = $1 AND hour >= $2 AND hour < least($3, $4) \
               UNION ALL \
               SELECT type, width_bucket(extract(epoch FROM completed_at - started_at)::float8, $5::float8[]), 1 \
               FROM operation_runs \
               WHERE tenant_id = $1 AND status = 'completed' AND started_at IS NOT NULL \
                 AND completed_at >= $4 AND completed_at < $3 \
             ) d GROUP BY 1, 2",
        )
        .bind(tenant_id)
        .bind(since)
        .bind(until)
        .bind(live_from)
        .bind(chart::DURATION_BOUNDS)
        .persistent(false)
        .fetch_all(&self.db)
        .await
        .map_err(db("reading the chart"))?;
        Ok(Chart {
            since,
            until,
            step,
            counts,
            durations: chart::durations(&durations),
        })
    }
}
