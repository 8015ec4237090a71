//! A rebuild's SQLite shadow, written through plain SQLite calls.
//!
//! Through sqlx every statement is a message to the connection's worker thread and
//! back, so many single-row writes were merged into multi-row statements (each row
//! count a new statement to prepare). A shadow has one writer, this process, so
//! here each single-row statement runs as it is, prepared once and cached, on the
//! calling thread.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, OpenFlags, ToSql, TransactionBehavior};

use crate::db::{DbError, Rows, Stmt, Value, guard, row_values};

/// Prepared statements kept per connection: each projection writes a handful.
const STATEMENTS_CACHED_MAX: usize = 64;

/// One SQLite file and its only connection.
#[derive(Clone)]
pub struct SqliteFile {
    conn: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for SqliteFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteFile").finish_non_exhaustive()
    }
}

impl ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Int(v) => ValueRef::Integer(*v),
            Value::Text(v) => ValueRef::Text(v.as_bytes()),
            Value::Null => ValueRef::Null,
        }))
    }
}

impl SqliteFile {
    /// Creates (or opens) the file. Nothing in it needs durability: a shadow that
    /// does not reach its switch is thrown away.
    ///
    /// # Errors
    /// SQLite cannot open or configure the file.
    pub fn create(path: &Path) -> Result<Self, DbError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "OFF")?;
        conn.set_prepared_statement_cache_capacity(STATEMENTS_CACHED_MAX);
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `statements` in one transaction; a guard that fails rolls it back.
    ///
    /// # Errors
    /// SQLite errors, [`DbError::Guard`].
    pub fn transaction(&self, statements: &[Stmt]) -> Result<(), DbError> {
        blocking(|| {
            let mut conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            for stmt in statements {
                let changed = tx
                    .prepare_cached(&stmt.sql)?
                    .execute(rusqlite::params_from_iter(&stmt.params))?;
                guard(stmt, changed as u64)?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// Reads rows whose columns are all integers or text (`kinds`: 'i' or 't' per column).
    ///
    /// # Errors
    /// SQLite errors.
    pub fn query(&self, stmt: &Stmt, kinds: &str) -> Result<Rows, DbError> {
        blocking(|| {
            let conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
            let mut query = conn.prepare_cached(&stmt.sql)?;
            let mut rows = query.query(rusqlite::params_from_iter(&stmt.params))?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                out.push(row_values(
                    kinds,
                    |i| row.get::<_, Option<i64>>(i),
                    |i| row.get::<_, Option<String>>(i),
                )?);
            }
            Ok(out)
        })
    }
}

/// Runs SQLite work that blocks: on a multi-threaded runtime the worker hands its
/// other tasks over first; elsewhere (a test's current-thread runtime) in place.
fn blocking<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|handle| handle.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}
