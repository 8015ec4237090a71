//! Catalog sync: a Stripe Product per Recur plan and a Stripe Price per Recur
//! price, found again by id and `lookup_key`, so that running it twice creates
//! nothing new.
//!
//! - Product: id `recur_<plan id>`, the plan's name, metadata `recur_plan_id`.
//!   A product whose name differs is renamed (names are display text).
//! - Price: `lookup_key` = Recur's price id (immutable, never reused), the
//!   amount in minor units, the currency, monthly/… recurring or one-time,
//!   metadata `recur_plan_id` and `recur_price_id`. Stripe prices are immutable
//!   like Recur's: one found with other terms is reported as a conflict and
//!   left alone (an operator decides; the sync never archives or moves money).

use std::collections::HashMap;
use std::fmt;

use recur_commands::Catalog;
use recur_commands::catalog::{Billing, Price};
use recur_commands::period::IntervalUnit;
use serde::Serialize;
use stripe_product::price::{
    CreatePrice, CreatePriceRecurring, CreatePriceRecurringInterval, ListPrice,
};
use stripe_product::product::{CreateProduct, RetrieveProduct, UpdateProduct};
use stripe_shared::{PriceType, RecurringInterval};

use crate::error::StripeError;
use crate::gateway::{StripeGateway, metadata, to_stripe_amount};

/// What the sync did to one Stripe object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "status", content = "detail", rename_all = "snake_case")]
pub enum SyncStatus {
    /// It did not exist; it was created.
    Created,
    /// It existed as it should.
    Unchanged,
    /// It existed with another name; it was renamed (products only).
    Updated,
    /// It exists with other terms (amount, currency, interval, product); left
    /// as it is: Stripe prices cannot change, and the sync decides nothing.
    Conflict(String),
}

/// One Recur price and its Stripe price.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PriceSync {
    /// Recur's price id (the Stripe price's `lookup_key`).
    pub price_id: String,
    /// Stripe's price id (`price_…`).
    pub stripe_price_id: String,
    /// What was done.
    pub status: SyncStatus,
}

/// One Recur plan: its Stripe product and prices.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PlanSync {
    /// Recur's plan id.
    pub plan_id: String,
    /// Stripe's product id (`recur_<plan id>`).
    pub product_id: String,
    /// What was done to the product.
    pub product: SyncStatus,
    /// Each of the plan's prices.
    pub prices: Vec<PriceSync>,
}

/// What a catalog sync did, plan by plan.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CatalogSyncReport {
    /// Plans in the catalog's order (by id).
    pub plans: Vec<PlanSync>,
}

impl CatalogSyncReport {
    fn statuses(&self) -> impl Iterator<Item = &SyncStatus> {
        self.plans.iter().flat_map(|plan| {
            std::iter::once(&plan.product).chain(plan.prices.iter().map(|price| &price.status))
        })
    }

    /// Products and prices created by this run.
    pub fn created(&self) -> usize {
        self.statuses()
            .filter(|s| matches!(s, SyncStatus::Created))
            .count()
    }

    /// Products and prices that differ from Recur's and were left alone.
    pub fn conflicts(&self) -> usize {
        self.statuses()
            .filter(|s| matches!(s, SyncStatus::Conflict(_)))
            .count()
    }
}

impl fmt::Display for SyncStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SyncStatus::Created => f.write_str("created"),
            SyncStatus::Unchanged => f.write_str("unchanged"),
            SyncStatus::Updated => f.write_str("updated"),
            SyncStatus::Conflict(why) => write!(f, "CONFLICT ({why})"),
        }
    }
}

impl fmt::Display for CatalogSyncReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for plan in &self.plans {
            writeln!(
                f,
                "plan {}: product {} {}",
                plan.plan_id, plan.product_id, plan.product
            )?;
            for price in &plan.prices {
                writeln!(
                    f,
                    "  price {}: {} {}",
                    price.price_id, price.stripe_price_id, price.status
                )?;
            }
        }
        write!(
            f,
            "{} created, {} conflicts",
            self.created(),
            self.conflicts()
        )
    }
}

/// Stripe's product id for a Recur plan.
pub fn product_id(plan_id: &str) -> String {
    format!("recur_{plan_id}")
}

impl StripeGateway {
    /// Creates what is missing of `catalog` in Stripe (see the module's docs).
    ///
    /// # Errors
    /// The first Stripe error; what was created before it stays, and the next
    /// run finds it (nothing is created twice).
    pub async fn sync_catalog(&self, catalog: &Catalog) -> Result<CatalogSyncReport, StripeError> {
        let mut report = CatalogSyncReport::default();
        for plan in catalog.plans() {
            let product_id = product_id(&plan.id);
            let product = self.sync_product(&product_id, &plan.id, &plan.name).await?;
            let mut prices = Vec::new();
            for price in catalog.prices().filter(|price| price.plan_id == plan.id) {
                prices.push(self.sync_price(&product_id, price).await?);
            }
            report.plans.push(PlanSync {
                plan_id: plan.id.clone(),
                product_id,
                product,
                prices,
            });
        }
        Ok(report)
    }

    async fn sync_product(
        &self,
        product_id: &str,
        plan_id: &str,
        name: &str,
    ) -> Result<SyncStatus, StripeError> {
        match self.send(&RetrieveProduct::new(product_id)).await {
            Ok(product) if product.name == name => Ok(SyncStatus::Unchanged),
            Ok(_) => {
                self.send(&UpdateProduct::new(product_id).name(name))
                    .await?;
                Ok(SyncStatus::Updated)
            }
            Err(error) if error.is_not_found() => {
                let create = CreateProduct::new(name)
                    .id(product_id)
                    .metadata(HashMap::from([(
                        metadata::PLAN.to_owned(),
                        plan_id.to_owned(),
                    )]));
                self.send_idempotent(&create, &format!("recur-product-{product_id}"))
                    .await?;
                Ok(SyncStatus::Created)
            }
            Err(error) => Err(error),
        }
    }

    async fn sync_price(&self, product_id: &str, price: &Price) -> Result<PriceSync, StripeError> {
        let (unit_amount, currency) = to_stripe_amount(&price.unit_amount)?;
        let found = self
            .send(
                &ListPrice::new()
                    .lookup_keys(vec![price.id.clone()])
                    .limit(1),
            )
            .await?;
        if let Some(existing) = found.data.into_iter().next() {
            let mut differences = Vec::new();
            if existing.product.id().as_str() != product_id {
                differences.push(format!("product {}", existing.product.id().as_str()));
            }
            if existing.unit_amount != Some(unit_amount) || existing.currency != currency {
                differences.push(format!(
                    "amount {} {}",
                    existing
                        .unit_amount
                        .map_or_else(|| "none".to_owned(), |a| a.to_string()),
                    existing.currency
                ));
            }
            let stripe_interval = existing
                .recurring
                .as_ref()
                .map(|r| (r.interval.as_str().to_owned(), r.interval_count));
            if stripe_interval != wanted_interval(price)
                || (existing.type_ == PriceType::OneTime) != stripe_interval.is_none()
            {
                differences.push(format!(
                    "interval {}",
                    stripe_interval.map_or_else(
                        || "one_time".to_owned(),
                        |(unit, count)| format!("{count} {unit}")
                    )
                ));
            }
            let status = if differences.is_empty() {
                SyncStatus::Unchanged
            } else {
                SyncStatus::Conflict(format!("Stripe has {}", differences.join(", ")))
            };
            return Ok(PriceSync {
                price_id: price.id.clone(),
                stripe_price_id: existing.id.as_str().to_owned(),
                status,
            });
        }
        let mut create = CreatePrice::new(currency)
            .product(product_id)
            .unit_amount(unit_amount)
            .lookup_key(price.id.as_str())
            .nickname(price.id.as_str())
            .metadata(HashMap::from([
                (metadata::PLAN.to_owned(), price.plan_id.clone()),
                (metadata::PRICE.to_owned(), price.id.clone()),
            ]));
        if let Billing::Recurring { interval } = price.billing {
            let unit = match interval.unit {
                IntervalUnit::Day => CreatePriceRecurringInterval::Day,
                IntervalUnit::Week => CreatePriceRecurringInterval::Week,
                IntervalUnit::Month => CreatePriceRecurringInterval::Month,
                IntervalUnit::Year => CreatePriceRecurringInterval::Year,
            };
            let mut recurring = CreatePriceRecurring::new(unit);
            recurring.interval_count = Some(u64::from(interval.count));
            create = create.recurring(recurring);
        }
        let created = self
            .send_idempotent(&create, &format!("recur-price-{}", price.id))
            .await?;
        Ok(PriceSync {
            price_id: price.id.clone(),
            stripe_price_id: created.id.as_str().to_owned(),
            status: SyncStatus::Created,
        })
    }
}

/// `(unit, count)` as Stripe names a recurring price's interval; `None` for
/// one-time.
fn wanted_interval(price: &Price) -> Option<(String, u64)> {
    match price.billing {
        Billing::OneTime => None,
        Billing::Recurring { interval } => {
            let unit = match interval.unit {
                IntervalUnit::Day => RecurringInterval::Day,
                IntervalUnit::Week => RecurringInterval::Week,
                IntervalUnit::Month => RecurringInterval::Month,
                IntervalUnit::Year => RecurringInterval::Year,
            };
            Some((unit.as_str().to_owned(), u64::from(interval.count)))
        }
    }
}
