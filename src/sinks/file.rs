//! JSON-lines files (optionally gzip) and stdout.
//!
//! Each page becomes one file, written under a temporary name, fsynced and renamed, so a
//! reader never sees half a file and the source is marked only once the file is durable.
//! The name is derived from the page's document ids: a page re-shipped after a crash
//! replaces its own file instead of adding a second copy.
//!
//! With `OUTPUT_LAYOUT=routed` a page is split by route, one file per directory
//! `topic/routing-key/YYYY/mm/dd/HH/` (the DSS Event Server layout; see `crate::routing`).
//!
//! With `OUTPUT_LAYOUT=cdp-archive` a page the source names (one CDP archive batch) is written
//! under that name, `<accountId>_<YYYYMMDDTHHMM>Z_<archiveId>.json.gz`, as CDP's own archives.

use super::{Outcome, Sink};
use crate::base::document::Document;
use crate::base::env::Env;
use crate::base::exit::ConfigError;
use crate::base::source::SourceTraits;
use anyhow::{Context, Result};
use async_trait::async_trait;
use flate2::write::GzEncoder;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// `SINK=file`: JSON-lines files under OUTPUT_PATH.
pub const KIND: super::Kind = super::Kind {
    name: "file",
    aliases: &[],
    implied_by: None,
    traits: super::SinkTraits {
        json_only: false,
        prefers_original: false,
    },
    configure: |env, source| Ok(Box::new(Settings::from_env(env, source)?)),
};

/// `SINK=stdout`: JSON lines on standard output.
pub const STDOUT: super::Kind = super::Kind {
    name: "stdout",
    aliases: &[],
    implied_by: None,
    traits: super::SinkTraits {
        json_only: false,
        prefers_original: true,
    },
    configure: |_, _| Ok(Box::new(Stdout)),
};

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
}

/// The file sink's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub dir: PathBuf,
    pub gzip: bool,
    /// OUTPUT_GZIP_LEVEL, 0..=9.
    pub gzip_level: u32,
    pub layout: FileLayout,
}

impl Settings {
    pub fn from_env(env: &Env, source: &SourceTraits) -> Result<Self, ConfigError> {
        let gzip = env.boolean("OUTPUT_GZIP")?;
        let layout = match env
            .get("OUTPUT_LAYOUT")
            .map(|s| s.to_ascii_lowercase())
            .as_deref()
        {
            None | Some("pages") => FileLayout::Pages,
            Some("routed") => FileLayout::Routed,
            Some("cdp-archive") if source.named_units => {
                // CDP's archives are gzip by definition.
                if gzip == Some(false) {
                    return Err(ConfigError(
                        "invalid OUTPUT_GZIP \"false\": OUTPUT_LAYOUT=cdp-archive always writes gzip (.json.gz); unset OUTPUT_GZIP".into(),
                    ));
                }
                FileLayout::CdpArchive
            }
            Some("cdp-archive") => {
                return Err(ConfigError(
                    "invalid OUTPUT_LAYOUT \"cdp-archive\": it needs AUDIT_LOGGER_TYPE=CDP_ARCHIVE"
                        .into(),
                ))
            }
            Some(other) => {
                return Err(ConfigError(format!(
                    "invalid OUTPUT_LAYOUT {other:?}: expected pages, routed or cdp-archive"
                )))
            }
        };
        Ok(Settings {
            dir: PathBuf::from(env.get("OUTPUT_PATH").unwrap_or("output")),
            gzip: gzip.unwrap_or(false) || layout == FileLayout::CdpArchive,
            gzip_level: env
                .number("OUTPUT_GZIP_LEVEL", 0..=9, "0 (store) to 9 (smallest)")?
                .unwrap_or(DEFAULT_GZIP_LEVEL),
            layout,
        })
    }
}

#[async_trait]
impl super::Configured for Settings {
    fn build(&self) -> Result<Box<dyn Sink>> {
        Ok(Box::new(
            FileSink::new(self.dir.clone(), self.gzip)
                .with_level(self.gzip_level)
                .with_layout(self.layout),
        ))
    }
    fn needs_route(&self) -> bool {
        self.layout == FileLayout::Routed
    }
    fn stores_units(&self) -> bool {
        self.layout == FileLayout::CdpArchive
    }
}

#[derive(Debug)]
struct Stdout;

#[async_trait]
impl super::Configured for Stdout {
    fn build(&self) -> Result<Box<dyn Sink>> {
        Ok(Box::new(StdoutSink))
    }
}

pub struct FileSink {
    dir: PathBuf,
    gzip: bool,
    /// OUTPUT_GZIP_LEVEL.
    level: u32,
    layout: FileLayout,
}

impl FileSink {
    pub fn new(dir: PathBuf, gzip: bool) -> Self {
        FileSink {
            dir,
            gzip,
            level: DEFAULT_GZIP_LEVEL,
            layout: FileLayout::Pages,
        }
    }

    pub fn with_level(mut self, level: u32) -> Self {
        self.level = level;
        self
    }

    fn compression(&self) -> Option<flate2::Compression> {
        self.gzip.then(|| flate2::Compression::new(self.level))
    }

    pub fn with_layout(mut self, layout: FileLayout) -> Self {
        self.layout = layout;
        self
    }

    fn file_name(&self, docs: &[&Document]) -> String {
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
        let ext = if self.gzip { "jsonl.gz" } else { "jsonl" };
        format!(
            "audit_{first}_{:016x}.{ext}",
            crate::base::hash::fnv1a(docs.iter().map(|d| d.id.as_bytes()))
        )
    }
}

impl FileSink {
    fn ship_routed(&self, docs: &[&Document]) -> Result<Vec<Outcome>> {
        let mut outcomes = vec![Outcome::Delivered; docs.len()];
        let mut groups: std::collections::BTreeMap<PathBuf, Vec<&Document>> = Default::default();
        for (i, d) in docs.iter().enumerate() {
            match crate::routing::routed_dir(d.route()) {
                Ok(dir) => groups.entry(dir).or_default().push(d),
                Err(why) => outcomes[i] = Outcome::Rejected(why.to_string()),
            }
        }
        // Every file is durable before the page is marked, as with one file per page.
        for (dir, group) in groups {
            let path = write_atomically(
                &self.dir.join(dir),
                &self.file_name(&group),
                self.compression(),
                &group,
            )?;
            tracing::debug!(file = %path.display(), documents = group.len(), "wrote file");
        }
        Ok(outcomes)
    }
}

pub fn write_lines(out: &mut impl Write, docs: &[&Document]) -> std::io::Result<()> {
    for d in docs {
        out.write_all(&d.body)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// Writes `docs` to `dir/name` atomically (see [`crate::base::atomic::replace`]).
/// Default OUTPUT_GZIP_LEVEL: the fastest level. JSON lines compress well at any level, and
/// higher ones cost several times the CPU (level 6 halved the file sink's rate in `make bench`).
pub const DEFAULT_GZIP_LEVEL: u32 = 1;

pub fn write_atomically(
    dir: &Path,
    name: &str,
    gzip: Option<flate2::Compression>,
    docs: &[&Document],
) -> Result<PathBuf> {
    fs::create_dir_all(dir)
        .with_context(|| format!("cannot create OUTPUT_PATH {}", dir.display()))?;
    let final_path = dir.join(name);
    crate::base::atomic::replace(&final_path, |file| {
        if let Some(level) = gzip {
            let mut gz = GzEncoder::new(BufWriter::new(file), level);
            write_lines(&mut gz, docs)?;
            gz.finish()?.into_inner().map_err(|e| e.into_error())
        } else {
            let mut w = BufWriter::new(file);
            write_lines(&mut w, docs)?;
            w.into_inner().map_err(|e| e.into_error())
        }
    })
    .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", final_path.display()))?;
    Ok(final_path)
}

#[async_trait]
impl Sink for FileSink {
    fn name(&self) -> String {
        format!("file:{}", self.dir.display())
    }

    async fn check(&mut self) -> Result<()> {
        fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create OUTPUT_PATH {}", self.dir.display()))?;
        let probe = self
            .dir
            .join(format!(".audit-transfer-check-{}", std::process::id()));
        File::create(&probe)
            .and_then(|_| fs::remove_file(&probe))
            .with_context(|| format!("OUTPUT_PATH {} is not writable", self.dir.display()))
    }

    async fn ship(&mut self, docs: &[&Document]) -> Result<Vec<Outcome>> {
        self.ship_named(None, docs).await
    }

    async fn ship_named(&mut self, name: Option<&str>, docs: &[&Document]) -> Result<Vec<Outcome>> {
        if docs.is_empty() {
            return Ok(Vec::new());
        }
        let file_name = match (self.layout, name) {
            (FileLayout::CdpArchive, Some(name)) => safe_name(name)?,
            (FileLayout::CdpArchive, None) => anyhow::bail!(
                "OUTPUT_LAYOUT=cdp-archive: the source did not name this page's archive file"
            ),
            (FileLayout::Pages, _) => self.file_name(docs),
            (FileLayout::Routed, _) => return self.ship_routed(docs),
        };
        let path = write_atomically(&self.dir, &file_name, self.compression(), docs)?;
        tracing::debug!(file = %path.display(), documents = docs.len(), "wrote file");
        Ok(vec![Outcome::Delivered; docs.len()])
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

/// JSON lines on stdout (logs go to stderr), e.g. `audit-transfer > export.log`.
pub struct StdoutSink;

#[async_trait]
impl Sink for StdoutSink {
    fn name(&self) -> String {
        "stdout".into()
    }

    async fn check(&mut self) -> Result<()> {
        Ok(())
    }

    async fn ship(&mut self, docs: &[&Document]) -> Result<Vec<Outcome>> {
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        // Flushed before the page is marked: a closed pipe fails the run with the page unmarked.
        write_lines(&mut out, docs)
            .and_then(|_| out.flush())
            .context("cannot write to stdout")?;
        Ok(vec![Outcome::Delivered; docs.len()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docs(ids: &[&str]) -> Vec<&'static Document> {
        ids.iter()
            .map(|id| {
                &*Box::leak(Box::new(Document::new(
                    id.to_string(),
                    format!("{{\"id\":\"{id}\"}}").into_bytes(),
                )))
            })
            .collect()
    }

    #[tokio::test]
    async fn same_page_same_file_and_gzip_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = FileSink::new(dir.path().to_path_buf(), true);
        let page = docs(&["1-10", "2-20"]);
        assert_eq!(sink.ship(&page).await.unwrap(), vec![Outcome::Delivered; 2]);
        sink.ship(&page).await.unwrap();
        sink.ship(&docs(&["3-30"])).await.unwrap();
        let mut files: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert_eq!(files.len(), 2, "{files:?}");
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut flate2::read::GzDecoder::new(File::open(&files[0]).unwrap()),
            &mut text,
        )
        .unwrap();
        assert_eq!(text, "{\"id\":\"1-10\"}\n{\"id\":\"2-20\"}\n");
    }

    #[tokio::test]
    async fn cdp_archive_layout_writes_the_named_gzip_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink =
            FileSink::new(dir.path().to_path_buf(), true).with_layout(FileLayout::CdpArchive);
        let name = "acc_20240501T1000Z_arch-1.json.gz";
        sink.ship_named(Some(name), &docs(&["a", "b"]))
            .await
            .unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut flate2::read::GzDecoder::new(File::open(dir.path().join(name)).unwrap()),
            &mut text,
        )
        .unwrap();
        assert_eq!(text, "{\"id\":\"a\"}\n{\"id\":\"b\"}\n");
        assert!(sink.ship_named(Some("../x"), &docs(&["c"])).await.is_err());
        assert!(sink.ship_named(None, &docs(&["c"])).await.is_err());
    }

    #[tokio::test]
    async fn unwritable_directory_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        File::create(&blocker).unwrap();
        let mut sink = FileSink::new(blocker.join("sub"), false);
        let err = sink.ship(&docs(&["1"])).await.unwrap_err().to_string();
        assert!(err.contains("OUTPUT_PATH"), "{err}");
    }
}
