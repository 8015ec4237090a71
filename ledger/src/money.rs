//! Money: an exact decimal amount tagged with its ISO 4217 currency.
//!
//! Guarantees, and the reasons for them:
//!
//! - **Money is never a float.** Amounts are [`rust_decimal::Decimal`] (96-bit
//!   integer mantissa, scale 0..=28). No `f32`/`f64` is accepted, produced or
//!   used anywhere in this module.
//! - **Amounts are serialised as strings**, keeping their scale:
//!   `{"amount":"12.30","currency":"USD"}`. A JSON *number* for `amount` is
//!   rejected, because most JSON producers and consumers read numbers as binary
//!   floats and silently lose cents.
//! - **Arithmetic across currencies is an error.** There are no `Add`/`Sub`
//!   impls: only [`Money::checked_add`], [`Money::checked_sub`] and
//!   [`Money::sum`], which return [`MoneyError::CurrencyMismatch`] instead of
//!   panicking, and [`MoneyError::AmountOverflow`] instead of wrapping or
//!   silently rounding.
//! - **Rounding is explicit.** Amounts may carry any scale (tax and proration
//!   intermediates need more decimals than the currency has); they are brought
//!   to the currency's minor unit only by [`Money::round_to_minor`] with a
//!   [`RoundingRule`]:
//!   - [`RoundingRule::HalfUp`] (the default): a tie rounds away from zero,
//!     `2.345 → 2.35`, `-2.345 → -2.35`. Use it for invoice lines, tax and
//!     anything a customer sees; it is what people expect from a bill.
//!   - [`RoundingRule::HalfEven`] (banker's rounding): a tie rounds to the even
//!     digit, `2.345 → 2.34`, `2.355 → 2.36`. Use it when many rounded values
//!     are aggregated (allocation, FX, reporting), where half-up would bias the
//!     total upwards.
//!
//! Currencies are the active codes of ISO 4217 List One (as published
//! 2026-01-01) that have a minor unit. Units whose minor unit is "N.A."
//! (precious metals `XAU`…, bond-market units `XBA`…, `XDR`, `XSU`, `XUA`,
//! `XTS`, `XXX`) are not billing currencies and are rejected.
//!
//! ```
//! use recur_ledger::money::{Money, MoneyError, RoundingRule};
//! use rust_decimal::Decimal;
//!
//! # fn main() -> Result<(), MoneyError> {
//! let price = Money::parse("19.99", "USD")?;
//! let tax = price.mul_decimal(Decimal::new(825, 4))?; // 8.25 %
//! assert_eq!(tax.to_string(), "1.649175 USD");
//! let total = price.checked_add(tax.round_to_minor(RoundingRule::HalfUp))?;
//! assert_eq!(total.to_minor()?, 2164);
//!
//! let yen = Money::parse("500", "JPY")?;
//! assert_eq!(price.checked_add(yen).unwrap_err().code(), "currency_mismatch");
//! # Ok(())
//! # }
//! ```

use std::borrow::Borrow;
use std::fmt;
use std::ops::Neg;
use std::str::FromStr;

use rust_decimal::{Decimal, RoundingStrategy};
use serde::de::{self, Deserializer, Visitor};
use serde::ser::{SerializeStruct, Serializer};
use serde::{Deserialize, Serialize};

/// Longest amount text [`Money::parse`] accepts, in bytes; the longest exact
/// `Decimal` (sign, 29 digits, point, leading zero) is well under this.
pub const AMOUNT_TEXT_LEN_MAX: usize = 64;

/// Most characters of rejected input echoed back inside a [`MoneyError`].
const ERROR_ECHO_LEN_MAX: usize = 32;

/// Largest minor unit in ISO 4217 (CLF, UYW); `Decimal` allows up to 28.
const MINOR_UNIT_MAX: u32 = 4;

/// Everything that can go wrong when building or combining [`Money`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    /// The code is not an active ISO 4217 currency with a minor unit (codes
    /// are exact and uppercase: `"usd"` is unknown). Holds the input, cut to
    /// 32 characters.
    #[error("unknown currency code \"{0}\": expected an active ISO 4217 code such as \"USD\"")]
    UnknownCurrency(String),

    /// The amount text is not a plain decimal (`-?digits(.digits)?`) or does
    /// not fit a `Decimal`.
    #[error("invalid amount \"{input}\": {reason}")]
    InvalidAmount {
        /// The rejected text, cut to 32 characters.
        input: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// Two amounts in different currencies were combined.
    #[error("currency mismatch: cannot combine {left} with {right}")]
    CurrencyMismatch {
        /// Currency of the left-hand operand (or of the expected total).
        left: Currency,
        /// Currency of the right-hand operand.
        right: Currency,
    },

    /// A result does not fit: beyond `Decimal`'s range or exact precision, or
    /// beyond `i64` when converting to minor units.
    #[error("amount out of range in {operation}")]
    AmountOverflow {
        /// The operation that overflowed, e.g. `"addition"`.
        operation: &'static str,
    },

    /// The amount has more decimal places than the currency's minor unit, so
    /// it is not a whole number of minor units; round it first.
    #[error(
        "{amount} {currency} is not a whole number of minor units: {currency} has {} decimal places; round it first",
        currency.minor_unit()
    )]
    NotInMinorUnits {
        /// The amount that could not be converted.
        amount: Decimal,
        /// Its currency.
        currency: Currency,
    },
}

impl MoneyError {
    /// Stable snake_case code for clients and metrics; never changes once
    /// published.
    pub fn code(&self) -> &'static str {
        match self {
            MoneyError::UnknownCurrency(_) => "unknown_currency",
            MoneyError::InvalidAmount { .. } => "invalid_amount",
            MoneyError::CurrencyMismatch { .. } => "currency_mismatch",
            MoneyError::AmountOverflow { .. } => "amount_overflow",
            MoneyError::NotInMinorUnits { .. } => "not_in_minor_units",
        }
    }
}

/// Copies at most [`ERROR_ECHO_LEN_MAX`] characters of rejected input.
fn echo(input: &str) -> String {
    let mut chars = input.chars();
    let mut echoed: String = chars.by_ref().take(ERROR_ECHO_LEN_MAX).collect();
    if chars.next().is_some() {
        echoed.push('…');
    }
    echoed
}

// ---------------------------------------------------------------------------
// Currency
// ---------------------------------------------------------------------------

/// One row of the ISO 4217 table.
#[derive(Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct CurrencyEntry {
    /// Alphabetic code, three uppercase ASCII letters.
    code: &'static str,
    /// Number of decimal places of the minor unit (the exponent).
    minor_unit: u32,
}

/// Shorthand for a table row.
const fn entry(code: &'static str, minor_unit: u32) -> CurrencyEntry {
    CurrencyEntry { code, minor_unit }
}

/// Active ISO 4217 List One codes with a minor unit, as published 2026-01-01,
/// sorted by code (checked at compile time below).
///
/// Never delete a row while stored events may still name its code: replay
/// would fail. Withdrawn since earlier lists and therefore absent: ANG
/// (→ XCG), BGN (→ EUR), CUC, HRK (→ EUR), SLL (→ SLE), ZWL (→ ZWG).
const CURRENCY_TABLE: &[CurrencyEntry] = &[
    entry("AED", 2),
    entry("AFN", 2),
    entry("ALL", 2),
    entry("AMD", 2),
    entry("AOA", 2),
    entry("ARS", 2),
    entry("AUD", 2),
    entry("AWG", 2),
    entry("AZN", 2),
    entry("BAM", 2),
    entry("BBD", 2),
    entry("BDT", 2),
    entry("BHD", 3),
    entry("BIF", 0),
    entry("BMD", 2),
    entry("BND", 2),
    entry("BOB", 2),
    entry("BOV", 2),
    entry("BRL", 2),
    entry("BSD", 2),
    entry("BTN", 2),
    entry("BWP", 2),
    entry("BYN", 2),
    entry("BZD", 2),
    entry("CAD", 2),
    entry("CDF", 2),
    entry("CHE", 2),
    entry("CHF", 2),
    entry("CHW", 2),
    entry("CLF", 4),
    entry("CLP", 0),
    entry("CNY", 2),
    entry("COP", 2),
    entry("COU", 2),
    entry("CRC", 2),
    entry("CUP", 2),
    entry("CVE", 2),
    entry("CZK", 2),
    entry("DJF", 0),
    entry("DKK", 2),
    entry("DOP", 2),
    entry("DZD", 2),
    entry("EGP", 2),
    entry("ERN", 2),
    entry("ETB", 2),
    entry("EUR", 2),
    entry("FJD", 2),
    entry("FKP", 2),
    entry("GBP", 2),
    entry("GEL", 2),
    entry("GHS", 2),
    entry("GIP", 2),
    entry("GMD", 2),
    entry("GNF", 0),
    entry("GTQ", 2),
    entry("GYD", 2),
    entry("HKD", 2),
    entry("HNL", 2),
    entry("HTG", 2),
    entry("HUF", 2),
    entry("IDR", 2),
    entry("ILS", 2),
    entry("INR", 2),
    entry("IQD", 3),
    entry("IRR", 2),
    entry("ISK", 0),
    entry("JMD", 2),
    entry("JOD", 3),
    entry("JPY", 0),
    entry("KES", 2),
    entry("KGS", 2),
    entry("KHR", 2),
    entry("KMF", 0),
    entry("KPW", 2),
    entry("KRW", 0),
    entry("KWD", 3),
    entry("KYD", 2),
    entry("KZT", 2),
    entry("LAK", 2),
    entry("LBP", 2),
    entry("LKR", 2),
    entry("LRD", 2),
    entry("LSL", 2),
    entry("LYD", 3),
    entry("MAD", 2),
    entry("MDL", 2),
    entry("MGA", 2),
    entry("MKD", 2),
    entry("MMK", 2),
    entry("MNT", 2),
    entry("MOP", 2),
    entry("MRU", 2),
    entry("MUR", 2),
    entry("MVR", 2),
    entry("MWK", 2),
    entry("MXN", 2),
    entry("MXV", 2),
    entry("MYR", 2),
    entry("MZN", 2),
    entry("NAD", 2),
    entry("NGN", 2),
    entry("NIO", 2),
    entry("NOK", 2),
    entry("NPR", 2),
    entry("NZD", 2),
    entry("OMR", 3),
    entry("PAB", 2),
    entry("PEN", 2),
    entry("PGK", 2),
    entry("PHP", 2),
    entry("PKR", 2),
    entry("PLN", 2),
    entry("PYG", 0),
    entry("QAR", 2),
    entry("RON", 2),
    entry("RSD", 2),
    entry("RUB", 2),
    entry("RWF", 0),
    entry("SAR", 2),
    entry("SBD", 2),
    entry("SCR", 2),
    entry("SDG", 2),
    entry("SEK", 2),
    entry("SGD", 2),
    entry("SHP", 2),
    entry("SLE", 2),
    entry("SOS", 2),
    entry("SRD", 2),
    entry("SSP", 2),
    entry("STN", 2),
    entry("SVC", 2),
    entry("SYP", 2),
    entry("SZL", 2),
    entry("THB", 2),
    entry("TJS", 2),
    entry("TMT", 2),
    entry("TND", 3),
    entry("TOP", 2),
    entry("TRY", 2),
    entry("TTD", 2),
    entry("TWD", 2),
    entry("TZS", 2),
    entry("UAH", 2),
    entry("UGX", 0),
    entry("USD", 2),
    entry("USN", 2),
    entry("UYI", 0),
    entry("UYU", 2),
    entry("UYW", 4),
    entry("UZS", 2),
    entry("VED", 2),
    entry("VES", 2),
    entry("VND", 0),
    entry("VUV", 0),
    entry("WST", 2),
    entry("XAD", 2),
    entry("XAF", 0),
    entry("XCD", 2),
    entry("XCG", 2),
    entry("XOF", 0),
    entry("XPF", 0),
    entry("YER", 2),
    entry("ZAR", 2),
    entry("ZMW", 2),
    entry("ZWG", 2),
];

/// Compile-time proof that the table is well formed: every code is three
/// uppercase ASCII letters, codes are strictly ascending (so binary search is
/// valid and there are no duplicates), and every minor unit is at most
/// [`MINOR_UNIT_MAX`] (so `Decimal::new(_, minor_unit)` cannot panic).
const _: () = check_currency_table(CURRENCY_TABLE);

/// A table code as its three bytes (every code has three: see the check below).
fn code_key(code: &str) -> [u8; 3] {
    let mut key = [0; 3];
    for (k, b) in key.iter_mut().zip(code.bytes()) {
        *k = b;
    }
    key
}

/// See the `const _` above; panics (at compile time) on a malformed table.
const fn check_currency_table(table: &[CurrencyEntry]) {
    let mut i = 0;
    while i < table.len() {
        let code = table[i].code.as_bytes();
        assert!(code.len() == 3, "currency code must have 3 letters");
        let mut j = 0;
        while j < code.len() {
            assert!(
                code[j].is_ascii_uppercase(),
                "currency code must be uppercase ASCII"
            );
            j += 1;
        }
        assert!(
            table[i].minor_unit <= MINOR_UNIT_MAX,
            "minor unit too large"
        );
        if i > 0 {
            let previous = table[i - 1].code.as_bytes();
            let mut k = 0;
            while k < 3 && previous[k] == code[k] {
                k += 1;
            }
            assert!(
                k < 3 && previous[k] < code[k],
                "currency table must be sorted and unique"
            );
        }
        i += 1;
    }
}

/// The table row behind [`Currency::USD`].
const USD_ENTRY: CurrencyEntry = entry("USD", 2);

/// An active ISO 4217 currency; a cheap `Copy` handle into a static table.
///
/// Only [`Currency::parse`] (and `FromStr`/serde, which call it) creates one,
/// so holding a `Currency` proves the code is known.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency(&'static CurrencyEntry);

impl Currency {
    /// The US dollar, the currency of the default catalog.
    pub const USD: Currency = Currency(&USD_ENTRY);

    /// Looks up an exact, uppercase, three-letter ISO 4217 code.
    ///
    /// # Errors
    ///
    /// [`MoneyError::UnknownCurrency`] if `code` is not in the table
    /// (including lowercase or padded input, and withdrawn or "N.A." codes).
    pub fn parse(code: &str) -> Result<Currency, MoneyError> {
        // Three-byte keys compare inline; every replayed amount comes through here.
        <[u8; 3]>::try_from(code.as_bytes())
            .ok()
            .and_then(|key| {
                CURRENCY_TABLE
                    .binary_search_by(|entry| code_key(entry.code).cmp(&key))
                    .ok()
            })
            .and_then(|index| CURRENCY_TABLE.get(index))
            .map(Currency)
            .ok_or_else(|| MoneyError::UnknownCurrency(echo(code)))
    }

    /// The three-letter ISO 4217 code, e.g. `"USD"`.
    pub fn code(self) -> &'static str {
        self.0.code
    }

    /// Decimal places of the minor unit: USD 2, JPY 0, KWD 3, CLF 4.
    pub fn minor_unit(self) -> u32 {
        self.0.minor_unit
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Currency").field(&self.code()).finish()
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.code())
    }
}

impl FromStr for Currency {
    type Err = MoneyError;

    fn from_str(code: &str) -> Result<Currency, MoneyError> {
        Currency::parse(code)
    }
}

impl Serialize for Currency {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.code())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Currency, D::Error> {
        deserializer.deserialize_str(CurrencyVisitor)
    }
}

/// Serde visitor accepting only a string that [`Currency::parse`] accepts.
struct CurrencyVisitor;

impl Visitor<'_> for CurrencyVisitor {
    type Value = Currency;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an ISO 4217 currency code string such as \"USD\"")
    }

    fn visit_str<E: de::Error>(self, code: &str) -> Result<Currency, E> {
        Currency::parse(code).map_err(E::custom)
    }
}

// ---------------------------------------------------------------------------
// Rounding
// ---------------------------------------------------------------------------

/// How [`Money::round_to_minor`] breaks a tie (an amount exactly halfway).
///
/// Non-ties always round to the nearest minor unit under either rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RoundingRule {
    /// Banker's rounding: a tie goes to the even digit (`2.345 → 2.34`,
    /// `2.355 → 2.36`, `-2.345 → -2.34`); unbiased over many roundings, for
    /// allocation, FX and aggregates.
    HalfEven,
    /// The default: a tie goes away from zero (`2.345 → 2.35`,
    /// `-2.345 → -2.35`); what customers expect on invoices and tax lines.
    #[default]
    HalfUp,
}

impl RoundingRule {
    /// The equivalent `rust_decimal` strategy.
    fn strategy(self) -> RoundingStrategy {
        match self {
            RoundingRule::HalfEven => RoundingStrategy::MidpointNearestEven,
            RoundingRule::HalfUp => RoundingStrategy::MidpointAwayFromZero,
        }
    }
}

// ---------------------------------------------------------------------------
// Money
// ---------------------------------------------------------------------------

/// An exact decimal amount in one currency.
///
/// The amount may have any scale (`Decimal` allows 0..=28 decimal places);
/// [`Money::round_to_minor`] brings it to the currency's minor unit and
/// [`Money::to_minor`] converts it to an integer count of minor units.
/// Equality compares value and currency, not scale: `12.3 USD == 12.30 USD`
/// (but they serialise differently). A zero amount is never negative.
/// There is deliberately no ordering: comparing across currencies is
/// meaningless.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Money {
    /// The exact amount; never a negative zero.
    amount: Decimal,
    /// The currency the amount is in.
    currency: Currency,
}

impl Money {
    /// Wraps an amount of any scale (intermediate tax or proration results
    /// may have more decimals than the currency).
    pub fn new(amount: Decimal, currency: Currency) -> Money {
        let mut amount = amount;
        if amount.is_zero() {
            // `-Decimal::ZERO` displays as "-0"; keep zero unsigned.
            amount.set_sign_positive(true);
        }
        Money { amount, currency }
    }

    /// Zero, at the currency's scale (`0.00 USD`, `0 JPY`).
    pub fn zero(currency: Currency) -> Money {
        Money::new(Decimal::new(0, currency.minor_unit()), currency)
    }

    /// Builds from an integer count of minor units: `1234` USD is `12.34 USD`,
    /// `500` JPY is `500 JPY`. Always exact.
    pub fn from_minor(amount_minor: i64, currency: Currency) -> Money {
        // Cannot panic: minor units are <= MINOR_UNIT_MAX (checked at compile
        // time), below Decimal's limit of 28.
        Money::new(Decimal::new(amount_minor, currency.minor_unit()), currency)
    }

    /// Parses a plain decimal amount and a currency code, e.g.
    /// `Money::parse("-3.00", "USD")`.
    ///
    /// Accepted amount syntax is `-?[0-9]+(\.[0-9]+)?` and nothing else: an
    /// optional leading minus, at least one digit, and optionally a point
    /// followed by at least one digit. Rejected: a leading `+`, `.5`, `5.`,
    /// exponents (`1e5`), digit separators (`1_000`, `1,000`), whitespace,
    /// and text longer than [`AMOUNT_TEXT_LEN_MAX`]. Leading zeros are
    /// accepted (`007.50` is `7.50`). The scale is kept as written (`12.30`
    /// stays `12.30`), even beyond the currency's minor unit.
    ///
    /// # Errors
    ///
    /// [`MoneyError::InvalidAmount`] for malformed or out-of-range amounts
    /// (more than 28 decimal places, or magnitude of 2^96 or more);
    /// [`MoneyError::UnknownCurrency`] for an unknown code.
    pub fn parse(amount: &str, currency_code: &str) -> Result<Money, MoneyError> {
        let currency = Currency::parse(currency_code)?;
        let amount = parse_amount(amount)?;
        Ok(Money::new(amount, currency))
    }

    /// The exact amount, with whatever scale it was built with.
    pub fn amount(&self) -> Decimal {
        self.amount
    }

    /// The currency.
    pub fn currency(&self) -> Currency {
        self.currency
    }

    /// The amount as an integer count of minor units: `12.34 USD` is `1234`.
    /// Trailing zeros do not matter (`12.340 USD` is also `1234`).
    ///
    /// # Errors
    ///
    /// [`MoneyError::NotInMinorUnits`] if the amount has a non-zero digit
    /// beyond the currency's minor unit (`12.345 USD`); round it first.
    /// [`MoneyError::AmountOverflow`] if the count does not fit an `i64`.
    pub fn to_minor(&self) -> Result<i64, MoneyError> {
        let overflow = MoneyError::AmountOverflow {
            operation: "conversion to minor units",
        };
        let minor_unit = self.currency.minor_unit();
        let normalized = self.amount.normalize();
        let Some(missing_places) = minor_unit.checked_sub(normalized.scale()) else {
            return Err(MoneyError::NotInMinorUnits {
                amount: self.amount,
                currency: self.currency,
            });
        };
        10_i128
            .checked_pow(missing_places)
            .and_then(|factor| normalized.mantissa().checked_mul(factor))
            .and_then(|amount_minor| i64::try_from(amount_minor).ok())
            .ok_or(overflow)
    }

    /// Rounds to the currency's minor unit with `rule`, and pads to exactly
    /// that many decimal places (`12.3 USD` becomes `12.30 USD`). Idempotent.
    pub fn round_to_minor(self, rule: RoundingRule) -> Money {
        let minor_unit = self.currency.minor_unit();
        let mut amount = self
            .amount
            .round_dp_with_strategy(minor_unit, rule.strategy());
        if amount.scale() < minor_unit {
            // Only adds trailing zeros (the value is unchanged); if the
            // mantissa has no room for them, rust_decimal keeps fewer.
            amount.rescale(minor_unit);
        }
        Money::new(amount, self.currency)
    }

    /// Exact sum of two amounts in the same currency; the scale is the
    /// larger of the two.
    ///
    /// # Errors
    ///
    /// [`MoneyError::CurrencyMismatch`] if the currencies differ;
    /// [`MoneyError::AmountOverflow`] if the exact result does not fit a
    /// `Decimal` (it is never silently rounded).
    pub fn checked_add(self, other: Money) -> Result<Money, MoneyError> {
        self.same_currency(other)?;
        let operation = "addition";
        let sum = self
            .amount
            .checked_add(other.amount)
            .ok_or(MoneyError::AmountOverflow { operation })?;
        ensure_exact(self.amount, other.amount, sum, SumKind::Add, operation)?;
        Ok(Money::new(sum, self.currency))
    }

    /// Exact difference `self - other` of two amounts in the same currency.
    ///
    /// # Errors
    ///
    /// As for [`Money::checked_add`].
    pub fn checked_sub(self, other: Money) -> Result<Money, MoneyError> {
        self.same_currency(other)?;
        let operation = "subtraction";
        let difference = self
            .amount
            .checked_sub(other.amount)
            .ok_or(MoneyError::AmountOverflow { operation })?;
        ensure_exact(
            self.amount,
            other.amount,
            difference,
            SumKind::Sub,
            operation,
        )?;
        Ok(Money::new(difference, self.currency))
    }

    /// Multiplies by a factor (tax rate, proration ratio, quantity) without
    /// rounding to the minor unit: `19.99 × 0.0825 = 1.649175`.
    ///
    /// The product is exact while it fits `Decimal` (at most 28 decimal
    /// places and a 96-bit mantissa); beyond that, rust_decimal rounds its
    /// least significant digits (around the 28th significant digit), which
    /// for any real amount is far below a minor unit. Round the result with
    /// [`Money::round_to_minor`] before booking it.
    ///
    /// # Errors
    ///
    /// [`MoneyError::AmountOverflow`] if the product's magnitude exceeds
    /// `Decimal::MAX`.
    pub fn mul_decimal(self, factor: Decimal) -> Result<Money, MoneyError> {
        let product = self
            .amount
            .checked_mul(factor)
            .ok_or(MoneyError::AmountOverflow {
                operation: "multiplication",
            })?;
        Ok(Money::new(product, self.currency))
    }

    /// Exact total of `items`, all of which must be in `currency`; an empty
    /// iterator gives [`Money::zero`]. Accepts `Money` or `&Money` items.
    ///
    /// # Errors
    ///
    /// [`MoneyError::CurrencyMismatch`] (with `left` = `currency`) at the
    /// first item in another currency; [`MoneyError::AmountOverflow`] as for
    /// [`Money::checked_add`].
    pub fn sum<I>(items: I, currency: Currency) -> Result<Money, MoneyError>
    where
        I: IntoIterator,
        I::Item: Borrow<Money>,
    {
        items
            .into_iter()
            .try_fold(Money::zero(currency), |total, item| {
                total.checked_add(*item.borrow())
            })
    }

    /// True if the amount is zero (at any scale).
    pub fn is_zero(&self) -> bool {
        self.amount.is_zero()
    }

    /// True if the amount is strictly below zero.
    pub fn is_negative(&self) -> bool {
        self.amount < Decimal::ZERO
    }

    /// True if the amount is strictly above zero.
    pub fn is_positive(&self) -> bool {
        self.amount > Decimal::ZERO
    }

    /// Errors unless `other` is in the same currency as `self`.
    fn same_currency(self, other: Money) -> Result<(), MoneyError> {
        if self.currency == other.currency {
            Ok(())
        } else {
            Err(MoneyError::CurrencyMismatch {
                left: self.currency,
                right: other.currency,
            })
        }
    }
}

/// Negation never fails and keeps the currency and scale; `-0` stays `0`.
impl Neg for Money {
    type Output = Money;

    fn neg(self) -> Money {
        Money::new(-self.amount, self.currency)
    }
}

/// Whether [`ensure_exact`] checks a sum or a difference.
#[derive(Clone, Copy)]
enum SumKind {
    /// `left + right`.
    Add,
    /// `left - right`.
    Sub,
}

/// Proves that `result`, computed by rust_decimal as `left ± right`, is the
/// exact value, or returns [`MoneyError::AmountOverflow`].
///
/// rust_decimal keeps the larger operand scale when the exact result fits in
/// 96 bits, and otherwise silently rounds it to fewer decimal places. So if
/// `result` has fewer places than an operand, it is exact if and only if the
/// exact value is a whole multiple of its last place, i.e. the digits the
/// operands have beyond that place (their "tails") cancel out. The tails are
/// below one unit of that place, so their sum is computed exactly.
fn ensure_exact(
    left: Decimal,
    right: Decimal,
    result: Decimal,
    kind: SumKind,
    operation: &'static str,
) -> Result<(), MoneyError> {
    let places = result.scale();
    if places >= left.scale().max(right.scale()) {
        return Ok(());
    }
    let tail = |value: Decimal| value.checked_sub(value.trunc_with_scale(places));
    let tails = tail(left)
        .zip(tail(right))
        .and_then(|(left_tail, right_tail)| match kind {
            SumKind::Add => left_tail.checked_add(right_tail),
            SumKind::Sub => left_tail.checked_sub(right_tail),
        });
    match tails {
        Some(tails) if tails.normalize().scale() <= places => Ok(()),
        _ => Err(MoneyError::AmountOverflow { operation }),
    }
}

/// Parses `-?[0-9]+(\.[0-9]+)?` into an exact `Decimal`, keeping its scale.
fn parse_amount(text: &str) -> Result<Decimal, MoneyError> {
    const SYNTAX: &str =
        "expected digits with an optional leading '-' and optional '.' decimals, e.g. \"-12.30\"";
    let invalid = |reason: &'static str| MoneyError::InvalidAmount {
        input: echo(text),
        reason,
    };
    if text.is_empty() {
        return Err(invalid("empty"));
    }
    if text.len() > AMOUNT_TEXT_LEN_MAX {
        return Err(invalid("too long"));
    }
    let unsigned = text.strip_prefix('-').unwrap_or(text);
    let (integer_digits, fraction_digits) = match unsigned.split_once('.') {
        Some((integer_digits, fraction_digits)) => (integer_digits, Some(fraction_digits)),
        None => (unsigned, None),
    };
    let all_digits =
        |digits: &str| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(integer_digits) || !fraction_digits.is_none_or(all_digits) {
        return Err(invalid(SYNTAX));
    }
    // The syntax is now plain decimal, so the only failures left are range:
    // more than 28 decimal places, or too many significant digits.
    Decimal::from_str_exact(text).map_err(|_| {
        invalid("out of range: at most 28 decimal places and 28 to 29 significant digits")
    })
}

impl fmt::Display for Money {
    /// `12.30 USD`: the amount with its own scale, a space, the code.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.amount, self.currency)
    }
}

impl Serialize for Money {
    /// `{"amount":"12.30","currency":"USD"}`, the amount as a string.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut state = serializer.serialize_struct("Money", 2)?;
        state.serialize_field("amount", &AmountText(self.amount))?;
        state.serialize_field("currency", &self.currency)?;
        state.end()
    }
}

impl<'de> Deserialize<'de> for Money {
    /// Accepts exactly `{"amount": "<decimal string>", "currency": "<code>"}`:
    /// a number for `amount`, a malformed amount, an unknown currency, a
    /// missing or an unknown field is an error.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Money, D::Error> {
        let repr = MoneyRepr::deserialize(deserializer)?;
        Ok(Money::new(repr.amount.0, repr.currency))
    }
}

/// Wire form of [`Money`], for deserialisation.
#[derive(Deserialize)]
#[serde(rename = "Money", deny_unknown_fields)]
struct MoneyRepr {
    /// The amount, from a JSON string.
    amount: AmountText,
    /// The currency, from its code.
    currency: Currency,
}

/// A `Decimal` that is (de)serialised only as a string, never as a number.
struct AmountText(Decimal);

impl Serialize for AmountText {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for AmountText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<AmountText, D::Error> {
        deserializer.deserialize_str(AmountVisitor).map(AmountText)
    }
}

/// Serde visitor accepting only a string that [`Money::parse`] accepts as an
/// amount. Numbers fall through to serde's "invalid type" error, whose
/// message ends with [`AmountVisitor::expecting`].
struct AmountVisitor;

impl Visitor<'_> for AmountVisitor {
    type Value = Decimal;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "a decimal amount as a JSON string such as \"12.30\" \
             (numbers are rejected: they may have passed through a binary float)",
        )
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Decimal, E> {
        parse_amount(text).map_err(E::custom)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn currency(code: &str) -> Currency {
        Currency::parse(code).unwrap()
    }

    fn money(amount: &str, code: &str) -> Money {
        Money::parse(amount, code).unwrap()
    }

    fn decimal(text: &str) -> Decimal {
        Decimal::from_str_exact(text).unwrap()
    }

    // --- Currency -------------------------------------------------------

    #[test]
    fn parsing_a_known_code_returns_that_currency() {
        let usd = Currency::parse("USD").unwrap();
        assert_eq!(usd.code(), "USD");
        assert_eq!(usd.to_string(), "USD");
        assert_eq!("EUR".parse::<Currency>().unwrap().code(), "EUR");
    }

    #[test]
    fn parsing_an_unknown_or_non_canonical_code_is_an_unknown_currency_error() {
        for code in ["XYZ", "usd", "Usd", " USD", "USD ", "US", "USDX", "", "€"] {
            let error = Currency::parse(code).unwrap_err();
            assert_eq!(error, MoneyError::UnknownCurrency(code.to_owned()));
            assert_eq!(error.code(), "unknown_currency");
        }
    }

    #[test]
    fn withdrawn_codes_are_unknown() {
        for code in ["HRK", "BGN", "ANG", "SLL", "ZWL", "CUC", "VEF", "LTL"] {
            assert!(Currency::parse(code).is_err(), "{code} should be withdrawn");
        }
    }

    #[test]
    fn units_without_a_minor_unit_such_as_gold_are_not_billing_currencies() {
        for code in [
            "XAU", "XAG", "XPT", "XPD", "XDR", "XBA", "XSU", "XUA", "XTS", "XXX",
        ] {
            assert!(Currency::parse(code).is_err(), "{code} has no minor unit");
        }
    }

    #[test]
    fn unknown_currency_error_echoes_at_most_32_characters() {
        let long = "A".repeat(1000);
        let MoneyError::UnknownCurrency(echoed) = Currency::parse(&long).unwrap_err() else {
            panic!("wrong error");
        };
        assert_eq!(echoed, format!("{}…", "A".repeat(32)));
    }

    #[test]
    fn minor_units_of_usd_jpy_and_kwd_are_two_zero_and_three() {
        assert_eq!(currency("USD").minor_unit(), 2);
        assert_eq!(currency("JPY").minor_unit(), 0);
        assert_eq!(currency("KWD").minor_unit(), 3);
    }

    #[test]
    fn currencies_with_unusual_minor_units_have_the_iso_exponent() {
        let zero = [
            "JPY", "KRW", "VND", "ISK", "CLP", "PYG", "UGX", "XAF", "XOF", "XPF", "KMF", "DJF",
            "GNF", "RWF", "VUV", "BIF", "UYI",
        ];
        let three = ["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"];
        let four = ["CLF", "UYW"];
        for (codes, minor_unit) in [(&zero[..], 0), (&three[..], 3), (&four[..], 4)] {
            for code in codes {
                assert_eq!(currency(code).minor_unit(), minor_unit, "{code}");
            }
        }
        let exceptions = zero.len() + three.len() + four.len();
        let twos = CURRENCY_TABLE.iter().filter(|e| e.minor_unit == 2).count();
        assert_eq!(
            twos + exceptions,
            CURRENCY_TABLE.len(),
            "every other code has 2"
        );
    }

    #[test]
    fn newest_codes_are_known() {
        for code in ["XCG", "ZWG", "SLE", "VED", "VES", "MRU", "STN", "XAD"] {
            assert_eq!(currency(code).minor_unit(), 2, "{code}");
        }
    }

    #[test]
    fn currency_serializes_as_its_code_and_deserializes_through_parse() {
        let usd = currency("USD");
        assert_eq!(serde_json::to_string(&usd).unwrap(), "\"USD\"");
        assert_eq!(serde_json::from_str::<Currency>("\"USD\"").unwrap(), usd);
    }

    #[test]
    fn deserializing_an_unknown_currency_names_the_code() {
        let error = serde_json::from_str::<Currency>("\"XYZ\"").unwrap_err();
        assert!(error.to_string().contains("\"XYZ\""), "{error}");
        assert!(serde_json::from_str::<Currency>("840").is_err());
    }

    // --- Parsing amounts ------------------------------------------------

    #[test]
    fn parse_accepts_plain_decimals_and_keeps_their_scale() {
        assert_eq!(money("12", "USD").to_string(), "12 USD");
        assert_eq!(money("12.5", "USD").to_string(), "12.5 USD");
        assert_eq!(money("-3.00", "USD").to_string(), "-3.00 USD");
        assert_eq!(money("0.001", "USD").amount(), decimal("0.001"));
        assert_eq!(money("007.50", "EUR").to_string(), "7.50 EUR");
    }

    #[test]
    fn parse_rejects_malformed_amounts_as_invalid_amount() {
        for text in [
            "", "abc", "1e5", "1E5", "12.345.6", "+12", ".5", "5.", "-", "--1", "-.5", " 1", "1 ",
            "1_000", "1,000", "0x10", "NaN", "inf", "١٢", "12,5",
        ] {
            let error = Money::parse(text, "USD").unwrap_err();
            assert_eq!(error.code(), "invalid_amount", "{text:?} gave {error}");
        }
    }

    #[test]
    fn parse_rejects_amounts_out_of_decimal_range() {
        let too_precise = format!("0.{}1", "0".repeat(28));
        let too_large = "79228162514264337593543950336";
        let too_long = "1".repeat(AMOUNT_TEXT_LEN_MAX + 1);
        for text in [too_precise.as_str(), too_large, too_long.as_str()] {
            assert_eq!(
                Money::parse(text, "USD").unwrap_err().code(),
                "invalid_amount"
            );
        }
    }

    #[test]
    fn parse_reports_an_unknown_currency() {
        let error = Money::parse("1.00", "ABC").unwrap_err();
        assert_eq!(error, MoneyError::UnknownCurrency("ABC".to_owned()));
    }

    // --- Serde ----------------------------------------------------------

    #[test]
    fn money_serializes_with_the_amount_as_a_string_keeping_its_scale() {
        let json = serde_json::to_string(&money("12.30", "USD")).unwrap();
        assert_eq!(json, r#"{"amount":"12.30","currency":"USD"}"#);
        let json = serde_json::to_string(&Money::from_minor(-500, currency("JPY"))).unwrap();
        assert_eq!(json, r#"{"amount":"-500","currency":"JPY"}"#);
    }

    #[test]
    fn money_round_trips_through_json_exactly() {
        for (amount, code) in [("12.30", "USD"), ("-0.001", "KWD"), ("1.649175", "USD")] {
            let original = money(amount, code);
            let json = serde_json::to_string(&original).unwrap();
            let back: Money = serde_json::from_str(&json).unwrap();
            assert_eq!(back, original);
            assert_eq!(back.amount().to_string(), amount, "scale is kept");
        }
    }

    #[test]
    fn a_float_amount_in_json_is_rejected_with_a_clear_message() {
        let error =
            serde_json::from_str::<Money>(r#"{"amount":12.3,"currency":"USD"}"#).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("floating point"), "{message}");
        assert!(message.contains("as a JSON string"), "{message}");
    }

    #[test]
    fn an_integer_amount_in_json_is_rejected_too() {
        let error = serde_json::from_str::<Money>(r#"{"amount":12,"currency":"USD"}"#).unwrap_err();
        assert!(error.to_string().contains("as a JSON string"), "{error}");
    }

    #[test]
    fn malformed_json_money_is_rejected() {
        for json in [
            r#"{"amount":"1e5","currency":"USD"}"#,
            r#"{"amount":"","currency":"USD"}"#,
            r#"{"amount":"12.30","currency":"XYZ"}"#,
            r#"{"amount":"12.30","currency":"usd"}"#,
            r#"{"amount":"12.30"}"#,
            r#"{"currency":"USD"}"#,
            r#"{"amount":"12.30","currency":"USD","note":"x"}"#,
            r#"{"amount":null,"currency":"USD"}"#,
            r#""12.30 USD""#,
        ] {
            assert!(
                serde_json::from_str::<Money>(json).is_err(),
                "{json} was accepted"
            );
        }
    }

    #[test]
    fn json_money_with_an_unknown_currency_names_the_code() {
        let error = serde_json::from_str::<Money>(r#"{"amount":"1","currency":"XYZ"}"#)
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown currency code \"XYZ\""), "{error}");
    }

    // --- Arithmetic -----------------------------------------------------

    #[test]
    fn adding_usd_to_eur_is_a_currency_mismatch() {
        let error = money("1.00", "USD")
            .checked_add(money("1.00", "EUR"))
            .unwrap_err();
        assert_eq!(
            error,
            MoneyError::CurrencyMismatch {
                left: currency("USD"),
                right: currency("EUR"),
            }
        );
        assert_eq!(error.code(), "currency_mismatch");
        assert_eq!(
            error.to_string(),
            "currency mismatch: cannot combine USD with EUR"
        );
    }

    #[test]
    fn subtracting_eur_from_usd_is_a_currency_mismatch() {
        let error = money("1.00", "USD")
            .checked_sub(money("1.00", "EUR"))
            .unwrap_err();
        assert_eq!(error.code(), "currency_mismatch");
    }

    #[test]
    fn adding_keeps_the_larger_scale() {
        let sum = money("1.1", "USD")
            .checked_add(money("2.25", "USD"))
            .unwrap();
        assert_eq!(sum.to_string(), "3.35 USD");
        let difference = money("1.10", "USD")
            .checked_sub(money("2.2", "USD"))
            .unwrap();
        assert_eq!(difference.to_string(), "-1.10 USD");
    }

    #[test]
    fn adding_beyond_decimal_range_is_an_overflow() {
        let max = Money::new(Decimal::MAX, currency("USD"));
        let error = max.checked_add(money("1", "USD")).unwrap_err();
        assert_eq!(error.code(), "amount_overflow");
        let error = (-max).checked_sub(money("1", "USD")).unwrap_err();
        assert_eq!(error.code(), "amount_overflow");
    }

    #[test]
    fn adding_beyond_decimal_precision_is_an_error_not_a_silent_rounding() {
        let big = money("1000000000000000000000000000", "USD");
        let error = big.checked_add(money("0.01", "USD")).unwrap_err();
        assert_eq!(
            error,
            MoneyError::AmountOverflow {
                operation: "addition"
            }
        );
        // But an exact result that needs fewer places is fine.
        let sum = big.checked_add(money("1.00", "USD")).unwrap();
        assert_eq!(sum.amount(), decimal("1000000000000000000000000001"));
    }

    #[test]
    fn a_sum_that_needs_fewer_places_than_its_operands_is_exact_when_the_tails_cancel() {
        // At scale 2 the sum needs a 30-digit mantissa, so rust_decimal
        // returns it at scale 1: exact here, because .15 + .05 = .20 ...
        let a = money("790000000000000000000000000.15", "USD");
        let sum = a
            .checked_add(money("5000000000000000000000000.05", "USD"))
            .unwrap();
        assert_eq!(sum.amount(), decimal("795000000000000000000000000.2"));
        // ... but not here, because .15 + .06 = .21 would lose its last digit.
        let error = a
            .checked_add(money("5000000000000000000000000.06", "USD"))
            .unwrap_err();
        assert_eq!(
            error,
            MoneyError::AmountOverflow {
                operation: "addition"
            }
        );
        let error = a
            .checked_sub(money("-5000000000000000000000000.06", "USD"))
            .unwrap_err();
        assert_eq!(
            error,
            MoneyError::AmountOverflow {
                operation: "subtraction"
            }
        );
    }

    #[test]
    fn multiplying_by_a_rate_does_not_round() {
        let tax = money("19.99", "USD")
            .mul_decimal(decimal("0.0825"))
            .unwrap();
        assert_eq!(tax.amount(), decimal("1.649175"));
        assert_eq!(tax.currency(), currency("USD"));
        let error = Money::new(Decimal::MAX, currency("USD"))
            .mul_decimal(decimal("2"))
            .unwrap_err();
        assert_eq!(error.code(), "amount_overflow");
    }

    #[test]
    fn summing_nothing_gives_zero_in_the_requested_currency() {
        let total = Money::sum(Vec::<Money>::new(), currency("EUR")).unwrap();
        assert_eq!(total.to_string(), "0.00 EUR");
        assert!(total.is_zero());
    }

    #[test]
    fn summing_lines_adds_them_and_accepts_references() {
        let lines = [
            money("1.10", "USD"),
            money("2.20", "USD"),
            money("-0.30", "USD"),
        ];
        assert_eq!(
            Money::sum(lines.iter(), currency("USD"))
                .unwrap()
                .to_string(),
            "3.00 USD"
        );
        assert_eq!(
            Money::sum(lines, currency("USD")).unwrap().to_string(),
            "3.00 USD"
        );
    }

    #[test]
    fn summing_a_line_in_another_currency_is_a_currency_mismatch() {
        let lines = [money("1.10", "USD"), money("2.20", "EUR")];
        let error = Money::sum(lines, currency("USD")).unwrap_err();
        assert_eq!(
            error,
            MoneyError::CurrencyMismatch {
                left: currency("USD"),
                right: currency("EUR"),
            }
        );
    }

    #[test]
    fn negating_flips_the_sign_and_never_yields_negative_zero() {
        assert_eq!((-money("12.30", "USD")).to_string(), "-12.30 USD");
        assert_eq!((-money("-12.30", "USD")).to_string(), "12.30 USD");
        let zero = -Money::zero(currency("USD"));
        assert_eq!(zero.to_string(), "0.00 USD");
        assert!(!zero.is_negative());
        assert_eq!(
            Money::new(-Decimal::ZERO, currency("USD")).to_string(),
            "0 USD"
        );
    }

    #[test]
    fn sign_predicates_treat_zero_as_neither_positive_nor_negative() {
        let zero = money("0.000", "USD");
        assert!(zero.is_zero() && !zero.is_positive() && !zero.is_negative());
        assert!(money("0.01", "USD").is_positive());
        assert!(money("-0.01", "USD").is_negative());
    }

    #[test]
    fn equality_ignores_scale_but_not_currency() {
        assert_eq!(money("12.3", "USD"), money("12.30", "USD"));
        assert_ne!(money("12.30", "USD"), money("12.30", "EUR"));
        let set: std::collections::HashSet<Money> =
            [money("12.3", "USD"), money("12.30", "USD")].into();
        assert_eq!(set.len(), 1, "Hash agrees with Eq");
    }

    // --- Rounding and minor units ---------------------------------------

    #[test]
    fn half_even_and_half_up_differ_only_on_ties() {
        let cases = [
            // amount, half-even, half-up
            ("2.345", "2.34", "2.35"),
            ("2.355", "2.36", "2.36"),
            ("-2.345", "-2.34", "-2.35"),
            ("-2.355", "-2.36", "-2.36"),
            ("2.3449", "2.34", "2.34"),
            ("2.3451", "2.35", "2.35"),
        ];
        for (amount, half_even, half_up) in cases {
            let amount = money(amount, "USD");
            let even = amount.round_to_minor(RoundingRule::HalfEven);
            let up = amount.round_to_minor(RoundingRule::HalfUp);
            assert_eq!(
                even.amount().to_string(),
                half_even,
                "half-even of {amount}"
            );
            assert_eq!(up.amount().to_string(), half_up, "half-up of {amount}");
        }
    }

    #[test]
    fn the_default_rounding_rule_is_half_up() {
        assert_eq!(RoundingRule::default(), RoundingRule::HalfUp);
    }

    #[test]
    fn rounding_pads_to_the_minor_unit_and_respects_zero_decimal_currencies() {
        let padded = money("12.3", "USD").round_to_minor(RoundingRule::HalfUp);
        assert_eq!(padded.to_string(), "12.30 USD");
        let yen = money("1234.5", "JPY").round_to_minor(RoundingRule::HalfEven);
        assert_eq!(yen.to_string(), "1234 JPY");
        let dinar = money("1.23456", "KWD").round_to_minor(RoundingRule::HalfUp);
        assert_eq!(dinar.to_string(), "1.235 KWD");
        let tiny = money("-0.004", "USD").round_to_minor(RoundingRule::HalfUp);
        assert_eq!(tiny.to_string(), "0.00 USD");
    }

    #[test]
    fn to_minor_converts_12_34_usd_to_1234_cents() {
        assert_eq!(money("12.34", "USD").to_minor().unwrap(), 1234);
        assert_eq!(money("12.340", "USD").to_minor().unwrap(), 1234);
        assert_eq!(money("12", "USD").to_minor().unwrap(), 1200);
        assert_eq!(money("-0.05", "USD").to_minor().unwrap(), -5);
        assert_eq!(money("1.234", "KWD").to_minor().unwrap(), 1234);
    }

    #[test]
    fn to_minor_rejects_12_345_usd_as_not_in_minor_units() {
        let error = money("12.345", "USD").to_minor().unwrap_err();
        assert_eq!(
            error,
            MoneyError::NotInMinorUnits {
                amount: decimal("12.345"),
                currency: currency("USD"),
            }
        );
        assert_eq!(error.code(), "not_in_minor_units");
        assert!(money("0.5", "JPY").to_minor().is_err());
    }

    #[test]
    fn to_minor_overflowing_i64_is_an_amount_overflow() {
        let error = money("92233720368547758.08", "USD").to_minor().unwrap_err();
        assert_eq!(error.code(), "amount_overflow");
        assert_eq!(
            money("92233720368547758.07", "USD").to_minor().unwrap(),
            i64::MAX
        );
        assert_eq!(
            money("-92233720368547758.08", "USD").to_minor().unwrap(),
            i64::MIN
        );
    }

    #[test]
    fn from_minor_for_jpy_has_no_decimals() {
        let yen = Money::from_minor(500, currency("JPY"));
        assert_eq!(yen.amount(), decimal("500"));
        assert_eq!(yen.amount().scale(), 0);
        assert_eq!(yen.to_string(), "500 JPY");
        assert_eq!(
            Money::from_minor(1234, currency("USD")).to_string(),
            "12.34 USD"
        );
        assert_eq!(
            Money::from_minor(1234, currency("CLF")).to_string(),
            "0.1234 CLF"
        );
    }

    #[test]
    fn zero_has_the_scale_of_its_currency() {
        assert_eq!(Money::zero(currency("USD")).to_string(), "0.00 USD");
        assert_eq!(Money::zero(currency("JPY")).to_string(), "0 JPY");
        assert_eq!(Money::zero(currency("BHD")).to_string(), "0.000 BHD");
    }

    #[test]
    fn error_codes_are_stable() {
        let usd = currency("USD");
        let codes = [
            (MoneyError::UnknownCurrency("X".into()), "unknown_currency"),
            (
                MoneyError::InvalidAmount {
                    input: "x".into(),
                    reason: "r",
                },
                "invalid_amount",
            ),
            (
                MoneyError::CurrencyMismatch {
                    left: usd,
                    right: usd,
                },
                "currency_mismatch",
            ),
            (
                MoneyError::AmountOverflow { operation: "o" },
                "amount_overflow",
            ),
            (
                MoneyError::NotInMinorUnits {
                    amount: Decimal::ONE,
                    currency: usd,
                },
                "not_in_minor_units",
            ),
        ];
        for (error, code) in codes {
            assert_eq!(error.code(), code);
        }
    }

    #[test]
    fn error_messages_are_readable() {
        let error = money("12.345", "USD").to_minor().unwrap_err();
        assert_eq!(
            error.to_string(),
            "12.345 USD is not a whole number of minor units: USD has 2 decimal places; round it first"
        );
        let error = Money::parse("1e5", "USD").unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("invalid amount \"1e5\": expected digits")
        );
    }

    // --- Properties -----------------------------------------------------

    fn any_currency() -> impl Strategy<Value = Currency> {
        (0..CURRENCY_TABLE.len()).prop_map(|index| Currency(&CURRENCY_TABLE[index]))
    }

    /// Amounts as large as i64 with 0..=12 decimal places.
    fn any_amount() -> impl Strategy<Value = Decimal> {
        (any::<i64>(), 0_u32..=12).prop_map(|(mantissa, scale)| Decimal::new(mantissa, scale))
    }

    /// Amounts below 10^15 with 0..=12 decimal places: every sum of two fits
    /// `Decimal` exactly.
    fn any_billing_amount() -> impl Strategy<Value = Decimal> {
        (
            -999_999_999_999_999_999_999_999_i128..=999_999_999_999_999_999_999_999,
            0_u32..=12,
        )
            .prop_map(|(mantissa, scale)| {
                let magnitude_cap = 10_i128.pow(15 + scale);
                Decimal::from_i128_with_scale(mantissa % magnitude_cap, scale)
            })
    }

    fn any_rule() -> impl Strategy<Value = RoundingRule> {
        prop_oneof![Just(RoundingRule::HalfEven), Just(RoundingRule::HalfUp)]
    }

    proptest! {
        #[test]
        fn from_minor_then_to_minor_is_the_identity(amount_minor in any::<i64>(), currency in any_currency()) {
            prop_assert_eq!(Money::from_minor(amount_minor, currency).to_minor(), Ok(amount_minor));
        }

        #[test]
        fn adding_then_subtracting_the_same_amount_is_the_identity(
            a in any_billing_amount(),
            b in any_billing_amount(),
            currency in any_currency(),
        ) {
            let a = Money::new(a, currency);
            let b = Money::new(b, currency);
            let back = a.checked_add(b).unwrap().checked_sub(b).unwrap();
            prop_assert_eq!(back, a);
        }

        #[test]
        fn addition_near_the_precision_limit_is_exact_or_an_error(
            a in any_amount(),
            b in any_amount(),
            currency in any_currency(),
        ) {
            let a = Money::new(a, currency);
            let b = Money::new(b, currency);
            match a.checked_add(b) {
                // Exact: undoing it must give `a` back, and must succeed,
                // since `a` is representable.
                Ok(sum) => prop_assert_eq!(sum.checked_sub(b), Ok(a)),
                Err(error) => prop_assert_eq!(error, MoneyError::AmountOverflow { operation: "addition" }),
            }
        }

        #[test]
        fn rounding_is_idempotent_and_leaves_at_most_minor_unit_decimals(
            amount in any_amount(),
            currency in any_currency(),
            rule in any_rule(),
        ) {
            let once = Money::new(amount, currency).round_to_minor(rule);
            let twice = once.round_to_minor(rule);
            prop_assert_eq!(twice, once);
            prop_assert_eq!(twice.amount().to_string(), once.amount().to_string());
            prop_assert!(once.amount().scale() <= currency.minor_unit());
            let in_minor_units = !matches!(once.to_minor(), Err(MoneyError::NotInMinorUnits { .. }));
            prop_assert!(in_minor_units);
        }

        #[test]
        fn rounding_moves_an_amount_by_at_most_half_a_minor_unit(
            amount in any_amount(),
            currency in any_currency(),
            rule in any_rule(),
        ) {
            let rounded = Money::new(amount, currency).round_to_minor(rule);
            let half_minor_unit = Decimal::new(5, currency.minor_unit() + 1);
            prop_assert!((rounded.amount() - amount).abs() <= half_minor_unit);
        }

        #[test]
        fn json_round_trip_keeps_value_and_scale(amount in any_amount(), currency in any_currency()) {
            let original = Money::new(amount, currency);
            let json = serde_json::to_string(&original).unwrap();
            let back: Money = serde_json::from_str(&json).unwrap();
            prop_assert_eq!(back, original);
            prop_assert_eq!(back.to_string(), original.to_string());
        }

        /// The whole of `Decimal`'s range (96-bit mantissa, scale 0 to 28, either
        /// sign): `parse(format(x)) == x`, scale included (fuzz/ runs it longer).
        #[test]
        fn every_decimal_round_trips_through_display_and_parse(
            lo in any::<u32>(),
            mid in any::<u32>(),
            hi in any::<u32>(),
            negative in any::<bool>(),
            scale in 0_u32..=28,
            currency in any_currency(),
        ) {
            let amount = Decimal::from_parts(lo, mid, hi, negative, scale);
            let money = Money::new(amount, currency);
            let parsed = Money::parse(&amount.to_string(), currency.code()).unwrap();
            prop_assert_eq!(parsed, money);
            prop_assert_eq!(parsed.amount().scale(), amount.scale());
            let json = serde_json::to_string(&money).unwrap();
            prop_assert_eq!(serde_json::from_str::<Money>(&json).unwrap(), money);
        }

        /// Any text: a `Money` or a typed refusal, never a panic.
        #[test]
        fn parse_of_any_text_is_money_or_a_typed_refusal(
            amount in prop_oneof![any::<String>(), "[-+0-9.eE_, ]{0,70}"],
            code in prop_oneof![any::<String>(), "[A-Z]{3}"],
        ) {
            match Money::parse(&amount, &code) {
                Ok(money) => prop_assert_eq!(money.amount().to_string().parse::<Decimal>().ok(), Some(money.amount())),
                Err(MoneyError::InvalidAmount { .. } | MoneyError::UnknownCurrency(_)) => {}
                Err(other) => prop_assert!(false, "{amount:?} {code:?}: {other:?}"),
            }
        }

        /// Any bytes as a JSON `Money`: a value or a serde error, never a panic.
        #[test]
        fn money_from_any_json_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..128)) {
            let _ = serde_json::from_slice::<Money>(&bytes);
        }

        #[test]
        fn parse_accepts_every_amount_that_display_produces(amount in any_amount(), currency in any_currency()) {
            let parsed = Money::parse(&amount.to_string(), currency.code()).unwrap();
            prop_assert_eq!(parsed.amount().to_string(), Money::new(amount, currency).amount().to_string());
        }
    }
}
