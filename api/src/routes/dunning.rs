//! /v1/dunning/tasks: the phone tasks of dunning campaigns — listed from the
//! recovery read model, claimed and completed through billing's commands.
//! Ids and amounts only: the caller looks the customer up where personal data
//! is guarded.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use recur_commands::dunning::{self, CallOutcome};
use recur_commands::{BillingError, InvoiceId};
use recur_ledger::{Currency, Money};
use recur_projections::dunning::TaskStatus;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{resource_action, stored_id, to_value, unavailable};
use crate::AppState;
use crate::auth::Caller;
use crate::dto::{MoneyDto, rfc3339};
use crate::problem::{ApiError, Problem};
use crate::request::{Params, RawBody, json_response, parse};

/// A phone task: call the customer about an invoice in dunning.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct TaskDto {
    /// Always "dunning_task".
    pub object: &'static str,
    /// `{invoice_id}.{task_no}`.
    pub task_id: String,
    /// The invoice in dunning.
    pub invoice: String,
    /// The task's number within the invoice's campaign (1, 2, …).
    pub task_no: u32,
    /// The customer to call (look them up with a role that sees contacts).
    pub customer: String,
    /// Owed when the campaign started.
    pub amount_due: MoneyDto,
    /// The campaign step that asked for the call.
    pub step: u32,
    /// When it was created (RFC 3339).
    pub created_at: String,
    /// open, claimed or completed.
    pub status: String,
    /// Who took it.
    pub claimed_by: Option<String>,
    /// will_pay, declined, no_answer or wrong_number, once completed.
    pub outcome: Option<String>,
    /// The ledger position of the write, on claim and complete.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
}

/// A list of phone tasks.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct TaskList {
    /// Always "list".
    pub object: &'static str,
    /// The tasks, oldest first.
    pub data: Vec<TaskDto>,
    /// More than [`recur_projections::dunning::TASKS_MAX`] matched; the oldest are shown.
    pub has_more: bool,
}

/// Which tasks to list.
#[derive(Clone, Copy, Debug, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StatusParam {
    /// Nobody took it yet.
    Open,
    /// Taken, not completed.
    Claimed,
    /// Completed.
    Completed,
}

/// The task list's query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TasksQuery {
    /// open (default), claimed or completed.
    pub status: Option<StatusParam>,
}

/// A claim's body.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimBody {
    /// Who takes the task (a name or an operator id; at most 500 characters).
    pub by: String,
}

/// A completion's body.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteBody {
    /// How the call went.
    pub outcome: OutcomeDto,
}

/// How a call went.
#[derive(Clone, Copy, Debug, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeDto {
    /// The customer will update the card or pay.
    WillPay,
    /// Reached; the customer declines to pay.
    Declined,
    /// Not reached.
    NoAnswer,
    /// The number is wrong.
    WrongNumber,
}

impl From<OutcomeDto> for CallOutcome {
    fn from(outcome: OutcomeDto) -> Self {
        match outcome {
            OutcomeDto::WillPay => CallOutcome::WillPay,
            OutcomeDto::Declined => CallOutcome::Declined,
            OutcomeDto::NoAnswer => CallOutcome::NoAnswer,
            OutcomeDto::WrongNumber => CallOutcome::WrongNumber,
        }
    }
}

/// A task id, `{invoice_id}.{task_no}`, parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskId {
    /// The campaign's invoice.
    pub invoice: InvoiceId,
    /// The task's number (from 1).
    pub task_no: u32,
}

impl TaskId {
    /// Its text form.
    pub fn text(self) -> String {
        format!("{}.{}", self.invoice.0, self.task_no)
    }
}

/// Parses a path's task id; anything that is not one is simply not found, as
/// every other malformed path id is.
///
/// # Errors
/// 404 `dunning_task_not_found`.
pub fn task_id(text: &str) -> Result<TaskId, ApiError> {
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "dunning_task_not_found",
            "no such dunning task: a task id is {invoice_id}.{task_no}",
        )
    };
    let (invoice, number) = text.rsplit_once('.').ok_or_else(not_found)?;
    let invoice = InvoiceId::parse(invoice).map_err(|_| not_found())?;
    // Digits only: u32's parser would take a leading '+'.
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(not_found());
    }
    let task_no = number.parse::<u32>().map_err(|_| not_found())?;
    if task_no == 0 {
        return Err(not_found());
    }
    Ok(TaskId { invoice, task_no })
}

fn status_name(claimed: bool, completed: bool) -> &'static str {
    match (claimed, completed) {
        (_, true) => "completed",
        (true, false) => "claimed",
        (false, false) => "open",
    }
}

/// Phone tasks of dunning campaigns (high-value customers' policy), oldest
/// first: ids and amounts only.
#[utoipa::path(get, operation_id = "dunning_tasks_list", path = "/v1/dunning/tasks", tag = "dunning",
    params(("status" = Option<StatusParam>, Query, description = "open (default: nobody took it), claimed or completed")),
    responses((status = 200, description = "Done", body = TaskList), (status = "4XX", description = "Refused: a problem with a stable code", body = Problem),
              (status = 503, description = "The projection is behind", body = Problem)),
    security(("api_key" = ["admin", "billing", "support"])))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    _caller: Caller,
    Params(query): Params<TasksQuery>,
) -> Result<Response, ApiError> {
    let status = match query.status.unwrap_or(StatusParam::Open) {
        StatusParam::Open => TaskStatus::Open,
        StatusParam::Claimed => TaskStatus::Claimed,
        StatusParam::Completed => TaskStatus::Completed,
    };
    // Read your own writes: a claim just made shows in the next list.
    let head = state.billing.ledger().last_position().await?;
    super::metrics::wait_on(&state.projected, head.0).await?;
    let (rows, has_more) = recur_projections::dunning::tasks(&state.read_models, status)
        .await
        .map_err(unavailable)?;
    let mut data = Vec::with_capacity(rows.len());
    for row in rows {
        let invoice = stored_id(&row.invoice_id, super::invoice_id)?;
        let currency = Currency::parse(&row.currency).map_err(|_| {
            unavailable(format!(
                "a read model holds {:?} as a currency",
                row.currency
            ))
        })?;
        let number = |n: i64| {
            u32::try_from(n)
                .map_err(|_| unavailable(format!("a read model holds {n} as a task number")))
        };
        let created = time::OffsetDateTime::from_unix_timestamp(row.created_s)
            .map_err(|_| unavailable("a read model holds no time"))?;
        let task_no = number(row.task_no)?;
        data.push(TaskDto {
            object: "dunning_task",
            task_id: TaskId { invoice, task_no }.text(),
            invoice: row.invoice_id.clone(),
            task_no,
            customer: row.customer_id,
            amount_due: Money::from_minor(row.amount_due_minor, currency).into(),
            step: number(row.step)?,
            created_at: rfc3339(created),
            status: status_name(row.claimed_by.is_some(), row.outcome.is_some()).into(),
            claimed_by: row.claimed_by,
            outcome: row.outcome,
            position: None,
        });
    }
    let list = TaskList {
        object: "list",
        data,
        has_more,
    };
    Ok(json_response(StatusCode::OK, &to_value(&list)?))
}

/// The task as its campaign holds it after a write.
async fn task_dto(
    state: &AppState,
    id: TaskId,
    position: Option<u64>,
) -> Result<TaskDto, ApiError> {
    let campaign = state.billing.dunning_campaign(id.invoice).await?;
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "dunning_task_not_found",
            "no such dunning task",
        )
    };
    let subject = campaign.subject.as_ref().ok_or_else(not_found)?;
    let task = campaign
        .tasks
        .iter()
        .find(|t| t.task_no == id.task_no)
        .ok_or_else(not_found)?;
    let outcome = task.outcome.map(|o| {
        serde_json::to_value(o)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    });
    Ok(TaskDto {
        object: "dunning_task",
        task_id: id.text(),
        invoice: id.invoice.0.to_string(),
        task_no: id.task_no,
        customer: subject.customer_id.to_string(),
        amount_due: subject.amount_due.into(),
        step: task.step,
        created_at: rfc3339(task.created_at),
        status: status_name(task.claimed_by.is_some(), task.outcome.is_some()).into(),
        claimed_by: task.claimed_by.clone(),
        outcome,
        position,
    })
}

/// Take a phone task: one person at a time (another's claim is 409
/// `invalid_transition`; claiming your own again changes nothing).
#[utoipa::path(post, operation_id = "dunning_tasks_claim", path = "/v1/dunning/tasks/{task_id}/claim", tag = "dunning", request_body = ClaimBody,
    params(("task_id" = String, Path, description = "Task id: {invoice_id}.{task_no}"),
           ("If-Match" = Option<String>, Header, description = "The campaign's version you last saw"),
           ("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer for the same body")),
    responses((status = 200, description = "Done", body = TaskDto), (status = "4XX", description = "Refused: a problem with a stable code", body = Problem)),
    security(("api_key" = ["admin", "billing", "support"])))]
pub async fn claim(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Response {
    let route = format!("POST /v1/dunning/tasks/{id}/claim");
    let state = &state;
    let command = |id: TaskId, body: &[u8]| {
        let input: ClaimBody = parse(body)?;
        let work = async move {
            state
                .billing
                .claim_dunning_task(id.invoice, id.task_no, input.by)
                .await
                .map(|_| ())
        };
        Ok((
            dunning::stream(id.invoice).map_err(BillingError::from)?,
            work,
        ))
    };
    resource_action(
        (state, &caller),
        &route,
        (&headers, &body),
        task_id(&id),
        command,
        |id, position| async move { to_value(&task_dto(state, id, position).await?) },
    )
    .await
}

/// Report how the call of a claimed task went.
#[utoipa::path(post, operation_id = "dunning_tasks_complete", path = "/v1/dunning/tasks/{task_id}/complete", tag = "dunning", request_body = CompleteBody,
    params(("task_id" = String, Path, description = "Task id: {invoice_id}.{task_no}"),
           ("If-Match" = Option<String>, Header, description = "The campaign's version you last saw"),
           ("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer for the same body")),
    responses((status = 200, description = "Done", body = TaskDto), (status = "4XX", description = "Refused: a problem with a stable code", body = Problem)),
    security(("api_key" = ["admin", "billing", "support"])))]
pub async fn complete(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Response {
    let route = format!("POST /v1/dunning/tasks/{id}/complete");
    let state = &state;
    let command = |id: TaskId, body: &[u8]| {
        let input: CompleteBody = parse(body)?;
        let work = async move {
            state
                .billing
                .complete_dunning_task(id.invoice, id.task_no, input.outcome.into())
                .await
                .map(|_| ())
        };
        Ok((
            dunning::stream(id.invoice).map_err(BillingError::from)?,
            work,
        ))
    };
    resource_action(
        (state, &caller),
        &route,
        (&headers, &body),
        task_id(&id),
        command,
        |id, position| async move { to_value(&task_dto(state, id, position).await?) },
    )
    .await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_task_id_is_an_invoice_id_and_a_positive_number() {
        let invoice = "0190f5a2-7c1e-7000-8000-000000000001";
        let id = task_id(&format!("{invoice}.2")).unwrap();
        assert_eq!(id.task_no, 2);
        assert_eq!(id.text(), format!("{invoice}.2"));
        for bad in [
            "",
            invoice,
            &format!("{invoice}."),
            &format!("{invoice}.0"),
            &format!("{invoice}.+1"),
            &format!("{invoice}.x"),
            &format!("{invoice}.99999999999"),
            "nope.1",
        ] {
            let error = task_id(bad).unwrap_err();
            assert_eq!(error.status, StatusCode::NOT_FOUND, "{bad}");
            assert_eq!(error.problem.code, "dunning_task_not_found", "{bad}");
        }
    }
}
