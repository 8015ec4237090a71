//! Errors as RFC 9457 problem details with a stable `code`: the one place where
//! domain, ledger and protocol errors become HTTP statuses.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use recur_commands::{BillingError, DomainError};
use recur_ledger::{Chain, LedgerError};
use serde::Serialize;
use utoipa::ToSchema;

/// A problem details body (`application/problem+json`).
#[derive(Clone, Debug, Serialize, ToSchema, PartialEq, Eq)]
pub struct Problem {
    /// A URI naming the problem type: `https://recur.dev/problems/<code>`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The HTTP status.
    pub status: u16,
    /// A short, stable summary.
    pub title: String,
    /// What happened, for a person.
    pub detail: String,
    /// The stable machine code (`plan_not_found`, `version_conflict`, …).
    pub code: String,
    /// The resource's current version, on `version_conflict`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_version: Option<u64>,
}

/// The code of a request refused by a rate limit (429, with `Retry-After`).
pub const RATE_LIMITED: &str = "rate_limited";

/// The stable code of a problem answered now, left on the response for the
/// telemetry middleware (a replayed answer is stored bytes and carries none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProblemCode(pub String);

/// An error answered to the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// Status.
    pub status: StatusCode,
    /// The body (boxed: errors travel in every `Result`).
    pub problem: Box<Problem>,
    /// Seconds to send as `Retry-After`, when the client should wait before retrying.
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    /// An error with `status`, stable `code` and a message.
    pub fn new(status: StatusCode, code: &str, detail: impl Into<String>) -> Self {
        Self {
            status,
            problem: Box::new(Problem {
                kind: format!("https://recur.dev/problems/{code}"),
                status: status.as_u16(),
                title: status.canonical_reason().unwrap_or("Error").to_owned(),
                detail: detail.into(),
                code: code.to_owned(),
                current_version: None,
            }),
            retry_after_s: None,
        }
    }

    /// 429 `rate_limited`: a rate limit refused the request; retry after
    /// `retry_after_s` seconds (sent as `Retry-After`).
    pub fn rate_limited(detail: impl Into<String>, retry_after_s: u64) -> Self {
        let mut error = Self::new(StatusCode::TOO_MANY_REQUESTS, RATE_LIMITED, detail);
        error.retry_after_s = Some(retry_after_s);
        error
    }

    /// 401: no key, or not a key we know.
    pub fn unauthenticated() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "send an API key as `Authorization: Bearer <key>`",
        )
    }

    /// 403: the key's role may not do this.
    pub fn forbidden(role: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("the {role} role may not do this"),
        )
    }

    /// 404 for an unknown route or resource.
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.problem).unwrap_or_default();
        let mut response = (self.status, body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(seconds) = self.retry_after_s {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
            .extensions_mut()
            .insert(ProblemCode(self.problem.code));
        response
    }
}

impl From<DomainError> for ApiError {
    fn from(error: DomainError) -> Self {
        // The whole chain: a refusal that wraps a field's refusal (a tax rate's
        // location) reads as one sentence, as it did when it was one string.
        let detail = Chain(&error).to_string();
        let unprocessable =
            |code: &str| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, &detail);
        match &error {
            // The domain's code is the problem's code: one name per refusal.
            DomainError::UnknownPlan(_)
            | DomainError::UnknownPrice(_)
            | DomainError::NotFound { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, error.code(), detail)
            }
            DomainError::AlreadyExists { .. } => {
                ApiError::new(StatusCode::CONFLICT, "already_exists", detail)
            }
            DomainError::InvalidTransition { .. } => {
                ApiError::new(StatusCode::CONFLICT, "invalid_transition", detail)
            }
            DomainError::PersonalDataErased => {
                ApiError::new(StatusCode::CONFLICT, error.code(), detail)
            }
            other => unprocessable(other.code()),
        }
    }
}

impl From<LedgerError> for ApiError {
    fn from(error: LedgerError) -> Self {
        if error.is_client_error() {
            // The chain: the parser's message for invalid JSON is its source.
            return ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                error.code(),
                Chain(&error).to_string(),
            );
        }
        match error {
            LedgerError::Unavailable { .. } | LedgerError::Closed => {
                tracing::warn!(error = %Chain(&error), "ledger unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the ledger is unavailable; retry shortly",
                )
            }
            error => {
                tracing::error!(error = %Chain(&error), "ledger error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                )
            }
        }
    }
}

impl From<BillingError> for ApiError {
    fn from(error: BillingError) -> Self {
        match error {
            BillingError::Domain(error) => error.into(),
            BillingError::Ledger(error) => error.into(),
            BillingError::Stale { current, .. } => {
                let mut api = ApiError::new(
                    StatusCode::PRECONDITION_FAILED,
                    "version_conflict",
                    error_text(current),
                );
                api.problem.current_version = Some(current);
                api
            }
            BillingError::GatewayUnavailable(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "gateway_unavailable",
                "the payment gateway is unavailable; the payment is retried with the same key",
            ),
            BillingError::Contended(_) => ApiError::new(
                StatusCode::CONFLICT,
                "contended",
                "the resource kept changing; retry",
            ),
            // The server's configuration, not the request: the operator must
            // give the master key (or a retired one) back.
            BillingError::NoMasterKey
            | BillingError::Privacy(
                recur_commands::privacy::PrivacyError::UnknownMasterKey { .. }
                | recur_commands::privacy::PrivacyError::Random,
            ) => {
                tracing::error!(error = %Chain(&error), code = error.code(), "personal data unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    error.code(),
                    "personal data cannot be read or stored: the server lacks its master key",
                )
            }
            error => {
                tracing::error!(error = %Chain(&error), code = error.code(), "billing error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                )
            }
        }
    }
}

impl From<crate::history::HistoryError> for ApiError {
    fn from(error: crate::history::HistoryError) -> Self {
        use crate::history::HistoryError;
        match error {
            HistoryError::Ledger(error) => error.into(),
            HistoryError::TooLong => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "history_too_long",
                error.to_string(),
            ),
            // A damaged ledger: the server's trouble, named in the log only.
            error @ (HistoryError::NotJson { .. } | HistoryError::OutOfOrder { .. }) => {
                tracing::error!(error = %Chain(&error), "history of a damaged ledger");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                )
            }
        }
    }
}

fn error_text(current: u64) -> String {
    format!("the resource is at version {current}: reload it and send that version in If-Match")
}

#[cfg(test)]
mod tests {
    use recur_commands::tax::TaxRateError;

    use super::*;

    #[test]
    fn a_tax_rate_refusal_keeps_its_code_and_reads_with_its_cause() {
        let error = DomainError::from(TaxRateError::Location {
            jurisdiction: "usa".into(),
            source: Box::new(DomainError::InvalidField {
                field: "country",
                reason: "two uppercase letters (ISO 3166-1 alpha-2)".into(),
            }),
        });
        let api = ApiError::from(error);
        assert_eq!(api.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(api.problem.code, "invalid_catalog");
        // The same sentence as when the refusal was one string.
        assert_eq!(
            api.problem.detail,
            "tax rate usa: invalid country: two uppercase letters (ISO 3166-1 alpha-2)"
        );
    }
}
