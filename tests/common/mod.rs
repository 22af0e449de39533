//! Test support: real PostgreSQL, MariaDB and SQLite databases created per test, one
//! osmem-server (OpenSearch-compatible) per test process, and the binary run as a process.
#![allow(dead_code)]

pub mod fakes;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod proxy;
pub mod s3;
pub mod tls;

/// At the start of a test that needs services (`Backend`s and [`Need`]s): returns from the test
/// when one is missing, after one line saying what it needs; see [`available`].
#[allow(unused_macros)]
macro_rules! skip_unless {
    ($($need:expr),+ $(,)?) => {
        if !$crate::common::available(&[$($crate::common::Need::from($need)),+]) {
            return;
        }
    };
}

/// One module per database, each running the listed `async fn(Backend)` tests against it.
#[allow(unused_macros)]
macro_rules! backend_tests {
    ($module:ident, $backend:expr, [$($test:ident),* $(,)?]) => {
        mod $module {
            use super::*;
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test($backend).await;
                }
            )*
        }
    };
}

use serde_json::Value;
use sqlx::{AnyConnection, Connection};
use std::collections::BTreeSet;
use std::collections::HashMap;
use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_audit-transfer");

pub fn pg_admin_url() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn mysql_admin_url() -> String {
    std::env::var("TEST_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/mysql".into())
}

pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}_{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        nanos % 100_000
    )
}

// ---------------------------------------------------------------- services a test needs

/// A service a test cannot run without.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Postgres,
    MySql,
    Osmem,
    /// The tests' Python ([`python`]) with this module importable.
    Python(&'static str),
    /// SQLite: in-process, always there.
    Nothing,
}

impl From<Backend> for Need {
    fn from(b: Backend) -> Need {
        match b {
            Backend::Postgres => Need::Postgres,
            Backend::MySql => Need::MySql,
            Backend::Sqlite => Need::Nothing,
        }
    }
}

/// The Python with the packages of localtest/requirements.txt: TEST_PYTHON, else the project's
/// .venv (`make .venv/.installed`).
pub fn python() -> String {
    std::env::var("TEST_PYTHON")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python").into())
}

/// `host:port` of a database URL, for the probe and the skip line (never its password).
fn endpoint(url: &str, default_port: u16) -> String {
    match url::Url::parse(url) {
        Ok(u) => format!(
            "{}:{}",
            u.host_str().unwrap_or("127.0.0.1"),
            u.port().unwrap_or(default_port)
        ),
        Err(_) => "an unparsable URL".into(),
    }
}

/// Something accepts TCP connections there: tells a running server from none in well under a
/// second, where a database driver would wait for its own connect timeout.
fn listening(endpoint: &str) -> bool {
    endpoint.to_socket_addrs().is_ok_and(|mut addrs| {
        addrs.any(|a| TcpStream::connect_timeout(&a, Duration::from_millis(500)).is_ok())
    })
}

impl Need {
    fn met(self) -> bool {
        static POSTGRES: OnceLock<bool> = OnceLock::new();
        static MYSQL: OnceLock<bool> = OnceLock::new();
        static PYTHON: Mutex<Option<HashMap<&str, bool>>> = Mutex::new(None);
        match self {
            Need::Postgres => *POSTGRES.get_or_init(|| listening(&endpoint(&pg_admin_url(), 5432))),
            Need::MySql => *MYSQL.get_or_init(|| listening(&endpoint(&mysql_admin_url(), 3306))),
            Need::Osmem => std::env::var_os("OSMEM_SERVER_BIN")
                .is_some_and(|bin| std::path::Path::new(&bin).is_file()),
            Need::Python(module) => *PYTHON
                .lock()
                .unwrap()
                .get_or_insert_with(HashMap::new)
                .entry(module)
                .or_insert_with(|| {
                    Command::new(python())
                        .args(["-c", &format!("import {module}")])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status()
                        .is_ok_and(|s| s.success())
                }),
            Need::Nothing => true,
        }
    }

    fn describe(self) -> String {
        match self {
            Need::Postgres => format!(
                "PostgreSQL on {} (TEST_POSTGRES_URL)",
                endpoint(&pg_admin_url(), 5432)
            ),
            Need::MySql => format!(
                "MariaDB on {} (TEST_MYSQL_URL)",
                endpoint(&mysql_admin_url(), 3306)
            ),
            Need::Osmem => "osmem-server (OSMEM_SERVER_BIN)".into(),
            Need::Python(module) => format!("{} with {module} (TEST_PYTHON)", python()),
            Need::Nothing => "nothing".into(),
        }
    }
}

/// Whether the calling test has every service it needs. If not, it prints one line saying what
/// is missing and returns false: a newcomer's `cargo test` skips what cannot run here. With
/// AUDIT_TRANSFER_REQUIRE_SERVICES=1 (`make test`, CI) a missing service panics instead, so a
/// run that is meant to be complete cannot pass by skipping.
pub fn available(needs: &[Need]) -> bool {
    let missing: Vec<String> = needs
        .iter()
        .filter(|n| !n.met())
        .map(|n| n.describe())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    let missing = missing.join(", ");
    if std::env::var("AUDIT_TRANSFER_REQUIRE_SERVICES").is_ok_and(|v| !v.is_empty() && v != "0") {
        panic!("{test} needs {missing}, and AUDIT_TRANSFER_REQUIRE_SERVICES is set");
    }
    // Straight to stderr, as one write so parallel tests do not cut it up: the harness would
    // capture `eprintln!` and show it only for failing tests.
    let line = format!("SKIPPED {test}: needs {missing}; `make test` provides every service\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
    false
}

// ---------------------------------------------------------------- osmem-server

pub struct Osmem {
    pub url: String,
    _child: Child,
}

/// One osmem-server per test process; it exits with the process (`-parent-pid`).
pub fn osmem() -> &'static Osmem {
    static SERVER: OnceLock<Osmem> = OnceLock::new();
    SERVER.get_or_init(|| {
        let bin = std::env::var("OSMEM_SERVER_BIN").expect(
            "OSMEM_SERVER_BIN is not set: run the tests with `make test`, which installs osmem-server",
        );
        let mut child = Command::new(&bin)
            .args(["-addr", "127.0.0.1:0", "-no-stdin-watch", "-no-ja", "-parent-pid"])
            .arg(std::process::id().to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start osmem-server {bin}: {e}"));
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
        let ready: Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("osmem-server said {line:?}"));
        Osmem { url: ready["url"].as_str().unwrap().to_string(), _child: child }
    })
}

impl Osmem {
    pub fn port(&self) -> u16 {
        self.url
            .rsplit(':')
            .next()
            .unwrap()
            .trim_end_matches('/')
            .parse()
            .unwrap()
    }

    pub fn count(&self, index: &str) -> u64 {
        match ureq::get(&format!("{}/{index}/_count", self.url)).call() {
            Ok(r) => r.into_json::<Value>().unwrap()["count"].as_u64().unwrap(),
            Err(ureq::Error::Status(404, _)) => 0,
            Err(e) => panic!("count {index}: {e}"),
        }
    }

    /// Every document of the index: (id, source), paged by `_id` with search_after.
    /// A document's `_source` as the server returns it: the text, members in their order.
    pub fn source_text(&self, index: &str, id: &str) -> String {
        ureq::get(&format!("{}/{index}/_source/{id}", self.url))
            .call()
            .unwrap_or_else(|e| panic!("_source of {id} in {index}: {e}"))
            .into_string()
            .unwrap()
    }

    pub fn docs(&self, index: &str) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        let mut after: Option<Value> = None;
        loop {
            let mut body = serde_json::json!({"size": 5000, "query": {"match_all": {}}, "sort": [{"_id": "asc"}]});
            if let Some(a) = &after {
                body["search_after"] = a.clone();
            }
            let r: Value =
                match ureq::post(&format!("{}/{index}/_search", self.url)).send_json(body) {
                    Ok(r) => r.into_json().unwrap(),
                    Err(ureq::Error::Status(404, _)) => return out,
                    Err(e) => panic!("search {index}: {e}"),
                };
            let hits = r["hits"]["hits"].as_array().unwrap();
            if hits.is_empty() {
                return out;
            }
            after = Some(hits.last().unwrap()["sort"].clone());
            out.extend(
                hits.iter()
                    .map(|h| (h["_id"].as_str().unwrap().to_string(), h["_source"].clone())),
            );
        }
    }

    /// The index's mapping as the server reports it (`GET /{index}/_mapping`).
    pub fn mapping(&self, index: &str) -> Value {
        ureq::get(&format!("{}/{index}/_mapping", self.url))
            .call()
            .unwrap_or_else(|e| panic!("mapping of {index}: {e}"))
            .into_json()
            .unwrap()
    }

    pub fn ids(&self, index: &str) -> BTreeSet<String> {
        self.docs(index).into_iter().map(|(id, _)| id).collect()
    }

    /// An index whose `@timestamp` is a date, as a deployment maps it (not left to the first
    /// document's dynamic mapping).
    pub fn create_dated_index(&self, index: &str) {
        let body = serde_json::json!({"mappings": {"properties": {
            "@timestamp": {"type": "date"},
            "audit_event": {"properties": {"date_time": {"type": "date"}}},
        }}});
        ureq::put(&format!("{}/{index}", self.url))
            .send_json(body)
            .unwrap();
    }

    /// A mapping that makes `audit_event.actor` a long: a string there is a 400 per item.
    pub fn create_strict_index(&self, index: &str) {
        let body = serde_json::json!({"mappings": {"properties": {"audit_event": {"properties": {"actor": {"type": "long"}}}}}});
        ureq::put(&format!("{}/{index}", self.url))
            .send_json(body)
            .unwrap();
    }
}

// ---------------------------------------------------------------- databases

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    MySql,
    Sqlite,
}

/// A database of its own for one test, dropped at the end.
pub struct TestDb {
    pub backend: Backend,
    /// DATABASE_URL for the binary.
    pub url: String,
    name: String,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> TestDb {
        sqlx::any::install_default_drivers();
        let name = unique("at");
        match backend {
            Backend::Postgres => {
                let admin = pg_admin_url();
                let mut c = AnyConnection::connect(&admin)
                    .await
                    .expect("PostgreSQL on 127.0.0.1:5432");
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut c)
                    .await
                    .unwrap();
                let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
                TestDb {
                    backend,
                    url,
                    name,
                    _dir: None,
                }
            }
            Backend::MySql => {
                let admin = mysql_admin_url();
                let mut c = AnyConnection::connect(&admin)
                    .await
                    .expect("MariaDB on 127.0.0.1:3306");
                sqlx::query(&format!("CREATE DATABASE {name} CHARACTER SET utf8mb4"))
                    .execute(&mut c)
                    .await
                    .unwrap();
                let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
                TestDb {
                    backend,
                    url,
                    name,
                    _dir: None,
                }
            }
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("audit.sqlite3");
                std::fs::File::create(&path).unwrap();
                // dj-database-url form, as an existing deployment would write it.
                let url = format!("sqlite:///{}", path.display());
                TestDb {
                    backend,
                    url,
                    name,
                    _dir: Some(dir),
                }
            }
        }
    }

    fn sqlx_url(&self) -> String {
        match self.backend {
            Backend::Sqlite => self.url.replacen("sqlite:///", "sqlite://", 1),
            _ => self.url.clone(),
        }
    }

    pub async fn conn(&self) -> AnyConnection {
        AnyConnection::connect(&self.sqlx_url()).await.unwrap()
    }

    pub async fn exec(&self, sql: &str) {
        let mut c = self.conn().await;
        sqlx::raw_sql(sql)
            .execute(&mut c)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        c.close().await.ok();
    }

    pub async fn scalar(&self, sql: &str) -> i64 {
        let mut c = self.conn().await;
        let v: i64 = sqlx::query_scalar(sql)
            .fetch_one(&mut c)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        c.close().await.ok();
        v
    }

    /// The single-column table as structured-log-transfer's Django model lays it out.
    pub async fn create_audit_table(&self, table: &str) {
        let sql = match self.backend {
            Backend::Postgres => format!(
                "CREATE TABLE {table} (id BIGSERIAL PRIMARY KEY, is_sent BOOLEAN NOT NULL DEFAULT false, \
                 message JSONB NOT NULL, created_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            ),
            Backend::MySql => format!(
                "CREATE TABLE {table} (id BIGINT AUTO_INCREMENT PRIMARY KEY, is_sent TINYINT(1) NOT NULL DEFAULT 0, \
                 message JSON NOT NULL, created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6))"
            ),
            Backend::Sqlite => format!(
                "CREATE TABLE {table} (id INTEGER PRIMARY KEY AUTOINCREMENT, is_sent BOOL NOT NULL DEFAULT 0, \
                 message TEXT NOT NULL, created_at TEXT NOT NULL)"
            ),
        };
        self.exec(&sql).await;
    }

    /// Inserts messages with increasing created_at (one second apart from `start`), in batches.
    pub async fn insert_messages(&self, table: &str, messages: &[Value]) {
        let start = chrono::DateTime::parse_from_rfc3339("2024-05-01T10:00:00.123456Z").unwrap();
        self.insert_rows(
            table,
            messages.iter().enumerate().map(|(i, m)| {
                (
                    m.to_string(),
                    start + chrono::Duration::seconds(i as i64),
                    false,
                )
            }),
        )
        .await;
    }

    pub async fn insert_rows(
        &self,
        table: &str,
        rows: impl Iterator<Item = (String, chrono::DateTime<chrono::FixedOffset>, bool)>,
    ) {
        let rows: Vec<_> = rows.collect();
        let mut c = self.conn().await;
        for chunk in rows.chunks(500) {
            let values: Vec<String> = chunk
                .iter()
                .map(|(m, ts, sent)| {
                    let ts = ts.naive_utc().format("%Y-%m-%d %H:%M:%S%.6f");
                    let sent = match (self.backend, sent) {
                        (Backend::Postgres, s) => s.to_string(),
                        (_, true) => "1".into(),
                        (_, false) => "0".into(),
                    };
                    format!("('{}', '{ts}', {sent})", m.replace('\'', "''"))
                })
                .collect();
            let sql = format!(
                "INSERT INTO {table} (message, created_at, is_sent) VALUES {}",
                values.join(",")
            );
            sqlx::raw_sql(&sql)
                .execute(&mut c)
                .await
                .unwrap_or_else(|e| panic!("insert: {e}"));
        }
        c.close().await.ok();
    }

    pub async fn unsent(&self, table: &str) -> i64 {
        self.scalar(&format!(
            "SELECT COUNT(*) FROM {table} WHERE is_sent = false"
        ))
        .await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (admin, sql) = match self.backend {
            Backend::Postgres => (
                pg_admin_url(),
                format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ),
            Backend::MySql => (
                mysql_admin_url(),
                format!("DROP DATABASE IF EXISTS {}", self.name),
            ),
            Backend::Sqlite => return,
        };
        // Drop runs inside the test's runtime: use a fresh thread with its own.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mut c) = AnyConnection::connect(&admin).await {
                    let _ = sqlx::query(&sql).execute(&mut c).await;
                }
            });
        })
        .join()
        .ok();
    }
}

/// A message with the timestamp where the original expects it.
pub fn message(n: usize) -> Value {
    serde_json::json!({
        "audit_event": {
            "actor": format!("user{n}"),
            "date_time": format!("2024-05-01T10:{:02}:{:02}.000Z", (n / 60) % 60, n % 60),
            "operation": "READ",
            "target": {"path": format!("/records/{n}")},
        }
    })
}

// ---------------------------------------------------------------- running the binary

/// Environment for one run: the variables of the original plus ours. Starts empty of any
/// inherited configuration so the developer's own environment cannot leak in.
#[derive(Clone, Default)]
pub struct Env(pub Vec<(String, String)>);

impl Env {
    pub fn new() -> Env {
        Env::default().set("LOG_FORMAT", "json")
    }

    pub fn es(db: &TestDb, index: &str) -> Env {
        Env::osmem(index).set("DATABASE_URL", &db.url)
    }

    /// The osmem-server sink alone, for sources that are not databases.
    pub fn osmem(index: &str) -> Env {
        let os = osmem();
        Env::new()
            .set("ELASTICSEARCH_HOST", "127.0.0.1")
            .set("ELASTICSEARCH_PORT", &os.port().to_string())
            .set("ELASTICSEARCH_SCHEME", "http")
            .set("ELASTICSEARCH_APP_AUDIT_LOG_INDEX", index)
            .set("ELASTICSEARCH_RETRY_INITIAL_MS", "50")
    }

    /// The same, with the sink behind a fault-injecting proxy.
    pub fn es_via(db: &TestDb, index: &str, proxy: &proxy::Proxy) -> Env {
        Env::es(db, index).set("ELASTICSEARCH_PORT", &proxy.port.to_string())
    }

    pub fn set(mut self, k: &str, v: &str) -> Env {
        self.0.retain(|(key, _)| key != k);
        self.0.push((k.into(), v.into()));
        self
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default());
        for (k, v) in &self.0 {
            c.env(k, v);
        }
        c
    }

    pub fn run(&self, args: &[&str]) -> Run {
        Run::from(self.command(args).output().expect("run audit-transfer"))
    }

    pub fn spawn(&self, args: &[&str]) -> Child {
        self.command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// `n` runs started together (overlapping, as cron with `concurrencyPolicy: Allow` or several
    /// pods would start them), each waited for.
    pub fn run_at_once(&self, n: usize, args: &[&str]) -> Vec<Run> {
        let children: Vec<Child> = (0..n).map(|_| self.spawn(args)).collect();
        children
            .into_iter()
            .map(|c| Run::from(c.wait_with_output().unwrap()))
            .collect()
    }

    /// A run spawned with a crash-test pause point (`src/base/failpoint.rs`), returned once it
    /// waits at the `nth` pass of `point`: kill it there to crash it at an exact step.
    pub fn paused_at(&self, point: &str, nth: u32, args: &[&str]) -> Paused {
        let dir = tempfile::tempdir().unwrap();
        let child = self
            .clone()
            .set("AUDIT_TRANSFER_FAILPOINT", &format!("{point}:{nth}"))
            .set("AUDIT_TRANSFER_FAILPOINT_DIR", dir.path().to_str().unwrap())
            .spawn(args);
        let reached = dir.path().join(format!("{point}.reached"));
        let start = Instant::now();
        while !reached.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "failpoint {point}:{nth} not reached"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Paused { child, _dir: dir }
    }
}

/// A run waiting at a pause point ([`Env::paused_at`]).
pub struct Paused {
    pub child: Child,
    _dir: tempfile::TempDir,
}

impl Paused {
    /// SIGKILL: the run ends there, as a crash would end it.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Run {
    /// The JSON log line whose message is `msg`.
    pub fn log(&self, msg: &str) -> Option<Value> {
        self.stderr
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["message"] == msg)
    }

    pub fn summary(&self) -> Value {
        self.log("run finished")
            .unwrap_or_else(|| panic!("no summary; exit {}; stderr:\n{}", self.code, self.stderr))
    }

    pub fn n(&self, field: &str) -> u64 {
        self.summary()[field]
            .as_u64()
            .unwrap_or_else(|| panic!("{field} in {}", self.summary()))
    }

    #[track_caller]
    pub fn expect(&self, code: i32) -> &Run {
        assert_eq!(self.code, code, "exit code; stderr:\n{}", self.stderr);
        self
    }
}

/// The `.jsonl` archive files of a file sink's directory, in name order, with their lines.
pub fn archive_lines(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<String>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p, text.lines().map(String::from).collect())
        })
        .collect()
}

/// Waits for `cond` up to `timeout`, polling.
pub async fn wait_for<F, Fut>(timeout: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < timeout {
        if cond().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}
