//! Operations: metrics (textfile read by the real `prometheus_client` parser, Pushgateway push to
//! a local receiver), `status`, `init-index`, completions, man page, version, and no progress
//! bar in non-interactive runs.

#[macro_use]
mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

const T: &str = "audit_logs";

/// Metric name -> its samples (labels, value), as prometheus_client parsed them.
type Families = BTreeMap<String, Vec<(BTreeMap<String, String>, f64)>>;
/// One request the Pushgateway stand-in received: method, path, content type, body.
type Push = (String, String, String, String);

/// Parses exposition text with prometheus_client's own parser; returns
/// `metric name -> [(labels, value)]` (the parser drops nothing it accepts, and raises on
/// anything malformed).
fn parse_exposition(text: &str) -> Families {
    let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    assert family.type == "gauge", (family.name, family.type)
    assert family.documentation, family.name
    for s in family.samples:
        out.setdefault(s.name, []).append([s.labels, s.value])
print(json.dumps(out))
"#;
    let mut child = std::process::Command::new(python())
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e} (set TEST_PYTHON or run `make test`)", python()));
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client refused:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn value(m: &Families, name: &str, label: Option<(&str, &str)>) -> f64 {
    m.get(name)
        .unwrap_or_else(|| panic!("{name} missing: {m:?}"))
        .iter()
        .find(|(l, _)| label.is_none_or(|(k, v)| l.get(k).map(String::as_str) == Some(v)))
        .unwrap_or_else(|| panic!("{name} {label:?} missing: {m:?}"))
        .1
}

/// Three deliverable rows, one that never can be (not JSON), two sent already.
async fn queue(b: Backend) -> TestDb {
    let db = TestDb::new(b).await;
    db.create_audit_table(T).await;
    db.insert_messages(T, &(0..3).map(message).collect::<Vec<_>>())
        .await;
    let old = chrono::DateTime::parse_from_rfc3339("2024-04-01T00:00:00Z").unwrap();
    db.insert_rows(
        T,
        [
            ("\"not an object\"".to_string(), old, false),
            (message(9).to_string(), old, true),
            (message(9).to_string(), old, true),
        ]
        .into_iter(),
    )
    .await;
    db
}

async fn textfile_metrics_parse_and_count(b: Backend) {
    skip_unless!(b, Need::Python("prometheus_client"));
    let db = queue(b).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit-transfer.prom");
    let out = dir.path().join("out");
    let env = Env::new()
        .set("DATABASE_URL", &db.url)
        .set("SINK", "file")
        .set("OUTPUT_PATH", out.to_str().unwrap())
        .set("MAX_ATTEMPTS", "1")
        .set("BATCH_SIZE", "2")
        .set("CHUNK_SIZE", "1")
        .set("METRICS_TEXTFILE", path.to_str().unwrap());
    // The bad row fails once and is parked (MAX_ATTEMPTS=1); BATCH_SIZE leaves one row unsent.
    let run = env.run(&["run"]);
    run.expect(3);
    let text = std::fs::read_to_string(&path).unwrap();
    let m = parse_exposition(&text);
    let src = ("source", "single_column_json:audit_logs");
    assert_eq!(
        value(
            &m,
            "audit_transfer_run_records",
            Some(("outcome", "selected"))
        ),
        2.0
    );
    assert_eq!(
        value(
            &m,
            "audit_transfer_run_records",
            Some(("outcome", "rejected"))
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "audit_transfer_run_records",
            Some(("outcome", "delivered"))
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "audit_transfer_run_records",
            Some(("outcome", "marked"))
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "audit_transfer_run_records",
            Some(("outcome", "already_present"))
        ),
        0.0
    );
    assert_eq!(value(&m, "audit_transfer_parked_records", Some(src)), 1.0);
    assert_eq!(value(&m, "audit_transfer_run_exit_code", Some(src)), 3.0);
    assert_eq!(value(&m, "audit_transfer_run_success", Some(src)), 1.0);
    assert!(value(&m, "audit_transfer_run_duration_seconds", Some(src)) >= 0.0);
    // Two unsent and deliverable rows are left (the parked one is not backlog); the oldest was
    // written 2024-05-01T10:00:01.123456Z.
    assert_eq!(value(&m, "audit_transfer_backlog_records", Some(src)), 2.0);
    let oldest = chrono::DateTime::parse_from_rfc3339("2024-05-01T10:00:01.123456Z").unwrap();
    let last_run = value(&m, "audit_transfer_last_run_timestamp_seconds", Some(src));
    let age = value(&m, "audit_transfer_oldest_unsent_age_seconds", Some(src));
    assert!(
        (last_run - age - oldest.timestamp_millis() as f64 / 1000.0).abs() < 0.01,
        "age {age} at {last_run}"
    );
    let success = value(
        &m,
        "audit_transfer_last_success_timestamp_seconds",
        Some(src),
    );
    assert_eq!(success, last_run);
    // A failed run (the output directory is a file now) keeps the last success time.
    std::fs::remove_dir_all(&out).unwrap();
    std::fs::write(&out, "in the way").unwrap();
    env.run(&["run"]).expect(1);
    let m = parse_exposition(&std::fs::read_to_string(&path).unwrap());
    assert_eq!(value(&m, "audit_transfer_run_success", Some(src)), 0.0);
    assert_eq!(value(&m, "audit_transfer_run_exit_code", Some(src)), 1.0);
    assert_eq!(
        value(
            &m,
            "audit_transfer_last_success_timestamp_seconds",
            Some(src)
        ),
        success
    );
    assert!(value(&m, "audit_transfer_last_run_timestamp_seconds", Some(src)) > success);
}

#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<Push>>>);

/// A Pushgateway stand-in: records method, path, content type and body; answers 200.
fn receiver() -> (String, Received) {
    use axum::extract::{Request, State};
    let got = Received::default();
    let app = axum::Router::new()
        .fallback(|State(got): State<Received>, req: Request| async move {
            let method = req.method().to_string();
            let path = req.uri().path().to_string();
            let ctype = req
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let body = axum::body::to_bytes(req.into_body(), 1 << 20)
                .await
                .unwrap();
            got.0.lock().unwrap().push((
                method,
                path,
                ctype,
                String::from_utf8_lossy(&body).into_owned(),
            ));
            ""
        })
        .with_state(got.clone());
    let url = common::fakes::serve(app);
    (url, got)
}

#[tokio::test]
async fn pushgateway_receives_the_run() {
    skip_unless!(Need::Python("prometheus_client"));
    let db = queue(Backend::Sqlite).await;
    let (url, got) = receiver();
    let out = tempfile::tempdir().unwrap();
    let env = Env::new()
        .set("DATABASE_URL", &db.url)
        .set("SINK", "file")
        .set("OUTPUT_PATH", out.path().to_str().unwrap())
        .set("MAX_ATTEMPTS", "1")
        .set("METRICS_PUSHGATEWAY_URL", &format!("{url}/gw"));
    env.run(&["run"]).expect(3);
    let pushes = got.0.lock().unwrap().clone();
    assert_eq!(pushes.len(), 1, "{pushes:?}");
    let (method, path, ctype, body) = &pushes[0];
    assert_eq!(method, "PUT");
    // source@base64: "single_column_json:audit_logs" in base64url.
    assert_eq!(
        path,
        "/gw/metrics/job/audit-transfer/source@base64/c2luZ2xlX2NvbHVtbl9qc29uOmF1ZGl0X2xvZ3M="
    );
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    let m = parse_exposition(body);
    assert_eq!(
        value(
            &m,
            "audit_transfer_run_records",
            Some(("outcome", "delivered"))
        ),
        3.0
    );
    assert_eq!(value(&m, "audit_transfer_backlog_records", None), 0.0);
    assert_eq!(
        value(&m, "audit_transfer_oldest_unsent_age_seconds", None),
        0.0
    );
    // The grouping key carries the source; the samples do not repeat it.
    assert!(!body.contains("source="), "{body}");

    // A failed run POSTs (keeps the group's last success time); an unreachable gateway is a
    // warning, not a failed transfer.
    let failing = env
        .clone()
        .set("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none");
    failing.run(&["run"]).expect(1);
    let pushes = got.0.lock().unwrap().clone();
    assert_eq!(pushes.len(), 2);
    assert_eq!(pushes[1].0, "POST");
    assert!(!pushes[1].3.contains("last_success"));
    let run = env
        .clone()
        .set("METRICS_PUSHGATEWAY_URL", "http://127.0.0.1:1")
        .run(&["run"]);
    run.expect(3);
    assert!(run.stderr.contains("cannot push metrics"), "{}", run.stderr);
}

async fn status_reports_backlog_parked_and_runs(b: Backend) {
    skip_unless!(b);
    let db = queue(b).await;
    let out = tempfile::tempdir().unwrap();
    let env = Env::new()
        .set("DATABASE_URL", &db.url)
        .set("SINK", "file")
        .set("OUTPUT_PATH", out.path().to_str().unwrap())
        .set("MAX_ATTEMPTS", "1");
    // Before any run: four unsent rows (the bad one is not parked yet), no runs recorded.
    let before = env.run(&["status", "--json"]);
    before.expect(0);
    let s: Value = serde_json::from_str(&before.stdout).unwrap();
    assert_eq!(s["backlog"], 4);
    assert_eq!(s["oldest_unsent"], "2024-04-01T00:00:00Z");
    assert!(s["oldest_unsent_age_seconds"].as_u64().unwrap() > 86400);
    assert_eq!(s["last_run"], Value::Null);
    assert_eq!(s["healthy"], true);
    env.run(&["status", "--max-since-success", "1h"]).expect(1);
    env.run(&["status", "--max-age", "1d"]).expect(1);

    env.run(&["run"]).expect(3);
    let after = env.run(&["status", "--json"]);
    after.expect(1);
    let s: Value = serde_json::from_str(&after.stdout).unwrap();
    assert_eq!(
        (s["backlog"].as_u64(), s["parked"].as_u64()),
        (Some(0), Some(1))
    );
    assert_eq!(s["oldest_unsent"], Value::Null);
    assert_eq!(s["healthy"], false);
    assert!(s["problems"][0].as_str().unwrap().contains("parked"), "{s}");
    assert_eq!(s["last_run"]["exit_code"], 3);
    assert_eq!(s["last_run"]["delivered"], 3);
    assert_eq!(
        s["last_success"]["finished_at"],
        s["last_run"]["finished_at"]
    );

    // Fixed and retried: healthy again, in words as well.
    env.run(&["retry-failed"]).expect(0);
    // The bad row is id 4 (after the three good ones).
    db.exec(&format!("UPDATE {T} SET is_sent = true WHERE id = 4"))
        .await;
    env.run(&["run"]).expect(0);
    let text = env.run(&["status", "--max-age", "1h", "--max-since-success", "1h"]);
    text.expect(0);
    for line in [
        "source:          single_column_json:audit_logs",
        "backlog:         0 record(s) to send",
        "parked:          0",
        "status:          healthy",
    ] {
        assert!(text.stdout.contains(line), "{line:?} in\n{}", text.stdout);
    }
    assert!(
        text.stdout.contains("last run:        20"),
        "{}",
        text.stdout
    );
    assert_eq!(
        db.scalar("SELECT COUNT(*) FROM audit_transfer_runs").await,
        2,
        "one row per run"
    );
    // The last run failing makes the status unhealthy.
    let in_the_way = out.path().join("file");
    std::fs::write(&in_the_way, "not a directory").unwrap();
    let broken = env.clone().set("OUTPUT_PATH", in_the_way.to_str().unwrap());
    db.insert_messages(T, &[message(1)]).await;
    broken.run(&["run"]).expect(1);
    let s: Value = serde_json::from_str(&env.run(&["status", "--json"]).stdout).unwrap();
    assert_eq!(s["last_run"]["exit_code"], 1);
    assert_eq!(s["healthy"], false);
    assert_eq!(s["last_success"]["exit_code"], 0);
}

#[test]
fn status_is_refused_for_cdp_which_keeps_nothing() {
    let run = Env::new()
        .set("AUDIT_LOGGER_TYPE", "CDP_ARCHIVE")
        .set("CDP_ACCESS_TOKEN", "t")
        .run(&["status"]);
    run.expect(2);
    assert!(run.stderr.contains("--dry-run"), "{}", run.stderr);
}

#[tokio::test]
async fn init_index_creates_the_mapping_once() {
    skip_unless!(Need::Osmem);
    let index = unique("idx");
    let env = Env::osmem(&index);
    env.run(&["init-index"]).expect(0);
    let mapping = osmem().mapping(&index);
    let props = &mapping[&index]["mappings"]["properties"];
    assert_eq!(props["@timestamp"]["type"], "date", "{mapping}");
    assert_eq!(
        props["audit_event"]["properties"]["operation"]["type"],
        "keyword"
    );
    assert_eq!(
        props["audit_event"]["properties"]["origin"]["type"],
        "keyword"
    );
    // Issue 14 (3): what the sources write differently is left to dynamic mapping (a string
    // from django-auditlog, an object from Helsinki's applications).
    for free in ["actor", "target", "message"] {
        assert!(
            props["audit_event"]["properties"].get(free).is_none(),
            "{free}: {mapping}"
        );
    }
    // Idempotent: a second time leaves it as it is.
    let again = env.run(&["init-index"]);
    again.expect(0);
    assert!(
        again.log("exists; left as it is").is_some(),
        "{}",
        again.stderr
    );
    // Other sinks have no index.
    Env::new()
        .set("SINK", "stdout")
        .run(&["init-index"])
        .expect(2);
}

/// A row as City of Helsinki's applications write it (structured-log-transfer's own test helper
/// writes the same): `actor` and `target` are objects.
fn helsinki_message(n: usize) -> Value {
    serde_json::json!({"audit_event": {
        "origin": "kukkuu",
        "status": "SUCCESS",
        "date_time_epoch": 1_714_557_600_123_i64 + n as i64,
        "date_time": format!("2024-05-01T10:00:{:02}.123Z", n % 60),
        "actor": {"role": "OWNER", "user_id": format!("u-{n}"), "provider": "tunnistamo", "ip_address": "192.0.2.1"},
        "operation": "READ",
        "target": {"id": n.to_string(), "path": format!("/v1/children/{n}"), "type": "Child"},
        "additional_information": "",
    }})
}

/// Issue 14 (3): the index `init-index` creates takes the single-column source's real documents.
#[tokio::test]
async fn an_index_from_init_index_takes_helsinki_documents() {
    skip_unless!(Need::Osmem);
    let db = TestDb::new(Backend::Sqlite).await;
    db.create_audit_table(T).await;
    db.insert_messages(T, &(0..5).map(helsinki_message).collect::<Vec<_>>())
        .await;
    let index = unique("helsinki");
    let env = Env::es(&db, &index);
    env.run(&["init-index"]).expect(0);
    let run = env.run(&[]);
    run.expect(0);
    assert_eq!(run.n("delivered"), 5, "{}", run.stderr);
    assert_eq!(osmem().count(&index), 5);
    assert_eq!(db.unsent(T).await, 0);
    let mapping = osmem().mapping(&index);
    let event = &mapping[&index]["mappings"]["properties"]["audit_event"]["properties"];
    assert!(
        event["actor"]["properties"]["user_id"].is_object(),
        "{mapping}"
    );
    assert_eq!(event["operation"]["type"], "keyword", "{mapping}");
}

#[tokio::test]
async fn create_index_at_run_start() {
    skip_unless!(Need::Osmem);
    let db = queue(Backend::Sqlite).await;
    let index = unique("idx");
    let run = Env::es(&db, &index)
        .set("ELASTICSEARCH_CREATE_INDEX", "true")
        .run(&["run"]);
    run.expect(3);
    assert!(
        run.log("created with the audit mapping").is_some(),
        "{}",
        run.stderr
    );
    assert_eq!(osmem().count(&index), 3);
    let mapping = osmem().mapping(&index);
    assert_eq!(
        mapping[&index]["mappings"]["properties"]["audit_event"]["properties"]["operation"]["type"],
        "keyword"
    );
}

#[test]
fn completions_man_page_and_version() {
    for (shell, needle) in [
        ("bash", "complete -F _audit__transfer"),
        ("zsh", "#compdef audit-transfer"),
        ("fish", "complete -c audit-transfer"),
    ] {
        let run = Env::new().run(&["completions", shell]);
        run.expect(0);
        assert!(run.stdout.contains(needle), "{shell}:\n{}", run.stdout);
        assert!(run.stdout.contains("retry-failed") && run.stdout.contains("status"));
    }
    Env::new().run(&["completions", "tcsh"]).expect(2);
    let man = Env::new().run(&["man"]);
    man.expect(0);
    assert!(
        man.stdout.starts_with(".ie") || man.stdout.contains(".TH audit-transfer"),
        "{}",
        man.stdout
    );
    assert!(man.stdout.contains("init\\-index") || man.stdout.contains("init-index"));
    let version = Env::new().run(&["--version"]);
    version.expect(0);
    let v = version.stdout.trim();
    assert!(
        v.starts_with(&format!("audit-transfer {} (", env!("CARGO_PKG_VERSION")))
            && v.ends_with(')'),
        "{v}"
    );
    let rev = v.rsplit('(').next().unwrap().trim_end_matches(')');
    assert!(
        rev == "unknown" || (rev.len() >= 7 && rev.chars().all(|c| c.is_ascii_hexdigit())),
        "{v}"
    );
}

#[tokio::test]
async fn piped_runs_print_no_progress() {
    let db = TestDb::new(Backend::Sqlite).await;
    db.create_audit_table(T).await;
    db.insert_messages(T, &(0..50).map(message).collect::<Vec<_>>())
        .await;
    let out = tempfile::tempdir().unwrap();
    for format in ["text", "json"] {
        let run = Env::new()
            .set("DATABASE_URL", &db.url)
            .set("SINK", "file")
            .set("OUTPUT_PATH", out.path().to_str().unwrap())
            .set("CHUNK_SIZE", "5")
            .set("LOG_FORMAT", format)
            .run(&["run"]);
        run.expect(0);
        // No carriage returns, cursor movements or bar/ETA text: only log lines.
        assert!(
            !run.stderr.contains('\r') && !run.stderr.contains('\u{1b}'),
            "{:?}",
            run.stderr
        );
        assert!(!run.stderr.contains("ETA") && !run.stderr.contains("records/s"));
        if format == "json" {
            assert!(run
                .stderr
                .lines()
                .all(|l| serde_json::from_str::<Value>(l).is_ok()));
        }
    }
}

/// On a terminal (util-linux `script` gives the run one) the bar is there, with rate and ETA.
#[tokio::test]
async fn a_terminal_gets_a_progress_bar() {
    let db = TestDb::new(Backend::Sqlite).await;
    db.create_audit_table(T).await;
    db.insert_messages(T, &(0..400).map(message).collect::<Vec<_>>())
        .await;
    let out = tempfile::tempdir().unwrap();
    let env = Env::new()
        .set("DATABASE_URL", &db.url)
        .set("SINK", "file")
        .set("OUTPUT_PATH", out.path().to_str().unwrap())
        .set("CHUNK_SIZE", "20")
        .set("LOG_FORMAT", "text");
    let mut script = std::process::Command::new("script");
    script
        .args(["-qec", &format!("{BIN} run"), "/dev/null"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TERM", "xterm");
    for (k, v) in &env.0 {
        script.env(k, v);
    }
    let run = Run::from(script.output().expect("util-linux script"));
    run.expect(0);
    // The terminal's output (stdout of `script`) holds the bar and the log lines.
    assert!(run.stdout.contains("/400 records"), "{:?}", run.stdout);
    assert!(run.stdout.contains("records/s") && run.stdout.contains("ETA"));
    assert!(run.stdout.contains("run finished"));
    assert_eq!(db.unsent(T).await, 0);
}

macro_rules! per_backend {
    ($($test:ident),* $(,)?) => {
        mod postgres { $( #[tokio::test] async fn $test() { super::$test(super::Backend::Postgres).await } )* }
        mod sqlite { $( #[tokio::test] async fn $test() { super::$test(super::Backend::Sqlite).await } )* }
        mod mysql { $( #[tokio::test] async fn $test() { super::$test(super::Backend::MySql).await } )* }
    };
}

per_backend!(
    textfile_metrics_parse_and_count,
    status_reports_backlog_parked_and_runs
);
