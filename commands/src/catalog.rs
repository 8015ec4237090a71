//! The catalog: plans and their immutable, versioned prices, plus tax rates, from TOML.

use std::collections::BTreeMap;

use recur_ledger::{Currency, Money};
use serde::{Deserialize, Serialize};

use crate::error::{BillingError, DomainError};
use crate::period::{Interval, IntervalUnit};
use crate::tax::TaxRates;

/// The catalog that ships with Recur: the coaching business's four plans.
pub const DEFAULT_CATALOG_TOML: &str = include_str!("../catalog/default.toml");

/// The longest trial accepted, in days.
pub const TRIAL_DAYS_MAX: u32 = 730;

/// Whether a price recurs or is paid once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Billing {
    /// Billed every interval, in advance.
    Recurring {
        /// The interval.
        interval: Interval,
    },
    /// Billed once (the course).
    OneTime,
}

/// A price: an immutable amount, currency and billing interval for a plan.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Price {
    /// The id, e.g. `community_access_usd_month_v1`; never reused for other terms.
    pub id: String,
    /// The plan it belongs to.
    pub plan_id: String,
    /// The amount per unit and period.
    pub unit_amount: Money,
    /// Recurring or one-time.
    pub billing: Billing,
}

impl Price {
    /// The interval, or an error naming the price when it is one-time.
    ///
    /// # Errors
    /// [`DomainError::WrongPriceKind`] for a one-time price.
    pub fn interval(&self) -> Result<Interval, DomainError> {
        match self.billing {
            Billing::Recurring { interval } => Ok(interval),
            Billing::OneTime => Err(DomainError::WrongPriceKind {
                price: self.id.clone(),
                actual: "one-time",
                expected: "a recurring price",
            }),
        }
    }
}

/// A plan: what is sold, its trial, and its features and limits (metadata).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Plan {
    /// The id, e.g. `elite_coaching`.
    pub id: String,
    /// The display name.
    pub name: String,
    /// Trial length for new subscriptions; 0 for none.
    pub trial_days: u32,
    /// The price new subscriptions get.
    pub current_price: String,
    /// Features, as written in the catalog.
    pub features: serde_json::Value,
    /// Limits, as written in the catalog.
    pub limits: serde_json::Value,
}

/// Plans, prices and tax rates.
#[derive(Clone, Debug)]
pub struct Catalog {
    plans: BTreeMap<String, Plan>,
    prices: BTreeMap<String, Price>,
    tax: TaxRates,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    plans: BTreeMap<String, PlanFile>,
    prices: Vec<PriceFile>,
    #[serde(default)]
    tax: TaxRates,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanFile {
    name: String,
    #[serde(default)]
    trial_days: u32,
    current_price: String,
    #[serde(default)]
    features: toml::Table,
    #[serde(default)]
    limits: toml::Table,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceFile {
    id: String,
    plan: String,
    amount: String,
    currency: String,
    interval: String,
    interval_count: Option<u32>,
}

impl Catalog {
    /// The default catalog.
    ///
    /// # Errors
    /// Never for the shipped file (a test checks it).
    pub fn default_catalog() -> Result<Self, BillingError> {
        Self::from_toml(DEFAULT_CATALOG_TOML)
    }

    /// Parses and checks a catalog: every price names a known plan, amounts are
    /// positive and in minor units, ids are unique, every plan's current price is
    /// its own, intervals and trials are within limits, tax rates are sane.
    ///
    /// # Errors
    /// [`BillingError::Catalog`] naming the first problem.
    pub fn from_toml(text: &str) -> Result<Self, BillingError> {
        let bad = |message: String| BillingError::Catalog(message);
        let file: CatalogFile = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        file.tax.validate().map_err(bad)?;
        let mut prices = BTreeMap::new();
        for p in file.prices {
            if !file.plans.contains_key(&p.plan) {
                return Err(bad(format!("price {} names unknown plan {}", p.id, p.plan)));
            }
            let unit_amount = Money::parse(&p.amount, &p.currency)
                .map_err(|e| bad(format!("price {}: {e}", p.id)))?;
            if !unit_amount.is_positive() || unit_amount.to_minor().is_err() {
                return Err(bad(format!(
                    "price {}: amount must be positive and in whole minor units",
                    p.id
                )));
            }
            let unit = match p.interval.as_str() {
                "one_time" => None,
                "day" => Some(IntervalUnit::Day),
                "week" => Some(IntervalUnit::Week),
                "month" => Some(IntervalUnit::Month),
                "year" => Some(IntervalUnit::Year),
                other => {
                    return Err(bad(format!(
                        "price {}: interval {other:?} is not day, week, month, year or one_time",
                        p.id
                    )));
                }
            };
            let billing = match unit {
                None => Billing::OneTime,
                Some(unit) => {
                    let count = p.interval_count.unwrap_or(1);
                    if count == 0 || count > Interval::count_max(unit) {
                        return Err(bad(format!(
                            "price {}: interval_count must be 1 to {} (three years)",
                            p.id,
                            Interval::count_max(unit)
                        )));
                    }
                    Billing::Recurring {
                        interval: Interval { unit, count },
                    }
                }
            };
            let price = Price {
                id: p.id.clone(),
                plan_id: p.plan,
                unit_amount,
                billing,
            };
            if prices.insert(p.id.clone(), price).is_some() {
                return Err(bad(format!("price {} is defined twice", p.id)));
            }
        }
        let mut plans = BTreeMap::new();
        for (id, plan) in file.plans {
            match prices.get(&plan.current_price) {
                Some(price) if price.plan_id == id => {}
                _ => {
                    return Err(bad(format!(
                        "plan {id}: current_price {} is not one of its prices",
                        plan.current_price
                    )));
                }
            }
            if plan.trial_days > TRIAL_DAYS_MAX {
                return Err(bad(format!("plan {id}: trial_days above {TRIAL_DAYS_MAX}")));
            }
            let to_json = |table: toml::Table| {
                serde_json::to_value(table).map_err(|e| bad(format!("plan {id}: {e}")))
            };
            plans.insert(
                id.clone(),
                Plan {
                    id: id.clone(),
                    name: plan.name,
                    trial_days: plan.trial_days,
                    current_price: plan.current_price,
                    features: to_json(plan.features)?,
                    limits: to_json(plan.limits)?,
                },
            );
        }
        Ok(Self {
            plans,
            prices,
            tax: file.tax,
        })
    }

    /// This catalog plus `price`, checked like the file's prices (known plan,
    /// positive amount in minor units, interval within limits, a new id).
    ///
    /// # Errors
    /// [`BillingError::Catalog`] naming the problem.
    pub fn with_price(&self, price: Price) -> Result<Self, BillingError> {
        let bad = |message: String| BillingError::Catalog(message);
        if price.id.is_empty()
            || price.id.len() > 100
            || !price
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(bad(format!(
                "price id {:?}: 1 to 100 letters, digits, '_' or '-'",
                price.id
            )));
        }
        if self.prices.contains_key(&price.id) {
            return Err(bad(format!(
                "price {} exists; prices are immutable, use a new id",
                price.id
            )));
        }
        if !self.plans.contains_key(&price.plan_id) {
            return Err(bad(format!(
                "price {} names unknown plan {}",
                price.id, price.plan_id
            )));
        }
        if !price.unit_amount.is_positive() || price.unit_amount.to_minor().is_err() {
            return Err(bad(format!(
                "price {}: amount must be positive and in whole minor units",
                price.id
            )));
        }
        if let Billing::Recurring { interval } = price.billing
            && (interval.count == 0 || interval.count > Interval::count_max(interval.unit))
        {
            return Err(bad(format!(
                "price {}: interval_count out of range",
                price.id
            )));
        }
        let mut next = self.clone();
        next.prices.insert(price.id.clone(), price);
        Ok(next)
    }

    /// A plan by id.
    ///
    /// # Errors
    /// [`DomainError::UnknownPlan`].
    pub fn plan(&self, id: &str) -> Result<&Plan, DomainError> {
        self.plans
            .get(id)
            .ok_or_else(|| DomainError::UnknownPlan(id.to_owned()))
    }

    /// A price by id.
    ///
    /// # Errors
    /// [`DomainError::UnknownPrice`].
    pub fn price(&self, id: &str) -> Result<&Price, DomainError> {
        self.prices
            .get(id)
            .ok_or_else(|| DomainError::UnknownPrice(id.to_owned()))
    }

    /// The price new subscriptions to `plan_id` get.
    ///
    /// # Errors
    /// [`DomainError::UnknownPlan`].
    pub fn current_price(&self, plan_id: &str) -> Result<&Price, DomainError> {
        let plan = self.plan(plan_id)?;
        self.price(&plan.current_price)
    }

    /// Every plan, by id.
    pub fn plans(&self) -> impl Iterator<Item = &Plan> {
        self.plans.values()
    }

    /// Every price, by id.
    pub fn prices(&self) -> impl Iterator<Item = &Price> {
        self.prices.values()
    }

    /// The tax rates.
    pub fn tax(&self) -> &TaxRates {
        &self.tax
    }

    /// The currencies prices are in.
    pub fn currencies(&self) -> Vec<Currency> {
        let mut currencies: Vec<Currency> = self
            .prices
            .values()
            .map(|p| p.unit_amount.currency())
            .collect();
        currencies.sort_by_key(|c| c.code());
        currencies.dedup();
        currencies
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_catalog_holds_the_four_plans_of_the_design() -> Result<(), BillingError> {
        let catalog = Catalog::default_catalog()?;
        let expect = [
            ("elite_coaching", "5000.00", 7, true),
            ("group_coaching", "1500.00", 14, true),
            ("community_access", "97.00", 30, true),
            ("self_paced_course", "997.00", 0, false),
        ];
        for (plan, amount, trial, recurring) in expect {
            let price = catalog.current_price(plan)?;
            assert_eq!(
                price.unit_amount,
                Money::parse(amount, "USD").map_err(DomainError::from)?
            );
            assert_eq!(catalog.plan(plan)?.trial_days, trial);
            assert_eq!(
                matches!(price.billing, Billing::Recurring { .. }),
                recurring
            );
        }
        assert_eq!(
            catalog.plan("elite_coaching")?.limits["max_participants"],
            1
        );
        Ok(())
    }

    #[test]
    fn a_catalog_with_a_bad_price_is_refused_with_its_name() {
        let text = DEFAULT_CATALOG_TOML.replace("amount = \"97.00\"", "amount = \"97.001\"");
        let error = Catalog::from_toml(&text).err().map(|e| e.to_string());
        assert!(error.is_some_and(|e| e.contains("community_access_usd_month_v1")));
        let text = DEFAULT_CATALOG_TOML.replace("interval = \"month\"", "interval = \"fortnight\"");
        assert!(Catalog::from_toml(&text).is_err());
    }
}
