-- Cancel, and the audit trail of operator actions.
--
-- A queued run (waiting for its first attempt or for a retry) is completed
-- `cancelled` at once. A running run gets a cancel request: the worker
-- holding it learns within a second or two (it polls its in-flight runs),
-- stops the job and completes the run `cancelled`, fenced on its claim like
-- any completion. A run with a request never goes back to the queue: a
-- retry or a reclaim of it ends it `cancelled` instead (the guard below),
-- so a cancel racing a completion, a retry or a reclaim leaves exactly one
-- terminal state.

ALTER TABLE operation_runs
    ADD COLUMN cancel_requested_at timestamptz NULL,
    -- The `run.cancelled` failure message: who asked, and why (sanitized).
    ADD COLUMN cancel_request text NULL;

-- Every operator action, with who, when and why. Kept past the runs'
-- retention: the trail outlives what it acted on.
CREATE TABLE operator_actions (
    id            bigserial PRIMARY KEY,
    tenant_id     bigint NOT NULL,
    action        text NOT NULL CHECK (action IN ('cancel', 'retry', 'pause', 'resume')),
    run_id        bigint NULL,
    queue         text NULL,
    actor_user_id bigint NULL,
    actor_name    text NOT NULL,
    reason        text NULL,
    -- What the action did: `cancelled`, `cancel_requested`,
    -- `already_requested`, `already_completed`, ...
    result        text NOT NULL,
    at            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX operator_actions_tenant ON operator_actions (tenant_id, id);
CREATE INDEX operator_actions_run ON operator_actions (run_id) WHERE run_id IS NOT NULL;

CREATE OR REPLACE FUNCTION operation_runs_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.id <> OLD.id OR NEW.tenant_id <> OLD.tenant_id
       OR NEW.run_identity_hash <> OLD.run_identity_hash OR NEW.type <> OLD.type
       OR NEW.created_at <> OLD.created_at THEN
        RAISE EXCEPTION 'operation_runs: id, tenant_id, type, run_identity_hash and created_at are immutable'
            USING ERRCODE = 'check_violation';
    END IF;
    -- A run asked to stop never goes back to the queue: its retry or its
    -- reclaim ends it cancelled.
    IF OLD.status = 'running' AND NEW.status = 'queued' AND NEW.cancel_requested_at IS NOT NULL THEN
        NEW.status := 'completed';
        NEW.outcome := 'cancelled';
        NEW.completed_at := now();
        NEW.not_before := NULL;
        NEW.failure_summary := NEW.failure_summary || jsonb_build_array(jsonb_build_object(
            'code', 'run.cancelled', 'message', NEW.cancel_request, 'count', 1));
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

-- Cancel run `p_run` of tenant `p_tenant` for `p_actor_name` (user
-- `p_actor_user_id`), recording the action; `p_request` is the failure
-- message the run gets. Returns what it did, or no row when the tenant has
-- no such run. The row is locked first, so a claim, a completion or another
-- cancel in flight is waited for and then seen. SECURITY DEFINER: a role
-- that may not update runs (the monitor's) may still cancel them, and do
-- nothing else.
CREATE FUNCTION opsrun_cancel_run(p_tenant bigint, p_run bigint, p_actor_user_id bigint,
                                  p_actor_name text, p_reason text, p_request text)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    current_status text;
    requested timestamptz;
    did text;
BEGIN
    SELECT status, cancel_requested_at INTO current_status, requested
      FROM public.operation_runs WHERE tenant_id = p_tenant AND id = p_run
       FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF current_status = 'completed' THEN
        did := 'already_completed';
    ELSIF current_status = 'queued' THEN
        UPDATE public.operation_runs
           SET status = 'completed', outcome = 'cancelled', completed_at = now(), not_before = NULL,
               cancel_requested_at = now(), cancel_request = p_request,
               failure_summary = failure_summary || jsonb_build_array(jsonb_build_object(
                   'code', 'run.cancelled', 'message', p_request, 'count', 1))
         WHERE tenant_id = p_tenant AND id = p_run;
        did := 'cancelled';
    ELSIF requested IS NOT NULL THEN
        did := 'already_requested';
    ELSE
        UPDATE public.operation_runs SET cancel_requested_at = now(), cancel_request = p_request
         WHERE tenant_id = p_tenant AND id = p_run;
        did := 'cancel_requested';
    END IF;
    INSERT INTO public.operator_actions (tenant_id, action, run_id, actor_user_id, actor_name, reason, result)
    VALUES (p_tenant, 'cancel', p_run, p_actor_user_id, p_actor_name, p_reason, did);
    RETURN did;
END
$$;
REVOKE ALL ON FUNCTION opsrun_cancel_run(bigint, bigint, bigint, text, text, text) FROM PUBLIC;
