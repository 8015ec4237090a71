//! The billing service charging through Stripe (the local fake): a card put on
//! file is Stripe's description of it, an invoice is collected with a Stripe
//! charge, a declined card writes nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;
#[path = "../../ledger/tests/common/mod.rs"]
mod ledger_common;

use std::sync::Arc;

use recur_commands::billing::NewCustomer;
use recur_commands::invoice::{ChargeOutcome, InvoiceStatus};
use recur_commands::{Billing, Catalog};
use recur_stripe::StripeGateway;

async fn billing(gateway: &Arc<StripeGateway>) -> (Billing, ledger_common::TestLedger) {
    let store = ledger_common::sqlite().await;
    let billing = Billing::open(
        store.ledger.clone(),
        Catalog::default_catalog().unwrap(),
        Arc::clone(gateway) as Arc<dyn recur_commands::PaymentGateway>,
    )
    .await
    .unwrap();
    (billing, store)
}

#[tokio::test]
async fn billing_through_stripe_keeps_stripes_card_and_collects_an_invoice() {
    let gateway = Arc::new(common::gateway());
    let (billing, _store) = billing(&gateway).await;
    let customer = billing
        .create_customer(NewCustomer::default())
        .await
        .unwrap();
    let given = common::card(&gateway, "4242424242424242").await;
    billing
        .attach_payment_method(customer, given.clone())
        .await
        .unwrap();
    let on_file = billing
        .customer(customer)
        .await
        .unwrap()
        .payment_method
        .unwrap();
    // Stripe's expiry and brand, not what the client said.
    assert_eq!(on_file.token, given.token);
    assert_eq!(
        (on_file.brand.as_str(), on_file.exp_month, on_file.exp_year),
        ("visa", 12, 2034)
    );
    let stripe_customer = on_file.provider_customer.clone().unwrap();

    let invoice = billing
        .purchase(customer, "self_paced_course", None)
        .await
        .unwrap();
    let invoice = billing.invoice(invoice).await.unwrap();
    assert_eq!(invoice.status, InvoiceStatus::Paid, "{invoice:?}");
    let charge_id = invoice
        .attempts
        .iter()
        .find_map(|a| match &a.outcome {
            Some(ChargeOutcome::Succeeded { charge_id }) => Some(charge_id.clone()),
            _ => None,
        })
        .unwrap();
    let charge = gateway.retrieve_charge(&charge_id).await.unwrap();
    assert_eq!(charge.amount_minor, 99_700);
    assert_eq!(charge.customer.as_deref(), Some(stripe_customer.as_str()));

    // A second card joins the same Stripe customer.
    let second = common::card(&gateway, "5555555555554444").await;
    billing
        .attach_payment_method(customer, second)
        .await
        .unwrap();
    let on_file = billing
        .customer(customer)
        .await
        .unwrap()
        .payment_method
        .unwrap();
    assert_eq!(
        on_file.provider_customer.as_deref(),
        Some(stripe_customer.as_str())
    );
}

#[tokio::test]
async fn a_card_stripe_declines_on_attach_is_refused_and_nothing_is_written() {
    let gateway = Arc::new(common::gateway());
    let (billing, _store) = billing(&gateway).await;
    let customer = billing
        .create_customer(NewCustomer::default())
        .await
        .unwrap();
    let (_, version) = billing.customer_versioned(customer).await.unwrap();
    let declined = common::card(&gateway, "4000000000000002").await;
    let error = billing
        .attach_payment_method(customer, declined)
        .await
        .unwrap_err();
    assert_eq!(error.code(), "card_declined", "{error}");
    assert!(error.to_string().contains("generic_decline"), "{error}");
    let (state, after) = billing.customer_versioned(customer).await.unwrap();
    assert_eq!(after, version);
    assert!(state.payment_method.is_none());
}
