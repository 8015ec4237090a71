//! A dunning campaign: one invoice's way from its first failed payment to
//! recovery or the policy's final action, as events in its own stream
//! (`dunning-{invoice}`): each step decided, each message queued and what
//! became of it (the outbox), phone tasks for a person, offers made, and how
//! it ended. Pure: billing decides the steps from the policy
//! ([`crate::dunning_policy`]) and the edge sends what is queued.

use std::collections::BTreeMap;

use recur_ledger::{LedgerError, Money, StreamId};
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use crate::aggregate::{Aggregate, DomainEvent};
use crate::customer::Segment;
use crate::decline::DeclineCategory;
use crate::dunning_policy::{Channel, DunningPolicies, FinalAction, NextStep};
use crate::error::DomainError;
use crate::ids::{CustomerId, InvoiceId, SubscriptionId};
use crate::tagged::domain_events;

/// The stream category of campaigns.
pub const CATEGORY: &str = "dunning";
/// The stream category of card-expiry reminders (one stream per customer).
pub const CARD_EXPIRY_CATEGORY: &str = "card_expiry";
/// Days before a card on file stops working that its holder is reminded.
pub const CARD_EXPIRY_REMINDER_DAYS: i64 = 7;
/// The stream of the dunning policies in force.
pub const POLICIES_STREAM: &str = "dunning_policies-all";
/// Sends of one message before it is given up.
pub const SEND_ATTEMPTS_MAX: u32 = 5;
/// The first wait after a failed send; doubled after each further failure.
pub const SEND_BACKOFF_FIRST_S: i64 = 60;
/// How long a claimed send is left to its sender before another may send it
/// again (under the same id): a sender that crashed mid-send.
pub const SEND_LEASE_S: i64 = 300;
/// Hours after its due time a message is still worth sending; later it is
/// canceled as stale.
pub const MESSAGE_STALE_AFTER_H: i64 = 72;
/// Characters of a phone task's note or claimant.
pub const TASK_TEXT_CHARS_MAX: usize = 500;

/// The campaign stream of an invoice.
///
/// # Errors
/// Never for a valid id.
pub fn stream(invoice: InvoiceId) -> Result<StreamId, LedgerError> {
    StreamId::parse(format!("{CATEGORY}-{}", invoice.0))
}

/// The card-expiry reminders stream of a customer.
///
/// # Errors
/// Never for a valid id.
pub fn card_expiry_stream(customer: CustomerId) -> Result<StreamId, LedgerError> {
    StreamId::parse(format!("{CARD_EXPIRY_CATEGORY}-{}", customer.0))
}

/// When a card expiring at the end of `exp_month`/`exp_year` is reminded of:
/// [`CARD_EXPIRY_REMINDER_DAYS`] before the first day of the next month (it
/// works through its expiry month), or never for a malformed expiry.
pub fn card_reminder_at(exp_month: u8, exp_year: u16) -> Option<OffsetDateTime> {
    if !(1..=12).contains(&exp_month) {
        return None;
    }
    let (year, month) = if exp_month == 12 {
        (i32::from(exp_year) + 1, 1)
    } else {
        (i32::from(exp_year), exp_month + 1)
    };
    let month = time::Month::try_from(month).ok()?;
    let first = time::Date::from_calendar_date(year, month, 1).ok()?;
    Some(first.midnight().assume_utc() - Duration::days(CARD_EXPIRY_REMINDER_DAYS))
}

/// The policies stream.
///
/// # Errors
/// Never.
pub fn policies_stream() -> Result<StreamId, LedgerError> {
    StreamId::parse(POLICIES_STREAM)
}

/// Which message a step sends: the brief's templates, by how far along it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Template {
    /// The first failure: gentle.
    PaymentFailedGentle,
    /// Later failures and reminders.
    PaymentFailedUrgent,
    /// The last step before the final action.
    PaymentFinalNotice,
    /// The bank asks the customer to confirm the payment.
    AuthenticationRequired,
    /// An offer was applied.
    Offer,
    /// The card on file expires soon.
    CardExpiring,
}

impl Template {
    /// Its name in the template directory.
    pub fn name(self) -> &'static str {
        match self {
            Self::PaymentFailedGentle => "payment_failed_gentle",
            Self::PaymentFailedUrgent => "payment_failed_urgent",
            Self::PaymentFinalNotice => "payment_final_notice",
            Self::AuthenticationRequired => "authentication_required",
            Self::Offer => "offer",
            Self::CardExpiring => "card_expiring",
        }
    }

    /// The template of step `step` of `steps_total` (failed attempts; the
    /// last is the final action's), for a decline of `category`.
    pub fn for_step(step: u32, steps_total: u32, category: DeclineCategory) -> Self {
        if category == DeclineCategory::Authentication {
            Self::AuthenticationRequired
        } else if step + 1 >= steps_total {
            // The last retry's step: what follows is the final action.
            Self::PaymentFinalNotice
        } else if step <= 1 {
            Self::PaymentFailedGentle
        } else {
            Self::PaymentFailedUrgent
        }
    }
}

/// A message to send: the outbox's entry, decided with the step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedMessage {
    /// Its id: the provider's idempotency key and the email's Message-ID.
    pub message_id: Uuid,
    /// The step that sent it.
    pub step: u32,
    /// Email or SMS.
    pub channel: Channel,
    /// Which message.
    pub template: Template,
    /// Not before.
    #[serde(with = "time::serde::rfc3339")]
    pub due_at: OffsetDateTime,
}

/// Where a queued message stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Delivery {
    /// Not sent yet; due at the message's time.
    Queued,
    /// A sender claimed it and is sending it (send `attempt`); another may
    /// send it again after `lease_until`.
    Sending {
        /// The send's number (1 for the first).
        attempt: u32,
        /// When the claim lapses.
        #[serde(with = "time::serde::rfc3339")]
        lease_until: OffsetDateTime,
    },
    /// The provider took it.
    Sent {
        /// The provider's id (SMTP Message-ID, SMS sid).
        provider_id: String,
    },
    /// Failed `attempts` times; sent again at `retry_at`.
    Retrying {
        /// Failed sends so far.
        attempts: u32,
        /// The next send.
        #[serde(with = "time::serde::rfc3339")]
        retry_at: OffsetDateTime,
    },
    /// Given up after failures, or refused for good by the provider.
    Failed {
        /// The last error's code.
        code: String,
    },
    /// Not sent: the campaign ended first, or there is no address.
    Canceled {
        /// Why.
        reason: String,
    },
}

/// One message of the campaign and what became of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// What was queued.
    pub queued: QueuedMessage,
    /// Where it stands.
    pub delivery: Delivery,
    /// When the customer first opened the message's update-card link, if
    /// they did (opens of the message itself are not tracked: no pixels).
    pub clicked_at: Option<OffsetDateTime>,
}

impl Message {
    /// When the outbox should send it, if it still should.
    pub fn send_at(&self) -> Option<OffsetDateTime> {
        match &self.delivery {
            Delivery::Queued => Some(self.queued.due_at),
            Delivery::Retrying { retry_at, .. } => Some(*retry_at),
            Delivery::Sending { lease_until, .. } => Some(*lease_until),
            _ => None,
        }
    }
}

/// How a phone call went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallOutcome {
    /// The customer will update the card or pay.
    WillPay,
    /// Reached; the customer declines to pay.
    Declined,
    /// Not reached.
    NoAnswer,
    /// The number is wrong.
    WrongNumber,
    /// Closed without a call: the campaign ended first (paid, voided, given up).
    NotNeeded,
}

/// A task for a person: call the customer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhoneTask {
    /// Its number within the campaign (1, 2, …).
    pub task_no: u32,
    /// The step that asked for it.
    pub step: u32,
    /// When it was created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Who took it.
    pub claimed_by: Option<String>,
    /// How it went.
    pub outcome: Option<CallOutcome>,
}

impl PhoneTask {
    /// Neither completed nor made moot.
    pub fn is_open(&self) -> bool {
        self.outcome.is_none()
    }
}

/// What an offer gave.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OfferGiven {
    /// A coupon on the subscription, from now on.
    Discount {
        /// The coupon applied.
        coupon: String,
    },
    /// Days of grace before the next retry (the trial policy's extension).
    TrialExtension {
        /// Days.
        days: u32,
    },
    /// Not applied, and why (the subscription used that coupon before, or ended).
    NotApplied {
        /// Why.
        reason: String,
    },
}

/// How a campaign ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Ending {
    /// The invoice was paid.
    Recovered {
        /// How much was collected.
        amount: Money,
        /// The step it was paid after (the number of failed attempts).
        after_step: u32,
    },
    /// The policy's final action was taken.
    Exhausted {
        /// Which.
        final_action: FinalAction,
    },
    /// The invoice was voided or written off by someone.
    Closed {
        /// Why.
        reason: String,
    },
}

/// One decided step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// The number of failed attempts it follows (1 for the first).
    pub step: u32,
    /// The decline it answers.
    pub decline_code: String,
    /// What the decline leaves open.
    pub category: DeclineCategory,
    /// What comes next.
    pub next: NextStep,
    /// When the failed attempt was due.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// What a campaign knows of its invoice when it starts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CampaignSubject {
    /// The invoice.
    pub invoice_id: InvoiceId,
    /// Its customer.
    pub customer_id: CustomerId,
    /// Its subscription, if any.
    pub subscription_id: Option<SubscriptionId>,
    /// The policy's segment.
    pub segment: Segment,
    /// What was owed when it started.
    pub amount_due: Money,
}

/// The campaign.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DunningCampaign {
    /// Whose, once started.
    pub subject: Option<CampaignSubject>,
    /// When it started (the first failed attempt's time).
    pub started_at: Option<OffsetDateTime>,
    /// Steps decided, in order.
    pub steps: Vec<Step>,
    /// Messages by id, with their delivery.
    pub messages: BTreeMap<Uuid, Message>,
    /// Phone tasks in order.
    pub tasks: Vec<PhoneTask>,
    /// Offers by step.
    pub offers: BTreeMap<u32, OfferGiven>,
    /// How it ended, and when.
    pub ending: Option<(Ending, OffsetDateTime)>,
}

impl DunningCampaign {
    /// The last step decided.
    pub fn last_step(&self) -> u32 {
        self.steps.last().map_or(0, |s| s.step)
    }

    /// When the outbox next has something to send, if ever.
    pub fn next_send_at(&self) -> Option<OffsetDateTime> {
        self.messages.values().filter_map(Message::send_at).min()
    }

    /// Messages due to send at `now`, oldest first.
    pub fn due_messages(&self, now: OffsetDateTime) -> Vec<&Message> {
        let mut due: Vec<&Message> = self
            .messages
            .values()
            .filter(|m| m.send_at().is_some_and(|at| at <= now))
            .collect();
        due.sort_by_key(|m| (m.send_at(), m.queued.message_id));
        due
    }

    /// The open phone task, if any.
    pub fn open_task(&self) -> Option<&PhoneTask> {
        self.tasks.iter().find(|t| t.is_open())
    }
}

/// One step decided by billing, to record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepDecision {
    /// The campaign's subject (used when this step starts it).
    pub subject: CampaignSubject,
    /// The step.
    pub step: Step,
    /// Messages to queue.
    pub messages: Vec<QueuedMessage>,
    /// Whether the policy asks a person to call.
    pub phone_call: bool,
}

/// What may be asked of a campaign.
#[derive(Clone, Debug)]
pub enum DunningCommand {
    /// Record a step (a no-op when that step is recorded already).
    DecideStep(Box<StepDecision>),
    /// Record an offer made at a step (once per step).
    RecordOffer {
        /// The step.
        step: u32,
        /// What it gave.
        given: OfferGiven,
        /// Now.
        now: OffsetDateTime,
    },
    /// Queue a reminder outside any step (a card about to expire): once per
    /// template and due time.
    QueueReminder {
        /// The messages, one per channel.
        messages: Vec<QueuedMessage>,
    },
    /// A sender claims a due message before sending it: decided on the
    /// campaign's version, so two senders never both send it.
    ClaimSend {
        /// Which.
        message_id: Uuid,
        /// Now.
        now: OffsetDateTime,
    },
    /// The provider took a message.
    RecordSent {
        /// Which.
        message_id: Uuid,
        /// The provider's id.
        provider_id: String,
        /// Now.
        now: OffsetDateTime,
    },
    /// A send failed.
    RecordSendFailed {
        /// Which.
        message_id: Uuid,
        /// The error's code.
        code: String,
        /// Whether trying again may work.
        retryable: bool,
        /// Now.
        now: OffsetDateTime,
    },
    /// A message will not be sent.
    CancelMessage {
        /// Which.
        message_id: Uuid,
        /// Why.
        reason: String,
        /// Now.
        now: OffsetDateTime,
    },
    /// The customer opened a message's update-card link (the first time
    /// counts; later visits change nothing).
    RecordClick {
        /// Which.
        message_id: Uuid,
        /// Now.
        now: OffsetDateTime,
    },
    /// A person takes a phone task.
    ClaimTask {
        /// Which.
        task_no: u32,
        /// Who (an operator's name or id).
        by: String,
        /// Now.
        now: OffsetDateTime,
    },
    /// A person reports a call.
    CompleteTask {
        /// Which.
        task_no: u32,
        /// How it went.
        outcome: CallOutcome,
        /// Now.
        now: OffsetDateTime,
    },
    /// The invoice was paid.
    Recover {
        /// How much.
        amount: Money,
        /// When.
        at: OffsetDateTime,
    },
    /// The final action was taken.
    Exhaust {
        /// Which.
        final_action: FinalAction,
        /// When.
        at: OffsetDateTime,
    },
    /// The invoice was settled otherwise (voided).
    Close {
        /// Why.
        reason: String,
        /// When.
        at: OffsetDateTime,
    },
}

domain_events! {
    /// What happened in a dunning campaign.
    #[allow(clippy::enum_variant_names)] // the event names of the catalogue
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(tag = "type")]
    pub enum DunningEvent {
        /// The first failed payment of an invoice started a campaign.
        DunningStarted {
            /// Whose.
            subject: CampaignSubject,
            /// When the failed attempt was due.
            #[serde(with = "time::serde::rfc3339")]
            at: OffsetDateTime,
        },
        /// What follows a failed attempt.
        DunningStepDecided {
            /// The step.
            step: Step,
        },
        /// A message was put in the outbox.
        DunningMessageQueued {
            /// The message.
            message: QueuedMessage,
        },
        /// A sender claimed a message and is sending it.
        DunningMessageSending {
            /// Which.
            message_id: Uuid,
            /// The send's number.
            attempt: u32,
            /// When the claim lapses.
            #[serde(with = "time::serde::rfc3339")]
            lease_until: OffsetDateTime,
        },
        /// The provider took a message.
        DunningMessageSent {
            /// Which.
            message_id: Uuid,
            /// The provider's id.
            provider_id: String,
            /// When.
            #[serde(with = "time::serde::rfc3339")]
            at: OffsetDateTime,
        },
        /// A send failed; `retry_at` when it will be tried again, none when given up.
        DunningMessageFailed {
            /// Which.
            message_id: Uuid,
            /// Failed sends so far.
            attempts: u32,
            /// The error's code.
            code: String,
            /// The next send, if any.
            #[serde(default, with = "time::serde::rfc3339::option")]
            retry_at: Option<OffsetDateTime>,
            /// When.
            #[serde(with = "time::serde::rfc3339")]
            at: OffsetDateTime,
        },
        /// A message will not be sent.
        DunningMessageCanceled {
            /// Which.
            message_id: Uuid,
            /// Why.
            reason: String,
            /// When.
            #[serde(with = "time::serde::rfc3339")]
            at: OffsetDateTime,
        },
        /// The customer opened the message's update-card link (first visit).
        DunningLinkClicked {
            /// Which.
            message_id: Uuid,
            /// When.
            #[serde(with = "time::serde::rfc3339")]
            at: OffsetDateTime,
        },
        /// A person is asked to call the customer.
        DunningTaskCreated {
            /// The task.
            task: PhoneTask,
        },
        /// Someone took the task.
        DunningTaskClaimed {
            /// Which.
            task_no: u32,
            /// Who.
            by: String,
            /// When.
            #[serde(with = "time::serde::rfc3339")]
            at: OffsetDateTime,
        },
        /// The call was made (or tried).
        DunningTaskCompleted {
            /// Which.
            task_no: u32,
            /// How it went.
            outcome: CallOutcome,
            /// When.
            #[serde(with = "time::serde::rfc3339")]
            at: OffsetDateTime,
        },
        /// An offer at a step.
        DunningOfferMade {
            /// The step.
            step: u32,
            /// What it gave.
            given: OfferGiven,
            /// When.
            #[serde(with = "time::serde::rfc3339")]
            at: OffsetDateTime,
        },
        /// The campaign ended.
        DunningEnded {
            /// How.
            ending: Ending,
            /// When.
            #[serde(with = "time::serde::rfc3339")]
            at: OffsetDateTime,
        },
    }
}

impl DomainEvent for DunningEvent {
    fn event_type(&self) -> &'static str {
        match self {
            Self::DunningStarted { .. } => "DunningStarted",
            Self::DunningStepDecided { .. } => "DunningStepDecided",
            Self::DunningMessageQueued { .. } => "DunningMessageQueued",
            Self::DunningMessageSending { .. } => "DunningMessageSending",
            Self::DunningMessageSent { .. } => "DunningMessageSent",
            Self::DunningMessageFailed { .. } => "DunningMessageFailed",
            Self::DunningMessageCanceled { .. } => "DunningMessageCanceled",
            Self::DunningLinkClicked { .. } => "DunningLinkClicked",
            Self::DunningTaskCreated { .. } => "DunningTaskCreated",
            Self::DunningTaskClaimed { .. } => "DunningTaskClaimed",
            Self::DunningTaskCompleted { .. } => "DunningTaskCompleted",
            Self::DunningOfferMade { .. } => "DunningOfferMade",
            Self::DunningEnded { .. } => "DunningEnded",
        }
    }
}

/// The wait before send number `attempts + 1`: one minute, doubled each time.
pub fn send_backoff(attempts: u32) -> Duration {
    Duration::seconds(SEND_BACKOFF_FIRST_S << attempts.saturating_sub(1).min(16))
}

impl DunningCampaign {
    /// Messages still to send, canceled as `reason` (the campaign ended, or a
    /// later step superseded them): those due after `after`.
    fn cancel_pending(
        &self,
        after: OffsetDateTime,
        reason: &str,
        at: OffsetDateTime,
    ) -> Vec<DunningEvent> {
        self.messages
            .values()
            .filter(|m| m.send_at().is_some() && m.queued.due_at > after)
            .map(|m| DunningEvent::DunningMessageCanceled {
                message_id: m.queued.message_id,
                reason: reason.to_owned(),
                at,
            })
            .collect()
    }

    /// Open phone tasks, closed as not needed: the campaign ended.
    fn close_tasks(&self, at: OffsetDateTime) -> Vec<DunningEvent> {
        self.tasks
            .iter()
            .filter(|t| t.is_open())
            .map(|t| DunningEvent::DunningTaskCompleted {
                task_no: t.task_no,
                outcome: CallOutcome::NotNeeded,
                at,
            })
            .collect()
    }

    /// Every message not sent yet, canceled as `reason`: the campaign ended,
    /// so nothing more goes out (a retrying one included).
    fn cancel_unsent(&self, reason: &str, at: OffsetDateTime) -> Vec<DunningEvent> {
        self.messages
            .values()
            .filter(|m| m.send_at().is_some())
            .map(|m| DunningEvent::DunningMessageCanceled {
                message_id: m.queued.message_id,
                reason: reason.to_owned(),
                at,
            })
            .collect()
    }

    fn message(&self, id: Uuid) -> Result<&Message, DomainError> {
        self.messages.get(&id).ok_or_else(|| DomainError::NotFound {
            kind: "dunning message",
            id: id.to_string(),
        })
    }

    fn task(&self, task_no: u32) -> Result<&PhoneTask, DomainError> {
        self.tasks
            .iter()
            .find(|t| t.task_no == task_no)
            .ok_or_else(|| DomainError::NotFound {
                kind: "dunning task",
                id: task_no.to_string(),
            })
    }
}

impl Aggregate for DunningCampaign {
    type Event = DunningEvent;
    type Command = DunningCommand;

    fn decide(&self, command: DunningCommand) -> Result<Vec<DunningEvent>, DomainError> {
        match command {
            DunningCommand::DecideStep(decision) => {
                let StepDecision {
                    subject,
                    step,
                    messages,
                    phone_call,
                } = *decision;
                // Steps are keyed by their number: a repeated decision is a no-op,
                // and a campaign that ended takes no more.
                if step.step <= self.last_step() || self.ending.is_some() {
                    return Ok(Vec::new());
                }
                let mut events = Vec::new();
                if self.subject.is_none() {
                    events.push(DunningEvent::DunningStarted {
                        subject,
                        at: step.at,
                    });
                }
                // Reminders of an earlier step that are still to come give way
                // to this step's own.
                events.extend(self.cancel_pending(step.at, "superseded", step.at));
                let at = step.at;
                let step_no = step.step;
                events.push(DunningEvent::DunningStepDecided { step });
                events.extend(
                    messages
                        .into_iter()
                        .map(|message| DunningEvent::DunningMessageQueued { message }),
                );
                if phone_call && self.open_task().is_none() {
                    events.push(DunningEvent::DunningTaskCreated {
                        task: PhoneTask {
                            task_no: u32::try_from(self.tasks.len()).unwrap_or(u32::MAX) + 1,
                            step: step_no,
                            created_at: at,
                            claimed_by: None,
                            outcome: None,
                        },
                    });
                }
                Ok(events)
            }
            DunningCommand::RecordOffer { step, given, now } => {
                if self.offers.contains_key(&step) || self.subject.is_none() {
                    return Ok(Vec::new());
                }
                Ok(vec![DunningEvent::DunningOfferMade {
                    step,
                    given,
                    at: now,
                }])
            }
            DunningCommand::QueueReminder { messages } => Ok(messages
                .into_iter()
                .filter(|m| {
                    !self.messages.values().any(|q| {
                        q.queued.template == m.template
                            && q.queued.channel == m.channel
                            && q.queued.due_at == m.due_at
                    })
                })
                .map(|message| DunningEvent::DunningMessageQueued { message })
                .collect()),
            DunningCommand::ClaimSend { message_id, now } => {
                let message = self.message(message_id)?;
                if self.ending.is_some() {
                    return Ok(Vec::new());
                }
                if message.send_at().is_none_or(|at| at > now) {
                    return Ok(Vec::new());
                }
                let attempt = match &message.delivery {
                    Delivery::Queued => 1,
                    Delivery::Retrying { attempts, .. } => attempts + 1,
                    // A lapsed claim: its sender may have sent it; this send
                    // carries the same id.
                    Delivery::Sending { attempt, .. } => *attempt,
                    _ => return Ok(Vec::new()),
                };
                Ok(vec![DunningEvent::DunningMessageSending {
                    message_id,
                    attempt,
                    lease_until: now + Duration::seconds(SEND_LEASE_S),
                }])
            }
            DunningCommand::RecordSent {
                message_id,
                provider_id,
                now,
            } => {
                let message = self.message(message_id)?;
                if message.send_at().is_none() {
                    return Ok(Vec::new());
                }
                Ok(vec![DunningEvent::DunningMessageSent {
                    message_id,
                    provider_id,
                    at: now,
                }])
            }
            DunningCommand::RecordSendFailed {
                message_id,
                code,
                retryable,
                now,
            } => {
                let message = self.message(message_id)?;
                let attempts = match &message.delivery {
                    Delivery::Queued => 1,
                    Delivery::Retrying { attempts, .. } => attempts + 1,
                    Delivery::Sending { attempt, .. } => *attempt,
                    _ => return Ok(Vec::new()),
                };
                let retry_at = (retryable && attempts < SEND_ATTEMPTS_MAX)
                    .then(|| now + send_backoff(attempts));
                Ok(vec![DunningEvent::DunningMessageFailed {
                    message_id,
                    attempts,
                    code,
                    retry_at,
                    at: now,
                }])
            }
            DunningCommand::CancelMessage {
                message_id,
                reason,
                now,
            } => {
                let message = self.message(message_id)?;
                if message.send_at().is_none() {
                    return Ok(Vec::new());
                }
                Ok(vec![DunningEvent::DunningMessageCanceled {
                    message_id,
                    reason,
                    at: now,
                }])
            }
            DunningCommand::RecordClick { message_id, now } => {
                let message = self.message(message_id)?;
                if message.clicked_at.is_some() {
                    return Ok(Vec::new());
                }
                Ok(vec![DunningEvent::DunningLinkClicked {
                    message_id,
                    at: now,
                }])
            }
            DunningCommand::ClaimTask { task_no, by, now } => {
                crate::text::check_text("by", &by, TASK_TEXT_CHARS_MAX, false)?;
                let task = self.task(task_no)?;
                if !task.is_open() {
                    return Err(DomainError::InvalidTransition {
                        kind: "dunning task",
                        action: "claim",
                        state: "completed".into(),
                    });
                }
                match &task.claimed_by {
                    Some(holder) if *holder == by => Ok(Vec::new()),
                    Some(_) => Err(DomainError::InvalidTransition {
                        kind: "dunning task",
                        action: "claim",
                        state: "claimed".into(),
                    }),
                    None => Ok(vec![DunningEvent::DunningTaskClaimed {
                        task_no,
                        by,
                        at: now,
                    }]),
                }
            }
            DunningCommand::CompleteTask {
                task_no,
                outcome,
                now,
            } => {
                let task = self.task(task_no)?;
                match task.outcome {
                    Some(done) if done == outcome => Ok(Vec::new()),
                    Some(_) => Err(DomainError::InvalidTransition {
                        kind: "dunning task",
                        action: "complete",
                        state: "completed".into(),
                    }),
                    None if task.claimed_by.is_none() => Err(DomainError::InvalidTransition {
                        kind: "dunning task",
                        action: "complete",
                        state: "unclaimed".into(),
                    }),
                    None => Ok(vec![DunningEvent::DunningTaskCompleted {
                        task_no,
                        outcome,
                        at: now,
                    }]),
                }
            }
            DunningCommand::Recover { amount, at } => {
                if self.subject.is_none() || self.ending.is_some() {
                    return Ok(Vec::new());
                }
                let mut events = self.cancel_unsent("recovered", at);
                events.extend(self.close_tasks(at));
                events.push(DunningEvent::DunningEnded {
                    ending: Ending::Recovered {
                        amount,
                        after_step: self.last_step(),
                    },
                    at,
                });
                Ok(events)
            }
            DunningCommand::Exhaust { final_action, at } => {
                if self.subject.is_none() || self.ending.is_some() {
                    return Ok(Vec::new());
                }
                let mut events = self.cancel_unsent("exhausted", at);
                // Left past due, a person decides: the call is still wanted.
                if final_action != FinalAction::LeavePastDue {
                    events.extend(self.close_tasks(at));
                }
                events.push(DunningEvent::DunningEnded {
                    ending: Ending::Exhausted { final_action },
                    at,
                });
                Ok(events)
            }
            DunningCommand::Close { reason, at } => {
                if self.subject.is_none() || self.ending.is_some() {
                    return Ok(Vec::new());
                }
                let mut events = self.cancel_unsent("closed", at);
                events.extend(self.close_tasks(at));
                events.push(DunningEvent::DunningEnded {
                    ending: Ending::Closed { reason },
                    at,
                });
                Ok(events)
            }
        }
    }

    fn evolve(&mut self, event: &DunningEvent) {
        match event {
            DunningEvent::DunningStarted { subject, at } => {
                self.subject = Some(subject.clone());
                self.started_at = Some(*at);
            }
            DunningEvent::DunningStepDecided { step } => self.steps.push(step.clone()),
            DunningEvent::DunningMessageQueued { message } => {
                self.messages.insert(
                    message.message_id,
                    Message {
                        queued: message.clone(),
                        delivery: Delivery::Queued,
                        clicked_at: None,
                    },
                );
            }
            DunningEvent::DunningMessageSending {
                message_id,
                attempt,
                lease_until,
            } => {
                if let Some(m) = self.messages.get_mut(message_id) {
                    m.delivery = Delivery::Sending {
                        attempt: *attempt,
                        lease_until: *lease_until,
                    };
                }
            }
            DunningEvent::DunningMessageSent {
                message_id,
                provider_id,
                ..
            } => {
                if let Some(m) = self.messages.get_mut(message_id) {
                    m.delivery = Delivery::Sent {
                        provider_id: provider_id.clone(),
                    };
                }
            }
            DunningEvent::DunningMessageFailed {
                message_id,
                attempts,
                code,
                retry_at,
                ..
            } => {
                if let Some(m) = self.messages.get_mut(message_id) {
                    m.delivery = match retry_at {
                        Some(retry_at) => Delivery::Retrying {
                            attempts: *attempts,
                            retry_at: *retry_at,
                        },
                        None => Delivery::Failed { code: code.clone() },
                    };
                }
            }
            DunningEvent::DunningMessageCanceled {
                message_id, reason, ..
            } => {
                if let Some(m) = self.messages.get_mut(message_id) {
                    m.delivery = Delivery::Canceled {
                        reason: reason.clone(),
                    };
                }
            }
            DunningEvent::DunningLinkClicked { message_id, at } => {
                if let Some(m) = self.messages.get_mut(message_id) {
                    m.clicked_at = Some(*at);
                }
            }
            DunningEvent::DunningTaskCreated { task } => self.tasks.push(task.clone()),
            DunningEvent::DunningTaskClaimed { task_no, by, .. } => {
                if let Some(t) = self.tasks.iter_mut().find(|t| t.task_no == *task_no) {
                    t.claimed_by = Some(by.clone());
                }
            }
            DunningEvent::DunningTaskCompleted {
                task_no, outcome, ..
            } => {
                if let Some(t) = self.tasks.iter_mut().find(|t| t.task_no == *task_no) {
                    t.outcome = Some(*outcome);
                }
            }
            DunningEvent::DunningOfferMade { step, given, .. } => {
                self.offers.insert(*step, given.clone());
            }
            DunningEvent::DunningEnded { ending, at } => {
                self.ending = Some((ending.clone(), *at));
            }
        }
    }
}

/// The dunning policies in force, as events: a change is a fact with its time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyBook {
    /// The policies in force, once set.
    pub policies: Option<DunningPolicies>,
    /// How many times they were set.
    pub version: u32,
}

/// Set the policies (a no-op when they are the ones in force).
#[derive(Clone, Debug)]
pub struct SetPolicies {
    /// The new policies.
    pub policies: DunningPolicies,
    /// Now.
    pub now: OffsetDateTime,
}

domain_events! {
    /// A change of the dunning policies.
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(tag = "type")]
    pub enum PolicyEvent {
        /// These policies are in force from `at`.
        DunningPoliciesSet {
            /// The policies.
            policies: DunningPolicies,
            /// The version (1 for the first).
            version: u32,
            /// When.
            #[serde(with = "time::serde::rfc3339")]
            at: OffsetDateTime,
        },
    }
}

impl DomainEvent for PolicyEvent {
    fn event_type(&self) -> &'static str {
        "DunningPoliciesSet"
    }
}

impl Aggregate for PolicyBook {
    type Event = PolicyEvent;
    type Command = SetPolicies;

    fn decide(&self, command: SetPolicies) -> Result<Vec<PolicyEvent>, DomainError> {
        if self.policies.as_ref() == Some(&command.policies) {
            return Ok(Vec::new());
        }
        Ok(vec![PolicyEvent::DunningPoliciesSet {
            policies: command.policies,
            version: self.version + 1,
            at: command.now,
        }])
    }

    fn evolve(&mut self, event: &PolicyEvent) {
        let PolicyEvent::DunningPoliciesSet {
            policies, version, ..
        } = event;
        self.policies = Some(policies.clone());
        self.version = *version;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::aggregate::execute;
    use recur_ledger::Currency;
    use rust_decimal::Decimal;
    use time::macros::datetime;

    fn subject() -> CampaignSubject {
        CampaignSubject {
            invoice_id: InvoiceId(Uuid::now_v7()),
            customer_id: CustomerId(Uuid::now_v7()),
            subscription_id: None,
            segment: Segment::HighValue,
            amount_due: Money::new(Decimal::new(500_000, 2), Currency::USD),
        }
    }

    fn decision(step: u32, at: OffsetDateTime, reminders: &[OffsetDateTime]) -> DunningCommand {
        let mut messages = vec![QueuedMessage {
            message_id: Uuid::now_v7(),
            step,
            channel: Channel::Email,
            template: Template::for_step(step, 3, DeclineCategory::Hard),
            due_at: at,
        }];
        messages.extend(reminders.iter().map(|due_at| QueuedMessage {
            message_id: Uuid::now_v7(),
            step,
            channel: Channel::Sms,
            template: Template::PaymentFailedUrgent,
            due_at: *due_at,
        }));
        DunningCommand::DecideStep(Box::new(StepDecision {
            subject: subject(),
            step: Step {
                step,
                decline_code: "lost_card".into(),
                category: DeclineCategory::Hard,
                next: NextStep::AwaitNewCard {
                    until: at + Duration::days(7),
                },
                at,
            },
            messages,
            phone_call: true,
        }))
    }

    #[test]
    fn a_step_is_recorded_once_and_a_later_step_supersedes_reminders() {
        let at = datetime!(2026-03-01 09:00 UTC);
        let mut campaign = DunningCampaign::default();
        let first = execute(&mut campaign, decision(1, at, &[at + Duration::days(3)])).unwrap();
        assert!(matches!(first[0], DunningEvent::DunningStarted { .. }));
        assert_eq!(campaign.messages.len(), 2);
        assert_eq!(campaign.tasks.len(), 1, "a phone task for the first step");
        // The same step again: nothing.
        assert!(
            execute(&mut campaign, decision(1, at, &[]))
                .unwrap()
                .is_empty()
        );
        // Step 2 a day later cancels the reminder due on day 3, and no second
        // task while the first is open.
        let later = at + Duration::days(1);
        let second = execute(&mut campaign, decision(2, later, &[])).unwrap();
        assert!(second.iter().any(|e| matches!(
            e,
            DunningEvent::DunningMessageCanceled { reason, .. } if reason == "superseded"
        )));
        assert_eq!(campaign.tasks.len(), 1);
        assert_eq!(campaign.due_messages(later).len(), 2, "the two emails");
    }

    #[test]
    fn a_failed_send_backs_off_then_gives_up() {
        let at = datetime!(2026-03-01 09:00 UTC);
        let mut campaign = DunningCampaign::default();
        execute(&mut campaign, decision(1, at, &[])).unwrap();
        let id = *campaign.messages.keys().next().unwrap();
        let mut now = at;
        for attempt in 1..=SEND_ATTEMPTS_MAX {
            let claimed = execute(
                &mut campaign,
                DunningCommand::ClaimSend {
                    message_id: id,
                    now,
                },
            )
            .unwrap();
            assert_eq!(claimed.len(), 1, "due, so claimed");
            // A second sender finds it claimed.
            assert!(
                execute(
                    &mut campaign,
                    DunningCommand::ClaimSend {
                        message_id: id,
                        now
                    }
                )
                .unwrap()
                .is_empty()
            );
            execute(
                &mut campaign,
                DunningCommand::RecordSendFailed {
                    message_id: id,
                    code: "smtp_unavailable".into(),
                    retryable: true,
                    now,
                },
            )
            .unwrap();
            match &campaign.messages[&id].delivery {
                Delivery::Retrying { attempts, retry_at } => {
                    assert_eq!(*attempts, attempt);
                    assert_eq!(*retry_at - now, send_backoff(attempt));
                    now = *retry_at;
                }
                Delivery::Failed { .. } => assert_eq!(attempt, SEND_ATTEMPTS_MAX),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(campaign.next_send_at(), None);
        assert_eq!(send_backoff(1), Duration::minutes(1));
        assert_eq!(send_backoff(3), Duration::minutes(4));
    }

    #[test]
    fn recovery_cancels_what_is_still_to_come_and_ends_the_campaign() {
        let at = datetime!(2026-03-01 09:00 UTC);
        let mut campaign = DunningCampaign::default();
        execute(&mut campaign, decision(1, at, &[at + Duration::days(3)])).unwrap();
        let paid = at + Duration::hours(5);
        let amount = Money::new(Decimal::new(500_000, 2), Currency::USD);
        let events = execute(&mut campaign, DunningCommand::Recover { amount, at: paid }).unwrap();
        // Both unsent messages (the step's own, due already, and the reminder)
        // are canceled, the phone task closed, then the end.
        assert_eq!(events.len(), 4, "{events:?}");
        assert!(campaign.open_task().is_none());
        let first = *campaign.messages.keys().next().unwrap();
        assert!(
            execute(
                &mut campaign,
                DunningCommand::ClaimSend {
                    message_id: first,
                    now: paid
                }
            )
            .unwrap()
            .is_empty(),
            "nothing is sent after the end"
        );
        assert!(matches!(
            campaign.ending,
            Some((Ending::Recovered { after_step: 1, .. }, _))
        ));
        // Nothing more after the end.
        assert!(
            execute(&mut campaign, decision(2, paid, &[]))
                .unwrap()
                .is_empty()
        );
        assert!(
            execute(&mut campaign, DunningCommand::Recover { amount, at: paid })
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_link_click_is_recorded_once_and_only_for_a_message_of_the_campaign() {
        let at = datetime!(2026-03-01 09:00 UTC);
        let mut campaign = DunningCampaign::default();
        execute(&mut campaign, decision(1, at, &[])).unwrap();
        let id = *campaign.messages.keys().next().unwrap();
        let click = |message_id, now| DunningCommand::RecordClick { message_id, now };
        let first = execute(&mut campaign, click(id, at + Duration::hours(2))).unwrap();
        assert!(matches!(
            first.as_slice(),
            [DunningEvent::DunningLinkClicked { message_id, .. }] if *message_id == id
        ));
        assert_eq!(
            campaign.messages[&id].clicked_at,
            Some(at + Duration::hours(2))
        );
        // A second visit: nothing, and the first time stands.
        assert!(
            execute(&mut campaign, click(id, at + Duration::hours(3)))
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            campaign.messages[&id].clicked_at,
            Some(at + Duration::hours(2))
        );
        // A message this campaign never queued.
        assert!(matches!(
            execute(&mut campaign, click(Uuid::now_v7(), at)),
            Err(DomainError::NotFound { .. })
        ));
    }

    #[test]
    fn a_task_is_claimed_by_one_person_then_completed() {
        let at = datetime!(2026-03-01 09:00 UTC);
        let mut campaign = DunningCampaign::default();
        execute(&mut campaign, decision(1, at, &[])).unwrap();
        let complete = |outcome| DunningCommand::CompleteTask {
            task_no: 1,
            outcome,
            now: at,
        };
        let claim = |by: &str| DunningCommand::ClaimTask {
            task_no: 1,
            by: by.into(),
            now: at,
        };
        assert!(execute(&mut campaign, complete(CallOutcome::WillPay)).is_err());
        assert_eq!(execute(&mut campaign, claim("ann")).unwrap().len(), 1);
        assert!(execute(&mut campaign, claim("ann")).unwrap().is_empty());
        assert!(execute(&mut campaign, claim("bob")).is_err());
        assert_eq!(
            execute(&mut campaign, complete(CallOutcome::WillPay))
                .unwrap()
                .len(),
            1
        );
        assert!(
            execute(&mut campaign, complete(CallOutcome::WillPay))
                .unwrap()
                .is_empty()
        );
        assert!(execute(&mut campaign, complete(CallOutcome::NoAnswer)).is_err());
        assert!(campaign.open_task().is_none());
    }

    #[test]
    fn every_event_round_trips_through_json() {
        let at = datetime!(2026-03-01 09:00 UTC);
        let mut campaign = DunningCampaign::default();
        let mut events =
            execute(&mut campaign, decision(1, at, &[at + Duration::days(3)])).unwrap();
        let amount = Money::new(Decimal::new(500_000, 2), Currency::USD);
        events.extend(execute(&mut campaign, DunningCommand::Recover { amount, at }).unwrap());
        for event in events {
            let json = serde_json::to_string(&event).unwrap();
            let back: DunningEvent = serde_json::from_str(&json).unwrap();
            assert_eq!(back, event, "{json}");
        }
        for next in [
            NextStep::RetryAt(at),
            NextStep::AwaitNewCard { until: at },
            NextStep::GiveUp(FinalAction::LeavePastDue),
        ] {
            let json = serde_json::to_string(&next).unwrap();
            assert_eq!(serde_json::from_str::<NextStep>(&json).unwrap(), next);
        }
    }

    #[test]
    fn a_card_is_reminded_of_a_week_before_its_expiry_month_ends() {
        assert_eq!(
            card_reminder_at(3, 2026),
            Some(datetime!(2026-03-25 00:00 UTC))
        );
        assert_eq!(
            card_reminder_at(12, 2026),
            Some(datetime!(2026-12-25 00:00 UTC))
        );
        assert_eq!(card_reminder_at(13, 2026), None);
        assert_eq!(card_reminder_at(0, 2026), None);
    }

    #[test]
    fn policies_are_set_once_per_change() {
        let now = datetime!(2026-03-01 09:00 UTC);
        let mut book = PolicyBook::default();
        let policies = DunningPolicies::default_policies().unwrap();
        let set = |policies: DunningPolicies| SetPolicies { policies, now };
        assert_eq!(execute(&mut book, set(policies.clone())).unwrap().len(), 1);
        assert!(
            execute(&mut book, set(policies.clone()))
                .unwrap()
                .is_empty()
        );
        assert_eq!(book.version, 1);
        let changed = DunningPolicies::parse(
            &crate::dunning_policy::DEFAULT_POLICIES_TOML.replace("[120, 1440, 4320]", "[120]"),
        )
        .unwrap();
        execute(&mut book, set(changed)).unwrap();
        assert_eq!(book.version, 2);
    }
}
