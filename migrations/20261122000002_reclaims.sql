-- What the reaper needs: a record of reclaims on the run, and partial indexes
-- so each pass scans only the rows it can act on.

-- Every reclaim or re-dispatch, oldest first: {"reason", "attempt", "holder", "at"}.
ALTER TABLE operation_runs
    ADD COLUMN reclaims jsonb NOT NULL DEFAULT '[]'::jsonb CHECK (jsonb_typeof(reclaims) = 'array');

-- Stuck running: runs whose heartbeat is older than the lease.
CREATE INDEX operation_runs_running_heartbeat ON operation_runs (heartbeat_at) WHERE status = 'running';
-- Lost dispatch: queued runs whose latest dispatch is old.
CREATE INDEX operation_runs_queued_dispatch ON operation_runs (COALESCE(dispatched_at, created_at)) WHERE status = 'queued';
-- Retention: completed runs by completion time.
CREATE INDEX operation_runs_completed_at ON operation_runs (completed_at) WHERE status = 'completed';
