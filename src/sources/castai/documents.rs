//! Items as CAST AI returns them → documents: the item itself plus `@timestamp` and `topic`,
//! with the event id as document id.

use super::settings::ApiVersion;
use crate::base::document::{Document, Record};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;

/// One item, built.
pub(super) struct Built {
    pub record: Record,
    /// Whether the item had an id (items without one are known by a hash of their text).
    pub has_id: bool,
    /// The event time; `None` when the item could not be built.
    pub time: Option<DateTime<Utc>>,
}

/// The document: the item as CAST AI returns it, plus `@timestamp` (from `time` in v1,
/// `occurredAt` in v2, normalised to UTC) and `topic` (v1: `eventType`; v2:
/// `eventDomain.eventResource.eventAction`). Document id: the event id.
pub(super) fn build(version: ApiVersion, item: &Value) -> Built {
    let (id_field, time_field) = match version {
        ApiVersion::V1 => ("id", "time"),
        ApiVersion::V2 => ("eventId", "occurredAt"),
    };
    let fail = |key: String, has_id: bool, reason: String| Built {
        record: Record {
            key,
            doc: Err(reason),
        },
        has_id,
        time: None,
    };
    let Some(obj) = item.as_object() else {
        return fail(
            anonymous_key(item),
            false,
            "the item is not a JSON object".into(),
        );
    };
    let id = match obj.get(id_field).and_then(Value::as_str).map(str::trim) {
        Some(id) if !id.is_empty() => id.to_string(),
        _ => {
            return fail(
                anonymous_key(item),
                false,
                format!("the item has no {id_field}"),
            )
        }
    };
    let time = match obj.get(time_field) {
        Some(Value::String(s)) => match DateTime::parse_from_rfc3339(s) {
            Ok(t) => t.with_timezone(&Utc),
            Err(e) => return fail(id, true, format!("unparseable {time_field} {s:?}: {e}")),
        },
        Some(other) => {
            return fail(
                id,
                true,
                format!("unparseable {time_field} {other}: expected an RFC 3339 string"),
            )
        }
        None => return fail(id, true, format!("the item has no {time_field}")),
    };
    let text = |k: &str| obj.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
    let topic = match version {
        ApiVersion::V1 => text("eventType").map(String::from),
        ApiVersion::V2 => {
            let parts: Vec<&str> = ["eventDomain", "eventResource", "eventAction"]
                .into_iter()
                .filter_map(text)
                .collect();
            (!parts.is_empty()).then(|| parts.join("."))
        }
    };
    let mut doc = obj.clone();
    doc.insert(
        "@timestamp".into(),
        Value::String(time.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
    );
    doc.insert(
        "topic".into(),
        Value::String(topic.unwrap_or_else(|| "unknown".into())),
    );
    let body = serde_json::to_vec(&Value::Object(doc)).expect("a JSON object serializes");
    Built {
        record: Record {
            key: id.clone(),
            doc: Ok(Document::new(id, body)),
        },
        has_id: true,
        time: Some(time),
    }
}

/// A stable key for an item without an id, so its failure entry is found again.
fn anonymous_key(item: &Value) -> String {
    let text = item.to_string();
    format!(
        "no-id-{:016x}",
        crate::base::hash::fnv1a(std::iter::once(text.as_bytes()))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(b: &Built) -> Value {
        serde_json::from_slice(&b.record.doc.as_ref().unwrap().body).unwrap()
    }

    #[test]
    fn v1_document_is_the_item_plus_timestamp_and_topic() {
        let item = json!({"id": "0b9a", "eventType": "clusterDeleted",
            "initiatedBy": {"id": "u1", "name": "Ann", "email": "ann@example.com"},
            "time": "2024-05-01T12:00:00.123456789+02:00", "event": {"x": 1},
            "labels": {"clusterId": "c1"}});
        let b = build(ApiVersion::V1, &item);
        assert_eq!(b.record.doc.as_ref().unwrap().id, "0b9a");
        let doc = body(&b);
        assert_eq!(doc["@timestamp"], "2024-05-01T10:00:00.123456789Z");
        assert_eq!(doc["topic"], "clusterDeleted");
        assert_eq!(doc["initiatedBy"]["email"], "ann@example.com");
        assert_eq!(doc["time"], item["time"], "the item is kept as it came");
    }

    #[test]
    fn v2_document_uses_event_id_occurred_at_and_domain_resource_action() {
        let item = json!({"eventId": "e-1", "occurredAt": "2024-05-01T10:00:00Z",
            "eventDomain": "cluster", "eventResource": "node", "eventAction": "delete"});
        let b = build(ApiVersion::V2, &item);
        assert_eq!(b.record.key, "e-1");
        let doc = body(&b);
        assert_eq!(doc["topic"], "cluster.node.delete");
        assert_eq!(doc["@timestamp"], "2024-05-01T10:00:00Z");
    }

    #[test]
    fn bad_items_fail_with_id_and_reason() {
        let b = build(
            ApiVersion::V1,
            &json!({"id": "x1", "time": "yesterday", "eventType": "t"}),
        );
        assert_eq!(b.record.key, "x1");
        let reason = b.record.doc.unwrap_err();
        assert!(
            reason.contains("unparseable time \"yesterday\""),
            "{reason}"
        );
        let no_id = build(ApiVersion::V1, &json!({"time": "2024-05-01T10:00:00Z"}));
        assert!(!no_id.has_id && no_id.record.key.starts_with("no-id-"));
        assert_eq!(
            no_id.record.key,
            build(ApiVersion::V1, &json!({"time": "2024-05-01T10:00:00Z"}))
                .record
                .key
        );
        assert!(build(ApiVersion::V2, &json!([1])).record.doc.is_err());
    }
}
