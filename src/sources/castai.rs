//! CAST AI audit logs through the public API (`AUDIT_LOGGER_TYPE=CASTAI`): v1 `GET /v1/audit`
//! or v2 `GET /v2/audit/events`, paged with the API's cursor.
//!
//! **Windows.** The time from the checkpoint to `now - CASTAI_LAG` is read in windows of at most
//! `CASTAI_WINDOW`. A window's pages are fetched lazily, as the pipeline asks for records. The
//! checkpoint moves to a window's end only when the pipeline has committed the page holding the
//! window's last record, that is, when the sink has acknowledged every record of the window (or
//! it was recorded as failed, below). Neither the sort order of v1 nor whether its date bounds
//! are inclusive is documented, so nothing depends on them: a window's end is the only point
//! before which everything is known to be delivered, and each query starts one second before
//! the checkpoint (an event exactly on the boundary is never missed, whichever bound excludes).
//!
//! **Inside a window** every committed page is saved too, as the ids (with event times) the
//! sink acknowledged after the checkpoint. A run that stops inside a window (BATCH_SIZE used up,
//! sink down, killed) is re-read from the window's start by the next run, which skips those ids;
//! so does the one-second overlap. Only a page shipped but not yet saved when the process died
//! reaches the sink twice, and the event id as document id makes that harmless.
//!
//! **BATCH_SIZE** caps the records of a run, CHUNK_SIZE the records per page, as for the other
//! sources; `CASTAI_PAGE_LIMIT` is the API's page size, independent of both. When a run's first
//! window does not fit into BATCH_SIZE its span is halved for the next run (re-reading a window
//! costs API calls); after a window that used less than half of BATCH_SIZE it doubles again, up
//! to `CASTAI_WINDOW`.
//!
//! **Records that cannot be delivered** (no id, unparseable time, rejected by the sink) do not
//! block the checkpoint, since one bad event would otherwise stop all later ones: they are stored
//! in the state file with the item exactly as CAST AI returned it, retried one page per run like
//! the SQL sources' failures, and parked after `MAX_ATTEMPTS`; parked items are listed every run
//! (exit 3) until `retry-failed`. After the checkpoint moved on, the state file holds the only
//! copy, so nothing ever removes a failed item except its delivery.
//!
//! **State file** (`CASTAI_STATE_FILE`, JSON, replaced atomically): checkpoint, next window
//! span, acknowledged ids after the checkpoint, failed items, the API version, cluster filter
//! and ACCEPT_* selection it belongs to, and how the last runs ended (for `status`). A missing file starts at `CASTAI_START_FROM`; an unreadable or corrupt
//! one stops the run with exit 2 and is never replaced by a fresh start.

use super::{Document, Lane, LastRuns, Page, PageResult, Parked, Record, RunRecord, Source};
use crate::base::exit::config_error;
use crate::config::{CastaiApiVersion, CastaiConfig, Config, StartFrom};
use anyhow::{anyhow, bail, Context, Result};
use async_trait::async_trait;
use backon::BackoffBuilder;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{HashSet, VecDeque};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

/// How far each query reaches back before the checkpoint (see the module comment).
const OVERLAP: Duration = Duration::from_secs(1);
/// The smallest window; a second with more events than BATCH_SIZE is a configuration problem.
const MIN_SPAN_SECS: u64 = 1;
const STATE_FORMAT: u32 = 1;
/// Longest wait a `Retry-After` header may ask for.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

pub struct Castai {
    cfg: CastaiConfig,
    batch_size: usize,
    max_attempts: u32,
    api: Api,
    /// Loaded by `prepare`.
    state: Option<State>,
    /// Where this run stops: `now - CASTAI_LAG` when the run started.
    end: DateTime<Utc>,
    /// Start of the next window to open (the end of the last one read completely).
    next_from: Option<DateTime<Utc>>,
    window: Option<Window>,
    /// Records fetched but not yet handed to the pipeline, all from `window`.
    queue: VecDeque<Fetched>,
    /// Event ids handed out in this run, plus the boundary ids of the state file.
    seen: HashSet<String>,
    handed_out: usize,
    duplicates: u64,
    /// Failed items already tried in this run's retry lane.
    retried: HashSet<String>,
    /// Held from `prepare` to exit (the OS releases it even after SIGKILL).
    _lock: Option<std::fs::File>,
    /// `Routing::accept_label`, kept in the state file.
    accepts: Option<String>,
}

/// The state file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct State {
    format: u32,
    api_version: String,
    cluster_id: Option<String>,
    /// Every event up to here (inclusive) was acknowledged by the sink or is in `failed`.
    check_point: DateTime<Utc>,
    /// Span of the next window.
    window_seconds: u64,
    /// Events from one second before `check_point` on that the sink already acknowledged:
    /// the overlap of the next query, and what a run cut short (BATCH_SIZE, crash) delivered
    /// of a window it did not finish. Skipped when a query returns them again.
    acked: Vec<Acked>,
    failed: Vec<FailedItem>,
    /// What the runs of this file accept (`Routing::accept_label`); `None`: everything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    accepts: Option<String>,
    /// For `status`: how the last runs ended.
    #[serde(default, skip_serializing_if = "LastRuns::is_empty")]
    runs: LastRuns,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Acked {
    id: String,
    time: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FailedItem {
    key: String,
    attempts: u32,
    last_error: String,
    /// The item as CAST AI returned it.
    item: Value,
}

struct Window {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    /// `None` before the first page; then the next page's cursor, `Some(None)` at the end.
    cursor: Option<Option<String>>,
    /// Records handed out in this run before this window opened.
    handed_out_before: usize,
}

impl Window {
    fn fully_read(&self) -> bool {
        matches!(self.cursor, Some(None))
    }
}

/// A window whose every record has been handed out; it is complete once that page commits.
struct Done {
    to: DateTime<Utc>,
}

struct Fetched {
    record: Record,
    time: Option<DateTime<Utc>>,
    item: Value,
}

impl Castai {
    pub fn new(c: &CastaiConfig, cfg: &Config) -> Result<Self> {
        Ok(Castai {
            api: Api::new(c)?,
            cfg: c.clone(),
            batch_size: cfg.batch_size,
            max_attempts: cfg.max_attempts,
            state: None,
            end: Utc::now(),
            next_from: None,
            window: None,
            queue: VecDeque::new(),
            seen: HashSet::new(),
            handed_out: 0,
            duplicates: 0,
            retried: HashSet::new(),
            _lock: None,
            accepts: cfg.routing.accept_label(),
        })
    }

    fn state_path(&self) -> &Path {
        &self.cfg.state_file
    }

    fn version_name(&self) -> &'static str {
        match self.cfg.version {
            CastaiApiVersion::V1 => "v1",
            CastaiApiVersion::V2 => "v2",
        }
    }

    fn max_span(&self) -> u64 {
        self.cfg.window.as_secs().max(MIN_SPAN_SECS)
    }

    /// Reads the state file; `None` when there is none yet.
    fn load_state(&self) -> Result<Option<State>> {
        let path = self.state_path();
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(config_error(format!(
                    "cannot read CASTAI_STATE_FILE {}: {e}",
                    path.display()
                )))
            }
        };
        let state: State = serde_json::from_str(&text).map_err(|e| {
            config_error(format!(
                "CASTAI_STATE_FILE {} is corrupt ({e}); it is not replaced automatically: restore it, \
                 or delete it to start again at CASTAI_START_FROM",
                path.display()
            ))
        })?;
        if state.format != STATE_FORMAT {
            return Err(config_error(format!(
                "CASTAI_STATE_FILE {} has format {}, this version reads format {STATE_FORMAT}",
                path.display(),
                state.format
            )));
        }
        // Positions of one API version or cluster filter mean nothing for another.
        if state.api_version != self.version_name() || state.cluster_id != self.cfg.cluster_id {
            return Err(config_error(format!(
                "CASTAI_STATE_FILE {} belongs to CASTAI_API_VERSION={} CASTAI_CLUSTER_ID={}, not {} {}: \
                 use a state file per API version and cluster filter",
                path.display(),
                state.api_version,
                state.cluster_id.as_deref().unwrap_or("(all)"),
                self.version_name(),
                self.cfg.cluster_id.as_deref().unwrap_or("(all)")
            )));
        }
        // Runs of another selection would skip, for good, what this one ships, and back.
        if state.accepts != self.accepts {
            return Err(config_error(format!(
                "CASTAI_STATE_FILE {} belongs to runs that accept {}, not {}: use a state file per ACCEPT_TOPICS/ACCEPT_ROUTING_KEYS selection",
                path.display(),
                state.accepts.as_deref().unwrap_or("everything"),
                self.accepts.as_deref().unwrap_or("everything")
            )));
        }
        Ok(Some(state))
    }

    /// Two runs sharing a state file would each save their own view of it (losing the other's
    /// failed items), so a run holds an exclusive lock on `<state file>.lock`; a separate file,
    /// because the state file itself is replaced on every save. Creating it also proves, before
    /// anything is shipped, that the state can be saved.
    fn lock(&self) -> Result<std::fs::File> {
        crate::base::atomic::lock_state_file("CASTAI_STATE_FILE", self.state_path())
    }

    fn save_state(&self) -> Result<()> {
        let state = self.state.as_ref().expect("state loaded");
        let path = self.state_path();
        let json = serde_json::to_vec_pretty(state)?;
        crate::base::atomic::replace(path, |mut f| {
            f.write_all(&json)?;
            f.write_all(b"\n")?;
            Ok(f)
        })
        .with_context(|| format!("cannot write CASTAI_STATE_FILE {}", path.display()))
    }

    fn state(&mut self) -> Result<&mut State> {
        self.state
            .as_mut()
            .ok_or_else(|| anyhow!("CAST AI source used before prepare"))
    }

    /// Fetches the next page of the current window into the queue.
    async fn fetch(&mut self) -> Result<()> {
        let w = self.window.as_ref().expect("open window");
        let query = match &w.cursor {
            None => Query::First {
                from: w.from - OVERLAP,
                to: w.to,
            },
            Some(Some(c)) => Query::Next {
                from: w.from - OVERLAP,
                to: w.to,
                cursor: c.clone(),
            },
            Some(None) => return Ok(()),
        };
        let page = self.api.page(&query).await?;
        if let (Query::Next { cursor, .. }, Some(next)) = (&query, &page.next) {
            // A cursor that does not move would page forever.
            if cursor == next {
                bail!("CAST AI returned the same page.cursor again; stopping instead of looping");
            }
        }
        let failed: HashSet<&str> = self
            .state
            .as_ref()
            .map(|s| s.failed.iter().map(|f| f.key.as_str()).collect())
            .unwrap_or_default();
        let w = self.window.as_mut().expect("open window");
        let mut fresh = Vec::new();
        for item in page.items {
            let built = build(self.cfg.version, &item);
            // Handed out before (in this run, or acknowledged in an earlier one), or waiting in
            // the failed list (the retry lane owns it): not a second time.
            if built.has_id
                && (self.seen.contains(&built.record.key)
                    || failed.contains(built.record.key.as_str()))
            {
                self.duplicates += 1;
                tracing::debug!(record = %built.record.key, "skipped: already handed out");
                continue;
            }
            if built.has_id {
                self.seen.insert(built.record.key.clone());
            }
            fresh.push(Fetched {
                record: built.record,
                time: built.time,
                item,
            });
        }
        tracing::debug!(
            records = fresh.len(),
            from = %w.from,
            to = %w.to,
            more = page.next.is_some(),
            "fetched a CAST AI page"
        );
        w.cursor = Some(page.next);
        self.queue.extend(fresh);
        Ok(())
    }

    async fn claim_fresh(&mut self, limit: usize) -> Result<(Vec<Fetched>, Vec<Done>)> {
        let mut out: Vec<Fetched> = Vec::new();
        let mut done = Vec::new();
        loop {
            while out.len() < limit {
                match self.queue.pop_front() {
                    Some(f) => {
                        out.push(f);
                        self.handed_out += 1;
                    }
                    None => break,
                }
            }
            if out.len() >= limit {
                break;
            }
            match &self.window {
                Some(w) if w.fully_read() => done.push(self.close_window()),
                Some(_) => self.fetch().await?,
                None => {
                    let from = match self.next_from {
                        Some(f) => f,
                        None => self.state()?.check_point,
                    };
                    if from >= self.end || self.handed_out >= self.batch_size {
                        break;
                    }
                    let span = chrono::Duration::seconds(self.state()?.window_seconds as i64);
                    let to = (from + span).min(self.end);
                    self.window = Some(Window {
                        from,
                        to,
                        cursor: None,
                        handed_out_before: self.handed_out,
                    });
                    self.fetch().await?;
                }
            }
        }
        if self.queue.is_empty() && self.window.as_ref().is_some_and(Window::fully_read) {
            done.push(self.close_window());
        }
        Ok((out, done))
    }

    /// The current window has been read completely and its records handed out.
    fn close_window(&mut self) -> Done {
        let w = self.window.take().expect("open window");
        self.next_from = Some(w.to);
        let records = self.handed_out - w.handed_out_before;
        // A quiet window: let the next one be longer (up to CASTAI_WINDOW).
        let max = self.max_span();
        if let Some(state) = self.state.as_mut() {
            if records * 2 < self.batch_size {
                state.window_seconds = (state.window_seconds * 2).min(max);
            }
        }
        Done { to: w.to }
    }

    /// Applies windows completed by a commit (or by a claim that found nothing more).
    fn complete(&mut self, done: Vec<Done>) -> bool {
        let Some(state) = self.state.as_mut() else {
            return false;
        };
        let Some(last) = done.last() else {
            return false;
        };
        state.check_point = last.to;
        // Older events are before the next query's start: no need to remember them.
        let keep_from = state.check_point - OVERLAP;
        state.acked.retain(|a| a.time >= keep_from);
        true
    }

    /// Called after the last page of a run that ran out of BATCH_SIZE inside a window.
    fn shrink_if_stuck(&mut self) -> bool {
        let budget_out = self.handed_out >= self.batch_size;
        let (Some(w), Some(state)) = (&self.window, self.state.as_mut()) else {
            return false;
        };
        if !budget_out || w.handed_out_before != 0 {
            return false;
        }
        let from = w.from;
        if state.window_seconds <= MIN_SPAN_SECS {
            // Still progresses: the acknowledged events are skipped next time.
            tracing::warn!(
                batch_size = self.batch_size,
                from = %from.to_rfc3339_opts(SecondsFormat::AutoSi, true),
                "more CAST AI events within one second than BATCH_SIZE; consider raising BATCH_SIZE"
            );
            return false;
        }
        state.window_seconds = (state.window_seconds / 2).max(MIN_SPAN_SECS);
        tracing::info!(
            window_seconds = state.window_seconds,
            "the window did not fit into BATCH_SIZE; the next run reads a shorter one"
        );
        true
    }

    fn retry_page(&mut self, limit: usize) -> Vec<Fetched> {
        let version = self.cfg.version;
        let max = self.max_attempts;
        let Some(state) = self.state.as_ref() else {
            return Vec::new();
        };
        let picked: Vec<Fetched> = state
            .failed
            .iter()
            .filter(|f| f.attempts < max && !self.retried.contains(&f.key))
            .take(limit)
            .map(|f| {
                let mut built = build(version, &f.item);
                // Items without an id are known by the key they were stored under.
                built.record.key = f.key.clone();
                Fetched {
                    record: built.record,
                    time: built.time,
                    item: f.item.clone(),
                }
            })
            .collect();
        self.retried
            .extend(picked.iter().map(|f| f.record.key.clone()));
        picked
    }
}

#[async_trait]
impl Source for Castai {
    fn name(&self) -> String {
        format!(
            "castai:{}{}",
            self.version_name(),
            self.cfg
                .cluster_id
                .as_deref()
                .map(|c| format!(":cluster={c}"))
                .unwrap_or_default()
        )
    }

    async fn check(&mut self) -> Result<()> {
        self.load_state()?;
        let now = Utc::now();
        let query = Query::First {
            from: now - chrono::Duration::minutes(1),
            to: now,
        };
        self.api.probe(&query).await
    }

    async fn prepare(&mut self) -> Result<()> {
        self._lock = Some(self.lock()?);
        let state = match self.load_state()? {
            Some(s) => s,
            None => {
                let start = match self.cfg.start_from {
                    StartFrom::At(t) => t,
                    StartFrom::Ago(d) => Utc::now() - d,
                };
                tracing::info!(
                    state_file = %self.state_path().display(),
                    start = %start.to_rfc3339_opts(SecondsFormat::AutoSi, true),
                    "no state file yet: starting at CASTAI_START_FROM"
                );
                State {
                    format: STATE_FORMAT,
                    api_version: self.version_name().into(),
                    cluster_id: self.cfg.cluster_id.clone(),
                    check_point: start,
                    window_seconds: self.max_span(),
                    acked: Vec::new(),
                    failed: Vec::new(),
                    accepts: self.accepts.clone(),
                    runs: LastRuns::default(),
                }
            }
        };
        self.end = Utc::now() - self.cfg.lag;
        self.seen.extend(state.acked.iter().map(|a| a.id.clone()));
        tracing::info!(
            check_point = %state.check_point.to_rfc3339_opts(SecondsFormat::AutoSi, true),
            until = %self.end.to_rfc3339_opts(SecondsFormat::AutoSi, true),
            failed = state.failed.len(),
            "CAST AI audit logs to read"
        );
        let mut state = state;
        state.window_seconds = state.window_seconds.clamp(MIN_SPAN_SECS, self.max_span());
        self.state = Some(state);
        Ok(())
    }

    async fn claim<'a>(
        &'a mut self,
        lane: Lane,
        limit: usize,
    ) -> Result<Option<Box<dyn Page + 'a>>> {
        self.state()?;
        let (fetched, done) = match lane {
            Lane::Retry => (self.retry_page(limit), Vec::new()),
            Lane::Fresh => self.claim_fresh(limit).await?,
        };
        if fetched.is_empty() {
            // Nothing to ship, but windows may have been read to their (empty) end.
            if self.complete(done) {
                self.save_state()?;
            }
            if lane == Lane::Fresh && self.duplicates > 0 {
                tracing::info!(
                    duplicates = self.duplicates,
                    "events seen twice (window boundaries, paging) were handed out once"
                );
            }
            return Ok(None);
        }
        let mut records = Vec::with_capacity(fetched.len());
        let mut times = Vec::with_capacity(fetched.len());
        let mut items = Vec::with_capacity(fetched.len());
        for f in fetched {
            records.push(f.record);
            times.push(f.time);
            items.push(f.item);
        }
        Ok(Some(Box::new(CastaiPage {
            src: self,
            lane,
            records,
            times,
            items,
            done,
        })))
    }

    async fn parked(&mut self) -> Result<Vec<Parked>> {
        let max = self.max_attempts;
        // `status` reads the file without taking the run's lock.
        let loaded = match &self.state {
            Some(_) => None,
            None => self.load_state()?,
        };
        Ok(self
            .state
            .as_ref()
            .or(loaded.as_ref())
            .map(|s| {
                s.failed
                    .iter()
                    .filter(|f| f.attempts >= max)
                    .map(|f| Parked {
                        key: f.key.clone(),
                        attempts: f.attempts as i64,
                        last_error: f.last_error.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Kept in the state file; a run that ended before it had the file (lock held elsewhere,
    /// unreadable file) records nothing.
    async fn record_run(&mut self, run: &RunRecord) -> Result<()> {
        if let Some(state) = self.state.as_mut() {
            state.runs.record(run);
            self.save_state()?;
        }
        Ok(())
    }

    async fn last_runs(&mut self) -> Result<Option<LastRuns>> {
        // Only the runs: the file can hold large failed items.
        Ok(Some(match &self.state {
            Some(s) => s.runs.clone(),
            None => self.load_state()?.map(|s| s.runs).unwrap_or_default(),
        }))
    }

    async fn retry_failed(&mut self) -> Result<u64> {
        let state = self.state()?;
        let n = state.failed.len() as u64;
        for f in &mut state.failed {
            f.attempts = 0;
        }
        if n > 0 {
            self.save_state()?;
        }
        Ok(n)
    }

    async fn purge(&mut self, _cutoff: DateTime<Utc>) -> Result<u64> {
        // The events live at CAST AI, which expires them itself (90 days); our state file holds
        // no delivered events, and its failed items must never be deleted by age.
        tracing::info!(
            "the CASTAI source keeps nothing to delete; CAST AI expires audit logs itself"
        );
        Ok(0)
    }
}

struct CastaiPage<'a> {
    src: &'a mut Castai,
    lane: Lane,
    records: Vec<Record>,
    times: Vec<Option<DateTime<Utc>>>,
    items: Vec<Value>,
    done: Vec<Done>,
}

#[async_trait]
impl Page for CastaiPage<'_> {
    fn records(&self) -> &[Record] {
        &self.records
    }

    async fn commit(self: Box<Self>, result: PageResult) -> Result<u64> {
        let CastaiPage {
            src,
            lane,
            records,
            times,
            mut items,
            done,
        } = *self;
        let state = src.state()?;
        // Saved after every page, so a run cut short does not ship these again.
        // Records this selection does not accept are acknowledged for it too: otherwise a second
        // full of them would be handed out again on every run and hold the checkpoint.
        let mut changed =
            lane == Lane::Fresh && !(result.delivered.is_empty() && result.not_accepted.is_empty());
        if lane == Lane::Fresh {
            for &i in result.delivered.iter().chain(&result.not_accepted) {
                if let Some(time) = times[i] {
                    state.acked.push(Acked {
                        id: records[i].key.clone(),
                        time,
                    });
                }
            }
        }
        let delivered: HashSet<&str> = result
            .delivered
            .iter()
            .map(|&i| records[i].key.as_str())
            .collect();
        let before = state.failed.len();
        state.failed.retain(|f| !delivered.contains(f.key.as_str()));
        changed |= state.failed.len() != before;
        for (i, reason) in &result.failed {
            let key = &records[*i].key;
            let item = std::mem::take(&mut items[*i]);
            match state.failed.iter_mut().find(|f| &f.key == key) {
                Some(f) => {
                    f.attempts += 1;
                    f.last_error = reason.clone();
                    f.item = item;
                }
                None => state.failed.push(FailedItem {
                    key: key.clone(),
                    attempts: 1,
                    last_error: reason.clone(),
                    item,
                }),
            }
            changed = true;
        }
        changed |= src.complete(done);
        if lane == Lane::Fresh {
            changed |= src.shrink_if_stuck();
        }
        if changed {
            src.save_state()?;
        }
        Ok(result.delivered.len() as u64)
    }
}

// ---------------------------------------------------------------- documents

struct Built {
    record: Record,
    has_id: bool,
    time: Option<DateTime<Utc>>,
}

/// The document: the item as CAST AI returns it, plus `@timestamp` (from `time` in v1,
/// `occurredAt` in v2, normalised to UTC) and `topic` (v1: `eventType`; v2:
/// `eventDomain.eventResource.eventAction`). Document id: the event id.
fn build(version: CastaiApiVersion, item: &Value) -> Built {
    let (id_field, time_field) = match version {
        CastaiApiVersion::V1 => ("id", "time"),
        CastaiApiVersion::V2 => ("eventId", "occurredAt"),
    };
    let fail = |key: String, has_id: bool, reason: String| Built {
        record: Record {
            key,
            doc: Err(reason),
        },
        has_id,
        time: None,
    };
    let Some(obj) = item.as_object() else {
        return fail(
            anonymous_key(item),
            false,
            "the item is not a JSON object".into(),
        );
    };
    let id = match obj.get(id_field).and_then(Value::as_str).map(str::trim) {
        Some(id) if !id.is_empty() => id.to_string(),
        _ => {
            return fail(
                anonymous_key(item),
                false,
                format!("the item has no {id_field}"),
            )
        }
    };
    let time = match obj.get(time_field) {
        Some(Value::String(s)) => match DateTime::parse_from_rfc3339(s) {
            Ok(t) => t.with_timezone(&Utc),
            Err(e) => return fail(id, true, format!("unparseable {time_field} {s:?}: {e}")),
        },
        Some(other) => {
            return fail(
                id,
                true,
                format!("unparseable {time_field} {other}: expected an RFC 3339 string"),
            )
        }
        None => return fail(id, true, format!("the item has no {time_field}")),
    };
    let text = |k: &str| obj.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
    let topic = match version {
        CastaiApiVersion::V1 => text("eventType").map(String::from),
        CastaiApiVersion::V2 => {
            let parts: Vec<&str> = ["eventDomain", "eventResource", "eventAction"]
                .into_iter()
                .filter_map(text)
                .collect();
            (!parts.is_empty()).then(|| parts.join("."))
        }
    };
    let mut doc = obj.clone();
    doc.insert(
        "@timestamp".into(),
        Value::String(time.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
    );
    doc.insert(
        "topic".into(),
        Value::String(topic.unwrap_or_else(|| "unknown".into())),
    );
    let body = serde_json::to_vec(&Value::Object(doc)).expect("a JSON object serializes");
    Built {
        record: Record {
            key: id.clone(),
            doc: Ok(Document::new(id, body)),
        },
        has_id: true,
        time: Some(time),
    }
}

/// A stable key for an item without an id, so its failure entry is found again.
fn anonymous_key(item: &Value) -> String {
    let text = item.to_string();
    format!(
        "no-id-{:016x}",
        crate::base::hash::fnv1a(std::iter::once(text.as_bytes()))
    )
}

// ---------------------------------------------------------------- the API

enum Query {
    First {
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    },
    /// v1 sends only the cursor; v2 repeats the query with it (see `params`).
    Next {
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        cursor: String,
    },
}

struct ApiPage {
    items: Vec<Value>,
    /// `None` at the window's end (an empty or missing `nextCursor`).
    next: Option<String>,
}

#[derive(Deserialize)]
struct Response {
    #[serde(default)]
    items: Option<Vec<Value>>,
    #[serde(default)]
    events: Option<Vec<Value>>,
    #[serde(default, rename = "nextCursor")]
    next_cursor: Option<String>,
}

struct Api {
    http: reqwest::Client,
    endpoint: url::Url,
    cfg: CastaiConfig,
}

impl Api {
    fn new(cfg: &CastaiConfig) -> Result<Self> {
        let path = match cfg.version {
            CastaiApiVersion::V1 => "v1/audit",
            CastaiApiVersion::V2 => "v2/audit/events",
        };
        // Keep a path prefix of CASTAI_API_URL (a proxy) when joining.
        let mut base = cfg.api_url.clone();
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        let endpoint = base.join(path).context("CASTAI_API_URL")?;
        let http = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .user_agent(concat!("audit-transfer/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot set up the HTTP client")?;
        Ok(Api {
            http,
            endpoint,
            cfg: cfg.clone(),
        })
    }

    fn params(&self, query: &Query, limit: usize) -> Vec<(&'static str, String)> {
        let date = |t: &DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::AutoSi, true);
        let mut p = vec![("page.limit", limit.to_string())];
        let (from, to, cursor) = match query {
            Query::First { from, to } => (from, to, None),
            Query::Next { from, to, cursor } => (from, to, Some(cursor)),
        };
        match self.cfg.version {
            CastaiApiVersion::V1 => match cursor {
                // As the receiver does: the cursor carries the rest of the query.
                Some(c) => p.push(("page.cursor", c.clone())),
                None => {
                    p.push(("fromDate", date(from)));
                    p.push(("toDate", date(to)));
                    if let Some(c) = &self.cfg.cluster_id {
                        p.push(("clusterId", c.clone()));
                    }
                }
            },
            CastaiApiVersion::V2 => {
                // A page token is only valid with the query that produced it: repeat it.
                p.push(("fromDate", date(from)));
                p.push(("toDate", date(to)));
                p.push(("sort.field", "occurred_at".into()));
                p.push(("sort.order", "ASC".into()));
                if let Some(c) = &self.cfg.cluster_id {
                    p.push(("filter.clusters", c.clone()));
                }
                if let Some(c) = cursor {
                    p.push(("page.cursor", c.clone()));
                }
            }
        }
        p
    }

    fn delays(&self) -> impl Iterator<Item = Duration> {
        backon::ExponentialBuilder::default()
            .with_min_delay(self.cfg.retry_initial)
            .with_max_delay(Duration::from_secs(30))
            .with_jitter()
            .with_max_times(self.cfg.max_retries)
            .build()
    }

    /// One page, with 429/5xx/connection failures retried.
    async fn page(&self, query: &Query) -> Result<ApiPage> {
        self.get(&self.params(query, self.cfg.page_limit)).await
    }

    /// The smallest request the API accepts: proves URL and key.
    async fn probe(&self, query: &Query) -> Result<()> {
        let limit = match self.cfg.version {
            CastaiApiVersion::V1 => 10,
            CastaiApiVersion::V2 => 1,
        };
        self.get(&self.params(query, limit)).await.map(|_| ())
    }

    async fn get(&self, params: &[(&'static str, String)]) -> Result<ApiPage> {
        let mut delays = self.delays();
        loop {
            let (why, retry_after) = match self
                .http
                .get(self.endpoint.clone())
                .header("X-API-Key", &self.cfg.api_key)
                .header("Accept", "application/json")
                .query(params)
                .send()
                .await
            {
                Err(e) => (
                    format!("request failed: {}", crate::base::exit::chain_text(&e)),
                    None,
                ),
                Ok(r) => {
                    let status = r.status().as_u16();
                    match status {
                        200 => match r.bytes().await {
                            Ok(body) => return self.parse(&body),
                            Err(e) => (
                                format!("reading the response failed: {}", crate::base::exit::chain_text(&e)),
                                None,
                            ),
                        },
                        401 | 403 => {
                            return Err(config_error(format!(
                                "CAST AI at {} refused CASTAI_API_KEY (HTTP {status}): check CASTAI_API_KEY \
                                 (a valid key with access to audit logs) and CASTAI_API_URL",
                                self.cfg.api_url
                            )))
                        }
                        408 | 429 | 500..=599 => {
                            let after = r
                                .headers()
                                .get(reqwest::header::RETRY_AFTER)
                                .and_then(|v| v.to_str().ok())
                                .and_then(|v| v.trim().parse::<u64>().ok())
                                .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER));
                            (format!("HTTP {status}"), after)
                        }
                        _ => {
                            let text = r.text().await.unwrap_or_default();
                            bail!(
                                "CAST AI at {} answered HTTP {status}: {}",
                                self.endpoint,
                                crate::base::exit::excerpt(&text)
                            );
                        }
                    }
                }
            };
            match delays.next() {
                Some(delay) => {
                    let delay = retry_after.map_or(delay, |a| a.max(delay));
                    tracing::warn!(
                        retry_in_ms = delay.as_millis() as u64,
                        "CAST AI API: {why}; retrying"
                    );
                    tokio::time::sleep(delay).await;
                }
                None => bail!(
                    "CAST AI at {} failed after {} retries: {why}",
                    self.endpoint,
                    self.cfg.max_retries
                ),
            }
        }
    }

    fn parse(&self, body: &[u8]) -> Result<ApiPage> {
        let r: Response = serde_json::from_slice(body).with_context(|| {
            format!(
                "unexpected CAST AI response: {}",
                crate::base::exit::excerpt(&String::from_utf8_lossy(body))
            )
        })?;
        // gRPC gateways leave out empty lists, so a missing list is an empty page.
        let items = match self.cfg.version {
            CastaiApiVersion::V1 => r.items,
            CastaiApiVersion::V2 => r.events,
        }
        .unwrap_or_default();
        Ok(ApiPage {
            items,
            next: r.next_cursor.filter(|c| !c.is_empty()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(b: &Built) -> Value {
        serde_json::from_slice(&b.record.doc.as_ref().unwrap().body).unwrap()
    }

    #[test]
    fn v1_document_is_the_item_plus_timestamp_and_topic() {
        let item = json!({"id": "0b9a", "eventType": "clusterDeleted",
            "initiatedBy": {"id": "u1", "name": "Ann", "email": "ann@example.com"},
            "time": "2024-05-01T12:00:00.123456789+02:00", "event": {"x": 1},
            "labels": {"clusterId": "c1"}});
        let b = build(CastaiApiVersion::V1, &item);
        assert_eq!(b.record.doc.as_ref().unwrap().id, "0b9a");
        let doc = body(&b);
        assert_eq!(doc["@timestamp"], "2024-05-01T10:00:00.123456789Z");
        assert_eq!(doc["topic"], "clusterDeleted");
        assert_eq!(doc["initiatedBy"]["email"], "ann@example.com");
        assert_eq!(doc["time"], item["time"], "the item is kept as it came");
    }

    #[test]
    fn v2_document_uses_event_id_occurred_at_and_domain_resource_action() {
        let item = json!({"eventId": "e-1", "occurredAt": "2024-05-01T10:00:00Z",
            "eventDomain": "cluster", "eventResource": "node", "eventAction": "delete"});
        let b = build(CastaiApiVersion::V2, &item);
        assert_eq!(b.record.key, "e-1");
        let doc = body(&b);
        assert_eq!(doc["topic"], "cluster.node.delete");
        assert_eq!(doc["@timestamp"], "2024-05-01T10:00:00Z");
    }

    #[test]
    fn bad_items_fail_with_id_and_reason() {
        let b = build(
            CastaiApiVersion::V1,
            &json!({"id": "x1", "time": "yesterday", "eventType": "t"}),
        );
        assert_eq!(b.record.key, "x1");
        let reason = b.record.doc.unwrap_err();
        assert!(
            reason.contains("unparseable time \"yesterday\""),
            "{reason}"
        );
        let no_id = build(
            CastaiApiVersion::V1,
            &json!({"time": "2024-05-01T10:00:00Z"}),
        );
        assert!(!no_id.has_id && no_id.record.key.starts_with("no-id-"));
        assert_eq!(
            no_id.record.key,
            build(
                CastaiApiVersion::V1,
                &json!({"time": "2024-05-01T10:00:00Z"})
            )
            .record
            .key
        );
        assert!(build(CastaiApiVersion::V2, &json!([1])).record.doc.is_err());
    }
}

/// `AUDIT_LOGGER_TYPE=CASTAI`.
pub const KIND: super::Kind = super::Kind {
    name: "CASTAI",
    configure: |env, _| Ok(Box::new(Configured(crate::config::castai_config(env)?))),
};

#[derive(Debug)]
struct Configured(CastaiConfig);

#[async_trait]
impl super::Configured for Configured {
    fn label(&self) -> String {
        "castai".into()
    }
    fn traits(&self) -> crate::base::source::SourceTraits {
        crate::base::source::SourceTraits {
            topic_field: Some("topic"),
            key_field: Some("labels.clusterId"),
            ..Default::default()
        }
    }
    async fn connect(&self, run: &Config) -> Result<Box<dyn Source>> {
        Ok(Box::new(Castai::new(&self.0, run)?))
    }
}
