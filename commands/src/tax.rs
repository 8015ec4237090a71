//! Tax: rates per jurisdiction, each in force from an instant until retired,
//! computed per invoice line at the rate in force on the invoice's issue date.
//!
//! Rounding rule: the tax of each line is rounded half-up (away from zero) to the
//! currency's minor unit, and the invoice's tax is the sum of its lines' rounded
//! taxes. Exclusive: `tax = round(base × rate)`, added on top. Inclusive:
//! `tax = round(base × rate / (1 + rate))`, carved out of the base, so the
//! customer pays the base and the revenue is `base − tax`.
//!
//! A customer without a tax location, or in a jurisdiction without a configured
//! rate, is charged no tax; the invoice records which of the two applied.

use recur_ledger::{Money, money::RoundingRule};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::DomainError;

/// Why a tax rate cannot be configured: a catalog refusal, `invalid_catalog`
/// like every other (see [`DomainError::TaxRate`]). Each names the rate's
/// jurisdiction; the field's own refusal, when there is one, is the source.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TaxRateError {
    /// The country or region is not a valid location.
    #[error("tax rate {jurisdiction}")]
    Location {
        /// `US-TX`, `DE`, as configured.
        jurisdiction: String,
        /// The location's refusal.
        #[source]
        source: Box<DomainError>,
    },
    /// The rate is not a fraction in [0, 1).
    #[error("tax rate {jurisdiction}: {rate} is not a fraction in [0, 1)")]
    NotAFraction {
        /// `US-TX`, `DE`, as configured.
        jurisdiction: String,
        /// The rate given.
        rate: Decimal,
    },
    /// The name is blank, too long or holds control characters.
    #[error("tax rate {jurisdiction}")]
    Name {
        /// `US-TX`, `DE`, as configured.
        jurisdiction: String,
        /// The name's refusal.
        #[source]
        source: Box<DomainError>,
    },
    /// Two rates of one jurisdiction are in force from the same instant.
    #[error("tax rate {jurisdiction} is configured twice from the same instant")]
    Duplicate {
        /// `US-TX`, `DE`.
        jurisdiction: String,
    },
}

/// Whether prices include the tax or have it added on top.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaxMode {
    /// Tax is added to the price.
    Exclusive,
    /// The price already includes the tax.
    Inclusive,
}

/// Where a customer is taxed: ISO 3166-1 alpha-2 country, optional region and postal code.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TaxLocation {
    /// ISO 3166-1 alpha-2, uppercase (`US`, `DE`).
    pub country: String,
    /// State or province code (`CA`, `NY`), uppercase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Postal code, kept for the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postal_code: Option<String>,
}

impl TaxLocation {
    /// Checks the country (two uppercase letters), region (1–3 uppercase letters or
    /// digits) and postal code (up to 12 letters, digits, spaces or dashes).
    ///
    /// # Errors
    /// [`DomainError::InvalidField`] naming the bad part.
    pub fn parse(
        country: &str,
        region: Option<&str>,
        postal_code: Option<&str>,
    ) -> Result<Self, DomainError> {
        let bad = |field: &'static str, reason: &str| DomainError::InvalidField {
            field,
            reason: reason.into(),
        };
        if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(bad("country", "two uppercase letters (ISO 3166-1 alpha-2)"));
        }
        if let Some(region) = region
            && (region.is_empty()
                || region.len() > 3
                || !region
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()))
        {
            return Err(bad("region", "1 to 3 uppercase letters or digits"));
        }
        if let Some(code) = postal_code
            && (code.is_empty()
                || code.len() > 12
                || !code
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b' ' || b == b'-'))
        {
            return Err(bad(
                "postal code",
                "up to 12 letters, digits, spaces or dashes",
            ));
        }
        Ok(Self {
            country: country.to_owned(),
            region: region.map(str::to_owned),
            postal_code: postal_code.map(str::to_owned),
        })
    }
}

/// One rate of one jurisdiction, in force from `valid_from` until retired. A
/// jurisdiction may hold several over time; an invoice takes the one in force at
/// its issue date.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaxRate {
    /// Its id (a UUIDv7 given when it is recorded; empty in the catalog file).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// ISO country code.
    pub country: String,
    /// Region, or none for the whole country.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// What the invoice calls it ("VAT", "Texas sales tax").
    pub name: String,
    /// The rate as a fraction, from a string: "0.19".
    #[serde(with = "rust_decimal::serde::str")]
    pub rate: Decimal,
    /// Inclusive or exclusive.
    pub mode: TaxMode,
    /// In force from this instant (none: from always).
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub valid_from: Option<OffsetDateTime>,
    /// Not in force from this instant on (none: not retired).
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub retired_at: Option<OffsetDateTime>,
}

impl TaxRate {
    /// Whether it is in force at `at`: from `valid_from` (inclusive) until
    /// `retired_at` (exclusive).
    pub fn in_force_at(&self, at: OffsetDateTime) -> bool {
        self.valid_from.is_none_or(|from| from <= at) && self.retired_at.is_none_or(|end| at < end)
    }

    /// Checks the jurisdiction, the fraction (0 ≤ rate < 1) and the name
    /// (1–100 characters).
    ///
    /// # Errors
    /// [`TaxRateError`] naming the rate's jurisdiction.
    pub fn validate(&self) -> Result<(), TaxRateError> {
        TaxLocation::parse(&self.country, self.region.as_deref(), None).map_err(|e| {
            TaxRateError::Location {
                jurisdiction: self.jurisdiction(),
                source: Box::new(e),
            }
        })?;
        if self.rate < Decimal::ZERO || self.rate >= Decimal::ONE {
            return Err(TaxRateError::NotAFraction {
                jurisdiction: self.jurisdiction(),
                rate: self.rate,
            });
        }
        crate::text::check_name("name", &self.name, 100).map_err(|e| TaxRateError::Name {
            jurisdiction: self.jurisdiction(),
            source: Box::new(e),
        })
    }

    /// The jurisdiction's name in accounts: `US-TX` or `DE`.
    pub fn jurisdiction(&self) -> String {
        match &self.region {
            Some(region) => format!("{}-{region}", self.country),
            None => self.country.clone(),
        }
    }
}

/// Why an invoice carries the tax it does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "basis", rename_all = "snake_case")]
pub enum TaxBasis {
    /// A configured rate applied.
    Rate {
        /// `US-TX`, `DE`.
        jurisdiction: String,
        /// The rate's name.
        name: String,
        /// The fraction.
        #[serde(with = "rust_decimal::serde::str")]
        rate: Decimal,
        /// Inclusive or exclusive.
        mode: TaxMode,
        /// The rate's id, when it has one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rate_id: Option<String>,
    },
    /// The customer has no tax location: no tax.
    NoLocation,
    /// No rate is configured for the customer's jurisdiction: no tax.
    NoRate {
        /// The customer's jurisdiction.
        jurisdiction: String,
    },
}

/// The tax of one line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LineTax {
    /// The tax, rounded to the minor unit.
    pub tax: Money,
    /// What the customer pays for the line: base (inclusive) or base + tax (exclusive).
    pub charged: Money,
    /// Revenue: base − tax (inclusive) or base (exclusive).
    pub revenue: Money,
}

impl TaxBasis {
    /// The tax of a line whose (discounted) base is `base`.
    ///
    /// # Errors
    /// Money overflow.
    pub fn line_tax(&self, base: Money) -> Result<LineTax, DomainError> {
        let TaxBasis::Rate { rate, mode, .. } = self else {
            return Ok(LineTax {
                tax: Money::zero(base.currency()),
                charged: base,
                revenue: base,
            });
        };
        Ok(match mode {
            TaxMode::Exclusive => {
                let tax = base
                    .mul_decimal(*rate)?
                    .round_to_minor(RoundingRule::HalfUp);
                LineTax {
                    tax,
                    charged: base.checked_add(tax)?,
                    revenue: base,
                }
            }
            TaxMode::Inclusive => {
                let share = rate.checked_div(Decimal::ONE + rate).ok_or(
                    recur_ledger::MoneyError::AmountOverflow {
                        operation: "division",
                    },
                )?;
                let tax = base
                    .mul_decimal(share)?
                    .round_to_minor(RoundingRule::HalfUp);
                LineTax {
                    tax,
                    charged: base,
                    revenue: base.checked_sub(tax)?,
                }
            }
        })
    }

    /// The account name suffix for tax payable (`US-TX`), if any tax applies.
    pub fn jurisdiction(&self) -> Option<&str> {
        match self {
            TaxBasis::Rate { jurisdiction, .. } => Some(jurisdiction),
            _ => None,
        }
    }
}

/// All configured rates.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaxRates {
    /// The rates; a region rate wins over its country's rate.
    #[serde(default)]
    pub rates: Vec<TaxRate>,
}

impl TaxRates {
    /// The basis for a customer at `location` on an invoice issued `at`: the
    /// rate of the customer's region in force then, else its country's; of
    /// several in force, the one valid from the latest instant.
    pub fn basis_at(&self, location: Option<&TaxLocation>, at: OffsetDateTime) -> TaxBasis {
        let Some(location) = location else {
            return TaxBasis::NoLocation;
        };
        let in_force = |region: Option<&str>| {
            self.rates
                .iter()
                .filter(|r| {
                    r.country == location.country
                        && r.region.as_deref() == region
                        && r.in_force_at(at)
                })
                .max_by_key(|r| r.valid_from)
        };
        let regional = location.region.as_deref().and_then(|r| in_force(Some(r)));
        let national = || in_force(None);
        match regional.or_else(national) {
            Some(rate) => TaxBasis::Rate {
                jurisdiction: rate.jurisdiction(),
                name: rate.name.clone(),
                rate: rate.rate,
                mode: rate.mode,
                rate_id: (!rate.id.is_empty()).then(|| rate.id.clone()),
            },
            None => TaxBasis::NoRate {
                jurisdiction: match &location.region {
                    Some(region) => format!("{}-{region}", location.country),
                    None => location.country.clone(),
                },
            },
        }
    }

    /// Checks every rate: valid jurisdiction, 0 ≤ rate < 1, a name, and no two
    /// rates of one jurisdiction in force from the same instant.
    ///
    /// # Errors
    /// [`TaxRateError`] naming the bad rate's jurisdiction.
    pub fn validate(&self) -> Result<(), TaxRateError> {
        let mut seen = std::collections::HashSet::new();
        for rate in &self.rates {
            rate.validate()?;
            if rate.retired_at.is_none() && !seen.insert((rate.jurisdiction(), rate.valid_from)) {
                return Err(TaxRateError::Duplicate {
                    jurisdiction: rate.jurisdiction(),
                });
            }
        }
        Ok(())
    }

    /// The rate with `id`.
    pub fn get(&self, id: &str) -> Option<&TaxRate> {
        self.rates.iter().find(|r| r.id == id)
    }
}
