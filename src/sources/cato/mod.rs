//! Cato Networks' GraphQL feeds (`AUDIT_LOGGER_TYPE=CATO`): `eventsFeed` (security and
//! connectivity events) or `auditFeed` (the admin audit trail), one per run and state file
//! (`CATO_FEED`).
//!
//! **Pages are units.** Each feed call returns one page (at most 3000 events, 1000 audit
//! records) and a marker. The page is handed to the pipeline in CHUNK_SIZE pieces; the marker
//! is saved only when the last piece is committed, that is, when the sink has acknowledged
//! every record of the page (or it was recorded as failed, below). BATCH_SIZE therefore bounds
//! a run at page boundaries ([`Paging::Units`]); `CATO_MAX_RUN_SECONDS` stops it before the next
//! call (or during one that waits out a rate limit). A run killed before the save re-fetches
//! the page; the deterministic document ids make that harmless.
//!
//! **When to stop.** eventsFeed has no `hasMore`: a run goes on while pages are full, as Cato's
//! own consumers do. auditFeed goes on while `hasMore`. Either stops when the marker comes back
//! unchanged: its records are handled once and the next run asks again, instead of looping.
//!
//! **Repeats.** The ids acknowledged under the current marker are kept in the state file and
//! skipped when the feed returns them again: the auditFeed boundary is inclusive (the last
//! record of a call returns on the next), an unchanged marker repeats its page, and auditFeed
//! windows overlap by one second.
//!
//! **auditFeed windows.** Its marker belongs to one `timeFrame`, so a run reads absolute
//! windows `utc.{from--to}` from the end of the last drained window to `now - AUDIT_LAG`, frozen
//! (saved with the marker) until drained. The first window starts at `CATO_START_FROM`.
//!
//! **Gaps** are reported, never hidden (exit 3): a marker the server refuses (eventsFeed then
//! starts again at the oldest retained event), or one older than [`MARKER_LIFETIME`].
//!
//! **Records that cannot be delivered** (no readable time, rejected by the sink) do not hold
//! the marker: they are kept in the state file as returned, retried one page per run, and
//! parked after `MAX_ATTEMPTS` (exit 3 until `retry-failed`).

mod client;
mod documents;
mod settings;
mod state;

use super::{Lane, LastRuns, Page, PageResult, Paging, Parked, Record, RunRecord, Source};
use crate::base::source::{ChainAdvance, ChainState};
use crate::config::Config;
use anyhow::{anyhow, Result};
use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use client::{Client, FeedPage, MarkerRefused, Window};
use documents::build;
use serde_json::Value;
use settings::{Feed, Settings, StartFrom};
use state::{Acked, State, StateFile};
use std::collections::{HashSet, VecDeque};
use std::time::Instant;

/// Events retention is 7 days (Cato's documentation) but markers were observed to expire after
/// 3 (Elastic's integration): a marker older than this may have skipped events.
const MARKER_LIFETIME: chrono::Duration = chrono::Duration::days(3);
/// auditFeed windows end this long before now, for records written late.
const AUDIT_LAG: chrono::Duration = chrono::Duration::minutes(2);
/// auditFeed windows start this long before the last one ended (inclusive or not, the bound is
/// covered); the repeats are skipped by id.
const OVERLAP: chrono::Duration = chrono::Duration::seconds(1);

pub struct Cato {
    cfg: Settings,
    max_attempts: u32,
    api: Client,
    file: StateFile,
    state: Option<State>,
    deadline: Option<Instant>,
    /// auditFeed: where this run's windows end.
    end: DateTime<Utc>,
    /// The feed page being handed out; applied when its last piece commits.
    unit: Option<Unit>,
    /// No further call in this run.
    stop: bool,
    /// Ids acknowledged under the current marker plus those handed out in this run.
    seen: HashSet<String>,
    retried: HashSet<String>,
    /// With TARGETS: the targets that hold the retry lane's items, by key.
    retry_held: std::collections::HashMap<String, Vec<String>>,
    /// A refused marker was started over once in this run.
    restarted: bool,
    /// INTEGRITY_CHAIN is on: pages hand out the chain's head kept in the state file.
    chain: bool,
    gaps: Vec<String>,
    duplicates: u64,
    /// Events before `not_before`, passed over.
    too_old: u64,
    _lock: Option<std::fs::File>,
}

struct Fetched {
    record: Record,
    account: String,
    time: Option<DateTime<Utc>>,
    item: Value,
}

/// One feed page on its way through the pipeline.
struct Unit {
    queue: VecDeque<Fetched>,
    marker: String,
    window: Option<Window>,
    /// auditFeed: the window has no more records after this page.
    drained: bool,
    /// Records of this page acknowledged so far (and the repeats skipped).
    acked: Vec<Acked>,
    /// INTEGRITY_CHAIN: where this feed page's pieces moved the head. Kept with the marker
    /// when the last piece commits: a run cut short reads the whole feed page again, and must
    /// link it again from the same head.
    chain: Option<ChainAdvance>,
}

impl Cato {
    pub fn new(c: &Settings, cfg: &Config) -> Result<Self> {
        Ok(Cato {
            api: Client::new(c)?,
            file: StateFile::new(c, cfg.routing.accept_label()),
            cfg: c.clone(),
            max_attempts: cfg.max_attempts,
            state: None,
            deadline: None,
            end: Utc::now(),
            unit: None,
            stop: false,
            seen: HashSet::new(),
            retried: HashSet::new(),
            retry_held: Default::default(),
            restarted: false,
            chain: false,
            gaps: Vec::new(),
            duplicates: 0,
            too_old: 0,
            _lock: None,
        })
    }

    fn state(&mut self) -> Result<&mut State> {
        self.state
            .as_mut()
            .ok_or_else(|| anyhow!("Cato source used before prepare"))
    }

    fn save_state(&self) -> Result<()> {
        self.file.save(self.state.as_ref().expect("state loaded"))
    }

    fn feed(&self) -> Feed {
        self.cfg.feed
    }

    /// What the next call asks for: the marker, and for auditFeed the window (`None`: nothing
    /// left to read in this run).
    fn next_query(&self) -> Option<(String, Option<Window>)> {
        let state = self.state.as_ref()?;
        match self.feed() {
            Feed::Events => Some((state.marker.clone(), None)),
            Feed::Audit => match state.window {
                Some(w) => Some((state.marker.clone(), Some(w))),
                None => {
                    let covered = state.covered_to?;
                    if covered >= self.end {
                        return None;
                    }
                    Some((
                        String::new(),
                        Some(Window {
                            from: covered - OVERLAP,
                            to: self.end,
                        }),
                    ))
                }
            },
        }
    }

    /// Calls the feed once; `None` when the run should stop here (nothing left, time budget).
    async fn call(&mut self) -> Result<Option<(String, Option<Window>, FeedPage)>> {
        loop {
            let Some((marker, window)) = self.next_query() else {
                return Ok(None);
            };
            let call = self.api.page(&marker, window);
            let result = match self.deadline {
                None => call.await,
                Some(d) => match tokio::time::timeout_at(d.into(), call).await {
                    Ok(r) => r,
                    Err(_) => {
                        tracing::info!(
                            "CATO_MAX_RUN_SECONDS reached while waiting for Cato; stopping, the \
                             next run continues from the saved marker"
                        );
                        return Ok(None);
                    }
                },
            };
            match result {
                Ok(page) => return Ok(Some((marker, window, page))),
                Err(e) if e.downcast_ref::<MarkerRefused>().is_some() && !self.restarted => {
                    self.restarted = true;
                    self.restart_after_refused_marker(&e)?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn restart_after_refused_marker(&mut self, e: &anyhow::Error) -> Result<()> {
        let feed = self.feed();
        let state = self.state()?;
        let since = state
            .marker_saved_at
            .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
            .unwrap_or_else(|| "an unknown time".into());
        state.marker.clear();
        match feed {
            Feed::Events => {
                let gap = format!(
                    "{e}; reading again from the oldest event Cato keeps: events between the \
                     last saved marker ({since}) and that event are missing"
                );
                tracing::warn!("gap: {gap}");
                self.gaps.push(gap);
            }
            // The window is absolute: reading it again from its start loses nothing.
            Feed::Audit => tracing::warn!("{e}; reading the window again from its start"),
        }
        Ok(())
    }

    /// Fetches the next feed page into `self.unit`; false when the run stops here.
    async fn fetch(&mut self) -> Result<bool> {
        if self.stop {
            return Ok(false);
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            tracing::info!("CATO_MAX_RUN_SECONDS reached; the next run continues");
            self.stop = true;
            return Ok(false);
        }
        let Some((sent, window, page)) = self.call().await? else {
            self.stop = true;
            return Ok(false);
        };
        let feed = self.feed();
        let unchanged = page.marker == sent && !page.records.is_empty();
        let drained = feed == Feed::Audit && !page.has_more;
        self.stop = match feed {
            Feed::Events => page.fetched < feed.page_max() || page.marker == sent,
            // A drained window lets the next call open the next one, if any time is left.
            Feed::Audit => !drained && page.marker == sent,
        };
        if unchanged && self.stop {
            tracing::warn!(
                "Cato returned the marker unchanged with records; they are handled once and the \
                 next run asks again"
            );
        }
        let failed: HashSet<String> = self
            .state
            .as_ref()
            .map(|s| s.failed.iter().map(|f| f.key.clone()).collect())
            .unwrap_or_default();
        let not_before = self.state.as_ref().and_then(|s| s.not_before);
        let mut unit = Unit {
            queue: VecDeque::new(),
            marker: page.marker,
            window,
            drained,
            acked: Vec::new(),
            chain: None,
        };
        let n = page.records.len();
        for (account, item) in page.records {
            let built = build(feed, &account, &item);
            let key = built.record.key.clone();
            let too_old = matches!((not_before, built.time), (Some(nb), Some(t)) if t < nb);
            if too_old || self.seen.contains(&key) || failed.contains(&key) {
                if too_old {
                    self.too_old += 1;
                } else {
                    self.duplicates += 1;
                }
                if let Some(time) = built.time {
                    unit.acked.push(Acked { id: key, time });
                }
                continue;
            }
            self.seen.insert(key);
            unit.queue.push_back(Fetched {
                record: built.record,
                account,
                time: built.time,
                item,
            });
        }
        tracing::debug!(
            records = n,
            fresh = unit.queue.len(),
            fetched_count = page.fetched,
            "fetched a Cato {} page",
            feed.operation()
        );
        self.unit = Some(unit);
        Ok(true)
    }

    /// The page's last piece is committed: its marker becomes the state's.
    fn apply(&mut self, unit: Unit) -> Result<()> {
        let feed = self.feed();
        let state = self.state()?;
        match feed {
            Feed::Events => {
                // Accepted by the server just now, moved or not (a quiet feed keeps it).
                state.marker_saved_at = Some(Utc::now());
                state.marker = unit.marker;
                state.acked = unit.acked;
            }
            Feed::Audit => {
                let known: HashSet<String> = state.acked.iter().map(|a| a.id.clone()).collect();
                state
                    .acked
                    .extend(unit.acked.into_iter().filter(|a| !known.contains(&a.id)));
                state.marker_saved_at = Some(Utc::now());
                if unit.drained {
                    let to = unit.window.expect("audit window").to;
                    state.covered_to = Some(to);
                    state.window = None;
                    state.marker.clear();
                    // Only the next window's overlap can return these.
                    state.acked.retain(|a| a.time >= to - OVERLAP);
                    self.seen = state.acked.iter().map(|a| a.id.clone()).collect();
                } else {
                    state.window = unit.window;
                    state.marker = unit.marker;
                }
            }
        }
        Ok(())
    }

    async fn claim_fresh(&mut self, limit: usize) -> Result<Option<(Vec<Fetched>, bool)>> {
        loop {
            if let Some(unit) = self.unit.as_mut() {
                if !unit.queue.is_empty() {
                    let take = limit.min(unit.queue.len());
                    let out: Vec<Fetched> = unit.queue.drain(..take).collect();
                    let last = unit.queue.is_empty();
                    return Ok(Some((out, last)));
                }
                // Nothing of it to ship (all repeats, or empty): it is handled already.
                let unit = self.unit.take().expect("unit");
                self.apply(unit)?;
                self.save_state()?;
            }
            if !self.fetch().await? {
                return Ok(None);
            }
        }
    }

    fn retry_page(&mut self, limit: usize) -> Vec<Fetched> {
        let feed = self.feed();
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
                let built = build(feed, &f.account, &f.item);
                Fetched {
                    record: built.record,
                    account: f.account.clone(),
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
impl Source for Cato {
    fn name(&self) -> String {
        format!(
            "cato:{}:{}",
            self.cfg.feed.name(),
            self.cfg.account_ids.join(",")
        )
    }

    fn paging(&self) -> Paging {
        Paging::Units
    }

    async fn check(&mut self) -> Result<()> {
        let state = self.file.load()?;
        let marker = state.as_ref().map(|s| s.marker.clone()).unwrap_or_default();
        let window = state.and_then(|s| s.window).or_else(|| {
            (self.feed() == Feed::Audit).then(|| {
                let now = Utc::now();
                Window {
                    from: now - chrono::Duration::minutes(5),
                    to: now,
                }
            })
        });
        self.api.page(&marker, window).await.map(|_| ())
    }

    async fn prepare(&mut self) -> Result<()> {
        self._lock = Some(self.file.lock()?);
        let now = Utc::now();
        let state = match self.file.load()? {
            Some(s) => s,
            None => {
                let from = match self.cfg.start_from {
                    StartFrom::At(t) => t,
                    StartFrom::Ago(d) => now - chrono::Duration::from_std(d)?,
                };
                let start = (self.cfg.feed == Feed::Audit).then_some(from);
                tracing::info!(
                    state_file = %self.file.path().display(),
                    "no state file yet: {}",
                    match start {
                        None => "eventsFeed starts at the oldest event Cato keeps".to_string(),
                        Some(t) => format!(
                            "auditFeed starts at CATO_START_FROM ({})",
                            t.to_rfc3339_opts(SecondsFormat::Secs, true)
                        ),
                    }
                );
                let mut fresh = self.file.fresh(start);
                if self.cfg.feed == Feed::Events && self.cfg.start_from_set {
                    tracing::info!(
                        not_before = %from.to_rfc3339_opts(SecondsFormat::Secs, true),
                        "eventsFeed: events before CATO_START_FROM are passed over"
                    );
                    fresh.not_before = Some(from);
                }
                fresh
            }
        };
        // Whole seconds: the timeFrame has no finer unit.
        self.end = DateTime::from_timestamp((now - AUDIT_LAG).timestamp(), 0).expect("a time");
        self.deadline = self.cfg.max_run.map(|d| Instant::now() + d);
        if let Some(saved) = state.marker_saved_at {
            if self.cfg.feed == Feed::Events
                && !state.marker.is_empty()
                && now - saved > MARKER_LIFETIME
            {
                let gap = format!(
                    "the saved eventsFeed marker is from {} ({} days ago); Cato keeps events 7 \
                     days and markers were seen to expire after 3: events may be missing from \
                     then on",
                    saved.to_rfc3339_opts(SecondsFormat::Secs, true),
                    (now - saved).num_days()
                );
                tracing::warn!("possible gap: {gap}");
                self.gaps.push(gap);
            }
        }
        self.seen = state.acked.iter().map(|a| a.id.clone()).collect();
        tracing::info!(
            feed = self.cfg.feed.operation(),
            marker = !state.marker.is_empty(),
            failed = state.failed.len(),
            "Cato feed to read"
        );
        self.state = Some(state);
        Ok(())
    }

    async fn claim<'a>(
        &'a mut self,
        lane: Lane,
        limit: usize,
    ) -> Result<Option<Box<dyn Page + 'a>>> {
        self.state()?;
        let (fetched, last) = match lane {
            Lane::Retry => (self.retry_page(limit), false),
            Lane::Fresh => match self.claim_fresh(limit).await? {
                Some(x) => x,
                None => {
                    if self.too_old > 0 {
                        tracing::info!(
                            events = self.too_old,
                            "events before CATO_START_FROM passed over"
                        );
                    }
                    if self.duplicates > 0 {
                        tracing::info!(
                            duplicates = self.duplicates,
                            "records Cato returned again (boundaries, unchanged markers) were \
                             handed out once"
                        );
                    }
                    return Ok(None);
                }
            },
        };
        if fetched.is_empty() {
            return Ok(None);
        }
        let mut records = Vec::with_capacity(fetched.len());
        let mut meta = Vec::with_capacity(fetched.len());
        for f in fetched {
            records.push(f.record);
            meta.push(Meta {
                account: f.account,
                time: f.time,
                item: f.item,
            });
        }
        Ok(Some(Box::new(CatoPage {
            src: self,
            lane,
            last,
            records,
            meta,
        })))
    }

    async fn parked(&mut self) -> Result<Vec<Parked>> {
        let max = self.max_attempts;
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

    async fn record_run(&mut self, run: &RunRecord) -> Result<()> {
        if let Some(state) = self.state.as_mut() {
            state.record_run(run);
            self.save_state()?;
        }
        Ok(())
    }

    async fn last_runs(&mut self) -> Result<Option<LastRuns>> {
        Ok(Some(match &self.state {
            Some(s) => s.runs.clone(),
            None => self.file.load()?.map(|s| s.runs).unwrap_or_default(),
        }))
    }

    async fn keep_chain(&mut self) -> Result<String> {
        let state = self.state()?;
        if state.chain.is_none() {
            state.chain = Some(Default::default());
            self.save_state()?;
        }
        self.chain = true;
        Ok(self.name())
    }

    async fn chain_state(&mut self) -> Result<ChainState> {
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
        tracing::info!("the CATO source keeps nothing to delete; Cato expires its feeds itself");
        Ok(0)
    }

    fn incomplete(&self) -> Vec<String> {
        self.gaps.clone()
    }
}

struct CatoPage<'a> {
    src: &'a mut Cato,
    lane: Lane,
    /// The last piece of its feed page: committing it saves the marker.
    last: bool,
    records: Vec<Record>,
    meta: Vec<Meta>,
}

struct Meta {
    account: String,
    time: Option<DateTime<Utc>>,
    item: Value,
}

#[async_trait]
impl Page for CatoPage<'_> {
    fn records(&self) -> &[Record] {
        &self.records
    }

    fn ends_unit(&self) -> bool {
        self.lane == Lane::Retry || self.last
    }

    fn chain_head(&self) -> Option<&crate::base::chain::Head> {
        if !self.src.chain {
            return None;
        }
        let pending = match self.lane {
            Lane::Fresh => self.src.unit.as_ref().and_then(|u| u.chain.as_ref()),
            Lane::Retry => None,
        };
        match pending {
            Some(p) => Some(&p.head),
            None => self.src.state.as_ref()?.chain.as_ref().map(|c| &c.head),
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
        let CatoPage {
            src,
            lane,
            last,
            records,
            mut meta,
        } = *self;
        let acked: Vec<Acked> = result
            .delivered
            .iter()
            .chain(&result.not_accepted)
            .filter_map(|&i| {
                meta[i].time.map(|time| Acked {
                    id: records[i].key.clone(),
                    time,
                })
            })
            .collect();
        let state = src.state()?;
        let delivered: HashSet<&str> = result
            .delivered
            .iter()
            .map(|&i| records[i].key.as_str())
            .collect();
        let before = state.failed.len();
        state.failed.retain(|f| !delivered.contains(f.key.as_str()));
        let mut changed = state.failed.len() != before;
        for (i, reason) in &result.failed {
            let item = std::mem::take(&mut meta[*i].item);
            state.record_failure(&records[*i].key, &meta[*i].account, reason, item);
            changed = true;
        }
        for (i, held_by) in result.progress {
            let item = std::mem::take(&mut meta[i].item);
            state.record_held(&records[i].key, &meta[i].account, held_by, item);
            changed = true;
        }
        if let (Lane::Retry, Some(to)) = (lane, &result.chain) {
            state.chain.get_or_insert_default().advance(to.clone());
            changed = true;
        }
        if lane == Lane::Fresh {
            let unit = src.unit.as_mut().expect("a page belongs to a unit");
            unit.acked.extend(acked);
            if let Some(to) = result.chain {
                let pending = unit.chain.get_or_insert_default();
                pending.head = to.head;
                pending.voids.extend(to.voids);
            }
            if last {
                let mut unit = src.unit.take().expect("unit");
                if let Some(to) = unit.chain.take() {
                    src.state()?.chain.get_or_insert_default().advance(to);
                }
                src.apply(unit)?;
                changed = true;
            }
        }
        if changed {
            crate::base::failpoint::hit("cato_before_save");
            src.save_state()?;
        }
        Ok(result.delivered.len() as u64)
    }
}

/// `AUDIT_LOGGER_TYPE=CATO`.
pub const KIND: super::Kind = super::Kind {
    name: "CATO",
    configure: |env, _| Ok(Box::new(Configured(Settings::from_env(env)?))),
};

#[derive(Debug)]
struct Configured(Settings);

#[async_trait]
impl super::Configured for Configured {
    fn label(&self) -> String {
        format!("cato:{}", self.0.feed.name())
    }
    fn traits(&self) -> crate::base::source::SourceTraits {
        crate::base::source::SourceTraits {
            topic_field: Some("topic"),
            // As the S3 cursor source routes Cato's exported events (event_type/event_sub_type),
            // so indexes named by topic and key stay the same after moving to the feed.
            key_field: Some(match self.0.feed {
                Feed::Events => "fieldsMap.event_sub_type",
                Feed::Audit => "fieldsMap.model_type",
            }),
            fanout: true,
            chain: true,
            ..Default::default()
        }
    }
    async fn connect(&self, run: &Config) -> Result<Box<dyn Source>> {
        Ok(Box::new(Cato::new(&self.0, run)?))
    }
}
