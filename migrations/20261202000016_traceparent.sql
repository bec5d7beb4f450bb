-- The W3C trace context a run was started under (`traceparent`, version 00
-- form), so every attempt's spans (retries, reclaims) join the caller's
-- trace. NULL: started without one. Adding a nullable column without a
-- default rewrites nothing.
ALTER TABLE operation_runs ADD COLUMN traceparent text NULL
    CONSTRAINT operation_runs_traceparent_format
    CHECK (traceparent ~ '^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$');
