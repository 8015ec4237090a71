//! Health, the OpenAPI document, API keys and the test clock.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use recur_commands::DomainError;
use recur_ledger::Clock;
use time::Duration;
use utoipa::OpenApi;

use super::to_value;
use crate::http::AppState;
use crate::http::auth::{Caller, Role};
use crate::http::dto::{
    AdvanceBody, HealthDto, KeyCreate, KeyCreated, TestClockDto, parse_time, rfc3339,
};
use crate::http::problem::{ApiError, Problem};
use crate::http::request::{RawBody, idempotent, json_response, parse};

/// Alive.
#[utoipa::path(get, operation_id = "system_healthz", path = "/healthz", tag = "system", responses((status = 200, description = "Done", body = HealthDto)))]
pub async fn healthz() -> Response {
    json_response(StatusCode::OK, &serde_json::json!({"status": "ok"}))
}

/// Ready: the ledger answers and its migrations are applied.
#[utoipa::path(get, operation_id = "system_readyz", path = "/readyz", tag = "system", responses((status = 200, description = "Done", body = HealthDto), (status = 503, description = "Not ready", body = HealthDto)))]
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    match state.billing.ledger().last_position().await {
        Ok(position) => json_response(
            StatusCode::OK,
            &serde_json::json!({"status": "ok", "ledger_position": position.0}),
        ),
        Err(error) => {
            tracing::warn!(%error, "not ready");
            json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({"status": "unavailable"}),
            )
        }
    }
}

/// The OpenAPI 3.1 document of this API.
pub async fn openapi() -> Response {
    let text = crate::http::openapi::ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], text).into_response()
}

/// Create an API key (admin only); the key is shown once.
#[utoipa::path(post, operation_id = "system_create_key", path = "/v1/api_keys", tag = "system", request_body = KeyCreate,
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer for the same body")),
    responses((status = 201, description = "Created", body = KeyCreated), (status = "4XX", description = "Refused: a problem with a stable code", body = Problem)), security(("api_key" = [])))]
pub async fn create_key(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Response {
    if let Err(error) = caller.require(&[Role::Admin]) {
        return error.into_response();
    }
    idempotent(
        &state,
        &caller,
        &headers,
        "POST /v1/api_keys",
        &body,
        async {
            let input: KeyCreate = parse(&body)?;
            let (id, key) = state.keys.create(input.role).await?;
            Ok((
                StatusCode::CREATED,
                to_value(&KeyCreated {
                    object: "api_key",
                    id,
                    role: input.role,
                    key,
                })?,
            ))
        },
    )
    .await
}

/// Move the test clock forward and run what became due (only with `recur serve --test-clock`).
#[utoipa::path(post, operation_id = "system_advance", path = "/v1/test_clock/advance", tag = "system", request_body = AdvanceBody,
    responses((status = 200, description = "Done", body = TestClockDto), (status = "4XX", description = "Refused: a problem with a stable code", body = Problem)), security(("api_key" = [])))]
pub async fn advance(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let Some(clock) = &state.test_clock else {
        return Err(ApiError::not_found("route"));
    };
    caller.require(&[Role::Admin])?;
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
    let report = state.scheduler.tick().await?;
    let dto = TestClockDto {
        object: "test_clock",
        now: rfc3339(clock.now()),
        periods_started: report.periods_started,
        invoice_steps: report.invoice_steps,
        failures: u32::try_from(report.failures.len()).unwrap_or(u32::MAX),
    };
    Ok(json_response(StatusCode::OK, &to_value(&dto)?))
}
