//! Fingerprints of a SQLite-dialect database over any [`Sql`]: row counts of every table,
//! order-independent content hashes of the tables named, and a hash of the schema. SQLite and
//! Turso targets both record these, so equal data gives equal fingerprints whichever kind read it.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Result};
use sha2::{Digest as _, Sha256};

use super::{quote_ident, row_digest, Sql, Val};
use crate::manifest::{Column, Fingerprint};

/// User tables of a database.
pub fn user_tables(c: &mut dyn Sql) -> Result<Vec<String>> {
    let r = c.rows(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
        &[],
    )?;
    Ok(r.rows
        .iter()
        .filter_map(|r| r.first().and_then(Val::as_str).map(String::from))
        .collect())
}

/// Row count and order-independent content hash of a table or view: the wrapping sum of
/// [`row_digest`] over every row of `SELECT *`, with the columns it was computed over.
pub fn table_fingerprint(c: &mut dyn Sql, table: &str) -> Result<Fingerprint> {
    let is_table = table_kind(c, table)?;
    let columns = table_columns(c, table)?;
    digest(columns, |f| c.each_row(table, is_table, f))
}

/// The fingerprint of the rows `each` feeds, recorded with `columns`.
fn digest(
    columns: Vec<Column>,
    each: impl FnOnce(&mut dyn FnMut(&[super::ValRef<'_>])) -> Result<()>,
) -> Result<Fingerprint> {
    let mut sum: u128 = 0;
    let mut count = 0u64;
    each(&mut |row| {
        sum = sum.wrapping_add(row_digest(row));
        count += 1;
    })?;
    Ok(Fingerprint {
        rows: count,
        hash: Some(format!("{sum:032x}")),
        columns: Some(columns),
        absent: false,
    })
}

/// Is there a table or view named `table`?
fn table_exists(c: &mut dyn Sql, table: &str) -> Result<bool> {
    let r = c.rows(
        "SELECT count(*) FROM sqlite_master WHERE type IN ('table','view') AND name = ?1",
        &[Val::Text(table.into())],
    )?;
    Ok(r.first().and_then(Val::as_int).unwrap_or(0) > 0)
}

/// Is `table` a table (true) or a view (false)? An error when it is neither.
fn table_kind(c: &mut dyn Sql, table: &str) -> Result<bool> {
    let kind = c.rows(
        "SELECT type FROM sqlite_master WHERE type IN ('table','view') AND name = ?1",
        &[Val::Text(table.into())],
    )?;
    match kind.first().and_then(Val::as_str) {
        Some(k) => Ok(k == "table"),
        None => bail!("table {table:?} does not exist"),
    }
}

/// The columns `SELECT *` returns (hidden columns of virtual tables left out), in order, with
/// their declared types.
pub fn table_columns(c: &mut dyn Sql, table: &str) -> Result<Vec<Column>> {
    Ok(super::page::columns(c, table)?
        .into_iter()
        .filter(|c| c.hidden != 1)
        .map(|c| Column {
            name: c.name,
            ty: c.decl,
        })
        .collect())
}

/// "Existing data untouched": the row count and content hash of `table` over the columns it
/// had when `before` was recorded, hashed as [`table_fingerprint`] hashes whole rows (so with no
/// column added the two agree). Columns added since are left out; a recorded column that was
/// dropped or changed type is an error naming it.
pub fn existing_fingerprint(c: &mut dyn Sql, table: &str, before: &[Column]) -> Result<Fingerprint> {
    let is_table = table_kind(c, table)?;
    let now = table_columns(c, table)?;
    check_columns(table, before, &now)?;
    if now == before {
        return digest(now, |f| c.each_row(table, is_table, f));
    }
    let names: Vec<String> = before.iter().map(|c| c.name.clone()).collect();
    digest(now, |f| c.each_row_of(table, &names, is_table, f))
}

/// Every column of `before` is still in `now` with the same type; else say which are not.
pub fn check_columns(table: &str, before: &[Column], now: &[Column]) -> Result<()> {
    let mut problems = Vec::new();
    for b in before {
        match now.iter().find(|n| n.name == b.name) {
            None => problems.push(format!("column {:?} was dropped", b.name)),
            Some(n) if n.ty != b.ty => problems.push(format!(
                "column {:?} changed type ({} → {})",
                b.name,
                shown(&b.ty),
                shown(&n.ty)
            )),
            Some(_) => {}
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        bail!("{table}: {}", problems.join(", "))
    }
}

fn shown(ty: &str) -> &str {
    if ty.is_empty() {
        "no declared type"
    } else {
        ty
    }
}

/// Hash of every CREATE statement, the `@schema` fingerprint.
pub fn schema_fingerprint(c: &mut dyn Sql) -> Result<Fingerprint> {
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
        columns: None,
        absent: false,
    })
}

/// Row counts of every table, content hashes of `hashed`, and the schema hash. `lenient` (a
/// rescue snapshot of a failed state): a hashed table that no longer exists is recorded as
/// absent instead of failing.
pub fn fingerprints(c: &mut dyn Sql, hashed: &[String], lenient: bool) -> Result<BTreeMap<String, Fingerprint>> {
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
                    columns: None,
                    absent: false,
                },
            );
        }
    }
    for t in hashed {
        let f = if lenient && !table_exists(c, t)? {
            Fingerprint::absent()
        } else {
            table_fingerprint(c, t)?
        };
        out.insert(t.clone(), f);
    }
    out.insert("@schema".into(), schema_fingerprint(c)?);
    Ok(out)
}

/// Compare recorded fingerprints with fresh ones; name every difference.
pub fn compare_fingerprints(
    expected: &BTreeMap<String, Fingerprint>,
    got: &BTreeMap<String, Fingerprint>,
) -> Result<()> {
    let mut diffs = Vec::new();
    for (k, e) in expected {
        match got.get(k) {
            // Recorded absent (the command had dropped it) and absent now.
            None if e.absent => {}
            Some(g) if g.absent && e.absent => {}
            Some(g) if e.absent => diffs.push(format!(
                "{k}: exists ({} rows), the snapshot recorded it absent",
                g.rows
            )),
            Some(g) if g.absent => diffs.push(format!("{k}: missing")),
            None => diffs.push(format!("{k}: missing")),
            Some(g) if g.rows != e.rows => diffs.push(format!("{k}: {} rows, expected {}", g.rows, e.rows)),
            Some(g) if e.hash.is_some() && g.hash.is_some() && g.hash != e.hash => {
                diffs.push(format!("{k}: content differs ({} rows)", g.rows))
            }
            _ => {}
        }
    }
    for k in got.keys() {
        if !expected.contains_key(k) {
            diffs.push(format!("{k}: not in the snapshot"));
        }
    }
    if diffs.is_empty() {
        Ok(())
    } else {
        bail!("{}", diffs.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::targets::sql::{page, ValRef};
    use crate::targets::Target;
    use crate::targets::{KindSpec, SqliteSpec, TargetSpec};

    /// The Turso code path over a local file: every statement goes through `rows` on its own and
    /// tables are read in pages, exactly as over a Hrana stream (`turso::hrana::Stream`).
    struct Paged {
        c: rusqlite::Connection,
        statements: usize,
    }

    impl Sql for Paged {
        fn rows(&mut self, sql: &str, args: &[Val]) -> Result<crate::targets::sql::Rows> {
            self.statements += 1;
            self.c.rows(sql, args)
        }
        fn each_row(&mut self, table: &str, is_table: bool, f: &mut dyn FnMut(&[ValRef<'_>])) -> Result<()> {
            page::each_row_paged(self, table, is_table, f)
        }
    }

    #[test]
    fn a_sqlite_target_and_the_turso_path_agree_on_the_same_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, v REAL, s TEXT, b BLOB);
             CREATE TABLE w (k TEXT PRIMARY KEY, n INT) WITHOUT ROWID;
             CREATE TABLE plain (x, y);
             CREATE VIEW vt AS SELECT id, s FROM t;",
        )
        .unwrap();
        // One transaction: 3702 autocommitted inserts are 3702 fsyncs, minutes on a busy disk.
        c.execute_batch("BEGIN").unwrap();
        for i in 0..1234 {
            c.execute(
                "INSERT INTO t (v, s, b) VALUES (?1, ?2, ?3)",
                (i as f64 / 7.0, format!("s{i} é"), vec![i as u8; 3]),
            )
            .unwrap();
            c.execute("INSERT INTO w VALUES (?1, ?2)", (format!("k{i}"), -i))
                .unwrap();
            c.execute("INSERT INTO plain VALUES (?1, NULL)", [i]).unwrap();
        }
        c.execute_batch("COMMIT").unwrap();
        let items: Vec<String> = ["t", "w", "plain", "vt"].iter().map(|s| s.to_string()).collect();
        let spec = TargetSpec::new("app", KindSpec::Sqlite(SqliteSpec::at(path.clone())));
        // A SQLite target reads each table in one statement through rusqlite.
        let sqlite = crate::targets::sqlite::SqliteTarget::new(spec, path.clone());
        let want = sqlite.fingerprint(&items).unwrap();
        let mut paged = Paged { c, statements: 0 };
        for i in &items {
            assert_eq!(table_fingerprint(&mut paged, i).unwrap(), want[i], "{i}");
        }
        assert_eq!(want["t"].rows, 1234);
        // 1234 rows are three pages of each table (rowid pages for t and plain, offsets for the
        // WITHOUT ROWID table and the view), plus the lookups before them.
        assert!(paged.statements >= 4 * 3, "{} statements", paged.statements);
        // Row counts of every table and the schema hash agree too.
        let all = fingerprints(&mut paged, &items[..1], false).unwrap();
        assert_eq!(fingerprints(&mut paged.c, &items[..1], false).unwrap(), all);
        assert_eq!(all["w"].rows, 1234);
        assert!(all["w"].hash.is_none() && all["t"].hash.is_some() && all.contains_key("@schema"));
        // One changed row changes the hash, the same way on both paths.
        paged
            .c
            .execute("UPDATE t SET s = 'changed' WHERE id = 617", [])
            .unwrap();
        let after = sqlite.fingerprint(&items[..1]).unwrap();
        assert_ne!(after["t"], want["t"]);
        assert_eq!(table_fingerprint(&mut paged, "t").unwrap(), after["t"]);
    }

    #[test]
    fn existing_data_over_pages_agrees_with_one_statement_and_ignores_added_columns() {
        let c = rusqlite::Connection::open_in_memory().unwrap();
        c.execute_batch(
            "CREATE TABLE payment (id INTEGER PRIMARY KEY, loan_id INTEGER, amount NUMERIC, paid_at TEXT);
             CREATE TABLE w (k TEXT PRIMARY KEY, n INT) WITHOUT ROWID;
             CREATE VIEW v AS SELECT k, n FROM w;",
        )
        .unwrap();
        c.execute_batch("BEGIN").unwrap();
        for i in 0..1100 {
            c.execute(
                "INSERT INTO payment (loan_id, amount, paid_at) VALUES (?1, ?2, 'x')",
                (i % 7, i as f64 / 3.0),
            )
            .unwrap();
            c.execute("INSERT INTO w VALUES (?1, ?2)", (format!("k{i}"), i))
                .unwrap();
        }
        c.execute_batch("COMMIT").unwrap();
        let mut paged = Paged { c, statements: 0 };
        let before: Vec<Fingerprint> = ["payment", "w", "v"]
            .iter()
            .map(|t| table_fingerprint(&mut paged.c, t).unwrap())
            .collect();
        paged
            .c
            .execute_batch("ALTER TABLE payment ADD COLUMN split INTEGER; UPDATE payment SET split = 1; ALTER TABLE w ADD COLUMN z;")
            .unwrap();
        for (t, b) in ["payment", "w", "v"].iter().zip(&before) {
            let cols = b.columns.as_ref().unwrap();
            let local = existing_fingerprint(&mut paged.c, t, cols).unwrap();
            let over_pages = existing_fingerprint(&mut paged, t, cols).unwrap();
            assert_eq!(
                (local.rows, &local.hash),
                (b.rows, &b.hash),
                "{t}: added columns are left out"
            );
            assert_eq!(
                (over_pages.rows, &over_pages.hash),
                (b.rows, &b.hash),
                "{t}: pages agree"
            );
        }
        assert_ne!(
            table_fingerprint(&mut paged.c, "payment").unwrap().hash,
            before[0].hash,
            "whole rows differ"
        );
        paged
            .c
            .execute("UPDATE payment SET amount = 0 WHERE id = 900", [])
            .unwrap();
        let cols = before[0].columns.as_ref().unwrap();
        assert_ne!(
            existing_fingerprint(&mut paged, "payment", cols).unwrap().hash,
            before[0].hash
        );
        let mut gone = cols.clone();
        gone.push(Column {
            name: "gone".into(),
            ty: "TEXT".into(),
        });
        let e = existing_fingerprint(&mut paged, "payment", &gone).unwrap_err();
        assert_eq!(format!("{e:#}"), "payment: column \"gone\" was dropped");
    }
}
