//! The one place where records move: claim a page → ship it → mark what the sink acknowledged.
//!
//! Order of a run: first one page (at most CHUNK_SIZE) of records that failed in earlier runs
//! and have attempts left; then fresh records in pages of CHUNK_SIZE until BATCH_SIZE are taken
//! or the queue is empty. Failures are retried once per run, and never hold up fresh records.
//! Sources whose records come in units (`Paging::Units`) are stopped at the first unit boundary
//! after BATCH_SIZE records instead, since a unit is only acknowledged whole.
//!
//! With SINK_CONCURRENCY > 1 (SQL sources on PostgreSQL and MySQL), several workers run this same
//! loop at once, each with its own connection and sink client, sharing the BATCH_SIZE budget: one
//! page's read and mark overlap another's bulk request. They claim pages with SKIP LOCKED exactly
//! as overlapping runs do, which the concurrency tests prove never ships a row twice.

use crate::base::document::Document;
use crate::base::exit::Exit;
use crate::base::sink::{Outcome, Sink};
use crate::base::source::{Lane, PageResult, Paging, Source};
use crate::routing::Routing;
use anyhow::Result;
use std::sync::atomic::{AtomicUsize, Ordering};
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
    }

    pub fn exit(&self) -> Exit {
        if self.rejected > 0 || self.parked > 0 || self.incomplete > 0 {
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
    }
}

/// How many parked records are listed one by one each run; the rest are counted.
const LIST_PARKED: usize = 100;

/// One worker: a source connection and a sink client.
pub struct Worker {
    pub source: Box<dyn Source>,
    pub sink: Box<dyn Sink>,
}

pub async fn run(
    workers: &mut [Worker],
    batch_size: usize,
    chunk_size: usize,
    routing: &Routing,
    summary: &mut Summary,
) -> Result<()> {
    let started = Instant::now();
    // Fresh records still to take this run, shared by the workers.
    let budget = &AtomicUsize::new(batch_size);
    // Earlier failures first, by one worker alone, so no worker retries a row that another one
    // failed a moment ago in this same run.
    let (first, _) = workers.split_first_mut().expect("at least one worker");
    let retried = transfer(
        first.source.as_mut(),
        first.sink.as_mut(),
        budget,
        chunk_size,
        Lane::Retry,
        routing,
        summary,
    )
    .await;
    if let Err(e) = retried {
        summary.duration = started.elapsed();
        return Err(e);
    }
    let runs = workers.iter_mut().map(|w| async move {
        let mut mine = Summary::default();
        let result = transfer(
            w.source.as_mut(),
            w.sink.as_mut(),
            budget,
            chunk_size,
            Lane::Fresh,
            routing,
            &mut mine,
        )
        .await;
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
    sink: &mut dyn Sink,
    budget: &AtomicUsize,
    chunk_size: usize,
    lane: Lane,
    routing: &Routing,
    summary: &mut Summary,
) -> Result<()> {
    let paging = source.paging();
    {
        let mut retry_left = chunk_size;
        // Units: the last page left its unit unfinished, which must be finished regardless of
        // the budget.
        let mut in_unit = false;
        loop {
            let limit = match (lane, paging) {
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
            summary.pages += 1;
            summary.selected += n as u64;
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
            let outcomes = sink.ship_named(page.file_name().as_deref(), &docs).await?;
            crate::base::failpoint::hit("after_ship");
            for (k, outcome) in outcomes.into_iter().enumerate() {
                let i = doc_index[k];
                match outcome {
                    Outcome::Delivered => {
                        summary.delivered += 1;
                        result.delivered.push(i);
                    }
                    Outcome::AlreadyPresent => {
                        summary.already_present += 1;
                        result.delivered.push(i);
                    }
                    Outcome::Rejected(reason) => result.failed.push((i, reason)),
                }
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

#[cfg(test)]
mod tests;
