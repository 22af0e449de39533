//! The commands: read the configuration, build source and sink, run, choose the exit code.

use crate::base::env::Env;
use crate::base::exit::{config_error, exit_for, one_line, Exit};
use crate::cli::Command;
use crate::pipeline::{self, Summary};
use crate::registry::{Needs, Setup};
use crate::sources::{RunRecord, Source};
use crate::{logging, metrics};
use anyhow::Result;

pub fn main(command: Command, dry_run: bool) -> Exit {
    let raw = Env::from_process();
    let log = match logging::Settings::from_env(&raw) {
        Ok(log) => log,
        Err(e) => {
            logging::init(&logging::Settings::fallback(&raw));
            tracing::error!("{e}");
            return Exit::Config;
        }
    };
    logging::init(&log);
    if dry_run && command != Command::Run {
        tracing::error!("--dry-run applies to `run` only");
        return Exit::Config;
    }
    let needs = match command {
        Command::Run if dry_run => Needs {
            source: true,
            sink: false,
            sends: false,
        },
        Command::Run => Needs {
            sends: true,
            ..Needs::BOTH
        },
        Command::Check => Needs::BOTH,
        Command::Monthly | Command::RetryFailed | Command::InitQueue | Command::Status { .. } => {
            Needs {
                sink: false,
                ..Needs::BOTH
            }
        }
        Command::InitIndex => Needs {
            source: false,
            ..Needs::BOTH
        },
        Command::Verify { .. } => Needs::BOTH,
        Command::Completions { .. } | Command::Man => Needs {
            source: false,
            sink: false,
            sends: false,
        },
    };
    let setup = match Setup::from_env(&raw, needs) {
        Ok(setup) => setup,
        Err(e) => {
            tracing::error!("{e}");
            return Exit::Config;
        }
    };
    for w in &setup.run.warnings {
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
            Command::Run if dry_run => dry(&setup).await,
            Command::Run => run(&setup).await,
            Command::Monthly => monthly(&setup).await,
            Command::Check => check(&setup).await,
            Command::RetryFailed => retry_failed(&setup).await,
            Command::Status {
                json,
                max_age,
                max_since_success,
            } => status(&setup, json, max_age, max_since_success).await,
            Command::InitIndex => init_index(&setup).await,
            Command::InitQueue => init_queue(&setup).await,
            Command::Verify {
                chain: true,
                json,
                public_key,
                ..
            } => verify_chain(&setup, json, public_key.as_deref()).await,
            Command::Verify {
                since, until, json, ..
            } => verify(&setup, crate::base::source::Window { since, until }, json).await,
            // Handled in main before any configuration is read.
            Command::Completions { .. } | Command::Man => Ok(Exit::Ok),
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

async fn run(setup: &Setup) -> Result<Exit> {
    let cfg = &setup.run;
    if !cfg.enable_send {
        tracing::info!("sending is disabled (ENABLE_SEND_AUDIT_LOG=false); nothing to do");
        return Ok(Exit::Ok);
    }
    let mut workers = Vec::new();
    let mut summary = Summary::default();
    let result = transfer(setup, &mut workers, &mut summary).await;
    let exit = match &result {
        Ok(exit) => *exit,
        Err(e) => exit_for(e),
    };
    finish(
        setup,
        workers.first_mut().map(|w| &mut w.source),
        &summary,
        exit,
    )
    .await;
    result
}

/// One pass; the workers are kept for [`finish`] even when the pass fails.
async fn transfer(
    setup: &Setup,
    workers: &mut Vec<pipeline::Worker>,
    summary: &mut Summary,
) -> Result<Exit> {
    let cfg = &setup.run;
    let targets = setup.targets()?;
    let sinks = || {
        targets
            .iter()
            .map(|t| t.sink.build())
            .collect::<Result<Vec<_>>>()
    };
    workers.push(pipeline::Worker {
        source: setup.source()?.connect(cfg).await?,
        sinks: sinks()?,
    });
    workers[0].source.prepare().await?;
    for t in targets {
        t.sink.prepare().await?;
    }
    let chain = match setup.integrity.chain {
        true => Some(workers[0].source.keep_chain().await?),
        false => None,
    };
    let concurrency = if workers[0].source.parallel_safe() {
        cfg.concurrency
    } else {
        1
    };
    for _ in 1..concurrency {
        // More connections claim pages side by side, exactly as overlapping runs would.
        workers.push(pipeline::Worker {
            source: setup.source()?.connect(cfg).await?,
            sinks: sinks()?,
        });
    }
    if chain.is_some() {
        for (k, w) in workers.iter_mut().enumerate() {
            if k > 0 {
                w.source.keep_chain().await?;
            }
            for sink in &mut w.sinks {
                sink.replace_existing();
            }
        }
    }
    let sink_names: Vec<String> = targets
        .iter()
        .zip(&workers[0].sinks)
        .map(|(t, s)| match &t.name {
            Some(name) => format!("{name}={}", s.name()),
            None => s.name(),
        })
        .collect();
    tracing::info!(
        source = %workers[0].source.name(),
        sink = %sink_names.join(", "),
        batch_size = cfg.batch_size,
        chunk_size = cfg.chunk_size,
        concurrency,
        "run started"
    );
    if crate::progress::wanted() {
        // How far this run will get: the backlog up to BATCH_SIZE, where the source knows it.
        let total = match workers[0].source.backlog().await {
            Ok(Some(b)) => Some(b.unsent.min(cfg.batch_size as u64)),
            _ => None,
        };
        crate::progress::start(total);
    }
    let result = pipeline::run(
        workers,
        &setup.target_names,
        chain.as_deref(),
        cfg.batch_size,
        cfg.chunk_size,
        &cfg.routing,
        summary,
    )
    .await;
    crate::progress::finish();
    summary.log(result.is_err());
    result?;
    if let Some(chain) = &chain {
        let w = &mut workers[0];
        crate::integrity::checkpoint(
            &setup.integrity,
            chain,
            w.source.as_mut(),
            &mut w.sinks,
            summary.delivered + summary.already_present,
        )
        .await?;
    }
    Ok(summary.exit())
}

/// After the pass, whatever its outcome: the run is recorded in the source's state (the SQL
/// sources' table, the CAST AI and S3 files; a source records nothing before it has its
/// state), and its numbers with the backlog go to METRICS_TEXTFILE / METRICS_PUSHGATEWAY_URL.
/// Nothing here changes the exit code; failures are warnings.
async fn finish(
    setup: &Setup,
    source: Option<&mut Box<dyn Source>>,
    summary: &Summary,
    exit: Exit,
) {
    let finished_at = chrono::Utc::now();
    let mut backlog = None;
    let mut previous_success = None;
    if let Some(source) = source {
        // Exit 2 too: a key revoked or a bucket gone is found after the state was read, and
        // `status` must not go on showing the last success as the last run.
        {
            let record = RunRecord {
                finished_at,
                exit_code: exit.code(),
                selected: summary.selected,
                delivered: summary.delivered,
                already_present: summary.already_present,
                rejected: summary.rejected,
                parked: summary.parked,
                marked: summary.marked,
                duration_ms: summary.duration.as_millis() as u64,
                targets: summary.targets.clone(),
            };
            if let Err(e) = source.record_run(&record).await {
                tracing::warn!("cannot record the run: {}", one_line(&e));
            }
        }
        let wants_metrics = setup.metrics.textfile.is_some() || setup.metrics.pushgateway.is_some();
        if wants_metrics && exit != Exit::Config {
            match source.backlog().await {
                Ok(b) => backlog = b,
                Err(e) => tracing::warn!("cannot count the backlog: {}", one_line(&e)),
            }
            if let Ok(Some(runs)) = source.last_runs().await {
                previous_success = runs.last_success.map(|r| r.finished_at);
            }
        }
    }
    if let Some(b) = &backlog {
        tracing::info!(
            backlog = b.unsent,
            oldest_unsent = b.oldest_unsent.map(|t| t.to_rfc3339()).unwrap_or_default(),
            "left to send"
        );
    }
    let m = metrics::RunMetrics {
        source: setup.source().map(|s| s.label()).unwrap_or_default(),
        summary: summary.clone(),
        exit_code: exit.code(),
        finished_at,
        backlog,
        previous_success,
    };
    metrics::report(&setup.metrics, &m).await;
}

/// Lists what a run would take; needs no sink.
async fn dry(setup: &Setup) -> Result<Exit> {
    let mut source = setup.source()?.connect(&setup.run).await?;
    source.check().await?;
    source.dry_run().await?;
    Ok(Exit::Ok)
}

async fn monthly(setup: &Setup) -> Result<Exit> {
    let cfg = &setup.run;
    if !cfg.clear_entries {
        tracing::info!("CLEAR_AUDIT_LOG_ENTRIES=false; nothing deleted");
        return Ok(Exit::Ok);
    }
    let mut source = setup.source()?.connect(cfg).await?;
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

async fn check(setup: &Setup) -> Result<Exit> {
    // Every setting is valid before anything is touched: the sinks' too.
    let targets = setup.targets()?;
    let mut source = setup.source()?.connect(&setup.run).await?;
    source.check().await?;
    tracing::info!(source = %source.name(), "source reachable");
    for t in targets {
        let mut sink = t.sink.build()?;
        sink.check().await.map_err(|e| match &t.name {
            Some(name) => e.context(format!("target {name}")),
            None => e,
        })?;
        tracing::info!(sink = %sink.name(), target_name = t.name.as_deref().unwrap_or_default(), "sink reachable");
    }
    tracing::info!("configuration OK");
    Ok(Exit::Ok)
}

async fn retry_failed(setup: &Setup) -> Result<Exit> {
    let mut source = setup.source()?.connect(&setup.run).await?;
    source.prepare().await?;
    let n = source.retry_failed().await?;
    tracing::info!(source = %source.name(), records = n, "failed records are eligible again for the next run");
    Ok(Exit::Ok)
}

/// `status`: what is left to send and how the last runs went, from the SQL source's tables or
/// the CAST AI / S3 state file.
async fn status(
    setup: &Setup,
    json: bool,
    max_age: Option<std::time::Duration>,
    max_since_success: Option<std::time::Duration>,
) -> Result<Exit> {
    let traits = setup.source()?.traits();
    if let Some(why) = traits.no_status {
        return Err(config_error(why));
    }
    let mut source = setup.source()?.connect(&setup.run).await?;
    // The SQL sources need their state tables; the others read their state or cursor file
    // as it is, without the lock a running job holds.
    if traits.sql {
        source.prepare().await?;
    }
    let backlog = source.backlog().await?;
    if max_age.is_some() && backlog.is_none() {
        return Err(config_error(format!(
            "status --max-age needs the age of the oldest unsent record, which {} cannot know (it only sees what it fetches): use --max-since-success",
            source.name()
        )));
    }
    let parked = source.parked().await?;
    let runs = source.last_runs().await?.unwrap_or_default();
    let report = crate::status::Report::new(
        source.name(),
        chrono::Utc::now(),
        backlog,
        parked.len() as u64,
        runs,
        max_age,
        max_since_success,
    );
    if json {
        println!("{}", report.json());
    } else {
        print!("{}", report.text());
    }
    Ok(if report.healthy() {
        Exit::Ok
    } else {
        Exit::Failed
    })
}

/// `verify`: every record marked sent in the window, looked up in every destination that can
/// be read back.
async fn verify(setup: &Setup, window: crate::base::source::Window, json: bool) -> Result<Exit> {
    if let (Some(since), Some(until)) = (window.since, window.until) {
        if since >= until {
            return Err(config_error("verify --since must be before --until"));
        }
    }
    // Refused before connecting: an API source would start calling its API.
    if !setup.source()?.traits().sql {
        return Err(crate::base::source::nothing_to_verify(
            &setup.source()?.label(),
        ));
    }
    let mut source = setup.source()?.connect(&setup.run).await?;
    source.check().await?;
    let selections = &setup.run.routing.targets;
    let mut destinations = Vec::new();
    for (i, t) in setup.targets()?.iter().enumerate() {
        destinations.push(crate::verify::Destination {
            name: t.name.clone(),
            sink: t.sink.build()?,
            accept: selections.get(i).cloned().unwrap_or_default(),
        });
    }
    // Files and buckets are matched by content; a second reading of the source names what is
    // missing there.
    let listed = destinations
        .iter()
        .any(|d| d.sink.read_back_mode() == crate::base::sink::ReadBack::ByContent);
    let mut again = match listed {
        true => Some(setup.source()?.connect(&setup.run).await?),
        false => None,
    };
    let routing = &setup.run.routing;
    let everything = window.since.is_none()
        && window.until.is_none()
        && routing.accept_topics.is_none()
        && routing.accept_keys.is_none();
    let report = crate::verify::verify(
        source.as_mut(),
        again.as_deref_mut().map(|s| s as &mut dyn Source),
        &mut destinations,
        &window,
        setup.run.chunk_size,
        everything,
    )
    .await?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "since": window.since.map(|t| t.to_rfc3339()),
                "until": window.until.map(|t| t.to_rfc3339()),
                "clean": report.clean(),
                "records": report.records,
                "unreadable": report.unreadable,
                "destinations": report.destinations,
            })
        );
    } else {
        print!("{}", report.text(&window));
    }
    Ok(if report.clean() {
        Exit::Ok
    } else {
        Exit::Failed
    })
}

/// `verify --chain`: the integrity chain in every destination that can be listed.
async fn verify_chain(setup: &Setup, json: bool, public_key: Option<&str>) -> Result<Exit> {
    let key = match public_key {
        Some(text) => Some(
            crate::base::chain::verifying_key(text)
                .map_err(|why| config_error(format!("invalid --public-key: {why}")))?,
        ),
        None => setup
            .integrity
            .signing_key
            .as_ref()
            .map(|k| k.verifying_key()),
    };
    let traits = setup.source()?.traits();
    if !traits.chain {
        return Err(config_error(format!(
            "verify --chain walks the chain INTEGRITY_CHAIN keeps with the SQL sources, CASTAI and CATO; {} keeps none",
            setup.source()?.label()
        )));
    }
    let mut source = setup.source()?.connect(&setup.run).await?;
    // An API source's chain is in its state file: nothing to ask its API.
    if traits.sql {
        source.check().await?;
    }
    let chain = source.name();
    let state = source.chain_state().await?;
    let mut reports = Vec::new();
    for t in setup.targets()? {
        let mut sink = t.sink.build()?;
        reports.push(
            crate::integrity::walk::verify_chain(&chain, &state, sink.as_mut(), key.as_ref())
                .await?,
        );
    }
    let clean = reports.iter().all(|r| r.clean());
    if json {
        println!("{}", serde_json::json!({"clean": clean, "chains": reports}));
    } else {
        for r in &reports {
            print!("{}", r.text());
        }
    }
    Ok(if clean { Exit::Ok } else { Exit::Failed })
}

/// `init-queue`: creates the SQL source's queue index unless the table has one.
async fn init_queue(setup: &Setup) -> Result<Exit> {
    let mut source = setup.source()?.connect(&setup.run).await?;
    source.init_queue().await?;
    Ok(Exit::Ok)
}

/// `init-index`: creates the index with the audit mapping unless it exists.
async fn init_index(setup: &Setup) -> Result<Exit> {
    let targets = setup.targets()?;
    // Without TARGETS the one sink answers (with the error naming the fix if it has no index);
    // with TARGETS every Elasticsearch target, the others have none.
    if targets.iter().all(|t| t.name.is_none()) {
        for t in targets {
            t.sink.init_index().await?;
        }
        return Ok(Exit::Ok);
    }
    let indexed: Vec<_> = targets.iter().filter(|t| t.sink.has_index()).collect();
    if indexed.is_empty() {
        return Err(config_error(
            "init-index needs an elasticsearch target: none of TARGETS is one",
        ));
    }
    for t in indexed {
        t.sink.init_index().await?;
    }
    Ok(Exit::Ok)
}
