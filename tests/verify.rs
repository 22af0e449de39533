//! `audit-transfer verify` (issue #19, part 1): the documents of the rows marked sent, read back
//! from osmem-server by id and compared with what the rows produce, on the three databases.

#[macro_use]
mod common;

use common::*;
use serde_json::{json, Value};

const T: &str = "audit_logs";

async fn sent(backend: Backend, rows: usize) -> (TestDb, String) {
    let db = TestDb::new(backend).await;
    db.create_audit_table(T).await;
    let messages: Vec<Value> = (0..rows).map(message).collect();
    db.insert_messages(T, &messages).await;
    let index = unique("vfy");
    Env::es(&db, &index)
        .set("CHUNK_SIZE", "7")
        .run(&["run"])
        .expect(0);
    (db, index)
}

/// The id and stored document of row `pk`.
fn doc_of(index: &str, pk: i64) -> (String, Value) {
    osmem()
        .docs(index)
        .into_iter()
        .find(|(id, _)| id.starts_with(&format!("{pk}-")))
        .unwrap_or_else(|| panic!("row {pk} not in {index}"))
}

fn report(run: &Run) -> Value {
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.stdout))
}

async fn tampering_is_named(b: Backend) {
    skip_unless!(b, Need::Osmem);
    let rows = 30;
    let (db, index) = sent(b, rows).await;
    let env = Env::es(&db, &index).set("CHUNK_SIZE", "7");
    let clean = env.run(&["verify"]);
    clean.expect(0);
    assert!(
        clean.stdout.contains("records marked sent: 30"),
        "{}",
        clean.stdout
    );
    assert!(
        clean.stdout.contains("30 checked, 0 missing, 0 altered"),
        "{}",
        clean.stdout
    );

    // In the destination: one document deleted, one field of another changed.
    let (gone, _) = doc_of(&index, 4);
    let (changed, mut doc) = doc_of(&index, 9);
    ureq::delete(&format!("{}/{index}/_doc/{gone}", osmem().url))
        .call()
        .unwrap();
    doc["audit_event"]["actor"] = json!("someone else");
    ureq::put(&format!(
        "{}/{index}/_doc/{changed}?refresh=true",
        osmem().url
    ))
    .send_json(doc)
    .unwrap();

    let run = env.run(&["verify"]);
    run.expect(1);
    assert!(
        run.stdout.contains(&format!("missing: {gone} (record 4)")),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains(&format!("altered: {changed} (record 9)")),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("NOT VERIFIED"));
    let r = env.run(&["verify", "--json"]);
    r.expect(1);
    let json = report(&r);
    assert_eq!(json["clean"], false);
    assert_eq!(json["records"], rows);
    let d = &json["destinations"][0];
    assert_eq!(
        (
            d["checked"].as_u64(),
            d["missing"].as_u64(),
            d["altered"].as_u64()
        ),
        (Some(30), Some(1), Some(1))
    );
    assert_eq!(d["missing_ids"][0]["id"], gone.as_str());
    assert_eq!(d["altered_ids"][0]["record"], "9");

    // A window: rows 5.. were created from 10:00:05 on (one second apart from 10:00:00.123456).
    let r = env.run(&["verify", "--json", "--since", "2024-05-01T10:00:05Z"]);
    r.expect(1);
    let late = report(&r);
    assert_eq!(
        (
            late["records"].as_u64(),
            late["destinations"][0]["missing"].as_u64()
        ),
        (Some(25), Some(0))
    );
    let early = env.run(&["verify", "--until", "2024-05-01T10:00:03Z"]);
    early.expect(0);
    assert!(
        early.stdout.contains("records marked sent: 3"),
        "{}",
        early.stdout
    );
    // Unsent rows are not the destination's business.
    db.insert_messages(T, &[message(99)]).await;
    let early = env.run(&["verify", "--until", "2024-05-01T10:00:03Z"]);
    early.expect(0);
    assert!(
        early.stdout.contains("records marked sent: 3 "),
        "{}",
        early.stdout
    );
    env.run(&[
        "verify",
        "--since",
        "2024-05-01T10:00:09Z",
        "--until",
        "2024-05-01T10:00:20Z",
    ])
    .expect(0);
    let bad = env.run(&["verify", "--since", "2024-05-02", "--until", "2024-05-01"]);
    bad.expect(2);
}

async fn a_table_without_a_key_is_read_in_one_pass(b: Backend) {
    skip_unless!(b, Need::Osmem);
    let db = TestDb::new(b).await;
    db.exec(&format!(
        "CREATE TABLE {T} (id BIGSERIAL NOT NULL, is_sent BOOLEAN NOT NULL DEFAULT false, \
         message JSONB NOT NULL, created_at TIMESTAMPTZ NOT NULL)"
    ))
    .await;
    let messages: Vec<Value> = (0..20).map(message).collect();
    db.insert_messages(T, &messages).await;
    let index = unique("vfy");
    let env = Env::es(&db, &index).set("CHUNK_SIZE", "3");
    env.run(&["run"]).expect(0);
    let run = env.run(&["verify", "--json"]);
    run.expect(0);
    let json = report(&run);
    assert_eq!(
        (
            json["records"].as_u64(),
            json["destinations"][0]["checked"].as_u64()
        ),
        (Some(20), Some(20))
    );
}

async fn targets_that_cannot_be_read_back_are_named(b: Backend) {
    skip_unless!(b, Need::Osmem);
    let (db, index) = sent(b, 5).await;
    let dir = tempfile::tempdir().unwrap();
    let os = osmem();
    let env = Env::new()
        .set("DATABASE_URL", &db.url)
        .set("TARGETS", "siem,archive")
        .set("TARGET_SIEM_SINK", "elasticsearch")
        .set("TARGET_SIEM_ELASTICSEARCH_HOST", "127.0.0.1")
        .set("TARGET_SIEM_ELASTICSEARCH_PORT", &os.port().to_string())
        .set("TARGET_SIEM_ELASTICSEARCH_SCHEME", "http")
        .set("TARGET_SIEM_ELASTICSEARCH_APP_AUDIT_LOG_INDEX", &index)
        .set("TARGET_ARCHIVE_SINK", "file")
        .set("TARGET_ARCHIVE_OUTPUT_PATH", dir.path().to_str().unwrap());
    let run = env.run(&["verify"]);
    run.expect(0);
    assert!(
        run.stdout.contains("target siem (elasticsearch:"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("5 checked, 0 missing, 0 altered"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("target archive (file:"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("not checked: verify cannot read documents back"),
        "{}",
        run.stdout
    );
}

backend_tests!(
    postgres,
    Backend::Postgres,
    [
        tampering_is_named,
        a_table_without_a_key_is_read_in_one_pass,
        targets_that_cannot_be_read_back_are_named
    ]
);
backend_tests!(mariadb, Backend::MySql, [tampering_is_named]);
backend_tests!(sqlite, Backend::Sqlite, [tampering_is_named]);

#[test]
fn verify_needs_a_source_that_keeps_what_it_sent() {
    let dir = tempfile::tempdir().unwrap();
    let run = Env::new()
        .set("LOG_FORMAT", "text")
        .set("AUDIT_LOGGER_TYPE", "CASTAI")
        .set("CASTAI_API_KEY", "k")
        .set(
            "CASTAI_STATE_FILE",
            dir.path().join("s.json").to_str().unwrap(),
        )
        .set("ELASTICSEARCH_HOST", "127.0.0.1:1")
        .run(&["verify"]);
    run.expect(2);
    assert!(
        run.stderr
            .contains("verify compares the destination with the rows of the SQL sources"),
        "{}",
        run.stderr
    );
    let bad = Env::new().run(&["verify", "--since", "yesterday"]);
    bad.expect(2);
    assert!(bad.stderr.contains("expected a time"), "{}", bad.stderr);
}
