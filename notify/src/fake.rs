//! [`TwilioFake`]: a local stand-in for Twilio's Messages API, for tests (cargo
//! feature `fake`).
//!
//! It serves `POST /2010-04-01/Accounts/{sid}/Messages.json` on 127.0.0.1 and
//! checks each request as Twilio does, answering with Twilio's status codes and
//! error body (`{"code", "message", "more_info", "status"}`):
//!
//! | request | answer |
//! |---|---|
//! | another account's path, any other path | 404, error 20404 |
//! | no or wrong basic auth | 401, error 20003 |
//! | no `To` / `From` / `Body` | 400, error 21604 / 21603 / 21602 |
//! | `To` not E.164 | 400, error 21211 |
//! | `Body` over 1,600 characters | 400, error 21617 |
//! | `To` one of Twilio's magic test numbers: +15005550001 / +15005550004 | 400, error 21211 (invalid number) / 21610 (unsubscribed) |
//! | told to fail ([`TwilioFakeHandle::fail_next`]) | 500, error 20500, before any check |
//! | told to rate-limit ([`TwilioFakeHandle::fail_next_with`] 429) | 429, error 20429, before any check |
//! | otherwise | 201, `{"sid": "SM…", "status": "queued", …}`, recorded |
//!
//! Every accepted request is recorded, duplicates included (Twilio does not
//! promise to drop a repeated `I-Twilio-Idempotency-Token`, so neither does the
//! fake: exactly-once is the outbox's job, and tests can see when it fails).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use serde_json::json;

use crate::sms::{IDEMPOTENCY_HEADER, is_e164};

/// The account sid [`TwilioFake::start`] accepts.
pub const FAKE_ACCOUNT_SID: &str = "AC00000000000000000000000000000001";
/// The auth token [`TwilioFake::start`] accepts.
pub const FAKE_AUTH_TOKEN: &str = "fake-auth-token";
/// Twilio's test number that is not a valid phone number (error 21211).
pub const MAGIC_INVALID_NUMBER: &str = "+15005550001";
/// Twilio's test number that has replied STOP (error 21610).
pub const MAGIC_UNSUBSCRIBED_NUMBER: &str = "+15005550004";
/// Twilio's limit on a message body, in characters.
pub const BODY_CHARS_MAX: usize = 1600;

/// A message the fake accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeMessage {
    /// The sid it answered with (`SM` and 32 hex digits).
    pub sid: String,
    /// The `To` field.
    pub to: String,
    /// The `From` field.
    pub from: String,
    /// The `Body` field.
    pub body: String,
    /// The `I-Twilio-Idempotency-Token` header, if sent.
    pub idempotency_token: Option<String>,
}

/// The fake Twilio. [`TwilioFake::start`] runs it on a tokio runtime.
#[derive(Debug)]
pub struct TwilioFake;

#[derive(Default)]
struct FakeState {
    messages: Vec<FakeMessage>,
    requests: u64,
    fail_next: u32,
    fail_status: u16,
}

#[derive(Clone)]
struct Shared {
    state: Arc<Mutex<FakeState>>,
    account_sid: String,
    authorization: String,
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The running fake: what it received, and a switch to make it fail. Stops
/// the server when dropped.
#[derive(Debug)]
pub struct TwilioFakeHandle {
    shared: Arc<Mutex<FakeState>>,
    account_sid: String,
    auth_token: String,
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for FakeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeState")
            .field("messages", &self.messages.len())
            .field("requests", &self.requests)
            .field("fail_next", &self.fail_next)
            .field("fail_status", &self.fail_status)
            .finish()
    }
}

impl TwilioFake {
    /// Starts the fake on 127.0.0.1 (a free port) for [`FAKE_ACCOUNT_SID`] and
    /// [`FAKE_AUTH_TOKEN`]; returns its base URL (`http://127.0.0.1:PORT`) and
    /// its handle. Needs a tokio runtime.
    ///
    /// # Errors
    /// When no port can be bound.
    pub async fn start() -> std::io::Result<(String, TwilioFakeHandle)> {
        Self::start_for(FAKE_ACCOUNT_SID, FAKE_AUTH_TOKEN).await
    }

    /// As [`TwilioFake::start`], for another account sid and token.
    ///
    /// # Errors
    /// When no port can be bound.
    pub async fn start_for(
        account_sid: &str,
        auth_token: &str,
    ) -> std::io::Result<(String, TwilioFakeHandle)> {
        let credentials =
            base64::engine::general_purpose::STANDARD.encode(format!("{account_sid}:{auth_token}"));
        let state = Arc::new(Mutex::new(FakeState::default()));
        let shared = Shared {
            state: Arc::clone(&state),
            account_sid: account_sid.to_owned(),
            authorization: format!("Basic {credentials}"),
        };
        let router = Router::new()
            .route(
                "/2010-04-01/Accounts/{account_sid}/Messages.json",
                post(create_message),
            )
            .fallback(not_found)
            .with_state(shared);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::warn!(error = %e, "the Twilio fake stopped");
            }
        });
        let handle = TwilioFakeHandle {
            shared: state,
            account_sid: account_sid.to_owned(),
            auth_token: auth_token.to_owned(),
            addr,
            task,
        };
        Ok((format!("http://{addr}"), handle))
    }
}

impl TwilioFakeHandle {
    fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The messages accepted so far, in order.
    pub fn messages(&self) -> Vec<FakeMessage> {
        self.state().messages.clone()
    }

    /// Every request received, accepted or not.
    pub fn requests(&self) -> u64 {
        self.state().requests
    }

    /// Answers the next `n` requests with 500 (Twilio's error 20500), before
    /// checking them.
    pub fn fail_next(&self, n: u32) {
        self.fail_next_with(n, 500);
    }

    /// Answers the next `n` requests with `status` before checking them: 429
    /// is Twilio's "Too Many Requests" (error 20429), anything else its error
    /// 20500 with that status.
    pub fn fail_next_with(&self, n: u32, status: u16) {
        let mut state = self.state();
        state.fail_next = n;
        state.fail_status = status;
    }

    /// The account sid it accepts.
    pub fn account_sid(&self) -> &str {
        &self.account_sid
    }

    /// The auth token it accepts.
    pub fn auth_token(&self) -> &str {
        &self.auth_token
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for TwilioFakeHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Twilio's error answer.
fn twilio_error(status: StatusCode, code: u32, message: &str) -> Response {
    let body = json!({
        "code": code,
        "message": message,
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
        "status": status.as_u16(),
    });
    (status, axum::Json(body)).into_response()
}

async fn not_found(State(shared): State<Shared>) -> Response {
    shared.state().requests += 1;
    twilio_error(
        StatusCode::NOT_FOUND,
        20404,
        "The requested resource was not found",
    )
}

async fn create_message(
    State(shared): State<Shared>,
    Path(account_sid): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    {
        let mut state = shared.state();
        state.requests += 1;
        if state.fail_next > 0 {
            state.fail_next -= 1;
            return match StatusCode::from_u16(state.fail_status) {
                Ok(StatusCode::TOO_MANY_REQUESTS) => {
                    twilio_error(StatusCode::TOO_MANY_REQUESTS, 20429, "Too Many Requests")
                }
                Ok(status) => twilio_error(status, 20500, "Internal Server Error"),
                Err(_) => twilio_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    20500,
                    "Internal Server Error",
                ),
            };
        }
    }
    if account_sid != shared.account_sid {
        return twilio_error(
            StatusCode::NOT_FOUND,
            20404,
            &format!(
                "The requested resource /2010-04-01/Accounts/{account_sid}/Messages.json was not found"
            ),
        );
    }
    let authorized = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == shared.authorization);
    if !authorized {
        return twilio_error(StatusCode::UNAUTHORIZED, 20003, "Authenticate");
    }
    let mut to = None;
    let mut from = None;
    let mut text = None;
    for (key, value) in form_urlencoded::parse(&body) {
        match key.as_ref() {
            "To" => to = Some(value.into_owned()),
            "From" => from = Some(value.into_owned()),
            "Body" => text = Some(value.into_owned()),
            _ => {}
        }
    }
    let Some(to) = to.filter(|v| !v.is_empty()) else {
        return twilio_error(
            StatusCode::BAD_REQUEST,
            21604,
            "A 'To' phone number is required.",
        );
    };
    let Some(from) = from.filter(|v| !v.is_empty()) else {
        return twilio_error(
            StatusCode::BAD_REQUEST,
            21603,
            "A 'From' phone number is required.",
        );
    };
    let Some(text) = text.filter(|v| !v.is_empty()) else {
        return twilio_error(StatusCode::BAD_REQUEST, 21602, "Message body is required.");
    };
    if !is_e164(&to) {
        return twilio_error(
            StatusCode::BAD_REQUEST,
            21211,
            &format!("The 'To' number {to} is not a valid phone number."),
        );
    }
    // Twilio's test credentials answer these "magic" numbers so.
    if to == MAGIC_INVALID_NUMBER {
        return twilio_error(
            StatusCode::BAD_REQUEST,
            21211,
            &format!("The 'To' number {to} is not a valid phone number."),
        );
    }
    if to == MAGIC_UNSUBSCRIBED_NUMBER {
        return twilio_error(
            StatusCode::BAD_REQUEST,
            21610,
            "Attempt to send to unsubscribed recipient",
        );
    }
    if text.chars().count() > BODY_CHARS_MAX {
        return twilio_error(
            StatusCode::BAD_REQUEST,
            21617,
            "The concatenated message body exceeds the 1600 character limit.",
        );
    }
    let sid = format!("SM{}", uuid::Uuid::new_v4().simple());
    let idempotency_token = headers
        .get(IDEMPOTENCY_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let answer = json!({
        "sid": sid,
        "account_sid": shared.account_sid,
        "to": to,
        "from": from,
        "body": text,
        "status": "queued",
        "direction": "outbound-api",
        "num_segments": "1",
        "price": null,
        "error_code": null,
        "error_message": null,
        "uri": format!("/2010-04-01/Accounts/{}/Messages/{sid}.json", shared.account_sid),
    });
    shared.state().messages.push(FakeMessage {
        sid,
        to,
        from,
        body: text,
        idempotency_token,
    });
    (StatusCode::CREATED, axum::Json(answer)).into_response()
}
