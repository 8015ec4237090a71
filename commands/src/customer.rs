//! Customer: segment, tax location, payment method (tokens only) and credit balance.
//! Contact details (personal data) live apart, in [`Contact`], so they can be erased.

use crate::tagged::domain_events;
use std::collections::BTreeMap;

use recur_ledger::Money;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::aggregate::{Aggregate, DomainEvent};
use crate::error::DomainError;
use crate::ids::{CustomerId, InvoiceId};
use crate::privacy::Encrypted;
use crate::tax::TaxLocation;

/// Which dunning policy applies; trial and high-value customers are treated differently.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Segment {
    /// Everyone else.
    #[default]
    Standard,
    /// Worth a personal call.
    HighValue,
    /// Still in (or just out of) a trial.
    Trial,
}

/// Why a customer's personal data was erased.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErasureReason {
    /// The person asked (GDPR article 17, CCPA deletion).
    #[default]
    RequestedByCustomer,
    /// The retention period ended.
    RetentionExpired,
    /// Another lawful ground, recorded outside Recur.
    Other,
}

/// A card as the payment provider describes it: token, brand, last 4 digits, expiry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentMethod {
    /// The provider's token (`pm_…`); never a card number.
    pub token: String,
    /// `visa`, `mastercard`, …
    pub brand: String,
    /// Last four digits.
    pub last4: String,
    /// Expiry month, 1–12.
    pub exp_month: u8,
    /// Expiry year, four digits.
    pub exp_year: u16,
    /// The provider's customer the card is attached to (`cus_…`), when the
    /// provider has customers (Stripe); absent in events written before it
    /// existed, and never written when absent, so those events read the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_customer: Option<String>,
}

/// True when `text` holds 13–19 digits in a row (spaces and dashes allowed between)
/// that pass the Luhn check: it looks like a card number.
pub fn looks_like_card_number(text: &str) -> bool {
    let mut digits: Vec<u32> = Vec::new();
    let check = |digits: &[u32]| {
        (13..=19).contains(&digits.len()) && {
            let sum: u32 = digits
                .iter()
                .rev()
                .enumerate()
                .map(|(i, &d)| {
                    if i % 2 == 1 {
                        let doubled = d * 2;
                        if doubled > 9 { doubled - 9 } else { doubled }
                    } else {
                        d
                    }
                })
                .sum();
            sum.is_multiple_of(10)
        }
    };
    for c in text.chars() {
        if let Some(d) = c.to_digit(10) {
            digits.push(d);
        } else if c == ' ' || c == '-' {
            continue;
        } else {
            if check(&digits) {
                return true;
            }
            digits.clear();
        }
    }
    check(&digits)
}

impl PaymentMethod {
    /// Checks the token (3–255 of letters, digits, `_`, never card-number-like),
    /// brand, last4 (four digits) and an expiry that has not passed at `now`.
    ///
    /// # Errors
    /// [`DomainError::CardNumberRejected`] or [`DomainError::InvalidField`].
    pub fn validate(&self, now: OffsetDateTime) -> Result<(), DomainError> {
        for (field, value) in [("token", &self.token), ("brand", &self.brand)] {
            if looks_like_card_number(value) {
                return Err(DomainError::CardNumberRejected { field });
            }
        }
        let bad = |field: &'static str, reason: &str| DomainError::InvalidField {
            field,
            reason: reason.into(),
        };
        let token_ok = (3..=255).contains(&self.token.len())
            && self
                .token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !token_ok {
            return Err(bad("token", "3 to 255 letters, digits or '_'"));
        }
        if self.brand.is_empty()
            || self.brand.len() > 32
            || !self
                .brand
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_')
        {
            return Err(bad("brand", "1 to 32 lowercase letters or '_'"));
        }
        if let Some(provider_customer) = &self.provider_customer {
            if looks_like_card_number(provider_customer) {
                return Err(DomainError::CardNumberRejected {
                    field: "provider_customer",
                });
            }
            let ok = (3..=255).contains(&provider_customer.len())
                && provider_customer
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !ok {
                return Err(bad("provider_customer", "3 to 255 letters, digits or '_'"));
            }
        }
        if self.last4.len() != 4 || !self.last4.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("last4", "exactly four digits"));
        }
        if !(1..=12).contains(&self.exp_month) || !(2000..=2100).contains(&self.exp_year) {
            return Err(bad("expiry", "month 1-12 and a four-digit year"));
        }
        let now_ym = (now.year() * 12) + i32::from(now.month() as u8);
        let exp_ym = (i32::from(self.exp_year) * 12) + i32::from(self.exp_month);
        if exp_ym < now_ym {
            return Err(bad("expiry", "the card has expired"));
        }
        Ok(())
    }
}

/// What can be asked of a customer.
#[derive(Clone, Debug)]
pub enum CustomerCommand {
    /// Create the customer.
    Create {
        /// Its id.
        id: CustomerId,
        /// Dunning segment.
        segment: Segment,
        /// Where it is taxed, if known.
        tax_location: Option<TaxLocation>,
        /// Now, from the clock.
        now: OffsetDateTime,
    },
    /// Put a card on file, replacing any other.
    AttachPaymentMethod {
        /// The card.
        method: PaymentMethod,
        /// Now, from the clock (expiry check).
        now: OffsetDateTime,
    },
    /// The card network renewed the card on file (same token, new expiry or
    /// number): decided on the card on file when appended, so a card the
    /// customer replaced meanwhile is never put back.
    UpdateCardOnFile {
        /// The card's token, as on file.
        token: String,
        /// Its brand now.
        brand: String,
        /// Its last four digits now.
        last4: String,
        /// Its expiry month now.
        exp_month: u8,
        /// Its expiry year now.
        exp_year: u16,
        /// Now, from the clock (expiry check).
        now: OffsetDateTime,
    },
    /// Remove the card on file.
    DetachPaymentMethod,
    /// Set the tax location.
    SetTaxLocation(TaxLocation),
    /// Set the dunning segment.
    SetSegment(Segment),
    /// Note that the contact details changed (they live in their own stream):
    /// the customer's version moves, so `If-Match` guards contact updates too.
    MarkContactChanged {
        /// Now.
        now: OffsetDateTime,
    },
    /// Record that the customer's personal data was erased (its data key is
    /// destroyed by the billing service); once only.
    ErasePersonalData {
        /// Why.
        reason: ErasureReason,
        /// Now.
        now: OffsetDateTime,
    },
    /// Owe the customer credit (a downgrade's net), once per invoice.
    GrantCredit {
        /// The invoice that gave rise to it.
        invoice_id: InvoiceId,
        /// Positive.
        amount: Money,
    },
    /// Use up to `max` of the credit balance on an invoice, once per invoice.
    ApplyCredit {
        /// The invoice paid with it.
        invoice_id: InvoiceId,
        /// The invoice's total.
        max: Money,
    },
    /// Note that the payment provider says the card on file expires soon (at
    /// the end of its expiry month): a fact for dunning to act on before a
    /// charge fails. Nothing when it is not the card on file (another card,
    /// or one since updated) or when it was noted already.
    NoteCardExpiring {
        /// The expiring card's token as the provider names it.
        token: String,
        /// Its last four digits (a card the provider names otherwise than
        /// Recur's token is matched by these and the expiry).
        last4: String,
        /// Expiry month, 1–12.
        exp_month: u8,
        /// Expiry year, four digits.
        exp_year: u16,
        /// When the provider said so.
        now: OffsetDateTime,
    },
}

/// A card on file that the provider says expires soon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardExpiry {
    /// The card on file's token.
    pub token: String,
    /// Expiry month, 1–12.
    pub exp_month: u8,
    /// Expiry year, four digits.
    pub exp_year: u16,
}

domain_events! {
    /// What happened to a customer.
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(tag = "type")]
    pub enum CustomerEvent {
        /// Created.
        CustomerCreated {
            /// Its id.
            customer_id: CustomerId,
            /// Dunning segment.
            segment: Segment,
            /// Tax location.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            tax_location: Option<TaxLocation>,
            /// When.
            #[serde(with = "time::serde::rfc3339")]
            created_at: OffsetDateTime,
        },
        /// A card was put on file.
        PaymentMethodAttached {
            /// The card (token, brand, last4, expiry).
            method: PaymentMethod,
        },
        /// The card on file was removed.
        PaymentMethodDetached {
            /// Its token.
            token: String,
        },
        /// The tax location changed.
        TaxLocationSet {
            /// The new location.
            tax_location: TaxLocation,
        },
        /// The segment changed.
        SegmentSet {
            /// The new segment.
            segment: Segment,
        },
        /// The contact details changed (they, personal data, are in the contact
        /// stream; this event holds none).
        ContactChanged {
            /// When.
            #[serde(with = "time::serde::rfc3339")]
            at: OffsetDateTime,
        },
        /// The customer's personal data was erased: its data key is destroyed,
        /// so what its events hold of the person can no longer be read.
        PersonalDataErased {
            /// Why.
            reason: ErasureReason,
            /// When.
            #[serde(with = "time::serde::rfc3339")]
            at: OffsetDateTime,
        },
        /// Credit owed to the customer (no postings: the invoice event carries them).
        CreditGranted {
            /// The source invoice.
            invoice_id: InvoiceId,
            /// How much.
            amount: Money,
        },
        /// Credit used on an invoice (no postings: the invoice event carries them).
        CreditApplied {
            /// The invoice.
            invoice_id: InvoiceId,
            /// How much.
            amount: Money,
        },
        /// The payment provider says the card on file expires at the end of
        /// its expiry month (Stripe's `customer.source.expiring`): a
        /// pre-dunning fact, for asking the customer for a new card before a
        /// charge fails. Cleared by a card put on file.
        CardExpiring {
            /// The card on file's token and expiry.
            card: CardExpiry,
            /// When the provider said so.
            #[serde(with = "time::serde::rfc3339")]
            at: OffsetDateTime,
        },
    }
}

impl DomainEvent for CustomerEvent {
    fn event_type(&self) -> &'static str {
        match self {
            CustomerEvent::CustomerCreated { .. } => "CustomerCreated",
            CustomerEvent::PaymentMethodAttached { .. } => "PaymentMethodAttached",
            CustomerEvent::PaymentMethodDetached { .. } => "PaymentMethodDetached",
            CustomerEvent::TaxLocationSet { .. } => "TaxLocationSet",
            CustomerEvent::SegmentSet { .. } => "SegmentSet",
            CustomerEvent::ContactChanged { .. } => "ContactChanged",
            CustomerEvent::PersonalDataErased { .. } => "PersonalDataErased",
            CustomerEvent::CreditGranted { .. } => "CreditGranted",
            CustomerEvent::CreditApplied { .. } => "CreditApplied",
            CustomerEvent::CardExpiring { .. } => "CardExpiring",
        }
    }
}

/// A customer's state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Customer {
    /// Its id, once created.
    pub id: Option<CustomerId>,
    /// Dunning segment.
    pub segment: Segment,
    /// Tax location.
    pub tax_location: Option<TaxLocation>,
    /// The card on file.
    pub payment_method: Option<PaymentMethod>,
    /// Credit owed to the customer, if any was ever granted.
    pub credit_balance: Option<Money>,
    /// Credit granted, per source invoice (retries are no-ops).
    pub credit_granted: BTreeMap<InvoiceId, Money>,
    /// Credit applied, per invoice (retries answer with the same amount).
    pub credit_applied: BTreeMap<InvoiceId, Money>,
    /// When its personal data was erased, if it was.
    pub erased_at: Option<OffsetDateTime>,
    /// The card on file, when the provider said it expires soon.
    pub card_expiring: Option<CardExpiry>,
    /// Every customer the provider ever held for it (`cus_…`), from its cards:
    /// erasure destroys the data keys of their Stripe events too.
    pub provider_customers: std::collections::BTreeSet<String>,
}

impl Aggregate for Customer {
    type Event = CustomerEvent;
    type Command = CustomerCommand;

    fn decide(&self, command: CustomerCommand) -> Result<Vec<CustomerEvent>, DomainError> {
        if let CustomerCommand::Create {
            id,
            segment,
            tax_location,
            now,
        } = command
        {
            if self.id.is_some() {
                return Err(DomainError::AlreadyExists {
                    kind: "customer",
                    id: id.to_string(),
                });
            }
            return Ok(vec![CustomerEvent::CustomerCreated {
                customer_id: id,
                segment,
                tax_location,
                created_at: now,
            }]);
        }
        if self.id.is_none() {
            return Err(DomainError::NotFound {
                kind: "customer",
                id: String::new(),
            });
        }
        Ok(match command {
            CustomerCommand::Create { .. } => Vec::new(),
            CustomerCommand::AttachPaymentMethod { method, now } => {
                method.validate(now)?;
                if self.payment_method.as_ref() == Some(&method) {
                    Vec::new()
                } else {
                    vec![CustomerEvent::PaymentMethodAttached { method }]
                }
            }
            CustomerCommand::UpdateCardOnFile {
                token,
                brand,
                last4,
                exp_month,
                exp_year,
                now,
            } => match &self.payment_method {
                // Not the card on file (replaced or removed meanwhile), or an
                // older expiry than it has: nothing.
                Some(on_file)
                    if on_file.token == token
                        && (exp_year, exp_month) >= (on_file.exp_year, on_file.exp_month) =>
                {
                    let method = PaymentMethod {
                        brand,
                        last4,
                        exp_month,
                        exp_year,
                        ..on_file.clone()
                    };
                    method.validate(now)?;
                    if *on_file == method {
                        Vec::new()
                    } else {
                        vec![CustomerEvent::PaymentMethodAttached { method }]
                    }
                }
                _ => Vec::new(),
            },
            CustomerCommand::DetachPaymentMethod => match &self.payment_method {
                Some(method) => vec![CustomerEvent::PaymentMethodDetached {
                    token: method.token.clone(),
                }],
                None => Vec::new(),
            },
            CustomerCommand::SetTaxLocation(tax_location) => {
                if self.tax_location.as_ref() == Some(&tax_location) {
                    Vec::new()
                } else {
                    vec![CustomerEvent::TaxLocationSet { tax_location }]
                }
            }
            CustomerCommand::SetSegment(segment) => {
                if self.segment == segment {
                    Vec::new()
                } else {
                    vec![CustomerEvent::SegmentSet { segment }]
                }
            }
            CustomerCommand::MarkContactChanged { now } => {
                if self.erased_at.is_some() {
                    return Err(DomainError::PersonalDataErased);
                }
                vec![CustomerEvent::ContactChanged { at: now }]
            }
            CustomerCommand::ErasePersonalData { reason, now } => {
                if self.erased_at.is_some() {
                    Vec::new()
                } else {
                    vec![CustomerEvent::PersonalDataErased { reason, at: now }]
                }
            }
            CustomerCommand::GrantCredit { invoice_id, amount } => {
                if !amount.is_positive() {
                    return Err(DomainError::AmountNotPositive {
                        field: "credit",
                        amount: amount.amount().to_string(),
                    });
                }
                if let Some(balance) = self.credit_balance {
                    balance.checked_add(amount)?;
                }
                if self.credit_granted.contains_key(&invoice_id) {
                    Vec::new()
                } else {
                    vec![CustomerEvent::CreditGranted { invoice_id, amount }]
                }
            }
            CustomerCommand::ApplyCredit { invoice_id, max } => {
                if self.credit_applied.contains_key(&invoice_id) {
                    return Ok(Vec::new());
                }
                let Some(balance) = self.credit_balance else {
                    return Ok(Vec::new());
                };
                if balance.currency() != max.currency() {
                    return Err(DomainError::CurrencyMismatch {
                        expected: balance.currency().code().into(),
                        got: max.currency().code().into(),
                    });
                }
                let amount = if balance.amount() < max.amount() {
                    balance
                } else {
                    max
                };
                if amount.is_positive() {
                    vec![CustomerEvent::CreditApplied { invoice_id, amount }]
                } else {
                    Vec::new()
                }
            }
            CustomerCommand::NoteCardExpiring {
                token,
                last4,
                exp_month,
                exp_year,
                now,
            } => {
                let Some(on_file) = &self.payment_method else {
                    return Ok(Vec::new());
                };
                // The card on file, with the expiry the provider names: a card
                // updated since (a new expiry) is not expiring any more.
                let same_card = on_file.token == token || on_file.last4 == last4;
                let same_expiry = on_file.exp_month == exp_month && on_file.exp_year == exp_year;
                let card = CardExpiry {
                    token: on_file.token.clone(),
                    exp_month,
                    exp_year,
                };
                if !same_card || !same_expiry || self.card_expiring.as_ref() == Some(&card) {
                    Vec::new()
                } else {
                    vec![CustomerEvent::CardExpiring { card, at: now }]
                }
            }
        })
    }

    fn evolve(&mut self, event: &CustomerEvent) {
        match event {
            CustomerEvent::CustomerCreated {
                customer_id,
                segment,
                tax_location,
                ..
            } => {
                self.id = Some(*customer_id);
                self.segment = *segment;
                self.tax_location.clone_from(tax_location);
            }
            CustomerEvent::PaymentMethodAttached { method } => {
                if let Some(provider_customer) = &method.provider_customer {
                    self.provider_customers.insert(provider_customer.clone());
                }
                self.payment_method = Some(method.clone());
                self.card_expiring = None;
            }
            CustomerEvent::PaymentMethodDetached { .. } => {
                self.payment_method = None;
                self.card_expiring = None;
            }
            CustomerEvent::TaxLocationSet { tax_location } => {
                self.tax_location = Some(tax_location.clone());
            }
            CustomerEvent::SegmentSet { segment } => self.segment = *segment,
            CustomerEvent::ContactChanged { .. } => {}
            CustomerEvent::PersonalDataErased { at, .. } => self.erased_at = Some(*at),
            CustomerEvent::CreditGranted { invoice_id, amount } => {
                self.credit_granted.insert(*invoice_id, *amount);
                let balance = self
                    .credit_balance
                    .unwrap_or(Money::zero(amount.currency()));
                self.credit_balance = balance.checked_add(*amount).ok();
            }
            CustomerEvent::CreditApplied { invoice_id, amount } => {
                self.credit_applied.insert(*invoice_id, *amount);
                let balance = self
                    .credit_balance
                    .unwrap_or(Money::zero(amount.currency()));
                self.credit_balance = balance.checked_sub(*amount).ok();
            }
            CustomerEvent::CardExpiring { card, .. } => {
                self.card_expiring = Some(card.clone());
            }
        }
    }
}

/// A customer's contact details: personal data, kept in its own stream
/// (`contact-<customer id>`), encrypted under the customer's data key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Contact {
    /// The latest details, as stored.
    pub details: Option<StoredContact>,
}

/// Contact details as an event holds them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoredContact {
    /// Written in clear, before personal data was encrypted (docs/security.md
    /// says how to move such a ledger to one without them).
    Clear(ContactDetails),
    /// Encrypted under the customer's data key: the JSON of [`ContactDetails`].
    Encrypted(Encrypted),
}

/// Name, email and phone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactDetails {
    /// Full name.
    pub name: String,
    /// Email address.
    pub email: String,
    /// Phone number, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
}

impl ContactDetails {
    /// Checks lengths, an `@` in the email, and that nothing is card-number-like.
    ///
    /// # Errors
    /// [`DomainError::InvalidField`] or [`DomainError::CardNumberRejected`].
    pub fn validate(&self) -> Result<(), DomainError> {
        let bad = |field: &'static str, reason: &str| DomainError::InvalidField {
            field,
            reason: reason.into(),
        };
        crate::text::check_name("name", &self.name, crate::text::NAME_CHARS_MAX)?;
        crate::text::check_text("email", &self.email, 254, false)?;
        let email_ok = self.email.len() <= 254
            && self
                .email
                .split_once('@')
                .is_some_and(|(user, host)| !user.is_empty() && host.contains('.'));
        if !email_ok {
            return Err(bad("email", "an address like name@example.com"));
        }
        if let Some(phone) = &self.phone
            && (phone.len() > 32
                || !phone
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b"+ -()".contains(&b)))
        {
            return Err(bad(
                "phone",
                "up to 32 digits, spaces, '+', '-', '(' or ')'",
            ));
        }
        for (field, value) in [("name", &self.name), ("email", &self.email)] {
            if looks_like_card_number(value) {
                return Err(DomainError::CardNumberRejected { field });
            }
        }
        Ok(())
    }
}

domain_events! {
    /// Contact details changed.
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(tag = "type")]
    pub enum ContactEvent {
        /// New details, in clear: what ledgers written before encryption hold.
        /// Never written now; still read.
        ContactDetailsUpdated {
            /// The details.
            details: ContactDetails,
        },
        /// New details, encrypted under the customer's data key.
        ContactDetailsEncrypted {
            /// The JSON of the details, encrypted.
            encrypted: Encrypted,
        },
    }
}

impl DomainEvent for ContactEvent {
    fn event_type(&self) -> &'static str {
        match self {
            ContactEvent::ContactDetailsUpdated { .. } => "ContactDetailsUpdated",
            ContactEvent::ContactDetailsEncrypted { .. } => "ContactDetailsEncrypted",
        }
    }
}

impl Aggregate for Contact {
    type Event = ContactEvent;
    /// The new details, already checked and encrypted by the billing service
    /// (which compares them with the current ones: equal details write nothing).
    type Command = Encrypted;

    fn decide(&self, encrypted: Encrypted) -> Result<Vec<ContactEvent>, DomainError> {
        Ok(vec![ContactEvent::ContactDetailsEncrypted { encrypted }])
    }

    fn evolve(&mut self, event: &ContactEvent) {
        self.details = Some(match event {
            ContactEvent::ContactDetailsUpdated { details } => {
                StoredContact::Clear(details.clone())
            }
            ContactEvent::ContactDetailsEncrypted { encrypted } => {
                StoredContact::Encrypted(encrypted.clone())
            }
        });
    }
}

/// Which personal data was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PersonalDataUse {
    /// The contact details (a customer shown to an admin or support key).
    Contact,
    /// Everything, decrypted (an access request's export).
    Export,
}

domain_events! {
    /// Reads of a customer's personal data: who (the event's actor), from which
    /// request, when, and what. Kept in their own stream (`access-<customer>`)
    /// so reads never move the customer's version.
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(tag = "type")]
    pub enum AccessEvent {
        /// Personal data was read.
        PersonalDataRead {
            /// What was read.
            what: PersonalDataUse,
            /// When.
            #[serde(with = "time::serde::rfc3339")]
            at: OffsetDateTime,
        },
    }
}

impl DomainEvent for AccessEvent {
    fn event_type(&self) -> &'static str {
        "PersonalDataRead"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Events written before `provider_customer` existed read as they did, and
    /// a card without one is written byte for byte as before.
    #[test]
    fn a_card_without_a_provider_customer_is_stored_as_before() {
        let before = r#"{"type":"PaymentMethodAttached","method":{"token":"pm_card_visa","brand":"visa","last4":"4242","exp_month":12,"exp_year":2030}}"#;
        let event: CustomerEvent = serde_json::from_str(before)
            .map_err(|e| e.to_string())
            .expect("an old event");
        let CustomerEvent::PaymentMethodAttached { method } = &event else {
            panic!("{event:?}");
        };
        assert_eq!(method.provider_customer, None);
        assert_eq!(serde_json::to_string(&event).ok().as_deref(), Some(before));
        let mut linked = method.clone();
        linked.provider_customer = Some("cus_123".into());
        let written = serde_json::to_string(&linked).unwrap_or_default();
        assert!(
            written.contains(r#""provider_customer":"cus_123""#),
            "{written}"
        );
    }

    #[test]
    fn a_network_card_update_applies_only_to_the_card_still_on_file() {
        let now = time::macros::datetime!(2027-01-04 09:00 UTC);
        let card = |token: &str, exp_year: u16| PaymentMethod {
            token: token.into(),
            brand: "visa".into(),
            last4: "4242".into(),
            exp_month: 12,
            exp_year,
            provider_customer: Some("cus_1".into()),
        };
        let mut customer = Customer {
            id: Some(CustomerId(uuid::Uuid::now_v7())),
            ..Customer::default()
        };
        customer.evolve(&CustomerEvent::PaymentMethodAttached {
            method: card("pm_a", 2027),
        });
        let update = |token: &str, exp_year: u16| CustomerCommand::UpdateCardOnFile {
            token: token.into(),
            brand: "visa".into(),
            last4: "1881".into(),
            exp_month: 12,
            exp_year,
            now,
        };
        // The card on file, renewed: the new number and expiry, the rest kept.
        let events = customer
            .decide(update("pm_a", 2030))
            .map_err(|e| e.to_string());
        let events = events.expect("decided");
        let [CustomerEvent::PaymentMethodAttached { method }] = events.as_slice() else {
            panic!("{events:?}");
        };
        assert_eq!(
            (
                method.last4.as_str(),
                method.exp_year,
                method.provider_customer.as_deref()
            ),
            ("1881", 2030, Some("cus_1"))
        );
        // An older expiry than on file: nothing.
        assert_eq!(customer.decide(update("pm_a", 2026)).ok(), Some(vec![]));
        // The customer replaced the card meanwhile: the old one is never put back.
        customer.evolve(&CustomerEvent::PaymentMethodAttached {
            method: card("pm_b", 2031),
        });
        assert_eq!(customer.decide(update("pm_a", 2030)).ok(), Some(vec![]));
        // Or removed it.
        customer.evolve(&CustomerEvent::PaymentMethodDetached {
            token: "pm_b".into(),
        });
        assert_eq!(customer.decide(update("pm_b", 2032)).ok(), Some(vec![]));
    }

    #[test]
    fn card_numbers_are_recognised_with_or_without_separators() {
        assert!(looks_like_card_number("4242424242424242"));
        assert!(looks_like_card_number("tok 4242 4242 4242 4242"));
        assert!(looks_like_card_number("4000-0000-0000-0341"));
        assert!(!looks_like_card_number("pm_card_visa"));
        assert!(!looks_like_card_number("4242424242424241"));
        assert!(!looks_like_card_number("1234"));
    }
}
