//! The commands: read the configuration, build source and sink, run, choose the exit code.

use crate::cli::Command;
use crate::config::{early_logging, Config, RawEnv};
use crate::error::{config_error, exit_for, one_line, Exit};
use crate::pipeline::{self, Summary};
use crate::{logging, sinks, sources};
use anyhow::Result;

pub fn main(command: Command, dry_run: bool) -> Exit {
    let raw = match RawEnv::from_env() {
        Ok(raw) => raw,
        Err(e) => {
            eprintln!("audit-transfer: error: {e}");
            return Exit::Config;
        }
    };
    let (format, debug) = early_logging(&raw);
    logging::init(format, debug);
    let cfg = match Config::from_raw(raw) {
        Ok(cfg) => cfg,
        Err(e) => {
            tracing::error!("{e}");
            return Exit::Config;
        }
    };
    if dry_run && command != Command::Run {
        tracing::error!("--dry-run applies to `run` only");
        return Exit::Config;
    }
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return Exit::Failed;
        }
    };
    let result = runtime.block_on(async {
        match command {
            Command::Run if dry_run => dry(&cfg).await,
            Command::Run => run(&cfg).await,
            Command::Monthly => monthly(&cfg).await,
            Command::Check => check(&cfg).await,
            Command::RetryFailed => retry_failed(&cfg).await,
        }
    });
    match result {
        Ok(exit) => exit,
        Err(e) => {
            tracing::error!("{}", one_line(&e));
            exit_for(&e)
        }
    }
}

fn sink_config(cfg: &Config) -> Result<crate::config::SinkConfig> {
    cfg.sink.clone().map_err(|e| config_error(e.0))
}

async fn run(cfg: &Config) -> Result<Exit> {
    if !cfg.enable_send {
        tracing::info!("sending is disabled (ENABLE_SEND_AUDIT_LOG=false); nothing to do");
        return Ok(Exit::Ok);
    }
    let sink_cfg = sink_config(cfg)?;
    let mut source = sources::build(cfg).await?;
    source.prepare().await?;
    let concurrency = if source.parallel_safe() {
        cfg.concurrency
    } else {
        1
    };
    let mut workers = vec![pipeline::Worker {
        source,
        sink: sinks::build(&sink_cfg)?,
    }];
    for _ in 1..concurrency {
        // More connections claim pages side by side, exactly as overlapping runs would.
        workers.push(pipeline::Worker {
            source: sources::build(cfg).await?,
            sink: sinks::build(&sink_cfg)?,
        });
    }
    tracing::info!(
        source = %workers[0].source.name(),
        sink = %workers[0].sink.name(),
        batch_size = cfg.batch_size,
        chunk_size = cfg.chunk_size,
        concurrency,
        "run started"
    );
    let mut summary = Summary::default();
    let result = pipeline::run(&mut workers, cfg.batch_size, cfg.chunk_size, &mut summary).await;
    summary.log(result.is_err());
    result.map(|()| summary.exit())
}

/// Lists what a run would take; needs no sink.
async fn dry(cfg: &Config) -> Result<Exit> {
    let mut source = sources::build(cfg).await?;
    source.check().await?;
    source.dry_run().await?;
    Ok(Exit::Ok)
}

async fn monthly(cfg: &Config) -> Result<Exit> {
    if !cfg.clear_entries {
        tracing::info!("CLEAR_AUDIT_LOG_ENTRIES=false; nothing deleted");
        return Ok(Exit::Ok);
    }
    let mut source = sources::build(cfg).await?;
    source.check().await?;
    let cutoff = chrono::Utc::now() - chrono::Duration::days(cfg.clear_days as i64);
    let deleted = source.purge(cutoff).await?;
    tracing::info!(
        source = %source.name(),
        deleted,
        cutoff = %cutoff.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "deleted sent entries older than CLEAR_AUDIT_LOG_DAYS={}",
        cfg.clear_days
    );
    Ok(Exit::Ok)
}

async fn check(cfg: &Config) -> Result<Exit> {
    let mut source = sources::build(cfg).await?;
    source.check().await?;
    tracing::info!(source = %source.name(), "source reachable");
    let mut sink = sinks::build(&sink_config(cfg)?)?;
    sink.check().await?;
    tracing::info!(sink = %sink.name(), "configuration OK");
    Ok(Exit::Ok)
}

async fn retry_failed(cfg: &Config) -> Result<Exit> {
    let mut source = sources::build(cfg).await?;
    source.prepare().await?;
    let n = source.retry_failed().await?;
    tracing::info!(source = %source.name(), records = n, "failed records are eligible again for the next run");
    Ok(Exit::Ok)
}
