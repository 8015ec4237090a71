//! Recur's read side.
//!
//! - [`message`]: the wire form of a ledger event on NATS (one message per event,
//!   message id = event id, so JetStream drops duplicates).
//! - [`relay`]: publishes every released ledger event to a JetStream stream, in
//!   ledger order, resuming after a restart from the last event the stream holds.
//!
//! Next: the projector runtime (durable consumers, or the ledger's subscription in
//! the embedded mode; each read model's writes and checkpoint in one transaction)
//! and the read models — customer view, MRR/ARR and movements, churn, cohorts,
//! accounting — each rebuildable from the first event.

pub mod message;
pub mod relay;

pub use message::EventMessage;
pub use relay::{Relay, RelayConfig, RelayError};
