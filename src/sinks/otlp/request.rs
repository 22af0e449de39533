//! Documents as OTLP log records, with the generated types of `opentelemetry-proto` (the
//! official definitions), encoded as protobuf or as OTLP JSON.

use super::settings::{Protocol, Settings};
use crate::base::document::Document;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    any_value::Value as Any, AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use serde_json::Value;

/// Largest request body before compression: far below the 64 MiB the spec lets receivers
/// refuse, so a page is split long before a receiver would answer 413.
pub const MAX_BYTES: usize = 4 * 1024 * 1024;

/// The record of one document, or why it cannot be sent (not JSON).
pub fn record(doc: &Document, observed_ns: u64) -> Result<LogRecord, String> {
    let body: Value = serde_json::from_slice(&doc.body)
        .map_err(|e| format!("not sent over OTLP: the document is not JSON ({e})"))?;
    // The event time: @timestamp, else the route's date (SQL created_at); 0 = unknown.
    let time = body
        .get("@timestamp")
        .and_then(Value::as_str)
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
        .or(doc.route().time)
        .and_then(|t| t.timestamp_nanos_opt())
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(0);
    let mut attributes = vec![text("log.record.uid", &doc.id)];
    let route = doc.route();
    if let Some(topic) = &route.topic {
        attributes.push(text("topic", topic));
    }
    if let Some(key) = &route.key {
        attributes.push(text("routing_key", key));
    }
    let (severity_number, severity_text) = severity(&body);
    Ok(LogRecord {
        time_unix_nano: time,
        observed_time_unix_nano: observed_ns,
        severity_number: severity_number as i32,
        severity_text,
        body: Some(any(body)),
        attributes,
        ..LogRecord::default()
    })
}

/// The document's own severity when it states one in a top-level `severity`, `level` or
/// `log.level` text (the words OpenTelemetry's severity levels and syslog use), kept as the
/// severity text; INFO otherwise. A word we do not know keeps its text and counts as INFO.
fn severity(body: &Value) -> (SeverityNumber, String) {
    let stated = ["severity", "level", "log.level"]
        .iter()
        .find_map(|k| body.get(*k).and_then(Value::as_str))
        .map(str::trim)
        .filter(|s| !s.is_empty());
    let Some(text) = stated else {
        return (SeverityNumber::Info, "INFO".into());
    };
    let number = match text.to_ascii_lowercase().as_str() {
        "trace" => SeverityNumber::Trace,
        "debug" => SeverityNumber::Debug,
        "info" | "informational" | "notice" => SeverityNumber::Info,
        "warn" | "warning" => SeverityNumber::Warn,
        "error" | "err" => SeverityNumber::Error,
        "critical" | "crit" | "alert" => SeverityNumber::Error4,
        "fatal" | "emergency" | "emerg" => SeverityNumber::Fatal,
        _ => SeverityNumber::Info,
    };
    (number, text.to_string())
}

/// A JSON value as an AnyValue: objects as kvlists, arrays as arrays, integers that fit i64 as
/// ints, other numbers as doubles; null has no AnyValue, so it is an empty (unset) value.
pub fn any(value: Value) -> AnyValue {
    let value = match value {
        Value::Null => None,
        Value::Bool(b) => Some(Any::BoolValue(b)),
        Value::Number(n) => Some(match n.as_i64() {
            Some(i) => Any::IntValue(i),
            None => Any::DoubleValue(n.as_f64().unwrap_or(f64::NAN)),
        }),
        Value::String(s) => Some(Any::StringValue(s)),
        Value::Array(items) => Some(Any::ArrayValue(ArrayValue {
            values: items.into_iter().map(any).collect(),
        })),
        Value::Object(fields) => Some(Any::KvlistValue(KeyValueList {
            values: fields
                .into_iter()
                .map(|(key, v)| KeyValue {
                    key,
                    value: Some(any(v)),
                    ..KeyValue::default()
                })
                .collect(),
        })),
    };
    AnyValue { value }
}

fn text(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(Any::StringValue(value.into())),
        }),
        ..KeyValue::default()
    }
}

/// One export request carrying `records`.
pub fn request(settings: &Settings, records: Vec<LogRecord>) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: settings.resource.iter().map(|(k, v)| text(k, v)).collect(),
                ..Resource::default()
            }),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope {
                    name: env!("CARGO_PKG_NAME").into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..InstrumentationScope::default()
                }),
                log_records: records,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

/// The request body in the configured protocol.
pub fn encode(protocol: Protocol, request: &ExportLogsServiceRequest) -> Vec<u8> {
    match protocol {
        Protocol::Protobuf => request.encode_to_vec(),
        Protocol::Json => serde_json::to_vec(request).expect("OTLP JSON of generated types"),
    }
}

/// The documents (indexes into `records`) in groups whose encoded records stay under `max`
/// bytes; a record bigger than that goes alone.
pub fn split_by_bytes(pending: &[usize], records: &[LogRecord], max: usize) -> Vec<Vec<usize>> {
    let mut groups = Vec::new();
    let mut group: Vec<usize> = Vec::new();
    let mut size = 0;
    for &i in pending {
        // Protobuf size plus room for the record's framing; JSON is larger, but its cap has
        // the same margin below the receivers' limit.
        let len = records[i].encoded_len() + 16;
        if !group.is_empty() && size + len > max {
            groups.push(std::mem::take(&mut group));
            size = 0;
        }
        size += len;
        group.push(i);
    }
    if !group.is_empty() {
        groups.push(group);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::document::Route;
    use crate::base::env::Env;

    fn settings(pairs: &[(&str, &str)]) -> Settings {
        Settings::from_env(&Env::from_pairs(pairs.iter().copied())).unwrap()
    }

    fn doc() -> Document {
        Document::new(
            "7-1714557600123456".into(),
            br#"{"@timestamp":"2024-05-01T10:00:00.123456Z","audit_event":{"actor":"u","n":3,"f":1.5,"ok":true,"none":null,"tags":["a",2]}}"#.to_vec(),
        )
    }

    fn string(v: &AnyValue) -> &str {
        match &v.value {
            Some(Any::StringValue(s)) => s,
            other => panic!("not a string: {other:?}"),
        }
    }

    fn field<'a>(v: &'a AnyValue, key: &str) -> &'a AnyValue {
        match &v.value {
            Some(Any::KvlistValue(kv)) => kv
                .values
                .iter()
                .find(|k| k.key == key)
                .and_then(|k| k.value.as_ref())
                .unwrap_or_else(|| panic!("no {key}")),
            other => panic!("not a kvlist: {other:?}"),
        }
    }

    fn check(r: &LogRecord) {
        assert_eq!(r.time_unix_nano, 1_714_557_600_123_456_000);
        assert_eq!(r.observed_time_unix_nano, 42);
        assert_eq!((r.severity_number, r.severity_text.as_str()), (9, "INFO"));
        assert_eq!(r.attributes[0].key, "log.record.uid");
        assert_eq!(
            string(r.attributes[0].value.as_ref().unwrap()),
            "7-1714557600123456"
        );
        let body = r.body.as_ref().unwrap();
        let ev = field(body, "audit_event");
        assert_eq!(string(field(ev, "actor")), "u");
        assert_eq!(field(ev, "n").value, Some(Any::IntValue(3)));
        assert_eq!(field(ev, "f").value, Some(Any::DoubleValue(1.5)));
        assert_eq!(field(ev, "ok").value, Some(Any::BoolValue(true)));
        assert_eq!(field(ev, "none").value, None);
        let Some(Any::ArrayValue(tags)) = &field(ev, "tags").value else {
            panic!("tags not an array")
        };
        assert_eq!(tags.values.len(), 2);
        assert_eq!(tags.values[1].value, Some(Any::IntValue(2)));
    }

    #[test]
    fn protobuf_decodes_to_the_same_records() {
        let s = settings(&[("OTEL_RESOURCE_ATTRIBUTES", "env=prod")]);
        let req = request(&s, vec![record(&doc(), 42).unwrap()]);
        let bytes = encode(Protocol::Protobuf, &req);
        let back = ExportLogsServiceRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(back, req);
        let rl = &back.resource_logs[0];
        let attrs = &rl.resource.as_ref().unwrap().attributes;
        assert_eq!(attrs[0].key, "service.name");
        assert_eq!(string(attrs[0].value.as_ref().unwrap()), "audit-transfer");
        assert_eq!(attrs[1].key, "env");
        assert_eq!(
            rl.scope_logs[0].scope.as_ref().unwrap().name,
            "audit-transfer"
        );
        check(&rl.scope_logs[0].log_records[0]);
    }

    #[test]
    fn json_follows_the_otlp_mapping() {
        let s = settings(&[]);
        let req = request(&s, vec![record(&doc(), 42).unwrap()]);
        let bytes = encode(Protocol::Json, &req);
        let json: Value = serde_json::from_slice(&bytes).unwrap();
        let r = &json["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0];
        // camelCase keys, 64-bit integers as strings, enums as integers.
        assert_eq!(r["timeUnixNano"], "1714557600123456000");
        assert_eq!(r["severityNumber"], 9);
        assert_eq!(r["attributes"][0]["key"], "log.record.uid");
        let back: ExportLogsServiceRequest = serde_json::from_slice(&bytes).unwrap();
        check(&back.resource_logs[0].scope_logs[0].log_records[0]);
    }

    #[test]
    fn route_attributes_and_the_route_time_without_timestamp() {
        let d = Document::new("1-2".into(), br#"{"a":1}"#.to_vec());
        let when = chrono::DateTime::parse_from_rfc3339("2024-01-02T03:04:05Z").unwrap();
        d.route
            .set(Route {
                topic: Some("db".into()),
                key: Some("k1".into()),
                time: Some(when.with_timezone(&chrono::Utc)),
            })
            .unwrap();
        let r = record(&d, 0).unwrap();
        assert_eq!(r.time_unix_nano, 1_704_164_645_000_000_000);
        let keys: Vec<_> = r.attributes.iter().map(|a| a.key.as_str()).collect();
        assert_eq!(keys, ["log.record.uid", "topic", "routing_key"]);
        let bare = Document::new("1-3".into(), br#"{"a":1}"#.to_vec());
        assert_eq!(record(&bare, 0).unwrap().time_unix_nano, 0);
        assert!(record(&Document::new("x".into(), b"nope".to_vec()), 0).is_err());
    }

    #[test]
    fn a_severity_the_document_states_is_kept() {
        let sev = |v: serde_json::Value| {
            let (n, t) = severity(&v);
            (n as i32, t)
        };
        assert_eq!(sev(serde_json::json!({})), (9, "INFO".into()));
        assert_eq!(
            sev(serde_json::json!({"level": "warning"})),
            (13, "warning".into())
        );
        assert_eq!(
            sev(serde_json::json!({"severity": "ERROR"})),
            (17, "ERROR".into())
        );
        assert_eq!(
            sev(serde_json::json!({"log.level": "critical"})),
            (20, "critical".into())
        );
        assert_eq!(
            sev(serde_json::json!({"severity": "High"})),
            (9, "High".into())
        );
        assert_eq!(sev(serde_json::json!({"severity": 3})), (9, "INFO".into()));
    }

    #[test]
    fn split_keeps_groups_under_the_cap() {
        let records: Vec<_> = (0..10).map(|_| record(&doc(), 1).unwrap()).collect();
        let one = records[0].encoded_len() + 16;
        let groups = split_by_bytes(&(0..10).collect::<Vec<_>>(), &records, one * 3);
        assert_eq!(
            groups.iter().map(Vec::len).collect::<Vec<_>>(),
            [3, 3, 3, 1]
        );
        assert_eq!(split_by_bytes(&[4], &records, 1), vec![vec![4]]);
    }
}
