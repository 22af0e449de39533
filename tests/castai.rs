//! The CAST AI source against the fake CAST AI API (tests/common/fakes/castai.rs), into
//! osmem-server: paging, crashes, window boundaries, rate limits, bad keys and bad items.

#[macro_use]
mod common;

use chrono::{DateTime, SecondsFormat, Utc};
use common::fakes::castai::{v1_event, v2_event, Event, FakeCastai};
use common::*;
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

const KEY: &str = "castai-test-key-0123456789";

fn rfc(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Now, to the whole second: event times the tests compare exactly.
fn now_s() -> DateTime<Utc> {
    DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap()
}

struct Case {
    fake: FakeCastai,
    index: String,
    dir: tempfile::TempDir,
    start: DateTime<Utc>,
}

impl Case {
    fn new() -> Case {
        Case {
            fake: FakeCastai::start(KEY),
            index: unique("castai"),
            dir: tempfile::tempdir().unwrap(),
            start: now_s() - chrono::Duration::hours(3),
        }
    }

    fn state_file(&self) -> PathBuf {
        self.dir.path().join("state").join("castai.json")
    }

    fn state(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.state_file()).unwrap()).unwrap()
    }

    fn env(&self) -> Env {
        std::fs::create_dir_all(self.state_file().parent().unwrap()).unwrap();
        Env::osmem(&self.index)
            .set("AUDIT_LOGGER_TYPE", "CASTAI")
            .set("CASTAI_API_URL", &self.fake.url)
            .set("CASTAI_API_KEY", KEY)
            .set("CASTAI_STATE_FILE", self.state_file().to_str().unwrap())
            .set("CASTAI_START_FROM", &rfc(self.start))
            .set("CASTAI_LAG", "60s")
            .set("CASTAI_RETRY_INITIAL_MS", "20")
            .set("CASTAI_PAGE_LIMIT", "10")
            .set("CHUNK_SIZE", "10")
    }

    /// `n` v1 events `step` seconds apart from `first`, ids `<prefix>-<i>`.
    fn v1_events(&self, prefix: &str, n: usize, first: DateTime<Utc>, step: i64) -> Vec<Event> {
        let events: Vec<Event> = (0..n)
            .map(|i| {
                v1_event(
                    &format!("{prefix}-{i:03}"),
                    first + chrono::Duration::seconds(step * i as i64),
                    "cluster-1",
                    "clusterDeleted",
                )
            })
            .collect();
        self.fake.add(events.clone());
        events
    }

    fn ids(&self) -> Vec<String> {
        osmem().ids(&self.index).into_iter().collect()
    }
}

fn ids_of(events: &[Event], field: &str) -> Vec<String> {
    let mut ids: Vec<String> = events
        .iter()
        .map(|e| e.json[field].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

fn state_check_point(state: &Value) -> DateTime<Utc> {
    state["check_point"].as_str().unwrap().parse().unwrap()
}

#[test]
fn v1_pages_through_the_window_and_the_next_run_only_takes_new_events() {
    skip_unless!(Need::Osmem);
    let c = Case::new();
    let events = c.v1_events("ev", 25, c.start + chrono::Duration::minutes(30), 7);
    let started = Utc::now();
    let run = c.env().set("CASTAI_LAG", "0").run(&["run"]);
    run.expect(0);
    assert_eq!(run.n("selected"), 25);
    assert_eq!(run.n("delivered"), 25);
    assert_eq!(run.n("pages"), 3);
    assert_eq!(c.ids(), ids_of(&events, "id"));

    // The document: the item as CAST AI returned it, plus @timestamp and topic.
    let docs = osmem().docs(&c.index);
    let (_, doc) = docs.iter().find(|(id, _)| id == "ev-000").unwrap();
    let item = &events[0].json;
    for (k, v) in item.as_object().unwrap() {
        assert_eq!(&doc[k], v, "{k}");
    }
    assert_eq!(doc["@timestamp"], item["time"]);
    assert_eq!(doc["topic"], "clusterDeleted");

    // Paging as the spec says: dates on the first request, only limit and cursor after it.
    let requests = c.fake.requests();
    assert_eq!(requests.len(), 3, "{requests:?}");
    assert_eq!(
        requests[0].keys(),
        ["fromDate", "page.limit", "toDate"],
        "{requests:?}"
    );
    for r in &requests[1..] {
        assert_eq!(r.keys(), ["page.cursor", "page.limit"]);
        assert_eq!(r.get("page.limit"), Some("10"));
    }
    assert!(requests.iter().all(|r| r.status == 200));

    // The checkpoint is the window's end, that is, when the run started (CASTAI_LAG=0).
    let state = c.state();
    let cp = state_check_point(&state);
    assert!(cp >= started && cp <= Utc::now(), "{state}");
    assert!(state["failed"].as_array().unwrap().is_empty());

    // Second run: the old events are not asked for again; a new one is delivered alone.
    c.fake.clear_requests();
    std::thread::sleep(Duration::from_millis(20));
    let late = c.v1_events("new", 2, Utc::now(), 0);
    std::thread::sleep(Duration::from_millis(20));
    let run = c.env().set("CASTAI_LAG", "0").run(&["run"]);
    run.expect(0);
    assert_eq!(run.n("selected"), 2);
    assert_eq!(run.n("delivered"), 2);
    let from: DateTime<Utc> = c.fake.requests()[0]
        .get("fromDate")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        from,
        cp - chrono::Duration::seconds(1),
        "one second of overlap"
    );
    assert_eq!(osmem().count(&c.index), 27);
    assert!(ids_of(&late, "id").iter().all(|id| c.ids().contains(id)));
}

#[test]
fn v2_with_cluster_filter() {
    skip_unless!(Need::Osmem);
    let c = Case::new();
    let first = c.start + chrono::Duration::minutes(10);
    let wanted: Vec<Event> = (0..12)
        .map(|i| {
            v2_event(
                &format!("e2-{i:02}"),
                first + chrono::Duration::seconds(i),
                "c-1",
            )
        })
        .collect();
    let other: Vec<Event> = (0..5)
        .map(|i| {
            v2_event(
                &format!("other-{i}"),
                first + chrono::Duration::seconds(i),
                "c-2",
            )
        })
        .collect();
    c.fake.add(wanted.clone());
    c.fake.add(other);
    let run = c
        .env()
        .set("CASTAI_API_VERSION", "v2")
        .set("CASTAI_CLUSTER_ID", "c-1")
        .set("CASTAI_PAGE_LIMIT", "5")
        .set("CHUNK_SIZE", "5")
        .run(&["run"]);
    run.expect(0);
    assert_eq!(run.n("delivered"), 12);
    assert_eq!(run.n("pages"), 3);
    assert_eq!(c.ids(), ids_of(&wanted, "eventId"));
    let docs = osmem().docs(&c.index);
    let (_, doc) = docs.iter().find(|(id, _)| id == "e2-03").unwrap();
    assert_eq!(doc["topic"], "cluster.node.delete");
    assert_eq!(doc["@timestamp"], wanted[3].json["occurredAt"]);
    assert_eq!(doc["actor"]["email"], "ann@example.com");

    let requests = c.fake.requests();
    assert_eq!(requests.len(), 3);
    for r in &requests {
        assert_eq!(r.get("sort.field"), Some("occurred_at"));
        assert_eq!(r.get("sort.order"), Some("ASC"));
        assert_eq!(r.get("filter.clusters"), Some("c-1"));
    }
    assert!(requests[1].get("page.cursor").is_some());
    assert_eq!(c.state()["api_version"], "v2");

    // A state file of another filter is refused, not reused.
    let run = c
        .env()
        .set("CASTAI_API_VERSION", "v2")
        .set("CASTAI_CLUSTER_ID", "c-2")
        .run(&["run"]);
    run.expect(2);
    assert!(run.stderr.contains("CASTAI_CLUSTER_ID"), "{}", run.stderr);
}

#[test]
fn killed_between_pages_then_rerun_delivers_each_event_once() {
    skip_unless!(Need::Osmem);
    let c = Case::new();
    let events = c.v1_events("k", 30, c.start + chrono::Duration::minutes(5), 3);
    c.fake.hold_page(2);
    let mut child = c.env().spawn(&["run"]);
    let start = std::time::Instant::now();
    while !c.fake.is_holding() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "page 2 never requested"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Page 1 is in the index, the run waits for page 2 of the window.
    assert_eq!(osmem().count(&c.index), 10);
    // A second run of the same state file meanwhile is refused, not interleaved.
    let overlapping = c.env().run(&["run"]);
    overlapping.expect(1);
    assert!(
        overlapping
            .stderr
            .contains("another run is using CASTAI_STATE_FILE"),
        "{}",
        overlapping.stderr
    );
    // Kill the first one there.
    child.kill().unwrap();
    child.wait().unwrap();
    c.fake.release();

    // The checkpoint did not move, but the delivered page is remembered.
    let state = c.state();
    assert_eq!(state_check_point(&state), c.start, "{state}");
    assert_eq!(state["acked"].as_array().unwrap().len(), 10);

    let run = c.env().run(&["run"]);
    run.expect(0);
    assert_eq!(run.n("delivered"), 20);
    assert_eq!(run.n("already_present"), 0, "page 1 is not shipped again");
    assert_eq!(osmem().count(&c.index), 30);
    assert_eq!(c.ids(), ids_of(&events, "id"));
    assert!(state_check_point(&c.state()) > c.start);
}

#[test]
fn sink_down_mid_window_then_rerun_without_duplicates() {
    skip_unless!(Need::Osmem);
    let c = Case::new();
    let events = c.v1_events("s", 20, c.start + chrono::Duration::minutes(5), 3);
    // Page 1 reaches osmem; page 2 goes to a closed port (a sink outage after retries).
    c.fake.hold_page(2);
    let env = c.env().set("ELASTICSEARCH_MAX_RETRIES", "1");
    let mut child = env.spawn(&["run"]);
    while !c.fake.is_holding() {
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    c.fake.release();
    let down = env.set("ELASTICSEARCH_PORT", &closed_port().to_string());
    let run = down.run(&["run"]);
    run.expect(1);
    assert_eq!(state_check_point(&c.state()), c.start);

    let run = c.env().run(&["run"]);
    run.expect(0);
    assert_eq!(run.n("delivered"), 10);
    assert_eq!(osmem().count(&c.index), 20);
    assert_eq!(c.ids(), ids_of(&events, "id"));
}

fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn event_on_a_window_boundary_is_delivered_once() {
    skip_unless!(Need::Osmem);
    let c = Case::new();
    let boundary = c.start + chrono::Duration::hours(1);
    let mut events = c.v1_events("a", 4, c.start + chrono::Duration::minutes(10), 60);
    events.push(v1_event("edge", boundary, "cluster-1", "nodeAdded"));
    c.fake.add(events[4..].to_vec());
    events.extend(c.v1_events("b", 6, boundary + chrono::Duration::minutes(10), 60));

    // Windows of one hour: [start, start+1h] holds a-* and edge (the fake's bounds are
    // inclusive); the next window's query starts a second before and returns edge again.
    // BATCH_SIZE=7 ends the first run inside the second window.
    let env = c
        .env()
        .set("CASTAI_WINDOW", "1h")
        .set("BATCH_SIZE", "7")
        .set("CHUNK_SIZE", "3");
    let run = env.run(&["run"]);
    run.expect(0);
    assert_eq!(run.n("selected"), 7, "edge is handed out once");
    assert_eq!(state_check_point(&c.state()), boundary);
    let edge_queries = c
        .fake
        .requests()
        .iter()
        .filter(|r| {
            r.get("fromDate").is_some_and(|f| {
                let f: DateTime<Utc> = f.parse().unwrap();
                f <= boundary
            })
        })
        .count();
    assert_eq!(edge_queries, 2, "both windows' queries cover the boundary");

    // The next run re-reads the second window: edge and the two b-* already delivered are
    // skipped, the four others delivered.
    let run = env.set("BATCH_SIZE", "100").run(&["run"]);
    run.expect(0);
    assert_eq!(run.n("selected"), 4);
    assert_eq!(run.n("already_present"), 0);
    assert_eq!(osmem().count(&c.index), 11);
    assert_eq!(c.ids(), ids_of(&events, "id"));
}

#[test]
fn rate_limited_then_success() {
    skip_unless!(Need::Osmem);
    let c = Case::new();
    let events = c.v1_events("r", 15, c.start + chrono::Duration::minutes(1), 1);
    c.fake.fail_429(3);
    let run = c.env().run(&["run"]);
    run.expect(0);
    assert_eq!(run.n("delivered"), 15);
    assert_eq!(c.ids(), ids_of(&events, "id"));
    let statuses: Vec<u16> = c.fake.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [429, 429, 429, 200, 200]);
    assert_eq!(run.stderr.matches("retrying").count(), 3, "{}", run.stderr);

    // Still limited after the retries: the run fails (exit 1) and the state stays, all but
    // the record of how the last run ended.
    let without_runs = |mut s: Value| {
        s.as_object_mut().unwrap().remove("runs");
        s
    };
    let before = c.state();
    c.fake.fail_429(10);
    let run = c.env().set("CASTAI_MAX_RETRIES", "2").run(&["run"]);
    run.expect(1);
    assert!(run.stderr.contains("429"), "{}", run.stderr);
    assert_eq!(c.state()["runs"]["last"]["exit_code"], 1);
    assert_eq!(without_runs(c.state()), without_runs(before));
}

#[test]
fn untrusted_certificate_fails_at_once() {
    let c = Case::new();
    c.v1_events("t", 3, c.start + chrono::Duration::minutes(1), 1);
    let (cert, key) = common::tls::self_signed(c.dir.path());
    let front = common::tls::tls_front(&cert, &key, &c.fake.url);
    let env = c
        .env()
        .set(
            "CASTAI_API_URL",
            &format!("https://127.0.0.1:{}", front.port),
        )
        .set("CASTAI_MAX_RETRIES", "5");
    for command in ["run", "check"] {
        let run = env.run(&[command]);
        run.expect(1);
        assert!(
            run.stderr
                .contains("not trusted by the system's root certificates"),
            "{}",
            run.stderr
        );
        assert!(run.stderr.contains("UnknownIssuer"), "{}", run.stderr);
        assert!(!run.stderr.contains("retrying"), "{}", run.stderr);
        let errors: Vec<_> = run.stderr.lines().filter(|l| l.contains("ERROR")).collect();
        assert_eq!(errors.len(), 1, "{}", run.stderr);
    }
    assert!(c.fake.requests().is_empty(), "nothing got through");
    assert_eq!(osmem().count(&c.index), 0);
}

#[test]
fn wrong_key_is_a_config_error_naming_castai_api_key() {
    skip_unless!(Need::Osmem);
    let c = Case::new();
    c.v1_events("u", 3, c.start + chrono::Duration::minutes(1), 1);
    c.env().run(&["run"]).expect(0);
    let without_runs = |mut s: Value| {
        s.as_object_mut().unwrap().remove("runs");
        s
    };
    let before = c.state();

    let wrong = "wrong-key-that-must-not-be-printed";
    for command in ["run", "check"] {
        let run = c.env().set("CASTAI_API_KEY", wrong).run(&[command]);
        run.expect(2);
        assert!(run.stderr.contains("CASTAI_API_KEY"), "{}", run.stderr);
        assert!(run.stderr.contains("401"), "{}", run.stderr);
        assert!(!run.stderr.contains(wrong) && !run.stderr.contains(KEY));
        let errors: Vec<_> = run.stderr.lines().filter(|l| l.contains("ERROR")).collect();
        assert_eq!(errors.len(), 1, "{}", run.stderr);
    }
    // Nothing moved; the failed run is recorded, so `status` does not show the old success as
    // the last run.
    assert_eq!(without_runs(c.state()), without_runs(before));
    assert_eq!(c.state()["runs"]["last"]["exit_code"], 2);
    assert_eq!(c.state()["runs"]["last_success"]["exit_code"], 0);
    assert_eq!(osmem().count(&c.index), 3);
    assert!(c.fake.requests().iter().any(|r| r.status == 401));
}

#[test]
fn item_with_unparseable_time_is_reported_kept_and_parked() {
    skip_unless!(Need::Osmem);
    let c = Case::new();
    let first = c.start + chrono::Duration::minutes(1);
    let mut events = c.v1_events("t", 4, first, 10);
    let mut bad = v1_event(
        "bad-time",
        first + chrono::Duration::seconds(5),
        "cluster-1",
        "x",
    );
    bad.json["time"] = Value::String("31.12.2024 25:00".into());
    c.fake.add([bad.clone()]);
    events.push(bad);

    let env = c.env().set("MAX_ATTEMPTS", "2");
    let run = env.run(&["run"]);
    run.expect(3);
    assert_eq!(run.n("delivered"), 4);
    assert_eq!(run.n("rejected"), 1);
    let warning = run
        .stderr
        .lines()
        .find(|l| l.contains("bad-time"))
        .unwrap_or_else(|| panic!("{}", run.stderr));
    assert!(warning.contains("unparseable time"), "{warning}");
    assert_eq!(osmem().count(&c.index), 4);
    // It does not hold up the checkpoint, and the item is kept as CAST AI sent it.
    let state = c.state();
    assert!(state_check_point(&state) > c.start);
    let failed = &state["failed"][0];
    assert_eq!(failed["key"], "bad-time");
    assert_eq!(failed["item"], events[4].json);
    assert_eq!(failed["attempts"], 1);

    // Retried on the next run, then parked and listed every run.
    let run = env.run(&["run"]);
    run.expect(3);
    assert_eq!(
        (run.n("selected"), run.n("rejected"), run.n("parked")),
        (1, 1, 1)
    );
    let run = env.run(&["run"]);
    run.expect(3);
    assert_eq!((run.n("selected"), run.n("parked")), (0, 1));
    assert!(run.stderr.contains("parked, not sent"), "{}", run.stderr);

    // retry-failed makes it eligible again; it is never dropped.
    env.run(&["retry-failed"]).expect(0);
    let run = env.run(&["run"]);
    run.expect(3);
    assert_eq!((run.n("selected"), run.n("rejected")), (1, 1));
    assert_eq!(c.state()["failed"].as_array().unwrap().len(), 1);
}

#[test]
fn corrupt_state_file_stops_the_run() {
    skip_unless!(Need::Osmem);
    let c = Case::new();
    c.v1_events("c", 3, c.start + chrono::Duration::minutes(1), 1);
    let path = c.state_file();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, "{\"check_point\": \"2024-05-").unwrap();
    let run = c.env().run(&["run"]);
    run.expect(2);
    assert!(run.stderr.contains("CASTAI_STATE_FILE"), "{}", run.stderr);
    assert!(
        run.stderr.contains(path.to_str().unwrap()),
        "{}",
        run.stderr
    );
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "{\"check_point\": \"2024-05-"
    );
    assert!(c.fake.requests().is_empty());
    assert_eq!(osmem().count(&c.index), 0);
}

#[test]
fn missing_settings_are_config_errors() {
    skip_unless!(Need::Osmem);
    let c = Case::new();
    let run = c.env().set("CASTAI_API_KEY", "").run(&["run"]);
    run.expect(2);
    assert!(run.stderr.contains("CASTAI_API_KEY"), "{}", run.stderr);
    let run = c.env().set("CASTAI_API_VERSION", "v3").run(&["run"]);
    run.expect(2);
    assert!(run.stderr.contains("CASTAI_API_VERSION"), "{}", run.stderr);
    let blocked = c.dir.path().join("file");
    std::fs::write(&blocked, "").unwrap();
    let run = c
        .env()
        .set(
            "CASTAI_STATE_FILE",
            blocked.join("state.json").to_str().unwrap(),
        )
        .run(&["run"]);
    run.expect(2);
    assert!(run.stderr.contains("CASTAI_STATE_FILE"), "{}", run.stderr);
    assert!(c.fake.requests().is_empty());
}

#[test]
fn killed_after_shipping_before_saving_reships_only_that_page() {
    skip_unless!(Need::Osmem);
    let c = Case::new();
    let events = c.v1_events("f", 30, c.start + chrono::Duration::minutes(5), 3);
    // Stop the run right after the sink acknowledged page 2, before the state is saved.
    let paused = c.env().paused_at("after_ship", 2, &["run"]);
    paused.kill();
    assert_eq!(osmem().count(&c.index), 20);
    assert_eq!(c.state()["acked"].as_array().unwrap().len(), 10);

    let run = c.env().run(&["run"]);
    run.expect(0);
    assert_eq!(
        run.n("already_present"),
        10,
        "page 2 again, under the same ids"
    );
    assert_eq!(run.n("delivered"), 10);
    assert_eq!(osmem().count(&c.index), 30);
    assert_eq!(c.ids(), ids_of(&events, "id"));
}

/// INTEGRITY_CHAIN with an API source: the head lives in the state file and moves with each
/// page's acknowledgement, so a run killed after shipping links the same events the same way
/// again; `verify --chain` then finds the chain whole, and a deleted document is named.
#[test]
fn the_integrity_chain_lives_in_the_state_file_and_survives_a_crash() {
    skip_unless!(Need::Osmem);
    let c = Case::new();
    c.v1_events("g", 30, c.start + chrono::Duration::minutes(5), 3);
    let env = c.env().set("INTEGRITY_CHAIN", "true").set(
        "INTEGRITY_SIGNING_KEY",
        "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=",
    );
    env.paused_at("after_ship", 2, &["run"]).kill();
    assert_eq!(c.state()["chain"]["head"]["seq"], 10);
    let run = env.run(&["run"]);
    run.expect(0);
    assert_eq!(run.n("already_present"), 10, "page 2 again, same links");
    assert_eq!(c.state()["chain"]["head"]["seq"], 30);
    assert_eq!(
        c.state()["chain"]["checkpoints"].as_array().unwrap().len(),
        1
    );
    let clean = env.run(&["verify", "--chain"]);
    clean.expect(0);
    assert!(
        clean
            .stdout
            .contains("30 linked documents, 0 voids, 1 checkpoints"),
        "{}",
        clean.stdout
    );
    let docs = osmem().docs(&c.index);
    let (gone, doc) = docs
        .iter()
        .find(|(_, d)| d["integrity"]["seq"] == 17)
        .unwrap();
    assert!(doc["integrity"]["chain"]
        .as_str()
        .unwrap()
        .starts_with("castai:"));
    ureq::delete(&format!(
        "{}/{}/_doc/{gone}?refresh=true",
        osmem().url,
        c.index
    ))
    .call()
    .unwrap();
    let broken = env.run(&["verify", "--chain"]);
    broken.expect(1);
    assert!(
        broken.stdout.contains("first break: missing: seq 17"),
        "{}",
        broken.stdout
    );
}

/// Routing: a run takes only the topics it accepts (the event type by default) and names the
/// index after topic and routing key (the cluster); the rest is left for a run with its own
/// state file, and a state file of one selection is refused to another.
#[test]
fn accept_topics_and_an_index_per_topic_and_cluster() {
    skip_unless!(Need::Osmem);
    let c = Case::new();
    let first = c.start + chrono::Duration::minutes(30);
    c.v1_events("del", 5, first, 7);
    let added: Vec<Event> = (0..4)
        .map(|i| {
            v1_event(
                &format!("add-{i:03}"),
                first + chrono::Duration::seconds(3 + 7 * i),
                "cluster-2",
                "nodeAdded",
            )
        })
        .collect();
    c.fake.add(added.clone());
    let template = format!("{}-{{topic}}-{{routing_key}}", c.index);
    let env = c
        .env()
        .set("CASTAI_LAG", "0")
        .set("ELASTICSEARCH_APP_AUDIT_LOG_INDEX", &template);

    let run = env
        .clone()
        .set("ACCEPT_TOPICS", "clusterDeleted")
        .run(&["run"]);
    run.expect(0);
    assert_eq!(run.n("delivered"), 5, "{}", run.stderr);
    assert_eq!(run.n("not_accepted"), 4);
    let deleted = format!("{}-clusterdeleted-cluster-1", c.index);
    assert_eq!(osmem().count(&deleted), 5);
    assert_eq!(
        c.state()["accepts"],
        "topics clusterDeleted of topic; routing keys (all)"
    );

    // The same state file for another selection would skip the first one's events for good.
    let refused = env.clone().set("ACCEPT_TOPICS", "nodeAdded").run(&["run"]);
    refused.expect(2);
    assert!(
        refused.stderr.contains("CASTAI_STATE_FILE") && refused.stderr.contains("ACCEPT_TOPICS"),
        "{}",
        refused.stderr
    );

    // With a state file of its own, it takes what the first left.
    let own = c.dir.path().join("state").join("nodes.json");
    let run = env
        .clone()
        .set("CASTAI_STATE_FILE", own.to_str().unwrap())
        .set("ACCEPT_TOPICS", "nodeAdded")
        .run(&["run"]);
    run.expect(0);
    assert_eq!(run.n("delivered"), 4, "{}", run.stderr);
    let nodes = osmem().ids(&format!("{}-nodeadded-cluster-2", c.index));
    assert_eq!(nodes.into_iter().collect::<Vec<_>>(), ids_of(&added, "id"));

    // The first selection's checkpoint moved past what it did not accept: nothing again.
    let again = env.set("ACCEPT_TOPICS", "clusterDeleted").run(&["run"]);
    again.expect(0);
    assert_eq!(again.n("delivered"), 0);
    assert_eq!(osmem().count(&deleted), 5);
}

/// More events of other topics than BATCH_SIZE within one second (the smallest window) must not
/// hold the checkpoint: they are acknowledged for this selection, and the accepted events after
/// them arrive within a few runs.
#[test]
fn a_second_full_of_other_topics_does_not_hold_the_checkpoint() {
    skip_unless!(Need::Osmem);
    let c = Case::new();
    let at = c.start + chrono::Duration::minutes(30);
    c.v1_events("other", 12, at, 0);
    let wanted: Vec<Event> = (0..3)
        .map(|i| {
            v1_event(
                &format!("want-{i}"),
                at + chrono::Duration::seconds(5 + i),
                "cluster-1",
                "nodeAdded",
            )
        })
        .collect();
    c.fake.add(wanted.clone());
    let env = c
        .env()
        .set("CASTAI_LAG", "0")
        .set("BATCH_SIZE", "5")
        .set("CHUNK_SIZE", "5")
        .set("ACCEPT_TOPICS", "nodeAdded");
    let mut delivered = 0;
    for _ in 0..6 {
        let run = env.run(&["run"]);
        assert!(run.code == 0, "{}", run.stderr);
        delivered += run.n("delivered");
    }
    assert_eq!(delivered, 3);
    assert_eq!(c.ids(), ids_of(&wanted, "id"));
}

/// `status` for CAST AI: the last runs come from the state file (read without the run's lock),
/// the backlog is unknown, and a failed last run or an old last success is unhealthy.
#[test]
fn status_reads_the_state_file() {
    skip_unless!(Need::Osmem);
    let c = Case::new();
    let status = |env: &Env, args: &[&str]| -> (i32, Value) {
        let mut all = vec!["status", "--json"];
        all.extend_from_slice(args);
        let run = env.run(&all);
        let v = serde_json::from_str(&run.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}\n{}", run.stdout, run.stderr));
        (run.code, v)
    };
    let env = c.env().set("CASTAI_LAG", "0");
    let (code, s) = status(&env, &[]);
    assert_eq!(code, 0, "{s}");
    assert_eq!(s["backlog"], Value::Null);
    assert_eq!(s["last_run"], Value::Null);
    let (code, _) = status(&env, &["--max-since-success", "1h"]);
    assert_eq!(code, 1, "no successful run yet");
    // The age of the oldest unsent event is unknown here: asking for it is a usage error.
    let age = env.run(&["status", "--max-age", "1h"]);
    age.expect(2);
    assert!(age.stderr.contains("--max-since-success"), "{}", age.stderr);

    c.v1_events("st", 3, c.start + chrono::Duration::minutes(1), 1);
    env.run(&["run"]).expect(0);
    let (code, s) = status(&env, &["--max-since-success", "1h"]);
    assert_eq!(code, 0, "{s}");
    assert_eq!(s["last_run"]["exit_code"], 0);
    assert_eq!(s["last_run"]["delivered"], 3);
    // While a run holds the state file's lock, `status` still reads it (a run is refused).
    let mut lock_name = c.state_file().into_os_string();
    lock_name.push(".lock");
    let held = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_name)
        .unwrap();
    held.lock().unwrap();
    let (code, s) = status(&env, &[]);
    assert_eq!(code, 0, "{s}");
    assert_eq!(s["last_run"]["delivered"], 3);
    env.run(&["run"]).expect(1);
    drop(held);

    // A run that fails after it read the state (the sink is down) is recorded too.
    std::thread::sleep(Duration::from_millis(20));
    c.v1_events("late", 2, Utc::now(), 0);
    std::thread::sleep(Duration::from_millis(20));
    let down = env
        .clone()
        .set("ELASTICSEARCH_PORT", &closed_port().to_string())
        .set("ELASTICSEARCH_MAX_RETRIES", "0");
    down.run(&["run"]).expect(1);
    let (code, s) = status(&env, &[]);
    assert_eq!(code, 1, "{s}");
    assert_eq!(s["last_run"]["exit_code"], 1);
    assert_eq!(s["last_success"]["delivered"], 3);
    assert_eq!(s["healthy"], false);
}
