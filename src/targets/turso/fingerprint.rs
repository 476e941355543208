//! Fingerprints over any [`Sql`](super::values::Sql): row counts, content hashes and the schema
//! hash, read page by page.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Result};
use sha2::{Digest as _, Sha256};

use super::values::{row_digest, Sql, Val};
use crate::manifest::Fingerprint;
use crate::targets::sqlite::quote_ident;

/// Rows per Hrana request when reading or copying a table.
pub(super) const PAGE: usize = 500;

pub(super) fn user_tables(c: &mut dyn Sql) -> Result<Vec<String>> {
    let r = c.rows(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
        &[],
    )?;
    Ok(r.rows
        .iter()
        .filter_map(|r| r.first().and_then(Val::as_str).map(String::from))
        .collect())
}

/// Column of a table as `pragma_table_xinfo` describes it.
pub(super) struct Column {
    pub(super) name: String,
    pub(super) decl: String,
    pub(super) pk: i64,
    pub(super) hidden: i64,
}

pub(super) fn columns(c: &mut dyn Sql, table: &str) -> Result<Vec<Column>> {
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
pub(super) enum Paging {
    Rowid(String),
    Offset(String),
}

pub(super) fn paging(c: &mut dyn Sql, table: &str, is_table: bool, cols: &[Column]) -> Result<Paging> {
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
pub(super) fn for_each_page(
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

/// Row count and order-independent content hash of a table or view (as SQLite targets compute
/// it over `SELECT *`).
pub(super) fn table_fingerprint(c: &mut dyn Sql, table: &str) -> Result<Fingerprint> {
    let kind = c.rows(
        "SELECT type FROM sqlite_master WHERE type IN ('table','view') AND name = ?1",
        &[Val::Text(table.into())],
    )?;
    let Some(kind) = kind.first().and_then(Val::as_str).map(String::from) else {
        bail!("table {table:?} does not exist");
    };
    let cols = columns(c, table)?;
    let paging = paging(c, table, kind == "table", &cols)?;
    let skip = usize::from(matches!(paging, Paging::Rowid(_)));
    let mut sum: u128 = 0;
    let mut count = 0u64;
    for_each_page(c, table, "*", &paging, |rows| {
        for r in rows {
            sum = sum.wrapping_add(row_digest(&r[skip..]));
            count += 1;
        }
        Ok(())
    })?;
    Ok(Fingerprint {
        rows: count,
        hash: Some(format!("{sum:032x}")),
    })
}

/// Hash of every CREATE statement, the `@schema` fingerprint (as SQLite targets compute it).
pub(super) fn schema_fingerprint(c: &mut dyn Sql) -> Result<Fingerprint> {
    let r = c.rows(
        "SELECT type, name, coalesce(sql, '') FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name",
        &[],
    )?;
    let mut h = Sha256::new();
    for row in &r.rows {
        for v in row.iter().take(3) {
            let s = v.as_str().unwrap_or_default();
            h.update((s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        }
    }
    Ok(Fingerprint {
        rows: r.rows.len() as u64,
        hash: Some(hex::encode(&h.finalize()[..16])),
    })
}

/// Row counts of every table, content hashes of `hashed`, and the schema hash.
pub(super) fn fingerprints(c: &mut dyn Sql, hashed: &[String]) -> Result<BTreeMap<String, Fingerprint>> {
    let mut out = BTreeMap::new();
    for t in user_tables(c)? {
        if !hashed.contains(&t) {
            let n = c.rows(&format!("SELECT count(*) FROM {}", quote_ident(&t)), &[])?;
            let rows = n
                .first()
                .and_then(Val::as_int)
                .ok_or_else(|| anyhow!("count(*) of {t} returned no integer"))?;
            out.insert(
                t,
                Fingerprint {
                    rows: rows as u64,
                    hash: None,
                },
            );
        }
    }
    for t in hashed {
        out.insert(t.clone(), table_fingerprint(c, t)?);
    }
    out.insert("@schema".into(), schema_fingerprint(c)?);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{TargetKind, TargetSpec};
    use crate::targets::Target;

    #[test]
    fn fingerprints_equal_those_of_sqlite_targets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let mut c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, v REAL, s TEXT, b BLOB);
             CREATE TABLE w (k TEXT PRIMARY KEY, n INT) WITHOUT ROWID;
             CREATE TABLE plain (x, y);
             CREATE VIEW vt AS SELECT id, s FROM t;",
        )
        .unwrap();
        for i in 0..1234 {
            c.execute(
                "INSERT INTO t (v, s, b) VALUES (?1, ?2, ?3)",
                (i as f64 / 7.0, format!("s{i}"), vec![i as u8; 3]),
            )
            .unwrap();
            c.execute("INSERT INTO w VALUES (?1, ?2)", (format!("k{i}"), i))
                .unwrap();
            c.execute("INSERT INTO plain VALUES (?1, NULL)", [i]).unwrap();
        }
        let items: Vec<String> = ["t", "w", "plain", "vt"].iter().map(|s| s.to_string()).collect();
        let spec = TargetSpec {
            name: "app".into(),
            line: 0,
            kind: TargetKind::Sqlite { path: path.clone() },
        };
        let sqlite = crate::targets::sqlite::SqliteTarget::new(spec, path.clone());
        let want = sqlite.fingerprint(&items).unwrap();
        for i in &items {
            assert_eq!(table_fingerprint(&mut c, i).unwrap(), want[i], "{i}");
        }
        assert_eq!(want["t"].rows, 1234);
        let all = fingerprints(&mut c, &items[..1]).unwrap();
        assert_eq!(all["w"].rows, 1234);
        assert!(all["w"].hash.is_none() && all["t"].hash.is_some() && all.contains_key("@schema"));
    }
}
