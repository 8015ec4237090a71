//! A ledger event as published on NATS: the envelope and the payload byte for byte.

use recur_ledger::{EventId, Metadata, Position, RecordedEvent, StreamId};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use time::OffsetDateTime;

/// Header naming the event's global position (the relay resumes from it).
pub const POSITION_HEADER: &str = "Recur-Position";
/// Header naming the event type (consumers can skip without parsing).
pub const TYPE_HEADER: &str = "Recur-Type";

/// The message body: everything a projector needs, nothing more.
#[derive(Debug, Serialize, Deserialize)]
pub struct EventMessage {
    /// The event's id (also the NATS message id).
    pub id: EventId,
    /// Its stream.
    pub stream_id: String,
    /// Its version in the stream.
    pub stream_version: u64,
    /// Its global position.
    pub position: u64,
    /// The position of the event the relay published just before it: the
    /// ledger's previous released event (0 before the first). A consumer that
    /// finds this is not its checkpoint has missed something and reads the ledger.
    #[serde(default)]
    pub previous_position: Option<u64>,
    /// Its type.
    pub event_type: String,
    /// Its payload's schema version.
    pub schema_version: u32,
    /// The payload, as stored.
    pub payload: Box<RawValue>,
    /// Who, why, where.
    pub metadata: Metadata,
    /// When it was recorded.
    #[serde(with = "time::serde::rfc3339")]
    pub recorded_at: OffsetDateTime,
}

impl EventMessage {
    /// The message for a recorded event published after the one at `previous`.
    ///
    /// # Errors
    /// A stored payload that is not JSON (impossible for a ledger event).
    pub fn from_recorded(
        event: &RecordedEvent,
        previous: Position,
    ) -> Result<Self, serde_json::Error> {
        Ok(Self {
            id: event.id,
            stream_id: event.stream_id.as_str().to_owned(),
            stream_version: event.stream_version,
            position: event.position.0,
            previous_position: Some(previous.0),
            event_type: event.event_type.clone(),
            schema_version: event.schema_version,
            payload: RawValue::from_string(event.payload.clone())?,
            metadata: event.metadata.clone(),
            recorded_at: event.recorded_at,
        })
    }

    /// Back to a recorded event.
    ///
    /// # Errors
    /// A stream id the ledger would not accept.
    pub fn into_recorded(self) -> Result<RecordedEvent, recur_ledger::LedgerError> {
        Ok(RecordedEvent {
            id: self.id,
            stream_id: StreamId::parse(self.stream_id)?,
            stream_version: self.stream_version,
            position: Position(self.position),
            event_type: self.event_type,
            schema_version: self.schema_version,
            payload: self.payload.get().to_owned(),
            metadata: self.metadata,
            recorded_at: self.recorded_at,
        })
    }
}
