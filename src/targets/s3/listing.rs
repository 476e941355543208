//! Listings: what a snapshot records of every object ([`ObjectEntry`]), whether an earlier clone
//! can be reused ([`plan`]), the listing artifact (JSON Lines), and fingerprints over a listing.

use std::collections::{BTreeMap, HashMap};

use anyhow::{anyhow, bail, Context, Result};
use aws_sdk_s3::Client;
use serde::{Deserialize, Serialize};

use super::wire::unquote;
use super::S3Tags;
use super::S3Target;
use crate::aws::sdk_error;
use crate::manifest::{Artifact, Fingerprint, TargetRecord};
use crate::store::{keys, Store};

/// What a copy must carry besides the bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attrs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_encoding: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_disposition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_language: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

/// One object of a snapshot's listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectEntry {
    pub key: String,
    pub size: u64,
    /// ETag of the source object (quotes removed).
    pub etag: String,
    /// Last-Modified of the source object, Unix seconds (0 in listings written before it was
    /// recorded: such entries are never trusted as unchanged, only copied back).
    #[serde(default)]
    pub modified: i64,
    /// SHA-256 of the content, hex.
    pub sha256: String,
    /// `server` (the server's full-object checksum) or `computed` (read and hashed).
    pub sha256_from: String,
    /// The tag set, read by this snapshot (`tags = "exact"`, objects it did not copy); absent
    /// when the clone carries it (an object copied by an exact snapshot) or unknown
    /// (`tags = "with-content"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<BTreeMap<String, String>>,
    /// Where the copy lives in the clone bucket, its ETag and its Last-Modified (Unix seconds).
    pub clone_key: String,
    pub clone_etag: String,
    #[serde(default)]
    pub cloned: i64,
}

impl ObjectEntry {
    pub(super) fn same_object(&self, l: &Listed) -> bool {
        self.etag == l.etag && self.size == l.size && self.modified == l.modified
    }

    /// The clone was copied in a later second than the object's last change, so nothing can
    /// have changed the object since without changing its Last-Modified.
    pub(super) fn settled(&self) -> bool {
        self.cloned > self.modified
    }
}

/// What a snapshot does for one listed object.
#[derive(Debug, PartialEq)]
pub(super) enum Plan {
    /// The previous snapshot's entry still describes the object: reuse it, no request.
    Reuse(ObjectEntry),
    /// A usable clone is already at this key (left by a snapshot whose listing is gone, say
    /// one that failed later): adopt it, reading only its checksum.
    Adopt(String),
    /// Copy the object to this key.
    Copy(String),
}

/// Decide what to do for object `o`, given its entry in the previous snapshot, the clone
/// prefix's listing and the clone key `base` named after its (key, ETag, size, Last-Modified).
/// A clone is usable when it was copied in a later second than the object's Last-Modified:
/// S3 changes bytes or metadata only by writing a new object, so the object is still exactly
/// what was copied. A clone found without a previous entry is adopted only when it shows the
/// object's own ETag. An existing clone key that is not usable may belong to a kept snapshot and
/// is never overwritten: the copy goes to a key of this snapshot's own.
pub(super) fn plan(
    o: &Listed,
    prev: Option<&ObjectEntry>,
    clones: &HashMap<String, Listed>,
    base: String,
    snapshot_id: &str,
) -> Plan {
    let usable = |k: &str| clones.get(k).filter(|cl| cl.size == o.size && cl.modified > o.modified);
    if let Some(p) = prev {
        if p.same_object(o) && p.settled() && usable(&p.clone_key).is_some_and(|cl| cl.etag == p.clone_etag) {
            return Plan::Reuse(p.clone());
        }
    }
    // A server-side copy keeps a single-part object's ETag (its MD5): an adopted clone must
    // show the object's own ETag, so its bytes are the object's.
    if usable(&base).is_some_and(|cl| cl.etag == o.etag) {
        Plan::Adopt(base)
    } else if clones.contains_key(&base) {
        Plan::Copy(format!("{base}-{snapshot_id}"))
    } else {
        Plan::Copy(base)
    }
}

/// A listed object: key, size, ETag, Last-Modified (Unix seconds).
#[derive(Debug, Clone)]
pub(super) struct Listed {
    pub(super) key: String,
    pub(super) size: u64,
    pub(super) etag: String,
    pub(super) modified: i64,
}

pub(super) async fn list_all(c: &Client, bucket: &str, prefix: &str) -> Result<Vec<Listed>> {
    let mut out = Vec::new();
    let mut pages = c
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| sdk_error(format!("listing s3://{bucket}/{prefix}"), e))?;
        for o in page.contents() {
            let Some(k) = o.key() else { continue };
            out.push(Listed {
                key: k.to_string(),
                size: o.size().unwrap_or(0).max(0) as u64,
                etag: unquote(o.e_tag().unwrap_or_default()),
                modified: o.last_modified().map(|t| t.secs()).unwrap_or(0),
            });
        }
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

/// Whether a snapshot was taken with `tags = "exact"`.
pub(super) fn exact_tags(rec: &TargetRecord) -> bool {
    rec.meta.get("tags").map(String::as_str) == Some(S3Tags::Exact.as_str())
}

/// Fingerprint of the objects under `item` (relative to the target's prefix; "" is all):
/// the count and a hash of every key with its SHA-256.
pub(super) fn fingerprint_of<'a>(
    prefix: &str,
    objects: impl Iterator<Item = (&'a str, &'a str)>,
    item: &str,
) -> Fingerprint {
    let mut h = crate::manifest::ListingHash::default();
    for (key, sha) in objects {
        let rel = key.strip_prefix(prefix).unwrap_or(key);
        if rel.starts_with(item) {
            h.entry(&[rel, sha], true);
        }
    }
    h.finish()
}

pub(super) fn to_jsonl(entries: &[ObjectEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        out.extend_from_slice(&serde_json::to_vec(e).expect("serializes"));
        out.push(b'\n');
    }
    out
}

pub(super) fn from_jsonl(bytes: &[u8], what: &str) -> Result<Vec<ObjectEntry>> {
    bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_slice(l).with_context(|| format!("{what}: line {} is not an object entry", i + 1))
        })
        .collect()
}

/// Name up to ten differences.
pub(super) fn summarize(diffs: Vec<String>) -> Result<()> {
    if diffs.is_empty() {
        return Ok(());
    }
    let n = diffs.len();
    let shown: Vec<_> = diffs.into_iter().take(10).collect();
    bail!(
        "{n} difference(s): {}{}",
        shown.join(", "),
        if n > 10 { ", …" } else { "" }
    )
}

impl S3Target {
    pub(super) fn remember(&self, entries: &[ObjectEntry]) {
        let mut k = self.known.lock().expect("known");
        for e in entries {
            k.insert((e.key.clone(), e.etag.clone(), e.size), e.sha256.clone());
        }
    }

    /// The listing of the newest complete snapshot in `store` holding this target, if any.
    pub(super) fn previous_listing(&self, store: &dyn Store) -> Vec<ObjectEntry> {
        let Ok(listed) = store.list(keys::SNAPSHOTS) else {
            return Vec::new();
        };
        let mut ids: Vec<&str> = listed.iter().filter_map(|e| keys::manifest_id(&e.key)).collect();
        ids.sort_unstable_by(|a, b| b.cmp(a));
        for id in ids.into_iter().take(50) {
            let Ok(m) = crate::manifest::Manifest::load(store, id) else {
                continue;
            };
            let Some(rec) = m.target(&self.spec.name) else {
                continue;
            };
            if rec.kind != "s3"
                || rec.absent
                || rec.meta.get("bucket") != Some(&self.s3.bucket)
                || rec.meta.get("prefix").map(String::as_str) != Some(self.s3.prefix.as_str())
                || !self.same_sse(rec)
            {
                continue;
            }
            match self.read_listing(rec, store) {
                Ok(l) => return l,
                Err(e) => {
                    crate::errln!(
                        "guard: warning: {}: cannot use the listing of snapshot {id}, copying everything: {e:#}",
                        self.spec.name
                    );
                    return Vec::new();
                }
            }
        }
        Vec::new()
    }

    /// Were `rec`'s clones written with the encryption the policy asks for now? Only then may
    /// they be reused (a clone written before `sse` was set stays unencrypted).
    fn same_sse(&self, rec: &TargetRecord) -> bool {
        match &self.s3.sse {
            None => true,
            Some(sse) => {
                rec.meta.get("sse").map(String::as_str) == Some(sse.as_str())
                    && rec.meta.get("kms_key_id") == sse.kms_key_id.as_ref()
            }
        }
    }

    /// Read and check (checksums) a snapshot's listing artifact.
    pub(super) fn read_listing(&self, rec: &TargetRecord, store: &dyn Store) -> Result<Vec<ObjectEntry>> {
        let a: &Artifact = rec
            .artifacts
            .first()
            .ok_or_else(|| anyhow!("snapshot of {} has no listing artifact", rec.name))?;
        let mut buf = Vec::new();
        crate::artifact::read_artifact(store, a, &mut buf)?;
        let entries = from_jsonl(&buf, &format!("{}/{}", store.location(), a.key))?;
        if let Some(n) = rec.meta.get("objects").and_then(|s| s.parse::<usize>().ok()) {
            if n != entries.len() {
                bail!(
                    "{}/{}: lists {} objects, the manifest says {n}",
                    store.location(),
                    a.key,
                    entries.len()
                );
            }
        }
        self.remember(&entries);
        Ok(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(key: &str, etag: &str, size: u64, modified: i64) -> Listed {
        Listed {
            key: key.into(),
            size,
            etag: etag.into(),
            modified,
        }
    }

    fn entry(o: &Listed, clone_key: &str, cloned: i64) -> ObjectEntry {
        ObjectEntry {
            key: o.key.clone(),
            size: o.size,
            etag: o.etag.clone(),
            modified: o.modified,
            sha256: "ab".repeat(32),
            sha256_from: "server".into(),
            tags: None,
            clone_key: clone_key.into(),
            clone_etag: "e1".into(),
            cloned,
        }
    }

    #[test]
    fn a_clone_is_reused_only_while_the_object_is_provably_unchanged() {
        let o = listed("a.jpg", "e1", 10, 100);
        let base = || "p/a/e1-10-100".to_string();
        let clones: HashMap<String, Listed> = [("p/a/e1-10-100".to_string(), listed("p/a/e1-10-100", "e1", 10, 101))]
            .into_iter()
            .collect();
        let settled = entry(&o, "p/a/e1-10-100", 101);
        assert_eq!(
            plan(&o, Some(&settled), &clones, base(), "S2"),
            Plan::Reuse(settled.clone())
        );
        // The object was rewritten (new Last-Modified, same bytes and size): copied again.
        let rewritten = listed("a.jpg", "e1", 10, 105);
        assert_eq!(
            plan(&rewritten, Some(&settled), &clones, "p/a/e1-10-105".into(), "S2"),
            Plan::Copy("p/a/e1-10-105".into())
        );
        // Copied in the same second as the object's last change: a second change in that
        // second would be invisible, so the clone is not trusted and its key not overwritten.
        let racy_clones: HashMap<String, Listed> =
            [("p/a/e1-10-100".to_string(), listed("p/a/e1-10-100", "e1", 10, 100))]
                .into_iter()
                .collect();
        let racy = entry(&o, "p/a/e1-10-100", 100);
        assert_eq!(
            plan(&o, Some(&racy), &racy_clones, base(), "S2"),
            Plan::Copy("p/a/e1-10-100-S2".into())
        );
        // The clone was replaced or removed behind guard's back: copied again.
        let mut replaced = clones.clone();
        replaced.get_mut("p/a/e1-10-100").unwrap().etag = "other".into();
        assert_eq!(
            plan(&o, Some(&settled), &replaced, base(), "S2"),
            Plan::Copy("p/a/e1-10-100-S2".into())
        );
        assert_eq!(
            plan(&o, Some(&settled), &HashMap::new(), base(), "S2"),
            Plan::Copy(base())
        );
        // No previous listing, but a usable clone under the object's name: adopted.
        assert_eq!(plan(&o, None, &clones, base(), "S2"), Plan::Adopt(base()));
    }

    #[test]
    fn fingerprints_cover_a_prefix() {
        let objs = [("p/a/1", "x"), ("p/a/2", "y"), ("p/b/1", "z")];
        let a = fingerprint_of("p/", objs.iter().copied(), "a/");
        assert_eq!(a.rows, 2);
        let changed = [("p/a/1", "x"), ("p/a/2", "CHANGED"), ("p/b/1", "z")];
        assert_ne!(fingerprint_of("p/", changed.iter().copied(), "a/").hash, a.hash);
        assert_eq!(
            fingerprint_of("p/", changed.iter().copied(), "b/"),
            fingerprint_of("p/", objs.iter().copied(), "b/")
        );
        assert_eq!(fingerprint_of("p/", objs.iter().copied(), "").rows, 3);
    }
}
