-- 0001: the append-only event store (embedded). Never edit after it lands; add a new file.
-- One writer at a time (SQLite's write lock), so positions are dense and in commit order.

CREATE TABLE events (
    position       INTEGER PRIMARY KEY,
    id             BLOB    NOT NULL UNIQUE CHECK (length(id) = 16),
    stream_id      TEXT    NOT NULL CHECK (length(CAST(stream_id AS BLOB)) BETWEEN 1 AND 200),
    version        INTEGER NOT NULL CHECK (version >= 1),
    event_type     TEXT    NOT NULL,
    schema_version INTEGER NOT NULL CHECK (schema_version >= 1),
    payload        TEXT    NOT NULL CHECK (json_valid(payload)),
    metadata       TEXT    NOT NULL CHECK (json_valid(metadata)),
    recorded_at_us INTEGER NOT NULL,
    chain_hash     BLOB    NOT NULL CHECK (length(chain_hash) = 32),
    UNIQUE (stream_id, version)
);

CREATE TABLE idempotency_keys (
    key           TEXT    PRIMARY KEY,
    stream_id     TEXT    NOT NULL,
    first_version INTEGER NOT NULL,
    last_version  INTEGER NOT NULL CHECK (last_version >= first_version)
);

CREATE TABLE seals (
    seal_no       INTEGER PRIMARY KEY CHECK (seal_no >= 1),
    from_position INTEGER NOT NULL,
    to_position   INTEGER NOT NULL CHECK (to_position > from_position),
    event_count   INTEGER NOT NULL,
    digest        BLOB    NOT NULL CHECK (length(digest) = 32),
    sealed_at_us  INTEGER NOT NULL
);

-- Immutability, enforced by the database: SQLite has no TRUNCATE; DELETE without WHERE
-- runs these row triggers too (the truncate optimisation is off when triggers exist).
CREATE TRIGGER events_no_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'recur: UPDATE on events is refused: the ledger is append-only'); END;
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'recur: DELETE on events is refused: the ledger is append-only'); END;
CREATE TRIGGER idempotency_keys_no_update BEFORE UPDATE ON idempotency_keys
BEGIN SELECT RAISE(ABORT, 'recur: UPDATE on idempotency_keys is refused: the ledger is append-only'); END;
CREATE TRIGGER idempotency_keys_no_delete BEFORE DELETE ON idempotency_keys
BEGIN SELECT RAISE(ABORT, 'recur: DELETE on idempotency_keys is refused: the ledger is append-only'); END;
CREATE TRIGGER seals_no_update BEFORE UPDATE ON seals
BEGIN SELECT RAISE(ABORT, 'recur: UPDATE on seals is refused: the ledger is append-only'); END;
CREATE TRIGGER seals_no_delete BEFORE DELETE ON seals
BEGIN SELECT RAISE(ABORT, 'recur: DELETE on seals is refused: the ledger is append-only'); END;
