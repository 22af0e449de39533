//! Settings read together: cross-checks between source, sink and routing, and each
//! component's parsing through the registry.

use super::*;
use crate::config::*;
use chrono::{DateTime, Utc};
use std::path::PathBuf;
use std::time::Duration;

type Result<T> = std::result::Result<T, ConfigError>;

fn env(pairs: &[(&str, &str)]) -> Env {
    Env::from_pairs(pairs.iter().copied())
}

/// The SQL sources need DATABASE_URL; tests about other settings get a SQLite one.
fn cfg(pairs: &[(&str, &str)]) -> Result<Setup> {
    cfg_deferred(pairs).and_then(|s| match &s.source {
        Err(e) => Err(e.clone()),
        Ok(_) => Ok(s),
    })
}

/// Source errors are kept for the commands that need a source.
fn cfg_deferred(pairs: &[(&str, &str)]) -> Result<Setup> {
    let mut all = pairs.to_vec();
    if !pairs.iter().any(|(k, _)| *k == "DATABASE_URL") {
        all.push(("DATABASE_URL", "sqlite:///registry-test.db"));
    }
    Setup::from_env(&env(&all))
}

/// The configured sink as its `Debug` shows it.
fn sink_debug(setup: &Setup) -> String {
    format!("{:?}", setup.sink)
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
    assert_eq!(c.run.routing.topic_field.unwrap().to_string(), "topic");
    assert_eq!(
        c.run.routing.key_field.unwrap().to_string(),
        "labels.clusterId"
    );
}

#[test]
fn defaults_match_the_original() {
    let c = cfg(&[]).unwrap();
    assert_eq!(
        c.source.as_ref().unwrap().label(),
        "single_column_json:audit_logs"
    );
    let r = &c.run;
    assert_eq!((r.batch_size, r.chunk_size, r.clear_days), (5000, 500, 30));
    assert!(r.enable_send && r.clear_entries);
    let sc = format!("{:?}", c.source);
    assert!(sc.contains("date_time_field: \"date_time\""), "{sc}");
    assert!(
        sc.contains("date_time_parent_field: \"audit_event\""),
        "{sc}"
    );
    let dj = cfg(&[("AUDIT_LOGGER_TYPE", "DJANGO_AUDITLOG")]).unwrap();
    assert!(format!("{:?}", dj.source).contains("name: \"auth_user\""));
    assert!(c.sink.unwrap_err().0.contains("ELASTICSEARCH_HOST"));
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
    assert_eq!(cfg(&[("BATCH_LIMIT", "7")]).unwrap().run.batch_size, 7);
    let both = cfg(&[("BATCH_LIMIT", "7"), ("BATCH_SIZE", "9")]).unwrap();
    assert_eq!(both.run.batch_size, 9);
    assert_eq!(both.run.warnings.len(), 1);
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
        ("DATABASE_URL", "oracle://x"),
    ] {
        let err = cfg(&[(var, val)]).unwrap_err().0;
        assert!(err.contains(var), "{var}={val}: {err}");
        assert!(!err.contains('\n'));
    }
    // Read by the source that uses it.
    let django = ("AUDIT_LOGGER_TYPE", "DJANGO_AUDITLOG");
    let err = cfg(&[django, ("USER_TABLE_NAME", "users`")]).unwrap_err().0;
    assert!(err.contains("USER_TABLE_NAME"), "{err}");
    // The sink's errors are kept for the commands that need a sink.
    let err = cfg(&[("ELASTICSEARCH_HOST", "h"), ("ELASTICSEARCH_PORT", "http")])
        .unwrap()
        .sink
        .unwrap_err()
        .0;
    assert!(err.contains("ELASTICSEARCH_PORT"), "{err}");
}

fn castai(pairs: &[(&str, &str)]) -> Result<CastaiConfig> {
    let mut all = vec![
        ("AUDIT_LOGGER_TYPE", "CASTAI"),
        ("CASTAI_API_KEY", "k3y-secret"),
        ("CASTAI_STATE_FILE", "/var/lib/audit-transfer/castai.json"),
    ];
    all.retain(|(k, _)| !pairs.iter().any(|(p, _)| p == k));
    all.extend_from_slice(pairs);
    cfg(&all)?;
    castai_config(&env(&all))
}

fn s3(pairs: &[(&str, &str)]) -> Result<S3Config> {
    let mut all = vec![
        ("AUDIT_LOGGER_TYPE", "S3_CURSOR"),
        ("S3_BUCKET", "cato-logs"),
        ("SINK", "file"),
    ];
    all.retain(|(k, _)| !pairs.iter().any(|(p, _)| p == k));
    all.extend_from_slice(pairs);
    cfg(&all)?;
    let sink = crate::sinks::choose(&env(&all)).map(|k| k.traits);
    s3_config(&env(&all), &sink.unwrap_or_default())
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
    assert!(cfg(&[("SINK", "stdout")]).is_ok());
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
    assert_eq!(
        sink_debug(&cfg(&[("SINK", "stdout")]).unwrap()),
        "Ok(Stdout)"
    );
    let file = sink_debug(&cfg(&[("SINK", "file"), ("OUTPUT_GZIP", "true")]).unwrap());
    assert!(
        file.starts_with("Ok(Settings {") && file.contains("gzip: true"),
        "{file}"
    );
    let es = sink_debug(&cfg(&[("ELASTICSEARCH_HOST", "es:9200")]).unwrap());
    assert!(
        es.starts_with("Ok(Configured { settings: Settings { url: Url { scheme: \"https\"")
            && es.contains("Domain(\"es\")"),
        "{es}"
    );
    let os = sink_debug(&cfg(&[("SINK", "OpenSearch"), ("ELASTICSEARCH_HOST", "es")]).unwrap());
    assert!(
        os.starts_with("Ok(Configured { settings: Settings {"),
        "{os}"
    );
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
    cfg(&all)?;
    cdp_config(&env(&all), Utc::now())
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
    let sink = sink_debug(&c);
    assert!(
        sink.contains("gzip: true") && sink.contains("layout: CdpArchive"),
        "{sink}"
    );
    assert!(c.run.units_as_files);
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
