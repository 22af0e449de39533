//! The environment reference cannot drift from the code: every variable the code reads (named by
//! a string literal at the `Env` call, see `src/base/env.rs`) is in `.env.example` and in
//! `docs/environment.md`, and everything those two list is read somewhere. Needs no service.

use std::collections::BTreeSet;
use std::path::Path;

/// Calls whose first argument names a variable.
const READERS: &[&str] = &[
    ".get(",
    ".raw(",
    ".positive(",
    ".number(",
    ".boolean(",
    ".duration(",
    ".choice(",
    ".http_url(",
    ".secret(",
    "implied_by: Some(",
    "std::env::var(",
];

/// Read by the code but not configuration: the system's own, and the crash tests' hooks
/// (compiled into debug builds only).
const NOT_CONFIGURATION: &[&str] = &[
    "HOME",
    "AUDIT_TRANSFER_FAILPOINT",
    "AUDIT_TRANSFER_FAILPOINT_DIR",
];

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn is_var_name(s: &str) -> bool {
    s.len() > 2
        && s.starts_with(|c: char| c.is_ascii_uppercase())
        && s.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// The string literal at the start of `text` (after whitespace), if any.
fn literal(text: &str) -> Option<&str> {
    let rest = text.trim_start().strip_prefix('"')?;
    rest.split('"').next()
}

fn code_vars() -> BTreeSet<String> {
    let mut files = Vec::new();
    rust_files(
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src")),
        &mut files,
    );
    let mut vars = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        // Unit tests name variables too, read or not.
        let text = text.split("#[cfg(test)]").next().unwrap();
        for reader in READERS {
            for (i, _) in text.match_indices(reader) {
                if let Some(name) = literal(&text[i + reader.len()..]).filter(|n| is_var_name(n)) {
                    vars.insert(name.to_string());
                }
            }
        }
        // The OTLP sink's per-signal variables: both names are literals of one call.
        for (i, _) in text.match_indices("logs_or_general(") {
            let args = text[i..].split(')').next().unwrap_or("");
            for name in args
                .split('"')
                .skip(1)
                .step_by(2)
                .filter(|n| is_var_name(n))
            {
                vars.insert(name.to_string());
            }
        }
        // The retry policy's three settings per prefix.
        for (i, _) in text.match_indices("Policy::from_env(") {
            let args = &text[i..];
            let Some(prefix) = args.split('"').nth(1).filter(|p| is_var_name(p)) else {
                continue;
            };
            for suffix in ["TIMEOUT_SECONDS", "MAX_RETRIES", "RETRY_INITIAL_MS"] {
                vars.insert(format!("{prefix}_{suffix}"));
            }
        }
    }
    for v in NOT_CONFIGURATION {
        vars.remove(*v);
    }
    vars
}

fn env_example_vars() -> BTreeSet<String> {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.env.example")).unwrap();
    text.lines()
        .filter_map(|l| {
            let l = l.trim_start_matches('#').trim();
            let (name, _) = l.split_once('=')?;
            is_var_name(name).then(|| name.to_string())
        })
        .collect()
}

/// The first column of the reference's tables, up to the sections about building and testing
/// (variables of the build and the test suite, not of the job).
fn docs_vars() -> BTreeSet<String> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/environment.md"))
        .unwrap();
    let job = text.split("\n## Build").next().unwrap();
    job.lines()
        .filter_map(|l| {
            let name = l.strip_prefix("| `")?.split('`').next()?;
            is_var_name(name).then(|| name.to_string())
        })
        .collect()
}

fn missing(from: &BTreeSet<String>, of: &BTreeSet<String>) -> Vec<String> {
    of.difference(from).cloned().collect()
}

#[test]
fn every_variable_read_is_documented_and_every_documented_one_is_read() {
    let code = code_vars();
    assert!(code.len() > 80, "the scan found only {code:?}");
    let example = env_example_vars();
    let docs = docs_vars();
    assert_eq!(
        missing(&example, &code),
        Vec::<String>::new(),
        "read by the code, missing from .env.example"
    );
    assert_eq!(
        missing(&docs, &code),
        Vec::<String>::new(),
        "read by the code, missing from docs/environment.md"
    );
    assert_eq!(
        missing(&code, &example),
        Vec::<String>::new(),
        "in .env.example, read nowhere"
    );
    assert_eq!(
        missing(&code, &docs),
        Vec::<String>::new(),
        "in docs/environment.md, read nowhere"
    );
}
