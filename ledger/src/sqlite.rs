//! The embedded SQLite backend: one file in WAL mode, one writer connection,
//! readers alongside. SQLite's write lock makes positions dense and committed in
//! order, so the release horizon is simply the highest committed position.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqliteConnection, SqlitePool};
use time::OffsetDateTime;

use crate::envelope::{Position, RecordedEvent, StreamId};
use crate::error::LedgerError;
use crate::hash::{self, GENESIS};
use crate::migrate;
use crate::store::{AppendOutcome, EventRow, LedgerConfig, PendingAppend, to_i64, to_u64};

/// A SQLite-backed store.
#[derive(Clone, Debug)]
pub(crate) struct SqliteStore {
    writer: SqlitePool,
    readers: SqlitePool,
}

const EVENT_COLUMNS: &str = "position, id, stream_id, version, event_type, schema_version, payload, metadata, recorded_at_us";

fn event_row(row: &sqlx::sqlite::SqliteRow) -> Result<EventRow, LedgerError> {
    let micros: i64 = row.try_get(8)?;
    let recorded_at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000)
        .map_err(|_| LedgerError::Integrity(format!("recorded_at out of range: {micros}")))?;
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

impl SqliteStore {
    /// Opens (creating if missing) the file at `path` and migrates it.
    pub(crate) async fn open(path: &str, config: &LedgerConfig) -> Result<Self, LedgerError> {
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{path}"))
            .map_err(|error| LedgerError::InvalidLocation(error.to_string()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: an append is durable when it returns, as on Postgres.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_millis(config.connect_timeout_ms))
            .foreign_keys(true);
        let timeout = Duration::from_millis(config.connect_timeout_ms);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(timeout)
            .connect_with(options.clone())
            .await
            .map_err(|error| LedgerError::Unavailable(format!("{path}: {error}")))?;
        migrate::sqlite(&writer).await?;
        let readers = SqlitePoolOptions::new()
            .max_connections(config.pool_size.clamp(1, 8))
            .acquire_timeout(timeout)
            .connect_with(options.read_only(true))
            .await
            .map_err(|error| LedgerError::Unavailable(format!("{path}: {error}")))?;
        Ok(Self { writer, readers })
    }

    /// The writer pool, for tools that need raw access (benchmark, tests).
    pub(crate) fn writer(&self) -> &SqlitePool {
        &self.writer
    }

    /// The reader pool.
    pub(crate) fn readers(&self) -> &SqlitePool {
        &self.readers
    }

    pub(crate) async fn commit(
        &self,
        batch: &[PendingAppend],
    ) -> Result<Vec<AppendOutcome>, LedgerError> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let mut outcomes = Vec::with_capacity(batch.len());
        for append in batch {
            outcomes.push(apply(&mut tx, append).await?);
        }
        tx.commit().await?;
        Ok(outcomes)
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
            .fetch_all(&self.readers)
            .await?;
        rows.iter()
            .map(|row| event_row(row)?.into_event())
            .collect()
    }

    pub(crate) async fn stream_version(&self, stream: &StreamId) -> Result<u64, LedgerError> {
        let version: Option<i64> =
            sqlx::query_scalar("SELECT max(version) FROM events WHERE stream_id = ?")
                .bind(stream.as_str())
                .fetch_one(&self.readers)
                .await?;
        Ok(version.map_or(0, to_u64))
    }

    pub(crate) async fn read_range(
        &self,
        after: u64,
        up_to: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, LedgerError> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE position > ? AND position <= ? ORDER BY position LIMIT ?"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(to_i64(after))
            .bind(to_i64(up_to))
            .bind(to_i64(limit as u64))
            .fetch_all(&self.readers)
            .await?;
        let mut events = Vec::with_capacity(rows.len());
        for row in &rows {
            events.push(event_row(row)?.into_event()?);
        }
        Ok(events)
    }

    /// The highest committed position: with one writer, every lower one is final.
    pub(crate) async fn released(&self) -> Result<u64, LedgerError> {
        let max: Option<i64> = sqlx::query_scalar("SELECT max(position) FROM events")
            .fetch_one(&self.readers)
            .await?;
        Ok(max.map_or(0, to_u64))
    }
}

/// Applies one append inside the batch's transaction (which holds the write lock).
async fn apply(
    conn: &mut SqliteConnection,
    append: &PendingAppend,
) -> Result<AppendOutcome, LedgerError> {
    let stream = append.stream.as_str();
    if let Some(key) = &append.key {
        let found = sqlx::query(
            "SELECT stream_id, last_version, positions FROM idempotency_keys WHERE key = ?",
        )
        .bind(key.as_str())
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(row) = found {
            let original: String = row.try_get(0)?;
            if original != stream {
                return Ok(AppendOutcome::KeyReused);
            }
            let positions: String = row.try_get(2)?;
            let positions: Vec<u64> = serde_json::from_str(&positions).map_err(|error| {
                LedgerError::Integrity(format!("idempotency key positions: {error}"))
            })?;
            return Ok(AppendOutcome::Replayed {
                stream_version: to_u64(row.try_get(1)?),
                positions: positions.into_iter().map(Position).collect(),
            });
        }
    }
    let ids: Vec<String> = append
        .events
        .iter()
        .map(|e| e.id.simple().to_string())
        .collect();
    let ids =
        serde_json::to_string(&ids).map_err(|error| LedgerError::Integrity(error.to_string()))?;
    let found = sqlx::query(
        "SELECT position, stream_id, version FROM events \
          WHERE id IN (SELECT unhex(value) FROM json_each(?)) ORDER BY version",
    )
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    if !found.is_empty() {
        let mut positions = Vec::with_capacity(found.len());
        let mut stream_version = 0;
        for row in &found {
            let other: String = row.try_get(1)?;
            if other != stream {
                return Ok(AppendOutcome::IdsReused);
            }
            positions.push(Position(to_u64(row.try_get(0)?)));
            stream_version = stream_version.max(to_u64(row.try_get(2)?));
        }
        if positions.len() != append.events.len() {
            return Ok(AppendOutcome::IdsReused);
        }
        return Ok(AppendOutcome::Replayed {
            stream_version,
            positions,
        });
    }
    let head = sqlx::query(
        "SELECT version, chain_hash FROM events WHERE stream_id = ? ORDER BY version DESC LIMIT 1",
    )
    .bind(stream)
    .fetch_optional(&mut *conn)
    .await?;
    let (head_version, mut chain) = match head {
        Some(row) => {
            let bytes: Vec<u8> = row.try_get(1)?;
            let chain = hash::from_bytes(&bytes).ok_or_else(|| {
                LedgerError::Integrity(format!(
                    "stream {stream}: stored chain hash is not 32 bytes"
                ))
            })?;
            (to_u64(row.try_get(0)?), chain)
        }
        None => (0, GENESIS),
    };
    if let Some(required) = append.expected.required()
        && required != head_version
    {
        return Ok(AppendOutcome::Conflict {
            actual: head_version,
        });
    }
    let mut positions = Vec::with_capacity(append.events.len());
    for (offset, event) in (1u64..).zip(&append.events) {
        let version = head_version + offset;
        chain = hash::chain_step(&chain, version, &event.content_hash);
        let position: i64 = sqlx::query_scalar(
            "INSERT INTO events (id, stream_id, version, event_type, schema_version, payload, metadata, \
                                 recorded_at_us, content_hash, chain_hash) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING position",
        )
        .bind(event.id)
        .bind(stream)
        .bind(to_i64(version))
        .bind(event.event_type.as_str())
        .bind(i64::from(event.schema_version))
        .bind(event.payload.as_str())
        .bind(event.metadata.as_str())
        .bind(hash::unix_micros(event.recorded_at))
        .bind(&event.content_hash[..])
        .bind(&chain[..])
        .fetch_one(&mut *conn)
        .await?;
        positions.push(Position(to_u64(position)));
    }
    let stream_version = head_version + append.events.len() as u64;
    if let Some(key) = &append.key {
        let list: Vec<u64> = positions.iter().map(|p| p.0).collect();
        sqlx::query("INSERT INTO idempotency_keys (key, stream_id, last_version, positions) VALUES (?, ?, ?, ?)")
            .bind(key.as_str())
            .bind(stream)
            .bind(to_i64(stream_version))
            .bind(serde_json::to_string(&list).map_err(|error| LedgerError::Integrity(error.to_string()))?)
            .execute(&mut *conn)
            .await?;
    }
    Ok(AppendOutcome::Appended {
        stream_version,
        positions,
    })
}
