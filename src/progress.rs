//! A progress bar with rate and ETA on stderr, only when stderr is a terminal (someone is
//! watching a long backfill). Cron, Kubernetes and pipes never see it: there `start` does
//! nothing, and the log lines stay exactly as they are.
//!
//! Log lines written while the bar is shown go through [`LogWriter`], which lifts the bar out
//! of the way for the line, so bar and logs never interleave.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::sync::Mutex;

static BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

fn current() -> Option<ProgressBar> {
    BAR.lock().ok().and_then(|b| b.clone())
}

/// Whether a bar would be shown: stderr is a terminal.
pub fn wanted() -> bool {
    std::io::stderr().is_terminal()
}

/// Shows a bar for `total` records (unknown: a spinner with the count and rate).
pub fn start(total: Option<u64>) {
    if !wanted() {
        return;
    }
    let bar = match total {
        Some(n) => ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr()),
        None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
    };
    let template = if total.is_some() {
        "{bar:30} {pos}/{len} records  {rate}  ETA {eta}"
    } else {
        "{spinner} {pos} records  {rate}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.with_key(
            "rate",
            |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.0} records/s", state.per_sec());
            },
        ));
    }
    if let Ok(mut b) = BAR.lock() {
        *b = Some(bar);
    }
}

/// Records the pipeline has finished with (delivered, already present or failed).
pub fn advance(n: u64) {
    if let Some(bar) = current() {
        bar.inc(n);
    }
}

/// Removes the bar; the run's summary line follows.
pub fn finish() {
    if let Some(bar) = BAR.lock().ok().and_then(|mut b| b.take()) {
        bar.finish_and_clear();
    }
}

/// stderr for the log: suspends the bar around each line while one is shown.
pub struct LogWriter;

impl Write for LogWriter {
    /// The formatter hands over one whole event per call; it is written with every secret
    /// blanked out, whoever wrote the text (a driver's error quoting a URL included).
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let clean = crate::base::secret::scrub(&String::from_utf8_lossy(buf));
        match current() {
            Some(bar) => bar.suspend(|| std::io::stderr().write_all(clean.as_bytes())),
            None => std::io::stderr().write_all(clean.as_bytes()),
        }?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;
    fn make_writer(&'a self) -> LogWriter {
        LogWriter
    }
}
