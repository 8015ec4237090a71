//! The Stripe translator: a process manager fed by the ledger that turns the
//! Stripe events the webhook kept ([`crate::webhook`]) into billing commands.
//!
//! For each `StripeEventReceived` after its checkpoint, in ledger order, it
//! decrypts the event, reads what it says ([`StripeFact`], pure), finds the
//! Recur invoice or customer it is about ([`Index::resolve`], pure: Recur's
//! metadata on the Stripe object, else the Stripe ids it learnt from the
//! ledger), and applies it through the billing service ([`crate::provider`]),
//! whose aggregates decide. An event about nothing Recur knows, of a type it
//! does not act on, or that Recur cannot take, is acknowledged: handled, with
//! no effect, and a reason.
//!
//! **Idempotent by the Stripe event.** The commands of one Stripe event run
//! as one replayable request named by its `evt_…` id ([`crate::context`]):
//! each append carries a ledger idempotency key derived from the event id,
//! the stream and the command, so translating the event again — a crash
//! before the checkpoint moved, a second server, `recur stripe translate
//! --from-start` — finds what the first translation appended and adds
//! nothing, whatever happened since (a contact changed through the API after
//! a `customer.updated` is not overwritten by a re-run). Times come from the
//! Stripe event (`created`), not from the clock of the run.
//!
//! **Checkpoint.** How far it got is kept in the database
//! ([`recur_ledger::Ledger::checkpoint`], name [`CHECKPOINT`]) and moved by
//! compare-and-set after each page's work is committed: at least once, with
//! the effect of exactly once.

use std::collections::HashMap;
use std::sync::Arc;

use recur_ledger::{Currency, Money, Position, RecordedEvent};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::billing::Billing;
use crate::context::{Replayable, RequestContext, replayable, within};
use crate::error::BillingError;
use crate::ids::{CustomerId, InvoiceId};
use crate::invoice::DisputeOutcome;
use crate::provider::{Effect, ReportedDispute, ReportedRefund};
use crate::stripe_facts::{DisputeStep, PaymentRef, StripeEvent, StripeFact};
use crate::webhook::WebhookEvent;

/// The translator's checkpoint's name.
pub const CHECKPOINT: &str = "stripe_translator";
/// The version of the translation stored with the checkpoint: a new version
/// translates every stored Stripe event again (adding only what is missing).
pub const VERSION: u32 = 1;
/// Ledger events read per page.
const PAGE_EVENTS: usize = 1_000;
const _: () = assert!(PAGE_EVENTS <= recur_ledger::limits::READ_PAGE_EVENTS_MAX);
/// Stripe ids remembered per map; beyond it the map starts over (what it
/// forgets, a later event's metadata or the ledger tells again).
pub const INDEX_IDS_MAX: usize = 1_000_000;
/// The actor of what the translator appends (the webhook's own events are
/// `stripe`'s).
pub const ACTOR: &str = "stripe_translator";

/// The Stripe ids Recur knows, learnt from the ledger (the charge ids of
/// recorded payments, the Stripe customers of recorded cards) and from the
/// Stripe events translated (their metadata): what resolves a Stripe object
/// that carries no metadata (a dispute names only its charge).
#[derive(Debug, Default)]
pub struct Index {
    /// The last ledger position learnt from.
    position: Position,
    /// `ch_…` / `pi_…` → the invoice they paid.
    payments: HashMap<String, InvoiceId>,
    /// `cus_…` → the Recur customer.
    customers: HashMap<String, CustomerId>,
}

/// What a Stripe event asks of Recur, with Recur's ids found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Intent {
    /// An attempt was declined.
    PaymentFailed {
        /// The invoice.
        invoice: InvoiceId,
        /// The attempt, when the metadata names it.
        attempt_no: Option<u32>,
        /// The decline code.
        decline_code: String,
        /// Stripe's message.
        message: String,
    },
    /// A payment went through.
    PaymentSucceeded {
        /// The invoice.
        invoice: InvoiceId,
        /// The attempt, when the metadata names it.
        attempt_no: Option<u32>,
        /// The charge recorded.
        charge_id: String,
        /// Collected.
        amount: Money,
    },
    /// Refunds of the charge that succeeded.
    Refunded {
        /// The invoice.
        invoice: InvoiceId,
        /// The succeeded refunds reported (a charge's list, or one refund
        /// object); `None` when a charge did not list its refunds.
        refunds: Option<Vec<ReportedRefund>>,
    },
    /// A refund failed or was canceled: nothing is booked (see
    /// [`Billing::provider_refund_failed`]).
    RefundFailed {
        /// The invoice.
        invoice: InvoiceId,
        /// `re_…`.
        refund_id: String,
    },
    /// A dispute's stage.
    Dispute {
        /// The invoice.
        invoice: InvoiceId,
        /// The dispute.
        dispute: ReportedDispute,
    },
    /// Contact details changed.
    Contact {
        /// The customer.
        customer: CustomerId,
        /// What changed.
        patch: crate::stripe_facts::ContactPatch,
    },
    /// The card on file was updated by the network.
    CardUpdated {
        /// The customer.
        customer: CustomerId,
        /// The card.
        card: crate::stripe_facts::StripeCard,
    },
    /// A saved card expires soon.
    CardExpiring {
        /// The customer.
        customer: CustomerId,
        /// The card.
        card: crate::stripe_facts::StripeCard,
    },
    /// Nothing: a stable reason code.
    Nothing(&'static str),
}

/// A Stripe amount in Stripe's lowercase currency as Recur money (Stripe counts
/// ISK and UGX in hundredths: [`crate::stripe_amounts`]).
fn money(stripe_amount: i64, currency: &str) -> Option<Money> {
    let iso_minor = crate::stripe_amounts::iso_minor_from_stripe(stripe_amount, currency)?;
    Currency::parse(&currency.to_ascii_uppercase())
        .ok()
        .map(|c| Money::from_minor(iso_minor, c))
}

fn bounded_insert<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>, key: K, value: V) {
    if map.len() >= INDEX_IDS_MAX {
        map.clear();
    }
    map.insert(key, value);
}

impl Index {
    /// The last ledger position learnt from.
    pub fn position(&self) -> Position {
        self.position
    }

    /// Learns from one ledger event: a recorded payment's charge id, a
    /// recorded card's Stripe customer.
    pub fn learn_from_ledger(&mut self, recorded: &RecordedEvent) {
        self.position = self.position.max(recorded.position);
        let id_of = |prefix: &str| {
            recorded
                .stream_id
                .as_str()
                .strip_prefix(prefix)
                .and_then(|id| uuid::Uuid::parse_str(id).ok())
        };
        match recorded.event_type.as_str() {
            "PaymentSucceeded" => {
                let Some(invoice) = id_of("invoice-").map(InvoiceId) else {
                    return;
                };
                if let Some(charge) = payload_text(&recorded.payload, &["charge_id"]) {
                    bounded_insert(&mut self.payments, charge, invoice);
                }
            }
            "PaymentMethodAttached" => {
                let Some(customer) = id_of("customer-").map(CustomerId) else {
                    return;
                };
                // The Stripe customer of a card Recur put on file
                // (`method.provider_customer`, written by the Stripe gateway).
                if let Some(stripe) =
                    payload_text(&recorded.payload, &["method", "provider_customer"])
                {
                    bounded_insert(&mut self.customers, stripe, customer);
                }
            }
            _ => {}
        }
    }

    /// Learns from a fact's metadata: its Stripe payment and customer ids
    /// belong to the Recur invoice and customer it names.
    pub fn learn_from_fact(&mut self, fact: &StripeFact) {
        let mut learn = |payment: &PaymentRef| {
            if let Some(invoice) = payment
                .recur_invoice
                .as_deref()
                .and_then(|id| InvoiceId::parse(id).ok())
            {
                for id in [&payment.payment_intent, &payment.charge]
                    .into_iter()
                    .flatten()
                {
                    bounded_insert(&mut self.payments, id.clone(), invoice);
                }
            }
            if let (Some(stripe), Some(customer)) = (
                &payment.stripe_customer,
                payment
                    .recur_customer
                    .as_deref()
                    .and_then(|id| CustomerId::parse(id).ok()),
            ) {
                bounded_insert(&mut self.customers, stripe.clone(), customer);
            }
        };
        match fact {
            StripeFact::PaymentFailed { payment, .. }
            | StripeFact::PaymentSucceeded { payment, .. }
            | StripeFact::ChargeRefunded { payment, .. }
            | StripeFact::Refund { payment, .. } => learn(payment),
            StripeFact::Dispute { dispute, .. } => learn(&dispute.payment),
            StripeFact::CustomerUpdated {
                stripe_customer,
                recur_customer,
                ..
            } => {
                if let Some(customer) = recur_customer
                    .as_deref()
                    .and_then(|id| CustomerId::parse(id).ok())
                {
                    bounded_insert(&mut self.customers, stripe_customer.clone(), customer);
                }
            }
            StripeFact::CardUpdated { .. }
            | StripeFact::CardExpiring { .. }
            | StripeFact::Unhandled { .. } => {}
        }
    }

    fn invoice_of(&self, payment: &PaymentRef) -> Option<InvoiceId> {
        if let Some(id) = &payment.recur_invoice {
            return InvoiceId::parse(id).ok();
        }
        [&payment.charge, &payment.payment_intent]
            .into_iter()
            .flatten()
            .find_map(|id| self.payments.get(id).copied())
    }

    fn customer_of(&self, recur: Option<&str>, stripe: Option<&str>) -> Option<CustomerId> {
        match recur {
            Some(id) => CustomerId::parse(id).ok(),
            None => stripe.and_then(|id| self.customers.get(id).copied()),
        }
    }

    /// What `fact` asks of Recur. Pure.
    pub fn resolve(&self, fact: &StripeFact) -> Intent {
        match fact {
            StripeFact::Unhandled { reason } => Intent::Nothing(reason),
            StripeFact::PaymentFailed {
                payment,
                decline_code,
                message,
            } => match self.invoice_of(payment) {
                Some(invoice) => Intent::PaymentFailed {
                    invoice,
                    attempt_no: payment.recur_attempt,
                    decline_code: decline_code.clone(),
                    message: message.clone(),
                },
                None => Intent::Nothing("unknown_invoice"),
            },
            StripeFact::PaymentSucceeded {
                payment,
                amount_minor,
                currency,
            } => {
                let Some(invoice) = self.invoice_of(payment) else {
                    return Intent::Nothing("unknown_invoice");
                };
                let Some(amount) = money(*amount_minor, currency) else {
                    return Intent::Nothing("unknown_currency");
                };
                let Some(charge_id) = payment.charge.clone().or(payment.payment_intent.clone())
                else {
                    return Intent::Nothing("no_charge");
                };
                Intent::PaymentSucceeded {
                    invoice,
                    attempt_no: payment.recur_attempt,
                    charge_id,
                    amount,
                }
            }
            StripeFact::ChargeRefunded {
                payment,
                currency,
                refunds,
                ..
            } => {
                let Some(invoice) = self.invoice_of(payment) else {
                    return Intent::Nothing("unknown_invoice");
                };
                if money(0, currency).is_none() {
                    return Intent::Nothing("unknown_currency");
                }
                let refunds = refunds.as_ref().map(|listed| {
                    listed
                        .iter()
                        .filter(|refund| refund.is_succeeded())
                        .filter_map(reported_refund)
                        .collect()
                });
                Intent::Refunded { invoice, refunds }
            }
            StripeFact::Refund { payment, refund } => {
                // Recur's own refund names its invoice in its key.
                let Some(invoice) = self.invoice_of(payment).or_else(|| {
                    refund
                        .recur_refund
                        .as_deref()
                        .and_then(|key| key.rsplit_once("-refund-"))
                        .and_then(|(id, _)| InvoiceId::parse(id).ok())
                }) else {
                    return Intent::Nothing("unknown_invoice");
                };
                match refund.status.as_deref() {
                    None | Some("succeeded") => match reported_refund(refund) {
                        Some(reported) => Intent::Refunded {
                            invoice,
                            refunds: Some(vec![reported]),
                        },
                        None => Intent::Nothing("unknown_currency"),
                    },
                    Some("failed" | "canceled") => Intent::RefundFailed {
                        invoice,
                        refund_id: refund.id.clone(),
                    },
                    // `pending`, `requires_action`: booked by its update.
                    Some(_) => Intent::Nothing("refund_pending"),
                }
            }
            StripeFact::Dispute { step, dispute } => {
                let Some(invoice) = self.invoice_of(&dispute.payment) else {
                    return Intent::Nothing("unknown_invoice");
                };
                let Some(amount) = money(dispute.amount_minor, &dispute.currency) else {
                    return Intent::Nothing("unknown_currency");
                };
                let zero = Money::zero(amount.currency());
                let fee_of = |fee: &Option<(i64, String)>| {
                    fee.as_ref()
                        .and_then(|(minor, currency)| money(*minor, currency))
                        .unwrap_or(zero)
                };
                let outcome = match (step, dispute.status.as_str()) {
                    (DisputeStep::Closed, "won") => Some(DisputeOutcome::Won),
                    (DisputeStep::Closed, "lost") => Some(DisputeOutcome::Lost),
                    (DisputeStep::Closed, "warning_closed") => Some(DisputeOutcome::InquiryClosed),
                    (DisputeStep::Closed, _) => return Intent::Nothing("dispute_status_unknown"),
                    _ => None,
                };
                let Some(charge_id) = dispute
                    .payment
                    .charge
                    .clone()
                    .or(dispute.payment.payment_intent.clone())
                else {
                    return Intent::Nothing("no_charge");
                };
                Intent::Dispute {
                    invoice,
                    dispute: ReportedDispute {
                        dispute_id: dispute.id.clone(),
                        charge_id,
                        amount,
                        reason: dispute.reason.clone(),
                        // A chargeback's funds are withdrawn when it opens; an
                        // inquiry's never are.
                        withdrawn: match step {
                            DisputeStep::FundsWithdrawn => true,
                            DisputeStep::Created => !dispute.is_inquiry(),
                            _ => false,
                        },
                        fee: fee_of(&dispute.fee),
                        reinstated: *step == DisputeStep::FundsReinstated,
                        fee_returned: fee_of(&dispute.fee_returned),
                        outcome,
                    },
                }
            }
            StripeFact::CustomerUpdated {
                stripe_customer,
                recur_customer,
                contact,
            } => match self.customer_of(recur_customer.as_deref(), Some(stripe_customer)) {
                Some(customer) => Intent::Contact {
                    customer,
                    patch: contact.clone(),
                },
                None => Intent::Nothing("unknown_customer"),
            },
            StripeFact::CardUpdated {
                card,
                stripe_customer,
                recur_customer,
            } => match self.customer_of(recur_customer.as_deref(), stripe_customer.as_deref()) {
                Some(customer) => Intent::CardUpdated {
                    customer,
                    card: card.clone(),
                },
                None => Intent::Nothing("unknown_customer"),
            },
            StripeFact::CardExpiring {
                card,
                stripe_customer,
                recur_customer,
            } => match self.customer_of(recur_customer.as_deref(), stripe_customer.as_deref()) {
                Some(customer) => Intent::CardExpiring {
                    customer,
                    card: card.clone(),
                },
                None => Intent::Nothing("unknown_customer"),
            },
        }
    }
}

/// A Stripe refund in Recur's money (None for a currency Recur lacks).
fn reported_refund(refund: &crate::stripe_facts::StripeRefund) -> Option<ReportedRefund> {
    Some(ReportedRefund {
        refund_id: refund.id.clone(),
        recur_key: refund.recur_refund.clone(),
        match_by_amount: !refund.has_metadata,
        amount: money(refund.amount_minor, &refund.currency)?,
        reason: refund.reason.clone(),
    })
}

/// A text field of a stored payload, by path (the payload is Recur's JSON).
fn payload_text(payload: &str, path: &[&str]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(payload).ok()?;
    let mut at = &value;
    for key in path {
        at = at.get(key)?;
    }
    at.as_str().map(str::to_owned)
}

/// What became of one Stripe event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Translated {
    /// Where it is kept.
    pub position: Position,
    /// `evt_…`.
    pub stripe_event_id: String,
    /// Its Stripe type.
    pub stripe_type: String,
    /// What it did.
    pub effect: Effect,
    /// Ledger events appended now (0 when it found an earlier translation's).
    pub events_appended: u64,
}

/// What one run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TranslateReport {
    /// Stripe events translated.
    pub translated: u64,
    /// Of which with an effect on Recur.
    pub applied: u64,
    /// Ledger events appended.
    pub events_appended: u64,
    /// The checkpoint after the run.
    pub checkpoint: Position,
}

/// The translator: one per process, shared by whoever wakes it.
pub struct Translator {
    billing: Arc<Billing>,
    /// One run at a time in this process (others are kept apart by the
    /// checkpoint's compare-and-set and the appends' keys).
    index: tokio::sync::Mutex<Index>,
}

impl Translator {
    /// A translator applying through `billing` (which needs the vault: the
    /// Stripe events are encrypted).
    pub fn new(billing: Arc<Billing>) -> Self {
        Self {
            billing,
            index: tokio::sync::Mutex::new(Index::default()),
        }
    }

    /// Translates every kept Stripe event after the checkpoint (all of them
    /// with `from_start`), then moves the checkpoint to the ledger's end.
    ///
    /// # Errors
    /// Ledger errors, a missing master key, an undecodable stored event: the
    /// checkpoint stays after the last event translated, and the next run
    /// starts there.
    pub async fn run(&self, from_start: bool) -> Result<TranslateReport, BillingError> {
        self.run_with(from_start, |_| {}).await
    }

    /// [`Translator::run`], calling `each` with what became of each Stripe event.
    ///
    /// # Errors
    /// As for [`Translator::run`].
    pub async fn run_with(
        &self,
        from_start: bool,
        mut each: impl FnMut(&Translated),
    ) -> Result<TranslateReport, BillingError> {
        let mut index = self.index.lock().await;
        let ledger = self.billing.ledger();
        // What Recur recorded up to now: found before anything is translated,
        // so a dispute finds the payment whatever their order in the ledger.
        loop {
            let page = ledger.read_all(index.position(), PAGE_EVENTS).await?;
            for recorded in &page {
                index.learn_from_ledger(recorded);
            }
            if page.len() < PAGE_EVENTS {
                break;
            }
        }
        let stored = ledger.checkpoint(CHECKPOINT).await?;
        let mut checkpoint = match stored {
            Some(stored) if stored.version == VERSION && !from_start => stored.position,
            _ => {
                ledger
                    .reset_checkpoint(CHECKPOINT, VERSION, Position::START)
                    .await?;
                Position::START
            }
        };
        let mut report = TranslateReport::default();
        loop {
            let page = ledger.read_all(checkpoint, PAGE_EVENTS).await?;
            let Some(last) = page.last().map(|e| e.position) else {
                break;
            };
            let mut done = checkpoint;
            for recorded in &page {
                if recorded.stream_id.category() == "stripe" {
                    let translated = match self.translate(&mut index, recorded).await {
                        Ok(translated) => translated,
                        Err(error) => {
                            // Keep what was done; the next run starts at this event.
                            self.save(checkpoint, done).await?;
                            return Err(error);
                        }
                    };
                    report.translated += 1;
                    report.applied += u64::from(translated.effect == Effect::Applied);
                    report.events_appended += translated.events_appended;
                    each(&translated);
                }
                done = recorded.position;
            }
            if !self.save(checkpoint, last).await? {
                // Another worker moved it: go on from where it is.
                checkpoint = ledger
                    .checkpoint(CHECKPOINT)
                    .await?
                    .map_or(last, |stored| stored.position);
            } else {
                checkpoint = last;
            }
            if page.len() < PAGE_EVENTS {
                break;
            }
        }
        report.checkpoint = checkpoint;
        Ok(report)
    }

    /// Moves the checkpoint from `from` to `to` (nothing when they are equal).
    async fn save(&self, from: Position, to: Position) -> Result<bool, BillingError> {
        if from == to {
            return Ok(true);
        }
        Ok(self
            .billing
            .ledger()
            .advance_checkpoint(CHECKPOINT, VERSION, from, to)
            .await?)
    }

    /// Translates one kept Stripe event.
    async fn translate(
        &self,
        index: &mut Index,
        recorded: &RecordedEvent,
    ) -> Result<Translated, BillingError> {
        let corrupt = |error: crate::tagged::DecodeError| BillingError::Corrupt {
            stream: recorded.stream_id.to_string(),
            position: recorded.position.0,
            cause: error.into(),
        };
        let WebhookEvent::StripeEventReceived {
            stripe_event_id,
            stripe_type,
            created_s,
            key_owner,
            encrypted,
            ..
        } = crate::billing::decode_event::<WebhookEvent>(&recorded.payload).map_err(corrupt)?;
        let mut translated = Translated {
            position: recorded.position,
            stripe_event_id,
            stripe_type,
            effect: Effect::Nothing("type_not_handled"),
            events_appended: 0,
        };
        if !crate::stripe_facts::HANDLED_TYPES.contains(&translated.stripe_type.as_str()) {
            // Not decrypted: nothing in it is acted on.
            return Ok(translated);
        }
        let Some(json) = self
            .billing
            .decrypt_personal(CustomerId(key_owner), &encrypted)
            .await?
        else {
            translated.effect = Effect::Nothing("personal_data_erased");
            return Ok(translated);
        };
        let Ok(event) = StripeEvent::parse(&json) else {
            translated.effect = Effect::Nothing("unreadable");
            return Ok(translated);
        };
        let fact = StripeFact::of(&event);
        index.learn_from_fact(&fact);
        let intent = index.resolve(&fact);
        let now = OffsetDateTime::from_unix_timestamp(created_s)
            .unwrap_or_else(|_| self.billing.ledger().clock().now());
        let scope = Replayable {
            seed: Sha256::new()
                .chain_update(b"recur stripe translation\0")
                .chain_update(event.id.as_bytes())
                .finalize()
                .into(),
            started_at: now,
            // Always look for what an earlier translation of this event appended.
            rerun: true,
            resumed: true,
        };
        let context = RequestContext {
            actor: Some(ACTOR.to_owned()),
            // Every event this Stripe event causes is correlated with it.
            request_id: Some(recorded.id.0),
            ..RequestContext::default()
        };
        let before = self.billing.events_appended();
        let (effect, _) = replayable(scope, within(context, self.apply(intent, now))).await;
        translated.effect = effect?;
        translated.events_appended = self.billing.events_appended().saturating_sub(before);
        Ok(translated)
    }

    async fn apply(&self, intent: Intent, now: OffsetDateTime) -> Result<Effect, BillingError> {
        let billing = &self.billing;
        match intent {
            Intent::Nothing(reason) => Ok(Effect::Nothing(reason)),
            Intent::PaymentFailed {
                invoice,
                attempt_no,
                decline_code,
                message,
            } => {
                billing
                    .provider_payment_failed(invoice, attempt_no, &decline_code, &message, now)
                    .await
            }
            Intent::PaymentSucceeded {
                invoice,
                attempt_no,
                charge_id,
                amount,
            } => {
                billing
                    .provider_payment_succeeded(invoice, attempt_no, &charge_id, amount, now)
                    .await
            }
            Intent::Refunded { invoice, refunds } => {
                billing.provider_refunds(invoice, refunds, now).await
            }
            Intent::RefundFailed { invoice, refund_id } => {
                billing.provider_refund_failed(invoice, &refund_id).await
            }
            Intent::Dispute { invoice, dispute } => {
                billing.provider_dispute(invoice, &dispute, now).await
            }
            Intent::Contact { customer, patch } => {
                billing.provider_contact(customer, &patch, now).await
            }
            Intent::CardUpdated { customer, card } => {
                billing.provider_card_updated(customer, &card, now).await
            }
            Intent::CardExpiring { customer, card } => {
                billing.provider_card_expiring(customer, &card, now).await
            }
        }
    }
}

impl std::fmt::Debug for Translator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Translator").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stripe_amounts_become_iso_money_isk_and_ugx_in_hundredths() {
        let isk = money(5_000, "isk").map(|m| m.to_string());
        assert_eq!(isk.as_deref(), Some("50 ISK"));
        let usd = money(9_700, "usd").map(|m| m.to_string());
        assert_eq!(usd.as_deref(), Some("97.00 USD"));
        // Stripe never sends hundredths of a krona: refused, not misread.
        assert_eq!(money(5_050, "isk"), None);
        assert_eq!(money(100, "zzz"), None);
    }

    fn fact(kind: &str, object: serde_json::Value) -> StripeFact {
        let body = json!({"id": "evt_t", "type": kind, "created": 1, "data": {"object": object}});
        let event = StripeEvent::parse(&serde_json::to_vec(&body).unwrap_or_default());
        event.map_or(
            StripeFact::Unhandled {
                reason: "unreadable",
            },
            |e| StripeFact::of(&e),
        )
    }

    #[test]
    fn without_metadata_or_a_learnt_id_nothing_is_asked_of_recur() {
        let index = Index::default();
        let dispute = json!({"id": "dp_1", "object": "dispute", "charge": "ch_1",
                             "amount": 100, "currency": "usd", "status": "needs_response"});
        let intent = json!({"id": "pi_1", "object": "payment_intent", "amount": 100,
                            "currency": "usd", "metadata": {}});
        let customer = json!({"id": "cus_1", "object": "customer", "email": "a@b.example"});
        for (kind, object, reason) in [
            ("charge.dispute.created", dispute, "unknown_invoice"),
            ("payment_intent.succeeded", intent, "unknown_invoice"),
            ("customer.updated", customer, "unknown_customer"),
            (
                "customer.subscription.created",
                json!({}),
                "type_not_handled",
            ),
        ] {
            assert_eq!(
                index.resolve(&fact(kind, object)),
                Intent::Nothing(reason),
                "{kind}"
            );
        }
    }

    #[test]
    fn a_dispute_is_found_through_the_charge_recur_recorded() {
        let invoice = InvoiceId(uuid::Uuid::now_v7());
        let mut index = Index::default();
        let recorded = RecordedEvent {
            id: recur_ledger::EventId(uuid::Uuid::now_v7()),
            stream_id: invoice.stream().unwrap_or_else(|_| unreachable!()),
            stream_version: 4,
            position: Position(9),
            event_type: "PaymentSucceeded".into(),
            schema_version: 1,
            payload: r#"{"type":"PaymentSucceeded","attempt_no":1,"charge_id":"ch_1"}"#.into(),
            metadata: recur_ledger::Metadata::default(),
            recorded_at: OffsetDateTime::UNIX_EPOCH,
        };
        index.learn_from_ledger(&recorded);
        assert_eq!(index.position(), Position(9));
        let dispute = json!({"id": "dp_1", "object": "dispute", "charge": "ch_1",
                             "amount": 100, "currency": "usd", "status": "warning_needs_response"});
        let Intent::Dispute {
            invoice: found,
            dispute,
        } = index.resolve(&fact("charge.dispute.created", dispute))
        else {
            panic!("a dispute");
        };
        assert_eq!(found, invoice);
        assert!(!dispute.withdrawn, "an inquiry withdraws nothing");
        assert_eq!(dispute.amount, Money::from_minor(100, Currency::USD));
        // A PaymentIntent with metadata teaches its ids to what comes after.
        let other = InvoiceId(uuid::Uuid::now_v7());
        let intent = json!({"id": "pi_2", "object": "payment_intent", "amount": 100,
                            "amount_received": 100, "currency": "usd", "latest_charge": "ch_2",
                            "metadata": {"recur_invoice_id": other.to_string()}});
        index.learn_from_fact(&fact("payment_intent.succeeded", intent));
        let refund = json!({"id": "ch_2", "object": "charge", "amount": 100,
                            "amount_refunded": 50, "currency": "usd", "metadata": {}});
        assert!(matches!(
            index.resolve(&fact("charge.refunded", refund)),
            Intent::Refunded { invoice, .. } if invoice == other
        ));
    }
}
