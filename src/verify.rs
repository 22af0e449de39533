//! `audit-transfer verify`: reads back, by their deterministic ids, the documents of the records
//! the source marked sent, and compares each with the document the record produces today.
//! Missing: marked sent, not in the destination. Altered: there, but different. Records are
//! read and checked a page at a time, so memory stays flat however many there are.

use crate::base::document::Document;
use crate::base::sink::Sink;
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
        self.unreadable == 0 && self.destinations.iter().all(|d| d.missing + d.altered == 0)
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
            out.push_str(&format!(
                "{name}: {} checked, {} missing, {} altered\n",
                d.checked, d.missing, d.altered
            ));
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

/// Whether the stored document is the one the record produces: the same JSON value (key order
/// and number spelling aside), or the same bytes where the document is not JSON.
pub fn same(expected: &[u8], stored: &[u8]) -> bool {
    match (
        serde_json::from_slice::<Value>(expected),
        serde_json::from_slice::<Value>(stored),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => expected == stored,
    }
}

pub async fn verify(
    source: &mut dyn Source,
    destinations: &mut [Destination],
    window: &Window,
    page: usize,
) -> Result<Report> {
    let mut report = Report {
        destinations: destinations
            .iter()
            .map(|d| Checked {
                target: d.name.clone(),
                sink: d.sink.name(),
                ..Checked::default()
            })
            .collect(),
        ..Report::default()
    };
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
        for (d, checked) in destinations.iter_mut().zip(&mut report.destinations) {
            if checked.not_checked.is_some() {
                continue;
            }
            let mine: Vec<(&Document, &str)> = docs
                .iter()
                .filter(|(doc, _)| d.accept.accepts(doc.route()))
                .copied()
                .collect();
            let list: Vec<&Document> = mine.iter().map(|(doc, _)| *doc).collect();
            let stored = match d.sink.read_back(&list).await {
                Ok(stored) => stored,
                // With several targets, one that cannot be read back is reported as such.
                Err(e)
                    if d.name.is_some()
                        && crate::base::exit::exit_for(&e) == crate::base::exit::Exit::Config =>
                {
                    checked.not_checked = Some(crate::base::exit::one_line(&e));
                    continue;
                }
                Err(e) => return Err(e),
            };
            checked.checked += list.len() as u64;
            for ((doc, key), stored) in mine.iter().zip(stored) {
                let (n, ids) = match stored {
                    None => (&mut checked.missing, &mut checked.missing_ids),
                    Some(s) if !same(&doc.body, &s) => {
                        (&mut checked.altered, &mut checked.altered_ids)
                    }
                    Some(_) => continue,
                };
                *n += 1;
                if ids.len() < LIST {
                    ids.push(Problem {
                        id: doc.id.clone(),
                        record: key.to_string(),
                    });
                }
            }
        }
        crate::progress::advance(records.len() as u64);
    }
    crate::progress::finish();
    if !report.destinations.is_empty()
        && report.destinations.iter().all(|d| d.not_checked.is_some())
    {
        return Err(crate::base::exit::config_error(
            "verify reads documents back by id from Elasticsearch/OpenSearch: no target is one",
        ));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_compare_as_json_values() {
        assert!(same(br#"{"a":1,"b":"x"}"#, br#"{"b":"x","a":1}"#));
        assert!(!same(br#"{"a":1}"#, br#"{"a":2}"#));
        assert!(!same(br#"{"a":1}"#, br#"{"a":1,"b":null}"#));
        assert!(same(b"plain line", b"plain line"));
        assert!(!same(b"plain line", b"plain line!"));
    }
}
