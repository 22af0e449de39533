//! The Cato source against the fake feeds (tests/common/fakes/cato.rs), into osmem-server:
//! eventsFeed across runs, filters, rate limits, a crash between ship and save, a refused key,
//! expired markers, unchanged markers, and auditFeed windows with the inclusive boundary. The
//! fake's own strictness is tested first, without the binary.

#[macro_use]
mod common;

use chrono::{DateTime, Utc};
use common::fakes::cato::{audit, event, Event, ExpiredMarkers, FakeCato};
use common::*;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;

const KEY: &str = "cato-test-key-0123456789";
const ACCOUNT: &str = "4242";

struct Case {
    fake: FakeCato,
    index: String,
    dir: tempfile::TempDir,
}

impl Case {
    fn new() -> Case {
        Case {
            fake: FakeCato::start(KEY),
            index: unique("cato"),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn state_file(&self) -> PathBuf {
        self.dir.path().join("cato.json")
    }

    fn state(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.state_file()).unwrap()).unwrap()
    }

    fn env(&self, feed: &str) -> Env {
        Env::osmem(&self.index)
            .set("AUDIT_LOGGER_TYPE", "CATO")
            .set("CATO_API_URL", &self.fake.url)
            .set("CATO_API_KEY", KEY)
            .set("CATO_ACCOUNT_ID", ACCOUNT)
            .set("CATO_FEED", feed)
            .set("CATO_STATE_FILE", self.state_file().to_str().unwrap())
            .set("CATO_RETRY_INITIAL_MS", "10")
            .set("CHUNK_SIZE", "1000")
    }

    /// `n` events numbered from `from`, a second apart, alternating two types.
    fn events(&self, from: usize, n: usize) -> Vec<Event> {
        let t0: DateTime<Utc> = "2026-02-26T09:00:00Z".parse().unwrap();
        let events: Vec<Event> = (from..from + n)
            .map(|i| {
                let (ty, sub) = if i % 2 == 0 {
                    ("Security", "Internet Firewall")
                } else {
                    ("Connectivity", "Connected")
                };
                event(
                    ACCOUNT,
                    &format!("ev{i:05}"),
                    t0 + chrono::Duration::seconds(i as i64),
                    ty,
                    sub,
                )
            })
            .collect();
        self.fake.add_events(events.clone());
        events
    }

    fn count(&self) -> u64 {
        osmem().count(&self.index)
    }
}

fn doc_id(e: &Event) -> String {
    format!(
        "{ACCOUNT}:{}:{}",
        e.fields["event_id"].as_str().unwrap(),
        e.fields["time"].as_str().unwrap()
    )
}

fn post(url: &str, key: &str, body: Value) -> (u16, Value) {
    match ureq::post(url)
        .set("x-api-key", key)
        .set("Content-Type", "application/json")
        .send_json(body)
    {
        Ok(r) => (r.status(), r.into_json().unwrap()),
        Err(ureq::Error::Status(s, r)) => (s, r.into_json().unwrap_or(Value::Null)),
        Err(e) => panic!("{e}"),
    }
}

/// The fake is as strict as the spec's §9 says, for both query forms.
#[test]
fn the_fake_feeds_are_strict() {
    let fake = FakeCato::start(KEY);
    let t0: DateTime<Utc> = "2026-03-01T01:00:00Z".parse().unwrap();
    fake.add_events((0..5).map(|i| event(ACCOUNT, &format!("e{i}"), t0, "Security", "X")));
    fake.add_events([event("77", "other", t0, "Security", "X")]);
    fake.add_audits((0..3).map(|i| {
        audit(
            ACCOUNT,
            t0 + chrono::Duration::seconds(i),
            "Jane",
            "MODIFIED",
            "HQ",
        )
    }));
    // The inline form Cato's own eventsFeed.py sends (literals, anonymous query).
    let inline = r#"{ eventsFeed(accountIDs:["4242"], marker:"", filters:[{fieldName:event_type, operator:is, values:["Security"]}]) { marker fetchedCount accounts { id records { time fieldsMap } } } }"#;
    let (status, r) = post(&fake.url, KEY, json!({ "query": inline }));
    assert_eq!(status, 200, "{r}");
    let data = &r["data"]["eventsFeed"];
    assert_eq!(data["fetchedCount"], 5, "{r}");
    assert_eq!(data["accounts"][0]["records"].as_array().unwrap().len(), 5);
    assert!(
        data["accounts"][0].get("errorString").is_none(),
        "only what was selected"
    );
    let marker = data["marker"].as_str().unwrap().to_string();
    // The variables form, continuing from that marker with the same filter: nothing new.
    let q = "query q($a:[ID!],$m:String,$f:[EventFeedFieldFilterInput!]){eventsFeed(accountIDs:$a,marker:$m,filters:$f){marker fetchedCount}}";
    let security = json!([{"fieldName": "event_type", "operator": "is", "values": ["Security"]}]);
    let (_, r) = post(
        &fake.url,
        KEY,
        json!({"query": q, "variables": {"a": ["4242"], "m": marker, "f": security}}),
    );
    assert_eq!(r["data"]["eventsFeed"]["fetchedCount"], 0, "{r}");
    // A marker is bound to its query: another account list or filter set is refused; a forged
    // one too.
    for (accounts, m, f) in [
        (json!(["77"]), marker.as_str(), security.clone()),
        (json!(["4242"]), marker.as_str(), json!([])),
        (json!(["4242"]), "forged", security.clone()),
    ] {
        let (_, r) = post(
            &fake.url,
            KEY,
            json!({"query": q, "variables": {"a": accounts, "m": m, "f": f}}),
        );
        assert!(
            r["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains("marker"),
            "{r}"
        );
    }
    // Validation: hasMore is auditFeed's, fieldNameInput is not the schema's key, enums are
    // checked, timeFrame is required and must parse, variables must be declared.
    for (query, vars) in [
        (
            r#"{eventsFeed(accountIDs:["4242"]){marker hasMore}}"#,
            json!({}),
        ),
        (
            r#"{eventsFeed(accountIDs:["4242"], marker:"", limit:5){marker}}"#,
            json!({}),
        ),
        (
            r#"{eventsFeed(accountIDs:["4242"], filters:[{fieldName:event_type, operator:like, values:["a"]}]){marker}}"#,
            json!({}),
        ),
        (
            r#"{auditFeed(accountIDs:["4242"], timeFrame:"last.PT5M", filters:[{fieldNameInput:{AuditFieldName:admin}, operator:is, values:["a"]}]){marker}}"#,
            json!({}),
        ),
        (r#"{auditFeed(accountIDs:["4242"]){marker}}"#, json!({})),
        (
            r#"{auditFeed(accountIDs:["4242"], timeFrame:"yesterday"){marker}}"#,
            json!({}),
        ),
        (
            r#"{eventsFeed(accountIDs:$a){marker}}"#,
            json!({"a": ["4242"]}),
        ),
        (r#"{eventsFeed(accountIDs:["4242"]){accounts}}"#, json!({})),
        ("{eventsFeed(", json!({})),
    ] {
        let (status, r) = post(&fake.url, KEY, json!({"query": query, "variables": vars}));
        assert_eq!(status, 400, "{query}: {r}");
        assert!(r["errors"][0]["message"].is_string(), "{r}");
    }
    // auditFeed, both timeFrame forms; the boundary record comes again after a marker.
    fake.audit_page(2);
    let aq = "query auditFeed($accountIDs:[ID!],$timeFrame:TimeFrame!,$marker:String){auditFeed(accountIDs:$accountIDs,timeFrame:$timeFrame,marker:$marker){marker fetchedCount hasMore accounts{id records{time fieldsMap}}}}";
    let tf = "utc.2026-03-01/{00:00:00--02:00:00}";
    let (_, r) = post(
        &fake.url,
        KEY,
        json!({"query": aq, "variables": {"accountIDs": ["4242"], "timeFrame": tf, "marker": ""}}),
    );
    let page1 = &r["data"]["auditFeed"];
    assert_eq!(
        (page1["fetchedCount"].as_u64(), page1["hasMore"].as_bool()),
        (Some(2), Some(true)),
        "{r}"
    );
    let (_, r) = post(
        &fake.url,
        KEY,
        json!({"query": aq, "variables": {"accountIDs": ["4242"], "timeFrame": tf, "marker": page1["marker"]}}),
    );
    let page2 = &r["data"]["auditFeed"];
    assert_eq!(page2["hasMore"], false, "{r}");
    assert_eq!(
        page2["accounts"][0]["records"][0], page1["accounts"][0]["records"][1],
        "inclusive boundary"
    );
    // The marker belongs to its timeFrame.
    let (_, r) = post(
        &fake.url,
        KEY,
        json!({"query": aq, "variables": {"accountIDs": ["4242"], "timeFrame": "last.P1D", "marker": page1["marker"]}}),
    );
    assert!(r["errors"].is_array(), "{r}");
    // A wrong key: HTTP 200 "permission denied" as the live API.
    let (status, r) = post(&fake.url, "wrong", json!({"query": inline}));
    assert_eq!(status, 200);
    assert_eq!(r["errors"][0]["extensions"]["code"], "Code104", "{r}");
    // Rate limits per account and operation: auditFeed allows 5 a minute (3 used above).
    let tf_q = |m: &str| json!({"query": aq, "variables": {"accountIDs": ["4242"], "timeFrame": tf, "marker": m}});
    for _ in 0..2 {
        let (_, r) = post(&fake.url, KEY, tf_q(""));
        assert!(r["data"]["auditFeed"].is_object(), "{r}");
    }
    let raw = ureq::post(&fake.url)
        .set("x-api-key", KEY)
        .set("Content-Type", "application/json")
        .send_string(&tf_q("").to_string())
        .unwrap()
        .into_string()
        .unwrap();
    assert!(
        raw.starts_with(r#"{"errors":[{"message":"rate limit for operation: auditFeed"#),
        "{raw}"
    );
    // Only JSON bodies.
    let r = ureq::post(&fake.url)
        .set("x-api-key", KEY)
        .send_string("query=x");
    assert!(matches!(r, Err(ureq::Error::Status(415, _))));
}

/// 5,000 events over four runs, BATCH_SIZE smaller than a page: each exactly once, every
/// page's marker saved after its records were acknowledged.
#[test]
fn five_thousand_events_over_several_runs_each_exactly_once() {
    skip_unless!(Need::Osmem);
    let c = Case::new();
    let mut all = c.events(0, 3500);
    let env = c.env("events").set("BATCH_SIZE", "2000");

    let run = env.run(&["run"]);
    run.expect(0);
    // A page is a unit: the first run finishes its 3000 records though BATCH_SIZE is 2000.
    assert_eq!(run.n("delivered"), 3000);
    assert_eq!(c.count(), 3000);
    let marker1 = c.state()["marker"].as_str().unwrap().to_string();
    assert!(!marker1.is_empty());

    let run = env.run(&["run"]);
    run.expect(0);
    assert_eq!(run.n("delivered"), 500);
    all.extend(c.events(3500, 1500));
    let run = env.run(&["run"]);
    run.expect(0);
    assert_eq!(run.n("delivered"), 1500);
    let run = env.run(&["run"]);
    run.expect(0);
    assert_eq!(run.n("selected"), 0);

    assert_eq!(c.count(), 5000);
    let ids = osmem().ids(&c.index);
    let expected: std::collections::BTreeSet<String> = all.iter().map(doc_id).collect();
    assert_eq!(ids, expected);

    // Every call in the variables form; each run continued from the marker the last one saved.
    let requests = c.fake.requests();
    assert!(requests.iter().all(|r| r.status == 200));
    let sent: Vec<&str> = requests
        .iter()
        .map(|r| r.body["variables"]["marker"].as_str().unwrap())
        .collect();
    assert_eq!(sent[0], "");
    assert_eq!(sent[1], marker1, "{sent:?}");
    assert!(requests
        .iter()
        .all(|r| r.body["variables"]["accountIDs"] == json!([ACCOUNT])));

    // The document: the record as returned plus @timestamp (fieldsMap.time) and topic.
    let docs = osmem().docs(&c.index);
    let e = &all[1];
    let (_, doc) = docs.iter().find(|(id, _)| *id == doc_id(e)).unwrap();
    assert_eq!(doc["fieldsMap"], Value::Object(e.fields.clone()));
    assert_eq!(doc["topic"], "Connectivity");
    assert_eq!(doc["@timestamp"], "2026-02-26T09:00:01.000Z");
}

#[test]
fn event_type_filters_are_sent_and_bind_the_state_file() {
    skip_unless!(Need::Osmem);
    let c = Case::new();
    let all = c.events(0, 40);
    let env = c.env("events").set("CATO_EVENT_TYPES", "Security");
    let run = env.run(&["run"]);
    run.expect(0);
    assert_eq!(run.n("delivered"), 20);
    let expected: std::collections::BTreeSet<String> = all
        .iter()
        .filter(|e| e.fields["event_type"] == "Security")
        .map(doc_id)
        .collect();
    assert_eq!(osmem().ids(&c.index), expected);
    assert_eq!(
        c.fake.requests()[0].body["variables"]["filters"],
        json!([{"fieldName": "event_type", "operator": "in", "values": ["Security"]}])
    );
    // The marker belongs to that filter set: another one is refused, nothing fetched.
    c.fake.clear_requests();
    let run = c.env("events").run(&["run"]);
    run.expect(2);
    assert!(run.stderr.contains("CATO_STATE_FILE"), "{}", run.stderr);
    assert!(c.fake.requests().is_empty());
}

#[test]
fn rate_limited_mid_run_backs_off_and_finishes() {
    skip_unless!(Need::Osmem);
    let c = Case::new();
    c.events(0, 6000);
    c.fake.rate_limit_after(1, 3);
    let run = c.env("events").run(&["run"]);
    run.expect(0);
    assert_eq!(run.n("delivered"), 6000);
    assert_eq!(c.count(), 6000);
    assert!(run.stderr.contains("rate limited"), "{}", run.stderr);
    let limited = c
        .fake
        .requests()
        .iter()
        .filter(|r| {
            r.answer
                .starts_with(r#"{"errors":[{"message":"rate limit for operation"#)
        })
        .count();
    assert_eq!(limited, 3);
}

/// Rate limited for good: the time budget ends the run cleanly, the marker at the last
/// acknowledged page, instead of waiting through the next cron interval.
#[test]
fn time_budget_stops_a_rate_limited_run_cleanly() {
    skip_unless!(Need::Osmem);
    let c = Case::new();
    c.events(0, 3500);
    c.fake.rate_limit_after(1, 10_000);
    let run = c
        .env("events")
        .set("CATO_MAX_RUN_SECONDS", "2")
        .set("CATO_MAX_RETRIES", "100")
        .set("CATO_RETRY_INITIAL_MS", "200")
        .run(&["run"]);
    run.expect(0);
    assert_eq!(run.n("delivered"), 3000);
    assert!(
        run.stderr.contains("CATO_MAX_RUN_SECONDS"),
        "{}",
        run.stderr
    );
    let saved = c.state()["marker"].as_str().unwrap().to_string();
    assert!(!saved.is_empty());

    c.fake.rate_limit_after(0, 0);
    let run = c.env("events").run(&["run"]);
    run.expect(0);
    assert_eq!(run.n("delivered"), 500);
    assert_eq!(c.count(), 3500);
}

#[test]
fn killed_between_ship_and_save_reships_only_that_page_harmlessly() {
    skip_unless!(Need::Osmem);
    let c = Case::new();
    let all = c.events(0, 6000);
    // Chunks of 1000: the fifth shipment is the second page's second piece.
    let paused = c.env("events").paused_at("after_ship", 6, &["run"]);
    // Shipped: all 6000; saved: only the first page's marker.
    let first_marker = c.state()["marker"].as_str().unwrap().to_string();
    paused.kill();
    assert_eq!(c.count(), 6000);
    assert_eq!(c.state()["marker"], first_marker.as_str());

    let run = c.env("events").run(&["run"]);
    run.expect(0);
    assert_eq!(
        run.n("already_present"),
        3000,
        "the second page again, same ids"
    );
    assert_eq!(run.n("delivered"), 0);
    assert_eq!(c.count(), 6000);
    let expected: std::collections::BTreeSet<String> = all.iter().map(doc_id).collect();
    assert_eq!(osmem().ids(&c.index), expected);
    assert_ne!(c.state()["marker"], first_marker.as_str());
}

/// INTEGRITY_CHAIN with the Cato feed: a feed page is linked from the head saved with the
/// marker before it, so a run killed in the middle of a feed page links it again the same way.
#[test]
fn the_integrity_chain_survives_a_crash_in_the_middle_of_a_feed_page() {
    skip_unless!(Need::Osmem);
    let c = Case::new();
    c.events(0, 6000);
    let env = c.env("events").set("INTEGRITY_CHAIN", "true").set(
        "INTEGRITY_SIGNING_KEY",
        "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=",
    );
    // The second feed page's second piece shipped; the file holds the first page's head.
    env.paused_at("after_ship", 5, &["run"]).kill();
    let head = c.state()["chain"]["head"]["seq"].as_u64().unwrap();
    assert!(head > 0 && head < 5000, "{head}");
    env.run(&["run"]).expect(0);
    assert_eq!(c.state()["chain"]["head"]["seq"], 6000);
    let clean = env.run(&["verify", "--chain", "--json"]);
    assert_eq!(clean.code, 0, "{}", clean.stdout);
    let report: Value = serde_json::from_str(&clean.stdout).unwrap();
    assert_eq!(report["chains"][0]["documents"], 6000);
}

#[test]
fn refused_key_is_exit_2_naming_the_variable_never_the_key() {
    skip_unless!(Need::Osmem);
    let c = Case::new();
    c.events(0, 5);
    c.env("events").run(&["run"]).expect(0);
    let before = c.state()["marker"].clone();
    c.events(5, 5);
    let wrong = "wrong-cato-key-never-printed";
    for command in ["run", "check"] {
        let run = c.env("events").set("CATO_API_KEY", wrong).run(&[command]);
        run.expect(2);
        assert!(run.stderr.contains("CATO_API_KEY"), "{}", run.stderr);
        assert!(run.stderr.contains("permission denied"), "{}", run.stderr);
        assert!(!run.stderr.contains(wrong) && !run.stderr.contains(KEY));
    }
    // HTTP 401/403, as other deployments answer, the same.
    for status in [401, 403] {
        c.fake.fail_next(&[status]);
        let run = c.env("events").run(&["run"]);
        run.expect(2);
        assert!(
            run.stderr.contains(&format!("HTTP {status}")),
            "{}",
            run.stderr
        );
    }
    assert_eq!(c.state()["marker"], before, "nothing advanced");
    assert_eq!(c.count(), 5);
    // An account error (errorString) fails the run too, nothing advanced.
    c.fake.account_error(ACCOUNT, "account is suspended");
    let run = c.env("events").run(&["run"]);
    run.expect(1);
    assert!(
        run.stderr.contains("account is suspended"),
        "{}",
        run.stderr
    );
    assert_eq!(c.state()["marker"], before);
    c.fake.clear_account_errors();
    c.env("events").run(&["run"]).expect(0);
    assert_eq!(c.count(), 10);
}

#[test]
fn expired_marker_is_reported_as_a_gap_exit_3() {
    skip_unless!(Need::Osmem);
    let c = Case::new();
    c.events(0, 100);
    c.env("events").run(&["run"]).expect(0);
    // Cato purges 60 of them while the marker expires; 20 new ones arrive.
    c.fake.expire_markers(ExpiredMarkers::Refuse);
    c.fake.purge(60);
    c.events(100, 20);
    let run = c.env("events").run(&["run"]);
    run.expect(3);
    assert!(
        run.stderr.contains("refused the saved marker"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("missing"), "{}", run.stderr);
    // What Cato still has is read again; the 40 old ones were acknowledged under the last
    // marker and are skipped.
    assert_eq!(run.n("selected"), 20);
    assert_eq!(run.n("delivered"), 20);
    assert_eq!(c.count(), 120);
    c.env("events").run(&["run"]).expect(0);

    // A server that resumes silently: the marker's age still tells.
    let mut state = c.state();
    state["marker_saved_at"] = json!((Utc::now() - chrono::Duration::days(4)).to_rfc3339());
    std::fs::write(c.state_file(), state.to_string()).unwrap();
    let run = c.env("events").run(&["run"]);
    run.expect(3);
    assert!(run.stderr.contains("possible gap"), "{}", run.stderr);
}

#[test]
fn unchanged_marker_with_records_does_not_loop() {
    skip_unless!(Need::Osmem);
    let c = Case::new();
    let mut all = c.events(0, 10);
    c.env("events").run(&["run"]).expect(0);
    all.extend(c.events(10, 10));
    c.fake.unchanged_marker(true);
    let run = c.env("events").run(&["run"]);
    run.expect(0);
    assert_eq!(run.n("delivered"), 10);
    assert!(run.stderr.contains("marker unchanged"), "{}", run.stderr);
    assert_eq!(c.fake.requests().len(), 2, "one call, not a loop");
    // Still unchanged: the same records are skipped, one call again.
    let run = c.env("events").run(&["run"]);
    run.expect(0);
    assert_eq!(run.n("selected"), 0);
    assert_eq!(c.fake.requests().len(), 3);
    // Moving again: nothing twice.
    c.fake.unchanged_marker(false);
    all.extend(c.events(20, 5));
    let run = c.env("events").run(&["run"]);
    run.expect(0);
    assert_eq!(run.n("delivered"), 5);
    let expected: std::collections::BTreeSet<String> = all.iter().map(doc_id).collect();
    assert_eq!(osmem().ids(&c.index), expected);
}

#[test]
fn audit_windows_with_the_inclusive_boundary_deliver_each_record_once() {
    skip_unless!(Need::Osmem);
    let c = Case::new();
    let start = Utc::now() - chrono::Duration::hours(1);
    let base = chrono::DateTime::from_timestamp(start.timestamp(), 0).unwrap();
    let records: Vec<_> = (0..25)
        .map(|i| {
            audit(
                ACCOUNT,
                base + chrono::Duration::seconds(60 * i),
                &format!("admin{i}"),
                "MODIFIED",
                "HQ",
            )
        })
        .collect();
    c.fake.add_audits(records.clone());
    // One record a second around where the first run's window ends (now - 2 minutes), so some
    // fall on its boundary and some after it.
    let t0 = DateTime::from_timestamp((Utc::now() - chrono::Duration::minutes(2)).timestamp(), 0)
        .unwrap();
    let dense: u64 = 7;
    c.fake.add_audits((0..dense).map(|i| {
        audit(
            ACCOUNT,
            t0 + chrono::Duration::seconds(i as i64 - 5),
            &format!("b{i}"),
            "CREATED",
            "HQ",
        )
    }));
    c.fake.audit_page(10);
    // Up to 5 calls here: more than auditFeed's 5 a minute would only slow the test.
    c.fake.limit("auditFeed", 100);
    let env = c
        .env("audit")
        .set("CATO_START_FROM", "2h")
        .set("CHUNK_SIZE", "4");
    let run = env.run(&["run"]);
    run.expect(0);
    let first = run.n("delivered");
    assert!((25..25 + dense).contains(&first), "{first}");
    assert_eq!(
        run.n("selected"),
        first,
        "the repeated boundary records are not handed out"
    );
    assert_eq!(c.count(), first);
    let requests = c.fake.requests();
    // Pages of 10 from the second on start with the previous page's last record: 9 new each.
    let calls = if first <= 28 { 3 } else { 4 };
    assert_eq!(requests.len(), calls, "{first} records");
    let tf = requests[0].body["variables"]["timeFrame"].as_str().unwrap();
    assert!(tf.starts_with("utc.{"), "{tf}");
    assert!(requests
        .iter()
        .all(|r| r.body["variables"]["timeFrame"] == tf));
    let state = c.state();
    assert!(
        state["window"].is_null() && state["marker"] == "",
        "{state}"
    );
    let covered: DateTime<Utc> = state["covered_to"].as_str().unwrap().parse().unwrap();
    // The next run's window must reach past the dense records.
    std::thread::sleep(Duration::from_millis(2500));

    let docs = osmem().docs(&c.index);
    assert!(docs
        .iter()
        .all(|(id, d)| id.starts_with("audit-") && d["topic"] == "audit"));
    let admin0 = docs
        .iter()
        .find(|(_, d)| d["fieldsMap"]["admin"] == "admin0")
        .unwrap();
    assert_eq!(
        admin0.1["@timestamp"],
        base.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    );

    // The next window overlaps the last by a second: records on the boundary, given to both
    // windows by the fake, arrive once.
    let run = env.run(&["run"]);
    run.expect(0);
    assert_eq!(c.count(), 25 + dense);
    assert_eq!(run.n("already_present"), 0, "nothing shipped twice");
    let from = requests_from(&c.fake.requests()[calls].body["variables"]["timeFrame"]);
    assert_eq!(from, covered - chrono::Duration::seconds(1));
}

fn requests_from(tf: &Value) -> DateTime<Utc> {
    let tf = tf.as_str().unwrap();
    let inner = tf.strip_prefix("utc.{").unwrap();
    let from = inner.split("--").next().unwrap();
    chrono::NaiveDateTime::parse_from_str(from, "%Y-%m-%d/%H:%M:%S")
        .unwrap()
        .and_utc()
}

#[test]
fn audit_marker_unchanged_mid_window_stops_and_resumes() {
    skip_unless!(Need::Osmem);
    let c = Case::new();
    let base = Utc::now() - chrono::Duration::hours(1);
    c.fake.add_audits((0..12).map(|i| {
        audit(
            ACCOUNT,
            base + chrono::Duration::seconds(i),
            &format!("a{i}"),
            "MODIFIED",
            "HQ",
        )
    }));
    c.fake.audit_page(5);
    c.fake.audit_repeat(false);
    c.fake.limit("auditFeed", 100);
    let env = c.env("audit").set("CATO_START_FROM", "2h");
    // First page, then the marker stops moving: the run ends instead of looping.
    let run = env.clone().set("BATCH_SIZE", "5").run(&["run"]);
    run.expect(0);
    assert_eq!(run.n("delivered"), 5);
    assert!(
        !c.state()["window"].is_null(),
        "the window is kept with its marker"
    );
    c.fake.unchanged_marker(true);
    let run = env.run(&["run"]);
    run.expect(0);
    assert_eq!(run.n("delivered"), 5);
    let calls = c.fake.requests().len();
    assert_eq!(calls, 2);
    c.fake.unchanged_marker(false);
    let run = env.run(&["run"]);
    run.expect(0);
    assert_eq!(c.count(), 12);
    assert_eq!(run.n("delivered"), 2);
}

/// A record that cannot be delivered does not hold the marker: it is kept in the state file as
/// Cato returned it, retried, and parked after MAX_ATTEMPTS (exit 3 throughout).
#[test]
fn undeliverable_record_is_kept_retried_and_parked() {
    skip_unless!(Need::Osmem);
    let c = Case::new();
    let mut bad = c.events(0, 1).remove(0);
    bad.fields.insert("time".into(), json!("soon"));
    c.fake.add_events([bad]);
    c.events(1, 4);
    let env = c.env("events").set("MAX_ATTEMPTS", "2");
    let run = env.run(&["run"]);
    run.expect(3);
    assert_eq!(
        run.n("delivered"),
        5,
        "the good copy of ev00000 and four more"
    );
    let state = c.state();
    let failed = state["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{state}");
    assert_eq!(failed[0]["item"]["fieldsMap"]["time"], "soon");
    assert!(failed[0]["last_error"]
        .as_str()
        .unwrap()
        .contains("fieldsMap.time"));
    let marker = state["marker"].clone();
    assert_ne!(marker, "", "the marker moved past it");

    let run = env.run(&["run"]);
    run.expect(3);
    assert_eq!(c.state()["failed"][0]["attempts"], 2);
    let run = env.run(&["run"]);
    run.expect(3);
    assert!(run.stderr.contains("parked"), "{}", run.stderr);
    assert_eq!(
        c.state()["failed"][0]["attempts"],
        2,
        "parked: not tried again"
    );
    assert_eq!(c.count(), 5);
}
