//! Reading a table in pages over [`Sql`], in a stable order: a Hrana stream (Turso) reads and
//! copies tables in pages of at most [`PAGE`] rows, sized by bytes (see `PageSize`).

use anyhow::{anyhow, bail, Result};

use super::{quote_ident, ResponseTooLarge, Sql, Val, ValRef};

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

/// Rows per Hrana request when reading or copying a table, at most.
const MAX_PAGE: usize = PAGE;
/// Aim for responses of about this size: well under sqld's default `max_response_size` of 10 MB
/// (libsql-server config.rs), which is the limit per response, and small enough that each page
/// copied is one short write transaction.
const PAGE_BYTES: u64 = 2_000_000;

/// How many rows to ask for next: a page shrinks to keep responses near [`PAGE_BYTES`] (sizes
/// as sqld estimates them) and halves after a `RESPONSE_TOO_LARGE`; it grows back, but never
/// above half of a size the server refused.
struct PageSize {
    rows: usize,
    ceiling: usize,
}

impl PageSize {
    fn new() -> Self {
        PageSize {
            rows: MAX_PAGE,
            ceiling: MAX_PAGE,
        }
    }

    fn refused(&mut self, table: &str, e: anyhow::Error) -> Result<()> {
        if self.rows <= 1 {
            return Err(e.context(format!(
                "a single row of {table} is larger than the server's response size limit (RESPONSE_TOO_LARGE; sqld's default is 10 MB): guard cannot read it over Hrana; use restore = \"promote\" for this database"
            )));
        }
        self.rows = (self.rows / 2).max(1);
        self.ceiling = self.rows;
        Ok(())
    }

    fn answered(&mut self, rows: &[Vec<Val>]) {
        let bytes: u64 = rows.iter().flatten().map(Val::response_size).sum::<u64>().max(1);
        let fit = (rows.len() as u64 * PAGE_BYTES / bytes) as usize;
        self.rows = fit.clamp(1, self.ceiling);
    }
}

/// Where to find row `i` of a page (given the row): a `FROM` clause and its arguments.
type Locate<'a> = &'a dyn Fn(usize, &[Val]) -> (String, Vec<Val>);

/// Replace the ±Infinity markers of a page (sqld sends both as `"value": null`, see
/// [`Val::from_json`]) with the value of the right sign, asking for each such cell's sign.
fn resolve_infinities(
    c: &mut dyn Sql,
    t: &str,
    cols: &[String],
    rows: &mut [Vec<Val>],
    locate: Locate<'_>,
) -> Result<()> {
    for (i, row) in rows.iter_mut().enumerate() {
        for j in 0..row.len() {
            if !matches!(row[j], Val::Float(f) if f.is_nan()) {
                continue;
            }
            let col = cols
                .get(j)
                .ok_or_else(|| anyhow!("{t}: a non-finite float in a column without a name"))?;
            let (from, args) = locate(i, row);
            let sign = c.rows(&format!("SELECT {} > 0 FROM {from}", quote_ident(col)), &args)?;
            row[j] = Val::Float(match sign.first().and_then(Val::as_int) {
                Some(1) => f64::INFINITY,
                Some(0) => f64::NEG_INFINITY,
                _ => bail!("{t}: could not read the sign of an infinite value in column {col}"),
            });
        }
    }
    Ok(())
}

/// Call `f` with every page of `SELECT <select> FROM table`, in a stable order. With rowid
/// paging the first value of each row is the rowid (not part of `select`). Pages are sized by
/// bytes (see [`PageSize`]), so wide rows never ask for a response the server refuses.
pub fn for_each_page(
    c: &mut dyn Sql,
    table: &str,
    select: &str,
    paging: &Paging,
    mut f: impl FnMut(&[Vec<Val>]) -> Result<()>,
) -> Result<()> {
    let t = quote_ident(table);
    let mut size = PageSize::new();
    match paging {
        Paging::Rowid(alias) => {
            let mut last: Option<i64> = None;
            loop {
                let n = size.rows;
                let r = match last {
                    None => c.rows(
                        &format!("SELECT {alias}, {select} FROM {t} ORDER BY {alias} LIMIT {n}"),
                        &[],
                    ),
                    Some(l) => c.rows(
                        &format!("SELECT {alias}, {select} FROM {t} WHERE {alias} > ?1 ORDER BY {alias} LIMIT {n}"),
                        &[Val::Int(l)],
                    ),
                };
                let mut r = match r {
                    Err(e) if e.downcast_ref::<ResponseTooLarge>().is_some() => {
                        size.refused(table, e)?;
                        continue;
                    }
                    r => r?,
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
                let cols = r.cols.clone();
                let from = format!("{t} WHERE {alias} = ?1");
                resolve_infinities(c, &t, &cols, &mut r.rows, &|_, row| {
                    (from.clone(), vec![row[0].clone()])
                })?;
                size.answered(&r.rows);
                f(&r.rows)?;
                if r.rows.len() < n {
                    return Ok(());
                }
            }
        }
        Paging::Offset(order) => {
            let mut offset = 0usize;
            loop {
                let n = size.rows;
                let r = c.rows(
                    &format!("SELECT {select} FROM {t} ORDER BY {order} LIMIT {n} OFFSET {offset}"),
                    &[],
                );
                let mut r = match r {
                    Err(e) if e.downcast_ref::<ResponseTooLarge>().is_some() => {
                        size.refused(table, e)?;
                        continue;
                    }
                    r => r?,
                };
                if r.rows.is_empty() {
                    return Ok(());
                }
                let cols = r.cols.clone();
                let start = offset;
                resolve_infinities(c, &t, &cols, &mut r.rows, &|i, _| {
                    (
                        format!(
                            "(SELECT {select} FROM {t} ORDER BY {order} LIMIT 1 OFFSET {})",
                            start + i
                        ),
                        Vec::new(),
                    )
                })?;
                offset += r.rows.len();
                size.answered(&r.rows);
                f(&r.rows)?;
                if r.rows.len() < n {
                    return Ok(());
                }
            }
        }
    }
}

/// [`Sql::each_row`] in pages of at most [`PAGE`] rows (by rowid, or ordered offsets for views and
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

/// [`Sql::each_row_of`] in pages: `SELECT columns FROM table`, as [`each_row_paged`] reads
/// `SELECT *`.
pub fn each_row_paged_of(
    c: &mut dyn Sql,
    table: &str,
    names: &[String],
    is_table: bool,
    f: &mut dyn FnMut(&[ValRef<'_>]),
) -> Result<()> {
    let cols = columns(c, table)?;
    let paging = match paging(c, table, is_table, &cols)? {
        // Positions in the select list, not in the table.
        Paging::Offset(_) if !cols.iter().any(|c| c.pk > 0) => Paging::Offset(
            (1..=names.len().max(1))
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        ),
        p => p,
    };
    let skip = usize::from(matches!(paging, Paging::Rowid(_)));
    let select = names.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ");
    for_each_page(c, table, &select, &paging, |rows| {
        for r in rows {
            let vals: Vec<ValRef<'_>> = r[skip..].iter().map(Val::as_ref).collect();
            f(&vals);
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SQLite file behind a server like sqld: a response whose values (as sqld counts them)
    /// exceed `cap` fails with `RESPONSE_TOO_LARGE`, and ±Infinity arrives as a float of
    /// unknown sign (sqld writes them as `null`).
    struct Capped {
        c: rusqlite::Connection,
        cap: u64,
        refused: usize,
    }

    impl Sql for Capped {
        fn rows(&mut self, sql: &str, args: &[Val]) -> Result<super::super::Rows> {
            let mut r = self.c.rows(sql, args)?;
            if r.rows.iter().flatten().map(Val::response_size).sum::<u64>() > self.cap {
                self.refused += 1;
                return Err(anyhow::Error::new(ResponseTooLarge(
                    "Response is too large [RESPONSE_TOO_LARGE]".into(),
                )));
            }
            for v in r.rows.iter_mut().flatten() {
                if matches!(v, Val::Float(f) if f.is_infinite()) {
                    *v = Val::Float(f64::NAN);
                }
            }
            Ok(r)
        }
        fn each_row(&mut self, table: &str, is_table: bool, f: &mut dyn FnMut(&[ValRef<'_>])) -> Result<()> {
            each_row_paged(self, table, is_table, f)
        }
    }

    fn read_all(c: &mut Capped, table: &str, is_table: bool) -> Result<Vec<Vec<Val>>> {
        let cols = columns(c, table)?;
        let p = paging(c, table, is_table, &cols)?;
        let mut out = Vec::new();
        for_each_page(c, table, "*", &p, |rows| {
            out.extend(rows.iter().cloned());
            Ok(())
        })?;
        Ok(out)
    }

    #[test]
    fn pages_shrink_to_what_the_server_answers_and_infinities_keep_their_sign() {
        let c = rusqlite::Connection::open_in_memory().unwrap();
        c.execute_batch(
            "CREATE TABLE docs (id INTEGER PRIMARY KEY, body BLOB, x REAL);
             CREATE TABLE w (k INTEGER PRIMARY KEY, body BLOB, x REAL) WITHOUT ROWID;",
        )
        .unwrap();
        for i in 0..300i64 {
            let x = match i {
                7 => f64::INFINITY,
                8 => f64::NEG_INFINITY,
                _ => i as f64,
            };
            c.execute("INSERT INTO docs VALUES (?1, zeroblob(5000), ?2)", (i, x))
                .unwrap();
            c.execute("INSERT INTO w VALUES (?1, zeroblob(5000), ?2)", (i, x))
                .unwrap();
        }
        // 500 rows would be 1.5 MB; the server answers at most 100 kB.
        let mut s = Capped {
            c,
            cap: 100_000,
            refused: 0,
        };
        for (table, is_table) in [("docs", true), ("w", true)] {
            let rows = read_all(&mut s, table, is_table).unwrap();
            assert_eq!(rows.len(), 300, "{table}");
            let skip = usize::from(table == "docs");
            let ids: Vec<i64> = rows.iter().map(|r| r[skip].as_int().unwrap()).collect();
            assert_eq!(ids, (0..300).collect::<Vec<_>>(), "{table}: every row once, in order");
            assert_eq!(rows[7][skip + 2], Val::Float(f64::INFINITY), "{table}");
            assert_eq!(rows[8][skip + 2], Val::Float(f64::NEG_INFINITY), "{table}");
            assert_eq!(rows[9][skip + 2], Val::Float(9.0), "{table}");
        }
        assert!(s.refused > 0 && s.refused < 20, "{} refusals", s.refused);
        // A single row over the cap: a clear error, not an endless retry.
        s.c.execute("INSERT INTO docs VALUES (1000, zeroblob(200000), 0)", [])
            .unwrap();
        let e = read_all(&mut s, "docs", true).unwrap_err();
        assert!(
            format!("{e:#}").contains("a single row of docs is larger than the server's response size limit"),
            "{e:#}"
        );
    }
}
