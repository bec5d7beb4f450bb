-- Monitoring → Operations: keyset-friendly listing indexes, access tokens,
-- initiator notifications, and shadow runs that mirror a domain record.

-- Listing pages newest first by (created_at, id). These replace the
-- original (tenant_id, created_at) and (tenant_id, type, created_at)
-- indexes: the trailing id serves every query those did, and makes the
-- keyset position exact when many runs share one created_at (a batch start
-- stamps one now() on all its rows), without adding an index to every write.
CREATE INDEX operation_runs_tenant_created_id ON operation_runs (tenant_id, created_at, id);
DROP INDEX operation_runs_tenant_created;
CREATE INDEX operation_runs_tenant_type_created_id ON operation_runs (tenant_id, type, created_at, id);
DROP INDEX operation_runs_tenant_type_created;

-- Adapter runs: the domain record (for example a restore) a run mirrors.
-- Such a run is never dispatched or reclaimed: the domain workflow executes
-- itself and the adapter moves the run as the record moves.
ALTER TABLE operation_runs
    ADD COLUMN domain_id text NULL CHECK (length(domain_id) BETWEEN 1 AND 200);

-- Bearer tokens for the monitor, bound to one tenant and a role. Only the
-- SHA-256 of a token is stored: tokens are 256 random bits, so a fast hash
-- is enough, and a stolen table grants nothing.
CREATE TABLE api_tokens (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id     bigint      NOT NULL CHECK (tenant_id > 0),
    role          text        NOT NULL CHECK (role IN ('readonly', 'operator')),
    -- The person the token acts for (initiator of the runs it starts, owner
    -- of the notifications it reads); null for a service token.
    user_id       bigint      NULL CHECK (user_id > 0),
    user_name     text        NULL CHECK (length(user_name) BETWEEN 1 AND 200),
    token_sha256  text        NOT NULL UNIQUE CHECK (token_sha256 ~ '^[0-9a-f]{64}$'),
    label         text        NULL CHECK (length(label) <= 200),
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz NULL,
    CHECK ((user_id IS NULL) = (user_name IS NULL))
);

-- Initiator-only notifications: one when a user's run is queued, one when it
-- ends. Written by triggers on the run row, so every path that creates or
-- ends a run (producer, batch, monitor, worker, reaper, adapter) notifies
-- alike, and a deduplicated start (no row inserted) notifies nobody.
CREATE TABLE notifications (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   bigint      NOT NULL,
    user_id     bigint      NOT NULL,
    -- Removed with its run by retention.
    run_id      bigint      NOT NULL REFERENCES operation_runs (id) ON DELETE CASCADE,
    kind        text        NOT NULL CHECK (kind IN ('queued', 'completed')),
    -- The run's outcome for a 'completed' notification.
    outcome     text        NULL,
    title       text        NOT NULL,
    -- Built from the run's summary counts and its (already sanitized) failures.
    body        text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    read_at     timestamptz NULL,
    CHECK ((kind = 'completed') = (outcome IS NOT NULL))
);
CREATE INDEX notifications_user ON notifications (tenant_id, user_id, id);
CREATE INDEX notifications_run ON notifications (run_id);

CREATE FUNCTION operation_runs_notify_queued() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO notifications (tenant_id, user_id, run_id, kind, title, body)
    VALUES (NEW.tenant_id, NEW.user_id, NEW.id, 'queued',
            format('%s #%s queued', NEW.type, NEW.id),
            CASE WHEN NEW.not_before IS NULL THEN 'Your run is queued.'
                 ELSE format('Your run is scheduled for %s.',
                             to_char(NEW.not_before AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI "UTC"')) END);
    RETURN NULL;
END
$$;

CREATE FUNCTION operation_runs_notify_completed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    total   bigint := COALESCE((NEW.summary_counts ->> 'total')::bigint, 0);
    label   text := CASE NEW.outcome
                        WHEN 'succeeded' THEN 'succeeded'
                        WHEN 'partially_succeeded' THEN 'partially succeeded'
                        WHEN 'failed' THEN 'failed'
                        ELSE 'was cancelled' END;
    counts  text := '';
    failed  text := '';
BEGIN
    IF total > 0 THEN
        counts := format('%s of %s items succeeded, %s failed, %s skipped.', 
                         COALESCE(NEW.summary_counts ->> 'success', '0'), total,
                         COALESCE(NEW.summary_counts ->> 'failed', '0'),
                         COALESCE(NEW.summary_counts ->> 'skipped', '0'));
    END IF;
    -- The first three failures by code; their messages were sanitized when stored.
    SELECT COALESCE(string_agg(format('%s (%s): %s', f ->> 'code', f ->> 'count', left(f ->> 'message', 200)), '; '), '')
      INTO failed
      FROM (SELECT f FROM jsonb_array_elements(NEW.failure_summary) AS f LIMIT 3) AS first;
    INSERT INTO notifications (tenant_id, user_id, run_id, kind, outcome, title, body)
    VALUES (NEW.tenant_id, NEW.user_id, NEW.id, 'completed', NEW.outcome,
            format('%s #%s %s', NEW.type, NEW.id, label),
            COALESCE(NULLIF(trim(counts || ' ' || CASE WHEN failed = '' THEN '' ELSE 'Failures: ' || failed END), ''),
                     'Your run ' || label || '.'));
    RETURN NULL;
END
$$;

CREATE TRIGGER operation_runs_notify_queued
    AFTER INSERT ON operation_runs
    FOR EACH ROW WHEN (NEW.user_id IS NOT NULL)
    EXECUTE FUNCTION operation_runs_notify_queued();

CREATE TRIGGER operation_runs_notify_completed
    AFTER UPDATE OF status ON operation_runs
    FOR EACH ROW WHEN (NEW.user_id IS NOT NULL AND NEW.status = 'completed' AND OLD.status <> 'completed')
    EXECUTE FUNCTION operation_runs_notify_completed();
