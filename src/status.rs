//! `audit-transfer status`: the state of the queue and of the last runs, for people (text) and
//! for checks (`--json`, exit code).
//!
//! Healthy means: no parked records, the last recorded run did not fail (exit 1 or 2), and,
//! when given, the oldest unsent record is not older than `--max-age` and a successful run
//! (exit 0 or 3) ended within `--max-since-success`.

use crate::base::source::{Backlog, LastRuns, RunRecord};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};
use std::time::Duration;

pub struct Report {
    source: String,
    now: DateTime<Utc>,
    /// `None`: the source cannot count it without fetching it (the APIs).
    backlog: Option<Backlog>,
    parked: u64,
    runs: LastRuns,
    problems: Vec<String>,
}

impl Report {
    pub fn new(
        source: String,
        now: DateTime<Utc>,
        backlog: Option<Backlog>,
        parked: u64,
        runs: LastRuns,
        max_age: Option<Duration>,
        max_since_success: Option<Duration>,
    ) -> Report {
        let mut problems = Vec::new();
        if parked > 0 {
            problems.push(format!(
                "{parked} parked record(s): fix them, then run `audit-transfer retry-failed`"
            ));
        }
        if let Some(last) = &runs.last {
            if !crate::base::exit::succeeded(last.exit_code) {
                problems.push(format!("the last run failed (exit {})", last.exit_code));
            }
            for t in last.targets.iter().filter(|t| t.lacking > 0) {
                problems.push(format!(
                    "target {} lacks {} record(s) after the last run{}",
                    t.name,
                    t.lacking,
                    if t.down { " (it was down)" } else { "" }
                ));
            }
        }
        let oldest_unsent = backlog.as_ref().and_then(|b| b.oldest_unsent);
        if let (Some(limit), Some(oldest)) = (max_age, oldest_unsent) {
            let age = age(now, oldest);
            if age > limit {
                problems.push(format!(
                    "the oldest unsent record is {} old (--max-age {})",
                    human(age),
                    human(limit)
                ));
            }
        }
        if let Some(limit) = max_since_success {
            match &runs.last_success {
                None => problems.push("no successful run recorded (--max-since-success)".into()),
                Some(r) if age(now, r.finished_at) > limit => problems.push(format!(
                    "the last successful run ended {} ago (--max-since-success {})",
                    human(age(now, r.finished_at)),
                    human(limit)
                )),
                Some(_) => {}
            }
        }
        Report {
            source,
            now,
            backlog,
            parked,
            runs,
            problems,
        }
    }

    fn oldest_unsent(&self) -> Option<DateTime<Utc>> {
        self.backlog.as_ref().and_then(|b| b.oldest_unsent)
    }

    pub fn healthy(&self) -> bool {
        self.problems.is_empty()
    }

    pub fn json(&self) -> Value {
        let run = |r: &Option<RunRecord>| match r {
            None => Value::Null,
            Some(r) => {
                let mut v = json!({
                    "finished_at": stamp(r.finished_at),
                    "age_seconds": age(self.now, r.finished_at).as_secs(),
                    "exit_code": r.exit_code,
                    "selected": r.selected,
                    "delivered": r.delivered,
                    "already_present": r.already_present,
                    "rejected": r.rejected,
                    "parked": r.parked,
                    "marked": r.marked,
                    "duration_seconds": r.duration_ms as f64 / 1000.0,
                });
                // Only with TARGETS: the output of other setups stays as it was.
                if !r.targets.is_empty() {
                    v["targets"] = json!(r.targets);
                }
                v
            }
        };
        json!({
            "source": self.source,
            "healthy": self.healthy(),
            "problems": self.problems,
            "backlog": self.backlog.as_ref().map(|b| b.unsent),
            "oldest_unsent": self.oldest_unsent().map(stamp),
            "oldest_unsent_age_seconds": self.oldest_unsent().map(|t| age(self.now, t).as_secs()),
            "parked": self.parked,
            "last_run": run(&self.runs.last),
            "last_success": run(&self.runs.last_success),
        })
    }

    pub fn text(&self) -> String {
        let run = |r: &Option<RunRecord>| {
            match r {
            None => "none recorded".to_string(),
            Some(r) => format!(
                "{} ({} ago), exit {}: {} selected, {} delivered, {} already present, {} rejected, {} marked in {:.1}s{}",
                stamp(r.finished_at),
                human(age(self.now, r.finished_at)),
                r.exit_code,
                r.selected,
                r.delivered,
                r.already_present,
                r.rejected,
                r.marked,
                r.duration_ms as f64 / 1000.0,
                r.targets
                    .iter()
                    .map(|t| format!(
                        "\n  target {}: {} delivered, {} already present, {} rejected, {} lacking{}",
                        t.name,
                        t.delivered,
                        t.already_present,
                        t.rejected,
                        t.lacking,
                        if t.down { " (down)" } else { "" }
                    ))
                    .collect::<String>()
            ),
        }
        };
        let oldest = match self.oldest_unsent() {
            None => "-".to_string(),
            Some(t) => format!("{} ({} old)", stamp(t), human(age(self.now, t))),
        };
        let verdict = if self.healthy() {
            "healthy".to_string()
        } else {
            format!("UNHEALTHY: {}", self.problems.join("; "))
        };
        format!(
            "source:          {}\nbacklog:         {}\noldest unsent:   {oldest}\nparked:          {}\nlast run:        {}\nlast success:    {}\nstatus:          {verdict}\n",
            self.source,
            match &self.backlog {
                Some(b) => format!("{} record(s) to send", b.unsent),
                None => "unknown (an API source: the job only sees what it fetches)".into(),
            },
            self.parked,
            run(&self.runs.last),
            run(&self.runs.last_success),
        )
    }
}

fn age(now: DateTime<Utc>, t: DateTime<Utc>) -> Duration {
    (now - t).to_std().unwrap_or_default()
}

fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// `3d 4h`, `2h 5m`, `4m 10s`, `12s`.
fn human(d: Duration) -> String {
    let s = d.as_secs();
    let (days, hours, mins, secs) = (s / 86400, s % 86400 / 3600, s % 3600 / 60, s % 60);
    if days > 0 {
        format!("{days}d {hours}h")
    } else if hours > 0 {
        format!("{hours}h {mins}m")
    } else if mins > 0 {
        format!("{mins}m {secs}s")
    } else {
        format!("{secs}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn record(finished: &str, exit_code: u8) -> RunRecord {
        RunRecord {
            finished_at: at(finished),
            exit_code,
            selected: 3,
            delivered: 3,
            already_present: 0,
            rejected: 0,
            parked: 0,
            marked: 3,
            duration_ms: 1200,
            targets: Vec::new(),
        }
    }

    #[test]
    fn health_rules() {
        let now = at("2024-05-01T12:00:00Z");
        let backlog = Backlog {
            unsent: 10,
            oldest_unsent: Some(at("2024-05-01T11:00:00Z")),
        };
        let ok = LastRuns {
            last: Some(record("2024-05-01T11:55:00Z", 0)),
            last_success: Some(record("2024-05-01T11:55:00Z", 0)),
        };
        let r = Report::new(
            "s".into(),
            now,
            Some(backlog.clone()),
            0,
            ok.clone(),
            None,
            None,
        );
        assert!(r.healthy(), "{}", r.text());
        assert!(r
            .text()
            .contains("oldest unsent:   2024-05-01T11:00:00Z (1h 0m old)"));
        let hour = Duration::from_secs(3600);
        let r = Report::new(
            "s".into(),
            now,
            Some(backlog.clone()),
            0,
            ok.clone(),
            Some(hour / 2),
            None,
        );
        assert!(!r.healthy() && r.problems[0].contains("--max-age 30m 0s"));
        let r = Report::new(
            "s".into(),
            now,
            Some(backlog.clone()),
            2,
            ok.clone(),
            Some(hour * 2),
            None,
        );
        assert!(!r.healthy() && r.problems[0].contains("2 parked"));
        let failed = LastRuns {
            last: Some(record("2024-05-01T11:58:00Z", 1)),
            ..ok
        };
        let r = Report::new(
            "s".into(),
            now,
            Some(backlog.clone()),
            0,
            failed,
            None,
            None,
        );
        assert!(!r.healthy() && r.json()["problems"][0] == "the last run failed (exit 1)");
        let none = Report::new(
            "s".into(),
            now,
            Some(backlog),
            0,
            LastRuns::default(),
            None,
            Some(hour),
        );
        assert!(!none.healthy());
        assert_eq!(none.json()["last_run"], Value::Null);
        assert_eq!(none.json()["oldest_unsent_age_seconds"], 3600);
    }
}
