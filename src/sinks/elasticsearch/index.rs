//! Index setup: `audit-transfer init-index`, and ELASTICSEARCH_CREATE_INDEX=true at run start,
//! create the index with the audit mapping, unless it exists. When the index name is a template
//! (`audit-{topic}-{yyyy.MM.dd}`), an index template with that mapping is created instead,
//! matching every name the template renders, so each new daily or per-topic index gets the
//! mapping when the first document creates it.
//!
//! The mapping fixes only what every source guarantees and leaves the rest to dynamic mapping:
//! the single-column source passes the application's JSON through unchanged, and City of
//! Helsinki's applications write `audit_event.actor` and `audit_event.target` as objects where
//! django-auditlog documents hold strings; a mapping that fixed either would refuse one of them.
//!
//! Idempotent: an existing index (or index template) is left exactly as it is, its mapping is
//! never changed, and one another run created in between ("resource_already_exists_exception")
//! is fine. That is also the way to a mapping of one's own: create the index or the index
//! template first (or let ELASTICSEARCH_CREATE_INDEX stay false), and this leaves it alone.
//!
//! `origin` and `environment` are `keyword`, not Elasticsearch's `constant_keyword`: that type
//! is not in OpenSearch, and one index may hold several origins.

use super::service::Service;
use super::settings::Settings;
use crate::http::retry::{self, Class, Failure};
use anyhow::Result;
use elasticsearch::http::response::Response;
use elasticsearch::indices::{
    IndicesCreateParts, IndicesExistsIndexTemplateParts, IndicesExistsParts,
    IndicesPutIndexTemplateParts,
};
use serde_json::{json, Value};

/// The mapping of the audit documents: `@timestamp` as a date (every source sets it), and the
/// short identifying strings of `audit_event` that both the django-auditlog document and
/// Helsinki's applications write as strings, as keywords (`ignore_above`: a long value is kept
/// but not indexed, never refused). Everything else, `actor`, `target` and `message`
/// included, is mapped dynamically by the first document that has it.
pub fn audit_mapping() -> Value {
    let keyword = json!({"type": "keyword", "ignore_above": 1024});
    json!({
        "settings": {"index": {"number_of_shards": 1}},
        "mappings": {
            "properties": {
                "@timestamp": {"type": "date"},
                "audit_event": {
                    "properties": {
                        "operation": keyword,
                        "origin": keyword,
                        "environment": keyword,
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
/// Both requests are retried by the shared policy like bulk requests.
pub async fn ensure(cfg: &Settings, service: &Service) -> Result<bool> {
    let indices = service.client().indices();
    let pattern = cfg.index_template.as_ref().map(|t| t.pattern());
    let what = match &pattern {
        Some(p) => format!("index template {:?}", template_name(p)),
        None => format!("index {:?}", cfg.index),
    };
    let url = &service.url;
    let fail = |f: Failure| {
        match f.exhausted {
        Some(retries) => anyhow::anyhow!(
            "cannot reach Elasticsearch at {url} to create {what} (still failing after {} attempts): {}",
            retries + 1,
            f.why
        ),
        None => f.error,
    }
    };

    let exists = cfg
        .retry
        .run("Elasticsearch", || async {
            let response = match &pattern {
                Some(p) => {
                    indices
                        .exists_index_template(IndicesExistsIndexTemplateParts::Name(
                            &template_name(p),
                        ))
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
            .map_err(|e| service.transport_failure(&e))?;
            match response.status_code().as_u16() {
                200 => Ok(true),
                404 => Ok(false),
                status => Err(failure(url, &what, status, response, Step::Exists).await),
            }
        })
        .await
        .map_err(fail)?;
    if exists {
        tracing::info!(name = %what, "exists; left as it is");
        return Ok(false);
    }

    cfg.retry
        .run("Elasticsearch", || async {
            let response = match &pattern {
                // `create`: never replace a template someone else put there meanwhile.
                Some(p) => {
                    indices
                        .put_index_template(IndicesPutIndexTemplateParts::Name(&template_name(p)))
                        .create(true)
                        // Above Elasticsearch's built-in templates (100, e.g. `logs-*-*`), which
                        // an overlapping pattern of the same priority would be refused against.
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
            .map_err(|e| service.transport_failure(&e))?;
            match response.status_code().as_u16() {
                200 | 201 => {
                    tracing::info!(name = %what, "created with the audit mapping");
                    Ok(true)
                }
                400 => {
                    let body: Value = response.json().await.unwrap_or_default();
                    let reason = reason(&body);
                    // Also when an earlier attempt created it and its answer was lost.
                    if body.pointer("/error/type").and_then(Value::as_str)
                        == Some("resource_already_exists_exception")
                        || reason.contains("already exists")
                    {
                        tracing::info!(name = %what, "created meanwhile by another run; left as it is");
                        Ok(false)
                    } else {
                        let error = anyhow::anyhow!(
                            "Elasticsearch at {url} refused to create {what} (HTTP 400): {reason}"
                        );
                        Err(Failure::new(Class::Permanent, "HTTP 400", error))
                    }
                }
                status => Err(failure(url, &what, status, response, Step::Create).await),
            }
        })
        .await
        .map_err(fail)
}

/// Which request of [`ensure`] was answered.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    Exists,
    Create,
}

/// An answer other than the expected ones, classified like any other HTTP answer.
async fn failure(
    url: &url::Url,
    what: &str,
    status: u16,
    response: Response,
    step: Step,
) -> Failure {
    match retry::classify_status(status) {
        Class::Transient => Failure::transient(format!("HTTP {status}")).with_retry_after(
            retry::retry_after(response.headers()),
        ),
        Class::Auth => Failure::new(
            Class::Auth,
            format!("HTTP {status}"),
            anyhow::anyhow!(
                "Elasticsearch at {url} refused to create {what} (HTTP {status}): check ELASTICSEARCH_USERNAME/ELASTICSEARCH_PASSWORD or ELASTICSEARCH_API_KEY and the create_index privilege"
            ),
        ),
        Class::Permanent => {
            let body: Value = response.json().await.unwrap_or_default();
            let error = match step {
                Step::Create => anyhow::anyhow!(
                    "Elasticsearch at {url} refused to create {what} (HTTP {status}): {}",
                    reason(&body)
                ),
                Step::Exists => anyhow::anyhow!(
                    "Elasticsearch at {url} answered HTTP {status} when asked whether {what} exists"
                ),
            };
            Failure::new(Class::Permanent, format!("HTTP {status}"), error)
        }
    }
}

fn reason(body: &Value) -> &str {
    body.pointer("/error/reason")
        .and_then(Value::as_str)
        .unwrap_or("no reason given")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 14 (3): a mapping that fixes `actor` (or `target`) refuses one source's documents.
    #[test]
    fn the_mapping_leaves_source_shaped_fields_to_dynamic_mapping() {
        let m = audit_mapping();
        let props = &m["mappings"]["properties"];
        assert_eq!(props["@timestamp"]["type"], "date");
        let event = &props["audit_event"]["properties"];
        for free in ["actor", "target", "message", "date_time"] {
            assert!(event.get(free).is_none(), "{free} is fixed: {m}");
        }
        for keyword in ["operation", "origin", "environment"] {
            assert_eq!(event[keyword]["type"], "keyword");
        }
        assert_eq!(template_name("audit-*-*"), "audit-transfer-audit-_-_");
    }
}
