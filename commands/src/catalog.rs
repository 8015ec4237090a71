//! The catalog: plans, their immutable, versioned prices, and tax rates — an
//! aggregate in the ledger's `catalog` stream, changed through the API (admin);
//! the TOML file only seeds an empty ledger.

use std::collections::BTreeMap;

use recur_ledger::{Currency, Money};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::aggregate::{Aggregate, DomainEvent};
use crate::error::{BillingError, DomainError};
use crate::period::{Interval, IntervalUnit};
use crate::tagged::domain_events;
use crate::tax::{TaxRate, TaxRates};

/// The stream the catalog lives in.
pub const CATALOG_STREAM: &str = "catalog";
/// The most plans, prices or tax rates the catalog holds (each).
pub const CATALOG_ITEMS_MAX: usize = 1_000;

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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Clone, Debug, Default, PartialEq, Eq)]
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
        let file: CatalogFile = toml::from_str(text).map_err(BillingError::CatalogFile)?;
        file.tax.validate().map_err(DomainError::from)?;
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
        self.check_price(&price)
            .map_err(|e| BillingError::Catalog(e.to_string()))?;
        let mut next = self.clone();
        next.prices.insert(price.id.clone(), price);
        Ok(next)
    }

    /// Checks a new price: a well-formed new id, a known plan, a positive amount
    /// in whole minor units, an interval within limits.
    fn check_price(&self, price: &Price) -> Result<(), DomainError> {
        let bad = |message: String| DomainError::InvalidCatalog(message);
        check_id("price id", &price.id)?;
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
                "price {}: interval_count must be 1 to {} (three years)",
                price.id,
                Interval::count_max(interval.unit)
            )));
        }
        if self.prices.len() >= CATALOG_ITEMS_MAX {
            return Err(bad(format!("at most {CATALOG_ITEMS_MAX} prices")));
        }
        Ok(())
    }

    /// Checks a new plan and its first price (which becomes its current price).
    fn check_plan(&self, plan: &Plan, price: &Price) -> Result<(), DomainError> {
        let bad = |message: String| DomainError::InvalidCatalog(message);
        check_id("plan id", &plan.id)?;
        if self.plans.contains_key(&plan.id) {
            return Err(DomainError::AlreadyExists {
                kind: "plan",
                id: plan.id.clone(),
            });
        }
        check_name(&plan.name)?;
        check_metadata("features", &plan.features)?;
        check_metadata("limits", &plan.limits)?;
        if plan.trial_days > TRIAL_DAYS_MAX {
            return Err(bad(format!(
                "plan {}: trial_days above {TRIAL_DAYS_MAX}",
                plan.id
            )));
        }
        if price.plan_id != plan.id || plan.current_price != price.id {
            return Err(bad(format!(
                "plan {}: its first price must be its own and its current price",
                plan.id
            )));
        }
        if self.plans.len() >= CATALOG_ITEMS_MAX {
            return Err(bad(format!("at most {CATALOG_ITEMS_MAX} plans")));
        }
        let mut with_plan = self.clone();
        with_plan.plans.insert(plan.id.clone(), plan.clone());
        with_plan.check_price(price)
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

    /// The tax rates, retired ones included.
    pub fn tax(&self) -> &TaxRates {
        &self.tax
    }

    /// Whether the catalog has been seeded (it has a plan).
    pub fn is_seeded(&self) -> bool {
        !self.plans.is_empty()
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

/// Ids of plans and prices (`field` names which): 1 to 100 letters, digits, `_` or `-`.
fn check_id(field: &'static str, id: &str) -> Result<(), DomainError> {
    if id.is_empty()
        || id.len() > 100
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(DomainError::InvalidField {
            field,
            reason: "1 to 100 letters, digits, '_' or '-'".into(),
        });
    }
    Ok(())
}

/// A plan's display name (see [`crate::text::check_name`]).
fn check_name(name: &str) -> Result<(), DomainError> {
    crate::text::check_name("name", name, crate::text::NAME_CHARS_MAX)
}

/// The most bytes a plan's features or limits take, as JSON.
pub const PLAN_METADATA_BYTES_MAX: usize = 4_096;

/// A plan's free-form features or limits: at most [`PLAN_METADATA_BYTES_MAX`]
/// bytes, and every text in them free text (see [`crate::text::check_text`]).
fn check_metadata(field: &'static str, value: &serde_json::Value) -> Result<(), DomainError> {
    if value.to_string().len() > PLAN_METADATA_BYTES_MAX {
        return Err(DomainError::InvalidField {
            field,
            reason: format!("at most {PLAN_METADATA_BYTES_MAX} bytes of JSON"),
        });
    }
    let mut texts = vec![value];
    while let Some(value) = texts.pop() {
        match value {
            serde_json::Value::String(text) => crate::text::check_text(field, text, 500, false)?,
            serde_json::Value::Array(items) => texts.extend(items),
            serde_json::Value::Object(map) => {
                for (key, item) in map {
                    crate::text::check_text(field, key, 100, false)?;
                    texts.push(item);
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// What can be asked of the catalog (an admin's commands, and the seed).
#[derive(Clone, Debug)]
pub enum CatalogCommand {
    /// Record the file's plans, prices and tax rates in a catalog that has no
    /// plan yet (prices already recorded are kept; a recorded price whose terms
    /// differ from the file's is refused). Nothing once seeded.
    Seed {
        /// The file's catalog.
        file: Box<Catalog>,
        /// Ids for the file's tax rates, in order.
        rate_ids: Vec<String>,
    },
    /// A new plan with its first price, which becomes its current price.
    CreatePlan {
        /// The plan.
        plan: Plan,
        /// Its first price.
        price: Price,
    },
    /// Change a plan's name, trial or current price (a price of its own).
    UpdatePlan {
        /// The plan.
        plan_id: String,
        /// A new name.
        name: Option<String>,
        /// A new trial length for new subscriptions.
        trial_days: Option<u32>,
        /// The price new subscriptions get from now on.
        current_price: Option<String>,
    },
    /// A new immutable price of a plan.
    CreatePrice {
        /// The price.
        price: Price,
    },
    /// A new tax rate, in force from its `valid_from`.
    CreateTaxRate {
        /// The rate (with its id).
        rate: TaxRate,
    },
    /// A tax rate no longer in force from `at`.
    RetireTaxRate {
        /// Its id.
        id: String,
        /// From when.
        at: OffsetDateTime,
    },
}

domain_events! {
    /// What happened to the catalog.
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(tag = "type")]
    pub enum CatalogEvent {
        /// A plan was added.
        PlanCreated {
            /// The plan.
            plan: Plan,
        },
        /// A plan's name, trial or current price changed.
        PlanUpdated {
            /// The plan.
            plan_id: String,
            /// Its new name.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            name: Option<String>,
            /// Its new trial length.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            trial_days: Option<u32>,
            /// Its new current price.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            current_price: Option<String>,
        },
        /// A price was added.
        PriceCreated {
            /// The price, with its terms.
            price: Price,
        },
        /// A tax rate was added.
        TaxRateCreated {
            /// The rate.
            rate: TaxRate,
        },
        /// A tax rate was retired.
        TaxRateRetired {
            /// Its id.
            id: String,
            /// No longer in force from this instant.
            #[serde(with = "time::serde::rfc3339")]
            at: OffsetDateTime,
        },
    }
}

impl DomainEvent for CatalogEvent {
    fn event_type(&self) -> &'static str {
        match self {
            CatalogEvent::PlanCreated { .. } => "PlanCreated",
            CatalogEvent::PlanUpdated { .. } => "PlanUpdated",
            CatalogEvent::PriceCreated { .. } => "PriceCreated",
            CatalogEvent::TaxRateCreated { .. } => "TaxRateCreated",
            CatalogEvent::TaxRateRetired { .. } => "TaxRateRetired",
        }
    }
}

impl Aggregate for Catalog {
    type Event = CatalogEvent;
    type Command = CatalogCommand;

    fn decide(&self, command: CatalogCommand) -> Result<Vec<CatalogEvent>, DomainError> {
        let bad = |message: String| DomainError::InvalidCatalog(message);
        match command {
            CatalogCommand::Seed { file, rate_ids } => {
                if self.is_seeded() {
                    return Ok(Vec::new());
                }
                let mut events: Vec<CatalogEvent> = file
                    .plans
                    .values()
                    .map(|plan| CatalogEvent::PlanCreated { plan: plan.clone() })
                    .collect();
                for price in file.prices.values() {
                    match self.prices.get(&price.id) {
                        Some(recorded) if recorded == price => {}
                        Some(recorded) => {
                            return Err(bad(format!(
                                "price {} was recorded as {} {} and is {} {} in the file: prices are immutable; add a new price id instead",
                                price.id,
                                recorded.unit_amount.amount(),
                                recorded.unit_amount.currency().code(),
                                price.unit_amount.amount(),
                                price.unit_amount.currency().code()
                            )));
                        }
                        None => events.push(CatalogEvent::PriceCreated {
                            price: price.clone(),
                        }),
                    }
                }
                if self.tax.rates.is_empty() {
                    if rate_ids.len() != file.tax.rates.len() {
                        return Err(bad("one id per tax rate of the file".into()));
                    }
                    for (rate, id) in file.tax.rates.iter().zip(rate_ids) {
                        events.push(CatalogEvent::TaxRateCreated {
                            rate: TaxRate { id, ..rate.clone() },
                        });
                    }
                }
                Ok(events)
            }
            CatalogCommand::CreatePlan { plan, price } => {
                self.check_plan(&plan, &price)?;
                Ok(vec![
                    CatalogEvent::PlanCreated { plan },
                    CatalogEvent::PriceCreated { price },
                ])
            }
            CatalogCommand::UpdatePlan {
                plan_id,
                name,
                trial_days,
                current_price,
            } => {
                let plan = self.plan(&plan_id)?;
                if let Some(name) = &name {
                    check_name(name)?;
                }
                if trial_days.is_some_and(|days| days > TRIAL_DAYS_MAX) {
                    return Err(bad(format!(
                        "plan {plan_id}: trial_days above {TRIAL_DAYS_MAX}"
                    )));
                }
                if let Some(price_id) = &current_price
                    && self.price(price_id)?.plan_id != plan_id
                {
                    return Err(bad(format!(
                        "price {price_id} is not a price of plan {plan_id}"
                    )));
                }
                let unchanged = name.as_ref().is_none_or(|n| *n == plan.name)
                    && trial_days.is_none_or(|d| d == plan.trial_days)
                    && current_price
                        .as_ref()
                        .is_none_or(|p| *p == plan.current_price);
                if unchanged {
                    return Ok(Vec::new());
                }
                Ok(vec![CatalogEvent::PlanUpdated {
                    plan_id,
                    name,
                    trial_days,
                    current_price,
                }])
            }
            CatalogCommand::CreatePrice { price } => {
                if self.prices.get(&price.id) == Some(&price) {
                    // The same price again (a retry): nothing to do.
                    return Ok(Vec::new());
                }
                self.check_price(&price)?;
                Ok(vec![CatalogEvent::PriceCreated { price }])
            }
            CatalogCommand::CreateTaxRate { rate } => {
                rate.validate()?;
                if self.tax.get(&rate.id).is_some() || rate.id.is_empty() {
                    return Err(DomainError::AlreadyExists {
                        kind: "tax rate",
                        id: rate.id,
                    });
                }
                if rate.retired_at.is_some() {
                    return Err(bad("a new tax rate cannot be retired already".into()));
                }
                let clash = self.tax.rates.iter().any(|r| {
                    r.retired_at.is_none()
                        && r.jurisdiction() == rate.jurisdiction()
                        && r.valid_from == rate.valid_from
                });
                if clash {
                    return Err(bad(format!(
                        "jurisdiction {} already has a rate in force from that instant: retire it first",
                        rate.jurisdiction()
                    )));
                }
                if self.tax.rates.len() >= CATALOG_ITEMS_MAX {
                    return Err(bad(format!("at most {CATALOG_ITEMS_MAX} tax rates")));
                }
                Ok(vec![CatalogEvent::TaxRateCreated { rate }])
            }
            CatalogCommand::RetireTaxRate { id, at } => {
                let Some(rate) = self.tax.get(&id) else {
                    return Err(DomainError::NotFound {
                        kind: "tax_rate",
                        id,
                    });
                };
                if rate.retired_at.is_some() {
                    return Ok(Vec::new());
                }
                Ok(vec![CatalogEvent::TaxRateRetired { id, at }])
            }
        }
    }

    fn evolve(&mut self, event: &CatalogEvent) {
        match event {
            CatalogEvent::PlanCreated { plan } => {
                self.plans.insert(plan.id.clone(), plan.clone());
            }
            CatalogEvent::PlanUpdated {
                plan_id,
                name,
                trial_days,
                current_price,
            } => {
                if let Some(plan) = self.plans.get_mut(plan_id) {
                    if let Some(name) = name {
                        plan.name.clone_from(name);
                    }
                    if let Some(days) = trial_days {
                        plan.trial_days = *days;
                    }
                    if let Some(price) = current_price {
                        plan.current_price.clone_from(price);
                    }
                }
            }
            CatalogEvent::PriceCreated { price } => {
                self.prices.insert(price.id.clone(), price.clone());
            }
            CatalogEvent::TaxRateCreated { rate } => self.tax.rates.push(rate.clone()),
            CatalogEvent::TaxRateRetired { id, at } => {
                if let Some(rate) = self.tax.rates.iter_mut().find(|r| r.id == *id) {
                    rate.retired_at = Some(*at);
                }
            }
        }
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
        // Not TOML at all: the parser's error, saying where, is the source.
        let error = Catalog::from_toml("[plans").expect_err("not TOML");
        assert!(matches!(error, BillingError::CatalogFile(_)), "{error:?}");
        assert_eq!(error.code(), "invalid_catalog");
        let source = std::error::Error::source(&error).expect("the parser's error");
        assert!(source.to_string().contains("line 1"), "{source}");
    }
}
