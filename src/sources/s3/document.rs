//! One line of an export file → one record: its document id, and the document (or why the
//! line cannot become one).
//!
//! **Id:** `<bucket>/<key>#<line>` (`<bucket>/<key>!<entry>#<line>` for a zip with several
//! entries), the line counted from 1 as an editor shows it. The same file read again yields
//! the same ids, so a re-sent file is "already present" in Elasticsearch. An id that would be
//! longer than Elasticsearch's 512 bytes uses a SHA-256 of the file's name instead.
//!
//! **Document** (`S3_OUTPUT=document`): a JSON line is the object as it is, plus `@timestamp`
//! (kept when present; else from `rt`, `creationTime`, `time` or `timestamp`; else the file's
//! time). A CEF line becomes `{"@timestamp", "cef": {version, device: {vendor, product,
//! version, event_class_id}, name, severity, extensions: {..}}}` (plus `syslog` for text
//! before `CEF:`), `@timestamp` from `rt` or else the file's time. `S3_OUTPUT=original`: the
//! line exactly as in the file.

use super::cef;
use super::settings::{S3Format, S3Output};
use crate::sources::{Document, Record};
use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// Elasticsearch's limit for `_id`.
const MAX_ID_BYTES: usize = 512;
/// Fields a JSON line's time is taken from when it has no `@timestamp`, in this order.
const JSON_TIME_FIELDS: [&str; 4] = ["rt", "creationTime", "time", "timestamp"];

/// Where a line comes from.
pub struct Origin<'a> {
    pub bucket: &'a str,
    pub key: &'a str,
    /// The zip entry, when the zip has more than one.
    pub entry: Option<&'a str>,
    /// The file's last-modified time: `@timestamp` of records that carry none.
    pub file_time: DateTime<Utc>,
}

impl Origin<'_> {
    fn file(&self) -> String {
        match self.entry {
            Some(e) => format!("{}!{e}", self.key),
            None => self.key.to_string(),
        }
    }

    /// How operators find the line: `s3://bucket/key:line`.
    pub fn locate(&self, line: u64) -> String {
        format!("s3://{}/{}:{line}", self.bucket, self.file())
    }

    pub fn doc_id(&self, line: u64) -> String {
        let id = format!("{}/{}#{line}", self.bucket, self.file());
        if id.len() <= MAX_ID_BYTES {
            return id;
        }
        let digest = Sha256::digest(format!("{}/{}", self.bucket, self.file()).as_bytes());
        let hex = crate::base::hash::hex(&digest);
        format!("s3-{hex}#{line}")
    }
}

pub struct Built {
    pub record: Record,
    /// The record had a time field that could not be read: `@timestamp` is the file's time.
    pub unreadable_time: bool,
}

pub fn build(
    origin: &Origin<'_>,
    line: u64,
    bytes: &[u8],
    format: S3Format,
    output: S3Output,
) -> Built {
    let key = origin.locate(line);
    let id = origin.doc_id(line);
    let mut unreadable_time = false;
    let doc = match output {
        S3Output::Original => Ok(Document::new(id, bytes.to_vec())),
        S3Output::Document => std::str::from_utf8(bytes)
            .map_err(|e| format!("line is not UTF-8 ({e})"))
            .and_then(|text| document(text, format, origin.file_time, &mut unreadable_time))
            .map(|body| Document::new(id, body)),
    };
    Built {
        record: Record { key, doc },
        unreadable_time,
    }
}

fn document(
    text: &str,
    format: S3Format,
    file_time: DateTime<Utc>,
    unreadable_time: &mut bool,
) -> Result<Vec<u8>, String> {
    let is_json = match format {
        S3Format::Json => true,
        S3Format::Cef => false,
        S3Format::Auto => text.trim_start().starts_with('{'),
    };
    let doc = if is_json {
        json_document(text, file_time, unreadable_time)?
    } else {
        cef_document(text, file_time, unreadable_time)?
    };
    serde_json::to_vec(&doc).map_err(|e| e.to_string())
}

fn json_document(
    text: &str,
    file_time: DateTime<Utc>,
    unreadable_time: &mut bool,
) -> Result<Value, String> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| format!("malformed JSON line: {e}"))?;
    let Value::Object(mut obj) = value else {
        return Err("JSON line is not an object".into());
    };
    if !obj.contains_key("@timestamp") {
        let found = JSON_TIME_FIELDS.iter().find_map(|f| obj.get(*f));
        let at = match found {
            Some(v) => time_of(v).unwrap_or_else(|| {
                *unreadable_time = true;
                file_time
            }),
            None => file_time,
        };
        obj.insert("@timestamp".into(), json!(stamp(at)));
    }
    Ok(Value::Object(obj))
}

fn cef_document(
    text: &str,
    file_time: DateTime<Utc>,
    unreadable_time: &mut bool,
) -> Result<Value, String> {
    let c = cef::parse(text)?;
    let at = match c.extensions.get("rt") {
        Some(rt) => parse_time(rt).unwrap_or_else(|| {
            *unreadable_time = true;
            file_time
        }),
        None => file_time,
    };
    let extensions: Map<String, Value> = c
        .extensions
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    let mut doc = json!({
        "@timestamp": stamp(at),
        "cef": {
            "version": c.version,
            "device": {
                "vendor": c.device_vendor,
                "product": c.device_product,
                "version": c.device_version,
                "event_class_id": c.device_event_class_id,
            },
            "name": c.name,
            "severity": c.severity,
            "extensions": extensions,
        }
    });
    if !c.prefix.is_empty() {
        doc["syslog"] = json!(c.prefix);
    }
    Ok(doc)
}

fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn time_of(v: &Value) -> Option<DateTime<Utc>> {
    match v {
        Value::Number(n) => n.as_i64().and_then(epoch),
        Value::String(s) => parse_time(s),
        _ => None,
    }
}

/// Epoch milliseconds as CEF's `rt` holds them; a number too small to be milliseconds since
/// 1973 is taken as seconds (some JSON exporters write those).
fn epoch(n: i64) -> Option<DateTime<Utc>> {
    if n.abs() < 100_000_000_000 {
        DateTime::from_timestamp(n, 0)
    } else {
        DateTime::from_timestamp_millis(n)
    }
}

/// `rt` and JSON times: epoch milliseconds, RFC 3339, or CEF's `MMM dd yyyy HH:mm:ss[.SSS]`
/// (UTC, optionally followed by `UTC`, `GMT` or `Z`).
pub fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse::<i64>().ok().and_then(epoch);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    let bare = ["UTC", "GMT", "Z"]
        .iter()
        .find_map(|z| s.strip_suffix(z))
        .unwrap_or(s)
        .trim_end();
    [
        "%b %d %Y %H:%M:%S%.f",
        "%b %d %Y %H:%M:%S",
        "%Y-%m-%d %H:%M:%S%.f",
    ]
    .iter()
    .find_map(|f| NaiveDateTime::parse_from_str(bare, f).ok())
    .map(|t| t.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> Origin<'static> {
        Origin {
            bucket: "logs",
            key: "acct/CATO00000000000000000007.zip",
            entry: None,
            file_time: DateTime::parse_from_rfc3339("2024-05-01T10:00:30Z")
                .unwrap()
                .with_timezone(&Utc),
        }
    }

    fn doc(line: &str, format: S3Format) -> (Value, Built) {
        let b = build(&origin(), 3, line.as_bytes(), format, S3Output::Document);
        let body = b.record.doc.as_ref().map(|d| d.body.clone()).unwrap();
        (serde_json::from_slice(&body).unwrap(), b)
    }

    #[test]
    fn ids_and_keys_name_bucket_file_and_line() {
        let o = origin();
        assert_eq!(o.doc_id(3), "logs/acct/CATO00000000000000000007.zip#3");
        assert_eq!(o.locate(3), "s3://logs/acct/CATO00000000000000000007.zip:3");
        let e = Origin {
            entry: Some("a.log"),
            ..origin()
        };
        assert_eq!(
            e.doc_id(1),
            "logs/acct/CATO00000000000000000007.zip!a.log#1"
        );
        let long_key = "k".repeat(600);
        let l = Origin {
            key: &long_key,
            ..origin()
        };
        let id = l.doc_id(9);
        assert!(
            id.starts_with("s3-") && id.ends_with("#9") && id.len() < 80,
            "{id}"
        );
        assert_eq!(id, l.doc_id(9), "stable");
    }

    #[test]
    fn cef_line_becomes_a_document_with_rt_as_timestamp() {
        let (d, b) = doc(
            "CEF:0|Cato Networks|Cato SASE Platform|1.0|Security|Internet Firewall|3|rt=1714557600123 msg=a b",
            S3Format::Cef,
        );
        assert!(!b.unreadable_time);
        assert_eq!(d["@timestamp"], "2024-05-01T10:00:00.123Z");
        assert_eq!(d["cef"]["device"]["vendor"], "Cato Networks");
        assert_eq!(d["cef"]["name"], "Internet Firewall");
        assert_eq!(d["cef"]["severity"], "3");
        assert_eq!(d["cef"]["extensions"]["msg"], "a b");
        assert_eq!(d["cef"]["extensions"]["rt"], "1714557600123");
    }

    #[test]
    fn times_without_rt_or_unreadable_take_the_file_time() {
        let (d, b) = doc("CEF:0|V|P|1|id|n|5|src=1.2.3.4", S3Format::Auto);
        assert_eq!(d["@timestamp"], "2024-05-01T10:00:30.000Z");
        assert!(!b.unreadable_time);
        let (d, b) = doc("CEF:0|V|P|1|id|n|5|rt=yesterday", S3Format::Auto);
        assert_eq!(d["@timestamp"], "2024-05-01T10:00:30.000Z");
        assert!(b.unreadable_time);
        let (d, _) = doc(
            "CEF:0|V|P|1|id|n|5|rt=May 01 2024 12:30:00.250 UTC",
            S3Format::Cef,
        );
        assert_eq!(d["@timestamp"], "2024-05-01T12:30:00.250Z");
    }

    #[test]
    fn json_lines_keep_their_fields() {
        let (d, _) = doc(
            r#"{"creationTime": 1714557600000, "prettyType": "Security", "sourceIp": "10.0.0.1"}"#,
            S3Format::Auto,
        );
        assert_eq!(d["@timestamp"], "2024-05-01T10:00:00.000Z");
        assert_eq!(d["prettyType"], "Security");
        assert_eq!(d["creationTime"], 1714557600000u64);
        let (d, _) = doc(r#"{"@timestamp": "as it was", "x": 1}"#, S3Format::Json);
        assert_eq!(d["@timestamp"], "as it was");
        let (d, _) = doc(r#"{"time": "2024-05-01T12:00:00+02:00"}"#, S3Format::Json);
        assert_eq!(d["@timestamp"], "2024-05-01T10:00:00.000Z");
        let (d, _) = doc(r#"{"timestamp": 1714557600}"#, S3Format::Json);
        assert_eq!(d["@timestamp"], "2024-05-01T10:00:00.000Z", "seconds");
    }

    #[test]
    fn malformed_lines_fail_with_a_reason() {
        let fail = |line: &[u8], f| {
            build(&origin(), 4, line, f, S3Output::Document)
                .record
                .doc
                .unwrap_err()
        };
        assert!(fail(b"{\"a\": ", S3Format::Json).contains("malformed JSON"));
        assert!(fail(b"[1, 2]", S3Format::Json).contains("not an object"));
        assert!(fail(b"CEF:0|V|P", S3Format::Cef).contains("3 of 7"));
        assert!(fail(b"plain text", S3Format::Auto).contains("no \"CEF:\""));
        assert!(fail(b"\xff\xfe", S3Format::Auto).contains("not UTF-8"));
        let b = build(
            &origin(),
            4,
            b"CEF:0|V|P",
            S3Format::Cef,
            S3Output::Document,
        );
        assert_eq!(
            b.record.key,
            "s3://logs/acct/CATO00000000000000000007.zip:4"
        );
    }

    #[test]
    fn original_output_is_the_line_as_it_is() {
        let b = build(
            &origin(),
            1,
            b"CEF:0|broken",
            S3Format::Cef,
            S3Output::Original,
        );
        assert_eq!(b.record.doc.unwrap().body, b"CEF:0|broken");
    }
}
