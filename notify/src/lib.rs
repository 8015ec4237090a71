//! Recur's dunning channels: what a customer is told, and the two ways it is sent.
//!
//! - [`message`]: a [`Message`] to send — its id (UUIDv7, the idempotency key),
//!   [`Channel`], recipient, template name and [`MessageVars`].
//! - [`render`](mod@render): the templates in `notify/templates/` (minijinja, compiled
//!   into the binary), [`render()`] into a [`Rendered`] subject, HTML and text, and
//!   [`templates()`] listing which template exists on which channel. Pure: no I/O.
//! - [`send`]: the [`Sender`] trait, its [`Receipt`] and [`SendError`] (retryable
//!   or not, a stable code, a detail without the recipient or the body),
//!   [`Outbound`] (one concrete sender of either kind), [`Channels`] (email and
//!   SMS senders chosen by the message's channel) and the in-memory [`Recorder`].
//! - [`smtp`]: [`SmtpMailer`], email over SMTP with `lettre` (`RECUR_SMTP_URL`,
//!   `RECUR_SMTP_FROM`).
//! - [`sms`]: [`TwilioSms`], SMS through a Twilio-compatible Messages API
//!   (`RECUR_SMS_URL`, `RECUR_SMS_ACCOUNT_SID`, `RECUR_SMS_AUTH_TOKEN`,
//!   `RECUR_SMS_FROM`).
//! - `fake` (cargo feature `fake`): `TwilioFake`, a local stand-in for Twilio's
//!   Messages API that checks each request as Twilio would.
//!
//! Only sending does I/O; deciding what to send and rendering it do none.
//! docs/notify.md tells the templates, variables, configuration and error mapping.
//!
//! ```
//! use recur_notify::{Channel, Message, MessageVars, Recorder, Sender, render};
//!
//! let message = Message {
//!     message_id: uuid::Uuid::now_v7(),
//!     channel: Channel::Sms,
//!     to: "+15005550006".to_owned(),
//!     template: "payment_failed_urgent".to_owned(),
//!     vars: MessageVars {
//!         customer_name: "Ann".to_owned(),
//!         plan_name: "Pro Coaching".to_owned(),
//!         amount: "$5,000.00".to_owned(),
//!         payment_update_link: "https://billing.example/update/abc".to_owned(),
//!         business_name: recur_notify::DEFAULT_BUSINESS_NAME.to_owned(),
//!         last4: None,
//!         expires_on: None,
//!         offer: None,
//!         step: 2,
//!         steps_total: 4,
//!     },
//! };
//! let rendered = render(&message)?;
//! assert!(rendered.text.starts_with("Hi Ann! Your payment for Pro Coaching needs attention."));
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let recorder = Recorder::new();
//! recorder.send(&message).await.unwrap();
//! assert_eq!(recorder.count(Channel::Sms), 1);
//! # });
//! # Ok::<(), recur_notify::NotifyError>(())
//! ```

#[cfg(feature = "fake")]
pub mod fake;
pub mod message;
pub mod render;
pub mod send;
pub mod sms;
pub mod smtp;

mod error;

pub use error::NotifyError;
#[cfg(feature = "fake")]
pub use fake::{FakeMessage, TwilioFake, TwilioFakeHandle};
pub use message::{Channel, DEFAULT_BUSINESS_NAME, Message, MessageVars};
pub use render::{Rendered, render, templates};
pub use send::{Channels, Outbound, Receipt, Recorded, Recorder, SendError, Sender};
pub use sms::{TwilioConfig, TwilioSms};
pub use smtp::{SmtpConfig, SmtpMailer};
