//! The `recur` binary's library: its command line and the processes it runs.
//! Everything here turns outside input into calls on the ledger, the domain,
//! the command API (`recur_api`) and the benchmarks (`recur_bench`); nothing
//! here decides billing.
//!
//! - [`cli`]: the commands and flags; [`config`]: one typed configuration
//!   (flags with their environment variables, secrets that never print).
//! - [`serve`]: `recur serve`, the API process.
//! - [`demo`]: `recur demo`, a simulated business on a test clock.
//! - [`dunning_channels`]: the dunning outbox's email (SMTP) and SMS senders.
//! - [`ledger_cmd`], [`projections_cmd`]: verify, seal, back up, prove and
//!   verify proofs; rebuild, relay, project; [`customer_cmd`]: erase a
//!   customer's personal data, rewrap data keys; [`stripe_cmd`]: run the
//!   Stripe translator over the kept webhooks.
//! - [`seal_export`]: copies of the seals outside the database.
//! - [`stripe_cmd`]: the payment gateway of `recur serve --gateway`, and
//!   `recur stripe sync-catalog` (Stripe: the cargo feature `stripe`).

pub mod cli;
pub mod config;
pub mod customer_cmd;
pub mod demo;
pub mod dunning_channels;
pub mod ledger_cmd;
pub mod projections_cmd;
pub mod rekey;
pub mod seal_export;
pub mod serve;
pub mod stripe_cmd;
