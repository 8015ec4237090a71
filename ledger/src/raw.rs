//! Raw database access for what must step around the ledger's API: the read
//! models, which live in the ledger's database and write their own tables
//! through these pools (`recur_projections::db::Db::of`; never the ledger's
//! tables, which triggers keep append-only), the benchmark's raw-SQL baseline,
//! and the tests that tamper with stored rows.

use sqlx::{PgPool, SqlitePool};

use crate::store::{Backend, Ledger};

impl Ledger {
    /// The Postgres pool, when this store runs on Postgres.
    pub fn raw_postgres(&self) -> Option<&PgPool> {
        match self.backend() {
            Backend::Postgres(store) => Some(store.pool()),
            Backend::Sqlite(_) => None,
        }
    }

    /// The SQLite writer pool (one connection), when this store runs on SQLite.
    pub fn raw_sqlite(&self) -> Option<&SqlitePool> {
        match self.backend() {
            Backend::Sqlite(store) => Some(store.writer()),
            Backend::Postgres(_) => None,
        }
    }
}
