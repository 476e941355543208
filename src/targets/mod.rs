//! The things guard protects, one file per kind behind one [`Target`] trait.
//!
//! A target knows how to snapshot itself into artifacts in a store, check those artifacts
//! beyond their checksums, restore itself from them atomically, prove the restore matches,
//! and answer the policy's checks (queries and fingerprints).

pub mod dir;
pub mod postgres;
pub mod s3;
pub mod sql;
pub mod sqlite;
pub mod turso;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use anyhow::Result;

use crate::manifest::{Artifact, Fingerprint, TargetRecord};
use crate::policy::{Compression, Policy, TargetKind, TargetSpec};
use crate::store::Store;

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
}

/// What [`Target::restore`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restored {
    /// The live target was put back; [`Target::verify_restored`] proves it.
    Done,
    /// Nothing went wrong, but the target is not restored in place: a person must finish (for
    /// example a Turso `promote`: repoint the app at the branch). The text is the instructions.
    Manual(String),
}

/// Kinds whose snapshots own something outside the store (a Turso branch database, bucket-clone
/// objects) that retention must release through [`Target::release`].
pub const EXTERNAL_KINDS: &[&str] = &["turso", "s3"];

/// Build every target a policy names.
pub fn build_all(policy: &Policy) -> Result<Vec<Box<dyn Target>>> {
    policy.targets.iter().map(build).collect()
}

/// Build the target a spec describes.
pub fn build(spec: &TargetSpec) -> Result<Box<dyn Target>> {
    Ok(match &spec.kind {
        TargetKind::Sqlite { path } => Box::new(sqlite::SqliteTarget::new(spec.clone(), path.clone())),
        TargetKind::Dir { path } => Box::new(dir::DirTarget::new(spec.clone(), path.clone())),
        TargetKind::Postgres(pg) => Box::new(postgres::PostgresTarget::new(spec.clone(), pg.clone())?),
        TargetKind::Turso(t) => Box::new(turso::TursoTarget::new(spec.clone(), t.clone())?),
        TargetKind::S3(s) => Box::new(s3::S3Target::new(spec.clone(), s.clone())),
    })
}

/// A target rebuilt from a manifest record, for snapshots whose policy no longer names it.
pub fn from_record(rec: &TargetRecord) -> Result<Box<dyn Target>> {
    if rec.kind == "postgres" {
        // Offline checks only: guard never stores database URLs (they may hold passwords).
        return Ok(Box::new(postgres::PostgresTarget::from_record(rec)?));
    }
    if rec.kind == "s3" {
        return Ok(Box::new(s3::S3Target::from_record(rec)?));
    }
    let path = std::path::PathBuf::from(&rec.source);
    let kind = match rec.kind.as_str() {
        "sqlite" => TargetKind::Sqlite { path },
        "dir" => TargetKind::Dir { path },
        "turso" => anyhow::bail!(
            "target {}: a Turso target cannot be rebuilt from a manifest (its API and database tokens are never stored); the policy must name target {:?} of kind \"turso\"",
            rec.name,
            rec.name
        ),
        k => anyhow::bail!("target {}: kind {k} cannot be rebuilt from a manifest", rec.name),
    };
    build(&TargetSpec {
        name: rec.name.clone(),
        line: 0,
        kind,
    })
}

/// The live target for a record: the policy's target of that name, or one rebuilt from the
/// record when the policy no longer names it.
pub fn target_for(policy: &Policy, rec: &TargetRecord) -> Result<Box<dyn Target>> {
    if let Some(spec) = policy.targets.iter().find(|t| t.name == rec.name) {
        if spec.kind.as_str() != rec.kind {
            anyhow::bail!(
                "target {} is a {} in the policy but a {} in the snapshot",
                rec.name,
                spec.kind.as_str(),
                rec.kind
            );
        }
        return build(spec);
    }
    from_record(rec)
}
