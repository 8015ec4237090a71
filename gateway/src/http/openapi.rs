//! The OpenAPI 3.1 document, generated from the handlers and types.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::dto;
use super::problem::Problem;
use super::routes::{catalog, coupons, customers, invoices, metrics, subscriptions, system};

/// The API's document.
#[derive(OpenApi)]
#[openapi(
    info(title = "Recur", description = "Recur's command API: an event-sourced billing ledger. Errors are RFC 9457 problem details with a stable `code`."),
    paths(
        customers::create, customers::get, customers::update, customers::attach_payment_method,
        subscriptions::create, subscriptions::get, subscriptions::list, subscriptions::change,
        subscriptions::preview_change, subscriptions::cancel, subscriptions::pause, subscriptions::resume,
        subscriptions::undo_cancellation, subscriptions::apply_discount, subscriptions::remove_discount,
        invoices::get, invoices::list, invoices::pay, invoices::void, invoices::refund, invoices::purchase,
        coupons::create, coupons::get,
        catalog::plans, catalog::prices, catalog::create_price, catalog::create_plan, catalog::update_plan,
        catalog::tax_rates, catalog::create_tax_rate, catalog::retire_tax_rate,
        metrics::mrr_series, metrics::movements, metrics::churn, metrics::cohorts, metrics::mrr_at, metrics::trial_balance, metrics::customer_view, metrics::revenue_recognition, metrics::ar_aging,
        system::healthz, system::readyz, system::prometheus, system::create_key, system::list_keys, system::revoke_key, system::rotate_key, system::advance,
    ),
    components(schemas(Problem, dto::MoneyDto, subscriptions::Empty)),
    modifiers(&BearerKeys),
    tags(
        (name = "customers"), (name = "subscriptions"), (name = "invoices"), (name = "coupons"),
        (name = "catalog"), (name = "metrics"), (name = "system"),
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
                        .build(),
                ),
            );
        }
    }
}
