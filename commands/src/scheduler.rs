//! The billing clock's scheduler: a process manager that follows the ledger,
//! knows what is due (trial ends, renewals, payment retries, unfinished billing,
//! revenue recognition, dunning messages) and does it at the clock's now.
//!
//! It keeps no state of its own beyond what it folds from the ledger, so two
//! schedulers can run at once and a crashed one can be restarted: every step is
//! keyed (by subscription and period, by invoice and attempt) and a repeated
//! step is a no-op.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use recur_ledger::{Position, RecordedEvent, Source, StreamId};
use time::OffsetDateTime;
use tokio::sync::{Mutex, Semaphore};
use tokio::task::JoinSet;

use crate::aggregate::Aggregate;
use crate::billing::{Billing, decode_event};
use crate::customer::CustomerEvent;
use crate::dunning::{DunningCampaign, DunningEvent, Ending};
use crate::dunning_policy::FinalAction;
use crate::error::BillingError;
use crate::ids::{CustomerId, InvoiceId, SubscriptionId};
use crate::invoice::{Invoice, InvoiceEvent, InvoiceRequest, InvoiceStatus};
use crate::recovery::Messenger;
use crate::subscription::{Subscription, SubscriptionEvent, SubscriptionStatus};
use crate::tagged::DecodeError;

/// Events read per page while following the ledger.
const CATCH_UP_PAGE_EVENTS: usize = 5_000;
// A page shorter than asked for is taken as the end of the ledger.
const _: () = assert!(CATCH_UP_PAGE_EVENTS <= recur_ledger::limits::READ_PAGE_EVENTS_MAX);
/// Work items run at once.
pub const CONCURRENCY_DEFAULT: usize = 16;
/// Rounds of one tick: work that makes more work due by now, and the work of
/// one subscription, which runs one item per round in the order it fell due.
const ROUNDS_PER_TICK_MAX: u32 = 1_000;
/// How long a requested refund may wait for its gateway answer before the
/// scheduler sends it again (its caller normally records the answer at once).
pub const REFUND_RESUME_AFTER_S: i64 = 60;

/// Something the scheduler may have to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Work {
    /// Convert a trial or renew.
    Subscription(SubscriptionId),
    /// Draft an invoice a subscription asked for (after a crash in between).
    Draft(InvoiceId),
    /// Finalize, collect, retry, give up, or recognise revenue.
    Invoice(InvoiceId),
    /// Send refunds that were requested but never answered.
    Refund(InvoiceId),
    /// Send a dunning campaign's due messages (the outbox).
    Dunning(InvoiceId),
    /// Remind a customer that the card on file expires soon.
    CardReminder(CustomerId),
}

/// What one tick did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TickReport {
    /// Subscription periods started (trial conversions and renewals).
    pub periods_started: u32,
    /// Invoice steps run.
    pub invoice_steps: u32,
    /// Dunning messages sent.
    pub messages_sent: u32,
    /// Work that failed, with the error's code; it is retried next tick.
    pub failures: Vec<(Work, &'static str)>,
}

#[derive(Default)]
struct Index {
    position: Position,
    subscriptions: HashMap<StreamId, Subscription>,
    invoices: HashMap<StreamId, Invoice>,
    /// Invoices with a negative total whose credit the customer has not been granted yet.
    grants_pending: HashSet<InvoiceId>,
    /// Refunds requested and not answered yet, by invoice.
    refunds_pending: HashMap<InvoiceId, BTreeSet<u32>>,
    /// Invoices asked for and not drafted yet.
    requested: HashMap<InvoiceId, (CustomerId, SubscriptionId, InvoiceRequest)>,
    /// Dunning campaigns with messages still to send.
    campaigns: HashMap<InvoiceId, DunningCampaign>,
    /// Card-expiry reminders with messages still to send, by customer.
    reminders: HashMap<CustomerId, DunningCampaign>,
    /// Invoices whose campaign ended leaving them past due: no more collection.
    collection_stopped: HashSet<InvoiceId>,
    /// Each campaign's steps recorded and whether it ended: an open invoice
    /// with more declines than steps lost its step to a crash and is visited.
    campaign_steps: HashMap<InvoiceId, (u32, bool)>,
    /// Whether dunning messages are sent (a messenger is configured).
    sends_messages: bool,
    /// Retries read and not yet handed to the learned timing.
    retries_read: Vec<(InvoiceId, u32, crate::retry_timing::RetryOutcome)>,
    due: BTreeSet<(OffsetDateTime, Work)>,
    due_at: HashMap<Work, OffsetDateTime>,
}

impl Index {
    /// Whose work it is: a subscription's (its renewals and its invoices' work
    /// must run in the order they fell due), or a lone invoice's.
    fn owner(&self, work: Work) -> uuid::Uuid {
        match work {
            Work::Subscription(id) => id.0,
            Work::Draft(id) => self.requested.get(&id).map_or(id.0, |(_, sub, _)| sub.0),
            // A refund changes nothing of its subscription: it never waits for
            // (nor holds up) the subscription's billing; nor does a message.
            Work::Refund(id) | Work::Dunning(id) => id.0,
            Work::CardReminder(id) => id.0,
            Work::Invoice(id) => id
                .stream()
                .ok()
                .and_then(|stream| self.invoices.get(&stream))
                .and_then(|invoice| invoice.subscription_id)
                .map_or(id.0, |sub| sub.0),
        }
    }

    fn schedule(&mut self, work: Work, at: Option<OffsetDateTime>) {
        if let Some(old) = self.due_at.remove(&work) {
            self.due.remove(&(old, work));
        }
        if let Some(at) = at {
            self.due.insert((at, work));
            self.due_at.insert(work, at);
        }
    }

    fn apply(&mut self, recorded: &RecordedEvent) -> Result<(), BillingError> {
        let corrupt = |error: DecodeError| BillingError::Corrupt {
            stream: recorded.stream_id.to_string(),
            position: recorded.position.0,
            cause: error.into(),
        };
        match recorded.stream_id.category() {
            "subscription" => {
                let event: SubscriptionEvent = decode_event(&recorded.payload).map_err(corrupt)?;
                let state = self
                    .subscriptions
                    .entry(recorded.stream_id.clone())
                    .or_default();
                state.evolve(&event);
                let (Some(id), Some(customer)) = (state.id, state.customer_id) else {
                    return Ok(());
                };
                let at = state.next_due_at();
                let canceled = state.status == SubscriptionStatus::Canceled;
                if let Some(request) = event.invoice_request()
                    && !self.invoices.contains_key(&request.invoice_id.stream()?)
                {
                    let invoice_id = request.invoice_id;
                    self.requested
                        .insert(invoice_id, (customer, id, request.clone()));
                    self.schedule(Work::Draft(invoice_id), Some(OffsetDateTime::UNIX_EPOCH));
                }
                let settled = match &event {
                    SubscriptionEvent::SubscriptionInvoiceSettled { invoice_id, .. } => {
                        Some(*invoice_id)
                    }
                    _ => None,
                };
                if canceled {
                    self.subscriptions.remove(&recorded.stream_id);
                }
                self.schedule(Work::Subscription(id), at);
                if let Some(invoice_id) = settled {
                    self.reschedule_invoice(invoice_id)?;
                }
            }
            "invoice" => {
                let event: InvoiceEvent = decode_event(&recorded.payload).map_err(corrupt)?;
                self.follow_refunds(&recorded.stream_id, &event)?;
                let drafted = matches!(event, InvoiceEvent::InvoiceDrafted { .. });
                if !drafted && !self.invoices.contains_key(&recorded.stream_id) {
                    return Ok(());
                }
                let state = self.invoices.entry(recorded.stream_id.clone()).or_default();
                state.evolve(&event);
                if let InvoiceEvent::PaymentFailed { attempt_no, .. }
                | InvoiceEvent::PaymentSucceeded { attempt_no, .. } = &event
                    && *attempt_no > 1
                    && let Some(id) = state.id
                    && let Ok(outcomes) = crate::retry_timing::outcomes_of(state)
                {
                    let attempt_no = *attempt_no;
                    self.retries_read.extend(
                        outcomes
                            .last()
                            .cloned()
                            .map(|outcome| (id, attempt_no, outcome)),
                    );
                }
                let Some(id) = state.id else { return Ok(()) };
                if let InvoiceEvent::InvoiceFinalized { totals, .. } = &event
                    && totals.total.is_negative()
                {
                    self.grants_pending.insert(id);
                }
                if drafted {
                    self.requested.remove(&id);
                    self.schedule(Work::Draft(id), None);
                }
                self.reschedule_invoice(id)?;
            }
            "customer" => {
                let event: CustomerEvent = decode_event(&recorded.payload).map_err(corrupt)?;
                if let CustomerEvent::CreditGranted { invoice_id, .. } = event
                    && self.grants_pending.remove(&invoice_id)
                {
                    self.reschedule_invoice(invoice_id)?;
                }
                if self.sends_messages
                    && let CustomerEvent::PaymentMethodAttached { method } = &event
                    && let Some(at) =
                        crate::dunning::card_reminder_at(method.exp_month, method.exp_year)
                    && let Some(customer) = recorded
                        .stream_id
                        .as_str()
                        .strip_prefix("customer-")
                        .and_then(|text| CustomerId::parse(text).ok())
                {
                    self.schedule(Work::CardReminder(customer), Some(at));
                }
                if let CustomerEvent::PaymentMethodAttached { .. } = event {
                    // A new card: the customer's declined invoices are tried at
                    // once (billing decides whether the card changed).
                    let customer = recorded
                        .stream_id
                        .as_str()
                        .strip_prefix("customer-")
                        .and_then(|text| CustomerId::parse(text).ok());
                    let declined: Vec<InvoiceId> = self
                        .invoices
                        .values()
                        .filter(|i| {
                            i.customer_id.is_some()
                                && i.customer_id == customer
                                && i.status == InvoiceStatus::Open
                                && i.attempts.last().is_some_and(|a| a.outcome.is_some())
                        })
                        .filter_map(|i| i.id)
                        .filter(|id| !self.collection_stopped.contains(id))
                        .collect();
                    for id in declined {
                        self.schedule(Work::Invoice(id), Some(OffsetDateTime::UNIX_EPOCH));
                    }
                }
            }
            crate::dunning::CARD_EXPIRY_CATEGORY if self.sends_messages => {
                let event: DunningEvent = decode_event(&recorded.payload).map_err(corrupt)?;
                let Some(customer) = recorded
                    .stream_id
                    .as_str()
                    .strip_prefix("card_expiry-")
                    .and_then(|text| CustomerId::parse(text).ok())
                else {
                    return Ok(());
                };
                let outbox = self.reminders.entry(customer).or_default();
                outbox.evolve(&event);
                match outbox.next_send_at() {
                    Some(at) => self.schedule(Work::CardReminder(customer), Some(at)),
                    None => {
                        self.reminders.remove(&customer);
                    }
                }
            }
            crate::dunning::CATEGORY => {
                let event: DunningEvent = decode_event(&recorded.payload).map_err(corrupt)?;
                let id = match &event {
                    DunningEvent::DunningStarted { subject, .. } => subject.invoice_id,
                    _ => match recorded
                        .stream_id
                        .as_str()
                        .strip_prefix("dunning-")
                        .and_then(|text| InvoiceId::parse(text).ok())
                    {
                        Some(id) => id,
                        None => return Ok(()),
                    },
                };
                let progress = self.campaign_steps.entry(id).or_default();
                match &event {
                    DunningEvent::DunningStepDecided { step } => progress.0 = step.step,
                    DunningEvent::DunningEnded { .. } => progress.1 = true,
                    _ => {}
                }
                if matches!(
                    event,
                    DunningEvent::DunningStepDecided { .. } | DunningEvent::DunningEnded { .. }
                ) {
                    self.reschedule_invoice(id)?;
                }
                if let DunningEvent::DunningEnded {
                    ending:
                        Ending::Exhausted {
                            final_action: FinalAction::LeavePastDue,
                        },
                    ..
                } = &event
                {
                    self.collection_stopped.insert(id);
                    self.reschedule_invoice(id)?;
                }
                if !self.sends_messages {
                    return Ok(());
                }
                let campaign = self.campaigns.entry(id).or_default();
                campaign.evolve(&event);
                let at = campaign.next_send_at();
                if at.is_none() {
                    self.campaigns.remove(&id);
                }
                self.schedule(Work::Dunning(id), at);
            }
            _ => {}
        }
        Ok(())
    }

    /// Keeps the refunds requested and not answered, whether or not the invoice
    /// itself still needs the scheduler (a paid invoice is dropped from memory).
    fn follow_refunds(
        &mut self,
        stream: &StreamId,
        event: &InvoiceEvent,
    ) -> Result<(), BillingError> {
        let (refund_no, requested_at) = match event {
            InvoiceEvent::RefundRequested { refund_no, at, .. } => (*refund_no, Some(*at)),
            InvoiceEvent::InvoiceRefunded { refund_no, .. } => (*refund_no, None),
            _ => return Ok(()),
        };
        let Some(id) = stream
            .as_str()
            .strip_prefix("invoice-")
            .and_then(|text| InvoiceId::parse(text).ok())
        else {
            return Ok(());
        };
        let pending = self.refunds_pending.entry(id).or_default();
        match requested_at {
            Some(at) => {
                pending.insert(refund_no);
                let resume = at + time::Duration::seconds(REFUND_RESUME_AFTER_S);
                let due = self.due_at.get(&Work::Refund(id)).copied();
                self.schedule(
                    Work::Refund(id),
                    Some(due.map_or(resume, |d| d.min(resume))),
                );
            }
            None => {
                pending.remove(&refund_no);
                if pending.is_empty() {
                    self.refunds_pending.remove(&id);
                    self.schedule(Work::Refund(id), None);
                }
            }
        }
        Ok(())
    }

    fn reschedule_invoice(&mut self, id: InvoiceId) -> Result<(), BillingError> {
        let stream = id.stream()?;
        let Some(invoice) = self.invoices.get(&stream) else {
            return Ok(());
        };
        let unsettled = invoice.subscription_id.is_some_and(|sub| {
            sub.stream()
                .ok()
                .and_then(|s| self.subscriptions.get(&s))
                .is_some_and(|s| s.unsettled.contains(&id))
        });
        let at = if self.grants_pending.contains(&id) {
            Some(OffsetDateTime::UNIX_EPOCH)
        } else {
            let (steps, ended) = self.campaign_steps.get(&id).copied().unwrap_or_default();
            // A step lost to a crash, or a final action cut short after the
            // write-off (only the final action writes an invoice off).
            let step_missing = !ended
                && ((crate::recovery::failed_attempts(invoice) > steps as usize
                    && invoice.status == InvoiceStatus::Open)
                    || (steps > 0 && invoice.status == InvoiceStatus::Uncollectible));
            if step_missing && !self.collection_stopped.contains(&id) {
                Some(OffsetDateTime::UNIX_EPOCH)
            } else {
                invoice_work_at(invoice, unsettled, self.collection_stopped.contains(&id))
            }
        };
        if at.is_none() {
            self.invoices.remove(&stream);
            self.campaign_steps.remove(&id);
        }
        self.schedule(Work::Invoice(id), at);
        Ok(())
    }
}

/// When an invoice next needs the scheduler, if ever.
fn invoice_work_at(
    invoice: &Invoice,
    subscription_unsettled: bool,
    collection_stopped: bool,
) -> Option<OffsetDateTime> {
    let immediately = Some(OffsetDateTime::UNIX_EPOCH);
    let collection = match invoice.status {
        InvoiceStatus::Draft => immediately,
        InvoiceStatus::Open if collection_stopped => None,
        InvoiceStatus::Open => match invoice.attempts.last() {
            None => immediately,
            Some(last) if last.outcome.is_none() => immediately,
            Some(last) => last.next_retry_at.or(immediately),
        },
        InvoiceStatus::Paid if subscription_unsettled => immediately,
        _ => None,
    };
    [collection, invoice.next_recognition_at()]
        .into_iter()
        .flatten()
        .min()
}

/// Follows the ledger and runs due billing work.
pub struct Scheduler {
    billing: Arc<Billing>,
    index: Mutex<Index>,
    concurrency: usize,
    messenger: Option<Arc<dyn Messenger>>,
}

impl Scheduler {
    /// A scheduler over `billing`, running up to `concurrency` items at once.
    pub fn new(billing: Arc<Billing>, concurrency: usize) -> Self {
        Self {
            billing,
            index: Mutex::new(Index::default()),
            concurrency: concurrency.max(1),
            messenger: None,
        }
    }

    /// The scheduler sending dunning messages through `messenger` (the outbox).
    /// Without one, messages stay queued in the ledger, unsent and not lost.
    #[must_use]
    pub fn with_messenger(mut self, messenger: Arc<dyn Messenger>) -> Self {
        self.index.get_mut().sends_messages = true;
        self.messenger = Some(messenger);
        self
    }

    /// Reads what was appended since the last call and updates what is due.
    ///
    /// # Errors
    /// Ledger errors, undecodable events.
    pub async fn catch_up(&self) -> Result<(), BillingError> {
        let mut index = self.index.lock().await;
        loop {
            let page = self
                .billing
                .ledger()
                .read_all(index.position, CATCH_UP_PAGE_EVENTS)
                .await?;
            let Some(last) = page.last().map(|e| e.position) else {
                break;
            };
            for recorded in &page {
                index.apply(recorded)?;
            }
            index.position = last;
            if page.len() < CATCH_UP_PAGE_EVENTS {
                break;
            }
        }
        let retries = std::mem::take(&mut index.retries_read);
        self.billing.observe_retries(&retries);
        Ok(())
    }

    /// The earliest instant at which something is due, if anything is.
    pub async fn next_due_at(&self) -> Option<OffsetDateTime> {
        self.index.lock().await.due.first().map(|(at, _)| *at)
    }

    /// How many items are due at the clock's now: what the next tick has to do.
    pub async fn due_now(&self) -> usize {
        let now = self.billing.ledger().clock().now();
        let index = self.index.lock().await;
        index.due.iter().take_while(|(at, _)| *at <= now).count()
    }

    /// Runs everything due at the clock's now. Work that fails (e.g. the gateway
    /// is down) is reported and stays due for the next tick.
    ///
    /// # Errors
    /// Ledger errors while following the ledger.
    pub async fn tick(&self) -> Result<TickReport, BillingError> {
        let now = self.billing.ledger().clock().now();
        let mut report = TickReport::default();
        // What ran in this tick, with the instant it was due then: an item due
        // again at the same instant failed and waits for the next tick; one due
        // at a later instant (the next period) runs again.
        let mut done: HashSet<(OffsetDateTime, Work)> = HashSet::new();
        let mut ran: Vec<Work> = Vec::new();
        for _ in 0..ROUNDS_PER_TICK_MAX {
            self.catch_up().await?;
            // Each owner's earliest due item, so that the work of one
            // subscription runs in the order it fell due (a late scheduler gives
            // up on an invoice before it renews the period after it, as one that
            // never stopped would); an owner whose earliest item already ran in
            // this tick and is still due (it failed) waits for the next tick.
            let due: Vec<(OffsetDateTime, Work)> = {
                let index = self.index.lock().await;
                let mut owners = HashSet::new();
                index
                    .due
                    .iter()
                    .take_while(|(at, _)| *at <= now)
                    .filter(|item| owners.insert(index.owner(item.1)) && !done.contains(*item))
                    .copied()
                    .collect()
            };
            if due.is_empty() {
                break;
            }
            // At most `concurrency` items in flight: a task is made only when a
            // permit is free, so a tick of 100,000 renewals holds 16 futures,
            // not 100,000 waiting ones.
            let permits = Arc::new(Semaphore::new(self.concurrency));
            let mut tasks = JoinSet::new();
            for (at, work) in due {
                done.insert((at, work));
                let request = match work {
                    Work::Draft(id) => self.index.lock().await.requested.get(&id).cloned(),
                    _ => None,
                };
                let permit = Arc::clone(&permits)
                    .acquire_owned()
                    .await
                    .map_err(|_| BillingError::Contended("the scheduler's permits".into()))?;
                let billing = Arc::clone(&self.billing);
                let messenger = self.messenger.clone();
                tasks.spawn(async move {
                    let _permit = permit;
                    (
                        work,
                        run(&billing, work, request, messenger.as_deref()).await,
                    )
                });
                while let Some(joined) = tasks.try_join_next() {
                    ran.extend(Self::report(&mut report, joined));
                }
            }
            while let Some(joined) = tasks.join_next().await {
                ran.extend(Self::report(&mut report, joined));
            }
            // An invoice made due at once (a new card) whose visit changed
            // nothing (its decline was soft: the schedule stands) goes back to
            // its own time, once what the round wrote is read.
            self.catch_up().await?;
            let mut index = self.index.lock().await;
            for work in ran.drain(..) {
                match work {
                    Work::Invoice(id) => index.reschedule_invoice(id)?,
                    // Done until its outbox has something to send again.
                    Work::CardReminder(id) => {
                        let next = index
                            .reminders
                            .get(&id)
                            .and_then(DunningCampaign::next_send_at);
                        index.schedule(work, next);
                    }
                    _ => {}
                }
            }
        }
        Ok(report)
    }

    /// Adds one finished item to the tick's report; answers it when it succeeded.
    fn report(
        report: &mut TickReport,
        joined: Result<(Work, Result<u32, BillingError>), tokio::task::JoinError>,
    ) -> Option<Work> {
        let Ok((work, result)) = joined else {
            return None;
        };
        let succeeded = result.is_ok().then_some(work);
        match (work, result) {
            (Work::Subscription(_), Ok(started)) => report.periods_started += started,
            (Work::Invoice(_) | Work::Draft(_) | Work::Refund(_), Ok(_)) => {
                report.invoice_steps += 1;
            }
            (Work::Dunning(_) | Work::CardReminder(_), Ok(sent)) => report.messages_sent += sent,
            (work, Err(error)) => {
                tracing::warn!(
                    ?work,
                    code = error.code(),
                    "billing work failed; retried next tick"
                );
                report.failures.push((work, error.code()));
            }
        }
        succeeded
    }
}

async fn run(
    billing: &Billing,
    work: Work,
    request: Option<(CustomerId, SubscriptionId, InvoiceRequest)>,
    messenger: Option<&dyn Messenger>,
) -> Result<u32, BillingError> {
    match work {
        Work::Dunning(id) => match messenger {
            Some(messenger) => billing.send_dunning_messages(id, messenger).await,
            None => Ok(0),
        },
        Work::CardReminder(id) => match messenger {
            Some(messenger) => billing.remind_card_expiry(id, messenger).await,
            None => Ok(0),
        },
        // One period at a time: what falls due in between runs first.
        Work::Subscription(id) => billing.advance_by(id, 1).await,
        Work::Draft(_) => {
            if let Some((customer, subscription, request)) = request {
                billing
                    .resume_billing(customer, subscription, &request)
                    .await?;
            }
            Ok(1)
        }
        Work::Refund(id) => {
            billing.resume_refunds(id).await?;
            Ok(1)
        }
        Work::Invoice(id) => {
            billing.collect(id, Source::Scheduler).await?;
            billing.recognize_revenue(id).await?;
            Ok(1)
        }
    }
}
