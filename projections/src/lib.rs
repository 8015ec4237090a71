//! Recur's read side.
//!
//! - [`message`]: the wire form of a ledger event on NATS (one message per event,
//!   message id = event id, so JetStream drops duplicates).
//! - [`relay`]: publishes every released ledger event to a JetStream stream, in
//!   ledger order, resuming after a restart from the last event the stream holds.
//! - [`runtime`]: the projector — a projection's writes and its checkpoint commit
//!   in one transaction; a rebuild (or a new projection version) builds beside the
//!   tables in use and switches in one transaction.
//! - [`db`]: the read models' database (the ledger's), with portable statements,
//!   shadows for rebuilds and in-memory scratch databases for questions about the past;
//!   [`sqlite_file`] writes a SQLite shadow without a worker thread per statement.
//! - [`set`]: every projection together, and all of them as of a past position.
//! - [`accounts`]: debits and credits per account and day: the trial balance,
//!   now or as of any day.
//! - [`customers`]: the customer view — card, credit, invoices, paid, refunded,
//!   open, dunning state.
//! - [`mrr`]: MRR per subscription, customer, plan and day, with its movements,
//!   dated when each change takes effect; [`profile`]: the counting rules where
//!   the analytics vendors disagree.
//! - [`analytics`]: the SaaS metrics from the MRR read model — series by day,
//!   week or month, movements per bucket, churn and retention, cohorts, MRR at a
//!   position.
//! - [`revenue`]: revenue earned ratably by day per month and plan, billed, and
//!   the deferred balance.
//! - [`dunning`]: the recovery read model — campaigns, steps, messages, phone
//!   tasks and offers — and the dunning metrics.
//! - [`nats_feed`]: a projector fed by a durable JetStream consumer, with gaps
//!   filled from the ledger and redeliveries skipped by the checkpoint.

pub mod accounts;
pub mod analytics;
pub mod customers;
pub mod db;
pub mod dunning;
pub mod message;
pub mod mrr;
pub mod nats_feed;
pub mod profile;
pub mod relay;
pub mod revenue;
pub mod runtime;
pub mod set;
pub mod sqlite_file;

pub use message::EventMessage;
pub use relay::{Relay, RelayConfig, RelayError};
pub use runtime::{Projection, ProjectionError, Projector};
pub use set::Projections;
