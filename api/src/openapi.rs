//! The OpenAPI 3.1 document, generated from the handlers and types.

use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr};
use utoipa::{Modify, OpenApi};

use super::dto;
use super::limits::EXEMPT_PATHS;
use super::problem::Problem;
use super::routes::{dunning, subscriptions};

/// The API's document: its description, shared schemas and security scheme;
/// the paths come from the handlers themselves (`http::api_routes`).
#[derive(OpenApi)]
#[openapi(
    info(title = "Recur", description = "Recur's command API: an event-sourced billing ledger. Errors are RFC 9457 problem details with a stable `code`."),
    components(schemas(Problem, dto::MoneyDto, dto::ErasureReasonDto, subscriptions::Empty, dunning::StatusParam)),
    modifiers(&BearerKeys),
    tags(
        (name = "customers"), (name = "subscriptions"), (name = "invoices"), (name = "coupons"),
        (name = "catalog"), (name = "metrics"), (name = "events"), (name = "reconciliations"),
        (name = "dunning"), (name = "system"),
        (name = "update_card", description = "The hosted update-card page (HTML): public, its link's signed token is the credential"),
    )
)]
pub struct ApiDoc;

/// Declares the `api_key` bearer scheme.
struct BearerKeys;

impl Modify for BearerKeys {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "api_key",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .bearer_format("rk_<id>_<secret>")
                        .description(Some(
                            "An API key. An operation's scopes are the roles that may call it.",
                        ))
                        .build(),
                ),
            );
        }
    }
}

/// The name of the shared 429 answer in `components.responses`.
pub const RATE_LIMITED_RESPONSE: &str = "RateLimited";

/// Declares the rate limits' 429 answer once, as a shared response, and lists it
/// on every operation of `api` but the probes ([`EXEMPT_PATHS`]), which are never
/// limited. Applied to the assembled document, since the limits sit in front of
/// every route rather than in any handler.
pub fn declare_rate_limits(api: &mut utoipa::openapi::OpenApi) {
    let retry_after = HeaderBuilder::new()
        .schema(Some(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(1))
                .build(),
        ))
        .description(Some("Whole seconds to wait before retrying (at least 1)."))
        .build();
    let response = ResponseBuilder::new()
        .description(
            "Rate limited (`rate_limited`): too many requests from this client address or \
             for this API key; retry after `Retry-After` seconds",
        )
        .header("Retry-After", retry_after)
        .content(
            "application/problem+json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build(),
        )
        .build();
    api.components
        .get_or_insert_with(Default::default)
        .responses
        .insert(RATE_LIMITED_RESPONSE.to_owned(), RefOr::T(response));
    for (path, item) in &mut api.paths.paths {
        if EXEMPT_PATHS.contains(&path.as_str()) {
            continue;
        }
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.options,
            &mut item.head,
            &mut item.patch,
            &mut item.trace,
        ];
        for operation in operations.into_iter().flatten() {
            operation.responses.responses.insert(
                "429".to_owned(),
                RefOr::Ref(Ref::from_response_name(RATE_LIMITED_RESPONSE)),
            );
        }
    }
}
