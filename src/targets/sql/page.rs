//! Reading a table in pages over [`Sql`], in a stable order: a Hrana stream (Turso) reads and
//! copies tables [`PAGE`] rows per request.

use anyhow::{anyhow, Result};

use super::{quote_ident, Sql, Val, ValRef};

/// Rows per Hrana request when reading or copying a table.
pub const PAGE: usize = 500;

/// Column of a table as `pragma_table_xinfo` describes it.
pub struct Column {
    pub name: String,
    pub decl: String,
    pub pk: i64,
    pub hidden: i64,
}

pub fn columns(c: &mut dyn Sql, table: &str) -> Result<Vec<Column>> {
    let r = c.rows(
        "SELECT name, coalesce(type, ''), pk, hidden FROM pragma_table_xinfo(?1)",
        &[Val::Text(table.into())],
    )?;
    Ok(r.rows
        .iter()
        .map(|r| Column {
            name: r[0].as_str().unwrap_or_default().to_string(),
            decl: r[1].as_str().unwrap_or_default().to_string(),
            pk: r[2].as_int().unwrap_or(0),
            hidden: r[3].as_int().unwrap_or(0),
        })
        .collect())
}

/// How to read a table in pages: by a rowid name no column shadows, or (views, WITHOUT ROWID
/// tables) by ordered offsets.
pub enum Paging {
    Rowid(String),
    Offset(String),
}

pub fn paging(c: &mut dyn Sql, table: &str, is_table: bool, cols: &[Column]) -> Result<Paging> {
    if is_table {
        for alias in ["rowid", "_rowid_", "oid"] {
            if cols.iter().any(|c| c.name.eq_ignore_ascii_case(alias)) {
                continue;
            }
            // WITHOUT ROWID tables have none: the probe fails.
            if c.rows(&format!("SELECT {alias} FROM {} LIMIT 0", quote_ident(table)), &[])
                .is_ok()
            {
                return Ok(Paging::Rowid(alias.to_string()));
            }
            break;
        }
    }
    let mut pk: Vec<&Column> = cols.iter().filter(|c| c.pk > 0).collect();
    pk.sort_by_key(|c| c.pk);
    let order = if pk.is_empty() {
        (1..=cols.iter().filter(|c| c.hidden == 0).count().max(1))
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    } else {
        pk.iter().map(|c| quote_ident(&c.name)).collect::<Vec<_>>().join(", ")
    };
    Ok(Paging::Offset(order))
}

/// Call `f` with every page of `SELECT <select> FROM table`, in a stable order. With rowid
/// paging the first value of each row is the rowid (not part of `select`).
pub fn for_each_page(
    c: &mut dyn Sql,
    table: &str,
    select: &str,
    paging: &Paging,
    mut f: impl FnMut(&[Vec<Val>]) -> Result<()>,
) -> Result<()> {
    let t = quote_ident(table);
    match paging {
        Paging::Rowid(alias) => {
            let mut last: Option<i64> = None;
            loop {
                let r = match last {
                    None => c.rows(
                        &format!("SELECT {alias}, {select} FROM {t} ORDER BY {alias} LIMIT {PAGE}"),
                        &[],
                    )?,
                    Some(l) => c.rows(
                        &format!("SELECT {alias}, {select} FROM {t} WHERE {alias} > ?1 ORDER BY {alias} LIMIT {PAGE}"),
                        &[Val::Int(l)],
                    )?,
                };
                if r.rows.is_empty() {
                    return Ok(());
                }
                last = Some(
                    r.rows
                        .last()
                        .and_then(|r| r[0].as_int())
                        .ok_or_else(|| anyhow!("{table}: rowid is not an integer"))?,
                );
                f(&r.rows)?;
                if r.rows.len() < PAGE {
                    return Ok(());
                }
            }
        }
        Paging::Offset(order) => {
            let mut offset = 0usize;
            loop {
                let r = c.rows(
                    &format!("SELECT {select} FROM {t} ORDER BY {order} LIMIT {PAGE} OFFSET {offset}"),
                    &[],
                )?;
                if r.rows.is_empty() {
                    return Ok(());
                }
                offset += r.rows.len();
                f(&r.rows)?;
                if r.rows.len() < PAGE {
                    return Ok(());
                }
            }
        }
    }
}

/// [`Sql::each_row`] in pages of [`PAGE`] rows (by rowid, or ordered offsets for views and
/// WITHOUT ROWID tables).
pub fn each_row_paged(c: &mut dyn Sql, table: &str, is_table: bool, f: &mut dyn FnMut(&[ValRef<'_>])) -> Result<()> {
    let cols = columns(c, table)?;
    let paging = paging(c, table, is_table, &cols)?;
    let skip = usize::from(matches!(paging, Paging::Rowid(_)));
    for_each_page(c, table, "*", &paging, |rows| {
        for r in rows {
            let vals: Vec<ValRef<'_>> = r[skip..].iter().map(Val::as_ref).collect();
            f(&vals);
        }
        Ok(())
    })
}
