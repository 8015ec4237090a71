//! Checkpoints of the process managers that follow the ledger (the Stripe
//! translator): how far each has worked, kept in the ledger's database beside
//! the projections' checkpoints (the same `projection_checkpoints` table,
//! migration 0004, one row per name) and moved the same way, by
//! compare-and-set, so two workers sharing a name never move it backwards.
//!
//! A process manager's work is ledger appends, each keyed so that doing it
//! again adds nothing; its checkpoint is moved after that work is committed.
//! A crash in between repeats the work, which finds what it wrote: at least
//! once, with the same effect as exactly once.

use crate::envelope::Position;
use crate::error::LedgerError;
use crate::store::{Backend, Ledger, to_i64, to_u64};

/// A process manager's checkpoint as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The version of the code that moved it (a new version starts over).
    pub version: u32,
    /// The last ledger position whose work is done.
    pub position: Position,
}

impl Ledger {
    /// The checkpoint named `name`, if one was ever saved.
    ///
    /// # Errors
    /// Database errors; [`LedgerError::Integrity`] for a stored version or
    /// position out of range.
    pub async fn checkpoint(&self, name: &str) -> Result<Option<Checkpoint>, LedgerError> {
        let row: Option<(i64, i64)> = match self.backend() {
            Backend::Postgres(store) => {
                sqlx::query_as(
                    "SELECT version, position FROM projection_checkpoints WHERE name = $1",
                )
                .bind(name)
                .fetch_optional(store.pool())
                .await?
            }
            Backend::Sqlite(store) => {
                sqlx::query_as(
                    "SELECT version, position FROM projection_checkpoints WHERE name = ?",
                )
                .bind(name)
                .fetch_optional(store.writer())
                .await?
            }
        };
        row.map(|(version, position)| {
            let version = u32::try_from(version).map_err(|_| {
                LedgerError::Integrity(format!(
                    "checkpoint {name}: version {version} is no version"
                ))
            })?;
            if position < 0 {
                return Err(LedgerError::Integrity(format!(
                    "checkpoint {name}: position {position} is negative"
                )));
            }
            Ok(Checkpoint {
                version,
                position: Position(to_u64(position)),
            })
        })
        .transpose()
    }

    /// Sets the checkpoint `name` to `position` under `version`, whatever it
    /// held: a new process manager, a new version of its code, or an operator
    /// asking to start over.
    ///
    /// # Errors
    /// Database errors.
    pub async fn reset_checkpoint(
        &self,
        name: &str,
        version: u32,
        position: Position,
    ) -> Result<(), LedgerError> {
        match self.backend() {
            Backend::Postgres(store) => {
                sqlx::query(
                    "INSERT INTO projection_checkpoints (name, version, position) VALUES ($1, $2, $3)
                     ON CONFLICT (name) DO UPDATE SET version = excluded.version,
                     position = excluded.position,
                     generation = projection_checkpoints.generation + 1",
                )
                .bind(name)
                .bind(i64::from(version))
                .bind(to_i64(position.0))
                .execute(store.pool())
                .await?;
            }
            Backend::Sqlite(store) => {
                sqlx::query(
                    "INSERT INTO projection_checkpoints (name, version, position) VALUES (?, ?, ?)
                     ON CONFLICT (name) DO UPDATE SET version = excluded.version,
                     position = excluded.position,
                     generation = projection_checkpoints.generation + 1",
                )
                .bind(name)
                .bind(i64::from(version))
                .bind(to_i64(position.0))
                .execute(store.writer())
                .await?;
            }
        }
        Ok(())
    }

    /// Moves the checkpoint `name` from `from` to `to`, only if it still holds
    /// `from` under `version`: false (nothing written) when another worker moved
    /// it, or a reset changed it, meanwhile.
    ///
    /// # Errors
    /// Database errors.
    pub async fn advance_checkpoint(
        &self,
        name: &str,
        version: u32,
        from: Position,
        to: Position,
    ) -> Result<bool, LedgerError> {
        let rows = match self.backend() {
            Backend::Postgres(store) => sqlx::query(
                "UPDATE projection_checkpoints SET position = $1
                  WHERE name = $2 AND version = $3 AND position = $4",
            )
            .bind(to_i64(to.0))
            .bind(name)
            .bind(i64::from(version))
            .bind(to_i64(from.0))
            .execute(store.pool())
            .await?
            .rows_affected(),
            Backend::Sqlite(store) => sqlx::query(
                "UPDATE projection_checkpoints SET position = ?
                  WHERE name = ? AND version = ? AND position = ?",
            )
            .bind(to_i64(to.0))
            .bind(name)
            .bind(i64::from(version))
            .bind(to_i64(from.0))
            .execute(store.writer())
            .await?
            .rows_affected(),
        };
        Ok(rows == 1)
    }
}
