//! The recorded reconciliation runs (`recur reconcile`): what the ledger and the
//! payment provider disagreed on.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;

use super::{events, to_value};
use crate::AppState;
use crate::auth::Caller;
use crate::dto::{ReconciliationDto, ReconciliationList};
use crate::problem::{ApiError, Problem};
use crate::request::{Params, json_response};

/// The query of `GET /v1/reconciliations`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconciliationsQuery {
    /// How many runs, newest first: 1..=100 (default 10).
    pub limit: Option<usize>,
}

/// The recorded reconciliation runs, newest first, each with its mismatches.
#[utoipa::path(get, operation_id = "reconciliations_list", path = "/v1/reconciliations", tag = "reconciliations",
    params(("limit" = Option<u32>, Query, description = "1 to 100, default 10", minimum = 1, maximum = 100)),
    responses((status = 200, description = "Done", body = ReconciliationList), (status = "4XX", description = "Refused: a problem with a stable code", body = Problem)), security(("api_key" = ["admin", "billing", "analyst"])))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    _caller: Caller,
    Params(query): Params<ReconciliationsQuery>,
) -> Result<Response, ApiError> {
    let limit = events::page_items(query.limit)?;
    let mut runs = state.billing.reconciliations().await?;
    let has_more = runs.len() > limit;
    runs.reverse();
    runs.truncate(limit);
    let list = ReconciliationList {
        object: "list",
        data: runs.iter().map(ReconciliationDto::from).collect(),
        has_more,
    };
    Ok(json_response(StatusCode::OK, &to_value(&list)?))
}
