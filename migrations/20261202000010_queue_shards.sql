-- A queue may have several streams (shards) so that a hot queue spreads over
-- a Redis Cluster's masters. A run records which of its queue's streams its
-- latest entry went to (0 for an unsharded queue, whose only stream is
-- shard 0): the reaper looks for the entry there, and an operator finds it
-- with redis-cli. A constant default: adding the column rewrites nothing.
ALTER TABLE operation_runs
    ADD COLUMN shard smallint NOT NULL DEFAULT 0
        CONSTRAINT operation_runs_shard_range CHECK (shard BETWEEN 0 AND 63);
