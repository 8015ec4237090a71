//! /v1/plans and /v1/prices

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use recur_commands::catalog::{Billing as PriceBilling, Price};
use recur_commands::context::within;
use recur_commands::period::{Interval, IntervalUnit};
use recur_commands::{BillingError, DomainError};

use super::{EVERYONE, context, to_value};
use crate::http::AppState;
use crate::http::auth::{Caller, Role};
use crate::http::dto::{PlanDto, PlanList, PriceCreate, PriceDto, PriceList};
use crate::http::problem::{ApiError, Problem};
use crate::http::request::{RawBody, idempotent, json_response, parse};

/// The plans.
#[utoipa::path(get, operation_id = "catalog_plans", path = "/v1/plans", tag = "catalog",
    responses((status = 200, description = "Done", body = PlanList), (status = "4XX", description = "Refused: a problem with a stable code", body = Problem)), security(("api_key" = [])))]
pub async fn plans(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Response, ApiError> {
    caller.require(EVERYONE)?;
    let catalog = state.billing.catalog();
    let list = PlanList {
        object: "list",
        data: catalog.plans().map(PlanDto::from).collect(),
    };
    Ok(json_response(StatusCode::OK, &to_value(&list)?))
}

/// The prices.
#[utoipa::path(get, operation_id = "catalog_prices", path = "/v1/prices", tag = "catalog",
    responses((status = 200, description = "Done", body = PriceList), (status = "4XX", description = "Refused: a problem with a stable code", body = Problem)), security(("api_key" = [])))]
pub async fn prices(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Response, ApiError> {
    caller.require(EVERYONE)?;
    let catalog = state.billing.catalog();
    let list = PriceList {
        object: "list",
        data: catalog.prices().map(PriceDto::from).collect(),
    };
    Ok(json_response(StatusCode::OK, &to_value(&list)?))
}

/// Create a price (admin only). Prices are immutable: a new price gets a new id.
#[utoipa::path(post, operation_id = "catalog_create_price", path = "/v1/prices", tag = "catalog", request_body = PriceCreate,
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer for the same body")),
    responses((status = 201, description = "Created", body = PriceDto), (status = "4XX", description = "Refused: a problem with a stable code", body = Problem)), security(("api_key" = [])))]
pub async fn create_price(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Response {
    if let Err(error) = caller.require(&[Role::Admin]) {
        return error.into_response();
    }
    idempotent(&state, &caller, &headers, "POST /v1/prices", &body, async {
        let input: PriceCreate = parse(&body)?;
        let unit = match input.interval.as_str() {
            "one_time" => None,
            "day" => Some(IntervalUnit::Day),
            "week" => Some(IntervalUnit::Week),
            "month" => Some(IntervalUnit::Month),
            "year" => Some(IntervalUnit::Year),
            _ => {
                return Err(DomainError::InvalidField {
                    field: "interval",
                    reason: "day, week, month, year or one_time".into(),
                }
                .into());
            }
        };
        let billing = match unit {
            None => PriceBilling::OneTime,
            Some(unit) => PriceBilling::Recurring {
                interval: Interval {
                    unit,
                    count: input.interval_count.unwrap_or(1),
                },
            },
        };
        let price = Price {
            id: input.id,
            plan_id: input.plan,
            unit_amount: input.unit_amount.to_money()?,
            billing,
        };
        let (created, _) = within(
            context(&caller, None, None),
            state.billing.create_price(price),
        )
        .await;
        let created = created.map_err(|error| match error {
            BillingError::Catalog(message) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_price", message)
            }
            other => other.into(),
        })?;
        Ok((StatusCode::CREATED, to_value(&PriceDto::from(&created))?))
    })
    .await
}
