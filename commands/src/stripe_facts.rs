//! What a Stripe event says, read from the event as Stripe sent it: pure, no
//! I/O, tolerant of the API versions Recur has seen (the current one and
//! 2024-04-10, whose fixtures are in tests/fixtures/stripe).
//!
//! Recur's own ids come from the metadata the Stripe gateway writes on what it
//! creates: PaymentIntents (and so their charges) carry `recur_invoice_id`,
//! `recur_customer_id` and `recur_attempt`; Stripe customers carry
//! `recur_customer_id`. A fact keeps Stripe's ids beside them, so that what
//! carries no metadata (a dispute names only its charge) can be found through
//! what the translator learnt before ([`crate::translator`]).
//!
//! An event of a type Recur does not act on, or whose object lacks what the
//! type needs, is [`StripeFact::Unhandled`] with a reason code: acknowledged,
//! never an error.

use serde_json::{Map, Value};

/// The most characters of a provider's message kept (a decline's message).
pub const MESSAGE_CHARS_MAX: usize = 200;
/// The most refunds of one charge read from one event (Stripe lists at most
/// 10 unless expanded further).
pub const REFUNDS_PER_CHARGE_MAX: usize = 100;
/// What a decline without a code is recorded as: Stripe's own generic code.
pub const DECLINE_CODE_UNKNOWN: &str = "generic_decline";

/// Why a stored Stripe event cannot be read at all (it was checked when it was
/// kept, so this means a corrupt or foreign payload).
#[derive(Debug, thiserror::Error)]
pub enum StripeParseError {
    /// Not JSON, or not an event's shape.
    #[error("not a Stripe event: {0}")]
    NotAnEvent(&'static str),
}

/// A Stripe event's parts the translator reads.
#[derive(Clone, Debug, PartialEq)]
pub struct StripeEvent {
    /// `evt_…`.
    pub id: String,
    /// Its type (`invoice.paid`).
    pub event_type: String,
    /// When Stripe made it, Unix seconds.
    pub created_s: i64,
    /// `data.object`.
    pub object: Map<String, Value>,
    /// `data.previous_attributes`: for `*.updated`, the fields that changed.
    pub previous_attributes: Option<Map<String, Value>>,
}

impl StripeEvent {
    /// Reads a Stripe event's JSON.
    ///
    /// # Errors
    /// [`StripeParseError::NotAnEvent`] when it is not JSON with an `id`,
    /// `type`, `created` and `data.object`.
    pub fn parse(json: &[u8]) -> Result<Self, StripeParseError> {
        let value: Value =
            serde_json::from_slice(json).map_err(|_| StripeParseError::NotAnEvent("not JSON"))?;
        let text = |key: &str| value.get(key).and_then(Value::as_str).map(str::to_owned);
        let id = text("id").ok_or(StripeParseError::NotAnEvent("no id"))?;
        let event_type = text("type").ok_or(StripeParseError::NotAnEvent("no type"))?;
        let created_s = value
            .get("created")
            .and_then(Value::as_i64)
            .ok_or(StripeParseError::NotAnEvent("no created"))?;
        let data = value
            .get("data")
            .ok_or(StripeParseError::NotAnEvent("no data"))?;
        let object = data
            .get("object")
            .and_then(Value::as_object)
            .cloned()
            .ok_or(StripeParseError::NotAnEvent("no data.object"))?;
        let previous_attributes = data
            .get("previous_attributes")
            .and_then(Value::as_object)
            .cloned();
        Ok(Self {
            id,
            event_type,
            created_s,
            object,
            previous_attributes,
        })
    }
}

/// Recur's and Stripe's ids of a payment a Stripe event is about.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PaymentRef {
    /// Metadata `recur_invoice_id`.
    pub recur_invoice: Option<String>,
    /// Metadata `recur_customer_id`.
    pub recur_customer: Option<String>,
    /// Metadata `recur_attempt`.
    pub recur_attempt: Option<u32>,
    /// The PaymentIntent (`pi_…`).
    pub payment_intent: Option<String>,
    /// The charge (`ch_…`).
    pub charge: Option<String>,
    /// The Stripe customer (`cus_…`).
    pub stripe_customer: Option<String>,
}

/// A refund as a charge lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StripeRefund {
    /// `re_…`.
    pub id: String,
    /// Minor units.
    pub amount_minor: i64,
    /// Lowercase ISO code, as Stripe writes it.
    pub currency: String,
    /// Stripe's reason, if any.
    pub reason: Option<String>,
    /// `succeeded`, `pending`, `requires_action`, `failed`, `canceled`
    /// (none in old API versions' lists: succeeded).
    pub status: Option<String>,
    /// Metadata `recur_refund`: the key Recur's gateway wrote on a refund it
    /// made (`<invoice id>-refund-<n>`).
    pub recur_refund: Option<String>,
    /// Whether the refund carries a `metadata` object at all (Stripe's do;
    /// without one, whether it is Recur's cannot be told).
    pub has_metadata: bool,
}

impl StripeRefund {
    /// Money given back: `succeeded` (or no status, as old lists write it).
    pub fn is_succeeded(&self) -> bool {
        matches!(self.status.as_deref(), None | Some("succeeded"))
    }
}

/// What stage of a dispute an event reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DisputeStep {
    /// `charge.dispute.created`.
    Created,
    /// `charge.dispute.funds_withdrawn`.
    FundsWithdrawn,
    /// `charge.dispute.funds_reinstated`.
    FundsReinstated,
    /// `charge.dispute.closed`.
    Closed,
}

/// A dispute as Stripe reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StripeDispute {
    /// `dp_…`.
    pub id: String,
    /// The disputed payment (its charge, and PaymentIntent when named).
    pub payment: PaymentRef,
    /// Minor units.
    pub amount_minor: i64,
    /// Lowercase ISO code.
    pub currency: String,
    /// The network's reason code.
    pub reason: String,
    /// `warning_needs_response`, `needs_response`, `won`, `lost`, …
    pub status: String,
    /// The fee Stripe charged (from its balance transactions that withdrew
    /// funds): minor units and currency; none listed, none recorded.
    pub fee: Option<(i64, String)>,
    /// The fee Stripe gave back (balance transactions that reinstated funds).
    pub fee_returned: Option<(i64, String)>,
}

impl StripeDispute {
    /// An inquiry (Stripe's `warning_*` statuses): no funds are withdrawn.
    pub fn is_inquiry(&self) -> bool {
        self.status.starts_with("warning_")
    }
}

/// Contact details as a Stripe customer holds them, limited to what changed
/// when the event says (`previous_attributes`). Personal data: never logged.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ContactPatch {
    /// A new name.
    pub name: Option<String>,
    /// A new email.
    pub email: Option<String>,
    /// A new phone (`Some(None)`: removed).
    pub phone: Option<Option<String>>,
}

impl std::fmt::Debug for ContactPatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Personal data stays out of any log or panic message.
        f.debug_struct("ContactPatch")
            .field("name", &self.name.as_ref().map(|_| "…"))
            .field("email", &self.email.as_ref().map(|_| "…"))
            .field("phone", &self.phone.as_ref().map(|_| "…"))
            .finish()
    }
}

impl ContactPatch {
    /// True when it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.name.is_none() && self.email.is_none() && self.phone.is_none()
    }
}

/// A card as Stripe describes it (a PaymentMethod's `card`, or a Card object).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StripeCard {
    /// The PaymentMethod or Card id (`pm_…`, `card_…`).
    pub id: String,
    /// Lowercase, `_` for spaces (`visa`, `american_express`).
    pub brand: String,
    /// Last four digits.
    pub last4: String,
    /// Expiry month.
    pub exp_month: u8,
    /// Expiry year.
    pub exp_year: u16,
}

/// What a Stripe event says that Recur may act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StripeFact {
    /// A payment failed (`payment_intent.payment_failed`, `invoice.payment_failed`).
    PaymentFailed {
        /// Which payment.
        payment: PaymentRef,
        /// The decline code (`insufficient_funds`), [`DECLINE_CODE_UNKNOWN`] if none.
        decline_code: String,
        /// Stripe's message, at most [`MESSAGE_CHARS_MAX`] characters.
        message: String,
    },
    /// A payment succeeded (`payment_intent.succeeded`, `invoice.paid`).
    PaymentSucceeded {
        /// Which payment.
        payment: PaymentRef,
        /// Collected, minor units.
        amount_minor: i64,
        /// Lowercase ISO code.
        currency: String,
    },
    /// A charge was refunded, in part or in full (`charge.refunded`).
    ChargeRefunded {
        /// Which payment.
        payment: PaymentRef,
        /// Refunded in all, minor units.
        amount_refunded_minor: i64,
        /// Lowercase ISO code.
        currency: String,
        /// The succeeded refunds the charge lists, when it lists them all
        /// (API versions since 2022-11-15 do not, unless expanded).
        refunds: Option<Vec<StripeRefund>>,
    },
    /// A refund object (`refund.created`, `refund.updated`,
    /// `charge.refund.updated`): the refund itself, with its `re_…` id and
    /// status, whichever API version.
    Refund {
        /// Which payment (its `charge` and `payment_intent`).
        payment: PaymentRef,
        /// The refund.
        refund: StripeRefund,
    },
    /// A dispute's stage.
    Dispute {
        /// Which stage.
        step: DisputeStep,
        /// The dispute.
        dispute: StripeDispute,
    },
    /// A Stripe customer changed (`customer.updated`).
    CustomerUpdated {
        /// `cus_…`.
        stripe_customer: String,
        /// Metadata `recur_customer_id`.
        recur_customer: Option<String>,
        /// What changed of its contact details.
        contact: ContactPatch,
    },
    /// The card network updated a saved card (`payment_method.automatically_updated`).
    CardUpdated {
        /// The card.
        card: StripeCard,
        /// Its Stripe customer.
        stripe_customer: Option<String>,
        /// Metadata `recur_customer_id`.
        recur_customer: Option<String>,
    },
    /// A saved card expires at the end of the month (`customer.source.expiring`).
    CardExpiring {
        /// The card.
        card: StripeCard,
        /// Its Stripe customer.
        stripe_customer: Option<String>,
        /// Metadata `recur_customer_id`.
        recur_customer: Option<String>,
    },
    /// Nothing Recur acts on: an event of another type, or one whose object
    /// lacks what its type needs. `reason` is a stable code.
    Unhandled {
        /// Why.
        reason: &'static str,
    },
}

/// The Stripe event types the translator acts on.
pub const HANDLED_TYPES: &[&str] = &[
    "invoice.payment_failed",
    "payment_intent.payment_failed",
    "payment_intent.succeeded",
    "invoice.paid",
    "charge.refunded",
    "refund.created",
    "refund.updated",
    "charge.refund.updated",
    "charge.dispute.created",
    "charge.dispute.funds_withdrawn",
    "charge.dispute.funds_reinstated",
    "charge.dispute.closed",
    "customer.updated",
    "payment_method.automatically_updated",
    "customer.source.expiring",
];

fn text(object: &Map<String, Value>, key: &str) -> Option<String> {
    object
        .get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// An id field that may be expanded into its object: the id either way.
fn id_of(object: &Map<String, Value>, key: &str) -> Option<String> {
    match object.get(key) {
        Some(Value::Object(expanded)) => text(expanded, "id"),
        _ => text(object, key),
    }
}

/// An expanded object, if the field holds one.
fn expanded<'a>(object: &'a Map<String, Value>, key: &str) -> Option<&'a Map<String, Value>> {
    object.get(key).and_then(Value::as_object)
}

fn metadata_text(object: &Map<String, Value>, key: &str) -> Option<String> {
    expanded(object, "metadata").and_then(|m| text(m, key))
}

/// Recur's metadata on `object` (and on the objects it expands, as a fallback).
fn payment_ref(object: &Map<String, Value>) -> PaymentRef {
    let object_type = text(object, "object");
    let own_id = text(object, "id");
    let mut payment = PaymentRef {
        recur_invoice: metadata_text(object, "recur_invoice_id"),
        recur_customer: metadata_text(object, "recur_customer_id"),
        recur_attempt: metadata_text(object, "recur_attempt").and_then(|a| a.parse().ok()),
        payment_intent: match object_type.as_deref() {
            Some("payment_intent") => own_id.clone(),
            _ => id_of(object, "payment_intent"),
        },
        charge: match object_type.as_deref() {
            Some("charge") => own_id,
            Some("payment_intent") => id_of(object, "latest_charge"),
            _ => id_of(object, "charge"),
        },
        stripe_customer: id_of(object, "customer"),
    };
    // An expanded PaymentIntent or charge carries Recur's metadata too.
    for key in ["payment_intent", "charge", "latest_charge"] {
        if let Some(inner) = expanded(object, key) {
            let inner = payment_ref(inner);
            payment.recur_invoice = payment.recur_invoice.or(inner.recur_invoice);
            payment.recur_customer = payment.recur_customer.or(inner.recur_customer);
            payment.recur_attempt = payment.recur_attempt.or(inner.recur_attempt);
        }
    }
    payment
}

/// A provider's message: one line, at most [`MESSAGE_CHARS_MAX`] characters.
fn message(text: Option<String>) -> String {
    let text = text.unwrap_or_else(|| "The payment provider reported a failed payment.".into());
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MESSAGE_CHARS_MAX)
        .collect()
}

/// A decline code: Stripe's are snake_case; anything else is not kept.
fn decline_code(code: Option<String>) -> String {
    code.filter(|c| {
        c.len() <= 64
            && c.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    })
    .unwrap_or_else(|| DECLINE_CODE_UNKNOWN.to_owned())
}

/// The decline of a failed PaymentIntent (`last_payment_error`) or charge
/// (`failure_code`, `outcome.reason`): its code and message.
fn decline_of(object: &Map<String, Value>) -> Option<(Option<String>, Option<String>)> {
    if let Some(error) = expanded(object, "last_payment_error") {
        let code = text(error, "decline_code").or_else(|| text(error, "code"));
        return Some((code, text(error, "message")));
    }
    let code = text(object, "failure_code")
        .or_else(|| expanded(object, "outcome").and_then(|o| text(o, "reason")));
    let failure = text(object, "failure_message");
    (code.is_some() || failure.is_some()).then_some((code, failure))
}

fn payment_failed(object: &Map<String, Value>) -> StripeFact {
    let mut found = decline_of(object);
    // An invoice names its payment; expanded, the payment says why it failed.
    for key in ["payment_intent", "charge"] {
        if found.is_none() {
            found = expanded(object, key).and_then(decline_of);
        }
    }
    let (code, text) = found.unwrap_or((None, None));
    StripeFact::PaymentFailed {
        payment: payment_ref(object),
        decline_code: decline_code(code),
        message: message(text),
    }
}

fn payment_succeeded(object: &Map<String, Value>) -> StripeFact {
    let amount = ["amount_received", "amount_paid", "amount"]
        .iter()
        .find_map(|key| object.get(*key).and_then(Value::as_i64).filter(|a| *a > 0));
    match (amount, text(object, "currency")) {
        (Some(amount_minor), Some(currency)) => StripeFact::PaymentSucceeded {
            payment: payment_ref(object),
            amount_minor,
            currency,
        },
        _ => StripeFact::Unhandled {
            reason: "no_amount",
        },
    }
}

fn refunds_of(object: &Map<String, Value>) -> Option<Vec<StripeRefund>> {
    let list = expanded(object, "refunds")?;
    if list.get("has_more").and_then(Value::as_bool) == Some(true) {
        return None;
    }
    let data = list.get("data")?.as_array()?;
    let refunds = data
        .iter()
        .filter_map(Value::as_object)
        .filter_map(refund_of)
        // Only money given back; a pending one is booked by its update.
        .filter(StripeRefund::is_succeeded)
        .take(REFUNDS_PER_CHARGE_MAX)
        .collect();
    Some(refunds)
}

fn refund_of(r: &Map<String, Value>) -> Option<StripeRefund> {
    Some(StripeRefund {
        id: text(r, "id")?,
        amount_minor: r.get("amount")?.as_i64()?,
        currency: text(r, "currency")?,
        reason: text(r, "reason"),
        status: text(r, "status"),
        recur_refund: metadata_text(r, "recur_refund"),
        has_metadata: expanded(r, "metadata").is_some(),
    })
}

fn refund(object: &Map<String, Value>) -> StripeFact {
    match refund_of(object) {
        Some(refund) if refund.id.starts_with("re_") || refund.id.starts_with("pyr_") => {
            StripeFact::Refund {
                payment: payment_ref(object),
                refund,
            }
        }
        _ => StripeFact::Unhandled {
            reason: "no_amount",
        },
    }
}

fn charge_refunded(object: &Map<String, Value>) -> StripeFact {
    let amount = object.get("amount_refunded").and_then(Value::as_i64);
    match (amount, text(object, "currency")) {
        (Some(amount_refunded_minor), Some(currency)) => StripeFact::ChargeRefunded {
            payment: payment_ref(object),
            amount_refunded_minor,
            currency,
            refunds: refunds_of(object),
        },
        _ => StripeFact::Unhandled {
            reason: "no_amount",
        },
    }
}

/// The fee withdrawn (transactions that took money) or given back (that gave
/// it), summed per the first currency listed.
fn dispute_fee(object: &Map<String, Value>, withdrawn: bool) -> Option<(i64, String)> {
    let transactions = object.get("balance_transactions")?.as_array()?;
    let mut total: Option<(i64, String)> = None;
    for transaction in transactions.iter().filter_map(Value::as_object) {
        let (Some(amount), Some(fee), Some(currency)) = (
            transaction.get("amount").and_then(Value::as_i64),
            transaction.get("fee").and_then(Value::as_i64),
            text(transaction, "currency"),
        ) else {
            continue;
        };
        let fee = if withdrawn && amount < 0 {
            fee
        } else if !withdrawn && amount > 0 {
            -fee
        } else {
            continue;
        };
        match &mut total {
            None => total = Some((fee, currency)),
            Some((sum, code)) if *code == currency => *sum = sum.saturating_add(fee),
            Some(_) => {}
        }
    }
    total.filter(|(fee, _)| *fee > 0)
}

fn dispute(step: DisputeStep, object: &Map<String, Value>) -> StripeFact {
    let (Some(id), Some(amount_minor), Some(currency)) = (
        text(object, "id"),
        object.get("amount").and_then(Value::as_i64),
        text(object, "currency"),
    ) else {
        return StripeFact::Unhandled {
            reason: "no_amount",
        };
    };
    StripeFact::Dispute {
        step,
        dispute: StripeDispute {
            id,
            payment: payment_ref(object),
            amount_minor,
            currency,
            reason: text(object, "reason").unwrap_or_else(|| "general".into()),
            status: text(object, "status").unwrap_or_default(),
            fee: dispute_fee(object, true),
            fee_returned: dispute_fee(object, false),
        },
    }
}

fn customer_updated(event: &StripeEvent) -> StripeFact {
    let object = &event.object;
    let Some(stripe_customer) = text(object, "id") else {
        return StripeFact::Unhandled { reason: "no_id" };
    };
    // Only what changed, when the event says what changed; else what is set.
    let changed = |key: &str| {
        event
            .previous_attributes
            .as_ref()
            .is_none_or(|previous| previous.contains_key(key))
    };
    let contact = ContactPatch {
        name: text(object, "name").filter(|_| changed("name")),
        email: text(object, "email").filter(|_| changed("email")),
        phone: changed("phone")
            .then(|| text(object, "phone"))
            .filter(|phone| phone.is_some() || event.previous_attributes.is_some()),
    };
    StripeFact::CustomerUpdated {
        stripe_customer,
        recur_customer: metadata_text(object, "recur_customer_id"),
        contact,
    }
}

/// The card of a PaymentMethod (`card`) or a Card object itself.
fn card_of(object: &Map<String, Value>) -> Option<StripeCard> {
    let id = text(object, "id")?;
    let card = expanded(object, "card").unwrap_or(object);
    let brand = text(card, "brand")?
        .trim()
        .to_ascii_lowercase()
        .replace([' ', '-'], "_");
    Some(StripeCard {
        id,
        brand,
        last4: text(card, "last4")?,
        exp_month: u8::try_from(card.get("exp_month")?.as_u64()?).ok()?,
        exp_year: u16::try_from(card.get("exp_year")?.as_u64()?).ok()?,
    })
}

impl StripeFact {
    /// What `event` says. Never fails: what cannot be read is
    /// [`StripeFact::Unhandled`].
    pub fn of(event: &StripeEvent) -> StripeFact {
        let object = &event.object;
        match event.event_type.as_str() {
            "invoice.payment_failed" | "payment_intent.payment_failed" => payment_failed(object),
            "payment_intent.succeeded" | "invoice.paid" => payment_succeeded(object),
            "charge.refunded" => charge_refunded(object),
            "refund.created" | "refund.updated" | "charge.refund.updated" => refund(object),
            "charge.dispute.created" => dispute(DisputeStep::Created, object),
            "charge.dispute.funds_withdrawn" => dispute(DisputeStep::FundsWithdrawn, object),
            "charge.dispute.funds_reinstated" => dispute(DisputeStep::FundsReinstated, object),
            "charge.dispute.closed" => dispute(DisputeStep::Closed, object),
            "customer.updated" => customer_updated(event),
            "payment_method.automatically_updated" | "customer.source.expiring" => {
                let Some(card) = card_of(object) else {
                    return StripeFact::Unhandled { reason: "no_card" };
                };
                let stripe_customer = id_of(object, "customer");
                let recur_customer = metadata_text(object, "recur_customer_id");
                if event.event_type == "customer.source.expiring" {
                    StripeFact::CardExpiring {
                        card,
                        stripe_customer,
                        recur_customer,
                    }
                } else {
                    StripeFact::CardUpdated {
                        card,
                        stripe_customer,
                        recur_customer,
                    }
                }
            }
            _ => StripeFact::Unhandled {
                reason: "type_not_handled",
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fixture(version: &str, name: &str) -> Value {
        let text = match (version, name) {
            ("current", "charge") => {
                include_str!("../../tests/fixtures/stripe/current/charge.json")
            }
            ("current", "customer") => {
                include_str!("../../tests/fixtures/stripe/current/customer.json")
            }
            ("current", "dispute") => {
                include_str!("../../tests/fixtures/stripe/current/dispute.json")
            }
            ("current", "invoice") => {
                include_str!("../../tests/fixtures/stripe/current/invoice.json")
            }
            ("current", "payment_intent") => {
                include_str!("../../tests/fixtures/stripe/current/payment_intent.json")
            }
            ("current", "payment_method") => {
                include_str!("../../tests/fixtures/stripe/current/payment_method.json")
            }
            ("current", "card") => include_str!("../../tests/fixtures/stripe/current/card.json"),
            ("current", "refund") => {
                include_str!("../../tests/fixtures/stripe/current/refund.json")
            }
            ("legacy", "refund") => {
                include_str!("../../tests/fixtures/stripe/legacy_2024_04/refund.json")
            }
            ("current", "subscription") => {
                include_str!("../../tests/fixtures/stripe/current/subscription.json")
            }
            ("legacy", "charge") => {
                include_str!("../../tests/fixtures/stripe/legacy_2024_04/charge.json")
            }
            ("legacy", "customer") => {
                include_str!("../../tests/fixtures/stripe/legacy_2024_04/customer.json")
            }
            ("legacy", "dispute") => {
                include_str!("../../tests/fixtures/stripe/legacy_2024_04/dispute.json")
            }
            ("legacy", "invoice") => {
                include_str!("../../tests/fixtures/stripe/legacy_2024_04/invoice.json")
            }
            ("legacy", "payment_intent") => {
                include_str!("../../tests/fixtures/stripe/legacy_2024_04/payment_intent.json")
            }
            ("legacy", "payment_method") => {
                include_str!("../../tests/fixtures/stripe/legacy_2024_04/payment_method.json")
            }
            ("legacy", "card") => {
                include_str!("../../tests/fixtures/stripe/legacy_2024_04/card.json")
            }
            ("legacy", "subscription") => {
                include_str!("../../tests/fixtures/stripe/legacy_2024_04/subscription.json")
            }
            _ => panic!("no fixture {version}/{name}"),
        };
        serde_json::from_str(text).expect("fixture JSON")
    }

    fn event(kind: &str, object: Value) -> StripeEvent {
        let body = json!({
            "id": "evt_unit", "object": "event", "type": kind, "created": 1_767_225_600,
            "data": {"object": object}, "livemode": false, "api_version": "2026-07-29.dahlia",
        });
        StripeEvent::parse(&serde_json::to_vec(&body).expect("JSON")).expect("an event")
    }

    /// Every handled type with the fixture it carries.
    const KINDS: &[(&str, &str)] = &[
        ("invoice.payment_failed", "invoice"),
        ("payment_intent.payment_failed", "payment_intent"),
        ("payment_intent.succeeded", "payment_intent"),
        ("invoice.paid", "invoice"),
        ("charge.refunded", "charge"),
        ("refund.created", "refund"),
        ("refund.updated", "refund"),
        ("charge.refund.updated", "refund"),
        ("charge.dispute.created", "dispute"),
        ("charge.dispute.funds_withdrawn", "dispute"),
        ("charge.dispute.funds_reinstated", "dispute"),
        ("charge.dispute.closed", "dispute"),
        ("customer.updated", "customer"),
        ("payment_method.automatically_updated", "payment_method"),
        ("customer.source.expiring", "card"),
    ];

    #[test]
    fn every_handled_type_is_read_from_the_fixtures_of_both_api_versions() {
        assert_eq!(KINDS.len(), HANDLED_TYPES.len());
        for version in ["current", "legacy"] {
            for (kind, name) in KINDS {
                let mut object = fixture(version, name);
                if *kind == "invoice.paid" {
                    // The published invoice is a draft: paid, it has paid its amount due.
                    object["amount_paid"] = object["amount_due"].clone();
                }
                let fact = StripeFact::of(&event(kind, object));
                let ok = match (&fact, *kind) {
                    (StripeFact::PaymentFailed { decline_code, .. }, _) => !decline_code.is_empty(),
                    (StripeFact::PaymentSucceeded { amount_minor, .. }, _) => *amount_minor > 0,
                    (StripeFact::ChargeRefunded { refunds, .. }, _) => {
                        refunds.as_ref().is_some_and(Vec::is_empty)
                    }
                    (StripeFact::Dispute { dispute, .. }, _) => {
                        dispute.id.starts_with("dp_") && dispute.payment.charge.is_some()
                    }
                    (StripeFact::Refund { refund, payment }, _) => {
                        refund.id.starts_with("re_")
                            && refund.is_succeeded()
                            && payment.charge.is_some()
                    }
                    (
                        StripeFact::CustomerUpdated {
                            stripe_customer, ..
                        },
                        _,
                    ) => stripe_customer.starts_with("cus_"),
                    (StripeFact::CardUpdated { card, .. }, _) => {
                        card.brand == "visa" && card.last4 == "4242"
                    }
                    (StripeFact::CardExpiring { card, .. }, _) => {
                        card.brand == "visa" && card.id.starts_with("card_")
                    }
                    (StripeFact::Unhandled { .. }, _) => false,
                };
                assert!(ok, "{version} {kind}: {fact:?}");
            }
        }
    }

    #[test]
    fn the_published_fixtures_carry_no_recur_metadata() {
        for version in ["current", "legacy"] {
            for (kind, name) in KINDS {
                match StripeFact::of(&event(kind, fixture(version, name))) {
                    StripeFact::PaymentFailed { payment, .. }
                    | StripeFact::PaymentSucceeded { payment, .. }
                    | StripeFact::ChargeRefunded { payment, .. }
                    | StripeFact::Refund { payment, .. } => {
                        assert_eq!(payment.recur_invoice, None, "{version} {kind}");
                    }
                    StripeFact::CustomerUpdated { recur_customer, .. }
                    | StripeFact::CardUpdated { recur_customer, .. }
                    | StripeFact::CardExpiring { recur_customer, .. } => {
                        assert_eq!(recur_customer, None, "{version} {kind}");
                    }
                    _ => {}
                }
            }
        }
    }

    #[test]
    fn unknown_types_and_objects_without_amounts_are_unhandled_not_errors() {
        for version in ["current", "legacy"] {
            let fact = StripeFact::of(&event(
                "customer.subscription.created",
                fixture(version, "subscription"),
            ));
            assert_eq!(
                fact,
                StripeFact::Unhandled {
                    reason: "type_not_handled"
                }
            );
            let fact = StripeFact::of(&event("payment_intent.succeeded", json!({"id": "pi_1"})));
            assert_eq!(
                fact,
                StripeFact::Unhandled {
                    reason: "no_amount"
                }
            );
            let fact = StripeFact::of(&event("customer.source.expiring", json!({})));
            assert_eq!(fact, StripeFact::Unhandled { reason: "no_card" });
        }
        assert!(StripeEvent::parse(b"{}").is_err());
        assert!(StripeEvent::parse(b"not json").is_err());
    }

    #[test]
    fn recur_metadata_and_decline_codes_are_read_from_a_payment_intent() {
        let mut intent = fixture("current", "payment_intent");
        intent["metadata"] = json!({
            "recur_invoice_id": "0190f0b8-0000-7000-8000-000000000001",
            "recur_customer_id": "0190f0b8-0000-7000-8000-000000000002",
            "recur_attempt": "2",
        });
        intent["last_payment_error"] = json!({
            "type": "card_error", "code": "card_declined",
            "decline_code": "insufficient_funds", "message": "Your card has insufficient funds.",
        });
        intent["latest_charge"] = json!("ch_1");
        let StripeFact::PaymentFailed {
            payment,
            decline_code,
            message,
        } = StripeFact::of(&event("payment_intent.payment_failed", intent))
        else {
            panic!("a failure");
        };
        assert_eq!(decline_code, "insufficient_funds");
        assert_eq!(message, "Your card has insufficient funds.");
        assert_eq!(payment.recur_attempt, Some(2));
        assert_eq!(payment.charge.as_deref(), Some("ch_1"));
        assert_eq!(
            payment.payment_intent.as_deref(),
            Some("pi_1PgafyB7WZ01zgkWSjxsAJo3")
        );
        assert_eq!(
            payment.recur_invoice.as_deref(),
            Some("0190f0b8-0000-7000-8000-000000000001")
        );
    }

    #[test]
    fn a_legacy_invoice_names_its_payment_and_its_expanded_payment_says_why_it_failed() {
        let mut invoice = fixture("legacy", "invoice");
        invoice["payment_intent"] = json!({
            "id": "pi_9", "object": "payment_intent",
            "metadata": {"recur_invoice_id": "inv", "recur_attempt": "1"},
            "last_payment_error": {"code": "expired_card", "message": "Your card has expired."},
        });
        let StripeFact::PaymentFailed {
            payment,
            decline_code,
            ..
        } = StripeFact::of(&event("invoice.payment_failed", invoice))
        else {
            panic!("a failure");
        };
        assert_eq!(decline_code, "expired_card");
        assert_eq!(payment.payment_intent.as_deref(), Some("pi_9"));
        assert_eq!(payment.recur_invoice.as_deref(), Some("inv"));
        assert_eq!(payment.recur_attempt, Some(1));
    }

    #[test]
    fn a_dispute_reads_its_fee_from_its_balance_transactions() {
        let mut dispute = fixture("current", "dispute");
        dispute["status"] = json!("needs_response");
        dispute["balance_transactions"] = json!([
            {"id": "txn_1", "amount": -1000, "fee": 1500, "currency": "usd"},
            {"id": "txn_2", "amount": 1000, "fee": -1500, "currency": "usd"},
        ]);
        let StripeFact::Dispute { dispute, step } =
            StripeFact::of(&event("charge.dispute.created", dispute))
        else {
            panic!("a dispute");
        };
        assert_eq!(step, DisputeStep::Created);
        assert!(!dispute.is_inquiry());
        assert_eq!(dispute.fee, Some((1500, "usd".into())));
        assert_eq!(dispute.fee_returned, Some((1500, "usd".into())));
        assert_eq!(
            dispute.payment.charge.as_deref(),
            Some("ch_1PgafuB7WZ01zgkWXYmPNZs8")
        );
    }

    #[test]
    fn a_refund_reads_its_status_and_the_key_recurs_gateway_wrote() {
        let mut refund = fixture("current", "refund");
        refund["status"] = json!("pending");
        refund["metadata"] = json!({"recur_refund": "inv-refund-2"});
        let StripeFact::Refund { refund: read, .. } =
            StripeFact::of(&event("refund.created", refund.clone()))
        else {
            panic!("a refund");
        };
        assert!(!read.is_succeeded());
        assert_eq!(read.recur_refund.as_deref(), Some("inv-refund-2"));
        assert!(read.has_metadata);
        refund.as_object_mut().map(|r| r.remove("metadata"));
        let StripeFact::Refund { refund: read, .. } =
            StripeFact::of(&event("charge.refund.updated", refund))
        else {
            panic!("a refund");
        };
        assert!(!read.has_metadata);
        assert_eq!(read.recur_refund, None);
    }

    #[test]
    fn a_customer_update_takes_only_what_changed() {
        let mut customer = fixture("current", "customer");
        customer["name"] = json!("Jenny Rosen");
        customer["email"] = json!("jenny@example.com");
        let mut stripe = event("customer.updated", customer.clone());
        stripe.previous_attributes = Some(
            json!({"email": "old@example.com"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        );
        let StripeFact::CustomerUpdated { contact, .. } = StripeFact::of(&stripe) else {
            panic!("a customer");
        };
        assert_eq!(contact.email.as_deref(), Some("jenny@example.com"));
        assert_eq!(contact.name, None, "the name did not change");
        assert_eq!(contact.phone, None);
        // Without previous_attributes: everything that is set.
        let StripeFact::CustomerUpdated { contact, .. } =
            StripeFact::of(&event("customer.updated", customer))
        else {
            panic!("a customer");
        };
        assert_eq!(contact.name.as_deref(), Some("Jenny Rosen"));
        assert!(
            !format!("{contact:?}").contains("Jenny"),
            "no personal data in Debug"
        );
    }
}
