-- Per-key concurrency limits kept as counts written once per claim or
-- completion statement, instead of a slot row written per run (see
-- opsrun/src/concurrency.rs; replaces the slot rows of migration 000015).
--
-- A key's running runs are `claimed - released`:
--  * `concurrency_claims` holds, per key, how many runs were ever claimed
--    against it. A claim statement locks the key's row (claims of one key
--    take turns, which is what makes the limit exact across workers),
--    reads what is released, claims what fits and adds what it claimed.
--    A start makes its key's row; a claim that finds none (a run started
--    before this migration) makes it, and those runs wait once.
--  * `concurrency_releases` holds, per key and releaser, how many of them
--    left `running`. A worker's grouped completion adds its runs to its own
--    row (`releaser` = the worker), so completions never wait on claims, on
--    each other or on other workers; a trigger adds runs that leave
--    `running` any other way (retry, reclaim, the reaper's failures) to a
--    row of the backend that wrote them. The reaper folds the rows of each
--    key into one (`releaser` = ''), keeping the sum.
-- A release not yet committed is not counted, so a claim may see a key
-- fuller than it is (the run waits and is woken), never emptier.
--
-- The slot rows cost every limited run two more row writes (take and give
-- back) and a PL/pgSQL loop per key: a limit never reached ran at
-- 0.67-0.74 of no limit end to end (`make bench ARGS=--control-only`).
--
-- `operation_runs.concurrency_slot` keeps its name: set at claim (the
-- number of the key's runs running before it), non-NULL while the run
-- counts against its key; the grouped completion sets it to NULL to say it
-- released the run itself.

DROP TRIGGER operation_runs_free_slot ON operation_runs;
DROP FUNCTION operation_runs_free_slot();
DROP FUNCTION opsrun_claim_limited(bigint[], bigint[], int[], int[], text[], smallint[], int[], text);
DROP FUNCTION opsrun_take_slots(text, int, bigint[]);
DROP FUNCTION opsrun_wake_slot_waiters(text[]);

CREATE TABLE concurrency_claims (
    concurrency_key text PRIMARY KEY,
    runs            bigint NOT NULL CHECK (runs >= 0)
) WITH (fillfactor = 50);

CREATE TABLE concurrency_releases (
    concurrency_key text NOT NULL,
    releaser        text NOT NULL,
    runs            bigint NOT NULL CHECK (runs >= 0),
    PRIMARY KEY (concurrency_key, releaser)
) WITH (fillfactor = 50);

-- Runs holding slots now count as claimed and not released (the trigger
-- dropped above locked operation_runs: no run changes state meanwhile).
INSERT INTO concurrency_claims (concurrency_key, runs)
SELECT s.concurrency_key, count(*) FROM concurrency_slots s
 WHERE s.run_id IS NOT NULL GROUP BY s.concurrency_key;
DROP TABLE concurrency_slots;
-- Every key of a run not yet completed gets its count now (a start makes
-- it from here on).
INSERT INTO concurrency_claims (concurrency_key, runs)
SELECT DISTINCT concurrency_key, 0 FROM operation_runs
 WHERE completed_at IS NULL AND concurrency_key IS NOT NULL
ON CONFLICT DO NOTHING;

-- How many runs of `p_key` run now.
CREATE FUNCTION opsrun_running_of(p_key text) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT coalesce((SELECT runs FROM concurrency_claims WHERE concurrency_key = p_key), 0)
         - coalesce((SELECT sum(runs) FROM concurrency_releases WHERE concurrency_key = p_key), 0)
$$;

-- A run leaving `running` other than through the workers' grouped
-- completion (which sets `concurrency_slot` to NULL and releases its runs
-- itself) is released here, on a row of this backend's own.
CREATE FUNCTION operation_runs_release_slot() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO concurrency_releases (concurrency_key, releaser, runs)
    VALUES (OLD.concurrency_key, 'backend ' || pg_backend_pid(), 1)
    ON CONFLICT (concurrency_key, releaser)
    DO UPDATE SET runs = concurrency_releases.runs + EXCLUDED.runs;
    RETURN NULL;
END
$$;

CREATE TRIGGER operation_runs_release_slot
    AFTER UPDATE ON operation_runs
    FOR EACH ROW
    WHEN (OLD.concurrency_slot IS NOT NULL AND NEW.concurrency_slot IS NOT NULL
          AND OLD.status = 'running' AND NEW.status <> 'running')
    EXECUTE FUNCTION operation_runs_release_slot();

-- Fold each key's releases into its '' row (the reaper, every round).
-- Rows are deleted and summed in one statement; a worker adding to its
-- row meanwhile waits, then makes it again. Rows are locked in key order,
-- the order a grouped completion writes them in, so the two never
-- deadlock.
CREATE FUNCTION opsrun_fold_releases() RETURNS bigint
LANGUAGE sql AS $$
    WITH locked AS (
        SELECT concurrency_key, releaser FROM concurrency_releases WHERE releaser <> ''
         ORDER BY concurrency_key, releaser FOR UPDATE),
    gone AS (
        DELETE FROM concurrency_releases r USING locked l
         WHERE r.concurrency_key = l.concurrency_key AND r.releaser = l.releaser
        RETURNING r.concurrency_key, r.runs),
    folded AS (
        INSERT INTO concurrency_releases (concurrency_key, releaser, runs)
        SELECT concurrency_key, '', sum(runs) FROM gone GROUP BY concurrency_key ORDER BY concurrency_key
        ON CONFLICT (concurrency_key, releaser)
        DO UPDATE SET runs = concurrency_releases.runs + EXCLUDED.runs
        RETURNING 1)
    SELECT count(*) FROM folded
$$;

-- Claims of limited types are one statement the workers send
-- (`Session::claim_limited` in opsrun/src/ledger/session.rs): it locks the
-- keys' claimed counts in key order, reads the releases, claims the runs
-- that fit and adds them. In a SQL loop of 20-run batches it cost 57-66 us
-- per run against 90-110 for the PL/pgSQL function it replaces (a plain
-- claim: 18-27).

-- Wake the oldest runs waiting for a slot of `p_keys` (every key with
-- waiters when NULL), as many per key as it has room under the limit that
-- made its newest waiter wait; they are stamped as dispatched, and the
-- caller sends them. (A run woken in excess waits again when it finds no
-- room.)
CREATE FUNCTION opsrun_wake_slot_waiters(p_keys text[]) RETURNS SETOF operation_runs
LANGUAGE sql AS $$
    WITH keys AS (
        SELECT DISTINCT concurrency_key AS key FROM operation_runs
         WHERE slot_wait_since IS NOT NULL AND completed_at IS NULL
           AND (p_keys IS NULL OR concurrency_key = ANY(p_keys))),
    free AS (
        SELECT k.key,
               (SELECT w.slot_wait_limit FROM operation_runs w
                 WHERE w.concurrency_key = k.key AND w.slot_wait_since IS NOT NULL AND w.completed_at IS NULL
                 ORDER BY w.id DESC LIMIT 1)
             - opsrun_running_of(k.key) AS slots
          FROM keys k),
    woken AS (
        SELECT w.id FROM free f CROSS JOIN LATERAL (
            SELECT r.id FROM operation_runs r
             WHERE r.concurrency_key = f.key AND r.slot_wait_since IS NOT NULL AND r.completed_at IS NULL
             ORDER BY r.id LIMIT greatest(coalesce(f.slots, 0), 0)
             FOR UPDATE SKIP LOCKED) w)
    UPDATE operation_runs r
       SET slot_wait_since = NULL, slot_wait_limit = NULL, dispatched_at = now()
      FROM woken
     WHERE r.id = woken.id AND r.status = 'queued' AND r.slot_wait_since IS NOT NULL
    RETURNING r.*;
$$;
