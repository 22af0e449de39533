//! Bad input: a corpus of messages no sink should receive as they are, and garbage in every
//! numeric variable. Each gets a clear error naming the row or variable, and nothing is lost.

#[macro_use]
mod common;

use common::*;
use serde_json::Value;

const T: &str = "audit_logs";

/// (message SQL literal or raw text, expected reason fragment; None = delivered).
fn corpus() -> Vec<(String, Option<&'static str>)> {
    let ts = r#""date_time": "2024-05-01T10:00:00Z""#;
    let deep = format!(
        "{{\"audit_event\": {{{ts}}}, \"x\": {}{}}}",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let big = format!(
        "{{\"audit_event\": {{{ts}, \"blob\": \"{}\"}}}}",
        "x".repeat(10 * 1024 * 1024)
    );
    vec![
        (
            r#"[1, 2, 3]"#.into(),
            Some("message is a JSON array, not an object"),
        ),
        (
            r#""just a string""#.into(),
            Some("message is a JSON string, not an object"),
        ),
        ("null".into(), Some("message is a JSON null, not an object")),
        ("{not json".into(), Some("message is not valid JSON")),
        (deep, Some("recursion limit exceeded")),
        (big, None),
        (
            r#"{"audit_event": {"actor": "no time"}}"#.into(),
            Some("message has no timestamp at audit_event.date_time"),
        ),
        (
            r#"{"audit_event": {"date_time": null}}"#.into(),
            Some("message has no timestamp at audit_event.date_time"),
        ),
        (
            r#"{"audit_event": {"date_time": ["2024"]}}"#.into(),
            Some("timestamp at audit_event.date_time is a JSON array"),
        ),
        (
            r#"{"audit_event": {"date_time": 1714557600000}}"#.into(),
            None,
        ),
        (
            r#"{"audit_event": {"date_time": "2999-01-01T00:00:00Z"}}"#.into(),
            None,
        ),
        // Duplicate keys: the last one wins, as in Elasticsearch's own parser.
        (
            r#"{"audit_event": {"date_time": "first", "date_time": "2024-05-01T11:00:00Z"}}"#
                .into(),
            None,
        ),
    ]
}

async fn corpus_is_reported_and_kept(b: Backend) {
    skip_unless!(b, Need::Osmem);
    let db = TestDb::new(b).await;
    // A text column, as some applications have: it can hold anything.
    db.exec(&match b {
        Backend::Postgres => format!("CREATE TABLE {T} (id BIGSERIAL PRIMARY KEY, is_sent BOOLEAN NOT NULL DEFAULT false, message TEXT, created_at TIMESTAMPTZ NOT NULL)"),
        Backend::MySql => format!("CREATE TABLE {T} (id BIGINT AUTO_INCREMENT PRIMARY KEY, is_sent TINYINT(1) NOT NULL DEFAULT 0, message LONGTEXT, created_at DATETIME(6) NOT NULL)"),
        Backend::Sqlite => format!("CREATE TABLE {T} (id INTEGER PRIMARY KEY AUTOINCREMENT, is_sent BOOL NOT NULL DEFAULT 0, message TEXT, created_at TEXT NOT NULL)"),
    })
    .await;
    let mut expected = corpus();
    let mut c = db.conn().await;
    for (i, (msg, _)) in expected.iter().enumerate() {
        let sql = format!(
            "INSERT INTO {T} (message, created_at) VALUES ({}, '2024-05-01 10:00:{:02}')",
            if b == Backend::Postgres { "$1" } else { "?" },
            i
        );
        sqlx::query(&sql)
            .bind(msg.clone())
            .execute(&mut c)
            .await
            .unwrap();
    }
    // NULL message; and, where the column allows it, bytes that are not UTF-8.
    db.exec(&format!(
        "INSERT INTO {T} (message, created_at) VALUES (NULL, '2024-05-01 10:01:00')"
    ))
    .await;
    expected.push(("NULL".into(), Some("message is NULL")));
    if b == Backend::Sqlite {
        db.exec(&format!("INSERT INTO {T} (message, created_at) VALUES (CAST(X'7B22FF22' AS TEXT), '2024-05-01 10:01:01')")).await;
        expected.push(("invalid UTF-8".into(), Some("message is not valid UTF-8")));
    }
    let index = unique("bad");
    // Mixed string and epoch timestamps: the mapping must not depend on which page lands first.
    osmem().create_dated_index(&index);
    let run = Env::es(&db, &index).set("CHUNK_SIZE", "4").run(&[]);
    run.expect(3);
    let good = expected.iter().filter(|(_, e)| e.is_none()).count();
    let bad = expected.len() - good;
    assert_eq!(
        (run.n("delivered") as usize, run.n("rejected") as usize),
        (good, bad),
        "{}",
        run.stderr
    );
    assert_eq!(osmem().count(&index) as usize, good);
    // Every bad row: reported once with its id and reason, still unsent, reason stored.
    for (i, (_, reason)) in expected.iter().enumerate() {
        let Some(reason) = reason else { continue };
        let id = i + 1;
        let line = run
            .stderr
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["record"].as_str() == Some(id.to_string().as_str()))
            .unwrap_or_else(|| panic!("row {id} ({reason}) not reported:\n{}", run.stderr));
        assert!(
            line["message"].as_str().unwrap().contains(reason),
            "row {id}: {line}"
        );
        let stored = db
            .scalar(&format!("SELECT COUNT(*) FROM audit_transfer_failed_rows WHERE row_id = {id} AND attempts = 1"))
            .await;
        assert_eq!(stored, 1, "row {id} has no failure record");
    }
    assert_eq!(db.unsent(T).await as usize, bad);
    // The duplicate-key row went out with the last value.
    let docs = osmem().docs(&index);
    assert!(docs
        .iter()
        .any(|(_, d)| d["@timestamp"] == "2024-05-01T11:00:00Z"));
    assert!(docs
        .iter()
        .any(|(_, d)| d["@timestamp"] == 1714557600000_i64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corpus_postgres() {
    corpus_is_reported_and_kept(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corpus_mariadb() {
    corpus_is_reported_and_kept(Backend::MySql).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corpus_sqlite() {
    corpus_is_reported_and_kept(Backend::Sqlite).await;
}

/// Every variable that .env.example documents with a numeric default rejects garbage with a
/// one-line error naming it, exit 2, before anything is touched.
#[test]
fn garbage_in_every_numeric_variable() {
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.env.example")).unwrap();
    let numeric: Vec<String> = example
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .filter(|(_, v)| !v.is_empty() && v.chars().all(|c| c.is_ascii_digit()))
        .map(|(k, _)| k.to_string())
        .collect();
    assert!(numeric.len() >= 10, "found only {numeric:?}");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    for var in &numeric {
        // Each variable is validated for the source and sink it belongs to.
        let mut env = Env::new()
            .set("DATABASE_URL", "sqlite:///nowhere.db")
            .set("ELASTICSEARCH_HOST", "127.0.0.1:1")
            .set("SINK", "elasticsearch");
        if var.starts_with("CASTAI_") {
            env = env
                .set("AUDIT_LOGGER_TYPE", "CASTAI")
                .set("CASTAI_API_KEY", "k")
                .set("CASTAI_STATE_FILE", state.to_str().unwrap());
        } else if var.starts_with("CATO_") {
            env = env
                .set("AUDIT_LOGGER_TYPE", "CATO")
                .set("CATO_API_KEY", "k")
                .set("CATO_ACCOUNT_ID", "4242")
                .set("CATO_FEED", "events")
                .set("CATO_STATE_FILE", state.to_str().unwrap());
        } else if var.starts_with("CDP_") {
            env = env
                .set("AUDIT_LOGGER_TYPE", "CDP_ARCHIVE")
                .set("CDP_ACCESS_TOKEN", "t");
        } else if var.starts_with("OUTPUT_") {
            env = env.set("SINK", "file");
        } else if var.starts_with("SPLUNK_") {
            env = env
                .set("SINK", "splunk")
                .set("SPLUNK_HEC_URL", "http://127.0.0.1:1")
                .set("SPLUNK_HEC_TOKEN", "t");
        } else if var.starts_with("KAFKA_") {
            env = env
                .set("SINK", "kafka")
                .set("KAFKA_BROKERS", "127.0.0.1:1")
                .set("KAFKA_TOPIC", "audit");
        } else if var.starts_with("OTEL_") {
            env = env.set("SINK", "otlp");
        } else if var.starts_with("S3_") {
            env = env
                .set("AUDIT_LOGGER_TYPE", "S3_CURSOR")
                .set("S3_BUCKET", "b");
        }
        for garbage in ["ten", "-1", "1.5", "9999999999999999999999"] {
            let run = env.clone().set(var, garbage).run(&["run"]);
            assert_eq!(run.code, 2, "{var}={garbage}: {}", run.stderr);
            assert_eq!(
                run.stderr.trim().lines().count(),
                1,
                "{var}={garbage}: {}",
                run.stderr
            );
            assert!(
                run.stderr.contains(var.as_str()),
                "{var}={garbage}: {}",
                run.stderr
            );
        }
    }
}
