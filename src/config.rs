//! Configuration from environment variables.
//!
//! Variable names and defaults are those of City of Helsinki's structured-log-transfer, so an
//! existing deployment works unchanged; new variables are additive. Every invalid value is a
//! one-line [`ConfigError`] naming the variable and what it accepts.

pub use crate::base::env::duration;
use crate::base::env::Env;
use crate::base::exit::ConfigError;
use std::path::PathBuf;
use std::time::Duration;

type Result<T> = std::result::Result<T, ConfigError>;

#[derive(Clone)]
pub struct ElasticsearchConfig {
    pub url: url::Url,
    pub index: String,
    /// Set when the index name has placeholders (`audit-{topic}-{yyyy.MM.dd}`): each document's
    /// index is rendered from its route.
    pub index_template: Option<crate::routing::Template>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub api_key: Option<String>,
    pub ca_cert: Option<PathBuf>,
    pub insecure: bool,
    pub timeout: Duration,
    pub max_retries: usize,
    pub retry_initial: Duration,
    /// ELASTICSEARCH_CREATE_INDEX: create the index with the audit mapping at run start.
    pub create_index: bool,
    /// ELASTICSEARCH_COMPRESSION=gzip: bulk bodies are sent gzip-compressed.
    pub compression: bool,
}

impl std::fmt::Debug for ElasticsearchConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Credentials are deliberately left out.
        f.debug_struct("ElasticsearchConfig")
            .field("url", &self.url.as_str())
            .field("index", &self.index)
            .field("username", &self.username)
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .finish()
    }
}

/// What every run uses, whatever its source and sink: the budget, paging, attempts, purging,
/// and routing. Each source and sink reads its own settings in its own module.
#[derive(Debug, Clone)]
pub struct Config {
    pub enable_send: bool,
    pub batch_size: usize,
    pub chunk_size: usize,
    /// Pages in flight at once (workers), for sources that allow it.
    pub concurrency: usize,
    pub max_attempts: u32,
    pub clear_entries: bool,
    pub clear_days: u32,
    /// Warnings found while reading (e.g. BATCH_SIZE and BATCH_LIMIT disagree), logged at start.
    pub warnings: Vec<String>,
    /// Topics, routing keys and which of them this run ships; set once source and sink are
    /// configured (their defaults and needs shape it).
    pub routing: crate::routing::Routing,
    /// The sink stores each named unit of the source as one file (OUTPUT_LAYOUT=cdp-archive):
    /// the source ships units whole.
    pub units_as_files: bool,
}

impl Config {
    pub fn from_env(raw: &Env) -> Result<Self> {
        let mut warnings = Vec::new();
        // BATCH_SIZE is the README's name, BATCH_LIMIT what the original's code read.
        let batch_size = raw.positive("BATCH_SIZE")?;
        let batch_limit = raw.positive("BATCH_LIMIT")?;
        let batch_size = match (batch_size, batch_limit) {
            (Some(s), Some(l)) => {
                if s != l {
                    warnings.push(format!(
                        "BATCH_SIZE={s} and BATCH_LIMIT={l} differ; using BATCH_SIZE"
                    ));
                }
                s
            }
            (Some(s), None) => s,
            (None, Some(l)) => l,
            (None, None) => 5000,
        };
        let chunk_size = raw.positive("CHUNK_SIZE")?.unwrap_or(500);
        let concurrency = raw.positive("SINK_CONCURRENCY")?.unwrap_or(2);
        if concurrency > 16 {
            return Err(ConfigError(format!(
                "invalid SINK_CONCURRENCY {concurrency}: expected 1 to 16 pages in flight"
            )));
        }
        let max_attempts = raw
            .number("MAX_ATTEMPTS", 1..=u32::MAX, "a positive whole number")?
            .unwrap_or(5);
        let clear_days = raw
            .number(
                "CLEAR_AUDIT_LOG_DAYS",
                0..=u32::MAX,
                "a whole number of days (0 or more)",
            )?
            .unwrap_or(30);
        Ok(Config {
            enable_send: raw.boolean("ENABLE_SEND_AUDIT_LOG")?.unwrap_or(true),
            batch_size,
            chunk_size,
            concurrency,
            max_attempts,
            clear_entries: raw.boolean("CLEAR_AUDIT_LOG_ENTRIES")?.unwrap_or(true),
            clear_days,
            warnings,
            routing: crate::routing::Routing::default(),
            units_as_files: false,
        })
    }
}

pub(crate) fn elasticsearch_config(raw: &Env) -> Result<ElasticsearchConfig> {
    let host = raw.get("ELASTICSEARCH_HOST").ok_or_else(|| {
        ConfigError("ELASTICSEARCH_HOST is not set: expected host, host:port or a URL".into())
    })?;
    let scheme = raw
        .get("ELASTICSEARCH_SCHEME")
        .unwrap_or("https")
        .to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return Err(ConfigError(format!(
            "invalid ELASTICSEARCH_SCHEME {scheme:?}: expected http or https"
        )));
    }
    let port = match raw.get("ELASTICSEARCH_PORT") {
        None => 0,
        Some(p) => p.parse::<u16>().map_err(|_| {
            ConfigError(format!(
                "invalid ELASTICSEARCH_PORT {p:?}: expected a port number 0-65535 (0: take it from ELASTICSEARCH_HOST)"
            ))
        })?,
    };
    let base = if host.contains("://") {
        host.to_string()
    } else {
        format!("{scheme}://{host}")
    };
    let mut url = url::Url::parse(&base)
        .ok()
        .filter(|u| u.host_str().is_some() && u.username().is_empty())
        .ok_or_else(|| {
            ConfigError(format!(
                "invalid ELASTICSEARCH_HOST {host:?}: expected host, host:port or scheme://host:port (credentials go in ELASTICSEARCH_USERNAME/PASSWORD or ELASTICSEARCH_API_KEY)"
            ))
        })?;
    if port != 0 {
        url.set_port(Some(port)).map_err(|_| {
            ConfigError(format!(
                "invalid ELASTICSEARCH_PORT {port}: cannot apply to {host:?}"
            ))
        })?;
    }

    let index = raw
        .get("ELASTICSEARCH_APP_AUDIT_LOG_INDEX")
        .unwrap_or("app_audit_log")
        .to_string();
    let template = crate::routing::Template::parse("ELASTICSEARCH_APP_AUDIT_LOG_INDEX", &index)?;
    let fixed: String = template.literals().collect();
    let index_ok = !index.starts_with(['-', '_', '+'])
        && index != "."
        && index != ".."
        && index.len() <= 255
        && fixed.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.' | '+')
        });
    let index_template = (!template.is_static()).then_some(template);
    if !index_ok {
        return Err(ConfigError(format!(
            "invalid ELASTICSEARCH_APP_AUDIT_LOG_INDEX {index:?}: expected a lowercase index name of letters, digits, '-', '_', '.', '+' not starting with '-', '_' or '+', optionally with {{topic}}, {{routing_key}} and a date such as {{yyyy.MM.dd}}"
        )));
    }

    let ca_cert = raw.get("ELASTICSEARCH_CA_CERT").map(PathBuf::from);
    if let Some(p) = &ca_cert {
        if !p.is_file() {
            return Err(ConfigError(format!(
                "invalid ELASTICSEARCH_CA_CERT {:?}: expected the path of a readable PEM file",
                p.display()
            )));
        }
    }
    let username = raw.get("ELASTICSEARCH_USERNAME").map(String::from);
    let password = raw
        .raw("ELASTICSEARCH_PASSWORD")
        .map(String::from)
        .filter(|p| !p.is_empty());
    let api_key = raw.get("ELASTICSEARCH_API_KEY").map(String::from);
    if api_key.is_some() && username.is_some() {
        return Err(ConfigError(
            "both ELASTICSEARCH_API_KEY and ELASTICSEARCH_USERNAME are set: expected one way to authenticate"
                .into(),
        ));
    }
    let timeout = raw.positive("ELASTICSEARCH_TIMEOUT_SECONDS")?.unwrap_or(60);
    let max_retries = match raw.get("ELASTICSEARCH_MAX_RETRIES") {
        None => 8,
        Some(s) => s.parse::<usize>().map_err(|_| {
            ConfigError(format!(
                "invalid ELASTICSEARCH_MAX_RETRIES {s:?}: expected a whole number (0 or more)"
            ))
        })?,
    };
    let retry_initial = raw
        .positive("ELASTICSEARCH_RETRY_INITIAL_MS")?
        .unwrap_or(500);
    Ok(ElasticsearchConfig {
        url,
        index,
        index_template,
        compression: match raw
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
        },
        username,
        password,
        api_key,
        ca_cert,
        insecure: raw.boolean("ELASTICSEARCH_INSECURE")?.unwrap_or(false),
        timeout: Duration::from_secs(timeout as u64),
        max_retries,
        retry_initial: Duration::from_millis(retry_initial as u64),
        create_index: raw.boolean("ELASTICSEARCH_CREATE_INDEX")?.unwrap_or(false),
    })
}
