//! Database settings: DATABASE_URL in the forms dj-database-url reads, DATABASE_PASSWORD, the
//! SSL variables, and validated table names.

use crate::base::env::Env;
use crate::base::exit::ConfigError;
use crate::base::secret::{redact_url, remember};

type Result<T> = std::result::Result<T, ConfigError>;

/// A validated SQL identifier, optionally `schema.table`; quoted per dialect when used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName {
    pub schema: Option<String>,
    pub name: String,
}

impl TableName {
    pub fn parse(var: &str, value: &str) -> Result<Self> {
        let bad = || {
            ConfigError(format!(
                "invalid {var} {value:?}: expected a table name of letters, digits and underscores \
                 (optionally schema.table), starting with a letter or underscore, at most 63 characters"
            ))
        };
        let parts: Vec<&str> = value.split('.').collect();
        if parts.len() > 2 || !parts.iter().all(|p| is_identifier(p)) {
            return Err(bad());
        }
        Ok(match parts.as_slice() {
            [name] => TableName {
                schema: None,
                name: name.to_string(),
            },
            [schema, name] => TableName {
                schema: Some(schema.to_string()),
                name: name.to_string(),
            },
            _ => return Err(bad()),
        })
    }

    /// The name as written in the configuration, for messages and state keys.
    pub fn display(&self) -> String {
        match &self.schema {
            Some(s) => format!("{s}.{}", self.name),
            None => self.name.clone(),
        }
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.len() <= 63
}

/// Database connection settings, with DATABASE_PASSWORD and the SSL variables applied.
#[derive(Clone)]
pub struct DatabaseConfig {
    /// The URL to connect with. Contains the password: never log it, use `redacted`.
    pub url: url::Url,
    pub kind: DbKind,
}

impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &self.redacted())
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbKind {
    Postgres,
    MySql,
    Sqlite,
}

impl DatabaseConfig {
    /// The URL without password, safe for logs.
    pub fn redacted(&self) -> String {
        let mut u = self.url.clone();
        if u.password().is_some() {
            let _ = u.set_password(Some("***"));
        }
        u.to_string()
    }
}

impl DatabaseConfig {
    /// DATABASE_URL with DATABASE_PASSWORD and the SSL variables applied.
    pub fn from_env(raw: &Env) -> Result<Self> {
        let raw_url = raw.get("DATABASE_URL").ok_or_else(|| {
            ConfigError(
                "DATABASE_URL is not set: expected postgres://, mysql:// or sqlite:// URL of the audit log database"
                    .into(),
            )
        })?;
        database_config(raw_url, raw)
    }
}

fn database_config(raw_url: &str, raw: &Env) -> Result<DatabaseConfig> {
    let mut warnings: Vec<String> = Vec::new();
    let invalid = |why: &str| {
        // Never echo the URL: it may hold a password.
        ConfigError(format!(
            "invalid DATABASE_URL: {why} (expected postgres://user@host:port/db, mysql://user@host:port/db or sqlite:///path)"
        ))
    };
    let scheme = raw_url
        .split(':')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let kind = match scheme.as_str() {
        "postgres" | "postgresql" | "pgsql" => DbKind::Postgres,
        "mysql" | "mariadb" => DbKind::MySql,
        "sqlite" | "sqlite3" => DbKind::Sqlite,
        _ => return Err(invalid("unsupported scheme")),
    };
    let mut url = if kind == DbKind::Sqlite {
        sqlite_url(raw_url).ok_or_else(|| invalid("no database file"))?
    } else {
        let rest = raw_url.split_once(':').map(|x| x.1).unwrap_or_default();
        let normal = match kind {
            DbKind::Postgres => "postgres",
            _ => "mysql",
        };
        // `mysql:/u:pw@h/db`, `mysql:u:pw@h`, `mysql:///u:pw@h` would parse as a default host
        // with the credentials in the path: refuse anything without a `//host` authority.
        if !rest.starts_with("//") || rest.starts_with("///") {
            return Err(invalid("expected // and a host after the scheme"));
        }
        let url = url::Url::parse(&format!("{normal}:{rest}"))
            .map_err(|e| invalid(&redact_url(&e.to_string())))?;
        if url.host_str().is_none_or(str::is_empty) {
            return Err(invalid("no host"));
        }
        url
    };

    if let Some(pw) = raw.get("DATABASE_PASSWORD") {
        if kind == DbKind::Sqlite {
            warnings.push("DATABASE_PASSWORD is ignored for SQLite".into());
        } else {
            url.set_password(Some(pw))
                .map_err(|_| invalid("cannot set DATABASE_PASSWORD on this URL"))?;
        }
    }

    // The original honoured the SSL variables for MySQL only; we apply them to both servers.
    if raw.boolean("DB_USE_SSL")?.unwrap_or(false) {
        let files = [
            ("SSL_CA", &raw.raw("SSL_CA").map(String::from)),
            ("SSL_CERT", &raw.raw("SSL_CERT").map(String::from)),
            ("SSL_KEY", &raw.raw("SSL_KEY").map(String::from)),
        ];
        for (var, v) in files {
            if let Some(path) = v.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
                if !std::path::Path::new(path).is_file() {
                    return Err(ConfigError(format!(
                        "invalid {var} {path:?}: expected the path of a readable PEM file"
                    )));
                }
            }
        }
        let ca = raw.get("SSL_CA");
        let mut q = url.query_pairs_mut();
        match kind {
            DbKind::Postgres => {
                q.append_pair(
                    "sslmode",
                    if ca.is_some() { "verify-ca" } else { "require" },
                );
                if let Some(ca) = ca {
                    q.append_pair("sslrootcert", ca);
                }
                if let Some(c) = raw.get("SSL_CERT") {
                    q.append_pair("sslcert", c);
                }
                if let Some(k) = raw.get("SSL_KEY") {
                    q.append_pair("sslkey", k);
                }
            }
            DbKind::MySql => {
                q.append_pair(
                    "ssl-mode",
                    if ca.is_some() {
                        "VERIFY_CA"
                    } else {
                        "REQUIRED"
                    },
                );
                if let Some(ca) = ca {
                    q.append_pair("ssl-ca", ca);
                }
                if let Some(c) = raw.get("SSL_CERT") {
                    q.append_pair("ssl-cert", c);
                }
                if let Some(k) = raw.get("SSL_KEY") {
                    q.append_pair("ssl-key", k);
                }
            }
            DbKind::Sqlite => warnings.push("DB_USE_SSL is ignored for SQLite".into()),
        }
        drop(q);
        if raw.get("SSL_CIPHER").is_some() {
            warnings.push(
                "SSL_CIPHER is not supported (the TLS library negotiates modern ciphers only) and is ignored"
                    .into(),
            );
        }
    }
    for w in warnings {
        tracing::warn!("{w}");
    }
    if let Some(pw) = url.password() {
        // The driver's own errors may quote the URL: the log writer blanks it.
        remember(pw);
        remember(&percent_decoded(pw));
    }
    Ok(DatabaseConfig { url, kind })
}

/// SQLite URLs as dj-database-url reads them (`sqlite:///relative.db`, `sqlite:////abs.db`),
/// plus sqlx's own `sqlite:relative.db`. Returned as sqlx's form.
pub(crate) fn sqlite_url(raw: &str) -> Option<url::Url> {
    let rest = raw.split_once(':')?.1;
    let path = match rest.strip_prefix("//") {
        Some(after) => after.strip_prefix('/').unwrap_or(after),
        None => rest,
    };
    let path = path.split('?').next().unwrap_or_default();
    if path.is_empty() {
        return None;
    }
    let abs = std::path::absolute(path).ok()?;
    url::Url::parse(&format!("sqlite://{}", abs.to_str()?)).ok()
}

/// `p%40ss` as `p@ss`: the form a driver may print.
fn percent_decoded(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn cfg(pairs: &[(&str, &str)]) -> Result<DatabaseConfig> {
        DatabaseConfig::from_env(&Env::from_pairs(pairs.iter().copied()))
    }

    #[test]
    fn malformed_urls_are_refused_without_quoting_the_password() {
        for url in [
            "mysql:/u:SECRETPW@127.0.0.1:3306/db",
            "postgres:/u:SECRETPW@127.0.0.1/db",
            "mysql:u:SECRETPW@127.0.0.1:3306/db",
            "mysql:///u:SECRETPW@127.0.0.1:3306/db",
            "postgresql:u:SECRETPW@h/db",
            "mysql://u:SECRETPW@/db",
        ] {
            let e = cfg(&[("DATABASE_URL", url)]).unwrap_err().0;
            assert!(e.starts_with("invalid DATABASE_URL"), "{url}: {e}");
            assert!(!e.contains("SECRETPW"), "{url}: {e}");
        }
    }

    #[test]
    fn table_names_are_identifiers_only() {
        assert_eq!(
            TableName::parse("T", "audit.logs")
                .unwrap()
                .schema
                .as_deref(),
            Some("audit")
        );
        assert!(TableName::parse("T", "_x1").is_ok());
        for bad in [
            "",
            "1abc",
            "a-b",
            "a.",
            ".a",
            "ä",
            "a b",
            "a;b",
            &"x".repeat(64),
        ] {
            assert!(TableName::parse("T", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn database_password_overrides_and_is_never_displayed() {
        let c = cfg(&[
            ("DATABASE_URL", "postgres://user:old@db:5432/logs"),
            ("DATABASE_PASSWORD", "s3cret"),
        ])
        .unwrap();
        let db = c;
        assert_eq!(db.url.password(), Some("s3cret"));
        assert!(!db.redacted().contains("s3cret"));
        assert!(!format!("{db:?}").contains("s3cret"));
    }

    #[test]
    fn ssl_variables_apply_to_both_servers() {
        let pg = cfg(&[("DATABASE_URL", "postgres://u@h/d"), ("DB_USE_SSL", "true")]).unwrap();
        assert!(pg.url.as_str().contains("sslmode=require"));
        let my = cfg(&[("DATABASE_URL", "mysql://u@h/d"), ("DB_USE_SSL", "1")]).unwrap();
        assert!(my.url.as_str().contains("ssl-mode=REQUIRED"));
        let missing = cfg(&[
            ("DATABASE_URL", "mysql://u@h/d"),
            ("DB_USE_SSL", "1"),
            ("SSL_CA", "/nonexistent/ca.pem"),
        ]);
        assert!(missing.unwrap_err().0.contains("SSL_CA"));
    }

    #[test]
    fn sqlite_urls_read_like_dj_database_url() {
        let rel = cfg(&[("DATABASE_URL", "sqlite:///db.sqlite3")]).unwrap();
        let path = rel.url.to_file_path_lossy();
        assert!(path.ends_with("db.sqlite3") && path != std::path::Path::new("/db.sqlite3"));
        let abs = cfg(&[("DATABASE_URL", "sqlite:////tmp/x.db")]).unwrap();
        assert_eq!(abs.url.as_str(), "sqlite:///tmp/x.db");
    }

    trait Lossy {
        fn to_file_path_lossy(&self) -> PathBuf;
    }
    impl Lossy for url::Url {
        fn to_file_path_lossy(&self) -> PathBuf {
            PathBuf::from(self.path())
        }
    }
}
