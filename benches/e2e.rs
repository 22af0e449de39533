//! `make bench`: audit-transfer end to end against the floor of the work itself.
//!
//! For a PostgreSQL table of N rows of realistic audit JSON (N = 100,000; 1,000,000 with
//! BENCH_FULL=1) it measures, as medians of BENCH_REPS repetitions with their spread:
//! - `audit-transfer run` into (a) a minimal bulk endpoint of ours that parses every NDJSON line
//!   and answers a correct per-item `created` response, (b) osmem-server, (c) the gzip file sink;
//! - the floor on the same rows: COPY of the rows, the same UPDATEs in the same page size, and a
//!   plain POST of the same NDJSON bodies to the same endpoint;
//! - peak RSS at N/10 and N (memory must not grow with the batch);
//! - MariaDB on the same data (generated the same way), and the cost of document sizes 200 B,
//!   2 KB and 20 KB;
//! - (d) the Splunk HEC sink (indexer acknowledgement on) and (e) the OTLP/HTTP sink, each into
//!   a receiver that parses every event and answers at once (`support/sink_endpoints.rs`);
//! - (f) the gzip file sink into S3 (moto's server, `tests/common/moto_s3.py`);
//! - (g) the Kafka sink into librdkafka's mock cluster started in this process;
//! - (h) `verify` of N/10 and N rows, read back from the bench endpoint, with peak RSS;
//! - (i) (a) with INTEGRITY_CHAIN=true, and (a) with one page in flight (what the chain's
//!   serialised pages are compared with).
//!
//! BENCH_SHAPES_ONLY=1 runs only the table shapes (BENCH_SHAPES_DB=sqlite: of one database),
//! BENCH_VERIFY_ONLY=1 only (h), BENCH_CHAIN_ONLY=1 stops after (i).
//!
//! Needs PostgreSQL and MariaDB as in the tests, the release binary (`make bench` builds it), GNU
//! time for peak RSS, and OSMEM_SERVER_BIN for (b).

#[path = "support/sink_endpoints.rs"]
mod sink_endpoints;

use axum::body::Bytes;
use axum::routing::{get, post};
use axum::Router;
use sqlx::postgres::PgConnection;
use sqlx::{Connection, Executor, Row};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/target/release/audit-transfer");
const CHUNK: usize = 500;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// While `Some`: the documents the bulk endpoint received, by id, for `_mget` (`verify`).
static STORED: std::sync::Mutex<Option<std::collections::HashMap<String, Vec<u8>>>> =
    std::sync::Mutex::new(None);

/// `_mget` on what the bulk endpoint stored: `_source` as received, or `found: false`.
async fn mget(body: Bytes) -> ([(&'static str, &'static str); 1], String) {
    let wanted: serde_json::Value = serde_json::from_slice(&body).expect("_mget body");
    let stored = STORED.lock().unwrap();
    let docs: Vec<String> = wanted["docs"]
        .as_array()
        .expect("docs")
        .iter()
        .map(|d| {
            let id = d["_id"].as_str().unwrap_or_default();
            match stored.as_ref().and_then(|s| s.get(id)) {
                Some(source) => format!(
                    r#"{{"_index":"bench","_id":{},"found":true,"_source":{}}}"#,
                    serde_json::Value::from(id),
                    String::from_utf8_lossy(source)
                ),
                None => format!(
                    r#"{{"_index":"bench","_id":{},"found":false}}"#,
                    serde_json::Value::from(id)
                ),
            }
        })
        .collect();
    (
        [("content-type", "application/json")],
        format!(r#"{{"docs":[{}]}}"#, docs.join(",")),
    )
}

/// The minimal bulk endpoint: parses each line, answers one `created` item per action.
/// Decodes `Content-Encoding: gzip` bodies (ELASTICSEARCH_COMPRESSION=gzip), as servers do.
async fn bulk(
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> ([(&'static str, &'static str); 1], String) {
    let body = sink_endpoints::gunzip(&headers, body);
    let mut items = Vec::new();
    let mut lines = body.split(|&b| b == b'\n').filter(|l| !l.is_empty());
    while let Some(action) = lines.next() {
        let action: serde_json::Value = serde_json::from_slice(action).expect("action line");
        let line = lines.next().expect("document line");
        let _doc: serde_json::Value = serde_json::from_slice(line).expect("document");
        let id = action["create"]["_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if let Some(stored) = STORED.lock().unwrap().as_mut() {
            stored.insert(id.clone(), line.to_vec());
        }
        items.push(serde_json::json!({"create": {"_index": "bench", "_id": id, "status": 201, "result": "created"}}));
    }
    let out = serde_json::json!({"took": 1, "errors": false, "items": items}).to_string();
    ([("content-type", "application/json")], out)
}

fn start_endpoint(rt: &tokio::runtime::Runtime) -> u16 {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = Router::new()
        .route("/", get(|| async { r#"{"version":{"number":"8.0.0"}}"# }))
        .route("/{index}/_bulk", post(bulk))
        .route("/_mget", post(mget))
        // Elasticsearch accepts 100 MB bodies (http.max_content_length); axum's default is 2 MB.
        .layer(axum::extract::DefaultBodyLimit::max(100 * 1024 * 1024));
    rt.spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

/// The JSON line a helper server prints on stdout once it listens (osmem-server, moto).
fn first_line_json(child: &mut std::process::Child) -> Option<serde_json::Value> {
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take()?),
        &mut line,
    )
    .ok()?;
    serde_json::from_str(&line).ok()
}

struct Osmem {
    url: String,
    _child: std::process::Child,
}

fn start_osmem() -> Option<Osmem> {
    let bin = std::env::var("OSMEM_SERVER_BIN").ok()?;
    let mut child = Command::new(bin)
        .args([
            "-addr",
            "127.0.0.1:0",
            "-no-stdin-watch",
            "-no-ja",
            "-parent-pid",
        ])
        .arg(std::process::id().to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let v = first_line_json(&mut child)?;
    Some(Osmem {
        url: v["url"].as_str()?.to_string(),
        _child: child,
    })
}

/// A realistic audit message of about `size` bytes (the padding field makes up the rest).
fn message_sql(size: usize) -> String {
    let pad = size.saturating_sub(560);
    format!(
        "jsonb_build_object('audit_event', jsonb_build_object(\
           'origin', 'profile-backend', 'status', 'SUCCESS', 'date_time_epoch', 1714557600000 + n,\
           'date_time', to_char(timestamptz '2024-05-01 10:00:00+00' + (n || ' ms')::interval, 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),\
           'actor', jsonb_build_object('role', 'USER', 'user_id', md5(n::text), 'provider', 'tunnistamo', 'ip_address', '192.0.2.' || (n % 250)),\
           'operation', 'READ', 'additional_information', repeat('x', {pad}),\
           'target', jsonb_build_object('path', '/v1/profiles/' || md5((n * 7)::text) || '/', 'object_ids', jsonb_build_array(md5((n * 3)::text)), 'type', 'Profile')))"
    )
}

/// The table shapes a switching user brings: ours with the recommended queue index, the
/// original's Django migration (primary key `id` only), and its README's (no key at all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Indexed,
    PrimaryKey,
    NoKey,
}

impl Shape {
    const ALL: [Shape; 3] = [Shape::Indexed, Shape::PrimaryKey, Shape::NoKey];
    fn label(self) -> &'static str {
        match self {
            Shape::Indexed => "queue index",
            Shape::PrimaryKey => "primary key only",
            Shape::NoKey => "no key",
        }
    }
}

async fn pg_table(admin: &mut PgConnection, db: &str, rows: usize, size: usize) -> String {
    pg_shaped(admin, db, rows, size, Shape::Indexed).await
}

async fn pg_shaped(
    admin: &mut PgConnection,
    db: &str,
    rows: usize,
    size: usize,
    shape: Shape,
) -> String {
    admin
        .execute(format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)").as_str())
        .await
        .unwrap();
    admin
        .execute(format!("CREATE DATABASE {db}").as_str())
        .await
        .unwrap();
    let url = format!(
        "{}/{db}",
        env_or(
            "BENCH_POSTGRES_URL",
            "postgres://postgres@127.0.0.1:5432/postgres"
        )
        .rsplit_once('/')
        .unwrap()
        .0
    );
    let mut c = PgConnection::connect(&url).await.unwrap();
    let key = if shape == Shape::NoKey {
        ""
    } else {
        " PRIMARY KEY"
    };
    c.execute(
        format!(
            "CREATE TABLE audit_logs (id BIGSERIAL{key}, is_sent BOOLEAN NOT NULL DEFAULT false, \
             message JSONB NOT NULL, created_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        .as_str(),
    )
    .await
    .unwrap();
    c.execute(
        format!(
            "INSERT INTO audit_logs (message, created_at) SELECT {}, timestamptz '2024-05-01 10:00:00+00' + (n || ' ms')::interval \
             FROM generate_series(1, {rows}) n",
            message_sql(size)
        )
        .as_str(),
    )
    .await
    .unwrap();
    // The queue index README recommends: each page's claim reads from the cursor on, instead of
    // sorting the whole unsent backlog again.
    if shape == Shape::Indexed {
        c.execute(
            "CREATE INDEX audit_logs_unsent ON audit_logs (created_at, id) WHERE NOT is_sent",
        )
        .await
        .unwrap();
    }
    c.execute("VACUUM ANALYZE audit_logs").await.unwrap();
    url
}

/// The same table in MariaDB (MySQL flavour of the queue: two-step claim by primary key), with
/// the index README recommends there (MariaDB has no partial indexes).
async fn mysql_table(rows: usize, size: usize) -> Option<String> {
    mysql_shaped(rows, size, Shape::Indexed).await
}

async fn mysql_shaped(rows: usize, size: usize, shape: Shape) -> Option<String> {
    let admin = env_or("BENCH_MYSQL_URL", "mysql://root@127.0.0.1:3306/mysql");
    let mut c = sqlx::MySqlConnection::connect(&admin).await.ok()?;
    c.execute("DROP DATABASE IF EXISTS at_bench_my")
        .await
        .unwrap();
    c.execute("CREATE DATABASE at_bench_my").await.unwrap();
    c.execute("USE at_bench_my").await.unwrap();
    // MariaDB's AUTO_INCREMENT needs a key: the table without one gets its ids from the insert.
    let id = if shape == Shape::NoKey {
        "id BIGINT NOT NULL"
    } else {
        "id BIGINT AUTO_INCREMENT PRIMARY KEY"
    };
    c.execute(
        format!(
            "CREATE TABLE audit_logs ({id}, is_sent TINYINT(1) NOT NULL DEFAULT 0, \
             message JSON NOT NULL, created_at DATETIME(6) NOT NULL)"
        )
        .as_str(),
    )
    .await
    .unwrap();
    let pad = size.saturating_sub(560);
    c.execute(
        format!(
            "INSERT INTO audit_logs (id, message, created_at) SELECT seq, JSON_OBJECT('audit_event', JSON_OBJECT(\
               'origin', 'profile-backend', 'status', 'SUCCESS', 'date_time_epoch', 1714557600000 + seq,\
               'date_time', DATE_FORMAT(TIMESTAMP '2024-05-01 10:00:00' + INTERVAL seq * 1000 MICROSECOND, '%Y-%m-%dT%H:%i:%s.%fZ'),\
               'actor', JSON_OBJECT('role', 'USER', 'user_id', MD5(seq), 'provider', 'tunnistamo', 'ip_address', CONCAT('192.0.2.', seq % 250)),\
               'operation', 'READ', 'additional_information', REPEAT('x', {pad}),\
               'target', JSON_OBJECT('path', CONCAT('/v1/profiles/', MD5(seq * 7), '/'), 'object_ids', JSON_ARRAY(MD5(seq * 3)), 'type', 'Profile'))),\
             TIMESTAMP '2024-05-01 10:00:00' + INTERVAL seq * 1000 MICROSECOND FROM seq_1_to_{rows}"
        )
        .as_str(),
    )
    .await
    .unwrap();
    if shape == Shape::Indexed {
        c.execute("CREATE INDEX audit_logs_queue ON audit_logs (is_sent, created_at, id)")
            .await
            .unwrap();
    }
    c.execute("ANALYZE TABLE audit_logs").await.unwrap();
    Some(format!("{}/at_bench_my", admin.rsplit_once('/').unwrap().0))
}

/// The same table in SQLite, in a file.
async fn sqlite_shaped(path: &std::path::Path, rows: usize, shape: Shape) -> String {
    let _ = std::fs::remove_file(path);
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let id = if shape == Shape::NoKey {
        "id INTEGER NOT NULL"
    } else {
        "id INTEGER PRIMARY KEY AUTOINCREMENT"
    };
    c.execute(
        format!(
            "CREATE TABLE audit_logs ({id}, is_sent BOOL NOT NULL DEFAULT 0, message TEXT NOT NULL, \
             created_at TEXT NOT NULL)"
        )
        .as_str(),
    )
    .await
    .unwrap();
    c.execute(
        format!(
            "WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < {rows}) \
             INSERT INTO audit_logs (id, message, created_at) SELECT n, json_object('audit_event', json_object(\
               'origin', 'profile-backend', 'status', 'SUCCESS', 'date_time_epoch', 1714557600000 + n,\
               'date_time', strftime('%Y-%m-%dT%H:%M:%fZ', '2024-05-01 10:00:00', '+' || (n / 1000.0) || ' seconds'),\
               'actor', json_object('role', 'USER', 'user_id', lower(hex(randomblob(16))), 'provider', 'tunnistamo', 'ip_address', '192.0.2.' || (n % 250)),\
               'operation', 'READ', 'additional_information', printf('%.*c', 40, 'x'),\
               'target', json_object('path', '/v1/profiles/' || lower(hex(randomblob(16))) || '/', 'object_ids', json_array(lower(hex(randomblob(16)))), 'type', 'Profile'))),\
             strftime('%Y-%m-%d %H:%M:%f', '2024-05-01 10:00:00', '+' || (n / 1000.0) || ' seconds') FROM s"
        )
        .as_str(),
    )
    .await
    .unwrap();
    if shape == Shape::Indexed {
        c.execute("CREATE INDEX audit_logs_queue ON audit_logs (created_at, id)")
            .await
            .unwrap();
    }
    // As dj-database-url reads it: `sqlite:///` then the path, so an absolute path has four.
    format!("sqlite:///{}", path.display())
}

async fn reset(url: &str) {
    if url.starts_with("sqlite:") {
        let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
        c.execute("UPDATE audit_logs SET is_sent = 0")
            .await
            .unwrap();
        c.execute("DELETE FROM audit_transfer_failed_rows")
            .await
            .ok();
        return;
    }
    if url.starts_with("mysql:") {
        let mut c = sqlx::MySqlConnection::connect(url).await.unwrap();
        c.execute("UPDATE audit_logs SET is_sent = 0")
            .await
            .unwrap();
        c.execute("DELETE FROM audit_transfer_failed_rows")
            .await
            .ok();
        return;
    }
    let mut c = PgConnection::connect(url).await.unwrap();
    c.execute("UPDATE audit_logs SET is_sent = false")
        .await
        .unwrap();
    c.execute("DELETE FROM audit_transfer_failed_rows")
        .await
        .ok();
    c.execute("VACUUM ANALYZE audit_logs").await.unwrap();
}

struct Measured {
    secs: f64,
    rss_kb: u64,
}

/// Runs the release binary under GNU time; returns wall time and peak RSS.
fn run_job(envs: &[(&str, String)]) -> Measured {
    run_command(&["run"], envs)
}

/// `audit-transfer <args>` under GNU time: wall time and peak RSS.
fn run_command(args: &[&str], envs: &[(&str, String)]) -> Measured {
    let mut cmd = Command::new("/usr/bin/time");
    cmd.args(["-f", "%M", BIN])
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let start = Instant::now();
    let out = cmd
        .output()
        .expect("run /usr/bin/time (apt-get install time)");
    let secs = start.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "audit-transfer failed:\n{stderr}");
    let rss_kb = stderr
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0);
    Measured { secs, rss_kb }
}

/// verify: every row read back by id from the endpoint (which keeps what it received for this)
/// and compared; a tenth of the rows (a --until window) and all of them, for time and for
/// memory, which must not grow with the rows.
fn verify_lines(rt: &tokio::runtime::Runtime, url: &str, port: u16, n: usize, reps: usize) {
    let envs = es_env(url, port);
    rt.block_on(reset(url));
    *STORED.lock().unwrap() = Some(Default::default());
    run_job(&envs);
    for rows in [n / 10, n] {
        let until = chrono_free_until(rows);
        let mut secs = Vec::new();
        let mut rss = 0;
        for _ in 0..reps {
            let m = run_command(&["verify", "--until", &until], &envs);
            secs.push(m.secs);
            rss = rss.max(m.rss_kb);
        }
        line(
            "(h) verify, read back from the endpoint",
            rows,
            median(secs),
            Some(rss),
        );
    }
    *STORED.lock().unwrap() = None;
}

/// What every measured run gets: the table, no BATCH_SIZE limit, the page size, JSON logs.
fn base_env(url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("DATABASE_URL", url.to_string()),
        ("BATCH_SIZE", "100000000".into()),
        ("CHUNK_SIZE", CHUNK.to_string()),
        ("LOG_FORMAT", "json".into()),
    ]
}

/// The same into an Elasticsearch-compatible endpoint on `port`.
fn es_env(url: &str, port: u16) -> Vec<(&'static str, String)> {
    let mut e = base_env(url);
    e.extend([
        ("ELASTICSEARCH_HOST", format!("127.0.0.1:{port}")),
        ("ELASTICSEARCH_SCHEME", "http".into()),
    ]);
    e
}

/// `--until` just after the `rows`-th bench row (rows are 1 ms apart from 2024-05-01T10:00:00Z).
fn chrono_free_until(rows: usize) -> String {
    let ms = rows as u64 + 1;
    let (secs, ms) = (ms / 1000, ms % 1000);
    let (h, m, s) = (10 + secs / 3600, secs / 60 % 60, secs % 60);
    format!("2024-05-01T{h:02}:{m:02}:{s:02}.{ms:03}Z")
}

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn line(label: &str, rows: usize, secs: (f64, f64, f64), rss_kb: Option<u64>) {
    let (med, lo, hi) = secs;
    let rss = rss_kb
        .map(|k| format!("{:>7.1} MB", k as f64 / 1024.0))
        .unwrap_or_else(|| "        -".into());
    println!(
        "{label:<44} {rows:>9} rows {med:>8.3} s  [{lo:.3}..{hi:.3}]  {:>9.0} rows/s {rss}",
        rows as f64 / med
    );
}

/// The floor: COPY out, the same UPDATEs per page, the same bulk bodies POSTed.
async fn floor(
    url: &str,
    endpoint: &str,
    reps: usize,
) -> ((f64, f64, f64), (f64, f64, f64), (f64, f64, f64), usize) {
    let (mut copies, mut updates, mut posts) = (Vec::new(), Vec::new(), Vec::new());
    let mut bodies_len = 0;
    let http = reqwest::Client::new();
    for _ in 0..reps {
        reset(url).await;
        let mut c = PgConnection::connect(url).await.unwrap();
        let t = Instant::now();
        let mut copy = c
            .copy_out_raw("COPY (SELECT id, message, created_at FROM audit_logs WHERE NOT is_sent ORDER BY created_at, id) TO STDOUT")
            .await
            .unwrap();
        let mut raw = Vec::new();
        while let Some(chunk) = futures_util::StreamExt::next(&mut copy).await {
            raw.extend_from_slice(&chunk.unwrap());
        }
        drop(copy);
        copies.push(t.elapsed().as_secs_f64());

        // The same bodies the job sends: documents with @timestamp, create actions with our ids.
        let rows = sqlx::query(
            "SELECT id, message::text, created_at FROM audit_logs ORDER BY created_at, id",
        )
        .fetch_all(&mut c)
        .await
        .unwrap();
        let mut bodies = Vec::new();
        for page in rows.chunks(CHUNK) {
            let mut body = Vec::new();
            for r in page {
                let id: i64 = r.get(0);
                let msg: String = r.get(1);
                let at: chrono::DateTime<chrono::Utc> = r.get(2);
                let mut v: serde_json::Value = serde_json::from_str(&msg).unwrap();
                let ts = v["audit_event"]["date_time"].clone();
                v["@timestamp"] = ts;
                body.extend_from_slice(
                    format!(
                        "{{\"create\":{{\"_id\":\"{id}-{}\"}}}}\n",
                        at.timestamp_micros()
                    )
                    .as_bytes(),
                );
                body.extend_from_slice(&serde_json::to_vec(&v).unwrap());
                body.push(b'\n');
            }
            bodies.push(body);
        }
        bodies_len = bodies.iter().map(Vec::len).sum();
        let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        let t = Instant::now();
        for page in ids.chunks(CHUNK) {
            sqlx::query("UPDATE audit_logs SET is_sent = true WHERE id = ANY($1)")
                .bind(page)
                .execute(&mut c)
                .await
                .unwrap();
        }
        updates.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        for body in bodies {
            let r = http
                .post(format!("{endpoint}/bench/_bulk"))
                .header("content-type", "application/x-ndjson")
                .body(body)
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success());
            r.bytes().await.unwrap();
        }
        posts.push(t.elapsed().as_secs_f64());
    }
    (median(copies), median(updates), median(posts), bodies_len)
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this binary without it, and
    // then there is nothing to do (the benchmark needs the release build and minutes of time).
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let full = std::env::var("BENCH_FULL").is_ok_and(|v| v == "1");
    let n: usize = env_or("BENCH_ROWS", if full { "1000000" } else { "100000" })
        .parse()
        .unwrap();
    let reps: usize = env_or("BENCH_REPS", "3").parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let port = start_endpoint(&rt);
    let endpoint = format!("http://127.0.0.1:{port}");
    let admin_url = env_or(
        "BENCH_POSTGRES_URL",
        "postgres://postgres@127.0.0.1:5432/postgres",
    );
    let mut admin = rt
        .block_on(PgConnection::connect(&admin_url))
        .expect("PostgreSQL");

    println!(
        "machine: {} cores, {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        cpu_model()
    );
    println!("CHUNK_SIZE={CHUNK}, repetitions={reps}: median [min..max]\n");
    if std::env::var("BENCH_SHAPES_ONLY").is_ok_and(|v| v == "1") {
        shapes(&rt, &mut admin, port, n, full, reps);
        return;
    }
    let url = rt.block_on(pg_table(&mut admin, "at_bench", n, 600));
    if std::env::var("BENCH_VERIFY_ONLY").is_ok_and(|v| v == "1") {
        verify_lines(&rt, &url, port, n, reps);
        return;
    }
    let (copy, update, post, bytes) = rt.block_on(floor(&url, &endpoint, reps));
    println!(
        "NDJSON: {:.1} MB in {} bodies",
        bytes as f64 / 1e6,
        n.div_ceil(CHUNK)
    );
    line("floor: COPY of the rows", n, copy, None);
    line("floor: UPDATE ... = ANY($1) per page", n, update, None);
    line("floor: POST of the bulk bodies", n, post, None);
    let floor_total = copy.0 + update.0 + post.0;
    line(
        "floor: total",
        n,
        (floor_total, floor_total, floor_total),
        None,
    );

    let base = base_env;
    let es = es_env;
    let measure =
        |label: &str, rows: usize, url: &str, envs: Vec<(&'static str, String)>| -> (f64, u64) {
            let mut secs = Vec::new();
            let mut rss = 0;
            for _ in 0..reps {
                rt.block_on(reset(url));
                let envs: Vec<(&str, String)> = envs.iter().map(|(k, v)| (*k, v.clone())).collect();
                let m = run_job(&envs);
                secs.push(m.secs);
                rss = rss.max(m.rss_kb);
            }
            let s = median(secs);
            line(label, rows, s, Some(rss));
            (s.0, rss)
        };

    let (ours, _) = measure(
        "(a) audit-transfer -> bench endpoint",
        n,
        &url,
        es(&url, port),
    );
    println!("    ratio ours / floor: {:.2}", ours / floor_total);
    // (i) INTEGRITY_CHAIN: one page of the source in flight at a time, every document hashed,
    // and a signed checkpoint at the end.
    let mut chained = es(&url, port);
    chained.push(("INTEGRITY_CHAIN", "true".into()));
    chained.push((
        "INTEGRITY_SIGNING_KEY",
        "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=".into(),
    ));
    let (chain, _) = measure("(i) same, INTEGRITY_CHAIN=true, signed", n, &url, chained);
    println!("    ratio chain / plain: {:.2}", chain / ours);
    let mut one = es(&url, port);
    one.push(("SINK_CONCURRENCY", "1".into()));
    let (single, _) = measure("(i) same, no chain, SINK_CONCURRENCY=1", n, &url, one);
    println!(
        "    ratio chain / one page in flight: {:.2}",
        chain / single
    );
    if std::env::var("BENCH_CHAIN_ONLY").is_ok_and(|v| v == "1") {
        return;
    }
    verify_lines(&rt, &url, port, n, reps);

    let mut gz = es(&url, port);
    gz.push(("ELASTICSEARCH_COMPRESSION", "gzip".into()));
    let (zipped, _) = measure("(a) same, ELASTICSEARCH_COMPRESSION=gzip", n, &url, gz);
    println!("    ratio gzip / plain: {:.2}", zipped / ours);

    match rt.block_on(mysql_table(n, 600)) {
        Some(my) => {
            let (mine, _) = measure("(a) MariaDB -> bench endpoint", n, &my, es(&my, port));
            println!("    ratio MariaDB / PostgreSQL: {:.2}", mine / ours);
        }
        None => println!("(a) MariaDB: skipped, no server at BENCH_MYSQL_URL"),
    }

    let out = tempfile_dir();
    let mut file_env = base(&url);
    file_env.extend([
        ("SINK", "file".to_string()),
        ("OUTPUT_PATH", out.clone()),
        ("OUTPUT_GZIP", "true".into()),
    ]);
    measure("(c) audit-transfer -> file sink, gzip", n, &url, file_env);
    let _ = std::fs::remove_dir_all(&out);

    // The other HTTP sinks into receivers that parse every event and answer at once.
    let receivers = format!("http://127.0.0.1:{}", sink_endpoints::start(&rt));
    let mut hec = base(&url);
    hec.extend([
        ("SINK", "splunk".to_string()),
        ("SPLUNK_HEC_URL", receivers.clone()),
        ("SPLUNK_HEC_TOKEN", "bench-token".into()),
    ]);
    let (splunk, _) = measure("(d) audit-transfer -> Splunk HEC, acks on", n, &url, hec);
    println!(
        "    ratio Splunk HEC / bench endpoint: {:.2}",
        splunk / ours
    );
    let mut otlp = base(&url);
    otlp.extend([
        ("SINK", "otlp".to_string()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receivers),
    ]);
    let (otel, _) = measure("(e) audit-transfer -> OTLP/HTTP, protobuf", n, &url, otlp);
    println!("    ratio OTLP / bench endpoint: {:.2}", otel / ours);

    // (f) the gzip file sink into S3: moto's server (in memory, Python), one create-only object per page.
    // Each repetition writes under a prefix of its own: objects are never replaced.
    if let Some(moto) = start_moto() {
        let mut secs = Vec::new();
        for i in 0..reps {
            rt.block_on(reset(&url));
            let mut e = base(&url);
            e.extend([
                ("SINK", "file".to_string()),
                ("OUTPUT_PATH", format!("s3://{}/bench{i}/", moto.bucket)),
                ("OUTPUT_GZIP", "true".into()),
                ("AWS_ENDPOINT_URL", moto.endpoint.clone()),
                ("AWS_ALLOW_HTTP", "true".into()),
                ("AWS_ACCESS_KEY_ID", moto.key_id.clone()),
                ("AWS_SECRET_ACCESS_KEY", moto.secret.clone()),
            ]);
            secs.push(run_job(&e.iter().map(|(k, v)| (*k, v.clone())).collect::<Vec<_>>()).secs);
        }
        line(
            "(f) audit-transfer -> S3 (moto), gzip",
            n,
            median(secs),
            None,
        );
    } else {
        println!("(f) S3: skipped, no moto in the venv (make .venv/.installed)");
    }
    // (g) Kafka into librdkafka's mock cluster, in this process (idempotent producer, acks=all).
    #[cfg(feature = "kafka")]
    {
        let mock = rdkafka::mocking::MockCluster::new(1).expect("mock Kafka cluster");
        let mut kafka = base(&url);
        kafka.extend([
            ("SINK", "kafka".to_string()),
            ("KAFKA_BROKERS", mock.bootstrap_servers()),
            ("KAFKA_TOPIC", "audit".into()),
        ]);
        let (k, _) = measure("(g) audit-transfer -> Kafka (mock cluster)", n, &url, kafka);
        println!("    ratio Kafka / bench endpoint: {:.2}", k / ours);
    }

    // Memory with the batch: N/10 and N rows, same page size.
    let small = rt.block_on(pg_table(&mut admin, "at_bench_small", n / 10, 600));
    let (_, rss_small) = measure(
        "(a) at N/10 (memory check)",
        n / 10,
        &small,
        es(&small, port),
    );
    let (_, rss_n) = measure("(a) at N (memory check)", n, &url, es(&url, port));
    println!(
        "    peak RSS N/10 -> N: {:.1} MB -> {:.1} MB",
        rss_small as f64 / 1024.0,
        rss_n as f64 / 1024.0
    );

    // (b) osmem-server: it ingests only ~1-2k docs/s, so a smaller table; compared with posting
    // the same bodies to it directly.
    if let Some(os) = start_osmem() {
        let m = n.min(20_000);
        let small = rt.block_on(pg_table(&mut admin, "at_bench_osmem", m, 600));
        let port = os.url.rsplit(':').next().unwrap().parse::<u16>().unwrap();
        let (_, _, direct, _) = rt.block_on(floor(&small, &os.url, 1));
        line("(b) osmem: POST of the same bodies", m, direct, None);
        let mut e = es(&small, port);
        e.push(("ELASTICSEARCH_APP_AUDIT_LOG_INDEX", "bench".into()));
        // Every run must index anew: a fresh index name per repetition.
        let mut secs = Vec::new();
        for i in 0..reps.min(2) {
            rt.block_on(reset(&small));
            let mut e = e.clone();
            e.push(("ELASTICSEARCH_APP_AUDIT_LOG_INDEX", format!("bench{i}")));
            secs.push(run_job(&e.iter().map(|(k, v)| (*k, v.clone())).collect::<Vec<_>>()).secs);
        }
        let s = median(secs);
        line("(b) audit-transfer -> osmem-server", m, s, None);
        println!(
            "    ratio ours / osmem's own ingestion: {:.2}",
            s.0 / direct.0
        );
    } else {
        println!("(b) osmem-server: skipped, OSMEM_SERVER_BIN not set (make bench sets it)");
    }

    shapes(&rt, &mut admin, port, n, full, reps);

    // Document size: cost per row for 200 B, 2 KB and 20 KB messages.
    for size in [200, 2_000, 20_000] {
        let rows = if size >= 20_000 { n / 10 } else { n / 2 };
        let db = format!("at_bench_size_{size}");
        let u = rt.block_on(pg_table(&mut admin, &db, rows, size));
        measure(
            &format!("(a) documents of ~{size} B"),
            rows,
            &u,
            es(&u, port),
        );
        rt.block_on(admin.execute(format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)").as_str()))
            .unwrap();
    }
    if let Ok(mut c) = rt.block_on(sqlx::MySqlConnection::connect(&env_or(
        "BENCH_MYSQL_URL",
        "mysql://root@127.0.0.1:3306/mysql",
    ))) {
        rt.block_on(c.execute("DROP DATABASE IF EXISTS at_bench_my"))
            .ok();
    }
    for db in ["at_bench", "at_bench_small", "at_bench_osmem"] {
        rt.block_on(admin.execute(format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)").as_str()))
            .ok();
    }
    let _ = Duration::from_secs(0);
}

/// moto's S3 server as the tests start it (tests/common/moto_s3.py), credentials enforced.
struct Moto {
    endpoint: String,
    key_id: String,
    secret: String,
    bucket: String,
    _child: std::process::Child,
}

fn start_moto() -> Option<Moto> {
    let python = env_or(
        "TEST_PYTHON",
        concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python"),
    );
    let mut child = Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/common/moto_s3.py"
        ))
        .arg("bench")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let v = first_line_json(&mut child)?;
    let s = |k: &str| v[k].as_str().map(String::from);
    Some(Moto {
        endpoint: s("endpoint")?,
        key_id: s("key_id")?,
        secret: s("secret")?,
        bucket: s("bucket")?,
        _child: child,
    })
}

/// The drop-in shapes: how a run scales with the backlog on the table a switching user has, at
/// N and 10 N on each database (MariaDB without a key: its cost grows with the square of the
/// backlog, so at N/20 and N/10).
fn shapes(
    rt: &tokio::runtime::Runtime,
    admin: &mut PgConnection,
    port: u16,
    n: usize,
    full: bool,
    reps: usize,
) {
    let es = |url: &str| es_env(url, port);
    let measure = |label: &str, rows: usize, url: &str, reps: usize| -> f64 {
        let mut secs = Vec::new();
        let mut rss = 0;
        for _ in 0..reps {
            rt.block_on(reset(url));
            let envs = es(url);
            let m = run_job(
                &envs
                    .iter()
                    .map(|(k, v)| (*k, v.clone()))
                    .collect::<Vec<_>>(),
            );
            secs.push(m.secs);
            rss = rss.max(m.rss_kb);
        }
        let s = median(secs);
        line(label, rows, s, Some(rss));
        rows as f64 / s.0
    };
    let (small_n, large_n) = if full { (n / 10, n) } else { (n, n * 10) };
    // BENCH_SHAPES_DB narrows the databases, e.g. `sqlite` (default: all three).
    let dbs = env_or("BENCH_SHAPES_DB", "postgres,mariadb,sqlite");
    let on = |db: &str| dbs.split(',').any(|d| d.trim() == db);
    // The 10 N run once; the ratio of the rates is what the issue asks (at least 0.8).
    let ratio = |rates: &[f64]| {
        if let [small, large] = rates {
            println!(
                "    rate at {large_n} / rate at {small_n}: {:.2}",
                large / small
            );
        }
    };
    println!("\ntable shapes (the original's tables), SINK_CONCURRENCY=2:");
    for shape in Shape::ALL.into_iter().filter(|_| on("postgres")) {
        let mut rates = Vec::new();
        for rows in [small_n, large_n] {
            let u = rt.block_on(pg_shaped(admin, "at_bench_shape", rows, 600, shape));
            let r = if rows > small_n { 1 } else { reps };
            rates.push(measure(
                &format!("PostgreSQL, {}", shape.label()),
                rows,
                &u,
                r,
            ));
        }
        ratio(&rates);
    }
    rt.block_on(admin.execute("DROP DATABASE IF EXISTS at_bench_shape WITH (FORCE)"))
        .ok();
    for shape in Shape::ALL.into_iter().filter(|_| on("mariadb")) {
        // Without any key InnoDB cannot claim by address: quadratic, so at N/20 and N/10.
        let sizes = if shape == Shape::NoKey {
            vec![small_n / 20, small_n / 10]
        } else {
            vec![small_n, large_n]
        };
        let mut rates = Vec::new();
        for rows in sizes {
            match rt.block_on(mysql_shaped(rows, 600, shape)) {
                Some(my) => {
                    let r = if rows > small_n { 1 } else { reps };
                    rates.push(measure(
                        &format!("MariaDB, {}", shape.label()),
                        rows,
                        &my,
                        r,
                    ));
                }
                None => println!("MariaDB: skipped, no server at BENCH_MYSQL_URL"),
            }
        }
        if shape != Shape::NoKey {
            ratio(&rates);
        }
    }
    let dir = tempfile_dir();
    for shape in Shape::ALL.into_iter().filter(|_| on("sqlite")) {
        let mut rates = Vec::new();
        for rows in [small_n, large_n] {
            let path = std::path::Path::new(&dir).join("shape.sqlite3");
            let u = rt.block_on(sqlite_shaped(&path, rows, shape));
            let r = if rows > small_n { 1 } else { reps };
            rates.push(measure(&format!("SQLite, {}", shape.label()), rows, &u, r));
        }
        ratio(&rates);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> String {
    let d = std::env::temp_dir().join(format!("at-bench-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.to_string_lossy().into_owned()
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}
