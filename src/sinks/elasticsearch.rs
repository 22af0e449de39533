//! Elasticsearch / OpenSearch through the `_bulk` API, with the official client's transport.
//!
//! Split in three parts, as Vector does it: building requests (NDJSON `create` actions with our
//! document ids, split by size), classifying answers (per whole request and per item), and the
//! retry loop that resends only what is transient.
//!
//! The official client (`elasticsearch` crate) sends plain `application/json` /
//! `application/x-ndjson` and does not insist on the `X-Elastic-Product` header, so the same
//! requests work against Elasticsearch 7/8/9 and OpenSearch 1/2/3.

use super::{Outcome, Sink};
use crate::base::document::Document;
use crate::config::ElasticsearchConfig;
use anyhow::{anyhow, bail, Context, Result};
use async_trait::async_trait;
use backon::BackoffBuilder;
use elasticsearch::auth::Credentials;
use elasticsearch::cert::{Certificate, CertificateValidation};
use elasticsearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use elasticsearch::http::StatusCode;
use elasticsearch::{BulkParts, Elasticsearch};
use serde::Deserialize;
use std::time::Duration;

/// Largest bulk body we send; Elasticsearch's default limit is 100 MB, and smaller bodies keep
/// retries cheap. Halved on a 413.
const MAX_BULK_BYTES: usize = 8 * 1024 * 1024;

pub struct ElasticsearchSink {
    client: Elasticsearch,
    cfg: ElasticsearchConfig,
    max_bytes: usize,
}

impl ElasticsearchSink {
    pub fn new(cfg: &ElasticsearchConfig) -> Result<Self> {
        let pool = SingleNodeConnectionPool::new(cfg.url.clone());
        let mut builder = TransportBuilder::new(pool)
            .disable_proxy()
            .enable_meta_header(false)
            // The client's own gzip (Content-Encoding: gzip), which Elasticsearch and
            // OpenSearch both accept: bulk bodies of JSON shrink several times.
            .request_body_compression(cfg.compression)
            .timeout(cfg.timeout);
        if let Some(key) = &cfg.api_key {
            builder = builder.auth(match key.split_once(':') {
                Some((id, secret)) => Credentials::ApiKey(id.into(), secret.into()),
                None => Credentials::EncodedApiKey(key.clone()),
            });
        } else if let Some(user) = &cfg.username {
            builder = builder.auth(Credentials::Basic(
                user.clone(),
                cfg.password.clone().unwrap_or_default(),
            ));
        }
        if cfg.insecure {
            tracing::warn!("ELASTICSEARCH_INSECURE=true: the server's certificate is not verified");
            builder = builder.cert_validation(CertificateValidation::None);
        } else if let Some(path) = &cfg.ca_cert {
            let pem = std::fs::read(path)
                .with_context(|| format!("cannot read ELASTICSEARCH_CA_CERT {}", path.display()))?;
            let cert = Certificate::from_pem(&pem).map_err(|e| {
                crate::base::exit::config_error(format!(
                    "invalid ELASTICSEARCH_CA_CERT {}: expected PEM certificates ({e})",
                    path.display()
                ))
            })?;
            builder = builder.cert_validation(CertificateValidation::Full(cert));
        }
        let transport = builder
            .build()
            .context("cannot set up the Elasticsearch client")?;
        Ok(ElasticsearchSink {
            client: Elasticsearch::new(transport),
            cfg: cfg.clone(),
            max_bytes: MAX_BULK_BYTES,
        })
    }

    /// The configured client, for index setup (`super::index`).
    pub fn client(&self) -> &Elasticsearch {
        &self.client
    }

    fn delays(&self) -> impl Iterator<Item = Duration> {
        backon::ExponentialBuilder::default()
            .with_min_delay(self.cfg.retry_initial)
            .with_max_delay(Duration::from_secs(30))
            .with_jitter()
            .with_max_times(self.cfg.max_retries)
            .build()
    }

    fn auth_error(&self, status: StatusCode) -> anyhow::Error {
        let how = if self.cfg.api_key.is_some() {
            "check ELASTICSEARCH_API_KEY"
        } else if self.cfg.username.is_some() {
            "check ELASTICSEARCH_USERNAME and ELASTICSEARCH_PASSWORD"
        } else {
            "set ELASTICSEARCH_USERNAME/ELASTICSEARCH_PASSWORD or ELASTICSEARCH_API_KEY"
        };
        if status == StatusCode::FORBIDDEN {
            anyhow!(
                "Elasticsearch at {} refused access to index {:?} (403): {how}",
                self.cfg.url,
                self.cfg.index
            )
        } else {
            anyhow!(
                "Elasticsearch at {} refused the credentials ({}): {how}",
                self.cfg.url,
                status.as_u16()
            )
        }
    }

    /// One bulk request for `group` (indices into `docs`). `index` holds each document's index
    /// when the name is a template; empty otherwise (the request's path names the index).
    async fn send(&self, docs: &[&Document], index: &[String], group: &[usize]) -> Result<Answer> {
        let actions: Vec<String> = group
            .iter()
            .map(|&i| match index.get(i) {
                Some(name) => serde_json::json!({"create": {"_index": name, "_id": docs[i].id}}),
                None => serde_json::json!({"create": {"_id": docs[i].id}}),
            })
            .map(|a| a.to_string())
            .collect();
        let mut body: Vec<&[u8]> = Vec::with_capacity(group.len() * 2);
        for (k, &i) in group.iter().enumerate() {
            body.push(actions[k].as_bytes());
            body.push(&docs[i].body);
        }
        let parts = match self.cfg.index_template {
            Some(_) => BulkParts::None,
            None => BulkParts::Index(&self.cfg.index),
        };
        let response = match self.client.bulk(parts).body(body).send().await {
            Ok(r) => r,
            Err(e) => {
                return Ok(Answer::Transient(format!(
                    "request failed: {}",
                    crate::base::exit::chain_text(&e)
                )))
            }
        };
        let status = response.status_code();
        match status.as_u16() {
            200 => {}
            401 | 403 => return Err(self.auth_error(status)),
            413 => return Ok(Answer::TooLarge),
            408 | 429 | 500..=599 => {
                return Ok(Answer::Transient(format!("HTTP {}", status.as_u16())))
            }
            _ => {
                let text = response.text().await.unwrap_or_default();
                bail!(
                    "Elasticsearch at {} answered the bulk request with HTTP {}: {}",
                    self.cfg.url,
                    status.as_u16(),
                    crate::base::exit::excerpt(&text)
                );
            }
        }
        let bytes = match response.bytes().await {
            Ok(b) => b,
            Err(e) => {
                return Ok(Answer::Transient(format!(
                    "reading the response failed: {}",
                    crate::base::exit::chain_text(&e)
                )))
            }
        };
        let parsed: BulkResponse = serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "unexpected bulk response: {}",
                crate::base::exit::excerpt(&String::from_utf8_lossy(&bytes))
            )
        })?;
        if parsed.items.len() != group.len() {
            bail!(
                "bulk response has {} items for {} documents",
                parsed.items.len(),
                group.len()
            );
        }
        Ok(Answer::Items(
            parsed
                .items
                .into_iter()
                .map(|item| classify(item.into_result()))
                .collect(),
        ))
    }
}

/// What one bulk request came back with.
enum Answer {
    Items(Vec<ItemAnswer>),
    /// Whole request transient (429, 5xx, reset, timeout): resend all of it.
    Transient(String),
    /// 413: the body is too large for the cluster.
    TooLarge,
}

enum ItemAnswer {
    Final(Outcome),
    Transient(String),
}

#[derive(Deserialize)]
struct BulkResponse {
    items: Vec<std::collections::HashMap<String, BulkItem>>,
}

#[derive(Deserialize)]
struct BulkItem {
    status: u16,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

trait IntoResult {
    fn into_result(self) -> BulkItem;
}

impl IntoResult for std::collections::HashMap<String, BulkItem> {
    fn into_result(self) -> BulkItem {
        // Each item is {"create": {...}}: one key, the action.
        self.into_values().next().unwrap_or(BulkItem {
            status: 0,
            error: None,
        })
    }
}

fn classify(item: BulkItem) -> ItemAnswer {
    let kind = item
        .error
        .as_ref()
        .and_then(|e| e.get("type"))
        .and_then(|t| t.as_str())
        .unwrap_or_default()
        .to_string();
    let reason = || match &item.error {
        Some(e) => {
            let r = e.get("reason").and_then(|r| r.as_str()).unwrap_or_default();
            let cause = e
                .get("caused_by")
                .and_then(|c| c.get("reason"))
                .and_then(|r| r.as_str());
            match cause {
                Some(c) => format!("{} {kind}: {r} ({c})", item.status),
                None => format!("{} {kind}: {r}", item.status),
            }
        }
        None => format!("status {}", item.status),
    };
    match item.status {
        200 | 201 => ItemAnswer::Final(Outcome::Delivered),
        // `create` with our deterministic id: an earlier run delivered it.
        409 => ItemAnswer::Final(Outcome::AlreadyPresent),
        429 | 500..=599 => ItemAnswer::Transient(reason()),
        _ if kind == "es_rejected_execution_exception" => ItemAnswer::Transient(reason()),
        _ => ItemAnswer::Final(Outcome::Rejected(format!(
            "rejected by Elasticsearch: {}",
            reason()
        ))),
    }
}

/// Groups `pending` into requests of at most `max_bytes` (a document larger than that goes alone).
fn split_by_bytes(pending: &[usize], docs: &[&Document], max_bytes: usize) -> Vec<Vec<usize>> {
    let mut groups = Vec::new();
    let mut current = Vec::new();
    let mut size = 0;
    for &i in pending {
        let len = docs[i].body.len() + docs[i].id.len() + 32;
        if !current.is_empty() && size + len > max_bytes {
            groups.push(std::mem::take(&mut current));
            size = 0;
        }
        size += len;
        current.push(i);
    }
    if !current.is_empty() {
        groups.push(current);
    }
    groups
}

#[async_trait]
impl Sink for ElasticsearchSink {
    fn name(&self) -> String {
        format!("elasticsearch:{}{}", self.cfg.url, self.cfg.index)
    }

    async fn check(&mut self) -> Result<()> {
        let response = self.client.info().send().await.map_err(|e| {
            anyhow!(
                "cannot reach Elasticsearch at {}: {}",
                self.cfg.url,
                crate::base::exit::chain_text(&e)
            )
        })?;
        let status = response.status_code();
        match status.as_u16() {
            200 => {
                let info: serde_json::Value = response.json().await.unwrap_or_default();
                let version = info
                    .pointer("/version/number")
                    .and_then(|v| v.as_str())
                    .unwrap_or("?");
                let dist = info
                    .pointer("/version/distribution")
                    .and_then(|v| v.as_str())
                    .unwrap_or("elasticsearch");
                tracing::info!(url = %self.cfg.url, %dist, %version, "sink reachable");
                Ok(())
            }
            401 | 403 => Err(self.auth_error(status)),
            code => bail!("Elasticsearch at {} answered HTTP {code}", self.cfg.url),
        }
    }

    async fn ship(&mut self, docs: &[&Document]) -> Result<Vec<Outcome>> {
        let mut outcomes: Vec<Option<Outcome>> = vec![None; docs.len()];
        let mut pending: Vec<usize> = (0..docs.len()).collect();
        // Index per document from the name template; a record it cannot name (no date) is
        // refused alone, like a mapping error.
        let mut index = Vec::new();
        if let Some(template) = &self.cfg.index_template {
            for (i, d) in docs.iter().enumerate() {
                match template.render(d.route(), crate::routing::index_part) {
                    // Elasticsearch's limit; a long topic or key must not fail the whole page.
                    Ok(name) if name.len() > 255 => {
                        outcomes[i] = Some(Outcome::Rejected(format!(
                            "index name {name:?} is longer than 255 bytes"
                        )));
                        index.push(String::new());
                    }
                    Ok(name) => index.push(name),
                    Err(why) => {
                        outcomes[i] = Some(Outcome::Rejected(why));
                        index.push(String::new());
                    }
                }
            }
            pending.retain(|&i| outcomes[i].is_none());
        }
        let mut delays = self.delays();
        let mut tries = 0usize;
        while !pending.is_empty() {
            tries += 1;
            let mut again = Vec::new();
            let mut problem: Option<String> = None;
            for group in split_by_bytes(&pending, docs, self.max_bytes) {
                match self.send(docs, &index, &group).await? {
                    Answer::Items(items) => {
                        for (i, answer) in group.into_iter().zip(items) {
                            match answer {
                                ItemAnswer::Final(o) => outcomes[i] = Some(o),
                                ItemAnswer::Transient(why) => {
                                    again.push(i);
                                    problem = Some(why);
                                }
                            }
                        }
                    }
                    Answer::Transient(why) => {
                        again.extend(group);
                        problem = Some(why);
                    }
                    Answer::TooLarge if group.len() > 1 => {
                        self.max_bytes = (self.max_bytes / 2).max(1);
                        tracing::warn!(
                            max_bytes = self.max_bytes,
                            "bulk request too large (413); splitting"
                        );
                        again.extend(group);
                    }
                    Answer::TooLarge => {
                        outcomes[group[0]] = Some(Outcome::Rejected(
                            "rejected by Elasticsearch: 413 document too large".into(),
                        ));
                    }
                }
            }
            again.sort_unstable();
            pending = again;
            if let Some(why) = problem {
                match delays.next() {
                    Some(delay) => {
                        tracing::warn!(
                            documents = pending.len(),
                            attempt = tries,
                            delay_ms = delay.as_millis() as u64,
                            "Elasticsearch: {why}; retrying"
                        );
                        tokio::time::sleep(delay).await;
                    }
                    None => bail!(
                        "Elasticsearch at {} still failing after {tries} attempts: {why}",
                        self.cfg.url
                    ),
                }
            }
        }
        Ok(outcomes
            .into_iter()
            .map(|o| o.expect("every document has an outcome"))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(status: u16, error: Option<serde_json::Value>) -> BulkItem {
        BulkItem { status, error }
    }

    #[test]
    fn item_outcomes_follow_the_bulk_contract() {
        assert!(matches!(
            classify(item(201, None)),
            ItemAnswer::Final(Outcome::Delivered)
        ));
        assert!(matches!(
            classify(item(409, None)),
            ItemAnswer::Final(Outcome::AlreadyPresent)
        ));
        assert!(matches!(
            classify(item(429, None)),
            ItemAnswer::Transient(_)
        ));
        assert!(matches!(
            classify(item(503, None)),
            ItemAnswer::Transient(_)
        ));
        let rejected_exec =
            serde_json::json!({"type": "es_rejected_execution_exception", "reason": "queue full"});
        assert!(matches!(
            classify(item(400, Some(rejected_exec))),
            ItemAnswer::Transient(_)
        ));
        let mapping = serde_json::json!({"type": "mapper_parsing_exception", "reason": "failed to parse", "caused_by": {"reason": "For input string"}});
        match classify(item(400, Some(mapping))) {
            ItemAnswer::Final(Outcome::Rejected(r)) => {
                assert!(
                    r.contains("400 mapper_parsing_exception: failed to parse (For input string)"),
                    "{r}"
                )
            }
            _ => panic!("400 must be final"),
        }
        assert!(matches!(
            classify(item(404, None)),
            ItemAnswer::Final(Outcome::Rejected(_))
        ));
    }

    #[test]
    fn requests_are_split_by_size() {
        let docs: Vec<Document> = (0..5)
            .map(|i| Document::new(i.to_string(), vec![b'x'; 100]))
            .collect();
        let docs: Vec<&Document> = docs.iter().collect();
        let all: Vec<usize> = (0..5).collect();
        assert_eq!(split_by_bytes(&all, &docs, 1 << 20).len(), 1);
        let groups = split_by_bytes(&all, &docs, 300);
        assert_eq!(groups, vec![vec![0, 1], vec![2, 3], vec![4]]);
        assert_eq!(split_by_bytes(&all, &docs, 1).len(), 5);
    }
}

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
        Ok(Box::new(Configured(crate::config::elasticsearch_config(
            env,
        )?)))
    },
};

#[derive(Debug)]
struct Configured(ElasticsearchConfig);

#[async_trait]
impl super::Configured for Configured {
    fn build(&self) -> Result<Box<dyn Sink>> {
        Ok(Box::new(ElasticsearchSink::new(&self.0)?))
    }
    fn needs_route(&self) -> bool {
        self.0.index_template.is_some()
    }
    async fn prepare(&self) -> Result<()> {
        if self.0.create_index {
            super::index::ensure(&self.0).await?;
        }
        Ok(())
    }
    async fn init_index(&self) -> Result<()> {
        super::index::ensure(&self.0).await.map(|_| ())
    }
}
