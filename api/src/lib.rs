//! Recur's command API over HTTP (axum), as a library: Stripe-like JSON
//! resources under `/v1`, idempotency keys, `If-Match`, API keys with roles,
//! problem details, OpenAPI at `/openapi.json`, `/healthz` and `/readyz`,
//! Prometheus metrics at `/metrics`. The `recur serve` process that wires it to
//! a ledger, the scheduler and the relay lives in the binary (`recur-gateway`).
//!
//! - [`api_routes`]: every route, declared once on its handler; [`router`] and
//!   [`openapi_document`] are made from it.
//! - [`auth`]: API keys (in memory, fed by the ledger) and the role check.
//! - [`request`]: the protocol around every handler: bodies, `If-Match`,
//!   `Idempotency-Key`, query strings.
//! - [`limits`]: rate limits per client address and per API key (429 `rate_limited`).
//! - [`parsers`]: every parser of client input in one table, for property
//!   tests and fuzzing.
//! - [`problem`]: errors as RFC 9457 problem details, in one place.
//! - [`routes`]: one module per resource; [`dto`]: the JSON shapes.
//! - [`history`]: a resource's facts made readable (summary and state after
//!   each), shared with `recur ledger history`.
//! - [`telemetry`]: the request middleware's counters and `/metrics`.
//! - [`routes::update_card`]: the hosted update-card page (HTML, public: the
//!   link's signed token is the credential).

pub mod auth;
pub mod dto;
pub mod history;
pub mod limits;
pub mod openapi;
pub mod parsers;
pub mod problem;
pub mod request;
pub mod routes;
pub mod stripe_signature;
pub mod telemetry;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use recur_commands::Billing;
use recur_commands::scheduler::Scheduler;
use recur_ledger::TestClock;
use tracing::Instrument;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use self::auth::KeyRing;
use self::problem::{ApiError, ProblemCode};
use self::routes::{catalog, coupons, customers, events, invoices, metrics, subscriptions, system};
use self::telemetry::{RequestRecord, Telemetry};

/// What every handler shares.
pub struct AppState {
    /// The billing service.
    pub billing: Arc<Billing>,
    /// API keys.
    pub keys: Arc<KeyRing>,
    /// The scheduler.
    pub scheduler: Arc<Scheduler>,
    /// The test clock, when enabled.
    pub test_clock: Option<TestClock>,
    /// One test-clock advance at a time.
    pub clock_turn: tokio::sync::Mutex<()>,
    /// The read models' database.
    pub read_models: recur_projections::db::Db,
    /// The ledger position the projections have reached.
    pub projected: Arc<std::sync::atomic::AtomicU64>,
    /// The ledger position the lists' projection (`customers`) has reached.
    pub lists_projected: Arc<std::sync::atomic::AtomicU64>,
    /// The read models as of the last past position asked for (one build at a time).
    pub past: tokio::sync::Mutex<Option<(u64, recur_projections::db::Db)>>,
    /// How long a request may run.
    pub request_timeout: std::time::Duration,
    /// The metrics served at `/metrics`.
    pub telemetry: Arc<Telemetry>,
    /// The rate limits' buckets.
    pub limiter: Arc<limits::Limiter>,
    /// The Stripe webhook signing secrets (`whsec_…`; several during a
    /// rotation); none: no webhook endpoint. Secrets: never logged.
    pub stripe_webhook_secrets: Vec<String>,
    /// Told after each Stripe event is kept: wakes the translator, which
    /// works after the webhook's answer ([`recur_commands::translator`]).
    pub stripe_kept: Arc<tokio::sync::Notify>,
    /// The update-card page: the links' key, the public URL, the business's name.
    pub update_card: routes::update_card::UpdateCardConfig,
}

/// How long a request may run before it is answered 503 `request_timeout`
/// (`/v1/test_clock/advance` excepted: it runs the business forward).
pub const REQUEST_TIMEOUT_MS: u64 = 30_000;

/// Every route, declared once: each handler's `#[utoipa::path]` names its
/// method, path and the roles allowed (its `api_key` security scopes); the
/// router, the OpenAPI document and the role check ([`auth::authorize`]) are all
/// made from these declarations, so they cannot drift apart.
pub fn api_routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(system::healthz))
        .routes(routes!(system::readyz))
        .routes(routes!(system::prometheus))
        .routes(routes!(customers::create))
        .routes(routes!(customers::get, customers::update))
        .routes(routes!(customers::attach_payment_method))
        .routes(routes!(customers::erase_personal_data))
        .routes(routes!(customers::export))
        .routes(routes!(customers::history))
        .routes(routes!(routes::webhooks::stripe))
        .routes(routes!(routes::reconciliations::list))
        .routes(routes!(metrics::customer_view))
        .routes(routes!(subscriptions::create, subscriptions::list))
        .routes(routes!(subscriptions::get))
        .routes(routes!(subscriptions::change))
        .routes(routes!(subscriptions::preview_change))
        .routes(routes!(subscriptions::cancel))
        .routes(routes!(subscriptions::pause))
        .routes(routes!(subscriptions::resume))
        .routes(routes!(subscriptions::undo_cancellation))
        .routes(routes!(
            subscriptions::apply_discount,
            subscriptions::remove_discount
        ))
        .routes(routes!(invoices::list))
        .routes(routes!(invoices::get))
        .routes(routes!(invoices::pay))
        .routes(routes!(invoices::void))
        .routes(routes!(invoices::refund))
        .routes(routes!(invoices::purchase))
        .routes(routes!(coupons::create))
        .routes(routes!(coupons::get))
        .routes(routes!(catalog::plans, catalog::create_plan))
        .routes(routes!(catalog::update_plan))
        .routes(routes!(catalog::tax_rates, catalog::create_tax_rate))
        .routes(routes!(catalog::retire_tax_rate))
        .routes(routes!(catalog::prices, catalog::create_price))
        .routes(routes!(metrics::mrr_series))
        .routes(routes!(metrics::movements))
        .routes(routes!(metrics::churn))
        .routes(routes!(metrics::cohorts))
        .routes(routes!(metrics::mrr_at))
        .routes(routes!(metrics::trial_balance))
        .routes(routes!(metrics::ar_aging))
        .routes(routes!(metrics::revenue_recognition))
        .routes(routes!(metrics::dunning))
        .routes(routes!(routes::dunning::list))
        .routes(routes!(routes::dunning::claim))
        .routes(routes!(routes::dunning::complete))
        .routes(routes!(events::list))
        .routes(routes!(system::create_key, system::list_keys))
        .routes(routes!(system::revoke_key))
        .routes(routes!(system::rotate_key))
        .routes(routes!(system::advance))
        .routes(routes!(
            routes::update_card::show,
            routes::update_card::submit
        ))
        .routes(routes!(routes::update_card::confirm))
}

/// `path` as it may be logged: an update-card link's token is a credential,
/// so everything after `/update-card/` is replaced.
pub fn loggable_path(path: &str) -> std::borrow::Cow<'_, str> {
    let prefix = recur_commands::update_card_link::PATH_PREFIX;
    match path.strip_prefix(prefix) {
        Some(rest) if !rest.is_empty() => format!("{prefix}[redacted]").into(),
        _ => path.into(),
    }
}

/// The OpenAPI document of [`api_routes`], made once.
pub fn openapi_document() -> &'static utoipa::openapi::OpenApi {
    static DOCUMENT: std::sync::OnceLock<utoipa::openapi::OpenApi> = std::sync::OnceLock::new();
    DOCUMENT.get_or_init(|| {
        let mut api = api_routes().split_for_parts().1;
        openapi::declare_rate_limits(&mut api);
        api
    })
}

/// Builds the router over `state`. Serve it with
/// `into_make_service_with_connect_info::<SocketAddr>()`: the per-address rate
/// limit needs the peer's address, and without it no address is limited.
pub fn router(state: Arc<AppState>) -> Router {
    let (routes, api) = api_routes().split_for_parts();
    let roles = Arc::new(auth::RouteRoles::of(&api));
    routes
        .route("/openapi.json", get(system::openapi))
        .route_layer(middleware::from_fn_with_state(
            (Arc::clone(&state), roles),
            auth::authorize,
        ))
        .fallback(|| async { ApiError::not_found("route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method",
            )
        })
        .layer(DefaultBodyLimit::max(request::BODY_BYTES_MAX))
        // Before authentication and routing, so a flood of bad keys or of
        // unknown paths is limited too; inside `request_id`, so a refusal is
        // logged and counted like any answer.
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            limits::limit_address,
        ))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            request_id,
        ))
        .with_state(state)
}

/// Gives every request an id (`x-request-id`, in the logs, and the correlation
/// id of the events it writes), bounds its time, logs its outcome and counts it.
async fn request_id(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let id = uuid::Uuid::now_v7();
    let method = request.method().clone();
    // The route's template, never the raw path: ids would make a series each.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned());
    let span = tracing::info_span!("request", id = %id, method = %method, path = %loggable_path(request.uri().path()));
    let bounded = request.uri().path() != "/v1/test_clock/advance";
    async move {
        let started = std::time::Instant::now();
        let context = recur_commands::context::RequestContext {
            request_id: Some(id),
            ..Default::default()
        };
        let running = async {
            recur_commands::context::within(context, next.run(request))
                .await
                .0
        };
        let mut response = if bounded {
            match tokio::time::timeout(state.request_timeout, running).await {
                Ok(response) => response,
                // The handler is dropped where it stands: what it committed
                // stays, and a retry with the same Idempotency-Key takes its key
                // over and finishes it without writing twice.
                Err(_) => ApiError::new(
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    "request_timeout",
                    format!(
                        "the request took longer than {} ms; it may have been partly applied: \
                         retry with the same Idempotency-Key",
                        state.request_timeout.as_millis()
                    ),
                )
                .into_response(),
            }
        } else {
            running.await
        };
        let elapsed = started.elapsed();
        tracing::info!(
            status = response.status().as_u16(),
            elapsed_us = elapsed.as_micros() as u64,
            "answered"
        );
        state.telemetry.record_request(&RequestRecord {
            method: &method,
            route: route.as_deref(),
            status: response.status(),
            elapsed,
            problem_code: response
                .extensions()
                .get::<ProblemCode>()
                .map(|code| code.0.as_str()),
            replayed: response.headers().contains_key("idempotent-replayed"),
        });
        if let Ok(value) = HeaderValue::from_str(&id.to_string()) {
            response.headers_mut().insert("x-request-id", value);
        }
        response
    }
    .instrument(span)
    .await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::auth::{Role, RouteRoles};

    /// Every route's callers are declared where the route is (its handler's
    /// `#[utoipa::path]`): admin may call everything, only the probes, /metrics,
    /// the Stripe webhook (signed instead) and the update-card page (its
    /// link's token is the credential) are public.
    #[test]
    fn every_route_declares_who_may_call_it() {
        let api = super::openapi_document();
        let roles = RouteRoles::of(api);
        let mut public = Vec::new();
        let mut declared = 0;
        for (path, item) in &api.paths.paths {
            for (method, operation) in [
                (axum::http::Method::GET, &item.get),
                (axum::http::Method::POST, &item.post),
                (axum::http::Method::DELETE, &item.delete),
            ] {
                if operation.is_none() {
                    continue;
                }
                match roles.of_route(&method, path) {
                    None => {
                        assert!(roles.is_public(&method, path), "{method} {path}");
                        public.push(format!("{method} {path}"));
                    }
                    Some(allowed) => {
                        declared += 1;
                        assert!(
                            allowed.contains(&Role::Admin),
                            "{method} {path}: {allowed:?}"
                        );
                    }
                }
            }
        }
        public.sort();
        assert_eq!(
            public,
            [
                "GET /healthz",
                "GET /metrics",
                "GET /readyz",
                "GET /update-card/{token}",
                "POST /update-card/{token}",
                "POST /update-card/{token}/confirm",
                "POST /webhooks/stripe"
            ]
        );
        assert_eq!(declared, 54, "every other operation names its roles");
        assert_eq!(
            roles.of_route(&axum::http::Method::GET, "/v1/metrics/mrr"),
            Some(&[Role::Admin, Role::Billing, Role::Support, Role::Analyst][..])
        );
        assert!(roles.is_public(&axum::http::Method::POST, "/update-card/{token}"));
        assert_eq!(
            roles.of_route(&axum::http::Method::POST, "/v1/api_keys"),
            Some(&[Role::Admin][..])
        );
        // HEAD is answered by GET, so it is checked as GET.
        assert_eq!(
            roles.of_route(&axum::http::Method::HEAD, "/v1/api_keys"),
            Some(&[Role::Admin][..])
        );
    }

    /// The rate limits stand in front of every route but the probes, so the
    /// document lists their 429 on every other operation, and on no probe.
    #[test]
    fn an_update_card_token_never_reaches_the_log() {
        assert_eq!(
            super::loggable_path("/update-card/eyJjdXN0.c2lnbmF0dXJl"),
            "/update-card/[redacted]"
        );
        assert_eq!(super::loggable_path("/v1/customers/x"), "/v1/customers/x");
        assert_eq!(super::loggable_path("/update-card/"), "/update-card/");
    }

    #[test]
    fn every_operation_but_the_probes_lists_the_rate_limits_429() {
        let api = super::openapi_document();
        let mut listed = 0;
        for (path, item) in &api.paths.paths {
            for operation in [&item.get, &item.post, &item.delete].into_iter().flatten() {
                let has_429 = operation.responses.responses.contains_key("429");
                if super::limits::EXEMPT_PATHS.contains(&path.as_str()) {
                    assert!(!has_429, "{path} is never limited");
                } else {
                    assert!(has_429, "{path} misses its 429");
                    listed += 1;
                }
            }
        }
        assert_eq!(listed, 58);
        let components = api.components.as_ref().unwrap();
        let shared = serde_json::to_value(&components.responses["RateLimited"]).unwrap();
        assert_eq!(
            shared["headers"]["Retry-After"]["schema"]["minimum"], 1,
            "{shared}"
        );
        assert_eq!(
            shared["content"]["application/problem+json"]["schema"]["$ref"],
            "#/components/schemas/Problem"
        );
        for path in super::limits::EXEMPT_PATHS {
            assert!(api.paths.paths.contains_key(*path), "{path} is a route");
        }
    }
}
