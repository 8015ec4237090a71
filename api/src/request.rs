//! The protocol around every handler: JSON bodies (size, media type, shape),
//! `If-Match`, and `Idempotency-Key` (the same key and body replay the first
//! answer; another body is refused; concurrent requests with one key run once).
//!
//! A claim on a key is a lease, renewed while the request runs. When its server
//! dies mid-request, or the run fails on the server, the next request with the
//! same key and body takes the key over and reruns the request *replayably*: it
//! makes the same ids, and each append carries a ledger key derived from the
//! request key, so the rerun finds whatever the first run committed and answers
//! with it instead of writing (or charging) twice.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use recur_commands::context::{Replayable, replayable, request_key_prefix};
use recur_ledger::{Ledger, RequestClaim};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::AppState;
use super::auth::Caller;
use super::problem::ApiError;

/// The largest request body accepted, in bytes.
pub const BODY_BYTES_MAX: usize = 64 * 1024;
/// The longest `Idempotency-Key` accepted, in bytes.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 255;
/// How long a claim on a key lasts unless its run renews it: how long a retry
/// waits after its server died before it takes the key over.
const LEASE_MS: u64 = 10_000;
/// How often a running request renews its lease.
const LEASE_RENEW_EVERY_MS: u64 = 3_000;
/// How long a request waits for a concurrent one with the same key (longer than
/// a lease, so a retry waiting on a dead run takes the key over).
const IN_PROGRESS_WAIT_MS: u64 = LEASE_MS + 2_000;
/// Refusals that say "retry": never kept as a key's answer.
const TRANSIENT_CODES: &[&str] = &["contended"];
/// How often a request waiting on its key looks again.
const IN_PROGRESS_POLL_MS: u64 = 20;

/// A request body, checked for size and media type.
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let media_type = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            });
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "body_too_large",
                        format!("request bodies are limited to {BODY_BYTES_MAX} bytes"),
                    )
                } else {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "unreadable_body",
                        rejection.body_text(),
                    )
                }
            })?;
        if !bytes.is_empty() && media_type.as_deref() != Some("application/json") {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send JSON with `Content-Type: application/json`",
            ));
        }
        Ok(Self(bytes))
    }
}

/// Parses a JSON body, which must be an object (an empty body reads as `{}`).
///
/// # Errors
/// 400 `malformed_json` for bad syntax; 422 `invalid_body` for wrong types,
/// missing or unknown fields.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    // Syntax first, then shape: serde_json reports some shape errors as syntax.
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|error| {
        ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", error.to_string())
    })?;
    // An array or a scalar is no request, even where every field is optional.
    if !value.is_object() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            "the body must be a JSON object",
        ));
    }
    serde_json::from_value(value).map_err(|error| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            error.to_string(),
        )
    })
}

/// A query string read as `T`: percent-decoded, each value typed, unknown or
/// repeated parameters refused where `T` denies them.
pub struct Params<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> axum::extract::FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Self::from_uri(&parts.uri)
    }
}

impl<T: DeserializeOwned> Params<T> {
    /// The query of `uri` read as `T`.
    ///
    /// # Errors
    /// 422 `invalid_query` for an unknown, repeated or mistyped parameter.
    pub fn from_uri(uri: &axum::http::Uri) -> Result<Self, ApiError> {
        axum::extract::Query::try_from_uri(uri)
            .map(|axum::extract::Query(params)| Self(params))
            .map_err(|rejection| {
                let reason = rejection.body_text();
                let reason = reason
                    .strip_prefix("Failed to deserialize query string: ")
                    .unwrap_or(&reason);
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_query",
                    format!("query: {reason}"),
                )
            })
    }
}

/// The version in `If-Match` (`"3"`, `W/"3"` or `3`), if sent.
///
/// # Errors
/// 400 `invalid_if_match` when it is not a version.
pub fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .map(|v| v.trim().trim_start_matches("W/").trim_matches('"'))
        .and_then(|v| v.parse().ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_if_match",
                "If-Match must be a resource version such as \"3\"",
            )
        })
}

/// A JSON answer with its status and, for a resource, its version as `ETag`.
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response {
    let mut response = (status, axum::Json(body)).into_response();
    if let Some(version) = body.get("version").and_then(serde_json::Value::as_u64)
        && let Ok(etag) = HeaderValue::from_str(&format!("\"{version}\""))
    {
        response.headers_mut().insert(header::ETAG, etag);
    }
    response
}

/// Runs a write once per `Idempotency-Key` (scoped to the caller's key).
pub async fn idempotent<F>(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    route: &str,
    body: &[u8],
    write: F,
) -> Response
where
    F: Future<Output = Result<(StatusCode, serde_json::Value), ApiError>>,
{
    idempotent_redacted(state, caller, headers, route, body, |_| {}, write).await
}

/// [`idempotent`] for an answer that holds a secret: what is stored for a
/// replay is the answer after `redact`, so no secret is kept, and a replay
/// answers without it.
pub async fn idempotent_redacted<F>(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    route: &str,
    body: &[u8],
    redact: fn(&mut serde_json::Value),
    write: F,
) -> Response
where
    F: Future<Output = Result<(StatusCode, serde_json::Value), ApiError>>,
{
    let Some(key) = headers.get("idempotency-key") else {
        return answer(write.await);
    };
    let key = match key.to_str() {
        Ok(key) if !key.is_empty() && key.len() <= IDEMPOTENCY_KEY_BYTES_MAX => key,
        _ => {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_idempotency_key",
                format!("Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_BYTES_MAX} visible ASCII characters"),
            )
            .into_response();
        }
    };
    let mut fingerprint = Sha256::new();
    fingerprint.update(route.as_bytes());
    fingerprint.update(b"\n");
    fingerprint.update(body);
    let fingerprint: [u8; 32] = fingerprint.finalize().into();
    let stored_key = format!("{}:{key}", caller.key_id);
    let ledger = state.billing.ledger();
    let owner = Uuid::now_v7();
    let lease = Duration::from_millis(LEASE_MS);
    let mut waited_ms = 0;
    // Dropped before an answer is stored (the client went away, the request
    // timed out, even while the claim itself was being written): let go of the
    // key so a retry takes it over at once. Letting go is conditioned on the
    // owner, so it never touches another run's claim.
    let mut claim = HeldClaim {
        ledger: ledger.clone(),
        key: stored_key.clone(),
        owner,
        settled: true,
    };
    let (started_at, rerun) = loop {
        claim.settled = false;
        let found = match ledger
            .claim_request(&stored_key, &fingerprint, owner, lease)
            .await
        {
            Ok(found) => found,
            Err(error) => return ApiError::from(error).into_response(),
        };
        if !matches!(found, RequestClaim::Run { .. }) {
            // Not ours: nothing to let go of.
            claim.settled = true;
        }
        match found {
            RequestClaim::Run { started_at, rerun } => break (started_at, rerun),
            RequestClaim::Replay { status, body } => {
                let body = match replayed_text(state, body).await {
                    Ok(body) => body,
                    Err(error) => return error.into_response(),
                };
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
                let mut response = (status, body).into_response();
                let media = if status.is_success() {
                    "application/json"
                } else {
                    "application/problem+json"
                };
                response
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static(media));
                response
                    .headers_mut()
                    .insert("idempotent-replayed", HeaderValue::from_static("true"));
                return response;
            }
            RequestClaim::Unknown => {
                return ApiError::new(
                    StatusCode::CONFLICT,
                    "idempotency_outcome_unknown",
                    "this Idempotency-Key's request was cut short before an upgrade and may have \
                     been applied; check the resource, then retry with a new key if it was not",
                )
                .into_response();
            }
            RequestClaim::Mismatch => {
                return ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "idempotency_key_reused",
                    "this Idempotency-Key was used with another request; use a new key",
                )
                .into_response();
            }
            RequestClaim::InProgress if waited_ms < IN_PROGRESS_WAIT_MS => {
                tokio::time::sleep(Duration::from_millis(IN_PROGRESS_POLL_MS)).await;
                waited_ms += IN_PROGRESS_POLL_MS;
            }
            RequestClaim::InProgress => {
                return ApiError::new(
                    StatusCode::CONFLICT,
                    "idempotency_key_in_use",
                    "a request with this Idempotency-Key is still running; retry shortly",
                )
                .into_response();
            }
        }
    };
    let mut scope = Replayable {
        seed: Sha256::digest(stored_key.as_bytes()).into(),
        started_at,
        rerun,
        resumed: false,
    };
    let written_under = request_key_prefix(&scope);
    if rerun {
        scope.resumed = match ledger.appended_under(&written_under).await {
            Ok(wrote) => wrote,
            Err(error) => return ApiError::from(error).into_response(),
        };
    }
    let result = run_renewing(ledger, &stored_key, owner, replayable(scope, write)).await;
    let (status, body) = match result {
        Ok(answer) => answer,
        Err(error) => (
            error.status,
            serde_json::to_value(&error.problem).unwrap_or_default(),
        ),
    };
    let text = body.to_string();
    let transient = body
        .get("code")
        .and_then(serde_json::Value::as_str)
        .is_some_and(|code| TRANSIENT_CODES.contains(&code));
    // A refusal after the request (this run or an earlier one) wrote something
    // is no answer to keep either: the request is partly applied, and a retry
    // must be able to finish it rather than be told "no" for 48 hours.
    let partly_applied =
        status.is_client_error() && ledger.appended_under(&written_under).await.unwrap_or(true);
    let stored = if status.is_server_error() || transient || partly_applied {
        // Not an answer to keep: let a retry run again (replayably).
        ledger.release_request(&stored_key, owner).await
    } else {
        let mut kept = body.clone();
        redact(&mut kept);
        match kept_text(state, &kept).await {
            Ok(kept) => ledger
                .complete_request(&stored_key, owner, status.as_u16(), &kept)
                .await
                .map(|_| ()),
            // Not kept in clear, so not kept: a retry runs again (replayably).
            Err(error) => {
                tracing::warn!(
                    code = error.code(),
                    "the answer shows personal data that cannot be encrypted; not kept"
                );
                ledger.release_request(&stored_key, owner).await
            }
        }
    };
    claim.settled = true;
    if let Err(error) = stored {
        tracing::warn!(%error, "could not record the idempotent answer");
    }
    if status.is_success() {
        json_response(status, &body)
    } else {
        let mut response = (status, text).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        response
    }
}

/// A stored answer that shows a customer's contact details, kept encrypted
/// under that customer's data key: `api_requests` holds no personal data in
/// clear, and once the customer is erased the answer cannot be read either.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EncryptedAnswer {
    /// Always "encrypted_answer".
    object: String,
    /// Whose data key.
    customer: Uuid,
    /// The answer's text, encrypted.
    encrypted: recur_commands::privacy::Encrypted,
}

/// The text to keep for a replay of `answer`: as is, or encrypted when it
/// shows a customer's contact details.
async fn kept_text(
    state: &AppState,
    answer: &serde_json::Value,
) -> Result<String, recur_commands::BillingError> {
    let shows_contact = answer.get("object").and_then(serde_json::Value::as_str)
        == Some("customer")
        && answer.get("contact").is_some_and(|c| !c.is_null());
    let customer = answer
        .get("id")
        .and_then(serde_json::Value::as_str)
        .and_then(|id| Uuid::parse_str(id).ok());
    let (true, Some(customer)) = (shows_contact, customer) else {
        return Ok(answer.to_string());
    };
    let encrypted = state
        .billing
        .encrypt_personal(
            recur_commands::CustomerId(customer),
            answer.to_string().as_bytes(),
        )
        .await?;
    let kept = EncryptedAnswer {
        object: "encrypted_answer".to_owned(),
        customer,
        encrypted,
    };
    Ok(serde_json::to_string(&kept).unwrap_or_default())
}

/// A stored answer as it is replayed: decrypted if it was kept encrypted.
///
/// # Errors
/// 409 `personal_data_erased` when the customer was erased since (its answers
/// are deleted then; this is the rare one stored in the meantime).
async fn replayed_text(state: &AppState, body: String) -> Result<String, ApiError> {
    let Ok(kept) = serde_json::from_str::<EncryptedAnswer>(&body) else {
        return Ok(body);
    };
    if kept.object != "encrypted_answer" {
        return Ok(body);
    }
    let customer = recur_commands::CustomerId(kept.customer);
    match state
        .billing
        .decrypt_personal(customer, &kept.encrypted)
        .await?
    {
        Some(text) => String::from_utf8(text)
            .map_err(|_| super::routes::unavailable("a stored answer is not text")),
        None => Err(ApiError::new(
            StatusCode::CONFLICT,
            "personal_data_erased",
            "the customer's personal data was erased after this request: its answer is gone; \
             read the customer again",
        )),
    }
}

/// Runs `write` while renewing the lease of the run `owner` on `key`.
async fn run_renewing<F: Future>(ledger: &Ledger, key: &str, owner: Uuid, write: F) -> F::Output {
    let every = Duration::from_millis(LEASE_RENEW_EVERY_MS);
    let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let write = std::pin::pin!(write);
    let mut write = write;
    loop {
        tokio::select! {
            output = &mut write => return output,
            _ = renew.tick() => {
                match ledger.renew_request(key, owner, Duration::from_millis(LEASE_MS)).await {
                    Ok(true) => {}
                    // Another run took the key over (we stalled past the lease):
                    // finishing is still safe, the ledger keys make both runs one.
                    Ok(false) => tracing::warn!("an idempotent request lost its lease and runs on"),
                    Err(error) => tracing::warn!(%error, "could not renew an idempotency lease"),
                }
            }
        }
    }
}

/// A claim on an idempotency key, let go of if the request is dropped unanswered.
struct HeldClaim {
    ledger: Ledger,
    key: String,
    owner: Uuid,
    /// Nothing to let go of: answered (or released), or never ours.
    settled: bool,
}

impl Drop for HeldClaim {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let ledger = self.ledger.clone();
        let key = std::mem::take(&mut self.key);
        let owner = self.owner;
        runtime.spawn(async move {
            if let Err(error) = ledger.release_request(&key, owner).await {
                tracing::warn!(%error, "could not let go of an abandoned idempotency key");
            }
        });
    }
}

fn answer(result: Result<(StatusCode, serde_json::Value), ApiError>) -> Response {
    match result {
        Ok((status, body)) => json_response(status, &body),
        Err(error) => error.into_response(),
    }
}
