//! INTEGRITY_CHAIN in our state tables: each source's head (`audit_transfer_chain`), the links
//! of refused documents (`audit_transfer_chain_voids`) and the checkpoints written
//! (`audit_transfer_checkpoints`).
//!
//! Every page transaction locks its source's head row first and moves it at commit, so pages are
//! linked one at a time, across workers and overlapping runs alike, and a page that is never
//! committed (a crash, a sink outage) leaves the head where it was: its rows are claimed again in
//! the same order and get the same links.

use super::Dialect;
use crate::base::chain::{Checkpoint, Head, Void};
use crate::base::source::{ChainAdvance, ChainState, KEPT_CHECKPOINTS};
use anyhow::{Context, Result};
use sqlx::{AnyConnection, Row};

const HEAD: &str = "audit_transfer_chain";
const VOIDS: &str = "audit_transfer_chain_voids";
const CHECKPOINTS: &str = "audit_transfer_checkpoints";

fn insert_ignore(d: Dialect) -> (&'static str, &'static str) {
    match d {
        Dialect::MySql => ("INSERT IGNORE", ""),
        _ => ("INSERT", " ON CONFLICT DO NOTHING"),
    }
}

/// Starts the chain of `source` if it has none.
pub async fn ensure(conn: &mut AnyConnection, d: Dialect, source: &str) -> Result<()> {
    let (insert, conflict) = insert_ignore(d);
    let sql = format!(
        "{insert} INTO {HEAD} (source, seq, hash) VALUES ({}, 0, {}){conflict}",
        d.ph(1),
        d.ph(2)
    );
    sqlx::query(&sql)
        .bind(source.to_string())
        .bind(Head::default().hash)
        .execute(conn)
        .await
        .context("starting the integrity chain")?;
    Ok(())
}

/// The head, locked until the transaction ends (SQLite: its transactions are one at a time).
pub async fn lock(conn: &mut AnyConnection, d: Dialect, source: &str) -> Result<Head> {
    let lock = match d {
        Dialect::Sqlite => "",
        _ => " FOR UPDATE",
    };
    head(conn, d, source, lock)
        .await
        .context("locking the head of the integrity chain")?
        .ok_or_else(|| anyhow::anyhow!("the integrity chain of {source} was not started"))
}

/// The head as stored, with `lock` appended to the statement; `None` before the chain started.
async fn head(
    conn: &mut AnyConnection,
    d: Dialect,
    source: &str,
    lock: &str,
) -> Result<Option<Head>> {
    let sql = format!(
        "SELECT {}, hash FROM {HEAD} WHERE source = {}{lock}",
        d.as_bigint("seq"),
        d.ph(1)
    );
    let Some(row) = sqlx::query(&sql)
        .bind(source.to_string())
        .fetch_optional(conn)
        .await?
    else {
        return Ok(None);
    };
    Ok(Some(Head {
        seq: row.try_get::<i64, _>(0)? as u64,
        hash: row.try_get(1)?,
    }))
}

/// Moves the head and keeps the page's voids, in the page's transaction.
pub async fn advance(
    conn: &mut AnyConnection,
    d: Dialect,
    source: &str,
    to: &ChainAdvance,
) -> Result<()> {
    let sql = format!(
        "UPDATE {HEAD} SET seq = {}, hash = {} WHERE source = {}",
        d.ph(1),
        d.ph(2),
        d.ph(3)
    );
    sqlx::query(&sql)
        .bind(to.head.seq as i64)
        .bind(to.head.hash.clone())
        .bind(source.to_string())
        .execute(&mut *conn)
        .await
        .context("moving the head of the integrity chain")?;
    for v in &to.voids {
        let sql = format!(
            "INSERT INTO {VOIDS} (source, seq, prev, hash, record) VALUES ({}, {}, {}, {}, {})",
            d.ph(1),
            d.ph(2),
            d.ph(3),
            d.ph(4),
            d.ph(5)
        );
        sqlx::query(&sql)
            .bind(source.to_string())
            .bind(v.seq as i64)
            .bind(v.prev.clone())
            .bind(v.hash.clone())
            .bind(v.record.clone())
            .execute(&mut *conn)
            .await
            .context("keeping a refused document's link")?;
    }
    Ok(())
}

/// The head, every void and the checkpoints kept, in sequence order.
pub async fn state(conn: &mut AnyConnection, d: Dialect, source: &str) -> Result<ChainState> {
    let head = head(conn, d, source, "")
        .await
        .context("reading the head of the integrity chain")?
        .unwrap_or_default();
    let voids = sqlx::query(&format!(
        "SELECT {}, prev, hash, record FROM {VOIDS} WHERE source = {} ORDER BY seq",
        d.as_bigint("seq"),
        d.ph(1)
    ))
    .bind(source.to_string())
    .fetch_all(&mut *conn)
    .await
    .context("reading the voids of the integrity chain")?
    .into_iter()
    .map(|r| -> Result<Void> {
        Ok(Void {
            seq: r.try_get::<i64, _>(0)? as u64,
            prev: r.try_get(1)?,
            hash: r.try_get(2)?,
            record: r.try_get(3)?,
        })
    })
    .collect::<Result<Vec<_>>>()?;
    let checkpoints = sqlx::query(&format!(
        "SELECT {} FROM {CHECKPOINTS} WHERE source = {} ORDER BY seq",
        match d {
            // MariaDB hands TEXT out as a BLOB.
            Dialect::MySql => d.as_bytes("body"),
            _ => d.as_text("body"),
        },
        d.ph(1)
    ))
    .bind(source.to_string())
    .fetch_all(&mut *conn)
    .await
    .context("reading the checkpoints of the integrity chain")?
    .into_iter()
    .map(|r| {
        let body = match d {
            Dialect::MySql => super::bytes_at(&r, 0)?.unwrap_or_default(),
            _ => r.try_get::<String, _>(0)?.into_bytes(),
        };
        serde_json::from_slice(&body)
            .context("a checkpoint kept in audit_transfer_checkpoints is not readable")
    })
    .collect::<Result<Vec<Checkpoint>>>()?;
    Ok(ChainState {
        head,
        voids,
        checkpoints,
    })
}

/// Keeps a checkpoint the destination acknowledged, and forgets those older than the last
/// [`KEPT_CHECKPOINTS`] (one is written per run). Two runs that end at the same head keep the
/// first one's.
pub async fn save_checkpoint(
    conn: &mut AnyConnection,
    d: Dialect,
    source: &str,
    cp: &Checkpoint,
) -> Result<()> {
    let (insert, conflict) = insert_ignore(d);
    let sql = format!(
        "{insert} INTO {CHECKPOINTS} (source, seq, body) VALUES ({}, {}, {}){conflict}",
        d.ph(1),
        d.ph(2),
        d.ph(3)
    );
    sqlx::query(&sql)
        .bind(source.to_string())
        .bind(cp.seq as i64)
        .bind(serde_json::to_string(cp)?)
        .execute(&mut *conn)
        .await
        .context("keeping the checkpoint")?;
    // The oldest seq still kept; MySQL cannot read the table it deletes from in one statement.
    let oldest: Option<i64> = sqlx::query_scalar(&format!(
        "SELECT {} FROM {CHECKPOINTS} WHERE source = {} ORDER BY seq DESC LIMIT 1 OFFSET {}",
        d.as_bigint("seq"),
        d.ph(1),
        KEPT_CHECKPOINTS - 1
    ))
    .bind(source.to_string())
    .fetch_optional(&mut *conn)
    .await
    .context("reading the checkpoints of the integrity chain")?;
    if let Some(oldest) = oldest {
        sqlx::query(&format!(
            "DELETE FROM {CHECKPOINTS} WHERE source = {} AND seq < {}",
            d.ph(1),
            d.ph(2)
        ))
        .bind(source.to_string())
        .bind(oldest)
        .execute(conn)
        .await
        .context("forgetting old checkpoints")?;
    }
    Ok(())
}
