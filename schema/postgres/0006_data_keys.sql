-- 0006: per-customer data keys for personal data (crypto-shredding). Each key
-- encrypts one customer's personal data in the ledger's events; it is stored
-- here wrapped (encrypted) by a master key that never enters the database, and
-- `master_key_id` names which one (a fingerprint) so master keys rotate by
-- rewrapping these rows, never the events. Erasure destroys the key: `wrapped`
-- becomes NULL and `destroyed_at` is set, and the row stays as a tombstone so
-- no new key is ever made for an erased customer. Operational data, not
-- billing facts: rows are updated, unlike the ledger's.
-- Never edit after it lands; add a new file.
CREATE TABLE data_keys (
    owner         UUID        PRIMARY KEY,
    wrapped       BYTEA       CHECK (wrapped IS NULL OR length(wrapped) BETWEEN 28 AND 256),
    master_key_id TEXT        CHECK (master_key_id IS NULL OR length(master_key_id) BETWEEN 1 AND 64),
    created_at    TIMESTAMPTZ NOT NULL,
    destroyed_at  TIMESTAMPTZ,
    CHECK ((wrapped IS NULL) = (destroyed_at IS NOT NULL)),
    CHECK ((wrapped IS NULL) = (master_key_id IS NULL))
);
