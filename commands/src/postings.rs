//! Double-entry postings: every financial event carries its journal entries,
//! and the entries of one event balance per currency.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use recur_ledger::{Currency, Money};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::error::DomainError;

/// A ledger account. Plan- and jurisdiction-specific accounts carry their key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Account {
    /// Amounts invoiced and not yet paid (asset).
    AccountsReceivable,
    /// Money collected and held by the payment gateway (asset, our cash).
    GatewayBalance,
    /// Earned revenue of a plan (income).
    Revenue(String),
    /// Billed but not yet earned revenue of a plan (liability).
    DeferredRevenue(String),
    /// Tax collected for a jurisdiction (liability).
    TaxPayable(String),
    /// Discounts given (contra-income).
    Discounts,
    /// Refunds and credit notes given (contra-income).
    Refunds,
    /// Disputed amounts taken back by the card network (contra-income): a
    /// dispute lost.
    Disputes,
    /// Money the card network withheld for an open dispute (asset): back in the
    /// gateway balance if it is won, moved to [`Account::Disputes`] if it is lost.
    DisputedFunds,
    /// The fees the payment provider charges for disputes (expense).
    DisputeFees,
    /// Credit owed to customers, e.g. from a downgrade (liability).
    CustomerCredit,
    /// Receivables written off as uncollectible (expense).
    BadDebt,
}

impl fmt::Display for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Account::AccountsReceivable => f.write_str("accounts_receivable"),
            Account::GatewayBalance => f.write_str("gateway_balance"),
            Account::Revenue(plan) => write!(f, "revenue:{plan}"),
            Account::DeferredRevenue(plan) => write!(f, "deferred_revenue:{plan}"),
            Account::TaxPayable(place) => write!(f, "tax_payable:{place}"),
            Account::Discounts => f.write_str("discounts"),
            Account::Refunds => f.write_str("refunds"),
            Account::Disputes => f.write_str("disputes"),
            Account::DisputedFunds => f.write_str("disputed_funds"),
            Account::DisputeFees => f.write_str("dispute_fees"),
            Account::CustomerCredit => f.write_str("customer_credit"),
            Account::BadDebt => f.write_str("bad_debt"),
        }
    }
}

impl FromStr for Account {
    type Err = DomainError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let keyed = |key: &str, make: fn(String) -> Account| {
            if key.is_empty() {
                Err(DomainError::InvalidField {
                    field: "account",
                    reason: format!("{text:?} needs a key after ':'"),
                })
            } else {
                Ok(make(key.to_owned()))
            }
        };
        match text.split_once(':') {
            Some(("revenue", key)) => keyed(key, Account::Revenue),
            Some(("deferred_revenue", key)) => keyed(key, Account::DeferredRevenue),
            Some(("tax_payable", key)) => keyed(key, Account::TaxPayable),
            None => match text {
                "accounts_receivable" => Ok(Account::AccountsReceivable),
                "gateway_balance" => Ok(Account::GatewayBalance),
                "discounts" => Ok(Account::Discounts),
                "refunds" => Ok(Account::Refunds),
                "disputes" => Ok(Account::Disputes),
                "disputed_funds" => Ok(Account::DisputedFunds),
                "dispute_fees" => Ok(Account::DisputeFees),
                "customer_credit" => Ok(Account::CustomerCredit),
                "bad_debt" => Ok(Account::BadDebt),
                _ => Err(DomainError::InvalidField {
                    field: "account",
                    reason: format!("unknown account {text:?}"),
                }),
            },
            Some(_) => Err(DomainError::InvalidField {
                field: "account",
                reason: format!("unknown account {text:?}"),
            }),
        }
    }
}

impl Serialize for Account {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Account {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Debit or credit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// Increases assets and expenses.
    Debit,
    /// Increases liabilities and income.
    Credit,
}

/// One journal entry line: an account, a side and a positive amount.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Posting {
    /// The account.
    pub account: Account,
    /// Debit or credit.
    pub side: Side,
    /// Always positive, in minor units of its currency.
    pub amount: Money,
}

impl Posting {
    /// The amount signed: debit positive, credit negative.
    pub fn signed(&self) -> Money {
        match self.side {
            Side::Debit => self.amount,
            Side::Credit => -self.amount,
        }
    }
}

/// Builds one event's postings; [`Journal::finish`] checks they balance.
#[derive(Debug, Default)]
pub struct Journal {
    postings: Vec<Posting>,
}

impl Journal {
    /// An empty journal.
    pub fn new() -> Self {
        Self::default()
    }

    /// Debits `amount` (a negative amount credits its magnitude; zero is skipped).
    pub fn debit(&mut self, account: Account, amount: Money) -> &mut Self {
        self.post(account, amount);
        self
    }

    /// Credits `amount` (a negative amount debits its magnitude; zero is skipped).
    pub fn credit(&mut self, account: Account, amount: Money) -> &mut Self {
        self.post(account, -amount);
        self
    }

    fn post(&mut self, account: Account, signed: Money) {
        if signed.is_zero() {
            return;
        }
        let (side, amount) = if signed.is_negative() {
            (Side::Credit, -signed)
        } else {
            (Side::Debit, signed)
        };
        self.postings.push(Posting {
            account,
            side,
            amount,
        });
    }

    /// The postings, after checking that debits equal credits per currency and
    /// that every amount is in whole minor units.
    ///
    /// # Errors
    /// [`DomainError::InvalidField`] with the imbalance: a bug in the caller,
    /// surfaced before anything is written.
    pub fn finish(self) -> Result<Vec<Posting>, DomainError> {
        check_balanced(&self.postings)?;
        Ok(self.postings)
    }
}

/// Checks that `postings` balance per currency and are in whole minor units.
///
/// # Errors
/// [`DomainError::InvalidField`] naming the currency and the difference.
pub fn check_balanced(postings: &[Posting]) -> Result<(), DomainError> {
    let mut sums: BTreeMap<&'static str, Money> = BTreeMap::new();
    for posting in postings {
        posting.amount.to_minor()?;
        if !posting.amount.is_positive() {
            return Err(DomainError::InvalidField {
                field: "posting",
                reason: format!("{} has a non-positive amount", posting.account),
            });
        }
        let currency = posting.amount.currency();
        let entry = sums
            .entry(currency.code())
            .or_insert_with(|| Money::zero(currency));
        *entry = entry.checked_add(posting.signed())?;
    }
    match sums.into_iter().find(|(_, sum)| !sum.is_zero()) {
        None => Ok(()),
        Some((code, sum)) => Err(DomainError::InvalidField {
            field: "postings",
            reason: format!("debits exceed credits by {} {code}", sum.amount()),
        }),
    }
}

/// Balances per account and currency, summed from postings: the trial balance.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrialBalance {
    balances: BTreeMap<(Account, &'static str), Money>,
}

impl TrialBalance {
    /// Adds one event's postings.
    ///
    /// # Errors
    /// Money overflow or a currency clash (impossible with checked postings).
    pub fn add(&mut self, postings: &[Posting]) -> Result<(), DomainError> {
        for posting in postings {
            let currency = posting.amount.currency();
            let entry = self
                .balances
                .entry((posting.account.clone(), currency.code()))
                .or_insert_with(|| Money::zero(currency));
            *entry = entry.checked_add(posting.signed())?;
        }
        Ok(())
    }

    /// The balance of an account (debit positive) in `currency`.
    pub fn balance(&self, account: &Account, currency: Currency) -> Money {
        self.balances
            .get(&(account.clone(), currency.code()))
            .copied()
            .unwrap_or_else(|| Money::zero(currency))
    }

    /// Debits minus credits over all accounts, per currency: zero when the books balance.
    pub fn totals(&self) -> BTreeMap<&'static str, Decimal> {
        let mut totals = BTreeMap::new();
        for ((_, code), money) in &self.balances {
            *totals.entry(*code).or_insert(Decimal::ZERO) += money.amount();
        }
        totals
    }

    /// True when every currency nets to zero.
    pub fn is_balanced(&self) -> bool {
        self.totals().values().all(Decimal::is_zero)
    }

    /// Every non-zero balance, by account.
    pub fn accounts(&self) -> impl Iterator<Item = (&Account, Money)> {
        self.balances
            .iter()
            .filter(|(_, m)| !m.is_zero())
            .map(|((account, _), money)| (account, *money))
    }
}
