//! The S3 sequential-files source against a real S3-protocol server (moto, tests/common/s3.rs)
//! into osmem-server: ordering, zip/gzip/plain in JSON and CEF, the cursor across runs, a kill
//! during a file, passwords, corrupt files and the attempt limit, gaps, malformed lines, wrong
//! credentials, and the vendor's stdout export.

#[macro_use]
mod common;

use common::s3::moto;
use common::*;
use serde_json::Value;
use std::io::Write;
use std::path::PathBuf;

struct Case {
    prefix: String,
    index: String,
    dir: tempfile::TempDir,
}

impl Case {
    fn new() -> Case {
        Case {
            prefix: format!("acct/{}", unique("s3")),
            index: unique("s3"),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn cursor_file(&self) -> PathBuf {
        self.dir.path().join("cursor.json")
    }

    fn cursor(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.cursor_file()).unwrap()).unwrap()
    }

    fn key(&self, name: &str) -> String {
        format!("{}/{name}", self.prefix)
    }

    fn put(&self, name: &str, body: impl Into<Vec<u8>>) {
        moto().put(&self.key(name), body);
    }

    fn env(&self) -> Env {
        let m = moto();
        Env::osmem(&self.index)
            .set("AUDIT_LOGGER_TYPE", "S3_CURSOR")
            .set("S3_BUCKET", &m.bucket)
            .set("S3_PREFIX", &self.prefix)
            .set("S3_ENDPOINT", &m.endpoint)
            .set("AWS_ACCESS_KEY_ID", &m.key_id)
            .set("AWS_SECRET_ACCESS_KEY", &m.secret)
            .set("S3_CURSOR_FILE", self.cursor_file().to_str().unwrap())
            .set("CHUNK_SIZE", "5")
    }

    /// Document id of a line.
    fn id(&self, name: &str, line: u64) -> String {
        format!("{}/{}#{line}", moto().bucket, self.key(name))
    }

    fn ids(&self) -> Vec<String> {
        osmem().ids(&self.index).into_iter().collect()
    }

    fn doc(&self, name: &str, line: u64) -> Value {
        let id = self.id(name, line);
        osmem()
            .docs(&self.index)
            .into_iter()
            .find(|(i, _)| *i == id)
            .unwrap_or_else(|| panic!("no document {id}"))
            .1
    }
}

fn cato(i: u64) -> String {
    format!("CATO{i:020}.zip")
}

/// A Cato-style CEF event; `rt` is epoch milliseconds.
fn cef(file: u64, line: u64) -> String {
    format!(
        "CEF:0|Cato Networks|Cato SASE Platform|1.0|Security|Internet Firewall|3|rt={} src=10.0.{file}.{line} act=Block msg=file {file} line {line} suser=ann@example.com",
        1714557600000 + file * 1000 + line
    )
}

fn json(file: u64, line: u64) -> String {
    serde_json::json!({"creationTime": 1714557600000u64 + file * 1000 + line, "prettyType": "Audit",
        "sourceIp": format!("10.1.{file}.{line}")})
    .to_string()
}

fn text(lines: &[String]) -> Vec<u8> {
    let mut t = lines.join("\n");
    t.push('\n');
    t.into_bytes()
}

fn zip_of(lines: &[String], password: Option<&str>) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let mut options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    if let Some(p) = password {
        options = options.with_aes_encryption(zip::AesMode::Aes256, p);
    }
    w.start_file("events.log", options).unwrap();
    w.write_all(&text(lines)).unwrap();
    w.finish().unwrap().into_inner()
}

fn gz_of(lines: &[String]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(&text(lines)).unwrap();
    e.finish().unwrap()
}

fn cef_lines(file: u64, n: u64) -> Vec<String> {
    (1..=n).map(|l| cef(file, l)).collect()
}

fn json_lines(file: u64, n: u64) -> Vec<String> {
    (1..=n).map(|l| json(file, l)).collect()
}

/// The files in the order the run delivered them.
fn delivered_files(run: &Run) -> Vec<String> {
    run.stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == "file delivered; cursor moved")
        .map(|v| {
            let f = v["file"].as_str().unwrap();
            f.rsplit('/').next().unwrap().to_string()
        })
        .collect()
}

#[test]
fn zip_gzip_and_plain_files_in_json_and_cef_go_in_index_order() {
    skip_unless!(Need::Python("moto"), Need::Osmem);
    let c = Case::new();
    // Index order is numeric: 9 before 10, whatever the extension.
    c.put("exp-8.zip", zip_of(&cef_lines(1, 3), None));
    c.put("exp-12.log", text(&cef_lines(10, 2)));
    c.put("exp-9.json.gz", gz_of(&json_lines(2, 4)));
    c.put("exp-10.log", text(&json_lines(3, 1)));
    c.put("exp-11.gz", gz_of(&cef_lines(4, 6)));
    let run = c.env().run(&["run"]);
    run.expect(0);
    assert_eq!(
        delivered_files(&run),
        [
            "exp-8.zip",
            "exp-9.json.gz",
            "exp-10.log",
            "exp-11.gz",
            "exp-12.log"
        ]
    );
    assert_eq!(run.n("selected"), 16);
    assert_eq!(run.n("delivered"), 16);
    assert_eq!(osmem().count(&c.index), 16);

    let d = c.doc("exp-8.zip", 2);
    assert_eq!(d["@timestamp"], "2024-05-01T10:00:01.002Z", "from rt");
    assert_eq!(d["cef"]["device"]["vendor"], "Cato Networks");
    assert_eq!(d["cef"]["name"], "Internet Firewall");
    assert_eq!(d["cef"]["extensions"]["msg"], "file 1 line 2");
    assert_eq!(d["cef"]["extensions"]["src"], "10.0.1.2");
    let d = c.doc("exp-9.json.gz", 4);
    assert_eq!(d["sourceIp"], "10.1.2.4");
    assert_eq!(
        d["@timestamp"], "2024-05-01T10:00:02.004Z",
        "from creationTime"
    );
    assert_eq!(
        c.doc("exp-12.log", 1)["cef"]["extensions"]["src"],
        "10.0.10.1"
    );

    let cursor = c.cursor();
    assert_eq!(cursor["last"]["key"], c.key("exp-12.log"));
    assert_eq!(cursor["last"]["index"], 12);
    assert_eq!(cursor["order"], "index");
    assert!(cursor["next"].is_null());
}

#[test]
fn a_second_run_ships_only_the_new_files() {
    skip_unless!(Need::Python("moto"), Need::Osmem);
    let c = Case::new();
    c.put(&cato(1), zip_of(&cef_lines(1, 3), None));
    c.put(&cato(2), zip_of(&cef_lines(2, 3), None));
    c.env().run(&["run"]).expect(0);
    assert_eq!(osmem().count(&c.index), 6);

    c.put(&cato(3), zip_of(&cef_lines(3, 2), None));
    c.put(&cato(4), zip_of(&cef_lines(4, 2), None));
    let run = c.env().run(&["run"]);
    run.expect(0);
    assert_eq!(delivered_files(&run), [cato(3), cato(4)]);
    assert_eq!(run.n("selected"), 4);
    assert_eq!(run.n("already_present"), 0);
    assert_eq!(osmem().count(&c.index), 10);

    let idle = c.env().run(&["run"]);
    idle.expect(0);
    assert_eq!(idle.n("selected"), 0);
    assert_eq!(c.cursor()["last"]["index"], 4);

    // `status` reads how the runs ended from the cursor file.
    let status = c.env().run(&["status", "--json"]);
    status.expect(0);
    let s: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(s["last_success"]["exit_code"], 0, "{s}");
    assert_eq!(s["last_run"]["selected"], 0, "{s}");
    assert_eq!(s["backlog"], serde_json::Value::Null);
}

#[test]
fn batch_size_stops_at_a_file_boundary() {
    skip_unless!(Need::Python("moto"), Need::Osmem);
    let c = Case::new();
    for i in 1..=3 {
        c.put(&cato(i), zip_of(&cef_lines(i, 4), None));
    }
    // BATCH_SIZE=5: file 1 (4), then file 2 is started and finished (8), file 3 waits.
    let run = c
        .env()
        .set("BATCH_SIZE", "5")
        .set("CHUNK_SIZE", "3")
        .run(&["run"]);
    run.expect(0);
    assert_eq!(delivered_files(&run), [cato(1), cato(2)]);
    assert_eq!(run.n("selected"), 8);
    assert_eq!(c.cursor()["last"]["index"], 2);
    let run = c.env().set("BATCH_SIZE", "5").run(&["run"]);
    assert_eq!(delivered_files(&run), [cato(3)]);
}

#[test]
fn killed_during_a_file_then_rerun_creates_no_duplicates() {
    skip_unless!(Need::Python("moto"), Need::Osmem);
    let c = Case::new();
    c.put(&cato(1), zip_of(&cef_lines(1, 12), None));
    c.put(&cato(2), zip_of(&cef_lines(2, 3), None));
    // Stop right after the sink acknowledged page 2 of file 1 (records 6-10), then SIGKILL.
    let paused = c.env().paused_at("after_ship", 2, &["run"]);
    paused.kill();
    assert_eq!(osmem().count(&c.index), 10);
    let cursor = c.cursor();
    assert!(cursor["last"].is_null(), "file 1 not complete: {cursor}");
    assert_eq!(cursor["next"]["attempts"], 1);

    let run = c.env().run(&["run"]);
    run.expect(0);
    assert_eq!(
        run.n("already_present"),
        10,
        "file 1 again, under the same ids"
    );
    assert_eq!(run.n("delivered"), 5);
    assert_eq!(osmem().count(&c.index), 15);
    let mut expected: Vec<String> = (1..=12)
        .map(|l| c.id(&cato(1), l))
        .chain((1..=3).map(|l| c.id(&cato(2), l)))
        .collect();
    expected.sort();
    assert_eq!(c.ids(), expected);
    assert!(
        c.cursor()["next"].is_null(),
        "attempts reset when delivered"
    );
}

#[test]
fn password_protected_zip() {
    skip_unless!(Need::Python("moto"), Need::Osmem);
    let c = Case::new();
    let secret = "zip-pa55word-Secret";
    c.put(&cato(1), zip_of(&cef_lines(1, 3), Some(secret)));

    let none = c.env().run(&["run"]);
    none.expect(1);
    assert!(
        none.stderr.contains("is encrypted: set S3_ZIP_PASSWORD"),
        "{}",
        none.stderr
    );
    let wrong = c.env().set("S3_ZIP_PASSWORD", "not-it").run(&["run"]);
    wrong.expect(1);
    assert!(
        wrong.stderr.contains("S3_ZIP_PASSWORD is not the password"),
        "{}",
        wrong.stderr
    );
    assert!(!wrong.stderr.contains("not-it"));

    let run = c
        .env()
        .set("S3_ZIP_PASSWORD", secret)
        .set("DEBUG", "true")
        .run(&["run"]);
    run.expect(0);
    assert_eq!(run.n("delivered"), 3);
    assert!(!run.stderr.contains(secret), "the password is never logged");
    assert!(!run.stderr.contains(&moto().secret), "nor the secret key");
    assert_eq!(
        c.doc(&cato(1), 3)["cef"]["extensions"]["msg"],
        "file 1 line 3"
    );
}

fn corrupt_zip() -> Vec<u8> {
    let mut z = zip_of(&cef_lines(2, 3), None);
    let n = z.len();
    // Keep the local header, destroy the compressed data and the central directory.
    for b in &mut z[40..n] {
        *b = 0x5a;
    }
    z
}

#[test]
fn a_corrupt_zip_stops_the_sequence_after_the_attempt_limit() {
    skip_unless!(Need::Python("moto"), Need::Osmem);
    let c = Case::new();
    c.put(&cato(1), zip_of(&cef_lines(1, 2), None));
    c.put(&cato(2), corrupt_zip());
    c.put(&cato(3), zip_of(&cef_lines(3, 2), None));
    let env = c.env().set("S3_MAX_ATTEMPTS", "2");

    let first = env.run(&["run"]);
    first.expect(1);
    assert!(
        first
            .stderr
            .contains(&format!("{}: not a readable zip file", c.key(&cato(2)))),
        "{}",
        first.stderr
    );
    assert!(
        first.stderr.contains("attempt 1 of S3_MAX_ATTEMPTS=2"),
        "{}",
        first.stderr
    );
    assert_eq!(delivered_files(&first), [cato(1)]);
    env.run(&["run"]).expect(1);
    let cursor = c.cursor();
    assert_eq!(cursor["next"]["attempts"], 2);
    assert!(cursor["next"]["last_error"]
        .as_str()
        .unwrap()
        .contains("not a readable zip"));

    // Used up: the run stops at the file without reading it, and says what to do.
    let stopped = env.run(&["run"]);
    stopped.expect(1);
    assert!(
        stopped
            .stderr
            .contains("failed 2 times (S3_MAX_ATTEMPTS=2)"),
        "{}",
        stopped.stderr
    );
    assert!(stopped.stderr.contains("retry-failed"));
    assert_eq!(c.cursor()["last"]["index"], 1, "nothing skipped");
    assert_eq!(osmem().count(&c.index), 2);

    // Repaired, and tried again.
    c.put(&cato(2), zip_of(&cef_lines(2, 3), None));
    env.run(&["retry-failed"]).expect(0);
    let run = env.run(&["run"]);
    run.expect(0);
    assert_eq!(delivered_files(&run), [cato(2), cato(3)]);
}

#[test]
fn a_corrupt_zip_is_skipped_after_the_attempt_limit_with_skip() {
    skip_unless!(Need::Python("moto"), Need::Osmem);
    let c = Case::new();
    c.put(&cato(1), zip_of(&cef_lines(1, 2), None));
    c.put(&cato(2), corrupt_zip());
    c.put(&cato(3), zip_of(&cef_lines(3, 2), None));
    let env = c
        .env()
        .set("S3_MAX_ATTEMPTS", "2")
        .set("S3_ON_BAD_FILE", "skip");

    env.run(&["run"]).expect(1);
    // The second attempt fails too: the file is parked and later files go on.
    let run = env.run(&["run"]);
    run.expect(3);
    assert_eq!(run.n("parked"), 1);
    assert_eq!(delivered_files(&run), [cato(3)]);
    assert!(
        run.stderr.contains("skipped after S3_MAX_ATTEMPTS"),
        "{}",
        run.stderr
    );
    let cursor = c.cursor();
    assert_eq!(cursor["skipped"][0]["key"], c.key(&cato(2)));
    assert_eq!(cursor["last"]["index"], 3);

    // Listed every run until someone acts.
    let again = env.run(&["run"]);
    again.expect(3);
    assert!(again
        .stderr
        .contains(&format!("s3://{}/{}", moto().bucket, c.key(&cato(2)))));

    // Repaired: retry-failed goes back before it; file 3 comes again as already present.
    c.put(&cato(2), zip_of(&cef_lines(2, 3), None));
    env.run(&["retry-failed"]).expect(0);
    let run = env.run(&["run"]);
    run.expect(0);
    assert_eq!(delivered_files(&run), [cato(2), cato(3)]);
    assert_eq!(run.n("already_present"), 2);
    assert_eq!(osmem().count(&c.index), 7);
}

#[test]
fn a_gap_in_the_sequence_is_reported_with_exit_3_unless_accepted() {
    skip_unless!(Need::Python("moto"), Need::Osmem);
    let c = Case::new();
    c.put(&cato(1), zip_of(&cef_lines(1, 1), None));
    c.put(&cato(2), zip_of(&cef_lines(2, 1), None));
    c.env().run(&["run"]).expect(0);
    // 3, 4 and 5 expired before a run took them.
    c.put(&cato(6), zip_of(&cef_lines(6, 1), None));
    c.put(&cato(7), zip_of(&cef_lines(7, 1), None));
    let run = c.env().run(&["run"]);
    run.expect(3);
    assert!(
        run.stderr.contains("3 files missing before") && run.stderr.contains("indexes 3 to 5"),
        "{}",
        run.stderr
    );
    assert_eq!(run.n("incomplete"), 1);
    assert_eq!(
        delivered_files(&run),
        [cato(6), cato(7)],
        "what is there is still sent"
    );
    c.env().run(&["run"]).expect(0);

    c.put(&cato(9), zip_of(&cef_lines(9, 1), None));
    let accepted = c.env().set("S3_ACCEPT_GAPS", "true").run(&["run"]);
    accepted.expect(0);
    assert!(accepted.stderr.contains("1 files missing before"));
    assert!(accepted.stderr.contains("accepted (S3_ACCEPT_GAPS=true)"));
    assert_eq!(osmem().count(&c.index), 5);
}

#[test]
fn a_malformed_cef_line_is_reported_with_file_and_line() {
    skip_unless!(Need::Python("moto"), Need::Osmem);
    let c = Case::new();
    let mut lines = cef_lines(1, 3);
    lines[1] = "CEF:0|Cato Networks|broken header".into();
    c.put(&cato(1), zip_of(&lines, None));
    c.put(&cato(2), zip_of(&cef_lines(2, 1), None));
    let run = c.env().set("S3_FORMAT", "cef").run(&["run"]);
    run.expect(3);
    assert_eq!(run.n("rejected"), 1);
    assert_eq!(run.n("delivered"), 3);
    let place = format!("s3://{}/{}:2", moto().bucket, c.key(&cato(1)));
    let report = run
        .stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["record"] == place.as_str())
        .unwrap_or_else(|| panic!("no report for {place}: {}", run.stderr));
    assert!(
        report["message"]
            .as_str()
            .unwrap()
            .contains("3 of 7 fields"),
        "{report}"
    );
    // The policy: the line is rejected, the file still completes.
    assert_eq!(delivered_files(&run), [cato(1), cato(2)]);
    assert_eq!(c.cursor()["last"]["index"], 2);
}

#[test]
fn wrong_credentials_name_the_variables_and_leave_the_cursor() {
    skip_unless!(Need::Python("moto"), Need::Osmem);
    let c = Case::new();
    c.put(&cato(1), zip_of(&cef_lines(1, 1), None));
    c.env().run(&["run"]).expect(0);
    let without_runs = |mut s: serde_json::Value| {
        s.as_object_mut().unwrap().remove("runs");
        s
    };
    let before = c.cursor();
    c.put(&cato(2), zip_of(&cef_lines(2, 1), None));

    let bad_secret = "wrong-secret-value-123";
    let run = c
        .env()
        .set("AWS_SECRET_ACCESS_KEY", bad_secret)
        .run(&["run"]);
    run.expect(2);
    assert!(
        run.stderr.contains("refused the credentials"),
        "{}",
        run.stderr
    );
    assert!(run
        .stderr
        .contains("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"));
    assert!(!run.stderr.contains(bad_secret));
    let unknown = c
        .env()
        .set("AWS_ACCESS_KEY_ID", "AKIANOSUCHKEY0000000")
        .run(&["run"]);
    unknown.expect(2);
    // The position is untouched; the failed run is recorded for `status`.
    assert_eq!(c.cursor()["runs"]["last"]["exit_code"], 2);
    assert_eq!(
        without_runs(c.cursor()),
        without_runs(before),
        "cursor untouched"
    );

    let check = c
        .env()
        .set("AWS_SECRET_ACCESS_KEY", bad_secret)
        .run(&["check"]);
    check.expect(2);
    assert_eq!(osmem().count(&c.index), 1);
}

#[test]
fn stdout_writes_the_lines_as_the_vendor_script_did() {
    skip_unless!(Need::Python("moto"), Need::Osmem);
    let c = Case::new();
    let first = cef_lines(1, 3);
    let second = json_lines(2, 2);
    c.put(&cato(1), zip_of(&first, None));
    c.put(&cato(2), zip_of(&second, None));
    let env = c.env().set("SINK", "stdout").set("ELASTICSEARCH_HOST", "");
    let run = env.run(&["run"]);
    run.expect(0);
    let expected: String = first
        .iter()
        .chain(&second)
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(run.stdout, expected, "export.log: the lines as they are");
    let again = env.run(&["run"]);
    again.expect(0);
    assert_eq!(again.stdout, "");

    // As JSON documents on request.
    let c2 = Case::new();
    c2.put(&cato(1), zip_of(&first, None));
    let docs = c2
        .env()
        .set("SINK", "stdout")
        .set("S3_OUTPUT", "document")
        .run(&["run"]);
    docs.expect(0);
    let doc: Value = serde_json::from_str(docs.stdout.lines().next().unwrap()).unwrap();
    assert_eq!(doc["cef"]["device"]["product"], "Cato SASE Platform");
}

#[test]
fn key_order_for_names_without_numbers_and_a_deleted_cursor_starts_over() {
    skip_unless!(Need::Python("moto"), Need::Osmem);
    let c = Case::new();
    c.put("b-events.log", text(&json_lines(1, 1)));
    c.put("a-events.log", text(&json_lines(2, 1)));
    c.put("c-events.log", text(&json_lines(3, 1)));
    let run = c.env().run(&["run"]);
    run.expect(0);
    assert_eq!(
        delivered_files(&run),
        ["a-events.log", "b-events.log", "c-events.log"]
    );
    assert_eq!(c.cursor()["order"], "key");
    c.put("d-events.log", text(&json_lines(4, 1)));
    assert_eq!(delivered_files(&c.env().run(&["run"])), ["d-events.log"]);

    std::fs::remove_file(c.cursor_file()).unwrap();
    let again = c.env().run(&["run"]);
    again.expect(0);
    assert_eq!(
        again.n("already_present"),
        4,
        "from the first file, no duplicates"
    );
    assert_eq!(osmem().count(&c.index), 4);
}

/// A store whose certificate does not verify fails at once, in one line that says what to do
/// (object_store alone retries it ten times); with its CA in SSL_CERT_FILE the run gets past TLS.
#[test]
fn a_certificate_that_does_not_verify_fails_at_once() {
    let c = Case::new();
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = common::tls::private_ca(dir.path());
    let front = common::tls::tls_front(&cert, &key, &moto().endpoint);
    let endpoint = format!("https://127.0.0.1:{}", front.port);
    let run = c.env().set("S3_ENDPOINT", &endpoint).run(&["check"]);
    run.expect(1);
    let errors: Vec<&str> = run.stderr.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "{}", run.stderr);
    assert!(
        errors[0].contains("presented a certificate that does not verify")
            && errors[0].contains("SSL_CERT_FILE"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("retries"), "{}", run.stderr);

    let trusted = c
        .env()
        .set("S3_ENDPOINT", &endpoint)
        .set("SSL_CERT_FILE", &ca)
        .run(&["check"]);
    // The front does not pass the request's signature on: the store answers, with an error.
    assert!(
        trusted.stderr.contains("listing S3_BUCKET") && !trusted.stderr.contains("certificate"),
        "{}",
        trusted.stderr
    );
}

/// Without a key, a profile or a role, the run says so in one line (exit 2) instead of
/// blaming the store, which was never asked.
#[test]
fn no_credentials_anywhere_is_one_line_naming_the_variables() {
    let c = Case::new();
    // Where the chain would ask for an instance role: nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let metadata = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let run = c
        .env()
        .set("AWS_ACCESS_KEY_ID", "")
        .set("AWS_SECRET_ACCESS_KEY", "")
        .set("AWS_METADATA_ENDPOINT", &metadata)
        .run(&["check"]);
    run.expect(2);
    let errors: Vec<&str> = run.stderr.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "{}", run.stderr);
    assert!(
        errors[0].contains("no AWS credentials")
            && errors[0].contains("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
            && errors[0].contains("AWS_PROFILE"),
        "{}",
        run.stderr
    );
}
