-- Statistics only for the columns queries filter, join or sort on.
--
-- Autovacuum analyzes operation_runs after every 10% of its rows change,
-- and a queue's ledger changes all the time (each run is inserted and
-- updated twice), so it analyzes often. ANALYZE samples 30,000 rows and,
-- for every column, sorts the sample's values to find the common ones and
-- the histogram: for the JSON columns that means comparing jsonb values
-- (most of the time it took, perf, during `make bench ARGS=--end-to-end-only`,
-- where analyzing took about a twelfth of Postgres's CPU).
-- No query filters on these columns' values (failure_summary's containment
-- filter in the monitor's list reads an index in run order, whatever its
-- estimate), so the planner has no use for their statistics; a target of 0
-- makes ANALYZE skip them. Measured on the 100,000 runs that command
-- leaves (three ANALYZEs each way): 0.48–0.61 s -> 0.31–0.34 s.
--
-- Changes only the catalog: no table rewrite, no lock held beyond a moment.

ALTER TABLE operation_runs
    ALTER COLUMN initiator_name SET STATISTICS 0,
    ALTER COLUMN summary_counts SET STATISTICS 0,
    ALTER COLUMN failure_summary SET STATISTICS 0,
    ALTER COLUMN context SET STATISTICS 0,
    ALTER COLUMN inputs SET STATISTICS 0,
    ALTER COLUMN reclaims SET STATISTICS 0,
    ALTER COLUMN cancel_request SET STATISTICS 0,
    ALTER COLUMN traceparent SET STATISTICS 0,
    ALTER COLUMN max_attempts SET STATISTICS 0,
    ALTER COLUMN lease_seconds SET STATISTICS 0,
    ALTER COLUMN slot_wait_limit SET STATISTICS 0,
    ALTER COLUMN updated_at SET STATISTICS 0;
