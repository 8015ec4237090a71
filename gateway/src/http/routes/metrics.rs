//! /v1/metrics: read from the projections (never from the ledger directly).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use recur_ledger::{Currency, Money};
use recur_projections::db::{Db, Stmt, Value};
use recur_projections::mrr;
use serde::Serialize;
use time::{Date, Month};
use utoipa::ToSchema;

use super::{EVERYONE, to_value};
use crate::http::AppState;
use crate::http::auth::Caller;
use crate::http::dto::MoneyDto;
use crate::http::problem::{ApiError, Problem};
use crate::http::request::json_response;

/// How long a query waits for the projection to reach `min_position`.
pub const MIN_POSITION_WAIT_MS: u64 = 5_000;
/// The most buckets one series answers.
pub const BUCKETS_MAX: usize = 1_000;

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

struct Query {
    from: Date,
    to: Date,
    interval: String,
    plan: String,
    reading: Reading,
}

/// The most events a question about the past replays (`as_of_position`).
pub const AS_OF_EVENTS_MAX: u64 = 5_000_000;

/// Which read models a query reads: the live ones, once they have reached
/// `min_position` (read your own writes), or the ones as they stood at
/// `as_of_position` (time travel), built from the ledger for the question.
#[derive(Default)]
struct Reading {
    min_position: Option<u64>,
    as_of_position: Option<u64>,
}

impl Reading {
    /// Takes `key=value` when it is one of ours; false when it is not.
    fn take(&mut self, key: &str, value: &str) -> Result<bool, ApiError> {
        let slot = match key {
            "min_position" => &mut self.min_position,
            "as_of_position" => &mut self.as_of_position,
            _ => return Ok(false),
        };
        *slot = Some(
            value
                .parse()
                .map_err(|_| bad(format!("{key} must be a ledger position")))?,
        );
        Ok(true)
    }

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

/// The `key=value` pairs of a query string (values are used as given).
fn pairs(query: Option<&str>) -> impl Iterator<Item = (&str, &str)> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
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

fn parse_date(text: &str) -> Result<Date, ApiError> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    Date::parse(text, format).map_err(|_| bad(format!("{text:?} is not a date like 2026-03-31")))
}

/// Today on the ledger's clock (a test clock when serving with one): the default
/// end of every series, never the machine's date.
fn today(state: &AppState) -> Date {
    super::ledger_now(state).date()
}

fn parse_query(query: Option<&str>, today: Date) -> Result<Query, ApiError> {
    let mut parsed = Query {
        from: today,
        to: today,
        interval: "day".into(),
        plan: "*".into(),
        reading: Reading::default(),
    };
    let mut from = None;
    for (key, value) in pairs(query) {
        if parsed.reading.take(key, value)? {
            continue;
        }
        match key {
            "from" => from = Some(parse_date(value)?),
            "to" => parsed.to = parse_date(value)?,
            "interval" if ["day", "week", "month"].contains(&value) => {
                parsed.interval = value.to_owned()
            }
            "interval" => return Err(bad("interval must be day, week or month")),
            "plan" => parsed.plan = value.to_owned(),
            other => return Err(bad(format!("unknown query parameter {other:?}"))),
        }
    }
    parsed.from = from.unwrap_or(parsed.to.replace_day(1).unwrap_or(parsed.to));
    if parsed.from > parsed.to {
        return Err(bad("from is after to"));
    }
    Ok(parsed)
}

/// The last day of each bucket from `from` to `to`.
fn bucket_ends(from: Date, to: Date, interval: &str) -> Result<Vec<Date>, ApiError> {
    let mut ends = Vec::new();
    let mut day = from;
    loop {
        let end = match interval {
            "week" => day.next_occurrence(time::Weekday::Sunday),
            "month" => {
                let next = if day.month() == Month::December {
                    Date::from_calendar_date(day.year() + 1, Month::January, 1)
                } else {
                    Date::from_calendar_date(day.year(), day.month().next(), 1)
                };
                next.ok().and_then(Date::previous_day).unwrap_or(day)
            }
            _ => day,
        }
        .min(to);
        ends.push(end);
        if ends.len() > BUCKETS_MAX {
            return Err(bad(format!(
                "more than {BUCKETS_MAX} buckets: narrow the range or widen the interval"
            )));
        }
        match end.next_day() {
            Some(next) if next <= to => day = next,
            _ => break,
        }
    }
    Ok(ends)
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

async fn wait_for(state: &AppState, min_position: Option<u64>) -> Result<u64, ApiError> {
    let Some(wanted) = min_position else {
        return Ok(state.projected.load(Ordering::Acquire));
    };
    written(state, wanted, "min_position").await?;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(MIN_POSITION_WAIT_MS);
    loop {
        let reached = state.projected.load(Ordering::Acquire);
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
    security(("api_key" = [])))]
pub async fn mrr_series(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    caller.require(EVERYONE)?;
    let query = parse_query(query.as_deref(), today(&state))?;
    let (db, position) = query.reading.read_models(&state).await?;
    let daily = mrr::daily(&db, &query.plan, query.to)
        .await
        .map_err(unavailable)?;
    let ends = bucket_ends(query.from, query.to, &query.interval)?;
    let data = ends
        .iter()
        .zip(mrr::at_day_ends(&daily, &ends))
        .map(|(end, mrr)| MrrPoint {
            date: end.to_string(),
            mrr: usd(mrr),
            arr: usd(mrr * 12),
        })
        .collect();
    let series = MrrSeries {
        object: "mrr_series",
        plan: query.plan,
        interval: query.interval,
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

/// The per-customer list's own parameters, taken out of the query string.
struct Detail {
    customer: Option<String>,
    kind: Option<mrr::MovementKind>,
    limit: usize,
    after: Option<(i64, i64)>,
}

/// Splits `detail=customer` and its parameters off the query; None when the
/// sums per bucket are asked for.
fn detail_of(query: Option<&str>) -> Result<(Option<Detail>, String), ApiError> {
    let mut rest = Vec::new();
    let mut detail = None;
    let mut own = Detail {
        customer: None,
        kind: None,
        limit: 100,
        after: None,
    };
    let mut used_own = None;
    for (key, value) in pairs(query) {
        match key {
            "detail" if value == "customer" => detail = Some(()),
            "detail" => return Err(bad("detail must be customer")),
            "customer" => {
                super::customer_id(value).map_err(|_| bad("customer must be a customer id"))?;
                own.customer = Some(value.to_owned());
                used_own = Some(key);
            }
            "kind" => {
                own.kind = Some(mrr::MovementKind::parse(value).ok_or_else(|| {
                    bad("kind must be new, expansion, contraction, churn or reactivation")
                })?);
                used_own = Some(key);
            }
            "limit" => {
                own.limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=mrr::MOVEMENT_PAGE_MAX).contains(n))
                    .ok_or_else(|| bad(format!("limit must be 1 to {}", mrr::MOVEMENT_PAGE_MAX)))?;
                used_own = Some(key);
            }
            "starting_after" => {
                let cursor = value
                    .split_once('.')
                    .and_then(|(p, s)| Some((p.parse().ok()?, s.parse().ok()?)))
                    .ok_or_else(|| bad("starting_after must be a next_cursor"))?;
                own.after = Some(cursor);
                used_own = Some(key);
            }
            _ => rest.push(format!("{key}={value}")),
        }
    }
    match (detail, used_own) {
        (Some(()), _) => Ok((Some(own), rest.join("&"))),
        (None, Some(key)) => Err(bad(format!("{key} applies with detail=customer only"))),
        (None, None) => Ok((None, rest.join("&"))),
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
    security(("api_key" = [])))]
pub async fn movements(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    caller.require(EVERYONE)?;
    let (detail, rest) = detail_of(query.as_deref())?;
    let query = parse_query(Some(&rest), today(&state))?;
    if let Some(detail) = detail {
        return movement_list(&state, query, detail).await;
    }
    if query.plan != "*" {
        return Err(bad(
            "movements are per customer; the plan filter does not apply",
        ));
    }
    let (db, position) = query.reading.read_models(&state).await?;
    let rows = db
        .query(
            &Stmt::new(
                format!(
                    "SELECT day, kind, CAST(SUM(delta_minor) AS BIGINT) FROM {} WHERE day >= ? AND day <= ? AND kind <> ''
                     GROUP BY day, kind ORDER BY day",
                    mrr::MOVEMENTS
                ),
                vec![query.from.to_string().into(), query.to.to_string().into()],
            ),
            "tti",
        )
        .await
        .map_err(unavailable)?;
    let mut data = Vec::new();
    let mut index = 0;
    for end in bucket_ends(query.from, query.to, &query.interval)? {
        let end_text = end.to_string();
        let mut sums = [0i64; 5];
        while index < rows.len() && matches!(&rows[index][0], Value::Text(d) if *d <= end_text) {
            let slot = match mrr::MovementKind::parse(&rows[index][1].text()) {
                Some(mrr::MovementKind::New) => 0,
                Some(mrr::MovementKind::Expansion) => 1,
                Some(mrr::MovementKind::Contraction) => 2,
                Some(mrr::MovementKind::Churn) => 3,
                Some(mrr::MovementKind::Reactivation) => 4,
                None => {
                    return Err(unavailable(format!(
                        "unknown movement kind {:?}",
                        rows[index][1]
                    )));
                }
            };
            sums[slot] += rows[index][2].int();
            index += 1;
        }
        data.push(MovementBucket {
            date: end_text,
            new: usd(sums[0]),
            expansion: usd(sums[1]),
            contraction: usd(sums[2]),
            churn: usd(sums[3]),
            reactivation: usd(sums[4]),
            net: usd(sums.iter().sum()),
        });
    }
    let series = MovementSeries {
        object: "mrr_movements",
        interval: query.interval,
        data,
        position,
        profile: built_profile(&db).await?,
    };
    Ok(json_response(StatusCode::OK, &to_value(&series)?))
}

async fn movement_list(
    state: &AppState,
    query: Query,
    detail: Detail,
) -> Result<Response, ApiError> {
    if query.plan != "*" || query.interval != "day" {
        return Err(bad(
            "the movements one by one take from, to, customer, kind, limit and starting_after",
        ));
    }
    let (db, position) = query.reading.read_models(state).await?;
    let filter = mrr::MovementFilter {
        from: Some(query.from),
        to: Some(query.to),
        customer: detail.customer,
        kind: detail.kind,
        after: detail.after,
    };
    let (rows, has_more) = mrr::movement_list(&db, &filter, detail.limit)
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
                .map_or(m.effective_at.clone(), crate::http::dto::rfc3339),
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
    security(("api_key" = [])))]
pub async fn trial_balance(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    caller.require(EVERYONE)?;
    let mut as_of = None;
    let mut reading = Reading::default();
    for (key, value) in pairs(query.as_deref()) {
        if reading.take(key, value)? {
            continue;
        }
        match key {
            "as_of" => as_of = Some(parse_date(value)?.to_string()),
            other => return Err(bad(format!("unknown query parameter {other:?}"))),
        }
    }
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

fn ratio(numerator: i64, denominator: i64) -> Option<String> {
    if denominator == 0 {
        return None;
    }
    let value = rust_decimal::Decimal::from(numerator) / rust_decimal::Decimal::from(denominator);
    let mut value =
        value.round_dp_with_strategy(4, rust_decimal::RoundingStrategy::MidpointNearestEven);
    value.rescale(4);
    Some(value.to_string())
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
    security(("api_key" = [])))]
pub async fn churn(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    caller.require(EVERYONE)?;
    let query = parse_query(query.as_deref(), today(&state))?;
    if query.plan != "*" || query.interval != "day" {
        return Err(bad(
            "churn is monthly and for all plans: plan and interval do not apply",
        ));
    }
    let (db, position) = query.reading.read_models(&state).await?;
    let moves = mrr::movements_through(&db, query.to)
        .await
        .map_err(unavailable)?;
    let daily = mrr::daily(&db, "*", query.to).await.map_err(unavailable)?;
    let mrr_before = |day: &str| {
        daily
            .iter()
            .take_while(|(d, _)| d.as_str() < day)
            .last()
            .map_or(0, |(_, mrr)| *mrr)
    };
    // A customer joins or leaves once per instant, however many of their
    // subscriptions changed at it: counts are of (customer, instant) pairs.
    let arrivals_and_departures = |from: &str, to: &str| -> (i64, i64) {
        let mut seen = std::collections::HashSet::new();
        let (mut arrived, mut left) = (0, 0);
        for (customer, at, kind, _) in &moves {
            let day = &at[..10];
            if day < from
                || day >= to
                || !seen.insert((customer, at, *kind == mrr::MovementKind::Churn))
            {
                continue;
            }
            match kind {
                mrr::MovementKind::New | mrr::MovementKind::Reactivation => arrived += 1,
                mrr::MovementKind::Churn => left += 1,
                _ => {}
            }
        }
        (arrived, left)
    };
    let customers_before = |day: &str| -> i64 {
        let (arrived, left) = arrivals_and_departures("0000-00-00", day);
        arrived - left
    };
    let mut data = Vec::new();
    let mut month_start = query.from.replace_day(1).unwrap_or(query.from);
    while month_start <= query.to {
        let next = if month_start.month() == Month::December {
            Date::from_calendar_date(month_start.year() + 1, Month::January, 1)
        } else {
            Date::from_calendar_date(month_start.year(), month_start.month().next(), 1)
        }
        .map_err(|_| bad("date out of range"))?;
        let (start, end) = (month_start.to_string(), next.to_string());
        let sum = |wanted: mrr::MovementKind| -> i64 {
            moves
                .iter()
                .filter(|(_, at, kind, _)| {
                    *kind == wanted && &at[..10] >= start.as_str() && &at[..10] < end.as_str()
                })
                .map(|(.., delta)| delta)
                .sum()
        };
        let (mrr_start, mrr_end) = (mrr_before(&start), mrr_before(&end));
        let (customers_start, customers_end) = (customers_before(&start), customers_before(&end));
        let (_, churned) = arrivals_and_departures(&start, &end);
        let churn_minor = sum(mrr::MovementKind::Churn);
        let contraction = sum(mrr::MovementKind::Contraction);
        let expansion = sum(mrr::MovementKind::Expansion);
        let gross_churn = ratio(-(churn_minor + contraction), mrr_start);
        let arpa_minor = (customers_end > 0).then(|| mrr_end / customers_end);
        let ltv = match (arpa_minor, -(churn_minor + contraction)) {
            (Some(arpa), lost) if lost > 0 && mrr_start > 0 => Some(usd(arpa * mrr_start / lost)),
            _ => None,
        };
        data.push(ChurnMonth {
            month: start[..7].to_owned(),
            customers_start,
            customers_end,
            customers_churned: churned,
            customer_churn_rate: ratio(churned, customers_start),
            mrr_start: usd(mrr_start),
            mrr_end: usd(mrr_end),
            gross_revenue_churn_rate: gross_churn,
            net_revenue_retention: ratio(
                mrr_start + expansion + contraction + churn_minor,
                mrr_start,
            ),
            gross_revenue_retention: ratio(mrr_start + contraction + churn_minor, mrr_start),
            arpa: arpa_minor.map(usd),
            ltv,
        });
        if data.len() > BUCKETS_MAX {
            return Err(bad("too many months"));
        }
        month_start = next;
    }
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

/// The month (YYYY-MM) after `month`.
fn next_month(month: &str) -> String {
    let (year, number) = month.split_once('-').unwrap_or(("1970", "01"));
    let (year, number): (i32, u32) = (year.parse().unwrap_or(1970), number.parse().unwrap_or(1));
    if number >= 12 {
        format!("{:04}-01", year + 1)
    } else {
        format!("{year:04}-{:02}", number + 1)
    }
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
    security(("api_key" = [])))]
pub async fn cohorts(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    caller.require(EVERYONE)?;
    let query = parse_query(query.as_deref(), today(&state))?;
    if query.plan != "*" || query.interval != "day" {
        return Err(bad(
            "cohorts are monthly and for all plans: plan and interval do not apply",
        ));
    }
    let (db, position) = query.reading.read_models(&state).await?;
    let moves = mrr::movements_through(&db, query.to)
        .await
        .map_err(unavailable)?;
    // Per customer, in effective order: the first month, and by month the
    // changes of MRR and whether they were present at its end.
    let mut first: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();
    let mut changes: std::collections::HashMap<String, Vec<(String, i64, Option<bool>)>> =
        std::collections::HashMap::new();
    for (customer, at, kind, delta) in &moves {
        let month = at[..7].to_owned();
        first
            .entry(customer.clone())
            .or_insert_with(|| month.clone());
        let presence = match kind {
            mrr::MovementKind::New | mrr::MovementKind::Reactivation => Some(true),
            mrr::MovementKind::Churn => Some(false),
            _ => None,
        };
        changes
            .entry(customer.clone())
            .or_default()
            .push((month, *delta, presence));
    }
    let (from_month, to_month) = (
        query.from.to_string()[..7].to_owned(),
        query.to.to_string()[..7].to_owned(),
    );
    let mut cohorts: std::collections::BTreeMap<String, Vec<String>> =
        std::collections::BTreeMap::new();
    for (customer, month) in first {
        if month >= from_month && month <= to_month {
            cohorts.entry(month).or_default().push(customer);
        }
    }
    let mut data = Vec::new();
    for (month, customers) in cohorts {
        let mut retained = Vec::new();
        let mut mrr_by_month = Vec::new();
        let mut measured = month.clone();
        while measured <= to_month && retained.len() <= BUCKETS_MAX {
            let (mut still, mut mrr) = (0, 0);
            for customer in &customers {
                let upto = changes
                    .get(customer)
                    .map(|c| {
                        c.iter()
                            .filter(|(m, ..)| *m <= measured)
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default();
                mrr += upto.iter().map(|(_, delta, _)| delta).sum::<i64>();
                if upto.iter().rev().find_map(|(.., present)| *present) == Some(true) {
                    still += 1;
                }
            }
            retained.push(still);
            mrr_by_month.push(usd(mrr));
            measured = next_month(&measured);
        }
        data.push(Cohort {
            month,
            customers: customers.len() as i64,
            customers_retained: retained,
            mrr: mrr_by_month,
        });
    }
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
    pub contact: Option<crate::http::dto::ContactDto>,
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
    security(("api_key" = [])))]
pub async fn customer_view(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    axum::extract::Path(id): axum::extract::Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    caller.require(super::READERS)?;
    let customer = super::customer_id(&id)?;
    let mut reading = Reading::default();
    for (key, value) in pairs(query.as_deref()) {
        if !reading.take(key, value)? {
            return Err(bad(format!("unknown query parameter {key:?}")));
        }
    }
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
    let subs = db
        .query(
            &Stmt::new(
                format!(
                    "SELECT subscription_id, plan, status, mrr_minor FROM {} WHERE customer_id = ? ORDER BY subscription_id",
                    mrr::SUBSCRIPTIONS
                ),
                vec![id_text.clone().into()],
            ),
            "ttti",
        )
        .await
        .map_err(unavailable)?;
    let subscriptions: Vec<ViewSubscription> = subs
        .iter()
        .map(|r| ViewSubscription {
            id: r[0].text(),
            plan: r[1].text(),
            status: r[2].text(),
            mrr: usd(r[3].int()),
        })
        .collect();
    let mrr_minor: i64 = subs.iter().map(|r| r[3].int()).sum();
    let contact = if caller.role.sees_personal_data() {
        state
            .billing
            .contact(customer)
            .await?
            .map(|c| crate::http::dto::ContactDto {
                name: c.name,
                email: c.email,
                phone: c.phone,
            })
    } else {
        None
    };
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
    security(("api_key" = [])))]
pub async fn revenue_recognition(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    caller.require(EVERYONE)?;
    let query = parse_query(query.as_deref(), today(&state))?;
    if query.plan != "*" || query.interval != "day" {
        return Err(bad(
            "revenue recognition is monthly and for all plans: plan and interval do not apply",
        ));
    }
    let (db, position) = query.reading.read_models(&state).await?;
    let months = recur_projections::revenue::monthly(
        &db,
        &query.from.to_string()[..7],
        &query.to.to_string()[..7],
    )
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
    security(("api_key" = [])))]
pub async fn ar_aging(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    caller.require(EVERYONE)?;
    let mut as_of = today(&state);
    let mut reading = Reading::default();
    for (key, value) in pairs(query.as_deref()) {
        if reading.take(key, value)? {
            continue;
        }
        match key {
            "as_of" => as_of = parse_date(value)?,
            other => return Err(bad(format!("unknown query parameter {other:?}"))),
        }
    }
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

/// MRR and paying customers as of a ledger position ("what did we know then"):
/// the movements up to it add up to the MRR at it.
#[utoipa::path(get, operation_id = "metrics_mrr_at", path = "/v1/metrics/mrr-at", tag = "metrics",
    params(("position" = u64, Query, description = "A ledger position (a write's `position`)")),
    responses((status = 200, description = "Done", body = MrrAt), (status = "4XX", description = "Refused: a problem with a stable code", body = Problem),
              (status = 503, description = "The projection has not reached the position yet", body = Problem)),
    security(("api_key" = [])))]
pub async fn mrr_at(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    caller.require(EVERYONE)?;
    let mut at = None;
    for (key, value) in pairs(query.as_deref()) {
        match (key, value) {
            ("position", value) => {
                at = Some(
                    value
                        .parse::<u64>()
                        .map_err(|_| bad("position must be a ledger position"))?,
                )
            }
            (other, _) => return Err(bad(format!("unknown query parameter {other:?}"))),
        }
    }
    let at = at.ok_or_else(|| bad("position is required"))?;
    wait_for(&state, Some(at)).await?;
    let rows = state
        .read_models
        .query(
            &Stmt::new(
                format!(
                    "SELECT CAST(COALESCE(SUM(delta_minor), 0) AS BIGINT),
                            CAST(COUNT(DISTINCT CASE WHEN kind IN ('new', 'reactivation')
                                                     THEN customer_id || '|' || effective_at END)
                               - COUNT(DISTINCT CASE WHEN kind = 'churn'
                                                     THEN customer_id || '|' || effective_at END) AS BIGINT)
                     FROM {} WHERE position <= ?",
                    mrr::MOVEMENTS
                ),
                vec![i64::try_from(at).unwrap_or(i64::MAX).into()],
            ),
            "ii",
        )
        .await
        .map_err(unavailable)?;
    let (mrr_minor, paying) = rows.first().map_or((0, 0), |r| (r[0].int(), r[1].int()));
    let body = MrrAt {
        object: "mrr_at",
        position: at,
        mrr: usd(mrr_minor),
        arr: usd(mrr_minor * 12),
        customers_paying: paying,
    };
    Ok(json_response(StatusCode::OK, &to_value(&body)?))
}
