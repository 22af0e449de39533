//! Faults: the sink failing in every way the bulk API can, crashes at every point of a page,
//! many runs at once, a dropped database connection. Each case ends with the same proof: every
//! row is in the index exactly once and marked, and no row is marked that is not in the index.

#[macro_use]
mod common;

use common::proxy::{Fault, Proxy};
use common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;

const T: &str = "audit_logs";

async fn setup(backend: Backend, rows: usize) -> (TestDb, String, Proxy) {
    let db = TestDb::new(backend).await;
    db.create_audit_table(T).await;
    let messages: Vec<Value> = (0..rows).map(message).collect();
    db.insert_messages(T, &messages).await;
    (db, unique("flt"), Proxy::start(&osmem().url))
}

/// The ids (primary keys) of marked rows.
async fn marked_ids(db: &TestDb) -> BTreeSet<i64> {
    let mut c = db.conn().await;
    let ids: Vec<i64> = sqlx::query_scalar(&format!(
        "SELECT CAST(id AS BIGINT) FROM {T} WHERE is_sent = true"
    ))
    .fetch_all(&mut c)
    .await
    .unwrap_or_else(|_| Vec::new());
    if !ids.is_empty() {
        return ids.into_iter().collect();
    }
    // MariaDB spells the cast differently.
    sqlx::query_scalar::<_, i64>(&format!(
        "SELECT CAST(id AS SIGNED) FROM {T} WHERE is_sent = true"
    ))
    .fetch_all(&mut c)
    .await
    .unwrap_or_default()
    .into_iter()
    .collect()
}

/// Primary keys of the documents in the index (document id = `<pk>-<created_at µs>`).
fn indexed_ids(index: &str) -> Vec<i64> {
    osmem()
        .ids(index)
        .iter()
        .map(|id| id.split('-').next().unwrap().parse().unwrap())
        .collect()
}

/// The proof every fault test ends with.
async fn assert_exactly_once(db: &TestDb, index: &str, rows: usize) {
    let indexed = indexed_ids(index);
    let unique: BTreeSet<i64> = indexed.iter().copied().collect();
    assert_eq!(
        osmem().count(index) as usize,
        rows,
        "documents in the index"
    );
    assert_eq!(unique.len(), rows, "distinct rows in the index");
    assert_eq!(
        unique,
        (1..=rows as i64).collect::<BTreeSet<_>>(),
        "every row is in the index"
    );
    let marked = marked_ids(db).await;
    assert_eq!(marked.len(), rows, "every row is marked");
    assert!(
        marked.is_subset(&unique),
        "a row is marked that is not in the index"
    );
}

async fn sink_down_for_the_whole_run(b: Backend) {
    skip_unless!(b, Need::Osmem);
    let (db, index, proxy) = setup(b, 20).await;
    proxy.push(Fault::Status(503), 1000);
    let run = Env::es_via(&db, &index, &proxy)
        .set("ELASTICSEARCH_MAX_RETRIES", "3")
        .run(&[]);
    run.expect(1);
    assert!(
        run.stderr
            .contains("still failing after 4 attempts: HTTP 503"),
        "{}",
        run.stderr
    );
    assert_eq!(db.unsent(T).await, 20, "nothing marked");
    let reset = Proxy::start(&osmem().url);
    reset.push(Fault::ResetBefore, 1000);
    let run = Env::es_via(&db, &index, &reset)
        .set("ELASTICSEARCH_MAX_RETRIES", "2")
        .run(&[]);
    run.expect(1);
    assert_eq!(db.unsent(T).await, 20);
}

async fn sink_down_for_a_while_then_back(b: Backend) {
    skip_unless!(b, Need::Osmem);
    let (db, index, proxy) = setup(b, 30).await;
    proxy.push(Fault::Status(503), 2);
    proxy.push(Fault::Status(429), 1);
    proxy.push(Fault::ResetBefore, 1);
    let run = Env::es_via(&db, &index, &proxy)
        .set("CHUNK_SIZE", "10")
        .run(&[]);
    run.expect(0);
    assert_eq!(run.n("delivered"), 30);
    assert_exactly_once(&db, &index, 30).await;
}

async fn only_failed_items_are_retried(b: Backend) {
    skip_unless!(b, Need::Osmem);
    let (db, index, proxy) = setup(b, 10).await;
    proxy.push(
        Fault::Items {
            positions: vec![1, 4, 7],
            status: 429,
            error_type: "too_many_requests".into(),
        },
        1,
    );
    proxy.push(
        Fault::Items {
            positions: vec![0],
            status: 400,
            error_type: "es_rejected_execution_exception".into(),
        },
        1,
    );
    proxy.push(
        Fault::Items {
            positions: vec![0],
            status: 503,
            error_type: "unavailable_shards_exception".into(),
        },
        1,
    );
    let run = Env::es_via(&db, &index, &proxy)
        .set("SINK_CONCURRENCY", "1")
        .run(&[]);
    run.expect(0);
    assert_eq!((run.n("delivered"), run.n("already_present")), (10, 0));
    // 4 requests: all 10, then the three 429s, then the one rejected execution, then the 503.
    assert_eq!(proxy.bulk_requests(), 4, "{}", run.stderr);
    let forwarded = proxy.forwarded();
    assert_eq!(forwarded.len(), 10);
    assert!(
        forwarded.values().all(|&n| n == 1),
        "an item was sent twice: {forwarded:?}"
    );
    assert_exactly_once(&db, &index, 10).await;
}

async fn rejected_items_are_parked_the_rest_delivered(b: Backend) {
    skip_unless!(b, Need::Osmem);
    let (db, index, proxy) = setup(b, 12).await;
    let ids: Vec<String> = osmem_ids_for(&db, &[3, 8]).await;
    proxy.reject_ids(ids.clone());
    let env = Env::es_via(&db, &index, &proxy).set("MAX_ATTEMPTS", "2");
    let run = env.run(&[]);
    run.expect(3);
    assert_eq!((run.n("delivered"), run.n("rejected")), (10, 2));
    for id in ["3", "8"] {
        assert!(
            run.stderr.contains(&format!("\"record\":\"{id}\"")),
            "row {id} not reported:\n{}",
            run.stderr
        );
    }
    assert_eq!(db.unsent(T).await, 2);
    // Second run retries them once (attempt 2 of 2) and then they are parked, reported every run.
    env.run(&[]).expect(3);
    let third = env.run(&[]);
    third.expect(3);
    assert_eq!((third.n("selected"), third.n("parked")), (0, 2));
    // Once the sink accepts them, retry-failed lets them through.
    proxy.reject_ids(Vec::new());
    env.run(&["retry-failed"]).expect(0);
    env.run(&[]).expect(0);
    assert_exactly_once(&db, &index, 12).await;
}

/// Document ids of rows, as the job derives them: read back through a file-sink-free path.
async fn osmem_ids_for(db: &TestDb, pks: &[i64]) -> Vec<String> {
    let mut out = Vec::new();
    for pk in pks {
        let micros = db
            .scalar(&match db.backend {
                Backend::Postgres => format!("SELECT CAST(EXTRACT(EPOCH FROM created_at) * 1000000 AS BIGINT) FROM {T} WHERE id = {pk}"),
                _ => format!("SELECT TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', created_at) FROM {T} WHERE id = {pk}"),
            })
            .await;
        out.push(format!("{pk}-{micros}"));
    }
    out
}

async fn credentials_refused(b: Backend) {
    skip_unless!(b, Need::Osmem);
    let (db, index, proxy) = setup(b, 5).await;
    proxy.push(Fault::Status(401), 10);
    let run = Env::es_via(&db, &index, &proxy)
        .set("ELASTICSEARCH_USERNAME", "auditor")
        .set("ELASTICSEARCH_PASSWORD", "hunter2-secret")
        .run(&[]);
    run.expect(1);
    assert!(
        run.stderr
            .contains("ELASTICSEARCH_USERNAME and ELASTICSEARCH_PASSWORD"),
        "{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("hunter2"),
        "the password was printed:\n{}",
        run.stderr
    );
    assert_eq!(db.unsent(T).await, 5);
    let key = Proxy::start(&osmem().url);
    key.push(Fault::Status(403), 10);
    let run = Env::es_via(&db, &index, &key)
        .set("ELASTICSEARCH_API_KEY", "id:apikey-secret")
        .run(&[]);
    run.expect(1);
    assert!(
        run.stderr.contains("ELASTICSEARCH_API_KEY") && !run.stderr.contains("apikey-secret"),
        "{}",
        run.stderr
    );
}

/// The bulk request reached the index, but the answer never reached us: the retry gets 409s.
async fn indexed_but_never_answered(b: Backend) {
    skip_unless!(b, Need::Osmem);
    let (db, index, proxy) = setup(b, 15).await;
    proxy.push(Fault::ResetAfter, 1);
    proxy.push(Fault::Delay(Duration::from_millis(6500)), 1);
    let run = Env::es_via(&db, &index, &proxy)
        .set("CHUNK_SIZE", "5")
        .set("SINK_CONCURRENCY", "1")
        .set("ELASTICSEARCH_TIMEOUT_SECONDS", "3")
        .run(&[]);
    run.expect(0);
    // Page 1 is indexed twice over without an answer (reset, then a response slower than the
    // timeout): its rows count as already present; pages 2 and 3 are plain deliveries.
    assert_eq!((run.n("delivered"), run.n("already_present")), (10, 5));
    assert_exactly_once(&db, &index, 15).await;
}

/// SIGKILL at a point of the k-th page, then re-run until done.
async fn crash_at(b: Backend, rows: usize, point: &str, nth: u32) {
    let (db, index, proxy) = setup(b, rows).await;
    let dir = tempfile::tempdir().unwrap();
    let env = Env::es_via(&db, &index, &proxy)
        .set("CHUNK_SIZE", "500")
        .set("BATCH_SIZE", "100000");
    let mut child = if point == "during_bulk" {
        // Hold the k-th bulk response after the request reached the index.
        let mut child = env.spawn(&[]);
        let ok = wait_for(Duration::from_secs(120), || async {
            proxy.bulk_requests() >= nth as u64 - 1
        })
        .await;
        assert!(ok);
        proxy.hold(true);
        let ok = wait_for(Duration::from_secs(120), || async { proxy.held() >= 1 }).await;
        assert!(ok, "no bulk request was held");
        child.kill().unwrap();
        child.wait().unwrap();
        proxy.hold(false);
        child = env.spawn(&["run"]);
        child
    } else {
        let child = env
            .clone()
            .set("AUDIT_TRANSFER_FAILPOINT", &format!("{point}:{nth}"))
            .set("AUDIT_TRANSFER_FAILPOINT_DIR", dir.path().to_str().unwrap())
            .spawn(&[]);
        let reached = dir.path().join(format!("{point}.reached"));
        let ok = wait_for(Duration::from_secs(120), || {
            let r = reached.clone();
            async move { r.exists() }
        })
        .await;
        assert!(ok, "failpoint {point}:{nth} never reached");
        child
    };
    if point != "during_bulk" {
        child.kill().unwrap();
        child.wait().unwrap();
        child = env.spawn(&["run"]);
    }
    let first = Run::from(child.wait_with_output().unwrap());
    first.expect(0);
    // Re-run until nothing is left (one more run must find nothing).
    env.run(&[]).expect(0);
    assert_exactly_once(&db, &index, rows).await;
    let twice: Vec<_> = proxy
        .forwarded()
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .collect();
    // Re-shipping the killed pages is expected (never marked): one per worker in flight
    // (SINK_CONCURRENCY=2); nothing else may repeat.
    assert!(
        twice.len() <= 1000,
        "more than the in-flight pages were shipped twice: {}",
        twice.len()
    );
}

async fn crash_matrix(b: Backend) {
    skip_unless!(b, Need::Osmem);
    let rows = 5000;
    for (point, nth) in [
        ("before_claim", 1),
        ("after_claim", 3),
        ("after_ship", 1),
        ("after_ship", 6),
        ("before_commit", 4),
        ("before_commit", 10),
        ("during_bulk", 1),
        ("during_bulk", 7),
    ] {
        eprintln!("crash matrix {b:?}: SIGKILL at {point} of page {nth}");
        crash_at(b, rows, point, nth).await;
    }
}

/// Eight runs at once over 20,000 rows: every bulk item forwarded exactly once.
async fn eight_runs_at_once(b: Backend) {
    skip_unless!(b, Need::Osmem);
    let rows = 20_000;
    let (db, index, proxy) = setup(b, rows).await;
    let env = Env::es_via(&db, &index, &proxy)
        .set("CHUNK_SIZE", "500")
        .set("BATCH_SIZE", "100000");
    let runs = env.run_at_once(8, &["run"]);
    for r in &runs {
        r.expect(0);
    }
    let forwarded = proxy.forwarded();
    assert_eq!(forwarded.len(), rows, "distinct documents forwarded");
    let dups: Vec<_> = forwarded.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        dups.is_empty(),
        "{} documents forwarded more than once",
        dups.len()
    );
    assert_eq!(runs.iter().map(|r| r.n("marked")).sum::<u64>(), rows as u64);
    assert!(
        runs.iter().filter(|r| r.n("delivered") > 0).count() >= 2,
        "the runs did not overlap: {:?}",
        runs.iter()
            .map(|r| (r.n("delivered"), r.summary()["duration_s"].clone()))
            .collect::<Vec<_>>()
    );
    assert_exactly_once(&db, &index, rows).await;
}

/// The database connection dies between ship and mark: clear error, nothing marked that was not
/// delivered, and the next run completes.
async fn database_connection_dropped(b: Backend) {
    skip_unless!(b, Need::Osmem);
    let (db, index, proxy) = setup(b, 300).await;
    let dir = tempfile::tempdir().unwrap();
    // One worker: its page connection to break, and the connection that holds the backlog's
    // order (the test table has no queue index); both are dropped.
    let env = Env::es_via(&db, &index, &proxy)
        .set("CHUNK_SIZE", "100")
        .set("SINK_CONCURRENCY", "1");
    let child = env
        .clone()
        .set("AUDIT_TRANSFER_FAILPOINT", "after_ship:2")
        .set("AUDIT_TRANSFER_FAILPOINT_DIR", dir.path().to_str().unwrap())
        .spawn(&[]);
    let reached = dir.path().join("after_ship.reached");
    assert!(
        wait_for(Duration::from_secs(60), || {
            let r = reached.clone();
            async move { r.exists() }
        })
        .await
    );
    let kill = match b {
        Backend::Postgres => "SELECT CAST(COUNT(pg_terminate_backend(pid)) AS BIGINT) FROM pg_stat_activity \
                              WHERE application_name = 'audit-transfer' AND datname = current_database()"
            .to_string(),
        _ => String::new(),
    };
    if b == Backend::Postgres {
        assert_eq!(db.scalar(&kill).await, 2);
    } else {
        let mut c = db.conn().await;
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT CAST(ID AS SIGNED) FROM information_schema.PROCESSLIST WHERE DB = DATABASE() AND ID <> CONNECTION_ID()",
        )
        .fetch_all(&mut c)
        .await
        .unwrap();
        assert_eq!(ids.len(), 2, "the job's connections");
        for id in ids {
            sqlx::raw_sql(&format!("KILL {id}"))
                .execute(&mut c)
                .await
                .unwrap();
        }
    }
    std::fs::write(dir.path().join("after_ship.continue"), b"").unwrap();
    let run = Run::from(child.wait_with_output().unwrap());
    run.expect(1);
    assert!(
        run.stderr.contains("marking rows sent") || run.stderr.contains("committing"),
        "{}",
        run.stderr
    );
    assert_eq!(db.unsent(T).await, 200, "only the first page is marked");
    env.run(&[]).expect(0);
    assert_exactly_once(&db, &index, 300).await;
}

macro_rules! backend_tests {
    ($module:ident, $backend:expr, [$($test:ident),* $(,)?]) => {
        mod $module {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test($backend).await;
                }
            )*
        }
    };
}

backend_tests!(
    postgres,
    Backend::Postgres,
    [
        sink_down_for_the_whole_run,
        sink_down_for_a_while_then_back,
        only_failed_items_are_retried,
        rejected_items_are_parked_the_rest_delivered,
        credentials_refused,
        indexed_but_never_answered,
        crash_matrix,
        eight_runs_at_once,
        database_connection_dropped,
    ]
);

backend_tests!(
    mariadb,
    Backend::MySql,
    [
        sink_down_for_a_while_then_back,
        only_failed_items_are_retried,
        rejected_items_are_parked_the_rest_delivered,
        indexed_but_never_answered,
        crash_matrix,
        eight_runs_at_once,
        database_connection_dropped,
    ]
);

/// ELASTICSEARCH_COMPRESSION=gzip: every bulk request, retries of failed items included, goes
/// gzip-compressed; the proxy decodes them and osmem-server holds every row exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_request_bodies_with_item_retries() {
    skip_unless!(Need::Postgres, Need::Osmem);
    let (db, index, proxy) = setup(Backend::Postgres, 1200).await;
    proxy.push(
        Fault::Items {
            positions: vec![3, 250],
            status: 429,
            error_type: "too_many_requests".into(),
        },
        1,
    );
    let run = Env::es_via(&db, &index, &proxy)
        .set("ELASTICSEARCH_COMPRESSION", "gzip")
        .run(&[]);
    run.expect(0);
    assert_eq!(run.n("delivered"), 1200, "{}", run.stderr);
    assert!(proxy.bulk_requests() >= 4, "3 pages and a retry");
    assert_eq!(proxy.gzip_requests(), proxy.bulk_requests());
    // Bulk bodies are labelled NDJSON, and osmem-server (behind the proxy) accepts them.
    assert_eq!(proxy.ndjson_requests(), proxy.bulk_requests());
    assert_eq!(proxy.forwarded().len(), 1200);
    assert!(proxy.forwarded().values().all(|&n| n == 1));
    assert_eq!(osmem().count(&index), 1200);
    // And straight into the real server, which decodes Content-Encoding: gzip itself.
    let direct = unique("gz");
    let db2 = TestDb::new(Backend::Sqlite).await;
    db2.create_audit_table(T).await;
    db2.insert_messages(T, &(0..5).map(message).collect::<Vec<_>>())
        .await;
    Env::es(&db2, &direct)
        .set("ELASTICSEARCH_COMPRESSION", "gzip")
        .run(&[])
        .expect(0);
    assert_eq!(osmem().count(&direct), 5);
    // Without it, nothing is compressed.
    let plain = Proxy::start(&osmem().url);
    db2.exec(&format!("UPDATE {T} SET is_sent = false")).await;
    Env::es_via(&db2, &unique("plain"), &plain)
        .run(&[])
        .expect(0);
    assert!(plain.bulk_requests() > 0);
    assert_eq!(plain.gzip_requests(), 0);
    assert_eq!(plain.ndjson_requests(), plain.bulk_requests());
}
