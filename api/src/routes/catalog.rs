//! /v1/plans, /v1/prices and /v1/tax_rates: the catalog, read by every role and
//! changed by admins, as catalog events in the ledger.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use recur_commands::catalog::{Billing as PriceBilling, Plan, Price};
use recur_commands::context::within;
use recur_commands::period::{Interval, IntervalUnit};
use recur_commands::tax::{TaxMode, TaxRate};
use recur_commands::{BillingError, DomainError};
use rust_decimal::Decimal;

use super::{context, to_value};
use crate::AppState;
use crate::auth::Caller;
use crate::dto::{
    MoneyDto, PlanCreate, PlanDto, PlanList, PlanUpdate, PriceCreate, PriceDto, PriceList,
    TaxRateCreate, TaxRateDto, TaxRateList, TaxRateRetire, parse_time,
};
use crate::problem::{ApiError, Problem};
use crate::request::{RawBody, idempotent, json_response, parse};

/// The plans.
#[utoipa::path(get, operation_id = "catalog_plans", path = "/v1/plans", tag = "catalog",
    responses((status = 200, description = "Done", body = PlanList), (status = "4XX", description = "Refused: a problem with a stable code", body = Problem)), security(("api_key" = ["admin", "billing", "support", "analyst"])))]
pub async fn plans(
    State(state): State<Arc<AppState>>,
    _caller: Caller,
) -> Result<Response, ApiError> {
    let catalog = state.billing.catalog().await?;
    let list = PlanList {
        object: "list",
        data: catalog.plans().map(PlanDto::from).collect(),
    };
    Ok(json_response(StatusCode::OK, &to_value(&list)?))
}

/// The prices.
#[utoipa::path(get, operation_id = "catalog_prices", path = "/v1/prices", tag = "catalog",
    responses((status = 200, description = "Done", body = PriceList), (status = "4XX", description = "Refused: a problem with a stable code", body = Problem)), security(("api_key" = ["admin", "billing", "support", "analyst"])))]
pub async fn prices(
    State(state): State<Arc<AppState>>,
    _caller: Caller,
) -> Result<Response, ApiError> {
    let catalog = state.billing.catalog().await?;
    let list = PriceList {
        object: "list",
        data: catalog.prices().map(PriceDto::from).collect(),
    };
    Ok(json_response(StatusCode::OK, &to_value(&list)?))
}

/// A price's billing from the API's `interval` and `interval_count`.
pub(crate) fn billing_of(interval: &str, count: Option<u32>) -> Result<PriceBilling, ApiError> {
    let unit = match interval {
        "one_time" => return Ok(PriceBilling::OneTime),
        "day" => IntervalUnit::Day,
        "week" => IntervalUnit::Week,
        "month" => IntervalUnit::Month,
        "year" => IntervalUnit::Year,
        _ => {
            return Err(DomainError::InvalidField {
                field: "interval",
                reason: "day, week, month, year or one_time".into(),
            }
            .into());
        }
    };
    Ok(PriceBilling::Recurring {
        interval: Interval {
            unit,
            count: count.unwrap_or(1),
        },
    })
}

/// A price of `plan` from the API's fields.
fn price_of(
    plan: &str,
    id: String,
    unit_amount: &MoneyDto,
    interval: &str,
    count: Option<u32>,
) -> Result<Price, ApiError> {
    Ok(Price {
        id,
        plan_id: plan.to_owned(),
        unit_amount: unit_amount.to_money()?,
        billing: billing_of(interval, count)?,
    })
}

/// An admin's catalog write: admins only, idempotent, within the caller's context.
async fn admin_write<F>(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    route: &str,
    body: &[u8],
    work: F,
) -> Response
where
    F: AsyncFnOnce() -> Result<(StatusCode, serde_json::Value), ApiError>,
{
    idempotent(state, caller, headers, route, body, async {
        let (answer, _) = within(context(caller, None, None), work()).await;
        answer
    })
    .await
}

/// Create a price (admin only). Prices are immutable: a new price gets a new id.
#[utoipa::path(post, operation_id = "catalog_create_price", path = "/v1/prices", tag = "catalog", request_body = PriceCreate,
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer for the same body")),
    responses((status = 201, description = "Created", body = PriceDto), (status = "4XX", description = "Refused: a problem with a stable code", body = Problem)), security(("api_key" = ["admin"])))]
pub async fn create_price(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Response {
    admin_write(
        &state,
        &caller,
        &headers,
        "POST /v1/prices",
        &body,
        async || {
            let input: PriceCreate = parse(&body)?;
            let price = price_of(
                &input.plan,
                input.id,
                &input.unit_amount,
                &input.interval,
                input.interval_count,
            )?;
            let created = state.billing.create_price(price).await?;
            Ok((StatusCode::CREATED, to_value(&PriceDto::from(&created))?))
        },
    )
    .await
}

/// Create a plan with its first price, which becomes its current price (admin only).
#[utoipa::path(post, operation_id = "catalog_create_plan", path = "/v1/plans", tag = "catalog", request_body = PlanCreate,
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer for the same body")),
    responses((status = 201, description = "Created", body = PlanDto), (status = "4XX", description = "Refused: a problem with a stable code", body = Problem)), security(("api_key" = ["admin"])))]
pub async fn create_plan(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Response {
    admin_write(
        &state,
        &caller,
        &headers,
        "POST /v1/plans",
        &body,
        async || {
            let input: PlanCreate = parse(&body)?;
            let price = price_of(
                &input.id,
                input.price.id,
                &input.price.unit_amount,
                &input.price.interval,
                input.price.interval_count,
            )?;
            let plan = Plan {
                id: input.id,
                name: input.name,
                trial_days: input.trial_days,
                current_price: price.id.clone(),
                features: serde_json::Value::Object(input.features.unwrap_or_default()),
                limits: serde_json::Value::Object(input.limits.unwrap_or_default()),
            };
            let created = state.billing.create_plan(plan, price).await?;
            Ok((StatusCode::CREATED, to_value(&PlanDto::from(&created))?))
        },
    )
    .await
}

/// Change a plan's name, trial or current price (admin only): what new subscriptions get.
#[utoipa::path(post, operation_id = "catalog_update_plan", path = "/v1/plans/{id}", tag = "catalog", request_body = PlanUpdate,
    params(("id" = String, Path, description = "Plan id"),
           ("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer for the same body")),
    responses((status = 200, description = "Done", body = PlanDto), (status = "4XX", description = "Refused: a problem with a stable code", body = Problem)), security(("api_key" = ["admin"])))]
pub async fn update_plan(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Response {
    let route = format!("POST /v1/plans/{id}");
    admin_write(&state, &caller, &headers, &route, &body, async || {
        let input: PlanUpdate = parse(&body)?;
        let plan = state
            .billing
            .update_plan(&id, input.name, input.trial_days, input.current_price)
            .await?;
        Ok((StatusCode::OK, to_value(&PlanDto::from(&plan))?))
    })
    .await
}

/// The tax rates, retired and scheduled ones included.
#[utoipa::path(get, operation_id = "catalog_tax_rates", path = "/v1/tax_rates", tag = "catalog",
    responses((status = 200, description = "Done", body = TaxRateList), (status = "4XX", description = "Refused: a problem with a stable code", body = Problem)), security(("api_key" = ["admin", "billing", "support", "analyst"])))]
pub async fn tax_rates(
    State(state): State<Arc<AppState>>,
    _caller: Caller,
) -> Result<Response, ApiError> {
    let now = super::ledger_now(&state);
    let catalog = state.billing.catalog().await?;
    let list = TaxRateList {
        object: "list",
        data: catalog
            .tax()
            .rates
            .iter()
            .map(|rate| TaxRateDto::new(rate, now))
            .collect(),
    };
    Ok(json_response(StatusCode::OK, &to_value(&list)?))
}

/// A percent (0 ≤ p < 100, at most 4 decimals) as the fraction a rate holds.
pub(crate) fn fraction_of(percent: &str) -> Result<Decimal, ApiError> {
    let invalid = || -> ApiError {
        DomainError::InvalidField {
            field: "percent",
            reason: "a decimal string from 0 to below 100, at most 4 decimals (\"6.25\")".into(),
        }
        .into()
    };
    let value: Decimal = percent
        .trim()
        .parse::<Decimal>()
        .map_err(|_| invalid())?
        .normalize();
    if value.is_sign_negative() || value >= Decimal::ONE_HUNDRED || value.scale() > 4 {
        return Err(invalid());
    }
    Ok(value / Decimal::ONE_HUNDRED)
}

/// Create a tax rate in force from `valid_from` (default now) (admin only).
#[utoipa::path(post, operation_id = "catalog_create_tax_rate", path = "/v1/tax_rates", tag = "catalog", request_body = TaxRateCreate,
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer for the same body")),
    responses((status = 201, description = "Created", body = TaxRateDto), (status = "4XX", description = "Refused: a problem with a stable code", body = Problem)), security(("api_key" = ["admin"])))]
pub async fn create_tax_rate(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Response {
    admin_write(
        &state,
        &caller,
        &headers,
        "POST /v1/tax_rates",
        &body,
        async || {
            let input: TaxRateCreate = parse(&body)?;
            recur_commands::tax::TaxLocation::parse(&input.country, input.region.as_deref(), None)?;
            let mode = match input.mode.as_str() {
                "inclusive" => TaxMode::Inclusive,
                "exclusive" => TaxMode::Exclusive,
                _ => {
                    return Err(DomainError::InvalidField {
                        field: "mode",
                        reason: "inclusive or exclusive".into(),
                    }
                    .into());
                }
            };
            let rate = TaxRate {
                id: String::new(),
                country: input.country,
                region: input.region,
                name: input.name,
                rate: fraction_of(&input.percent)?,
                mode,
                valid_from: input
                    .valid_from
                    .as_deref()
                    .map(|at| parse_time("valid_from", at))
                    .transpose()?,
                retired_at: None,
            };
            let created = state.billing.create_tax_rate(rate).await?;
            let now = super::ledger_now(&state);
            Ok((
                StatusCode::CREATED,
                to_value(&TaxRateDto::new(&created, now))?,
            ))
        },
    )
    .await
}

/// Retire a tax rate from `at` (default now): invoices issued from then on no longer take it (admin only).
#[utoipa::path(post, operation_id = "catalog_retire_tax_rate", path = "/v1/tax_rates/{id}/retire", tag = "catalog", request_body = TaxRateRetire,
    params(("id" = String, Path, description = "Tax rate id"),
           ("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer for the same body")),
    responses((status = 200, description = "Done", body = TaxRateDto), (status = "4XX", description = "Refused: a problem with a stable code", body = Problem)), security(("api_key" = ["admin"])))]
pub async fn retire_tax_rate(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Response {
    let route = format!("POST /v1/tax_rates/{id}/retire");
    admin_write(&state, &caller, &headers, &route, &body, async || {
        let input: TaxRateRetire = parse(&body)?;
        let at = input
            .at
            .as_deref()
            .map(|at| parse_time("at", at))
            .transpose()?;
        let retired =
            state
                .billing
                .retire_tax_rate(&id, at)
                .await
                .map_err(|error| match error {
                    BillingError::Domain(DomainError::NotFound { .. }) => ApiError::new(
                        StatusCode::NOT_FOUND,
                        "tax_rate_not_found",
                        format!("no tax rate {id}"),
                    ),
                    other => other.into(),
                })?;
        let now = super::ledger_now(&state);
        Ok((StatusCode::OK, to_value(&TaxRateDto::new(&retired, now))?))
    })
    .await
}
