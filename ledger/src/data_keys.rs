//! Per-owner data keys, stored beside the ledger (same database, same backend):
//! the keys that encrypt one customer's personal data in the ledger's events.
//!
//! The ledger stores a key only *wrapped* — encrypted by a master key that
//! never enters the database — with the master key's id, and knows nothing of
//! cryptography: wrapping and unwrapping happen in the billing service. What it
//! guarantees is the lifecycle: one key per owner (the first writer wins a
//! race, every other writer gets the winner's key), and destruction for good —
//! a destroyed key leaves a tombstone, so no new key is ever made for the owner
//! again, and its bytes are gone from the table (on SQLite also overwritten in
//! the file: the writer connection runs with `secure_delete`).

use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::LedgerError;
use crate::requests::{from_micros, micros};
use crate::store::{Backend, Ledger};

/// What the ledger holds for an owner's data key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataKey {
    /// No key was ever made.
    Missing,
    /// The key, wrapped by the master key `master_key_id`.
    Live {
        /// The wrapped key.
        wrapped: Vec<u8>,
        /// The id of the master key that wrapped it.
        master_key_id: String,
    },
    /// The key was destroyed (the owner's personal data was erased).
    Destroyed {
        /// When.
        at: OffsetDateTime,
    },
}

/// A live key as listed for rewrapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrappedKey {
    /// Whose key.
    pub owner: Uuid,
    /// The wrapped key.
    pub wrapped: Vec<u8>,
    /// The id of the master key that wrapped it.
    pub master_key_id: String,
}

/// A stored row: the wrapped key, its master key's id, when it was destroyed.
type Row = (Option<Vec<u8>>, Option<String>, Option<OffsetDateTime>);
/// The same on SQLite, the time in microseconds.
type SqliteRow = (Option<Vec<u8>>, Option<String>, Option<i64>);

impl Ledger {
    /// The data key of `owner`.
    ///
    /// # Errors
    /// Database errors.
    pub async fn data_key(&self, owner: Uuid) -> Result<DataKey, LedgerError> {
        let row: Option<Row> =
            match self.backend() {
                Backend::Postgres(store) => sqlx::query_as(
                    "SELECT wrapped, master_key_id, destroyed_at FROM data_keys WHERE owner = $1",
                )
                .bind(owner)
                .fetch_optional(store.pool())
                .await?,
                Backend::Sqlite(store) => {
                    let row: Option<SqliteRow> = sqlx::query_as(
                    "SELECT wrapped, master_key_id, destroyed_at_us FROM data_keys WHERE owner = ?",
                )
                .bind(owner)
                .fetch_optional(store.writer())
                .await?;
                    row.map(|(wrapped, id, at)| {
                        Ok::<_, LedgerError>((wrapped, id, at.map(from_micros).transpose()?))
                    })
                    .transpose()?
                }
            };
        Ok(match row {
            None => DataKey::Missing,
            Some((Some(wrapped), Some(master_key_id), None)) => DataKey::Live {
                wrapped,
                master_key_id,
            },
            Some((_, _, Some(at))) => DataKey::Destroyed { at },
            Some(_) => {
                return Err(LedgerError::Integrity(format!(
                    "data_keys: the row of {owner} is neither live nor destroyed"
                )));
            }
        })
    }

    /// Stores `wrapped` as the data key of `owner` unless it has one (or had
    /// one, destroyed); answers with what is stored after: the key of whichever
    /// writer came first.
    ///
    /// # Errors
    /// Database errors.
    pub async fn insert_data_key(
        &self,
        owner: Uuid,
        wrapped: &[u8],
        master_key_id: &str,
    ) -> Result<DataKey, LedgerError> {
        let now = self.clock().now();
        match self.backend() {
            Backend::Postgres(store) => {
                sqlx::query(
                    "INSERT INTO data_keys (owner, wrapped, master_key_id, created_at)
                     VALUES ($1, $2, $3, $4) ON CONFLICT (owner) DO NOTHING",
                )
                .bind(owner)
                .bind(wrapped)
                .bind(master_key_id)
                .bind(now)
                .execute(store.pool())
                .await?;
            }
            Backend::Sqlite(store) => {
                sqlx::query(
                    "INSERT INTO data_keys (owner, wrapped, master_key_id, created_at_us)
                     VALUES (?1, ?2, ?3, ?4) ON CONFLICT (owner) DO NOTHING",
                )
                .bind(owner)
                .bind(wrapped)
                .bind(master_key_id)
                .bind(micros(now))
                .execute(store.writer())
                .await?;
            }
        }
        self.data_key(owner).await
    }

    /// Destroys the data key of `owner` (leaving a tombstone, also when it had
    /// none, so none is made later); true when this call destroyed a live key
    /// (of concurrent erasures, exactly one). On SQLite the write-ahead log is
    /// then checkpointed and truncated, so no earlier copy of the page lingers
    /// there; on Postgres the table is vacuumed (which frees the old row
    /// version, but neither zeroes it nor reaches the WAL, archives or
    /// replicas: docs/security.md).
    ///
    /// # Errors
    /// Database errors.
    pub async fn destroy_data_key(&self, owner: Uuid) -> Result<bool, LedgerError> {
        let now = self.clock().now();
        let destroyed = match self.backend() {
            Backend::Postgres(store) => {
                let destroyed = sqlx::query(
                    "UPDATE data_keys SET wrapped = NULL, master_key_id = NULL, destroyed_at = $2
                      WHERE owner = $1 AND wrapped IS NOT NULL",
                )
                .bind(owner)
                .bind(now)
                .execute(store.pool())
                .await?
                .rows_affected();
                sqlx::query(
                    "INSERT INTO data_keys (owner, wrapped, master_key_id, created_at, destroyed_at)
                     VALUES ($1, NULL, NULL, $2, $2) ON CONFLICT (owner) DO NOTHING",
                )
                .bind(owner)
                .bind(now)
                .execute(store.pool())
                .await?;
                // Best effort: a busy table is vacuumed later by autovacuum.
                if let Err(error) = sqlx::raw_sql("VACUUM data_keys")
                    .execute(store.pool())
                    .await
                {
                    tracing::warn!(%error, "vacuuming data_keys after an erasure failed");
                }
                destroyed
            }
            Backend::Sqlite(store) => {
                let destroyed = sqlx::query(
                    "UPDATE data_keys SET wrapped = NULL, master_key_id = NULL, destroyed_at_us = ?2
                      WHERE owner = ?1 AND wrapped IS NOT NULL",
                )
                .bind(owner)
                .bind(micros(now))
                .execute(store.writer())
                .await?
                .rows_affected();
                sqlx::query(
                    "INSERT INTO data_keys (owner, wrapped, master_key_id, created_at_us, destroyed_at_us)
                     VALUES (?1, NULL, NULL, ?2, ?2) ON CONFLICT (owner) DO NOTHING",
                )
                .bind(owner)
                .bind(micros(now))
                .execute(store.writer())
                .await?;
                truncate_wal(store).await?;
                destroyed
            }
        };
        Ok(destroyed == 1)
    }

    /// The ids of the master keys that wrap live data keys.
    ///
    /// # Errors
    /// Database errors.
    pub async fn data_key_masters(&self) -> Result<Vec<String>, LedgerError> {
        let sql = "SELECT DISTINCT master_key_id FROM data_keys WHERE wrapped IS NOT NULL";
        Ok(match self.backend() {
            Backend::Postgres(store) => sqlx::query_scalar(sql).fetch_all(store.pool()).await?,
            Backend::Sqlite(store) => sqlx::query_scalar(sql).fetch_all(store.writer()).await?,
        })
    }

    /// Up to `limit` live keys after `after` (by owner), for rewrapping under
    /// a new master key.
    ///
    /// # Errors
    /// Database errors.
    pub async fn live_data_keys(
        &self,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<WrappedKey>, LedgerError> {
        let after = after.unwrap_or(Uuid::nil());
        let rows: Vec<(Uuid, Vec<u8>, String)> = match self.backend() {
            Backend::Postgres(store) => {
                sqlx::query_as(
                    "SELECT owner, wrapped, master_key_id FROM data_keys
                      WHERE wrapped IS NOT NULL AND owner > $1 ORDER BY owner LIMIT $2",
                )
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(store.pool())
                .await?
            }
            Backend::Sqlite(store) => {
                sqlx::query_as(
                    "SELECT owner, wrapped, master_key_id FROM data_keys
                      WHERE wrapped IS NOT NULL AND owner > ?1 ORDER BY owner LIMIT ?2",
                )
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(store.writer())
                .await?
            }
        };
        Ok(rows
            .into_iter()
            .map(|(owner, wrapped, master_key_id)| WrappedKey {
                owner,
                wrapped,
                master_key_id,
            })
            .collect())
    }

    /// Replaces a live key's wrapping, if it is still wrapped by
    /// `old_master_key_id` (not destroyed or rewrapped meanwhile); true if so.
    ///
    /// # Errors
    /// Database errors.
    pub async fn rewrap_data_key(
        &self,
        owner: Uuid,
        old_master_key_id: &str,
        wrapped: &[u8],
        master_key_id: &str,
    ) -> Result<bool, LedgerError> {
        let changed = match self.backend() {
            Backend::Postgres(store) => sqlx::query(
                "UPDATE data_keys SET wrapped = $3, master_key_id = $4
                  WHERE owner = $1 AND master_key_id = $2 AND wrapped IS NOT NULL",
            )
            .bind(owner)
            .bind(old_master_key_id)
            .bind(wrapped)
            .bind(master_key_id)
            .execute(store.pool())
            .await?
            .rows_affected(),
            Backend::Sqlite(store) => sqlx::query(
                "UPDATE data_keys SET wrapped = ?3, master_key_id = ?4
                  WHERE owner = ?1 AND master_key_id = ?2 AND wrapped IS NOT NULL",
            )
            .bind(owner)
            .bind(old_master_key_id)
            .bind(wrapped)
            .bind(master_key_id)
            .execute(store.writer())
            .await?
            .rows_affected(),
        };
        Ok(changed == 1)
    }
}

/// Checkpoints the SQLite write-ahead log into the file and truncates it, so
/// that no frame holding an overwritten page is left; readers in the middle of
/// a snapshot keep it busy, so it is retried a few times, then left to the next
/// checkpoint with a warning.
async fn truncate_wal(store: &crate::sqlite::SqliteStore) -> Result<(), LedgerError> {
    const ATTEMPTS: u32 = 20;
    const PAUSE_MS: u64 = 50;
    for _ in 0..ATTEMPTS {
        // (busy, frames in the log, frames checkpointed)
        let (busy, _, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
            .fetch_one(store.writer())
            .await?;
        if busy == 0 {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(PAUSE_MS)).await;
    }
    tracing::warn!(
        "the SQLite write-ahead log stayed busy after an erasure: the destroyed key's old page \
         leaves it at the next checkpoint"
    );
    Ok(())
}
