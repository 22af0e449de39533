//! `verify`'s side of the queue: the rows already marked sent, in pages, built into the
//! documents they produce today. Pages follow the cheapest address the table has: the key on
//! `id` or SQLite's `rowid` (a range read in key order), else on PostgreSQL ranges of blocks
//! (`ctid`, unordered: a TID range gives no order, and sorting the rest of the table for every
//! page would make the read quadratic). So reading a million rows costs one pass over them,
//! whatever the table's shape; only a MySQL table without any key scans per page.

use super::{addr_of, choose_plan, db_time, routes_of, Addr, Queue, Schema};
use crate::base::document::Record;
use crate::base::source::Window;
use anyhow::{Context, Result};

/// Blocks per page of a table read by `ctid` ranges: about `limit` rows of 600 bytes.
fn blocks_per_page(limit: usize) -> i64 {
    (limit / 12).max(1) as i64
}

impl<S: Schema> Queue<S> {
    /// The WHERE clause for sent rows in `window` that this selection takes, and its binds
    /// before the accept lists' (numbered from 1 by `ph`).
    fn sent_filter(
        &self,
        window: &Window,
        ph: &mut dyn FnMut() -> String,
    ) -> (String, Vec<String>) {
        let d = self.db.dialect;
        let ts = format!("t.{}", d.quote(self.schema.ts_column()));
        let mut filter = format!("{} AND {ts} IS NOT NULL", self.schema.sent(d));
        let mut binds = Vec::new();
        for (bound, op) in [(window.since, ">="), (window.until, "<")] {
            if let Some(t) = bound {
                filter.push_str(&format!(" AND {ts} {op} {}", d.timestamp_param(&ph())));
                binds.push(db_time(t));
            }
        }
        let route_sql = self.route_sql.as_ref().expect("built before");
        filter.push_str(&route_sql.predicate(ph));
        (filter, binds)
    }

    /// The documents of `rows` (claim columns), with their routes.
    async fn sent_records(&mut self, rows: Vec<sqlx::any::AnyRow>) -> Result<Vec<Record>> {
        let d = self.db.dialect;
        let route_at = 2 + self.schema.columns(d).len();
        let routed = self.route_sql.as_ref().is_some_and(|r| r.columns.is_some());
        let routes = routes_of(&rows, route_at, routed)?;
        let records = self.schema.records(&mut self.db.conn, d, rows).await?;
        for (record, route) in records.iter().zip(routes) {
            if let Ok(doc) = &record.doc {
                let _ = doc.route.set(route);
            }
        }
        Ok(records)
    }

    /// PostgreSQL without a key: the next range of blocks that holds sent rows.
    async fn sent_blocks(
        &mut self,
        window: &Window,
        limit: usize,
        blocks: i64,
    ) -> Result<Option<Vec<Record>>> {
        let d = self.db.dialect;
        let step = blocks_per_page(limit);
        loop {
            let from = self.sent_after.unwrap_or(0);
            if from >= blocks {
                return Ok(None);
            }
            self.sent_after = Some(from + step);
            let mut n = 2;
            let (filter, binds) = self.sent_filter(window, &mut || {
                n += 1;
                d.ph(n)
            });
            let sql = format!(
                "SELECT {} FROM {} t WHERE t.ctid >= CAST($1 AS tid) AND t.ctid < CAST($2 AS tid) AND {filter}",
                self.select_list(d),
                d.table(self.schema.table()),
            );
            let mut q = sqlx::query(&sql)
                .bind(format!("({from},0)"))
                .bind(format!("({},0)", from + step));
            for b in binds {
                q = q.bind(b);
            }
            let route_sql = self.route_sql.clone().expect("built before");
            let rows = route_sql
                .bind(q)
                .fetch_all(&mut self.db.conn)
                .await
                .context("reading a range of sent audit rows")?;
            if !rows.is_empty() {
                return self.sent_records(rows).await.map(Some);
            }
        }
    }

    pub async fn sent_page(
        &mut self,
        window: &Window,
        limit: usize,
    ) -> Result<Option<Vec<Record>>> {
        self.routes().await?;
        let d = self.db.dialect;
        let (addr, blocks) = match self.sent_plan {
            Some(p) => p,
            None => {
                // The address alone: a queue index orders by time, which pages here do not need.
                let indexes: Vec<Vec<String>> =
                    self.indexes().await?.into_iter().map(|(_, c)| c).collect();
                let addr = addr_of(choose_plan(d, &indexes, "\u{0}", None));
                let blocks = match addr {
                    // The table's size when the check starts; rows written later are not its
                    // business.
                    Addr::Ctid => sqlx::query_scalar::<_, i64>(
                        "SELECT CAST(pg_relation_size(CAST($1 AS regclass)) / \
                         CAST(current_setting('block_size') AS bigint) AS bigint)",
                    )
                    .bind(d.table(self.schema.table()))
                    .fetch_one(&mut self.db.conn)
                    .await
                    .context("reading the size of the audit table")?,
                    _ => 0,
                };
                self.sent_plan = Some((addr, blocks));
                (addr, blocks)
            }
        };
        if addr == Addr::Ctid {
            return self.sent_blocks(window, limit, blocks).await;
        }
        let column = match addr {
            Addr::Rowid => "t.rowid",
            _ => "t.id",
        };
        let table = d.table(self.schema.table());
        loop {
            // The next addresses in key order, by the key alone: with the other conditions in
            // the same statement the planner, misled by statistics from before the rows were
            // marked, sorted the whole rest of the table for every page.
            let after = match self.sent_after {
                Some(_) => format!(" WHERE {column} > {}", d.ph(1)),
                None => String::new(),
            };
            let sql = format!(
                "SELECT {} FROM {table} t{after} ORDER BY {column} LIMIT {limit}",
                addr.select(d)
            );
            let mut q = sqlx::query(&sql);
            if let Some(a) = self.sent_after {
                q = q.bind(a);
            }
            let candidates = q
                .fetch_all(&mut self.db.conn)
                .await
                .context("reading the next keys of the audit table")?
                .iter()
                .map(|r| addr.read(r, 0))
                .collect::<Result<Vec<i64>>>()?;
            let Some(&last) = candidates.last() else {
                return Ok(None);
            };
            self.sent_after = Some(last);
            // Then those of them that are sent, in the window and accepted.
            let mut n = 0;
            let (filter, binds) = self.sent_filter(window, &mut || {
                n += 1;
                d.ph(n)
            });
            let set = addr.set(d, "t.", n + 1, &candidates);
            let sql = format!(
                "SELECT {} FROM {table} t WHERE {} AND {filter} ORDER BY {column}",
                self.select_list(d),
                set.sql,
            );
            let mut q = sqlx::query(&sql);
            for b in binds {
                q = q.bind(b);
            }
            let route_sql = self.route_sql.clone().expect("built above");
            q = route_sql.bind(q);
            if let Some(p) = set.param {
                q = q.bind(p);
            }
            let rows = q
                .fetch_all(&mut self.db.conn)
                .await
                .context("reading a page of sent audit rows")?;
            if !rows.is_empty() {
                return self.sent_records(rows).await.map(Some);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::queue::Plan;
    use crate::db::Dialect;

    #[test]
    fn pages_follow_the_cheapest_address() {
        let id = vec![vec!["id".to_string()]];
        let queue = vec![vec!["created_at".to_string(), "id".to_string()]];
        for (d, indexes, want) in [
            (Dialect::Postgres, &id, Addr::Id),
            (Dialect::Postgres, &queue, Addr::Ctid),
            (Dialect::MySql, &queue, Addr::Unindexed),
            (Dialect::Sqlite, &id, Addr::Rowid),
        ] {
            let got = match choose_plan(d, indexes, "\u{0}", None) {
                Plan::Keys(a) => a,
                Plan::Indexed => panic!("no time column here"),
            };
            assert_eq!(got, want, "{d:?}");
        }
    }
}
