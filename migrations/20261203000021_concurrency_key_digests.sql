-- Stream entries of limited runs name their concurrency key, so a claim
-- counts a run against its key without reading the run first (see
-- `Session::claim_limited` in opsrun/src/ledger/session.rs). They name it
-- by a digest: a key may hold an input's value (`per =
-- "inputs.<name>"`), and inputs stay in Postgres. The worker passes the
-- digests through; each key's count row carries its own, computed here.
--
-- The digest is the first 16 bytes of the key's SHA-256 in hex, as
-- `opsrun::concurrency::key_digest` computes it when a run is sent.
-- Declared immutable for the generated column: the conversion to UTF-8
-- depends only on the database's encoding, which never changes.
CREATE FUNCTION opsrun_key_digest(p_key text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT encode(substring(sha256(convert_to(p_key, 'UTF8')) FROM 1 FOR 16), 'hex')
$$;

ALTER TABLE concurrency_claims
    ADD COLUMN key_digest text GENERATED ALWAYS AS (opsrun_key_digest(concurrency_key)) STORED;
CREATE UNIQUE INDEX concurrency_claims_key_digest ON concurrency_claims (key_digest);
