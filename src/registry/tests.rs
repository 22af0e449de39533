//! Settings read together: cross-checks between source, sink and routing, and each
//! component's parsing through the registry.

use super::*;

type Result<T> = std::result::Result<T, ConfigError>;

fn env(pairs: &[(&str, &str)]) -> Env {
    Env::from_pairs(pairs.iter().copied())
}

/// The SQL sources need DATABASE_URL; tests about other settings get a SQLite one.
fn cfg(pairs: &[(&str, &str)]) -> Result<Setup> {
    let mut all = pairs.to_vec();
    if !pairs.iter().any(|(k, _)| *k == "DATABASE_URL") {
        all.push(("DATABASE_URL", "sqlite:///registry-test.db"));
    }
    // Tests about other settings get a sink.
    if !pairs
        .iter()
        .any(|(k, _)| *k == "SINK" || *k == "ELASTICSEARCH_HOST")
    {
        all.push(("SINK", "stdout"));
    }
    Setup::from_env(&env(&all), Needs::BOTH)
}

/// The configured sink as its `Debug` shows it.
fn sink_debug(setup: &Setup) -> String {
    format!("{:?}", setup.targets.first().map(|t| &t.sink))
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
    // Other sources do not need the CAST AI variables.
    assert!(cfg(&[("SINK", "stdout")]).is_ok());
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
    let none = Setup::from_env(&env(&[("DATABASE_URL", "sqlite:///x.db")]), Needs::BOTH);
    assert!(none.unwrap_err().0.contains("ELASTICSEARCH_HOST"));
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
    let err = cfg(&[("ELASTICSEARCH_HOST", "h"), ("ELASTICSEARCH_PORT", "http")])
        .unwrap_err()
        .0;
    assert!(err.contains("ELASTICSEARCH_PORT"), "{err}");
}

#[test]
fn sink_is_chosen_explicitly_or_by_host() {
    assert_eq!(
        sink_debug(&cfg(&[("SINK", "stdout")]).unwrap()),
        "Some(Stdout)"
    );
    let file = sink_debug(&cfg(&[("SINK", "file"), ("OUTPUT_GZIP", "true")]).unwrap());
    assert!(
        file.starts_with("Some(Settings {") && file.contains("gzip: true"),
        "{file}"
    );
    let es = sink_debug(&cfg(&[("ELASTICSEARCH_HOST", "es:9200")]).unwrap());
    assert!(
        es.starts_with("Some(Configured { settings: Settings { url: Url { scheme: \"https\"")
            && es.contains("Domain(\"es\")"),
        "{es}"
    );
    let os = sink_debug(&cfg(&[("SINK", "OpenSearch"), ("ELASTICSEARCH_HOST", "es")]).unwrap());
    assert!(
        os.starts_with("Some(Configured { settings: Settings {"),
        "{os}"
    );
    assert!(cfg(&[("SINK", "pulsar")]).unwrap_err().0.contains("SINK"));
    assert!(cfg(&[("SINK", "kafka")])
        .unwrap_err()
        .0
        .contains("KAFKA_BROKERS"));
}

#[test]
fn cdp_archive_layout_needs_the_cdp_source_and_gzip() {
    let file = [("SINK", "file"), ("OUTPUT_LAYOUT", "cdp-archive")];
    assert!(cfg(&file).unwrap_err().0.contains("OUTPUT_LAYOUT"));
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
    .unwrap_err()
    .0;
    assert!(err.contains("OUTPUT_GZIP"), "{err}");
    let err = cfg(&[("SINK", "file"), ("OUTPUT_LAYOUT", "tree")])
        .unwrap_err()
        .0;
    assert!(err.contains("OUTPUT_LAYOUT"), "{err}");
}

/// The S3 source reads its settings with the traits of the sink the variables choose: an index
/// chosen by ELASTICSEARCH_HOST cannot take original lines, stdout gets them by default.
#[test]
fn s3_settings_take_the_traits_of_the_chosen_sink() {
    let s3 = [("AUDIT_LOGGER_TYPE", "S3_CURSOR"), ("S3_BUCKET", "b")];
    let e = cfg(&[
        s3[0],
        s3[1],
        ("S3_OUTPUT", "original"),
        ("ELASTICSEARCH_HOST", "es"),
    ])
    .unwrap_err()
    .0;
    assert!(e.contains("Elasticsearch needs JSON"), "{e}");
    let setup = cfg(&[s3[0], s3[1], ("SINK", "stdout")]).unwrap();
    assert!(setup.source().unwrap().traits().undated, "original lines");
    let setup = cfg(&[s3[0], s3[1], ("SINK", "file")]).unwrap();
    assert!(!setup.source().unwrap().traits().undated, "documents");
}
