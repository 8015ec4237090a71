-- 0002: answers to idempotent API requests, so a retried request (same key, same
-- body) gets the first answer. Operational data, not billing facts: rows are
-- updated once and deleted when they expire, so this table has no append-only
-- trigger. Never edit after it lands; add a new file.
CREATE TABLE api_requests (
    key         text        PRIMARY KEY CHECK (octet_length(key) BETWEEN 1 AND 400),
    fingerprint bytea       NOT NULL CHECK (octet_length(fingerprint) = 32),
    status      integer     CHECK (status BETWEEN 100 AND 599),
    body        text,
    created_at  timestamptz NOT NULL
);
CREATE INDEX api_requests_created_at ON api_requests (created_at);
