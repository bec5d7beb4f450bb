-- The run ledger: one row per operation run, the canonical record of who
-- started what, for which tenant, where it stands and how it ended.
-- Lifecycle rules are enforced here, not only in code (see docs/lifecycle.md).

CREATE TABLE operation_runs (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id         bigint      NOT NULL CHECK (tenant_id > 0),
    -- Initiator: null for system/scheduler runs; the name is a snapshot.
    user_id           bigint      NULL CHECK (user_id > 0),
    initiator_name    text        NOT NULL CHECK (length(initiator_name) BETWEEN 1 AND 200),
    type              text        NOT NULL CHECK (type ~ '^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$' AND length(type) <= 100),
    status            text        NOT NULL DEFAULT 'queued',
    outcome           text        NOT NULL DEFAULT 'pending',
    run_identity_hash text        NOT NULL CHECK (run_identity_hash ~ '^[0-9a-f]{64}$'),
    summary_counts    jsonb       NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(summary_counts) = 'object'),
    failure_summary   jsonb       NOT NULL DEFAULT '[]'::jsonb CHECK (jsonb_typeof(failure_summary) = 'array'),
    context           jsonb       NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(context) = 'object'),
    started_at        timestamptz NULL,
    completed_at      timestamptz NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),

    -- Beyond the original model: everything needed to execute the job, so a
    -- run can be dispatched again from Postgres alone.
    queue             text        NOT NULL CHECK (queue ~ '^[a-z0-9][a-z0-9_.-]*$' AND length(queue) <= 64),
    inputs            jsonb       NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(inputs) = 'object'),
    -- Number of times the run was claimed by a worker (counted before the job body runs).
    attempt           integer     NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    max_attempts      integer     NOT NULL DEFAULT 3 CHECK (max_attempts >= 1),
    -- Who holds the running claim (consumer name); completion is fenced on (holder, attempt).
    holder            text        NULL,
    -- Postgres clock only: staleness is never judged on a worker's clock.
    heartbeat_at      timestamptz NULL,
    -- The stream entry of the latest dispatch, and when it was sent.
    dispatch_entry_id text        NULL,
    dispatched_at     timestamptz NULL,

    CONSTRAINT operation_runs_status_valid
        CHECK (status IN ('queued', 'running', 'completed')),
    CONSTRAINT operation_runs_outcome_valid
        CHECK (outcome IN ('pending', 'succeeded', 'partially_succeeded', 'failed', 'cancelled')),
    -- Outcome is pending exactly while the run is active.
    CONSTRAINT operation_runs_outcome_matches_status
        CHECK ((status IN ('queued', 'running')) = (outcome = 'pending')),
    -- completed_at is set exactly when completed.
    CONSTRAINT operation_runs_completed_at_matches_status
        CHECK ((status = 'completed') = (completed_at IS NOT NULL)),
    -- A running run always has a start, a holder and a heartbeat.
    CONSTRAINT operation_runs_running_is_held
        CHECK (status <> 'running' OR (started_at IS NOT NULL AND holder IS NOT NULL AND heartbeat_at IS NOT NULL))
);

-- Dedupe: at most one active run per identity and tenant. The database decides
-- concurrent starts, not a read-then-write.
CREATE UNIQUE INDEX operation_runs_active_identity
    ON operation_runs (tenant_id, run_identity_hash)
    WHERE status IN ('queued', 'running');

CREATE INDEX operation_runs_tenant_type_created ON operation_runs (tenant_id, type, created_at);
CREATE INDEX operation_runs_tenant_created ON operation_runs (tenant_id, created_at);

-- Status moves queued -> running -> completed. The only way back is
-- running -> queued (a retry or a reclaim); queued -> completed ends a run
-- that never started (dispatch failed). A completed run never changes status.
CREATE FUNCTION operation_runs_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.id <> OLD.id OR NEW.tenant_id <> OLD.tenant_id
       OR NEW.run_identity_hash <> OLD.run_identity_hash OR NEW.type <> OLD.type
       OR NEW.created_at <> OLD.created_at THEN
        RAISE EXCEPTION 'operation_runs: id, tenant_id, type, run_identity_hash and created_at are immutable'
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.status <> OLD.status AND NOT (
           (OLD.status = 'queued'  AND NEW.status IN ('running', 'completed'))
        OR (OLD.status = 'running' AND NEW.status IN ('completed', 'queued'))) THEN
        RAISE EXCEPTION 'operation_runs: illegal status transition % -> % for run %', OLD.status, NEW.status, OLD.id
            USING ERRCODE = 'check_violation';
    END IF;
    IF OLD.status = 'completed' AND (NEW.outcome <> OLD.outcome OR NEW.completed_at <> OLD.completed_at) THEN
        RAISE EXCEPTION 'operation_runs: run % is completed; its outcome is final', OLD.id
            USING ERRCODE = 'check_violation';
    END IF;
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

CREATE TRIGGER operation_runs_guard
    BEFORE UPDATE ON operation_runs
    FOR EACH ROW EXECUTE FUNCTION operation_runs_guard();
