//! The operations chart: runs completed per hour (or day) by outcome over a
//! window, and duration percentiles per type, read from hourly rollups
//! (see [`crate::Ledger::roll_up`]) plus the runs completed since the last
//! rolled hour. Durations are counted in fixed buckets, so percentiles are
//! estimates within a bucket (as Prometheus histograms are).

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;

/// Upper bounds (seconds) of the duration buckets: bucket 0 is below the
/// first, bucket `i` is `[bounds[i-1], bounds[i])`, the last is past the
/// last bound. Stored as bucket numbers: never reorder, only append.
pub const DURATION_BOUNDS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1800.0, 3600.0, 7200.0, 21600.0, 86400.0,
];

/// Windows longer than this are charted per day.
pub const HOURLY_UP_TO: TimeDelta = TimeDelta::days(7);

/// How wide a chart's bars are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// One bar per hour.
    Hour,
    /// One bar per day (UTC).
    Day,
}

impl Step {
    /// The step for a window from `since` to `until`.
    pub fn for_window(since: DateTime<Utc>, until: DateTime<Utc>) -> Step {
        if until - since > HOURLY_UP_TO {
            Step::Day
        } else {
            Step::Hour
        }
    }

    /// Postgres' `date_trunc` unit.
    pub fn unit(self) -> &'static str {
        match self {
            Step::Hour => "hour",
            Step::Day => "day",
        }
    }

    /// The step's length.
    pub fn length(self) -> TimeDelta {
        match self {
            Step::Hour => TimeDelta::hours(1),
            Step::Day => TimeDelta::days(1),
        }
    }
}

/// Runs completed in one bar with one outcome.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct OutcomeCount {
    /// The bar's start.
    pub at: DateTime<Utc>,
    /// The outcome.
    pub outcome: String,
    /// Runs.
    pub runs: i64,
}

/// Runs of one type in one duration bucket.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct DurationCount {
    /// The run type.
    #[sqlx(rename = "type")]
    pub run_type: String,
    /// The bucket (see [`DURATION_BOUNDS`]).
    pub bucket: i16,
    /// Runs.
    pub runs: i64,
}

/// Duration percentiles of one type, in seconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TypeDurations {
    /// The run type.
    pub run_type: String,
    /// Runs with a duration.
    pub runs: i64,
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
}

/// A tenant's chart over a window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Chart {
    /// Start of the window (a step boundary).
    pub since: DateTime<Utc>,
    /// End of the window.
    pub until: DateTime<Utc>,
    /// Bar width.
    pub step: Step,
    /// Completed runs per bar and outcome (bars without runs left out).
    pub counts: Vec<OutcomeCount>,
    /// Per type, most runs first.
    pub durations: Vec<TypeDurations>,
}

impl Chart {
    /// Runs completed in the window.
    pub fn total(&self) -> i64 {
        self.counts.iter().map(|c| c.runs).sum()
    }

    /// Runs completed in the window with `outcome`.
    pub fn total_of(&self, outcome: &str) -> i64 {
        self.counts
            .iter()
            .filter(|c| c.outcome == outcome)
            .map(|c| c.runs)
            .sum()
    }
}

/// Percentiles per type from bucket counts.
pub fn durations(counts: &[DurationCount]) -> Vec<TypeDurations> {
    let mut types: Vec<&str> = counts.iter().map(|c| c.run_type.as_str()).collect();
    types.sort();
    types.dedup();
    let mut out: Vec<TypeDurations> = types
        .into_iter()
        .map(|run_type| {
            let mut buckets = vec![0i64; DURATION_BOUNDS.len() + 1];
            for c in counts.iter().filter(|c| c.run_type == run_type) {
                let i = usize::try_from(c.bucket)
                    .unwrap_or(0)
                    .min(DURATION_BOUNDS.len());
                buckets[i] += c.runs;
            }
            TypeDurations {
                run_type: run_type.to_string(),
                runs: buckets.iter().sum(),
                p50: percentile(&buckets, 0.50),
                p95: percentile(&buckets, 0.95),
                p99: percentile(&buckets, 0.99),
            }
        })
        .collect();
    out.sort_by(|a, b| b.runs.cmp(&a.runs).then(a.run_type.cmp(&b.run_type)));
    out
}

/// The `q` quantile of bucket counts, interpolated linearly inside its
/// bucket (the first from 0, the last reported as its lower bound).
fn percentile(buckets: &[i64], q: f64) -> f64 {
    let total: i64 = buckets.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let rank = q * total as f64;
    let mut below = 0i64;
    for (i, &n) in buckets.iter().enumerate() {
        if n > 0 && (below + n) as f64 >= rank {
            let low = if i == 0 { 0.0 } else { DURATION_BOUNDS[i - 1] };
            let Some(&high) = DURATION_BOUNDS.get(i) else {
                return low;
            };
            let within = ((rank - below as f64) / n as f64).clamp(0.0, 1.0);
            return low + (high - low) * within;
        }
        below += n;
    }
    *DURATION_BOUNDS.last().unwrap_or(&0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(bucket: i16, runs: i64) -> DurationCount {
        DurationCount {
            run_type: "t.x".into(),
            bucket,
            runs,
        }
    }

    #[test]
    fn percentiles_fall_in_the_right_bucket() {
        // 90 runs in [0.1, 0.25), 10 in [5, 10).
        let d = durations(&[count(4, 90), count(9, 10)]);
        assert_eq!(d[0].runs, 100);
        assert!((0.1..0.25).contains(&d[0].p50), "{:?}", d[0]);
        assert!((5.0..=10.0).contains(&d[0].p95), "{:?}", d[0]);
        assert!((5.0..=10.0).contains(&d[0].p99), "{:?}", d[0]);
        assert!(d[0].p50 <= d[0].p95 && d[0].p95 <= d[0].p99);
    }

    #[test]
    fn past_the_last_bound_is_the_last_bound() {
        let last = DURATION_BOUNDS.len() as i16;
        let d = durations(&[count(last, 3)]);
        assert_eq!(d[0].p99, *DURATION_BOUNDS.last().unwrap());
    }

    #[test]
    fn long_windows_are_charted_per_day() {
        let now = Utc::now();
        assert_eq!(Step::for_window(now - TimeDelta::days(1), now), Step::Hour);
        assert_eq!(Step::for_window(now - TimeDelta::days(30), now), Step::Day);
    }
}
