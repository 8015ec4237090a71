//! The update-card page end to end: `recur serve` on a fresh Postgres
//! database, a customer whose card declines and an open invoice, a link signed
//! with the server's key, then the page over HTTP and in headless Chromium.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../ledger/tests/common/mod.rs"]
mod common;
#[path = "support/mail.rs"]
mod mail;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use recur_commands::update_card_link::{self, Claims, LinkKey};
use recur_commands::{CustomerId, InvoiceId};
use reqwest::StatusCode;
use serde_json::{Value, json};
use time::OffsetDateTime;

const ADMIN_KEY: &str = "test-admin-key-0123456789";
const MASTER_KEY: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00112233445566778899aabbccddeeff0";
/// The links' key every server here is given.
const LINK_KEY: &str = "4c696e6b206b6579206f662074686520757064617465206361726420746573742e";
const BUSINESS: &str = "Coaching <&> Co";

struct Server {
    child: Child,
    base: String,
    client: reqwest::Client,
    store: common::TestLedger,
    /// The server's stderr, for what it logged.
    log: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// `recur serve` on a fresh Postgres ledger, on a test clock, logging at info.
async fn serve() -> Server {
    serve_with(&[]).await
}

/// [`serve`] with more `recur serve` options.
async fn serve_with(extra: &[&str]) -> Server {
    serve_with_env(extra, &[]).await
}

/// [`serve_with`] and more environment.
async fn serve_with_env(extra: &[&str], env: &[(&str, &str)]) -> Server {
    let store = common::postgres().await;
    let log = std::env::temp_dir().join(format!(
        "recur-update-card-{}.log",
        uuid::Uuid::new_v4().simple()
    ));
    let mut child = Command::new(env!("CARGO_BIN_EXE_recur"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--test-clock",
            "--database",
            &store.location(),
        ])
        .args(extra)
        .env("RECUR_ADMIN_KEY", ADMIN_KEY)
        .env("RECUR_MASTER_KEY", MASTER_KEY)
        .env("RECUR_LINK_KEY", LINK_KEY)
        .env("RECUR_BUSINESS_NAME", BUSINESS)
        .env("RUST_LOG", "info")
        .env_remove("RECUR_PUBLIC_URL")
        .env_remove("DATABASE_URL")
        .env_remove("RECUR_RATE_LIMIT_PER_KEY_PER_S")
        .env_remove("RECUR_RATE_LIMIT_PER_KEY_BURST")
        .env_remove("RECUR_RATE_LIMIT_PER_ADDRESS_PER_S")
        .env_remove("RECUR_RATE_LIMIT_PER_ADDRESS_BURST")
        .env_remove("RECUR_SMTP_URL")
        .env_remove("RECUR_SMS_ACCOUNT_SID")
        .env_remove("RECUR_SMS_URL")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
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
    Server {
        child,
        base: format!("http://{address}"),
        client: reqwest::Client::new(),
        store,
        log,
    }
}

/// An answer read whole.
struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|_| panic!("not JSON: {}", self.text))
    }
}

async fn answer(response: reqwest::Response) -> Answer {
    Answer {
        status: response.status(),
        headers: response.headers().clone(),
        text: response.text().await.unwrap(),
    }
}

impl Server {
    async fn api(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Answer {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(ADMIN_KEY);
        if let Some(body) = body {
            request = request.json(&body);
        }
        answer(request.send().await.unwrap()).await
    }

    async fn page(&self, url: &str) -> Answer {
        answer(self.client.get(url).send().await.unwrap()).await
    }

    /// Posts the page's form (no API key).
    async fn submit(&self, url: &str, card_token: &str) -> Answer {
        let response = self
            .client
            .post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("payment_method={card_token}"))
            .send()
            .await
            .unwrap();
        answer(response).await
    }

    async fn invoice(&self, id: &str) -> Value {
        let got = self
            .api(reqwest::Method::GET, &format!("/v1/invoices/{id}"), None)
            .await;
        assert_eq!(got.status, StatusCode::OK, "{}", got.text);
        got.json()
    }

    /// The ledger's last position: what "nothing written" is checked by.
    async fn ledger_head(&self) -> u64 {
        self.store.last_position().await.unwrap().0
    }

    /// A customer whose card attaches but is declined when charged, with a
    /// community subscription whose first invoice is open after the decline:
    /// (customer, invoice).
    async fn customer_with_a_declined_invoice(&self) -> (String, String) {
        let created = self
            .api(reqwest::Method::POST, "/v1/customers", Some(json!({})))
            .await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
        let customer = created.json()["id"].as_str().unwrap().to_owned();
        let invoice = self.declined_invoice_of(&customer).await;
        (customer, invoice)
    }

    /// A card that attaches but is declined when charged put on `customer`'s
    /// file, and a community subscription whose first invoice is open after
    /// the decline: the invoice.
    async fn declined_invoice_of(&self, customer: &str) -> String {
        self.declined_invoice_with(customer, "pm_card_chargeCustomerFail", "0341")
            .await
    }

    /// [`Server::declined_invoice_of`] with the test card `token` (last4 `last4`).
    async fn declined_invoice_with(&self, customer: &str, token: &str, last4: &str) -> String {
        let failing = json!({"token": token, "brand": "visa",
                             "last4": last4, "exp_month": 12, "exp_year": 2040});
        let attached = self
            .api(
                reqwest::Method::POST,
                &format!("/v1/customers/{customer}/payment_method"),
                Some(failing),
            )
            .await;
        assert_eq!(attached.status, StatusCode::OK, "{}", attached.text);
        let subscribed = self
            .api(
                reqwest::Method::POST,
                "/v1/subscriptions",
                Some(json!({"customer": customer, "plan": "community_access", "trial_days": 0})),
            )
            .await;
        assert_eq!(
            subscribed.status,
            StatusCode::CREATED,
            "{}",
            subscribed.text
        );
        let invoice = subscribed.json()["invoices"][0]
            .as_str()
            .unwrap()
            .to_owned();
        let state = self.invoice(&invoice).await;
        assert_eq!(state["status"], "open", "{state}");
        assert_eq!(state["attempts"].as_array().unwrap().len(), 1, "{state}");
        invoice
    }

    /// A link for `customer` (and `invoice`) expiring at `expires_at`, signed
    /// with the server's key.
    fn link(&self, customer: &str, invoice: Option<&str>, expires_at: OffsetDateTime) -> String {
        let claims = Claims::expiring(
            CustomerId::parse(customer).unwrap(),
            invoice.map(|i| InvoiceId::parse(i).unwrap()),
            expires_at,
        );
        let key = LinkKey::parse(LINK_KEY).unwrap();
        update_card_link::url(&self.base, &update_card_link::sign(&key, &claims))
    }

    fn logged(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }
}

fn week_from_now() -> OffsetDateTime {
    OffsetDateTime::now_utc() + update_card_link::LINK_LIFETIME_DEFAULT
}

fn token_of(link: &str) -> &str {
    link.rsplit('/').next().unwrap()
}

/// The headers every answer of the page carries.
fn assert_locked_down(answer: &Answer) {
    let header = |name: &str| {
        answer
            .headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name}: {:?}", answer.headers))
            .to_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        header("content-security-policy"),
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'"
    );
    assert_eq!(header("x-frame-options"), "DENY");
    assert_eq!(header("cache-control"), "no-store");
    assert_eq!(header("referrer-policy"), "no-referrer");
    assert!(header("content-type").starts_with("text/html"));
}

#[tokio::test]
async fn a_declined_customer_puts_a_new_card_on_file_through_the_link_and_the_invoice_is_paid_once()
{
    let server = serve().await;
    let (customer, invoice) = server.customer_with_a_declined_invoice().await;
    let link = server.link(&customer, Some(&invoice), week_from_now());
    let token = token_of(&link).to_owned();

    // The page: the business (escaped), the amount due, the status, the card
    // on file, and the form posting back to the link; no API key asked for.
    let page = server.page(&link).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    assert_locked_down(&page);
    assert!(
        page.text.contains("Coaching &lt;&amp;&gt; Co"),
        "{}",
        page.text
    );
    assert!(!page.text.contains(BUSINESS), "unescaped: {}", page.text);
    assert!(page.text.contains("97.00 USD"), "{}", page.text);
    assert!(page.text.contains("open: payment due"), "{}", page.text);
    assert!(page.text.contains("visa ending in 0341"), "{}", page.text);
    assert!(
        page.text.contains(&format!(
            "<form method=\"post\" action=\"/update-card/{token}\">"
        )),
        "{}",
        page.text
    );
    assert_eq!(
        page.text.matches(&token).count(),
        1,
        "the token only in the form's action"
    );

    // A card declined when attached: refused, nothing written.
    let head = server.ledger_head().await;
    let refused = server.submit(&link, "pm_card_chargeDeclined").await;
    assert_eq!(
        refused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        refused.text
    );
    assert!(refused.text.contains("Card declined"), "{}", refused.text);
    // Something that is not a token (a card number): refused, nothing written.
    let number = server.submit(&link, "4242424242424242").await;
    assert_eq!(
        number.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        number.text
    );
    assert!(number.text.contains("card number"), "{}", number.text);
    assert_eq!(server.ledger_head().await, head, "nothing written");

    // A card that attaches but is declined again: on file, still open, and why.
    let declined = server
        .submit(&link, "pm_card_chargeDeclinedInsufficientFunds")
        .await;
    assert_eq!(
        declined.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "Stripe declines this one on attach: {}",
        declined.text
    );
    let still = server.submit(&link, "pm_card_chargeCustomerFail").await;
    assert_eq!(still.status, StatusCode::OK, "{}", still.text);
    assert!(still.text.contains("Payment declined"), "{}", still.text);
    assert!(
        still.text.contains("the bank declined the card"),
        "{}",
        still.text
    );
    let state = server.invoice(&invoice).await;
    assert_eq!(state["status"], "open", "{state}");
    assert_eq!(state["attempts"].as_array().unwrap().len(), 2, "{state}");

    // A good card: on file, the invoice paid at once.
    let paid = server.submit(&link, "pm_card_mastercard").await;
    assert_eq!(paid.status, StatusCode::OK, "{}", paid.text);
    assert_locked_down(&paid);
    assert!(paid.text.contains("Paid"), "{}", paid.text);
    assert!(paid.text.contains("97.00 USD"), "{}", paid.text);
    let state = server.invoice(&invoice).await;
    assert_eq!(state["status"], "paid", "{state}");
    assert_eq!(state["amount_paid"]["amount"], "97.00", "{state}");
    let attempts = state["attempts"].as_array().unwrap().len();
    assert_eq!(attempts, 3, "{state}");
    let card = server
        .api(
            reqwest::Method::GET,
            &format!("/v1/customers/{customer}"),
            None,
        )
        .await
        .json();
    assert_eq!(
        card["payment_method"]["token"], "pm_card_mastercard",
        "{card}"
    );
    assert_eq!(card["payment_method"]["last4"], "4444", "{card}");

    // The same link again: the card is saved, nothing due, no second charge.
    let again = server.submit(&link, "pm_card_visa").await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    assert!(again.text.contains("Nothing due"), "{}", again.text);
    let state = server.invoice(&invoice).await;
    assert_eq!(state["status"], "paid", "{state}");
    assert_eq!(
        state["attempts"].as_array().unwrap().len(),
        attempts,
        "{state}"
    );
    let stream = recur_ledger::StreamId::parse(format!("invoice-{invoice}")).unwrap();
    let succeeded = server
        .store
        .read_stream(&stream, 1, 1_000)
        .await
        .unwrap()
        .iter()
        .filter(|event| event.event_type == "PaymentSucceeded")
        .count();
    assert_eq!(succeeded, 1, "charged once");
    // The page now shows nothing due and the new card.
    let after = server.page(&link).await;
    assert!(after.text.contains("0.00 USD"), "{}", after.text);
    assert!(after.text.contains("visa ending in 4242"), "{}", after.text);

    // The token, a credential, never reached the log; the path did, redacted.
    let logged = server.logged();
    assert!(!logged.contains(&token), "the token was logged");
    assert!(
        !logged.contains(token.split('.').next().unwrap()),
        "the claims were logged"
    );
    assert!(logged.contains("/update-card/[redacted]"), "{logged}");
}

#[tokio::test]
async fn expired_tampered_and_malformed_links_get_an_error_page_and_write_nothing() {
    let server = serve().await;
    let (customer, invoice) = server.customer_with_a_declined_invoice().await;
    let expired = server.link(
        &customer,
        Some(&invoice),
        OffsetDateTime::now_utc() - time::Duration::hours(1),
    );
    let good = server.link(&customer, Some(&invoice), week_from_now());
    // Another customer's id under the good link's signature.
    let other = server.link(
        &uuid::Uuid::now_v7().to_string(),
        Some(&invoice),
        week_from_now(),
    );
    let tampered = format!(
        "{}/update-card/{}.{}",
        server.base,
        token_of(&other).split('.').next().unwrap(),
        token_of(&good).split('.').nth(1).unwrap()
    );
    let other_key = {
        let key = LinkKey::from_bytes(&[9; 32]).unwrap();
        let claims = Claims::expiring(
            CustomerId::parse(&customer).unwrap(),
            Some(InvoiceId::parse(&invoice).unwrap()),
            week_from_now(),
        );
        update_card_link::url(&server.base, &update_card_link::sign(&key, &claims))
    };
    let malformed = format!("{}/update-card/not-a-token", server.base);
    let head = server.ledger_head().await;
    for (link, status) in [
        (&expired, StatusCode::GONE),
        (&tampered, StatusCode::UNAUTHORIZED),
        (&other_key, StatusCode::UNAUTHORIZED),
        (&malformed, StatusCode::BAD_REQUEST),
    ] {
        for answer in [
            server.page(link).await,
            server.submit(link, "pm_card_visa").await,
        ] {
            assert_eq!(answer.status, status, "{link}: {}", answer.text);
            assert_locked_down(&answer);
            assert!(
                answer.text.contains("This link has expired"),
                "{}",
                answer.text
            );
            assert!(
                answer.text.contains("contact Coaching &lt;&amp;&gt; Co"),
                "{}",
                answer.text
            );
            assert!(!answer.text.contains("<form"), "{}", answer.text);
        }
    }
    assert_eq!(server.ledger_head().await, head, "nothing written");
    let state = server.invoice(&invoice).await;
    assert_eq!(state["status"], "open", "{state}");
    assert_eq!(state["attempts"].as_array().unwrap().len(), 1, "{state}");
    // An API key is no substitute for the link, and no key is needed with one.
    let keyed = server
        .client
        .get(&expired)
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(keyed.status(), StatusCode::GONE);
}

#[tokio::test]
async fn the_page_is_rate_limited_per_client_address_like_every_route() {
    let server = serve_with(&[
        "--rate-limit-per-address-per-s",
        "1",
        "--rate-limit-per-address-burst",
        "2",
    ])
    .await;
    let link = format!("{}/update-card/not-a-token", server.base);
    for _ in 0..2 {
        assert_eq!(server.page(&link).await.status, StatusCode::BAD_REQUEST);
    }
    let limited = server.submit(&link, "pm_card_visa").await;
    assert_eq!(
        limited.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        limited.text
    );
    assert!(limited.headers.contains_key("retry-after"));
}

/// The Chromium binary to drive: `RECUR_TEST_CHROMIUM`, which `scripts/test.sh`
/// sets after installing Debian's `chromium`. Missing: the test fails, saying how.
fn chromium() -> PathBuf {
    let path = std::env::var_os("RECUR_TEST_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            panic!(
                "RECUR_TEST_CHROMIUM is not set: run the suite with `bash scripts/test.sh` (it \
             installs Chromium), or `apt-get install -y chromium` and export \
             RECUR_TEST_CHROMIUM=/usr/bin/chromium"
            )
        });
    assert!(
        path.is_file(),
        "RECUR_TEST_CHROMIUM={} does not exist: `apt-get install -y chromium`, or run \
         `bash scripts/test.sh`",
        path.display()
    );
    path
}

/// Runs headless Chromium on `url` with `mode` (`--screenshot=…` or
/// `--dump-dom`) and a fresh profile; its stdout. Killed after a minute.
fn run_chromium(binary: &Path, profile: &Path, mode: &str, url: &str) -> String {
    let mut child = Command::new(binary)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            &format!("--user-data-dir={}", profile.display()),
            "--window-size=800,900",
            mode,
            url,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot run {}: {error}", binary.display()));
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    let err = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium {mode} did not finish within 60 s: {}",
                err.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let err = err.join().unwrap();
    assert!(status.success(), "chromium {mode} failed ({status}): {err}");
    out.join().unwrap()
}

#[tokio::test]
async fn the_page_renders_in_headless_chromium_with_its_form_and_the_amount_due() {
    let binary = chromium();
    let server = serve().await;
    let (customer, invoice) = server.customer_with_a_declined_invoice().await;
    let link = server.link(&customer, Some(&invoice), week_from_now());
    let token = token_of(&link).to_owned();
    let scratch =
        std::env::temp_dir().join(format!("recur-chromium-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&scratch).unwrap();
    let png = scratch.join("page.png");
    let (shot, dom) = {
        let (binary, scratch, link, png) =
            (binary.clone(), scratch.clone(), link.clone(), png.clone());
        tokio::task::spawn_blocking(move || {
            let shot = run_chromium(
                &binary,
                &scratch.join("profile-shot"),
                &format!("--screenshot={}", png.display()),
                &link,
            );
            let dom = run_chromium(&binary, &scratch.join("profile-dom"), "--dump-dom", &link);
            (shot, dom)
        })
        .await
        .unwrap()
    };
    drop(shot);

    // A PNG of the window's size, with something drawn in it.
    let bytes = std::fs::read(&png)
        .unwrap_or_else(|error| panic!("no screenshot at {}: {error}", png.display()));
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert_eq!(&bytes[12..16], b"IHDR");
    let width = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    assert!(
        (400..=2_000).contains(&width) && (400..=2_000).contains(&height),
        "{width}×{height}"
    );
    assert!(
        (5_000..=5_000_000).contains(&bytes.len()),
        "a blank or absurd screenshot: {} bytes",
        bytes.len()
    );

    // The DOM as the browser built it: the form, the amount due, the token
    // only in the form's action.
    assert!(
        dom.contains("<form method=\"post\" action=\"/update-card/"),
        "{dom}"
    );
    assert!(dom.contains("name=\"payment_method\""), "{dom}");
    assert!(dom.contains("97.00 USD"), "{dom}");
    assert!(dom.contains("open: payment due"), "{dom}");
    assert_eq!(
        dom.matches(&token).count(),
        1,
        "the token only in the action: {dom}"
    );
    // Kept for a person to look at when asked (RECUR_TEST_SCREENSHOT_DIR).
    if let Some(dir) = std::env::var_os("RECUR_TEST_SCREENSHOT_DIR") {
        std::fs::copy(&png, Path::new(&dir).join("update-card-page.png")).unwrap();
    }
    let _ = std::fs::remove_dir_all(&scratch);
}

/// The campaign events of `invoice` as the ledger holds them.
async fn campaign_events(
    server: &Server,
    invoice: &str,
) -> Vec<recur_commands::dunning::DunningEvent> {
    let stream = recur_commands::dunning::stream(InvoiceId::parse(invoice).unwrap()).unwrap();
    server
        .store
        .read_stream(&stream, 1, 1_000)
        .await
        .unwrap()
        .iter()
        .map(|r| recur_commands::billing::decode_event(&r.payload).unwrap())
        .collect()
}

#[tokio::test]
async fn opening_a_dunning_emails_link_is_recorded_once_as_its_click_and_counted() {
    use recur_commands::dunning::DunningEvent;
    let (smtp_url, mail_dir) = mail::smtp_server();
    let server = serve_with_env(
        &[],
        &[
            ("RECUR_SMTP_URL", smtp_url.as_str()),
            ("RECUR_SMTP_FROM", "Billing <billing@recur.test>"),
            ("RECUR_PUBLIC_URL", "https://billing.example.com"),
        ],
    )
    .await;
    let created = server
        .api(
            reqwest::Method::POST,
            "/v1/customers",
            Some(json!({"contact": {"name": "Ann Lee", "email": "ann@example.com"}})),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let customer = created.json()["id"].as_str().unwrap().to_owned();
    let invoice = server.declined_invoice_of(&customer).await;

    // The scheduler's next round decides the campaign's first step and
    // emails the customer through SMTP.
    let moved = server
        .api(
            reqwest::Method::POST,
            "/v1/test_clock/advance",
            Some(json!({"seconds": 60})),
        )
        .await;
    assert_eq!(moved.status, StatusCode::OK, "{}", moved.text);
    let (email, sent_at) = campaign_events(&server, &invoice)
        .await
        .into_iter()
        .find_map(|e| match e {
            DunningEvent::DunningMessageSent { message_id, at, .. } => Some((message_id, at)),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no message sent:\n{}", server.logged()));
    let deadline = Instant::now() + Duration::from_secs(10);
    let raw = loop {
        if let Some((_, raw)) = mail::emails_for(&mail_dir, &BTreeSet::from([email])).pop() {
            break raw;
        }
        assert!(
            Instant::now() < deadline,
            "email {email} never reached the sink"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // The text part's link (quoted-printable: soft line breaks removed).
    let unfolded = raw.replace("=\r\n", "");
    let start = unfolded
        .find(update_card_link::PATH_PREFIX)
        .expect("a link")
        + update_card_link::PATH_PREFIX.len();
    let token: String = unfolded[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .collect();
    let token = token.trim_end_matches('.');
    let claims = update_card_link::verify(&LinkKey::parse(LINK_KEY).unwrap(), token, sent_at)
        .expect("the email's link verifies");
    assert_eq!(claims.message_id, Some(email), "the link names its message");

    // Opened four times at once (a double click, a prefetch): one click.
    let url = format!("{}{}{token}", server.base, update_card_link::PATH_PREFIX);
    let (a, b, c, d) = tokio::join!(
        server.page(&url),
        server.page(&url),
        server.page(&url),
        server.page(&url)
    );
    for page in [a, b, c, d] {
        assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    }
    let clicks: Vec<_> = campaign_events(&server, &invoice)
        .await
        .into_iter()
        .filter_map(|e| match e {
            DunningEvent::DunningLinkClicked { message_id, .. } => Some(message_id),
            _ => None,
        })
        .collect();
    assert_eq!(clicks, vec![email], "one click, for the email");

    // A link naming a message the campaign never sent: the page still
    // shows, nothing is written, and the log says why without the token.
    let head = server.ledger_head().await;
    let stray = Claims::new(
        CustomerId::parse(&customer).unwrap(),
        Some(InvoiceId::parse(&invoice).unwrap()),
        sent_at,
    )
    .for_message(uuid::Uuid::now_v7());
    let stray_token = update_card_link::sign(&LinkKey::parse(LINK_KEY).unwrap(), &stray);
    let page = server
        .page(&format!(
            "{}{}{stray_token}",
            server.base,
            update_card_link::PATH_PREFIX
        ))
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    assert_eq!(server.ledger_head().await, head, "nothing written");
    let logged = server.logged();
    assert!(logged.contains("not recorded as a click"), "{logged}");
    assert!(
        !logged.contains(&stray_token),
        "the token never reaches the log"
    );

    // The metrics count the email sent and clicked.
    let metrics = server
        .api(
            reqwest::Method::GET,
            &format!("/v1/metrics/dunning?min_position={head}"),
            None,
        )
        .await;
    assert_eq!(metrics.status, StatusCode::OK, "{}", metrics.text);
    let messages = metrics.json()["messages"].clone();
    let email_row = messages
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["channel"] == "email")
        .unwrap_or_else(|| panic!("no email row: {messages}"))
        .clone();
    assert_eq!(
        email_row,
        json!({"channel": "email", "sent": 1, "clicked": 1, "click_rate": "1.0000"})
    );
}

#[tokio::test]
async fn a_payment_the_bank_asks_to_authenticate_is_confirmed_on_the_page_once() {
    let server = serve().await;
    let created = server
        .api(reqwest::Method::POST, "/v1/customers", Some(json!({})))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let customer = created.json()["id"].as_str().unwrap().to_owned();
    let invoice = server
        .declined_invoice_with(&customer, "pm_card_authenticationRequired", "3184")
        .await;
    let state = server.invoice(&invoice).await;
    assert_eq!(
        state["attempts"][0]["decline_code"], "authentication_required",
        "{state}"
    );
    let link = server.link(&customer, Some(&invoice), week_from_now());
    let token = token_of(&link).to_owned();

    // The page offers to confirm with the card on file.
    let page = server.page(&link).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    assert!(
        page.text.contains(&format!(
            "<form method=\"post\" action=\"/update-card/{token}/confirm\">"
        )),
        "{}",
        page.text
    );
    assert!(
        page.text.contains("Confirm payment of 97.00 USD"),
        "{}",
        page.text
    );

    // Confirmed: paid on-session, once.
    let confirm = format!("{link}/confirm");
    let paid = answer(server.client.post(&confirm).send().await.unwrap()).await;
    assert_eq!(paid.status, StatusCode::OK, "{}", paid.text);
    assert!(paid.text.contains("Paid"), "{}", paid.text);
    assert_locked_down(&paid);
    let state = server.invoice(&invoice).await;
    assert_eq!(state["status"], "paid", "{state}");
    let attempts = state["attempts"].as_array().unwrap().len();
    assert_eq!(attempts, 2, "{state}");
    let head = server.ledger_head().await;
    let again = answer(server.client.post(&confirm).send().await.unwrap()).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    assert!(again.text.contains("Nothing due"), "{}", again.text);
    assert_eq!(
        server.ledger_head().await,
        head,
        "nothing written the second time"
    );
    // The page no longer offers it.
    let page = server.page(&link).await;
    assert!(!page.text.contains("/confirm"), "{}", page.text);

    // A link without an invoice has nothing to confirm; a forged one is refused.
    let card_only = server.link(&customer, None, week_from_now());
    let nothing = answer(
        server
            .client
            .post(format!("{card_only}/confirm"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        nothing.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        nothing.text
    );
    let last = if token.ends_with('A') { 'B' } else { 'A' };
    let forged = format!(
        "{}/update-card/{}{last}/confirm",
        server.base,
        &token[..token.len() - 1]
    );
    let refused = answer(server.client.post(&forged).send().await.unwrap()).await;
    assert!(
        refused.status == StatusCode::UNAUTHORIZED || refused.status == StatusCode::BAD_REQUEST,
        "{}: {}",
        refused.status,
        refused.text
    );
    assert_eq!(server.ledger_head().await, head, "nothing written");
    assert!(
        !server.logged().contains(&token),
        "the token never reaches the log"
    );
}

#[tokio::test]
async fn a_link_to_an_invoice_written_off_says_so_and_charges_nothing() {
    let server = serve().await;
    let (customer, invoice) = server.customer_with_a_declined_invoice().await;
    // Six hours at a time until the trial policy gives up and cancels.
    let mut rounds = 0;
    while server.invoice(&invoice).await["status"] != "uncollectible" {
        rounds += 1;
        assert!(rounds < 120, "{}", server.invoice(&invoice).await);
        let moved = server
            .api(
                reqwest::Method::POST,
                "/v1/test_clock/advance",
                Some(json!({"seconds": 21_600})),
            )
            .await;
        assert_eq!(moved.status, StatusCode::OK, "{}", moved.text);
    }
    let attempts = server.invoice(&invoice).await["attempts"]
        .as_array()
        .unwrap()
        .len();
    // Valid past the days the test clock moved on.
    let expires_at = week_from_now() + time::Duration::days(60);
    let link = server.link(&customer, Some(&invoice), expires_at);
    let saved = server.submit(&link, "pm_card_visa").await;
    assert_eq!(saved.status, StatusCode::OK, "{}", saved.text);
    assert!(saved.text.contains("Written off"), "{}", saved.text);
    assert!(
        saved.text.contains("Coaching &lt;&amp;&gt; Co"),
        "{}",
        saved.text
    );
    let after = server.invoice(&invoice).await;
    assert_eq!(after["status"], "uncollectible", "{after}");
    assert_eq!(
        after["attempts"].as_array().unwrap().len(),
        attempts,
        "nothing charged"
    );
}
