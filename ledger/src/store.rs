//! The store's one API over two backends, and the committer that coalesces
//! concurrent appends into shared transactions.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::clock::Clock;
use crate::envelope::{
    Appended, ExpectedVersion, IdempotencyKey, Metadata, NewEvent, Position, RecordedEvent,
    StreamId,
};
use crate::error::LedgerError;
use crate::hash::{self, Hash};
use crate::limits::{APPENDS_PER_COMMIT_MAX, EVENTS_PER_APPEND_MAX, READ_PAGE_EVENTS_MAX};
use crate::postgres::PgStore;
use crate::sqlite::SqliteStore;
use crate::subscription::{Replay, Subscription};
use crate::verify::{self, SealReport, VerifyReport};

/// Where the ledger lives and how hard it may work.
#[derive(Clone, Debug)]
pub struct LedgerConfig {
    /// `postgres://…` for Postgres; `sqlite:PATH` or a plain file path for the embedded store.
    pub location: String,
    /// Database connections for readers and committers.
    pub pool_size: u32,
    /// Most commits in flight at once (Postgres; SQLite always has one writer).
    pub committers: usize,
    /// How long to wait for a connection before the database counts as down.
    pub connect_timeout_ms: u64,
    /// How often a live subscription looks for commits made by other processes.
    pub poll_interval_ms: u64,
    /// How long a read waits for in-flight commits before returning what is released.
    pub release_wait_ms: u64,
    /// How often released events are sealed in the background; 0 turns it off.
    pub seal_interval_ms: u64,
    /// Make a missing SQLite file (default: false, so a mistyped path is
    /// [`LedgerError::NotFound`] rather than a fresh, empty ledger). `mode=rwc` in a
    /// `sqlite:` URL asks for the same. Postgres databases are never created.
    pub create_if_missing: bool,
}

impl LedgerConfig {
    /// Defaults for a location: 16 connections, 2 commits in flight, 10 ms polling.
    pub fn new(location: impl Into<String>) -> Self {
        Self {
            location: location.into(),
            pool_size: 16,
            committers: 2,
            connect_timeout_ms: 5_000,
            poll_interval_ms: 10,
            release_wait_ms: 5_000,
            seal_interval_ms: 60_000,
            create_if_missing: false,
        }
    }

    /// The same, making a missing SQLite file when `create` is true.
    #[must_use]
    pub fn create_if_missing(mut self, create: bool) -> Self {
        self.create_if_missing = create;
        self
    }
}

/// Which backend a store runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// PostgreSQL, shared by several processes.
    Postgres,
    /// One SQLite file in WAL mode, the embedded default.
    Sqlite,
}

/// An event made ready for the database: serialised, timestamped and hashed.
#[derive(Debug)]
pub(crate) struct PreparedEvent {
    pub id: uuid::Uuid,
    pub event_type: String,
    pub schema_version: u32,
    pub payload: Box<serde_json::value::RawValue>,
    pub metadata: String,
    pub recorded_at: OffsetDateTime,
    pub content_hash: Hash,
}

/// One caller's append, waiting for the committer.
#[derive(Debug)]
pub(crate) struct PendingAppend {
    pub stream: StreamId,
    pub expected: ExpectedVersion,
    pub key: Option<IdempotencyKey>,
    pub events: Vec<PreparedEvent>,
    pub reply: oneshot::Sender<Result<Appended, LedgerError>>,
}

/// What the database said about one append of a batch.
#[derive(Debug)]
pub(crate) enum AppendOutcome {
    Appended {
        stream_version: u64,
        positions: Vec<Position>,
    },
    Replayed {
        stream_version: u64,
        positions: Vec<Position>,
    },
    Conflict {
        actual: u64,
    },
    KeyReused,
    IdsReused,
}

impl AppendOutcome {
    pub(crate) fn into_result(self, append: &PendingAppend) -> Result<Appended, LedgerError> {
        match self {
            Self::Appended {
                stream_version,
                positions,
            } => Ok(Appended {
                stream_version,
                positions,
                replayed: false,
            }),
            Self::Replayed {
                stream_version,
                positions,
            } => Ok(Appended {
                stream_version,
                positions,
                replayed: true,
            }),
            Self::Conflict { actual } => Err(LedgerError::VersionConflict {
                stream: append.stream.clone(),
                expected: append.expected,
                actual,
            }),
            Self::KeyReused => Err(LedgerError::IdempotencyKeyReused),
            Self::IdsReused => Err(LedgerError::EventIdsReused),
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) enum Backend {
    Postgres(PgStore),
    Sqlite(SqliteStore),
}

impl Backend {
    /// Commits a batch in one transaction; one outcome per append, in order.
    async fn commit(&self, batch: &[PendingAppend]) -> Result<Vec<AppendOutcome>, LedgerError> {
        match self {
            Self::Postgres(store) => store.commit(batch).await,
            Self::Sqlite(store) => store.commit(batch).await,
        }
    }
}

struct Inner {
    backend: Backend,
    clock: Arc<dyn Clock>,
    queue: mpsc::Sender<PendingAppend>,
    committed: Arc<Notify>,
    /// Notified after this process makes seals (background or asked for).
    sealed: Arc<Notify>,
    /// Appends between entering [`Ledger::append`] and reaching the queue.
    preparing: Arc<AtomicUsize>,
    config: LedgerConfig,
}

/// Counts an append as being prepared until it is queued or abandoned.
struct Preparing<'a>(&'a AtomicUsize);

impl<'a> Preparing<'a> {
    fn enter(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::AcqRel);
        Self(counter)
    }
}

impl Drop for Preparing<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The event store. Cheap to clone; all clones share one pool and one committer.
#[derive(Clone)]
pub struct Ledger {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("backend", &self.kind())
            .finish()
    }
}

impl Ledger {
    /// Opens (and migrates) the store at `config.location`.
    ///
    /// # Errors
    /// [`LedgerError::InvalidLocation`], [`LedgerError::NotFound`] when a SQLite file
    /// does not exist and creating it was not asked for, [`LedgerError::Unavailable`]
    /// when the database cannot be reached, [`LedgerError::Migration`] when the schema
    /// cannot be brought up to date.
    pub async fn open(config: LedgerConfig, clock: Arc<dyn Clock>) -> Result<Self, LedgerError> {
        let committed = Arc::new(Notify::new());
        let location = config.location.trim();
        let (backend, committers) =
            if location.starts_with("postgres://") || location.starts_with("postgresql://") {
                (
                    Backend::Postgres(PgStore::open(&config).await?),
                    config.committers.max(1),
                )
            } else {
                let path = location
                    .strip_prefix("sqlite://")
                    .or_else(|| location.strip_prefix("sqlite:"))
                    .unwrap_or(location);
                if path.is_empty() {
                    return Err(LedgerError::InvalidLocation("empty SQLite path".into()));
                }
                (Backend::Sqlite(SqliteStore::open(path, &config).await?), 1)
            };
        let (queue, receiver) = mpsc::channel(APPENDS_PER_COMMIT_MAX * 4);
        let preparing = Arc::new(AtomicUsize::new(0));
        tokio::spawn(run_committer(
            backend.clone(),
            receiver,
            Arc::clone(&committed),
            Arc::clone(&preparing),
            committers,
        ));
        let seal_interval_ms = config.seal_interval_ms;
        let ledger = Self {
            inner: Arc::new(Inner {
                backend,
                clock,
                queue,
                committed,
                sealed: Arc::new(Notify::new()),
                preparing,
                config,
            }),
        };
        if seal_interval_ms > 0 {
            let period = Duration::from_millis(seal_interval_ms);
            tokio::spawn(seal_periodically(Arc::downgrade(&ledger.inner), period));
        }
        Ok(ledger)
    }

    /// Which backend this store runs on.
    pub fn kind(&self) -> BackendKind {
        match self.inner.backend {
            Backend::Postgres(_) => BackendKind::Postgres,
            Backend::Sqlite(_) => BackendKind::Sqlite,
        }
    }

    /// The injected clock that stamps `recorded_at`.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    /// Appends `events` to `stream` atomically if the stream is at `expected`.
    ///
    /// Retrying an append whose event ids, or whose idempotency key, were already
    /// committed writes nothing and returns the original positions (`replayed`).
    ///
    /// # Errors
    /// [`LedgerError::VersionConflict`] with the actual version; input errors
    /// (batch size, mixed keys); [`LedgerError::Unavailable`] when the database is down.
    pub async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Appended, LedgerError> {
        let preparing = Preparing::enter(&self.inner.preparing);
        if events.is_empty() || events.len() > EVENTS_PER_APPEND_MAX {
            return Err(LedgerError::InvalidBatchSize {
                count: events.len(),
                limit: EVENTS_PER_APPEND_MAX,
            });
        }
        let key = events[0].metadata.idempotency_key.clone();
        if events.iter().any(|e| e.metadata.idempotency_key != key) {
            return Err(LedgerError::MixedIdempotencyKeys);
        }
        let recorded_at = hash::truncate_to_micros(self.inner.clock.now());
        let mut prepared = Vec::with_capacity(events.len());
        // Events of one command usually share their metadata: serialise it once.
        let mut previous: Option<(Metadata, String)> = None;
        for event in events {
            let metadata = match &previous {
                Some((same, json)) if *same == event.metadata => json.clone(),
                _ => {
                    let json = event.metadata_json()?;
                    previous = Some((event.metadata.clone(), json.clone()));
                    json
                }
            };
            let content_hash = hash::content_hash(&hash::Content {
                id: &event.id.0,
                stream_id: stream.as_str(),
                event_type: &event.event_type,
                schema_version: event.schema_version,
                payload: event.payload.get(),
                metadata: &metadata,
                recorded_at,
            });
            prepared.push(PreparedEvent {
                id: event.id.0,
                event_type: event.event_type,
                schema_version: event.schema_version,
                payload: event.payload,
                metadata,
                recorded_at,
                content_hash,
            });
        }
        let (reply, answer) = oneshot::channel();
        let pending = PendingAppend {
            stream: stream.clone(),
            expected,
            key,
            events: prepared,
            reply,
        };
        self.inner
            .queue
            .send(pending)
            .await
            .map_err(|_| LedgerError::Closed)?;
        drop(preparing);
        answer.await.map_err(|_| LedgerError::Closed)?
    }

    /// Reads a stream's events from `from_version` (1-based, inclusive), at most `limit`.
    ///
    /// # Errors
    /// [`LedgerError::Unavailable`] and other database errors.
    pub async fn read_stream(
        &self,
        stream: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, LedgerError> {
        let limit = limit.clamp(1, READ_PAGE_EVENTS_MAX);
        match &self.inner.backend {
            Backend::Postgres(store) => store.read_stream(stream, from_version, limit).await,
            Backend::Sqlite(store) => store.read_stream(stream, from_version, limit).await,
        }
    }

    /// The append committed under `key`, if any: its stream and first and last versions.
    ///
    /// # Errors
    /// Database errors.
    pub async fn append_of(
        &self,
        key: &IdempotencyKey,
    ) -> Result<Option<(StreamId, u64, u64)>, LedgerError> {
        let found = match &self.inner.backend {
            Backend::Postgres(store) => store.append_of(key).await?,
            Backend::Sqlite(store) => store.append_of(key).await?,
        };
        found
            .map(|(stream, first, last)| Ok((StreamId::parse(stream)?, first, last)))
            .transpose()
    }

    /// Whether any append was committed under a key that starts with `prefix`
    /// (a replayable request's keys share one).
    ///
    /// # Errors
    /// Database errors.
    pub async fn appended_under(&self, prefix: &str) -> Result<bool, LedgerError> {
        match &self.inner.backend {
            Backend::Postgres(store) => store.appended_under(prefix).await,
            Backend::Sqlite(store) => store.appended_under(prefix).await,
        }
    }

    /// The stream's current version (0 when it has no events).
    ///
    /// # Errors
    /// Database errors.
    pub async fn stream_version(&self, stream: &StreamId) -> Result<u64, LedgerError> {
        match &self.inner.backend {
            Backend::Postgres(store) => store.stream_version(stream).await,
            Backend::Sqlite(store) => store.stream_version(stream).await,
        }
    }

    /// Reads up to `limit` released events after `after`, in global order.
    ///
    /// Everything committed before the call is included once in-flight commits
    /// settle (bounded by `release_wait_ms`); nothing later in global order can
    /// ever appear before what this returns.
    ///
    /// # Errors
    /// Database errors.
    pub async fn read_all(
        &self,
        after: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, LedgerError> {
        let released = self.released(true).await?;
        self.read_released(after, released, limit).await
    }

    /// The last released global position: every event at or below it is final.
    ///
    /// # Errors
    /// Database errors.
    pub async fn last_position(&self) -> Result<Position, LedgerError> {
        Ok(Position(self.released(true).await?))
    }

    /// Follows the ledger from `after`: history first, then live commits, each event once.
    pub fn subscribe(&self, after: Position) -> Subscription {
        Subscription::new(self.clone(), after)
    }

    /// Reads everything after `after` that is released now, reading ahead of the caller.
    ///
    /// # Errors
    /// Database errors while finding the release horizon.
    pub async fn replay(&self, after: Position) -> Result<Replay, LedgerError> {
        let end = Position(self.released(true).await?);
        Ok(Replay::new(self.clone(), after, end))
    }

    /// Seals every released, unsealed event (see docs/ledger.md).
    ///
    /// # Errors
    /// Database errors.
    pub async fn seal(&self) -> Result<Vec<SealReport>, LedgerError> {
        let released = self.released(true).await?;
        let made = verify::seal(self, released).await?;
        if !made.is_empty() {
            self.inner.sealed.notify_waiters();
        }
        Ok(made)
    }

    /// Notified after each seal this process makes, in the background or through
    /// [`Ledger::seal`]: the hook of seal export. Other processes' seals are not
    /// seen; read [`Ledger::seals_after`] on a timer too.
    pub fn sealed(&self) -> &Arc<Notify> {
        &self.inner.sealed
    }

    /// The seals after seal number `after` (0: from the first), in order, at most
    /// `limit`, each with its previous digest and time.
    ///
    /// # Errors
    /// Database errors.
    pub async fn seals_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<SealReport>, LedgerError> {
        verify::seals_after(self, after, limit).await
    }

    /// The newest seal, if any: the head of the seal chain.
    ///
    /// # Errors
    /// Database errors.
    pub async fn newest_seal(&self) -> Result<Option<SealReport>, LedgerError> {
        verify::newest_seal(self).await
    }

    /// The offline proof of one stream: its events from version 1, their chain
    /// hashes and the seals covering them (docs/ledger.md, "Proofs"). The proof
    /// is checked before it is returned.
    ///
    /// # Errors
    /// [`LedgerError::StreamNotFound`] for a stream without events;
    /// [`LedgerError::Unsealed`] when its last events are not sealed yet (seal
    /// first); [`LedgerError::ProofTooLarge`]; [`LedgerError::Integrity`] when the
    /// stored events no longer match their seals; database errors.
    pub async fn proof(&self, stream: &StreamId) -> Result<crate::proof::Proof, LedgerError> {
        verify::prove(self, stream).await
    }

    /// Recomputes every hash and seal; reports the first position where the chain breaks.
    ///
    /// # Errors
    /// Database errors (integrity problems are reported, not raised).
    pub async fn verify(&self) -> Result<VerifyReport, LedgerError> {
        verify::verify(self).await
    }

    pub(crate) fn backend(&self) -> &Backend {
        &self.inner.backend
    }

    pub(crate) fn config(&self) -> &LedgerConfig {
        &self.inner.config
    }

    /// Notified after each commit this process makes. Other processes' commits
    /// are not seen: a follower that shares the database polls for those too.
    pub fn committed(&self) -> &Arc<Notify> {
        &self.inner.committed
    }

    /// The release horizon; with `settle`, waits for commits in flight at the call.
    pub(crate) async fn released(&self, settle: bool) -> Result<u64, LedgerError> {
        match &self.inner.backend {
            Backend::Postgres(store) => {
                let wait = if settle {
                    self.inner.config.release_wait_ms
                } else {
                    0
                };
                store.released(Duration::from_millis(wait)).await
            }
            Backend::Sqlite(store) => store.released().await,
        }
    }

    /// `(released, allocated)` after one look, without waiting.
    pub(crate) async fn release_status(&self) -> Result<(u64, u64), LedgerError> {
        match &self.inner.backend {
            Backend::Postgres(store) => store.release_status().await,
            Backend::Sqlite(store) => {
                let released = store.released().await?;
                Ok((released, released))
            }
        }
    }

    /// Released events in `(after, up_to]`, at most `limit`.
    pub(crate) async fn read_released(
        &self,
        after: Position,
        up_to: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, LedgerError> {
        if up_to <= after.0 {
            return Ok(Vec::new());
        }
        let limit = limit.clamp(1, READ_PAGE_EVENTS_MAX);
        match &self.inner.backend {
            Backend::Postgres(store) => store.read_range(after.0, up_to, limit).await,
            Backend::Sqlite(store) => store.read_range(after.0, up_to, limit).await,
        }
    }
}

/// Seals released events every `period` while the store is open.
async fn seal_periodically(inner: std::sync::Weak<Inner>, period: Duration) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        // A weak handle, so the sealer never keeps a dropped store alive.
        let Some(inner) = inner.upgrade() else { return };
        let ledger = Ledger { inner };
        if let Err(error) = ledger.seal().await {
            tracing::warn!(code = error.code(), %error, "background sealing failed; will retry");
        }
    }
}

/// Most times the committer yields to let callers that are preparing appends join its batch.
const GATHER_YIELDS_MAX: usize = 16;

/// Takes every append waiting in the queue (up to the limits) as one batch.
///
/// Callers woken by the previous commit are usually a few microseconds from
/// enqueuing their next append; yielding while appends are being prepared (or
/// while yielding still brings new ones) fills the batch, and one commit then
/// carries them all.
async fn next_batch(
    receiver: &mut mpsc::Receiver<PendingAppend>,
    preparing: &AtomicUsize,
) -> Option<Vec<PendingAppend>> {
    let first = receiver.recv().await?;
    let mut events = first.events.len();
    let mut batch = vec![first];
    for _ in 0..GATHER_YIELDS_MAX {
        let before = batch.len();
        while batch.len() < APPENDS_PER_COMMIT_MAX && events < PARALLEL_COMMIT_EVENTS_MIN * 2 {
            match receiver.try_recv() {
                Ok(next) => {
                    events += next.events.len();
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        // A batch big enough to commit alongside another stops here and leaves the
        // rest to the next slot, so two commits overlap.
        let full = batch.len() >= APPENDS_PER_COMMIT_MAX || events >= PARALLEL_COMMIT_EVENTS_MIN;
        if full || (batch.len() == before && preparing.load(Ordering::Acquire) == 0) {
            break;
        }
        tokio::task::yield_now().await;
    }
    Some(batch)
}

/// Batches of at least this many events may commit alongside another batch: their
/// cost is server work, which a second connection spreads over more cores. Smaller
/// batches commit one after another, where fewer, fuller commits win.
const PARALLEL_COMMIT_EVENTS_MIN: usize = 32;

/// The committer: gathers batches and commits each in one transaction, with up to
/// `slots` commits in flight, until the store closes.
async fn run_committer(
    backend: Backend,
    mut receiver: mpsc::Receiver<PendingAppend>,
    committed: Arc<Notify>,
    preparing: Arc<AtomicUsize>,
    slots: usize,
) {
    let slots = Arc::new(Semaphore::new(slots.max(1)));
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let Some(mut batch) = next_batch(&mut receiver, &preparing).await else {
            return;
        };
        // Stream order: concurrent batches then take index locks in the same order.
        batch.sort_by(|a, b| a.stream.cmp(&b.stream));
        let events: usize = batch.iter().map(|a| a.events.len()).sum();
        let job = commit_and_reply(backend.clone(), batch, Arc::clone(&committed), slot);
        if events >= PARALLEL_COMMIT_EVENTS_MIN {
            tokio::spawn(job);
        } else {
            job.await;
        }
    }
}

/// Commits one batch and answers each caller; the slot frees when done.
async fn commit_and_reply(
    backend: Backend,
    batch: Vec<PendingAppend>,
    committed: Arc<Notify>,
    _slot: OwnedSemaphorePermit,
) {
    match backend.commit(&batch).await {
        Ok(outcomes) => {
            for (append, outcome) in batch.into_iter().zip(outcomes) {
                let result = outcome.into_result(&append);
                // A caller that gave up waiting is no reason to stop.
                let _ = append.reply.send(result);
            }
            committed.notify_waiters();
        }
        Err(error) => {
            tracing::warn!(code = error.code(), %error, "ledger commit failed");
            for append in batch {
                let _ = append.reply.send(Err(error.clone()));
            }
        }
    }
}

/// The columns every backend reads for an event, before checks.
pub(crate) struct EventRow {
    pub position: i64,
    pub id: uuid::Uuid,
    pub stream_id: String,
    pub version: i64,
    pub event_type: String,
    pub schema_version: i32,
    pub payload: String,
    pub metadata: String,
    pub recorded_at: OffsetDateTime,
}

/// Decodes rows into envelopes as they arrive from the database, rather than after
/// the whole page: the server is still sending while the first rows are decoded.
pub(crate) async fn decode_rows<R, S, E>(
    mut rows: S,
    capacity: usize,
    to_row: impl Fn(&R) -> Result<EventRow, E>,
) -> Result<Vec<RecordedEvent>, LedgerError>
where
    S: futures_core::Stream<Item = Result<R, sqlx::Error>> + Unpin,
    LedgerError: From<E>,
{
    let mut decoder = RowDecoder::default();
    let mut events = Vec::with_capacity(capacity.min(READ_PAGE_EVENTS_MAX));
    while let Some(row) =
        std::future::poll_fn(|cx| std::pin::Pin::new(&mut rows).poll_next(cx)).await
    {
        events.push(decoder.decode(to_row(&row?)?)?);
    }
    Ok(events)
}

/// Turns stored rows into envelopes. Consecutive events mostly share their
/// metadata and often their stream, so each is parsed once per run, not per row.
#[derive(Debug, Default)]
pub(crate) struct RowDecoder {
    metadata: Option<(String, crate::envelope::Metadata)>,
    stream: Option<StreamId>,
}

impl RowDecoder {
    /// Checks the stored values and builds the envelope.
    pub(crate) fn decode(&mut self, row: EventRow) -> Result<RecordedEvent, LedgerError> {
        let position = u64::try_from(row.position)
            .map_err(|_| LedgerError::Integrity(format!("negative position {}", row.position)))?;
        let metadata = match &self.metadata {
            Some((text, parsed)) if *text == row.metadata => parsed.clone(),
            _ => {
                let parsed: crate::envelope::Metadata = serde_json::from_str(&row.metadata)
                    .map_err(|error| {
                        LedgerError::Integrity(format!(
                            "metadata of event at position {position} does not parse: {error}"
                        ))
                    })?;
                self.metadata = Some((row.metadata, parsed.clone()));
                parsed
            }
        };
        let stream_id = match &self.stream {
            Some(stream) if stream.as_str() == row.stream_id => stream.clone(),
            _ => {
                let stream = StreamId::parse(row.stream_id)?;
                self.stream = Some(stream.clone());
                stream
            }
        };
        let stream_version = u64::try_from(row.version).map_err(|_| {
            LedgerError::Integrity(format!("negative version at position {position}"))
        })?;
        let schema_version = u32::try_from(row.schema_version).map_err(|_| {
            LedgerError::Integrity(format!("negative schema version at position {position}"))
        })?;
        Ok(RecordedEvent {
            id: crate::envelope::EventId(row.id),
            stream_id,
            stream_version,
            position: Position(position),
            event_type: row.event_type,
            schema_version,
            payload: row.payload,
            metadata,
            recorded_at: row.recorded_at,
        })
    }
}

/// Converts a count or version for a bigint column; values past i64 cannot occur.
pub(crate) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Converts a stored bigint that the schema keeps non-negative.
pub(crate) fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}
