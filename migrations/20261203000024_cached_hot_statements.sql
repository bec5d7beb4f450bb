-- The worker's two hot statements, the plain claim and the grouped
-- completion, as functions, so Postgres plans them once per server
-- connection however the statement reaches it.
--
-- Behind a transaction-mode pooler (PgBouncer `pool_mode = transaction`)
-- opsrun sends each statement unnamed (see opsrun/src/ledger/pooler.rs),
-- and Postgres plans an unnamed statement every time it runs: measured on
-- a worker draining 30,000 runs, 480 us to plan each claim of ~23 runs and
-- 967 us each completion of ~55, about 39 us of Postgres CPU per run, most
-- of what the pooler setting cost end to end. A PL/pgSQL function keeps
-- the plans of its statements for the life of the server connection,
-- whichever client's transaction runs on it, and only the call itself is
-- planned each time (a function scan). Connected directly, the call is
-- prepared and cached like any other statement.
--
-- Both run as their caller (SECURITY INVOKER): the caller's rights on the
-- tables apply, as when the statements were sent as they are.

-- Claim queued runs (no concurrency limit): the batch's runs still queued at
-- the expected attempt and due take `p_holder`'s lease. Commits
-- asynchronously, like the statement it replaces (see ASYNC_COMMIT in
-- opsrun/src/ledger/mod.rs: a lost claim leaves the run queued, as if the
-- worker had died before claiming). A run of a type whose limit was removed
-- may still carry the slot of an earlier attempt: it takes none now, so it
-- releases none.
CREATE FUNCTION opsrun_claim_queued(p_tenant bigint[], p_id bigint[], p_attempt int[], p_lease int[],
                                    p_holder text, p_entry text[], p_shard smallint[])
RETURNS SETOF operation_runs
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    RETURN QUERY
    WITH claimed AS (
        UPDATE operation_runs
           SET status = 'running', attempt = attempt + 1, holder = p_holder, lease_seconds = c.c_lease,
               heartbeat_at = now(), started_at = now(), dispatch_entry_id = c.c_entry, shard = c.c_shard,
               updated_at = now(), concurrency_slot = NULL
          FROM unnest(p_tenant, p_id, p_attempt, p_lease, p_entry, p_shard)
               AS c(c_tenant, c_id, c_attempt, c_lease, c_entry, c_shard)
         WHERE tenant_id = c.c_tenant AND id = c.c_id AND status = 'queued'
           AND attempt = c.c_attempt - 1
           AND (not_before IS NULL OR not_before <= now())
        RETURNING operation_runs.*)
    SELECT * FROM claimed;
END
$$;

-- Complete running runs still held by their holder at their attempt, in one
-- statement: releases the concurrency slots of those that took one (one count
-- per key on the holder's own row, see migration 000020; a run under a
-- worker's credit, slot -1, releases nothing), and says of each run whether
-- its key has runs waiting for a slot (looked up once per key, as the key's
-- first entry in operation_runs_slot_waiting: a point lookup whatever the
-- statistics). Rows are locked in id order, so two batches never deadlock.
CREATE FUNCTION opsrun_complete_runs(p_tenant bigint[], p_id bigint[], p_holder text[], p_attempt int[],
                                     p_outcome text[], p_counts jsonb[], p_failures jsonb[])
RETURNS TABLE (run_id bigint, slot_waiters boolean)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH c AS (
        SELECT * FROM unnest(p_tenant, p_id, p_holder, p_attempt, p_outcome, p_counts, p_failures)
               AS c(c_tenant, c_id, c_holder, c_attempt, c_outcome, c_counts, c_failures)),
    locked AS (
        SELECT r.id AS locked_id, r.concurrency_key AS l_key, r.concurrency_slot AS l_slot, c.*
          FROM c JOIN operation_runs r ON r.id = c.c_id
         WHERE r.tenant_id = c.c_tenant AND r.status = 'running'
           AND r.holder = c.c_holder AND r.attempt = c.c_attempt
         ORDER BY r.id FOR NO KEY UPDATE OF r),
    released AS (
        INSERT INTO concurrency_releases (concurrency_key, releaser, runs)
        SELECT l_key, c_holder, count(*) FROM locked WHERE l_slot >= 0
         GROUP BY l_key, c_holder ORDER BY l_key
        ON CONFLICT (concurrency_key, releaser)
        DO UPDATE SET runs = concurrency_releases.runs + EXCLUDED.runs),
    waited AS (
        SELECT k.l_key AS w_key FROM (SELECT DISTINCT l_key FROM locked WHERE l_key IS NOT NULL) k
         WHERE (SELECT w.id FROM operation_runs w WHERE w.concurrency_key = k.l_key
                   AND w.slot_wait_since IS NOT NULL AND w.completed_at IS NULL
                 ORDER BY w.concurrency_key, w.id LIMIT 1) IS NOT NULL),
    done AS (
        UPDATE operation_runs r
           SET status = 'completed', outcome = l.c_outcome, summary_counts = l.c_counts,
               failure_summary = l.c_failures, completed_at = now(), updated_at = now(),
               concurrency_slot = NULL
          FROM locked l
         WHERE r.id = l.locked_id AND r.status = 'running'
           AND r.holder = l.c_holder AND r.attempt = l.c_attempt
        RETURNING r.id AS done_id, coalesce(r.concurrency_key IN (SELECT w_key FROM waited), false) AS done_waiters)
    SELECT done_id, done_waiters FROM done;
END
$$;
