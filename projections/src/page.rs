//! Paging for the query functions, and a small builder for their filtered SELECTs.

use serde::{Deserialize, Serialize};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row};

use crate::error::{db_error, ProjectionError};

/// Most items one page may hold.
pub const PAGE_MAX_ITEMS: u32 = 500;
/// Deepest offset a page may start at: offset paging reads and skips every row
/// before the page, so deep pages must narrow the filter instead.
pub const PAGE_MAX_OFFSET: u64 = 100_000;

/// Which slice of a sorted result to return.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRequest {
    #[serde(default)]
    pub offset: u64,
    #[serde(default = "default_limit")]
    pub limit: u32,
}

fn default_limit() -> u32 {
    50
}

impl Default for PageRequest {
    fn default() -> Self {
        PageRequest {
            offset: 0,
            limit: default_limit(),
        }
    }
}

impl PageRequest {
    pub fn new(offset: u64, limit: u32) -> Self {
        PageRequest { offset, limit }
    }

    fn check(&self) -> Result<(), ProjectionError> {
        if self.limit == 0 || self.limit > PAGE_MAX_ITEMS {
            return Err(ProjectionError::InvalidQuery {
                field: "limit",
                reason: format!("must be 1..={PAGE_MAX_ITEMS}, got {}", self.limit),
            });
        }
        if self.offset > PAGE_MAX_OFFSET {
            return Err(ProjectionError::InvalidQuery {
                field: "offset",
                reason: format!("must be at most {PAGE_MAX_OFFSET}, got {}", self.offset),
            });
        }
        Ok(())
    }
}

/// One page of a sorted result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub offset: u64,
    pub limit: u32,
    /// Whether a next page has at least one item.
    pub has_more: bool,
}

type Param = Box<dyn ToSql + Sync + Send>;

/// A SELECT with optional filters, each bound as a parameter (never spliced in).
pub(crate) struct Select {
    sql: String,
    params: Vec<Param>,
    has_where: bool,
}

impl Select {
    /// `base` is a `SELECT ... FROM ...` without WHERE.
    pub(crate) fn new(base: impl Into<String>) -> Self {
        Select {
            sql: base.into(),
            params: Vec::new(),
            has_where: false,
        }
    }

    fn keyword(&mut self) {
        self.sql
            .push_str(if self.has_where { " AND " } else { " WHERE " });
        self.has_where = true;
    }

    /// Adds `clause`, in which `$?` stands for `value`.
    pub(crate) fn and<T: ToSql + Sync + Send + 'static>(&mut self, clause: &str, value: T) {
        self.params.push(Box::new(value));
        let placeholder = format!("${}", self.params.len());
        self.keyword();
        self.sql.push_str(&clause.replace("$?", &placeholder));
    }

    /// Adds `clause` if there is a value for it.
    pub(crate) fn and_some<T: ToSql + Sync + Send + 'static>(
        &mut self,
        clause: &str,
        value: Option<T>,
    ) {
        if let Some(value) = value {
            self.and(clause, value);
        }
    }

    /// This SELECT as a subquery: `prefix (this) suffix`, e.g. to group its rows.
    /// No filter may be added afterwards.
    pub(crate) fn wrap(self, prefix: &str, suffix: &str) -> Select {
        Select {
            sql: format!("{prefix}{}{suffix}", self.sql),
            params: self.params,
            has_where: true,
        }
    }

    /// All rows, in `order_by` order.
    pub(crate) async fn all<T>(
        self,
        client: &Client,
        order_by: &str,
        map: impl Fn(&Row) -> Result<T, ProjectionError>,
    ) -> Result<Vec<T>, ProjectionError> {
        let sql = format!("{} ORDER BY {order_by}", self.sql);
        let params: Vec<&(dyn ToSql + Sync)> = self
            .params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect();
        let rows = client.query(&sql, &params).await.map_err(db_error)?;
        rows.iter().map(map).collect()
    }

    /// One page, in `order_by` order (which must end with a unique key, so pages
    /// neither overlap nor skip rows).
    pub(crate) async fn page<T>(
        self,
        client: &Client,
        order_by: &str,
        page: PageRequest,
        map: impl Fn(&Row) -> Result<T, ProjectionError>,
    ) -> Result<Page<T>, ProjectionError> {
        self.page_around(client, order_by, page, None, map).await
    }

    /// One page as [`page`](Self::page) takes it, then `outer` (`(select_list,
    /// alias)`: `SELECT select_list FROM (page) alias ORDER BY order_by`) computed for
    /// the page's rows alone. For select lists that cost more than the filter (a
    /// subquery per row): a plain page computes them for every row its offset skips
    /// too.
    pub(crate) async fn page_around<T>(
        mut self,
        client: &Client,
        order_by: &str,
        page: PageRequest,
        outer: Option<(&str, &str)>,
        map: impl Fn(&Row) -> Result<T, ProjectionError>,
    ) -> Result<Page<T>, ProjectionError> {
        page.check()?;
        let limit = i64::from(page.limit) + 1;
        self.params.push(Box::new(limit));
        self.params.push(Box::new(page.offset as i64));
        let n = self.params.len();
        self.sql = format!(
            "{} ORDER BY {order_by} LIMIT ${} OFFSET ${n}",
            self.sql,
            n - 1
        );
        if let Some((select_list, alias)) = outer {
            self.sql = format!(
                "SELECT {select_list} FROM ({}) {alias} ORDER BY {order_by}",
                self.sql
            );
        }
        let params: Vec<&(dyn ToSql + Sync)> = self
            .params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect();
        let rows = client.query(&self.sql, &params).await.map_err(db_error)?;
        let has_more = rows.len() > page.limit as usize;
        let items = rows
            .iter()
            .take(page.limit as usize)
            .map(map)
            .collect::<Result<_, _>>()?;
        Ok(Page {
            items,
            offset: page.offset,
            limit: page.limit,
            has_more,
        })
    }
}
