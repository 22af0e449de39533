//! The Cato source's settings: the `CATO_*` variables.

use crate::base::env::{duration, Env};
use crate::base::exit::ConfigError;
use crate::base::secret::Secret;
use crate::http::retry::Policy;
use chrono::{DateTime, Utc};
use std::path::PathBuf;
use std::time::Duration;

type Result<T> = std::result::Result<T, ConfigError>;

pub const DEFAULT_URL: &str = "https://api.catonetworks.com/api/v1/graphql2";

/// Which feed a run reads; one per run and per state file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    Audit,
    Events,
}

impl Feed {
    /// As `CATO_FEED` and the state file spell it.
    pub fn name(self) -> &'static str {
        match self {
            Feed::Audit => "audit",
            Feed::Events => "events",
        }
    }

    /// The GraphQL operation, as the rate limits and errors name it.
    pub fn operation(self) -> &'static str {
        match self {
            Feed::Audit => "auditFeed",
            Feed::Events => "eventsFeed",
        }
    }

    /// Most records one call returns (eventsFeed 3000, auditFeed 1000).
    pub fn page_max(self) -> usize {
        match self {
            Feed::Audit => 1000,
            Feed::Events => 3000,
        }
    }
}

/// Where the first auditFeed run starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    At(DateTime<Utc>),
    Ago(Duration),
}

/// How far back `CATO_START_FROM` may reach: the spec documents no audit retention, so this is
/// a bound on our own windows, not a promise that Cato still has the records.
pub const START_FROM_MAX: Duration = Duration::from_secs(90 * 86400);
const START_FROM_DEFAULT: Duration = Duration::from_secs(7 * 86400);

#[derive(Debug, Clone)]
pub struct Settings {
    pub api_url: url::Url,
    pub api_key: Secret,
    pub account_ids: Vec<String>,
    pub feed: Feed,
    pub event_types: Vec<String>,
    pub event_sub_types: Vec<String>,
    pub state_file: PathBuf,
    pub start_from: StartFrom,
    /// `CATO_START_FROM` was set: eventsFeed then ships only events from that time on.
    pub start_from_set: bool,
    /// `CATO_MAX_RUN_SECONDS`: no new page is asked for after this.
    pub max_run: Option<Duration>,
    /// `CATO_TIMEOUT_SECONDS`, `CATO_MAX_RETRIES`, `CATO_RETRY_INITIAL_MS`.
    pub retry: Policy,
}

/// 30 s per request as Cato's own scripts use; enough retries that the jittered waits span
/// about a minute, the period of the per-account rate limits.
const DEFAULT_RETRY: Policy = Policy {
    timeout: Duration::from_secs(30),
    max_retries: 10,
    initial: Duration::from_secs(1),
};

/// The value of `var`, a comma list of non-empty names.
fn list(var: &str, value: Option<&str>, expected: &str) -> Result<Vec<String>> {
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    let items: Vec<String> = value.split(',').map(|s| s.trim().to_string()).collect();
    if items.iter().any(String::is_empty) {
        return Err(ConfigError(format!(
            "invalid {var} {value:?}: expected {expected}, separated by commas"
        )));
    }
    Ok(items)
}

impl Settings {
    pub fn from_env(env: &Env) -> Result<Self> {
        let api_url = env
            .http_url(
                "CATO_API_URL",
                "an http(s) URL such as https://api.catonetworks.com/api/v1/graphql2",
            )?
            .unwrap_or_else(|| url::Url::parse(DEFAULT_URL).expect("a valid URL"));
        let api_key = env.secret("CATO_API_KEY").ok_or_else(|| {
            ConfigError(
                "CATO_API_KEY is not set: expected a Cato API key (a View key is enough)".into(),
            )
        })?;
        let account_ids = list(
            "CATO_ACCOUNT_ID",
            env.get("CATO_ACCOUNT_ID"),
            "Cato account ids",
        )?;
        if account_ids.is_empty() {
            return Err(ConfigError(
                "CATO_ACCOUNT_ID is not set: expected the Cato account id, or several separated \
                 by commas"
                    .into(),
            ));
        }
        if let Some(bad) = account_ids.iter().find(|a| {
            !a.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        }) {
            return Err(ConfigError(format!(
                "invalid CATO_ACCOUNT_ID {bad:?}: expected account ids such as 4242, separated \
                 by commas"
            )));
        }
        let feed = env
            .choice(
                "CATO_FEED",
                &[("audit", Feed::Audit), ("events", Feed::Events)],
            )?
            .ok_or_else(|| {
                ConfigError(
                    "CATO_FEED is not set: expected audit (auditFeed) or events (eventsFeed)"
                        .into(),
                )
            })?;
        let event_types = list(
            "CATO_EVENT_TYPES",
            env.get("CATO_EVENT_TYPES"),
            "event types such as Security",
        )?;
        let event_sub_types = list(
            "CATO_EVENT_SUB_TYPES",
            env.get("CATO_EVENT_SUB_TYPES"),
            "event sub-types such as Internet Firewall",
        )?;
        if feed == Feed::Audit {
            for (var, values) in [
                ("CATO_EVENT_TYPES", &event_types),
                ("CATO_EVENT_SUB_TYPES", &event_sub_types),
            ] {
                if !values.is_empty() {
                    return Err(ConfigError(format!(
                        "{var} filters eventsFeed: it cannot be used with CATO_FEED=audit"
                    )));
                }
            }
        }
        // eventsFeed has no time to start at (its first run reads from the oldest event Cato
        // keeps); there an explicit CATO_START_FROM drops older events instead (moving over from
        // the Log Exporter's files without a duplicate).
        let start_from = match env.get("CATO_START_FROM") {
            None => StartFrom::Ago(START_FROM_DEFAULT),
            Some(s) => {
                let bad = || {
                    ConfigError(format!(
                        "invalid CATO_START_FROM {s:?}: expected a duration back from now of at \
                         most 90d, such as 7d or 12h, or an RFC 3339 time within the last 90 days"
                    ))
                };
                let now = Utc::now();
                match DateTime::parse_from_rfc3339(s) {
                    Ok(t) => {
                        let t = t.with_timezone(&Utc);
                        let max = chrono::Duration::from_std(START_FROM_MAX).expect("small");
                        if t > now || now - t > max {
                            return Err(bad());
                        }
                        StartFrom::At(t)
                    }
                    Err(_) => StartFrom::Ago(
                        duration(s)
                            .filter(|d| !d.is_zero() && *d <= START_FROM_MAX)
                            .ok_or_else(bad)?,
                    ),
                }
            }
        };
        let state_file = env
            .get("CATO_STATE_FILE")
            .map(PathBuf::from)
            .ok_or_else(|| {
                ConfigError(
                    "CATO_STATE_FILE is not set: expected the path of the file that keeps the \
                     feed's marker between runs (on a persistent volume)"
                        .into(),
                )
            })?;
        if state_file.file_name().is_none() || state_file.is_dir() {
            return Err(ConfigError(format!(
                "invalid CATO_STATE_FILE {:?}: expected a file path, not a directory",
                state_file.display()
            )));
        }
        let max_run = env
            .positive("CATO_MAX_RUN_SECONDS")?
            .map(|s| Duration::from_secs(s as u64));
        let retry = Policy::from_env(env, "CATO", DEFAULT_RETRY)?;
        Ok(Settings {
            api_url,
            api_key,
            account_ids,
            feed,
            event_types,
            event_sub_types,
            state_file,
            start_from,
            start_from_set: env.get("CATO_START_FROM").is_some(),
            max_run,
            retry,
        })
    }

    /// The filter set a marker belongs to, for the state file.
    pub fn filter_label(&self) -> String {
        format!(
            "event_type in [{}]; event_sub_type in [{}]",
            self.event_types.join(","),
            self.event_sub_types.join(",")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cato(pairs: &[(&str, &str)]) -> Result<Settings> {
        let mut all = vec![
            ("AUDIT_LOGGER_TYPE", "CATO"),
            ("CATO_API_KEY", "k3y-secret"),
            ("CATO_ACCOUNT_ID", "4242"),
            ("CATO_FEED", "events"),
            ("CATO_STATE_FILE", "/var/lib/audit-transfer/cato.json"),
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
    fn cato_defaults_and_values() {
        let c = cato(&[]).unwrap();
        assert_eq!(c.api_url.as_str(), DEFAULT_URL);
        assert_eq!(c.feed, Feed::Events);
        assert_eq!(c.account_ids, ["4242"]);
        assert!(c.event_types.is_empty() && c.max_run.is_none());
        assert_eq!(c.retry, DEFAULT_RETRY);
        assert!(!format!("{c:?}").contains("k3y-secret"));
        let c = cato(&[
            ("CATO_ACCOUNT_ID", "4242, 77"),
            (
                "CATO_API_URL",
                "https://api.us1.catonetworks.com/api/v1/graphql2",
            ),
            ("CATO_EVENT_TYPES", "Security,Connectivity"),
            ("CATO_EVENT_SUB_TYPES", "Internet Firewall"),
            ("CATO_MAX_RUN_SECONDS", "240"),
        ])
        .unwrap();
        assert_eq!(c.account_ids, ["4242", "77"]);
        assert_eq!(c.event_types, ["Security", "Connectivity"]);
        assert_eq!(c.event_sub_types, ["Internet Firewall"]);
        assert_eq!(c.max_run, Some(Duration::from_secs(240)));
        let c = cato(&[("CATO_FEED", "AUDIT")]).unwrap();
        assert_eq!(c.feed, Feed::Audit);
        assert_eq!(c.start_from, StartFrom::Ago(START_FROM_DEFAULT));
        let c = cato(&[("CATO_FEED", "audit"), ("CATO_START_FROM", "12h")]).unwrap();
        assert_eq!(c.start_from, StartFrom::Ago(Duration::from_secs(12 * 3600)));
    }

    #[test]
    fn cato_bad_values_name_the_variable() {
        let long_ago = (Utc::now() - chrono::Duration::days(91)).to_rfc3339();
        for (pairs, var) in [
            (vec![("CATO_API_KEY", "")], "CATO_API_KEY"),
            (vec![("CATO_ACCOUNT_ID", "")], "CATO_ACCOUNT_ID"),
            (vec![("CATO_ACCOUNT_ID", "42,,43")], "CATO_ACCOUNT_ID"),
            (vec![("CATO_ACCOUNT_ID", "42 43")], "CATO_ACCOUNT_ID"),
            (vec![("CATO_FEED", "")], "CATO_FEED"),
            (vec![("CATO_FEED", "both")], "CATO_FEED"),
            (
                vec![("CATO_API_URL", "api.catonetworks.com")],
                "CATO_API_URL",
            ),
            (vec![("CATO_STATE_FILE", "")], "CATO_STATE_FILE"),
            (vec![("CATO_MAX_RUN_SECONDS", "0")], "CATO_MAX_RUN_SECONDS"),
            (vec![("CATO_MAX_RETRIES", "x")], "CATO_MAX_RETRIES"),
            (vec![("CATO_EVENT_TYPES", "a,")], "CATO_EVENT_TYPES"),
            (vec![("CATO_START_FROM", "7days")], "CATO_START_FROM"),
            (
                vec![("CATO_FEED", "audit"), ("CATO_START_FROM", "91d")],
                "CATO_START_FROM",
            ),
            (
                vec![("CATO_FEED", "audit"), ("CATO_START_FROM", &long_ago)],
                "CATO_START_FROM",
            ),
            (
                vec![("CATO_FEED", "audit"), ("CATO_START_FROM", "soon")],
                "CATO_START_FROM",
            ),
            (
                vec![("CATO_FEED", "audit"), ("CATO_EVENT_TYPES", "Security")],
                "CATO_EVENT_TYPES",
            ),
        ] {
            let err = cato(&pairs).unwrap_err().0;
            assert!(err.contains(var), "{pairs:?}: {err}");
            assert!(!err.contains('\n') && !err.contains("k3y-secret"), "{err}");
        }
    }
}
