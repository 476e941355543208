//! Snapshot: `pg_dump` in the exported snapshot of one REPEATABLE READ transaction, streamed
//! through the compressor, parsed by `pg_restore` (or checked for the plain dump's trailer) as it
//! streams, and read back from the store.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};

use std::sync::atomic::AtomicBool;

use super::conn::{dump_app_name, qualified, Session, LOCK_WAIT};
use super::database::{findings, referenced_roles, DbState};
use super::fingerprint::fingerprints;
use super::tools::{drain, kill, status_text, tail, widen_pipe, Tools};
use super::watch::BlockerWatch;
use super::{say, PgFormat, PostgresTarget, Sessions, DUMP_LEVEL};
use crate::archive::Compression;
use crate::artifact::read_artifact;
use crate::manifest::TargetRecord;
use crate::store::Store;
use crate::targets::{Cancellable, SnapshotCtx};
use anyhow::{anyhow, bail, Context, Result};

impl PostgresTarget {
    pub(super) fn artifact_ext(&self) -> (&'static str, &'static str) {
        match self.pg.format {
            PgFormat::Custom => ("dump.gz", "pg-custom"),
            PgFormat::Plain => ("sql.gz", "pg-plain"),
        }
    }

    /// Check a stored dump whole with the stock tools: `pg_restore` parses every entry and
    /// data block of a custom archive and writes out the SQL it would run (and must write
    /// some); a plain dump must end with pg_dump's completion trailer. The artifact is read
    /// back from the store on the way, its stored and content checksums compared.
    pub(super) fn validate_artifact(&self, rec: &TargetRecord, store: &dyn Store, tools: &Tools) -> Result<()> {
        let Some(a) = rec
            .artifacts
            .iter()
            .find(|a| a.format == "pg-custom" || a.format == "pg-plain")
        else {
            bail!("snapshot of {} has no dump artifact", rec.name);
        };
        let where_ = format!("{}/{}", store.location(), a.key);
        if a.format == "pg-plain" {
            let mut w = TailWriter::default();
            read_artifact(store, a, &mut w)?;
            w.plain_dump_complete().with_context(|| where_.clone())?;
            return Ok(());
        }
        let mut child = Command::new(tools.bin("pg_restore"))
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot run {}", tools.bin("pg_restore").display()))?;
        let err = drain(child.stderr.take().expect("piped"));
        let mut out = child.stdout.take().expect("piped");
        // Bytes of SQL pg_restore wrote: an archive with nothing in it is not a dump.
        let counter = std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()).unwrap_or(0));
        let mut stdin = WriteFailed {
            inner: child.stdin.take().expect("piped"),
            failed: false,
        };
        let fed = read_artifact(store, a, &mut stdin);
        drop(stdin.inner);
        let status = child.wait()?;
        let n = counter.join().map_err(|_| anyhow!("reader thread panicked"))?;
        let stderr = err.join().unwrap_or_default();
        // pg_restore stopping early breaks the pipe: then its own error is the one to report.
        if fed.is_ok() || status.success() || !stdin.failed {
            fed.with_context(|| format!("{where_}: reading the artifact for pg_restore"))?;
        }
        if !status.success() {
            bail!(
                "{where_}: pg_restore cannot read the archive ({}): {}",
                status_text(status),
                tail(&stderr)
            );
        }
        if n == 0 {
            bail!("{where_}: pg_restore found nothing in the archive");
        }
        Ok(())
    }

    /// pg_dump into the store, fingerprints and CSV exports, all from one database snapshot,
    /// with a [`BlockerWatch`] on the sessions that block them: a rescue snapshot under
    /// `sessions = "terminate"` ends them; otherwise an error names them.
    pub(super) fn snapshot_live(&self, ctx: &SnapshotCtx, rec: &mut TargetRecord, tools: &Tools) -> Result<()> {
        let rescue = ctx.allow_absent;
        let terminate = rescue && self.pg.sessions == Sessions::Terminate;
        let step = if rescue { "the rescue snapshot" } else { "the snapshot" };
        let watch = BlockerWatch::start(&self.conn, &self.dbname(), &self.spec.name, step, terminate);
        let r = self.snapshot_watched(ctx, rec, tools);
        let report = watch.finish();
        let Err(e) = r else { return Ok(()) };
        let Some(blocked) = report.blocked_by() else {
            return Err(e);
        };
        let hint = if !rescue {
            "Let them finish (or stop them) and run again: before the command runs, guard ends no session"
        } else if terminate {
            "guard ended the ones it saw blocking it"
        } else {
            "End them, or set `sessions = \"terminate\"` on the target so that guard ends the sessions blocking its rescue snapshot and restore"
        };
        Err(anyhow!(
            "{e:#}; guard waits at most {} s for a lock, and it was {blocked}. {hint}",
            LOCK_WAIT.as_secs()
        ))
    }

    /// Everything of one snapshot is read in one exported REPEATABLE READ snapshot: the
    /// database's metadata and own state, then pg_dump (with the fingerprints beside it), then
    /// the CSV exports.
    fn snapshot_watched(&self, ctx: &SnapshotCtx, rec: &mut TargetRecord, tools: &Tools) -> Result<()> {
        let (mut session, snapshot_id) = self.export_snapshot(rec, tools)?;
        self.record_database_state(ctx, rec, &mut session)?;
        let compression = ctx.compression.default_level(DUMP_LEVEL);
        self.dump_and_fingerprint(ctx, rec, tools, &mut session, &snapshot_id, compression)?;
        self.export_csv_tables(ctx, rec, &mut session, compression)?;
        let _ = session.execute("COMMIT");
        drop(session);
        // The artifacts are read back from the store, against their checksums, by
        // snapshot::take; the compressor proved each block inflates to what pg_dump wrote.
        Ok(())
    }

    /// Open the snapshot transaction and export its snapshot for pg_dump; record the server's
    /// and pg_dump's versions and the database's encoding, collation and owner.
    pub(super) fn export_snapshot(&self, rec: &mut TargetRecord, tools: &Tools) -> Result<(Session, String)> {
        let name = &self.spec.name;
        let mut session = self.session()?;
        let (snapshot_id, server_version) = session
            .run(|c| async move {
                sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    .execute(&mut *c)
                    .await?;
                let id: String = sqlx::query_scalar("SELECT pg_export_snapshot()")
                    .fetch_one(&mut *c)
                    .await?;
                let v: String = sqlx::query_scalar("SHOW server_version").fetch_one(&mut *c).await?;
                Ok::<_, sqlx::Error>((id, v))
            })
            .with_context(|| format!("target {name}: cannot open a snapshot transaction"))?;
        rec.tools.insert("server".into(), server_version);
        rec.tools.insert("pg_dump".into(), tools.version.clone());
        let dbmeta: Option<(String, String, String, String)> = session.run(|c| {
            sqlx::query_as(
                "SELECT pg_encoding_to_char(d.encoding)::text, d.datcollate::text, d.datctype::text, r.rolname::text
                 FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba WHERE d.datname = current_database()",
            )
            .fetch_optional(c)
        })?;
        if let Some((enc, collate, ctype, owner)) = dbmeta {
            rec.meta.insert("db_encoding".into(), enc);
            rec.meta.insert("db_collate".into(), collate);
            rec.meta.insert("db_ctype".into(), ctype);
            rec.meta.insert("db_owner".into(), owner);
        }
        Ok((session, snapshot_id))
    }

    /// What a dump of one database leaves out, the roles it refers to, its large objects and
    /// the public schema's owner, grants and comment, into `rec.meta`; before the command runs,
    /// a database a restore could not put back is refused.
    pub(super) fn record_database_state(
        &self,
        ctx: &SnapshotCtx,
        rec: &mut TargetRecord,
        session: &mut Session,
    ) -> Result<()> {
        let name = &self.spec.name;
        // What a dump of one database leaves out (database.rs), the roles it refers to, and how
        // many large objects it holds (then the restore filters the dump's own transaction
        // control out of its SQL).
        let (state, roles, large_objects) = session
            .run(|c| async move {
                let state = DbState::capture(&mut *c).await?;
                let roles = referenced_roles(&mut *c).await?;
                let n: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_catalog.pg_largeobject_metadata")
                    .fetch_one(&mut *c)
                    .await?;
                Ok::<_, anyhow::Error>((state, roles, n))
            })
            .with_context(|| format!("target {name}: reading the database's own state"))?;
        rec.meta.insert("database_state".into(), serde_json::to_string(&state)?);
        rec.meta.insert("roles".into(), serde_json::to_string(&roles)?);
        rec.meta.insert("large_objects".into(), large_objects.to_string());
        // Before the command runs: what a restore could not put back (a rescue snapshot is
        // taken whatever it holds).
        if !ctx.allow_absent {
            let num: String = session.scalar("SHOW server_version_num")?;
            let num: u32 = num.trim().parse().unwrap_or(0);
            let format = self.pg.format;
            let live = self.live_db();
            let f = session
                .run(|c| findings(c, format, num, &roles, &live))
                .with_context(|| format!("target {name}: checking what a restore could put back"))?;
            for w in &f.warnings {
                say(&format!(
                    "guard: warning: target {name}: a restore would not put back everything: {w}"
                ));
            }
            if !f.refusals.is_empty() {
                bail!(
                    "target {name}: a restore of this database as it is now would fail, so nothing was run: {}. Connect as a superuser, or see docs/targets/postgres.md, \"What a restore cannot put back\"",
                    f.refusals.join("; ")
                );
            }
        }

        // public schema's owner, grants and comment, to recreate it exactly on restore.
        // (owner, [(grantee, privilege)], comment)
        type Public = (String, Vec<(String, String)>, Option<String>);
        let public: Option<Public> = session.run(|conn| async move {
            let owner: Option<String> =
                sqlx::query_scalar("SELECT r.rolname::text FROM pg_namespace n JOIN pg_roles r ON r.oid = n.nspowner WHERE n.nspname = 'public'")
                    .fetch_optional(&mut *conn)
                    .await?;
            let Some(owner) = owner else {
                return Ok::<_, sqlx::Error>(None);
            };
            let grants: Vec<(String, String)> = sqlx::query_as(
                "SELECT CASE WHEN a.grantee = 0 THEN '' ELSE (SELECT rolname::text FROM pg_roles WHERE oid = a.grantee) END, a.privilege_type
                 FROM pg_namespace n, aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a
                 WHERE n.nspname = 'public' AND a.grantee <> n.nspowner ORDER BY 1, 2",
            )
            .fetch_all(&mut *conn)
            .await?;
            let comment: Option<String> = sqlx::query_scalar(
                "SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname = 'public'",
            )
            .fetch_one(&mut *conn)
            .await?;
            Ok(Some((owner, grants, comment)))
        })?;
        if let Some((owner, grants, comment)) = public {
            rec.meta.insert(
                "public_schema".into(),
                serde_json::json!({"owner": owner, "grants": grants, "comment": comment}).to_string(),
            );
        }
        Ok(())
    }

    /// pg_dump in the exported snapshot into the store, checked by the stock tools as it
    /// streams, while the fingerprints run on `session` in the same snapshot.
    fn dump_and_fingerprint(
        &self,
        ctx: &SnapshotCtx,
        rec: &mut TargetRecord,
        tools: &Tools,
        session: &mut Session,
        snapshot_id: &str,
        compression: Compression,
    ) -> Result<()> {
        let dump = self.spawn_dump(tools, snapshot_id, false)?;
        self.stream_dump(ctx, rec, tools, session, dump, compression, None)
    }

    /// Start `pg_dump --snapshot=snapshot_id`, its output on a pipe nothing reads yet. With
    /// `deferred` (a clone's dump written while the command runs): at nice 10 and the idle
    /// I/O class, in its own process group (a Ctrl-C at the terminal is the command's), killed
    /// if guard dies, and named `guard PID pg_dump` in `pg_stat_activity`.
    pub(super) fn spawn_dump(&self, tools: &Tools, snapshot_id: &str, deferred: bool) -> Result<DumpChild> {
        let mut cmd = self.child(tools, "pg_dump", &["-o"]);
        cmd.arg("--no-password")
            .arg(format!("--lock-wait-timeout={}s", LOCK_WAIT.as_secs()))
            .arg(format!("--snapshot={snapshot_id}"));
        match self.pg.format {
            PgFormat::Custom => cmd.args(["-Fc", "-Z0"]),
            PgFormat::Plain => cmd.args(["-Fp"]),
        };
        if deferred {
            use std::os::unix::process::CommandExt;
            cmd.env("PGAPPNAME", dump_app_name()).process_group(0);
            let guard_pid = unsafe { libc::getpid() };
            // SAFETY: runs in the child between fork and exec; only async-signal-safe calls.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    if libc::getppid() != guard_pid {
                        libc::_exit(137);
                    }
                    low_priority(0);
                    Ok(())
                });
            }
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot run {}", tools.bin("pg_dump").display()))?;
        let err = drain(child.stderr.take().expect("piped"));
        if let Some(out) = &child.stdout {
            widen_pipe(out);
        }
        Ok(DumpChild { child, err: Some(err) })
    }

    /// pg_dump's output (`dump`) into the store, checked by the stock tools as it streams,
    /// while the fingerprints run on `session` in the same snapshot; the write stops once
    /// `cancel` is set.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn stream_dump(
        &self,
        ctx: &SnapshotCtx,
        rec: &mut TargetRecord,
        tools: &Tools,
        session: &mut Session,
        mut dump: DumpChild,
        compression: Compression,
        cancel: Option<&AtomicBool>,
    ) -> Result<()> {
        let name = &self.spec.name;
        let (ext, format) = self.artifact_ext();
        let mut check = DumpCheck::start(tools, self.pg.format)?;
        let never = AtomicBool::new(false);
        let out = dump.child.stdout.take().expect("piped");
        let stdout = Tee {
            inner: Cancellable {
                inner: out,
                cancel: cancel.unwrap_or(&never),
            },
            check: &mut check,
        };
        let items = ctx.fingerprint.to_vec();
        let lenient = ctx.allow_absent;

        // Fingerprints run in the exported snapshot while pg_dump streams into the store.
        let (written, fps) = std::thread::scope(|s| {
            let fp = s.spawn(move || session.run(|c| fingerprints(c, &items, lenient)));
            let w = ctx.write_artifact_with(ctx.key(name, ext), format, stdout, compression);
            (w, fp.join().expect("fingerprint thread"))
        });
        let written = match written {
            Ok(a) => a,
            Err(e) => {
                kill(&mut dump.child);
                return Err(e.context(format!("target {name}: storing pg_dump's output")));
            }
        };
        // A failed fingerprint query aborts the exporting transaction, which then fails
        // pg_dump's snapshot import: report the cause, not the symptom.
        let fps = match fps {
            Ok(f) => f,
            Err(e) => {
                kill(&mut dump.child);
                return Err(e.context(format!("target {name}: fingerprints")));
            }
        };
        let status = dump.child.wait()?;
        let stderr = dump.err.take().and_then(|h| h.join().ok()).unwrap_or_default();
        if !status.success() {
            bail!("target {name}: pg_dump {}: {}", status_text(status), tail(&stderr));
        }
        if written.raw_bytes == 0 {
            bail!("target {name}: pg_dump wrote nothing");
        }
        check
            .finish()
            .with_context(|| format!("target {name}: the dump failed validation"))?;
        rec.artifacts.push(written);
        rec.fingerprints = fps;
        Ok(())
    }

    /// `csv_tables`: each table as CSV (`COPY … TO STDOUT`) in the same snapshot.
    pub(super) fn export_csv_tables(
        &self,
        ctx: &SnapshotCtx,
        rec: &mut TargetRecord,
        session: &mut Session,
        compression: Compression,
    ) -> Result<()> {
        let name = &self.spec.name;
        for table in &self.pg.csv_tables {
            let stmt = format!("COPY {} TO STDOUT WITH (FORMAT csv, HEADER)", qualified(table));
            let a = {
                let reader = session
                    .copy_out(&stmt)
                    .with_context(|| format!("target {name}: exporting {table} as CSV"))?;
                ctx.write_artifact_with(ctx.key(name, &format!("{table}.csv.gz")), "csv", reader, compression)
                    .with_context(|| format!("target {name}: exporting {table} as CSV"))?
            };
            rec.artifacts.push(a);
        }
        Ok(())
    }
}

/// A running `pg_dump`, its stdout not read yet; killed if dropped before it exits.
pub(super) struct DumpChild {
    pub(super) child: Child,
    pub(super) err: Option<std::thread::JoinHandle<Vec<u8>>>,
}

impl DumpChild {
    /// Its stderr so far, once it has exited.
    pub(super) fn stderr_tail(&mut self) -> String {
        tail(&self.err.take().and_then(|h| h.join().ok()).unwrap_or_default())
    }
}

impl Drop for DumpChild {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            kill(&mut self.child);
        }
    }
}

/// Lower the CPU (nice 10) and I/O (idle class) priority of process `pid` (0: this one); a
/// failure leaves it as it was. Async-signal-safe (used between fork and exec).
pub(super) fn low_priority(pid: libc::pid_t) {
    // SAFETY: plain syscalls with integer arguments.
    unsafe {
        let _ = libc::setpriority(libc::PRIO_PROCESS, pid as libc::id_t, 10);
        // ioprio_set(IOPRIO_WHO_PROCESS, pid, IOPRIO_CLASS_IDLE << 13)
        let _ = libc::syscall(libc::SYS_ioprio_set, 1, pid, 3 << 13);
    }
}

/// The stock tools' check of a dump, on pg_dump's output as it streams into the store:
/// `pg_restore` parses every entry and data block of a custom archive (into /dev/null); a
/// plain dump must end with pg_dump's completion trailer.
pub(super) enum DumpCheck {
    Custom {
        child: Child,
        stdin: Option<std::process::ChildStdin>,
        stderr: Option<std::thread::JoinHandle<Vec<u8>>>,
    },
    Plain(TailWriter),
}

impl DumpCheck {
    pub(super) fn start(tools: &Tools, format: PgFormat) -> Result<DumpCheck> {
        if format == PgFormat::Plain {
            return Ok(DumpCheck::Plain(TailWriter::default()));
        }
        let mut child = tools
            .buffered("pg_restore", &["-i"])
            .args(["-f", "/dev/null"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot run {}", tools.bin("pg_restore").display()))?;
        let stderr = Some(drain(child.stderr.take().expect("piped")));
        let stdin = child.stdin.take();
        if let Some(w) = &stdin {
            widen_pipe(w);
        }
        Ok(DumpCheck::Custom { child, stdin, stderr })
    }

    /// Feed the checker. A pg_restore that stopped reading is not an error here: its exit
    /// status, in [`DumpCheck::finish`], says why.
    pub(super) fn feed(&mut self, buf: &[u8]) {
        match self {
            DumpCheck::Plain(t) => {
                let _ = t.write_all(buf);
            }
            DumpCheck::Custom { stdin, .. } => {
                if let Some(w) = stdin {
                    if w.write_all(buf).is_err() {
                        *stdin = None;
                    }
                }
            }
        }
    }

    pub(super) fn finish(mut self) -> Result<()> {
        match &mut self {
            DumpCheck::Plain(t) => t.plain_dump_complete(),
            DumpCheck::Custom { child, stdin, stderr } => {
                stdin.take();
                let status = child.wait()?;
                let stderr = stderr.take().and_then(|h| h.join().ok()).unwrap_or_default();
                if !status.success() {
                    bail!(
                        "pg_restore cannot read the archive ({}): {}",
                        status_text(status),
                        tail(&stderr)
                    );
                }
                Ok(())
            }
        }
    }
}

impl Drop for DumpCheck {
    fn drop(&mut self) {
        if let DumpCheck::Custom { child, stdin, .. } = self {
            stdin.take();
            // Finished already, or stopped early: never leave a pg_restore behind.
            if let Ok(None) = child.try_wait() {
                kill(child);
            }
        }
    }
}

/// pg_dump's output on its way into the store, fed to the [`DumpCheck`] as it is read.
pub(super) struct Tee<'a, R> {
    pub(super) inner: R,
    pub(super) check: &'a mut DumpCheck,
}

impl<R: Read> Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.check.feed(&buf[..n]);
        Ok(n)
    }
}

/// Passes writes through, remembering whether one failed.
pub(super) struct WriteFailed<W> {
    pub(super) inner: W,
    pub(super) failed: bool,
}

impl<W: Write> Write for WriteFailed<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let r = self.inner.write(buf);
        self.failed |= r.is_err();
        r
    }
    fn flush(&mut self) -> std::io::Result<()> {
        let r = self.inner.flush();
        self.failed |= r.is_err();
        r
    }
}

/// Keeps the last 4 KiB written to it.
#[derive(Default)]
pub(super) struct TailWriter {
    pub(super) tail: Vec<u8>,
}

impl TailWriter {
    /// Did a plain dump end with pg_dump's completion trailer?
    pub(super) fn plain_dump_complete(&self) -> Result<()> {
        if !String::from_utf8_lossy(&self.tail).contains("PostgreSQL database dump complete") {
            bail!("the plain dump lacks pg_dump's \"dump complete\" trailer (truncated)");
        }
        Ok(())
    }
}

impl Write for TailWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tail.extend_from_slice(buf);
        if self.tail.len() > 8192 {
            let cut = self.tail.len() - 4096;
            self.tail.drain(..cut);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
