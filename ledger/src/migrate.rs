//! Schema migrations, embedded in the binary and applied at start.
//!
//! Each backend has its numbered files in `schema/<backend>/`. A migration is
//! applied once, in order, inside one transaction, and its SHA-256 is recorded:
//! a file changed after it landed is refused rather than silently skipped.

use sha2::{Digest, Sha256};
use sqlx::{PgPool, Row, SqlitePool};

use crate::error::LedgerError;

/// One embedded migration file.
struct Migration {
    version: i64,
    name: &'static str,
    sql: &'static str,
}

const POSTGRES: &[Migration] = &[
    Migration {
        version: 1,
        name: "ledger",
        sql: include_str!("../../schema/postgres/0001_ledger.sql"),
    },
    Migration {
        version: 2,
        name: "api_requests",
        sql: include_str!("../../schema/postgres/0002_api_requests.sql"),
    },
    Migration {
        version: 3,
        name: "request_leases",
        sql: include_str!("../../schema/postgres/0003_request_leases.sql"),
    },
    Migration {
        version: 4,
        name: "projection_checkpoints",
        sql: include_str!("../../schema/postgres/0004_projection_checkpoints.sql"),
    },
    Migration {
        version: 5,
        name: "idempotency_key_prefixes",
        sql: include_str!("../../schema/postgres/0005_idempotency_key_prefixes.sql"),
    },
    Migration {
        version: 6,
        name: "data_keys",
        sql: include_str!("../../schema/postgres/0006_data_keys.sql"),
    },
];

const SQLITE: &[Migration] = &[
    Migration {
        version: 1,
        name: "ledger",
        sql: include_str!("../../schema/sqlite/0001_ledger.sql"),
    },
    Migration {
        version: 2,
        name: "api_requests",
        sql: include_str!("../../schema/sqlite/0002_api_requests.sql"),
    },
    Migration {
        version: 3,
        name: "request_leases",
        sql: include_str!("../../schema/sqlite/0003_request_leases.sql"),
    },
    Migration {
        version: 4,
        name: "projection_checkpoints",
        sql: include_str!("../../schema/sqlite/0004_projection_checkpoints.sql"),
    },
    Migration {
        version: 5,
        name: "idempotency_key_prefixes",
        sql: include_str!("../../schema/sqlite/0005_idempotency_key_prefixes.sql"),
    },
    Migration {
        version: 6,
        name: "data_keys",
        sql: include_str!("../../schema/sqlite/0006_data_keys.sql"),
    },
];

fn checksum(sql: &str) -> String {
    hex::encode(Sha256::digest(sql.as_bytes()))
}

fn check_applied(migrations: &[Migration], applied: &[(i64, String)]) -> Result<i64, LedgerError> {
    let mut latest = 0;
    for (version, sum) in applied {
        let Some(known) = migrations.iter().find(|m| m.version == *version) else {
            return Err(LedgerError::Migration {
                what: format!(
                    "the database has migration {version}, which this binary does not know: it is newer than this binary"
                ),
                source: None,
            });
        };
        if checksum(known.sql) != *sum {
            return Err(LedgerError::Migration {
                what: format!(
                    "migration {version} ({}) was changed after it was applied",
                    known.name
                ),
                source: None,
            });
        }
        latest = latest.max(*version);
    }
    Ok(latest)
}

/// Applies the missing Postgres migrations; concurrent starters wait on an advisory lock.
pub(crate) async fn postgres(pool: &PgPool) -> Result<(), LedgerError> {
    let mut tx = pool.begin().await?;
    // One migrator at a time across processes; the lock ends with the transaction.
    sqlx::query("SELECT pg_advisory_xact_lock(7305072931415463)")
        .execute(&mut *tx)
        .await?;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version bigint PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .execute(&mut *tx)
    .await?;
    let applied: Vec<(i64, String)> =
        sqlx::query("SELECT version, checksum FROM schema_migrations ORDER BY version")
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
    let latest = check_applied(POSTGRES, &applied)?;
    for migration in POSTGRES.iter().filter(|m| m.version > latest) {
        sqlx::raw_sql(migration.sql)
            .execute(&mut *tx)
            .await
            .map_err(|e| LedgerError::Migration {
                what: migration.name.to_owned(),
                source: Some(std::sync::Arc::new(e)),
            })?;
        sqlx::query("INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)")
            .bind(migration.version)
            .bind(migration.name)
            .bind(checksum(migration.sql))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Applies the missing SQLite migrations under SQLite's write lock.
pub(crate) async fn sqlite(pool: &SqlitePool) -> Result<(), LedgerError> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version INTEGER PRIMARY KEY, name TEXT NOT NULL, checksum TEXT NOT NULL,
            applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))",
    )
    .execute(&mut *tx)
    .await?;
    let applied: Vec<(i64, String)> =
        sqlx::query("SELECT version, checksum FROM schema_migrations ORDER BY version")
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
    let latest = check_applied(SQLITE, &applied)?;
    for migration in SQLITE.iter().filter(|m| m.version > latest) {
        sqlx::raw_sql(migration.sql)
            .execute(&mut *tx)
            .await
            .map_err(|e| LedgerError::Migration {
                what: migration.name.to_owned(),
                source: Some(std::sync::Arc::new(e)),
            })?;
        sqlx::query("INSERT INTO schema_migrations (version, name, checksum) VALUES (?, ?, ?)")
            .bind(migration.version)
            .bind(migration.name)
            .bind(checksum(migration.sql))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::{Migration, POSTGRES, SQLITE};

    /// Every file in `schema/<backend>/` is embedded, in order, under its own
    /// number and name, and nothing else is: a new file cannot be forgotten.
    fn embeds_every_file(backend: &str, migrations: &[Migration]) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../schema")
            .join(backend);
        let mut files: Vec<(String, String)> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|e| e == "sql"))
            .map(|path| {
                let name = path.file_stem().unwrap().to_string_lossy().into_owned();
                (name, std::fs::read_to_string(&path).unwrap())
            })
            .collect();
        files.sort();
        let embedded: Vec<(String, String)> = migrations
            .iter()
            .map(|m| (format!("{:04}_{}", m.version, m.name), m.sql.to_owned()))
            .collect();
        assert_eq!(
            files.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            embedded.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            "schema/{backend}/ and the embedded migrations differ"
        );
        assert_eq!(files, embedded, "an embedded migration is not its file");
        for (rank, migration) in migrations.iter().enumerate() {
            assert_eq!(migration.version, i64::try_from(rank).unwrap() + 1);
        }
    }

    #[test]
    fn every_postgres_schema_file_is_embedded_in_order() {
        embeds_every_file("postgres", POSTGRES);
    }

    #[test]
    fn every_sqlite_schema_file_is_embedded_in_order() {
        embeds_every_file("sqlite", SQLITE);
    }
}
