//! The state file (`CATO_STATE_FILE`, JSON, replaced atomically): the marker and what belongs
//! to it, loading it (refusing one of another feed, endpoint, account list, filter set or
//! ACCEPT_* selection: a marker means nothing for another query), the run lock, saving it, and
//! the failed records and runs it keeps.

use super::client::Window;
use super::settings::Settings;
use crate::base::exit::config_error;
use crate::base::source::{LastRuns, Parked, RunRecord};
use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};

const STATE_FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Belongs {
    feed: String,
    api_url: String,
    accounts: Vec<String>,
    filters: String,
    /// `Routing::accept_label` of the runs; `None`: everything.
    accepts: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct State {
    format: u32,
    belongs: Belongs,
    /// The marker to send next: every record fetched before it was acknowledged by the sink or
    /// is in `failed`. Empty: eventsFeed from the oldest retained event; auditFeed the start of
    /// `window`.
    pub marker: String,
    /// auditFeed: the window `marker` belongs to, while one is being read.
    pub window: Option<Window>,
    /// auditFeed: every record up to here was handled (the end of the last drained window).
    pub covered_to: Option<DateTime<Utc>>,
    /// When the server last answered a call with `marker`: older than markers live is a
    /// possible gap.
    pub marker_saved_at: Option<DateTime<Utc>>,
    /// eventsFeed: events before this time are passed over (an explicit `CATO_START_FROM`,
    /// fixed when the file was created).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<DateTime<Utc>>,
    /// Records acknowledged under the current marker that the feed may return again (the
    /// inclusive audit boundary, an unchanged marker, a window's one-second overlap): skipped.
    pub acked: Vec<Acked>,
    pub failed: Vec<FailedItem>,
    #[serde(default, skip_serializing_if = "LastRuns::is_empty")]
    pub runs: LastRuns,
    /// INTEGRITY_CHAIN: the chain's head, voids and last checkpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<crate::base::source::ChainState>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Acked {
    pub id: String,
    pub time: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FailedItem {
    pub key: String,
    pub account: String,
    pub attempts: u32,
    pub last_error: String,
    /// The record as Cato returned it: after the marker moved on, the only copy.
    pub item: Value,
    /// With TARGETS: the targets that already hold it; a retry goes to the others only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held_by: Vec<String>,
}

impl State {
    pub fn record_failure(&mut self, key: &str, account: &str, reason: &str, item: Value) {
        match self.failed.iter_mut().find(|f| f.key == key) {
            Some(f) => {
                f.attempts += 1;
                f.last_error = reason.to_string();
                f.item = item;
            }
            None => self.failed.push(FailedItem {
                key: key.to_string(),
                account: account.to_string(),
                attempts: 1,
                last_error: reason.to_string(),
                item,
                held_by: Vec::new(),
            }),
        }
    }

    /// With TARGETS: as CAST AI's (`record_held` there): kept with its item, retried to the
    /// targets that lack it, without counting an attempt.
    pub fn record_held(&mut self, key: &str, account: &str, held_by: Vec<String>, item: Value) {
        match self.failed.iter_mut().find(|f| f.key == key) {
            Some(f) => f.held_by = held_by,
            None => self.failed.push(FailedItem {
                key: key.to_string(),
                account: account.to_string(),
                attempts: 0,
                last_error: crate::base::source::LACKING.into(),
                item,
                held_by,
            }),
        }
    }

    pub fn parked(&self, max_attempts: u32) -> Vec<Parked> {
        self.failed
            .iter()
            .filter(|f| f.attempts >= max_attempts)
            .map(|f| Parked {
                key: f.key.clone(),
                attempts: f.attempts as i64,
                last_error: f.last_error.clone(),
            })
            .collect()
    }

    pub fn reset_attempts(&mut self) -> u64 {
        for f in &mut self.failed {
            f.attempts = 0;
        }
        self.failed.len() as u64
    }

    pub fn record_run(&mut self, run: &RunRecord) {
        self.runs.record(run);
    }
}

pub(super) struct StateFile {
    path: PathBuf,
    belongs: Belongs,
}

impl StateFile {
    pub fn new(settings: &Settings, accepts: Option<String>) -> Self {
        StateFile {
            path: settings.state_file.clone(),
            belongs: Belongs {
                feed: settings.feed.name().into(),
                api_url: settings.api_url.to_string(),
                accounts: settings.account_ids.clone(),
                filters: settings.filter_label(),
                accepts,
            },
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A first run's state: auditFeed starts its first window at `covered_to`.
    pub fn fresh(&self, covered_to: Option<DateTime<Utc>>) -> State {
        State {
            format: STATE_FORMAT,
            belongs: self.belongs.clone(),
            marker: String::new(),
            window: None,
            covered_to,
            not_before: None,
            marker_saved_at: None,
            acked: Vec::new(),
            failed: Vec::new(),
            runs: LastRuns::default(),
            chain: None,
        }
    }

    pub fn load(&self) -> Result<Option<State>> {
        let path = &self.path;
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(config_error(format!(
                    "cannot read CATO_STATE_FILE {}: {e}",
                    path.display()
                )))
            }
        };
        let state: State = serde_json::from_str(&text).map_err(|e| {
            config_error(format!(
                "CATO_STATE_FILE {} is corrupt ({e}); it is not replaced automatically: restore \
                 it, or delete it to start again (eventsFeed: from the oldest retained event; \
                 auditFeed: at CATO_START_FROM)",
                path.display()
            ))
        })?;
        if state.format != STATE_FORMAT {
            return Err(config_error(format!(
                "CATO_STATE_FILE {} has format {}, this version reads format {STATE_FORMAT}",
                path.display(),
                state.format
            )));
        }
        if state.belongs != self.belongs {
            let show = |b: &Belongs| {
                format!(
                    "CATO_FEED={} CATO_API_URL={} CATO_ACCOUNT_ID={} filters {{{}}} accepting {}",
                    b.feed,
                    b.api_url,
                    b.accounts.join(","),
                    b.filters,
                    b.accepts.as_deref().unwrap_or("everything")
                )
            };
            return Err(config_error(format!(
                "CATO_STATE_FILE {} belongs to {}, not {}: a marker is only valid for its own \
                 query; use a state file per feed, endpoint, account list, filter set and \
                 ACCEPT_TOPICS/ACCEPT_ROUTING_KEYS selection",
                path.display(),
                show(&state.belongs),
                show(&self.belongs)
            )));
        }
        Ok(Some(state))
    }

    pub fn lock(&self) -> Result<std::fs::File> {
        crate::base::atomic::lock_state_file("CATO_STATE_FILE", &self.path)
    }

    pub fn save(&self, state: &State) -> Result<()> {
        let json = serde_json::to_vec_pretty(state)?;
        crate::base::atomic::replace(&self.path, |mut f| {
            f.write_all(&json)?;
            f.write_all(b"\n")?;
            Ok(f)
        })
        .with_context(|| format!("cannot write CATO_STATE_FILE {}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::env::Env;
    use crate::base::exit::{exit_for, Exit};

    fn file(path: &Path, extra: &[(&str, &str)]) -> StateFile {
        let mut pairs = vec![
            ("CATO_API_KEY", "k"),
            ("CATO_ACCOUNT_ID", "4242"),
            ("CATO_FEED", "events"),
            ("CATO_STATE_FILE", path.to_str().unwrap()),
        ];
        pairs.retain(|(k, _)| !extra.iter().any(|(e, _)| e == k));
        pairs.extend_from_slice(extra);
        StateFile::new(&Settings::from_env(&Env::from_pairs(pairs)).unwrap(), None)
    }

    #[test]
    fn state_loads_again_only_for_the_same_query() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cato.json");
        let f = file(&path, &[("CATO_EVENT_TYPES", "Security")]);
        assert!(f.load().unwrap().is_none());
        let mut s = f.fresh(None);
        s.marker = "m-1".into();
        s.record_failure("k1", "4242", "rejected", serde_json::json!({"a": 1}));
        s.record_failure("k1", "4242", "rejected again", serde_json::json!({"a": 2}));
        f.save(&s).unwrap();
        let back = f.load().unwrap().unwrap();
        assert_eq!(back.marker, "m-1");
        assert_eq!(back.failed[0].attempts, 2);
        assert_eq!(back.parked(2).len(), 1);
        for (extra, name) in [
            (vec![("CATO_EVENT_TYPES", "Connectivity")], "filters"),
            (
                vec![("CATO_EVENT_TYPES", "Security"), ("CATO_ACCOUNT_ID", "77")],
                "CATO_ACCOUNT_ID=77",
            ),
            (vec![("CATO_FEED", "audit")], "CATO_FEED=audit"),
        ] {
            let e = file(&path, &extra).load().unwrap_err();
            assert_eq!(exit_for(&e), Exit::Config);
            assert!(e.to_string().contains(name), "{e}");
        }
        std::fs::write(&path, "{oops").unwrap();
        let e = f.load().unwrap_err();
        assert_eq!(exit_for(&e), Exit::Config);
        assert!(e.to_string().contains("corrupt"), "{e}");
    }
}
