//! Every parser of what a client sends, in one table: each route's JSON body
//! ([`Body`]) and each query string ([`Query`]), followed by the checks of it
//! that need nothing but the input (money, tax location, contact, card, times,
//! catalog fields). The property tests (api/tests/parsers.rs) and the fuzz
//! targets (fuzz/) drive these with arbitrary input: whatever comes in, the
//! answer is `Ok` or an [`ApiError`] with a 4xx status and a stable code, never
//! a panic.
//!
//! The handlers call the same functions; what they check against the ledger or
//! the catalog (does the plan exist?) is left to the HTTP tests.

use axum::http::{StatusCode, Uri};
use recur_commands::customer::{ContactDetails, PaymentMethod};
use serde::de::DeserializeOwned;
use time::OffsetDateTime;
use time::macros::{date, datetime};

use crate::dto::{
    AdvanceBody, CancelBody, CouponCreate, CustomerCreate, CustomerUpdate, DiscountBody, KeyCreate,
    PaymentMethodDto, PlanChangeBody, PlanCreate, PlanUpdate, PriceCreate, PurchaseCreate,
    RefundBody, RemoveDiscountBody, SubscriptionCreate, TaxRateCreate, TaxRateRetire, parse_time,
};
use crate::problem::ApiError;
use crate::request::{Params, parse};
use crate::routes::metrics::{
    AsOfQuery, MonthlyQuery, MovementsQuery, MrrAtQuery, ReadingQuery, SeriesQuery,
};
use crate::routes::subscriptions::Empty;
use crate::routes::{ListQuery, catalog, customers, events, metrics};

/// The instant a card's expiry is judged at: fixed, so a run is repeatable.
const NOW: OffsetDateTime = datetime!(2027-01-01 00:00 UTC);

/// A JSON body one or more routes take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    /// `POST /v1/customers`.
    CustomerCreate,
    /// `POST /v1/customers/{id}`.
    CustomerUpdate,
    /// `POST /v1/customers/{id}/payment_method`.
    PaymentMethod,
    /// `POST /v1/subscriptions`.
    SubscriptionCreate,
    /// `POST /v1/subscriptions/{id}/change` and `/preview_change`.
    PlanChange,
    /// `POST /v1/subscriptions/{id}/cancel`.
    Cancel,
    /// `POST /v1/subscriptions/{id}/discount`.
    Discount,
    /// `DELETE /v1/subscriptions/{id}/discount`.
    RemoveDiscount,
    /// `POST /v1/invoices/{id}/refund`.
    Refund,
    /// `POST /v1/purchases`.
    Purchase,
    /// `POST /v1/coupons`.
    CouponCreate,
    /// `POST /v1/prices`.
    PriceCreate,
    /// `POST /v1/plans`.
    PlanCreate,
    /// `POST /v1/plans/{id}`.
    PlanUpdate,
    /// `POST /v1/tax_rates`.
    TaxRateCreate,
    /// `POST /v1/tax_rates/{id}/retire`.
    TaxRateRetire,
    /// `POST /v1/test_clock/advance`.
    Advance,
    /// `POST /v1/api_keys`.
    KeyCreate,
    /// The routes that take no fields (pause, resume, pay, void, rotate, …).
    Empty,
}

impl Body {
    /// Every body.
    pub const ALL: [Body; 19] = [
        Body::CustomerCreate,
        Body::CustomerUpdate,
        Body::PaymentMethod,
        Body::SubscriptionCreate,
        Body::PlanChange,
        Body::Cancel,
        Body::Discount,
        Body::RemoveDiscount,
        Body::Refund,
        Body::Purchase,
        Body::CouponCreate,
        Body::PriceCreate,
        Body::PlanCreate,
        Body::PlanUpdate,
        Body::TaxRateCreate,
        Body::TaxRateRetire,
        Body::Advance,
        Body::KeyCreate,
        Body::Empty,
    ];

    /// Parses `bytes` as this body, then checks what can be checked without
    /// the ledger.
    ///
    /// # Errors
    /// The 4xx the route would answer: `malformed_json`, `invalid_body`, or a
    /// field's own code (`invalid_field`, `invalid_amount`, `card_number_rejected`, …).
    pub fn parse(self, bytes: &[u8]) -> Result<(), ApiError> {
        match self {
            Body::CustomerCreate => {
                let body: CustomerCreate = parse(bytes)?;
                customer_fields(body.tax_location.as_ref(), body.contact)
            }
            Body::CustomerUpdate => {
                let body: CustomerUpdate = parse(bytes)?;
                customer_fields(body.tax_location.as_ref(), body.contact)
            }
            Body::PaymentMethod => {
                let body: PaymentMethodDto = parse(bytes)?;
                Ok(PaymentMethod::from(body).validate(NOW)?)
            }
            Body::SubscriptionCreate => only::<SubscriptionCreate>(bytes),
            Body::PlanChange => only::<PlanChangeBody>(bytes),
            Body::Cancel => only::<CancelBody>(bytes),
            Body::Discount => only::<DiscountBody>(bytes),
            Body::RemoveDiscount => only::<RemoveDiscountBody>(bytes),
            Body::Refund => {
                let body: RefundBody = parse(bytes)?;
                body.amount.to_money().map(drop)
            }
            Body::Purchase => only::<PurchaseCreate>(bytes),
            Body::CouponCreate => {
                let body: CouponCreate = parse(bytes)?;
                if let Some(amount) = &body.amount_off {
                    amount.to_money()?;
                }
                time(body.redeem_by.as_deref(), "redeem_by")
            }
            Body::PriceCreate => {
                let body: PriceCreate = parse(bytes)?;
                body.unit_amount.to_money()?;
                catalog::billing_of(&body.interval, body.interval_count).map(drop)
            }
            Body::PlanCreate => {
                let body: PlanCreate = parse(bytes)?;
                body.price.unit_amount.to_money()?;
                catalog::billing_of(&body.price.interval, body.price.interval_count).map(drop)
            }
            Body::PlanUpdate => only::<PlanUpdate>(bytes),
            Body::TaxRateCreate => {
                let body: TaxRateCreate = parse(bytes)?;
                catalog::fraction_of(&body.percent)?;
                time(body.valid_from.as_deref(), "valid_from")
            }
            Body::TaxRateRetire => {
                let body: TaxRateRetire = parse(bytes)?;
                time(body.at.as_deref(), "at")
            }
            Body::Advance => {
                let body: AdvanceBody = parse(bytes)?;
                time(body.to.as_deref(), "to")
            }
            Body::KeyCreate => only::<KeyCreate>(bytes),
            Body::Empty => only::<Empty>(bytes),
        }
    }
}

/// A body with nothing to check beyond its shape.
fn only<T: DeserializeOwned>(bytes: &[u8]) -> Result<(), ApiError> {
    parse::<T>(bytes).map(drop)
}

fn time(text: Option<&str>, field: &'static str) -> Result<(), ApiError> {
    text.map(|text| parse_time(field, text))
        .transpose()
        .map(drop)
}

fn customer_fields(
    tax_location: Option<&crate::dto::TaxLocationDto>,
    contact: Option<crate::dto::ContactDto>,
) -> Result<(), ApiError> {
    if let Some(location) = tax_location {
        location.to_domain()?;
    }
    if let Some(contact) = contact {
        ContactDetails::from(contact).validate()?;
    }
    Ok(())
}

/// A query string one or more routes take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Query {
    /// The lists: subscriptions, invoices.
    List,
    /// `GET /v1/events`.
    Events,
    /// `GET /v1/metrics/mrr`.
    Series,
    /// `GET /v1/metrics/movements`.
    Movements,
    /// The monthly reports: churn, cohorts, revenue recognition.
    Monthly,
    /// Reports as of a day: trial balance, AR aging.
    AsOf,
    /// The customer view.
    Reading,
    /// `GET /v1/metrics/mrr-at`.
    MrrAt,
    /// `GET /v1/customers/{id}/history`.
    History,
    /// `DELETE /v1/customers/{id}/personal_data`.
    Erasure,
}

impl Query {
    /// Every query.
    pub const ALL: [Query; 10] = [
        Query::List,
        Query::Events,
        Query::Series,
        Query::Movements,
        Query::Monthly,
        Query::AsOf,
        Query::Reading,
        Query::MrrAt,
        Query::History,
        Query::Erasure,
    ];

    /// Parses `query` (what follows `?`, still percent-encoded) as this query,
    /// then checks what can be checked without the read models (with a fixed today).
    ///
    /// # Errors
    /// 422 `invalid_query`, the code every route answers a bad query with.
    pub fn parse(self, query: &str) -> Result<(), ApiError> {
        // Text no request line could carry is refused by the HTTP server
        // before any route: the same refusal here.
        let uri: Uri = format!("/?{query}").parse().map_err(|_| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_query",
                "not a query string",
            )
        })?;
        let today = date!(2027 - 01 - 01);
        match self {
            Query::List => {
                let Params(query) = Params::<ListQuery>::from_uri(&uri)?;
                query.page_items()?;
                query
                    .cursor("subscription", crate::routes::subscription_id)
                    .map(drop)
            }
            Query::Events => {
                let Params(query) = Params::<events::EventsQuery>::from_uri(&uri)?;
                events::time_bound("created[gte]", query.created_gte.as_deref())?;
                events::time_bound("created[lte]", query.created_lte.as_deref())?;
                events::text_filter("actor", query.actor.as_deref())?;
                events::text_filter("external_id", query.external_id.as_deref()).map(drop)
            }
            Query::Series => {
                let Params(query) = Params::<SeriesQuery>::from_uri(&uri)?;
                metrics::range(query.from.as_deref(), query.to.as_deref(), today).map(drop)
            }
            Query::Movements => {
                let Params(query) = Params::<MovementsQuery>::from_uri(&uri)?;
                metrics::range(query.from.as_deref(), query.to.as_deref(), today).map(drop)
            }
            Query::Monthly => {
                let Params(query) = Params::<MonthlyQuery>::from_uri(&uri)?;
                query.range(today).map(drop)
            }
            Query::AsOf => Params::<AsOfQuery>::from_uri(&uri).map(drop),
            Query::Reading => Params::<ReadingQuery>::from_uri(&uri).map(drop),
            Query::MrrAt => Params::<MrrAtQuery>::from_uri(&uri).map(drop),
            Query::History => {
                let Params(query) = Params::<customers::HistoryQuery>::from_uri(&uri)?;
                events::page_items(query.limit).map(drop)
            }
            Query::Erasure => Params::<customers::ErasureQuery>::from_uri(&uri).map(drop),
        }
    }
}
