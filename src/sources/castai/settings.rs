//! The CAST AI source's settings: the `CASTAI_*` variables.

use crate::base::env::{duration, Env};
use crate::base::exit::ConfigError;
use crate::base::secret::Secret;
use crate::http::retry::Policy;
use chrono::{DateTime, Utc};
use std::path::PathBuf;
use std::time::Duration;

type Result<T> = std::result::Result<T, ConfigError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiVersion {
    V1,
    V2,
}

impl ApiVersion {
    /// As `CASTAI_API_VERSION` and the state file spell it.
    pub fn name(self) -> &'static str {
        match self {
            ApiVersion::V1 => "v1",
            ApiVersion::V2 => "v2",
        }
    }
}

/// Where a run without a state file starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    At(DateTime<Utc>),
    Ago(Duration),
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub api_url: url::Url,
    pub api_key: Secret,
    pub version: ApiVersion,
    pub page_limit: usize,
    pub cluster_id: Option<String>,
    pub lag: Duration,
    pub start_from: StartFrom,
    pub state_file: PathBuf,
    /// Longest time span fetched as one window (the state advances per window).
    pub window: Duration,
    /// `CASTAI_TIMEOUT_SECONDS`, `CASTAI_MAX_RETRIES`, `CASTAI_RETRY_INITIAL_MS`.
    pub retry: Policy,
}

const DEFAULT_RETRY: Policy = Policy {
    timeout: Duration::from_secs(60),
    max_retries: 8,
    initial: Duration::from_millis(500),
};

impl Settings {
    /// Reads and checks the settings; the state file is only opened when the source connects.
    pub fn from_env(env: &Env) -> Result<Self> {
        let api_url = env
            .http_url(
                "CASTAI_API_URL",
                "an http(s) URL such as https://api.cast.ai",
            )?
            .unwrap_or_else(|| url::Url::parse("https://api.cast.ai").expect("a valid URL"));
        let api_key = env.secret("CASTAI_API_KEY").ok_or_else(|| {
            ConfigError(
                "CASTAI_API_KEY is not set: expected a CAST AI API access key (read-only is enough)"
                    .into(),
            )
        })?;
        let version = env
            .choice(
                "CASTAI_API_VERSION",
                &[("v1", ApiVersion::V1), ("v2", ApiVersion::V2)],
            )?
            .unwrap_or(ApiVersion::V1);
        // The API's own limits: v1 as the audit logs receiver validates it, v2 as documented.
        let (min, max) = match version {
            ApiVersion::V1 => (10, 1000),
            ApiVersion::V2 => (1, 250),
        };
        let page_limit = env
            .number(
                "CASTAI_PAGE_LIMIT",
                min..=max,
                &format!(
                    "a whole number from {min} to {max} for API {}",
                    version.name()
                ),
            )?
            .unwrap_or(100);
        let lag = match env.get("CASTAI_LAG") {
            None => Duration::from_secs(120),
            Some(s) => duration(s).ok_or_else(|| {
                ConfigError(format!(
                    "invalid CASTAI_LAG {s:?}: expected a duration such as 120s, 5m or 0"
                ))
            })?,
        };
        let start_from = match env.get("CASTAI_START_FROM") {
            None => StartFrom::Ago(Duration::from_secs(90 * 86400)),
            Some(s) => match DateTime::parse_from_rfc3339(s) {
                Ok(t) => StartFrom::At(t.with_timezone(&Utc)),
                Err(_) => StartFrom::Ago(duration(s).ok_or_else(|| {
                    ConfigError(format!(
                        "invalid CASTAI_START_FROM {s:?}: expected an RFC 3339 time such as \
                         2024-05-01T00:00:00Z or a duration back from now such as 90d or 12h"
                    ))
                })?),
            },
        };
        let state_file = env
            .get("CASTAI_STATE_FILE")
            .map(PathBuf::from)
            .ok_or_else(|| {
                ConfigError(
                    "CASTAI_STATE_FILE is not set: expected the path of the file that keeps the \
                     checkpoint between runs (on a persistent volume)"
                        .into(),
                )
            })?;
        // Checked here, not only when the file is opened: a directory is a mistake in the
        // settings, and `check` should say so before anything connects.
        if state_file.file_name().is_none() || state_file.is_dir() {
            return Err(ConfigError(format!(
                "invalid CASTAI_STATE_FILE {:?}: expected a file path, not a directory",
                state_file.display()
            )));
        }
        let window = match env.get("CASTAI_WINDOW") {
            None => Duration::from_secs(6 * 3600),
            Some(s) => duration(s)
                .filter(|d| d.as_secs() >= 1)
                .ok_or_else(|| {
                    ConfigError(format!(
                        "invalid CASTAI_WINDOW {s:?}: expected a duration of at least 1s, such as 6h or 30m"
                    ))
                })?,
        };
        let retry = Policy::from_env(env, "CASTAI", DEFAULT_RETRY)?;
        Ok(Settings {
            api_url,
            api_key,
            version,
            page_limit,
            cluster_id: env.get("CASTAI_CLUSTER_ID").map(String::from),
            lag,
            start_from,
            state_file,
            window,
            retry,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The settings of `pairs` over a minimal valid set. The registry must agree: the source it
    /// configures fails exactly when these settings do.
    fn castai(pairs: &[(&str, &str)]) -> Result<Settings> {
        let mut all = vec![
            ("AUDIT_LOGGER_TYPE", "CASTAI"),
            ("CASTAI_API_KEY", "k3y-secret"),
            ("CASTAI_STATE_FILE", "/var/lib/audit-transfer/castai.json"),
        ];
        all.retain(|(k, _)| !pairs.iter().any(|(p, _)| p == k));
        all.extend_from_slice(pairs);
        let env = Env::from_pairs(all);
        let settings = Settings::from_env(&env);
        let configured = crate::sources::configure(&env, &Default::default());
        assert_eq!(
            configured.as_ref().err(),
            settings.as_ref().err(),
            "the registry reads the same settings"
        );
        settings
    }

    #[test]
    fn castai_defaults_and_values() {
        let c = castai(&[]).unwrap();
        assert_eq!(c.api_url.as_str(), "https://api.cast.ai/");
        assert_eq!(c.version, ApiVersion::V1);
        assert_eq!(c.page_limit, 100);
        assert_eq!(c.lag, Duration::from_secs(120));
        assert_eq!(
            c.start_from,
            StartFrom::Ago(Duration::from_secs(90 * 86400))
        );
        assert_eq!(c.window, Duration::from_secs(6 * 3600));
        assert_eq!(c.retry, DEFAULT_RETRY);
        assert_eq!(c.api_key.expose(), "k3y-secret");
        assert!(!format!("{c:?}").contains("k3y-secret"));
        let c = castai(&[
            ("CASTAI_API_VERSION", "V2"),
            ("CASTAI_PAGE_LIMIT", "250"),
            ("CASTAI_LAG", "0"),
            ("CASTAI_START_FROM", "2024-05-01T00:00:00+02:00"),
            ("CASTAI_WINDOW", "30m"),
            ("CASTAI_TIMEOUT_SECONDS", "5"),
            ("CASTAI_MAX_RETRIES", "0"),
            ("CASTAI_RETRY_INITIAL_MS", "20"),
        ])
        .unwrap();
        assert_eq!((c.version, c.page_limit), (ApiVersion::V2, 250));
        assert_eq!(c.lag, Duration::ZERO);
        assert_eq!(
            c.start_from,
            StartFrom::At("2024-04-30T22:00:00Z".parse().unwrap())
        );
        assert_eq!(c.window, Duration::from_secs(1800));
        assert_eq!(
            c.retry,
            Policy {
                timeout: Duration::from_secs(5),
                max_retries: 0,
                initial: Duration::from_millis(20),
            }
        );
        assert_eq!(
            castai(&[("CASTAI_START_FROM", "12h")]).unwrap().start_from,
            StartFrom::Ago(Duration::from_secs(12 * 3600))
        );
    }

    #[test]
    fn castai_bad_values_name_the_variable() {
        for (var, val) in [
            ("CASTAI_API_VERSION", "v3"),
            ("CASTAI_API_URL", "api.cast.ai"),
            ("CASTAI_API_URL", "https://user:pw@api.cast.ai"),
            ("CASTAI_PAGE_LIMIT", "5"),
            ("CASTAI_PAGE_LIMIT", "1001"),
            ("CASTAI_LAG", "soon"),
            ("CASTAI_START_FROM", "yesterday"),
            ("CASTAI_WINDOW", "0"),
            ("CASTAI_TIMEOUT_SECONDS", "0"),
            ("CASTAI_MAX_RETRIES", "-1"),
            ("CASTAI_RETRY_INITIAL_MS", "x"),
            ("CASTAI_API_KEY", ""),
            ("CASTAI_STATE_FILE", ""),
        ] {
            let err = castai(&[(var, val)]).unwrap_err().0;
            assert!(err.contains(var), "{var}={val}: {err}");
            assert!(!err.contains('\n') && !err.contains("k3y-secret"));
        }
        let err = castai(&[("CASTAI_API_VERSION", "v2"), ("CASTAI_PAGE_LIMIT", "500")])
            .unwrap_err()
            .0;
        assert!(err.contains("1 to 250"), "{err}");
    }

    #[test]
    fn api_url_with_credentials_is_refused_without_its_password() {
        for url in [
            "https://audit:Pa55-w0rd-xyz@api.cast.ai",
            "https://audit:Pa55-w0rd-xyz@api.cast.ai/proxy/",
            "http://:Pa55-w0rd-xyz@proxy.example:8080",
        ] {
            let err = castai(&[("CASTAI_API_URL", url)]).unwrap_err().0;
            assert!(err.starts_with("invalid CASTAI_API_URL"), "{err}");
            assert!(err.contains("credentials"), "{err}");
            assert!(!err.contains("Pa55-w0rd-xyz"), "{err}");
        }
        // A user name alone is refused too (the key has a variable of its own).
        let err = castai(&[("CASTAI_API_URL", "https://audit@api.cast.ai")])
            .unwrap_err()
            .0;
        assert!(err.starts_with("invalid CASTAI_API_URL"), "{err}");
    }
}
