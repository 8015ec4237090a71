//! The relay: every released ledger event, in ledger order, to a JetStream stream.
//!
//! One message per event on `<prefix>.<category>` (the stream category, e.g.
//! `recur.events.invoice`), message id = event id (JetStream drops a duplicate
//! within its window), headers with the position and type. Only what the ledger
//! has *released* is published (its gap-safe order), so the stream's order is the
//! ledger's. After a restart the relay resumes after the position of the last
//! message the stream holds; after a failed publish it resumes after the last
//! position the server acknowledged in order, so nothing in between is skipped.

use std::collections::VecDeque;
use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::context::{DeleteStreamErrorKind, PublishAckFuture};
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use recur_ledger::{Ledger, LedgerError, Position, RecordedEvent};

use crate::message::{EventMessage, POSITION_HEADER, TYPE_HEADER};

/// Publishes awaiting their acknowledgement at once.
pub const IN_FLIGHT_MAX: usize = 256;
/// How long the relay waits for new events before settling outstanding acks.
const IDLE_SETTLE_MS: u64 = 5;
/// Pause after a failure before resuming.
const RETRY_PAUSE_MS: u64 = 500;

/// Where and how to publish.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// NATS server URL.
    pub nats_url: String,
    /// JetStream stream name.
    pub stream: String,
    /// Subject prefix; messages go to `<prefix>.<category>`.
    pub subject_prefix: String,
    /// How long JetStream remembers message ids to drop duplicates.
    pub duplicate_window: Duration,
}

impl RelayConfig {
    /// The stream [`RelayConfig::new`] names.
    pub const STREAM_DEFAULT: &str = "RECUR_EVENTS";

    /// The defaults for `url`: stream `RECUR_EVENTS`, subjects `recur.events.>`,
    /// a 10-minute duplicate window.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            nats_url: url.into(),
            stream: Self::STREAM_DEFAULT.into(),
            subject_prefix: "recur.events".into(),
            duplicate_window: Duration::from_secs(600),
        }
    }

    /// The same on the stream `name` (subjects `<lowercase name>.events.>`), so
    /// several ledgers can share a server. A blank name, or the default's, keeps
    /// the default stream and its `recur.events.>` subjects.
    #[must_use]
    pub fn with_stream(mut self, name: &str) -> Self {
        let name = name.trim();
        if !name.is_empty() && name != Self::STREAM_DEFAULT {
            self.subject_prefix = format!("{}.events", name.to_lowercase());
            self.stream = name.to_owned();
        }
        self
    }
}

/// A NATS client error kept whole as a cause: the client has an error type per
/// call, and the relay reports them alike.
pub type NatsError = Box<dyn std::error::Error + Send + Sync>;

/// Why the relay stopped or a call failed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// NATS is not reachable.
    #[error("cannot reach NATS at {url} (start it with `nats-server -js`, or set NATS_URL)")]
    Connect {
        /// The URL.
        url: String,
        /// The client's error.
        #[source]
        source: async_nats::ConnectError,
    },
    /// The stream could not be created or read.
    #[error("JetStream stream {stream}")]
    Stream {
        /// The stream.
        stream: String,
        /// What failed: the client's error (several types, hence boxed).
        #[source]
        source: NatsError,
    },
    /// A publish was not acknowledged.
    #[error("publish of position {position} failed")]
    Publish {
        /// The event's position.
        position: u64,
        /// What failed: the client's error, or the message's encoding.
        #[source]
        source: NatsError,
    },
    /// The ledger failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// Publishes the ledger to JetStream.
pub struct Relay {
    ledger: Ledger,
    jetstream: jetstream::Context,
    config: RelayConfig,
}

impl Relay {
    /// Connects and makes sure the stream exists.
    ///
    /// # Errors
    /// [`RelayError::Connect`], [`RelayError::Stream`].
    pub async fn connect(ledger: Ledger, config: RelayConfig) -> Result<Self, RelayError> {
        let client = async_nats::connect(&config.nats_url)
            .await
            .map_err(|source| RelayError::Connect {
                url: config.nats_url.clone(),
                source,
            })?;
        let jetstream = jetstream::new(client);
        ensure_stream(&jetstream, &config).await?;
        Ok(Self {
            ledger,
            jetstream,
            config,
        })
    }

    fn stream_error(&self, source: impl Into<NatsError>) -> RelayError {
        RelayError::Stream {
            stream: self.config.stream.clone(),
            source: source.into(),
        }
    }

    /// The position of the last event the stream holds (the start if none).
    ///
    /// # Errors
    /// [`RelayError::Stream`].
    pub async fn published_position(&self) -> Result<Position, RelayError> {
        let mut stream = self
            .jetstream
            .get_stream(&self.config.stream)
            .await
            .map_err(|e| self.stream_error(e))?;
        let last = stream
            .info()
            .await
            .map_err(|e| self.stream_error(e))?
            .state
            .last_sequence;
        if last == 0 {
            return Ok(Position::START);
        }
        let message = stream
            .get_raw_message(last)
            .await
            .map_err(|e| self.stream_error(e))?;
        let position = message
            .headers
            .get(POSITION_HEADER)
            .and_then(|v| v.as_str().parse::<u64>().ok())
            .ok_or_else(|| {
                self.stream_error(format!("message {last} has no {POSITION_HEADER} header"))
            })?;
        Ok(Position(position))
    }

    async fn publish(
        &self,
        event: &RecordedEvent,
        previous: Position,
    ) -> Result<PublishAckFuture, RelayError> {
        let position = event.position.0;
        let failed = |source: NatsError| RelayError::Publish { position, source };
        let body = serde_json::to_vec(
            &EventMessage::from_recorded(event, previous).map_err(|e| failed(e.into()))?,
        )
        .map_err(|e| failed(e.into()))?;
        let subject = format!(
            "{}.{}",
            self.config.subject_prefix,
            event.stream_id.category()
        );
        let message = jetstream::message::PublishMessage::build()
            .payload(Bytes::from(body))
            .message_id(event.id.to_string())
            .header(POSITION_HEADER, position.to_string().as_str())
            .header(TYPE_HEADER, event.event_type.as_str());
        self.jetstream
            .send_publish(subject, message)
            .await
            .map_err(|e| failed(e.into()))
    }

    /// Publishes everything the ledger has released after what the stream holds,
    /// and returns how many events it published. Used by tests and one-shot runs.
    ///
    /// # Errors
    /// Ledger, stream and publish errors (resume by calling again).
    pub async fn publish_released(&self) -> Result<u64, RelayError> {
        let after = self.published_position().await?;
        let mut replay = self.ledger.replay(after).await?;
        let mut in_flight: VecDeque<(u64, PublishAckFuture)> = VecDeque::new();
        let mut count = 0;
        let mut previous = after;
        while let Some(event) = replay.next().await? {
            if in_flight.len() >= IN_FLIGHT_MAX {
                settle_one(&mut in_flight).await?;
            }
            in_flight.push_back((event.position.0, self.publish(&event, previous).await?));
            previous = event.position;
            count += 1;
        }
        while !in_flight.is_empty() {
            settle_one(&mut in_flight).await?;
        }
        Ok(count)
    }

    /// Follows the ledger and publishes each released event until `shutdown`
    /// completes. Failures are logged and resumed from the last event the server
    /// acknowledged in order.
    ///
    /// # Errors
    /// Only when the stream cannot be read at start.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> Result<(), RelayError> {
        let mut acknowledged = self.published_position().await?;
        tokio::pin!(shutdown);
        loop {
            let step = self.follow(acknowledged, &mut acknowledged);
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                result = step => {
                    if let Err(error) = result {
                        tracing::warn!(error = %recur_ledger::Chain(&error), after = acknowledged.0, "relay failed; resuming");
                        tokio::time::sleep(Duration::from_millis(RETRY_PAUSE_MS)).await;
                    }
                }
            }
        }
    }

    /// Publishes from `after` on; `acknowledged` advances as acks arrive in order.
    async fn follow(&self, after: Position, acknowledged: &mut Position) -> Result<(), RelayError> {
        let mut subscription = self.ledger.subscribe(after);
        let mut in_flight: VecDeque<(u64, PublishAckFuture)> = VecDeque::new();
        // The subscription hands out every released event after `after`, in order.
        let mut previous = after;
        loop {
            let next =
                tokio::time::timeout(Duration::from_millis(IDLE_SETTLE_MS), subscription.next())
                    .await;
            match next {
                Ok(event) => {
                    let event = event?;
                    if in_flight.len() >= IN_FLIGHT_MAX {
                        *acknowledged = Position(settle_one(&mut in_flight).await?);
                    }
                    in_flight.push_back((event.position.0, self.publish(&event, previous).await?));
                    previous = event.position;
                }
                Err(_idle) => {
                    while !in_flight.is_empty() {
                        *acknowledged = Position(settle_one(&mut in_flight).await?);
                    }
                }
            }
        }
    }
}

/// Creates the stream `config` names unless it exists: the relay and every
/// worker call it, so whichever starts first makes it.
///
/// # Errors
/// [`RelayError::Stream`].
pub async fn ensure_stream(
    jetstream: &jetstream::Context,
    config: &RelayConfig,
) -> Result<stream::Stream, RelayError> {
    jetstream
        .get_or_create_stream(stream::Config {
            name: config.stream.clone(),
            subjects: vec![format!("{}.>", config.subject_prefix)],
            duplicate_window: config.duplicate_window,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| RelayError::Stream {
            stream: config.stream.clone(),
            source: e.into(),
        })
}

/// Deletes the stream `config` names, with every message in it; false when there
/// was none. For benchmarks and tests that make a stream of their own.
///
/// # Errors
/// [`RelayError::Connect`] or [`RelayError::Stream`].
pub async fn delete_stream(config: &RelayConfig) -> Result<bool, RelayError> {
    let client = async_nats::connect(&config.nats_url)
        .await
        .map_err(|source| RelayError::Connect {
            url: config.nats_url.clone(),
            source,
        })?;
    let jetstream = async_nats::jetstream::new(client);
    match jetstream.delete_stream(&config.stream).await {
        Ok(status) => Ok(status.success),
        Err(error) if stream_not_found(&error.kind()) => Ok(false),
        Err(error) => Err(RelayError::Stream {
            stream: config.stream.clone(),
            source: error.into(),
        }),
    }
}

/// Whether JetStream answered "stream not found" (its error code 10059): told by
/// the code, never by the message text.
fn stream_not_found(kind: &DeleteStreamErrorKind) -> bool {
    matches!(
        kind,
        DeleteStreamErrorKind::JetStream(error)
            if error.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

/// Waits for the oldest publish's acknowledgement; returns its position.
async fn settle_one(in_flight: &mut VecDeque<(u64, PublishAckFuture)>) -> Result<u64, RelayError> {
    let Some((position, ack)) = in_flight.pop_front() else {
        return Ok(0);
    };
    ack.await.map_err(|e| RelayError::Publish {
        position,
        source: e.into(),
    })?;
    Ok(position)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_named_stream_gets_its_own_subjects_and_the_default_name_keeps_the_defaults() {
        let named = RelayConfig::new("nats://x").with_stream("RECUR_TEST_1");
        assert_eq!(
            (named.stream.as_str(), named.subject_prefix.as_str()),
            ("RECUR_TEST_1", "recur_test_1.events")
        );
        // `--nats-stream` defaults to the default name: it must not move the subjects.
        for name in [RelayConfig::STREAM_DEFAULT, "", "  "] {
            let config = RelayConfig::new("nats://x").with_stream(name);
            assert_eq!(
                (config.stream.as_str(), config.subject_prefix.as_str()),
                ("RECUR_EVENTS", "recur.events")
            );
        }
    }
}
