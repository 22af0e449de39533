//! TARGETS (issue #18): one run, several destinations, each with its own accept lists. Real
//! databases, osmem-server (directly or behind the fault proxy), local files, and the strict
//! Splunk HEC fake as a third kind of sink. Every case ends by counting, per target, how often
//! each record arrived.

#[macro_use]
mod common;

use common::fakes::splunk::FakeSplunk;
use common::proxy::{Fault, Proxy};
use common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;

const T: &str = "audit_logs";
const TOKEN: &str = "hec-token-7f3a";
const TOPICS: [&str; 3] = ["generic", "authfail", "iam"];

/// `rows` messages; row n (from 0) has topic `TOPICS[n % 3]` and actor `user<n>`.
async fn setup(backend: Backend, rows: usize) -> TestDb {
    let db = TestDb::new(backend).await;
    db.create_audit_table(T).await;
    let messages: Vec<Value> = (0..rows)
        .map(|n| {
            let mut m = message(n);
            m["audit_event"]["topic"] = json!(TOPICS[n % 3]);
            m
        })
        .collect();
    db.insert_messages(T, &messages).await;
    db
}

/// The actors of rows with these topics among the first `rows`.
fn actors(rows: usize, topics: &[&str]) -> BTreeMap<String, usize> {
    (0..rows)
        .filter(|n| topics.contains(&TOPICS[n % 3]))
        .map(|n| (format!("user{n}"), 1))
        .collect()
}

/// Targets `siem` (Elasticsearch at `es_port`) and `archive` (files in `dir`).
fn two_targets(db: &TestDb, es_port: u16, index: &str, dir: &Path) -> Env {
    Env::new()
        .set("DATABASE_URL", &db.url)
        .set("ROUTING_TOPIC_FIELD", "audit_event.topic")
        .with_targets(es_port, index, dir)
}

trait WithTargets {
    fn with_targets(self, es_port: u16, index: &str, dir: &Path) -> Env;
}

impl WithTargets for Env {
    /// `siem` (Elasticsearch at `es_port`, one retry) and `archive` (files in `dir`).
    fn with_targets(self, es_port: u16, index: &str, dir: &Path) -> Env {
        self.set("TARGETS", "siem,archive")
            .set("TARGET_SIEM_SINK", "elasticsearch")
            .set("TARGET_SIEM_ELASTICSEARCH_HOST", "127.0.0.1")
            .set("TARGET_SIEM_ELASTICSEARCH_PORT", &es_port.to_string())
            .set("TARGET_SIEM_ELASTICSEARCH_SCHEME", "http")
            .set("TARGET_SIEM_ELASTICSEARCH_APP_AUDIT_LOG_INDEX", index)
            .set("TARGET_SIEM_ELASTICSEARCH_RETRY_INITIAL_MS", "20")
            .set("TARGET_SIEM_ELASTICSEARCH_MAX_RETRIES", "1")
            .set("TARGET_ARCHIVE_SINK", "file")
            .set("TARGET_ARCHIVE_OUTPUT_PATH", dir.to_str().unwrap())
    }
}

fn actor(doc: &Value) -> String {
    doc["audit_event"]["actor"].as_str().unwrap().to_string()
}

/// How often each value of `field` is in the JSON-lines files under `dir`.
fn file_values(dir: &Path, field: fn(&Value) -> String) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries {
        let p = e.unwrap().path();
        if p.is_dir() {
            for (k, v) in file_values(&p, field) {
                *out.entry(k).or_insert(0) += v;
            }
        } else if p.extension().is_some_and(|x| x == "jsonl") {
            for line in std::fs::read_to_string(&p).unwrap().lines() {
                *out.entry(field(&serde_json::from_str(line).unwrap()))
                    .or_insert(0) += 1;
            }
        }
    }
    out
}

fn file_actors(dir: &Path) -> BTreeMap<String, usize> {
    file_values(dir, actor)
}

/// How often each value of `field` is in the index.
fn index_values(index: &str, field: fn(&Value) -> String) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for (_, doc) in osmem().docs(index) {
        *out.entry(field(&doc)).or_insert(0) += 1;
    }
    out
}

fn index_actors(index: &str) -> BTreeMap<String, usize> {
    index_values(index, actor)
}

/// Rows whose fan-out is incomplete, as the source keeps them.
async fn held_rows(db: &TestDb) -> i64 {
    db.scalar("SELECT COUNT(*) FROM audit_transfer_target_rows")
        .await
}

/// The run's line for one target.
fn target_line(run: &Run, name: &str) -> Value {
    run.log(&format!("target {name} finished"))
        .unwrap_or_else(|| panic!("no line for target {name}:\n{}", run.stderr))
}

async fn each_topic_goes_to_the_targets_that_accept_it(b: Backend) {
    skip_unless!(b, Need::Osmem);
    let rows = 30;
    let db = setup(b, rows).await;
    let index = unique("tgt");
    let dir = tempfile::tempdir().unwrap();
    let splunk = FakeSplunk::start(TOKEN, true);
    // siem: generic and authfail; alerts: authfail; archive: generic. Nobody takes iam.
    let env = two_targets(&db, osmem().port(), &index, dir.path())
        .set("TARGETS", "siem,alerts,archive")
        .set("TARGET_SIEM_ACCEPT_TOPICS", "generic,authfail")
        .set("TARGET_ALERTS_SINK", "splunk")
        .set("TARGET_ALERTS_SPLUNK_HEC_URL", &splunk.url)
        .set("TARGET_ALERTS_SPLUNK_HEC_TOKEN", TOKEN)
        .set("TARGET_ALERTS_ACCEPT_TOPICS", "authfail")
        .set("TARGET_ARCHIVE_ACCEPT_TOPICS", "generic")
        .set("CHUNK_SIZE", "7")
        // One worker: on MariaDB a claim's scan can lock a row the other worker was handed,
        // which then waits for the next run (unsent, not lost); this test counts one run.
        .set("SINK_CONCURRENCY", "1");
    let run = env.run(&["run"]);
    run.expect(0);
    assert_eq!((run.n("selected"), run.n("marked")), (20, 20));
    assert_eq!(index_actors(&index), actors(rows, &["generic", "authfail"]));
    assert_eq!(file_actors(dir.path()), actors(rows, &["generic"]));
    let mut alerts = BTreeMap::new();
    for e in splunk.indexed() {
        let actor = e.envelope["event"]["audit_event"]["actor"]
            .as_str()
            .unwrap()
            .to_string();
        *alerts.entry(actor).or_insert(0) += 1;
    }
    assert_eq!(alerts, actors(rows, &["authfail"]));
    assert_eq!(target_line(&run, "alerts")["delivered"], 10);
    // Rows no target accepts are left as ACCEPT_* leaves them: unsent, never failed.
    assert_eq!(db.unsent(T).await, 10);
    assert_eq!(
        db.scalar("SELECT COUNT(*) FROM audit_transfer_failed_rows")
            .await,
        0
    );
    assert_eq!(held_rows(&db).await, 0, "complete fan-outs keep nothing");
    let again = env.run(&["run"]);
    again.expect(0);
    assert_eq!(again.n("selected"), 0);
}

async fn a_target_down_for_a_run_gets_exactly_the_missing_records_next_run(b: Backend) {
    skip_unless!(b, Need::Osmem);
    let rows = 23;
    let db = setup(b, rows).await;
    let index = unique("tgt");
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(&osmem().url);
    proxy.push(Fault::Status(503), 1000);
    let env = two_targets(&db, proxy.port, &index, dir.path()).set("CHUNK_SIZE", "5");
    let run = env.run(&["run"]);
    run.expect(3);
    // The archive took every record once; nothing is marked, since the SIEM lacks them all.
    assert_eq!(file_actors(dir.path()), actors(rows, &TOPICS));
    assert_eq!(osmem().count(&index), 0);
    assert_eq!(db.unsent(T).await, rows as i64);
    assert_eq!(held_rows(&db).await, rows as i64);
    let siem = target_line(&run, "siem");
    assert_eq!(
        (siem["lacking"].as_u64(), siem["down"].as_bool()),
        (Some(rows as u64), Some(true))
    );
    let status = env.run(&["status", "--json"]);
    status.expect(1);
    let report: Value = serde_json::from_str(&status.stdout).unwrap();
    // Targets in name order.
    let targets = &report["last_run"]["targets"];
    assert_eq!(targets[0]["name"], "archive", "{report}");
    assert_eq!(targets[0]["delivered"], rows);
    assert_eq!(targets[1]["lacking"], rows);
    assert_eq!(
        report["last_run"]["selected"], rows,
        "each record counted once"
    );
    assert!(report["problems"][0]
        .as_str()
        .unwrap()
        .contains("target siem lacks 23 record(s)"));

    // The SIEM is back: it gets each record once, the archive nothing again.
    let run = env
        .clone()
        .set(
            "TARGET_SIEM_ELASTICSEARCH_PORT",
            &osmem().port().to_string(),
        )
        .run(&["run"]);
    run.expect(0);
    assert_eq!(index_actors(&index), actors(rows, &TOPICS));
    assert_eq!(file_actors(dir.path()), actors(rows, &TOPICS));
    assert_eq!(target_line(&run, "archive")["delivered"], 0);
    assert_eq!(target_line(&run, "siem")["delivered"], rows);
    assert_eq!(db.unsent(T).await, 0);
    assert_eq!(held_rows(&db).await, 0);
    env.run(&["status"]).expect(0);
}

async fn the_file_target_down_for_a_run(b: Backend) {
    skip_unless!(b, Need::Osmem);
    let rows = 12;
    let db = setup(b, rows).await;
    let index = unique("tgt");
    let tmp = tempfile::tempdir().unwrap();
    // A regular file where the directory should be: the archive cannot write.
    let blocker = tmp.path().join("archive");
    std::fs::write(&blocker, "not a directory").unwrap();
    let dir = blocker.join("out");
    let proxy = Proxy::start(&osmem().url);
    let env = two_targets(&db, proxy.port, &index, &dir).set("CHUNK_SIZE", "5");
    env.run(&["run"]).expect(3);
    assert_eq!(index_actors(&index), actors(rows, &TOPICS));
    assert_eq!(db.unsent(T).await, rows as i64);
    std::fs::remove_file(&blocker).unwrap();
    let run = env.run(&["run"]);
    run.expect(0);
    assert_eq!(file_actors(&dir), actors(rows, &TOPICS));
    // Each document reached the SIEM in one request only: nothing was sent to it again.
    let forwarded = proxy.forwarded();
    assert_eq!(forwarded.len(), rows);
    assert!(forwarded.values().all(|&n| n == 1), "{forwarded:?}");
    assert_eq!(db.unsent(T).await, 0);
}

async fn killed_between_the_targets_acknowledgements(b: Backend) {
    skip_unless!(b, Need::Osmem);
    for nth in [1, 2] {
        let rows = 12;
        let db = setup(b, rows).await;
        let index = unique("tgt");
        let dir = tempfile::tempdir().unwrap();
        // One worker: the re-run's first page is the crashed run's first page, which the file
        // target then recognizes by its name (docs/targets.md: with several workers a file
        // target can get a second copy of a page whose rows were grouped differently).
        let env = two_targets(&db, osmem().port(), &index, dir.path())
            .set("CHUNK_SIZE", "5")
            .set("SINK_CONCURRENCY", "1");
        // nth 1: one target acknowledged the first page, the other not yet; nth 2: both did,
        // nothing is committed.
        env.paused_at("after_target_ack", nth, &["run"]).kill();
        assert_eq!(db.unsent(T).await, rows as i64);
        env.run(&["run"]).expect(0);
        assert_eq!(index_actors(&index), actors(rows, &TOPICS), "nth {nth}");
        assert_eq!(file_actors(dir.path()), actors(rows, &TOPICS), "nth {nth}");
        assert_eq!(db.unsent(T).await, 0);
        assert_eq!(held_rows(&db).await, 0);
    }
}

async fn overlapping_runs_ship_each_row_once_per_target(b: Backend) {
    skip_unless!(b, Need::Osmem);
    let rows = 200;
    let db = setup(b, rows).await;
    let index = unique("tgt");
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(&osmem().url);
    let env = two_targets(&db, proxy.port, &index, dir.path())
        .set("CHUNK_SIZE", "10")
        .set("SINK_CONCURRENCY", "2");
    for run in env.run_at_once(3, &["run"]) {
        run.expect(0);
    }
    assert_eq!(index_actors(&index), actors(rows, &TOPICS));
    assert_eq!(file_actors(dir.path()), actors(rows, &TOPICS));
    let forwarded = proxy.forwarded();
    assert!(forwarded.values().all(|&n| n == 1), "{forwarded:?}");
    assert_eq!(db.unsent(T).await, 0);
}

backend_tests!(
    postgres,
    Backend::Postgres,
    [
        each_topic_goes_to_the_targets_that_accept_it,
        a_target_down_for_a_run_gets_exactly_the_missing_records_next_run,
        the_file_target_down_for_a_run,
        killed_between_the_targets_acknowledgements,
        overlapping_runs_ship_each_row_once_per_target,
    ]
);

backend_tests!(
    mariadb,
    Backend::MySql,
    [
        each_topic_goes_to_the_targets_that_accept_it,
        a_target_down_for_a_run_gets_exactly_the_missing_records_next_run,
        killed_between_the_targets_acknowledgements,
        overlapping_runs_ship_each_row_once_per_target,
    ]
);

backend_tests!(
    sqlite,
    Backend::Sqlite,
    [
        each_topic_goes_to_the_targets_that_accept_it,
        a_target_down_for_a_run_gets_exactly_the_missing_records_next_run,
        killed_between_the_targets_acknowledgements,
    ]
);

/// The API sources keep records some target lacks with their failures, in the state file.
#[test]
fn castai_a_target_down_for_a_run_then_completed() {
    use common::fakes::castai::{v1_event, FakeCastai};
    skip_unless!(Need::Osmem);
    const KEY: &str = "castai-test-key-0123456789";
    let fake = FakeCastai::start(KEY);
    let start =
        chrono::DateTime::from_timestamp(chrono::Utc::now().timestamp() - 3 * 3600, 0).unwrap();
    let n = 25;
    // Odd events are only the SIEM's: while it is down no target holds them, and they must be
    // kept all the same.
    let kind = |i: usize| {
        if i.is_multiple_of(2) {
            "clusterDeleted"
        } else {
            "nodeAdded"
        }
    };
    fake.add((0..n).map(|i| {
        v1_event(
            &format!("ev-{i:03}"),
            start + chrono::Duration::seconds(10 * i as i64 + 5),
            "cluster-1",
            kind(i),
        )
    }));
    let expected: BTreeMap<String, usize> = (0..n).map(|i| (format!("ev-{i:03}"), 1)).collect();
    let archived: BTreeMap<String, usize> = (0..n)
        .filter(|i| i.is_multiple_of(2))
        .map(|i| (format!("ev-{i:03}"), 1))
        .collect();
    let id = |doc: &Value| doc["id"].as_str().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("castai.json");
    let out = dir.path().join("archive");
    let index = unique("tgt");
    let proxy = Proxy::start(&osmem().url);
    proxy.push(Fault::Status(503), 1000);
    let env = Env::new()
        .set("AUDIT_LOGGER_TYPE", "CASTAI")
        .set("CASTAI_API_URL", &fake.url)
        .set("CASTAI_API_KEY", KEY)
        .set("CASTAI_STATE_FILE", state.to_str().unwrap())
        .set(
            "CASTAI_START_FROM",
            &start.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        )
        .set("CASTAI_LAG", "60s")
        .set("CASTAI_PAGE_LIMIT", "10")
        .set("CHUNK_SIZE", "10")
        .with_targets(proxy.port, &index, &out)
        .set("TARGET_ARCHIVE_ACCEPT_TOPICS", "clusterDeleted");
    let run = env.run(&["run"]);
    run.expect(3);
    assert_eq!(file_values(&out, id), archived);
    assert_eq!(osmem().count(&index), 0);
    let saved: Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    let kept = saved["failed"].as_array().unwrap();
    assert_eq!(kept.len(), n, "{saved}");
    assert!(kept.iter().all(|f| f["attempts"] == 0));
    for f in kept {
        let i: usize = f["key"].as_str().unwrap()[3..].parse().unwrap();
        let held = if i.is_multiple_of(2) {
            json!(["archive"])
        } else {
            Value::Null
        };
        assert_eq!(f["held_by"], held, "{f}");
    }

    // The SIEM is back: it gets each event once; the archive nothing again.
    let run = env
        .clone()
        .set(
            "TARGET_SIEM_ELASTICSEARCH_PORT",
            &osmem().port().to_string(),
        )
        .run(&["run"]);
    run.expect(0);
    assert_eq!(index_values(&index, id), expected);
    assert_eq!(file_values(&out, id), archived);
    let saved: Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(saved["failed"], json!([]), "{saved}");
    let archive = target_line(&run, "archive");
    assert_eq!(
        (
            archive["delivered"].as_u64(),
            archive["already_present"].as_u64()
        ),
        (Some(0), Some(0))
    );
}

/// Cato too: one feed page goes to both targets; with the SIEM down, the archive takes it and
/// the state file keeps every event for the SIEM alone.
#[test]
fn cato_a_target_down_for_a_run_then_completed() {
    use common::fakes::cato::{event, FakeCato};
    skip_unless!(Need::Osmem);
    const KEY: &str = "cato-test-key-0123456789";
    let fake = FakeCato::start(KEY);
    let t0: chrono::DateTime<chrono::Utc> = "2026-02-26T09:00:00Z".parse().unwrap();
    let n = 30;
    fake.add_events(
        (0..n)
            .map(|i| {
                event(
                    "4242",
                    &format!("ev{i:05}"),
                    t0 + chrono::Duration::seconds(i as i64),
                    "Security",
                    "Internet Firewall",
                )
            })
            .collect::<Vec<_>>(),
    );
    let expected: BTreeMap<String, usize> = (0..n).map(|i| (format!("ev{i:05}"), 1)).collect();
    let id = |doc: &Value| doc["fieldsMap"]["event_id"].as_str().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("cato.json");
    let out = dir.path().join("archive");
    let index = unique("tgt");
    let proxy = Proxy::start(&osmem().url);
    proxy.push(Fault::Status(503), 1000);
    let env = Env::new()
        .set("AUDIT_LOGGER_TYPE", "CATO")
        .set("CATO_API_URL", &fake.url)
        .set("CATO_API_KEY", KEY)
        .set("CATO_ACCOUNT_ID", "4242")
        .set("CATO_FEED", "events")
        .set("CATO_STATE_FILE", state.to_str().unwrap())
        .set("CATO_RETRY_INITIAL_MS", "10")
        .set("CHUNK_SIZE", "7")
        .with_targets(proxy.port, &index, &out);
    env.run(&["run"]).expect(3);
    assert_eq!(file_values(&out, id), expected);
    assert_eq!(osmem().count(&index), 0);
    let saved: Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(saved["failed"].as_array().unwrap().len(), n, "{saved}");

    let run = env
        .clone()
        .set(
            "TARGET_SIEM_ELASTICSEARCH_PORT",
            &osmem().port().to_string(),
        )
        .run(&["run"]);
    run.expect(0);
    assert_eq!(index_values(&index, id), expected);
    assert_eq!(file_values(&out, id), expected);
    let saved: Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(saved["failed"], json!([]), "{saved}");
}

/// S3: a file is acknowledged whole, so the cursor stays before a file some target lacks
/// records of, and the cursor file keeps who holds which; the next run completes the file for
/// the target that lacks it only, then moves on.
#[test]
fn s3_a_target_down_for_a_run_then_completed() {
    skip_unless!(Need::Python("moto"), Need::Osmem);
    let m = common::s3::moto();
    let prefix = format!("acct/{}", unique("s3t"));
    let lines = |file: u64| -> Vec<u8> {
        let mut t = String::new();
        for line in 0..6u64 {
            t.push_str(
                &json!({"creationTime": 1714557600000u64 + file * 1000 + line, "prettyType": "Audit",
                    "sourceIp": format!("10.1.{file}.{line}")})
                .to_string(),
            );
            t.push('\n');
        }
        t.into_bytes()
    };
    for file in 1..=2u64 {
        m.put(&format!("{prefix}/CATO{file:020}.log"), lines(file));
    }
    let expected: BTreeMap<String, usize> = (1..=2u64)
        .flat_map(|f| (0..6u64).map(move |l| (format!("10.1.{f}.{l}"), 1)))
        .collect();
    let ip = |doc: &Value| doc["sourceIp"].as_str().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let cursor = dir.path().join("cursor.json");
    let out = dir.path().join("archive");
    let index = unique("tgt");
    let proxy = Proxy::start(&osmem().url);
    proxy.push(Fault::Status(503), 1000);
    let env = Env::new()
        .set("AUDIT_LOGGER_TYPE", "S3_CURSOR")
        .set("S3_BUCKET", &m.bucket)
        .set("S3_PREFIX", &prefix)
        .set("S3_ENDPOINT", &m.endpoint)
        .set("AWS_ACCESS_KEY_ID", &m.key_id)
        .set("AWS_SECRET_ACCESS_KEY", &m.secret)
        .set("S3_CURSOR_FILE", cursor.to_str().unwrap())
        .set("CHUNK_SIZE", "4")
        .with_targets(proxy.port, &index, &out);
    env.run(&["run"]).expect(3);
    // The first file went to the archive; the cursor stays before it, later files wait.
    let first: BTreeMap<String, usize> = expected
        .iter()
        .filter(|(k, _)| k.starts_with("10.1.1."))
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    assert_eq!(file_values(&out, ip), first);
    let saved: Value = serde_json::from_slice(&std::fs::read(&cursor).unwrap()).unwrap();
    assert!(saved["last"].is_null(), "{saved}");
    assert_eq!(
        saved["next"]["held"].as_object().unwrap().len(),
        6,
        "{saved}"
    );

    let run = env
        .clone()
        .set(
            "TARGET_SIEM_ELASTICSEARCH_PORT",
            &osmem().port().to_string(),
        )
        .run(&["run"]);
    run.expect(0);
    assert_eq!(index_values(&index, ip), expected);
    assert_eq!(file_values(&out, ip), expected);
    let saved: Value = serde_json::from_slice(&std::fs::read(&cursor).unwrap()).unwrap();
    assert!(saved["next"].is_null(), "{saved}");
    // The first file's records reached the archive in the first run only; the second file's now.
    let archive = target_line(&run, "archive");
    assert_eq!(
        (
            archive["delivered"].as_u64(),
            archive["already_present"].as_u64()
        ),
        (Some(6), Some(0))
    );
}

/// `init-index` sets up every Elasticsearch target and leaves the others alone.
#[test]
fn init_index_sets_up_the_elasticsearch_targets() {
    skip_unless!(Need::Osmem);
    let dir = tempfile::tempdir().unwrap();
    let index = unique("tgt");
    let env = Env::new()
        .set("DATABASE_URL", "sqlite:///never-opened.db")
        .with_targets(osmem().port(), &index, dir.path());
    env.run(&["init-index"]).expect(0);
    assert!(
        osmem().mapping(&index)[&index]["mappings"].is_object(),
        "{}",
        osmem().mapping(&index)
    );
    let files_only = env.clone().set("TARGETS", "archive").run(&["init-index"]);
    files_only.expect(2);
    assert!(
        files_only.stderr.contains("none of TARGETS is one"),
        "{}",
        files_only.stderr
    );
}

/// Configuration mistakes: exit 2, one line naming the variable, nothing touched.
#[test]
fn target_settings_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let base = Env::new()
        .set("LOG_FORMAT", "text")
        .set("DATABASE_URL", "sqlite:///nonexistent/never-opened.db")
        .set("TARGETS", "siem,archive")
        .set("TARGET_SIEM_SINK", "elasticsearch")
        .set("TARGET_SIEM_ELASTICSEARCH_HOST", "127.0.0.1")
        .set("TARGET_SIEM_ELASTICSEARCH_PASSWORD", "s3cr3t-Pa55")
        .set("TARGET_SIEM_ELASTICSEARCH_USERNAME", "u")
        .set("TARGET_ARCHIVE_SINK", "file")
        .set("TARGET_ARCHIVE_OUTPUT_PATH", dir.path().to_str().unwrap());
    let refused = |env: Env, needle: &str| {
        let run = env.run(&["run"]);
        run.expect(2);
        assert!(run.stderr.contains(needle), "{needle}: {}", run.stderr);
        assert!(!run.stderr.contains("s3cr3t-Pa55"));
        assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.stderr);
    };
    refused(
        base.clone().set("TARGET_SIEM_ELASTICSEARCH_HOTS", "x"),
        "unknown variable TARGET_SIEM_ELASTICSEARCH_HOTS: the elasticsearch sink of target siem does not read it (did you mean TARGET_SIEM_ELASTICSEARCH_HOST?)",
    );
    refused(
        base.clone().set("TARGET_ARCHIVE_SPLUNK_HEC_TOKEN", "t"),
        "unknown variable TARGET_ARCHIVE_SPLUNK_HEC_TOKEN",
    );
    refused(
        base.clone().set("SINK", "file"),
        "SINK is set but so is TARGETS",
    );
    refused(
        base.clone().set("TARGET_ARCHIVE_OUTPUT_GZIP", "maybe"),
        "invalid TARGET_ARCHIVE_OUTPUT_GZIP \"maybe\"",
    );
    refused(
        base.clone().set("TARGET_SIEM_ACCEPT_TOPICS", "authfail"),
        "TARGET_SIEM_ACCEPT_TOPICS is set but ROUTING_TOPIC_FIELD is not",
    );
    refused(
        base.clone().set("TARGETS", "siem,archive,alerts"),
        "TARGET_ALERTS_SINK is not set",
    );
    refused(
        base.clone().set("TARGETS", "siem,my-archive"),
        "\"my-archive\" is not a target name",
    );
    refused(
        base.clone()
            .set("AUDIT_LOGGER_TYPE", "CDP_ARCHIVE")
            .set("CDP_ACCESS_TOKEN", "t"),
        "TARGETS works with SINGLE_COLUMN_JSON, DJANGO_AUDITLOG, CASTAI, CATO and S3_CURSOR so far: AUDIT_LOGGER_TYPE=CDP_ARCHIVE",
    );
    // Valid: `check` gets past the configuration (and fails at the database).
    let ok = base.clone().run(&["check"]);
    assert_ne!(ok.code, 2, "{}", ok.stderr);
    assert!(!ok.stderr.contains("s3cr3t-Pa55"));
}
