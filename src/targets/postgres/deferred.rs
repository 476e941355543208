//! `snapshot = "clone"`: the dump is written into the store from the clone while the command
//! runs (issue 17), so the clone alone is the verified snapshot the command waits for.
//!
//! Before the command ([`PostgresTarget::snapshot_clone`]), on the clone [`super::clone`] made,
//! to which only guard's role (or a superuser) can connect: one guard session opens
//! `REPEATABLE READ, READ ONLY` and exports its snapshot; `pg_dump --snapshot=…` starts (nice 10,
//! idle I/O class, application `guard PID pg_dump`) and guard waits until its backend is on the
//! clone (`pg_stat_activity`), or until pg_dump has finished and its backend is gone (a small
//! database: the whole dump waits in the pipe). Then the clone is closed (`ALLOW_CONNECTIONS false`: from here
//! nobody, superusers included, can open a session on it) and its sessions are listed: guard's
//! and pg_dump's must be the only ones. Another one is ended, the clone dropped, and the run
//! falls back to the dump of the live database, saying so. Both sessions are read-only; their
//! backend pids and the clone's OID are recorded (`meta.hot_sessions`, `meta.hot_oid`, in the
//! journal before the command starts). In guard's session, in the exported snapshot, the
//! fingerprints the checks name, the database's metadata and what a restore could not put back
//! are read; then the command starts, pg_dump waiting on its pipe.
//!
//! While the command runs ([`PostgresTarget::write_clone_dump`], on the deferred-write worker):
//! pg_dump's output streams into the store, parsed by `pg_restore` as it streams, the other
//! fingerprints and the CSV exports read in the same snapshot — only while the clone is as
//! recorded (OID, closed, no session but guard's two), checked before and after.
//!
//! A failed command does not wait for it: the swap ([`PostgresTarget::end_dump_sessions`]) ends
//! guard's two sessions on the clone — the rename needs the clone to itself — and renames it in;
//! the deferred write, told to stop, fails on its ended sessions. The maintenance session that
//! watched pg_dump connect and closed the clone stays open for that swap.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use sqlx::Row as _;

use super::conn::{dump_app_name, quote_ident, Backoff, Session, CONNECT_TIMEOUT, LOCK_WAIT};
use super::database::DbState;
use super::dump::{low_priority, DumpChild};
use super::fingerprint::{database_fingerprint, hash_lines, schema_fingerprints, table_fingerprint};
use super::restore::terminate_on;
use super::tools::{status_text, Tools};
use super::{PostgresTarget, DUMP_LEVEL};
use crate::manifest::{Fingerprint, TargetRecord};
use crate::targets::SnapshotCtx;

/// A clone run's dump, held open from the snapshot to its deferred store write: guard's
/// session on the clone in the exported snapshot, and the pg_dump that imported it.
pub(super) struct HeldDump {
    tag: String,
    clone: String,
    session: Session,
    dump: DumpChild,
    /// The live database's own state before the command (the clone's ACL differs: only guard's
    /// role may connect to it).
    state: DbState,
}

/// The clone cannot be proven unwritten: a session guard did not open reached it before it
/// was closed. The clone is dropped and the dump taken from the live database.
#[derive(Debug)]
pub(super) struct Unproven(pub String);

impl std::fmt::Display for Unproven {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unproven {}

/// The client backends on database `name`: (pid, user, application, client).
const ON_DB: &str = "SELECT pid, coalesce(usename, '')::text, coalesce(application_name, '')::text,
        coalesce(client_addr::text, 'local'), state IS NOT NULL
   FROM pg_stat_activity WHERE datname = $1 AND backend_type = 'client backend' ORDER BY pid";

type Backend = (i32, String, String, String, bool);

/// The sessions guard recorded for run `rec`'s clone.
fn recorded_sessions(rec: &TargetRecord) -> Vec<i32> {
    rec.meta
        .get("hot_sessions")
        .map(|s| s.split(',').filter_map(|p| p.trim().parse().ok()).collect())
        .unwrap_or_default()
}

fn describe(b: &[Backend]) -> String {
    b.iter()
        .map(|(pid, user, app, client, _)| format!("pid {pid} (user {user}, application {app:?}, client {client})"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Fingerprints of `items` only (tables, `@schema…`, `@database`), as [`super::fingerprint::fingerprints`]
/// computes them.
pub(super) async fn named_fingerprints(
    c: &mut sqlx::PgConnection,
    items: &[String],
) -> Result<std::collections::BTreeMap<String, Fingerprint>> {
    let mut out = std::collections::BTreeMap::new();
    let schema = if items.iter().any(|i| i.starts_with("@schema")) {
        schema_fingerprints(c).await?
    } else {
        Default::default()
    };
    for i in items {
        let f = if i == "@database" {
            database_fingerprint(c).await?
        } else if i.starts_with('@') {
            schema
                .get(i)
                .cloned()
                .ok_or_else(|| anyhow!("unknown fingerprint {i:?}"))?
        } else {
            table_fingerprint(c, i).await?
        };
        out.insert(i.clone(), f);
    }
    Ok(out)
}

impl PostgresTarget {
    /// The snapshot of run `tag` on its clone `clone` (see the module doc), up to its deferred
    /// dump: `rec` names the clone, its OID and guard's two sessions on it, and holds the
    /// fingerprints the checks name. `state` is the live database's own state. An [`Unproven`]
    /// error: the clone must be dropped and the live database dumped instead.
    pub(super) fn snapshot_clone(
        &self,
        ctx: &SnapshotCtx,
        rec: &mut TargetRecord,
        tools: &Tools,
        clone: &str,
        tag: &str,
        state: &DbState,
    ) -> Result<()> {
        let view = self.view(clone);
        let (mut session, snapshot_id) = view.export_snapshot(rec, tools)?;
        let own: i32 = session.scalar("SELECT pg_backend_pid()")?;
        let mut dump = view.spawn_dump(tools, &snapshot_id, true)?;
        crate::faults::test_pause("pg-clone-open");
        let mut m = self.maintenance_session()?;
        let dump_pid = self.await_dump_backend(&mut m, clone, own, &mut dump)?;
        let ours: Vec<i32> = std::iter::once(own).chain(dump_pid).collect();
        let oid = self.close_clone(&mut m, clone, &ours)?;
        self.keep_for_swap(m);
        // Read in the exported snapshot while pg_dump waits on its pipe.
        view.record_database_state(ctx, rec, &mut session)?;
        // The live database's own state, not the clone's (only guard's role may connect to it).
        rec.meta.insert("database_state".into(), serde_json::to_string(state)?);
        rec.meta.insert("db_owner".into(), state.owner.clone());
        let mut roles: Vec<String> = match rec.meta.get("roles") {
            Some(r) => serde_json::from_str(r)?,
            None => Vec::new(),
        };
        roles.push(state.owner.clone());
        roles.extend(state.grants.iter().flat_map(|g| [g.grantee.clone(), g.grantor.clone()]));
        roles.retain(|r| !r.is_empty());
        roles.sort();
        roles.dedup();
        rec.meta.insert("roles".into(), serde_json::to_string(&roles)?);
        let items: Vec<String> = ctx.fingerprint.iter().filter(|i| *i != "@database").cloned().collect();
        let items = &items;
        rec.fingerprints = session
            .run(|c| named_fingerprints(c, items))
            .with_context(|| format!("target {}: fingerprints", self.spec.name))?;
        if ctx.fingerprint.iter().any(|i| i == "@database") {
            rec.fingerprints.insert("@database".into(), hash_lines(&state.lines()));
        }
        // guard's two backends on the clone at a lower priority too, when they are processes of
        // this machine (a socket connection, the backend's title naming the clone).
        for pid in &ours {
            self.lower_backend(*pid, clone);
        }
        rec.meta.insert("hot".into(), tag.to_string());
        rec.meta.insert("hot_oid".into(), oid.to_string());
        let ours: Vec<String> = ours.iter().map(i32::to_string).collect();
        rec.meta.insert("hot_sessions".into(), ours.join(","));
        rec.meta.insert("database".into(), self.dbname());
        *self.held.lock().unwrap_or_else(|p| p.into_inner()) = Some(HeldDump {
            tag: tag.to_string(),
            clone: clone.to_string(),
            session,
            dump,
            state: state.clone(),
        });
        Ok(())
    }

    /// Wait until `dump`'s backend is on `clone` (the one session named [`dump_app_name`] there
    /// besides guard's own `own`): its pid. `None`: pg_dump has already finished (a small
    /// database: its whole output is waiting in the pipe) and its backend is gone.
    fn await_dump_backend(&self, m: &mut Session, clone: &str, own: i32, dump: &mut DumpChild) -> Result<Option<i32>> {
        let app = dump_app_name();
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        let mut backoff = Backoff::new();
        loop {
            let finished = match dump.child.try_wait()? {
                Some(st) if st.success() => true,
                Some(st) => bail!(
                    "target {}: pg_dump {}: {}",
                    self.spec.name,
                    status_text(st),
                    dump.stderr_tail()
                ),
                None => false,
            };
            let named: Vec<i32> = backends(m, clone)?
                .into_iter()
                .filter(|(pid, _, a, _, ready)| *pid != own && *a == app && (*ready || finished))
                .map(|b| b.0)
                .collect();
            match named.as_slice() {
                // Its backend may outlive it by a moment: wait for that to end.
                [] if finished => return Ok(None),
                [_] if finished && Instant::now() < deadline => backoff.sleep(deadline),
                [pid] if !finished => return Ok(Some(*pid)),
                [] if Instant::now() < deadline => backoff.sleep(deadline),
                [] => bail!(
                    "target {}: pg_dump did not connect to the clone {clone} within {} s",
                    self.spec.name,
                    CONNECT_TIMEOUT.as_secs()
                ),
                _ => {
                    return Err(Unproven(format!(
                        "{} sessions on the clone {clone} are named {app:?}",
                        named.len()
                    ))
                    .into())
                }
            }
        }
    }

    /// Close `clone` to connections, then prove that `ours` are the only sessions on it: its
    /// OID. Any other session is ended, and the error is [`Unproven`].
    fn close_clone(&self, m: &mut Session, clone: &str, ours: &[i32]) -> Result<i64> {
        m.execute(&format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS false",
            quote_ident(clone)
        ))?;
        crate::faults::test_pause("pg-clone-closed");
        let others: Vec<Backend> = backends(m, clone)?
            .into_iter()
            .filter(|b| !ours.contains(&b.0))
            .collect();
        if !others.is_empty() {
            for b in &others {
                let _ = m.execute_with("SELECT pg_terminate_backend($1)", b.0);
            }
            return Err(Unproven(format!(
                "another session reached the clone {clone} before guard closed it, so it may have been written: {}",
                describe(&others)
            ))
            .into());
        }
        m.scalar_with("SELECT oid::int8 FROM pg_database WHERE datname = $1", clone)
    }

    /// Is `clone` still as `rec` recorded it (its OID, closed to connections, no session on it
    /// but guard's two)? `when` says when, in the error.
    fn clone_untouched(&self, rec: &TargetRecord, clone: &str, when: &str) -> Result<()> {
        let want = rec.meta.get("hot_oid").map(String::as_str).unwrap_or("");
        match self.db_exists(clone)? {
            Some((oid, false)) if oid.to_string() == want => {}
            Some((oid, allow)) => {
                bail!("the clone {clone} changed {when} (OID {oid}, recorded {want}; open to connections: {allow})")
            }
            None => bail!("the clone {clone} is gone ({when})"),
        }
        let ours = recorded_sessions(rec);
        let mut m = self.maintenance_session()?;
        let others: Vec<Backend> = backends(&mut m, clone)?
            .into_iter()
            .filter(|b| !ours.contains(&b.0))
            .collect();
        if !others.is_empty() {
            bail!(
                "the clone {clone} has a session guard did not open ({when}): {}",
                describe(&others)
            );
        }
        Ok(())
    }

    /// Before the swap renames `clone` in: end guard's own sessions on it (the dump still being
    /// written; the rename needs the clone to itself), through the swap's session `m`; with
    /// `wait`, until their backends are gone (the swap ends them first without waiting, and
    /// waits once it has seen to the live database's sessions). A session guard did not record
    /// there is an error: the clone is not used.
    pub(super) fn end_dump_sessions(&self, m: &mut Session, rec: &TargetRecord, clone: &str, wait: bool) -> Result<()> {
        let ours = recorded_sessions(rec);
        let deadline = Instant::now() + LOCK_WAIT;
        let mut backoff = Backoff::new();
        let mut ended = false;
        loop {
            let on = backends(m, clone)?;
            if on.is_empty() {
                return Ok(());
            }
            let others: Vec<Backend> = on.iter().filter(|b| !ours.contains(&b.0)).cloned().collect();
            if !others.is_empty() {
                bail!(
                    "the clone {clone} has a session guard did not open: {}; it is not used",
                    describe(&others)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "guard's own sessions on the clone {clone} did not end within {} s",
                    LOCK_WAIT.as_secs()
                );
            }
            if ended {
                backoff.sleep(deadline);
            }
            let pids: Vec<i32> = on.iter().map(|b| b.0).collect();
            terminate_on(m, clone, Some(&pids))?;
            if !wait {
                return Ok(());
            }
            ended = true;
        }
    }

    /// The deferred store write of a clone run's pre-run snapshot: the dump held open since
    /// the snapshot streams into the store, with the fingerprints and CSV exports of the same
    /// snapshot, while the clone stays as recorded. Stops once `cancel` is set.
    pub(super) fn write_clone_dump(
        &self,
        ctx: &SnapshotCtx,
        rec: &mut TargetRecord,
        cancel: &AtomicBool,
    ) -> Result<()> {
        let name = &self.spec.name;
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(HeldDump {
            tag: _,
            clone,
            mut session,
            dump,
            state,
        }) = held.filter(|h| rec.meta.get("hot") == Some(&h.tag))
        else {
            bail!("target {name}: no dump of its clone is open in this guard process");
        };
        if cancel.load(Ordering::Relaxed) {
            bail!("stopped: the command failed, and the database is restored from its clone");
        }
        self.clone_untouched(rec, &clone, "before its dump was written")?;
        let tools = self.tools()?;
        let view = self.view(&clone);
        let compression = ctx.compression.default_level(DUMP_LEVEL);
        let named = std::mem::take(&mut rec.fingerprints);
        view.stream_dump(ctx, rec, &tools, &mut session, dump, compression, Some(cancel))?;
        view.export_csv_tables(ctx, rec, &mut session, compression)?;
        let _ = session.execute("COMMIT");
        drop(session);
        // The database's own state is the live one's, recorded before the command.
        rec.fingerprints.insert("@database".into(), hash_lines(&state.lines()));
        for (k, f) in &named {
            if rec.fingerprints.get(k) != Some(f) {
                bail!("target {name}: the fingerprint of {k} differs from the one read before the command in the same snapshot");
            }
        }
        self.clone_untouched(rec, &clone, "while its dump was written")
    }

    /// Lower the priority of backend `pid` of database `db` when it is a process of this
    /// machine: a socket connection, and the process's title names `db`.
    fn lower_backend(&self, pid: i32, db: &str) {
        if self.conn.host.as_deref().is_some_and(|h| !h.starts_with('/')) {
            return;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            return;
        };
        let title = String::from_utf8_lossy(&cmdline);
        if title.starts_with("postgres: ") && title.split([' ', '\0']).any(|w| w == db) {
            low_priority(pid);
        }
    }
}

/// The client backends on database `db`.
fn backends(m: &mut Session, db: &str) -> Result<Vec<Backend>> {
    Ok(m.fetch_all_with(ON_DB, db)?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect())
}
