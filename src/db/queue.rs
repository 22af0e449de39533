//! A table of audit rows used as a queue: claim a page (locked), let the pipeline ship it,
//! then mark the delivered rows and remember the failed ones, in the page's transaction.
//!
//! Shared by the SQL sources; each describes its table through [`Schema`].
//!
//! Why this shape:
//! - `FOR UPDATE SKIP LOCKED` inside one short transaction per page: overlapping runs never
//!   claim the same row, and a crash rolls back only the uncommitted page (re-shipped next run
//!   under the same document id, so the sink answers 409 and nothing is duplicated).
//! - Keyset pagination on `(ts, id)`: each page starts where the last one ended, never OFFSET,
//!   and rows that failed or are locked by another run are passed over, not re-read.
//! - Failed rows live in our own table `audit_transfer_failed_rows`: fresh pages skip them so
//!   they never block the queue; a retry lane gives them `MAX_ATTEMPTS` tries in total.

use super::{id_list, Db, Dialect, IdSet};
use crate::base::chain::{Checkpoint, Head};
use crate::base::document::Record;
use crate::base::source::{
    Backlog, ChainState, Lane, LastRuns, Page, PageResult, Parked, RunRecord, Source,
};
use crate::db::TableName;
use crate::routing::{Accept, FieldPath, Route, Routing};
use anyhow::{Context, Result};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::any::{Any, AnyRow};
use sqlx::AnyConnection;
use sqlx::{Connection, Row, Transaction};

const FAILED: &str = "audit_transfer_failed_rows";
const RUNS: &str = "audit_transfer_runs";
/// How long `audit_transfer_runs` keeps a source's runs (the last success is always kept).
const KEEP_RUNS_DAYS: i64 = 30;
/// Longest failure reason we store; sink errors can carry whole documents.
const MAX_REASON: usize = 2000;
/// Rows deleted per statement by `purge`, so the table is never locked for long.
const PURGE_CHUNK: usize = 1000;

/// How one SQL source lays out its table. Column expressions are unqualified (the claim query
/// reads the table alone, aliased `t`) and built from validated identifiers only.
#[async_trait]
pub trait Schema: Send + Sync {
    /// Key of this source in our state tables, e.g. `single_column_json:audit_logs`.
    fn source_key(&self) -> String;
    fn table(&self) -> &TableName;
    /// The ordering timestamp column (`created_at`, `timestamp`).
    fn ts_column(&self) -> &'static str;
    /// Predicate for rows still to send.
    fn unsent(&self, d: Dialect) -> String;
    /// Predicate for rows already sent (the only ones `purge` may delete).
    fn sent(&self, d: Dialect) -> String;
    /// The SET clause that marks rows sent.
    fn mark_set(&self, d: Dialect) -> String;
    /// Columns claimed after `id` and the timestamp text, which are columns 0 and 1.
    fn columns(&self, d: Dialect) -> Vec<String>;
    /// What a missing table or column means, for the configuration error.
    fn describe(&self) -> String;
    /// The JSON column that ROUTING_TOPIC_FIELD and ROUTING_KEY_FIELD are paths into.
    fn route_column(&self) -> &'static str;
    /// The column that flags a row sent, when there is one: a queue index may lead with it.
    fn flag_column(&self) -> Option<&'static str> {
        None
    }
    /// The index that lets each page's claim start at the cursor (`init-queue` creates it).
    fn queue_index(&self, d: Dialect) -> String {
        let name = d.quote(&format!("{}_queue", self.table().name));
        let ts = d.quote(self.ts_column());
        let concurrently = match d {
            Dialect::Postgres => " CONCURRENTLY",
            _ => "",
        };
        format!(
            "CREATE INDEX{concurrently} {name} ON {} ({ts}, id)",
            d.table(self.table())
        )
    }
    /// Another query that must run (a `1 = 0` probe of a joined table) and its error text.
    fn extra_probe(&self, _d: Dialect) -> Option<(String, String)> {
        None
    }
    /// Turns claimed rows into records; may read more from the same transaction (set-based).
    async fn records(
        &self,
        conn: &mut AnyConnection,
        d: Dialect,
        rows: Vec<AnyRow>,
    ) -> Result<Vec<Record>>;
}

mod sent;

pub struct Queue<S: Schema> {
    db: Db,
    schema: S,
    max_attempts: u32,
    /// Where each lane's previous page ended (the indexed plan): (timestamp text, id).
    cursors: [Option<(String, i64)>; 2],
    /// How pages find their rows on this table; found on first use.
    plan: Option<Plan>,
    /// MySQL: the primary key when it leads with `id`, named in claims by id.
    id_index: Option<String>,
    /// [`Plan::Keys`]: the backlog's order, read once and shared by the run's connections.
    order: Order,
    routing: Routing,
    /// Built on first use (it needs the column's type), by every connection of a run.
    route_sql: Option<RouteSql>,
    /// `prepare` ran: our tables exist, so the run can be recorded.
    prepared: bool,
    /// `verify`: where the last page of sent rows ended (the row address; PostgreSQL without
    /// a key: the next block), and the address plan and block count found on the first page.
    sent_after: Option<i64>,
    sent_plan: Option<(Addr, i64)>,
    /// INTEGRITY_CHAIN is on: every page locks the head first ([`super::chain`]).
    chain: bool,
}

/// The order of the backlog ([`Plan::Keys`]), per lane: read once for the whole run and handed
/// out to its connections (SINK_CONCURRENCY) page by page, instead of each connection reading
/// all of it itself. The lock is held only while one connection reads the next part.
#[derive(Debug, Clone, Default)]
pub struct Order(std::sync::Arc<tokio::sync::Mutex<OrderState>>);

#[derive(Debug, Default)]
struct OrderState {
    lanes: [LaneOrder; 2],
    /// PostgreSQL: a connection of its own that holds each lane's ordered cursor.
    conn: Option<AnyConnection>,
}

#[derive(Debug, Default)]
struct LaneOrder {
    /// Row addresses still to claim, in order.
    keys: std::collections::VecDeque<i64>,
    /// The lane's sorted order exists on [`OrderState::conn`].
    declared: bool,
    /// MySQL and SQLite: the position in the sorted table of the last address read.
    last_seq: i64,
    /// The sorted order is read to its end: it held the whole backlog as it was when sorted.
    /// Rows written since are the next run's.
    drained: bool,
}

/// The backlog's addresses are fetched from the sorted order this many at a time (400 KB).
const ORDER_FETCH: usize = 50_000;

/// The backlog's order sorted once per run, linear in the backlog, held by the order's own
/// connection without keeping a snapshot open that would stop vacuum or purge during the run:
/// a cursor WITH HOLD on PostgreSQL (materialised when its statement commits), a temporary
/// table numbered in order elsewhere. (Windows of 500,000 rows sorted the rest of the backlog
/// again for every window.)
struct SortedOrder {
    d: Dialect,
    name: String,
}

impl SortedOrder {
    fn new(d: Dialect, lane: Lane) -> Self {
        SortedOrder {
            d,
            name: format!("audit_transfer_order_{}", lane as usize),
        }
    }

    /// The statements that create the container (dropping what a failed sort left), and the
    /// one that sorts `select` (a query of one column, the address) into it.
    fn create(&self, select: &str) -> (Vec<String>, String) {
        let name = &self.name;
        match self.d {
            // A failed DECLARE leaves no cursor behind.
            Dialect::Postgres => (
                Vec::new(),
                format!("DECLARE {name} NO SCROLL CURSOR WITH HOLD FOR {select}"),
            ),
            Dialect::MySql => (
                vec![
                    format!("DROP TEMPORARY TABLE IF EXISTS {name}"),
                    format!("CREATE TEMPORARY TABLE {name} (seq BIGINT AUTO_INCREMENT PRIMARY KEY, addr BIGINT NOT NULL)"),
                ],
                format!("INSERT INTO {name} (addr) {select}"),
            ),
            Dialect::Sqlite => (
                vec![
                    format!("DROP TABLE IF EXISTS temp.{name}"),
                    format!("CREATE TEMP TABLE {name} (seq INTEGER PRIMARY KEY, addr INTEGER NOT NULL)"),
                ],
                format!("INSERT INTO temp.{name} (addr) {select}"),
            ),
        }
    }

    /// The next [`ORDER_FETCH`] addresses after position `after`: the address, then (tables)
    /// its position.
    fn fetch(&self, after: i64) -> String {
        let name = &self.name;
        match self.d {
            Dialect::Postgres => format!("FETCH FORWARD {ORDER_FETCH} FROM {name}"),
            Dialect::MySql => format!(
                "SELECT addr, seq FROM {name} WHERE seq > {after} ORDER BY seq LIMIT {ORDER_FETCH}"
            ),
            Dialect::Sqlite => format!(
                "SELECT addr, seq FROM temp.{name} WHERE seq > {after} ORDER BY seq LIMIT {ORDER_FETCH}"
            ),
        }
    }

    fn close(&self) -> String {
        let name = &self.name;
        match self.d {
            Dialect::Postgres => format!("CLOSE {name}"),
            Dialect::MySql => format!("DROP TEMPORARY TABLE {name}"),
            Dialect::Sqlite => format!("DROP TABLE temp.{name}"),
        }
    }
}

/// Sorts the lane's backlog into the order's own connection, unless done or drained.
#[allow(clippy::too_many_arguments)]
async fn sort_once(
    lanes: &mut [LaneOrder; 2],
    conn: &mut Option<AnyConnection>,
    cfg: &super::DatabaseConfig,
    d: Dialect,
    lane: Lane,
    select: impl FnOnce() -> String,
    key: &str,
    max: u32,
    route_sql: &RouteSql,
) -> Result<()> {
    let lane_order = &mut lanes[lane as usize];
    if lane_order.declared || lane_order.drained {
        return Ok(());
    }
    let started = std::time::Instant::now();
    if conn.is_none() {
        *conn = Some(super::Db::connect(cfg).await?.conn);
    }
    let conn = conn.as_mut().expect("connected above");
    let (prepare, fill) = SortedOrder::new(d, lane).create(&select());
    for prepare in prepare {
        sqlx::query(&prepare)
            .execute(&mut *conn)
            .await
            .context("preparing the order of the unsent audit rows")?;
    }
    bind_claim(&fill, key.to_string(), lane, max, &None, route_sql)
        .execute(&mut *conn)
        .await
        .context("sorting the order of the unsent audit rows")?;
    lane_order.declared = true;
    tracing::debug!(lane = ?lane, ms = started.elapsed().as_millis() as u64, "sorted the order of the backlog");
    Ok(())
}

/// How a page's rows are found. Chosen from the table's indexes, never by creating one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// An index leads with the timestamp (after the sent flag): each page's claim reads from
    /// the cursor on in the index.
    Indexed,
    /// No such index: one sorted read of the backlog's keys per run ([`SortedOrder`]) instead of
    /// one sort per page; pages are claimed by these addresses, which must be cheap to look up.
    Keys(Addr),
}

/// How [`Plan::Keys`] addresses a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Addr {
    /// An index leads with `id` (the primary key of the Django migration's table).
    Id,
    /// PostgreSQL without a key on `id`: the tuple's physical address. It moves when the row
    /// is updated; a claim by a stale address finds another row or none, and every claim
    /// re-checks "unsent, not failed, accepted" under the row lock, so it is only ever a miss
    /// (picked up by the next run), never a wrong row shipped.
    Ctid,
    /// SQLite: the rowid, which every ordinary table has.
    Rowid,
    /// MySQL/MariaDB without a key on `id`: claims and marks by id scan the table (the one
    /// shape whose cost still grows with the square of the backlog; `check` warns).
    Unindexed,
}

impl Addr {
    /// The address read by the ordered read, as text (ctid) or integer.
    fn select(self, d: Dialect) -> String {
        match self {
            Addr::Ctid => "(t.ctid)::text".into(),
            Addr::Rowid => "CAST(t.rowid AS INTEGER)".into(),
            Addr::Id | Addr::Unindexed => d.as_bigint("t.id"),
        }
    }

    /// The address [`Addr::select`] read, at column `i`.
    fn read(self, r: &AnyRow, i: usize) -> Result<i64> {
        match self {
            Addr::Ctid => {
                let text: String = r.try_get(i)?;
                parse_ctid(&text).with_context(|| format!("unexpected ctid {text:?}"))
            }
            _ => Ok(r.try_get::<i64, _>(i)?),
        }
    }

    /// `column IN (addresses)` for rows of `table` aliased `alias` ("" for none).
    fn set(self, d: Dialect, alias: &str, n: usize, addrs: &[i64]) -> IdSet {
        match self {
            Addr::Ctid => IdSet {
                sql: format!("{alias}ctid = ANY(CAST({} AS tid[]))", d.ph(n)),
                param: Some(format!(
                    "{{{}}}",
                    addrs
                        .iter()
                        .map(|&a| format!("\"({},{})\"", a >> 16, a & 0xffff))
                        .collect::<Vec<_>>()
                        .join(",")
                )),
            },
            Addr::Rowid => IdSet {
                sql: format!("{alias}rowid IN ({})", id_list(addrs.iter().copied())),
                param: None,
            },
            Addr::Id | Addr::Unindexed => IdSet::new(d, &format!("{alias}id"), n, addrs),
        }
    }
}

/// How a plan's claims address rows: the indexed plan claims its candidates by id.
fn addr_of(plan: Plan) -> Addr {
    match plan {
        Plan::Keys(a) => a,
        Plan::Indexed => Addr::Id,
    }
}

/// A ctid as PostgreSQL prints it, `(block,offset)`, packed into one integer.
fn parse_ctid(text: &str) -> Option<i64> {
    let (block, offset) = text
        .trim()
        .strip_prefix('(')?
        .strip_suffix(')')?
        .split_once(',')?;
    let (block, offset): (u32, u16) = (block.parse().ok()?, offset.parse().ok()?);
    Some((i64::from(block) << 16) | i64::from(offset))
}

/// Chooses the plan from the indexes' column lists (lower case, in index order).
fn choose_plan(d: Dialect, indexes: &[Vec<String>], ts: &str, flag: Option<&str>) -> Plan {
    let leads = |cols: &[String], name: &str| cols.first().is_some_and(|c| c == name);
    let queue = indexes.iter().any(|cols| {
        leads(cols, ts)
            || (flag.is_some_and(|f| leads(cols, f)) && cols.get(1).is_some_and(|c| c == ts))
    });
    if queue {
        return Plan::Indexed;
    }
    let id = indexes.iter().any(|cols| leads(cols, "id"));
    Plan::Keys(match (d, id) {
        (Dialect::Sqlite, _) => Addr::Rowid,
        (_, true) => Addr::Id,
        (Dialect::Postgres, false) => Addr::Ctid,
        (Dialect::MySql, false) => Addr::Unindexed,
    })
}

/// Routing done in SQL: rows a run does not accept are never claimed (so never locked or
/// marked), and the topic and key of the others are selected with the page.
#[derive(Debug, Clone, Default)]
struct RouteSql {
    /// Topic and key expressions, selected after the schema's columns; `None`: no routing.
    columns: Option<(String, String)>,
    accept: Vec<(String, Accept)>,
    /// With TARGETS, when every target restricts what it takes: rows some target accepts (one
    /// AND-group per target, ORed).
    any_target: Vec<Vec<(String, Accept)>>,
    /// MySQL: values are compared as bytes (see `build_route_sql`).
    binary: bool,
}

impl RouteSql {
    /// `" AND (...)"` for the ACCEPT_* lists, numbering placeholders with `ph`.
    fn predicate(&self, ph: &mut dyn FnMut() -> String) -> String {
        let binary = self.binary;
        let mut value = || match binary {
            true => format!("CAST({} AS BINARY)", ph()),
            false => ph(),
        };
        let mut out: String = self
            .accept
            .iter()
            .map(|(expr, a)| format!(" AND {}", a.sql(expr, &mut value)))
            .collect();
        if !self.any_target.is_empty() {
            let groups: Vec<String> = self
                .any_target
                .iter()
                .map(|group| {
                    let terms: Vec<String> = group
                        .iter()
                        .map(|(expr, a)| a.sql(expr, &mut value))
                        .collect();
                    format!("({})", terms.join(" AND "))
                })
                .collect();
            out.push_str(&format!(" AND ({})", groups.join(" OR ")));
        }
        out
    }

    /// Every accept list, in the order of the placeholders of [`RouteSql::predicate`].
    fn lists(&self) -> impl Iterator<Item = &Accept> {
        self.accept
            .iter()
            .chain(self.any_target.iter().flatten())
            .map(|(_, a)| a)
    }

    fn bind<'q>(
        &self,
        mut q: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>,
    ) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>> {
        for a in self.lists() {
            for v in a.values() {
                q = q.bind(v.clone());
            }
        }
        q
    }
}

impl<S: Schema> Queue<S> {
    pub fn new(db: Db, schema: S, max_attempts: u32, routing: &Routing, order: Order) -> Self {
        Queue {
            db,
            schema,
            max_attempts,
            cursors: [None, None],
            plan: None,
            id_index: None,
            order,
            routing: routing.clone(),
            route_sql: None,
            prepared: false,
            sent_after: None,
            sent_plan: None,
            chain: false,
        }
    }

    /// INTEGRITY_CHAIN: starts the chain if need be; from now on every page holds its head.
    pub async fn keep_chain(&mut self) -> Result<String> {
        // The run's first connection prepared the tables; the others only need them there.
        self.db.migrate().await?;
        let d = self.db.dialect;
        let key = self.schema.source_key();
        super::chain::ensure(&mut self.db.conn, d, &key).await?;
        if d == Dialect::MySql {
            // A page waits for the head while another one ships, which may take as long as
            // the sink's retries: longer than InnoDB's default 50 s wait.
            sqlx::query("SET SESSION innodb_lock_wait_timeout = 3600")
                .execute(&mut self.db.conn)
                .await
                .context("setting the lock wait for the integrity chain")?;
        }
        self.chain = true;
        Ok(key)
    }

    pub async fn chain_state(&mut self) -> Result<ChainState> {
        self.db.migrate().await?;
        let key = self.schema.source_key();
        super::chain::state(&mut self.db.conn, self.db.dialect, &key).await
    }

    pub async fn save_checkpoint(&mut self, cp: &Checkpoint) -> Result<()> {
        let key = self.schema.source_key();
        super::chain::save_checkpoint(&mut self.db.conn, self.db.dialect, &key, cp).await
    }

    async fn routes(&mut self) -> Result<&RouteSql> {
        if self.route_sql.is_none() {
            self.route_sql = Some(self.build_route_sql().await?);
        }
        Ok(self.route_sql.as_ref().expect("just built"))
    }

    /// The SQL for ROUTING_*_FIELD and ACCEPT_*. On PostgreSQL the column must be json or
    /// jsonb: a text column would need a cast that fails the whole page on one bad row.
    async fn build_route_sql(&mut self) -> Result<RouteSql> {
        let r = &self.routing;
        if !r.active() {
            return Ok(RouteSql::default());
        }
        let d = self.db.dialect;
        let column = format!("t.{}", d.quote(self.schema.route_column()));
        let mut pg_json = String::new();
        if d == Dialect::Postgres && (r.topic_field.is_some() || r.key_field.is_some()) {
            let ty: Option<String> = sqlx::query_scalar(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute \
                 WHERE attrelid = CAST($1 AS regclass) AND attname = $2",
            )
            .bind(d.table(self.schema.table()))
            .bind(self.schema.route_column())
            .fetch_optional(&mut self.db.conn)
            .await
            .context("reading the type of the routing column")?;
            pg_json = match ty.as_deref() {
                Some(t @ ("json" | "jsonb")) => t.to_string(),
                other => {
                    return Err(crate::base::exit::config_error(format!(
                        "ROUTING_TOPIC_FIELD/ROUTING_KEY_FIELD need column {} of {} to be json or jsonb on PostgreSQL, it is {}",
                        self.schema.route_column(),
                        self.schema.table().display(),
                        other.unwrap_or("missing")
                    )))
                }
            };
        }
        // Topics are compared exactly. MySQL's collations would match "AuthFail" to "authfail"
        // and, even binary ones (PAD SPACE), "authfail " to "authfail": compare bytes there.
        let text = |e: &str| match d {
            Dialect::MySql => format!("CAST({e} AS BINARY)"),
            _ => d.as_text(e),
        };
        let expr = |f: &Option<FieldPath>| match f {
            Some(f) => text(&super::routing::field_sql(f, d, &column, &pg_json)),
            None => text("NULL"),
        };
        let (topic, key) = (expr(&r.topic_field), expr(&r.key_field));
        let mut accept = Vec::new();
        if let Some(a) = &r.accept_topics {
            accept.push((topic.clone(), a.clone()));
        }
        if let Some(a) = &r.accept_keys {
            accept.push((key.clone(), a.clone()));
        }
        let mut any_target = Vec::new();
        if r.targets_restricted() {
            for s in &r.targets {
                let mut group = Vec::new();
                if let Some(a) = &s.topics {
                    group.push((topic.clone(), a.clone()));
                }
                if let Some(a) = &s.keys {
                    group.push((key.clone(), a.clone()));
                }
                any_target.push(group);
            }
        }
        Ok(RouteSql {
            columns: Some((topic, key)),
            accept,
            any_target,
            binary: d == Dialect::MySql,
        })
    }

    /// PostgreSQL and MySQL claim with row locks, so several connections may work at once.
    pub fn parallel_safe(&self) -> bool {
        self.db.dialect != Dialect::Sqlite
    }

    pub fn schema(&self) -> &S {
        &self.schema
    }

    /// The table's indexes (name, column names), from the catalog.
    async fn indexes(&mut self) -> Result<Vec<(String, Vec<String>)>> {
        let d = self.db.dialect;
        let t = self.schema.table();
        let q = match d {
            Dialect::Postgres => sqlx::query(
                "SELECT i.indexrelid::bigint, COALESCE(a.attname::text, '') FROM pg_index i \
                 CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n) \
                 LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                 WHERE i.indrelid = CAST($1 AS regclass) AND i.indisvalid ORDER BY 1, k.n",
            )
            .bind(d.table(t)),
            Dialect::MySql => sqlx::query(
                "SELECT CAST(index_name AS CHAR), CAST(COALESCE(column_name, '') AS CHAR) \
                 FROM information_schema.statistics WHERE table_schema = COALESCE(?, DATABASE()) \
                 AND table_name = ? ORDER BY index_name, seq_in_index",
            )
            .bind(t.schema.clone())
            .bind(t.name.clone()),
            Dialect::Sqlite => sqlx::query(
                "SELECT il.name, COALESCE(ii.name, '') FROM pragma_index_list(?) il, \
                 pragma_index_info(il.name) ii ORDER BY il.name, ii.seqno",
            )
            .bind(t.name.clone()),
        };
        let rows = q
            .fetch_all(&mut self.db.conn)
            .await
            .context("reading the indexes of the audit table")?;
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for r in rows {
            let index = match d {
                Dialect::Postgres => r.try_get::<i64, _>(0)?.to_string(),
                _ => r.try_get::<String, _>(0)?,
            };
            let column = r.try_get::<String, _>(1)?.to_lowercase();
            match out.last_mut() {
                Some((name, cols)) if *name == index => cols.push(column),
                _ => out.push((index, vec![column])),
            }
        }
        Ok(out)
    }

    async fn plan(&mut self) -> Result<Plan> {
        if let Some(p) = self.plan {
            return Ok(p);
        }
        let indexes = self.indexes().await?;
        let columns: Vec<Vec<String>> = indexes.iter().map(|(_, c)| c.clone()).collect();
        let p = choose_plan(
            self.db.dialect,
            &columns,
            self.schema.ts_column(),
            self.schema.flag_column(),
        );
        // MySQL: a claim by id names the index. On a small table the optimizer prefers a full
        // scan, which locks every row it passes for a moment, so another worker's claim (SKIP
        // LOCKED) could pass over one of its own rows and leave it to the next run.
        // Only the primary key: another index may be invisible or ignored, and naming it fails.
        if self.db.dialect == Dialect::MySql {
            self.id_index = indexes
                .iter()
                .find(|(name, cols)| name == "PRIMARY" && cols.first().is_some_and(|c| c == "id"))
                .map(|(name, _)| name.clone());
        }
        tracing::debug!(plan = ?p, "claim plan");
        self.plan = Some(p);
        Ok(p)
    }

    /// What to tell the operator when the table lacks the queue index; `None` when it has one.
    async fn index_advice(&mut self) -> Result<Option<String>> {
        let d = self.db.dialect;
        let cost = match self.plan().await? {
            Plan::Indexed => return Ok(None),
            Plan::Keys(Addr::Unindexed) => {
                "neither a key on id nor an index on the order: every page's claim and mark scan \
                 the whole table, so a run's cost grows with the square of the backlog"
            }
            Plan::Keys(_) => {
                "no index on the order: each run sorts the whole backlog once instead of \
                 reading it in order from an index"
            }
        };
        Ok(Some(format!(
            "{} ({}) has {cost}; `audit-transfer init-queue` creates the index, or run: {};",
            self.schema.table().display(),
            self.schema.ts_column(),
            self.schema.queue_index(d)
        )))
    }

    /// `init-queue`: creates the queue index unless the table has one.
    pub async fn init_queue(&mut self) -> Result<()> {
        self.check().await?;
        if self.index_advice().await?.is_none() {
            tracing::info!(
                table = %self.schema.table().display(),
                "the table already has an index on the order; nothing to do"
            );
            return Ok(());
        }
        let sql = self.schema.queue_index(self.db.dialect);
        tracing::info!(%sql, "creating the queue index");
        sqlx::query(&sql)
            .execute(&mut self.db.conn)
            .await
            .with_context(|| format!("{sql} failed"))?;
        self.plan = None;
        tracing::info!(table = %self.schema.table().display(), "queue index created");
        Ok(())
    }

    /// Probes the table and columns; a missing one is a configuration error.
    pub async fn check(&mut self) -> Result<()> {
        let d = self.db.dialect;
        let sql = format!(
            "SELECT {} FROM {} t WHERE 1 = 0 AND {}",
            self.select_list(d),
            d.table(self.schema.table()),
            self.schema.unsent(d)
        );
        let describe = self.schema.describe();
        self.db.probe(sql, describe).await?;
        if let Some((sql, describe)) = self.schema.extra_probe(d) {
            self.db.probe(sql, describe).await?;
        }
        self.route_sql = None;
        if self.routes().await?.columns.is_some() {
            let sql = format!(
                "SELECT {} FROM {} t WHERE 1 = 0",
                self.select_list(d),
                d.table(self.schema.table())
            );
            let what = format!(
                "ROUTING_TOPIC_FIELD/ROUTING_KEY_FIELD over column {} of {}",
                self.schema.route_column(),
                self.schema.table().display()
            );
            self.db.probe(sql, what).await?;
        }
        if let Some(advice) = self.index_advice().await? {
            tracing::warn!("{advice}");
        }
        Ok(())
    }

    /// `check`, our migrations, and forgetting failures of rows that are gone or were sent.
    pub async fn prepare(&mut self) -> Result<()> {
        self.check().await?;
        self.db.migrate().await?;
        self.prepared = true;
        let d = self.db.dialect;
        let sql = format!(
            "DELETE FROM {FAILED} WHERE source = {} AND NOT EXISTS \
             (SELECT 1 FROM {} t WHERE t.id = {FAILED}.row_id AND {})",
            d.ph(1),
            d.table(self.schema.table()),
            self.schema.unsent(d)
        );
        sqlx::query(&sql)
            .bind(self.schema.source_key())
            .execute(&mut self.db.conn)
            .await?;
        super::targets::forget_gone(
            &mut self.db.conn,
            d,
            &self.schema.source_key(),
            &d.table(self.schema.table()),
            &self.schema.unsent(d),
        )
        .await?;
        Ok(())
    }

    fn select_list(&self, d: Dialect) -> String {
        let mut cols = vec![
            d.as_bigint("t.id"),
            d.as_text(&format!("t.{}", d.quote(self.schema.ts_column()))),
        ];
        cols.extend(self.schema.columns(d));
        if let Some((topic, key)) = self.route_sql.as_ref().and_then(|r| r.columns.as_ref()) {
            cols.push(topic.clone());
            cols.push(key.clone());
        }
        cols.join(", ")
    }

    pub async fn claim(&mut self, lane: Lane, limit: usize) -> Result<Option<Box<dyn Page + '_>>> {
        self.routes().await?;
        let plan = self.plan().await?;
        let d = self.db.dialect;
        let select_list = self.select_list(d);
        let Queue {
            db,
            schema,
            cursors,
            order,
            max_attempts,
            route_sql,
            chain,
            id_index,
            ..
        } = self;
        let hint = match id_index {
            Some(name) if matches!(addr_of(plan), Addr::Id) => {
                format!(" FORCE INDEX ({})", d.quote(name))
            }
            _ => String::new(),
        };
        let route_sql: &RouteSql = route_sql.as_ref().expect("built above");
        let schema: &S = schema;
        let table = d.table(schema.table());
        let ts = format!("t.{}", d.quote(schema.ts_column()));
        let key = schema.source_key();
        let max = *max_attempts;
        let fanout = self.routing.fans_out();

        if let Plan::Keys(addr) = plan {
            // Sorted before the page's transaction begins, so that no page waits idle in a
            // transaction while the backlog is sorted.
            let select = || {
                format!(
                    "SELECT {} FROM {table} t WHERE {} ORDER BY {ts}, t.id",
                    addr.select(d),
                    filters(schema, d, lane, false, route_sql)
                )
            };
            let mut shared = order.0.lock().await;
            let OrderState { lanes, conn } = &mut *shared;
            sort_once(lanes, conn, &db.cfg, d, lane, select, &key, max, route_sql).await?;
        }
        let mut tx = db
            .conn
            .begin_with(d.begin())
            .await
            .context("starting a page transaction")?;
        // The chain's head first, before any row: pages are linked one at a time, and no page
        // waits for the head while holding rows another one wants.
        let head = match *chain {
            true => Some(super::chain::lock(&mut tx, d, &key).await?),
            false => None,
        };
        let mut rows = Vec::new();
        let addr = addr_of(plan);
        let by_address = matches!(addr, Addr::Ctid | Addr::Rowid);
        if addr == Addr::Unindexed {
            // Without any key InnoDB locks every row a claim or a mark scans, so two page
            // transactions at once (overlapping runs, SINK_CONCURRENCY) deadlock. One at a time
            // instead: a row lock of our own, held until this page commits or rolls back, waited
            // for as long as another page may take to ship.
            for sql in [
                "SET SESSION innodb_lock_wait_timeout = 3600",
                "SELECT version FROM audit_transfer_migrations WHERE version = 1 FOR UPDATE",
            ] {
                sqlx::query(sql)
                    .execute(&mut *tx)
                    .await
                    .context("waiting for the other page transactions on a table without a key")?;
            }
        }
        let exhausted;
        loop {
            let cursor = cursors[lane as usize].clone();
            if plan == Plan::Indexed && d != Dialect::MySql {
                let filter = filters(schema, d, lane, cursor.is_some(), route_sql);
                let sql = format!(
                    "SELECT {select_list} FROM {table} t WHERE {filter} ORDER BY {ts}, t.id LIMIT {limit}{}",
                    d.claim_lock()
                );
                rows = bind_claim(&sql, key.clone(), lane, max, &cursor, route_sql)
                    .fetch_all(&mut *tx)
                    .await
                    .context("reading a page of audit rows")?;
                if let Some(last) = rows.last() {
                    cursors[lane as usize] =
                        Some((last.try_get::<String, _>(1)?, last.try_get::<i64, _>(0)?));
                }
                exhausted = rows.len() < limit;
                break;
            }
            // Otherwise in two steps: find the next candidates without locks, then lock those by
            // their address, skipping the ones another run holds; the cursor moves past all
            // candidates either way. Repeat until the page is full or the queue is exhausted, so
            // a short page still means "no more", as with the one-statement claim.
            let want = limit - rows.len();
            let (candidates, last_batch) = if plan == Plan::Indexed {
                // MySQL/MariaDB lock every row a locking read sorts, so the first run would lock
                // the whole backlog and the others would find nothing: candidates unlocked.
                let filter = filters(schema, d, lane, cursor.is_some(), route_sql);
                let sql = format!(
                    "SELECT {}, {} FROM {table} t WHERE {filter} ORDER BY {ts}, t.id LIMIT {want}",
                    d.as_bigint("t.id"),
                    d.as_text(&ts)
                );
                let found = bind_claim(&sql, key.clone(), lane, max, &cursor, route_sql)
                    .fetch_all(&mut *tx)
                    .await
                    .context("reading a page of audit rows")?;
                if let Some(last) = found.last() {
                    cursors[lane as usize] =
                        Some((last.try_get::<String, _>(1)?, last.try_get::<i64, _>(0)?));
                }
                let ids = found
                    .iter()
                    .map(|r| r.try_get::<i64, _>(0))
                    .collect::<Result<Vec<_>, _>>()?;
                let short = ids.len() < want;
                (ids, short)
            } else {
                // No index on the order: one ordered read of the backlog's addresses feeds the
                // pages (sorting it again for every page made a run quadratic in the backlog).
                let mut shared = order.0.lock().await;
                let OrderState { lanes, conn } = &mut *shared;
                let lane_order = &mut lanes[lane as usize];
                if lane_order.keys.is_empty() && !lane_order.drained {
                    let started = std::time::Instant::now();
                    // Sorted (and connected) before the transaction began.
                    let conn = conn.as_mut().expect("connected when the lane was sorted");
                    let sorted = SortedOrder::new(d, lane);
                    let fetch = sorted.fetch(lane_order.last_seq);
                    let mut stream = sqlx::query(&fetch).fetch(&mut *conn);
                    let mut read = 0;
                    while let Some(r) = futures_util::TryStreamExt::try_next(&mut stream)
                        .await
                        .context("reading the order of the unsent audit rows")?
                    {
                        lane_order.keys.push_back(addr.read(&r, 0)?);
                        if d != Dialect::Postgres {
                            lane_order.last_seq = r.try_get::<i64, _>(1)?;
                        }
                        read += 1;
                    }
                    drop(stream);
                    lane_order.drained = read < ORDER_FETCH;
                    if lane_order.drained {
                        sqlx::query(&sorted.close())
                            .execute(&mut *conn)
                            .await
                            .context("closing the order of the unsent audit rows")?;
                    }
                    tracing::debug!(
                        lane = ?lane,
                        rows = read,
                        ms = started.elapsed().as_millis() as u64,
                        "read the order of the backlog"
                    );
                }
                let keys = &mut lanes[lane as usize].keys;
                let take = want.min(keys.len());
                let batch: Vec<i64> = keys.drain(..take).collect();
                let none = batch.is_empty();
                (batch, none)
            };
            if candidates.is_empty() {
                exhausted = true;
                break;
            }
            let binds = claim_binds(lane, false, route_sql);
            let set = addr.set(d, "t.", binds + 1, &candidates);
            // A physical address comes back as the last column: the page is marked by it.
            let address = match by_address {
                true => format!(", {}", addr.select(d)),
                false => String::new(),
            };
            let sql = format!(
                "SELECT {select_list}{address} FROM {table} t{hint} WHERE {} AND {} ORDER BY {ts}, t.id{}",
                filters(schema, d, lane, false, route_sql),
                set.sql,
                d.claim_lock()
            );
            let mut q = bind_claim(&sql, key.clone(), lane, max, &None, route_sql);
            if let Some(p) = set.param {
                q = q.bind(p);
            }
            let locked = q
                .fetch_all(&mut *tx)
                .await
                .context("claiming a page of audit rows")?;
            rows.extend(locked);
            if rows.len() >= limit || (plan == Plan::Indexed && last_batch) {
                exhausted = plan == Plan::Indexed && last_batch;
                break;
            }
        }
        // A row another worker or run failed a moment ago can still be claimed here: it was not
        // updated, so the lock's re-check does not see the failure recorded after this
        // statement's snapshot. A fresh statement does; such rows are dropped from the page
        // (they stay locked, unmarked, until this page commits).
        if !rows.is_empty() {
            let ids = rows
                .iter()
                .map(|r| r.try_get::<i64, _>(0))
                .collect::<Result<Vec<_>, _>>()?;
            let taken = match lane {
                Lane::Fresh => "",
                Lane::Retry => " AND attempts >= ",
            };
            let set = IdSet::new(d, "row_id", 2, &ids);
            let sql = format!(
                "SELECT {} FROM {FAILED} WHERE source = {} AND {}{taken}{}",
                d.as_bigint("row_id"),
                d.ph(1),
                set.sql,
                if lane == Lane::Retry {
                    d.ph(3)
                } else {
                    String::new()
                }
            );
            let mut q = sqlx::query_scalar::<_, i64>(&sql).bind(key.clone());
            if let Some(p) = set.param {
                q = q.bind(p);
            }
            if lane == Lane::Retry {
                q = q.bind(max as i64);
            }
            let gone: Vec<i64> = q
                .fetch_all(&mut *tx)
                .await
                .context("re-checking claimed rows")?;
            if !gone.is_empty() {
                rows.retain(|r| {
                    r.try_get::<i64, _>(0)
                        .map(|id| !gone.contains(&id))
                        .unwrap_or(true)
                });
            }
        }
        if rows.is_empty() && exhausted {
            tx.rollback().await.ok();
            return Ok(None);
        }
        let ids = rows
            .iter()
            .map(|r| r.try_get::<i64, _>(0))
            .collect::<Result<Vec<_>, _>>()?;
        let addrs = match by_address {
            true => Some(
                rows.iter()
                    .map(|r| addr.read(r, r.len() - 1))
                    .collect::<Result<Vec<_>>>()?,
            ),
            false => None,
        };
        // Columns: id, timestamp, the schema's, then topic and key, then the address.
        let route_at = 2 + schema.columns(d).len();
        let routes = routes_of(&rows, route_at, route_sql.columns.is_some())?;
        let records = schema.records(&mut tx, d, rows).await?;
        // With several targets: which of them already hold these rows (from an earlier run
        // that some target failed). One read per page, of a table that is empty when all went
        // well; without TARGETS nothing is read.
        let held = match fanout {
            true => {
                let rows: Vec<(i64, &str)> = ids
                    .iter()
                    .zip(&records)
                    .filter_map(|(id, r)| Some((*id, r.doc.as_ref().ok()?.id.as_str())))
                    .collect();
                let mut found = super::targets::held(&mut tx, d, &key, &rows).await?;
                ids.iter()
                    .map(|id| found.remove(id).unwrap_or_default())
                    .collect()
            }
            false => Vec::new(),
        };
        for (record, route) in records.iter().zip(routes) {
            if let Ok(doc) = &record.doc {
                let _ = doc.route.set(route);
            }
        }
        debug_assert_eq!(ids.len(), records.len());
        // Rows addressed by a physical address are marked by it too (no index on id).
        let by_address = addrs.map(|a| (addr, a));
        Ok(Some(Box::new(SqlPage {
            tx,
            d,
            schema,
            lane,
            ids,
            by_address,
            records,
            held,
            exhausted,
            head,
        })))
    }

    pub async fn parked(&mut self) -> Result<Vec<Parked>> {
        let d = self.db.dialect;
        // Only this selection's rows (ACCEPT_*), as the backlog counts them.
        let route_sql = self.routes().await?.clone();
        let table = d.table(self.schema.table());
        let mut n = 2;
        let accept = route_sql.predicate(&mut || {
            n += 1;
            d.ph(n)
        });
        let mine = match accept.is_empty() {
            true => String::new(),
            false => format!(
                " AND EXISTS (SELECT 1 FROM {table} t WHERE t.id = {FAILED}.row_id{accept})"
            ),
        };
        let sql = format!(
            "SELECT {}, {}, {} FROM {FAILED} WHERE source = {} AND attempts >= {}{mine} ORDER BY row_id",
            d.as_bigint("row_id"),
            d.as_bigint("attempts"),
            d.as_bytes("last_error"),
            d.ph(1),
            d.ph(2)
        );
        let q = sqlx::query(&sql)
            .bind(self.schema.source_key())
            .bind(self.max_attempts as i64);
        let rows = route_sql.bind(q).fetch_all(&mut self.db.conn).await?;
        let mut parked = rows
            .iter()
            .map(|r| {
                Ok(Parked {
                    key: r.try_get::<i64, _>(0)?.to_string(),
                    attempts: r.try_get(1)?,
                    last_error: String::from_utf8_lossy(
                        &super::bytes_at(r, 2)?.unwrap_or_default(),
                    )
                    .into_owned(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        // Rows without a timestamp cannot be ordered, so no page claims them: report them here
        // every run rather than skip them in silence.
        let ts = d.quote(self.schema.ts_column());
        let mut n = 0;
        let accept = route_sql.predicate(&mut || {
            n += 1;
            d.ph(n)
        });
        let sql = format!(
            "SELECT {} FROM {table} t WHERE {} AND {ts} IS NULL{accept} ORDER BY id",
            d.as_bigint("t.id"),
            self.schema.unsent(d)
        );
        let mut q = sqlx::query_scalar::<_, i64>(&sql);
        for a in route_sql.lists() {
            for v in a.values() {
                q = q.bind(v.clone());
            }
        }
        let ids: Vec<i64> = q.fetch_all(&mut self.db.conn).await?;
        parked.extend(ids.into_iter().map(|id| Parked {
            key: id.to_string(),
            attempts: 0,
            last_error: format!("{ts} is NULL: the row cannot be ordered, so it is never sent"),
        }));
        Ok(parked)
    }

    /// Forgets every failure of this source: the rows are fresh again for the next run.
    pub async fn retry_failed(&mut self) -> Result<u64> {
        self.db.migrate().await?;
        let sql = format!(
            "DELETE FROM {FAILED} WHERE source = {}",
            self.db.dialect.ph(1)
        );
        let r = sqlx::query(&sql)
            .bind(self.schema.source_key())
            .execute(&mut self.db.conn)
            .await?;
        Ok(r.rows_affected())
    }

    pub async fn purge(&mut self, cutoff: DateTime<Utc>) -> Result<u64> {
        let d = self.db.dialect;
        let table = d.table(self.schema.table());
        let ts = d.quote(self.schema.ts_column());
        let cond = format!(
            "{} AND {ts} <= {}",
            self.schema.sent(d),
            d.timestamp_param(&d.ph(1))
        );
        let sql = match d {
            // MySQL cannot select from the table it deletes from, but has DELETE ... LIMIT.
            Dialect::MySql => format!("DELETE FROM {table} WHERE {cond} LIMIT {PURGE_CHUNK}"),
            _ => format!(
                "DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE {cond} LIMIT {PURGE_CHUNK})"
            ),
        };
        let cutoff = cutoff.format("%Y-%m-%d %H:%M:%S%.6f").to_string();
        let mut total = 0;
        loop {
            let n = sqlx::query(&sql)
                .bind(cutoff.clone())
                .execute(&mut self.db.conn)
                .await
                .context("deleting sent audit rows")?
                .rows_affected();
            total += n;
            if n < PURGE_CHUNK as u64 {
                return Ok(total);
            }
        }
    }
}

impl<S: Schema> Queue<S> {
    /// Key of this source's runs in `audit_transfer_runs`: runs of different ACCEPT_* selections
    /// are different jobs, each with its own last run and last success.
    fn runs_key(&self) -> String {
        let key = self.schema.source_key();
        match self.routing.accept_label() {
            // MySQL's column holds 191 characters; a long selection is named by its hash.
            Some(label) if key.len() + label.len() + 3 > 191 => format!(
                "{key} [selection {:016x}]",
                crate::base::hash::fnv1a(std::iter::once(label.as_bytes()))
            ),
            Some(label) => format!("{key} [{label}]"),
            None => key,
        }
    }

    /// Unsent rows that a run would still take (not parked, orderable) and the oldest of them.
    pub async fn backlog(&mut self) -> Result<Backlog> {
        let d = self.db.dialect;
        let ts = format!("t.{}", d.quote(self.schema.ts_column()));
        // Only what this run accepts: other topics are other runs' backlog.
        let route_sql = self.routes().await?.clone();
        let mut n = 2;
        let accept = route_sql.predicate(&mut || {
            n += 1;
            d.ph(n)
        });
        let sql = format!(
            "SELECT {}, {} FROM {} t WHERE {} AND {ts} IS NOT NULL AND NOT EXISTS \
             (SELECT 1 FROM {FAILED} f WHERE f.source = {} AND f.row_id = t.id AND f.attempts >= {}){accept}",
            d.as_bigint("COUNT(*)"),
            d.as_text(&format!("MIN({ts})")),
            d.table(self.schema.table()),
            self.schema.unsent(d),
            d.ph(1),
            d.ph(2)
        );
        let q = sqlx::query(&sql)
            .bind(self.schema.source_key())
            .bind(self.max_attempts as i64);
        let row = route_sql
            .bind(q)
            .fetch_one(&mut self.db.conn)
            .await
            .context("counting unsent audit rows")?;
        let unsent: i64 = row.try_get(0)?;
        let oldest: Option<String> = row.try_get(1)?;
        Ok(Backlog {
            unsent: unsent.max(0) as u64,
            oldest_unsent: oldest.as_deref().and_then(super::parse_db_timestamp),
        })
    }

    /// Appends the run to `audit_transfer_runs` and forgets this source's runs older than
    /// [`KEEP_RUNS_DAYS`], except its last successful one.
    pub async fn record_run(&mut self, run: &RunRecord) -> Result<()> {
        if !self.prepared {
            return Ok(());
        }
        let d = self.db.dialect;
        let key = self.runs_key();
        let ph: Vec<String> = (1..=11).map(|n| d.ph(n)).collect();
        let sql = format!(
            "INSERT INTO {RUNS} (source, finished_at, exit_code, selected, delivered, already_present, \
             rejected, parked, marked, duration_ms) VALUES ({}, {}, {}, {}, {}, {}, {}, {}, {}, {})",
            ph[0],
            d.timestamp_param(&ph[1]),
            ph[2],
            ph[3],
            ph[4],
            ph[5],
            ph[6],
            ph[7],
            ph[8],
            ph[9]
        );
        sqlx::query(&sql)
            .bind(key.clone())
            .bind(db_time(run.finished_at))
            .bind(run.exit_code as i32)
            .bind(run.selected as i64)
            .bind(run.delivered as i64)
            .bind(run.already_present as i64)
            .bind(run.rejected as i64)
            .bind(run.parked as i64)
            .bind(run.marked as i64)
            .bind(run.duration_ms as i64)
            .execute(&mut self.db.conn)
            .await
            .context("recording the run in audit_transfer_runs")?;
        let finished = db_time(run.finished_at);
        super::targets::record_run(&mut self.db.conn, d, &key, &finished, &run.targets).await?;
        let cutoff = run.finished_at - chrono::Duration::days(KEEP_RUNS_DAYS);
        // MySQL cannot select from the table it deletes from: the subquery is wrapped once more.
        let keep = match d {
            Dialect::MySql => format!(
                "SELECT id FROM (SELECT COALESCE(MAX(id), 0) AS id FROM {RUNS} WHERE source = {} AND exit_code IN (0, 3)) k",
                d.ph(3)
            ),
            _ => format!(
                "SELECT COALESCE(MAX(id), 0) FROM {RUNS} WHERE source = {} AND exit_code IN (0, 3)",
                d.ph(3)
            ),
        };
        let sql = format!(
            "DELETE FROM {RUNS} WHERE source = {} AND finished_at < {} AND id NOT IN ({keep})",
            d.ph(1),
            d.timestamp_param(&d.ph(2))
        );
        sqlx::query(&sql)
            .bind(key.clone())
            .bind(db_time(cutoff))
            .bind(key)
            .execute(&mut self.db.conn)
            .await
            .context("pruning audit_transfer_runs")?;
        if !run.targets.is_empty() {
            let key = self.runs_key();
            super::targets::prune(&mut self.db.conn, d, &key, RUNS).await?;
        }
        Ok(())
    }

    /// The last run of this source, and its last successful one (exit 0 or 3: the pass completed).
    pub async fn last_runs(&mut self) -> Result<LastRuns> {
        let d = self.db.dialect;
        let mut out = LastRuns::default();
        for success in [false, true] {
            let filter = if success {
                " AND exit_code IN (0, 3)"
            } else {
                ""
            };
            let sql = format!(
                "SELECT {}, {}, {}, {}, {}, {}, {}, {}, {} FROM {RUNS} WHERE source = {}{filter} \
                 ORDER BY finished_at DESC, id DESC LIMIT 1",
                d.as_text("finished_at"),
                d.as_bigint("exit_code"),
                d.as_bigint("selected"),
                d.as_bigint("delivered"),
                d.as_bigint("already_present"),
                d.as_bigint("rejected"),
                d.as_bigint("parked"),
                d.as_bigint("marked"),
                d.as_bigint("duration_ms"),
                d.ph(1)
            );
            let row = sqlx::query(&sql)
                .bind(self.runs_key())
                .fetch_optional(&mut self.db.conn)
                .await
                .context("reading audit_transfer_runs")?;
            let Some(row) = row else { continue };
            let n = |i: usize| -> Result<u64> { Ok(row.try_get::<i64, _>(i)?.max(0) as u64) };
            let finished: String = row.try_get(0)?;
            let record = RunRecord {
                finished_at: super::parse_db_timestamp(&finished)
                    .with_context(|| format!("finished_at {finished:?} is not a timestamp"))?,
                exit_code: n(1)? as u8,
                selected: n(2)?,
                delivered: n(3)?,
                already_present: n(4)?,
                rejected: n(5)?,
                parked: n(6)?,
                marked: n(7)?,
                duration_ms: n(8)?,
                targets: Vec::new(),
            };
            let mut record = record;
            let key = self.runs_key();
            let finished = db_time(record.finished_at);
            record.targets = super::targets::of_run(&mut self.db.conn, d, &key, &finished).await?;
            if success {
                out.last_success = Some(record);
            } else {
                out.last = Some(record);
            }
        }
        Ok(out)
    }
}

/// The topic and key selected at `route_at` (and the row's time) of each row; empty when the
/// rows carry no route columns.
fn routes_of(rows: &[AnyRow], route_at: usize, routed: bool) -> Result<Vec<Route>> {
    if !routed {
        return Ok(Vec::new());
    }
    rows.iter()
        .map(|r| {
            // MySQL reports the text of JSON functions as a blob: read bytes.
            let text = |i| -> Result<Option<String>> {
                Ok(super::bytes_at(r, i)?.map(|b| String::from_utf8_lossy(&b).into_owned()))
            };
            Ok(Route {
                topic: text(route_at)?,
                key: text(route_at + 1)?,
                time: super::parse_db_timestamp(&r.try_get::<String, _>(1)?),
            })
        })
        .collect()
}

/// A timestamp as every dialect's [`Dialect::timestamp_param`] reads it back (UTC, microseconds).
fn db_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.6f").to_string()
}

struct SqlPage<'a, S: Schema> {
    tx: Transaction<'a, Any>,
    d: Dialect,
    schema: &'a S,
    lane: Lane,
    ids: Vec<i64>,
    /// [`Addr::Ctid`]/[`Addr::Rowid`]: the addresses the page was claimed by.
    by_address: Option<(Addr, Vec<i64>)>,
    records: Vec<Record>,
    /// With TARGETS: the targets that held each record when it was claimed. Empty without.
    held: Vec<Vec<String>>,
    exhausted: bool,
    /// INTEGRITY_CHAIN: the head, locked by this transaction.
    head: Option<Head>,
}

/// The WHERE clause of a claim: unsent, orderable, in `lane`, after the cursor. Binds, in
/// order: source key, max attempts (retry lane), cursor timestamp twice and id.
fn filters<S: Schema>(
    schema: &S,
    d: Dialect,
    lane: Lane,
    after_cursor: bool,
    route: &RouteSql,
) -> String {
    let ts = format!("t.{}", d.quote(schema.ts_column()));
    let mut n = 0;
    let mut ph = || {
        n += 1;
        d.ph(n)
    };
    let lane_filter = match lane {
        Lane::Fresh => format!("NOT EXISTS (SELECT 1 FROM {FAILED} f WHERE f.source = {} AND f.row_id = t.id)", ph()),
        Lane::Retry => format!(
            "EXISTS (SELECT 1 FROM {FAILED} f WHERE f.source = {} AND f.row_id = t.id AND f.attempts < {})",
            ph(),
            ph()
        ),
    };
    // `ts >= c` first: a bound the index can start its scan at. Written as one OR, the
    // databases scan the queue index from its beginning on every page (quadratic in the backlog).
    let keyset = if after_cursor {
        format!(
            " AND {ts} >= {} AND ({ts} > {} OR t.id > {})",
            d.timestamp_param(&ph()),
            d.timestamp_param(&ph()),
            ph()
        )
    } else {
        String::new()
    };
    let accept = route.predicate(&mut ph);
    format!(
        "{} AND {ts} IS NOT NULL AND {lane_filter}{keyset}{accept}",
        schema.unsent(d)
    )
}

/// Binds the parameters of [`filters`] in their order.
fn bind_claim<'q>(
    sql: &'q str,
    key: String,
    lane: Lane,
    max_attempts: u32,
    cursor: &Option<(String, i64)>,
    route: &RouteSql,
) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>> {
    let mut q = sqlx::query(sql).bind(key);
    if lane == Lane::Retry {
        q = q.bind(max_attempts as i64);
    }
    if let Some((cts, cid)) = cursor {
        q = q.bind(cts.clone()).bind(cts.clone()).bind(*cid);
    }
    route.bind(q)
}

/// How many parameters [`bind_claim`] binds.
fn claim_binds(lane: Lane, after_cursor: bool, route: &RouteSql) -> usize {
    1 + usize::from(lane == Lane::Retry)
        + 3 * usize::from(after_cursor)
        + route.lists().map(|a| a.values().len()).sum::<usize>()
}

#[async_trait]
impl<S: Schema> Page for SqlPage<'_, S> {
    fn records(&self) -> &[Record] {
        &self.records
    }

    fn exhausted(&self) -> bool {
        self.exhausted
    }

    fn held_by(&self, i: usize) -> &[String] {
        self.held.get(i).map(Vec::as_slice).unwrap_or_default()
    }

    fn chain_head(&self) -> Option<&Head> {
        self.head.as_ref()
    }

    async fn commit(self: Box<Self>, result: PageResult) -> Result<u64> {
        let SqlPage {
            mut tx,
            d,
            schema,
            lane,
            ids,
            by_address,
            held,
            records,
            ..
        } = *self;
        let key = schema.source_key();
        let mut marked = 0;
        if !result.delivered.is_empty() {
            let delivered: Vec<i64> = result.delivered.iter().map(|&i| ids[i]).collect();
            let table = d.table(schema.table());
            if let Some((addr, addrs)) = &by_address {
                // Without an index on id, `id IN (...)` would scan the table for every page.
                // The claimed rows are locked, so their addresses stand still until we commit.
                let at: Vec<i64> = result.delivered.iter().map(|&i| addrs[i]).collect();
                let set = addr.set(d, "", 1, &at);
                let sql = match (d, set.param) {
                    // Address and id in pairs: a ctid names a tuple version, and only the pair
                    // proves it is still the row that was shipped.
                    (Dialect::Postgres, Some(p)) => {
                        let sql = format!(
                            "UPDATE {table} t SET {} FROM unnest(CAST($1 AS tid[]), CAST($2 AS bigint[])) \
                             AS k(at_addr, at_id) WHERE t.ctid = k.at_addr AND t.id = k.at_id",
                            schema.mark_set(d)
                        );
                        (
                            sql,
                            vec![p, format!("{{{}}}", id_list(delivered.iter().copied()))],
                        )
                    }
                    // SQLite: the write lock is held from claim to commit, so no rowid moves.
                    _ => (
                        format!(
                            "UPDATE {table} SET {} WHERE {}",
                            schema.mark_set(d),
                            set.sql
                        ),
                        Vec::new(),
                    ),
                };
                let mut q = sqlx::query(&sql.0);
                for p in sql.1 {
                    q = q.bind(p);
                }
                marked = q
                    .execute(&mut *tx)
                    .await
                    .context("marking rows sent")?
                    .rows_affected();
            }
            // By id: the rule, and the fallback when a row was claimed in a newer version (an
            // update committed between the ordered read and the lock) at another address.
            if by_address.is_none() || marked < delivered.len() as u64 {
                let set = IdSet::new(d, "id", 1, &delivered);
                let sql = format!(
                    "UPDATE {table} SET {} WHERE {}",
                    schema.mark_set(d),
                    set.sql
                );
                let mut q = sqlx::query(&sql);
                if let Some(p) = &set.param {
                    q = q.bind(p.clone());
                }
                marked = q
                    .execute(&mut *tx)
                    .await
                    .context("marking rows sent")?
                    .rows_affected();
            }
            if lane == Lane::Retry {
                let set = IdSet::new(d, "row_id", 2, &delivered);
                let sql = format!(
                    "DELETE FROM {FAILED} WHERE source = {} AND {}",
                    d.ph(1),
                    set.sql
                );
                let mut q = sqlx::query(&sql).bind(key.clone());
                if let Some(p) = set.param {
                    q = q.bind(p);
                }
                q.execute(&mut *tx).await?;
            }
        }
        // Rows every target now holds need no record of who holds them.
        let complete: Vec<i64> = result
            .delivered
            .iter()
            .filter(|&&i| held.get(i).is_some_and(|h| !h.is_empty()))
            .map(|&i| ids[i])
            .collect();
        super::targets::forget(&mut tx, d, &key, &complete).await?;
        let progress: Vec<(i64, &str, Vec<String>)> = result
            .progress
            .into_iter()
            .filter_map(|(i, targets)| {
                Some((ids[i], records[i].doc.as_ref().ok()?.id.as_str(), targets))
            })
            .collect();
        super::targets::add(&mut tx, d, &key, &progress).await?;
        for chunk in result.failed.chunks(200) {
            let row_ids: Vec<i64> = chunk.iter().map(|(i, _)| ids[*i]).collect();
            let sql = record_failures_sql(d, &row_ids);
            let mut q = sqlx::query(&sql);
            for (_, reason) in chunk {
                q = q.bind(key.clone()).bind(truncate(reason, MAX_REASON));
            }
            q.execute(&mut *tx).await.context("recording failed rows")?;
        }
        if let Some(to) = &result.chain {
            super::chain::advance(&mut tx, d, &key, to).await?;
        }
        crate::base::failpoint::hit("before_commit");
        tx.commit().await.context("committing the page")?;
        Ok(marked)
    }
}

/// Records a failure of each of `row_ids`: a new row starts at one attempt, a known one counts
/// one more. Binds per row, in order: source key, reason.
fn record_failures_sql(d: Dialect, row_ids: &[i64]) -> String {
    let values: Vec<String> = row_ids
        .iter()
        .enumerate()
        .map(|(k, id)| format!("({}, {id}, 1, {})", d.ph(2 * k + 1), d.ph(2 * k + 2)))
        .collect();
    let upsert = match d {
        Dialect::MySql => "ON DUPLICATE KEY UPDATE attempts = attempts + 1, \
             last_error = VALUES(last_error), last_failed_at = CURRENT_TIMESTAMP(6)"
            .to_string(),
        _ => format!(
            "ON CONFLICT (source, row_id) DO UPDATE SET attempts = {FAILED}.attempts + 1, \
             last_error = excluded.last_error, last_failed_at = CURRENT_TIMESTAMP"
        ),
    };
    format!(
        "INSERT INTO {FAILED} (source, row_id, attempts, last_error) VALUES {} {upsert}",
        values.join(", ")
    )
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Every SQL source is this queue over its own table layout.
#[async_trait]
impl<S: Schema> Source for Queue<S> {
    fn name(&self) -> String {
        self.schema().source_key()
    }
    fn parallel_safe(&self) -> bool {
        Queue::parallel_safe(self)
    }
    async fn check(&mut self) -> Result<()> {
        Queue::check(self).await
    }
    async fn prepare(&mut self) -> Result<()> {
        Queue::prepare(self).await
    }
    async fn sent_page(
        &mut self,
        window: &crate::base::source::Window,
        limit: usize,
    ) -> Result<Option<Vec<Record>>> {
        Queue::sent_page(self, window, limit).await
    }
    async fn init_queue(&mut self) -> Result<()> {
        Queue::init_queue(self).await
    }
    async fn claim<'a>(
        &'a mut self,
        lane: Lane,
        limit: usize,
    ) -> Result<Option<Box<dyn Page + 'a>>> {
        Queue::claim(self, lane, limit).await
    }
    async fn parked(&mut self) -> Result<Vec<Parked>> {
        Queue::parked(self).await
    }
    async fn retry_failed(&mut self) -> Result<u64> {
        Queue::retry_failed(self).await
    }
    async fn purge(&mut self, cutoff: DateTime<Utc>) -> Result<u64> {
        Queue::purge(self, cutoff).await
    }
    async fn backlog(&mut self) -> Result<Option<Backlog>> {
        Queue::backlog(self).await.map(Some)
    }
    async fn record_run(&mut self, run: &RunRecord) -> Result<()> {
        Queue::record_run(self, run).await
    }
    async fn keep_chain(&mut self) -> Result<String> {
        Queue::keep_chain(self).await
    }
    async fn settle(&mut self) {
        // Any statement first sends the rollback sqlx queued when the page was dropped.
        let _ = sqlx::query("SELECT 1").execute(&mut self.db.conn).await;
    }
    async fn chain_state(&mut self) -> Result<ChainState> {
        Queue::chain_state(self).await
    }
    async fn save_checkpoint(&mut self, cp: &Checkpoint) -> Result<()> {
        Queue::save_checkpoint(self, cp).await
    }
    async fn last_runs(&mut self) -> Result<Option<LastRuns>> {
        Queue::last_runs(self).await.map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table laid out as the single-column source's, for the SQL text alone.
    struct Audit(TableName);

    #[async_trait]
    impl Schema for Audit {
        fn source_key(&self) -> String {
            "test:audit_logs".into()
        }
        fn table(&self) -> &TableName {
            &self.0
        }
        fn ts_column(&self) -> &'static str {
            "created_at"
        }
        fn unsent(&self, _d: Dialect) -> String {
            "is_sent = false".into()
        }
        fn sent(&self, _d: Dialect) -> String {
            "is_sent = true".into()
        }
        fn mark_set(&self, _d: Dialect) -> String {
            "is_sent = true".into()
        }
        fn columns(&self, d: Dialect) -> Vec<String> {
            vec![d.as_bytes("t.message")]
        }
        fn describe(&self) -> String {
            "audit_logs".into()
        }
        fn route_column(&self) -> &'static str {
            "message"
        }
        async fn records(
            &self,
            _conn: &mut AnyConnection,
            _d: Dialect,
            _rows: Vec<AnyRow>,
        ) -> Result<Vec<Record>> {
            unreachable!("no rows without a database")
        }
    }

    const DIALECTS: [Dialect; 3] = [Dialect::Postgres, Dialect::MySql, Dialect::Sqlite];

    fn audit() -> Audit {
        Audit(TableName {
            schema: None,
            name: "audit_logs".into(),
        })
    }

    /// ACCEPT_TOPICS=a,b,_none and ACCEPT_ROUTING_KEYS=k: three bound values.
    fn accepting(d: Dialect) -> RouteSql {
        RouteSql {
            columns: None,
            accept: vec![
                (
                    "topic_expr".into(),
                    Accept::parse("ACCEPT_TOPICS", "a,b,_none").unwrap(),
                ),
                (
                    "key_expr".into(),
                    Accept::parse("ACCEPT_ROUTING_KEYS", "k").unwrap(),
                ),
            ],
            binary: d == Dialect::MySql,
            ..RouteSql::default()
        }
    }

    /// TARGETS, each restricted: rows some target accepts.
    fn targets_accepting(d: Dialect) -> RouteSql {
        let list = |v: &str| Accept::parse("TARGET_X_ACCEPT_TOPICS", v).unwrap();
        RouteSql {
            any_target: vec![
                vec![("topic_expr".into(), list("authfail"))],
                vec![
                    ("topic_expr".into(), list("a,b")),
                    ("key_expr".into(), list("k,_none")),
                ],
            ],
            ..accepting(d)
        }
    }

    #[test]
    fn targets_take_what_some_target_accepts() {
        let mut n = 0;
        let sql = targets_accepting(Dialect::Postgres).predicate(&mut || {
            n += 1;
            format!("${n}")
        });
        assert_eq!(
            sql,
            " AND (topic_expr IN ($1, $2) OR topic_expr IS NULL) AND (key_expr IN ($3)) \
             AND (((topic_expr IN ($4))) OR ((topic_expr IN ($5, $6)) AND (key_expr IN ($7) OR key_expr IS NULL)))"
        );
    }

    /// The placeholders of `sql` in order of appearance, as the numbers PostgreSQL's carry, or
    /// as 1, 2, … for `?`.
    fn placeholders(d: Dialect, sql: &str) -> Vec<usize> {
        match d {
            Dialect::Postgres => sql
                .split('$')
                .skip(1)
                .map(|rest| {
                    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                    digits.parse().unwrap()
                })
                .collect(),
            _ => (1..=sql.matches('?').count()).collect(),
        }
    }

    #[test]
    fn claim_filter_placeholders_follow_the_bind_order_in_every_dialect() {
        for d in DIALECTS {
            for lane in [Lane::Fresh, Lane::Retry] {
                for after_cursor in [false, true] {
                    for route in [RouteSql::default(), accepting(d), targets_accepting(d)] {
                        let sql = filters(&audit(), d, lane, after_cursor, &route);
                        // What `bind_claim` binds: source key, max attempts (retry lane), cursor
                        // timestamp twice and id, then the ACCEPT_* values.
                        let binds = 1
                            + usize::from(lane == Lane::Retry)
                            + 3 * usize::from(after_cursor)
                            + route.lists().map(|a| a.values().len()).sum::<usize>();
                        assert_eq!(
                            placeholders(d, &sql),
                            (1..=binds).collect::<Vec<_>>(),
                            "{d:?} {lane:?} cursor={after_cursor}: {sql}"
                        );
                        assert!(sql.starts_with("is_sent = false AND "), "{sql}");
                    }
                }
            }
        }
    }

    #[test]
    fn claim_filter_text_per_lane() {
        let route = accepting(Dialect::Postgres);
        assert_eq!(
            filters(&audit(), Dialect::Postgres, Lane::Retry, true, &route),
            "is_sent = false AND t.\"created_at\" IS NOT NULL AND EXISTS (SELECT 1 FROM \
             audit_transfer_failed_rows f WHERE f.source = $1 AND f.row_id = t.id AND f.attempts < $2) \
             AND t.\"created_at\" >= CAST($3 AS timestamptz) AND (t.\"created_at\" > CAST($4 AS timestamptz) \
             OR t.id > $5) AND (topic_expr IN ($6, $7) OR topic_expr IS NULL) AND (key_expr IN ($8))"
        );
        let fresh = filters(
            &audit(),
            Dialect::MySql,
            Lane::Fresh,
            false,
            &accepting(Dialect::MySql),
        );
        assert!(
            fresh.contains("NOT EXISTS (SELECT 1 FROM audit_transfer_failed_rows f WHERE f.source = ? AND f.row_id = t.id)"),
            "{fresh}"
        );
        // Exact comparison on MySQL: its collations fold case and trailing spaces.
        assert!(
            fresh.contains("topic_expr IN (CAST(? AS BINARY), CAST(? AS BINARY))"),
            "{fresh}"
        );
        assert!(
            !fresh.contains("created_at\" >="),
            "no keyset before the first page"
        );
    }

    #[test]
    fn id_sets_are_one_array_parameter_on_postgres_and_inlined_elsewhere() {
        let pg = IdSet::new(Dialect::Postgres, "row_id", 2, &[3, 1, 2]);
        assert_eq!(pg.sql, "row_id = ANY(CAST($2 AS bigint[]))");
        assert_eq!(pg.param.as_deref(), Some("{3,1,2}"));
        for d in [Dialect::MySql, Dialect::Sqlite] {
            let set = IdSet::new(d, "id", 1, &[3, 1, 2]);
            assert_eq!(set.sql, "id IN (3,1,2)");
            assert_eq!(set.param, None);
        }
    }

    #[test]
    fn failures_are_upserted_with_two_binds_per_row() {
        for d in DIALECTS {
            let sql = record_failures_sql(d, &[11, 12, 13]);
            assert!(
                sql.starts_with(
                    "INSERT INTO audit_transfer_failed_rows (source, row_id, attempts, last_error) VALUES ("
                ),
                "{sql}"
            );
            assert_eq!(placeholders(d, &sql), (1..=6).collect::<Vec<_>>(), "{sql}");
            // Row ids are inlined; a failed row starts at one attempt.
            assert!(sql.contains(", 12, 1, "), "{sql}");
            let upsert = match d {
                Dialect::MySql => "ON DUPLICATE KEY UPDATE attempts = attempts + 1,",
                _ => "ON CONFLICT (source, row_id) DO UPDATE SET attempts = audit_transfer_failed_rows.attempts + 1,",
            };
            assert!(sql.contains(upsert), "{d:?}: {sql}");
        }
        assert_eq!(
            record_failures_sql(Dialect::Postgres, &[5]).split(" ON ").next(),
            Some("INSERT INTO audit_transfer_failed_rows (source, row_id, attempts, last_error) VALUES ($1, 5, 1, $2)")
        );
    }

    #[test]
    fn the_plan_follows_the_indexes_the_table_has() {
        let idx = |lists: &[&[&str]]| -> Vec<Vec<String>> {
            lists
                .iter()
                .map(|l| l.iter().map(|c| c.to_string()).collect())
                .collect()
        };
        let plan =
            |d, lists: &[&[&str]]| choose_plan(d, &idx(lists), "created_at", Some("is_sent"));
        for d in DIALECTS {
            assert_eq!(plan(d, &[&["id"], &["created_at", "id"]]), Plan::Indexed);
            assert_eq!(plan(d, &[&["is_sent", "created_at", "id"]]), Plan::Indexed);
            assert_eq!(plan(d, &[&["created_at"]]), Plan::Indexed);
            // An index that merely contains the timestamp does not order the queue.
            assert_ne!(plan(d, &[&["is_sent", "id", "created_at"]]), Plan::Indexed);
        }
        assert_eq!(plan(Dialect::Postgres, &[&["id"]]), Plan::Keys(Addr::Id));
        assert_eq!(plan(Dialect::Postgres, &[]), Plan::Keys(Addr::Ctid));
        assert_eq!(
            plan(Dialect::Postgres, &[&["message", "id"]]),
            Plan::Keys(Addr::Ctid)
        );
        assert_eq!(plan(Dialect::MySql, &[&["id"]]), Plan::Keys(Addr::Id));
        assert_eq!(plan(Dialect::MySql, &[]), Plan::Keys(Addr::Unindexed));
        assert_eq!(plan(Dialect::Sqlite, &[]), Plan::Keys(Addr::Rowid));
        assert_eq!(plan(Dialect::Sqlite, &[&["id"]]), Plan::Keys(Addr::Rowid));
    }

    #[test]
    fn ctids_round_trip_through_the_packed_form() {
        let a = parse_ctid("(4294967295,65535)").unwrap();
        let b = parse_ctid(" (26923,2) ").unwrap();
        let set = Addr::Ctid.set(Dialect::Postgres, "t.", 3, &[a, b]);
        assert_eq!(set.sql, "t.ctid = ANY(CAST($3 AS tid[]))");
        assert_eq!(
            set.param.as_deref(),
            Some(r#"{"(4294967295,65535)","(26923,2)"}"#)
        );
        for bad in ["", "(1)", "(1,2", "(-1,2)", "(1,70000)", "(a,b)"] {
            assert_eq!(parse_ctid(bad), None, "{bad}");
        }
        let rowid = Addr::Rowid.set(Dialect::Sqlite, "", 1, &[7, 9]);
        assert_eq!((rowid.sql.as_str(), rowid.param), ("rowid IN (7,9)", None));
    }

    #[test]
    fn long_reasons_are_cut_on_a_character_boundary() {
        assert_eq!(truncate("short", 10), "short");
        // "é" is two bytes: a cut at 3 would split the second one.
        assert_eq!(truncate("ééé", 3), "é…");
        assert_eq!(
            truncate(&"x".repeat(MAX_REASON + 5), MAX_REASON)
                .chars()
                .count(),
            MAX_REASON + 1
        );
    }
}
