//! Nobody let in, nothing leaked: TLS to the sink is verified by default, database TLS works,
//! and no secret reaches the output of a failing run at any log level.

#[macro_use]
mod common;

use common::tls::{private_ca, tls_front};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_certificates_are_verified_unless_told_otherwise() {
    skip_unless!(Need::Osmem, Need::Python("ssl"));
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = private_ca(dir.path());
    let front = tls_front(&cert, &key, &osmem().url);
    let db = TestDb::new(Backend::Sqlite).await;
    db.create_audit_table("audit_logs").await;
    db.insert_messages("audit_logs", &[message(1), message(2)])
        .await;
    let index = unique("tls");
    let env = Env::es(&db, &index)
        .set("ELASTICSEARCH_SCHEME", "https")
        .set("ELASTICSEARCH_PORT", &front.port.to_string())
        .set("ELASTICSEARCH_MAX_RETRIES", "1");

    // Unknown issuer: refused, nothing marked.
    let refused = env.run(&[]);
    refused.expect(1);
    assert!(
        refused.stderr.to_lowercase().contains("certificate"),
        "{}",
        refused.stderr
    );
    assert_eq!(db.unsent("audit_logs").await, 2);
    env.run(&["check"]).expect(1);

    // Its CA named: accepted.
    let trusted = env.clone().set("ELASTICSEARCH_CA_CERT", &ca);
    trusted.run(&["check"]).expect(0);
    trusted.run(&[]).expect(0);
    assert_eq!(osmem().count(&index), 2);

    // The explicit opt-out works too, and says so.
    db.insert_messages("audit_logs", &[message(3)]).await;
    let insecure = env.clone().set("ELASTICSEARCH_INSECURE", "true").run(&[]);
    insecure.expect(0);
    assert!(insecure.stderr.contains("ELASTICSEARCH_INSECURE=true"));
    assert_eq!(osmem().count(&index), 3);

    // A CA file that is not a certificate is a configuration error.
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let bad = env
        .clone()
        .set("ELASTICSEARCH_CA_CERT", junk.to_str().unwrap())
        .run(&[]);
    bad.expect(2);
    assert!(
        bad.stderr.contains("ELASTICSEARCH_CA_CERT"),
        "{}",
        bad.stderr
    );
}

/// Issue 14 (6): a certificate that does not verify will not verify on a retry either: every
/// command that reaches the sink fails at once (default retry settings), naming the fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_fails_at_once_naming_the_fix() {
    skip_unless!(Need::Osmem, Need::Python("ssl"));
    let dir = tempfile::tempdir().unwrap();
    let (_ca, cert, key) = private_ca(dir.path());
    let front = tls_front(&cert, &key, &osmem().url);
    let db = TestDb::new(Backend::Sqlite).await;
    db.create_audit_table("audit_logs").await;
    db.insert_messages("audit_logs", &[message(1)]).await;
    let env = Env::es(&db, &unique("tls"))
        .set("ELASTICSEARCH_SCHEME", "https")
        .set("ELASTICSEARCH_PORT", &front.port.to_string())
        // The defaults: 8 retries from 500 ms would take up to ~128 s.
        .set("ELASTICSEARCH_RETRY_INITIAL_MS", "500")
        .set("ELASTICSEARCH_MAX_RETRIES", "8");
    let create = env.clone().set("ELASTICSEARCH_CREATE_INDEX", "true");
    for (env, args) in [
        (&env, &[][..]),
        (&create, &[][..]),
        (&env, &["check"][..]),
        (&env, &["init-index"][..]),
    ] {
        let start = std::time::Instant::now();
        let run = env.run(args);
        run.expect(1);
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "{args:?} took {:?}",
            start.elapsed()
        );
        assert!(
            run.stderr.contains("certificate")
                && run.stderr.contains("ELASTICSEARCH_CA_CERT")
                && run.stderr.contains("ELASTICSEARCH_INSECURE=true"),
            "{args:?}: {}",
            run.stderr
        );
        assert!(!run.stderr.contains("retrying"), "{}", run.stderr);
    }
    assert_eq!(db.unsent("audit_logs").await, 1);
}

/// Issue 14 (8): the warning about ELASTICSEARCH_INSECURE is logged once per run, however many
/// clients the run uses (index creation, several workers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_insecure_warning_is_logged_once() {
    skip_unless!(Need::Osmem, Need::Python("ssl"), Need::Postgres);
    let dir = tempfile::tempdir().unwrap();
    let (_ca, cert, key) = private_ca(dir.path());
    let front = tls_front(&cert, &key, &osmem().url);
    let db = TestDb::new(Backend::Postgres).await;
    db.create_audit_table("audit_logs").await;
    db.insert_messages("audit_logs", &(1..=4).map(message).collect::<Vec<_>>())
        .await;
    let index = unique("insecure");
    let env = Env::es(&db, &index)
        .set("ELASTICSEARCH_SCHEME", "https")
        .set("ELASTICSEARCH_PORT", &front.port.to_string())
        .set("ELASTICSEARCH_INSECURE", "true")
        .set("ELASTICSEARCH_CREATE_INDEX", "true")
        .set("SINK_CONCURRENCY", "3")
        .set("CHUNK_SIZE", "1");
    for args in [&[][..], &["check"][..], &["init-index"][..]] {
        let run = env.run(args);
        run.expect(0);
        assert_eq!(
            run.stderr.matches("ELASTICSEARCH_INSECURE=true").count(),
            1,
            "{args:?}: {}",
            run.stderr
        );
    }
    assert_eq!(osmem().count(&index), 4);
}

/// Issue 14 (2): credentials in ELASTICSEARCH_HOST are refused, the value quoted without its
/// password, whatever the form.
#[test]
fn credentials_in_the_sink_host_are_refused_unprinted() {
    for (host, shown) in [
        (
            "http://elastic:es-host-secret@127.0.0.1:9200",
            "http://elastic:***@127.0.0.1:9200",
        ),
        (
            "elastic:es-host-secret@127.0.0.1:9200",
            "elastic:***@127.0.0.1:9200",
        ),
        (
            "http://:es-host-secret@127.0.0.1:9200",
            "http://:***@127.0.0.1:9200",
        ),
    ] {
        for format in ["text", "json"] {
            let run = Env::new()
                .set("LOG_FORMAT", format)
                .set("DATABASE_URL", "sqlite:///nonexistent/audit.sqlite3")
                .set("ELASTICSEARCH_HOST", host)
                .run(&["check"]);
            run.expect(2);
            assert!(
                run.stderr.contains("invalid ELASTICSEARCH_HOST") && run.stderr.contains(shown),
                "{host}: {}",
                run.stderr
            );
            assert!(!run.stderr.contains("es-host-secret"), "{}", run.stderr);
        }
    }
}

/// The local PostgreSQL has TLS enabled (Debian's default snakeoil certificate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_tls_against_postgres() {
    skip_unless!(Need::Postgres);
    let db = TestDb::new(Backend::Postgres).await;
    assert_eq!(
        db.scalar(
            "SELECT CAST(CASE WHEN current_setting('ssl') = 'on' THEN 1 ELSE 0 END AS BIGINT)"
        )
        .await,
        1,
        "this test needs PostgreSQL with ssl = on"
    );
    db.create_audit_table("audit_logs").await;
    db.insert_messages("audit_logs", &[message(1)]).await;
    let out = tempfile::tempdir().unwrap();
    let env = Env::new()
        .set("DATABASE_URL", &db.url.replace("127.0.0.1", "localhost"))
        .set("SINK", "file")
        .set("OUTPUT_PATH", out.path().to_str().unwrap())
        .set("DB_USE_SSL", "true");
    env.run(&["check"]).expect(0);
    // A CA that did not sign the server's certificate: the connection is refused.
    let (wrong_ca, _, _) = private_ca(out.path());
    let refused = env.clone().set("SSL_CA", &wrong_ca).run(&[]);
    refused.expect(1);
    assert!(
        refused.stderr.contains("cannot connect to the database"),
        "{}",
        refused.stderr
    );
    assert_eq!(db.unsent("audit_logs").await, 1);
    // Encrypted, unverified (DB_USE_SSL without SSL_CA), as the original's MySQL option did.
    env.run(&[]).expect(0);
    assert_eq!(db.unsent("audit_logs").await, 0);
}

/// Failing runs at debug level: no password, API key, private key or token in the output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_stay_out_of_failing_runs_at_debug_level() {
    skip_unless!(Need::Postgres);
    let db = TestDb::new(Backend::Postgres).await;
    db.create_audit_table("audit_logs").await;
    db.insert_messages("audit_logs", &[message(1)]).await;
    let url_with_password = db.url.replace("postgres@", "postgres:db-url-secret@");
    let cases = [
        Env::new()
            .set("DATABASE_URL", &url_with_password)
            .set("DATABASE_PASSWORD", "db-env-secret")
            .set("ELASTICSEARCH_HOST", "127.0.0.1:1")
            .set("ELASTICSEARCH_SCHEME", "http")
            .set("ELASTICSEARCH_USERNAME", "u")
            .set("ELASTICSEARCH_PASSWORD", "es-pw-secret")
            .set("ELASTICSEARCH_MAX_RETRIES", "0"),
        Env::new()
            .set("DATABASE_URL", &db.url)
            .set("ELASTICSEARCH_HOST", "127.0.0.1:1")
            .set("ELASTICSEARCH_SCHEME", "http")
            .set("ELASTICSEARCH_API_KEY", "keyid:es-apikey-secret")
            .set("ELASTICSEARCH_MAX_RETRIES", "0"),
        Env::new()
            .set("AUDIT_LOGGER_TYPE", "CASTAI")
            .set("CASTAI_API_KEY", "castai-key-secret")
            .set("CASTAI_API_URL", "http://127.0.0.1:1")
            .set("CASTAI_MAX_RETRIES", "0")
            .set("CASTAI_STATE_FILE", "/nonexistent-dir/state.json")
            .set("SINK", "stdout"),
        Env::new()
            .set("AUDIT_LOGGER_TYPE", "CATO")
            .set("CATO_API_KEY", "cato-key-secret")
            .set("CATO_ACCOUNT_ID", "4242")
            .set("CATO_FEED", "events")
            .set("CATO_API_URL", "http://127.0.0.1:1/api/v1/graphql2")
            .set("CATO_MAX_RETRIES", "0")
            .set("CATO_STATE_FILE", "/nonexistent-dir/state.json")
            .set("SINK", "stdout"),
        Env::new()
            .set("AUDIT_LOGGER_TYPE", "CDP_ARCHIVE")
            .set("CDP_ACCESS_KEY_ID", "key-id")
            .set(
                "CDP_PRIVATE_KEY",
                "VHswlNpwJnMpuXhIq7LYDfzs+R9pHvVLqgBGbhcnbSE=",
            )
            .set("CDP_ENDPOINT_URL", "http://127.0.0.1:1")
            .set("CDP_MAX_RETRIES", "0")
            .set("SINK", "stdout"),
        Env::new()
            .set("AUDIT_LOGGER_TYPE", "CDP_ARCHIVE")
            .set("CDP_ACCESS_TOKEN", "cdp-token-secret")
            .set("CDP_ENDPOINT_URL", "http://127.0.0.1:1")
            .set("CDP_MAX_RETRIES", "0")
            .set("SINK", "stdout"),
        Env::new()
            .set("DATABASE_URL", &db.url)
            .set("SINK", "splunk")
            .set("SPLUNK_HEC_URL", "http://127.0.0.1:1")
            .set("SPLUNK_HEC_TOKEN", "splunk-token-secret")
            .set("SPLUNK_MAX_RETRIES", "0"),
        // Refused at the broker: nothing listens there.
        Env::new()
            .set("DATABASE_URL", &db.url)
            .set("SINK", "kafka")
            .set("KAFKA_BROKERS", "127.0.0.1:1")
            .set("KAFKA_TOPIC", "audit")
            .set("KAFKA_SECURITY_PROTOCOL", "sasl_plaintext")
            .set("KAFKA_SASL_USERNAME", "audit")
            .set("KAFKA_SASL_PASSWORD", "kafka-pw-secret")
            .set(
                "KAFKA_PRODUCER_CONFIG",
                "ssl.key.password=kafka-keypw-secret",
            )
            .set("KAFKA_MESSAGE_TIMEOUT_MS", "500"),
        // Malformed: the password with the wrong protocol, a secret property beside a bad one.
        Env::new()
            .set("DATABASE_URL", &db.url)
            .set("SINK", "kafka")
            .set("KAFKA_BROKERS", "127.0.0.1:1")
            .set("KAFKA_TOPIC", "audit")
            .set("KAFKA_SASL_PASSWORD", "kafka-pw-secret"),
        Env::new()
            .set("DATABASE_URL", &db.url)
            .set("SINK", "kafka")
            .set("KAFKA_BROKERS", "127.0.0.1:1")
            .set("KAFKA_TOPIC", "audit")
            .set(
                "KAFKA_PRODUCER_CONFIG",
                "sasl.oauthbearer.client.secret=kafka-oidc-secret;linger.ms=soon",
            ),
        Env::new()
            .set("DATABASE_URL", &db.url)
            .set("SINK", "kafka")
            .set("KAFKA_BROKERS", "127.0.0.1:1")
            .set("KAFKA_TOPIC", "audit")
            .set(
                "KAFKA_PRODUCER_CONFIG",
                "ssl.key.password kafka-keypw-secret",
            ),
        // TARGETS: the same secrets under a target's prefix, one target down, one refused.
        Env::new()
            .set("DATABASE_URL", &db.url)
            .set("TARGETS", "siem,alerts")
            .set("TARGET_SIEM_SINK", "elasticsearch")
            .set("TARGET_SIEM_ELASTICSEARCH_HOST", "127.0.0.1:1")
            .set("TARGET_SIEM_ELASTICSEARCH_SCHEME", "http")
            .set("TARGET_SIEM_ELASTICSEARCH_USERNAME", "u")
            .set("TARGET_SIEM_ELASTICSEARCH_PASSWORD", "es-pw-secret")
            .set("TARGET_SIEM_ELASTICSEARCH_MAX_RETRIES", "0")
            .set("TARGET_ALERTS_SINK", "splunk")
            .set("TARGET_ALERTS_SPLUNK_HEC_URL", "http://127.0.0.1:1")
            .set("TARGET_ALERTS_SPLUNK_HEC_TOKEN", "splunk-token-secret")
            .set("TARGET_ALERTS_SPLUNK_MAX_RETRIES", "0"),
        // Malformed: the token is fine, a typo beside it is refused.
        Env::new()
            .set("DATABASE_URL", &db.url)
            .set("TARGETS", "alerts")
            .set("TARGET_ALERTS_SINK", "splunk")
            .set(
                "TARGET_ALERTS_SPLUNK_HEC_URL",
                "http://u:db-url-secret@127.0.0.1:1",
            )
            .set("TARGET_ALERTS_SPLUNK_HEC_TOKEN", "splunk-token-secret"),
        // INTEGRITY_SIGNING_KEY: a key that is not one (33 bytes of base64), and a good one
        // (the seed is the secret) on a run that fails at its sink.
        Env::new()
            .set("DATABASE_URL", &db.url)
            .set("SINK", "stdout")
            .set("INTEGRITY_CHAIN", "true")
            .set(
                "INTEGRITY_SIGNING_KEY",
                "aW50ZWdyaXR5LWtleS1zZWNyZXQtc2VjcmV0LXNlY3JldA==",
            ),
        Env::new()
            .set("DATABASE_URL", &db.url)
            .set("ELASTICSEARCH_HOST", "127.0.0.1:1")
            .set("ELASTICSEARCH_MAX_RETRIES", "0")
            .set("INTEGRITY_CHAIN", "true")
            .set(
                "INTEGRITY_SIGNING_KEY",
                "aW50ZWdyaXR5LWtleS1zZWNyZXQtc2VjcmV0LXNlY3I=",
            ),
    ];
    let secrets = [
        "aW50ZWdyaXR5LWtleS1zZWNyZXQtc2VjcmV0",
        "db-url-secret",
        "db-env-secret",
        "es-pw-secret",
        "es-apikey-secret",
        "castai-key-secret",
        "cato-key-secret",
        "VHswlNpwJnMpuXhIq7LYDfzs",
        "cdp-token-secret",
        "splunk-token-secret",
        "kafka-pw-secret",
        "kafka-keypw-secret",
        "kafka-oidc-secret",
    ];
    for env in cases {
        for format in ["text", "json"] {
            for args in [&["run"][..], &["check"][..]] {
                let run = env
                    .clone()
                    .set("DEBUG", "true")
                    .set("LOG_FORMAT", format)
                    .run(args);
                assert_ne!(run.code, 0, "{args:?} should fail: {}", run.stderr);
                for s in secrets {
                    assert!(
                        !run.stderr.contains(s) && !run.stdout.contains(s),
                        "{s} printed by {args:?}:\n{}",
                        run.stderr
                    );
                }
            }
        }
    }
}

/// Every URL variable, well-formed or not, with a password in it: no output at any level (ours
/// at trace, the libraries' at trace), in text or JSON, ever shows the password. URLs without a
/// proper authority are configuration errors, not a "default host".
#[test]
fn passwords_in_urls_are_never_printed_even_when_the_url_is_malformed() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let state = state.to_str().unwrap();
    let sqlite = format!("sqlite:///{}/none.db", dir.path().display());
    let base = |var: &str| -> Env {
        let env = Env::new()
            .set("SINK", "stdout")
            .set("DATABASE_URL", &sqlite)
            .set("ELASTICSEARCH_MAX_RETRIES", "0")
            .set("CASTAI_MAX_RETRIES", "0")
            .set("CATO_MAX_RETRIES", "0")
            .set("CDP_MAX_RETRIES", "0")
            .set("SPLUNK_MAX_RETRIES", "0");
        match var {
            "ELASTICSEARCH_HOST" => env.set("SINK", "elasticsearch"),
            "CDP_ENDPOINT_URL" => env
                .set("AUDIT_LOGGER_TYPE", "CDP_ARCHIVE")
                .set("CDP_ACCESS_TOKEN", "tok"),
            "S3_ENDPOINT" => env
                .set("AUDIT_LOGGER_TYPE", "S3_CURSOR")
                .set("S3_BUCKET", "b")
                .set("S3_CURSOR_FILE", state)
                .set("AWS_ACCESS_KEY_ID", "id")
                .set("AWS_SECRET_ACCESS_KEY", "aws-secret"),
            "SPLUNK_HEC_URL" => env.set("SINK", "splunk").set("SPLUNK_HEC_TOKEN", "tok"),
            "CASTAI_API_URL" => env
                .set("AUDIT_LOGGER_TYPE", "CASTAI")
                .set("CASTAI_API_KEY", "key")
                .set("CASTAI_STATE_FILE", state),
            "CATO_API_URL" => env
                .set("AUDIT_LOGGER_TYPE", "CATO")
                .set("CATO_API_KEY", "key")
                .set("CATO_ACCOUNT_ID", "4242")
                .set("CATO_FEED", "audit")
                .set("CATO_STATE_FILE", state),
            "OTEL_EXPORTER_OTLP_ENDPOINT" | "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT" => {
                env.set("SINK", "otlp")
            }
            "OUTPUT_PATH" => env.set("SINK", "file"),
            _ => env,
        }
    };
    let vars = [
        ("DATABASE_URL", "mysql"),
        ("DATABASE_URL", "postgres"),
        ("ELASTICSEARCH_HOST", "http"),
        ("CDP_ENDPOINT_URL", "https"),
        ("S3_ENDPOINT", "http"),
        ("CASTAI_API_URL", "https"),
        ("CATO_API_URL", "https"),
        ("SPLUNK_HEC_URL", "https"),
        ("METRICS_PUSHGATEWAY_URL", "http"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http"),
        ("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "http"),
        ("OUTPUT_PATH", "s3"),
    ];
    for (var, scheme) in vars {
        let forms = [
            format!("{scheme}://user:SECRETPW@127.0.0.1:1/db"),
            format!("{scheme}:/user:SECRETPW@127.0.0.1:1/db"),
            format!("{scheme}:user:SECRETPW@127.0.0.1:1/db"),
            format!("{scheme}:///user:SECRETPW@127.0.0.1:1/db"),
            format!("{scheme}://user:SECRETPW@/db"),
            "user:SECRETPW@127.0.0.1:1".to_string(),
            format!("{scheme}://user:SECRET/PW@127.0.0.1:1/db"),
        ];
        for value in &forms {
            for format in ["text", "json"] {
                for args in [&["check"][..], &["run"][..]] {
                    let run = base(var)
                        .set(var, value)
                        .set("LOG_FORMAT", format)
                        .set("DEBUG", "true")
                        .set("RUST_LOG", "trace")
                        .run(args);
                    let out = format!("{}{}", run.stdout, run.stderr);
                    assert!(
                        !out.contains("SECRETPW") && !out.contains("SECRET/PW"),
                        "{var}={value} {args:?} {format} printed the password:\n{out}"
                    );
                    // A database URL may carry its password; the other URL variables may not.
                    let well_formed = value.starts_with(&format!("{scheme}://user:SECRETPW@127"));
                    if var == "DATABASE_URL" && well_formed {
                        assert_eq!(run.code, 1, "{var}={value} {args:?}: {out}");
                        continue;
                    }
                    assert_eq!(run.code, 2, "{var}={value} {args:?}: {out}");
                    assert!(
                        out.contains(var),
                        "{var}={value}: the error names it: {out}"
                    );
                }
            }
        }
    }
}
