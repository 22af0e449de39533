//! The one place where records move: claim a page → ship it → mark what the sink acknowledged.
//!
//! Order of a run: first one page (at most CHUNK_SIZE) of records that failed in earlier runs
//! and have attempts left; then fresh records in pages of CHUNK_SIZE until BATCH_SIZE are taken
//! or the queue is empty. Failures are retried once per run, and never hold up fresh records.

use crate::error::Exit;
use crate::sinks::{Outcome, Sink};
use crate::sources::{Document, Lane, PageResult, Paging, Source};
use anyhow::Result;
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
    /// Problems other than records (see `Source::incomplete`).
    pub incomplete: u64,
    pub duration: Duration,
}

impl Summary {
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

pub async fn run(
    source: &mut dyn Source,
    sink: &mut dyn Sink,
    batch_size: usize,
    chunk_size: usize,
    summary: &mut Summary,
) -> Result<()> {
    let started = Instant::now();
    let result = transfer(source, sink, batch_size, chunk_size, summary).await;
    summary.duration = started.elapsed();
    result?;

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

async fn transfer(
    source: &mut dyn Source,
    sink: &mut dyn Sink,
    batch_size: usize,
    chunk_size: usize,
    summary: &mut Summary,
) -> Result<()> {
    let paging = source.paging();
    let fresh_budget = match paging {
        Paging::Queue => batch_size,
        // The source stops at BATCH_SIZE itself, between its units.
        Paging::Units => usize::MAX,
    };
    for (lane, budget) in [(Lane::Retry, chunk_size), (Lane::Fresh, fresh_budget)] {
        let mut taken = 0;
        while taken < budget {
            let limit = chunk_size.min(budget - taken);
            crate::failpoint::hit("before_claim");
            let Some(page) = source.claim(lane, limit).await? else {
                break;
            };
            crate::failpoint::hit("after_claim");
            let records = page.records();
            let n = records.len();
            summary.pages += 1;
            summary.selected += n as u64;
            taken += n;

            let mut result = PageResult::default();
            let mut docs: Vec<&Document> = Vec::with_capacity(n);
            let mut doc_index = Vec::with_capacity(n);
            for (i, r) in records.iter().enumerate() {
                match &r.doc {
                    Ok(d) => {
                        docs.push(d);
                        doc_index.push(i);
                    }
                    Err(reason) => result.failed.push((i, reason.clone())),
                }
            }
            let outcomes = sink.ship_named(page.file_name().as_deref(), &docs).await?;
            crate::failpoint::hit("after_ship");
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
            if n < limit && paging == Paging::Queue {
                break;
            }
        }
    }
    Ok(())
}
