//! The django-auditlog source against entries written by real Django + django-auditlog
//! (localtest/django_project), on PostgreSQL, MariaDB and SQLite, into osmem-server.

#[macro_use]
mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::process::Command;

const LOG: &str = "auditlog_logentry";

/// Runs the Django seed script; returns what each written entry's document must say, by id.
fn seed(db: &TestDb, args: &[&str]) -> BTreeMap<String, Value> {
    let python = python();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/localtest/django_project/seed.py"
    );
    let out = Command::new(&python)
        .arg(script)
        .args(args)
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python} (run the tests with `make test`): {e}"));
    assert!(
        out.status.success(),
        "seed.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("seed.py prints JSON")
}

fn env(db: &TestDb, index: &str) -> Env {
    Env::es(db, index)
        .set("AUDIT_LOGGER_TYPE", "DJANGO_AUDITLOG")
        .set("AUDIT_LOG_ORIGIN", "shop-service")
        .set("AUDIT_LOG_ENVIRONMENT", "test")
}

fn doc_of<'a>(docs: &'a [(String, Value)], id: &str) -> &'a Value {
    &docs
        .iter()
        .find(|(doc_id, _)| doc_id.starts_with(&format!("{id}-")))
        .unwrap_or_else(|| panic!("no document for entry {id}"))
        .1
}

async fn additional_data(db: &TestDb, id: &str) -> Option<Value> {
    let mut c = db.conn().await;
    let cast = match db.backend {
        Backend::Postgres => "additional_data::text",
        Backend::MySql => "CAST(additional_data AS CHAR)",
        Backend::Sqlite => "additional_data",
    };
    let row = sqlx::query(&format!("SELECT {cast} FROM {LOG} WHERE id = {id}"))
        .fetch_one(&mut c)
        .await
        .unwrap();
    // MariaDB's JSON is LONGTEXT, which the Any driver reports as a blob.
    let text: Option<String> = sqlx::Row::try_get::<Option<String>, _>(&row, 0)
        .or_else(|_| {
            sqlx::Row::try_get::<Option<Vec<u8>>, _>(&row, 0)
                .map(|b| b.map(|b| String::from_utf8(b).unwrap()))
        })
        .unwrap();
    text.map(|s| serde_json::from_str(&s).unwrap())
}

async fn documents_match_what_django_wrote(b: Backend) {
    skip_unless!(b, Need::Osmem, Need::Python("django"));
    let db = TestDb::new(b).await;
    let expected = seed(&db, &["mixed"]);
    assert_eq!(expected.len(), 5);
    let index = unique("dj");
    let run = env(&db, &index).run(&["run"]);
    run.expect(0);
    assert_eq!(run.n("delivered"), 5);
    let docs = osmem().docs(&index);
    assert_eq!(docs.len(), 5);
    let words = ["create", "update", "delete", "access"];
    for (id, want) in &expected {
        let doc = doc_of(&docs, id);
        let event = &doc["audit_event"];
        // The original's member order (readers diff `_source` on switching).
        let doc_id = &docs
            .iter()
            .find(|(d, _)| d.starts_with(&format!("{id}-")))
            .unwrap()
            .0;
        let text = osmem().source_text(&index, doc_id);
        let at = |key: &str| {
            text.find(&format!("\"{key}\":"))
                .unwrap_or_else(|| panic!("entry {id}: no {key} in {text}"))
        };
        let order = [
            "@timestamp",
            "audit_event",
            "actor",
            "date_time",
            "operation",
            "origin",
            "target",
            "environment",
            "message",
        ];
        assert!(
            order.windows(2).all(|w| at(w[0]) < at(w[1])),
            "entry {id}: {text}"
        );
        assert_eq!(doc["@timestamp"], want["timestamp"], "entry {id}");
        assert_eq!(event["date_time"], want["timestamp"], "entry {id}");
        assert_eq!(event["actor"], want["actor"], "entry {id}");
        assert_eq!(
            event["operation"],
            words[want["operation"].as_u64().unwrap() as usize],
            "entry {id}"
        );
        assert_eq!(event["origin"], "shop-service");
        assert_eq!(event["environment"], "test");
        assert_eq!(event["target"], want["target"], "entry {id}");
        match want["changes"].as_str() {
            None => assert!(event["message"].is_null(), "entry {id}: {event}"),
            Some(changes) => {
                // The message is JSON text (the documented mapping is text) with the same content.
                let got: Value =
                    serde_json::from_str(event["message"].as_str().expect("message is a string"))
                        .unwrap();
                assert_eq!(
                    got,
                    serde_json::from_str::<Value>(changes).unwrap(),
                    "entry {id}"
                );
            }
        }
        assert_eq!(
            doc.as_object().unwrap().len(),
            2,
            "only @timestamp and audit_event: {doc}"
        );
        // Marked, keeping the other keys of additional_data.
        assert_eq!(
            additional_data(&db, id).await.as_ref(),
            Some(&want["additional_data_after"]),
            "entry {id}"
        );
    }
    env(&db, &index).run(&[]).expect(0);
    assert_eq!(osmem().count(&index), 5);
}

async fn numeric_operations_for_existing_indexes(b: Backend) {
    skip_unless!(b, Need::Osmem, Need::Python("django"));
    let db = TestDb::new(b).await;
    let expected = seed(&db, &["mixed"]);
    let index = unique("dj");
    env(&db, &index)
        .set("AUDITLOG_OPERATION_FORMAT", "numeric")
        .run(&[])
        .expect(0);
    let docs = osmem().docs(&index);
    for (id, want) in &expected {
        assert_eq!(
            doc_of(&docs, id)["audit_event"]["operation"],
            want["operation"].to_string()
        );
    }
}

async fn chunk_and_limit(b: Backend) {
    skip_unless!(b, Need::Osmem, Need::Python("django"));
    let db = TestDb::new(b).await;
    seed(&db, &["bulk", "3"]);
    let index = unique("dj");
    let limited = env(&db, &index).set("BATCH_SIZE", "2").run(&[]);
    limited.expect(0);
    assert_eq!(limited.n("selected"), 2);
    assert_eq!(osmem().count(&index), 2);
    let index2 = unique("dj");
    let db2 = TestDb::new(b).await;
    seed(&db2, &["bulk", "3"]);
    let chunked = env(&db2, &index2).set("CHUNK_SIZE", "2").run(&[]);
    chunked.expect(0);
    assert_eq!(chunked.n("pages"), 2);
    assert_eq!(osmem().count(&index2), 3);
}

async fn monthly_keeps_unsent_entries_of_any_age(b: Backend) {
    skip_unless!(b, Need::Osmem, Need::Python("django"));
    let db = TestDb::new(b).await;
    seed(&db, &["mixed"]);
    let old = match b {
        Backend::Postgres => "now() - interval '40 days'",
        Backend::MySql => "UTC_TIMESTAMP(6) - INTERVAL 40 DAY",
        Backend::Sqlite => "strftime('%Y-%m-%d %H:%M:%f', 'now', '-40 days')",
    };
    db.exec(&format!("UPDATE {LOG} SET timestamp = {old} WHERE id <= 4"))
        .await;
    let set = |id: u32, v: &str| format!("UPDATE {LOG} SET additional_data = {v} WHERE id = {id}");
    db.exec(&set(1, r#"'{"is_sent": true, "ip_address": "192.0.2.1"}'"#))
        .await; // old, sent: deleted
    db.exec(&set(2, "NULL")).await; // old, never sent: kept
    db.exec(&set(3, r#"'{"ip_address": "192.0.2.3"}'"#)).await; // old, no is_sent key: kept (the original deleted it)
    db.exec(&set(4, r#"'{"is_sent": false}'"#)).await; // old, unsent: kept
    db.exec(&set(5, r#"'{"is_sent": true}'"#)).await; // sent but recent: kept
    let run = env(&db, "unused").run(&["monthly"]);
    run.expect(0);
    let remaining: i64 = db.scalar(&format!("SELECT COUNT(*) FROM {LOG}")).await;
    assert_eq!(remaining, 4);
    assert_eq!(
        db.scalar(&format!("SELECT COUNT(*) FROM {LOG} WHERE id = 1"))
            .await,
        0
    );
}

async fn overlapping_runs_ship_each_entry_once(b: Backend) {
    skip_unless!(b, Need::Osmem, Need::Python("django"));
    let db = TestDb::new(b).await;
    seed(&db, &["bulk", "40"]);
    let index = unique("dj");
    let e = env(&db, &index).set("CHUNK_SIZE", "5");
    let runs = e.run_at_once(2, &["run"]);
    for r in &runs {
        r.expect(0);
    }
    assert_eq!(runs.iter().map(|r| r.n("delivered")).sum::<u64>(), 40);
    assert_eq!(runs.iter().map(|r| r.n("already_present")).sum::<u64>(), 0);
    assert_eq!(osmem().count(&index), 40);
}

/// Routing on `additional_data`, where an application puts what it knows about the entry: a run
/// takes only the topics it accepts, marks them keeping their other keys, and leaves the rest
/// exactly as they were.
async fn accept_topics_from_additional_data(b: Backend) {
    skip_unless!(b, Need::Osmem, Need::Python("django"));
    let db = TestDb::new(b).await;
    let entries = seed(&db, &["bulk", "6"]);
    db.exec(&format!(
        "UPDATE {LOG} SET additional_data = '{{\"topic\": \"authfail\"}}' WHERE id % 2 = 0"
    ))
    .await;
    let index = unique("dj");
    let e = env(&db, &index).set("ROUTING_TOPIC_FIELD", "topic");
    let run = e.clone().set("ACCEPT_TOPICS", "authfail").run(&["run"]);
    run.expect(0);
    assert_eq!(run.n("delivered"), 3, "{}", run.stderr);
    for id in entries.keys() {
        let data = additional_data(&db, id).await;
        if id.parse::<i64>().unwrap() % 2 == 0 {
            assert_eq!(
                data,
                Some(json!({"topic": "authfail", "is_sent": true})),
                "{id}"
            );
        } else {
            assert!(
                data.as_ref().is_none_or(|d| d.get("is_sent").is_none()),
                "{id}: {data:?}"
            );
        }
    }
    let run = e.set("ACCEPT_TOPICS", "_none").run(&["run"]);
    run.expect(0);
    assert_eq!(run.n("delivered"), 3);
    assert_eq!(osmem().count(&index), 6);
}

async fn bad_user_table_and_bad_rows(b: Backend) {
    skip_unless!(b, Need::Osmem, Need::Python("django"));
    let db = TestDb::new(b).await;
    seed(&db, &["bulk", "3"]);
    let index = unique("dj");
    let wrong = env(&db, &index).set("USER_TABLE_NAME", "users").run(&[]);
    wrong.expect(2);
    assert!(wrong.stderr.contains("USER_TABLE_NAME"), "{}", wrong.stderr);
    assert_eq!(osmem().count(&index), 0);
    // An action django-auditlog does not define: that entry fails, the others go.
    db.exec(&format!("UPDATE {LOG} SET action = 9 WHERE id = 2"))
        .await;
    let run = env(&db, &index).run(&[]);
    run.expect(3);
    assert_eq!((run.n("delivered"), run.n("rejected")), (2, 1));
    assert!(run.stderr.contains("unknown action 9"), "{}", run.stderr);
    assert_eq!(
        additional_data(&db, "2").await,
        None,
        "the bad entry is not marked"
    );
}

backend_tests!(
    postgres,
    Backend::Postgres,
    [
        documents_match_what_django_wrote,
        numeric_operations_for_existing_indexes,
        chunk_and_limit,
        monthly_keeps_unsent_entries_of_any_age,
        overlapping_runs_ship_each_entry_once,
        bad_user_table_and_bad_rows,
        accept_topics_from_additional_data,
    ]
);

backend_tests!(
    mariadb,
    Backend::MySql,
    [
        documents_match_what_django_wrote,
        chunk_and_limit,
        monthly_keeps_unsent_entries_of_any_age,
        overlapping_runs_ship_each_entry_once,
        bad_user_table_and_bad_rows,
        accept_topics_from_additional_data,
    ]
);

backend_tests!(
    sqlite,
    Backend::Sqlite,
    [
        documents_match_what_django_wrote,
        monthly_keeps_unsent_entries_of_any_age,
        bad_user_table_and_bad_rows,
        accept_topics_from_additional_data,
    ]
);
