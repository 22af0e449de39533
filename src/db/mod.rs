//! The source database: one connection, the SQL dialect differences, and our own migrations.
//!
//! We use sqlx's `Any` driver with one dedicated connection: the job is sequential (one page
//! at a time), and the three dialects differ only in a handful of spellings kept in [`Dialect`].

pub mod chain;
pub mod queue;
pub mod routing;
pub mod settings;
pub mod targets;

use anyhow::{Context, Result};
use chrono::{DateTime, NaiveDateTime, Utc};
use futures_core::future::BoxFuture;
pub use settings::{DatabaseConfig, DbKind, TableName};
use sqlx::{any::AnyConnectOptions, AnyConnection};
use sqlx::{ConnectOptions, Connection};
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    MySql,
    Sqlite,
}

impl Dialect {
    /// The n-th (1-based) bind placeholder.
    pub fn ph(self, n: usize) -> String {
        match self {
            Dialect::Postgres => format!("${n}"),
            _ => "?".to_string(),
        }
    }

    pub fn quote(self, ident: &str) -> String {
        // Identifiers are validated (letters, digits, underscore) before they get here;
        // quoting keeps reserved words such as "timestamp" usable.
        match self {
            Dialect::MySql => format!("`{ident}`"),
            _ => format!("\"{ident}\""),
        }
    }

    pub fn table(self, t: &TableName) -> String {
        match &t.schema {
            Some(s) => format!("{}.{}", self.quote(s), self.quote(&t.name)),
            None => self.quote(&t.name),
        }
    }

    pub fn as_text(self, expr: &str) -> String {
        match self {
            Dialect::Postgres => format!("({expr})::text"),
            Dialect::MySql => format!("CAST({expr} AS CHAR)"),
            Dialect::Sqlite => format!("CAST({expr} AS TEXT)"),
        }
    }

    /// Raw bytes of a text/JSON column: invalid UTF-8 then fails one row, not the page.
    pub fn as_bytes(self, expr: &str) -> String {
        match self {
            Dialect::Postgres => format!("convert_to(({expr})::text, 'UTF8')"),
            Dialect::MySql => format!("CAST({expr} AS BINARY)"),
            Dialect::Sqlite => format!("CAST({expr} AS BLOB)"),
        }
    }

    pub fn as_bigint(self, expr: &str) -> String {
        match self {
            Dialect::Postgres => format!("({expr})::bigint"),
            Dialect::MySql => format!("CAST({expr} AS SIGNED)"),
            Dialect::Sqlite => format!("CAST({expr} AS INTEGER)"),
        }
    }

    /// A bound timestamp in the text form `as_text` produced, comparable with the column.
    pub fn timestamp_param(self, ph: &str) -> String {
        match self {
            Dialect::Postgres => format!("CAST({ph} AS timestamptz)"),
            Dialect::MySql => format!("CAST({ph} AS DATETIME(6))"),
            Dialect::Sqlite => ph.to_string(),
        }
    }

    /// Row locks for claiming a page; SQLite has one writer at a time instead (BEGIN IMMEDIATE).
    pub fn claim_lock(self) -> &'static str {
        match self {
            Dialect::Postgres => " FOR UPDATE OF t SKIP LOCKED",
            Dialect::MySql => " FOR UPDATE SKIP LOCKED",
            Dialect::Sqlite => "",
        }
    }

    pub fn begin(self) -> &'static str {
        match self {
            // Take the write lock up front: a deferred transaction that upgrades later can fail
            // with SQLITE_BUSY without waiting.
            Dialect::Sqlite => "BEGIN IMMEDIATE",
            _ => "BEGIN",
        }
    }

    fn dir(self) -> &'static str {
        match self {
            Dialect::Postgres => "postgres",
            Dialect::MySql => "mysql",
            Dialect::Sqlite => "sqlite",
        }
    }
}

/// An open connection to the source database.
pub struct Db {
    pub conn: AnyConnection,
    pub dialect: Dialect,
    /// Where it came from: a run opens one more connection to read the backlog's order.
    pub cfg: DatabaseConfig,
}

impl Db {
    pub async fn connect(cfg: &DatabaseConfig) -> Result<Db> {
        sqlx::any::install_default_drivers();
        let dialect = match cfg.kind {
            DbKind::Postgres => Dialect::Postgres,
            DbKind::MySql => Dialect::MySql,
            DbKind::Sqlite => Dialect::Sqlite,
        };
        let opts = AnyConnectOptions::from_str(cfg.url.as_str())
            .with_context(|| format!("invalid DATABASE_URL {}", cfg.redacted()))?
            .log_statements(tracing::log::LevelFilter::Trace)
            .log_slow_statements(tracing::log::LevelFilter::Off, Default::default());
        let mut conn = AnyConnection::connect_with(&opts)
            .await
            .with_context(|| format!("cannot connect to the database {}", cfg.redacted()))?;
        let session: &[&str] = match dialect {
            // Timestamps travel as text between pages; pin the session time zone so the text
            // and its cast back mean the same instant.
            Dialect::Postgres => &[
                "SET TIME ZONE 'UTC'",
                "SET application_name = 'audit-transfer'",
            ],
            // READ COMMITTED: no gap locks, so the application's INSERTs never wait for a page.
            Dialect::MySql => &[
                "SET time_zone = '+00:00'",
                "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
            ],
            // Another run (or the application) holding the write lock is waited for, not an error.
            Dialect::Sqlite => &["PRAGMA busy_timeout = 60000"],
        };
        for stmt in session {
            sqlx::query(stmt)
                .execute(&mut conn)
                .await
                .with_context(|| format!("{stmt} failed"))?;
        }
        Ok(Db {
            conn,
            dialect,
            cfg: cfg.clone(),
        })
    }

    /// Applies our own migrations (state tables) once, safely under concurrent runs.
    // Boxed with an explicit `Send`: sqlx's raw_sql futures otherwise trip the compiler's
    // higher-ranked lifetime inference inside async-trait callers.
    pub fn migrate(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.migrate_inner())
    }

    async fn migrate_inner(&mut self) -> Result<()> {
        let d = self.dialect;
        let lock = match d {
            Dialect::Postgres => Some((
                "SELECT pg_advisory_lock(774411)",
                "SELECT pg_advisory_unlock(774411)",
            )),
            Dialect::MySql => Some((
                "SELECT GET_LOCK('audit_transfer_migrate', 60)",
                "SELECT RELEASE_LOCK('audit_transfer_migrate')",
            )),
            Dialect::Sqlite => None,
        };
        if let Some((take, _)) = lock {
            sqlx::query(take)
                .execute(&mut self.conn)
                .await
                .context("taking the migration lock")?;
        }
        let result = self.apply_migrations().await;
        if let Some((_, release)) = lock {
            sqlx::query(release).execute(&mut self.conn).await.ok();
        }
        result
    }

    async fn apply_migrations(&mut self) -> Result<()> {
        let d = self.dialect;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS audit_transfer_migrations (version INTEGER PRIMARY KEY, name VARCHAR(191) NOT NULL)",
        )
        .execute(&mut self.conn)
        .await
        .context("creating audit_transfer_migrations")?;
        let mine: Vec<&Migration> = MIGRATIONS.iter().filter(|m| m.dialect == d.dir()).collect();
        for m in mine {
            // PostgreSQL and SQLite run DDL in the transaction; MySQL commits each DDL itself,
            // which is why every migration is written to be re-runnable (IF NOT EXISTS).
            let mut tx = self.conn.begin_with(d.begin()).await?;
            // Checked inside the transaction: on SQLite that is what serializes two runs.
            let sql = format!(
                "SELECT COUNT(*) FROM audit_transfer_migrations WHERE version = {}",
                d.ph(1)
            );
            let done: i64 = sqlx::query_scalar(&sql)
                .bind(m.version)
                .fetch_one(&mut *tx)
                .await?;
            if done > 0 {
                tx.rollback().await?;
                continue;
            }
            let statements: Vec<String> = m
                .sql
                .split(';')
                .map(str::trim)
                .filter(|s| !is_comment_only(s))
                .map(String::from)
                .collect();
            for stmt in statements {
                sqlx::query(&stmt)
                    .execute(&mut *tx)
                    .await
                    .with_context(|| format!("migration {} failed", m.name))?;
            }
            sqlx::query(&format!(
                "INSERT INTO audit_transfer_migrations (version, name) VALUES ({}, {})",
                d.ph(1),
                d.ph(2)
            ))
            .bind(m.version)
            .bind(m.name)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            tracing::info!(migration = m.name, "applied migration");
        }
        Ok(())
    }

    /// Fails with a configuration error when `sql` (a `WHERE 1=0` probe) cannot run.
    pub fn probe(&mut self, sql: String, what: String) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            match sqlx::query(&sql).execute(&mut self.conn).await {
                Ok(_) => Ok(()),
                Err(e) => Err(crate::base::exit::config_error(format!(
                    "{what}: {}",
                    crate::base::exit::one_line(&e.into())
                ))),
            }
        })
    }
}

/// A column read with [`Dialect::as_bytes`]: MySQL reports some binary casts as text, so
/// accept either.
pub fn bytes_at(row: &sqlx::any::AnyRow, i: usize) -> Result<Option<Vec<u8>>, sqlx::Error> {
    use sqlx::Row;
    match row.try_get::<Option<Vec<u8>>, _>(i) {
        Ok(v) => Ok(v),
        Err(_) => Ok(row.try_get::<Option<String>, _>(i)?.map(String::into_bytes)),
    }
}

fn is_comment_only(stmt: &str) -> bool {
    stmt.lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with("--"))
}

struct Migration {
    dialect: &'static str,
    version: i64,
    name: &'static str,
    sql: &'static str,
}

macro_rules! migration {
    ($dialect:literal, $version:literal, $name:literal) => {
        Migration {
            dialect: $dialect,
            version: $version,
            name: $name,
            sql: include_str!(concat!("../../migrations/", $dialect, "/", $name, ".sql")),
        }
    };
}

const MIGRATIONS: &[Migration] = &[
    migration!("postgres", 1, "0001_failed_rows"),
    migration!("mysql", 1, "0001_failed_rows"),
    migration!("sqlite", 1, "0001_failed_rows"),
    migration!("postgres", 2, "0002_runs"),
    migration!("mysql", 2, "0002_runs"),
    migration!("sqlite", 2, "0002_runs"),
    migration!("postgres", 3, "0003_targets"),
    migration!("mysql", 3, "0003_targets"),
    migration!("sqlite", 3, "0003_targets"),
    migration!("postgres", 4, "0004_chain"),
    migration!("mysql", 4, "0004_chain"),
    migration!("sqlite", 4, "0004_chain"),
];

/// Parses a timestamp as the three databases print it (`as_text`), assuming UTC without offset.
pub fn parse_db_timestamp(text: &str) -> Option<DateTime<Utc>> {
    let s = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(&s.replacen(' ', "T", 1)) {
        return Some(t.with_timezone(&Utc));
    }
    // PostgreSQL prints offsets as "+00" or "+05:30".
    for fmt in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M:%S%.f%#z"] {
        if let Ok(t) = DateTime::parse_from_str(s, fmt) {
            return Some(t.with_timezone(&Utc));
        }
    }
    for fmt in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%d",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
            return Some(t.and_utc());
        }
    }
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}

/// `column IN (ids)`. PostgreSQL gets one array parameter instead, so the statement's text is
/// the same for every page and stays prepared (parsing a new 500-id statement per page cost as
/// much as executing it); MySQL and SQLite get the integers inlined.
pub struct IdSet {
    pub sql: String,
    /// The text of the array parameter, bound at placeholder `n`.
    pub param: Option<String>,
}

impl IdSet {
    pub fn new(d: Dialect, column: &str, n: usize, ids: &[i64]) -> IdSet {
        let list = id_list(ids.iter().copied());
        match d {
            Dialect::Postgres => IdSet {
                sql: format!("{column} = ANY(CAST({} AS bigint[]))", d.ph(n)),
                param: Some(format!("{{{list}}}")),
            },
            _ => IdSet {
                sql: format!("{column} IN ({list})"),
                param: None,
            },
        }
    }
}

pub fn id_list(ids: impl Iterator<Item = i64>) -> String {
    // Integers we decoded ourselves: safe to inline, and one statement serves every dialect.
    ids.map(|i| i.to_string()).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_as_each_database_prints_them() {
        let want = "2024-03-01T12:30:45.123456Z";
        for s in [
            "2024-03-01 12:30:45.123456+00",
            "2024-03-01 12:30:45.123456",
            "2024-03-01T12:30:45.123456Z",
            "2024-03-01 12:30:45.123456+00:00",
            "2024-03-01 14:30:45.123456+02",
        ] {
            let t = parse_db_timestamp(s).unwrap_or_else(|| panic!("{s}"));
            assert_eq!(
                t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                want,
                "{s}"
            );
        }
        assert!(parse_db_timestamp("2024-03-01").is_some());
        assert!(parse_db_timestamp("yesterday").is_none());
    }

    #[test]
    fn every_dialect_has_its_migrations() {
        for d in ["postgres", "mysql", "sqlite"] {
            for v in [1, 2] {
                assert!(MIGRATIONS.iter().any(|m| m.dialect == d && m.version == v));
            }
        }
    }
}
