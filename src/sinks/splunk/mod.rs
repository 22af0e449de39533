//! Splunk through the HTTP Event Collector (HEC), following `shared/specs/splunk-hec-sink.md`.
//!
//! In parts, as the Elasticsearch sink is: [`settings`] (`SPLUNK_*`), [`request`] (one
//! envelope per document, concatenated, split by size), [`service`] (the client and what
//! HEC's answers mean). Here: the sink. With indexer acknowledgement on (the default) a page
//! counts as delivered only once Splunk confirms every request of it; a page not confirmed in
//! time stays unmarked and the next run sends it again (at least once: the document id is an
//! indexed field, so duplicates can be found).

pub mod request;
pub mod service;
pub mod settings;

use super::{Outcome, Sink};
use crate::base::document::Document;
use crate::http::retry::{Class, Failure};
use anyhow::{anyhow, Result};
use async_trait::async_trait;
use service::{Answer, Service};
use settings::Settings;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `SINK=splunk`.
pub const KIND: super::Kind = super::Kind {
    name: "splunk",
    aliases: &["splunk_hec"],
    implied_by: None,
    traits: super::SinkTraits {
        json_only: true,
        prefers_original: false,
    },
    configure: |env, _| {
        Ok(Box::new(Configured {
            settings: Settings::from_env(env)?,
            service: super::Shared::default(),
        }))
    },
};

/// Longest pause between two acknowledgement queries (Splunk advises polling every few
/// seconds; the first queries come sooner, as small pages are often confirmed at once).
const MAX_ACK_POLL: Duration = Duration::from_secs(5);

/// The settings, and the client (with the run's channel) once something needed it.
#[derive(Debug)]
struct Configured {
    settings: Settings,
    service: super::Shared<Service>,
}

impl Configured {
    fn service(&self) -> Result<Arc<Service>> {
        self.service.get_or_build(|| Service::new(&self.settings))
    }
}

#[async_trait]
impl super::Configured for Configured {
    fn build(&self) -> Result<Box<dyn Sink>> {
        Ok(Box::new(SplunkSink {
            service: self.service()?,
            settings: self.settings.clone(),
        }))
    }
}

pub struct SplunkSink {
    service: Arc<Service>,
    settings: Settings,
}

/// Where a page stands between attempts.
#[derive(Default)]
struct Progress {
    outcomes: Vec<Option<Outcome>>,
    /// Documents still to send, in page order.
    pending: Vec<usize>,
    /// Requests accepted, waiting for their ackId to read true: the documents they carried.
    awaiting: Vec<(u64, Vec<usize>)>,
}

impl SplunkSink {
    /// Sends everything pending until each document is accepted or refused (`Ok`) or some
    /// failed transiently (`Err`: the policy waits and calls again, and only those are sent
    /// again).
    async fn attempt(
        &self,
        docs: &[&Document],
        envelopes: &[Vec<u8>],
        p: &mut Progress,
    ) -> Result<(), Failure> {
        let ack = self.settings.ack;
        while !p.pending.is_empty() {
            let mut again = Vec::new();
            let mut problem: Option<Failure> = None;
            for group in request::split_by_bytes(&p.pending, envelopes, request::MAX_BYTES) {
                let body = request::body(&group, envelopes);
                match self.service.send(body).await {
                    Ok(Answer::Accepted(Some(id))) => p.awaiting.push((id, group)),
                    Ok(Answer::Accepted(None)) => {
                        for i in group {
                            p.outcomes[i] = Some(Outcome::Delivered);
                        }
                    }
                    Ok(Answer::BadEvent { index, text }) if index < group.len() => {
                        let bad = group[index];
                        tracing::warn!(id = %docs[bad].id, "{text}");
                        p.outcomes[bad] = Some(Outcome::Rejected(text));
                        // Those before it were processed; with acks on nothing confirms
                        // them, so they go again (at least once, never lost).
                        for &i in &group[..index] {
                            if ack {
                                again.push(i);
                            } else {
                                p.outcomes[i] = Some(Outcome::Delivered);
                            }
                        }
                        again.extend_from_slice(&group[index + 1..]);
                    }
                    Ok(Answer::BadEvent { text, .. } | Answer::Refused(text)) => {
                        for i in group {
                            p.outcomes[i] = Some(Outcome::Rejected(text.clone()));
                        }
                    }
                    Ok(Answer::Busy { processed, failure }) => {
                        let processed = if ack { 0 } else { processed.min(group.len()) };
                        for &i in &group[..processed] {
                            p.outcomes[i] = Some(Outcome::Delivered);
                        }
                        again.extend_from_slice(&group[processed..]);
                        problem = Some(failure);
                    }
                    Err(f) if f.class == Class::Transient => {
                        again.extend(group);
                        problem = Some(f);
                    }
                    Err(f) => return Err(f),
                }
            }
            again.sort_unstable();
            p.pending = again;
            if let Some(f) = problem {
                tracing::debug!(documents = p.pending.len(), "to be sent again");
                return Err(f);
            }
        }
        Ok(())
    }

    /// Polls the acknowledgement endpoint until every accepted request reads true (its
    /// documents are then delivered) or SPLUNK_ACK_TIMEOUT_SECONDS has passed (an error: the
    /// page stays unmarked).
    async fn confirm(&self, p: &mut Progress) -> Result<()> {
        let deadline = Instant::now() + self.settings.ack_timeout;
        let mut pause = Duration::from_millis(100);
        while !p.awaiting.is_empty() {
            let ids: Vec<u64> = p.awaiting.iter().map(|(id, _)| *id).collect();
            let done = self
                .settings
                .retry
                .run("Splunk HEC acknowledgement", || self.service.acked(&ids))
                .await
                .map_err(|f| self.service.error(f))?;
            let outcomes = &mut p.outcomes;
            p.awaiting.retain(|(id, group)| {
                let confirmed = done.contains(id);
                if confirmed {
                    for &i in group {
                        outcomes[i] = Some(Outcome::Delivered);
                    }
                }
                !confirmed
            });
            if p.awaiting.is_empty() {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(anyhow!(
                    "Splunk HEC at {}: {} of the page's requests not confirmed indexed within SPLUNK_ACK_TIMEOUT_SECONDS ({} s); the page stays unsent and the next run sends it again (find duplicates by fields.audit_transfer_id)",
                    self.service.url,
                    p.awaiting.len(),
                    self.settings.ack_timeout.as_secs()
                ));
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(MAX_ACK_POLL);
        }
        Ok(())
    }
}

#[async_trait]
impl Sink for SplunkSink {
    fn name(&self) -> String {
        format!("splunk:{}", self.service.url)
    }

    /// An empty request: HEC checks the token, then answers "No data" without storing anything.
    async fn check(&mut self) -> Result<()> {
        match self.service.send(Vec::new()).await {
            Ok(_) => Ok(()),
            Err(f) => Err(self.service.error(f)),
        }
    }

    async fn ship(&mut self, docs: &[&Document]) -> Result<Vec<Outcome>> {
        let mut outcomes: Vec<Option<Outcome>> = vec![None; docs.len()];
        let mut envelopes = Vec::with_capacity(docs.len());
        for (i, doc) in docs.iter().enumerate() {
            envelopes.push(
                request::envelope(doc, &self.settings).unwrap_or_else(|why| {
                    outcomes[i] = Some(Outcome::Rejected(why));
                    Vec::new()
                }),
            );
        }
        let pending = (0..docs.len()).filter(|&i| outcomes[i].is_none()).collect();
        // Handed from one attempt to the next (the policy runs them one after another).
        let progress = std::sync::Mutex::new(Some(Progress {
            outcomes,
            pending,
            awaiting: Vec::new(),
        }));
        let this = &*self;
        let result = self
            .settings
            .retry
            .run("Splunk HEC", || async {
                let mut p = take(&progress);
                let result = this.attempt(docs, &envelopes, &mut p).await;
                *progress.lock().unwrap_or_else(|e| e.into_inner()) = Some(p);
                result
            })
            .await;
        let mut progress = take(&progress);
        result.map_err(|f| self.service.error(f))?;
        self.confirm(&mut progress).await?;
        Ok(progress
            .outcomes
            .into_iter()
            .map(|o| o.expect("every document has an outcome"))
            .collect())
    }
}

fn take(progress: &std::sync::Mutex<Option<Progress>>) -> Progress {
    progress
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .expect("attempts run one at a time")
}
