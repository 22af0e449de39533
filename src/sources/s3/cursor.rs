//! The cursor file (`S3_CURSOR_FILE`): where the sequence stands between runs.
//!
//! The vendor's client kept two numbers, the index of the last file downloaded and the
//! attempts at the next one; this file keeps the same, as JSON, plus what makes it safe to
//! reuse: the bucket and prefix it belongs to, the order it was written in, and the files
//! skipped after `S3_MAX_ATTEMPTS`. It is replaced atomically (temporary file, fsync, rename,
//! fsync of the directory), and `last` moves only when the sink acknowledged every record of
//! a file. A missing file starts at the first file in the bucket; an unreadable or corrupt one
//! stops the run (exit 2) and is never silently replaced by a fresh start.

use super::listing::{Mode, Position};
use crate::base::exit::config_error;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

const FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cursor {
    pub format: u32,
    pub bucket: String,
    pub prefix: String,
    /// The order `last` refers to; `None` until the first file was taken.
    pub order: Option<Mode>,
    /// The last file delivered completely (or skipped); `None`: start at the first file.
    pub last: Option<Position>,
    /// Attempts at the file after `last`, counted when a run starts it.
    pub next: Option<Pending>,
    /// Files given up on after `S3_MAX_ATTEMPTS` with `S3_ON_BAD_FILE=skip`.
    #[serde(default)]
    pub skipped: Vec<Skipped>,
    /// What the runs of this file accept (`Routing::accept_label`); `None`: everything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepts: Option<String>,
    /// For `status`: how the last runs ended.
    #[serde(default, skip_serializing_if = "crate::sources::LastRuns::is_empty")]
    pub runs: crate::sources::LastRuns,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pending {
    pub key: String,
    pub attempts: u32,
    #[serde(default)]
    pub last_error: Option<String>,
    /// With TARGETS: records of this file some target lacks, by record key, with the targets
    /// that hold them; the next run sends them to the others only.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub held: std::collections::BTreeMap<String, Vec<String>>,
    /// With TARGETS: records of this file every target that takes them holds; reading the file
    /// again passes them over.
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub done: std::collections::BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Skipped {
    pub key: String,
    pub attempts: u32,
    pub last_error: String,
    /// The cursor's position before the file: `retry-failed` goes back there.
    pub after: Option<Position>,
}

impl Cursor {
    pub fn new(bucket: &str, prefix: &str, accepts: Option<String>) -> Cursor {
        Cursor {
            format: FORMAT,
            bucket: bucket.into(),
            prefix: prefix.into(),
            order: None,
            last: None,
            next: None,
            skipped: Vec::new(),
            accepts,
            runs: Default::default(),
        }
    }
}

/// Reads the cursor file; `None` when there is none yet.
pub fn load(
    path: &Path,
    bucket: &str,
    prefix: &str,
    accepts: Option<&str>,
) -> Result<Option<Cursor>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(config_error(format!(
                "cannot read S3_CURSOR_FILE {}: {e}",
                path.display()
            )))
        }
    };
    let cursor: Cursor = serde_json::from_str(&text).map_err(|e| {
        config_error(format!(
            "S3_CURSOR_FILE {} is corrupt ({e}); it is not replaced automatically: restore it, \
             or delete it to start again at the first file in the bucket",
            path.display()
        ))
    })?;
    if cursor.format != FORMAT {
        return Err(config_error(format!(
            "S3_CURSOR_FILE {} has format {}, this version reads format {FORMAT}",
            path.display(),
            cursor.format
        )));
    }
    // A position in one bucket or folder means nothing in another.
    if cursor.bucket != bucket || cursor.prefix != prefix {
        return Err(config_error(format!(
            "S3_CURSOR_FILE {} belongs to S3_BUCKET={} S3_PREFIX={:?}, not {bucket} {prefix:?}: \
             use a cursor file per bucket and prefix",
            path.display(),
            cursor.bucket,
            cursor.prefix
        )));
    }
    if cursor.accepts.as_deref() != accepts {
        return Err(config_error(format!(
            "S3_CURSOR_FILE {} belongs to runs that accept {}, not {}: use a cursor file per ACCEPT_TOPICS/ACCEPT_ROUTING_KEYS selection",
            path.display(),
            cursor.accepts.as_deref().unwrap_or("everything"),
            accepts.unwrap_or("everything")
        )));
    }
    Ok(Some(cursor))
}

pub fn save(path: &Path, cursor: &Cursor) -> Result<()> {
    let json = serde_json::to_vec_pretty(cursor)?;
    crate::base::atomic::replace(path, |mut f| {
        f.write_all(&json)?;
        f.write_all(b"\n")?;
        Ok(f)
    })
    .with_context(|| format!("cannot write S3_CURSOR_FILE {}", path.display()))
}

/// Runs of one cursor file must not overlap: both would take the same next file.
pub fn lock(path: &Path) -> Result<std::fs::File> {
    crate::base::atomic::lock_state_file("S3_CURSOR_FILE", path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_and_loads_and_refuses_another_bucket_or_a_corrupt_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cursor.json");
        assert_eq!(load(&path, "b", "p", None).unwrap(), None);
        let mut c = Cursor::new("b", "p", None);
        c.order = Some(Mode::Index);
        c.last = Some(Position {
            key: "p/CATO00000000000000000003.zip".into(),
            index: Some(3),
        });
        c.next = Some(Pending {
            key: "p/CATO00000000000000000004.zip".into(),
            attempts: 2,
            last_error: Some("corrupt".into()),
            held: [("r1".to_string(), vec!["siem".to_string()])].into(),
            done: ["r0".to_string()].into(),
        });
        save(&path, &c).unwrap();
        assert_eq!(load(&path, "b", "p", None).unwrap(), Some(c));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("\"index\": 3") && text.contains("\"attempts\": 2"),
            "{text}"
        );
        let e = load(&path, "other", "p", None).unwrap_err().to_string();
        assert!(e.contains("belongs to S3_BUCKET=b"), "{e}");
        // A cursor of one ACCEPT_* selection is refused to another.
        let e = load(&path, "b", "p", Some("topics a of t; routing keys (all)"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("belongs to runs that accept everything"), "{e}");
        std::fs::write(&path, "{").unwrap();
        let e = load(&path, "b", "p", None).unwrap_err();
        assert_eq!(
            crate::base::exit::exit_for(&e),
            crate::base::exit::Exit::Config
        );
        assert!(e.to_string().contains("is corrupt"));
    }
}
