//! What a source is to the pipeline: pages of records, each page committed with what the sink
//! acknowledged. Sources implement [`Source`]; the pipeline drives it.

use crate::base::chain::{Checkpoint, Head, Void};
use crate::base::document::Record;
use anyhow::Result;
use async_trait::async_trait;
use chrono::{DateTime, Utc};

/// Which part of the queue a page is claimed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Records never tried before.
    Fresh,
    /// Records that failed before and have attempts left.
    Retry,
}

/// What happened to each record of a page, by index into [`Page::records`].
#[derive(Debug, Default)]
pub struct PageResult {
    /// Acknowledged by the sink (created, or already present under our id): mark them.
    pub delivered: Vec<usize>,
    /// Not deliverable (no timestamp, rejected by the sink): never mark, remember why.
    pub failed: Vec<(usize, String)>,
    /// Not for this run (ACCEPT_TOPICS, ACCEPT_ROUTING_KEYS): never mark; a source whose
    /// position moves past records (a checkpoint) counts them as handled by this selection.
    pub not_accepted: Vec<usize>,
    /// With TARGETS: records some but not all of their targets hold, with every target that
    /// holds them now (earlier runs' included). Never marked; kept so the next run sends them
    /// only to the others. A record delivered to all is in `delivered`, and its progress is
    /// forgotten.
    pub progress: Vec<(usize, Vec<String>)>,
    /// INTEGRITY_CHAIN: where this page's links moved the chain's head, kept with the marks.
    pub chain: Option<ChainAdvance>,
}

/// INTEGRITY_CHAIN: the head after a page's links, and the links of its documents the
/// destination refused.
#[derive(Debug, Clone, Default)]
pub struct ChainAdvance {
    pub head: Head,
    pub voids: Vec<Void>,
}

/// A source's chain as it keeps it: the head, every void, and the last [`KEPT_CHECKPOINTS`]
/// checkpoints written.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChainState {
    pub head: Head,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub voids: Vec<Void>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checkpoints: Vec<Checkpoint>,
}

/// Checkpoints a source keeps (one per run, in its table or state file): `verify --chain`
/// checks that these are still in the destination, and each run reads them.
pub const KEPT_CHECKPOINTS: usize = 100;

impl ChainState {
    /// Where a page moved the head, with its voids.
    pub fn advance(&mut self, to: ChainAdvance) {
        self.head = to.head;
        self.voids.extend(to.voids);
    }

    /// Keeps a checkpoint, forgetting the oldest beyond [`KEPT_CHECKPOINTS`].
    pub fn keep(&mut self, cp: &Checkpoint) {
        self.checkpoints.push(cp.clone());
        let over = self.checkpoints.len().saturating_sub(KEPT_CHECKPOINTS);
        self.checkpoints.drain(..over);
    }
}

fn no_chain(source: &str) -> anyhow::Error {
    crate::base::exit::config_error(format!(
        "INTEGRITY_CHAIN is kept by the SQL sources (SINGLE_COLUMN_JSON, DJANGO_AUDITLOG), CASTAI and CATO, not by {source}"
    ))
}

/// A claimed page. Its records stay claimed (locked) until `commit` or drop; a dropped page
/// (crash, sink outage) leaves every record unmarked for the next run.
#[async_trait]
pub trait Page: Send {
    fn records(&self) -> &[Record];
    /// True when the source had fewer records than asked for: the lane is empty for now, so the
    /// pipeline stops without asking again. Sources that cannot tell say false and are asked
    /// until they answer `None`.
    fn exhausted(&self) -> bool {
        false
    }
    /// With TARGETS: the targets that already hold record `i`, by name, as the source kept them
    /// (see [`PageResult::progress`]).
    fn held_by(&self, i: usize) -> &[String] {
        let _ = i;
        &[]
    }
    /// Marks the delivered records and records the failures, atomically. Returns rows marked.
    async fn commit(self: Box<Self>, result: PageResult) -> Result<u64>;
    /// The name under which a sink that keeps files stores this page as one unit, if the
    /// source's records come in named units (a CDP archive batch). `None`: the sink chooses.
    fn file_name(&self) -> Option<String> {
        None
    }
    /// With [`Paging::Units`]: whether this page holds the last records of its unit, so the
    /// pipeline may stop after it. A source without units: every page ends one.
    fn ends_unit(&self) -> bool {
        true
    }
    /// INTEGRITY_CHAIN ([`Source::keep_chain`]): the chain's head, held by this page until it
    /// commits, so that pages are linked one after another.
    fn chain_head(&self) -> Option<&Head> {
        None
    }
}

/// How a source's pages relate to the pipeline's CHUNK_SIZE and BATCH_SIZE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paging {
    /// A queue: pages of up to `limit` records until it runs dry (the page says so with
    /// [`Page::exhausted`]); the pipeline stops taking pages at BATCH_SIZE.
    Queue,
    /// Records come in units acknowledged whole (CDP archive batches, S3 files): a page ends
    /// where its unit ends, so a short page is not the end (`None` is). The pipeline applies
    /// BATCH_SIZE at unit boundaries ([`Page::ends_unit`]): a started unit is finished, since a
    /// unit cut short could never be marked, and no new one is started once BATCH_SIZE
    /// records were taken.
    Units,
}

/// `verify` on a source that keeps nothing of what it sent (the API sources).
pub fn nothing_to_verify(source: &str) -> anyhow::Error {
    crate::base::exit::config_error(format!(
        "verify compares the destination with the rows of the SQL sources (SINGLE_COLUMN_JSON, DJANGO_AUDITLOG); {source} keeps nothing of what it sent"
    ))
}

/// `verify`: the records whose time (`created_at`) falls in `[since, until)`; `None`: open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

/// What is left to send, for metrics and `status`: the numbers an alert wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Records still to send, not counting parked ones.
    pub unsent: u64,
    /// Ordering timestamp of the oldest of them; `None` when there are none.
    pub oldest_unsent: Option<DateTime<Utc>>,
}

/// How a run ended, as a source keeps it (SQL sources: table `audit_transfer_runs`; CAST AI
/// and S3: their state and cursor files).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunRecord {
    pub finished_at: DateTime<Utc>,
    pub exit_code: u8,
    pub selected: u64,
    pub delivered: u64,
    pub already_present: u64,
    pub rejected: u64,
    pub parked: u64,
    pub marked: u64,
    pub duration_ms: u64,
    /// With TARGETS: each target's share. Absent in records of earlier versions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<TargetRun>,
}

/// One target's counts in a run (TARGETS).
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TargetRun {
    pub name: String,
    /// Stored now.
    pub delivered: u64,
    /// Already held under the same id.
    pub already_present: u64,
    /// Refused by this target.
    pub rejected: u64,
    /// Records it accepts that it does not hold at the end of the run (refused, or not sent
    /// because it was down): they stay unmarked for the next run.
    pub lacking: u64,
    /// It failed during the run and was sent nothing more.
    pub down: bool,
}

/// The runs `status` reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LastRuns {
    pub last: Option<RunRecord>,
    pub last_success: Option<RunRecord>,
}

impl LastRuns {
    /// Keeps `run` as the last one, and as the last success when it finished (exit 0 or 3).
    pub fn record(&mut self, run: &RunRecord) {
        self.last = Some(run.clone());
        if crate::base::exit::succeeded(run.exit_code) {
            self.last_success = Some(run.clone());
        }
    }

    pub fn is_empty(&self) -> bool {
        self.last.is_none() && self.last_success.is_none()
    }
}

/// Why a record is kept when only some of its targets hold it (TARGETS), for sources that keep
/// such records with their failures.
pub const LACKING: &str = "not yet held by every target that takes it";

/// A record that failed `MAX_ATTEMPTS` times and is no longer tried until `retry-failed`.
#[derive(Debug, Clone)]
pub struct Parked {
    pub key: String,
    pub attempts: i64,
    pub last_error: String,
}

#[async_trait]
pub trait Source: Send {
    /// Human name for logs, e.g. `single_column_json:audit_logs`.
    fn name(&self) -> String;
    /// Verifies the source is usable (tables, columns); a missing table is a config error.
    async fn check(&mut self) -> Result<()>;
    /// `check`, then creates our own state (migrations). Called before a run.
    async fn prepare(&mut self) -> Result<()>;
    /// Claims the next page of at most `limit` records from `lane`, after what this run has
    /// already claimed. `None` when the lane is empty.
    async fn claim<'a>(
        &'a mut self,
        lane: Lane,
        limit: usize,
    ) -> Result<Option<Box<dyn Page + 'a>>>;
    /// Records parked after too many failed attempts.
    async fn parked(&mut self) -> Result<Vec<Parked>>;
    /// Makes parked records eligible again; returns how many.
    async fn retry_failed(&mut self) -> Result<u64>;
    /// Deletes sent records older than `cutoff`; never an unsent one. Returns how many.
    async fn purge(&mut self, cutoff: DateTime<Utc>) -> Result<u64>;
    fn paging(&self) -> Paging {
        Paging::Queue
    }
    /// Whether several connections may claim pages from this source at once (SKIP LOCKED).
    /// Sources with a state or cursor file, and SQLite (one writer), say no.
    fn parallel_safe(&self) -> bool {
        false
    }
    /// What is left to send. `None` where the source cannot know without fetching it (the
    /// APIs); the SQL queue counts it.
    async fn backlog(&mut self) -> Result<Option<Backlog>> {
        Ok(None)
    }
    /// Records the end of a run in the source's own state, for `status`. Sources without a
    /// state table keep nothing.
    async fn record_run(&mut self, run: &RunRecord) -> Result<()> {
        let _ = run;
        Ok(())
    }
    /// The last run recorded by [`Source::record_run`] that ended with exit code 0 or 3 (it
    /// finished), and the last run of any outcome. `None` where nothing is kept.
    async fn last_runs(&mut self) -> Result<Option<LastRuns>> {
        Ok(None)
    }
    /// What made the run partial besides records (files missing from a sequence), one line
    /// each; asked after the run. Non-empty means exit 3.
    fn incomplete(&self) -> Vec<String> {
        Vec::new()
    }
    /// `verify`: the next page of at most `limit` records this source has marked sent, with
    /// their time in `window`, as their documents would be built today; `None` after the last.
    /// Sources that keep nothing of what they sent refuse.
    async fn sent_page(&mut self, window: &Window, limit: usize) -> Result<Option<Vec<Record>>> {
        let _ = (window, limit);
        Err(nothing_to_verify(&self.name()))
    }
    /// After a page failed: ends at once what the dropped page left open. A dropped database
    /// transaction is rolled back only when its connection is next used, and until then it
    /// holds its locks (INTEGRITY_CHAIN's head, which the other workers wait for).
    async fn settle(&mut self) {}
    /// INTEGRITY_CHAIN: from now on each page holds the chain's head ([`Page::chain_head`])
    /// and its commit keeps where the page moved it ([`PageResult::chain`]). Returns the
    /// chain's name. Sources that keep no chain refuse.
    async fn keep_chain(&mut self) -> Result<String> {
        Err(no_chain(&self.name()))
    }
    /// The chain as the source keeps it (after [`Source::keep_chain`]).
    async fn chain_state(&mut self) -> Result<ChainState> {
        Err(no_chain(&self.name()))
    }
    /// Keeps a checkpoint written to the destination, for `verify --chain` to find there.
    async fn save_checkpoint(&mut self, checkpoint: &Checkpoint) -> Result<()> {
        let _ = checkpoint;
        Err(no_chain(&self.name()))
    }
    /// `init-queue`: creates the index the SQL sources' claims read in order, if missing.
    async fn init_queue(&mut self) -> Result<()> {
        Err(crate::base::exit::config_error(format!(
            "init-queue applies to the SQL sources (SINGLE_COLUMN_JSON, DJANGO_AUDITLOG), not to {}",
            self.name()
        )))
    }
    /// `run --dry-run`: reports what a run would take, moving and marking nothing.
    async fn dry_run(&mut self) -> Result<()> {
        Err(crate::base::exit::config_error(format!(
            "--dry-run is not supported for {}: it lists CDP archive batches (AUDIT_LOGGER_TYPE=CDP_ARCHIVE)",
            self.name()
        )))
    }
}

/// What the rest of a run must know about a configured source before it connects: how routing
/// defaults and sinks fit it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SourceTraits {
    /// Default `ROUTING_TOPIC_FIELD` and `ROUTING_KEY_FIELD` (the API sources' event source and
    /// type); `None` where records carry no such field by default.
    pub topic_field: Option<&'static str>,
    pub key_field: Option<&'static str>,
    /// Records are acknowledged in whole units (CDP archive batches), so `ACCEPT_*` would lose
    /// the records a run skips.
    pub whole_units: bool,
    /// Pages are named units a file sink can store as one file each (`Page::file_name`).
    pub named_units: bool,
    /// Documents carry no `@timestamp` (S3_OUTPUT=original): nothing can place them by date.
    pub undated: bool,
    /// Why `status` cannot report on this source (it keeps nothing between runs), if so.
    pub no_status: Option<&'static str>,
    /// SQL sources: `status` must prepare (create) their state tables first.
    pub sql: bool,
    /// It keeps which targets hold a record whose fan-out is incomplete
    /// ([`Page::held_by`], [`PageResult::progress`]), so TARGETS may be used with it.
    pub fanout: bool,
    /// It keeps an integrity chain's head ([`Source::keep_chain`]), so INTEGRITY_CHAIN may be
    /// used with it.
    pub chain: bool,
}
