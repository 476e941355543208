//! The manifest: a snapshot's record of what it holds, written last.
//!
//! A snapshot directory without `manifest.json` is incomplete by definition, whatever else it
//! contains. The manifest carries everything a restore or a person needs: which targets, which
//! artifacts with sizes and SHA-256 checksums (of the stored gzip and of its content), the
//! fingerprints taken at snapshot time, tool versions, the command being guarded and the times.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::store::{keys, Store};

pub const FORMAT: u32 = 1;

/// Why a snapshot was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SnapshotKind {
    /// Before a guarded command.
    PreRun,
    /// Of the failed state, before a restore overwrote it.
    Rescue,
    /// `guard snapshot`.
    Manual,
}

impl SnapshotKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotKind::PreRun => "pre-run",
            SnapshotKind::Rescue => "rescue",
            SnapshotKind::Manual => "manual",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub id: String,
    pub policy: String,
    pub kind: SnapshotKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub completed_at: OffsetDateTime,
    pub host: String,
    pub guard_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    pub targets: Vec<TargetRecord>,
    /// HMAC-SHA256 (hex) of the manifest's canonical bytes under the store key, when the
    /// policy has one ([`crate::auth`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hmac: Option<String>,
    /// Why this manifest, as read from the store, is not authenticated by the store key (`None`:
    /// it is, or there is no key). Acted on by [`Manifest::authentic`].
    #[serde(skip)]
    pub unauthenticated: Option<String>,
}

/// What a snapshot holds of one target.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TargetRecord {
    pub name: String,
    pub kind: String,
    /// Where the data lives (paths; URLs with passwords masked).
    pub source: String,
    /// The target did not exist when the snapshot was taken (a rescue of a deleted database).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub absent: bool,
    #[serde(default)]
    pub artifacts: Vec<Artifact>,
    /// Per-table (or per-path) row counts and content hashes at snapshot time.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fingerprints: BTreeMap<String, Fingerprint>,
    /// Files of a directory target, with their SHA-256.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileEntry>,
    /// A directory target's paths relative to its root (`meta.root`), when it is not a single
    /// directory: several `paths`, or one file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// A directory target's `exclude` globs at snapshot time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// Versions of the tools and engines involved.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tools: BTreeMap<String, String>,
    /// Kind-specific facts (file mode, owner, journal mode, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
    /// Read from the store without the store key's authentication (no key configured, or used
    /// with `--trust-unsigned`): the owners and modes it records (tar headers, `meta`) are
    /// store data anyone who can write the store chose, so restores take them from the live
    /// files instead (issue 16, R17). `false` for a record guard made in this process.
    #[serde(skip)]
    pub untrusted: bool,
}

impl TargetRecord {
    /// The tables (or items) whose content hash the record holds — those named by `untouched`
    /// checks — leaving out the `@schema` entries.
    pub fn hashed_items(&self) -> Vec<String> {
        self.fingerprints
            .iter()
            .filter(|(k, f)| f.hash.is_some() && !k.starts_with('@'))
            .map(|(k, _)| k.clone())
            .collect()
    }
}

/// One stored file of a snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    /// Store key of the artifact.
    pub key: String,
    /// What the gzip contains: `sqlite`, `tar`, …
    pub format: String,
    /// Size and SHA-256 of the stored (compressed) bytes.
    pub bytes: u64,
    pub sha256: String,
    /// Size and SHA-256 of the content.
    pub raw_bytes: u64,
    pub raw_sha256: String,
    /// The stored file is the gzip encrypted with age ([`crate::crypt`]): `bytes`/`sha256` are
    /// the ciphertext's, this the gzip's inside and the recipients'.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
}

/// How an artifact is encrypted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Encryption {
    /// `age` (X25519 recipients).
    pub scheme: String,
    /// The recipients' public keys (`age1…`).
    pub recipients: Vec<String>,
    /// Size and SHA-256 of the gzip stream inside.
    pub gz_bytes: u64,
    pub gz_sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Fingerprint {
    pub rows: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// A table's columns (name and declared type) when `hash` was computed, in table order:
    /// `untouched` compares only these afterwards (columns added since are left out). Absent
    /// in snapshots taken by older guards and for paths and schema fingerprints: `untouched`
    /// then compares whole rows, like `identical`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<Vec<Column>>,
    /// The path or table did not exist when the fingerprint was taken: the command deleted it
    /// (a rescue snapshot records what it finds, absence included). Only written when true.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub absent: bool,
}

impl Fingerprint {
    /// The fingerprint of a path or table that does not exist.
    pub fn absent() -> Fingerprint {
        Fingerprint {
            rows: 0,
            hash: None,
            columns: None,
            absent: true,
        }
    }
}

/// The fingerprint of a listing (a directory tree's entries, a bucket's objects): one SHA-256
/// over every entry's parts, each prefixed by its length so that no two listings hash alike.
#[derive(Default)]
pub struct ListingHash {
    h: sha2::Sha256,
    rows: u64,
}

impl ListingHash {
    /// Add one entry; `counts` when it is one of the rows the fingerprint counts.
    pub fn entry(&mut self, parts: &[&str], counts: bool) {
        use sha2::Digest;
        for part in parts {
            self.h.update((part.len() as u64).to_le_bytes());
            self.h.update(part.as_bytes());
        }
        self.rows += u64::from(counts);
    }

    pub fn finish(self) -> Fingerprint {
        use sha2::Digest;
        Fingerprint {
            rows: self.rows,
            hash: Some(hex::encode(&self.h.finalize()[..16])),
            columns: None,
            absent: false,
        }
    }
}

/// One column of a fingerprinted table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: String,
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.hash {
            _ if self.absent => write!(f, "absent"),
            Some(h) => write!(f, "{} rows #{}", self.rows, &h[..h.len().min(12)]),
            None => write!(f, "{} rows", self.rows),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub path: String,
    /// `file`, `dir` or `symlink`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    pub mode: u32,
}

impl Manifest {
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("manifest serializes");
        v.push(b'\n');
        v
    }

    /// The bytes the HMAC and the catalog's witness cover: the manifest as guard writes it,
    /// without its `hmac`.
    pub fn canonical_json(&self) -> Vec<u8> {
        if self.hmac.is_none() {
            return self.to_json();
        }
        Manifest {
            hmac: None,
            ..self.clone()
        }
        .to_json()
    }

    /// Refuse (exit 65, naming the file) a manifest the store key does not authenticate,
    /// unless `--trust-unsigned`: called before guard acts on a snapshot (restore, recover,
    /// drill, verify).
    pub fn authentic(&self) -> Result<(), crate::error::Failure> {
        crate::auth::require(self.unauthenticated.as_deref())
    }

    pub fn from_json(bytes: &[u8], what: &str) -> Result<Manifest> {
        let mut m: Manifest =
            serde_json::from_slice(bytes).with_context(|| format!("{what}: not a valid guard manifest"))?;
        if m.format != FORMAT {
            bail!(
                "{what}: manifest format {} is not supported by this guard (expects {FORMAT})",
                m.format
            );
        }
        m.check_names(what)?;
        m.unauthenticated = crate::auth::check(crate::auth::MANIFEST, &m.canonical_json(), m.hmac.as_deref(), what);
        let untrusted = m.unauthenticated.is_some() || !crate::auth::has_key();
        for t in &mut m.targets {
            t.untrusted = untrusted;
        }
        Ok(m)
    }

    /// The store is untrusted input: every name that guard joins onto a path or a key (the
    /// id, the policy, each target) must be a plain name, and every artifact must lie in the
    /// snapshot's own directory.
    fn check_names(&self, what: &str) -> Result<()> {
        crate::names::checked(&self.id, "snapshot id", what)?;
        crate::names::checked(&self.policy, "policy name", what)?;
        let dir = keys::snapshot_prefix(&self.id);
        for t in &self.targets {
            crate::names::checked(&t.name, "target name", what)?;
            for a in &t.artifacts {
                let ok = a.key.strip_prefix(&dir).is_some_and(|f| {
                    !f.is_empty()
                        && !f.contains(['/', '\\', '\0'])
                        && f != "."
                        && f != ".."
                        && f != "manifest.json"
                        && f != "prune.json"
                });
                if !ok {
                    bail!(
                        "{what}: artifact {:?} of target {} is not a file of snapshot {} ({dir}…); refusing to use it",
                        a.key,
                        t.name,
                        self.id
                    );
                }
            }
        }
        Ok(())
    }

    /// Read a snapshot's manifest from the store.
    pub fn load(store: &dyn Store, id: &str) -> Result<Manifest> {
        let key = keys::manifest_key(id);
        let bytes = store
            .get(&key)
            .with_context(|| format!("snapshot {id} has no manifest ({key}): it is missing or incomplete"))?;
        let m = Manifest::from_json(&bytes, &format!("{}/{key}", store.location()))?;
        if m.id != id {
            bail!(
                "{}/{key}: manifest claims id {} (tampered or moved)",
                store.location(),
                m.id
            );
        }
        Ok(m)
    }

    /// Write the manifest, completing the snapshot (signed with the store key, if any).
    pub fn save(&mut self, store: &dyn Store) -> Result<()> {
        self.hmac = None;
        self.hmac = crate::auth::sign(crate::auth::MANIFEST, &self.canonical_json());
        store.put(&keys::manifest_key(&self.id), &self.to_json())
    }

    pub fn stored_bytes(&self) -> u64 {
        self.targets.iter().flat_map(|t| &t.artifacts).map(|a| a.bytes).sum()
    }

    pub fn raw_bytes(&self) -> u64 {
        self.targets
            .iter()
            .flat_map(|t| &t.artifacts)
            .map(|a| a.raw_bytes)
            .sum()
    }

    pub fn target(&self, name: &str) -> Option<&TargetRecord> {
        self.targets.iter().find(|t| t.name == name)
    }
}

/// A new snapshot id: UTC time to the millisecond plus a random suffix, so ids sort by time.
pub fn new_id(now: OffsetDateTime) -> String {
    let f = time::macros::format_description!("[year][month][day]T[hour][minute][second].[subsecond digits:3]Z");
    format!("{}-{:04x}", now.format(&f).expect("formats"), rand::random::<u16>())
}

/// The time in a snapshot (or run) id, for what has no manifest or journal to say it.
pub fn id_time(id: &str) -> Option<OffsetDateTime> {
    let ts = id.split('-').next()?;
    let f = time::macros::format_description!("[year][month][day]T[hour][minute][second].[subsecond digits:3]Z");
    time::PrimitiveDateTime::parse(ts, &f).ok().map(|t| t.assume_utc())
}

/// Snapshot ids that have objects but no manifest: incomplete, never usable.
pub fn incomplete_snapshots(store: &dyn Store) -> Result<Vec<String>> {
    let mut ids = std::collections::BTreeMap::<String, bool>::new();
    for e in store.list(keys::SNAPSHOTS)? {
        let Some((id, file)) = keys::split_snapshot_key(&e.key) else {
            continue;
        };
        let has = ids.entry(id.to_string()).or_insert(false);
        if file == "manifest.json" {
            *has = true;
        }
    }
    Ok(ids.into_iter().filter(|(_, has)| !has).map(|(id, _)| id).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_time() {
        let a = new_id(time::macros::datetime!(2026-01-02 03:04:05.006 UTC));
        let b = new_id(time::macros::datetime!(2026-01-02 03:04:05.007 UTC));
        let c = new_id(time::macros::datetime!(2026-10-02 00:00:00 UTC));
        assert!(a < b && b < c, "{a} {b} {c}");
        assert!(a.starts_with("20260102T030405.006Z-"));
    }

    #[test]
    fn listing_hash_is_the_length_prefixed_sha256_of_the_parts() {
        // Fingerprints stored by earlier snapshots are compared with new ones: the formula is fixed.
        use sha2::Digest;
        let mut h = ListingHash::default();
        h.entry(&["a.txt", "file"], true);
        h.entry(&["d", "dir"], false);
        let f = h.finish();
        let mut want = sha2::Sha256::new();
        for p in ["a.txt", "file", "d", "dir"] {
            want.update((p.len() as u64).to_le_bytes());
            want.update(p.as_bytes());
        }
        assert_eq!(f.rows, 1);
        assert_eq!(f.hash.as_deref(), Some(hex::encode(&want.finalize()[..16]).as_str()));
        // The parts are delimited: moving a byte between two parts changes the hash.
        let mut g = ListingHash::default();
        g.entry(&["a.tx", "tfile"], true);
        g.entry(&["d", "dir"], false);
        assert_ne!(g.finish().hash, f.hash);
    }
}
