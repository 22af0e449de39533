//! `tracing` to stderr: human-readable by default, one JSON object per line with LOG_FORMAT=json.
//! Every line passes the secret scrubber on its way out (see `progress::LogWriter`).

use crate::base::env::Env;
use crate::base::exit::ConfigError;
use std::str::FromStr;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// LOG_FORMAT, DEBUG and RUST_LOG: read before anything else, so every later error is logged
/// in the format asked for.
#[derive(Debug, Clone)]
pub struct Settings {
    pub format: LogFormat,
    pub filter: Targets,
}

impl Settings {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let format = env
            .choice(
                "LOG_FORMAT",
                &[("text", LogFormat::Text), ("json", LogFormat::Json)],
            )?
            .unwrap_or(LogFormat::Text);
        let debug = env.boolean("DEBUG")?.unwrap_or(false);
        // RUST_LOG wins where set (the convention operators expect); DEBUG is the original's.
        let filter = match env.get("RUST_LOG") {
            Some(directives) => Targets::from_str(directives).map_err(|e| {
                ConfigError(format!(
                    "invalid RUST_LOG {directives:?}: expected directives such as info, debug or audit_transfer=debug,sqlx=warn ({e})"
                ))
            })?,
            None => default_filter(debug),
        };
        Ok(Settings { format, filter })
    }

    /// What logs when the settings themselves are invalid: text at INFO, so the error shows.
    pub fn fallback(env: &Env) -> Self {
        let format = match env
            .get("LOG_FORMAT")
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("json") => LogFormat::Json,
            _ => LogFormat::Text,
        };
        Settings {
            format,
            filter: default_filter(false),
        }
    }
}

/// Ours at INFO (DEBUG with DEBUG=true); libraries speak only when something is wrong, since
/// their debug output would print SQL.
fn default_filter(debug: bool) -> Targets {
    let ours = if debug {
        LevelFilter::DEBUG
    } else {
        LevelFilter::INFO
    };
    Targets::new()
        .with_default(LevelFilter::WARN)
        .with_target(env!("CARGO_CRATE_NAME"), ours)
}

pub fn init(settings: &Settings) {
    let registry = tracing_subscriber::registry().with(settings.filter.clone());
    let result = match settings.format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(crate::progress::LogWriter)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                    .with_target(false),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false)
                    .with_target(false)
                    .with_writer(crate::progress::LogWriter),
            )
            .try_init(),
    };
    // A second init (only in tests) keeps the first subscriber.
    let _ = result;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_is_honoured_and_checked() {
        let s = Settings::from_env(&Env::from_pairs([("RUST_LOG", "debug")])).unwrap();
        assert_eq!(s.filter.default_level(), Some(LevelFilter::DEBUG));
        let e = Settings::from_env(&Env::from_pairs([("RUST_LOG", "x=loud")])).unwrap_err();
        assert!(e.0.starts_with("invalid RUST_LOG \"x=loud\""), "{}", e.0);
        let d = Settings::from_env(&Env::from_pairs([("DEBUG", "true")])).unwrap();
        assert_eq!(d.filter.default_level(), Some(LevelFilter::WARN));
        let e = Settings::from_env(&Env::from_pairs([("LOG_FORMAT", "xml")])).unwrap_err();
        assert_eq!(e.0, "invalid LOG_FORMAT \"xml\": expected text or json");
    }
}
