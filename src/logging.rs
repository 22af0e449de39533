//! `tracing` to stderr: human-readable by default, one JSON object per line with LOG_FORMAT=json.

use crate::config::LogFormat;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

pub fn init(format: LogFormat, debug: bool) {
    let ours = if debug {
        LevelFilter::DEBUG
    } else {
        LevelFilter::INFO
    };
    // Libraries speak only when something is wrong; their debug output would print SQL.
    let filter = Targets::new()
        .with_default(LevelFilter::WARN)
        .with_target(env!("CARGO_CRATE_NAME"), ours);
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
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
