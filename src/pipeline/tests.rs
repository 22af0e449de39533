//! The page → ship → mark loop against an in-memory source and a scripted sink: what is marked,
//! what is not, and how BATCH_SIZE is shared, with no database or server.

use super::*;
use crate::base::document::Record;
use crate::base::source::{Page, Parked};
use crate::routing::{Accept, FieldPath};
use anyhow::bail;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

/// What every connection to the in-memory source sees, as a database would: a record handed
/// out by one claim is never handed out again (SKIP LOCKED).
#[derive(Default)]
struct Store {
    /// Fresh records in units, oldest first. With `Paging::Queue` units mean nothing.
    units: VecDeque<VecDeque<Record>>,
    /// Records that failed in an earlier run.
    retry: VecDeque<Record>,
    /// Keys of the records marked, in the order they were marked.
    marked: Vec<String>,
    /// Failures recorded at commit: key and reason.
    failed: Vec<(String, String)>,
    not_accepted: Vec<String>,
    /// Every claim: worker, lane, limit.
    claims: Vec<(usize, Lane, usize)>,
    parked: Vec<Parked>,
    /// TARGETS: which targets hold a record that is not marked yet, as a source keeps it.
    held: HashMap<String, Vec<String>>,
    /// Records claimed but not marked, for the next run (TARGETS tests).
    unmarked: Vec<Record>,
}

impl Store {
    fn left(&self) -> usize {
        self.units.iter().map(VecDeque::len).sum()
    }

    fn fresh_limits(&self) -> Vec<usize> {
        self.claims
            .iter()
            .filter(|c| c.1 == Lane::Fresh)
            .map(|c| c.2)
            .collect()
    }
}

fn record(key: &str) -> Record {
    Record {
        key: key.into(),
        doc: Ok(Document::new(key.into(), br#"{"topic":"a"}"#.to_vec())),
    }
}

/// `n` records r0, r1, … in one queue.
fn queue(n: usize) -> Store {
    Store {
        units: [(0..n).map(|i| record(&format!("r{i}"))).collect()].into(),
        ..Store::default()
    }
}

/// Units of the given sizes, records u<unit>.<i>.
fn units(sizes: &[usize]) -> Store {
    Store {
        units: sizes
            .iter()
            .enumerate()
            .map(|(u, &n)| (0..n).map(|i| record(&format!("u{u}.{i}"))).collect())
            .collect(),
        ..Store::default()
    }
}

fn keys(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}{i}")).collect()
}

struct MemSource {
    worker: usize,
    store: Arc<Mutex<Store>>,
    paging: Paging,
}

struct MemPage {
    store: Arc<Mutex<Store>>,
    records: Vec<Record>,
    held: Vec<Vec<String>>,
    ends_unit: bool,
    exhausted: bool,
}

#[async_trait]
impl Page for MemPage {
    fn records(&self) -> &[Record] {
        &self.records
    }

    fn exhausted(&self) -> bool {
        self.exhausted
    }

    fn ends_unit(&self) -> bool {
        self.ends_unit
    }

    fn held_by(&self, i: usize) -> &[String] {
        &self.held[i]
    }

    async fn commit(self: Box<Self>, result: PageResult) -> Result<u64> {
        tokio::task::yield_now().await;
        let mut s = self.store.lock().unwrap();
        let key = |i: usize| self.records[i].key.clone();
        for (i, targets) in &result.progress {
            s.held.insert(key(*i), targets.clone());
        }
        for &i in &result.delivered {
            s.held.remove(&key(i));
        }
        s.marked.extend(result.delivered.iter().map(|&i| key(i)));
        s.failed
            .extend(result.failed.into_iter().map(|(i, why)| (key(i), why)));
        s.not_accepted
            .extend(result.not_accepted.iter().map(|&i| key(i)));
        let marked = result.delivered.len() as u64;
        for (i, r) in self.records.into_iter().enumerate() {
            if !result.delivered.contains(&i) {
                s.unmarked.push(r);
            }
        }
        Ok(marked)
    }
}

#[async_trait]
impl Source for MemSource {
    fn name(&self) -> String {
        "memory".into()
    }

    async fn check(&mut self) -> Result<()> {
        Ok(())
    }

    async fn prepare(&mut self) -> Result<()> {
        Ok(())
    }

    async fn claim<'a>(
        &'a mut self,
        lane: Lane,
        limit: usize,
    ) -> Result<Option<Box<dyn Page + 'a>>> {
        // Lets the other workers run between claims, as a database round trip would.
        tokio::task::yield_now().await;
        let mut s = self.store.lock().unwrap();
        s.claims.push((self.worker, lane, limit));
        let mut records = Vec::new();
        let mut ends_unit = true;
        match (lane, self.paging) {
            (Lane::Retry, _) => {
                let n = limit.min(s.retry.len());
                records.extend(s.retry.drain(..n));
            }
            (Lane::Fresh, Paging::Queue) => {
                while records.len() < limit {
                    let Some(unit) = s.units.front_mut() else {
                        break;
                    };
                    match unit.pop_front() {
                        Some(r) => records.push(r),
                        None => {
                            s.units.pop_front();
                        }
                    }
                }
            }
            // A page never spans two units.
            (Lane::Fresh, Paging::Units) => {
                if let Some(unit) = s.units.front_mut() {
                    let n = limit.min(unit.len());
                    records.extend(unit.drain(..n));
                    ends_unit = unit.is_empty();
                    if ends_unit {
                        s.units.pop_front();
                    }
                }
            }
        }
        if records.is_empty() {
            return Ok(None);
        }
        let exhausted = self.paging == Paging::Queue && records.len() < limit;
        let held = records
            .iter()
            .map(|r| s.held.get(&r.key).cloned().unwrap_or_default())
            .collect();
        Ok(Some(Box::new(MemPage {
            store: self.store.clone(),
            records,
            held,
            ends_unit,
            exhausted,
        })))
    }

    async fn parked(&mut self) -> Result<Vec<Parked>> {
        Ok(self.store.lock().unwrap().parked.clone())
    }

    async fn retry_failed(&mut self) -> Result<u64> {
        Ok(0)
    }

    async fn purge(&mut self, _cutoff: DateTime<Utc>) -> Result<u64> {
        Ok(0)
    }

    fn paging(&self) -> Paging {
        self.paging
    }
}

/// The sink's answers, shared by every worker's client.
#[derive(Default)]
struct Script {
    /// Answers by document id; any other document is delivered.
    answers: HashMap<String, Outcome>,
    /// The ship call, counted from 1 over all workers, that fails as an unusable sink does.
    fail_call: Option<usize>,
    calls: usize,
    /// Ids received, over all calls.
    shipped: Vec<String>,
}

struct ScriptSink(Arc<Mutex<Script>>);

#[async_trait]
impl Sink for ScriptSink {
    fn name(&self) -> String {
        "script".into()
    }

    async fn check(&mut self) -> Result<()> {
        Ok(())
    }

    async fn ship(&mut self, docs: &[&Document]) -> Result<Vec<Outcome>> {
        tokio::task::yield_now().await;
        let mut s = self.0.lock().unwrap();
        s.calls += 1;
        if s.fail_call == Some(s.calls) {
            bail!("sink unavailable");
        }
        s.shipped.extend(docs.iter().map(|d| d.id.clone()));
        Ok(docs
            .iter()
            .map(|d| s.answers.get(&d.id).cloned().unwrap_or(Outcome::Delivered))
            .collect())
    }
}

struct Setup {
    store: Arc<Mutex<Store>>,
    script: Arc<Mutex<Script>>,
    paging: Paging,
    workers: usize,
    routing: Routing,
    /// TARGETS: names and each target's script; empty: the one implicit target, `script`.
    targets: Vec<(String, Arc<Mutex<Script>>)>,
}

impl Setup {
    fn new(store: Store, paging: Paging) -> Setup {
        Setup {
            store: Arc::new(Mutex::new(store)),
            script: Arc::default(),
            paging,
            workers: 1,
            routing: Routing::default(),
            targets: Vec::new(),
        }
    }

    /// TARGETS with what each accepts (`Routing::targets`).
    fn with_targets(mut self, targets: &[(&str, crate::routing::Selection)]) -> Setup {
        self.targets = targets
            .iter()
            .map(|(n, _)| (n.to_string(), Arc::default()))
            .collect();
        self.routing.targets = targets.iter().map(|(_, s)| s.clone()).collect();
        self
    }

    fn target(&self, t: usize) -> std::sync::MutexGuard<'_, Script> {
        self.targets[t].1.lock().unwrap()
    }

    /// What the last run left unmarked becomes the queue of the next.
    fn next_run(&self) {
        let mut s = self.store();
        let left: VecDeque<Record> = std::mem::take(&mut s.unmarked).into();
        s.units = [left].into();
    }

    fn answer(self, id: &str, outcome: Outcome) -> Setup {
        self.script
            .lock()
            .unwrap()
            .answers
            .insert(id.into(), outcome);
        self
    }

    async fn run(&self, batch_size: usize, chunk_size: usize) -> (Result<()>, Summary) {
        let mut workers: Vec<Worker> = (0..self.workers)
            .map(|worker| Worker {
                source: Box::new(MemSource {
                    worker,
                    store: self.store.clone(),
                    paging: self.paging,
                }),
                sinks: match self.targets.is_empty() {
                    true => vec![Box::new(ScriptSink(self.script.clone())) as Box<dyn Sink>],
                    false => self
                        .targets
                        .iter()
                        .map(|(_, s)| Box::new(ScriptSink(s.clone())) as Box<dyn Sink>)
                        .collect(),
                },
            })
            .collect();
        let names: Vec<String> = self.targets.iter().map(|(n, _)| n.clone()).collect();
        let mut summary = Summary::default();
        let result = run(
            &mut workers,
            &names,
            None,
            batch_size,
            chunk_size,
            &self.routing,
            &mut summary,
        )
        .await;
        (result, summary)
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap()
    }
}

#[tokio::test]
async fn acknowledged_records_are_marked_and_a_short_page_ends_the_run() {
    let t = Setup::new(queue(5), Paging::Queue);
    let (result, summary) = t.run(100, 2).await;
    result.unwrap();
    assert_eq!(t.store().marked, keys("r", 0..5));
    assert!(t.store().failed.is_empty());
    assert_eq!(
        (
            summary.selected,
            summary.delivered,
            summary.marked,
            summary.pages
        ),
        (5, 5, 5, 3)
    );
    // The third page came back short: the queue is empty, so no fourth claim.
    assert_eq!(t.store().fresh_limits(), [2, 2, 2]);
    assert_eq!(summary.exit(), Exit::Ok);
}

#[tokio::test]
async fn already_present_records_are_marked() {
    let t = Setup::new(queue(3), Paging::Queue).answer("r1", Outcome::AlreadyPresent);
    let (result, summary) = t.run(100, 10).await;
    result.unwrap();
    assert_eq!(t.store().marked, keys("r", 0..3));
    assert_eq!((summary.delivered, summary.already_present), (2, 1));
    assert_eq!(summary.exit(), Exit::Ok);
}

#[tokio::test]
async fn rejected_and_undeliverable_records_are_not_marked_and_the_run_is_partial() {
    let mut store = queue(4);
    store.units[0][3].doc = Err("no timestamp".into());
    let t = Setup::new(store, Paging::Queue).answer("r1", Outcome::Rejected("mapping".into()));
    let (result, summary) = t.run(100, 10).await;
    result.unwrap();
    assert_eq!(t.store().marked, ["r0", "r2"]);
    assert_eq!(
        t.store().failed,
        [
            ("r3".to_string(), "no timestamp".to_string()),
            ("r1".to_string(), "mapping".to_string())
        ]
    );
    // A record that is no document never reaches the sink.
    assert_eq!(t.script.lock().unwrap().shipped, ["r0", "r1", "r2"]);
    assert_eq!((summary.rejected, summary.marked), (2, 2));
    assert_eq!(summary.exit(), Exit::Partial);
    assert_eq!(summary.exit().code(), 3);
}

#[tokio::test]
async fn a_sink_error_mid_run_leaves_that_page_unmarked_and_earlier_pages_marked() {
    let t = Setup::new(queue(6), Paging::Queue);
    t.script.lock().unwrap().fail_call = Some(2);
    let (result, summary) = t.run(100, 2).await;
    assert!(result.unwrap_err().to_string().contains("sink unavailable"));
    assert_eq!(t.store().marked, ["r0", "r1"]);
    assert!(
        t.store().failed.is_empty(),
        "an outage is no record's fault"
    );
    // The run stopped: the third page was never claimed.
    assert_eq!(t.store().fresh_limits(), [2, 2]);
    assert_eq!(t.store().left(), 2);
    assert_eq!(summary.marked, 2);
}

#[tokio::test]
async fn queue_paging_takes_exactly_batch_size_records() {
    let t = Setup::new(queue(20), Paging::Queue);
    let (result, summary) = t.run(7, 3).await;
    result.unwrap();
    // The last page asks only for what is left of the budget.
    assert_eq!(t.store().fresh_limits(), [3, 3, 1]);
    assert_eq!(t.store().marked, keys("r", 0..7));
    assert_eq!(summary.selected, 7);
    assert_eq!(t.store().left(), 13);
}

#[tokio::test]
async fn unit_paging_finishes_the_unit_that_passes_batch_size_and_starts_no_other() {
    let t = Setup::new(units(&[4, 4, 4]), Paging::Units);
    let (result, summary) = t.run(5, 3).await;
    result.unwrap();
    // Unit 1 starts with 4 of 5 taken and is finished past the budget; unit 2 waits.
    let marked = t.store().marked.clone();
    assert_eq!(marked.len(), 8);
    assert!(marked
        .iter()
        .all(|k| k.starts_with("u0.") || k.starts_with("u1.")));
    assert_eq!((summary.selected, summary.pages), (8, 4));
    // Pages are as large as CHUNK_SIZE allows: a unit is never cut to fit the budget.
    assert_eq!(t.store().fresh_limits(), [3, 3, 3, 3]);
    assert_eq!(t.store().units.len(), 1);
    assert_eq!(t.store().left(), 4);
}

#[tokio::test]
async fn unit_paging_stops_at_a_boundary_that_meets_batch_size_exactly() {
    let t = Setup::new(units(&[2, 3, 2]), Paging::Units);
    let (result, summary) = t.run(5, 2).await;
    result.unwrap();
    assert_eq!(summary.selected, 5);
    assert_eq!(t.store().units.len(), 1, "unit 2 is left for the next run");
    // And the next run takes it.
    let (result, summary) = t.run(5, 2).await;
    result.unwrap();
    assert_eq!(summary.selected, 2);
    assert_eq!(t.store().marked.len(), 7);
}

#[tokio::test]
async fn several_workers_share_the_budget_and_mark_each_record_once() {
    let mut t = Setup::new(queue(100), Paging::Queue);
    t.workers = 3;
    let (result, summary) = t.run(25, 4).await;
    result.unwrap();
    let s = t.store();
    let workers: std::collections::BTreeSet<usize> = s.claims.iter().map(|c| c.0).collect();
    assert_eq!(workers.len(), 3, "every worker took pages: {:?}", s.claims);
    let mut marked = s.marked.clone();
    marked.sort();
    marked.dedup();
    assert_eq!(marked.len(), 25, "marked: {:?}", s.marked);
    assert_eq!(s.marked.len(), 25);
    assert_eq!((summary.selected, summary.marked), (25, 25));
    assert_eq!(s.left(), 75);
}

#[tokio::test]
async fn several_workers_on_a_short_queue_take_it_all_once() {
    let mut t = Setup::new(queue(10), Paging::Queue);
    t.workers = 3;
    let (result, summary) = t.run(25, 4).await;
    result.unwrap();
    let mut marked = t.store().marked.clone();
    marked.sort();
    assert_eq!(marked, {
        let mut all = keys("r", 0..10);
        all.sort();
        all
    });
    assert_eq!(summary.selected, 10);
}

#[tokio::test]
async fn earlier_failures_come_first_in_one_page_outside_the_budget() {
    let mut store = queue(10);
    store.retry = ["f0", "f1", "f2"].map(record).into();
    let t = Setup::new(store, Paging::Queue);
    let (result, summary) = t.run(4, 2).await;
    result.unwrap();
    let claims: Vec<(Lane, usize)> = t.store().claims.iter().map(|c| (c.1, c.2)).collect();
    assert_eq!(
        claims,
        [(Lane::Retry, 2), (Lane::Fresh, 2), (Lane::Fresh, 2)]
    );
    assert_eq!(t.store().marked, ["f0", "f1", "r0", "r1", "r2", "r3"]);
    assert_eq!(summary.selected, 6);
}

#[tokio::test]
async fn parked_records_make_the_run_partial() {
    let mut store = queue(1);
    store.parked.push(Parked {
        key: "r9".into(),
        attempts: 5,
        last_error: "mapping".into(),
    });
    let t = Setup::new(store, Paging::Queue);
    let (result, summary) = t.run(10, 10).await;
    result.unwrap();
    assert_eq!((summary.marked, summary.parked), (1, 1));
    assert_eq!(summary.exit(), Exit::Partial);
}

#[tokio::test]
async fn records_of_other_topics_are_neither_shipped_nor_marked() {
    let mut store = queue(3);
    store.units[0][1].doc = Ok(Document::new("r1".into(), br#"{"topic":"b"}"#.to_vec()));
    let mut t = Setup::new(store, Paging::Queue);
    t.routing = Routing {
        topic_field: Some(FieldPath::parse("ROUTING_TOPIC_FIELD", "topic").unwrap()),
        accept_topics: Some(Accept::parse("ACCEPT_TOPICS", "a").unwrap()),
        ..Routing::default()
    };
    let (result, summary) = t.run(10, 10).await;
    result.unwrap();
    assert_eq!(t.store().marked, ["r0", "r2"]);
    assert_eq!(t.store().not_accepted, ["r1"]);
    assert_eq!(t.script.lock().unwrap().shipped, ["r0", "r2"]);
    assert_eq!((summary.not_accepted, summary.rejected), (1, 0));
    assert_eq!(summary.exit(), Exit::Ok);
}

fn all() -> crate::routing::Selection {
    crate::routing::Selection::default()
}

#[tokio::test]
async fn every_target_gets_each_record_once_and_records_are_marked_when_all_hold_them() {
    let t =
        Setup::new(queue(5), Paging::Queue).with_targets(&[("siem", all()), ("archive", all())]);
    let (result, summary) = t.run(100, 2).await;
    result.unwrap();
    assert_eq!(t.store().marked, keys("r", 0..5));
    for i in 0..2 {
        assert_eq!(t.target(i).shipped, keys("r", 0..5));
    }
    assert!(t.store().held.is_empty());
    assert_eq!(summary.targets[1].delivered, 5);
    assert_eq!(summary.exit(), Exit::Ok);
}

#[tokio::test]
async fn a_target_down_gets_exactly_the_missing_records_next_run_and_the_others_nothing_again() {
    let t =
        Setup::new(queue(5), Paging::Queue).with_targets(&[("siem", all()), ("archive", all())]);
    // The archive fails on its first page and is sent nothing more this run.
    t.target(1).fail_call = Some(1);
    let (result, summary) = t.run(100, 2).await;
    result.unwrap();
    assert!(t.store().marked.is_empty());
    assert_eq!(t.target(0).shipped, keys("r", 0..5));
    assert!(t.target(1).shipped.is_empty());
    assert_eq!(t.target(1).calls, 1, "no page after the failure");
    assert_eq!(t.store().held.len(), 5);
    assert_eq!(t.store().held["r3"], ["siem"]);
    let archive = &summary.targets[1];
    assert_eq!((archive.lacking, archive.down), (5, true));
    assert_eq!(summary.exit(), Exit::Partial);

    t.next_run();
    let (result, summary) = t.run(100, 2).await;
    result.unwrap();
    assert_eq!(t.target(0).shipped, keys("r", 0..5), "nothing again");
    assert_eq!(t.target(1).shipped, keys("r", 0..5));
    assert_eq!(t.store().marked, keys("r", 0..5));
    assert!(t.store().held.is_empty());
    assert_eq!(summary.exit(), Exit::Ok);
}

#[tokio::test]
async fn every_target_down_fails_the_run_like_one_sink_down() {
    let t =
        Setup::new(queue(3), Paging::Queue).with_targets(&[("siem", all()), ("archive", all())]);
    t.target(0).fail_call = Some(1);
    t.target(1).fail_call = Some(1);
    let (result, _) = t.run(100, 10).await;
    assert!(result.is_err());
    assert!(t.store().marked.is_empty() && t.store().held.is_empty());
}

#[tokio::test]
async fn accept_lists_route_each_topic_to_its_targets() {
    let mut store = queue(4);
    store.units[0][1].doc = Ok(Document::new(
        "r1".into(),
        br#"{"topic":"authfail"}"#.to_vec(),
    ));
    store.units[0][3].doc = Ok(Document::new("r3".into(), br#"{"topic":"other"}"#.to_vec()));
    let only = |v: &str| crate::routing::Selection {
        topics: Some(Accept::parse("T", v).unwrap()),
        keys: None,
    };
    let mut t = Setup::new(store, Paging::Queue)
        .with_targets(&[("siem", only("a")), ("alerts", only("authfail,a"))]);
    t.routing.topic_field = Some(FieldPath::parse("ROUTING_TOPIC_FIELD", "topic").unwrap());
    let (result, summary) = t.run(100, 10).await;
    result.unwrap();
    assert_eq!(t.target(0).shipped, ["r0", "r2"]);
    assert_eq!(t.target(1).shipped, ["r0", "r1", "r2"]);
    assert_eq!(t.store().marked, ["r0", "r1", "r2"]);
    assert_eq!(
        t.store().not_accepted,
        ["r3"],
        "no target takes it: left alone"
    );
    assert_eq!(summary.exit(), Exit::Ok);
}

#[tokio::test]
async fn a_record_one_target_refuses_is_a_failure_kept_for_that_target_only() {
    let t =
        Setup::new(queue(2), Paging::Queue).with_targets(&[("siem", all()), ("archive", all())]);
    t.target(1)
        .answers
        .insert("r1".into(), Outcome::Rejected("too large".into()));
    let (result, summary) = t.run(100, 10).await;
    result.unwrap();
    assert_eq!(t.store().marked, ["r0"]);
    assert_eq!(
        t.store().failed,
        [("r1".to_string(), "target archive: too large".to_string())]
    );
    assert_eq!(t.store().held["r1"], ["siem"]);
    assert_eq!(
        (summary.targets[1].rejected, summary.targets[1].lacking),
        (1, 1)
    );
    assert_eq!(summary.exit(), Exit::Partial);
}

#[tokio::test]
async fn a_record_only_a_down_target_takes_is_kept_for_it() {
    let mut store = queue(2);
    store.units[0][1].doc = Ok(Document::new("r1".into(), br#"{"topic":"b"}"#.to_vec()));
    let only = |v: &str| crate::routing::Selection {
        topics: Some(Accept::parse("T", v).unwrap()),
        keys: None,
    };
    let mut t = Setup::new(store, Paging::Queue)
        .with_targets(&[("siem", only("b")), ("archive", only("a"))]);
    t.routing.topic_field = Some(FieldPath::parse("ROUTING_TOPIC_FIELD", "topic").unwrap());
    t.target(0).fail_call = Some(1);
    let (result, summary) = t.run(100, 10).await;
    result.unwrap();
    assert_eq!(t.store().marked, ["r0"]);
    // No target holds r1, but a source whose position moves on must still keep it.
    assert_eq!(t.store().held["r1"], Vec::<String>::new());
    assert_eq!(summary.targets[0].lacking, 1);
    assert_eq!(summary.exit(), Exit::Partial);
}
