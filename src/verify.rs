//! `audit-transfer verify`: reads back, by their deterministic ids, the documents of the records
//! the source marked sent, and compares each with the document the record produces today.
//! Missing: marked sent, not in the destination. Altered: there, but different. Records are
//! read and checked a page at a time, so memory stays flat however many there are.
//!
//! Files and buckets hold documents without their ids, so there the documents are matched by
//! content instead: the digest of each expected document is counted (16 bytes per record), the
//! destination is listed once, and a second pass over the source names the records still
//! unmatched. An altered document there shows as one missing record and one unexpected line.

use crate::base::document::Document;
use crate::base::sink::{Found, ReadBack, Sink};
use crate::base::source::{Source, Window};
use crate::routing::Selection;
use anyhow::Result;
use serde::Serialize;
use serde_json::Value;

/// Ids listed per kind of problem and target; the rest are counted.
const LIST: usize = 100;

/// One destination to check: its name (TARGETS), a client, and what it accepts.
pub struct Destination {
    pub name: Option<String>,
    pub sink: Box<dyn Sink>,
    pub accept: Selection,
}

/// What one destination holds of what was sent.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Checked {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    pub sink: String,
    /// Documents looked up.
    pub checked: u64,
    pub missing: u64,
    pub altered: u64,
    /// The first [`LIST`] ids of each kind, with the record's key at the source.
    pub missing_ids: Vec<Problem>,
    pub altered_ids: Vec<Problem>,
    /// Files and buckets: documents there that no record marked sent produces (forged, or
    /// altered), where they are. `None`: not counted (a window or an accept list leaves
    /// documents there that this check does not expect).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unexpected: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unexpected_at: Vec<String>,
    /// Why this destination was not checked (it cannot be read back by id).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_checked: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub id: String,
    pub record: String,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Records marked sent in the window.
    pub records: u64,
    /// Marked sent, but no document can be built from the row today (its message was changed
    /// into something that is not an audit record): counted, listed in the log.
    pub unreadable: u64,
    pub destinations: Vec<Checked>,
}

impl Report {
    pub fn clean(&self) -> bool {
        self.unreadable == 0
            && self
                .destinations
                .iter()
                .all(|d| d.missing + d.altered + d.unexpected.unwrap_or(0) == 0)
    }

    pub fn text(&self, window: &Window) -> String {
        let at = |t: Option<chrono::DateTime<chrono::Utc>>| {
            t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_else(|| "-".into())
        };
        let mut out = format!(
            "records marked sent: {} (created_at from {} until {})\n",
            self.records,
            at(window.since),
            at(window.until)
        );
        if self.unreadable > 0 {
            out.push_str(&format!(
                "unreadable:          {} (rows that no longer make a document)\n",
                self.unreadable
            ));
        }
        for d in &self.destinations {
            let name = match &d.target {
                Some(t) => format!("target {t} ({})", d.sink),
                None => d.sink.clone(),
            };
            if let Some(why) = &d.not_checked {
                out.push_str(&format!("{name}: not checked: {why}\n"));
                continue;
            }
            match d.unexpected {
                Some(u) => out.push_str(&format!(
                    "{name}: {} checked by content, {} missing, {u} unexpected\n",
                    d.checked, d.missing
                )),
                None => out.push_str(&format!(
                    "{name}: {} checked, {} missing, {} altered\n",
                    d.checked, d.missing, d.altered
                )),
            }
            for at in &d.unexpected_at {
                out.push_str(&format!("  unexpected: {at}\n"));
            }
            if d.unexpected.unwrap_or(0) > d.unexpected_at.len() as u64 {
                out.push_str(&format!(
                    "  unexpected: {} more\n",
                    d.unexpected.unwrap_or(0) - d.unexpected_at.len() as u64
                ));
            }
            for (kind, list, n) in [
                ("missing", &d.missing_ids, d.missing),
                ("altered", &d.altered_ids, d.altered),
            ] {
                for p in list {
                    out.push_str(&format!("  {kind}: {} (record {})\n", p.id, p.record));
                }
                if n > list.len() as u64 {
                    out.push_str(&format!("  {kind}: {} more\n", n - list.len() as u64));
                }
            }
        }
        out.push_str(if self.clean() {
            "verified: every record marked sent is in the destination, unchanged\n"
        } else {
            "NOT VERIFIED: see above\n"
        });
        out
    }
}

/// A document as `verify` compares it: its JSON value without the link INTEGRITY_CHAIN adds
/// (which the record alone does not produce; `verify --chain` checks it).
fn unlinked(doc: &[u8]) -> Option<Value> {
    let mut v = serde_json::from_slice::<Value>(doc).ok()?;
    if let Value::Object(map) = &mut v {
        map.remove(crate::base::chain::FIELD);
    }
    Some(v)
}

/// Whether the stored document is the one the record produces: the same JSON value (key order
/// and number spelling aside, and its link if it has one), or the same bytes where the
/// document is not JSON.
pub fn same(expected: &[u8], stored: &[u8]) -> bool {
    match (unlinked(expected), unlinked(stored)) {
        (Some(a), Some(b)) => a == b,
        _ => expected == stored,
    }
}

/// The digest documents are matched by where they carry no id: of the JSON value (so key
/// order, spacing and a link do not matter), else of the bytes.
fn digest(doc: &[u8]) -> [u8; 16] {
    use sha2::Digest;
    let canonical = unlinked(doc).and_then(|v| serde_json::to_vec(&v).ok());
    let hash = sha2::Sha256::digest(canonical.as_deref().unwrap_or(doc));
    let mut out = [0u8; 16];
    out.copy_from_slice(&hash[..16]);
    out
}

/// The expected documents of one destination read back by content, counted by digest.
#[derive(Default)]
struct Expected(std::collections::HashMap<[u8; 16], u32>);

impl Expected {
    /// Takes one document with this digest off the count; false when none is left.
    fn take(&mut self, d: &[u8; 16]) -> bool {
        match self.0.get_mut(d) {
            Some(n) if *n > 1 => {
                *n -= 1;
                true
            }
            Some(_) => {
                self.0.remove(d);
                true
            }
            None => false,
        }
    }
}

/// Lines of a destination matched against what is expected.
struct Matcher<'a> {
    expected: &'a mut Expected,
    checked: &'a mut Checked,
}

impl Found for Matcher<'_> {
    fn found(&mut self, at: &str, line: &[u8]) {
        if self.expected.take(&digest(line)) {
            return;
        }
        // INTEGRITY_CHAIN's checkpoints lie beside the documents; `verify --chain` checks them.
        if crate::base::chain::Checkpoint::from_document(line).is_some() {
            return;
        }
        if let Some(n) = self.checked.unexpected.as_mut() {
            *n += 1;
            if self.checked.unexpected_at.len() < LIST {
                self.checked.unexpected_at.push(at.to_string());
            }
        }
    }
}

fn note(list: &mut Vec<Problem>, doc: &Document, key: &str) {
    if list.len() < LIST {
        list.push(Problem {
            id: doc.id.clone(),
            record: key.to_string(),
        });
    }
}

/// `again` reads the source once more, from the start (files and buckets: to name what is
/// missing). `everything`: no window or accept list narrows the check, so what a destination
/// listed by content holds beyond the expected documents is unexpected.
pub async fn verify(
    source: &mut dyn Source,
    again: Option<&mut dyn Source>,
    destinations: &mut [Destination],
    window: &Window,
    page: usize,
    everything: bool,
) -> Result<Report> {
    let mut report = Report {
        destinations: destinations
            .iter()
            .map(|d| Checked {
                target: d.name.clone(),
                sink: d.sink.name(),
                not_checked: match d.sink.read_back_mode() {
                    ReadBack::No => Some(format!(
                        "verify cannot read documents back from {}: it reads Elasticsearch/OpenSearch by id, files and buckets by content",
                        d.sink.name()
                    )),
                    _ => None,
                },
                unexpected: (d.sink.read_back_mode() == ReadBack::ByContent
                    && everything
                    && d.accept.is_all())
                .then_some(0),
                ..Checked::default()
            })
            .collect(),
        ..Report::default()
    };
    if report.destinations.iter().all(|d| d.not_checked.is_some()) {
        return Err(crate::base::exit::config_error(format!(
            "verify reads Elasticsearch/OpenSearch by id and files and buckets by content: {} cannot be read back",
            report
                .destinations
                .iter()
                .map(|d| d.sink.clone())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let by_content = |d: &Destination| d.sink.read_back_mode() == ReadBack::ByContent;
    let mut expected: Vec<Expected> = destinations.iter().map(|_| Expected::default()).collect();
    crate::progress::start(None);
    while let Some(records) = source.sent_page(window, page).await? {
        report.records += records.len() as u64;
        let mut docs: Vec<(&Document, &str)> = Vec::with_capacity(records.len());
        for r in &records {
            match &r.doc {
                Ok(d) => docs.push((d, &r.key)),
                Err(why) => {
                    report.unreadable += 1;
                    tracing::warn!(record = %r.key, "marked sent, but makes no document now: {why}");
                }
            }
        }
        for ((d, checked), expected) in destinations
            .iter_mut()
            .zip(&mut report.destinations)
            .zip(&mut expected)
        {
            if checked.not_checked.is_some() {
                continue;
            }
            let mine: Vec<(&Document, &str)> = docs
                .iter()
                .filter(|(doc, _)| d.accept.accepts(doc.route()))
                .copied()
                .collect();
            checked.checked += mine.len() as u64;
            if by_content(d) {
                for (doc, _) in &mine {
                    *expected.0.entry(digest(&doc.body)).or_insert(0) += 1;
                }
                continue;
            }
            if mine.is_empty() {
                continue;
            }
            let list: Vec<&Document> = mine.iter().map(|(doc, _)| *doc).collect();
            let stored = d.sink.read_back(&list).await?;
            for ((doc, key), stored) in mine.iter().zip(stored) {
                match stored {
                    None => {
                        checked.missing += 1;
                        note(&mut checked.missing_ids, doc, key);
                    }
                    Some(s) if !same(&doc.body, &s) => {
                        checked.altered += 1;
                        note(&mut checked.altered_ids, doc, key);
                    }
                    Some(_) => {}
                }
            }
        }
        crate::progress::advance(records.len() as u64);
    }
    crate::progress::finish();
    // Files and buckets: list what they hold against the expected digests.
    let mut left = false;
    for ((d, checked), expected) in destinations
        .iter_mut()
        .zip(&mut report.destinations)
        .zip(&mut expected)
    {
        if checked.not_checked.is_some() || !by_content(d) {
            continue;
        }
        d.sink.scan(&mut Matcher { expected, checked }).await?;
        left |= !expected.0.is_empty();
    }
    // What no line matched is missing: a second pass names those records.
    if let (true, Some(again)) = (left, again) {
        while let Some(records) = again.sent_page(window, page).await? {
            for r in &records {
                let Ok(doc) = &r.doc else { continue };
                for ((d, checked), expected) in destinations
                    .iter()
                    .zip(&mut report.destinations)
                    .zip(&mut expected)
                {
                    if checked.not_checked.is_some()
                        || !by_content(d)
                        || !d.accept.accepts(doc.route())
                    {
                        continue;
                    }
                    if expected.take(&digest(&doc.body)) {
                        checked.missing += 1;
                        note(&mut checked.missing_ids, doc, &r.key);
                    }
                }
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_ignore_key_order_and_spacing() {
        assert_eq!(
            digest(br#"{"a":1,"b":"x"}"#),
            digest(br#"{ "b": "x", "a": 1 }"#)
        );
        assert_ne!(digest(br#"{"a":1}"#), digest(br#"{"a":2}"#));
        let mut e = Expected::default();
        *e.0.entry(digest(b"x")).or_insert(0) += 2;
        assert!(e.take(&digest(b"x")) && e.take(&digest(b"x")) && !e.take(&digest(b"x")));
        assert!(e.0.is_empty());
    }

    #[test]
    fn documents_compare_as_json_values() {
        assert!(same(br#"{"a":1,"b":"x"}"#, br#"{"b":"x","a":1}"#));
        assert!(!same(br#"{"a":1}"#, br#"{"a":2}"#));
        assert!(!same(br#"{"a":1}"#, br#"{"a":1,"b":null}"#));
        assert!(same(br#"{"a":1}"#, br#"{"a":1,"integrity":{"seq":1}}"#));
        assert_eq!(
            digest(br#"{"a":1}"#),
            digest(br#"{"integrity":{"seq":1},"a":1}"#)
        );
        assert!(same(b"plain line", b"plain line"));
        assert!(!same(b"plain line", b"plain line!"));
    }
}
