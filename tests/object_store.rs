//! The file sink into an S3 bucket (moto's server, credentials enforced; tests/common/s3.rs):
//! PostgreSQL rows in every layout exactly once, a kill between upload and mark, refused
//! credentials and a missing bucket.

#[macro_use]
mod common;

use common::s3::moto;
use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Read;

const T: &str = "audit_logs";

async fn table(rows: usize) -> TestDb {
    let db = TestDb::new(Backend::Postgres).await;
    db.create_audit_table(T).await;
    db.insert_messages(T, &(0..rows).map(message).collect::<Vec<_>>())
        .await;
    db
}

fn s3_env(db: &TestDb, prefix: &str) -> Env {
    Env::new()
        .set("DATABASE_URL", &db.url)
        .into_moto(prefix)
        .set("CHUNK_SIZE", "5")
        .set("SINK_CONCURRENCY", "1")
}

/// The documents of an object, unpacked when it is gzip.
fn documents(key: &str) -> Vec<Value> {
    let bytes = moto().get(key);
    let mut text = String::new();
    if key.ends_with(".gz") {
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_string(&mut text)
            .unwrap_or_else(|e| panic!("{key} is not gzip: {e}"));
    } else {
        text = String::from_utf8(bytes).unwrap();
    }
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// How often each actor occurs across all objects under `prefix`.
fn actors(prefix: &str) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for key in moto().list(prefix) {
        for d in documents(&key) {
            let actor = d["audit_event"]["actor"].as_str().unwrap().to_string();
            *seen.entry(actor).or_insert(0) += 1;
        }
    }
    seen
}

fn exactly_once(prefix: &str, rows: usize) {
    let seen = actors(prefix);
    let expected: BTreeMap<String, usize> = (0..rows).map(|n| (format!("user{n}"), 1)).collect();
    assert_eq!(seen, expected, "objects: {:?}", moto().list(prefix));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_rows_into_s3_in_every_layout_exactly_once() {
    skip_unless!(Need::Postgres, Need::Python("moto"));
    let rows = 12;
    let db = table(rows).await;
    // `check` lists the prefix: bucket and credentials are fine.
    s3_env(&db, "archive").run(&["check"]).expect(0);
    // Rows are one second apart from 2024-05-01T10:00:00Z.
    for (layout, gzip, folder) in [
        ("pages", "true", ""),
        ("pages", "false", ""),
        ("dated", "true", "dt=2024-05-01/"),
        ("routed", "true", "_none/_none/2024/05/01/10/"),
    ] {
        let prefix = format!("archive/{}", unique(layout));
        let run = s3_env(&db, &prefix)
            .set("OUTPUT_LAYOUT", layout)
            .set("OUTPUT_GZIP", gzip)
            .run(&["run"]);
        run.expect(0);
        assert_eq!((run.n("delivered"), run.n("marked")), (12, 12), "{layout}");
        let keys = moto().list(&prefix);
        assert_eq!(keys.len(), 3, "{layout}: one object per page: {keys:?}");
        let ext = if gzip == "true" {
            ".jsonl.gz"
        } else {
            ".jsonl"
        };
        for key in &keys {
            let name = key
                .strip_prefix(&format!("{prefix}/{folder}"))
                .unwrap_or_else(|| panic!("{layout}: {key}"));
            assert!(name.starts_with("audit_") && name.ends_with(ext), "{key}");
        }
        exactly_once(&prefix, rows);
        assert_eq!(db.unsent(T).await, 0);
        db.exec(&format!("UPDATE {T} SET is_sent = false")).await;
    }
}

/// Killed after the upload, before the mark: the re-run finds its own object, counts the page as
/// already present and writes no second copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_between_upload_and_mark_leaves_one_object_per_page() {
    skip_unless!(Need::Postgres, Need::Python("moto"));
    let rows = 12;
    let db = table(rows).await;
    let prefix = format!("archive/{}", unique("crash"));
    let env = s3_env(&db, &prefix);
    let paused = env.clone().paused_at("after_ship", 1, &["run"]);
    paused.kill();
    assert_eq!(moto().list(&prefix).len(), 1, "the first page was uploaded");
    assert_eq!(db.unsent(T).await, rows as i64, "and not marked");

    let run = env.run(&["run"]);
    run.expect(0);
    assert_eq!((run.n("already_present"), run.n("delivered")), (5, 7));
    assert_eq!(moto().list(&prefix).len(), 3);
    exactly_once(&prefix, rows);
    assert_eq!(db.unsent(T).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_key_fails_the_run_naming_the_variable_and_marks_nothing() {
    skip_unless!(Need::Postgres, Need::Python("moto"));
    let db = table(3).await;
    let prefix = format!("archive/{}", unique("denied"));
    let env = s3_env(&db, &prefix)
        .set("AWS_SECRET_ACCESS_KEY", "wrong-sink-secret")
        .set("DEBUG", "true");
    for args in [&["run"][..], &["check"][..]] {
        let run = env.run(args);
        run.expect(1);
        assert!(
            run.stderr.contains("AWS_SECRET_ACCESS_KEY") && run.stderr.contains("access refused"),
            "{args:?}: {}",
            run.stderr
        );
        assert!(!run.stderr.contains("wrong-sink-secret"), "{}", run.stderr);
    }
    assert_eq!(db.unsent(T).await, 3);
    assert!(moto().list(&prefix).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_bucket_fails_the_run_naming_output_path() {
    skip_unless!(Need::Postgres, Need::Python("moto"));
    let db = table(3).await;
    let bucket = unique("nobucket").replace('_', "-");
    let env = s3_env(&db, "x").set("OUTPUT_PATH", &format!("s3://{bucket}/archive/"));
    for args in [&["run"][..], &["check"][..]] {
        let run = env.run(args);
        run.expect(1);
        assert!(
            run.stderr
                .contains(&format!("bucket {bucket} not found (OUTPUT_PATH)")),
            "{args:?}: {}",
            run.stderr
        );
    }
    assert_eq!(db.unsent(T).await, 3);
}

#[test]
fn retention_variables_are_refused_not_ignored() {
    for var in ["OUTPUT_RETENTION_DAYS", "OUTPUT_RETENTION_MODE"] {
        let run = Env::new()
            .set("DATABASE_URL", "sqlite:///nowhere.db")
            .set("SINK", "file")
            .set("OUTPUT_PATH", "s3://bucket/archive/")
            .set(var, "30")
            .run(&["run"]);
        run.expect(2);
        assert!(
            run.stderr.contains(var) && run.stderr.contains("default retention"),
            "{}",
            run.stderr
        );
    }
}

/// Azure without an account: a configuration error naming the variables, before anything runs.
#[test]
fn azure_without_an_account_names_the_variables() {
    let run = Env::new()
        .set("DATABASE_URL", "sqlite:///nowhere.db")
        .set("SINK", "file")
        .set("OUTPUT_PATH", "az://container/archive/")
        .run(&["run"]);
    run.expect(2);
    assert!(
        run.stderr.contains("OUTPUT_PATH") && run.stderr.contains("AZURE_STORAGE_ACCOUNT_NAME"),
        "{}",
        run.stderr
    );
}
