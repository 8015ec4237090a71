//! The event envelope: what is appended, what is read back, and the values
//! that name streams, events and positions. Constructors reject bad input, so
//! past this module the store trusts its types.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::LedgerError;
use crate::limits::{
    EVENT_TYPE_BYTES_MAX, IDEMPOTENCY_KEY_BYTES_MAX, METADATA_BYTES_MAX, PAYLOAD_BYTES_MAX,
    STREAM_ID_BYTES_MAX,
};

/// The name of a stream: one aggregate instance, e.g. `subscription-0191…`.
/// Shared text, so the many events of one stream clone it without allocating.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct StreamId(Arc<str>);

impl StreamId {
    /// Accepts 1 to [`STREAM_ID_BYTES_MAX`] bytes of text without control characters.
    ///
    /// # Errors
    /// [`LedgerError::InvalidStreamId`] when the id is empty, too long or holds control characters.
    pub fn parse(value: impl Into<String>) -> Result<Self, LedgerError> {
        let value = value.into();
        if value.is_empty() {
            return Err(LedgerError::InvalidStreamId { reason: "empty" });
        }
        if value.len() > STREAM_ID_BYTES_MAX {
            return Err(LedgerError::InvalidStreamId {
                reason: "longer than 200 bytes",
            });
        }
        if value.chars().any(char::is_control) {
            return Err(LedgerError::InvalidStreamId {
                reason: "holds control characters",
            });
        }
        Ok(Self(value.into()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part before the first `-`: the aggregate kind, used to route events.
    pub fn category(&self) -> &str {
        self.0.split_once('-').map_or(&*self.0, |(head, _)| head)
    }
}

impl<'de> Deserialize<'de> for StreamId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Self::parse(raw).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A global position in the ledger: unique, increasing in release order, not dense.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Position(pub u64);

impl Position {
    /// Before the first event.
    pub const START: Position = Position(0);
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What the caller believes about the stream's version before appending.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpectedVersion {
    /// No check: append at the end, whatever it is.
    Any,
    /// The stream must not exist yet (version 0).
    NoStream,
    /// The stream must hold exactly this many events.
    Exact(u64),
}

impl ExpectedVersion {
    /// The exact version required, if any (`NoStream` is 0).
    pub fn required(self) -> Option<u64> {
        match self {
            Self::Any => None,
            Self::NoStream => Some(0),
            Self::Exact(version) => Some(version),
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("any"),
            Self::NoStream => f.write_str("no stream"),
            Self::Exact(version) => write!(f, "version {version}"),
        }
    }
}

/// Where a command came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The command API.
    #[default]
    Api,
    /// A payment provider's webhook.
    Webhook,
    /// The billing clock's scheduler.
    Scheduler,
    /// An operator at the command line.
    Cli,
    /// A data import or migration.
    Import,
}

/// A caller-chosen key that makes a retried append a no-op.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Accepts 1 to [`IDEMPOTENCY_KEY_BYTES_MAX`] bytes without control characters.
    ///
    /// # Errors
    /// [`LedgerError::InvalidIdempotencyKey`] otherwise.
    pub fn parse(value: impl Into<String>) -> Result<Self, LedgerError> {
        let value = value.into();
        if value.is_empty() {
            return Err(LedgerError::InvalidIdempotencyKey { reason: "empty" });
        }
        if value.len() > IDEMPOTENCY_KEY_BYTES_MAX {
            return Err(LedgerError::InvalidIdempotencyKey {
                reason: "longer than 255 bytes",
            });
        }
        if value.chars().any(char::is_control) {
            return Err(LedgerError::InvalidIdempotencyKey {
                reason: "holds control characters",
            });
        }
        Ok(Self(value))
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for IdempotencyKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Self::parse(raw).map_err(serde::de::Error::custom)
    }
}

/// Who did what, why and from where: stored with every event.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// The authenticated actor (an API key id, `scheduler`, an operator), never personal data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// The event or command that caused this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
    /// The request or process this event belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<Uuid>,
    /// Where the command came from.
    #[serde(default)]
    pub source: Source,
    /// The append's idempotency key, if the caller gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<IdempotencyKey>,
    /// The id an outside system gave the fact (a Stripe event's `evt_…`), if any.
    /// Absent, it is not written, so events from before it hash as they did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
}

/// A unique, time-ordered event id (UUIDv7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(pub Uuid);

/// One counter for all ids of the process, so ids made in the same millisecond
/// still sort in the order they were made (RFC 9562 method 1): index inserts on
/// `id` then land at the right edge of the index instead of at random.
static ID_CONTEXT: std::sync::Mutex<uuid::ContextV7> =
    std::sync::Mutex::new(uuid::ContextV7::new());

impl EventId {
    /// A new UUIDv7 stamped with the given instant (from the injected clock),
    /// increasing within the process.
    pub fn new_at(now: OffsetDateTime) -> Self {
        let nanos = now.unix_timestamp_nanos();
        let seconds = u64::try_from(nanos.div_euclid(1_000_000_000)).unwrap_or(0);
        let subsec = u32::try_from(nanos.rem_euclid(1_000_000_000)).unwrap_or(0);
        let ts = uuid::Timestamp::from_unix(&ID_CONTEXT, seconds, subsec);
        Self(Uuid::new_v7(ts))
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An event to append: its id, type, schema version, JSON payload and metadata.
#[derive(Clone, Debug)]
pub struct NewEvent {
    pub(crate) id: EventId,
    pub(crate) event_type: String,
    pub(crate) schema_version: u32,
    pub(crate) payload: Box<RawValue>,
    pub(crate) metadata: Metadata,
}

impl NewEvent {
    /// Builds an event from a value that serialises to a JSON object or value.
    ///
    /// # Errors
    /// Bad type names, payloads that do not serialise or are too large.
    pub fn new<T: Serialize + ?Sized>(
        id: EventId,
        event_type: &str,
        schema_version: u32,
        payload: &T,
    ) -> Result<Self, LedgerError> {
        // Serialising straight into a RawValue skips the re-parse that JSON text needs.
        let payload =
            serde_json::value::to_raw_value(payload).map_err(|error| LedgerError::InvalidJson {
                field: "payload",
                source: std::sync::Arc::new(error),
            })?;
        Self::checked(id, event_type, schema_version, payload)
    }

    /// Builds an event from JSON text, which is checked and stored byte for byte.
    ///
    /// # Errors
    /// Bad type names, invalid JSON or payloads above [`PAYLOAD_BYTES_MAX`].
    pub fn from_json(
        id: EventId,
        event_type: &str,
        schema_version: u32,
        json: String,
    ) -> Result<Self, LedgerError> {
        if json.len() > PAYLOAD_BYTES_MAX {
            return Err(LedgerError::PayloadTooLarge {
                size_bytes: json.len(),
                limit_bytes: PAYLOAD_BYTES_MAX,
            });
        }
        let payload = RawValue::from_string(json).map_err(|error| LedgerError::InvalidJson {
            field: "payload",
            source: std::sync::Arc::new(error),
        })?;
        Self::checked(id, event_type, schema_version, payload)
    }

    fn checked(
        id: EventId,
        event_type: &str,
        schema_version: u32,
        payload: Box<RawValue>,
    ) -> Result<Self, LedgerError> {
        validate_event_type(event_type)?;
        if payload.get().len() > PAYLOAD_BYTES_MAX {
            return Err(LedgerError::PayloadTooLarge {
                size_bytes: payload.get().len(),
                limit_bytes: PAYLOAD_BYTES_MAX,
            });
        }
        if schema_version == 0 {
            return Err(LedgerError::InvalidEventType {
                reason: "schema version starts at 1",
            });
        }
        Ok(Self {
            id,
            event_type: event_type.to_owned(),
            schema_version,
            payload,
            metadata: Metadata::default(),
        })
    }

    /// Attaches metadata.
    #[must_use]
    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }

    /// The event's id.
    pub fn id(&self) -> EventId {
        self.id
    }

    /// The event's type.
    pub fn event_type(&self) -> &str {
        &self.event_type
    }

    /// The event's metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Serialised metadata, checked against [`METADATA_BYTES_MAX`].
    pub(crate) fn metadata_json(&self) -> Result<String, LedgerError> {
        let json =
            serde_json::to_string(&self.metadata).map_err(|error| LedgerError::InvalidJson {
                field: "metadata",
                source: std::sync::Arc::new(error),
            })?;
        if json.len() > METADATA_BYTES_MAX {
            return Err(LedgerError::PayloadTooLarge {
                size_bytes: json.len(),
                limit_bytes: METADATA_BYTES_MAX,
            });
        }
        Ok(json)
    }
}

fn validate_event_type(event_type: &str) -> Result<(), LedgerError> {
    if event_type.is_empty() {
        return Err(LedgerError::InvalidEventType { reason: "empty" });
    }
    if event_type.len() > EVENT_TYPE_BYTES_MAX {
        return Err(LedgerError::InvalidEventType {
            reason: "longer than 100 bytes",
        });
    }
    if !event_type
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
    {
        return Err(LedgerError::InvalidEventType {
            reason: "only ASCII letters, digits, '_', '.' and '-' are allowed",
        });
    }
    Ok(())
}

/// An event as stored: the envelope plus its payload, exactly as appended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedEvent {
    /// The event's UUIDv7.
    pub id: EventId,
    /// The stream it belongs to.
    pub stream_id: StreamId,
    /// Its version in the stream, from 1.
    pub stream_version: u64,
    /// Its global position.
    pub position: Position,
    /// The event type.
    pub event_type: String,
    /// The payload's schema version as written.
    pub schema_version: u32,
    /// The payload as written (compact JSON text).
    pub payload: String,
    /// Who, why, where.
    pub metadata: Metadata,
    /// When it was recorded (UTC, microsecond precision).
    pub recorded_at: OffsetDateTime,
}

/// What an append did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Appended {
    /// The stream's version after the append.
    pub stream_version: u64,
    /// The global positions of the appended events, in order.
    pub positions: Vec<Position>,
    /// True when these events had already been committed and nothing was written.
    pub replayed: bool,
}

impl Appended {
    /// The position of the last event of the append.
    pub fn last_position(&self) -> Position {
        self.positions.last().copied().unwrap_or(Position::START)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_made_at_the_same_instant_still_increase() {
        let now = OffsetDateTime::now_utc();
        let ids: Vec<EventId> = (0..1_000).map(|_| EventId::new_at(now)).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        assert!(ids.iter().all(|id| id.0.get_version_num() == 7));
    }

    #[test]
    fn a_stream_category_is_the_part_before_the_first_dash() {
        assert_eq!(
            StreamId::parse("subscription-42-x")
                .map(|s| s.category().to_owned())
                .ok()
                .as_deref(),
            Some("subscription")
        );
        assert_eq!(
            StreamId::parse("ledger")
                .map(|s| s.category().to_owned())
                .ok()
                .as_deref(),
            Some("ledger")
        );
    }
}
