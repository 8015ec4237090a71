//! The read models' database: the ledger's own (Postgres or SQLite), reached
//! through one small portable statement type so each projection writes its SQL
//! once. Statements use `?` placeholders; Postgres gets `$1, $2, …`.

use recur_ledger::Ledger;
use sqlx::{PgPool, Row, SqlitePool};

/// A bound value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// A 64-bit integer.
    Int(i64),
    /// Text.
    Text(String),
    /// NULL.
    Null,
}

impl Value {
    /// The integer, or 0 for text and NULL (sums of nothing come back NULL).
    pub fn int(&self) -> i64 {
        match self {
            Value::Int(v) => *v,
            _ => 0,
        }
    }

    /// The text, or empty for integers and NULL.
    pub fn text(&self) -> String {
        match self {
            Value::Text(t) => t.clone(),
            _ => String::new(),
        }
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_owned())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}

/// One statement with its parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stmt {
    /// SQL with `?` placeholders.
    pub sql: String,
    /// Parameters, in order.
    pub params: Vec<Value>,
    /// The rows it must change, or the whole transaction is rolled back.
    pub expect_rows: Option<u64>,
    /// A statement that sets a row's whole state: within one batch only the last
    /// statement with the same key is executed.
    pub key: Option<String>,
}

impl Stmt {
    /// A statement.
    pub fn new(sql: impl Into<String>, params: Vec<Value>) -> Self {
        Self {
            sql: sql.into(),
            params,
            expect_rows: None,
            key: None,
        }
    }

    /// The same statement, superseded by any later one with the same `key` in a batch.
    #[must_use]
    pub fn keyed(mut self, key: String) -> Self {
        self.key = Some(key);
        self
    }

    /// The same statement, which must change exactly `rows` rows.
    #[must_use]
    pub fn expecting(mut self, rows: u64) -> Self {
        self.expect_rows = Some(rows);
        self
    }
}

/// Why a read-model write or read failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The database refused or failed.
    #[error("read model database: {0}")]
    Sql(#[from] sqlx::Error),
    /// A guarded statement changed another number of rows (someone else moved on).
    #[error("a guarded write changed {changed} rows, not {expected}: another writer moved on")]
    Guard {
        /// Expected.
        expected: u64,
        /// Changed.
        changed: u64,
    },
}

/// The database the read models live in.
#[derive(Clone, Debug)]
pub enum Db {
    /// Postgres.
    Postgres(PgPool),
    /// SQLite (the ledger's single writer connection).
    Sqlite(SqlitePool),
}

/// `?` → `$n`.
fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push('$');
            out.push_str(&n.to_string());
        } else {
            out.push(c);
        }
    }
    out
}

/// Fails when a guarded statement changed another number of rows; the caller's
/// transaction is then dropped, which rolls it back.
fn guard(stmt: &Stmt, changed: u64) -> Result<(), DbError> {
    match stmt.expect_rows {
        Some(expected) if expected != changed => Err(DbError::Guard { expected, changed }),
        _ => Ok(()),
    }
}

/// A row read back: columns as [`Value`]s.
pub type Rows = Vec<Vec<Value>>;

impl Db {
    /// The ledger's database.
    pub fn of(ledger: &Ledger) -> Option<Self> {
        ledger
            .raw_postgres()
            .map(|pool| Db::Postgres(pool.clone()))
            .or_else(|| ledger.raw_sqlite().map(|pool| Db::Sqlite(pool.clone())))
    }

    /// Runs statements in one transaction.
    ///
    /// # Errors
    /// Database errors; nothing is written then.
    pub async fn transaction(&self, statements: &[Stmt]) -> Result<(), DbError> {
        match self {
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                for stmt in statements {
                    let sql = numbered(&stmt.sql);
                    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
                    for param in &stmt.params {
                        query = match param {
                            Value::Int(v) => query.bind(*v),
                            Value::Text(v) => query.bind(v.clone()),
                            Value::Null => query.bind(None::<String>),
                        };
                    }
                    let changed = query.execute(&mut *tx).await?.rows_affected();
                    guard(stmt, changed)?;
                }
                tx.commit().await?;
            }
            Db::Sqlite(pool) => {
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                for stmt in statements {
                    let mut query = sqlx::query(sqlx::AssertSqlSafe(stmt.sql.clone()));
                    for param in &stmt.params {
                        query = match param {
                            Value::Int(v) => query.bind(*v),
                            Value::Text(v) => query.bind(v.clone()),
                            Value::Null => query.bind(None::<String>),
                        };
                    }
                    let changed = query.execute(&mut *tx).await?.rows_affected();
                    guard(stmt, changed)?;
                }
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// Reads rows whose columns are all integers or text (`kinds`: 'i' or 't' per column).
    ///
    /// # Errors
    /// Database errors.
    pub async fn query(&self, stmt: &Stmt, kinds: &str) -> Result<Rows, DbError> {
        macro_rules! run {
            ($pool:expr, $sql:expr) => {{
                let mut query = sqlx::query(sqlx::AssertSqlSafe($sql));
                for param in &stmt.params {
                    query = match param {
                        Value::Int(v) => query.bind(*v),
                        Value::Text(v) => query.bind(v.clone()),
                        Value::Null => query.bind(None::<String>),
                    };
                }
                let rows = query.fetch_all($pool).await?;
                let mut out = Vec::with_capacity(rows.len());
                for row in rows {
                    let mut values = Vec::with_capacity(kinds.len());
                    for (i, kind) in kinds.chars().enumerate() {
                        values.push(match kind {
                            'i' => row
                                .try_get::<Option<i64>, _>(i)?
                                .map_or(Value::Null, Value::Int),
                            _ => row
                                .try_get::<Option<String>, _>(i)?
                                .map_or(Value::Null, Value::Text),
                        });
                    }
                    out.push(values);
                }
                out
            }};
        }
        Ok(match self {
            Db::Postgres(pool) => run!(pool, numbered(&stmt.sql)),
            Db::Sqlite(pool) => run!(pool, stmt.sql.clone()),
        })
    }
}

/// Drops every keyed statement that a later statement with the same key supersedes.
pub fn supersede(writes: Vec<Stmt>) -> Vec<Stmt> {
    let mut last: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (index, stmt) in writes.iter().enumerate() {
        if let Some(key) = &stmt.key {
            last.insert(key.as_str(), index);
        }
    }
    let keep: Vec<bool> = writes
        .iter()
        .enumerate()
        .map(|(index, stmt)| {
            stmt.key
                .as_deref()
                .is_none_or(|key| last.get(key) == Some(&index))
        })
        .collect();
    writes
        .into_iter()
        .zip(keep)
        .filter_map(|(stmt, keep)| keep.then_some(stmt))
        .collect()
}
