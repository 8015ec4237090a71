//! Where the demo's people get their card tokens: the part Stripe.js plays in a
//! real checkout (a card number goes to the provider, a token comes back). Recur
//! itself only ever sees the token.

use std::future::Future;
use std::pin::Pin;

use recur_commands::SimulatedGateway;
use recur_commands::customer::PaymentMethod;
use recur_commands::payment::CardError;

/// A boxed future, so the issuer stays object-safe.
pub type CardFuture<'a> =
    Pin<Box<dyn Future<Output = Result<PaymentMethod, CardError>> + Send + 'a>>;

/// The expiry the demo's cards carry.
pub const CARD_EXPIRY: (u8, u16) = (12, 2031);

/// Turns test card numbers into tokens at a payment provider.
pub trait CardIssuer: Send + Sync {
    /// The token of a test card number, or the provider's refusal.
    fn card<'a>(&'a self, number: &'a str) -> CardFuture<'a>;

    /// A card that attaches and later declines its charges with `decline_code`
    /// (where the provider can only decline one way, it declines that way).
    fn failing_card<'a>(&'a self, decline_code: &'a str) -> CardFuture<'a>;
}

/// The simulated gateway's cards (Stripe's test card numbers, in memory).
#[derive(Clone, Copy, Debug, Default)]
pub struct SimulatedCards;

impl CardIssuer for SimulatedCards {
    fn card<'a>(&'a self, number: &'a str) -> CardFuture<'a> {
        Box::pin(async move { SimulatedGateway::tokenize(number, CARD_EXPIRY.0, CARD_EXPIRY.1) })
    }

    fn failing_card<'a>(&'a self, decline_code: &'a str) -> CardFuture<'a> {
        Box::pin(async move {
            Ok(SimulatedGateway::failing_card(
                decline_code,
                CARD_EXPIRY.0,
                CARD_EXPIRY.1,
            ))
        })
    }
}

/// Stripe's test cards as Stripe's own test PaymentMethods (`pm_card_visa`, …):
/// tokens Stripe's test mode (and our localstripe launcher) turn into a real
/// PaymentMethod when the gateway attaches them. No card number leaves the demo.
/// A card Stripe declines on attach is refused by the gateway's attach, as in a
/// real checkout, not here.
#[derive(Clone, Copy, Debug, Default)]
pub struct StripeTestCards;

/// Test card number → Stripe's test PaymentMethod, brand.
const STRIPE_TEST_METHODS: &[(&str, &str, &str)] = &[
    ("4242424242424242", "pm_card_visa", "visa"),
    ("5555555555554444", "pm_card_mastercard", "mastercard"),
    ("4000000000000002", "pm_card_visa_chargeDeclined", "visa"),
    ("4000000000000341", "pm_card_chargeCustomerFail", "visa"),
];

impl StripeTestCards {
    fn method(number: &str) -> Result<PaymentMethod, CardError> {
        let (number, token, brand) = STRIPE_TEST_METHODS
            .iter()
            .find(|(n, ..)| *n == number)
            .ok_or(CardError::UnknownCard)?;
        Ok(PaymentMethod {
            token: (*token).to_owned(),
            brand: (*brand).to_owned(),
            last4: number[number.len() - 4..].to_owned(),
            exp_month: CARD_EXPIRY.0,
            exp_year: CARD_EXPIRY.1,
            provider_customer: None,
        })
    }
}

impl CardIssuer for StripeTestCards {
    fn card<'a>(&'a self, number: &'a str) -> CardFuture<'a> {
        Box::pin(async move { Self::method(number) })
    }

    fn failing_card<'a>(&'a self, _decline_code: &'a str) -> CardFuture<'a> {
        // Stripe has one card that attaches and then declines: card_declined.
        Box::pin(async move { Self::method("4000000000000341") })
    }
}
