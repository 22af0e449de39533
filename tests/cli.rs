//! The command line as users meet it: help, configuration errors, the file and stdout sinks.

mod common;

use common::*;
use std::io::Read;

#[test]
fn help_documents_every_command_and_exit_code() {
    let run = Env::new().run(&["--help"]);
    run.expect(0);
    for needle in [
        "run",
        "monthly",
        "check",
        "retry-failed",
        "Exit codes:",
        "  0 ",
        "  1 ",
        "  2 ",
        "  3 ",
    ] {
        assert!(
            run.stdout.contains(needle),
            "--help lacks {needle:?}:\n{}",
            run.stdout
        );
    }
    let sub = Env::new().run(&["monthly", "--help"]);
    assert!(sub.stdout.contains("Exit codes:"));
    Env::new().run(&["no-such-command"]).expect(2);
}

#[test]
fn every_bad_variable_is_one_line_naming_it_with_exit_2() {
    for (var, value) in [
        ("BATCH_SIZE", "0"),
        ("CHUNK_SIZE", "ten"),
        ("MAX_ATTEMPTS", "-3"),
        ("CLEAR_AUDIT_LOG_DAYS", "1.5"),
        ("ELASTICSEARCH_PORT", "99999"),
        ("AUDIT_LOGGER_TYPE", "CSV"),
        ("AUDIT_TABLE_NAME", "logs\"; DROP TABLE logs; --"),
        ("LOG_FORMAT", "yaml"),
        ("SINK", "s3"),
        ("DATABASE_URL", "oracle://db/x"),
    ] {
        let run = Env::new()
            .set("DATABASE_URL", "sqlite:///nowhere.db")
            .set("ELASTICSEARCH_HOST", "localhost")
            .set(var, value)
            .run(&["run"]);
        assert_eq!(run.code, 2, "{var}={value}: {}", run.stderr);
        assert_eq!(
            run.stderr.trim().lines().count(),
            1,
            "{var}: {}",
            run.stderr
        );
        assert!(run.stderr.contains(var), "{var}: {}", run.stderr);
    }
    let no_sink = Env::new()
        .set("DATABASE_URL", "sqlite:///x.db")
        .run(&["run"]);
    no_sink.expect(2);
    assert!(no_sink.stderr.contains("ELASTICSEARCH_HOST") && no_sink.stderr.contains("SINK"));
}

#[test]
fn secrets_never_reach_the_logs() {
    let run = Env::new()
        .set("DATABASE_URL", "postgres://audit:url-secret@127.0.0.1:1/db")
        .set("DATABASE_PASSWORD", "env-secret")
        .set("ELASTICSEARCH_HOST", "127.0.0.1:1")
        .set("ELASTICSEARCH_PASSWORD", "es-secret")
        .set("ELASTICSEARCH_USERNAME", "u")
        .set("DEBUG", "true")
        .run(&["run"]);
    run.expect(1);
    assert!(
        run.stderr.contains("cannot connect to the database"),
        "{}",
        run.stderr
    );
    for secret in ["url-secret", "env-secret", "es-secret"] {
        assert!(
            !run.stderr.contains(secret),
            "{secret} printed:\n{}",
            run.stderr
        );
    }
}

#[tokio::test]
async fn file_sink_gzip_and_stdout_sink() {
    let db = TestDb::new(Backend::Sqlite).await;
    db.create_audit_table("audit_logs").await;
    db.insert_messages("audit_logs", &(0..7).map(message).collect::<Vec<_>>())
        .await;
    let out = tempfile::tempdir().unwrap();
    let env = Env::new()
        .set("DATABASE_URL", &db.url)
        .set("SINK", "file")
        .set("OUTPUT_PATH", out.path().to_str().unwrap())
        .set("OUTPUT_GZIP", "true")
        .set("CHUNK_SIZE", "3");
    env.run(&["check"]).expect(0);
    let run = env.run(&["run"]);
    run.expect(0);
    assert_eq!(run.n("marked"), 7);
    let mut lines = 0;
    let mut names: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names.len(), 3, "one file per page: {names:?}");
    for name in &names {
        assert!(
            name.ends_with(".jsonl.gz") && !name.starts_with('.'),
            "{name}"
        );
        let mut text = String::new();
        flate2::read::GzDecoder::new(std::fs::File::open(out.path().join(name)).unwrap())
            .read_to_string(&mut text)
            .unwrap();
        for line in text.lines() {
            let doc: serde_json::Value = serde_json::from_str(line).unwrap();
            assert!(doc["@timestamp"].is_string());
            lines += 1;
        }
    }
    assert_eq!(lines, 7);

    // stdout: documents only on stdout, logs on stderr.
    db.insert_messages("audit_logs", &[message(100), message(101)])
        .await;
    let stdout = Env::new()
        .set("DATABASE_URL", &db.url)
        .set("SINK", "stdout")
        .run(&[]);
    stdout.expect(0);
    let docs: Vec<serde_json::Value> = stdout
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[0]["audit_event"]["actor"], "user100");
    assert_eq!(db.unsent("audit_logs").await, 0);
}

/// `check` validates every setting before it touches anything: a bad sink setting is reported
/// (exit 2) before the source is connected, so no "source reachable" line precedes it.
#[test]
fn check_validates_every_setting_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let run = Env::new()
        .set(
            "DATABASE_URL",
            &format!("sqlite:///{}/missing.db", dir.path().display()),
        )
        .set("ELASTICSEARCH_HOST", "es.example")
        .set("ELASTICSEARCH_PORT", "http")
        .run(&["check"]);
    run.expect(2);
    assert!(run.stderr.contains("ELASTICSEARCH_PORT"), "{}", run.stderr);
    assert!(!run.stderr.contains("source reachable"), "{}", run.stderr);
    assert!(
        !run.stderr.contains("missing.db"),
        "the database was touched: {}",
        run.stderr
    );
}

/// RUST_LOG is honoured (the convention operators expect); DEBUG stays for compatibility; a bad
/// RUST_LOG is a configuration error naming it.
#[test]
fn rust_log_sets_the_level() {
    let base = Env::new()
        .set("LOG_FORMAT", "text")
        .set("DATABASE_URL", "sqlite:///unused.db")
        .set("SINK", "stdout")
        .set("ENABLE_SEND_AUDIT_LOG", "false");
    let info = "sending is disabled";
    assert!(base.run(&["run"]).expect(0).stderr.contains(info));
    assert!(!base
        .clone()
        .set("RUST_LOG", "warn")
        .run(&["run"])
        .expect(0)
        .stderr
        .contains(info));
    let debug = base
        .clone()
        .set("RUST_LOG", "audit_transfer=debug")
        .run(&["run"]);
    assert!(debug.expect(0).stderr.contains(info));
    let bad = base
        .clone()
        .set("RUST_LOG", "audit_transfer=loud")
        .run(&["run"]);
    bad.expect(2);
    assert!(bad.stderr.contains("invalid RUST_LOG"), "{}", bad.stderr);
}

/// RUST_LOG lowers the level too: our debug lines appear with it and not without it.
#[tokio::test]
async fn rust_log_debug_shows_our_debug_lines() {
    let db = TestDb::new(Backend::Sqlite).await;
    db.create_audit_table("audit_logs").await;
    db.insert_messages("audit_logs", &[message(1)]).await;
    let out = tempfile::tempdir().unwrap();
    let env = Env::new()
        .set("LOG_FORMAT", "text")
        .set("DATABASE_URL", &db.url)
        .set("SINK", "file")
        .set("OUTPUT_PATH", out.path().to_str().unwrap());
    let plain = env.run(&["run"]);
    assert!(
        !plain.expect(0).stderr.contains("page shipped"),
        "{}",
        plain.stderr
    );
    db.exec("UPDATE audit_logs SET is_sent = false").await;
    let debug = env
        .clone()
        .set("RUST_LOG", "audit_transfer=debug")
        .run(&["run"]);
    assert!(
        debug.expect(0).stderr.contains("page shipped"),
        "{}",
        debug.stderr
    );
}
