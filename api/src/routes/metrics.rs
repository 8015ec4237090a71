//! /v1/metrics and the ledger's reports: parse the query, call the
//! projections' typed functions (`recur_projections::analytics` and the read
//! models), answer. No metric is computed here.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use recur_commands::customer::PersonalDataUse;
use recur_ledger::{Currency, Money};
use recur_projections::analytics::{self, AnalyticsError, Interval};
use recur_projections::db::Db;
use recur_projections::mrr::{self, MovementKind};
use serde::{Deserialize, Serialize};
use time::Date;
use utoipa::ToSchema;

use super::to_value;
use crate::AppState;
use crate::auth::Caller;
use crate::dto::MoneyDto;
use crate::problem::{ApiError, Problem};
use crate::request::{Params, json_response};

/// How long a query waits for the projection to reach `min_position`.
pub const MIN_POSITION_WAIT_MS: u64 = 5_000;
/// The most buckets one series answers.
pub const BUCKETS_MAX: usize = analytics::BUCKETS_MAX;

/// The counting profile that built the tables an answer read (docs/metrics.md).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ProfileDto {
    /// `default`, `conservative`, or `custom`.
    pub name: String,
    /// contraction (a paused customer stays a customer) or churn.
    pub pause: String,
    /// discounted_period (a once coupon reduces the period it discounts) or ignore.
    pub once_coupon: String,
    /// Days past due after which a subscription counts as churned; null: until canceled.
    pub past_due_churn_days: Option<u32>,
}

/// The profile of the MRR tables in `db`.
async fn built_profile(db: &Db) -> Result<Option<ProfileDto>, ApiError> {
    let profile = mrr::built_profile(db).await.map_err(unavailable)?;
    Ok(profile.map(|p| ProfileDto {
        name: p.name,
        pause: match p.pause {
            mrr::PauseRule::Contraction => "contraction",
            mrr::PauseRule::Churn => "churn",
        }
        .into(),
        once_coupon: match p.once_coupon {
            mrr::OnceCoupon::DiscountedPeriod => "discounted_period",
            mrr::OnceCoupon::Ignore => "ignore",
        }
        .into(),
        past_due_churn_days: p.past_due_churn_days,
    }))
}

/// One point of the MRR series.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct MrrPoint {
    /// The bucket's last day (YYYY-MM-DD).
    pub date: String,
    /// MRR at the end of that day.
    pub mrr: MoneyDto,
    /// 12 × MRR.
    pub arr: MoneyDto,
}

/// MRR over time.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct MrrSeries {
    /// Always "mrr_series".
    pub object: &'static str,
    /// The plan, or "*" for all.
    pub plan: String,
    /// day, week or month.
    pub interval: String,
    /// The points, oldest first.
    pub data: Vec<MrrPoint>,
    /// The ledger position the projection had reached.
    pub position: u64,
    /// The counting profile that built the tables read (null before the first build).
    pub profile: Option<ProfileDto>,
}

/// Movements in one bucket.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct MovementBucket {
    /// The bucket's last day.
    pub date: String,
    /// New customers' MRR.
    pub new: MoneyDto,
    /// Growth of paying customers.
    pub expansion: MoneyDto,
    /// Shrinking of paying customers (negative).
    pub contraction: MoneyDto,
    /// Customers leaving (negative).
    pub churn: MoneyDto,
    /// Customers coming back.
    pub reactivation: MoneyDto,
    /// Their sum: the change in MRR.
    pub net: MoneyDto,
}

/// MRR movements over time.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct MovementSeries {
    /// Always "mrr_movements".
    pub object: &'static str,
    /// day, week or month.
    pub interval: String,
    /// The buckets, oldest first.
    pub data: Vec<MovementBucket>,
    /// The ledger position the projection had reached.
    pub position: u64,
    /// The counting profile that built the tables read (null before the first build).
    pub profile: Option<ProfileDto>,
}

/// A series' query: a range of days, bucketed, for a plan or all.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeriesQuery {
    /// First day (YYYY-MM-DD).
    pub from: Option<String>,
    /// Last day (YYYY-MM-DD).
    pub to: Option<String>,
    #[serde(default)]
    /// day, week or month.
    pub interval: Interval,
    /// A plan id, or all.
    pub plan: Option<String>,
    /// Wait until the projection has reached this ledger position.
    pub min_position: Option<u64>,
    /// Answer as of this past ledger position.
    pub as_of_position: Option<u64>,
}

/// A monthly report's query: a range of days whose months are reported.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonthlyQuery {
    /// First day (YYYY-MM-DD).
    pub from: Option<String>,
    /// Last day (YYYY-MM-DD).
    pub to: Option<String>,
    /// Only `day` (the default) is taken: the report is monthly.
    pub interval: Option<Interval>,
    /// Only `*` (the default) is taken: the report is for all plans.
    pub plan: Option<String>,
    /// Wait until the projection has reached this ledger position.
    pub min_position: Option<u64>,
    /// Answer as of this past ledger position.
    pub as_of_position: Option<u64>,
}

impl MonthlyQuery {
    /// Its range, refusing an interval or a plan (the report is monthly, for all plans).
    pub(crate) fn range(&self, today: Date) -> Result<(Date, Date), ApiError> {
        if self.interval.is_some_and(|i| i != Interval::Day)
            || self.plan.as_deref().is_some_and(|p| p != "*")
        {
            return Err(bad(
                "this report is monthly and for all plans: interval and plan do not apply",
            ));
        }
        range(self.from.as_deref(), self.to.as_deref(), today)
    }
}

/// A report as of a day's end.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AsOfQuery {
    /// A day (YYYY-MM-DD).
    pub as_of: Option<String>,
    /// Wait until the projection has reached this ledger position.
    pub min_position: Option<u64>,
    /// Answer as of this past ledger position.
    pub as_of_position: Option<u64>,
}

/// Only which read models to read.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadingQuery {
    /// Wait until the projection has reached this ledger position.
    pub min_position: Option<u64>,
    /// Answer as of this past ledger position.
    pub as_of_position: Option<u64>,
}

/// The days `from` to `to`: `to` defaults to today, `from` to the first of `to`'s month.
pub(crate) fn range(
    from: Option<&str>,
    to: Option<&str>,
    today: Date,
) -> Result<(Date, Date), ApiError> {
    let to = to.map(parse_date).transpose()?.unwrap_or(today);
    let from = from
        .map(parse_date)
        .transpose()?
        .unwrap_or(to.replace_day(1).unwrap_or(to));
    if from > to {
        return Err(bad("from is after to"));
    }
    Ok((from, to))
}

/// The most events a question about the past replays (`as_of_position`).
pub const AS_OF_EVENTS_MAX: u64 = 5_000_000;

/// Which read models a query reads: the live ones, once they have reached
/// `min_position` (read your own writes), or the ones as they stood at
/// `as_of_position` (time travel), built from the ledger for the question.
struct Reading {
    min_position: Option<u64>,
    as_of_position: Option<u64>,
}

impl Reading {
    /// The database to read and the ledger position its answer is as of.
    async fn read_models(&self, state: &AppState) -> Result<(Db, u64), ApiError> {
        let Some(at) = self.as_of_position else {
            let position = wait_for(state, self.min_position).await?;
            return Ok((state.read_models.clone(), position));
        };
        if self.min_position.is_some() {
            return Err(bad("min_position and as_of_position exclude each other"));
        }
        written(state, at, "as_of_position").await?;
        if at > AS_OF_EVENTS_MAX {
            return Err(bad(format!(
                "as_of_position is limited to {AS_OF_EVENTS_MAX}: a question about the past replays the ledger up to it"
            )));
        }
        let mut past = state.past.lock().await;
        if let Some((cached, db)) = past.as_ref()
            && *cached == at
        {
            return Ok((db.clone(), at));
        }
        let db = recur_projections::Projections::as_of(
            state.billing.ledger(),
            recur_ledger::Position(at),
        )
        .await
        .map_err(unavailable)?;
        *past = Some((at, db.clone()));
        Ok((db, at))
    }
}

fn bad(reason: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_query", reason)
}

/// A read model that could not be read: the server's trouble, not the caller's.
fn unavailable(error: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        error.to_string(),
    )
}

/// A metric that could not be answered: the caller's range, or the read model.
fn refused(error: AnalyticsError) -> ApiError {
    if error.is_caller_error() {
        bad(error.to_string())
    } else {
        unavailable(error)
    }
}

fn parse_date(text: &str) -> Result<Date, ApiError> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    Date::parse(text, format).map_err(|_| bad(format!("{text:?} is not a date like 2026-03-31")))
}

/// Today on the ledger's clock (a test clock when serving with one): the default
/// end of every series, never the machine's date.
fn today(state: &AppState) -> Date {
    super::ledger_now(state).date()
}

/// Refuses a position no write has reached yet: a client's mistake, not something to wait for.
async fn written(state: &AppState, wanted: u64, name: &str) -> Result<(), ApiError> {
    let head = state
        .billing
        .ledger()
        .last_position()
        .await
        .map_err(ApiError::from)?;
    if wanted > head.0 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "position_unknown",
            format!(
                "the ledger is at position {}; {name} {wanted} has not been written",
                head.0
            ),
        ));
    }
    Ok(())
}

/// The position the projections have reached, once it is at least `min_position`.
///
/// # Errors
/// 422 `position_unknown` for a position not written yet; 503 `projection_behind`.
pub(super) async fn wait_for(state: &AppState, min_position: Option<u64>) -> Result<u64, ApiError> {
    let Some(wanted) = min_position else {
        return Ok(state.projected.load(Ordering::Acquire));
    };
    written(state, wanted, "min_position").await?;
    wait_on(&state.projected, wanted).await
}

/// `reached` once it is at least `wanted`, polled for at most [`MIN_POSITION_WAIT_MS`].
///
/// # Errors
/// 503 `projection_behind`.
pub(super) async fn wait_on(
    reached: &std::sync::atomic::AtomicU64,
    wanted: u64,
) -> Result<u64, ApiError> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(MIN_POSITION_WAIT_MS);
    loop {
        let reached = reached.load(Ordering::Acquire);
        if reached >= wanted {
            return Ok(reached);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "projection_behind",
                format!("the projection is at position {reached}, not yet {wanted}; retry shortly"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn usd(minor: i64) -> MoneyDto {
    Money::from_minor(minor, Currency::USD).into()
}

/// MRR and ARR at the end of each day, week or month (a plan, or all).
#[utoipa::path(get, operation_id = "metrics_mrr", path = "/v1/metrics/mrr", tag = "metrics",
    params(("from" = Option<String>, Query, description = "First day (default: the first of `to`'s month)"),
           ("to" = Option<String>, Query, description = "Last day (default: today)"),
           ("interval" = Option<String>, Query, description = "day, week or month"),
           ("plan" = Option<String>, Query, description = "A plan id (default: all)"),
           ("min_position" = Option<u64>, Query, description = "Wait until the projection has reached this ledger position"),
           ("as_of_position" = Option<u64>, Query, description = "Answer as of this past ledger position (replays the ledger up to it)")),
    responses((status = 200, description = "Done", body = MrrSeries), (status = "4XX", description = "Refused: a problem with a stable code", body = Problem),
              (status = 503, description = "The projection has not reached min_position", body = Problem)),
    security(("api_key" = ["admin", "billing", "support", "analyst"])))]
pub async fn mrr_series(
    State(state): State<Arc<AppState>>,
    _caller: Caller,
    Params(query): Params<SeriesQuery>,
) -> Result<Response, ApiError> {
    let (from, to) = range(query.from.as_deref(), query.to.as_deref(), today(&state))?;
    let reading = Reading {
        min_position: query.min_position,
        as_of_position: query.as_of_position,
    };
    let plan = query.plan.filter(|p| p != "*");
    let (db, position) = reading.read_models(&state).await?;
    let data = analytics::mrr_series(&db, plan.as_deref(), from, to, query.interval)
        .await
        .map_err(refused)?
        .into_iter()
        .map(|point| MrrPoint {
            date: point.end.to_string(),
            mrr: usd(point.mrr_minor),
            arr: usd(point.mrr_minor * 12),
        })
        .collect();
    let series = MrrSeries {
        object: "mrr_series",
        plan: plan.unwrap_or_else(|| "*".into()),
        interval: query.interval.name().into(),
        data,
        position,
        profile: built_profile(&db).await?,
    };
    Ok(json_response(StatusCode::OK, &to_value(&series)?))
}

/// One movement of one customer.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct MovementItem {
    /// The customer.
    pub customer: String,
    /// The subscription whose change it is.
    pub subscription: String,
    /// Its plan after the change.
    pub plan: String,
    /// new, expansion, contraction, churn or reactivation.
    pub kind: String,
    /// The change of the customer's MRR (negative for contraction and churn).
    pub amount: MoneyDto,
    /// When it took effect (RFC 3339).
    pub effective_at: String,
    /// Its effective day (YYYY-MM-DD).
    pub date: String,
    /// The ledger position of the event that made it.
    pub position: i64,
}

/// Movements one by one: who moved, how, when.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct MovementList {
    /// Always "list".
    pub object: &'static str,
    /// The movements, in effective order.
    pub data: Vec<MovementItem>,
    /// More follow: ask again with `starting_after=next_cursor`.
    pub has_more: bool,
    /// The cursor of the last movement of this page, when more follow.
    pub next_cursor: Option<String>,
    /// The ledger position the projection had reached.
    pub position: u64,
    /// The counting profile that built the tables read.
    pub profile: Option<ProfileDto>,
}

/// The movements: sums per bucket, or (`detail=customer`) one by one.
#[derive(Clone, Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum MovementsAnswer {
    /// Sums per kind and bucket.
    Series(MovementSeries),
    /// One by one.
    List(MovementList),
}

/// The movements' query: sums per bucket, or (`detail=customer`) one by one.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MovementsQuery {
    /// First day (YYYY-MM-DD).
    pub from: Option<String>,
    /// Last day (YYYY-MM-DD).
    pub to: Option<String>,
    /// day, week or month.
    pub interval: Option<Interval>,
    /// Only `*` (the default) is taken: movements are per customer, across plans.
    pub plan: Option<String>,
    /// customer: one by one.
    pub detail: Option<Detail>,
    /// One customer's.
    pub customer: Option<String>,
    /// One kind's.
    pub kind: Option<KindParam>,
    /// Page size.
    pub limit: Option<usize>,
    /// The previous page's next_cursor.
    pub starting_after: Option<String>,
    /// Wait until the projection has reached this ledger position.
    pub min_position: Option<u64>,
    /// Answer as of this past ledger position.
    pub as_of_position: Option<u64>,
}

/// How the movements are answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Detail {
    /// One by one, with their customer.
    Customer,
}

/// A movement kind as a query names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KindParam {
    /// new
    New,
    /// expansion
    Expansion,
    /// contraction
    Contraction,
    /// churn
    Churn,
    /// reactivation
    Reactivation,
}

impl From<KindParam> for MovementKind {
    fn from(kind: KindParam) -> Self {
        match kind {
            KindParam::New => MovementKind::New,
            KindParam::Expansion => MovementKind::Expansion,
            KindParam::Contraction => MovementKind::Contraction,
            KindParam::Churn => MovementKind::Churn,
            KindParam::Reactivation => MovementKind::Reactivation,
        }
    }
}

/// MRR movements (new, expansion, contraction, churn, reactivation) per day, week
/// or month; or, with `detail=customer`, one by one with customer, subscription,
/// kind, amount and effective time.
#[utoipa::path(get, operation_id = "metrics_movements", path = "/v1/metrics/movements", tag = "metrics",
    params(("from" = Option<String>, Query, description = "First day (default: the first of `to`'s month)"),
           ("to" = Option<String>, Query, description = "Last day (default: today)"),
           ("interval" = Option<String>, Query, description = "day, week or month"),
           ("detail" = Option<String>, Query, description = "customer: the movements one by one instead of sums"),
           ("customer" = Option<String>, Query, description = "With detail=customer: one customer's"),
           ("kind" = Option<String>, Query, description = "With detail=customer: one kind's (new, expansion, contraction, churn, reactivation)"),
           ("limit" = Option<u32>, Query, description = "With detail=customer: 1 to 1000, default 100"),
           ("starting_after" = Option<String>, Query, description = "With detail=customer: the previous page's next_cursor"),
           ("min_position" = Option<u64>, Query, description = "Wait until the projection has reached this ledger position"),
           ("as_of_position" = Option<u64>, Query, description = "Answer as of this past ledger position (replays the ledger up to it)")),
    responses((status = 200, description = "Done", body = MovementsAnswer), (status = "4XX", description = "Refused: a problem with a stable code", body = Problem),
              (status = 503, description = "The projection has not reached min_position", body = Problem)),
    security(("api_key" = ["admin", "billing", "support", "analyst"])))]
pub async fn movements(
    State(state): State<Arc<AppState>>,
    _caller: Caller,
    Params(query): Params<MovementsQuery>,
) -> Result<Response, ApiError> {
    if query.plan.as_deref().is_some_and(|p| p != "*") {
        return Err(bad(
            "movements are per customer; the plan filter does not apply",
        ));
    }
    let (from, to) = range(query.from.as_deref(), query.to.as_deref(), today(&state))?;
    let reading = Reading {
        min_position: query.min_position,
        as_of_position: query.as_of_position,
    };
    if query.detail == Some(Detail::Customer) {
        return movement_list(&state, from, to, reading, query).await;
    }
    for (name, given) in [
        ("customer", query.customer.is_some()),
        ("kind", query.kind.is_some()),
        ("limit", query.limit.is_some()),
        ("starting_after", query.starting_after.is_some()),
    ] {
        if given {
            return Err(bad(format!("{name} applies with detail=customer only")));
        }
    }
    let interval = query.interval.unwrap_or_default();
    let (db, position) = reading.read_models(&state).await?;
    let data = analytics::movement_buckets(&db, from, to, interval)
        .await
        .map_err(refused)?
        .into_iter()
        .map(|bucket| MovementBucket {
            date: bucket.end.to_string(),
            new: usd(bucket.of(MovementKind::New)),
            expansion: usd(bucket.of(MovementKind::Expansion)),
            contraction: usd(bucket.of(MovementKind::Contraction)),
            churn: usd(bucket.of(MovementKind::Churn)),
            reactivation: usd(bucket.of(MovementKind::Reactivation)),
            net: usd(bucket.net()),
        })
        .collect();
    let series = MovementSeries {
        object: "mrr_movements",
        interval: interval.name().into(),
        data,
        position,
        profile: built_profile(&db).await?,
    };
    Ok(json_response(StatusCode::OK, &to_value(&series)?))
}

async fn movement_list(
    state: &AppState,
    from: Date,
    to: Date,
    reading: Reading,
    query: MovementsQuery,
) -> Result<Response, ApiError> {
    if query.interval.is_some_and(|i| i != Interval::Day) {
        return Err(bad(
            "the movements one by one take from, to, customer, kind, limit and starting_after",
        ));
    }
    if let Some(customer) = &query.customer {
        super::customer_id(customer).map_err(|_| bad("customer must be a customer id"))?;
    }
    let limit = query.limit.unwrap_or(100);
    if !(1..=mrr::MOVEMENT_PAGE_MAX).contains(&limit) {
        return Err(bad(format!(
            "limit must be 1 to {}",
            mrr::MOVEMENT_PAGE_MAX
        )));
    }
    let after = query
        .starting_after
        .as_deref()
        .map(|cursor| {
            cursor
                .split_once('.')
                .and_then(|(p, s)| Some((p.parse().ok()?, s.parse().ok()?)))
                .ok_or_else(|| bad("starting_after must be a next_cursor"))
        })
        .transpose()?;
    let (db, position) = reading.read_models(state).await?;
    let filter = mrr::MovementFilter {
        from: Some(from),
        to: Some(to),
        customer: query.customer,
        kind: query.kind.map(MovementKind::from),
        after,
    };
    let (rows, has_more) = mrr::movement_list(&db, &filter, limit)
        .await
        .map_err(unavailable)?;
    let next_cursor = has_more
        .then(|| rows.last().map(|m| format!("{}.{}", m.position, m.seq)))
        .flatten();
    let data = rows
        .into_iter()
        .map(|m| MovementItem {
            date: m.effective_at[..10].to_owned(),
            effective_at: mrr::parse_effective(&m.effective_at)
                .map_or(m.effective_at.clone(), crate::dto::rfc3339),
            customer: m.customer_id,
            subscription: m.subscription_id,
            plan: m.plan,
            kind: m.kind.name().to_owned(),
            amount: usd(m.delta_minor),
            position: m.position,
        })
        .collect();
    let list = MovementList {
        object: "list",
        data,
        has_more,
        next_cursor,
        position,
        profile: built_profile(&db).await?,
    };
    Ok(json_response(
        StatusCode::OK,
        &to_value(&MovementsAnswer::List(list))?,
    ))
}

/// One account in the trial balance.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct AccountBalance {
    /// The account, e.g. `revenue:community_access`, `tax_payable:US-TX`.
    pub account: String,
    /// Sum of debits.
    pub debit: MoneyDto,
    /// Sum of credits.
    pub credit: MoneyDto,
    /// Debits minus credits.
    pub balance: MoneyDto,
}

/// The trial balance, now or as of the end of a day.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct TrialBalance {
    /// Always "trial_balance".
    pub object: &'static str,
    /// The day it is as of (inclusive), or null for now.
    pub as_of: Option<String>,
    /// Every account with postings.
    pub accounts: Vec<AccountBalance>,
    /// Sum of all debits.
    pub total_debit: MoneyDto,
    /// Sum of all credits.
    pub total_credit: MoneyDto,
    /// True when they are equal.
    pub balanced: bool,
    /// The ledger position the projection had reached.
    pub position: u64,
}

/// The trial balance from every event's postings, now or `as_of` the end of a day.
#[utoipa::path(get, operation_id = "ledger_trial_balance", path = "/v1/ledger/trial-balance", tag = "metrics",
    params(("as_of" = Option<String>, Query, description = "A day (YYYY-MM-DD): balances at its end"),
           ("min_position" = Option<u64>, Query, description = "Wait until the projection has reached this ledger position"),
           ("as_of_position" = Option<u64>, Query, description = "Answer as of this past ledger position (replays the ledger up to it)")),
    responses((status = 200, description = "Done", body = TrialBalance), (status = "4XX", description = "Refused: a problem with a stable code", body = Problem),
              (status = 503, description = "The projection has not reached min_position", body = Problem)),
    security(("api_key" = ["admin", "billing", "support", "analyst"])))]
pub async fn trial_balance(
    State(state): State<Arc<AppState>>,
    _caller: Caller,
    Params(query): Params<AsOfQuery>,
) -> Result<Response, ApiError> {
    let as_of = query
        .as_of
        .as_deref()
        .map(parse_date)
        .transpose()?
        .map(|day| day.to_string());
    let reading = Reading {
        min_position: query.min_position,
        as_of_position: query.as_of_position,
    };
    let (db, position) = reading.read_models(&state).await?;
    let balances = recur_projections::accounts::trial_balance(&db, as_of.as_deref())
        .await
        .map_err(unavailable)?;
    let (mut debit, mut credit) = (0i64, 0i64);
    let accounts = balances
        .iter()
        .map(|b| {
            debit += b.debit_minor;
            credit += b.credit_minor;
            AccountBalance {
                account: b.account.clone(),
                debit: usd(b.debit_minor),
                credit: usd(b.credit_minor),
                balance: usd(b.debit_minor - b.credit_minor),
            }
        })
        .collect();
    let body = TrialBalance {
        object: "trial_balance",
        as_of,
        accounts,
        total_debit: usd(debit),
        total_credit: usd(credit),
        balanced: debit == credit,
        position,
    };
    Ok(json_response(StatusCode::OK, &to_value(&body)?))
}

/// One month of churn and retention.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ChurnMonth {
    /// The month (YYYY-MM).
    pub month: String,
    /// Paying customers at the start of the month.
    pub customers_start: i64,
    /// Paying customers at its end.
    pub customers_end: i64,
    /// Customers lost (churn movements).
    pub customers_churned: i64,
    /// customers_churned ÷ customers_start (4 decimals), if any at the start.
    pub customer_churn_rate: Option<String>,
    /// MRR at the start of the month.
    pub mrr_start: MoneyDto,
    /// MRR at its end.
    pub mrr_end: MoneyDto,
    /// −(churn + contraction) ÷ MRR at the start.
    pub gross_revenue_churn_rate: Option<String>,
    /// (MRR at the start + expansion + contraction + churn) ÷ MRR at the start.
    pub net_revenue_retention: Option<String>,
    /// (MRR at the start + contraction + churn) ÷ MRR at the start.
    pub gross_revenue_retention: Option<String>,
    /// Average revenue per paying account at the end of the month.
    pub arpa: Option<MoneyDto>,
    /// ARPA ÷ gross revenue churn rate, when churn is above zero.
    pub ltv: Option<MoneyDto>,
}

/// Churn and retention per month.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ChurnSeries {
    /// Always "churn".
    pub object: &'static str,
    /// The months, oldest first.
    pub data: Vec<ChurnMonth>,
    /// The ledger position the projection had reached.
    pub position: u64,
    /// The counting profile that built the tables read (null before the first build).
    pub profile: Option<ProfileDto>,
}

/// A ratio as answered: four decimals, as text.
fn ratio_text(value: Option<rust_decimal::Decimal>) -> Option<String> {
    value.map(|v| v.to_string())
}

/// Customer and revenue churn, net and gross revenue retention, ARPA and LTV per month,
/// from the MRR movements (docs/metrics.md states each rule).
#[utoipa::path(get, operation_id = "metrics_churn", path = "/v1/metrics/churn", tag = "metrics",
    params(("from" = Option<String>, Query, description = "A day in the first month (default: the first of `to`'s month)"),
           ("to" = Option<String>, Query, description = "A day in the last month (default: today)"),
           ("min_position" = Option<u64>, Query, description = "Wait until the projection has reached this ledger position"),
           ("as_of_position" = Option<u64>, Query, description = "Answer as of this past ledger position (replays the ledger up to it)")),
    responses((status = 200, description = "Done", body = ChurnSeries), (status = "4XX", description = "Refused: a problem with a stable code", body = Problem),
              (status = 503, description = "The projection has not reached min_position", body = Problem)),
    security(("api_key" = ["admin", "billing", "support", "analyst"])))]
pub async fn churn(
    State(state): State<Arc<AppState>>,
    _caller: Caller,
    Params(query): Params<MonthlyQuery>,
) -> Result<Response, ApiError> {
    let (from, to) = query.range(today(&state))?;
    let reading = Reading {
        min_position: query.min_position,
        as_of_position: query.as_of_position,
    };
    let (db, position) = reading.read_models(&state).await?;
    let data = analytics::churn_months(&db, from, to)
        .await
        .map_err(refused)?
        .into_iter()
        .map(|m| ChurnMonth {
            month: m.month.to_string()[..7].to_owned(),
            customers_start: m.customers_start,
            customers_end: m.customers_end,
            customers_churned: m.customers_churned,
            customer_churn_rate: ratio_text(m.customer_churn_rate()),
            mrr_start: usd(m.mrr_start_minor),
            mrr_end: usd(m.mrr_end_minor),
            gross_revenue_churn_rate: ratio_text(m.gross_revenue_churn_rate()),
            net_revenue_retention: ratio_text(m.net_revenue_retention()),
            gross_revenue_retention: ratio_text(m.gross_revenue_retention()),
            arpa: m.arpa_minor().map(usd),
            ltv: m.ltv_minor().map(usd),
        })
        .collect();
    let series = ChurnSeries {
        object: "churn",
        data,
        position,
        profile: built_profile(&db).await?,
    };
    Ok(json_response(StatusCode::OK, &to_value(&series)?))
}

/// One cohort: the customers whose first paid month it is.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Cohort {
    /// The first paid month (YYYY-MM).
    pub month: String,
    /// Customers in the cohort.
    pub customers: i64,
    /// Per month since the start (0 = the first month): customers still paying at its end.
    pub customers_retained: Vec<i64>,
    /// Per month since the start: the cohort's MRR at its end.
    pub mrr: Vec<MoneyDto>,
}

/// Cohorts and their retention matrices.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct CohortTable {
    /// Always "cohorts".
    pub object: &'static str,
    /// The cohorts, oldest first.
    pub data: Vec<Cohort>,
    /// The ledger position the projection had reached.
    pub position: u64,
    /// The counting profile that built the tables read (null before the first build).
    pub profile: Option<ProfileDto>,
}

/// Customers by first paid month, with the customers and MRR each cohort keeps
/// at the end of every month since (up to `to`).
#[utoipa::path(get, operation_id = "metrics_cohorts", path = "/v1/metrics/cohorts", tag = "metrics",
    params(("from" = Option<String>, Query, description = "A day in the first cohort month (default: the first of `to`'s month)"),
           ("to" = Option<String>, Query, description = "A day in the last month measured (default: today)"),
           ("min_position" = Option<u64>, Query, description = "Wait until the projection has reached this ledger position"),
           ("as_of_position" = Option<u64>, Query, description = "Answer as of this past ledger position (replays the ledger up to it)")),
    responses((status = 200, description = "Done", body = CohortTable), (status = "4XX", description = "Refused: a problem with a stable code", body = Problem),
              (status = 503, description = "The projection has not reached min_position", body = Problem)),
    security(("api_key" = ["admin", "billing", "support", "analyst"])))]
pub async fn cohorts(
    State(state): State<Arc<AppState>>,
    _caller: Caller,
    Params(query): Params<MonthlyQuery>,
) -> Result<Response, ApiError> {
    let (from, to) = query.range(today(&state))?;
    let reading = Reading {
        min_position: query.min_position,
        as_of_position: query.as_of_position,
    };
    let (db, position) = reading.read_models(&state).await?;
    let data = analytics::cohorts(&db, from, to)
        .await
        .map_err(refused)?
        .into_iter()
        .map(|c| Cohort {
            month: c.month,
            customers: c.customers,
            customers_retained: c.retained,
            mrr: c.mrr_minor.into_iter().map(usd).collect(),
        })
        .collect();
    let table = CohortTable {
        object: "cohorts",
        data,
        position,
        profile: built_profile(&db).await?,
    };
    Ok(json_response(StatusCode::OK, &to_value(&table)?))
}

/// A subscription as the customer view shows it.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ViewSubscription {
    /// Id.
    pub id: String,
    /// Plan.
    pub plan: String,
    /// Status.
    pub status: String,
    /// Its MRR.
    pub mrr: MoneyDto,
}

/// Everything about one customer, from the read models.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct CustomerView {
    /// Always "customer_view".
    pub object: &'static str,
    /// Id.
    pub id: String,
    /// Dunning segment.
    pub segment: String,
    /// The card on file ("visa 4242 12/2030"), if any.
    pub card: Option<String>,
    /// Contact details (admin and support keys only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contact: Option<crate::dto::ContactDto>,
    /// Subscriptions with plan, state and MRR.
    pub subscriptions: Vec<ViewSubscription>,
    /// The customer's MRR.
    pub mrr: MoneyDto,
    /// Credit owed to the customer.
    pub credit_balance: MoneyDto,
    /// Invoices issued.
    pub invoices: i64,
    /// Invoices still open.
    pub open_invoices: i64,
    /// What they owe.
    pub amount_open: MoneyDto,
    /// Collected, all time.
    pub paid: MoneyDto,
    /// Refunded, all time.
    pub refunded: MoneyDto,
    /// Paid minus refunded.
    pub lifetime_revenue: MoneyDto,
    /// Declined payment attempts.
    pub failed_payments: i64,
    /// "retrying" while an open invoice has a declined attempt, else "none".
    pub dunning: String,
    /// The next retry, when retrying.
    pub next_retry_at: Option<String>,
    /// The latest payment.
    pub last_payment_at: Option<String>,
    /// When the customer's personal data was erased (then `contact` is absent).
    pub erased_at: Option<String>,
    /// The ledger position the projections had reached.
    pub position: u64,
}

/// One customer's page: subscriptions, MRR, credit, invoices, payments, refunds,
/// lifetime revenue and dunning state (contact details for admin and support).
#[utoipa::path(get, operation_id = "customers_view", path = "/v1/customers/{id}/view", tag = "customers",
    params(("id" = String, Path, description = "Customer id"),
           ("min_position" = Option<u64>, Query, description = "Wait until the projections have reached this ledger position"),
           ("as_of_position" = Option<u64>, Query, description = "Answer as of this past ledger position (replays the ledger up to it)")),
    responses((status = 200, description = "Done", body = CustomerView), (status = "4XX", description = "Refused: a problem with a stable code", body = Problem),
              (status = 503, description = "The projections have not reached min_position", body = Problem)),
    security(("api_key" = ["admin", "billing", "support"])))]
pub async fn customer_view(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    axum::extract::Path(id): axum::extract::Path<String>,
    Params(query): Params<ReadingQuery>,
) -> Result<Response, ApiError> {
    let customer = super::customer_id(&id)?;
    let reading = Reading {
        min_position: query.min_position,
        as_of_position: query.as_of_position,
    };
    let (db, position) = reading.read_models(&state).await?;
    let id_text = customer.to_string();
    let Some((_, row)) = recur_projections::customers::read(&db, Some(&id_text))
        .await
        .map_err(unavailable)?
        .into_iter()
        .next()
    else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "customer_not_found",
            "no such customer (or not projected yet)",
        ));
    };
    let subs = analytics::subscriptions_of(&db, &id_text)
        .await
        .map_err(refused)?;
    let mrr_minor: i64 = subs.iter().map(|s| s.mrr_minor).sum();
    let subscriptions: Vec<ViewSubscription> = subs
        .into_iter()
        .map(|s| ViewSubscription {
            id: s.id,
            plan: s.plan,
            status: s.status,
            mrr: usd(s.mrr_minor),
        })
        .collect();
    let contact = if caller.role.sees_personal_data() {
        state
            .billing
            .contact(customer)
            .await?
            .map(crate::dto::ContactDto::from)
    } else {
        None
    };
    if contact.is_some() {
        super::customers::record_read(&state, &caller, customer, PersonalDataUse::Contact).await?;
    }
    let some = |t: &str| (!t.is_empty()).then(|| t.to_owned());
    let view = CustomerView {
        object: "customer_view",
        id: id_text,
        segment: row.segment.clone(),
        card: some(&row.card),
        contact,
        subscriptions,
        mrr: usd(mrr_minor),
        credit_balance: usd(row.credit_minor),
        invoices: row.invoices,
        open_invoices: row.open_invoices,
        amount_open: usd(row.open_minor),
        paid: usd(row.paid_minor),
        refunded: usd(row.refunded_minor),
        lifetime_revenue: usd(row.paid_minor - row.refunded_minor),
        failed_payments: row.failed_payments,
        dunning: if row.in_dunning > 0 {
            "retrying".into()
        } else {
            "none".into()
        },
        next_retry_at: some(&row.next_retry_at),
        last_payment_at: some(&row.last_payment_at),
        erased_at: some(&row.erased_at),
        position,
    };
    Ok(json_response(StatusCode::OK, &to_value(&view)?))
}

/// One month of revenue recognition.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct RevenueMonth {
    /// The month (YYYY-MM).
    pub month: String,
    /// Earned in the month: each period's revenue ratably by day, one-time revenue when invoiced.
    pub earned: MoneyDto,
    /// Invoiced in the month (revenue after discounts, before tax).
    pub billed: MoneyDto,
    /// Billed so far less earned so far, at the month's end.
    pub deferred: MoneyDto,
}

/// Revenue recognition per month.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct RevenueSeries {
    /// Always "revenue_recognition".
    pub object: &'static str,
    /// Months with revenue, oldest first.
    pub data: Vec<RevenueMonth>,
    /// The ledger position the projection had reached.
    pub position: u64,
}

/// Earned, billed and deferred revenue per month (ratable by day over each service period).
#[utoipa::path(get, operation_id = "ledger_revenue_recognition", path = "/v1/ledger/revenue-recognition", tag = "metrics",
    params(("from" = Option<String>, Query, description = "A day in the first month (default: the first of `to`'s month)"),
           ("to" = Option<String>, Query, description = "A day in the last month (default: today)"),
           ("min_position" = Option<u64>, Query, description = "Wait until the projection has reached this ledger position"),
           ("as_of_position" = Option<u64>, Query, description = "Answer as of this past ledger position (replays the ledger up to it)")),
    responses((status = 200, description = "Done", body = RevenueSeries), (status = "4XX", description = "Refused: a problem with a stable code", body = Problem),
              (status = 503, description = "The projection has not reached min_position", body = Problem)),
    security(("api_key" = ["admin", "billing", "support", "analyst"])))]
pub async fn revenue_recognition(
    State(state): State<Arc<AppState>>,
    _caller: Caller,
    Params(query): Params<MonthlyQuery>,
) -> Result<Response, ApiError> {
    let (from, to) = query.range(today(&state))?;
    let reading = Reading {
        min_position: query.min_position,
        as_of_position: query.as_of_position,
    };
    let (db, position) = reading.read_models(&state).await?;
    let months =
        recur_projections::revenue::monthly(&db, &from.to_string()[..7], &to.to_string()[..7])
            .await
            .map_err(unavailable)?;
    let data = months
        .into_iter()
        .map(|m| RevenueMonth {
            month: m.month,
            earned: usd(m.earned_minor),
            billed: usd(m.billed_minor),
            deferred: usd(m.deferred_minor),
        })
        .collect();
    let series = RevenueSeries {
        object: "revenue_recognition",
        data,
        position,
    };
    Ok(json_response(StatusCode::OK, &to_value(&series)?))
}

/// Receivables by age.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ArAging {
    /// Always "ar_aging".
    pub object: &'static str,
    /// The day ages are counted to.
    pub as_of: String,
    /// Owed on invoices issued 0–30 days before.
    pub days_0_30: MoneyDto,
    /// 31–60 days.
    pub days_31_60: MoneyDto,
    /// 61–90 days.
    pub days_61_90: MoneyDto,
    /// More than 90 days.
    pub days_over_90: MoneyDto,
    /// All open receivables.
    pub total: MoneyDto,
    /// The ledger position the projection had reached.
    pub position: u64,
}

/// Open receivables by age since the invoice was issued, counted to `as_of` (default: today).
#[utoipa::path(get, operation_id = "ledger_ar_aging", path = "/v1/ledger/ar-aging", tag = "metrics",
    params(("as_of" = Option<String>, Query, description = "The day ages are counted to (YYYY-MM-DD)"),
           ("min_position" = Option<u64>, Query, description = "Wait until the projection has reached this ledger position"),
           ("as_of_position" = Option<u64>, Query, description = "Answer as of this past ledger position (replays the ledger up to it)")),
    responses((status = 200, description = "Done", body = ArAging), (status = "4XX", description = "Refused: a problem with a stable code", body = Problem),
              (status = 503, description = "The projection has not reached min_position", body = Problem)),
    security(("api_key" = ["admin", "billing", "support", "analyst"])))]
pub async fn ar_aging(
    State(state): State<Arc<AppState>>,
    _caller: Caller,
    Params(query): Params<AsOfQuery>,
) -> Result<Response, ApiError> {
    let as_of = query
        .as_of
        .as_deref()
        .map(parse_date)
        .transpose()?
        .unwrap_or_else(|| today(&state));
    let reading = Reading {
        min_position: query.min_position,
        as_of_position: query.as_of_position,
    };
    let (db, position) = reading.read_models(&state).await?;
    let buckets = recur_projections::customers::aging(&db, as_of)
        .await
        .map_err(unavailable)?;
    let body = ArAging {
        object: "ar_aging",
        as_of: as_of.to_string(),
        days_0_30: usd(buckets[0]),
        days_31_60: usd(buckets[1]),
        days_61_90: usd(buckets[2]),
        days_over_90: usd(buckets[3]),
        total: usd(buckets.iter().sum()),
        position,
    };
    Ok(json_response(StatusCode::OK, &to_value(&body)?))
}

/// MRR as it stood at one ledger position.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct MrrAt {
    /// Always "mrr_at".
    pub object: &'static str,
    /// The ledger position asked for.
    pub position: u64,
    /// MRR after every event up to and including that position.
    pub mrr: MoneyDto,
    /// 12 × MRR.
    pub arr: MoneyDto,
    /// Customers paying then.
    pub customers_paying: i64,
}

/// `?position=`: a ledger position.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MrrAtQuery {
    /// A ledger position.
    pub position: u64,
}

/// MRR and paying customers as of a ledger position ("what did we know then"):
/// the movements up to it add up to the MRR at it.
#[utoipa::path(get, operation_id = "metrics_mrr_at", path = "/v1/metrics/mrr-at", tag = "metrics",
    params(("position" = u64, Query, description = "A ledger position (a write's `position`)")),
    responses((status = 200, description = "Done", body = MrrAt), (status = "4XX", description = "Refused: a problem with a stable code", body = Problem),
              (status = 503, description = "The projection has not reached the position yet", body = Problem)),
    security(("api_key" = ["admin", "billing", "support", "analyst"])))]
pub async fn mrr_at(
    State(state): State<Arc<AppState>>,
    _caller: Caller,
    Params(query): Params<MrrAtQuery>,
) -> Result<Response, ApiError> {
    let at = query.position;
    wait_for(&state, Some(at)).await?;
    let found = analytics::mrr_at(&state.read_models, at)
        .await
        .map_err(refused)?;
    let (mrr_minor, paying) = (found.mrr_minor, found.customers_paying);
    let body = MrrAt {
        object: "mrr_at",
        position: at,
        mrr: usd(mrr_minor),
        arr: usd(mrr_minor * 12),
        customers_paying: paying,
    };
    Ok(json_response(StatusCode::OK, &to_value(&body)?))
}

/// The recovery rate of one group of campaigns.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct RecoveryShare {
    /// The step number, channel (email, sms) or decline category.
    pub key: String,
    /// Campaigns in the group.
    pub campaigns: i64,
    /// Of those, recovered (for a step: recovered right after it).
    pub recovered: i64,
    /// recovered ÷ campaigns (4 decimals), if any.
    pub recovery_rate: Option<String>,
}

/// Dunning messages of one channel: sent, and of those clicked.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct MessageClicks {
    /// email or sms.
    pub channel: String,
    /// Messages sent by the range's campaigns.
    pub sent: i64,
    /// Of those, whose update-card link the customer opened.
    pub clicked: i64,
    /// clicked ÷ sent (4 decimals), if any.
    pub click_rate: Option<String>,
}

/// Revenue recovered and lost in one month and currency.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct RecoveryMonth {
    /// The month (YYYY-MM).
    pub month: String,
    /// Collected by campaigns that recovered in the month.
    pub recovered: MoneyDto,
    /// Owed on campaigns exhausted in the month (leave-past-due included).
    pub lost: MoneyDto,
}

/// Time from a campaign's start to its recovery.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct TimeToRecover {
    /// Recovered campaigns measured.
    pub campaigns: i64,
    /// Median hours (nearest rank, 2 decimals), if any.
    pub median_hours: Option<String>,
    /// 90th percentile hours (nearest rank, 2 decimals), if any.
    pub p90_hours: Option<String>,
}

/// Dunning: how often payments fail and how much the campaigns recover.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct DunningMetricsDto {
    /// Always "dunning_metrics".
    pub object: &'static str,
    /// First day (YYYY-MM-DD).
    pub from: String,
    /// Last day (YYYY-MM-DD).
    pub to: String,
    /// Invoices whose first payment attempt fell in the range.
    pub invoices_attempted: i64,
    /// Of those, with at least one declined attempt.
    pub invoices_failed: i64,
    /// invoices_failed ÷ invoices_attempted (4 decimals), if any.
    pub failure_rate: Option<String>,
    /// Campaigns started in the range (voided invoices' left out).
    pub campaigns: i64,
    /// Of those, recovered.
    pub recovered: i64,
    /// Of those, exhausted (the final action taken).
    pub exhausted: i64,
    /// Of those, still running.
    pub running: i64,
    /// recovered ÷ campaigns (4 decimals), if any.
    pub recovery_rate: Option<String>,
    /// Per step n: campaigns that reached it, recovered right after it.
    pub by_step: Vec<RecoveryShare>,
    /// Per channel: campaigns with a sent message of it, and of those recovered.
    pub by_channel: Vec<RecoveryShare>,
    /// Per decline category of the first failed attempt.
    pub by_decline_category: Vec<RecoveryShare>,
    /// Per channel: messages sent and clicked (opens are not tracked).
    pub messages: Vec<MessageClicks>,
    /// Start to recovery.
    pub time_to_recover: TimeToRecover,
    /// Per month of the range, by when campaigns ended.
    pub revenue: Vec<RecoveryMonth>,
    /// Campaigns running now, whenever they started.
    pub campaigns_open: i64,
    /// Phone tasks not completed now.
    pub tasks_open: i64,
    /// The ledger position the projection had reached.
    pub position: u64,
}

fn shares(shares: Vec<recur_projections::dunning::Share>) -> Vec<RecoveryShare> {
    shares
        .into_iter()
        .map(|s| RecoveryShare {
            recovery_rate: ratio_text(s.rate()),
            key: s.key,
            campaigns: s.campaigns,
            recovered: s.recovered,
        })
        .collect()
}

/// Failure rate, recovery rate overall and by step, channel and decline
/// category, time to recover, revenue recovered and lost per month, open
/// campaigns and tasks (docs/dunning.md, "Metrics", defines each).
#[utoipa::path(get, operation_id = "metrics_dunning", path = "/v1/metrics/dunning", tag = "metrics",
    params(("from" = Option<String>, Query, description = "First day (default: the first of `to`'s month)"),
           ("to" = Option<String>, Query, description = "Last day (default: today)"),
           ("min_position" = Option<u64>, Query, description = "Wait until the projection has reached this ledger position"),
           ("as_of_position" = Option<u64>, Query, description = "Answer as of this past ledger position (replays the ledger up to it)")),
    responses((status = 200, description = "Done", body = DunningMetricsDto), (status = "4XX", description = "Refused: a problem with a stable code", body = Problem),
              (status = 503, description = "The projection has not reached min_position", body = Problem)),
    security(("api_key" = ["admin", "billing", "support", "analyst"])))]
pub async fn dunning(
    State(state): State<Arc<AppState>>,
    _caller: Caller,
    Params(query): Params<ReadingQueryRange>,
) -> Result<Response, ApiError> {
    let (from, to) = range(query.from.as_deref(), query.to.as_deref(), today(&state))?;
    let reading = Reading {
        min_position: query.min_position,
        as_of_position: query.as_of_position,
    };
    let (db, position) = reading.read_models(&state).await?;
    let m = recur_projections::dunning::metrics(&db, from, to)
        .await
        .map_err(unavailable)?;
    let money = |minor: i64, currency: &str| -> Result<MoneyDto, ApiError> {
        let currency = Currency::parse(currency)
            .map_err(|_| unavailable(format!("a read model holds {currency:?} as a currency")))?;
        Ok(Money::from_minor(minor, currency).into())
    };
    let revenue = m
        .months
        .iter()
        .map(|month| {
            Ok(RecoveryMonth {
                month: month.month.to_string()[..7].to_owned(),
                recovered: money(month.recovered_minor, &month.currency)?,
                lost: money(month.lost_minor, &month.currency)?,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let hours = |percent| ratio_text(m.recover_hours_percentile(percent));
    let answer = DunningMetricsDto {
        object: "dunning_metrics",
        from: from.to_string(),
        to: to.to_string(),
        invoices_attempted: m.invoices_attempted,
        invoices_failed: m.invoices_failed,
        failure_rate: ratio_text(m.failure_rate()),
        campaigns: m.campaigns,
        recovered: m.recovered,
        exhausted: m.exhausted,
        running: m.running,
        recovery_rate: ratio_text(m.recovery_rate()),
        time_to_recover: TimeToRecover {
            campaigns: i64::try_from(m.recover_hours.len()).unwrap_or(i64::MAX),
            median_hours: hours(50),
            p90_hours: hours(90),
        },
        revenue,
        campaigns_open: m.campaigns_open,
        tasks_open: m.tasks_open,
        position,
        by_step: shares(m.by_step),
        by_channel: shares(m.by_channel),
        by_decline_category: shares(m.by_category),
        messages: m
            .clicks
            .iter()
            .map(|c| MessageClicks {
                channel: c.channel.clone(),
                sent: c.sent,
                clicked: c.clicked,
                click_rate: ratio_text(c.rate()),
            })
            .collect(),
    };
    Ok(json_response(StatusCode::OK, &to_value(&answer)?))
}

/// A range of days, and which read models to read.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadingQueryRange {
    /// First day (YYYY-MM-DD).
    pub from: Option<String>,
    /// Last day (YYYY-MM-DD).
    pub to: Option<String>,
    /// Wait until the projection has reached this ledger position.
    pub min_position: Option<u64>,
    /// Answer as of this past ledger position.
    pub as_of_position: Option<u64>,
}
