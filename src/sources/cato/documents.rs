//! Feed records → documents: the record as Cato returns it, plus `@timestamp` and `topic`,
//! under a deterministic id.
//!
//! - eventsFeed: `@timestamp` from `fieldsMap.time` (epoch milliseconds, a string), else the
//!   record's `time`; `topic` = `fieldsMap.event_type`; id `<account>:<event_id>:<time ms>`
//!   (an event id alone is not promised unique over time), a content hash without `event_id`.
//! - auditFeed: `@timestamp` from `fieldsMap.creation_date` (epoch milliseconds), else the
//!   record's `time`; `topic` = `audit`; audit records carry no id, so the id is a SHA-256 of
//!   account, `time` and `fieldsMap` with sorted keys (the key order of a reply varies).

use super::settings::Feed;
use crate::base::document::{Document, Record};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

pub(super) struct Built {
    pub record: Record,
    /// The record's time; `None` when it has none we can read (the record then fails).
    pub time: Option<DateTime<Utc>>,
}

/// `account` is the `accounts[].id` the record came under.
pub(super) fn build(feed: Feed, account: &str, rec: &Value) -> Built {
    let key = id(feed, account, rec);
    let fail = |key: String, reason: String| Built {
        record: Record {
            key,
            doc: Err(reason),
        },
        time: None,
    };
    let Some(obj) = rec.as_object() else {
        return fail(key, "the record is not a JSON object".into());
    };
    let fields = obj.get("fieldsMap").and_then(Value::as_object);
    let ms_field = match feed {
        Feed::Events => "time",
        Feed::Audit => "creation_date",
    };
    let time = match (fields.and_then(|f| f.get(ms_field)), obj.get("time")) {
        (Some(ms), _) => match epoch_ms(ms) {
            Some(t) => t,
            None => return fail(key, format!("unparseable fieldsMap.{ms_field} {ms}")),
        },
        (None, Some(Value::String(s))) => match DateTime::parse_from_rfc3339(s) {
            Ok(t) => t.with_timezone(&Utc),
            Err(e) => return fail(key, format!("unparseable time {s:?}: {e}")),
        },
        _ => {
            return fail(
                key,
                format!("the record has neither fieldsMap.{ms_field} nor time"),
            )
        }
    };
    let topic = match feed {
        Feed::Events => fields
            .and_then(|f| f.get("event_type"))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .unwrap_or("unknown")
            .to_string(),
        Feed::Audit => "audit".into(),
    };
    let mut doc = obj.clone();
    doc.insert(
        "@timestamp".into(),
        Value::String(time.to_rfc3339_opts(SecondsFormat::Millis, true)),
    );
    doc.insert("topic".into(), Value::String(topic));
    let body = serde_json::to_vec(&Value::Object(doc)).expect("a JSON object serializes");
    Built {
        record: Record {
            key: key.clone(),
            doc: Ok(Document::new(key, body)),
        },
        time: Some(time),
    }
}

/// Epoch milliseconds as Cato sends them (a string; a number is taken too).
fn epoch_ms(v: &Value) -> Option<DateTime<Utc>> {
    let ms = match v {
        Value::String(s) => s.trim().parse::<i64>().ok()?,
        Value::Number(n) => n.as_i64()?,
        _ => return None,
    };
    DateTime::from_timestamp_millis(ms)
}

fn id(feed: Feed, account: &str, rec: &Value) -> String {
    let fields = rec.get("fieldsMap").and_then(Value::as_object);
    let text = |k: &str| {
        fields
            .and_then(|f| f.get(k))
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
    };
    if feed == Feed::Events {
        if let (Some(event_id), Some(time)) = (text("event_id"), text("time")) {
            let account = text("account_id").unwrap_or(account);
            return format!("{account}:{event_id}:{time}");
        }
    }
    let mut canonical = Map::new();
    canonical.insert("account".into(), Value::String(account.into()));
    canonical.insert(
        "time".into(),
        rec.get("time").cloned().unwrap_or(Value::Null),
    );
    canonical.insert(
        "fieldsMap".into(),
        rec.get("fieldsMap").cloned().unwrap_or_else(|| rec.clone()),
    );
    // serde_json's map is sorted by key (no `preserve_order`), at every depth.
    let bytes = serde_json::to_vec(&Value::Object(canonical)).expect("JSON serializes");
    let hash = Sha256::digest(&bytes);
    let hex = crate::base::hash::hex(&hash);
    format!("{}-{hex}", feed.name())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(b: &Built) -> Value {
        serde_json::from_slice(&b.record.doc.as_ref().unwrap().body).unwrap()
    }

    #[test]
    fn event_document_is_the_record_plus_timestamp_and_topic() {
        let rec = json!({"time": "2026-02-26T09:29:16Z", "fieldsMap": {"event_id": "5f1c",
            "time": "1772098156792", "event_type": "Security", "account_id": "4242"}});
        let b = build(Feed::Events, "4242", &rec);
        assert_eq!(b.record.key, "4242:5f1c:1772098156792");
        let doc = body(&b);
        assert_eq!(doc["@timestamp"], "2026-02-26T09:29:16.792Z");
        assert_eq!(doc["topic"], "Security");
        assert_eq!(doc["fieldsMap"], rec["fieldsMap"]);
        assert_eq!(doc["time"], rec["time"]);
    }

    #[test]
    fn audit_id_is_a_content_hash_independent_of_key_order() {
        let a: Value = serde_json::from_str(
            r#"{"time":"2026-03-01T01:02:03Z","fieldsMap":{"admin":"Jane","change_type":"MODIFIED","creation_date":"1772326923000"}}"#,
        )
        .unwrap();
        let b: Value = serde_json::from_str(
            r#"{"fieldsMap":{"creation_date":"1772326923000","change_type":"MODIFIED","admin":"Jane"},"time":"2026-03-01T01:02:03Z"}"#,
        )
        .unwrap();
        let (ba, bb) = (build(Feed::Audit, "1", &a), build(Feed::Audit, "1", &b));
        assert_eq!(ba.record.key, bb.record.key);
        assert!(ba.record.key.starts_with("audit-"));
        assert_ne!(ba.record.key, build(Feed::Audit, "2", &a).record.key);
        let doc = body(&ba);
        assert_eq!(doc["topic"], "audit");
        assert_eq!(doc["@timestamp"], "2026-03-01T01:02:03.000Z");
    }

    #[test]
    fn records_without_a_readable_time_fail_under_a_stable_key() {
        let rec = json!({"fieldsMap": {"event_id": "e1", "time": "soon"}});
        let b = build(Feed::Events, "4242", &rec);
        assert_eq!(b.record.key, "4242:e1:soon");
        assert!(b.record.doc.unwrap_err().contains("fieldsMap.time"));
        let no_id = json!({"time": "2026-02-26T09:29:16Z", "fieldsMap": {"event_type": "X"}});
        let b = build(Feed::Events, "4242", &no_id);
        assert!(b.record.key.starts_with("events-"), "{}", b.record.key);
        assert_eq!(body(&b)["@timestamp"], "2026-02-26T09:29:16.000Z");
        assert!(build(Feed::Audit, "1", &json!({})).record.doc.is_err());
    }
}
