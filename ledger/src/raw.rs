//! Raw database access for the few tools that must step around the API: the
//! benchmark's raw-SQL baseline and the tests that tamper with stored rows.
//! Nothing in the product writes through these.

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
