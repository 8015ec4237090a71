//! End to end over HTTP: `recur serve` started on a free port against a fresh
//! Postgres database and a fresh SQLite file, driven with a real client.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../ledger/tests/common/mod.rs"]
mod common;

#[path = "../api/tests/common/json.rs"]
mod json;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const ADMIN_KEY: &str = "test-admin-key-0123456789";
/// The master key of personal data for every server these tests start.
const MASTER_KEY: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00112233445566778899aabbccddeeff0";

struct Server {
    child: Child,
    base: String,
    location: String,
    client: reqwest::Client,
    _store: Option<common::TestLedger>,
    _dir: Option<std::path::PathBuf>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = &self._dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Backend {
    Postgres,
    Sqlite,
}

async fn serve(backend: Backend) -> Server {
    serve_from(backend, None).await
}

/// `recur serve` on a test clock that starts at `start` (RFC 3339), or now.
async fn serve_from(backend: Backend, start: Option<&str>) -> Server {
    serve_with(backend, start, &[]).await
}

/// [`serve_from`] with more `recur serve` options.
async fn serve_with(backend: Backend, start: Option<&str>, extra: &[&str]) -> Server {
    let (location, store, dir) = match backend {
        Backend::Postgres => {
            let store = common::postgres().await;
            (store.location(), Some(store), None)
        }
        Backend::Sqlite => {
            let dir =
                std::env::temp_dir().join(format!("recur-api-{}", uuid::Uuid::new_v4().simple()));
            std::fs::create_dir_all(&dir).unwrap();
            (
                format!("sqlite:{}", dir.join("api.sqlite").display()),
                None,
                Some(dir),
            )
        }
    };
    // A new ledger: `--create` asks for the SQLite file (restarts do without it).
    let mut args = vec!["--create"];
    args.extend(extra);
    let (child, base) = spawn_serve(&location, start, &args).await;
    Server {
        child,
        base,
        location,
        client: reqwest::Client::new(),
        _store: store,
        _dir: dir,
    }
}

/// Starts `recur serve` on `location`: the child and its base URL.
async fn spawn_serve(location: &str, start: Option<&str>, extra: &[&str]) -> (Child, String) {
    let mut args = vec![
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--test-clock",
        "--database",
        location,
    ];
    if let Some(start) = start {
        args.extend(["--test-clock-start", start]);
    }
    args.extend(extra);
    let mut child = Command::new(env!("CARGO_BIN_EXE_recur"))
        .args(args)
        .env("RECUR_ADMIN_KEY", ADMIN_KEY)
        .env("RECUR_MASTER_KEY", MASTER_KEY)
        .env_remove("DATABASE_URL")
        // The defaults, whatever the caller's shell says (they never throttle a test).
        .env_remove("RECUR_RATE_LIMIT_PER_KEY_PER_S")
        .env_remove("RECUR_RATE_LIMIT_PER_KEY_BURST")
        .env_remove("RECUR_RATE_LIMIT_PER_ADDRESS_PER_S")
        .env_remove("RECUR_RATE_LIMIT_PER_ADDRESS_BURST")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line
    })
    .await
    .unwrap();
    let address = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("recur serve did not say where it listens: {line:?}"))
        .to_owned();
    (child, format!("http://{address}"))
}

impl Server {
    /// Stops the server and starts another on the same ledger (its test clock
    /// resumes where the ledger's last event left it).
    async fn restart(&mut self) {
        self.restart_with(&[]).await;
    }

    /// [`Server::restart`] with more `recur serve` options.
    async fn restart_with(&mut self, extra: &[&str]) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let (child, base) = spawn_serve(&self.location, None, extra).await;
        self.child = child;
        self.base = base;
    }
}

/// An answer: status, headers and JSON body.
struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Answer {
    /// The response read whole: its body as JSON, or as a string if it is not.
    async fn of(response: reqwest::Response) -> Self {
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Answer {
            status,
            headers,
            body,
        }
    }
}

impl Server {
    async fn call(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        Answer::of(request.send().await.unwrap()).await
    }

    async fn post(&self, path: &str, body: Value) -> Answer {
        self.call(Method::POST, path, Some(ADMIN_KEY), Some(body), &[])
            .await
    }

    async fn get(&self, path: &str) -> Answer {
        self.call(Method::GET, path, Some(ADMIN_KEY), None, &[])
            .await
    }

    /// A community subscription without trial: the answer, its id, its write's
    /// position and its first day (YYYY-MM-DD).
    async fn community_subscription(&self, customer: &str) -> (Answer, String, u64, String) {
        let created = self
            .post(
                "/v1/subscriptions",
                json!({"customer": customer, "plan": "community_access", "trial_days": 0}),
            )
            .await;
        let sub = created.body["id"].as_str().unwrap().to_owned();
        let position = created.body["position"].as_u64().unwrap();
        let today = created.body["current_period"]["start"].as_str().unwrap()[..10].to_owned();
        (created, sub, position, today)
    }

    async fn customer_with_card(&self) -> String {
        let customer = self
            .post(
                "/v1/customers",
                json!({"tax_location": {"country": "US", "region": "TX"}}),
            )
            .await;
        assert_eq!(customer.status, StatusCode::CREATED, "{}", customer.body);
        let id = customer.body["id"].as_str().unwrap().to_owned();
        let card = json!({"token": "pm_card_visa", "brand": "visa", "last4": "4242", "exp_month": 12, "exp_year": 2040});
        let attached = self
            .post(&format!("/v1/customers/{id}/payment_method"), card)
            .await;
        assert_eq!(attached.status, StatusCode::OK, "{}", attached.body);
        id
    }
}

fn money(amount: &str) -> Value {
    json!({"amount": amount, "currency": "USD"})
}

async fn the_billing_scenarios_run_through_the_api(backend: Backend) {
    let server = serve(backend).await;
    let customer = server.customer_with_card().await;

    // Elite without trial: invoiced and paid at once; the write answers with its position.
    let created = server
        .post(
            "/v1/subscriptions",
            json!({"customer": customer, "plan": "elite_coaching", "trial_days": 0}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(created.body["status"], "active");
    assert!(created.body["position"].as_u64().unwrap() > 0);
    let sub = created.body["id"].as_str().unwrap().to_owned();
    let version = created.body["version"].as_u64().unwrap();
    assert_eq!(created.headers["etag"], format!("\"{version}\"").as_str());

    // Half a month later: preview, then downgrade now under If-Match.
    let clock = server
        .post("/v1/test_clock/advance", json!({"seconds": 15 * 86_400}))
        .await;
    assert_eq!(clock.status, StatusCode::OK, "{}", clock.body);
    let change = json!({"plan": "group_coaching", "timing": "now"});
    let preview = server
        .post(
            &format!("/v1/subscriptions/{sub}/preview_change"),
            change.clone(),
        )
        .await;
    assert_eq!(preview.status, StatusCode::OK, "{}", preview.body);
    assert_eq!(preview.body["lines"].as_array().unwrap().len(), 2);
    let credit = preview.body["lines"][0]["amount"]["amount"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(credit.starts_with('-'));
    let changed = server
        .call(
            Method::POST,
            &format!("/v1/subscriptions/{sub}/change"),
            Some(ADMIN_KEY),
            Some(change),
            &[("If-Match", &format!("\"{version}\""))],
        )
        .await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.body);
    assert_eq!(changed.body["plan"], "group_coaching");
    let invoices = server
        .get(&format!("/v1/invoices?subscription={sub}"))
        .await;
    assert_eq!(invoices.status, StatusCode::OK);
    let data = invoices.body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(
        data[1]["lines"][0]["amount"]["amount"].as_str().unwrap(),
        credit,
        "the preview was what was invoiced"
    );

    // A partial refund of the first invoice, with Texas tax on it.
    let first = data[0]["id"].as_str().unwrap();
    assert_eq!(data[0]["totals"]["tax"], money("312.50"));
    let refunded = server
        .post(
            &format!("/v1/invoices/{first}/refund"),
            json!({"amount": money("100.00"), "reason": "requested_by_customer"}),
        )
        .await;
    assert_eq!(refunded.status, StatusCode::OK, "{}", refunded.body);
    assert_eq!(refunded.body["amount_refunded"], money("100.00"));

    // The customer's page, from the read models, once they have the refund.
    let refund_position = refunded.body["position"].as_u64().unwrap();
    let view = server
        .get(&format!(
            "/v1/customers/{customer}/view?min_position={refund_position}"
        ))
        .await;
    assert_eq!(view.status, StatusCode::OK, "{}", view.body);
    assert_eq!(view.body["card"], "visa 4242 12/2040");
    assert_eq!(view.body["refunded"], money("100.00"));
    assert_eq!(view.body["subscriptions"][0]["plan"], "group_coaching");
    assert_eq!(view.body["dunning"], "none");
    let paid: rust_decimal::Decimal = data
        .iter()
        .filter_map(|i| i["amount_paid"]["amount"].as_str())
        .map(|a| a.parse::<rust_decimal::Decimal>().unwrap())
        .sum();
    assert_eq!(
        view.body["paid"]["amount"]
            .as_str()
            .unwrap()
            .parse::<rust_decimal::Decimal>()
            .unwrap(),
        paid
    );
    assert_eq!(
        view.body["lifetime_revenue"]["amount"]
            .as_str()
            .unwrap()
            .parse::<rust_decimal::Decimal>()
            .unwrap(),
        paid - rust_decimal::Decimal::from(100)
    );

    // Renewal at period end through the test clock.
    let clock = server
        .post("/v1/test_clock/advance", json!({"seconds": 20 * 86_400}))
        .await;
    assert_eq!(clock.body["periods_started"], 1, "{}", clock.body);
    let state = server.get(&format!("/v1/subscriptions/{sub}")).await;
    assert_eq!(state.body["invoices"].as_array().unwrap().len(), 3);
    let listed = server
        .get(&format!("/v1/subscriptions?customer={customer}"))
        .await;
    assert_eq!(listed.body["data"].as_array().unwrap().len(), 1);

    // The course with a coupon, and the coupon's redemption count.
    let coupon = server
        .post(
            "/v1/coupons",
            json!({"code": "LAUNCH", "percent_off": "10", "duration": "once"}),
        )
        .await;
    assert_eq!(coupon.status, StatusCode::CREATED, "{}", coupon.body);
    let bought = server
        .post(
            "/v1/purchases",
            json!({"customer": customer, "plan": "self_paced_course", "coupon": "LAUNCH"}),
        )
        .await;
    assert_eq!(bought.status, StatusCode::CREATED, "{}", bought.body);
    assert_eq!(bought.body["status"], "paid");
    // 997.00 − 99.70 = 897.30, plus 6.25 % Texas tax 56.08 → 953.38.
    assert_eq!(bought.body["totals"]["total"], money("953.38"));
    assert_eq!(
        server.get("/v1/coupons/LAUNCH").await.body["times_redeemed"],
        1
    );

    // Cancel at period end, then undo it.
    let canceled = server
        .post(
            &format!("/v1/subscriptions/{sub}/cancel"),
            json!({"timing": "period_end"}),
        )
        .await;
    assert_eq!(canceled.body["cancel_at_period_end"], true);
    let undone = server
        .post(
            &format!("/v1/subscriptions/{sub}/undo_cancellation"),
            json!({}),
        )
        .await;
    assert_eq!(undone.body["cancel_at_period_end"], false);
    // Paging: one invoice per page, following the cursor.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(after) => {
                format!("/v1/invoices?customer={customer}&limit=1&starting_after={after}")
            }
            None => format!("/v1/invoices?customer={customer}&limit=1"),
        };
        let page = server.get(&path).await;
        seen.push(page.body["data"][0]["id"].as_str().unwrap().to_owned());
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 4, "three subscription invoices and the course");

    // Rebuild equivalence: the read models the server kept live, caught up to the
    // last write, equal the ones `recur projections rebuild --all` builds anew.
    let ledger = recur_ledger::Ledger::open(
        recur_ledger::LedgerConfig::new(server.location.clone()),
        std::sync::Arc::new(recur_ledger::SystemClock),
    )
    .await
    .unwrap();
    let head = ledger.last_position().await.unwrap().0;
    let caught_up = server
        .get(&format!("/v1/ledger/trial-balance?min_position={head}"))
        .await;
    assert_eq!(caught_up.status, StatusCode::OK, "{}", caught_up.body);
    let db = recur_projections::db::Db::of(&ledger).unwrap();
    let read_models = || async {
        let mut customers = recur_projections::customers::read(&db, None).await.unwrap();
        customers.sort_by(|a, b| a.0.cmp(&b.0));
        (
            recur_projections::mrr::snapshot(&db).await.unwrap(),
            customers,
            recur_projections::accounts::trial_balance(&db, None)
                .await
                .unwrap(),
            recur_projections::revenue::monthly(&db, "2000-01", "2100-12")
                .await
                .unwrap(),
            recur_projections::customers::subscriptions_page(&db, None, None, 100)
                .await
                .unwrap()
                .unwrap(),
            recur_projections::customers::invoices_page(
                &db,
                &recur_projections::customers::InvoiceFilter::All,
                None,
                100,
            )
            .await
            .unwrap()
            .unwrap(),
        )
    };
    let live = read_models().await;
    assert!(!live.0.is_empty() && !live.2.is_empty());
    assert_eq!(
        live.5.0.len(),
        4,
        "the lists: every invoice, from the read model"
    );
    let rebuilt = Command::new(env!("CARGO_BIN_EXE_recur"))
        .args([
            "projections",
            "rebuild",
            "--all",
            "--database",
            &server.location,
        ])
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert!(
        rebuilt.status.success(),
        "{}",
        String::from_utf8_lossy(&rebuilt.stderr)
    );
    assert_eq!(
        read_models().await,
        live,
        "a rebuild gives the live read models"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_billing_scenarios_run_through_the_api_on_postgres() {
    the_billing_scenarios_run_through_the_api(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_billing_scenarios_run_through_the_api_on_sqlite() {
    the_billing_scenarios_run_through_the_api(Backend::Sqlite).await;
}

async fn idempotency_keys_replay_refuse_and_serialise(backend: Backend) {
    let server = serve(backend).await;
    let customer = server.customer_with_card().await;
    let body = json!({"customer": customer, "plan": "community_access", "trial_days": 0});
    let key = [("Idempotency-Key", "create-sub-1")];
    let first = server
        .call(
            Method::POST,
            "/v1/subscriptions",
            Some(ADMIN_KEY),
            Some(body.clone()),
            &key,
        )
        .await;
    assert_eq!(first.status, StatusCode::CREATED);
    let again = server
        .call(
            Method::POST,
            "/v1/subscriptions",
            Some(ADMIN_KEY),
            Some(body.clone()),
            &key,
        )
        .await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.body, first.body, "the first answer, replayed");
    assert_eq!(again.headers["idempotent-replayed"], "true");
    let other = json!({"customer": customer, "plan": "group_coaching", "trial_days": 0});
    let mismatch = server
        .call(
            Method::POST,
            "/v1/subscriptions",
            Some(ADMIN_KEY),
            Some(other),
            &key,
        )
        .await;
    assert_eq!(mismatch.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(mismatch.body["code"], "idempotency_key_reused");

    // Ten identical requests at once with one new key: one subscription.
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let request = server
            .client
            .post(format!("{}/v1/subscriptions", server.base))
            .bearer_auth(ADMIN_KEY)
            .header("Idempotency-Key", "create-sub-2")
            .json(&body);
        calls.spawn(async move {
            let response = request.send().await.unwrap();
            (response.status(), response.json::<Value>().await.unwrap())
        });
    }
    let mut ids = std::collections::HashSet::new();
    while let Some(joined) = calls.join_next().await {
        let (status, body) = joined.unwrap();
        assert_eq!(status, StatusCode::CREATED, "{body}");
        ids.insert(body["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 1);
    let listed = server
        .get(&format!("/v1/subscriptions?customer={customer}"))
        .await;
    assert_eq!(
        listed.body["data"].as_array().unwrap().len(),
        2,
        "the first key's and the second key's"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_replay_refuse_and_serialise_on_postgres() {
    idempotency_keys_replay_refuse_and_serialise(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_replay_refuse_and_serialise_on_sqlite() {
    idempotency_keys_replay_refuse_and_serialise(Backend::Sqlite).await;
}

/// Sixteen clients subscribe under their own `Idempotency-Key`s; the server is
/// killed (SIGKILL) as the first answer arrives, restarted, and every client
/// retries its request with the same key until it is answered. Each write
/// exists once, each invoice is charged once and paid, no key is stuck.
async fn a_crash_mid_burst_leaves_every_key_answerable_and_every_write_once(backend: Backend) {
    const CLIENTS: usize = 16;
    let mut server = serve(backend).await;
    let mut customers = Vec::new();
    for _ in 0..CLIENTS {
        customers.push(server.customer_with_card().await);
    }
    let request = |base: &str, client: &reqwest::Client, i: usize, customer: &str| {
        client
            .post(format!("{base}/v1/subscriptions"))
            .bearer_auth(ADMIN_KEY)
            .header("Idempotency-Key", format!("crash-{i}"))
            .json(&json!({"customer": customer, "plan": "elite_coaching", "trial_days": 0}))
    };
    let mut burst = tokio::task::JoinSet::new();
    for (i, customer) in customers.iter().enumerate() {
        let sent = request(&server.base, &server.client, i, customer);
        burst.spawn(async move {
            let response = sent.send().await?;
            let status = response.status();
            let body = response.json::<Value>().await?;
            Ok::<_, reqwest::Error>((i, status, body))
        });
    }
    let first = burst.join_next().await.unwrap().unwrap();
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let mut answered_before = std::collections::HashMap::new();
    let mut cut = 0;
    for outcome in std::iter::once(first).chain(burst.join_all().await) {
        match outcome {
            Ok((i, status, body)) if status == StatusCode::CREATED => {
                answered_before.insert(i, body["id"].as_str().unwrap().to_owned());
            }
            Ok((_, status, body)) => panic!("{status} before the crash: {body}"),
            Err(_) => cut += 1,
        }
    }
    assert!(cut > 0, "the kill must cut requests in flight");

    server.restart().await;
    let mut ids = std::collections::HashSet::new();
    for (i, customer) in customers.iter().enumerate() {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let id = loop {
            let response = request(&server.base, &server.client, i, customer)
                .send()
                .await
                .unwrap();
            let status = response.status();
            let body: Value = response.json().await.unwrap();
            if status == StatusCode::CREATED {
                break body["id"].as_str().unwrap().to_owned();
            }
            assert_eq!(status, StatusCode::CONFLICT, "{body}");
            assert_eq!(body["code"], "idempotency_key_in_use");
            assert!(
                std::time::Instant::now() < deadline,
                "key crash-{i} is stuck"
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        };
        if let Some(before) = answered_before.get(&i) {
            assert_eq!(&id, before, "a replay answers what was answered");
        }
        ids.insert(id);
        let subscriptions = server
            .get(&format!("/v1/subscriptions?customer={customer}"))
            .await;
        assert_eq!(
            subscriptions.body["data"].as_array().unwrap().len(),
            1,
            "customer {i}: {}",
            subscriptions.body
        );
        let invoices = server
            .get(&format!("/v1/invoices?customer={customer}"))
            .await;
        let invoices = invoices.body["data"].as_array().unwrap();
        assert_eq!(invoices.len(), 1, "customer {i}: {invoices:?}");
        assert_eq!(invoices[0]["status"], "paid", "{}", invoices[0]);
        let charged = invoices[0]["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["outcome"] == "succeeded")
            .count();
        assert_eq!(charged, 1, "{}", invoices[0]);
    }
    assert_eq!(ids.len(), CLIENTS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_burst_leaves_every_key_answerable_and_every_write_once_on_postgres() {
    a_crash_mid_burst_leaves_every_key_answerable_and_every_write_once(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_burst_leaves_every_key_answerable_and_every_write_once_on_sqlite() {
    a_crash_mid_burst_leaves_every_key_answerable_and_every_write_once(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_request_in_flight_then_the_server_exits_cleanly() {
    let server = serve_from(Backend::Postgres, Some("2027-01-01T00:00:00Z")).await;
    for _ in 0..12 {
        let customer = server.customer_with_card().await;
        let created = server
            .post(
                "/v1/subscriptions",
                json!({"customer": customer, "plan": "community_access", "trial_days": 0}),
            )
            .await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    }
    // Two years of renewals for twelve subscriptions: a long request.
    let advance = server
        .client
        .post(format!("{}/v1/test_clock/advance", server.base))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"seconds": 730 * 86_400}))
        .send();
    let running = tokio::spawn(async move {
        let response = advance.await.unwrap();
        let answered = std::time::Instant::now();
        (
            answered,
            response.status(),
            response.json::<Value>().await.unwrap(),
        )
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let signaled = std::time::Instant::now();
    let sent = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let (answered, status, body) = running.await.unwrap();
    assert!(
        answered > signaled,
        "the advance must still run when SIGTERM arrives"
    );
    assert_eq!(status, StatusCode::OK, "{body}");
    // 2027-01-01 + 730 days = 2028-12-31: 23 renewals each (February 2027 to December 2028).
    assert_eq!(body["periods_started"], 12 * 23, "{body}");
    let mut server = server;
    let exit = tokio::task::spawn_blocking(move || {
        let exit = server.child.wait().unwrap();
        (exit, server)
    });
    let (exit, server) = tokio::time::timeout(std::time::Duration::from_secs(30), exit)
        .await
        .expect("the server exits after draining")
        .unwrap();
    assert!(exit.success(), "a stop is a clean exit: {exit:?}");
    // Gone: new connections are refused.
    let refused = server
        .client
        .get(format!("{}/healthz", server.base))
        .send()
        .await;
    assert!(refused.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_scheduler_and_the_relay_and_exits_cleanly() {
    let nats = std::env::var("NATS_URL").expect(
        "NATS_URL must name a NATS server with JetStream (scripts/test.sh starts one): \
         e.g. nats-server -js -a 127.0.0.1 -p 4222",
    );
    let dir = std::env::temp_dir().join(format!("recur-stop-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let location = format!("sqlite:{}", dir.join("stop.sqlite").display());
    let stream = format!("RECUR_STOP_{}", uuid::Uuid::new_v4().simple());
    // The system clock: the scheduler ticks every second and the relay runs.
    let mut child = Command::new(env!("CARGO_BIN_EXE_recur"))
        .args(["serve", "--listen", "127.0.0.1:0", "--tick-seconds", "1"])
        .args(["--database", &location, "--create"])
        .env("RECUR_ADMIN_KEY", ADMIN_KEY)
        .env("NATS_URL", &nats)
        .env("RECUR_NATS_STREAM", &stream)
        .env_remove("DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        assert!(line.contains("listening"), "{line:?}");
    })
    .await
    .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let exit = tokio::time::timeout(
        std::time::Duration::from_secs(15),
        tokio::task::spawn_blocking(move || child.wait().unwrap()),
    )
    .await
    .expect("the server stops its scheduler and relay and exits")
    .unwrap();
    assert!(exit.success(), "{exit:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_its_timeout_is_answered_503_and_its_key_is_taken_over() {
    let mut server = serve(Backend::Sqlite).await;
    let customer = server.customer_with_card().await;
    server.restart_with(&["--request-timeout-ms", "1"]).await;
    let body = json!({"customer": customer, "plan": "elite_coaching", "trial_days": 0});
    let key = [("Idempotency-Key", "slow-1")];
    let timed_out = server
        .call(
            Method::POST,
            "/v1/subscriptions",
            Some(ADMIN_KEY),
            Some(body.clone()),
            &key,
        )
        .await;
    assert_eq!(
        timed_out.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        timed_out.body
    );
    assert_eq!(timed_out.body["code"], "request_timeout");
    // The abandoned key is let go at once (a moment for the server to write
    // that): the retry after a restart runs without waiting 10 s for a lease
    // to lapse, and the subscription exists once.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    server.restart().await;
    let started = std::time::Instant::now();
    let retried = server
        .call(
            Method::POST,
            "/v1/subscriptions",
            Some(ADMIN_KEY),
            Some(body),
            &key,
        )
        .await;
    assert_eq!(retried.status, StatusCode::CREATED, "{}", retried.body);
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    let listed = server
        .get(&format!("/v1/subscriptions?customer={customer}"))
        .await;
    assert_eq!(
        listed.body["data"].as_array().unwrap().len(),
        1,
        "{}",
        listed.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_if_match_is_refused_with_the_current_version() {
    let server = serve(Backend::Postgres).await;
    let customer = server.customer_with_card().await;
    let created = server
        .post(
            "/v1/subscriptions",
            json!({"customer": customer, "plan": "community_access"}),
        )
        .await;
    let sub = created.body["id"].as_str().unwrap();
    let current = created.body["version"].as_u64().unwrap();
    let stale = server
        .call(
            Method::POST,
            &format!("/v1/subscriptions/{sub}/cancel"),
            Some(ADMIN_KEY),
            Some(json!({"timing": "now"})),
            &[("If-Match", "\"0\"")],
        )
        .await;
    assert_eq!(
        stale.status,
        StatusCode::PRECONDITION_FAILED,
        "{}",
        stale.body
    );
    assert_eq!(stale.body["code"], "version_conflict");
    assert_eq!(stale.body["current_version"], current);
    assert_eq!(
        server.get(&format!("/v1/subscriptions/{sub}")).await.body["status"],
        "trialing",
        "nothing written"
    );
    let fresh = server
        .call(
            Method::POST,
            &format!("/v1/subscriptions/{sub}/cancel"),
            Some(ADMIN_KEY),
            Some(json!({"timing": "now"})),
            &[("If-Match", &format!("\"{current}\""))],
        )
        .await;
    assert_eq!(fresh.status, StatusCode::OK, "{}", fresh.body);
    assert_eq!(fresh.body["status"], "canceled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_every_role_as_the_role_matrix_says() {
    let server = serve(Backend::Sqlite).await;
    let customer = server.customer_with_card().await;
    let sub = server
        .post(
            "/v1/subscriptions",
            json!({"customer": customer, "plan": "community_access", "trial_days": 0}),
        )
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let invoice = server.get(&format!("/v1/subscriptions/{sub}")).await.body["invoices"][0]
        .as_str()
        .unwrap()
        .to_owned();
    let mut keys = std::collections::HashMap::new();
    for role in ["billing", "support", "analyst"] {
        let made = server.post("/v1/api_keys", json!({"role": role})).await;
        assert_eq!(made.status, StatusCode::CREATED, "{}", made.body);
        keys.insert(role, made.body["key"].as_str().unwrap().to_owned());
    }
    keys.insert("admin", ADMIN_KEY.to_owned());
    let tax_rate = server.get("/v1/tax_rates").await.body["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // (method, path, body, roles allowed besides admin)
    let routes: Vec<(Method, String, Value, &[&str])> = vec![
        (
            Method::POST,
            "/v1/customers".into(),
            json!({}),
            &["billing"],
        ),
        (
            Method::GET,
            format!("/v1/customers/{customer}"),
            Value::Null,
            &["billing", "support"],
        ),
        (
            Method::POST,
            format!("/v1/customers/{customer}"),
            json!({"segment": "standard"}),
            &["billing", "support"],
        ),
        (
            Method::POST,
            format!("/v1/customers/{customer}/payment_method"),
            json!({"token": "pm_card_visa", "brand": "visa", "last4": "4242", "exp_month": 12, "exp_year": 2040}),
            &["billing"],
        ),
        (
            Method::GET,
            format!("/v1/customers/{customer}/view"),
            Value::Null,
            &["billing", "support"],
        ),
        (
            Method::POST,
            "/v1/subscriptions".into(),
            json!({"customer": customer, "plan": "community_access"}),
            &["billing"],
        ),
        (
            Method::GET,
            "/v1/subscriptions".into(),
            Value::Null,
            &["billing", "support"],
        ),
        (
            Method::GET,
            format!("/v1/subscriptions/{sub}"),
            Value::Null,
            &["billing", "support"],
        ),
        (
            Method::POST,
            format!("/v1/subscriptions/{sub}/preview_change"),
            json!({"plan": "group_coaching"}),
            &["billing"],
        ),
        (
            Method::POST,
            format!("/v1/subscriptions/{sub}/change"),
            json!({"plan": "community_access", "quantity": 1}),
            &["billing"],
        ),
        (
            Method::POST,
            format!("/v1/subscriptions/{sub}/pause"),
            json!({}),
            &["billing"],
        ),
        (
            Method::POST,
            format!("/v1/subscriptions/{sub}/resume"),
            json!({}),
            &["billing"],
        ),
        (
            Method::POST,
            format!("/v1/subscriptions/{sub}/undo_cancellation"),
            json!({}),
            &["billing"],
        ),
        (
            Method::POST,
            format!("/v1/subscriptions/{sub}/cancel"),
            json!({"timing": "period_end"}),
            &["billing"],
        ),
        (
            Method::GET,
            "/v1/invoices".into(),
            Value::Null,
            &["billing", "support"],
        ),
        (
            Method::GET,
            format!("/v1/invoices/{invoice}"),
            Value::Null,
            &["billing", "support"],
        ),
        (
            Method::POST,
            format!("/v1/invoices/{invoice}/pay"),
            json!({}),
            &["billing"],
        ),
        (
            Method::POST,
            format!("/v1/invoices/{invoice}/void"),
            json!({}),
            &["billing"],
        ),
        (
            Method::POST,
            format!("/v1/invoices/{invoice}/refund"),
            json!({"amount": money("1.00")}),
            &["billing"],
        ),
        (
            Method::POST,
            "/v1/purchases".into(),
            json!({"customer": customer, "plan": "self_paced_course"}),
            &["billing"],
        ),
        (
            Method::POST,
            "/v1/coupons".into(),
            json!({"code": "MATRIX", "percent_off": "5", "duration": "forever"}),
            &["billing"],
        ),
        (
            Method::GET,
            "/v1/coupons/MATRIX".into(),
            Value::Null,
            &["billing", "support"],
        ),
        (
            Method::POST,
            format!("/v1/subscriptions/{sub}/discount"),
            json!({"coupon": "MATRIX"}),
            &["billing"],
        ),
        (
            Method::DELETE,
            format!("/v1/subscriptions/{sub}/discount"),
            json!({}),
            &["billing"],
        ),
        (
            Method::GET,
            "/v1/plans".into(),
            Value::Null,
            &["billing", "support", "analyst"],
        ),
        (
            Method::GET,
            "/v1/prices".into(),
            Value::Null,
            &["billing", "support", "analyst"],
        ),
        (
            Method::POST,
            "/v1/prices".into(),
            json!({"id": "community_access_usd_month_v2", "plan": "community_access", "unit_amount": money("99.00"), "interval": "month"}),
            &[],
        ),
        (
            Method::POST,
            "/v1/plans".into(),
            json!({"id": "matrix_plan", "name": "Matrix", "price": {"id": "matrix_plan_v1", "unit_amount": money("10.00"), "interval": "month"}}),
            &[],
        ),
        (
            Method::POST,
            "/v1/plans/community_access".into(),
            json!({"name": "Community Access"}),
            &[],
        ),
        (
            Method::GET,
            "/v1/tax_rates".into(),
            Value::Null,
            &["billing", "support", "analyst"],
        ),
        (
            Method::POST,
            "/v1/tax_rates".into(),
            json!({"country": "FR", "name": "TVA", "percent": "20", "mode": "inclusive"}),
            &[],
        ),
        (
            Method::POST,
            format!("/v1/tax_rates/{tax_rate}/retire"),
            json!({}),
            &[],
        ),
        (
            Method::GET,
            "/v1/metrics/mrr".into(),
            Value::Null,
            &["billing", "support", "analyst"],
        ),
        (
            Method::GET,
            "/v1/metrics/movements".into(),
            Value::Null,
            &["billing", "support", "analyst"],
        ),
        (
            Method::GET,
            "/v1/ledger/trial-balance".into(),
            Value::Null,
            &["billing", "support", "analyst"],
        ),
        (
            Method::GET,
            "/v1/metrics/churn".into(),
            Value::Null,
            &["billing", "support", "analyst"],
        ),
        (
            Method::GET,
            "/v1/metrics/cohorts".into(),
            Value::Null,
            &["billing", "support", "analyst"],
        ),
        (
            Method::GET,
            "/v1/ledger/revenue-recognition".into(),
            Value::Null,
            &["billing", "support", "analyst"],
        ),
        (
            Method::GET,
            "/v1/ledger/ar-aging".into(),
            Value::Null,
            &["billing", "support", "analyst"],
        ),
        (Method::GET, "/v1/events".into(), Value::Null, &["support"]),
        (
            Method::GET,
            format!("/v1/customers/{customer}/history"),
            Value::Null,
            &["support"],
        ),
        (
            Method::GET,
            "/v1/metrics/mrr-at?position=1".into(),
            Value::Null,
            &["billing", "support", "analyst"],
        ),
        (
            Method::POST,
            "/v1/api_keys".into(),
            json!({"role": "analyst"}),
            &[],
        ),
        (Method::GET, "/v1/api_keys".into(), Value::Null, &[]),
        (
            Method::POST,
            "/v1/api_keys/nosuchkey/revoke".into(),
            json!({}),
            &[],
        ),
        (
            Method::POST,
            "/v1/api_keys/nosuchkey/rotate".into(),
            json!({}),
            &[],
        ),
        (
            Method::POST,
            "/v1/test_clock/advance".into(),
            json!({"seconds": 1}),
            &[],
        ),
    ];
    for (method, path, body, allowed) in &routes {
        let body = (!body.is_null()).then(|| body.clone());
        let anonymous = server
            .call(method.clone(), path, None, body.clone(), &[])
            .await;
        assert_eq!(
            anonymous.status,
            StatusCode::UNAUTHORIZED,
            "{method} {path} without a key"
        );
        let wrong = server
            .call(
                method.clone(),
                path,
                Some("rk_nobody_secret"),
                body.clone(),
                &[],
            )
            .await;
        assert_eq!(
            wrong.status,
            StatusCode::UNAUTHORIZED,
            "{method} {path} with an unknown key"
        );
        for role in ["billing", "support", "analyst", "admin"] {
            let answer = server
                .call(method.clone(), path, Some(&keys[role]), body.clone(), &[])
                .await;
            let may = role == "admin" || allowed.contains(&role);
            if may {
                assert!(
                    answer.status != StatusCode::FORBIDDEN
                        && answer.status != StatusCode::UNAUTHORIZED
                        && !answer.status.is_server_error(),
                    "{role} on {method} {path}: {} {}",
                    answer.status,
                    answer.body
                );
            } else {
                assert_eq!(
                    answer.status,
                    StatusCode::FORBIDDEN,
                    "{role} on {method} {path}: {}",
                    answer.body
                );
                assert_eq!(answer.body["code"], "forbidden");
            }
        }
    }
    // HEAD is answered by GET's handler, so it is checked as GET.
    for (path, role) in [("/v1/api_keys", "billing"), ("/v1/api_keys", "analyst")] {
        let head = server
            .call(Method::HEAD, path, Some(&keys[role]), None, &[])
            .await;
        assert_eq!(head.status, StatusCode::FORBIDDEN, "HEAD {path} as {role}");
    }
    let head = server
        .call(Method::HEAD, "/v1/api_keys", Some(ADMIN_KEY), None, &[])
        .await;
    assert_eq!(head.status, StatusCode::OK);
    // The acting key's id is recorded as the actor of what it writes.
    let billing_key_id = keys["billing"].split('_').nth(1).unwrap().to_owned();
    let made = server
        .call(
            Method::POST,
            "/v1/customers",
            Some(&keys["billing"]),
            Some(json!({})),
            &[],
        )
        .await;
    let made_id = made.body["id"].as_str().unwrap().to_owned();
    let ledger = recur_ledger::Ledger::open(
        recur_ledger::LedgerConfig::new(server.location.clone()),
        std::sync::Arc::new(recur_ledger::SystemClock),
    )
    .await
    .unwrap();
    let stream = recur_ledger::StreamId::parse(format!("customer-{made_id}")).unwrap();
    let events = ledger.read_stream(&stream, 1, 10).await.unwrap();
    assert_eq!(
        events[0].metadata.actor.as_deref(),
        Some(billing_key_id.as_str())
    );

    // Personal data only for admin and support.
    let customer_path = format!("/v1/customers/{customer}");
    server
        .post(
            &customer_path,
            json!({"contact": {"name": "Ann Lee", "email": "ann@example.com"}}),
        )
        .await;
    let as_support = server
        .call(
            Method::GET,
            &customer_path,
            Some(&keys["support"]),
            None,
            &[],
        )
        .await;
    assert_eq!(as_support.body["contact"]["email"], "ann@example.com");
    let as_billing = server
        .call(
            Method::GET,
            &customer_path,
            Some(&keys["billing"]),
            None,
            &[],
        )
        .await;
    assert!(
        as_billing.body.get("contact").is_none(),
        "{}",
        as_billing.body
    );
}

/// (method, path, content type, body, status, code)
type Case<'a> = (Method, String, Option<&'a str>, Vec<u8>, u16, &'a str);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_gets_a_problem_with_a_code_and_never_a_5xx() {
    let server = serve(Backend::Sqlite).await;
    let customer = server.customer_with_card().await;
    let raw = |method: Method, path: &str, content_type: Option<&str>, body: Vec<u8>| {
        let mut request = server
            .client
            .request(method, format!("{}{path}", server.base))
            .bearer_auth(ADMIN_KEY);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        request.body(body).send()
    };
    let json_type = Some("application/json");
    let cases: Vec<Case> = vec![
        (Method::POST, "/v1/customers".into(), json_type, b"{not json".to_vec(), 400, "malformed_json"),
        (Method::POST, "/v1/customers".into(), json_type, b"[1,2]".to_vec(), 422, "invalid_body"),
        (Method::POST, "/v1/customers".into(), json_type, br#"{"segment": 7}"#.to_vec(), 422, "invalid_body"),
        (Method::POST, "/v1/customers".into(), json_type, br#"{"colour": "blue"}"#.to_vec(), 422, "invalid_body"),
        (Method::POST, "/v1/customers".into(), Some("text/plain"), b"{}".to_vec(), 415, "unsupported_media_type"),
        (Method::POST, "/v1/customers".into(), json_type, vec![b' '; 70_000], 413, "body_too_large"),
        (Method::POST, "/v1/customers".into(), json_type, br#"{"tax_location": {"country": "usa"}}"#.to_vec(), 422, "invalid_field"),
        (Method::POST, "/v1/customers".into(), json_type, br#"{"contact": {"name": "x", "email": "4242424242424242@x.com"}}"#.to_vec(), 422, "card_number_rejected"),
        (Method::POST, format!("/v1/customers/{customer}/payment_method"), json_type, br#"{"token": "4242424242424242", "brand": "visa", "last4": "4242", "exp_month": 12, "exp_year": 2040}"#.to_vec(), 422, "card_number_rejected"),
        (Method::GET, "/v1/customers/not-a-uuid".into(), None, Vec::new(), 404, "customer_not_found"),
        (Method::GET, format!("/v1/customers/{}", uuid::Uuid::nil()), None, Vec::new(), 404, "customer_not_found"),
        (Method::POST, "/v1/subscriptions".into(), json_type, format!(r#"{{"customer": "{customer}", "plan": "platinum"}}"#).into_bytes(), 404, "plan_not_found"),
        (Method::POST, "/v1/subscriptions".into(), json_type, format!(r#"{{"customer": "{customer}", "plan": "community_access", "quantity": -1}}"#).into_bytes(), 422, "invalid_body"),
        (Method::POST, "/v1/subscriptions".into(), json_type, format!(r#"{{"customer": "{customer}", "plan": "community_access", "quantity": 0}}"#).into_bytes(), 422, "invalid_quantity"),
        (Method::POST, "/v1/subscriptions".into(), json_type, br#"{"customer": "nope", "plan": "community_access"}"#.to_vec(), 422, "invalid_body"),
        (Method::POST, "/v1/coupons".into(), json_type, br#"{"code": "bad code", "percent_off": "10", "duration": "once"}"#.to_vec(), 422, "invalid_field"),
        (Method::POST, "/v1/coupons".into(), json_type, br#"{"code": "NEG", "amount_off": {"amount": "-5", "currency": "USD"}, "duration": "once"}"#.to_vec(), 422, "amount_not_positive"),
        (Method::POST, "/v1/coupons".into(), json_type, br#"{"code": "ODD", "amount_off": {"amount": "1e5", "currency": "USD"}, "duration": "once"}"#.to_vec(), 422, "invalid_amount"),
        (Method::POST, "/v1/coupons".into(), json_type, br#"{"code": "CUR", "amount_off": {"amount": "5", "currency": "usd"}, "duration": "once"}"#.to_vec(), 422, "unknown_currency"),
        (Method::GET, "/v1/invoices?limit=0".into(), None, Vec::new(), 422, "invalid_query"),
        (Method::GET, "/v1/invoices?colour=blue".into(), None, Vec::new(), 422, "invalid_query"),
        (Method::GET, "/v1/nothing-here".into(), None, Vec::new(), 404, "not_found"),
        (Method::DELETE, "/v1/customers".into(), None, Vec::new(), 405, "method_not_allowed"),
        (Method::POST, "/v1/test_clock/advance".into(), json_type, br#"{"seconds": 5, "to": "2020-01-01T00:00:00Z"}"#.to_vec(), 422, "invalid_field"),
    ];
    for (method, path, content_type, body, status, code) in cases {
        let response = raw(method.clone(), &path, content_type, body)
            .await
            .unwrap();
        let got = response.status().as_u16();
        let media = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap_or("").to_owned());
        let text = response.text().await.unwrap();
        assert_eq!(got, status, "{method} {path}: {text}");
        assert_eq!(
            media.as_deref(),
            Some("application/problem+json"),
            "{method} {path}"
        );
        let problem: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(problem["code"], code, "{method} {path}: {text}");
    }
    // Bad If-Match and Idempotency-Key headers.
    let bad_if_match = server
        .call(
            Method::POST,
            &format!("/v1/customers/{customer}"),
            Some(ADMIN_KEY),
            Some(json!({})),
            &[("If-Match", "yesterday")],
        )
        .await;
    assert_eq!(bad_if_match.body["code"], "invalid_if_match");
    let long_key = "k".repeat(300);
    let bad_key = server
        .call(
            Method::POST,
            "/v1/customers",
            Some(ADMIN_KEY),
            Some(json!({})),
            &[("Idempotency-Key", &long_key)],
        )
        .await;
    assert_eq!(bad_key.body["code"], "invalid_idempotency_key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_read_their_own_writes_through_min_position() {
    let server = serve(Backend::Postgres).await;
    let customer = server.customer_with_card().await;
    let (created, sub, position, today) = server.community_subscription(&customer).await;
    let mrr = server
        .get(&format!(
            "/v1/metrics/mrr?from={today}&to={today}&min_position={position}"
        ))
        .await;
    assert_eq!(mrr.status, StatusCode::OK, "{}", mrr.body);
    assert_eq!(mrr.body["data"][0]["mrr"], money("97.00"));
    assert_eq!(mrr.body["data"][0]["arr"], money("1164.00"));
    let changed = server
        .post(
            &format!("/v1/subscriptions/{sub}/change"),
            json!({"plan": "group_coaching"}),
        )
        .await;
    let position = changed.body["position"].as_u64().unwrap();
    let mrr = server
        .get(&format!(
            "/v1/metrics/mrr?from={today}&to={today}&min_position={position}"
        ))
        .await;
    assert_eq!(mrr.body["data"][0]["mrr"], money("1500.00"), "{}", mrr.body);
    // As of each write's position: what we knew then.
    let first_at = server
        .get(&format!(
            "/v1/metrics/mrr-at?position={}",
            created.body["position"]
        ))
        .await;
    assert_eq!(first_at.status, StatusCode::OK, "{}", first_at.body);
    assert_eq!(
        (
            first_at.body["mrr"].clone(),
            first_at.body["customers_paying"].clone()
        ),
        (money("97.00"), json!(1))
    );
    let then = server
        .get(&format!("/v1/metrics/mrr-at?position={position}"))
        .await;
    assert_eq!(then.body["mrr"], money("1500.00"));
    let by_plan = server
        .get(&format!(
            "/v1/metrics/mrr?from={today}&to={today}&plan=community_access"
        ))
        .await;
    assert_eq!(by_plan.body["data"][0]["mrr"], money("0.00"));
    let moves = server
        .get(&format!(
            "/v1/metrics/movements?from={today}&to={today}&min_position={position}"
        ))
        .await;
    assert_eq!(moves.status, StatusCode::OK, "{}", moves.body);
    // The test clock stood still: the upgrade took effect at the very instant
    // the customer arrived, and changes at one instant are classified together.
    let day = &moves.body["data"][0];
    assert_eq!(
        (
            day["new"].clone(),
            day["expansion"].clone(),
            day["net"].clone()
        ),
        (money("1500.00"), money("0.00"), money("1500.00"))
    );
    assert_eq!(moves.body["profile"]["name"], "default", "{}", moves.body);
    // A position no write has reached: refused at once, not waited for.
    let ahead = server
        .get(&format!(
            "/v1/metrics/mrr?min_position={}",
            position + 1_000_000
        ))
        .await;
    assert_eq!(ahead.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(ahead.body["code"], "position_unknown");
    let bad = server.get("/v1/metrics/mrr?interval=hour").await;
    assert_eq!(bad.body["code"], "invalid_query");
    // Query strings are percent-decoded: an encoded day and plan read as plain ones.
    let encoded = server
        .get(&format!(
            "/v1/metrics/mrr?from={}&to={}&plan=group%5Fcoaching",
            today.replace('-', "%2D"),
            today.replace('-', "%2d")
        ))
        .await;
    assert_eq!(encoded.status, StatusCode::OK, "{}", encoded.body);
    assert_eq!(encoded.body["plan"], "group_coaching");
    assert_eq!(encoded.body["data"][0]["date"], today.as_str());
    assert_eq!(encoded.body["data"][0]["mrr"], money("1500.00"));
    // What the monthly reports always took still reads: interval=day, plan=*.
    for taken in [
        "/v1/metrics/churn?interval=day&plan=*",
        "/v1/metrics/cohorts?interval=day",
        "/v1/metrics/movements?plan=%2A",
    ] {
        let answer = server.get(taken).await;
        assert_eq!(answer.status, StatusCode::OK, "{taken}: {}", answer.body);
    }
    // Unknown, repeated or mistyped parameters are refused, never ignored.
    for refused in [
        "/v1/metrics/mrr?colour=blue",
        "/v1/metrics/mrr?from=2027-01-01&from=2027-01-02",
        "/v1/metrics/mrr?min_position=-1",
        "/v1/metrics/churn?interval=week",
        "/v1/metrics/movements?kind=churn",
        "/v1/metrics/movements?detail=customer&kind=gone",
        "/v1/metrics/mrr-at",
        "/v1/subscriptions?subscription=x",
        "/v1/subscriptions?starting_after=not-an-id",
        "/v1/invoices?starting_after=01a235d6-3757-7001-9190-72d16753e689",
    ] {
        let answer = server.get(refused).await;
        assert_eq!(
            answer.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{refused}: {}",
            answer.body
        );
        assert_eq!(answer.body["code"], "invalid_query", "{refused}");
    }

    // The trial balance from the postings: balanced, cash = what was collected.
    let books = server
        .get(&format!("/v1/ledger/trial-balance?min_position={position}"))
        .await;
    assert_eq!(books.status, StatusCode::OK, "{}", books.body);
    assert_eq!(books.body["balanced"], true);
    let accounts = books.body["accounts"].as_array().unwrap();
    let cash = accounts
        .iter()
        .find(|a| a["account"] == "gateway_balance")
        .unwrap();
    let invoices = server
        .get(&format!("/v1/invoices?subscription={sub}"))
        .await;
    let paid: rust_decimal::Decimal = invoices.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["amount_paid"]["amount"].as_str())
        .map(|a| a.parse::<rust_decimal::Decimal>().unwrap())
        .sum();
    assert_eq!(
        cash["balance"]["amount"]
            .as_str()
            .unwrap()
            .parse::<rust_decimal::Decimal>()
            .unwrap(),
        paid
    );
    let before = server
        .get("/v1/ledger/trial-balance?as_of=2000-01-01")
        .await;
    assert_eq!(
        before.body["accounts"].as_array().unwrap().len(),
        0,
        "nothing was booked in 2000"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_read_answers_as_of_a_past_position() {
    let server = serve(Backend::Sqlite).await;
    let customer = server.customer_with_card().await;
    let (_, sub, then, today) = server.community_subscription(&customer).await;
    let month = &today[..7];
    let reads = [
        format!("/v1/metrics/mrr?from={today}&to={today}"),
        format!("/v1/metrics/movements?from={today}&to={today}"),
        format!("/v1/metrics/churn?from={month}-01&to={today}"),
        format!("/v1/metrics/cohorts?from={month}-01&to={today}"),
        format!("/v1/customers/{customer}/view"),
        "/v1/ledger/trial-balance".to_owned(),
        format!("/v1/ledger/revenue-recognition?from={month}-01&to={today}"),
        format!("/v1/ledger/ar-aging?as_of={today}"),
    ];
    let mut at_then = Vec::new();
    for read in &reads {
        let answer = server
            .get(&format!("{read}{}min_position={then}", joiner(read)))
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{read}: {}", answer.body);
        let mut body = answer.body;
        // The live answer says how far the projection had got (at least `then`).
        body.as_object_mut().unwrap().remove("position");
        at_then.push(body);
    }
    // Later: an upgrade and a cancellation change every answer about today.
    server
        .post(
            &format!("/v1/subscriptions/{sub}/change"),
            json!({"plan": "group_coaching"}),
        )
        .await;
    let cancelled = server
        .post(
            &format!("/v1/subscriptions/{sub}/cancel"),
            json!({"timing": "now"}),
        )
        .await;
    assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.body);
    let now = cancelled.body["position"].as_u64().unwrap();
    let live = server
        .get(&format!("{}&min_position={now}", reads[0]))
        .await;
    assert_ne!(live.body["data"], at_then[0]["data"], "MRR moved since");
    for (read, expected) in reads.iter().zip(&at_then) {
        let past = server
            .get(&format!("{read}{}as_of_position={then}", joiner(read)))
            .await;
        assert_eq!(past.status, StatusCode::OK, "{read}: {}", past.body);
        let mut body = past.body;
        assert_eq!(
            body.as_object_mut().unwrap().remove("position"),
            Some(json!(then))
        );
        assert_eq!(&body, expected, "{read} as of position {then}");
    }
    let ahead = server
        .get(&format!(
            "/v1/ledger/trial-balance?as_of_position={}",
            now + 1_000
        ))
        .await;
    assert_eq!(ahead.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(ahead.body["code"], "position_unknown");
    let both = server
        .get(&format!(
            "/v1/ledger/trial-balance?as_of_position={then}&min_position={then}"
        ))
        .await;
    assert_eq!(both.body["code"], "invalid_query");
}

fn joiner(path: &str) -> &'static str {
    if path.contains('?') { "&" } else { "?" }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_and_retention_of_a_month_with_one_customer_lost() {
    let server = serve(Backend::Sqlite).await;
    let mut subs = Vec::new();
    let mut start = String::new();
    for _ in 0..2 {
        let customer = server.customer_with_card().await;
        let created = server
            .post(
                "/v1/subscriptions",
                json!({"customer": customer, "plan": "community_access", "trial_days": 0}),
            )
            .await;
        start = created.body["current_period"]["start"].as_str().unwrap()[..10].to_owned();
        subs.push(created.body["id"].as_str().unwrap().to_owned());
    }
    // Move to the 5th of the next month and lose one of the two.
    let day = time::Date::parse(
        &start,
        time::macros::format_description!("[year]-[month]-[day]"),
    )
    .unwrap();
    let (year, month) = if day.month() == time::Month::December {
        (day.year() + 1, time::Month::January)
    } else {
        (day.year(), day.month().next())
    };
    let fifth = time::Date::from_calendar_date(year, month, 5).unwrap();
    let advanced = server
        .post(
            "/v1/test_clock/advance",
            json!({"to": format!("{fifth}T12:00:00Z")}),
        )
        .await;
    assert_eq!(advanced.status, StatusCode::OK, "{}", advanced.body);
    let canceled = server
        .post(
            &format!("/v1/subscriptions/{}/cancel", subs[0]),
            json!({"timing": "now"}),
        )
        .await;
    let position = canceled.body["position"].as_u64().unwrap();
    let month_text = &fifth.to_string()[..7];
    let churn = server
        .get(&format!(
            "/v1/metrics/churn?from={month_text}-01&to={fifth}&min_position={position}"
        ))
        .await;
    assert_eq!(churn.status, StatusCode::OK, "{}", churn.body);
    let m = &churn.body["data"][0];
    assert_eq!(m["month"], month_text);
    assert_eq!(
        (
            m["customers_start"].clone(),
            m["customers_churned"].clone(),
            m["customers_end"].clone()
        ),
        (json!(2), json!(1), json!(1))
    );
    assert_eq!(m["customer_churn_rate"], "0.5000");
    assert_eq!(m["mrr_start"], money("194.00"));
    assert_eq!(m["gross_revenue_churn_rate"], "0.5000");
    assert_eq!(m["net_revenue_retention"], "0.5000");
    assert_eq!(m["arpa"], money("97.00"));
    assert_eq!(m["ltv"], money("194.00"), "ARPA 97.00 ÷ churn 0.5");

    // One cohort (the first month), two customers; one left in the second month.
    let first_month = &start[..7];
    let cohorts = server
        .get(&format!(
            "/v1/metrics/cohorts?from={first_month}-01&to={fifth}&min_position={position}"
        ))
        .await;
    assert_eq!(cohorts.status, StatusCode::OK, "{}", cohorts.body);
    let cohort = &cohorts.body["data"][0];
    assert_eq!(cohort["month"], first_month);
    assert_eq!(cohort["customers"], 2);
    assert_eq!(cohort["customers_retained"], json!([2, 1]));
    assert_eq!(cohort["mrr"], json!([money("194.00"), money("97.00")]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_covers_every_route_and_health_answers() {
    let server = serve(Backend::Sqlite).await;
    let doc = server
        .call(Method::GET, "/openapi.json", None, None, &[])
        .await;
    assert_eq!(doc.status, StatusCode::OK);
    assert_eq!(doc.body["openapi"], "3.1.0");
    let paths = doc.body["paths"].as_object().unwrap();
    for path in [
        "/v1/customers",
        "/v1/customers/{id}",
        "/v1/customers/{id}/payment_method",
        "/v1/subscriptions",
        "/v1/subscriptions/{id}",
        "/v1/subscriptions/{id}/change",
        "/v1/subscriptions/{id}/preview_change",
        "/v1/subscriptions/{id}/cancel",
        "/v1/subscriptions/{id}/pause",
        "/v1/subscriptions/{id}/resume",
        "/v1/subscriptions/{id}/undo_cancellation",
        "/v1/subscriptions/{id}/discount",
        "/v1/invoices",
        "/v1/invoices/{id}",
        "/v1/invoices/{id}/pay",
        "/v1/invoices/{id}/void",
        "/v1/invoices/{id}/refund",
        "/v1/purchases",
        "/v1/coupons",
        "/v1/coupons/{code}",
        "/v1/plans",
        "/v1/plans/{id}",
        "/v1/prices",
        "/v1/tax_rates",
        "/v1/tax_rates/{id}/retire",
        "/v1/api_keys",
        "/v1/api_keys/{id}/revoke",
        "/v1/api_keys/{id}/rotate",
        "/v1/test_clock/advance",
        "/healthz",
        "/readyz",
        "/v1/metrics/mrr",
        "/v1/metrics/movements",
        "/v1/ledger/trial-balance",
        "/v1/metrics/churn",
        "/v1/metrics/cohorts",
        "/v1/customers/{id}/view",
        "/v1/customers/{id}/history",
        "/v1/ledger/revenue-recognition",
        "/v1/ledger/ar-aging",
        "/v1/metrics/mrr-at",
    ] {
        assert!(
            paths.contains_key(path),
            "{path} missing from the OpenAPI document"
        );
    }
    assert!(doc.body["components"]["schemas"]["Problem"].is_object());
    assert_eq!(
        server
            .call(Method::GET, "/healthz", None, None, &[])
            .await
            .status,
        StatusCode::OK
    );
    let ready = server.call(Method::GET, "/readyz", None, None, &[]).await;
    assert_eq!(ready.status, StatusCode::OK);
    assert!(ready.body["ledger_position"].as_u64().is_some());
    assert!(ready.headers.contains_key("x-request-id"));
}

/// A customer with a card and no tax location (amounts stay round).
async fn untaxed_customer_with_card(server: &Server) -> String {
    let customer = server.post("/v1/customers", json!({})).await;
    assert_eq!(customer.status, StatusCode::CREATED, "{}", customer.body);
    let id = customer.body["id"].as_str().unwrap().to_owned();
    let card = json!({"token": "pm_card_visa", "brand": "visa", "last4": "4242", "exp_month": 12, "exp_year": 2040});
    let attached = server
        .post(&format!("/v1/customers/{id}/payment_method"), card)
        .await;
    assert_eq!(attached.status, StatusCode::OK, "{}", attached.body);
    id
}

/// A paid 97.00 community invoice of a new customer: its id.
async fn paid_community_invoice(server: &Server) -> String {
    let customer = untaxed_customer_with_card(server).await;
    let (created, ..) = server.community_subscription(&customer).await;
    assert_eq!(created.body["status"], "active", "{}", created.body);
    let invoice = created.body["invoices"][0].as_str().unwrap().to_owned();
    let paid = server.get(&format!("/v1/invoices/{invoice}")).await;
    assert_eq!(paid.body["status"], "paid", "{}", paid.body);
    assert_eq!(paid.body["amount_paid"], money("97.00"));
    invoice
}

/// Refunds of `amounts` sent at once, each from its own task: the answers.
async fn parallel_refunds(server: &Server, invoice: &str, amounts: &[&str]) -> Vec<Answer> {
    let mut tasks = tokio::task::JoinSet::new();
    for amount in amounts {
        let request = server
            .client
            .post(format!("{}/v1/invoices/{invoice}/refund", server.base))
            .bearer_auth(ADMIN_KEY)
            .json(&json!({"amount": money(amount)}));
        tasks.spawn(async move { Answer::of(request.send().await.unwrap()).await });
    }
    tasks.join_all().await
}

/// Regression (money correctness, defect 1): parallel refunds were all answered
/// 200 while only some were recorded. Every 200 is now a refund recorded and
/// paid out, and what does not fit is refused with `refund_exceeds_paid`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_refunds_are_each_recorded_or_refused_never_lost() {
    let server = serve(Backend::Sqlite).await;
    let invoice = paid_community_invoice(&server).await;
    let answers = parallel_refunds(&server, &invoice, &["10.00", "50.00"]).await;
    for answer in &answers {
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    }
    let state = server.get(&format!("/v1/invoices/{invoice}")).await;
    assert_eq!(state.body["amount_refunded"], money("60.00"));
    assert_eq!(state.body["refunds"].as_array().unwrap().len(), 2);

    let invoice = paid_community_invoice(&server).await;
    let answers = parallel_refunds(&server, &invoice, &["10.00"; 16]).await;
    let ok = answers
        .iter()
        .filter(|a| a.status == StatusCode::OK)
        .count();
    for refused in answers.iter().filter(|a| a.status != StatusCode::OK) {
        assert_eq!(
            refused.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{}",
            refused.body
        );
        assert_eq!(
            refused.body["code"], "refund_exceeds_paid",
            "{}",
            refused.body
        );
    }
    assert_eq!(ok, 9, "nine refunds of 10.00 fit in 97.00");
    let state = server.get(&format!("/v1/invoices/{invoice}")).await;
    assert_eq!(state.body["amount_refunded"], money("90.00"));
    let refunds = state.body["refunds"].as_array().unwrap();
    assert_eq!(refunds.len(), ok);
    assert!(refunds.iter().all(|r| r["status"] == "succeeded"));
}

/// Regression (money correctness, defect 5): the metrics' default end date was
/// the machine's, not the ledger clock's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_default_to_today_on_the_ledgers_clock() {
    let server = serve_from(Backend::Sqlite, Some("2027-01-10T09:00:00Z")).await;
    let customer = untaxed_customer_with_card(&server).await;
    server.community_subscription(&customer).await;
    let advanced = server
        .post(
            "/v1/test_clock/advance",
            json!({"to": "2027-02-24T12:00:00Z"}),
        )
        .await;
    assert_eq!(advanced.status, StatusCode::OK, "{}", advanced.body);
    let position = advanced.body["position"].as_u64();
    let wait = position.map_or(String::new(), |p| format!("?min_position={p}"));
    for path in ["/v1/metrics/mrr", "/v1/metrics/movements"] {
        let answer = server.get(&format!("{path}{wait}")).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        let data = answer.body["data"].as_array().unwrap();
        assert_eq!(data.first().unwrap()["date"], "2027-02-01", "{path}");
        assert_eq!(data.last().unwrap()["date"], "2027-02-24", "{path}");
    }
    let mrr = server.get("/v1/metrics/mrr").await;
    assert_eq!(
        mrr.body["data"].as_array().unwrap().last().unwrap()["mrr"],
        money("97.00")
    );
    let aging = server.get("/v1/ledger/ar-aging").await;
    assert_eq!(aging.body["as_of"], "2027-02-24");
}

/// The invoice's tax and total, as (tax, total) amounts.
async fn tax_and_total(server: &Server, invoice: &Value) -> (String, String) {
    let invoice = server
        .get(&format!("/v1/invoices/{}", invoice.as_str().unwrap()))
        .await;
    let totals = &invoice.body["totals"];
    (
        totals["tax"]["amount"].as_str().unwrap().to_owned(),
        totals["total"]["amount"].as_str().unwrap().to_owned(),
    )
}

/// Tax rates and plans are catalog events changed through the API: a rate in
/// force from a date replaces a retired one for invoices issued from then on,
/// a plan added without a rebuild is sold at once, a plan's current price moves,
/// and a restarted server keeps all of it (the file only seeded the ledger).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tax_rates_and_plans_change_through_the_api_as_catalog_events() {
    let mut server = serve_from(Backend::Sqlite, Some("2027-01-01T00:00:00Z")).await;
    let rates = server.get("/v1/tax_rates").await;
    assert_eq!(rates.status, StatusCode::OK, "{}", rates.body);
    let seeded = rates.body["data"].as_array().unwrap().clone();
    assert_eq!(seeded.len(), 5, "the file's five rates seed the ledger");
    let texas = seeded
        .iter()
        .find(|r| r["jurisdiction"] == "US-TX")
        .unwrap()
        .clone();
    assert_eq!(
        (texas["percent"].clone(), texas["status"].clone()),
        (json!("6.25"), json!("active"))
    );

    // From March 1, Texas taxes 8.25 %: a new rate, and the old one retired then.
    let created = server
        .post(
            "/v1/tax_rates",
            json!({"country": "US", "region": "TX", "name": "Texas sales tax", "percent": "8.25",
                   "mode": "exclusive", "valid_from": "2027-03-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(created.body["status"], "scheduled");
    let retired = server
        .post(
            &format!("/v1/tax_rates/{}/retire", texas["id"].as_str().unwrap()),
            json!({"at": "2027-03-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(retired.status, StatusCode::OK, "{}", retired.body);
    assert_eq!(retired.body["retired_at"], "2027-03-01T00:00:00Z");
    for (body, status, code) in [
        (
            json!({"country": "US", "region": "TX", "name": "x", "percent": "100", "mode": "exclusive"}),
            422,
            "invalid_field",
        ),
        (
            json!({"country": "US", "region": "TX", "name": "x", "percent": "5", "mode": "both"}),
            422,
            "invalid_field",
        ),
        (
            json!({"country": "us", "name": "x", "percent": "5", "mode": "exclusive"}),
            422,
            "invalid_field",
        ),
        (
            json!({"country": "US", "region": "TX", "name": "again", "percent": "9", "mode": "exclusive",
                "valid_from": "2027-03-01T00:00:00Z"}),
            422,
            "invalid_catalog",
        ),
    ] {
        let refused = server.post("/v1/tax_rates", body.clone()).await;
        assert_eq!(refused.status.as_u16(), status, "{body}: {}", refused.body);
        assert_eq!(refused.body["code"], code, "{body}: {}", refused.body);
    }
    let unknown = server
        .post("/v1/tax_rates/no-such-rate/retire", json!({}))
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.body["code"], "tax_rate_not_found");

    // A Texan customer billed monthly from January 1: 6.25 % until February, 8.25 % from March.
    let customer = server.customer_with_card().await;
    let (created, sub, ..) = server.community_subscription(&customer).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let advanced = server
        .post(
            "/v1/test_clock/advance",
            json!({"to": "2027-03-02T00:00:00Z"}),
        )
        .await;
    assert_eq!(advanced.status, StatusCode::OK, "{}", advanced.body);
    let state = server.get(&format!("/v1/subscriptions/{sub}")).await;
    let invoices = state.body["invoices"].as_array().unwrap().clone();
    assert_eq!(invoices.len(), 3);
    let mut taxed = Vec::new();
    for invoice in &invoices {
        taxed.push(tax_and_total(&server, invoice).await);
    }
    let pair = |tax: &str, total: &str| (tax.to_owned(), total.to_owned());
    assert_eq!(
        taxed,
        vec![
            pair("6.06", "103.06"),
            pair("6.06", "103.06"),
            pair("8.00", "105.00")
        ]
    );

    // A plan added through the API, sold at once; then its current price moves.
    let plan = server
        .post(
            "/v1/plans",
            json!({"id": "mastermind", "name": "Mastermind Circle", "trial_days": 0,
                   "features": {"calls_per_month": 2},
                   "price": {"id": "mastermind_usd_month_v1", "unit_amount": money("300.00"), "interval": "month"}}),
        )
        .await;
    assert_eq!(plan.status, StatusCode::CREATED, "{}", plan.body);
    assert_eq!(plan.body["current_price"], "mastermind_usd_month_v1");
    let again = server
        .post(
            "/v1/plans",
            json!({"id": "mastermind", "name": "Again",
                   "price": {"id": "mastermind_usd_month_v2", "unit_amount": money("1.00"), "interval": "month"}}),
        )
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.body);
    let bad = server
        .post(
            "/v1/plans",
            json!({"id": "a b", "name": "Bad",
                   "price": {"id": "bad_price", "unit_amount": money("1.00"), "interval": "month"}}),
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", bad.body);
    let monthly = server
        .post(
            "/v1/subscriptions",
            json!({"customer": customer, "plan": "mastermind"}),
        )
        .await;
    assert_eq!(monthly.status, StatusCode::CREATED, "{}", monthly.body);
    assert_eq!(monthly.body["unit_amount"], money("300.00"));
    let yearly = server
        .post(
            "/v1/prices",
            json!({"id": "mastermind_usd_year_v1", "plan": "mastermind", "unit_amount": money("3000.00"), "interval": "year"}),
        )
        .await;
    assert_eq!(yearly.status, StatusCode::CREATED, "{}", yearly.body);
    let moved = server
        .post(
            "/v1/plans/mastermind",
            json!({"current_price": "mastermind_usd_year_v1"}),
        )
        .await;
    assert_eq!(moved.status, StatusCode::OK, "{}", moved.body);
    let foreign = server
        .post(
            "/v1/plans/mastermind",
            json!({"current_price": "community_access_usd_month_v1"}),
        )
        .await;
    assert_eq!(
        foreign.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        foreign.body
    );
    let second = server.customer_with_card().await;
    let on_yearly = server
        .post(
            "/v1/subscriptions",
            json!({"customer": second, "plan": "mastermind"}),
        )
        .await;
    assert_eq!(
        on_yearly.body["price"], "mastermind_usd_year_v1",
        "{}",
        on_yearly.body
    );
    let billing_key = server
        .post("/v1/api_keys", json!({"role": "billing"}))
        .await
        .body["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let forbidden = server
        .call(
            Method::POST,
            "/v1/tax_rates",
            Some(&billing_key),
            Some(json!({"country": "FR", "name": "TVA", "percent": "20", "mode": "inclusive"})),
            &[],
        )
        .await;
    assert_eq!(forbidden.status, StatusCode::FORBIDDEN);

    // Another server on the same ledger holds the same catalog.
    server.restart().await;
    let rates = server.get("/v1/tax_rates").await.body["data"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(rates.len(), 6);
    let texas_now: Vec<(Value, Value)> = rates
        .iter()
        .filter(|r| r["jurisdiction"] == "US-TX")
        .map(|r| (r["percent"].clone(), r["status"].clone()))
        .collect();
    assert_eq!(
        texas_now,
        vec![
            (json!("6.25"), json!("retired")),
            (json!("8.25"), json!("active"))
        ]
    );
    let plans = server.get("/v1/plans").await;
    let mastermind = plans.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == "mastermind")
        .unwrap()
        .clone();
    assert_eq!(mastermind["current_price"], "mastermind_usd_year_v1");
    assert_eq!(mastermind["features"]["calls_per_month"], 2);
}

/// Regression (money correctness, defect 4), as reported: a 970.00/year price
/// scheduled at period end on a monthly subscription kept the monthly anchor
/// (2027-02-01 → 2029-01-01, billed once). The new cycle starts at the period end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monthly_to_yearly_at_period_end_bills_a_year_from_the_period_end() {
    let server = serve_from(Backend::Sqlite, Some("2027-01-01T00:00:00Z")).await;
    let yearly = server
        .post(
            "/v1/prices",
            json!({"id": "community_access_usd_year_v1", "plan": "community_access",
                   "unit_amount": money("970.00"), "interval": "year"}),
        )
        .await;
    assert_eq!(yearly.status, StatusCode::CREATED, "{}", yearly.body);
    let customer = untaxed_customer_with_card(&server).await;
    let (_, sub, ..) = server.community_subscription(&customer).await;
    let changed = server
        .post(
            &format!("/v1/subscriptions/{sub}/change"),
            json!({"plan": "community_access", "price": "community_access_usd_year_v1", "timing": "period_end"}),
        )
        .await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.body);
    assert_eq!(
        changed.body["scheduled_price"],
        "community_access_usd_year_v1"
    );
    server
        .post(
            "/v1/test_clock/advance",
            json!({"to": "2027-02-02T00:00:00Z"}),
        )
        .await;
    let state = server.get(&format!("/v1/subscriptions/{sub}")).await;
    assert_eq!(
        state.body["current_period"]["start"],
        "2027-02-01T00:00:00Z"
    );
    assert_eq!(state.body["current_period"]["end"], "2028-02-01T00:00:00Z");
    let renewal = state.body["invoices"][1].clone();
    assert_eq!(
        tax_and_total(&server, &renewal).await,
        ("0.00".to_owned(), "970.00".to_owned())
    );
}

/// Who moved, how and when: the movements one by one, filtered by kind or
/// customer, paged with a cursor, each with its effective time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn movements_one_by_one_say_who_churned_and_when() {
    let server = serve_from(Backend::Sqlite, Some("2027-01-01T00:00:00Z")).await;
    let ann = untaxed_customer_with_card(&server).await;
    let (_, ann_sub, ..) = server.community_subscription(&ann).await;
    let bob = untaxed_customer_with_card(&server).await;
    server.community_subscription(&bob).await;
    server
        .post(
            "/v1/test_clock/advance",
            json!({"to": "2027-01-20T00:00:00Z"}),
        )
        .await;
    server
        .post(
            &format!("/v1/subscriptions/{ann_sub}/cancel"),
            json!({"timing": "period_end"}),
        )
        .await;
    let advanced = server
        .post(
            "/v1/test_clock/advance",
            json!({"to": "2027-02-10T00:00:00Z"}),
        )
        .await;
    assert_eq!(advanced.status, StatusCode::OK, "{}", advanced.body);
    let head = server.get("/readyz").await.body["ledger_position"]
        .as_u64()
        .unwrap();
    let range = format!("from=2027-01-01&to=2027-02-28&min_position={head}");
    let all = server
        .get(&format!("/v1/metrics/movements?detail=customer&{range}"))
        .await;
    assert_eq!(all.status, StatusCode::OK, "{}", all.body);
    let rows: Vec<(Value, Value, Value, Value)> = all.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["customer"].clone(),
                m["kind"].clone(),
                m["amount"]["amount"].clone(),
                m["effective_at"].clone(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            (
                json!(ann),
                json!("new"),
                json!("97.00"),
                json!("2027-01-01T00:00:00Z")
            ),
            (
                json!(bob),
                json!("new"),
                json!("97.00"),
                json!("2027-01-01T00:00:00Z")
            ),
            (
                json!(ann),
                json!("churn"),
                json!("-97.00"),
                json!("2027-02-01T00:00:00Z")
            ),
        ],
        "{}",
        all.body
    );
    assert_eq!(all.body["has_more"], false);
    assert_eq!(all.body["profile"]["name"], "default");
    let churned = server
        .get(&format!(
            "/v1/metrics/movements?detail=customer&kind=churn&{range}"
        ))
        .await;
    let churned = churned.body["data"].as_array().unwrap().clone();
    assert_eq!(churned.len(), 1);
    assert_eq!(churned[0]["customer"], json!(ann));
    assert_eq!(churned[0]["subscription"], json!(ann_sub));
    let of_bob = server
        .get(&format!(
            "/v1/metrics/movements?detail=customer&customer={bob}&{range}"
        ))
        .await;
    assert_eq!(of_bob.body["data"].as_array().unwrap().len(), 1);
    // Page by page, the same movements in the same order.
    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let after = cursor
            .as_ref()
            .map_or(String::new(), |c| format!("&starting_after={c}"));
        let page = server
            .get(&format!(
                "/v1/metrics/movements?detail=customer&limit=1&{range}{after}"
            ))
            .await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        paged.extend(page.body["data"].as_array().unwrap().iter().cloned());
        if page.body["has_more"] == false {
            break;
        }
        cursor = Some(page.body["next_cursor"].as_str().unwrap().to_owned());
        assert!(paged.len() <= 3, "paging must end");
    }
    assert_eq!(paged, all.body["data"].as_array().unwrap().clone());
    for bad in [
        "detail=everyone",
        "detail=customer&kind=sideways",
        "detail=customer&limit=0",
        "detail=customer&starting_after=x",
        "kind=churn",
        "detail=customer&interval=week",
    ] {
        let refused = server.get(&format!("/v1/metrics/movements?{bad}")).await;
        assert_eq!(
            refused.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{bad}: {}",
            refused.body
        );
        assert_eq!(refused.body["code"], "invalid_query", "{bad}");
    }
}

/// A refused discount request writes nothing: a stale If-Match leaves the
/// coupon's only redemption for someone else (review finding).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discount_refused_by_if_match_leaves_the_coupon_unredeemed() {
    let server = serve_from(Backend::Sqlite, Some("2027-01-01T00:00:00Z")).await;
    let coupon = server
        .post(
            "/v1/coupons",
            json!({"code": "ONLYONE", "percent_off": "50", "duration": "forever", "max_redemptions": 1}),
        )
        .await;
    assert_eq!(coupon.status, StatusCode::CREATED, "{}", coupon.body);
    let customer = untaxed_customer_with_card(&server).await;
    let (created, sub, ..) = server.community_subscription(&customer).await;
    let stale = created.body["version"].as_u64().unwrap() - 1;
    let refused = server
        .call(
            Method::POST,
            &format!("/v1/subscriptions/{sub}/discount"),
            Some(ADMIN_KEY),
            Some(json!({"coupon": "ONLYONE"})),
            &[("If-Match", &format!("\"{stale}\""))],
        )
        .await;
    assert_eq!(
        refused.status,
        StatusCode::PRECONDITION_FAILED,
        "{}",
        refused.body
    );
    let state = server.get("/v1/coupons/ONLYONE").await;
    assert_eq!(state.body["times_redeemed"], 0, "{}", state.body);
    let applied = server
        .post(
            &format!("/v1/subscriptions/{sub}/discount"),
            json!({"coupon": "ONLYONE"}),
        )
        .await;
    assert_eq!(applied.status, StatusCode::OK, "{}", applied.body);
    assert_eq!(applied.body["coupon"], "ONLYONE");
    let again = server
        .post(
            &format!("/v1/subscriptions/{sub}/discount"),
            json!({"coupon": "ONLYONE"}),
        )
        .await;
    assert_eq!(
        again.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        again.body
    );
    assert_eq!(again.body["code"], "coupon_already_redeemed");
    // Tax rates change from now on: a back-dated rate or retirement is refused.
    let back_dated = server
        .post(
            "/v1/tax_rates",
            json!({"country": "FR", "name": "TVA", "percent": "20", "mode": "inclusive",
                   "valid_from": "2026-12-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(
        back_dated.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        back_dated.body
    );
    assert_eq!(back_dated.body["code"], "invalid_field");
}

/// The ledger's last position, from readiness.
async fn head(server: &Server) -> u64 {
    server.get("/readyz").await.body["ledger_position"]
        .as_u64()
        .unwrap()
}

/// Regression (HTTP edge, defect 7): a JSON array was read as `{}` and created
/// a customer or canceled a subscription. Bodies must be objects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_is_not_an_object_is_refused_and_writes_nothing() {
    let server = serve(Backend::Sqlite).await;
    let customer = untaxed_customer_with_card(&server).await;
    let (_, sub, ..) = server.community_subscription(&customer).await;
    let before = head(&server).await;
    for (path, body) in [
        ("/v1/customers".to_owned(), json!([])),
        (format!("/v1/subscriptions/{sub}/cancel"), json!([])),
        (format!("/v1/subscriptions/{sub}/pause"), json!("now")),
        ("/v1/customers".to_owned(), json!(null)),
    ] {
        let refused = server.post(&path, body.clone()).await;
        assert_eq!(
            refused.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{path} {body}: {}",
            refused.body
        );
        assert_eq!(refused.body["code"], "invalid_body", "{path} {body}");
    }
    assert_eq!(head(&server).await, before);
    assert_eq!(
        server.get(&format!("/v1/subscriptions/{sub}")).await.body["status"],
        "active"
    );
}

/// Regression (HTTP edge, defect 3): `If-Match` was ignored on contact-only
/// updates (a stale version: 200 and written; 16 at once: 14 written).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_match_guards_contact_updates_one_of_sixteen_wins() {
    let server = serve(Backend::Sqlite).await;
    let customer = untaxed_customer_with_card(&server).await;
    let current = server.get(&format!("/v1/customers/{customer}")).await;
    let version = current.body["version"].as_u64().unwrap();
    let contact = |n: usize| json!({"contact": {"name": format!("Ann {n}"), "email": format!("ann{n}@example.com")}});
    let stale = server
        .call(
            Method::POST,
            &format!("/v1/customers/{customer}"),
            Some(ADMIN_KEY),
            Some(contact(0)),
            &[("If-Match", &format!("\"{}\"", version - 1))],
        )
        .await;
    assert_eq!(
        stale.status,
        StatusCode::PRECONDITION_FAILED,
        "{}",
        stale.body
    );
    let mut tasks = tokio::task::JoinSet::new();
    for n in 1..=16 {
        let request = server
            .client
            .post(format!("{}/v1/customers/{customer}", server.base))
            .bearer_auth(ADMIN_KEY)
            .header("If-Match", format!("\"{version}\""))
            .json(&contact(n));
        tasks.spawn(async move { request.send().await.unwrap().status() });
    }
    let statuses = tasks.join_all().await;
    let won = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let refused = statuses
        .iter()
        .filter(|s| **s == StatusCode::PRECONDITION_FAILED)
        .count();
    assert_eq!((won, refused), (1, 15), "{statuses:?}");
    let after = server.get(&format!("/v1/customers/{customer}")).await;
    assert_eq!(after.body["version"].as_u64().unwrap(), version + 1);
}

/// Regression (HTTP edge, defect 6): free text was unchecked (a 50,000-character
/// reason, a card number) and would live forever in the ledger. A refund's
/// reason is now one of Stripe's codes (issue 14: no free text about a person).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn free_text_is_limited_and_never_holds_a_card_number_or_control_characters() {
    let server = serve(Backend::Sqlite).await;
    let invoice = paid_community_invoice(&server).await;
    let customer = untaxed_customer_with_card(&server).await;
    let before = head(&server).await;
    let refund = |reason: String| json!({"amount": money("1.00"), "reason": reason});
    for (path, body, code) in [
        (
            format!("/v1/invoices/{invoice}/refund"),
            refund("x".repeat(50_000)),
            "invalid_field",
        ),
        (
            format!("/v1/invoices/{invoice}/refund"),
            refund("card 4242 4242 4242 4242".into()),
            "invalid_field",
        ),
        // A reason is one of Stripe's codes: no free text about a person.
        (
            format!("/v1/invoices/{invoice}/refund"),
            refund("goodwill, she was upset".into()),
            "invalid_field",
        ),
        (
            format!("/v1/invoices/{invoice}/refund"),
            refund("a\u{0}b".into()),
            "invalid_field",
        ),
        (
            format!("/v1/customers/{customer}"),
            json!({"contact": {"name": "Ann \u{202E}eeL", "email": "ann@example.com"}}),
            "invalid_field",
        ),
        (
            format!("/v1/customers/{customer}"),
            json!({"contact": {"name": "Ann\nLee", "email": "ann@example.com"}}),
            "invalid_field",
        ),
        (
            "/v1/plans".to_owned(),
            json!({"id": "p1", "name": "Plan\u{7}", "price": {"id": "p1_v1", "unit_amount": money("1.00"), "interval": "month"}}),
            "invalid_field",
        ),
        (
            "/v1/plans".to_owned(),
            json!({"id": "p2", "name": "Plan", "features": {"note": "4000000000000002"},
                   "price": {"id": "p2_v1", "unit_amount": money("1.00"), "interval": "month"}}),
            "card_number_rejected",
        ),
    ] {
        let refused = server.post(&path, body).await;
        assert_eq!(
            refused.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{path}: {}",
            refused.body
        );
        assert_eq!(refused.body["code"], code, "{path}: {}", refused.body);
    }
    assert_eq!(
        head(&server).await,
        before,
        "a refused request wrote something"
    );
}

/// Regression (HTTP edge, defects 2 and 5): a key creation's answer with its
/// secret was kept for idempotent replays; keys could not be listed, rotated or
/// revoked, and their creation named no actor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_are_listed_rotated_and_revoked_and_their_secret_is_never_stored() {
    let server = serve(Backend::Sqlite).await;
    let made = server
        .call(
            Method::POST,
            "/v1/api_keys",
            Some(ADMIN_KEY),
            Some(json!({"role": "billing"})),
            &[("Idempotency-Key", "make-a-billing-key")],
        )
        .await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.body);
    let key = made.body["key"].as_str().unwrap().to_owned();
    let id = made.body["id"].as_str().unwrap().to_owned();
    let secret = key.rsplit('_').next().unwrap().to_owned();
    let replayed = server
        .call(
            Method::POST,
            "/v1/api_keys",
            Some(ADMIN_KEY),
            Some(json!({"role": "billing"})),
            &[("Idempotency-Key", "make-a-billing-key")],
        )
        .await;
    assert_eq!(replayed.status, StatusCode::CREATED);
    assert_eq!(replayed.headers["idempotent-replayed"], "true");
    assert_eq!(replayed.body["id"], json!(id));
    assert_eq!(
        replayed.body["key"],
        Value::Null,
        "a replay never hands the secret out"
    );
    // Nothing the server stored holds the secret.
    let path = server.location.trim_start_matches("sqlite:").to_owned();
    let stored = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cat '{path}' '{path}-wal' 2>/dev/null | grep -c -a '{secret}' || true"
        ))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&stored.stdout).trim(),
        "0",
        "the secret is in the database file"
    );

    let as_billing = |key: &str| {
        let key = key.to_owned();
        let server = &server;
        async move {
            server
                .call(Method::GET, "/v1/subscriptions", Some(&key), None, &[])
                .await
                .status
        }
    };
    assert_eq!(as_billing(&key).await, StatusCode::OK);
    let listed = server.get("/v1/api_keys").await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
    let entry = listed.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == json!(id))
        .unwrap()
        .clone();
    assert_eq!(entry["created_by"], "bootstrap-admin");
    assert_eq!(entry["status"], "active");
    assert!(entry["last_used_at"].is_string(), "{entry}");
    assert!(entry.get("key").is_none() && !listed.body.to_string().contains(&secret));

    // Rotation: the old secret stops working at once, the new one works.
    let rotated = server
        .post(&format!("/v1/api_keys/{id}/rotate"), json!({}))
        .await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.body);
    let new_key = rotated.body["key"].as_str().unwrap().to_owned();
    assert_eq!(as_billing(&key).await, StatusCode::UNAUTHORIZED);
    assert_eq!(as_billing(&new_key).await, StatusCode::OK);
    // Revocation: at once.
    let revoked = server
        .post(&format!("/v1/api_keys/{id}/revoke"), json!({}))
        .await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.body);
    assert_eq!(revoked.body["status"], "revoked");
    assert_eq!(as_billing(&new_key).await, StatusCode::UNAUTHORIZED);
    let unknown = server
        .post("/v1/api_keys/nosuchkey/revoke", json!({}))
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.body["code"], "api_key_not_found");

    // A key made with the CLI names `cli`, and the running server takes it up.
    let cli = Command::new(env!("CARGO_BIN_EXE_recur"))
        .args([
            "keys",
            "create",
            "--role",
            "analyst",
            "--database",
            &server.location,
        ])
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let cli_key = String::from_utf8(cli.stdout).unwrap().trim().to_owned();
    let mut taken_up = StatusCode::UNAUTHORIZED;
    for _ in 0..50 {
        taken_up = server
            .call(Method::GET, "/v1/metrics/mrr", Some(&cli_key), None, &[])
            .await
            .status;
        if taken_up == StatusCode::OK {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(taken_up, StatusCode::OK);
    let listed = server.get("/v1/api_keys").await;
    assert!(
        listed.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["created_by"] == "cli" && k["role"] == "analyst"),
        "{}",
        listed.body
    );
}

/// Regression (HTTP edge, defects 4 and 8): an unknown key re-read the whole
/// keys' stream on every request (and waited 5 s for an unreachable ledger
/// before answering 401); readiness took 9.4 s to say 503. Keys are held in
/// memory: with the ledger gone, readiness answers 503 within about a second,
/// a known key still authenticates, and an unknown key is 503 once the keys
/// could not be read for a while.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_outage_is_503_quickly_and_known_keys_keep_working() {
    let server = serve(Backend::Postgres).await;
    let made = server
        .post("/v1/api_keys", json!({"role": "analyst"}))
        .await;
    let analyst = made.body["key"].as_str().unwrap().to_owned();
    let database = server.location.rsplit('/').next().unwrap().to_owned();
    let admin = sqlx::PgPool::connect(&common::admin_url()).await.unwrap();
    let set_connections = |allowed: bool| {
        let (admin, database) = (admin.clone(), database.clone());
        async move {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "ALTER DATABASE \"{database}\" ALLOW_CONNECTIONS {allowed}"
            )))
            .execute(&admin)
            .await
            .unwrap();
            if !allowed {
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}'"
                )))
                .execute(&admin)
                .await
                .unwrap();
            }
        }
    };
    set_connections(false).await;
    let started = std::time::Instant::now();
    let ready = server.call(Method::GET, "/readyz", None, None, &[]).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        started.elapsed() < std::time::Duration::from_millis(2_500),
        "{:?}",
        started.elapsed()
    );
    // A known key is still known; what it asks for needs the ledger: 503, not 401 or 500.
    let known = server
        .call(Method::GET, "/v1/plans", Some(&analyst), None, &[])
        .await;
    assert_eq!(
        known.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        known.body
    );
    assert_eq!(known.body["code"], "unavailable");
    // Once the keys could not be read for two seconds, an unknown key may be a
    // new one: 503, quickly.
    tokio::time::sleep(std::time::Duration::from_millis(2_300)).await;
    let started = std::time::Instant::now();
    let unknown = server
        .call(
            Method::GET,
            "/v1/plans",
            Some("rk_nosuchkey00000000_secret"),
            None,
            &[],
        )
        .await;
    assert_eq!(
        unknown.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        unknown.body
    );
    assert!(started.elapsed() < std::time::Duration::from_millis(500));
    set_connections(true).await;
    let mut back = StatusCode::SERVICE_UNAVAILABLE;
    for _ in 0..100 {
        back = server
            .call(Method::GET, "/readyz", None, None, &[])
            .await
            .status;
        if back == StatusCode::OK {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(back, StatusCode::OK);
    let mut unknown_again = StatusCode::SERVICE_UNAVAILABLE;
    for _ in 0..50 {
        unknown_again = server
            .call(
                Method::GET,
                "/v1/plans",
                Some("rk_nosuchkey00000000_secret"),
                None,
                &[],
            )
            .await
            .status;
        if unknown_again == StatusCode::UNAUTHORIZED {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(unknown_again, StatusCode::UNAUTHORIZED);
}

/// One sample of a Prometheus text exposition.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: std::collections::BTreeMap<String, String>,
    value: f64,
}

/// A scrape of `/metrics`, parsed strictly as the text exposition format 0.0.4:
/// every sample belongs to a family declared by `# TYPE` before it, names and
/// label names are valid, label values are quoted with only `\\`, `\"` and `\n`
/// escapes, values are numbers, and each histogram's buckets are cumulative and
/// end at `+Inf` with its count.
struct Scrape {
    types: std::collections::HashMap<String, String>,
    samples: Vec<Sample>,
}

impl Scrape {
    fn parse(text: &str) -> Self {
        let valid_name = |name: &str, colon: bool| {
            let mut chars = name.chars();
            chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':'))
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
        };
        let mut types = std::collections::HashMap::new();
        let mut samples = Vec::new();
        for line in text.lines() {
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
                assert!(valid_name(name, true), "bad family name in {line:?}");
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                    "bad type in {line:?}"
                );
                assert!(
                    types.insert(name.to_owned(), kind.to_owned()).is_none(),
                    "{name} declared twice"
                );
                continue;
            }
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap();
                assert!(valid_name(name, true), "bad family name in {line:?}");
                continue;
            }
            assert!(!line.starts_with('#'), "unknown comment line {line:?}");
            let name_end = line.find(['{', ' ']).expect("a sample has a value");
            let name = &line[..name_end];
            assert!(valid_name(name, true), "bad metric name in {line:?}");
            let mut labels = std::collections::BTreeMap::new();
            let mut rest = &line[name_end..];
            if let Some(inner) = rest.strip_prefix('{') {
                let mut chars = inner.char_indices().peekable();
                let end;
                loop {
                    let (start, c) = chars.next().expect("labels end with }");
                    if c == '}' {
                        end = start;
                        break;
                    }
                    let eq = inner[start..].find('=').expect("label=value") + start;
                    let label = &inner[start..eq];
                    assert!(valid_name(label, false), "bad label name in {line:?}");
                    while chars.peek().is_some_and(|(i, _)| *i <= eq) {
                        chars.next();
                    }
                    assert_eq!(
                        chars.next().map(|(_, c)| c),
                        Some('"'),
                        "unquoted value in {line:?}"
                    );
                    let mut value = String::new();
                    loop {
                        match chars.next().expect("label value ends with \"").1 {
                            '"' => break,
                            '\\' => match chars.next().expect("an escape").1 {
                                '\\' => value.push('\\'),
                                '"' => value.push('"'),
                                'n' => value.push('\n'),
                                other => panic!("bad escape \\{other} in {line:?}"),
                            },
                            c => value.push(c),
                        }
                    }
                    assert!(
                        labels.insert(label.to_owned(), value).is_none(),
                        "repeated label in {line:?}"
                    );
                    match chars.peek().map(|(_, c)| *c) {
                        Some(',') => {
                            chars.next();
                        }
                        Some('}') => {}
                        other => {
                            panic!("expected , or }} after a label, got {other:?} in {line:?}")
                        }
                    }
                }
                rest = &inner[end + 1..];
            }
            let mut fields = rest
                .strip_prefix(' ')
                .expect("a space before the value")
                .split(' ');
            let value = fields.next().unwrap();
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                "NaN" => f64::NAN,
                number => number
                    .parse()
                    .unwrap_or_else(|_| panic!("bad value in {line:?}")),
            };
            if let Some(timestamp) = fields.next() {
                timestamp.parse::<i64>().expect("a timestamp is an integer");
            }
            assert!(fields.next().is_none(), "trailing text in {line:?}");
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    name.strip_suffix(suffix)
                        .filter(|base| types.get(*base).is_some_and(|t| t == "histogram"))
                })
                .unwrap_or(name);
            assert!(types.contains_key(family), "{name} has no # TYPE before it");
            if name.ends_with("_bucket") {
                assert!(labels.contains_key("le"), "a bucket without le: {line:?}");
            }
            samples.push(Sample {
                name: name.to_owned(),
                labels,
                value,
            });
        }
        let scrape = Self { types, samples };
        scrape.check_histograms();
        scrape
    }

    /// Each histogram series: buckets non-decreasing in `le`, `+Inf` equal to `_count`.
    fn check_histograms(&self) {
        for (family, _) in self.types.iter().filter(|(_, t)| *t == "histogram") {
            let bucket = format!("{family}_bucket");
            let mut series: std::collections::BTreeMap<String, Vec<(f64, f64)>> =
                std::collections::BTreeMap::new();
            for sample in self.samples.iter().filter(|s| s.name == bucket) {
                let mut key = sample.labels.clone();
                let le = key.remove("le").unwrap();
                let le: f64 = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                };
                series
                    .entry(format!("{key:?}"))
                    .or_default()
                    .push((le, sample.value));
            }
            for (key, mut buckets) in series {
                buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
                assert!(
                    buckets.windows(2).all(|w| w[0].1 <= w[1].1),
                    "{family}{key}: buckets are not cumulative"
                );
                let (le, inf) = *buckets.last().unwrap();
                assert!(le.is_infinite(), "{family}{key}: no +Inf bucket");
                let count = self
                    .samples
                    .iter()
                    .find(|s| {
                        s.name == format!("{family}_count") && format!("{:?}", s.labels) == key
                    })
                    .unwrap_or_else(|| panic!("{family}{key}: no _count"));
                assert_eq!(
                    inf, count.value,
                    "{family}{key}: +Inf bucket is not the count"
                );
            }
        }
    }

    /// The value of the sample `name` whose labels include `labels` (0 when absent,
    /// as a counter that never moved).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let matching: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect();
        assert!(matching.len() <= 1, "{name}{labels:?} matches {matching:?}");
        matching.first().map_or(0.0, |s| s.value)
    }
}

impl Server {
    /// `GET /metrics` without a key, parsed.
    async fn scrape(&self) -> (Scrape, String) {
        let response = self
            .client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()["content-type"],
            "text/plain; version=0.0.4; charset=utf-8"
        );
        let text = response.text().await.unwrap();
        (Scrape::parse(&text), text)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_by_route_template_and_refusals_by_their_code() {
    let server = serve(Backend::Postgres).await;
    let (before, _) = server.scrape().await;

    let customer = server.customer_with_card().await;
    for _ in 0..2 {
        let got = server.get(&format!("/v1/customers/{customer}")).await;
        assert_eq!(got.status, StatusCode::OK, "{}", got.body);
    }
    let (_, _, position, _) = server.community_subscription(&customer).await;
    let refused = server
        .post(
            "/v1/subscriptions",
            json!({"customer": customer, "plan": "no_such_plan", "trial_days": 0}),
        )
        .await;
    assert_eq!(refused.status, StatusCode::NOT_FOUND, "{}", refused.body);
    assert_eq!(refused.body["code"], "plan_not_found");
    let keyed = json!({"tax_location": {"country": "US", "region": "TX"}});
    for _ in 0..2 {
        let created = server
            .call(
                Method::POST,
                "/v1/customers",
                Some(ADMIN_KEY),
                Some(keyed.clone()),
                &[("Idempotency-Key", "telemetry-replay")],
            )
            .await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    }
    let unknown = format!("/v1/nothing/{customer}");
    assert_eq!(server.get(&unknown).await.status, StatusCode::NOT_FOUND);
    // The read models reach the last write, so the lag below is exactly zero.
    let caught_up = server
        .get(&format!("/v1/ledger/trial-balance?min_position={position}"))
        .await;
    assert_eq!(caught_up.status, StatusCode::OK, "{}", caught_up.body);

    let (after, text) = server.scrape().await;
    let moved = |name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels) - before.value(name, labels)
    };
    // Route labels are the router's templates, never a path with an id in it.
    assert!(
        !text.contains(&customer),
        "an id leaked into a label:\n{text}"
    );
    for sample in after
        .samples
        .iter()
        .filter(|s| s.labels.contains_key("route"))
    {
        let route = &sample.labels["route"];
        assert!(
            route == "unmatched" || route == "/metrics" || route.starts_with("/v1/"),
            "{route}"
        );
    }
    let requests = "recur_http_requests_total";
    let get_customer = [("method", "GET"), ("route", "/v1/customers/{id}")];
    assert_eq!(
        moved(
            requests,
            &[get_customer[0], get_customer[1], ("status", "200")]
        ),
        2.0
    );
    assert_eq!(
        moved(
            requests,
            &[
                ("method", "POST"),
                ("route", "/v1/customers"),
                ("status", "201")
            ]
        ),
        3.0,
        "the card's customer and the keyed one twice (the second replayed)"
    );
    assert_eq!(
        moved(
            requests,
            &[("method", "GET"), ("route", "unmatched"), ("status", "404")]
        ),
        1.0
    );
    assert_eq!(
        moved("recur_http_request_duration_seconds_count", &get_customer),
        2.0
    );
    assert_eq!(
        moved(
            "recur_http_request_duration_seconds_bucket",
            &[get_customer[0], get_customer[1], ("le", "+Inf")]
        ),
        2.0
    );
    let commands = "recur_billing_commands_total";
    let subscriptions = [("method", "POST"), ("route", "/v1/subscriptions")];
    assert_eq!(
        moved(
            commands,
            &[subscriptions[0], subscriptions[1], ("outcome", "ok")]
        ),
        1.0
    );
    assert_eq!(
        moved(
            commands,
            &[subscriptions[0], subscriptions[1], ("outcome", "refused")]
        ),
        1.0
    );
    assert_eq!(
        moved(
            "recur_billing_refusals_total",
            &[
                subscriptions[0],
                subscriptions[1],
                ("code", "plan_not_found")
            ]
        ),
        1.0
    );
    let customers = [("method", "POST"), ("route", "/v1/customers")];
    assert_eq!(
        moved(commands, &[customers[0], customers[1], ("outcome", "ok")]),
        2.0
    );
    assert_eq!(
        moved(
            commands,
            &[customers[0], customers[1], ("outcome", "replayed")]
        ),
        1.0
    );
    assert_eq!(
        moved(
            commands,
            &[get_customer[0], get_customer[1], ("outcome", "ok")]
        ),
        0.0,
        "a read is not a command"
    );
    // The community subscription without trial is charged at once, and succeeds.
    assert_eq!(
        moved("recur_payments_total", &[("outcome", "succeeded")]),
        1.0
    );
    assert_eq!(
        moved("recur_payments_total", &[("outcome", "declined")]),
        0.0
    );
    // Every event of this test was appended by this server, one request at a
    // time and none refused mid-append, so its positions are dense here (in
    // general they are not: docs/decisions/0001-global-order.md).
    let ledger = after.value("recur_ledger_position", &[]);
    assert!(ledger >= position as f64);
    assert_eq!(
        moved("recur_ledger_events_appended_total", &[]),
        ledger - before.value("recur_ledger_position", &[])
    );
    let projected = after.value("recur_projection_position", &[]);
    assert!(projected >= position as f64);
    assert_eq!(
        after.value("recur_projection_lag_events", &[]),
        ledger - projected
    );
    for (family, kind) in [
        ("recur_http_requests_total", "counter"),
        ("recur_http_request_duration_seconds", "histogram"),
        ("recur_billing_refusals_total", "counter"),
        ("recur_ledger_position", "gauge"),
        ("recur_projection_lag_events", "gauge"),
        ("recur_scheduler_due_items", "gauge"),
    ] {
        assert_eq!(
            after.types.get(family).map(String::as_str),
            Some(kind),
            "{family}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writes_events_carry_its_request_id_as_their_correlation_id() {
    let server = serve(Backend::Postgres).await;
    let created = server
        .post(
            "/v1/customers",
            json!({"tax_location": {"country": "US", "region": "TX"}}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let customer = created.body["id"].as_str().unwrap().to_owned();
    let created_by: uuid::Uuid = created.headers["x-request-id"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let card = json!({"token": "pm_card_visa", "brand": "visa", "last4": "4242", "exp_month": 12, "exp_year": 2040});
    let attached = server
        .post(&format!("/v1/customers/{customer}/payment_method"), card)
        .await;
    assert_eq!(attached.status, StatusCode::OK, "{}", attached.body);
    let attached_by: uuid::Uuid = attached.headers["x-request-id"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(created_by, attached_by);

    let ledger = recur_ledger::Ledger::open(
        recur_ledger::LedgerConfig::new(server.location.clone()),
        std::sync::Arc::new(recur_ledger::SystemClock),
    )
    .await
    .unwrap();
    let stream = recur_ledger::StreamId::parse(format!("customer-{customer}")).unwrap();
    let events = ledger.read_stream(&stream, 1, 100).await.unwrap();
    let by_type = |kind: &str| {
        events
            .iter()
            .find(|e| e.event_type == kind)
            .unwrap_or_else(|| panic!("no {kind} in {events:?}"))
    };
    let created_event = by_type("CustomerCreated");
    assert_eq!(created_event.metadata.correlation_id, Some(created_by));
    assert!(created_event.metadata.actor.is_some());
    assert_eq!(
        by_type("PaymentMethodAttached").metadata.correlation_id,
        Some(attached_by)
    );
    // Every event either request wrote, on any stream, carries its request's id.
    let everything = ledger
        .read_all(recur_ledger::Position(0), 10_000)
        .await
        .unwrap();
    let tagged: Vec<_> = everything
        .iter()
        .filter(|e| e.metadata.correlation_id == Some(created_by))
        .collect();
    assert!(
        tagged
            .iter()
            .all(|e| e.stream_id.as_str().ends_with(&customer)),
        "{tagged:?}"
    );
    assert!(!tagged.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alert_rules_name_only_metrics_the_server_exports() {
    let server = serve(Backend::Sqlite).await;
    // A tick, so the scheduler's tick gauges are exported too.
    let ticked = server
        .post("/v1/test_clock/advance", json!({"seconds": 60}))
        .await;
    assert_eq!(ticked.status, StatusCode::OK, "{}", ticked.body);
    let (scrape, _) = server.scrape().await;
    let rules = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/prometheus/recur-alerts.yml"
    ))
    .unwrap();
    let mut named = std::collections::BTreeSet::new();
    for (start, _) in rules.match_indices("recur_") {
        // Names in the file's comments and descriptions count too: they must not lie.
        if start > 0
            && rules[..start]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            continue;
        }
        let name: String = rules[start..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        named.insert(name);
    }
    assert!(named.len() >= 6, "{named:?}");
    for name in &named {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix)
                    .filter(|base| scrape.types.get(*base).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        assert!(
            scrape.types.contains_key(family),
            "deploy/prometheus/recur-alerts.yml names {name}, which /metrics does not export"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_no_key_and_are_in_the_openapi_document() {
    let server = serve(Backend::Sqlite).await;
    let doc = server
        .call(Method::GET, "/openapi.json", None, None, &[])
        .await;
    let metrics = &doc.body["paths"]["/metrics"]["get"];
    assert!(
        metrics.is_object(),
        "/metrics missing from the OpenAPI document"
    );
    assert!(
        metrics.get("security").is_none(),
        "/metrics is documented as needing a key"
    );
    // A wrong key is not even looked at: the scrape answers as without one.
    let scraped = server
        .call(
            Method::GET,
            "/metrics",
            Some("rk_nosuchkey00000000_secret"),
            None,
            &[],
        )
        .await;
    assert_eq!(scraped.status, StatusCode::OK);
    assert!(scraped.headers.contains_key("x-request-id"));
}

/// Every event `GET /v1/events?{query}` lists, paged `page` at a time with
/// `starting_after`, as `key`: each page's positions increase and follow the last.
async fn events_paged(server: &Server, query: &str, page: usize, key: &str) -> Vec<Value> {
    paged_by_position(
        server,
        &format!("/v1/events?limit={page}{query}"),
        page,
        key,
    )
    .await
}

/// Every item a list paged by ledger position answers from `first` (a path
/// with its query, `limit={page}` among it), following `next_cursor`, as `key`.
async fn paged_by_position(server: &Server, first: &str, page: usize, key: &str) -> Vec<Value> {
    let mut events: Vec<Value> = Vec::new();
    let mut after: Option<u64> = None;
    for _ in 0..1_000 {
        let cursor = after
            .map(|a| format!("&starting_after={a}"))
            .unwrap_or_default();
        let path = format!("{first}{cursor}");
        let answer = server.call(Method::GET, &path, Some(key), None, &[]).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}: {}", answer.body);
        assert_eq!(answer.body["object"], "list");
        let data = answer.body["data"].as_array().unwrap();
        assert!(data.len() <= page, "{path}");
        for event in data {
            let position = event["position"].as_u64().unwrap();
            let last = events.last().map(|e| e["position"].as_u64().unwrap());
            assert!(
                last.or(after).is_none_or(|last| position > last),
                "{path}: {event}"
            );
            events.push(event.clone());
        }
        if answer.body["has_more"] != json!(true) {
            assert_eq!(answer.body["next_cursor"], Value::Null);
            return events;
        }
        after = Some(answer.body["next_cursor"].as_u64().unwrap());
    }
    panic!("{first}: more than a thousand pages");
}

fn created_at(event: &Value) -> time::OffsetDateTime {
    time::OffsetDateTime::parse(
        event["created"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_events_list_the_ledger_in_order_and_each_filter_narrows_it() {
    let server = serve(Backend::Postgres).await;
    let mut keys = std::collections::HashMap::new();
    let mut key_ids = std::collections::HashMap::new();
    for role in ["billing", "support", "analyst"] {
        let made = server.post("/v1/api_keys", json!({"role": role})).await;
        assert_eq!(made.status, StatusCode::CREATED, "{}", made.body);
        keys.insert(role, made.body["key"].as_str().unwrap().to_owned());
        key_ids.insert(role, made.body["id"].as_str().unwrap().to_owned());
    }
    let billing = keys["billing"].clone();

    // Customer A, written by the billing key: contact, card, subscription.
    let created = server
        .call(
            Method::POST,
            "/v1/customers",
            Some(&billing),
            Some(json!({"tax_location": {"country": "US", "region": "TX"},
                        "contact": {"name": "Ada Lovelace", "email": "ada@example.com"}})),
            &[],
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let a = created.body["id"].as_str().unwrap().to_owned();
    let a_request = created.headers["x-request-id"].to_str().unwrap().to_owned();
    let card = json!({"token": "pm_card_visa", "brand": "visa", "last4": "4242", "exp_month": 12, "exp_year": 2040});
    let attached = server
        .call(
            Method::POST,
            &format!("/v1/customers/{a}/payment_method"),
            Some(&billing),
            Some(card),
            &[],
        )
        .await;
    assert_eq!(attached.status, StatusCode::OK, "{}", attached.body);
    let subscribed = server
        .call(
            Method::POST,
            "/v1/subscriptions",
            Some(&billing),
            Some(json!({"customer": a, "plan": "community_access", "trial_days": 0})),
            &[],
        )
        .await;
    assert_eq!(
        subscribed.status,
        StatusCode::CREATED,
        "{}",
        subscribed.body
    );
    let a_sub = subscribed.body["id"].as_str().unwrap().to_owned();
    let a_invoices: Vec<String> =
        server.get(&format!("/v1/subscriptions/{a_sub}")).await.body["invoices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_str().unwrap().to_owned())
            .collect();
    assert!(!a_invoices.is_empty());

    // A day later, customer B, written by the admin key.
    let day = server
        .post("/v1/test_clock/advance", json!({"seconds": 86_400}))
        .await;
    assert_eq!(day.status, StatusCode::OK, "{}", day.body);
    let b = server.customer_with_card().await;
    server.community_subscription(&b).await;

    // Everything, in ledger order, each with its actor and request.
    let all = events_paged(&server, "", 100, ADMIN_KEY).await;
    assert!(all.len() > 10, "{all:?}");
    // The scheduler may write after this; every later listing is cut here.
    let end = all.last().unwrap()["position"].as_u64().unwrap();
    let upto = |events: Vec<Value>| -> Vec<Value> {
        events
            .into_iter()
            .filter(|e| e["position"].as_u64().unwrap() <= end)
            .collect()
    };
    for event in &all {
        assert_eq!(event["object"], "event");
        assert!(event["id"].as_str().is_some() && event["type"].as_str().is_some());
        assert!(event["resource"].as_str().is_some() && event["source"].as_str().is_some());
        created_at(event);
    }
    let a_created = all
        .iter()
        .find(|e| e["type"] == "CustomerCreated" && e["resource"] == format!("customer-{a}"))
        .unwrap();
    assert_eq!(a_created["actor"], json!(key_ids["billing"]));
    assert_eq!(a_created["request_id"], json!(a_request));
    assert_eq!(
        a_created["data"]["tax_location"]["country"], "US",
        "{a_created}"
    );
    let contact = all
        .iter()
        .find(|e| e["resource"] == format!("contact-{a}"))
        .unwrap();
    // Personal data is listed as stored: encrypted.
    assert_eq!(contact["type"], "ContactDetailsEncrypted", "{contact}");
    assert!(contact["data"]["encrypted"]["ciphertext"].is_string());
    assert!(!contact.to_string().contains("Ada"), "{contact}");

    // Paging a few at a time visits every event once, in the same order.
    let ids = |events: &[Value]| events.iter().map(|e| e["id"].clone()).collect::<Vec<_>>();
    assert_eq!(
        ids(&upto(events_paged(&server, "", 3, ADMIN_KEY).await)),
        ids(&all)
    );

    // Each filter lists exactly the events of the whole list that pass it.
    let expect = |keep: &dyn Fn(&Value) -> bool| {
        let kept: Vec<Value> = all.iter().filter(|e| keep(e)).cloned().collect();
        assert!(!kept.is_empty() && kept.len() < all.len());
        ids(&kept)
    };
    let resource = format!("customer-{a}");
    assert_eq!(
        ids(&upto(
            events_paged(&server, &format!("&resource={resource}"), 2, ADMIN_KEY).await
        )),
        expect(&|e| e["resource"] == json!(resource))
    );
    assert_eq!(
        ids(&upto(
            events_paged(&server, "&type=Invoice*", 2, ADMIN_KEY).await
        )),
        expect(&|e| e["type"].as_str().unwrap().starts_with("Invoice"))
    );
    assert_eq!(
        ids(&upto(
            events_paged(&server, "&type=CustomerCreated", 2, ADMIN_KEY).await
        ))
        .len(),
        2
    );
    let actor = &key_ids["billing"];
    assert_eq!(
        ids(&upto(
            events_paged(&server, &format!("&actor={actor}"), 2, ADMIN_KEY).await
        )),
        expect(&|e| e["actor"] == json!(actor))
    );
    let b_created = all
        .iter()
        .find(|e| e["resource"] == format!("customer-{b}"))
        .unwrap();
    let since = b_created["created"].as_str().unwrap();
    let since_at = created_at(b_created);
    assert_eq!(
        ids(&upto(
            events_paged(&server, &format!("&created[gte]={since}"), 4, ADMIN_KEY).await
        )),
        expect(&|e| created_at(e) >= since_at)
    );
    let until = a_created["created"].as_str().unwrap();
    let until_at = created_at(a_created);
    assert_eq!(
        ids(&upto(
            events_paged(
                &server,
                &format!("&created%5Blte%5D={until}&created[gte]={until}"),
                4,
                ADMIN_KEY
            )
            .await
        )),
        expect(&|e| created_at(e) <= until_at && created_at(e) >= until_at)
    );
    let mut a_streams = vec![format!("customer-{a}"), format!("contact-{a}")];
    a_streams.push(format!("subscription-{a_sub}"));
    a_streams.extend(a_invoices.iter().map(|i| format!("invoice-{i}")));
    let by_customer = upto(events_paged(&server, &format!("&customer={a}"), 5, ADMIN_KEY).await);
    assert_eq!(
        ids(&by_customer),
        expect(&|e| a_streams.contains(&e["resource"].as_str().unwrap().to_owned()))
    );
    for kind in [
        "CustomerCreated",
        "ContactDetailsEncrypted",
        "SubscriptionStarted",
        "InvoiceFinalized",
    ] {
        assert!(by_customer.iter().any(|e| e["type"] == kind), "no {kind}");
    }
    // Filters combine; nothing records an external id yet.
    assert_eq!(
        ids(&upto(
            events_paged(
                &server,
                &format!("&customer={a}&type=Subscription*"),
                5,
                ADMIN_KEY
            )
            .await
        )),
        expect(&|e| e["resource"] == format!("subscription-{a_sub}")
            && e["type"].as_str().unwrap().starts_with("Subscription"))
    );
    assert!(
        events_paged(&server, "&external_id=evt_1", 5, ADMIN_KEY)
            .await
            .is_empty()
    );

    // Support reads the trail but for the keys' own events (admin only);
    // billing and analysts do not read it (it holds personal data).
    assert!(
        all.iter().any(|e| e["resource"] == "apikeys"),
        "keys were made"
    );
    let not_keys: Vec<Value> = all
        .iter()
        .filter(|e| e["resource"] != "apikeys")
        .cloned()
        .collect();
    assert_eq!(
        ids(&upto(
            events_paged(&server, "", 100, &keys["support"]).await
        )),
        ids(&not_keys)
    );
    assert!(
        events_paged(&server, "&resource=apikeys", 100, &keys["support"])
            .await
            .is_empty()
    );
    for role in ["billing", "analyst"] {
        let refused = server
            .call(Method::GET, "/v1/events", Some(&keys[role]), None, &[])
            .await;
        assert_eq!(
            refused.status,
            StatusCode::FORBIDDEN,
            "{role}: {}",
            refused.body
        );
        assert_eq!(refused.body["code"], "forbidden");
    }

    // Bad queries are refused, never ignored, never a 5xx.
    for query in [
        "limit=0",
        "limit=101",
        "limit=ten",
        "starting_after=-1",
        "starting_after=x",
        "type=",
        "type=In*voice",
        "type=Invoice**",
        "created[gte]=yesterday",
        "created[lte]=2026-13-01T00:00:00Z",
        "customer=not-a-uuid",
        "resource=",
        "actor=",
        "colour=blue",
        "limit=1&limit=2",
    ] {
        let refused = server.get(&format!("/v1/events?{query}")).await;
        assert_eq!(
            refused.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{query}: {}",
            refused.body
        );
        assert_eq!(refused.body["code"], "invalid_query", "{query}");
    }
}

/// The entries of `GET /v1/customers/{customer}/history`, paged `page` at a time.
async fn history_paged(server: &Server, customer: &str, page: usize, key: &str) -> Vec<Value> {
    let first = format!("/v1/customers/{customer}/history?limit={page}");
    paged_by_position(server, &first, page, key).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customers_history_reads_its_facts_in_order_with_summaries_and_states() {
    let server = serve_from(Backend::Postgres, Some("2027-01-01T00:00:00Z")).await;
    let mut keys = std::collections::HashMap::new();
    for role in ["billing", "support", "analyst"] {
        let made = server.post("/v1/api_keys", json!({"role": role})).await;
        assert_eq!(made.status, StatusCode::CREATED, "{}", made.body);
        keys.insert(role, made.body["key"].as_str().unwrap().to_owned());
    }

    // A customer whose first card is declined for want of funds, then a card that pays.
    let created = server
        .post(
            "/v1/customers",
            json!({"contact": {"name": "Ada Lovelace", "email": "ada@example.com"}}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let a = created.body["id"].as_str().unwrap().to_owned();
    let poor = json!({"token": "pm_card_chargeDeclinedInsufficientFunds", "brand": "visa",
                      "last4": "9995", "exp_month": 12, "exp_year": 2040});
    let attached = server
        .post(&format!("/v1/customers/{a}/payment_method"), poor)
        .await;
    assert_eq!(attached.status, StatusCode::OK, "{}", attached.body);
    let (subscribed, sub, ..) = server.community_subscription(&a).await;
    assert_eq!(
        subscribed.status,
        StatusCode::CREATED,
        "{}",
        subscribed.body
    );
    let first = subscribed.body["invoices"][0].as_str().unwrap().to_owned();
    let card = json!({"token": "pm_card_visa", "brand": "visa", "last4": "4242", "exp_month": 12, "exp_year": 2040});
    let attached = server
        .post(&format!("/v1/customers/{a}/payment_method"), card)
        .await;
    assert_eq!(attached.status, StatusCode::OK, "{}", attached.body);
    let paid = server
        .post(&format!("/v1/invoices/{first}/pay"), json!({}))
        .await;
    assert_eq!(paid.status, StatusCode::OK, "{}", paid.body);
    assert_eq!(paid.body["status"], "paid", "{}", paid.body);
    // A course bought outright, and a month later the renewal.
    let bought = server
        .post(
            "/v1/purchases",
            json!({"customer": a, "plan": "self_paced_course"}),
        )
        .await;
    assert_eq!(bought.status, StatusCode::CREATED, "{}", bought.body);
    let month = server
        .post(
            "/v1/test_clock/advance",
            json!({"to": "2027-02-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(month.status, StatusCode::OK, "{}", month.body);
    // Another customer beside it, whose facts are not A's.
    let b = server.customer_with_card().await;
    server.community_subscription(&b).await;

    // The history is the customer's trail, in the same order, each entry readable.
    let all = history_paged(&server, &a, 100, ADMIN_KEY).await;
    let end = all.last().unwrap()["position"].as_u64().unwrap();
    let trail: Vec<Value> = events_paged(&server, &format!("&customer={a}"), 100, ADMIN_KEY)
        .await
        .into_iter()
        .filter(|e| e["position"].as_u64().unwrap() <= end)
        .collect();
    let ids = |items: &[Value]| items.iter().map(|e| e["id"].clone()).collect::<Vec<_>>();
    assert_eq!(ids(&all), ids(&trail));
    for (entry, event) in all.iter().zip(&trail) {
        for field in [
            "type",
            "created",
            "position",
            "resource",
            "actor",
            "request_id",
            "data",
        ] {
            assert_eq!(entry[field], event[field], "{field}: {entry}");
        }
        assert!(!entry["summary"].as_str().unwrap().is_empty(), "{entry}");
        assert!(!entry["resource"].as_str().unwrap().contains(&b), "{entry}");
    }
    let entry = |kind: &str, resource: &str, nth: usize| -> &Value {
        all.iter()
            .filter(|e| e["type"] == kind && e["resource"] == resource)
            .nth(nth)
            .unwrap_or_else(|| panic!("no {kind} #{nth} on {resource}: {all:#?}"))
    };
    let invoice = format!("invoice-{first}");
    let finalized = entry("InvoiceFinalized", &invoice, 0);
    assert_eq!(
        finalized["summary"],
        format!("Invoice {first} finalized: total 97.00 USD")
    );
    assert_eq!(finalized["state"]["status"], "open");
    let declined = entry("PaymentFailed", &invoice, 0);
    assert!(
        declined["summary"]
            .as_str()
            .unwrap()
            .starts_with("Payment attempt 1 declined (insufficient_funds)"),
        "{declined}"
    );
    assert_eq!(declined["state"]["status"], "open");
    assert_eq!(declined["state"]["attempts"], 1);
    assert_eq!(declined["state"]["amount_paid"], Value::Null);
    let succeeded = entry("PaymentSucceeded", &invoice, 0);
    assert_eq!(
        succeeded["summary"],
        "Payment attempt 2 succeeded: 97.00 USD collected"
    );
    assert_eq!(succeeded["state"]["status"], "paid");
    assert_eq!(succeeded["state"]["attempts"], 2);
    assert_eq!(succeeded["state"]["amount_paid"], money("97.00"));
    assert!(succeeded["position"].as_u64() > declined["position"].as_u64());
    let subscription = format!("subscription-{sub}");
    assert_eq!(
        entry("SubscriptionPastDue", &subscription, 0)["state"]["status"],
        "past_due"
    );
    let renewed = entry("SubscriptionRenewed", &subscription, 0);
    assert_eq!(
        renewed["summary"],
        format!("Subscription {sub} renewed to period 2027-02-01 – 2027-03-01")
    );
    assert_eq!(
        renewed["state"]["current_period"],
        json!({"start": "2027-02-01T00:00:00Z", "end": "2027-03-01T00:00:00Z"})
    );
    assert!(
        all.iter().any(|e| e["type"] == "InvoiceFinalized"
            && e["summary"]
                .as_str()
                .unwrap()
                .ends_with("finalized: total 997.00 USD")),
        "the course's invoice"
    );
    let customer = format!("customer-{a}");
    assert_eq!(
        entry("PaymentMethodAttached", &customer, 1)["state"],
        json!({"object": "customer", "segment": "standard", "credit_balance": null,
               "card": {"brand": "visa", "last4": "4242", "exp_month": 12, "exp_year": 2040}})
    );
    let contact = entry("ContactDetailsEncrypted", &format!("contact-{a}"), 0);
    assert_eq!(contact["summary"], "Contact details updated");
    assert_eq!(
        contact["state"],
        json!({"object": "contact", "details": "updated"})
    );

    // Paged three at a time by support: the same entries, states folded across pages.
    assert!(all.len() > 6);
    assert_eq!(history_paged(&server, &a, 3, &keys["support"]).await, all);
    let page = server
        .get(&format!("/v1/customers/{a}/history?limit=3"))
        .await;
    assert_eq!(page.body["has_more"], true);
    assert_eq!(page.body["next_cursor"], all[2]["position"]);

    // Billing and analysts do not read it; an unknown customer is not found.
    for role in ["billing", "analyst"] {
        let refused = server
            .call(
                Method::GET,
                &format!("/v1/customers/{a}/history"),
                Some(&keys[role]),
                None,
                &[],
            )
            .await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{role}");
        assert_eq!(refused.body["code"], "forbidden");
    }
    for unknown in [
        uuid::Uuid::now_v7().to_string(),
        "not-a-customer".to_owned(),
    ] {
        let missing = server
            .get(&format!("/v1/customers/{unknown}/history"))
            .await;
        assert_eq!(missing.status, StatusCode::NOT_FOUND, "{}", missing.body);
        assert_eq!(missing.body["code"], "customer_not_found");
        assert_eq!(missing.headers["content-type"], "application/problem+json");
    }
    for query in ["limit=0", "limit=101", "starting_after=x", "colour=blue"] {
        let refused = server
            .get(&format!("/v1/customers/{a}/history?{query}"))
            .await;
        assert_eq!(
            refused.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{query}: {}",
            refused.body
        );
        assert_eq!(refused.body["code"], "invalid_query", "{query}");
    }
}

/// Runs `recur <args>` and answers its exit code and output.
fn recur_cli(args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_recur"))
        .args(args)
        .env_remove("DATABASE_URL")
        .env("RECUR_MASTER_KEY", MASTER_KEY)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The whole database as `pg_dump` prints it (every table, every row).
fn pg_dump(location: &str) -> String {
    let out = std::process::Command::new("pg_dump")
        .args(["--no-owner", "--data-only", "-d", location])
        .output()
        .expect("pg_dump (Debian's postgresql-client) must be installed");
    assert!(
        out.status.success(),
        "pg_dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Starts a change of the customer's contact email to `grace.<n>@example.com`.
fn spawn_contact_change(
    server: &Server,
    tasks: &mut tokio::task::JoinSet<Answer>,
    customer: &str,
    n: u32,
) {
    let request = server
        .client
        .post(format!("{}/v1/customers/{customer}", server.base))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"contact": {"name": "Grace Hopper", "email": format!("grace.{n}@example.com")}}));
    tasks.spawn(async move { Answer::of(request.send().await.unwrap()).await });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn personal_data_is_encrypted_read_on_record_exported_and_erased_for_good() {
    let server = serve(Backend::Postgres).await;
    let mut keys = std::collections::HashMap::new();
    let mut key_ids = std::collections::HashMap::new();
    for role in ["billing", "support"] {
        let made = server.post("/v1/api_keys", json!({"role": role})).await;
        assert_eq!(made.status, StatusCode::CREATED, "{}", made.body);
        keys.insert(role, made.body["key"].as_str().unwrap().to_owned());
        key_ids.insert(role, made.body["id"].as_str().unwrap().to_owned());
    }
    let as_role = |role: &str| keys[role].clone();

    let grace = json!({"name": "Grace Hopper", "email": "grace.hopper@example.com", "phone": "+1 555 0199"});
    let create = || {
        server.call(
            Method::POST,
            "/v1/customers",
            Some(ADMIN_KEY),
            Some(json!({"contact": grace})),
            &[("Idempotency-Key", "create-grace")],
        )
    };
    let created = create().await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let id = created.body["id"].as_str().unwrap().to_owned();
    assert_eq!(created.body["erased_at"], Value::Null);
    assert_eq!(created.body["contact"], grace);
    // Nothing of her is in clear in any table, the answer kept for a replay
    // included; the replay decrypts it.
    let dump = pg_dump(&server.location);
    for secret in ["Grace Hopper", "grace.hopper@example.com", "555 0199"] {
        assert!(
            !dump.contains(secret),
            "{secret} is in the database in clear"
        );
    }
    let replayed = create().await;
    assert_eq!(replayed.headers["idempotent-replayed"], "true");
    assert_eq!(replayed.body, created.body);

    // The ledger holds the details encrypted: the trail shows ciphertext only.
    let stored = server
        .get(&format!("/v1/events?resource=contact-{id}"))
        .await;
    assert_eq!(stored.status, StatusCode::OK, "{}", stored.body);
    assert_eq!(stored.body["data"][0]["type"], "ContactDetailsEncrypted");
    let trail = stored.body.to_string();
    for secret in ["Grace", "grace.hopper", "0199"] {
        assert!(!trail.contains(secret), "{secret} in clear: {trail}");
    }

    // Support reads the details; the read is recorded with its key as actor.
    let read = server
        .call(
            Method::GET,
            &format!("/v1/customers/{id}"),
            Some(&as_role("support")),
            None,
            &[],
        )
        .await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.body);
    assert_eq!(read.body["contact"], grace);
    // Billing sees no personal data, and nothing is recorded for it.
    let billing_read = server
        .call(
            Method::GET,
            &format!("/v1/customers/{id}"),
            Some(&as_role("billing")),
            None,
            &[],
        )
        .await;
    assert_eq!(billing_read.status, StatusCode::OK);
    assert!(billing_read.body.get("contact").is_none());
    let access = server
        .get(&format!("/v1/events?resource=access-{id}"))
        .await;
    let reads = access.body["data"].as_array().unwrap();
    // The create's answer showed the details to the admin; then support read them.
    assert_eq!(reads.len(), 2, "{}", access.body);
    assert!(reads.iter().all(|r| r["type"] == "PersonalDataRead"));
    assert_eq!(reads[0]["actor"], "bootstrap-admin");
    assert_eq!(reads[1]["actor"], key_ids["support"].as_str());
    assert_eq!(reads[1]["data"]["what"], "contact");
    // A screen that polls the customer is recorded once a minute, not per read.
    for _ in 0..3 {
        server
            .call(
                Method::GET,
                &format!("/v1/customers/{id}"),
                Some(&as_role("support")),
                None,
                &[],
            )
            .await;
    }
    let access = server
        .get(&format!("/v1/events?resource=access-{id}"))
        .await;
    assert_eq!(access.body["data"].as_array().unwrap().len(), 2);

    // Concurrent contact changes: one data key, every change readable.
    let mut changes = tokio::task::JoinSet::new();
    for n in 0..8 {
        spawn_contact_change(&server, &mut changes, &id, n);
    }
    for answer in changes.join_all().await {
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    }
    let now = server.get(&format!("/v1/customers/{id}")).await;
    let email = now.body["contact"]["email"].as_str().unwrap().to_owned();
    assert!(email.starts_with("grace.") && email.ends_with("@example.com"));

    // The access request's export: every fact, decrypted; recorded too.
    assert_eq!(
        server
            .call(
                Method::GET,
                &format!("/v1/customers/{id}/export"),
                Some(&as_role("billing")),
                None,
                &[]
            )
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let export = server
        .call(
            Method::GET,
            &format!("/v1/customers/{id}/export"),
            Some(&as_role("support")),
            None,
            &[],
        )
        .await;
    assert_eq!(export.status, StatusCode::OK, "{}", export.body);
    assert_eq!(export.body["object"], "customer_export");
    assert_eq!(export.body["customer"]["contact"]["email"], email.as_str());
    let exported = export.body["events"].as_array().unwrap();
    let decrypted: Vec<&Value> = exported
        .iter()
        .filter(|e| e["type"] == "ContactDetailsEncrypted")
        .map(|e| &e["data"]["details"])
        .collect();
    assert_eq!(decrypted.len(), 9, "the first details and eight changes");
    assert_eq!(*decrypted[0], grace);
    assert!(exported.iter().any(|e| e["type"] == "CustomerCreated"));
    assert!(
        exported
            .iter()
            .any(|e| e["type"] == "PersonalDataRead" && e["data"]["what"] == "export"),
        "the export records itself"
    );
    let positions: Vec<u64> = exported
        .iter()
        .map(|e| e["position"].as_u64().unwrap())
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "ledger order");

    let before = recur_cli(&["ledger", "verify", "--json", "--database", &server.location]);
    assert_eq!(before.0, 0, "{}", before.1);

    // Only an admin erases.
    for role in ["billing", "support"] {
        let refused = server
            .call(
                Method::DELETE,
                &format!("/v1/customers/{id}/personal_data"),
                Some(&as_role(role)),
                None,
                &[],
            )
            .await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{role}");
    }
    let bad = server
        .call(
            Method::DELETE,
            &format!("/v1/customers/{id}/personal_data?reason=because"),
            Some(ADMIN_KEY),
            None,
            &[],
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", bad.body);
    // The erasure races more contact changes: whatever lands, nothing stays readable.
    let mut racing = tokio::task::JoinSet::new();
    for n in 8..12 {
        spawn_contact_change(&server, &mut racing, &id, n);
    }
    let erased = server
        .call(
            Method::DELETE,
            &format!("/v1/customers/{id}/personal_data?reason=requested_by_customer"),
            Some(ADMIN_KEY),
            None,
            &[],
        )
        .await;
    let raced = racing.join_all().await;
    assert_eq!(erased.status, StatusCode::OK, "{}", erased.body);
    assert_eq!(erased.body["key_destroyed"], true);
    for answer in raced {
        assert!(
            answer.status == StatusCode::OK
                || (answer.status == StatusCode::CONFLICT
                    && answer.body["code"] == "personal_data_erased"),
            "{} {}",
            answer.status,
            answer.body
        );
    }
    let again = server
        .call(
            Method::DELETE,
            &format!("/v1/customers/{id}/personal_data"),
            Some(ADMIN_KEY),
            None,
            &[],
        )
        .await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body["key_destroyed"], false);
    assert_eq!(again.body["erased_at"], erased.body["erased_at"]);

    let after = server.get(&format!("/v1/customers/{id}")).await;
    assert!(after.body.get("contact").is_none(), "{}", after.body);
    assert_eq!(after.body["erased_at"], erased.body["erased_at"]);
    let refused = server
        .post(
            &format!("/v1/customers/{id}"),
            json!({"contact": {"name": "Grace Again", "email": "again@example.com"}}),
        )
        .await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.body);
    assert_eq!(refused.body["code"], "personal_data_erased");
    let view = server
        .get(&format!(
            "/v1/customers/{id}/view?min_position={}",
            head(&server).await
        ))
        .await;
    assert_eq!(view.status, StatusCode::OK, "{}", view.body);
    assert!(view.body.get("contact").is_none());
    assert_eq!(view.body["erased_at"], erased.body["erased_at"]);
    let export = server.get(&format!("/v1/customers/{id}/export")).await;
    assert_eq!(export.status, StatusCode::OK, "{}", export.body);
    assert!(
        export.body["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "ContactDetailsEncrypted")
            .all(|e| e["data"]["details"].is_null()),
        "{}",
        export.body
    );
    // The create's stored answer named her: deleted by the erasure, so a
    // retry of it is no replay; it is refused as a key whose answer expired is.
    let replayed = create().await;
    assert!(replayed.headers.get("idempotent-replayed").is_none());
    assert_eq!(replayed.status, StatusCode::CONFLICT, "{}", replayed.body);
    assert!(replayed.body.get("contact").is_none(), "{}", replayed.body);

    // Nothing of her is left anywhere in the database, in any form.
    let dump = pg_dump(&server.location);
    for n in 0..12 {
        let email = format!("grace.{n}@example.com");
        assert!(!dump.contains(&email), "{email} survives in the database");
    }
    for secret in ["Grace Hopper", "grace.hopper@example.com", "555 0199"] {
        assert!(!dump.contains(secret), "{secret} survives in the database");
    }
    // The books and the chain are as they were.
    let after_verify = recur_cli(&["ledger", "verify", "--json", "--database", &server.location]);
    assert_eq!(after_verify.0, 0, "{}", after_verify.1);
}

/// A 429 of the rate limits: `Retry-After` whole seconds (at least 1) and a
/// problem with the code `rate_limited`.
fn assert_rate_limited(answer: &Answer) {
    assert_eq!(
        answer.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        answer.body
    );
    assert_eq!(answer.body["code"], "rate_limited", "{}", answer.body);
    assert_eq!(answer.body["status"], 429);
    assert_eq!(
        answer.headers["content-type"], "application/problem+json",
        "{:?}",
        answer.headers
    );
    let retry_after: u64 = answer.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1, "{retry_after}");
    assert!(answer.headers.contains_key("x-request-id"));
}

#[tokio::test]
async fn concurrent_requests_over_a_keys_limit_get_429_and_another_key_is_not_held_up() {
    // Ten at once, then one a minute: the test's 50 requests outrun it.
    let server = serve_with(
        Backend::Sqlite,
        None,
        &[
            "--rate-limit-per-key-per-s",
            "1",
            "--rate-limit-per-key-burst",
            "10",
            "--rate-limit-per-address-per-s",
            "0",
        ],
    )
    .await;
    let made = server
        .post("/v1/api_keys", json!({"role": "analyst"}))
        .await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.body);
    let analyst = made.body["key"].as_str().unwrap().to_owned();

    let answers = parallel_gets(&server, "/v1/plans", 50, |_| Some(ADMIN_KEY.to_owned())).await;
    let ok = answers
        .iter()
        .filter(|a| a.status == StatusCode::OK)
        .count();
    let refused: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.status != StatusCode::OK)
        .collect();
    // Nine tokens were left after the key was made; at 1/s a slow run earns a few more.
    assert!((9..=20).contains(&ok), "{ok} answered 200");
    assert_eq!(ok + refused.len(), 50);
    for answer in refused {
        assert_rate_limited(answer);
    }

    // The analyst's key has a bucket of its own.
    for _ in 0..10 {
        let own = server
            .call(Method::GET, "/v1/plans", Some(&analyst), None, &[])
            .await;
        assert_eq!(own.status, StatusCode::OK, "{}", own.body);
    }
    let over = server
        .call(Method::GET, "/v1/plans", Some(&analyst), None, &[])
        .await;
    assert_rate_limited(&over);
    // The probes are never limited.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let probe = server.call(Method::GET, path, None, None, &[]).await;
        assert_eq!(probe.status, StatusCode::OK, "{path}");
    }
    // The refusals are counted like any answer.
    let metrics = server.call(Method::GET, "/metrics", None, None, &[]).await;
    assert!(
        metrics
            .body
            .as_str()
            .unwrap()
            .contains(r#"route="/v1/plans",status="429"}"#),
        "{}",
        metrics.body
    );
}

/// `count` GETs of `path` sent at once, each from its own task, with the key
/// `key_of(n)` (none: no key): the answers.
async fn parallel_gets(
    server: &Server,
    path: &str,
    count: usize,
    key_of: impl Fn(usize) -> Option<String>,
) -> Vec<Answer> {
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..count {
        let mut request = server.client.get(format!("{}{path}", server.base));
        if let Some(key) = key_of(n) {
            request = request.bearer_auth(key);
        }
        tasks.spawn(async move { Answer::of(request.send().await.unwrap()).await });
    }
    tasks.join_all().await
}

#[tokio::test]
async fn the_address_limit_refuses_a_flood_of_bad_keys_and_spares_the_probes() {
    let server = serve_with(
        Backend::Sqlite,
        None,
        &[
            "--rate-limit-per-address-per-s",
            "1",
            "--rate-limit-per-address-burst",
            "5",
        ],
    )
    .await;
    let answers = parallel_gets(&server, "/v1/plans", 30, |n| {
        Some(format!("rk_nosuchkey_{n:064}"))
    })
    .await;
    let unauthenticated = answers
        .iter()
        .filter(|a| a.status == StatusCode::UNAUTHORIZED)
        .count();
    assert!(
        (5..=10).contains(&unauthenticated),
        "{unauthenticated} reached the key check"
    );
    for answer in answers
        .iter()
        .filter(|a| a.status != StatusCode::UNAUTHORIZED)
    {
        assert_rate_limited(answer);
    }
    // A good key from the same address is refused as well: the address is spent.
    assert_rate_limited(&server.get("/v1/plans").await);
    // Unknown routes too: the limit sits before routing.
    assert_rate_limited(&server.call(Method::GET, "/nowhere", None, None, &[]).await);
    for path in ["/healthz", "/readyz", "/metrics"] {
        let probe = server.call(Method::GET, path, None, None, &[]).await;
        assert_eq!(probe.status, StatusCode::OK, "{path}");
    }
}

#[tokio::test]
async fn a_rate_limited_write_appends_nothing_and_its_idempotency_key_stays_free() {
    let server = serve_with(
        Backend::Sqlite,
        None,
        &[
            "--rate-limit-per-key-per-s",
            "1",
            "--rate-limit-per-key-burst",
            "1",
        ],
    )
    .await;
    let server = &server;
    // The ledger position from the readiness probe, which no limit touches.
    let position = || async move {
        let ready = server.call(Method::GET, "/readyz", None, None, &[]).await;
        ready.body["ledger_position"].as_u64().unwrap()
    };
    let create = |key: &'static str| async move {
        server
            .call(
                Method::POST,
                "/v1/customers",
                Some(ADMIN_KEY),
                Some(json!({"segment": "standard"})),
                &[("idempotency-key", key)],
            )
            .await
    };
    let first = create("first").await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    let before = position().await;
    let refused = create("second").await;
    assert_rate_limited(&refused);
    assert_eq!(position().await, before, "a refused write appended events");
    // After the wait, the same Idempotency-Key runs the request (the 429 was
    // not kept as its answer).
    let wait: u64 = refused.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(wait)).await;
    let retried = create("second").await;
    assert_eq!(retried.status, StatusCode::CREATED, "{}", retried.body);
    assert!(!retried.headers.contains_key("idempotent-replayed"));
    assert!(position().await > before);
}

/// Requests per write route in [`arbitrary_bodies_to_every_write_route_never_get_a_5xx`]
/// (`RECUR_HTTP_FUZZ_CASES` asks for more, for a deeper run).
const HTTP_FUZZ_CASES: usize = 40;

/// Every write route of the OpenAPI document (POST, and DELETE, which takes a
/// body) gets arbitrary bodies — JSON shaped like the bodies, with the fields
/// they name, and bytes that are no JSON at all — against real resources: no
/// 5xx, and every refusal a problem with a code. The routes come from the
/// document, so a new route is covered when it is declared. The test clock's
/// advance is left out: a valid body runs the business forward by up to 136
/// years, and its body is covered by api/tests/parsers.rs. So is the
/// update-card page: it takes an HTML form, not JSON, behind a signed token
/// this test cannot make, and answers HTML (tests/update_card.rs).
#[tokio::test]
async fn arbitrary_bodies_to_every_write_route_never_get_a_5xx() {
    use proptest::strategy::{Strategy, ValueTree};
    let server = serve(Backend::Sqlite).await;
    let customer = server.customer_with_card().await;
    let (_, subscription, _, _) = server.community_subscription(&customer).await;
    let invoice = server
        .get(&format!("/v1/subscriptions/{subscription}"))
        .await
        .body["invoices"][0]
        .as_str()
        .unwrap()
        .to_owned();
    let tax_rate = server.get("/v1/tax_rates").await.body["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let key = server
        .post("/v1/api_keys", json!({"role": "analyst"}))
        .await;
    let key_id = key.body["id"].as_str().unwrap().to_owned();
    let document = server
        .call(Method::GET, "/openapi.json", None, None, &[])
        .await;
    // A phone task of the invoice (it has none: answered 404, never 5xx).
    let task = format!("{invoice}.1");
    let mut routes = Vec::new();
    for (path, item) in document.body["paths"].as_object().unwrap() {
        let writes = item.get("post").is_some() || item.get("delete").is_some();
        if !writes || path == "/v1/test_clock/advance" || path.starts_with("/update-card/") {
            continue;
        }
        let id = match path.split('/').nth(2) {
            Some("customers") => customer.as_str(),
            Some("subscriptions") => subscription.as_str(),
            Some("invoices") => invoice.as_str(),
            Some("plans") => "community_access",
            Some("tax_rates") => tax_rate.as_str(),
            Some("api_keys") => key_id.as_str(),
            Some("dunning") => task.as_str(),
            _ => "",
        };
        let path = path.replace("{id}", id).replace("{task_id}", id);
        assert!(!path.contains('{'), "{path}: which resource?");
        for (method, name) in [(Method::POST, "post"), (Method::DELETE, "delete")] {
            if item.get(name).is_some() {
                routes.push((method, path.clone()));
            }
        }
    }
    assert!(routes.len() >= 25, "{routes:?}");

    // Generated up front, from a fixed seed: the same bodies on every run.
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = proptest::prop_oneof![
        6 => json::json_object().prop_map(|value| serde_json::to_vec(&value).unwrap()),
        2 => json::json_value().prop_map(|value| serde_json::to_vec(&value).unwrap()),
        1 => proptest::collection::vec(proptest::arbitrary::any::<u8>(), 0..64),
    ];
    let cases = std::env::var("RECUR_HTTP_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(HTTP_FUZZ_CASES);
    let bodies: Vec<Vec<u8>> = (0..cases)
        .map(|_| strategy.new_tree(&mut runner).unwrap().current())
        .collect();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for (method, path) in &routes {
        for body in &bodies {
            let response = server
                .client
                .request(method.clone(), format!("{}{path}", server.base))
                .bearer_auth(ADMIN_KEY)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .unwrap();
            let status = response.status();
            *statuses.entry(status.as_u16()).or_default() += 1;
            let text = response.text().await.unwrap();
            let shown = String::from_utf8_lossy(body);
            assert!(
                !status.is_server_error(),
                "{method} {path} answered {status} to {shown}: {text}"
            );
            if status.is_client_error() {
                let problem: Value = serde_json::from_str(&text).unwrap();
                assert!(
                    problem["code"]
                        .as_str()
                        .is_some_and(|code| !code.is_empty()),
                    "{method} {path}: {text}"
                );
            }
        }
    }
    eprintln!("answers by status: {statuses:?}");
    assert_eq!(statuses.values().sum::<usize>(), routes.len() * cases);
}

/// The signing secret the webhook tests' servers accept, and the one before it
/// (a rotation in progress: both are configured).
const WEBHOOK_SECRET: &str = "whsec_test_current_0123456789";
const WEBHOOK_SECRET_OLD: &str = "whsec_test_previous_9876543210";

/// A Stripe event of `kind` about Stripe's own published example `object`
/// (tests/fixtures/stripe/`version`), with the envelope of their example event.
fn stripe_event(version: &str, kind: &str, object: &str, id: &str) -> Value {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/stripe");
    let read = |name: &str| -> Value {
        let text = std::fs::read_to_string(format!("{dir}/{version}/{name}.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    };
    let mut event = read("event");
    let mut data = read(object);
    if object == "customer" {
        // Personal data, as a real customer.updated carries it.
        data["email"] = json!("jenny.rosen@example.com");
        data["name"] = json!("Jenny Rosen");
    }
    event["id"] = json!(id);
    event["type"] = json!(kind);
    event["data"]["object"] = data;
    event["created"] = json!(1_800_000_000);
    event
}

/// Posts `body` to the webhook with `signature` (None: no header).
async fn deliver(server: &Server, body: &[u8], signature: Option<&str>) -> Answer {
    let mut request = server
        .client
        .post(format!("{}/webhooks/stripe", server.base))
        .header("content-type", "application/json")
        .body(body.to_vec());
    if let Some(signature) = signature {
        request = request.header("stripe-signature", signature);
    }
    Answer::of(request.send().await.unwrap()).await
}

fn now_s() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

fn signed(body: &[u8], secret: &str) -> String {
    recur_api::stripe_signature::sign(body, secret, now_s())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stripe_webhooks_are_verified_kept_once_encrypted_and_found_by_their_id() {
    let secrets = format!("{WEBHOOK_SECRET_OLD},{WEBHOOK_SECRET}");
    let server = serve_with(
        Backend::Postgres,
        None,
        &["--stripe-webhook-secrets", &secrets],
    )
    .await;
    // Stripe's example objects of both API versions, each as the event a
    // webhook would carry, are kept — known or not to the billing domain.
    let kinds = [
        ("customer.updated", "customer"),
        ("invoice.payment_failed", "invoice"),
        ("charge.refunded", "charge"),
        ("charge.dispute.created", "dispute"),
        ("payment_intent.succeeded", "payment_intent"),
        ("payment_method.automatically_updated", "payment_method"),
        ("some.future_type", "subscription"),
    ];
    let mut kept = Vec::new();
    for version in ["current", "legacy_2024_04"] {
        for (n, (kind, object)) in kinds.iter().enumerate() {
            let id = format!("evt_test_{version}_{n}").replace("legacy_2024_04", "legacy");
            let body = serde_json::to_vec(&stripe_event(version, kind, object, &id)).unwrap();
            let answer = deliver(&server, &body, Some(&signed(&body, WEBHOOK_SECRET))).await;
            assert_eq!(answer.status, StatusCode::OK, "{kind}: {}", answer.body);
            assert_eq!(answer.body["duplicate"], false, "{}", answer.body);
            kept.push((id, body));
        }
    }
    // Signed with the previous secret: a rotation in progress is accepted.
    let (id, body) = &kept[0];
    let again = deliver(&server, body, Some(&signed(body, WEBHOOK_SECRET_OLD))).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    assert_eq!(
        again.body["duplicate"], true,
        "a redelivery is not kept twice"
    );

    // 16 concurrent deliveries of one new event: kept once.
    let body = serde_json::to_vec(&stripe_event(
        "current",
        "invoice.paid",
        "invoice",
        "evt_test_burst",
    ))
    .unwrap();
    let signature = signed(&body, WEBHOOK_SECRET);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let request = server
            .client
            .post(format!("{}/webhooks/stripe", server.base))
            .header("stripe-signature", signature.clone())
            .body(body.clone());
        tasks.spawn(async move { Answer::of(request.send().await.unwrap()).await });
    }
    let answers = tasks.join_all().await;
    assert!(answers.iter().all(|a| a.status == StatusCode::OK));
    assert_eq!(
        answers
            .iter()
            .filter(|a| a.body["duplicate"] == false)
            .count(),
        1,
        "exactly one delivery keeps it"
    );

    // Found by its Stripe id, once; its content encrypted.
    let found = server
        .get(&format!("/v1/events?external_id={id}&limit=100"))
        .await;
    let found_events = found.body["data"].as_array().unwrap();
    assert_eq!(found_events.len(), 1, "{}", found.body);
    assert_eq!(found_events[0]["type"], "StripeEventReceived");
    assert_eq!(found_events[0]["source"], "webhook");
    assert_eq!(found_events[0]["data"]["stripe_type"], "customer.updated");
    assert!(found_events[0]["data"]["encrypted"]["ciphertext"].is_string());
    let burst = server.get("/v1/events?external_id=evt_test_burst").await;
    assert_eq!(burst.body["data"].as_array().unwrap().len(), 1);

    // Refused with a code, and nothing stored: bad, missing, stale or foreign
    // signatures; a body that is not a Stripe event; one over 180 KiB.
    let before = head(&server).await;
    let fresh = serde_json::to_vec(&stripe_event(
        "current",
        "invoice.paid",
        "invoice",
        "evt_test_refused",
    ))
    .unwrap();
    let stale = recur_api::stripe_signature::sign(&fresh, WEBHOOK_SECRET, now_s() - 301);
    let not_json = b"{not json".to_vec();
    let not_event =
        br#"{"id":"evt_x","object":"charge","type":"x","created":1,"data":{"object":{}}}"#.to_vec();
    for (body, signature, code) in [
        (fresh.clone(), None, "signature_missing"),
        (
            fresh.clone(),
            Some("t=1,v1=00".to_owned()),
            "signature_mismatch",
        ),
        (
            fresh.clone(),
            Some(format!("t=1,v1={}", "00".repeat(32))),
            "signature_stale",
        ),
        (
            fresh.clone(),
            Some("nonsense".to_owned()),
            "signature_malformed",
        ),
        (
            fresh.clone(),
            Some(signed(&fresh, "whsec_someone_else")),
            "signature_mismatch",
        ),
        (fresh.clone(), Some(stale), "signature_stale"),
        (
            not_json.clone(),
            Some(signed(&not_json, WEBHOOK_SECRET)),
            "malformed_event",
        ),
        (
            not_event.clone(),
            Some(signed(&not_event, WEBHOOK_SECRET)),
            "malformed_event",
        ),
    ] {
        let refused = deliver(&server, &body, signature.as_deref()).await;
        assert_eq!(
            refused.status,
            StatusCode::BAD_REQUEST,
            "{code}: {}",
            refused.body
        );
        assert_eq!(refused.body["code"], code, "{}", refused.body);
    }
    for size in [180 * 1024 + 1, 1024 * 1024 + 1] {
        let huge = vec![b' '; size];
        let too_large = deliver(&server, &huge, Some(&signed(&huge, WEBHOOK_SECRET))).await;
        assert_eq!(
            too_large.status,
            StatusCode::PAYLOAD_TOO_LARGE,
            "{}",
            too_large.body
        );
        assert_eq!(too_large.body["code"], "body_too_large");
    }
    // A header that cannot be genuine is refused before the body is read.
    let flood = format!("t={},{}", now_s(), ",v1=00".repeat(600));
    let refused = deliver(&server, &fresh, Some(&flood)).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{}", refused.body);
    let v1 = signed(&fresh, WEBHOOK_SECRET);
    let v1 = v1.split_once(",v1=").unwrap().1;
    let flood = format!("t={}{}", now_s(), format!(",v1={v1}").repeat(9));
    let refused = deliver(&server, &fresh, Some(&flood)).await;
    assert_eq!(
        refused.body["code"], "signature_malformed",
        "{}",
        refused.body
    );
    assert_eq!(
        head(&server).await,
        before,
        "a refused delivery wrote something"
    );
    // The largest delivery kept: 180 KiB, what one encrypted ledger event holds.
    let mut big = stripe_event("current", "invoice.paid", "invoice", "evt_test_big");
    let room = 180 * 1024 - serde_json::to_vec(&big).unwrap().len() - 32;
    big["data"]["object"]["description"] = json!("x".repeat(room));
    let body = serde_json::to_vec(&big).unwrap();
    assert!(body.len() <= 180 * 1024 && body.len() > 179 * 1024);
    let kept_big = deliver(&server, &body, Some(&signed(&body, WEBHOOK_SECRET))).await;
    assert_eq!(kept_big.status, StatusCode::OK, "{}", kept_big.body);
    assert_eq!(kept_big.body["duplicate"], false);

    // The customer's email and name from customer.updated are nowhere in clear.
    let dump = pg_dump(&server.location);
    assert!(
        !dump.contains("jenny.rosen@example.com") && !dump.contains("Jenny Rosen"),
        "a webhook's personal data is in the database in clear"
    );

    // Without a signing secret configured, there is no endpoint.
    let plain = serve(Backend::Sqlite).await;
    let absent = deliver(&plain, &fresh, Some(&signed(&fresh, WEBHOOK_SECRET))).await;
    assert_eq!(absent.status, StatusCode::NOT_FOUND, "{}", absent.body);
}

/// Through HTTP: a declined first invoice, then Stripe's signed word that the
/// attempt's PaymentIntent went through (the customer authenticated it): the
/// webhook answers at once, and the translator, woken after it, pays the
/// invoice in the background.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_signed_stripe_payment_webhook_pays_the_recur_invoice_in_the_background() {
    let server = serve_with(
        Backend::Postgres,
        None,
        &["--stripe-webhook-secrets", WEBHOOK_SECRET],
    )
    .await;
    let created = server.post("/v1/customers", json!({})).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let customer = created.body["id"].as_str().unwrap().to_owned();
    let poor = json!({"token": "pm_card_chargeDeclinedInsufficientFunds", "brand": "visa",
                      "last4": "9995", "exp_month": 12, "exp_year": 2040});
    let attached = server
        .post(&format!("/v1/customers/{customer}/payment_method"), poor)
        .await;
    assert_eq!(attached.status, StatusCode::OK, "{}", attached.body);
    let (subscribed, ..) = server.community_subscription(&customer).await;
    assert_eq!(
        subscribed.status,
        StatusCode::CREATED,
        "{}",
        subscribed.body
    );
    let invoice = subscribed.body["invoices"][0].as_str().unwrap().to_owned();
    let open = server.get(&format!("/v1/invoices/{invoice}")).await;
    assert_eq!(open.body["status"], "open", "{}", open.body);
    // USD amounts are answered with their two decimals: "97.00" is 9700 cents.
    let due = open.body["amount_remaining"]["amount"].as_str().unwrap();
    let due_minor: i64 = due.replace('.', "").parse().unwrap();

    let mut event = stripe_event(
        "current",
        "payment_intent.succeeded",
        "payment_intent",
        "evt_http_paid",
    );
    let intent = &mut event["data"]["object"];
    intent["metadata"] = json!({
        "recur_invoice_id": invoice, "recur_customer_id": customer, "recur_attempt": "1",
    });
    intent["status"] = json!("succeeded");
    intent["amount"] = json!(due_minor);
    intent["amount_received"] = json!(due_minor);
    intent["currency"] = json!("usd");
    intent["latest_charge"] = json!("ch_http_1");
    let body = serde_json::to_vec(&event).unwrap();
    let answer = deliver(&server, &body, Some(&signed(&body, WEBHOOK_SECRET))).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body["duplicate"], false);

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let now = server.get(&format!("/v1/invoices/{invoice}")).await;
        if now.body["status"] == "paid" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the invoice was not paid by the translator: {}",
            now.body
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // The payment is the translator's, correlated with the Stripe event.
    let history = server
        .get(&format!(
            "/v1/events?resource=invoice-{invoice}&type=PaymentSucceeded"
        ))
        .await;
    let paid = history.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "PaymentSucceeded")
        .cloned()
        .unwrap_or_else(|| panic!("{}", history.body));
    assert_eq!(paid["data"]["charge_id"], "ch_http_1", "{paid}");
    assert_eq!(paid["source"], "webhook", "{paid}");
    assert_eq!(paid["actor"], "stripe_translator", "{paid}");

    // The CLI over the stored webhooks, from the first: it says what each did,
    // and adds nothing to what the server's translator did.
    let output = Command::new(env!("CARGO_BIN_EXE_recur"))
        .args([
            "stripe",
            "translate",
            "--from-start",
            "--database",
            &server.location,
        ])
        .env("RECUR_MASTER_KEY", MASTER_KEY)
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("evt_http_paid  payment_intent.succeeded  no effect (already_paid)"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "translated 1 Stripe event(s): 0 applied, 1 without effect; 0 ledger event(s) appended"
        ),
        "{stdout}"
    );
}

/// A customer of `segment` (no tax location, so an invoice is the plan's
/// price) with the card `token`.
async fn dunning_customer(server: &Server, segment: &str, token: &str) -> String {
    let created = server
        .post("/v1/customers", json!({"segment": segment}))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let id = created.body["id"].as_str().unwrap().to_owned();
    let card = json!({"token": token, "brand": "visa", "last4": "0341", "exp_month": 12, "exp_year": 2040});
    let attached = server
        .post(&format!("/v1/customers/{id}/payment_method"), card)
        .await;
    assert_eq!(attached.status, StatusCode::OK, "{}", attached.body);
    id
}

/// Over HTTP: one declined invoice recovered, one high-value campaign
/// exhausted (left past due), one paid at once; the phone task of the
/// high-value one claimed by two people at the same time (one wins), then
/// completed; the dunning metrics match the numbers worked out by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dunning_metrics_and_phone_tasks_over_http_postgres() {
    dunning_metrics_and_phone_tasks_over_http(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dunning_metrics_and_phone_tasks_over_http_sqlite() {
    dunning_metrics_and_phone_tasks_over_http(Backend::Sqlite).await;
}

async fn dunning_metrics_and_phone_tasks_over_http(backend: Backend) {
    let server = serve_from(backend, Some("2027-01-01T00:00:00Z")).await;
    let mut keys = std::collections::HashMap::new();
    for role in ["billing", "support", "analyst"] {
        let made = server.post("/v1/api_keys", json!({"role": role})).await;
        assert_eq!(made.status, StatusCode::CREATED, "{}", made.body);
        keys.insert(role, made.body["key"].as_str().unwrap().to_owned());
    }
    // Paid at once; declined for want of funds (standard customer, first
    // invoice: the trial policy, retry after 2 h); declined (high value).
    let paying = dunning_customer(&server, "standard", "pm_card_visa").await;
    let poor = dunning_customer(
        &server,
        "standard",
        "pm_card_chargeDeclinedInsufficientFunds",
    )
    .await;
    let valued = dunning_customer(&server, "high_value", "pm_card_chargeCustomerFail").await;
    let mut first = std::collections::HashMap::new();
    for customer in [&paying, &poor, &valued] {
        let (created, ..) = server.community_subscription(customer).await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
        first.insert(
            customer.clone(),
            created.body["invoices"][0].as_str().unwrap().to_owned(),
        );
    }
    let lost_invoice = first[&valued].clone();

    // The high-value campaign's first step asked for a call.
    let open = server.get("/v1/dunning/tasks?status=open").await;
    assert_eq!(open.status, StatusCode::OK, "{}", open.body);
    let tasks = open.body["data"].as_array().unwrap();
    assert_eq!(tasks.len(), 1, "{}", open.body);
    let task_id = format!("{lost_invoice}.1");
    assert_eq!(tasks[0]["task_id"], task_id.as_str());
    assert_eq!(tasks[0]["invoice"], lost_invoice.as_str());
    assert_eq!(tasks[0]["customer"], valued.as_str());
    assert_eq!(tasks[0]["amount_due"], money("97.00"));
    assert_eq!(tasks[0]["step"], 1);
    assert_eq!(tasks[0]["status"], "open");
    assert_eq!(tasks[0]["created_at"], "2027-01-01T00:00:00Z");
    assert_eq!(tasks[0]["claimed_by"], Value::Null);
    // No personal data: ids and amounts only.
    assert!(tasks[0].get("contact").is_none() && tasks[0].get("email").is_none());

    // Two people claim it at the same moment: exactly one wins.
    let claim = |key: String, by: &'static str| {
        let path = format!("/v1/dunning/tasks/{task_id}/claim");
        let server = &server;
        async move {
            server
                .call(
                    Method::POST,
                    &path,
                    Some(&key),
                    Some(json!({"by": by})),
                    &[],
                )
                .await
        }
    };
    let (sam, kim) = tokio::join!(
        claim(keys["support"].clone(), "sam"),
        claim(keys["billing"].clone(), "kim")
    );
    let mut statuses = [sam.status, kim.status];
    statuses.sort();
    assert_eq!(
        statuses,
        [StatusCode::OK, StatusCode::CONFLICT],
        "{} {}",
        sam.body,
        kim.body
    );
    let (winner, loser, loser_key) = if sam.status == StatusCode::OK {
        (sam, kim, keys["billing"].clone())
    } else {
        (kim, sam, keys["support"].clone())
    };
    assert_eq!(loser.body["code"], "invalid_transition", "{}", loser.body);
    assert_eq!(winner.body["status"], "claimed", "{}", winner.body);
    let holder = winner.body["claimed_by"].as_str().unwrap().to_owned();
    // The loser tries again: still taken.
    let again = claim(loser_key, if holder == "sam" { "kim" } else { "sam" }).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.body);
    let claimed = server.get("/v1/dunning/tasks?status=claimed").await;
    assert_eq!(
        claimed.body["data"][0]["claimed_by"],
        holder.as_str(),
        "{}",
        claimed.body
    );
    assert_eq!(
        server.get("/v1/dunning/tasks?status=open").await.body["data"],
        json!([])
    );

    // Refusals: unknown, malformed, another's role, a bad outcome.
    let unknown = format!("/v1/dunning/tasks/{lost_invoice}.7/claim");
    let answer = server.post(&unknown, json!({"by": "sam"})).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND, "{}", answer.body);
    assert_eq!(answer.body["code"], "dunning_task_not_found");
    let nobody = format!("/v1/dunning/tasks/{}.1/claim", first[&paying]);
    let answer = server.post(&nobody, json!({"by": "sam"})).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND, "{}", answer.body);
    assert_eq!(answer.body["code"], "dunning_task_not_found");
    for malformed in ["nope", "nope.1", &format!("{lost_invoice}.x")] {
        let answer = server
            .post(
                &format!("/v1/dunning/tasks/{malformed}/claim"),
                json!({"by": "sam"}),
            )
            .await;
        assert_eq!(
            answer.status,
            StatusCode::NOT_FOUND,
            "{malformed}: {}",
            answer.body
        );
        assert_eq!(answer.body["code"], "dunning_task_not_found");
    }
    let complete = format!("/v1/dunning/tasks/{task_id}/complete");
    let answer = server
        .call(
            Method::POST,
            &complete,
            Some(&keys["analyst"]),
            Some(json!({"outcome": "will_pay"})),
            &[],
        )
        .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN, "{}", answer.body);
    let answer = server.post(&complete, json!({"outcome": "maybe"})).await;
    assert_eq!(
        answer.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        answer.body
    );
    let answer = server
        .call(
            Method::GET,
            "/v1/dunning/tasks",
            Some(&keys["analyst"]),
            None,
            &[],
        )
        .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN, "{}", answer.body);
    let answer = server.get("/v1/dunning/tasks?status=lost").await;
    assert_eq!(
        answer.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        answer.body
    );

    let done = server
        .call(
            Method::POST,
            &complete,
            Some(&keys["support"]),
            Some(json!({"outcome": "will_pay"})),
            &[],
        )
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    assert_eq!(done.body["status"], "completed");
    assert_eq!(done.body["outcome"], "will_pay");
    let completed = server.get("/v1/dunning/tasks?status=completed").await;
    assert_eq!(
        completed.body["data"][0]["task_id"],
        task_id.as_str(),
        "{}",
        completed.body
    );
    assert_eq!(completed.body["data"][0]["outcome"], "will_pay");

    // The poor customer's new card pays at the trial policy's retry, 2 h in.
    let card = json!({"token": "pm_card_visa", "brand": "visa", "last4": "4242", "exp_month": 12, "exp_year": 2040});
    let attached = server
        .post(&format!("/v1/customers/{poor}/payment_method"), card)
        .await;
    assert_eq!(attached.status, StatusCode::OK, "{}", attached.body);
    let moved = server
        .post(
            "/v1/test_clock/advance",
            json!({"to": "2027-01-01T02:00:00Z"}),
        )
        .await;
    assert_eq!(moved.status, StatusCode::OK, "{}", moved.body);
    let paid = server.get(&format!("/v1/invoices/{}", first[&poor])).await;
    assert_eq!(paid.body["status"], "paid", "{}", paid.body);
    // The high-value schedule runs out 44 d 14 h 30 min after the first
    // failure (2027-02-14 14:30): left past due. Six hours at a time, so
    // every retry runs when it is due.
    let mut at = time::macros::datetime!(2027-01-01 06:00 UTC);
    while at <= time::macros::datetime!(2027-02-20 00:00 UTC) {
        let to = at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        let moved = server
            .post("/v1/test_clock/advance", json!({"to": to}))
            .await;
        assert_eq!(moved.status, StatusCode::OK, "{}", moved.body);
        at += time::Duration::hours(6);
    }
    let lost = server.get(&format!("/v1/invoices/{lost_invoice}")).await;
    assert_eq!(lost.body["status"], "open", "{}", lost.body);
    assert_eq!(
        lost.body["attempts"].as_array().map(Vec::len),
        Some(9),
        "{}",
        lost.body
    );

    // January: three invoices attempted, two declined; two campaigns, one
    // recovered after its first step in 2 h, one exhausted after nine steps.
    // Read once the projections hold every write.
    let ledger = recur_ledger::Ledger::open(
        recur_ledger::LedgerConfig::new(server.location.clone()),
        std::sync::Arc::new(recur_ledger::SystemClock),
    )
    .await
    .unwrap();
    let head = ledger.last_position().await.unwrap().0;
    let jan = server
        .call(
            Method::GET,
            &format!("/v1/metrics/dunning?from=2027-01-01&to=2027-01-31&min_position={head}"),
            Some(&keys["analyst"]),
            None,
            &[],
        )
        .await;
    assert_eq!(jan.status, StatusCode::OK, "{}", jan.body);
    let m = &jan.body;
    assert_eq!(m["object"], "dunning_metrics");
    assert_eq!(m["invoices_attempted"], 3, "{m}");
    assert_eq!(m["invoices_failed"], 2, "{m}");
    assert_eq!(m["failure_rate"], "0.6667", "{m}");
    assert_eq!(m["campaigns"], 2, "{m}");
    assert_eq!(m["recovered"], 1, "{m}");
    assert_eq!(m["exhausted"], 1, "{m}");
    assert_eq!(m["running"], 0, "{m}");
    assert_eq!(m["recovery_rate"], "0.5000", "{m}");
    let steps = m["by_step"].as_array().unwrap();
    assert_eq!(steps.len(), 9, "{m}");
    assert_eq!(
        steps[0],
        json!({"key": "1", "campaigns": 2, "recovered": 1, "recovery_rate": "0.5000"})
    );
    for (n, step) in steps.iter().enumerate().skip(1) {
        assert_eq!(
            step,
            &json!({"key": (n + 1).to_string(), "campaigns": 1, "recovered": 0, "recovery_rate": "0.0000"})
        );
    }
    assert_eq!(
        m["by_decline_category"],
        json!([{"key": "soft", "campaigns": 2, "recovered": 1, "recovery_rate": "0.5000"}]),
        "{m}"
    );
    // `recur serve` here has no messenger: nothing was sent, so no channel.
    assert_eq!(m["by_channel"], json!([]), "{m}");
    assert_eq!(m["messages"], json!([]), "{m}");
    assert_eq!(
        m["time_to_recover"],
        json!({"campaigns": 1, "median_hours": "2.00", "p90_hours": "2.00"}),
        "{m}"
    );
    assert_eq!(
        m["revenue"],
        json!([{"month": "2027-01", "recovered": money("97.00"), "lost": money("0.00")}]),
        "{m}"
    );
    // By month of the end: recovered in January, lost in February.
    let months = server
        .get(&format!(
            "/v1/metrics/dunning?from=2027-01-01&to=2027-02-28&min_position={head}"
        ))
        .await;
    assert_eq!(months.status, StatusCode::OK, "{}", months.body);
    assert_eq!(
        months.body["revenue"],
        json!([
            {"month": "2027-01", "recovered": money("97.00"), "lost": money("0.00")},
            {"month": "2027-02", "recovered": money("0.00"), "lost": money("97.00")}
        ]),
        "{}",
        months.body
    );
    // Open now: what the whole history leaves running, and every task not completed.
    assert_eq!(
        months.body["campaigns_open"], months.body["running"],
        "{}",
        months.body
    );
    let open = server.get("/v1/dunning/tasks?status=open").await.body["data"]
        .as_array()
        .unwrap()
        .len();
    let claimed = server.get("/v1/dunning/tasks?status=claimed").await.body["data"]
        .as_array()
        .unwrap()
        .len();
    assert!(open >= 1, "the next step asked for another call");
    assert_eq!(months.body["tasks_open"], open + claimed, "{}", months.body);

    // The range is checked like every metric's.
    let answer = server
        .get("/v1/metrics/dunning?from=2027-02-01&to=2027-01-01")
        .await;
    assert_eq!(
        answer.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        answer.body
    );
    assert_eq!(answer.body["code"], "invalid_query");
    let answer = server.get("/v1/metrics/dunning?from=yesterday").await;
    assert_eq!(answer.body["code"], "invalid_query", "{}", answer.body);
}
