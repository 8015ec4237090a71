//! /webhooks/stripe: Stripe's deliveries, verified and kept once each.
//!
//! The answer is quick and says only whether the delivery was kept: what the
//! event means for billing is worked out afterwards, from the ledger, by the
//! translator this route wakes ([`recur_commands::translator`]).
//! Refusals: a missing, malformed, stale or unmatched `Stripe-Signature`, and a
//! body that is not a Stripe event, are 400 with nothing stored; a body over
//! [`WEBHOOK_BODY_BYTES_MAX`] is 413 (nothing is read or stored for either). Out-of-order deliveries, unknown types and
//! older API versions are kept like any other.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use recur_commands::webhook::{Ingested, StripeDelivery};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::to_value;
use crate::AppState;
use crate::problem::{ApiError, Problem};
use crate::request::json_response;
use crate::stripe_signature;

/// The largest delivery kept, in bytes: what one ledger event holds once the
/// delivery is encrypted and base64-encoded (4/3 of it) beside its routing
/// fields, under [`recur_ledger::limits::PAYLOAD_BYTES_MAX`] (256 KiB).
/// Stripe's events are far smaller.
pub const WEBHOOK_BODY_BYTES_MAX: usize = recur_commands::privacy::PLAINTEXT_BYTES_MAX;
/// The most read of a delivery before it is refused as too large.
const READ_BYTES_MAX: usize = 2 * 1024 * 1024;
/// The longest Stripe event id accepted, in bytes (`stripe-` and it name a stream).
const EVENT_ID_BYTES_MAX: usize =
    recur_ledger::limits::STREAM_ID_BYTES_MAX - recur_commands::webhook::STRIPE_STREAM_PREFIX.len();

/// What was done with a delivery.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct WebhookReceipt {
    /// Always "webhook_receipt".
    pub object: &'static str,
    /// The Stripe event's id.
    pub id: String,
    /// True when it had been kept before (a redelivery): nothing was written.
    pub duplicate: bool,
    /// The ledger position it was kept at (absent for a redelivery).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
    /// True when it is about a Stripe customer whose Recur customer was
    /// erased: acknowledged, and not kept.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub erased: bool,
}

/// A Stripe event's envelope: what routes it. The whole event is kept as sent.
#[derive(Debug, Deserialize)]
struct Envelope {
    id: String,
    object: String,
    #[serde(rename = "type")]
    event_type: String,
    #[serde(default)]
    api_version: Option<String>,
    created: i64,
    #[serde(default)]
    livemode: bool,
    data: EventData,
}

#[derive(Debug, Deserialize)]
struct EventData {
    object: serde_json::Map<String, serde_json::Value>,
}

impl Envelope {
    /// The delivery's routing fields: the Stripe customer is the object itself
    /// when the event is about a customer, else the object's `customer` (an id,
    /// or an expanded object with one).
    fn delivery(self) -> StripeDelivery {
        let object = &self.data.object;
        let text = |value: Option<&serde_json::Value>| {
            value.and_then(serde_json::Value::as_str).map(str::to_owned)
        };
        let object_id = text(object.get("id"));
        let customer = if text(object.get("object")).as_deref() == Some("customer") {
            object_id.clone()
        } else {
            match object.get("customer") {
                Some(serde_json::Value::Object(expanded)) => text(expanded.get("id")),
                other => text(other),
            }
        };
        StripeDelivery {
            id: self.id,
            event_type: self.event_type,
            api_version: self.api_version,
            created_s: self.created,
            livemode: self.livemode,
            customer,
            object_id,
        }
    }
}

fn bad_request(code: &str, detail: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, detail)
}

/// Receive a Stripe webhook delivery: verified by `Stripe-Signature` against
/// every secret in `RECUR_STRIPE_WEBHOOK_SECRETS`, kept once (findable with
/// `GET /v1/events?external_id=evt_…`), answered at once.
#[utoipa::path(post, operation_id = "webhooks_stripe", path = "/webhooks/stripe", tag = "webhooks",
    request_body(content = serde_json::Value, description = "A Stripe event, exactly as Stripe sent it", content_type = "application/json"),
    params(("Stripe-Signature" = String, Header, description = "t=<unix seconds>,v1=<HMAC-SHA256 hex>[,v1=…]")),
    responses((status = 200, description = "Kept (or kept before)", body = WebhookReceipt),
              (status = 400, description = "Bad or missing signature, or not a Stripe event: nothing stored", body = Problem),
              (status = 404, description = "No webhook signing secret is configured", body = Problem),
              (status = 413, description = "Over 180 KiB", body = Problem)))]
pub async fn stripe(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    if state.stripe_webhook_secrets.is_empty() {
        return Err(ApiError::not_found(
            "a Stripe webhook endpoint (set RECUR_STRIPE_WEBHOOK_SECRETS)",
        ));
    }
    // The header's form first: a delivery that cannot be genuine is refused
    // before its body is read.
    let signature = headers.get("stripe-signature").map(|v| v.as_bytes());
    stripe_signature::check_header(signature)
        .map_err(|error| bad_request(error.code(), error.to_string()))?;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("webhook deliveries are limited to {WEBHOOK_BODY_BYTES_MAX} bytes"),
        )
    };
    // Read (and drop) a little past the limit, so a sender of a body somewhat
    // too large gets its 413 rather than a connection cut mid-send; beyond
    // READ_BYTES_MAX the connection is cut.
    let raw = axum::body::to_bytes(body, READ_BYTES_MAX)
        .await
        .map_err(|_| too_large())?;
    if raw.len() > WEBHOOK_BODY_BYTES_MAX {
        return Err(too_large());
    }
    let now_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let secrets: Vec<&str> = state
        .stripe_webhook_secrets
        .iter()
        .map(String::as_str)
        .collect();
    stripe_signature::verify(signature, &raw, &secrets, now_s)
        .map_err(|error| bad_request(error.code(), error.to_string()))?;
    let envelope: Envelope = serde_json::from_slice(&raw)
        .map_err(|error| bad_request("malformed_event", format!("not a Stripe event: {error}")))?;
    let id_ok = envelope.id.starts_with("evt_")
        && envelope.id.len() <= EVENT_ID_BYTES_MAX
        && envelope
            .id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !id_ok || envelope.object != "event" {
        return Err(bad_request(
            "malformed_event",
            "not a Stripe event: `object` must be \"event\" and `id` an evt_… id",
        ));
    }
    let delivery = envelope.delivery();
    let id = delivery.id.clone();
    let (ingested, _) = recur_commands::context::within(
        recur_commands::context::RequestContext::default(),
        state.billing.ingest_stripe_event(delivery, &raw),
    )
    .await;
    let ingested = ingested?;
    if matches!(ingested, Ingested::New(_)) {
        // The translation happens after this answer, in the background.
        state.stripe_kept.notify_one();
    }
    let receipt = match ingested {
        Ingested::New(position) => WebhookReceipt {
            object: "webhook_receipt",
            id,
            duplicate: false,
            position: Some(position.0),
            erased: false,
        },
        Ingested::Duplicate => WebhookReceipt {
            object: "webhook_receipt",
            id,
            duplicate: true,
            position: None,
            erased: false,
        },
        Ingested::Erased => WebhookReceipt {
            object: "webhook_receipt",
            id,
            duplicate: false,
            position: None,
            erased: true,
        },
    };
    Ok(json_response(StatusCode::OK, &to_value(&receipt)?))
}
