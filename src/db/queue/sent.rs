//! `verify`'s side of the queue: the rows already marked sent, in pages, built into the
//! documents they produce today. Pages follow the cheapest address the table has (the key on
//! `id`, else PostgreSQL's `ctid` or SQLite's `rowid`), so reading a million rows costs one pass
//! over them, whatever the table's shape; only a MySQL table without any key scans per page.

use super::{choose_plan, db_time, routes_of, Addr, Plan, Queue, Schema};
use crate::base::document::Record;
use crate::base::source::Window;
use anyhow::{Context, Result};
use sqlx::Row;

impl<S: Schema> Queue<S> {
    pub async fn sent_page(
        &mut self,
        window: &Window,
        limit: usize,
    ) -> Result<Option<Vec<Record>>> {
        self.routes().await?;
        let d = self.db.dialect;
        // The address alone: a queue index orders by time, which pages here do not need.
        let indexes = self.indexes().await?;
        let addr = match choose_plan(d, &indexes, "\u{0}", None) {
            Plan::Keys(a) => a,
            Plan::Indexed => Addr::Id,
        };
        let column = match addr {
            Addr::Ctid => "t.ctid",
            Addr::Rowid => "t.rowid",
            Addr::Id | Addr::Unindexed => "t.id",
        };
        let ts = format!("t.{}", d.quote(self.schema.ts_column()));
        let mut n = 0;
        let mut ph = || {
            n += 1;
            d.ph(n)
        };
        let mut filter = format!("{} AND {ts} IS NOT NULL", self.schema.sent(d));
        let mut binds: Vec<String> = Vec::new();
        for (bound, op) in [(window.since, ">="), (window.until, "<")] {
            if let Some(t) = bound {
                filter.push_str(&format!(" AND {ts} {op} {}", d.timestamp_param(&ph())));
                binds.push(db_time(t));
            }
        }
        let route_sql = self.route_sql.clone().expect("built above");
        let accept = route_sql.predicate(&mut ph);
        filter.push_str(&accept);
        let after = match self.sent_after {
            Some(_) => match addr {
                Addr::Ctid => format!(" AND {column} > CAST({} AS tid)", ph()),
                _ => format!(" AND {column} > {}", ph()),
            },
            None => String::new(),
        };
        let sql = format!(
            "SELECT {}, {} FROM {} t WHERE {filter}{after} ORDER BY {column} LIMIT {limit}",
            self.select_list(d),
            addr.select(d),
            d.table(self.schema.table()),
        );
        let mut q = sqlx::query(&sql);
        for b in binds {
            q = q.bind(b);
        }
        q = route_sql.bind(q);
        if let Some(a) = self.sent_after {
            q = match addr {
                Addr::Ctid => q.bind(format!("({},{})", a >> 16, a & 0xffff)),
                _ => q.bind(a),
            };
        }
        let rows = q
            .fetch_all(&mut self.db.conn)
            .await
            .context("reading a page of sent audit rows")?;
        let Some(last) = rows.last() else {
            return Ok(None);
        };
        self.sent_after = Some(addr.read(last, last.len() - 1)?);
        let route_at = 2 + self.schema.columns(d).len();
        let routes = routes_of(&rows, route_at, route_sql.columns.is_some())?;
        let records = self.schema.records(&mut self.db.conn, d, rows).await?;
        for (record, route) in records.iter().zip(routes) {
            if let Ok(doc) = &record.doc {
                let _ = doc.route.set(route);
            }
        }
        Ok(Some(records))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
