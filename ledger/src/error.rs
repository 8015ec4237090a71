//! The ledger's errors: one enum, each variant with a stable code.

use std::sync::Arc;

use crate::envelope::{ExpectedVersion, StreamId};

/// Everything that can go wrong when talking to the ledger.
#[derive(Clone, Debug, thiserror::Error)]
pub enum LedgerError {
    /// A stream id was empty, too long or held control characters.
    #[error("invalid stream id: {reason}")]
    InvalidStreamId {
        /// Why the id was refused.
        reason: &'static str,
    },
    /// An event type was empty, too long or not printable ASCII.
    #[error("invalid event type: {reason}")]
    InvalidEventType {
        /// Why the type was refused.
        reason: &'static str,
    },
    /// A payload or metadata document was not valid JSON.
    #[error("invalid JSON in {field}")]
    InvalidJson {
        /// Which part of the event held the bad JSON.
        field: &'static str,
        /// The parser's error (where, and what).
        #[source]
        source: Arc<serde_json::Error>,
    },
    /// A payload was larger than [`crate::limits::PAYLOAD_BYTES_MAX`].
    #[error("payload of {size_bytes} bytes exceeds the limit of {limit_bytes} bytes")]
    PayloadTooLarge {
        /// The payload's size.
        size_bytes: usize,
        /// The documented limit.
        limit_bytes: usize,
    },
    /// An append held no events, or more than [`crate::limits::EVENTS_PER_APPEND_MAX`].
    #[error("an append must hold 1 to {limit} events, got {count}")]
    InvalidBatchSize {
        /// Events in the refused append.
        count: usize,
        /// The documented limit.
        limit: usize,
    },
    /// The events of one append carried different idempotency keys.
    #[error("all events of one append must carry the same idempotency key")]
    MixedIdempotencyKeys,
    /// An idempotency key was empty or too long.
    #[error("invalid idempotency key: {reason}")]
    InvalidIdempotencyKey {
        /// Why the key was refused.
        reason: &'static str,
    },
    /// The stream's version was not the one the caller expected.
    #[error("version conflict on stream {stream}: expected {expected}, actual version is {actual}")]
    VersionConflict {
        /// The stream appended to.
        stream: StreamId,
        /// What the caller expected.
        expected: ExpectedVersion,
        /// The stream's version when the append was refused.
        actual: u64,
    },
    /// The idempotency key was already used by an append to another stream.
    #[error("idempotency key was already used by an append to another stream")]
    IdempotencyKeyReused,
    /// Some, but not all, of the event ids were already committed, or on another stream.
    #[error("event ids were already committed in a different append")]
    EventIdsReused,
    /// A stored event failed an integrity check on read.
    #[error("ledger integrity: {0}")]
    Integrity(String),
    /// An event could not be lifted to the current schema or decoded.
    #[error("cannot decode event {event_type} v{schema_version}: {message}")]
    Decode {
        /// The stored event type.
        event_type: String,
        /// The stored schema version.
        schema_version: u32,
        /// What went wrong, at the ledger's level (which step, which version).
        message: String,
        /// The failure underneath (the JSON parser's, or an upcaster's), when
        /// there is one; shared so that the error stays `Clone`.
        #[source]
        source: Option<Arc<dyn std::error::Error + Send + Sync>>,
    },
    /// The database URL or path could not be understood.
    #[error("invalid ledger location: {0}")]
    InvalidLocation(String),
    /// A SQLite ledger file does not exist and creating it was not asked for
    /// ([`crate::LedgerConfig::create_if_missing`], or `mode=rwc` in the URL).
    #[error("no ledger file at {path}")]
    NotFound {
        /// The file looked for.
        path: String,
    },
    /// The database could not be reached (down, refused, timed out).
    #[error("ledger database unavailable: {what}")]
    Unavailable {
        /// What failed, in a few words (which file, which kind of failure).
        what: String,
        /// The driver's error, when there is one; shared so that the error
        /// stays `Clone`.
        #[source]
        source: Option<SharedError>,
    },
    /// Concurrent writers kept colliding past the retry limit.
    #[error("append gave up after {attempts} attempts against concurrent writers")]
    Contention {
        /// Attempts made.
        attempts: u32,
    },
    /// A schema migration failed or the schema is newer than this binary.
    #[error("migration: {what}")]
    Migration {
        /// Which migration, and what is wrong.
        what: String,
        /// The database's error when applying it failed.
        #[source]
        source: Option<SharedError>,
    },
    /// The store is shutting down.
    #[error("ledger is closed")]
    Closed,
    /// A proof was asked for a stream that holds no events.
    #[error(
        "stream {stream} holds no events: nothing to prove (a stream id such as invoice-<uuid>)"
    )]
    StreamNotFound {
        /// The stream asked for.
        stream: String,
    },
    /// A proof was asked for a stream whose last events are not sealed yet.
    #[error(
        "stream {stream} has events after the last seal (position {position}; sealed up to {sealed_to}): \
         run `recur ledger seal`, then ask for the proof again"
    )]
    Unsealed {
        /// The stream asked for.
        stream: String,
        /// Its first event after the last seal.
        position: u64,
        /// The last sealed position (0: nothing is sealed).
        sealed_to: u64,
    },
    /// A proof would exceed [`crate::limits::PROOF_EVENTS_MAX`] or [`crate::limits::PROOF_SEALS_MAX`].
    #[error("a proof of stream {stream} would hold more than {limit} {what}")]
    ProofTooLarge {
        /// The stream asked for.
        stream: String,
        /// `events` or `seals`.
        what: &'static str,
        /// The limit.
        limit: u64,
    },
    /// Any other database error.
    #[error("ledger database error: {what}")]
    Database {
        /// What failed, in a few words (the SQLSTATE when there is one).
        what: String,
        /// The driver's error, when there is one.
        #[source]
        source: Option<SharedError>,
    },
}

/// A driver's error kept as a cause and shared, so that [`LedgerError`] stays `Clone`.
pub type SharedError = Arc<dyn std::error::Error + Send + Sync>;

impl LedgerError {
    /// [`LedgerError::Unavailable`]: `what` failed, `source` underneath.
    pub fn unavailable(
        what: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Unavailable {
            what: what.into(),
            source: Some(Arc::new(source)),
        }
    }

    /// [`LedgerError::Database`]: `what` failed, `source` underneath.
    pub fn database(
        what: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Database {
            what: what.into(),
            source: Some(Arc::new(source)),
        }
    }

    /// A stable snake_case code for clients and logs.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidStreamId { .. } => "invalid_stream_id",
            Self::InvalidEventType { .. } => "invalid_event_type",
            Self::InvalidJson { .. } => "invalid_json",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::InvalidBatchSize { .. } => "invalid_batch_size",
            Self::MixedIdempotencyKeys => "mixed_idempotency_keys",
            Self::InvalidIdempotencyKey { .. } => "invalid_idempotency_key",
            Self::VersionConflict { .. } => "version_conflict",
            Self::IdempotencyKeyReused => "idempotency_key_reused",
            Self::EventIdsReused => "event_ids_reused",
            Self::Integrity(_) => "ledger_integrity",
            Self::Decode { .. } => "event_decode_failed",
            Self::InvalidLocation(_) => "invalid_ledger_location",
            Self::NotFound { .. } => "ledger_not_found",
            Self::Unavailable { .. } => "ledger_unavailable",
            Self::Contention { .. } => "ledger_contention",
            Self::Migration { .. } => "ledger_migration_failed",
            Self::Closed => "ledger_closed",
            Self::StreamNotFound { .. } => "stream_not_found",
            Self::Unsealed { .. } => "ledger_unsealed",
            Self::ProofTooLarge { .. } => "proof_too_large",
            Self::Database { .. } => "ledger_database_error",
        }
    }

    /// True when the caller's input was at fault (a 4xx at the HTTP edge).
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            Self::InvalidStreamId { .. }
                | Self::InvalidEventType { .. }
                | Self::InvalidJson { .. }
                | Self::PayloadTooLarge { .. }
                | Self::InvalidBatchSize { .. }
                | Self::MixedIdempotencyKeys
                | Self::InvalidIdempotencyKey { .. }
                | Self::VersionConflict { .. }
                | Self::IdempotencyKeyReused
                | Self::EventIdsReused
        )
    }
}

/// An error and each of its sources, joined by ": ": how logs and problem
/// details show an error whose wrappers say where and whose sources say why.
#[derive(Clone, Copy, Debug)]
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = self.0.source();
        while let Some(error) = next {
            write!(f, ": {error}")?;
            next = error.source();
        }
        Ok(())
    }
}

/// SQLSTATEs of a server that is there but will not serve now: connection
/// exceptions (class 08), an administrator's or a crash's shutdown and "cannot
/// connect now" (57P01–57P03), too many connections (53300), and a database that
/// does not accept connections (55000, which our statements, taking no locks
/// with NOWAIT, meet for nothing else).
fn server_unavailable(code: Option<&str>) -> bool {
    code.is_some_and(|code| {
        code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300" | "55000")
    })
}

/// Sorts a sqlx error into "the database is not there" and everything else,
/// keeping it as the source; `what` names its kind (and SQLSTATE) in a few words.
pub(crate) fn from_sqlx(error: sqlx::Error) -> LedgerError {
    let unavailable = match &error {
        sqlx::Error::Io(_) => Some("I/O error".to_owned()),
        sqlx::Error::Tls(_) => Some("TLS error".to_owned()),
        sqlx::Error::PoolTimedOut => Some("timed out waiting for a connection".to_owned()),
        sqlx::Error::PoolClosed => Some("connection pool closed".to_owned()),
        sqlx::Error::WorkerCrashed => Some("database worker crashed".to_owned()),
        sqlx::Error::Database(database) if server_unavailable(database.code().as_deref()) => {
            database
                .code()
                .map(|code| format!("the server will not serve now (SQLSTATE {code})"))
        }
        _ => None,
    };
    if let Some(what) = unavailable {
        return LedgerError::unavailable(what, error);
    }
    let what = match &error {
        sqlx::Error::Database(database) => match database.code() {
            Some(code) => format!("statement refused (SQLSTATE {code})"),
            None => "statement refused".to_owned(),
        },
        _ => "statement failed".to_owned(),
    };
    LedgerError::database(what, error)
}

impl From<sqlx::Error> for LedgerError {
    fn from(error: sqlx::Error) -> Self {
        from_sqlx(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_shows_every_source_after_the_error() {
        let error = LedgerError::Decode {
            event_type: "PlanChanged".into(),
            schema_version: 1,
            message: "upcast from v1 failed".into(),
            source: Some(Arc::new(std::io::Error::other("no plan"))),
        };
        assert_eq!(
            Chain(&error).to_string(),
            "cannot decode event PlanChanged v1: upcast from v1 failed: no plan"
        );
        assert_eq!(Chain(&LedgerError::Closed).to_string(), "ledger is closed");
    }

    #[test]
    fn a_sqlx_error_is_sorted_and_kept_as_the_source() {
        let error = from_sqlx(sqlx::Error::PoolTimedOut);
        assert_eq!(error.code(), "ledger_unavailable");
        let source = std::error::Error::source(&error).expect("sqlx's error");
        assert_eq!(source.to_string(), sqlx::Error::PoolTimedOut.to_string());
        let error = from_sqlx(sqlx::Error::RowNotFound);
        assert_eq!(error.code(), "ledger_database_error");
        assert_eq!(
            Chain(&error).to_string(),
            format!(
                "ledger database error: statement failed: {}",
                sqlx::Error::RowNotFound
            )
        );
        // Still `Clone`, the source shared.
        let copy = error.clone();
        assert!(std::error::Error::source(&copy).is_some());
    }
}
