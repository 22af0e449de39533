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

/// Which source this invocation reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    SingleColumnJson,
    DjangoAuditlog,
    Castai,
    CdpArchive,
    S3Cursor,
}

/// A validated SQL identifier, optionally `schema.table`; quoted per dialect when used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName {
    pub schema: Option<String>,
    pub name: String,
}

impl TableName {
    pub fn parse(var: &str, value: &str) -> Result<Self> {
        let bad = || {
            ConfigError(format!(
                "invalid {var} {value:?}: expected a table name of letters, digits and underscores \
                 (optionally schema.table), starting with a letter or underscore, at most 63 characters"
            ))
        };
        let parts: Vec<&str> = value.split('.').collect();
        if parts.len() > 2 || !parts.iter().all(|p| is_identifier(p)) {
            return Err(bad());
        }
        Ok(match parts.as_slice() {
            [name] => TableName {
                schema: None,
                name: name.to_string(),
            },
            [schema, name] => TableName {
                schema: Some(schema.to_string()),
                name: name.to_string(),
            },
            _ => return Err(bad()),
        })
    }

    /// The name as written in the configuration, for messages and state keys.
    pub fn display(&self) -> String {
        match &self.schema {
            Some(s) => format!("{s}.{}", self.name),
            None => self.name.clone(),
        }
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.len() <= 63
}

/// Database connection settings, with DATABASE_PASSWORD and the SSL variables applied.
#[derive(Clone)]
pub struct DatabaseConfig {
    /// The URL to connect with. Contains the password: never log it, use `redacted`.
    pub url: url::Url,
    pub kind: DbKind,
}

impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &self.redacted())
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbKind {
    Postgres,
    MySql,
    Sqlite,
}

impl DatabaseConfig {
    /// The URL without password, safe for logs.
    pub fn redacted(&self) -> String {
        let mut u = self.url.clone();
        if u.password().is_some() {
            let _ = u.set_password(Some("***"));
        }
        u.to_string()
    }
}

#[derive(Debug, Clone)]
pub struct SingleColumnConfig {
    pub table: TableName,
    pub date_time_field: String,
    pub date_time_parent_field: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperationFormat {
    Words,
    Numeric,
}

#[derive(Debug, Clone)]
pub struct DjangoConfig {
    pub user_table: TableName,
    pub origin: String,
    pub environment: String,
    pub operation_format: OperationFormat,
}

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

/// How the file sink names and groups its files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileLayout {
    /// One file per page, named after the page's document ids.
    Pages,
    /// One gzipped JSON-lines file per CDP archive batch, named as CDP's own archives:
    /// `<accountId>_<YYYYMMDDTHHMM>Z_<archiveId>.json.gz`.
    CdpArchive,
    /// `topic/routing-key/YYYY/mm/dd/HH/` under OUTPUT_PATH, one file per page and directory.
    Routed,
}

#[derive(Debug, Clone)]
pub enum SinkConfig {
    Elasticsearch(Box<ElasticsearchConfig>),
    File {
        dir: PathBuf,
        gzip: bool,
        /// OUTPUT_GZIP_LEVEL, 0..=9.
        gzip_level: u32,
        layout: FileLayout,
    },
    Stdout,
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

/// Where a run reports its metrics (both may be set).
#[derive(Debug, Clone, Default)]
pub struct MetricsConfig {
    /// METRICS_TEXTFILE: a `.prom` file for node-exporter's textfile collector.
    pub textfile: Option<PathBuf>,
    /// METRICS_PUSHGATEWAY_URL: base URL of a Prometheus Pushgateway.
    pub pushgateway: Option<url::Url>,
}

/// Everything one invocation needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub source: SourceKind,
    pub enable_send: bool,
    pub batch_size: usize,
    pub chunk_size: usize,
    /// Pages in flight at once (workers), for sources that allow it.
    pub concurrency: usize,
    pub max_attempts: u32,
    pub clear_entries: bool,
    pub clear_days: u32,
    pub database: Option<DatabaseConfig>,
    pub single_column: SingleColumnConfig,
    pub django: DjangoConfig,
    /// Read only when `source` is [`SourceKind::Castai`]: its key is required then, not otherwise.
    pub castai: Option<CastaiConfig>,
    /// Set when `source` is [`SourceKind::CdpArchive`].
    pub cdp: Option<CdpConfig>,
    /// Set when `source` is [`SourceKind::S3Cursor`].
    pub s3: Option<S3Config>,
    /// Sink errors are kept until a command needs a sink: `monthly` must work without one.
    pub sink: std::result::Result<SinkConfig, ConfigError>,
    /// Warnings found while reading (e.g. BATCH_SIZE and BATCH_LIMIT disagree), logged at start.
    pub warnings: Vec<String>,
    pub metrics: MetricsConfig,
    /// Topics, routing keys and which of them this run ships.
    pub routing: crate::routing::Routing,
}

impl Config {
    pub fn from_env(raw: &Env) -> Result<Self> {
        let mut warnings = Vec::new();
        let source = match raw.get("AUDIT_LOGGER_TYPE").unwrap_or("SINGLE_COLUMN_JSON") {
            "SINGLE_COLUMN_JSON" => SourceKind::SingleColumnJson,
            "DJANGO_AUDITLOG" => SourceKind::DjangoAuditlog,
            "CASTAI" => SourceKind::Castai,
            "CDP_ARCHIVE" => SourceKind::CdpArchive,
            "S3_CURSOR" => SourceKind::S3Cursor,
            other => {
                return Err(ConfigError(format!(
                    "invalid AUDIT_LOGGER_TYPE {other:?}: expected SINGLE_COLUMN_JSON, DJANGO_AUDITLOG, CASTAI, CDP_ARCHIVE or S3_CURSOR"
                )))
            }
        };

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
        let max_attempts = raw.positive("MAX_ATTEMPTS")?.unwrap_or(5);
        let max_attempts = u32::try_from(max_attempts)
            .map_err(|_| ConfigError("invalid MAX_ATTEMPTS: expected at most 4294967295".into()))?;
        let clear_days = match raw.get("CLEAR_AUDIT_LOG_DAYS") {
            None => 30,
            Some(v) => v.parse::<u32>().map_err(|_| {
                ConfigError(format!(
                    "invalid CLEAR_AUDIT_LOG_DAYS {v:?}: expected a whole number of days (0 or more)"
                ))
            })?,
        };

        let database = match raw.get("DATABASE_URL") {
            None => None,
            Some(u) => Some(database_config(u, &raw, &mut warnings)?),
        };

        let single_column = SingleColumnConfig {
            table: TableName::parse(
                "AUDIT_TABLE_NAME",
                raw.get("AUDIT_TABLE_NAME").unwrap_or("audit_logs"),
            )?,
            date_time_field: raw
                .raw("DATE_TIME_FIELD")
                .map(String::from)
                .unwrap_or_else(|| "date_time".into()),
            date_time_parent_field: raw
                .raw("DATE_TIME_PARENT_FIELD")
                .map(String::from)
                .unwrap_or_else(|| "audit_event".into()),
        };
        if single_column.date_time_field.is_empty() {
            return Err(ConfigError(
                "invalid DATE_TIME_FIELD \"\": expected the name of the message's timestamp field"
                    .into(),
            ));
        }

        let django = DjangoConfig {
            user_table: TableName::parse(
                "USER_TABLE_NAME",
                raw.get("USER_TABLE_NAME").unwrap_or("auth_user"),
            )?,
            origin: raw
                .raw("AUDIT_LOG_ORIGIN")
                .map(String::from)
                .unwrap_or_default(),
            environment: raw
                .raw("AUDIT_LOG_ENVIRONMENT")
                .map(String::from)
                .unwrap_or_default(),
            operation_format: match raw.get("AUDITLOG_OPERATION_FORMAT") {
                None | Some("words") => OperationFormat::Words,
                Some("numeric") => OperationFormat::Numeric,
                Some(other) => {
                    return Err(ConfigError(format!(
                        "invalid AUDITLOG_OPERATION_FORMAT {other:?}: expected words or numeric"
                    )))
                }
            },
        };

        let cdp = match source {
            SourceKind::CdpArchive => Some(cdp_config(&raw, Utc::now())?),
            _ => None,
        };

        let sink = sink_config(&raw, source);
        let s3 = match source {
            SourceKind::S3Cursor => Some(s3_config(&raw, &sink)?),
            _ => None,
        };
        let routing = routing_config(&raw, source, &sink, s3.as_ref().map(|c| c.output))?;

        Ok(Config {
            source,
            enable_send: raw.boolean("ENABLE_SEND_AUDIT_LOG")?.unwrap_or(true),
            batch_size,
            chunk_size,
            concurrency,
            max_attempts,
            clear_entries: raw.boolean("CLEAR_AUDIT_LOG_ENTRIES")?.unwrap_or(true),
            clear_days,
            database,
            single_column,
            django,
            castai: match source {
                SourceKind::Castai => Some(castai_config(&raw)?),
                _ => None,
            },
            cdp,
            s3,
            routing,
            sink,
            metrics: metrics_config(&raw)?,
            warnings,
        })
    }

    /// A stable name of what this invocation reads, for metrics labels: the same whether or not
    /// the source could be reached.
    pub fn source_label(&self) -> String {
        match self.source {
            SourceKind::SingleColumnJson => {
                format!("single_column_json:{}", self.single_column.table.display())
            }
            SourceKind::DjangoAuditlog => "django_auditlog:auditlog_logentry".into(),
            SourceKind::Castai => "castai".into(),
            SourceKind::CdpArchive => "cdp_archive".into(),
            SourceKind::S3Cursor => match &self.s3 {
                Some(s3) if !s3.prefix.is_empty() => {
                    format!("s3_cursor:{}/{}", s3.bucket, s3.prefix)
                }
                Some(s3) => format!("s3_cursor:{}", s3.bucket),
                None => "s3_cursor".into(),
            },
        }
    }

    /// The database settings, or the error a SQL source reports without them.
    pub fn database(&self) -> Result<&DatabaseConfig> {
        self.database.as_ref().ok_or_else(|| {
            ConfigError(
                "DATABASE_URL is not set: expected postgres://, mysql:// or sqlite:// URL of the audit log database"
                    .into(),
            )
        })
    }
}

fn castai_config(raw: &Env) -> Result<CastaiConfig> {
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

fn s3_config(raw: &Env, sink: &Result<SinkConfig>) -> Result<S3Config> {
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
    let to_stdout = matches!(sink, Ok(SinkConfig::Stdout));
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
    if output == S3Output::Original && matches!(sink, Ok(SinkConfig::Elasticsearch(_))) {
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
fn aws_credentials(raw: &Env) -> Result<(S3Credentials, String)> {
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

fn metrics_config(raw: &Env) -> Result<MetricsConfig> {
    let textfile = match raw.get("METRICS_TEXTFILE") {
        None => None,
        Some(p) => {
            let path = PathBuf::from(p);
            if path.file_name().is_none() || path.is_dir() || !p.ends_with(".prom") {
                return Err(ConfigError(format!(
                    "invalid METRICS_TEXTFILE {p:?}: expected a file path ending in .prom (node-exporter reads only those)"
                )));
            }
            Some(path)
        }
    };
    let pushgateway = match raw.get("METRICS_PUSHGATEWAY_URL") {
        None => None,
        Some(u) => Some(
            url::Url::parse(u)
                .ok()
                .filter(|u| {
                    matches!(u.scheme(), "http" | "https")
                        && u.host_str().is_some()
                        && u.username().is_empty()
                        && u.password().is_none()
                        && u.query().is_none()
                })
                .ok_or_else(|| {
                    // The value is not echoed: it may hold credentials.
                    ConfigError(
                        "invalid METRICS_PUSHGATEWAY_URL: expected http(s)://host:port of a Pushgateway, without credentials or query"
                            .to_string(),
                    )
                })?,
        ),
    };
    Ok(MetricsConfig {
        textfile,
        pushgateway,
    })
}

fn database_config(raw_url: &str, raw: &Env, warnings: &mut Vec<String>) -> Result<DatabaseConfig> {
    let invalid = |why: &str| {
        // Never echo the URL: it may hold a password.
        ConfigError(format!(
            "invalid DATABASE_URL: {why} (expected postgres://user@host:port/db, mysql://user@host:port/db or sqlite:///path)"
        ))
    };
    let scheme = raw_url
        .split(':')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let kind = match scheme.as_str() {
        "postgres" | "postgresql" | "pgsql" => DbKind::Postgres,
        "mysql" | "mariadb" => DbKind::MySql,
        "sqlite" | "sqlite3" => DbKind::Sqlite,
        _ => return Err(invalid("unsupported scheme")),
    };
    let mut url = if kind == DbKind::Sqlite {
        sqlite_url(raw_url).ok_or_else(|| invalid("no database file"))?
    } else {
        let rest = raw_url.split_once(':').map(|x| x.1).unwrap_or_default();
        let normal = match kind {
            DbKind::Postgres => "postgres",
            _ => "mysql",
        };
        url::Url::parse(&format!("{normal}:{rest}")).map_err(|e| invalid(&e.to_string()))?
    };

    if let Some(pw) = raw.get("DATABASE_PASSWORD") {
        if kind == DbKind::Sqlite {
            warnings.push("DATABASE_PASSWORD is ignored for SQLite".into());
        } else {
            url.set_password(Some(pw))
                .map_err(|_| invalid("cannot set DATABASE_PASSWORD on this URL"))?;
        }
    }

    // The original honoured the SSL variables for MySQL only; we apply them to both servers.
    if raw.boolean("DB_USE_SSL")?.unwrap_or(false) {
        let files = [
            ("SSL_CA", &raw.raw("SSL_CA").map(String::from)),
            ("SSL_CERT", &raw.raw("SSL_CERT").map(String::from)),
            ("SSL_KEY", &raw.raw("SSL_KEY").map(String::from)),
        ];
        for (var, v) in files {
            if let Some(path) = v.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
                if !std::path::Path::new(path).is_file() {
                    return Err(ConfigError(format!(
                        "invalid {var} {path:?}: expected the path of a readable PEM file"
                    )));
                }
            }
        }
        let ca = raw.get("SSL_CA");
        let mut q = url.query_pairs_mut();
        match kind {
            DbKind::Postgres => {
                q.append_pair(
                    "sslmode",
                    if ca.is_some() { "verify-ca" } else { "require" },
                );
                if let Some(ca) = ca {
                    q.append_pair("sslrootcert", ca);
                }
                if let Some(c) = raw.get("SSL_CERT") {
                    q.append_pair("sslcert", c);
                }
                if let Some(k) = raw.get("SSL_KEY") {
                    q.append_pair("sslkey", k);
                }
            }
            DbKind::MySql => {
                q.append_pair(
                    "ssl-mode",
                    if ca.is_some() {
                        "VERIFY_CA"
                    } else {
                        "REQUIRED"
                    },
                );
                if let Some(ca) = ca {
                    q.append_pair("ssl-ca", ca);
                }
                if let Some(c) = raw.get("SSL_CERT") {
                    q.append_pair("ssl-cert", c);
                }
                if let Some(k) = raw.get("SSL_KEY") {
                    q.append_pair("ssl-key", k);
                }
            }
            DbKind::Sqlite => warnings.push("DB_USE_SSL is ignored for SQLite".into()),
        }
        drop(q);
        if raw.get("SSL_CIPHER").is_some() {
            warnings.push(
                "SSL_CIPHER is not supported (the TLS library negotiates modern ciphers only) and is ignored"
                    .into(),
            );
        }
    }
    Ok(DatabaseConfig { url, kind })
}

/// SQLite URLs as dj-database-url reads them (`sqlite:///relative.db`, `sqlite:////abs.db`),
/// plus sqlx's own `sqlite:relative.db`. Returned as sqlx's form.
fn sqlite_url(raw: &str) -> Option<url::Url> {
    let rest = raw.split_once(':')?.1;
    let path = match rest.strip_prefix("//") {
        Some(after) => after.strip_prefix('/').unwrap_or(after),
        None => rest,
    };
    let path = path.split('?').next().unwrap_or_default();
    if path.is_empty() {
        return None;
    }
    let abs = std::path::absolute(path).ok()?;
    url::Url::parse(&format!("sqlite://{}", abs.to_str()?)).ok()
}

/// Topic and key fields: ROUTING_*_FIELD, else the source's own (the event's source and type
/// for the APIs; none for SQL tables, where only the application knows which field it is).
fn routing_config(
    raw: &Env,
    source: SourceKind,
    sink: &std::result::Result<SinkConfig, ConfigError>,
    s3_output: Option<S3Output>,
) -> Result<crate::routing::Routing> {
    use crate::routing::{Accept, FieldPath};
    let (topic_default, key_default) = match source {
        SourceKind::SingleColumnJson | SourceKind::DjangoAuditlog => (None, None),
        SourceKind::CdpArchive => (Some("eventSource"), Some("eventName")),
        SourceKind::Castai => (Some("topic"), Some("labels.clusterId")),
        SourceKind::S3Cursor => (Some("event_type"), Some("event_sub_type")),
    };
    let field = |var: &str, v: &Option<String>, default: Option<&str>| {
        v.as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .or(default)
            .map(|p| FieldPath::parse(var, p))
            .transpose()
    };
    let accept = |var: &str, v: &Option<String>| {
        v.as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|a| Accept::parse(var, a))
            .transpose()
    };
    let routing = crate::routing::Routing {
        topic_field: field(
            "ROUTING_TOPIC_FIELD",
            &raw.raw("ROUTING_TOPIC_FIELD").map(String::from),
            topic_default,
        )?,
        key_field: field(
            "ROUTING_KEY_FIELD",
            &raw.raw("ROUTING_KEY_FIELD").map(String::from),
            key_default,
        )?,
        accept_topics: accept("ACCEPT_TOPICS", &raw.raw("ACCEPT_TOPICS").map(String::from))?,
        accept_keys: accept(
            "ACCEPT_ROUTING_KEYS",
            &raw.raw("ACCEPT_ROUTING_KEYS").map(String::from),
        )?,
        sink_needs_route: match sink {
            Ok(SinkConfig::Elasticsearch(es)) => es.index_template.is_some(),
            Ok(SinkConfig::File { layout, .. }) => *layout == FileLayout::Routed,
            _ => false,
        },
    };
    if routing.sink_needs_route && s3_output == Some(S3Output::Original) {
        return Err(ConfigError(
            "S3_OUTPUT=original ships lines as they are, without @timestamp, so the index name template or OUTPUT_LAYOUT=routed has no date to place them by: use S3_OUTPUT=document".into(),
        ));
    }
    for (var, list, field, field_var) in [
        (
            "ACCEPT_TOPICS",
            &routing.accept_topics,
            &routing.topic_field,
            "ROUTING_TOPIC_FIELD",
        ),
        (
            "ACCEPT_ROUTING_KEYS",
            &routing.accept_keys,
            &routing.key_field,
            "ROUTING_KEY_FIELD",
        ),
    ] {
        if list.is_none() {
            continue;
        }
        if source == SourceKind::CdpArchive {
            // A CDP archive batch is acknowledged whole: marking it would lose the events this
            // run does not accept for every other run.
            return Err(ConfigError(format!(
                "{var} cannot be used with AUDIT_LOGGER_TYPE=CDP_ARCHIVE: an archive batch is marked as a whole, so events this run skipped would be lost to other runs; route them with the index name template or OUTPUT_LAYOUT=routed instead"
            )));
        }
        if field.is_none() {
            return Err(ConfigError(format!(
                "{var} is set but {field_var} is not: name the message field that holds it, e.g. {field_var}=audit_event.{}",
                if var == "ACCEPT_TOPICS" { "topic" } else { "routing_key" }
            )));
        }
    }
    Ok(routing)
}

fn sink_config(raw: &Env, source: SourceKind) -> Result<SinkConfig> {
    let host = raw.get("ELASTICSEARCH_HOST");
    let sink = match raw.get("SINK").map(|s| s.to_ascii_lowercase()) {
        Some(s) => s,
        None if host.is_some() => "elasticsearch".into(),
        None => {
            return Err(ConfigError(
                "no sink configured: set ELASTICSEARCH_HOST, or SINK=file (with OUTPUT_PATH) or SINK=stdout"
                    .into(),
            ))
        }
    };
    match sink.as_str() {
        "elasticsearch" | "opensearch" => Ok(SinkConfig::Elasticsearch(Box::new(
            elasticsearch_config(raw)?,
        ))),
        "file" => {
            let gzip = raw.boolean("OUTPUT_GZIP")?;
            let layout = match raw
                .get("OUTPUT_LAYOUT")
                .map(|s| s.to_ascii_lowercase())
                .as_deref()
            {
                None | Some("pages") => FileLayout::Pages,
                Some("routed") => FileLayout::Routed,
                Some("cdp-archive") if source == SourceKind::CdpArchive => {
                    // CDP's archives are gzip by definition.
                    if gzip == Some(false) {
                        return Err(ConfigError(
                            "invalid OUTPUT_GZIP \"false\": OUTPUT_LAYOUT=cdp-archive always writes gzip (.json.gz); unset OUTPUT_GZIP".into(),
                        ));
                    }
                    FileLayout::CdpArchive
                }
                Some("cdp-archive") => return Err(ConfigError(
                    "invalid OUTPUT_LAYOUT \"cdp-archive\": it needs AUDIT_LOGGER_TYPE=CDP_ARCHIVE"
                        .into(),
                )),
                Some(other) => {
                    return Err(ConfigError(format!(
                        "invalid OUTPUT_LAYOUT {other:?}: expected pages, routed or cdp-archive"
                    )))
                }
            };
            Ok(SinkConfig::File {
                dir: PathBuf::from(raw.get("OUTPUT_PATH").unwrap_or("output")),
                gzip: gzip.unwrap_or(false) || layout == FileLayout::CdpArchive,
                gzip_level: match raw.get("OUTPUT_GZIP_LEVEL") {
                    None => crate::sinks::file::DEFAULT_GZIP_LEVEL,
                    Some(v) => v.parse().ok().filter(|l| *l <= 9).ok_or_else(|| {
                        ConfigError(format!(
                            "invalid OUTPUT_GZIP_LEVEL {v:?}: expected 0 (store) to 9 (smallest)"
                        ))
                    })?,
                },
                layout,
            })
        }
        "stdout" => Ok(SinkConfig::Stdout),
        other => Err(ConfigError(format!(
            "invalid SINK {other:?}: expected elasticsearch, file or stdout"
        ))),
    }
}

fn elasticsearch_config(raw: &Env) -> Result<ElasticsearchConfig> {
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

fn cdp_config(raw: &Env, now: DateTime<Utc>) -> Result<CdpConfig> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> Result<Config> {
        Config::from_env(&Env::from_pairs(pairs.iter().copied()))
    }

    #[test]
    fn compression_is_gzip_or_none() {
        let host = ("ELASTICSEARCH_HOST", "es:9200");
        assert!(!es(&[host]).compression);
        assert!(es(&[host, ("ELASTICSEARCH_COMPRESSION", "GZIP")]).compression);
        let e = cfg(&[host, ("ELASTICSEARCH_COMPRESSION", "br")])
            .unwrap()
            .sink
            .unwrap_err();
        assert!(e.0.contains("ELASTICSEARCH_COMPRESSION"), "{e:?}");
    }

    #[test]
    fn routing_settings_that_could_lose_or_misplace_records_are_refused() {
        let err = |pairs: &[(&str, &str)]| cfg(pairs).map(|_| ()).unwrap_err().0;
        let file = [("SINK", "file")];
        assert!(err(&[file[0], ("ACCEPT_TOPICS", "a")]).contains("ROUTING_TOPIC_FIELD"));
        assert!(err(&[
            file[0],
            ("AUDIT_LOGGER_TYPE", "CDP_ARCHIVE"),
            ("CDP_ACCESS_TOKEN", "t"),
            ("ACCEPT_ROUTING_KEYS", "getUser"),
        ])
        .contains("CDP_ARCHIVE"));
        assert!(err(&[
            file[0],
            ("AUDIT_LOGGER_TYPE", "S3_CURSOR"),
            ("S3_BUCKET", "b"),
            ("S3_OUTPUT", "original"),
            ("OUTPUT_LAYOUT", "routed"),
        ])
        .contains("S3_OUTPUT=original"));
        assert!(cfg(&[file[0], ("OUTPUT_GZIP_LEVEL", "10")])
            .unwrap()
            .sink
            .unwrap_err()
            .0
            .contains("OUTPUT_GZIP_LEVEL"));
        // The API sources have topic and key fields of their own.
        let c = cfg(&[
            file[0],
            ("AUDIT_LOGGER_TYPE", "CASTAI"),
            ("CASTAI_API_KEY", "k"),
            ("CASTAI_STATE_FILE", "/tmp/state.json"),
            ("ACCEPT_TOPICS", "clusterDeleted"),
        ])
        .unwrap();
        assert_eq!(c.routing.topic_field.unwrap().to_string(), "topic");
        assert_eq!(c.routing.key_field.unwrap().to_string(), "labels.clusterId");
    }

    fn es(pairs: &[(&str, &str)]) -> ElasticsearchConfig {
        match cfg(pairs).unwrap().sink.unwrap() {
            SinkConfig::Elasticsearch(e) => *e,
            other => panic!("expected elasticsearch, got {other:?}"),
        }
    }

    #[test]
    fn defaults_match_the_original() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.source, SourceKind::SingleColumnJson);
        assert_eq!((c.batch_size, c.chunk_size, c.clear_days), (5000, 500, 30));
        assert!(c.enable_send && c.clear_entries);
        assert_eq!(c.single_column.table.display(), "audit_logs");
        assert_eq!(c.single_column.date_time_field, "date_time");
        assert_eq!(c.single_column.date_time_parent_field, "audit_event");
        assert_eq!(c.django.user_table.display(), "auth_user");
        assert!(c.sink.unwrap_err().0.contains("ELASTICSEARCH_HOST"));
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
    fn metrics_destinations() {
        let c = cfg(&[
            ("METRICS_TEXTFILE", "/var/lib/node_exporter/audit.prom"),
            ("METRICS_PUSHGATEWAY_URL", "http://pushgateway:9091"),
        ])
        .unwrap();
        assert!(c.metrics.textfile.is_some());
        assert_eq!(
            c.metrics.pushgateway.unwrap().as_str(),
            "http://pushgateway:9091/"
        );
        assert!(cfg(&[]).unwrap().metrics.pushgateway.is_none());
        for (var, val) in [
            ("METRICS_TEXTFILE", "/tmp/audit.txt"),
            ("METRICS_PUSHGATEWAY_URL", "pushgateway:9091"),
            ("METRICS_PUSHGATEWAY_URL", "http://u:secret@pg:9091"),
        ] {
            let err = cfg(&[(var, val)]).unwrap_err().0;
            assert!(
                err.contains(var) && !err.contains('\n') && !err.contains("secret"),
                "{err}"
            );
        }
    }

    #[test]
    fn batch_limit_is_the_original_name() {
        assert_eq!(cfg(&[("BATCH_LIMIT", "7")]).unwrap().batch_size, 7);
        let both = cfg(&[("BATCH_LIMIT", "7"), ("BATCH_SIZE", "9")]).unwrap();
        assert_eq!(both.batch_size, 9);
        assert_eq!(both.warnings.len(), 1);
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (var, val) in [
            ("CHUNK_SIZE", "abc"),
            ("CHUNK_SIZE", "0"),
            ("BATCH_SIZE", "-1"),
            ("BATCH_LIMIT", "1e3"),
            ("MAX_ATTEMPTS", "x"),
            ("CLEAR_AUDIT_LOG_DAYS", "thirty"),
            ("ENABLE_SEND_AUDIT_LOG", "maybe"),
            ("AUDIT_LOGGER_TYPE", "KAFKA"),
            ("AUDIT_TABLE_NAME", "logs; drop table x"),
            ("AUDIT_TABLE_NAME", "a\"b"),
            ("AUDIT_TABLE_NAME", "my table"),
            ("AUDIT_TABLE_NAME", "a.b.c"),
            ("USER_TABLE_NAME", "users`"),
            ("DATABASE_URL", "oracle://x"),
        ] {
            let err = cfg(&[(var, val)]).unwrap_err().0;
            assert!(err.contains(var), "{var}={val}: {err}");
            assert!(!err.contains('\n'));
        }
        for (var, val) in [
            ("ELASTICSEARCH_PORT", "http"),
            ("ELASTICSEARCH_PORT", "70000"),
            ("ELASTICSEARCH_SCHEME", "ftp"),
            ("ELASTICSEARCH_APP_AUDIT_LOG_INDEX", "Bad Index"),
            ("ELASTICSEARCH_MAX_RETRIES", "many"),
            ("ELASTICSEARCH_TIMEOUT_SECONDS", "0"),
            ("ELASTICSEARCH_INSECURE", "perhaps"),
            ("ELASTICSEARCH_CREATE_INDEX", "sure"),
        ] {
            let err = cfg(&[("ELASTICSEARCH_HOST", "h"), (var, val)])
                .unwrap()
                .sink
                .unwrap_err()
                .0;
            assert!(err.contains(var), "{var}={val}: {err}");
        }
    }

    #[test]
    fn table_names_are_identifiers_only() {
        assert_eq!(
            TableName::parse("T", "audit.logs")
                .unwrap()
                .schema
                .as_deref(),
            Some("audit")
        );
        assert!(TableName::parse("T", "_x1").is_ok());
        for bad in [
            "",
            "1abc",
            "a-b",
            "a.",
            ".a",
            "ä",
            "a b",
            "a;b",
            &"x".repeat(64),
        ] {
            assert!(TableName::parse("T", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn database_password_overrides_and_is_never_displayed() {
        let c = cfg(&[
            ("DATABASE_URL", "postgres://user:old@db:5432/logs"),
            ("DATABASE_PASSWORD", "s3cret"),
        ])
        .unwrap();
        let db = c.database.unwrap();
        assert_eq!(db.url.password(), Some("s3cret"));
        assert!(!db.redacted().contains("s3cret"));
        assert!(!format!("{db:?}").contains("s3cret"));
    }

    #[test]
    fn ssl_variables_apply_to_both_servers() {
        let pg = cfg(&[("DATABASE_URL", "postgres://u@h/d"), ("DB_USE_SSL", "true")]).unwrap();
        assert!(pg
            .database
            .unwrap()
            .url
            .as_str()
            .contains("sslmode=require"));
        let my = cfg(&[("DATABASE_URL", "mysql://u@h/d"), ("DB_USE_SSL", "1")]).unwrap();
        assert!(my
            .database
            .unwrap()
            .url
            .as_str()
            .contains("ssl-mode=REQUIRED"));
        let missing = cfg(&[
            ("DATABASE_URL", "mysql://u@h/d"),
            ("DB_USE_SSL", "1"),
            ("SSL_CA", "/nonexistent/ca.pem"),
        ]);
        assert!(missing.unwrap_err().0.contains("SSL_CA"));
    }

    #[test]
    fn sqlite_urls_read_like_dj_database_url() {
        let rel = cfg(&[("DATABASE_URL", "sqlite:///db.sqlite3")]).unwrap();
        let path = rel.database.unwrap().url.to_file_path_lossy();
        assert!(path.ends_with("db.sqlite3") && path != std::path::Path::new("/db.sqlite3"));
        let abs = cfg(&[("DATABASE_URL", "sqlite:////tmp/x.db")]).unwrap();
        assert_eq!(abs.database.unwrap().url.as_str(), "sqlite:///tmp/x.db");
    }

    trait Lossy {
        fn to_file_path_lossy(&self) -> PathBuf;
    }
    impl Lossy for url::Url {
        fn to_file_path_lossy(&self) -> PathBuf {
            PathBuf::from(self.path())
        }
    }

    fn castai(pairs: &[(&str, &str)]) -> Result<CastaiConfig> {
        let mut all = vec![
            ("AUDIT_LOGGER_TYPE", "CASTAI"),
            ("CASTAI_API_KEY", "k3y-secret"),
            ("CASTAI_STATE_FILE", "/var/lib/audit-transfer/castai.json"),
        ];
        all.retain(|(k, _)| !pairs.iter().any(|(p, _)| p == k));
        all.extend_from_slice(pairs);
        cfg(&all).map(|c| c.castai.expect("castai config"))
    }

    fn s3(pairs: &[(&str, &str)]) -> Result<S3Config> {
        let mut all = vec![
            ("AUDIT_LOGGER_TYPE", "S3_CURSOR"),
            ("S3_BUCKET", "cato-logs"),
            ("SINK", "file"),
        ];
        all.retain(|(k, _)| !pairs.iter().any(|(p, _)| p == k));
        all.extend_from_slice(pairs);
        cfg(&all).map(|c| c.s3.expect("s3 config"))
    }

    #[test]
    fn s3_defaults_and_values() {
        let c = s3(&[]).unwrap();
        assert_eq!(c.prefix, "");
        assert_eq!(c.region, "us-east-1");
        assert!(!c.path_style, "virtual-hosted for AWS");
        assert_eq!(c.cursor_file, PathBuf::from("s3-cursor.json"));
        assert_eq!(c.format, S3Format::Auto);
        assert_eq!(c.order, S3Order::Auto);
        assert_eq!(c.max_attempts, 5);
        assert_eq!(c.on_bad_file, S3OnBadFile::Stop);
        assert!(!c.accept_gaps);
        assert_eq!(c.output, S3Output::Document);
        assert!(matches!(c.credentials, S3Credentials::Chain));
        let c = s3(&[
            ("S3_PREFIX", "/acct/1234/"),
            ("S3_ENDPOINT", "http://minio:9000"),
            ("AWS_REGION", "eu-north-1"),
            ("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE"),
            ("AWS_SECRET_ACCESS_KEY", "s3cr3t-value"),
            ("S3_ZIP_PASSWORD", "z1p-secret"),
            ("S3_FORMAT", "CEF"),
            ("S3_ON_BAD_FILE", "skip"),
            ("S3_MAX_ATTEMPTS", "2"),
            ("S3_ACCEPT_GAPS", "true"),
            ("SINK", "stdout"),
        ])
        .unwrap();
        assert_eq!(c.prefix, "acct/1234");
        assert!(c.path_style, "path-style with an endpoint");
        assert_eq!(c.region, "eu-north-1");
        assert_eq!(c.format, S3Format::Cef);
        assert_eq!(c.on_bad_file, S3OnBadFile::Skip);
        assert_eq!(c.max_attempts, 2);
        assert!(c.accept_gaps);
        assert_eq!(c.output, S3Output::Original, "stdout: the vendor's lines");
        let debug = format!("{c:?}");
        assert!(
            !debug.contains("s3cr3t-value") && !debug.contains("z1p-secret"),
            "{debug}"
        );
    }

    #[test]
    fn s3_invalid_values_name_the_variable() {
        let err = |pairs: &[(&str, &str)]| s3(pairs).unwrap_err().0;
        assert!(err(&[("S3_BUCKET", "")]).starts_with("S3_BUCKET is not set"));
        assert!(err(&[("S3_BUCKET", "a b")]).starts_with("invalid S3_BUCKET"));
        assert!(err(&[("S3_PREFIX", "a//b")]).starts_with("invalid S3_PREFIX"));
        assert!(err(&[("S3_ENDPOINT", "minio:9000")]).starts_with("invalid S3_ENDPOINT"));
        assert!(err(&[("S3_FORMAT", "xml")]).starts_with("invalid S3_FORMAT"));
        assert!(err(&[("S3_ORDER", "date")]).starts_with("invalid S3_ORDER"));
        assert!(err(&[("S3_MAX_ATTEMPTS", "0")]).starts_with("invalid S3_MAX_ATTEMPTS"));
        assert!(err(&[("S3_ON_BAD_FILE", "ignore")]).starts_with("invalid S3_ON_BAD_FILE"));
        assert!(err(&[("S3_ACCEPT_GAPS", "maybe")]).starts_with("invalid S3_ACCEPT_GAPS"));
        assert!(err(&[("S3_OUTPUT", "xml")]).starts_with("invalid S3_OUTPUT"));
        let e = err(&[
            ("S3_OUTPUT", "original"),
            ("SINK", ""),
            ("ELASTICSEARCH_HOST", "es"),
        ]);
        assert!(e.contains("Elasticsearch needs JSON"), "{e}");
        let e = err(&[("AWS_ACCESS_KEY_ID", "AKIA")]);
        assert!(e.starts_with("AWS_SECRET_ACCESS_KEY is not set"), "{e}");
        let e = err(&[("AWS_SECRET_ACCESS_KEY", "s3cr3t")]);
        assert!(
            e.starts_with("AWS_ACCESS_KEY_ID is not set") && !e.contains("s3cr3t"),
            "{e}"
        );
        let e = err(&[("AWS_PROFILE", "nope"), ("HOME", "/nonexistent")]);
        assert!(e.starts_with("invalid AWS_PROFILE"), "{e}");
    }

    #[test]
    fn s3_credentials_from_a_profile() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("credentials");
        std::fs::write(
            &file,
            "[default]\naws_access_key_id = AKIADEFAULT\naws_secret_access_key = d3f\n\n[audit]\naws_access_key_id=AKIAAUDIT\naws_secret_access_key=4ud1t\naws_session_token=tok\n",
        )
        .unwrap();
        let f = file.to_str().unwrap();
        let c = s3(&[("AWS_SHARED_CREDENTIALS_FILE", f), ("AWS_PROFILE", "audit")]).unwrap();
        match &c.credentials {
            S3Credentials::Static { key_id, token, .. } => {
                assert_eq!(key_id, "AKIAAUDIT");
                assert_eq!(token.as_deref(), Some("tok"));
            }
            S3Credentials::Chain => panic!("profile not used"),
        }
        assert!(c.credentials_origin.contains("profile \"audit\""));
        let c = s3(&[("AWS_SHARED_CREDENTIALS_FILE", f)]).unwrap();
        assert!(
            matches!(&c.credentials, S3Credentials::Static { key_id, .. } if key_id == "AKIADEFAULT")
        );
    }

    #[test]
    fn castai_defaults_and_values() {
        let c = castai(&[]).unwrap();
        assert_eq!(c.api_url.as_str(), "https://api.cast.ai/");
        assert_eq!(c.version, CastaiApiVersion::V1);
        assert_eq!(c.page_limit, 100);
        assert_eq!(c.lag, Duration::from_secs(120));
        assert_eq!(
            c.start_from,
            StartFrom::Ago(Duration::from_secs(90 * 86400))
        );
        assert_eq!(c.window, Duration::from_secs(6 * 3600));
        assert!(!format!("{c:?}").contains("k3y-secret"));
        let c = castai(&[
            ("CASTAI_API_VERSION", "V2"),
            ("CASTAI_PAGE_LIMIT", "250"),
            ("CASTAI_LAG", "0"),
            ("CASTAI_START_FROM", "2024-05-01T00:00:00+02:00"),
            ("CASTAI_WINDOW", "30m"),
        ])
        .unwrap();
        assert_eq!((c.version, c.page_limit), (CastaiApiVersion::V2, 250));
        assert_eq!(c.lag, Duration::ZERO);
        assert_eq!(
            c.start_from,
            StartFrom::At("2024-04-30T22:00:00Z".parse().unwrap())
        );
        assert_eq!(c.window, Duration::from_secs(1800));
        assert_eq!(
            castai(&[("CASTAI_START_FROM", "12h")]).unwrap().start_from,
            StartFrom::Ago(Duration::from_secs(12 * 3600))
        );
        // Other sources do not need the CAST AI variables.
        assert!(cfg(&[]).unwrap().castai.is_none());
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
    fn sink_is_chosen_explicitly_or_by_host() {
        assert!(matches!(
            cfg(&[("SINK", "stdout")]).unwrap().sink,
            Ok(SinkConfig::Stdout)
        ));
        assert!(matches!(
            cfg(&[("SINK", "file"), ("OUTPUT_GZIP", "true")])
                .unwrap()
                .sink,
            Ok(SinkConfig::File { gzip: true, .. })
        ));
        assert!(cfg(&[("SINK", "kafka")])
            .unwrap()
            .sink
            .unwrap_err()
            .0
            .contains("SINK"));
    }

    const SEED: &str = "VHswlNpwJnMpuXhIq7LYDfzs+R9pHvVLqgBGbhcnbSE=";

    fn cdp(pairs: &[(&str, &str)]) -> Result<CdpConfig> {
        let mut all = vec![("AUDIT_LOGGER_TYPE", "CDP_ARCHIVE")];
        all.extend_from_slice(pairs);
        cfg(&all).map(|c| c.cdp.expect("cdp settings"))
    }

    #[test]
    fn cdp_defaults() {
        let c = cdp(&[("CDP_ACCESS_TOKEN", "tok")]).unwrap();
        assert_eq!(
            c.endpoint.as_str(),
            "https://api.us-west-1.cdp.cloudera.com/"
        );
        assert!(matches!(c.auth, CdpAuth::Token(_)));
        assert!(!format!("{c:?}").contains("tok\""));
        let (from, to) = c.window.unwrap();
        assert_eq!(to - from, CDP_DEFAULT_LOOKBACK);
        assert!(Utc::now() - to >= CDP_WINDOW_MARGIN);
        assert_eq!(
            (c.page_size, c.task_timeout.as_secs(), c.max_retries),
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

    fn stamp(t: DateTime<Utc>) -> String {
        t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    }

    #[test]
    fn cdp_key_from_the_variable_or_a_file() {
        let c = cdp(&[("CDP_ACCESS_KEY_ID", "id-1"), ("CDP_PRIVATE_KEY", SEED)]).unwrap();
        assert!(matches!(&c.auth, CdpAuth::Key(k) if k.access_key_id == "id-1"));
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
        assert!(matches!(&d.auth, CdpAuth::Key(k) if k.access_key_id == "d"));
        let o = cdp(&[("HOME", h), ("CDP_PROFILE", "ops")]).unwrap();
        assert!(matches!(&o.auth, CdpAuth::Key(k) if k.access_key_id == "o"));
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

    #[test]
    fn cdp_archive_layout_needs_the_cdp_source_and_gzip() {
        let file = [("SINK", "file"), ("OUTPUT_LAYOUT", "cdp-archive")];
        assert!(cfg(&file)
            .unwrap()
            .sink
            .unwrap_err()
            .0
            .contains("OUTPUT_LAYOUT"));
        let c = cfg(&[
            ("AUDIT_LOGGER_TYPE", "CDP_ARCHIVE"),
            ("CDP_ACCESS_TOKEN", "t"),
            file[0],
            file[1],
        ])
        .unwrap();
        assert!(matches!(
            c.sink,
            Ok(SinkConfig::File {
                gzip: true,
                layout: FileLayout::CdpArchive,
                ..
            })
        ));
        let err = cfg(&[
            ("AUDIT_LOGGER_TYPE", "CDP_ARCHIVE"),
            ("CDP_ACCESS_TOKEN", "t"),
            file[0],
            file[1],
            ("OUTPUT_GZIP", "false"),
        ])
        .unwrap()
        .sink
        .unwrap_err()
        .0;
        assert!(err.contains("OUTPUT_GZIP"), "{err}");
        let err = cfg(&[("SINK", "file"), ("OUTPUT_LAYOUT", "tree")])
            .unwrap()
            .sink
            .unwrap_err()
            .0;
        assert!(err.contains("OUTPUT_LAYOUT"), "{err}");
    }
}
