//! The sink's settings, read from `ELASTICSEARCH_*`. Names and defaults are those of
//! structured-log-transfer (`ELASTICSEARCH_HOST` as `host`, `host:port` or a URL, with
//! `ELASTICSEARCH_PORT`/`ELASTICSEARCH_SCHEME`); the rest are ours.

use crate::base::env::Env;
use crate::base::exit::ConfigError;
use crate::base::secret::{redact_url, Secret};
use crate::http::retry::Policy;
use crate::routing::Template;
use std::path::PathBuf;
use std::time::Duration;

type Result<T> = std::result::Result<T, ConfigError>;

/// Retries unless `ELASTICSEARCH_TIMEOUT_SECONDS`, `_MAX_RETRIES`, `_RETRY_INITIAL_MS` say
/// otherwise.
const RETRY: Policy = Policy {
    timeout: Duration::from_secs(60),
    max_retries: 8,
    initial: Duration::from_millis(500),
};

#[derive(Debug, Clone)]
pub struct Settings {
    pub url: url::Url,
    pub index: String,
    /// Set when the index name has placeholders (`audit-{topic}-{yyyy.MM.dd}`): each document's
    /// index is rendered from its route.
    pub index_template: Option<Template>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub api_key: Option<Secret>,
    /// Checked to be a file here; read when the client is built.
    pub ca_cert: Option<PathBuf>,
    pub insecure: bool,
    pub retry: Policy,
    /// ELASTICSEARCH_CREATE_INDEX: create the index with the audit mapping at run start.
    pub create_index: bool,
    /// ELASTICSEARCH_COMPRESSION=gzip: bulk bodies are sent gzip-compressed.
    pub compression: bool,
}

impl Settings {
    pub fn from_env(env: &Env) -> Result<Self> {
        let url = url(env)?;
        let (index, index_template) = index(env)?;

        let ca_cert = env.get("ELASTICSEARCH_CA_CERT").map(PathBuf::from);
        if let Some(p) = &ca_cert {
            if !p.is_file() {
                return Err(ConfigError(format!(
                    "invalid ELASTICSEARCH_CA_CERT {:?}: expected the path of a readable PEM file",
                    p.display()
                )));
            }
        }
        let username = env.get("ELASTICSEARCH_USERNAME").map(String::from);
        // As given: spaces at either end may belong to a password.
        let password = env
            .raw("ELASTICSEARCH_PASSWORD")
            .filter(|p| !p.is_empty())
            .map(Secret::new);
        let api_key = env.secret("ELASTICSEARCH_API_KEY");
        if api_key.is_some() && username.is_some() {
            return Err(ConfigError(
                "both ELASTICSEARCH_API_KEY and ELASTICSEARCH_USERNAME are set: expected one way to authenticate"
                    .into(),
            ));
        }
        let compression = match env
            .get("ELASTICSEARCH_COMPRESSION")
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("none") => false,
            Some("gzip") => true,
            Some(other) => {
                return Err(ConfigError(format!(
                    "invalid ELASTICSEARCH_COMPRESSION {other:?}: expected gzip or none"
                )))
            }
        };
        Ok(Settings {
            url,
            index,
            index_template,
            username,
            password,
            api_key,
            ca_cert,
            insecure: env.boolean("ELASTICSEARCH_INSECURE")?.unwrap_or(false),
            retry: Policy::from_env(env, "ELASTICSEARCH", RETRY)?,
            create_index: env.boolean("ELASTICSEARCH_CREATE_INDEX")?.unwrap_or(false),
            compression,
        })
    }
}

/// `ELASTICSEARCH_HOST` (host, host:port or a URL) with `ELASTICSEARCH_SCHEME` and
/// `ELASTICSEARCH_PORT` (0: the host's own port).
fn url(env: &Env) -> Result<url::Url> {
    let host = env.get("ELASTICSEARCH_HOST").ok_or_else(|| {
        ConfigError("ELASTICSEARCH_HOST is not set: expected host, host:port or a URL".into())
    })?;
    let scheme = env
        .get("ELASTICSEARCH_SCHEME")
        .unwrap_or("https")
        .to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return Err(ConfigError(format!(
            "invalid ELASTICSEARCH_SCHEME {scheme:?}: expected http or https"
        )));
    }
    let port = match env.get("ELASTICSEARCH_PORT") {
        None => 0,
        Some(p) => p.parse::<u16>().map_err(|_| {
            ConfigError(format!(
                "invalid ELASTICSEARCH_PORT {p:?}: expected a port number 0-65535 (0: take it from ELASTICSEARCH_HOST)"
            ))
        })?,
    };
    let has_scheme = host.contains("://");
    let base = if has_scheme {
        host.to_string()
    } else {
        format!("{scheme}://{host}")
    };
    let mut url = url::Url::parse(&base)
        .ok()
        .filter(|u| {
            u.host_str().is_some_and(|h| !h.is_empty())
                && u.username().is_empty()
                && u.password().is_none()
                // `http:/user:pw@host` would read as host `http` with the rest as a path:
                // a host without a scheme has no path, and an `@` anywhere is credentials.
                && !host.contains('@')
                && (has_scheme || !host.contains('/'))
        })
        .ok_or_else(|| {
            // Quoted as given, its password blanked (`user:pw@host` without a scheme too).
            let shown = redact_url(host);
            ConfigError(format!(
                "invalid ELASTICSEARCH_HOST {shown:?}: expected host, host:port or scheme://host:port (credentials go in ELASTICSEARCH_USERNAME/PASSWORD or ELASTICSEARCH_API_KEY)"
            ))
        })?;
    if port != 0 {
        url.set_port(Some(port)).map_err(|_| {
            ConfigError(format!(
                "invalid ELASTICSEARCH_PORT {port}: cannot apply to {host:?}"
            ))
        })?;
    }
    Ok(url)
}

/// `ELASTICSEARCH_APP_AUDIT_LOG_INDEX`: a name, or a template of names.
fn index(env: &Env) -> Result<(String, Option<Template>)> {
    let index = env
        .get("ELASTICSEARCH_APP_AUDIT_LOG_INDEX")
        .unwrap_or("app_audit_log")
        .to_string();
    let template = Template::parse("ELASTICSEARCH_APP_AUDIT_LOG_INDEX", &index)?;
    let fixed: String = template.literals().collect();
    let index_ok = !index.starts_with(['-', '_', '+'])
        && index != "."
        && index != ".."
        && index.len() <= 255
        && fixed.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.' | '+')
        });
    if !index_ok {
        return Err(ConfigError(format!(
            "invalid ELASTICSEARCH_APP_AUDIT_LOG_INDEX {index:?}: expected a lowercase index name of letters, digits, '-', '_', '.', '+' not starting with '-', '_' or '+', optionally with {{topic}}, {{routing_key}} and a date such as {{yyyy.MM.dd}}"
        )));
    }
    let template = (!template.is_static()).then_some(template);
    Ok((index, template))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        Env::from_pairs(pairs.iter().copied())
    }

    fn es(pairs: &[(&str, &str)]) -> Settings {
        Settings::from_env(&env(pairs)).unwrap()
    }

    fn err(pairs: &[(&str, &str)]) -> String {
        Settings::from_env(&env(pairs)).unwrap_err().0
    }

    #[test]
    fn both_host_port_forms_give_the_same_url() {
        let a = es(&[
            ("ELASTICSEARCH_HOST", "es.example"),
            ("ELASTICSEARCH_PORT", "9243"),
        ]);
        let b = es(&[
            ("ELASTICSEARCH_HOST", "es.example:9243"),
            ("ELASTICSEARCH_PORT", "0"),
        ]);
        let c = es(&[("ELASTICSEARCH_HOST", "es.example:9243")]);
        assert_eq!(a.url.as_str(), "https://es.example:9243/");
        assert_eq!(a.url, b.url);
        assert_eq!(b.url, c.url);
        let d = es(&[
            ("ELASTICSEARCH_HOST", "localhost:9200"),
            ("ELASTICSEARCH_SCHEME", "http"),
        ]);
        assert_eq!(d.url.as_str(), "http://localhost:9200/");
    }

    #[test]
    fn compression_is_gzip_or_none() {
        let host = ("ELASTICSEARCH_HOST", "es:9200");
        assert!(!es(&[host]).compression);
        assert!(es(&[host, ("ELASTICSEARCH_COMPRESSION", "GZIP")]).compression);
        let e = err(&[host, ("ELASTICSEARCH_COMPRESSION", "br")]);
        assert!(e.contains("ELASTICSEARCH_COMPRESSION"), "{e:?}");
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (var, val) in [
            ("ELASTICSEARCH_PORT", "http"),
            ("ELASTICSEARCH_PORT", "70000"),
            ("ELASTICSEARCH_SCHEME", "ftp"),
            ("ELASTICSEARCH_APP_AUDIT_LOG_INDEX", "Bad Index"),
            ("ELASTICSEARCH_MAX_RETRIES", "many"),
            ("ELASTICSEARCH_TIMEOUT_SECONDS", "0"),
            ("ELASTICSEARCH_RETRY_INITIAL_MS", "soon"),
            ("ELASTICSEARCH_INSECURE", "perhaps"),
            ("ELASTICSEARCH_CREATE_INDEX", "sure"),
            ("ELASTICSEARCH_CA_CERT", "/nonexistent/ca.pem"),
        ] {
            let e = err(&[("ELASTICSEARCH_HOST", "h"), (var, val)]);
            assert!(e.contains(var), "{var}={val}: {e}");
            assert!(!e.contains('\n'));
        }
        let e = err(&[]);
        assert!(e.starts_with("ELASTICSEARCH_HOST is not set"), "{e}");
        let e = err(&[
            ("ELASTICSEARCH_HOST", "h"),
            ("ELASTICSEARCH_USERNAME", "u"),
            ("ELASTICSEARCH_API_KEY", "k"),
        ]);
        assert!(e.contains("both ELASTICSEARCH_API_KEY and ELASTICSEARCH_USERNAME"));
    }

    /// Issue 14 (2): the value is quoted, its password never.
    #[test]
    fn credentials_in_the_host_are_refused_without_printing_them() {
        for (host, shown) in [
            (
                "http://elastic:Pw-1234@127.0.0.1:9200",
                "\"http://elastic:***@127.0.0.1:9200\"",
            ),
            (
                "elastic:Pw-1234@127.0.0.1:9200",
                "\"elastic:***@127.0.0.1:9200\"",
            ),
            ("https://:Pw-1234@es.example", "\"https://:***@es.example\""),
            (
                "https://elastic:p w 1234@es.example",
                "\"https://elastic:***@es.example\"",
            ),
        ] {
            let e = err(&[("ELASTICSEARCH_HOST", host)]);
            assert!(
                e.starts_with(&format!("invalid ELASTICSEARCH_HOST {shown}: expected")),
                "{host}: {e}"
            );
            assert!(
                !e.contains("1234") && e.contains("ELASTICSEARCH_USERNAME/PASSWORD"),
                "{e}"
            );
        }
    }

    #[test]
    fn secrets_are_kept_out_of_debug() {
        let basic = es(&[
            ("ELASTICSEARCH_HOST", "h"),
            ("ELASTICSEARCH_USERNAME", "elastic"),
            ("ELASTICSEARCH_PASSWORD", " pass word "),
        ]);
        assert_eq!(basic.password.as_ref().unwrap().expose(), " pass word ");
        let key = es(&[
            ("ELASTICSEARCH_HOST", "h"),
            ("ELASTICSEARCH_API_KEY", "id:api-key-value"),
        ]);
        for debug in [format!("{basic:?}"), format!("{key:?}")] {
            assert!(
                !debug.contains("pass word") && !debug.contains("api-key-value"),
                "{debug}"
            );
        }
        assert!(format!("{basic:?}").contains("\"elastic\""));
    }

    #[test]
    fn retries_follow_the_shared_policy_settings() {
        let d = es(&[("ELASTICSEARCH_HOST", "h")]);
        assert_eq!(d.retry, RETRY);
        let s = es(&[
            ("ELASTICSEARCH_HOST", "h"),
            ("ELASTICSEARCH_MAX_RETRIES", "0"),
            ("ELASTICSEARCH_RETRY_INITIAL_MS", "50"),
            ("ELASTICSEARCH_TIMEOUT_SECONDS", "5"),
        ]);
        assert_eq!(
            s.retry,
            Policy {
                timeout: Duration::from_secs(5),
                max_retries: 0,
                initial: Duration::from_millis(50),
            }
        );
    }
}
