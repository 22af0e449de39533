//! JSON-lines files (optionally gzip) in a directory or a bucket, and stdout.
//!
//! Each page becomes one file (per folder of the layout), named after the page's document ids,
//! so a page re-shipped after a crash lands on its own file instead of adding a second copy; the
//! source is marked only once every file of the page is durable. `OUTPUT_PATH` is a directory
//! (or `file:///abs/path`), written by [`local`] (atomic rename), or `s3://`, `gs://`, `az://`,
//! written by [`object`] (create-only objects). [`layout`] places the documents, the same for
//! both:
//!
//! - `OUTPUT_LAYOUT=pages`: one file per page.
//! - `routed`: one file per page and directory `topic/routing-key/YYYY/mm/dd/HH/` (the DSS Event
//!   Server layout; see `crate::routing`).
//! - `dated`: one file per page and day, `dt=YYYY-MM-DD/`, by the record's date (UTC).
//! - `cdp-archive`: a page the source names (one CDP archive batch) is written under that name,
//!   `<accountId>_<YYYYMMDDTHHMM>Z_<archiveId>.json.gz`, as CDP's own archives.

mod layout;
mod local;
mod object;
mod scan;

use super::{Outcome, Sink};
use crate::base::document::Document;
use crate::base::env::Env;
use crate::base::exit::ConfigError;
use crate::base::source::SourceTraits;
use anyhow::{Context, Result};
use async_trait::async_trait;
pub use layout::FileLayout;
use layout::Naming;
use std::io::Write;
use std::path::PathBuf;

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

/// Where the files go.
#[derive(Debug, Clone)]
pub enum Target {
    Local(PathBuf),
    Bucket(object::Bucket),
}

/// The file sink's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub target: Target,
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
            Some("dated") => FileLayout::Dated,
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
                    "invalid OUTPUT_LAYOUT {other:?}: expected pages, routed, dated or cdp-archive"
                )))
            }
        };
        // Refused rather than ignored: an operator relying on it would believe objects locked.
        for (var, value) in [
            ("OUTPUT_RETENTION_DAYS", env.get("OUTPUT_RETENTION_DAYS")),
            ("OUTPUT_RETENTION_MODE", env.get("OUTPUT_RETENTION_MODE")),
        ] {
            if value.is_some() {
                return Err(ConfigError(format!(
                    "{var} is not supported: per-object retention (S3 Object Lock) cannot be set through the object_store crate; set a default retention on the bucket instead (docs/sinks.md, file sink)"
                )));
            }
        }
        Ok(Settings {
            target: target(env.get("OUTPUT_PATH").unwrap_or("output"))?,
            gzip: gzip.unwrap_or(false) || layout == FileLayout::CdpArchive,
            gzip_level: env
                .number("OUTPUT_GZIP_LEVEL", 0..=9, "0 (store) to 9 (smallest)")?
                .unwrap_or(DEFAULT_GZIP_LEVEL),
            layout,
        })
    }
}

/// OUTPUT_PATH: a bucket URL, `file:///abs/path`, or a directory.
fn target(value: &str) -> Result<Target, ConfigError> {
    let shown = crate::base::secret::blank_user_info(value);
    if shown != value {
        return Err(ConfigError(format!(
            "invalid OUTPUT_PATH {shown:?}: credentials do not belong in it: use the variables for them"
        )));
    }
    if let Some(location) = object::Location::parse(value) {
        let location = location?;
        let store = location.store()?;
        return Ok(Target::Bucket(object::Bucket::new(location, store)));
    }
    if let Some(rest) = value.strip_prefix("file://") {
        return if rest.starts_with('/') {
            Ok(Target::Local(PathBuf::from(rest)))
        } else {
            Err(ConfigError(format!(
                "invalid OUTPUT_PATH {value:?}: expected file:///absolute/path (no host)"
            )))
        };
    }
    // Something URL-like that is not one of ours (`s3:/x`, `https://...`) is a mistake, not a
    // directory name.
    if let Some((scheme, _)) = value.split_once(':') {
        let ours = ["s3", "gs", "az", "file"].contains(&scheme.to_ascii_lowercase().as_str());
        if ours || (value.contains("://") && scheme.chars().all(|c| c.is_ascii_alphanumeric())) {
            return Err(ConfigError(format!(
                "invalid OUTPUT_PATH {value:?}: expected a directory, file:///abs/path, s3://bucket/prefix/, gs://bucket/prefix/ or az://container/prefix/"
            )));
        }
    }
    Ok(Target::Local(PathBuf::from(value)))
}

#[async_trait]
impl super::Configured for Settings {
    fn build(&self) -> Result<Box<dyn Sink>> {
        Ok(Box::new(FileSink {
            target: self.target.clone(),
            gzip: self.gzip,
            level: self.gzip_level,
            layout: self.layout,
        }))
    }
    fn needs_route(&self) -> bool {
        matches!(self.layout, FileLayout::Routed | FileLayout::Dated)
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
    target: Target,
    gzip: bool,
    /// OUTPUT_GZIP_LEVEL.
    level: u32,
    layout: FileLayout,
}

impl FileSink {
    #[cfg(test)]
    fn new(dir: PathBuf, gzip: bool) -> Self {
        FileSink {
            target: Target::Local(dir),
            gzip,
            level: DEFAULT_GZIP_LEVEL,
            layout: FileLayout::Pages,
        }
    }

    #[cfg(test)]
    fn with_layout(mut self, layout: FileLayout) -> Self {
        self.layout = layout;
        self
    }

    fn compression(&self) -> Option<flate2::Compression> {
        self.gzip.then(|| flate2::Compression::new(self.level))
    }
}

pub fn write_lines(out: &mut impl Write, docs: &[&Document]) -> std::io::Result<()> {
    for d in docs {
        out.write_all(&d.body)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// Default OUTPUT_GZIP_LEVEL: the fastest level. JSON lines compress well at any level, and
/// higher ones cost several times the CPU (level 6 halved the file sink's rate in `make bench`).
pub const DEFAULT_GZIP_LEVEL: u32 = 1;

#[async_trait]
impl Sink for FileSink {
    fn name(&self) -> String {
        match &self.target {
            Target::Local(dir) => format!("file:{}", dir.display()),
            Target::Bucket(b) => format!("file:{}", b.location),
        }
    }

    async fn check(&mut self) -> Result<()> {
        match &self.target {
            Target::Local(dir) => local::check(dir),
            Target::Bucket(b) => b.check().await,
        }
    }

    async fn ship(&mut self, docs: &[&Document]) -> Result<Vec<Outcome>> {
        self.ship_named(None, docs).await
    }

    fn read_back_mode(&self) -> crate::base::sink::ReadBack {
        crate::base::sink::ReadBack::ByContent
    }

    async fn scan(&mut self, each: &mut dyn crate::base::sink::Found) -> Result<()> {
        match &self.target {
            Target::Local(dir) => scan::local(dir, each),
            Target::Bucket(b) => scan::bucket(b, each).await,
        }
    }

    async fn ship_named(&mut self, name: Option<&str>, docs: &[&Document]) -> Result<Vec<Outcome>> {
        if docs.is_empty() {
            return Ok(Vec::new());
        }
        let naming = match self.target {
            Target::Local(_) => Naming::Local,
            Target::Bucket(_) => Naming::Object,
        };
        let (files, mut outcomes) = layout::place(self.layout, naming, self.gzip, name, docs)?;
        // Every file is durable before the page is marked.
        for file in files {
            match &self.target {
                Target::Local(dir) => {
                    let dir = file.folders.iter().fold(dir.clone(), |d, f| d.join(f));
                    let path =
                        local::write_atomically(&dir, &file.name, self.compression(), &file.docs)?;
                    tracing::debug!(file = %path.display(), documents = file.docs.len(), "wrote file");
                }
                Target::Bucket(b) => {
                    let path = b.path(&file.folders, &file.name);
                    let written = b.write(&path, self.compression(), &file.docs).await?;
                    tracing::debug!(object = %path, documents = file.docs.len(), ?written, "wrote object");
                    if written == object::Written::AlreadyThere {
                        // Each document of that file: stored by an earlier run.
                        let mut i = 0;
                        for d in &file.docs {
                            while !std::ptr::eq(docs[i], *d) {
                                i += 1;
                            }
                            outcomes[i] = Outcome::AlreadyPresent;
                        }
                    }
                }
            }
        }
        Ok(outcomes)
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
    use std::fs::{self, File};

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

    #[test]
    fn output_path_forms() {
        let local = |v: &str| match target(v) {
            Ok(Target::Local(p)) => p,
            other => panic!("{v}: {other:?}"),
        };
        assert_eq!(local("out/audit"), PathBuf::from("out/audit"));
        assert_eq!(local("file:///var/audit"), PathBuf::from("/var/audit"));
        for bad in [
            "file://host/x",
            "file:x",
            "s3:/bucket/x",
            "https://host/x",
            "ftp://h/x",
        ] {
            let e = target(bad).unwrap_err().0;
            assert!(e.starts_with("invalid OUTPUT_PATH"), "{bad}: {e}");
        }
        let e = target("s3://id:SECRET@bucket/x").unwrap_err().0;
        assert!(!e.contains("SECRET"), "{e}");
    }

    #[tokio::test]
    async fn dated_layout_in_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink =
            FileSink::new(dir.path().to_path_buf(), false).with_layout(FileLayout::Dated);
        let page = docs(&["1", "2"]);
        page[0]
            .route
            .set(crate::base::document::Route {
                time: Some("2026-11-30T10:00:00Z".parse().unwrap()),
                ..Default::default()
            })
            .unwrap();
        let outcomes = sink.ship(&page).await.unwrap();
        assert_eq!(outcomes[0], Outcome::Delivered);
        assert!(matches!(outcomes[1], Outcome::Rejected(_)));
        let files: Vec<_> = fs::read_dir(dir.path().join("dt=2026-11-30"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(files.len(), 1, "{files:?}");
        assert!(files[0].ends_with(".jsonl"));
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
