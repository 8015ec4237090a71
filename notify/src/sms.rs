//! SMS through a Twilio-compatible Messages API: [`TwilioConfig`]
//! (`RECUR_SMS_URL`, `RECUR_SMS_ACCOUNT_SID`, `RECUR_SMS_AUTH_TOKEN`,
//! `RECUR_SMS_FROM`) and the [`TwilioSms`] sender.
//!
//! One request per message: `POST {base}/2010-04-01/Accounts/{sid}/Messages.json`
//! with the form fields `To`, `From` and `Body`, HTTP basic auth (account sid,
//! auth token), and `I-Twilio-Idempotency-Token: {message_id}`.
//!
//! Plain HTTP only: reqwest is built without TLS in this workspace (enabling
//! its rustls would switch every reqwest client in the binary to needing a
//! crypto provider), so an `https://` base is refused at start; reach Twilio
//! through a local TLS forwarder (docs/notify.md).

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use crate::error::NotifyError;
use crate::message::{Channel, Message};
use crate::render::render;
use crate::send::{Receipt, SendError, Sender, error_chain};

/// The environment variable with the API's base URL.
pub const SMS_URL_VAR: &str = "RECUR_SMS_URL";
/// The environment variable with the account sid (`AC…`); SMS is configured
/// when it is set.
pub const SMS_ACCOUNT_SID_VAR: &str = "RECUR_SMS_ACCOUNT_SID";
/// The environment variable with the auth token.
pub const SMS_AUTH_TOKEN_VAR: &str = "RECUR_SMS_AUTH_TOKEN";
/// The environment variable with the sending number (E.164) or sender id.
pub const SMS_FROM_VAR: &str = "RECUR_SMS_FROM";
/// Twilio's API, when `RECUR_SMS_URL` is not set. This build refuses it (no
/// TLS): see the module's docs.
pub const SMS_URL_DEFAULT: &str = "https://api.twilio.com";
/// The header carrying [`Message::message_id`].
pub const IDEMPOTENCY_HEADER: &str = "I-Twilio-Idempotency-Token";
/// How long one request may take, connecting included.
pub const SMS_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest answer read from the API, in bytes (Twilio's are about 1 KiB).
pub const SMS_RESPONSE_LEN_MAX: usize = 64 * 1024;

/// `+` and 7 to 15 digits, the first not 0: a phone number in E.164 form.
pub fn is_e164(number: &str) -> bool {
    number.strip_prefix('+').is_some_and(|digits| {
        (7..=15).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0')
    })
}

/// An auth token; never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthToken(String);

impl AuthToken {
    /// Wraps a token.
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }
}

impl fmt::Debug for AuthToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthToken(redacted)")
    }
}

/// Where to send SMS from and how to authenticate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TwilioConfig {
    /// The API's base, without a trailing `/` (`http://127.0.0.1:8080`).
    pub base_url: String,
    /// The account sid, `AC…`; also the basic-auth user name.
    pub account_sid: String,
    /// The auth token; the basic-auth password.
    pub auth_token: AuthToken,
    /// The sending number (E.164) or alphanumeric sender id.
    pub from: String,
}

impl TwilioConfig {
    /// A configuration, checked.
    ///
    /// # Errors
    /// [`NotifyError::Config`] for a base that is not `http://` (an `https://`
    /// one with a way out), carries credentials, or an empty sid, token or from.
    pub fn new(
        base_url: &str,
        account_sid: &str,
        auth_token: &str,
        from: &str,
    ) -> Result<Self, NotifyError> {
        let base_url = base_url.trim().trim_end_matches('/');
        if base_url.starts_with("https://") {
            return Err(NotifyError::Config(format!(
                "{SMS_URL_VAR} is {base_url}, and recur's HTTP client is built without TLS: \
                 point {SMS_URL_VAR} at a local TLS forwarder (http://127.0.0.1:PORT) that \
                 forwards to {base_url}"
            )));
        }
        let Some(rest) = base_url.strip_prefix("http://") else {
            return Err(NotifyError::Config(format!(
                "{SMS_URL_VAR} must be an http:// URL, got {base_url:?}"
            )));
        };
        let authority = rest.split('/').next().unwrap_or("");
        if authority.is_empty() {
            return Err(NotifyError::Config(format!("{SMS_URL_VAR} has no host")));
        }
        if authority.contains('@') {
            return Err(NotifyError::Config(format!(
                "{SMS_URL_VAR} must not carry credentials: they go in \
                 {SMS_ACCOUNT_SID_VAR} and {SMS_AUTH_TOKEN_VAR}"
            )));
        }
        let account_sid = account_sid.trim();
        // The sid goes into the URL path: letters and digits only.
        if account_sid.is_empty() || !account_sid.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(NotifyError::Config(format!(
                "{SMS_ACCOUNT_SID_VAR} must be the account sid (AC…, letters and digits)"
            )));
        }
        if auth_token.trim().is_empty() {
            return Err(NotifyError::Config(format!(
                "{SMS_AUTH_TOKEN_VAR} is empty"
            )));
        }
        let from = from.trim();
        if from.is_empty() {
            return Err(NotifyError::Config(format!(
                "{SMS_FROM_VAR} is empty: SMS needs a sending number (E.164) or sender id"
            )));
        }
        Ok(Self {
            base_url: base_url.to_owned(),
            account_sid: account_sid.to_owned(),
            auth_token: AuthToken::new(auth_token.trim()),
            from: from.to_owned(),
        })
    }

    /// Reads the `RECUR_SMS_…` variables: `None` when `RECUR_SMS_ACCOUNT_SID`
    /// is unset (SMS is not configured). `RECUR_SMS_URL` defaults to
    /// [`SMS_URL_DEFAULT`], which this build refuses.
    ///
    /// # Errors
    /// [`NotifyError::Config`] when the sid is set and the rest is missing or
    /// malformed.
    pub fn from_env() -> Result<Option<Self>, NotifyError> {
        let Ok(sid) = std::env::var(SMS_ACCOUNT_SID_VAR) else {
            return Ok(None);
        };
        let required = |var: &str| {
            std::env::var(var).map_err(|_| {
                NotifyError::Config(format!("{SMS_ACCOUNT_SID_VAR} is set but {var} is not"))
            })
        };
        let token = required(SMS_AUTH_TOKEN_VAR)?;
        let from = required(SMS_FROM_VAR)?;
        let base = std::env::var(SMS_URL_VAR).unwrap_or_else(|_| SMS_URL_DEFAULT.to_owned());
        Self::new(&base, &sid, &token, &from).map(Some)
    }
}

/// Sends [`Channel::Sms`] messages through a Twilio-compatible API.
#[derive(Clone)]
pub struct TwilioSms {
    client: reqwest::Client,
    messages_url: String,
    config: TwilioConfig,
}

impl TwilioSms {
    /// A sender for the API at `base` (see [`TwilioConfig::new`]).
    ///
    /// # Errors
    /// [`NotifyError::Config`] as [`TwilioConfig::new`], or when the HTTP
    /// client cannot be built.
    pub fn new(
        base: &str,
        account_sid: &str,
        auth_token: &str,
        from: &str,
    ) -> Result<Self, NotifyError> {
        Self::from_config(TwilioConfig::new(base, account_sid, auth_token, from)?)
    }

    /// A sender for `config`.
    ///
    /// # Errors
    /// [`NotifyError::Config`] when the HTTP client cannot be built.
    pub fn from_config(config: TwilioConfig) -> Result<Self, NotifyError> {
        let client = reqwest::Client::builder()
            .timeout(SMS_TIMEOUT)
            // A POST redirected becomes a GET elsewhere: never follow.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| NotifyError::Config(format!("cannot build the SMS HTTP client: {e}")))?;
        let messages_url = format!(
            "{}/2010-04-01/Accounts/{}/Messages.json",
            config.base_url, config.account_sid
        );
        Ok(Self {
            client,
            messages_url,
            config,
        })
    }

    async fn post(&self, message: &Message, body: String) -> Result<Receipt, SendError> {
        let response = self
            .client
            .post(&self.messages_url)
            .basic_auth(&self.config.account_sid, Some(&self.config.auth_token.0))
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(IDEMPOTENCY_HEADER, message.message_id.to_string())
            .body(body)
            .send()
            .await
            .map_err(|e| {
                let code = if e.is_timeout() {
                    "sms_timeout"
                } else {
                    "sms_unavailable"
                };
                SendError::scrubbed(true, code, &error_chain(&e), message)
            })?;
        let status = response.status().as_u16();
        let answer = read_limited(response).await.map_err(|e| {
            // The request went through; only the answer was lost. A retry may
            // send the SMS twice, but not retrying may lose it: the outbox
            // decides, with the idempotency token as the provider's hint.
            SendError::scrubbed(true, "sms_unavailable", &e, message)
        })?;
        if (200..300).contains(&status) {
            return match serde_json::from_slice::<Created>(&answer) {
                Ok(created) if !created.sid.is_empty() => {
                    tracing::debug!(sid = %created.sid, status = %created.status, "SMS accepted");
                    Ok(Receipt {
                        provider_id: created.sid,
                    })
                }
                // Accepted, so probably sent: not retried, to not send it twice.
                _ => Err(SendError::new(
                    false,
                    "sms_bad_response",
                    format!("HTTP {status} without a message sid: the SMS may have been sent"),
                )),
            };
        }
        let detail = match serde_json::from_slice::<Failed>(&answer) {
            Ok(failed) => format!(
                "HTTP {status}, error {}: {}",
                failed
                    .code
                    .map_or_else(|| "-".to_owned(), |c| c.to_string()),
                failed.message
            ),
            Err(_) => format!("HTTP {status} with no Twilio error body"),
        };
        let (retryable, code) = match status {
            429 => (true, "sms_rate_limited"),
            401 | 403 => (false, "sms_auth"),
            400..=499 => (false, "sms_rejected"),
            500..=599 => (true, "sms_server"),
            _ => (false, "sms_bad_response"),
        };
        Err(SendError::scrubbed(retryable, code, &detail, message))
    }
}

/// Twilio's answer to a created message (the fields we use).
#[derive(Deserialize)]
struct Created {
    #[serde(default)]
    sid: String,
    #[serde(default)]
    status: String,
}

/// Twilio's error body: `{"code": 21211, "message": "…", "more_info": "…", "status": 400}`.
#[derive(Deserialize)]
struct Failed {
    code: Option<u32>,
    #[serde(default)]
    message: String,
}

async fn read_limited(mut response: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut answer = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("reading the answer: {}", error_chain(&e)))?
    {
        if answer.len() + chunk.len() > SMS_RESPONSE_LEN_MAX {
            return Err(format!(
                "the answer is longer than {SMS_RESPONSE_LEN_MAX} bytes"
            ));
        }
        answer.extend_from_slice(&chunk);
    }
    Ok(answer)
}

impl fmt::Debug for TwilioSms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TwilioSms")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Sender for TwilioSms {
    async fn send(&self, message: &Message) -> Result<Receipt, SendError> {
        if message.channel != Channel::Sms {
            return Err(SendError::wrong_channel("SMS", message));
        }
        let rendered = render(message).map_err(|e| SendError::render(&e))?;
        let to = message.to.trim();
        if !is_e164(to) {
            return Err(SendError::new(
                false,
                "invalid_recipient",
                "the recipient is not a phone number in E.164 form (+ and digits)",
            ));
        }
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("To", to)
            .append_pair("From", &self.config.from)
            .append_pair("Body", &rendered.text)
            .finish();
        self.post(message, body).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn e164_is_a_plus_and_7_to_15_digits_not_starting_with_0() {
        assert!(is_e164("+15005550006"));
        assert!(is_e164("+447700900123"));
        assert!(!is_e164("15005550006"));
        assert!(!is_e164("+0123456789"));
        assert!(!is_e164("+1 500 555 0006"));
        assert!(!is_e164("+1234567890123456"));
        assert!(!is_e164("+123456"));
    }

    #[test]
    fn https_is_refused_with_a_way_out_and_the_token_never_shows() {
        let error = TwilioConfig::new(SMS_URL_DEFAULT, "AC1", "hunter2", "+15005550006")
            .unwrap_err()
            .to_string();
        assert!(error.contains("TLS forwarder"), "{error}");
        let error = TwilioConfig::new("http://u:hunter2@h", "AC1", "t", "+1").unwrap_err();
        assert!(!error.to_string().contains("hunter2"), "{error}");
        assert!(TwilioConfig::new("http://h", "AC/../x", "t", "+1").is_err());
        let config = TwilioConfig::new("http://127.0.0.1:9/", "AC1", "hunter2", "+1").unwrap();
        assert_eq!(config.base_url, "http://127.0.0.1:9");
        assert!(!format!("{config:?}").contains("hunter2"));
    }
}
