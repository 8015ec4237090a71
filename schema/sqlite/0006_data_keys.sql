-- 0006: per-customer data keys for personal data (crypto-shredding). Each key
-- encrypts one customer's personal data in the ledger's events; it is stored
-- here wrapped (encrypted) by a master key that never enters the database, and
-- `master_key_id` names which one (a fingerprint) so master keys rotate by
-- rewrapping these rows, never the events. Erasure destroys the key: `wrapped`
-- becomes NULL and `destroyed_at_us` is set, and the row stays as a tombstone
-- so no new key is ever made for an erased customer. The ledger's writer
-- connection runs with `secure_delete` so a destroyed key's bytes are
-- overwritten in the file. Operational data, not billing facts.
-- Never edit after it lands; add a new file.
CREATE TABLE data_keys (
    owner           BLOB    PRIMARY KEY CHECK (length(owner) = 16),
    wrapped         BLOB    CHECK (wrapped IS NULL OR length(wrapped) BETWEEN 28 AND 256),
    master_key_id   TEXT    CHECK (master_key_id IS NULL OR length(master_key_id) BETWEEN 1 AND 64),
    created_at_us   INTEGER NOT NULL,
    destroyed_at_us INTEGER,
    CHECK ((wrapped IS NULL) = (destroyed_at_us IS NOT NULL)),
    CHECK ((wrapped IS NULL) = (master_key_id IS NULL))
);
