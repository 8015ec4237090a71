//! `recur demo`: deterministic for a seed, balanced books, and a ledger whose
//! replay from the first event rebuilds exactly the live states.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::process::Command;
use std::sync::Arc;

use recur_commands::{Billing, Catalog, SimulatedGateway};
use recur_gateway::demo::{self, DemoOptions};
use recur_ledger::{Ledger, LedgerConfig, SystemClock};

fn temp_location(name: &str) -> (String, std::path::PathBuf) {
    let path = std::env::temp_dir().join(format!(
        "recur-demo-test-{name}-{}.sqlite",
        uuid::Uuid::new_v4().simple()
    ));
    (format!("sqlite:{}", path.display()), path)
}

fn remove(path: &std::path::Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

/// A fixed master key for the demo's contact details (no key file is made).
const TEST_MASTER_KEY: &str = "5d1f0c2a9b8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a392817060504";

fn test_master_keys() -> recur_gateway::config::MasterKeyArgs {
    recur_gateway::config::MasterKeyArgs {
        master_key: Some(recur_gateway::config::Secret::new(TEST_MASTER_KEY)),
        ..Default::default()
    }
}

fn options(database: String, seed: u64) -> DemoOptions {
    DemoOptions {
        seed,
        customers: 60,
        months: 6,
        database: Some(database),
        data_dir: std::path::PathBuf::from("."),
        progress: false,
        master_keys: test_master_keys(),
        payments: recur_gateway::demo::DemoPayments::simulated(),
        channels: recur_gateway::demo::DemoChannels::in_memory(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_is_deterministic_for_a_seed_and_its_books_balance() {
    let (first_db, first_path) = temp_location("a");
    let (second_db, second_path) = temp_location("b");
    let (first, _) = demo::run(&options(first_db, 7)).await.unwrap();
    let (second, _) = demo::run(&options(second_db, 7)).await.unwrap();
    remove(&first_path);
    remove(&second_path);
    assert_eq!(first.summary, second.summary, "same seed, same business");
    assert_eq!(first.activity, second.activity);
    let s = &first.summary;
    assert!(s.books_balanced);
    assert!(first.ledger_intact);
    // The demo ends sealed: every event under a seal, the last one's digest reported.
    assert_eq!(first.unsealed_events, 0);
    let seal = first
        .final_seal
        .as_ref()
        .expect("the demo seals at the end");
    assert_eq!(
        seal.to_position, s.events,
        "the last seal reaches the last event"
    );
    assert_eq!(seal.digest.len(), 64);
    assert_eq!(
        first.events_verified, s.events,
        "the report folded every event"
    );
    assert_eq!(s.mrr_by_month.len(), 6);
    assert!(first.activity.customers == 60 && s.payments > 60);
    // Dunning: every invoice with a decline has its campaign, messages went out,
    // and no card that could not succeed was tried again.
    assert_eq!(s.dunning.campaigns, s.failed_payments.invoices);
    assert!(s.dunning.campaigns > 0, "{:?}", s.dunning);
    assert!(
        s.dunning.sent.get("email").copied().unwrap_or(0) > 0,
        "{:?}",
        s.dunning
    );
    assert_eq!(s.dunning.futile_retries, 0);
    // Cash in the gateway is what was collected less what was refunded.
    assert!(s.collected.is_positive());
    let customers: u64 = s.customers.values().sum();
    assert_eq!(customers, 60);

    let (third_db, third_path) = temp_location("c");
    let (other, _) = demo::run(&options(third_db, 8)).await.unwrap();
    remove(&third_path);
    assert_ne!(
        other.summary, first.summary,
        "another seed, another business"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_the_demo_ledger_from_the_first_event_rebuilds_the_same_states() {
    let (location, path) = temp_location("replay");
    let (outcome, live) = demo::run(&options(location.clone(), 11)).await.unwrap();
    // A second process on the same ledger, with nothing cached: every state comes
    // from folding the streams from their first event.
    let ledger = Ledger::open(LedgerConfig::new(location), Arc::new(SystemClock))
        .await
        .unwrap();
    let replayed = Billing::open(
        ledger,
        Catalog::default_catalog().unwrap(),
        Arc::new(SimulatedGateway::new()),
    )
    .await
    .unwrap();
    assert!(!outcome.subscriptions.is_empty());
    let mut invoices = 0;
    for sub in &outcome.subscriptions {
        let state = live.subscription(*sub).await.unwrap();
        assert_eq!(replayed.subscription(*sub).await.unwrap(), state);
        let customer = state.customer_id.unwrap();
        assert_eq!(
            replayed.customer(customer).await.unwrap(),
            live.customer(customer).await.unwrap()
        );
        for invoice in &state.invoices {
            assert_eq!(
                replayed.invoice(*invoice).await.unwrap(),
                live.invoice(*invoice).await.unwrap()
            );
            invoices += 1;
        }
    }
    assert!(invoices > outcome.subscriptions.len());
    remove(&path);
}

/// `T::decode_payload` (tag first) gives what serde's derived decoder gives, when
/// `payload` is a `T` at all; returns whether it was.
fn decodes_alike<T>(payload: &str) -> bool
where
    T: recur_commands::DomainEvent + PartialEq + std::fmt::Debug,
{
    let Ok(derived) = serde_json::from_str::<T>(payload) else {
        return false;
    };
    assert_eq!(T::decode_payload(payload).unwrap(), derived, "{payload}");
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_demo_event_decodes_tag_first_as_serde_derives_it() {
    use recur_commands::coupon::CouponEvent;
    use recur_commands::customer::{ContactEvent, CustomerEvent};
    use recur_commands::invoice::InvoiceEvent;
    use recur_commands::subscription::SubscriptionEvent;
    use recur_ledger::Position;

    let (location, path) = temp_location("decode");
    demo::run(&options(location.clone(), 5)).await.unwrap();
    let ledger = Ledger::open(LedgerConfig::new(location), Arc::new(SystemClock))
        .await
        .unwrap();
    let mut kinds = std::collections::BTreeSet::new();
    let mut after = Position(0);
    loop {
        let page = ledger.read_all(after, 5_000).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.position;
        for event in &page {
            let payload: &str = &event.payload;
            let decoded = decodes_alike::<InvoiceEvent>(payload)
                || decodes_alike::<SubscriptionEvent>(payload)
                || decodes_alike::<CustomerEvent>(payload)
                || decodes_alike::<ContactEvent>(payload)
                || decodes_alike::<CouponEvent>(payload);
            if decoded {
                kinds.insert(event.event_type.clone());
            }
        }
    }
    remove(&path);
    // Most of the catalogue: every enum, unit and struct variants alike.
    assert!(kinds.len() >= 15, "{kinds:?}");
    for kind in [
        "InvoiceFinalized",
        "SubscriptionStarted",
        "CustomerCreated",
        "CouponRedeemed",
    ] {
        assert!(kinds.contains(kind), "{kind} missing from {kinds:?}");
    }
}

#[test]
fn recur_demo_prints_a_summary_and_json() {
    let dir =
        std::env::temp_dir().join(format!("recur-demo-cli-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_recur"))
            .arg("demo")
            .args(args)
            .env("RECUR_DATA_DIR", &dir)
            .env_remove("DATABASE_URL")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let text = run(&["--customers", "25", "--months", "3"]);
    assert!(text.contains("MRR at each month end"), "{text}");
    assert!(text.contains("hash chains verified: intact"), "{text}");
    assert!(text.contains("final seal digest "), "{text}");
    assert!(
        dir.join("recur-demo.sqlite").exists(),
        "the embedded default file"
    );
    // Run again: the file is replaced, not appended to, and --json says the same.
    let json: serde_json::Value =
        serde_json::from_str(&run(&["--customers", "25", "--months", "3", "--json"])).unwrap();
    assert_eq!(json["customers"], 25);
    assert_eq!(json["summary"]["books_balanced"], true);
    assert_eq!(json["unsealed_events"], 0);
    let digest = json["final_seal"]["digest"].as_str().unwrap_or_default();
    assert_eq!(digest.len(), 64, "{json}");
    // It is the ledger's own head seal digest, as `verify` reports it.
    let verify = Command::new(env!("CARGO_BIN_EXE_recur"))
        .args(["ledger", "verify", "--json", "--database"])
        .arg(format!(
            "sqlite:{}",
            dir.join("recur-demo.sqlite").display()
        ))
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    let verified: serde_json::Value = serde_json::from_slice(&verify.stdout).unwrap();
    assert_eq!(verified["head_digest"], digest);
    assert_eq!(verified["unsealed_events"], 0);
    assert_eq!(
        json["summary"]["mrr_by_month"].as_array().map(Vec::len),
        Some(3)
    );
    let bad = Command::new(env!("CARGO_BIN_EXE_recur"))
        .args(["demo", "--customers", "0"])
        .env("RECUR_DATA_DIR", &dir)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--customers must be 1 to"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_ledger_rebuilds_every_projection_to_the_live_tables() {
    let (location, path) = temp_location("projections");
    let (outcome, _) = demo::run(&options(location.clone(), 5)).await.unwrap();
    let ledger = Ledger::open(LedgerConfig::new(location.clone()), Arc::new(SystemClock))
        .await
        .unwrap();
    // Live: the demo built the read models by following the ledger, as `recur serve` does.
    let mut live =
        recur_projections::Projector::open(ledger.clone(), recur_projections::mrr::Mrr::new())
            .await
            .unwrap();
    assert_eq!(
        live.catch_up().await.unwrap(),
        0,
        "the demo left them current"
    );
    assert_eq!(live.position(), ledger.last_position().await.unwrap());
    let db = live.db().clone();
    let before = recur_projections::mrr::snapshot(&db).await.unwrap();
    // The demo's ARR is the projection's: 12 × the sum of per-subscription MRR.
    let (subscriptions_mrr,): (i64,) = db
        .row(&recur_projections::db::Stmt::new(
            format!(
                "SELECT CAST(SUM(mrr_minor) AS BIGINT) FROM {}",
                recur_projections::mrr::SUBSCRIPTIONS
            ),
            vec![],
        ))
        .await
        .unwrap();
    assert!(subscriptions_mrr > 0);
    assert_eq!(
        outcome.summary.arr.to_minor().unwrap(),
        12 * subscriptions_mrr
    );
    let last_month = outcome.summary.mrr_by_month.last().unwrap().1;
    assert_eq!(last_month.to_minor().unwrap(), subscriptions_mrr);
    let mut customers = recur_projections::Projector::open(
        ledger.clone(),
        recur_projections::customers::Customers::new(),
    )
    .await
    .unwrap();
    customers.catch_up().await.unwrap();
    let mut customers_before = recur_projections::customers::read(&db, None).await.unwrap();
    customers_before.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(customers_before.len() as u64, outcome.activity.customers);
    assert!(before.len() > 100);
    // The CLI rebuild, from the first event.
    let status = Command::new(env!("CARGO_BIN_EXE_recur"))
        .args(["projections", "rebuild", "--all", "--database", &location])
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert_eq!(recur_projections::mrr::snapshot(&db).await.unwrap(), before);
    let mut customers_after = recur_projections::customers::read(&db, None).await.unwrap();
    customers_after.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        customers_after, customers_before,
        "the customer view rebuilds to the same rows"
    );
    // Every customer's lifetime paid adds up to what the demo collected.
    let paid: i64 = customers_after.iter().map(|(_, r)| r.paid_minor).sum();
    assert_eq!(paid, outcome.summary.collected.to_minor().unwrap());
    // The accounts projection's books match the demo's own summary.
    let books = recur_projections::accounts::trial_balance(&db, None)
        .await
        .unwrap();
    let (debit, credit) = books
        .iter()
        .fold((0, 0), |(d, c), b| (d + b.debit_minor, c + b.credit_minor));
    assert_eq!(debit, credit, "the trial balance is zero");
    let cash = books
        .iter()
        .find(|b| b.account == "gateway_balance")
        .unwrap();
    let expected = outcome
        .summary
        .collected
        .checked_sub(outcome.summary.refunded)
        .unwrap();
    assert_eq!(
        cash.debit_minor - cash.credit_minor,
        expected.to_minor().unwrap()
    );
    let status = Command::new(env!("CARGO_BIN_EXE_recur"))
        .args(["projections", "status", "--database", &location])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    let mrr_line = text
        .lines()
        .find(|l| l.starts_with("mrr"))
        .unwrap_or_default();
    let fields: Vec<&str> = mrr_line.split_whitespace().collect();
    assert_eq!(
        fields.get(3..),
        Some(&["0", "current"][..]),
        "caught up: {text}"
    );
    remove(&path);
}

#[test]
fn an_invalid_past_due_churn_setting_stops_recur_at_start() {
    let out = Command::new(env!("CARGO_BIN_EXE_recur"))
        .args(["projections", "status", "--database", "sqlite::memory:"])
        .env("RECUR_PAST_DUE_CHURN_DAYS", "seven")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("RECUR_PAST_DUE_CHURN_DAYS") && stderr.contains("1 to 365"),
        "{stderr}"
    );
}

/// Folds the whole ledger into the demo's report (books, MRR by month, counts).
async fn summarize(ledger: &Ledger) -> demo::report::Summary {
    let mut report = demo::report::Report::new();
    let mut after = recur_ledger::Position::START;
    loop {
        let page = ledger.read_all(after, 1_000).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.position;
        for event in &page {
            report.apply(event).unwrap();
        }
    }
    report.finish()
}

/// The erasure test of issue 14: a demo year, three customers erased through
/// the CLI, then the SQLite file (and its write-ahead log) holds none of their
/// personal data in any form — not in clear, and not decryptable even with the
/// master key — while the books, MRR history and the chain are unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasing_three_demo_customers_leaves_none_of_their_data_and_the_same_books() {
    let (location, path) = temp_location("erase");
    let (outcome, live) = demo::run(&options(location.clone(), 5)).await.unwrap();
    let ledger = live.ledger().clone();
    let mut customers = Vec::new();
    let mut after = recur_ledger::Position::START;
    while customers.len() < 5 {
        let page = ledger.read_all(after, 1_000).await.unwrap();
        after = page.last().unwrap().position;
        for event in page {
            if event.event_type == "CustomerCreated" {
                let id = event.stream_id.as_str().trim_start_matches("customer-");
                customers.push(recur_commands::CustomerId::parse(id).unwrap());
            }
        }
    }
    let mut people = Vec::new();
    for id in &customers {
        people.push(
            live.contact(*id)
                .await
                .unwrap()
                .expect("demo people have contact details"),
        );
    }
    let before = summarize(&ledger).await;
    assert_eq!(before.events, outcome.summary.events);
    drop((live, ledger));

    let recur = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_recur"))
            .args(args)
            .env_remove("DATABASE_URL")
            .env("RECUR_MASTER_KEY", TEST_MASTER_KEY)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    for id in &customers[..3] {
        let (code, said) = recur(&[
            "customer",
            "forget",
            &id.to_string(),
            "--database",
            &location,
        ]);
        assert_eq!(code, Some(0), "{said}");
        assert!(said.contains("data key destroyed"), "{said}");
    }
    let (code, said) = recur(&["ledger", "verify", "--database", &location]);
    assert_eq!(code, Some(0), "the chain is intact after erasure: {said}");

    // Not in the file in any form a reader could use.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend(std::fs::read(format!("{}-wal", path.display())).unwrap_or_default());
    let holds = |needle: &str| bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
    for person in &people {
        for text in [&person.name, &person.email, person.phone.as_ref().unwrap()] {
            assert!(!holds(text), "{text} is in the SQLite file in clear");
        }
    }
    // With the master key, the erased are gone and the others still readable.
    let ledger = Ledger::open(LedgerConfig::new(location), Arc::new(SystemClock))
        .await
        .unwrap();
    let vault = test_master_keys()
        .vault(
            std::path::Path::new("."),
            recur_gateway::config::KeyFile::MustExist,
        )
        .unwrap();
    let billing = Billing::open(
        ledger.clone(),
        Catalog::default_catalog().unwrap(),
        Arc::new(SimulatedGateway::new()),
    )
    .await
    .unwrap()
    .with_vault(Arc::new(vault));
    for (id, person) in customers.iter().zip(&people) {
        let erased = customers[..3].contains(id);
        let contact = billing.contact(*id).await.unwrap();
        assert_eq!(contact.is_none(), erased, "{id}");
        if !erased {
            assert_eq!(contact.as_ref(), Some(person));
        }
        assert_eq!(
            billing.customer(*id).await.unwrap().erased_at.is_some(),
            erased
        );
    }
    // The books, MRR history and every count but the three erasure events.
    let mut after = summarize(&ledger).await;
    assert_eq!(after.events, before.events + 3);
    after.events = before.events;
    assert_eq!(after, before);
    let (mrr_by_month, arr) = demo::projected_mrr(&ledger, 6).await.unwrap();
    assert_eq!(mrr_by_month, outcome.summary.mrr_by_month);
    assert_eq!(arr, outcome.summary.arr);
    drop((billing, ledger));
    remove(&path);
}

/// `recur ledger rekey` copies a whole demo ledger — appends straddling pages,
/// the scheduler's many events of one instant, idempotency keys — into a copy
/// that verifies and folds to the same books.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demo_ledger_rekeys_into_a_copy_with_the_same_books() {
    let (location, path) = temp_location("rekey-from");
    let (outcome, live) = demo::run(&options(location.clone(), 3)).await.unwrap();
    drop(live);
    let (copy, copy_path) = temp_location("rekey-to");
    let out = Command::new(env!("CARGO_BIN_EXE_recur"))
        .args(["ledger", "rekey", "--database", &location, "--to", &copy])
        .env_remove("DATABASE_URL")
        .env("RECUR_MASTER_KEY", TEST_MASTER_KEY)
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains(&format!("re-keyed {} events", outcome.summary.events)),
        "{said}"
    );
    let original = Ledger::open(LedgerConfig::new(location), Arc::new(SystemClock))
        .await
        .unwrap();
    let copied = Ledger::open(LedgerConfig::new(copy), Arc::new(SystemClock))
        .await
        .unwrap();
    assert_eq!(summarize(&copied).await, summarize(&original).await);
    drop((original, copied));
    remove(&path);
    remove(&copy_path);
}
