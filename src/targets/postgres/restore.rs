//! The restore: the database recreated as recorded, other sessions handled as the policy says,
//! and the replay — in one transaction through `psql -v ON_ERROR_STOP=1`, the preamble that puts
//! the database-level state back and empties the database, the dump's SQL (without its own
//! transaction control, [`TxnFilter`]), and a `COMMIT` that only guard can make succeed.
//!
//! The gate: the preamble creates a temporary table holding a row whose foreign key is
//! deferred to the end of the transaction and unsatisfied, so any `COMMIT` but guard's — which
//! first inserts the missing key — fails and rolls the whole restore back. Whatever the dump's
//! SQL holds, the restore is all or nothing (red-team finding 7).

use std::io::{Read, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use sqlx::Row as _;

use super::conn::{quote_ident, quote_literal, Backoff, Session, LOCK_WAIT};
use super::database::{missing_roles, DbState};
use super::tools::{drain, kill, status_text, tail, widen_pipe, Tools};
use super::txn_filter::TxnFilter;
use super::watch::BlockerWatch;
use super::{say, PostgresTarget, Sessions};
use crate::artifact::read_artifact;
use crate::manifest::{Artifact, TargetRecord};
use crate::store::Store;
use crate::targets::SessionsBlock;

/// The deferred constraint of the restore's gate: its name in an error means the dump's SQL
/// tried to commit before guard did.
pub(super) const GATE: &str = "guard_restore_incomplete";

/// After the dump's SQL, only when all of it arrived intact: open the gate and commit.
pub(super) const POSTAMBLE: &str = "\nINSERT INTO pg_temp.guard_gate_key VALUES (1);\nCOMMIT;\n";

/// `CREATE DATABASE name` with the encoding and collation the snapshot recorded (and its owner,
/// with `owner`), from `template0` so the restore starts empty.
pub(super) fn create_database_sql(name: &str, rec: &TargetRecord, owner: bool) -> String {
    let mut sql = format!("CREATE DATABASE {} TEMPLATE template0", quote_ident(name));
    if let Some(o) = rec.meta.get("db_owner").filter(|_| owner) {
        sql.push_str(&format!(" OWNER {}", quote_ident(o)));
    }
    for (key, clause) in [
        ("db_encoding", "ENCODING"),
        ("db_collate", "LC_COLLATE"),
        ("db_ctype", "LC_CTYPE"),
    ] {
        if let Some(v) = rec.meta.get(key) {
            sql.push_str(&format!(" {clause} {}", quote_literal(v)));
        }
    }
    sql
}

impl PostgresTarget {
    /// Recreate the target's database when it is gone, as recorded at snapshot time (owner,
    /// encoding, collation), so the dump has somewhere to go.
    pub(super) fn ensure_database(&self, rec: &TargetRecord, db: &str) -> Result<()> {
        if self.session_on(Some(db)).is_ok() {
            return Ok(());
        }
        let mut c = self.maintenance_session()?;
        let r: Result<()> = (|| {
            let exists: Option<i32> = c.scalar_optional("SELECT 1 FROM pg_database WHERE datname = $1", db)?;
            if exists.is_some() {
                return Ok(());
            }
            let sql = create_database_sql(db, rec, true);
            c.execute(&sql)?;
            crate::errln!(
                "guard: target {}: database {db} did not exist; created it to restore into",
                self.spec.name
            );
            Ok(())
        })();
        drop(c);
        r.with_context(|| format!("target {}: cannot recreate database {db}", self.spec.name))
    }

    /// Sessions on the database other than guard's own; waits briefly for ones that are
    /// closing (guard's own check connections, a finished migration).
    pub(super) fn other_sessions(&self, db: &str) -> Result<Vec<Other>> {
        let mut s = self.server_session()?;
        other_sessions_on(&mut s, db, CLOSING_WAIT)
    }

    /// Under `sessions = "refuse"`, the other sessions that would make a restore of this
    /// target refuse now, in one short line; `None` when there are none (or under `terminate`).
    pub(super) fn sessions_blocking_restore(&self) -> Result<Option<SessionsBlock>> {
        if self.pg.sessions == Sessions::Terminate {
            return Ok(None);
        }
        let db = self.dbname();
        let others = self.other_sessions(&db)?;
        Ok((!others.is_empty()).then(|| SessionsBlock {
            target: self.spec.name.clone(),
            summary: summarize(&db, &others),
        }))
    }

    /// Refuse, or terminate, other sessions on the database, per the policy.
    pub(super) fn handle_sessions(&self, db: &str) -> Result<()> {
        let mut s = self.server_session()?;
        self.handle_sessions_on(&mut s, db)
    }

    /// [`Self::handle_sessions`] through session `s` (on any database of the server): under
    /// `refuse`, closing sessions get up to [`CLOSING_WAIT`] to go; under `terminate`, a
    /// moment ([`TERMINATE_GRACE`]), then the ones left are ended and guard waits for their
    /// backends to exit.
    pub(super) fn handle_sessions_on(&self, s: &mut Session, db: &str) -> Result<()> {
        let grace = match self.pg.sessions {
            Sessions::Refuse => CLOSING_WAIT,
            Sessions::Terminate => TERMINATE_GRACE,
        };
        let others = other_sessions_on(s, db, grace)?;
        if others.is_empty() {
            return Ok(());
        }
        match self.pg.sessions {
            Sessions::Refuse => Err(SessionsBlock {
                target: self.spec.name.clone(),
                summary: summarize(db, &others),
            }
            .into()),
            Sessions::Terminate => {
                terminate_on(s, db, None).with_context(|| {
                    format!("target {}: cannot terminate the other sessions on {db}", self.spec.name)
                })?;
                let left = other_sessions_on(s, db, CLOSING_WAIT)?;
                if !left.is_empty() {
                    bail!(
                        "target {}: sessions survived pg_terminate_backend: {}",
                        self.spec.name,
                        summarize(db, &left)
                    );
                }
                crate::errln!(
                    "guard: target {}: terminated {}",
                    self.spec.name,
                    summarize(db, &others)
                );
                Ok(())
            }
        }
    }
}

/// How long guard waits for sessions on a database that are closing (its own check
/// connections, a migration that just finished) before it counts them as connected.
const CLOSING_WAIT: Duration = Duration::from_secs(3);

/// Under `sessions = "terminate"`, how long the sessions found on a database get to close by
/// themselves before guard ends them (the backend of a client that just exited takes a moment
/// to go): the wait is cut short as soon as none is left.
const TERMINATE_GRACE: Duration = Duration::from_millis(250);

/// The client sessions on `db` other than `s`'s own, through `s` (on any database of the
/// server), polled with a back-off for up to `wait` until there are none.
pub(super) fn other_sessions_on(s: &mut Session, db: &str, wait: Duration) -> Result<Vec<Other>> {
    let deadline = Instant::now() + wait;
    let mut backoff = Backoff::new();
    loop {
        let rows = s.fetch_all_with(
            "SELECT pid, coalesce(usename, '')::text, coalesce(application_name, '')::text, coalesce(client_addr::text, 'local')
             FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid() AND backend_type = 'client backend' ORDER BY pid",
            db,
        )?;
        let list: Vec<Other> = rows
            .iter()
            .map(|r| Other {
                user: r.get::<String, _>(1),
                application: r.get::<String, _>(2),
                client: r.get::<String, _>(3),
            })
            .collect();
        if list.is_empty() || Instant::now() >= deadline {
            return Ok(list);
        }
        backoff.sleep(deadline);
    }
}

/// End the client sessions on `db` other than `s`'s own (only `pids` of them, when given):
/// the caller polls for their backends to go. (`pg_terminate_backend(pid, timeout)` of
/// PostgreSQL 14 waits in steps of 100 ms, measured: a backend that exits in 1 ms costs 100.)
pub(super) fn terminate_on(s: &mut Session, db: &str, pids: Option<&[i32]>) -> Result<()> {
    let sql = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
        WHERE datname = $1 AND pid <> pg_backend_pid() AND backend_type = 'client backend' AND ($2::int4[] IS NULL OR pid = ANY($2))";
    let pids: Option<Vec<i32>> = pids.map(<[i32]>::to_vec);
    s.run(|c| sqlx::query(sql).bind(db).bind(pids).execute(c))?;
    Ok(())
}

/// Another session on the database: who it is, as `pg_stat_activity` says.
pub(super) struct Other {
    user: String,
    application: String,
    client: String,
}

/// `2 other sessions on database erp: application "erp-app" (user app, client local) ×2`: the
/// sessions grouped by application, user and client, each group once with its count.
pub(super) fn summarize(db: &str, others: &[Other]) -> String {
    let mut groups: std::collections::BTreeMap<(&str, &str, &str), usize> = Default::default();
    for o in others {
        *groups
            .entry((o.application.as_str(), o.user.as_str(), o.client.as_str()))
            .or_default() += 1;
    }
    let parts: Vec<String> = groups
        .iter()
        .map(|((app, user, client), n)| {
            let app = if app.is_empty() {
                "(none)".to_string()
            } else {
                format!("{app:?}")
            };
            let n = if *n > 1 { format!(" ×{n}") } else { String::new() };
            format!("application {app} (user {user}, client {client}){n}")
        })
        .collect();
    let n = others.len();
    format!(
        "{n} other session{} on database {db}: {}",
        if n == 1 { "" } else { "s" },
        parts.join(", ")
    )
}

/// `DO $tag$ body $tag$;` with a tag the body does not contain.
fn do_block(body: &str) -> String {
    let mut tag = String::from("guard");
    while body.contains(&format!("${tag}$")) {
        tag = format!("guard_{:08x}", rand::random::<u32>());
    }
    format!("DO ${tag}$\n{body}\n${tag}$;\n")
}

/// Objects outside schemas that the dump recreates (or the command may have added), then every
/// user schema with everything in it, casts, languages and access methods left over, large
/// objects, and the global default privileges (reset to the built-in ones, which the dump's
/// `ALTER DEFAULT PRIVILEGES` statements start from). `IF EXISTS`: a cascade may have dropped
/// an object a later loop lists.
const EMPTY_DATABASE: &str = r"DECLARE r record; g record; w text;
BEGIN
  IF pg_catalog.to_regclass('pg_catalog.pg_publication') IS NOT NULL THEN -- PostgreSQL 10+
    FOR r IN SELECT pubname FROM pg_catalog.pg_publication LOOP
      EXECUTE pg_catalog.format('DROP PUBLICATION IF EXISTS %I', r.pubname);
    END LOOP;
  END IF;
  FOR r IN SELECT extname FROM pg_catalog.pg_extension WHERE oid >= 16384 LOOP
    EXECUTE pg_catalog.format('DROP EXTENSION IF EXISTS %I CASCADE', r.extname);
  END LOOP;
  FOR r IN SELECT srvname FROM pg_catalog.pg_foreign_server LOOP
    EXECUTE pg_catalog.format('DROP SERVER IF EXISTS %I CASCADE', r.srvname);
  END LOOP;
  FOR r IN SELECT fdwname FROM pg_catalog.pg_foreign_data_wrapper LOOP
    EXECUTE pg_catalog.format('DROP FOREIGN DATA WRAPPER IF EXISTS %I CASCADE', r.fdwname);
  END LOOP;
  FOR r IN SELECT nspname FROM pg_catalog.pg_namespace WHERE nspname NOT LIKE 'pg\_%' AND nspname <> 'information_schema' LOOP
    EXECUTE pg_catalog.format('DROP SCHEMA IF EXISTS %I CASCADE', r.nspname);
  END LOOP;
  FOR r IN SELECT castsource::pg_catalog.regtype::text AS s, casttarget::pg_catalog.regtype::text AS t FROM pg_catalog.pg_cast WHERE oid >= 16384 LOOP
    EXECUTE pg_catalog.format('DROP CAST IF EXISTS (%s AS %s) CASCADE', r.s, r.t);
  END LOOP;
  FOR r IN SELECT lanname FROM pg_catalog.pg_language WHERE oid >= 16384 LOOP
    EXECUTE pg_catalog.format('DROP LANGUAGE IF EXISTS %I CASCADE', r.lanname);
  END LOOP;
  FOR r IN SELECT amname FROM pg_catalog.pg_am WHERE oid >= 16384 LOOP
    EXECUTE pg_catalog.format('DROP ACCESS METHOD IF EXISTS %I CASCADE', r.amname);
  END LOOP;
  PERFORM pg_catalog.lo_unlink(oid) FROM pg_catalog.pg_largeobject_metadata;
  FOR r IN SELECT pg_catalog.pg_get_userbyid(defaclrole) AS role, defaclobjtype AS t, defaclacl AS acl
           FROM pg_catalog.pg_default_acl WHERE defaclnamespace = 0 LOOP
    w := CASE r.t WHEN 'r' THEN 'TABLES' WHEN 'S' THEN 'SEQUENCES' WHEN 'f' THEN 'FUNCTIONS' WHEN 'T' THEN 'TYPES' WHEN 'n' THEN 'SCHEMAS' END;
    CONTINUE WHEN w IS NULL;
    FOR g IN SELECT DISTINCT grantee FROM pg_catalog.aclexplode(r.acl) LOOP
      EXECUTE pg_catalog.format('ALTER DEFAULT PRIVILEGES FOR ROLE %I REVOKE ALL ON %s FROM %s', r.role, w,
        CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(g.grantee)) END);
    END LOOP;
    EXECUTE pg_catalog.format('ALTER DEFAULT PRIVILEGES FOR ROLE %I GRANT ALL ON %s TO %I', r.role, w, r.role);
    IF r.t IN ('f', 'T') THEN
      EXECUTE pg_catalog.format('ALTER DEFAULT PRIVILEGES FOR ROLE %I GRANT ALL ON %s TO PUBLIC', r.role, w);
    END IF;
  END LOOP;
END";

/// The SQL run before the dump's own, in the restore's transaction (see the module doc):
/// event triggers dropped first (none may fire on what follows), the roles in `create_roles`
/// created `NOLOGIN`, the database-level state put back as recorded (before the gate and the
/// dump, so the privileges they need are the snapshot's), the gate, the database emptied, and
/// `public` recreated with its recorded owner, grants and comment. With `drill` (a scratch
/// copy), only the database's comment, connection limit and own settings are set.
pub(super) fn restore_preamble(rec: &TargetRecord, create_roles: &[String], drill: bool) -> Result<String> {
    let mut s = format!(
        "\\set ON_ERROR_STOP 1\nBEGIN;\nSET LOCAL lock_timeout = '{}s';\nSET LOCAL search_path = pg_catalog, pg_temp;\n",
        LOCK_WAIT.as_secs()
    );
    // The gate is a foreign key: it holds only while triggers fire as on an origin server.
    s.push_str(&do_block(
        "BEGIN\n  IF pg_catalog.current_setting('session_replication_role') <> 'origin' THEN\n    SET LOCAL session_replication_role = origin;\n  END IF;\nEND",
    ));
    s.push_str(&do_block(
        "DECLARE r record;\nBEGIN\n  FOR r IN SELECT evtname FROM pg_catalog.pg_event_trigger LOOP\n    EXECUTE pg_catalog.format('DROP EVENT TRIGGER %I', r.evtname);\n  END LOOP;\nEND",
    ));
    if !create_roles.is_empty() {
        let mut b = String::from("BEGIN\n");
        for r in create_roles {
            b.push_str(&format!(
                "  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = {}) THEN\n    CREATE ROLE {} NOLOGIN;\n  END IF;\n",
                quote_literal(r),
                quote_ident(r)
            ));
        }
        b.push_str("END");
        s.push_str(&do_block(&b));
    }
    if let Some(state) = rec.meta.get("database_state") {
        let state: DbState = serde_json::from_str(state).context("manifest: database_state")?;
        s.push_str(&do_block(&state.apply_sql(drill)));
    }
    s.push_str(&format!(
        "CREATE TEMPORARY TABLE pg_temp.guard_gate_key (k int PRIMARY KEY) ON COMMIT DROP;\n\
         CREATE TEMPORARY TABLE pg_temp.guard_gate (k int CONSTRAINT {GATE} REFERENCES pg_temp.guard_gate_key DEFERRABLE INITIALLY DEFERRED) ON COMMIT DROP;\n\
         INSERT INTO pg_temp.guard_gate VALUES (1);\n"
    ));
    s.push_str(&do_block(EMPTY_DATABASE));
    if let Some(p) = rec.meta.get("public_schema") {
        let v: serde_json::Value = serde_json::from_str(p).context("manifest: public_schema")?;
        let owner = v["owner"]
            .as_str()
            .ok_or_else(|| anyhow!("manifest: public_schema.owner"))?;
        s.push_str(&format!("CREATE SCHEMA public AUTHORIZATION {};\n", quote_ident(owner)));
        for g in v["grants"].as_array().cloned().unwrap_or_default() {
            let grantee = g[0].as_str().unwrap_or("");
            let privilege = g[1].as_str().unwrap_or("");
            if !matches!(privilege, "USAGE" | "CREATE") {
                continue;
            }
            let to = if grantee.is_empty() {
                "PUBLIC".to_string()
            } else {
                quote_ident(grantee)
            };
            s.push_str(&format!("GRANT {privilege} ON SCHEMA public TO {to};\n"));
        }
        if let Some(c) = v["comment"].as_str() {
            s.push_str(&format!("COMMENT ON SCHEMA public IS {};\n", quote_literal(c)));
        }
    }
    Ok(s)
}

/// Does the dump's SQL need [`TxnFilter`]? Only dumps holding large objects carry transaction
/// control of their own (snapshots that did not count them: assume they do).
fn has_large_objects(rec: &TargetRecord) -> bool {
    rec.meta.get("large_objects").is_none_or(|n| n != "0")
}

/// Copy `from` into `to` through a [`TxnFilter`], in 1 MiB reads.
fn filter_into(mut from: impl Read, to: impl Write) -> Result<()> {
    let mut f = TxnFilter::new(to);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("reading pg_restore's output"),
        };
        f.write_all(&buf[..n]).context("psql stopped reading")?;
    }
    f.finish().context("psql stopped reading")?;
    Ok(())
}

impl PostgresTarget {
    /// Roles the snapshot refers to that no longer exist, each named in a warning: the
    /// restore recreates them `NOLOGIN` (never in a drill: its server's roles are not guard's).
    fn roles_to_recreate(&self, rec: &TargetRecord) -> Result<Vec<String>> {
        let Some(roles) = rec.meta.get("roles") else {
            return Ok(Vec::new());
        };
        let roles: Vec<String> = serde_json::from_str(roles).context("manifest: roles")?;
        if self.scratch.is_some() || roles.is_empty() {
            return Ok(Vec::new());
        }
        let missing = self.server_session()?.run(|c| missing_roles(c, &roles))?;
        for r in &missing {
            say(&format!(
                "guard: warning: target {}: role {r} no longer exists; the restore recreates it NOLOGIN so that what it owned and was granted comes back. Roles are the cluster's, not the database's: its password, attributes and memberships are not restored (ALTER ROLE {} LOGIN PASSWORD …, GRANT … TO {} to put them back)",
                self.spec.name,
                quote_ident(r),
                quote_ident(r)
            ));
        }
        Ok(missing)
    }

    /// Replay artifact `a` of `rec` into database `db` in one transaction (the module doc).
    pub(super) fn replay(
        &self,
        rec: &TargetRecord,
        store: &dyn Store,
        a: &Artifact,
        tools: &Tools,
        db: &str,
    ) -> Result<()> {
        let name = &self.spec.name;
        let create_roles = self.roles_to_recreate(rec)?;
        let preamble = restore_preamble(rec, &create_roles, self.scratch.is_some())?;
        let filter = has_large_objects(rec);

        // psql reads one pipe: guard writes the preamble into it, then the dump's SQL goes into
        // it — from pg_restore straight, or through guard's TxnFilter when the dump holds large
        // objects — then guard writes the postamble.
        let (from_guard, mut to_psql) = std::io::pipe().context("creating a pipe for psql")?;
        widen_pipe(&to_psql);
        let mut psql = self
            .child(tools, "psql", &["-i"])
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-"])
            .stdin(from_guard)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot run {}", tools.bin("psql").display()))?;
        let psql_err = drain(psql.stderr.take().expect("piped"));
        // Sessions that block the restore: ended under `sessions = "terminate"`, else named.
        let watch = self.scratch.is_none().then(|| {
            let terminate = self.pg.sessions == Sessions::Terminate;
            BlockerWatch::start(&self.conn, db, name, "the restore", terminate)
        });
        let psql_out = drain(psql.stdout.take().expect("piped"));

        // Feed psql: preamble, the dump's SQL, and the postamble only when all of it arrived
        // intact.
        let fed: Result<()> = (|| {
            to_psql.write_all(preamble.as_bytes()).context("psql stopped reading")?;
            match a.format.as_str() {
                "pg-plain" if filter => {
                    let mut f = TxnFilter::new(&mut to_psql);
                    read_artifact(store, a, &mut f)?;
                    f.finish().context("psql stopped reading")?;
                }
                "pg-plain" => {
                    read_artifact(store, a, &mut to_psql)?;
                }
                _ => pg_restore_into(store, a, tools, filter, &mut to_psql)?,
            }
            to_psql
                .write_all(POSTAMBLE.as_bytes())
                .context("psql stopped reading")?;
            Ok(())
        })();
        drop(to_psql);
        if fed.is_err() {
            // No postamble was sent: make sure the transaction cannot complete.
            kill(&mut psql);
        }
        let status = psql.wait()?;
        let stderr = psql_err.join().unwrap_or_default();
        let _ = psql_out.join();
        let blocked = watch
            .map(|w| w.finish())
            .and_then(|r| r.blocked_by())
            .map(|b| format!(" ({b})"))
            .unwrap_or_default();
        let gate = if String::from_utf8_lossy(&stderr).contains(GATE) {
            " — the dump's SQL tried to commit before guard did, and the restore's gate refused it"
        } else {
            ""
        };
        if let Err(e) = fed {
            if !status.success() && !stderr.is_empty() {
                bail!(
                    "target {name}: restore rolled back, the database is unchanged: psql {}: {}{gate}{blocked}",
                    status_text(status),
                    tail(&stderr)
                );
            }
            return Err(e.context(format!(
                "target {name}: restore rolled back, the database is unchanged{blocked}"
            )));
        }
        if !status.success() {
            bail!(
                "target {name}: restore rolled back, the database is unchanged: psql {}: {}{gate}{blocked}",
                status_text(status),
                tail(&stderr)
            );
        }
        Ok(())
    }
}

/// A custom archive's SQL into psql's pipe `to_psql`: `pg_restore -f -` reads the artifact from
/// the store; its output goes into the pipe straight, or through [`TxnFilter`] (`filter`: the
/// dump holds large objects).
fn pg_restore_into(
    store: &dyn Store,
    a: &Artifact,
    tools: &Tools,
    filter: bool,
    to_psql: &mut std::io::PipeWriter,
) -> Result<()> {
    // Subscriptions stay as they are (docs/targets/postgres.md: what a restore cannot put back).
    let mut cmd = tools.buffered("pg_restore", &["-i", "-o"]);
    cmd.args(["-f", "-"]).stdin(Stdio::piped()).stderr(Stdio::piped());
    if tools.major >= 1000 {
        cmd.arg("--no-subscriptions");
    }
    // The Command holds the other copy of the pipe's write end: it is dropped
    // right after the spawn, so that pg_restore's is the only one left open.
    if filter {
        cmd.stdout(Stdio::piped());
    } else {
        cmd.stdout(to_psql.try_clone().context("creating a pipe for psql")?);
    }
    let mut pr = cmd
        .spawn()
        .with_context(|| format!("cannot run {}", tools.bin("pg_restore").display()))?;
    drop(cmd);
    let pr_err = drain(pr.stderr.take().expect("piped"));
    let pr_in = pr.stdin.take().expect("piped");
    widen_pipe(&pr_in);
    let (fed, copied) = std::thread::scope(|s| {
        let copier = pr.stdout.take().map(|out| {
            let to = &mut *to_psql;
            s.spawn(move || filter_into(out, to))
        });
        let fed = read_artifact(store, a, pr_in);
        let copied = copier.map(|c| {
            c.join()
                .unwrap_or_else(|_| Err(anyhow!("the SQL filter thread panicked")))
        });
        (fed, copied)
    });
    let status = pr.wait()?;
    let stderr = pr_err.join().unwrap_or_default();
    fed.context("reading the artifact")?;
    if !status.success() {
        bail!("pg_restore {}: {}", status_text(status), tail(&stderr));
    }
    copied.transpose()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preamble_recreates_public_as_recorded() {
        let mut rec = TargetRecord::default();
        rec.meta.insert(
            "public_schema".into(),
            serde_json::json!({"owner": "pg_database_owner", "grants": [["", "USAGE"], ["bob\"x", "CREATE"]], "comment": "it's ours"})
                .to_string(),
        );
        let p = restore_preamble(&rec, &["old\"role".to_string()], false).unwrap();
        assert!(p.contains("BEGIN;"), "{p}");
        assert!(p.contains("DROP SCHEMA IF EXISTS %I CASCADE"), "{p}");
        assert!(
            p.contains("CREATE SCHEMA public AUTHORIZATION \"pg_database_owner\";"),
            "{p}"
        );
        assert!(p.contains("GRANT USAGE ON SCHEMA public TO PUBLIC;"), "{p}");
        assert!(p.contains("GRANT CREATE ON SCHEMA public TO \"bob\"\"x\";"), "{p}");
        assert!(p.contains("COMMENT ON SCHEMA public IS 'it''s ours';"), "{p}");
        assert!(p.contains("CREATE ROLE \"old\"\"role\" NOLOGIN;"), "{p}");
        // Event triggers go first, the gate closes before the database is emptied.
        let at = |needle: &str| p.find(needle).unwrap_or_else(|| panic!("{needle:?} in {p}"));
        assert!(at("DROP EVENT TRIGGER") < at("CREATE ROLE"), "{p}");
        assert!(at(GATE) < at("DROP SCHEMA"), "{p}");
        assert!(
            !p.lines().any(|l| l.trim().eq_ignore_ascii_case("COMMIT;")),
            "the preamble never commits: {p}"
        );
        assert!(POSTAMBLE.trim_end().ends_with("COMMIT;"));
    }

    #[test]
    fn a_dollar_tag_never_occurs_in_its_body() {
        let b = do_block("SELECT '$guard$'");
        let tag = b.lines().next().unwrap().trim_start_matches("DO ").to_string();
        assert_ne!(tag, "$guard$", "{b}");
        assert!(b.trim_end().ends_with(&format!("{tag};")), "{b}");
    }
}
