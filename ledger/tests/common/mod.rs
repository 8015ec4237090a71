//! Test harness: a fresh Postgres database or SQLite file per test, dropped afterwards.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use recur_ledger::{Clock, Ledger, LedgerConfig, SystemClock};
use sqlx::Connection;

/// A ledger under test and what it takes to clean it up.
pub struct TestLedger {
    pub ledger: Ledger,
    cleanup: Cleanup,
}

enum Cleanup {
    Postgres { admin_url: String, database: String },
    Sqlite { path: std::path::PathBuf },
}

impl std::ops::Deref for TestLedger {
    type Target = Ledger;
    fn deref(&self) -> &Ledger {
        &self.ledger
    }
}

impl TestLedger {
    /// The location string of this test's store.
    pub fn location(&self) -> String {
        match &self.cleanup {
            Cleanup::Postgres {
                admin_url,
                database,
            } => with_database(admin_url, database),
            Cleanup::Sqlite { path } => format!("sqlite:{}", path.display()),
        }
    }
}

impl Drop for TestLedger {
    fn drop(&mut self) {
        match &self.cleanup {
            Cleanup::Postgres {
                admin_url,
                database,
            } => {
                let admin_url = admin_url.clone();
                let database = database.clone();
                // Drop runs inside the test's runtime: use a thread with its own.
                let _ = std::thread::spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    runtime.block_on(async {
                        if let Ok(mut conn) = sqlx::PgConnection::connect(&admin_url).await {
                            let sql =
                                format!("DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)");
                            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                                .execute(&mut conn)
                                .await;
                        }
                    });
                })
                .join();
            }
            Cleanup::Sqlite { path } => {
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
            }
        }
    }
}

/// The server's URL from `DATABASE_URL`; fails loudly with how to get one.
pub fn admin_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "DATABASE_URL is not set. Run the suite with `bash scripts/test.sh` (it finds or starts \
             PostgreSQL), or export DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres"
        )
    })
}

fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let authority_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_end..].find('/') {
        Some(slash) => &base[..authority_end + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{database}?{query}"),
        None => format!("{base}/{database}"),
    }
}

/// Creates an empty database of its own and returns its URL.
pub async fn fresh_postgres_url() -> (String, String) {
    let admin = admin_url();
    let database = format!("recur_test_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap_or_else(|error| {
        panic!("cannot reach PostgreSQL at DATABASE_URL ({error}); start it, or run `bash scripts/test.sh`")
    });
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE \"{database}\""
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    (with_database(&admin, &database), database)
}

/// A fresh Postgres-backed ledger.
pub async fn postgres() -> TestLedger {
    postgres_with(Arc::new(SystemClock)).await
}

/// A fresh Postgres-backed ledger on the given clock.
pub async fn postgres_with(clock: Arc<dyn Clock>) -> TestLedger {
    let (url, database) = fresh_postgres_url().await;
    let ledger = Ledger::open(LedgerConfig::new(url), clock).await.unwrap();
    TestLedger {
        ledger,
        cleanup: Cleanup::Postgres {
            admin_url: admin_url(),
            database,
        },
    }
}

/// A fresh SQLite-backed ledger in a temporary file.
pub async fn sqlite() -> TestLedger {
    sqlite_with(Arc::new(SystemClock)).await
}

/// A fresh SQLite-backed ledger on the given clock.
pub async fn sqlite_with(clock: Arc<dyn Clock>) -> TestLedger {
    let path = std::env::temp_dir().join(format!(
        "recur-test-{}.sqlite",
        uuid::Uuid::new_v4().simple()
    ));
    let ledger = Ledger::open(
        LedgerConfig::new(format!("sqlite:{}", path.display())).create_if_missing(true),
        clock,
    )
    .await
    .unwrap();
    TestLedger {
        ledger,
        cleanup: Cleanup::Sqlite { path },
    }
}

/// Runs each named conformance test against both backends.
#[macro_export]
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(super::common::postgres().await).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(super::common::sqlite().await).await;
                }
            )*
        }
    };
}
