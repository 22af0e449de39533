//! Configuration from environment variables.
//!
//! Variable names and defaults are those of City of Helsinki's structured-log-transfer, so an
//! existing deployment works unchanged; new variables are additive. Every invalid value is a
//! one-line [`ConfigError`] naming the variable and what it accepts.

pub use crate::base::env::duration;
use crate::base::env::Env;
use crate::base::exit::ConfigError;
use crate::sources::cdp::signing::{Credentials, PrivateKey};
use chrono::{DateTime, Utc};
use std::path::PathBuf;
use std::time::Duration;

type Result<T> = std::result::Result<T, ConfigError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CastaiApiVersion {
    V1,
    V2,
}

/// Where a CAST AI source without a state file starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    At(chrono::DateTime<chrono::Utc>),
    Ago(Duration),
}

#[derive(Clone)]
pub struct CastaiConfig {
    pub api_url: url::Url,
    /// Never logged; `Debug` leaves it out.
    pub api_key: String,
    pub version: CastaiApiVersion,
    pub page_limit: usize,
    pub cluster_id: Option<String>,
    pub lag: Duration,
    pub start_from: StartFrom,
    pub state_file: PathBuf,
    /// Longest time span fetched as one window (the state advances per window).
    pub window: Duration,
    pub timeout: Duration,
    pub max_retries: usize,
    pub retry_initial: Duration,
}

impl std::fmt::Debug for CastaiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CastaiConfig")
            .field("api_url", &self.api_url.as_str())
            .field("version", &self.version)
            .field("cluster_id", &self.cluster_id)
            .field("state_file", &self.state_file)
            .finish()
    }
}

/// How requests to the CDP API are authenticated.
#[derive(Clone)]
pub enum CdpAuth {
    /// Signed requests (`x-altus-auth`) with an API access key.
    Key(Credentials),
    /// `Authorization: <token>`.
    Token(String),
}

impl std::fmt::Debug for CdpAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CdpAuth::Key(c) => write!(f, "Key({}, {:?})", c.access_key_id, c.key),
            CdpAuth::Token(_) => f.write_str("Token(***)"),
        }
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

/// The CDP pull-based audit archive source (`AUDIT_LOGGER_TYPE=CDP_ARCHIVE`).
#[derive(Debug, Clone)]
pub struct CdpConfig {
    /// `https://api.<region>.cdp.cloudera.com`, or CDP_ENDPOINT_URL.
    pub endpoint: url::Url,
    pub auth: CdpAuth,
    /// Where the credentials came from, for messages (never the values).
    pub auth_origin: String,
    /// The window a batching task is started for; `None` with CDP_BATCH_EVENTS=false.
    pub window: Option<(DateTime<Utc>, DateTime<Utc>)>,
    pub task_timeout: Duration,
    pub page_size: u32,
    pub request_timeout: Duration,
    pub max_retries: usize,
    pub retry_initial: Duration,
}

/// How far back the default batching window reaches, and how far it stays behind now, so
/// that events still being written are left for the next run's window.
pub const CDP_DEFAULT_LOOKBACK: chrono::Duration = chrono::Duration::days(7);
pub const CDP_WINDOW_MARGIN: chrono::Duration = chrono::Duration::minutes(10);

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

pub(crate) fn castai_config(raw: &Env) -> Result<CastaiConfig> {
    let url_text = raw.get("CASTAI_API_URL").unwrap_or("https://api.cast.ai");
    let api_url = url::Url::parse(url_text)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
        .filter(|u| u.username().is_empty() && u.password().is_none())
        .ok_or_else(|| {
            ConfigError(format!(
                "invalid CASTAI_API_URL {url_text:?}: expected an http(s) URL such as https://api.cast.ai"
            ))
        })?;
    let api_key = raw.get("CASTAI_API_KEY").map(String::from).ok_or_else(|| {
        ConfigError(
            "CASTAI_API_KEY is not set: expected a CAST AI API access key (read-only is enough)"
                .into(),
        )
    })?;
    let version = match raw
        .get("CASTAI_API_VERSION")
        .map(|s| s.to_ascii_lowercase())
        .as_deref()
    {
        None | Some("v1") => CastaiApiVersion::V1,
        Some("v2") => CastaiApiVersion::V2,
        Some(other) => {
            return Err(ConfigError(format!(
                "invalid CASTAI_API_VERSION {other:?}: expected v1 or v2"
            )))
        }
    };
    // The API's own limits: v1 as the audit logs receiver validates it, v2 as documented.
    let (min, max) = match version {
        CastaiApiVersion::V1 => (10, 1000),
        CastaiApiVersion::V2 => (1, 250),
    };
    let page_limit = match raw.get("CASTAI_PAGE_LIMIT") {
        None => 100,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (min..=max).contains(&n) => n,
            _ => {
                return Err(ConfigError(format!(
                    "invalid CASTAI_PAGE_LIMIT {s:?}: expected a whole number from {min} to {max} for API {}",
                    if version == CastaiApiVersion::V1 { "v1" } else { "v2" }
                )))
            }
        },
    };
    let lag = match raw.get("CASTAI_LAG") {
        None => Duration::from_secs(120),
        Some(s) => duration(s).ok_or_else(|| {
            ConfigError(format!(
                "invalid CASTAI_LAG {s:?}: expected a duration such as 120s, 5m or 0"
            ))
        })?,
    };
    let start_from = match raw.get("CASTAI_START_FROM") {
        None => StartFrom::Ago(Duration::from_secs(90 * 86400)),
        Some(s) => match chrono::DateTime::parse_from_rfc3339(s) {
            Ok(t) => StartFrom::At(t.with_timezone(&chrono::Utc)),
            Err(_) => StartFrom::Ago(duration(s).ok_or_else(|| {
                ConfigError(format!(
                    "invalid CASTAI_START_FROM {s:?}: expected an RFC 3339 time such as 2024-05-01T00:00:00Z or a duration back from now such as 90d or 12h"
                ))
            })?),
        },
    };
    let state_file = raw.get("CASTAI_STATE_FILE").map(PathBuf::from).ok_or_else(|| {
        ConfigError(
            "CASTAI_STATE_FILE is not set: expected the path of the file that keeps the checkpoint between runs (on a persistent volume)"
                .into(),
        )
    })?;
    if state_file.file_name().is_none() || state_file.is_dir() {
        return Err(ConfigError(format!(
            "invalid CASTAI_STATE_FILE {:?}: expected a file path, not a directory",
            state_file.display()
        )));
    }
    let window = match raw.get("CASTAI_WINDOW") {
        None => Duration::from_secs(6 * 3600),
        Some(s) => duration(s)
            .filter(|d| d.as_secs() >= 1)
            .ok_or_else(|| {
                ConfigError(format!(
                    "invalid CASTAI_WINDOW {s:?}: expected a duration of at least 1s, such as 6h or 30m"
                ))
            })?,
    };
    let timeout = raw.positive("CASTAI_TIMEOUT_SECONDS")?.unwrap_or(60);
    let max_retries = match raw.get("CASTAI_MAX_RETRIES") {
        None => 8,
        Some(s) => s.parse::<usize>().map_err(|_| {
            ConfigError(format!(
                "invalid CASTAI_MAX_RETRIES {s:?}: expected a whole number (0 or more)"
            ))
        })?,
    };
    let retry_initial = raw.positive("CASTAI_RETRY_INITIAL_MS")?.unwrap_or(500);
    Ok(CastaiConfig {
        api_url,
        api_key,
        version,
        page_limit,
        cluster_id: raw.get("CASTAI_CLUSTER_ID").map(String::from),
        lag,
        start_from,
        state_file,
        window,
        timeout: Duration::from_secs(timeout as u64),
        max_retries,
        retry_initial: Duration::from_millis(retry_initial as u64),
    })
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

pub(crate) fn cdp_config(raw: &Env, now: DateTime<Utc>) -> Result<CdpConfig> {
    let region = raw.get("CDP_REGION").unwrap_or("us-west-1");
    if !region
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(ConfigError(format!(
            "invalid CDP_REGION {region:?}: expected a CDP region such as us-west-1, eu-1, ap-1 or usg-1"
        )));
    }
    let endpoint = match raw.get("CDP_ENDPOINT_URL") {
        Some(u) => crate::base::env::http_url(
            "CDP_ENDPOINT_URL",
            u,
            "http(s)://host[:port][/path] without credentials",
        )?,
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
    let (auth, auth_origin) = cdp_auth(raw)?;

    let to = timestamp(
        "CDP_TO_TIMESTAMP",
        &raw.raw("CDP_TO_TIMESTAMP").map(String::from),
    )?
    .unwrap_or(now - CDP_WINDOW_MARGIN);
    let from = timestamp(
        "CDP_FROM_TIMESTAMP",
        &raw.raw("CDP_FROM_TIMESTAMP").map(String::from),
    )?
    .unwrap_or(to - CDP_DEFAULT_LOOKBACK);
    if from >= to {
        return Err(ConfigError(format!(
            "invalid CDP_FROM_TIMESTAMP {}: expected a time before CDP_TO_TIMESTAMP {}",
            from.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            to.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )));
    }
    let window = raw
        .boolean("CDP_BATCH_EVENTS")?
        .unwrap_or(true)
        .then_some((from, to));

    let page_size = match raw.get("CDP_PAGE_SIZE") {
        None => 100,
        Some(s) => s
            .parse::<u32>()
            .ok()
            .filter(|n| (20..=100).contains(n))
            .ok_or_else(|| {
                ConfigError(format!(
                    "invalid CDP_PAGE_SIZE {s:?}: expected a whole number from 20 to 100"
                ))
            })?,
    };
    let task_timeout = raw.positive("CDP_TASK_TIMEOUT")?.unwrap_or(600);
    let request_timeout = raw.positive("CDP_TIMEOUT_SECONDS")?.unwrap_or(60);
    let max_retries = match raw.get("CDP_MAX_RETRIES") {
        // Ten attempts, as the official clients make.
        None => 9,
        Some(s) => s.parse::<usize>().map_err(|_| {
            ConfigError(format!(
                "invalid CDP_MAX_RETRIES {s:?}: expected a whole number (0 or more)"
            ))
        })?,
    };
    let retry_initial = raw.positive("CDP_RETRY_INITIAL_MS")?.unwrap_or(500);
    Ok(CdpConfig {
        endpoint,
        auth,
        auth_origin,
        window,
        task_timeout: Duration::from_secs(task_timeout as u64),
        page_size,
        request_timeout: Duration::from_secs(request_timeout as u64),
        max_retries,
        retry_initial: Duration::from_millis(retry_initial as u64),
    })
}

/// An RFC 3339 time (`2024-05-01T00:00:00Z`) or a date (`2024-05-01`, midnight UTC).
fn timestamp(var: &str, v: &Option<String>) -> Result<Option<DateTime<Utc>>> {
    let Some(s) = v.as_deref().map(str::trim).filter(|s| !s.is_empty()) else {
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

/// CDP credentials as the CDP CLI finds them: CDP_ACCESS_KEY_ID + CDP_PRIVATE_KEY, or
/// CDP_ACCESS_TOKEN, else profile CDP_PROFILE of `~/.cdp/credentials`. Messages name where a
/// bad value came from and never quote a key.
fn cdp_auth(raw: &Env) -> Result<(CdpAuth, String)> {
    let id = raw.get("CDP_ACCESS_KEY_ID");
    let key = raw.get("CDP_PRIVATE_KEY");
    let token = raw.get("CDP_ACCESS_TOKEN");
    match (id, key, token) {
        (None, None, Some(t)) => Ok((CdpAuth::Token(t.to_string()), "CDP_ACCESS_TOKEN".into())),
        (_, _, Some(_)) => Err(ConfigError(
            "both CDP_ACCESS_TOKEN and CDP_ACCESS_KEY_ID/CDP_PRIVATE_KEY are set: expected one way to authenticate".into(),
        )),
        (Some(id), Some(key), None) => {
            let text = if looks_like_key(key) {
                key.to_string()
            } else {
                std::fs::read_to_string(key).map_err(|_| {
                    ConfigError(
                        "invalid CDP_PRIVATE_KEY: expected a base64 Ed25519 key, an RSA key in PEM, or the path of a readable file holding one".into(),
                    )
                })?
            };
            let key = PrivateKey::parse(&unescape_newlines(&text))
                .map_err(|why| ConfigError(format!("invalid CDP_PRIVATE_KEY: {why}")))?;
            Ok((
                CdpAuth::Key(Credentials {
                    access_key_id: id.to_string(),
                    key,
                }),
                "CDP_ACCESS_KEY_ID/CDP_PRIVATE_KEY".into(),
            ))
        }
        (Some(_), None, None) => Err(ConfigError(
            "CDP_PRIVATE_KEY is not set: expected it with CDP_ACCESS_KEY_ID (the key, or the path of a file holding it)".into(),
        )),
        (None, Some(_), None) => Err(ConfigError(
            "CDP_ACCESS_KEY_ID is not set: expected it with CDP_PRIVATE_KEY".into(),
        )),
        (None, None, None) => credentials_file(raw),
    }
}

fn looks_like_key(v: &str) -> bool {
    v.contains("-----BEGIN") || (v.len() == 44 && v.ends_with('='))
}

/// A PEM key kept on one line (in `~/.cdp/credentials`, or a Secret) has literal `\n`s.
fn unescape_newlines(v: &str) -> String {
    if v.contains("-----BEGIN") {
        v.replace("\\n", "\n")
    } else {
        v.to_string()
    }
}

fn credentials_file(raw: &Env) -> Result<(CdpAuth, String)> {
    let profile = raw.get("CDP_PROFILE").unwrap_or("default");
    let none = || {
        ConfigError(format!(
            "no CDP credentials: set CDP_ACCESS_KEY_ID and CDP_PRIVATE_KEY, or CDP_ACCESS_TOKEN, or add profile {profile:?} (CDP_PROFILE) to ~/.cdp/credentials"
        ))
    };
    let path = PathBuf::from(raw.get("HOME").ok_or_else(none)?)
        .join(".cdp")
        .join("credentials");
    let text = std::fs::read_to_string(&path).map_err(|_| none())?;
    let section = ini_section(&text, profile).ok_or_else(|| {
        ConfigError(format!(
            "invalid CDP_PROFILE {profile:?}: no such profile in {}",
            path.display()
        ))
    })?;
    let origin = format!("profile {profile:?} of {}", path.display());
    let get = |k: &str| {
        section
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| ConfigError(format!("{origin} has no {k}")))
    };
    let id = get("cdp_access_key_id")?;
    let key = PrivateKey::parse(&unescape_newlines(&get("cdp_private_key")?))
        .map_err(|why| ConfigError(format!("invalid cdp_private_key in {origin}: {why}")))?;
    Ok((
        CdpAuth::Key(Credentials {
            access_key_id: id,
            key,
        }),
        origin,
    ))
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
