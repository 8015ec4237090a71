//! /v1/events: the ledger as a list of events (the audit trail), in ledger order.
//!
//! Every event is personal data's neighbour (a `contact` stream's payload *is*
//! personal data, encrypted under the customer's data key and listed as stored), so only the roles that see personal data (admin, support)
//! may read the trail; billing and analysts are refused (403) rather than given
//! a redacted copy that a later event type could leak through.
//!
//! A filter that matches little must not read the whole ledger per request:
//! one request examines at most [`SCAN_EVENTS_MAX`] events and answers what it
//! found, with `has_more` and a `next_cursor` at the position where it stopped.

use std::collections::HashSet;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use recur_commands::CustomerId;
use recur_ledger::{Ledger, LedgerError, Position, RecordedEvent, StreamId};
use serde::Deserialize;
use time::OffsetDateTime;

use super::{customer_id, invoice_id, stored_id, subscription_id, to_value};
use crate::AppState;
use crate::auth::Caller;
use crate::dto::{EventDto, EventList};
use crate::problem::{ApiError, Problem};
use crate::request::{Params, json_response};

/// Most events one request examines, matching or not.
pub const SCAN_EVENTS_MAX: usize = 10_000;
/// Events read from the ledger in one `read_all` page.
const SCAN_PAGE_EVENTS: usize = 1_000;
/// Default page size.
const PAGE_ITEMS_DEFAULT: usize = 10;
/// Largest page size.
const PAGE_ITEMS_MAX: usize = 100;
/// Most streams the `customer` filter follows (its own two, its subscriptions'
/// and its invoices'); a customer with more is refused, not scanned partially.
const CUSTOMER_STREAMS_MAX: usize = 10_000;
/// Longest `actor` or `external_id` accepted, in bytes.
const TEXT_FILTER_BYTES_MAX: usize = 255;

/// The query of `GET /v1/events` (percent-decoded; unknown or repeated
/// parameters refused).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Page size, 1..=100 (default 10).
    pub limit: Option<usize>,
    /// The position of the last event of the previous page (`next_cursor`).
    pub starting_after: Option<u64>,
    /// One stream.
    pub resource: Option<String>,
    /// An event type, or a prefix ending with `*`.
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    /// The actor (an API key id, `scheduler`, …).
    pub actor: Option<String>,
    /// Recorded at or after (RFC 3339).
    #[serde(rename = "created[gte]")]
    pub created_gte: Option<String>,
    /// Recorded at or before (RFC 3339).
    #[serde(rename = "created[lte]")]
    pub created_lte: Option<String>,
    /// Every stream of one customer.
    pub customer: Option<String>,
    /// The id an outside system gave the fact (metadata `external_id`).
    pub external_id: Option<String>,
}

/// An event type asked for: exact, or every type starting with a prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TypeFilter {
    /// This type only.
    Exact(String),
    /// Every type with this prefix (`Invoice*`).
    Prefix(String),
}

impl TypeFilter {
    /// Parses `Type` or `Prefix*`.
    ///
    /// # Errors
    /// 422 `invalid_query` for anything that is not an event type name with
    /// at most one trailing `*`.
    pub fn parse(text: &str) -> Result<Self, ApiError> {
        let (name, prefix) = match text.strip_suffix('*') {
            Some(name) => (name, true),
            None => (text, false),
        };
        let plain = name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-');
        if !plain || name.len() > 100 || (name.is_empty() && !prefix) {
            return Err(invalid(
                "type must be an event type (letters, digits, '_', '.', '-'), \
                 or a prefix of one ending with '*'",
            ));
        }
        Ok(if prefix {
            Self::Prefix(name.to_owned())
        } else {
            Self::Exact(name.to_owned())
        })
    }

    fn matches(&self, event_type: &str) -> bool {
        match self {
            Self::Exact(name) => event_type == name,
            Self::Prefix(prefix) => event_type.starts_with(prefix.as_str()),
        }
    }
}

/// What an event must be to be listed: every filter given holds.
#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    /// Only events of these streams (`resource`, or a customer's streams).
    pub streams: Option<HashSet<String>>,
    /// Never events of these streams (what the caller's role may not read).
    pub hidden_streams: HashSet<String>,
    /// Only this type or prefix.
    pub event_type: Option<TypeFilter>,
    /// Only this actor.
    pub actor: Option<String>,
    /// Recorded at or after.
    pub created_gte: Option<OffsetDateTime>,
    /// Recorded at or before.
    pub created_lte: Option<OffsetDateTime>,
    /// Only events whose metadata carries this `external_id`.
    pub external_id: Option<String>,
}

impl EventFilter {
    /// Whether `event` passes every filter.
    pub fn matches(&self, event: &RecordedEvent) -> bool {
        if self.hidden_streams.contains(event.stream_id.as_str()) {
            return false;
        }
        if let Some(streams) = &self.streams
            && !streams.contains(event.stream_id.as_str())
        {
            return false;
        }
        if let Some(filter) = &self.event_type
            && !filter.matches(&event.event_type)
        {
            return false;
        }
        if let Some(actor) = &self.actor
            && event.metadata.actor.as_deref() != Some(actor.as_str())
        {
            return false;
        }
        if self.created_gte.is_some_and(|at| event.recorded_at < at) {
            return false;
        }
        if self.created_lte.is_some_and(|at| event.recorded_at > at) {
            return false;
        }
        if let Some(external_id) = &self.external_id
            && event.metadata.external_id.as_deref() != Some(external_id.as_str())
        {
            return false;
        }
        true
    }
}

fn invalid(reason: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_query", reason)
}

pub(crate) fn time_bound(
    field: &'static str,
    text: Option<&str>,
) -> Result<Option<OffsetDateTime>, ApiError> {
    text.map(|text| {
        OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).map_err(|_| {
            invalid(format!(
                "{field} must be an RFC 3339 timestamp such as 2026-01-31T00:00:00Z"
            ))
        })
    })
    .transpose()
}

pub(crate) fn text_filter(
    field: &'static str,
    text: Option<&str>,
) -> Result<Option<String>, ApiError> {
    text.map(|text| {
        if text.is_empty() || text.len() > TEXT_FILTER_BYTES_MAX {
            Err(invalid(format!(
                "{field} must be 1 to {TEXT_FILTER_BYTES_MAX} bytes"
            )))
        } else {
            Ok(text.to_owned())
        }
    })
    .transpose()
}

/// Every stream of one customer: its own, its contact's, its subscriptions'
/// and its invoices' (from the lists' read model, caught up with the ledger).
///
/// # Errors
/// 422 `invalid_query` for a customer with more than 10,000 streams; 503
/// when the read models cannot be read or stay behind.
pub async fn customer_streams(
    state: &AppState,
    id: CustomerId,
) -> Result<HashSet<String>, ApiError> {
    let mut streams = HashSet::from([
        id.stream()?.as_str().to_owned(),
        recur_commands::billing::contact_stream(id)?
            .as_str()
            .to_owned(),
        recur_commands::billing::access_stream(id)?
            .as_str()
            .to_owned(),
    ]);
    let db = super::read_models_current(state).await?;
    let customer = id.to_string();
    let too_many = || {
        invalid(format!(
            "the customer has more than {CUSTOMER_STREAMS_MAX} resources: filter by resource"
        ))
    };
    let mut after: Option<String> = None;
    loop {
        let (ids, more) = recur_projections::customers::subscriptions_page(
            &db,
            Some(&customer),
            after.as_deref(),
            PAGE_ITEMS_MAX,
        )
        .await
        .map_err(super::unavailable)?
        .unwrap_or_default();
        for sub in &ids {
            streams.insert(
                stored_id(sub, subscription_id)?
                    .stream()?
                    .as_str()
                    .to_owned(),
            );
        }
        if streams.len() > CUSTOMER_STREAMS_MAX {
            return Err(too_many());
        }
        match (more, ids.last()) {
            (true, Some(last)) => after = Some(last.clone()),
            _ => break,
        }
    }
    let filter = recur_projections::customers::InvoiceFilter::Customer(customer);
    let mut after: Option<String> = None;
    loop {
        let (ids, more) = recur_projections::customers::invoices_page(
            &db,
            &filter,
            after.as_deref(),
            PAGE_ITEMS_MAX,
        )
        .await
        .map_err(super::unavailable)?
        .unwrap_or_default();
        for invoice in &ids {
            streams.insert(
                stored_id(invoice, invoice_id)?
                    .stream()?
                    .as_str()
                    .to_owned(),
            );
        }
        if streams.len() > CUSTOMER_STREAMS_MAX {
            return Err(too_many());
        }
        match (more, ids.last()) {
            (true, Some(last)) => after = Some(last.clone()),
            _ => break,
        }
    }
    Ok(streams)
}

/// The page size asked for (`limit`), checked: 1 to 100, default 10.
///
/// # Errors
/// 422 `invalid_query` outside 1..=100.
pub fn page_items(limit: Option<usize>) -> Result<usize, ApiError> {
    let limit = limit.unwrap_or(PAGE_ITEMS_DEFAULT);
    if (1..=PAGE_ITEMS_MAX).contains(&limit) {
        Ok(limit)
    } else {
        Err(invalid(format!("limit must be 1 to {PAGE_ITEMS_MAX}")))
    }
}

/// The query, parsed into a page size, a cursor and a filter.
async fn parse_query(
    state: &AppState,
    query: &EventsQuery,
) -> Result<(usize, Position, EventFilter), ApiError> {
    let limit = page_items(query.limit)?;
    let resource = query
        .resource
        .as_deref()
        .map(|text| {
            StreamId::parse(text)
                .map(|stream| stream.as_str().to_owned())
                .map_err(|_| invalid("resource must be a stream id such as customer-<id>"))
        })
        .transpose()?;
    let created_gte = time_bound("created[gte]", query.created_gte.as_deref())?;
    let created_lte = time_bound("created[lte]", query.created_lte.as_deref())?;
    let mut filter = EventFilter {
        streams: None,
        hidden_streams: HashSet::new(),
        event_type: query
            .event_type
            .as_deref()
            .map(TypeFilter::parse)
            .transpose()?,
        actor: text_filter("actor", query.actor.as_deref())?,
        created_gte,
        created_lte,
        external_id: text_filter("external_id", query.external_id.as_deref())?,
    };
    // Checked before the customer's streams are looked up: bad input costs nothing.
    let customer = match query.customer.as_deref() {
        Some(customer) => {
            let id =
                customer_id(customer).map_err(|_| invalid("customer must be a customer id"))?;
            Some(customer_streams(state, id).await?)
        }
        None => None,
    };
    filter.streams = match (resource, customer) {
        (None, None) => None,
        (Some(resource), None) => Some(HashSet::from([resource])),
        (None, Some(streams)) => Some(streams),
        // Both: the resource, if it is one of the customer's.
        (Some(resource), Some(streams)) => Some(
            streams
                .into_iter()
                .filter(|stream| *stream == resource)
                .collect(),
        ),
    };
    Ok((limit, Position(query.starting_after.unwrap_or(0)), filter))
}

/// A page of up to `limit` events after `after` that pass `filter`, examining
/// at most `budget` events ([`SCAN_EVENTS_MAX`] for a request): the events,
/// and where the next page starts when there may be more (the last event
/// listed, or the last one examined when the budget ran out first).
///
/// # Errors
/// Ledger errors.
pub async fn scan(
    ledger: &Ledger,
    after: Position,
    (limit, budget): (usize, usize),
    filter: &EventFilter,
) -> Result<(Vec<RecordedEvent>, Option<Position>), LedgerError> {
    let mut found = Vec::with_capacity(limit);
    let mut cursor = after;
    let mut examined = 0;
    while examined < budget {
        let want = SCAN_PAGE_EVENTS.min(budget - examined);
        let page = ledger.read_all(cursor, want).await?;
        let end = page.len() < want;
        for event in page {
            examined += 1;
            cursor = event.position;
            if filter.matches(&event) {
                if found.len() == limit {
                    // One more than a page: there is more, after the last listed.
                    let next = found.last().map(|e: &RecordedEvent| e.position);
                    return Ok((found, next));
                }
                found.push(event);
            }
        }
        if end {
            return Ok((found, None));
        }
    }
    // The budget is spent: the next page starts where this scan stopped.
    Ok((found, Some(cursor)))
}

/// An event as the API lists it: its payload as recorded.
///
/// # Errors
/// 503 when the stored payload is not JSON.
pub fn event_dto(event: RecordedEvent) -> Result<EventDto, ApiError> {
    let position = event.position.0;
    EventDto::of(event).map_err(|_| {
        super::unavailable(format!(
            "the event at position {position} holds a payload that is not JSON"
        ))
    })
}

/// Refuses the roles that may not read personal data: the trail's payloads
/// hold it. The routes declare the same roles; this keeps them in step.
///
/// # Errors
/// 403 `forbidden`.
pub fn require_personal_data(caller: &Caller) -> Result<(), ApiError> {
    if caller.role.sees_personal_data() {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the events hold personal data",
        ))
    }
}

/// List the ledger's events (the audit trail), in ledger order.
///
/// One request examines at most 10,000 events: a filter that matches little
/// answers what it found with `has_more` and a `next_cursor` where it stopped.
#[utoipa::path(get, operation_id = "events_list", path = "/v1/events", tag = "events",
    params(("limit" = Option<u32>, Query, description = "1 to 100, default 10", minimum = 1, maximum = 100),
           ("starting_after" = Option<u64>, Query, description = "A ledger position: the `next_cursor` of the previous page"),
           ("resource" = Option<String>, Query, description = "Only this stream, e.g. customer-<id>"),
           ("type" = Option<String>, Query, description = "An event type, or a prefix ending with `*` (Invoice*)"),
           ("actor" = Option<String>, Query, description = "Only events written by this actor (an API key id, scheduler)"),
           ("created[gte]" = Option<String>, Query, format = DateTime, description = "Recorded at or after (RFC 3339)"),
           ("created[lte]" = Option<String>, Query, format = DateTime, description = "Recorded at or before (RFC 3339)"),
           ("customer" = Option<String>, Query, description = "Every stream of this customer: its own, its contact's, its access log's, its subscriptions' and invoices'"),
           ("external_id" = Option<String>, Query, description = "The id an outside system gave the fact (a Stripe event's evt_…)")),
    responses((status = 200, description = "Done", body = EventList), (status = "4XX", description = "Refused: a problem with a stable code", body = Problem)), security(("api_key" = ["admin", "support"])))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Params(query): Params<EventsQuery>,
) -> Result<Response, ApiError> {
    require_personal_data(&caller)?;
    let (limit, after, mut filter) = parse_query(&state, &query).await?;
    if caller.role != crate::auth::Role::Admin {
        // The keys' own trail (who made, rotated or revoked which key, and the
        // digests of their secrets) is key management: admin only.
        filter
            .hidden_streams
            .insert(crate::auth::KEYS_STREAM.to_owned());
    }
    let stripe_stream = filter
        .external_id
        .as_deref()
        .filter(|id| id.starts_with("evt_"))
        .and_then(|id| recur_commands::webhook::stripe_event_stream(id).ok());
    let (events, next) = match stripe_stream {
        // A Stripe event is kept on a stream of its own: read it, not the ledger.
        Some(stream) => {
            let found: Vec<RecordedEvent> = state
                .billing
                .ledger()
                .read_stream(&stream, 1, PAGE_ITEMS_MAX)
                .await
                .map_err(recur_commands::BillingError::from)?
                .into_iter()
                .filter(|event| event.position > after && filter.matches(event))
                .take(limit)
                .collect();
            (found, None)
        }
        None => {
            scan(
                state.billing.ledger(),
                after,
                (limit, SCAN_EVENTS_MAX),
                &filter,
            )
            .await?
        }
    };
    let list = EventList {
        object: "list",
        data: events
            .into_iter()
            .map(event_dto)
            .collect::<Result<_, _>>()?,
        has_more: next.is_some(),
        next_cursor: next.map(|p| p.0),
    };
    Ok(json_response(StatusCode::OK, &to_value(&list)?))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_type_filter_is_exact_or_a_prefix_ending_with_a_star() {
        let exact = TypeFilter::parse("InvoicePaid").unwrap();
        assert!(exact.matches("InvoicePaid"));
        assert!(!exact.matches("InvoicePaidLater"));
        let prefix = TypeFilter::parse("Invoice*").unwrap();
        assert!(prefix.matches("InvoiceIssued") && prefix.matches("Invoice"));
        assert!(!prefix.matches("SubscriptionStarted"));
        assert!(TypeFilter::parse("*").unwrap().matches("Anything"));
        for bad in ["", "In*voice", "Invoice**", "a b", "é"] {
            assert!(TypeFilter::parse(bad).is_err(), "{bad:?}");
        }
    }

    /// A filter that matches little reads no more than its budget: it answers
    /// what it found with a cursor where it stopped, and the next request goes on.
    #[tokio::test]
    async fn a_scan_stops_at_its_budget_and_its_cursor_resumes_where_it_stopped() {
        let path = std::env::temp_dir().join(format!(
            "recur-api-events-{}.sqlite",
            uuid::Uuid::new_v4().simple()
        ));
        let ledger = Ledger::open(
            recur_ledger::LedgerConfig::new(format!("sqlite:{}", path.display()))
                .create_if_missing(true),
            Arc::new(recur_ledger::SystemClock),
        )
        .await
        .unwrap();
        // 25 events, every fifth of them a match.
        let stream = StreamId::parse("audit-1").unwrap();
        let events = (0..25)
            .map(|i| {
                let kind = if i % 5 == 4 { "Wanted" } else { "Other" };
                recur_ledger::NewEvent::new(
                    recur_ledger::EventId::new_at(OffsetDateTime::now_utc()),
                    kind,
                    1,
                    &serde_json::json!({"i": i}),
                )
                .unwrap()
            })
            .collect();
        ledger
            .append(&stream, recur_ledger::ExpectedVersion::NoStream, events)
            .await
            .unwrap();
        let filter = EventFilter {
            event_type: Some(TypeFilter::parse("Wanted").unwrap()),
            ..EventFilter::default()
        };
        // A budget of 7 finds the 5th event and stops after the 7th.
        let (found, next) = scan(&ledger, Position(0), (10, 7), &filter).await.unwrap();
        assert_eq!(found.iter().map(|e| e.position.0).collect::<Vec<_>>(), [5]);
        assert_eq!(next, Some(Position(7)));
        // The pages visit every match once, whatever the budget.
        let mut positions = Vec::new();
        let mut after = Position(0);
        for _ in 0..100 {
            let (found, next) = scan(&ledger, after, (2, 7), &filter).await.unwrap();
            positions.extend(found.iter().map(|e| e.position.0));
            match next {
                Some(next) => after = next,
                None => break,
            }
        }
        assert_eq!(positions, [5, 10, 15, 20, 25]);
        // A page that fills before the budget points at its last event.
        let (found, next) = scan(&ledger, Position(0), (2, 100), &filter).await.unwrap();
        assert_eq!(found.len(), 2);
        assert_eq!(next, Some(Position(10)));
        drop(ledger);
        let _ = std::fs::remove_file(&path);
    }
}
