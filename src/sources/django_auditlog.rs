//! django-auditlog `LogEntry` rows (`AUDIT_LOGGER_TYPE=DJANGO_AUDITLOG`), as
//! structured-log-transfer reads them, turned into the `audit_event` document:
//!
//! ```json
//! {"@timestamp": "<timestamp>", "audit_event": {"actor": "...", "date_time": "<timestamp>",
//!  "operation": "create", "origin": "...", "target": "<object_repr>", "environment": "...",
//!  "message": "<changes as a JSON-encoded string>"}}
//! ```
//!
//! An entry is unsent while `additional_data` is NULL, has no `is_sent`, or has `is_sent` other
//! than `true`; marking sets `is_sent: true` and keeps every other key. Actors are read with one
//! set-based query per page on USER_TABLE_NAME instead of a join in the locking query: MariaDB
//! has no `FOR UPDATE OF`, and a join there would lock the application's user rows too.

use super::{Document, Record};
use crate::base::env::Env;
use crate::base::exit::ConfigError;
use crate::base::source::{Source, SourceTraits};
use crate::config::Config;
use crate::db::queue::{Queue, Schema};
use crate::db::{bytes_at, parse_db_timestamp, Db, Dialect};
use crate::db::{DatabaseConfig, TableName};
use anyhow::Result;
use async_trait::async_trait;
use chrono::{DateTime, Timelike, Utc};
use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use std::collections::HashMap;

pub struct Layout {
    cfg: DjangoConfig,
    table: TableName,
}

/// `AUDIT_LOGGER_TYPE=DJANGO_AUDITLOG`.
pub const KIND: super::Kind = super::Kind {
    name: "DJANGO_AUDITLOG",
    configure: |env, _| Ok(Box::new(Settings::from_env(env)?)),
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperationFormat {
    Words,
    Numeric,
}

#[derive(Debug, Clone)]
pub struct DjangoConfig {
    pub user_table: TableName,
    pub origin: String,
    pub environment: String,
    pub operation_format: OperationFormat,
}

/// The source's settings: the database and how entries become documents.
#[derive(Debug, Clone)]
pub struct Settings {
    database: DatabaseConfig,
    django: DjangoConfig,
    /// The backlog's order, shared by the connections of a run.
    order: crate::db::queue::Order,
}

impl Settings {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let django = DjangoConfig {
            user_table: TableName::parse(
                "USER_TABLE_NAME",
                env.get("USER_TABLE_NAME").unwrap_or("auth_user"),
            )?,
            origin: env.raw("AUDIT_LOG_ORIGIN").unwrap_or_default().to_string(),
            environment: env
                .raw("AUDIT_LOG_ENVIRONMENT")
                .unwrap_or_default()
                .to_string(),
            operation_format: env
                .choice(
                    "AUDITLOG_OPERATION_FORMAT",
                    &[
                        ("words", OperationFormat::Words),
                        ("numeric", OperationFormat::Numeric),
                    ],
                )?
                .unwrap_or(OperationFormat::Words),
        };
        Ok(Settings {
            database: DatabaseConfig::from_env(env)?,
            django,
            order: Default::default(),
        })
    }
}

#[async_trait]
impl super::Configured for Settings {
    fn label(&self) -> String {
        "django_auditlog:auditlog_logentry".into()
    }
    fn traits(&self) -> SourceTraits {
        SourceTraits {
            sql: true,
            chain: true,
            fanout: true,
            ..SourceTraits::default()
        }
    }
    async fn connect(&self, run: &Config) -> Result<Box<dyn Source>> {
        let db = Db::connect(&self.database).await?;
        let table = TableName {
            schema: None,
            name: "auditlog_logentry".into(),
        };
        Ok(Box::new(Queue::new(
            db,
            Layout {
                cfg: self.django.clone(),
                table,
            },
            run.max_attempts,
            &run.routing,
            self.order.clone(),
        )))
    }
}

impl Layout {
    /// `additional_data.is_sent` as text: 'true' when sent (NULL, missing, invalid: not 'true').
    fn is_sent_text(d: Dialect) -> &'static str {
        match d {
            Dialect::Postgres => "(additional_data->>'is_sent')",
            Dialect::MySql => "JSON_UNQUOTE(JSON_EXTRACT(additional_data, '$.is_sent'))",
            // json_type() raises on invalid JSON; CASE keeps that row merely "unsent".
            Dialect::Sqlite => {
                "(CASE WHEN json_valid(additional_data) THEN json_type(additional_data, '$.is_sent') END)"
            }
        }
    }

    fn user_query(&self, d: Dialect, ids: &[i64]) -> String {
        let list = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
        format!(
            "SELECT {}, {}, {}, {} FROM {} WHERE id IN ({list})",
            d.as_bigint("id"),
            d.as_bytes("first_name"),
            d.as_bytes("last_name"),
            d.as_bytes("email"),
            d.table(&self.cfg.user_table)
        )
    }

    fn document(
        &self,
        row: &AnyRow,
        users: &HashMap<i64, User>,
    ) -> Result<Result<Document, String>> {
        let id: i64 = row.try_get(0)?;
        let ts: String = row.try_get(1)?;
        let actor_id: Option<i64> = row.try_get(2)?;
        let action: i64 = row.try_get(3)?;
        let object_repr = bytes_at(row, 4)?;
        let changes = bytes_at(row, 5)?;
        let additional = bytes_at(row, 6)?;
        Ok((|| {
            let when = parse_db_timestamp(&ts)
                .ok_or_else(|| format!("timestamp {ts:?} is not a timestamp"))?;
            if let Some(raw) = &additional {
                match serde_json::from_slice::<Value>(raw) {
                    Ok(Value::Object(_)) => {}
                    _ => {
                        return Err(
                            "additional_data is not a JSON object, so is_sent cannot be set"
                                .to_string(),
                        )
                    }
                }
            }
            let operation = operation(action, self.cfg.operation_format)?;
            let actor = match actor_id.and_then(|a| users.get(&a)) {
                Some(u) => u.display(),
                None => "unknown".to_string(),
            };
            let target = text(object_repr, "object_repr")?;
            let message = changes.map(|raw| changes_text(&raw)).transpose()?;
            let stamp = python_isoformat(when);
            let doc = Doc {
                timestamp: &stamp,
                audit_event: Event {
                    actor: &actor,
                    date_time: &stamp,
                    operation: &operation,
                    origin: &self.cfg.origin,
                    target: &target,
                    environment: &self.cfg.environment,
                    message: message.as_deref(),
                },
            };
            let body = serde_json::to_vec(&doc).map_err(|e| e.to_string())?;
            Ok(Document::new(crate::base::document::row_id(id, when), body))
        })())
    }
}

/// The original's document, members in its order (a struct keeps them as declared).
#[derive(serde::Serialize)]
struct Doc<'a> {
    #[serde(rename = "@timestamp")]
    timestamp: &'a str,
    audit_event: Event<'a>,
}

#[derive(serde::Serialize)]
struct Event<'a> {
    actor: &'a str,
    date_time: &'a str,
    operation: &'a str,
    origin: &'a str,
    target: &'a str,
    environment: &'a str,
    message: Option<&'a str>,
}

struct User {
    first: String,
    last: String,
    email: String,
}

impl User {
    /// Django's `get_full_name() or email`.
    fn display(&self) -> String {
        let full = format!("{} {}", self.first, self.last).trim().to_string();
        if full.is_empty() {
            self.email.clone()
        } else {
            full
        }
    }
}

/// django-auditlog's actions 0..3; words as the original documents them, or its code's numbers.
fn operation(action: i64, format: OperationFormat) -> Result<String, String> {
    let word = match action {
        0 => "create",
        1 => "update",
        2 => "delete",
        3 => "access",
        other => {
            return Err(format!(
                "unknown action {other} (expected 0 create, 1 update, 2 delete, 3 access)"
            ))
        }
    };
    Ok(match format {
        OperationFormat::Words => word.to_string(),
        OperationFormat::Numeric => action.to_string(),
    })
}

fn text(raw: Option<Vec<u8>>, column: &str) -> Result<String, String> {
    String::from_utf8(raw.unwrap_or_default()).map_err(|_| format!("{column} is not valid UTF-8"))
}

/// `changes` as JSON text: a JSON string column value is already that text (older versions
/// stored the encoded dict); an object is sent as stored, members in their order.
fn changes_text(raw: &[u8]) -> Result<String, String> {
    let s = std::str::from_utf8(raw).map_err(|_| "changes is not valid UTF-8".to_string())?;
    match serde_json::from_str::<Value>(s) {
        Ok(Value::String(inner)) => Ok(inner),
        Ok(_) => Ok(String::from_utf8(
            crate::base::json::rewrite(s).map_err(|e| format!("changes: {e}"))?,
        )
        .expect("serde_json writes UTF-8")),
        // A text column holding something that is not JSON: send it as it is.
        Err(_) => Ok(s.to_string()),
    }
}

/// The form Python's `datetime.isoformat()` gives (what the original sent): microseconds only
/// when non-zero, offset `+00:00`.
fn python_isoformat(t: DateTime<Utc>) -> String {
    if t.nanosecond() / 1000 == 0 {
        t.format("%Y-%m-%dT%H:%M:%S+00:00").to_string()
    } else {
        t.format("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string()
    }
}

#[async_trait]
impl Schema for Layout {
    fn source_key(&self) -> String {
        "django_auditlog:auditlog_logentry".into()
    }
    fn table(&self) -> &TableName {
        &self.table
    }
    fn ts_column(&self) -> &'static str {
        "timestamp"
    }
    fn unsent(&self, d: Dialect) -> String {
        format!("COALESCE({}, '') <> 'true'", Self::is_sent_text(d))
    }
    fn sent(&self, d: Dialect) -> String {
        // Only entries that say they were sent: never the ones without the key (the original did).
        format!("{} = 'true'", Self::is_sent_text(d))
    }
    fn mark_set(&self, d: Dialect) -> String {
        match d {
            Dialect::Postgres => {
                "additional_data = COALESCE(additional_data::jsonb, '{}'::jsonb) || '{\"is_sent\": true}'::jsonb".into()
            }
            Dialect::MySql => {
                "additional_data = JSON_SET(COALESCE(additional_data, '{}'), '$.is_sent', JSON_EXTRACT('true', '$'))"
                    .into()
            }
            Dialect::Sqlite => "additional_data = json_set(COALESCE(additional_data, '{}'), '$.is_sent', json('true'))".into(),
        }
    }
    fn columns(&self, d: Dialect) -> Vec<String> {
        vec![
            d.as_bigint("t.actor_id"),
            d.as_bigint("t.action"),
            d.as_bytes("t.object_repr"),
            d.as_bytes("t.changes"),
            d.as_bytes("t.additional_data"),
        ]
    }
    fn route_column(&self) -> &'static str {
        "additional_data"
    }
    fn describe(&self) -> String {
        "AUDIT_LOGGER_TYPE=DJANGO_AUDITLOG: table auditlog_logentry must exist as django-auditlog creates it (run the application's migrations)".into()
    }
    fn extra_probe(&self, d: Dialect) -> Option<(String, String)> {
        Some((
            format!("{} AND 1 = 0", self.user_query(d, &[0])),
            format!(
                "USER_TABLE_NAME {:?}: the user table must exist with columns id, first_name, last_name, email",
                self.cfg.user_table.display()
            ),
        ))
    }

    async fn records(
        &self,
        conn: &mut AnyConnection,
        d: Dialect,
        rows: Vec<AnyRow>,
    ) -> Result<Vec<Record>> {
        let mut actor_ids: Vec<i64> = rows
            .iter()
            .filter_map(|r| r.try_get::<Option<i64>, _>(2).ok().flatten())
            .collect();
        actor_ids.sort_unstable();
        actor_ids.dedup();
        let mut users = HashMap::new();
        if !actor_ids.is_empty() {
            let sql = self.user_query(d, &actor_ids);
            for r in sqlx::query(&sql).fetch_all(&mut *conn).await? {
                let lossy = |i: usize| -> Result<String> {
                    Ok(String::from_utf8_lossy(&bytes_at(&r, i)?.unwrap_or_default()).into_owned())
                };
                users.insert(
                    r.try_get::<i64, _>(0)?,
                    User {
                        first: lossy(1)?,
                        last: lossy(2)?,
                        email: lossy(3)?,
                    },
                );
            }
        }
        rows.iter()
            .map(|row| {
                Ok(Record {
                    key: row.try_get::<i64, _>(0)?.to_string(),
                    doc: self.document(row, &users)?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_in_words_or_numbers() {
        assert_eq!(operation(0, OperationFormat::Words).unwrap(), "create");
        assert_eq!(operation(3, OperationFormat::Words).unwrap(), "access");
        assert_eq!(operation(2, OperationFormat::Numeric).unwrap(), "2");
        assert!(operation(7, OperationFormat::Words)
            .unwrap_err()
            .contains("unknown action 7"));
    }

    #[test]
    fn actor_is_full_name_else_email() {
        let u = |f: &str, l: &str, e: &str| User {
            first: f.into(),
            last: l.into(),
            email: e.into(),
        };
        assert_eq!(u("Ada", "Lovelace", "a@x").display(), "Ada Lovelace");
        assert_eq!(u("Ada", "", "a@x").display(), "Ada");
        assert_eq!(u(" ", "", "a@x").display(), "a@x");
    }

    #[test]
    fn changes_become_json_text() {
        assert_eq!(
            changes_text(br#"{"a": ["1", "2"]}"#).unwrap(),
            r#"{"a":["1","2"]}"#
        );
        assert_eq!(changes_text(br#""{\"a\": 1}""#).unwrap(), r#"{"a": 1}"#);
        assert_eq!(
            changes_text(br#"{"z": ["1", "2"], "a": {"y b": 1, "x": 2}}"#).unwrap(),
            r#"{"z":["1","2"],"a":{"y b":1,"x":2}}"#
        );
        assert_eq!(changes_text(b"plain").unwrap(), "plain");
    }

    #[test]
    fn timestamps_as_python_prints_them() {
        let t = DateTime::parse_from_rfc3339("2024-01-02T03:04:05.000006Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(python_isoformat(t), "2024-01-02T03:04:05.000006+00:00");
        let whole = DateTime::parse_from_rfc3339("2024-01-02T03:04:05Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(python_isoformat(whole), "2024-01-02T03:04:05+00:00");
    }
}
