//! The catalog: a SQLite index (through sqlx) of the snapshots and runs in a store.
//!
//! Manifests and run journals in the store are the truth; the catalog only makes listing fast
//! and keeps verification results. [`Catalog::sync`] brings it up to date with the store and
//! [`Catalog::rebuild`] recreates it from scratch, so losing `catalog.db` loses nothing.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::str::FromStr;

use anyhow::{Context, Result};
use serde::Serialize;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::Row;

use crate::journal::Journal;
use crate::manifest::Manifest;
use crate::runtime::block_on;
use crate::store::{keys, Store};

pub struct Catalog {
    pool: SqlitePool,
    pub path: PathBuf,
}

/// A snapshot as listed.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotRow {
    pub id: String,
    pub policy: String,
    pub kind: String,
    pub label: Option<String>,
    pub run_id: Option<String>,
    pub created_at: String,
    /// The target names, comma-joined as stored; `--json` shows them as an array.
    #[serde(serialize_with = "comma_list")]
    pub targets: String,
    pub bytes: i64,
    pub raw_bytes: i64,
    pub verified_at: Option<String>,
    pub verified_ok: Option<bool>,
    pub drilled_ok: Option<bool>,
}

/// A comma-joined list as a JSON array (`"a,b"` → `["a", "b"]`; `""` → `[]`).
fn comma_list<S: serde::Serializer>(v: &str, s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.split(',').filter(|p| !p.is_empty()))
}

/// A restore drill as listed.
#[derive(Debug, Clone, Serialize)]
pub struct DrillRow {
    pub id: String,
    pub policy: String,
    pub snapshot_id: String,
    pub started_at: String,
    pub seconds: f64,
    pub ok: bool,
    pub report: serde_json::Value,
}

/// A run as listed.
#[derive(Debug, Clone, Serialize)]
pub struct RunRow {
    pub id: String,
    pub policy: String,
    pub started_at: String,
    pub phase: String,
    pub outcome: Option<String>,
    pub exit_code: Option<i64>,
    pub snapshot_id: Option<String>,
    pub rescue_id: Option<String>,
    /// The command's words (stored as a JSON array; a catalog written before that holds the
    /// words joined by spaces, read back as one word).
    pub command: Vec<String>,
}

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS snapshots (
  id TEXT PRIMARY KEY,
  policy TEXT NOT NULL,
  kind TEXT NOT NULL,
  label TEXT,
  run_id TEXT,
  created_at TEXT NOT NULL,
  completed_at TEXT NOT NULL,
  targets TEXT NOT NULL,
  bytes INTEGER NOT NULL,
  raw_bytes INTEGER NOT NULL,
  verified_at TEXT,
  verified_ok INTEGER,
  manifest_sha256 TEXT,
  drilled_at TEXT,
  drilled_ok INTEGER
);
CREATE INDEX IF NOT EXISTS snapshots_policy ON snapshots(policy, created_at);
CREATE TABLE IF NOT EXISTS runs (
  id TEXT PRIMARY KEY,
  policy TEXT NOT NULL,
  started_at TEXT NOT NULL,
  phase TEXT NOT NULL,
  outcome TEXT,
  exit_code INTEGER,
  snapshot_id TEXT,
  rescue_id TEXT,
  command TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS drills (
  id TEXT PRIMARY KEY,
  policy TEXT NOT NULL,
  snapshot_id TEXT NOT NULL,
  started_at TEXT NOT NULL,
  seconds REAL NOT NULL,
  ok INTEGER NOT NULL,
  report TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS check_results (
  run_id TEXT NOT NULL,
  name TEXT NOT NULL,
  target TEXT,
  before TEXT,
  after TEXT,
  expect TEXT NOT NULL,
  passed INTEGER NOT NULL,
  detail TEXT,
  PRIMARY KEY (run_id, name)
);
"#;

impl Catalog {
    /// Open (creating) the catalog of a store and bring it up to date. A damaged catalog (not
    /// a database, malformed) is moved aside (`catalog.db.damaged-TIME`) and rebuilt from the
    /// manifests and journals, with the drill history and verification results that can still
    /// be read from it; a warning says what was kept and what was lost. It never blocks a
    /// command: the manifests are the truth.
    pub fn open(store: &dyn Store) -> Result<Catalog> {
        // A remote store's catalog is a local cache file (rebuilt from the manifests by `sync`).
        let path = crate::store::state::state_dir(store)?.join(keys::CATALOG);
        private_files(&path)?;
        match Catalog::open_at(store, &path) {
            Err(e) if damaged(&e) => Catalog::rebuild_damaged(store, &path, e),
            Err(e) => Err(match unwritable(&path) {
                // SQLite says only "unable to open database file": say why.
                Some(why) => e.context(format!("{} cannot be written: {why}", path.display())),
                None => e,
            }),
            r => r,
        }
    }

    /// Move the damaged catalog at `path` aside, open a new one, and put back what could be
    /// read from the old one.
    fn rebuild_damaged(store: &dyn Store, path: &std::path::Path, e: anyhow::Error) -> Result<Catalog> {
        let salvaged = salvage(path);
        let aside = path.with_extension(format!("db.damaged-{}", crate::clock::now().unix_timestamp()));
        std::fs::rename(path, &aside)
            .with_context(|| format!("moving the damaged catalog {} aside", path.display()))?;
        for ext in ["db-wal", "db-shm"] {
            let _ = std::fs::remove_file(path.with_extension(ext));
        }
        let cat = Catalog::open_at(store, path)?;
        let (drills, verified) = match &salvaged {
            Ok((drills, verified)) => {
                for d in drills {
                    let _ = cat.record_drill(d);
                }
                for (id, at, ok) in verified {
                    let _ = block_on(
                        sqlx::query("UPDATE snapshots SET verified_at = ?, verified_ok = ? WHERE id = ?")
                            .bind(at)
                            .bind(ok)
                            .bind(id)
                            .execute(&cat.pool),
                    );
                }
                (drills.len(), verified.len())
            }
            Err(_) => (0, 0),
        };
        let lost = match &salvaged {
            Ok(_) => format!("kept {drills} drill(s) and {verified} verification result(s) from it"),
            Err(s) => format!(
                "nothing could be read from it ({s:#}): the drill history and verification results are lost (run `guard verify` and `guard drill` again)"
            ),
        };
        tracing_warn(&format!(
            "the catalog {} was damaged ({e:#}); it was moved to {} and rebuilt from the manifests; {lost}",
            path.display(),
            aside.display()
        ));
        Ok(cat)
    }

    fn open_at(store: &dyn Store, path: &std::path::Path) -> Result<Catalog> {
        let path = path.to_path_buf();
        let opts = SqliteConnectOptions::from_str("sqlite://")?
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // The catalog is an index that `sync` rebuilds from the store: WAL + NORMAL keeps
            // it consistent through crashes without an fsync per statement.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(std::time::Duration::from_secs(30));
        let pool = block_on(SqlitePoolOptions::new().max_connections(1).connect_with(opts))
            .with_context(|| format!("cannot open catalog {}", path.display()))?;
        block_on(sqlx::raw_sql(SCHEMA).execute(&pool)).context("creating catalog tables")?;
        let cat = Catalog { pool, path };
        cat.sync(store)?;
        Ok(cat)
    }

    /// The catalog for reading only, when it cannot be brought up to date (a full disk, a
    /// read-only store): opened read-only, never written, as last indexed. `guard status` uses
    /// it so that it works whatever the store's filesystem is doing.
    pub fn open_read_only(store: &dyn Store) -> Result<Catalog> {
        let path = crate::store::state::state_dir(store)?.join(keys::CATALOG);
        let open = |immutable: bool| -> Result<SqlitePool> {
            let opts = SqliteConnectOptions::from_str("sqlite://")?
                .filename(&path)
                .read_only(true)
                .immutable(immutable);
            let pool = block_on(SqlitePoolOptions::new().max_connections(1).connect_with(opts))?;
            // SQLite reads the file on the first statement, not on open: a WAL database whose
            // `-shm` is gone (closed cleanly, then the filesystem went read-only) fails here.
            block_on(sqlx::query("SELECT count(*) FROM sqlite_master").fetch_one(&pool))?;
            Ok(pool)
        };
        // A read-only open needs the `-shm` file (or the right to create it); on a read-only
        // filesystem nothing can change the file, so reading it as immutable is exact.
        let pool = open(false)
            .or_else(|_| open(true))
            .with_context(|| format!("cannot open catalog {} read-only", path.display()))?;
        Ok(Catalog { pool, path })
    }

    /// [`Catalog::open`], or, when that fails (it writes: the disk may be full),
    /// [`Catalog::open_read_only`] with a warning saying so.
    pub fn open_or_read_only(store: &dyn Store, ui: &crate::ui::Ui) -> Result<Catalog> {
        match Catalog::open(store) {
            Ok(c) => Ok(c),
            Err(e) => {
                let c = match Catalog::open_read_only(store) {
                    Ok(c) => c,
                    Err(e2) => return Err(e.context(format!("{e2:#}"))),
                };
                ui.warn(&format!(
                    "the catalog could not be brought up to date ({e:#}); showing it as last indexed, read-only (interrupted runs are read from the journals)"
                ));
                Ok(c)
            }
        }
    }

    /// Index manifests and journals that are in the store but not in the catalog, and forget
    /// rows whose manifest is gone.
    pub fn sync(&self, store: &dyn Store) -> Result<()> {
        let listed = store.list(keys::SNAPSHOTS)?;
        // A snapshot being pruned (it carries a prune marker) is no longer complete.
        let pruning: BTreeSet<&str> = listed.iter().filter_map(|e| keys::prune_marker_id(&e.key)).collect();
        let in_store: BTreeSet<String> = listed
            .iter()
            .filter_map(|e| keys::manifest_id(&e.key))
            .filter(|id| !pruning.contains(id))
            .map(str::to_string)
            .collect();
        let known: BTreeSet<String> =
            block_on(sqlx::query_scalar::<_, String>("SELECT id FROM snapshots").fetch_all(&self.pool))?
                .into_iter()
                .collect();
        // One transaction, driven by one `block_on`: indexing thousands of manifests costs
        // neither an fsync nor a runtime round trip per row.
        // Manifests are read first: a remote store drives its own async client.
        let mut new = Vec::new();
        // A manifest that cannot be read is not indexed, and nothing restores from it: every
        // command says so here; `status`, `verify` and `prune` also name it (crate::damaged).
        for id in in_store.difference(&known) {
            match Manifest::load(store, id) {
                Ok(m) => new.push(m),
                Err(e) => tracing_warn(&format!(
                    "skipping snapshot {id}: {e:#}; it is not listed or used (`guard status` says what to do)"
                )),
            }
        }
        block_on(async {
            let mut tx = self.pool.begin().await?;
            for m in &new {
                insert_snapshot(&mut *tx, m).await?;
            }
            for id in known.difference(&in_store) {
                delete_snapshot(&mut *tx, id).await?;
            }
            tx.commit().await?;
            anyhow::Ok(())
        })?;
        let runs: BTreeSet<String> = store
            .list(keys::RUNS)?
            .iter()
            .filter_map(|e| keys::journal_run_id(&e.key))
            .map(str::to_string)
            .collect();
        let known_runs: BTreeSet<String> = block_on(
            sqlx::query_scalar::<_, String>("SELECT id FROM runs WHERE phase = 'done'").fetch_all(&self.pool),
        )?
        .into_iter()
        .collect();
        for id in runs.difference(&known_runs) {
            if let Ok(j) = Journal::load(store, id) {
                self.record_run(&j)?;
            }
        }
        Ok(())
    }

    /// Drop everything and re-index from the store.
    pub fn rebuild(&self, store: &dyn Store) -> Result<()> {
        block_on(
            sqlx::raw_sql("DELETE FROM snapshots; DELETE FROM runs; DELETE FROM check_results;").execute(&self.pool),
        )?;
        // Drill history is not in the store: it is kept, and re-linked to snapshots below.
        self.sync(store)?;
        block_on(
            sqlx::raw_sql(
                "UPDATE snapshots SET drilled_ok = (SELECT ok FROM drills WHERE drills.snapshot_id = snapshots.id ORDER BY started_at DESC LIMIT 1),
                                      drilled_at = (SELECT started_at FROM drills WHERE drills.snapshot_id = snapshots.id ORDER BY started_at DESC LIMIT 1)",
            )
            .execute(&self.pool),
        )?;
        Ok(())
    }

    /// Index a snapshot. The SHA-256 of its manifest is kept as a witness: a manifest changed
    /// later (tampered with, or replaced) no longer matches it.
    pub fn record_snapshot(&self, m: &Manifest) -> Result<()> {
        block_on(insert_snapshot(&self.pool, m))
    }

    /// Drop snapshots from the index (retention, after marking them), in one transaction.
    pub fn forget_snapshots(&self, ids: &[String]) -> Result<()> {
        block_on(async {
            let mut tx = self.pool.begin().await?;
            for id in ids {
                delete_snapshot(&mut *tx, id).await?;
            }
            tx.commit().await?;
            anyhow::Ok(())
        })
    }

    /// Remember a drill and its verdict on the snapshot.
    pub fn record_drill(&self, d: &DrillRow) -> Result<()> {
        block_on(
            sqlx::query("INSERT OR REPLACE INTO drills (id, policy, snapshot_id, started_at, seconds, ok, report) VALUES (?, ?, ?, ?, ?, ?, ?)")
                .bind(&d.id)
                .bind(&d.policy)
                .bind(&d.snapshot_id)
                .bind(&d.started_at)
                .bind(d.seconds)
                .bind(d.ok)
                .bind(d.report.to_string())
                .execute(&self.pool),
        )?;
        block_on(
            sqlx::query("UPDATE snapshots SET drilled_at = ?, drilled_ok = ? WHERE id = ?")
                .bind(&d.started_at)
                .bind(d.ok)
                .bind(&d.snapshot_id)
                .execute(&self.pool),
        )?;
        Ok(())
    }

    /// Drills, newest first.
    pub fn drills(&self, policy: Option<&str>, limit: i64) -> Result<Vec<DrillRow>> {
        let rows = block_on(
            sqlx::query(
                "SELECT id, policy, snapshot_id, started_at, seconds, ok, report FROM drills
                 WHERE (?1 IS NULL OR policy = ?1) ORDER BY started_at DESC, id DESC LIMIT ?2",
            )
            .bind(policy)
            .bind(limit)
            .fetch_all(&self.pool),
        )?;
        Ok(rows
            .into_iter()
            .map(|r| DrillRow {
                id: r.get(0),
                policy: r.get(1),
                snapshot_id: r.get(2),
                started_at: r.get(3),
                seconds: r.get(4),
                ok: r.get(5),
                report: serde_json::from_str(&r.get::<String, _>(6)).unwrap_or(serde_json::Value::Null),
            })
            .collect())
    }

    /// The manifest witness recorded when the snapshot was indexed.
    pub fn manifest_witness(&self, id: &str) -> Result<Option<String>> {
        Ok(block_on(
            sqlx::query_scalar::<_, Option<String>>("SELECT manifest_sha256 FROM snapshots WHERE id = ?")
                .bind(id)
                .fetch_optional(&self.pool),
        )?
        .flatten())
    }

    /// Load a manifest and check it against the catalog's witness, naming the file if it changed.
    /// A manifest that is there but no longer parses (damaged after it was indexed) is dropped
    /// from the catalog, so it is named as damaged everywhere ([`crate::damaged`]) and no
    /// longer listed, kept or pruned as complete.
    pub fn load_manifest(&self, store: &dyn Store, id: &str) -> Result<Manifest> {
        let m = Manifest::load(store, id).inspect_err(|_| {
            let unparsable = store
                .get(&keys::manifest_key(id))
                .is_ok_and(|b| Manifest::from_json(&b, id).is_err());
            if unparsable {
                let _ = self.forget_snapshots(&[id.to_string()]);
            }
        })?;
        if let Some(w) = self.manifest_witness(id)? {
            // Compare canonical forms: the witness is the digest of the manifest as guard writes it.
            if crate::archive::digest(&m.canonical_json()[..])?.sha256 != w {
                anyhow::bail!(
                    "{}/{}: the manifest changed after the snapshot was recorded (tampered with or replaced); refusing to trust it",
                    store.location(),
                    keys::manifest_key(id)
                );
            }
        }
        Ok(m)
    }

    pub fn mark_verified(&self, id: &str, ok: bool) -> Result<()> {
        block_on(
            sqlx::query("UPDATE snapshots SET verified_at = ?, verified_ok = ? WHERE id = ?")
                .bind(crate::clock::rfc3339(crate::clock::now()))
                .bind(ok)
                .bind(id)
                .execute(&self.pool),
        )?;
        Ok(())
    }

    pub fn record_run(&self, j: &Journal) -> Result<()> {
        let mut tx = block_on(self.pool.begin())?;
        block_on(
            sqlx::query(
                "INSERT OR REPLACE INTO runs (id, policy, started_at, phase, outcome, exit_code, snapshot_id, rescue_id, command)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&j.run_id)
            .bind(&j.policy)
            .bind(crate::clock::rfc3339(j.started_at))
            .bind(j.phase.as_str())
            .bind(j.outcome.map(|o| o.as_str()))
            .bind(j.exit_code.map(i64::from))
            .bind(&j.snapshot_id)
            .bind(&j.rescue_id)
            .bind(serde_json::to_string(&j.command)?)
            .execute(&mut *tx),
        )?;
        block_on(
            sqlx::query("DELETE FROM check_results WHERE run_id = ?")
                .bind(&j.run_id)
                .execute(&mut *tx),
        )?;
        for c in &j.checks {
            block_on(
                sqlx::query(
                    "INSERT INTO check_results (run_id, name, target, before, after, expect, passed, detail)
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                )
                .bind(&j.run_id)
                .bind(&c.name)
                .bind(&c.target)
                .bind(&c.before)
                .bind(&c.after)
                .bind(&c.expect)
                .bind(c.passed)
                .bind(&c.detail)
                .execute(&mut *tx),
            )?;
        }
        block_on(tx.commit())?;
        Ok(())
    }

    /// Snapshots, newest first.
    pub fn snapshots(&self, policy: Option<&str>) -> Result<Vec<SnapshotRow>> {
        let rows = block_on(
            sqlx::query(
                "SELECT id, policy, kind, label, run_id, created_at, targets, bytes, raw_bytes, verified_at, verified_ok, drilled_ok
                 FROM snapshots WHERE (?1 IS NULL OR policy = ?1) ORDER BY created_at DESC, id DESC",
            )
            .bind(policy)
            .fetch_all(&self.pool),
        )?;
        Ok(rows
            .into_iter()
            .map(|r| SnapshotRow {
                id: r.get(0),
                policy: r.get(1),
                kind: r.get(2),
                label: r.get(3),
                run_id: r.get(4),
                created_at: r.get(5),
                targets: r.get(6),
                bytes: r.get(7),
                raw_bytes: r.get(8),
                verified_at: r.get(9),
                verified_ok: r.get(10),
                drilled_ok: r.get(11),
            })
            .collect())
    }

    /// Runs, newest first.
    pub fn runs(&self, policy: Option<&str>, limit: i64) -> Result<Vec<RunRow>> {
        let rows = block_on(
            sqlx::query(
                "SELECT id, policy, started_at, phase, outcome, exit_code, snapshot_id, rescue_id, command
                 FROM runs WHERE (?1 IS NULL OR policy = ?1) ORDER BY started_at DESC, id DESC LIMIT ?2",
            )
            .bind(policy)
            .bind(limit)
            .fetch_all(&self.pool),
        )?;
        Ok(rows
            .into_iter()
            .map(|r| RunRow {
                id: r.get(0),
                policy: r.get(1),
                started_at: r.get(2),
                phase: r.get(3),
                outcome: r.get(4),
                exit_code: r.get(5),
                snapshot_id: r.get(6),
                rescue_id: r.get(7),
                command: {
                    let s: String = r.get(8);
                    serde_json::from_str(&s).unwrap_or_else(|_| vec![s])
                },
            })
            .collect())
    }
}

/// The catalog and its `-wal` and `-shm`, where they exist, must be regular files of the
/// running user (never links: SQLite would write through them) and are made 0600, whatever
/// an older guard or the umask left (new ones are 0600: see `process::private_umask`).
fn private_files(db: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let me = unsafe { libc::geteuid() };
    for suffix in ["", "-wal", "-shm"] {
        let p = std::path::PathBuf::from(format!("{}{suffix}", db.display()));
        let Ok(m) = std::fs::symlink_metadata(&p) else { continue };
        if !m.file_type().is_file() || m.uid() != me {
            anyhow::bail!(
                "{} is {}; guard never opens its catalog through it. The catalog is only an index: remove it (rm {}*) and guard rebuilds it from the manifests",
                p.display(),
                if m.file_type().is_symlink() {
                    "a symbolic link".to_string()
                } else if !m.file_type().is_file() {
                    "not a regular file".to_string()
                } else {
                    format!("owned by uid {}, not by the running user (uid {me})", m.uid())
                },
                db.display()
            );
        }
        if m.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("cannot make {} private", p.display()))?;
        }
    }
    Ok(())
}

async fn delete_snapshot<'e, E: sqlx::SqliteExecutor<'e>>(e: E, id: &str) -> Result<()> {
    sqlx::query("DELETE FROM snapshots WHERE id = ?")
        .bind(id)
        .execute(e)
        .await?;
    Ok(())
}

/// Insert or update a snapshot row (see [`Catalog::record_snapshot`]).
async fn insert_snapshot<'e, E: sqlx::SqliteExecutor<'e>>(e: E, m: &Manifest) -> Result<()> {
    let targets = m.targets.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(",");
    let witness = crate::archive::digest(&m.canonical_json()[..])?.sha256;
    sqlx::query(
            "INSERT INTO snapshots (id, policy, kind, label, run_id, created_at, completed_at, targets, bytes, raw_bytes, manifest_sha256)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT(id) DO UPDATE SET policy=excluded.policy, kind=excluded.kind, label=excluded.label,
               run_id=excluded.run_id, created_at=excluded.created_at, completed_at=excluded.completed_at,
               targets=excluded.targets, bytes=excluded.bytes, raw_bytes=excluded.raw_bytes",
        )
        .bind(&m.id)
        .bind(&m.policy)
        .bind(m.kind.as_str())
        .bind(&m.label)
        .bind(&m.run_id)
        .bind(crate::clock::rfc3339(m.created_at))
        .bind(crate::clock::rfc3339(m.completed_at))
        .bind(targets)
        .bind(m.stored_bytes() as i64)
        .bind(m.raw_bytes() as i64)
        .bind(witness)
        .execute(e)
        .await?;
    Ok(())
}

/// Is `e` SQLite saying the catalog file is damaged (not a database, malformed)?
fn damaged(e: &anyhow::Error) -> bool {
    let s = format!("{e:#}");
    s.contains("file is not a database")
        || s.contains("malformed")
        || s.contains("(code: 26)")
        || s.contains("(code: 11)")
}

/// What can still be read from a damaged catalog: its drills, and the verification result of
/// each snapshot.
type Salvaged = (Vec<DrillRow>, Vec<(String, Option<String>, Option<bool>)>);

fn salvage(path: &std::path::Path) -> Result<Salvaged> {
    let opts = SqliteConnectOptions::from_str("sqlite://")?
        .filename(path)
        .read_only(true)
        .immutable(true);
    block_on(async {
        let pool = SqlitePoolOptions::new().max_connections(1).connect_with(opts).await?;
        let drills = sqlx::query("SELECT id, policy, snapshot_id, started_at, seconds, ok, report FROM drills")
            .fetch_all(&pool)
            .await?
            .into_iter()
            .map(|r| DrillRow {
                id: r.get(0),
                policy: r.get(1),
                snapshot_id: r.get(2),
                started_at: r.get(3),
                seconds: r.get(4),
                ok: r.get::<i64, _>(5) != 0,
                report: serde_json::from_str(&r.get::<String, _>(6)).unwrap_or(serde_json::Value::Null),
            })
            .collect();
        let verified = sqlx::query("SELECT id, verified_at, verified_ok FROM snapshots WHERE verified_at IS NOT NULL")
            .fetch_all(&pool)
            .await?
            .into_iter()
            .map(|r| (r.get(0), r.get(1), r.get::<Option<i64>, _>(2).map(|v| v != 0)))
            .collect();
        pool.close().await;
        anyhow::Ok((drills, verified))
    })
}

fn tracing_warn(msg: &str) {
    crate::errln!("guard: warning: {}", crate::secrets::redact(msg));
}

/// Why the directory holding `path` cannot be written (a read-only mount, permissions), if so.
fn unwritable(path: &std::path::Path) -> Option<std::io::Error> {
    use std::os::unix::ffi::OsStrExt;
    let dir = path.parent()?;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: a valid NUL-terminated path; access(2) reads it and nothing else.
    let r = unsafe { libc::access(c.as_ptr(), libc::W_OK) };
    (r != 0).then(std::io::Error::last_os_error)
}
