//! The single-column source end to end: real databases, osmem-server, the binary as a process.
//! The first tests are structured-log-transfer's own behaviour tests, ported.

#[macro_use]
mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const T: &str = "audit_logs";

async fn setup(backend: Backend, rows: usize) -> (TestDb, String) {
    let db = TestDb::new(backend).await;
    db.create_audit_table(T).await;
    let messages: Vec<Value> = (0..rows).map(message).collect();
    db.insert_messages(T, &messages).await;
    (db, unique("idx"))
}

async fn three_rows_are_delivered_and_marked(b: Backend) {
    skip_unless!(b, Need::Osmem);
    let (db, index) = setup(b, 3).await;
    let run = Env::es(&db, &index).run(&["run"]);
    run.expect(0);
    assert_eq!(
        (run.n("selected"), run.n("delivered"), run.n("marked")),
        (3, 3, 3)
    );
    assert_eq!(osmem().count(&index), 3);
    assert_eq!(db.unsent(T).await, 0);
    let docs = osmem().docs(&index);
    let first = docs
        .iter()
        .find(|(_, d)| d["audit_event"]["actor"] == "user0")
        .expect("user0");
    // The message verbatim, plus @timestamp copied from audit_event.date_time.
    assert_eq!(first.1["@timestamp"], "2024-05-01T10:00:00.000Z");
    assert_eq!(first.1["audit_event"]["target"]["path"], "/records/0");
    // Document id: primary key and created_at in microseconds (2024-05-01T10:00:00.123456Z).
    assert!(
        docs.iter().any(|(id, _)| id == "1-1714557600123456"),
        "{docs:?}"
    );
    // A second run finds nothing to do.
    let again = Env::es(&db, &index).run(&[]);
    again.expect(0);
    assert_eq!(again.n("selected"), 0);
}

async fn custom_date_time_fields(b: Backend) {
    skip_unless!(b, Need::Osmem);
    let db = TestDb::new(b).await;
    db.create_audit_table(T).await;
    db.insert_messages(
        T,
        &[json!({"event": {"when": "2023-01-01T00:00:00Z", "what": "x"}})],
    )
    .await;
    let index = unique("idx");
    Env::es(&db, &index)
        .set("DATE_TIME_PARENT_FIELD", "event")
        .set("DATE_TIME_FIELD", "when")
        .run(&[])
        .expect(0);
    let docs = osmem().docs(&index);
    assert_eq!(docs.len(), 1);
    assert_eq!(docs[0].1["@timestamp"], "2023-01-01T00:00:00Z");
}

async fn timestamp_at_the_root(b: Backend) {
    skip_unless!(b, Need::Osmem);
    let db = TestDb::new(b).await;
    db.create_audit_table(T).await;
    db.insert_messages(
        T,
        &[json!({"date_time": "2023-02-02T00:00:00Z", "actor": "root"})],
    )
    .await;
    let index = unique("idx");
    Env::es(&db, &index)
        .set("DATE_TIME_PARENT_FIELD", "")
        .run(&[])
        .expect(0);
    assert_eq!(
        osmem().docs(&index)[0].1["@timestamp"],
        "2023-02-02T00:00:00Z"
    );
}

/// As the original: the message's members in the order the database returns them, numbers as
/// serde_json writes them, `@timestamp` appended last. PostgreSQL's jsonb keeps
/// its own order (shorter keys first), MariaDB's JSON and SQLite's TEXT keep the text's.
async fn documents_keep_the_stored_key_order(b: Backend) {
    skip_unless!(b, Need::Osmem);
    let db = TestDb::new(b).await;
    db.create_audit_table(T).await;
    let stored =
        r#"{"zeta": 1.50, "audit_event": {"date_time": "2024-05-01T10:00:00.000Z", "actor": "u"}}"#;
    let start = chrono::DateTime::parse_from_rfc3339("2024-05-01T10:00:00Z").unwrap();
    db.insert_rows(T, std::iter::once((stored.to_string(), start, false)))
        .await;
    let index = unique("idx");
    Env::es(&db, &index).run(&[]).expect(0);
    let id = &osmem().docs(&index)[0].0;
    let want = match b {
        Backend::Postgres => {
            r#"{"zeta":1.5,"audit_event":{"actor":"u","date_time":"2024-05-01T10:00:00.000Z"},"@timestamp":"2024-05-01T10:00:00.000Z"}"#
        }
        _ => {
            r#"{"zeta":1.5,"audit_event":{"date_time":"2024-05-01T10:00:00.000Z","actor":"u"},"@timestamp":"2024-05-01T10:00:00.000Z"}"#
        }
    };
    assert_eq!(osmem().source_text(&index, id), want);
}

async fn chunk_size_two_over_three_rows_reads_twice(b: Backend) {
    skip_unless!(b, Need::Osmem);
    let (db, index) = setup(b, 3).await;
    let run = Env::es(&db, &index).set("CHUNK_SIZE", "2").run(&[]);
    run.expect(0);
    assert_eq!(run.n("pages"), 2);
    assert_eq!(osmem().count(&index), 3);
}

async fn batch_limit_two_of_three(b: Backend) {
    skip_unless!(b, Need::Osmem);
    let (db, index) = setup(b, 3).await;
    // BATCH_LIMIT is the variable the original's code actually read.
    let run = Env::es(&db, &index).set("BATCH_LIMIT", "2").run(&[]);
    run.expect(0);
    assert_eq!(run.n("selected"), 2);
    assert_eq!(osmem().count(&index), 2);
    assert_eq!(db.unsent(T).await, 1);
    // The one left is the newest: order is created_at, id.
    assert!(!osmem()
        .docs(&index)
        .iter()
        .any(|(_, d)| d["audit_event"]["actor"] == "user2"));
}

async fn monthly_deletes_only_old_sent_rows(b: Backend) {
    skip_unless!(b);
    let db = TestDb::new(b).await;
    db.create_audit_table(T).await;
    let now = chrono::Utc::now().fixed_offset();
    let old = now - chrono::Duration::days(35);
    let m = message(0).to_string();
    db.insert_rows(
        T,
        [
            (m.clone(), now, true),
            (m.clone(), old, false),
            (m.clone(), old, true),
        ]
        .into_iter(),
    )
    .await;
    let run = Env::new().set("DATABASE_URL", &db.url).run(&["monthly"]);
    run.expect(0);
    assert_eq!(
        run.log("deleted sent entries older than CLEAR_AUDIT_LOG_DAYS=30")
            .unwrap()["deleted"],
        1
    );
    assert_eq!(db.scalar(&format!("SELECT COUNT(*) FROM {T}")).await, 2);
    assert_eq!(
        db.scalar(&format!("SELECT COUNT(*) FROM {T} WHERE id = 3"))
            .await,
        0
    );
    // Disabled: nothing deleted.
    db.insert_rows(T, [(m, old, true)].into_iter()).await;
    Env::new()
        .set("DATABASE_URL", &db.url)
        .set("CLEAR_AUDIT_LOG_ENTRIES", "false")
        .run(&["monthly"])
        .expect(0);
    assert_eq!(db.scalar(&format!("SELECT COUNT(*) FROM {T}")).await, 3);
}

/// The original's test: two overlapping runs over 2 × 20 new rows end with exactly 40 documents.
async fn two_overlapping_runs(b: Backend) {
    skip_unless!(b, Need::Osmem);
    let (db, index) = setup(b, 40).await;
    let env = Env::es(&db, &index).set("CHUNK_SIZE", "5");
    let runs = env.run_at_once(2, &["run"]);
    for r in &runs {
        r.expect(0);
    }
    assert_eq!(osmem().count(&index), 40);
    assert_eq!(runs.iter().map(|r| r.n("delivered")).sum::<u64>(), 40);
    assert_eq!(
        runs.iter().map(|r| r.n("already_present")).sum::<u64>(),
        0,
        "a row was shipped twice"
    );
    assert_eq!(db.unsent(T).await, 0);
}

/// Four runs started at once over 2,000 rows: each row shipped by exactly one run.
async fn four_concurrent_runs_ship_each_row_once(b: Backend) {
    skip_unless!(b, Need::Osmem);
    let (db, index) = setup(b, 2000).await;
    let env = Env::es(&db, &index).set("CHUNK_SIZE", "50");
    let runs = env.run_at_once(4, &["run"]);
    for r in &runs {
        r.expect(0);
    }
    // The sink's own answer per item: `created` (delivered) vs 409 (already_present).
    assert_eq!(runs.iter().map(|r| r.n("delivered")).sum::<u64>(), 2000);
    assert_eq!(runs.iter().map(|r| r.n("already_present")).sum::<u64>(), 0);
    assert_eq!(runs.iter().map(|r| r.n("marked")).sum::<u64>(), 2000);
    assert_eq!(osmem().count(&index), 2000);
    assert_eq!(db.unsent(T).await, 0);
}

/// SIGKILL mid-run, then re-run: every row delivered exactly once, every row marked.
async fn killed_run_is_completed_by_the_next(b: Backend) {
    skip_unless!(b, Need::Osmem);
    let (db, index) = setup(b, 2000).await;
    let env = Env::es(&db, &index).set("CHUNK_SIZE", "20");
    let mut child = env.spawn(&["run"]);
    let started = wait_for(Duration::from_secs(60), || async {
        db.unsent(T).await < 2000
    })
    .await;
    assert!(started, "the run marked nothing");
    child.kill().unwrap();
    child.wait().unwrap();
    // A COMMIT the killed run sent may still be applied by the server after the process is
    // gone: count once the count holds still.
    let mut left = db.unsent(T).await;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = db.unsent(T).await;
        if now == left {
            break;
        }
        left = now;
    }
    assert!(left > 0, "killed too late: everything was already sent");
    let rerun = env.run(&["run"]);
    rerun.expect(0);
    assert_eq!(rerun.n("selected") as i64, left);
    assert_eq!(db.unsent(T).await, 0);
    let ids = osmem().ids(&index);
    assert_eq!(ids.len(), 2000);
    let expected = (1..=2000).all(|id| ids.iter().any(|d| d.starts_with(&format!("{id}-"))));
    assert!(expected, "a row is missing from the index");
}

/// Rows that can never be delivered, ahead of good ones, more of them than BATCH_SIZE.
async fn poison_rows_do_not_stall_the_queue(b: Backend) {
    skip_unless!(b, Need::Osmem);
    let db = TestDb::new(b).await;
    db.create_audit_table(T).await;
    let mut messages: Vec<Value> = (0..7)
        .map(|n| json!({"audit_event": {"actor": format!("bad{n}")}}))
        .collect();
    messages.extend((0..6).map(message));
    db.insert_messages(T, &messages).await;
    let index = unique("idx");
    let env = Env::es(&db, &index)
        .set("BATCH_SIZE", "5")
        .set("CHUNK_SIZE", "5")
        .set("MAX_ATTEMPTS", "2");

    // Run 1: five bad rows fill the batch; they are recorded, not marked.
    let r1 = env.run(&[]);
    r1.expect(3);
    assert_eq!((r1.n("rejected"), r1.n("marked")), (5, 0));
    assert!(r1.stderr.contains("no timestamp at audit_event.date_time"));
    // Run 2: retries those five once, then moves on past them to the rest of the queue.
    let r2 = env.run(&[]);
    r2.expect(3);
    assert_eq!(r2.n("delivered"), 3);
    // Run 3: the last good rows arrive; 5 rows are parked after 2 attempts and reported.
    let r3 = env.run(&[]);
    r3.expect(3);
    assert_eq!(osmem().count(&index), 6);
    assert_eq!(db.unsent(T).await, 7);
    // Keep running: nothing more is attempted for parked rows, and they are reported every run.
    let r4 = env.run(&[]);
    r4.expect(3);
    assert_eq!(r4.n("parked"), 7);
    assert_eq!(r4.n("selected"), 0);
    // After a fix in the data, retry-failed makes them eligible again.
    db.exec(&format!(
        "UPDATE {T} SET message = '{}' WHERE id <= 7",
        message(99)
    ))
    .await;
    env.run(&["retry-failed"]).expect(0);
    let r5 = env.run(&[]);
    r5.expect(0);
    assert_eq!(r5.n("delivered"), 5);
    assert_eq!(env.run(&[]).expect(0).n("delivered"), 2);
    assert_eq!(db.unsent(T).await, 0);
    assert_eq!(osmem().count(&index), 13);
}

/// A row the sink rejects (400) is kept unmarked with the reason; the rest are delivered.
async fn sink_rejections_are_recorded_not_marked(b: Backend) {
    skip_unless!(b, Need::Osmem);
    let db = TestDb::new(b).await;
    db.create_audit_table(T).await;
    let mut messages: Vec<Value> = (0..3)
        .map(|n| json!({"audit_event": {"actor": n, "date_time": "2024-01-01T00:00:00Z"}}))
        .collect();
    messages.insert(1, message(1)); // actor "user1" is not a long
    db.insert_messages(T, &messages).await;
    let index = unique("idx");
    osmem().create_strict_index(&index);
    let run = Env::es(&db, &index).run(&[]);
    run.expect(3);
    assert_eq!((run.n("delivered"), run.n("rejected")), (3, 1));
    assert!(
        run.stderr.contains("mapper_parsing_exception") || run.stderr.contains("400"),
        "{}",
        run.stderr
    );
    assert_eq!(db.unsent(T).await, 1);
    assert_eq!(
        db.scalar(&format!(
            "SELECT COUNT(*) FROM {T} WHERE is_sent = false AND id = 2"
        ))
        .await,
        1
    );
    let reason = db.scalar("SELECT COUNT(*) FROM audit_transfer_failed_rows WHERE row_id = 2 AND last_error LIKE '%400%'").await;
    assert_eq!(reason, 1);
}

async fn both_host_port_forms_work(b: Backend) {
    skip_unless!(b, Need::Osmem);
    let (db, index) = setup(b, 2).await;
    let port = osmem().port().to_string();
    Env::es(&db, &index)
        .set("ELASTICSEARCH_HOST", &format!("127.0.0.1:{port}"))
        .set("ELASTICSEARCH_PORT", "0")
        .run(&[])
        .expect(0);
    assert_eq!(osmem().count(&index), 2);
    db.insert_messages(T, &[message(50)]).await;
    Env::es(&db, &index)
        .set("ELASTICSEARCH_HOST", "127.0.0.1")
        .set("ELASTICSEARCH_PORT", &port)
        .run(&[])
        .expect(0);
    assert_eq!(db.unsent(T).await, 0);
}

async fn config_and_connection_errors(b: Backend) {
    skip_unless!(b, Need::Osmem);
    let (db, index) = setup(b, 1).await;
    let bad = Env::es(&db, &index).set("CHUNK_SIZE", "lots").run(&[]);
    bad.expect(2);
    assert!(
        bad.stderr.contains("CHUNK_SIZE") && bad.stderr.lines().count() == 1,
        "{}",
        bad.stderr
    );
    let missing = Env::es(&db, &index)
        .set("AUDIT_TABLE_NAME", "no_such_table")
        .run(&[]);
    missing.expect(2);
    assert!(
        missing.stderr.contains("AUDIT_TABLE_NAME"),
        "{}",
        missing.stderr
    );
    let injected = Env::es(&db, &index)
        .set("AUDIT_TABLE_NAME", "audit_logs; DROP TABLE audit_logs")
        .run(&[]);
    injected.expect(2);
    assert_eq!(db.unsent(T).await, 1, "the table is untouched");
    // Sink unreachable: exit 1 after bounded retries, nothing marked.
    let down = Env::es(&db, &index)
        .set("ELASTICSEARCH_PORT", "1")
        .set("ELASTICSEARCH_MAX_RETRIES", "2")
        .run(&[]);
    down.expect(1);
    assert!(
        down.stderr.contains("still failing after 3 attempts"),
        "{}",
        down.stderr
    );
    assert_eq!(db.unsent(T).await, 1);
    // check: connects to both, moves nothing.
    Env::es(&db, &index).run(&["check"]).expect(0);
    assert_eq!(db.unsent(T).await, 1);
    Env::es(&db, &index)
        .set("ELASTICSEARCH_PORT", "1")
        .run(&["check"])
        .expect(1);
    // Sending disabled: exit 0, nothing sent.
    let off = Env::es(&db, &index)
        .set("ENABLE_SEND_AUDIT_LOG", "false")
        .run(&[]);
    off.expect(0);
    assert!(off.stderr.contains("sending is disabled"));
    assert_eq!(db.unsent(T).await, 1);
}

/// The original's tables as a switching user has them: its Django migration's (primary key `id`
/// only) and its README's (no key at all), without our queue index. Rows come out oldest first
/// (created_at runs against id here), each once; the run names the index and `init-queue`
/// creates it, after which nobody warns.
async fn drop_in_tables_without_the_queue_index(b: Backend) {
    skip_unless!(b);
    for keyed in [true, false] {
        let db = TestDb::new(b).await;
        let id = match (b, keyed) {
            (Backend::Postgres, true) => "id BIGINT PRIMARY KEY",
            (Backend::MySql, true) => "id BIGINT PRIMARY KEY",
            (Backend::Sqlite, true) => "id INTEGER PRIMARY KEY",
            (_, false) => "id BIGINT NOT NULL",
        };
        let (json, ts) = match b {
            Backend::Postgres => ("JSONB", "TIMESTAMPTZ"),
            Backend::MySql => ("JSON", "DATETIME(6)"),
            Backend::Sqlite => ("TEXT", "TEXT"),
        };
        db.exec(&format!(
            "CREATE TABLE {T} ({id}, is_sent BOOLEAN NOT NULL DEFAULT false, message {json} NOT NULL, \
             created_at {ts} NOT NULL)"
        ))
        .await;
        let insert = |from: usize, to: usize| {
            let values: Vec<String> = (from..to)
                .map(|n| {
                    // Newest first by id: ids run against time.
                    let secs = 10_000 - n;
                    format!(
                        "({}, '{}', '2024-05-01 {:02}:{:02}:{:02}.000000')",
                        n + 1,
                        message(n),
                        secs / 3600,
                        (secs / 60) % 60,
                        secs % 60
                    )
                })
                .collect();
            format!(
                "INSERT INTO {T} (id, message, created_at) VALUES {}",
                values.join(", ")
            )
        };
        db.exec(&insert(0, 23)).await;
        let env = Env::new()
            .set("DATABASE_URL", &db.url)
            .set("SINK", "stdout")
            .set("CHUNK_SIZE", "4")
            .set("SINK_CONCURRENCY", "1");
        let run = env.run(&["run"]);
        run.expect(0);
        assert_eq!(run.n("marked"), 23, "{}", run.stderr);
        assert_eq!(db.unsent(T).await, 0);
        let actors: Vec<String> = run
            .stdout
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap()["audit_event"]["actor"].to_string())
            .collect();
        let oldest_first: Vec<String> = (0..23).rev().map(|n| format!("\"user{n}\"")).collect();
        assert_eq!(actors, oldest_first, "{b:?} keyed={keyed}");
        assert!(
            run.stderr.contains("audit-transfer init-queue") && run.stderr.contains("CREATE INDEX"),
            "{b:?} keyed={keyed}: {}",
            run.stderr
        );
        let check = env.run(&["check"]);
        check.expect(0);
        assert!(check.stderr.contains("CREATE INDEX"), "{}", check.stderr);

        let init = env.run(&["init-queue"]);
        init.expect(0);
        assert!(
            init.stderr.contains("queue index created"),
            "{}",
            init.stderr
        );
        db.exec(&insert(23, 30)).await;
        let after = env.run(&["run"]);
        after.expect(0);
        assert_eq!(after.n("marked"), 7);
        assert!(!after.stderr.contains("init-queue"), "{}", after.stderr);
        let again = env.run(&["init-queue"]);
        again.expect(0);
        assert!(
            again.stderr.contains("already has an index"),
            "{}",
            again.stderr
        );
    }
}

/// Without the queue index the backlog's order is read once per run, not once per worker, and
/// the workers still ship every row once, oldest first within each page.
async fn the_order_is_read_once_for_all_workers(b: Backend) {
    skip_unless!(b);
    let db = TestDb::new(b).await;
    db.create_audit_table(T).await;
    db.insert_messages(T, &(0..50).map(message).collect::<Vec<_>>())
        .await;
    let run = Env::new()
        .set("DATABASE_URL", &db.url)
        .set("SINK", "stdout")
        .set("CHUNK_SIZE", "5")
        .set("SINK_CONCURRENCY", "2")
        .set("RUST_LOG", "audit_transfer=debug")
        .run(&["run"]);
    run.expect(0);
    let reads = run
        .stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == "read the order of the backlog" && v["lane"] == "Fresh")
        .count();
    assert_eq!(reads, 1, "{}", run.stderr);
    let mut actors: Vec<String> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["audit_event"]["actor"].to_string())
        .collect();
    actors.sort();
    actors.dedup();
    assert_eq!(actors.len(), 50);
    assert_eq!(db.unsent(T).await, 0);
}

/// Without a queue index the order of a backlog larger than one fetch (50,000 addresses) is
/// sorted once, and the pages keep it across the fetches. Rows are written out of time order
/// (7919 is prime to n), so the table's order is not the queue's. PostgreSQL and SQLite have
/// no key (ctid, rowid), MariaDB the Django migration's primary key.
async fn a_backlog_larger_than_one_fetch_keeps_its_order(b: Backend) {
    skip_unless!(b);
    let db = TestDb::new(b).await;
    let n = 50_010;
    let (table, insert) = match b {
        Backend::Postgres => (
            "id BIGINT NOT NULL, is_sent BOOLEAN NOT NULL DEFAULT false, message JSONB NOT NULL, \
             created_at TIMESTAMPTZ NOT NULL",
            format!(
                "INSERT INTO {T} (id, message, created_at) SELECT k, jsonb_build_object('audit_event', \
                 jsonb_build_object('date_time', to_char(ts AT TIME ZONE 'UTC', \
                 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), 'actor', 'user' || k)), ts FROM (SELECT k, \
                 timestamptz '2024-05-01 10:00:00+00' + ((k * 7919) % {n} || ' ms')::interval AS ts \
                 FROM generate_series(1, {n}) k) s"
            ),
        ),
        Backend::MySql => (
            "id BIGINT PRIMARY KEY, is_sent TINYINT(1) NOT NULL DEFAULT 0, message JSON NOT NULL, \
             created_at DATETIME(6) NOT NULL",
            format!(
                "INSERT INTO {T} (id, message, created_at) SELECT seq, JSON_OBJECT('audit_event', \
                 JSON_OBJECT('date_time', DATE_FORMAT(ts, '%Y-%m-%dT%H:%i:%s.%fZ'), 'actor', \
                 CONCAT('user', seq))), ts FROM (SELECT seq, TIMESTAMP '2024-05-01 10:00:00' + \
                 INTERVAL ((seq * 7919) % {n}) * 1000 MICROSECOND AS ts FROM seq_1_to_{n}) s"
            ),
        ),
        Backend::Sqlite => (
            "id INTEGER NOT NULL, is_sent BOOL NOT NULL DEFAULT 0, message TEXT NOT NULL, \
             created_at TEXT NOT NULL",
            format!(
                "WITH RECURSIVE s(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM s WHERE k < {n}) \
                 INSERT INTO {T} (id, message, created_at) SELECT k, json_object('audit_event', \
                 json_object('date_time', strftime('%Y-%m-%dT%H:%M:%fZ', ts), 'actor', 'user' || k)), \
                 ts FROM (SELECT k, strftime('%Y-%m-%d %H:%M:%f', '2024-05-01 10:00:00', \
                 '+' || (((k * 7919) % {n}) / 1000.0) || ' seconds') AS ts FROM s)"
            ),
        ),
    };
    db.exec(&format!("CREATE TABLE {T} ({table})")).await;
    db.exec(&insert).await;
    let run = Env::new()
        .set("DATABASE_URL", &db.url)
        .set("SINK", "stdout")
        .set("BATCH_SIZE", "100000")
        .set("SINK_CONCURRENCY", "1")
        .set("RUST_LOG", "audit_transfer=debug")
        .run(&["run"]);
    run.expect(0);
    let reads: Vec<u64> = run
        .stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == "read the order of the backlog" && v["lane"] == "Fresh")
        .map(|v| v["rows"].as_u64().unwrap())
        .collect();
    assert_eq!(reads, [50_000, 10]);
    let stamps: Vec<String> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["@timestamp"].to_string())
        .collect();
    assert_eq!(stamps.len(), n);
    assert!(stamps.windows(2).all(|w| w[0] < w[1]), "out of order");
    assert_eq!(db.unsent(T).await, 0);
}

/// Overlapping runs of two workers each on a table without any key: every row once.
async fn overlapping_runs_on_a_table_without_a_key(b: Backend) {
    skip_unless!(b, Need::Osmem);
    let db = TestDb::new(b).await;
    db.create_audit_table("keyed").await;
    db.insert_messages("keyed", &(0..600).map(message).collect::<Vec<_>>())
        .await;
    // The same rows in a table without a key (ids from the keyed one).
    let json = match b {
        Backend::Postgres => "JSONB",
        _ => "JSON",
    };
    db.exec(&format!(
        "CREATE TABLE {T} (id BIGINT NOT NULL, is_sent BOOLEAN NOT NULL DEFAULT false, message {json} NOT NULL, \
         created_at {} NOT NULL)",
        if b == Backend::Postgres { "TIMESTAMPTZ" } else { "DATETIME(6)" }
    ))
    .await;
    db.exec(&format!(
        "INSERT INTO {T} (id, is_sent, message, created_at) SELECT id, is_sent, message, created_at FROM keyed"
    ))
    .await;
    let index = unique("idx");
    let env = Env::es(&db, &index)
        .set("CHUNK_SIZE", "7")
        .set("SINK_CONCURRENCY", "2");
    let runs = env.run_at_once(3, &["run"]);
    for r in &runs {
        r.expect(0);
    }
    assert_eq!(runs.iter().map(|r| r.n("delivered")).sum::<u64>(), 600);
    assert_eq!(runs.iter().map(|r| r.n("already_present")).sum::<u64>(), 0);
    assert_eq!(runs.iter().map(|r| r.n("marked")).sum::<u64>(), 600);
    assert_eq!(osmem().count(&index), 600);
    assert_eq!(db.unsent(T).await, 0);
}

backend_tests!(
    postgres,
    Backend::Postgres,
    [
        three_rows_are_delivered_and_marked,
        documents_keep_the_stored_key_order,
        custom_date_time_fields,
        timestamp_at_the_root,
        chunk_size_two_over_three_rows_reads_twice,
        batch_limit_two_of_three,
        monthly_deletes_only_old_sent_rows,
        two_overlapping_runs,
        four_concurrent_runs_ship_each_row_once,
        killed_run_is_completed_by_the_next,
        poison_rows_do_not_stall_the_queue,
        sink_rejections_are_recorded_not_marked,
        both_host_port_forms_work,
        config_and_connection_errors,
        drop_in_tables_without_the_queue_index,
        overlapping_runs_on_a_table_without_a_key,
        the_order_is_read_once_for_all_workers,
        a_backlog_larger_than_one_fetch_keeps_its_order,
    ]
);

backend_tests!(
    mariadb,
    Backend::MySql,
    [
        three_rows_are_delivered_and_marked,
        documents_keep_the_stored_key_order,
        custom_date_time_fields,
        timestamp_at_the_root,
        chunk_size_two_over_three_rows_reads_twice,
        batch_limit_two_of_three,
        monthly_deletes_only_old_sent_rows,
        two_overlapping_runs,
        four_concurrent_runs_ship_each_row_once,
        killed_run_is_completed_by_the_next,
        poison_rows_do_not_stall_the_queue,
        sink_rejections_are_recorded_not_marked,
        both_host_port_forms_work,
        config_and_connection_errors,
        drop_in_tables_without_the_queue_index,
        overlapping_runs_on_a_table_without_a_key,
        the_order_is_read_once_for_all_workers,
        a_backlog_larger_than_one_fetch_keeps_its_order,
    ]
);

backend_tests!(
    sqlite,
    Backend::Sqlite,
    [
        three_rows_are_delivered_and_marked,
        documents_keep_the_stored_key_order,
        chunk_size_two_over_three_rows_reads_twice,
        batch_limit_two_of_three,
        monthly_deletes_only_old_sent_rows,
        two_overlapping_runs,
        four_concurrent_runs_ship_each_row_once,
        killed_run_is_completed_by_the_next,
        poison_rows_do_not_stall_the_queue,
        config_and_connection_errors,
        drop_in_tables_without_the_queue_index,
        a_backlog_larger_than_one_fetch_keeps_its_order,
    ]
);
