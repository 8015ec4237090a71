//! Recur's billing domain.
//!
//! Aggregates are pure — `decide(state, command) -> events`, `evolve(state, event)`:
//! - [`customer`]: segment, tax location, card on file (tokens only), credit balance;
//!   contact details apart, for erasure.
//! - [`subscription`]: trials, renewals, prorated plan changes, cancel, pause.
//! - [`invoice`]: lines, discounts, tax, payment attempts, credit notes, refunds,
//!   revenue recognition; every financial event carries balanced [`postings`].
//! - [`coupon`]: percent or amount off, once / repeating / forever, limits.
//!
//! Around them: the [`catalog`] (plans and immutable prices from TOML), [`tax`]
//! rates, [`period`] arithmetic and proration, the [`payment`] gateway trait and
//! the simulated gateway, what a [`decline`] code leaves open, the
//! [`dunning_policy`] per segment, the [`retry_timing`] learned from past
//! retries (within a window around the policy's times), and the [`dunning`]
//! campaign of a failed invoice (steps, its outbox of messages, phone tasks,
//! offers) that billing's [`recovery`] side drives, and at the edge
//! the [`billing`] service (load, decide, append, follow up across aggregates)
//! and the [`scheduler`] that the billing
//! clock drives. [`tagged`] decodes stored event payloads tag first; [`text`]
//! checks free text before it enters the ledger for good; [`privacy`] encrypts
//! personal data under per-customer keys, so that erasing a customer is
//! destroying its key; [`webhook`] keeps each delivered Stripe event once,
//! encrypted, and the [`translator`] (a process manager fed by the ledger)
//! turns what [`stripe_facts`] reads in them into billing commands through
//! the billing service's [`provider`] side; [`reconciliation`] compares the
//! ledger's money at the provider with the provider's own record.
//! [`update_card_link`] signs and checks the expiring links that let a
//! customer put a new card on file from a hosted page.

pub mod aggregate;
pub mod billing;
pub mod catalog;
pub mod context;
pub mod coupon;
pub mod customer;
pub mod decline;
pub mod dunning;
pub mod dunning_policy;
pub mod error;
pub mod ids;
pub mod invoice;
pub mod payment;
pub mod period;
pub mod personal_data;
pub mod postings;
pub mod privacy;
pub mod provider;
pub mod reconciliation;
pub mod recovery;
mod repository;
pub mod retry_timing;
pub mod scheduler;
pub mod stripe_amounts;
pub mod stripe_facts;
pub mod subscription;
pub mod tagged;
pub mod tax;
pub mod text;
pub mod translator;
pub mod update_card_link;
pub mod webhook;

pub use aggregate::{Aggregate, DomainEvent};
pub use billing::Billing;
pub use catalog::Catalog;
pub use error::{BillingError, Corruption, DomainError};
pub use ids::{CouponCode, CustomerId, InvoiceId, SubscriptionId};
pub use payment::{PaymentGateway, SimulatedGateway};
pub use scheduler::Scheduler;
pub use tagged::DecodeError;
