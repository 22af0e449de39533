//! SQL table with one JSON message per row (`AUDIT_LOGGER_TYPE=SINGLE_COLUMN_JSON`):
//! `(id, is_sent, message, created_at)`, as structured-log-transfer reads it.
//!
//! Document: the message object plus `@timestamp`, copied verbatim from
//! `message[DATE_TIME_PARENT_FIELD][DATE_TIME_FIELD]` (or `message[DATE_TIME_FIELD]` when the
//! parent is empty). Document id: `<id>-<created_at as Unix microseconds>`, so a primary key
//! reused after a table reset never collides with an older document.

use super::Record;
use crate::base::env::Env;
use crate::base::exit::ConfigError;
use crate::base::json::{kind, Object};
use crate::base::source::{Source, SourceTraits};
use crate::config::Config;
use crate::db::queue::{Queue, Schema};
use crate::db::{bytes_at, parse_db_timestamp, Db, Dialect};
use crate::db::{DatabaseConfig, TableName};
use anyhow::Result;
use async_trait::async_trait;
use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::AnyConnection;
use sqlx::Row;

pub struct Layout {
    cfg: SingleColumnConfig,
}

/// `AUDIT_LOGGER_TYPE=SINGLE_COLUMN_JSON` (the default).
pub const KIND: super::Kind = super::Kind {
    name: "SINGLE_COLUMN_JSON",
    configure: |env, _| Ok(Box::new(Settings::from_env(env)?)),
};

#[derive(Debug, Clone)]
pub struct SingleColumnConfig {
    pub table: TableName,
    pub date_time_field: String,
    pub date_time_parent_field: String,
}

/// The source's settings: the database and the table.
#[derive(Debug, Clone)]
pub struct Settings {
    database: DatabaseConfig,
    table: SingleColumnConfig,
    /// The backlog's order, shared by the connections of a run.
    order: crate::db::queue::Order,
}

impl Settings {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let table = SingleColumnConfig {
            table: TableName::parse(
                "AUDIT_TABLE_NAME",
                env.get("AUDIT_TABLE_NAME").unwrap_or("audit_logs"),
            )?,
            date_time_field: env
                .raw("DATE_TIME_FIELD")
                .unwrap_or("date_time")
                .to_string(),
            date_time_parent_field: env
                .raw("DATE_TIME_PARENT_FIELD")
                .unwrap_or("audit_event")
                .to_string(),
        };
        if table.date_time_field.is_empty() {
            return Err(ConfigError(
                "invalid DATE_TIME_FIELD \"\": expected the name of the message's timestamp field"
                    .into(),
            ));
        }
        Ok(Settings {
            database: DatabaseConfig::from_env(env)?,
            table,
            order: Default::default(),
        })
    }
}

#[async_trait]
impl super::Configured for Settings {
    fn label(&self) -> String {
        format!("single_column_json:{}", self.table.table.display())
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
        let layout = Layout {
            cfg: self.table.clone(),
        };
        Ok(Box::new(Queue::new(
            db,
            layout,
            run.max_attempts,
            &run.routing,
            self.order.clone(),
        )))
    }
}

#[async_trait]
impl Schema for Layout {
    fn source_key(&self) -> String {
        format!("single_column_json:{}", self.cfg.table.display())
    }
    fn table(&self) -> &TableName {
        &self.cfg.table
    }
    fn ts_column(&self) -> &'static str {
        "created_at"
    }
    fn unsent(&self, _d: Dialect) -> String {
        "is_sent = false".into()
    }
    fn sent(&self, _d: Dialect) -> String {
        "is_sent = true".into()
    }
    fn mark_set(&self, _d: Dialect) -> String {
        "is_sent = true".into()
    }
    fn columns(&self, d: Dialect) -> Vec<String> {
        vec![d.as_bytes("t.message")]
    }
    fn route_column(&self) -> &'static str {
        "message"
    }
    fn flag_column(&self) -> Option<&'static str> {
        Some("is_sent")
    }
    fn queue_index(&self, d: Dialect) -> String {
        let (table, name) = (d.table(&self.cfg.table), &self.cfg.table.name);
        match d {
            // Partial: only unsent rows, tiny once the backlog is sent.
            Dialect::Postgres => format!(
                "CREATE INDEX CONCURRENTLY \"{name}_unsent\" ON {table} (created_at, id) WHERE NOT is_sent"
            ),
            // No partial indexes: the flag leads, so the sent rows sit apart.
            Dialect::MySql => {
                format!("CREATE INDEX `{name}_queue` ON {table} (is_sent, created_at, id)")
            }
            Dialect::Sqlite => format!("CREATE INDEX \"{name}_queue\" ON {table} (created_at, id)"),
        }
    }
    fn describe(&self) -> String {
        format!(
            "AUDIT_TABLE_NAME {:?}: the table must exist with columns id, is_sent, message, created_at",
            self.cfg.table.display()
        )
    }

    async fn records(
        &self,
        _conn: &mut AnyConnection,
        _d: Dialect,
        rows: Vec<AnyRow>,
    ) -> Result<Vec<Record>> {
        rows.iter()
            .map(|row| {
                let id: i64 = row.try_get(0)?;
                let created_at: String = row.try_get(1)?;
                let message = bytes_at(row, 2)?;
                Ok(Record {
                    key: id.to_string(),
                    doc: self.document(id, &created_at, message),
                })
            })
            .collect()
    }
}

impl Layout {
    fn document(
        &self,
        id: i64,
        created_at: &str,
        message: Option<Vec<u8>>,
    ) -> Result<super::Document, String> {
        let created = parse_db_timestamp(created_at)
            .ok_or_else(|| format!("created_at {created_at:?} is not a timestamp"))?;
        let message = message.ok_or("message is NULL")?;
        let text = std::str::from_utf8(&message)
            .map_err(|e| format!("message is not valid UTF-8 (byte {})", e.valid_up_to()))?;
        let body = match Object::parse(text, &self.path()) {
            Ok(object) => self.body(object)?,
            // Some writers store the JSON document as a JSON string (double-encoded).
            Err(_) => match serde_json::from_str::<Value>(text) {
                Ok(Value::String(inner)) => match Object::parse(&inner, &self.path()) {
                    Ok(object) => self.body(object)?,
                    Err(_) => return Err("message is a JSON string, not an object".into()),
                },
                Ok(other) => {
                    let other = other.to_string();
                    return Err(format!(
                        "message is a JSON {}, not an object",
                        kind(other.as_bytes())
                    ));
                }
                Err(e) => return Err(format!("message is not valid JSON: {e}")),
            },
        };
        Ok(super::Document::new(
            crate::base::document::row_id(id, created),
            body,
        ))
    }

    /// Where the timestamp is: `[parent, field]`, or `[field]` when the parent is empty.
    fn path(&self) -> Vec<&str> {
        let cfg = &self.cfg;
        match cfg.date_time_parent_field.is_empty() {
            true => vec![cfg.date_time_field.as_str()],
            false => vec![
                cfg.date_time_parent_field.as_str(),
                cfg.date_time_field.as_str(),
            ],
        }
    }

    /// The message as stored (members in their order) with `@timestamp` appended, as the
    /// original writes it.
    fn body(&self, object: Object) -> Result<Vec<u8>, String> {
        let path = self.path().join(".");
        let ts = match object.found() {
            None => return Err(format!("message has no timestamp at {path}")),
            Some(v) => match kind(v) {
                "string" | "number" => v.to_vec(),
                "null" => return Err(format!("message has no timestamp at {path}")),
                other => {
                    return Err(format!(
                        "timestamp at {path} is a JSON {other}, expected a string"
                    ))
                }
            },
        };
        Ok(object.with("@timestamp", &ts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(parent: &str, field: &str) -> Layout {
        Layout {
            cfg: SingleColumnConfig {
                table: TableName::parse("T", "audit_logs").unwrap(),
                date_time_field: field.into(),
                date_time_parent_field: parent.into(),
            },
        }
    }

    fn doc(l: &Layout, msg: &[u8]) -> Result<Value, String> {
        l.document(7, "2024-01-02 03:04:05.000006+00", Some(msg.to_vec()))
            .map(|d| serde_json::from_slice(&d.body).unwrap())
    }

    #[test]
    fn timestamp_is_copied_from_parent_or_root() {
        let l = layout("audit_event", "date_time");
        let d = doc(
            &l,
            br#"{"audit_event":{"date_time":"2024-01-01T00:00:00Z","actor":"a"}}"#,
        )
        .unwrap();
        assert_eq!(d["@timestamp"], "2024-01-01T00:00:00Z");
        assert_eq!(d["audit_event"]["actor"], "a");
        let root = layout("", "ts");
        assert_eq!(
            doc(&root, br#"{"ts":"x-verbatim"}"#).unwrap()["@timestamp"],
            "x-verbatim"
        );
    }

    #[test]
    fn document_id_is_key_and_created_at() {
        let l = layout("", "ts");
        let d = l
            .document(
                7,
                "2024-01-02 03:04:05.000006+00",
                Some(br#"{"ts":"t"}"#.to_vec()),
            )
            .unwrap();
        assert_eq!(d.id, "7-1704164645000006");
    }

    /// As the original: the stored members in their order, `@timestamp` appended last, so a
    /// reader diffing `_source` across the switch sees no change.
    #[test]
    fn document_keeps_the_stored_key_order_and_appends_the_timestamp() {
        let l = layout("audit_event", "date_time");
        let d = l
            .document(
                7,
                "2024-01-02 03:04:05.000006+00",
                Some(br#"{"zeta":1,"audit_event":{"status":"S","date_time":"t","actor":{"role":"USER","id":2}},"alpha":[3]}"#.to_vec()),
            )
            .unwrap();
        assert_eq!(
            std::str::from_utf8(&d.body).unwrap(),
            r#"{"zeta":1,"audit_event":{"status":"S","date_time":"t","actor":{"role":"USER","id":2}},"alpha":[3],"@timestamp":"t"}"#
        );
    }

    #[test]
    fn bad_messages_are_per_row_errors() {
        let l = layout("audit_event", "date_time");
        for (msg, want) in [
            (&br#"[1,2]"#[..], "array"),
            (br#""just text""#, "string"),
            (b"null", "null"),
            (b"{not json", "not valid JSON"),
            (b"\xff\xfe{}", "UTF-8"),
            (
                br#"{"audit_event":{}}"#,
                "no timestamp at audit_event.date_time",
            ),
            (br#"{"audit_event":{"date_time":null}}"#, "no timestamp"),
            (br#"{"audit_event":{"date_time":{"a":1}}}"#, "object"),
            (br#"{"audit_event":"flat"}"#, "no timestamp"),
        ] {
            let err = doc(&l, msg).unwrap_err();
            assert!(err.contains(want), "{msg:?}: {err}");
        }
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(doc(&l, deep.as_bytes()).unwrap_err().contains("recursion"));
        assert!(l
            .document(1, "2024-01-01", None)
            .unwrap_err()
            .contains("NULL"));
        assert!(l
            .document(1, "never", Some(b"{}".to_vec()))
            .unwrap_err()
            .contains("created_at"));
    }

    #[test]
    fn double_encoded_messages_are_unwrapped() {
        let l = layout("", "ts");
        let inner = serde_json::to_string(r#"{"ts":"t","a":1}"#).unwrap();
        assert_eq!(doc(&l, inner.as_bytes()).unwrap()["a"], 1);
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn layout() -> Layout {
        Layout {
            cfg: SingleColumnConfig {
                table: TableName::parse("T", "audit_logs").unwrap(),
                date_time_field: "date_time".into(),
                date_time_parent_field: "audit_event".into(),
            },
        }
    }

    /// Arbitrary JSON values, nested a few levels.
    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            ".{0,20}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(".{0,8}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    use serde_json::json;

    proptest! {
        /// Any bytes at all: a document or a one-line reason, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512), ts in ".{0,40}") {
            let l = layout();
            match l.document(1, &ts, Some(bytes)) {
                Ok(d) => prop_assert!(serde_json::from_slice::<Value>(&d.body).unwrap().get("@timestamp").is_some()),
                Err(reason) => prop_assert!(!reason.is_empty() && !reason.contains('\n')),
            }
        }

        /// A message with a timestamp keeps every field and gains @timestamp equal to it.
        #[test]
        fn valid_messages_keep_every_field(extra in prop::collection::btree_map("[a-z]{1,8}", json(), 0..8), ts in "[0-9T:.Z-]{1,30}") {
            let mut message = serde_json::Map::new();
            for (k, v) in &extra {
                message.insert(k.clone(), v.clone());
            }
            message.insert("audit_event".into(), json!({"date_time": ts}));
            let bytes = serde_json::to_vec(&Value::Object(message.clone())).unwrap();
            let doc = layout().document(7, "2024-01-01 00:00:00", Some(bytes)).unwrap();
            let body: Value = serde_json::from_slice(&doc.body).unwrap();
            prop_assert_eq!(&body["@timestamp"], &json!(ts));
            for (k, v) in message {
                prop_assert_eq!(&body[&k], &v);
            }
            prop_assert_eq!(doc.id, "7-1704067200000000");
        }

        /// The database timestamp parser never panics and round-trips what the databases print.
        #[test]
        fn db_timestamps_round_trip(secs in 0i64..4_102_444_800, micros in 0u32..1_000_000, junk in ".{0,40}") {
            let _ = parse_db_timestamp(&junk);
            let t = chrono::DateTime::from_timestamp(secs, micros * 1000).unwrap();
            for text in [
                t.format("%Y-%m-%d %H:%M:%S%.6f").to_string(),
                t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string(),
                t.to_rfc3339(),
            ] {
                prop_assert_eq!(parse_db_timestamp(&text), Some(t), "{}", text);
            }
        }
    }
}
