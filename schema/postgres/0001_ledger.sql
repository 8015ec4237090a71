-- 0001: the append-only event store. Never edit after it lands; add a new file.

-- Positions come from this sequence. CACHE 1 is required by the release-horizon
-- proof (docs/ledger.md): `last_value` must be the highest position any
-- transaction holds, never a block of values cached by one backend.
CREATE SEQUENCE events_position_seq AS bigint MINVALUE 1 START 1 CACHE 1 NO CYCLE;

CREATE TABLE events (
    position       bigint      PRIMARY KEY DEFAULT nextval('events_position_seq'),
    id             uuid        NOT NULL,
    stream_id      text        NOT NULL CHECK (octet_length(stream_id) BETWEEN 1 AND 200),
    version        bigint      NOT NULL CHECK (version >= 1),
    event_type     text        NOT NULL,
    schema_version integer     NOT NULL CHECK (schema_version >= 1),
    -- json, not jsonb: stored and returned byte for byte, so the content hash can be
    -- recomputed from what is stored and replay needs no re-serialisation.
    payload        json        NOT NULL,
    metadata       json        NOT NULL,
    recorded_at    timestamptz NOT NULL,
    -- SHA-256(previous chain hash, version, content hash): docs/ledger.md.
    chain_hash     bytea       NOT NULL CHECK (octet_length(chain_hash) = 32),
    CONSTRAINT events_id_key UNIQUE (id),
    CONSTRAINT events_stream_version_key UNIQUE (stream_id, version)
);
ALTER SEQUENCE events_position_seq OWNED BY events.position;

-- Idempotency keys of appends: a retried append with the same key answers with the
-- events it wrote then (stream_id, first_version..last_version).
CREATE TABLE idempotency_keys (
    key           text   PRIMARY KEY,
    stream_id     text   NOT NULL,
    first_version bigint NOT NULL,
    last_version  bigint NOT NULL CHECK (last_version >= first_version)
);

-- Global seals: each covers a range of released positions, chained to the previous seal.
CREATE TABLE seals (
    seal_no       bigint      PRIMARY KEY CHECK (seal_no >= 1),
    from_position bigint      NOT NULL,
    to_position   bigint      NOT NULL CHECK (to_position > from_position),
    event_count   bigint      NOT NULL,
    digest        bytea       NOT NULL CHECK (octet_length(digest) = 32),
    sealed_at     timestamptz NOT NULL DEFAULT now()
);

-- Immutability, enforced by the database for every role: no UPDATE, DELETE or TRUNCATE.
CREATE FUNCTION recur_reject_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'recur: % on % is refused: the ledger is append-only', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'RL001';
END
$$;

CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION recur_reject_change();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION recur_reject_change();
CREATE TRIGGER idempotency_keys_append_only BEFORE UPDATE OR DELETE ON idempotency_keys
    FOR EACH ROW EXECUTE FUNCTION recur_reject_change();
CREATE TRIGGER idempotency_keys_no_truncate BEFORE TRUNCATE ON idempotency_keys
    FOR EACH STATEMENT EXECUTE FUNCTION recur_reject_change();
CREATE TRIGGER seals_append_only BEFORE UPDATE OR DELETE ON seals
    FOR EACH ROW EXECUTE FUNCTION recur_reject_change();
CREATE TRIGGER seals_no_truncate BEFORE TRUNCATE ON seals
    FOR EACH STATEMENT EXECUTE FUNCTION recur_reject_change();

-- One step of the release horizon (docs/ledger.md): the oldest running xid now, the
-- highest position allocated so far, and, when that is beyond what the caller has
-- released, a fence: this transaction's own xid, taken after reading the sequence.
-- Every position <= allocated is final once a later probe sees xmin_now >= fence.
CREATE FUNCTION recur_release_probe(p_released bigint)
RETURNS TABLE (xmin_now bigint, allocated bigint, fence bigint)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    xmin_now := pg_snapshot_xmin(pg_current_snapshot())::text::bigint;
    SELECT CASE WHEN is_called THEN last_value ELSE 0 END INTO allocated FROM events_position_seq;
    fence := NULL;
    IF allocated > p_released THEN
        fence := pg_current_xact_id()::text::bigint;
    END IF;
    RETURN NEXT;
END
$$;
