//! Recur's ledger: an append-only, tamper-evident event store with one API over
//! two backends — Postgres for production, one SQLite file as the embedded default.
//!
//! - [`Ledger::append`] writes a batch atomically under an expected version; retries
//!   with the same event ids or idempotency key return the original positions.
//! - [`Ledger::read_stream`], [`Ledger::read_all`] and [`Ledger::subscribe`] read a
//!   stream or the global order; a subscription never skips or repeats an event, also
//!   when concurrent Postgres transactions commit out of sequence order.
//! - Every event is hashed and chained per stream; [`Ledger::seal`] seals global
//!   ranges and [`Ledger::verify`] recomputes everything; [`Ledger::proof`] writes
//!   one stream's [`Proof`], which [`Proof::verify`] checks offline.
//! - [`Money`] is the one money type every crate uses.
//! - [`Ledger::checkpoint`] and its kin keep how far each process manager that
//!   follows the ledger (the Stripe translator) has worked.
//! - [`Ledger::data_key`] and its kin keep the wrapped per-customer data keys that
//!   encrypt personal data, and destroy them for good on erasure.
//!
//! ```no_run
//! # async fn demo() -> Result<(), recur_ledger::LedgerError> {
//! use std::sync::Arc;
//! use recur_ledger::{EventId, ExpectedVersion, Ledger, LedgerConfig, NewEvent, StreamId, SystemClock, Clock};
//!
//! let clock: Arc<dyn Clock> = Arc::new(SystemClock);
//! // A missing file is made only when asked: a mistyped path is an error, not an empty ledger.
//! let config = LedgerConfig::new("sqlite:recur.sqlite").create_if_missing(true);
//! let ledger = Ledger::open(config, clock.clone()).await?;
//! let stream = StreamId::parse("customer-42")?;
//! let event = NewEvent::new(EventId::new_at(clock.now()), "CustomerCreated", 1, &serde_json::json!({"segment": "standard"}))?;
//! let appended = ledger.append(&stream, ExpectedVersion::NoStream, vec![event]).await?;
//! assert_eq!(appended.stream_version, 1);
//! # Ok(()) }
//! ```

pub mod checkpoints;
pub mod clock;
pub mod data_keys;
pub mod envelope;
pub mod error;
pub mod hash;
pub mod limits;
mod migrate;
pub mod money;
mod plan;
mod postgres;
pub mod proof;
pub mod raw;
pub mod requests;
mod sqlite;
mod sqlite_pages;
mod store;
pub mod subscription;
pub mod upcast;
pub mod verify;

pub use checkpoints::Checkpoint;
pub use clock::{Clock, SystemClock, TestClock};
pub use data_keys::{DataKey, WrappedKey};
pub use envelope::{
    Appended, EventId, ExpectedVersion, IdempotencyKey, Metadata, NewEvent, Position,
    RecordedEvent, Source, StreamId,
};
pub use error::{Chain, LedgerError};
pub use money::{Currency, Money, MoneyError};
pub use proof::{Proof, ProofError};
pub use requests::RequestClaim;
pub use store::{BackendKind, Ledger, LedgerConfig};
pub use subscription::{Replay, Subscription};
pub use upcast::{UpcastError, Upcasters};
pub use verify::{Problem, SealReport, VerifyReport};
