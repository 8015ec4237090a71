//! The Stripe gateway against the local Stripe fake (scripts/localstripe/launcher.py,
//! started by scripts/test.sh). Each test makes its own customers, so the tests
//! run in parallel on one fake without touching each other's state.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::{attach_request, card, gateway, new_customer, set_balance_transaction_amount};
use recur_commands::decline::{DeclineCategory, category};
use recur_commands::invoice::ChargeOutcome;
use recur_commands::payment::{CardError, ChargeRequest, PaymentGateway, RefundRequest};
use recur_commands::{Catalog, InvoiceId};
use recur_ledger::Money;
use recur_stripe::{StripeConfig, StripeGateway, SyncStatus};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

fn charge_request(method: &recur_commands::customer::PaymentMethod, amount: &str) -> ChargeRequest {
    let invoice = InvoiceId(Uuid::now_v7());
    ChargeRequest {
        idempotency_key: format!("{invoice}-attempt-1"),
        payment_method: method.token.clone(),
        amount: Money::parse(amount, "USD").unwrap(),
        customer: new_customer(),
        invoice,
        attempt_no: 1,
        provider_customer: method.provider_customer.clone(),
        customer_present: false,
    }
}

#[tokio::test]
async fn a_card_attached_by_token_is_charged_and_stripe_describes_it() {
    let gateway = gateway();
    let given = card(&gateway, "4242424242424242").await;
    let attached = gateway
        .attach_payment_method(&attach_request(given.clone()))
        .await
        .unwrap()
        .unwrap();
    // Stripe's description replaces the client's.
    assert_eq!(attached.token, given.token);
    assert_eq!(attached.brand, "visa");
    assert_eq!(attached.last4, "4242");
    assert_eq!((attached.exp_month, attached.exp_year), (12, 2034));
    let customer = attached
        .provider_customer
        .clone()
        .expect("a Stripe customer");
    assert!(customer.starts_with("cus_"), "{customer}");

    let request = charge_request(&attached, "97.00");
    let outcome = gateway.charge(&request).await.unwrap();
    let ChargeOutcome::Succeeded { charge_id } = outcome else {
        panic!("expected a charge, got {outcome:?}");
    };
    assert!(charge_id.starts_with("ch_"), "{charge_id}");
    let charge = gateway.retrieve_charge(&charge_id).await.unwrap();
    assert_eq!(
        (charge.amount_minor, charge.currency.as_str()),
        (9_700, "usd")
    );
    assert_eq!(charge.status, "succeeded");
    assert_eq!(charge.customer.as_deref(), Some(customer.as_str()));
    let intent = charge.payment_intent.expect("a payment intent");
    assert!(intent.starts_with("pi_"), "{intent}");
}

#[tokio::test]
async fn a_second_card_joins_the_stripe_customer_already_linked() {
    let gateway = gateway();
    let first = gateway
        .attach_payment_method(&attach_request(card(&gateway, "4242424242424242").await))
        .await
        .unwrap()
        .unwrap();
    let mut request = attach_request(card(&gateway, "5555555555554444").await);
    request.provider_customer = first.provider_customer.clone();
    let second = gateway
        .attach_payment_method(&request)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.provider_customer, first.provider_customer);
    assert_eq!(
        (second.brand.as_str(), second.last4.as_str()),
        ("mastercard", "4444")
    );
}

#[tokio::test]
async fn stripes_test_payment_methods_attach_as_a_new_payment_method() {
    let gateway = gateway();
    let mut method = card(&gateway, "4242424242424242").await;
    method.token = "pm_card_mastercard".to_owned();
    let attached = gateway
        .attach_payment_method(&attach_request(method))
        .await
        .unwrap()
        .unwrap();
    // Stripe makes a PaymentMethod of its own from the test one: its id is kept.
    assert_ne!(attached.token, "pm_card_mastercard");
    assert!(attached.token.starts_with("pm_"), "{}", attached.token);
    assert_eq!(attached.brand, "mastercard");
    let outcome = gateway
        .charge(&charge_request(&attached, "20.00"))
        .await
        .unwrap();
    assert!(
        matches!(outcome, ChargeOutcome::Succeeded { .. }),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn a_card_that_fails_later_attaches_then_declines_softly() {
    let gateway = gateway();
    let attached = gateway
        .attach_payment_method(&attach_request(card(&gateway, "4000000000000341").await))
        .await
        .unwrap()
        .unwrap();
    let outcome = gateway
        .charge(&charge_request(&attached, "1500.00"))
        .await
        .unwrap();
    let ChargeOutcome::Declined {
        decline_code,
        message,
    } = outcome
    else {
        panic!("expected a decline, got {outcome:?}");
    };
    assert_eq!(decline_code, "generic_decline");
    assert!(!message.is_empty());
    assert_eq!(category(&decline_code), DeclineCategory::Soft);
    assert!(category(&decline_code).retry_can_succeed());
}

#[tokio::test]
async fn a_card_declined_when_attached_is_a_card_error() {
    let gateway = gateway();
    for (number, code) in [
        ("4000000000000002", "generic_decline"),
        ("4000000000009995", "insufficient_funds"),
        ("4000000000000069", "expired_card"),
    ] {
        let answer = gateway
            .attach_payment_method(&attach_request(card(&gateway, number).await))
            .await
            .unwrap();
        assert_eq!(
            answer,
            Err(CardError::Declined {
                decline_code: code.to_owned()
            }),
            "{number}"
        );
    }
    assert_eq!(
        category("expired_card"),
        DeclineCategory::NeedsCustomerAction
    );
}

#[tokio::test]
async fn the_same_idempotency_key_charges_once_with_the_same_outcome() {
    let gateway = gateway();
    let attached = gateway
        .attach_payment_method(&attach_request(card(&gateway, "4242424242424242").await))
        .await
        .unwrap()
        .unwrap();
    let request = charge_request(&attached, "5000.00");
    let first = gateway.charge(&request).await.unwrap();
    let again = gateway.charge(&request).await.unwrap();
    assert_eq!(first, again);
    let customer = attached.provider_customer.unwrap();
    let charges = gateway.customer_charges(&customer).await.unwrap();
    assert_eq!(charges.len(), 1, "{charges:?}");
    // A second attempt (another key) is another charge.
    let mut second_attempt = request.clone();
    second_attempt.attempt_no = 2;
    second_attempt.idempotency_key = format!("{}-attempt-2", request.invoice);
    let other = gateway.charge(&second_attempt).await.unwrap();
    assert_ne!(other, first);
    assert_eq!(gateway.customer_charges(&customer).await.unwrap().len(), 2);
}

#[tokio::test]
async fn a_key_reused_with_another_amount_is_refused_not_charged() {
    let gateway = gateway();
    let attached = gateway
        .attach_payment_method(&attach_request(card(&gateway, "4242424242424242").await))
        .await
        .unwrap()
        .unwrap();
    let request = charge_request(&attached, "10.00");
    gateway.charge(&request).await.unwrap();
    let mut other = request.clone();
    other.amount = Money::parse("11.00", "USD").unwrap();
    // Stripe's idempotency_error (400): the first request with this key may
    // have charged, so it is no answer (the attempt stays pending), never a
    // decline that a new attempt with a new key would charge again.
    let outcome = gateway.charge(&other).await;
    assert!(outcome.is_err(), "{outcome:?}");
    let charges = gateway
        .customer_charges(attached.provider_customer.as_deref().unwrap())
        .await
        .unwrap();
    assert_eq!(charges.len(), 1);
}

#[tokio::test]
async fn a_refund_is_made_once_per_key() {
    let gateway = gateway();
    let attached = gateway
        .attach_payment_method(&attach_request(card(&gateway, "4242424242424242").await))
        .await
        .unwrap()
        .unwrap();
    let request = charge_request(&attached, "97.00");
    let ChargeOutcome::Succeeded { charge_id } = gateway.charge(&request).await.unwrap() else {
        panic!("no charge");
    };
    let refund = RefundRequest {
        idempotency_key: format!("{}-refund-1", request.invoice),
        charge_id: charge_id.clone(),
        amount: Money::parse("40.00", "USD").unwrap(),
    };
    let refund_id = gateway.refund(&refund).await.unwrap();
    assert!(refund_id.starts_with("re_"), "{refund_id}");
    assert_eq!(gateway.refund(&refund).await.unwrap(), refund_id);
    let charge = gateway.retrieve_charge(&charge_id).await.unwrap();
    assert_eq!(charge.amount_refunded_minor, 4_000);
    let stripe_refund = gateway.retrieve_refund(&refund_id).await.unwrap();
    assert_eq!(stripe_refund.amount_minor, 4_000);
    assert_eq!(stripe_refund.charge.as_deref(), Some(charge_id.as_str()));
}

#[tokio::test]
async fn balance_transactions_list_the_charge_and_the_refund_and_the_hook_changes_one() {
    let gateway = gateway();
    let from = OffsetDateTime::now_utc() - Duration::seconds(5);
    let attached = gateway
        .attach_payment_method(&attach_request(card(&gateway, "4242424242424242").await))
        .await
        .unwrap()
        .unwrap();
    let request = charge_request(&attached, "1500.00");
    let ChargeOutcome::Succeeded { charge_id } = gateway.charge(&request).await.unwrap() else {
        panic!("no charge");
    };
    let refund_id = PaymentGateway::refund(
        &gateway,
        &RefundRequest {
            idempotency_key: format!("{}-refund-1", request.invoice),
            charge_id: charge_id.clone(),
            amount: Money::parse("500.00", "USD").unwrap(),
        },
    )
    .await
    .unwrap();
    let to = OffsetDateTime::now_utc() + Duration::seconds(5);
    let listed = gateway.balance_transactions(from, to).await.unwrap();
    let of = |source: &str| {
        listed
            .iter()
            .find(|txn| txn.source.as_deref() == Some(source))
            .unwrap_or_else(|| panic!("{source} not among {listed:?}"))
            .clone()
    };
    let charge_txn = of(&charge_id);
    assert_eq!(charge_txn.kind, "charge");
    assert_eq!(charge_txn.amount_minor, 150_000);
    assert_eq!(
        charge_txn.amount().unwrap(),
        Money::parse("1500.00", "USD").unwrap()
    );
    assert_eq!(charge_txn.currency, "usd");
    assert!(charge_txn.created >= from - Duration::seconds(1) && charge_txn.created < to);
    let refund_txn = of(&refund_id);
    assert_eq!(refund_txn.kind, "refund");
    assert_eq!(refund_txn.amount_minor, -50_000);
    assert!(charge_txn.id.starts_with("txn_"));
    // Outside the period: not listed.
    let earlier = gateway
        .balance_transactions(from - Duration::days(2), from - Duration::days(1))
        .await
        .unwrap();
    assert!(earlier.iter().all(|txn| txn.id != charge_txn.id));

    // The launcher's hook: a provider-side difference for the reconciliation.
    assert!(
        set_balance_transaction_amount(&charge_txn.id, 149_900)
            .await
            .is_success()
    );
    let changed = gateway.balance_transactions(from, to).await.unwrap();
    let changed = changed.iter().find(|txn| txn.id == charge_txn.id).unwrap();
    assert_eq!(changed.amount_minor, 149_900);
    assert_eq!(changed.net_minor, 149_900 - changed.fee_minor);
}

#[tokio::test]
async fn balance_transactions_are_read_across_pages() {
    let gateway = gateway();
    let from = OffsetDateTime::now_utc() - Duration::seconds(2);
    let attached = gateway
        .attach_payment_method(&attach_request(card(&gateway, "4242424242424242").await))
        .await
        .unwrap()
        .unwrap();
    // More than one page of 100 (the fake lists whatever else the other
    // tests made in the period too).
    let mut charges = Vec::new();
    for _ in 0..105 {
        if let ChargeOutcome::Succeeded { charge_id } = gateway
            .charge(&charge_request(&attached, "1.00"))
            .await
            .unwrap()
        {
            charges.push(charge_id);
        }
    }
    let to = OffsetDateTime::now_utc() + Duration::seconds(2);
    let listed = gateway.balance_transactions(from, to).await.unwrap();
    let mut ids: Vec<&str> = listed.iter().map(|txn| txn.id.as_str()).collect();
    let total = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), total, "a transaction listed twice");
    for charge in &charges {
        assert!(
            listed
                .iter()
                .any(|txn| txn.source.as_deref() == Some(charge)),
            "{charge} missing"
        );
    }
}

#[tokio::test]
async fn syncing_the_catalog_twice_creates_nothing_the_second_time() {
    let gateway = gateway();
    // Plan ids of this run only: the fake is shared with other tests and runs.
    let run = Uuid::now_v7().simple().to_string();
    let toml = common::catalog_toml(&run);
    let catalog = Catalog::from_toml(&toml).unwrap();
    let first = gateway.sync_catalog(&catalog).await.unwrap();
    assert_eq!(first.plans.len(), 4, "{first}");
    for plan in &first.plans {
        assert_eq!(plan.product, SyncStatus::Created, "{first}");
        assert!(!plan.prices.is_empty());
        for price in &plan.prices {
            assert_eq!(price.status, SyncStatus::Created, "{first}");
            assert!(price.stripe_price_id.starts_with("price_"));
        }
    }
    assert_eq!(first.conflicts(), 0);
    let second = gateway.sync_catalog(&catalog).await.unwrap();
    assert_eq!(second.created(), 0, "{second}");
    for (a, b) in first.plans.iter().zip(&second.plans) {
        assert_eq!(b.product, SyncStatus::Unchanged, "{second}");
        for (pa, pb) in a.prices.iter().zip(&b.prices) {
            assert_eq!(pb.status, SyncStatus::Unchanged, "{second}");
            assert_eq!(pa.stripe_price_id, pb.stripe_price_id);
        }
    }
}

#[tokio::test]
async fn a_price_changed_in_recur_but_not_in_stripe_is_a_conflict_left_alone() {
    let gateway = gateway();
    let run = Uuid::now_v7().simple().to_string();
    let toml = common::catalog_toml(&run);
    gateway
        .sync_catalog(&Catalog::from_toml(&toml).unwrap())
        .await
        .unwrap();
    let edited = toml.replacen("amount = \"97.00\"", "amount = \"99.00\"", 1);
    assert_ne!(edited, toml);
    let report = gateway
        .sync_catalog(&Catalog::from_toml(&edited).unwrap())
        .await
        .unwrap();
    assert_eq!(report.created(), 0, "{report}");
    assert_eq!(report.conflicts(), 1, "{report}");
}

#[tokio::test]
async fn stripe_out_of_reach_is_gateway_unavailable_and_retryable() {
    // A port nothing listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let config = StripeConfig::new(
        recur_stripe::SecretKey::parse("sk_test_recur").unwrap(),
        &format!("http://127.0.0.1:{port}"),
    )
    .unwrap();
    let gateway = StripeGateway::new(&config).unwrap();
    let method = recur_commands::customer::PaymentMethod {
        token: "pm_card_visa".into(),
        brand: "visa".into(),
        last4: "4242".into(),
        exp_month: 12,
        exp_year: 2034,
        provider_customer: Some("cus_x".into()),
    };
    let charged = gateway.charge(&charge_request(&method, "1.00")).await;
    assert!(charged.is_err(), "{charged:?}");
    let attached = gateway.attach_payment_method(&attach_request(method)).await;
    assert!(attached.is_err(), "{attached:?}");
}

#[tokio::test]
async fn a_token_stripe_does_not_know_is_rejected_not_an_outage() {
    let gateway = gateway();
    let mut method = card(&gateway, "4242424242424242").await;
    method.token = format!("pm_missing{}", Uuid::now_v7().simple());
    let answer = gateway
        .attach_payment_method(&attach_request(method))
        .await
        .unwrap();
    assert!(
        matches!(answer, Err(CardError::Rejected { .. })),
        "{answer:?}"
    );
}
