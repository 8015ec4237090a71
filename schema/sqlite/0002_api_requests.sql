-- 0002: answers to idempotent API requests, so a retried request (same key, same
-- body) gets the first answer. Operational data, not billing facts: rows are
-- updated once and deleted when they expire. Never edit after it lands.
CREATE TABLE api_requests (
    key            TEXT    PRIMARY KEY CHECK (length(CAST(key AS BLOB)) BETWEEN 1 AND 400),
    fingerprint    BLOB    NOT NULL CHECK (length(fingerprint) = 32),
    status         INTEGER CHECK (status BETWEEN 100 AND 599),
    body           TEXT,
    created_at_us  INTEGER NOT NULL
);
CREATE INDEX api_requests_created_at ON api_requests (created_at_us);
