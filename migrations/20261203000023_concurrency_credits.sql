-- Slot credits: a worker claims runs of a key far below its limit without
-- touching the key's shared count (see opsrun/src/concurrency/credits.rs).
--
-- Counting every claim and completion on the key's row (migration 000020)
-- made a limit that is never reached cost 11% end to end (0.89 of no limit,
-- `make bench ARGS=--control-only`); the same runs claimed as if their type
-- had no limit cost nothing measurable (1.02). So while a key has room to
-- spare, a worker takes a block of its slots at once (`credits`, as many as
-- it runs jobs at once), counted as claimed on the key's row like runs, and
-- claims runs against them alone: such a run's `concurrency_slot` is -1
-- ("under its worker's credit"), and when it leaves `running`, by whatever
-- path, it releases nothing: its slot goes back to the worker's credit.
-- The limit stays exact: credits are counted whether used or not.
--
-- A worker gives its unused credits back (as a release on its own row) when
-- its key has runs waiting for a slot, when it has claimed nothing of the
-- key for a while, and when it stops. It renews its credits every second;
-- credits not renewed expire (their worker died or lost Postgres), and the
-- reaper returns them: the worker's runs still running under them become
-- counted one by one (slot 0: their way out releases them), the rest is
-- released. A claim against a credit locks the credit's row (FOR KEY
-- SHARE) and checks it has not expired, so it and the reaper's return take
-- turns: no run is ever claimed against a credit already returned.

CREATE TABLE concurrency_credits (
    concurrency_key text NOT NULL,
    holder          text NOT NULL,
    credits         int NOT NULL CHECK (credits >= 0),
    expires_at      timestamptz NOT NULL,
    PRIMARY KEY (concurrency_key, holder)
) WITH (fillfactor = 50);

-- Runs under a credit (slot -1) release nothing when they leave `running`.
DROP TRIGGER operation_runs_release_slot ON operation_runs;
CREATE TRIGGER operation_runs_release_slot
    AFTER UPDATE ON operation_runs
    FOR EACH ROW
    WHEN (OLD.concurrency_slot >= 0 AND NEW.concurrency_slot IS NOT NULL
          AND OLD.status = 'running' AND NEW.status <> 'running')
    EXECUTE FUNCTION operation_runs_release_slot();

-- Return the credits not renewed before they expired (the reaper, every
-- round): the holder's runs still running under them are counted one by
-- one from now on, the rest released on the holder's row. Returns the
-- credits released.
CREATE FUNCTION opsrun_return_expired_credits() RETURNS bigint
LANGUAGE sql AS $$
    WITH expired AS (
        SELECT concurrency_key, holder FROM concurrency_credits WHERE expires_at < now()
         ORDER BY concurrency_key, holder FOR UPDATE SKIP LOCKED),
    gone AS (
        DELETE FROM concurrency_credits c USING expired e
         WHERE c.concurrency_key = e.concurrency_key AND c.holder = e.holder
        RETURNING c.concurrency_key, c.holder, c.credits),
    counted AS (
        UPDATE operation_runs r SET concurrency_slot = 0
          FROM gone g
         WHERE r.concurrency_key = g.concurrency_key AND r.holder = g.holder
           AND r.completed_at IS NULL AND r.status = 'running' AND r.concurrency_slot = -1
        RETURNING r.concurrency_key, r.holder),
    returned AS (
        SELECT g.concurrency_key, g.holder,
               greatest(g.credits - (SELECT count(*) FROM counted c
                                      WHERE c.concurrency_key = g.concurrency_key AND c.holder = g.holder), 0) AS runs
          FROM gone g),
    released AS (
        INSERT INTO concurrency_releases (concurrency_key, releaser, runs)
        SELECT concurrency_key, holder, runs FROM returned ORDER BY 1, 2
        ON CONFLICT (concurrency_key, releaser)
        DO UPDATE SET runs = concurrency_releases.runs + EXCLUDED.runs)
    SELECT coalesce(sum(runs), 0)::bigint FROM returned
$$;
