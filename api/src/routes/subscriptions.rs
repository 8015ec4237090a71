//! /v1/subscriptions

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use recur_commands::billing::{NewSubscription, PlanChange, Trial};
use recur_commands::context::within;
use recur_commands::{BillingError, CouponCode, CustomerId, SubscriptionId};

use super::{ListQuery, context, customer_id, resource_action, subscription_id, to_value};
use crate::AppState;
use crate::auth::Caller;
use crate::dto::{
    CancelBody, DiscountBody, LineDto, PlanChangeBody, PreviewDto, RemoveDiscountBody,
    SubscriptionCreate, SubscriptionDto, SubscriptionList, TimingDto, TotalsDto,
};
use crate::problem::{ApiError, Problem};
use crate::request::{Params, RawBody, idempotent, json_response, parse};

async fn subscription_dto(
    state: &AppState,
    id: SubscriptionId,
    position: Option<u64>,
) -> Result<SubscriptionDto, ApiError> {
    let (subscription, version) = state.billing.subscription_versioned(id).await?;
    Ok(SubscriptionDto::new(&subscription, version, position))
}

fn plan_change(body: PlanChangeBody) -> PlanChange {
    PlanChange {
        plan_id: body.plan,
        price_id: body.price,
        quantity: body.quantity,
        timing: body.timing.into(),
    }
}

/// Start a subscription (without a trial, the first period is invoiced and charged now).
#[utoipa::path(post, operation_id = "subscriptions_create", path = "/v1/subscriptions", tag = "subscriptions", request_body = SubscriptionCreate,
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer for the same body")),
    responses((status = 201, description = "Created", body = SubscriptionDto), (status = "4XX", description = "Refused: a problem with a stable code", body = Problem)), security(("api_key" = ["admin", "billing"])))]
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
        "POST /v1/subscriptions",
        &body,
        async {
            let input: SubscriptionCreate = parse(&body)?;
            let coupon = input.coupon.as_deref().map(CouponCode::parse).transpose()?;
            let new = NewSubscription {
                customer_id: CustomerId(input.customer),
                plan_id: input.plan,
                price_id: input.price,
                quantity: input.quantity.unwrap_or(1),
                trial: match input.trial_days {
                    None => Trial::PlanDefault,
                    Some(0) => Trial::Skip,
                    Some(days) => Trial::Days(days),
                },
                coupon,
            };
            let (id, ctx) =
                within(context(&caller, None, None), state.billing.subscribe(new)).await;
            let dto = subscription_dto(&state, id?, ctx.last_position.map(|p| p.0)).await?;
            Ok((StatusCode::CREATED, to_value(&dto)?))
        },
    )
    .await
}

/// Get a subscription.
#[utoipa::path(get, operation_id = "subscriptions_get", path = "/v1/subscriptions/{id}", tag = "subscriptions",
    params(("id" = String, Path, description = "Subscription id")),
    responses((status = 200, description = "Done", body = SubscriptionDto), (status = "4XX", description = "Refused: a problem with a stable code", body = Problem)), security(("api_key" = ["admin", "billing", "support"])))]
pub async fn get(
    State(state): State<Arc<AppState>>,
    _caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let dto = subscription_dto(&state, subscription_id(&id)?, None).await?;
    Ok(json_response(StatusCode::OK, &to_value(&dto)?))
}

/// List subscriptions, of one customer or all, oldest first.
#[utoipa::path(get, operation_id = "subscriptions_list", path = "/v1/subscriptions", tag = "subscriptions",
    params(("customer" = Option<String>, Query, description = "Only this customer's"),
           ("limit" = Option<u32>, Query, description = "1 to 100, default 10"),
           ("starting_after" = Option<String>, Query, description = "The last id of the previous page")),
    responses((status = 200, description = "Done", body = SubscriptionList), (status = "4XX", description = "Refused: a problem with a stable code", body = Problem)), security(("api_key" = ["admin", "billing", "support"])))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    _caller: Caller,
    Params(query): Params<ListQuery>,
) -> Result<Response, ApiError> {
    let limit = query.page_items()?;
    if query.subscription.is_some() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_query",
            "subscription filters invoices, not subscriptions",
        ));
    }
    let customer = query
        .customer
        .as_deref()
        .map(customer_id)
        .transpose()?
        .map(|id| id.to_string());
    let after = query.cursor("subscription", subscription_id)?;
    let db = super::read_models_current(&state).await?;
    let page = recur_projections::customers::subscriptions_page(
        &db,
        customer.as_deref(),
        after.as_deref(),
        limit,
    )
    .await;
    let (ids, has_more) = super::list_page(page, "subscription", subscription_id)?;
    let mut data = Vec::with_capacity(ids.len());
    for id in &ids {
        data.push(subscription_dto(&state, *id, None).await?);
    }
    let list = SubscriptionList {
        object: "list",
        data,
        has_more,
        next_cursor: if has_more {
            ids.last().map(|i| i.0)
        } else {
            None
        },
    };
    Ok(json_response(StatusCode::OK, &to_value(&list)?))
}

/// A change to an existing subscription.
enum Action {
    Change(PlanChangeBody),
    Cancel(CancelBody),
    Pause,
    Resume,
    UndoCancellation,
    Discount(CouponCode, TimingDto),
    RemoveDiscount(RemoveDiscountBody),
}

/// Which action a route runs: the last segment of its path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ActionRoute {
    Change,
    Cancel,
    Pause,
    Resume,
    UndoCancellation,
    Discount,
    RemoveDiscount,
}

impl ActionRoute {
    /// The route, as the idempotency fingerprint names it.
    fn route(self, id: &str) -> String {
        let segment = match self {
            ActionRoute::Change => "change",
            ActionRoute::Cancel => "cancel",
            ActionRoute::Pause => "pause",
            ActionRoute::Resume => "resume",
            ActionRoute::UndoCancellation => "undo_cancellation",
            ActionRoute::Discount => "discount",
            ActionRoute::RemoveDiscount => {
                return format!("DELETE /v1/subscriptions/{id}/discount");
            }
        };
        format!("POST /v1/subscriptions/{id}/{segment}")
    }

    /// The action its body asks for.
    fn action(self, body: &[u8]) -> Result<Action, ApiError> {
        Ok(match self {
            ActionRoute::Change => Action::Change(parse(body)?),
            ActionRoute::Cancel => Action::Cancel(parse(body)?),
            ActionRoute::Pause => {
                parse::<Empty>(body)?;
                Action::Pause
            }
            ActionRoute::Resume => {
                parse::<Empty>(body)?;
                Action::Resume
            }
            ActionRoute::UndoCancellation => {
                parse::<Empty>(body)?;
                Action::UndoCancellation
            }
            ActionRoute::Discount => {
                let input: DiscountBody = parse(body)?;
                Action::Discount(CouponCode::parse(&input.coupon)?, input.timing)
            }
            ActionRoute::RemoveDiscount => Action::RemoveDiscount(parse(body)?),
        })
    }
}

async fn act(
    state: Arc<AppState>,
    caller: Caller,
    id: String,
    headers: HeaderMap,
    body: axum::body::Bytes,
    kind: ActionRoute,
) -> Response {
    let route = kind.route(&id);
    let state = &state;
    let billing = &state.billing;
    let command = |id: SubscriptionId, body: &[u8]| {
        let action = kind.action(body)?;
        let work = async move {
            match action {
                Action::Discount(code, timing) => {
                    billing.apply_discount(id, &code, timing.into()).await
                }
                Action::RemoveDiscount(body) => {
                    billing.remove_discount(id, body.timing.into()).await
                }
                Action::Change(change) => billing.change_plan(id, plan_change(change)).await,
                Action::Cancel(cancel) => billing.cancel(id, cancel.timing.into()).await,
                Action::Pause => billing.pause(id).await,
                Action::Resume => billing.resume(id).await,
                Action::UndoCancellation => billing.undo_cancellation(id).await,
            }
        };
        Ok((id.stream().map_err(BillingError::from)?, work))
    };
    resource_action(
        (state, &caller),
        &route,
        (&headers, &body),
        subscription_id(&id),
        command,
        |id, position| async move { to_value(&subscription_dto(state, id, position).await?) },
    )
    .await
}

/// No body fields.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// Change plan, price or quantity: now (prorated to the second and invoiced now) or at period end.
#[utoipa::path(post, operation_id = "subscriptions_change", path = "/v1/subscriptions/{id}/change", tag = "subscriptions", request_body = PlanChangeBody,
    params(("id" = String, Path, description = "Subscription id"),
           ("If-Match" = Option<String>, Header, description = "The version you last saw"),
           ("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer for the same body")),
    responses((status = 200, description = "Done", body = SubscriptionDto), (status = "4XX", description = "Refused: a problem with a stable code", body = Problem)), security(("api_key" = ["admin", "billing"])))]
pub async fn change(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Response {
    act(state, caller, id, headers, body, ActionRoute::Change).await
}

/// Cancel now or at period end.
#[utoipa::path(post, operation_id = "subscriptions_cancel", path = "/v1/subscriptions/{id}/cancel", tag = "subscriptions", request_body = CancelBody,
    params(("id" = String, Path, description = "Subscription id"),
           ("If-Match" = Option<String>, Header, description = "The version you last saw"),
           ("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer for the same body")),
    responses((status = 200, description = "Done", body = SubscriptionDto), (status = "4XX", description = "Refused: a problem with a stable code", body = Problem)), security(("api_key" = ["admin", "billing"])))]
pub async fn cancel(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Response {
    act(state, caller, id, headers, body, ActionRoute::Cancel).await
}

/// Pause an active subscription.
#[utoipa::path(post, operation_id = "subscriptions_pause", path = "/v1/subscriptions/{id}/pause", tag = "subscriptions", request_body = Empty,
    params(("id" = String, Path, description = "Subscription id"),
           ("If-Match" = Option<String>, Header, description = "The version you last saw"),
           ("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer for the same body")),
    responses((status = 200, description = "Done", body = SubscriptionDto), (status = "4XX", description = "Refused: a problem with a stable code", body = Problem)), security(("api_key" = ["admin", "billing"])))]
pub async fn pause(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Response {
    act(state, caller, id, headers, body, ActionRoute::Pause).await
}

/// Resume a paused subscription: a new period starts now and is invoiced.
#[utoipa::path(post, operation_id = "subscriptions_resume", path = "/v1/subscriptions/{id}/resume", tag = "subscriptions", request_body = Empty,
    params(("id" = String, Path, description = "Subscription id"),
           ("If-Match" = Option<String>, Header, description = "The version you last saw"),
           ("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer for the same body")),
    responses((status = 200, description = "Done", body = SubscriptionDto), (status = "4XX", description = "Refused: a problem with a stable code", body = Problem)), security(("api_key" = ["admin", "billing"])))]
pub async fn resume(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Response {
    act(state, caller, id, headers, body, ActionRoute::Resume).await
}

/// Undo a cancellation scheduled for period end.
#[utoipa::path(post, operation_id = "subscriptions_undo_cancellation", path = "/v1/subscriptions/{id}/undo_cancellation", tag = "subscriptions", request_body = Empty,
    params(("id" = String, Path, description = "Subscription id"),
           ("If-Match" = Option<String>, Header, description = "The version you last saw"),
           ("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer for the same body")),
    responses((status = 200, description = "Done", body = SubscriptionDto), (status = "4XX", description = "Refused: a problem with a stable code", body = Problem)), security(("api_key" = ["admin", "billing"])))]
pub async fn undo_cancellation(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Response {
    act(
        state,
        caller,
        id,
        headers,
        body,
        ActionRoute::UndoCancellation,
    )
    .await
}

/// What a plan change would invoice now (proration lines with discount and tax); writes nothing.
#[utoipa::path(post, operation_id = "subscriptions_preview_change", path = "/v1/subscriptions/{id}/preview_change", tag = "subscriptions", request_body = PlanChangeBody,
    params(("id" = String, Path, description = "Subscription id")),
    responses((status = 200, description = "Done", body = PreviewDto), (status = "4XX", description = "Refused: a problem with a stable code", body = Problem)), security(("api_key" = ["admin", "billing"])))]
pub async fn preview_change(
    State(state): State<Arc<AppState>>,
    _caller: Caller,
    Path(id): Path<String>,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let id = subscription_id(&id)?;
    let input: PlanChangeBody = parse(&body)?;
    let preview = state
        .billing
        .preview_change(id, &plan_change(input))
        .await?;
    let dto = match preview {
        Some((request, totals)) => PreviewDto {
            object: "invoice_preview",
            lines: request.lines.iter().map(LineDto::from).collect(),
            totals: Some(TotalsDto::from(&totals)),
        },
        None => PreviewDto {
            object: "invoice_preview",
            lines: Vec::new(),
            totals: None,
        },
    };
    Ok(json_response(StatusCode::OK, &to_value(&dto)?))
}

/// Put a coupon's discount on the running subscription (a retention or dunning offer), replacing any other: now or from the next period.
#[utoipa::path(post, operation_id = "subscriptions_apply_discount", path = "/v1/subscriptions/{id}/discount", tag = "subscriptions", request_body = DiscountBody,
    params(("id" = String, Path, description = "Subscription id"),
           ("If-Match" = Option<String>, Header, description = "The version you last saw"),
           ("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer for the same body")),
    responses((status = 200, description = "Done", body = SubscriptionDto), (status = "4XX", description = "Refused: a problem with a stable code", body = Problem)), security(("api_key" = ["admin", "billing"])))]
pub async fn apply_discount(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Response {
    act(state, caller, id, headers, body, ActionRoute::Discount).await
}

/// Take the discount off the subscription: now or from the next period (an empty body means now).
#[utoipa::path(delete, operation_id = "subscriptions_remove_discount", path = "/v1/subscriptions/{id}/discount", tag = "subscriptions", request_body = RemoveDiscountBody,
    params(("id" = String, Path, description = "Subscription id"),
           ("If-Match" = Option<String>, Header, description = "The version you last saw"),
           ("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer for the same body")),
    responses((status = 200, description = "Done", body = SubscriptionDto), (status = "4XX", description = "Refused: a problem with a stable code", body = Problem)), security(("api_key" = ["admin", "billing"])))]
pub async fn remove_discount(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Response {
    act(
        state,
        caller,
        id,
        headers,
        body,
        ActionRoute::RemoveDiscount,
    )
    .await
}
