//! The things guard protects, one folder per kind behind one [`Target`] trait.
//!
//! A target knows how to snapshot itself into artifacts in a store, check those artifacts
//! beyond their checksums, restore itself from them atomically, prove the restore matches,
//! and answer the policy's checks (queries and fingerprints).
//!
//! This file is the only place that lists the kinds: [`Kind`] (names and [`Caps`]),
//! [`KindSpec`] (a kind's parsed keys, from its `config.rs`), [`parse_spec`], [`build`],
//! [`from_record`] and [`target_for`]. Everything else asks these instead of matching names.

pub mod dir;
pub mod postgres;
pub mod s3;
pub mod sql;
pub mod sqlite;
pub mod turso;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use crate::archive::Compression;
use crate::manifest::{Artifact, Fingerprint, TargetRecord};
use crate::parse_ctx::ParseCtx;
use crate::store::Store;
use crate::vars::Unresolved;

pub use dir::DirSpec;
pub use postgres::{PgFormat, PostgresSpec, Sessions};
pub use s3::{S3Spec, S3Tags};
pub use sqlite::SqliteSpec;
pub use turso::{TursoRestore, TursoSpec};

/// A target kind: its name in policies and manifests, and what it can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Dir,
    Postgres,
    S3,
    Turso,
}

/// What a kind can do, for the rules that depend on it (which checks apply, what retention
/// must release).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Answers `sql` checks ([`Target::query`]).
    pub sql: bool,
    /// Answers `objects` and `bytes` checks ([`Target::objects`]).
    pub objects: bool,
    /// Its snapshots own something outside the store (a Turso branch database, bucket-clone
    /// objects) that retention must release through [`Target::release`].
    pub owns_external: bool,
}

impl Kind {
    pub const ALL: [Kind; 5] = [Kind::Sqlite, Kind::Dir, Kind::Postgres, Kind::S3, Kind::Turso];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Sqlite => "sqlite",
            Kind::Dir => "dir",
            Kind::Postgres => "postgres",
            Kind::S3 => "s3",
            Kind::Turso => "turso",
        }
    }

    /// The kind named `s` (a policy's `kind`, a manifest record's `kind`).
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    pub fn caps(self) -> Caps {
        let none = Caps {
            sql: false,
            objects: false,
            owns_external: false,
        };
        match self {
            Kind::Sqlite | Kind::Postgres => Caps { sql: true, ..none },
            Kind::Dir => none,
            Kind::S3 => Caps {
                objects: true,
                owns_external: true,
                ..none
            },
            Kind::Turso => Caps {
                sql: true,
                owns_external: true,
                ..none
            },
        }
    }

    /// The names of the kinds with a capability, for messages: `"sqlite, postgres, turso"`.
    pub fn names_with(cap: impl Fn(Caps) -> bool) -> String {
        let names: Vec<&str> = Kind::ALL
            .into_iter()
            .filter(|k| cap(k.caps()))
            .map(Kind::as_str)
            .collect();
        names.join(", ")
    }
}

/// One thing guard protects, as the policy describes it.
#[derive(Debug, Clone)]
pub struct TargetSpec {
    pub name: String,
    /// Line of its `[[target]]` table in the policy (0: not from a policy).
    pub line: usize,
    pub kind: KindSpec,
    /// Variables its keys (or the checks on it) use that are not set: its values are partial
    /// and [`build`] refuses it, naming them.
    pub unresolved: Vec<Unresolved>,
}

impl TargetSpec {
    /// A spec not read from a policy (line 0, every value known).
    pub fn new(name: impl Into<String>, kind: KindSpec) -> TargetSpec {
        TargetSpec {
            name: name.into(),
            line: 0,
            kind,
            unresolved: Vec::new(),
        }
    }
}

/// A kind and its parsed keys.
#[derive(Debug, Clone)]
pub enum KindSpec {
    /// A SQLite database file.
    Sqlite(SqliteSpec),
    /// A directory tree.
    Dir(DirSpec),
    /// A PostgreSQL database, dumped with pg_dump.
    Postgres(PostgresSpec),
    /// An S3 bucket (or a prefix of one), cloned server-side.
    S3(S3Spec),
    /// A Turso database, branched through the Platform API.
    Turso(TursoSpec),
}

impl KindSpec {
    pub fn kind(&self) -> Kind {
        match self {
            KindSpec::Sqlite(_) => Kind::Sqlite,
            KindSpec::Dir(_) => Kind::Dir,
            KindSpec::Postgres(_) => Kind::Postgres,
            KindSpec::S3(_) => Kind::S3,
            KindSpec::Turso(_) => Kind::Turso,
        }
    }

    pub fn as_str(&self) -> &'static str {
        self.kind().as_str()
    }

    pub fn caps(&self) -> Caps {
        self.kind().caps()
    }

    /// The local paths the target reads and replaces (a SQLite file with its `-wal`,
    /// `-journal` and `-shm` siblings; a directory), for the overlap check with the store.
    pub fn local_paths(&self) -> Vec<PathBuf> {
        match self {
            KindSpec::Sqlite(s) => {
                let mut v = vec![s.path.clone()];
                for suffix in ["-wal", "-journal", "-shm"] {
                    let mut p = s.path.clone().into_os_string();
                    p.push(suffix);
                    v.push(PathBuf::from(p));
                }
                v
            }
            // `path`, or each of `paths` (relative to the root in `path`).
            KindSpec::Dir(d) if d.paths.is_empty() => vec![d.path.clone()],
            KindSpec::Dir(d) => d
                .paths
                .iter()
                .map(|p| if p.is_empty() { d.path.clone() } else { d.path.join(p) })
                .collect(),
            KindSpec::Postgres(_) | KindSpec::S3(_) | KindSpec::Turso(_) => Vec::new(),
        }
    }

    /// May this target's tree hold the store (or guard's state directory)? Only a target that
    /// leaves the store out of its snapshots and restores around it can: a `dir` target (its
    /// walk skips the store and state directories by device and inode, and a tree holding them
    /// is restored in place, never swapped or removed whole). Being the store, or lying inside
    /// it, is refused for every kind; so is any overlap for a SQLite file.
    pub fn may_contain_store(&self) -> bool {
        matches!(self, KindSpec::Dir(_))
    }

    /// Does this target leave `inner`, a path below one of its [`KindSpec::local_paths`]
    /// (both canonical; `root` is its root's canonical form), out of its snapshots and restores?
    /// Only a `dir` target's `exclude` can.
    pub fn leaves_out(&self, root: &Path, inner: &Path, is_dir: bool) -> bool {
        match self {
            KindSpec::Dir(d) => dir::excludes(d, root, inner, is_dir),
            _ => false,
        }
    }

    /// The directory `exclude` globs of this target are relative to (a `dir` target's root).
    pub fn root(&self) -> Option<&Path> {
        match self {
            KindSpec::Dir(d) => Some(&d.path),
            _ => None,
        }
    }
}

/// Parse the keys of a `[[target]]` table of kind `kind` (everything but `name` and `kind`):
/// each kind's `config.rs` denies keys it does not know.
pub fn parse_spec(kind: &str, keys: toml::Table, cx: &mut ParseCtx) -> Result<KindSpec> {
    let Some(k) = Kind::parse(kind) else {
        let known: Vec<&str> = Kind::ALL.into_iter().map(Kind::as_str).collect();
        crate::parse_ctx::fail!(cx, "unknown kind {kind:?} (known: {})", known.join(", "));
    };
    Ok(match k {
        Kind::Sqlite => KindSpec::Sqlite(sqlite::config::parse(cx.keys(keys)?, cx)?),
        Kind::Dir => KindSpec::Dir(dir::config::parse(cx.keys(keys)?, cx)?),
        Kind::Postgres => KindSpec::Postgres(postgres::config::parse(cx.keys(keys)?, cx)?),
        Kind::S3 => KindSpec::S3(s3::config::parse(cx.keys(keys)?, cx)?),
        Kind::Turso => KindSpec::Turso(turso::config::parse(cx.keys(keys)?, cx)?),
    })
}

/// What a target needs while snapshotting.
pub struct SnapshotCtx<'a> {
    pub store: &'a dyn Store,
    pub snapshot_id: &'a str,
    /// The policy taking the snapshot (names per-policy state such as S3 clone objects).
    pub policy: &'a str,
    pub compression: Compression,
    /// Private scratch directory, removed after the snapshot.
    pub scratch: &'a Path,
    /// Tables (or paths) whose content hash the snapshot must record.
    pub fingerprint: &'a [String],
    /// A missing target is recorded as absent instead of failing (rescue snapshots).
    pub allow_absent: bool,
    /// The policy's `before` hooks ran just before this snapshot (they stop the application):
    /// nothing else is writing, so a target can take its current state as exact.
    pub quiesced: bool,
    /// The pre-run snapshot of guarded run `hot`: a kind that can keeps a hot copy beside the
    /// live data for a restore by rename ([`Target::swap_in`]).
    pub hot: Option<&'a str>,
}

impl SnapshotCtx<'_> {
    /// Store key for an artifact of `target` with extension `ext`.
    pub fn key(&self, target: &str, ext: &str) -> String {
        crate::store::keys::artifact_key(self.snapshot_id, target, ext)
    }

    /// Stream `input` through gzip + SHA-256 into the store under `key`.
    pub fn write_artifact(&self, key: String, format: &str, input: impl Read) -> Result<Artifact> {
        self.write_artifact_with(key, format, input, self.compression)
    }

    /// [`SnapshotCtx::write_artifact`] with these compression settings.
    pub fn write_artifact_with(&self, key: String, format: &str, input: impl Read, c: Compression) -> Result<Artifact> {
        crate::artifact::write_artifact(self.store, key, format, input, c)
    }
}

/// What holds the pre-run state of a record with a hot copy, in words: a PostgreSQL target's
/// is a clone database (its OID recorded), the others' a copy beside the live path.
pub fn held_in(rec: &crate::manifest::TargetRecord) -> &'static str {
    if rec.meta.contains_key("hot_oid") {
        "clone"
    } else {
        "hot copy"
    }
}

/// Where run `run` sets the failed state of `rec`'s target aside during a restore by rename,
/// in words for a message: a path beside a SQLite file or a tree (computed from the policy's
/// own naming rule and the recorded path, `meta.resolved` when the path is a link), or the
/// kind of database a PostgreSQL clone swap renames the failed one to.
pub fn set_aside_at(rec: &crate::manifest::TargetRecord, run: &str) -> Option<String> {
    let live = Path::new(rec.meta.get("resolved").unwrap_or(&rec.source));
    match rec.kind.as_str() {
        "sqlite" => sqlite::hot::aside_path(live, run).map(|p| p.display().to_string()),
        "dir" => dir::aside_of(live, run).map(|p| p.display().to_string()),
        "postgres" => Some(format!("database guard_failed_{}_…", run.to_ascii_lowercase())),
        _ => None,
    }
}

/// Is `rec` a record whose store artifact was deferred (a hot copy or clone holds its state, and
/// nothing is in the store yet)?
pub fn is_deferred(rec: &crate::manifest::TargetRecord) -> bool {
    !rec.absent && rec.artifacts.is_empty() && rec.meta.contains_key("hot")
}

/// The restore of `rec` when its store artifact was deferred (issue 17) and never written: only
/// the hot copy (or clone) held that state. `in_place()`: a guard killed after renaming it into
/// place left it there, which is this restore, done; otherwise nothing can be restored and
/// nothing is changed. `None` when `rec` is not such a record (the restore reads the store).
pub fn restore_unstored(
    rec: &crate::manifest::TargetRecord,
    what: &str,
    in_place: impl FnOnce() -> Result<bool>,
) -> Option<Result<Restored>> {
    if !is_deferred(rec) {
        return None;
    }
    let held_in = held_in(rec);
    Some(in_place().and_then(|there| {
        if there {
            return Ok(Restored::Done);
        }
        anyhow::bail!(
            "target {}: snapshot of {what} never reached the store (it was being written from the {held_in}), and the {held_in} is not in place; nothing was changed",
            rec.name
        )
    }))
}

/// A reader that fails once `cancel` is set: a deferred store write stops within one read.
pub struct Cancellable<'a, R> {
    pub inner: R,
    pub cancel: &'a std::sync::atomic::AtomicBool,
}

impl<R: std::io::Read> std::io::Read for Cancellable<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.cancel.load(std::sync::atomic::Ordering::Relaxed) {
            // Not `Interrupted`: readers retry that kind.
            return Err(std::io::Error::other(
                "stopped: the command failed, and the targets are restored from the hot copy",
            ));
        }
        self.inner.read(buf)
    }
}

/// One protected thing.
pub trait Target: Send + Sync {
    fn spec(&self) -> &TargetSpec;
    fn name(&self) -> &str {
        &self.spec().name
    }
    fn kind(&self) -> &'static str {
        self.spec().kind.as_str()
    }
    /// Where the data lives, safe to print.
    fn source(&self) -> String;
    /// Can this target be snapshotted now? (exists, readable, tools present, reachable)
    fn preflight(&self) -> Result<()>;
    /// Write the target's artifacts and describe them.
    fn snapshot(&self, ctx: &SnapshotCtx) -> Result<TargetRecord>;
    /// Check the artifacts' content beyond checksums (engine integrity, fingerprints).
    fn deep_verify(&self, rec: &TargetRecord, store: &dyn Store, scratch: &Path) -> Result<()>;
    /// Put the target back to the state in `rec`, atomically; or, for a kind that cannot be
    /// put back in place (a Turso `promote`), say what a person must do.
    fn restore(&self, rec: &TargetRecord, store: &dyn Store) -> Result<Restored>;
    /// Prove the live target now equals `rec` (after [`Restored::Done`]).
    fn verify_restored(&self, rec: &TargetRecord) -> Result<()>;
    /// Row counts and content hashes of tables (or paths) of the live target.
    fn fingerprint(&self, items: &[String]) -> Result<BTreeMap<String, Fingerprint>>;
    /// "Existing data untouched" (`untouched`): the row count and content hash of `table` over
    /// `columns` only, the columns it had when the snapshot recorded them, hashed as
    /// [`Target::fingerprint`] hashes whole rows. A recorded column now missing or of another
    /// type is an error naming it. Kinds without tables compare whole fingerprints instead.
    fn fingerprint_existing(&self, table: &str, columns: &[crate::manifest::Column]) -> Result<Fingerprint> {
        let _ = columns;
        self.fingerprint(&[table.to_string()])?
            .remove(table)
            .ok_or_else(|| anyhow::anyhow!("no fingerprint of {table}"))
    }
    /// Run a query and return its single value as text.
    fn query(&self, sql: &str) -> Result<String>;
    /// Object count and total bytes under `prefix` (object-store targets: `objects`/`bytes` checks).
    fn objects(&self, prefix: &str) -> Result<(u64, u64)> {
        let _ = prefix;
        anyhow::bail!(
            "target {} holds no objects; `objects` and `bytes` checks need an s3 target",
            self.name()
        )
    }
    /// Restore drill: restore `rec` into `scratch` (never over the live data) and check it
    /// there — engine integrity and the fingerprints recorded at snapshot time. Returns a
    /// target over the restored copy for the policy's `[[drill.check]]`s, or `None` when this
    /// kind offers none (the record was still checked). Anything the drill creates outside
    /// `scratch` (a scratch database) is removed when the returned target is dropped, and
    /// before an error is returned.
    fn drill(&self, rec: &TargetRecord, store: &dyn Store, scratch: &Path) -> Result<Option<Box<dyn Target>>> {
        self.deep_verify(rec, store, scratch)?;
        Ok(None)
    }
    /// Delete what a pruned snapshot alone owns outside the store (a Turso branch database,
    /// bucket-clone objects no kept snapshot references). `kept` holds this target's records
    /// in the snapshots that stay. Artifacts in the store are removed by retention itself.
    fn release(&self, rec: &TargetRecord, kept: &[TargetRecord], store: &dyn Store) -> Result<()> {
        let _ = (rec, kept, store);
        Ok(())
    }
    /// Does [`Target::release`] need the kept records? (Loading them costs a manifest read each.)
    fn release_needs_kept(&self) -> bool {
        false
    }
    /// Restore by rename (issue 17): put `rec` back from the hot copy the pre-run snapshot of
    /// run `run_id` kept beside the live data, setting the failed state aside. `Ok(None)`: no
    /// usable hot copy, nothing changed (restore from the store). `Ok(Some(view))`: restored
    /// and proven equal to `rec`; `view` is a target over the failed state set aside, of the
    /// same name and source, for the rescue snapshot, then [`Target::drop_aside`]. An error
    /// leaves the target as it was.
    fn swap_in(&self, rec: &TargetRecord, run_id: &str) -> Result<Option<Box<dyn Target>>> {
        let _ = (rec, run_id);
        Ok(None)
    }
    /// A hot copy made late (issue 17): for a target whose pre-run snapshot kept no hot copy,
    /// unpack `rec`'s store artifact beside the live data where run `run_id`'s hot copy would
    /// be, check it against `rec` (every file's SHA-256), and return the copy's identity, so a
    /// failed run's restore puts it in by [`Target::swap_in`] and rescues the failed state
    /// after. `Ok(None)`: this target is restored the usual way (nothing was made). An error
    /// leaves nothing behind and the live data untouched.
    fn stage_late(&self, rec: &TargetRecord, store: &dyn Store, run_id: &str) -> Result<Option<String>> {
        let _ = (rec, store, run_id);
        Ok(None)
    }
    /// Write the store artifacts of `rec`, whose pre-run snapshot deferred them (issue 17: its
    /// record names a hot copy or clone, verified when the snapshot was taken, and has no
    /// artifact yet). Runs while the command runs, on a worker thread; stops with an error
    /// once `cancel` is set. The hot copy must still be what `rec` records, before and after.
    fn write_deferred(
        &self,
        ctx: &SnapshotCtx,
        rec: &mut TargetRecord,
        cancel: &std::sync::atomic::AtomicBool,
    ) -> Result<()> {
        let _ = (ctx, cancel);
        anyhow::bail!("target {} has no deferred snapshot to write", rec.name)
    }
    /// Remove the hot copy kept for run `run_id`, if there is one (the run is over).
    fn drop_hot(&self, run_id: &str) {
        let _ = run_id;
    }
    /// On a view [`Target::swap_in`] returned: remove the failed state it set aside (a rescue
    /// snapshot holds it now).
    fn drop_aside(&self) -> Result<()> {
        Ok(())
    }
    /// Where run `run_id` set this target's failed state aside, if it is still there.
    fn aside(&self, run_id: &str) -> Option<String> {
        let _ = run_id;
        None
    }
    /// Would a restore of this target be refused right now (PostgreSQL: other sessions under
    /// `sessions = "refuse"`)? Checked before the command runs, so a failure can be undone.
    fn restore_blocked(&self) -> Result<Option<SessionsBlock>> {
        Ok(None)
    }
    /// The external tools this target uses and their versions, for `guard check`.
    fn tool_versions(&self) -> Result<Vec<String>> {
        Ok(Vec::new())
    }
}

/// A restore refused because other sessions hold the database (PostgreSQL under
/// `sessions = "refuse"`): `summary` is one short line (count, application, user, client).
/// [`crate::restore`] tells it apart from other failures to give the ways out once.
#[derive(Debug, Clone)]
pub struct SessionsBlock {
    pub target: String,
    pub summary: String,
}

impl std::fmt::Display for SessionsBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "target {}: {}; nothing was changed", self.target, self.summary)
    }
}

impl std::error::Error for SessionsBlock {}

/// What [`Target::restore`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restored {
    /// The live target was put back; [`Target::verify_restored`] proves it.
    Done,
    /// Nothing went wrong, but the target is not restored in place: a person must finish (for
    /// example a Turso `promote`: repoint the app at the branch). The text is the instructions.
    Manual(String),
}

/// Build every target of a policy.
pub fn build_all(specs: &[TargetSpec]) -> Result<Vec<Box<dyn Target>>> {
    specs.iter().map(build).collect()
}

/// Build the target a spec describes. A spec whose variables are not all set is refused.
pub fn build(spec: &TargetSpec) -> Result<Box<dyn Target>> {
    if let Some(u) = spec.unresolved.first() {
        bail!("{u}");
    }
    Ok(match &spec.kind {
        KindSpec::Sqlite(s) => Box::new(sqlite::SqliteTarget::new(spec.clone(), s.path.clone())),
        KindSpec::Dir(d) => Box::new(dir::DirTarget::new(spec.clone(), d.path.clone())),
        KindSpec::Postgres(pg) => Box::new(postgres::PostgresTarget::new(spec.clone(), pg.clone())?),
        KindSpec::Turso(t) => Box::new(turso::TursoTarget::new(spec.clone(), t.clone())?),
        KindSpec::S3(s) => Box::new(s3::S3Target::new(spec.clone(), s.clone())),
    })
}

/// A target rebuilt from a manifest record, for **read-only inspection** of a snapshot whose
/// policy does not name it (`guard verify` checking its artifacts offline). The store is
/// untrusted input: a record says where its data came from, never where guard may write, so
/// what this returns refuses every method that would touch live data ([`ReadOnly`]).
pub fn from_record(rec: &TargetRecord) -> Result<Box<dyn Target>> {
    crate::names::checked(&rec.name, "target name", "manifest")?;
    let path = PathBuf::from(&rec.source);
    let kind = match Kind::parse(&rec.kind) {
        // Offline checks only: guard never stores database URLs (they may hold passwords).
        Some(Kind::Postgres) => {
            return Ok(Box::new(ReadOnly(Box::new(postgres::PostgresTarget::from_record(rec)?))))
        }
        Some(Kind::S3) => return Ok(Box::new(ReadOnly(Box::new(s3::S3Target::from_record(rec)?)))),
        Some(Kind::Sqlite) => KindSpec::Sqlite(SqliteSpec::at(path)),
        Some(Kind::Dir) => KindSpec::Dir(DirSpec {
            path,
            paths: rec.paths.clone(),
            ..DirSpec::default()
        }),
        Some(Kind::Turso) => bail!(
            "target {}: a Turso target cannot be rebuilt from a manifest (its API and database tokens are never stored); the policy must name target {:?} of kind \"turso\"",
            rec.name,
            rec.name
        ),
        None => bail!("target {}: kind {} cannot be rebuilt from a manifest", rec.name, rec.kind),
    };
    Ok(Box::new(ReadOnly(build(&TargetSpec::new(rec.name.clone(), kind))?)))
}

/// The policy's live target for a record, for anything that writes (restore, recover, drill,
/// retention's release): the policy must name a target of that name, of the same kind, over
/// the same source (path, database, bucket and prefix). Otherwise nothing is built and the
/// error says why: a manifest never chooses where guard writes.
pub fn target_for(specs: &[TargetSpec], rec: &TargetRecord) -> Result<Box<dyn Target>> {
    crate::names::checked(&rec.name, "target name", "manifest")?;
    let Some(spec) = specs.iter().find(|t| t.name == rec.name) else {
        bail!(
            "the snapshot holds target {} ({} {}), which the policy does not name; guard writes only to the policy's own targets, at the policy's paths (`guard show` lists it; docs/store.md, \"Restoring by hand\", says how to restore it yourself)",
            rec.name,
            rec.kind,
            rec.source
        );
    };
    if spec.kind.as_str() != rec.kind {
        bail!(
            "target {} is a {} in the policy but a {} in the snapshot; nothing is restored from it",
            rec.name,
            spec.kind.as_str(),
            rec.kind
        );
    }
    let live = build(spec)?;
    let differs = |what: &str, snap: &str, policy: &str| {
        let snap = if what.is_empty() {
            snap.to_string()
        } else {
            format!("{what} {snap}")
        };
        anyhow::anyhow!(
            "target {}: the snapshot is of {snap} but the policy's target is {policy}; guard writes only where the policy says, so nothing is restored from it (put the policy back as it was, or restore by hand: docs/store.md, \"Restoring by hand\")",
            rec.name
        )
    };
    if live.source() != rec.source {
        return Err(differs("", &rec.source, &live.source()));
    }
    if let KindSpec::S3(s3) = &spec.kind {
        // The bucket, clone bucket and endpoint a record names must be the policy's own.
        let want = [
            ("bucket", Some(s3.bucket.as_str())),
            ("prefix", Some(s3.prefix.as_str())),
            ("clone_bucket", Some(s3.clone_bucket.as_str())),
            ("endpoint", s3.endpoint.as_deref()),
        ];
        for (key, policy) in want {
            let snap = rec.meta.get(key).map(String::as_str);
            if snap.unwrap_or_default() != policy.unwrap_or_default() {
                return Err(differs(
                    key,
                    snap.unwrap_or("(none)"),
                    &format!("{key} {}", policy.unwrap_or("(none)")),
                ));
            }
        }
    }
    Ok(live)
}

/// The error for a target path that does not exist: `p` is a dangling symlink (named with
/// where it leads) or nothing at all. `what` names what `p` should be ("directory",
/// "database"), or is empty.
pub(crate) fn missing_path(name: &str, what: &str, p: &Path) -> anyhow::Error {
    let what = if what.is_empty() {
        String::new()
    } else {
        format!("{what} ")
    };
    match std::fs::read_link(p) {
        Ok(to) => anyhow::anyhow!(
            "target {name}: {} is a symlink to {}, which does not exist",
            p.display(),
            to.display()
        ),
        Err(_) => anyhow::anyhow!("target {name}: {what}{} does not exist", p.display()),
    }
}

/// The target to inspect a record with (`guard verify`): the policy's own when it names the
/// record's target as it was, else one rebuilt read-only from the record ([`from_record`]).
pub fn for_inspection(specs: &[TargetSpec], rec: &TargetRecord) -> Result<Box<dyn Target>> {
    match target_for(specs, rec) {
        Ok(t) => Ok(t),
        Err(_) => from_record(rec),
    }
}

/// A target that may only be inspected: [`Target::deep_verify`] (which writes nothing but
/// private scratch) works, everything that would read or write live data is refused.
pub struct ReadOnly(pub Box<dyn Target>);

impl ReadOnly {
    fn refuse<T>(&self, what: &str) -> Result<T> {
        bail!(
            "target {} was rebuilt from a manifest for inspection only; guard does not {what} a target the policy does not name",
            self.0.name()
        )
    }
}

impl Target for ReadOnly {
    fn spec(&self) -> &TargetSpec {
        self.0.spec()
    }
    fn source(&self) -> String {
        self.0.source()
    }
    fn preflight(&self) -> Result<()> {
        self.refuse("open")
    }
    fn snapshot(&self, _ctx: &SnapshotCtx) -> Result<TargetRecord> {
        self.refuse("snapshot")
    }
    fn deep_verify(&self, rec: &TargetRecord, store: &dyn Store, scratch: &Path) -> Result<()> {
        self.0.deep_verify(rec, store, scratch)
    }
    fn restore(&self, _rec: &TargetRecord, _store: &dyn Store) -> Result<Restored> {
        self.refuse("restore")
    }
    fn verify_restored(&self, _rec: &TargetRecord) -> Result<()> {
        self.refuse("read the live data of")
    }
    fn fingerprint(&self, _items: &[String]) -> Result<BTreeMap<String, Fingerprint>> {
        self.refuse("read the live data of")
    }
    fn query(&self, _sql: &str) -> Result<String> {
        self.refuse("query")
    }
    fn objects(&self, _prefix: &str) -> Result<(u64, u64)> {
        self.refuse("list")
    }
    fn drill(&self, _rec: &TargetRecord, _store: &dyn Store, _scratch: &Path) -> Result<Option<Box<dyn Target>>> {
        self.refuse("drill")
    }
    fn release(&self, _rec: &TargetRecord, _kept: &[TargetRecord], _store: &dyn Store) -> Result<()> {
        self.refuse("release what a snapshot owns outside the store for")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_its_name() {
        for k in Kind::ALL {
            assert_eq!(Kind::parse(k.as_str()), Some(k));
        }
        assert_eq!(Kind::parse("mysql"), None);
        assert_eq!(Kind::names_with(|c| c.sql), "sqlite, postgres, turso");
        assert_eq!(Kind::names_with(|c| c.objects), "s3");
        assert_eq!(Kind::names_with(|c| c.owns_external), "s3, turso");
    }
}
