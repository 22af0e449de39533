//! The state file (`CASTAI_STATE_FILE`, JSON, replaced atomically): what it holds, loading it
//! (refusing one of another API version, cluster filter or ACCEPT_* selection), the lock that
//! keeps two runs apart, saving it, and the failed items and runs it keeps.

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

/// The state file's content.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct State {
    format: u32,
    api_version: String,
    cluster_id: Option<String>,
    /// Every event up to here (inclusive) was acknowledged by the sink or is in `failed`.
    pub check_point: DateTime<Utc>,
    /// Span of the next window.
    pub window_seconds: u64,
    /// Events from one second before `check_point` on that the sink already acknowledged:
    /// the overlap of the next query, and what a run cut short (BATCH_SIZE, crash) delivered
    /// of a window it did not finish. Skipped when a query returns them again.
    pub acked: Vec<Acked>,
    pub failed: Vec<FailedItem>,
    /// What the runs of this file accept (`Routing::accept_label`); `None`: everything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    accepts: Option<String>,
    /// For `status`: how the last runs ended.
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
    pub attempts: u32,
    pub last_error: String,
    /// The item as CAST AI returned it.
    pub item: Value,
    /// With TARGETS: the targets that already hold it; a retry goes to the others only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held_by: Vec<String>,
}

impl State {
    /// One more failed attempt of `key`, keeping the item as last returned.
    pub fn record_failure(&mut self, key: &str, reason: &str, item: Value) {
        match self.failed.iter_mut().find(|f| f.key == key) {
            Some(f) => {
                f.attempts += 1;
                f.last_error = reason.to_string();
                f.item = item;
            }
            None => self.failed.push(FailedItem {
                key: key.to_string(),
                attempts: 1,
                last_error: reason.to_string(),
                item,
                held_by: Vec::new(),
            }),
        }
    }

    /// With TARGETS: `key` is held by `held_by` but not yet by every target that takes it. Kept
    /// with its item (the window moves on), retried like a failure, without counting an attempt
    /// unless a target refused it (then `record_failure` came first).
    pub fn record_held(&mut self, key: &str, held_by: Vec<String>, item: Value) {
        match self.failed.iter_mut().find(|f| f.key == key) {
            Some(f) => f.held_by = held_by,
            None => self.failed.push(FailedItem {
                key: key.to_string(),
                attempts: 0,
                last_error: crate::base::source::LACKING.into(),
                item,
                held_by,
            }),
        }
    }

    /// The failed items no longer tried until `retry-failed`.
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

    /// Every failed item gets its attempts back; how many there are.
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

/// The state file of one API version, cluster filter and ACCEPT_* selection.
pub(super) struct StateFile {
    path: PathBuf,
    api_version: &'static str,
    cluster_id: Option<String>,
    /// `Routing::accept_label` of this run.
    accepts: Option<String>,
}

impl StateFile {
    pub fn new(settings: &Settings, accepts: Option<String>) -> Self {
        StateFile {
            path: settings.state_file.clone(),
            api_version: settings.version.name(),
            cluster_id: settings.cluster_id.clone(),
            accepts,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What a run without a state file starts with.
    pub fn fresh(&self, check_point: DateTime<Utc>, window_seconds: u64) -> State {
        State {
            format: STATE_FORMAT,
            api_version: self.api_version.into(),
            cluster_id: self.cluster_id.clone(),
            check_point,
            window_seconds,
            acked: Vec::new(),
            failed: Vec::new(),
            accepts: self.accepts.clone(),
            runs: LastRuns::default(),
            chain: None,
        }
    }

    /// Reads the state file; `None` when there is none yet.
    pub fn load(&self) -> Result<Option<State>> {
        let path = &self.path;
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(config_error(format!(
                    "cannot read CASTAI_STATE_FILE {}: {e}",
                    path.display()
                )))
            }
        };
        let state: State = serde_json::from_str(&text).map_err(|e| {
            config_error(format!(
                "CASTAI_STATE_FILE {} is corrupt ({e}); it is not replaced automatically: restore it, \
                 or delete it to start again at CASTAI_START_FROM",
                path.display()
            ))
        })?;
        if state.format != STATE_FORMAT {
            return Err(config_error(format!(
                "CASTAI_STATE_FILE {} has format {}, this version reads format {STATE_FORMAT}",
                path.display(),
                state.format
            )));
        }
        // Positions of one API version or cluster filter mean nothing for another.
        if state.api_version != self.api_version || state.cluster_id != self.cluster_id {
            return Err(config_error(format!(
                "CASTAI_STATE_FILE {} belongs to CASTAI_API_VERSION={} CASTAI_CLUSTER_ID={}, not {} {}: \
                 use a state file per API version and cluster filter",
                path.display(),
                state.api_version,
                state.cluster_id.as_deref().unwrap_or("(all)"),
                self.api_version,
                self.cluster_id.as_deref().unwrap_or("(all)")
            )));
        }
        // Runs of another selection would skip, for good, what this one ships, and back.
        if state.accepts != self.accepts {
            return Err(config_error(format!(
                "CASTAI_STATE_FILE {} belongs to runs that accept {}, not {}: use a state file per ACCEPT_TOPICS/ACCEPT_ROUTING_KEYS selection",
                path.display(),
                state.accepts.as_deref().unwrap_or("everything"),
                self.accepts.as_deref().unwrap_or("everything")
            )));
        }
        Ok(Some(state))
    }

    /// Two runs sharing a state file would each save their own view of it (losing the other's
    /// failed items), so a run holds an exclusive lock on `<state file>.lock`; a separate file,
    /// because the state file itself is replaced on every save. Creating it also proves, before
    /// anything is shipped, that the state can be saved.
    pub fn lock(&self) -> Result<std::fs::File> {
        crate::base::atomic::lock_state_file("CASTAI_STATE_FILE", &self.path)
    }

    pub fn save(&self, state: &State) -> Result<()> {
        let json = serde_json::to_vec_pretty(state)?;
        crate::base::atomic::replace(&self.path, |mut f| {
            f.write_all(&json)?;
            f.write_all(b"\n")?;
            Ok(f)
        })
        .with_context(|| format!("cannot write CASTAI_STATE_FILE {}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::env::Env;
    use crate::base::exit::{exit_for, Exit};

    fn file(path: &Path, extra: &[(&str, &str)], accepts: Option<&str>) -> StateFile {
        let mut pairs = vec![
            ("CASTAI_API_KEY", "k"),
            ("CASTAI_STATE_FILE", path.to_str().unwrap()),
        ];
        pairs.extend_from_slice(extra);
        let settings = Settings::from_env(&Env::from_pairs(pairs)).unwrap();
        StateFile::new(&settings, accepts.map(String::from))
    }

    #[test]
    fn saved_state_loads_again_only_for_the_same_selection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("castai.json");
        let f = file(&path, &[("CASTAI_CLUSTER_ID", "c-1")], Some("topics=a"));
        assert!(f.load().unwrap().is_none(), "no file yet");
        let start: DateTime<Utc> = "2024-05-01T00:00:00Z".parse().unwrap();
        let mut state = f.fresh(start, 3600);
        state.record_failure("x1", "rejected", serde_json::json!({"id": "x1"}));
        state.record_failure(
            "x1",
            "rejected again",
            serde_json::json!({"id": "x1", "n": 2}),
        );
        f.save(&state).unwrap();

        let back = f.load().unwrap().unwrap();
        assert_eq!((back.check_point, back.window_seconds), (start, 3600));
        assert_eq!(back.failed.len(), 1);
        assert_eq!(back.failed[0].attempts, 2);
        assert_eq!(back.failed[0].last_error, "rejected again");
        assert_eq!(back.failed[0].item["n"], 2);
        assert_eq!(back.parked(2).len(), 1);
        assert!(back.parked(3).is_empty());

        for (other, names) in [
            (
                file(&path, &[("CASTAI_CLUSTER_ID", "c-2")], Some("topics=a")),
                "CASTAI_CLUSTER_ID",
            ),
            (
                file(
                    &path,
                    &[("CASTAI_CLUSTER_ID", "c-1"), ("CASTAI_API_VERSION", "v2")],
                    Some("topics=a"),
                ),
                "CASTAI_API_VERSION",
            ),
            (
                file(&path, &[("CASTAI_CLUSTER_ID", "c-1")], None),
                "ACCEPT_TOPICS",
            ),
        ] {
            let e = other.load().unwrap_err();
            assert_eq!(exit_for(&e), Exit::Config);
            assert!(e.to_string().contains(names), "{e}");
        }
    }

    #[test]
    fn corrupt_or_unknown_format_is_a_config_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("castai.json");
        let f = file(&path, &[], None);
        std::fs::write(&path, "{not json").unwrap();
        let e = f.load().unwrap_err();
        assert_eq!(exit_for(&e), Exit::Config);
        assert!(e.to_string().contains("is corrupt"), "{e}");

        let mut state = serde_json::to_value(f.fresh(Utc::now(), 60)).unwrap();
        state["format"] = 2.into();
        std::fs::write(&path, state.to_string()).unwrap();
        let e = f.load().unwrap_err();
        assert!(e.to_string().contains("has format 2"), "{e}");
    }
}
