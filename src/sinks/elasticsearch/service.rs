//! Talking to the cluster: the client (TLS, credentials, compression), one bulk request at a
//! time, and what its answer means, for the whole request and for each item. Retrying is the
//! shared policy's job ([`crate::http::retry`]); this module only classifies.
//!
//! The official client (`elasticsearch` crate) labels bodies `application/json`; bulk bodies
//! are sent as `application/x-ndjson` (header set here), and it does not insist on the `X-Elastic-Product` header, so the same
//! requests work against Elasticsearch 7/8/9 and OpenSearch 1/2/3.

use super::settings::Settings;
use crate::base::exit::{chain_text, config_error, excerpt};
use crate::base::sink::Outcome;
use crate::http::retry::{self, Class, Failure};
use anyhow::{anyhow, Context, Result};
use elasticsearch::auth::Credentials;
use elasticsearch::cert::{Certificate, CertificateValidation};
use elasticsearch::http::response::Response;
use elasticsearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use elasticsearch::{BulkParts, Elasticsearch};
use serde::Deserialize;

/// The client and what its messages name. Built once per configured sink and shared by its
/// workers (one connection pool, one reading of the CA file, one warning about
/// ELASTICSEARCH_INSECURE).
#[derive(Debug)]
pub struct Service {
    client: Elasticsearch,
    pub url: url::Url,
    index: String,
    /// What to check when credentials are refused.
    auth_hint: &'static str,
}

impl Service {
    pub fn new(cfg: &Settings) -> Result<Self> {
        let pool = SingleNodeConnectionPool::new(cfg.url.clone());
        let mut builder = TransportBuilder::new(pool)
            .disable_proxy()
            .enable_meta_header(false)
            // The client's own gzip (Content-Encoding: gzip), which Elasticsearch and
            // OpenSearch both accept: bulk bodies of JSON shrink several times.
            .request_body_compression(cfg.compression)
            .timeout(cfg.retry.timeout);
        if let Some(key) = &cfg.api_key {
            builder = builder.auth(match key.expose().split_once(':') {
                Some((id, secret)) => Credentials::ApiKey(id.into(), secret.into()),
                None => Credentials::EncodedApiKey(key.expose().into()),
            });
        } else if let Some(user) = &cfg.username {
            builder = builder.auth(Credentials::Basic(
                user.clone(),
                cfg.password
                    .as_ref()
                    .map(|p| p.expose().to_string())
                    .unwrap_or_default(),
            ));
        }
        if cfg.insecure {
            tracing::warn!("ELASTICSEARCH_INSECURE=true: the server's certificate is not verified");
            builder = builder.cert_validation(CertificateValidation::None);
        } else if let Some(path) = &cfg.ca_cert {
            let pem = std::fs::read(path)
                .with_context(|| format!("cannot read ELASTICSEARCH_CA_CERT {}", path.display()))?;
            let cert = Certificate::from_pem(&pem).map_err(|e| {
                config_error(format!(
                    "invalid ELASTICSEARCH_CA_CERT {}: expected PEM certificates ({e})",
                    path.display()
                ))
            })?;
            builder = builder.cert_validation(CertificateValidation::Full(cert));
        }
        let transport = builder
            .build()
            .context("cannot set up the Elasticsearch client")?;
        let auth_hint = if cfg.api_key.is_some() {
            "check ELASTICSEARCH_API_KEY"
        } else if cfg.username.is_some() {
            "check ELASTICSEARCH_USERNAME and ELASTICSEARCH_PASSWORD"
        } else {
            "set ELASTICSEARCH_USERNAME/ELASTICSEARCH_PASSWORD or ELASTICSEARCH_API_KEY"
        };
        Ok(Service {
            client: Elasticsearch::new(transport),
            url: cfg.url.clone(),
            index: cfg.index.clone(),
            auth_hint,
        })
    }

    /// The configured client, for index setup (`super::index`).
    pub fn client(&self) -> &Elasticsearch {
        &self.client
    }

    /// Credentials refused (401) or access denied (403) for the index.
    pub fn auth_error(&self, status: u16) -> anyhow::Error {
        let how = self.auth_hint;
        if status == 403 {
            anyhow!(
                "Elasticsearch at {} refused access to index {:?} (403): {how}",
                self.url,
                self.index
            )
        } else {
            anyhow!(
                "Elasticsearch at {} refused the credentials ({status}): {how}",
                self.url
            )
        }
    }

    /// No response at all: a certificate that does not verify is final and says which
    /// variables fix it; anything else (refused, reset, timeout) is worth another attempt.
    pub fn transport_failure(&self, e: &elasticsearch::Error) -> Failure {
        let text = chain_text(e);
        match retry::classify_transport(&text) {
            Class::Transient => Failure::transient(format!("request failed: {text}")),
            class => Failure::new(class, text.clone(), self.certificate_error(&text)),
        }
    }

    fn certificate_error(&self, text: &str) -> anyhow::Error {
        // The innermost cause ("invalid peer certificate: UnknownIssuer") is the useful part.
        let why = text.rsplit("): ").next().unwrap_or(text);
        anyhow!(
            "Elasticsearch at {}: the server's certificate does not verify ({why}): set ELASTICSEARCH_CA_CERT to the PEM file of the CA that signed it, or ELASTICSEARCH_INSECURE=true to skip verification (test clusters only)",
            self.url
        )
    }

    /// The error for a run whose retries are spent, or that failed for good.
    pub fn error(&self, f: Failure) -> anyhow::Error {
        match f.exhausted {
            // Attempts, not retries: the wording tests and alerts already match.
            Some(retries) => anyhow!(
                "Elasticsearch at {} still failing after {} attempts: {}",
                self.url,
                retries + 1,
                f.why
            ),
            None => f.error,
        }
    }

    /// `check`: one request to the root endpoint, not retried (a check says what is wrong now).
    pub async fn info(&self) -> Result<()> {
        let response = match self.client.info().send().await {
            Ok(r) => r,
            Err(e) => {
                let f = self.transport_failure(&e);
                return Err(match f.class {
                    Class::Transient => anyhow!(
                        "cannot reach Elasticsearch at {}: {}",
                        self.url,
                        chain_text(&e)
                    ),
                    _ => f.error,
                });
            }
        };
        let status = response.status_code().as_u16();
        match status {
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
                tracing::info!(url = %self.url, %dist, %version, "sink reachable");
                Ok(())
            }
            401 | 403 => Err(self.auth_error(status)),
            code => Err(anyhow!(
                "Elasticsearch at {} answered HTTP {code}",
                self.url
            )),
        }
    }

    /// One bulk request of `expected` documents. `Err` is a failure of the whole request:
    /// transient (429, 5xx, reset, timeout: resend all of it) or final.
    pub async fn bulk(
        &self,
        parts: BulkParts<'_>,
        body: Vec<&[u8]>,
        expected: usize,
    ) -> Result<Answer, Failure> {
        let response = self
            .client
            .bulk(parts)
            // The client labels every body application/json; a bulk body is NDJSON, as the
            // docs say and both Elasticsearch and OpenSearch accept.
            .header(
                elasticsearch::http::headers::CONTENT_TYPE,
                elasticsearch::http::headers::HeaderValue::from_static("application/x-ndjson"),
            )
            .body(body)
            .send()
            .await
            .map_err(|e| self.transport_failure(&e))?;
        let status = response.status_code().as_u16();
        match status {
            200 => {}
            413 => return Ok(Answer::TooLarge),
            _ => return Err(self.status_failure(response, "the bulk request").await),
        }
        let bytes = response.bytes().await.map_err(|e| {
            Failure::transient(format!("reading the response failed: {}", chain_text(&e)))
        })?;
        let parsed: BulkResponse = serde_json::from_slice(&bytes).map_err(|e| {
            let error = anyhow!(e).context(format!(
                "unexpected bulk response: {}",
                excerpt(&String::from_utf8_lossy(&bytes))
            ));
            Failure::new(Class::Permanent, "unexpected bulk response", error)
        })?;
        if parsed.items.len() != expected {
            let error = anyhow!(
                "bulk response has {} items for {expected} documents",
                parsed.items.len()
            );
            return Err(Failure::new(Class::Permanent, error.to_string(), error));
        }
        Ok(Answer::Items(
            parsed
                .items
                .into_iter()
                .map(|item| classify(item.into_result()))
                .collect(),
        ))
    }

    /// `_mget` of `(index, id)` pairs: each document's `_source` as stored, `None` where the
    /// index or the document does not exist.
    pub async fn mget(&self, wanted: &[(&str, &str)]) -> Result<Vec<Option<Vec<u8>>>, Failure> {
        let docs: Vec<serde_json::Value> = wanted
            .iter()
            .map(|(index, id)| serde_json::json!({"_index": index, "_id": id}))
            .collect();
        let response = self
            .client
            .mget(elasticsearch::MgetParts::None)
            .body(serde_json::json!({ "docs": docs }))
            .send()
            .await
            .map_err(|e| self.transport_failure(&e))?;
        let parsed: MgetResponse = self.answer(response, "_mget").await?;
        if parsed.docs.len() != wanted.len() {
            let error = anyhow!(
                "_mget response has {} documents for {} ids",
                parsed.docs.len(),
                wanted.len()
            );
            return Err(Failure::new(Class::Permanent, error.to_string(), error));
        }
        Ok(parsed
            .docs
            .into_iter()
            .map(|d| match (d.found, d.source) {
                (Some(true), Some(source)) => serde_json::to_vec(&source).ok(),
                _ => None,
            })
            .collect())
    }

    /// One page of every document under `pattern` (a scroll, in no particular order): where
    /// each is (`index/id`) with its `_source`, and the scroll to go on with (`None`: that was
    /// the last page). `scroll`: the id the previous page returned.
    pub async fn scroll(
        &self,
        pattern: &str,
        scroll: Option<&str>,
        size: usize,
    ) -> Result<(Vec<(String, Vec<u8>)>, Option<String>), Failure> {
        let response = match scroll {
            None => {
                self.client
                    .search(elasticsearch::SearchParts::Index(&[pattern]))
                    .scroll("5m")
                    .ignore_unavailable(true)
                    .allow_no_indices(true)
                    .body(serde_json::json!({"size": size, "sort": ["_doc"]}))
                    .send()
                    .await
            }
            Some(id) => {
                self.client
                    .scroll(elasticsearch::ScrollParts::None)
                    .body(serde_json::json!({"scroll": "5m", "scroll_id": id}))
                    .send()
                    .await
            }
        }
        .map_err(|e| self.transport_failure(&e))?;
        let parsed: ScrollResponse = self.answer(response, "search").await?;
        let hits: Vec<(String, Vec<u8>)> = parsed
            .hits
            .hits
            .into_iter()
            .filter_map(|h| {
                let source = serde_json::to_vec(&h.source?).ok()?;
                Some((format!("{}/{}", h.index, h.id), source))
            })
            .collect();
        let next = match hits.len() < size {
            true => {
                if let Some(id) = &parsed.scroll_id {
                    // Frees the server's context now rather than when it times out.
                    let _ = self
                        .client
                        .clear_scroll(elasticsearch::ClearScrollParts::None)
                        .body(serde_json::json!({"scroll_id": id}))
                        .send()
                        .await;
                }
                None
            }
            false => parsed.scroll_id,
        };
        Ok((hits, next))
    }

    /// The JSON body of a 200 answer to a read request (`what`); any other status or body is a
    /// failure the retry policy can judge.
    async fn answer<T: serde::de::DeserializeOwned>(
        &self,
        response: Response,
        what: &str,
    ) -> Result<T, Failure> {
        if response.status_code().as_u16() != 200 {
            return Err(self.status_failure(response, what).await);
        }
        let bytes = response.bytes().await.map_err(|e| {
            Failure::transient(format!("reading the response failed: {}", chain_text(&e)))
        })?;
        serde_json::from_slice(&bytes).map_err(|e| {
            let error = anyhow!(e).context(format!(
                "unexpected {what} response: {}",
                excerpt(&String::from_utf8_lossy(&bytes))
            ));
            Failure::new(
                Class::Permanent,
                format!("unexpected {what} response"),
                error,
            )
        })
    }

    /// A request (`what`) answered with a status other than 200 or 413.
    async fn status_failure(&self, response: Response, what: &str) -> Failure {
        let status = response.status_code().as_u16();
        match retry::classify_status(status) {
            Class::Transient => {
                let after = retry::retry_after(response.headers());
                Failure::transient(format!("HTTP {status}")).with_retry_after(after)
            }
            Class::Auth => Failure::new(
                Class::Auth,
                format!("HTTP {status}"),
                self.auth_error(status),
            ),
            Class::Permanent => {
                let text = response.text().await.unwrap_or_default();
                Failure::new(
                    Class::Permanent,
                    format!("HTTP {status}"),
                    anyhow!(
                        "Elasticsearch at {} answered {what} with HTTP {status}: {}",
                        self.url,
                        excerpt(&text)
                    ),
                )
            }
        }
    }
}

/// What one bulk request came back with.
pub enum Answer {
    Items(Vec<ItemAnswer>),
    /// 413: the body is too large for the cluster.
    TooLarge,
}

pub enum ItemAnswer {
    Final(Outcome),
    Transient(String),
}

#[derive(Deserialize)]
struct ScrollResponse {
    #[serde(rename = "_scroll_id")]
    scroll_id: Option<String>,
    hits: ScrollHits,
}

#[derive(Deserialize)]
struct ScrollHits {
    hits: Vec<ScrollHit>,
}

#[derive(Deserialize)]
struct ScrollHit {
    #[serde(rename = "_index")]
    index: String,
    #[serde(rename = "_id")]
    id: String,
    #[serde(rename = "_source")]
    source: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct MgetResponse {
    docs: Vec<MgetDoc>,
}

/// One answer of `_mget`: found with its `_source`, not found, or an error (no such index).
#[derive(Deserialize)]
struct MgetDoc {
    found: Option<bool>,
    #[serde(rename = "_source")]
    source: Option<serde_json::Value>,
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
    /// `created`, or `updated` where an `index` action replaced a document.
    #[serde(default)]
    result: Option<String>,
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
            result: None,
        })
    }
}

/// One item's answer: stored, already there (409), worth resending (429, 5xx, a full queue),
/// or refused for good (a mapping error: the reason is kept).
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
        // `index` (INTEGRITY_CHAIN) replaced what an earlier run delivered under this id.
        200 | 201 if item.result.as_deref() == Some("updated") => {
            ItemAnswer::Final(Outcome::AlreadyPresent)
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn item(status: u16, error: Option<serde_json::Value>) -> BulkItem {
        BulkItem {
            status,
            error,
            result: None,
        }
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

    fn service(pairs: &[(&str, &str)]) -> Service {
        let env = crate::base::env::Env::from_pairs(pairs.iter().copied());
        Service::new(&Settings::from_env(&env).unwrap()).unwrap()
    }

    #[test]
    fn spent_retries_are_counted_as_attempts() {
        let s = service(&[("ELASTICSEARCH_HOST", "http://es:9200")]);
        let mut f = Failure::transient("HTTP 503");
        f.exhausted = Some(3);
        assert_eq!(
            s.error(f).to_string(),
            "Elasticsearch at http://es:9200/ still failing after 4 attempts: HTTP 503"
        );
    }

    #[test]
    fn credentials_refused_name_what_to_check() {
        let key = service(&[
            ("ELASTICSEARCH_HOST", "es"),
            ("ELASTICSEARCH_API_KEY", "id:k3y-value"),
        ]);
        let e = key.auth_error(401).to_string();
        assert!(
            e.contains("refused the credentials (401): check ELASTICSEARCH_API_KEY"),
            "{e}"
        );
        let basic = service(&[
            ("ELASTICSEARCH_HOST", "es"),
            ("ELASTICSEARCH_USERNAME", "u"),
        ]);
        let e = basic.auth_error(403).to_string();
        assert!(
            e.contains("refused access to index \"app_audit_log\" (403)")
                && e.contains("ELASTICSEARCH_USERNAME and ELASTICSEARCH_PASSWORD"),
            "{e}"
        );
    }
}
