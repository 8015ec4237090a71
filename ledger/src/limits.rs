//! Explicit limits on everything the ledger accepts or does in one go.

/// Longest stream id, in bytes.
pub const STREAM_ID_BYTES_MAX: usize = 200;
/// Longest event type name, in bytes.
pub const EVENT_TYPE_BYTES_MAX: usize = 100;
/// Largest payload of one event, in bytes of compact JSON (256 KiB).
pub const PAYLOAD_BYTES_MAX: usize = 256 * 1024;
/// Largest metadata document of one event, in bytes.
pub const METADATA_BYTES_MAX: usize = 8 * 1024;
/// Most events in one append (one transaction).
pub const EVENTS_PER_APPEND_MAX: usize = 1_000;
/// Longest idempotency key, in bytes.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 255;
/// Most appends the committer coalesces into one database transaction.
pub const APPENDS_PER_COMMIT_MAX: usize = 256;
/// Most events one `read_all` or `read_stream` page returns.
pub const READ_PAGE_EVENTS_MAX: usize = 10_000;
/// How often one coalesced commit is retried after losing a race to another process.
pub const COMMIT_ATTEMPTS_MAX: u32 = 16;
/// Most events one seal covers, so a broken seal points at a bounded range.
pub const EVENTS_PER_SEAL_MAX: u64 = 10_000;
/// Most events of one stream a proof carries (`recur ledger proof`).
pub const PROOF_EVENTS_MAX: u64 = 100_000;
/// Most seals a proof relies on: each brings up to [`EVENTS_PER_SEAL_MAX`] other
/// events' hashes (about 90 bytes each in JSON), so this bounds a proof near 90 MB.
pub const PROOF_SEALS_MAX: u64 = 100;
