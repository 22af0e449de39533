//! The CDP archive source end to end: the binary as a process against the fake CDP server
//! (`common::fakes::cdp`), shipping into osmem-server or files.

#[macro_use]
mod common;

use common::fakes::cdp::{ed25519_key, event, rsa_key, Auth, FakeCdp, KeyPair};
use common::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::io::Read;
use std::time::Duration;

/// 2024-05-01T10:00:00Z in epoch milliseconds.
const T0: i64 = 1_714_557_600_000;
const HOUR: i64 = 3_600_000;

fn fake() -> (FakeCdp, KeyPair) {
    let (auth, key) = ed25519_key();
    (FakeCdp::start(auth), key)
}

fn cdp_env(fake: &FakeCdp, key: &KeyPair) -> Env {
    Env::new()
        .set("AUDIT_LOGGER_TYPE", "CDP_ARCHIVE")
        .set("CDP_ENDPOINT_URL", &fake.url)
        .set("CDP_ACCESS_KEY_ID", &key.access_key_id)
        .set("CDP_PRIVATE_KEY", &key.private_key)
        .set("CDP_RETRY_INITIAL_MS", "10")
        .set("HOME", "/nonexistent")
}

fn to_es(env: Env, index: &str) -> Env {
    env.set("ELASTICSEARCH_HOST", "127.0.0.1")
        .set("ELASTICSEARCH_PORT", &osmem().port().to_string())
        .set("ELASTICSEARCH_SCHEME", "http")
        .set("ELASTICSEARCH_APP_AUDIT_LOG_INDEX", index)
        .set("ELASTICSEARCH_RETRY_INITIAL_MS", "50")
}

fn ids(events: &[Value]) -> BTreeSet<String> {
    events
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

/// Event times inside the default batching window (the last 7 days, minus 10 minutes).
fn yesterday_ms() -> i64 {
    chrono::Utc::now().timestamp_millis() - 24 * HOUR
}

#[test]
fn full_run_over_several_batches_and_pages() {
    skip_unless!(Need::Osmem);
    let (fake, key) = fake();
    let mut all = Vec::new();
    for (i, n) in [5, 7, 3].into_iter().enumerate() {
        let events = fake.events(n, T0 + i as i64 * HOUR);
        all.extend(events.clone());
        fake.add_batch(T0 + i as i64 * HOUR, events);
    }
    // Written since the last run: the run's batching task puts them into batches.
    let fresh = fake.events(4, yesterday_ms());
    all.extend(fresh.clone());
    {
        let mut s = fake.state();
        s.unbatched = fresh;
        s.max_page = 2;
        s.faults
            .push_back((Some("listOutstandingArchiveBatches".into()), 429));
        s.faults
            .push_back((Some("listEventsInArchiveBatch".into()), 503));
        s.delays.insert(
            "getBatchEventsForArchivingStatus".into(),
            Duration::from_millis(200),
        );
    }
    let index = unique("cdp");
    let env = to_es(cdp_env(&fake, &key), &index).set("CHUNK_SIZE", "3");
    let run = env.run(&["run"]);
    run.expect(0);
    assert_eq!(
        (run.n("selected"), run.n("delivered"), run.n("marked")),
        (19, 19, 19)
    );
    assert!(run.n("pages") >= 8, "{}", run.summary());

    assert_eq!(osmem().ids(&index), ids(&all));
    let docs = osmem().docs(&index);
    let first = docs.iter().find(|(id, _)| *id == all[0]["id"]).unwrap();
    assert_eq!(first.1["@timestamp"], "2024-05-01T10:00:00.000Z");
    assert_eq!(first.1["eventName"], "getUser");
    assert_eq!(first.1["timestamp"], T0);
    assert!(fake.outstanding().is_empty());
    assert!(fake.marked().len() >= 4);

    // The injected 429 and 503 were retried; pages were followed with the server's tokens.
    let lists = fake.seen("listOutstandingArchiveBatches");
    assert_eq!(lists.iter().filter(|s| s.status == 429).count(), 1);
    assert!(lists.iter().filter(|s| s.status == 200).count() >= 2);
    assert!(lists.iter().any(|s| s.body["pageToken"].is_string()));
    assert!(fake
        .seen("listEventsInArchiveBatch")
        .iter()
        .any(|s| s.status == 503));
    let start = &fake.seen("batchEventsForArchiving")[0];
    assert!(start.body["fromTimestamp"].is_string() && start.body["toTimestamp"].is_string());

    let again = env.run(&["run"]);
    again.expect(0);
    assert_eq!(again.n("selected"), 0);
    assert_eq!(osmem().count(&index), 19);
}

#[test]
fn sink_rejection_mid_batch_leaves_only_that_batch_outstanding() {
    skip_unless!(Need::Osmem);
    let (fake, key) = fake();
    let b1 = fake.add_batch(T0, fake.events(3, T0));
    let mut middle = fake.events(4, T0 + HOUR);
    middle[2]["extra"] = json!("not-a-number");
    let b2 = fake.add_batch(T0 + HOUR, middle);
    let b3 = fake.add_batch(T0 + 2 * HOUR, fake.events(3, T0 + 2 * HOUR));
    let index = unique("cdp");
    ureq::put(&format!("{}/{index}", osmem().url))
        .send_json(json!({"mappings": {"properties": {"extra": {"type": "long"}}}}))
        .unwrap();
    let env = to_es(cdp_env(&fake, &key), &index)
        .set("CHUNK_SIZE", "2")
        .set("CDP_BATCH_EVENTS", "false");

    let run = env.run(&[]);
    run.expect(3);
    assert_eq!((run.n("rejected"), run.n("marked")), (1, 6));
    assert_eq!(fake.marked(), vec![b1.clone(), b3.clone()]);
    assert_eq!(fake.outstanding(), vec![b2.clone()]);
    assert_eq!(osmem().count(&index), 9);
    assert!(run.stderr.contains(&b2) && run.stderr.contains("not marked"));

    // Once the event can be stored, the next run finishes the batch without duplicates.
    fake.state()
        .batches
        .iter_mut()
        .find(|b| b.archive_id == b2)
        .unwrap()
        .events[2]["extra"] = json!(7);
    let rerun = env.run(&[]);
    rerun.expect(0);
    assert_eq!(
        (
            rerun.n("delivered"),
            rerun.n("already_present"),
            rerun.n("marked")
        ),
        (1, 3, 4)
    );
    assert!(fake.outstanding().is_empty());
    assert_eq!(osmem().count(&index), 10);
}

#[test]
fn crash_before_marking_redelivers_without_duplicates() {
    skip_unless!(Need::Osmem);
    let (fake, key) = fake();
    let mut all = fake.events(4, T0);
    let b1 = fake.add_batch(T0, all.clone());
    let second = fake.events(4, T0 + HOUR);
    all.extend(second.clone());
    fake.add_batch(T0 + HOUR, second);
    fake.state().hangs.insert(
        "markArchiveBatchesAsSuccessful".into(),
        Duration::from_secs(60),
    );
    let index = unique("cdp");
    let env = to_es(cdp_env(&fake, &key), &index).set("CDP_BATCH_EVENTS", "false");

    let mut child = env.spawn(&["run"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while fake.seen("markArchiveBatchesAsSuccessful").is_empty() {
        assert!(std::time::Instant::now() < deadline, "no mark request");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(fake.marked().is_empty());
    assert_eq!(osmem().count(&index), 4, "the first batch was shipped");
    assert_eq!(fake.outstanding()[0], b1);

    fake.state().hangs.clear();
    let run = env.run(&["run"]);
    run.expect(0);
    assert_eq!(
        (
            run.n("delivered"),
            run.n("already_present"),
            run.n("marked")
        ),
        (4, 4, 8)
    );
    assert_eq!(osmem().count(&index), 8);
    assert_eq!(osmem().ids(&index), ids(&all));
    assert!(fake.outstanding().is_empty());
}

#[test]
fn refused_credentials_fail_clearly_and_mark_nothing() {
    skip_unless!(Need::Osmem);
    let (fake, key) = fake();
    fake.add_batch(T0, fake.events(2, T0));
    let index = unique("cdp");
    let (_, other) = ed25519_key();

    // A key CDP does not know: 401, exit 1, the API's code and request id, no key material.
    let wrong = KeyPair {
        access_key_id: key.access_key_id.clone(),
        private_key: other.private_key.clone(),
    };
    let run = to_es(cdp_env(&fake, &wrong), &index).run(&["run"]);
    run.expect(1);
    assert!(run.stderr.contains("401 UNAUTHENTICATED"), "{}", run.stderr);
    assert!(run.stderr.contains("request id fake-"), "{}", run.stderr);
    assert!(run.stderr.contains("CDP_ACCESS_KEY_ID/CDP_PRIVATE_KEY"));
    assert!(!run.stderr.contains(&other.private_key));
    let unknown_id = KeyPair {
        access_key_id: "someone-else".into(),
        private_key: key.private_key.clone(),
    };
    to_es(cdp_env(&fake, &unknown_id), &index)
        .run(&["run"])
        .expect(1);

    // A key that is no key: a configuration error naming the variable, exit 2.
    let garbage = KeyPair {
        access_key_id: key.access_key_id.clone(),
        private_key: "-----BEGIN PRIVATE KEY-----\\nZ2FyYmFnZQ==\\n-----END PRIVATE KEY-----"
            .into(),
    };
    let run = to_es(cdp_env(&fake, &garbage), &index).run(&["run"]);
    run.expect(2);
    assert!(
        run.stderr.contains("invalid CDP_PRIVATE_KEY"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("Z2FyYmFnZQ"));

    assert!(fake.marked().is_empty());
    assert!(fake.seen("markArchiveBatchesAsSuccessful").is_empty());
    assert_eq!(osmem().count(&index), 0);
}

fn gunzip(path: &std::path::Path) -> String {
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_string(&mut text)
        .unwrap();
    text
}

#[test]
fn cdp_archive_layout_writes_one_gzip_file_per_batch_named_as_cdp() {
    let (fake, key) = fake();
    let account = fake.state().account_id.clone();
    let first = fake.events(5, T0);
    let b1 = fake.add_batch(T0 + 125_000, first.clone());
    let second = fake.events(3, T0 + HOUR);
    let b2 = fake.add_batch(T0 + HOUR, second.clone());
    let dir = tempfile::tempdir().unwrap();
    let env = cdp_env(&fake, &key)
        .set("SINK", "file")
        .set("OUTPUT_LAYOUT", "cdp-archive")
        .set("OUTPUT_PATH", dir.path().to_str().unwrap())
        .set("CHUNK_SIZE", "2")
        .set("CDP_BATCH_EVENTS", "false");
    let run = env.run(&["run"]);
    run.expect(0);
    // CHUNK_SIZE does not split a batch that becomes one file.
    assert_eq!((run.n("pages"), run.n("marked")), (2, 8));

    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let expected = vec![
        format!("{account}_20240501T1002Z_{b1}.json.gz"),
        format!("{account}_20240501T1100Z_{b2}.json.gz"),
    ];
    assert_eq!(names, expected);
    for (name, events) in expected.iter().zip([&first, &second]) {
        let lines: Vec<Value> = gunzip(&dir.path().join(name))
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), events.len());
        for (line, event) in lines.iter().zip(events.iter()) {
            let mut expected = event.clone();
            let at = chrono::DateTime::from_timestamp_millis(event["timestamp"].as_i64().unwrap())
                .unwrap()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            expected["@timestamp"] = json!(at);
            assert_eq!(line, &expected);
        }
    }
    assert!(fake.outstanding().is_empty());
}

/// The same into a bucket: the objects carry CDP's own archive names.
#[test]
fn cdp_archive_layout_into_s3_gives_cdps_archive_names() {
    skip_unless!(Need::Python("moto"));
    let m = common::s3::moto();
    let (fake, key) = fake();
    let account = fake.state().account_id.clone();
    let first = fake.events(5, T0);
    let b1 = fake.add_batch(T0 + 125_000, first.clone());
    let second = fake.events(3, T0 + HOUR);
    let b2 = fake.add_batch(T0 + HOUR, second.clone());
    let prefix = format!("cdp/{}", unique("archive"));
    let env = cdp_env(&fake, &key)
        .set("SINK", "file")
        .set("OUTPUT_LAYOUT", "cdp-archive")
        .set("OUTPUT_PATH", &format!("s3://{}/{prefix}", m.bucket))
        .set("AWS_ENDPOINT_URL", &m.endpoint)
        .set("AWS_ALLOW_HTTP", "true")
        .set("AWS_ACCESS_KEY_ID", &m.key_id)
        .set("AWS_SECRET_ACCESS_KEY", &m.secret)
        .set("CHUNK_SIZE", "2")
        .set("CDP_BATCH_EVENTS", "false");
    let run = env.run(&["run"]);
    run.expect(0);
    assert_eq!((run.n("pages"), run.n("marked")), (2, 8));
    let expected = vec![
        format!("{prefix}/{account}_20240501T1002Z_{b1}.json.gz"),
        format!("{prefix}/{account}_20240501T1100Z_{b2}.json.gz"),
    ];
    assert_eq!(m.list(&prefix), expected);
    for (key, events) in expected.iter().zip([&first, &second]) {
        let mut text = String::new();
        flate2::read::GzDecoder::new(&m.get(key)[..])
            .read_to_string(&mut text)
            .unwrap();
        let got: Vec<String> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        let want: Vec<String> = events
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(got, want, "{key}");
    }
    assert!(fake.outstanding().is_empty());
}

#[test]
fn dry_run_lists_batches_and_changes_nothing() {
    let (fake, key) = fake();
    let b1 = fake.add_batch(T0, fake.events(2, T0));
    let b2 = fake.add_batch(T0 + HOUR, fake.events(3, T0 + HOUR));
    fake.state().unbatched = fake.events(2, yesterday_ms());
    // No sink is needed to look.
    let run = cdp_env(&fake, &key).run(&["run", "--dry-run"]);
    run.expect(0);
    let lines: Vec<Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{}", run.stdout);
    assert_eq!(lines[0]["archiveId"], b1.as_str());
    assert_eq!(lines[0]["eventCount"], 2);
    assert_eq!(lines[0]["archiveTimestamp"], "2024-05-01T10:00:00.000Z");
    assert_eq!(lines[1]["archiveId"], b2.as_str());
    assert_eq!(lines[1]["eventCount"], 3);
    assert!(lines[1]["file"].as_str().unwrap().ends_with(".json.gz"));
    assert!(fake.seen("batchEventsForArchiving").is_empty());
    assert!(fake.seen("markArchiveBatchesAsSuccessful").is_empty());
    assert_eq!(fake.outstanding(), vec![b1, b2]);

    cdp_env(&fake, &key)
        .run(&["monthly", "--dry-run"])
        .expect(2);
}

#[test]
fn rsa_key_from_a_credentials_file_profile() {
    let (auth, key) = rsa_key();
    let fake = FakeCdp::start(auth);
    let events = fake.events(2, T0);
    fake.add_batch(T0, events.clone());
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir(home.path().join(".cdp")).unwrap();
    // The CLI keeps a PEM key on one line with literal \n.
    std::fs::write(
        home.path().join(".cdp/credentials"),
        format!(
            "[default]\ncdp_access_key_id = nobody\ncdp_private_key = x\n\n[ops]\ncdp_access_key_id = {}\ncdp_private_key = {}\n",
            key.access_key_id,
            key.private_key.trim().replace('\n', "\\n")
        ),
    )
    .unwrap();
    let run = Env::new()
        .set("AUDIT_LOGGER_TYPE", "CDP_ARCHIVE")
        .set("CDP_ENDPOINT_URL", &fake.url)
        .set("HOME", home.path().to_str().unwrap())
        .set("CDP_PROFILE", "ops")
        .set("CDP_BATCH_EVENTS", "false")
        .set("SINK", "stdout")
        .run(&["run"]);
    run.expect(0);
    let shipped: Vec<Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(ids(&shipped), ids(&events));
    assert!(fake.outstanding().is_empty());
}

#[test]
fn access_token_instead_of_a_key() {
    let fake = FakeCdp::start(Auth::Token("tok-s3cret".into()));
    fake.add_batch(T0, fake.events(2, T0));
    let env = Env::new()
        .set("AUDIT_LOGGER_TYPE", "CDP_ARCHIVE")
        .set("CDP_ENDPOINT_URL", &fake.url)
        .set("CDP_ACCESS_TOKEN", "tok-s3cret")
        .set("CDP_BATCH_EVENTS", "false")
        .set("SINK", "stdout")
        .set("DEBUG", "true");
    let run = env.run(&[]);
    run.expect(0);
    assert_eq!(run.stdout.lines().count(), 2);
    assert!(!run.stderr.contains("tok-s3cret"));
    assert!(fake.outstanding().is_empty());
    let refused = env.set("CDP_ACCESS_TOKEN", "wrong").run(&[]);
    refused.expect(1);
    assert!(
        refused.stderr.contains("CDP_ACCESS_TOKEN"),
        "{}",
        refused.stderr
    );
}

#[test]
fn a_running_task_is_waited_for_then_ours_runs() {
    let (fake, key) = fake();
    fake.start_foreign_task(3);
    let fresh = fake.events(3, yesterday_ms());
    fake.state().unbatched = fresh.clone();
    let run = cdp_env(&fake, &key).set("SINK", "stdout").run(&[]);
    run.expect(0);
    let starts = fake.seen("batchEventsForArchiving");
    assert!(starts.iter().any(|s| s.status == 409), "{starts:?}");
    assert_eq!(starts.last().unwrap().status, 200);
    let shipped: Vec<Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(ids(&shipped), ids(&fresh));
    assert!(fake.outstanding().is_empty());
}

#[test]
fn a_failed_or_endless_task_fails_the_run() {
    let (fake, key) = fake();
    fake.add_batch(T0, fake.events(1, T0));
    fake.state().task_outcome = "FAILED".into();
    let env = cdp_env(&fake, &key).set("SINK", "stdout");
    let run = env.run(&[]);
    run.expect(1);
    assert!(run.stderr.contains("ended FAILED"), "{}", run.stderr);
    assert!(fake.marked().is_empty());

    {
        let mut s = fake.state();
        s.task_outcome = "COMPLETED".into();
        s.task_polls = 100_000;
    }
    let run = env
        .set("CDP_TASK_TIMEOUT", "1")
        .set("CDP_RETRY_INITIAL_MS", "100")
        .run(&[]);
    run.expect(1);
    assert!(run.stderr.contains("CDP_TASK_TIMEOUT=1s"), "{}", run.stderr);
}

#[test]
fn batch_size_is_applied_between_batches() {
    skip_unless!(Need::Osmem);
    let (fake, key) = fake();
    for i in 0..3 {
        fake.add_batch(T0 + i * HOUR, fake.events(4, T0 + i * HOUR));
    }
    let index = unique("cdp");
    let env = to_es(cdp_env(&fake, &key), &index)
        .set("CDP_BATCH_EVENTS", "false")
        .set("BATCH_SIZE", "5")
        .set("CHUNK_SIZE", "2");
    let run = env.run(&[]);
    run.expect(0);
    // The second batch is finished although it passes BATCH_SIZE; the third waits.
    assert_eq!((run.n("selected"), run.n("marked")), (8, 8));
    assert_eq!(fake.outstanding().len(), 1);
    let next = env.run(&[]);
    next.expect(0);
    assert_eq!(next.n("marked"), 4);
    assert!(fake.outstanding().is_empty());
    assert_eq!(osmem().count(&index), 12);
}

#[test]
fn a_repeated_page_token_and_endless_unavailability_stop_the_run() {
    let (fake, key) = fake();
    for i in 0..3 {
        fake.add_batch(T0 + i * HOUR, fake.events(1, T0 + i * HOUR));
    }
    {
        let mut s = fake.state();
        s.repeat_token = true;
        s.max_page = 1;
    }
    let env = cdp_env(&fake, &key)
        .set("SINK", "stdout")
        .set("CDP_BATCH_EVENTS", "false");
    let run = env.run(&[]);
    run.expect(1);
    assert!(
        run.stderr.contains("same page token twice"),
        "{}",
        run.stderr
    );
    assert!(run.stdout.is_empty());

    fake.state().repeat_token = false;
    for _ in 0..10 {
        fake.inject(None, 503);
    }
    let run = env.set("CDP_MAX_RETRIES", "2").run(&[]);
    run.expect(1);
    // The shared retry policy's wording: two retries after the first attempt.
    assert!(
        run.stderr.contains("failed after 2 retries") && run.stderr.contains("503 UNAVAILABLE"),
        "{}",
        run.stderr
    );
    assert!(fake.marked().is_empty());
}

#[test]
fn a_batch_whose_listing_disagrees_with_its_count_is_not_marked() {
    let (fake, key) = fake();
    let b = fake.add_batch(T0, fake.events(3, T0));
    fake.state().batches[0].event_count = 4;
    let run = cdp_env(&fake, &key)
        .set("SINK", "stdout")
        .set("CDP_BATCH_EVENTS", "false")
        .run(&[]);
    run.expect(3);
    assert_eq!(run.stdout.lines().count(), 3);
    assert!(
        run.stderr.contains("reports eventCount 4"),
        "{}",
        run.stderr
    );
    assert_eq!(fake.outstanding(), vec![b]);
}

#[test]
fn the_fake_enforces_post_json_and_signatures() {
    let (fake, _) = fake();
    let url = format!("{}/api/v1/audit/listOutstandingArchiveBatches", fake.url);
    match ureq::get(&url).call() {
        Err(ureq::Error::Status(405, r)) => {
            assert_eq!(
                r.into_json::<Value>().unwrap()["code"],
                "METHOD_NOT_ALLOWED"
            )
        }
        other => panic!("{other:?}"),
    }
    match ureq::post(&url)
        .set("content-type", "text/plain")
        .send_string("{}")
    {
        Err(ureq::Error::Status(415, _)) => {}
        other => panic!("{other:?}"),
    }
    match ureq::post(&url).send_json(json!({})) {
        Err(ureq::Error::Status(401, r)) => {
            assert_eq!(r.into_json::<Value>().unwrap()["code"], "UNAUTHENTICATED")
        }
        other => panic!("{other:?}"),
    }
    let _ = event("a", "b", 0);
}

/// Routing for CDP: the event source and name lay out the files; a run may not drop any of a
/// batch's events (the batch is marked whole), so ACCEPT_* is refused.
#[test]
fn routed_layout_by_event_source_and_name_and_no_accept_lists() {
    let (fake, key) = fake();
    let mut events = fake.events(3, T0);
    events[1]["eventSource"] = "environments".into();
    events[2]["eventName"] = "deleteUser".into();
    fake.add_batch(T0, events);
    let out = tempfile::tempdir().unwrap();
    let env = cdp_env(&fake, &key)
        .set("SINK", "file")
        .set("OUTPUT_PATH", out.path().to_str().unwrap())
        .set("OUTPUT_LAYOUT", "routed");
    let refused = env.clone().set("ACCEPT_TOPICS", "iam").run(&["run"]);
    refused.expect(2);
    assert!(
        refused.stderr.contains("ACCEPT_TOPICS") && refused.stderr.contains("CDP_ARCHIVE"),
        "{}",
        refused.stderr
    );
    env.run(&["run"]).expect(0);
    for dir in [
        "iam/getUser/2024/05/01/10",
        "environments/getUser/2024/05/01/10",
        "iam/deleteUser/2024/05/01/10",
    ] {
        let files: Vec<_> = std::fs::read_dir(out.path().join(dir))
            .unwrap_or_else(|e| panic!("{dir}: {e}"))
            .collect();
        assert_eq!(files.len(), 1, "{dir}");
    }
    assert!(fake.outstanding().is_empty());
}

/// A certificate that does not verify is not a passing fault: the run fails at once (exit 1),
/// without retries, saying so; nothing reaches CDP.
#[test]
fn an_untrusted_certificate_fails_at_once() {
    let (fake, key) = fake();
    fake.add_batch(T0, fake.events(1, T0));
    let dir = tempfile::tempdir().unwrap();
    let (cert, cert_key) = common::tls::self_signed(dir.path());
    let front = common::tls::tls_front(&cert, &cert_key, &fake.url);
    let env = cdp_env(&fake, &key)
        .set(
            "CDP_ENDPOINT_URL",
            &format!("https://127.0.0.1:{}", front.port),
        )
        .set("CDP_MAX_RETRIES", "5")
        .set("CDP_BATCH_EVENTS", "false")
        .set("SINK", "stdout");
    for args in [&["run"][..], &["check"][..]] {
        let run = env.run(args);
        run.expect(1);
        let text = run.stderr.to_lowercase();
        assert!(
            text.contains("certificate") && text.contains("not retried"),
            "{}",
            run.stderr
        );
        assert!(!text.contains("retrying"), "{}", run.stderr);
        assert!(run.stdout.is_empty());
    }
    assert!(fake.seen("listOutstandingArchiveBatches").is_empty());
    assert_eq!(fake.outstanding().len(), 1);
}
