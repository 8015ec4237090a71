//! Account balances from the postings every financial event carries: the trial
//! balance now, and as of the end of any day (from daily debit and credit sums).

use recur_commands::invoice::InvoiceEvent;
use recur_commands::postings::Side;
use recur_ledger::{Ledger, Position};

use crate::db::{Db, Stmt};
use crate::runtime::{Delivered, Projection, ProjectionError};

/// Debits and credits per account, currency and day.
pub const DAILY: &str = "account_daily_v1";

/// The accounts projection.
#[derive(Default)]
pub struct Accounts {
    /// This batch's sums per (day, account, currency), written once at flush.
    pending: std::collections::BTreeMap<(String, String, String), (i64, i64)>,
}

impl Accounts {
    /// A fresh projection.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Projection for Accounts {
    const NAME: &'static str = "accounts";
    const VERSION: u32 = 1;

    fn tables(&self) -> Vec<&'static str> {
        vec![DAILY]
    }

    fn schema(&self) -> Vec<Stmt> {
        vec![Stmt::new(
            format!(
                "CREATE TABLE IF NOT EXISTS {DAILY} (day TEXT NOT NULL, account TEXT NOT NULL, currency TEXT NOT NULL,
                 debit_minor BIGINT NOT NULL, credit_minor BIGINT NOT NULL, PRIMARY KEY (day, account, currency))"
            ),
            vec![],
        )]
    }

    fn flush(&mut self, writes: &mut Vec<Stmt>) {
        for ((day, account, currency), (debit, credit)) in std::mem::take(&mut self.pending) {
            writes.push(Stmt::new(
                format!(
                    "INSERT INTO {DAILY} (day, account, currency, debit_minor, credit_minor) VALUES (?, ?, ?, ?, ?)
                     ON CONFLICT (day, account, currency) DO UPDATE SET
                     debit_minor = {DAILY}.debit_minor + excluded.debit_minor,
                     credit_minor = {DAILY}.credit_minor + excluded.credit_minor"
                ),
                vec![day.into(), account.into(), currency.into(), debit.into(), credit.into()],
            ));
        }
    }

    async fn load(
        &mut self,
        _db: &Db,
        _ledger: &Ledger,
        _at: Position,
    ) -> Result<(), ProjectionError> {
        self.pending.clear();
        Ok(())
    }

    async fn apply(
        &mut self,
        event: &Delivered,
        _ledger: &Ledger,
        _writes: &mut Vec<Stmt>,
    ) -> Result<(), ProjectionError> {
        if event.stream_id.category() != "invoice" {
            return Ok(());
        }
        let decoded = event.decoded::<InvoiceEvent>(Self::NAME)?;
        let day = event.recorded_at.date().to_string();
        for posting in decoded.postings() {
            let minor = posting
                .amount
                .to_minor()
                .map_err(|e| ProjectionError::Domain {
                    projection: Self::NAME,
                    position: event.position.0,
                    source: e.into(),
                })?;
            let (debit, credit) = match posting.side {
                Side::Debit => (minor, 0),
                Side::Credit => (0, minor),
            };
            let entry = self
                .pending
                .entry((
                    day.clone(),
                    posting.account.to_string(),
                    posting.amount.currency().code().to_owned(),
                ))
                .or_default();
            entry.0 += debit;
            entry.1 += credit;
        }
        Ok(())
    }
}

/// One account's balance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Balance {
    /// The account (`revenue:community_access`).
    pub account: String,
    /// ISO currency.
    pub currency: String,
    /// Sum of debits, minor units.
    pub debit_minor: i64,
    /// Sum of credits, minor units.
    pub credit_minor: i64,
}

/// Balances of every account as of the end of `day` (inclusive), or now.
///
/// # Errors
/// Database errors.
pub async fn trial_balance(
    db: &Db,
    as_of: Option<&str>,
) -> Result<Vec<Balance>, crate::db::DbError> {
    let (filter, params) = match as_of {
        Some(day) => ("WHERE day <= ?", vec![day.into()]),
        None => ("", vec![]),
    };
    let rows: Vec<(String, String, i64, i64)> = db
        .rows(&Stmt::new(
            format!(
                "SELECT account, currency, CAST(SUM(debit_minor) AS BIGINT), CAST(SUM(credit_minor) AS BIGINT)
                 FROM {DAILY} {filter} GROUP BY account, currency ORDER BY account, currency"
            ),
            params,
        ))
        .await?;
    Ok(rows
        .into_iter()
        .map(|(account, currency, debit_minor, credit_minor)| Balance {
            account,
            currency,
            debit_minor,
            credit_minor,
        })
        .collect())
}
