//! HEC request bodies: one JSON envelope per document, envelopes one after another (no array),
//! split into requests under a byte cap.

use super::settings::Settings;
use crate::base::document::Document;
use chrono::{DateTime, Utc};
use serde_json::Value;

/// Largest request body: HEC's default `max_content_length` is far above, and smaller
/// requests keep a resend after a failure cheap.
pub const MAX_BYTES: usize = 1024 * 1024;

/// The envelope of one document, or why it cannot be sent (it is not a JSON object: HEC would
/// answer "Invalid data format" for the whole request).
pub fn envelope(doc: &Document, settings: &Settings) -> Result<Vec<u8>, String> {
    let body: Value = serde_json::from_slice(&doc.body)
        .map_err(|e| format!("not sent to Splunk: the document is not JSON ({e})"))?;
    let Value::Object(object) = &body else {
        return Err("not sent to Splunk: the document is not a JSON object".into());
    };
    let mut out = Vec::with_capacity(doc.body.len() + 200);
    out.push(b'{');
    let key = |out: &mut Vec<u8>, name: &str| {
        if out.len() > 1 {
            out.push(b',');
        }
        out.extend_from_slice(quote(name).as_bytes());
        out.push(b':');
    };
    if let Some(time) = object
        .get("@timestamp")
        .and_then(Value::as_str)
        .and_then(epoch_seconds)
    {
        key(&mut out, "time");
        out.extend_from_slice(time.as_bytes());
    }
    for (name, value) in [
        ("host", &settings.host),
        ("source", &settings.source),
        ("sourcetype", &Some(settings.sourcetype.clone())),
        ("index", &settings.index),
    ] {
        if let Some(v) = value {
            key(&mut out, name);
            out.extend_from_slice(quote(v).as_bytes());
        }
    }
    // Flat indexed fields: the document id lets a search find the duplicates an at-least-once
    // resend can leave (HEC has no de-duplication).
    let route = doc.route();
    let mut fields = serde_json::Map::new();
    fields.insert("audit_transfer_id".into(), Value::String(doc.id.clone()));
    // In key order, whether or not serde_json keeps insertion order.
    if let Some(k) = &route.key {
        fields.insert("routing_key".into(), Value::String(k.clone()));
    }
    if let Some(t) = &route.topic {
        fields.insert("topic".into(), Value::String(t.clone()));
    }
    key(&mut out, "fields");
    out.extend_from_slice(Value::Object(fields).to_string().as_bytes());
    key(&mut out, "event");
    // The document as the source serialized it (known to be an object), key order kept.
    out.extend_from_slice(doc.body.trim_ascii());
    out.push(b'}');
    Ok(out)
}

fn quote(s: &str) -> String {
    Value::String(s.into()).to_string()
}

/// `@timestamp` as HEC's `time`: seconds since the epoch with up to microseconds, written
/// exactly (no float rounding). None when it is not an RFC 3339 time or before 1970.
pub fn epoch_seconds(timestamp: &str) -> Option<String> {
    let t: DateTime<Utc> = DateTime::parse_from_rfc3339(timestamp).ok()?.into();
    let secs = t.timestamp();
    if secs < 0 {
        return None;
    }
    let micros = t.timestamp_subsec_micros();
    if micros == 0 {
        return Some(secs.to_string());
    }
    let frac = format!("{micros:06}");
    Some(format!("{secs}.{}", frac.trim_end_matches('0')))
}

/// `pending` (indexes into `envelopes`) in groups whose bodies stay under `max_bytes`; a
/// single larger envelope goes alone.
pub fn split_by_bytes(
    pending: &[usize],
    envelopes: &[Vec<u8>],
    max_bytes: usize,
) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut size = 0;
    for &i in pending {
        let len = envelopes[i].len();
        match groups.last_mut() {
            Some(g) if size + len <= max_bytes => {
                g.push(i);
                size += len;
            }
            _ => {
                groups.push(vec![i]);
                size = len;
            }
        }
    }
    groups
}

/// The body of one request: the envelopes of `group`, concatenated.
pub fn body(group: &[usize], envelopes: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(group.iter().map(|&i| envelopes[i].len()).sum());
    for &i in group {
        out.extend_from_slice(&envelopes[i]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::document::Route;
    use crate::base::env::Env;

    fn settings(extra: &[(&str, &str)]) -> Settings {
        let mut pairs = vec![
            ("SPLUNK_HEC_URL", "http://127.0.0.1:8088"),
            ("SPLUNK_HEC_TOKEN", "t"),
        ];
        pairs.extend_from_slice(extra);
        Settings::from_env(&Env::from_pairs(pairs)).unwrap()
    }

    fn text(doc: &Document, s: &Settings) -> String {
        String::from_utf8(envelope(doc, s).unwrap()).unwrap()
    }

    #[test]
    fn minimal_envelope() {
        let doc = Document::new("7-1714557600123456".into(), br#"{"a":1}"#.to_vec());
        assert_eq!(
            text(&doc, &settings(&[])),
            r#"{"sourcetype":"_json","fields":{"audit_transfer_id":"7-1714557600123456"},"event":{"a":1}}"#
        );
    }

    #[test]
    fn full_envelope() {
        let doc = Document::new(
            "id-1".into(),
            br#"{"@timestamp":"2024-05-01T10:00:00.123Z","who":"ann"}"#.to_vec(),
        );
        doc.route
            .set(Route {
                topic: Some("billing".into()),
                key: Some("eu".into()),
                time: None,
            })
            .unwrap();
        let s = settings(&[
            ("SPLUNK_INDEX", "audit"),
            ("SPLUNK_SOURCETYPE", "audit:json"),
            ("SPLUNK_SOURCE", "audit-transfer"),
            ("SPLUNK_HOST", "db \"1\""),
        ]);
        assert_eq!(
            text(&doc, &s),
            r#"{"time":1714557600.123,"host":"db \"1\"","source":"audit-transfer","sourcetype":"audit:json","index":"audit","fields":{"audit_transfer_id":"id-1","routing_key":"eu","topic":"billing"},"event":{"@timestamp":"2024-05-01T10:00:00.123Z","who":"ann"}}"#
        );
    }

    #[test]
    fn time_is_exact_seconds_or_left_out() {
        assert_eq!(
            epoch_seconds("2024-05-01T10:00:00Z").as_deref(),
            Some("1714557600")
        );
        assert_eq!(
            epoch_seconds("2024-05-01T12:00:00.123456+02:00").as_deref(),
            Some("1714557600.123456")
        );
        assert_eq!(
            epoch_seconds("2024-05-01T10:00:00.500Z").as_deref(),
            Some("1714557600.5")
        );
        assert_eq!(epoch_seconds("yesterday"), None);
        assert_eq!(epoch_seconds("1969-12-31T23:59:59Z"), None);
        let s = settings(&[]);
        for body in [r#"{"@timestamp":"soon"}"#, r#"{"@timestamp":12}"#] {
            let t = text(&Document::new("x".into(), body.as_bytes().to_vec()), &s);
            assert!(t.starts_with(r#"{"sourcetype""#), "{t}");
        }
    }

    #[test]
    fn a_document_that_is_not_an_object_is_refused() {
        let s = settings(&[]);
        for body in ["[1,2]", "\"text\"", "{broken"] {
            let e = envelope(&Document::new("x".into(), body.as_bytes().to_vec()), &s).unwrap_err();
            assert!(e.starts_with("not sent to Splunk"), "{e}");
        }
    }

    #[test]
    fn bodies_are_concatenated_envelopes_under_the_cap() {
        let envelopes: Vec<Vec<u8>> = ["{\"a\":1}", "{\"b\":22}", "{\"c\":333}", "{}"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        let groups = split_by_bytes(&[0, 1, 2, 3], &envelopes, 16);
        assert_eq!(groups, vec![vec![0, 1], vec![2, 3]]);
        assert_eq!(
            body(&groups[0], &envelopes),
            b"{\"a\":1}{\"b\":22}".to_vec()
        );
        // One envelope above the cap still goes, alone.
        assert_eq!(
            split_by_bytes(&[2, 0], &envelopes, 3),
            vec![vec![2], vec![0]]
        );
    }
}
