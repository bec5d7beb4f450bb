-- Waking the runs waiting for a slot, cheaper (see migration 000020 for
-- what it does). Two costs made a wake take about 3 ms, and a completion
-- of a limited run whose key has waiters wakes them, so a limit that
-- binds ran at 300-470 runs/s (`make bench ARGS=--control-only`):
--  * the keys were found by a DISTINCT over every waiting run; now each
--    given key is probed once for a waiter, and without given keys (the
--    reaper's pass, a worker whose claim made runs wait) the keys with
--    waiters are skipped through in the index, one probe per key;
--  * a SQL function's statement is planned at every call (about 0.6-0.9 ms
--    for this one); a PL/pgSQL function keeps its plan for the session,
--    generic (left to choose, it kept planning for each array of keys).
-- A wake that finds no free slot now takes 0.2-0.6 ms instead of 1.2-3
-- (5,000 runs of one key waiting).
CREATE OR REPLACE FUNCTION opsrun_wake_slot_waiters(p_keys text[]) RETURNS SETOF operation_runs
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
BEGIN
    RETURN QUERY
    WITH RECURSIVE every_key AS (
        (SELECT o.concurrency_key AS key FROM operation_runs o
          WHERE p_keys IS NULL AND o.slot_wait_since IS NOT NULL AND o.completed_at IS NULL
          ORDER BY o.concurrency_key LIMIT 1)
        UNION ALL
        SELECT (SELECT o.concurrency_key FROM operation_runs o
                 WHERE o.concurrency_key > e.key AND o.slot_wait_since IS NOT NULL AND o.completed_at IS NULL
                 ORDER BY o.concurrency_key LIMIT 1)
          FROM every_key e WHERE e.key IS NOT NULL),
    keys AS (
        SELECT DISTINCT k AS key FROM unnest(p_keys) AS k
         WHERE EXISTS (SELECT 1 FROM operation_runs w
                        WHERE w.concurrency_key = k AND w.slot_wait_since IS NOT NULL AND w.completed_at IS NULL)
        UNION ALL
        SELECT e.key FROM every_key e WHERE e.key IS NOT NULL),
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
END
$$;
