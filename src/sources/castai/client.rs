//! The CAST AI API client: one request per page, its answer classified for the shared retry
//! policy ([`crate::http::retry`]), a page's items and cursor parsed.

use super::settings::{ApiVersion, Settings};
use crate::base::exit::{chain_text, config_error, excerpt};
use crate::http::retry::{
    classify_status, classify_transport, is_certificate_error, retry_after, Class, Failure,
};
use anyhow::{anyhow, Context, Result};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;
use serde_json::Value;

/// What to ask for: a window's first page, or a later one by its cursor.
pub(super) enum Query {
    First {
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    },
    /// v1 sends only the cursor; v2 repeats the query with it (see `params`).
    Next {
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        cursor: String,
    },
}

#[derive(Debug)]
pub(super) struct ApiPage {
    pub items: Vec<Value>,
    /// `None` at the window's end (an empty or missing `nextCursor`).
    pub next: Option<String>,
}

#[derive(Deserialize)]
struct Response {
    #[serde(default)]
    items: Option<Vec<Value>>,
    #[serde(default)]
    events: Option<Vec<Value>>,
    #[serde(default, rename = "nextCursor")]
    next_cursor: Option<String>,
}

pub(super) struct Client {
    http: reqwest::Client,
    endpoint: url::Url,
    settings: Settings,
}

impl Client {
    pub fn new(settings: &Settings) -> Result<Self> {
        let path = match settings.version {
            ApiVersion::V1 => "v1/audit",
            ApiVersion::V2 => "v2/audit/events",
        };
        // Keep a path prefix of CASTAI_API_URL (a proxy) when joining.
        let mut base = settings.api_url.clone();
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        let endpoint = base.join(path).context("CASTAI_API_URL")?;
        let http = reqwest::Client::builder()
            .timeout(settings.retry.timeout)
            .user_agent(concat!("audit-transfer/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot set up the HTTP client")?;
        Ok(Client {
            http,
            endpoint,
            settings: settings.clone(),
        })
    }

    fn params(&self, query: &Query, limit: usize) -> Vec<(&'static str, String)> {
        let date = |t: &DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::AutoSi, true);
        let mut p = vec![("page.limit", limit.to_string())];
        let (from, to, cursor) = match query {
            Query::First { from, to } => (from, to, None),
            Query::Next { from, to, cursor } => (from, to, Some(cursor)),
        };
        match self.settings.version {
            ApiVersion::V1 => match cursor {
                // As the receiver does: the cursor carries the rest of the query.
                Some(c) => p.push(("page.cursor", c.clone())),
                None => {
                    p.push(("fromDate", date(from)));
                    p.push(("toDate", date(to)));
                    if let Some(c) = &self.settings.cluster_id {
                        p.push(("clusterId", c.clone()));
                    }
                }
            },
            ApiVersion::V2 => {
                // A page token is only valid with the query that produced it: repeat it.
                p.push(("fromDate", date(from)));
                p.push(("toDate", date(to)));
                p.push(("sort.field", "occurred_at".into()));
                p.push(("sort.order", "ASC".into()));
                if let Some(c) = &self.settings.cluster_id {
                    p.push(("filter.clusters", c.clone()));
                }
                if let Some(c) = cursor {
                    p.push(("page.cursor", c.clone()));
                }
            }
        }
        p
    }

    /// One page, with 408/429/5xx/connection failures retried.
    pub async fn page(&self, query: &Query) -> Result<ApiPage> {
        self.get(&self.params(query, self.settings.page_limit))
            .await
    }

    /// The smallest request the API accepts: proves URL and key.
    pub async fn probe(&self, query: &Query) -> Result<()> {
        let limit = match self.settings.version {
            ApiVersion::V1 => 10,
            ApiVersion::V2 => 1,
        };
        self.get(&self.params(query, limit)).await.map(|_| ())
    }

    async fn get(&self, params: &[(&'static str, String)]) -> Result<ApiPage> {
        self.settings
            .retry
            .run("CAST AI API", || self.attempt(params))
            .await
            .map_err(|f| f.into_error(&format!("CAST AI at {}", self.endpoint)))
    }

    /// One request, its failure classified: the policy decides whether to try again.
    async fn attempt(&self, params: &[(&'static str, String)]) -> Result<ApiPage, Failure> {
        let response = self
            .http
            .get(self.endpoint.clone())
            .header("X-API-Key", self.settings.api_key.expose())
            .header("Accept", "application/json")
            .query(params)
            .send()
            .await;
        let r = match response {
            Ok(r) => r,
            Err(e) => {
                let text = chain_text(&e);
                if is_certificate_error(&text) {
                    // Will not verify on the next attempt either, and there is no CA setting
                    // to point at: the roots are the system's. The request URL in front of
                    // the reason adds nothing.
                    let reason = crate::http::tls::why_untrusted(&text);
                    return Err(Failure::new(
                        Class::Permanent,
                        format!("certificate not trusted: {reason}"),
                        anyhow!(
                            "the TLS certificate of CAST AI at {} is not trusted by the system's \
                             root certificates (CAST AI has no setting for another CA; check \
                             CASTAI_API_URL, or a proxy in between): {reason}",
                            self.settings.api_url
                        ),
                    ));
                }
                let why = format!("request failed: {text}");
                let error = anyhow!("CAST AI at {}: {why}", self.endpoint);
                return Err(Failure::new(classify_transport(&text), why, error));
            }
        };
        let status = r.status().as_u16();
        if status == 200 {
            return match r.bytes().await {
                Ok(body) => self
                    .parse(&body)
                    .map_err(|e| Failure::new(Class::Permanent, "unexpected response", e)),
                Err(e) => Err(Failure::transient(format!(
                    "reading the response failed: {}",
                    chain_text(&e)
                ))),
            };
        }
        match classify_status(status) {
            Class::Auth => Err(Failure::new(
                Class::Auth,
                format!("HTTP {status}"),
                config_error(format!(
                    "CAST AI at {} refused CASTAI_API_KEY (HTTP {status}): check CASTAI_API_KEY \
                     (a valid key with access to audit logs) and CASTAI_API_URL",
                    self.settings.api_url
                )),
            )),
            Class::Transient => {
                let after = retry_after(r.headers());
                Err(Failure::transient(format!("HTTP {status}")).with_retry_after(after))
            }
            Class::Permanent => {
                let text = r.text().await.unwrap_or_default();
                Err(Failure::new(
                    Class::Permanent,
                    format!("HTTP {status}"),
                    anyhow!(
                        "CAST AI at {} answered HTTP {status}: {}",
                        self.endpoint,
                        excerpt(&text)
                    ),
                ))
            }
        }
    }

    fn parse(&self, body: &[u8]) -> Result<ApiPage> {
        let r: Response = serde_json::from_slice(body).with_context(|| {
            format!(
                "unexpected CAST AI response: {}",
                excerpt(&String::from_utf8_lossy(body))
            )
        })?;
        // gRPC gateways leave out empty lists, so a missing list is an empty page.
        let items = match self.settings.version {
            ApiVersion::V1 => r.items,
            ApiVersion::V2 => r.events,
        }
        .unwrap_or_default();
        Ok(ApiPage {
            items,
            next: r.next_cursor.filter(|c| !c.is_empty()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::env::Env;
    use crate::base::exit::{exit_for, one_line, Exit};
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::{IntoResponse, Response as HttpResponse};
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    const KEY: &str = "client-test-key-1234";

    /// Status, `Retry-After`, body.
    type Answer = (u16, Option<&'static str>, &'static str);

    /// A server that answers with `script`, one answer per request, and keeps the API keys
    /// it was sent.
    #[derive(Clone, Default)]
    struct Scripted {
        script: Arc<Mutex<VecDeque<Answer>>>,
        keys: Arc<Mutex<Vec<String>>>,
    }

    impl Scripted {
        async fn start(answers: &[Answer]) -> (Self, String) {
            let s = Scripted::default();
            s.script.lock().unwrap().extend(answers.iter().copied());
            let app = axum::Router::new().fallback(answer).with_state(s.clone());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            (s, url)
        }

        fn requests(&self) -> usize {
            self.keys.lock().unwrap().len()
        }
    }

    async fn answer(
        axum::extract::State(s): axum::extract::State<Scripted>,
        headers: HeaderMap,
    ) -> HttpResponse {
        let key = headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        s.keys.lock().unwrap().push(key.to_string());
        let (status, retry_after, body) = s
            .script
            .lock()
            .unwrap()
            .pop_front()
            .expect("no more answers scripted");
        let mut r = (StatusCode::from_u16(status).unwrap(), body.to_string()).into_response();
        if let Some(after) = retry_after {
            r.headers_mut()
                .insert("retry-after", after.parse().unwrap());
        }
        r
    }

    fn client(url: &str, extra: &[(&str, &str)]) -> Client {
        let mut pairs = vec![
            ("CASTAI_API_URL", url),
            ("CASTAI_API_KEY", KEY),
            ("CASTAI_STATE_FILE", "/tmp/castai-client-test.json"),
            ("CASTAI_RETRY_INITIAL_MS", "1"),
        ];
        pairs.extend_from_slice(extra);
        Client::new(&Settings::from_env(&Env::from_pairs(pairs)).unwrap()).unwrap()
    }

    fn query() -> Query {
        let now = Utc::now();
        Query::First {
            from: now - chrono::Duration::minutes(5),
            to: now,
        }
    }

    #[tokio::test]
    async fn transient_statuses_are_retried_and_retry_after_honoured() {
        let (server, url) = Scripted::start(&[
            (503, Some("1"), "busy"),
            (408, None, ""),
            (200, None, r#"{"items":[{"id":"a"}],"nextCursor":"c2"}"#),
        ])
        .await;
        let started = Instant::now();
        let page = client(&url, &[]).page(&query()).await.unwrap();
        assert!(started.elapsed() >= Duration::from_secs(1), "Retry-After");
        assert_eq!(page.items.len(), 1);
        assert_eq!(page.next.as_deref(), Some("c2"));
        assert_eq!(server.requests(), 3);
        assert!(server.keys.lock().unwrap().iter().all(|k| k == KEY));
    }

    #[tokio::test]
    async fn spent_retries_name_the_endpoint_and_the_last_failure() {
        let (server, url) = Scripted::start(&[(429, None, ""); 3]).await;
        let e = client(&url, &[("CASTAI_MAX_RETRIES", "2")])
            .page(&query())
            .await
            .unwrap_err();
        assert_eq!(
            one_line(&e),
            format!("CAST AI at {url}/v1/audit failed after 2 retries: HTTP 429")
        );
        assert_eq!(exit_for(&e), Exit::Failed);
        assert_eq!(server.requests(), 3);
    }

    #[tokio::test]
    async fn refused_key_is_a_config_error_at_once() {
        for status in [401, 403] {
            let (server, url) = Scripted::start(&[(status, None, "denied")]).await;
            let e = client(&url, &[]).page(&query()).await.unwrap_err();
            let text = one_line(&e);
            assert_eq!(exit_for(&e), Exit::Config, "{text}");
            assert!(text.contains("CASTAI_API_KEY"), "{text}");
            assert!(text.contains(&format!("HTTP {status}")), "{text}");
            assert!(!text.contains(KEY), "{text}");
            assert_eq!(server.requests(), 1);
        }
    }

    #[tokio::test]
    async fn other_answers_fail_at_once_with_an_excerpt() {
        let (server, url) = Scripted::start(&[(404, None, "no route /v1/audit here")]).await;
        let e = client(&url, &[]).page(&query()).await.unwrap_err();
        let text = one_line(&e);
        assert!(text.contains("answered HTTP 404"), "{text}");
        assert!(text.contains("no route /v1/audit here"), "{text}");
        assert_eq!(exit_for(&e), Exit::Failed);
        assert_eq!(server.requests(), 1);

        let (server, url) = Scripted::start(&[(200, None, "<html>proxy login</html>")]).await;
        let e = client(&url, &[]).page(&query()).await.unwrap_err();
        let text = one_line(&e);
        assert!(text.contains("unexpected CAST AI response"), "{text}");
        assert!(text.contains("proxy login"), "{text}");
        assert_eq!(server.requests(), 1);
    }

    #[test]
    fn endpoint_keeps_a_path_prefix_of_the_url() {
        let c = client("http://proxy.example/castai", &[]);
        assert_eq!(c.endpoint.as_str(), "http://proxy.example/castai/v1/audit");
        let c = client(
            "http://proxy.example/castai/",
            &[("CASTAI_API_VERSION", "v2")],
        );
        assert_eq!(
            c.endpoint.as_str(),
            "http://proxy.example/castai/v2/audit/events"
        );
    }
}
