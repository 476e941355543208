//! PostgreSQL databases (`kind = "postgres"`).
//!
//! Snapshot: one REPEATABLE READ transaction exports its snapshot; the fingerprints (row
//! counts, content hashes, schema) and CSV exports are read in that transaction while
//! `pg_dump --snapshot=…` dumps exactly the same state. pg_dump writes uncompressed (`-Fc -Z0`
//! or `-Fp`) to a pipe and guard compresses (level [`DUMP_LEVEL`] unless the policy sets one)
//! and hashes the stream on every core. The artifact is then read back from the store, its
//! checksums compared, and parsed whole by `pg_restore` (custom) or checked for pg_dump's
//! completion trailer (plain) before the guarded command may run.
//!
//! With `snapshot = "clone"` a guarded run's pre-run snapshot is a clone database instead
//! ([`clone`]), restored by rename; its dump is written from the clone while the command runs
//! ([`deferred`]).
//!
//! Tools: the newest `pg_dump` whose major version is at least the server's, from `pg_bin` (only
//! there when set), `PATH` and `/usr/lib/postgresql/*/bin`, with `pg_restore` and `psql` beside it.
//!
//! The snapshot also records what a dump of one database leaves out (its owner, comment, ACL,
//! settings, its roles' settings, the roles it refers to: [`database`]) and refuses, before the
//! command runs, a database a restore could not put back; it warns about what a restore leaves
//! as it is (subscriptions, extension versions).
//!
//! Restore, in one transaction on the live database through `psql -v ON_ERROR_STOP=1`
//! ([`restore`]): the preamble recreates dropped roles `NOLOGIN`, puts the database-level state
//! back, closes a gate only guard's `COMMIT` opens, and empties the database (event triggers,
//! publications, extensions, foreign servers, every user schema, casts, large objects, global
//! default privileges), `public` is recreated as recorded, the dump's SQL (from `pg_restore -f
//! -` for custom archives, its own `BEGIN;`/`COMMIT;` around large objects taken out by
//! [`txn_filter`]) is replayed, and `COMMIT` is sent only after the artifact's checksums verified
//! and `pg_restore` exited 0. Anything else rolls back and the database is left exactly as it
//! was.
//!
//! Bounded waits: guard's sessions carry `lock_timeout`, `statement_timeout` (not the restore's)
//! and override the defaults a command may have set on the database ([`conn::bounded_settings`]);
//! a [`watch::BlockerWatch`] names, and under `sessions = "terminate"` ends, the sessions that
//! block a rescue snapshot or a restore.
//!
//! Connection parameters reach children through `PGHOST`/`PGPORT`/`PGUSER`/`PGDATABASE`/
//! `PGPASSWORD` in their environment, never on their argv.

mod clone;
pub mod config;
mod conn;
mod database;
mod deferred;
mod drill;
mod dump;
mod fingerprint;
mod restore;
mod tools;
mod txn_filter;
mod watch;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context, Result};
use sqlx::Row as _;

use super::{Restored, SnapshotCtx, Target};
use crate::artifact::read_artifact;
use crate::manifest::{Fingerprint, TargetRecord};
use crate::secrets;
use crate::store::Store;
use crate::targets::{KindSpec, TargetSpec};
pub use config::{PgFormat, PgSnapshot, PostgresSpec, Sessions};

use conn::{quote_ident, ConnInfo};
use database::DbState;
use drill::ScratchDb;
use fingerprint::{database_fingerprint, existing_fingerprint, fingerprints, schema_fingerprints, table_fingerprint};
use tools::{major_name, major_of, Tools};

/// gzip level of PostgreSQL artifacts when the policy sets no `[compression] level`. Measured on
/// the bench's 416 MB `pg_dump -Fc -Z0` stream (docs/performance.md): level 2 (zlib-rs's "fast"
/// deflate) costs two thirds of level 6's CPU for an artifact 2% larger, about as large as
/// `pg_dump -Fc`'s own; level 1 ("quick") is 46% larger than that.
pub const DUMP_LEVEL: u32 = 2;

/// Session settings under which `row::text` is stable, for content hashes.
const SESSION_SETTINGS: [(&str, &str); 5] = [
    ("DateStyle", "ISO"),
    ("TimeZone", "UTC"),
    ("IntervalStyle", "postgres"),
    ("bytea_output", "hex"),
    ("extra_float_digits", "3"),
];

pub struct PostgresTarget {
    spec: TargetSpec,
    pg: PostgresSpec,
    conn: ConnInfo,
    /// Rebuilt from a manifest: the URL is the redacted one, so only offline checks work.
    from_manifest: bool,
    tools: OnceLock<Tools>,
    /// A drill's scratch database, dropped with the target (held only for its `Drop`).
    #[allow(dead_code)]
    scratch: Option<ScratchDb>,
    /// A view over a clone or a set-aside database ([`clone`]): the live database's name.
    shown_db: Option<String>,
    /// A clone run's dump, open from the snapshot until its deferred store write ([`deferred`]).
    held: std::sync::Mutex<Option<deferred::HeldDump>>,
    /// A clone run's session on the `postgres` database, opened before the command and kept for
    /// the swap a failure makes ([`clone`]): no connection to open after the command's exit.
    swap_session: std::sync::Mutex<Option<conn::Session>>,
}

/// A line on stderr for the person at the terminal, secrets masked. A closed or broken stderr
/// is ignored: nothing guard prints may abort a snapshot or a restore.
fn say(msg: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{}", secrets::redact(msg));
}

impl PostgresTarget {
    pub fn new(spec: TargetSpec, pg: PostgresSpec) -> Result<Self> {
        let mut conn = ConnInfo::parse(&pg.url).with_context(|| format!("target {}", spec.name))?;
        // The password: the URL's, else `password_file`'s, else `$PGPASSWORD` (libpq and sqlx
        // read it themselves), else the passfile's (`$PGPASSFILE`, `~/.pgpass`). Children get
        // it through their environment, never their argv.
        if conn.password.is_none() {
            conn.password = match &pg.password {
                Some(p) => Some(p.clone()),
                None if std::env::var_os("PGPASSWORD").is_some() => None,
                None => conn::passfile_password(&conn).with_context(|| format!("target {}", spec.name))?,
            };
        }
        if let Some(p) = &conn.password {
            secrets::register(p);
        }
        Ok(PostgresTarget {
            spec,
            pg,
            conn,
            from_manifest: false,
            tools: OnceLock::new(),
            scratch: None,
            shown_db: None,
            held: Default::default(),
            swap_session: Default::default(),
        })
    }

    /// A target rebuilt from a manifest's record: it can check artifacts offline (`guard
    /// verify`), but reaching the database needs the policy's URL, which guard never stores.
    pub fn from_record(rec: &TargetRecord) -> Result<Self> {
        let pg = PostgresSpec {
            url: rec.source.clone(),
            format: if rec.artifacts.first().map(|a| a.format.as_str()) == Some("pg-plain") {
                PgFormat::Plain
            } else {
                PgFormat::Custom
            },
            csv_tables: Vec::new(),
            pg_bin: None,
            sessions: Sessions::Refuse,
            drill_url: None,
            snapshot: Default::default(),
            schema: None,
            password: None,
        };
        let spec = TargetSpec::new(rec.name.clone(), KindSpec::Postgres(pg.clone()));
        let conn = ConnInfo::parse(&pg.url).unwrap_or_default();
        Ok(PostgresTarget {
            spec,
            pg,
            conn,
            from_manifest: true,
            tools: OnceLock::new(),
            scratch: None,
            shown_db: None,
            held: Default::default(),
            swap_session: Default::default(),
        })
    }

    fn dbname(&self) -> String {
        self.conn
            .dbname
            .clone()
            .or_else(|| std::env::var("PGDATABASE").ok())
            .or_else(|| self.conn.user.clone())
            .or_else(|| std::env::var("PGUSER").ok())
            .unwrap_or_else(|| "postgres".into())
    }

    fn live(&self) -> Result<()> {
        if self.from_manifest {
            bail!(
                "target {}: the policy no longer names this postgres target, and guard does not store database URLs (they may hold passwords); add the target back to the policy to restore or query it",
                self.spec.name
            );
        }
        Ok(())
    }
}

impl Target for PostgresTarget {
    fn spec(&self) -> &TargetSpec {
        &self.spec
    }

    fn source(&self) -> String {
        secrets::redact(&secrets::redact_url(&self.pg.url))
    }

    fn preflight(&self) -> Result<()> {
        self.live()?;
        self.tools().map(|_| ())
    }

    fn tool_versions(&self) -> Result<Vec<String>> {
        let t = self.tools()?;
        Ok(vec![format!(
            "pg_dump, pg_restore, psql {} in {}",
            t.version,
            t.dir.display()
        )])
    }

    fn restore_blocked(&self) -> Result<Option<crate::targets::SessionsBlock>> {
        self.live()?;
        self.sessions_blocking_restore()
    }

    fn snapshot(&self, ctx: &SnapshotCtx) -> Result<TargetRecord> {
        self.live()?;
        let mut rec = TargetRecord {
            name: self.spec.name.clone(),
            kind: "postgres".into(),
            source: self.source(),
            ..Default::default()
        };
        rec.meta.insert("database".into(), self.live_db());
        if let (Some(tag), PgSnapshot::Clone, None, false) =
            (ctx.hot, self.pg.snapshot, &self.shown_db, ctx.allow_absent)
        {
            let tools = self.tools()?;
            let why = match self.make_clone(tag) {
                Ok((clone, state)) => {
                    let mut on_clone = rec.clone();
                    match self.snapshot_clone(ctx, &mut on_clone, &tools, &clone, tag, &state) {
                        Ok(()) => return Ok(on_clone),
                        Err(e) => {
                            self.held.lock().unwrap_or_else(|p| p.into_inner()).take();
                            self.swap_session.lock().unwrap_or_else(|p| p.into_inner()).take();
                            let _ = self.drop_db(&clone);
                            if e.downcast_ref::<deferred::Unproven>().is_none() {
                                return Err(e);
                            }
                            format!("{e:#}; the clone was dropped")
                        }
                    }
                }
                Err(e) => format!("no clone database: {e:#}"),
            };
            rec.meta.insert("hot_skipped".into(), why);
        }
        if ctx.allow_absent {
            // A rescue of a dropped database records it as absent.
            match self.session_on(None) {
                Ok(_) => {}
                Err(e) if format!("{e:#}").contains("does not exist") => {
                    rec.absent = true;
                    return Ok(rec);
                }
                Err(e) => return Err(e),
            }
        }
        let tools = self.tools()?;
        self.snapshot_live(ctx, &mut rec, &tools)?;
        Ok(rec)
    }

    fn drill(&self, rec: &TargetRecord, store: &dyn Store, scratch: &Path) -> Result<Option<Box<dyn Target>>> {
        self.deep_verify(rec, store, scratch)?;
        if rec.absent {
            return Ok(None);
        }
        self.live()?;
        Ok(Some(Box::new(self.drill_into_scratch(rec, store)?)))
    }

    fn deep_verify(&self, rec: &TargetRecord, store: &dyn Store, _scratch: &Path) -> Result<()> {
        let tools = self.tools_for_dump(rec)?;
        self.validate_artifact(rec, store, &tools)?;
        for a in rec.artifacts.iter().filter(|a| a.format == "csv") {
            read_artifact(store, a, std::io::sink())?;
        }
        Ok(())
    }

    fn restore(&self, rec: &TargetRecord, store: &dyn Store) -> Result<Restored> {
        self.live()?;
        let name = &self.spec.name;
        let db = self.dbname();
        if rec.absent {
            self.handle_sessions(&db)?;
            self.session_on(Some("postgres"))?
                .execute(&format!("DROP DATABASE IF EXISTS {}", quote_ident(&db)))?;
            return Ok(Restored::Done);
        }
        let what = format!("database {db}");
        if let Some(done) = super::restore_unstored(rec, &what, || self.clone_in_place(rec)) {
            return done;
        }
        let a = rec
            .artifacts
            .iter()
            .find(|a| a.format == "pg-custom" || a.format == "pg-plain")
            .ok_or_else(|| anyhow!("snapshot of {name} has no dump artifact"))?;
        let tools = self.tools()?;
        if let Some(need) = rec.tools.get("pg_dump").and_then(|v| major_of(v)) {
            if tools.major < need {
                bail!(
                    "target {name}: the dump was made by pg_dump {}; pg_restore {} cannot read it. Install postgresql-client-{} or set pg_bin",
                    rec.tools["pg_dump"],
                    tools.version,
                    major_name(need)
                );
            }
        }
        self.ensure_database(rec, &db)?;
        self.handle_sessions(&db)?;
        self.replay(rec, store, a, &tools, &db)?;
        Ok(Restored::Done)
    }

    fn verify_restored(&self, rec: &TargetRecord) -> Result<()> {
        self.live()?;
        if rec.absent {
            return match self.session_on(None) {
                Err(e) if format!("{e:#}").contains("does not exist") => Ok(()),
                Ok(_) => bail!("database {} exists but the snapshot recorded none", self.dbname()),
                Err(e) => Err(e),
            };
        }
        let deferred = super::is_deferred(rec);
        if deferred && !self.clone_in_place(rec)? {
            bail!("database {} is not the clone the snapshot recorded", self.dbname());
        }
        let hashed = rec.hashed_items();
        let (mut got, live_state) = self.session()?.run(|c| async {
            // A record whose dump never reached the store holds the checks' fingerprints only.
            let got = match deferred {
                true => deferred::named_fingerprints(c, &rec.fingerprints.keys().cloned().collect::<Vec<_>>()).await?,
                false => fingerprints(c, &hashed, false).await?,
            };
            Ok::<_, anyhow::Error>((got, DbState::capture(c).await?))
        })?;
        let mut expected = rec.fingerprints.clone();
        // A drill's scratch database has its own owner and ACL; snapshots taken before
        // `@database` existed do not have it.
        if self.scratch.is_some() || !expected.contains_key("@database") {
            expected.remove("@database");
            got.remove("@database");
        }
        super::sql::fingerprint::compare_fingerprints(&expected, &got).map_err(|e| {
            // Say which database-level lines differ, when they do.
            let recorded: Option<DbState> = rec
                .meta
                .get("database_state")
                .and_then(|s| serde_json::from_str(s).ok());
            match recorded.filter(|r| expected.contains_key("@database") && r.lines() != live_state.lines()) {
                Some(r) => {
                    let want = r.lines();
                    let have = live_state.lines();
                    let diff: Vec<String> = want
                        .iter()
                        .filter(|l| !have.contains(l))
                        .map(|l| format!("snapshot: {l}"))
                        .chain(have.iter().filter(|l| !want.contains(l)).map(|l| format!("now: {l}")))
                        .collect();
                    anyhow!("{e:#} (database-level: {})", diff.join("; "))
                }
                None => e,
            }
        })
    }

    fn swap_in(&self, rec: &TargetRecord, run_id: &str) -> Result<Option<Box<dyn Target>>> {
        if self.shown_db.is_some() || self.from_manifest {
            return Ok(None);
        }
        Ok(self.swap_clone(rec, run_id)?.map(|aside| {
            let (_, name) = self.hot_names(run_id);
            let _ = aside;
            Box::new(self.view(&name)) as Box<dyn Target>
        }))
    }

    fn write_deferred(
        &self,
        ctx: &SnapshotCtx,
        rec: &mut TargetRecord,
        cancel: &std::sync::atomic::AtomicBool,
    ) -> Result<()> {
        self.live()?;
        self.write_clone_dump(ctx, rec, cancel)
    }

    fn drop_hot(&self, run_id: &str) {
        // A dump still held open on the clone (a snapshot given up before its deferred write).
        drop(self.held.lock().unwrap_or_else(|p| p.into_inner()).take());
        drop(self.swap_session.lock().unwrap_or_else(|p| p.into_inner()).take());
        if self.shown_db.is_none() && !self.from_manifest && self.pg.snapshot == PgSnapshot::Clone {
            let (clone, _) = self.hot_names(run_id);
            if let Err(e) = self.drop_db(&clone) {
                say(&format!("guard: warning: target {}: {e:#}", self.spec.name));
            }
        }
    }

    fn drop_aside(&self) -> Result<()> {
        match &self.shown_db {
            Some(_) => {
                let name = self.dbname();
                self.drop_db(&name)
            }
            None => Ok(()),
        }
    }

    fn aside(&self, run_id: &str) -> Option<String> {
        if self.from_manifest || self.pg.snapshot != PgSnapshot::Clone {
            return None;
        }
        let name = match &self.shown_db {
            Some(_) => self.dbname(),
            None => self.hot_names(run_id).1,
        };
        matches!(self.db_exists(&name), Ok(Some(_))).then(|| format!("database {name}"))
    }

    fn fingerprint_existing(&self, table: &str, columns: &[crate::manifest::Column]) -> Result<Fingerprint> {
        self.session()?.run(|c| existing_fingerprint(c, table, columns))
    }

    fn fingerprint(&self, items: &[String]) -> Result<BTreeMap<String, Fingerprint>> {
        self.session()?.run(|c| async move {
            let mut out = BTreeMap::new();
            let schema =
                if items.iter().any(|i| i.starts_with('@')) { schema_fingerprints(c).await? } else { BTreeMap::new() };
            for t in items {
                if t == "@database" {
                    out.insert(t.clone(), database_fingerprint(c).await?);
                } else if t.starts_with('@') {
                    let f = schema.get(t).ok_or_else(|| anyhow!("unknown fingerprint {t:?} (known: @schema, @schema.tables, @schema.columns, @schema.indexes, @schema.constraints, @schema.triggers, @schema.functions, @schema.schemas, @database)"))?;
                    out.insert(t.clone(), f.clone());
                } else {
                    out.insert(t.clone(), table_fingerprint(c, t).await?);
                }
            }
            Ok(out)
        })
    }

    fn query(&self, sql: &str) -> Result<String> {
        self.session()?.run(|c| async move {
            // The simple protocol returns every value in its text form, whatever its type.
            use futures_util::StreamExt as _;
            let mut rows = sqlx::raw_sql(sql).fetch(c);
            let first = rows
                .next()
                .await
                .transpose()
                .map_err(|e| anyhow!("{}", secrets::redact(&e.to_string())))?;
            // Read the rest so errors in later statements are not silently dropped.
            while let Some(r) = rows.next().await {
                r.map_err(|e| anyhow!("{}", secrets::redact(&e.to_string())))?;
            }
            let Some(row) = first else {
                return Ok("NULL".to_string());
            };
            if row.is_empty() {
                return Ok("NULL".to_string());
            }
            let v: Option<String> = row.try_get_unchecked(0)?;
            Ok(v.unwrap_or_else(|| "NULL".into()))
        })
    }
}
