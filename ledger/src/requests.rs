//! Answers to idempotent API requests, stored beside the ledger (same database,
//! same backend) so every process serving the API sees the same keys.
//!
//! A request *claims* its key with the fingerprint of its body. The claim is a
//! lease held by one run (its `owner`) and renewed while it runs. Later claims
//! with the same fingerprint wait for and replay its answer; a claim with
//! another fingerprint is refused. When the lease lapses (the server died
//! mid-request) or the run let go of it (it failed on the server), the next
//! claim with the same fingerprint takes it over and reruns the request: the
//! rerun finds what the first run committed through the ledger keys of its
//! appends (see `recur_commands::context`), so nothing is written twice.
//!
//! Leases are real time (a process's liveness), not billing time: they are
//! measured on the machine's clock, never on the ledger's injected one.

use std::time::{Duration, SystemTime};

use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::LedgerError;
use crate::store::{Backend, Ledger};

/// What a claim on an idempotency key found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestClaim {
    /// The key is ours: run the request, then [`Ledger::complete_request`].
    Run {
        /// When the key was first claimed (ledger clock): the same on every run.
        started_at: OffsetDateTime,
        /// An earlier run held the key and never answered: it may have written.
        rerun: bool,
    },
    /// The request already ran: answer with this.
    Replay {
        /// HTTP status.
        status: u16,
        /// Response body.
        body: String,
    },
    /// The same request is running right now (its lease is live).
    InProgress,
    /// The key was used with another request body.
    Mismatch,
    /// Claimed before leases existed (migration 0003) and never answered: that
    /// run made ids and wrote without the keys a rerun finds, so running it
    /// again could do it twice. Its outcome is unknown until the claim expires.
    Unknown,
}

/// A claim as stored: the body's fingerprint, the answer's status and body once
/// answered, and whether it was claimed before leases existed (no owner).
type StoredClaim = (Vec<u8>, Option<i32>, Option<String>, bool);

impl Ledger {
    /// Claims `key` for a request whose body hashes to `fingerprint`, as the
    /// run `owner`, for `lease`; takes over a claim whose lease lapsed.
    ///
    /// # Errors
    /// Database errors.
    pub async fn claim_request(
        &self,
        key: &str,
        fingerprint: &[u8; 32],
        owner: Uuid,
        lease: Duration,
    ) -> Result<RequestClaim, LedgerError> {
        let now = self.clock().now();
        let wall_us = wall_micros();
        let until_us = wall_us.saturating_add(duration_micros(lease));
        let (claimed, row): (Option<(OffsetDateTime, i32)>, Option<StoredClaim>) = match self
            .backend()
        {
            Backend::Postgres(store) => {
                let claimed: Option<(OffsetDateTime, i32)> = sqlx::query_as(
                    "INSERT INTO api_requests (key, fingerprint, created_at, owner, lease_until_us)
                         VALUES ($1, $2, $3, $4, $5)
                         ON CONFLICT (key) DO UPDATE
                            SET owner = EXCLUDED.owner, lease_until_us = EXCLUDED.lease_until_us,
                                runs = api_requests.runs + 1
                          WHERE api_requests.status IS NULL
                            AND api_requests.lease_until_us < $6
                            AND api_requests.owner IS NOT NULL
                            AND api_requests.fingerprint = EXCLUDED.fingerprint
                         RETURNING created_at, runs",
                )
                .bind(key)
                .bind(&fingerprint[..])
                .bind(now)
                .bind(owner)
                .bind(until_us)
                .bind(wall_us)
                .fetch_optional(store.pool())
                .await?;
                let row = if claimed.is_none() {
                    sqlx::query_as(
                        "SELECT fingerprint, status, body, owner IS NULL FROM api_requests WHERE key = $1",
                    )
                    .bind(key)
                    .fetch_optional(store.pool())
                    .await?
                } else {
                    None
                };
                (claimed, row)
            }
            Backend::Sqlite(store) => {
                let claimed: Option<(i64, i32)> = sqlx::query_as(
                        "INSERT INTO api_requests (key, fingerprint, created_at_us, owner, lease_until_us)
                         VALUES (?1, ?2, ?3, ?4, ?5)
                         ON CONFLICT (key) DO UPDATE
                            SET owner = excluded.owner, lease_until_us = excluded.lease_until_us,
                                runs = api_requests.runs + 1
                          WHERE api_requests.status IS NULL
                            AND api_requests.lease_until_us < ?6
                            AND api_requests.owner IS NOT NULL
                            AND api_requests.fingerprint = excluded.fingerprint
                         RETURNING created_at_us, runs",
                    )
                    .bind(key)
                    .bind(&fingerprint[..])
                    .bind(micros(now))
                    .bind(owner)
                    .bind(until_us)
                    .bind(wall_us)
                    .fetch_optional(store.writer())
                    .await?;
                let row = if claimed.is_none() {
                    sqlx::query_as(
                        "SELECT fingerprint, status, body, owner IS NULL FROM api_requests WHERE key = ?",
                    )
                    .bind(key)
                    .fetch_optional(store.writer())
                    .await?
                } else {
                    None
                };
                let claimed = claimed
                    .map(|(at_us, runs)| Ok::<_, LedgerError>((from_micros(at_us)?, runs)))
                    .transpose()?;
                (claimed, row)
            }
        };
        if let Some((started_at, runs)) = claimed {
            return Ok(RequestClaim::Run {
                started_at,
                rerun: runs > 1,
            });
        }
        Ok(match row {
            // Purged between our two statements: claim again next time.
            None => RequestClaim::InProgress,
            Some((stored, ..)) if stored.as_slice() != &fingerprint[..] => RequestClaim::Mismatch,
            Some((_, Some(status), Some(body), _)) => RequestClaim::Replay {
                status: u16::try_from(status).unwrap_or(500),
                body,
            },
            Some((.., true)) => RequestClaim::Unknown,
            Some(_) => RequestClaim::InProgress,
        })
    }

    /// Extends the lease of a run still holding its claim; false when another
    /// run took it over (or it was answered).
    ///
    /// # Errors
    /// Database errors.
    pub async fn renew_request(
        &self,
        key: &str,
        owner: Uuid,
        lease: Duration,
    ) -> Result<bool, LedgerError> {
        let until_us = wall_micros().saturating_add(duration_micros(lease));
        let renewed = match self.backend() {
            Backend::Postgres(store) => sqlx::query(
                "UPDATE api_requests SET lease_until_us = $3
                  WHERE key = $1 AND owner = $2 AND status IS NULL",
            )
            .bind(key)
            .bind(owner)
            .bind(until_us)
            .execute(store.pool())
            .await?
            .rows_affected(),
            Backend::Sqlite(store) => sqlx::query(
                "UPDATE api_requests SET lease_until_us = ?3
                  WHERE key = ?1 AND owner = ?2 AND status IS NULL",
            )
            .bind(key)
            .bind(owner)
            .bind(until_us)
            .execute(store.writer())
            .await?
            .rows_affected(),
        };
        Ok(renewed == 1)
    }

    /// Stores the answer of the run `owner`; false (nothing stored) when another
    /// run took the claim over, whose answer will be stored instead.
    ///
    /// # Errors
    /// Database errors.
    pub async fn complete_request(
        &self,
        key: &str,
        owner: Uuid,
        status: u16,
        body: &str,
    ) -> Result<bool, LedgerError> {
        let stored = match self.backend() {
            Backend::Postgres(store) => sqlx::query(
                "UPDATE api_requests SET status = $3, body = $4
                  WHERE key = $1 AND owner = $2 AND status IS NULL",
            )
            .bind(key)
            .bind(owner)
            .bind(i32::from(status))
            .bind(body)
            .execute(store.pool())
            .await?
            .rows_affected(),
            Backend::Sqlite(store) => sqlx::query(
                "UPDATE api_requests SET status = ?3, body = ?4
                  WHERE key = ?1 AND owner = ?2 AND status IS NULL",
            )
            .bind(key)
            .bind(owner)
            .bind(i32::from(status))
            .bind(body)
            .execute(store.writer())
            .await?
            .rows_affected(),
        };
        Ok(stored == 1)
    }

    /// Lets go of the claim of a run that failed on the server: the next request
    /// with the same key and body takes it over at once and reruns it (the key
    /// stays bound to its body and its first claim time).
    ///
    /// # Errors
    /// Database errors.
    pub async fn release_request(&self, key: &str, owner: Uuid) -> Result<(), LedgerError> {
        match self.backend() {
            Backend::Postgres(store) => {
                sqlx::query(
                    "UPDATE api_requests SET lease_until_us = 0
                      WHERE key = $1 AND owner = $2 AND status IS NULL",
                )
                .bind(key)
                .bind(owner)
                .execute(store.pool())
                .await?;
            }
            Backend::Sqlite(store) => {
                sqlx::query(
                    "UPDATE api_requests SET lease_until_us = 0
                      WHERE key = ?1 AND owner = ?2 AND status IS NULL",
                )
                .bind(key)
                .bind(owner)
                .execute(store.writer())
                .await?;
            }
        }
        Ok(())
    }

    /// Deletes the stored answers whose body contains `needle` (an erased
    /// customer's id: its answers may hold its personal data); returns how many.
    /// A scan, bounded by the answers' retention; erasures are rare.
    ///
    /// # Errors
    /// Database errors.
    pub async fn delete_requests_mentioning(&self, needle: &str) -> Result<u64, LedgerError> {
        // instr/strpos rather than LIKE: the needle's `_` or `%` mean themselves.
        Ok(match self.backend() {
            Backend::Postgres(store) => {
                sqlx::query("DELETE FROM api_requests WHERE strpos(body, $1) > 0")
                    .bind(needle)
                    .execute(store.pool())
                    .await?
                    .rows_affected()
            }
            Backend::Sqlite(store) => {
                sqlx::query("DELETE FROM api_requests WHERE instr(body, ?) > 0")
                    .bind(needle)
                    .execute(store.writer())
                    .await?
                    .rows_affected()
            }
        })
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

/// `at` in microseconds since the Unix epoch, as the SQLite tables store times.
pub(crate) fn micros(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1_000).unwrap_or(i64::MAX)
}

/// The instant a SQLite table stored as microseconds since the Unix epoch.
pub(crate) fn from_micros(us: i64) -> Result<OffsetDateTime, LedgerError> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1_000)
        .map_err(|_| LedgerError::Integrity(format!("a stored time, {us} µs, is no instant")))
}

/// Now on the machine's clock, in microseconds since the Unix epoch.
fn wall_micros() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, duration_micros)
}

fn duration_micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}
