//! The one place where records move: claim a page → ship it → mark what the sink acknowledged.
//!
//! Order of a run: first one page (at most CHUNK_SIZE) of records that failed in earlier runs
//! and have attempts left; then fresh records in pages of CHUNK_SIZE until BATCH_SIZE are taken
//! or the queue is empty. Failures are retried once per run, and never hold up fresh records.
//! Sources whose records come in units (`Paging::Units`) are stopped at the first unit boundary
//! after BATCH_SIZE records instead, since a unit is only acknowledged whole.
//!
//! With TARGETS each page goes to every target that accepts its records, all at once, and a
//! record is marked only when every one of them holds it. A target that fails (down after its
//! retries) gets nothing more this run while the others go on; the records it lacks stay
//! unmarked, and the source keeps which targets already hold them, so the next run sends them
//! to the missing targets only.
//!
//! With SINK_CONCURRENCY > 1 (SQL sources on PostgreSQL and MySQL), several workers run this same
//! loop at once, each with its own connection and sink client, sharing the BATCH_SIZE budget: one
//! page's read and mark overlap another's bulk request. They claim pages with SKIP LOCKED exactly
//! as overlapping runs do, which the concurrency tests prove never ships a row twice.

use crate::base::document::Document;
use crate::base::exit::Exit;
use crate::base::sink::{Outcome, Sink};
pub use crate::base::source::TargetRun as TargetSummary;
use crate::base::source::{Lane, PageResult, Paging, Source};
use crate::routing::Routing;
use anyhow::Result;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Counters of one run; logged as the run's last line.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub pages: u64,
    pub selected: u64,
    pub delivered: u64,
    pub already_present: u64,
    pub rejected: u64,
    pub marked: u64,
    pub parked: u64,
    /// Records this run does not accept (ACCEPT_TOPICS, ACCEPT_ROUTING_KEYS), left for another.
    pub not_accepted: u64,
    /// Problems other than records (see `Source::incomplete`).
    pub incomplete: u64,
    /// With TARGETS: each target's share, in the order of TARGETS. Empty without.
    pub targets: Vec<TargetSummary>,
    pub duration: Duration,
}

impl Summary {
    fn add(&mut self, o: &Summary) {
        self.pages += o.pages;
        self.selected += o.selected;
        self.delivered += o.delivered;
        self.already_present += o.already_present;
        self.rejected += o.rejected;
        self.marked += o.marked;
        self.not_accepted += o.not_accepted;
        if self.targets.len() < o.targets.len() {
            self.targets
                .resize(o.targets.len(), TargetSummary::default());
        }
        for (mine, theirs) in self.targets.iter_mut().zip(&o.targets) {
            mine.name.clone_from(&theirs.name);
            mine.delivered += theirs.delivered;
            mine.already_present += theirs.already_present;
            mine.rejected += theirs.rejected;
            mine.lacking += theirs.lacking;
            mine.down |= theirs.down;
        }
    }

    pub fn exit(&self) -> Exit {
        let lacking = self.targets.iter().any(|t| t.lacking > 0);
        if self.rejected > 0 || self.parked > 0 || self.incomplete > 0 || lacking {
            Exit::Partial
        } else {
            Exit::Ok
        }
    }

    pub fn log(&self, failed: bool) {
        let secs = self.duration.as_secs_f64();
        let rate = if secs > 0.0 {
            self.selected as f64 / secs
        } else {
            0.0
        };
        tracing::info!(
            selected = self.selected,
            delivered = self.delivered,
            already_present = self.already_present,
            rejected = self.rejected,
            parked = self.parked,
            not_accepted = self.not_accepted,
            incomplete = self.incomplete,
            marked = self.marked,
            pages = self.pages,
            duration_s = (secs * 1000.0).round() / 1000.0,
            rows_per_s = rate.round(),
            failed,
            "run finished"
        );
        for t in &self.targets {
            tracing::info!(
                target_name = %t.name,
                delivered = t.delivered,
                already_present = t.already_present,
                rejected = t.rejected,
                lacking = t.lacking,
                down = t.down,
                "target {} finished",
                t.name
            );
        }
    }
}

/// How many parked records are listed one by one each run; the rest are counted.
const LIST_PARKED: usize = 100;

/// One worker: a source connection and a sink client per target.
pub struct Worker {
    pub source: Box<dyn Source>,
    /// In the order of TARGETS; one without.
    pub sinks: Vec<Box<dyn Sink>>,
}

/// Where a run's pages go: TARGETS' names (empty: the one implicit target) with what each
/// accepts (`Routing::targets`), and which of them failed in this run.
struct Targets<'a> {
    names: &'a [String],
    /// INTEGRITY_CHAIN: the chain's name (the source's, see `Source::keep_chain`).
    chain: Option<&'a str>,
    routing: &'a Routing,
    down: Vec<AtomicBool>,
    /// Records counted as lacking a target in this run. Another worker may claim such a record
    /// again (it stays unmarked); it then ships nothing twice (the source knows who holds it)
    /// and must not be counted twice either. Only records some target lacks are kept here.
    lacking: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Targets<'_> {
    fn multi(&self) -> bool {
        !self.names.is_empty()
    }

    /// The targets that take this document, as bits.
    fn wanted(&self, d: &Document) -> u32 {
        match self.multi() {
            false => 1,
            true => self
                .routing
                .targets
                .iter()
                .enumerate()
                .filter(|(_, s)| s.accepts(d.route()))
                .fold(0, |m, (t, _)| m | 1 << t),
        }
    }

    /// The targets among `names` (as a source kept them), as bits; unknown names (a target
    /// since removed from TARGETS) count for nothing.
    fn mask(&self, names: &[String]) -> u32 {
        names.iter().fold(0, |m, n| {
            match self.names.iter().position(|t| t.eq_ignore_ascii_case(n)) {
                Some(t) => m | 1 << t,
                None => m,
            }
        })
    }

    fn names_of(&self, mask: u32) -> Vec<String> {
        (0..self.names.len())
            .filter(|t| mask & 1 << t != 0)
            .map(|t| self.names[t].clone())
            .collect()
    }

    fn name(&self, t: usize) -> &str {
        self.names.get(t).map(String::as_str).unwrap_or("")
    }
}

pub async fn run(
    workers: &mut [Worker],
    names: &[String],
    chain: Option<&str>,
    batch_size: usize,
    chunk_size: usize,
    routing: &Routing,
    summary: &mut Summary,
) -> Result<()> {
    let started = Instant::now();
    let targets = &Targets {
        names,
        chain,
        routing,
        down: names.iter().map(|_| AtomicBool::new(false)).collect(),
        lacking: Default::default(),
    };
    let blank = || {
        names
            .iter()
            .map(|n| TargetSummary {
                name: n.clone(),
                ..TargetSummary::default()
            })
            .collect::<Vec<_>>()
    };
    summary.targets = blank();
    // Fresh records still to take this run, shared by the workers.
    let budget = &AtomicUsize::new(batch_size);
    // Earlier failures first, by one worker alone, so no worker retries a row that another one
    // failed a moment ago in this same run.
    let (first, _) = workers.split_first_mut().expect("at least one worker");
    let retried = transfer(
        first.source.as_mut(),
        &mut first.sinks,
        budget,
        chunk_size,
        Lane::Retry,
        targets,
        summary,
    )
    .await;
    if let Err(e) = retried {
        first.source.settle().await;
        summary.duration = started.elapsed();
        for (t, down) in summary.targets.iter_mut().zip(&targets.down) {
            t.down = down.load(Ordering::Relaxed);
        }
        return Err(e);
    }
    let runs = workers.iter_mut().map(|w| async move {
        let mut mine = Summary {
            targets: blank(),
            ..Summary::default()
        };
        let result = transfer(
            w.source.as_mut(),
            &mut w.sinks,
            budget,
            chunk_size,
            Lane::Fresh,
            targets,
            &mut mine,
        )
        .await;
        if result.is_err() {
            // Before the other workers finish: they may wait for what this one's page holds.
            w.source.settle().await;
        }
        (result, mine)
    });
    let mut first_error = None;
    for (result, mine) in futures_util::future::join_all(runs).await {
        summary.add(&mine);
        if let Err(e) = result {
            first_error.get_or_insert(e);
        }
    }
    summary.duration = started.elapsed();
    for (t, down) in summary.targets.iter_mut().zip(&targets.down) {
        t.down = down.load(Ordering::Relaxed);
    }
    if let Some(e) = first_error {
        return Err(e);
    }

    let source = workers[0].source.as_mut();
    let parked = source.parked().await?;
    summary.parked = parked.len() as u64;
    for p in parked.iter().take(LIST_PARKED) {
        tracing::warn!(record = %p.key, attempts = p.attempts, "parked, not sent: {}", p.last_error);
    }
    if parked.len() > LIST_PARKED {
        tracing::warn!(
            "{} more parked records not listed",
            parked.len() - LIST_PARKED
        );
    }
    if !parked.is_empty() {
        tracing::warn!(
            parked = parked.len(),
            "records are parked after repeated failures; fix them, then run `audit-transfer retry-failed`"
        );
    }
    let incomplete = source.incomplete();
    summary.incomplete = incomplete.len() as u64;
    for problem in &incomplete {
        tracing::warn!("incomplete: {problem}");
    }
    Ok(())
}

/// Takes up to `chunk` from the shared budget; what a short page leaves is given back.
fn reserve(budget: &AtomicUsize, chunk: usize) -> usize {
    let mut current = budget.load(Ordering::Relaxed);
    loop {
        let take = chunk.min(current);
        if take == 0 {
            return 0;
        }
        match budget.compare_exchange(
            current,
            current - take,
            Ordering::Relaxed,
            Ordering::Relaxed,
        ) {
            Ok(_) => return take,
            Err(now) => current = now,
        }
    }
}

async fn transfer(
    source: &mut dyn Source,
    sinks: &mut [Box<dyn Sink>],
    budget: &AtomicUsize,
    chunk_size: usize,
    lane: Lane,
    targets: &Targets<'_>,
    summary: &mut Summary,
) -> Result<()> {
    let routing = targets.routing;
    let paging = source.paging();
    {
        let mut retry_left = chunk_size;
        // With TARGETS, records kept only because a target lacked them wait in the retry lane
        // of the API sources: it then goes on past one page, up to BATCH_SIZE records.
        let mut retry_budget = budget.load(Ordering::Relaxed);
        // Units: the last page left its unit unfinished, which must be finished regardless of
        // the budget.
        let mut in_unit = false;
        loop {
            let limit = match (lane, paging) {
                // With TARGETS the retry lane also holds records that only lack a target (the
                // API sources keep them with their failures): all of them get their turn.
                (Lane::Retry, _) if targets.multi() => {
                    let take = chunk_size.min(retry_budget);
                    retry_budget -= take;
                    take
                }
                (Lane::Retry, _) => std::mem::take(&mut retry_left),
                (Lane::Fresh, Paging::Queue) => reserve(budget, chunk_size),
                (Lane::Fresh, Paging::Units) => {
                    if in_unit || budget.load(Ordering::Relaxed) > 0 {
                        chunk_size
                    } else {
                        tracing::info!(
                            "BATCH_SIZE reached at the end of a unit; what is left waits for the next run"
                        );
                        0
                    }
                }
            };
            if limit == 0 {
                break;
            }
            crate::base::failpoint::hit("before_claim");
            let Some(page) = source.claim(lane, limit).await? else {
                if lane == Lane::Fresh && paging == Paging::Queue {
                    budget.fetch_add(limit, Ordering::Relaxed);
                }
                break;
            };
            crate::base::failpoint::hit("after_claim");
            let records = page.records();
            let n = records.len();
            let exhausted = page.exhausted();
            // With TARGETS, a record this run already left lacking a target (unmarked, so
            // another worker may claim it again) is passed over: it was sent to every target
            // that could take it, and counts once.
            let again: Vec<bool> = match targets.multi() {
                true => {
                    let seen = targets.lacking.lock().unwrap_or_else(|e| e.into_inner());
                    records.iter().map(|r| seen.contains(&r.key)).collect()
                }
                false => vec![false; n],
            };
            summary.pages += 1;
            summary.selected += again.iter().filter(|a| !**a).count() as u64;
            if lane == Lane::Fresh {
                match paging {
                    Paging::Queue if n < limit => {
                        budget.fetch_add(limit - n, Ordering::Relaxed);
                    }
                    Paging::Queue => {}
                    Paging::Units => {
                        // Pages of a unit are not reserved ahead: the unit decides their size.
                        let _ = budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                            Some(b.saturating_sub(n))
                        });
                        in_unit = !page.ends_unit();
                    }
                }
            }

            let mut result = PageResult::default();
            let mut docs: Vec<&Document> = Vec::with_capacity(n);
            let mut doc_index = Vec::with_capacity(n);
            for (i, r) in records.iter().enumerate() {
                if again[i] {
                    continue;
                }
                match &r.doc {
                    Ok(d) => {
                        // SQL sources route in SQL and never hand out what they do not accept;
                        // the others are routed here from the document itself. A record not
                        // accepted is neither shipped nor marked: it belongs to another run.
                        // A route the source set (SQL) was filtered there already.
                        if routing.active() && d.route.get().is_none() {
                            let route = d.route.get_or_init(|| routing.route_of_body(&d.body));
                            if !routing.accepts(route) {
                                summary.not_accepted += 1;
                                result.not_accepted.push(i);
                                continue;
                            }
                        }
                        docs.push(d);
                        doc_index.push(i);
                    }
                    Err(reason) => result.failed.push((i, reason.clone())),
                }
            }
            // INTEGRITY_CHAIN: the documents get the links after the head this page holds.
            let linked = match (targets.chain, page.chain_head()) {
                (Some(chain), Some(head)) => Some(chain::link(chain, head, &docs)),
                _ => None,
            };
            if let Some(linked) = &linked {
                for (k, why) in &linked.refused {
                    result.failed.push((doc_index[*k], why.clone()));
                }
                doc_index = linked.at.iter().map(|&k| doc_index[k]).collect();
                docs = linked.docs.iter().collect();
            }
            let file_name = page.file_name();
            // Which targets take each document, and which of those hold it from earlier runs.
            let wanted: Vec<u32> = docs.iter().map(|d| targets.wanted(d)).collect();
            let earlier: Vec<u32> = match targets.multi() {
                true => doc_index
                    .iter()
                    .map(|&i| targets.mask(page.held_by(i)))
                    .collect(),
                false => vec![0; docs.len()],
            };
            // Every target at once, each with the documents it lacks; a target down since an
            // earlier page is skipped (its retries were spent there).
            let shipments = sinks.iter_mut().enumerate().filter_map(|(t, sink)| {
                let bit = 1u32 << t;
                let mine: Vec<usize> = (0..docs.len())
                    .filter(|&k| wanted[k] & bit != 0 && earlier[k] & bit == 0)
                    .collect();
                let down = targets
                    .down
                    .get(t)
                    .is_some_and(|d| d.load(Ordering::Relaxed));
                if mine.is_empty() || down {
                    return None;
                }
                let list: Vec<&Document> = mine.iter().map(|&k| docs[k]).collect();
                let name = file_name.as_deref();
                Some(async move {
                    let outcomes = sink.ship_named(name, &list).await;
                    if outcomes.is_ok() {
                        crate::base::failpoint::hit("after_target_ack");
                    }
                    (t, mine, outcomes)
                })
            });
            let shipped = futures_util::future::join_all(shipments).await;
            let mut acked = vec![0u32; docs.len()];
            let mut fresh = vec![false; docs.len()];
            let mut refused: Vec<Vec<String>> = vec![Vec::new(); docs.len()];
            let mut failure = None;
            for (t, mine, outcomes) in shipped {
                let outcomes = match outcomes {
                    Ok(o) => o,
                    // One destination: the run stops and the page stays unmarked, as always.
                    Err(e) if !targets.multi() => return Err(e),
                    Err(e) => {
                        tracing::error!(
                            target_name = targets.name(t),
                            "target {} failed; it is sent nothing more this run: {}",
                            targets.name(t),
                            crate::base::exit::one_line(&e)
                        );
                        targets.down[t].store(true, Ordering::Relaxed);
                        failure.get_or_insert(e);
                        continue;
                    }
                };
                let mut counts = summary.targets.get_mut(t);
                for (k, outcome) in mine.into_iter().zip(outcomes) {
                    match outcome {
                        Outcome::Delivered => {
                            acked[k] |= 1 << t;
                            fresh[k] = true;
                            if let Some(c) = counts.as_deref_mut() {
                                c.delivered += 1;
                            }
                        }
                        Outcome::AlreadyPresent => {
                            acked[k] |= 1 << t;
                            if let Some(c) = counts.as_deref_mut() {
                                c.already_present += 1;
                            }
                        }
                        Outcome::Rejected(reason) => {
                            if let Some(c) = counts.as_deref_mut() {
                                c.rejected += 1;
                            }
                            refused[k].push(match targets.multi() {
                                true => format!("target {}: {reason}", targets.name(t)),
                                false => reason,
                            });
                        }
                    }
                }
            }
            if let Some(e) = failure {
                if targets.down.iter().all(|d| d.load(Ordering::Relaxed)) {
                    // Every target is down: no one acknowledged anything of this page.
                    return Err(e);
                }
            }
            crate::base::failpoint::hit("after_ship");
            if let Some(linked) = &linked {
                result.chain = chain::advance(
                    &linked.links,
                    |k| acked[k] != 0,
                    |k| records[doc_index[k]].key.clone(),
                );
            }
            for (k, &i) in doc_index.iter().enumerate() {
                if wanted[k] == 0 {
                    // No target takes it (the SQL sources never claim such a record).
                    summary.not_accepted += 1;
                    result.not_accepted.push(i);
                    continue;
                }
                let holds = earlier[k] | acked[k];
                let missing = wanted[k] & !holds;
                if missing == 0 {
                    match fresh[k] {
                        true => summary.delivered += 1,
                        false => summary.already_present += 1,
                    }
                    result.delivered.push(i);
                    continue;
                }
                if !refused[k].is_empty() {
                    result
                        .failed
                        .push((i, std::mem::take(&mut refused[k]).join("; ")));
                }
                if !targets.multi() {
                    continue;
                }
                let first_time = targets
                    .lacking
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(records[i].key.clone());
                for (t, c) in summary.targets.iter_mut().enumerate() {
                    if missing & 1 << t != 0 && first_time {
                        c.lacking += 1;
                    }
                }
                // Every record some target lacks, even one no target holds yet (all that take
                // it are down): a source whose position moves past it must keep it.
                result.progress.push((i, targets.names_of(holds)));
            }
            summary.rejected += result.failed.len() as u64;
            for (i, reason) in &result.failed {
                tracing::warn!(record = %records[*i].key, "not delivered: {reason}");
            }
            tracing::debug!(page = summary.pages, records = n, "page shipped");
            summary.marked += page.commit(result).await?;
            crate::progress::advance(n as u64);
            if exhausted {
                break;
            }
        }
    }
    Ok(())
}

mod chain;
#[cfg(test)]
mod tests;
