//! Exit codes and the error kinds that choose them.
//!
//! Exit codes are part of the interface (cron and Kubernetes alert on them), so they live
//! in one place and `--help` and README quote this table.

use std::fmt;

/// Process exit status of one invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Everything selected was delivered and marked, nothing to do, or sending disabled.
    Ok = 0,
    /// The run failed: source or sink unreachable after retries, authentication refused.
    Failed = 1,
    /// Configuration or usage error.
    Config = 2,
    /// Partial: the run finished but some records were rejected or are parked as failed.
    Partial = 3,
}

impl Exit {
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// A configuration problem: always one line, naming the variable and what it accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Shorthand for building a [`ConfigError`] inside an `anyhow` chain.
pub fn config_error(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(ConfigError(msg.into()))
}

/// The exit code an error chain maps to: configuration errors anywhere in the chain are 2.
pub fn exit_for(err: &anyhow::Error) -> Exit {
    if err.chain().any(|e| e.is::<ConfigError>()) {
        Exit::Config
    } else {
        Exit::Failed
    }
}

/// One line for humans: the whole cause chain joined with ": ", without newlines.
pub fn one_line(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        let text = cause.to_string().replace('\n', " ");
        // sqlx and reqwest repeat their source in Display; skip exact repeats.
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

/// An error and its sources on one line, skipping a source its parent already quoted (HTTP
/// clients repeat their cause in Display).
pub fn chain_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text = format!("{text}: {s_text}");
        }
        source = s.source();
    }
    text
}

/// The first 300 characters of a response body, on one line, for error messages.
pub fn excerpt(text: &str) -> String {
    let one_line = text.replace('\n', " ");
    match one_line.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &one_line[..i]),
        None => one_line,
    }
}

/// A run "succeeded" when it completed its pass: exit 0, or exit 3 (partial).
pub fn succeeded(exit_code: u8) -> bool {
    exit_code == Exit::Ok.code() || exit_code == Exit::Partial.code()
}
