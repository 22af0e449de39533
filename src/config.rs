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

/// How the lines of S3 files are read (`S3_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum S3Format {
    Json,
    Cef,
    /// Per line: `{` starts JSON, a line containing `CEF:` is CEF.
    Auto,
}

/// The order files are taken in (`S3_ORDER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum S3Order {
    /// Index when every file name carries a number, else key.
    Auto,
    Index,
    Key,
}

/// What happens to a file that failed `S3_MAX_ATTEMPTS` times (`S3_ON_BAD_FILE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum S3OnBadFile {
    /// The run stops at it (exit 1) until it is fixed or `retry-failed`: nothing skipped.
    Stop,
    /// It is parked (listed every run, exit 3) and later files go on.
    Skip,
}

/// What a record's document is (`S3_OUTPUT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum S3Output {
    /// A JSON document parsed from the line, with `@timestamp`.
    Document,
    /// The line exactly as in the file (the vendor's client script's `export.log`).
    Original,
}

/// AWS credentials, as the AWS tools find them.
#[derive(Clone)]
pub enum S3Credentials {
    /// Access key (and session token), from the environment or a credentials file profile.
    Static {
        key_id: String,
        secret: String,
        token: Option<String>,
    },
    /// Neither set: object_store's chain (web identity, ECS task role, instance metadata).
    Chain,
}

/// The S3 sequential-files source (`AUDIT_LOGGER_TYPE=S3_CURSOR`).
#[derive(Clone)]
pub struct S3Config {
    pub bucket: String,
    /// A folder, without leading or trailing `/`; empty for the whole bucket.
    pub prefix: String,
    pub endpoint: Option<url::Url>,
    pub region: String,
    pub path_style: bool,
    pub credentials: S3Credentials,
    /// Where the credentials came from, for messages (never the values).
    pub credentials_origin: String,
    pub cursor_file: PathBuf,
    /// Never logged; `Debug` leaves it out.
    pub zip_password: Option<String>,
    pub format: S3Format,
    pub order: S3Order,
    pub max_attempts: u32,
    pub on_bad_file: S3OnBadFile,
    pub accept_gaps: bool,
    pub output: S3Output,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets are deliberately left out.
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint.as_ref().map(|u| u.as_str()))
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("credentials", &self.credentials_origin)
            .field("cursor_file", &self.cursor_file)
            .field("zip_password", &self.zip_password.as_ref().map(|_| "***"))
            .field("format", &self.format)
            .field("order", &self.order)
            .field("max_attempts", &self.max_attempts)
            .field("on_bad_file", &self.on_bad_file)
            .field("accept_gaps", &self.accept_gaps)
            .field("output", &self.output)
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

pub(crate) fn s3_config(raw: &Env, sink: &crate::base::sink::SinkTraits) -> Result<S3Config> {
    let bucket = raw.get("S3_BUCKET").ok_or_else(|| {
        ConfigError(
            "S3_BUCKET is not set: expected the name of the bucket holding the export files".into(),
        )
    })?;
    // S3's own rules, loosely (dots and capitals exist in old buckets and other stores).
    if bucket.len() > 255
        || !bucket
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
    {
        return Err(ConfigError(format!(
            "invalid S3_BUCKET {bucket:?}: expected a bucket name of letters, digits, '-', '.' and '_'"
        )));
    }
    let prefix = raw
        .get("S3_PREFIX")
        .unwrap_or("")
        .trim_matches('/')
        .to_string();
    if prefix
        .split('/')
        .any(|p| p.is_empty() || p == "." || p == "..")
        && !prefix.is_empty()
    {
        return Err(ConfigError(format!(
            "invalid S3_PREFIX {prefix:?}: expected a folder such as exports/account-1 (no empty, . or .. parts)"
        )));
    }
    let endpoint = match raw.get("S3_ENDPOINT") {
        None => None,
        Some(u) => Some(crate::base::env::http_url(
            "S3_ENDPOINT",
            u,
            "http(s)://host[:port] of an S3-compatible store, without credentials",
        )?),
    };
    let region = raw
        .get("S3_REGION")
        .or(raw.get("AWS_REGION"))
        .or(raw.get("AWS_DEFAULT_REGION"))
        .unwrap_or("us-east-1")
        .to_string();
    // MinIO, Ceph and most other stores want path-style; AWS prefers virtual-hosted.
    let path_style = raw.boolean("S3_PATH_STYLE")?.unwrap_or(endpoint.is_some());
    let (credentials, credentials_origin) = aws_credentials(raw)?;
    let cursor_file = PathBuf::from(raw.get("S3_CURSOR_FILE").unwrap_or("s3-cursor.json"));
    if cursor_file.file_name().is_none() || cursor_file.is_dir() {
        return Err(ConfigError(format!(
            "invalid S3_CURSOR_FILE {:?}: expected a file path, not a directory",
            cursor_file.display()
        )));
    }
    let format = match raw
        .get("S3_FORMAT")
        .map(|s| s.to_ascii_lowercase())
        .as_deref()
    {
        None | Some("auto") => S3Format::Auto,
        Some("json") => S3Format::Json,
        Some("cef") => S3Format::Cef,
        Some(other) => {
            return Err(ConfigError(format!(
                "invalid S3_FORMAT {other:?}: expected json, cef or auto"
            )))
        }
    };
    let order = match raw
        .get("S3_ORDER")
        .map(|s| s.to_ascii_lowercase())
        .as_deref()
    {
        None | Some("auto") => S3Order::Auto,
        Some("index") => S3Order::Index,
        Some("key") => S3Order::Key,
        Some(other) => {
            return Err(ConfigError(format!(
                "invalid S3_ORDER {other:?}: expected auto, index or key"
            )))
        }
    };
    let max_attempts = raw.positive("S3_MAX_ATTEMPTS")?.unwrap_or(5);
    let max_attempts = u32::try_from(max_attempts)
        .map_err(|_| ConfigError("invalid S3_MAX_ATTEMPTS: expected at most 4294967295".into()))?;
    let on_bad_file = match raw
        .get("S3_ON_BAD_FILE")
        .map(|s| s.to_ascii_lowercase())
        .as_deref()
    {
        None | Some("stop") => S3OnBadFile::Stop,
        Some("skip") => S3OnBadFile::Skip,
        Some(other) => {
            return Err(ConfigError(format!(
                "invalid S3_ON_BAD_FILE {other:?}: expected stop or skip"
            )))
        }
    };
    let to_stdout = sink.prefers_original;
    let output = match raw
        .get("S3_OUTPUT")
        .map(|s| s.to_ascii_lowercase())
        .as_deref()
    {
        // On stdout the lines as the vendor's client script wrote them (`> export.log`).
        None if to_stdout => S3Output::Original,
        None | Some("document") => S3Output::Document,
        Some("original") => S3Output::Original,
        Some(other) => {
            return Err(ConfigError(format!(
                "invalid S3_OUTPUT {other:?}: expected document or original"
            )))
        }
    };
    if output == S3Output::Original && sink.json_only {
        return Err(ConfigError(
            "invalid S3_OUTPUT \"original\": Elasticsearch needs JSON documents; use S3_OUTPUT=document".into(),
        ));
    }
    Ok(S3Config {
        bucket: bucket.to_string(),
        prefix,
        endpoint,
        region,
        path_style,
        credentials,
        credentials_origin,
        cursor_file,
        zip_password: raw
            .raw("S3_ZIP_PASSWORD")
            .map(String::from)
            .filter(|p| !p.is_empty()),
        format,
        order,
        max_attempts,
        on_bad_file,
        accept_gaps: raw.boolean("S3_ACCEPT_GAPS")?.unwrap_or(false),
        output,
    })
}

/// AWS credentials as the AWS tools find them: AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY (+
/// AWS_SESSION_TOKEN); else profile AWS_PROFILE (default `default`) of the credentials file
/// (AWS_SHARED_CREDENTIALS_FILE, default `~/.aws/credentials`) if it has one; else the chain
/// of web identity, container and instance credentials. Messages never quote a key.
pub(crate) fn aws_credentials(raw: &Env) -> Result<(S3Credentials, String)> {
    let id = raw.get("AWS_ACCESS_KEY_ID");
    let secret = raw.get("AWS_SECRET_ACCESS_KEY");
    let token = raw.get("AWS_SESSION_TOKEN").map(String::from);
    match (id, secret) {
        (Some(id), Some(secret)) => {
            return Ok((
                S3Credentials::Static {
                    key_id: id.to_string(),
                    secret: secret.to_string(),
                    token,
                },
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY".into(),
            ))
        }
        (Some(_), None) => {
            return Err(ConfigError(
                "AWS_SECRET_ACCESS_KEY is not set: expected it with AWS_ACCESS_KEY_ID".into(),
            ))
        }
        (None, Some(_)) => {
            return Err(ConfigError(
                "AWS_ACCESS_KEY_ID is not set: expected it with AWS_SECRET_ACCESS_KEY".into(),
            ))
        }
        (None, None) => {}
    }
    let profile = raw.get("AWS_PROFILE");
    let path = match (raw.get("AWS_SHARED_CREDENTIALS_FILE"), raw.get("HOME")) {
        (Some(p), _) => Some(PathBuf::from(p)),
        (None, Some(home)) => Some(PathBuf::from(home).join(".aws").join("credentials")),
        (None, None) => None,
    };
    let text = path.as_ref().and_then(|p| std::fs::read_to_string(p).ok());
    let name = profile.unwrap_or("default");
    let section = text.as_deref().and_then(|t| ini_section(t, name));
    let (Some(path), Some(section)) = (path, section) else {
        // An explicitly named profile that is not there is a mistake, not "use the chain".
        if let Some(p) = profile {
            return Err(ConfigError(format!(
                "invalid AWS_PROFILE {p:?}: no such profile in the AWS credentials file (AWS_SHARED_CREDENTIALS_FILE, default ~/.aws/credentials)"
            )));
        }
        return Ok((
            S3Credentials::Chain,
            "the AWS credential chain (web identity, container or instance role)".into(),
        ));
    };
    let origin = format!("profile {name:?} of {}", path.display());
    let get = |k: &str| {
        section
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    };
    match (get("aws_access_key_id"), get("aws_secret_access_key")) {
        (Some(key_id), Some(secret)) => Ok((
            S3Credentials::Static {
                key_id,
                secret,
                token: get("aws_session_token"),
            },
            origin,
        )),
        _ => Err(ConfigError(format!(
            "{origin} has no aws_access_key_id/aws_secret_access_key (SSO and role profiles are not supported: export the credentials, e.g. with `aws configure export-credentials`)"
        ))),
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

/// The `key = value` pairs of `[name]` in an INI text, or `None` without that section.
fn ini_section(text: &str, name: &str) -> Option<Vec<(String, String)>> {
    let mut current: Option<&str> = None;
    let mut found = None;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = Some(section.trim());
            if current == Some(name) {
                found.get_or_insert_with(Vec::new);
            }
            continue;
        }
        if current == Some(name) {
            if let Some((k, v)) = line.split_once('=') {
                found
                    .get_or_insert_with(Vec::new)
                    .push((k.trim().to_string(), v.trim().to_string()));
            }
        }
    }
    found
}
