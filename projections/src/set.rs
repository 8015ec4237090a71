//! Every projection Recur has, run together.

use recur_ledger::{Ledger, Position};

use crate::accounts::Accounts;
use crate::customers::Customers;
use crate::mrr::Mrr;
use crate::revenue::Revenue;
use crate::runtime::{ProjectionError, Projector};

/// The names, as `recur projections` takes them.
pub const NAMES: &[&str] = &["mrr", "accounts", "customers", "revenue"];

/// All projections over one ledger.
pub struct Projections {
    /// MRR and movements.
    pub mrr: Projector<Mrr>,
    /// Account balances.
    pub accounts: Projector<Accounts>,
    /// The customer view.
    pub customers: Projector<Customers>,
    /// Revenue recognition.
    pub revenue: Projector<Revenue>,
}

impl Projections {
    /// Opens them all (rebuilding any whose version changed).
    ///
    /// # Errors
    /// Database errors.
    pub async fn open(ledger: &Ledger) -> Result<Self, ProjectionError> {
        Ok(Self {
            mrr: Projector::open(ledger.clone(), Mrr::new()).await?,
            accounts: Projector::open(ledger.clone(), Accounts::new()).await?,
            customers: Projector::open(ledger.clone(), Customers::new()).await?,
            revenue: Projector::open(ledger.clone(), Revenue::new()).await?,
        })
    }

    /// Catches them all up; returns the first error after trying each.
    ///
    /// # Errors
    /// The first projection error.
    pub async fn catch_up(&mut self) -> Result<(), ProjectionError> {
        let results = [
            self.mrr.catch_up().await,
            self.accounts.catch_up().await,
            self.customers.catch_up().await,
            self.revenue.catch_up().await,
        ];
        match results.into_iter().find_map(Result::err) {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// The lowest position they have all reached.
    pub fn position(&self) -> Position {
        self.mrr
            .position()
            .min(self.accounts.position())
            .min(self.customers.position())
            .min(self.revenue.position())
    }

    /// (name, version, position) of each.
    pub fn status(&self) -> Vec<(&'static str, u32, Position)> {
        vec![
            (
                self.mrr.describe().0,
                self.mrr.describe().1,
                self.mrr.position(),
            ),
            (
                self.accounts.describe().0,
                self.accounts.describe().1,
                self.accounts.position(),
            ),
            (
                self.customers.describe().0,
                self.customers.describe().1,
                self.customers.position(),
            ),
            (
                self.revenue.describe().0,
                self.revenue.describe().1,
                self.revenue.position(),
            ),
        ]
    }
}
