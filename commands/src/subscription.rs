//! Subscription: trialing → active ⇄ past_due, paused, canceled; renewals, plan
//! changes (prorated to the second, or at period end), cancellation, pause.
//!
//! Every billing decision names its invoice (id, lines, discount) in the event,
//! so the invoice is drafted exactly once however often the follow-up is retried.

use crate::tagged::domain_events;
use std::collections::BTreeSet;

use recur_ledger::Money;
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use crate::aggregate::{Aggregate, DomainEvent};
use crate::catalog::Price;
use crate::coupon::AppliedDiscount;
use crate::error::DomainError;
use crate::ids::{CustomerId, InvoiceId, SubscriptionId};
use crate::invoice::{BillingReason, InvoiceRequest, Line, LineKind};
use crate::period::{Period, unused_share};

/// The most units one subscription holds.
pub const QUANTITY_MAX: u32 = 10_000;

/// Subscription states (Stripe's names).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionStatus {
    /// In its free trial.
    Trialing,
    /// Started without a trial; the first invoice is not paid yet.
    #[default]
    Incomplete,
    /// Paid up.
    Active,
    /// An invoice failed and is being retried.
    PastDue,
    /// Paused: no invoices until resumed.
    Paused,
    /// Ended.
    Canceled,
}

impl SubscriptionStatus {
    /// The snake_case name.
    pub fn name(self) -> &'static str {
        match self {
            SubscriptionStatus::Trialing => "trialing",
            SubscriptionStatus::Incomplete => "incomplete",
            SubscriptionStatus::Active => "active",
            SubscriptionStatus::PastDue => "past_due",
            SubscriptionStatus::Paused => "paused",
            SubscriptionStatus::Canceled => "canceled",
        }
    }
}

/// When a change takes effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Timing {
    /// Now (plan change: prorated and invoiced now).
    Now,
    /// At the end of the current period.
    PeriodEnd,
}

/// Why a subscription ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelReason {
    /// The customer asked.
    Requested,
    /// Payment kept failing until the policy gave up.
    PaymentFailed,
    /// The trial ended without a way to pay.
    TrialEndedWithoutPayment,
}

/// What can be asked of a subscription.
#[derive(Clone, Debug)]
pub enum SubscriptionCommand {
    /// Start it.
    Start {
        /// Its id.
        id: SubscriptionId,
        /// The customer.
        customer_id: CustomerId,
        /// The (recurring) price.
        price: Price,
        /// Units.
        quantity: u32,
        /// Trial days (0: none, bill now).
        trial_days: u32,
        /// A redeemed coupon.
        discount: Option<AppliedDiscount>,
        /// The first invoice's id (used when there is no trial).
        invoice_id: InvoiceId,
        /// Now.
        now: OffsetDateTime,
    },
    /// End the trial and bill the first period.
    ConvertTrial {
        /// The invoice's id.
        invoice_id: InvoiceId,
        /// Now (at or after the trial end).
        now: OffsetDateTime,
    },
    /// Start period `period_index` (a no-op if it already started).
    Renew {
        /// The period to start: the current index + 1.
        period_index: u32,
        /// The invoice's id.
        invoice_id: InvoiceId,
        /// Now (at or after the current period's end).
        now: OffsetDateTime,
    },
    /// Change price (plan) and quantity.
    ChangePrice {
        /// The new price.
        price: Price,
        /// The new quantity.
        quantity: u32,
        /// Now (prorated) or at period end.
        timing: Timing,
        /// The proration invoice's id.
        invoice_id: InvoiceId,
        /// Now.
        now: OffsetDateTime,
    },
    /// Cancel now or at period end.
    Cancel {
        /// When.
        timing: Timing,
        /// Why.
        reason: CancelReason,
        /// Now.
        now: OffsetDateTime,
    },
    /// Undo a cancellation scheduled for period end.
    UndoCancellation,
    /// Put a coupon's discount on the running subscription, replacing any other:
    /// now (in force for every invoice from now on) or from the next period.
    ApplyDiscount {
        /// The coupon's terms (a repeating coupon's months count from when it
        /// takes effect).
        discount: AppliedDiscount,
        /// Now or at period end.
        timing: Timing,
        /// Now.
        now: OffsetDateTime,
    },
    /// Take the discount off: now, or from the next period.
    RemoveDiscount {
        /// Now or at period end.
        timing: Timing,
        /// Now.
        now: OffsetDateTime,
    },
    /// Pause: no invoices until resumed.
    Pause {
        /// Now.
        now: OffsetDateTime,
    },
    /// Resume: a new period starts now and is billed.
    Resume {
        /// The invoice's id.
        invoice_id: InvoiceId,
        /// Now.
        now: OffsetDateTime,
    },
    /// An invoice of this subscription failed to collect.
    RecordPaymentFailed {
        /// Which.
        invoice_id: InvoiceId,
        /// When the failed attempt was due (when it takes effect).
        at: OffsetDateTime,
    },
    /// An invoice of this subscription is settled (paid, credited or voided).
    RecordInvoiceSettled {
        /// Which.
        invoice_id: InvoiceId,
        /// When it was settled in the business.
        at: OffsetDateTime,
        /// Paid (by a charge, credit, a credit note, or nothing due) or voided.
        outcome: Settlement,
    },
}

/// How an invoice of a subscription was settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Settlement {
    /// Nothing is owed any more and something was paid for it (a charge,
    /// customer credit, a credit note, or nothing was due).
    Paid,
    /// Cancelled without payment.
    Voided,
}

domain_events! {
    /// What happened to a subscription.
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(tag = "type")]
    pub enum SubscriptionEvent {
        /// Started.
        SubscriptionStarted {
            /// Its id.
            subscription_id: SubscriptionId,
            /// The customer.
            customer_id: CustomerId,
            /// The price, with its terms (they never change for this subscription).
            price: Price,
            /// Units.
            quantity: u32,
            /// trialing or incomplete.
            status: SubscriptionStatus,
            /// Trial end, if trialing.
            #[serde(default, with = "time::serde::rfc3339::option")]
            trial_end: Option<OffsetDateTime>,
            /// The first period (the trial, when trialing).
            period: Period,
            /// The coupon applied.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            discount: Option<AppliedDiscount>,
            /// The first invoice, when there is no trial.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            invoice: Option<InvoiceRequest>,
        },
        /// The trial ended; the first paid period starts.
        TrialEnded {
            /// The first paid period.
            period: Period,
            /// Its invoice.
            invoice: InvoiceRequest,
        },
        /// A new period started.
        SubscriptionRenewed {
            /// Its index from the cycle anchor.
            period_index: u32,
            /// The period.
            period: Period,
            /// The new cycle anchor, when the billing interval changed at this
            /// renewal (the cycle restarts at the period's start, index 0).
            #[serde(default, with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
            anchor: Option<OffsetDateTime>,
            /// The price in force (a scheduled change applies here).
            price: Price,
            /// Units.
            quantity: u32,
            /// Its invoice.
            invoice: InvoiceRequest,
        },
        /// Price or quantity changed now.
        PriceChanged {
            /// The new price.
            price: Price,
            /// The new quantity.
            quantity: u32,
            /// When.
            #[serde(with = "time::serde::rfc3339")]
            at: OffsetDateTime,
            /// A new period, when the interval changed (the cycle restarts now).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            new_period: Option<Period>,
            /// The proration invoice, unless trialing.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            invoice: Option<InvoiceRequest>,
        },
        /// A change scheduled for period end.
        PriceChangeScheduled {
            /// The new price.
            price: Price,
            /// The new quantity.
            quantity: u32,
        },
        /// Will end at period end.
        CancellationScheduled {
            /// The period end.
            #[serde(with = "time::serde::rfc3339")]
            at: OffsetDateTime,
        },
        /// Will not end after all.
        CancellationUndone,
        /// A coupon's discount put on the running subscription.
        DiscountApplied {
            /// The discount.
            discount: AppliedDiscount,
            /// When it takes effect (now, or the current period's end).
            #[serde(with = "time::serde::rfc3339")]
            at: OffsetDateTime,
            /// Now or from the next period.
            timing: Timing,
        },
        /// The discount taken off.
        DiscountRemoved {
            /// When it takes effect (now, or the current period's end).
            #[serde(with = "time::serde::rfc3339")]
            at: OffsetDateTime,
            /// Now or from the next period.
            timing: Timing,
        },
        /// Ended.
        SubscriptionCanceled {
            /// When.
            #[serde(with = "time::serde::rfc3339")]
            at: OffsetDateTime,
            /// Why.
            reason: CancelReason,
        },
        /// Paused.
        SubscriptionPaused {
            /// When.
            #[serde(with = "time::serde::rfc3339")]
            at: OffsetDateTime,
        },
        /// Resumed with a new period.
        SubscriptionResumed {
            /// The new period (the cycle restarts).
            period: Period,
            /// Its invoice.
            invoice: InvoiceRequest,
        },
        /// Collection of an invoice failed.
        SubscriptionPastDue {
            /// The invoice.
            invoice_id: InvoiceId,
            /// When the failed attempt was due (absent in events recorded before
            /// it was: their recording time stands in).
            #[serde(default, with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
            at: Option<OffsetDateTime>,
        },
        /// An invoice is settled.
        SubscriptionInvoiceSettled {
            /// The invoice.
            invoice_id: InvoiceId,
            /// When it was settled in the business (absent in events recorded
            /// before it was: their recording time stands in).
            #[serde(default, with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
            at: Option<OffsetDateTime>,
            /// Paid or voided (absent in events recorded before it was: paid).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            outcome: Option<Settlement>,
        },
    }
}

impl DomainEvent for SubscriptionEvent {
    fn event_type(&self) -> &'static str {
        match self {
            SubscriptionEvent::SubscriptionStarted { .. } => "SubscriptionStarted",
            SubscriptionEvent::TrialEnded { .. } => "TrialEnded",
            SubscriptionEvent::SubscriptionRenewed { .. } => "SubscriptionRenewed",
            SubscriptionEvent::PriceChanged { .. } => "PriceChanged",
            SubscriptionEvent::PriceChangeScheduled { .. } => "PriceChangeScheduled",
            SubscriptionEvent::CancellationScheduled { .. } => "CancellationScheduled",
            SubscriptionEvent::CancellationUndone => "CancellationUndone",
            SubscriptionEvent::DiscountApplied { .. } => "DiscountApplied",
            SubscriptionEvent::DiscountRemoved { .. } => "DiscountRemoved",
            SubscriptionEvent::SubscriptionCanceled { .. } => "SubscriptionCanceled",
            SubscriptionEvent::SubscriptionPaused { .. } => "SubscriptionPaused",
            SubscriptionEvent::SubscriptionResumed { .. } => "SubscriptionResumed",
            SubscriptionEvent::SubscriptionPastDue { .. } => "SubscriptionPastDue",
            SubscriptionEvent::SubscriptionInvoiceSettled { .. } => "SubscriptionInvoiceSettled",
        }
    }
}

impl SubscriptionEvent {
    /// When the event takes effect in the business (a period's start, a trial's
    /// end, a cancellation's instant, a payment's due time), which metrics are
    /// dated by; None for events that change nothing until later (a change or
    /// cancellation scheduled for period end) or that do not say (recorded
    /// before they did): their recording time stands in.
    pub fn effective_at(&self) -> Option<OffsetDateTime> {
        match self {
            SubscriptionEvent::SubscriptionStarted { period, .. }
            | SubscriptionEvent::TrialEnded { period, .. }
            | SubscriptionEvent::SubscriptionRenewed { period, .. }
            | SubscriptionEvent::SubscriptionResumed { period, .. } => Some(period.start),
            SubscriptionEvent::PriceChanged { at, .. }
            | SubscriptionEvent::SubscriptionCanceled { at, .. }
            | SubscriptionEvent::SubscriptionPaused { at } => Some(*at),
            SubscriptionEvent::SubscriptionPastDue { at, .. }
            | SubscriptionEvent::SubscriptionInvoiceSettled { at, .. } => *at,
            SubscriptionEvent::DiscountApplied { at, timing, .. }
            | SubscriptionEvent::DiscountRemoved { at, timing } => {
                (*timing == Timing::Now).then_some(*at)
            }
            SubscriptionEvent::PriceChangeScheduled { .. }
            | SubscriptionEvent::CancellationScheduled { .. }
            | SubscriptionEvent::CancellationUndone => None,
        }
    }

    /// The invoice this event asks for, if any.
    pub fn invoice_request(&self) -> Option<&InvoiceRequest> {
        match self {
            SubscriptionEvent::SubscriptionStarted { invoice, .. }
            | SubscriptionEvent::PriceChanged { invoice, .. } => invoice.as_ref(),
            SubscriptionEvent::TrialEnded { invoice, .. }
            | SubscriptionEvent::SubscriptionRenewed { invoice, .. }
            | SubscriptionEvent::SubscriptionResumed { invoice, .. } => Some(invoice),
            _ => None,
        }
    }
}

/// A subscription's state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Subscription {
    /// Its id, once started.
    pub id: Option<SubscriptionId>,
    /// The customer.
    pub customer_id: Option<CustomerId>,
    /// State.
    pub status: SubscriptionStatus,
    /// The price in force.
    pub price: Option<Price>,
    /// Units.
    pub quantity: u32,
    /// Where the billing cycle is counted from.
    pub anchor: Option<OffsetDateTime>,
    /// Index of the current period from the anchor.
    pub period_index: u32,
    /// The current period (the trial, while trialing).
    pub current_period: Option<Period>,
    /// Trial end.
    pub trial_end: Option<OffsetDateTime>,
    /// Ends at period end.
    pub cancel_at_period_end: bool,
    /// A change waiting for period end.
    pub scheduled_change: Option<(Price, u32)>,
    /// The coupon in force.
    pub discount: Option<AppliedDiscount>,
    /// Invoices that got the discount.
    pub invoices_discounted: u32,
    /// A discount change waiting for the next period: the discount then, or
    /// none (taken off).
    pub scheduled_discount: Option<Option<AppliedDiscount>>,
    /// Invoices not settled yet.
    pub unsettled: BTreeSet<InvoiceId>,
    /// Every invoice it asked for, oldest first.
    pub invoices: Vec<InvoiceId>,
    /// Whether an invoice of it was ever paid: until then it counts no MRR.
    pub ever_paid: bool,
    /// When it ended.
    pub canceled_at: Option<OffsetDateTime>,
    /// Why it ended.
    pub cancel_reason: Option<CancelReason>,
}

impl Subscription {
    fn refuse(&self, action: &'static str) -> DomainError {
        DomainError::InvalidTransition {
            kind: "subscription",
            action,
            state: self.status.name().into(),
        }
    }

    /// When the scheduler next has work: the trial end or the current period's end.
    pub fn next_due_at(&self) -> Option<OffsetDateTime> {
        match self.status {
            SubscriptionStatus::Trialing => self.trial_end,
            SubscriptionStatus::Active
            | SubscriptionStatus::PastDue
            | SubscriptionStatus::Incomplete => self.current_period.map(|p| p.end),
            SubscriptionStatus::Paused | SubscriptionStatus::Canceled => None,
        }
    }

    /// Monthly recurring revenue of this subscription before discounts: price ×
    /// quantity normalised to a month; zero unless active or past due and paid
    /// for at least once (a trial that converted but never paid counts nothing).
    pub fn mrr(&self) -> Option<Money> {
        let price = self.price.as_ref()?;
        if !self.ever_paid
            || !matches!(
                self.status,
                SubscriptionStatus::Active | SubscriptionStatus::PastDue
            )
        {
            return Some(Money::zero(price.unit_amount.currency()));
        }
        let interval = price.interval().ok()?;
        price
            .unit_amount
            .mul_decimal(rust_decimal::Decimal::from(self.quantity) * interval.monthly_factor())
            .ok()
    }

    /// Whether a discount takes something off at `at` (a used-up once or
    /// repeating coupon does not), or one is set for the next period.
    pub fn discount_in_force(&self, at: OffsetDateTime) -> bool {
        self.discount_at(at).is_some() || matches!(self.scheduled_discount, Some(Some(_)))
    }

    fn discount_at(&self, at: OffsetDateTime) -> Option<AppliedDiscount> {
        self.discount
            .clone()
            .filter(|d| d.applies(at, self.invoices_discounted))
    }

    /// The discount of a period starting at `at`: a change scheduled for the
    /// next period applies to it.
    fn period_discount(&self, at: OffsetDateTime) -> Option<AppliedDiscount> {
        match &self.scheduled_discount {
            Some(next) => next.clone().filter(|d| d.applies(at, 0)),
            None => self.discount_at(at),
        }
    }

    fn period_line(price: &Price, quantity: u32, period: Period) -> Result<Line, DomainError> {
        Ok(Line {
            kind: LineKind::Period,
            description: format!("{} × {}", quantity, price.plan_id),
            plan_id: price.plan_id.clone(),
            price_id: price.id.clone(),
            quantity,
            unit_amount: price.unit_amount,
            amount: price.unit_amount.mul_decimal(quantity.into())?,
            period: Some(period),
        })
    }

    fn period_invoice(
        &self,
        invoice_id: InvoiceId,
        reason: BillingReason,
        price: &Price,
        quantity: u32,
        period: Period,
    ) -> Result<InvoiceRequest, DomainError> {
        Ok(InvoiceRequest {
            invoice_id,
            reason,
            lines: vec![Self::period_line(price, quantity, period)?],
            discount: self.period_discount(period.start),
            issued_at: Some(period.start),
        })
    }

    fn decide_change(
        &self,
        price: Price,
        quantity: u32,
        timing: Timing,
        invoice_id: InvoiceId,
        now: OffsetDateTime,
    ) -> Result<Vec<SubscriptionEvent>, DomainError> {
        let (Some(current), Some(period)) = (&self.price, self.current_period) else {
            return Err(self.refuse("change the plan of"));
        };
        if matches!(
            self.status,
            SubscriptionStatus::Canceled | SubscriptionStatus::Paused
        ) {
            return Err(self.refuse("change the plan of"));
        }
        check_quantity(quantity)?;
        let interval = price.interval()?;
        if price.unit_amount.currency() != current.unit_amount.currency() {
            return Err(DomainError::CurrencyMismatch {
                expected: current.unit_amount.currency().code().into(),
                got: price.unit_amount.currency().code().into(),
            });
        }
        if price.id == current.id && quantity == self.quantity {
            return Ok(Vec::new());
        }
        if timing == Timing::PeriodEnd {
            return Ok(vec![SubscriptionEvent::PriceChangeScheduled {
                price,
                quantity,
            }]);
        }
        if self.status == SubscriptionStatus::Trialing {
            return Ok(vec![SubscriptionEvent::PriceChanged {
                price,
                quantity,
                at: now,
                new_period: None,
                invoice: None,
            }]);
        }
        let old_amount = current.unit_amount.mul_decimal(self.quantity.into())?;
        let credit = -unused_share(old_amount, period, now)?;
        let same_cycle = current.interval()? == interval;
        let (new_period, charge_period) = if same_cycle {
            (
                None,
                Period {
                    start: now,
                    end: period.end,
                },
            )
        } else {
            let fresh = Period {
                start: now,
                end: interval.boundary(now, 1),
            };
            (Some(fresh), fresh)
        };
        let new_amount = price.unit_amount.mul_decimal(quantity.into())?;
        let charge = if same_cycle {
            unused_share(new_amount, period, now)?
        } else {
            new_amount
        };
        let mut lines = Vec::with_capacity(2);
        if !credit.is_zero() {
            lines.push(Line {
                kind: LineKind::Proration,
                description: format!("Unused time on {} × {}", self.quantity, current.plan_id),
                plan_id: current.plan_id.clone(),
                price_id: current.id.clone(),
                quantity: self.quantity,
                unit_amount: current.unit_amount,
                amount: credit,
                period: Some(Period {
                    start: now,
                    end: period.end,
                }),
            });
        }
        if !charge.is_zero() {
            lines.push(Line {
                kind: LineKind::Proration,
                description: format!("Remaining time on {} × {}", quantity, price.plan_id),
                plan_id: price.plan_id.clone(),
                price_id: price.id.clone(),
                quantity,
                unit_amount: price.unit_amount,
                amount: charge,
                period: Some(charge_period),
            });
        }
        let invoice = (!lines.is_empty()).then(|| InvoiceRequest {
            invoice_id,
            reason: BillingReason::SubscriptionUpdate,
            lines,
            discount: self.discount_at(now),
            issued_at: Some(now),
        });
        Ok(vec![SubscriptionEvent::PriceChanged {
            price,
            quantity,
            at: now,
            new_period,
            invoice,
        }])
    }
}

fn check_quantity(quantity: u32) -> Result<(), DomainError> {
    if quantity == 0 || quantity > QUANTITY_MAX {
        return Err(DomainError::InvalidQuantity {
            got: quantity.into(),
            max: QUANTITY_MAX,
        });
    }
    Ok(())
}

impl Aggregate for Subscription {
    type Event = SubscriptionEvent;
    type Command = SubscriptionCommand;

    fn decide(&self, command: SubscriptionCommand) -> Result<Vec<SubscriptionEvent>, DomainError> {
        if let SubscriptionCommand::Start {
            id,
            customer_id,
            price,
            quantity,
            trial_days,
            discount,
            invoice_id,
            now,
        } = command
        {
            if self.id.is_some() {
                return Err(DomainError::AlreadyExists {
                    kind: "subscription",
                    id: id.to_string(),
                });
            }
            check_quantity(quantity)?;
            let interval = price.interval()?;
            if let Some(AppliedDiscount {
                discount: crate::coupon::Discount::AmountOff { amount },
                ..
            }) = &discount
                && amount.currency() != price.unit_amount.currency()
            {
                return Err(DomainError::CurrencyMismatch {
                    expected: price.unit_amount.currency().code().into(),
                    got: amount.currency().code().into(),
                });
            }
            let fresh = Subscription {
                discount: discount.clone(),
                ..Subscription::default()
            };
            return Ok(vec![if trial_days > 0 {
                let trial_end = now + Duration::days(trial_days.into());
                SubscriptionEvent::SubscriptionStarted {
                    subscription_id: id,
                    customer_id,
                    price,
                    quantity,
                    status: SubscriptionStatus::Trialing,
                    trial_end: Some(trial_end),
                    period: Period {
                        start: now,
                        end: trial_end,
                    },
                    discount,
                    invoice: None,
                }
            } else {
                let period = Period {
                    start: now,
                    end: interval.boundary(now, 1),
                };
                let invoice = fresh.period_invoice(
                    invoice_id,
                    BillingReason::SubscriptionCreate,
                    &price,
                    quantity,
                    period,
                )?;
                SubscriptionEvent::SubscriptionStarted {
                    subscription_id: id,
                    customer_id,
                    price,
                    quantity,
                    status: SubscriptionStatus::Incomplete,
                    trial_end: None,
                    period,
                    discount,
                    invoice: Some(invoice),
                }
            }]);
        }
        let Some(price) = &self.price else {
            return Err(DomainError::NotFound {
                kind: "subscription",
                id: String::new(),
            });
        };
        match command {
            SubscriptionCommand::Start { .. } => Ok(Vec::new()),
            SubscriptionCommand::ConvertTrial { invoice_id, now } => {
                if self.status != SubscriptionStatus::Trialing {
                    return Ok(Vec::new());
                }
                let trial_end = self.trial_end.unwrap_or(now);
                if now < trial_end {
                    return Err(self.refuse("convert before its trial end"));
                }
                if self.cancel_at_period_end {
                    return Ok(vec![SubscriptionEvent::SubscriptionCanceled {
                        at: trial_end,
                        reason: CancelReason::Requested,
                    }]);
                }
                let (price, quantity) = self
                    .scheduled_change
                    .clone()
                    .unwrap_or((price.clone(), self.quantity));
                // The first paid period runs on the interval of the price it bills.
                let interval = price.interval()?;
                let period = Period {
                    start: trial_end,
                    end: interval.boundary(trial_end, 1),
                };
                let invoice = self.period_invoice(
                    invoice_id,
                    BillingReason::SubscriptionCreate,
                    &price,
                    quantity,
                    period,
                )?;
                Ok(vec![SubscriptionEvent::TrialEnded { period, invoice }])
            }
            SubscriptionCommand::Renew {
                period_index,
                invoice_id,
                now,
            } => {
                let Some(period) = self.current_period else {
                    return Ok(Vec::new());
                };
                let renewable = matches!(
                    self.status,
                    SubscriptionStatus::Active
                        | SubscriptionStatus::PastDue
                        | SubscriptionStatus::Incomplete
                );
                if !renewable || period_index <= self.period_index || now < period.end {
                    return Ok(Vec::new());
                }
                if period_index != self.period_index + 1 {
                    return Err(DomainError::InvalidField {
                        field: "period_index",
                        reason: format!("the next period is {}", self.period_index + 1),
                    });
                }
                if self.cancel_at_period_end {
                    return Ok(vec![SubscriptionEvent::SubscriptionCanceled {
                        at: period.end,
                        reason: CancelReason::Requested,
                    }]);
                }
                let (next_price, quantity) = self
                    .scheduled_change
                    .clone()
                    .unwrap_or((price.clone(), self.quantity));
                let interval = next_price.interval()?;
                // A new interval restarts the cycle at this renewal (as Stripe
                // does); the same interval keeps counting from the anchor.
                let (period_index, anchor, next) = if interval == price.interval()? {
                    let anchor = self.anchor.unwrap_or(period.start);
                    let next = Period {
                        start: period.end,
                        end: interval.boundary(anchor, period_index + 1),
                    };
                    (period_index, None, next)
                } else {
                    let next = Period {
                        start: period.end,
                        end: interval.boundary(period.end, 1),
                    };
                    (0, Some(period.end), next)
                };
                let price = next_price;
                let invoice = self.period_invoice(
                    invoice_id,
                    BillingReason::SubscriptionCycle,
                    &price,
                    quantity,
                    next,
                )?;
                Ok(vec![SubscriptionEvent::SubscriptionRenewed {
                    period_index,
                    period: next,
                    anchor,
                    price,
                    quantity,
                    invoice,
                }])
            }
            SubscriptionCommand::ChangePrice {
                price,
                quantity,
                timing,
                invoice_id,
                now,
            } => self.decide_change(price, quantity, timing, invoice_id, now),
            SubscriptionCommand::Cancel {
                timing,
                reason,
                now,
            } => {
                if self.status == SubscriptionStatus::Canceled {
                    return Err(self.refuse("cancel"));
                }
                match timing {
                    Timing::Now => Ok(vec![SubscriptionEvent::SubscriptionCanceled {
                        at: now,
                        reason,
                    }]),
                    Timing::PeriodEnd if self.cancel_at_period_end => Ok(Vec::new()),
                    Timing::PeriodEnd => {
                        let at = self.current_period.map_or(now, |p| p.end);
                        Ok(vec![SubscriptionEvent::CancellationScheduled { at }])
                    }
                }
            }
            SubscriptionCommand::UndoCancellation => {
                if self.status == SubscriptionStatus::Canceled {
                    return Err(self.refuse("undo the cancellation of"));
                }
                Ok(if self.cancel_at_period_end {
                    vec![SubscriptionEvent::CancellationUndone]
                } else {
                    Vec::new()
                })
            }
            SubscriptionCommand::ApplyDiscount {
                discount,
                timing,
                now,
            } => {
                if self.status == SubscriptionStatus::Canceled {
                    return Err(self.refuse("discount"));
                }
                if let crate::coupon::Discount::AmountOff { amount } = discount.discount
                    && amount.currency() != price.unit_amount.currency()
                {
                    return Err(DomainError::CurrencyMismatch {
                        expected: price.unit_amount.currency().code().into(),
                        got: amount.currency().code().into(),
                    });
                }
                let at = match timing {
                    Timing::Now => now,
                    Timing::PeriodEnd => self.current_period.map_or(now, |p| p.end.max(now)),
                };
                Ok(vec![SubscriptionEvent::DiscountApplied {
                    discount: discount.starting_at(at),
                    at,
                    timing,
                }])
            }
            SubscriptionCommand::RemoveDiscount { timing, now } => {
                if self.status == SubscriptionStatus::Canceled {
                    return Err(self.refuse("remove the discount of"));
                }
                let in_force = match timing {
                    Timing::Now => self.discount.is_some() || self.scheduled_discount.is_some(),
                    Timing::PeriodEnd => match &self.scheduled_discount {
                        Some(next) => next.is_some(),
                        None => self.discount.is_some(),
                    },
                };
                if !in_force {
                    return Ok(Vec::new());
                }
                let at = match timing {
                    Timing::Now => now,
                    Timing::PeriodEnd => self.current_period.map_or(now, |p| p.end.max(now)),
                };
                Ok(vec![SubscriptionEvent::DiscountRemoved { at, timing }])
            }
            SubscriptionCommand::Pause { now } => match self.status {
                SubscriptionStatus::Paused => Ok(Vec::new()),
                SubscriptionStatus::Active => {
                    Ok(vec![SubscriptionEvent::SubscriptionPaused { at: now }])
                }
                _ => Err(self.refuse("pause")),
            },
            SubscriptionCommand::Resume { invoice_id, now } => {
                if self.status != SubscriptionStatus::Paused {
                    return Err(self.refuse("resume"));
                }
                let interval = price.interval()?;
                let period = Period {
                    start: now,
                    end: interval.boundary(now, 1),
                };
                let invoice = self.period_invoice(
                    invoice_id,
                    BillingReason::SubscriptionCycle,
                    price,
                    self.quantity,
                    period,
                )?;
                Ok(vec![SubscriptionEvent::SubscriptionResumed {
                    period,
                    invoice,
                }])
            }
            SubscriptionCommand::RecordPaymentFailed { invoice_id, at } => {
                let applies = self.unsettled.contains(&invoice_id)
                    && matches!(
                        self.status,
                        SubscriptionStatus::Active | SubscriptionStatus::Incomplete
                    );
                Ok(if applies {
                    vec![SubscriptionEvent::SubscriptionPastDue {
                        invoice_id,
                        at: Some(at),
                    }]
                } else {
                    Vec::new()
                })
            }
            SubscriptionCommand::RecordInvoiceSettled {
                invoice_id,
                at,
                outcome,
            } => Ok(if self.unsettled.contains(&invoice_id) {
                vec![SubscriptionEvent::SubscriptionInvoiceSettled {
                    invoice_id,
                    at: Some(at),
                    outcome: Some(outcome),
                }]
            } else {
                Vec::new()
            }),
        }
    }

    fn evolve(&mut self, event: &SubscriptionEvent) {
        // A discount change waiting for the next period takes effect with it,
        // before its invoice is counted against the new discount.
        if matches!(
            event,
            SubscriptionEvent::TrialEnded { .. }
                | SubscriptionEvent::SubscriptionRenewed { .. }
                | SubscriptionEvent::SubscriptionResumed { .. }
        ) && let Some(next) = self.scheduled_discount.take()
        {
            self.discount = next;
            self.invoices_discounted = 0;
        }
        if let Some(request) = event.invoice_request() {
            self.invoices.push(request.invoice_id);
            self.unsettled.insert(request.invoice_id);
            if request.discount.is_some() {
                self.invoices_discounted += 1;
            }
        }
        match event {
            SubscriptionEvent::SubscriptionStarted {
                subscription_id,
                customer_id,
                price,
                quantity,
                status,
                trial_end,
                period,
                discount,
                ..
            } => {
                self.id = Some(*subscription_id);
                self.customer_id = Some(*customer_id);
                self.price = Some(price.clone());
                self.quantity = *quantity;
                self.status = *status;
                self.trial_end = *trial_end;
                self.anchor = Some(period.start);
                self.current_period = Some(*period);
                self.discount.clone_from(discount);
            }
            SubscriptionEvent::TrialEnded { period, invoice } => {
                if let Some((price, quantity)) = self.scheduled_change.take() {
                    self.price = Some(price);
                    self.quantity = quantity;
                }
                let _ = invoice;
                self.status = SubscriptionStatus::Active;
                self.anchor = Some(period.start);
                self.period_index = 0;
                self.current_period = Some(*period);
            }
            SubscriptionEvent::SubscriptionRenewed {
                period_index,
                period,
                anchor,
                price,
                quantity,
                ..
            } => {
                if let Some(anchor) = anchor {
                    self.anchor = Some(*anchor);
                }
                self.period_index = *period_index;
                self.current_period = Some(*period);
                self.price = Some(price.clone());
                self.quantity = *quantity;
                self.scheduled_change = None;
            }
            SubscriptionEvent::PriceChanged {
                price,
                quantity,
                new_period,
                ..
            } => {
                self.price = Some(price.clone());
                self.quantity = *quantity;
                self.scheduled_change = None;
                if let Some(period) = new_period {
                    self.anchor = Some(period.start);
                    self.period_index = 0;
                    self.current_period = Some(*period);
                }
            }
            SubscriptionEvent::PriceChangeScheduled { price, quantity } => {
                self.scheduled_change = Some((price.clone(), *quantity));
            }
            SubscriptionEvent::DiscountApplied {
                discount, timing, ..
            } => match timing {
                Timing::Now => {
                    self.discount = Some(discount.clone());
                    self.invoices_discounted = 0;
                    self.scheduled_discount = None;
                }
                Timing::PeriodEnd => self.scheduled_discount = Some(Some(discount.clone())),
            },
            SubscriptionEvent::DiscountRemoved { timing, .. } => match timing {
                Timing::Now => {
                    self.discount = None;
                    self.scheduled_discount = None;
                }
                Timing::PeriodEnd => self.scheduled_discount = Some(None),
            },
            SubscriptionEvent::CancellationScheduled { .. } => self.cancel_at_period_end = true,
            SubscriptionEvent::CancellationUndone => self.cancel_at_period_end = false,
            SubscriptionEvent::SubscriptionCanceled { at, reason } => {
                self.status = SubscriptionStatus::Canceled;
                self.canceled_at = Some(*at);
                self.cancel_reason = Some(*reason);
                self.cancel_at_period_end = false;
            }
            SubscriptionEvent::SubscriptionPaused { .. } => {
                self.status = SubscriptionStatus::Paused;
            }
            SubscriptionEvent::SubscriptionResumed { period, .. } => {
                self.status = if self.unsettled.len() > 1 {
                    SubscriptionStatus::PastDue
                } else {
                    SubscriptionStatus::Active
                };
                self.anchor = Some(period.start);
                self.period_index = 0;
                self.current_period = Some(*period);
            }
            SubscriptionEvent::SubscriptionPastDue { .. } => {
                self.status = SubscriptionStatus::PastDue;
            }
            SubscriptionEvent::SubscriptionInvoiceSettled {
                invoice_id,
                outcome,
                ..
            } => {
                if *outcome != Some(Settlement::Voided) {
                    self.ever_paid = true;
                }
                self.unsettled.remove(invoice_id);
                if self.unsettled.is_empty()
                    && matches!(
                        self.status,
                        SubscriptionStatus::PastDue | SubscriptionStatus::Incomplete
                    )
                {
                    self.status = SubscriptionStatus::Active;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Billing;
    use crate::period::{Interval, IntervalUnit};
    use time::macros::datetime;

    fn price(id: &str, amount: &str, unit: IntervalUnit) -> Price {
        Price {
            id: id.into(),
            plan_id: "community_access".into(),
            unit_amount: Money::parse(amount, "USD").unwrap_or_else(|e| panic!("{e}")),
            billing: Billing::Recurring {
                interval: Interval { unit, count: 1 },
            },
        }
    }

    /// Decides and applies; the events.
    fn run(sub: &mut Subscription, command: SubscriptionCommand) -> Vec<SubscriptionEvent> {
        let events = sub.decide(command).unwrap_or_else(|e| panic!("{e}"));
        for event in &events {
            sub.evolve(event);
        }
        events
    }

    fn invoice_id(at: OffsetDateTime) -> InvoiceId {
        InvoiceId::new_at(at)
    }

    /// Starts the next period (trial conversion or renewal) at the current end.
    fn next_period(sub: &mut Subscription) -> (Period, Vec<Line>) {
        let due = sub.next_due_at().unwrap_or_else(|| panic!("nothing due"));
        let command = if sub.status == SubscriptionStatus::Trialing {
            SubscriptionCommand::ConvertTrial {
                invoice_id: invoice_id(due),
                now: due,
            }
        } else {
            SubscriptionCommand::Renew {
                period_index: sub.period_index + 1,
                invoice_id: invoice_id(due),
                now: due,
            }
        };
        let events = run(sub, command);
        assert_eq!(events.len(), 1, "{events:?}");
        let request = events[0]
            .invoice_request()
            .cloned()
            .unwrap_or_else(|| panic!("no invoice"));
        (
            sub.current_period.unwrap_or_else(|| panic!("no period")),
            request.lines,
        )
    }

    /// Regression (money correctness, defect 4): monthly → yearly at period end
    /// kept the monthly anchor (a 23-month "year" billed once). An interval
    /// change starts a new cycle where it takes effect — at the change (now,
    /// prorated), at the period end, or at the trial end — and every later
    /// period is a whole new interval from there. Every combination of
    /// month/year, now/period end, with and without a trial, on anchors 28–31.
    #[test]
    fn an_interval_change_restarts_the_cycle_where_it_takes_effect() {
        let monthly = price("m", "97.00", IntervalUnit::Month);
        let yearly = price("y", "970.00", IntervalUnit::Year);
        for day in 28..=31u8 {
            let start = datetime!(2027-01-01 10:00 UTC)
                .replace_day(day)
                .unwrap_or_else(|e| panic!("{e}"));
            for (from, to) in [(&monthly, &yearly), (&yearly, &monthly)] {
                for timing in [Timing::Now, Timing::PeriodEnd] {
                    for trial_days in [0, 14] {
                        let case = format!(
                            "day {day}, {} → {}, {timing:?}, trial {trial_days}",
                            from.id, to.id
                        );
                        let mut sub = Subscription::default();
                        run(
                            &mut sub,
                            SubscriptionCommand::Start {
                                id: SubscriptionId::new_at(start),
                                customer_id: CustomerId::new_at(start),
                                price: from.clone(),
                                quantity: 1,
                                trial_days,
                                discount: None,
                                invoice_id: invoice_id(start),
                                now: start,
                            },
                        );
                        let first = sub.current_period.unwrap_or_else(|| panic!("{case}"));
                        let change_at = start + Duration::days(5);
                        let events = run(
                            &mut sub,
                            SubscriptionCommand::ChangePrice {
                                price: to.clone(),
                                quantity: 1,
                                timing,
                                invoice_id: invoice_id(change_at),
                                now: change_at,
                            },
                        );
                        let to_interval = to.interval().unwrap_or_else(|e| panic!("{e}"));
                        // Where the new cycle starts, and what the change billed now.
                        let cycle_start = match (timing, trial_days) {
                            (Timing::Now, 0) => {
                                let request = events[0]
                                    .invoice_request()
                                    .unwrap_or_else(|| panic!("{case}: no proration"));
                                let unused = unused_share(from.unit_amount, first, change_at)
                                    .unwrap_or_else(|e| panic!("{e}"));
                                let amounts: Vec<Money> =
                                    request.lines.iter().map(|l| l.amount).collect();
                                assert_eq!(amounts, vec![-unused, to.unit_amount], "{case}");
                                let period = sub.current_period.unwrap_or_else(|| panic!("{case}"));
                                assert_eq!(
                                    period,
                                    Period {
                                        start: change_at,
                                        end: to_interval.boundary(change_at, 1)
                                    },
                                    "{case}"
                                );
                                change_at
                            }
                            _ => {
                                assert!(
                                    events.iter().all(|e| e.invoice_request().is_none()),
                                    "{case}: nothing billed yet"
                                );
                                let (period, lines) = next_period(&mut sub);
                                assert_eq!(period.start, first.end, "{case}");
                                assert_eq!(
                                    period.end,
                                    to_interval.boundary(first.end, 1),
                                    "{case}: a whole new interval"
                                );
                                assert_eq!(lines.len(), 1, "{case}");
                                assert_eq!(
                                    (lines[0].price_id.as_str(), lines[0].amount),
                                    (to.id.as_str(), to.unit_amount),
                                    "{case}"
                                );
                                first.end
                            }
                        };
                        // The next three periods follow the new interval from the new anchor.
                        for n in 2..=4 {
                            let (period, lines) = next_period(&mut sub);
                            assert_eq!(
                                period.end,
                                to_interval.boundary(cycle_start, n),
                                "{case}: period {n}"
                            );
                            assert_eq!(lines[0].amount, to.unit_amount, "{case}: period {n}");
                        }
                    }
                }
            }
        }
    }
}
