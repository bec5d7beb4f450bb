-- Run types: identity rules, per-run lease, and runs that must not start
-- before a given time (scheduled runs and retries waiting out a backoff).

ALTER TABLE operation_runs
    -- How the identity was computed: deterministic (dedupe while active),
    -- nonce (every start is new), strict (one run per identity, ever).
    ADD COLUMN identity_rule text NOT NULL DEFAULT 'deterministic'
        CHECK (identity_rule IN ('deterministic', 'nonce', 'strict')),
    -- How long without a heartbeat before the reaper considers the run stuck.
    ADD COLUMN lease_seconds integer NOT NULL DEFAULT 60 CHECK (lease_seconds > 0),
    -- Not dispatched before this time; the due pass sends it when it comes.
    ADD COLUMN not_before timestamptz NULL;

-- Strict identities are unique across all states: that occurrence runs once.
CREATE UNIQUE INDEX operation_runs_strict_identity
    ON operation_runs (tenant_id, run_identity_hash)
    WHERE identity_rule = 'strict';

-- Due pass: queued runs waiting for their time, not yet dispatched.
CREATE INDEX operation_runs_due ON operation_runs (not_before)
    WHERE status = 'queued' AND dispatch_entry_id IS NULL;
