//! Turso (libSQL) databases, through the Platform API and Hrana over HTTP; no turso CLI.
//!
//! Behaviour of the real service this module is written against (sources: Turso's docs and
//! OpenAPI, its official npm clients, and sqld = libsql-server, the open-source Turso server;
//! tests/fakes/turso_fake.py models them and tests/turso_clients/ checks the fake against the
//! official clients): a write transaction has a 5 s window (`TRANSACTION_TIMEOUT`), a response
//! at most 10 MB (`RESPONSE_TOO_LARGE`), an idle stream expires after 10 s (`STREAM_EXPIRED`),
//! ±Infinity travels as a float with `"value": null`, and a seed timestamp may miss up to 15 s.
//!
//! Snapshot: the Platform API creates a *branch* database seeded from the source
//! (`POST /v1/organizations/{org}/databases` with a `database` seed) — its current state when the
//! before hooks stopped the application, else at "now" by the service's clock — named
//! `guard-<database>-<snapshot id>` so it is recognisably guard's and traceable to its snapshot.
//! guard reads it back (its `parent` must be the source), confirms it answers `SELECT 1`, records
//! its fingerprints (row counts of every table, content hashes of the tables `untouched` checks
//! name, a schema hash — read from the branch, so they describe exactly the state a restore
//! brings back) and, with `export = true`, streams the branch's `GET /dump` (rowids kept)
//! through gzip into the store so a copy exists outside Turso.
//!
//! Restore: Turso cannot restore a database in place. `reload` (the default) replaces every
//! table, index, trigger and view of the source with the branch's in short transactions (see
//! reload.rs); then the source's fingerprints are compared with the snapshot's and every table's
//! content hash with the branch's; when the branch no longer exists, the export is loaded into a
//! scratch SQLite file and copied the same way. `promote` leaves the source alone and says
//! exactly what to repoint at the branch; guard reports that restore as not automatic.
//!
//! URLs: a database's Hrana URL is `db_url` when the policy gives one, otherwise its `Hostname`
//! from the Platform API. `libsql://` and bare hostnames take the scheme of `api_url`: `https`
//! for the real service, `http` when `api_url` is a plain-HTTP local endpoint (the test fake).

mod branch;
pub mod config;
mod export;
mod hrana;
mod platform;
mod reload;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::sql::fingerprint::{compare_fingerprints, existing_fingerprint, fingerprints, table_fingerprint};
use super::sql::Val;
use super::{Restored, SnapshotCtx, Target};
use crate::manifest::{Fingerprint, TargetRecord};
use crate::store::Store;
use crate::targets::{KindSpec, SqliteSpec, TargetSpec};
pub use branch::branch_name;
use branch::{is_guard_branch, MAX_NAME};
pub use config::{TursoRestore, TursoSpec};
use export::check_export;
use hrana::Db;

pub struct TursoTarget {
    spec: TargetSpec,
    t: TursoSpec,
    http: reqwest::Client,
    api_base: String,
    /// Database tokens guard minted, by database name.
    tokens: Mutex<BTreeMap<String, (String, Instant)>>,
    source_url: Mutex<Option<String>>,
    /// The Platform API's `Date` and when it arrived (see [`TursoTarget::server_now`]).
    server_clock: Mutex<Option<(time::OffsetDateTime, Instant)>>,
}

impl TursoTarget {
    pub fn new(spec: TargetSpec, t: TursoSpec) -> Result<Self> {
        let valid = |s: &str| {
            !s.is_empty()
                && s.len() <= MAX_NAME
                && s.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        };
        if !valid(&t.database) {
            bail!(
                "target {}: database {:?} is not a Turso database name (1-64 lowercase letters, digits and dashes)",
                spec.name,
                t.database
            );
        }
        if !valid(&t.organization) {
            bail!(
                "target {}: organization {:?} is not a Turso organization slug (lowercase letters, digits and dashes)",
                spec.name,
                t.organization
            );
        }
        if !valid(&t.group) {
            bail!("target {}: group {:?} is not a Turso group name", spec.name, t.group);
        }
        if is_guard_branch(&t.database) {
            bail!(
                "target {}: database {:?} is one of guard's own branches; name the database the application uses",
                spec.name,
                t.database
            );
        }
        let api_base = t.api_url.trim_end_matches('/').to_string();
        if !(api_base.starts_with("https://") || api_base.starts_with("http://")) {
            bail!(
                "target {}: api_url {:?} must start with https:// (or http:// for a local endpoint)",
                spec.name,
                t.api_url
            );
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(15))
            .read_timeout(Duration::from_secs(300))
            .user_agent(concat!("guard/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(TursoTarget {
            spec,
            t,
            http,
            api_base,
            tokens: Mutex::new(BTreeMap::new()),
            source_url: Mutex::new(None),
            server_clock: Mutex::new(None),
        })
    }

    /// The target for a policy spec of kind `turso`.
    pub fn from_spec(spec: &TargetSpec) -> Result<Self> {
        match &spec.kind {
            KindSpec::Turso(t) => TursoTarget::new(spec.clone(), t.clone()),
            other => bail!("target {} is of kind {}, not turso", spec.name, other.as_str()),
        }
    }

    fn scheme(&self) -> &'static str {
        if self.api_base.starts_with("http://") {
            "http"
        } else {
            "https"
        }
    }

    /// `libsql://h`, `https://h`, `http://h` or a bare hostname → the Hrana base URL.
    fn hrana_url(&self, u: &str) -> String {
        let u = u.trim_end_matches('/');
        if u.starts_with("https://") || u.starts_with("http://") {
            u.to_string()
        } else {
            let host = u.strip_prefix("libsql://").unwrap_or(u);
            format!("{}://{host}", self.scheme())
        }
    }

    /// Fingerprints read in one read transaction.
    /// `lenient`: a hashed table that does not exist is recorded absent ([`fingerprints`]).
    fn read_fingerprints(&self, db: &Db, hashed: &[String], lenient: bool) -> Result<BTreeMap<String, Fingerprint>> {
        let mut s = db.stream();
        s.execute("BEGIN", &[])?;
        let r = fingerprints(&mut s, hashed, lenient);
        let _ = s.execute("ROLLBACK", &[]);
        s.close();
        r.with_context(|| format!("fingerprints of {}", db.label))
    }
}

impl TursoTarget {
    /// The point in time to seed a branch at: now, by the Platform API's clock when its last
    /// answer carried a `Date` (never ahead of it: Turso refuses a timestamp in its future),
    /// else by this machine's clock less 2 s; whole seconds.
    fn seed_timestamp(&self) -> String {
        let local = crate::clock::now();
        let now = match self.server_now() {
            Some(server) => server.min(local),
            None => local - Duration::from_secs(2),
        };
        crate::clock::rfc3339(now.replace_nanosecond(0).unwrap_or(now))
    }
}

impl Target for TursoTarget {
    fn spec(&self) -> &TargetSpec {
        &self.spec
    }

    fn source(&self) -> String {
        format!("turso:{}/{}", self.t.organization, self.t.database)
    }

    fn preflight(&self) -> Result<()> {
        let info = self.get_database(&self.t.database)?;
        if is_guard_branch(&info.name) {
            bail!("{} is a guard branch, not an application database", info.name);
        }
        let db = self.source_db()?;
        db.answer(Duration::from_secs(10), false)?;
        Ok(())
    }

    fn snapshot(&self, ctx: &SnapshotCtx) -> Result<TargetRecord> {
        let mut rec = TargetRecord {
            name: self.spec.name.clone(),
            kind: "turso".into(),
            source: self.source(),
            ..Default::default()
        };
        rec.tools.insert("hrana".into(), "2".into());
        rec.tools.insert("platform-api".into(), "v1".into());
        let Some(src) = self.find_database(&self.t.database)? else {
            if ctx.allow_absent {
                rec.absent = true;
                return Ok(rec);
            }
            bail!(
                "database {} does not exist in organization {}",
                self.t.database,
                self.t.organization
            );
        };
        let name = branch_name(&self.t.database, ctx.snapshot_id);
        // Point in time (Turso's PITR docs; sqld namespace/configurator/fork.rs): a timestamp
        // restores from the backup and may miss up to 15 s of writes before it; no timestamp
        // forks the current state. With the application stopped the current state is exact.
        let (timestamp, point_in_time) = if ctx.quiesced {
            (
                None,
                "current state: the before hooks had stopped the application, so the branch was forked from the source's current state (no timestamp)".to_string(),
            )
        } else {
            let ts = self.seed_timestamp();
            let pit = format!("{ts} by the Turso Platform API's clock; Turso documents that up to 15 s of writes before it may be missing from the branch (a before hook that stops the application makes the branch the exact current state)");
            (Some(ts), pit)
        };
        let info = self.create_branch(&name, timestamp.as_deref())?;
        if info.name != name {
            bail!("the Platform API created {} when asked for {name}", info.name);
        }
        for (k, v) in [
            ("organization", self.t.organization.clone()),
            ("database", self.t.database.clone()),
            ("source_db_id", src.id.clone()),
            ("group", self.t.group.clone()),
            ("branch", info.name.clone()),
            ("branch_db_id", info.id.clone()),
            ("branch_hostname", info.hostname.clone()),
            ("point_in_time", point_in_time),
            (
                "restore",
                if self.t.restore == TursoRestore::Reload {
                    "reload".into()
                } else {
                    "promote".into()
                },
            ),
        ] {
            rec.meta.insert(k.into(), v);
        }
        if let Some(ts) = &timestamp {
            rec.meta.insert("seed_timestamp".into(), ts.clone());
        }
        if let Err(e) = self.snapshot_inner(ctx, &mut rec, &info, &src) {
            // No half-made snapshot: the branch goes with it.
            if let Err(d) = self.delete_branch(&info.name) {
                return Err(e.context(format!("and the branch {} could not be deleted: {d:#}", info.name)));
            }
            return Err(e);
        }
        Ok(rec)
    }

    fn deep_verify(&self, rec: &TargetRecord, store: &dyn Store, scratch: &Path) -> Result<()> {
        if rec.absent {
            return Ok(());
        }
        let info = self.recorded_branch(rec)?;
        let branch = self.branch_db(&info)?;
        branch.answer(Duration::from_secs(10), false)?;
        let got = self.read_fingerprints(&branch, &rec.hashed_items(), false)?;
        compare_fingerprints(&rec.fingerprints, &got).with_context(|| {
            format!(
                "branch {} differs from the fingerprints recorded at snapshot time",
                info.name
            )
        })?;
        if let Some(a) = rec.artifacts.iter().find(|a| a.format == "sql") {
            let path = scratch.join(format!("{}.export.db", rec.name));
            let r = check_export(rec, store, a, &path);
            let _ = std::fs::remove_file(&path);
            r?;
        }
        Ok(())
    }

    /// Drill: the branch answers with the recorded fingerprints, and the export is restored
    /// into a scratch SQLite file, checked, and offered to the drill's checks.
    fn drill(&self, rec: &TargetRecord, store: &dyn Store, scratch: &Path) -> Result<Option<Box<dyn Target>>> {
        self.deep_verify(rec, store, scratch)?;
        let Some(a) = rec.artifacts.iter().find(|a| a.format == "sql") else {
            return Ok(None);
        };
        let path = scratch.join(format!("{}.drill.db", rec.name));
        check_export(rec, store, a, &path)?;
        let spec = TargetSpec::new(rec.name.clone(), KindSpec::Sqlite(SqliteSpec::at(path.clone())));
        Ok(Some(Box::new(super::sqlite::SqliteTarget::new(spec, path))))
    }

    fn restore(&self, rec: &TargetRecord, store: &dyn Store) -> Result<Restored> {
        if rec.absent {
            bail!("the snapshot recorded no database {}; guard never deletes a Turso database — remove it yourself if that is what you want", self.t.database);
        }
        match self.t.restore {
            TursoRestore::Reload => self.reload(rec, store).map(|()| Restored::Done),
            // Not a success: the source still holds the failed state until someone repoints.
            TursoRestore::Promote => Ok(Restored::Manual(self.promote_instructions(rec)?)),
        }
    }

    fn verify_restored(&self, rec: &TargetRecord) -> Result<()> {
        if rec.absent {
            return match self.find_database(&self.t.database)? {
                Some(_) => bail!("database {} exists but the snapshot recorded none", self.t.database),
                None => Ok(()),
            };
        }
        let source = self.source_db()?;
        let got = self.read_fingerprints(&source, &rec.hashed_items(), false)?;
        compare_fingerprints(&rec.fingerprints, &got)?;
        // Beyond the recorded hashes: every table's content equals the branch's (when the
        // branch is gone the restore came from the export, checked against the record above).
        let Some(info) = self.find_recorded_branch(rec)? else {
            return Ok(());
        };
        let branch = self.branch_db(&info)?;
        let tables: Vec<String> = rec
            .fingerprints
            .keys()
            .filter(|k| !k.starts_with('@'))
            .cloned()
            .collect();
        let want = self.read_fingerprints(&branch, &tables, true)?;
        let got = self.read_fingerprints(&source, &tables, true)?;
        compare_fingerprints(&want, &got)
            .with_context(|| format!("{} differs from branch {}", self.t.database, info.name))
    }

    fn fingerprint_existing(&self, table: &str, columns: &[crate::manifest::Column]) -> Result<Fingerprint> {
        let db = self.source_db()?;
        let mut s = db.stream();
        s.execute("BEGIN", &[])?;
        let r = existing_fingerprint(&mut s, table, columns);
        let _ = s.execute("ROLLBACK", &[]);
        s.close();
        r
    }

    fn fingerprint(&self, items: &[String]) -> Result<BTreeMap<String, Fingerprint>> {
        let db = self.source_db()?;
        let mut s = db.stream();
        s.execute("BEGIN", &[])?;
        let mut out = BTreeMap::new();
        let r = items.iter().try_for_each(|t| {
            out.insert(t.clone(), table_fingerprint(&mut s, t)?);
            Ok::<_, anyhow::Error>(())
        });
        let _ = s.execute("ROLLBACK", &[]);
        s.close();
        r?;
        Ok(out)
    }

    /// Retention: a pruned snapshot's branch database is deleted (only ever a guard branch of
    /// this target's database; see [`TursoTarget::delete_branch`]).
    fn release(&self, rec: &TargetRecord, _kept: &[TargetRecord], _store: &dyn Store) -> Result<()> {
        match rec.meta.get("branch") {
            Some(name) if !rec.absent => self.delete_branch(name).map(|_| ()),
            _ => Ok(()),
        }
    }

    fn query(&self, sql: &str) -> Result<String> {
        let db = self.source_db()?;
        let mut s = db.stream();
        let r = s.execute(sql, &[]);
        s.close();
        Ok(r?.first().map(Val::to_text).unwrap_or_else(|| "NULL".into()))
    }
}
