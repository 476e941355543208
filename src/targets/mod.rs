//! The things guard protects, one file per kind behind one [`Target`] trait.
//!
//! A target knows how to snapshot itself into artifacts in a store, check those artifacts
//! beyond their checksums, restore itself from them atomically, prove the restore matches,
//! and answer the policy's checks (queries and fingerprints).

pub mod dir;
pub mod sqlite;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use anyhow::Result;

use crate::archive;
use crate::manifest::{Artifact, Fingerprint, TargetRecord};
use crate::policy::{Compression, TargetKind, TargetSpec};
use crate::store::Store;

/// What a target needs while snapshotting.
pub struct SnapshotCtx<'a> {
    pub store: &'a dyn Store,
    pub snapshot_id: &'a str,
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
        format!("snapshots/{}/{target}.{ext}", self.snapshot_id)
    }

    /// Stream `input` through gzip + SHA-256 into the store under `key`.
    pub fn write_artifact(&self, key: String, format: &str, input: impl Read) -> Result<Artifact> {
        let upload = self.store.create(&key)?;
        let (c, upload) = archive::compress(input, upload, self.compression)?;
        upload.commit()?;
        Ok(Artifact {
            key,
            format: format.to_string(),
            bytes: c.stored.bytes,
            sha256: c.stored.sha256,
            raw_bytes: c.raw.bytes,
            raw_sha256: c.raw.sha256,
        })
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
    /// Put the target back to the state in `rec`, atomically.
    fn restore(&self, rec: &TargetRecord, store: &dyn Store) -> Result<()>;
    /// Prove the live target now equals `rec`.
    fn verify_restored(&self, rec: &TargetRecord) -> Result<()>;
    /// Row counts and content hashes of tables (or paths) of the live target.
    fn fingerprint(&self, items: &[String]) -> Result<BTreeMap<String, Fingerprint>>;
    /// Run a query and return its single value as text.
    fn query(&self, sql: &str) -> Result<String>;
}

/// Build the target a spec describes.
pub fn build(spec: &TargetSpec) -> Result<Box<dyn Target>> {
    Ok(match &spec.kind {
        TargetKind::Sqlite { path } => Box::new(sqlite::SqliteTarget::new(spec.clone(), path.clone())),
        TargetKind::Dir { path } => Box::new(dir::DirTarget::new(spec.clone(), path.clone())),
        other => anyhow::bail!("target {}: kind {} is not supported by this build", spec.name, other.as_str()),
    })
}

/// A target rebuilt from a manifest record, for snapshots whose policy no longer names it.
pub fn from_record(rec: &TargetRecord) -> Result<Box<dyn Target>> {
    let path = std::path::PathBuf::from(&rec.source);
    let kind = match rec.kind.as_str() {
        "sqlite" => TargetKind::Sqlite { path },
        "dir" => TargetKind::Dir { path },
        k => anyhow::bail!("target {}: kind {k} cannot be rebuilt from a manifest", rec.name),
    };
    build(&TargetSpec { name: rec.name.clone(), line: 0, kind })
}

/// Open the artifact of `rec` with the given format and check the gzip's stored digest and
/// content digest while streaming the content to `sink`.
pub fn read_artifact(store: &dyn Store, a: &Artifact, sink: impl std::io::Write) -> Result<()> {
    let input = store.open(&a.key)?;
    let got = archive::decompress(input, sink)
        .map_err(|e| anyhow::anyhow!("{}/{}: {e:#}", store.location(), a.key))?;
    crate::snapshot::compare_digests(store, a, &got)
}
