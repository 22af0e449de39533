//! INTEGRITY_CHAIN and `verify --chain` (issue #19, part 2): documents linked into a chain,
//! signed checkpoints beside them, and tampering in the destination found, against osmem-server,
//! local files and moto's S3, on the three databases.

#[macro_use]
mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;

const T: &str = "audit_logs";
/// The 32-byte seed 0x01.. as base64: the signing key of these tests.
const KEY: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";

fn public_key(seed: u8) -> String {
    use base64::Engine;
    let key = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
    base64::engine::general_purpose::STANDARD.encode(key.verifying_key().as_bytes())
}

fn chained(env: Env) -> Env {
    env.set("INTEGRITY_CHAIN", "true")
        .set("INTEGRITY_SIGNING_KEY", KEY)
        .set("CHUNK_SIZE", "7")
}

fn report(run: &Run) -> Value {
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.stdout))
}

/// (kind, seq) of each problem `verify --chain --json` lists.
fn problems(run: &Run) -> BTreeSet<(String, u64)> {
    report(run)["chains"][0]["listed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["kind"].as_str().unwrap().to_string(),
                p["seq"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

fn linked(docs: &[(String, Value)]) -> Vec<&(String, Value)> {
    docs.iter()
        .filter(|(_, d)| d.get("integrity").is_some())
        .collect()
}

fn seq_of(doc: &Value) -> u64 {
    doc["integrity"]["seq"].as_u64().unwrap()
}

/// The seqs of the index's linked documents are exactly 1..=n, once each.
fn assert_whole(index: &str, n: u64) {
    let docs = osmem().docs(index);
    let mut seqs: Vec<u64> = linked(&docs).iter().map(|(_, d)| seq_of(d)).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=n).collect::<Vec<_>>());
}

async fn the_chain_in_an_index(b: Backend) {
    skip_unless!(b, Need::Osmem);
    let db = TestDb::new(b).await;
    db.create_audit_table(T).await;
    let messages: Vec<Value> = (0..30).map(message).collect();
    db.insert_messages(T, &messages).await;
    let index = unique("chain");
    let env = chained(Env::es(&db, &index));
    env.run(&["run"]).expect(0);
    db.insert_messages(T, &(30..40).map(message).collect::<Vec<_>>())
        .await;
    let second = env.run(&["run"]);
    second.expect(0);
    assert!(
        second.log("integrity checkpoint written").is_some(),
        "{}",
        second.stderr
    );
    assert_whole(&index, 40);
    // Part 1 compares the documents without their links.
    env.run(&["verify"]).expect(0);
    let clean = env.run(&["verify", "--chain"]);
    clean.expect(0);
    assert!(
        clean
            .stdout
            .contains("40 linked documents, 0 voids, 2 checkpoints"),
        "{}",
        clean.stdout
    );
    assert!(
        clean.stdout.contains("checked with key"),
        "{}",
        clean.stdout
    );
    env.run(&["verify", "--chain", "--public-key", &public_key(1)])
        .expect(0);

    // In the destination: one document deleted, a field of another changed, a forged one
    // carrying a real link (row 12's), and the first checkpoint altered.
    let docs = osmem().docs(&index);
    let find = |pk: i64| {
        docs.iter()
            .find(|(id, _)| id.starts_with(&format!("{pk}-")))
            .unwrap()
            .clone()
    };
    let url = &osmem().url;
    let (gone, gone_doc) = find(4);
    ureq::delete(&format!("{url}/{index}/_doc/{gone}"))
        .call()
        .unwrap();
    let (changed, mut changed_doc) = find(9);
    changed_doc["audit_event"]["actor"] = json!("someone else");
    ureq::put(&format!("{url}/{index}/_doc/{changed}"))
        .send_json(changed_doc.clone())
        .unwrap();
    let (_, mut forged) = find(12);
    forged["audit_event"]["actor"] = json!("forger");
    ureq::put(&format!("{url}/{index}/_doc/forged-1"))
        .send_json(forged.clone())
        .unwrap();
    let (cp_id, mut cp) = docs
        .iter()
        .filter(|(id, _)| id.starts_with("checkpoint-"))
        .min_by_key(|(_, d)| d["audit_transfer_checkpoint"]["seq"].as_u64())
        .unwrap()
        .clone();
    let cp_seq = cp["audit_transfer_checkpoint"]["seq"].as_u64().unwrap();
    cp["audit_transfer_checkpoint"]["shipped"] = json!(1000);
    ureq::put(&format!("{url}/{index}/_doc/{cp_id}?refresh=true"))
        .send_json(cp)
        .unwrap();

    let run = env.run(&["verify", "--chain", "--json"]);
    run.expect(1);
    let found = problems(&run);
    let want: BTreeSet<(String, u64)> = [
        ("missing", seq_of(&gone_doc)),
        ("modified", seq_of(&changed_doc)),
        ("duplicate", seq_of(&forged)),
        ("checkpoint signature", cp_seq),
        ("checkpoint altered", cp_seq),
    ]
    .into_iter()
    .map(|(k, s)| (k.to_string(), s))
    .collect();
    assert_eq!(found, want, "{}", run.stdout);
    let first = &report(&run)["chains"][0]["first"];
    assert_eq!(first["seq"].as_u64(), want.iter().map(|w| w.1).min());
    let text = env.run(&["verify", "--chain"]);
    text.expect(1);
    assert!(text.stdout.contains("first break: "), "{}", text.stdout);
    assert!(text.stdout.contains("forged-1"), "{}", text.stdout);
    // Part 1 names the deleted and the changed document.
    let part1 = env.run(&["verify"]);
    part1.expect(1);
    assert!(part1.stdout.contains(&gone), "{}", part1.stdout);
    assert!(part1.stdout.contains(&changed), "{}", part1.stdout);
    // Checked with another key, no checkpoint verifies.
    let other = env.run(&[
        "verify",
        "--chain",
        "--json",
        "--public-key",
        &public_key(2),
    ]);
    other.expect(1);
    let bad_signatures = problems(&other)
        .iter()
        .filter(|(k, _)| k == "checkpoint signature")
        .count();
    assert_eq!(bad_signatures, 2, "{}", other.stdout);
}

/// A page shipped but never committed (SIGKILL) is linked again the same way, or replaced in
/// the index where the next run links it differently (a failed row retried first takes a link).
async fn a_crash_and_a_refusal_leave_the_chain_whole(b: Backend) {
    skip_unless!(b, Need::Osmem);
    let db = TestDb::new(b).await;
    db.create_audit_table(T).await;
    let index = unique("chain");
    // `audit_event.actor` is a number in this index: a row with a name there is refused.
    osmem().create_strict_index(&index);
    let numeric = |n: usize| {
        let mut m = message(n);
        m["audit_event"]["actor"] = json!(n);
        m
    };
    let mut first: Vec<Value> = (0..10).map(numeric).collect();
    first[3] = message(3);
    db.insert_messages(T, &first).await;
    let env = chained(Env::es(&db, &index)).set("CHUNK_SIZE", "5");
    let run = env.run(&["run"]);
    run.expect(3);
    assert_eq!(run.n("rejected"), 1);
    let clean = env.run(&["verify", "--chain"]);
    clean.expect(0);
    assert!(
        clean
            .stdout
            .contains("9 linked documents, 1 voids, 1 checkpoints"),
        "{}",
        clean.stdout
    );
    // More rows; the refused one waits in the retry lane. Killed after the first fresh page
    // was shipped, before it was committed.
    db.insert_messages(T, &(10..20).map(numeric).collect::<Vec<_>>())
        .await;
    env.paused_at("after_ship", 2, &["run"]).kill();
    let again = env.run(&["run"]);
    again.expect(3);
    let r = env.run(&["verify", "--chain", "--json"]);
    r.expect(0);
    let chain = &report(&r)["chains"][0];
    assert_eq!(chain["documents"], 19, "{chain}");
    assert_eq!(chain["voids"], 3, "{chain}");
    assert_eq!(
        osmem()
            .ids(&index)
            .iter()
            .filter(|i| !i.starts_with("checkpoint-"))
            .count(),
        19
    );
    env.run(&["verify"]).expect(0);
}

async fn overlapping_runs_make_one_chain(b: Backend) {
    skip_unless!(b, Need::Osmem);
    let db = TestDb::new(b).await;
    db.create_audit_table(T).await;
    let messages: Vec<Value> = (0..300).map(message).collect();
    db.insert_messages(T, &messages).await;
    let index = unique("chain");
    let env = chained(Env::es(&db, &index))
        .set("CHUNK_SIZE", "10")
        .set("SINK_CONCURRENCY", "2");
    for run in env.run_at_once(4, &["run"]) {
        run.expect(0);
    }
    assert_eq!(db.unsent(T).await, 0);
    assert_whole(&index, 300);
    let r = env.run(&["verify", "--chain", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stdout);
    assert_eq!(report(&r)["chains"][0]["documents"], 300);
}

async fn the_chain_in_files(b: Backend) {
    skip_unless!(b);
    let db = TestDb::new(b).await;
    db.create_audit_table(T).await;
    db.insert_messages(T, &(0..20).map(message).collect::<Vec<_>>())
        .await;
    let dir = tempfile::tempdir().unwrap();
    let env = chained(
        Env::new()
            .set("DATABASE_URL", &db.url)
            .set("SINK", "file")
            .set("OUTPUT_PATH", dir.path().to_str().unwrap()),
    );
    env.run(&["run"]).expect(0);
    env.run(&["verify"]).expect(0);
    env.run(&["verify", "--chain"]).expect(0);

    // A line deleted, a field of another changed, a forged line with a copied link, and the
    // checkpoint's head changed.
    let mut files = archive_lines(dir.path());
    let seq_at = |f: usize, l: usize| -> u64 {
        let v: Value = serde_json::from_str(&files[f].1[l]).unwrap();
        seq_of(&v)
    };
    let (deleted, modified, copied) = (seq_at(0, 1), seq_at(1, 0), seq_at(2, 2));
    files[0].1.remove(1);
    let mut changed: Value = serde_json::from_str(&files[1].1[0]).unwrap();
    changed["audit_event"]["operation"] = json!("DELETE");
    files[1].1[0] = changed.to_string();
    let mut forged: Value = serde_json::from_str(&files[2].1[2]).unwrap();
    forged["audit_event"]["actor"] = json!("forger");
    files[2].1.push(forged.to_string());
    let mut cp_seq = 0;
    for (_, lines) in files.iter_mut() {
        for line in lines.iter_mut() {
            let mut v: Value = serde_json::from_str(line).unwrap();
            if let Some(cp) = v.get_mut("audit_transfer_checkpoint") {
                cp_seq = cp["seq"].as_u64().unwrap();
                cp["hash"] = json!("0".repeat(64));
                *line = v.to_string();
            }
        }
    }
    assert_eq!(cp_seq, 20);
    for (p, lines) in &files {
        std::fs::write(p, lines.join("\n") + "\n").unwrap();
    }
    let run = env.run(&["verify", "--chain", "--json"]);
    run.expect(1);
    let want: BTreeSet<(String, u64)> = [
        ("missing", deleted),
        ("modified", modified),
        ("duplicate", copied),
        ("checkpoint signature", cp_seq),
        ("checkpoint mismatch", cp_seq),
        ("checkpoint altered", cp_seq),
    ]
    .into_iter()
    .map(|(k, s)| (k.to_string(), s))
    .collect();
    assert_eq!(problems(&run), want, "{}", run.stdout);
}

#[test]
fn the_chain_in_a_bucket() {
    skip_unless!(Need::Python("moto"), Need::Postgres);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(TestDb::new(Backend::Postgres));
    rt.block_on(db.create_audit_table(T));
    rt.block_on(db.insert_messages(T, &(0..9).map(message).collect::<Vec<_>>()));
    let m = common::s3::moto();
    let prefix = unique("chain");
    let env =
        chained(Env::new().set("DATABASE_URL", &db.url).into_moto(&prefix)).set("CHUNK_SIZE", "4");
    env.run(&["run"]).expect(0);
    env.run(&["verify", "--chain"]).expect(0);
    // In the bucket: a line deleted, a field of another changed, a forged line carrying a real
    // link, and the checkpoint altered.
    let keys = m.list(&prefix);
    assert_eq!(keys.len(), 4, "three pages and a checkpoint: {keys:?}");
    let gunzip = |k: &str| {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&m.get(k)[..]), &mut text)
            .unwrap();
        text.lines().map(String::from).collect::<Vec<_>>()
    };
    let put = |k: &str, lines: &[String]| {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, (lines.join("\n") + "\n").as_bytes()).unwrap();
        m.put(k, gz.finish().unwrap());
    };
    let (cps, mut pages): (Vec<_>, Vec<_>) = keys
        .iter()
        .map(|k| (k.clone(), gunzip(k)))
        .partition(|(_, lines)| lines[0].contains("audit_transfer_checkpoint"));
    pages.sort_by_key(|(_, lines)| std::cmp::Reverse(lines.len()));
    let removed: Value = serde_json::from_str(&pages[0].1.remove(1)).unwrap();
    let mut changed: Value = serde_json::from_str(&pages[1].1[0]).unwrap();
    changed["audit_event"]["operation"] = json!("DELETE");
    pages[1].1[0] = changed.to_string();
    let mut forged: Value = serde_json::from_str(&pages[2].1[0]).unwrap();
    forged["audit_event"]["actor"] = json!("forger");
    pages[2].1.push(forged.to_string());
    for (k, lines) in &pages {
        put(k, lines);
    }
    let (cp_key, cp_lines) = &cps[0];
    let mut cp: Value = serde_json::from_str(&cp_lines[0]).unwrap();
    cp["audit_transfer_checkpoint"]["shipped"] = json!(999);
    put(cp_key, &[cp.to_string()]);
    let run = env.run(&["verify", "--chain", "--json"]);
    run.expect(1);
    let want: BTreeSet<(String, u64)> = [
        ("missing", seq_of(&removed)),
        ("modified", seq_of(&changed)),
        ("duplicate", seq_of(&forged)),
        ("checkpoint signature", 9),
        ("checkpoint altered", 9),
    ]
    .into_iter()
    .map(|(k, s)| (k.to_string(), s))
    .collect();
    assert_eq!(problems(&run), want, "{}", run.stdout);
    env.run(&["verify"]).expect(1);
    // The checkpoint put back: only another key now fails it.
    put(cp_key, cp_lines);
    let other = env.run(&[
        "verify",
        "--chain",
        "--json",
        "--public-key",
        &public_key(3),
    ]);
    other.expect(1);
    assert!(problems(&other).contains(&("checkpoint signature".to_string(), 9)));
    assert!(!problems(&other).contains(&("checkpoint altered".to_string(), 9)));
}

#[test]
fn chain_settings_are_checked_before_anything_moves() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = Env::new()
        .set("INTEGRITY_CHAIN", "true")
        .set("AUDIT_LOGGER_TYPE", "S3_CURSOR")
        .set("S3_BUCKET", "b")
        .set("AWS_ACCESS_KEY_ID", "id")
        .set("AWS_SECRET_ACCESS_KEY", "secret")
        .set(
            "S3_CURSOR_FILE",
            dir.path().join("s.json").to_str().unwrap(),
        )
        .set("ELASTICSEARCH_HOST", "127.0.0.1:1")
        .run(&["run"]);
    s3.expect(2);
    assert!(
        s3.stderr
            .contains("INTEGRITY_CHAIN is kept by the SQL sources"),
        "{}",
        s3.stderr
    );
    let targets = Env::new()
        .set("INTEGRITY_CHAIN", "true")
        .set("DATABASE_URL", "sqlite:///nowhere.db")
        .set("TARGETS", "a")
        .set("TARGET_A_SINK", "stdout")
        .run(&["run"]);
    targets.expect(2);
    assert!(
        targets
            .stderr
            .contains("INTEGRITY_CHAIN does not work with TARGETS"),
        "{}",
        targets.stderr
    );
    // A malformed key is named, never printed.
    let secret = "c2VjcmV0LWtleS1tYXRlcmlhbC10aGF0LWlzLXdyb25n";
    let bad = Env::new()
        .set("INTEGRITY_CHAIN", "true")
        .set("INTEGRITY_SIGNING_KEY", secret)
        .set("DATABASE_URL", "sqlite:///nowhere.db")
        .set("SINK", "stdout")
        .run(&["run"]);
    bad.expect(2);
    assert!(
        bad.stderr.contains("invalid INTEGRITY_SIGNING_KEY"),
        "{}",
        bad.stderr
    );
    assert!(!bad.stderr.contains("c2VjcmV0"), "{}", bad.stderr);
    let pk = Env::new()
        .set("DATABASE_URL", "sqlite:///nowhere.db")
        .set("SINK", "stdout")
        .run(&["verify", "--chain", "--public-key", secret]);
    pk.expect(2);
    assert!(pk.stderr.contains("invalid --public-key"), "{}", pk.stderr);
    assert!(!pk.stderr.contains("c2VjcmV0"), "{}", pk.stderr);
    let both = Env::new().run(&["verify", "--chain", "--since", "7d"]);
    both.expect(2);
}

backend_tests!(
    postgres,
    Backend::Postgres,
    [
        the_chain_in_an_index,
        a_crash_and_a_refusal_leave_the_chain_whole,
        overlapping_runs_make_one_chain,
        the_chain_in_files,
    ]
);
backend_tests!(
    mariadb,
    Backend::MySql,
    [the_chain_in_an_index, overlapping_runs_make_one_chain]
);
backend_tests!(
    sqlite,
    Backend::Sqlite,
    [
        the_chain_in_an_index,
        a_crash_and_a_refusal_leave_the_chain_whole,
        the_chain_in_files
    ]
);
