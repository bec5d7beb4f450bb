-- Hourly rollups of completed runs, for the monitor's chart: per tenant,
-- completion hour, type and outcome, how many runs completed, and how their
-- durations (started_at to completed_at) fall into fixed buckets, from which
-- percentiles are estimated. The reaper rolls each hour up once it has
-- closed (see `Ledger::roll_up`); the chart reads rollups for rolled hours
-- and the runs themselves after `run_rollup_progress.rolled_until`, so it is
-- exact without a reaper, and stays fast at millions of runs per tenant.
-- Rollups outlive retention: the chart still shows hours whose runs are gone.
CREATE TABLE run_rollups (
    tenant_id  bigint      NOT NULL,
    hour       timestamptz NOT NULL,
    type       text        NOT NULL,
    outcome    text        NOT NULL,
    runs       bigint      NOT NULL CHECK (runs > 0),
    PRIMARY KEY (tenant_id, hour, type, outcome)
);

-- Duration bucket `bucket` (see `opsrun::chart::DURATION_BOUNDS`: 0 below
-- the first bound, n past the last) of a tenant's hour and type.
CREATE TABLE run_rollup_durations (
    tenant_id  bigint      NOT NULL,
    hour       timestamptz NOT NULL,
    type       text        NOT NULL,
    bucket     smallint    NOT NULL,
    runs       bigint      NOT NULL CHECK (runs > 0),
    PRIMARY KEY (tenant_id, hour, type, bucket)
);

-- One row: every completion before `rolled_until` (an hour boundary) is in
-- the rollups. NULL: nothing rolled up yet.
CREATE TABLE run_rollup_progress (
    only_row      boolean     PRIMARY KEY DEFAULT true CHECK (only_row),
    rolled_until  timestamptz NULL
);
INSERT INTO run_rollup_progress DEFAULT VALUES;
