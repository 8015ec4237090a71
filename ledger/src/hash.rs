//! Tamper evidence: each event's content hash, the per-stream hash chain and
//! the global seals. The encoding is fixed here and in docs/ledger.md; the
//! Postgres schema computes the chain step with the same bytes.

use sha2::{Digest, Sha256};
use time::OffsetDateTime;

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// The chain's value before a stream's first event.
pub const GENESIS: Hash = [0; 32];

/// Domain separator so a content hash can never be confused with another digest.
const CONTENT_TAG: &[u8] = b"recur.event.v1";
/// Domain separator of the seal digest.
const SEAL_TAG: &[u8] = b"recur.seal.v1";

/// The fields that a content hash covers, as stored.
pub struct Content<'a> {
    /// The event id's 16 bytes.
    pub id: &'a uuid::Uuid,
    /// The stream id.
    pub stream_id: &'a str,
    /// The event type.
    pub event_type: &'a str,
    /// The schema version.
    pub schema_version: u32,
    /// The payload text exactly as stored.
    pub payload: &'a str,
    /// The metadata text exactly as stored.
    pub metadata: &'a str,
    /// The recording instant (microsecond precision).
    pub recorded_at: OffsetDateTime,
}

fn put_text(hasher: &mut Sha256, text: &str) {
    hasher.update((text.len() as u64).to_be_bytes());
    hasher.update(text.as_bytes());
}

/// SHA-256 over the event's content, length-prefixed so fields cannot run into each other.
pub fn content_hash(content: &Content<'_>) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update(CONTENT_TAG);
    hasher.update(content.id.as_bytes());
    put_text(&mut hasher, content.stream_id);
    put_text(&mut hasher, content.event_type);
    hasher.update(content.schema_version.to_be_bytes());
    put_text(&mut hasher, content.payload);
    put_text(&mut hasher, content.metadata);
    hasher.update(unix_micros(content.recorded_at).to_be_bytes());
    hasher.finalize().into()
}

/// One chain step: `sha256(previous ‖ version as 8 bytes big-endian ‖ content hash)`.
pub fn chain_step(previous: &Hash, stream_version: u64, content: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update(previous);
    hasher.update(stream_version.to_be_bytes());
    hasher.update(content);
    hasher.finalize().into()
}

/// Folds the seal digest over events in position order: `(position, chain hash)` pairs.
pub struct SealDigest(Sha256);

impl SealDigest {
    /// Starts a seal that follows the seal with digest `previous`.
    pub fn new(previous: &Hash) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(SEAL_TAG);
        hasher.update(previous);
        Self(hasher)
    }

    /// Adds one event.
    pub fn add(&mut self, position: u64, chain: &Hash) {
        self.0.update(position.to_be_bytes());
        self.0.update(chain);
    }

    /// The seal's digest.
    pub fn finish(self) -> Hash {
        self.0.finalize().into()
    }
}

/// Microseconds since the Unix epoch: the precision both backends store.
pub fn unix_micros(instant: OffsetDateTime) -> i64 {
    i64::try_from(instant.unix_timestamp_nanos().div_euclid(1_000)).unwrap_or(i64::MAX)
}

/// Truncates an instant to whole microseconds, as stored.
pub fn truncate_to_micros(instant: OffsetDateTime) -> OffsetDateTime {
    let micros = instant.unix_timestamp_nanos().div_euclid(1_000);
    OffsetDateTime::from_unix_timestamp_nanos(micros * 1_000).unwrap_or(instant)
}

/// Converts a stored digest column into a [`Hash`], if it has the right length.
pub fn from_bytes(bytes: &[u8]) -> Option<Hash> {
    bytes.try_into().ok()
}
