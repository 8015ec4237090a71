//! A demo year whose dunning messages go out through the real channels: email
//! over SMTP to aiosmtpd (which scripts/test.sh starts: RECUR_TEST_SMTP_URL,
//! RECUR_TEST_SMTP_DIR) and SMS to our Twilio fake. What arrived is checked
//! against the ledger's `DunningMessageSent` events.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "support/mail.rs"]
mod mail;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use mail::{emails_for, header, smtp_server};
use recur_api::routes::update_card::UpdateCardConfig;
use recur_commands::billing::decode_event;
use recur_commands::dunning::{CATEGORY, DunningEvent};
use recur_commands::dunning_policy::Channel;
use recur_commands::update_card_link::{self, LinkKey, PATH_PREFIX};
use recur_commands::{CustomerId, InvoiceId};
use recur_gateway::demo::{self, DemoChannels, DemoOptions};
use recur_gateway::dunning_channels::DunningChannels;
use recur_ledger::Position;
use recur_notify::{Outbound, SmtpConfig, SmtpMailer, TwilioFake, TwilioSms};
use time::OffsetDateTime;

const TEST_MASTER_KEY: &str = "5d1f0c2a9b8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a392817060504";
const PUBLIC_URL: &str = "http://127.0.0.1";
const FROM: &str = "Billing <billing@recur.test>";
const SMS_FROM: &str = "+15005550006";

fn temp_location() -> (String, PathBuf) {
    let path = std::env::temp_dir().join(format!(
        "recur-dunning-channels-{}.sqlite",
        uuid::Uuid::new_v4().simple()
    ));
    (format!("sqlite:{}", path.display()), path)
}

fn remove(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

/// A message the ledger says was sent.
#[derive(Debug)]
struct SentMessage {
    channel: Channel,
    invoice: InvoiceId,
    at: OffsetDateTime,
}

/// Every `DunningMessageSent` of the ledger, by message id, with its channel
/// (from its `DunningMessageQueued`) and invoice (from the campaign's stream).
async fn sent_messages(billing: &recur_commands::Billing) -> BTreeMap<uuid::Uuid, SentMessage> {
    let ledger = billing.ledger();
    let mut queued = BTreeMap::new();
    let mut sent = BTreeMap::new();
    let mut after = Position(0);
    loop {
        let page = ledger.read_all(after, 1_000).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.position;
        for recorded in &page {
            if recorded.stream_id.category() != CATEGORY {
                continue;
            }
            let invoice = InvoiceId(
                recorded
                    .stream_id
                    .as_str()
                    .strip_prefix("dunning-")
                    .unwrap()
                    .parse()
                    .unwrap(),
            );
            match decode_event::<DunningEvent>(&recorded.payload).unwrap() {
                DunningEvent::DunningMessageQueued { message } => {
                    queued.insert(message.message_id, message.channel);
                }
                DunningEvent::DunningMessageSent { message_id, at, .. } => {
                    let channel = queued[&message_id];
                    let previous = sent.insert(
                        message_id,
                        SentMessage {
                            channel,
                            invoice,
                            at,
                        },
                    );
                    assert!(previous.is_none(), "{message_id} recorded as sent twice");
                }
                _ => {}
            }
        }
    }
    sent
}

/// The decoded parts of a `multipart/alternative` message: (content type, body).
fn parts(raw: &str) -> Vec<(String, String)> {
    let content_type = header(raw, "Content-Type").expect("a content type");
    let boundary = content_type
        .split("boundary=")
        .nth(1)
        .map(|rest| rest.trim_matches('"').split('"').next().unwrap().to_owned())
        .expect("a multipart boundary");
    raw.split(&format!("--{boundary}"))
        .skip(1)
        .filter(|part| !part.starts_with("--"))
        .map(|part| {
            let part = part.trim_start_matches("\r\n");
            let (head, body) = part.split_once("\r\n\r\n").unwrap();
            let value = |name: &str| {
                head.lines()
                    .find_map(|l| {
                        let (key, value) = l.split_once(':')?;
                        key.eq_ignore_ascii_case(name)
                            .then(|| value.trim().to_owned())
                    })
                    .unwrap_or_default()
            };
            let body = body.strip_suffix("\r\n").unwrap_or(body);
            let body = match value("Content-Transfer-Encoding").as_str() {
                "quoted-printable" => quoted_printable(body),
                "base64" => String::from_utf8(
                    base64::engine::general_purpose::STANDARD
                        .decode(body.replace("\r\n", ""))
                        .unwrap(),
                )
                .unwrap(),
                "7bit" | "8bit" | "" => body.to_owned(),
                other => panic!("unexpected transfer encoding {other}"),
            };
            (value("Content-Type"), body.replace("\r\n", "\n"))
        })
        .collect()
}

fn quoted_printable(encoded: &str) -> String {
    let bytes = encoded.replace("=\r\n", "").into_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(hex, 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// The update-card token in `text`, if any.
fn link_token(text: &str) -> Option<String> {
    let start = text.find(&format!("{PUBLIC_URL}{PATH_PREFIX}"))? + PUBLIC_URL.len();
    let token: String = text[start + PATH_PREFIX.len()..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .collect();
    let token = token.trim_end_matches('.').to_owned();
    (!token.is_empty()).then_some(token)
}

/// The link in a message verifies with the run's key, at the time it was
/// sent, for the campaign's invoice.
fn assert_link(key: &LinkKey, text: &str, sent: &SentMessage, what: &str) -> CustomerId {
    let token = link_token(text).unwrap_or_else(|| panic!("{what}: no update-card link"));
    let claims = update_card_link::verify(key, &token, sent.at)
        .unwrap_or_else(|e| panic!("{what}: the link does not verify: {e}"));
    assert_eq!(
        claims.invoice_id,
        Some(sent.invoice),
        "{what}: the link is for the campaign's invoice"
    );
    assert_eq!(
        claims.expires_at.unix_timestamp(),
        (sent.at + time::Duration::days(7)).unix_timestamp(),
        "{what}: the link lives 7 days from the send"
    );
    claims.customer_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demo_year_sends_its_dunning_messages_through_smtp_and_sms() {
    let (smtp_url, mail_dir) = smtp_server();
    let (sms_url, fake) = TwilioFake::start().await.unwrap();
    let key = LinkKey::generate().unwrap();
    let channels = DunningChannels::new(
        Some(Outbound::Smtp(
            SmtpMailer::new(&SmtpConfig::new(&smtp_url, FROM).unwrap()).unwrap(),
        )),
        Some(Outbound::Sms(
            TwilioSms::new(&sms_url, fake.account_sid(), fake.auth_token(), SMS_FROM).unwrap(),
        )),
        UpdateCardConfig {
            key: key.clone(),
            public_url: PUBLIC_URL.to_owned(),
            business_name: recur_notify::DEFAULT_BUSINESS_NAME.to_owned(),
        },
    );
    let (location, path) = temp_location();
    let options = DemoOptions {
        seed: 42,
        customers: 120,
        months: 12,
        database: Some(location),
        data_dir: std::env::temp_dir(),
        progress: false,
        master_keys: recur_gateway::config::MasterKeyArgs {
            master_key: Some(recur_gateway::config::Secret::new(TEST_MASTER_KEY)),
            ..Default::default()
        },
        payments: demo::DemoPayments::simulated(),
        channels: DemoChannels {
            messenger: Arc::new(channels),
        },
    };
    let (outcome, billing) = demo::run(&options).await.unwrap();
    let sent = sent_messages(&billing).await;
    remove(&path);

    let ids = |channel: Channel| -> BTreeSet<uuid::Uuid> {
        sent.iter()
            .filter(|(_, m)| m.channel == channel)
            .map(|(id, _)| *id)
            .collect()
    };
    let email_ids = ids(Channel::Email);
    let sms_ids = ids(Channel::Sms);
    assert!(!email_ids.is_empty(), "the year sent emails");
    assert!(!sms_ids.is_empty(), "the year sent SMS");
    assert_eq!(
        email_ids.len() + sms_ids.len(),
        sent.len(),
        "only email and SMS are sent"
    );
    let d = &outcome.summary.dunning;
    eprintln!(
        "sent {} emails and {} SMS; phone tasks {}, offers {:?}, canceled {:?}",
        email_ids.len(),
        sms_ids.len(),
        d.phone_tasks,
        d.offers,
        d.canceled
    );
    assert_eq!(
        d.sent.get("email").copied().unwrap_or(0),
        email_ids.len() as u64,
        "the summary counts what the ledger says"
    );
    assert_eq!(
        d.sent.get("sms").copied().unwrap_or(0),
        sms_ids.len() as u64
    );

    // Email: each of ours arrived once, with both parts and a link that verifies.
    let emails = emails_for(&mail_dir, &email_ids);
    // The steps with a discount told the customer, in words.
    let told_a_discount = emails
        .iter()
        .filter(|(_, raw)| {
            parts(raw)
                .iter()
                .any(|(t, body)| t.starts_with("text/plain") && body.contains("% off"))
        })
        .count();
    assert!(
        told_a_discount > 0,
        "no email told of a discount: {:?}",
        d.offers
    );
    let mut arrived: BTreeMap<uuid::Uuid, u32> = BTreeMap::new();
    for (id, _) in &emails {
        *arrived.entry(*id).or_default() += 1;
    }
    assert_eq!(
        emails.len(),
        email_ids.len(),
        "one email in the sink per email sent"
    );
    assert!(
        arrived.values().all(|n| *n == 1),
        "every email arrives exactly once"
    );
    assert_eq!(
        arrived.keys().copied().collect::<BTreeSet<_>>(),
        email_ids,
        "every email sent arrived"
    );
    for (id, raw) in &emails {
        let what = format!("email {id}");
        let parts = parts(raw);
        let text = parts
            .iter()
            .find(|(t, _)| t.starts_with("text/plain"))
            .unwrap_or_else(|| panic!("{what}: no text part"));
        let html = parts
            .iter()
            .find(|(t, _)| t.starts_with("text/html"))
            .unwrap_or_else(|| panic!("{what}: no HTML part"));
        assert!(
            html.1.contains("<") && html.1.contains("</"),
            "{what}: HTML"
        );
        let customer = assert_link(&key, &text.1, &sent[id], &what);
        // minijinja escapes `/` in HTML (`&#x2f;`), which a browser reads back.
        let html_text = html
            .1
            .replace("&#x2f;", "/")
            .replace("&#x27;", "'")
            .replace("&quot;", "\"")
            .replace("&amp;", "&");
        let html_token =
            link_token(&html_text).unwrap_or_else(|| panic!("{what}: no link in HTML"));
        assert_eq!(
            update_card_link::verify(&key, &html_token, sent[id].at)
                .unwrap()
                .customer_id,
            customer
        );
        assert!(
            header(raw, "Subject").is_some_and(|s| !s.is_empty()),
            "{what}: a subject"
        );
    }

    // SMS: each of ours reached the fake once, with a link that verifies.
    let texts: Vec<_> = fake
        .messages()
        .into_iter()
        .filter(|m| {
            m.idempotency_token
                .as_deref()
                .and_then(|t| t.parse::<uuid::Uuid>().ok())
                .is_some_and(|id| sms_ids.contains(&id))
        })
        .collect();
    assert_eq!(
        texts.len(),
        sms_ids.len(),
        "one SMS at the fake per SMS sent"
    );
    let text_ids: BTreeSet<uuid::Uuid> = texts
        .iter()
        .map(|m| m.idempotency_token.as_deref().unwrap().parse().unwrap())
        .collect();
    assert_eq!(text_ids, sms_ids, "every SMS arrives exactly once");
    for text in &texts {
        let id: uuid::Uuid = text.idempotency_token.as_deref().unwrap().parse().unwrap();
        assert!(
            recur_notify::sms::is_e164(&text.to),
            "SMS {id}: the number is E.164"
        );
        assert_link(&key, &text.body, &sent[&id], &format!("SMS {id}"));
    }

    // The campaign did its work without retrying what could not succeed.
    assert_eq!(d.futile_retries, 0, "no futile retries");
    assert!(d.phone_tasks > 0, "phone tasks for high-value customers");
    let offers_applied: u64 = d
        .offers
        .iter()
        .filter(|(kind, _)| !kind.contains("not_applied"))
        .map(|(_, n)| *n)
        .sum();
    assert!(offers_applied > 0, "offers applied: {:?}", d.offers);
    assert_eq!(d.failed, 0, "no message failed: {d:?}");
}
