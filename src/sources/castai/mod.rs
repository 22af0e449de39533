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
//! and ACCEPT_* selection it belongs to, and how the last runs ended (for `status`). A missing
//! file starts at `CASTAI_START_FROM`; an unreadable or corrupt one stops the run with exit 2
//! and is never replaced by a fresh start.
//!
//! Here: the source and its windows. `client` asks the API for pages, `documents` turns items
//! into documents, `state` keeps the state file, `settings` reads the `CASTAI_*` variables.

mod client;
mod documents;
mod settings;
mod state;

use super::{Lane, LastRuns, Page, PageResult, Parked, Record, RunRecord, Source};
use crate::config::Config;
use anyhow::{anyhow, bail, Result};
use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use client::{Client, Query};
use documents::build;
use serde_json::Value;
use settings::{Settings, StartFrom};
use state::{Acked, State, StateFile};
use std::collections::{HashSet, VecDeque};
use std::time::Duration;

/// How far each query reaches back before the checkpoint (see the module comment).
const OVERLAP: Duration = Duration::from_secs(1);
/// The smallest window; a second with more events than BATCH_SIZE is a configuration problem.
const MIN_SPAN_SECS: u64 = 1;

pub struct Castai {
    cfg: Settings,
    batch_size: usize,
    max_attempts: u32,
    api: Client,
    file: StateFile,
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
    /// With TARGETS: the targets that hold the retry lane's items, by key.
    retry_held: std::collections::HashMap<String, Vec<String>>,
    /// INTEGRITY_CHAIN is on: pages hand out the chain's head kept in the state file.
    chain: bool,
    /// Held from `prepare` to exit (the OS releases it even after SIGKILL).
    _lock: Option<std::fs::File>,
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
    pub fn new(c: &Settings, cfg: &Config) -> Result<Self> {
        Ok(Castai {
            api: Client::new(c)?,
            file: StateFile::new(c, cfg.routing.accept_label()),
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
            retry_held: Default::default(),
            chain: false,
            _lock: None,
        })
    }

    fn max_span(&self) -> u64 {
        self.cfg.window.as_secs().max(MIN_SPAN_SECS)
    }

    fn save_state(&self) -> Result<()> {
        self.file.save(self.state.as_ref().expect("state loaded"))
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
        let keys: HashSet<&str> = picked.iter().map(|p| p.record.key.as_str()).collect();
        for f in state.failed.iter().filter(|f| !f.held_by.is_empty()) {
            if keys.contains(f.key.as_str()) {
                self.retry_held.insert(f.key.clone(), f.held_by.clone());
            }
        }
        picked
    }
}

#[async_trait]
impl Source for Castai {
    fn name(&self) -> String {
        format!(
            "castai:{}{}",
            self.cfg.version.name(),
            self.cfg
                .cluster_id
                .as_deref()
                .map(|c| format!(":cluster={c}"))
                .unwrap_or_default()
        )
    }

    async fn check(&mut self) -> Result<()> {
        self.file.load()?;
        let now = Utc::now();
        let query = Query::First {
            from: now - chrono::Duration::minutes(1),
            to: now,
        };
        self.api.probe(&query).await
    }

    async fn prepare(&mut self) -> Result<()> {
        self._lock = Some(self.file.lock()?);
        let state = match self.file.load()? {
            Some(s) => s,
            None => {
                let start = match self.cfg.start_from {
                    StartFrom::At(t) => t,
                    StartFrom::Ago(d) => Utc::now() - d,
                };
                tracing::info!(
                    state_file = %self.file.path().display(),
                    start = %start.to_rfc3339_opts(SecondsFormat::AutoSi, true),
                    "no state file yet: starting at CASTAI_START_FROM"
                );
                self.file.fresh(start, self.max_span())
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
            None => self.file.load()?,
        };
        Ok(self
            .state
            .as_ref()
            .or(loaded.as_ref())
            .map(|s| s.parked(max))
            .unwrap_or_default())
    }

    /// Kept in the state file; a run that ended before it had the file (lock held elsewhere,
    /// unreadable file) records nothing.
    async fn record_run(&mut self, run: &RunRecord) -> Result<()> {
        if let Some(state) = self.state.as_mut() {
            state.record_run(run);
            self.save_state()?;
        }
        Ok(())
    }

    async fn last_runs(&mut self) -> Result<Option<LastRuns>> {
        // Only the runs: the file can hold large failed items.
        Ok(Some(match &self.state {
            Some(s) => s.runs.clone(),
            None => self.file.load()?.map(|s| s.runs).unwrap_or_default(),
        }))
    }

    /// The head lives in the state file and moves with each page's acknowledgements: a run
    /// cut short (crash) left it where the next run reads the same events again.
    async fn keep_chain(&mut self) -> Result<String> {
        let state = self.state()?;
        if state.chain.is_none() {
            state.chain = Some(Default::default());
            self.save_state()?;
        }
        self.chain = true;
        Ok(self.name())
    }

    async fn chain_state(&mut self) -> Result<crate::base::source::ChainState> {
        // `verify --chain` reads the file without taking the run's lock.
        let loaded = match &self.state {
            Some(s) => s.chain.clone(),
            None => self.file.load()?.and_then(|s| s.chain),
        };
        Ok(loaded.unwrap_or_default())
    }

    async fn save_checkpoint(&mut self, cp: &crate::base::chain::Checkpoint) -> Result<()> {
        self.state()?.chain.get_or_insert_default().keep(cp);
        self.save_state()
    }

    async fn retry_failed(&mut self) -> Result<u64> {
        let n = self.state()?.reset_attempts();
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

    fn chain_head(&self) -> Option<&crate::base::chain::Head> {
        match self.src.chain {
            true => self.src.state.as_ref()?.chain.as_ref().map(|c| &c.head),
            false => None,
        }
    }

    fn held_by(&self, i: usize) -> &[String] {
        self.src
            .retry_held
            .get(&self.records[i].key)
            .map(Vec::as_slice)
            .unwrap_or_default()
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
            let item = std::mem::take(&mut items[*i]);
            state.record_failure(&records[*i].key, reason, item);
            changed = true;
        }
        for (i, held_by) in result.progress {
            let item = std::mem::take(&mut items[i]);
            state.record_held(&records[i].key, held_by, item);
            changed = true;
        }
        if let Some(to) = result.chain {
            state.chain.get_or_insert_default().advance(to);
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

/// `AUDIT_LOGGER_TYPE=CASTAI`.
pub const KIND: super::Kind = super::Kind {
    name: "CASTAI",
    configure: |env, _| Ok(Box::new(Configured(Settings::from_env(env)?))),
};

#[derive(Debug)]
struct Configured(Settings);

#[async_trait]
impl super::Configured for Configured {
    fn label(&self) -> String {
        "castai".into()
    }
    fn traits(&self) -> crate::base::source::SourceTraits {
        crate::base::source::SourceTraits {
            topic_field: Some("topic"),
            key_field: Some("labels.clusterId"),
            fanout: true,
            chain: true,
            ..Default::default()
        }
    }
    async fn connect(&self, run: &Config) -> Result<Box<dyn Source>> {
        Ok(Box::new(Castai::new(&self.0, run)?))
    }
}
