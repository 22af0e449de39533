//! The Cato GraphQL client: one POST per feed page with the query in variables form, the answer
//! classified for the shared retry policy ([`crate::http::retry`]).
//!
//! Cato answers most failures with HTTP 200 and `errors[]`: "rate limit for operation: ..." is
//! transient (retried with the policy's backoff); "permission denied" (as for a bad key) and
//! HTTP 401/403 are a refused key; an error about the marker we sent is [`MarkerRefused`];
//! anything else, and a non-empty `accounts[].errorString`, fails the run with nothing advanced.

use super::settings::{Feed, Settings};
use crate::base::exit::{chain_text, config_error, excerpt};
use crate::http::retry::{
    classify_status, classify_transport, is_certificate_error, retry_after, Class, Failure,
};
use anyhow::{anyhow, Context, Result};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};

const EVENTS_QUERY: &str = "query eventsFeed($accountIDs:[ID!],$marker:String,$filters:[EventFeedFieldFilterInput!]){eventsFeed(accountIDs:$accountIDs,marker:$marker,filters:$filters){marker fetchedCount accounts{id errorString records{time fieldsMap}}}}";
const AUDIT_QUERY: &str = "query auditFeed($accountIDs:[ID!],$timeFrame:TimeFrame!,$marker:String){auditFeed(accountIDs:$accountIDs,timeFrame:$timeFrame,marker:$marker){from to marker fetchedCount hasMore accounts{id records{time fieldsMap}}}}";

/// The server no longer accepts the marker we sent (expired, or from elsewhere).
#[derive(Debug)]
pub(super) struct MarkerRefused(pub String);

impl std::fmt::Display for MarkerRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cato refused the saved marker: {}", self.0)
    }
}

impl std::error::Error for MarkerRefused {}

/// An auditFeed window, `utc.{from--to}` to the second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Window {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

impl Window {
    pub fn time_frame(&self) -> String {
        let f = "%Y-%m-%d/%H:%M:%S";
        format!("utc.{{{}--{}}}", self.from.format(f), self.to.format(f))
    }
}

#[derive(Debug)]
pub(super) struct FeedPage {
    pub marker: String,
    pub fetched: usize,
    /// auditFeed only.
    pub has_more: bool,
    /// Each record with the account it came under.
    pub records: Vec<(String, Value)>,
}

#[derive(Deserialize)]
struct Reply {
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    errors: Option<Vec<GqlError>>,
}

#[derive(Deserialize)]
struct GqlError {
    #[serde(default)]
    message: String,
    #[serde(default)]
    extensions: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FeedData {
    #[serde(default)]
    marker: Option<String>,
    fetched_count: usize,
    #[serde(default)]
    has_more: Option<bool>,
    #[serde(default)]
    accounts: Option<Vec<Account>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Account {
    id: String,
    #[serde(default)]
    error_string: Option<String>,
    #[serde(default)]
    records: Option<Vec<Value>>,
}

pub(super) struct Client {
    http: reqwest::Client,
    settings: Settings,
}

impl Client {
    pub fn new(settings: &Settings) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(settings.retry.timeout)
            .user_agent(concat!("audit-transfer/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot set up the HTTP client")?;
        Ok(Client {
            http,
            settings: settings.clone(),
        })
    }

    fn body(&self, marker: &str, window: Option<Window>) -> Value {
        let s = &self.settings;
        match s.feed {
            Feed::Events => {
                let mut filters = Vec::new();
                for (field, values) in [
                    ("event_type", &s.event_types),
                    ("event_sub_type", &s.event_sub_types),
                ] {
                    if !values.is_empty() {
                        filters
                            .push(json!({"fieldName": field, "operator": "in", "values": values}));
                    }
                }
                json!({"operationName": "eventsFeed", "query": EVENTS_QUERY,
                    "variables": {"accountIDs": s.account_ids, "marker": marker, "filters": filters}})
            }
            Feed::Audit => {
                let window = window.expect("an auditFeed query has a window");
                json!({"operationName": "auditFeed", "query": AUDIT_QUERY,
                    "variables": {"accountIDs": s.account_ids, "marker": marker,
                        "timeFrame": window.time_frame()}})
            }
        }
    }

    /// One page after `marker` (auditFeed: within `window`), failures retried per the policy.
    pub async fn page(&self, marker: &str, window: Option<Window>) -> Result<FeedPage> {
        let body = self.body(marker, window);
        self.settings
            .retry
            .run("Cato API", || self.attempt(&body, marker))
            .await
            .map_err(|f| f.into_error(&format!("Cato at {}", self.settings.api_url)))
    }

    async fn attempt(&self, body: &Value, marker: &str) -> Result<FeedPage, Failure> {
        let url = &self.settings.api_url;
        let response = self
            .http
            .post(url.clone())
            .header("x-api-key", self.settings.api_key.expose())
            .json(body)
            .send()
            .await;
        let r = match response {
            Ok(r) => r,
            Err(e) => {
                let text = chain_text(&e);
                if is_certificate_error(&text) {
                    return Err(Failure::new(
                        Class::Permanent,
                        "certificate not trusted",
                        anyhow!(
                            "the TLS certificate of Cato at {url} is not trusted by the system's \
                             root certificates (check CATO_API_URL, or a proxy in between): {text}"
                        ),
                    ));
                }
                let why = format!("request failed: {text}");
                let error = anyhow!("Cato at {url}: {why}");
                return Err(Failure::new(classify_transport(&text), why, error));
            }
        };
        let status = r.status().as_u16();
        if status == 200 {
            let body = r.bytes().await.map_err(|e| {
                Failure::transient(format!("reading the response failed: {}", chain_text(&e)))
            })?;
            return self.parse(&body, marker);
        }
        match classify_status(status) {
            Class::Auth => Err(self.refused(&format!("HTTP {status}"))),
            Class::Transient => {
                let after = retry_after(r.headers());
                Err(Failure::transient(format!("HTTP {status}")).with_retry_after(after))
            }
            Class::Permanent => {
                let text = r.text().await.unwrap_or_default();
                Err(Failure::new(
                    Class::Permanent,
                    format!("HTTP {status}"),
                    anyhow!("Cato at {url} answered HTTP {status}: {}", excerpt(&text)),
                ))
            }
        }
    }

    fn refused(&self, why: &str) -> Failure {
        Failure::new(
            Class::Auth,
            why.to_string(),
            config_error(format!(
                "Cato at {} refused CATO_API_KEY ({why}): check CATO_API_KEY (a key with access \
                 to {} of CATO_ACCOUNT_ID) and CATO_API_URL",
                self.settings.api_url,
                self.settings.feed.operation()
            )),
        )
    }

    fn parse(&self, body: &[u8], marker: &str) -> Result<FeedPage, Failure> {
        let op = self.settings.feed.operation();
        let unexpected = |why: String| {
            Failure::new(
                Class::Permanent,
                "unexpected response",
                anyhow!(
                    "unexpected answer from Cato's {op} ({why}): {}",
                    excerpt(&String::from_utf8_lossy(body))
                ),
            )
        };
        let reply: Reply = serde_json::from_slice(body).map_err(|e| unexpected(e.to_string()))?;
        if let Some(errors) = reply.errors.filter(|e| !e.is_empty()) {
            let text = errors
                .iter()
                .map(|e| e.message.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            let lower = text.to_ascii_lowercase();
            if ["rate limit", "rate-limit", "ratelimit"]
                .iter()
                .any(|n| lower.contains(n))
            {
                return Err(Failure::transient(format!(
                    "rate limited: {}",
                    excerpt(&text)
                )));
            }
            let code104 = errors.iter().any(|e| {
                e.extensions
                    .as_ref()
                    .and_then(|x| x.get("code"))
                    .and_then(Value::as_str)
                    == Some("Code104")
            });
            if code104 || lower.contains("permission denied") || lower.contains("unauthorized") {
                return Err(self.refused(&excerpt(&text)));
            }
            if !marker.is_empty() && lower.contains("marker") {
                return Err(Failure::new(
                    Class::Permanent,
                    "marker refused",
                    anyhow::Error::new(MarkerRefused(excerpt(&text))),
                ));
            }
            return Err(Failure::new(
                Class::Permanent,
                "GraphQL error",
                anyhow!("Cato's {op} answered with errors: {}", excerpt(&text)),
            ));
        }
        let data = reply
            .data
            .and_then(|mut d| d.get_mut(op).map(Value::take))
            .filter(|d| !d.is_null())
            .ok_or_else(|| unexpected(format!("no data.{op}")))?;
        let data: FeedData = serde_json::from_value(data).map_err(|e| unexpected(e.to_string()))?;
        let mut records = Vec::new();
        for account in data.accounts.unwrap_or_default() {
            if let Some(e) = account.error_string.filter(|e| !e.trim().is_empty()) {
                return Err(Failure::new(
                    Class::Permanent,
                    "account error",
                    anyhow!(
                        "Cato's {op} failed for account {}: {}",
                        account.id,
                        excerpt(&e)
                    ),
                ));
            }
            for rec in account.records.unwrap_or_default() {
                records.push((account.id.clone(), rec));
            }
        }
        Ok(FeedPage {
            marker: data.marker.unwrap_or_default(),
            fetched: data.fetched_count,
            has_more: data.has_more.unwrap_or(false),
            records,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::env::Env;
    use crate::base::exit::{exit_for, one_line, Exit};

    fn client(feed: &str) -> Client {
        let env = Env::from_pairs([
            ("CATO_API_KEY", "secret-key-123"),
            ("CATO_ACCOUNT_ID", "4242,77"),
            ("CATO_FEED", feed),
            ("CATO_STATE_FILE", "/tmp/cato.json"),
        ]);
        Client::new(&Settings::from_env(&env).unwrap()).unwrap()
    }

    fn parse(c: &Client, body: &str, marker: &str) -> Result<FeedPage, Failure> {
        c.parse(body.as_bytes(), marker)
    }

    #[test]
    fn time_frame_is_the_absolute_utc_form() {
        let w = Window {
            from: "2026-02-28T22:00:00Z".parse().unwrap(),
            to: "2026-03-01T06:00:00Z".parse().unwrap(),
        };
        assert_eq!(
            w.time_frame(),
            "utc.{2026-02-28/22:00:00--2026-03-01/06:00:00}"
        );
    }

    #[test]
    fn events_body_carries_filters_and_marker() {
        let mut env = vec![
            ("CATO_API_KEY", "k"),
            ("CATO_ACCOUNT_ID", "4242"),
            ("CATO_FEED", "events"),
            ("CATO_STATE_FILE", "/tmp/cato.json"),
            ("CATO_EVENT_TYPES", "Security"),
        ];
        env.push(("CATO_EVENT_SUB_TYPES", "Internet Firewall,WAN Firewall"));
        let c = Client::new(&Settings::from_env(&Env::from_pairs(env)).unwrap()).unwrap();
        let b = c.body("m1", None);
        assert_eq!(b["variables"]["marker"], "m1");
        assert_eq!(b["variables"]["accountIDs"], json!(["4242"]));
        assert_eq!(
            b["variables"]["filters"][1],
            json!({"fieldName": "event_sub_type", "operator": "in",
                "values": ["Internet Firewall", "WAN Firewall"]})
        );
    }

    #[test]
    fn answers_are_classified() {
        let c = client("events");
        let ok = r#"{"data":{"eventsFeed":{"marker":"m2","fetchedCount":1,"accounts":[{"id":"4242","errorString":null,"records":[{"time":"2026-02-26T09:29:16Z","fieldsMap":{"event_id":"e"}}]},{"id":"77","errorString":"","records":[]}]}}}"#;
        let p = parse(&c, ok, "").unwrap();
        assert_eq!(
            (p.marker.as_str(), p.fetched, p.records.len()),
            ("m2", 1, 1)
        );
        assert_eq!(p.records[0].0, "4242");

        let limited = r#"{"errors":[{"message":"rate limit for operation: eventsFeed"}]}"#;
        assert_eq!(parse(&c, limited, "m").unwrap_err().class, Class::Transient);

        let denied = r#"{"errors":[{"message":"permission denied","path":["eventsFeed"],"extensions":{"code":"Code104"}}],"data":{"eventsFeed":null}}"#;
        let f = parse(&c, denied, "").unwrap_err();
        assert_eq!(f.class, Class::Auth);
        let e = f.into_error("x");
        assert_eq!(exit_for(&e), Exit::Config);
        assert!(one_line(&e).contains("CATO_API_KEY") && !one_line(&e).contains("secret-key"));

        let marker = r#"{"errors":[{"message":"invalid marker"}],"data":{"eventsFeed":null}}"#;
        let e = parse(&c, marker, "m-old").unwrap_err().into_error("x");
        assert!(e.downcast_ref::<MarkerRefused>().is_some(), "{e}");
        // Without a marker sent, the same words are an ordinary error.
        let e = parse(&c, marker, "").unwrap_err().into_error("x");
        assert!(e.downcast_ref::<MarkerRefused>().is_none());

        let account = r#"{"data":{"eventsFeed":{"marker":"m3","fetchedCount":0,"accounts":[{"id":"77","errorString":"no access","records":[]}]}}}"#;
        let f = parse(&c, account, "").unwrap_err();
        assert_eq!(f.class, Class::Permanent);
        assert!(one_line(&f.into_error("x")).contains("account 77: no access"));

        let f = parse(&c, r#"{"data":{"eventsFeed":null}}"#, "").unwrap_err();
        assert_eq!(f.class, Class::Permanent);
        let f = parse(&c, "<html>proxy</html>", "").unwrap_err();
        assert!(one_line(&f.into_error("x")).contains("proxy"));
    }

    #[test]
    fn audit_has_more_is_read() {
        let c = client("audit");
        let body = r#"{"data":{"auditFeed":{"from":"2026-03-01T00:00:00Z","to":"2026-03-01T06:00:00Z","marker":"1772326923000_","fetchedCount":1,"hasMore":true,"accounts":[{"id":"4242","records":[{"time":"2026-03-01T01:02:03Z","fieldsMap":{"admin":"Jane"}}]}]}}}"#;
        let p = parse(&c, body, "").unwrap();
        assert!(p.has_more);
        assert_eq!(p.marker, "1772326923000_");
    }
}
