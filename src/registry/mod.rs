//! One invocation's components, assembled: the run-wide settings, the source that
//! `AUDIT_LOGGER_TYPE` names and the sink that `SINK` names (each reads its own settings in its
//! own module), then routing, which both shape. Every setting is validated here, before any
//! command touches a database, a file or the network.

use crate::base::env::Env;
use crate::base::exit::{config_error, ConfigError};
use crate::config::Config;
use crate::metrics::MetricsConfig;
use crate::routing::Routing;
use crate::{sinks, sources};

#[derive(Debug)]
pub struct Setup {
    pub run: Config,
    /// Source and sink errors are kept until a command needs them: `monthly` works without a
    /// sink, `init-index` without a source.
    pub source: Result<Box<dyn sources::Configured>, ConfigError>,
    pub sink: Result<Box<dyn sinks::Configured>, ConfigError>,
    pub metrics: MetricsConfig,
}

impl Setup {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let mut run = Config::from_env(env)?;
        let sink_kind = sinks::choose(env);
        let sink_traits = sink_kind.as_ref().map(|k| k.traits).unwrap_or_default();
        let source = sources::configure(env, &sink_traits);
        let source_traits = source.as_ref().map(|s| s.traits()).unwrap_or_default();
        let sink = sink_kind.and_then(|k| (k.configure)(env, &source_traits));
        let needs_route = sink.as_ref().is_ok_and(|s| s.needs_route());
        run.routing = Routing::from_env(env, &source_traits, needs_route)?;
        run.units_as_files = sink.as_ref().is_ok_and(|s| s.stores_units());
        Ok(Setup {
            run,
            source,
            sink,
            metrics: MetricsConfig::from_env(env)?,
        })
    }

    /// The source, or the configuration error that keeps this command from having one.
    pub fn source(&self) -> anyhow::Result<&dyn sources::Configured> {
        match &self.source {
            Ok(s) => Ok(s.as_ref()),
            Err(e) => Err(config_error(e.0.clone())),
        }
    }

    /// The sink, or the configuration error that keeps this command from having one.
    pub fn sink(&self) -> anyhow::Result<&dyn sinks::Configured> {
        match &self.sink {
            Ok(s) => Ok(s.as_ref()),
            Err(e) => Err(config_error(e.0.clone())),
        }
    }
}

#[cfg(test)]
mod tests;
