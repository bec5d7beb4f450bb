-- Per-row cost of each write a run gets, in a SQL loop (no client round
-- trips): 20,000 runs inserted 500 per statement, their dispatch stamps 500
-- per statement, then claimed and completed 25 per statement, each
-- statement its own transaction. Run against a migrated, otherwise unused
-- database (it empties operation_runs first):
--
--   psql -d DB -f bench/sql/transitions.sql
--
-- Prints microseconds per row for each step and how many updates were HOT.
-- Used to size the index and fillfactor choices of migration 000007 and the
-- column domains of migration 000008.
\set ON_ERROR_STOP 1
TRUNCATE operation_runs RESTART IDENTITY;
SELECT pg_stat_reset_single_table_counters('operation_runs'::regclass);
DO $$
DECLARE t0 timestamptz; n int := 20000; b int := 25; i int;
BEGIN
  t0 := clock_timestamp();
  FOR i IN 0..(n/500 - 1) LOOP
    INSERT INTO operation_runs (tenant_id, initiator_name, type, run_identity_hash, queue, inputs, context)
    SELECT 1, 'System', 'bench.e2e', encode(sha256(('r'||g)::bytea),'hex'), 'q', jsonb_build_object('i', g), '{"a":"b"}'
    FROM generate_series(i*500+1, i*500+500) g;
    COMMIT;
  END LOOP;
  RAISE NOTICE 'insert % us/row', round(extract(epoch from clock_timestamp()-t0)*1e6/n);
  t0 := clock_timestamp();
  FOR i IN 0..(n/500 - 1) LOOP
    UPDATE operation_runs SET dispatch_entry_id = '1-'||id, dispatched_at = now()
      WHERE id = ANY (ARRAY(SELECT generate_series(i*500+1, i*500+500)::bigint));
    COMMIT;
  END LOOP;
  RAISE NOTICE 'dispatch stamp % us/row', round(extract(epoch from clock_timestamp()-t0)*1e6/n);
  t0 := clock_timestamp();
  FOR i IN 0..(n/b - 1) LOOP
    UPDATE operation_runs SET status='running', attempt=attempt+1, holder='w1', started_at=now(), heartbeat_at=now()
      WHERE id = ANY (ARRAY(SELECT generate_series(i*b+1, i*b+b)::bigint)) AND status='queued';
    COMMIT;
  END LOOP;
  RAISE NOTICE 'claim % us/row', round(extract(epoch from clock_timestamp()-t0)*1e6/n);
  t0 := clock_timestamp();
  FOR i IN 0..(n/b - 1) LOOP
    UPDATE operation_runs SET status='completed', outcome='succeeded', completed_at=now()
      WHERE id = ANY (ARRAY(SELECT generate_series(i*b+1, i*b+b)::bigint)) AND status='running';
    COMMIT;
  END LOOP;
  RAISE NOTICE 'completion % us/row', round(extract(epoch from clock_timestamp()-t0)*1e6/n);
END $$;
SELECT n_tup_upd AS updates, n_tup_hot_upd AS hot_updates
FROM pg_stat_user_tables WHERE relname = 'operation_runs';
