//! The demo's summary, folded from the ledger alone (so a replay gives the same
//! answer): customers by state, money in and out, what became of failed
//! payments, and the books. MRR comes from the `mrr` projection (see
//! `demo::run`), so the demo and `/v1/metrics/mrr` count it by one rule.

use std::collections::{BTreeMap, HashMap, HashSet};

use recur_commands::aggregate::Aggregate;
use recur_commands::billing::decode_event;
use recur_commands::dunning::{Delivery, DunningCampaign, DunningEvent, Ending, OfferGiven};
use recur_commands::dunning_policy::{Channel, FinalAction};
use recur_commands::invoice::{Invoice, InvoiceEvent, InvoiceStatus};
use recur_commands::postings::{Account, TrialBalance};
use recur_commands::subscription::{Subscription, SubscriptionEvent, SubscriptionStatus};
use recur_commands::{DecodeError, DomainError};
use recur_ledger::{Currency, Money, MoneyError, RecordedEvent, StreamId};
use serde::Serialize;

/// Why the report could not fold an event.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The payload is not an event of its stream's kind.
    #[error("event cannot be decoded")]
    Decode(#[from] DecodeError),
    /// An event's postings were refused by the trial balance.
    #[error("postings refused")]
    Postings(#[from] DomainError),
    /// Sums of money in different currencies, or overflowing.
    #[error("money sum")]
    Money(#[from] MoneyError),
}

/// What the owner reads at the end of the demo.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Customers by the state of their subscription (best one wins), plus one-time buyers.
    pub customers: BTreeMap<String, u64>,
    /// MRR at each month end, `YYYY-MM` → amount (from the `mrr` projection).
    pub mrr_by_month: Vec<(String, Money)>,
    /// MRR × 12 at the end.
    pub arr: Money,
    /// Payments collected.
    pub collected: Money,
    /// How many payments.
    pub payments: u64,
    /// Refunded.
    pub refunded: Money,
    /// How many refunds.
    pub refunds: u64,
    /// Tax collected (payable to the authorities).
    pub tax_payable: Money,
    /// Revenue recognised (earned), before discounts and refunds.
    pub revenue_recognized: Money,
    /// Discounts given.
    pub discounts: Money,
    /// Billed but not yet earned.
    pub deferred_revenue: Money,
    /// Owed to customers (downgrade credit).
    pub customer_credit: Money,
    /// Written off.
    pub bad_debt: Money,
    /// Failed payments and what became of them.
    pub failed_payments: FailedPayments,
    /// The dunning campaigns' funnel.
    pub dunning: DunningFunnel,
    /// Invoices issued.
    pub invoices: u64,
    /// Events folded.
    pub events: u64,
    /// True when debits equal credits over every event.
    pub books_balanced: bool,
}

/// Invoices that had at least one declined payment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FailedPayments {
    /// Declined attempts.
    pub declined_attempts: u64,
    /// Invoices with a decline.
    pub invoices: u64,
    /// Later paid (retry after a card update, or a retry that went through).
    pub recovered: u64,
    /// Amount recovered.
    pub recovered_amount: Money,
    /// Still open, a retry scheduled.
    pub retrying: u64,
    /// Written off after the retry policy was spent.
    pub written_off: u64,
    /// Amount written off.
    pub written_off_amount: Money,
    /// Subscriptions canceled because payment failed.
    pub subscriptions_canceled: u64,
    /// Declines by code.
    pub decline_codes: BTreeMap<String, u64>,
}

/// The dunning campaigns, step by step: how many recovered, after which step,
/// what was sent, asked and offered.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DunningFunnel {
    /// Campaigns started (invoices with a failed payment).
    pub campaigns: u64,
    /// Campaigns by segment.
    pub by_segment: BTreeMap<String, u64>,
    /// Campaigns that reached each step (failed attempts), step → count.
    pub reached_step: BTreeMap<u32, u64>,
    /// Recovered campaigns by the step after which the invoice was paid.
    pub recovered_after_step: BTreeMap<u32, u64>,
    /// Exhausted campaigns by final action.
    pub exhausted: BTreeMap<String, u64>,
    /// Still running.
    pub running: u64,
    /// Messages sent, by channel.
    pub sent: BTreeMap<String, u64>,
    /// Messages not sent, by reason.
    pub canceled: BTreeMap<String, u64>,
    /// Messages given up after failed sends.
    pub failed: u64,
    /// Phone tasks created.
    pub phone_tasks: u64,
    /// Offers applied, by kind.
    pub offers: BTreeMap<String, u64>,
    /// Payment attempts on a card whose last decline it could not survive
    /// (the same card after a hard or needs-action decline): should be 0.
    pub futile_retries: u64,
}

/// Folds ledger events into a [`Summary`].
pub struct Report {
    currency: Currency,
    subscriptions: HashMap<StreamId, Subscription>,
    invoices: HashMap<StreamId, Invoice>,
    one_time_buyers: HashSet<String>,
    declined: HashSet<StreamId>,
    campaigns: HashMap<StreamId, DunningCampaign>,
    summary: Summary,
    balance: TrialBalance,
}

impl Default for Report {
    fn default() -> Self {
        Self::new()
    }
}

impl Report {
    /// An empty report.
    pub fn new() -> Self {
        let zero = Money::zero(Currency::USD);
        Self {
            currency: Currency::USD,
            subscriptions: HashMap::new(),
            invoices: HashMap::new(),
            one_time_buyers: HashSet::new(),
            declined: HashSet::new(),
            campaigns: HashMap::new(),
            summary: Summary {
                customers: BTreeMap::new(),
                mrr_by_month: Vec::new(),
                arr: zero,
                collected: zero,
                payments: 0,
                refunded: zero,
                refunds: 0,
                tax_payable: zero,
                revenue_recognized: zero,
                discounts: zero,
                deferred_revenue: zero,
                customer_credit: zero,
                bad_debt: zero,
                failed_payments: FailedPayments {
                    declined_attempts: 0,
                    invoices: 0,
                    recovered: 0,
                    recovered_amount: zero,
                    retrying: 0,
                    written_off: 0,
                    written_off_amount: zero,
                    subscriptions_canceled: 0,
                    decline_codes: BTreeMap::new(),
                },
                dunning: DunningFunnel::default(),
                invoices: 0,
                events: 0,
                books_balanced: true,
            },
            balance: TrialBalance::default(),
        }
    }

    /// Folds one event.
    ///
    /// # Errors
    /// [`ReportError`]: an event that does not decode, postings that do not add
    /// up, or money sums in different currencies.
    pub fn apply(&mut self, recorded: &RecordedEvent) -> Result<(), ReportError> {
        self.summary.events += 1;
        match recorded.stream_id.category() {
            "subscription" => {
                let event: SubscriptionEvent = decode_event(&recorded.payload)?;
                if let SubscriptionEvent::SubscriptionCanceled { reason, .. } = &event
                    && *reason != recur_commands::subscription::CancelReason::Requested
                {
                    self.summary.failed_payments.subscriptions_canceled += 1;
                }
                self.subscriptions
                    .entry(recorded.stream_id.clone())
                    .or_default()
                    .evolve(&event);
            }
            "invoice" => {
                let event: InvoiceEvent = decode_event(&recorded.payload)?;
                self.balance.add(event.postings())?;
                self.summary.books_balanced &= self.balance.is_balanced();
                let failed = &mut self.summary.failed_payments;
                match &event {
                    InvoiceEvent::InvoiceDrafted {
                        subscription_id,
                        customer_id,
                        ..
                    } => {
                        self.summary.invoices += 1;
                        if subscription_id.is_none() {
                            self.one_time_buyers.insert(customer_id.to_string());
                        }
                    }
                    InvoiceEvent::PaymentSucceeded { amount, .. } => {
                        self.summary.payments += 1;
                        self.summary.collected = self.summary.collected.checked_add(*amount)?;
                        if self.declined.contains(&recorded.stream_id) {
                            failed.recovered += 1;
                            failed.recovered_amount =
                                failed.recovered_amount.checked_add(*amount)?;
                        }
                    }
                    InvoiceEvent::PaymentFailed { decline_code, .. } => {
                        failed.declined_attempts += 1;
                        *failed
                            .decline_codes
                            .entry(decline_code.clone())
                            .or_default() += 1;
                        if self.declined.insert(recorded.stream_id.clone()) {
                            failed.invoices += 1;
                        }
                    }
                    InvoiceEvent::InvoiceMarkedUncollectible { amount, .. } => {
                        failed.written_off += 1;
                        failed.written_off_amount =
                            failed.written_off_amount.checked_add(*amount)?;
                    }
                    InvoiceEvent::InvoiceRefunded { amount, .. } => {
                        self.summary.refunds += 1;
                        self.summary.refunded = self.summary.refunded.checked_add(*amount)?;
                    }
                    _ => {}
                }
                self.invoices
                    .entry(recorded.stream_id.clone())
                    .or_default()
                    .evolve(&event);
            }
            recur_commands::dunning::CATEGORY => {
                let event: DunningEvent = decode_event(&recorded.payload)?;
                let sent = &mut self.summary.dunning.sent;
                if let DunningEvent::DunningMessageSent { message_id, .. } = &event
                    && let Some(message) = self
                        .campaigns
                        .get(&recorded.stream_id)
                        .and_then(|c| c.messages.get(message_id))
                {
                    let channel = match message.queued.channel {
                        Channel::Email => "email",
                        Channel::Sms => "sms",
                        Channel::PhoneCall => "phone_call",
                    };
                    *sent.entry(channel.to_owned()).or_default() += 1;
                }
                self.campaigns
                    .entry(recorded.stream_id.clone())
                    .or_default()
                    .evolve(&event);
            }
            _ => {}
        }
        Ok(())
    }

    /// The funnel, from every campaign's state and every invoice's attempts.
    fn dunning_funnel(&mut self) {
        let funnel = &mut self.summary.dunning;
        for campaign in self.campaigns.values() {
            let Some(subject) = &campaign.subject else {
                continue;
            };
            funnel.campaigns += 1;
            let segment = serde_json::to_value(subject.segment)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            *funnel.by_segment.entry(segment).or_default() += 1;
            for step in &campaign.steps {
                *funnel.reached_step.entry(step.step).or_default() += 1;
            }
            match &campaign.ending {
                Some((Ending::Recovered { after_step, .. }, _)) => {
                    *funnel.recovered_after_step.entry(*after_step).or_default() += 1;
                }
                Some((Ending::Exhausted { final_action }, _)) => {
                    let action = match final_action {
                        FinalAction::Cancel => "cancel",
                        FinalAction::MarkUncollectible => "mark_uncollectible",
                        FinalAction::LeavePastDue => "leave_past_due",
                    };
                    *funnel.exhausted.entry(action.to_owned()).or_default() += 1;
                }
                Some((Ending::Closed { .. }, _)) => {}
                None => funnel.running += 1,
            }
            for message in campaign.messages.values() {
                match &message.delivery {
                    Delivery::Canceled { reason } => {
                        *funnel.canceled.entry(reason.clone()).or_default() += 1;
                    }
                    Delivery::Failed { .. } => funnel.failed += 1,
                    _ => {}
                }
            }
            funnel.phone_tasks += campaign.tasks.len() as u64;
            for given in campaign.offers.values() {
                let kind = match given {
                    OfferGiven::Discount { .. } => "discount",
                    OfferGiven::TrialExtension { .. } => "trial_extension",
                    OfferGiven::NotApplied { .. } => "not_applied",
                };
                *funnel.offers.entry(kind.to_owned()).or_default() += 1;
            }
        }
        for invoice in self.invoices.values() {
            for pair in invoice.attempts.windows(2) {
                let code = pair[0].outcome.as_ref().and_then(|o| o.decline_code());
                if code.is_some_and(|c| !recur_commands::decline::category(c).retry_can_succeed())
                    && pair[0].payment_method == pair[1].payment_method
                {
                    funnel.futile_retries += 1;
                }
            }
        }
    }

    /// The summary (MRR and ARR left at zero: see the module's note).
    pub fn finish(mut self) -> Summary {
        self.dunning_funnel();
        let mut customers: HashMap<String, SubscriptionStatus> = HashMap::new();
        for sub in self.subscriptions.values() {
            let Some(customer) = sub.customer_id else {
                continue;
            };
            let entry = customers.entry(customer.to_string()).or_insert(sub.status);
            if rank(sub.status) < rank(*entry) {
                *entry = sub.status;
            }
        }
        for (customer, status) in &customers {
            let _ = customer;
            *self
                .summary
                .customers
                .entry(status.name().to_owned())
                .or_default() += 1;
        }
        let only_once = self
            .one_time_buyers
            .iter()
            .filter(|c| !customers.contains_key(*c))
            .count();
        if only_once > 0 {
            self.summary
                .customers
                .insert("one_time_only".into(), only_once as u64);
        }
        let failed = &mut self.summary.failed_payments;
        failed.retrying = self
            .declined
            .iter()
            .filter(|s| {
                self.invoices
                    .get(*s)
                    .is_some_and(|i| i.status == InvoiceStatus::Open)
            })
            .count() as u64;
        let mut revenue = Money::zero(self.currency);
        let mut deferred = Money::zero(self.currency);
        let mut tax = Money::zero(self.currency);
        for (account, money) in self.balance.accounts() {
            // Credit balances are negative: flip income and liabilities to read positive.
            let credit = -money;
            match account {
                Account::Revenue(_) => revenue = revenue.checked_add(credit).unwrap_or(revenue),
                Account::DeferredRevenue(_) => {
                    deferred = deferred.checked_add(credit).unwrap_or(deferred)
                }
                Account::TaxPayable(_) => tax = tax.checked_add(credit).unwrap_or(tax),
                _ => {}
            }
        }
        self.summary.revenue_recognized = revenue;
        self.summary.discounts = self.balance.balance(&Account::Discounts, self.currency);
        self.summary.deferred_revenue = deferred;
        self.summary.tax_payable = tax;
        self.summary.customer_credit = -self
            .balance
            .balance(&Account::CustomerCredit, self.currency);
        self.summary.bad_debt = self.balance.balance(&Account::BadDebt, self.currency);
        self.summary.books_balanced &= self.balance.is_balanced();
        self.summary
    }
}

/// Which state describes a customer with several subscriptions: the liveliest.
fn rank(status: SubscriptionStatus) -> u8 {
    match status {
        SubscriptionStatus::Active => 0,
        SubscriptionStatus::PastDue => 1,
        SubscriptionStatus::Trialing => 2,
        SubscriptionStatus::Incomplete => 3,
        SubscriptionStatus::Paused => 4,
        SubscriptionStatus::Canceled => 5,
    }
}
