//! Payment gateways: the trait, and a simulated gateway that follows Stripe's test cards.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use recur_ledger::Money;

use crate::customer::PaymentMethod;
use crate::ids::{CustomerId, InvoiceId};
use crate::invoice::ChargeOutcome;

/// A boxed future, so the trait stays object-safe.
pub type GatewayFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, GatewayError>> + Send + 'a>>;

/// The gateway could not give an answer (network, outage); retry with the same key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("gateway unavailable: {0}")]
pub struct GatewayError(pub String);

/// Why a card could not be put on file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CardError {
    /// The card was declined when attached.
    #[error("card declined when attached: {decline_code}")]
    Declined {
        /// Stripe's decline code.
        decline_code: String,
    },
    /// Not a card number the simulated gateway knows.
    #[error("unknown test card: use one of Stripe's test card numbers")]
    UnknownCard,
    /// The provider refused the token itself (no such payment method, one of
    /// another account, not a card): the client's mistake, not a decline.
    #[error("the payment provider refused the token: {reason}")]
    Rejected {
        /// What the provider said.
        reason: String,
    },
}

/// A card to put on file with the provider, by token (never a card number).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachRequest {
    /// Recur's customer.
    pub customer: CustomerId,
    /// The token and what the client said of the card (brand, last4, expiry):
    /// a real provider answers with its own, which are the ones kept.
    pub method: PaymentMethod,
    /// The provider's customer already linked (`cus_…`, from the card on file),
    /// so that a new card joins it rather than a second provider customer.
    pub provider_customer: Option<String>,
}

/// A charge: the key makes a retried call return the first call's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChargeRequest {
    /// `<invoice id>-attempt-<n>`.
    pub idempotency_key: String,
    /// The card token.
    pub payment_method: String,
    /// Amount to collect.
    pub amount: Money,
    /// Recur's customer (written to the provider's payment as metadata).
    pub customer: CustomerId,
    /// The invoice being collected (metadata too).
    pub invoice: InvoiceId,
    /// Which attempt on the invoice this is, from 1.
    pub attempt_no: u32,
    /// The provider's customer the card belongs to (`cus_…`), from the card on
    /// file; a provider charges a saved card only through its customer.
    pub provider_customer: Option<String>,
    /// The customer is there to authenticate (they confirmed the payment on
    /// the update-card page): an on-session charge. Otherwise off-session,
    /// where a bank that asks for authentication declines
    /// (`authentication_required`).
    pub customer_present: bool,
}

/// A refund of (part of) a charge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefundRequest {
    /// `<invoice id>-refund-<n>`.
    pub idempotency_key: String,
    /// The charge to refund.
    pub charge_id: String,
    /// Amount.
    pub amount: Money,
}

/// What Recur needs from a payment provider.
pub trait PaymentGateway: Send + Sync {
    /// The gateway's name, recorded with attempts (`simulated`, `stripe`).
    fn name(&self) -> &'static str;

    /// Puts a card on file with the provider: links it to the provider's
    /// customer (creating that customer when none is linked yet) and answers
    /// with the card as the provider describes it, which is what Recur keeps.
    /// `Ok(Err(_))`: the provider refused the card (declined when attached).
    fn attach_payment_method<'a>(
        &'a self,
        request: &'a AttachRequest,
    ) -> GatewayFuture<'a, Result<PaymentMethod, CardError>>;

    /// Charges a card. A retried key returns the first outcome and moves no money.
    fn charge<'a>(&'a self, request: &'a ChargeRequest) -> GatewayFuture<'a, ChargeOutcome>;

    /// Refunds part or all of a charge; returns the refund id. Idempotent per key.
    fn refund<'a>(&'a self, request: &'a RefundRequest) -> GatewayFuture<'a, String>;
}

/// Stripe's test cards and what they do, with the PaymentMethod ids Stripe gives them.
const TEST_CARDS: &[(&str, &str, &str, Option<&str>, bool)] = &[
    // (number, token, brand, decline code, declines when attached)
    ("4242424242424242", "pm_card_visa", "visa", None, false),
    (
        "5555555555554444",
        "pm_card_mastercard",
        "mastercard",
        None,
        false,
    ),
    (
        "4000000000000002",
        "pm_card_chargeDeclined",
        "visa",
        Some("card_declined"),
        true,
    ),
    (
        "4000000000009995",
        "pm_card_chargeDeclinedInsufficientFunds",
        "visa",
        Some("insufficient_funds"),
        true,
    ),
    (
        "4000000000000069",
        "pm_card_chargeDeclinedExpiredCard",
        "visa",
        Some("expired_card"),
        true,
    ),
    (
        "4000000000000119",
        "pm_card_chargeDeclinedProcessingError",
        "visa",
        Some("processing_error"),
        true,
    ),
    (
        "4000000000000341",
        "pm_card_chargeCustomerFail",
        "visa",
        Some("card_declined"),
        false,
    ),
    // The bank asks for authentication (3-D Secure) on every charge: off
    // session it declines; with the customer present the simulated challenge
    // is passed.
    (
        "4000002760003184",
        "pm_card_authenticationRequired",
        "visa",
        Some("authentication_required"),
        false,
    ),
];

/// The decline code a token's charges get, if they fail.
fn decline_for(token: &str) -> Option<&'static str> {
    TEST_CARDS
        .iter()
        .find(|(_, t, ..)| *t == token)
        .and_then(|(_, _, _, code, _)| *code)
}

/// A gateway that behaves like Stripe's test mode, in memory: charges succeed or
/// decline by test card, and keys are remembered so retries never charge twice.
#[derive(Clone, Default)]
pub struct SimulatedGateway {
    inner: Arc<Mutex<Simulated>>,
}

#[derive(Default)]
struct Simulated {
    charges: HashMap<String, ChargeOutcome>,
    /// Per key: the refund id, the charge and the amount, as first asked.
    refunds: HashMap<String, (String, String, Money)>,
    /// Distinct successful charges (what would appear on a statement).
    money_moved: u64,
    /// Calls, counting retries.
    calls: u64,
    /// Fail the next n calls as unavailable (tests of crash and retry).
    outages: u32,
    /// Do the next n calls but lose their answers (a timeout after the charge).
    lost_answers: u32,
}

impl SimulatedGateway {
    /// A fresh gateway.
    pub fn new() -> Self {
        Self::default()
    }

    /// What Stripe.js would give for a test card number: the card's PaymentMethod
    /// (token, brand, last4, expiry). The number itself never goes further.
    ///
    /// # Errors
    /// [`CardError::Declined`] for the cards Stripe declines on attach;
    /// [`CardError::UnknownCard`] for other numbers.
    pub fn tokenize(
        card_number: &str,
        exp_month: u8,
        exp_year: u16,
    ) -> Result<PaymentMethod, CardError> {
        let digits: String = card_number.chars().filter(char::is_ascii_digit).collect();
        let Some((number, token, brand, code, declines_on_attach)) =
            TEST_CARDS.iter().find(|(n, ..)| *n == digits)
        else {
            return Err(CardError::UnknownCard);
        };
        if *declines_on_attach {
            return Err(CardError::Declined {
                decline_code: code.unwrap_or("card_declined").to_owned(),
            });
        }
        Ok(PaymentMethod {
            token: (*token).to_owned(),
            brand: (*brand).to_owned(),
            last4: number[number.len() - 4..].to_owned(),
            exp_month,
            exp_year,
            provider_customer: None,
        })
    }

    /// The card a test token stands for (`pm_card_visa`, …), as
    /// [`SimulatedGateway::tokenize`] gives it for the card's number: what a
    /// customer who only has the token (the update-card page) puts on file.
    ///
    /// # Errors
    /// [`CardError::Declined`] for the cards Stripe declines on attach;
    /// [`CardError::UnknownCard`] for other tokens.
    pub fn card_of_token(
        token: &str,
        exp_month: u8,
        exp_year: u16,
    ) -> Result<PaymentMethod, CardError> {
        let (number, ..) = TEST_CARDS
            .iter()
            .find(|(_, t, ..)| *t == token)
            .ok_or(CardError::UnknownCard)?;
        Self::tokenize(number, exp_month, exp_year)
    }

    /// The PaymentMethod of a card that declines at charge time with `decline_code`
    /// (as if it had been attached while it still worked). For simulations where a
    /// working card later fails.
    pub fn failing_card(decline_code: &str, exp_month: u8, exp_year: u16) -> PaymentMethod {
        let (number, token) = TEST_CARDS
            .iter()
            .find(|(_, _, _, code, _)| *code == Some(decline_code))
            .map_or(
                ("4000000000000341", "pm_card_chargeCustomerFail"),
                |(n, t, ..)| (*n, *t),
            );
        PaymentMethod {
            token: token.to_owned(),
            brand: "visa".to_owned(),
            last4: number[number.len() - 4..].to_owned(),
            exp_month,
            exp_year,
            provider_customer: None,
        }
    }

    /// Makes the next `calls` calls fail as unavailable.
    pub fn fail_next_calls(&self, calls: u32) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.outages = calls;
        }
    }

    /// Performs the next `calls` calls but answers them as unavailable, as when the
    /// connection drops after the charge went through.
    pub fn lose_next_answers(&self, calls: u32) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.lost_answers = calls;
        }
    }

    /// Distinct successful charges so far.
    pub fn charges_made(&self) -> u64 {
        self.inner.lock().map_or(0, |i| i.money_moved)
    }

    /// Distinct refunds made so far (what would appear on a statement), by key.
    pub fn refunds_made(&self) -> Vec<(String, Money)> {
        let mut refunds: Vec<(String, Money)> = self.inner.lock().map_or(Vec::new(), |i| {
            i.refunds
                .iter()
                .map(|(key, (_, _, amount))| (key.clone(), *amount))
                .collect()
        });
        refunds.sort_by(|a, b| a.0.cmp(&b.0));
        refunds
    }

    /// Calls so far, retries included.
    pub fn calls(&self) -> u64 {
        self.inner.lock().map_or(0, |i| i.calls)
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Simulated) -> Result<T, GatewayError>,
    ) -> Result<T, GatewayError> {
        let mut inner = self
            .inner
            .lock()
            .map_err(|_| GatewayError("simulated gateway state poisoned".into()))?;
        inner.calls += 1;
        if inner.outages > 0 {
            inner.outages -= 1;
            return Err(GatewayError("simulated outage".into()));
        }
        let answer = f(&mut inner);
        if inner.lost_answers > 0 {
            inner.lost_answers -= 1;
            return Err(GatewayError("simulated timeout after the call".into()));
        }
        answer
    }
}

impl PaymentGateway for SimulatedGateway {
    fn name(&self) -> &'static str {
        "simulated"
    }

    fn attach_payment_method<'a>(
        &'a self,
        request: &'a AttachRequest,
    ) -> GatewayFuture<'a, Result<PaymentMethod, CardError>> {
        // The token came from `tokenize`, which already refused the cards that
        // decline on attach: the card is kept as given, as before this call
        // existed (no outage or call counting: attaching moves no money).
        Box::pin(async move { Ok(Ok(request.method.clone())) })
    }

    fn charge<'a>(&'a self, request: &'a ChargeRequest) -> GatewayFuture<'a, ChargeOutcome> {
        Box::pin(async move {
            self.with(|inner| {
                if let Some(outcome) = inner.charges.get(&request.idempotency_key) {
                    return Ok(outcome.clone());
                }
                let outcome = match decline_for(&request.payment_method) {
                    Some("authentication_required") if request.customer_present => {
                        inner.money_moved += 1;
                        ChargeOutcome::Succeeded {
                            charge_id: format!("ch_sim_{:06}", inner.money_moved),
                        }
                    }
                    Some(code) => ChargeOutcome::Declined {
                        decline_code: code.to_owned(),
                        message: match code {
                            "insufficient_funds" => "Your card has insufficient funds.",
                            "expired_card" => "Your card has expired.",
                            "processing_error" => "An error occurred while processing your card. Try again in a little bit.",
                            "authentication_required" => "The bank asks the customer to authenticate this payment.",
                            _ => "Your card was declined.",
                        }
                        .to_owned(),
                    },
                    None if TEST_CARDS.iter().any(|(_, t, ..)| *t == request.payment_method) => {
                        inner.money_moved += 1;
                        ChargeOutcome::Succeeded {
                            charge_id: format!("ch_sim_{:06}", inner.money_moved),
                        }
                    }
                    None => ChargeOutcome::Declined {
                        decline_code: "invalid_payment_method".to_owned(),
                        message: "No such payment method.".to_owned(),
                    },
                };
                inner
                    .charges
                    .insert(request.idempotency_key.clone(), outcome.clone());
                Ok(outcome)
            })
        })
    }

    fn refund<'a>(&'a self, request: &'a RefundRequest) -> GatewayFuture<'a, String> {
        Box::pin(async move {
            self.with(|inner| {
                let next = inner.refunds.len() + 1;
                let (id, charge, amount) = inner
                    .refunds
                    .entry(request.idempotency_key.clone())
                    .or_insert_with(|| {
                        (
                            format!("re_sim_{next:06}"),
                            request.charge_id.clone(),
                            request.amount,
                        )
                    });
                // As Stripe: a key reused with other parameters is an error, not a replay.
                if *charge != request.charge_id || *amount != request.amount {
                    return Err(GatewayError(format!(
                        "idempotency key {} was used for another refund",
                        request.idempotency_key
                    )));
                }
                Ok(id.clone())
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_cards_tokenize_like_stripe() {
        let visa = SimulatedGateway::tokenize("4242 4242 4242 4242", 12, 2030);
        assert_eq!(
            visa.map(|m| (m.token, m.last4)),
            Ok(("pm_card_visa".into(), "4242".into()))
        );
        assert_eq!(
            SimulatedGateway::tokenize("4000000000009995", 12, 2030),
            Err(CardError::Declined {
                decline_code: "insufficient_funds".into()
            })
        );
        let fails_later = SimulatedGateway::tokenize("4000000000000341", 12, 2030);
        assert_eq!(
            fails_later.map(|m| m.token),
            Ok("pm_card_chargeCustomerFail".into())
        );
        assert_eq!(
            SimulatedGateway::tokenize("1234", 1, 2030),
            Err(CardError::UnknownCard)
        );
    }

    #[test]
    fn a_test_token_stands_for_its_card_and_declines_on_attach_as_its_number_does() {
        let master =
            SimulatedGateway::card_of_token("pm_card_mastercard", 12, 2030).expect("a test card");
        assert_eq!(
            (master.brand.as_str(), master.last4.as_str()),
            ("mastercard", "4444")
        );
        assert_eq!(
            SimulatedGateway::card_of_token("pm_card_chargeDeclined", 12, 2030),
            Err(CardError::Declined {
                decline_code: "card_declined".into()
            })
        );
        assert_eq!(
            SimulatedGateway::card_of_token("pm_nothing_like_it", 12, 2030),
            Err(CardError::UnknownCard)
        );
    }

    #[tokio::test]
    async fn a_card_that_asks_for_authentication_pays_only_with_the_customer_present() {
        let gateway = SimulatedGateway::new();
        let card = SimulatedGateway::card_of_token("pm_card_authenticationRequired", 12, 2030)
            .expect("attaches");
        let request = |key: &str, customer_present| ChargeRequest {
            idempotency_key: key.to_owned(),
            payment_method: card.token.clone(),
            amount: Money::parse("97.00", "USD").expect("an amount"),
            customer: CustomerId(uuid::Uuid::from_u128(1)),
            invoice: InvoiceId(uuid::Uuid::from_u128(2)),
            attempt_no: 1,
            provider_customer: None,
            customer_present,
        };
        let off_session = gateway.charge(&request("a-1", false)).await;
        assert!(matches!(
            off_session,
            Ok(ChargeOutcome::Declined { ref decline_code, .. }) if decline_code == "authentication_required"
        ));
        let on_session = gateway.charge(&request("a-2", true)).await;
        assert!(
            matches!(on_session, Ok(ChargeOutcome::Succeeded { .. })),
            "{on_session:?}"
        );
        assert_eq!(gateway.charges_made(), 1);
    }
}
