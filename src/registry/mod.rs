//! One invocation's components, assembled: the run-wide settings, the source that
//! `AUDIT_LOGGER_TYPE` names and the sink that `SINK` names, or one sink per target of
//! `TARGETS` (each reads its own settings in its own module), then routing, which both shape.
//! Every setting is validated here, before any command touches a database, a file or the
//! network.

pub mod targets;

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

/// One destination of a run: a configured sink (what it accepts is in `Routing::targets`).
#[derive(Debug)]
pub struct Target {
    /// As TARGETS names it; `None`: the one implicit target of the ordinary variables.
    pub name: Option<String>,
    pub sink: Box<dyn sinks::Configured>,
}

#[derive(Debug)]
pub struct Setup {
    pub run: Config,
    source: Option<Box<dyn sources::Configured>>,
    targets: Vec<Target>,
    /// TARGETS' names, also for commands without sinks (`status` reports per target).
    pub target_names: Vec<String>,
    pub metrics: MetricsConfig,
    /// INTEGRITY_CHAIN and its signing key.
    pub integrity: crate::integrity::Settings,
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
        let declared = targets::declare(env)?;
        let named = declared.iter().any(|d| d.name.is_some());
        // The kinds of sink are known before the source is configured (its defaults may depend
        // on them); a command without a sink takes the defaults.
        let kinds = match needs.sink {
            true => declared
                .iter()
                .map(|d| d.kind())
                .collect::<Result<Vec<_>, _>>()?,
            false => Vec::new(),
        };
        let sink_traits = match kinds.is_empty() {
            true => Default::default(),
            false => sinks::SinkTraits {
                json_only: kinds.iter().any(|k| k.traits.json_only),
                prefers_original: kinds.iter().all(|k| k.traits.prefers_original),
            },
        };
        let source = match needs.source {
            true => Some(sources::configure(env, &sink_traits)?),
            false => None,
        };
        let source_traits = source.as_ref().map(|s| s.traits()).unwrap_or_default();
        if named && source.is_some() && !source_traits.fanout {
            return Err(ConfigError(format!(
                "TARGETS works with SINGLE_COLUMN_JSON, DJANGO_AUDITLOG, CASTAI, CATO and S3_CURSOR so far: AUDIT_LOGGER_TYPE={} keeps no per-target progress yet; run one job per destination",
                env.get("AUDIT_LOGGER_TYPE").unwrap_or_default()
            )));
        }
        let integrity = crate::integrity::Settings::from_env(env)?;
        if integrity.chain && named {
            return Err(ConfigError(
                "INTEGRITY_CHAIN does not work with TARGETS yet: each target would need a chain of its own; run one job per destination".into(),
            ));
        }
        if integrity.chain && source.is_some() && !source_traits.chain {
            return Err(ConfigError(format!(
                "INTEGRITY_CHAIN is kept by the SQL sources (SINGLE_COLUMN_JSON, DJANGO_AUDITLOG), CASTAI and CATO so far, not by AUDIT_LOGGER_TYPE={}",
                env.get("AUDIT_LOGGER_TYPE").unwrap_or_default()
            )));
        }
        let mut configured = Vec::new();
        for (d, kind) in declared.iter().zip(&kinds) {
            let sink =
                (kind.configure)(&d.env, &source_traits).map_err(|e| d.env.name_in_error(e))?;
            if d.name.is_some() {
                d.refuse_unread(&declared)?;
            }
            configured.push(Target {
                name: d.name.clone(),
                sink,
            });
        }
        let needs_route = configured.iter().any(|t| t.sink.needs_route());
        run.routing = Routing::from_env(env, &source_traits, needs_route)?;
        if named {
            for d in &declared {
                let vars = ["ACCEPT_TOPICS", "ACCEPT_ROUTING_KEYS"].map(|v| d.env.full_name(v));
                run.routing.check_selection(
                    [vars[0].as_str(), vars[1].as_str()],
                    &d.accept,
                    &source_traits,
                )?;
            }
            run.routing.targets = declared.iter().map(|d| d.accept.clone()).collect();
            for var in targets::undeclared_target_variables(env, &declared) {
                run.warnings.push(format!(
                    "{var} is set but its target is not in TARGETS: it is read by nothing"
                ));
            }
            for var in targets::ignored_plain_variables(env, &declared) {
                run.warnings.push(format!(
                    "{var} is set but not read: with TARGETS each target's sink reads TARGET_<NAME>_{var}"
                ));
            }
        }
        run.units_as_files = configured.iter().any(|t| t.sink.stores_units());
        Ok(Setup {
            run,
            source,
            target_names: declared.iter().filter_map(|d| d.name.clone()).collect(),
            targets: configured,
            metrics: MetricsConfig::from_env(env)?,
            integrity,
        })
    }

    /// The source; only commands that declared they need one ask.
    pub fn source(&self) -> anyhow::Result<&dyn sources::Configured> {
        self.source
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("internal: this command was set up without a source"))
    }

    /// The targets: one without TARGETS. Only commands that declared they need sinks ask.
    pub fn targets(&self) -> anyhow::Result<&[Target]> {
        match self.targets.is_empty() {
            true => Err(anyhow::anyhow!(
                "internal: this command was set up without a sink"
            )),
            false => Ok(&self.targets),
        }
    }
}

#[cfg(test)]
mod tests;
