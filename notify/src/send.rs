//! Sending: the [`Sender`] trait, what it answers, and the senders that are
//! not a protocol — [`Outbound`], [`Channels`] and the in-memory [`Recorder`].

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use crate::message::{Channel, Message};
use crate::render::{Rendered, render};
use crate::sms::TwilioSms;
use crate::smtp::SmtpMailer;

/// The provider's acknowledgement of one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// SMTP: the `Message-ID` header we sent (`<{message_id}@recur>`). SMS: the
    /// provider's message sid (`SM…`). [`Recorder`]: `recorded-{message_id}`.
    pub provider_id: String,
}

/// Why a message was not sent, and whether sending it again later may work.
///
/// `detail` is for operators: it never contains the recipient, the customer's
/// name or the message body (they are replaced by `<recipient>` and `<name>`
/// where a server echoes them), and is at most [`SendError::DETAIL_LEN_MAX`]
/// bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendError {
    /// `true` when the same message may go through later (the server is down,
    /// slow, busy or rate-limiting); `false` when it never will as it is (the
    /// recipient or the message is refused, the template is broken).
    pub retryable: bool,
    /// A stable code for metrics and alerts (docs/notify.md lists them), e.g.
    /// `smtp_unavailable`, `smtp_rejected`, `sms_auth`, `sms_server`.
    pub code: &'static str,
    /// What happened, scrubbed of personal data.
    pub detail: String,
}

impl SendError {
    /// The longest `detail` kept, in bytes.
    pub const DETAIL_LEN_MAX: usize = 500;

    /// An error whose detail holds no personal data by construction (our own
    /// wording, no server text).
    pub fn new(retryable: bool, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            retryable,
            code,
            detail: truncate(detail.into()),
        }
    }

    /// An error whose detail comes from a server or a library and may echo the
    /// recipient or the customer's name: those are replaced first.
    pub fn scrubbed(retryable: bool, code: &'static str, detail: &str, message: &Message) -> Self {
        Self::new(retryable, code, scrub(detail, message))
    }

    /// A message given to a sender of the other channel.
    pub(crate) fn wrong_channel(sender: &str, message: &Message) -> Self {
        Self::new(
            false,
            "wrong_channel",
            format!(
                "the {sender} sender cannot send a {} message",
                message.channel
            ),
        )
    }

    /// The message did not render (unknown template, missing variable).
    pub(crate) fn render(error: &crate::NotifyError) -> Self {
        // The render errors name templates and variables, never values.
        Self::new(false, "render", error.to_string())
    }
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let retry = if self.retryable {
            "retryable"
        } else {
            "not retryable"
        };
        write!(f, "{} ({retry}): {}", self.code, self.detail)
    }
}

impl std::error::Error for SendError {}

/// Sends one message through one provider.
///
/// A sender does not retry and does not deduplicate: the outbox that calls it
/// does both, from [`SendError::retryable`] and [`Message::message_id`].
pub trait Sender: Send + Sync {
    /// Renders `message` and hands it to the provider.
    ///
    /// # Errors
    /// [`SendError`]: retryable or not, with a stable code.
    fn send(&self, message: &Message) -> impl Future<Output = Result<Receipt, SendError>> + Send;
}

/// One concrete sender of any kind, for holding senders chosen at start-up
/// (from configuration) in one type. Each sends its own channel only: an email
/// given to [`Outbound::Sms`] is refused (`wrong_channel`); a [`Recorder`]
/// takes both.
#[derive(Clone, Debug)]
pub enum Outbound {
    /// Email over SMTP.
    Smtp(SmtpMailer),
    /// SMS through a Twilio-compatible API.
    Sms(TwilioSms),
    /// Nothing leaves the process: every message is recorded.
    Recorder(Recorder),
}

impl Sender for Outbound {
    async fn send(&self, message: &Message) -> Result<Receipt, SendError> {
        match self {
            Self::Smtp(sender) => sender.send(message).await,
            Self::Sms(sender) => sender.send(message).await,
            Self::Recorder(sender) => sender.send(message).await,
        }
    }
}

/// The email sender and the SMS sender, chosen by [`Message::channel`]: what
/// the outbox holds.
#[derive(Clone, Debug)]
pub struct Channels {
    /// Sends [`Channel::Email`] messages.
    pub email: Outbound,
    /// Sends [`Channel::Sms`] messages.
    pub sms: Outbound,
}

impl Channels {
    /// Both channels into one [`Recorder`] (`recur demo` without SMTP or SMS
    /// configured); the recorder is returned too, for counting.
    pub fn recording() -> (Self, Recorder) {
        let recorder = Recorder::new();
        let channels = Self {
            email: Outbound::Recorder(recorder.clone()),
            sms: Outbound::Recorder(recorder.clone()),
        };
        (channels, recorder)
    }
}

impl Sender for Channels {
    async fn send(&self, message: &Message) -> Result<Receipt, SendError> {
        match message.channel {
            Channel::Email => self.email.send(message).await,
            Channel::Sms => self.sms.send(message).await,
        }
    }
}

/// A message the [`Recorder`] was asked to send, as rendered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    /// The message as given.
    pub message: Message,
    /// What it rendered to.
    pub rendered: Rendered,
}

/// A sender that sends nothing and records every message it is asked to send,
/// rendered (so a broken template fails here as it would over SMTP). Clones
/// share one record. For `recur demo` when no provider is configured, and for
/// tests that count.
///
/// It keeps the first [`Recorder::KEEP_MAX`] messages; counts go on past that.
#[derive(Clone, Default)]
pub struct Recorder {
    state: Arc<Mutex<RecorderState>>,
}

#[derive(Default)]
struct RecorderState {
    kept: Vec<Recorded>,
    email: u64,
    sms: u64,
}

impl Recorder {
    /// Messages kept in memory at most (a demo year sends a few thousand).
    pub const KEEP_MAX: usize = 100_000;

    /// An empty recorder.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, RecorderState> {
        // A panic elsewhere while holding the lock leaves a consistent Vec and
        // counters: nothing to repair.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many messages of `channel` it was asked to send (and rendered).
    pub fn count(&self, channel: Channel) -> u64 {
        let state = self.state();
        match channel {
            Channel::Email => state.email,
            Channel::Sms => state.sms,
        }
    }

    /// The messages kept, in the order they were sent.
    pub fn recorded(&self) -> Vec<Recorded> {
        self.state().kept.clone()
    }

    /// The first kept message with this id, if any.
    pub fn find(&self, message_id: uuid::Uuid) -> Option<Recorded> {
        self.state()
            .kept
            .iter()
            .find(|r| r.message.message_id == message_id)
            .cloned()
    }
}

impl fmt::Debug for Recorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state();
        f.debug_struct("Recorder")
            .field("email", &state.email)
            .field("sms", &state.sms)
            .field("kept", &state.kept.len())
            .finish()
    }
}

impl Sender for Recorder {
    async fn send(&self, message: &Message) -> Result<Receipt, SendError> {
        let rendered = render(message).map_err(|e| SendError::render(&e))?;
        let mut state = self.state();
        match message.channel {
            Channel::Email => state.email += 1,
            Channel::Sms => state.sms += 1,
        }
        if state.kept.len() < Self::KEEP_MAX {
            state.kept.push(Recorded {
                message: message.clone(),
                rendered,
            });
        }
        Ok(Receipt {
            provider_id: format!("recorded-{}", message.message_id),
        })
    }
}

/// An error and its causes on one line (lettre's and reqwest's own messages
/// are terse: "Connection error", "error sending request").
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// `detail` with the recipient (whole, its address part, a phone number with or
/// without its `+`) and the customer's name replaced, ASCII case-insensitively.
fn scrub(detail: &str, message: &Message) -> String {
    let to = message.to.trim();
    let mut needles: Vec<(&str, &str)> = vec![(to, "<recipient>")];
    // `Ann <ann@example.com>`: the address alone too.
    if let (Some(open), Some(close)) = (to.rfind('<'), to.rfind('>'))
        && open < close
    {
        needles.push((&to[open + 1..close], "<recipient>"));
    }
    if let Some(digits) = to.strip_prefix('+') {
        needles.push((digits, "<recipient>"));
    }
    let name = message.vars.customer_name.trim();
    // Very short names would blank out ordinary words.
    if name.chars().count() >= 3 {
        needles.push((name, "<name>"));
    }
    let mut out = detail.to_owned();
    for (needle, mask) in needles {
        if needle.len() >= 3 {
            out = replace_ascii_case_insensitive(&out, needle, mask);
        }
    }
    out
}

fn replace_ascii_case_insensitive(haystack: &str, needle: &str, with: &str) -> String {
    // ASCII lowercasing keeps every byte offset, so positions found in the
    // lowered copy are char boundaries of the original.
    let lower = haystack.to_ascii_lowercase();
    let needle = needle.to_ascii_lowercase();
    let mut out = String::with_capacity(haystack.len());
    let mut from = 0;
    while let Some(found) = lower[from..].find(&needle) {
        let start = from + found;
        out.push_str(&haystack[from..start]);
        out.push_str(with);
        from = start + needle.len();
    }
    out.push_str(&haystack[from..]);
    out
}

fn truncate(mut detail: String) -> String {
    if detail.len() > SendError::DETAIL_LEN_MAX {
        let mut end = SendError::DETAIL_LEN_MAX;
        while !detail.is_char_boundary(end) {
            end -= 1;
        }
        detail.truncate(end);
        detail.push('…');
    }
    detail
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::message::MessageVars;

    fn message(to: &str, name: &str) -> Message {
        Message {
            message_id: uuid::Uuid::nil(),
            channel: Channel::Email,
            to: to.to_owned(),
            template: "payment_failed_gentle".to_owned(),
            vars: MessageVars {
                customer_name: name.to_owned(),
                plan_name: "Pro".to_owned(),
                amount: "$1.00".to_owned(),
                payment_update_link: "http://x/".to_owned(),
                business_name: "B".to_owned(),
                last4: None,
                expires_on: None,
                offer: None,
                step: 1,
                steps_total: 1,
            },
        }
    }

    #[test]
    fn a_server_echoing_the_recipient_or_name_is_scrubbed_from_the_detail() {
        let m = message("Ann Lee <Ann.Lee@Example.com>", "Ann Lee");
        let e = SendError::scrubbed(
            false,
            "smtp_rejected",
            "550 5.1.1 <ann.lee@example.com>: user unknown (Ann Lee)",
            &m,
        );
        assert_eq!(e.detail, "550 5.1.1 <<recipient>>: user unknown (<name>)");
        let sms = message("+15005550001", "Bo");
        let e = SendError::scrubbed(
            false,
            "sms_rejected",
            "The 'To' number +15005550001 (15005550001) is not valid, Bo",
            &sms,
        );
        assert_eq!(
            e.detail,
            "The 'To' number <recipient> (<recipient>) is not valid, Bo"
        );
    }

    #[test]
    fn a_long_detail_is_cut_on_a_char_boundary() {
        let e = SendError::new(true, "x", "é".repeat(400));
        assert!(e.detail.len() <= SendError::DETAIL_LEN_MAX + '…'.len_utf8());
        assert!(e.detail.ends_with('…'));
    }
}
