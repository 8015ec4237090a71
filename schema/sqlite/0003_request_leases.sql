-- 0003: a claim on an idempotency key is a lease held by one run of the request
-- (`owner`), renewed while it runs. A claim whose lease lapsed (its server died,
-- or the run failed and let go) is taken over by the next request with the same
-- key and body, which reruns it: `runs` counts the runs. Leases are measured on
-- the machines' real clocks, in microseconds since the Unix epoch. Rows claimed
-- before this migration hold no lease: a retry takes them over at once.
-- Never edit after it lands; add a new file.
ALTER TABLE api_requests ADD COLUMN owner BLOB;
ALTER TABLE api_requests ADD COLUMN lease_until_us INTEGER NOT NULL DEFAULT 0;
ALTER TABLE api_requests ADD COLUMN runs INTEGER NOT NULL DEFAULT 1 CHECK (runs >= 1);
