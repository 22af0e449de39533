//! S3 bucket of sequential export files with a cursor file (`AUDIT_LOGGER_TYPE=S3_CURSOR`),
//! the model of Cato Networks' log exporter: the vendor writes a new numbered file every
//! 30 seconds and deletes files after 7 days; a client takes them in sequence after the
//! last one it delivered.
//!
//! **A run** lists the bucket under `S3_PREFIX`, orders the files (listing.rs) and takes them
//! one after the other after the cursor. A file is read as a stream of lines (reader.rs);
//! each line is a record (document.rs), handed to the pipeline in pages of CHUNK_SIZE that
//! never span two files. When the page holding a file's last line is committed and every
//! record of the file was acknowledged, the cursor file (cursor.rs) moves to that file.
//!
//! **BATCH_SIZE** is applied by the pipeline at file boundaries (a file is a unit): no new file
//! is started once BATCH_SIZE records were taken, but a started file is finished, so the cursor
//! never needs a line offset and a file is never split across runs (a run takes at most
//! BATCH_SIZE records plus the rest of its last file).
//!
//! **Attempts.** Starting a file counts an attempt in the cursor file before anything is
//! read, so a file that crashes the process is counted too. A file fails when it cannot be
//! read to its end (corrupt zip, wrong password, store error) or the sink rejects one of its
//! records: the cursor stays, the run stops there (later files wait, the order is kept) and
//! the next run tries again. After `S3_MAX_ATTEMPTS`, `S3_ON_BAD_FILE=stop` keeps stopping at
//! it (exit 1) until the operator acts; `skip` parks it in the cursor file (listed every run,
//! exit 3) and goes on. `retry-failed` resets the attempts and moves the cursor back before
//! the first skipped file (files after it are re-sent under the same ids: "already present").
//!
//! **Lines that cannot be parsed** (malformed JSON or CEF, not UTF-8, longer than 16 MiB) are
//! rejected records: reported with `s3://bucket/key:line` and the reason, counted as
//! `rejected` (exit 3). Reading them again cannot change them, so they do not hold up the
//! file: it completes and the cursor moves on; the report and the file in the bucket are
//! where they are found.
//!
//! **Gaps.** In index order, a next file whose index is more than one past the cursor means
//! files are missing (expired after the vendor's retention while no run took them). The run
//! says how many, takes the files that are there, and exits 3 unless `S3_ACCEPT_GAPS=true`.

mod cef;
mod cursor;
mod document;
mod listing;
mod reader;
mod settings;

use self::cursor::{Cursor, Pending, Skipped};
use self::listing::{Mode, ObjectInfo, Position};
use self::reader::Msg;
use self::settings::{S3Credentials, S3OnBadFile, S3Order, S3Output, Settings};
use super::{Lane, Page, PageResult, Paging, Parked, Record, Source};
use crate::base::exit::config_error;
use crate::config::Config;
use anyhow::{anyhow, bail, Context, Result};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as StorePath;
use object_store::ObjectStore;
use std::collections::VecDeque;
use std::sync::Arc;

/// Files without an index listed one by one (index order); the rest are counted.
const LIST_UNNUMBERED: usize = 10;

pub struct S3Cursor {
    cfg: Settings,
    /// Where the credentials came from, for messages (never the values).
    credentials_origin: String,
    store: Arc<dyn ObjectStore>,
    /// Loaded by `prepare`.
    cursor: Option<Cursor>,
    _lock: Option<std::fs::File>,
    /// Filled at the first claim of a run.
    queue: Option<VecDeque<ObjectInfo>>,
    mode: Mode,
    current: Option<Current>,
    /// A file could not be completed: later files wait for the next run.
    stopped: bool,
    /// TARGETS: the cursor file keeps per record which targets hold it while a file is open.
    fanout: bool,
    /// What makes the run partial besides records: gaps, files outside the sequence.
    problems: Vec<String>,
    /// `Routing::accept_label`, kept in the cursor file.
    accepts: Option<String>,
}

/// The file being read.
struct Current {
    info: ObjectInfo,
    lines: tokio::sync::mpsc::Receiver<Msg>,
    /// The message after a full page, read to learn whether the file ended with that page.
    ahead: Option<Msg>,
    entry: Option<String>,
    /// Records the sink refused: the file is not complete.
    sink_rejected: u64,
    /// With TARGETS: records some target lacks (it was down): the file is not complete.
    lacking: u64,
    /// Records whose time field could not be read (they carry the file's time).
    unreadable_times: u64,
    records: u64,
}

impl S3Cursor {
    pub fn new(s3: &Settings, cfg: &Config) -> Result<Self> {
        let (credentials, credentials_origin) = s3.credentials().map_err(|e| config_error(e.0))?;
        Ok(S3Cursor {
            store: Arc::new(store(s3, &credentials)?),
            cfg: s3.clone(),
            credentials_origin,
            cursor: None,
            _lock: None,
            queue: None,
            mode: Mode::Key,
            current: None,
            stopped: false,
            fanout: cfg.routing.fans_out(),
            problems: Vec::new(),
            accepts: cfg.routing.accept_label(),
        })
    }

    fn load_cursor(&self) -> Result<Option<Cursor>> {
        cursor::load(
            &self.cfg.cursor_file,
            &self.cfg.bucket,
            &self.cfg.prefix,
            self.accepts.as_deref(),
        )
    }

    fn url(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.cfg.bucket)
    }

    fn cursor(&mut self) -> Result<&mut Cursor> {
        self.cursor
            .as_mut()
            .ok_or_else(|| anyhow!("S3 source used before prepare"))
    }

    fn save(&self) -> Result<()> {
        let c = self.cursor.as_ref().expect("cursor loaded");
        cursor::save(&self.cfg.cursor_file, c)
    }

    /// The store's answer as an error that says what to check; never a secret.
    fn store_error(&self, e: object_store::Error, doing: &str) -> anyhow::Error {
        let where_ = match &self.cfg.endpoint {
            Some(u) => format!("S3_ENDPOINT {u}"),
            None => format!("AWS S3 in S3_REGION {}", self.cfg.region),
        };
        // object_store maps 401/403 of object requests to these variants, but leaves a refused
        // listing `Generic`, with the status only in its message.
        let text = crate::base::exit::chain_text(&e);
        let refused = matches!(
            e,
            object_store::Error::PermissionDenied { .. }
                | object_store::Error::Unauthenticated { .. }
        ) || text.contains("403 Forbidden")
            || text.contains("401 Unauthorized");
        let certificate = crate::http::retry::is_certificate_error(&text);
        // Only the credential chain asks the instance metadata service; off AWS it answers
        // nothing useful, and the store itself was never asked.
        let no_credentials = text.contains("/latest/api/token")
            || text.contains("/latest/meta-data/iam/security-credentials");
        match e {
            _ if no_credentials => config_error(format!(
                "no AWS credentials for {where_}: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are \
                 not set, the AWS credentials file has no profile for AWS_PROFILE (default \
                 \"default\"), and {} gave none ({e})",
                self.credentials_origin
            )),
            _ if certificate => anyhow!(
                "{where_} presented a certificate that does not verify while {doing} S3_BUCKET {}: \
                 add the CA that signed it to the system's trust store, or name a PEM file holding \
                 it in SSL_CERT_FILE ({e})",
                self.cfg.bucket
            ),
            _ if refused => config_error(format!(
                "{where_} refused the credentials from {} while {doing} S3_BUCKET {}: check \
                 AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), and that the key may \
                 list and read the bucket ({e})",
                self.credentials_origin, self.cfg.bucket
            )),
            object_store::Error::NotFound { .. } => config_error(format!(
                "{where_} has no S3_BUCKET {} (while {doing} it): {e}",
                self.cfg.bucket
            )),
            e => anyhow!(e).context(format!("{where_}: {doing} S3_BUCKET {} failed", self.cfg.bucket)),
        }
    }

    async fn list(&self, offset: Option<&str>) -> Result<Vec<ObjectInfo>> {
        let prefix =
            (!self.cfg.prefix.is_empty()).then(|| StorePath::from(self.cfg.prefix.as_str()));
        let stream = match offset {
            Some(o) => self
                .store
                .list_with_offset(prefix.as_ref(), &StorePath::from(o)),
            None => self.store.list(prefix.as_ref()),
        };
        let metas: Vec<object_store::ObjectMeta> = stream
            .try_collect()
            .await
            .map_err(|e| self.store_error(e, "listing"))?;
        Ok(metas
            .into_iter()
            .filter(|m| !m.location.as_ref().ends_with('/'))
            .map(|m| ObjectInfo::new(m.location.to_string(), m.size, m.last_modified, m.e_tag))
            .collect())
    }

    /// Lists the bucket once per run and queues the files after the cursor.
    async fn fill_queue(&mut self) -> Result<()> {
        let cursor = self
            .cursor
            .as_ref()
            .ok_or_else(|| anyhow!("S3 source used before prepare"))?;
        let last = cursor.last.clone();
        let cursor_mode = cursor.order;
        // Key order can start the listing after the cursor; index order needs all names.
        let key_only = self.cfg.order == S3Order::Key
            || (self.cfg.order == S3Order::Auto && cursor_mode == Some(Mode::Key));
        let offset = last.as_ref().filter(|_| key_only).map(|p| p.key.clone());
        let objects = self.list(offset.as_deref()).await?;
        let mode = listing::choose_mode(self.cfg.order, cursor_mode, &objects);
        if mode == Mode::Index && last.as_ref().is_some_and(|p| p.index.is_none()) {
            return Err(config_error(format!(
                "S3_CURSOR_FILE {} holds a position in key order ({}), but files are now taken by index: \
                 set S3_ORDER=key, or delete the cursor file to start at the first file",
                self.cfg.cursor_file.display(),
                last.as_ref().map(|p| p.key.as_str()).unwrap_or_default()
            )));
        }
        self.mode = mode;
        let plan = listing::plan(mode, objects, last.as_ref());
        if !plan.unnumbered.is_empty() {
            for key in plan.unnumbered.iter().take(LIST_UNNUMBERED) {
                tracing::warn!(file = %self.url(key), "not sent: the name carries no index, and files are taken by index");
            }
            self.problems.push(format!(
                "{} files under S3_PREFIX have no index in their names and are not sent (set S3_ORDER=key to take files by key)",
                plan.unnumbered.len()
            ));
        }
        tracing::info!(
            files = plan.files.len(),
            order = ?mode,
            after = last.as_ref().map(|p| p.key.as_str()).unwrap_or("(start)"),
            "files to read"
        );
        self.queue = Some(plan.files.into());
        Ok(())
    }

    /// Starts reading `info`, counting the attempt first. `false` when the file was skipped.
    fn start(&mut self, info: ObjectInfo) -> Result<bool> {
        let max = self.cfg.max_attempts;
        let policy = self.cfg.on_bad_file;
        let accept_gaps = self.cfg.accept_gaps;
        let url = self.url(&info.key);
        let mode = self.mode;
        let c = self.cursor()?;
        let (attempts, last_error) = match &c.next {
            Some(p) if p.key == info.key => (p.attempts, p.last_error.clone()),
            _ => (0, None),
        };
        if attempts >= max {
            let why = last_error.unwrap_or_else(|| "the run stopped while reading it".into());
            match policy {
                S3OnBadFile::Stop => bail!(
                    "{url} failed {attempts} times (S3_MAX_ATTEMPTS={max}), last: {why}. \
                     S3_ON_BAD_FILE=stop keeps later files waiting: repair or replace the file, \
                     or run `audit-transfer retry-failed` to try it again, or set S3_ON_BAD_FILE=skip"
                ),
                S3OnBadFile::Skip => {
                    self.park(&info, attempts, why)?;
                    return Ok(false);
                }
            }
        }
        let last = self.cursor()?.last.clone();
        if let Some((first, count)) = listing::missing_before(mode, last.as_ref(), &info) {
            let msg = format!(
                "{count} files missing before {url}: indexes {first} to {} are not in the bucket \
                 (expired before they were read?)",
                first + count - 1
            );
            if accept_gaps {
                tracing::warn!("{msg}; accepted (S3_ACCEPT_GAPS=true)");
            } else {
                tracing::error!(missing = count, "{msg}");
                self.problems.push(msg);
            }
        }
        let c = self.cursor()?;
        c.order = Some(mode);
        // Targets that hold records of this file from an earlier run (TARGETS) stay known.
        let (held, done) = c
            .next
            .take()
            .filter(|p| p.key == info.key)
            .map(|p| (p.held, p.done))
            .unwrap_or_default();
        c.next = Some(Pending {
            key: info.key.clone(),
            attempts: attempts + 1,
            last_error,
            held,
            done,
        });
        self.save()?;
        let lines = reader::spawn(self.store.clone(), &info, self.cfg.zip_password.clone())
            .context("cannot start a thread to read the file")?;
        tracing::info!(file = %url, attempt = attempts + 1, bytes = info.size, "reading");
        self.current = Some(Current {
            info,
            lines,
            ahead: None,
            entry: None,
            sink_rejected: 0,
            lacking: 0,
            unreadable_times: 0,
            records: 0,
        });
        Ok(true)
    }

    /// Gives up on a file (S3_ON_BAD_FILE=skip): kept in the cursor file, listed every run.
    fn park(&mut self, info: &ObjectInfo, attempts: u32, why: String) -> Result<()> {
        let url = self.url(&info.key);
        let c = self.cursor()?;
        c.skipped.push(Skipped {
            key: info.key.clone(),
            attempts,
            last_error: why.clone(),
            after: c.last.clone(),
        });
        c.last = Some(Position::of(info));
        c.next = None;
        self.save()?;
        tracing::error!(file = %url, attempts, "skipped after S3_MAX_ATTEMPTS (S3_ON_BAD_FILE=skip): {why}");
        Ok(())
    }

    /// A file could not be read to its end: the attempt stays counted, the run stops there,
    /// unless the file has used up its attempts and is skipped.
    fn read_failed(&mut self, why: String) -> Result<()> {
        let cur = self.current.take().expect("a file being read");
        let url = self.url(&cur.info.key);
        let max = self.cfg.max_attempts;
        let attempts = self.note_failure(&cur.info, &why)?;
        if attempts >= max && self.cfg.on_bad_file == S3OnBadFile::Skip {
            return self.park(&cur.info, attempts, why);
        }
        bail!("{url}: {why} (attempt {attempts} of S3_MAX_ATTEMPTS={max}); the cursor stays before it and the next run tries again")
    }

    /// Records why the file failed in the cursor file; returns its attempts so far.
    fn note_failure(&mut self, info: &ObjectInfo, why: &str) -> Result<u32> {
        let c = self.cursor()?;
        let pending = c.next.get_or_insert_with(|| Pending {
            key: info.key.clone(),
            attempts: 1,
            last_error: None,
            held: Default::default(),
            done: Default::default(),
        });
        pending.last_error = Some(why.to_string());
        let attempts = pending.attempts;
        self.save()?;
        Ok(attempts)
    }

    /// All pages of the current file are committed: move the cursor, or keep it there.
    fn finish_file(&mut self) -> Result<()> {
        let cur = self.current.take().expect("a file being read");
        let url = self.url(&cur.info.key);
        if cur.unreadable_times > 0 {
            tracing::warn!(
                file = %url,
                records = cur.unreadable_times,
                "records with a time field that could not be read; their @timestamp is the file's time"
            );
        }
        if cur.lacking > 0 && cur.sink_rejected == 0 {
            // A target that was down is no fault of the file: this reading counts no attempt.
            if let Some(p) = self.cursor()?.next.as_mut() {
                p.attempts = p.attempts.saturating_sub(1);
            }
            self.save()?;
            tracing::warn!(
                file = %url,
                records = cur.lacking,
                "records of the file are not held by every target yet: the cursor stays before the file, and the next run sends them to the targets that lack them only; later files wait"
            );
            self.stopped = true;
            return Ok(());
        }
        if cur.sink_rejected > 0 {
            let why = format!("the sink rejected {} of its records", cur.sink_rejected);
            let attempts = self.note_failure(&cur.info, &why)?;
            if attempts >= self.cfg.max_attempts && self.cfg.on_bad_file == S3OnBadFile::Skip {
                return self.park(&cur.info, attempts, why);
            }
            tracing::warn!(
                file = %url,
                attempts,
                "{why}: the cursor stays before the file and the next run sends it again; later files wait"
            );
            self.stopped = true;
            return Ok(());
        }
        let c = self.cursor()?;
        c.last = Some(Position::of(&cur.info));
        c.next = None;
        self.save()?;
        tracing::info!(file = %url, records = cur.records, "file delivered; cursor moved");
        Ok(())
    }

    /// Reads up to `limit` records of the current file. `(records, last)`: `last` when the
    /// file ended with them (a full page looks one message ahead to know, so the pipeline can
    /// stop after it); `Err` when it could not be read.
    async fn read_page(
        &mut self,
        limit: usize,
    ) -> std::result::Result<(Vec<Record>, bool), String> {
        let bucket = self.cfg.bucket.clone();
        let (format, output) = (self.cfg.format, self.cfg.output);
        let cur = self.current.as_mut().expect("a file being read");
        // TARGETS: records every target already holds, from an earlier reading of this file.
        let done = self
            .cursor
            .as_ref()
            .and_then(|c| c.next.as_ref())
            .filter(|p| p.key == cur.info.key)
            .map(|p| &p.done);
        let mut records = Vec::new();
        let last = loop {
            let msg = match cur.ahead.take() {
                Some(msg) => msg,
                None => cur.lines.recv().await.unwrap_or_else(|| {
                    Msg::Failed("the reading thread stopped unexpectedly".into())
                }),
            };
            match msg {
                Msg::Entry(name) => cur.entry = Some(name),
                Msg::End => break true,
                // Kept for the next page; a failure too, so this full page is shipped first.
                msg if records.len() >= limit => {
                    cur.ahead = Some(msg);
                    break false;
                }
                Msg::Line { line, bytes } => {
                    let o = origin(&bucket, &cur.info, cur.entry.as_deref());
                    let built = document::build(&o, line, &bytes, format, output);
                    if done.is_some_and(|d| d.contains(&built.record.key)) {
                        continue;
                    }
                    cur.unreadable_times += u64::from(built.unreadable_time);
                    records.push(built.record);
                }
                Msg::TooLong { line } => {
                    let o = origin(&bucket, &cur.info, cur.entry.as_deref());
                    records.push(Record {
                        key: o.locate(line),
                        doc: Err(format!("line longer than {} MiB", reader::MAX_LINE >> 20)),
                    });
                }
                Msg::Failed(why) => return Err(why),
            }
        };
        cur.records += records.len() as u64;
        Ok((records, last))
    }
}

fn origin<'a>(
    bucket: &'a str,
    info: &'a ObjectInfo,
    entry: Option<&'a str>,
) -> document::Origin<'a> {
    document::Origin {
        bucket,
        key: &info.key,
        entry,
        file_time: info.modified,
    }
}

/// The object store for the configuration. Credentials: the configured key, or (without one)
/// object_store's own chain, which reads the web identity, container and instance settings.
fn store(cfg: &Settings, credentials: &S3Credentials) -> Result<object_store::aws::AmazonS3> {
    let mut b = match credentials {
        S3Credentials::Static(keys) => {
            let b = AmazonS3Builder::new()
                .with_access_key_id(&keys.key_id)
                .with_secret_access_key(keys.secret.expose());
            match &keys.token {
                Some(t) => b.with_token(t.expose()),
                None => b,
            }
        }
        S3Credentials::Chain => chain_builder(),
    }
    .with_http_connector(crate::http::object_store::CertificateFailsAtOnce)
    .with_bucket_name(&cfg.bucket)
    .with_region(&cfg.region)
    .with_virtual_hosted_style_request(!cfg.path_style);
    if let Some(endpoint) = &cfg.endpoint {
        let mut url = endpoint.clone();
        if !cfg.path_style {
            // object_store expects the bucket's own host for virtual-hosted requests.
            let host = format!("{}.{}", cfg.bucket, url.host_str().unwrap_or_default());
            url.set_host(Some(&host))
                .map_err(|e| config_error(format!("invalid S3_ENDPOINT {endpoint}: {e}")))?;
        }
        b = b
            .with_endpoint(url.as_str().trim_end_matches('/'))
            .with_allow_http(url.scheme() == "http");
    }
    b.build().map_err(|e| {
        config_error(format!(
            "invalid S3 settings (S3_BUCKET, S3_REGION, S3_ENDPOINT): {e}"
        ))
    })
}

/// object_store's `from_env`, except that empty variables count as unset (an env file with
/// `AWS_ACCESS_KEY_ID=` must not become an empty static key): web identity (IRSA), container
/// and EKS pod identity credentials, then instance metadata.
fn chain_builder() -> AmazonS3Builder {
    let mut b = AmazonS3Builder::new();
    for (key, value) in std::env::vars() {
        if key.starts_with("AWS_") && !value.trim().is_empty() {
            if let Ok(k) = key.to_ascii_lowercase().parse() {
                b = b.with_config(k, value);
            }
        }
    }
    b
}

#[async_trait]
impl Source for S3Cursor {
    fn name(&self) -> String {
        if self.cfg.prefix.is_empty() {
            format!("s3_cursor:{}", self.cfg.bucket)
        } else {
            format!("s3_cursor:{}/{}", self.cfg.bucket, self.cfg.prefix)
        }
    }

    /// Reads the cursor file and lists one page of the bucket: proves endpoint, bucket and
    /// credentials.
    async fn check(&mut self) -> Result<()> {
        self.load_cursor()?;
        let prefix =
            (!self.cfg.prefix.is_empty()).then(|| StorePath::from(self.cfg.prefix.as_str()));
        let first = self
            .store
            .list_with_delimiter(prefix.as_ref())
            .await
            .map_err(|e| self.store_error(e, "listing"))?;
        tracing::info!(
            objects = first.objects.len(),
            folders = first.common_prefixes.len(),
            "S3 bucket readable"
        );
        Ok(())
    }

    async fn prepare(&mut self) -> Result<()> {
        self._lock = Some(cursor::lock(&self.cfg.cursor_file)?);
        let loaded = self.load_cursor()?;
        let c = match loaded {
            Some(c) => c,
            None => {
                tracing::info!(
                    cursor_file = %self.cfg.cursor_file.display(),
                    "no cursor file yet: starting at the first file in the bucket"
                );
                Cursor::new(&self.cfg.bucket, &self.cfg.prefix, self.accepts.clone())
            }
        };
        self.cursor = Some(c);
        Ok(())
    }

    async fn claim<'a>(
        &'a mut self,
        lane: Lane,
        limit: usize,
    ) -> Result<Option<Box<dyn Page + 'a>>> {
        // Skipped files are re-read after `retry-failed` moves the cursor back, not per page.
        if lane == Lane::Retry {
            return Ok(None);
        }
        if self.queue.is_none() {
            self.fill_queue().await?;
        }
        loop {
            if self.current.is_none() {
                if self.stopped {
                    return Ok(None);
                }
                let queue = self.queue.as_mut().expect("queue filled");
                let Some(info) = queue.pop_front() else {
                    return Ok(None);
                };
                if !self.start(info)? {
                    continue;
                }
            }
            match self.read_page(limit).await {
                Err(why) => {
                    self.read_failed(why)?;
                    continue;
                }
                Ok((records, last)) => {
                    if records.is_empty() {
                        // The file was empty.
                        self.finish_file()?;
                        continue;
                    }
                    return Ok(Some(Box::new(FilePage {
                        src: self,
                        records,
                        last,
                    })));
                }
            }
        }
    }

    async fn parked(&mut self) -> Result<Vec<Parked>> {
        let bucket = self.cfg.bucket.clone();
        // `status` reads the file without taking the run's lock.
        let loaded = match &self.cursor {
            Some(_) => None,
            None => self.load_cursor()?,
        };
        Ok(self
            .cursor
            .as_ref()
            .or(loaded.as_ref())
            .map(|c| {
                c.skipped
                    .iter()
                    .map(|s| Parked {
                        key: format!("s3://{bucket}/{}", s.key),
                        attempts: s.attempts as i64,
                        last_error: s.last_error.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Kept in the cursor file; a run that ended before it had the file records nothing.
    async fn record_run(&mut self, run: &crate::sources::RunRecord) -> Result<()> {
        if let Some(c) = self.cursor.as_mut() {
            c.runs.record(run);
            self.save()?;
        }
        Ok(())
    }

    async fn last_runs(&mut self) -> Result<Option<crate::sources::LastRuns>> {
        // Only the runs: the file can hold large failed items.
        Ok(Some(match &self.cursor {
            Some(s) => s.runs.clone(),
            None => self.load_cursor()?.map(|s| s.runs).unwrap_or_default(),
        }))
    }

    /// Tries skipped files and a stopped file again: the cursor goes back to before the first
    /// skipped file, and attempts start over.
    async fn retry_failed(&mut self) -> Result<u64> {
        let c = self.cursor()?;
        let mut n = c.skipped.len() as u64;
        if let Some(first) = c.skipped.first() {
            c.last = first.after.clone();
            c.skipped.clear();
        }
        if c.next.take().is_some() {
            n = n.max(1);
        }
        self.save()?;
        Ok(n)
    }

    async fn purge(&mut self, _cutoff: DateTime<Utc>) -> Result<u64> {
        tracing::info!(
            "nothing to delete for S3_CURSOR: the bucket's owner expires its files, and the cursor file holds no records"
        );
        Ok(0)
    }

    fn paging(&self) -> Paging {
        Paging::Units
    }

    fn incomplete(&self) -> Vec<String> {
        self.problems.clone()
    }
}

/// Part (or the end) of one file. Committing the page with the file's last line completes
/// the file.
struct FilePage<'a> {
    src: &'a mut S3Cursor,
    records: Vec<Record>,
    last: bool,
}

#[async_trait]
impl Page for FilePage<'_> {
    fn records(&self) -> &[Record] {
        &self.records
    }

    fn ends_unit(&self) -> bool {
        self.last
    }

    fn held_by(&self, i: usize) -> &[String] {
        self.src
            .cursor
            .as_ref()
            .and_then(|c| c.next.as_ref())
            .and_then(|p| p.held.get(&self.records[i].key))
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    async fn commit(self: Box<Self>, result: PageResult) -> Result<u64> {
        let FilePage { src, records, last } = *self;
        // TARGETS: who holds what is saved with each page, so neither a crash nor the next run
        // sends a record again to a target that has it.
        if src.fanout {
            let lacking = result.progress.len() as u64;
            if let Some(cur) = src.current.as_mut() {
                cur.lacking += lacking;
            }
            // Saved once some record of the file is incomplete (the file will be read again);
            // a file that completes drops all of it.
            let incomplete = lacking > 0 || src.current.as_ref().is_some_and(|c| c.lacking > 0);
            if let Some(p) = src.cursor()?.next.as_mut() {
                for &i in &result.delivered {
                    p.held.remove(&records[i].key);
                    p.done.insert(records[i].key.clone());
                }
                for (i, targets) in &result.progress {
                    p.held.insert(records[*i].key.clone(), targets.clone());
                }
            }
            if incomplete {
                src.save()?;
            }
        }
        // Lines that could not be parsed were reported by the pipeline and do not hold up the
        // file; a record the sink refused does.
        let refused = result
            .failed
            .iter()
            .filter(|(i, _)| records[*i].doc.is_ok())
            .count() as u64;
        if let Some(cur) = src.current.as_mut() {
            cur.sink_rejected += refused;
        }
        if last {
            src.finish_file()?;
        }
        Ok(result.delivered.len() as u64)
    }
}

/// `AUDIT_LOGGER_TYPE=S3_CURSOR`.
pub const KIND: super::Kind = super::Kind {
    name: "S3_CURSOR",
    configure: |env, sink| Ok(Box::new(Configured(Settings::from_env(env, sink)?))),
};

#[derive(Debug)]
struct Configured(Settings);

#[async_trait]
impl super::Configured for Configured {
    fn label(&self) -> String {
        if self.0.prefix.is_empty() {
            format!("s3_cursor:{}", self.0.bucket)
        } else {
            format!("s3_cursor:{}/{}", self.0.bucket, self.0.prefix)
        }
    }
    fn traits(&self) -> crate::base::source::SourceTraits {
        crate::base::source::SourceTraits {
            topic_field: Some("event_type"),
            key_field: Some("event_sub_type"),
            undated: self.0.output == S3Output::Original,
            fanout: true,
            ..Default::default()
        }
    }
    async fn connect(&self, run: &Config) -> Result<Box<dyn Source>> {
        Ok(Box::new(S3Cursor::new(&self.0, run)?))
    }
}
