//! Loads aggregates from the ledger, decides, appends under the expected version,
//! and keeps recently used states in memory (a stale state only costs a conflict
//! and a reload, never a wrong write).

use std::any::Any;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use recur_ledger::{
    EventId, ExpectedVersion, IdempotencyKey, Ledger, LedgerError, Metadata, NewEvent, Position,
    StreamId,
};

use crate::aggregate::{Aggregate, DomainEvent};
use crate::context;
use crate::error::{BillingError, Corruption, DomainError};
use crate::tagged::DecodeError;

/// Streams whose state is kept in memory; beyond it a quarter is dropped.
pub const CACHED_STREAMS_MAX: usize = 50_000;
/// Attempts of one command when other writers keep winning.
pub const COMMAND_ATTEMPTS_MAX: u32 = 8;
/// Events read per page when loading a stream.
const LOAD_PAGE_EVENTS: usize = 1_000;
/// Locks that take turns of commands on one stream within this process (a stream
/// maps to one of them by hash), so concurrent commands here queue instead of
/// losing the version race to each other; other processes are still kept apart
/// by the expected version.
const STREAM_TURNS: usize = 1_024;

struct Cached {
    version: u64,
    state: Box<dyn Any + Send + Sync>,
}

/// The result of a command.
#[derive(Debug)]
pub struct Executed<A: Aggregate> {
    /// The state after the command.
    pub state: A,
    /// What was appended (empty when there was nothing to do).
    pub events: Vec<A::Event>,
    /// The stream's version after it.
    #[expect(dead_code, reason = "the command API answers with it")]
    pub version: u64,
    /// The position of the last appended event, if any.
    #[expect(dead_code, reason = "the command API answers with it")]
    pub position: Option<Position>,
}

/// Aggregate storage over the ledger.
pub(crate) struct Repository {
    ledger: Ledger,
    cache: Mutex<HashMap<StreamId, Cached>>,
    turns: Vec<tokio::sync::Mutex<()>>,
    /// Events this repository appended (replayed appends wrote nothing and are
    /// not counted): the ledger's append rate as seen from this process.
    appended: AtomicU64,
}

impl Repository {
    pub(crate) fn new(ledger: Ledger) -> Self {
        Self {
            ledger,
            cache: Mutex::new(HashMap::new()),
            turns: (0..STREAM_TURNS)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            appended: AtomicU64::new(0),
        }
    }

    /// How many events this repository has appended since it was made.
    pub(crate) fn events_appended(&self) -> u64 {
        self.appended.load(Ordering::Relaxed)
    }

    pub(crate) fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// The aggregate's state and version (0 when the stream is empty), from the
    /// cache when it holds the stream: what a command decides on, since its
    /// expected version refuses a state another process has moved past.
    pub(crate) async fn load<A: Aggregate>(
        &self,
        stream: &StreamId,
    ) -> Result<(A, u64), BillingError> {
        if let Some(hit) = self.cached::<A>(stream) {
            return Ok(hit);
        }
        self.fold_from(stream, A::default(), 0).await
    }

    /// [`Repository::load`], with whatever the ledger holds beyond the cached
    /// version folded in: what a read answers, since another process (a second
    /// server, a scheduler worker) may have written since.
    pub(crate) async fn load_current<A: Aggregate>(
        &self,
        stream: &StreamId,
    ) -> Result<(A, u64), BillingError> {
        let (state, version) = self
            .cached::<A>(stream)
            .unwrap_or_else(|| (A::default(), 0));
        self.fold_from(stream, state, version).await
    }

    /// Folds the stream's events after `version` onto `state` and caches the result.
    async fn fold_from<A: Aggregate>(
        &self,
        stream: &StreamId,
        mut state: A,
        mut version: u64,
    ) -> Result<(A, u64), BillingError> {
        loop {
            let page = self
                .ledger
                .read_stream(stream, version + 1, LOAD_PAGE_EVENTS)
                .await?;
            let done = page.len() < LOAD_PAGE_EVENTS;
            for recorded in page {
                let event: A::Event =
                    decode(&recorded.payload).map_err(|error| BillingError::Corrupt {
                        stream: stream.to_string(),
                        position: recorded.position.0,
                        cause: error.into(),
                    })?;
                if recorded.stream_version != version + 1 {
                    return Err(BillingError::Corrupt {
                        stream: stream.to_string(),
                        position: recorded.position.0,
                        cause: Corruption::OutOfOrder {
                            previous: version,
                            found: recorded.stream_version,
                        },
                    });
                }
                state.evolve(&event);
                version = recorded.stream_version;
            }
            if done {
                break;
            }
        }
        self.store(stream, version, &state);
        Ok((state, version))
    }

    /// [`Repository::execute`] on a stream the caller has just named (a fresh
    /// UUIDv7): decided on the empty state and appended as the stream's start
    /// without reading it first; if the stream exists after all (a retried
    /// step, a rerun request), the ordinary path reads it and decides again.
    pub(crate) async fn execute_new<A, F>(
        &self,
        stream: &StreamId,
        metadata: &Metadata,
        mut command: F,
    ) -> Result<Executed<A>, BillingError>
    where
        A: Aggregate,
        F: FnMut(&A) -> Result<A::Command, DomainError>,
    {
        let mut preset = None;
        if self.cached::<A>(stream).is_none() && !context::is_rerun() {
            let _turn = self.turn(stream).lock().await;
            context::check_expected(stream, 0)?;
            let mut state = A::default();
            let asked = command(&state)?;
            let key = context::append_key(stream, &asked);
            let events = state.decide(asked)?;
            if events.is_empty() {
                return Ok(Executed {
                    state,
                    events,
                    version: 0,
                    position: None,
                });
            }
            let new_events = self.new_events(metadata, key.as_ref(), &events)?;
            match self
                .ledger
                .append(stream, ExpectedVersion::NoStream, new_events)
                .await
            {
                Ok(appended) if appended.replayed => {
                    return self.committed(stream, &appended).await;
                }
                Ok(appended) => {
                    self.appended
                        .fetch_add(appended.positions.len() as u64, Ordering::Relaxed);
                    context::wrote(stream, appended.last_position());
                    for event in &events {
                        state.evolve(event);
                    }
                    self.store(stream, appended.stream_version, &state);
                    return Ok(Executed {
                        state,
                        events,
                        version: appended.stream_version,
                        position: Some(appended.last_position()),
                    });
                }
                // The stream exists after all (a retried step): decide again
                // on it (below, once this turn is let go), under the same key.
                Err(LedgerError::VersionConflict { .. }) => preset = Some(key),
                Err(error) => return Err(error.into()),
            }
        }
        self.run(stream, metadata, preset, command).await
    }

    /// Appends `events` at the end of `stream` whatever its version: for logs
    /// that no decision is made on (who read personal data).
    pub(crate) async fn append_any<E: DomainEvent>(
        &self,
        stream: &StreamId,
        metadata: &Metadata,
        events: &[E],
    ) -> Result<Position, BillingError> {
        let new_events = self.new_events(metadata, None, events)?;
        let appended = self
            .ledger
            .append(stream, ExpectedVersion::Any, new_events)
            .await?;
        self.appended
            .fetch_add(appended.positions.len() as u64, Ordering::Relaxed);
        Ok(appended.last_position())
    }

    /// Appends `events` as the start of `stream`, which must not exist yet:
    /// the position of the last one, or None when the stream exists (another
    /// writer, a redelivery, was first).
    pub(crate) async fn append_once<E: DomainEvent>(
        &self,
        stream: &StreamId,
        metadata: &Metadata,
        events: &[E],
    ) -> Result<Option<Position>, BillingError> {
        let new_events = self.new_events(metadata, None, events)?;
        match self
            .ledger
            .append(stream, ExpectedVersion::NoStream, new_events)
            .await
        {
            Ok(appended) => {
                self.appended
                    .fetch_add(appended.positions.len() as u64, Ordering::Relaxed);
                Ok(Some(appended.last_position()))
            }
            Err(LedgerError::VersionConflict { .. }) => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    /// The ledger's form of `events`, stamped now, with the request's actor, its
    /// id as the correlation id, and the append's key (a replayable request's).
    fn new_events<E: DomainEvent>(
        &self,
        metadata: &Metadata,
        key: Option<&IdempotencyKey>,
        events: &[E],
    ) -> Result<Vec<NewEvent>, BillingError> {
        let now = self.ledger.clock().now();
        let mut metadata = metadata.clone();
        if let Some(actor) = context::actor() {
            metadata.actor = Some(actor);
        }
        if let Some(request_id) = context::request_id() {
            metadata.correlation_id = Some(request_id);
        }
        if key.is_some() {
            metadata.idempotency_key = key.cloned();
        }
        let mut new_events = Vec::with_capacity(events.len());
        for event in events {
            new_events.push(
                NewEvent::new(
                    EventId::new_at(now),
                    event.event_type(),
                    event.schema_version(),
                    event,
                )?
                .with_metadata(metadata.clone()),
            );
        }
        Ok(new_events)
    }

    /// Builds a command from the current state, decides and appends; on a version
    /// conflict reloads and tries again, up to [`COMMAND_ATTEMPTS_MAX`] times.
    pub(crate) async fn execute<A, F>(
        &self,
        stream: &StreamId,
        metadata: &Metadata,
        command: F,
    ) -> Result<Executed<A>, BillingError>
    where
        A: Aggregate,
        F: FnMut(&A) -> Result<A::Command, DomainError>,
    {
        self.run(stream, metadata, None, command).await
    }

    /// [`Repository::execute`]; `preset` is the append key already taken for
    /// this command (the fast path of [`Repository::execute_new`] fell back).
    /// Within a replayable request the append's key is named by the command's
    /// kind (`context::append_key`); a rerun request first looks for what its
    /// earlier run appended under that key and, when it finds it, answers with
    /// that instead of deciding again (the state has moved on: deciding again
    /// would refuse, or do it twice).
    async fn run<A, F>(
        &self,
        stream: &StreamId,
        metadata: &Metadata,
        preset: Option<Option<IdempotencyKey>>,
        mut command: F,
    ) -> Result<Executed<A>, BillingError>
    where
        A: Aggregate,
        F: FnMut(&A) -> Result<A::Command, DomainError>,
    {
        let _turn = self.turn(stream).lock().await;
        let mut key = preset;
        for _ in 0..COMMAND_ATTEMPTS_MAX {
            let (mut state, version) = self.load::<A>(stream).await?;
            let asked = command(&state)?;
            let key = match &key {
                Some(key) => key.clone(),
                None => {
                    let taken = context::append_key(stream, &asked);
                    if let Some(taken) = &taken
                        && context::is_rerun()
                        && let Some((found, first, last)) = self.ledger.append_of(taken).await?
                        && found == *stream
                    {
                        return self.committed_range(stream, first, last).await;
                    }
                    key = Some(taken.clone());
                    taken
                }
            };
            context::check_expected(stream, version)?;
            let events = state.decide(asked)?;
            if events.is_empty() {
                return Ok(Executed {
                    state,
                    events,
                    version,
                    position: None,
                });
            }
            let new_events = self.new_events(metadata, key.as_ref(), &events)?;
            let expected = if version == 0 {
                ExpectedVersion::NoStream
            } else {
                ExpectedVersion::Exact(version)
            };
            match self.ledger.append(stream, expected, new_events).await {
                Ok(appended) if appended.replayed => {
                    return self.committed(stream, &appended).await;
                }
                Ok(appended) => {
                    self.appended
                        .fetch_add(appended.positions.len() as u64, Ordering::Relaxed);
                    context::wrote(stream, appended.last_position());
                    for event in &events {
                        state.evolve(event);
                    }
                    self.store(stream, appended.stream_version, &state);
                    return Ok(Executed {
                        state,
                        events,
                        version: appended.stream_version,
                        position: Some(appended.last_position()),
                    });
                }
                Err(LedgerError::VersionConflict { .. }) => self.forget(stream),
                Err(error) => {
                    self.forget(stream);
                    return Err(error.into());
                }
            }
        }
        Err(BillingError::Contended(stream.to_string()))
    }

    /// The outcome of an append the ledger had already committed (another run of
    /// the same request got there first): the stored events, and the state now.
    async fn committed<A: Aggregate>(
        &self,
        stream: &StreamId,
        appended: &recur_ledger::Appended,
    ) -> Result<Executed<A>, BillingError> {
        let count = appended.positions.len() as u64;
        let first = appended
            .stream_version
            .saturating_sub(count.saturating_sub(1));
        self.committed_range(stream, first, appended.stream_version)
            .await
    }

    /// The events at versions `first..=last` of `stream` as a command's outcome,
    /// with the stream's current state.
    async fn committed_range<A: Aggregate>(
        &self,
        stream: &StreamId,
        first: u64,
        last: u64,
    ) -> Result<Executed<A>, BillingError> {
        self.forget(stream);
        let count = usize::try_from(last.saturating_sub(first) + 1).unwrap_or(usize::MAX);
        let recorded = self.ledger.read_stream(stream, first, count).await?;
        let mut events = Vec::with_capacity(recorded.len());
        for event in &recorded {
            events.push(decode::<A::Event>(&event.payload).map_err(|error| {
                BillingError::Corrupt {
                    stream: stream.to_string(),
                    position: event.position.0,
                    cause: error.into(),
                }
            })?);
        }
        let position = recorded.last().map(|event| event.position);
        if let Some(position) = position {
            context::wrote(stream, position);
        }
        let (state, version) = self.load_current::<A>(stream).await?;
        Ok(Executed {
            state,
            events,
            version,
            position,
        })
    }

    /// The lock that orders this process's commands on `stream`.
    fn turn(&self, stream: &StreamId) -> &tokio::sync::Mutex<()> {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(stream.as_str());
        let index = usize::try_from(hash % STREAM_TURNS as u64).unwrap_or(0);
        &self.turns[index]
    }

    fn cached<A: Aggregate>(&self, stream: &StreamId) -> Option<(A, u64)> {
        let cache = self.cache.lock().ok()?;
        let hit = cache.get(stream)?;
        let state = hit.state.downcast_ref::<A>()?;
        Some((state.clone(), hit.version))
    }

    fn store<A: Aggregate>(&self, stream: &StreamId, version: u64, state: &A) {
        let Ok(mut cache) = self.cache.lock() else {
            return;
        };
        if cache.len() >= CACHED_STREAMS_MAX {
            let drop: Vec<StreamId> = cache.keys().take(CACHED_STREAMS_MAX / 4).cloned().collect();
            for key in drop {
                cache.remove(&key);
            }
        }
        cache.insert(
            stream.clone(),
            Cached {
                version,
                state: Box::new(state.clone()),
            },
        );
    }

    pub(crate) fn forget(&self, stream: &StreamId) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.remove(stream);
        }
    }
}

/// Decodes a stored payload into a domain event.
pub(crate) fn decode<E: DomainEvent>(payload: &str) -> Result<E, DecodeError> {
    E::decode_payload(payload)
}
