//! One invocation's components, assembled: the run-wide settings, the source that
//! `AUDIT_LOGGER_TYPE` names and the sink that `SINK` names (each reads its own settings in its
//! own module), then routing, which both shape. Every setting is validated here, before any
//! command touches a database, a file or the network.

use crate::base::env::Env;
use crate::base::exit::ConfigError;
use crate::config::Config;
use crate::metrics::MetricsConfig;
use crate::routing::Routing;
use crate::{sinks, sources};

/// Which components a command uses: only those are configured, so `monthly` works without a
/// sink and `init-index` without a source, while every setting a command uses is checked
/// before it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Needs {
    pub source: bool,
    pub sink: bool,
    /// The `run` command: with ENABLE_SEND_AUDIT_LOG=false it needs nothing.
    pub sends: bool,
}

impl Needs {
    pub const BOTH: Needs = Needs {
        source: true,
        sink: true,
        sends: false,
    };
}

#[derive(Debug)]
pub struct Setup {
    pub run: Config,
    source: Option<Box<dyn sources::Configured>>,
    sink: Option<Box<dyn sinks::Configured>>,
    pub metrics: MetricsConfig,
}

impl Setup {
    pub fn from_env(env: &Env, needs: Needs) -> Result<Self, ConfigError> {
        let mut run = Config::from_env(env)?;
        let needs = if needs.sends && !run.enable_send {
            Needs {
                source: false,
                sink: false,
                sends: true,
            }
        } else {
            needs
        };
        // The kind of sink is known before the source is configured (its defaults may depend
        // on it); a command without a sink takes the defaults.
        let sink_kind = match needs.sink {
            true => Some(sinks::choose(env)?),
            false => None,
        };
        let sink_traits = sink_kind.map(|k| k.traits).unwrap_or_default();
        let source = match needs.source {
            true => Some(sources::configure(env, &sink_traits)?),
            false => None,
        };
        let source_traits = source.as_ref().map(|s| s.traits()).unwrap_or_default();
        let sink = match sink_kind {
            Some(k) => Some((k.configure)(env, &source_traits)?),
            None => None,
        };
        let needs_route = sink.as_ref().is_some_and(|s| s.needs_route());
        run.routing = Routing::from_env(env, &source_traits, needs_route)?;
        run.units_as_files = sink.as_ref().is_some_and(|s| s.stores_units());
        Ok(Setup {
            run,
            source,
            sink,
            metrics: MetricsConfig::from_env(env)?,
        })
    }

    /// The source; only commands that declared they need one ask.
    pub fn source(&self) -> anyhow::Result<&dyn sources::Configured> {
        self.source
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("internal: this command was set up without a source"))
    }

    /// The sink; only commands that declared they need one ask.
    pub fn sink(&self) -> anyhow::Result<&dyn sinks::Configured> {
        self.sink
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("internal: this command was set up without a sink"))
    }
}

#[cfg(test)]
mod tests;
