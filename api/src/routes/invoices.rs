//! /v1/invoices and /v1/purchases

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use recur_commands::context::within;
use recur_commands::{BillingError, CouponCode, CustomerId, InvoiceId};

use super::{
    ListQuery, context, customer_id, invoice_id, resource_action, subscription_id, to_value,
};
use crate::AppState;
use crate::auth::Caller;
use crate::dto::{InvoiceDto, InvoiceList, PurchaseCreate, RefundBody};
use crate::problem::{ApiError, Problem};
use crate::request::{Params, RawBody, idempotent, json_response, parse};
use crate::routes::subscriptions::Empty;
use recur_projections::customers::InvoiceFilter;

async fn invoice_dto(
    state: &AppState,
    id: InvoiceId,
    position: Option<u64>,
) -> Result<InvoiceDto, ApiError> {
    let (invoice, version) = state.billing.invoice_versioned(id).await?;
    Ok(InvoiceDto::new(&invoice, version, position))
}

/// Get an invoice.
#[utoipa::path(get, operation_id = "invoices_get", path = "/v1/invoices/{id}", tag = "invoices",
    params(("id" = String, Path, description = "Invoice id")),
    responses((status = 200, description = "Done", body = InvoiceDto), (status = "4XX", description = "Refused: a problem with a stable code", body = Problem)), security(("api_key" = ["admin", "billing", "support"])))]
pub async fn get(
    State(state): State<Arc<AppState>>,
    _caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let dto = invoice_dto(&state, invoice_id(&id)?, None).await?;
    Ok(json_response(StatusCode::OK, &to_value(&dto)?))
}

/// List invoices (all, one customer's, or one subscription's), oldest first.
#[utoipa::path(get, operation_id = "invoices_list", path = "/v1/invoices", tag = "invoices",
    params(("customer" = Option<String>, Query, description = "Only this customer's"),
           ("subscription" = Option<String>, Query, description = "Only this subscription's"),
           ("limit" = Option<u32>, Query, description = "1 to 100, default 10"),
           ("starting_after" = Option<String>, Query, description = "The last id of the previous page")),
    responses((status = 200, description = "Done", body = InvoiceList), (status = "4XX", description = "Refused: a problem with a stable code", body = Problem)), security(("api_key" = ["admin", "billing", "support"])))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    _caller: Caller,
    Params(query): Params<ListQuery>,
) -> Result<Response, ApiError> {
    let limit = query.page_items()?;
    let filter = match (query.customer.as_deref(), query.subscription.as_deref()) {
        (Some(customer), _) => InvoiceFilter::Customer(customer_id(customer)?.to_string()),
        (None, Some(sub)) => InvoiceFilter::Subscription(subscription_id(sub)?.to_string()),
        (None, None) => InvoiceFilter::All,
    };
    let after = query.cursor("invoice", invoice_id)?;
    let db = super::read_models_current(&state).await?;
    let page =
        recur_projections::customers::invoices_page(&db, &filter, after.as_deref(), limit).await;
    let (ids, has_more) = super::list_page(page, "invoice", invoice_id)?;
    let mut data = Vec::with_capacity(ids.len());
    for id in &ids {
        data.push(invoice_dto(&state, *id, None).await?);
    }
    let list = InvoiceList {
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

/// An action on an invoice, with its body.
enum Action {
    Pay,
    Void,
    Refund(RefundBody),
}

/// Which action a route runs: the last segment of its path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ActionRoute {
    Pay,
    Void,
    Refund,
}

impl ActionRoute {
    /// The route, as the idempotency fingerprint names it.
    fn route(self, id: &str) -> String {
        let segment = match self {
            ActionRoute::Pay => "pay",
            ActionRoute::Void => "void",
            ActionRoute::Refund => "refund",
        };
        format!("POST /v1/invoices/{id}/{segment}")
    }

    /// The action its body asks for.
    fn action(self, body: &[u8]) -> Result<Action, ApiError> {
        Ok(match self {
            ActionRoute::Pay => {
                parse::<Empty>(body)?;
                Action::Pay
            }
            ActionRoute::Void => {
                parse::<Empty>(body)?;
                Action::Void
            }
            ActionRoute::Refund => Action::Refund(parse(body)?),
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
    let command = |id: InvoiceId, body: &[u8]| {
        let action = kind.action(body)?;
        let amount = match &action {
            Action::Refund(refund) => Some(refund.amount.to_money()?),
            _ => None,
        };
        let work = async move {
            match (action, amount) {
                (Action::Pay, _) => billing.pay_now(id).await.map(|_| ()),
                (Action::Void, _) => billing.void(id).await.map(|_| ()),
                (Action::Refund(refund), Some(amount)) => billing
                    .refund(
                        id,
                        amount,
                        refund.reason.as_deref().unwrap_or("requested_by_customer"),
                    )
                    .await
                    .map(|_| ()),
                (Action::Refund(_), None) => Ok(()),
            }
        };
        Ok((id.stream().map_err(BillingError::from)?, work))
    };
    resource_action(
        (state, &caller),
        &route,
        (&headers, &body),
        invoice_id(&id),
        command,
        |id, position| async move { to_value(&invoice_dto(state, id, position).await?) },
    )
    .await
}

/// Attempt payment of an open invoice now.
#[utoipa::path(post, operation_id = "invoices_pay", path = "/v1/invoices/{id}/pay", tag = "invoices", request_body = Empty,
    params(("id" = String, Path, description = "Invoice id"),
           ("If-Match" = Option<String>, Header, description = "The version you last saw"),
           ("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer for the same body")),
    responses((status = 200, description = "Done", body = InvoiceDto), (status = "4XX", description = "Refused: a problem with a stable code", body = Problem)), security(("api_key" = ["admin", "billing"])))]
pub async fn pay(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Response {
    act(state, caller, id, headers, body, ActionRoute::Pay).await
}

/// Void an open invoice with nothing paid.
#[utoipa::path(post, operation_id = "invoices_void", path = "/v1/invoices/{id}/void", tag = "invoices", request_body = Empty,
    params(("id" = String, Path, description = "Invoice id"),
           ("If-Match" = Option<String>, Header, description = "The version you last saw"),
           ("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer for the same body")),
    responses((status = 200, description = "Done", body = InvoiceDto), (status = "4XX", description = "Refused: a problem with a stable code", body = Problem)), security(("api_key" = ["admin", "billing"])))]
pub async fn void(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Response {
    act(state, caller, id, headers, body, ActionRoute::Void).await
}

/// Refund part or all of a paid invoice.
#[utoipa::path(post, operation_id = "invoices_refund", path = "/v1/invoices/{id}/refund", tag = "invoices", request_body = RefundBody,
    params(("id" = String, Path, description = "Invoice id"),
           ("If-Match" = Option<String>, Header, description = "The version you last saw"),
           ("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer for the same body")),
    responses((status = 200, description = "Done", body = InvoiceDto), (status = "4XX", description = "Refused: a problem with a stable code", body = Problem)), security(("api_key" = ["admin", "billing"])))]
pub async fn refund(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Response {
    act(state, caller, id, headers, body, ActionRoute::Refund).await
}

/// Buy a one-time price (the course): invoiced and charged now.
#[utoipa::path(post, operation_id = "invoices_purchase", path = "/v1/purchases", tag = "invoices", request_body = PurchaseCreate,
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer for the same body")),
    responses((status = 201, description = "Created", body = InvoiceDto), (status = "4XX", description = "Refused: a problem with a stable code", body = Problem)), security(("api_key" = ["admin", "billing"])))]
pub async fn purchase(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Response {
    idempotent(
        &state,
        &caller,
        &headers,
        "POST /v1/purchases",
        &body,
        async {
            let input: PurchaseCreate = parse(&body)?;
            let coupon = input.coupon.as_deref().map(CouponCode::parse).transpose()?;
            let (id, ctx) = within(
                context(&caller, None, None),
                state
                    .billing
                    .purchase(CustomerId(input.customer), &input.plan, coupon),
            )
            .await;
            let dto = invoice_dto(&state, id?, ctx.last_position.map(|p| p.0)).await?;
            Ok((StatusCode::CREATED, to_value(&dto)?))
        },
    )
    .await
}
