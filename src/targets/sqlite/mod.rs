//! SQLite database files.
//!
//! Snapshot: the online backup API copies the database into scratch in one step under a read
//! transaction, so the copy is consistent while other processes keep writing (WAL databases
//! included); `PRAGMA quick_check` runs on the copy before it is compressed (`guard verify` and
//! drills run the full `integrity_check` on the stored artifact). Restore:
//! decompress beside the live file, check the content checksum, checkpoint and remove the live
//! `-wal`/`-shm`/`-journal`, then rename over the original and fsync the directory.
//!
//! A symlinked `path` is followed: the snapshot records the file it read (`meta.resolved`) and
//! a restore writes that file, keeping the link, and only while the link still leads there.
//! Another process's lock is waited for at most `busy_timeout` ([`BUSY_TIMEOUT`] unless set); a database still locked then,
//! or one with a hot journal, is never copied byte for byte (its file holds uncommitted pages)
//! and never restored over (its writer's `-journal` is never deleted): guard says who holds it
//! and stops.

pub(crate) mod hot;
mod locks;

pub mod config;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use rusqlite::{Connection, OpenFlags};

use super::sql::fingerprint::{compare_fingerprints, existing_fingerprint, fingerprints, table_fingerprint};
use super::{Restored, SnapshotCtx, Target};
use crate::artifact::read_artifact;
use crate::manifest::{Fingerprint, TargetRecord};
use crate::store::local::{private_temp_beside, sync_dir};
use crate::store::Store;
use crate::targets::{KindSpec, TargetSpec};
pub use config::SqliteSpec;

pub struct SqliteTarget {
    spec: TargetSpec,
    path: PathBuf,
    /// A view over the failed state a swap set aside ([`hot`]): the path the policy names,
    /// recorded as the source of its rescue snapshot.
    shown: Option<PathBuf>,
}

/// How long guard waits for another process's lock on a database before it stops, unless the
/// target sets `busy_timeout`.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// A database another process holds locked: never copied, never restored over.
#[derive(Debug)]
struct Busy(String);

impl std::fmt::Display for Busy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Busy {}

/// Did SQLite (or guard) give up waiting for another process's lock?
fn is_busy(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<Busy>().is_some()
            || c.downcast_ref::<rusqlite::Error>().is_some_and(|r| {
                matches!(
                    r.sqlite_error_code(),
                    Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
                )
            })
    })
}

/// What a file type is, for messages about a path that is not a database file.
fn file_type_name(ft: fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        "a directory"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_fifo() {
        "a named pipe"
    } else if ft.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

impl SqliteTarget {
    pub fn new(spec: TargetSpec, path: PathBuf) -> Self {
        SqliteTarget {
            spec,
            path,
            shown: None,
        }
    }

    /// The target's `busy_timeout`.
    fn busy_timeout(&self) -> Duration {
        match &self.spec.kind {
            KindSpec::Sqlite(s) => s.busy_timeout,
            _ => BUSY_TIMEOUT,
        }
    }

    /// The database file behind the policy's path, symlinks resolved, or why there is none.
    fn live_file(&self) -> Result<PathBuf> {
        let (name, p) = (&self.spec.name, &self.path);
        match fs::metadata(p) {
            Ok(m) if m.is_file() => fs::canonicalize(p).with_context(|| format!("target {name}: cannot resolve {}", p.display())),
            Ok(m) if m.is_dir() => bail!(
                "target {name}: {} is a directory, not a SQLite database file; `path` names the database file itself (for example {})",
                p.display(),
                p.join("app.db").display()
            ),
            Ok(m) => bail!(
                "target {name}: {} is {}, not a SQLite database file; `path` names the database file itself",
                p.display(),
                file_type_name(m.file_type())
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(super::missing_path(name, "database", p)),
            Err(e) => Err(e).with_context(|| format!("target {name}: cannot read {}", p.display())),
        }
    }

    fn open_live(&self) -> Result<Connection> {
        let file = self.live_file()?;
        let c = Connection::open_with_flags(
            &file,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .with_context(|| format!("target {}: cannot open {}", self.spec.name, self.path.display()))?;
        c.busy_timeout(self.busy_timeout())?;
        Ok(c)
    }

    /// The error for a database another process keeps locked (called with no connection of
    /// guard's open to it: see [`locks`]).
    fn locked(&self, file: &Path, cause: &anyhow::Error) -> anyhow::Error {
        let who = match locks::user_of(file) {
            Some((pid, what)) => format!("{} holds {what}", locks::describe(pid)),
            None => format!("another process holds it ({cause:#})"),
        };
        anyhow::Error::new(Busy(format!(
            "target {}: {} is locked: {who}; guard waited {}s (`busy_timeout`). A copy taken now could hold writes that were never committed, so guard stops here; let that process commit or roll back (or stop it), then retry",
            self.spec.name,
            self.path.display(),
            self.busy_timeout().as_secs_f64()
        )))
    }

    /// Where a restore of `rec` writes: the file the snapshot read. A symlinked path must still
    /// lead to the file it led to then (the link is kept); the manifest alone never decides.
    fn restore_dest(&self, rec: &TargetRecord) -> Result<PathBuf> {
        let Some(recorded) = rec.meta.get("resolved") else {
            return Ok(self.path.clone());
        };
        let now = fs::canonicalize(&self.path).ok();
        if now.as_deref() != Some(Path::new(recorded)) {
            bail!(
                "target {}: the snapshot read {recorded} through {}, which now leads to {}; nothing was restored for this target. Point {} back at {recorded} (ln -sfn) and run the restore again",
                self.spec.name,
                self.path.display(),
                now.map(|p| p.display().to_string()).unwrap_or_else(|| "nothing".into()),
                self.path.display()
            );
        }
        Ok(PathBuf::from(recorded))
    }
}

fn sidecars(path: &Path) -> [PathBuf; 3] {
    let s = path.as_os_str().to_string_lossy();
    [
        PathBuf::from(format!("{s}-wal")),
        PathBuf::from(format!("{s}-shm")),
        PathBuf::from(format!("{s}-journal")),
    ]
}

/// `PRAGMA integrity_check`: every page, b-tree, record, and every index against its table.
fn integrity_check(c: &Connection) -> Result<()> {
    check_pragma(c, "integrity_check")
}

/// `PRAGMA quick_check`: every page, b-tree and record in O(N), without cross-checking index
/// contents (measured: 0.33 s against integrity_check's 7.3 s on a 232 MB database). Used on
/// the pre-command copy, where it sits on the critical path; `guard verify` and drills run the
/// full [`integrity_check`].
fn quick_check(c: &Connection) -> Result<()> {
    check_pragma(c, "quick_check")
}

fn check_pragma(c: &Connection, pragma: &str) -> Result<()> {
    let mut st = c.prepare(&format!("PRAGMA {pragma}"))?;
    let msgs = st
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    if msgs.len() == 1 && msgs[0] == "ok" {
        Ok(())
    } else {
        bail!("{pragma}: {}", msgs.into_iter().take(5).collect::<Vec<_>>().join("; "))
    }
}

/// Give the restored file `tmp` the owner and mode it should have at `dest`. From the record
/// only when guard can trust it (its own snapshot in this process, or a manifest the store key
/// authenticates); otherwise (issue 16, R17: anyone who can write the store chose them) from
/// the live file, or, when the command removed it, the directory's owner and mode 0600.
/// Owner first: a chown clears set-user-ID bits. Setuid, setgid and sticky bits are never set
/// on a database.
fn owner_and_mode(rec: &TargetRecord, dest: &Path, tmp: &Path) -> Result<()> {
    let (owner, mode) = if !rec.untrusted {
        let owner = match (rec.meta.get("uid"), rec.meta.get("gid")) {
            (Some(u), Some(g)) => u.parse::<u32>().ok().zip(g.parse::<u32>().ok()),
            _ => None,
        };
        (owner, rec.meta.get("mode").and_then(|m| u32::from_str_radix(m, 8).ok()))
    } else {
        match fs::metadata(dest) {
            Ok(m) if m.is_file() => (Some((m.uid(), m.gid())), Some(m.permissions().mode())),
            _ => {
                let dir = dest
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                (fs::metadata(dir).ok().map(|m| (m.uid(), m.gid())), Some(0o600))
            }
        }
    };
    if let Some((u, g)) = owner {
        // Only root can give files away; elsewhere they are ours already.
        let _ = std::os::unix::fs::chown(tmp, Some(u), Some(g));
    }
    if let Some(mode) = mode {
        fs::set_permissions(tmp, fs::Permissions::from_mode(mode & 0o777))?;
    }
    Ok(())
}

fn sqlite_version() -> String {
    rusqlite::version().to_string()
}

impl SqliteTarget {
    /// The normal snapshot: a consistent copy through the online backup API, integrity-checked
    /// and fingerprinted, then compressed into the store.
    fn consistent_copy(&self, ctx: &SnapshotCtx, rec: &mut TargetRecord) -> Result<()> {
        let file = self.live_file()?;
        if file != self.path && self.shown.is_none() {
            rec.meta.insert("resolved".into(), file.display().to_string());
        }
        let src = self.open_live()?;
        let meta = fs::metadata(&file)?;
        rec.meta
            .insert("mode".into(), format!("{:o}", meta.permissions().mode() & 0o7777));
        rec.meta.insert("uid".into(), meta.uid().to_string());
        rec.meta.insert("gid".into(), meta.gid().to_string());
        let jm: String = src.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
        rec.meta.insert("journal_mode".into(), jm);

        // A guarded run's pre-run copy is kept beside the database (the hot copy), when there
        // is room, for a restore by rename; otherwise it goes to scratch as before.
        let hot = match ctx.hot {
            Some(tag) if self.shown.is_none() && file == self.path => match hot::create(&file, tag) {
                Ok(p) => Some((p, tag)),
                Err(why) => {
                    rec.meta.insert("hot_skipped".into(), why);
                    None
                }
            },
            _ => None,
        };
        let copy = match &hot {
            Some((p, _)) => p.clone(),
            None => ctx.scratch.join(format!("{}.db", self.spec.name)),
        };
        let r = self.copy_into(ctx, rec, src, &copy, hot.map(|(_, tag)| tag));
        if r.is_err() || ctx.hot.is_none() || !rec.meta.contains_key("hot_id") {
            for s in sidecars(&copy) {
                let _ = fs::remove_file(s);
            }
            let _ = fs::remove_file(&copy);
        }
        r
    }

    /// The backup of `src` into `copy`, checked, fingerprinted and compressed into the store;
    /// a hot copy (`hot` = its run) also gets the live mode and owner and its identity recorded.
    fn copy_into(
        &self,
        ctx: &SnapshotCtx,
        rec: &mut TargetRecord,
        src: Connection,
        copy: &Path,
        hot: Option<&str>,
    ) -> Result<()> {
        let full = |e: rusqlite::Error| -> anyhow::Error {
            if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
                anyhow!(
                    "No space left on device: the filesystem of {} filled up while copying {}",
                    ctx.scratch.display(),
                    self.path.display()
                )
            } else {
                e.into()
            }
        };
        {
            let mut dst = Connection::open(copy)?;
            let backup = rusqlite::backup::Backup::new(&src, &mut dst)?;
            // One step copies every page under a single read transaction: consistent even while
            // other connections write, and never restarted by them. A writer's lock is waited
            // for (the source's busy timeout, then here) until `busy_timeout`, no longer.
            let deadline = Instant::now() + self.busy_timeout();
            loop {
                match backup.step(-1).map_err(full)? {
                    rusqlite::backup::StepResult::Done => break,
                    rusqlite::backup::StepResult::More => continue,
                    _ if Instant::now() >= deadline => {
                        return Err(anyhow::Error::new(Busy(format!(
                            "database {} stayed locked",
                            self.path.display()
                        ))))
                    }
                    _ => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        drop(src);
        {
            let mut c = Connection::open(copy)?;
            quick_check(&c)
                .with_context(|| format!("target {}: the copy failed its integrity check", self.spec.name))?;
            rec.fingerprints = fingerprints(&mut c, ctx.fingerprint, ctx.allow_absent)
                .with_context(|| format!("target {}", self.spec.name))?;
        }
        for s in sidecars(copy) {
            let _ = fs::remove_file(s);
        }
        if hot.is_some() {
            hot::finish(copy, rec)?;
        }
        // A local store without room for the artifact however little it compresses: it is
        // written now, before the command, so a full store stops the run before it starts.
        let room = match (hot, ctx.store.local_root()) {
            (Some(_), Some(root)) => hot::store_room(root, fs::metadata(copy)?.len()),
            _ => Ok(()),
        };
        if let (Some(tag), Ok(())) = (hot, &room) {
            // The hot copy, `quick_check`ed, is the verified snapshot from here: its identity is
            // recorded (and journaled), and the command may start. Its store artifact is
            // written while the command runs ([`Target::write_deferred`]).
            rec.meta.insert("hot".into(), tag.to_string());
            rec.meta.insert("hot_id".into(), hot::identity(copy)?);
            return Ok(());
        }
        if let Err(why) = room {
            rec.meta.insert("defer_skipped".into(), why);
        }
        let before = hot.map(|_| hot::identity(copy)).transpose()?;
        let f = fs::File::open(copy)?;
        let artifact = ctx.write_artifact(ctx.key(&self.spec.name, "sqlite.gz"), "sqlite", f)?;
        rec.artifacts.push(artifact);
        if let (Some(tag), Some(before)) = (hot, before) {
            // Unchanged while it was read: the artifact's content checksum is this file's.
            if hot::identity(copy)? == before {
                rec.meta.insert("hot".into(), tag.to_string());
                rec.meta.insert("hot_id".into(), before);
            }
        }
        Ok(())
    }

    /// Is the live path the hot copy `rec` records, renamed into place and not written since
    /// (device, inode, size and mtime as recorded: a rename changes only its ctime)?
    fn renamed_in(&self, rec: &TargetRecord) -> bool {
        let (Some(want), Ok(now)) = (rec.meta.get("hot_id"), fs::symlink_metadata(&self.path)) else {
            return false;
        };
        if !now.is_file() {
            return false;
        }
        let want: Vec<&str> = want.split(':').take(4).collect();
        let now = [
            now.dev().to_string(),
            now.ino().to_string(),
            now.size().to_string(),
            format!("{}.{:09}", now.mtime(), now.mtime_nsec()),
        ];
        want == now
    }

    /// The deferred store artifact of a pre-run snapshot: the hot copy compressed into the
    /// store, read only while its identity is the one recorded when it was checked.
    fn write_hot(
        &self,
        ctx: &SnapshotCtx,
        rec: &mut TargetRecord,
        cancel: &std::sync::atomic::AtomicBool,
    ) -> Result<()> {
        let (Some(tag), Some(want)) = (rec.meta.get("hot").cloned(), rec.meta.get("hot_id").cloned()) else {
            bail!("target {}: the snapshot names no hot copy", self.spec.name);
        };
        let copy = hot::hot_path(&self.path, &tag).ok_or_else(|| anyhow!("run id {tag:?} cannot name a file"))?;
        let changed = |when: &str| -> Result<()> {
            let got = hot::identity(&copy)?;
            if got != want {
                bail!(
                    "the hot copy {} changed {when} ({got}, recorded {want}): it is no longer the state that was checked",
                    copy.display()
                );
            }
            Ok(())
        };
        changed("before its store artifact was written")?;
        let f = fs::File::open(&copy).with_context(|| format!("cannot read {}", copy.display()))?;
        if f.metadata()?.ino() != fs::symlink_metadata(&copy)?.ino() {
            bail!("the hot copy {} was replaced while it was opened", copy.display());
        }
        let input = crate::targets::Cancellable { inner: f, cancel };
        let artifact = ctx.write_artifact(ctx.key(&self.spec.name, "sqlite.gz"), "sqlite", input)?;
        // Unchanged while it was read: the artifact's content checksum is this file's.
        changed("while its store artifact was written")?;
        rec.artifacts.push(artifact);
        Ok(())
    }

    /// The raw bytes of the database file (and its `-wal`), for a rescue snapshot of a database
    /// SQLite can no longer read.
    fn raw_copy(&self, ctx: &SnapshotCtx, mut rec: TargetRecord, why: &anyhow::Error) -> Result<TargetRecord> {
        let file = self.live_file().unwrap_or_else(|_| self.path.clone());
        // Bytes are only the state when no transaction is half done: not while another process
        // holds a lock, and not with a hot journal (the file then holds uncommitted pages).
        if locks::user_of(&file).is_some() {
            return Err(self.locked(&file, why));
        }
        if locks::hot_journal(&file) {
            bail!(
                "target {}: SQLite cannot read {} ({why:#}), and it has a hot journal ({}-journal): its last transaction never finished, so the file holds pages that were never committed; guard keeps no copy of those bytes",
                self.spec.name,
                self.path.display(),
                file.display()
            );
        }
        rec.fingerprints.clear();
        rec.artifacts.clear();
        rec.meta.insert(
            "raw_copy".into(),
            format!("SQLite could not copy it ({why:#}); its bytes are kept as they were"),
        );
        let f = fs::File::open(&file).with_context(|| format!("cannot read {}", self.path.display()))?;
        rec.artifacts
            .push(ctx.write_artifact(ctx.key(&self.spec.name, "raw.gz"), "raw-file", f)?);
        let wal = &sidecars(&file)[0];
        if let Ok(f) = fs::File::open(wal) {
            rec.artifacts
                .push(ctx.write_artifact(ctx.key(&self.spec.name, "raw-wal.gz"), "raw-wal", f)?);
        }
        Ok(rec)
    }
}

fn is_raw(rec: &TargetRecord) -> bool {
    rec.artifacts.first().is_some_and(|a| a.format == "raw-file")
}

impl Target for SqliteTarget {
    fn spec(&self) -> &TargetSpec {
        &self.spec
    }

    fn source(&self) -> String {
        self.shown.as_ref().unwrap_or(&self.path).display().to_string()
    }

    fn preflight(&self) -> Result<()> {
        let c = self.open_live()?;
        c.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get::<_, i64>(0))
            .with_context(|| {
                format!(
                    "target {}: {} is not a readable SQLite database",
                    self.spec.name,
                    self.path.display()
                )
            })?;
        Ok(())
    }

    fn snapshot(&self, ctx: &SnapshotCtx) -> Result<TargetRecord> {
        let mut rec = TargetRecord {
            name: self.spec.name.clone(),
            kind: "sqlite".into(),
            source: self.source(),
            ..Default::default()
        };
        rec.tools.insert("sqlite".into(), sqlite_version());
        if !self.path.exists() && ctx.allow_absent {
            rec.absent = true;
            return Ok(rec);
        }
        match self.consistent_copy(ctx, &mut rec) {
            Ok(()) => Ok(rec),
            // Locked by a writer: its uncommitted pages are not a state to keep. Say who.
            Err(e) if is_busy(&e) => Err(self.locked(&self.live_file().unwrap_or_else(|_| self.path.clone()), &e)),
            // A rescue must never fail because the command broke the database: keep its bytes.
            Err(e) if ctx.allow_absent => self.raw_copy(ctx, rec, &e),
            Err(e) => Err(e),
        }
    }

    fn deep_verify(&self, rec: &TargetRecord, store: &dyn Store, scratch: &Path) -> Result<()> {
        let dir = tempfile::Builder::new().prefix("verify-").tempdir_in(scratch)?;
        self.drill(rec, store, dir.path()).map(|_| ())
    }

    fn drill(&self, rec: &TargetRecord, store: &dyn Store, scratch: &Path) -> Result<Option<Box<dyn Target>>> {
        let Some(a) = rec.artifacts.first() else {
            return Ok(None);
        };
        if is_raw(rec) {
            // The bytes of a database the command broke: checksums are all there is to check.
            for a in &rec.artifacts {
                read_artifact(store, a, std::io::sink())?;
            }
            return Ok(None);
        }
        let copy = scratch.join(format!("{}.db", rec.name));
        {
            let f = fs::File::create(&copy)?;
            let mut w = std::io::BufWriter::new(f);
            read_artifact(store, a, &mut w)?;
            w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        }
        (|| {
            let mut c = Connection::open_with_flags(&copy, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
            integrity_check(&c)?;
            let hashed = rec.hashed_items();
            let got = fingerprints(&mut c, &hashed, false)?;
            compare_fingerprints(&rec.fingerprints, &got)
                .context("fingerprints differ from those recorded at snapshot time")
        })()
        .with_context(|| format!("{}/{}", store.location(), a.key))?;
        let spec = TargetSpec {
            line: self.spec.line,
            ..TargetSpec::new(rec.name.clone(), KindSpec::Sqlite(SqliteSpec::at(copy.clone())))
        };
        Ok(Some(Box::new(SqliteTarget::new(spec, copy))))
    }

    fn restore(&self, rec: &TargetRecord, store: &dyn Store) -> Result<Restored> {
        if let Some(done) =
            crate::targets::restore_unstored(rec, &self.path.display().to_string(), || Ok(self.renamed_in(rec)))
        {
            return done;
        }
        let dest = self.restore_dest(rec)?;
        // Never replace a database, or delete its -journal/-wal, under a process using it.
        if let Some((pid, what)) = locks::user_of(&dest) {
            bail!(
                "target {}: {} is in use: {} holds {what}; nothing was changed. Stop that process (or let it finish), then restore again",
                self.spec.name,
                self.path.display(),
                locks::describe(pid)
            );
        }
        if rec.absent {
            // The snapshot recorded no database: restoring it means removing the live one.
            if dest.exists() {
                fs::remove_file(&dest)?;
            }
            for s in sidecars(&dest) {
                let _ = fs::remove_file(s);
            }
            return Ok(Restored::Done);
        }
        let a = rec
            .artifacts
            .first()
            .ok_or_else(|| anyhow!("snapshot of {} has no artifact", rec.name))?;
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)?;
        }
        let (f, tmp) = private_temp_beside(&dest)
            .with_context(|| format!("cannot create a temporary file beside {}", dest.display()))?;
        let result = (|| -> Result<()> {
            let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
            read_artifact(store, a, &mut w)?;
            let f = w.into_inner().map_err(|e| e.into_error())?;
            f.sync_all()?;
            owner_and_mode(rec, &dest, &tmp)?;
            // Fold any WAL into the live file and let go of it, then remove every sidecar: a
            // stale WAL or hot journal next to the restored file would be replayed into it.
            if dest.is_file() {
                if let Ok(c) = Connection::open(&dest) {
                    let _ = c.busy_timeout(Duration::from_secs(5));
                    let _ = c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
                }
            }
            // The checkpoint opened a connection: look again, now that it is closed.
            if let Some((pid, what)) = locks::user_of(&dest) {
                bail!(
                    "{} is in use: {} holds {what}; nothing was changed",
                    self.path.display(),
                    locks::describe(pid)
                );
            }
            for s in sidecars(&dest) {
                match fs::remove_file(&s) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e).with_context(|| format!("cannot remove {}", s.display())),
                }
            }
            fs::rename(&tmp, &dest)?;
            // A raw rescue of a broken database also kept its WAL: put it back beside it.
            if let Some(w) = rec.artifacts.iter().find(|a| a.format == "raw-wal") {
                let wal = &sidecars(&dest)[0];
                let (f, wtmp) = private_temp_beside(wal)?;
                let mut out = std::io::BufWriter::new(f);
                read_artifact(store, w, &mut out)?;
                out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
                fs::rename(&wtmp, wal)?;
            }
            sync_dir(dest.parent().unwrap_or(Path::new(".")))?;
            Ok(())
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
            .with_context(|| format!("restoring {}", self.path.display()))
            .map(|()| Restored::Done)
    }

    fn verify_restored(&self, rec: &TargetRecord) -> Result<()> {
        if rec.absent {
            if self.path.exists() {
                bail!("{} exists but the snapshot recorded none", self.path.display());
            }
            return Ok(());
        }
        // The data the application reaches through the policy's path: through the link, when
        // the snapshot read one, and that link must still lead to the file it read.
        let file = self.live_file()?;
        if let Some(recorded) = rec.meta.get("resolved") {
            if file != Path::new(recorded) {
                bail!("{} leads to {}, not to {recorded}", self.path.display(), file.display());
            }
        } else if file != self.path && fs::symlink_metadata(&self.path)?.file_type().is_symlink() {
            bail!("{} is a symlink; the snapshot read a plain file", self.path.display());
        }
        if crate::targets::is_deferred(rec) {
            // No content checksum was ever taken: the proof is that the live path names the hot
            // copy, unwritten since it was checked, and the fingerprints below.
            if !self.renamed_in(rec) {
                bail!("{} is not the hot copy the snapshot recorded", self.path.display());
            }
        } else {
            let a = rec.artifacts.first().ok_or_else(|| anyhow!("no artifact"))?;
            let d = crate::archive::digest(fs::File::open(&file)?)?;
            if d.sha256 != a.raw_sha256 || d.bytes != a.raw_bytes {
                bail!("{} differs from the snapshot's content checksum", self.path.display());
            }
        }
        if is_raw(rec) {
            // Not a database SQLite can open: the bytes are the proof.
            return Ok(());
        }
        let hashed = rec.hashed_items();
        let mut c = Connection::open_with_flags(&file, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        let got = fingerprints(&mut c, &hashed, false)?;
        compare_fingerprints(&rec.fingerprints, &got)
    }

    fn swap_in(&self, rec: &TargetRecord, run_id: &str) -> Result<Option<Box<dyn Target>>> {
        if self.shown.is_some() {
            return Ok(None);
        }
        Ok(hot::swap_in(self, rec, run_id)?.map(|aside| {
            Box::new(SqliteTarget {
                spec: self.spec.clone(),
                path: aside,
                shown: Some(self.path.clone()),
            }) as Box<dyn Target>
        }))
    }

    fn write_deferred(
        &self,
        ctx: &SnapshotCtx,
        rec: &mut TargetRecord,
        cancel: &std::sync::atomic::AtomicBool,
    ) -> Result<()> {
        self.write_hot(ctx, rec, cancel)
    }

    fn drop_hot(&self, run_id: &str) {
        if self.shown.is_none() {
            hot::remove(&self.path, run_id);
        }
    }

    fn drop_aside(&self) -> Result<()> {
        match self.shown {
            Some(_) => hot::remove_aside(&self.path),
            None => Ok(()),
        }
    }

    fn aside(&self, run_id: &str) -> Option<String> {
        let own = self.shown.is_some().then(|| self.path.clone());
        own.or_else(|| hot::aside_path(&self.path, run_id))
            .filter(|p| fs::symlink_metadata(p).is_ok())
            .map(|p| format!("{} (with its -wal, if any)", p.display()))
    }

    fn fingerprint_existing(&self, table: &str, columns: &[crate::manifest::Column]) -> Result<Fingerprint> {
        existing_fingerprint(&mut self.open_live()?, table, columns)
    }

    fn fingerprint(&self, items: &[String]) -> Result<BTreeMap<String, Fingerprint>> {
        let mut c = self.open_live()?;
        let mut out = BTreeMap::new();
        for t in items {
            out.insert(t.clone(), table_fingerprint(&mut c, t)?);
        }
        Ok(out)
    }

    fn query(&self, sql: &str) -> Result<String> {
        let c = self.open_live()?;
        let mut st = c.prepare(sql)?;
        let mut rows = st.query([])?;
        match rows.next()? {
            None => Ok("NULL".into()),
            Some(r) => {
                use rusqlite::types::ValueRef;
                Ok(match r.get_ref(0)? {
                    ValueRef::Null => "NULL".into(),
                    ValueRef::Integer(i) => i.to_string(),
                    ValueRef::Real(f) => f.to_string(),
                    ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
                    ValueRef::Blob(b) => format!("x'{}'", hex::encode(b)),
                })
            }
        }
    }
}
