//! Restore: `reload` replaces the source's tables, indexes, triggers and views with the
//! branch's (or an export's) in one transaction on one Hrana stream; `promote` instructions.

use anyhow::{bail, Context, Result};

use super::export::load_export;
use super::hrana::Stream;
use super::TursoTarget;
use crate::manifest::TargetRecord;
use crate::store::Store;
use crate::targets::sql::page::{columns, for_each_page, paging, Column, Paging};
use crate::targets::sql::{quote_ident, Sql, Val};

impl TursoTarget {
    /// Replace every table, index, trigger and view of the source with the branch's, in one
    /// transaction on one Hrana stream.
    pub(super) fn reload(&self, rec: &TargetRecord, store: &dyn Store) -> Result<()> {
        if let Some(info) = self.find_recorded_branch(rec)? {
            let branch = self.branch_db(&info)?;
            let mut b = branch.stream();
            b.execute("BEGIN", &[])?;
            let r = self.reload_from(&mut b, &format!("branch {}", info.name));
            let _ = b.execute("ROLLBACK", &[]);
            b.close();
            return r;
        }
        // The branch is gone (deleted outside guard): the export is the other way back.
        let name = rec.meta.get("branch").cloned().unwrap_or_default();
        let Some(a) = rec.artifacts.iter().find(|a| a.format == "sql") else {
            bail!("branch database {name} of this snapshot no longer exists and the snapshot has no export (export = false): there is nothing to reload from");
        };
        eprintln!(
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

    /// The reload itself, reading the snapshot's state from `b` (the branch, or the export
    /// loaded into a local SQLite file).
    pub(super) fn reload_from(&self, b: &mut dyn Sql, from: &str) -> Result<()> {
        let source = self.source_db()?;
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
        let sequence = b
            .rows("SELECT count(*) FROM sqlite_master WHERE name = 'sqlite_sequence'", &[])?
            .first()
            .and_then(Val::as_int)
            .unwrap_or(0)
            > 0;

        let mut s = source.stream();
        // Foreign keys are checked per connection and cannot change inside a transaction.
        s.execute("PRAGMA foreign_keys=OFF", &[])?;
        s.execute("BEGIN IMMEDIATE", &[])?;
        let result = (|| -> Result<()> {
            let existing = s.execute("SELECT type, name FROM sqlite_master WHERE type IN ('view','trigger','table') AND name NOT LIKE 'sqlite_%'", &[])?;
            let mut drops = Vec::new();
            for kind in ["view", "trigger", "table"] {
                for r in existing.rows.iter().filter(|r| r[0].as_str() == Some(kind)) {
                    let name = r[1].as_str().unwrap_or_default();
                    drops.push((
                        format!("DROP {} IF EXISTS {}", kind.to_ascii_uppercase(), quote_ident(name)),
                        Vec::new(),
                    ));
                }
            }
            s.batch(&drops)?;
            let creates: Vec<(String, Vec<Val>)> = objects
                .iter()
                .filter(|(t, _, _)| t == "table")
                .map(|(_, _, sql)| (sql.clone(), Vec::new()))
                .collect();
            s.batch(&creates)?;
            for (_, table, _) in objects.iter().filter(|(t, _, _)| t == "table") {
                self.copy_rows(b, &mut s, table)
                    .with_context(|| format!("copying table {table}"))?;
            }
            if sequence {
                let rows = b.rows("SELECT name, seq FROM sqlite_sequence", &[])?;
                let mut stmts = vec![("DELETE FROM sqlite_sequence".to_string(), Vec::new())];
                for r in rows.rows {
                    stmts.push(("INSERT INTO sqlite_sequence (name, seq) VALUES (?1, ?2)".into(), r));
                }
                s.batch(&stmts)?;
            }
            let rest: Vec<(String, Vec<Val>)> = objects
                .iter()
                .filter(|(t, _, _)| t != "table")
                .map(|(_, _, sql)| (sql.clone(), Vec::new()))
                .collect();
            s.batch(&rest)?;
            s.execute("COMMIT", &[])?;
            Ok(())
        })();
        if let Err(e) = result {
            let rolled_back = s.execute("ROLLBACK", &[]).is_ok();
            s.close();
            return Err(e.context(if rolled_back {
                format!("reloading {} from {}: rolled back, the source is unchanged", self.t.database, from)
            } else {
                format!("reloading {} from {}: the transaction was abandoned (its stream closes and the server rolls it back)", self.t.database, from)
            }));
        }
        s.close();
        Ok(())
    }

    /// Copy one table's rows from the branch stream to the source stream, typed values intact.
    pub(super) fn copy_rows(&self, b: &mut dyn Sql, s: &mut Stream, table: &str) -> Result<()> {
        let cols = columns(b, table)?;
        // Generated columns (hidden 2 and 3) are computed, not inserted.
        let insertable: Vec<&Column> = cols.iter().filter(|c| c.hidden == 0).collect();
        if insertable.is_empty() {
            return Ok(());
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
        let placeholders = (1..=names.len())
            .map(|i| format!("?{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let insert = format!(
            "INSERT INTO {} ({}) VALUES ({placeholders})",
            quote_ident(table),
            names.join(", ")
        );
        let skip = usize::from(matches!(paging, Paging::Rowid(_)) && !keep_rowid);
        for_each_page(b, table, &select, &paging, |rows| {
            let stmts: Vec<(String, Vec<Val>)> = rows.iter().map(|r| (insert.clone(), r[skip..].to_vec())).collect();
            s.batch(&stmts)
        })
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
