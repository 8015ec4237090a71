-- 0005: an index that finds ledger idempotency keys by their start (a
-- replayable API request's keys share `req-<request>-<stream>-`), in byte
-- order whatever the database's collation: `Ledger::appended_under` asks
-- `key COLLATE "C" >= prefix AND key COLLATE "C" < prefix || '~'`.
-- Never edit after it lands; add a new file.
CREATE INDEX IF NOT EXISTS idempotency_keys_by_prefix ON idempotency_keys ((key COLLATE "C"));
