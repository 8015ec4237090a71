//! Every projection Recur has, run together.

use recur_ledger::{Ledger, Position};

use crate::accounts::Accounts;
use crate::customers::Customers;
use crate::db::Db;
use crate::dunning::Dunning;
use crate::mrr::Mrr;
use crate::revenue::Revenue;
use crate::runtime::{Applier, ApplyBatch, Projection, ProjectionError, Projector, Rebuild, feed};

/// The names, as `recur projections` takes them.
pub const NAMES: &[&str] = &["mrr", "accounts", "customers", "revenue", "dunning"];

/// Each projection's name and the version it stores, with this process's settings.
pub fn versions() -> Vec<(&'static str, u32)> {
    vec![
        (Mrr::NAME, Mrr::new().stored_version()),
        (Accounts::NAME, Accounts::new().stored_version()),
        (Customers::NAME, Customers::new().stored_version()),
        (Revenue::NAME, Revenue::new().stored_version()),
        (Dunning::NAME, Dunning::new().stored_version()),
    ]
}

/// A projection's stored checkpoint, read without opening (or rebuilding) it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The projection.
    pub name: &'static str,
    /// Its code version.
    pub code_version: u32,
    /// The version its tables were built by; None before its first run.
    pub stored_version: Option<u32>,
    /// The last applied position.
    pub position: Position,
}

/// Every projection's checkpoint in `db`.
///
/// # Errors
/// Database errors.
pub async fn checkpoints(db: &Db) -> Result<Vec<Checkpoint>, ProjectionError> {
    crate::runtime::ensure_checkpoints(db).await?;
    let rows: Vec<(String, u64, u64)> = db
        .rows(&crate::db::Stmt::new(
            "SELECT name, version, position FROM projection_checkpoints",
            vec![],
        ))
        .await?;
    versions()
        .into_iter()
        .map(|(name, code_version)| {
            let row = rows.iter().find(|(stored, ..)| stored.as_str() == name);
            let stored_version = row
                .map(|(_, version, _)| {
                    u32::try_from(*version).map_err(|_| ProjectionError::Event {
                        projection: name,
                        position: 0,
                        message: format!("checkpoint version {version} is no version"),
                    })
                })
                .transpose()?;
            Ok(Checkpoint {
                name,
                code_version,
                stored_version,
                position: Position(row.map_or(0, |(.., position)| *position)),
            })
        })
        .collect()
}

/// What [`apply_all`] hands back: each applier, or why it stopped.
type Applied<M, A, C, R, D> = (
    Result<M, ProjectionError>,
    Result<A, ProjectionError>,
    Result<C, ProjectionError>,
    Result<R, ProjectionError>,
    Result<D, ProjectionError>,
);

/// Reads the ledger once from the first event up to `until` and applies each
/// page to all five, each on a task of its own; the reader's result (events read)
/// and each applier back.
async fn apply_all<M: ApplyBatch, A: ApplyBatch, C: ApplyBatch, R: ApplyBatch, D: ApplyBatch>(
    ledger: &Ledger,
    until: Position,
    (mrr, accounts, customers, revenue, dunning): (M, A, C, R, D),
    progress: impl FnMut(Position, u64),
) -> (Result<u64, ProjectionError>, Applied<M, A, C, R, D>) {
    let (mrr, accounts, customers, revenue, dunning) = (
        Applier::spawn(mrr),
        Applier::spawn(accounts),
        Applier::spawn(customers),
        Applier::spawn(revenue),
        Applier::spawn(dunning),
    );
    let pages = vec![
        mrr.pages(),
        accounts.pages(),
        customers.pages(),
        revenue.pages(),
        dunning.pages(),
    ];
    let fed = feed(ledger, until, pages, progress).await;
    let applied = (
        mrr.finish().await,
        accounts.finish().await,
        customers.finish().await,
        revenue.finish().await,
        dunning.finish().await,
    );
    (fed, applied)
}

/// Drops a rebuild's shadow; passes its error on.
async fn abandon<P: Projection>(
    rebuild: Result<Rebuild<P>, ProjectionError>,
) -> Result<(), ProjectionError> {
    match rebuild {
        Ok(rebuild) => {
            rebuild.abandon().await;
            Ok(())
        }
        Err(error) => Err(error),
    }
}

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
    /// The recovery read model.
    pub dunning: Projector<Dunning>,
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
            dunning: Projector::open(ledger.clone(), Dunning::new()).await?,
        })
    }

    /// The read models as they stood at ledger position `at`: every projection
    /// built from the first event up to `at` in a private in-memory database, which
    /// the same queries as the live tables can read.
    ///
    /// # Errors
    /// Ledger, database and event errors.
    pub async fn as_of(ledger: &Ledger, at: Position) -> Result<Db, ProjectionError> {
        let db = Db::scratch().await?;
        let all = (
            Projector::<Mrr>::fresh(ledger.clone(), db.clone()).await?,
            Projector::<Accounts>::fresh(ledger.clone(), db.clone()).await?,
            Projector::<Customers>::fresh(ledger.clone(), db.clone()).await?,
            Projector::<Revenue>::fresh(ledger.clone(), db.clone()).await?,
            Projector::<Dunning>::fresh(ledger.clone(), db.clone()).await?,
        );
        let (fed, (mrr, accounts, customers, revenue, dunning)) =
            apply_all(ledger, at, all, |_, _| {}).await;
        // A projection's own error says more than the reader's.
        mrr?;
        accounts?;
        customers?;
        revenue?;
        dunning?;
        fed?;
        Ok(db)
    }

    /// Rebuilds every projection from the first event, reading the ledger once
    /// and applying on a task per projection: each builds in its shadow while the
    /// tables in use keep serving, then each switches in its own transaction and
    /// catches up. `progress(position, read)` is called after each page.
    ///
    /// # Errors
    /// Ledger, database and event errors; the tables in use are then unchanged.
    pub async fn rebuild_with(
        &mut self,
        progress: impl FnMut(Position, u64),
    ) -> Result<u64, ProjectionError> {
        let ledger = self.mrr.ledger().clone();
        let all = (
            self.mrr.start_rebuild().await?,
            self.accounts.start_rebuild().await?,
            self.customers.start_rebuild().await?,
            self.revenue.start_rebuild().await?,
            self.dunning.start_rebuild().await?,
        );
        match apply_all(&ledger, Position(u64::MAX), all, progress).await {
            (Ok(read), (Ok(mrr), Ok(accounts), Ok(customers), Ok(revenue), Ok(dunning))) => {
                self.mrr.finish_rebuild(mrr).await?;
                self.accounts.finish_rebuild(accounts).await?;
                self.customers.finish_rebuild(customers).await?;
                self.revenue.finish_rebuild(revenue).await?;
                self.dunning.finish_rebuild(dunning).await?;
                Ok(read)
            }
            (fed, (mrr, accounts, customers, revenue, dunning)) => {
                let mut first = None;
                for result in [
                    abandon(mrr).await,
                    abandon(accounts).await,
                    abandon(customers).await,
                    abandon(revenue).await,
                    abandon(dunning).await,
                    fed.map(|_| ()),
                ] {
                    if let (None, Err(error)) = (&first, result) {
                        first = Some(error);
                    }
                }
                Err(first.unwrap_or(ProjectionError::Task("a rebuild stopped".into())))
            }
        }
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
            self.dunning.catch_up().await,
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
            .min(self.dunning.position())
    }

    /// (name, version, position) of each, as this process holds them.
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
            (
                self.dunning.describe().0,
                self.dunning.describe().1,
                self.dunning.position(),
            ),
        ]
    }
}
