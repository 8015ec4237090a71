//! The embedded SQLite backend: one file in WAL mode, one writer connection,
//! readers alongside. SQLite's write lock makes positions dense and committed in
//! order, so the release horizon is simply the highest committed position.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Row as _, SqliteConnection, SqlitePool};
use time::OffsetDateTime;

use crate::envelope::{IdempotencyKey, Position, RecordedEvent, StreamId};
use crate::error::LedgerError;
use crate::hash::{self, Hash};
use crate::migrate;
use crate::plan::{self, Known, Plan};
use crate::sqlite_pages::PageReader;
use crate::store::{
    AppendOutcome, EventRow, LedgerConfig, PendingAppend, PreparedEvent, decode_rows, to_i64,
    to_u64,
};

/// A SQLite-backed store.
#[derive(Clone, Debug)]
pub(crate) struct SqliteStore {
    writer: SqlitePool,
    readers: SqlitePool,
    /// Pages of the global order (replays, subscriptions, rebuilds).
    pages: PageReader,
}

/// The columns of an event, in [`EventRow`] order (sqlx and rusqlite readers alike).
pub(crate) const EVENT_COLUMNS: &str = "position, id, stream_id, version, event_type, schema_version, payload, metadata, recorded_at_us";

/// `recorded_at` from its stored microseconds since the epoch.
pub(crate) fn recorded_at(micros: i64) -> Result<OffsetDateTime, LedgerError> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000)
        .map_err(|_| LedgerError::Integrity(format!("recorded_at out of range: {micros}")))
}

fn event_row(row: &sqlx::sqlite::SqliteRow) -> Result<EventRow, LedgerError> {
    let recorded_at = recorded_at(row.try_get(8)?)?;
    Ok(EventRow {
        position: row.try_get(0)?,
        id: row.try_get(1)?,
        stream_id: row.try_get(2)?,
        version: row.try_get(3)?,
        event_type: row.try_get(4)?,
        schema_version: row.try_get(5)?,
        payload: row.try_get(6)?,
        metadata: row.try_get(7)?,
        recorded_at,
    })
}

/// Rows a query's worker may buffer ahead of the reader (a replay page).
const ROWS_BUFFERED: usize = 5_000;

impl SqliteStore {
    /// Opens the file at `path` and migrates it; a missing file is made only if
    /// `config.create_if_missing` or the URL's `mode=rwc` asks for it.
    pub(crate) async fn open(path: &str, config: &LedgerConfig) -> Result<Self, LedgerError> {
        let mut options = SqliteConnectOptions::from_str(&format!("sqlite://{path}"))
            .map_err(|error| LedgerError::InvalidLocation(error.to_string()))?;
        // Only ever switched on here: a `mode=rwc` the URL set is kept.
        if config.create_if_missing {
            options = options.create_if_missing(true);
        }
        let options = options
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: an append is durable when it returns, as on Postgres.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_millis(config.connect_timeout_ms))
            .foreign_keys(true)
            // Deleted or overwritten bytes are zeroed in the file, not left in
            // free pages: a destroyed data key (erasure) must not linger.
            .pragma("secure_delete", "ON")
            // sqlx hands rows over one channel message at a time; room for a whole
            // replay page lets the worker run ahead instead of waking per row.
            .row_buffer_size(ROWS_BUFFERED);
        let timeout = Duration::from_millis(config.connect_timeout_ms);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(timeout)
            .connect_with(options.clone())
            .await
            .map_err(|error| {
                // Asked after the fact rather than before, so that whatever made
                // SQLite create the file (the flag, `mode=rwc`) is honoured as is.
                let file = options.get_filename();
                let folder = file.parent().filter(|p| !p.as_os_str().is_empty());
                if let Some(folder) = folder.filter(|folder| !folder.exists()) {
                    // No file can be made there, asked or not.
                    LedgerError::unavailable(
                        format!("{path}: the folder {} does not exist", folder.display()),
                        error,
                    )
                } else if !file.exists() && !config.create_if_missing {
                    LedgerError::NotFound {
                        path: file.display().to_string(),
                    }
                } else {
                    LedgerError::unavailable(path, error)
                }
            })?;
        migrate::sqlite(&writer).await?;
        let pages = PageReader::new(options.get_filename(), timeout);
        let readers = SqlitePoolOptions::new()
            .max_connections(config.pool_size.clamp(1, 8))
            .acquire_timeout(timeout)
            .connect_with(options.read_only(true))
            .await
            .map_err(|error| LedgerError::unavailable(path, error))?;
        Ok(Self {
            writer,
            readers,
            pages,
        })
    }

    /// The writer pool, for tools that need raw access (benchmark, tests).
    pub(crate) fn writer(&self) -> &SqlitePool {
        &self.writer
    }

    /// The reader pool.
    pub(crate) fn readers(&self) -> &SqlitePool {
        &self.readers
    }

    /// Commits a batch in one transaction under SQLite's write lock.
    pub(crate) async fn commit(
        &self,
        batch: &[PendingAppend],
    ) -> Result<Vec<AppendOutcome>, LedgerError> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let known = lookup(&mut tx, batch).await?;
        let plans = plan::plan(batch, &known);
        let inserted = insert(&mut tx, batch, &plans).await?;
        tx.commit().await?;
        Ok(plan::outcomes(plans, &inserted))
    }

    pub(crate) async fn read_stream(
        &self,
        stream: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, LedgerError> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE stream_id = ? AND version >= ? ORDER BY version LIMIT ?"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(stream.as_str())
            .bind(to_i64(from_version))
            .bind(to_i64(limit as u64))
            .fetch(&self.readers);
        decode_rows(rows, limit, event_row).await
    }

    pub(crate) async fn stream_version(&self, stream: &StreamId) -> Result<u64, LedgerError> {
        let version: Option<i64> =
            sqlx::query_scalar("SELECT max(version) FROM events WHERE stream_id = ?")
                .bind(stream.as_str())
                .fetch_one(&self.readers)
                .await?;
        Ok(version.map_or(0, to_u64))
    }

    pub(crate) async fn appended_under(&self, prefix: &str) -> Result<bool, LedgerError> {
        // GLOB is case-sensitive and can use the key's index; the prefix holds no wildcard.
        debug_assert!(
            prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        );
        let found: Option<(String,)> =
            sqlx::query_as("SELECT key FROM idempotency_keys WHERE key GLOB ?1 LIMIT 1")
                .bind(format!("{prefix}*"))
                .fetch_optional(&self.readers)
                .await?;
        Ok(found.is_some())
    }

    pub(crate) async fn append_of(
        &self,
        key: &IdempotencyKey,
    ) -> Result<Option<(String, u64, u64)>, LedgerError> {
        let row: Option<(String, i64, i64)> = sqlx::query_as(
            "SELECT stream_id, first_version, last_version FROM idempotency_keys WHERE key = ?",
        )
        .bind(key.as_str())
        .fetch_optional(&self.readers)
        .await?;
        Ok(row.map(|(stream, first, last)| (stream, to_u64(first), to_u64(last))))
    }

    pub(crate) async fn read_range(
        &self,
        after: u64,
        up_to: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, LedgerError> {
        self.pages.read_range(after, up_to, limit).await
    }

    /// Every committed event after `after` with its stored chain hash, for verification.
    pub(crate) async fn scan_with_chain(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(EventRow, Vec<u8>)>, LedgerError> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS}, chain_hash FROM events WHERE position > ? ORDER BY position LIMIT ?"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(to_i64(after))
            .bind(to_i64(limit as u64))
            .fetch_all(&self.readers)
            .await?;
        rows.iter()
            .map(|row| Ok((event_row(row)?, row.try_get(9)?)))
            .collect()
    }

    /// A stream's rows with their stored chain hashes, from `from_version`, for proofs.
    pub(crate) async fn stream_with_chain(
        &self,
        stream: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<(EventRow, Vec<u8>)>, LedgerError> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS}, chain_hash FROM events WHERE stream_id = ? AND version >= ? \
             ORDER BY version LIMIT ?"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(stream.as_str())
            .bind(to_i64(from_version))
            .bind(to_i64(limit as u64))
            .fetch_all(&self.readers)
            .await?;
        rows.iter()
            .map(|row| Ok((event_row(row)?, row.try_get(9)?)))
            .collect()
    }

    /// The highest committed position: with one writer, every lower one is final.
    pub(crate) async fn released(&self) -> Result<u64, LedgerError> {
        let max: Option<i64> = sqlx::query_scalar("SELECT max(position) FROM events")
            .fetch_one(&self.readers)
            .await?;
        Ok(max.map_or(0, to_u64))
    }
}

fn json_list<T: serde::Serialize>(items: &[T]) -> Result<String, LedgerError> {
    serde_json::to_string(items).map_err(|error| LedgerError::Integrity(error.to_string()))
}

/// Stream heads, committed ids and committed keys that the batch touches.
async fn lookup(
    conn: &mut SqliteConnection,
    batch: &[PendingAppend],
) -> Result<Known, LedgerError> {
    let mut streams: Vec<&str> = batch.iter().map(|a| a.stream.as_str()).collect();
    streams.dedup();
    let ids: Vec<String> = batch
        .iter()
        .flat_map(|a| a.events.iter().map(|e| e.id.simple().to_string()))
        .collect();
    let keys: Vec<&str> = batch
        .iter()
        .filter_map(|a| a.key.as_ref().map(|k| k.as_str()))
        .collect();
    let mut known = Known::default();
    let heads = sqlx::query(
        "SELECT e.stream_id, e.version, e.chain_hash FROM json_each(?) s
           JOIN events e ON e.stream_id = s.value
                        AND e.version = (SELECT max(version) FROM events WHERE stream_id = s.value)",
    )
    .bind(json_list(&streams)?)
    .fetch_all(&mut *conn)
    .await?;
    for row in heads {
        let stream: String = row.try_get(0)?;
        let chain: Vec<u8> = row.try_get(2)?;
        let chain = hash::from_bytes(&chain).ok_or_else(|| {
            LedgerError::Integrity(format!("stream {stream}: chain hash is not 32 bytes"))
        })?;
        known.heads.insert(stream, (to_u64(row.try_get(1)?), chain));
    }
    let found = sqlx::query(
        "SELECT id, stream_id, version, position FROM events WHERE id IN (SELECT unhex(value) FROM json_each(?))",
    )
    .bind(json_list(&ids)?)
    .fetch_all(&mut *conn)
    .await?;
    for row in found {
        let id: uuid::Uuid = row.try_get(0)?;
        known.ids.insert(
            id,
            (
                row.try_get(1)?,
                to_u64(row.try_get(2)?),
                Position(to_u64(row.try_get(3)?)),
            ),
        );
    }
    if !keys.is_empty() {
        let found = sqlx::query(
            "SELECT k.key, k.stream_id, e.version, e.position FROM idempotency_keys k
               JOIN events e ON e.stream_id = k.stream_id AND e.version BETWEEN k.first_version AND k.last_version
              WHERE k.key IN (SELECT value FROM json_each(?)) ORDER BY e.version",
        )
        .bind(json_list(&keys)?)
        .fetch_all(&mut *conn)
        .await?;
        for row in found {
            let entry = known
                .keys
                .entry(row.try_get(0)?)
                .or_insert_with(|| (String::new(), Vec::new()));
            entry.0 = row.try_get(1)?;
            entry
                .1
                .push((to_u64(row.try_get(2)?), Position(to_u64(row.try_get(3)?))));
        }
    }
    Ok(known)
}

/// Rows per INSERT statement: 10 bound values each, under SQLite's 32,766-variable limit.
const ROWS_PER_INSERT_MAX: usize = 1_000;

/// One row to insert: the append it belongs to, its version, the event and its chain hash.
type Row<'a> = (usize, u64, &'a PreparedEvent, &'a Hash);

/// Writes every planned insert with multi-row statements; returns positions per append.
async fn insert(
    conn: &mut SqliteConnection,
    batch: &[PendingAppend],
    plans: &[Plan],
) -> Result<Vec<Vec<Position>>, LedgerError> {
    let mut rows: Vec<Row<'_>> = Vec::new();
    for (index, (append, plan)) in batch.iter().zip(plans).enumerate() {
        if let Plan::Insert {
            first_version,
            chain,
        } = plan
        {
            for ((offset, event), link) in (0u64..).zip(&append.events).zip(chain) {
                rows.push((index, first_version + offset, event, link));
            }
        }
    }
    let mut positions: HashMap<uuid::Uuid, Position> = HashMap::with_capacity(rows.len());
    for chunk in rows.chunks(ROWS_PER_INSERT_MAX) {
        let mut query = QueryBuilder::new(
            "INSERT INTO events (id, stream_id, version, event_type, schema_version, payload, metadata, \
                                 recorded_at_us, chain_hash) ",
        );
        query.push_values(chunk, |mut row, &(index, version, event, link)| {
            row.push_bind(event.id)
                .push_bind(batch[index].stream.as_str())
                .push_bind(to_i64(version))
                .push_bind(event.event_type.as_str())
                .push_bind(i64::from(event.schema_version))
                .push_bind(event.payload.get())
                .push_bind(event.metadata.as_str())
                .push_bind(hash::unix_micros(event.recorded_at))
                .push_bind(&link[..]);
        });
        query.push(" RETURNING id, position");
        for row in query.build().fetch_all(&mut *conn).await? {
            positions.insert(row.try_get(0)?, Position(to_u64(row.try_get(1)?)));
        }
    }
    let mut inserted = vec![Vec::new(); batch.len()];
    for ((append, plan), out) in batch.iter().zip(plans).zip(inserted.iter_mut()) {
        let Plan::Insert { first_version, .. } = plan else {
            continue;
        };
        *out = append
            .events
            .iter()
            .filter_map(|e| positions.get(&e.id).copied())
            .collect();
        if let Some(key) = &append.key {
            sqlx::query("INSERT INTO idempotency_keys (key, stream_id, first_version, last_version) VALUES (?, ?, ?, ?)")
                .bind(key.as_str())
                .bind(append.stream.as_str())
                .bind(to_i64(*first_version))
                .bind(to_i64(first_version + append.events.len() as u64 - 1))
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(inserted)
}
