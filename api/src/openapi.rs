//! The OpenAPI 3.1 document, generated from the handlers and types.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::dto;
use super::problem::Problem;
use super::routes::subscriptions;

/// The API's document: its description, shared schemas and security scheme;
/// the paths come from the handlers themselves (`http::api_routes`).
#[derive(OpenApi)]
#[openapi(
    info(title = "Recur", description = "Recur's command API: an event-sourced billing ledger. Errors are RFC 9457 problem details with a stable `code`."),
    components(schemas(Problem, dto::MoneyDto, subscriptions::Empty)),
    modifiers(&BearerKeys),
    tags(
        (name = "customers"), (name = "subscriptions"), (name = "invoices"), (name = "coupons"),
        (name = "catalog"), (name = "metrics"), (name = "events"), (name = "system"),
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
