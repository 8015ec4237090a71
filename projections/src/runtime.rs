//! The projector runtime: feeds a projection the ledger's events in order and
//! commits each batch's read-model writes together with the projection's
//! checkpoint, in one transaction, so a crash or a repeated delivery never applies
//! an event twice. A projection whose version changed is rebuilt from the first
//! event.

use std::future::Future;

use recur_commands::DecodeError;
use recur_ledger::{Ledger, LedgerError, Position, RecordedEvent};

use crate::db::{Db, DbError, Shadow, Stmt};

/// Decodes a stored event for `projection`, naming the event in the error.
///
/// # Errors
/// [`ProjectionError::Undecodable`] when the payload is not the expected event.
pub fn decode<E: recur_commands::DomainEvent>(
    projection: &'static str,
    recorded: &RecordedEvent,
) -> Result<E, ProjectionError> {
    recur_commands::billing::decode_event(&recorded.payload).map_err(|source| {
        ProjectionError::Undecodable {
            projection,
            position: recorded.position.0,
            source,
        }
    })
}

/// A ledger event on its way to the projections: the envelope, and its payload
/// decoded at most once for every projection that reads it (a rebuild hands one
/// page to all of them, and decoding was the largest cost of applying).
pub struct Delivered {
    recorded: RecordedEvent,
    decoded: std::sync::OnceLock<Box<dyn std::any::Any + Send + Sync>>,
}

impl Delivered {
    /// An event not decoded yet.
    pub fn new(recorded: RecordedEvent) -> Self {
        Self {
            recorded,
            decoded: std::sync::OnceLock::new(),
        }
    }

    /// The payload as a domain event, decoded by the first projection that asks.
    ///
    /// # Errors
    /// [`ProjectionError::Undecodable`] when the payload is not an `E`;
    /// [`ProjectionError::Event`] when another projection decoded it as another type.
    pub fn decoded<E: recur_commands::DomainEvent>(
        &self,
        projection: &'static str,
    ) -> Result<&E, ProjectionError> {
        let position = self.recorded.position.0;
        let cached = self.decoded.get_or_init(|| {
            Box::new(recur_commands::billing::decode_event::<E>(
                &self.recorded.payload,
            ))
        });
        // The cache keeps the decoder's error itself, so every projection that
        // asks reports the same typed cause (a clone: the parser's error is shared).
        match cached.downcast_ref::<Result<E, DecodeError>>() {
            Some(Ok(event)) => Ok(event),
            Some(Err(source)) => Err(ProjectionError::Undecodable {
                projection,
                position,
                source: source.clone(),
            }),
            None => Err(ProjectionError::Event {
                projection,
                position,
                message: format!(
                    "the event was decoded as another type than {}",
                    std::any::type_name::<E>()
                ),
            }),
        }
    }
}

impl std::ops::Deref for Delivered {
    type Target = RecordedEvent;

    fn deref(&self) -> &RecordedEvent {
        &self.recorded
    }
}

/// The events of `event`'s stream recorded before it, decoded in order: what a
/// projection folds when it sees a stream for the first time since it loaded.
/// A stream's first event has nothing before it, so that costs no read.
///
/// # Errors
/// Ledger errors; undecodable events.
pub async fn earlier_events<E: recur_commands::DomainEvent>(
    projection: &'static str,
    ledger: &Ledger,
    event: &RecordedEvent,
) -> Result<Vec<E>, ProjectionError> {
    if event.stream_version <= 1 {
        return Ok(Vec::new());
    }
    events_before(projection, ledger, &event.stream_id, event.position).await
}

/// The events of `stream` recorded before ledger position `before`, decoded in
/// order: a stream's past as of a moment in the ledger.
///
/// # Errors
/// Ledger errors; undecodable events.
pub async fn events_before<E: recur_commands::DomainEvent>(
    projection: &'static str,
    ledger: &Ledger,
    stream: &recur_ledger::StreamId,
    before: Position,
) -> Result<Vec<E>, ProjectionError> {
    let mut earlier = Vec::new();
    let mut from = 1;
    loop {
        let page = ledger.read_stream(stream, from, LOAD_PAGE_EVENTS).await?;
        let Some(last) = page.last().map(|r| r.stream_version) else {
            break;
        };
        for recorded in &page {
            if recorded.position >= before {
                return Ok(earlier);
            }
            earlier.push(decode(projection, recorded)?);
        }
        if page.len() < LOAD_PAGE_EVENTS {
            break;
        }
        from = last + 1;
    }
    Ok(earlier)
}

/// The ledger's next page after `after`, up to `until`: its events, the last
/// position, and whether more may follow (a full page that stopped short of
/// `until`); None when nothing is left.
///
/// # Errors
/// Ledger errors.
async fn next_page(
    ledger: &Ledger,
    after: Position,
    until: Position,
    limit: usize,
) -> Result<Option<(Vec<Delivered>, Position, bool)>, ProjectionError> {
    let mut page = ledger.read_all(after, limit).await?;
    let full = page.len() == limit;
    page.retain(|e| e.position <= until);
    let Some(last) = page.last().map(|e| e.position) else {
        return Ok(None);
    };
    let page = page.into_iter().map(Delivered::new).collect();
    Ok(Some((page, last, full && last < until)))
}

/// Events read per page when folding a stream.
const LOAD_PAGE_EVENTS: usize = 1_000;

/// Events applied per transaction.
pub const EVENTS_PER_BATCH_MAX: usize = 500;

/// Events applied per transaction while a shadow is rebuilt: nobody reads it yet,
/// and a bigger batch lets more writes supersede each other.
pub const REBUILD_EVENTS_PER_BATCH: usize = 10_000;

// A page shorter than asked for means the end of the ledger, so no page may ask
// for more than the ledger reads at once.
const _: () = assert!(
    REBUILD_EVENTS_PER_BATCH <= recur_ledger::limits::READ_PAGE_EVENTS_MAX
        && EVENTS_PER_BATCH_MAX <= recur_ledger::limits::READ_PAGE_EVENTS_MAX
);

/// Why a projection stopped.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// The ledger failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The read model's database failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// A stored payload that is not an event of the expected kind.
    #[error("projection {projection}: event at {position} cannot be decoded")]
    Undecodable {
        /// The projection.
        projection: &'static str,
        /// The event's position.
        position: u64,
        /// The decoder's error: the type tag, and the parser's error.
        #[source]
        source: DecodeError,
    },
    /// An event whose figures the domain refuses (money that does not add up,
    /// a one-time price where a recurring one belongs): a bug, or a damaged ledger.
    #[error("projection {projection}: event at {position}: its figures do not hold")]
    Domain {
        /// The projection.
        projection: &'static str,
        /// The event's position.
        position: u64,
        /// The domain's refusal.
        #[source]
        source: recur_commands::DomainError,
    },
    /// An event the projection cannot read: a bug, or a ledger from the future.
    #[error("projection {projection}: event at {position}: {message}")]
    Event {
        /// The projection.
        projection: &'static str,
        /// The event's position.
        position: u64,
        /// What went wrong.
        message: String,
    },
    /// The ledger is not on a database the read models can use.
    #[error("the ledger's database is not reachable for read models")]
    NoDatabase,
    /// A projection's task ended without an answer (it panicked).
    #[error("projection task failed: {0}")]
    Task(String),
}

/// A read model: what it stores and how an event changes it.
pub trait Projection: Send + Default {
    /// Its name (the checkpoint's key).
    const NAME: &'static str;
    /// Its code version: a new version is rebuilt from the first event.
    const VERSION: u32;

    /// The version stored with the checkpoint: the code version, changed also by
    /// any setting that changes what the projection writes, so that changing the
    /// setting rebuilds it.
    fn stored_version(&self) -> u32 {
        Self::VERSION
    }

    /// An empty projection with the same settings (what a rebuild starts from).
    fn empty(&self) -> Self {
        Self::default()
    }

    /// Its tables, dropped before a rebuild.
    fn tables(&self) -> Vec<&'static str>;

    /// Statements that create its tables if they do not exist.
    fn schema(&self) -> Vec<Stmt>;

    /// Loads what it keeps in memory from its tables (after open, a rebuild, or a
    /// failed batch), as of its checkpoint.
    fn load(
        &mut self,
        db: &Db,
        ledger: &Ledger,
        at: Position,
    ) -> impl Future<Output = Result<(), ProjectionError>> + Send;

    /// Adds what the projection held back while applying a batch (sums kept in
    /// memory, so one statement per row instead of one per event).
    fn flush(&mut self, writes: &mut Vec<Stmt>) {
        let _ = writes;
    }

    /// Adds to `writes` what `event` changes.
    fn apply(
        &mut self,
        event: &Delivered,
        ledger: &Ledger,
        writes: &mut Vec<Stmt>,
    ) -> impl Future<Output = Result<(), ProjectionError>> + Send;
}

/// Runs one projection.
pub struct Projector<P: Projection> {
    ledger: Ledger,
    db: Db,
    projection: P,
    position: Position,
    /// Bumped by every reset and switch: a worker that loaded an older generation
    /// has its next batch refused and reloads.
    generation: i64,
    pub(crate) events_per_batch: usize,
}

/// The checkpoints table, as the ledger's migration 0004 makes it in the
/// ledger's database: made here only in a scratch or shadow database.
pub const CHECKPOINTS: &str = "CREATE TABLE IF NOT EXISTS projection_checkpoints (
    name       TEXT   PRIMARY KEY,
    version    BIGINT NOT NULL,
    position   BIGINT NOT NULL,
    generation BIGINT NOT NULL DEFAULT 0
)";

/// Makes the checkpoints table where the ledger's migrations did not (a scratch
/// database for a question about the past, a rebuild's shadow); a no-op in the
/// ledger's own database.
pub(crate) async fn ensure_checkpoints(db: &Db) -> Result<(), DbError> {
    db.transaction(&[Stmt::new(CHECKPOINTS, vec![])]).await
}

impl<P: Projection> Projector<P> {
    /// Opens the projection: creates its tables, and rebuilds it from the start
    /// when its stored version is not the code's.
    ///
    /// # Errors
    /// Database errors.
    pub async fn open(ledger: Ledger, projection: P) -> Result<Self, ProjectionError> {
        let db = Db::of(&ledger).ok_or(ProjectionError::NoDatabase)?;
        Self::open_on(ledger, db, projection).await
    }

    /// [`Projector::open`] with the read models in `db` (a scratch database for a
    /// question about the past, say). A version change is rebuilt blue/green: the
    /// old tables serve until the new ones are complete.
    ///
    /// # Errors
    /// Database errors.
    pub async fn open_on(ledger: Ledger, db: Db, projection: P) -> Result<Self, ProjectionError> {
        ensure_checkpoints(&db).await?;
        let stored: Vec<(i64, u64)> = db
            .rows(&Stmt::new(
                "SELECT version, position FROM projection_checkpoints WHERE name = ?",
                vec![P::NAME.into()],
            ))
            .await?;
        let mut projector = Self::unopened(ledger, db, projection);
        match stored.first().map(|(version, _)| *version) {
            Some(version) if version == i64::from(projector.projection.stored_version()) => {
                projector
                    .db
                    .transaction(&projector.projection.schema())
                    .await?;
                projector.reload().await?;
            }
            Some(_) => {
                tracing::info!(
                    projection = P::NAME,
                    version = projector.projection.stored_version(),
                    "the projection's code changed: rebuilding it beside the tables in use"
                );
                projector.rebuild().await?;
            }
            None => {
                projector.reset_tables().await?;
                projector.reload().await?;
            }
        }
        Ok(projector)
    }

    /// A projector at the start, before its tables are looked at.
    fn unopened(ledger: Ledger, db: Db, projection: P) -> Self {
        Self {
            ledger,
            db,
            projection,
            position: Position::START,
            generation: 0,
            events_per_batch: EVENTS_PER_BATCH_MAX,
        }
    }

    async fn reset_tables(&mut self) -> Result<(), ProjectionError> {
        let mut statements: Vec<Stmt> = self
            .projection
            .tables()
            .into_iter()
            .map(|table| Stmt::new(format!("DROP TABLE IF EXISTS {table}"), vec![]))
            .collect();
        statements.extend(self.projection.schema());
        statements.push(checkpoint(
            P::NAME,
            self.projection.stored_version(),
            Position::START,
        ));
        self.db.transaction(&statements).await?;
        self.position = Position::START;
        Ok(())
    }

    /// Reads the checkpoint again (another worker may have moved it, or a rebuild
    /// switched the tables) and reloads the projection's memory as of it.
    async fn reload(&mut self) -> Result<(), ProjectionError> {
        self.read_checkpoint().await?;
        self.projection
            .load(&self.db, &self.ledger, self.position)
            .await
    }

    /// Reads the position and generation this projection's checkpoint holds.
    async fn read_checkpoint(&mut self) -> Result<(), ProjectionError> {
        let stored: Vec<(u64, i64)> = self
            .db
            .rows(&Stmt::new(
                "SELECT position, generation FROM projection_checkpoints WHERE name = ?",
                vec![P::NAME.into()],
            ))
            .await?;
        if let Some((position, generation)) = stored.first() {
            self.position = Position(*position);
            self.generation = *generation;
        }
        Ok(())
    }

    /// The last applied position.
    pub fn position(&self) -> Position {
        self.position
    }

    /// The database, for queries.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Applies everything the ledger has released since the checkpoint; returns
    /// how many events were applied.
    ///
    /// # Errors
    /// Ledger, database and event errors; in-memory state is reloaded, so a retry
    /// starts clean from the checkpoint.
    pub async fn catch_up(&mut self) -> Result<u64, ProjectionError> {
        self.catch_up_with(|_, _| {}).await
    }

    /// [`Projector::catch_up`], calling `progress(position, applied so far)` after each batch.
    ///
    /// # Errors
    /// As for [`Projector::catch_up`].
    pub async fn catch_up_with(
        &mut self,
        progress: impl FnMut(Position, u64),
    ) -> Result<u64, ProjectionError> {
        self.catch_up_until(Position(u64::MAX), progress).await
    }

    /// Applies what the ledger has released up to and including `until`: the read
    /// model as it stood at that position.
    ///
    /// # Errors
    /// As for [`Projector::catch_up`].
    pub async fn catch_up_to(&mut self, until: Position) -> Result<u64, ProjectionError> {
        self.catch_up_until(until, |_, _| {}).await
    }

    async fn catch_up_until(
        &mut self,
        until: Position,
        mut progress: impl FnMut(Position, u64),
    ) -> Result<u64, ProjectionError> {
        let mut applied = 0;
        while self.position < until {
            let next = next_page(&self.ledger, self.position, until, self.events_per_batch);
            let Some((page, last, more)) = next.await? else {
                break;
            };
            self.apply_batch(&page).await?;
            applied += page.len() as u64;
            progress(last, applied);
            if !more {
                break;
            }
        }
        Ok(applied)
    }

    /// Applies `events` (the next ones after the checkpoint, in ledger order) and
    /// moves the checkpoint, in one transaction.
    ///
    /// # Errors
    /// Database and event errors; in-memory state is reloaded from the checkpoint.
    #[tracing::instrument(level = "debug", skip_all, fields(projection = P::NAME, events = events.len(), after = self.position.0))]
    pub async fn apply_batch(&mut self, events: &[Delivered]) -> Result<(), ProjectionError> {
        let result = match self.prepare_batch(events).await {
            Ok(None) => return Ok(()),
            Ok(Some((writes, last))) => self
                .db
                .transaction(&writes)
                .await
                .map(|()| last)
                .map_err(ProjectionError::from),
            Err(error) => Err(error),
        };
        match result {
            Ok(last) => {
                self.position = last;
                Ok(())
            }
            Err(error) => {
                self.reload().await?;
                Err(error)
            }
        }
    }

    /// The writes of `events` (the next ones after the checkpoint) with the move
    /// of the checkpoint to the last of them, not yet committed; None for no events.
    /// After an error the in-memory state is partly applied: reload or drop it.
    async fn prepare_batch(
        &mut self,
        events: &[Delivered],
    ) -> Result<Option<(Vec<Stmt>, Position)>, ProjectionError> {
        let Some(last) = events.last().map(|e| e.position) else {
            return Ok(None);
        };
        let mut writes = Vec::new();
        for event in events {
            self.projection
                .apply(event, &self.ledger, &mut writes)
                .await?;
        }
        self.projection.flush(&mut writes);
        let mut writes = crate::db::supersede(writes);
        // Compare-and-set: if another worker moved the checkpoint, nothing is written.
        writes.push(advance(
            P::NAME,
            self.projection.stored_version(),
            self.generation,
            self.position,
            last,
        ));
        Ok(Some((writes, last)))
    }

    /// The ledger, for feeds that check what they deliver against it.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Builds the read model again from the first event, beside the tables in use,
    /// which keep serving; then switches to the new tables in one transaction and
    /// applies what arrived meanwhile.
    ///
    /// # Errors
    /// As for [`Projector::catch_up`].
    pub async fn rebuild(&mut self) -> Result<u64, ProjectionError> {
        self.rebuild_with(|_, _| {}).await
    }

    /// [`Projector::rebuild`] with progress, as for [`Projector::catch_up_with`].
    ///
    /// # Errors
    /// As for [`Projector::catch_up`].
    pub async fn rebuild_with(
        &mut self,
        mut progress: impl FnMut(Position, u64),
    ) -> Result<u64, ProjectionError> {
        let mut rebuild = self.start_rebuild().await?;
        let built = match rebuild.projector().catch_up_with(&mut progress).await {
            Ok(applied) => applied,
            Err(error) => {
                rebuild.abandon().await;
                return Err(error);
            }
        };
        Ok(built + self.finish_rebuild(rebuild).await?)
    }

    /// A fresh, empty copy of this projection in a shadow beside its tables: feed
    /// it from the first event, then [`Projector::finish_rebuild`].
    ///
    /// # Errors
    /// Database errors.
    pub async fn start_rebuild(&self) -> Result<Rebuild<P>, ProjectionError> {
        let shadow = self.db.shadow(P::NAME).await?;
        let fresh = Self::fresh_with(
            self.ledger.clone(),
            shadow.db().clone(),
            self.projection.empty(),
        )
        .await;
        match fresh {
            Ok(mut fresh) => {
                fresh.events_per_batch = REBUILD_EVENTS_PER_BATCH;
                Ok(Rebuild {
                    shadow,
                    fresh,
                    committing: None,
                })
            }
            Err(error) => {
                shadow.discard().await;
                Err(error)
            }
        }
    }

    /// Switches to the rebuilt tables in one transaction (readers see the old ones
    /// until it commits), then applies what the ledger released meanwhile.
    ///
    /// # Errors
    /// Database errors (the tables in use are then unchanged); catch-up errors.
    pub async fn finish_rebuild(
        &mut self,
        mut rebuild: Rebuild<P>,
    ) -> Result<u64, ProjectionError> {
        if let Err(error) = rebuild.settle().await {
            rebuild.abandon().await;
            return Err(error);
        }
        let switch = [checkpoint(
            P::NAME,
            self.projection.stored_version(),
            rebuild.fresh.position,
        )];
        let adopted = self
            .db
            .adopt(
                &rebuild.shadow,
                &self.projection.tables(),
                &self.projection.schema(),
                &switch,
            )
            .await;
        let Rebuild { shadow, fresh, .. } = rebuild;
        shadow.discard().await;
        adopted?;
        self.read_checkpoint().await?;
        if self.position == fresh.position {
            // The rebuilt memory is what wrote the tables just adopted: take it
            // rather than load it back from them.
            self.projection = fresh.projection;
        } else {
            self.projection
                .load(&self.db, &self.ledger, self.position)
                .await?;
        }
        self.catch_up().await
    }

    /// A projector with empty tables in `db`, from the first event.
    ///
    /// # Errors
    /// Database errors.
    pub async fn fresh(ledger: Ledger, db: Db) -> Result<Self, ProjectionError> {
        Self::fresh_with(ledger, db, P::default()).await
    }

    /// [`Projector::fresh`] with `projection` (empty, with its settings).
    ///
    /// # Errors
    /// Database errors.
    pub async fn fresh_with(
        ledger: Ledger,
        db: Db,
        projection: P,
    ) -> Result<Self, ProjectionError> {
        let mut fresh = Self::unopened(ledger, db, projection);
        ensure_checkpoints(&fresh.db).await?;
        fresh.reset_tables().await?;
        fresh.reload().await?;
        Ok(fresh)
    }

    /// The projection's name and stored version.
    pub fn describe(&self) -> (&'static str, u32) {
        (P::NAME, self.projection.stored_version())
    }
}

/// A projection being rebuilt in a shadow (see [`Projector::start_rebuild`]).
pub struct Rebuild<P: Projection> {
    shadow: Shadow,
    fresh: Projector<P>,
    /// The previous page's transaction, committing while the next page is
    /// applied in memory (nobody reads a shadow, and a failure abandons it).
    committing: Option<tokio::task::JoinHandle<Result<(), DbError>>>,
}

impl<P: Projection> Rebuild<P> {
    /// The projector writing the shadow.
    pub fn projector(&mut self) -> &mut Projector<P> {
        &mut self.fresh
    }

    /// Waits for the page being committed.
    ///
    /// # Errors
    /// Its database error; [`ProjectionError::Task`] if its task panicked.
    async fn settle(&mut self) -> Result<(), ProjectionError> {
        if let Some(task) = self.committing.take() {
            task.await
                .map_err(|error| ProjectionError::Task(error.to_string()))??;
        }
        Ok(())
    }

    /// Gives the rebuild up and drops the shadow; the tables in use are untouched.
    pub async fn abandon(mut self) {
        let _ = self.settle().await;
        self.shadow.discard().await;
    }
}

/// A page of the ledger, shared by every projection fed from it.
pub type Page = std::sync::Arc<Vec<Delivered>>;

/// Pages a projection's task may hold before the reader waits for it.
const PAGES_AHEAD: usize = 2;

/// A projector fed pages by someone else (the set's single-pass rebuild).
pub trait ApplyBatch: Send + 'static {
    /// Applies the next page, in one transaction.
    fn apply(
        &mut self,
        events: &[Delivered],
    ) -> impl Future<Output = Result<(), ProjectionError>> + Send;
}

impl<P: Projection + 'static> ApplyBatch for Projector<P> {
    async fn apply(&mut self, events: &[Delivered]) -> Result<(), ProjectionError> {
        self.apply_batch(events).await
    }
}

impl<P: Projection + 'static> ApplyBatch for Rebuild<P> {
    /// Applies the page in memory while the previous page commits, then hands
    /// this page's transaction to a task of its own: one transaction in flight,
    /// committed in page order.
    async fn apply(&mut self, events: &[Delivered]) -> Result<(), ProjectionError> {
        let Some((writes, last)) = self.fresh.prepare_batch(events).await? else {
            return Ok(());
        };
        self.settle().await?;
        let db = self.fresh.db.clone();
        self.committing = Some(tokio::spawn(async move { db.transaction(&writes).await }));
        self.fresh.position = last;
        Ok(())
    }
}

/// A task that applies the pages sent to it, each projection on its own task so
/// that two cores work at once; it hands the projector back when the pages end.
pub struct Applier<A: ApplyBatch> {
    pages: tokio::sync::mpsc::Sender<Page>,
    task: tokio::task::JoinHandle<Result<A, ProjectionError>>,
}

impl<A: ApplyBatch> Applier<A> {
    /// Starts the task.
    pub fn spawn(mut applier: A) -> Self {
        let (pages, mut incoming) = tokio::sync::mpsc::channel::<Page>(PAGES_AHEAD);
        let task = tokio::spawn(async move {
            while let Some(page) = incoming.recv().await {
                applier.apply(&page).await?;
            }
            Ok(applier)
        });
        Self { pages, task }
    }

    /// Where the reader sends pages.
    pub fn pages(&self) -> tokio::sync::mpsc::Sender<Page> {
        self.pages.clone()
    }

    /// Waits until every page sent is applied; the projector, or why it stopped.
    ///
    /// # Errors
    /// The projection's error; [`ProjectionError::Task`] if its task panicked.
    pub async fn finish(self) -> Result<A, ProjectionError> {
        drop(self.pages);
        self.task
            .await
            .map_err(|error| ProjectionError::Task(error.to_string()))?
    }
}

/// Reads the ledger once from the first event up to `until` and sends each page to
/// every applier; calls `progress(position, read)` after each page. Stops early
/// when an applier has stopped (its [`Applier::finish`] says why).
///
/// # Errors
/// Ledger errors.
pub async fn feed(
    ledger: &Ledger,
    until: Position,
    appliers: Vec<tokio::sync::mpsc::Sender<Page>>,
    mut progress: impl FnMut(Position, u64),
) -> Result<u64, ProjectionError> {
    let mut read = 0;
    let mut after = Position::START;
    loop {
        let next = next_page(ledger, after, until, REBUILD_EVENTS_PER_BATCH);
        let Some((page, last, more)) = next.await? else {
            break;
        };
        read += page.len() as u64;
        let page: Page = std::sync::Arc::new(page);
        for applier in &appliers {
            if applier.send(page.clone()).await.is_err() {
                return Ok(read);
            }
        }
        progress(last, read);
        if !more {
            break;
        }
        after = last;
    }
    Ok(read)
}

fn advance(name: &str, version: u32, generation: i64, from: Position, to: Position) -> Stmt {
    let at = |p: Position| i64::try_from(p.0).unwrap_or(i64::MAX);
    Stmt::new(
        "UPDATE projection_checkpoints SET position = ?
          WHERE name = ? AND version = ? AND generation = ? AND position = ?",
        vec![
            at(to).into(),
            name.into(),
            i64::from(version).into(),
            generation.into(),
            at(from).into(),
        ],
    )
    .expecting(1)
}

fn checkpoint(name: &str, version: u32, position: Position) -> Stmt {
    Stmt::new(
        "INSERT INTO projection_checkpoints (name, version, position) VALUES (?, ?, ?)
         ON CONFLICT (name) DO UPDATE SET version = excluded.version, position = excluded.position,
         generation = projection_checkpoints.generation + 1",
        vec![
            name.into(),
            i64::from(version).into(),
            i64::try_from(position.0).unwrap_or(i64::MAX).into(),
        ],
    )
}

#[cfg(test)]
mod tests {
    /// The table a scratch or shadow database gets is the one the ledger's
    /// migration makes, column for column.
    #[test]
    fn the_checkpoints_table_is_the_migrations() {
        for backend in ["postgres", "sqlite"] {
            let path = format!(
                "{}/../schema/{backend}/0004_projection_checkpoints.sql",
                env!("CARGO_MANIFEST_DIR")
            );
            let migration = std::fs::read_to_string(&path).unwrap_or_default();
            let columns = |sql: &str| -> Vec<String> {
                sql.lines()
                    .map(str::trim)
                    .filter(|l| l.starts_with("generation ") || l.starts_with("name "))
                    .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                    .collect()
            };
            let ours = columns(super::CHECKPOINTS);
            assert_eq!(ours.len(), 2);
            for column in ours {
                assert!(
                    columns(&migration).contains(&column),
                    "{backend}: {column} differs from {path}"
                );
            }
        }
    }
}
