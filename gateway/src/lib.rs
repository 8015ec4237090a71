//! Recur's edges: the `recur` command line, and (next) the HTTP API, webhooks and
//! adapters. Everything here turns outside input into calls on the ledger and
//! the domain; nothing here decides billing.

pub mod bench;
pub mod cli;
pub mod config;
pub mod demo;
pub mod http;
pub mod ledger_cmd;
pub mod projections_cmd;
