//! A client for the CDP audit API: `POST /api/v1/audit/<operation>` with a JSON body, signed
//! per request (or an access token). Failures are retried by the shared policy
//! ([`crate::http::retry`]: 408, 429, 5xx and connection errors), and every attempt is signed
//! anew because the signed date changes.

use super::settings::{Auth, Settings};
use super::signing::altus_date;
use crate::base::exit::chain_text;
use crate::http::retry::{self, Class, Failure, Policy};
use anyhow::{bail, Context, Result};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

const CONTENT_TYPE: &str = "application/json";

/// An error answer of the API: status, the service's `code` and `message`, and the request id
/// Cloudera support asks for.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub operation: String,
    pub status: u16,
    pub code: String,
    pub message: String,
    pub request_id: Option<String>,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CDP {} {}", self.operation, self.answer())
    }
}

impl std::error::Error for ApiError {}

impl ApiError {
    fn from_response(
        operation: &str,
        status: u16,
        request_id: Option<String>,
        body: &[u8],
    ) -> Self {
        let parsed: Option<Value> = serde_json::from_slice(body).ok();
        let field = |k: &str| {
            parsed
                .as_ref()
                .and_then(|v| v.get(k))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        // Services differ: `message`, `error`, or `errorMessages[]`; some answer with HTML.
        let message = field("message")
            .or_else(|| field("error"))
            .or_else(|| {
                parsed
                    .as_ref()
                    .and_then(|v| v.get("errorMessages"))
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join("; ")
                    })
            })
            .unwrap_or_else(|| {
                let text = String::from_utf8_lossy(body);
                let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
                line.chars().take(200).collect()
            });
        ApiError {
            operation: operation.to_string(),
            status,
            code: field("code").unwrap_or_else(|| "UNKNOWN".into()),
            message,
            request_id,
        }
    }

    /// What the service answered, without the operation: the reason the retry warnings give.
    fn answer(&self) -> String {
        format!(
            "answered {} {}: {} (request id {})",
            self.status,
            self.code,
            self.message,
            self.request_id.as_deref().unwrap_or("none")
        )
    }
}

/// `ArchiveBatch` of the service model.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchiveBatch {
    pub account_id: String,
    pub archive_id: String,
    /// Negative when the service does not know.
    #[serde(default = "unknown_count", deserialize_with = "int64")]
    pub event_count: i64,
    /// Epoch milliseconds.
    #[serde(deserialize_with = "int64")]
    pub archive_timestamp: i64,
}

fn unknown_count() -> i64 {
    -1
}

/// int64 fields may come as JSON numbers or, as proto3 JSON encodes them, as strings.
fn int64<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<i64, D::Error> {
    match Value::deserialize(d)? {
        Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| serde::de::Error::custom("not a 64-bit integer")),
        Value::String(s) => s.parse().map_err(serde::de::Error::custom),
        other => Err(serde::de::Error::custom(format!(
            "expected an integer, got {other}"
        ))),
    }
}

impl ArchiveBatch {
    /// CDP's own archive file name: `<accountId>_<YYYYMMDDTHHMM>Z_<archiveId>.json.gz`.
    pub fn file_name(&self) -> String {
        let at = DateTime::from_timestamp_millis(self.archive_timestamp).unwrap_or_default();
        format!(
            "{}_{}Z_{}.json.gz",
            self.account_id,
            at.format("%Y%m%dT%H%M"),
            self.archive_id
        )
    }

    pub fn archived_at(&self) -> String {
        DateTime::from_timestamp_millis(self.archive_timestamp)
            .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
            .unwrap_or_else(|| self.archive_timestamp.to_string())
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskStatus {
    pub status: String,
    #[serde(default)]
    pub event_batches: Vec<ArchiveBatch>,
}

pub struct Client {
    http: reqwest::Client,
    base: url::Url,
    auth: Auth,
    auth_origin: String,
    policy: Policy,
}

/// The longest wait between two polls of a batching task.
const POLL_CAP: Duration = Duration::from_secs(15);

impl Client {
    pub fn new(settings: &Settings) -> Result<Client> {
        let http = reqwest::Client::builder()
            .timeout(settings.policy.timeout)
            .user_agent(concat!("audit-transfer/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot set up the CDP HTTP client")?;
        Ok(Client {
            http,
            base: settings.endpoint.clone(),
            auth: settings.auth.clone(),
            auth_origin: settings.auth_origin.clone(),
            policy: settings.policy,
        })
    }

    pub fn endpoint(&self) -> &url::Url {
        &self.base
    }

    /// Waits between polls of a batching task (and for another client's task): the retry
    /// policy's jittered steps from CDP_RETRY_INITIAL_MS, never ending, each at most 15 s.
    pub fn poll_waits(&self) -> impl Iterator<Item = Duration> {
        Policy {
            max_retries: usize::MAX,
            ..self.policy
        }
        .waits()
        .map(|w| w.min(POLL_CAP))
    }

    /// Calls one operation through the retry policy.
    pub async fn call<T: DeserializeOwned>(&self, operation: &str, body: &Value) -> Result<T> {
        let body = serde_json::to_vec(body)?;
        let path = format!(
            "{}/api/v1/audit/{operation}",
            self.base.path().trim_end_matches('/')
        );
        let mut url = self.base.clone();
        url.set_path(&path);
        self.policy
            .run(&format!("CDP {operation}"), || {
                self.send(operation, &url, &path, &body)
            })
            .await
            .map_err(|f| f.into_error(&format!("CDP {operation} at {}", self.base)))
    }

    /// Adds what to check to refused credentials; the message names variables, never values.
    fn explain(&self, e: ApiError) -> anyhow::Error {
        let what = format!("CDP refused the credentials from {}", self.auth_origin);
        anyhow::Error::new(e).context(what)
    }

    /// One attempt, classified for the retry policy.
    async fn send<T: DeserializeOwned>(
        &self,
        operation: &str,
        url: &url::Url,
        path: &str,
        body: &[u8],
    ) -> std::result::Result<T, Failure> {
        // Signed anew for every attempt: the date is part of the signature.
        let date = altus_date(Utc::now());
        let mut req = self
            .http
            .post(url.clone())
            .header("content-type", CONTENT_TYPE)
            .header("x-altus-date", &date)
            .body(body.to_vec());
        req = match &self.auth {
            Auth::Key(creds) => req.header(
                "x-altus-auth",
                creds.auth_header("POST", CONTENT_TYPE, &date, path),
            ),
            Auth::Token(token) => req.header("authorization", token.expose()),
        };
        let resp = req
            .send()
            .await
            .map_err(|e| self.transport(operation, &e))?;
        let status = resp.status().as_u16();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let request_id = header("x-altus-request-id").or_else(|| header("x-cdp-request-id"));
        let retry_after = retry::retry_after(resp.headers());
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| self.transport(operation, &e))?;
        if status >= 300 {
            let e = ApiError::from_response(operation, status, request_id, &bytes);
            let class = retry::classify_status(status);
            let why = e.answer();
            let error = match class {
                Class::Auth => self.explain(e),
                // Kept as the error itself: a 409 is recognised by its status.
                _ => anyhow::Error::new(e),
            };
            return Err(Failure::new(class, why, error).with_retry_after(retry_after));
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            let why = format!(
                "answered {status} with a body that is not the expected JSON: {e} (request id {})",
                request_id.as_deref().unwrap_or("none")
            );
            Failure::new(
                Class::Permanent,
                why.clone(),
                anyhow::anyhow!("CDP {operation} {why}"),
            )
        })
    }

    /// No answer: connection refused or reset, timeout (retried), or a certificate that does not
    /// verify (not retried: it will not verify on the next attempt either).
    fn transport(&self, operation: &str, e: &reqwest::Error) -> Failure {
        let text = chain_text(e);
        let class = retry::classify_transport(&text);
        let error = if class == Class::Permanent {
            anyhow::anyhow!(
                "CDP {operation} at {}: {text} (the server's certificate is not trusted; not retried)",
                self.base
            )
        } else {
            anyhow::anyhow!("CDP {operation} at {}: {text}", self.base)
        };
        Failure::new(class, text, error)
    }

    /// Starts a batching task; `Err` holds an [`ApiError`] with status 409 while another
    /// task is running.
    pub async fn batch_events(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Result<String> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Answer {
            task_id: String,
        }
        let a: Answer = self
            .call(
                "batchEventsForArchiving",
                &json!({
                    "fromTimestamp": from.to_rfc3339_opts(SecondsFormat::Millis, true),
                    "toTimestamp": to.to_rfc3339_opts(SecondsFormat::Millis, true),
                }),
            )
            .await?;
        Ok(a.task_id)
    }

    pub async fn task_status(&self, task_id: &str) -> Result<TaskStatus> {
        self.call(
            "getBatchEventsForArchivingStatus",
            &json!({ "taskId": task_id }),
        )
        .await
    }

    /// Every outstanding batch, following `nextPageToken`. A token that comes back a second
    /// time is an error (the official CLI's guard), not an endless loop.
    pub async fn outstanding_batches(&self, page_size: u32) -> Result<Vec<ArchiveBatch>> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Answer {
            #[serde(default)]
            event_batches: Vec<ArchiveBatch>,
            next_page_token: Option<String>,
        }
        let mut all = Vec::new();
        let mut seen = HashSet::new();
        let mut token: Option<String> = None;
        loop {
            let mut body = json!({ "pageSize": page_size });
            if let Some(t) = &token {
                body["pageToken"] = json!(t);
            }
            let a: Answer = self.call("listOutstandingArchiveBatches", &body).await?;
            all.extend(a.event_batches);
            match a.next_page_token.filter(|t| !t.is_empty()) {
                None => return Ok(all),
                Some(t) if !seen.insert(t.clone()) => bail!(
                    "CDP listOutstandingArchiveBatches returned the same page token twice; stopping instead of looping"
                ),
                Some(t) => token = Some(t),
            }
        }
    }

    /// The events of one batch (the operation is not paginated).
    pub async fn batch_events_list(&self, archive_id: &str) -> Result<Vec<Value>> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Answer {
            #[serde(default)]
            audit_events: Vec<Value>,
        }
        let a: Answer = self
            .call(
                "listEventsInArchiveBatch",
                &json!({ "archiveId": archive_id }),
            )
            .await?;
        Ok(a.audit_events)
    }

    /// Marks batches archived. The answer must name every batch asked for: a batch the service
    /// did not confirm is an error, not a silent success.
    pub async fn mark_successful(&self, archive_ids: &[&str]) -> Result<()> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Answer {
            #[serde(default)]
            archive_ids: Vec<String>,
        }
        let a: Answer = self
            .call(
                "markArchiveBatchesAsSuccessful",
                &json!({ "archiveIds": archive_ids }),
            )
            .await?;
        let confirmed: HashSet<&str> = a.archive_ids.iter().map(String::as_str).collect();
        let missing: Vec<&&str> = archive_ids
            .iter()
            .filter(|id| !confirmed.contains(**id))
            .collect();
        if !missing.is_empty() {
            bail!("CDP markArchiveBatchesAsSuccessful did not confirm batches {missing:?}");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_of_every_shape_keep_code_message_and_request_id() {
        let e = ApiError::from_response(
            "listEventsInArchiveBatch",
            404,
            Some("req-1".into()),
            br#"{"code":"NOT_FOUND","message":"no such batch"}"#,
        );
        assert_eq!(
            e.to_string(),
            "CDP listEventsInArchiveBatch answered 404 NOT_FOUND: no such batch (request id req-1)"
        );
        let e = ApiError::from_response("op", 400, None, br#"{"errorMessages":["a","b"]}"#);
        assert_eq!((e.code.as_str(), e.message.as_str()), ("UNKNOWN", "a; b"));
        let e = ApiError::from_response("op", 502, None, b"<html>\n<b>Bad gateway</b></html>");
        assert!(e.message.contains("Bad gateway") && !e.message.contains('\n'));
        assert_eq!(retry::classify_status(e.status), Class::Transient);
    }

    #[test]
    fn archive_file_name_is_cdps() {
        let b: ArchiveBatch = serde_json::from_value(json!({
            "accountId": "acc-1", "archiveId": "arch-9", "eventCount": "3",
            "archiveTimestamp": 1714557600123i64
        }))
        .unwrap();
        assert_eq!(b.event_count, 3);
        assert_eq!(b.file_name(), "acc-1_20240501T1000Z_arch-9.json.gz");
    }
}
