//! INTEGRITY_CHAIN: its settings, the checkpoint a run writes, and `verify --chain` ([`walk`]).
//!
//! The links themselves are put on documents by the pipeline (`pipeline::chain`), the head is
//! kept by the source (SQL: `db::chain`), and what a link and a checkpoint are lives in
//! `base::chain`.

pub mod walk;

use crate::base::chain::{signing_key, Checkpoint};
use crate::base::document::{Document, Route};
use crate::base::env::Env;
use crate::base::exit::ConfigError;
use crate::base::sink::{Outcome, Sink};
use crate::base::source::Source;
use anyhow::{anyhow, Result};

/// `INTEGRITY_CHAIN` and `INTEGRITY_SIGNING_KEY`.
#[derive(Clone, Default)]
pub struct Settings {
    pub chain: bool,
    pub signing_key: Option<ed25519_dalek::SigningKey>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Settings")
            .field("chain", &self.chain)
            .field("signing_key", &self.signing_key.as_ref().map(|_| "(set)"))
            .finish()
    }
}

impl Settings {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let chain = env.boolean("INTEGRITY_CHAIN")?.unwrap_or(false);
        let signing_key = match env.secret("INTEGRITY_SIGNING_KEY") {
            Some(key) => Some(
                signing_key(key.expose())
                    .map_err(|why| ConfigError(format!("invalid INTEGRITY_SIGNING_KEY: {why}")))?,
            ),
            None => None,
        };
        Ok(Settings { chain, signing_key })
    }
}

/// After a run: when the chain moved since the last checkpoint, a checkpoint of its head (with
/// the voids since, signed when a key is set) is written to every destination and then kept by
/// the source. `shipped`: documents the run shipped.
pub async fn checkpoint(
    settings: &Settings,
    chain: &str,
    source: &mut dyn Source,
    sinks: &mut [Box<dyn Sink>],
    shipped: u64,
) -> Result<Option<Checkpoint>> {
    let state = source.chain_state().await?;
    let since = state.checkpoints.iter().map(|c| c.seq).max().unwrap_or(0);
    if state.head.seq <= since {
        return Ok(None);
    }
    let now = chrono::Utc::now();
    let mut cp = Checkpoint {
        chain: chain.to_string(),
        seq: state.head.seq,
        hash: state.head.hash.clone(),
        time: now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        shipped,
        voids: state.voids.into_iter().filter(|v| v.seq > since).collect(),
        key: None,
        signature: None,
    };
    if let Some(key) = &settings.signing_key {
        cp.sign(key);
    }
    let doc = Document::new(cp.doc_id(), cp.document());
    // Placed by its time where a destination files documents by date.
    let _ = doc.route.set(Route {
        time: Some(now),
        ..Route::default()
    });
    for sink in sinks.iter_mut() {
        match sink.ship(&[&doc]).await?.pop() {
            Some(Outcome::Delivered | Outcome::AlreadyPresent) => {}
            Some(Outcome::Rejected(why)) => {
                return Err(anyhow!(
                    "{} refused the integrity checkpoint at seq {}: {why}",
                    sink.name(),
                    cp.seq
                ))
            }
            None => {
                return Err(anyhow!(
                    "{} answered nothing for the checkpoint",
                    sink.name()
                ))
            }
        }
    }
    source.save_checkpoint(&cp).await?;
    tracing::info!(
        seq = cp.seq,
        hash = %cp.hash,
        signed = cp.signature.is_some(),
        voids = cp.voids.len(),
        "integrity checkpoint written"
    );
    Ok(Some(cp))
}
