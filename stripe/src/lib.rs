//! Recur's Stripe adapter, on async-stripe (pinned `=1.0.0-rc.10`).
//!
//! - [`StripeGateway`]: the [`recur_commands::PaymentGateway`] on Stripe.
//!   Cards are attached by token (`pm_…`) to a Stripe customer per Recur
//!   customer; charges are off-session PaymentIntents confirmed at once (on
//!   session when the customer confirms on the update-card page), keyed
//!   by Recur's `<invoice>-attempt-<n>` so that a retried charge never charges
//!   twice; refunds are keyed by `<invoice>-refund-<n>`. Declines come back as
//!   [`recur_commands::invoice::ChargeOutcome::Declined`] with Stripe's decline
//!   code, which [`recur_commands::decline::category`] sorts.
//! - [`StripeGateway::sync_catalog`]: products and prices for Recur's catalog,
//!   idempotent ([`catalog_sync`]).
//! - [`StripeGateway::balance_transactions`], [`StripeGateway::retrieve_charge`],
//!   [`StripeGateway::retrieve_refund`]: the provider's side for the reconciliation
//!   ([`provider`]).
//! - [`StripeConfig`]: `STRIPE_SECRET_KEY` and `STRIPE_API_BASE`; the key never
//!   shows in `Debug` output.
//!
//! docs/stripe.md tells how to set it up and how it fails.
//!
//! ```no_run
//! # async fn run() -> Result<(), recur_stripe::StripeError> {
//! use recur_stripe::{StripeConfig, StripeGateway};
//! let gateway = StripeGateway::new(&StripeConfig::from_env()?)?;
//! let catalog = recur_commands::Catalog::default_catalog().expect("the shipped catalog");
//! println!("{}", gateway.sync_catalog(&catalog).await?);
//! # Ok(()) }
//! ```

pub mod catalog_sync;
pub mod config;
pub mod error;
pub mod gateway;
pub mod provider;

pub use catalog_sync::{CatalogSyncReport, PlanSync, PriceSync, SyncStatus};
pub use config::{SecretKey, StripeConfig};
pub use error::StripeError;
pub use gateway::{StripeGateway, money_from_stripe, to_stripe_amount};
pub use provider::{BalanceTransaction, ChargeInfo, RefundInfo};
