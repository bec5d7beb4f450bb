-- Cheaper row transitions for the workers' hot path (claim, heartbeat,
-- completion), measured with `make bench ARGS=--end-to-end-only`.
--
-- 1. The guard trigger ran a PL/pgSQL function for every updated row
--    (about a tenth of Postgres's CPU end to end, perf): its rules are now
--    WHEN conditions, which Postgres evaluates without calling a function,
--    and a function runs only to refuse an illegal update, to end a
--    cancelled run that was about to go back to the queue, or to stamp
--    `updated_at` on an update that did not set it. The hot statements set
--    `updated_at = now()` themselves. The rules are unchanged: only the
--    edges queued -> running|completed and running -> completed|queued; a
--    completed run's outcome and completion time are final; id, tenant,
--    type, identity and creation time never change.
--
-- 2. Heap pages keep 55% free (fillfactor 45, was 70): a run's row is
--    about 400 bytes, so a page held 14 runs with room for 6 more row
--    versions, and a claim statement taking a batch of consecutive runs
--    found the page full after 6 of them and wrote the rest as non-HOT
--    updates (five index entries each). At 45 every claim of a page's runs
--    fits beside them: HOT updates went from ~21% to ~47% of all updates
--    (the completions, which change indexed `completed_at`, cannot be HOT),
--    and the machine's CPU per run end to end fell ~11%. The heap is about
--    1.5 times larger for the same runs. Applies to pages written from now
--    on; `VACUUM FULL operation_runs` rewrites older ones (holding the table).

ALTER TABLE operation_runs SET (fillfactor = 45);

DROP TRIGGER operation_runs_guard ON operation_runs;
DROP FUNCTION operation_runs_guard();

-- Raises the error of the rule the update breaks; called only when the
-- WHEN condition of operation_runs_2_refuse found one broken.
CREATE FUNCTION operation_runs_refuse() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.id <> OLD.id OR NEW.tenant_id <> OLD.tenant_id
       OR NEW.run_identity_hash <> OLD.run_identity_hash OR NEW.type <> OLD.type
       OR NEW.created_at <> OLD.created_at THEN
        RAISE EXCEPTION 'operation_runs: id, tenant_id, type, run_identity_hash and created_at are immutable'
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.status <> OLD.status THEN
        RAISE EXCEPTION 'operation_runs: illegal status transition % -> % for run %', OLD.status, NEW.status, OLD.id
            USING ERRCODE = 'check_violation';
    END IF;
    RAISE EXCEPTION 'operation_runs: run % is completed; its outcome is final', OLD.id
        USING ERRCODE = 'check_violation';
END
$$;

-- A run asked to stop never goes back to the queue: its retry or its
-- reclaim ends it cancelled.
CREATE FUNCTION operation_runs_cancel_requeue() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.status := 'completed';
    NEW.outcome := 'cancelled';
    NEW.completed_at := now();
    NEW.not_before := NULL;
    NEW.failure_summary := NEW.failure_summary || jsonb_build_array(jsonb_build_object(
        'code', 'run.cancelled', 'message', NEW.cancel_request, 'count', 1));
    RETURN NEW;
END
$$;

CREATE FUNCTION operation_runs_touch() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

-- BEFORE triggers fire in name order, each WHEN seeing the row as the
-- triggers before it left it: the cancelled run's requeue is turned into
-- its completion first, then checked like any other update.
CREATE TRIGGER operation_runs_1_cancel_requeue
    BEFORE UPDATE ON operation_runs
    FOR EACH ROW
    WHEN (OLD.status = 'running' AND NEW.status = 'queued' AND NEW.cancel_requested_at IS NOT NULL)
    EXECUTE FUNCTION operation_runs_cancel_requeue();

CREATE TRIGGER operation_runs_2_refuse
    BEFORE UPDATE ON operation_runs
    FOR EACH ROW
    WHEN (NEW.id <> OLD.id OR NEW.tenant_id <> OLD.tenant_id
          OR NEW.run_identity_hash <> OLD.run_identity_hash OR NEW.type <> OLD.type
          OR NEW.created_at <> OLD.created_at
          OR (NEW.status <> OLD.status AND NOT (
                 (OLD.status = 'queued' AND NEW.status IN ('running', 'completed'))
              OR (OLD.status = 'running' AND NEW.status IN ('completed', 'queued'))))
          OR (OLD.status = 'completed' AND (NEW.outcome <> OLD.outcome OR NEW.completed_at <> OLD.completed_at)))
    EXECUTE FUNCTION operation_runs_refuse();

CREATE TRIGGER operation_runs_3_touch
    BEFORE UPDATE ON operation_runs
    FOR EACH ROW
    WHEN (NEW.updated_at = OLD.updated_at)
    EXECUTE FUNCTION operation_runs_touch();
