//! The Splunk HEC sink against a strict fake HEC (`common::fakes::splunk`), from a SQLite
//! table (no service needed): delivery once per row, marking only after the ack, a withheld
//! ack, a refused event, a busy server, a wrong token.

#[macro_use]
mod common;

use common::fakes::splunk::{AckRule, FakeSplunk};
use common::*;
use std::collections::BTreeSet;

const T: &str = "audit_logs";
const TOKEN: &str = "0f1e2d3c-hec-token-s3cr3t";

async fn setup(rows: usize) -> TestDb {
    let db = TestDb::new(Backend::Sqlite).await;
    db.create_audit_table(T).await;
    let messages: Vec<_> = (0..rows).map(message).collect();
    db.insert_messages(T, &messages).await;
    db
}

fn env(db: &TestDb, fake: &FakeSplunk) -> Env {
    Env::new()
        .set("DATABASE_URL", &db.url)
        .set("SINK", "splunk")
        .set("SPLUNK_HEC_URL", &fake.url)
        .set("SPLUNK_HEC_TOKEN", TOKEN)
        .set("SPLUNK_RETRY_INITIAL_MS", "50")
        .set("SPLUNK_ACK_TIMEOUT_SECONDS", "10")
}

fn distinct(ids: &[String]) -> BTreeSet<String> {
    ids.iter().cloned().collect()
}

#[tokio::test]
async fn every_row_is_indexed_once_and_marked_after_its_ack() {
    skip_unless!(Backend::Sqlite);
    let db = setup(20).await;
    let fake = FakeSplunk::start(TOKEN, true);
    let run = env(&db, &fake)
        .set("CHUNK_SIZE", "7")
        .set("SPLUNK_INDEX", "audit")
        .run(&[]);
    run.expect(0);
    assert_eq!(
        (run.n("selected"), run.n("delivered"), run.n("marked")),
        (20, 20, 20)
    );
    assert_eq!(db.unsent(T).await, 0);
    let ids = fake.ids();
    assert_eq!(ids.len(), 20, "{ids:?}");
    assert_eq!(distinct(&ids).len(), 20);
    assert!(ids.contains(&"1-1714557600123456".to_string()), "{ids:?}");
    // The envelope: time from @timestamp in seconds, metadata, the document as the event.
    let first = fake
        .indexed()
        .into_iter()
        .find(|e| e.envelope["event"]["audit_event"]["actor"] == "user0")
        .unwrap()
        .envelope;
    assert_eq!(first["time"], serde_json::json!(1714557600));
    assert_eq!(first["sourcetype"], "_json");
    assert_eq!(first["index"], "audit");
    assert_eq!(first["event"]["@timestamp"], "2024-05-01T10:00:00.000Z");
    // One channel for the run, on every event request and ack query.
    let seen = fake.seen();
    let channels: BTreeSet<_> = seen.iter().map(|s| s.channel.clone()).collect();
    assert_eq!(channels.len(), 1, "{seen:?}");
    assert!(channels.iter().all(Option::is_some));
    assert!(seen.iter().any(|s| s.path.ends_with("/ack")));
    assert!(seen.iter().all(|s| s.status == 200), "{seen:?}");
    // Event bodies gzip-compressed by default (the fake gunzips them).
    assert!(seen
        .iter()
        .filter(|s| s.path.ends_with("/event"))
        .all(|s| s.gzip));
    // Nothing left to do.
    let again = env(&db, &fake).run(&[]);
    again.expect(0);
    assert_eq!(again.n("selected"), 0);
    assert_eq!(fake.ids().len(), 20);
}

#[tokio::test]
async fn a_late_ack_within_the_timeout_marks_the_rows() {
    skip_unless!(Backend::Sqlite);
    let db = setup(5).await;
    let fake = FakeSplunk::start(TOKEN, true);
    fake.ack_rule(AckRule::AfterQueries(3));
    let run = env(&db, &fake).run(&[]);
    run.expect(0);
    assert_eq!(run.n("marked"), 5);
    assert_eq!(db.unsent(T).await, 0);
    assert_eq!(fake.ids().len(), 5);
    let queries = fake
        .seen()
        .iter()
        .filter(|s| s.path.ends_with("/ack"))
        .count();
    assert!(queries >= 4, "{queries} ack queries");
}

#[tokio::test]
async fn an_ack_that_never_comes_marks_nothing_and_the_next_run_resends() {
    skip_unless!(Backend::Sqlite);
    let db = setup(5).await;
    let fake = FakeSplunk::start(TOKEN, true);
    fake.ack_rule(AckRule::Never);
    let run = env(&db, &fake)
        .set("SPLUNK_ACK_TIMEOUT_SECONDS", "1")
        .run(&[]);
    run.expect(1);
    assert!(
        run.stderr.contains("SPLUNK_ACK_TIMEOUT_SECONDS"),
        "{}",
        run.stderr
    );
    assert_eq!(db.unsent(T).await, 5);
    // Splunk did get the events; it only never confirmed them.
    let first_channel = fake.indexed()[0].channel.clone();
    assert_eq!(fake.ids().len(), 5);

    fake.release_acks();
    let run = env(&db, &fake).run(&[]);
    run.expect(0);
    assert_eq!(run.n("marked"), 5);
    assert_eq!(db.unsent(T).await, 0);
    let ids = fake.ids();
    // At least once: every row present, the resend findable by its id.
    assert_eq!(distinct(&ids).len(), 5);
    assert_eq!(ids.len(), 10);
    assert_ne!(
        fake.indexed()[5].channel,
        first_channel,
        "a channel per run"
    );
}

async fn refused_event_mid_batch(ack: bool) {
    let db = setup(5).await;
    let fake = FakeSplunk::start(TOKEN, ack);
    fake.reject_actor("user2");
    let run = env(&db, &fake)
        .set("SPLUNK_HEC_ACK", if ack { "true" } else { "false" })
        .run(&[]);
    run.expect(3);
    assert_eq!((run.n("delivered"), run.n("rejected")), (4, 1));
    assert_eq!(db.unsent(T).await, 1);
    let ids = fake.ids();
    let good: BTreeSet<String> = distinct(&ids);
    assert_eq!(good.len(), 4, "{ids:?}");
    assert!(!good.iter().any(|id| id.starts_with("3-")), "{ids:?}");
    if ack {
        // The two before it were processed but not confirmed: sent again, acked then.
        assert_eq!(ids.len(), 6, "{ids:?}");
    } else {
        assert_eq!(ids.len(), 4, "{ids:?}");
    }
    let line = run
        .stderr
        .lines()
        .find(|l| l.contains("Invalid data format"))
        .unwrap_or_else(|| panic!("no report:\n{}", run.stderr));
    assert!(line.contains("code 6"), "{line}");
}

#[tokio::test]
async fn an_event_refused_mid_batch_is_parked_and_the_rest_delivered() {
    skip_unless!(Backend::Sqlite);
    refused_event_mid_batch(false).await;
}

#[tokio::test]
async fn an_event_refused_mid_batch_with_acks_on() {
    skip_unless!(Backend::Sqlite);
    refused_event_mid_batch(true).await;
}

#[tokio::test]
async fn a_busy_server_is_retried() {
    skip_unless!(Backend::Sqlite);
    let db = setup(5).await;
    let fake = FakeSplunk::start(TOKEN, true);
    fake.busy(2);
    let start = std::time::Instant::now();
    let run = env(&db, &fake).run(&[]);
    run.expect(0);
    // Each 503 said Retry-After: 1; the backoff alone (from 50 ms) would be far shorter.
    assert!(start.elapsed() >= std::time::Duration::from_secs(2));
    assert_eq!(run.n("marked"), 5);
    assert_eq!(fake.ids().len(), 5);
    let busy = fake.seen().iter().filter(|s| s.status == 503).count();
    assert_eq!(busy, 2);
}

#[tokio::test]
async fn a_wrong_token_fails_naming_the_variable_without_printing_it() {
    skip_unless!(Backend::Sqlite);
    let db = setup(3).await;
    let fake = FakeSplunk::start("the-right-token", true);
    let run = env(&db, &fake).run(&[]);
    run.expect(1);
    assert!(run.stderr.contains("SPLUNK_HEC_TOKEN"), "{}", run.stderr);
    assert!(run.stderr.contains("Invalid token"), "{}", run.stderr);
    assert!(!run.stderr.contains("hec-token-s3cr3t"), "{}", run.stderr);
    assert!(!run.stdout.contains("hec-token-s3cr3t"));
    assert_eq!(db.unsent(T).await, 3);
    assert!(fake.ids().is_empty());
    // Not retried.
    assert_eq!(fake.seen().len(), 1, "{:?}", fake.seen());
}

#[tokio::test]
async fn an_index_the_token_may_not_use_stops_the_run() {
    skip_unless!(Backend::Sqlite);
    let db = setup(3).await;
    let fake = FakeSplunk::start(TOKEN, true);
    let run = env(&db, &fake).set("SPLUNK_INDEX", "secret_stuff").run(&[]);
    run.expect(1);
    assert!(
        run.stderr.contains("Incorrect index") && run.stderr.contains("SPLUNK_INDEX"),
        "{}",
        run.stderr
    );
    // Not parked: the rows wait for a corrected setting.
    assert_eq!(db.unsent(T).await, 3);
    assert_eq!(fake.seen().len(), 1, "not retried: {:?}", fake.seen());
}

#[tokio::test]
async fn acks_expected_from_a_token_without_them_fail_and_mark_nothing() {
    skip_unless!(Backend::Sqlite);
    let db = setup(3).await;
    let fake = FakeSplunk::start(TOKEN, false);
    let run = env(&db, &fake).run(&[]);
    run.expect(2);
    assert!(
        run.stderr.contains("SPLUNK_HEC_ACK=false"),
        "{}",
        run.stderr
    );
    assert_eq!(db.unsent(T).await, 3);
    // With acks off, HTTP 200 is the acknowledgement. Plain JSON when asked.
    let run = env(&db, &fake)
        .set("SPLUNK_HEC_ACK", "false")
        .set("SPLUNK_COMPRESSION", "none")
        .run(&[]);
    run.expect(0);
    assert!(!fake.seen().last().unwrap().gzip);
    assert_eq!(db.unsent(T).await, 0);
    assert_eq!(distinct(&fake.ids()).len(), 3);
}

/// A certificate that does not verify fails at once, naming SPLUNK_CA_CERT; with the CA
/// there, the run gets past TLS (the front does not pass the token on: HEC asks for it).
#[tokio::test]
async fn a_certificate_that_does_not_verify_fails_at_once_naming_the_ca_variable() {
    skip_unless!(Backend::Sqlite, Need::Python("ssl"));
    let db = setup(3).await;
    let fake = FakeSplunk::start(TOKEN, true);
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = common::tls::private_ca(dir.path());
    let front = common::tls::tls_front(&cert, &key, &fake.url);
    let url = format!("https://127.0.0.1:{}", front.port);
    let run = env(&db, &fake).set("SPLUNK_HEC_URL", &url).run(&[]);
    run.expect(1);
    assert!(
        run.stderr.contains("certificate does not verify") && run.stderr.contains("SPLUNK_CA_CERT"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("retries"), "{}", run.stderr);
    assert!(fake.seen().is_empty());

    let trusted = env(&db, &fake)
        .set("SPLUNK_HEC_URL", &url)
        .set("SPLUNK_CA_CERT", &ca)
        .run(&[]);
    trusted.expect(1);
    assert!(
        trusted.stderr.contains("Token is required") && !trusted.stderr.contains("certificate"),
        "{}",
        trusted.stderr
    );
    assert_eq!(db.unsent(T).await, 3);
}

/// Server busy after part of a request: with acks off the processed events are not sent again;
/// with acks on nothing confirms them, so the whole request goes again.
async fn busy_midway(ack: bool) {
    let db = setup(5).await;
    let fake = FakeSplunk::start(TOKEN, ack);
    fake.busy_after(2);
    let run = env(&db, &fake)
        .set("SPLUNK_HEC_ACK", if ack { "true" } else { "false" })
        .run(&[]);
    run.expect(0);
    assert_eq!(run.n("marked"), 5);
    let ids = fake.ids();
    assert_eq!(distinct(&ids).len(), 5, "{ids:?}");
    assert_eq!(ids.len(), if ack { 7 } else { 5 }, "{ids:?}");
}

#[tokio::test]
async fn busy_midway_without_acks_resends_only_the_rest() {
    skip_unless!(Backend::Sqlite);
    busy_midway(false).await;
}

#[tokio::test]
async fn busy_midway_with_acks_resends_the_request() {
    skip_unless!(Backend::Sqlite);
    busy_midway(true).await;
}

#[tokio::test]
async fn check_proves_the_token_without_storing_anything() {
    skip_unless!(Backend::Sqlite);
    let db = setup(1).await;
    let fake = FakeSplunk::start(TOKEN, true);
    env(&db, &fake).run(&["check"]).expect(0);
    let wrong = env(&db, &fake)
        .set("SPLUNK_HEC_TOKEN", "not-the-token")
        .run(&["check"]);
    wrong.expect(1);
    assert!(
        wrong.stderr.contains("SPLUNK_HEC_TOKEN"),
        "{}",
        wrong.stderr
    );
    assert!(!wrong.stderr.contains("not-the-token"), "{}", wrong.stderr);
    assert!(fake.ids().is_empty());
    assert_eq!(db.unsent(T).await, 1);
}

/// Spec: a crash between the ack reading true and the mark causes a resend, never a loss.
#[tokio::test]
async fn killed_after_the_ack_before_the_mark_resends_that_page() {
    skip_unless!(Backend::Sqlite);
    let db = setup(6).await;
    let fake = FakeSplunk::start(TOKEN, true);
    let paused = env(&db, &fake)
        .set("CHUNK_SIZE", "3")
        .set("SINK_CONCURRENCY", "1")
        .paused_at("after_ship", 1, &[]);
    paused.kill();
    let first = fake.ids();
    assert_eq!(first.len(), 3, "{first:?}");
    assert_eq!(db.unsent(T).await, 6);

    let run = env(&db, &fake).run(&[]);
    run.expect(0);
    assert_eq!(db.unsent(T).await, 0);
    let ids = fake.ids();
    assert_eq!(distinct(&ids).len(), 6, "{ids:?}");
    assert_eq!(ids.len(), 9, "the killed page again: {ids:?}");
}
