//! Email through `SmtpMailer` to a real SMTP server (aiosmtpd, which
//! scripts/test.sh starts and points RECUR_TEST_SMTP_URL and RECUR_TEST_SMTP_DIR
//! at), and how failures are classified.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{LINK, message};
use recur_notify::{Channel, Message, Sender, SmtpConfig, SmtpMailer, render};

const FROM: &str = "Billing <billing@recur.test>";

/// The test server's URL and mail directory, or a failure saying how to get them.
fn server() -> (String, PathBuf) {
    let (Ok(url), Ok(dir)) = (
        std::env::var("RECUR_TEST_SMTP_URL"),
        std::env::var("RECUR_TEST_SMTP_DIR"),
    ) else {
        panic!(
            "RECUR_TEST_SMTP_URL and RECUR_TEST_SMTP_DIR are not set: run the tests with \
             `bash scripts/test.sh -p recur-notify`, which starts aiosmtpd, or start one yourself: \
             python3 -m venv /tmp/smtp && /tmp/smtp/bin/pip install aiosmtpd && \
             /tmp/smtp/bin/python scripts/smtp/sink.py --port 2525 --dir /tmp/mail & \
             export RECUR_TEST_SMTP_URL=smtp://127.0.0.1:2525 RECUR_TEST_SMTP_DIR=/tmp/mail"
        )
    };
    (url, PathBuf::from(dir))
}

fn mailer(url: &str) -> SmtpMailer {
    SmtpMailer::new(&SmtpConfig::new(url, FROM).unwrap()).unwrap()
}

/// The stored message whose envelope went to `to` (the sink writes it before
/// answering the final 250, so it is there when `send` returns).
fn stored_for(dir: &PathBuf, to: &str) -> String {
    for _ in 0..50 {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "eml") {
                let raw = std::fs::read_to_string(&path).unwrap();
                if raw.lines().any(|l| l == format!("X-Envelope-To: {to}")) {
                    return raw;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no message for {to} in {}", dir.display());
}

/// A recipient no other test (or earlier run) uses.
fn unique(local: &str) -> String {
    format!("{local}-{}@example.com", uuid::Uuid::new_v4().simple())
}

/// The decoded parts of a `multipart/alternative` message: (content type, body).
/// Enough MIME for what lettre writes: 7bit or quoted-printable parts.
fn parts(raw: &str) -> Vec<(String, String)> {
    let content_type = raw.split("\r\n\r\n").next().unwrap().replace("\r\n ", " ");
    let boundary = content_type
        .split("boundary=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a multipart boundary");
    raw.split(&format!("--{boundary}"))
        .skip(1)
        .filter(|part| !part.starts_with("--"))
        .map(|part| {
            let (head, body) = part
                .trim_start_matches("\r\n")
                .split_once("\r\n\r\n")
                .unwrap();
            let head_value = |name: &str| {
                head.lines()
                    .find_map(|l| l.strip_prefix(&format!("{name}: ")))
                    .unwrap_or("")
                    .to_owned()
            };
            let body = body.strip_suffix("\r\n").unwrap_or(body);
            let body = match head_value("Content-Transfer-Encoding").as_str() {
                "quoted-printable" => quoted_printable(body),
                "7bit" | "" => body.to_owned(),
                other => panic!("unexpected transfer encoding {other}"),
            };
            (head_value("Content-Type"), body.replace("\r\n", "\n"))
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

fn header<'a>(raw: &'a str, name: &str) -> Option<&'a str> {
    let head = raw.split("\r\n\r\n").next().unwrap();
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
}

#[tokio::test]
async fn three_dunning_emails_arrive_with_subject_both_parts_and_a_message_id_from_ours() {
    let (url, dir) = server();
    let mailer = mailer(&url);
    let sent: Vec<Message> = [
        ("payment_failed_gentle", "Ann Lee"),
        ("payment_final_notice", "<b>Ann & Co</b>"),
        ("offer", "Zoë Ångström"),
    ]
    .into_iter()
    .map(|(template, name)| message(Channel::Email, template, &unique("customer"), name))
    .collect();
    for message in &sent {
        let receipt = mailer.send(message).await.unwrap();
        assert_eq!(
            receipt.provider_id,
            format!("<{}@recur>", message.message_id)
        );
    }
    for message in &sent {
        let raw = stored_for(&dir, &message.to);
        let rendered = render(message).unwrap();
        assert_eq!(header(&raw, "X-Envelope-From"), Some("billing@recur.test"));
        assert_eq!(header(&raw, "To"), Some(message.to.as_str()));
        assert_eq!(header(&raw, "From"), Some(FROM));
        assert_eq!(header(&raw, "Subject"), rendered.subject.as_deref());
        assert_eq!(
            header(&raw, "Message-ID"),
            Some(format!("<{}@recur>", message.message_id).as_str())
        );
        assert!(
            header(&raw, "Content-Type")
                .unwrap()
                .starts_with("multipart/alternative;"),
            "{raw}"
        );
        // Text first, then HTML (the last part is the preferred one), each
        // as rendered once its transfer encoding is undone.
        let parts = parts(&raw);
        assert_eq!(parts.len(), 2, "{raw}");
        assert_eq!(parts[0].0, "text/plain; charset=utf-8");
        assert_eq!(parts[1].0, "text/html; charset=utf-8");
        assert_eq!(parts[0].1, rendered.text, "{raw}");
        assert_eq!(parts[1].1, rendered.html.unwrap(), "{raw}");
        assert!(parts[0].1.contains(LINK));
    }
    let parts_of = |m: &Message| parts(&stored_for(&dir, &m.to));
    let escaped = parts_of(&sent[1]);
    assert!(
        escaped[0].1.contains("Hi <b>Ann & Co</b>,"),
        "the text part keeps the name"
    );
    assert!(
        escaped[1]
            .1
            .contains("Hi &lt;b&gt;Ann &amp; Co&lt;&#x2f;b&gt;,")
    );
    assert!(parts_of(&sent[2])[0].1.contains("Hi Zoë Ångström,"));
}

#[tokio::test]
async fn a_recipient_refused_with_550_is_not_retried_and_not_named_in_the_error() {
    let (url, _) = server();
    let to = unique("reject-ann");
    let error = mailer(&url)
        .send(&message(
            Channel::Email,
            "payment_failed_gentle",
            &to,
            "Ann",
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (error.code, error.retryable),
        ("smtp_rejected", false),
        "{error}"
    );
    assert!(error.detail.contains("550"), "{error}");
    assert!(error.detail.contains("<recipient>"), "{error}");
    assert!(!error.detail.contains("reject-ann"), "{error}");
}

#[tokio::test]
async fn a_recipient_deferred_with_451_is_retryable() {
    let (url, _) = server();
    let error = mailer(&url)
        .send(&message(
            Channel::Email,
            "payment_failed_gentle",
            &unique("busy-bo"),
            "Bo",
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (error.code, error.retryable),
        ("smtp_transient", true),
        "{error}"
    );
    assert!(!error.detail.contains("busy-bo"), "{error}");
}

#[tokio::test]
async fn a_server_that_is_down_is_retryable() {
    // A port that was just free: nothing listens there.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let error = mailer(&format!("smtp://127.0.0.1:{port}"))
        .send(&message(
            Channel::Email,
            "payment_failed_gentle",
            "ann@example.com",
            "Ann",
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (error.code, error.retryable),
        ("smtp_unavailable", true),
        "{error}"
    );
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_and_is_retryable() {
    // Accepts the connection and never greets.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let silent = tokio::spawn(async move {
        let (_socket, _) = listener.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    let mut config = SmtpConfig::new(&format!("smtp://127.0.0.1:{port}"), FROM).unwrap();
    config.timeout = Duration::from_millis(500);
    let started = std::time::Instant::now();
    let error = SmtpMailer::new(&config)
        .unwrap()
        .send(&message(
            Channel::Email,
            "payment_failed_gentle",
            "ann@example.com",
            "Ann",
        ))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        (error.code, error.retryable),
        ("smtp_timeout", true),
        "{error}"
    );
    silent.abort();
}

#[tokio::test]
async fn an_sms_a_bad_address_and_an_unknown_template_never_reach_the_server() {
    // Nothing listens on port 9: each must fail before connecting.
    let mailer = mailer("smtp://127.0.0.1:9");
    let cases = [
        (
            message(Channel::Sms, "payment_failed_urgent", "+15005550006", "Ann"),
            "wrong_channel",
        ),
        (
            message(
                Channel::Email,
                "payment_failed_gentle",
                "not an address",
                "Ann",
            ),
            "invalid_recipient",
        ),
        (
            message(
                Channel::Email,
                "payment_failed_rude",
                "ann@example.com",
                "Ann",
            ),
            "render",
        ),
    ];
    for (message, code) in cases {
        let error = mailer.send(&message).await.unwrap_err();
        assert_eq!((error.code, error.retryable), (code, false), "{error}");
    }
}
