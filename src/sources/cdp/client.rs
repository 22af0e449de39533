//! A client for the CDP audit API: `POST /api/v1/audit/<operation>` with a JSON body, signed
//! per request (or an access token), retried with backoff on 429/502/503/504 and connection
//! errors, and re-signed on every attempt because the signed date changes.

use super::signing::altus_date;
use crate::config::{CdpAuth, CdpConfig};
use anyhow::{bail, Context, Result};
use backon::BackoffBuilder;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

const CONTENT_TYPE: &str = "application/json";
/// The longest a server's Retry-After is honoured; beyond that our own backoff applies.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

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
        write!(
            f,
            "CDP {} answered {} {}: {} (request id {})",
            self.operation,
            self.status,
            self.code,
            self.message,
            self.request_id.as_deref().unwrap_or("none")
        )
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

    fn transient(&self) -> bool {
        matches!(self.status, 429 | 502 | 503 | 504)
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
    auth: CdpAuth,
    auth_origin: String,
    max_retries: usize,
    retry_initial: Duration,
}

impl Client {
    pub fn new(cfg: &CdpConfig) -> Result<Client> {
        let http = reqwest::Client::builder()
            .timeout(cfg.request_timeout)
            .user_agent(concat!("audit-transfer/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot set up the CDP HTTP client")?;
        Ok(Client {
            http,
            base: cfg.endpoint.clone(),
            auth: cfg.auth.clone(),
            auth_origin: cfg.auth_origin.clone(),
            max_retries: cfg.max_retries,
            retry_initial: cfg.retry_initial,
        })
    }

    pub fn endpoint(&self) -> &url::Url {
        &self.base
    }

    /// Waits growing from the configured initial wait, doubling up to `cap`, with jitter.
    pub fn backoff(&self, cap: Duration, times: usize) -> impl Iterator<Item = Duration> {
        backon::ExponentialBuilder::default()
            .with_min_delay(self.retry_initial)
            .with_max_delay(cap)
            .with_jitter()
            .with_max_times(times)
            .build()
    }

    /// Calls one operation, retrying transient failures.
    pub async fn call<T: DeserializeOwned>(&self, operation: &str, body: &Value) -> Result<T> {
        let body = serde_json::to_vec(body)?;
        let path = format!(
            "{}/api/v1/audit/{operation}",
            self.base.path().trim_end_matches('/')
        );
        let mut url = self.base.clone();
        url.set_path(&path);
        let mut delays = self.backoff(Duration::from_secs(30), self.max_retries);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (why, retry_after) = match self.send(operation, &url, &path, &body).await {
                Ok(answer) => return Ok(answer),
                Err(Failure::Api(e, retry_after)) if e.transient() => (e.to_string(), retry_after),
                Err(Failure::Api(e, _)) => return Err(self.explain(e)),
                Err(Failure::Transport(e)) => (e, None),
                Err(Failure::Other(e)) => return Err(e),
            };
            let Some(delay) = delays.next() else {
                bail!("CDP {operation} still failing after {attempt} attempts: {why}");
            };
            let delay = retry_after.map_or(delay, |r| r.min(MAX_RETRY_AFTER).max(delay));
            tracing::warn!(
                operation,
                attempt,
                delay_ms = delay.as_millis() as u64,
                "{why}; retrying"
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// Adds what to check to refused credentials; the message names variables, never values.
    fn explain(&self, e: ApiError) -> anyhow::Error {
        if matches!(e.status, 401 | 403) {
            let what = format!("CDP refused the credentials from {}", self.auth_origin);
            anyhow::Error::new(e).context(what)
        } else {
            anyhow::Error::new(e)
        }
    }

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
            CdpAuth::Key(creds) => req.header(
                "x-altus-auth",
                creds.auth_header("POST", CONTENT_TYPE, &date, path),
            ),
            CdpAuth::Token(token) => req.header("authorization", token),
        };
        let resp = req
            .send()
            .await
            .map_err(|e| Failure::Transport(format!("CDP {operation}: {}", transport(&e))))?;
        let status = resp.status().as_u16();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let request_id = header("x-altus-request-id").or_else(|| header("x-cdp-request-id"));
        let retry_after = header("retry-after")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| Failure::Transport(format!("CDP {operation}: {}", transport(&e))))?;
        if status >= 300 {
            return Err(Failure::Api(
                ApiError::from_response(operation, status, request_id, &bytes),
                retry_after,
            ));
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            Failure::Other(anyhow::anyhow!(
                "CDP {operation} answered {status} with a body that is not the expected JSON: {e} (request id {})",
                request_id.as_deref().unwrap_or("none")
            ))
        })
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

enum Failure {
    /// An error answer, with the server's Retry-After.
    Api(ApiError, Option<Duration>),
    /// No answer: connection refused or reset, timeout. Retried.
    Transport(String),
    /// An answer we cannot read. Not retried.
    Other(anyhow::Error),
}

/// reqwest's error with its causes (its Display alone hides "connection refused").
fn transport(e: &reqwest::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
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
        assert!(e.transient());
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
