//! Email over SMTP with `lettre`: [`SmtpConfig`] (`RECUR_SMTP_URL`,
//! `RECUR_SMTP_FROM`) and the [`SmtpMailer`] sender.
//!
//! Each message is `multipart/alternative` (text, then HTML) with the
//! `Message-ID` `<{message_id}@recur>`, so a message sent twice (after a crash
//! between the server's answer and the outbox's record) is recognisable by
//! the receiving side. One connection per message (no pool): dunning sends a
//! few messages a minute, and a fresh connection has no stale state to fail on.

use std::fmt;
use std::time::Duration;

use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::Error as SmtpError;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use crate::error::NotifyError;
use crate::message::{Channel, Message};
use crate::render::render;
use crate::send::{Receipt, SendError, Sender, error_chain};

/// The environment variable with the server's URL: `smtp://[user:pass@]host:port`
/// (no TLS), `smtp://…?tls=required` (STARTTLS), `smtps://…` (TLS from the start).
pub const SMTP_URL_VAR: &str = "RECUR_SMTP_URL";

/// The environment variable with the sender's address, e.g.
/// `Billing <billing@example.com>`.
pub const SMTP_FROM_VAR: &str = "RECUR_SMTP_FROM";

/// How long sending one message may take, from connecting to the server's
/// answer to its data. (lettre's own timeout covers connecting only: a server
/// that accepts and then stalls would hold the send forever.)
pub const SMTP_TIMEOUT: Duration = Duration::from_secs(10);

/// Where to send email from. The URL's password never shows in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct SmtpConfig {
    url: String,
    /// The `From` mailbox.
    pub from: Mailbox,
    /// The whole exchange's timeout ([`SMTP_TIMEOUT`] by default).
    pub timeout: Duration,
}

impl SmtpConfig {
    /// A configuration from the server URL and the sender's address.
    ///
    /// # Errors
    /// [`NotifyError::Config`] for a URL that is not `smtp://` or `smtps://`,
    /// has no host or an unknown `tls=` value, or a `from` that is not an email
    /// address; the message never includes the URL's password.
    pub fn new(url: &str, from: &str) -> Result<Self, NotifyError> {
        let url = url.trim();
        let shown = redact_url(url);
        let rest = url
            .strip_prefix("smtp://")
            .or_else(|| url.strip_prefix("smtps://"))
            .ok_or_else(|| {
                NotifyError::Config(format!(
                    "{SMTP_URL_VAR} must be smtp://[user:pass@]host:port or smtps://…, got {shown}"
                ))
            })?;
        let authority = rest.split(['/', '?']).next().unwrap_or("");
        let host = authority.rsplit('@').next().unwrap_or("");
        if host.is_empty() || host.starts_with(':') {
            return Err(NotifyError::Config(format!(
                "{SMTP_URL_VAR} has no host: {shown}"
            )));
        }
        if let Some((_, query)) = rest.split_once('?') {
            for pair in query.split('&') {
                if !matches!(pair, "tls=required" | "tls=opportunistic") {
                    return Err(NotifyError::Config(format!(
                        "{SMTP_URL_VAR}: the only query parameter is tls=required or \
                         tls=opportunistic (STARTTLS), got {shown}"
                    )));
                }
            }
        }
        let from: Mailbox = from.trim().parse().map_err(|_| {
            NotifyError::Config(format!(
                "{SMTP_FROM_VAR} must be an email address, e.g. \"Billing <billing@example.com>\""
            ))
        })?;
        Ok(Self {
            url: url.to_owned(),
            from,
            timeout: SMTP_TIMEOUT,
        })
    }

    /// Reads `RECUR_SMTP_URL` and `RECUR_SMTP_FROM`: `None` when the URL is
    /// unset (email is not configured).
    ///
    /// # Errors
    /// [`NotifyError::Config`] when the URL is set and malformed, or the from
    /// address is missing or malformed.
    pub fn from_env() -> Result<Option<Self>, NotifyError> {
        let Ok(url) = std::env::var(SMTP_URL_VAR) else {
            return Ok(None);
        };
        let from = std::env::var(SMTP_FROM_VAR).map_err(|_| {
            NotifyError::Config(format!(
                "{SMTP_URL_VAR} is set but {SMTP_FROM_VAR} is not: email needs a sender address"
            ))
        })?;
        Self::new(&url, &from).map(Some)
    }

    /// The server URL with its password replaced by `***`, for logs.
    pub fn url_redacted(&self) -> String {
        redact_url(&self.url)
    }
}

impl fmt::Debug for SmtpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpConfig")
            .field("url", &self.url_redacted())
            .field("from", &self.from.to_string())
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// `scheme://user:password@host…` → `scheme://user:***@host…`.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{host}{tail}")
            } else {
                format!("{scheme}://{user}@{host}{tail}")
            }
        }
        None => url.to_owned(),
    }
}

/// Sends [`Channel::Email`] messages to one SMTP server.
#[derive(Clone)]
pub struct SmtpMailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    timeout: Duration,
    url_redacted: String,
}

impl SmtpMailer {
    /// A mailer for `config`. Connects to nothing until the first message.
    ///
    /// # Errors
    /// [`NotifyError::Config`] when lettre refuses the URL (for instance a
    /// password that is not valid percent-encoding).
    pub fn new(config: &SmtpConfig) -> Result<Self, NotifyError> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(&config.url)
            .map_err(|e| {
                NotifyError::Config(format!(
                    "{SMTP_URL_VAR} {} is not usable: {e}",
                    config.url_redacted()
                ))
            })?
            .timeout(Some(config.timeout))
            .build();
        Ok(Self {
            transport,
            from: config.from.clone(),
            timeout: config.timeout,
            url_redacted: config.url_redacted(),
        })
    }

    /// The email for `message`: headers, and both parts from its template.
    fn email(&self, message: &Message) -> Result<lettre::Message, SendError> {
        let rendered = render(message).map_err(|e| SendError::render(&e))?;
        let to: Mailbox = message.to.trim().parse().map_err(|_| {
            SendError::new(
                false,
                "invalid_recipient",
                "the recipient is not an email address",
            )
        })?;
        let (Some(subject), Some(html)) = (rendered.subject, rendered.html) else {
            return Err(SendError::new(
                false,
                "render",
                format!("template {:?} has no subject or HTML", message.template),
            ));
        };
        lettre::Message::builder()
            .message_id(Some(message_id_header(message.message_id)))
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .multipart(MultiPart::alternative_plain_html(rendered.text, html))
            .map_err(|e| SendError::scrubbed(false, "invalid_email", &e.to_string(), message))
    }
}

/// The `Message-ID` of a message: `<{uuid}@recur>`.
pub fn message_id_header(message_id: uuid::Uuid) -> String {
    format!("<{message_id}@recur>")
}

impl fmt::Debug for SmtpMailer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpMailer")
            .field("url", &self.url_redacted)
            .field("from", &self.from.to_string())
            .finish_non_exhaustive()
    }
}

impl Sender for SmtpMailer {
    async fn send(&self, message: &Message) -> Result<Receipt, SendError> {
        if message.channel != Channel::Email {
            return Err(SendError::wrong_channel("SMTP", message));
        }
        let email = self.email(message)?;
        let provider_id = message_id_header(message.message_id);
        let sent = tokio::time::timeout(self.timeout, self.transport.send(email)).await;
        match sent {
            Ok(Ok(_)) => Ok(Receipt { provider_id }),
            // The message may have been delivered if the data was sent before
            // the stall: a retry then sends it twice, with the same Message-ID.
            Err(_elapsed) => Err(SendError::new(
                true,
                "smtp_timeout",
                format!(
                    "no answer from {} within {} ms",
                    self.url_redacted,
                    self.timeout.as_millis()
                ),
            )),
            Ok(Err(e)) => {
                let (retryable, code) = classify(&e);
                Err(SendError::scrubbed(
                    retryable,
                    code,
                    &error_chain(&e),
                    message,
                ))
            }
        }
    }
}

/// Whether an SMTP failure may pass on a later try, and its code.
///
/// A 4xx reply, a timeout, a refused or dropped connection and a TLS failure
/// are retryable; a 5xx reply is not. Authentication replies (530, 534, 535,
/// 538) are 5xx and so not retryable, but get their own code (`smtp_auth`):
/// they are about our credentials, not the message, and worth an alert.
fn classify(error: &SmtpError) -> (bool, &'static str) {
    if error.is_timeout() {
        return (true, "smtp_timeout");
    }
    if let Some(code) = error.status() {
        let code = u16::from(code);
        return match code {
            400..=499 => (true, "smtp_transient"),
            530 | 534 | 535 | 538 => (false, "smtp_auth"),
            _ => (false, "smtp_rejected"),
        };
    }
    if error.is_tls() {
        return (true, "smtp_tls");
    }
    // Connection refused or reset, DNS, an unparsable reply: the server or the
    // way to it, not the message.
    (true, "smtp_unavailable")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_password_never_shows_and_bad_urls_are_refused() {
        let config = SmtpConfig::new(
            "smtp://mailer:hunter2@127.0.0.1:2525",
            "billing@example.com",
        )
        .unwrap();
        let printed = format!("{config:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("mailer:***@127.0.0.1:2525"), "{printed}");
        for bad in [
            "http://mailer:hunter2@host",
            "smtp://mailer:hunter2@",
            "smtp://mailer:hunter2@host:25?tls=maybe",
        ] {
            let error = SmtpConfig::new(bad, "billing@example.com").unwrap_err();
            assert!(!error.to_string().contains("hunter2"), "{error}");
        }
        assert!(SmtpConfig::new("smtp://host:25", "not an address").is_err());
        assert!(SmtpConfig::new("smtps://host", "Billing <b@example.com>").is_ok());
        assert!(SmtpConfig::new("smtp://host:587?tls=required", "b@example.com").is_ok());
    }

    #[test]
    fn a_tls_url_builds_a_mailer() {
        // STARTTLS and implicit TLS need lettre's rustls; this checks the build has it.
        for url in [
            "smtps://u:p@mail.example",
            "smtp://mail.example:587?tls=required",
        ] {
            SmtpMailer::new(&SmtpConfig::new(url, "b@example.com").unwrap()).unwrap();
        }
    }
}
