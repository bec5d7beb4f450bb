-- Per-tenant schedules: a cron expression in a time zone fires a run of a
-- type at each slot (see opsrun::schedule). `last_slot` is the latest slot
-- settled (fired or skipped); `next_slot` the next one, computed by the
-- service that wrote the row, so a due schedule is found by index.
CREATE TABLE schedules (
    id           bigserial PRIMARY KEY,
    tenant_id    bigint NOT NULL CHECK (tenant_id > 0),
    name         text NOT NULL,
    cron         text NOT NULL,
    timezone     text NOT NULL,
    type         text NOT NULL,
    inputs       jsonb NOT NULL DEFAULT '{}',
    missed       text NOT NULL DEFAULT 'skip' CHECK (missed IN ('skip', 'latest', 'catch_up')),
    catch_up_max integer NOT NULL DEFAULT 0,
    paused       boolean NOT NULL DEFAULT false,
    last_slot    timestamptz NOT NULL DEFAULT now(),
    next_slot    timestamptz NULL,
    created_by   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, name)
);
CREATE INDEX schedules_due ON schedules (next_slot) WHERE NOT paused;

-- Each settled slot: the run it fired, or none when it was skipped.
CREATE TABLE schedule_slots (
    schedule_id bigint NOT NULL REFERENCES schedules (id) ON DELETE CASCADE,
    slot        timestamptz NOT NULL,
    run_id      bigint NULL,
    skipped     boolean NOT NULL,
    settled_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (schedule_id, slot)
);
