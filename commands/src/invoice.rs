//! Invoice: draft → open → paid / void / uncollectible, with lines, discounts, tax,
//! payment attempts, credit notes, refunds and revenue recognition — each financial
//! event with its balanced postings.

use crate::tagged::domain_events;
use recur_ledger::{Currency, Money, money::RoundingRule};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::aggregate::{Aggregate, DomainEvent};
use crate::coupon::AppliedDiscount;
use crate::error::DomainError;
use crate::ids::{CustomerId, InvoiceId, SubscriptionId};
use crate::period::Period;
use crate::postings::{Account, Journal, Posting, Side};
use crate::tax::TaxBasis;

mod provider;

/// The most lines one invoice holds.
pub const INVOICE_LINES_MAX: usize = 100;

/// What a line bills for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineKind {
    /// A subscription period, billed in advance (deferred, recognised at period end).
    Period,
    /// A proration: credit for unused time (negative) or charge for the rest (deferred).
    Proration,
    /// A one-time purchase (recognised at once).
    OneTime,
}

/// One invoice line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    /// What it bills for.
    pub kind: LineKind,
    /// Shown to the customer.
    pub description: String,
    /// The plan, for revenue accounts.
    pub plan_id: String,
    /// The price.
    pub price_id: String,
    /// Units.
    pub quantity: u32,
    /// Price per unit per period.
    pub unit_amount: Money,
    /// The line's amount (negative for a credit), in minor units.
    pub amount: Money,
    /// The service period, for period and proration lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<Period>,
}

impl Line {
    /// Where the line's revenue goes when the invoice is finalized.
    pub fn revenue_account(&self) -> Account {
        match self.kind {
            LineKind::OneTime => Account::Revenue(self.plan_id.clone()),
            LineKind::Period | LineKind::Proration => {
                Account::DeferredRevenue(self.plan_id.clone())
            }
        }
    }
}

/// Why an invoice exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BillingReason {
    /// The first period of a subscription (or the end of its trial).
    SubscriptionCreate,
    /// A renewal.
    SubscriptionCycle,
    /// A plan or quantity change billed now.
    SubscriptionUpdate,
    /// A one-time purchase.
    Purchase,
}

/// What a subscription asks to be billed: the invoice to draft, with its id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceRequest {
    /// The invoice id, fixed when the subscription decided, so it is drafted once.
    pub invoice_id: InvoiceId,
    /// Why.
    pub reason: BillingReason,
    /// The lines.
    pub lines: Vec<Line>,
    /// The subscription's discount, if it applies to this invoice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discount: Option<AppliedDiscount>,
    /// When it is issued in the business: the start of the period it bills, the
    /// instant of the change it prorates, the purchase. Its first payment is due
    /// then, however late a scheduler drafts it. Absent in invoices asked for
    /// before it was recorded (their drafting time stands in).
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub issued_at: Option<OffsetDateTime>,
}

/// A finalized line's amounts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineTotals {
    /// Discount on the line.
    pub discount: Money,
    /// Tax of the line.
    pub tax: Money,
    /// What the customer pays for it.
    pub charged: Money,
    /// What was credited to its revenue account (revenue before discount).
    pub booked: Money,
}

/// An invoice's amounts, fixed when finalized.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Sum of the lines.
    pub subtotal: Money,
    /// Sum of the discounts.
    pub discount: Money,
    /// Sum of the lines' taxes.
    pub tax: Money,
    /// What the invoice is worth: subtotal − discount (+ tax when exclusive).
    pub total: Money,
    /// Customer credit used.
    pub credit_applied: Money,
    /// What is left to collect: total − credit applied (0 when the total is negative).
    pub amount_due: Money,
    /// Why the tax is what it is.
    pub tax_basis: TaxBasis,
    /// Per line.
    pub lines: Vec<LineTotals>,
}

/// Computes an invoice's amounts: per line, the discount, then tax on the
/// discounted base (rounded per line, see [`crate::tax`]).
///
/// # Errors
/// Currency mismatch, overflow.
pub fn compute_totals(
    lines: &[Line],
    discount: Option<&AppliedDiscount>,
    tax_basis: &TaxBasis,
    currency: Currency,
) -> Result<Totals, DomainError> {
    let amounts: Vec<Money> = lines.iter().map(|l| l.amount).collect();
    let discounts = match discount {
        Some(applied) => applied.discount.per_line(&amounts)?,
        None => amounts.iter().map(|a| Money::zero(a.currency())).collect(),
    };
    let mut line_totals = Vec::with_capacity(lines.len());
    for (amount, line_discount) in amounts.iter().zip(&discounts) {
        let base = amount.checked_sub(*line_discount)?;
        let tax = tax_basis.line_tax(base)?;
        line_totals.push(LineTotals {
            discount: *line_discount,
            tax: tax.tax,
            charged: tax.charged,
            booked: tax.revenue.checked_add(*line_discount)?,
        });
    }
    let subtotal = Money::sum(&amounts, currency)?;
    let discount_total = Money::sum(line_totals.iter().map(|l| l.discount), currency)?;
    let tax = Money::sum(line_totals.iter().map(|l| l.tax), currency)?;
    let total = Money::sum(line_totals.iter().map(|l| l.charged), currency)?;
    Ok(Totals {
        subtotal,
        discount: discount_total,
        tax,
        total,
        credit_applied: Money::zero(currency),
        amount_due: if total.is_negative() {
            Money::zero(currency)
        } else {
            total
        },
        tax_basis: tax_basis.clone(),
        lines: line_totals,
    })
}

/// Invoice states.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum InvoiceStatus {
    /// Being prepared; not owed yet.
    #[default]
    Draft,
    /// Owed.
    Open,
    /// Settled.
    Paid,
    /// Cancelled before payment; its postings reversed.
    Void,
    /// Written off.
    Uncollectible,
}

impl InvoiceStatus {
    fn name(self) -> &'static str {
        match self {
            InvoiceStatus::Draft => "draft",
            InvoiceStatus::Open => "open",
            InvoiceStatus::Paid => "paid",
            InvoiceStatus::Void => "void",
            InvoiceStatus::Uncollectible => "uncollectible",
        }
    }
}

/// A gateway's answer to a charge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ChargeOutcome {
    /// The money moved.
    Succeeded {
        /// The gateway's charge id.
        charge_id: String,
    },
    /// Declined.
    Declined {
        /// Stripe's decline code (`card_declined`, `insufficient_funds`, …).
        decline_code: String,
        /// The gateway's message.
        message: String,
    },
}

impl ChargeOutcome {
    /// The decline code of a declined charge.
    pub fn decline_code(&self) -> Option<&str> {
        match self {
            Self::Declined { decline_code, .. } => Some(decline_code),
            Self::Succeeded { .. } => None,
        }
    }
}

/// One payment attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    /// 1-based.
    pub attempt_no: u32,
    /// The key the charge carries.
    pub idempotency_key: String,
    /// The gateway asked (`simulated`, `stripe`).
    pub gateway: String,
    /// The token charged, if any.
    pub payment_method: Option<String>,
    /// Amount asked.
    pub amount: Money,
    /// The outcome, once recorded.
    pub outcome: Option<ChargeOutcome>,
    /// When to retry after a failure.
    pub next_retry_at: Option<OffsetDateTime>,
    /// When the attempt was due: the invoice's issue, a retry's scheduled time,
    /// or the moment someone asked to pay now.
    pub due_at: OffsetDateTime,
    /// Asked for now (an operator's pay-now, the customer on the update-card
    /// page), outside the dunning schedule: a decline of it after the
    /// campaign's first step is not a step of its own.
    pub on_demand: bool,
}

impl Attempt {
    /// When its outcome takes effect in the business: when it was due, whatever
    /// the moment a late scheduler ran it.
    pub fn effective_at(&self) -> OffsetDateTime {
        self.due_at
    }
}

/// A refund asked of the gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refund {
    /// 1-based.
    pub refund_no: u32,
    /// The key the gateway call carries: `<invoice id>-refund-<n>`.
    pub idempotency_key: String,
    /// Amount, tax included.
    pub amount: Money,
    /// Why.
    pub reason: String,
    /// The gateway's refund id, once the answer is recorded.
    pub refund_id: Option<String>,
    /// When it was requested.
    pub requested_at: OffsetDateTime,
}

/// How a dispute ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DisputeOutcome {
    /// The business won: withheld funds come back.
    Won,
    /// The cardholder won: the disputed amount is gone for good.
    Lost,
    /// An inquiry (no funds were withdrawn) was closed without a chargeback.
    InquiryClosed,
}

/// A card network dispute of a charge of the invoice (a chargeback, or an
/// inquiry before one), as the payment provider reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dispute {
    /// The provider's dispute id (`dp_…`).
    pub dispute_id: String,
    /// The disputed charge.
    pub charge_id: String,
    /// The disputed amount.
    pub amount: Money,
    /// The network's reason code (`fraudulent`, `general`, …).
    pub reason: String,
    /// Withdrawn from the gateway balance and not reinstated (or lost): what
    /// the card network holds now.
    pub withheld: Money,
    /// Whether the funds were withdrawn (once per dispute).
    pub withdrawn: bool,
    /// Whether withdrawn funds were reinstated.
    pub reinstated: bool,
    /// The provider's dispute fee booked so far (by the withdrawal, or by
    /// [`InvoiceEvent::DisputeFeeRecorded`] when a later stage reported it).
    pub fee: Money,
    /// The part of the fee given back booked so far.
    pub fee_returned: Money,
    /// How it ended, once closed.
    pub outcome: Option<DisputeOutcome>,
    /// When it was opened.
    pub opened_at: OffsetDateTime,
}

/// Why a refund made at the payment provider is recorded: its reason when it
/// is one of [`REFUND_REASONS`], else this.
pub const REFUND_REASON_UNSPECIFIED: &str = "unspecified";

/// The first payment attempt of an invoice opened in one step.
#[derive(Clone, Debug)]
pub struct FirstAttempt {
    /// The gateway that will be asked.
    pub gateway: String,
    /// The card token, if one is on file.
    pub payment_method: Option<String>,
    /// When it is due (the invoice's issue).
    pub due_at: OffsetDateTime,
}

/// Why a refund is given: Stripe's refund reasons. Codes, never free text, so
/// no person's words (personal data, in the ledger for good) are recorded.
pub const REFUND_REASONS: [&str; 3] = ["duplicate", "fraudulent", "requested_by_customer"];
/// Why a credit note is issued: Stripe's credit note reasons, likewise codes.
pub const CREDIT_NOTE_REASONS: [&str; 4] = [
    "duplicate",
    "fraudulent",
    "order_change",
    "product_unsatisfactory",
];

/// Refuses a reason that is not one of `codes`.
fn check_reason(reason: &str, codes: &[&str]) -> Result<(), DomainError> {
    if codes.contains(&reason) {
        Ok(())
    } else {
        Err(DomainError::InvalidField {
            field: "reason",
            reason: format!("one of {}", codes.join(", ")),
        })
    }
}

/// What can be asked of an invoice.
#[derive(Clone, Debug)]
pub enum InvoiceCommand {
    /// Draft, finalize and start the first payment attempt in one decision
    /// (each a no-op when done already; the attempt only for an open invoice
    /// that has none yet): what billing a new invoice appends at once.
    Open {
        /// Who owes it.
        customer_id: CustomerId,
        /// Its subscription, if any.
        subscription_id: Option<SubscriptionId>,
        /// What to bill.
        request: InvoiceRequest,
        /// Tax rule for the customer.
        tax_basis: TaxBasis,
        /// Customer credit already taken for it.
        credit_applied: Money,
        /// The first attempt.
        attempt: FirstAttempt,
        /// Now.
        now: OffsetDateTime,
    },
    /// Draft it (a retry with the same id is a no-op).
    Draft {
        /// Who owes it.
        customer_id: CustomerId,
        /// Its subscription, if any.
        subscription_id: Option<SubscriptionId>,
        /// What to bill.
        request: InvoiceRequest,
        /// Now.
        now: OffsetDateTime,
    },
    /// Fix the amounts and make it owed.
    Finalize {
        /// Tax rule for the customer.
        tax_basis: TaxBasis,
        /// Customer credit already taken for it.
        credit_applied: Money,
        /// Now.
        now: OffsetDateTime,
    },
    /// Start a payment attempt (a no-op while one is unanswered).
    StartAttempt {
        /// The gateway that will be asked.
        gateway: String,
        /// The card token, if one is on file.
        payment_method: Option<String>,
        /// When the attempt was due (at most `now`).
        due_at: OffsetDateTime,
        /// Asked for now, outside the dunning schedule.
        on_demand: bool,
        /// The attempts the caller saw when it decided to charge: another
        /// attempt since (a concurrent collector) makes this one a no-op.
        after_attempts: u32,
        /// Now.
        now: OffsetDateTime,
    },
    /// Record an attempt's outcome (a no-op when already recorded).
    RecordOutcome {
        /// Which attempt.
        attempt_no: u32,
        /// What the gateway said.
        outcome: ChargeOutcome,
        /// When to try again after a failure, per the dunning policy.
        next_retry_at: Option<OffsetDateTime>,
        /// Now.
        now: OffsetDateTime,
    },
    /// Cancel an open invoice with nothing paid.
    Void {
        /// Now.
        now: OffsetDateTime,
    },
    /// Write off what is still owed.
    MarkUncollectible {
        /// Now.
        now: OffsetDateTime,
    },
    /// Reduce what an open invoice owes.
    IssueCreditNote {
        /// How much (tax included).
        amount: Money,
        /// Why: one of [`CREDIT_NOTE_REASONS`].
        reason: String,
        /// Now.
        now: OffsetDateTime,
    },
    /// Ask for money to be given back on a paid invoice: numbered and reserved
    /// against what is refundable on the version it appends after, before the
    /// gateway is called.
    RequestRefund {
        /// How much (tax included).
        amount: Money,
        /// Why: one of [`REFUND_REASONS`].
        reason: String,
        /// Now.
        now: OffsetDateTime,
    },
    /// Record the gateway's answer to a requested refund (a no-op when recorded).
    RecordRefund {
        /// Which refund of this invoice.
        refund_no: u32,
        /// The gateway's refund id.
        refund_id: String,
        /// Now.
        now: OffsetDateTime,
    },
    /// Record a payment the payment provider reports (its webhook): an
    /// attempt's answer that was lost, or a payment that went through after
    /// Recur recorded a decline (the customer authenticated it). Nothing when
    /// the invoice is paid already.
    RecordProviderPayment {
        /// The attempt the provider's payment belongs to; the last one when
        /// the provider does not say.
        attempt_no: Option<u32>,
        /// The provider's charge id.
        charge_id: String,
        /// What the provider collected: must be what the attempt asked.
        amount: Money,
        /// When it took effect (the provider's event time).
        now: OffsetDateTime,
    },
    /// Record a refund the payment provider made: one of Recur's own whose
    /// answer was lost (the pending refund its `recur_refund` key names, or,
    /// when the provider's refund carries no metadata at all, a pending
    /// refund of the same amount), or one made behind Recur's back (the
    /// provider's dashboard). Nothing when its id is recorded already.
    RecordProviderRefund {
        /// The provider's refund id.
        refund_id: String,
        /// The key Recur's gateway wrote on the refund (metadata
        /// `recur_refund` = `<invoice id>-refund-<n>`), if any.
        recur_key: Option<String>,
        /// The refund carries no metadata at all (whether it is Recur's cannot
        /// be told): a pending refund of the same amount is taken as its
        /// match. False when it carries metadata without `recur_refund`: made
        /// behind Recur's back, never matched by amount.
        match_by_amount: bool,
        /// Amount, tax included.
        amount: Money,
        /// The provider's reason (one of [`REFUND_REASONS`], else
        /// [`REFUND_REASON_UNSPECIFIED`]).
        reason: String,
        /// When it took effect.
        now: OffsetDateTime,
    },
    /// Record that a charge of the invoice is disputed (nothing when it is
    /// recorded already).
    OpenDispute {
        /// The provider's dispute id.
        dispute_id: String,
        /// The disputed charge.
        charge_id: String,
        /// The disputed amount, in the invoice's currency.
        amount: Money,
        /// The network's reason code.
        reason: String,
        /// When it took effect.
        now: OffsetDateTime,
    },
    /// The card network took the disputed amount back from the gateway
    /// balance, and the provider charged its dispute fee (once per dispute).
    WithdrawDisputedFunds {
        /// The dispute.
        dispute_id: String,
        /// The provider's fee (in the currency it was charged in; zero if none).
        fee: Money,
        /// When it took effect.
        now: OffsetDateTime,
    },
    /// The card network gave withdrawn funds back (once per dispute).
    ReinstateDisputedFunds {
        /// The dispute.
        dispute_id: String,
        /// The part of the fee given back (zero if none).
        fee_returned: Money,
        /// When it took effect.
        now: OffsetDateTime,
    },
    /// Book the dispute fee, and the part of it given back, that a stage of
    /// the dispute reports and the invoice has not booked yet (Stripe's
    /// events arrive in any order, and not each lists the fee): only the
    /// difference, so a fee is booked once whichever stage reports it first.
    RecordDisputeFees {
        /// The dispute.
        dispute_id: String,
        /// The fee the provider reports charged in all (zero if none).
        fee: Money,
        /// The fee the provider reports given back in all (zero if none).
        fee_returned: Money,
        /// When it took effect.
        now: OffsetDateTime,
    },
    /// The dispute ended (once).
    CloseDispute {
        /// The dispute.
        dispute_id: String,
        /// How.
        outcome: DisputeOutcome,
        /// When it took effect.
        now: OffsetDateTime,
    },
    /// Move deferred revenue of periods that have ended to revenue.
    RecognizeRevenue {
        /// Now.
        now: OffsetDateTime,
    },
}

domain_events! {
    /// What happened to an invoice.
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(tag = "type")]
    pub enum InvoiceEvent {
        /// Drafted.
        InvoiceDrafted {
            /// Its id.
            invoice_id: InvoiceId,
            /// Who owes it.
            customer_id: CustomerId,
            /// Its subscription.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            subscription_id: Option<SubscriptionId>,
            /// Why.
            reason: BillingReason,
            /// The lines.
            lines: Vec<Line>,
            /// The discount, if any.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            discount: Option<AppliedDiscount>,
            /// When it is issued in the business (see [`InvoiceRequest::issued_at`]).
            #[serde(default, with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
            issued_at: Option<OffsetDateTime>,
            /// When.
            #[serde(with = "time::serde::rfc3339")]
            at: OffsetDateTime,
        },
        /// Amounts fixed; now owed.
        InvoiceFinalized {
            /// The amounts.
            totals: Totals,
            /// When.
            #[serde(with = "time::serde::rfc3339")]
            at: OffsetDateTime,
            /// Receivable, revenue (deferred or earned), discounts, tax, customer credit.
            postings: Vec<Posting>,
        },
        /// A charge was asked of the gateway with this key.
        PaymentAttemptStarted {
            /// 1-based.
            attempt_no: u32,
            /// The charge's idempotency key.
            idempotency_key: String,
            /// The gateway asked.
            gateway: String,
            /// The card token.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            payment_method: Option<String>,
            /// Amount asked.
            amount: Money,
            /// When it was due (absent in attempts recorded before it was: their
            /// start stands in).
            #[serde(default, with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
            due_at: Option<OffsetDateTime>,
            /// Asked for now (pay-now, the update-card page), outside the
            /// dunning schedule (absent: a scheduled attempt).
            #[serde(default, skip_serializing_if = "std::ops::Not::not")]
            on_demand: bool,
            /// When.
            #[serde(with = "time::serde::rfc3339")]
            at: OffsetDateTime,
        },
        /// The charge succeeded; the invoice is paid.
        PaymentSucceeded {
            /// Which attempt.
            attempt_no: u32,
            /// The gateway's charge id.
            charge_id: String,
            /// Amount collected.
            amount: Money,
            /// When.
            #[serde(with = "time::serde::rfc3339")]
            at: OffsetDateTime,
            /// Gateway balance against receivable (or bad debt, when recovered).
            postings: Vec<Posting>,
        },
        /// The charge was declined.
        PaymentFailed {
            /// Which attempt.
            attempt_no: u32,
            /// Decline code.
            decline_code: String,
            /// Gateway message.
            message: String,
            /// When it will be retried, if it will.
            #[serde(default, with = "time::serde::rfc3339::option")]
            next_retry_at: Option<OffsetDateTime>,
            /// When.
            #[serde(with = "time::serde::rfc3339")]
            at: OffsetDateTime,
        },
        /// Cancelled; finalization reversed.
        InvoiceVoided {
            /// When.
            #[serde(with = "time::serde::rfc3339")]
            at: OffsetDateTime,
            /// The reversal.
            postings: Vec<Posting>,
        },
        /// Written off.
        InvoiceMarkedUncollectible {
            /// Amount written off.
            amount: Money,
            /// When.
            #[serde(with = "time::serde::rfc3339")]
            at: OffsetDateTime,
            /// Bad debt against receivable.
            postings: Vec<Posting>,
        },
        /// Owed amount reduced.
        CreditNoteIssued {
            /// 1-based.
            credit_note_no: u32,
            /// Amount, tax included.
            amount: Money,
            /// Tax part.
            tax: Money,
            /// Why.
            reason: String,
            /// When.
            #[serde(with = "time::serde::rfc3339")]
            at: OffsetDateTime,
            /// Refunds and tax against receivable.
            postings: Vec<Posting>,
        },
        /// A refund was asked of the gateway with this key: written **before** the
        /// call, so its number and amount are decided on the stream's version.
        RefundRequested {
            /// 1-based.
            refund_no: u32,
            /// The refund's idempotency key.
            idempotency_key: String,
            /// Amount, tax included.
            amount: Money,
            /// Why.
            reason: String,
            /// When.
            #[serde(with = "time::serde::rfc3339")]
            at: OffsetDateTime,
        },
        /// Money given back.
        InvoiceRefunded {
            /// 1-based.
            refund_no: u32,
            /// Amount, tax included.
            amount: Money,
            /// Tax part.
            tax: Money,
            /// Gateway refund id.
            refund_id: String,
            /// Why.
            reason: String,
            /// When.
            #[serde(with = "time::serde::rfc3339")]
            at: OffsetDateTime,
            /// Refunds and tax against gateway balance.
            postings: Vec<Posting>,
        },
        /// A charge of the invoice is disputed at the card network (a
        /// chargeback, or an inquiry before one). No money moves yet.
        DisputeOpened {
            /// The provider's dispute id (`dp_…`).
            dispute_id: String,
            /// The disputed charge.
            charge_id: String,
            /// The disputed amount.
            amount: Money,
            /// The network's reason code (`fraudulent`, `general`, …).
            reason: String,
            /// When it took effect (the provider's event time).
            #[serde(with = "time::serde::rfc3339")]
            at: OffsetDateTime,
        },
        /// The card network withdrew the disputed amount from the gateway
        /// balance, and the provider charged its fee.
        DisputeFundsWithdrawn {
            /// The dispute.
            dispute_id: String,
            /// Withdrawn.
            amount: Money,
            /// The provider's dispute fee (zero if it reported none).
            fee: Money,
            /// When it took effect.
            #[serde(with = "time::serde::rfc3339")]
            at: OffsetDateTime,
            /// Disputed funds and dispute fees against gateway balance.
            postings: Vec<Posting>,
        },
        /// The card network gave the withdrawn amount back (a dispute won).
        DisputeFundsReinstated {
            /// The dispute.
            dispute_id: String,
            /// Given back.
            amount: Money,
            /// The part of the fee given back (zero if none).
            fee_returned: Money,
            /// When it took effect.
            #[serde(with = "time::serde::rfc3339")]
            at: OffsetDateTime,
            /// Gateway balance against disputed funds (and dispute fees).
            postings: Vec<Posting>,
        },
        /// A dispute fee the provider reported after the funds' withdrawal was
        /// booked without it (its balance transactions were not listed yet):
        /// the part not booked before.
        DisputeFeeRecorded {
            /// The dispute.
            dispute_id: String,
            /// The fee booked now.
            fee: Money,
            /// When it took effect.
            #[serde(with = "time::serde::rfc3339")]
            at: OffsetDateTime,
            /// Dispute fees against gateway balance.
            postings: Vec<Posting>,
        },
        /// A part of the dispute fee given back that the provider reported
        /// after the reinstatement was booked without it: the part not booked
        /// before.
        DisputeFeeReturned {
            /// The dispute.
            dispute_id: String,
            /// The fee given back, booked now.
            fee_returned: Money,
            /// When it took effect.
            #[serde(with = "time::serde::rfc3339")]
            at: OffsetDateTime,
            /// Gateway balance against dispute fees.
            postings: Vec<Posting>,
        },
        /// The dispute ended: won, lost (the disputed amount is gone) or an
        /// inquiry closed.
        DisputeClosed {
            /// The dispute.
            dispute_id: String,
            /// How.
            outcome: DisputeOutcome,
            /// Lost for good (zero unless lost).
            amount_lost: Money,
            /// When it took effect.
            #[serde(with = "time::serde::rfc3339")]
            at: OffsetDateTime,
            /// Lost: disputes against disputed funds (or against gateway
            /// balance, when the funds were never recorded as withdrawn).
            postings: Vec<Posting>,
        },
        /// Deferred revenue of ended periods earned.
        RevenueRecognized {
            /// The lines recognised (indexes).
            lines: Vec<usize>,
            /// When.
            #[serde(with = "time::serde::rfc3339")]
            at: OffsetDateTime,
            /// Deferred revenue against revenue.
            postings: Vec<Posting>,
        },
    }
}

impl DomainEvent for InvoiceEvent {
    fn event_type(&self) -> &'static str {
        match self {
            InvoiceEvent::InvoiceDrafted { .. } => "InvoiceDrafted",
            InvoiceEvent::InvoiceFinalized { .. } => "InvoiceFinalized",
            InvoiceEvent::PaymentAttemptStarted { .. } => "PaymentAttemptStarted",
            InvoiceEvent::PaymentSucceeded { .. } => "PaymentSucceeded",
            InvoiceEvent::PaymentFailed { .. } => "PaymentFailed",
            InvoiceEvent::InvoiceVoided { .. } => "InvoiceVoided",
            InvoiceEvent::InvoiceMarkedUncollectible { .. } => "InvoiceMarkedUncollectible",
            InvoiceEvent::CreditNoteIssued { .. } => "CreditNoteIssued",
            InvoiceEvent::RefundRequested { .. } => "RefundRequested",
            InvoiceEvent::InvoiceRefunded { .. } => "InvoiceRefunded",
            InvoiceEvent::RevenueRecognized { .. } => "RevenueRecognized",
            InvoiceEvent::DisputeOpened { .. } => "DisputeOpened",
            InvoiceEvent::DisputeFundsWithdrawn { .. } => "DisputeFundsWithdrawn",
            InvoiceEvent::DisputeFundsReinstated { .. } => "DisputeFundsReinstated",
            InvoiceEvent::DisputeClosed { .. } => "DisputeClosed",
            InvoiceEvent::DisputeFeeRecorded { .. } => "DisputeFeeRecorded",
            InvoiceEvent::DisputeFeeReturned { .. } => "DisputeFeeReturned",
        }
    }
}

impl InvoiceEvent {
    /// The event's postings (empty for non-financial events).
    pub fn postings(&self) -> &[Posting] {
        match self {
            InvoiceEvent::InvoiceFinalized { postings, .. }
            | InvoiceEvent::PaymentSucceeded { postings, .. }
            | InvoiceEvent::InvoiceVoided { postings, .. }
            | InvoiceEvent::InvoiceMarkedUncollectible { postings, .. }
            | InvoiceEvent::CreditNoteIssued { postings, .. }
            | InvoiceEvent::InvoiceRefunded { postings, .. }
            | InvoiceEvent::RevenueRecognized { postings, .. }
            | InvoiceEvent::DisputeFundsWithdrawn { postings, .. }
            | InvoiceEvent::DisputeFundsReinstated { postings, .. }
            | InvoiceEvent::DisputeClosed { postings, .. }
            | InvoiceEvent::DisputeFeeRecorded { postings, .. }
            | InvoiceEvent::DisputeFeeReturned { postings, .. } => postings,
            _ => &[],
        }
    }
}

/// An invoice's state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Invoice {
    /// Its id, once drafted.
    pub id: Option<InvoiceId>,
    /// Who owes it.
    pub customer_id: Option<CustomerId>,
    /// Its subscription.
    pub subscription_id: Option<SubscriptionId>,
    /// Why it exists.
    pub reason: Option<BillingReason>,
    /// State.
    pub status: InvoiceStatus,
    /// Lines.
    pub lines: Vec<Line>,
    /// Discount.
    pub discount: Option<AppliedDiscount>,
    /// Amounts, once finalized.
    pub totals: Option<Totals>,
    /// Payment attempts.
    pub attempts: Vec<Attempt>,
    /// Collected.
    pub amount_paid: Option<Money>,
    /// Given back.
    pub amount_refunded: Option<Money>,
    /// Reduced by credit notes.
    pub amount_credited: Option<Money>,
    /// Refunds requested, oldest first, with the gateway's id once recorded.
    pub refunds: Vec<Refund>,
    /// Credit notes so far.
    pub credit_notes: u32,
    /// Disputes of its charges, oldest first.
    pub disputes: Vec<Dispute>,
    /// Which lines' revenue is recognised.
    pub recognized: Vec<bool>,
    /// When drafted.
    pub created_at: Option<OffsetDateTime>,
    /// When it is issued in the business (its drafting time if not recorded).
    pub issued_at: Option<OffsetDateTime>,
    /// When it was settled in the business: paid (the paying attempt's due
    /// time, or the issue when nothing was due), credited to zero, or voided.
    pub settled_at: Option<OffsetDateTime>,
}

impl Invoice {
    /// The invoice currency.
    pub fn currency(&self) -> Option<Currency> {
        self.lines.first().map(|l| l.amount.currency())
    }

    fn zero(&self) -> Money {
        Money::zero(self.currency().unwrap_or(Currency::USD))
    }

    /// What is still owed: amount due − paid − credited (never below zero).
    pub fn amount_remaining(&self) -> Money {
        let Some(totals) = &self.totals else {
            return self.zero();
        };
        let owed = totals
            .amount_due
            .checked_sub(self.amount_paid.unwrap_or(self.zero()))
            .and_then(|m| m.checked_sub(self.amount_credited.unwrap_or(self.zero())))
            .unwrap_or(self.zero());
        if owed.is_negative() {
            self.zero()
        } else {
            owed
        }
    }

    /// The attempt waiting for its outcome, if any.
    pub fn pending_attempt(&self) -> Option<&Attempt> {
        self.attempts.last().filter(|a| a.outcome.is_none())
    }

    /// The key refund `refund_no` carries to the gateway: `<invoice id>-refund-<n>`.
    fn refund_key(&self, refund_no: u32) -> String {
        let id = self.id.map(|id| id.to_string()).unwrap_or_default();
        format!("{id}-refund-{refund_no}")
    }

    /// Refunds requested whose gateway answer is not recorded yet.
    pub fn pending_refunds(&self) -> impl Iterator<Item = &Refund> {
        self.refunds.iter().filter(|r| r.refund_id.is_none())
    }

    /// What can still be refunded: collected by charges, less refunds recorded
    /// and refunds requested.
    pub fn refundable(&self) -> Result<Money, DomainError> {
        let mut left = self.amount_paid.unwrap_or(self.zero());
        left = left.checked_sub(self.amount_refunded.unwrap_or(self.zero()))?;
        for pending in self.pending_refunds() {
            left = left.checked_sub(pending.amount)?;
        }
        // A disputed amount cannot be refunded as well: the network holds it
        // (or has given it to the cardholder).
        for dispute in &self.disputes {
            if dispute.withheld.currency() == left.currency() {
                left = left.checked_sub(dispute.withheld)?;
            }
        }
        Ok(left)
    }

    /// When the next retry is due, after a failed attempt on an open invoice.
    pub fn next_retry_at(&self) -> Option<OffsetDateTime> {
        if self.status != InvoiceStatus::Open {
            return None;
        }
        self.attempts.last().and_then(|a| a.next_retry_at)
    }

    /// The earliest end of a period line whose revenue is not yet recognised.
    pub fn next_recognition_at(&self) -> Option<OffsetDateTime> {
        if !matches!(
            self.status,
            InvoiceStatus::Open | InvoiceStatus::Paid | InvoiceStatus::Uncollectible
        ) {
            return None;
        }
        self.lines
            .iter()
            .zip(&self.recognized)
            .filter(|(line, done)| !**done && line.kind != LineKind::OneTime)
            .filter_map(|(line, _)| line.period.map(|p| p.end))
            .min()
    }

    fn refuse(&self, action: &'static str) -> DomainError {
        DomainError::InvalidTransition {
            kind: "invoice",
            action,
            state: self.status.name().into(),
        }
    }

    /// Splits `amount` (tax included) into its tax part, pro rata to the invoice's
    /// tax over its total, rounded half-up.
    fn tax_part(&self, amount: Money) -> Result<Money, DomainError> {
        let Some(totals) = &self.totals else {
            return Ok(self.zero());
        };
        if totals.tax.is_zero() || !totals.total.is_positive() {
            return Ok(Money::zero(amount.currency()));
        }
        let exact = amount.mul_decimal(totals.tax.amount())?;
        Ok(
            Money::new(exact.amount() / totals.total.amount(), amount.currency())
                .round_to_minor(RoundingRule::HalfUp),
        )
    }

    /// Postings that give `amount` (tax included) back: refunds and the tax share
    /// debited, `from` credited (receivable for a credit note, cash for a refund).
    fn give_back(
        &self,
        amount: Money,
        from: Account,
    ) -> Result<(Money, Vec<Posting>), DomainError> {
        let tax = self.tax_part(amount)?;
        let mut journal = Journal::new();
        journal.debit(Account::Refunds, amount.checked_sub(tax)?);
        if let Some(place) = self
            .totals
            .as_ref()
            .and_then(|t| t.tax_basis.jurisdiction())
        {
            journal.debit(Account::TaxPayable(place.to_owned()), tax);
        }
        journal.credit(from, amount);
        Ok((tax, journal.finish()?))
    }

    fn decide_finalize(
        &self,
        tax_basis: TaxBasis,
        credit_applied: Money,
        now: OffsetDateTime,
    ) -> Result<Vec<InvoiceEvent>, DomainError> {
        match self.status {
            InvoiceStatus::Draft => {}
            _ if self.totals.is_some() => return Ok(Vec::new()),
            _ => return Err(self.refuse("finalize")),
        }
        let currency = self.currency().ok_or_else(|| self.refuse("finalize"))?;
        let mut totals = compute_totals(&self.lines, self.discount.as_ref(), &tax_basis, currency)?;
        if credit_applied.is_negative()
            || credit_applied.currency() != currency
            || credit_applied.amount() > totals.amount_due.amount()
        {
            return Err(DomainError::InvalidField {
                field: "credit_applied",
                reason: "must be between zero and the invoice total".into(),
            });
        }
        totals.credit_applied = credit_applied;
        totals.amount_due = totals.amount_due.checked_sub(credit_applied)?;
        let postings = finalization(&self.lines, &totals, &[], Side::Credit).finish()?;
        Ok(vec![InvoiceEvent::InvoiceFinalized {
            totals,
            at: now,
            postings,
        }])
    }

    fn decide_outcome(
        &self,
        attempt_no: u32,
        outcome: ChargeOutcome,
        next_retry_at: Option<OffsetDateTime>,
        now: OffsetDateTime,
    ) -> Result<Vec<InvoiceEvent>, DomainError> {
        let Some(attempt) = self.attempts.iter().find(|a| a.attempt_no == attempt_no) else {
            return Err(DomainError::InvalidField {
                field: "attempt_no",
                reason: format!("attempt {attempt_no} was never started"),
            });
        };
        if attempt.outcome.is_some() {
            return Ok(Vec::new());
        }
        Ok(vec![match outcome {
            ChargeOutcome::Succeeded { charge_id } => {
                let mut journal = Journal::new();
                journal.debit(Account::GatewayBalance, attempt.amount);
                let settled = if self.status == InvoiceStatus::Uncollectible {
                    Account::BadDebt
                } else {
                    Account::AccountsReceivable
                };
                journal.credit(settled, attempt.amount);
                InvoiceEvent::PaymentSucceeded {
                    attempt_no,
                    charge_id,
                    amount: attempt.amount,
                    at: now,
                    postings: journal.finish()?,
                }
            }
            ChargeOutcome::Declined {
                decline_code,
                message,
            } => InvoiceEvent::PaymentFailed {
                attempt_no,
                decline_code,
                message,
                next_retry_at,
                at: now,
            },
        }])
    }
}

impl Aggregate for Invoice {
    type Event = InvoiceEvent;
    type Command = InvoiceCommand;

    fn decide(&self, command: InvoiceCommand) -> Result<Vec<InvoiceEvent>, DomainError> {
        if let InvoiceCommand::Open {
            customer_id,
            subscription_id,
            request,
            tax_basis,
            credit_applied,
            attempt,
            now,
        } = command
        {
            let mut state = self.clone();
            let mut events = Vec::new();
            let mut step = |state: &mut Invoice, command| -> Result<(), DomainError> {
                for event in state.decide(command)? {
                    state.evolve(&event);
                    events.push(event);
                }
                Ok(())
            };
            step(
                &mut state,
                InvoiceCommand::Draft {
                    customer_id,
                    subscription_id,
                    request,
                    now,
                },
            )?;
            step(
                &mut state,
                InvoiceCommand::Finalize {
                    tax_basis,
                    credit_applied,
                    now,
                },
            )?;
            if state.status == InvoiceStatus::Open && state.attempts.is_empty() {
                step(
                    &mut state,
                    InvoiceCommand::StartAttempt {
                        gateway: attempt.gateway,
                        payment_method: attempt.payment_method,
                        due_at: attempt.due_at,
                        on_demand: false,
                        after_attempts: 0,
                        now,
                    },
                )?;
            }
            return Ok(events);
        }
        if let InvoiceCommand::Draft {
            customer_id,
            subscription_id,
            request,
            now,
        } = command
        {
            if self.id.is_some() {
                return Ok(Vec::new());
            }
            if request.lines.is_empty() || request.lines.len() > INVOICE_LINES_MAX {
                return Err(DomainError::InvalidField {
                    field: "lines",
                    reason: format!("1 to {INVOICE_LINES_MAX} lines"),
                });
            }
            let currency = request.lines[0].amount.currency();
            if let Some(AppliedDiscount {
                discount: crate::coupon::Discount::AmountOff { amount },
                ..
            }) = &request.discount
                && amount.currency() != currency
            {
                return Err(DomainError::CurrencyMismatch {
                    expected: currency.code().into(),
                    got: amount.currency().code().into(),
                });
            }
            for line in &request.lines {
                if line.amount.currency() != currency {
                    return Err(DomainError::CurrencyMismatch {
                        expected: currency.code().into(),
                        got: line.amount.currency().code().into(),
                    });
                }
                line.amount.to_minor()?;
            }
            return Ok(vec![InvoiceEvent::InvoiceDrafted {
                invoice_id: request.invoice_id,
                customer_id,
                subscription_id,
                reason: request.reason,
                lines: request.lines,
                discount: request.discount,
                issued_at: request.issued_at,
                at: now,
            }]);
        }
        if self.id.is_none() {
            return Err(DomainError::NotFound {
                kind: "invoice",
                id: String::new(),
            });
        }
        match command {
            InvoiceCommand::Draft { .. } | InvoiceCommand::Open { .. } => Ok(Vec::new()),
            InvoiceCommand::Finalize {
                tax_basis,
                credit_applied,
                now,
            } => self.decide_finalize(tax_basis, credit_applied, now),
            InvoiceCommand::StartAttempt {
                gateway,
                payment_method,
                due_at,
                on_demand,
                after_attempts,
                now,
            } => {
                // Paid already, or attempted since the caller looked (a
                // concurrent collector decided on what it saw): nothing to do.
                if self.pending_attempt().is_some()
                    || self.status == InvoiceStatus::Paid
                    || self.attempts.len() != after_attempts as usize
                {
                    return Ok(Vec::new());
                }
                if !matches!(
                    self.status,
                    InvoiceStatus::Open | InvoiceStatus::Uncollectible
                ) {
                    return Err(self.refuse("charge"));
                }
                // Pay-now and the update-card page pay open invoices only: one
                // written off meanwhile (the campaign gave up) is not charged
                // behind the final action.
                if on_demand && self.status != InvoiceStatus::Open {
                    return Err(self.refuse("pay"));
                }
                let amount = self.amount_remaining();
                if !amount.is_positive() {
                    return Ok(Vec::new());
                }
                let attempt_no = u32::try_from(self.attempts.len()).unwrap_or(u32::MAX - 1) + 1;
                let id = self.id.map(|id| id.to_string()).unwrap_or_default();
                Ok(vec![InvoiceEvent::PaymentAttemptStarted {
                    attempt_no,
                    idempotency_key: format!("{id}-attempt-{attempt_no}"),
                    gateway,
                    payment_method,
                    amount,
                    due_at: Some(due_at.min(now)),
                    on_demand,
                    at: now,
                }])
            }
            InvoiceCommand::RecordOutcome {
                attempt_no,
                outcome,
                next_retry_at,
                now,
            } => self.decide_outcome(attempt_no, outcome, next_retry_at, now),
            InvoiceCommand::Void { now } => {
                match self.status {
                    InvoiceStatus::Void => return Ok(Vec::new()),
                    // Only untouched invoices: payments need refunds, credit notes stay.
                    InvoiceStatus::Draft | InvoiceStatus::Open
                        if self.amount_paid.is_none_or(|m| m.is_zero())
                            && self.amount_credited.is_none_or(|m| m.is_zero()) => {}
                    _ => return Err(self.refuse("void")),
                }
                let postings = match &self.totals {
                    Some(totals) => {
                        finalization(&self.lines, totals, &self.recognized, Side::Debit).finish()?
                    }
                    None => Vec::new(),
                };
                Ok(vec![InvoiceEvent::InvoiceVoided { at: now, postings }])
            }
            InvoiceCommand::MarkUncollectible { now } => {
                match self.status {
                    // Paid meanwhile: nothing is left to write off.
                    InvoiceStatus::Uncollectible | InvoiceStatus::Paid => return Ok(Vec::new()),
                    // A charge in flight (the customer paying on the
                    // update-card page) decides first: never written off
                    // while money may be moving.
                    InvoiceStatus::Open if self.pending_attempt().is_some() => {
                        return Ok(Vec::new());
                    }
                    InvoiceStatus::Open => {}
                    _ => return Err(self.refuse("mark uncollectible")),
                }
                let amount = self.amount_remaining();
                let mut journal = Journal::new();
                journal.debit(Account::BadDebt, amount);
                journal.credit(Account::AccountsReceivable, amount);
                Ok(vec![InvoiceEvent::InvoiceMarkedUncollectible {
                    amount,
                    at: now,
                    postings: journal.finish()?,
                }])
            }
            InvoiceCommand::IssueCreditNote {
                amount,
                reason,
                now,
            } => {
                check_reason(&reason, &CREDIT_NOTE_REASONS)?;
                if self.status != InvoiceStatus::Open {
                    return Err(self.refuse("credit"));
                }
                let remaining = self.amount_remaining();
                check_positive_within(amount, remaining, "credit note")?;
                let (tax, postings) = self.give_back(amount, Account::AccountsReceivable)?;
                Ok(vec![InvoiceEvent::CreditNoteIssued {
                    credit_note_no: self.credit_notes + 1,
                    amount,
                    tax,
                    reason,
                    at: now,
                    postings,
                }])
            }
            InvoiceCommand::RequestRefund {
                amount,
                reason,
                now,
            } => {
                check_reason(&reason, &REFUND_REASONS)?;
                let charged = self
                    .attempts
                    .iter()
                    .any(|a| matches!(a.outcome, Some(ChargeOutcome::Succeeded { .. })));
                if self.status != InvoiceStatus::Paid || !charged {
                    return Err(self.refuse("refund"));
                }
                check_positive_within(amount, self.refundable()?, "refund")?;
                let refund_no = u32::try_from(self.refunds.len()).unwrap_or(u32::MAX - 1) + 1;
                Ok(vec![InvoiceEvent::RefundRequested {
                    refund_no,
                    idempotency_key: self.refund_key(refund_no),
                    amount,
                    reason,
                    at: now,
                }])
            }
            InvoiceCommand::RecordRefund {
                refund_no,
                refund_id,
                now,
            } => {
                let Some(refund) = self.refunds.iter().find(|r| r.refund_no == refund_no) else {
                    return Err(DomainError::InvalidField {
                        field: "refund_no",
                        reason: format!("refund {refund_no} was never requested"),
                    });
                };
                if refund.refund_id.is_some() {
                    return Ok(Vec::new());
                }
                let (tax, postings) = self.give_back(refund.amount, Account::GatewayBalance)?;
                Ok(vec![InvoiceEvent::InvoiceRefunded {
                    refund_no,
                    amount: refund.amount,
                    tax,
                    refund_id,
                    reason: refund.reason.clone(),
                    at: now,
                    postings,
                }])
            }
            provider @ (InvoiceCommand::RecordProviderPayment { .. }
            | InvoiceCommand::RecordProviderRefund { .. }
            | InvoiceCommand::OpenDispute { .. }
            | InvoiceCommand::WithdrawDisputedFunds { .. }
            | InvoiceCommand::ReinstateDisputedFunds { .. }
            | InvoiceCommand::RecordDisputeFees { .. }
            | InvoiceCommand::CloseDispute { .. }) => self
                .decide_provider(&provider)
                .unwrap_or_else(|| Ok(Vec::new())),
            InvoiceCommand::RecognizeRevenue { now } => {
                let Some(totals) = &self.totals else {
                    return Ok(Vec::new());
                };
                if self.status == InvoiceStatus::Void {
                    return Ok(Vec::new());
                }
                let mut journal = Journal::new();
                let mut lines = Vec::new();
                for (index, (line, done)) in self.lines.iter().zip(&self.recognized).enumerate() {
                    let ended = line.period.is_some_and(|p| p.end <= now);
                    if *done || line.kind == LineKind::OneTime || !ended {
                        continue;
                    }
                    let booked = totals.lines[index].booked;
                    journal.debit(line.revenue_account(), booked);
                    journal.credit(Account::Revenue(line.plan_id.clone()), booked);
                    lines.push(index);
                }
                if lines.is_empty() {
                    return Ok(Vec::new());
                }
                Ok(vec![InvoiceEvent::RevenueRecognized {
                    lines,
                    at: now,
                    postings: journal.finish()?,
                }])
            }
        }
    }

    fn evolve(&mut self, event: &InvoiceEvent) {
        match event {
            InvoiceEvent::InvoiceDrafted {
                invoice_id,
                customer_id,
                subscription_id,
                reason,
                lines,
                discount,
                issued_at,
                at,
            } => {
                self.issued_at = Some(issued_at.unwrap_or(*at));
                self.id = Some(*invoice_id);
                self.customer_id = Some(*customer_id);
                self.subscription_id = *subscription_id;
                self.reason = Some(*reason);
                self.lines.clone_from(lines);
                self.recognized = lines.iter().map(|l| l.kind == LineKind::OneTime).collect();
                self.discount.clone_from(discount);
                self.created_at = Some(*at);
            }
            InvoiceEvent::InvoiceFinalized { totals, at, .. } => {
                self.status = if totals.amount_due.is_zero() {
                    self.settled_at = Some(self.issued_at.unwrap_or(*at));
                    InvoiceStatus::Paid
                } else {
                    InvoiceStatus::Open
                };
                self.totals = Some(totals.clone());
            }
            InvoiceEvent::PaymentAttemptStarted {
                attempt_no,
                idempotency_key,
                gateway,
                payment_method,
                amount,
                due_at,
                on_demand,
                at,
            } => self.attempts.push(Attempt {
                attempt_no: *attempt_no,
                idempotency_key: idempotency_key.clone(),
                gateway: gateway.clone(),
                payment_method: payment_method.clone(),
                amount: *amount,
                outcome: None,
                next_retry_at: None,
                due_at: due_at.unwrap_or(*at),
                on_demand: *on_demand,
            }),
            InvoiceEvent::PaymentSucceeded {
                attempt_no,
                charge_id,
                amount,
                ..
            } => {
                if let Some(attempt) = self
                    .attempts
                    .iter_mut()
                    .find(|a| a.attempt_no == *attempt_no)
                {
                    attempt.outcome = Some(ChargeOutcome::Succeeded {
                        charge_id: charge_id.clone(),
                    });
                }
                let paid = self.amount_paid.unwrap_or(self.zero());
                self.amount_paid = paid.checked_add(*amount).ok();
                self.status = InvoiceStatus::Paid;
                self.settled_at = self
                    .attempts
                    .iter()
                    .find(|a| a.attempt_no == *attempt_no)
                    .map(Attempt::effective_at);
            }
            InvoiceEvent::PaymentFailed {
                attempt_no,
                decline_code,
                message,
                next_retry_at,
                ..
            } => {
                if let Some(attempt) = self
                    .attempts
                    .iter_mut()
                    .find(|a| a.attempt_no == *attempt_no)
                {
                    attempt.outcome = Some(ChargeOutcome::Declined {
                        decline_code: decline_code.clone(),
                        message: message.clone(),
                    });
                    attempt.next_retry_at = *next_retry_at;
                }
            }
            InvoiceEvent::InvoiceVoided { at, .. } => {
                self.status = InvoiceStatus::Void;
                self.settled_at = Some(*at);
            }
            InvoiceEvent::InvoiceMarkedUncollectible { .. } => {
                self.status = InvoiceStatus::Uncollectible;
            }
            InvoiceEvent::CreditNoteIssued {
                credit_note_no,
                amount,
                at,
                ..
            } => {
                self.credit_notes = *credit_note_no;
                let credited = self.amount_credited.unwrap_or(self.zero());
                self.amount_credited = credited.checked_add(*amount).ok();
                if self.amount_remaining().is_zero() {
                    self.status = InvoiceStatus::Paid;
                    self.settled_at = Some(*at);
                }
            }
            InvoiceEvent::RefundRequested {
                refund_no,
                idempotency_key,
                amount,
                reason,
                at,
            } => self.refunds.push(Refund {
                refund_no: *refund_no,
                idempotency_key: idempotency_key.clone(),
                amount: *amount,
                reason: reason.clone(),
                refund_id: None,
                requested_at: *at,
            }),
            InvoiceEvent::InvoiceRefunded {
                refund_no,
                amount,
                refund_id,
                reason,
                at,
                ..
            } => {
                match self.refunds.iter_mut().find(|r| r.refund_no == *refund_no) {
                    Some(refund) => refund.refund_id = Some(refund_id.clone()),
                    // Written before refunds were requested first: the refund and
                    // its answer in one event.
                    None => self.refunds.push(Refund {
                        refund_no: *refund_no,
                        idempotency_key: self.refund_key(*refund_no),
                        amount: *amount,
                        reason: reason.clone(),
                        refund_id: Some(refund_id.clone()),
                        requested_at: *at,
                    }),
                }
                let refunded = self.amount_refunded.unwrap_or(self.zero());
                self.amount_refunded = refunded.checked_add(*amount).ok();
            }
            InvoiceEvent::RevenueRecognized { lines, .. } => {
                for index in lines {
                    if let Some(done) = self.recognized.get_mut(*index) {
                        *done = true;
                    }
                }
            }
            InvoiceEvent::DisputeOpened { .. }
            | InvoiceEvent::DisputeFundsWithdrawn { .. }
            | InvoiceEvent::DisputeFundsReinstated { .. }
            | InvoiceEvent::DisputeFeeRecorded { .. }
            | InvoiceEvent::DisputeFeeReturned { .. }
            | InvoiceEvent::DisputeClosed { .. } => self.evolve_dispute(event),
        }
    }
}

/// The finalization's journal (`side` = credit), or its reversal (`side` = debit)
/// where lines already `recognized` reverse revenue instead of deferred revenue.
fn finalization(lines: &[Line], totals: &Totals, recognized: &[bool], side: Side) -> Journal {
    let mut journal = Journal::new();
    let mut post = |account: Account, credit: Money| {
        match side {
            Side::Credit => journal.credit(account, credit),
            Side::Debit => journal.debit(account, credit),
        };
    };
    for (index, (line, line_totals)) in lines.iter().zip(&totals.lines).enumerate() {
        let account = if recognized.get(index).copied().unwrap_or(false) {
            Account::Revenue(line.plan_id.clone())
        } else {
            line.revenue_account()
        };
        post(account, line_totals.booked);
        post(Account::Discounts, -line_totals.discount);
        if let Some(place) = totals.tax_basis.jurisdiction() {
            post(Account::TaxPayable(place.to_owned()), line_totals.tax);
        }
    }
    post(Account::CustomerCredit, -totals.credit_applied);
    if totals.total.is_negative() {
        post(Account::CustomerCredit, -totals.total);
    } else {
        post(Account::AccountsReceivable, -totals.amount_due);
    }
    journal
}

fn check_positive_within(
    amount: Money,
    limit: Money,
    what: &'static str,
) -> Result<(), DomainError> {
    if !amount.is_positive() {
        return Err(DomainError::AmountNotPositive {
            field: what,
            amount: amount.amount().to_string(),
        });
    }
    amount.to_minor()?;
    if amount.currency() != limit.currency() {
        return Err(DomainError::CurrencyMismatch {
            expected: limit.currency().code().into(),
            got: amount.currency().code().into(),
        });
    }
    if amount.amount() > limit.amount() {
        return Err(DomainError::RefundExceedsPaid {
            requested: format!("{} {}", amount.amount(), amount.currency().code()),
            refundable: format!("{} {}", limit.amount(), limit.currency().code()),
        });
    }
    Ok(())
}
