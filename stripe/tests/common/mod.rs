//! Shared by the Stripe tests: the gateway on the local launcher, cards made
//! the way Stripe.js makes them, and the launcher's test hook.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use recur_commands::CustomerId;
use recur_commands::customer::PaymentMethod;
use recur_commands::payment::AttachRequest;
use recur_stripe::{SecretKey, StripeConfig, StripeGateway};
use stripe_payment::payment_method::{
    CreatePaymentMethod, CreatePaymentMethodCard, CreatePaymentMethodCardDetailsParams,
    CreatePaymentMethodType,
};
use uuid::Uuid;

/// Where the tests find Stripe: `STRIPE_API_BASE` and `STRIPE_SECRET_KEY`, set
/// by scripts/test.sh to the localstripe launcher it starts. Never a real
/// account: the key must be a test key, the base a local address.
pub fn config() -> StripeConfig {
    let base = std::env::var("STRIPE_API_BASE").unwrap_or_else(|_| {
        panic!(
            "STRIPE_API_BASE is not set: these tests need the local Stripe fake. Run them via \
             `bash scripts/test.sh`, or start it yourself:\n  \
             python3 -m venv target/localstripe-venv && target/localstripe-venv/bin/pip install localstripe==1.15.10\n  \
             target/localstripe-venv/bin/python scripts/localstripe/launcher.py --port 8420 &\n  \
             export STRIPE_API_BASE=http://127.0.0.1:8420 STRIPE_SECRET_KEY=sk_test_recur"
        )
    });
    assert!(
        base.starts_with("http://127.0.0.1") || base.starts_with("http://localhost"),
        "STRIPE_API_BASE={base}: the tests only run against a local fake"
    );
    let key = std::env::var("STRIPE_SECRET_KEY").unwrap_or_else(|_| "sk_test_recur".to_owned());
    let key = SecretKey::parse(&key).unwrap();
    assert!(key.is_test_mode(), "the tests only run with a test key");
    StripeConfig::new(key, &base).unwrap()
}

/// The gateway on the local fake.
pub fn gateway() -> StripeGateway {
    StripeGateway::new(&config()).unwrap()
}

/// What Stripe.js does in the browser: sends the card number to Stripe and
/// gets a PaymentMethod back. Recur itself never sees the number; it gets the
/// token and what the client read of the card.
pub async fn card(gateway: &StripeGateway, number: &str) -> PaymentMethod {
    let mut details = CreatePaymentMethodCardDetailsParams::new(12, 2034, number);
    details.cvc = Some("123".to_owned());
    let created = CreatePaymentMethod::new()
        .type_(CreatePaymentMethodType::Card)
        .card(CreatePaymentMethodCard::CardDetailsParams(details))
        .send(client(gateway))
        .await
        .unwrap();
    PaymentMethod {
        token: created.id.as_str().to_owned(),
        // What a client might claim; the gateway's answer replaces it.
        brand: "unknown".to_owned(),
        last4: number[number.len() - 4..].to_owned(),
        exp_month: 1,
        exp_year: 2099,
        provider_customer: None,
    }
}

/// The gateway's client, for what only tests do (creating payment methods).
pub fn client(gateway: &StripeGateway) -> &stripe::Client {
    gateway.client_for_tests()
}

/// A Recur customer id of its own (tests share one localstripe).
pub fn new_customer() -> CustomerId {
    CustomerId(Uuid::now_v7())
}

/// An attach request for a fresh Recur customer.
pub fn attach_request(method: PaymentMethod) -> AttachRequest {
    AttachRequest {
        customer: new_customer(),
        method,
        provider_customer: None,
    }
}

/// The launcher's test hook: sets a balance transaction's amount, as a
/// provider-side difference.
pub async fn set_balance_transaction_amount(txn: &str, amount_minor: i64) -> reqwest::StatusCode {
    let config = config();
    reqwest::Client::new()
        .post(format!(
            "{}_recur/balance_transactions/{txn}",
            config.api_base
        ))
        .bearer_auth(
            std::env::var("STRIPE_SECRET_KEY").unwrap_or_else(|_| "sk_test_recur".to_owned()),
        )
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("amount={amount_minor}"))
        .send()
        .await
        .unwrap()
        .status()
}

/// The default catalog with this run's plan and price ids (`<id>_<run>`):
/// the fake is shared, and a sync test must find nothing of its own there.
pub fn catalog_toml(run: &str) -> String {
    let mut toml = recur_commands::catalog::DEFAULT_CATALOG_TOML.to_owned();
    for plan in [
        "elite_coaching",
        "group_coaching",
        "community_access",
        "self_paced_course",
    ] {
        toml = toml.replace(plan, &format!("{plan}_{run}"));
    }
    toml
}
