//! /v1/customers

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use recur_commands::billing::NewCustomer;
use recur_commands::context::within;
use recur_commands::customer::{ContactEvent, PersonalDataUse, StoredContact};
use recur_commands::tagged::DecodeEvent;
use recur_commands::{BillingError, CustomerId};
use recur_ledger::{Position, Source, StreamId};
use serde::Deserialize;

use super::{context, customer_id, events, to_value};
use crate::AppState;
use crate::auth::{Caller, Role};
use crate::dto::{
    ContactDto, CustomerCreate, CustomerDto, CustomerExport, CustomerUpdate, ErasureDto,
    ErasureReasonDto, PaymentMethodDto, rfc3339,
};
use crate::history::{self, HistoryList};
use crate::problem::{ApiError, Problem};
use crate::request::{Params, RawBody, idempotent, if_match, json_response, parse};

/// The customer as `caller` may see it; when that shows its contact details,
/// the read is recorded first (docs/api.md, "Personal data").
async fn customer_dto(
    state: &AppState,
    caller: &Caller,
    id: CustomerId,
    position: Option<u64>,
) -> Result<CustomerDto, ApiError> {
    let dto = customer_unrecorded(state, id, caller.role, position).await?;
    if dto.contact.is_some() {
        record_read(state, caller, id, PersonalDataUse::Contact).await?;
    }
    Ok(dto)
}

/// The customer as `role` may see it, without recording the read: for the
/// export, which records itself.
async fn customer_unrecorded(
    state: &AppState,
    id: CustomerId,
    role: Role,
    position: Option<u64>,
) -> Result<CustomerDto, ApiError> {
    let (customer, version) = state.billing.customer_versioned(id).await?;
    let contact = if role.sees_personal_data() {
        state.billing.contact(id).await?
    } else {
        None
    };
    Ok(CustomerDto::new(&customer, version, contact, position))
}

/// Create a customer.
#[utoipa::path(post, operation_id = "customers_create", path = "/v1/customers", tag = "customers", request_body = CustomerCreate,
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer for the same body")),
    responses((status = 201, description = "Created", body = CustomerDto), (status = "4XX", description = "Refused: a problem with a stable code", body = Problem)), security(("api_key" = ["admin", "billing"])))]
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
        "POST /v1/customers",
        &body,
        async {
            let input: CustomerCreate = parse(&body)?;
            let new = NewCustomer {
                segment: input.segment.map(Into::into).unwrap_or_default(),
                tax_location: input
                    .tax_location
                    .as_ref()
                    .map(|t| t.to_domain())
                    .transpose()?,
                contact: input.contact.map(Into::into),
            };
            let (id, ctx) = within(
                context(&caller, None, None),
                state.billing.create_customer(new),
            )
            .await;
            let dto = customer_dto(&state, &caller, id?, ctx.last_position.map(|p| p.0)).await?;
            Ok((StatusCode::CREATED, to_value(&dto)?))
        },
    )
    .await
}

/// Get a customer (contact details for admin and support keys only).
#[utoipa::path(get, operation_id = "customers_get", path = "/v1/customers/{id}", tag = "customers",
    params(("id" = String, Path, description = "Customer id")),
    responses((status = 200, description = "Done", body = CustomerDto), (status = "4XX", description = "Refused: a problem with a stable code", body = Problem)), security(("api_key" = ["admin", "billing", "support"])))]
pub async fn get(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let dto = customer_dto(&state, &caller, customer_id(&id)?, None).await?;
    Ok(json_response(StatusCode::OK, &to_value(&dto)?))
}

/// Records that `caller` read `what` of the customer's personal data: the
/// answer is given only once the record is in the ledger.
///
/// # Errors
/// Ledger errors (the read is then refused).
pub async fn record_read(
    state: &AppState,
    caller: &Caller,
    id: CustomerId,
    what: PersonalDataUse,
) -> Result<(), ApiError> {
    let (recorded, _) = within(
        context(caller, None, None),
        state.billing.record_personal_data_read(id, what),
    )
    .await;
    Ok(recorded?)
}

/// `DELETE /v1/customers/{id}/personal_data`'s query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErasureQuery {
    /// Why (default requested_by_customer).
    pub reason: Option<ErasureReasonDto>,
}

/// Erase a customer's personal data (crypto-shredding): the erasure is recorded
/// (who, when, why), the customer's data key destroyed, and stored answers that
/// held the customer deleted. Every event stays; the books and every figure are
/// unchanged; the contact details can no longer be read by anyone. Repeating it
/// answers the same erasure.
#[utoipa::path(delete, operation_id = "customers_erase_personal_data", path = "/v1/customers/{id}/personal_data", tag = "customers",
    params(("id" = String, Path, description = "Customer id"),
           ("reason" = Option<ErasureReasonDto>, Query, description = "requested_by_customer (default), retention_expired or other")),
    responses((status = 200, description = "Erased", body = ErasureDto), (status = "4XX", description = "Refused: a problem with a stable code", body = Problem)), security(("api_key" = ["admin"])))]
pub async fn erase_personal_data(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    Params(query): Params<ErasureQuery>,
) -> Result<Response, ApiError> {
    let id = customer_id(&id)?;
    let reason = query.reason.unwrap_or_default();
    let stream = id.stream().map_err(recur_commands::BillingError::from)?;
    let (erased, _) = within(
        context(&caller, Some(stream), None),
        state.billing.forget(id, reason.into(), Source::Api),
    )
    .await;
    let erased = erased?;
    let dto = ErasureDto {
        object: "personal_data_erasure",
        customer: id.0,
        erased_at: rfc3339(erased.at),
        key_destroyed: erased.key_destroyed,
    };
    Ok(json_response(StatusCode::OK, &to_value(&dto)?))
}

/// Every fact about a customer, decrypted, as one document (a GDPR access
/// request): the customer now and every event of its streams in ledger order.
/// The export is itself recorded in the customer's access log.
#[utoipa::path(get, operation_id = "customers_export", path = "/v1/customers/{id}/export", tag = "customers",
    params(("id" = String, Path, description = "Customer id")),
    responses((status = 200, description = "Done", body = CustomerExport), (status = "4XX", description = "Refused: a problem with a stable code", body = Problem)), security(("api_key" = ["admin", "support"])))]
pub async fn export(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = customer_id(&id)?;
    let customer = customer_unrecorded(&state, id, Role::Admin, None).await?;
    // Recorded before the data is gathered: an export that fails half-way has
    // still been asked for, and the record itself is part of what is exported.
    record_read(&state, &caller, id, PersonalDataUse::Export).await?;
    let (mut events, more) = history::page(
        state.billing.ledger(),
        &customer_streams(&state, id).await?,
        Position(0),
        history::HISTORY_EVENTS_MAX,
    )
    .await?;
    if more {
        // An export is every fact or none.
        return Err(history::HistoryError::TooLong.into());
    }
    // The trail withholds details in clear: take every contact event as stored.
    let stream = recur_commands::billing::contact_stream(id).map_err(BillingError::from)?;
    let stored: std::collections::HashMap<u64, String> = state
        .billing
        .ledger()
        .read_stream(&stream, 1, history::HISTORY_EVENTS_MAX)
        .await
        .map_err(BillingError::from)?
        .into_iter()
        .map(|event| (event.position.0, event.payload))
        .collect();
    for entry in &mut events {
        let event = &mut entry.event;
        let Some(payload) = stored.get(&event.position) else {
            continue;
        };
        let contact = match ContactEvent::decode_payload(payload) {
            Ok(ContactEvent::ContactDetailsEncrypted { encrypted }) => {
                StoredContact::Encrypted(encrypted)
            }
            Ok(ContactEvent::ContactDetailsUpdated { details }) => StoredContact::Clear(details),
            Err(_) => {
                return Err(super::unavailable(format!(
                    "the contact event at position {} cannot be decoded",
                    event.position
                )));
            }
        };
        let details = state.billing.open_contact(id, &contact).await?;
        event.data = serde_json::json!({
            "type": event.event_type,
            "details": details.map(ContactDto::from),
        });
    }
    let export = CustomerExport {
        object: "customer_export",
        exported_at: rfc3339(state.billing.ledger().clock().now()),
        customer,
        events,
    };
    Ok(json_response(StatusCode::OK, &to_value(&export)?))
}

/// Update a customer's segment, tax location or contact details.
#[utoipa::path(post, operation_id = "customers_update", path = "/v1/customers/{id}", tag = "customers", request_body = CustomerUpdate,
    params(("id" = String, Path, description = "Customer id"),
           ("If-Match" = Option<String>, Header, description = "The version you last saw"),
           ("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer for the same body")),
    responses((status = 200, description = "Done", body = CustomerDto), (status = "4XX", description = "Refused: a problem with a stable code", body = Problem)), security(("api_key" = ["admin", "billing", "support"])))]
pub async fn update(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Response {
    let route = format!("POST /v1/customers/{id}");
    idempotent(&state, &caller, &headers, &route, &body, async {
        let id = customer_id(&id)?;
        let expected = if_match(&headers)?;
        let input: CustomerUpdate = parse(&body)?;
        let tax_location = input
            .tax_location
            .as_ref()
            .map(|t| t.to_domain())
            .transpose()?;
        let billing = &state.billing;
        let work = async {
            billing.customer(id).await?;
            if let Some(segment) = input.segment {
                billing.set_segment(id, segment.into()).await?;
            }
            if let Some(location) = tax_location {
                billing.set_tax_location(id, location).await?;
            }
            if let Some(contact) = input.contact {
                billing.update_contact(id, contact.into()).await?;
            }
            Ok::<(), recur_commands::BillingError>(())
        };
        let (result, ctx) = within(
            context(
                &caller,
                Some(id.stream().map_err(recur_commands::BillingError::from)?),
                expected,
            ),
            work,
        )
        .await;
        result?;
        let dto = customer_dto(&state, &caller, id, ctx.last_position.map(|p| p.0)).await?;
        Ok((StatusCode::OK, to_value(&dto)?))
    })
    .await
}

/// Put a card on file (the provider's token, brand, last4, expiry; never a card number).
#[utoipa::path(post, operation_id = "customers_attach_payment_method", path = "/v1/customers/{id}/payment_method", tag = "customers", request_body = PaymentMethodDto,
    params(("id" = String, Path, description = "Customer id"),
           ("If-Match" = Option<String>, Header, description = "The version you last saw"),
           ("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer for the same body")),
    responses((status = 200, description = "Done", body = CustomerDto), (status = "4XX", description = "Refused: a problem with a stable code", body = Problem)), security(("api_key" = ["admin", "billing"])))]
pub async fn attach_payment_method(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Response {
    let route = format!("POST /v1/customers/{id}/payment_method");
    idempotent(&state, &caller, &headers, &route, &body, async {
        let id = customer_id(&id)?;
        let expected = if_match(&headers)?;
        let input: PaymentMethodDto = parse(&body)?;
        let stream = id.stream().map_err(recur_commands::BillingError::from)?;
        let (result, ctx) = within(
            context(&caller, Some(stream), expected),
            state.billing.attach_payment_method(id, input.into()),
        )
        .await;
        result?;
        let dto = customer_dto(&state, &caller, id, ctx.last_position.map(|p| p.0)).await?;
        Ok((StatusCode::OK, to_value(&dto)?))
    })
    .await
}

/// The query of `GET /v1/customers/{id}/history`: the paging of `GET /v1/events`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// Page size, 1..=100 (default 10).
    pub limit: Option<usize>,
    /// The position of the last entry of the previous page (`next_cursor`).
    pub starting_after: Option<u64>,
}

/// A customer's history: every fact of its streams (its own, its contact's,
/// its subscriptions' and its invoices'), in ledger order, each with a summary
/// and its resource's state right after it.
#[utoipa::path(get, operation_id = "customers_history", path = "/v1/customers/{id}/history", tag = "customers",
    params(("id" = String, Path, description = "Customer id"),
           ("limit" = Option<u32>, Query, description = "1 to 100, default 10", minimum = 1, maximum = 100),
           ("starting_after" = Option<u64>, Query, description = "A ledger position: the `next_cursor` of the previous page")),
    responses((status = 200, description = "Done", body = HistoryList), (status = "4XX", description = "Refused: a problem with a stable code", body = Problem)), security(("api_key" = ["admin", "support"])))]
pub async fn history(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    Params(query): Params<HistoryQuery>,
) -> Result<Response, ApiError> {
    // The history shows the events' payloads, as the trail does.
    events::require_personal_data(&caller)?;
    let id = customer_id(&id)?;
    let limit = events::page_items(query.limit)?;
    state.billing.customer(id).await?;
    let (entries, has_more) = history::page(
        state.billing.ledger(),
        &customer_streams(&state, id).await?,
        Position(query.starting_after.unwrap_or(0)),
        limit,
    )
    .await?;
    let list = HistoryList::new(entries, has_more);
    Ok(json_response(StatusCode::OK, &to_value(&list)?))
}

/// The customer's streams, as the history reads them.
async fn customer_streams(state: &AppState, id: CustomerId) -> Result<Vec<StreamId>, ApiError> {
    events::customer_streams(state, id)
        .await?
        .into_iter()
        .map(|stream| StreamId::parse(stream).map_err(super::unavailable))
        .collect()
}
