//! The OTLP/HTTP logs sink against a strict fake receiver (`common::fakes::otlp`), from a
//! SQLite table (no service needed): every record once with its uid, time and body; OTLP JSON
//! and gzip; a partial success narrowed down to the refused records; a busy receiver; a 400.

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
