//! `snapshot = "clone"` (issue 17): a guarded run's pre-run snapshot is a clone database,
//! dumped into the store, and kept for a restore by rename.
//!
//! Before the command: the live database's own state (owner, comment, connection limit, ACL,
//! settings: [`DbState`]) is read; other sessions on it are ended (`sessions = "terminate"`) or,
//! under `refuse`, the clone is not made and the dump is taken as before, saying so; then
//! `CREATE DATABASE guard_hot_RUN_H TEMPLATE db STRATEGY FILE_COPY` (PostgreSQL 15; the default
//! strategy before), the live state carried over to the clone, and the snapshot — dump,
//! fingerprints, checks — taken from the clone, which nothing else writes. Then the clone is
//! closed to connections (`ALLOW_CONNECTIONS false`) and its OID recorded (`meta.hot_oid`).
//! A role without `CREATEDB` (or any refusal) falls back to the dump of the live database,
//! with a message.
//!
//! After a failure, in one transaction on a maintenance database: the failed database is
//! renamed `guard_failed_RUN_H`, the clone takes its name and is opened to connections again.
//! The proof is the OID: the live name now names the clone, closed to connections since its
//! snapshot. The failed database is then dumped into the rescue snapshot and dropped. The
//! clone is dropped when the run ends; `guard recover` drops a killed run's.

use anyhow::{anyhow, bail, Context, Result};
use sha2::Digest;
use sqlx::Connection as _;

use super::conn::{quote_ident, quote_literal};
use super::database::DbState;
use super::{PostgresTarget, Sessions};
use crate::manifest::TargetRecord;

impl PostgresTarget {
    /// The clone and the set-aside names of run `tag` for this target's database.
    pub(super) fn hot_names(&self, tag: &str) -> (String, String) {
        let db = self.live_db();
        let h = hex::encode(&sha2::Sha256::digest(db.as_bytes())[..4]);
        let t: String = tag
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .take(32)
            .collect();
        (format!("guard_hot_{t}_{h}"), format!("guard_failed_{t}_{h}"))
    }

    /// The database this target protects (a view's is the live one's, not its own).
    pub(super) fn live_db(&self) -> String {
        self.shown_db.clone().unwrap_or_else(|| self.dbname())
    }

    /// This target over database `db` of the same server, recorded as this target.
    pub(super) fn view(&self, db: &str) -> PostgresTarget {
        let mut conn = self.conn.clone();
        conn.dbname = Some(db.to_string());
        PostgresTarget {
            spec: self.spec.clone(),
            pg: self.pg.clone(),
            conn,
            from_manifest: false,
            tools: std::sync::OnceLock::new(),
            scratch: None,
            shown_db: Some(self.live_db()),
        }
    }

    /// Make run `tag`'s clone of the live database, with the live database's own state. `Err`
    /// is why there is none (nothing was left behind).
    pub(super) fn make_clone(&self, tag: &str) -> Result<String> {
        let db = self.dbname();
        let (clone, _) = self.hot_names(tag);
        let state = {
            let mut c = self.session()?;
            let s = c.run(DbState::capture);
            drop(c);
            s?
        };
        let others = self.other_sessions(&db)?;
        if !others.is_empty() {
            if self.pg.sessions == Sessions::Refuse {
                return Err(crate::targets::SessionsBlock {
                    target: self.spec.name.clone(),
                    summary: super::restore::summarize(&db, &others),
                }
                .into());
            }
            self.handle_sessions(&db)?;
        }
        let mut m = self.maintenance_session()?;
        let r = m.run(|m| {
            let (clone, db, state) = (&clone, &db, &state);
            async move {
                let num: String = sqlx::query_scalar("SHOW server_version_num").fetch_one(&mut *m).await?;
                let strategy = if num.trim().parse::<u32>().unwrap_or(0) >= 150000 {
                    " STRATEGY FILE_COPY"
                } else {
                    ""
                };
                sqlx::query(&format!("DROP DATABASE IF EXISTS {}", quote_ident(clone)))
                    .execute(&mut *m)
                    .await?;
                sqlx::query(&format!(
                    "CREATE DATABASE {} TEMPLATE {}{strategy}",
                    quote_ident(clone),
                    quote_ident(db)
                ))
                .execute(&mut *m)
                .await?;
                let carried = async {
                    let body = state
                        .apply_sql(false)
                        .replace("pg_catalog.current_database()", &quote_literal(clone));
                    sqlx::raw_sql(&format!("DO {}", dollar_quote(&body)))
                        .execute(&mut *m)
                        .await?;
                    Ok::<_, sqlx::Error>(())
                }
                .await;
                if let Err(e) = carried {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {}", quote_ident(clone)))
                        .execute(&mut *m)
                        .await;
                    return Err(anyhow!(
                        "carrying the database's owner, ACL and settings over to the clone: {e}"
                    ));
                }
                Ok::<_, anyhow::Error>(())
            }
        });
        drop(m);
        r.map_err(|e| anyhow!("{}", crate::secrets::redact(&format!("{e:#}"))))?;
        Ok(clone)
    }

    /// Close the clone to connections and record it in `rec`, once its snapshot is taken.
    pub(super) fn freeze_clone(&self, clone: &str, tag: &str, rec: &mut TargetRecord) -> Result<()> {
        let mut m = self.maintenance_session()?;
        let oid: Result<i64> = m.run(|m| async move {
            sqlx::query(&format!(
                "ALTER DATABASE {} ALLOW_CONNECTIONS false",
                quote_ident(clone)
            ))
            .execute(&mut *m)
            .await?;
            let oid: i64 = sqlx::query_scalar("SELECT oid::int8 FROM pg_database WHERE datname = $1")
                .bind(clone)
                .fetch_one(&mut *m)
                .await?;
            Ok(oid)
        });
        drop(m);
        let oid = oid?;
        rec.meta.insert("hot".into(), tag.to_string());
        rec.meta.insert("hot_oid".into(), oid.to_string());
        rec.meta.insert("database".into(), self.dbname());
        Ok(())
    }

    /// Drop database `name` if it exists (a clone or a set-aside database: guard's names only).
    pub(super) fn drop_db(&self, name: &str) -> Result<()> {
        if !name.starts_with("guard_hot_") && !name.starts_with("guard_failed_") {
            bail!("{name} is not a database guard made");
        }
        let mut m = self.maintenance_session()?;
        let r = m.run(|m| async move {
            // A set-aside database a rescue snapshot just read may still show its session.
            sqlx::query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            )
            .bind(name)
            .execute(&mut *m)
            .await?;
            sqlx::query(&format!("DROP DATABASE IF EXISTS {}", quote_ident(name)))
                .execute(&mut *m)
                .await?;
            Ok::<_, sqlx::Error>(())
        });
        drop(m);
        r.with_context(|| format!("cannot drop database {name}"))
    }

    /// Does database `name` exist?
    pub(super) fn db_exists(&self, name: &str) -> Result<Option<(i64, bool)>> {
        let mut m = self.maintenance_session()?;
        let r = m.run(|m| {
            sqlx::query_as::<_, (i64, bool)>("SELECT oid::int8, datallowconn FROM pg_database WHERE datname = $1")
                .bind(name)
                .fetch_optional(m)
        });
        drop(m);
        Ok(r?)
    }

    /// Put `rec` back by renaming run `tag`'s clone into place, the failed database renamed
    /// aside, in one transaction. `Ok(None)`: no usable clone, nothing changed. `Ok(Some(aside))`:
    /// restored; the failed database is `aside` (`None` inside when there was none).
    pub(super) fn swap_clone(&self, rec: &TargetRecord, tag: &str) -> Result<Option<Option<String>>> {
        let (Some(rec_tag), Some(want)) = (rec.meta.get("hot"), rec.meta.get("hot_oid")) else {
            return Ok(None);
        };
        if rec_tag != tag || rec.absent {
            return Ok(None);
        }
        let db = self.dbname();
        let (clone, aside) = self.hot_names(tag);
        match self.db_exists(&clone)? {
            Some((oid, false)) if oid.to_string() == *want => {}
            Some((oid, allow)) => bail!(
                "the clone {clone} is not as its snapshot left it (OID {oid}, recorded {want}; open to connections: {allow}); it is not used"
            ),
            None => return Ok(None),
        }
        if self.db_exists(&aside)?.is_some() {
            // An earlier, interrupted attempt set the failed database aside: it stays.
            return Ok(None);
        }
        let had_live = self.db_exists(&db)?.is_some();
        if had_live {
            self.handle_sessions(&db)?;
        }
        let mut m = self.maintenance_session()?;
        let r = m.run(|m| {
            let (db, clone, aside) = (&db, &clone, &aside);
            async move {
                let mut tx = m.begin().await?;
                if had_live {
                    sqlx::query(&format!(
                        "ALTER DATABASE {} RENAME TO {}",
                        quote_ident(db),
                        quote_ident(aside)
                    ))
                    .execute(&mut *tx)
                    .await?;
                }
                crate::faults::test_pause("pg-swap");
                sqlx::query(&format!(
                    "ALTER DATABASE {} RENAME TO {}",
                    quote_ident(clone),
                    quote_ident(db)
                ))
                .execute(&mut *tx)
                .await?;
                sqlx::query(&format!("ALTER DATABASE {} ALLOW_CONNECTIONS true", quote_ident(db)))
                    .execute(&mut *tx)
                    .await?;
                let oid: i64 = sqlx::query_scalar("SELECT oid::int8 FROM pg_database WHERE datname = $1")
                    .bind(db)
                    .fetch_one(&mut *tx)
                    .await?;
                if oid.to_string() != *want {
                    return Err(sqlx::Error::Protocol(format!(
                        "{db} has OID {oid} after the rename, not {want}"
                    )));
                }
                tx.commit().await?;
                Ok::<_, sqlx::Error>(())
            }
        });
        drop(m);
        r.with_context(|| {
            format!(
                "target {}: renaming the clone {clone} into place (nothing was changed)",
                self.spec.name
            )
        })?;
        Ok(Some(had_live.then_some(aside)))
    }
}

/// `$tag$body$tag$` with a tag the body does not contain.
fn dollar_quote(body: &str) -> String {
    let mut tag = String::from("guard");
    while body.contains(&format!("${tag}$")) {
        tag.push('x');
    }
    format!("${tag}${body}${tag}$")
}
