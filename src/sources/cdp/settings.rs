//! The settings of the CDP archive source (`AUDIT_LOGGER_TYPE=CDP_ARCHIVE`), read from the
//! environment. Credentials are resolved here too (see [`super::credentials`]): a profile that is
//! not there or a key that does not parse is a configuration error naming its variable, found
//! before any command talks to CDP.

use super::credentials;
pub use super::credentials::Auth;
use crate::base::env::Env;
use crate::base::exit::ConfigError;
use crate::http::retry::Policy;
use chrono::{DateTime, Utc};
use std::time::Duration;

type Result<T> = std::result::Result<T, ConfigError>;

/// How far back the default batching window reaches.
pub const DEFAULT_LOOKBACK: chrono::Duration = chrono::Duration::days(7);
/// How far the default window stays behind now, so that events still being written are left
/// for the next run's window.
pub const WINDOW_MARGIN: chrono::Duration = chrono::Duration::minutes(10);

#[derive(Debug, Clone)]
pub struct Settings {
    /// `https://api.<region>.cdp.cloudera.com`, or CDP_ENDPOINT_URL.
    pub endpoint: url::Url,
    pub auth: Auth,
    /// Where the credentials came from, for messages (never the values).
    pub auth_origin: String,
    /// The window a batching task is started for; `None` with CDP_BATCH_EVENTS=false.
    pub window: Option<(DateTime<Utc>, DateTime<Utc>)>,
    pub task_timeout: Duration,
    pub page_size: u32,
    /// CDP_TIMEOUT_SECONDS, CDP_MAX_RETRIES, CDP_RETRY_INITIAL_MS.
    pub policy: Policy,
}

/// Ten attempts, as the official clients make.
const DEFAULT_POLICY: Policy = Policy {
    timeout: Duration::from_secs(60),
    max_retries: 9,
    initial: Duration::from_millis(500),
};

impl Settings {
    /// `now` anchors the default batching window.
    pub fn from_env(env: &Env, now: DateTime<Utc>) -> Result<Self> {
        let region = env.get("CDP_REGION").unwrap_or("us-west-1");
        if !region
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(ConfigError(format!(
                "invalid CDP_REGION {region:?}: expected a CDP region such as us-west-1, eu-1, ap-1 or usg-1"
            )));
        }
        let endpoint = match env.http_url(
            "CDP_ENDPOINT_URL",
            "http(s)://host[:port][/path] without credentials",
        )? {
            Some(u) => u,
            None => {
                let host = match region {
                    // The US government region lives under its own domain.
                    "usg-1" => "https://api.usg-1.cdp.clouderagovt.com".to_string(),
                    r => format!("https://api.{r}.cdp.cloudera.com"),
                };
                url::Url::parse(&host).map_err(|_| {
                    ConfigError(format!("invalid CDP_REGION {region:?}: not a host name"))
                })?
            }
        };
        let (auth, auth_origin) = credentials::resolve(env)?;

        let to = timestamp("CDP_TO_TIMESTAMP", env.get("CDP_TO_TIMESTAMP"))?
            .unwrap_or(now - WINDOW_MARGIN);
        let from = timestamp("CDP_FROM_TIMESTAMP", env.get("CDP_FROM_TIMESTAMP"))?
            .unwrap_or(to - DEFAULT_LOOKBACK);
        if from >= to {
            return Err(ConfigError(format!(
                "invalid CDP_FROM_TIMESTAMP {}: expected a time before CDP_TO_TIMESTAMP {}",
                from.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                to.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )));
        }
        let window = env
            .boolean("CDP_BATCH_EVENTS")?
            .unwrap_or(true)
            .then_some((from, to));
        let page_size = env
            .number("CDP_PAGE_SIZE", 20..=100, "a whole number from 20 to 100")?
            .unwrap_or(100);
        let task_timeout = env.positive("CDP_TASK_TIMEOUT")?.unwrap_or(600);
        Ok(Settings {
            endpoint,
            auth,
            auth_origin,
            window,
            task_timeout: Duration::from_secs(task_timeout as u64),
            page_size,
            policy: Policy::from_env(env, "CDP", DEFAULT_POLICY)?,
        })
    }
}

/// `value` of `var`: an RFC 3339 time (`2024-05-01T00:00:00Z`) or a date (`2024-05-01`,
/// midnight UTC).
fn timestamp(var: &str, value: Option<&str>) -> Result<Option<DateTime<Utc>>> {
    let Some(s) = value else {
        return Ok(None);
    };
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(Some(t.with_timezone(&Utc)));
    }
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| Some(t.and_utc()))
        .ok_or_else(|| {
            ConfigError(format!(
                "invalid {var} {s:?}: expected an RFC 3339 time such as 2024-05-01T00:00:00Z, or a date 2024-05-01"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const SEED: &str = "VHswlNpwJnMpuXhIq7LYDfzs+R9pHvVLqgBGbhcnbSE=";

    /// The settings as the registered kind reads them: configuring through [`super::super::KIND`]
    /// must succeed whenever the settings do.
    pub(crate) fn cdp(pairs: &[(&str, &str)]) -> Result<Settings> {
        let mut all = vec![("AUDIT_LOGGER_TYPE", "CDP_ARCHIVE")];
        all.extend_from_slice(pairs);
        let env = Env::from_pairs(all.iter().copied());
        (super::super::KIND.configure)(&env, &Default::default())?;
        Settings::from_env(&env, Utc::now())
    }

    fn stamp(t: DateTime<Utc>) -> String {
        t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    }

    #[test]
    fn cdp_defaults() {
        let c = cdp(&[("CDP_ACCESS_TOKEN", "tok")]).unwrap();
        assert_eq!(
            c.endpoint.as_str(),
            "https://api.us-west-1.cdp.cloudera.com/"
        );
        assert!(matches!(c.auth, Auth::Token(_)));
        assert!(!format!("{c:?}").contains("tok\""));
        let (from, to) = c.window.unwrap();
        assert_eq!(to - from, DEFAULT_LOOKBACK);
        assert!(Utc::now() - to >= WINDOW_MARGIN);
        assert_eq!(
            (c.page_size, c.task_timeout.as_secs(), c.policy.max_retries),
            (100, 600, 9)
        );
        let gov = cdp(&[("CDP_ACCESS_TOKEN", "t"), ("CDP_REGION", "usg-1")]).unwrap();
        assert_eq!(
            gov.endpoint.as_str(),
            "https://api.usg-1.cdp.clouderagovt.com/"
        );
        let off = cdp(&[("CDP_ACCESS_TOKEN", "t"), ("CDP_BATCH_EVENTS", "false")]).unwrap();
        assert!(off.window.is_none());
        let w = cdp(&[
            ("CDP_ACCESS_TOKEN", "t"),
            ("CDP_FROM_TIMESTAMP", "2024-05-01"),
            ("CDP_TO_TIMESTAMP", "2024-05-02T12:00:00+02:00"),
        ])
        .unwrap()
        .window
        .unwrap();
        assert_eq!(stamp(w.0), "2024-05-01T00:00:00Z");
        assert_eq!(stamp(w.1), "2024-05-02T10:00:00Z");
    }

    #[test]
    fn cdp_key_from_the_variable_or_a_file() {
        let c = cdp(&[("CDP_ACCESS_KEY_ID", "id-1"), ("CDP_PRIVATE_KEY", SEED)]).unwrap();
        assert!(matches!(&c.auth, Auth::Key(k) if k.access_key_id == "id-1"));
        assert!(!format!("{c:?}").contains(SEED));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        std::fs::write(&file, format!("{SEED}\n")).unwrap();
        let c = cdp(&[
            ("CDP_ACCESS_KEY_ID", "id-1"),
            ("CDP_PRIVATE_KEY", file.to_str().unwrap()),
        ])
        .unwrap();
        assert_eq!(c.auth_origin, "CDP_ACCESS_KEY_ID/CDP_PRIVATE_KEY");
    }

    #[test]
    fn cdp_credentials_file_profiles() {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir(home.path().join(".cdp")).unwrap();
        std::fs::write(
            home.path().join(".cdp/credentials"),
            format!(
                "[default]\ncdp_access_key_id = d\ncdp_private_key = {SEED}\n\n# other\n[ops]\ncdp_access_key_id=o\ncdp_private_key={SEED}\n"
            ),
        )
        .unwrap();
        let h = home.path().to_str().unwrap();
        let d = cdp(&[("HOME", h)]).unwrap();
        assert!(matches!(&d.auth, Auth::Key(k) if k.access_key_id == "d"));
        let o = cdp(&[("HOME", h), ("CDP_PROFILE", "ops")]).unwrap();
        assert!(matches!(&o.auth, Auth::Key(k) if k.access_key_id == "o"));
        assert!(o.auth_origin.contains("\"ops\""));
        let err = cdp(&[("HOME", h), ("CDP_PROFILE", "nope")]).unwrap_err().0;
        assert!(err.contains("CDP_PROFILE"), "{err}");
        let none = cdp(&[("HOME", "/nonexistent")]).unwrap_err().0;
        assert!(none.contains("CDP_ACCESS_KEY_ID") && none.contains("~/.cdp/credentials"));
    }

    #[test]
    fn cdp_bad_values_name_the_variable_and_never_quote_keys() {
        let key = ("CDP_ACCESS_TOKEN", "t");
        for (var, val) in [
            ("CDP_REGION", "US West"),
            ("CDP_ENDPOINT_URL", "ftp://x"),
            ("CDP_ENDPOINT_URL", "https://user:pw@x"),
            ("CDP_FROM_TIMESTAMP", "yesterday"),
            ("CDP_TO_TIMESTAMP", "2024-13-01"),
            ("CDP_PAGE_SIZE", "5"),
            ("CDP_PAGE_SIZE", "101"),
            ("CDP_TASK_TIMEOUT", "0"),
            ("CDP_MAX_RETRIES", "-1"),
            ("CDP_RETRY_INITIAL_MS", "x"),
            ("CDP_TIMEOUT_SECONDS", "0"),
            ("CDP_BATCH_EVENTS", "sometimes"),
        ] {
            let err = cdp(&[key, (var, val)]).unwrap_err().0;
            assert!(err.contains(var), "{var}={val}: {err}");
            assert!(!err.contains('\n'));
        }
        let err = cdp(&[
            key,
            ("CDP_FROM_TIMESTAMP", "2024-05-02"),
            ("CDP_TO_TIMESTAMP", "2024-05-01"),
        ])
        .unwrap_err()
        .0;
        assert!(err.contains("CDP_FROM_TIMESTAMP"), "{err}");
        let secret = "s3cret-but-not-a-key";
        let err = cdp(&[("CDP_ACCESS_KEY_ID", "i"), ("CDP_PRIVATE_KEY", secret)])
            .unwrap_err()
            .0;
        assert!(
            err.contains("CDP_PRIVATE_KEY") && !err.contains(secret),
            "{err}"
        );
        let err = cdp(&[("CDP_ACCESS_KEY_ID", "i")]).unwrap_err().0;
        assert!(err.contains("CDP_PRIVATE_KEY"), "{err}");
        let err = cdp(&[("CDP_PRIVATE_KEY", SEED)]).unwrap_err().0;
        assert!(err.contains("CDP_ACCESS_KEY_ID"), "{err}");
        let err = cdp(&[key, ("CDP_ACCESS_KEY_ID", "i"), ("CDP_PRIVATE_KEY", SEED)])
            .unwrap_err()
            .0;
        assert!(err.contains("CDP_ACCESS_TOKEN"), "{err}");
    }

    /// Issue 14 item 2: credentials in the endpoint URL are refused, and the message quotes the
    /// URL with the password blanked.
    #[test]
    fn endpoint_url_with_credentials_is_refused_without_printing_the_password() {
        for url in [
            "https://audit:Hunter2-pass@api.example.com",
            "https://audit:Hunter2-pass@api.example.com:8443/cdp?x=1",
            // Unencoded '@' and '/' in the password: the URL does not even parse as meant.
            "https://audit:Hunter2-p@ss/word@api.example.com",
        ] {
            let err = cdp(&[("CDP_ACCESS_TOKEN", "t"), ("CDP_ENDPOINT_URL", url)])
                .unwrap_err()
                .0;
            assert!(err.starts_with("invalid CDP_ENDPOINT_URL"), "{err}");
            assert!(!err.contains("Hunter2"), "{err}");
            assert!(err.contains("***@api.example.com"), "{err}");
        }
        let err = cdp(&[
            ("CDP_ACCESS_TOKEN", "t"),
            ("CDP_ENDPOINT_URL", "https://audit@api.example.com"),
        ])
        .unwrap_err()
        .0;
        assert!(err.contains("without credentials"), "{err}");
        let ok = cdp(&[
            ("CDP_ACCESS_TOKEN", "t"),
            ("CDP_ENDPOINT_URL", "http://127.0.0.1:8080/proxy"),
        ])
        .unwrap();
        assert_eq!(ok.endpoint.as_str(), "http://127.0.0.1:8080/proxy");
    }
}
