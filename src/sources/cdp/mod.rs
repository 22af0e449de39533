//! Cloudera CDP pull-based audit archiving (`AUDIT_LOGGER_TYPE=CDP_ARCHIVE`).
//!
//! A run: (1) unless CDP_BATCH_EVENTS=false, start a batching task for the window
//! CDP_FROM_TIMESTAMP..CDP_TO_TIMESTAMP and wait for it (a 409 means another task is running:
//! wait for it, then start ours); (2) list every outstanding batch; (3) per batch, oldest
//! first: list its events, hand them to the pipeline as pages, and mark the batch successful
//! in CDP when the sink acknowledged every one of its events. A batch with any failed event is
//! left outstanding, so the next run lists it again; the event `id` is the document id, so
//! the events it re-ships are "already present", not duplicates.
//!
//! Pages never span batches. A batch is split into CHUNK_SIZE pages, except with
//! OUTPUT_LAYOUT=cdp-archive, where a batch is one page because it becomes one file. A batch is
//! a unit to the pipeline, which applies BATCH_SIZE between batches: a started batch is finished
//! (a batch cut short could never be marked), so a run takes at most BATCH_SIZE events plus the
//! rest of its last batch.

pub mod client;
mod credentials;
pub mod settings;
pub mod signing;

use self::client::{ArchiveBatch, Client};
use self::settings::Settings;
use super::{Document, Lane, Page, PageResult, Paging, Parked, Record, Source};
use crate::config::Config;
use anyhow::{bail, Context, Result};
use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

pub struct CdpArchive {
    client: Client,
    cfg: Settings,
    /// One page per batch (OUTPUT_LAYOUT=cdp-archive) instead of CHUNK_SIZE pages.
    whole_batches: bool,
    /// Filled at the first claim of a run.
    queue: Option<VecDeque<ArchiveBatch>>,
    current: Option<Current>,
}

/// The batch being shipped.
struct Current {
    batch: ArchiveBatch,
    /// Records not yet handed out in a page.
    rest: VecDeque<Record>,
    total: usize,
    /// False once any event of the batch was not acknowledged.
    intact: bool,
}

impl CdpArchive {
    pub fn new(cdp: &Settings, cfg: &Config) -> Result<Self> {
        Ok(CdpArchive {
            client: Client::new(cdp)?,
            cfg: cdp.clone(),
            whole_batches: cfg.units_as_files,
            queue: None,
            current: None,
        })
    }

    /// Starts a batching task for the window and waits until it completed, within
    /// CDP_TASK_TIMEOUT. A running task (409) is waited for, then ours is started.
    async fn run_batching_task(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Result<()> {
        let window = format!("{}..{}", stamp(from), stamp(to));
        let timeout = self.cfg.task_timeout;
        let deadline = Instant::now() + timeout;
        let mut waits = self.client.poll_waits();
        let mut sleep_or_give_up = |what: &str| -> Result<Duration> {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "{what} after CDP_TASK_TIMEOUT={}s; the next run tries again",
                    timeout.as_secs()
                );
            }
            Ok(waits.next().unwrap_or(Duration::from_secs(15)).min(left))
        };
        let task_id = loop {
            match self.client.batch_events(from, to).await {
                Ok(id) => break id,
                Err(e) if is_conflict(&e) => {
                    let wait = sleep_or_give_up("another batching task was still running")?;
                    tracing::info!(
                        wait_ms = wait.as_millis() as u64,
                        "another batching task is running in CDP; waiting for it before starting ours"
                    );
                    tokio::time::sleep(wait).await;
                }
                Err(e) => return Err(e.context(format!("cannot start batching {window}"))),
            }
        };
        tracing::info!(task_id = %task_id, window = %window, "batching task started");
        loop {
            let status = self.client.task_status(&task_id).await?;
            match status.status.as_str() {
                "COMPLETED" => {
                    tracing::info!(
                        task_id = %task_id,
                        batches = status.event_batches.len(),
                        "batching task completed"
                    );
                    return Ok(());
                }
                "OPEN" => {
                    let wait = sleep_or_give_up(&format!("batching task {task_id} still OPEN"))?;
                    tokio::time::sleep(wait).await;
                }
                other => bail!(
                    "CDP batching task {task_id} for {window} ended {other}, not COMPLETED; batches created before it are still shipped by the next run"
                ),
            }
        }
    }

    /// Outstanding batches, oldest first (ties by id, so runs agree on the order).
    async fn outstanding(&self) -> Result<Vec<ArchiveBatch>> {
        let mut batches = self.client.outstanding_batches(self.cfg.page_size).await?;
        batches.sort_by(|a, b| {
            (a.archive_timestamp, &a.archive_id).cmp(&(b.archive_timestamp, &b.archive_id))
        });
        Ok(batches)
    }

    /// The next batch to ship with its records, or `None` when done.
    async fn next_batch(&mut self) -> Result<Option<Current>> {
        let queue = self.queue.as_mut().expect("queue filled before");
        let Some(batch) = queue.pop_front() else {
            return Ok(None);
        };
        let events = self.client.batch_events_list(&batch.archive_id).await?;
        let mut rest: VecDeque<Record> = VecDeque::with_capacity(events.len() + 1);
        // A listing that disagrees with the batch's own count could be missing events:
        // shipping it is fine, marking it could lose what was not listed.
        if batch.event_count >= 0 && batch.event_count as usize != events.len() {
            rest.push_back(Record {
                key: batch.archive_id.clone(),
                doc: Err(format!(
                    "batch {} lists {} events but reports eventCount {}; not marked",
                    batch.archive_id,
                    events.len(),
                    batch.event_count
                )),
            });
        }
        for (i, event) in events.iter().enumerate() {
            let id = event.get("id").and_then(Value::as_str).unwrap_or_default();
            rest.push_back(Record {
                key: if id.is_empty() {
                    format!("{}#{i}", batch.archive_id)
                } else {
                    format!("{}/{id}", batch.archive_id)
                },
                doc: document(event),
            });
        }
        tracing::debug!(archive_id = %batch.archive_id, events = events.len(), "batch listed");
        Ok(Some(Current {
            total: rest.len(),
            batch,
            rest,
            intact: true,
        }))
    }
}

fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn is_conflict(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<client::ApiError>())
        .any(|a| a.status == 409)
}

/// The event as it is, plus `@timestamp` (ISO 8601, UTC, milliseconds) from its epoch
/// milliseconds `timestamp`; the document id is the event's `id`.
fn document(event: &Value) -> std::result::Result<Document, String> {
    let obj = event
        .as_object()
        .ok_or_else(|| "event is not a JSON object".to_string())?;
    let id = obj
        .get("id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| "event has no id".to_string())?;
    // int64 may be a JSON number or, in proto3 JSON, a string.
    let millis = match obj.get("timestamp") {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => s.parse().ok(),
        _ => None,
    }
    .ok_or_else(|| format!("event {id} has no timestamp in epoch milliseconds"))?;
    let at = DateTime::from_timestamp_millis(millis)
        .ok_or_else(|| format!("event {id} has timestamp {millis} out of range"))?;
    let mut doc = obj.clone();
    doc.insert(
        "@timestamp".into(),
        json!(at.to_rfc3339_opts(SecondsFormat::Millis, true)),
    );
    Ok(Document::new(
        id.to_string(),
        serde_json::to_vec(&doc).map_err(|e| e.to_string())?,
    ))
}

/// Part (or all) of one batch. Committing the batch's last page marks the batch in CDP if
/// every one of its events was acknowledged.
struct BatchPage<'a> {
    client: &'a Client,
    current: &'a mut Current,
    records: Vec<Record>,
    last: bool,
}

#[async_trait]
impl Page for BatchPage<'_> {
    fn records(&self) -> &[Record] {
        &self.records
    }

    fn file_name(&self) -> Option<String> {
        Some(self.current.batch.file_name())
    }

    fn ends_unit(&self) -> bool {
        self.last
    }

    async fn commit(self: Box<Self>, result: PageResult) -> Result<u64> {
        if !result.failed.is_empty() || result.delivered.len() != self.records.len() {
            self.current.intact = false;
        }
        if !self.last {
            return Ok(0);
        }
        let batch = &self.current.batch;
        if !self.current.intact {
            tracing::warn!(
                archive_id = %batch.archive_id,
                "batch not marked: some of its events were not delivered; it stays outstanding in CDP for the next run"
            );
            return Ok(0);
        }
        self.client
            .mark_successful(&[batch.archive_id.as_str()])
            .await
            .with_context(|| format!("cannot mark batch {} archived", batch.archive_id))?;
        tracing::info!(
            archive_id = %batch.archive_id,
            events = self.current.total,
            "batch delivered and marked archived in CDP"
        );
        Ok(self.current.total as u64)
    }
}

#[async_trait]
impl Source for CdpArchive {
    fn name(&self) -> String {
        format!(
            "cdp_archive:{}",
            self.client.endpoint().host_str().unwrap_or_default()
        )
    }

    /// A read-only call: proves the endpoint, the credentials, and that pull-based archiving
    /// is enabled (CDP refuses these operations while automated archiving is configured).
    async fn check(&mut self) -> Result<()> {
        self.client
            .call::<Value>(
                "listOutstandingArchiveBatches",
                &json!({ "pageSize": self.cfg.page_size }),
            )
            .await
            .map(|_| ())
    }

    async fn prepare(&mut self) -> Result<()> {
        self.check().await
    }

    async fn claim<'a>(
        &'a mut self,
        lane: Lane,
        limit: usize,
    ) -> Result<Option<Box<dyn Page + 'a>>> {
        // Nothing is tracked locally: an unmarked batch is simply outstanding again.
        if lane == Lane::Retry {
            return Ok(None);
        }
        if self.queue.is_none() {
            if let Some((from, to)) = self.cfg.window {
                self.run_batching_task(from, to).await?;
            }
            let batches = self.outstanding().await?;
            tracing::info!(batches = batches.len(), "outstanding archive batches");
            self.queue = Some(batches.into());
        }
        if self.current.as_ref().is_none_or(|c| c.rest.is_empty()) {
            self.current = self.next_batch().await?;
        }
        let whole = self.whole_batches;
        let Some(current) = self.current.as_mut() else {
            return Ok(None);
        };
        let n = if whole {
            current.rest.len()
        } else {
            limit.min(current.rest.len())
        };
        let records: Vec<Record> = current.rest.drain(..n).collect();
        let last = current.rest.is_empty();
        Ok(Some(Box::new(BatchPage {
            client: &self.client,
            current,
            records,
            last,
        })))
    }

    async fn parked(&mut self) -> Result<Vec<Parked>> {
        Ok(Vec::new())
    }

    async fn retry_failed(&mut self) -> Result<u64> {
        tracing::info!(
            "nothing is parked for CDP_ARCHIVE: a batch that was not delivered stays outstanding in CDP and every run retries it"
        );
        Ok(0)
    }

    async fn purge(&mut self, _cutoff: DateTime<Utc>) -> Result<u64> {
        tracing::info!(
            "nothing to delete for CDP_ARCHIVE: CDP drops a batch from the outstanding list once it is marked archived"
        );
        Ok(0)
    }

    fn paging(&self) -> Paging {
        Paging::Units
    }

    /// Lists outstanding batches with their event counts as JSON lines on stdout. Starts no
    /// batching task (that would change CDP's state) and marks nothing.
    async fn dry_run(&mut self) -> Result<()> {
        if let Some((from, to)) = self.cfg.window {
            tracing::info!(
                window = %format!("{}..{}", stamp(from), stamp(to)),
                "dry run: a run would first start a batching task for this window"
            );
        }
        let batches = self.outstanding().await?;
        let mut events = 0;
        for b in &batches {
            let listed = self.client.batch_events_list(&b.archive_id).await?.len();
            events += listed;
            println!(
                "{}",
                json!({
                    "archiveId": b.archive_id,
                    "accountId": b.account_id,
                    "archiveTimestamp": b.archived_at(),
                    "eventCount": listed,
                    "reportedEventCount": b.event_count,
                    "file": b.file_name(),
                })
            );
        }
        tracing::info!(
            batches = batches.len(),
            events,
            "dry run finished: nothing shipped, nothing marked"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_keeps_the_event_and_adds_iso_timestamp() {
        let event = json!({"id": "e-1", "timestamp": 1714557600123i64, "eventName": "login"});
        let d = document(&event).unwrap();
        assert_eq!(d.id, "e-1");
        let body: Value = serde_json::from_slice(&d.body).unwrap();
        assert_eq!(body["@timestamp"], "2024-05-01T10:00:00.123Z");
        assert_eq!(body["eventName"], "login");
        assert_eq!(body["timestamp"], 1714557600123i64);
        let s = document(&json!({"id": "e-2", "timestamp": "1714557600000"})).unwrap();
        assert!(String::from_utf8(s.body)
            .unwrap()
            .contains("2024-05-01T10:00:00.000Z"));
    }

    #[test]
    fn events_without_id_or_timestamp_fail_alone() {
        assert!(document(&json!({"timestamp": 1}))
            .unwrap_err()
            .contains("no id"));
        assert!(document(&json!({"id": "x"}))
            .unwrap_err()
            .contains("no timestamp"));
        assert!(document(&json!([1])).is_err());
    }
}

/// `AUDIT_LOGGER_TYPE=CDP_ARCHIVE`.
pub const KIND: super::Kind = super::Kind {
    name: "CDP_ARCHIVE",
    configure: |env, _| Ok(Box::new(Configured(Settings::from_env(env, Utc::now())?))),
};

#[derive(Debug)]
struct Configured(Settings);

#[async_trait]
impl super::Configured for Configured {
    fn label(&self) -> String {
        "cdp_archive".into()
    }
    fn traits(&self) -> crate::base::source::SourceTraits {
        crate::base::source::SourceTraits {
            topic_field: Some("eventSource"),
            key_field: Some("eventName"),
            whole_units: true,
            named_units: true,
            no_status: Some("status reads what a source keeps between runs, and the CDP source keeps nothing (CDP holds the outstanding batches): use `run --dry-run` to list them, or METRICS_TEXTFILE / METRICS_PUSHGATEWAY_URL"),
            ..Default::default()
        }
    }
    async fn connect(&self, run: &Config) -> Result<Box<dyn Source>> {
        Ok(Box::new(CdpArchive::new(&self.0, run)?))
    }
}
