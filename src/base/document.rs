//! Documents: what a source hands the pipeline and a sink stores, with its deterministic id.

use chrono::{DateTime, Utc};
use std::sync::OnceLock;

/// Where a record goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Route {
    pub topic: Option<String>,
    pub key: Option<String>,
    /// The record's date for date templates: `created_at` for SQL rows, `@timestamp` otherwise.
    pub time: Option<DateTime<Utc>>,
}

/// A document ready for a sink: a deterministic id and the serialized JSON object.
#[derive(Debug, Clone)]
pub struct Document {
    pub id: String,
    pub body: Vec<u8>,
    /// Where it goes (topic, routing key, date). The SQL sources set it from SQL; for the
    /// others the pipeline fills it in from the body, and only when routing is in use.
    pub route: OnceLock<Route>,
}

impl Document {
    pub fn new(id: String, body: Vec<u8>) -> Self {
        Document {
            id,
            body,
            route: OnceLock::new(),
        }
    }

    /// The route, or none (no routing in use).
    pub fn route(&self) -> &Route {
        static NO_ROUTE: Route = Route {
            topic: None,
            key: None,
            time: None,
        };
        self.route.get().unwrap_or(&NO_ROUTE)
    }
}

/// One record of a page: either a document, or the reason it cannot become one.
#[derive(Debug)]
pub struct Record {
    /// How operators find the record at the source (a primary key, a file and line).
    pub key: String,
    pub doc: std::result::Result<Document, String>,
}

/// The id of a SQL row's document: `<primary key>-<created_at in Unix microseconds>`. A key
/// reused after a table reset, or the same key in another table, does not collide with an old
/// document, so "already exists" really means "this row was delivered before".
pub fn row_id(id: i64, created: DateTime<Utc>) -> String {
    format!("{id}-{}", created.timestamp_micros())
}
