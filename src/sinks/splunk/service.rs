//! Talking to the HTTP Event Collector: the client (TLS, token, channel), one request at a
//! time, and what HEC's answer means. Retrying is the shared policy's job
//! ([`crate::http::retry`]); this module only classifies.

use super::settings::Settings;
use crate::base::exit::{chain_text, config_error, excerpt};
use crate::http::retry::{self, Class, Failure};
use anyhow::{anyhow, Context, Result};
use serde::Deserialize;
use std::collections::BTreeMap;

/// HEC's answer body: `{"text": ..., "code": N}`, plus `ackId` on success with acks on and
/// `invalid-event-number` when one event stopped processing.
#[derive(Debug, Default, Deserialize)]
struct Reply {
    #[serde(default)]
    text: String,
    #[serde(default)]
    code: Option<i64>,
    #[serde(default, rename = "ackId")]
    ack_id: Option<u64>,
    #[serde(default, rename = "invalid-event-number")]
    invalid_event: Option<usize>,
}

/// What one event request came to, when it is not a failure of the whole run.
#[derive(Debug)]
pub enum Answer {
    /// Accepted (HTTP 200, code 0), with the ackId to confirm when acks are on.
    Accepted(Option<u64>),
    /// Event `index` of the request is bad (`text`); those before it were processed, the rest
    /// were not.
    BadEvent { index: usize, text: String },
    /// Every event of the request is refused for good (a 4xx about the data).
    Refused(String),
    /// Server busy after processing the first `processed` events: worth another attempt.
    Busy { processed: usize, failure: Failure },
}

/// The client and what its messages name. One per run, shared by the workers: one channel.
#[derive(Debug)]
pub struct Service {
    http: reqwest::Client,
    event_url: url::Url,
    ack_url: url::Url,
    pub url: url::Url,
    settings: Settings,
    /// `X-Splunk-Request-Channel`: a random GUID per run, sent on every request when acks
    /// are on (ackIds are per channel).
    pub channel: Option<String>,
}

impl Service {
    pub fn new(settings: &Settings) -> Result<Self> {
        let mut builder = reqwest::Client::builder()
            .timeout(settings.retry.timeout)
            .user_agent(concat!("audit-transfer/", env!("CARGO_PKG_VERSION")));
        if settings.insecure {
            tracing::warn!("SPLUNK_INSECURE=true: the server's certificate is not verified");
            builder = builder.danger_accept_invalid_certs(true);
        } else if let Some(path) = &settings.ca_cert {
            builder = crate::http::tls::trust(builder, path, "SPLUNK_CA_CERT")?;
        }
        let http = builder
            .build()
            .context("cannot set up the Splunk HEC client")?;
        // Keep a path prefix of SPLUNK_HEC_URL (a proxy) when joining.
        let mut base = settings.url.clone();
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        let event_url = base
            .join("services/collector/event")
            .context("SPLUNK_HEC_URL")?;
        let ack_url = base
            .join("services/collector/ack")
            .context("SPLUNK_HEC_URL")?;
        let channel = settings.ack.then(new_channel).transpose()?;
        if !settings.ack {
            tracing::warn!(
                "SPLUNK_HEC_ACK=false: rows are marked when HEC accepts them, not confirmed indexed"
            );
        }
        Ok(Service {
            http,
            event_url,
            ack_url,
            url: settings.url.clone(),
            settings: settings.clone(),
            channel,
        })
    }

    fn post(&self, url: &url::Url, body: Vec<u8>) -> reqwest::RequestBuilder {
        // Marked sensitive: kept out of any debug output of the HTTP stack.
        let mut auth = reqwest::header::HeaderValue::from_str(&format!(
            "Splunk {}",
            self.settings.token.expose()
        ))
        .unwrap_or_else(|_| reqwest::header::HeaderValue::from_static("Splunk"));
        auth.set_sensitive(true);
        let mut request = self
            .http
            .post(url.clone())
            .header(reqwest::header::AUTHORIZATION, auth)
            .header("Content-Type", "application/json")
            .body(body);
        if let Some(channel) = &self.channel {
            request = request.header("X-Splunk-Request-Channel", channel);
        }
        request
    }

    /// One event request.
    pub async fn send(&self, body: Vec<u8>) -> Result<Answer, Failure> {
        let (status, reply, retry_after) = self
            .exchange(&self.event_url, body, self.settings.gzip)
            .await?;
        let code = reply.code.unwrap_or(-1);
        if status == 200 && code == 0 {
            if self.settings.ack && reply.ack_id.is_none() {
                return Err(Failure::new(
                    Class::Permanent,
                    "no ackId".to_string(),
                    config_error(format!(
                        "Splunk HEC at {} accepted the events without an ackId: indexer acknowledgement is off for this token; turn it on in Splunk, or set SPLUNK_HEC_ACK=false to trust HTTP 200 (accepted, not confirmed indexed); the page stays unsent and is sent again by the next run",
                        self.url
                    )),
                ));
            }
            return Ok(Answer::Accepted(reply.ack_id));
        }
        if let Some(f) = self.run_failure(status, code, &reply, retry_after) {
            return match (f.class, reply.invalid_event) {
                (Class::Transient, Some(processed)) => Ok(Answer::Busy {
                    processed,
                    failure: f,
                }),
                _ => Err(f),
            };
        }
        let text = format!(
            "rejected by Splunk HEC: {} (code {code}, HTTP {status})",
            excerpt(&reply.text)
        );
        Ok(match reply.invalid_event {
            Some(index) => Answer::BadEvent { index, text },
            None => Answer::Refused(text),
        })
    }

    /// A failure of the whole request: credentials, configuration, or worth another attempt.
    /// None when the answer is about the data (the caller rejects events).
    fn run_failure(
        &self,
        status: u16,
        code: i64,
        reply: &Reply,
        retry_after: Option<std::time::Duration>,
    ) -> Option<Failure> {
        let said = format!("{} (code {code}, HTTP {status})", excerpt(&reply.text));
        let stop = |class: Class, hint: &str| {
            Some(Failure::new(
                class,
                said.clone(),
                anyhow!("Splunk HEC at {} refused: {said}: {hint}", self.url),
            ))
        };
        match (status, code) {
            (401 | 403, _) | (_, 1..=4) => stop(
                Class::Auth,
                "check SPLUNK_HEC_TOKEN (a valid, enabled HEC token)",
            ),
            // Server busy may name where processing stopped: the caller resends the rest.
            (_, 9) => Some(
                Failure::transient(format!("server busy: {said}")).with_retry_after(retry_after),
            ),
            _ if retry::classify_status(status) == Class::Transient => Some(
                Failure::transient(format!("HTTP {status}: {said}")).with_retry_after(retry_after),
            ),
            (_, 7) => stop(
                Class::Permanent,
                "check SPLUNK_INDEX (an index the token may write to)",
            ),
            (_, 14) => stop(
                Class::Permanent,
                "indexer acknowledgement is off for this token: turn it on, or set SPLUNK_HEC_ACK=false",
            ),
            (_, 10 | 11) => stop(
                Class::Permanent,
                "the request channel was refused (X-Splunk-Request-Channel)",
            ),
            (400..=499, _) => None,
            _ => stop(Class::Permanent, "unexpected answer"),
        }
    }

    /// Which of `ids` Splunk now confirms (each is reported `true` once only).
    pub async fn acked(&self, ids: &[u64]) -> Result<Vec<u64>, Failure> {
        let body = serde_json::to_vec(&serde_json::json!({ "acks": ids })).expect("JSON");
        let (status, retry_after, raw) = self.exchange_raw(&self.ack_url, body, false).await?;
        let reply: Reply = serde_json::from_slice(&raw).unwrap_or_default();
        if status != 200 {
            let code = reply.code.unwrap_or(-1);
            return Err(self
                .run_failure(status, code, &reply, retry_after)
                .unwrap_or_else(|| {
                    Failure::new(
                        Class::Permanent,
                        format!("ack query: HTTP {status}"),
                        anyhow!(
                            "Splunk HEC at {} refused the acknowledgement query: {} (code {code}, HTTP {status})",
                            self.url,
                            excerpt(&reply.text)
                        ),
                    )
                }));
        }
        #[derive(Deserialize)]
        struct Acks {
            acks: BTreeMap<String, bool>,
        }
        let acks: Acks = serde_json::from_slice(&raw).map_err(|e| {
            Failure::new(
                Class::Permanent,
                "unexpected ack answer",
                anyhow!(
                    "Splunk HEC at {}: unexpected acknowledgement answer ({e}): {}",
                    self.url,
                    excerpt(&String::from_utf8_lossy(&raw))
                ),
            )
        })?;
        Ok(acks
            .acks
            .into_iter()
            .filter(|(_, done)| *done)
            .filter_map(|(id, _)| id.parse().ok())
            .collect())
    }

    async fn exchange(
        &self,
        url: &url::Url,
        body: Vec<u8>,
        gzip: bool,
    ) -> Result<(u16, Reply, Option<std::time::Duration>), Failure> {
        let (status, retry_after, raw) = self.exchange_raw(url, body, gzip).await?;
        let reply = serde_json::from_slice(&raw).unwrap_or_else(|_| Reply {
            text: String::from_utf8_lossy(&raw).into_owned(),
            ..Reply::default()
        });
        Ok((status, reply, retry_after))
    }

    async fn exchange_raw(
        &self,
        url: &url::Url,
        body: Vec<u8>,
        gzip: bool,
    ) -> Result<(u16, Option<std::time::Duration>, Vec<u8>), Failure> {
        let mut request = if gzip && !body.is_empty() {
            self.post(url, crate::http::gzipped(&body))
                .header(reqwest::header::CONTENT_ENCODING, "gzip")
        } else {
            self.post(url, body)
        };
        request = request.header(reqwest::header::ACCEPT, "application/json");
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => return Err(self.transport_failure(&e)),
        };
        let status = response.status().as_u16();
        let retry_after = retry::retry_after(response.headers());
        match response.bytes().await {
            Ok(raw) => Ok((status, retry_after, raw.to_vec())),
            Err(e) => Err(Failure::transient(format!(
                "reading the answer failed: {}",
                chain_text(&e)
            ))),
        }
    }

    /// No response at all: a certificate that does not verify is final and says which
    /// variables fix it; anything else (refused, reset, timeout) is worth another attempt.
    fn transport_failure(&self, e: &reqwest::Error) -> Failure {
        let text = chain_text(e);
        match retry::classify_transport(&text) {
            Class::Transient => Failure::transient(format!("request failed: {text}")),
            class => {
                let why = crate::http::tls::why_untrusted(&text);
                Failure::new(
                    class,
                    text.clone(),
                    anyhow!(
                        "Splunk HEC at {}: the server's certificate does not verify ({why}): set SPLUNK_CA_CERT to the PEM file of the CA that signed it, or SPLUNK_INSECURE=true to skip verification (test servers only)",
                        self.url
                    ),
                )
            }
        }
    }

    /// The error for a run whose retries are spent, or that failed for good.
    pub fn error(&self, f: Failure) -> anyhow::Error {
        f.into_error(&format!("Splunk HEC at {}", self.url))
    }
}

/// A random (version 4) UUID from the operating system's random source.
fn new_channel() -> Result<String> {
    let mut b = [0u8; 16];
    getrandom::getrandom(&mut b)
        .map_err(|e| anyhow!("no random source for the HEC channel: {e}"))?;
    Ok(uuid(b))
}

fn uuid(mut b: [u8; 16]) -> String {
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex = crate::base::hash::hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_are_version_4_uuids() {
        assert_eq!(uuid([0xff; 16]), "ffffffff-ffff-4fff-bfff-ffffffffffff");
        assert_eq!(uuid([0; 16]), "00000000-0000-4000-8000-000000000000");
        let a = new_channel().unwrap();
        assert_eq!(a.len(), 36);
        assert_ne!(a, new_channel().unwrap());
    }

    fn service(ack: bool) -> Service {
        let env = crate::base::env::Env::from_pairs([
            ("SPLUNK_HEC_URL", "http://127.0.0.1:1/prefix"),
            ("SPLUNK_HEC_TOKEN", "tok-secret"),
            ("SPLUNK_HEC_ACK", if ack { "true" } else { "false" }),
        ]);
        Service::new(&Settings::from_env(&env).unwrap()).unwrap()
    }

    #[test]
    fn endpoints_keep_a_path_prefix_and_the_channel_follows_acks() {
        let s = service(true);
        assert_eq!(
            s.event_url.as_str(),
            "http://127.0.0.1:1/prefix/services/collector/event"
        );
        assert_eq!(
            s.ack_url.as_str(),
            "http://127.0.0.1:1/prefix/services/collector/ack"
        );
        assert!(s.channel.is_some());
        assert!(service(false).channel.is_none());
        assert!(!format!("{s:?}").contains("tok-secret"));
    }

    #[test]
    fn hec_codes_are_classified() {
        let s = service(true);
        let reply = |code: i64, text: &str| Reply {
            text: text.into(),
            code: Some(code),
            ..Reply::default()
        };
        let class = |status, code| {
            s.run_failure(status, code, &reply(code, "x"), None)
                .map(|f| f.class)
        };
        assert_eq!(class(401, 2), Some(Class::Auth));
        assert_eq!(class(403, 4), Some(Class::Auth));
        assert_eq!(class(503, 9), Some(Class::Transient));
        assert_eq!(class(500, 8), Some(Class::Transient));
        assert_eq!(class(429, -1), Some(Class::Transient));
        assert_eq!(class(400, 7), Some(Class::Permanent));
        assert_eq!(class(400, 14), Some(Class::Permanent));
        assert_eq!(class(400, 10), Some(Class::Permanent));
        assert_eq!(class(501, -1), Some(Class::Permanent));
        // About the data: the caller rejects events.
        assert_eq!(class(400, 6), None);
        assert_eq!(class(400, 13), None);
        let f = s
            .run_failure(403, 4, &reply(4, "Invalid token"), None)
            .unwrap();
        let e = s.error(f).to_string();
        assert!(
            e.contains("SPLUNK_HEC_TOKEN") && e.contains("Invalid token"),
            "{e}"
        );
        assert!(!e.contains("tok-secret"), "{e}");
    }
}
