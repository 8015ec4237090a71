-- 0005: nothing to add on SQLite: `Ledger::appended_under` asks `key GLOB
-- 'prefix*'`, which SQLite answers from the key's primary index (BINARY
-- collation). Kept so both backends number their migrations alike.
-- Never edit after it lands; add a new file.
SELECT 1;
