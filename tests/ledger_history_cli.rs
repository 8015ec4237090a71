//! End to end: `recur ledger history` on a small ledger written through the
//! billing service: a customer with a declined and a successful payment.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../ledger/tests/common/mod.rs"]
mod common;

use std::process::Command;
use std::sync::Arc;

use recur_commands::billing::{NewCustomer, NewSubscription, Trial};
use recur_commands::customer::{ContactDetails, Segment};
use recur_commands::privacy::{MasterKey, Vault};
use recur_commands::{Billing, Catalog, CustomerId, InvoiceId, SimulatedGateway};
use recur_ledger::{Position, TestClock};
use serde_json::{Value, json};
use time::macros::datetime;

/// `recur ledger history ARGS --database LOCATION`: exit code, stdout, stderr.
fn history(location: &str, args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_recur"))
        .args(["ledger", "history"])
        .args(args)
        .args(["--database", location])
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

struct Written {
    store: common::TestLedger,
    customer: CustomerId,
    other: CustomerId,
    invoice: InvoiceId,
}

/// Customer A (with contact details) subscribes with a card that declines, then
/// pays with a card that works; customer B subscribes beside it.
async fn write() -> Written {
    let clock = TestClock::at(datetime!(2027-01-01 09:00 UTC));
    let store = common::sqlite_with(Arc::new(clock)).await;
    let billing = Billing::open(
        store.ledger.clone(),
        Catalog::default_catalog().unwrap(),
        Arc::new(SimulatedGateway::new()),
    )
    .await
    .unwrap()
    .with_vault(Arc::new(Vault::new(
        MasterKey::generate().unwrap().0,
        Vec::new(),
    )));
    let customer = |contact| NewCustomer {
        segment: Segment::Standard,
        tax_location: None,
        contact,
    };
    let a = billing
        .create_customer(customer(Some(ContactDetails {
            name: "Ada Lovelace".into(),
            email: "ada@example.com".into(),
            phone: None,
        })))
        .await
        .unwrap();
    billing
        .attach_payment_method(
            a,
            SimulatedGateway::failing_card("insufficient_funds", 12, 2030),
        )
        .await
        .unwrap();
    let subscribe = |customer_id| NewSubscription {
        customer_id,
        plan_id: "community_access".into(),
        price_id: None,
        quantity: 1,
        trial: Trial::Skip,
        coupon: None,
    };
    let sub = billing.subscribe(subscribe(a)).await.unwrap();
    let invoice = billing.subscription(sub).await.unwrap().invoices[0];
    billing
        .attach_payment_method(
            a,
            SimulatedGateway::tokenize("4242 4242 4242 4242", 12, 2031).unwrap(),
        )
        .await
        .unwrap();
    billing.pay_now(invoice).await.unwrap();
    let b = billing.create_customer(customer(None)).await.unwrap();
    billing
        .attach_payment_method(
            b,
            SimulatedGateway::tokenize("4242 4242 4242 4242", 1, 2032).unwrap(),
        )
        .await
        .unwrap();
    billing.subscribe(subscribe(b)).await.unwrap();
    Written {
        store,
        customer: a,
        other: b,
        invoice,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn history_prints_a_customers_facts_in_ledger_order_with_summaries_and_states() {
    let written = write().await;
    let location = written.store.location();
    let (a, b, invoice) = (written.customer, written.other, written.invoice);
    // What the ledger holds of A: every event of its four streams.
    let streams = [
        format!("customer-{a}"),
        format!("contact-{a}"),
        format!("invoice-{invoice}"),
    ];
    let all = written
        .store
        .ledger
        .read_all(Position(0), 10_000)
        .await
        .unwrap();
    let sub_stream = all
        .iter()
        .find(|e| e.event_type == "SubscriptionStarted" && e.payload.contains(&a.to_string()))
        .unwrap()
        .stream_id
        .to_string();
    let of_a: Vec<u64> = all
        .iter()
        .filter(|e| {
            streams.contains(&e.stream_id.to_string()) || e.stream_id.as_str() == sub_stream
        })
        .map(|e| e.position.0)
        .collect();

    // Text: one line per fact, in ledger order, none of B's, no contact details.
    let (code, out, err) = history(&location, &[&a.to_string()]);
    assert_eq!(code, 0, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), of_a.len(), "{out}");
    let positions: Vec<u64> = lines
        .iter()
        .map(|l| l.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(positions, of_a, "{out}");
    assert!(!out.contains(&b.to_string()), "{out}");
    assert!(
        !out.contains("Ada") && !out.contains("example.com"),
        "{out}"
    );
    let line_of = |text: &str| {
        lines
            .iter()
            .find(|l| l.contains(text))
            .unwrap_or_else(|| panic!("no line with {text:?} in\n{out}"))
    };
    assert!(
        line_of("ContactDetailsEncrypted").contains("Contact details updated => contact updated"),
        "{out}"
    );
    assert!(
        line_of("Payment attempt 1 declined (insufficient_funds)")
            .contains("invoice open, total 97.00 USD, due 97.00 USD, paid -, attempts 1"),
        "{out}"
    );
    assert!(
        line_of("Payment attempt 2 succeeded: 97.00 USD collected")
            .contains("invoice paid, total 97.00 USD, due 97.00 USD, paid 97.00 USD, attempts 2"),
        "{out}"
    );
    assert!(
        line_of(&format!("Invoice {invoice} finalized: total 97.00 USD"))
            .contains("InvoiceFinalized")
    );
    assert!(
        line_of("Card on file: visa ending 4242, expires 12/2031")
            .contains("card visa 4242 12/2031")
    );
    assert!(line_of("started on community_access at 97.00 USD").contains("2027-01-01"));

    // JSON: the entries as the API shows them, one document.
    let (code, out, err) = history(&location, &[&a.to_string(), "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list["object"], "list");
    assert_eq!(list["has_more"], false);
    let data = list["data"].as_array().unwrap();
    assert_eq!(
        data.iter()
            .map(|e| e["position"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        of_a
    );
    let paid = data
        .iter()
        .find(|e| e["type"] == "PaymentSucceeded")
        .unwrap();
    assert_eq!(paid["resource"], format!("invoice-{invoice}"));
    assert_eq!(paid["state"]["object"], "invoice");
    assert_eq!(paid["state"]["status"], "paid");
    assert_eq!(
        paid["state"]["amount_paid"],
        json!({"amount": "97.00", "currency": "USD"})
    );
    assert_eq!(paid["data"]["attempt_no"], 2);
    let contact = data
        .iter()
        .find(|e| e["resource"] == format!("contact-{a}"))
        .unwrap();
    assert_eq!(
        contact["state"],
        json!({"object": "contact", "details": "updated"})
    );

    // One invoice: by its id or its stream's name, that stream alone.
    let (code, by_id, err) = history(&location, &[&invoice.to_string()]);
    assert_eq!(code, 0, "{by_id}{err}");
    let (code, by_stream, err) = history(&location, &[&format!("invoice-{invoice}")]);
    assert_eq!(code, 0, "{by_stream}{err}");
    assert_eq!(by_id, by_stream);
    assert!(by_id.lines().count() >= 6, "{by_id}");
    assert!(
        by_id.lines().all(|l| !l.contains("CustomerCreated")),
        "{by_id}"
    );

    // Nothing by that name: an error that says so, exit 1.
    for unknown in [uuid::Uuid::now_v7().to_string(), "invoice-nope".to_owned()] {
        let (code, out, err) = history(&location, &[&unknown]);
        assert_eq!(code, 1, "{unknown}: {out}{err}");
        assert!(
            err.contains("no customer, subscription or invoice"),
            "{err}"
        );
    }
}
