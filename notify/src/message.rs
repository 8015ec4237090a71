//! A message to send: who, by which channel, which template, with what values.

use std::fmt;

/// The business name the brief's templates sign with ("… Team"); the caller
/// puts it in [`MessageVars::business_name`] when its configuration names none.
pub const DEFAULT_BUSINESS_NAME: &str = "Christopher's AI Coaching";

/// How a message reaches the customer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    /// Email over SMTP: a subject, an HTML part and a text part.
    Email,
    /// A text message through a Twilio-compatible API: text only.
    Sms,
}

impl Channel {
    /// `email` or `sms`: the name in configuration, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Sms => "sms",
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One message for one customer.
///
/// Its `Debug` output leaves out the recipient and the variables (personal
/// data): messages end up in logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Message {
    /// A UUIDv7, made once when the message is decided and kept across retries:
    /// the SMTP `Message-ID` (`<{message_id}@recur>`) and the SMS idempotency
    /// token are derived from it, so a duplicate can be told apart.
    pub message_id: uuid::Uuid,
    /// Email or SMS.
    pub channel: Channel,
    /// An email address (`ann@example.com` or `Ann <ann@example.com>`) or an
    /// E.164 phone number (`+15005550006`), by channel.
    pub to: String,
    /// The template's name, e.g. `payment_failed_gentle` ([`crate::templates`]).
    pub template: String,
    /// The values the template prints.
    pub vars: MessageVars,
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("message_id", &self.message_id)
            .field("channel", &self.channel)
            .field("to", &"<redacted>")
            .field("template", &self.template)
            .field("vars", &self.vars)
            .finish()
    }
}

/// The values a template may print. Strings are printed as given: amounts and
/// dates come formatted by the caller (`"$5,000.00"`, `"March 3, 2027"`). In
/// HTML they are escaped; in text and SMS they are not.
#[derive(Clone, PartialEq, Eq)]
pub struct MessageVars {
    /// The customer's name as they gave it.
    pub customer_name: String,
    /// The plan's display name.
    pub plan_name: String,
    /// The amount due, formatted with its currency, e.g. `"$5,000.00"`.
    pub amount: String,
    /// The customer's update-card (or confirm-payment) link.
    pub payment_update_link: String,
    /// Who signs the message; [`DEFAULT_BUSINESS_NAME`] unless configured.
    pub business_name: String,
    /// The card's last four digits (`card_expiring` needs it).
    pub last4: Option<String>,
    /// When the card expires, formatted (`card_expiring` needs it).
    pub expires_on: Option<String>,
    /// The offer applied, as a phrase that follows "we have applied", e.g.
    /// `"a 20% discount on your next 3 months"` (`offer` needs it).
    pub offer: Option<String>,
    /// This message's step in its campaign, from 1.
    pub step: u32,
    /// How many steps the campaign has.
    pub steps_total: u32,
}

impl fmt::Debug for MessageVars {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Names, links (they carry a token) and card digits stay out of logs.
        f.debug_struct("MessageVars")
            .field("plan_name", &self.plan_name)
            .field("amount", &self.amount)
            .field("business_name", &self.business_name)
            .field("last4", &self.last4.as_ref().map(|_| "<redacted>"))
            .field("expires_on", &self.expires_on)
            .field("offer", &self.offer)
            .field("step", &self.step)
            .field("steps_total", &self.steps_total)
            .finish_non_exhaustive()
    }
}
