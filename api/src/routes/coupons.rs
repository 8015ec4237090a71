//! /v1/coupons

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use recur_commands::billing::NewCoupon;
use recur_commands::context::within;
use recur_commands::coupon::{CouponDuration, Discount};
use recur_commands::{CouponCode, DomainError};

use super::{context, to_value};
use crate::AppState;
use crate::auth::Caller;
use crate::dto::{CouponCreate, CouponDto, CouponDurationDto, parse_time};
use crate::problem::{ApiError, Problem};
use crate::request::{RawBody, idempotent, json_response, parse};

/// Create a coupon.
#[utoipa::path(post, operation_id = "coupons_create", path = "/v1/coupons", tag = "coupons", request_body = CouponCreate,
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer for the same body")),
    responses((status = 201, description = "Created", body = CouponDto), (status = "4XX", description = "Refused: a problem with a stable code", body = Problem)), security(("api_key" = ["admin", "billing"])))]
pub async fn create(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Response {
    idempotent(
        &state,
        &caller,
        &headers,
        "POST /v1/coupons",
        &body,
        async {
            let input: CouponCreate = parse(&body)?;
            let code = CouponCode::parse(&input.code)?;
            let discount = match (&input.percent_off, &input.amount_off) {
                (Some(percent), None) => Discount::PercentOff {
                    percent: percent.parse().map_err(|_| DomainError::InvalidField {
                        field: "percent_off",
                        reason: "a decimal such as \"20\"".into(),
                    })?,
                },
                (None, Some(amount)) => Discount::AmountOff {
                    amount: amount.to_money()?,
                },
                _ => {
                    return Err(DomainError::InvalidField {
                        field: "discount",
                        reason: "give exactly one of percent_off and amount_off".into(),
                    }
                    .into());
                }
            };
            let duration = match (input.duration, input.duration_in_months) {
                (CouponDurationDto::Once, None) => CouponDuration::Once,
                (CouponDurationDto::Forever, None) => CouponDuration::Forever,
                (CouponDurationDto::Repeating, Some(months)) => {
                    CouponDuration::Repeating { months }
                }
                _ => {
                    return Err(DomainError::InvalidField {
                        field: "duration_in_months",
                        reason: "required with repeating, and only with it".into(),
                    }
                    .into());
                }
            };
            let redeem_by = input
                .redeem_by
                .as_deref()
                .map(|t| parse_time("redeem_by", t))
                .transpose()?;
            let new = NewCoupon {
                code: code.clone(),
                discount,
                duration,
                max_redemptions: input.max_redemptions,
                redeem_by,
            };
            let (result, ctx) = within(
                context(&caller, None, None),
                state.billing.create_coupon(new),
            )
            .await;
            result?;
            let coupon = state.billing.coupon(&code).await?;
            Ok((
                StatusCode::CREATED,
                to_value(&CouponDto::new(&coupon, ctx.last_position.map(|p| p.0)))?,
            ))
        },
    )
    .await
}

/// Get a coupon.
#[utoipa::path(get, operation_id = "coupons_get", path = "/v1/coupons/{code}", tag = "coupons",
    params(("code" = String, Path, description = "Coupon code")),
    responses((status = 200, description = "Done", body = CouponDto), (status = "4XX", description = "Refused: a problem with a stable code", body = Problem)), security(("api_key" = ["admin", "billing", "support"])))]
pub async fn get(
    State(state): State<Arc<AppState>>,
    _caller: Caller,
    Path(code): Path<String>,
) -> Result<Response, ApiError> {
    let code = CouponCode::parse(&code)
        .map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "coupon_not_found", "no such coupon"))?;
    let coupon = state.billing.coupon(&code).await?;
    Ok(json_response(
        StatusCode::OK,
        &to_value(&CouponDto::new(&coupon, None))?,
    ))
}
