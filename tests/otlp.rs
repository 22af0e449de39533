//! The OTLP/HTTP logs sink against a strict fake receiver (`common::fakes::otlp`), from a
//! SQLite table (no service needed): every record once with its uid, time and body; OTLP JSON
//! and gzip; a partial success narrowed down to the refused records; a busy receiver; a 400;
//! TLS; a crash before the mark. Two checks by others' code: the official protobuf definitions
//! (PyPI `opentelemetry-proto`) decode every field, and a real receiver (rotel) takes it all.

#[macro_use]
mod common;

use common::fakes::otlp::FakeOtlp;
use common::*;
use std::collections::BTreeSet;

const T: &str = "audit_logs";

async fn setup(rows: usize) -> TestDb {
    let db = TestDb::new(Backend::Sqlite).await;
    db.create_audit_table(T).await;
    let messages: Vec<_> = (0..rows).map(message).collect();
    db.insert_messages(T, &messages).await;
    db
}

fn env(db: &TestDb, fake: &FakeOtlp) -> Env {
    Env::new()
        .set("DATABASE_URL", &db.url)
        .set("SINK", "otlp")
        .set("OTEL_EXPORTER_OTLP_ENDPOINT", &fake.url)
}

fn distinct(ids: &[String]) -> BTreeSet<String> {
    ids.iter().cloned().collect()
}

#[tokio::test]
async fn every_row_is_one_log_record_with_its_uid_time_and_body() {
    skip_unless!(Backend::Sqlite);
    let db = setup(20).await;
    let fake = FakeOtlp::start();
    let run = env(&db, &fake).set("CHUNK_SIZE", "7").run(&[]);
    run.expect(0);
    assert_eq!(
        (run.n("selected"), run.n("delivered"), run.n("marked")),
        (20, 20, 20)
    );
    assert_eq!(db.unsent(T).await, 0);
    let uids = fake.uids();
    assert_eq!(uids.len(), 20, "{uids:?}");
    assert_eq!(distinct(&uids).len(), 20);
    assert!(uids.contains(&"1-1714557600123456".to_string()), "{uids:?}");
    let first = fake
        .stored()
        .into_iter()
        .find(|s| s.body["audit_event"]["actor"] == "user0")
        .unwrap();
    assert_eq!(first.time_unix_nano, 1_714_557_600_000_000_000);
    assert_eq!(first.severity, (9, "INFO".to_string()));
    assert_eq!(first.body["@timestamp"], "2024-05-01T10:00:00.000Z");
    assert_eq!(first.body["audit_event"]["target"]["path"], "/records/0");
    assert_eq!(first.resource["service.name"], "audit-transfer");
    // One request per page, protobuf, not compressed by default.
    let seen = fake.seen();
    assert_eq!(
        seen.iter().map(|s| s.records).collect::<Vec<_>>(),
        [7, 7, 6]
    );
    assert!(seen
        .iter()
        .all(|s| s.content_type == "application/x-protobuf" && !s.gzip && s.status == 200));
    let again = env(&db, &fake).run(&[]);
    again.expect(0);
    assert_eq!(again.n("selected"), 0);
    assert_eq!(fake.uids().len(), 20);
}

#[tokio::test]
async fn otlp_json_gzip_headers_and_resource() {
    skip_unless!(Backend::Sqlite);
    let db = setup(5).await;
    let fake = FakeOtlp::start();
    fake.require_header("api-key", "k=s3cr3t-otlp-key");
    let run = env(&db, &fake)
        .set("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
        .set("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
        .set("OTEL_EXPORTER_OTLP_HEADERS", "api-key=k%3Ds3cr3t-otlp-key")
        .set("OTEL_SERVICE_NAME", "audit-prod")
        .set("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod")
        .set("DEBUG", "true")
        .run(&[]);
    run.expect(0);
    assert_eq!(run.n("marked"), 5);
    assert!(!run.stderr.contains("s3cr3t-otlp-key"), "{}", run.stderr);
    assert!(!run.stdout.contains("s3cr3t-otlp-key"));
    let seen = fake.seen();
    assert!(
        seen.iter()
            .all(|s| s.content_type == "application/json" && s.gzip && s.status == 200),
        "{seen:?}"
    );
    let stored = fake.stored();
    assert_eq!(distinct(&fake.uids()).len(), 5);
    assert_eq!(stored[0].resource["service.name"], "audit-prod");
    assert_eq!(stored[0].resource["deployment.environment"], "prod");
    assert_eq!(stored[0].time_unix_nano, 1_714_557_600_000_000_000);
    assert_eq!(stored[0].body["audit_event"]["operation"], "READ");
}

#[tokio::test]
async fn a_partial_success_parks_exactly_the_refused_records() {
    skip_unless!(Backend::Sqlite);
    let db = setup(8).await;
    let fake = FakeOtlp::start();
    fake.refuse_actor("user1");
    fake.refuse_actor("user6");
    let run = env(&db, &fake).run(&[]);
    run.expect(3);
    assert_eq!((run.n("delivered"), run.n("rejected")), (6, 2));
    assert_eq!(db.unsent(T).await, 2);
    let uids = distinct(&fake.uids());
    assert_eq!(uids.len(), 6, "{uids:?}");
    // Rows 2 and 7 carried user1 and user6.
    assert!(
        !uids
            .iter()
            .any(|u| u.starts_with("2-") || u.starts_with("7-")),
        "{uids:?}"
    );
    assert!(
        run.stderr.contains("records refused by policy"),
        "{}",
        run.stderr
    );
    // A rerun offers only the two refused rows again, never the delivered ones.
    let before = fake.seen().len();
    let again = env(&db, &fake).run(&[]);
    again.expect(3);
    assert_eq!(again.n("selected"), 2);
    let offered: usize = fake.seen()[before..].iter().map(|s| s.records).sum();
    assert_eq!(offered, 2);
    assert_eq!(distinct(&fake.uids()).len(), 6);
}

#[tokio::test]
async fn a_busy_receiver_is_retried_after_its_retry_after() {
    skip_unless!(Backend::Sqlite);
    let db = setup(5).await;
    let fake = FakeOtlp::start();
    fake.answer_next(503, Some(1));
    fake.answer_next(429, Some(1));
    let start = std::time::Instant::now();
    let run = env(&db, &fake).run(&[]);
    run.expect(0);
    assert!(start.elapsed() >= std::time::Duration::from_secs(2));
    assert_eq!(run.n("marked"), 5);
    assert_eq!(fake.uids().len(), 5);
    let statuses: Vec<u16> = fake.seen().iter().map(|s| s.status).collect();
    assert_eq!(statuses, [503, 429, 200]);
}

#[tokio::test]
async fn a_400_parks_the_page_and_marks_nothing() {
    skip_unless!(Backend::Sqlite);
    let db = setup(5).await;
    let fake = FakeOtlp::start();
    fake.answer_next(400, None);
    let run = env(&db, &fake).run(&[]);
    run.expect(3);
    assert_eq!((run.n("marked"), run.n("rejected")), (0, 5));
    assert_eq!(db.unsent(T).await, 5);
    assert!(fake.uids().is_empty());
    assert_eq!(fake.seen().len(), 1, "not retried: {:?}", fake.seen());
    assert!(run.stderr.contains("scripted failure"), "{}", run.stderr);
}

#[tokio::test]
async fn a_500_stops_the_run_unretried_and_marks_nothing() {
    skip_unless!(Backend::Sqlite);
    let db = setup(3).await;
    let fake = FakeOtlp::start();
    fake.answer_next(500, None);
    let run = env(&db, &fake).run(&[]);
    run.expect(1);
    assert_eq!(db.unsent(T).await, 3);
    assert_eq!(fake.seen().len(), 1, "not retried: {:?}", fake.seen());
}

#[tokio::test]
async fn a_413_splits_the_page_into_smaller_requests() {
    skip_unless!(Backend::Sqlite);
    let db = setup(10).await;
    let fake = FakeOtlp::start();
    fake.max_records(3);
    let run = env(&db, &fake).run(&[]);
    run.expect(0);
    assert_eq!(run.n("marked"), 10);
    let uids = fake.uids();
    assert_eq!((uids.len(), distinct(&uids).len()), (10, 10));
    let seen = fake.seen();
    assert!(seen.iter().any(|s| s.status == 413), "{seen:?}");
    assert!(seen
        .iter()
        .filter(|s| s.status == 200)
        .all(|s| s.records <= 3));
}

#[tokio::test]
async fn refused_credentials_stop_the_run_naming_the_variable_without_printing_it() {
    skip_unless!(Backend::Sqlite);
    let db = setup(3).await;
    let fake = FakeOtlp::start();
    fake.require_header("api-key", "the-right-key");
    let run = env(&db, &fake)
        .set("OTEL_EXPORTER_OTLP_HEADERS", "api-key=wr0ng-otlp-key")
        .run(&[]);
    run.expect(1);
    assert!(
        run.stderr.contains("OTEL_EXPORTER_OTLP_HEADERS"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("wr0ng-otlp-key"), "{}", run.stderr);
    assert_eq!(db.unsent(T).await, 3);
    assert_eq!(fake.seen().len(), 1, "not retried: {:?}", fake.seen());
}

#[tokio::test]
async fn check_sends_one_empty_request_and_grpc_is_refused() {
    skip_unless!(Backend::Sqlite);
    let db = setup(2).await;
    let fake = FakeOtlp::start();
    env(&db, &fake).run(&["check"]).expect(0);
    let seen = fake.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!((seen[0].records, seen[0].status), (0, 200));
    assert_eq!(db.unsent(T).await, 2);
    let run = env(&db, &fake)
        .set("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .run(&[]);
    run.expect(2);
    assert!(
        run.stderr.contains("OTEL_EXPORTER_OTLP_PROTOCOL"),
        "{}",
        run.stderr
    );
}

/// Every field of every record, decoded by the official OpenTelemetry definitions (PyPI
/// `opentelemetry-proto`, `common/otlp_decode.py`), not by the Rust types the job encodes with:
/// resource, scope, times, severity (the document's own where it states one), the body as a
/// kvlist with its types (int, double, bool, array, null as an unset value), the uid.
#[tokio::test]
async fn official_definitions_decode_every_field_of_every_record() {
    skip_unless!(Backend::Sqlite, Need::Python("opentelemetry.proto"));
    let db = TestDb::new(Backend::Sqlite).await;
    db.create_audit_table(T).await;
    let messages: Vec<_> = (0..9)
        .map(|n| {
            let mut m = message(n);
            m["audit_event"]["attempt"] = serde_json::json!(n);
            m["audit_event"]["score"] = serde_json::json!(n as f64 + 0.5);
            m["audit_event"]["ok"] = serde_json::json!(n % 2 == 0);
            m["audit_event"]["tags"] = serde_json::json!(["a", n, null]);
            m["audit_event"]["reason"] = serde_json::Value::Null;
            if n % 3 == 1 {
                m["level"] = serde_json::json!("warning");
            }
            m
        })
        .collect();
    db.insert_messages(T, &messages).await;
    let fake = FakeOtlp::start();
    let before = chrono::Utc::now().timestamp_nanos_opt().unwrap() as u64;
    let run = env(&db, &fake)
        .set("CHUNK_SIZE", "4")
        .set("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test")
        .run(&[]);
    run.expect(0);
    let after = chrono::Utc::now().timestamp_nanos_opt().unwrap() as u64;
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (i, body) in fake.protobuf_bodies().iter().enumerate() {
        let path = dir.path().join(format!("{i}.pb"));
        std::fs::write(&path, body).unwrap();
        files.push(path.to_str().unwrap().to_string());
    }
    assert_eq!(files.len(), 3);
    let out = std::process::Command::new(python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/common/otlp_decode.py"
        ))
        .args(&files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 9);
    let start = chrono::DateTime::parse_from_rfc3339("2024-05-01T10:00:00.123456Z").unwrap();
    for (n, r) in records.iter().enumerate() {
        let mut body = messages[n].clone();
        let date_time = format!("2024-05-01T10:00:{n:02}.000Z");
        body["@timestamp"] = serde_json::json!(date_time);
        let created_us = start.timestamp_micros() + n as i64 * 1_000_000;
        let warning = n % 3 == 1;
        let expected = serde_json::json!({
            "resource": {"service.name": "audit-transfer", "deployment.environment": "test"},
            "scope": {"name": "audit-transfer", "version": env!("CARGO_PKG_VERSION")},
            // @timestamp, from the message's date_time (10:00:nn.000).
            "time_unix_nano": (1_714_557_600 + n as u64) * 1_000_000_000,
            "severity_number": if warning { 13 } else { 9 },
            "severity_text": if warning { "warning" } else { "INFO" },
            "body": body,
            "attributes": {"log.record.uid": format!("{}-{created_us}", n + 1)},
            "dropped_attributes_count": 0,
            "flags": 0,
            "trace_id": "",
            "span_id": "",
            "event_name": "",
        });
        let observed = r["observed_time_unix_nano"].as_u64().unwrap();
        assert!((before..=after).contains(&observed), "observed {observed}");
        let mut got = r.clone();
        got.as_object_mut()
            .unwrap()
            .remove("observed_time_unix_nano");
        assert_eq!(got, expected, "record {n}");
    }
}

/// An https receiver signed by a private CA: refused at once naming the variable, then
/// delivered with OTEL_EXPORTER_OTLP_CERTIFICATE (and its logs-signal form).
#[tokio::test]
async fn a_private_ca_is_trusted_through_the_certificate_variable() {
    skip_unless!(Backend::Sqlite, Need::Python("ssl"));
    let db = setup(4).await;
    let fake = FakeOtlp::start();
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = common::tls::private_ca(dir.path());
    let front = common::tls::tls_front(&cert, &key, &fake.url);
    let url = format!("https://127.0.0.1:{}", front.port);
    let untrusted = env(&db, &fake)
        .set("OTEL_EXPORTER_OTLP_ENDPOINT", &url)
        .run(&[]);
    untrusted.expect(1);
    assert!(
        untrusted.stderr.contains("certificate does not verify")
            && untrusted.stderr.contains("OTEL_EXPORTER_OTLP_CERTIFICATE"),
        "{}",
        untrusted.stderr
    );
    assert!(fake.seen().is_empty());
    assert_eq!(db.unsent(T).await, 4);

    let trusted = env(&db, &fake)
        .set("OTEL_EXPORTER_OTLP_ENDPOINT", &url)
        .set("OTEL_EXPORTER_OTLP_LOGS_CERTIFICATE", &ca)
        .set(
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
            "/nonexistent/but/overridden.pem",
        )
        .run(&[]);
    trusted.expect(0);
    assert_eq!(db.unsent(T).await, 0);
    assert_eq!(distinct(&fake.uids()).len(), 4);
}

/// A client certificate whose key is not a key: one line naming both variables, the key's
/// content never printed.
#[tokio::test]
async fn a_broken_client_key_is_named_without_printing_it() {
    skip_unless!(Backend::Sqlite);
    let db = setup(1).await;
    let fake = FakeOtlp::start();
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("client.pem");
    let key = dir.path().join("client.key");
    std::fs::write(
        &cert,
        "-----BEGIN CERTIFICATE-----\nnot-base64\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    std::fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\nsecret-key-material-77\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let run = env(&db, &fake)
        .set(
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
            cert.to_str().unwrap(),
        )
        .set("OTEL_EXPORTER_OTLP_CLIENT_KEY", key.to_str().unwrap())
        .set("RUST_LOG", "trace")
        .run(&[]);
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE")
            && run.stderr.contains("OTEL_EXPORTER_OTLP_CLIENT_KEY"),
        "{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("secret-key-material-77"),
        "{}",
        run.stderr
    );
    assert!(!run.stdout.contains("secret-key-material-77"));
    assert_eq!(db.unsent(T).await, 1);
    let half = env(&db, &fake)
        .set("OTEL_EXPORTER_OTLP_CLIENT_KEY", key.to_str().unwrap())
        .run(&["check"]);
    half.expect(2);
    assert!(half.stderr.contains("without its pair"), "{}", half.stderr);
}

/// A crash after the receiver's 200 and before the mark: the next run sends that page again,
/// with the same `log.record.uid` for receivers that drop duplicates; nothing is lost.
#[tokio::test]
async fn killed_after_the_answer_before_the_mark_resends_that_page() {
    skip_unless!(Backend::Sqlite);
    let db = setup(6).await;
    let fake = FakeOtlp::start();
    let paused = env(&db, &fake)
        .set("CHUNK_SIZE", "3")
        .set("SINK_CONCURRENCY", "1")
        .paused_at("after_ship", 1, &[]);
    paused.kill();
    let first = fake.uids();
    assert_eq!(first.len(), 3, "{first:?}");
    assert_eq!(db.unsent(T).await, 6);

    let run = env(&db, &fake).run(&[]);
    run.expect(0);
    assert_eq!(db.unsent(T).await, 0);
    let uids = fake.uids();
    assert_eq!(distinct(&uids).len(), 6, "{uids:?}");
    assert_eq!(uids.len(), 9, "the killed page again: {uids:?}");
    // The copies carry the uid of the first delivery.
    assert!(first
        .iter()
        .all(|u| uids.iter().filter(|x| *x == u).count() == 2));
}

/// rotel (PyPI), a separately written OpenTelemetry collector, killed when the test ends.
struct Rotel {
    child: std::process::Child,
    port: u16,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Rotel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Rotel {
    fn start() -> Rotel {
        let out = std::process::Command::new(python())
            .args([
                "-c",
                "import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), 'rotel-agent'))",
            ])
            .output()
            .unwrap();
        let agent = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("rotel.log");
        let file = std::fs::File::create(&log).unwrap();
        let (port, grpc) = (free_port(), free_port());
        let child = std::process::Command::new(&agent)
            .args(["start", "--exporter", "blackhole"])
            .args(["--otlp-http-endpoint", &format!("127.0.0.1:{port}")])
            .args(["--otlp-grpc-endpoint", &format!("127.0.0.1:{grpc}")])
            .args(["--debug-log", "logs", "--debug-log-verbosity", "detailed"])
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {agent}: {e}"));
        let rotel = Rotel {
            child,
            port,
            log,
            _dir: dir,
        };
        let start = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(30),
                "rotel did not listen: {}",
                rotel.output()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        rotel
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its debug log once it shows `records` log records (it prints after answering).
    fn wait_for(&self, records: usize) -> String {
        let start = std::time::Instant::now();
        loop {
            let out = self.output();
            if out.matches("LogRecord #").count() >= records
                || start.elapsed() > std::time::Duration::from_secs(30)
            {
                return out;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

/// Smoke run against a real receiver: rotel accepts what we send as protobuf, gzip-compressed
/// protobuf and OTLP JSON, and its own decoding shows each record with its uid and body.
#[tokio::test]
async fn a_real_receiver_rotel_takes_protobuf_gzip_and_json() {
    skip_unless!(Backend::Sqlite, Need::Python("rotel"));
    let rotel = Rotel::start();
    let url = format!("http://127.0.0.1:{}", rotel.port);
    let modes = [
        ("http/protobuf", "none", 5),
        ("http/protobuf", "gzip", 6),
        ("http/json", "none", 7),
    ];
    let mut total = 0;
    for (protocol, compression, rows) in modes {
        let db = setup(rows).await;
        let run = Env::new()
            .set("DATABASE_URL", &db.url)
            .set("SINK", "otlp")
            .set("OTEL_EXPORTER_OTLP_ENDPOINT", &url)
            .set("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
            .set("OTEL_EXPORTER_OTLP_COMPRESSION", compression)
            .set("CHUNK_SIZE", "4")
            .run(&[]);
        run.expect(0);
        assert_eq!(run.n("marked"), rows as u64, "{protocol} {compression}");
        assert_eq!(db.unsent(T).await, 0);
        total += rows;
        let out = rotel.wait_for(total);
        assert_eq!(
            out.matches("LogRecord #").count(),
            total,
            "{protocol} {compression}: {out}"
        );
    }
    let out = rotel.output();
    assert_eq!(
        out.matches("-> log.record.uid: Str(").count(),
        total,
        "{out}"
    );
    assert!(
        out.contains("-> log.record.uid: Str(7-1714557606123456)"),
        "{out}"
    );
    // A structured body, not a JSON string, whichever the encoding.
    assert_eq!(out.matches("Body: Map(").count(), total, "{out}");
    assert!(out.contains("audit_event:Map(actor:Str(user6)"), "{out}");
    assert!(
        out.contains("@timestamp:Str(2024-05-01T10:00:06.000Z)"),
        "{out}"
    );
}
