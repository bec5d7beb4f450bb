-- Monitor logins are server-side sessions: the browser's cookie holds a
-- random session secret, never the API token; only its SHA-256 is stored.
-- A session ends when it expires, when its user logs out (the row is
-- deleted), or when its token is revoked.
CREATE TABLE monitor_sessions (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    session_sha256  sha256_hex  NOT NULL UNIQUE,
    token_id        bigint      NOT NULL REFERENCES api_tokens (id) ON DELETE CASCADE,
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    CHECK (expires_at > created_at)
);
CREATE INDEX monitor_sessions_expires ON monitor_sessions (expires_at);

-- Queues a token may start runs on besides each type's own queue (from the
-- registry); empty: only the type's queue.
ALTER TABLE api_tokens
    ADD COLUMN queues text[] NOT NULL DEFAULT '{}'
        CHECK (array_position(queues, NULL) IS NULL);
