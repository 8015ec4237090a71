//! Pages of the global order read from the SQLite file by plain SQLite calls on a
//! blocking thread. sqlx hands each row over as a copy of every column value,
//! made in its worker and freed after the caller has copied the text again; on a
//! replay those copies were the largest single cost. Here each value is read in
//! place and copied once, into the envelope.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::envelope::RecordedEvent;
use crate::error::LedgerError;
use crate::sqlite::{EVENT_COLUMNS, recorded_at};
use crate::store::{EventRow, RowDecoder, to_i64};
use rusqlite::{Connection, OpenFlags};

/// Idle connections kept for the next page; more readers at once open their own.
const IDLE_CONNECTIONS_MAX: usize = 4;

/// Read-only connections to one ledger file.
#[derive(Clone, Debug)]
pub(crate) struct PageReader {
    path: std::path::PathBuf,
    busy_timeout: Duration,
    idle: Arc<Mutex<Vec<Connection>>>,
}

impl PageReader {
    /// Reads `path`, waiting up to `busy_timeout` for a lock.
    pub(crate) fn new(path: &std::path::Path, busy_timeout: Duration) -> Self {
        Self {
            path: path.to_owned(),
            busy_timeout,
            idle: Arc::default(),
        }
    }

    /// Events in `(after, up_to]` in position order, at most `limit`.
    pub(crate) async fn read_range(
        &self,
        after: u64,
        up_to: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, LedgerError> {
        let reader = self.clone();
        tokio::task::spawn_blocking(move || {
            let conn = reader.connection()?;
            let page = read_page(&conn, after, up_to, limit);
            reader.give_back(conn);
            page
        })
        .await
        .map_err(|error| LedgerError::unavailable("ledger reader stopped", error))?
    }

    fn connection(&self) -> Result<Connection, LedgerError> {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        if let Some(conn) = idle {
            return Ok(conn);
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&self.path, flags).map_err(unavailable)?;
        conn.busy_timeout(self.busy_timeout).map_err(unavailable)?;
        Ok(conn)
    }

    fn give_back(&self, conn: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < IDLE_CONNECTIONS_MAX {
            idle.push(conn);
        }
    }
}

fn read_page(
    conn: &Connection,
    after: u64,
    up_to: u64,
    limit: usize,
) -> Result<Vec<RecordedEvent>, LedgerError> {
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE position > ?1 AND position <= ?2 ORDER BY position LIMIT ?3"
    );
    let mut statement = conn.prepare(&sql).map_err(database)?;
    let mut rows = statement
        .query((to_i64(after), to_i64(up_to), to_i64(limit as u64)))
        .map_err(database)?;
    let mut decoder = RowDecoder::default();
    let mut events = Vec::with_capacity(limit);
    while let Some(row) = rows.next().map_err(database)? {
        events.push(decoder.decode(event_row(row)?)?);
    }
    Ok(events)
}

fn event_row(row: &rusqlite::Row<'_>) -> Result<EventRow, LedgerError> {
    let id = row
        .get_ref(1)
        .and_then(|v| Ok(v.as_blob()?))
        .map_err(database)?;
    let id = uuid::Uuid::from_slice(id)
        .map_err(|error| LedgerError::Integrity(format!("event id is not 16 bytes: {error}")))?;
    Ok(EventRow {
        position: row.get(0).map_err(database)?,
        id,
        stream_id: row.get(2).map_err(database)?,
        version: row.get(3).map_err(database)?,
        event_type: row.get(4).map_err(database)?,
        schema_version: row.get(5).map_err(database)?,
        payload: row.get(6).map_err(database)?,
        metadata: row.get(7).map_err(database)?,
        recorded_at: recorded_at(row.get(8).map_err(database)?)?,
    })
}

fn unavailable(error: rusqlite::Error) -> LedgerError {
    LedgerError::unavailable("SQLite reader", error)
}

fn database(error: rusqlite::Error) -> LedgerError {
    LedgerError::database("SQLite read", error)
}
