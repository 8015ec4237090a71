//! The read models' database: the ledger's own (Postgres or SQLite), reached
//! through one small portable statement type so each projection writes its SQL
//! once. Statements use `?` placeholders; Postgres gets `$1, $2, …`.

use std::str::FromStr;

use recur_ledger::Ledger;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{PgPool, Row, SqlitePool};

use crate::sqlite_file::SqliteFile;

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
    /// What the value is, for an error that says what was found.
    fn found(&self) -> String {
        match self {
            Value::Int(v) => format!("the integer {v}"),
            Value::Text(t) => format!("the text {:?}", t.chars().take(40).collect::<String>()),
            Value::Null => "NULL".into(),
        }
    }
}

/// Why one column's value is not of the type it is read as.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{expected} expected, {found} found")]
pub struct ColumnError {
    /// What the type needs: "an integer", "a count", "text", …
    pub expected: &'static str,
    /// What the column held, described: "NULL", "the integer -1", "the text \"x\"".
    pub found: String,
}

impl ColumnError {
    /// `expected`, and `value` described as found.
    pub fn new(expected: &'static str, value: &Value) -> Self {
        Self {
            expected,
            found: value.found(),
        }
    }
}

/// Why a read-model row is not the tuple it is read as.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RowError {
    /// A column holds another type.
    #[error("column {column}: {error}")]
    Column {
        /// The column's index (0-based).
        column: usize,
        /// What was expected and found.
        error: ColumnError,
    },
    /// The row has fewer columns than the tuple.
    #[error("{width} columns, more expected")]
    TooFew {
        /// Columns in the row.
        width: usize,
    },
    /// The row has more columns than the tuple.
    #[error("{width} columns, {expected} expected")]
    TooMany {
        /// Columns in the row.
        width: usize,
        /// Columns in the tuple.
        expected: usize,
    },
    /// No row was answered where one is due.
    #[error("no row answered")]
    Missing,
}

/// A Rust type one column of a read-model row is read as: the read checks it,
/// so an impossible state (NULL, text where a number belongs) is an error, not 0.
pub trait FromColumn: Sized {
    /// 'i' for an integer column, 't' for text.
    const KIND: char;
    /// The value as this type, or what was found instead.
    ///
    /// # Errors
    /// [`ColumnError`]: the value is not of this type.
    fn from_value(value: Value) -> Result<Self, ColumnError>;
}

impl FromColumn for i64 {
    const KIND: char = 'i';
    fn from_value(value: Value) -> Result<Self, ColumnError> {
        match value {
            Value::Int(v) => Ok(v),
            other => Err(ColumnError::new("an integer", &other)),
        }
    }
}

impl FromColumn for u64 {
    const KIND: char = 'i';
    fn from_value(value: Value) -> Result<Self, ColumnError> {
        match value {
            Value::Int(v) => u64::try_from(v).map_err(|_| ColumnError {
                expected: "a count",
                found: v.to_string(),
            }),
            other => Err(ColumnError::new("a count", &other)),
        }
    }
}

impl FromColumn for String {
    const KIND: char = 't';
    fn from_value(value: Value) -> Result<Self, ColumnError> {
        match value {
            Value::Text(t) => Ok(t),
            other => Err(ColumnError::new("text", &other)),
        }
    }
}

impl<T: FromColumn> FromColumn for Option<T> {
    const KIND: char = T::KIND;
    fn from_value(value: Value) -> Result<Self, ColumnError> {
        match value {
            Value::Null => Ok(None),
            value => T::from_value(value).map(Some),
        }
    }
}

/// A read-model row as a tuple of [`FromColumn`]s.
pub trait FromRow: Sized {
    /// The kinds of its columns, in order ('i' or 't').
    fn kinds() -> String;
    /// The row from its values, or the first column that is not what it should be.
    ///
    /// # Errors
    /// [`RowError`]: a column holds another type, or the row has another width.
    fn from_row(values: Vec<Value>) -> Result<Self, RowError>;
}

macro_rules! tuple_rows {
    ($($name:ident),+) => {
        impl<$($name: FromColumn),+> FromRow for ($($name,)+) {
            fn kinds() -> String {
                [$($name::KIND),+].iter().collect()
            }
            #[allow(non_snake_case, unused_assignments)]
            fn from_row(values: Vec<Value>) -> Result<Self, RowError> {
                let width = values.len();
                let mut values = values.into_iter();
                let mut column = 0usize;
                $(
                    let $name = $name::from_value(
                        values.next().ok_or(RowError::TooFew { width })?,
                    )
                    .map_err(|error| RowError::Column { column, error })?;
                    column += 1;
                )+
                if values.next().is_some() {
                    return Err(RowError::TooMany { width, expected: column });
                }
                Ok(($($name,)+))
            }
        }
    };
}

tuple_rows!(A);
tuple_rows!(A, B);
tuple_rows!(A, B, C);
tuple_rows!(A, B, C, D);
tuple_rows!(A, B, C, D, E);
tuple_rows!(A, B, C, D, E, F);
tuple_rows!(A, B, C, D, E, F, G);
tuple_rows!(A, B, C, D, E, F, G, H);
tuple_rows!(A, B, C, D, E, F, G, H, I);
tuple_rows!(A, B, C, D, E, F, G, H, I, J);
tuple_rows!(A, B, C, D, E, F, G, H, I, J, K);
tuple_rows!(A, B, C, D, E, F, G, H, I, J, K, L);
tuple_rows!(A, B, C, D, E, F, G, H, I, J, K, L, M);
tuple_rows!(A, B, C, D, E, F, G, H, I, J, K, L, M, N);

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
    #[error("read model database")]
    Sql(#[from] sqlx::Error),
    /// A rebuild's SQLite shadow refused or failed.
    #[error("read model database")]
    Sqlite(#[from] rusqlite::Error),
    /// Something this kind of database cannot do.
    #[error("{0}")]
    Unsupported(&'static str),
    /// A row read back is not what the read model holds: a bug or a damaged table.
    #[error("read model row {row} of `{query}`: {reason}")]
    Corrupt {
        /// The statement's start.
        query: String,
        /// The row's index in the answer (0-based).
        row: usize,
        /// Which column, and what was found instead of what.
        reason: RowError,
    },
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
    /// A rebuild's SQLite shadow file, written only by this process.
    SqliteFile(SqliteFile),
}

/// Binds a statement's parameters, in order (the same for both databases).
macro_rules! bind {
    ($query:expr, $params:expr) => {{
        let mut query = $query;
        for param in &$params {
            query = match param {
                Value::Int(v) => query.bind(*v),
                Value::Text(v) => query.bind(v.as_str()),
                Value::Null => query.bind(None::<String>),
            };
        }
        query
    }};
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
pub(crate) fn guard(stmt: &Stmt, changed: u64) -> Result<(), DbError> {
    match stmt.expect_rows {
        Some(expected) if expected != changed => Err(DbError::Guard { expected, changed }),
        _ => Ok(()),
    }
}

/// Parameters one merged statement binds at most (SQLite allows 32,766; Postgres 65,535).
const MERGED_PARAMS_MAX: usize = 30_000;
/// Rows one merged statement inserts at most.
const MERGED_ROWS_MAX: usize = 500;

/// A statement that can take more rows, split around its one row: `(prefix,
/// item, tail)` where `item` repeats, comma-separated. Two shapes:
/// `INSERT … VALUES (?, …) …` (the item is the row) and `DELETE … IN (?)` (the
/// item is the `?`).
fn mergeable(sql: &str) -> Option<(&str, &str, &str)> {
    let trimmed = sql.trim_start();
    let (open, item_is_group) = if trimmed.starts_with("INSERT") {
        (sql.find("VALUES (")? + "VALUES ".len(), true)
    } else if trimmed.starts_with("DELETE") && sql.matches('?').count() == 1 {
        (sql.find("IN (?)")? + "IN (".len(), false)
    } else {
        return None;
    };
    let close = open + sql[open..].find(')')?;
    let group = &sql[open..=close];
    let only_placeholders = group[1..group.len() - 1]
        .chars()
        .all(|c| c == '?' || c == ',' || c.is_whitespace());
    if !only_placeholders {
        return None;
    }
    Some(if item_is_group {
        (&sql[..open], group, &sql[close + 1..])
    } else {
        (&sql[..open], "?", &sql[close..])
    })
}

/// Executes same-SQL single-row inserts as multi-row inserts (and same-SQL
/// single-key deletes as one `IN (…)`), so a batch costs a few statements
/// instead of one per row. Within one batch a projection writes
/// each row at most once (keyed statements supersede, flushes sum per key), so
/// the order among statements does not matter; Postgres refuses a multi-row
/// upsert that touches a row twice, which would show a projection breaking that rule.
/// Guarded statements and everything else keep their place.
pub fn merge(statements: &[Stmt]) -> Vec<Stmt> {
    let rows_max =
        |stmt: &Stmt| (MERGED_PARAMS_MAX / stmt.params.len().max(1)).clamp(1, MERGED_ROWS_MAX);
    let mut out = Vec::new();
    for group in groups(statements, rows_max) {
        match group {
            Group::One(stmt) => out.push(stmt.clone()),
            Group::Rows(rows) => {
                let Some((prefix, row, tail)) = mergeable(&rows[0].sql) else {
                    out.extend(rows.into_iter().cloned());
                    continue;
                };
                let items = vec![row; rows.len()].join(", ");
                let mut merged = rows[0].clone();
                merged.key = None;
                merged.sql = format!("{prefix}{items}{tail}");
                merged.params = rows.iter().flat_map(|r| r.params.iter().cloned()).collect();
                out.push(merged);
            }
        }
    }
    out
}

/// A place in a transaction: a statement as given, or single-row statements
/// with the same SQL to be written together.
enum Group<'a> {
    One(&'a Stmt),
    Rows(Vec<&'a Stmt>),
}

/// Groups same-SQL single-row inserts and single-key deletes (see [`mergeable`];
/// unguarded), at most `rows_max` per group, each group at the place of its first
/// row; everything else keeps its place. Within one batch a projection writes
/// each row at most once, so the order among them does not matter.
fn groups(statements: &[Stmt], rows_max: impl Fn(&Stmt) -> usize) -> Vec<Group<'_>> {
    let mut out: Vec<Group<'_>> = Vec::new();
    // SQL text → index in `out` of its open group.
    let mut open: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for stmt in statements {
        if stmt.expect_rows.is_some() || mergeable(&stmt.sql).is_none() {
            out.push(Group::One(stmt));
            continue;
        }
        match open.get(stmt.sql.as_str()).map(|&i| &mut out[i]) {
            Some(Group::Rows(rows)) if rows.len() < rows_max(stmt) => rows.push(stmt),
            _ => {
                open.insert(stmt.sql.as_str(), out.len());
                out.push(Group::Rows(vec![stmt]));
            }
        }
    }
    out
}

/// Rows one Postgres statement writes at most when bound as arrays.
const UNNEST_ROWS_MAX: usize = 10_000;

/// A write of a Postgres transaction: a statement as given, or same-SQL rows
/// bound as one array per column (`unnest`), so that every batch runs the same
/// few prepared statements whatever its row count. A multi-row `VALUES` list is
/// new SQL for each row count: parsed and planned again, thousands of parameters each.
enum PgWrite<'a> {
    One(&'a Stmt),
    Unnest { sql: String, columns: Vec<Column> },
}

/// One column of merged rows.
enum Column {
    Ints(Vec<Option<i64>>),
    Texts(Vec<Option<String>>),
}

impl Column {
    /// The parameter `index` of every row, if all are of one kind (or NULL).
    fn of(rows: &[&Stmt], index: usize) -> Option<Column> {
        let is_int = rows
            .iter()
            .any(|r| matches!(r.params[index], Value::Int(_)));
        let values = rows.iter().map(|r| &r.params[index]);
        if is_int {
            values
                .map(|v| match v {
                    Value::Int(i) => Some(Some(*i)),
                    Value::Null => Some(None),
                    Value::Text(_) => None,
                })
                .collect::<Option<Vec<_>>>()
                .map(Column::Ints)
        } else {
            Some(Column::Texts(
                values
                    .map(|v| match v {
                        Value::Text(t) => Some(t.clone()),
                        _ => None,
                    })
                    .collect(),
            ))
        }
    }

    fn cast(&self) -> &'static str {
        match self {
            Column::Ints(_) => "int8[]",
            Column::Texts(_) => "text[]",
        }
    }
}

/// Writes each of the [`groups`] as one [`PgWrite::Unnest`] (row by row if a
/// column mixes kinds); everything else keeps its place.
fn unnest(statements: &[Stmt]) -> Vec<PgWrite<'_>> {
    let mut out = Vec::new();
    for group in groups(statements, |_| UNNEST_ROWS_MAX) {
        match group {
            Group::One(stmt) => out.push(PgWrite::One(stmt)),
            Group::Rows(rows) => match unnested(rows[0], &rows) {
                Some(write) => out.push(write),
                None => out.extend(rows.into_iter().map(PgWrite::One)),
            },
        }
    }
    out
}

/// `rows` (statements with `first`'s SQL) as one statement over arrays; None if a
/// column mixes integers and text.
fn unnested<'a>(first: &Stmt, rows: &[&'a Stmt]) -> Option<PgWrite<'a>> {
    let (prefix, item, tail) = mergeable(&first.sql)?;
    let width = first.params.len();
    if width == 0 || rows.iter().any(|r| r.params.len() != width) {
        return None;
    }
    let columns = (0..width)
        .map(|index| Column::of(rows, index))
        .collect::<Option<Vec<_>>>()?;
    let arrays: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("${}::{}", i + 1, c.cast()))
        .collect();
    let sql = if item.starts_with('(') {
        // INSERT … VALUES (?, …) tail → INSERT … SELECT * FROM unnest(…) tail
        let head = prefix.trim_end().strip_suffix("VALUES")?.trim_end();
        format!("{head} SELECT * FROM unnest({}){tail}", arrays.join(", "))
    } else {
        // DELETE … IN (?) → DELETE … IN (SELECT unnest(…))
        format!("{prefix}SELECT unnest({}){tail}", arrays.join(", "))
    };
    Some(PgWrite::Unnest { sql, columns })
}

/// Runs statements in one SQLite transaction on `conn`.
async fn run_sqlite(
    conn: &mut sqlx::pool::PoolConnection<sqlx::Sqlite>,
    statements: &[Stmt],
) -> Result<(), DbError> {
    let mut tx = sqlx::Connection::begin_with(&mut **conn, "BEGIN IMMEDIATE").await?;
    for stmt in statements {
        let mut query = sqlx::query(sqlx::AssertSqlSafe(stmt.sql.clone()));
        query = bind!(query, stmt.params);
        let changed = query.execute(&mut *tx).await?.rows_affected();
        guard(stmt, changed)?;
    }
    tx.commit().await?;
    Ok(())
}

/// A row's columns as [`Value`]s, read by kind ('i' an integer, else text) with
/// `int` and `text`, whatever the driver.
pub(crate) fn row_values<E>(
    kinds: &str,
    int: impl Fn(usize) -> Result<Option<i64>, E>,
    text: impl Fn(usize) -> Result<Option<String>, E>,
) -> Result<Vec<Value>, E> {
    kinds
        .chars()
        .enumerate()
        .map(|(i, kind)| match kind {
            'i' => Ok(int(i)?.map_or(Value::Null, Value::Int)),
            _ => Ok(text(i)?.map_or(Value::Null, Value::Text)),
        })
        .collect()
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

    /// A private in-memory database: read models built for one question (as of a
    /// past position) and dropped with the value.
    ///
    /// # Errors
    /// SQLite cannot start.
    pub async fn scratch() -> Result<Self, DbError> {
        let options = SqliteConnectOptions::from_str("sqlite::memory:")?;
        // One connection that never closes: each in-memory connection is its own database.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await?;
        Ok(Db::Sqlite(pool))
    }

    /// An empty shadow for the read models of `name`, beside this database: a
    /// schema `recur_shadow_<name>` on Postgres, a file `<ledger>.shadow-<name>`
    /// on SQLite. A shadow left by an interrupted rebuild is dropped first.
    ///
    /// # Errors
    /// Database errors.
    pub async fn shadow(&self, name: &str) -> Result<Shadow, DbError> {
        let name = shadow_name(name);
        match self {
            Db::SqliteFile(_) => Err(DbError::Unsupported(
                "a rebuild's shadow cannot have a shadow of its own",
            )),
            Db::Postgres(pool) => {
                let schema = format!("recur_shadow_{name}");
                for sql in [
                    format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
                    format!("CREATE SCHEMA {schema}"),
                ] {
                    sqlx::query(sqlx::AssertSqlSafe(sql)).execute(pool).await?;
                }
                let options = (*pool.connect_options())
                    .clone()
                    .options([("search_path", schema.as_str())]);
                let shadow = PgPoolOptions::new()
                    .max_connections(2)
                    .connect_with(options)
                    .await?;
                Ok(Shadow {
                    db: Db::Postgres(shadow),
                    place: schema,
                })
            }
            Db::Sqlite(pool) => {
                let options = pool.connect_options();
                let live = options.get_filename().to_string_lossy().into_owned();
                // SQLite opens what an in-memory connection ATTACHes in memory too, so
                // its rows could not be adopted: a scratch is built fresh instead.
                if !std::path::Path::new(&live).is_file() {
                    return Err(DbError::Unsupported(
                        "an in-memory read-model database cannot be rebuilt beside itself; build a fresh one",
                    ));
                }
                let file = format!("{live}.shadow-{name}");
                remove_sqlite_files(&file);
                let shadow = SqliteFile::create(std::path::Path::new(&file))?;
                Ok(Shadow {
                    db: Db::SqliteFile(shadow),
                    place: file,
                })
            }
        }
    }

    /// Replaces `tables` with the shadow's and runs `then` (the checkpoint), in one
    /// transaction: readers see the old tables until it commits, the new ones after.
    /// `schema` creates the tables (SQLite copies rows into them; Postgres moves the
    /// shadow's tables in whole).
    ///
    /// # Errors
    /// Database errors; nothing changes then.
    pub async fn adopt(
        &self,
        shadow: &Shadow,
        tables: &[&str],
        schema: &[Stmt],
        then: &[Stmt],
    ) -> Result<(), DbError> {
        let mut statements = Vec::new();
        match self {
            Db::SqliteFile(_) => Err(DbError::Unsupported(
                "a rebuild's shadow cannot adopt another",
            )),
            Db::Postgres(pool) => {
                for table in tables {
                    statements.push(Stmt::new(format!("DROP TABLE IF EXISTS {table}"), vec![]));
                }
                let live: String = sqlx::query_scalar("SELECT current_schema()")
                    .fetch_one(pool)
                    .await?;
                for table in tables {
                    statements.push(Stmt::new(
                        format!("ALTER TABLE {}.{table} SET SCHEMA {live}", shadow.place),
                        vec![],
                    ));
                }
                statements.extend_from_slice(then);
                self.transaction(&statements).await
            }
            Db::Sqlite(pool) => {
                // Qualified: an unqualified name missing from main (a table this
                // version adds) would resolve to, and drop, the shadow's.
                for table in tables {
                    statements.push(Stmt::new(
                        format!("DROP TABLE IF EXISTS main.{table}"),
                        vec![],
                    ));
                }
                statements.extend_from_slice(schema);
                for table in tables {
                    statements.push(Stmt::new(
                        format!("INSERT INTO main.{table} SELECT * FROM shadow.{table}"),
                        vec![],
                    ));
                }
                statements.extend_from_slice(then);
                let mut conn = pool.acquire().await?;
                // ATTACH cannot run inside a transaction.
                sqlx::query("ATTACH DATABASE ? AS shadow")
                    .bind(&shadow.place)
                    .execute(&mut *conn)
                    .await?;
                let result = run_sqlite(&mut conn, &statements).await;
                let detached = sqlx::query("DETACH DATABASE shadow")
                    .execute(&mut *conn)
                    .await;
                result?;
                detached?;
                Ok(())
            }
        }
    }

    /// Runs statements in one transaction. Single-row inserts and single-key
    /// deletes with the same SQL run together: on SQLite as one multi-row
    /// statement (see [`merge`]), on Postgres bound as arrays (`unnest`). A
    /// SQLite shadow runs each statement as it is, prepared once.
    ///
    /// # Errors
    /// Database errors; nothing is written then.
    pub async fn transaction(&self, statements: &[Stmt]) -> Result<(), DbError> {
        match self {
            Db::SqliteFile(file) => file.transaction(statements)?,
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                for write in unnest(statements) {
                    match write {
                        PgWrite::One(stmt) => {
                            let sql = numbered(&stmt.sql);
                            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
                            query = bind!(query, stmt.params);
                            let changed = query.execute(&mut *tx).await?.rows_affected();
                            guard(stmt, changed)?;
                        }
                        PgWrite::Unnest { sql, columns } => {
                            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
                            for column in columns {
                                query = match column {
                                    Column::Ints(values) => query.bind(values),
                                    Column::Texts(values) => query.bind(values),
                                };
                            }
                            query.execute(&mut *tx).await?;
                        }
                    }
                }
                tx.commit().await?;
            }
            Db::Sqlite(pool) => {
                let mut conn = pool.acquire().await?;
                run_sqlite(&mut conn, &merge(statements)).await?;
            }
        }
        Ok(())
    }

    /// Reads rows as `T`, each column checked: an impossible value (NULL where
    /// none belongs, text where a number belongs) is [`DbError::Corrupt`] naming
    /// the row and column, never a silent default.
    ///
    /// # Errors
    /// Database errors; a row that is not a `T`.
    pub async fn rows<T: FromRow>(&self, stmt: &Stmt) -> Result<Vec<T>, DbError> {
        let rows = self.query(stmt, &T::kinds()).await?;
        let mut out = Vec::with_capacity(rows.len());
        for (row, values) in rows.into_iter().enumerate() {
            out.push(T::from_row(values).map_err(|reason| {
                DbError::Corrupt {
                    query: stmt
                        .sql
                        .split_whitespace()
                        .take(12)
                        .collect::<Vec<_>>()
                        .join(" "),
                    row,
                    reason,
                }
            })?);
        }
        Ok(out)
    }

    /// The one row a statement answers (an aggregate), checked as [`Db::rows`].
    ///
    /// # Errors
    /// Database errors; no row, or a row that is not a `T`.
    pub async fn row<T: FromRow>(&self, stmt: &Stmt) -> Result<T, DbError> {
        self.rows(stmt)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| DbError::Corrupt {
                query: stmt
                    .sql
                    .split_whitespace()
                    .take(12)
                    .collect::<Vec<_>>()
                    .join(" "),
                row: 0,
                reason: RowError::Missing,
            })
    }

    /// Reads rows as raw values (`kinds`: 'i' or 't' per column), for dumps and
    /// comparisons; typed reads use [`Db::rows`].
    ///
    /// # Errors
    /// Database errors.
    pub async fn query(&self, stmt: &Stmt, kinds: &str) -> Result<Rows, DbError> {
        macro_rules! run {
            ($pool:expr, $sql:expr) => {{
                let mut query = sqlx::query(sqlx::AssertSqlSafe($sql));
                query = bind!(query, stmt.params);
                let rows = query.fetch_all($pool).await?;
                let mut out = Vec::with_capacity(rows.len());
                for row in rows {
                    out.push(row_values(
                        kinds,
                        |i| row.try_get::<Option<i64>, _>(i),
                        |i| row.try_get::<Option<String>, _>(i),
                    )?);
                }
                out
            }};
        }
        Ok(match self {
            Db::Postgres(pool) => run!(pool, numbered(&stmt.sql)),
            Db::Sqlite(pool) => run!(pool, stmt.sql.clone()),
            Db::SqliteFile(file) => file.query(stmt, kinds)?,
        })
    }
}

/// A scratch copy of some read models, built beside the live ones: a rebuild
/// writes here while the live tables keep serving, then [`Db::adopt`] switches.
#[derive(Debug)]
pub struct Shadow {
    db: Db,
    /// Postgres: the schema; SQLite: the file.
    place: String,
}

impl Shadow {
    /// Where the projection writes while it is rebuilt.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Drops what is left of the shadow (after a switch, its empty schema or file).
    pub async fn discard(self) {
        match &self.db {
            Db::Postgres(pool) => {
                let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.place);
                if let Err(error) = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(pool).await {
                    tracing::warn!(error = %recur_ledger::Chain(&error), schema = %self.place, "could not drop a rebuild's schema");
                }
                pool.close().await;
            }
            Db::Sqlite(pool) => {
                pool.close().await;
                remove_sqlite_files(&self.place);
            }
            // The connection closes with the last clone; the files can go now.
            Db::SqliteFile(_) => remove_sqlite_files(&self.place),
        }
    }
}

fn remove_sqlite_files(path: &str) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let _ = std::fs::remove_file(format!("{path}{suffix}"));
    }
}

/// Names the shadow of `name` may take: lowercase letters, digits and `_` only.
fn shadow_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn an_impossible_value_is_an_error_naming_row_and_column_never_a_zero() {
        let db = Db::scratch().await.unwrap();
        db.transaction(&[
            Stmt::new(
                "CREATE TABLE t (name TEXT, amount BIGINT, kind TEXT)",
                vec![],
            ),
            Stmt::new(
                "INSERT INTO t VALUES ('a', 5, 'new'), ('b', NULL, 'gone')",
                vec![],
            ),
        ])
        .await
        .unwrap();
        let first = Stmt::new("SELECT name, amount FROM t WHERE name = 'a'", vec![]);
        let rows: Vec<(String, i64)> = db.rows(&first).await.unwrap();
        assert_eq!(rows, vec![("a".to_owned(), 5)]);
        let all = Stmt::new("SELECT name, amount FROM t ORDER BY name", vec![]);
        let error = db.rows::<(String, i64)>(&all).await.unwrap_err();
        let DbError::Corrupt { row, reason, .. } = &error else {
            panic!("{error}")
        };
        assert_eq!(*row, 1);
        assert_eq!(
            reason,
            &RowError::Column {
                column: 1,
                error: ColumnError {
                    expected: "an integer",
                    found: "NULL".into()
                }
            }
        );
        assert_eq!(
            reason.to_string(),
            "column 1: an integer expected, NULL found"
        );
        // Where NULL may be, it is None.
        let rows: Vec<(String, Option<i64>)> = db.rows(&all).await.unwrap();
        assert_eq!(rows[1], ("b".to_owned(), None));
        // A count cannot be negative.
        let negative = Stmt::new("SELECT -1", vec![]);
        assert!(matches!(
            db.row::<(u64,)>(&negative).await,
            Err(DbError::Corrupt { .. })
        ));
        // A stored movement kind this version does not know.
        let kinds = Stmt::new("SELECT kind FROM t ORDER BY name", vec![]);
        let error = db
            .rows::<(crate::mrr::MovementKind,)>(&kinds)
            .await
            .unwrap_err();
        assert!(error.to_string().contains("\"gone\""), "{error}");
        // No row where one is due.
        let none = Stmt::new("SELECT amount FROM t WHERE name = 'z'", vec![]);
        assert!(matches!(
            db.row::<(i64,)>(&none).await,
            Err(DbError::Corrupt { .. })
        ));
    }

    fn upsert(id: &str, n: i64) -> Stmt {
        Stmt::new(
            "INSERT INTO t (id, n) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET n = excluded.n",
            vec![id.into(), n.into()],
        )
    }

    #[test]
    fn postgres_binds_same_sql_rows_as_arrays_and_keeps_guarded_statements() {
        let delete = |id: &str| Stmt::new("DELETE FROM t WHERE id IN (?)", vec![id.into()]);
        let guarded =
            Stmt::new("UPDATE c SET p = ? WHERE p = ?", vec![2.into(), 1.into()]).expecting(1);
        let mixed = |v: Value| Stmt::new("INSERT INTO m (v) VALUES (?)", vec![v]);
        let statements = [
            upsert("a", 1),
            delete("x"),
            upsert("b", 2),
            guarded.clone(),
            delete("y"),
            mixed(1.into()),
            mixed("one".into()),
        ];
        let writes = unnest(&statements);
        let shapes: Vec<String> = writes
            .iter()
            .map(|w| match w {
                PgWrite::One(stmt) => format!("one {}", stmt.sql),
                PgWrite::Unnest { sql, columns } => {
                    let values: Vec<String> = columns
                        .iter()
                        .map(|c| match c {
                            Column::Ints(v) => format!("{v:?}"),
                            Column::Texts(v) => format!("{v:?}"),
                        })
                        .collect();
                    format!("{sql} {}", values.join(" "))
                }
            })
            .collect();
        assert_eq!(
            shapes,
            [
                "INSERT INTO t (id, n) SELECT * FROM unnest($1::text[], $2::int8[]) ON CONFLICT (id) DO UPDATE SET n = excluded.n [Some(\"a\"), Some(\"b\")] [Some(1), Some(2)]",
                "DELETE FROM t WHERE id IN (SELECT unnest($1::text[])) [Some(\"x\"), Some(\"y\")]",
                "one UPDATE c SET p = ? WHERE p = ?",
                // A column mixing integers and text is written row by row.
                "one INSERT INTO m (v) VALUES (?)",
                "one INSERT INTO m (v) VALUES (?)",
            ]
        );
    }

    #[test]
    fn same_sql_inserts_and_deletes_become_one_statement_each() {
        let delete = |id: &str| Stmt::new("DELETE FROM t WHERE id IN (?)", vec![id.into()]);
        let guarded =
            Stmt::new("UPDATE c SET p = ? WHERE p = ?", vec![2.into(), 1.into()]).expecting(1);
        let merged = merge(&[
            upsert("a", 1),
            delete("x"),
            upsert("b", 2),
            guarded.clone(),
            delete("y"),
            upsert("c", 3),
        ]);
        assert_eq!(
            merged,
            vec![
                Stmt::new(
                    "INSERT INTO t (id, n) VALUES (?, ?), (?, ?), (?, ?) ON CONFLICT (id) DO UPDATE SET n = excluded.n",
                    vec![
                        "a".into(),
                        1.into(),
                        "b".into(),
                        2.into(),
                        "c".into(),
                        3.into()
                    ],
                ),
                Stmt::new(
                    "DELETE FROM t WHERE id IN (?, ?)",
                    vec!["x".into(), "y".into()]
                ),
                guarded,
            ]
        );
    }

    #[test]
    fn a_merged_statement_stays_under_the_parameter_limit() {
        let rows: Vec<Stmt> = (0..1_234).map(|i| upsert(&i.to_string(), i)).collect();
        let merged = merge(&rows);
        assert_eq!(merged.len(), 3, "500 + 500 + 234 rows");
        assert_eq!(merged[2].params.len(), 234 * 2);
        assert!(merged.iter().all(|m| m.params.len() <= MERGED_PARAMS_MAX));
        let flattened: Vec<Value> = merged.into_iter().flat_map(|m| m.params).collect();
        let original: Vec<Value> = rows.into_iter().flat_map(|m| m.params).collect();
        assert_eq!(flattened, original, "every row once, in order");
    }

    #[test]
    fn statements_that_are_not_single_rows_are_left_alone() {
        for sql in [
            "INSERT INTO t (id, n) SELECT id, n FROM u",
            "INSERT INTO t (id, n) VALUES (?, 1)",
            "UPDATE t SET n = n + 1 WHERE id = ?",
            "DELETE FROM t WHERE id = ? AND n IN (?)",
        ] {
            let one = Stmt::new(sql, vec![1.into(), 2.into()]);
            assert_eq!(merge(&[one.clone(), one.clone()]), vec![one.clone(), one]);
        }
    }
}
