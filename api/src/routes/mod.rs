//! The handlers, one module per resource.

pub mod catalog;
pub mod coupons;
pub mod customers;
pub mod dunning;
pub mod events;
pub mod invoices;
pub mod metrics;
pub mod reconciliations;
pub mod subscriptions;
pub mod system;
pub mod update_card;
pub mod webhooks;

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use recur_commands::context::{RequestContext, within};
use recur_commands::{BillingError, CustomerId, InvoiceId, SubscriptionId};
use recur_ledger::StreamId;

use super::AppState;
use super::auth::Caller;
use super::problem::ApiError;
use super::request::{idempotent, if_match};

/// The read models once the lists' projection (`customers`) holds every event
/// committed before this request, so a list shows the caller's own writes
/// (waits at most [`metrics::MIN_POSITION_WAIT_MS`], then 503
/// `projection_behind`); the other projections may lag without holding lists up.
///
/// # Errors
/// 503 when the ledger cannot be read or the projection stays behind.
pub async fn read_models_current(state: &AppState) -> Result<recur_projections::db::Db, ApiError> {
    let head = state.billing.ledger().last_position().await?;
    metrics::wait_on(&state.lists_projected, head.0).await?;
    Ok(state.read_models.clone())
}

/// A read model that could not be read: the server's trouble, not the caller's.
pub fn unavailable(error: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        error.to_string(),
    )
}

/// An id a read model stored, parsed with `parse`; one that does not parse is
/// a damaged read model (503), not the caller's mistake.
///
/// # Errors
/// 503 `unavailable`.
pub fn stored_id<T>(
    text: &str,
    parse: impl Fn(&str) -> Result<T, ApiError>,
) -> Result<T, ApiError> {
    parse(text).map_err(|_| unavailable(format!("a read model holds {text:?} where an id belongs")))
}

/// A page a list's read model answered, its ids parsed with `parse`.
///
/// # Errors
/// 503 for a read model that failed or holds no id; 422 `invalid_query` when
/// the cursor named no item of the list (`None`).
pub fn list_page<T>(
    page: Result<Option<(Vec<String>, bool)>, recur_projections::db::DbError>,
    kind: &str,
    parse: impl Fn(&str) -> Result<T, ApiError>,
) -> Result<(Vec<T>, bool), ApiError> {
    let (ids, has_more) = page.map_err(unavailable)?.ok_or_else(|| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_query",
            format!("starting_after names no {kind} of this list"),
        )
    })?;
    let ids = ids
        .iter()
        .map(|id| stored_id(id, &parse))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((ids, has_more))
}

/// Now on the ledger's clock (a test clock when serving with one), never the machine's.
pub fn ledger_now(state: &AppState) -> time::OffsetDateTime {
    recur_ledger::Clock::now(state.billing.ledger().clock().as_ref())
}

/// The request context for a caller, with an `If-Match` precondition on `stream`.
pub fn context(caller: &Caller, stream: Option<StreamId>, expected: Option<u64>) -> RequestContext {
    RequestContext {
        actor: Some(caller.key_id.clone()),
        // The request id comes from the context the HTTP edge runs the handler in.
        request_id: None,
        expected: stream.zip(expected),
        last_position: None,
    }
}

/// A command on one resource, as every `POST /v1/<resources>/{id}/<action>` runs
/// it: writers only; a repeated `Idempotency-Key` replays the first answer; the
/// path id, then `If-Match`, then the body are checked (`command` parses the body
/// and returns the resource's stream and the work); the work runs within the
/// caller's request context, guarded by `If-Match`; the answer is the resource
/// after the write, built by `answer` from the write's ledger position.
pub async fn resource_action<Id, T, Work, Answer>(
    (state, caller): (&AppState, &Caller),
    route: &str,
    (headers, body): (&HeaderMap, &[u8]),
    id: Result<Id, ApiError>,
    command: impl FnOnce(Id, &[u8]) -> Result<(StreamId, Work), ApiError>,
    answer: impl FnOnce(Id, Option<u64>) -> Answer,
) -> Response
where
    Id: Copy,
    Work: Future<Output = Result<T, BillingError>>,
    Answer: Future<Output = Result<serde_json::Value, ApiError>>,
{
    idempotent(state, caller, headers, route, body, async {
        let id = id?;
        let expected = if_match(headers)?;
        let (stream, work) = command(id, body)?;
        let (result, ctx) = within(context(caller, Some(stream), expected), work).await;
        result?;
        let resource = answer(id, ctx.last_position.map(|p| p.0)).await?;
        Ok((StatusCode::OK, resource))
    })
    .await
}

/// A JSON value of a response body.
///
/// # Errors
/// Never in practice (our types serialise).
pub fn to_value<T: serde::Serialize>(value: &T) -> Result<serde_json::Value, ApiError> {
    serde_json::to_value(value).map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    })
}

macro_rules! id_parser {
    ($name:ident, $ty:ty, $kind:literal) => {
        /// Parses a path id; anything that is not a UUID is simply not found.
        ///
        /// # Errors
        /// 404.
        pub fn $name(text: &str) -> Result<$ty, ApiError> {
            <$ty>::parse(text).map_err(|_| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    concat!($kind, "_not_found"),
                    concat!("no such ", $kind),
                )
            })
        }
    };
}

id_parser!(customer_id, CustomerId, "customer");
id_parser!(subscription_id, SubscriptionId, "subscription");
id_parser!(invoice_id, InvoiceId, "invoice");

/// `limit` and `starting_after` of a list, plus filters (percent-decoded;
/// unknown or repeated parameters refused).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Page size, 1..=100 (default 10).
    pub limit: Option<usize>,
    /// The last id of the previous page.
    pub starting_after: Option<String>,
    /// customer=<id>.
    pub customer: Option<String>,
    /// subscription=<id> (invoices only).
    pub subscription: Option<String>,
}

impl ListQuery {
    /// `starting_after` as the stored text of an id of `kind`, checked with `parse`.
    ///
    /// # Errors
    /// 422 `invalid_query` when it is no such id.
    pub fn cursor<T: ToString>(
        &self,
        kind: &str,
        parse: impl Fn(&str) -> Result<T, ApiError>,
    ) -> Result<Option<String>, ApiError> {
        self.starting_after
            .as_deref()
            .map(|cursor| {
                parse(cursor).map(|id| id.to_string()).map_err(|_| {
                    ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "invalid_query",
                        format!("starting_after must be the id of a {kind} of this list"),
                    )
                })
            })
            .transpose()
    }

    /// The page size asked for, checked.
    ///
    /// # Errors
    /// 422 `invalid_query` outside 1..=100.
    pub fn page_items(&self) -> Result<usize, ApiError> {
        let limit = self.limit.unwrap_or(10);
        if (1..=recur_projections::customers::PAGE_ITEMS_MAX).contains(&limit) {
            Ok(limit)
        } else {
            Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_query",
                format!(
                    "limit must be 1 to {}",
                    recur_projections::customers::PAGE_ITEMS_MAX
                ),
            ))
        }
    }
}
