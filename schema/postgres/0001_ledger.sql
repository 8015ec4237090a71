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
    content_hash   bytea       NOT NULL CHECK (octet_length(content_hash) = 32),
    chain_hash     bytea       NOT NULL CHECK (octet_length(chain_hash) = 32),
    CONSTRAINT events_id_key UNIQUE (id),
    CONSTRAINT events_stream_version_key UNIQUE (stream_id, version)
);
ALTER SEQUENCE events_position_seq OWNED BY events.position;

-- Idempotency keys of appends: a retried append with the same key returns these positions.
CREATE TABLE idempotency_keys (
    key          text     PRIMARY KEY,
    stream_id    text     NOT NULL,
    last_version bigint   NOT NULL,
    positions    bigint[] NOT NULL
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

-- Appends a batch of appends in the caller's transaction; one call per coalesced commit.
-- Appends are given in stream order (the caller sorts them) so that concurrent batches
-- take index locks in the same order and cannot deadlock each other.
-- outcome: 0 appended, 1 already committed (replayed), 2 version conflict,
--          3 idempotency key used on another stream, 4 event ids committed elsewhere.
CREATE FUNCTION recur_append(
    a_stream   text[],
    a_expected bigint[],     -- -1: any; otherwise the exact version (0 = no stream)
    a_key      text[],       -- NULL elements: no idempotency key
    a_count    integer[],
    e_id       uuid[],
    e_type     text[],
    e_schema   integer[],
    e_payload  text[],
    e_metadata text[],
    e_recorded timestamptz[],
    e_content  bytea[]
) RETURNS TABLE (append_index integer, outcome smallint, stream_version bigint, positions bigint[])
LANGUAGE plpgsql AS $$
DECLARE
    i          integer;
    j          integer;
    n          integer;
    off        integer := 0;
    head_v     bigint;
    head_h     bytea;
    found_n    integer;
    found_max  bigint;
    found_bad  integer;
    chain      bytea[];
    h          bytea;
    k          record;
BEGIN
    -- Take this transaction's id before any position: the release horizon relies on
    -- every position being allocated by a transaction that already has its xid.
    PERFORM pg_current_xact_id();
    FOR i IN 1 .. coalesce(array_length(a_stream, 1), 0) LOOP
        n := a_count[i];
        append_index := i - 1;
        positions := NULL;
        stream_version := NULL;
        IF a_key[i] IS NOT NULL THEN
            SELECT * INTO k FROM idempotency_keys WHERE key = a_key[i];
            IF FOUND THEN
                IF k.stream_id = a_stream[i] THEN
                    outcome := 1; stream_version := k.last_version; positions := k.positions;
                ELSE
                    outcome := 3; positions := NULL;
                END IF;
                RETURN NEXT;
                off := off + n;
                CONTINUE;
            END IF;
        END IF;
        SELECT count(*), max(version), count(*) FILTER (WHERE stream_id <> a_stream[i]),
               array_agg(position ORDER BY version)
          INTO found_n, found_max, found_bad, positions
          FROM events WHERE id = ANY (e_id[off + 1 : off + n]);
        IF found_n > 0 THEN
            IF found_n = n AND found_bad = 0 THEN
                outcome := 1; stream_version := found_max;
            ELSE
                outcome := 4; positions := NULL;
            END IF;
            RETURN NEXT;
            off := off + n;
            CONTINUE;
        END IF;
        SELECT version, chain_hash INTO head_v, head_h
          FROM events WHERE stream_id = a_stream[i] ORDER BY version DESC LIMIT 1;
        IF NOT FOUND THEN
            head_v := 0;
            head_h := '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea;
        END IF;
        IF a_expected[i] >= 0 AND a_expected[i] <> head_v THEN
            outcome := 2; stream_version := head_v; positions := NULL;
            RETURN NEXT;
            off := off + n;
            CONTINUE;
        END IF;
        chain := '{}';
        h := head_h;
        FOR j IN 1 .. n LOOP
            h := sha256(h || int8send(head_v + j) || e_content[off + j]);
            chain := chain || h;
        END LOOP;
        WITH inserted AS (
            INSERT INTO events (id, stream_id, version, event_type, schema_version, payload,
                                metadata, recorded_at, content_hash, chain_hash)
            SELECT e_id[off + t.j], a_stream[i], head_v + t.j, e_type[off + t.j],
                   e_schema[off + t.j], e_payload[off + t.j]::json, e_metadata[off + t.j]::json,
                   e_recorded[off + t.j], e_content[off + t.j], chain[t.j]
              FROM generate_series(1, n) AS t(j)
             ORDER BY t.j
            RETURNING position, version
        )
        SELECT array_agg(position ORDER BY version) INTO positions FROM inserted;
        stream_version := head_v + n;
        IF a_key[i] IS NOT NULL THEN
            INSERT INTO idempotency_keys (key, stream_id, last_version, positions)
            VALUES (a_key[i], a_stream[i], stream_version, positions);
        END IF;
        outcome := 0;
        RETURN NEXT;
        off := off + n;
    END LOOP;
END
$$;

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
