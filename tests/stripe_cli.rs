//! End to end: `recur serve --gateway stripe` and `recur stripe sync-catalog`,
//! as built (with or without the cargo feature `stripe`). With it, the catalog
//! sync runs against the local Stripe fake that scripts/test.sh starts.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::PathBuf;
use std::process::{Command, Output};

/// A ledger file of the test's own, removed on drop.
struct TempLedger(PathBuf);

impl TempLedger {
    fn new(name: &str) -> Self {
        Self(std::env::temp_dir().join(format!(
            "recur-stripe-cli-{name}-{}.sqlite",
            uuid::Uuid::new_v4().simple()
        )))
    }

    fn url(&self) -> String {
        format!("sqlite:{}", self.0.display())
    }
}

impl Drop for TempLedger {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.0.display()));
        }
    }
}

fn recur(args: &[&str], key: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_recur"));
    command
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("RECUR_GATEWAY")
        .env("RECUR_DATA_DIR", std::env::temp_dir());
    match key {
        Some(key) => command.env("STRIPE_SECRET_KEY", key),
        None => command.env_remove("STRIPE_SECRET_KEY"),
    };
    command.output().unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn serve_with_the_stripe_gateway_says_what_is_missing_and_does_not_start() {
    let ledger = TempLedger::new("serve");
    let url = ledger.url();
    let args = [
        "serve",
        "--gateway",
        "stripe",
        "--listen",
        "127.0.0.1:0",
        "--database",
        &url,
        "--create",
    ];
    let output = recur(&args, None);
    assert!(!output.status.success(), "{output:?}");
    let said = stderr(&output);
    if cfg!(feature = "stripe") {
        assert!(said.contains("STRIPE_SECRET_KEY is not set"), "{said}");
    } else {
        assert!(said.contains("--features stripe"), "{said}");
    }
    // Nothing was opened: the ledger was not made.
    assert!(!ledger.0.exists());
    let unknown = recur(&["serve", "--gateway", "paypal"], None);
    assert!(!unknown.status.success());
    assert!(
        stderr(&unknown).contains("simulated"),
        "{}",
        stderr(&unknown)
    );
}

#[cfg(not(feature = "stripe"))]
#[test]
fn sync_catalog_without_stripe_support_says_how_to_build_it() {
    let output = recur(&["stripe", "sync-catalog"], Some("sk_test_recur"));
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("--features stripe"),
        "{}",
        stderr(&output)
    );
}

#[cfg(feature = "stripe")]
#[test]
fn sync_catalog_twice_creates_nothing_the_second_time() {
    assert!(
        std::env::var("STRIPE_API_BASE").is_ok(),
        "STRIPE_API_BASE is not set: run via `bash scripts/test.sh`, or start \
         scripts/localstripe/launcher.py and export STRIPE_API_BASE (docs/stripe.md)"
    );
    let ledger = TempLedger::new("sync");
    let url = ledger.url();
    let run = |json: bool| {
        let mut args = vec!["stripe", "sync-catalog", "--database", &url, "--create"];
        if json {
            args.push("--json");
        }
        recur(&args, Some("sk_test_recur"))
    };
    let first = run(true);
    assert!(first.status.success(), "{}", stderr(&first));
    let report: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
    let plans = report["plans"].as_array().unwrap();
    assert_eq!(plans.len(), 4, "{report}");
    // The default catalog's products may already be there from an earlier run
    // on the same fake: created or unchanged, never a conflict.
    for plan in plans {
        let status = plan["product"]["status"].as_str().unwrap();
        assert!(["created", "unchanged"].contains(&status), "{report}");
    }
    let second = run(false);
    assert!(second.status.success(), "{}", stderr(&second));
    let text = String::from_utf8(second.stdout).unwrap();
    assert!(
        text.contains("plan elite_coaching: product recur_elite_coaching unchanged"),
        "{text}"
    );
    assert!(
        text.trim_end().ends_with("0 created, 0 conflicts"),
        "{text}"
    );
}

/// A Stripe fake of this test's own (the launcher on a free port, fresh state),
/// stopped on drop: a reconciliation reads the whole account, so the charges of
/// tests running beside it on the shared fake must not be in it.
#[cfg(feature = "stripe")]
struct PrivateStripe {
    child: std::process::Child,
    base: String,
}

#[cfg(feature = "stripe")]
impl PrivateStripe {
    async fn start() -> Self {
        let python = std::env::var("RECUR_LOCALSTRIPE_PYTHON").unwrap_or_else(|_| {
            panic!(
                "RECUR_LOCALSTRIPE_PYTHON is not set: this test starts a Stripe fake of its own. \
                 Run it via `bash scripts/test.sh`, or install localstripe==1.15.10 in a venv and \
                 export RECUR_LOCALSTRIPE_PYTHON=<venv>/bin/python (docs/stripe.md)"
            )
        });
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let launcher = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../scripts/localstripe/launcher.py"
        );
        let child = Command::new(python)
            .args([launcher, "--port", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let fake = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        let client = reqwest::Client::new();
        for _ in 0..100 {
            let answer = client
                .get(format!("{}/v1/balance", fake.base))
                .bearer_auth("sk_test_recur")
                .send()
                .await;
            if answer.is_ok_and(|a| a.status().is_success()) {
                return fake;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        panic!(
            "the private localstripe launcher did not answer on {}",
            fake.base
        );
    }

    fn gateway(&self) -> recur_stripe::StripeGateway {
        let key = recur_stripe::SecretKey::parse("sk_test_recur").unwrap();
        recur_stripe::StripeGateway::new(&recur_stripe::StripeConfig::new(key, &self.base).unwrap())
            .unwrap()
    }
}

#[cfg(feature = "stripe")]
impl Drop for PrivateStripe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(feature = "stripe")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_names_exactly_a_charge_and_a_refund_behind_recurs_back_and_a_changed_amount() {
    use std::sync::Arc;

    use recur_commands::billing::NewCustomer;
    use recur_commands::customer::{PaymentMethod, Segment};
    use recur_commands::invoice::ChargeOutcome;
    use recur_commands::payment::{AttachRequest, ChargeRequest, PaymentGateway, RefundRequest};
    use recur_commands::{Billing, Catalog, CustomerId, InvoiceId};
    use recur_ledger::{LedgerConfig, Money, SystemClock};
    use time::OffsetDateTime;
    use time::format_description::well_known::Rfc3339;

    let fake = PrivateStripe::start().await;
    let stripe = Arc::new(fake.gateway());
    let visa = || PaymentMethod {
        token: "pm_card_visa".into(),
        brand: "visa".into(),
        last4: "4242".into(),
        exp_month: 12,
        exp_year: 2034,
        provider_customer: None,
    };
    let usd = |amount: &str| Money::parse(amount, "USD").unwrap();

    // Through Recur: two courses bought and paid at Stripe, 100.00 of the first refunded.
    let ledger_file = TempLedger::new("reconcile");
    let url = ledger_file.url();
    let ledger = recur_ledger::Ledger::open(
        LedgerConfig::new(url.clone()).create_if_missing(true),
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    let billing = Billing::open(ledger, Catalog::default_catalog().unwrap(), stripe.clone())
        .await
        .unwrap();
    let mut charges = Vec::new();
    for _ in 0..2 {
        let customer = billing
            .create_customer(NewCustomer {
                segment: Segment::Standard,
                tax_location: None,
                contact: None,
            })
            .await
            .unwrap();
        billing
            .attach_payment_method(customer, visa())
            .await
            .unwrap();
        let invoice = billing
            .purchase(customer, "self_paced_course", None)
            .await
            .unwrap();
        let state = billing.invoice(invoice).await.unwrap();
        let Some(ChargeOutcome::Succeeded { charge_id }) =
            state.attempts.last().and_then(|a| a.outcome.clone())
        else {
            panic!("the course was not paid at Stripe: {:?}", state.attempts);
        };
        charges.push((invoice, charge_id));
    }
    billing
        .refund(charges[0].0, usd("100.00"), "requested_by_customer")
        .await
        .unwrap();
    drop(billing);

    // Behind Recur's back: a charge and a refund of it made straight at Stripe.
    let stranger = CustomerId(uuid::Uuid::now_v7());
    let card = stripe
        .attach_payment_method(&AttachRequest {
            customer: stranger,
            method: visa(),
            provider_customer: None,
        })
        .await
        .unwrap()
        .unwrap();
    let invoice = InvoiceId(uuid::Uuid::now_v7());
    let ChargeOutcome::Succeeded { charge_id: stray } = stripe
        .charge(&ChargeRequest {
            idempotency_key: format!("{invoice}-attempt-1"),
            payment_method: card.token.clone(),
            amount: usd("42.00"),
            customer: stranger,
            invoice,
            attempt_no: 1,
            provider_customer: card.provider_customer.clone(),
            customer_present: false,
        })
        .await
        .unwrap()
    else {
        panic!("the stray charge was declined");
    };
    let stray_refund = stripe
        .refund(&RefundRequest {
            idempotency_key: format!("{invoice}-refund-1"),
            charge_id: stray.clone(),
            amount: usd("12.00"),
        })
        .await
        .unwrap();
    // And Stripe's record of Recur's second charge says 996.00, not 997.00.
    let now = OffsetDateTime::now_utc();
    let hour = time::Duration::hours(1);
    let listed = stripe
        .balance_transactions(now - hour, now + hour)
        .await
        .unwrap();
    let second = listed
        .iter()
        .find(|t| t.source.as_deref() == Some(charges[1].1.as_str()))
        .unwrap();
    let changed = reqwest::Client::new()
        .post(format!(
            "{}/_recur/balance_transactions/{}",
            fake.base, second.id
        ))
        .bearer_auth("sk_test_recur")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("amount=99600")
        .send()
        .await
        .unwrap();
    assert!(changed.status().is_success(), "{changed:?}");

    let (from, to) = (
        (now - hour).format(&Rfc3339).unwrap(),
        (now + hour).format(&Rfc3339).unwrap(),
    );
    let reconcile = |extra: &[&str]| {
        let mut args = vec![
            "reconcile",
            "--database",
            &url,
            "--from",
            &from,
            "--to",
            &to,
        ];
        args.extend(extra);
        let mut command = Command::new(env!("CARGO_BIN_EXE_recur"));
        command
            .args(&args)
            .env_remove("DATABASE_URL")
            .env("STRIPE_API_BASE", &fake.base)
            .env("STRIPE_SECRET_KEY", "sk_test_recur");
        command.output().unwrap()
    };
    let run = reconcile(&["--json"]);
    assert_eq!(run.status.code(), Some(1), "{}", stderr(&run));
    let report: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    let mut named: Vec<(String, String, String)> = report["mismatches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["mismatch"].as_str().unwrap().to_owned(),
                m["kind"].as_str().unwrap().to_owned(),
                m["object_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    named.sort();
    let mut expected = vec![
        (
            "amount_differs".into(),
            "charge".into(),
            charges[1].1.clone(),
        ),
        ("missing_in_ledger".into(), "charge".into(), stray.clone()),
        (
            "missing_in_ledger".into(),
            "refund".into(),
            stray_refund.clone(),
        ),
    ];
    expected.sort();
    assert_eq!(named, expected, "{report:#}");
    // Two charges and a refund of Recur's, a charge and a refund of nobody's.
    assert_eq!(
        (report["compared"].as_u64(), report["matched"].as_u64()),
        (Some(5), Some(2))
    );
    let changed_one = report["mismatches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mismatch"] == "amount_differs")
        .unwrap();
    assert_eq!(changed_one["ledger"]["amount_minor"], 99_700);
    assert_eq!(changed_one["provider"]["amount_minor"], 99_600);

    // The text form says the same; each run is recorded.
    let text_run = reconcile(&[]);
    assert_eq!(text_run.status.code(), Some(1), "{}", stderr(&text_run));
    let text = String::from_utf8_lossy(&text_run.stdout).into_owned();
    assert!(
        text.contains("compared 5 movement(s): 2 agree, 3 differ"),
        "{text}"
    );
    assert!(text.contains(&stray), "{text}");
    // Dates the wrong way round are an error (2), not a difference, and record nothing.
    let backwards = {
        let mut command = Command::new(env!("CARGO_BIN_EXE_recur"));
        command
            .args([
                "reconcile",
                "--database",
                &url,
                "--from",
                "2026-03-02",
                "--to",
                "2026-03-01",
            ])
            .env("STRIPE_API_BASE", &fake.base)
            .env("STRIPE_SECRET_KEY", "sk_test_recur");
        command.output().unwrap()
    };
    assert_eq!(backwards.status.code(), Some(2), "{}", stderr(&backwards));
    // A window with nothing on either side agrees: exit 0.
    let quiet = {
        let mut command = Command::new(env!("CARGO_BIN_EXE_recur"));
        command
            .args([
                "reconcile",
                "--database",
                &url,
                "--from",
                "2020-01-01",
                "--to",
                "2020-01-02",
            ])
            .env("STRIPE_API_BASE", &fake.base)
            .env("STRIPE_SECRET_KEY", "sk_test_recur");
        command.output().unwrap()
    };
    assert_eq!(quiet.status.code(), Some(0), "{}", stderr(&quiet));

    // GET /v1/reconciliations lists the three runs, newest first.
    let mut server = Command::new(env!("CARGO_BIN_EXE_recur"))
        .args(["serve", "--listen", "127.0.0.1:0", "--database", &url])
        .env_remove("DATABASE_URL")
        .env_remove("RECUR_GATEWAY")
        .env("RECUR_DATA_DIR", std::env::temp_dir())
        .env("RECUR_ADMIN_KEY", "test-admin-key-0123456789")
        .env(
            "RECUR_MASTER_KEY",
            "0f1e2d3c4b5a69788796a5b4c3d2e1f00112233445566778899aabbccddeeff0",
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = server.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).unwrap();
        line
    })
    .await
    .unwrap();
    let base = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("recur serve did not say where it listens: {line:?}"))
        .to_owned();
    let listed: serde_json::Value = reqwest::Client::new()
        .get(format!("http://{base}/v1/reconciliations?limit=2"))
        .bearer_auth("test-admin-key-0123456789")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    let runs = listed["data"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "{listed:#}");
    assert_eq!(listed["has_more"], true, "{listed:#}");
    // Newest first: the quiet window, then the text run.
    assert_eq!(
        (runs[0]["agrees"].as_bool(), runs[0]["compared"].as_u64()),
        (Some(true), Some(0))
    );
    assert_eq!(
        runs[1]["mismatches"].as_array().unwrap().len(),
        3,
        "{listed:#}"
    );
}

/// `recur demo` with these extra arguments and environment, on a fresh data
/// directory of its own: the JSON outcome.
#[cfg(feature = "stripe")]
fn demo_year(extra: &[&str], env: &[(&str, &str)]) -> serde_json::Value {
    let dir = std::env::temp_dir().join(format!("recur-demo-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut args = vec![
        "demo",
        "--seed",
        "7",
        "--customers",
        "60",
        "--months",
        "12",
        "--json",
        "--quiet",
    ];
    args.extend(extra);
    let mut command = Command::new(env!("CARGO_BIN_EXE_recur"));
    command
        .args(&args)
        .env_remove("DATABASE_URL")
        .env_remove("STRIPE_SECRET_KEY")
        .env_remove("STRIPE_API_BASE")
        .env("RECUR_DATA_DIR", &dir);
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(output.status.success(), "{}", stderr(&output));
    serde_json::from_slice(&output.stdout).unwrap()
}

#[cfg(feature = "stripe")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demo_year_through_stripe_agrees_with_the_simulated_year_and_with_stripes_books() {
    let fake = PrivateStripe::start().await;
    let simulated = demo_year(&[], &[]);
    let through_stripe = demo_year(
        &["--gateway", "stripe"],
        &[
            ("STRIPE_API_BASE", &fake.base),
            ("STRIPE_SECRET_KEY", "sk_test_recur"),
        ],
    );
    let (ours, theirs) = (&simulated["summary"], &through_stripe["summary"]);
    // The business is the same: invoices, payments, refunds, MRR month by month,
    // revenue, tax, dunning's outcomes, and what the people did.
    for field in [
        "customers",
        "mrr_by_month",
        "arr",
        "collected",
        "payments",
        "refunded",
        "refunds",
        "tax_payable",
        "revenue_recognized",
        "discounts",
        "deferred_revenue",
        "customer_credit",
        "bad_debt",
        "invoices",
        "books_balanced",
    ] {
        assert_eq!(ours[field], theirs[field], "{field} differs");
    }
    assert!(ours["payments"].as_u64().unwrap() > 100, "{ours:#}");
    assert_eq!(simulated["activity"], through_stripe["activity"]);
    let (our_failures, their_failures) = (&ours["failed_payments"], &theirs["failed_payments"]);
    for field in [
        "declined_attempts",
        "invoices",
        "recovered",
        "recovered_amount",
        "retrying",
        "written_off",
        "written_off_amount",
        "subscriptions_canceled",
    ] {
        assert_eq!(
            our_failures[field], their_failures[field],
            "failed_payments.{field} differs"
        );
    }
    // Only the decline codes differ: Stripe's one card that attaches and then
    // fails declines as generic_decline, where the simulation names its reasons.
    let codes = |failures: &serde_json::Value| -> std::collections::BTreeMap<String, u64> {
        serde_json::from_value(failures["decline_codes"].clone()).unwrap()
    };
    let (our_codes, their_codes) = (codes(our_failures), codes(their_failures));
    assert_eq!(
        our_codes.get("no_payment_method"),
        their_codes.get("no_payment_method")
    );
    assert_eq!(
        their_codes
            .keys()
            .filter(|c| *c != "no_payment_method")
            .collect::<Vec<_>>(),
        vec!["generic_decline"],
        "{their_codes:?}"
    );
    assert_eq!(
        our_codes.values().sum::<u64>(),
        their_codes.values().sum::<u64>()
    );

    // Stripe's books hold exactly the money Recur says moved: one charge per
    // payment, one refund per refund, the same totals.
    let now = time::OffsetDateTime::now_utc();
    let listed = fake
        .gateway()
        .balance_transactions(
            now - time::Duration::hours(2),
            now + time::Duration::hours(1),
        )
        .await
        .unwrap();
    let sum = |kind: &str| -> (u64, i64) {
        let of_kind: Vec<_> = listed.iter().filter(|t| t.kind == kind).collect();
        (
            of_kind.len() as u64,
            of_kind.iter().map(|t| t.amount_minor).sum(),
        )
    };
    let cents = |money: &serde_json::Value| -> i64 {
        let mut amount: rust_decimal::Decimal = money["amount"].as_str().unwrap().parse().unwrap();
        amount.rescale(2);
        i64::try_from(amount.mantissa()).unwrap()
    };
    assert_eq!(
        sum("charge"),
        (
            theirs["payments"].as_u64().unwrap(),
            cents(&theirs["collected"])
        )
    );
    assert_eq!(
        sum("refund"),
        (
            theirs["refunds"].as_u64().unwrap(),
            -cents(&theirs["refunded"])
        )
    );
}

#[cfg(feature = "stripe")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn localstripes_signed_webhooks_are_verified_kept_once_and_translated() {
    const ADMIN: &str = "test-admin-key-0123456789";
    const MASTER: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00112233445566778899aabbccddeeff0";
    const SECRET: &str = "whsec_recur_localstripe";
    let fake = PrivateStripe::start().await;
    let ledger = TempLedger::new("webhooks");
    let url = ledger.url();
    let mut server = Command::new(env!("CARGO_BIN_EXE_recur"))
        .args([
            "serve",
            "--gateway",
            "stripe",
            "--listen",
            "127.0.0.1:0",
            "--database",
            &url,
            "--create",
        ])
        .env_remove("DATABASE_URL")
        .env_remove("RECUR_GATEWAY")
        .env("RECUR_DATA_DIR", std::env::temp_dir())
        .env("RECUR_ADMIN_KEY", ADMIN)
        .env("RECUR_MASTER_KEY", MASTER)
        .env(
            "RECUR_STRIPE_WEBHOOK_SECRETS",
            format!("whsec_old_one,{SECRET}"),
        )
        .env("STRIPE_API_BASE", &fake.base)
        .env("STRIPE_SECRET_KEY", "sk_test_recur")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = server.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).unwrap();
        line
    })
    .await
    .unwrap();
    let base = format!(
        "http://{}",
        line.split("http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("recur serve did not say where it listens: {line:?}"))
    );
    let client = reqwest::Client::new();
    // localstripe signs each event with the secret registered for the endpoint.
    let registered = client
        .post(format!("{}/_config/webhooks/recur", fake.base))
        .bearer_auth("sk_test_recur")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("url={base}/webhooks/stripe&secret={SECRET}"))
        .send()
        .await
        .unwrap();
    assert!(registered.status().is_success(), "{registered:?}");

    let post = |path: String, body: serde_json::Value| {
        let client = client.clone();
        let base = base.clone();
        async move {
            let answer = client
                .post(format!("{base}{path}"))
                .bearer_auth(ADMIN)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = answer.status();
            let body: serde_json::Value = answer.json().await.unwrap();
            assert!(status.is_success(), "{path}: {status} {body}");
            body
        }
    };
    let customer = post("/v1/customers".into(), serde_json::json!({})).await;
    let customer = customer["id"].as_str().unwrap().to_owned();
    post(
        format!("/v1/customers/{customer}/payment_method"),
        serde_json::json!({"token": "pm_card_visa", "brand": "visa", "last4": "4242", "exp_month": 12, "exp_year": 2040}),
    )
    .await;
    let subscription = post(
        "/v1/subscriptions".into(),
        serde_json::json!({"customer": customer, "plan": "community_access", "trial_days": 0}),
    )
    .await;
    assert_eq!(subscription["status"], "active", "{subscription}");

    // Stripe's payment_intent.succeeded comes back signed and is kept.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let kept = loop {
        let page: serde_json::Value = client
            .get(format!(
                "{base}/v1/events?type=StripeEventReceived&limit=100"
            ))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let found = page["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["data"]["stripe_type"] == "payment_intent.succeeded")
            .cloned();
        if let Some(found) = found {
            break found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no signed payment_intent.succeeded kept: {page:#}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    };
    let evt = kept["data"]["stripe_event_id"].as_str().unwrap().to_owned();
    assert!(evt.starts_with("evt_"), "{kept:#}");
    assert_eq!(kept["source"], "webhook");
    let found: serde_json::Value = client
        .get(format!("{base}/v1/events?external_id={evt}"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(found["data"].as_array().unwrap().len(), 1, "{found:#}");
    let _ = server.kill();
    let _ = server.wait();

    // The translator read it: the invoice Recur had already paid stays paid once.
    let translated = Command::new(env!("CARGO_BIN_EXE_recur"))
        .args(["stripe", "translate", "--from-start", "--database", &url])
        .env_remove("DATABASE_URL")
        .env("RECUR_DATA_DIR", std::env::temp_dir())
        .env("RECUR_MASTER_KEY", MASTER)
        .output()
        .unwrap();
    assert!(translated.status.success(), "{}", stderr(&translated));
    let said = String::from_utf8_lossy(&translated.stdout).into_owned();
    let line = said
        .lines()
        .find(|l| l.contains(&evt))
        .unwrap_or_else(|| panic!("{evt} not translated: {said}"));
    assert!(line.contains("payment_intent.succeeded"), "{line}");
    assert!(said.contains("0 ledger event(s) appended"), "{said}");
}
