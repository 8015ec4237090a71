//! SMS through `TwilioSms` to our Twilio fake: the request's shape, and how
//! Twilio's answers map to retryable or not.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::message;
use recur_notify::fake::{
    FAKE_ACCOUNT_SID, FAKE_AUTH_TOKEN, MAGIC_INVALID_NUMBER, MAGIC_UNSUBSCRIBED_NUMBER,
};
use recur_notify::{Channel, Sender, TwilioFake, TwilioSms, render};

const FROM: &str = "+15005550006";

#[tokio::test]
async fn an_sms_is_posted_as_twilio_expects_and_answered_with_its_sid() {
    let (base, fake) = TwilioFake::start().await.unwrap();
    let sms = TwilioSms::new(&base, FAKE_ACCOUNT_SID, FAKE_AUTH_TOKEN, FROM).unwrap();
    // `&`, `+` and `=` survive the form encoding.
    let message = message(
        Channel::Sms,
        "payment_failed_urgent",
        "+447700900123",
        "Ann & Bo+Co=1",
    );
    let receipt = sms.send(&message).await.unwrap();

    let received = fake.messages();
    assert_eq!(received.len(), 1);
    let got = &received[0];
    assert_eq!(receipt.provider_id, got.sid);
    assert!(
        got.sid.starts_with("SM") && got.sid.len() == 34,
        "{}",
        got.sid
    );
    assert_eq!(got.to, "+447700900123");
    assert_eq!(got.from, FROM);
    assert_eq!(got.body, render(&message).unwrap().text);
    assert!(
        got.body.starts_with("Hi Ann & Bo+Co=1! Your payment"),
        "{}",
        got.body
    );
    assert_eq!(got.idempotency_token, Some(message.message_id.to_string()));
}

#[tokio::test]
async fn a_wrong_auth_token_is_an_auth_error_and_not_retried() {
    let (base, fake) = TwilioFake::start().await.unwrap();
    let sms = TwilioSms::new(&base, FAKE_ACCOUNT_SID, "not-the-token", FROM).unwrap();
    let error = sms
        .send(&message(
            Channel::Sms,
            "payment_final_notice",
            "+15005550009",
            "Ann",
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (error.code, error.retryable),
        ("sms_auth", false),
        "{error}"
    );
    assert!(
        error.detail.contains("HTTP 401, error 20003: Authenticate"),
        "{error}"
    );
    assert!(fake.messages().is_empty());

    // Another account's sid: Twilio answers 404, a rejection.
    let other = TwilioSms::new(&base, "AC99", FAKE_AUTH_TOKEN, FROM).unwrap();
    let error = other
        .send(&message(
            Channel::Sms,
            "payment_final_notice",
            "+15005550009",
            "Ann",
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (error.code, error.retryable),
        ("sms_rejected", false),
        "{error}"
    );
}

#[tokio::test]
async fn a_server_error_is_retryable_and_the_retry_goes_through_once() {
    let (base, fake) = TwilioFake::start().await.unwrap();
    let sms = TwilioSms::new(&base, FAKE_ACCOUNT_SID, FAKE_AUTH_TOKEN, FROM).unwrap();
    let message = message(
        Channel::Sms,
        "authentication_required",
        "+15005550009",
        "Ann",
    );
    fake.fail_next(2);
    for _ in 0..2 {
        let error = sms.send(&message).await.unwrap_err();
        assert_eq!(
            (error.code, error.retryable),
            ("sms_server", true),
            "{error}"
        );
        assert!(error.detail.contains("HTTP 500, error 20500"), "{error}");
    }
    sms.send(&message).await.unwrap();
    assert_eq!(fake.requests(), 3);
    assert_eq!(fake.messages().len(), 1);
}

#[tokio::test]
async fn a_rate_limit_is_retryable() {
    let (base, fake) = TwilioFake::start().await.unwrap();
    let sms = TwilioSms::new(&base, FAKE_ACCOUNT_SID, FAKE_AUTH_TOKEN, FROM).unwrap();
    fake.fail_next_with(1, 429);
    let error = sms
        .send(&message(
            Channel::Sms,
            "card_expiring",
            "+15005550009",
            "Ann",
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (error.code, error.retryable),
        ("sms_rate_limited", true),
        "{error}"
    );
}

#[tokio::test]
async fn a_number_twilio_turns_down_is_not_retried_and_not_named_in_the_error() {
    let (base, fake) = TwilioFake::start().await.unwrap();
    let sms = TwilioSms::new(&base, FAKE_ACCOUNT_SID, FAKE_AUTH_TOKEN, FROM).unwrap();
    let error = sms
        .send(&message(
            Channel::Sms,
            "payment_final_notice",
            MAGIC_INVALID_NUMBER,
            "Ann",
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (error.code, error.retryable),
        ("sms_rejected", false),
        "{error}"
    );
    assert_eq!(
        error.detail,
        "HTTP 400, error 21211: The 'To' number <recipient> is not a valid phone number."
    );
    let error = sms
        .send(&message(
            Channel::Sms,
            "payment_final_notice",
            MAGIC_UNSUBSCRIBED_NUMBER,
            "Ann",
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (error.code, error.retryable),
        ("sms_rejected", false),
        "{error}"
    );
    assert!(error.detail.contains("error 21610"), "{error}");
    assert!(fake.messages().is_empty());

    // The answer's shape, as Twilio's.
    let raw = reqwest::Client::new()
        .post(format!(
            "{base}/2010-04-01/Accounts/{FAKE_ACCOUNT_SID}/Messages.json"
        ))
        .basic_auth(FAKE_ACCOUNT_SID, Some(FAKE_AUTH_TOKEN))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("To=5550001&From=%2B15005550006&Body=hi")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 400);
    let answer: serde_json::Value = raw.json().await.unwrap();
    assert_eq!(answer["code"], 21211);
    assert_eq!(answer["status"], 400);
    assert_eq!(
        answer["message"],
        "The 'To' number 5550001 is not a valid phone number."
    );
    assert_eq!(
        answer["more_info"],
        "https://www.twilio.com/docs/errors/21211"
    );
}

#[tokio::test]
async fn the_fake_rejects_requests_missing_a_field_as_twilio_does() {
    let (base, fake) = TwilioFake::start().await.unwrap();
    let post = |body: &'static str| {
        reqwest::Client::new()
            .post(format!(
                "{base}/2010-04-01/Accounts/{FAKE_ACCOUNT_SID}/Messages.json"
            ))
            .basic_auth(FAKE_ACCOUNT_SID, Some(FAKE_AUTH_TOKEN))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    for (body, code) in [
        ("From=%2B15005550006&Body=hi", 21604),
        ("To=%2B15005550009&Body=hi", 21603),
        ("To=%2B15005550009&From=%2B15005550006", 21602),
    ] {
        let answer = post(body).await.unwrap();
        assert_eq!(answer.status(), 400, "{body}");
        let answer: serde_json::Value = answer.json().await.unwrap();
        assert_eq!(answer["code"], code, "{body}");
    }
    let too_long = format!(
        "To=%2B15005550009&From=%2B15005550006&Body={}",
        "x".repeat(1601)
    );
    let answer = reqwest::Client::new()
        .post(format!(
            "{base}/2010-04-01/Accounts/{FAKE_ACCOUNT_SID}/Messages.json"
        ))
        .basic_auth(FAKE_ACCOUNT_SID, Some(FAKE_AUTH_TOKEN))
        .body(too_long)
        .send()
        .await
        .unwrap();
    let answer: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(answer["code"], 21617);
    let elsewhere = reqwest::Client::new()
        .post(format!(
            "{base}/2010-04-01/Accounts/{FAKE_ACCOUNT_SID}/Calls.json"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(elsewhere.status(), 404);
    assert!(fake.messages().is_empty());
    assert_eq!(fake.requests(), 5);
}

#[tokio::test]
async fn a_body_over_1600_characters_is_rejected_without_its_text_in_the_error() {
    let (base, fake) = TwilioFake::start().await.unwrap();
    let sms = TwilioSms::new(&base, FAKE_ACCOUNT_SID, FAKE_AUTH_TOKEN, FROM).unwrap();
    let mut long = message(Channel::Sms, "payment_failed_urgent", "+15005550009", "Ann");
    long.vars.customer_name = "A".repeat(1700);
    let error = sms.send(&long).await.unwrap_err();
    assert_eq!(
        (error.code, error.retryable),
        ("sms_rejected", false),
        "{error}"
    );
    assert!(error.detail.contains("error 21617"), "{error}");
    assert!(!error.detail.contains("AAAA"), "{error}");
    assert_eq!(fake.requests(), 1);
}

#[tokio::test]
async fn a_bad_number_or_an_email_never_reaches_the_api_and_a_down_api_is_retryable() {
    let (base, fake) = TwilioFake::start().await.unwrap();
    let sms = TwilioSms::new(&base, FAKE_ACCOUNT_SID, FAKE_AUTH_TOKEN, FROM).unwrap();
    let not_e164 = sms
        .send(&message(
            Channel::Sms,
            "payment_final_notice",
            "555-0001",
            "Ann",
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (not_e164.code, not_e164.retryable),
        ("invalid_recipient", false)
    );
    let email = sms
        .send(&message(
            Channel::Email,
            "payment_final_notice",
            "ann@example.com",
            "Ann",
        ))
        .await
        .unwrap_err();
    assert_eq!(email.code, "wrong_channel");
    assert_eq!(fake.requests(), 0);

    let port = fake.addr().port();
    drop(fake);
    // Wait for the aborted server to let go of its port.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let down = TwilioSms::new(
        &format!("http://127.0.0.1:{port}"),
        FAKE_ACCOUNT_SID,
        FAKE_AUTH_TOKEN,
        FROM,
    )
    .unwrap()
    .send(&message(
        Channel::Sms,
        "payment_final_notice",
        "+15005550009",
        "Ann",
    ))
    .await
    .unwrap_err();
    assert_eq!(
        (down.code, down.retryable),
        ("sms_unavailable", true),
        "{down}"
    );
}
