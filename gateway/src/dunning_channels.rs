//! The dunning outbox's channels: a [`Messenger`] that turns the campaign's
//! [`Notice`]s into `recur_notify` messages and sends them by email over SMTP
//! and by SMS through a Twilio-compatible API.
//!
//! What it adds to a notice: the template for the channel (an SMS falls back to
//! `payment_failed_urgent` when the notice's template has no SMS form), the
//! amount in words a customer reads (`$5,000.00`, `5000.00 EUR`), the phone
//! number in E.164, a signed update-card link for the customer and the invoice
//! (expiring [`LINK_LIFETIME_DEFAULT`] after the notice is sent) and the
//! business's name.
//!
//! Nothing personal is logged: a send is traced by its message id, channel,
//! template and, when it fails, the error's code.

use recur_api::routes::update_card::UpdateCardConfig;
use recur_commands::dunning_policy::Channel as PolicyChannel;
use recur_commands::recovery::{Messenger, Notice, SendFailure, SendFuture};
#[cfg(doc)]
use recur_commands::update_card_link::LINK_LIFETIME_DEFAULT;
use recur_commands::update_card_link::{self, Claims};
use recur_ledger::{Currency, Money};
use recur_notify::{
    Channel, Message, MessageVars, NotifyError, Outbound, Sender, SmtpConfig, SmtpMailer,
    TwilioConfig, TwilioSms, templates,
};
use rust_decimal::{Decimal, RoundingStrategy};

/// The template an SMS falls back to when the notice's has no SMS form.
pub const SMS_FALLBACK_TEMPLATE: &str = "payment_failed_urgent";

/// The failure code of a notice for a channel that is not configured.
pub const NOT_CONFIGURED: &str = "channel_not_configured";

/// Why the channels could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ChannelsError {
    /// A channel's configuration is malformed (the message names the variable,
    /// never a secret).
    #[error(transparent)]
    Notify(#[from] NotifyError),
    /// Something else in the environment is inconsistent.
    #[error("{0}")]
    Config(String),
}

/// Sends dunning notices by email and SMS; either channel may be absent, and a
/// notice for an absent one fails for good ([`NOT_CONFIGURED`]).
#[derive(Clone, Debug)]
pub struct DunningChannels {
    email: Option<Outbound>,
    sms: Option<Outbound>,
    update_card: UpdateCardConfig,
}

impl DunningChannels {
    /// Channels over these senders, signing links with `update_card`'s key
    /// under its public URL, in its business's name.
    pub fn new(
        email: Option<Outbound>,
        sms: Option<Outbound>,
        update_card: UpdateCardConfig,
    ) -> Self {
        Self {
            email,
            sms,
            update_card,
        }
    }

    /// The channels the environment configures (`RECUR_SMTP_URL` and
    /// `RECUR_SMTP_FROM`; `RECUR_SMS_ACCOUNT_SID`, `RECUR_SMS_AUTH_TOKEN`,
    /// `RECUR_SMS_FROM`, `RECUR_SMS_URL`); `None` when neither is.
    ///
    /// # Errors
    /// [`ChannelsError`] when a channel is half configured or malformed.
    pub fn from_env(update_card: UpdateCardConfig) -> Result<Option<Self>, ChannelsError> {
        Self::from_env_with(update_card, None)
    }

    /// As [`DunningChannels::from_env`], with a sender address used when
    /// `RECUR_SMTP_URL` is set and `RECUR_SMTP_FROM` is not (`recur demo`);
    /// and an error when `RECUR_SMS_URL` is set without the account sid.
    ///
    /// # Errors
    /// [`ChannelsError`] when a channel is half configured or malformed.
    pub fn from_env_with(
        update_card: UpdateCardConfig,
        default_from: Option<&str>,
    ) -> Result<Option<Self>, ChannelsError> {
        let smtp = match (
            std::env::var(recur_notify::smtp::SMTP_URL_VAR),
            std::env::var(recur_notify::smtp::SMTP_FROM_VAR),
            default_from,
        ) {
            (Ok(url), Err(_), Some(from)) => Some(SmtpConfig::new(&url, from)?),
            _ => SmtpConfig::from_env()?,
        };
        let sms = TwilioConfig::from_env()?;
        if sms.is_none() && std::env::var(recur_notify::sms::SMS_URL_VAR).is_ok() {
            return Err(ChannelsError::Config(format!(
                "{} is set but {} is not: SMS needs the account's credentials",
                recur_notify::sms::SMS_URL_VAR,
                recur_notify::sms::SMS_ACCOUNT_SID_VAR
            )));
        }
        let email = match smtp {
            Some(config) => {
                tracing::info!(smtp = %config.url_redacted(), "dunning email goes over SMTP");
                Some(Outbound::Smtp(SmtpMailer::new(&config)?))
            }
            None => None,
        };
        let sms = match sms {
            Some(config) => {
                tracing::info!(sms = %config.base_url, "dunning SMS goes through the SMS API");
                Some(Outbound::Sms(TwilioSms::from_config(config)?))
            }
            None => None,
        };
        if email.is_none() && sms.is_none() {
            return Ok(None);
        }
        Ok(Some(Self::new(email, sms, update_card)))
    }

    /// Whether email is configured.
    pub fn has_email(&self) -> bool {
        self.email.is_some()
    }

    /// Whether SMS is configured.
    pub fn has_sms(&self) -> bool {
        self.sms.is_some()
    }

    /// The message `notice` becomes.
    ///
    /// # Errors
    /// A [`SendFailure`] that is not retryable: a phone-call notice
    /// (`unsupported_channel`), a phone number that is not one
    /// (`invalid_recipient`).
    pub fn message(&self, notice: &Notice) -> Result<Message, SendFailure> {
        let channel = match notice.channel {
            PolicyChannel::Email => Channel::Email,
            PolicyChannel::Sms => Channel::Sms,
            PolicyChannel::PhoneCall => return Err(failure(false, "unsupported_channel")),
        };
        let to = match channel {
            Channel::Email => notice.to.trim().to_owned(),
            Channel::Sms => {
                normalize_phone(&notice.to).ok_or_else(|| failure(false, "invalid_recipient"))?
            }
        };
        let claims = Claims::new(notice.customer_id, notice.invoice_id, notice.sent_at)
            .for_message(notice.message_id);
        let link = update_card_link::url(
            &self.update_card.public_url,
            &update_card_link::sign(&self.update_card.key, &claims),
        );
        Ok(Message {
            message_id: notice.message_id,
            channel,
            to,
            template: template_for(notice.template.name(), channel).to_owned(),
            vars: MessageVars {
                customer_name: notice.customer_name.clone(),
                plan_name: notice.plan_name.clone(),
                amount: format_amount(notice.amount_due),
                payment_update_link: link,
                business_name: self.update_card.business_name.clone(),
                last4: notice.last4.clone(),
                expires_on: notice.expires_on.clone(),
                offer: notice.offer.clone(),
                step: notice.step,
                steps_total: notice.steps_total,
            },
        })
    }

    async fn send_notice(&self, notice: &Notice) -> Result<String, SendFailure> {
        let message = self.message(notice)?;
        let sender = match message.channel {
            Channel::Email => self.email.as_ref(),
            Channel::Sms => self.sms.as_ref(),
        }
        .ok_or_else(|| failure(false, NOT_CONFIGURED))?;
        match sender.send(&message).await {
            Ok(receipt) => {
                tracing::debug!(
                    message_id = %message.message_id,
                    channel = %message.channel,
                    template = %message.template,
                    "dunning message sent"
                );
                Ok(receipt.provider_id)
            }
            Err(error) => {
                // The code only: the detail may be the server's words. (The
                // outbox logs the failure too, by its code.)
                tracing::debug!(
                    message_id = %message.message_id,
                    channel = %message.channel,
                    template = %message.template,
                    code = error.code,
                    retryable = error.retryable,
                    "dunning message not sent"
                );
                Err(failure(error.retryable, error.code))
            }
        }
    }
}

impl Messenger for DunningChannels {
    fn send<'a>(&'a self, notice: &'a Notice) -> SendFuture<'a> {
        Box::pin(self.send_notice(notice))
    }
}

fn failure(retryable: bool, code: &str) -> SendFailure {
    SendFailure {
        retryable,
        code: code.to_owned(),
    }
}

/// The template a notice of `name` uses on `channel`: its own when it has that
/// form, else [`SMS_FALLBACK_TEMPLATE`] (which exists on both channels).
pub fn template_for(name: &'static str, channel: Channel) -> &'static str {
    if templates().any(|(n, c)| n == name && c == channel) {
        name
    } else {
        SMS_FALLBACK_TEMPLATE
    }
}

/// An amount as a customer reads it: US dollars as `$5,000.00`, any other
/// currency as `5000.00 EUR`; rounded half away from zero to the currency's
/// minor unit.
pub fn format_amount(money: Money) -> String {
    let currency = money.currency();
    let digits = currency.minor_unit();
    let amount = money
        .amount()
        .round_dp_with_strategy(digits, RoundingStrategy::MidpointAwayFromZero);
    let plain = fixed(amount.abs(), digits);
    let sign = if amount.is_sign_negative() && !amount.is_zero() {
        "-"
    } else {
        ""
    };
    if currency == Currency::USD {
        let (whole, fraction) = plain.split_once('.').unwrap_or((&plain, ""));
        let grouped = group_thousands(whole);
        if fraction.is_empty() {
            format!("{sign}${grouped}")
        } else {
            format!("{sign}${grouped}.{fraction}")
        }
    } else {
        format!("{sign}{plain} {}", currency.code())
    }
}

/// `amount` (not negative) with exactly `digits` decimals.
fn fixed(amount: Decimal, digits: u32) -> String {
    let mut scaled = amount;
    scaled.rescale(digits);
    scaled.to_string()
}

/// `"1234567"` → `"1,234,567"`.
fn group_thousands(whole: &str) -> String {
    let mut out = String::with_capacity(whole.len() + whole.len() / 3);
    for (i, c) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A phone number in E.164 (`+15550000001`) from one written with spaces,
/// dashes, dots or parentheses (`+1 (555) 000-0001`); `00` for `+` is taken.
/// `None` when what is left is not E.164.
pub fn normalize_phone(number: &str) -> Option<String> {
    let compact: String = number
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')' | '\u{a0}' | '\t'))
        .collect();
    let compact = match compact.strip_prefix("00") {
        Some(rest) => format!("+{rest}"),
        None => compact,
    };
    recur_notify::sms::is_e164(&compact).then_some(compact)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use recur_commands::dunning::Template;
    use recur_commands::update_card_link::LinkKey;
    use recur_commands::{CustomerId, InvoiceId};
    use rust_decimal::prelude::FromStr;
    use time::macros::datetime;

    fn money(amount: &str, currency: &str) -> Money {
        Money::new(
            Decimal::from_str(amount).unwrap(),
            Currency::parse(currency).unwrap(),
        )
    }

    #[test]
    fn amounts_read_as_a_customer_reads_them() {
        assert_eq!(format_amount(money("5000", "USD")), "$5,000.00");
        assert_eq!(format_amount(money("5000.5", "USD")), "$5,000.50");
        assert_eq!(format_amount(money("0", "USD")), "$0.00");
        assert_eq!(format_amount(money("999.99", "USD")), "$999.99");
        assert_eq!(format_amount(money("1234567.891", "USD")), "$1,234,567.89");
        assert_eq!(format_amount(money("0.005", "USD")), "$0.01");
        assert_eq!(format_amount(money("100000", "USD")), "$100,000.00");
        assert_eq!(format_amount(money("5000", "EUR")), "5000.00 EUR");
        assert_eq!(format_amount(money("5000", "JPY")), "5000 JPY");
        assert_eq!(format_amount(money("-12.5", "USD")), "-$12.50");
    }

    #[test]
    fn phone_numbers_become_e164() {
        assert_eq!(
            normalize_phone("+1 555 0000001").as_deref(),
            Some("+15550000001")
        );
        assert_eq!(
            normalize_phone("+1 (555) 000-0001").as_deref(),
            Some("+15550000001")
        );
        assert_eq!(
            normalize_phone("+44.20.7946.0958").as_deref(),
            Some("+442079460958")
        );
        assert_eq!(
            normalize_phone("0044 20 7946 0958").as_deref(),
            Some("+442079460958")
        );
        assert_eq!(normalize_phone("555 0000001"), None, "no country code");
        assert_eq!(normalize_phone("+1 555 CALL-NOW"), None);
        assert_eq!(normalize_phone(""), None);
    }

    fn notice(channel: PolicyChannel, template: Template, to: &str) -> Notice {
        Notice {
            message_id: uuid::Uuid::now_v7(),
            channel,
            template,
            to: to.to_owned(),
            customer_name: "Ann Lee".to_owned(),
            plan_name: "Pro Coaching".to_owned(),
            amount_due: money("5000", "USD"),
            customer_id: CustomerId(uuid::Uuid::now_v7()),
            invoice_id: Some(InvoiceId(uuid::Uuid::now_v7())),
            expires_on: None,
            step: 2,
            steps_total: 5,
            last4: Some("4242".to_owned()),
            offer: Some("20% off your next invoice".to_owned()),
            sent_at: datetime!(2026-03-01 12:00:30.5 UTC),
        }
    }

    fn channels(email: bool, sms: bool) -> (DunningChannels, LinkKey) {
        let key = LinkKey::from_bytes(&[9; 32]).unwrap();
        let recorder = recur_notify::Recorder::new();
        let channels = DunningChannels::new(
            email.then(|| Outbound::Recorder(recorder.clone())),
            sms.then(|| Outbound::Recorder(recorder.clone())),
            UpdateCardConfig {
                key: key.clone(),
                public_url: "https://pay.example.com/".to_owned(),
                business_name: "Coaching & Co".to_owned(),
            },
        );
        (channels, key)
    }

    #[tokio::test]
    async fn a_notice_becomes_a_message_with_its_link_and_the_channel_s_template() {
        let (channels, key) = channels(true, true);
        let sms = notice(PolicyChannel::Sms, Template::Offer, "+1 (555) 000-0001");
        let message = channels.message(&sms).unwrap();
        assert_eq!(message.channel, Channel::Sms);
        assert_eq!(message.to, "+15550000001");
        assert_eq!(message.template, "payment_failed_urgent");
        assert_eq!(message.vars.amount, "$5,000.00");
        assert_eq!(message.vars.business_name, "Coaching & Co");
        let token = message
            .vars
            .payment_update_link
            .strip_prefix("https://pay.example.com/update-card/")
            .unwrap();
        let claims = update_card_link::verify(&key, token, sms.sent_at).unwrap();
        assert_eq!(claims.customer_id, sms.customer_id);
        assert_eq!(claims.invoice_id, sms.invoice_id);
        assert_eq!(
            claims.expires_at,
            datetime!(2026-03-08 12:00:30 UTC),
            "7 days after the send, to the second"
        );
        assert!(channels.send(&sms).await.is_ok());

        let email = notice(PolicyChannel::Email, Template::Offer, " ann@example.com ");
        let message = channels.message(&email).unwrap();
        assert_eq!(
            (message.template.as_str(), message.to.as_str()),
            ("offer", "ann@example.com")
        );
        assert!(channels.send(&email).await.is_ok());

        let bad = notice(PolicyChannel::Sms, Template::PaymentFailedUrgent, "call me");
        let refused = channels.send(&bad).await.unwrap_err();
        assert_eq!(
            (refused.retryable, refused.code.as_str()),
            (false, "invalid_recipient")
        );
    }

    #[tokio::test]
    async fn a_channel_not_configured_fails_for_good() {
        let (email_only, _) = channels(true, false);
        let sms = notice(
            PolicyChannel::Sms,
            Template::PaymentFinalNotice,
            "+1 555 0000001",
        );
        let refused = email_only.send(&sms).await.unwrap_err();
        assert_eq!(
            refused,
            SendFailure {
                retryable: false,
                code: NOT_CONFIGURED.to_owned()
            }
        );
        let (sms_only, _) = channels(false, true);
        let email = notice(
            PolicyChannel::Email,
            Template::PaymentFailedGentle,
            "a@b.test",
        );
        assert_eq!(
            sms_only.send(&email).await.unwrap_err().code,
            NOT_CONFIGURED
        );
        let call = notice(
            PolicyChannel::PhoneCall,
            Template::PaymentFailedGentle,
            "+15550000001",
        );
        assert_eq!(
            sms_only.send(&call).await.unwrap_err().code,
            "unsupported_channel"
        );
    }

    /// Every template a campaign can queue, on both channels, through the
    /// message a notice becomes and its rendering: the step's offer is told
    /// when the notice has one, and not a word otherwise.
    #[test]
    fn a_notice_s_offer_reaches_every_step_message() {
        let (channels, _) = channels(true, true);
        let templates = [
            Template::PaymentFailedGentle,
            Template::PaymentFailedUrgent,
            Template::PaymentFinalNotice,
            Template::AuthenticationRequired,
            Template::CardExpiring,
            Template::Offer,
        ];
        for template in templates {
            for (channel, to) in [
                (PolicyChannel::Email, "ann@example.com"),
                (PolicyChannel::Sms, "+15550000001"),
            ] {
                let mut notice = notice(channel, template, to);
                notice.expires_on = Some("2027-03".to_owned());
                notice.offer = Some("7 more days before anything changes".to_owned());
                let message = channels.message(&notice).unwrap();
                assert_eq!(
                    message.vars.offer.as_deref(),
                    Some("7 more days before anything changes")
                );
                let rendered = recur_notify::render(&message).unwrap();
                let name = template.name();
                assert!(
                    rendered
                        .text
                        .contains("7 more days before anything changes"),
                    "{name} ({channel:?}): {}",
                    rendered.text
                );
                if let Some(html) = &rendered.html {
                    assert!(
                        html.contains("7 more days before anything changes"),
                        "{name}"
                    );
                }

                notice.offer = None;
                let message = channels.message(&notice).unwrap();
                assert_eq!(message.vars.offer, None);
                match recur_notify::render(&message) {
                    Ok(rendered) => {
                        let html = rendered.html.unwrap_or_default();
                        for part in [rendered.text.as_str(), html.as_str()] {
                            assert!(!part.contains("more days"), "{name} ({channel:?})");
                            assert!(!part.contains("given you"), "{name} ({channel:?})");
                            assert!(!part.contains("You now have"), "{name} ({channel:?})");
                        }
                    }
                    // The offer's own email cannot go without one (nothing
                    // queues it; by SMS it falls back to the urgent text).
                    Err(recur_notify::NotifyError::MissingVar { var, .. }) => {
                        assert_eq!(
                            (template, channel, var),
                            (Template::Offer, PolicyChannel::Email, "offer")
                        );
                    }
                    Err(other) => panic!("{name} ({channel:?}): {other}"),
                }
            }
        }
    }

    #[test]
    fn sms_without_its_own_form_falls_back_to_the_urgent_text() {
        assert_eq!(
            template_for("payment_failed_gentle", Channel::Sms),
            "payment_failed_urgent"
        );
        assert_eq!(template_for("offer", Channel::Sms), "payment_failed_urgent");
        assert_eq!(
            template_for("payment_final_notice", Channel::Sms),
            "payment_final_notice"
        );
        assert_eq!(template_for("offer", Channel::Email), "offer");
        assert_eq!(
            template_for("payment_failed_gentle", Channel::Email),
            "payment_failed_gentle"
        );
    }
}
