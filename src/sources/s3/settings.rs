//! The S3 source's settings: the bucket and where in it, the store (endpoint, region,
//! addressing), the credentials, the cursor file, and how files and lines are read.
//!
//! Credentials follow the AWS tools: AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY (+
//! AWS_SESSION_TOKEN); else profile AWS_PROFILE (default `default`) of the shared credentials
//! file (AWS_SHARED_CREDENTIALS_FILE, default `~/.aws/credentials`) if it has one; else the
//! chain of web identity, container and instance credentials. The file is only located here;
//! it is read when the source connects ([`Settings::credentials`]), so its keys are held only
//! by the commands that use them. Messages never quote a key.

use crate::base::env::Env;
use crate::base::exit::ConfigError;
use crate::base::secret::Secret;
use crate::base::sink::SinkTraits;
use std::path::PathBuf;

type Result<T> = std::result::Result<T, ConfigError>;

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

/// An access key (and session token).
#[derive(Debug, Clone)]
pub struct Keys {
    pub key_id: String,
    pub secret: Secret,
    pub token: Option<Secret>,
}

/// Where the credentials are taken from.
#[derive(Debug, Clone)]
pub enum CredentialSource {
    /// AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY (+ AWS_SESSION_TOKEN).
    Variables(Keys),
    /// A profile of the shared credentials file when it has it, else the chain.
    SharedFile {
        /// `None` without AWS_SHARED_CREDENTIALS_FILE and HOME.
        file: Option<PathBuf>,
        /// AWS_PROFILE; `None` is `default`, and may be missing.
        profile: Option<String>,
    },
}

/// AWS credentials as the source uses them.
#[derive(Debug, Clone)]
pub enum S3Credentials {
    /// An access key, from the environment or a credentials file profile.
    Static(Keys),
    /// No key: object_store's chain (web identity, ECS task role, instance metadata).
    Chain,
}

/// The S3 sequential-files source (`AUDIT_LOGGER_TYPE=S3_CURSOR`).
#[derive(Debug, Clone)]
pub struct Settings {
    pub bucket: String,
    /// A folder, without leading or trailing `/`; empty for the whole bucket.
    pub prefix: String,
    pub endpoint: Option<url::Url>,
    pub region: String,
    pub path_style: bool,
    pub credentials: CredentialSource,
    pub cursor_file: PathBuf,
    pub zip_password: Option<Secret>,
    pub format: S3Format,
    pub order: S3Order,
    pub max_attempts: u32,
    pub on_bad_file: S3OnBadFile,
    pub accept_gaps: bool,
    pub output: S3Output,
}

impl Settings {
    pub fn from_env(env: &Env, sink: &SinkTraits) -> Result<Self> {
        let bucket = env.get("S3_BUCKET").ok_or_else(|| {
            ConfigError(
                "S3_BUCKET is not set: expected the name of the bucket holding the export files"
                    .into(),
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
        let prefix = env
            .get("S3_PREFIX")
            .unwrap_or("")
            .trim_matches('/')
            .to_string();
        if !prefix.is_empty()
            && prefix
                .split('/')
                .any(|p| p.is_empty() || p == "." || p == "..")
        {
            return Err(ConfigError(format!(
                "invalid S3_PREFIX {prefix:?}: expected a folder such as exports/account-1 (no empty, . or .. parts)"
            )));
        }
        let endpoint = env.http_url(
            "S3_ENDPOINT",
            "http(s)://host[:port] of an S3-compatible store, without credentials",
        )?;
        let region = env
            .get("S3_REGION")
            .or(env.get("AWS_REGION"))
            .or(env.get("AWS_DEFAULT_REGION"))
            .unwrap_or("us-east-1")
            .to_string();
        // MinIO, Ceph and most other stores want path-style; AWS prefers virtual-hosted.
        let path_style = env.boolean("S3_PATH_STYLE")?.unwrap_or(endpoint.is_some());
        let credentials = credential_source(env)?;
        let cursor_file = PathBuf::from(env.get("S3_CURSOR_FILE").unwrap_or("s3-cursor.json"));
        if cursor_file.file_name().is_none() || cursor_file.is_dir() {
            return Err(ConfigError(format!(
                "invalid S3_CURSOR_FILE {:?}: expected a file path, not a directory",
                cursor_file.display()
            )));
        }
        let format = env
            .choice(
                "S3_FORMAT",
                &[
                    ("json", S3Format::Json),
                    ("cef", S3Format::Cef),
                    ("auto", S3Format::Auto),
                ],
            )?
            .unwrap_or(S3Format::Auto);
        let order = env
            .choice(
                "S3_ORDER",
                &[
                    ("auto", S3Order::Auto),
                    ("index", S3Order::Index),
                    ("key", S3Order::Key),
                ],
            )?
            .unwrap_or(S3Order::Auto);
        let max_attempts = env
            .number("S3_MAX_ATTEMPTS", 1..=u32::MAX, "a positive whole number")?
            .unwrap_or(5);
        let on_bad_file = env
            .choice(
                "S3_ON_BAD_FILE",
                &[("stop", S3OnBadFile::Stop), ("skip", S3OnBadFile::Skip)],
            )?
            .unwrap_or(S3OnBadFile::Stop);
        let output = env
            .choice(
                "S3_OUTPUT",
                &[
                    ("document", S3Output::Document),
                    ("original", S3Output::Original),
                ],
            )?
            // On stdout the lines as the vendor's client script wrote them (`> export.log`).
            .unwrap_or(if sink.prefers_original {
                S3Output::Original
            } else {
                S3Output::Document
            });
        if output == S3Output::Original && sink.json_only {
            return Err(ConfigError(
                "invalid S3_OUTPUT \"original\": Elasticsearch needs JSON documents; use S3_OUTPUT=document".into(),
            ));
        }
        Ok(Settings {
            bucket: bucket.to_string(),
            prefix,
            endpoint,
            region,
            path_style,
            credentials,
            cursor_file,
            // Untrimmed: a zip password may begin or end with a space.
            zip_password: env
                .raw("S3_ZIP_PASSWORD")
                .filter(|p| !p.is_empty())
                .map(Secret::new),
            format,
            order,
            max_attempts,
            on_bad_file,
            accept_gaps: env.boolean("S3_ACCEPT_GAPS")?.unwrap_or(false),
            output,
        })
    }

    /// The credentials, with where they came from for messages (never the values). A shared
    /// credentials file is read here, when the source is built: a profile named by AWS_PROFILE
    /// that it does not have is a configuration error; without AWS_PROFILE a file without a
    /// `default` profile (or no file) means the chain.
    pub fn credentials(&self) -> Result<(S3Credentials, String)> {
        let (file, profile) = match &self.credentials {
            CredentialSource::Variables(keys) => {
                return Ok((
                    S3Credentials::Static(keys.clone()),
                    "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY".into(),
                ))
            }
            CredentialSource::SharedFile { file, profile } => (file, profile.as_deref()),
        };
        let chain = || {
            Ok((
                S3Credentials::Chain,
                "the AWS credential chain (web identity, container or instance role)".into(),
            ))
        };
        let name = profile.unwrap_or("default");
        let ini = match file {
            Some(path) => read_credentials_file(path)?,
            None => None,
        };
        let section = ini.as_ref().and_then(|ini| {
            ini.iter()
                .find(|(s, _)| s.map(str::trim) == Some(name))
                .map(|(_, props)| props)
        });
        let (Some(path), Some(section)) = (file, section) else {
            // An explicitly named profile that is not there is a mistake, not "use the chain".
            if let Some(p) = profile {
                return Err(ConfigError(format!(
                    "invalid AWS_PROFILE {p:?}: no such profile in the AWS credentials file (AWS_SHARED_CREDENTIALS_FILE, default ~/.aws/credentials)"
                )));
            }
            return chain();
        };
        let origin = format!("profile {name:?} of {}", path.display());
        let get = |k: &str| section.get(k).map(str::trim).filter(|v| !v.is_empty());
        match (get("aws_access_key_id"), get("aws_secret_access_key")) {
            (Some(key_id), Some(secret)) => Ok((
                S3Credentials::Static(Keys {
                    key_id: key_id.to_string(),
                    secret: Secret::new(secret),
                    token: get("aws_session_token").map(Secret::new),
                }),
                origin,
            )),
            _ => Err(ConfigError(format!(
                "{origin} has no aws_access_key_id/aws_secret_access_key (SSO and role profiles are not supported: export the credentials, e.g. with `aws configure export-credentials`)"
            ))),
        }
    }
}

/// The variables, or where the shared credentials file is.
fn credential_source(env: &Env) -> Result<CredentialSource> {
    let id = env.get("AWS_ACCESS_KEY_ID");
    let secret = env.secret("AWS_SECRET_ACCESS_KEY");
    let token = env.secret("AWS_SESSION_TOKEN");
    match (id, secret) {
        (Some(id), Some(secret)) => Ok(CredentialSource::Variables(Keys {
            key_id: id.to_string(),
            secret,
            token,
        })),
        (Some(_), None) => Err(ConfigError(
            "AWS_SECRET_ACCESS_KEY is not set: expected it with AWS_ACCESS_KEY_ID".into(),
        )),
        (None, Some(_)) => Err(ConfigError(
            "AWS_ACCESS_KEY_ID is not set: expected it with AWS_SECRET_ACCESS_KEY".into(),
        )),
        (None, None) => Ok(CredentialSource::SharedFile {
            file: match (env.get("AWS_SHARED_CREDENTIALS_FILE"), env.get("HOME")) {
                (Some(p), _) => Some(PathBuf::from(p)),
                (None, Some(home)) => Some(PathBuf::from(home).join(".aws").join("credentials")),
                (None, None) => None,
            },
            profile: env.get("AWS_PROFILE").map(String::from),
        }),
    }
}

/// The shared credentials file, or `None` when there is none. One that is there but cannot be
/// read or parsed is an error: falling back to the chain would hide the mistake.
fn read_credentials_file(path: &std::path::Path) -> Result<Option<ini::Ini>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(ConfigError(format!(
                "cannot read the AWS credentials file {} (AWS_SHARED_CREDENTIALS_FILE, default ~/.aws/credentials): {e}",
                path.display()
            )))
        }
    };
    // As the AWS tools read it: no quotes or backslash escapes in values (a secret key may
    // hold any of them).
    let options = ini::ParseOption {
        enabled_quote: false,
        enabled_escape: false,
        ..Default::default()
    };
    ini::Ini::load_from_str_opt(&text, options)
        .map(Some)
        .map_err(|e| {
            // Line and column only: the parser's message may quote the text around them.
            ConfigError(format!(
                "invalid AWS credentials file {} (AWS_SHARED_CREDENTIALS_FILE, default ~/.aws/credentials): not INI at line {}, column {}",
                path.display(),
                e.line,
                e.col
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        Env::from_pairs(pairs.iter().copied())
    }

    /// The settings with a bucket and SINK=file unless `pairs` say otherwise, read with the
    /// traits of the sink the variables choose.
    fn s3(pairs: &[(&str, &str)]) -> Result<Settings> {
        let mut all = vec![
            ("AUDIT_LOGGER_TYPE", "S3_CURSOR"),
            ("S3_BUCKET", "cato-logs"),
            ("SINK", "file"),
        ];
        all.retain(|(k, _)| !pairs.iter().any(|(p, _)| p == k));
        all.extend_from_slice(pairs);
        let env = env(&all);
        let sink = crate::sinks::choose(&env).map(|k| k.traits);
        Settings::from_env(&env, &sink.unwrap_or_default())
    }

    /// The settings and the credentials they resolve to when the source is built.
    fn s3_credentials(pairs: &[(&str, &str)]) -> Result<(S3Credentials, String)> {
        s3(pairs)?.credentials()
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
        assert!(matches!(
            s3_credentials(&[]).unwrap().0,
            S3Credentials::Chain
        ));
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
        let (credentials, origin) = c.credentials().unwrap();
        assert!(
            matches!(&credentials, S3Credentials::Static(k) if k.key_id == "AKIAEXAMPLE" && k.secret.expose() == "s3cr3t-value"),
            "{credentials:?}"
        );
        assert_eq!(origin, "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY");
    }

    #[test]
    fn s3_invalid_values_name_the_variable() {
        // Settings and, as the source is built, credentials.
        let err = |pairs: &[(&str, &str)]| s3_credentials(pairs).unwrap_err().0;
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

    /// Issue 14: an endpoint with credentials in it is refused, and the message shows neither
    /// the secret nor (where it could be one) the user name, in any spelling of the URL.
    #[test]
    fn s3_endpoint_with_credentials_is_refused_without_printing_them() {
        for value in [
            "http://AKIAUSER:Pa55-w0rd@minio:9000",
            "https://AKIAUSER:Pa55/w0rd@minio:9000",
            "AKIAUSER:Pa55-w0rd@minio:9000",
            "//AKIAUSER:Pa55-w0rd@minio:9000",
            "http:AKIAUSER:Pa55-w0rd@minio:9000",
            "https://Pa55-w0rd@minio:9000",
        ] {
            let e = s3(&[("S3_ENDPOINT", value)]).unwrap_err().0;
            assert!(e.starts_with("invalid S3_ENDPOINT"), "{value}: {e}");
            assert!(!e.contains("Pa55"), "{value}: {e}");
            assert!(e.contains("minio:9000"), "{value}: {e}");
            assert!(e.contains("credentials do not belong in the URL"), "{e}");
        }
        // Today's accepted forms stay accepted.
        for (value, host) in [
            ("http://minio:9000", "minio"),
            (
                "https://s3.eu-north-1.amazonaws.com",
                "s3.eu-north-1.amazonaws.com",
            ),
            ("http://127.0.0.1:9000/", "127.0.0.1"),
        ] {
            let c = s3(&[("S3_ENDPOINT", value)]).unwrap();
            assert_eq!(c.endpoint.unwrap().host_str(), Some(host));
        }
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
        let (credentials, origin) =
            s3_credentials(&[("AWS_SHARED_CREDENTIALS_FILE", f), ("AWS_PROFILE", "audit")])
                .unwrap();
        match &credentials {
            S3Credentials::Static(Keys { key_id, token, .. }) => {
                assert_eq!(key_id, "AKIAAUDIT");
                assert_eq!(token.as_ref().map(Secret::expose), Some("tok"));
            }
            S3Credentials::Chain => panic!("profile not used"),
        }
        assert!(origin.contains("profile \"audit\""));
        let (credentials, _) = s3_credentials(&[("AWS_SHARED_CREDENTIALS_FILE", f)]).unwrap();
        assert!(
            matches!(&credentials, S3Credentials::Static(Keys { key_id, .. }) if key_id == "AKIADEFAULT")
        );
    }

    /// The file is read as the source is built, as the AWS tools read it: comments, spaces
    /// around names and values, and secrets with characters an INI parser could take for
    /// quotes or escapes. A file that is there but unreadable is an error, not the chain.
    #[test]
    fn s3_credentials_file_is_read_when_the_source_is_built() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("credentials");
        let f = file.to_str().unwrap();
        let settings = s3(&[("AWS_SHARED_CREDENTIALS_FILE", f)]).unwrap();
        // Written after the settings were read: the key is only taken at build time.
        std::fs::write(
            &file,
            "# exported keys\n[ default ]\n; old key below\naws_access_key_id = AKIAFILE\naws_secret_access_key = \"a\\b/c+d=\"  \n",
        )
        .unwrap();
        let (credentials, origin) = settings.credentials().unwrap();
        match &credentials {
            S3Credentials::Static(k) => {
                assert_eq!(k.key_id, "AKIAFILE");
                assert_eq!(k.secret.expose(), "\"a\\b/c+d=\"");
                assert!(k.token.is_none());
            }
            S3Credentials::Chain => panic!("file not used"),
        }
        assert!(origin.contains(f), "{origin}");
        assert!(!format!("{credentials:?}").contains("a\\b"));

        std::fs::write(&file, "[other]\naws_access_key_id = AKIAOTHER\n").unwrap();
        assert!(matches!(
            settings.credentials().unwrap().0,
            S3Credentials::Chain
        ));
        std::fs::write(&file, "[default]\naws_access_key_id = AKIAONLY\n").unwrap();
        let e = settings.credentials().unwrap_err().0;
        assert!(
            e.contains("has no aws_access_key_id/aws_secret_access_key"),
            "{e}"
        );

        // A directory where the file should be cannot be read.
        let e = s3(&[("AWS_SHARED_CREDENTIALS_FILE", dir.path().to_str().unwrap())])
            .unwrap()
            .credentials()
            .unwrap_err()
            .0;
        assert!(e.starts_with("cannot read the AWS credentials file"), "{e}");
    }
}
