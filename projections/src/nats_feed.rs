//! Feeding a projector from JetStream: a durable pull consumer per projection.
//!
//! A batch is applied straight from the messages only when it is exactly the
//! continuation of the projection: each message names the position of the event
//! the relay published before it, and those links must run unbroken from the
//! checkpoint. Anything else — a message lost in a server crash, deleted, or
//! stored after a later one because the relay republished it — is a gap, filled
//! by a catch-up read from the ledger. (Checking only that the batch starts at
//! the checkpoint is not enough: a nats-server killed mid-load can lose a few
//! messages while the ones the client buffered meanwhile land after them with
//! contiguous stream sequences.) Messages at or below the checkpoint (a
//! redelivery after a crash, a duplicate) are skipped. Messages are acknowledged
//! only after the read model's transaction commits.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};

use recur_ledger::Ledger;

use crate::message::EventMessage;
use crate::relay::{RelayConfig, RelayError};
use crate::runtime::{Delivered, Projection, ProjectionError, Projector};

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
    /// A message on the stream is not an event message.
    #[error("JetStream stream {stream}: undecodable message {sequence}")]
    Undecodable {
        /// The stream.
        stream: String,
        /// The message's stream sequence (0 when unknown).
        sequence: u64,
        /// The JSON parser's error.
        #[source]
        source: serde_json::Error,
    },
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
        let stream_error = |source: crate::relay::NatsError| RelayError::Stream {
            stream: config.stream.clone(),
            source,
        };
        let client = async_nats::connect(&config.nats_url)
            .await
            .map_err(|source| RelayError::Connect {
                url: config.nats_url.clone(),
                source,
            })?;
        let stream = crate::relay::ensure_stream(&jetstream::new(client), config).await?;
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
            .map_err(|e| stream_error(e.into()))?;
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
        let stream_error = |source: crate::relay::NatsError| RelayError::Stream {
            stream: self.stream.clone(),
            source,
        };
        let mut batch = self
            .consumer
            .fetch()
            .max_messages(FETCH_MESSAGES_MAX)
            .expires(Duration::from_millis(FETCH_WAIT_MS))
            .messages()
            .await
            .map_err(|e| stream_error(e.into()))?;
        let mut messages = Vec::new();
        while let Some(message) =
            std::future::poll_fn(|cx| std::pin::Pin::new(&mut batch).poll_next(cx)).await
        {
            messages.push(message.map_err(stream_error)?);
        }
        let mut pumped = Pumped {
            received: messages.len() as u64,
            ..Pumped::default()
        };
        let mut events: Vec<Delivered> = Vec::new();
        // Each message names the event published before it: the batch applies
        // as is only when those links run unbroken from the checkpoint.
        let mut chained = true;
        let mut last = projector.position().0;
        for message in &messages {
            let body: EventMessage =
                serde_json::from_slice(&message.payload).map_err(|source| {
                    FeedError::Undecodable {
                        stream: self.stream.clone(),
                        sequence: message.info().map_or(0, |info| info.stream_sequence),
                        source,
                    }
                })?;
            let previous = body.previous_position;
            let event = body.into_recorded().map_err(ProjectionError::from)?;
            // Already applied, or a duplicate of a message earlier in this batch.
            if event.position <= projector.position() || (chained && event.position.0 <= last) {
                pumped.skipped += 1;
                continue;
            }
            if chained && previous == Some(last) {
                last = event.position.0;
            } else {
                chained = false;
            }
            events.push(Delivered::new(event));
        }
        if !events.is_empty() {
            if chained {
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
            message.ack().await.map_err(stream_error)?;
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
                    tracing::warn!(error = %recur_ledger::Chain(&error), projection = name, "projection step failed; retrying");
                    tokio::time::sleep(Duration::from_millis(RETRY_PAUSE_MS)).await;
                }
            }
        }
    }
}

use futures_core::Stream as _;

/// Starts one task per projection, each fed by its durable consumer
/// `<prefix>-<name>` until `stop` turns true.
///
/// # Errors
/// NATS or the read models unreachable at start.
pub async fn follow_all(
    ledger: &Ledger,
    config: &RelayConfig,
    prefix: &str,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, FeedError> {
    let feed = |name: &str| {
        let durable = format!("{prefix}-{name}");
        async move { NatsFeed::connect(config, &durable).await }
    };
    Ok(vec![
        tokio::spawn(follow(
            feed("mrr").await?,
            Projector::open(ledger.clone(), crate::mrr::Mrr::new()).await?,
            stop.clone(),
        )),
        tokio::spawn(follow(
            feed("accounts").await?,
            Projector::open(ledger.clone(), crate::accounts::Accounts::new()).await?,
            stop.clone(),
        )),
        tokio::spawn(follow(
            feed("customers").await?,
            Projector::open(ledger.clone(), crate::customers::Customers::new()).await?,
            stop.clone(),
        )),
        tokio::spawn(follow(
            feed("revenue").await?,
            Projector::open(ledger.clone(), crate::revenue::Revenue::new()).await?,
            stop.clone(),
        )),
        tokio::spawn(follow(
            feed("dunning").await?,
            Projector::open(ledger.clone(), crate::dunning::Dunning::new()).await?,
            stop.clone(),
        )),
    ])
}
