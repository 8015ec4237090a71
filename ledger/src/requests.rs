//! Answers to idempotent API requests, stored beside the ledger (same database,
//! same backend) so every process serving the API sees the same keys.
//!
//! A request *claims* its key with the fingerprint of its body. The first claim
//! runs; later claims with the same fingerprint wait for and replay its answer;
//! a claim with another fingerprint is refused. An answer that should not be
//! replayed (the server failed) is released so a retry runs again.

use time::OffsetDateTime;

use crate::error::LedgerError;
use crate::store::{Backend, Ledger};

/// What a claim on an idempotency key found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestClaim {
    /// The key is new: run the request, then [`Ledger::complete_request`].
    Run,
    /// The request already ran: answer with this.
    Replay {
        /// HTTP status.
        status: u16,
        /// Response body.
        body: String,
    },
    /// The same request is running right now.
    InProgress,
    /// The key was used with another request body.
    Mismatch,
}

impl Ledger {
    /// Claims `key` for a request whose body hashes to `fingerprint`.
    ///
    /// # Errors
    /// Database errors.
    pub async fn claim_request(
        &self,
        key: &str,
        fingerprint: &[u8; 32],
    ) -> Result<RequestClaim, LedgerError> {
        let now = self.clock().now();
        let row: Option<(Vec<u8>, Option<i32>, Option<String>)> = match self.backend() {
            Backend::Postgres(store) => {
                let inserted = sqlx::query(
                    "INSERT INTO api_requests (key, fingerprint, created_at) VALUES ($1, $2, $3)
                     ON CONFLICT (key) DO NOTHING",
                )
                .bind(key)
                .bind(&fingerprint[..])
                .bind(now)
                .execute(store.pool())
                .await?
                .rows_affected();
                if inserted == 1 {
                    return Ok(RequestClaim::Run);
                }
                sqlx::query_as("SELECT fingerprint, status, body FROM api_requests WHERE key = $1")
                    .bind(key)
                    .fetch_optional(store.pool())
                    .await?
            }
            Backend::Sqlite(store) => {
                let inserted = sqlx::query(
                    "INSERT INTO api_requests (key, fingerprint, created_at_us) VALUES (?, ?, ?)
                     ON CONFLICT (key) DO NOTHING",
                )
                .bind(key)
                .bind(&fingerprint[..])
                .bind(micros(now))
                .execute(store.writer())
                .await?
                .rows_affected();
                if inserted == 1 {
                    return Ok(RequestClaim::Run);
                }
                sqlx::query_as("SELECT fingerprint, status, body FROM api_requests WHERE key = ?")
                    .bind(key)
                    .fetch_optional(store.writer())
                    .await?
            }
        };
        Ok(match row {
            // Released between our insert and our read: claim again next time.
            None => RequestClaim::InProgress,
            Some((stored, _, _)) if stored.as_slice() != &fingerprint[..] => RequestClaim::Mismatch,
            Some((_, Some(status), Some(body))) => RequestClaim::Replay {
                status: u16::try_from(status).unwrap_or(500),
                body,
            },
            Some(_) => RequestClaim::InProgress,
        })
    }

    /// Stores the answer to a claimed request.
    ///
    /// # Errors
    /// Database errors.
    pub async fn complete_request(
        &self,
        key: &str,
        status: u16,
        body: &str,
    ) -> Result<(), LedgerError> {
        match self.backend() {
            Backend::Postgres(store) => {
                sqlx::query("UPDATE api_requests SET status = $2, body = $3 WHERE key = $1")
                    .bind(key)
                    .bind(i32::from(status))
                    .bind(body)
                    .execute(store.pool())
                    .await?;
            }
            Backend::Sqlite(store) => {
                sqlx::query("UPDATE api_requests SET status = ?, body = ? WHERE key = ?")
                    .bind(i32::from(status))
                    .bind(body)
                    .bind(key)
                    .execute(store.writer())
                    .await?;
            }
        }
        Ok(())
    }

    /// Forgets a claim whose request failed on the server, so a retry runs again.
    ///
    /// # Errors
    /// Database errors.
    pub async fn release_request(&self, key: &str) -> Result<(), LedgerError> {
        match self.backend() {
            Backend::Postgres(store) => {
                sqlx::query("DELETE FROM api_requests WHERE key = $1")
                    .bind(key)
                    .execute(store.pool())
                    .await?;
            }
            Backend::Sqlite(store) => {
                sqlx::query("DELETE FROM api_requests WHERE key = ?")
                    .bind(key)
                    .execute(store.writer())
                    .await?;
            }
        }
        Ok(())
    }

    /// Deletes answers recorded before `before`; returns how many.
    ///
    /// # Errors
    /// Database errors.
    pub async fn purge_requests(&self, before: OffsetDateTime) -> Result<u64, LedgerError> {
        Ok(match self.backend() {
            Backend::Postgres(store) => {
                sqlx::query("DELETE FROM api_requests WHERE created_at < $1")
                    .bind(before)
                    .execute(store.pool())
                    .await?
                    .rows_affected()
            }
            Backend::Sqlite(store) => {
                sqlx::query("DELETE FROM api_requests WHERE created_at_us < ?")
                    .bind(micros(before))
                    .execute(store.writer())
                    .await?
                    .rows_affected()
            }
        })
    }
}

fn micros(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1_000).unwrap_or(i64::MAX)
}
