-- Per-key concurrency limits (see opsrun/src/concurrency.rs).
--
-- A run of a limited type carries its key from creation. A key has slot
-- rows in `concurrency_slots`, numbered from 0 and made as first needed,
-- never beyond the limit. A claim of such a run takes a slot numbered below
-- the claiming worker's limit whose last holder is not running (or that
-- never had one), writes its run id there and the slot's number on the
-- run; a run that gets none, or that has an older run of its key waiting,
-- stays queued, waiting for a slot (`slot_wait_since`), without an attempt
-- counted. A slot is free again as soon as its run is not running, by
-- whatever statement (completion, retry, reclaim, cancel): nothing has to
-- give it back, so nothing can forget to. Claims of one key take turns on
-- a transaction-scoped advisory lock (memory only, no row written), and
-- choose their slots in a statement of their own, whose snapshot sees
-- every earlier claim committed. So at most `limit` runs of a key run at
-- once, however many workers claim.
--
-- What a limit costs is one small HOT update per claim. Measured with
-- `make bench ARGS=--control-only` on the way here: a row per holder,
-- inserted and deleted, ran a never-reached limit end to end at 0.36 of
-- none (counting them walked dead index entries); one count row per key,
-- at 0.50 (every claim waited on completions' commits of that row); slot
-- rows taken and freed, at 0.67-0.74 (three writes per run).
--
-- None of these columns is in an index that unlimited runs' updates touch:
-- their claims stay HOT (see 20261122000007_hot_transitions.sql).

ALTER TABLE operation_runs
    ADD COLUMN concurrency_key text NULL,
    -- The slot of its key the run holds (or last held).
    ADD COLUMN concurrency_slot int NULL,
    -- When the run was first refused a slot; cleared when it is woken.
    ADD COLUMN slot_wait_since timestamptz NULL,
    -- The limit that refused it (the claiming worker's registry).
    ADD COLUMN slot_wait_limit int NULL;

CREATE TABLE concurrency_slots (
    concurrency_key text NOT NULL,
    slot            int NOT NULL CHECK (slot >= 0),
    run_id          bigint NULL,
    PRIMARY KEY (concurrency_key, slot)
) WITH (fillfactor = 50);

-- The runs waiting for a slot of a key, oldest first.
CREATE INDEX operation_runs_slot_waiting ON operation_runs (concurrency_key, id)
    WHERE slot_wait_since IS NOT NULL AND completed_at IS NULL;

-- Take up to one slot of `p_key` numbered below `p_limit` for each of the
-- runs `p_runs`, in order: free ones first (no holder, or a holder that
-- is not running), then new ones. Returns the slots taken, in that order
-- (fewer when there are not enough). The caller holds the key's lock.
CREATE FUNCTION opsrun_take_slots(p_key text, p_limit int, p_runs bigint[]) RETURNS int[]
LANGUAGE plpgsql AS $$
DECLARE
    taken int[] := ARRAY(
        SELECT s.slot FROM concurrency_slots s
         WHERE s.concurrency_key = p_key AND s.slot < p_limit
           AND (s.run_id IS NULL OR NOT EXISTS (
                SELECT 1 FROM operation_runs r
                 WHERE r.id = s.run_id AND r.status = 'running' AND r.concurrency_slot = s.slot))
         ORDER BY s.slot LIMIT cardinality(p_runs));
    next_slot int;
BEGIN
    IF cardinality(taken) < cardinality(p_runs) THEN
        SELECT coalesce(max(slot) + 1, 0) INTO next_slot FROM concurrency_slots WHERE concurrency_key = p_key;
        INSERT INTO concurrency_slots (concurrency_key, slot)
        SELECT p_key, n FROM generate_series(next_slot,
                   least(p_limit - 1, next_slot + cardinality(p_runs) - cardinality(taken) - 1)) AS n;
        taken := taken || ARRAY(SELECT generate_series(next_slot,
                   least(p_limit - 1, next_slot + cardinality(p_runs) - cardinality(taken) - 1)));
    END IF;
    UPDATE concurrency_slots s SET run_id = t.run_id
      FROM unnest(taken, p_runs[1:cardinality(taken)]) AS t(slot, run_id)
     WHERE s.concurrency_key = p_key AND s.slot = t.slot;
    RETURN taken;
END
$$;

-- Claim the runs of limited types named by the arrays (one element per
-- delivered entry, as the plain claim takes them), each against its
-- claimer's limit `p_limit`. Returns the runs claimed; the others that
-- were claimable but over their limit are left waiting for a slot.
CREATE FUNCTION opsrun_claim_limited(p_tenant bigint[], p_id bigint[], p_attempt int[], p_lease int[],
                                     p_entry text[], p_shard smallint[], p_limit int[], p_holder text)
RETURNS SETOF operation_runs
LANGUAGE plpgsql AS $$
DECLARE
    group_key text;
    group_limit int;
    group_runs bigint[];
    slots int[];
    run_ids bigint[] := '{}';
    run_slots int[] := '{}';
BEGIN
    -- One claimer per key at a time, in key order so two never wait on each
    -- other. (`id = ANY(p_id)` keeps the lookups on the primary key
    -- whatever plan the function's cached statements get.)
    PERFORM pg_advisory_xact_lock(1869640562, k.lock_key)  -- 1869640562: 'opsr'
       FROM (SELECT DISTINCT hashtext(concurrency_key) AS lock_key FROM operation_runs
              WHERE id = ANY(p_id) AND concurrency_key IS NOT NULL ORDER BY 1) k;
    -- The claimable runs of each key, oldest first, behind no older waiter
    -- of their key: a statement after the lock, so it sees every earlier
    -- claim of these keys committed.
    FOR group_key, group_limit, group_runs IN
        SELECT r.concurrency_key, max(c.c_limit), array_agg(DISTINCT r.id ORDER BY r.id)
          FROM operation_runs r
          JOIN unnest(p_tenant, p_id, p_attempt, p_limit) AS c(c_tenant, c_id, c_attempt, c_limit)
            ON r.id = c.c_id AND r.tenant_id = c.c_tenant
         WHERE r.id = ANY(p_id) AND r.status = 'queued' AND r.attempt = c.c_attempt - 1
           AND (r.not_before IS NULL OR r.not_before <= now()) AND r.concurrency_key IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM operation_runs w
                            WHERE w.concurrency_key = r.concurrency_key AND w.id < r.id
                              AND w.slot_wait_since IS NOT NULL AND w.completed_at IS NULL)
         GROUP BY r.concurrency_key
         ORDER BY r.concurrency_key
    LOOP
        slots := opsrun_take_slots(group_key, group_limit, group_runs);
        run_ids := run_ids || group_runs[1:cardinality(slots)];
        run_slots := run_slots || slots;
    END LOOP;
    -- Runs with a slot (or no key) are claimed; claimable runs without one
    -- wait for one. (A slot taken for a run that a duplicate delivery or a
    -- cancel got to first is free again at once: its run is not running.)
    RETURN QUERY
    WITH claimed AS (
        UPDATE operation_runs r
           SET status = 'running', attempt = r.attempt + 1, holder = p_holder, lease_seconds = c.c_lease,
               heartbeat_at = now(), started_at = now(), dispatch_entry_id = c.c_entry, shard = c.c_shard,
               concurrency_slot = s.slot, slot_wait_since = NULL, slot_wait_limit = NULL
          FROM unnest(p_tenant, p_id, p_attempt, p_lease, p_entry, p_shard)
                   AS c(c_tenant, c_id, c_attempt, c_lease, c_entry, c_shard)
          LEFT JOIN unnest(run_ids, run_slots) AS s(run_id, slot) ON s.run_id = c.c_id
         WHERE r.id = c.c_id AND r.tenant_id = c.c_tenant AND r.id = ANY(p_id)
           AND r.status = 'queued' AND r.attempt = c.c_attempt - 1
           AND (r.not_before IS NULL OR r.not_before <= now())
           AND (r.concurrency_key IS NULL OR s.slot IS NOT NULL)
        RETURNING r.*),
    waiting AS (
        UPDATE operation_runs r
           SET slot_wait_since = coalesce(r.slot_wait_since, now()), slot_wait_limit = c.c_limit,
               dispatch_entry_id = NULL, dispatched_at = NULL
          FROM unnest(p_tenant, p_id, p_attempt, p_limit) AS c(c_tenant, c_id, c_attempt, c_limit)
         WHERE r.id = c.c_id AND r.tenant_id = c.c_tenant AND r.id = ANY(p_id) AND r.id <> ALL(run_ids)
           AND r.status = 'queued' AND r.attempt = c.c_attempt - 1 AND r.concurrency_key IS NOT NULL
           AND (r.not_before IS NULL OR r.not_before <= now()))
    SELECT * FROM claimed;
END
$$;

-- Wake the oldest runs waiting for a slot of `p_keys` (every key with
-- waiters when NULL), as many per key as it has free slots under the limit
-- that made its newest waiter wait; they are stamped as dispatched, and
-- the caller sends them. (A run woken in excess waits again when it finds
-- no slot.)
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
             - (SELECT count(*) FROM concurrency_slots s JOIN operation_runs r ON r.id = s.run_id
                 WHERE s.concurrency_key = k.key AND r.status = 'running'
                   AND r.concurrency_slot = s.slot) AS slots
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
