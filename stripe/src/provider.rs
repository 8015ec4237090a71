//! What the provider's books say, as plain structs: balance transactions
//! (what moved money in the Stripe account), and the charges and refunds they
//! come from. The reconciliation compares these with the ledger; this module
//! only reads.

use std::collections::HashMap;

use recur_ledger::Money;
use serde::Serialize;
use stripe_core::balance_transaction::ListBalanceTransaction;
use stripe_core::charge::{ListCharge, RetrieveCharge};
use stripe_core::refund::RetrieveRefund;
use stripe_types::{RangeBoundsTs, RangeQueryTs};
use time::OffsetDateTime;

use crate::error::StripeError;
use crate::gateway::{StripeGateway, money_from_stripe};

/// Objects asked for per page (Stripe's maximum).
pub const PAGE_SIZE: i64 = 100;
/// Pages read by one listing at most (100,000 objects): past it the listing
/// fails rather than run unbounded; ask for a shorter period.
pub const PAGES_MAX: usize = 1_000;

/// One balance transaction: money that moved in the Stripe account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BalanceTransaction {
    /// `txn_…`.
    pub id: String,
    /// Stripe's `type`: `charge`, `payment`, `refund`, `payment_refund`,
    /// `adjustment` (disputes), `stripe_fee`, `payout`, … (kept as Stripe says).
    pub kind: String,
    /// Stripe's `reporting_category` (`charge`, `refund`, `dispute`, `fee`, …).
    pub reporting_category: String,
    /// What it comes from: `ch_…`, `re_…`, `du_…`, `po_…`; none for some fees.
    pub source: Option<String>,
    /// Gross amount in the currency's Stripe minor units; negative for money
    /// out (a refund). See [`BalanceTransaction::amount`] for [`Money`].
    pub amount_minor: i64,
    /// Stripe's fees, same units, positive.
    pub fee_minor: i64,
    /// `amount_minor - fee_minor`, as Stripe reports it.
    pub net_minor: i64,
    /// Lowercase ISO code (`usd`).
    pub currency: String,
    /// When it was made.
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
    /// `available` or `pending`.
    pub status: String,
}

impl BalanceTransaction {
    /// The gross amount as [`Money`].
    ///
    /// # Errors
    /// A currency Recur does not know.
    pub fn amount(&self) -> Result<Money, StripeError> {
        money_from_stripe(self.amount_minor, &self.currency)
    }

    /// The fee as [`Money`].
    ///
    /// # Errors
    /// A currency Recur does not know.
    pub fn fee(&self) -> Result<Money, StripeError> {
        money_from_stripe(self.fee_minor, &self.currency)
    }
}

/// A charge as Stripe holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChargeInfo {
    /// `ch_…`.
    pub id: String,
    /// `succeeded`, `pending` or `failed`.
    pub status: String,
    /// Charged, in Stripe minor units.
    pub amount_minor: i64,
    /// Refunded so far, same units.
    pub amount_refunded_minor: i64,
    /// Lowercase ISO code.
    pub currency: String,
    /// Paid (succeeded, or pending and authorized).
    pub paid: bool,
    /// Refunded in full.
    pub refunded: bool,
    /// Under dispute (or was).
    pub disputed: bool,
    /// Its PaymentIntent (`pi_…`).
    pub payment_intent: Option<String>,
    /// Stripe's customer (`cus_…`).
    pub customer: Option<String>,
    /// Its balance transaction (`txn_…`), once money moved.
    pub balance_transaction: Option<String>,
    /// The decline code or error code of a failed charge.
    pub failure_code: Option<String>,
    /// Metadata (`recur_invoice_id`, … when the payment intent copied them).
    pub metadata: HashMap<String, String>,
    /// When it was made.
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
}

/// A refund as Stripe holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RefundInfo {
    /// `re_…`.
    pub id: String,
    /// The charge refunded (`ch_…`).
    pub charge: Option<String>,
    /// `succeeded`, `pending`, `failed`, `canceled`, `requires_action`.
    pub status: Option<String>,
    /// Refunded, in Stripe minor units (positive).
    pub amount_minor: i64,
    /// Lowercase ISO code.
    pub currency: String,
    /// Its balance transaction (`txn_…`).
    pub balance_transaction: Option<String>,
    /// When it was made.
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
}

fn at(seconds: i64) -> Result<OffsetDateTime, StripeError> {
    OffsetDateTime::from_unix_timestamp(seconds)
        .map_err(|_| StripeError::Unexpected(format!("timestamp {seconds} out of range")))
}

fn charge_info(charge: stripe_shared::Charge) -> Result<ChargeInfo, StripeError> {
    Ok(ChargeInfo {
        id: charge.id.as_str().to_owned(),
        status: charge.status.as_str().to_owned(),
        amount_minor: charge.amount,
        amount_refunded_minor: charge.amount_refunded,
        currency: charge.currency.to_string(),
        paid: charge.paid,
        refunded: charge.refunded,
        disputed: charge.disputed,
        payment_intent: charge
            .payment_intent
            .as_ref()
            .map(|p| p.id().as_str().to_owned()),
        customer: charge.customer.as_ref().map(|c| c.id().as_str().to_owned()),
        balance_transaction: charge
            .balance_transaction
            .as_ref()
            .map(|t| t.id().as_str().to_owned()),
        failure_code: charge.failure_code,
        metadata: charge.metadata,
        created: at(charge.created)?,
    })
}

impl StripeGateway {
    /// The balance transactions created in `[from, to)`, newest first, all
    /// pages.
    ///
    /// # Errors
    /// Stripe errors; more than [`PAGES_MAX`] pages.
    pub async fn balance_transactions(
        &self,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> Result<Vec<BalanceTransaction>, StripeError> {
        let created = RangeQueryTs::Bounds(RangeBoundsTs {
            gte: Some(from.unix_timestamp()),
            lt: Some(to.unix_timestamp()),
            ..RangeBoundsTs::default()
        });
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..PAGES_MAX {
            let mut list = ListBalanceTransaction::new()
                .created(created)
                .limit(PAGE_SIZE);
            if let Some(after) = &after {
                list = list.starting_after(after.as_str());
            }
            let page = self.send(&list).await?;
            for txn in page.data {
                all.push(BalanceTransaction {
                    id: txn.id.as_str().to_owned(),
                    kind: txn.type_.as_str().to_owned(),
                    reporting_category: txn.reporting_category,
                    source: txn.source.as_ref().map(|s| s.id().as_str().to_owned()),
                    amount_minor: txn.amount,
                    fee_minor: txn.fee,
                    net_minor: txn.net,
                    currency: txn.currency.to_string(),
                    created: at(txn.created)?,
                    status: txn.status,
                });
            }
            if !page.has_more {
                return Ok(all);
            }
            after = all.last().map(|txn| txn.id.clone());
        }
        Err(StripeError::Unexpected(format!(
            "more than {PAGES_MAX} pages of balance transactions from {from} to {to}: ask for a shorter period"
        )))
    }

    /// One charge (`ch_…`).
    ///
    /// # Errors
    /// Stripe errors (404 when there is none: [`StripeError::is_not_found`]).
    pub async fn retrieve_charge(&self, id: &str) -> Result<ChargeInfo, StripeError> {
        charge_info(self.send(&RetrieveCharge::new(id)).await?)
    }

    /// One refund (`re_…`).
    ///
    /// # Errors
    /// Stripe errors (404 when there is none).
    pub async fn retrieve_refund(&self, id: &str) -> Result<RefundInfo, StripeError> {
        let refund = self.send(&RetrieveRefund::new(id)).await?;
        Ok(RefundInfo {
            id: refund.id.as_str().to_owned(),
            charge: refund.charge.as_ref().map(|c| c.id().as_str().to_owned()),
            status: refund.status,
            amount_minor: refund.amount,
            currency: refund.currency.to_string(),
            balance_transaction: refund
                .balance_transaction
                .as_ref()
                .map(|t| t.id().as_str().to_owned()),
            created: at(refund.created)?,
        })
    }

    /// The charges of one Stripe customer (`cus_…`), newest first, all pages.
    ///
    /// # Errors
    /// Stripe errors; more than [`PAGES_MAX`] pages.
    pub async fn customer_charges(&self, customer: &str) -> Result<Vec<ChargeInfo>, StripeError> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..PAGES_MAX {
            let mut list = ListCharge::new().customer(customer).limit(PAGE_SIZE);
            if let Some(after) = &after {
                list = list.starting_after(after.as_str());
            }
            let page = self.send(&list).await?;
            for charge in page.data {
                all.push(charge_info(charge)?);
            }
            if !page.has_more {
                return Ok(all);
            }
            after = all.last().map(|charge| charge.id.clone());
        }
        Err(StripeError::Unexpected(format!(
            "customer {customer} has more than {PAGES_MAX} pages of charges"
        )))
    }
}

/// Stripe as the provider side of a reconciliation: its balance transactions,
/// and a charge's status when it has no money for it.
impl recur_commands::reconciliation::ProviderStatement for StripeGateway {
    fn name(&self) -> &'static str {
        recur_commands::PaymentGateway::name(self)
    }

    fn balance_transactions<'a>(
        &'a self,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> recur_commands::payment::GatewayFuture<
        'a,
        Vec<recur_commands::reconciliation::ProviderTransaction>,
    > {
        Box::pin(async move {
            let listed = StripeGateway::balance_transactions(self, from, to)
                .await
                .map_err(|e| recur_commands::payment::GatewayError(e.to_string()))?;
            // In ISO 4217 minor units, as the ledger counts (Stripe counts ISK
            // and UGX in hundredths); an amount that cannot be is kept as Stripe
            // gave it, and then differs.
            let iso = |amount: i64, currency: &str| {
                recur_commands::stripe_amounts::iso_minor_from_stripe(amount, currency)
                    .unwrap_or(amount)
            };
            Ok(listed
                .into_iter()
                .map(|txn| recur_commands::reconciliation::ProviderTransaction {
                    amount_minor: iso(txn.amount_minor, &txn.currency),
                    fee_minor: iso(txn.fee_minor, &txn.currency),
                    id: txn.id,
                    kind: txn.kind,
                    // Fees without a source are not the ledger's business.
                    source: txn.source.unwrap_or_default(),
                    currency: txn.currency,
                    created: txn.created,
                })
                .collect())
        })
    }

    fn charge_status<'a>(
        &'a self,
        charge_id: &'a str,
    ) -> recur_commands::payment::GatewayFuture<'a, Option<String>> {
        Box::pin(async move {
            match self.retrieve_charge(charge_id).await {
                Ok(charge) => Ok(Some(charge.status)),
                Err(error) if error.is_not_found() => Ok(None),
                Err(error) => Err(recur_commands::payment::GatewayError(error.to_string())),
            }
        })
    }
}
