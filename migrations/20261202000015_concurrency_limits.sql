-- Per-key concurrency limits (see opsrun/src/concurrency.rs).
--
-- A run of a limited type carries its key from creation. A key has slot
-- rows in `concurrency_slots`, numbered from 0 and made as they are first
-- needed, never beyond the limit; a slot is held by the run in `run_id`. A
-- claim of such a run takes a free slot numbered below the claiming
-- worker's limit (`FOR UPDATE SKIP LOCKED`, so two claimers never take the
-- same one) and records its number on the run; a run that gets none, or
-- that has an older run of its key waiting, stays queued, waiting for a
-- slot (`slot_wait_since`), without an attempt counted. The workers'
-- grouped completion frees its runs' slots in its own statement; a trigger
-- frees them on every other way out of `running` (retry, reclaim, cancel,
-- the reaper's failures). So at most `limit` runs of a key run at once,
-- however many workers claim.
--
-- One row per slot rather than one count per key: a count row is one row
-- that every claim and every completion of the key writes, so claims
-- waited on completions' commits. Slot rows are written only by the run
-- that takes or frees them, and those updates are HOT.
--
-- What each design cost, `make bench ARGS=--control-only` (end to end, one
-- worker x50, a limit per tenant never reached against none; medians of
-- three, 2 cores, noisy to about 15%): a row per holder, inserted and
-- deleted, 0.36 (counting them walked dead index entries); a count row per
-- key, 0.50; these slot rows, 0.67-0.74; slots freed lazily (free once the
-- holder is not running, no write at release, an advisory lock per key),
-- 0.48 (each claim probed every slot's holder). The aim is 0.95.
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

CREATE FUNCTION operation_runs_free_slot() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE concurrency_slots SET run_id = NULL
     WHERE concurrency_key = OLD.concurrency_key AND slot = OLD.concurrency_slot AND run_id = OLD.id;
    RETURN NULL;
END
$$;

-- Only runs that held a slot and leave `running` pay for this; a
-- statement that frees the slot itself (the workers' grouped completion)
-- says so by setting `concurrency_slot` to NULL.
CREATE TRIGGER operation_runs_free_slot
    AFTER UPDATE ON operation_runs
    FOR EACH ROW
    WHEN (OLD.concurrency_slot IS NOT NULL AND NEW.concurrency_slot IS NOT NULL
          AND OLD.status = 'running' AND NEW.status <> 'running')
    EXECUTE FUNCTION operation_runs_free_slot();

-- Take up to one free slot of `p_key` numbered below `p_limit` for each
-- of the runs `p_runs`, in order: free ones first, then new ones. Returns
-- the slots taken, in that order (fewer when there are not enough).
CREATE FUNCTION opsrun_take_slots(p_key text, p_limit int, p_runs bigint[]) RETURNS int[]
LANGUAGE plpgsql AS $$
DECLARE
    taken int[] := ARRAY(
        SELECT slot FROM concurrency_slots
         WHERE concurrency_key = p_key AND run_id IS NULL AND slot < p_limit
         ORDER BY slot LIMIT cardinality(p_runs) FOR UPDATE SKIP LOCKED);
    next_slot int;
    made_slots int[];
BEGIN
    IF cardinality(taken) < cardinality(p_runs) THEN
        SELECT coalesce(max(slot) + 1, 0) INTO next_slot FROM concurrency_slots WHERE concurrency_key = p_key;
        -- A slot another claimer makes at the same moment conflicts and is
        -- skipped: the run waits, and is woken when a slot frees.
        WITH made AS (
            INSERT INTO concurrency_slots (concurrency_key, slot)
            SELECT p_key, n FROM generate_series(next_slot,
                       least(p_limit - 1, next_slot + cardinality(p_runs) - cardinality(taken) - 1)) AS n
            ON CONFLICT DO NOTHING RETURNING slot)
        SELECT array_agg(slot ORDER BY slot) INTO made_slots FROM made;
        taken := taken || coalesce(made_slots, '{}');
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
    run_keys text[] := '{}';
BEGIN
    -- The claimable runs of each key, oldest first, behind no older waiter
    -- of their key. (`id = ANY(p_id)` keeps the lookups on the primary key
    -- whatever plan the function's cached statements get.)
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
        run_keys := run_keys || array_fill(group_key, ARRAY[cardinality(slots)]);
    END LOOP;
    -- Runs with a slot (or no key) are claimed; claimable runs without one
    -- wait for one. A slot whose run was claimed elsewhere meanwhile (a
    -- duplicate delivery) or cancelled is given back.
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
           AND (r.not_before IS NULL OR r.not_before <= now())),
    unused AS (
        UPDATE concurrency_slots s SET run_id = NULL
          FROM unnest(run_keys, run_slots, run_ids) AS t(key, slot, run_id)
         WHERE s.concurrency_key = t.key AND s.slot = t.slot AND s.run_id = t.run_id
           AND t.run_id NOT IN (SELECT id FROM claimed))
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
             - (SELECT count(*) FROM concurrency_slots s
                 WHERE s.concurrency_key = k.key AND s.run_id IS NOT NULL) AS slots
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
