//! The sink's settings, read from OpenTelemetry's standard `OTEL_*` variables the way the
//! SDKs read them (see `shared/specs/otlp-logs-sink.md`), so an existing OTLP setup carries over.

use crate::base::env::Env;
use crate::base::exit::ConfigError;
use crate::base::secret::Secret;
use crate::http::retry::Policy;
use std::path::PathBuf;
use std::time::Duration;

type Result<T> = std::result::Result<T, ConfigError>;

/// The SDKs' default when no endpoint is set (OTLP/HTTP's port).
const DEFAULT_ENDPOINT: &str = "http://localhost:4318";
/// `OTEL_EXPORTER_OTLP_TIMEOUT`'s default, in milliseconds.
const DEFAULT_TIMEOUT_MS: u64 = 10_000;
/// No standard variable sets retries: these are fixed, the timeout comes from the standard one.
const MAX_RETRIES: usize = 5;
const RETRY_INITIAL: Duration = Duration::from_millis(500);
/// `service.name` unless `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES` names one.
pub const DEFAULT_SERVICE: &str = "audit-transfer";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Protobuf,
    Json,
}

impl Protocol {
    pub fn content_type(self) -> &'static str {
        match self {
            Protocol::Protobuf => "application/x-protobuf",
            Protocol::Json => "application/json",
        }
    }
}

/// A file and the variable that named it, for messages.
pub type NamedFile = (PathBuf, &'static str);

#[derive(Debug, Clone)]
pub struct Settings {
    /// Where requests go: the logs endpoint itself (`.../v1/logs`).
    pub url: url::Url,
    /// Which variable gave `url`, for messages.
    pub url_var: &'static str,
    pub protocol: Protocol,
    /// Each value may be a credential (an API key): all kept secret.
    pub headers: Vec<(String, Secret)>,
    /// Which variable gave `headers`, for messages.
    pub headers_var: &'static str,
    pub gzip: bool,
    pub retry: Policy,
    /// Resource attributes, `service.name` first.
    pub resource: Vec<(String, String)>,
    /// CA file to trust for the receiver's certificate.
    pub certificate: Option<NamedFile>,
    /// Client certificate chain and private key for mutual TLS.
    pub client: Option<(NamedFile, NamedFile)>,
}

impl Settings {
    pub fn from_env(env: &Env) -> Result<Self> {
        let expected = "an http(s) URL such as http://collector:4318";
        let (url, url_var) = if let Some(full) = env.http_url(
            "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
            "the http(s) URL of the logs endpoint, such as http://collector:4318/v1/logs",
        )? {
            // The general endpoint stays this sink's setting (other signals use it).
            let _ = env.raw("OTEL_EXPORTER_OTLP_ENDPOINT");
            (full, "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT")
        } else {
            let base = env
                .http_url("OTEL_EXPORTER_OTLP_ENDPOINT", expected)?
                .unwrap_or_else(|| url::Url::parse(DEFAULT_ENDPOINT).expect("valid"));
            (logs_url(base), "OTEL_EXPORTER_OTLP_ENDPOINT")
        };
        let protocol_var = logs_or_general(
            env,
            "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        );
        let protocol = match env.get(protocol_var) {
            Some(p) if p.eq_ignore_ascii_case("grpc") => {
                return Err(ConfigError(format!(
                    "invalid {protocol_var} \"grpc\": this sink speaks OTLP/HTTP only; expected http/protobuf or http/json (and the receiver's HTTP port, 4318 by default)"
                )))
            }
            _ => env
                .choice(
                    protocol_var,
                    &[("http/protobuf", Protocol::Protobuf), ("http/json", Protocol::Json)],
                )?
                .unwrap_or(Protocol::Protobuf),
        };
        let headers_var = logs_or_general(
            env,
            "OTEL_EXPORTER_OTLP_LOGS_HEADERS",
            "OTEL_EXPORTER_OTLP_HEADERS",
        );
        let headers = pairs(headers_var, env.get(headers_var))?
            .into_iter()
            .map(|(k, v)| {
                if reqwest::header::HeaderName::from_bytes(k.as_bytes()).is_err()
                    || reqwest::header::HeaderValue::from_str(&v).is_err()
                {
                    return Err(ConfigError(format!(
                        "invalid {headers_var}: {k:?} is not a valid HTTP header name, or its value is not a valid header value"
                    )));
                }
                Ok((k, Secret::new(v)))
            })
            .collect::<Result<Vec<_>>>()?;
        let gzip = env
            .choice(
                logs_or_general(
                    env,
                    "OTEL_EXPORTER_OTLP_LOGS_COMPRESSION",
                    "OTEL_EXPORTER_OTLP_COMPRESSION",
                ),
                &[("gzip", true), ("none", false)],
            )?
            .unwrap_or(false);
        let timeout_ms = env
            .number(
                logs_or_general(
                    env,
                    "OTEL_EXPORTER_OTLP_LOGS_TIMEOUT",
                    "OTEL_EXPORTER_OTLP_TIMEOUT",
                ),
                1..=3_600_000u64,
                "a timeout in milliseconds, 1 to 3600000",
            )?
            .unwrap_or(DEFAULT_TIMEOUT_MS);
        let file = |var: &'static str| -> Result<Option<NamedFile>> {
            match env.get(var) {
                None => Ok(None),
                Some(p) if std::path::Path::new(p).is_file() => Ok(Some((PathBuf::from(p), var))),
                Some(p) => Err(ConfigError(format!(
                    "invalid {var} {p:?}: expected the path of a readable PEM file"
                ))),
            }
        };
        let certificate = file(logs_or_general(
            env,
            "OTEL_EXPORTER_OTLP_LOGS_CERTIFICATE",
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
        ))?;
        let client_certificate = file(logs_or_general(
            env,
            "OTEL_EXPORTER_OTLP_LOGS_CLIENT_CERTIFICATE",
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
        ))?;
        let client_key = file(logs_or_general(
            env,
            "OTEL_EXPORTER_OTLP_LOGS_CLIENT_KEY",
            "OTEL_EXPORTER_OTLP_CLIENT_KEY",
        ))?;
        let client = match (client_certificate, client_key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            (Some((_, var)), None) | (None, Some((_, var))) => {
                return Err(ConfigError(format!(
                    "{var} is set without its pair: a client certificate needs both OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and OTEL_EXPORTER_OTLP_CLIENT_KEY (or both LOGS_ forms)"
                )))
            }
        };
        let mut resource = pairs(
            "OTEL_RESOURCE_ATTRIBUTES",
            env.get("OTEL_RESOURCE_ATTRIBUTES"),
        )?;
        // OTEL_SERVICE_NAME wins over a service.name among the attributes.
        let named = resource
            .iter()
            .position(|(k, _)| k == "service.name")
            .map(|i| resource.remove(i).1);
        let service = env
            .get("OTEL_SERVICE_NAME")
            .map(String::from)
            .or(named)
            .unwrap_or_else(|| DEFAULT_SERVICE.into());
        resource.insert(0, ("service.name".into(), service));
        Ok(Settings {
            url,
            url_var,
            protocol,
            headers,
            headers_var,
            gzip,
            retry: Policy {
                timeout: Duration::from_millis(timeout_ms),
                max_retries: MAX_RETRIES,
                initial: RETRY_INITIAL,
            },
            resource,
            certificate,
            client,
        })
    }
}

/// The logs-specific variable when it is set, else the general one: the per-signal form
/// wins, as in every SDK.
fn logs_or_general(env: &Env, logs: &'static str, general: &'static str) -> &'static str {
    // Both are read: the general one stays this sink's setting (for other signals) even when
    // unused, and a TARGET_ view must not report it as unknown.
    let _ = env.get(general);
    if env.get(logs).is_some() {
        logs
    } else {
        general
    }
}

/// The signal path joined to a base endpoint, as the SDKs do (a path prefix is kept).
fn logs_url(mut base: url::Url) -> url::Url {
    let path = base.path().trim_end_matches('/').to_string();
    base.set_path(&format!("{path}/v1/logs"));
    base
}

/// `key=value,key2=value2` (the W3C baggage form the SDKs read), values percent-decoded; a
/// later key replaces an earlier one. The error never quotes a value: it may be a credential.
fn pairs(var: &str, value: Option<&str>) -> Result<Vec<(String, String)>> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (n, item) in value.unwrap_or("").split(',').enumerate() {
        if item.trim().is_empty() {
            continue;
        }
        let bad = |why: &str| {
            ConfigError(format!(
                "invalid {var}: item {} {why}; expected key=value pairs separated by commas, values URL-encoded",
                n + 1
            ))
        };
        let (k, v) = item.split_once('=').ok_or_else(|| bad("has no '='"))?;
        let k = percent_decode(k.trim()).ok_or_else(|| bad("has a malformed key"))?;
        let v = percent_decode(v.trim()).ok_or_else(|| bad("has a malformed value"))?;
        if k.is_empty() {
            return Err(bad("has an empty key"));
        }
        out.retain(|(old, _)| *old != k);
        out.push((k, v));
    }
    Ok(out)
}

/// `%XX` escapes decoded (as UTF-8); `+` stays a plus, as in the baggage format.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(pairs: &[(&str, &str)]) -> Result<Settings> {
        Settings::from_env(&Env::from_pairs(pairs.iter().copied()))
    }

    fn err(pairs: &[(&str, &str)]) -> String {
        read(pairs).unwrap_err().0
    }

    #[test]
    fn defaults_follow_the_sdks() {
        let s = read(&[]).unwrap();
        assert_eq!(s.url.as_str(), "http://localhost:4318/v1/logs");
        assert_eq!(s.protocol, Protocol::Protobuf);
        assert!(s.headers.is_empty() && !s.gzip);
        assert_eq!(s.retry.timeout, Duration::from_secs(10));
        assert_eq!(s.retry.max_retries, MAX_RETRIES);
        assert_eq!(
            s.resource,
            vec![("service.name".to_string(), "audit-transfer".to_string())]
        );
    }

    #[test]
    fn base_endpoint_gets_the_signal_path_and_the_logs_endpoint_wins() {
        let base = |v| {
            read(&[("OTEL_EXPORTER_OTLP_ENDPOINT", v)])
                .unwrap()
                .url
                .to_string()
        };
        assert_eq!(base("http://c:4318"), "http://c:4318/v1/logs");
        assert_eq!(base("http://c:4318/"), "http://c:4318/v1/logs");
        assert_eq!(base("https://gw/otlp/"), "https://gw/otlp/v1/logs");
        let s = read(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            (
                "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
                "http://other:9/custom/logs",
            ),
        ])
        .unwrap();
        assert_eq!(s.url.as_str(), "http://other:9/custom/logs");
        assert_eq!(s.url_var, "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT");
    }

    #[test]
    fn a_url_with_a_password_is_refused_without_printing_it() {
        let e = err(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://u:hunter2-pw@c:4318")]);
        assert!(e.contains("OTEL_EXPORTER_OTLP_ENDPOINT"), "{e}");
        assert!(!e.contains("hunter2-pw"), "{e}");
        let e = err(&[("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "ftp://c/v1/logs")]);
        assert!(e.contains("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"), "{e}");
    }

    #[test]
    fn protocols() {
        let p = |v| read(&[("OTEL_EXPORTER_OTLP_PROTOCOL", v)]).map(|s| s.protocol);
        assert_eq!(p("http/json").unwrap(), Protocol::Json);
        assert_eq!(p("http/protobuf").unwrap(), Protocol::Protobuf);
        let e = p("grpc").unwrap_err().0;
        assert!(
            e.contains("OTLP/HTTP only") && e.contains("http/protobuf"),
            "{e}"
        );
        let e = p("thrift").unwrap_err().0;
        assert!(e.contains("OTEL_EXPORTER_OTLP_PROTOCOL"), "{e}");
    }

    #[test]
    fn headers_are_decoded_and_kept_secret() {
        let s = read(&[(
            "OTEL_EXPORTER_OTLP_HEADERS",
            "api-key=s3cr3t%2Cvalue%3D1, x-tenant = audit ,",
        )])
        .unwrap();
        let got: Vec<_> = s
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.expose()))
            .collect();
        assert_eq!(
            got,
            vec![("api-key", "s3cr3t,value=1"), ("x-tenant", "audit")]
        );
        assert!(!format!("{s:?}").contains("s3cr3t"));
        let e = err(&[("OTEL_EXPORTER_OTLP_HEADERS", "api-key")]);
        assert!(
            e.contains("OTEL_EXPORTER_OTLP_HEADERS") && e.contains("no '='"),
            "{e}"
        );
        let e = err(&[("OTEL_EXPORTER_OTLP_HEADERS", "k=s3cr3t%zz")]);
        assert!(!e.contains("s3cr3t"), "{e}");
        let e = err(&[("OTEL_EXPORTER_OTLP_HEADERS", "bad key=v")]);
        assert!(e.contains("header name"), "{e}");
    }

    #[test]
    fn compression_and_timeout() {
        let s = read(&[
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
        ])
        .unwrap();
        assert!(s.gzip);
        assert_eq!(s.retry.timeout, Duration::from_millis(2500));
        let e = err(&[("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd")]);
        assert!(e.contains("OTEL_EXPORTER_OTLP_COMPRESSION"), "{e}");
        let e = err(&[("OTEL_EXPORTER_OTLP_TIMEOUT", "10s")]);
        assert!(
            e.contains("OTEL_EXPORTER_OTLP_TIMEOUT") && e.contains("milliseconds"),
            "{e}"
        );
    }

    #[test]
    fn the_logs_signal_forms_win_whole() {
        let s = read(&[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "a=1,b=2"),
            ("OTEL_EXPORTER_OTLP_LOGS_HEADERS", "c=3"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "none"),
            ("OTEL_EXPORTER_OTLP_LOGS_COMPRESSION", "gzip"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "1000"),
            ("OTEL_EXPORTER_OTLP_LOGS_TIMEOUT", "2000"),
        ])
        .unwrap();
        assert_eq!(s.protocol, Protocol::Protobuf);
        let names: Vec<_> = s.headers.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            (names, s.headers_var),
            (vec!["c"], "OTEL_EXPORTER_OTLP_LOGS_HEADERS")
        );
        assert!(s.gzip);
        assert_eq!(s.retry.timeout, Duration::from_millis(2000));
        let e = err(&[("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "grpc")]);
        assert!(e.contains("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL"), "{e}");
        let e = err(&[("OTEL_EXPORTER_OTLP_LOGS_TIMEOUT", "soon")]);
        assert!(e.contains("OTEL_EXPORTER_OTLP_LOGS_TIMEOUT"), "{e}");
    }

    #[test]
    fn certificate_files_must_exist_and_come_in_pairs() {
        let e = err(&[("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem")]);
        assert!(
            e.contains("OTEL_EXPORTER_OTLP_CERTIFICATE") && e.contains("PEM file"),
            "{e}"
        );
        let file = tempfile::NamedTempFile::new().unwrap();
        let path = file.path().to_str().unwrap();
        let s = read(&[("OTEL_EXPORTER_OTLP_LOGS_CERTIFICATE", path)]).unwrap();
        assert_eq!(
            s.certificate.unwrap().1,
            "OTEL_EXPORTER_OTLP_LOGS_CERTIFICATE"
        );
        let e = err(&[("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", path)]);
        assert!(e.contains("without its pair"), "{e}");
        let s = read(&[
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", path),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", path),
        ])
        .unwrap();
        assert!(s.client.is_some());
    }

    #[test]
    fn resource_attributes_and_service_name() {
        let s = read(&[(
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment=prod,service.name=from-attrs,team=a%20b",
        )])
        .unwrap();
        let kv = |k: &str, v: &str| (k.to_string(), v.to_string());
        assert_eq!(
            s.resource,
            vec![
                kv("service.name", "from-attrs"),
                kv("deployment.environment", "prod"),
                kv("team", "a b")
            ]
        );
        let s = read(&[
            ("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attrs"),
            ("OTEL_SERVICE_NAME", "audit-prod"),
        ])
        .unwrap();
        assert_eq!(s.resource, vec![kv("service.name", "audit-prod")]);
        let e = err(&[("OTEL_RESOURCE_ATTRIBUTES", "=x")]);
        assert!(
            e.contains("OTEL_RESOURCE_ATTRIBUTES") && e.contains("empty key"),
            "{e}"
        );
    }
}
