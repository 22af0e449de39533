//! The run's numbers for Prometheus, as batch jobs report them: written to a node-exporter
//! textfile (METRICS_TEXTFILE) and/or pushed to a Pushgateway (METRICS_PUSHGATEWAY_URL) once,
//! at the end of the run.
//!
//! Every metric is a gauge describing the last run (a batch job has no process that lives long
//! enough to be scraped), labelled with the source so several jobs can share a textfile
//! directory or a Pushgateway. A run "succeeded" when it completed its pass: exit 0, or exit 3
//! where single records were rejected or are parked (those have their own numbers).

use crate::base::env::Env;
use crate::base::exit::ConfigError;
use crate::base::source::Backlog;
use crate::pipeline::Summary;
use anyhow::{bail, Context, Result};
use base64::Engine;
use chrono::{DateTime, Utc};
use std::fmt::Write;
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

const PREFIX: &str = "audit_transfer";
/// The Pushgateway job name, the first part of the grouping key.
pub const JOB: &str = "audit-transfer";
const PUSH_TIMEOUT: Duration = Duration::from_secs(10);
const LAST_SUCCESS: &str = "audit_transfer_last_success_timestamp_seconds";

pub use crate::base::exit::succeeded;

/// Where a run reports its metrics (both may be set).
#[derive(Debug, Clone, Default)]
pub struct MetricsConfig {
    /// METRICS_TEXTFILE: a `.prom` file for node-exporter's textfile collector.
    pub textfile: Option<PathBuf>,
    /// METRICS_PUSHGATEWAY_URL: base URL of a Prometheus Pushgateway.
    pub pushgateway: Option<url::Url>,
}

impl MetricsConfig {
    pub fn from_env(raw: &Env) -> Result<Self, ConfigError> {
        let textfile = match raw.get("METRICS_TEXTFILE") {
            None => None,
            Some(p) => {
                let path = PathBuf::from(p);
                if path.file_name().is_none() || path.is_dir() || !p.ends_with(".prom") {
                    return Err(ConfigError(format!(
                        "invalid METRICS_TEXTFILE {p:?}: expected a file path ending in .prom (node-exporter reads only those)"
                    )));
                }
                Some(path)
            }
        };
        let pushgateway = match raw.get("METRICS_PUSHGATEWAY_URL") {
            None => None,
            Some(u) => Some(
                url::Url::parse(u)
                    .ok()
                    .filter(|u| {
                        matches!(u.scheme(), "http" | "https")
                            && u.host_str().is_some()
                            && u.username().is_empty()
                            && u.password().is_none()
                            && u.query().is_none()
                    })
                    .ok_or_else(|| {
                        // The value is not echoed: it may hold credentials.
                        ConfigError(
                            "invalid METRICS_PUSHGATEWAY_URL: expected http(s)://host:port of a Pushgateway, without credentials or query"
                                .to_string(),
                        )
                    })?,
            ),
        };
        Ok(MetricsConfig {
            textfile,
            pushgateway,
        })
    }
}

/// Everything reported about one run.
#[derive(Debug, Clone)]
pub struct RunMetrics {
    /// Value of the `source` label (the configured source's `label`).
    pub source: String,
    pub summary: Summary,
    pub exit_code: u8,
    pub finished_at: DateTime<Utc>,
    /// `None` when the source cannot count it (API sources) or counting failed.
    pub backlog: Option<Backlog>,
    /// The last successful run known before this one (carried over when this one failed).
    pub previous_success: Option<DateTime<Utc>>,
}

impl RunMetrics {
    fn last_success(&self) -> Option<DateTime<Utc>> {
        if succeeded(self.exit_code) {
            Some(self.finished_at)
        } else {
            self.previous_success
        }
    }

    /// The text exposition format (version 0.0.4). `labelled`: every sample carries the
    /// `source` label (the textfile); the Pushgateway gets it from the grouping key instead.
    pub fn render(&self, labelled: bool) -> String {
        let base = if labelled {
            format!("source=\"{}\"", escape(&self.source))
        } else {
            String::new()
        };
        let labels = |extra: &str| -> String {
            match (base.is_empty(), extra.is_empty()) {
                (true, true) => String::new(),
                (true, false) => format!("{{{extra}}}"),
                (false, true) => format!("{{{base}}}"),
                (false, false) => format!("{{{base},{extra}}}"),
            }
        };
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, samples: &[(&str, f64)]| {
            let _ = writeln!(out, "# HELP {PREFIX}_{name} {help}");
            let _ = writeln!(out, "# TYPE {PREFIX}_{name} gauge");
            for (extra, value) in samples {
                let _ = writeln!(out, "{PREFIX}_{name}{} {}", labels(extra), number(*value));
            }
        };
        let s = &self.summary;
        gauge(
            "run_records",
            "Records of the last run by outcome: selected, delivered, already_present, rejected, marked.",
            &[
                ("outcome=\"selected\"", s.selected as f64),
                ("outcome=\"delivered\"", s.delivered as f64),
                ("outcome=\"already_present\"", s.already_present as f64),
                ("outcome=\"rejected\"", s.rejected as f64),
                ("outcome=\"marked\"", s.marked as f64),
            ],
        );
        if !s.targets.is_empty() {
            let mut records = Vec::new();
            let mut down = Vec::new();
            for t in &s.targets {
                let target = format!("target=\"{}\"", escape(&t.name));
                for (outcome, n) in [
                    ("delivered", t.delivered),
                    ("already_present", t.already_present),
                    ("rejected", t.rejected),
                    ("lacking", t.lacking),
                ] {
                    records.push((format!("{target},outcome=\"{outcome}\""), n as f64));
                }
                down.push((target, if t.down { 1.0 } else { 0.0 }));
            }
            gauge(
                "target_records",
                "With TARGETS, each target's records in the last run: delivered, already_present, rejected, lacking (accepted but not held at the end: they stay unmarked).",
                &borrow(&records),
            );
            gauge(
                "target_down",
                "With TARGETS, 1 if the target failed during the last run and was sent nothing more.",
                &borrow(&down),
            );
        }
        gauge(
            "parked_records",
            "Records parked after MAX_ATTEMPTS failed deliveries, as of the last run.",
            &[("", s.parked as f64)],
        );
        gauge(
            "run_duration_seconds",
            "Duration of the last run's transfer.",
            &[("", s.duration.as_secs_f64())],
        );
        gauge(
            "run_success",
            "1 if the last run completed its pass (exit code 0 or 3), else 0.",
            &[("", if succeeded(self.exit_code) { 1.0 } else { 0.0 })],
        );
        gauge(
            "run_exit_code",
            "Exit code of the last run: 0 ok, 1 failed, 2 configuration error, 3 partial.",
            &[("", self.exit_code as f64)],
        );
        gauge(
            "last_run_timestamp_seconds",
            "Unix time the last run ended.",
            &[("", unix(self.finished_at))],
        );
        if let Some(t) = self.last_success() {
            gauge(
                "last_success_timestamp_seconds",
                "Unix time the last successful run (exit code 0 or 3) ended.",
                &[("", unix(t))],
            );
        }
        if let Some(b) = &self.backlog {
            gauge(
                "backlog_records",
                "Records still to send after the last run, not counting parked ones.",
                &[("", b.unsent as f64)],
            );
            let age = b
                .oldest_unsent
                .map(|t| (self.finished_at - t).num_milliseconds().max(0) as f64 / 1000.0)
                .unwrap_or(0.0);
            gauge(
                "oldest_unsent_age_seconds",
                "Age of the oldest record still to send when the last run ended; 0 when none.",
                &[("", age)],
            );
        }
        out
    }
}

/// Owned label sets as the `gauge` samples borrow them.
fn borrow(v: &[(String, f64)]) -> Vec<(&str, f64)> {
    v.iter().map(|(l, n)| (l.as_str(), *n)).collect()
}

fn unix(t: DateTime<Utc>) -> f64 {
    t.timestamp_millis() as f64 / 1000.0
}

fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// Label values escape backslash, double quote and newline.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The last-success time a previous textfile of ours holds, so a failed run keeps it.
fn previous_success_in(path: &Path) -> Option<DateTime<Utc>> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text
        .lines()
        .find(|l| l.starts_with(LAST_SUCCESS) && !l.starts_with('#'))?;
    let secs: f64 = line.rsplit(' ').next()?.parse().ok()?;
    DateTime::from_timestamp_millis((secs * 1000.0).round() as i64)
}

/// Replaces the textfile atomically: node-exporter never reads half of it.
pub fn write_textfile(path: &Path, metrics: &RunMetrics) -> Result<()> {
    let mut m = metrics.clone();
    if m.previous_success.is_none() {
        m.previous_success = previous_success_in(path);
    }
    let text = m.render(true);
    crate::base::atomic::replace(path, |mut f| {
        std::io::Write::write_all(&mut f, text.as_bytes())?;
        Ok(f)
    })
    .with_context(|| format!("cannot write METRICS_TEXTFILE {}", path.display()))
}

/// The Pushgateway URL of this source's group: `/metrics/job/audit-transfer/source@base64/…`
/// (base64url, so any source name is a valid path segment).
pub fn push_url(base: &url::Url, source: &str) -> String {
    let encoded = base64::engine::general_purpose::URL_SAFE.encode(source.as_bytes());
    format!(
        "{}/metrics/job/{JOB}/source@base64/{encoded}",
        base.as_str().trim_end_matches('/')
    )
}

/// Pushes the run's metrics. A successful run replaces its group (PUT); a failed one only
/// updates the metrics it sends (POST), so the group keeps the last success time it had.
pub async fn push(base: &url::Url, metrics: &RunMetrics) -> Result<()> {
    let url = push_url(base, &metrics.source);
    let client = reqwest::Client::builder()
        .timeout(PUSH_TIMEOUT)
        .no_proxy()
        .build()
        .context("cannot set up the Pushgateway client")?;
    let request = if succeeded(metrics.exit_code) {
        client.put(&url)
    } else {
        client.post(&url)
    };
    let response = request
        .header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        .body(metrics.render(false))
        .send()
        .await
        .map_err(|e| {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text = format!("{text}: {s}");
                source = s.source();
            }
            anyhow::anyhow!("cannot push metrics to METRICS_PUSHGATEWAY_URL {base}: {text}")
        })?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        bail!(
            "the Pushgateway at {base} answered HTTP {}: {}",
            status.as_u16(),
            body.trim().chars().take(300).collect::<String>()
        );
    }
    Ok(())
}

/// Writes and pushes where configured. Failures are logged, not fatal: the transfer itself
/// is done, and its exit code stays what the transfer made it.
pub async fn report(cfg: &MetricsConfig, metrics: &RunMetrics) {
    if let Some(path) = &cfg.textfile {
        match write_textfile(path, metrics) {
            Ok(()) => tracing::debug!(path = %path.display(), "metrics written"),
            Err(e) => tracing::warn!("{}", crate::base::exit::one_line(&e)),
        }
    }
    if let Some(url) = &cfg.pushgateway {
        match push(url, metrics).await {
            Ok(()) => tracing::debug!(url = %url, "metrics pushed"),
            Err(e) => tracing::warn!("{}", crate::base::exit::one_line(&e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(exit_code: u8) -> RunMetrics {
        RunMetrics {
            source: "single_column_json:audit\"logs".into(),
            summary: Summary {
                selected: 5,
                delivered: 4,
                rejected: 1,
                marked: 4,
                duration: Duration::from_millis(1500),
                targets: vec![crate::pipeline::TargetSummary {
                    name: "siem".into(),
                    delivered: 4,
                    lacking: 1,
                    down: true,
                    ..Default::default()
                }],
                ..Default::default()
            },
            exit_code,
            finished_at: "2024-05-01T10:00:00Z".parse().unwrap(),
            backlog: Some(Backlog {
                unsent: 7,
                oldest_unsent: Some("2024-05-01T09:00:00Z".parse().unwrap()),
            }),
            previous_success: None,
        }
    }

    #[test]
    fn exposition_has_every_number() {
        let text = sample(3).render(true);
        for line in [
            "audit_transfer_run_records{source=\"single_column_json:audit\\\"logs\",outcome=\"delivered\"} 4",
            "audit_transfer_run_duration_seconds{source=\"single_column_json:audit\\\"logs\"} 1.5",
            "audit_transfer_run_success{source=\"single_column_json:audit\\\"logs\"} 1",
            "audit_transfer_backlog_records{source=\"single_column_json:audit\\\"logs\"} 7",
            "audit_transfer_oldest_unsent_age_seconds{source=\"single_column_json:audit\\\"logs\"} 3600",
            "audit_transfer_last_success_timestamp_seconds{source=\"single_column_json:audit\\\"logs\"} 1714557600",
            "audit_transfer_target_records{source=\"single_column_json:audit\\\"logs\",target=\"siem\",outcome=\"lacking\"} 1",
            "audit_transfer_target_down{source=\"single_column_json:audit\\\"logs\",target=\"siem\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
        let unlabelled = sample(1).render(false);
        assert!(unlabelled.contains("audit_transfer_run_success 0\n"));
        assert!(!unlabelled.contains("last_success"));
    }

    #[test]
    fn a_failed_run_keeps_the_last_success_of_the_textfile() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.prom");
        write_textfile(&path, &sample(0)).unwrap();
        let mut failed = sample(1);
        failed.finished_at = "2024-05-01T11:00:00Z".parse().unwrap();
        write_textfile(&path, &failed).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("run_success{source=\"single_column_json:audit\\\"logs\"} 0"));
        assert!(text.contains("} 1714557600\n"), "{text}");
    }

    #[test]
    fn push_url_is_the_grouping_key() {
        let base = url::Url::parse("http://pg:9091/prefix/").unwrap();
        assert_eq!(
            push_url(&base, "castai"),
            "http://pg:9091/prefix/metrics/job/audit-transfer/source@base64/Y2FzdGFp"
        );
    }
}
