//! Routing (issue #9 part 5): topics and routing keys from a message field, runs restricted with
//! ACCEPT_TOPICS / ACCEPT_ROUTING_KEYS, dated index name templates and the routed file layout,
//! on the three databases and osmem-server.

#[macro_use]
mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;

const T: &str = "audit_logs";

/// A message with `audit_event.topic` / `audit_event.source` where given.
fn routed(n: usize, topic: Option<Value>, source: Option<&str>) -> Value {
    let mut m = message(n);
    if let Some(t) = topic {
        m["audit_event"]["topic"] = t;
    }
    if let Some(s) = source {
        m["audit_event"]["source"] = json!(s);
    }
    m
}

fn routing_env(db: &TestDb, index_template: &str) -> Env {
    Env::es(db, index_template)
        .set("ROUTING_TOPIC_FIELD", "audit_event.topic")
        .set("ROUTING_KEY_FIELD", "audit_event.source")
}

/// Rows in `audit_transfer_failed_rows`: untouched rows must never be recorded there.
async fn failed_rows(db: &TestDb) -> i64 {
    db.scalar("SELECT COUNT(*) FROM audit_transfer_failed_rows")
        .await
}

async fn accept_lists_split_the_queue_between_runs(b: Backend) {
    skip_unless!(b, Need::Osmem);
    let db = TestDb::new(b).await;
    db.create_audit_table(T).await;
    let messages = vec![
        routed(0, Some(json!("generic")), Some("web")),
        routed(1, Some(json!("authfail")), Some("web")),
        routed(2, Some(json!("generic")), Some("api")),
        routed(3, Some(json!("authfail")), Some("api")),
        routed(4, None, None),
        // Only a string is a topic: a number means "none".
        routed(5, Some(json!(7)), Some("web")),
        routed(6, Some(json!("AuthFail")), Some("web")),
        // Byte for byte: MySQL's collations would take these for "authfail" and "generic".
        routed(7, Some(json!("authfail ")), Some("api")),
        routed(8, Some(json!("GENERIC")), None),
        // An empty topic is none.
        routed(9, Some(json!("")), None),
    ];
    db.insert_messages(T, &messages).await;
    if b == Backend::Sqlite {
        // A text column can hold anything: a broken row has no topic, and breaks no query.
        db.exec(&format!(
            "INSERT INTO {T} (message, created_at, is_sent) VALUES ('{{not json', '2024-05-01 10:00:30', 0)"
        ))
        .await;
    }
    let prefix = unique("route");
    let template = format!("{prefix}-{{topic}}-{{yyyy.MM.dd}}");

    // authfail from the api only.
    let run = routing_env(&db, &template)
        .set("ACCEPT_TOPICS", "authfail")
        .set("ACCEPT_ROUTING_KEYS", "api")
        .run(&["run"]);
    run.expect(0);
    assert_eq!(
        (run.n("selected"), run.n("marked")),
        (1, 1),
        "{}",
        run.stderr
    );
    let day = "2024.05.01";
    let docs = osmem().docs(&format!("{prefix}-authfail-{day}"));
    assert_eq!(docs.len(), 1);
    assert_eq!(docs[0].1["audit_event"]["actor"], "user3");
    assert_eq!(
        db.unsent(T).await,
        messages.len() as i64 - 1 + i64::from(b == Backend::Sqlite)
    );
    assert_eq!(
        failed_rows(&db).await,
        0,
        "rows of other runs are untouched"
    );

    // What a run with the same lists reports as its backlog: nothing left of its own.
    let status = routing_env(&db, &template)
        .set("ACCEPT_TOPICS", "authfail")
        .set("ACCEPT_ROUTING_KEYS", "api")
        .run(&["status", "--json"]);
    let report: Value = serde_json::from_str(&status.stdout)
        .unwrap_or_else(|e| panic!("status --json: {e}\n{}\n{}", status.stdout, status.stderr));
    assert_eq!(report["backlog"], 0, "{report}");
    assert_eq!(report["last_run"]["selected"], 1, "{report}");
    let selection_status = || {
        let run = routing_env(&db, &template)
            .set("ACCEPT_TOPICS", "authfail")
            .set("ACCEPT_ROUTING_KEYS", "api")
            .run(&["status", "--json"]);
        serde_json::from_str::<Value>(&run.stdout).unwrap()
    };

    // Every other authfail (topics are matched exactly: "AuthFail" is another topic).
    let run = routing_env(&db, &template)
        .set("ACCEPT_TOPICS", "authfail")
        .run(&["run"]);
    run.expect(0);
    assert_eq!(run.n("selected"), 1);
    assert_eq!(osmem().count(&format!("{prefix}-authfail-{day}")), 2);

    // generic, and the records without a topic, in one run.
    let run = routing_env(&db, &template)
        .set("ACCEPT_TOPICS", "generic,_none")
        .run(&["run"]);
    let none_index = format!("{prefix}-_none-{day}");
    if b == Backend::Sqlite {
        // The broken row is reported and kept, as without routing.
        run.expect(3);
        assert_eq!(run.n("rejected"), 1);
    } else {
        run.expect(0);
    }
    assert_eq!(osmem().count(&format!("{prefix}-generic-{day}")), 2);
    let mut none: Vec<String> = osmem()
        .docs(&none_index)
        .iter()
        .map(|(_, d)| d["audit_event"]["actor"].as_str().unwrap().to_string())
        .collect();
    none.sort();
    assert_eq!(none, ["user4", "user5", "user9"]);
    // The index name is lowercased; the topic in the document is not.
    let odd = osmem().docs(&format!("{prefix}-authfail-{day}"));
    assert_eq!(odd.len(), 2);
    assert_eq!(db.unsent(T).await, 3 + i64::from(b == Backend::Sqlite));

    // A run without lists takes the rest.
    let run = routing_env(&db, &template).run(&["run"]);
    assert_eq!(run.n("delivered"), 3, "{}", run.stderr);
    let docs = osmem().docs(&format!("{prefix}-authfail-{day}"));
    assert_eq!(docs.len(), 3);
    // "authfail " is its own topic: its index name keeps the space as '_'.
    assert_eq!(osmem().count(&format!("{prefix}-authfail_-{day}")), 1);
    assert!(docs
        .iter()
        .any(|(_, d)| d["audit_event"]["topic"] == "AuthFail"));
    // Each selection has its own run history: the later runs are not this selection's.
    let report = selection_status();
    assert_eq!(report["last_run"]["selected"], 1, "{report}");
    if b == Backend::Sqlite {
        // The broken row failed under `_none`: parked there (MAX_ATTEMPTS=1), not in another
        // selection's status.
        assert_eq!(report["parked"], 0, "{report}");
        let run = routing_env(&db, &template)
            .set("ACCEPT_TOPICS", "generic,_none")
            .set("MAX_ATTEMPTS", "1")
            .run(&["status", "--json"]);
        let none: Value = serde_json::from_str(&run.stdout).unwrap();
        assert_eq!(none["parked"], 1, "{none}");
    }
}

/// Two runs for different topics at the same time never claim each other's rows, so neither
/// passes over rows the other holds: each ships exactly its own in one run.
async fn runs_for_different_topics_at_once(b: Backend) {
    skip_unless!(b, Need::Osmem);
    let db = TestDb::new(b).await;
    db.create_audit_table(T).await;
    let n = 2000;
    let messages: Vec<Value> = (0..n)
        .map(|i| routed(i, Some(json!(if i % 2 == 0 { "a" } else { "b" })), None))
        .collect();
    db.insert_messages(T, &messages).await;
    let prefix = unique("both");
    let env = routing_env(&db, &format!("{prefix}-{{topic}}"))
        .set("CHUNK_SIZE", "50")
        .set("SINK_CONCURRENCY", "2");
    let a = env.clone().set("ACCEPT_TOPICS", "a").spawn(&["run"]);
    let b_run = env.set("ACCEPT_TOPICS", "b").spawn(&["run"]);
    for child in [a, b_run] {
        let run = Run::from(child.wait_with_output().unwrap());
        run.expect(0);
        assert_eq!(run.n("selected"), (n / 2) as u64, "{}", run.stderr);
        assert_eq!(run.n("delivered"), (n / 2) as u64);
    }
    assert_eq!(osmem().count(&format!("{prefix}-a")), (n / 2) as u64);
    assert_eq!(osmem().count(&format!("{prefix}-b")), (n / 2) as u64);
    let a_docs = osmem().docs(&format!("{prefix}-a"));
    assert!(a_docs.iter().all(|(_, d)| d["audit_event"]["topic"] == "a"));
    assert_eq!(db.unsent(T).await, 0);
}

/// `topic/routing-key/YYYY/mm/dd/HH/` files, each written once and replaced on a re-ship.
async fn routed_file_layout(b: Backend) {
    let db = TestDb::new(b).await;
    db.create_audit_table(T).await;
    let messages: Vec<Value> = (0..6)
        .map(|i| {
            let topic = ["generic", "authfail", "../../etc"][i % 3];
            routed(i, Some(json!(topic)), (i < 3).then_some("web"))
        })
        .collect();
    db.insert_messages(T, &messages).await;
    let out = tempfile::tempdir().unwrap();
    let env = Env::new()
        .set("DATABASE_URL", &db.url)
        .set("SINK", "file")
        .set("OUTPUT_PATH", out.path().to_str().unwrap())
        .set("OUTPUT_LAYOUT", "routed")
        .set("ROUTING_TOPIC_FIELD", "audit_event.topic")
        .set("ROUTING_KEY_FIELD", "audit_event.source");
    env.run(&["run"]).expect(0);
    let files = lines_by_dir(out.path());
    let expect: BTreeMap<String, usize> = [
        ("generic/web/2024/05/01/10", 1),
        ("generic/_none/2024/05/01/10", 1),
        ("authfail/web/2024/05/01/10", 1),
        ("authfail/_none/2024/05/01/10", 1),
        (".._.._etc/web/2024/05/01/10", 1),
        (".._.._etc/_none/2024/05/01/10", 1),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(files, expect);
    assert_eq!(db.unsent(T).await, 0);
}

/// Documents per directory (relative to `root`), from every `.jsonl` file under it.
fn lines_by_dir(root: &Path) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "jsonl") {
                let rel = dir
                    .strip_prefix(root)
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_string();
                let n = std::fs::read_to_string(&p).unwrap().lines().count();
                *out.entry(rel).or_insert(0) += n;
            }
        }
    }
    out
}

backend_tests!(
    postgres,
    Backend::Postgres,
    [
        accept_lists_split_the_queue_between_runs,
        runs_for_different_topics_at_once
    ]
);
backend_tests!(
    mysql,
    Backend::MySql,
    [
        accept_lists_split_the_queue_between_runs,
        runs_for_different_topics_at_once
    ]
);
backend_tests!(
    sqlite,
    Backend::Sqlite,
    [
        accept_lists_split_the_queue_between_runs,
        routed_file_layout
    ]
);

/// A PostgreSQL `json` column keeps escapes `jsonb` would refuse, and `json`'s operators fail a
/// whole statement on them: such a row has no topic, and the queue keeps moving.
#[tokio::test]
async fn postgres_json_column_with_escapes_text_cannot_hold() {
    skip_unless!(Need::Postgres, Need::Osmem);
    let db = TestDb::new(Backend::Postgres).await;
    db.exec(&format!(
        "CREATE TABLE {T} (id BIGSERIAL PRIMARY KEY, is_sent BOOLEAN NOT NULL DEFAULT false, \
         message JSON NOT NULL, created_at TIMESTAMPTZ NOT NULL DEFAULT now())"
    ))
    .await;
    let mut bad = routed(1, Some(json!("a")), None);
    bad["audit_event"]["note"] = json!("nul:\u{0}");
    let mut surrogate = routed(2, Some(json!("a")), None);
    surrogate["audit_event"]["note"] = json!("PLACEHOLDER");
    let rows = [
        routed(0, Some(json!("a")), None).to_string(),
        bad.to_string(),
        surrogate.to_string().replace("PLACEHOLDER", "\\ud800"),
        routed(3, Some(json!("a")), None).to_string(),
    ];
    db.insert_rows(
        T,
        rows.iter().enumerate().map(|(i, m)| {
            let at = chrono::DateTime::parse_from_rfc3339("2024-05-01T10:00:00Z").unwrap()
                + chrono::Duration::seconds(i as i64);
            (m.clone(), at, false)
        }),
    )
    .await;
    let prefix = unique("pgjson");
    let run = routing_env(&db, &format!("{prefix}-{{topic}}"))
        .set("ACCEPT_TOPICS", "a")
        .run(&["run"]);
    run.expect(0);
    assert_eq!(run.n("delivered"), 2, "{}", run.stderr);
    let actors: Vec<String> = osmem()
        .docs(&format!("{prefix}-a"))
        .iter()
        .map(|(_, d)| d["audit_event"]["actor"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(actors, ["user0", "user3"]);
    // The two rows read as "no topic": a run for those takes them.
    let run = routing_env(&db, &format!("{prefix}-{{topic}}"))
        .set("ACCEPT_TOPICS", "_none")
        .run(&["run"]);
    assert_eq!(run.n("selected"), 2, "{}", run.stderr);
}

#[tokio::test]
async fn init_index_creates_an_index_template_for_a_name_template() {
    skip_unless!(Need::Osmem);
    let db = TestDb::new(Backend::Sqlite).await;
    db.create_audit_table(T).await;
    db.insert_messages(T, &[routed(0, Some(json!("generic")), None)])
        .await;
    let prefix = unique("tpl");
    let env = routing_env(&db, &format!("{prefix}-{{topic}}-{{yyyy.MM}}"));
    let first = env.run(&["init-index"]);
    first.expect(0);
    let name = format!("audit-transfer-{prefix}-_-_");
    let got: Value = ureq::get(&format!("{}/_index_template/{name}", osmem().url))
        .call()
        .unwrap_or_else(|e| panic!("no index template {name}: {e}\n{}", first.stderr))
        .into_json()
        .unwrap();
    let t = &got["index_templates"][0]["index_template"];
    assert_eq!(t["index_patterns"], json!([format!("{prefix}-*-*")]));
    // Idempotent: a second call leaves it.
    let again = env.run(&["init-index"]);
    again.expect(0);
    assert!(
        again.log("exists; left as it is").is_some(),
        "{}",
        again.stderr
    );
    // The index the first document creates has the audit mapping.
    env.run(&["run"]).expect(0);
    let index = format!("{prefix}-generic-2024.05");
    let mapping = osmem().mapping(&index);
    assert_eq!(
        mapping[&index]["mappings"]["properties"]["audit_event"]["properties"]["operation"]["type"],
        "keyword",
        "{mapping}"
    );
}

#[tokio::test]
async fn routing_settings_are_checked() {
    skip_unless!(Need::Postgres, Need::Osmem);
    let db = TestDb::new(Backend::Postgres).await;
    // A text message column on PostgreSQL: routing would need a cast that can fail a page.
    db.exec(&format!(
        "CREATE TABLE {T} (id BIGSERIAL PRIMARY KEY, is_sent BOOLEAN NOT NULL DEFAULT false, \
         message TEXT NOT NULL, created_at TIMESTAMPTZ NOT NULL DEFAULT now())"
    ))
    .await;
    let run = routing_env(&db, "plain")
        .set("ACCEPT_TOPICS", "x")
        .run(&["run"]);
    run.expect(2);
    assert!(
        run.stderr.contains("json or jsonb") && run.stderr.contains("message"),
        "{}",
        run.stderr
    );
    let run = Env::es(&db, "plain")
        .set("ACCEPT_TOPICS", "x")
        .run(&["run"]);
    run.expect(2);
    assert!(run.stderr.contains("ROUTING_TOPIC_FIELD"), "{}", run.stderr);
    let run = Env::es(&db, "audit-{topik}").run(&["run"]);
    run.expect(2);
    assert!(
        run.stderr.contains("ELASTICSEARCH_APP_AUDIT_LOG_INDEX"),
        "{}",
        run.stderr
    );
}
