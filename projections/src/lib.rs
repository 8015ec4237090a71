//! Recur's read side (a later issue): the projector runtime — fed by NATS
//! JetStream or in-process by a ledger subscription, with each read model's
//! writes and checkpoint in one transaction — and the read models: customer
//! view, MRR/ARR and movements, churn, cohorts, LTV, AR aging, trial balance and
//! revenue recognition, each rebuildable from the first event.
//!
//! Nothing lives here yet; it will consume `recur_ledger::Subscription`.
