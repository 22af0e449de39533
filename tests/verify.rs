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
    // The archive was set up after the run: it holds none of the rows, the index all of them.
    let run = env.run(&["verify"]);
    run.expect(1);
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
            .contains("5 checked by content, 5 missing, 0 unexpected"),
        "{}",
        run.stdout
    );
}

async fn files_are_checked_by_content(b: Backend) {
    skip_unless!(b);
    let db = TestDb::new(b).await;
    db.create_audit_table(T).await;
    let messages: Vec<Value> = (0..12).map(message).collect();
    db.insert_messages(T, &messages).await;
    let dir = tempfile::tempdir().unwrap();
    let env = Env::new()
        .set("DATABASE_URL", &db.url)
        .set("SINK", "file")
        .set("OUTPUT_PATH", dir.path().to_str().unwrap())
        .set("CHUNK_SIZE", "5");
    env.run(&["run"]).expect(0);
    let clean = env.run(&["verify"]);
    clean.expect(0);
    assert!(
        clean
            .stdout
            .contains("12 checked by content, 0 missing, 0 unexpected"),
        "{}",
        clean.stdout
    );
    // One line deleted, one field of another changed, one forged line added.
    let files = archive_lines(dir.path());
    assert_eq!(files.len(), 3);
    let (p0, mut l0) = files[0].clone();
    let removed: Value = serde_json::from_str(&l0.remove(1)).unwrap();
    std::fs::write(&p0, l0.join("\n") + "\n").unwrap();
    let (p1, mut l1) = files[1].clone();
    let mut changed: Value = serde_json::from_str(&l1[0]).unwrap();
    let changed_actor = changed["audit_event"]["actor"]
        .as_str()
        .unwrap()
        .to_string();
    changed["audit_event"]["actor"] = json!("someone else");
    l1[0] = changed.to_string();
    let mut forged = changed.clone();
    forged["audit_event"]["actor"] = json!("forger");
    l1.push(forged.to_string());
    std::fs::write(&p1, l1.join("\n") + "\n").unwrap();
    let run = env.run(&["verify", "--json"]);
    run.expect(1);
    let json = report(&run);
    let d = &json["destinations"][0];
    assert_eq!(
        (
            d["checked"].as_u64(),
            d["missing"].as_u64(),
            d["unexpected"].as_u64()
        ),
        (Some(12), Some(2), Some(2)),
        "{json}"
    );
    // The missing records are named by row (actor userN is row N + 1).
    let rows: Vec<String> = d["missing_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["record"].as_str().unwrap().to_string())
        .collect();
    let row_of =
        |actor: &str| (actor.trim_start_matches("user").parse::<u64>().unwrap() + 1).to_string();
    let mut want = vec![
        row_of(removed["audit_event"]["actor"].as_str().unwrap()),
        row_of(&changed_actor),
    ];
    want.sort();
    let mut rows = rows;
    rows.sort();
    assert_eq!(rows, want);
    let at = d["unexpected_at"].as_array().unwrap();
    assert!(
        at.iter().all(|a| a
            .as_str()
            .unwrap()
            .contains(p1.file_name().unwrap().to_str().unwrap())),
        "{at:?}"
    );
}

#[test]
fn buckets_are_checked_by_content() {
    skip_unless!(Need::Python("moto"), Need::Postgres);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(TestDb::new(Backend::Postgres));
    rt.block_on(db.create_audit_table(T));
    let messages: Vec<Value> = (0..9).map(message).collect();
    rt.block_on(db.insert_messages(T, &messages));
    let m = common::s3::moto();
    let prefix = unique("vfy");
    let env = Env::new()
        .set("DATABASE_URL", &db.url)
        .into_moto(&prefix)
        .set("CHUNK_SIZE", "4");
    env.run(&["run"]).expect(0);
    env.run(&["verify"]).expect(0);
    // An object replaced by one without its second line.
    let keys = m.list(&prefix);
    assert_eq!(keys.len(), 3, "{keys:?}");
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::GzDecoder::new(&m.get(&keys[0])[..]),
        &mut text,
    )
    .unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.remove(1);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, (lines.join("\n") + "\n").as_bytes()).unwrap();
    m.put(&keys[0], gz.finish().unwrap());
    let run = env.run(&["verify"]);
    run.expect(1);
    assert!(
        run.stdout
            .contains("9 checked by content, 1 missing, 0 unexpected"),
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
        targets_that_cannot_be_read_back_are_named,
        files_are_checked_by_content,
    ]
);
backend_tests!(mariadb, Backend::MySql, [tampering_is_named]);
backend_tests!(
    sqlite,
    Backend::Sqlite,
    [tampering_is_named, files_are_checked_by_content]
);

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
