//! Billing's recovery side: what follows a failed payment under the dunning
//! policy of the customer's segment — the next step (a retry, or waiting for a
//! new card or the customer), the campaign's messages, phone tasks and offers,
//! the final action — and the outbox that sends what a step queued through a
//! [`Messenger`] (the edge: SMTP, SMS).
//!
//! The order survives a crash anywhere: the invoice's outcome is recorded
//! first (with its next retry time), then the campaign's step, keyed by its
//! number, which the scheduler's next visit records if a crash came between.
//! A message is queued before it is sent and sent with its own id as the
//! provider's idempotency key: a crash before the send sends it at restart,
//! one after the send and before its record sends it again under the same id.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use recur_ledger::{Money, Source};
use time::OffsetDateTime;

use crate::billing::{Billing, metadata};
use crate::customer::{Customer, Segment};
use crate::decline::{DeclineCategory, category};
use crate::dunning::{
    self, CallOutcome, CampaignSubject, DunningCampaign, DunningCommand, OfferGiven, PolicyBook,
    QueuedMessage, SetPolicies, Step, StepDecision, Template,
};
use crate::dunning_policy::{Channel, DunningPolicies, DunningPolicy, FinalAction, NextStep};
use crate::error::{BillingError, DomainError};
use crate::ids::{CouponCode, InvoiceId};
use crate::invoice::{BillingReason, ChargeOutcome, Invoice, InvoiceCommand, InvoiceStatus};
use crate::repository::Executed;
use crate::subscription::{
    CancelReason, Settlement, SubscriptionCommand, SubscriptionStatus, Timing,
};

/// A message for a customer, ready for a channel: what the edge renders and sends.
#[derive(Clone)]
pub struct Notice {
    /// The idempotency key and Message-ID.
    pub message_id: uuid::Uuid,
    /// Email or SMS.
    pub channel: Channel,
    /// Which message.
    pub template: Template,
    /// The address or phone number (personal data: never logged).
    pub to: String,
    /// The customer's name (personal data).
    pub customer_name: String,
    /// What the invoice is for.
    pub plan_name: String,
    /// What is owed.
    pub amount_due: Money,
    /// The customer, for the update-card link.
    pub customer_id: crate::ids::CustomerId,
    /// The invoice, for the update-card link (none for a card reminder).
    pub invoice_id: Option<InvoiceId>,
    /// The step (failed attempts so far).
    pub step: u32,
    /// The policy's steps.
    pub steps_total: u32,
    /// The card on file's last four digits.
    pub last4: Option<String>,
    /// The card on file's expiry (`2027-03`), for a card reminder.
    pub expires_on: Option<String>,
    /// The offer made at this step, in words.
    pub offer: Option<String>,
    /// When it is sent (the billing clock's now): links expire from here.
    pub sent_at: OffsetDateTime,
}

impl std::fmt::Debug for Notice {
    /// Ids, channel and template only: the address, name and plan stay out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notice")
            .field("message_id", &self.message_id)
            .field("channel", &self.channel)
            .field("template", &self.template)
            .field("invoice_id", &self.invoice_id)
            .finish_non_exhaustive()
    }
}

/// Why a send failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendFailure {
    /// Whether sending again may work.
    pub retryable: bool,
    /// A stable code (no address, no content).
    pub code: String,
}

/// A boxed send.
pub type SendFuture<'a> = Pin<Box<dyn Future<Output = Result<String, SendFailure>> + Send + 'a>>;

/// Sends notices: the edge's SMTP and SMS clients, or a recorder.
pub trait Messenger: Send + Sync {
    /// Sends one notice; answers the provider's id. The notice's id is the
    /// idempotency key.
    fn send<'a>(&'a self, notice: &'a Notice) -> SendFuture<'a>;
}

/// Keeps what it was asked to send, in memory: `recur demo` without SMTP or
/// SMS configured, and tests.
#[derive(Debug, Default)]
pub struct RecordingMessenger {
    sent: Mutex<Vec<(uuid::Uuid, Channel, Template)>>,
}

impl RecordingMessenger {
    /// What was sent: (id, channel, template).
    pub fn sent(&self) -> Vec<(uuid::Uuid, Channel, Template)> {
        self.sent.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Messenger for RecordingMessenger {
    fn send<'a>(&'a self, notice: &'a Notice) -> SendFuture<'a> {
        Box::pin(async move {
            if let Ok(mut sent) = self.sent.lock() {
                sent.push((notice.message_id, notice.channel, notice.template));
            }
            Ok(format!("recorded-{}", notice.message_id))
        })
    }
}

/// Which policy an invoice's campaign follows: high-value customers' own;
/// the first invoice of a subscription (a trial's end) the trial policy;
/// otherwise the customer's segment.
pub fn dunning_segment(customer: &Customer, invoice: &Invoice) -> Segment {
    match (customer.segment, invoice.reason) {
        (Segment::HighValue, _) => Segment::HighValue,
        (_, Some(BillingReason::SubscriptionCreate)) => Segment::Trial,
        (segment, _) => segment,
    }
}

/// The invoice's next retry time for a step: a retry's, or the time the
/// campaign gives up while it waits; none when it gives up now.
pub fn next_retry_at(next: NextStep) -> Option<OffsetDateTime> {
    match next {
        NextStep::RetryAt(at)
        | NextStep::AwaitNewCard { until: at }
        | NextStep::AwaitCustomerAction { until: at } => Some(at),
        NextStep::GiveUp(_) => None,
    }
}

/// The last decline of an invoice, if its last attempt was declined.
fn last_decline(invoice: &Invoice) -> Option<(&str, OffsetDateTime, Option<&str>)> {
    let last = invoice.attempts.last()?;
    match &last.outcome {
        Some(ChargeOutcome::Declined { decline_code, .. }) => Some((
            decline_code.as_str(),
            last.effective_at(),
            last.payment_method.as_deref(),
        )),
        _ => None,
    }
}

/// Whether a retry of the invoice now could succeed with the card on file: a
/// soft decline, or a card that changed since a decline it cannot survive.
pub fn retry_can_succeed(invoice: &Invoice, customer: &Customer) -> bool {
    match last_decline(invoice) {
        None => true,
        Some((code, _, card)) => {
            category(code).retry_can_succeed()
                || customer
                    .payment_method
                    .as_ref()
                    .is_some_and(|on_file| Some(on_file.token.as_str()) != card)
        }
    }
}

/// One decline of an invoice as a step of its campaign.
#[derive(Clone, Copy, Debug)]
pub struct CampaignStep<'a> {
    /// The step's number: every decline is a step (1-based).
    pub step: u32,
    /// Where it stands in the policy's schedule (1-based): a scheduled
    /// decline moves one place on; a decline of an attempt asked for now
    /// (pay-now, the update-card page) after the first stays where the
    /// campaign was, so a customer trying cards never spends the retries.
    pub position: usize,
    /// The declined attempt.
    pub attempt: &'a crate::invoice::Attempt,
    /// Its decline code.
    pub decline_code: &'a str,
}

/// Every decline of an invoice as a campaign step, in order.
pub fn campaign_steps(invoice: &Invoice) -> Vec<CampaignStep<'_>> {
    let mut steps: Vec<CampaignStep<'_>> = Vec::new();
    for attempt in &invoice.attempts {
        if let Some(ChargeOutcome::Declined { decline_code, .. }) = &attempt.outcome {
            steps.push(CampaignStep {
                step: u32::try_from(steps.len() + 1).unwrap_or(u32::MAX),
                position: decline_position(&steps, attempt),
                attempt,
                decline_code,
            });
        }
    }
    steps
}

/// The number of declined attempts of an invoice (its campaign's steps).
pub fn failed_attempts(invoice: &Invoice) -> usize {
    campaign_steps(invoice).len()
}

/// The schedule position a decline of `attempt` (not yet recorded on
/// `invoice`) is decided at: one on from the last step, or the same for an
/// attempt asked for now after the campaign began.
pub fn decline_step(invoice: &Invoice, attempt: &crate::invoice::Attempt) -> usize {
    decline_position(&campaign_steps(invoice), attempt)
}

fn decline_position(before: &[CampaignStep<'_>], attempt: &crate::invoice::Attempt) -> usize {
    match before.last() {
        Some(last) if attempt.on_demand => last.position,
        Some(last) => last.position + 1,
        None => 1,
    }
}

impl Billing {
    /// The dunning policies in force: the last ones set, or those shipped.
    ///
    /// # Errors
    /// Ledger errors.
    pub async fn dunning_policies(&self) -> Result<DunningPolicies, BillingError> {
        let (book, _) = self
            .repo
            .load_current::<PolicyBook>(&dunning::policies_stream()?)
            .await?;
        match book.policies {
            Some(policies) => Ok(policies),
            None => DunningPolicies::default_policies()
                .map_err(|e| BillingError::Catalog(e.to_string())),
        }
    }

    /// Puts `policies` in force from now (recorded as an event; none when
    /// they are the ones in force). Campaigns decide their next steps by them.
    ///
    /// # Errors
    /// Ledger errors.
    pub async fn set_dunning_policies(
        &self,
        policies: DunningPolicies,
        source: Source,
    ) -> Result<u32, BillingError> {
        let now = self.now();
        let executed = self
            .repo
            .execute::<PolicyBook, _>(&dunning::policies_stream()?, &metadata(source), |_| {
                Ok(SetPolicies {
                    policies: policies.clone(),
                    now,
                })
            })
            .await?;
        Ok(executed.state.version)
    }

    async fn policy_for(&self, segment: Segment) -> Result<DunningPolicy, BillingError> {
        self.dunning_policies()
            .await?
            .of(segment)
            .cloned()
            .ok_or_else(|| BillingError::Catalog(format!("no dunning policy for {segment:?}")))
    }

    /// What follows a decline of `decline_code`, the invoice's
    /// `failed_attempts`-th, due at `failed_at`.
    pub(crate) async fn dunning_next(
        &self,
        invoice: &Invoice,
        customer: &Customer,
        decline_code: &str,
        failed_attempts: usize,
        failed_at: OffsetDateTime,
    ) -> Result<NextStep, BillingError> {
        let policy = self.policy_for(dunning_segment(customer, invoice)).await?;
        let next = policy.next_step(category(decline_code), failed_attempts, failed_at);
        let NextStep::RetryAt(fixed_at) = next else {
            return Ok(next);
        };
        // The learned time, within a window around the policy's; the
        // policy's own until the ledger holds enough retries of the slot.
        // Seeded by what the decision is about (not the invoice's random id),
        // so a replayed business decides alike.
        // FNV-1a over the decision's content (not the invoice's random id,
        // so a replayed business decides alike): the same on every platform
        // and Rust release (std's hashers promise neither).
        let seed = format!(
            "{decline_code}|{}|{failed_attempts}|{}",
            failed_at.unix_timestamp(),
            invoice.amount_remaining()
        )
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        });
        let Ok(mut timing) = self.retry_timing.lock() else {
            return Ok(next);
        };
        timing.reseed(seed);
        Ok(NextStep::RetryAt(
            timing.choose(decline_code, failed_at, fixed_at).at,
        ))
    }

    /// Learns from retries of declined payments (the scheduler feeds every
    /// one it reads in the ledger, from the first event on).
    pub fn observe_retries(
        &self,
        outcomes: &[(InvoiceId, u32, crate::retry_timing::RetryOutcome)],
    ) {
        let (Ok(mut timing), Ok(mut learned)) =
            (self.retry_timing.lock(), self.retries_learned.lock())
        else {
            return;
        };
        for (invoice, attempt_no, outcome) in outcomes {
            if learned.insert((*invoice, *attempt_no)) {
                timing.observe(outcome);
            }
        }
    }

    /// How many retries the learned timing has seen.
    pub fn retries_observed(&self) -> u64 {
        self.retry_timing.lock().map_or(0, |t| t.observed())
    }

    /// The campaign of an invoice.
    ///
    /// # Errors
    /// Ledger errors.
    pub async fn dunning_campaign(&self, id: InvoiceId) -> Result<DunningCampaign, BillingError> {
        Ok(self
            .repo
            .load_current::<DunningCampaign>(&dunning::stream(id)?)
            .await?
            .0)
    }

    async fn campaign_command(
        &self,
        id: InvoiceId,
        source: Source,
        command: impl Fn(&DunningCampaign) -> DunningCommand,
    ) -> Result<Executed<DunningCampaign>, BillingError> {
        self.repo
            .execute::<DunningCampaign, _>(&dunning::stream(id)?, &metadata(source), |state| {
                Ok(command(state))
            })
            .await
    }

    /// Records the campaign's steps for every decline of `invoice` it has not
    /// recorded yet (the last one normally; all of them after a crash), with
    /// their messages, phone task and offers.
    pub(crate) async fn record_dunning_steps(
        &self,
        invoice: &Invoice,
        customer: &Customer,
        source: Source,
    ) -> Result<(), BillingError> {
        let (Some(id), Some(customer_id)) = (invoice.id, invoice.customer_id) else {
            return Ok(());
        };
        let failed = campaign_steps(invoice);
        if failed.is_empty() {
            return Ok(());
        }
        let campaign = self.dunning_campaign(id).await?;
        let segment = dunning_segment(customer, invoice);
        let policy = self.policy_for(segment).await?;
        let steps_total = policy.steps_total();
        for &CampaignStep {
            step: step_no_u32,
            position,
            attempt,
            decline_code: code,
        } in &failed
        {
            if step_no_u32 <= campaign.last_step() || campaign.ending.is_some() {
                // Recorded (or ended); its offer, if a crash came before it.
                if step_no_u32 <= campaign.last_step()
                    && policy.offers_at(offer_place(position)).next().is_some()
                    && !offer_made(&campaign, &failed, position)
                {
                    self.make_offers(
                        invoice,
                        &policy,
                        step_no_u32,
                        position,
                        attempt.effective_at(),
                        source,
                    )
                    .await?;
                }
                continue;
            }
            let failed_at = attempt.effective_at();
            let declined = category(code);
            // A retry's time is the invoice's (learned or the policy's).
            let next = match policy.next_step(declined, position, failed_at) {
                NextStep::RetryAt(fixed) => {
                    NextStep::RetryAt(attempt.next_retry_at.unwrap_or(fixed))
                }
                other => other,
            };
            let template = Template::for_step(
                u32::try_from(position).unwrap_or(u32::MAX),
                steps_total,
                declined,
            );
            let mut messages = Vec::new();
            let mut queue = |template: Template, due_at: OffsetDateTime, channels: &[Channel]| {
                for channel in channels {
                    if *channel != Channel::PhoneCall {
                        messages.push(QueuedMessage {
                            message_id: crate::context::new_id(due_at),
                            step: step_no_u32,
                            channel: *channel,
                            template,
                            due_at,
                        });
                    }
                }
            };
            // The final action's own step says nothing more: the last retry's
            // step carried the final notice, and whatever this one queued
            // would race the campaign's end that cancels it.
            if !matches!(next, NextStep::GiveUp(_)) {
                queue(template, failed_at, &policy.channels);
            }
            // A campaign that waits for the customer reminds them when each
            // retry would have run, by email only, the last a final notice.
            if matches!(
                next,
                NextStep::AwaitNewCard { .. } | NextStep::AwaitCustomerAction { .. }
            ) {
                let times = policy.remaining_step_times(position, failed_at);
                let reminders = times.len();
                let email_only: Vec<Channel> = policy
                    .channels
                    .iter()
                    .copied()
                    .filter(|c| *c == Channel::Email)
                    .collect();
                for (i, due_at) in times.into_iter().enumerate() {
                    let template = if i + 1 == reminders {
                        Template::PaymentFinalNotice
                    } else if declined == DeclineCategory::Authentication {
                        Template::AuthenticationRequired
                    } else {
                        Template::PaymentFailedUrgent
                    };
                    // The last reminder is the final action's own time: sent a
                    // day before it, so that it can still be acted on.
                    let due_at = if i + 1 == reminders {
                        due_at - time::Duration::days(1)
                    } else {
                        due_at
                    };
                    // Not within a day of the step's own message.
                    if due_at - failed_at >= time::Duration::days(1) {
                        queue(template, due_at, &email_only);
                    }
                }
            }
            let decision = StepDecision {
                subject: CampaignSubject {
                    invoice_id: id,
                    customer_id,
                    subscription_id: invoice.subscription_id,
                    segment,
                    amount_due: invoice.amount_remaining(),
                },
                step: Step {
                    step: step_no_u32,
                    decline_code: code.to_owned(),
                    category: declined,
                    next,
                    at: failed_at,
                },
                messages,
                phone_call: policy.channels.contains(&Channel::PhoneCall),
            };
            self.campaign_command(id, source, |_| {
                DunningCommand::DecideStep(Box::new(decision.clone()))
            })
            .await?;
            self.make_offers(invoice, &policy, step_no_u32, position, failed_at, source)
                .await?;
        }
        Ok(())
    }

    /// The policy's offers at a step: a discount through the subscription's
    /// normal discount command (its coupon created once, as the policy says),
    /// or the trial extension's grace (already in the step's timing).
    /// Made once per schedule position, recorded under the step that first
    /// reached it.
    async fn make_offers(
        &self,
        invoice: &Invoice,
        policy: &DunningPolicy,
        step: u32,
        position: usize,
        at: OffsetDateTime,
        source: Source,
    ) -> Result<(), BillingError> {
        let Some(id) = invoice.id else {
            return Ok(());
        };
        let Some(offer) = policy.offers_at(offer_place(position)).next().cloned() else {
            return Ok(());
        };
        let campaign = self.dunning_campaign(id).await?;
        if offer_made(&campaign, &campaign_steps(invoice), position) {
            return Ok(());
        }
        let given = if let Some(days) = offer.trial_extension_days {
            OfferGiven::TrialExtension { days }
        } else if let (Some(percent), Some(sub_id)) = (offer.percent_off, invoice.subscription_id) {
            let subscription = self.subscription(sub_id).await?;
            // An offer the coupon rules refuse (policies set before they were
            // checked as strictly) is recorded as not applied: it never stops
            // the campaign, or the invoice's collection.
            let terms = offer.coupon_code(policy.segment).and_then(|code| {
                let duration =
                    offer
                        .coupon_duration()
                        .map_err(|reason| DomainError::InvalidField {
                            field: "duration",
                            reason: reason.to_owned(),
                        })?;
                Ok((code, duration))
            });
            match terms {
                Err(error) => OfferGiven::NotApplied {
                    reason: error.code().to_owned(),
                },
                // The customer's own discount, while it still takes something
                // off (or one set for the next period), stays: an offer never
                // raises a price. A used-up one is no obstacle.
                Ok(_)
                    if subscription.discount_in_force(at)
                        && (subscription.scheduled_discount.is_some()
                            || !subscription.discount.as_ref().is_some_and(|d| {
                                // This campaign's own earlier offer gives way to
                                // its later one.
                                campaign.offers.values().any(|given| {
                                    matches!(given, OfferGiven::Discount { coupon }
                                    if *coupon == d.coupon.to_string())
                                })
                            })) =>
                {
                    OfferGiven::NotApplied {
                        reason: "discount_in_force".to_owned(),
                    }
                }
                Ok((code, duration)) => self.apply_offer(sub_id, code, percent, duration).await?,
            }
        } else {
            OfferGiven::NotApplied {
                reason: "no_subscription".to_owned(),
            }
        };
        self.campaign_command(id, source, |_| DunningCommand::RecordOffer {
            step,
            given: given.clone(),
            now: at,
        })
        .await?;
        Ok(())
    }

    /// Applies a discount offer's coupon to the subscription now (the coupon
    /// made once, on first use): what was given, or why not.
    async fn apply_offer(
        &self,
        sub_id: crate::ids::SubscriptionId,
        code: CouponCode,
        percent: rust_decimal::Decimal,
        duration: crate::coupon::CouponDuration,
    ) -> Result<OfferGiven, BillingError> {
        let created = self
            .create_coupon(crate::billing::NewCoupon {
                code: code.clone(),
                discount: crate::coupon::Discount::PercentOff { percent },
                duration,
                max_redemptions: None,
                redeem_by: None,
            })
            .await;
        match created {
            Ok(()) | Err(BillingError::Domain(DomainError::AlreadyExists { .. })) => {}
            Err(BillingError::Domain(error)) => {
                return Ok(OfferGiven::NotApplied {
                    reason: error.code().to_owned(),
                });
            }
            Err(error) => return Err(error),
        }
        let given = match self.apply_discount(sub_id, &code, Timing::Now).await {
            Ok(_) => OfferGiven::Discount {
                coupon: code.to_string(),
            },
            // A concurrent recorder of the same step applied it first.
            Err(BillingError::Domain(DomainError::CouponAlreadyRedeemed(_)))
                if self
                    .subscription(sub_id)
                    .await?
                    .discount
                    .is_some_and(|d| d.coupon == code) =>
            {
                OfferGiven::Discount {
                    coupon: code.to_string(),
                }
            }
            Err(BillingError::Domain(error)) => OfferGiven::NotApplied {
                reason: error.code().to_owned(),
            },
            Err(error) => return Err(error),
        };
        Ok(given)
    }

    /// The policy is spent for `invoice`: its final action, as of `at` (when
    /// the last failed attempt was due, or the campaign's waiting ended).
    /// Cancel writes the invoice off and ends the subscription — at the end of
    /// a period already paid for, never inside it; mark uncollectible writes
    /// it off and lets the subscription go on; leave past due keeps it open
    /// and stops collecting (a person decides).
    pub(crate) async fn give_up(
        &self,
        invoice: &Invoice,
        at: OffsetDateTime,
        source: Source,
    ) -> Result<(), BillingError> {
        let (Some(id), Some(customer_id)) = (invoice.id, invoice.customer_id) else {
            return Ok(());
        };
        let customer = self.customer(customer_id).await?;
        let final_action = self
            .policy_for(dunning_segment(&customer, invoice))
            .await?
            .final_action;
        let now = self.now();
        if final_action != FinalAction::LeavePastDue {
            let written_off = self
                .invoice_command(id, source, |_| InvoiceCommand::MarkUncollectible { now })
                .await?;
            match written_off.state.status {
                InvoiceStatus::Uncollectible => {}
                // A charge in flight decides; the next visit finds its outcome.
                InvoiceStatus::Open => return Ok(()),
                // Paid by a concurrent collector after all.
                _ => return self.settled(&written_off.state, source).await,
            }
        }
        match (final_action, invoice.subscription_id) {
            (FinalAction::Cancel, Some(sub_id)) => {
                let sub = self.subscription(sub_id).await?;
                if sub.status != SubscriptionStatus::Canceled {
                    let reason = if invoice.attempts.iter().all(|a| a.payment_method.is_none()) {
                        CancelReason::TrialEndedWithoutPayment
                    } else {
                        CancelReason::PaymentFailed
                    };
                    // An invoice of an earlier period than the current one,
                    // which is paid: the subscription ends with that period.
                    // Only the current period's own invoice (its start or
                    // renewal) ends the subscription now; any other (an earlier
                    // period's, a mid-period change's) leaves it to the end of
                    // a period that may be paid for.
                    let own_period_invoice = matches!(
                        invoice.reason,
                        Some(BillingReason::SubscriptionCreate | BillingReason::SubscriptionCycle)
                    ) && sub
                        .current_period
                        .is_some_and(|p| invoice.issued_at.is_some_and(|issued| issued >= p.start));
                    let paid_period_runs = !own_period_invoice;
                    let timing = if paid_period_runs {
                        Timing::PeriodEnd
                    } else {
                        Timing::Now
                    };
                    let canceled = self
                        .subscription_command(sub_id, source, |state| {
                            SubscriptionCommand::Cancel {
                                timing,
                                reason,
                                // Never before what the subscription already recorded.
                                now: at.max(state.current_period.map_or(at, |p| p.start)),
                            }
                        })
                        .await;
                    match canceled {
                        // A concurrent scheduler canceled it first.
                        Ok(_)
                        | Err(BillingError::Domain(DomainError::InvalidTransition { .. })) => {}
                        Err(error) => return Err(error),
                    }
                }
            }
            (FinalAction::MarkUncollectible, Some(sub_id)) => {
                // Written off: the subscription goes on, as with a voided invoice.
                self.subscription_command(sub_id, source, |_| {
                    SubscriptionCommand::RecordInvoiceSettled {
                        invoice_id: id,
                        at,
                        outcome: Settlement::Voided,
                    }
                })
                .await?;
            }
            _ => {}
        }
        self.campaign_command(id, source, |_| DunningCommand::Exhaust { final_action, at })
            .await?;
        Ok(())
    }

    /// Ends an invoice's campaign once it is paid (recovered) or voided.
    pub(crate) async fn end_campaign(
        &self,
        invoice: &Invoice,
        source: Source,
    ) -> Result<(), BillingError> {
        let Some(id) = invoice.id else {
            return Ok(());
        };
        if failed_attempts(invoice) == 0 {
            return Ok(());
        }
        let at = invoice.settled_at.unwrap_or_else(|| self.now());
        let command = match invoice.status {
            // Collected: recovered, by what was paid.
            InvoiceStatus::Paid if invoice.amount_paid.is_some_and(|paid| paid.is_positive()) => {
                DunningCommand::Recover {
                    amount: invoice
                        .amount_paid
                        .unwrap_or_else(|| invoice.amount_remaining()),
                    at,
                }
            }
            // Settled by a credit note, nothing collected: forgiven, not
            // recovered (closed, like a voided invoice's campaign).
            InvoiceStatus::Paid => DunningCommand::Close {
                reason: "credited".to_owned(),
                at,
            },
            InvoiceStatus::Void => DunningCommand::Close {
                reason: "voided".to_owned(),
                at,
            },
            _ => return Ok(()),
        };
        self.campaign_command(id, source, |_| command.clone())
            .await?;
        Ok(())
    }

    /// Sends the campaign's messages that are due, each recorded as sent, or
    /// failed (sent again later with backoff, or given up), or canceled
    /// (no address; the customer's data erased). Returns how many were sent.
    ///
    /// # Errors
    /// Ledger errors (a message whose outcome could not be recorded is sent
    /// again under the same id).
    #[tracing::instrument(skip_all, fields(invoice = %id))]
    pub async fn send_dunning_messages(
        &self,
        id: InvoiceId,
        messenger: &dyn Messenger,
    ) -> Result<u32, BillingError> {
        let campaign = self.dunning_campaign(id).await?;
        let now = self.now();
        let due: Vec<QueuedMessage> = campaign
            .due_messages(now)
            .into_iter()
            .map(|m| m.queued.clone())
            .collect();
        let Some(subject) = campaign.subject.clone().filter(|_| !due.is_empty()) else {
            return Ok(0);
        };
        let invoice = self.invoice(id).await?;
        if matches!(invoice.status, InvoiceStatus::Paid | InvoiceStatus::Void) {
            // Settled, and the campaign's end was lost (a crash, a contended
            // append): end it now, which cancels what is queued.
            self.end_campaign(&invoice, Source::Scheduler).await?;
            return Ok(0);
        }
        let contact = self.contact(subject.customer_id).await?;
        let customer = self.customer(subject.customer_id).await?;
        let policy = self.policy_for(subject.segment).await?;
        let mut sent = 0;
        let mut offers_told: std::collections::BTreeMap<u32, Option<String>> =
            std::collections::BTreeMap::new();
        for message in due {
            // A message that waited too long (no messenger was configured, the
            // provider was down for days) would arrive out of place: dropped.
            if now - message.due_at > time::Duration::hours(dunning::MESSAGE_STALE_AFTER_H) {
                self.campaign_command(id, Source::Scheduler, |_| DunningCommand::CancelMessage {
                    message_id: message.message_id,
                    reason: "stale".to_owned(),
                    now,
                })
                .await?;
                continue;
            }
            let to = contact.as_ref().and_then(|c| match message.channel {
                Channel::Email => Some(c.email.clone()),
                Channel::Sms => c.phone.clone(),
                Channel::PhoneCall => None,
            });
            let Some(to) = to else {
                let reason = if contact.is_none() {
                    "no_contact"
                } else {
                    "no_address"
                };
                self.campaign_command(id, Source::Scheduler, |_| DunningCommand::CancelMessage {
                    message_id: message.message_id,
                    reason: reason.to_owned(),
                    now,
                })
                .await?;
                continue;
            };
            // Told once per step: a step's email and SMS go out together.
            let offer = match (
                offers_told.get(&message.step),
                campaign.offers.get(&message.step),
            ) {
                (Some(words), _) => words.clone(),
                (None, Some(given)) => {
                    let words = self.offer_words(given, subject.subscription_id).await?;
                    offers_told.insert(message.step, words.clone());
                    words
                }
                (None, None) => None,
            };
            let notice = Notice {
                message_id: message.message_id,
                channel: message.channel,
                template: message.template,
                to,
                customer_name: contact.as_ref().map(|c| c.name.clone()).unwrap_or_default(),
                plan_name: invoice
                    .lines
                    .first()
                    .map(|l| l.description.clone())
                    .unwrap_or_default(),
                amount_due: invoice.amount_remaining(),
                customer_id: subject.customer_id,
                invoice_id: Some(id),
                step: message.step,
                steps_total: policy.steps_total(),
                last4: customer.payment_method.as_ref().map(|m| m.last4.clone()),
                expires_on: None,
                offer,
                sent_at: now,
            };
            // Claimed first, on the campaign's version: a second sender finds
            // it claimed and leaves it.
            let claimed = self
                .campaign_command(id, Source::Scheduler, |_| DunningCommand::ClaimSend {
                    message_id: message.message_id,
                    now,
                })
                .await?;
            if claimed.events.is_empty() {
                continue;
            }
            let command = match messenger.send(&notice).await {
                Ok(provider_id) => {
                    sent += 1;
                    DunningCommand::RecordSent {
                        message_id: message.message_id,
                        provider_id,
                        now,
                    }
                }
                Err(failure) => {
                    tracing::warn!(code = %failure.code, retryable = failure.retryable, "dunning message not sent");
                    DunningCommand::RecordSendFailed {
                        message_id: message.message_id,
                        code: failure.code,
                        retryable: failure.retryable,
                        now,
                    }
                }
            };
            self.campaign_command(id, Source::Scheduler, |_| command.clone())
                .await?;
        }
        Ok(sent)
    }

    /// Reminds a customer whose card on file expires soon (by email and SMS,
    /// [`dunning::CARD_EXPIRY_REMINDER_DAYS`] before it stops working), once
    /// per card, through the outbox of the customer's `card_expiry` stream.
    /// Returns how many messages were sent.
    ///
    /// # Errors
    /// Ledger errors.
    #[tracing::instrument(skip_all, fields(customer = %id))]
    pub async fn remind_card_expiry(
        &self,
        id: crate::ids::CustomerId,
        messenger: &dyn Messenger,
    ) -> Result<u32, BillingError> {
        let stream = dunning::card_expiry_stream(id)?;
        let customer = self.customer(id).await?;
        let now = self.now();
        if let Some(card) = &customer.payment_method
            && let Some(remind_at) = dunning::card_reminder_at(card.exp_month, card.exp_year)
            && now >= remind_at
            && now < remind_at + time::Duration::days(dunning::CARD_EXPIRY_REMINDER_DAYS)
        {
            let messages = [Channel::Email, Channel::Sms]
                .into_iter()
                .map(|channel| QueuedMessage {
                    message_id: crate::context::new_id(remind_at),
                    step: 0,
                    channel,
                    template: Template::CardExpiring,
                    due_at: remind_at,
                })
                .collect::<Vec<_>>();
            self.repo
                .execute::<DunningCampaign, _>(&stream, &metadata(Source::Scheduler), |_| {
                    Ok(DunningCommand::QueueReminder {
                        messages: messages.clone(),
                    })
                })
                .await?;
        }
        let (outbox, _) = self.repo.load_current::<DunningCampaign>(&stream).await?;
        let due: Vec<QueuedMessage> = outbox
            .due_messages(now)
            .into_iter()
            .map(|m| m.queued.clone())
            .collect();
        if due.is_empty() {
            return Ok(0);
        }
        let contact = self.contact(id).await?;
        let mut sent = 0;
        for message in due {
            let card = customer.payment_method.as_ref();
            let notice = contact.as_ref().zip(card).and_then(|(c, card)| {
                let to = match message.channel {
                    Channel::Email => Some(c.email.clone()),
                    Channel::Sms => c.phone.clone(),
                    Channel::PhoneCall => None,
                }?;
                Some(Notice {
                    message_id: message.message_id,
                    channel: message.channel,
                    template: message.template,
                    to,
                    customer_name: c.name.clone(),
                    plan_name: String::new(),
                    amount_due: Money::zero(recur_ledger::Currency::USD),
                    customer_id: id,
                    invoice_id: None,
                    step: 0,
                    steps_total: 0,
                    last4: Some(card.last4.clone()),
                    expires_on: Some(format!("{}-{:02}", card.exp_year, card.exp_month)),
                    offer: None,
                    sent_at: now,
                })
            });
            let command = |command: DunningCommand| {
                let stream = stream.clone();
                async move {
                    self.repo
                        .execute::<DunningCampaign, _>(
                            &stream,
                            &metadata(Source::Scheduler),
                            |_| Ok(command.clone()),
                        )
                        .await
                }
            };
            let Some(notice) = notice else {
                command(DunningCommand::CancelMessage {
                    message_id: message.message_id,
                    reason: "no_address".to_owned(),
                    now,
                })
                .await?;
                continue;
            };
            let claimed = command(DunningCommand::ClaimSend {
                message_id: message.message_id,
                now,
            })
            .await?;
            if claimed.events.is_empty() {
                continue;
            }
            let outcome = match messenger.send(&notice).await {
                Ok(provider_id) => {
                    sent += 1;
                    DunningCommand::RecordSent {
                        message_id: message.message_id,
                        provider_id,
                        now,
                    }
                }
                Err(failure) => DunningCommand::RecordSendFailed {
                    message_id: message.message_id,
                    code: failure.code,
                    retryable: failure.retryable,
                    now,
                },
            };
            command(outcome).await?;
        }
        Ok(sent)
    }

    /// A customer's card-expiry reminders (the outbox of its `card_expiry` stream).
    ///
    /// # Errors
    /// Ledger errors.
    pub async fn card_expiry_reminders(
        &self,
        id: crate::ids::CustomerId,
    ) -> Result<DunningCampaign, BillingError> {
        Ok(self
            .repo
            .load_current::<DunningCampaign>(&dunning::card_expiry_stream(id)?)
            .await?
            .0)
    }

    /// The customer opened the update-card link of a campaign's message: the
    /// first visit is recorded as `DunningLinkClicked`, later ones change
    /// nothing. Answers whether this visit was the first.
    ///
    /// # Errors
    /// No such message in the campaign; ledger errors.
    pub async fn record_dunning_click(
        &self,
        id: InvoiceId,
        message_id: uuid::Uuid,
    ) -> Result<bool, BillingError> {
        let now = self.now();
        let executed = self
            .campaign_command(id, Source::Api, |_| DunningCommand::RecordClick {
                message_id,
                now,
            })
            .await?;
        Ok(!executed.events.is_empty())
    }

    /// A person takes a campaign's phone task.
    ///
    /// # Errors
    /// Unknown task; a task someone else holds or that is completed.
    pub async fn claim_dunning_task(
        &self,
        id: InvoiceId,
        task_no: u32,
        by: String,
    ) -> Result<DunningCampaign, BillingError> {
        let now = self.now();
        Ok(self
            .campaign_command(id, Source::Api, |_| DunningCommand::ClaimTask {
                task_no,
                by: by.clone(),
                now,
            })
            .await?
            .state)
    }

    /// A person reports how the call of a claimed task went.
    ///
    /// # Errors
    /// Unknown or unclaimed task; a task completed with another outcome.
    pub async fn complete_dunning_task(
        &self,
        id: InvoiceId,
        task_no: u32,
        outcome: CallOutcome,
    ) -> Result<DunningCampaign, BillingError> {
        let now = self.now();
        Ok(self
            .campaign_command(id, Source::Api, |_| DunningCommand::CompleteTask {
                task_no,
                outcome,
                now,
            })
            .await?
            .state)
    }
}

/// A schedule position as a policy's step number (offers are placed by it).
fn offer_place(position: usize) -> u32 {
    u32::try_from(position).unwrap_or(u32::MAX)
}

/// Whether the offer of schedule `position` was recorded, under whichever
/// step first reached it.
fn offer_made(campaign: &DunningCampaign, steps: &[CampaignStep<'_>], position: usize) -> bool {
    steps
        .iter()
        .filter(|s| s.position == position)
        .any(|s| campaign.offers.contains_key(&s.step))
}

/// A discount in the customer's words: "20% off your next invoice".
pub fn discount_words(
    discount: &crate::coupon::Discount,
    duration: crate::coupon::CouponDuration,
) -> String {
    use crate::coupon::{CouponDuration, Discount};
    let off = match discount {
        Discount::PercentOff { percent } => format!("{}%", percent.normalize()),
        Discount::AmountOff { amount } => amount.to_string(),
    };
    match duration {
        CouponDuration::Once => format!("{off} off your next invoice"),
        CouponDuration::Repeating { months: 1 } => format!("{off} off for the next month"),
        CouponDuration::Repeating { months } => format!("{off} off for the next {months} months"),
        CouponDuration::Forever => format!("{off} off from now on"),
    }
}

impl Billing {
    /// An offer in the customer's words, a discount by its coupon's terms.
    /// A discount another has replaced since (the campaign's later offer)
    /// is not told.
    async fn offer_words(
        &self,
        given: &OfferGiven,
        subscription: Option<crate::ids::SubscriptionId>,
    ) -> Result<Option<String>, BillingError> {
        Ok(match given {
            OfferGiven::Discount { coupon } => {
                let code = CouponCode::parse(coupon)?;
                let in_force = match subscription {
                    Some(sub_id) => self
                        .subscription(sub_id)
                        .await?
                        .discount
                        .is_some_and(|d| d.coupon == code),
                    None => false,
                };
                if !in_force {
                    return Ok(None);
                }
                let (terms, _) = self
                    .repo
                    .load_current::<crate::coupon::Coupon>(&code.stream()?)
                    .await?;
                terms
                    .discount
                    .zip(terms.duration)
                    .map(|(discount, duration)| discount_words(&discount, duration))
            }
            OfferGiven::TrialExtension { days } => {
                Some(format!("{days} more days before anything changes"))
            }
            OfferGiven::NotApplied { .. } => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coupon::{CouponDuration, Discount};

    #[test]
    fn a_discount_is_told_by_its_terms() {
        let percent = |p: i64| Discount::PercentOff {
            percent: rust_decimal::Decimal::new(p, 1),
        };
        assert_eq!(
            discount_words(&percent(200), CouponDuration::Once),
            "20% off your next invoice"
        );
        assert_eq!(
            discount_words(&percent(125), CouponDuration::Repeating { months: 3 }),
            "12.5% off for the next 3 months"
        );
        assert_eq!(
            discount_words(&percent(300), CouponDuration::Repeating { months: 1 }),
            "30% off for the next month"
        );
        assert_eq!(
            discount_words(&percent(100), CouponDuration::Forever),
            "10% off from now on"
        );
    }
}
