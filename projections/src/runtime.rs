//! The projector runtime: feeds a projection the ledger's events in order and
//! commits each batch's read-model writes together with the projection's
//! checkpoint, in one transaction, so a crash or a repeated delivery never applies
//! an event twice. A projection whose version changed is rebuilt from the first
//! event.

use std::future::Future;

use recur_ledger::{Ledger, LedgerError, Position, RecordedEvent};

use crate::db::{Db, DbError, Stmt, Value};

/// Decodes a stored event for `projection`, naming the event in the error.
///
/// # Errors
/// [`ProjectionError::Event`] when the payload is not the expected event.
pub fn decode<E: recur_commands::DomainEvent>(
    projection: &'static str,
    recorded: &RecordedEvent,
) -> Result<E, ProjectionError> {
    recur_commands::billing::decode_event(&recorded.payload).map_err(|message| {
        ProjectionError::Event {
            projection,
            position: recorded.position.0,
            message,
        }
    })
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
    let mut earlier = Vec::new();
    let mut from = 1;
    while event.stream_version > from {
        let page = ledger
            .read_stream(&event.stream_id, from, LOAD_PAGE_EVENTS)
            .await?;
        let Some(last) = page.last().map(|r| r.stream_version) else {
            break;
        };
        for recorded in page
            .iter()
            .take_while(|r| r.stream_version < event.stream_version)
        {
            earlier.push(decode(projection, recorded)?);
        }
        from = last + 1;
    }
    Ok(earlier)
}

/// Events read per page when folding a stream.
const LOAD_PAGE_EVENTS: usize = 1_000;

/// Events applied per transaction.
pub const EVENTS_PER_BATCH_MAX: usize = 500;

/// Why a projection stopped.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// The ledger failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The read model's database failed.
    #[error(transparent)]
    Db(#[from] DbError),
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
}

/// A read model: what it stores and how an event changes it.
pub trait Projection: Send {
    /// Its name (the checkpoint's key).
    const NAME: &'static str;
    /// Its code version: a new version is rebuilt from the first event.
    const VERSION: u32;

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
        event: &RecordedEvent,
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
}

const CHECKPOINTS: &str = "CREATE TABLE IF NOT EXISTS projection_checkpoints (
    name     TEXT   PRIMARY KEY,
    version  BIGINT NOT NULL,
    position BIGINT NOT NULL
)";

impl<P: Projection> Projector<P> {
    /// Opens the projection: creates its tables, and rebuilds it from the start
    /// when its stored version is not the code's.
    ///
    /// # Errors
    /// Database errors.
    pub async fn open(ledger: Ledger, projection: P) -> Result<Self, ProjectionError> {
        let db = Db::of(&ledger).ok_or(ProjectionError::NoDatabase)?;
        db.transaction(&[Stmt::new(CHECKPOINTS, vec![])]).await?;
        let stored = db
            .query(
                &Stmt::new(
                    "SELECT version, position FROM projection_checkpoints WHERE name = ?",
                    vec![P::NAME.into()],
                ),
                "ii",
            )
            .await?;
        let mut projector = Self {
            ledger,
            db,
            projection,
            position: Position::START,
        };
        match stored.first().map(|row| (row[0].clone(), row[1].clone())) {
            Some((Value::Int(version), Value::Int(position)))
                if version == i64::from(P::VERSION) =>
            {
                projector.position = Position(u64::try_from(position).unwrap_or(0));
                projector
                    .db
                    .transaction(&projector.projection.schema())
                    .await?;
            }
            _ => projector.reset_tables().await?,
        }
        projector.reload().await?;
        Ok(projector)
    }

    async fn reset_tables(&mut self) -> Result<(), ProjectionError> {
        let mut statements: Vec<Stmt> = self
            .projection
            .tables()
            .into_iter()
            .map(|table| Stmt::new(format!("DROP TABLE IF EXISTS {table}"), vec![]))
            .collect();
        statements.extend(self.projection.schema());
        statements.push(checkpoint(P::NAME, P::VERSION, Position::START));
        self.db.transaction(&statements).await?;
        self.position = Position::START;
        Ok(())
    }

    /// Reads the checkpoint again (another worker may have moved it) and reloads
    /// the projection's memory as of it.
    async fn reload(&mut self) -> Result<(), ProjectionError> {
        let stored = self
            .db
            .query(
                &Stmt::new(
                    "SELECT position FROM projection_checkpoints WHERE name = ?",
                    vec![P::NAME.into()],
                ),
                "i",
            )
            .await?;
        if let Some(Value::Int(position)) = stored.first().and_then(|row| row.first()) {
            self.position = Position(u64::try_from(*position).unwrap_or(0));
        }
        self.projection
            .load(&self.db, &self.ledger, self.position)
            .await
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
        mut progress: impl FnMut(Position, u64),
    ) -> Result<u64, ProjectionError> {
        let mut applied = 0;
        loop {
            let page = self
                .ledger
                .read_all(self.position, EVENTS_PER_BATCH_MAX)
                .await?;
            let Some(last) = page.last().map(|e| e.position) else {
                break;
            };
            self.apply_batch(&page).await?;
            applied += page.len() as u64;
            progress(last, applied);
            if page.len() < EVENTS_PER_BATCH_MAX {
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
    pub async fn apply_batch(&mut self, events: &[RecordedEvent]) -> Result<(), ProjectionError> {
        let Some(last) = events.last().map(|e| e.position) else {
            return Ok(());
        };
        let mut writes = Vec::new();
        let mut result = Ok(());
        for event in events {
            result = self
                .projection
                .apply(event, &self.ledger, &mut writes)
                .await;
            if result.is_err() {
                break;
            }
        }
        if result.is_ok() {
            self.projection.flush(&mut writes);
            let mut writes = crate::db::supersede(writes);
            // Compare-and-set: if another worker moved the checkpoint, nothing is written.
            writes.push(advance(P::NAME, P::VERSION, self.position, last));
            result = self
                .db
                .transaction(&writes)
                .await
                .map_err(ProjectionError::from);
        }
        if let Err(error) = result {
            self.reload().await?;
            return Err(error);
        }
        self.position = last;
        Ok(())
    }

    /// The ledger, for feeds that check what they deliver against it.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Drops the read model and builds it again from the first event.
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
        progress: impl FnMut(Position, u64),
    ) -> Result<u64, ProjectionError> {
        self.reset_tables().await?;
        self.reload().await?;
        self.catch_up_with(progress).await
    }

    /// The projection's name and version.
    pub fn describe(&self) -> (&'static str, u32) {
        (P::NAME, P::VERSION)
    }
}

fn advance(name: &str, version: u32, from: Position, to: Position) -> Stmt {
    let at = |p: Position| i64::try_from(p.0).unwrap_or(i64::MAX);
    Stmt::new(
        "UPDATE projection_checkpoints SET position = ? WHERE name = ? AND version = ? AND position = ?",
        vec![at(to).into(), name.into(), i64::from(version).into(), at(from).into()],
    )
    .expecting(1)
}

fn checkpoint(name: &str, version: u32, position: Position) -> Stmt {
    Stmt::new(
        "INSERT INTO projection_checkpoints (name, version, position) VALUES (?, ?, ?)
         ON CONFLICT (name) DO UPDATE SET version = excluded.version, position = excluded.position",
        vec![
            name.into(),
            i64::from(version).into(),
            i64::try_from(position.0).unwrap_or(i64::MAX).into(),
        ],
    )
}
