//! Restore: `reload` replaces the source's tables, indexes, triggers and views with the
//! branch's (or an export's), in short transactions so that none outlives Turso's write window;
//! `promote` instructions.
//!
//! Turso gives a write transaction 5 s ("Transactions have a 5 seconds window to complete",
//! docs sdk/http/reference.mdx); sqld rolls back a write transaction older than that as soon as
//! another writer waits and answers its next request with `TRANSACTION_TIMEOUT`
//! (libsql-server connection/connection_manager.rs, connection_core.rs). So a reload never
//! holds the write lock across round trips:
//!
//! 1. load: every table of the snapshot is created under a staging name (`_guard_reload_N`,
//!    same definition) and filled page by page, each page one transaction in one request;
//! 2. prove: each staged table's row count and content hash equal the snapshot's table;
//! 3. swap: one transaction in one request drops the source's views, triggers and tables,
//!    recreates the tables with their exact definitions, copies the staged rows into them
//!    inside the database (`INSERT … SELECT`, no network), drops the staged tables, restores
//!    `sqlite_sequence`, and recreates indexes, triggers and views. A failing step rolls the
//!    whole swap back in the same request, so readers see the old state or the new one, never
//!    a mix; then the staged tables are dropped. A staged table cannot simply be renamed: SQLite
//!    rewrites a renamed table's definition with the name quoted, which changes the schema.
//!
//! The swap's duration grows with the database (a local copy and the index builds); it is the
//! one transaction that can approach the window on a large database.

use anyhow::{bail, Context, Result};

use super::export::load_export;
use super::hrana::Stream;
use super::TursoTarget;
use crate::manifest::TargetRecord;
use crate::store::Store;
use crate::targets::sql::fingerprint::table_fingerprint;
use crate::targets::sql::page::{columns, for_each_page, paging, Column, Paging};
use crate::targets::sql::{quote_ident, Sql, Val};

/// Tables a reload loads before swapping them in are named this and a number.
pub(super) const STAGING: &str = "_guard_reload_";

/// The columns a copy writes: the insertable ones, and the rowid first when a table has one
/// that no column aliases (so rowids come back too).
struct Copy {
    paging: Paging,
    /// Quoted names, the rowid alias first when `keep_rowid`.
    names: Vec<String>,
    /// The SELECT list (insertable columns) for reading the source of the copy.
    select: String,
    keep_rowid: bool,
}

fn copy_plan(b: &mut dyn Sql, table: &str) -> Result<Option<Copy>> {
    let cols = columns(b, table)?;
    // Generated columns (hidden 2 and 3) are computed, not inserted.
    let insertable: Vec<&Column> = cols.iter().filter(|c| c.hidden == 0).collect();
    if insertable.is_empty() {
        return Ok(None);
    }
    let paging = paging(b, table, true, &cols)?;
    // Keep rowids of rowid tables, unless a column is the rowid (INTEGER PRIMARY KEY).
    let ipk = cols.iter().filter(|c| c.pk > 0).count() == 1
        && cols.iter().any(|c| c.pk == 1 && c.decl.eq_ignore_ascii_case("INTEGER"));
    let keep_rowid = matches!(paging, Paging::Rowid(_)) && !ipk;
    let select = insertable
        .iter()
        .map(|c| quote_ident(&c.name))
        .collect::<Vec<_>>()
        .join(", ");
    let mut names: Vec<String> = insertable.iter().map(|c| quote_ident(&c.name)).collect();
    if let (true, Paging::Rowid(alias)) = (keep_rowid, &paging) {
        names.insert(0, alias.clone());
    }
    Ok(Some(Copy {
        paging,
        names,
        select,
        keep_rowid,
    }))
}

/// `sql` (a table's CREATE statement as sqlite_master keeps it) creating `name` instead.
pub(super) fn renamed_create(sql: &str, name: &str) -> Result<String> {
    let bad = || anyhow::anyhow!("cannot find the table name in {:?}", super::hrana::shorten(sql));
    let upper = sql.to_ascii_uppercase();
    let mut i = "CREATE TABLE".len();
    if !upper.starts_with("CREATE TABLE") {
        return Err(bad());
    }
    let skip_ws = |i: &mut usize| {
        while sql.as_bytes().get(*i).is_some_and(u8::is_ascii_whitespace) {
            *i += 1;
        }
    };
    skip_ws(&mut i);
    if upper[i..].starts_with("IF NOT EXISTS") {
        i += "IF NOT EXISTS".len();
        skip_ws(&mut i);
    }
    let b = sql.as_bytes();
    let end = match b.get(i) {
        Some(&q @ (b'"' | b'`' | b'\'')) => {
            let mut j = i + 1;
            loop {
                match b.get(j) {
                    None => return Err(bad()),
                    Some(&c) if c == q && b.get(j + 1) == Some(&q) => j += 2,
                    Some(&c) if c == q => break j + 1,
                    _ => j += 1,
                }
            }
        }
        Some(b'[') => sql[i..].find(']').map(|k| i + k + 1).ok_or_else(bad)?,
        Some(_) => {
            let mut j = i;
            while b.get(j).is_some_and(|c| !c.is_ascii_whitespace() && *c != b'(') {
                j += 1;
            }
            j
        }
        None => return Err(bad()),
    };
    if end == i {
        return Err(bad());
    }
    Ok(format!("CREATE TABLE {}{}", quote_ident(name), &sql[end..]))
}

/// A page of rows as one INSERT each into `into`. ±Infinity cannot travel as a Hrana argument
/// (JSON has no such number and sqld refuses a `null` float), so such a value goes as a literal:
/// `coalesce(?N, 9e999)` with NULL bound to ?N.
fn insert_page(into: &str, names: &[String], rows: &[Vec<Val>], skip: usize) -> Vec<(String, Vec<Val>)> {
    let plain = format!(
        "INSERT INTO {} ({}) VALUES ({})",
        quote_ident(into),
        names.join(", "),
        (1..=names.len())
            .map(|i| format!("?{i}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    rows.iter()
        .map(|r| {
            let vals = &r[skip..];
            if !vals.iter().any(|v| matches!(v, Val::Float(f) if f.is_infinite())) {
                return (plain.clone(), vals.to_vec());
            }
            let mut args = Vec::with_capacity(vals.len());
            let mut place = Vec::with_capacity(vals.len());
            for (i, v) in vals.iter().enumerate() {
                match v {
                    Val::Float(f) if f.is_infinite() => {
                        place.push(format!(
                            "coalesce(?{}, {}9e999)",
                            i + 1,
                            if *f < 0.0 { "-" } else { "" }
                        ));
                        args.push(Val::Null);
                    }
                    v => {
                        place.push(format!("?{}", i + 1));
                        args.push(v.clone());
                    }
                }
            }
            (
                format!(
                    "INSERT INTO {} ({}) VALUES ({})",
                    quote_ident(into),
                    names.join(", "),
                    place.join(", ")
                ),
                args,
            )
        })
        .collect()
}

/// What a reload recreates, read from the snapshot's side: every object (type, name, CREATE
/// statement) in `sqlite_master` order, its tables, and whether it has `sqlite_sequence`.
struct Schema {
    objects: Vec<(String, String, String)>,
    /// (name, CREATE TABLE statement)
    tables: Vec<(String, String)>,
    sequence: bool,
}

impl Schema {
    /// Refuses what a reload cannot recreate (virtual tables) and names guard reserves.
    fn read(b: &mut dyn Sql, from: &str) -> Result<Schema> {
        let objects = b.rows("SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%' ORDER BY rowid", &[])?;
        let objects: Vec<(String, String, String)> = objects
            .rows
            .iter()
            .map(|r| {
                (
                    r[0].as_str().unwrap_or_default().to_string(),
                    r[1].as_str().unwrap_or_default().to_string(),
                    r[2].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        if objects
            .iter()
            .any(|(t, _, sql)| t == "table" && sql.to_ascii_uppercase().starts_with("CREATE VIRTUAL TABLE"))
        {
            bail!("{from} has virtual tables, which reload cannot recreate; use restore = \"promote\"");
        }
        if let Some((_, n, _)) = objects.iter().find(|(_, n, _)| n.starts_with(STAGING)) {
            bail!("{from} has a table {n}, a name guard reserves for the tables a reload stages");
        }
        let sequence = b
            .rows("SELECT count(*) FROM sqlite_master WHERE name = 'sqlite_sequence'", &[])?
            .first()
            .and_then(Val::as_int)
            .unwrap_or(0)
            > 0;
        let tables: Vec<(String, String)> = objects
            .iter()
            .filter(|(t, _, _)| t == "table")
            .map(|(_, n, sql)| (n.clone(), sql.clone()))
            .collect();
        Ok(Schema {
            objects,
            tables,
            sequence,
        })
    }
}

/// One table loaded under its staging name: (table, CREATE statement, staged name, copy plan).
type Staged = (String, String, String, Option<Copy>);

/// Steps 1 and 2: create every table of `tables` under a staging name in `s`, fill it page by
/// page from `b` (each page one transaction), and prove it holds what `b`'s table holds. What
/// was staged is pushed to `plans` as it goes, so a failure leaves it for the caller to drop.
fn stage_tables(
    b: &mut dyn Sql,
    s: &mut Stream,
    tables: &[(String, String)],
    from: &str,
    plans: &mut Vec<Staged>,
) -> Result<()> {
    for (i, (table, sql)) in tables.iter().enumerate() {
        let staged = format!("{STAGING}{i}");
        s.transaction(&[(renamed_create(sql, &staged)?, Vec::new())])
            .with_context(|| format!("creating {staged} for table {table}"))?;
        let plan = copy_plan(b, table)?;
        if let Some(p) = &plan {
            let skip = usize::from(matches!(p.paging, Paging::Rowid(_)) && !p.keep_rowid);
            for_each_page(b, table, &p.select, &p.paging, |rows| {
                s.transaction(&insert_page(&staged, &p.names, rows, skip))
            })
            .with_context(|| format!("copying table {table} into {staged}"))?;
        }
        let want = table_fingerprint(b, table)?;
        let got = table_fingerprint(s, &staged)?;
        if want != got {
            bail!(
                "table {table} staged as {staged} holds {} rows (hash {:?}), {from} {} rows (hash {:?})",
                got.rows,
                got.hash,
                want.rows,
                want.hash
            );
        }
        plans.push((table.clone(), sql.clone(), staged, plan));
    }
    Ok(())
}

/// Step 3's statements, one batch: drop the source's views, triggers and tables; recreate each
/// table and copy its staged rows in (`INSERT … SELECT`), dropping the staged table; restore
/// `sqlite_sequence`; recreate indexes, triggers and views.
fn swap_batch(b: &mut dyn Sql, s: &mut Stream, snap: &Schema, plans: &[Staged]) -> Result<Vec<(String, Vec<Val>)>> {
    let mut swap: Vec<(String, Vec<Val>)> = Vec::new();
    let existing = s.execute(
        "SELECT type, name FROM sqlite_master WHERE type IN ('view','trigger','table') AND name NOT LIKE 'sqlite_%' AND substr(name, 1, ?1) <> ?2",
        &[Val::Int(STAGING.len() as i64), Val::Text(STAGING.into())],
    )?;
    for kind in ["view", "trigger", "table"] {
        for r in existing.rows.iter().filter(|r| r[0].as_str() == Some(kind)) {
            let name = r[1].as_str().unwrap_or_default();
            swap.push((
                format!("DROP {} IF EXISTS {}", kind.to_ascii_uppercase(), quote_ident(name)),
                Vec::new(),
            ));
        }
    }
    for (table, sql, staged, plan) in plans {
        swap.push((sql.clone(), Vec::new()));
        if let Some(p) = plan {
            let names = p.names.join(", ");
            swap.push((
                format!(
                    "INSERT INTO {} ({names}) SELECT {names} FROM {}",
                    quote_ident(table),
                    quote_ident(staged)
                ),
                Vec::new(),
            ));
        }
        swap.push((format!("DROP TABLE {}", quote_ident(staged)), Vec::new()));
    }
    if snap.sequence {
        let rows = b.rows("SELECT name, seq FROM sqlite_sequence", &[])?;
        swap.push(("DELETE FROM sqlite_sequence".to_string(), Vec::new()));
        for r in rows.rows {
            swap.push(("INSERT INTO sqlite_sequence (name, seq) VALUES (?1, ?2)".into(), r));
        }
    }
    for (_, _, sql) in snap.objects.iter().filter(|(t, _, _)| t != "table") {
        swap.push((sql.clone(), Vec::new()));
    }
    Ok(swap)
}

impl TursoTarget {
    /// Replace every table, index, trigger and view of the source with the branch's (see the
    /// module's documentation for how).
    pub(super) fn reload(&self, rec: &TargetRecord, store: &dyn Store) -> Result<()> {
        if let Some(info) = self.find_recorded_branch(rec)? {
            // No transaction on the branch: nothing writes to it (a change would show in the
            // proof of each table and in the verification after the restore).
            let branch = self.branch_db(&info)?;
            let mut b = branch.stream();
            let r = self.reload_from(&mut b, &format!("branch {}", info.name));
            b.close();
            return r;
        }
        // The branch is gone (deleted outside guard): the export is the other way back.
        let name = rec.meta.get("branch").cloned().unwrap_or_default();
        let Some(a) = rec.artifacts.iter().find(|a| a.format == "sql") else {
            bail!("branch database {name} of this snapshot no longer exists and the snapshot has no export (export = false): there is nothing to reload from");
        };
        crate::errln!(
            "guard: branch database {name} no longer exists; reloading {} from the export {}/{}",
            self.t.database,
            store.location(),
            a.key
        );
        let scratch = crate::store::state::scratch_dir(store)?;
        let mut c = load_export(store, a, &scratch.path().join("export.db"))?;
        c.execute_batch("BEGIN")?;
        self.reload_from(&mut c, &format!("the export {}", a.key))
    }

    /// Staged tables left in the source (by this reload, or one that did not finish).
    fn staged(&self, s: &mut Stream) -> Result<Vec<String>> {
        let r = s.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND substr(name, 1, ?1) = ?2",
            &[Val::Int(STAGING.len() as i64), Val::Text(STAGING.into())],
        )?;
        Ok(r.rows
            .iter()
            .filter_map(|r| r.first().and_then(Val::as_str).map(String::from))
            .collect())
    }

    /// Drop staged tables, each in its own short transaction.
    fn drop_staged(&self, s: &mut Stream) -> Result<()> {
        for t in self.staged(s)? {
            s.transaction(&[(format!("DROP TABLE IF EXISTS {}", quote_ident(&t)), Vec::new())])?;
        }
        Ok(())
    }

    /// The reload itself, reading the snapshot's state from `b` (the branch, or the export
    /// loaded into a local SQLite file).
    pub(super) fn reload_from(&self, b: &mut dyn Sql, from: &str) -> Result<()> {
        let source = self.source_db()?;
        let snap = Schema::read(b, from)?;

        let mut s = source.stream();
        // Foreign keys are checked per connection: off, so that loading and swapping tables
        // in any order is allowed.
        s.execute("PRAGMA foreign_keys=OFF", &[])?;
        let db = &self.t.database;
        self.drop_staged(&mut s)
            .with_context(|| format!("reloading {db}: dropping the staged tables of an earlier reload"))?;

        // 1 and 2: load and prove every table, in short transactions.
        let mut plans = Vec::with_capacity(snap.tables.len());
        if let Err(e) = stage_tables(b, &mut s, &snap.tables, from, &mut plans) {
            let cleaned = self.drop_staged(&mut s).is_ok();
            s.close();
            return Err(e.context(format!(
                "reloading {db} from {from}: loading the snapshot's tables failed before anything of {db} was changed{}",
                if cleaned {
                    " (the staged tables were dropped)"
                } else {
                    "; the staged tables _guard_reload_* are left and the next reload drops them"
                }
            )));
        }

        // 3: the swap, one transaction in one request.
        let swap = swap_batch(b, &mut s, &snap, &plans)?;
        if let Err(e) = s.transaction(&swap) {
            // The batch's own ROLLBACK step ran unless the request itself was lost: the staged
            // tables still being there says the swap did not commit.
            let left = self.staged(&mut s).map(|v| v.len()).unwrap_or(0);
            let undone = left == plans.len() && !plans.is_empty();
            let cleaned = undone && self.drop_staged(&mut s).is_ok();
            s.close();
            return Err(e.context(if undone {
                format!(
                    "reloading {db} from {from}: the swap failed and was rolled back, nothing visible changed in {db}{}",
                    if cleaned { " (the staged tables were dropped)" } else { "; the staged tables _guard_reload_* are left and the next reload drops them" }
                )
            } else {
                format!("reloading {db} from {from}: the swap's request failed and its outcome is unknown; the verification below compares {db} with the snapshot")
            }));
        }
        s.close();
        Ok(())
    }

    pub(super) fn promote_instructions(&self, rec: &TargetRecord) -> Result<String> {
        let info = self.recorded_branch(rec)?;
        let was = match &self.t.db_url {
            Some(u) => u.clone(),
            None => match self.find_database(&self.t.database) {
                Ok(Some(d)) => format!("libsql://{}", d.hostname),
                _ => format!("the URL of {}", self.t.database),
            },
        };
        let when = rec
            .meta
            .get("seed_timestamp")
            .cloned()
            .unwrap_or_else(|| "the snapshot".into());
        Ok(format!(
            "restore = \"promote\": guard did not change {db}; the pre-run state is branch database {b}. Restore is not automatic — repoint the application:\n  \
             1. database URL: libsql://{host}   (instead of {was})\n  \
             2. mint a token for it (tokens of {db} do not work on it): turso db tokens create {b}\n  \
             3. put both where the application reads them (for example TURSO_DATABASE_URL and TURSO_AUTH_TOKEN) and restart it\n  \
             4. in this policy set database = \"{b}\" (and db_url/db_token if you set them)\n  \
             5. once the application works, retire the failed database: turso db destroy {db} (its state is in the rescue snapshot's branch)\n  \
             The branch holds {db} as of {when}; writes made since then are only in {db} and its rescue branch.",
            db = self.t.database,
            b = info.name,
            host = info.hostname,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_statements_are_renamed_whatever_the_quoting() {
        for (sql, rest) in [
            (
                "CREATE TABLE readings (id INTEGER PRIMARY KEY, v)",
                " (id INTEGER PRIMARY KEY, v)",
            ),
            ("CREATE TABLE readings(id)", "(id)"),
            ("CREATE TABLE \"my \"\"odd\"\" table\" (x)", " (x)"),
            ("CREATE TABLE [brackets] (x)", " (x)"),
            ("CREATE TABLE `ticks` (x)", " (x)"),
            ("CREATE TABLE 'single' (x)", " (x)"),
            ("CREATE TABLE IF NOT EXISTS t (x) WITHOUT ROWID", " (x) WITHOUT ROWID"),
        ] {
            assert_eq!(
                renamed_create(sql, "_guard_reload_3").unwrap(),
                format!("CREATE TABLE \"_guard_reload_3\"{rest}"),
                "{sql}"
            );
        }
        assert!(renamed_create("CREATE VIEW v AS SELECT 1", "x").is_err());
        assert!(renamed_create("CREATE TABLE \"unterminated (x)", "x").is_err());
    }

    #[test]
    fn infinities_travel_as_literals() {
        let names = vec!["\"a\"".to_string(), "\"b\"".to_string()];
        let rows = vec![
            vec![Val::Int(1), Val::Float(1.5), Val::Text("x".into())],
            vec![Val::Int(2), Val::Float(f64::INFINITY), Val::Float(f64::NEG_INFINITY)],
        ];
        let stmts = insert_page("t", &names, &rows, 1);
        assert_eq!(stmts[0].0, "INSERT INTO \"t\" (\"a\", \"b\") VALUES (?1, ?2)");
        assert_eq!(stmts[0].1, vec![Val::Float(1.5), Val::Text("x".into())]);
        assert_eq!(
            stmts[1].0,
            "INSERT INTO \"t\" (\"a\", \"b\") VALUES (coalesce(?1, 9e999), coalesce(?2, -9e999))"
        );
        assert_eq!(stmts[1].1, vec![Val::Null, Val::Null]);
        // The statements give SQLite the same values.
        let c = rusqlite::Connection::open_in_memory().unwrap();
        c.execute_batch("CREATE TABLE t (a, b)").unwrap();
        for (sql, args) in &stmts {
            let p: Vec<rusqlite::types::Value> = args
                .iter()
                .map(|v| match v {
                    Val::Float(f) => rusqlite::types::Value::Real(*f),
                    Val::Text(t) => rusqlite::types::Value::Text(t.clone()),
                    _ => rusqlite::types::Value::Null,
                })
                .collect();
            c.execute(sql, rusqlite::params_from_iter(p)).unwrap();
        }
        let inf: (f64, f64) = c
            .query_row("SELECT a, b FROM t WHERE rowid = 2", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap();
        assert_eq!(inf, (f64::INFINITY, f64::NEG_INFINITY));
    }
}
