-- A run started by an operator's retry of an earlier one links to it; the
-- earlier run keeps its history unchanged.
ALTER TABLE operation_runs ADD COLUMN retry_of bigint NULL;
CREATE INDEX operation_runs_retry_of ON operation_runs (retry_of) WHERE retry_of IS NOT NULL;
