//! The OTLP/HTTP client and what a receiver's answers mean (OTLP specification, OTLP/HTTP):
//! only 429, 502, 503 and 504 (and no answer at all) are worth another attempt.

use super::settings::{Protocol, Settings};
use crate::base::exit::{chain_text, excerpt};
use crate::http::retry::{self, Class, Failure};
use anyhow::{anyhow, Context, Result};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
use prost::Message;

/// Largest answer read: the spec caps responses at 4 MiB.
const MAX_REPLY: usize = 4 * 1024 * 1024;

/// A receiver's word on one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// 2xx. `rejected` records were refused (partial success), for the reason `message`
    /// (which alone, with none rejected, is a warning).
    Accepted { rejected: i64, message: String },
    /// 413: the request was too large.
    TooLarge(String),
    /// Another 4xx about the data: the records are refused.
    Refused(String),
}

#[derive(Debug)]
pub struct Service {
    http: reqwest::Client,
    settings: Settings,
}

impl Service {
    pub fn new(settings: &Settings) -> Result<Self> {
        let mut headers = reqwest::header::HeaderMap::new();
        for (name, value) in &settings.headers {
            let mut v = reqwest::header::HeaderValue::from_str(value.expose())
                .context(settings.headers_var)?;
            // Kept out of any debug output of the HTTP stack.
            v.set_sensitive(true);
            let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                .context(settings.headers_var)?;
            headers.insert(name, v);
        }
        let mut builder = reqwest::Client::builder()
            .timeout(settings.retry.timeout)
            .user_agent(concat!("audit-transfer/", env!("CARGO_PKG_VERSION")))
            .default_headers(headers);
        if let Some((path, var)) = &settings.certificate {
            builder = crate::http::tls::trust(builder, path, var)?;
        }
        if let Some(((cert, cert_var), (key, key_var))) = &settings.client {
            builder = crate::http::tls::identity(builder, (cert, cert_var), (key, key_var))?;
        }
        let http = builder.build().context("cannot set up the OTLP client")?;
        Ok(Service {
            http,
            settings: settings.clone(),
        })
    }

    pub fn url(&self) -> &url::Url {
        &self.settings.url
    }

    /// One export request (`body` already encoded in the configured protocol).
    pub async fn send(&self, body: &[u8]) -> Result<Answer, Failure> {
        let protocol = self.settings.protocol;
        let mut request = self
            .http
            .post(self.settings.url.clone())
            .header(reqwest::header::CONTENT_TYPE, protocol.content_type());
        request = if self.settings.gzip {
            request
                .header(reqwest::header::CONTENT_ENCODING, "gzip")
                .body(crate::http::gzipped(body))
        } else {
            request.body(body.to_vec())
        };
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => return Err(self.transport_failure(&e)),
        };
        let status = response.status().as_u16();
        let retry_after = retry::retry_after(response.headers());
        let json_reply = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.starts_with("application/json"));
        let raw = match response.bytes().await {
            Ok(raw) => raw,
            Err(e) => {
                return Err(Failure::transient(format!(
                    "reading the answer failed: {}",
                    chain_text(&e)
                )))
            }
        };
        if raw.len() > MAX_REPLY {
            return Err(self.stop(
                Class::Permanent,
                format!(
                    "an answer of {} bytes (HTTP {status}), over the 4 MiB OTLP allows",
                    raw.len()
                ),
            ));
        }
        self.answer(status, json_reply, &raw, retry_after)
    }

    /// What an answer means.
    fn answer(
        &self,
        status: u16,
        json_reply: bool,
        raw: &[u8],
        retry_after: Option<std::time::Duration>,
    ) -> Result<Answer, Failure> {
        if (200..300).contains(&status) {
            let reply = if raw.is_empty() {
                Some(ExportLogsServiceResponse::default())
            } else if json_reply || self.settings.protocol == Protocol::Json {
                serde_json::from_slice::<ExportLogsServiceResponse>(raw).ok()
            } else {
                ExportLogsServiceResponse::decode(raw).ok()
            };
            let Some(reply) = reply else {
                // Stored or not, the answer cannot tell: the page stays unmarked.
                return Err(self.stop(
                    Class::Permanent,
                    format!(
                        "HTTP {status} with an answer that is not an ExportLogsServiceResponse: {}",
                        excerpt(&String::from_utf8_lossy(raw))
                    ),
                ));
            };
            let (rejected, message) = reply
                .partial_success
                .map(|p| (p.rejected_log_records, p.error_message))
                .unwrap_or_default();
            return Ok(Answer::Accepted { rejected, message });
        }
        let said = format!("HTTP {status}: {}", status_text(raw));
        match status {
            429 | 502 | 503 | 504 => Err(Failure::transient(said).with_retry_after(retry_after)),
            401 | 403 => Err(Failure::new(
                Class::Auth,
                said.clone(),
                anyhow!(
                    "OTLP receiver at {} refused the credentials ({said}): check {}",
                    self.settings.url,
                    self.settings.headers_var
                ),
            )),
            404 | 405 => Err(self.stop(
                Class::Permanent,
                format!(
                    "{said}: no OTLP logs endpoint there; check {}",
                    self.settings.url_var
                ),
            )),
            413 => Ok(Answer::TooLarge(said)),
            400..=499 => Ok(Answer::Refused(format!(
                "rejected by the OTLP receiver: {said}"
            ))),
            _ => Err(self.stop(Class::Permanent, said)),
        }
    }

    fn stop(&self, class: Class, why: String) -> Failure {
        let error = anyhow!("OTLP receiver at {}: {why}", self.settings.url);
        Failure::new(class, why, error)
    }

    /// No response at all: a certificate that does not verify is final, anything else
    /// (refused, reset, timeout) is worth another attempt.
    fn transport_failure(&self, e: &reqwest::Error) -> Failure {
        let text = chain_text(e);
        match retry::classify_transport(&text) {
            Class::Transient => Failure::transient(format!("request failed: {text}")),
            class => Failure::new(
                class,
                text.clone(),
                anyhow!(
                    "OTLP receiver at {}: the server's certificate does not verify ({}): set OTEL_EXPORTER_OTLP_CERTIFICATE to the PEM file of the CA that signed it",
                    self.settings.url,
                    crate::http::tls::why_untrusted(&text)
                ),
            ),
        }
    }

    /// The error for a run whose retries are spent, or that failed for good.
    pub fn error(&self, f: Failure) -> anyhow::Error {
        f.into_error(&format!("OTLP receiver at {}", self.settings.url))
    }
}

/// The message of a failure answer: a `google.rpc.Status` (protobuf or JSON), else the text.
fn status_text(raw: &[u8]) -> String {
    #[derive(Clone, PartialEq, prost::Message)]
    struct Status {
        #[prost(int32, tag = "1")]
        code: i32,
        #[prost(string, tag = "2")]
        message: String,
    }
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(raw) {
        if let Some(m) = v.get("message").and_then(|m| m.as_str()) {
            return excerpt(m);
        }
    }
    match Status::decode(raw) {
        Ok(s) if !s.message.is_empty() => excerpt(&s.message),
        _ => excerpt(&String::from_utf8_lossy(raw)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::env::Env;
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsPartialSuccess;

    fn service(pairs: &[(&str, &str)]) -> Service {
        Service::new(&Settings::from_env(&Env::from_pairs(pairs.iter().copied())).unwrap()).unwrap()
    }

    #[test]
    fn answers_are_classified_as_the_spec_says() {
        let s = service(&[("OTEL_EXPORTER_OTLP_HEADERS", "api-key=k-s3cr3t-1")]);
        assert!(!format!("{s:?}").contains("k-s3cr3t-1"));
        let class = |status| s.answer(status, false, b"", None).map_err(|f| f.class);
        for status in [429, 502, 503, 504] {
            assert_eq!(class(status).unwrap_err(), Class::Transient, "{status}");
        }
        for status in [500, 501, 404] {
            assert_eq!(class(status).unwrap_err(), Class::Permanent, "{status}");
        }
        assert_eq!(class(401).unwrap_err(), Class::Auth);
        assert!(matches!(class(413), Ok(Answer::TooLarge(_))));
        assert!(matches!(class(400), Ok(Answer::Refused(_))));
        assert_eq!(
            class(200).unwrap(),
            Answer::Accepted {
                rejected: 0,
                message: String::new()
            }
        );
    }

    #[test]
    fn partial_success_is_read_in_both_encodings() {
        let reply = ExportLogsServiceResponse {
            partial_success: Some(ExportLogsPartialSuccess {
                rejected_log_records: 2,
                error_message: "bad records".into(),
            }),
        };
        let want = Answer::Accepted {
            rejected: 2,
            message: "bad records".into(),
        };
        let s = service(&[]);
        assert_eq!(
            s.answer(200, false, &reply.encode_to_vec(), None).unwrap(),
            want
        );
        let json = serde_json::to_vec(&reply).unwrap();
        assert_eq!(s.answer(200, true, &json, None).unwrap(), want);
        let e = s.answer(200, false, b"\xff\xff garbage", None).unwrap_err();
        assert_eq!(e.class, Class::Permanent);
    }

    #[test]
    fn status_messages_are_quoted() {
        let s = service(&[]);
        let Answer::Refused(text) = s
            .answer(400, true, br#"{"code":3,"message":"field too long"}"#, None)
            .unwrap()
        else {
            panic!()
        };
        assert!(
            text.contains("field too long") && text.contains("HTTP 400"),
            "{text}"
        );
    }
}
