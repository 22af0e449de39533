//! TARGETS in our state tables: which targets already hold a row whose fan-out is incomplete
//! (`audit_transfer_target_rows`), and each target's share of a run
//! (`audit_transfer_run_targets`). Only runs with several targets touch them, and only for rows
//! some target lacks, so a run whose targets all succeed writes nothing here.

use super::{Dialect, IdSet};
use crate::base::source::TargetRun;
use anyhow::{Context, Result};
use sqlx::{AnyConnection, Row};
use std::collections::HashMap;

const HELD: &str = "audit_transfer_target_rows";
const RUN_TARGETS: &str = "audit_transfer_run_targets";

/// The targets that hold each of `rows` (row id, document id), for the rows that have any.
/// Entries of an earlier row under the same id (another document id) do not count.
pub async fn held(
    conn: &mut AnyConnection,
    d: Dialect,
    source: &str,
    rows: &[(i64, &str)],
) -> Result<HashMap<i64, Vec<String>>> {
    let mut out: HashMap<i64, Vec<String>> = HashMap::new();
    if rows.is_empty() {
        return Ok(out);
    }
    let ids: Vec<i64> = rows.iter().map(|(id, _)| *id).collect();
    let docs: HashMap<i64, &str> = rows.iter().copied().collect();
    let set = IdSet::new(d, "row_id", 2, &ids);
    let sql = format!(
        "SELECT {}, target, doc_id FROM {HELD} WHERE source = {} AND {}",
        d.as_bigint("row_id"),
        d.ph(1),
        set.sql
    );
    let mut q = sqlx::query(&sql).bind(source.to_string());
    if let Some(p) = set.param {
        q = q.bind(p);
    }
    for row in q
        .fetch_all(conn)
        .await
        .context("reading which targets hold the page's rows")?
    {
        let id = row.try_get::<i64, _>(0)?;
        if docs.get(&id).copied() == Some(row.try_get::<String, _>(2)?.as_str()) {
            out.entry(id)
                .or_default()
                .push(row.try_get::<String, _>(1)?);
        }
    }
    Ok(out)
}

/// Records that each row (row id, document id) is now held by its targets (those already
/// recorded stay).
pub async fn add(
    conn: &mut AnyConnection,
    d: Dialect,
    source: &str,
    rows: &[(i64, &str, Vec<String>)],
) -> Result<()> {
    let pairs: Vec<(i64, &str, &String)> = rows
        .iter()
        .flat_map(|(id, doc, targets)| targets.iter().map(move |t| (*id, *doc, t)))
        .collect();
    for chunk in pairs.chunks(200) {
        let values: Vec<String> = chunk
            .iter()
            .enumerate()
            .map(|(k, (id, _, _))| {
                format!(
                    "({}, {id}, {}, {})",
                    d.ph(3 * k + 1),
                    d.ph(3 * k + 2),
                    d.ph(3 * k + 3)
                )
            })
            .collect();
        let (insert, conflict) = match d {
            Dialect::MySql => ("INSERT IGNORE", ""),
            _ => ("INSERT", " ON CONFLICT (source, row_id, target) DO NOTHING"),
        };
        let sql = format!(
            "{insert} INTO {HELD} (source, row_id, target, doc_id) VALUES {}{conflict}",
            values.join(", ")
        );
        let mut q = sqlx::query(&sql);
        for (_, doc, target) in chunk {
            q = q
                .bind(source.to_string())
                .bind((*target).clone())
                .bind(doc.to_string());
        }
        q.execute(&mut *conn)
            .await
            .context("recording which targets hold rows")?;
    }
    Ok(())
}

/// Forgets rows every target now holds (they are marked sent).
pub async fn forget(conn: &mut AnyConnection, d: Dialect, source: &str, ids: &[i64]) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let set = IdSet::new(d, "row_id", 2, ids);
    let sql = format!(
        "DELETE FROM {HELD} WHERE source = {} AND {}",
        d.ph(1),
        set.sql
    );
    let mut q = sqlx::query(&sql).bind(source.to_string());
    if let Some(p) = set.param {
        q = q.bind(p);
    }
    q.execute(conn)
        .await
        .context("forgetting target progress of sent rows")?;
    Ok(())
}

/// Forgets entries of rows that are gone or sent (deleted by `monthly`, marked by a run without
/// TARGETS).
pub async fn forget_gone(
    conn: &mut AnyConnection,
    d: Dialect,
    source: &str,
    table: &str,
    unsent: &str,
) -> Result<()> {
    let sql = format!(
        "DELETE FROM {HELD} WHERE source = {} AND NOT EXISTS \
         (SELECT 1 FROM {table} t WHERE t.id = {HELD}.row_id AND {unsent})",
        d.ph(1)
    );
    sqlx::query(&sql)
        .bind(source.to_string())
        .execute(conn)
        .await
        .context("forgetting target progress of rows no longer unsent")?;
    Ok(())
}

/// Each target's share of the run that ended at `finished` (a timestamp parameter's text).
pub async fn record_run(
    conn: &mut AnyConnection,
    d: Dialect,
    source: &str,
    finished: &str,
    targets: &[TargetRun],
) -> Result<()> {
    for t in targets {
        let sql = format!(
            "INSERT INTO {RUN_TARGETS} (source, finished_at, target, delivered, already_present, rejected, lacking, down) \
             VALUES ({}, {}, {}, {}, {}, {}, {}, {})",
            d.ph(1),
            d.timestamp_param(&d.ph(2)),
            d.ph(3),
            d.ph(4),
            d.ph(5),
            d.ph(6),
            d.ph(7),
            d.ph(8)
        );
        sqlx::query(&sql)
            .bind(source.to_string())
            .bind(finished.to_string())
            .bind(t.name.clone())
            .bind(t.delivered as i64)
            .bind(t.already_present as i64)
            .bind(t.rejected as i64)
            .bind(t.lacking as i64)
            .bind(i32::from(t.down))
            .execute(&mut *conn)
            .await
            .context("recording the run's targets")?;
    }
    Ok(())
}

/// The targets' shares of the run that ended at `finished`, in name order.
pub async fn of_run(
    conn: &mut AnyConnection,
    d: Dialect,
    source: &str,
    finished: &str,
) -> Result<Vec<TargetRun>> {
    let sql = format!(
        "SELECT target, {}, {}, {}, {}, {} FROM {RUN_TARGETS} WHERE source = {} AND finished_at = {} ORDER BY target",
        d.as_bigint("delivered"),
        d.as_bigint("already_present"),
        d.as_bigint("rejected"),
        d.as_bigint("lacking"),
        d.as_bigint("down"),
        d.ph(1),
        d.timestamp_param(&d.ph(2)),
    );
    let rows = sqlx::query(&sql)
        .bind(source.to_string())
        .bind(finished.to_string())
        .fetch_all(conn)
        .await
        .context("reading the run's targets")?;
    let n = |r: &sqlx::any::AnyRow, i: usize| -> Result<u64> {
        Ok(r.try_get::<i64, _>(i)?.max(0) as u64)
    };
    rows.iter()
        .map(|r| {
            Ok(TargetRun {
                name: r.try_get(0)?,
                delivered: n(r, 1)?,
                already_present: n(r, 2)?,
                rejected: n(r, 3)?,
                lacking: n(r, 4)?,
                down: n(r, 5)? != 0,
            })
        })
        .collect()
}

/// Forgets the shares of runs that `audit_transfer_runs` no longer keeps.
pub async fn prune(conn: &mut AnyConnection, d: Dialect, source: &str, runs: &str) -> Result<()> {
    let sql = format!(
        "DELETE FROM {RUN_TARGETS} WHERE source = {} AND NOT EXISTS \
         (SELECT 1 FROM {runs} r WHERE r.source = {RUN_TARGETS}.source AND r.finished_at = {RUN_TARGETS}.finished_at)",
        d.ph(1)
    );
    sqlx::query(&sql)
        .bind(source.to_string())
        .execute(conn)
        .await
        .context("pruning audit_transfer_run_targets")?;
    Ok(())
}
