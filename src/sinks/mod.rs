//! Sinks: where documents go. A sink answers, per document, whether it now holds it; only
//! then does the pipeline let the source mark the record.
//!
//! To add a sink: one file or folder here implementing [`Sink`] and [`Configured`], with a
//! [`Kind`] that reads its settings, plus one line in [`KINDS`].

pub mod elasticsearch;
pub mod file;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod otlp;
pub mod splunk;

use crate::base::env::{one_of, Env};
use crate::base::exit::ConfigError;
use crate::base::source::SourceTraits;
use anyhow::Result;
use async_trait::async_trait;

pub use crate::base::sink::{Outcome, Sink, SinkTraits};

/// One kind of sink, as `SINK` names it.
pub struct Kind {
    pub name: &'static str,
    /// Other names `SINK` accepts for it.
    pub aliases: &'static [&'static str],
    /// The kind chosen when `SINK` is unset and this variable is set (the original's
    /// `ELASTICSEARCH_HOST`).
    pub implied_by: Option<&'static str>,
    pub traits: SinkTraits,
    /// Reads the kind's own settings; `source` says what the configured source needs of it.
    pub configure: fn(&Env, &SourceTraits) -> Configure,
}

/// What reading a sink's settings gives.
pub type Configure = std::result::Result<Box<dyn Configured>, ConfigError>;

/// A sink whose settings are read and valid, not yet connected.
#[async_trait]
pub trait Configured: Send + Sync + std::fmt::Debug {
    /// One client per worker.
    fn build(&self) -> Result<Box<dyn Sink>>;
    /// Whether documents must carry their route (topic, key, date): the sink places them by it.
    fn needs_route(&self) -> bool {
        false
    }
    /// Whether each named unit of the source (a CDP archive batch) is stored as one file, so
    /// the source must ship units whole.
    fn stores_units(&self) -> bool {
        false
    }
    /// Before a run's first page (Elasticsearch: create the index when asked to).
    async fn prepare(&self) -> Result<()> {
        Ok(())
    }
    /// It has an index that `init-index` sets up.
    fn has_index(&self) -> bool {
        false
    }
    /// `init-index`.
    async fn init_index(&self) -> Result<()> {
        Err(crate::base::exit::config_error(
            "init-index needs the elasticsearch sink: set ELASTICSEARCH_HOST (SINK=elasticsearch)",
        ))
    }
}

/// A client built on first use and shared by every worker of the run: one connection pool, one
/// TLS setup, warnings logged once.
#[derive(Debug)]
pub struct Shared<T>(std::sync::OnceLock<std::sync::Arc<T>>);

impl<T> Default for Shared<T> {
    fn default() -> Self {
        Shared(std::sync::OnceLock::new())
    }
}

impl<T> Shared<T> {
    pub fn get_or_build(&self, build: impl FnOnce() -> Result<T>) -> Result<std::sync::Arc<T>> {
        if let Some(t) = self.0.get() {
            return Ok(t.clone());
        }
        let built = std::sync::Arc::new(build()?);
        Ok(self.0.get_or_init(|| built).clone())
    }
}

/// The one place where sinks are registered: one line each.
pub const KINDS: &[Kind] = &[
    elasticsearch::KIND,
    file::KIND,
    file::STDOUT,
    #[cfg(feature = "kafka")]
    kafka::KIND,
    otlp::KIND,
    splunk::KIND,
];

/// The kind of sink `SINK` names, or the one its variable implies.
pub fn choose(env: &Env) -> std::result::Result<&'static Kind, ConfigError> {
    Ok(match env.get("SINK") {
        Some(name) => {
            let lower = name.to_ascii_lowercase();
            KINDS
                .iter()
                .find(|k| k.name == lower || k.aliases.contains(&lower.as_str()))
                .ok_or_else(|| {
                    ConfigError(format!(
                        "invalid SINK {name:?}: expected {}",
                        one_of(KINDS.iter().map(|k| k.name))
                    ))
                })?
        }
        None => KINDS
            .iter()
            .find(|k| k.implied_by.is_some_and(|v| env.get(v).is_some()))
            .ok_or_else(|| {
                ConfigError(format!(
                    "no sink configured: set ELASTICSEARCH_HOST, or SINK to {}",
                    one_of(KINDS.iter().map(|k| k.name))
                ))
            })?,
    })
}
