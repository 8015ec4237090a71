//! Health, metrics, the OpenAPI document, API keys and the test clock.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use recur_commands::{BillingError, DomainError};
use recur_ledger::Clock;
use time::Duration;

use super::to_value;
use crate::AppState;
use crate::auth::Caller;
use crate::dto::{
    AdvanceBody, HealthDto, KeyCreate, KeyCreated, KeyDto, KeyList, TestClockDto, parse_time,
    rfc3339,
};
use crate::problem::{ApiError, Problem};
use crate::request::{RawBody, idempotent, idempotent_redacted, json_response, parse};
use crate::routes::subscriptions::Empty;
use crate::telemetry::{self, Gauges};

/// Alive.
#[utoipa::path(get, operation_id = "system_healthz", path = "/healthz", tag = "system", responses((status = 200, description = "Done", body = HealthDto)))]
pub async fn healthz() -> Response {
    json_response(StatusCode::OK, &serde_json::json!({"status": "ok"}))
}

/// Ready: the ledger answers and its migrations are applied.
#[utoipa::path(get, operation_id = "system_readyz", path = "/readyz", tag = "system", responses((status = 200, description = "Done", body = HealthDto), (status = 503, description = "Not ready", body = HealthDto)))]
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let probe = tokio::time::timeout(
        std::time::Duration::from_millis(READY_WAIT_MS),
        state.billing.ledger().last_position(),
    )
    .await;
    match probe {
        Ok(Ok(position)) => json_response(
            StatusCode::OK,
            &serde_json::json!({"status": "ok", "ledger_position": position.0}),
        ),
        failed => {
            match failed {
                Ok(Err(error)) => tracing::warn!(%error, "not ready"),
                _ => {
                    tracing::warn!("not ready: the ledger did not answer within {READY_WAIT_MS} ms")
                }
            }
            json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({"status": "unavailable"}),
            )
        }
    }
}

/// How long readiness waits for the ledger before it answers 503.
pub const READY_WAIT_MS: u64 = 1_000;

/// The server's metrics in Prometheus' text format (no authentication, like
/// `/healthz`: counts, positions and latencies only, never ids, keys or personal data).
#[utoipa::path(get, operation_id = "system_metrics", path = "/metrics", tag = "system",
    responses((status = 200, description = "Prometheus text exposition format 0.0.4", body = String,
        content_type = "text/plain; version=0.0.4; charset=utf-8")))]
pub async fn prometheus(State(state): State<Arc<AppState>>) -> Response {
    let wait = std::time::Duration::from_millis(READY_WAIT_MS);
    let ledger = state.billing.ledger();
    // Each read is bounded: a scrape answers without what did not answer in time.
    let ledger_position = match tokio::time::timeout(wait, ledger.last_position()).await {
        Ok(Ok(position)) => Some(position.0),
        _ => None,
    };
    let backlog = tokio::time::timeout(wait, async {
        let due = state.scheduler.due_now().await;
        let oldest = state.scheduler.next_due_at().await;
        (due, oldest)
    })
    .await
    .ok();
    let now = ledger.clock().now();
    let gauges = Gauges {
        ledger_position,
        projected_position: state.projected.load(Ordering::Acquire),
        events_appended: state.billing.events_appended(),
        scheduler_due_items: backlog.map(|(due, _)| due),
        scheduler_oldest_due_age: backlog.map(|(_, oldest)| {
            oldest
                .map(|at| (now - at).try_into().unwrap_or_default())
                .unwrap_or_default()
        }),
    };
    (
        [(header::CONTENT_TYPE, telemetry::CONTENT_TYPE)],
        state.telemetry.render(&gauges),
    )
        .into_response()
}

/// The OpenAPI 3.1 document of this API.
pub async fn openapi() -> Response {
    let text = crate::openapi_document()
        .to_pretty_json()
        .unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], text).into_response()
}

/// What is kept of a key's answer for a replay: everything but the secret.
fn without_secret(answer: &mut serde_json::Value) {
    if let Some(key) = answer.get_mut("key") {
        *key = serde_json::Value::Null;
    }
}

/// Create an API key (admin only); the key is shown once, and never stored.
#[utoipa::path(post, operation_id = "system_create_key", path = "/v1/api_keys", tag = "system", request_body = KeyCreate,
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer for the same body, without the secret")),
    responses((status = 201, description = "Created", body = KeyCreated), (status = "4XX", description = "Refused: a problem with a stable code", body = Problem)), security(("api_key" = ["admin"])))]
pub async fn create_key(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Response {
    idempotent_redacted(
        &state,
        &caller,
        &headers,
        "POST /v1/api_keys",
        &body,
        without_secret,
        async {
            let input: KeyCreate = parse(&body)?;
            let (id, key) = state.keys.create(input.role, &caller.key_id).await?;
            Ok((
                StatusCode::CREATED,
                to_value(&KeyCreated {
                    object: "api_key",
                    id,
                    role: input.role,
                    key: Some(key),
                })?,
            ))
        },
    )
    .await
}

/// The API keys (admin only): role, status, who made them, when last used; never a secret.
#[utoipa::path(get, operation_id = "system_list_keys", path = "/v1/api_keys", tag = "system",
    responses((status = 200, description = "Done", body = KeyList), (status = "4XX", description = "Refused: a problem with a stable code", body = Problem)), security(("api_key" = ["admin"])))]
pub async fn list_keys(
    State(state): State<Arc<AppState>>,
    _caller: Caller,
) -> Result<Response, ApiError> {
    let list = KeyList {
        object: "list",
        data: state.keys.list().iter().map(KeyDto::from).collect(),
    };
    Ok(json_response(StatusCode::OK, &to_value(&list)?))
}

/// Revoke an API key (admin only): it stops working on every server at once.
#[utoipa::path(post, operation_id = "system_revoke_key", path = "/v1/api_keys/{id}/revoke", tag = "system", request_body = Empty,
    params(("id" = String, Path, description = "Key id"),
           ("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer for the same body")),
    responses((status = 200, description = "Done", body = KeyDto), (status = "4XX", description = "Refused: a problem with a stable code", body = Problem)), security(("api_key" = ["admin"])))]
pub async fn revoke_key(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Response {
    let route = format!("POST /v1/api_keys/{id}/revoke");
    idempotent(&state, &caller, &headers, &route, &body, async {
        parse::<Empty>(&body)?;
        let entry = state.keys.revoke(&id, &caller.key_id).await?;
        Ok((StatusCode::OK, to_value(&KeyDto::from(&entry))?))
    })
    .await
}

/// Rotate an API key (admin only): a new secret, shown once; the old one stops working at once.
#[utoipa::path(post, operation_id = "system_rotate_key", path = "/v1/api_keys/{id}/rotate", tag = "system", request_body = Empty,
    params(("id" = String, Path, description = "Key id"),
           ("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer for the same body, without the secret")),
    responses((status = 200, description = "Done", body = KeyCreated), (status = "4XX", description = "Refused: a problem with a stable code", body = Problem)), security(("api_key" = ["admin"])))]
pub async fn rotate_key(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Response {
    let route = format!("POST /v1/api_keys/{id}/rotate");
    idempotent_redacted(
        &state,
        &caller,
        &headers,
        &route,
        &body,
        without_secret,
        async {
            parse::<Empty>(&body)?;
            let key = state.keys.rotate(&id, &caller.key_id).await?;
            let role = state
                .keys
                .get(&id)
                .map(|k| k.role)
                .ok_or_else(|| ApiError::not_found("api_key"))?;
            Ok((
                StatusCode::OK,
                to_value(&KeyCreated {
                    object: "api_key",
                    id: id.clone(),
                    role,
                    key: Some(key),
                })?,
            ))
        },
    )
    .await
}

/// Move the test clock forward and run what became due (only with `recur serve --test-clock`).
#[utoipa::path(post, operation_id = "system_advance", path = "/v1/test_clock/advance", tag = "system", request_body = AdvanceBody,
    responses((status = 200, description = "Done", body = TestClockDto), (status = "4XX", description = "Refused: a problem with a stable code", body = Problem)), security(("api_key" = ["admin"])))]
pub async fn advance(
    State(state): State<Arc<AppState>>,
    _caller: Caller,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let Some(clock) = &state.test_clock else {
        return Err(ApiError::not_found("route"));
    };
    let input: AdvanceBody = parse(&body)?;
    let now = clock.now();
    let to = match (input.to.as_deref(), input.seconds) {
        (Some(to), None) => parse_time("to", to)?,
        (None, Some(seconds)) => now + Duration::seconds(i64::from(seconds)),
        _ => {
            return Err(DomainError::InvalidField {
                field: "to",
                reason: "give exactly one of `to` and `seconds`".into(),
            }
            .into());
        }
    };
    if to < now {
        return Err(DomainError::InvalidField {
            field: "to",
            reason: "the test clock only moves forward".into(),
        }
        .into());
    }
    // One advance at a time, so ticks never interleave.
    let _turn = state.clock_turn.lock().await;
    clock.advance_to(to);
    let started = std::time::Instant::now();
    let ticked = state.scheduler.tick().await;
    state.telemetry.record_tick(
        ticked.as_ref().map_err(BillingError::code),
        started.elapsed(),
    );
    let report = ticked?;
    let dto = TestClockDto {
        object: "test_clock",
        now: rfc3339(clock.now()),
        periods_started: report.periods_started,
        invoice_steps: report.invoice_steps,
        failures: u32::try_from(report.failures.len()).unwrap_or(u32::MAX),
    };
    Ok(json_response(StatusCode::OK, &to_value(&dto)?))
}
