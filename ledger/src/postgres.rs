//! The Postgres backend: one `recur_append` call per coalesced commit, and the
//! release horizon that keeps global order gap-free without serialising writers.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Row};
use tokio::sync::Mutex;

use crate::envelope::{Position, RecordedEvent, StreamId};
use crate::error::{LedgerError, from_sqlx};
use crate::limits::COMMIT_ATTEMPTS_MAX;
use crate::migrate;
use crate::store::{AppendOutcome, EventRow, LedgerConfig, PendingAppend, to_i64, to_u64};

/// Fences waiting to be passed; more are simply registered by a later probe.
const PENDING_FENCES_MAX: usize = 64;

/// What the release horizon knows: the released position and fences in flight.
#[derive(Debug, Default)]
struct Horizon {
    released: u64,
    /// `(allocated, fence xid)`: positions `<= allocated` are final once xmin passes the fence.
    pending: VecDeque<(u64, i64)>,
}

/// A Postgres-backed store.
#[derive(Clone, Debug)]
pub(crate) struct PgStore {
    pool: PgPool,
    horizon: Arc<Mutex<Horizon>>,
}

const EVENT_COLUMNS: &str = "position, id, stream_id, version, event_type, schema_version, \
     payload::text, metadata::text, recorded_at";

fn event_row(row: &sqlx::postgres::PgRow) -> Result<EventRow, sqlx::Error> {
    Ok(EventRow {
        position: row.try_get(0)?,
        id: row.try_get(1)?,
        stream_id: row.try_get(2)?,
        version: row.try_get(3)?,
        event_type: row.try_get(4)?,
        schema_version: row.try_get(5)?,
        payload: row.try_get(6)?,
        metadata: row.try_get(7)?,
        recorded_at: row.try_get(8)?,
    })
}

/// Errors after which the whole batch is simply tried again: a concurrent process
/// won a race (unique violation, deadlock, serialisation failure).
fn is_retryable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => {
            matches!(db.code().as_deref(), Some("23505" | "40P01" | "40001"))
        }
        _ => false,
    }
}

impl PgStore {
    /// Connects, migrates, and checks that the schema is usable.
    pub(crate) async fn open(config: &LedgerConfig) -> Result<Self, LedgerError> {
        let options: PgConnectOptions = config
            .location
            .parse()
            .map_err(|error| LedgerError::InvalidLocation(format!("{error}")))?;
        let pool = PgPoolOptions::new()
            .max_connections(config.pool_size.max(2))
            .acquire_timeout(Duration::from_millis(config.connect_timeout_ms))
            .connect_with(options)
            .await
            .map_err(|error| LedgerError::Unavailable(error.to_string()))?;
        migrate::postgres(&pool).await?;
        Ok(Self {
            pool,
            horizon: Arc::new(Mutex::new(Horizon::default())),
        })
    }

    /// The pool, for tools that need raw access (benchmark, tests).
    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub(crate) async fn commit(
        &self,
        batch: &[PendingAppend],
    ) -> Result<Vec<AppendOutcome>, LedgerError> {
        let events: usize = batch.iter().map(|a| a.events.len()).sum();
        let mut a_stream = Vec::with_capacity(batch.len());
        let mut a_expected = Vec::with_capacity(batch.len());
        let mut a_key = Vec::with_capacity(batch.len());
        let mut a_count = Vec::with_capacity(batch.len());
        let mut e_id = Vec::with_capacity(events);
        let mut e_type = Vec::with_capacity(events);
        let mut e_schema = Vec::with_capacity(events);
        let mut e_payload = Vec::with_capacity(events);
        let mut e_metadata = Vec::with_capacity(events);
        let mut e_recorded = Vec::with_capacity(events);
        let mut e_content = Vec::with_capacity(events);
        for append in batch {
            a_stream.push(append.stream.as_str());
            a_expected.push(append.expected.required().map_or(-1, to_i64));
            a_key.push(append.key.as_ref().map(|k| k.as_str()));
            a_count.push(i32::try_from(append.events.len()).unwrap_or(i32::MAX));
            for event in &append.events {
                e_id.push(event.id);
                e_type.push(event.event_type.as_str());
                e_schema.push(i32::try_from(event.schema_version).unwrap_or(i32::MAX));
                e_payload.push(event.payload.as_str());
                e_metadata.push(event.metadata.as_str());
                e_recorded.push(event.recorded_at);
                e_content.push(event.content_hash.to_vec());
            }
        }
        for _attempt in 0..COMMIT_ATTEMPTS_MAX {
            let mut tx = self.pool.begin().await?;
            let rows = sqlx::query(
                "SELECT append_index, outcome, stream_version, positions \
                   FROM recur_append($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            )
            .bind(&a_stream)
            .bind(&a_expected)
            .bind(&a_key)
            .bind(&a_count)
            .bind(&e_id)
            .bind(&e_type)
            .bind(&e_schema)
            .bind(&e_payload)
            .bind(&e_metadata)
            .bind(&e_recorded)
            .bind(&e_content)
            .fetch_all(&mut *tx)
            .await;
            let rows = match rows {
                Ok(rows) => rows,
                Err(error) if is_retryable(&error) => {
                    tx.rollback().await?;
                    continue;
                }
                Err(error) => return Err(from_sqlx(error)),
            };
            tx.commit().await?;
            let mut outcomes = Vec::with_capacity(batch.len());
            for row in rows {
                let outcome: i16 = row.try_get(1)?;
                let version: Option<i64> = row.try_get(2)?;
                let positions: Option<Vec<i64>> = row.try_get(3)?;
                let stream_version = version.map_or(0, to_u64);
                let positions = positions
                    .unwrap_or_default()
                    .into_iter()
                    .map(|p| Position(to_u64(p)))
                    .collect();
                outcomes.push(match outcome {
                    0 => AppendOutcome::Appended {
                        stream_version,
                        positions,
                    },
                    1 => AppendOutcome::Replayed {
                        stream_version,
                        positions,
                    },
                    2 => AppendOutcome::Conflict {
                        actual: stream_version,
                    },
                    3 => AppendOutcome::KeyReused,
                    _ => AppendOutcome::IdsReused,
                });
            }
            if outcomes.len() != batch.len() {
                return Err(LedgerError::Integrity(format!(
                    "recur_append answered {} outcomes for {} appends",
                    outcomes.len(),
                    batch.len()
                )));
            }
            return Ok(outcomes);
        }
        Err(LedgerError::Contention {
            attempts: COMMIT_ATTEMPTS_MAX,
        })
    }

    pub(crate) async fn read_stream(
        &self,
        stream: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, LedgerError> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE stream_id = $1 AND version >= $2 ORDER BY version LIMIT $3"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(stream.as_str())
            .bind(to_i64(from_version))
            .bind(to_i64(limit as u64))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| event_row(row)?.into_event())
            .collect()
    }

    pub(crate) async fn stream_version(&self, stream: &StreamId) -> Result<u64, LedgerError> {
        let version: Option<i64> =
            sqlx::query_scalar("SELECT max(version) FROM events WHERE stream_id = $1")
                .bind(stream.as_str())
                .fetch_one(&self.pool)
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
            "SELECT {EVENT_COLUMNS} FROM events WHERE position > $1 AND position <= $2 ORDER BY position LIMIT $3"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(to_i64(after))
            .bind(to_i64(up_to))
            .bind(to_i64(limit as u64))
            .fetch_all(&self.pool)
            .await?;
        let mut events = Vec::with_capacity(rows.len());
        for row in &rows {
            events.push(event_row(row)?.into_event()?);
        }
        Ok(events)
    }

    /// One probe of the release horizon; returns the highest allocated position seen.
    async fn probe(&self) -> Result<u64, LedgerError> {
        let mut horizon = self.horizon.lock().await;
        let known = horizon
            .pending
            .back()
            .map_or(horizon.released, |(allocated, _)| *allocated);
        let row = sqlx::query("SELECT xmin_now, allocated, fence FROM recur_release_probe($1)")
            .bind(to_i64(known))
            .fetch_one(&self.pool)
            .await?;
        let xmin_now: i64 = row.try_get(0)?;
        let allocated = to_u64(row.try_get(1)?);
        let fence: Option<i64> = row.try_get(2)?;
        while let Some(&(candidate, candidate_fence)) = horizon.pending.front() {
            if candidate_fence > xmin_now {
                break;
            }
            horizon.released = horizon.released.max(candidate);
            horizon.pending.pop_front();
        }
        if let Some(fence) = fence
            && allocated > known
            && horizon.pending.len() < PENDING_FENCES_MAX
        {
            horizon.pending.push_back((allocated, fence));
        }
        Ok(allocated)
    }

    /// `(released, allocated)` after one probe.
    pub(crate) async fn release_status(&self) -> Result<(u64, u64), LedgerError> {
        let allocated = self.probe().await?;
        Ok((self.horizon.lock().await.released, allocated))
    }

    /// The release horizon; waits up to `wait` for positions allocated before the call.
    pub(crate) async fn released(&self, wait: Duration) -> Result<u64, LedgerError> {
        let target = self.probe().await?;
        let deadline = Instant::now() + wait;
        let mut pause = Duration::ZERO;
        loop {
            let released = self.horizon.lock().await.released;
            if released >= target || Instant::now() >= deadline {
                return Ok(released);
            }
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            pause = (pause * 2)
                .max(Duration::from_micros(500))
                .min(Duration::from_millis(20));
            self.probe().await?;
        }
    }
}
