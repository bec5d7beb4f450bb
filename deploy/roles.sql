-- opsrun's least-privilege roles. Run as a superuser (or a role with
-- CREATEROLE that owns the database), connected to opsrun's database:
--
--   psql -v ON_ERROR_STOP=1 -d opsrun -f deploy/roles.sql    # the roles
--   DATABASE_URL=postgres://opsrun_migrator@…/opsrun producer migrate
--   psql -v ON_ERROR_STOP=1 -d opsrun -f deploy/roles.sql    # the grants
--
-- and again after every `producer migrate` that adds tables: it is
-- idempotent, and grants only on tables that exist. Give each login role a
-- password (`\password opsrun_worker`) or a client certificate. Services
-- then run with `--no-migrate` (worker, monitor), each as its own role.
--
-- What each role may do, and why:
--   opsrun_migrator  owns the schema (DDL: `producer migrate`), and
--                    manages tokens (`monitor token create|revoke`)
--   opsrun_producer  starts runs: inserts them, reads them (dedupe), fails
--                    one whose dispatch failed
--   opsrun_worker    claims, heartbeats and completes runs (UPDATE), never
--                    inserts or deletes them
--   opsrun_reaper    the worker's rights, and deletes runs and their
--                    notifications past retention
--   opsrun_monitor   reads runs, notifications, tokens, sessions and the
--                    audit trail; starts runs (INSERT); marks notifications
--                    read (read_at only); opens and ends sessions; cancels
--                    runs (only through opsrun_cancel_run). It cannot
--                    otherwise change a run: a start whose dispatch failed
--                    stays queued and the reaper's lost-dispatch pass sends
--                    it again.
-- Writing a run also writes its initiator's notification (triggers running
-- as the writer), hence INSERT on notifications for the roles that write
-- runs. The worker's claim and completion functions (opsrun_claim_queued,
-- opsrun_complete_runs: migration 000024) run as their caller, with the
-- caller's rights on the tables; EXECUTE on them is PUBLIC's, as for any
-- new function.

DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['opsrun_migrator', 'opsrun_producer', 'opsrun_worker',
                             'opsrun_reaper', 'opsrun_monitor'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            EXECUTE format('CREATE ROLE %I LOGIN', r);
        END IF;
        EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), r);
        EXECUTE format('GRANT USAGE ON SCHEMA public TO %I', r);
    END LOOP;
END
$$;

GRANT CREATE ON SCHEMA public TO opsrun_migrator;

-- Per table, once the migrations created it.
DO $$
BEGIN
    IF to_regclass('public.operation_runs') IS NOT NULL THEN
        REVOKE ALL ON operation_runs, notifications, api_tokens, monitor_sessions
            FROM opsrun_producer, opsrun_worker, opsrun_reaper, opsrun_monitor;
        GRANT SELECT, INSERT, UPDATE ON operation_runs TO opsrun_producer;
        GRANT INSERT ON notifications TO opsrun_producer;
        GRANT SELECT, UPDATE ON operation_runs TO opsrun_worker;
        GRANT INSERT ON notifications TO opsrun_worker;
        GRANT SELECT, UPDATE, DELETE ON operation_runs TO opsrun_reaper;
        GRANT SELECT, INSERT, DELETE ON notifications TO opsrun_reaper;
        GRANT SELECT, INSERT ON operation_runs TO opsrun_monitor;
        GRANT SELECT, INSERT ON notifications TO opsrun_monitor;
        GRANT UPDATE (read_at) ON notifications TO opsrun_monitor;
        GRANT SELECT ON api_tokens TO opsrun_monitor;
        GRANT SELECT, INSERT, DELETE ON monitor_sessions TO opsrun_monitor;
    END IF;
    -- Cancelling goes through one function that runs as the schema's
    -- owner and records the action: the roles that cancel (the producer's
    -- CLI, the monitor's API) need no UPDATE on runs for it. A retry is a
    -- start (INSERT on runs), recorded by its role.
    IF to_regclass('public.operator_actions') IS NOT NULL THEN
        REVOKE ALL ON operator_actions FROM opsrun_producer, opsrun_worker, opsrun_reaper, opsrun_monitor;
        GRANT SELECT, INSERT ON operator_actions TO opsrun_producer, opsrun_monitor;
        GRANT USAGE ON SEQUENCE operator_actions_id_seq TO opsrun_producer, opsrun_monitor;
        GRANT EXECUTE ON FUNCTION opsrun_cancel_run(bigint, bigint, bigint, text, text, text)
            TO opsrun_producer, opsrun_monitor;
    END IF;
    -- Schedules: managed by the producer's CLI and the monitor, fired by the reaper.
    IF to_regclass('public.schedules') IS NOT NULL THEN
        REVOKE ALL ON schedules, schedule_slots FROM opsrun_producer, opsrun_worker, opsrun_reaper, opsrun_monitor;
        GRANT SELECT, INSERT, UPDATE, DELETE ON schedules TO opsrun_producer, opsrun_monitor;
        -- The reaper fires them, and keeps the registry's declared ones.
        GRANT SELECT, INSERT, UPDATE ON schedules TO opsrun_reaper;
        GRANT USAGE ON SEQUENCE schedules_id_seq TO opsrun_reaper;
        GRANT SELECT ON schedule_slots TO opsrun_producer, opsrun_monitor;
        GRANT SELECT, INSERT ON schedule_slots TO opsrun_reaper;
        GRANT DELETE ON schedule_slots TO opsrun_producer, opsrun_monitor;
        GRANT USAGE ON SEQUENCE schedules_id_seq TO opsrun_producer, opsrun_monitor;
        GRANT INSERT ON operation_runs TO opsrun_reaper;
        GRANT INSERT ON notifications TO opsrun_reaper;
    END IF;
    -- Pausing and resuming queues likewise; every service may see which are paused.
    IF to_regclass('public.queue_pauses') IS NOT NULL THEN
        REVOKE ALL ON queue_pauses FROM opsrun_producer, opsrun_worker, opsrun_reaper, opsrun_monitor;
        GRANT SELECT ON queue_pauses TO opsrun_producer, opsrun_worker, opsrun_reaper, opsrun_monitor;
        GRANT EXECUTE ON FUNCTION opsrun_pause_queue(text, boolean, bigint, bigint, text, text)
            TO opsrun_producer, opsrun_monitor;
    END IF;
    -- Concurrency counts: workers count their claims and their grouped
    -- completions; a run leaving `running` any other way (a worker's retry,
    -- the reaper's reclaims and failures) is counted by trigger, and the
    -- reaper folds the releases; everyone may see them.
    IF to_regclass('public.concurrency_claims') IS NOT NULL THEN
        REVOKE ALL ON concurrency_claims, concurrency_releases
            FROM opsrun_producer, opsrun_worker, opsrun_reaper, opsrun_monitor;
        GRANT SELECT ON concurrency_claims, concurrency_releases
            TO opsrun_producer, opsrun_worker, opsrun_reaper, opsrun_monitor;
        GRANT INSERT, UPDATE ON concurrency_claims TO opsrun_worker;
        -- A start makes its key's count if it has none yet.
        GRANT INSERT ON concurrency_claims TO opsrun_producer, opsrun_reaper, opsrun_monitor;
        GRANT INSERT, UPDATE ON concurrency_releases TO opsrun_worker, opsrun_reaper;
        GRANT DELETE ON concurrency_releases TO opsrun_reaper;
    END IF;
    -- Slot credits: workers take, renew and give back their own; the
    -- reaper returns expired ones (migration 000023).
    IF to_regclass('public.concurrency_credits') IS NOT NULL THEN
        REVOKE ALL ON concurrency_credits
            FROM opsrun_producer, opsrun_worker, opsrun_reaper, opsrun_monitor;
        GRANT SELECT ON concurrency_credits
            TO opsrun_producer, opsrun_worker, opsrun_reaper, opsrun_monitor;
        GRANT INSERT, UPDATE ON concurrency_credits TO opsrun_worker;
        GRANT UPDATE, DELETE ON concurrency_credits TO opsrun_reaper;
    END IF;
    -- Chart rollups: the reaper writes them, the monitor reads them.
    IF to_regclass('public.run_rollups') IS NOT NULL THEN
        REVOKE ALL ON run_rollups, run_rollup_durations, run_rollup_progress
            FROM opsrun_producer, opsrun_worker, opsrun_reaper, opsrun_monitor;
        GRANT SELECT, INSERT ON run_rollups, run_rollup_durations TO opsrun_reaper;
        GRANT SELECT, UPDATE ON run_rollup_progress TO opsrun_reaper;
        GRANT SELECT ON run_rollups, run_rollup_durations, run_rollup_progress TO opsrun_monitor;
    END IF;
END
$$;
