//! Which files come next: the order of the files in the bucket, and gaps in their sequence.
//!
//! **Index order** when the names carry a number (Cato: `CATO` + 20-digit index + `.zip`):
//! the number is the last run of digits in the file name before its first `.`. Files are
//! taken by (index, key), and an index missing between the cursor and the next present file
//! is a gap. **Key order** otherwise: S3 lists keys in lexicographic (UTF-8 byte) order, and
//! the next files are those after the cursor's key. `S3_ORDER=auto` takes index order when
//! every file's name carries a number; a cursor keeps the order it was written in.

use super::settings::S3Order;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;

/// One object of the listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    pub modified: DateTime<Utc>,
    pub etag: Option<String>,
    pub index: Option<u64>,
}

impl ObjectInfo {
    pub fn new(key: String, size: u64, modified: DateTime<Utc>, etag: Option<String>) -> Self {
        let index = file_index(&key);
        ObjectInfo {
            key,
            size,
            modified,
            etag,
            index,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Index,
    Key,
}

/// Where the cursor stands: the last file delivered (or skipped).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Position {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u64>,
}

impl Position {
    pub fn of(o: &ObjectInfo) -> Position {
        Position {
            key: o.key.clone(),
            index: o.index,
        }
    }
}

/// The number in a file name: the last run of digits before the name's first `.`.
pub fn file_index(key: &str) -> Option<u64> {
    let name = key.rsplit('/').next().unwrap_or(key);
    let stem = name.split('.').next().unwrap_or(name);
    let end = stem.rfind(|c: char| c.is_ascii_digit())? + 1;
    let start = stem[..end]
        .rfind(|c: char| !c.is_ascii_digit())
        .map_or(0, |i| i + 1);
    stem[start..end].parse().ok()
}

/// The order of this run: as configured, else the cursor's, else from the names.
pub fn choose_mode(order: S3Order, cursor: Option<Mode>, objects: &[ObjectInfo]) -> Mode {
    match order {
        S3Order::Index => Mode::Index,
        S3Order::Key => Mode::Key,
        S3Order::Auto => cursor.unwrap_or_else(|| {
            if !objects.is_empty() && objects.iter().all(|o| o.index.is_some()) {
                Mode::Index
            } else {
                Mode::Key
            }
        }),
    }
}

fn compare(
    mode: Mode,
    a_index: Option<u64>,
    a_key: &str,
    b_index: Option<u64>,
    b_key: &str,
) -> Ordering {
    match mode {
        Mode::Index => (a_index, a_key).cmp(&(b_index, b_key)),
        Mode::Key => a_key.cmp(b_key),
    }
}

/// The files after `after`, in order.
#[derive(Debug, Default)]
pub struct Plan {
    pub files: Vec<ObjectInfo>,
    /// Index order only: files whose names carry no number; they are not part of the sequence.
    pub unnumbered: Vec<String>,
}

pub fn plan(mode: Mode, objects: Vec<ObjectInfo>, after: Option<&Position>) -> Plan {
    let mut out = Plan::default();
    for o in objects {
        if mode == Mode::Index && o.index.is_none() {
            out.unnumbered.push(o.key);
            continue;
        }
        let later = after
            .is_none_or(|a| compare(mode, o.index, &o.key, a.index, &a.key) == Ordering::Greater);
        if later {
            out.files.push(o);
        }
    }
    out.files
        .sort_by(|a, b| compare(mode, a.index, &a.key, b.index, &b.key));
    out
}

/// Index order: how many indexes are missing between the cursor and `next`, and the first of
/// them. `None` when `next` follows directly (or there is no cursor to compare with).
pub fn missing_before(
    mode: Mode,
    after: Option<&Position>,
    next: &ObjectInfo,
) -> Option<(u64, u64)> {
    if mode != Mode::Index {
        return None;
    }
    let last = after?.index?;
    let next = next.index?;
    let first_missing = last.checked_add(1)?;
    (next > first_missing).then(|| (first_missing, next - first_missing))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(key: &str) -> ObjectInfo {
        ObjectInfo::new(key.into(), 1, DateTime::<Utc>::UNIX_EPOCH, None)
    }

    fn keys(p: &Plan) -> Vec<&str> {
        p.files.iter().map(|o| o.key.as_str()).collect()
    }

    #[test]
    fn index_is_the_last_number_of_the_name() {
        assert_eq!(file_index("acct/CATO00000000000000000123.zip"), Some(123));
        assert_eq!(file_index("2024/05/export-7.json.gz"), Some(7));
        assert_eq!(file_index("a1/b2/log-2024-05-01-0009.log"), Some(9));
        assert_eq!(file_index("dir9/events.log"), None, "folders do not count");
        assert_eq!(file_index("v2.json"), Some(2));
        assert_eq!(
            file_index("CATO99999999999999999999999.zip"),
            None,
            "too large"
        );
    }

    #[test]
    fn index_order_is_numeric_not_lexicographic() {
        let objects = vec![
            obj("p/f10.log"),
            obj("p/f9.log"),
            obj("p/f11.log"),
            obj("p/f2.log"),
        ];
        let mode = choose_mode(S3Order::Auto, None, &objects);
        assert_eq!(mode, Mode::Index);
        let p = plan(mode, objects.clone(), None);
        assert_eq!(keys(&p), ["p/f2.log", "p/f9.log", "p/f10.log", "p/f11.log"]);
        let after = Position::of(&obj("p/f9.log"));
        let p = plan(mode, objects, Some(&after));
        assert_eq!(keys(&p), ["p/f10.log", "p/f11.log"]);
    }

    #[test]
    fn key_order_when_a_name_has_no_number() {
        let objects = vec![obj("p/b.log"), obj("p/a1.log"), obj("p/c.log")];
        let mode = choose_mode(S3Order::Auto, None, &objects);
        assert_eq!(mode, Mode::Key);
        let after = Position {
            key: "p/a1.log".into(),
            index: Some(1),
        };
        assert_eq!(
            keys(&plan(mode, objects, Some(&after))),
            ["p/b.log", "p/c.log"]
        );
    }

    #[test]
    fn the_cursor_keeps_its_order_and_configuration_overrides() {
        let objects = vec![obj("p/b.log")];
        assert_eq!(
            choose_mode(S3Order::Auto, Some(Mode::Index), &objects),
            Mode::Index
        );
        assert_eq!(
            choose_mode(S3Order::Key, Some(Mode::Index), &objects),
            Mode::Key
        );
        assert_eq!(choose_mode(S3Order::Index, None, &[]), Mode::Index);
        assert_eq!(choose_mode(S3Order::Auto, None, &[]), Mode::Key);
        let p = plan(Mode::Index, vec![obj("p/b.log"), obj("p/x3.log")], None);
        assert_eq!(p.unnumbered, ["p/b.log"]);
        assert_eq!(keys(&p), ["p/x3.log"]);
    }

    #[test]
    fn gaps_are_counted_between_cursor_and_next_file() {
        let at = |i: u64| Position {
            key: format!("p/CATO{i:020}.zip"),
            index: Some(i),
        };
        let next = obj("p/CATO00000000000000000008.zip");
        assert_eq!(missing_before(Mode::Index, Some(&at(7)), &next), None);
        assert_eq!(
            missing_before(Mode::Index, Some(&at(4)), &next),
            Some((5, 3))
        );
        assert_eq!(
            missing_before(Mode::Index, None, &next),
            None,
            "a fresh start has no gap"
        );
        assert_eq!(missing_before(Mode::Key, Some(&at(4)), &next), None);
        // The same index again (a second file with that number) is no gap.
        assert_eq!(missing_before(Mode::Index, Some(&at(8)), &next), None);
    }
}
