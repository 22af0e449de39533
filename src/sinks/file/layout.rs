//! Where each document of a page goes: the folder and file (or object) name per
//! `OUTPUT_LAYOUT`, the same for a local directory and a bucket.

use super::Outcome;
use crate::base::document::Document;
use anyhow::Result;
use sha2::{Digest, Sha256};

/// How the file sink names and groups its files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileLayout {
    /// One file per page, named after the page's document ids.
    Pages,
    /// One gzipped JSON-lines file per CDP archive batch, named as CDP's own archives:
    /// `<accountId>_<YYYYMMDDTHHMM>Z_<archiveId>.json.gz`.
    CdpArchive,
    /// `topic/routing-key/YYYY/mm/dd/HH/` under OUTPUT_PATH, one file per page and directory.
    Routed,
    /// `dt=YYYY-MM-DD/` (Hive-style partitions) by the record's date, one file per page and day.
    Dated,
}

/// How a file is named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// Local files: `audit_<first id>_<FNV of the ids>` (unchanged, so a page re-shipped by a
    /// newer version still replaces its own file).
    Local,
    /// Objects: `audit_<first id>_<count>_<SHA-256 of the ids, 16 hex>`; an object is never
    /// replaced, so a name shared by two different pages would be a conflict.
    Object,
}

/// Documents that go into one file.
pub struct Placement<'a> {
    /// Folders below OUTPUT_PATH, outermost first.
    pub folders: Vec<String>,
    pub name: String,
    pub docs: Vec<&'a Document>,
}

/// Splits a page into its files, and the outcome of each document (rejected ones go nowhere).
pub fn place<'a>(
    layout: FileLayout,
    naming: Naming,
    gzip: bool,
    unit_name: Option<&str>,
    docs: &[&'a Document],
) -> Result<(Vec<Placement<'a>>, Vec<Outcome>)> {
    let mut outcomes = vec![Outcome::Delivered; docs.len()];
    let folders_of = |d: &Document| -> std::result::Result<Vec<String>, String> {
        match layout {
            FileLayout::Routed => Ok(crate::routing::routed_dir(d.route())?
                .iter()
                .map(|c| c.to_string_lossy().into_owned())
                .collect()),
            FileLayout::Dated => {
                let t = d
                    .route()
                    .time
                    .ok_or("the record has no date for OUTPUT_LAYOUT=dated")?;
                Ok(vec![format!("dt={}", t.format("%Y-%m-%d"))])
            }
            FileLayout::Pages | FileLayout::CdpArchive => Ok(Vec::new()),
        }
    };
    let mut groups: std::collections::BTreeMap<Vec<String>, Vec<&Document>> = Default::default();
    for (i, d) in docs.iter().enumerate() {
        match folders_of(d) {
            Ok(folders) => groups.entry(folders).or_default().push(d),
            Err(why) => outcomes[i] = Outcome::Rejected(why),
        }
    }
    let placements = groups
        .into_iter()
        .map(|(folders, docs)| {
            let name = match (layout, unit_name) {
                (FileLayout::CdpArchive, Some(name)) => safe_name(name)?,
                (FileLayout::CdpArchive, None) => anyhow::bail!(
                    "OUTPUT_LAYOUT=cdp-archive: the source did not name this page's archive file"
                ),
                _ => page_name(naming, gzip, &docs),
            };
            Ok(Placement {
                folders,
                name,
                docs,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((placements, outcomes))
}

/// The name of a page's file, from its document ids: a page re-shipped after a crash gets the
/// same name.
pub fn page_name(naming: Naming, gzip: bool, docs: &[&Document]) -> String {
    let first: String = docs[0]
        .id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .take(48)
        .collect();
    let ext = if gzip { "jsonl.gz" } else { "jsonl" };
    match naming {
        Naming::Local => format!(
            "audit_{first}_{:016x}.{ext}",
            crate::base::hash::fnv1a(docs.iter().map(|d| d.id.as_bytes()))
        ),
        Naming::Object => {
            let mut h = Sha256::new();
            for d in docs {
                h.update(d.id.as_bytes());
                h.update([0]);
            }
            let hex = crate::base::hash::hex(&h.finalize()[..8]);
            format!("audit_{first}_{}_{hex}.{ext}", docs.len())
        }
    }
}

/// A source-given name is used only if it is a plain file name: the parts come from the API.
fn safe_name(name: &str) -> Result<String> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if ok {
        Ok(name.to_string())
    } else {
        anyhow::bail!("refusing to write a file named {name:?}: not a plain file name")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::document::Route;

    fn doc(id: &str, time: Option<&str>) -> &'static Document {
        let d = Box::leak(Box::new(Document::new(id.into(), b"{}".to_vec())));
        if let Some(t) = time {
            d.route
                .set(Route {
                    time: Some(t.parse().unwrap()),
                    ..Route::default()
                })
                .unwrap();
        }
        d
    }

    #[test]
    fn dated_layout_splits_by_utc_day_and_rejects_undated_records() {
        let page = [
            doc("1", Some("2026-11-29T23:59:59Z")),
            doc("2", Some("2026-11-30T00:00:00Z")),
            doc("3", None),
            doc("4", Some("2026-11-29T01:00:00+02:00")),
        ];
        let (files, outcomes) =
            place(FileLayout::Dated, Naming::Object, true, None, &page).unwrap();
        let got: Vec<(String, usize)> = files
            .iter()
            .map(|p| (p.folders.join("/"), p.docs.len()))
            .collect();
        assert_eq!(
            got,
            [
                ("dt=2026-11-28".into(), 1),
                ("dt=2026-11-29".into(), 1),
                ("dt=2026-11-30".into(), 1)
            ]
        );
        assert!(matches!(&outcomes[2], Outcome::Rejected(why) if why.contains("dated")));
        assert_eq!(
            outcomes
                .iter()
                .filter(|o| **o == Outcome::Delivered)
                .count(),
            3
        );
    }

    #[test]
    fn object_names_hold_first_id_count_and_id_hash() {
        let a = [doc("7-100", None), doc("8-200", None)];
        let b = [doc("7-100", None), doc("9-300", None)];
        let name = page_name(Naming::Object, true, &a);
        assert!(
            name.starts_with("audit_7-100_2_") && name.ends_with(".jsonl.gz"),
            "{name}"
        );
        assert_eq!(name, page_name(Naming::Object, true, &a));
        assert_ne!(name, page_name(Naming::Object, true, &b));
    }
}
