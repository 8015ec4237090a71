//! Every template renders; HTML escapes, text does not; the senders that are
//! not a protocol (Recorder, Channels) record and dispatch.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::{LINK, message};
use recur_notify::{Channel, Channels, NotifyError, Outbound, Recorder, Sender, render, templates};

const HOSTILE_NAME: &str = "<b>Ann & Co</b>";

#[test]
fn the_templates_are_the_campaigns_steps_on_their_channels() {
    let mut listed: Vec<_> = templates().collect();
    listed.sort();
    let mut expected = vec![
        ("authentication_required", Channel::Email),
        ("authentication_required", Channel::Sms),
        ("card_expiring", Channel::Email),
        ("card_expiring", Channel::Sms),
        ("offer", Channel::Email),
        ("payment_failed_gentle", Channel::Email),
        ("payment_failed_urgent", Channel::Email),
        ("payment_failed_urgent", Channel::Sms),
        ("payment_final_notice", Channel::Email),
        ("payment_final_notice", Channel::Sms),
    ];
    expected.sort();
    assert_eq!(listed, expected);
}

#[test]
fn every_email_escapes_the_name_in_html_and_keeps_it_as_is_in_text() {
    for (template, channel) in templates().filter(|(_, c)| *c == Channel::Email) {
        let rendered =
            render(&message(channel, template, "ann@example.com", HOSTILE_NAME)).unwrap();
        let subject = rendered.subject.as_deref().unwrap();
        let html = rendered.html.as_deref().unwrap();
        assert!(
            !subject.is_empty() && !subject.contains('\n'),
            "{template}: {subject:?}"
        );
        assert!(html.starts_with("<!DOCTYPE html>"), "{template}");
        assert!(
            html.contains("&lt;b&gt;Ann &amp; Co&lt;&#x2f;b&gt;"),
            "{template}: {html}"
        );
        assert!(
            !html.contains(HOSTILE_NAME),
            "{template}: unescaped name in HTML"
        );
        // The link is an attribute value: escaped, and so intact for a browser.
        assert!(
            html.contains("href=\"https:&#x2f;&#x2f;billing.example"),
            "{template}: {html}"
        );
        assert!(html.contains("step=2&amp;x=1"), "{template}: {html}");
        assert!(
            rendered.text.contains(HOSTILE_NAME),
            "{template}: text escaped the name"
        );
        assert!(rendered.text.contains(LINK), "{template}: no link in text");
        assert!(rendered.text.contains("Executive Coaching"), "{template}");
        assert!(
            rendered.text.ends_with("Christopher's AI Coaching Team\n"),
            "{template}: {}",
            rendered.text
        );
    }
}

#[test]
fn the_text_parts_and_sms_carry_no_html() {
    for (template, channel) in templates() {
        let rendered = render(&message(channel, template, "x", "Ann Lee")).unwrap();
        for forbidden in ["<", ">", "&amp;", "&#x"] {
            assert!(
                !rendered.text.replace(LINK, "").contains(forbidden),
                "{template} ({channel}) text has {forbidden:?}: {}",
                rendered.text
            );
        }
        assert!(
            rendered.text.contains(LINK),
            "{template} ({channel}): no link"
        );
    }
}

#[test]
fn sms_are_one_line_signed_and_fit_two_segments() {
    for (template, channel) in templates().filter(|(_, c)| *c == Channel::Sms) {
        let rendered = render(&message(channel, template, "+15005550006", "Ann")).unwrap();
        assert_eq!(rendered.subject, None);
        assert_eq!(rendered.html, None);
        assert!(!rendered.text.contains('\n'), "{template}");
        assert!(
            rendered.text.ends_with("- Christopher's AI Coaching"),
            "{template}: {}",
            rendered.text
        );
        assert!(
            rendered.text.chars().count() <= 306,
            "{template}: {} chars",
            rendered.text.len()
        );
    }
}

#[test]
fn the_gentle_email_is_the_briefs() {
    let rendered = render(&message(
        Channel::Email,
        "payment_failed_gentle",
        "a@example.com",
        "Ann",
    ))
    .unwrap();
    let html = rendered.html.unwrap();
    for line in [
        "<h2>Payment Update Needed</h2>",
        "<p>Hi Ann,</p>",
        "<p>We had trouble processing your payment for Executive Coaching ($5,000.00).</p>",
        "<p>No worries - this happens sometimes! Please update your payment method to continue enjoying your coaching benefits.</p>",
        "style=\"background: #007cba; color: white; padding: 12px 24px; text-decoration: none; border-radius: 4px;\">Update Payment Method</a></p>",
        "<p>Best regards,<br>Christopher&#x27;s AI Coaching Team</p>",
    ] {
        assert!(html.contains(line), "missing {line:?} in {html}");
    }
    assert_eq!(
        rendered.subject.as_deref(),
        Some("Payment update needed for Executive Coaching")
    );
}

#[test]
fn the_briefs_sms_texts_keep_their_wording() {
    // Without an offer: the brief's texts had none.
    let sms = |template| {
        let mut m = message(Channel::Sms, template, "+15005550006", "Ann");
        m.vars.offer = None;
        render(&m).unwrap().text
    };
    assert_eq!(
        sms("payment_failed_urgent"),
        format!(
            "Hi Ann! Your payment for Executive Coaching needs attention. Update it here: {LINK} - Christopher's AI Coaching"
        )
    );
    assert_eq!(
        sms("payment_final_notice"),
        format!(
            "Final notice: Please update your payment method to keep your Executive Coaching active: {LINK} - Christopher's AI Coaching"
        )
    );
    assert_eq!(
        sms("card_expiring"),
        format!(
            "Your card ending in 4242 expires on March 3, 2027. Update it now to avoid service interruption: {LINK} - Christopher's AI Coaching"
        )
    );
}

/// The templates a campaign's step (or its reminders, or the card-expiry
/// notice) can use; `offer` is the only other one.
const STEP_TEMPLATES: [&str; 5] = [
    "payment_failed_gentle",
    "payment_failed_urgent",
    "payment_final_notice",
    "authentication_required",
    "card_expiring",
];

/// What `recur-commands` makes of a percent-off offer (`offer_words`): the
/// longest offer words a customer can be sent today.
const LONG_OFFER: &str = "1,500.00 USD off for the next 120 months";

#[test]
fn every_step_template_tells_the_offer_only_when_there_is_one() {
    for (template, _) in templates() {
        assert!(
            template == "offer" || STEP_TEMPLATES.contains(&template),
            "{template}: a new template; does it tell the offer?"
        );
    }
    for (template, channel) in templates().filter(|(t, _)| *t != "offer") {
        for offer in ["7 more days before anything changes", LONG_OFFER] {
            let mut m = message(channel, template, "x", "Ann");
            m.vars.offer = Some(offer.to_owned());
            let rendered = render(&m).unwrap();
            match channel {
                Channel::Email => {
                    let sentence = format!("To help, we have given you {offer}.");
                    assert!(
                        rendered.text.contains(&format!("\n\n{sentence}\n\n")),
                        "{template}: text has no offer paragraph: {}",
                        rendered.text
                    );
                    let html = rendered.html.unwrap();
                    assert!(
                        html.contains(&format!("\n<p>{sentence}</p>\n")),
                        "{template}: HTML has no offer paragraph: {html}"
                    );
                    assert!(!rendered.subject.unwrap().contains(offer), "{template}");
                }
                Channel::Sms => {
                    assert!(
                        rendered.text.contains(&format!(" You now have {offer}. ")),
                        "{template}: SMS has no offer: {}",
                        rendered.text
                    );
                    assert!(
                        rendered.text.chars().count() <= 306,
                        "{template}: {} chars with the offer",
                        rendered.text.chars().count()
                    );
                }
            }
        }
        // No offer, or a blank one: not a word about it.
        for offer in [None, Some(""), Some("  ")] {
            let mut m = message(channel, template, "x", "Ann");
            m.vars.offer = offer.map(str::to_owned);
            let rendered = render(&m).unwrap();
            let parts = [
                rendered.subject.unwrap_or_default(),
                rendered.html.unwrap_or_default(),
                rendered.text,
            ];
            for part in parts {
                for word in ["given you", "You now have", "discount", "offer"] {
                    assert!(
                        !part.contains(word),
                        "{template} ({channel}) with {offer:?}: {word:?} in {part}"
                    );
                }
                assert!(!part.contains("\n\n\n"), "{template}: a blank gap: {part}");
            }
        }
    }
}

#[test]
fn the_offer_is_escaped_in_html_and_kept_as_is_in_text_and_sms() {
    let offer = "<i>20% off</i> & a \"thank you\"";
    for (template, channel) in templates() {
        let mut m = message(channel, template, "x", "Ann");
        m.vars.offer = Some(offer.to_owned());
        let rendered = render(&m).unwrap();
        assert!(rendered.text.contains(offer), "{template} ({channel})");
        if let Some(html) = rendered.html {
            assert!(
                html.contains("&lt;i&gt;20% off&lt;&#x2f;i&gt; &amp; a &quot;thank you&quot;"),
                "{template}: {html}"
            );
            assert!(!html.contains("<i>"), "{template}: unescaped offer in HTML");
        }
    }
}

#[test]
fn the_business_name_and_offer_come_from_the_variables() {
    let mut m = message(Channel::Email, "offer", "a@example.com", "Ann");
    m.vars.business_name = "Acme Mentoring".to_owned();
    m.vars.offer = Some("a 14-day extension of your trial".to_owned());
    let rendered = render(&m).unwrap();
    assert!(rendered.text.contains("we have applied a 14-day extension of your trial to your Executive Coaching subscription"), "{}", rendered.text);
    assert!(rendered.text.ends_with("Acme Mentoring Team\n"));
    assert!(!rendered.html.unwrap().contains("Christopher"));
}

#[test]
fn an_unknown_template_or_channel_and_a_missing_variable_are_errors() {
    let unknown = render(&message(
        Channel::Email,
        "payment_failed_rude",
        "a@example.com",
        "Ann",
    ));
    assert!(
        matches!(unknown, Err(NotifyError::UnknownTemplate { .. })),
        "{unknown:?}"
    );
    // The gentle reminder is email only.
    let wrong_channel = render(&message(
        Channel::Sms,
        "payment_failed_gentle",
        "+15005550006",
        "Ann",
    ));
    assert!(matches!(
        wrong_channel,
        Err(NotifyError::UnknownTemplate {
            channel: Channel::Sms,
            ..
        })
    ));

    let mut no_card = message(Channel::Sms, "card_expiring", "+15005550006", "Ann");
    no_card.vars.last4 = None;
    match render(&no_card) {
        Err(NotifyError::MissingVar { var, .. }) => assert_eq!(var, "last4"),
        other => panic!("expected a missing last4, got {other:?}"),
    }
    let mut blank_offer = message(Channel::Email, "offer", "a@example.com", "Ann");
    blank_offer.vars.offer = Some("  ".to_owned());
    assert!(matches!(
        render(&blank_offer),
        Err(NotifyError::MissingVar { var: "offer", .. })
    ));
}

#[test]
fn a_message_printed_for_the_logs_shows_no_recipient_name_or_link() {
    let m = message(
        Channel::Email,
        "card_expiring",
        "ann.secret@example.com",
        "Ann Secretname",
    );
    let printed = format!("{m:?} {:?}", render(&m).unwrap());
    for personal in ["ann.secret", "Secretname", "tok_3fA9", "4242"] {
        assert!(!printed.contains(personal), "{personal} in {printed}");
    }
}

#[tokio::test]
async fn the_recorder_renders_counts_and_keeps_what_it_was_asked_to_send() {
    let (channels, recorder) = Channels::recording();
    let email = message(
        Channel::Email,
        "payment_failed_gentle",
        "a@example.com",
        "Ann",
    );
    let sms = message(Channel::Sms, "payment_failed_urgent", "+15005550006", "Ann");
    let receipt = channels.send(&email).await.unwrap();
    assert_eq!(
        receipt.provider_id,
        format!("recorded-{}", email.message_id)
    );
    channels.send(&sms).await.unwrap();
    channels.send(&sms).await.unwrap();
    assert_eq!(recorder.count(Channel::Email), 1);
    assert_eq!(recorder.count(Channel::Sms), 2);
    let recorded = recorder.recorded();
    assert_eq!(recorded.len(), 3);
    assert_eq!(recorded[0].message, email);
    assert_eq!(recorded[0].rendered, render(&email).unwrap());
    assert_eq!(recorder.find(sms.message_id).unwrap().message, sms);

    // A message that does not render is refused, not recorded.
    let broken = message(Channel::Sms, "offer", "+15005550006", "Ann");
    let error = channels.send(&broken).await.unwrap_err();
    assert_eq!((error.code, error.retryable), ("render", false));
    assert_eq!(recorder.count(Channel::Sms), 2);
}

#[tokio::test]
async fn channels_send_each_message_by_its_channel() {
    let emails = Recorder::new();
    let texts = Recorder::new();
    let channels = Channels {
        email: Outbound::Recorder(emails.clone()),
        sms: Outbound::Recorder(texts.clone()),
    };
    channels
        .send(&message(
            Channel::Sms,
            "payment_final_notice",
            "+15005550006",
            "Ann",
        ))
        .await
        .unwrap();
    assert_eq!(
        (emails.count(Channel::Sms), texts.count(Channel::Sms)),
        (0, 1)
    );
}
