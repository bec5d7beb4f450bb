-- Per-key concurrency limits (see opsrun/src/concurrency.rs).
--
-- A run of a limited type carries its key from creation. Each key has a
-- row in `concurrency_slots` counting its runs running now, kept by a
-- trigger on every move into or out of `running`, whatever the statement
-- (claim, completion, retry, reclaim, cancel), so the count never drifts.
-- A claim of such a run locks its keys' rows (in key order, so two
-- claimers never wait on each other), then, in a statement of its own
-- (which sees every earlier claim of those keys committed), claims each
-- run that fits: the key's count plus its place among this batch's runs
-- of the key within the claiming worker's limit, and no older run of the
-- key waiting. The others stay queued, waiting for a slot
-- (`slot_wait_since`), without an attempt counted.
--
-- A count row, not one row per slot holder: a key's rows would churn at
-- the pace of its runs, and counting them walks index entries of deleted
-- rows until vacuum comes (measured: claims of a busy key at a third of
-- the pace without a limit). Updates of the count are HOT.
--
-- None of these columns is in an index that unlimited runs' updates touch:
-- their claims stay HOT (see 20261122000007_hot_transitions.sql).

ALTER TABLE operation_runs
    ADD COLUMN concurrency_key text NULL,
    -- When the run was first refused a slot; cleared when it is woken.
    ADD COLUMN slot_wait_since timestamptz NULL,
    -- The limit that refused it (the claiming worker's registry).
    ADD COLUMN slot_wait_limit int NULL;

CREATE TABLE concurrency_slots (
    concurrency_key text PRIMARY KEY,
    running         int NOT NULL DEFAULT 0 CHECK (running >= 0)
) WITH (fillfactor = 20);

-- The runs waiting for a slot of a key, oldest first.
CREATE INDEX operation_runs_slot_waiting ON operation_runs (concurrency_key, id)
    WHERE slot_wait_since IS NOT NULL AND completed_at IS NULL;

CREATE FUNCTION operation_runs_count_slot() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    change int := CASE WHEN NEW.status = 'running' THEN 1 ELSE -1 END;
BEGIN
    -- The claim created the row (opsrun_lock_concurrency_keys); a run that
    -- started running through a worker without the limit may find none.
    UPDATE concurrency_slots SET running = running + change WHERE concurrency_key = NEW.concurrency_key;
    IF NOT FOUND AND change > 0 THEN
        INSERT INTO concurrency_slots AS s (concurrency_key, running) VALUES (NEW.concurrency_key, 1)
        ON CONFLICT (concurrency_key) DO UPDATE SET running = s.running + 1;
    END IF;
    RETURN NULL;
END
$$;

-- Only runs of limited types moving into or out of `running` pay for this.
CREATE TRIGGER operation_runs_count_slot
    AFTER UPDATE ON operation_runs
    FOR EACH ROW
    WHEN (NEW.concurrency_key IS NOT NULL AND (OLD.status = 'running') <> (NEW.status = 'running'))
    EXECUTE FUNCTION operation_runs_count_slot();

-- Lock the count rows of `p_keys` (created when missing), in key order.
CREATE FUNCTION opsrun_lock_concurrency_keys(p_keys text[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO concurrency_slots (concurrency_key)
    SELECT k FROM unnest(p_keys) AS k WHERE k IS NOT NULL
    ON CONFLICT DO NOTHING;
    PERFORM 1 FROM concurrency_slots WHERE concurrency_key = ANY(p_keys)
      ORDER BY concurrency_key FOR UPDATE;
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
    keys text[] := ARRAY(SELECT DISTINCT concurrency_key FROM operation_runs
                          WHERE id = ANY(p_id) AND concurrency_key IS NOT NULL);
BEGIN
    PERFORM opsrun_lock_concurrency_keys(keys);
    -- A new statement: its snapshot sees every claim of these keys committed.
    -- (`id = ANY(p_id)` keeps the run lookups on the primary key whatever
    -- plan the function's cached statement gets.)
    RETURN QUERY
    WITH requested AS (
        SELECT DISTINCT ON (r.id) r.id, r.concurrency_key, c.*
          FROM operation_runs r
          JOIN unnest(p_tenant, p_id, p_attempt, p_lease, p_entry, p_shard, p_limit)
               AS c(c_tenant, c_id, c_attempt, c_lease, c_entry, c_shard, c_limit)
            ON r.id = c.c_id AND r.tenant_id = c.c_tenant
         WHERE r.id = ANY(p_id) AND r.status = 'queued' AND r.attempt = c.c_attempt - 1
           AND (r.not_before IS NULL OR r.not_before <= now())
         ORDER BY r.id),
    decided AS (
        SELECT q.*, q.concurrency_key IS NULL OR (
                   row_number() OVER (PARTITION BY q.concurrency_key ORDER BY q.id)
                       + coalesce(s.running, 0) <= q.c_limit
                   AND NOT EXISTS (SELECT 1 FROM operation_runs w
                                    WHERE w.concurrency_key = q.concurrency_key AND w.id < q.id
                                      AND w.slot_wait_since IS NOT NULL AND w.completed_at IS NULL)) AS fits
          FROM requested q LEFT JOIN concurrency_slots s ON s.concurrency_key = q.concurrency_key),
    waiting AS (
        UPDATE operation_runs r
           SET slot_wait_since = coalesce(r.slot_wait_since, now()), slot_wait_limit = d.c_limit,
               dispatch_entry_id = NULL, dispatched_at = NULL
          FROM decided d
         WHERE r.id = d.id AND r.id = ANY(p_id) AND NOT d.fits AND r.status = 'queued')
    UPDATE operation_runs r
       SET status = 'running', attempt = r.attempt + 1, holder = p_holder, lease_seconds = d.c_lease,
           heartbeat_at = now(), started_at = now(), dispatch_entry_id = d.c_entry, shard = d.c_shard,
           slot_wait_since = NULL, slot_wait_limit = NULL
      FROM decided d
     WHERE r.id = d.id AND r.id = ANY(p_id) AND d.fits AND r.status = 'queued'
    RETURNING r.*;
END
$$;

-- Wake the oldest runs waiting for a slot of `p_keys` (every key with
-- waiters when NULL), as many per key as it has free slots under the limit
-- that made its newest waiter wait; they are stamped as dispatched, and
-- the caller sends them.
CREATE FUNCTION opsrun_wake_slot_waiters(p_keys text[]) RETURNS SETOF operation_runs
LANGUAGE plpgsql AS $$
DECLARE
    keys text[] := ARRAY(
        SELECT DISTINCT concurrency_key FROM operation_runs
         WHERE slot_wait_since IS NOT NULL AND completed_at IS NULL
           AND (p_keys IS NULL OR concurrency_key = ANY(p_keys)));
BEGIN
    IF cardinality(keys) = 0 THEN
        RETURN;
    END IF;
    PERFORM opsrun_lock_concurrency_keys(keys);
    RETURN QUERY
    WITH free AS (
        SELECT s.concurrency_key AS key,
               (SELECT w.slot_wait_limit FROM operation_runs w
                 WHERE w.concurrency_key = s.concurrency_key AND w.slot_wait_since IS NOT NULL
                   AND w.completed_at IS NULL
                 ORDER BY w.id DESC LIMIT 1) - s.running AS slots
          FROM concurrency_slots s WHERE s.concurrency_key = ANY(keys)),
    woken AS (
        SELECT w.id FROM free f CROSS JOIN LATERAL (
            SELECT r.id FROM operation_runs r
             WHERE r.concurrency_key = f.key AND r.slot_wait_since IS NOT NULL AND r.completed_at IS NULL
             ORDER BY r.id LIMIT greatest(coalesce(f.slots, 0), 0)) w)
    UPDATE operation_runs r
       SET slot_wait_since = NULL, slot_wait_limit = NULL, dispatched_at = now()
      FROM woken
     WHERE r.id = woken.id AND r.status = 'queued' AND r.slot_wait_since IS NOT NULL
    RETURNING r.*;
END
$$;
