//! Elasticsearch / OpenSearch through the `_bulk` API, with the official client's transport.
//!
//! In parts, as Vector's sink is: [`settings`] (`ELASTICSEARCH_*`), [`request`] (NDJSON
//! `create` actions with our document ids, index per document, split by size), [`service`]
//! (the client, and what each answer means for the request and for each item), [`index`]
//! (`init-index`). Here: the sink, which resends only what failed transiently, with the
//! shared retry policy ([`crate::http::retry`]) choosing the waits.

pub mod index;
pub mod request;
pub mod service;
pub mod settings;

use super::{Outcome, Sink};
use crate::base::document::Document;
use crate::http::retry::Failure;
use anyhow::Result;
use async_trait::async_trait;
use elasticsearch::BulkParts;
use service::{Answer, ItemAnswer, Service};
use settings::Settings;
use std::sync::Arc;

/// `SINK=elasticsearch` (or `opensearch`), implied by `ELASTICSEARCH_HOST`.
pub const KIND: super::Kind = super::Kind {
    name: "elasticsearch",
    aliases: &["opensearch"],
    implied_by: Some("ELASTICSEARCH_HOST"),
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

/// The settings, and the client once something needed it.
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
        Ok(Box::new(ElasticsearchSink {
            service: self.service()?,
            settings: self.settings.clone(),
            max_bytes: request::MAX_BULK_BYTES,
            replace: false,
        }))
    }
    fn needs_route(&self) -> bool {
        self.settings.index_template.is_some()
    }
    async fn prepare(&self) -> Result<()> {
        if self.settings.create_index {
            index::ensure(&self.settings, &*self.service()?).await?;
        }
        Ok(())
    }
    fn has_index(&self) -> bool {
        true
    }
    async fn init_index(&self) -> Result<()> {
        index::ensure(&self.settings, &*self.service()?)
            .await
            .map(|_| ())
    }
}

/// Documents per page of a scan (`verify --chain`).
const SCAN_PAGE: usize = 1000;

pub struct ElasticsearchSink {
    service: Arc<Service>,
    settings: Settings,
    /// Largest body sent; halved for good when the cluster answers 413.
    max_bytes: usize,
    /// INTEGRITY_CHAIN: `index` instead of `create` ([`request::actions`]).
    replace: bool,
}

/// Where a page stands between attempts.
struct Progress {
    outcomes: Vec<Option<Outcome>>,
    /// Documents still to send, in page order.
    pending: Vec<usize>,
    max_bytes: usize,
}

impl ElasticsearchSink {
    /// Sends everything pending, in requests of bounded size, until all have a final outcome
    /// (`Ok`) or some failed transiently (`Err`: the policy waits and calls again, and only
    /// those are sent again). A 413 halves the request size and resends at once.
    async fn attempt(
        &self,
        docs: &[&Document],
        index: &[String],
        p: &mut Progress,
    ) -> Result<(), Failure> {
        while !p.pending.is_empty() {
            let mut again = Vec::new();
            let mut problem: Option<String> = None;
            for group in request::split_by_bytes(&p.pending, docs, p.max_bytes) {
                let parts = match self.settings.index_template {
                    Some(_) => BulkParts::None,
                    None => BulkParts::Index(&self.settings.index),
                };
                let actions = request::actions(docs, index, &group, self.replace);
                let body = request::body(&actions, docs, &group);
                match self.service.bulk(parts, body, group.len()).await {
                    Ok(Answer::Items(items)) => {
                        for (i, answer) in group.into_iter().zip(items) {
                            match answer {
                                ItemAnswer::Final(o) => p.outcomes[i] = Some(o),
                                ItemAnswer::Transient(why) => {
                                    again.push(i);
                                    problem = Some(why);
                                }
                            }
                        }
                    }
                    Ok(Answer::TooLarge) if group.len() > 1 => {
                        p.max_bytes = (p.max_bytes / 2).max(1);
                        tracing::warn!(
                            max_bytes = p.max_bytes,
                            "bulk request too large (413); splitting"
                        );
                        again.extend(group);
                    }
                    Ok(Answer::TooLarge) => {
                        p.outcomes[group[0]] = Some(Outcome::Rejected(
                            "rejected by Elasticsearch: 413 document too large".into(),
                        ));
                    }
                    Err(f) if f.class == crate::http::retry::Class::Transient => {
                        again.extend(group);
                        problem = Some(f.why);
                    }
                    Err(f) => return Err(f),
                }
            }
            again.sort_unstable();
            p.pending = again;
            if let Some(why) = problem {
                tracing::debug!(documents = p.pending.len(), "to be sent again");
                return Err(Failure::transient(why));
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Sink for ElasticsearchSink {
    fn name(&self) -> String {
        format!("elasticsearch:{}{}", self.settings.url, self.settings.index)
    }

    async fn check(&mut self) -> Result<()> {
        self.service.info().await
    }

    fn read_back_mode(&self) -> crate::base::sink::ReadBack {
        crate::base::sink::ReadBack::ById
    }

    async fn read_back(&mut self, docs: &[&Document]) -> Result<Vec<Option<Vec<u8>>>> {
        self.mget(docs).await
    }

    fn replace_existing(&mut self) {
        self.replace = true;
    }

    /// Every document of the index (or of every index the name template makes), by scroll.
    async fn scan(&mut self, each: &mut dyn crate::base::sink::Found) -> Result<()> {
        let pattern = match &self.settings.index_template {
            Some(t) => t.pattern(),
            None => self.settings.index.clone(),
        };
        let mut scroll: Option<String> = None;
        loop {
            let (hits, next) = self
                .settings
                .retry
                .run("Elasticsearch", || {
                    self.service.scroll(&pattern, scroll.as_deref(), SCAN_PAGE)
                })
                .await
                .map_err(|f| self.service.error(f))?;
            for (at, source) in &hits {
                each.found(at, source);
            }
            match next {
                Some(id) => scroll = Some(id),
                None => return Ok(()),
            }
        }
    }

    async fn ship(&mut self, docs: &[&Document]) -> Result<Vec<Outcome>> {
        let mut outcomes: Vec<Option<Outcome>> = vec![None; docs.len()];
        // Index per document from the name template; a document it cannot name is refused.
        let mut index = Vec::new();
        if let Some(template) = &self.settings.index_template {
            for (i, name) in request::index_per_document(template, docs)
                .into_iter()
                .enumerate()
            {
                index.push(name.unwrap_or_else(|why| {
                    outcomes[i] = Some(Outcome::Rejected(why));
                    String::new()
                }));
            }
        }
        let pending = (0..docs.len()).filter(|&i| outcomes[i].is_none()).collect();
        // Handed from one attempt to the next (the policy runs them one after another).
        let progress = std::sync::Mutex::new(Some(Progress {
            outcomes,
            pending,
            max_bytes: self.max_bytes,
        }));
        let this = &*self;
        let result = self
            .settings
            .retry
            .run("Elasticsearch", || async {
                let mut p = take(&progress);
                let result = this.attempt(docs, &index, &mut p).await;
                *progress.lock().unwrap_or_else(|e| e.into_inner()) = Some(p);
                result
            })
            .await;
        let progress = take(&progress);
        self.max_bytes = progress.max_bytes;
        result.map_err(|f| self.service.error(f))?;
        Ok(progress
            .outcomes
            .into_iter()
            .map(|o| o.expect("every document has an outcome"))
            .collect())
    }
}

impl ElasticsearchSink {
    /// The index each document was written to: the configured one, or the name template's.
    fn indexes(&self, docs: &[&Document]) -> Vec<std::result::Result<String, String>> {
        match &self.settings.index_template {
            Some(template) => request::index_per_document(template, docs),
            None => docs
                .iter()
                .map(|_| Ok(self.settings.index.clone()))
                .collect(),
        }
    }

    pub async fn mget(&self, docs: &[&Document]) -> Result<Vec<Option<Vec<u8>>>> {
        let indexes = self.indexes(docs);
        // A document the template cannot name was never written anywhere.
        let named: Vec<usize> = (0..docs.len()).filter(|&i| indexes[i].is_ok()).collect();
        let wanted: Vec<(&str, &str)> = named
            .iter()
            .map(|&i| {
                let index = indexes[i].as_deref().unwrap_or_default();
                (index, docs[i].id.as_str())
            })
            .collect();
        let found = self
            .settings
            .retry
            .run("Elasticsearch", || self.service.mget(&wanted))
            .await
            .map_err(|f| self.service.error(f))?;
        let mut out = vec![None; docs.len()];
        for (i, stored) in named.into_iter().zip(found) {
            out[i] = stored;
        }
        Ok(out)
    }
}

fn take(progress: &std::sync::Mutex<Option<Progress>>) -> Progress {
    progress
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .expect("attempts run one at a time")
}
