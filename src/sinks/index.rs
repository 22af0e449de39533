//! Index setup: `audit-transfer init-index`, and ELASTICSEARCH_CREATE_INDEX=true at run start,
//! create the index with the mapping of the documents the sources write, unless it exists.
//! When the index name is a template (`audit-{topic}-{yyyy.MM.dd}`), an index template with
//! that mapping is created instead, matching every name the template renders, so each new
//! daily or per-topic index gets the mapping when the first document creates it.
//!
//! Idempotent: an existing index is left exactly as it is (its mapping is never changed), and
//! an index another run created in between ("resource_already_exists_exception") is fine.
//!
//! `origin` and `environment` are `keyword`, not Elasticsearch's `constant_keyword`: that type
//! is not in OpenSearch, and one index may hold several origins.

use super::elasticsearch::ElasticsearchSink;
use crate::config::ElasticsearchConfig;
use anyhow::{anyhow, bail, Result};
use elasticsearch::indices::{
    IndicesCreateParts, IndicesExistsIndexTemplateParts, IndicesExistsParts,
    IndicesPutIndexTemplateParts,
};
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

/// The index template's name for an index name template: its pattern, `*` spelled `_`.
pub fn template_name(pattern: &str) -> String {
    format!("audit-transfer-{}", pattern.replace('*', "_"))
}

/// Whether the index (or index template) was created now (`true`) or existed already (`false`).
pub async fn ensure(cfg: &ElasticsearchConfig) -> Result<bool> {
    let sink = ElasticsearchSink::new(cfg)?;
    let indices = sink.client().indices();
    let (what, pattern) = match &cfg.index_template {
        Some(t) => {
            let pattern = t.pattern();
            (
                format!("index template {:?}", template_name(&pattern)),
                Some(pattern),
            )
        }
        None => (format!("index {:?}", cfg.index), None),
    };
    let unreachable = |e: elasticsearch::Error| {
        anyhow!(
            "cannot reach Elasticsearch at {} to create {what}: {e}",
            cfg.url
        )
    };
    let exists = match &pattern {
        Some(p) => {
            indices
                .exists_index_template(IndicesExistsIndexTemplateParts::Name(&template_name(p)))
                .send()
                .await
        }
        None => {
            indices
                .exists(IndicesExistsParts::Index(&[cfg.index.as_str()]))
                .send()
                .await
        }
    }
    .map_err(unreachable)?;
    match exists.status_code().as_u16() {
        200 => {
            tracing::info!(name = %what, "exists; left as it is");
            return Ok(false);
        }
        404 => {}
        401 | 403 => bail!(credentials(cfg, &what, exists.status_code().as_u16())),
        code => bail!(
            "Elasticsearch at {} answered HTTP {code} when asked whether {what} exists",
            cfg.url
        ),
    }
    let response = match &pattern {
        // `create`: never replace a template someone else put there meanwhile.
        Some(p) => {
            indices
                .put_index_template(IndicesPutIndexTemplateParts::Name(&template_name(p)))
                .create(true)
                // Above Elasticsearch's built-in templates (100, e.g. `logs-*-*`), which an
                // overlapping pattern of the same priority would be refused against.
                .body(json!({"index_patterns": [p], "priority": 150, "template": audit_mapping()}))
                .send()
                .await
        }
        None => {
            indices
                .create(IndicesCreateParts::Index(&cfg.index))
                .body(audit_mapping())
                .send()
                .await
        }
    }
    .map_err(unreachable)?;
    let status = response.status_code().as_u16();
    let body: Value = response.json().await.unwrap_or_default();
    let reason = body
        .pointer("/error/reason")
        .and_then(Value::as_str)
        .unwrap_or("no reason given");
    match status {
        200 | 201 => {
            tracing::info!(name = %what, "created with the audit mapping");
            Ok(true)
        }
        400 if body.pointer("/error/type").and_then(Value::as_str)
            == Some("resource_already_exists_exception")
            || reason.contains("already exists") =>
        {
            tracing::info!(name = %what, "created meanwhile by another run; left as it is");
            Ok(false)
        }
        401 | 403 => bail!(credentials(cfg, &what, status)),
        _ => bail!(
            "Elasticsearch at {} refused to create {what} (HTTP {status}): {reason}",
            cfg.url
        ),
    }
}

fn credentials(cfg: &ElasticsearchConfig, what: &str, status: u16) -> String {
    format!(
        "Elasticsearch at {} refused to create {what} (HTTP {status}): check ELASTICSEARCH_USERNAME/ELASTICSEARCH_PASSWORD or ELASTICSEARCH_API_KEY and the create_index privilege",
        cfg.url
    )
}
