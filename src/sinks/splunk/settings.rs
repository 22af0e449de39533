//! The sink's settings, read from `SPLUNK_*` (see `shared/specs/splunk-hec-sink.md`).

use crate::base::env::Env;
use crate::base::exit::ConfigError;
use crate::base::secret::Secret;
use crate::http::retry::Policy;
use std::path::PathBuf;
use std::time::Duration;

type Result<T> = std::result::Result<T, ConfigError>;

/// Retries unless `SPLUNK_TIMEOUT_SECONDS`, `_MAX_RETRIES`, `_RETRY_INITIAL_MS` say otherwise.
pub const RETRY: Policy = Policy {
    timeout: Duration::from_secs(60),
    max_retries: 8,
    initial: Duration::from_millis(500),
};

/// Splunk may confirm only after flushing its buffers; its own Kafka connector waits 300 s.
const ACK_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, Clone)]
pub struct Settings {
    /// The HEC base URL (`https://splunk:8088`); the endpoints are joined to it.
    pub url: url::Url,
    pub token: Secret,
    pub index: Option<String>,
    pub sourcetype: String,
    pub source: Option<String>,
    pub host: Option<String>,
    /// Checked to be a file here; read when the client is built.
    pub ca_cert: Option<PathBuf>,
    pub insecure: bool,
    /// Indexer acknowledgement: a page is marked only once Splunk confirms it.
    pub ack: bool,
    pub ack_timeout: Duration,
    pub retry: Policy,
    /// SPLUNK_COMPRESSION=gzip (the default): event bodies are sent gzip-compressed.
    pub gzip: bool,
}

impl Settings {
    pub fn from_env(env: &Env) -> Result<Self> {
        let url = env
            .http_url(
                "SPLUNK_HEC_URL",
                "the http(s) URL of the HTTP Event Collector, such as https://splunk.example:8088",
            )?
            .ok_or_else(|| {
                ConfigError(
                    "SPLUNK_HEC_URL is not set: expected the http(s) URL of the HTTP Event Collector, such as https://splunk.example:8088"
                        .into(),
                )
            })?;
        let token = env.secret("SPLUNK_HEC_TOKEN").ok_or_else(|| {
            ConfigError("SPLUNK_HEC_TOKEN is not set: expected the HEC token".into())
        })?;
        let ca_cert = env.get("SPLUNK_CA_CERT").map(PathBuf::from);
        if let Some(p) = &ca_cert {
            if !p.is_file() {
                return Err(ConfigError(format!(
                    "invalid SPLUNK_CA_CERT {:?}: expected the path of a readable PEM file",
                    p.display()
                )));
            }
        }
        let ack_timeout = env
            .positive("SPLUNK_ACK_TIMEOUT_SECONDS")?
            .map(|s| Duration::from_secs(s as u64))
            .unwrap_or(ACK_TIMEOUT);
        Ok(Settings {
            url,
            token,
            index: text("SPLUNK_INDEX", env.get("SPLUNK_INDEX"))?,
            sourcetype: text("SPLUNK_SOURCETYPE", env.get("SPLUNK_SOURCETYPE"))?
                .unwrap_or_else(|| "_json".into()),
            source: text("SPLUNK_SOURCE", env.get("SPLUNK_SOURCE"))?,
            host: text("SPLUNK_HOST", env.get("SPLUNK_HOST"))?,
            ca_cert,
            insecure: env.boolean("SPLUNK_INSECURE")?.unwrap_or(false),
            ack: env.boolean("SPLUNK_HEC_ACK")?.unwrap_or(true),
            ack_timeout,
            retry: Policy::from_env(env, "SPLUNK", RETRY)?,
            gzip: env
                .choice("SPLUNK_COMPRESSION", &[("gzip", true), ("none", false)])?
                .unwrap_or(true),
        })
    }
}

/// A metadata value: one line of printable text (Splunk stores it as given).
fn text(var: &str, value: Option<&str>) -> Result<Option<String>> {
    match value {
        Some(v) if v.chars().any(char::is_control) => Err(ConfigError(format!(
            "invalid {var} {v:?}: expected one line of text without control characters"
        ))),
        v => Ok(v.map(String::from)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: (&str, &str) = ("SPLUNK_HEC_URL", "https://splunk.example:8088");
    const TOKEN: (&str, &str) = ("SPLUNK_HEC_TOKEN", "11111111-hec-token-secret");

    fn read(pairs: &[(&str, &str)]) -> std::result::Result<Settings, ConfigError> {
        Settings::from_env(&Env::from_pairs(pairs.iter().copied()))
    }

    fn err(pairs: &[(&str, &str)]) -> String {
        read(pairs).unwrap_err().0
    }

    #[test]
    fn defaults() {
        let s = read(&[URL, TOKEN]).unwrap();
        assert_eq!(s.url.as_str(), "https://splunk.example:8088/");
        assert_eq!(s.token.expose(), "11111111-hec-token-secret");
        assert_eq!(s.sourcetype, "_json");
        assert_eq!((s.index, s.source, s.host), (None, None, None));
        assert!(s.ack && !s.insecure && s.gzip);
        assert_eq!(s.ack_timeout, Duration::from_secs(300));
        assert_eq!(s.retry, RETRY);
    }

    #[test]
    fn everything_set() {
        let s = read(&[
            URL,
            TOKEN,
            ("SPLUNK_INDEX", "audit"),
            ("SPLUNK_SOURCETYPE", "audit:json"),
            ("SPLUNK_SOURCE", "audit-transfer"),
            ("SPLUNK_HOST", "db-1"),
            ("SPLUNK_INSECURE", "true"),
            ("SPLUNK_HEC_ACK", "false"),
            ("SPLUNK_ACK_TIMEOUT_SECONDS", "20"),
            ("SPLUNK_MAX_RETRIES", "2"),
            ("SPLUNK_RETRY_INITIAL_MS", "50"),
            ("SPLUNK_TIMEOUT_SECONDS", "5"),
            ("SPLUNK_COMPRESSION", "none"),
        ])
        .unwrap();
        assert!(!s.gzip);
        assert_eq!(s.index.as_deref(), Some("audit"));
        assert_eq!(s.sourcetype, "audit:json");
        assert_eq!(s.source.as_deref(), Some("audit-transfer"));
        assert_eq!(s.host.as_deref(), Some("db-1"));
        assert!(s.insecure && !s.ack);
        assert_eq!(s.ack_timeout, Duration::from_secs(20));
        assert_eq!(
            s.retry,
            Policy {
                timeout: Duration::from_secs(5),
                max_retries: 2,
                initial: Duration::from_millis(50),
            }
        );
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (var, val) in [
            ("SPLUNK_HEC_URL", "splunk.example:8088"),
            ("SPLUNK_HEC_URL", "ftp://splunk.example"),
            ("SPLUNK_INSECURE", "perhaps"),
            ("SPLUNK_HEC_ACK", "auto"),
            ("SPLUNK_ACK_TIMEOUT_SECONDS", "0"),
            ("SPLUNK_ACK_TIMEOUT_SECONDS", "soon"),
            ("SPLUNK_MAX_RETRIES", "many"),
            ("SPLUNK_TIMEOUT_SECONDS", "0"),
            ("SPLUNK_RETRY_INITIAL_MS", "soon"),
            ("SPLUNK_CA_CERT", "/nonexistent/ca.pem"),
            ("SPLUNK_INDEX", "a\nb"),
            ("SPLUNK_HOST", "a\tb"),
            ("SPLUNK_COMPRESSION", "br"),
        ] {
            let mut pairs = vec![URL, TOKEN];
            pairs.retain(|(k, _)| *k != var);
            pairs.push((var, val));
            let e = err(&pairs);
            assert!(e.contains(var), "{var}={val}: {e}");
            assert!(!e.contains('\n'), "{e}");
            assert!(!e.contains("hec-token-secret"), "{e}");
        }
        assert!(err(&[TOKEN]).starts_with("SPLUNK_HEC_URL is not set"));
        assert!(err(&[URL]).starts_with("SPLUNK_HEC_TOKEN is not set"));
        assert!(err(&[URL, ("SPLUNK_HEC_TOKEN", "  ")]).starts_with("SPLUNK_HEC_TOKEN is not set"));
    }

    #[test]
    fn credentials_in_the_url_are_refused_without_printing_them() {
        let e = err(&[
            ("SPLUNK_HEC_URL", "https://admin:Pw-1234@splunk:8088"),
            TOKEN,
        ]);
        assert!(e.starts_with("invalid SPLUNK_HEC_URL"), "{e}");
        assert!(!e.contains("Pw-1234"), "{e}");
    }

    #[test]
    fn the_token_stays_out_of_debug() {
        let s = read(&[URL, TOKEN]).unwrap();
        let debug = format!("{s:?}");
        assert!(!debug.contains("hec-token-secret"), "{debug}");
        assert!(debug.contains("splunk.example"), "{debug}");
    }
}
