//! [`StripeGateway`]: Recur's [`PaymentGateway`] on Stripe — customers, cards
//! attached by token, off-session PaymentIntents and refunds, each write with
//! an idempotency key so that a retried call never charges or refunds twice.

use std::collections::HashMap;
use std::time::Duration;

use recur_commands::customer::PaymentMethod;
use recur_commands::invoice::ChargeOutcome;
use recur_commands::payment::{
    AttachRequest, CardError, ChargeRequest, GatewayError, GatewayFuture, PaymentGateway,
    RefundRequest,
};
use recur_commands::stripe_amounts;
use recur_ledger::{Currency, Money};
use stripe::{Client, ClientBuilder, IdempotencyKey, RequestStrategy, StripeRequest};
use stripe_core::customer::CreateCustomer;
use stripe_core::payment_intent::{CreatePaymentIntent, CreatePaymentIntentOffSession};
use stripe_core::refund::CreateRefund;
use stripe_payment::payment_method::AttachPaymentMethod;
use stripe_shared::{PaymentIntent, PaymentIntentStatus};

use crate::config::StripeConfig;
use crate::error::StripeError;

/// How long one call to Stripe may take before it counts as unanswered (and is
/// retried later with the same key). Stripe answers in well under a second;
/// a charge can take a few when the bank is slow.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Metadata keys written to Stripe objects, so that a person reading Stripe's
/// dashboard (and the reconciliation) can find Recur's ids.
pub mod metadata {
    /// On customers and payment intents: Recur's customer id.
    pub const CUSTOMER: &str = "recur_customer_id";
    /// On payment intents: Recur's invoice id.
    pub const INVOICE: &str = "recur_invoice_id";
    /// On payment intents: the attempt's number on the invoice, from 1.
    pub const ATTEMPT: &str = "recur_attempt";
    /// On refunds: the idempotency key, `<invoice>-refund-<n>`.
    pub const REFUND: &str = "recur_refund";
    /// On products and prices: Recur's plan id.
    pub const PLAN: &str = "recur_plan_id";
    /// On prices: Recur's price id (also the price's `lookup_key`).
    pub const PRICE: &str = "recur_price_id";
}

/// The payment gateway on Stripe.
#[derive(Clone, Debug)]
pub struct StripeGateway {
    pub(crate) client: Client,
}

impl StripeGateway {
    /// A gateway for `config` (no call is made yet).
    ///
    /// # Errors
    /// [`StripeError::Config`] when the client cannot be built from it.
    pub fn new(config: &StripeConfig) -> Result<Self, StripeError> {
        let client = ClientBuilder::new(config.secret_key.expose())
            .url(config.api_base.clone())
            .timeout(CALL_TIMEOUT)
            // Retries are Recur's: the billing service repeats a call with the
            // same key when the gateway reports it unavailable.
            .request_strategy(RequestStrategy::Once)
            .app_info("recur", Some(env!("CARGO_PKG_VERSION").to_owned()), None)
            .build()?;
        Ok(Self { client })
    }

    /// The underlying client, for tests that make what only a browser makes
    /// (a PaymentMethod from a card number, as Stripe.js does).
    #[doc(hidden)]
    pub fn client_for_tests(&self) -> &Client {
        &self.client
    }

    /// Sends `request` once with `key` as its `Idempotency-Key`.
    pub(crate) async fn send_idempotent<R: StripeRequest>(
        &self,
        request: &R,
        key: &str,
    ) -> Result<R::Output, StripeError>
    where
        R::Output: miniserde::Deserialize,
    {
        let key = IdempotencyKey::new(key)
            .map_err(|e| StripeError::Unexpected(format!("idempotency key: {e}")))?;
        Ok(request
            .customize()
            .request_strategy(RequestStrategy::Idempotent(key))
            .send(&self.client)
            .await?)
    }

    /// Sends `request` once, without a key (reads).
    pub(crate) async fn send<R: StripeRequest>(&self, request: &R) -> Result<R::Output, StripeError>
    where
        R::Output: miniserde::Deserialize,
    {
        Ok(request.customize().send(&self.client).await?)
    }

    /// Attaches a card to Stripe's customer for `request.customer`, creating
    /// that customer unless `request.provider_customer` names it.
    ///
    /// # Errors
    /// [`StripeError`] as Stripe answered; a decline is `Api { status: 402, .. }`.
    pub async fn attach(&self, request: &AttachRequest) -> Result<PaymentMethod, StripeError> {
        let provider_customer = match &request.provider_customer {
            Some(id) => id.clone(),
            None => {
                let recur_customer = request.customer.to_string();
                let create = CreateCustomer::new().metadata(HashMap::from([(
                    metadata::CUSTOMER.to_owned(),
                    recur_customer.clone(),
                )]));
                // One Stripe customer per Recur customer, even when the first
                // attach is retried: the key is the Recur customer's id.
                let customer = self
                    .send_idempotent(&create, &format!("recur-customer-{recur_customer}"))
                    .await?;
                customer.id.as_str().to_owned()
            }
        };
        let attach =
            AttachPaymentMethod::new(request.method.token.as_str()).customer(&provider_customer);
        // Attaching the same card to the same customer twice is harmless, and
        // a key tied to both makes a retry replay the first answer.
        let attached = self
            .send_idempotent(
                &attach,
                &format!(
                    "recur-attach-{}-{}",
                    provider_customer, request.method.token
                ),
            )
            .await?;
        let card = attached.card.ok_or_else(|| {
            StripeError::Unexpected(format!(
                "payment method {} is not a card",
                request.method.token
            ))
        })?;
        let exp_month = u8::try_from(card.exp_month).map_err(|_| {
            StripeError::Unexpected(format!("card expiry month {}", card.exp_month))
        })?;
        let exp_year = u16::try_from(card.exp_year)
            .map_err(|_| StripeError::Unexpected(format!("card expiry year {}", card.exp_year)))?;
        Ok(PaymentMethod {
            token: attached.id.as_str().to_owned(),
            // Recur's brands are lowercase words (`american_express` rather
            // than Stripe's `amex` is not needed: Stripe's are lowercase too).
            brand: card.brand.to_lowercase(),
            last4: card.last4,
            exp_month,
            exp_year,
            provider_customer: Some(provider_customer),
        })
    }

    /// Creates and confirms a PaymentIntent for `request`: off-session unless
    /// the customer is present (then a bank's frictionless authentication may
    /// pass it; a challenge leaves it `requires_action`, answered as
    /// `authentication_required`).
    ///
    /// # Errors
    /// [`StripeError`] as Stripe answered, card errors included.
    pub async fn create_payment(
        &self,
        request: &ChargeRequest,
    ) -> Result<PaymentIntent, StripeError> {
        let (amount_minor, currency) = to_stripe_amount(&request.amount)?;
        let mut create = CreatePaymentIntent::new(amount_minor, currency)
            .payment_method(request.payment_method.as_str())
            .confirm(true)
            .metadata(HashMap::from([
                (metadata::INVOICE.to_owned(), request.invoice.to_string()),
                (metadata::CUSTOMER.to_owned(), request.customer.to_string()),
                (metadata::ATTEMPT.to_owned(), request.attempt_no.to_string()),
            ]));
        if !request.customer_present {
            create = create.off_session(CreatePaymentIntentOffSession::Bool(true));
        }
        if let Some(customer) = &request.provider_customer {
            create = create.customer(customer.as_str());
        }
        self.send_idempotent(&create, &request.idempotency_key)
            .await
    }

    /// Refunds `request.amount` of `request.charge_id`; returns the refund id.
    ///
    /// # Errors
    /// [`StripeError`] as Stripe answered.
    pub async fn create_refund(&self, request: &RefundRequest) -> Result<String, StripeError> {
        let (amount_minor, _) = to_stripe_amount(&request.amount)?;
        let create = CreateRefund::new()
            .charge(request.charge_id.as_str())
            .amount(amount_minor)
            .metadata(HashMap::from([(
                metadata::REFUND.to_owned(),
                request.idempotency_key.clone(),
            )]));
        let refund = self
            .send_idempotent(&create, &request.idempotency_key)
            .await?;
        Ok(refund.id.as_str().to_owned())
    }
}

/// What a PaymentIntent's answer means for the invoice.
///
/// # Errors
/// [`StripeError::Unexpected`] for a succeeded intent without a charge.
pub fn outcome_of(intent: &PaymentIntent) -> Result<ChargeOutcome, StripeError> {
    match &intent.status {
        // Not settled yet (asynchronous methods): no answer. The attempt stays
        // pending; Stripe's payment_intent.succeeded or payment_failed
        // webhook records the outcome (the translator), or the attempt's retry
        // with the same key asks again.
        PaymentIntentStatus::Processing => Err(StripeError::Unexpected(format!(
            "payment intent {} is still processing",
            intent.id.as_str()
        ))),
        PaymentIntentStatus::Succeeded => {
            let charge = intent.latest_charge.as_ref().ok_or_else(|| {
                StripeError::Unexpected(format!(
                    "payment intent {} succeeded without a charge",
                    intent.id.as_str()
                ))
            })?;
            Ok(ChargeOutcome::Succeeded {
                charge_id: charge.id().as_str().to_owned(),
            })
        }
        PaymentIntentStatus::RequiresAction => Ok(authentication_required()),
        _ => {
            let error = intent.last_payment_error.as_ref();
            let decline_code = error
                .and_then(|e| {
                    e.decline_code
                        .clone()
                        .or_else(|| e.code.as_ref().map(|c| c.as_str().to_owned()))
                })
                .unwrap_or_else(|| "card_declined".to_owned());
            let message = error
                .and_then(|e| e.message.clone())
                .unwrap_or_else(|| "Your card was declined.".to_owned());
            Ok(declined(decline_code, message))
        }
    }
}

fn authentication_required() -> ChargeOutcome {
    ChargeOutcome::Declined {
        decline_code: "authentication_required".to_owned(),
        message: "The bank asks the customer to authenticate this payment.".to_owned(),
    }
}

fn declined(decline_code: String, message: String) -> ChargeOutcome {
    if decline_code == "authentication_required" {
        return authentication_required();
    }
    ChargeOutcome::Declined {
        decline_code,
        message,
    }
}

/// `money` as Stripe's integer amount and currency (lowercase code).
///
/// # Errors
/// An amount that is not a whole number of minor units, or beyond `i64`.
pub fn to_stripe_amount(money: &Money) -> Result<(i64, stripe_types::Currency), StripeError> {
    let iso_minor = money.to_minor()?;
    let code = money.currency().code();
    let minor = stripe_amounts::stripe_amount_from_iso_minor(iso_minor, code).ok_or_else(|| {
        StripeError::Unexpected(format!("{iso_minor} {code} is too large for Stripe"))
    })?;
    let currency = code
        .to_ascii_lowercase()
        .parse::<stripe_types::Currency>()
        .unwrap_or_else(|never| match never {});
    Ok((minor, currency))
}

/// A Stripe amount (as Stripe counts it) in `currency` as [`Money`].
///
/// # Errors
/// A currency Recur does not know; an ISK or UGX amount that is not a
/// multiple of 100 (Stripe never makes one).
pub fn money_from_stripe(amount: i64, currency: &str) -> Result<Money, StripeError> {
    let currency = Currency::parse(&currency.to_ascii_uppercase())?;
    let amount =
        stripe_amounts::iso_minor_from_stripe(amount, currency.code()).ok_or_else(|| {
            StripeError::Unexpected(format!(
                "{amount} {currency} from Stripe is not a multiple of 100"
            ))
        })?;
    Ok(Money::from_minor(amount, currency))
}

fn unavailable(error: &StripeError) -> GatewayError {
    GatewayError(format!("stripe: {error}"))
}

impl PaymentGateway for StripeGateway {
    fn name(&self) -> &'static str {
        "stripe"
    }

    fn attach_payment_method<'a>(
        &'a self,
        request: &'a AttachRequest,
    ) -> GatewayFuture<'a, Result<PaymentMethod, CardError>> {
        Box::pin(async move {
            match self.attach(request).await {
                Ok(method) => Ok(Ok(method)),
                Err(error) => match error.card_decline_code() {
                    Some(decline_code) => Ok(Err(CardError::Declined { decline_code })),
                    // 400/404: no such payment method, one of another account,
                    // already attached elsewhere — the token is at fault.
                    None if matches!(
                        error,
                        StripeError::Api {
                            status: 400 | 404,
                            ..
                        }
                    ) =>
                    {
                        let reason = match &error {
                            StripeError::Api { code, message, .. } => format!(
                                "{}{message}",
                                code.as_deref()
                                    .map(|c| format!("{c}: "))
                                    .unwrap_or_default()
                            ),
                            other => other.to_string(),
                        };
                        Ok(Err(CardError::Rejected { reason }))
                    }
                    // Anything else (an unknown token, Stripe down, a key
                    // without the right): the card is not on file; say why.
                    None => {
                        tracing::warn!(error = %error, "stripe: attaching a card failed");
                        Err(unavailable(&error))
                    }
                },
            }
        })
    }

    fn charge<'a>(&'a self, request: &'a ChargeRequest) -> GatewayFuture<'a, ChargeOutcome> {
        Box::pin(async move {
            match self.create_payment(request).await {
                Ok(intent) => outcome_of(&intent).map_err(|e| unavailable(&e)),
                Err(error) => {
                    if let Some(decline_code) = error.card_decline_code() {
                        let message = match &error {
                            StripeError::Api { message, .. } if !message.is_empty() => {
                                message.clone()
                            }
                            _ => "Your card was declined.".to_owned(),
                        };
                        return Ok(declined(decline_code, message));
                    }
                    if error.is_retryable() {
                        return Err(unavailable(&error));
                    }
                    // A request Stripe refuses as such (a detached card, an
                    // unknown payment method, a reused key with other terms)
                    // will be refused again: it is a decline the dunning can
                    // act on, not an outage to retry forever.
                    tracing::warn!(error = %error, "stripe: a charge was refused");
                    match &error {
                        // The key was used before with other terms: that first
                        // request may have charged. Never a decline (a new
                        // attempt would charge again): the attempt waits for
                        // an operator, or for the first request's webhook.
                        StripeError::Api { kind, .. } if kind == "idempotency_error" => {
                            Err(unavailable(&error))
                        }
                        // 400 (a bad parameter) and 404 (no such payment method or customer):
                        // named after Stripe's code, or its error type.
                        StripeError::Api {
                            status: 400 | 404,
                            kind,
                            code,
                            message,
                            ..
                        } => Ok(declined(
                            code.clone().unwrap_or_else(|| kind.clone()),
                            message.clone(),
                        )),
                        // 401/403 (a wrong or restricted key) is the
                        // operator's to fix, not the customer's decline: the
                        // attempt waits, and is retried with its key.
                        _ => Err(unavailable(&error)),
                    }
                }
            }
        })
    }

    fn refund<'a>(&'a self, request: &'a RefundRequest) -> GatewayFuture<'a, String> {
        Box::pin(async move {
            self.create_refund(request).await.map_err(|error| {
                tracing::warn!(error = %error, "stripe: a refund failed");
                unavailable(&error)
            })
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn amounts_go_to_stripe_in_its_minor_units() {
        let usd = Money::parse("5000.00", "USD").unwrap();
        let (minor, currency) = to_stripe_amount(&usd).unwrap();
        assert_eq!((minor, currency.to_string().as_str()), (500_000, "usd"));
        let jpy = Money::parse("500", "JPY").unwrap();
        assert_eq!(to_stripe_amount(&jpy).unwrap().0, 500);
        let isk = Money::parse("500", "ISK").unwrap();
        assert_eq!(to_stripe_amount(&isk).unwrap().0, 50_000);
        assert!(to_stripe_amount(&Money::parse("1.005", "USD").unwrap()).is_err());
    }

    #[test]
    fn stripe_amounts_come_back_as_the_same_money() {
        for (amount, code) in [
            ("5000.00", "USD"),
            ("500", "JPY"),
            ("500", "ISK"),
            ("1.234", "KWD"),
        ] {
            let money = Money::parse(amount, code).unwrap();
            let (minor, currency) = to_stripe_amount(&money).unwrap();
            assert_eq!(
                money_from_stripe(minor, &currency.to_string()).unwrap(),
                money
            );
        }
        assert!(money_from_stripe(150, "isk").is_err());
        assert!(money_from_stripe(150, "xxx").is_err());
    }
}
