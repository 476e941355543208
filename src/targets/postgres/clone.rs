//! `snapshot = "clone"` (issue 17): a guarded run's pre-run snapshot is a clone database, kept
//! for a restore by rename; its dump is written into the store from the clone while the
//! command runs ([`super::deferred`]).
//!
//! Before the command: the live database's own state (owner, comment, connection limit, ACL,
//! settings: [`DbState`]) is read; other sessions on it are ended (`sessions = "terminate"`) or,
//! under `refuse`, the clone is not made and the dump is taken as before, saying so; then
//! `CREATE DATABASE guard_hot_RUN_H TEMPLATE db STRATEGY FILE_COPY ALLOW_CONNECTIONS false`
//! (PostgreSQL 15; the default strategy before), the live state carried over to the clone
//! except its ACL: every privilege revoked, `CONNECT` granted to guard's own role alone (no
//! other role's privilege there, so a command may still drop a role it revoked on the live
//! database), and only then is it opened to
//! connections: from its creation until it is closed again ([`super::deferred`]) only guard's
//! role or a superuser can connect to it. A role without `CREATEDB` (or any refusal) falls back
//! to the dump of the live database, with a message.
//!
//! After a failure, on one session on the `postgres` database — opened before the command and
//! kept for this ([`PostgresTarget::keep_for_swap`]; a new one if it no longer answers), so no
//! connection is made after the command's exit: guard's own sessions on the clone (its dump,
//! still being written) are ended, the live database's other sessions seen to (`sessions`),
//! and, once the clone's backends are gone (polled from 1 ms, doubling), in one transaction the
//! failed database is renamed `guard_failed_RUN_H`, the clone takes its name, gets the live
//! `CONNECT` grants back and is opened to connections again. The proof is the OID: the live name now names the clone, closed
//! to connections since guard's two read-only sessions (the ones it ends here) were checked to
//! be its only ones. The failed database is then dumped into the rescue snapshot and dropped.
//! The clone is dropped when the run ends; `guard recover` drops a killed run's.

use anyhow::{anyhow, bail, Context, Result};
use sha2::Digest;
use sqlx::Connection as _;
use sqlx::Row as _;

use std::collections::BTreeMap;

use super::conn::{quote_ident, quote_literal, Session};
use super::database::DbState;
use super::PostgresTarget;
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
            held: Default::default(),
            swap_session: Default::default(),
        }
    }

    /// Make run `tag`'s clone of the live database, with the live database's own state (which
    /// comes back too) except its ACL: only guard's role holds a privilege, `CONNECT`. `Err` is
    /// why there is none (nothing was left behind).
    pub(super) fn make_clone(&self, tag: &str) -> Result<(String, DbState)> {
        let db = self.dbname();
        let (clone, _) = self.hot_names(tag);
        let state = {
            let mut c = self.session()?;
            let s = c.run(DbState::capture);
            drop(c);
            s?
        };
        // Refused (`crate::targets::SessionsBlock`), or ended, per `sessions`.
        let mut m = self.maintenance_session()?;
        self.handle_sessions_on(&mut m, &db)?;
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
                // Closed to connections from the start: nobody but guard's role (or a superuser)
                // can reach it until [`super::deferred`] closes it again.
                sqlx::query(&format!(
                    "CREATE DATABASE {} TEMPLATE {}{strategy} ALLOW_CONNECTIONS false",
                    quote_ident(clone),
                    quote_ident(db)
                ))
                .execute(&mut *m)
                .await?;
                let carried = async {
                    sqlx::raw_sql(&format!("DO {}", dollar_quote(&carry_sql(state, clone))))
                        .execute(&mut *m)
                        .await?;
                    sqlx::raw_sql(&format!("DO {}", dollar_quote(&restrict_sql(clone))))
                        .execute(&mut *m)
                        .await?;
                    // The swap puts the live CONNECT grants back in its transaction: rehearsed now.
                    let mut tx = m.begin().await?;
                    sqlx::raw_sql(&format!("DO {}", dollar_quote(&carry_sql(state, clone))))
                        .execute(&mut *tx)
                        .await?;
                    tx.rollback().await?;
                    sqlx::query(&format!("ALTER DATABASE {} ALLOW_CONNECTIONS true", quote_ident(clone)))
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
        Ok((clone, state))
    }

    /// Keep maintenance session `m` for the swap a failed command makes ([`Self::swap_clone`]),
    /// PL/pgSQL loaded for its `DO` block: after the command's exit, no connection to open (a
    /// backend forked, authenticated) before the rename. Only a session on `postgres`: one held
    /// on `template1` would make a command's `CREATE DATABASE` (which copies it) fail.
    pub(super) fn keep_for_swap(&self, mut m: Session) {
        let on_postgres = m
            .scalar::<String>("SELECT pg_catalog.current_database()::text")
            .is_ok_and(|d| d == "postgres");
        // The swap's first queries prepared now (one round trip each then, not two).
        let warm = on_postgres
            && m.run(|c| sqlx::raw_sql("DO $guard$BEGIN NULL; END$guard$").execute(c))
                .is_ok()
            && databases(&mut m, &["postgres"]).is_ok()
            && super::restore::other_sessions_on(&mut m, &self.live_db(), std::time::Duration::ZERO).is_ok();
        if warm {
            *self.swap_session.lock().unwrap_or_else(|p| p.into_inner()) = Some(m);
        }
    }

    /// The session of the swap and which of `names` exist ([`databases`]): on the session kept
    /// since the snapshot when it still answers, else on a new one (the server restarted, an
    /// `idle_session_timeout` ended it).
    fn swap_session(&self, names: &[&str]) -> Result<(Session, Databases)> {
        if let Some(mut s) = self.swap_session.lock().unwrap_or_else(|p| p.into_inner()).take() {
            match databases(&mut s, names) {
                Ok(found) => return Ok((s, found)),
                Err(_) => s.abandon(),
            }
        }
        let mut s = self.maintenance_session()?;
        let found = databases(&mut s, names)?;
        Ok((s, found))
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

    /// Is the target's database the clone `rec` records, renamed into place (its OID, open to
    /// connections)?
    pub(super) fn clone_in_place(&self, rec: &TargetRecord) -> Result<bool> {
        let Some(want) = rec.meta.get("hot_oid") else {
            return Ok(false);
        };
        Ok(matches!(self.db_exists(&self.dbname())?, Some((oid, true)) if oid.to_string() == *want))
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
        // One session for the whole swap — every check, the sessions ended, the transaction —
        // opened before the command.
        let (mut m, found) = self.swap_session(&[&clone, &aside, &db])?;
        match found.get(&clone) {
            Some(&(oid, false)) if oid.to_string() == *want => {}
            Some(&(oid, allow)) => bail!(
                "the clone {clone} is not as its snapshot left it (OID {oid}, recorded {want}; open to connections: {allow}); it is not used"
            ),
            None => return Ok(None),
        }
        if found.contains_key(&aside) {
            // An earlier, interrupted attempt set the failed database aside: it stays.
            return Ok(None);
        }
        let had_live = found.contains_key(&db);
        // guard's sessions on the clone are ended first: their backends exit while the live
        // database's sessions are seen to.
        self.end_dump_sessions(&mut m, rec, &clone, false)?;
        if had_live {
            self.handle_sessions_on(&mut m, &db)?;
        }
        self.end_dump_sessions(&mut m, rec, &clone, true)?;
        let state: Option<DbState> = match rec.meta.get("database_state") {
            Some(s) => Some(serde_json::from_str(s).context("manifest: database_state")?),
            None => None,
        };
        let r = m.run(|m| {
            let (db, clone, aside, state) = (&db, &clone, &aside, &state);
            async move {
                // Simple-protocol statements: one round trip each (a prepared one takes two).
                let mut tx = m.begin().await?;
                if had_live {
                    sqlx::raw_sql(&format!(
                        "ALTER DATABASE {} RENAME TO {}",
                        quote_ident(db),
                        quote_ident(aside)
                    ))
                    .execute(&mut *tx)
                    .await?;
                }
                crate::faults::test_pause("pg-swap");
                // The live CONNECT grants (guard's role alone held CONNECT on the clone) and the
                // rest of the live state — a role the command dropped recreated NOLOGIN, as a
                // restore does — then the clone takes the name and opens: one round trip.
                let carry = match state {
                    Some(state) => format!("DO {};\n", dollar_quote(&swap_sql(state, clone))),
                    None => String::new(),
                };
                sqlx::raw_sql(&format!(
                    "{carry}ALTER DATABASE {} RENAME TO {};\nALTER DATABASE {} ALLOW_CONNECTIONS true",
                    quote_ident(clone),
                    quote_ident(db),
                    quote_ident(db)
                ))
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

/// Databases by name: (OID, open to connections).
type Databases = BTreeMap<String, (i64, bool)>;

/// Which of databases `names` exist, through session `m`.
fn databases(m: &mut Session, names: &[&str]) -> Result<Databases> {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    Ok(m.fetch_all_with(
        "SELECT datname::text, oid::int8, datallowconn FROM pg_catalog.pg_database WHERE datname = ANY($1)",
        names,
    )?
    .iter()
    .map(|r| (r.get(0), (r.get(1), r.get(2))))
    .collect())
}

/// The DO body that gives database `name` the live database's state `state` (owner, comment,
/// connection limit, ACL, settings), touching only what differs.
fn carry_sql(state: &DbState, name: &str) -> String {
    state
        .apply_sql(false)
        .replace("pg_catalog.current_database()", &quote_literal(name))
}

/// The DO body of the swap: each role `state` names that does not exist created `NOLOGIN`
/// ([`recreate_grantees_sql`]), then [`carry_sql`] (the live state given to the clone `name`).
fn swap_sql(state: &DbState, name: &str) -> String {
    carry_sql(state, name).replacen("\nBEGIN\n", &format!("\nBEGIN\n{}", recreate_grantees_sql(state)), 1)
}

/// Statements creating, `NOLOGIN`, each role `state` names that does not exist: the grantees of
/// its ACL and the roles with settings in the database (a command may have dropped either; the
/// swap's `ALTER ROLE … IN DATABASE` and `GRANT` need them).
fn recreate_grantees_sql(state: &DbState) -> String {
    let mut b = String::from("NULL;\n");
    let mut seen = std::collections::BTreeSet::new();
    let grantees = state.grants.iter().map(|g| g.grantee.as_str());
    let with_settings = state.settings.iter().map(|s| s.role.as_str());
    for role in grantees.chain(with_settings).filter(|r| !r.is_empty()) {
        if seen.insert(role) {
            b.push_str(&format!(
                "IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) {}) THEN\n  CREATE ROLE {} NOLOGIN;\nEND IF;\n",
                quote_literal(role),
                quote_ident(role)
            ));
        }
    }
    b
}

/// The DO body that leaves database `name` with one privilege, `CONNECT` for guard's own role:
/// every privilege revoked from `PUBLIC` and every grantee (as the owner), `CONNECT` granted to
/// `current_user`; a `CONNECT` left by a grantor guard cannot act as fails it. No other role's
/// privilege on the clone: a command may revoke a role's privileges on the live database and
/// drop it, which a grant on the clone would refuse. The swap puts the live ACL back.
fn restrict_sql(name: &str) -> String {
    let acl = "pg_catalog.aclexplode(coalesce(d.datacl, pg_catalog.acldefault('d', d.datdba)))";
    format!(
        "DECLARE db text := {lit}; r record;
BEGIN
  FOR r IN SELECT DISTINCT a.grantee FROM pg_catalog.pg_database d, {acl} a
           WHERE d.datname OPERATOR(pg_catalog.=) db LOOP
    EXECUTE 'REVOKE ALL ON DATABASE ' || pg_catalog.quote_ident(db) || ' FROM ' || CASE WHEN r.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC' ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(r.grantee)) END || ' CASCADE';
  END LOOP;
  EXECUTE 'GRANT CONNECT ON DATABASE ' || pg_catalog.quote_ident(db) || ' TO ' || pg_catalog.quote_ident(current_user);
  IF EXISTS (SELECT 1 FROM pg_catalog.pg_database d, {acl} a
             WHERE d.datname OPERATOR(pg_catalog.=) db AND a.privilege_type OPERATOR(pg_catalog.=) 'CONNECT'
               AND a.grantee OPERATOR(pg_catalog.<>) (SELECT oid FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) current_user)) THEN
    RAISE EXCEPTION 'CONNECT on % is also granted by a role guard cannot act as', db;
  END IF;
END",
        lit = quote_literal(name)
    )
}

/// `$tag$body$tag$` with a tag the body does not contain.
fn dollar_quote(body: &str) -> String {
    let mut tag = String::from("guard");
    while body.contains(&format!("${tag}$")) {
        tag.push('x');
    }
    format!("${tag}${body}${tag}$")
}
