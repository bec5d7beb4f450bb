-- Per-key concurrency limits (see opsrun/src/concurrency.rs).
--
-- A run of a limited type carries its key from creation. A claim of such a
-- run takes a slot, a `concurrency_holds` row, if its key has fewer holds
-- than the claiming worker's limit and no older run of the key waits;
-- otherwise the run stays queued, waiting for a slot (`slot_wait_since`),
-- without an attempt counted. Claims and wakes of one key are serialized by
-- a transaction-scoped advisory lock taken in a statement of its own, so
-- the statement that counts the holds sees every earlier claim committed.
-- A slot is freed by a trigger whenever its run stops running, whatever
-- the path (completion, retry, reclaim, cancel), so holds never drift.
--
-- None of these columns is in an index that unlimited runs' updates touch:
-- their claims stay HOT (see 20261122000007_hot_transitions.sql).

ALTER TABLE operation_runs
    ADD COLUMN concurrency_key text NULL,
    -- When the run was first refused a slot; cleared when it is woken.
    ADD COLUMN slot_wait_since timestamptz NULL,
    -- The limit that refused it (the claiming worker's registry).
    ADD COLUMN slot_wait_limit int NULL;

-- The runs holding a slot: one row per running run of a limited type.
CREATE TABLE concurrency_holds (
    run_id          bigint PRIMARY KEY,
    tenant_id       bigint NOT NULL,
    concurrency_key text NOT NULL,
    since           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX concurrency_holds_key ON concurrency_holds (concurrency_key);

-- The runs waiting for a slot of a key, oldest first.
CREATE INDEX operation_runs_slot_waiting ON operation_runs (concurrency_key, id)
    WHERE slot_wait_since IS NOT NULL AND completed_at IS NULL;

CREATE FUNCTION operation_runs_release_slot() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM concurrency_holds WHERE run_id = OLD.id;
    RETURN NULL;
END
$$;

-- Only runs of limited types leaving `running` pay for this.
CREATE TRIGGER operation_runs_release_slot
    AFTER UPDATE ON operation_runs
    FOR EACH ROW
    WHEN (OLD.concurrency_key IS NOT NULL AND OLD.status = 'running' AND NEW.status <> 'running')
    EXECUTE FUNCTION operation_runs_release_slot();

-- Lock the keys in one order, so two claimers never wait on each other.
CREATE FUNCTION opsrun_lock_concurrency_keys(p_keys text[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    lock_key int;
BEGIN
    FOR lock_key IN SELECT DISTINCT hashtext(k) FROM unnest(p_keys) AS k WHERE k IS NOT NULL ORDER BY 1 LOOP
        -- 1869640562 is 'opsr': opsrun's class of advisory locks.
        PERFORM pg_advisory_xact_lock(1869640562, lock_key);
    END LOOP;
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
BEGIN
    PERFORM opsrun_lock_concurrency_keys(ARRAY(
        SELECT r.concurrency_key FROM operation_runs r
          JOIN unnest(p_tenant, p_id) AS c(tenant_id, id) ON r.tenant_id = c.tenant_id AND r.id = c.id));
    -- A new statement: its snapshot sees every claim of these keys committed.
    RETURN QUERY
    WITH requested AS (
        SELECT DISTINCT ON (r.id) r.id, r.concurrency_key, c.*
          FROM unnest(p_tenant, p_id, p_attempt, p_lease, p_entry, p_shard, p_limit)
               AS c(c_tenant, c_id, c_attempt, c_lease, c_entry, c_shard, c_limit)
          JOIN operation_runs r ON r.tenant_id = c.c_tenant AND r.id = c.c_id
         WHERE r.status = 'queued' AND r.attempt = c.c_attempt - 1
           AND (r.not_before IS NULL OR r.not_before <= now())
         ORDER BY r.id),
    placed AS (
        SELECT q.*, row_number() OVER (PARTITION BY q.concurrency_key ORDER BY q.id) AS place
          FROM requested q),
    held AS (
        SELECT h.concurrency_key, count(*) AS n FROM concurrency_holds h
         WHERE h.concurrency_key IN (SELECT concurrency_key FROM requested)
         GROUP BY h.concurrency_key),
    decided AS (
        SELECT p.*, p.concurrency_key IS NULL OR (
                   p.place + coalesce(held.n, 0) <= p.c_limit
                   AND NOT EXISTS (SELECT 1 FROM operation_runs w
                                    WHERE w.concurrency_key = p.concurrency_key AND w.id < p.id
                                      AND w.slot_wait_since IS NOT NULL AND w.completed_at IS NULL)) AS fits
          FROM placed p LEFT JOIN held USING (concurrency_key)),
    waiting AS (
        UPDATE operation_runs r
           SET slot_wait_since = coalesce(r.slot_wait_since, now()), slot_wait_limit = d.c_limit,
               dispatch_entry_id = NULL, dispatched_at = NULL
          FROM decided d
         WHERE r.id = d.id AND NOT d.fits AND r.status = 'queued'),
    claimed AS (
        UPDATE operation_runs r
           SET status = 'running', attempt = r.attempt + 1, holder = p_holder, lease_seconds = d.c_lease,
               heartbeat_at = now(), started_at = now(), dispatch_entry_id = d.c_entry, shard = d.c_shard,
               slot_wait_since = NULL, slot_wait_limit = NULL
          FROM decided d
         WHERE r.id = d.id AND d.fits AND r.status = 'queued'
        RETURNING r.*),
    holds AS (
        INSERT INTO concurrency_holds (run_id, tenant_id, concurrency_key)
        SELECT c.id, c.tenant_id, c.concurrency_key FROM claimed c WHERE c.concurrency_key IS NOT NULL)
    SELECT * FROM claimed;
END
$$;

-- Wake the oldest runs waiting for a slot of `p_keys` (every key with
-- waiters when NULL), as many per key as it has free slots under the limit
-- that made its newest waiter wait; they are stamped as dispatched, and
-- the caller sends them.
CREATE FUNCTION opsrun_wake_slot_waiters(p_keys text[]) RETURNS SETOF operation_runs
LANGUAGE plpgsql AS $$
DECLARE
    keys text[] := coalesce(p_keys, ARRAY(
        SELECT DISTINCT concurrency_key FROM operation_runs
         WHERE slot_wait_since IS NOT NULL AND completed_at IS NULL));
BEGIN
    PERFORM opsrun_lock_concurrency_keys(keys);
    RETURN QUERY
    WITH free AS (
        SELECT k.key,
               (SELECT w.slot_wait_limit FROM operation_runs w
                 WHERE w.concurrency_key = k.key AND w.slot_wait_since IS NOT NULL AND w.completed_at IS NULL
                 ORDER BY w.id DESC LIMIT 1)
             - (SELECT count(*) FROM concurrency_holds h WHERE h.concurrency_key = k.key) AS slots
          FROM (SELECT DISTINCT unnest(keys) AS key) k),
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
