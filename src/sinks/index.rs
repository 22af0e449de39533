//! Index setup: `audit-transfer init-index`, and ELASTICSEARCH_CREATE_INDEX=true at run start,
//! create the index with the mapping of the documents the sources write, unless it exists.
//!
//! Idempotent: an existing index is left exactly as it is (its mapping is never changed), and
//! an index another run created in between ("resource_already_exists_exception") is fine.
//!
//! `origin` and `environment` are `keyword`, not Elasticsearch's `constant_keyword`: that type
//! is not in OpenSearch, and one index may hold several origins.

use super::elasticsearch::ElasticsearchSink;
use crate::config::ElasticsearchConfig;
use anyhow::{anyhow, bail, Result};
use elasticsearch::indices::{IndicesCreateParts, IndicesExistsParts};
use serde_json::{json, Value};

/// The mapping of the audit documents: `@timestamp` and `audit_event` as structured-log-transfer
/// and the django-auditlog source write them. Other fields stay dynamically mapped.
pub fn audit_mapping() -> Value {
    let keyword = json!({"type": "keyword", "ignore_above": 256});
    json!({
        "settings": {"index": {"number_of_shards": 1}},
        "mappings": {
            "properties": {
                "@timestamp": {"type": "date"},
                "audit_event": {
                    "properties": {
                        "actor": {"type": "text", "fields": {"keyword": keyword}},
                        "date_time": {"type": "date"},
                        "operation": {"type": "keyword"},
                        "origin": {"type": "keyword"},
                        "environment": {"type": "keyword"},
                        "message": {"type": "text"},
                    }
                }
            }
        }
    })
}

/// Whether the index was created now (`true`) or existed already (`false`).
pub async fn ensure(cfg: &ElasticsearchConfig) -> Result<bool> {
    let sink = ElasticsearchSink::new(cfg)?;
    let client = sink.client();
    let index = cfg.index.as_str();
    let unreachable = |e: elasticsearch::Error| {
        anyhow!(
            "cannot reach Elasticsearch at {} to create index {index:?}: {e}",
            cfg.url
        )
    };
    let exists = client
        .indices()
        .exists(IndicesExistsParts::Index(&[index]))
        .send()
        .await
        .map_err(unreachable)?;
    match exists.status_code().as_u16() {
        200 => {
            tracing::info!(index, "index exists; left as it is");
            return Ok(false);
        }
        404 => {}
        401 | 403 => bail!(credentials(cfg, exists.status_code().as_u16())),
        code => bail!(
            "Elasticsearch at {} answered HTTP {code} when asked whether index {index:?} exists",
            cfg.url
        ),
    }
    let response = client
        .indices()
        .create(IndicesCreateParts::Index(index))
        .body(audit_mapping())
        .send()
        .await
        .map_err(unreachable)?;
    let status = response.status_code().as_u16();
    let body: Value = response.json().await.unwrap_or_default();
    match status {
        200 | 201 => {
            tracing::info!(index, "index created with the audit mapping");
            Ok(true)
        }
        400 if body.pointer("/error/type").and_then(Value::as_str)
            == Some("resource_already_exists_exception") =>
        {
            tracing::info!(
                index,
                "index created meanwhile by another run; left as it is"
            );
            Ok(false)
        }
        401 | 403 => bail!(credentials(cfg, status)),
        _ => bail!(
            "Elasticsearch at {} refused to create index {index:?} (HTTP {status}): {}",
            cfg.url,
            body.pointer("/error/reason")
                .and_then(Value::as_str)
                .unwrap_or("no reason given")
        ),
    }
}

fn credentials(cfg: &ElasticsearchConfig, status: u16) -> String {
    format!(
        "Elasticsearch at {} refused to create index {:?} (HTTP {status}): check ELASTICSEARCH_USERNAME/ELASTICSEARCH_PASSWORD or ELASTICSEARCH_API_KEY and the create_index privilege",
        cfg.url, cfg.index
    )
}
