//! Recur's billing domain (next issue): the catalog, customers, subscriptions,
//! invoices, payments, coupons, tax and double-entry postings as pure aggregates
//! (`decide(state, command) -> events`, `evolve(state, event) -> state`), and the
//! handlers and process managers (billing clock scheduler, dunning, webhook
//! translator) that load a stream from the ledger, decide and append.
//!
//! Nothing lives here yet; the ledger it will stand on is `recur-ledger`.
