//! Feeding a projector from JetStream: a durable pull consumer per projection.
//!
//! A batch is applied straight from the messages only when it is exactly the
//! continuation of the projection: its first event is the ledger's next event
//! after the checkpoint, and its stream sequences have no holes. Anything else — a
//! message lost or deleted, a relay that skipped ahead — is a gap, filled by a
//! catch-up read from the ledger. Messages at or below the checkpoint (a
//! redelivery after a crash, a duplicate) are skipped. Messages are acknowledged
//! only after the read model's transaction commits.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use recur_ledger::RecordedEvent;

use crate::message::EventMessage;
use crate::relay::{RelayConfig, RelayError};
use crate::runtime::{Projection, ProjectionError, Projector};

/// Messages fetched per batch.
pub const FETCH_MESSAGES_MAX: usize = 500;
/// How long one fetch waits for messages.
const FETCH_WAIT_MS: u64 = 100;

/// Why feeding from NATS failed.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// NATS or JetStream failed.
    #[error(transparent)]
    Relay(#[from] RelayError),
    /// The projection failed.
    #[error(transparent)]
    Projection(#[from] ProjectionError),
}

/// A projection's durable consumer.
pub struct NatsFeed {
    consumer: consumer::Consumer<consumer::pull::Config>,
    stream: String,
}

/// What one [`NatsFeed::pump`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pumped {
    /// Messages received.
    pub received: u64,
    /// Events applied from messages.
    pub applied: u64,
    /// Messages skipped (already applied).
    pub skipped: u64,
    /// Events applied by a catch-up read from the ledger (a gap).
    pub caught_up: u64,
}

impl NatsFeed {
    /// The durable consumer `durable` on the relay's stream (created if missing).
    ///
    /// # Errors
    /// [`RelayError::Connect`] or [`RelayError::Stream`].
    pub async fn connect(config: &RelayConfig, durable: &str) -> Result<Self, FeedError> {
        let stream_error = |message: String| RelayError::Stream {
            stream: config.stream.clone(),
            message,
        };
        let client =
            async_nats::connect(&config.nats_url)
                .await
                .map_err(|e| RelayError::Connect {
                    url: config.nats_url.clone(),
                    message: e.to_string(),
                })?;
        let stream = jetstream::new(client)
            .get_stream(&config.stream)
            .await
            .map_err(|e| stream_error(e.to_string()))?;
        let consumer = stream
            .get_or_create_consumer(
                durable,
                consumer::pull::Config {
                    durable_name: Some(durable.to_owned()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(30),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| stream_error(e.to_string()))?;
        Ok(Self {
            consumer,
            stream: config.stream.clone(),
        })
    }

    /// Fetches one batch and applies it to `projector`; returns what happened.
    ///
    /// # Errors
    /// NATS and projection errors; unacknowledged messages are redelivered.
    pub async fn pump<P: Projection>(
        &mut self,
        projector: &mut Projector<P>,
    ) -> Result<Pumped, FeedError> {
        let stream_error = |message: String| RelayError::Stream {
            stream: self.stream.clone(),
            message,
        };
        let mut batch = self
            .consumer
            .fetch()
            .max_messages(FETCH_MESSAGES_MAX)
            .expires(Duration::from_millis(FETCH_WAIT_MS))
            .messages()
            .await
            .map_err(|e| stream_error(e.to_string()))?;
        let mut messages = Vec::new();
        while let Some(message) =
            std::future::poll_fn(|cx| std::pin::Pin::new(&mut batch).poll_next(cx)).await
        {
            messages.push(message.map_err(|e| stream_error(e.to_string()))?);
        }
        let mut pumped = Pumped {
            received: messages.len() as u64,
            ..Pumped::default()
        };
        let mut events: Vec<RecordedEvent> = Vec::new();
        let mut sequences: Vec<u64> = Vec::new();
        for message in &messages {
            let body: EventMessage = serde_json::from_slice(&message.payload)
                .map_err(|e| stream_error(format!("undecodable message: {e}")))?;
            let event = body.into_recorded().map_err(ProjectionError::from)?;
            if event.position <= projector.position() {
                pumped.skipped += 1;
                continue;
            }
            sequences.push(message.info().map_or(0, |i| i.stream_sequence));
            events.push(event);
        }
        if !events.is_empty() {
            let contiguous = sequences.windows(2).all(|w| w[1] == w[0] + 1);
            let next = projector
                .ledger()
                .read_all(projector.position(), 1)
                .await
                .map_err(ProjectionError::from)?;
            let continues = next.first().is_some_and(|e| e.id == events[0].id);
            if contiguous && continues {
                projector.apply_batch(&events).await?;
                pumped.applied = events.len() as u64;
            } else {
                tracing::warn!(
                    after = projector.position().0,
                    "gap in the NATS feed; catching up from the ledger"
                );
                pumped.caught_up = projector.catch_up().await?;
            }
        }
        for message in &messages {
            message
                .ack()
                .await
                .map_err(|e| stream_error(e.to_string()))?;
        }
        Ok(pumped)
    }
}

/// Pause after a failed pump before the next.
const RETRY_PAUSE_MS: u64 = 500;

/// Pumps `feed` into `projector` until `stop` turns true: one task per
/// projection, so a slow or idle projection never holds the others back.
/// Failures are logged and retried; unacknowledged messages come again.
pub async fn follow<P: Projection>(
    mut feed: NatsFeed,
    mut projector: Projector<P>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let (name, _) = projector.describe();
    let stopped = async move {
        loop {
            let now = *stop.borrow_and_update();
            if now || stop.changed().await.is_err() {
                return;
            }
        }
    };
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            () = &mut stopped => return,
            result = feed.pump(&mut projector) => {
                if let Err(error) = result {
                    tracing::warn!(%error, projection = name, "projection step failed; retrying");
                    tokio::time::sleep(Duration::from_millis(RETRY_PAUSE_MS)).await;
                }
            }
        }
    }
}

use futures_core::Stream as _;
