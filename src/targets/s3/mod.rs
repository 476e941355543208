//! S3 buckets (or a prefix of one), cloned server-side into a clone bucket.
//!
//! Snapshot: list the source (every page) and the clone prefix, then server-side copy each
//! object that has no usable clone into the clone bucket under
//! `guard/<policy>/<target>/objects/<sha256(key)>/<etag>-<size>-<last-modified>`: CopyObject
//! with `MetadataDirective`/`TaggingDirective` COPY and `x-amz-checksum-algorithm: SHA256`, so
//! the server hands back the copy's SHA-256 in the same request (objects above the multipart
//! threshold go through UploadPartCopy with their attributes set explicitly and are hashed by
//! reading the clone). Each copy is pinned to the listed version with
//! `x-amz-copy-source-if-match` and, since some servers ignore that header, checked against the
//! listing by its result (`clone::copy_matches`); after each round of copies the source is listed
//! again and whatever changed gets another round, until a listing shows nothing new (at most
//! `clone::MAX_LISTINGS`): the snapshot is then that listing, every clone proven to be the
//! version it names.
//!
//! Change detection: S3 can change an object's bytes or metadata only by writing a new object,
//! which gets a new Last-Modified. So a clone copied in a later second than the object's
//! Last-Modified holds exactly that object's bytes and metadata for as long as the object's
//! (key, size, ETag, Last-Modified) stay the same, and a repeat snapshot reuses it with no
//! request for that object. A clone copied in the same second as the object's last change is
//! not trusted again (a second change in that second would be invisible); the next snapshot
//! copies it anew, under a key of its own. Tags are the exception (PutObjectTagging changes
//! neither ETag nor Last-Modified): with `tags = "exact"` (the default) every snapshot reads
//! the tag set of every object it does not copy (a copy carries the set it has at that moment)
//! and restore puts tag sets back; with `tags = "with-content"` they travel with
//! the clone only.
//!
//! The snapshot's own record is a listing artifact (`TARGET.objects.jsonl.gz`: key, size, ETag,
//! Last-Modified, SHA-256, tags, clone key, clone ETag and clone time of every object), gzip'd
//! and checksummed like every artifact. Restore copies back what differs, deletes what the
//! snapshot did not have, then proves the bucket equals the listing.

mod clone;
pub mod config;
mod copy;
mod listing;
mod objects;
mod restore;
mod tasks;
mod wire;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use anyhow::{anyhow, bail, Context, Result};
use aws_sdk_s3::Client;

use super::{Restored, SnapshotCtx, Target};
use crate::aws::{client, sdk_error, status_of};
use crate::manifest::{Fingerprint, TargetRecord};
use crate::runtime::wait;
use crate::store::Store;
use crate::targets::{KindSpec, TargetSpec};
pub use config::{S3Spec, S3Tags};

use listing::{fingerprint_of, list_all, summarize, to_jsonl};
use objects::delete_keys;
use restore::RestoredListing;

/// Counters of a snapshot or restore, for the record and for tests.
#[derive(Debug, Default, Clone)]
struct Stats {
    copied: u64,
    copied_bytes: u64,
    reused: u64,
    hashed: u64,
    server_checksums: u64,
    /// Listings of the source the snapshot took (one, plus one after each round of copies).
    listings: u64,
    /// Copies made again because the object changed during the snapshot.
    recopied: u64,
    /// Copies whose result did not match the object's listing (a server ignoring
    /// `x-amz-copy-source-if-match`), discarded.
    copy_mismatches: u64,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.copied += o.copied;
        self.copied_bytes += o.copied_bytes;
        self.reused += o.reused;
        self.hashed += o.hashed;
        self.server_checksums += o.server_checksums;
        self.copy_mismatches += o.copy_mismatches;
    }
}

pub struct S3Target {
    spec: TargetSpec,
    s3: S3Spec,
    /// SHA-256 of contents seen in listings this process read: (key, etag, size) → sha256.
    known: Mutex<HashMap<(String, String, u64), String>>,
    /// Listings read by `restore`, by artifact SHA-256, for `verify_restored`.
    /// With the keys whose bytes and attributes the restore found equal and left alone.
    restored: Mutex<HashMap<String, RestoredListing>>,
}

impl S3Target {
    pub fn new(spec: TargetSpec, s3: S3Spec) -> Self {
        S3Target {
            spec,
            s3,
            known: Mutex::new(HashMap::new()),
            restored: Mutex::new(HashMap::new()),
        }
    }

    /// Rebuild from a manifest record (bucket, prefix, clone bucket, endpoint are in its meta).
    pub fn from_record(rec: &TargetRecord) -> Result<Self> {
        let get = |k: &str| rec.meta.get(k).cloned();
        let s3 = S3Spec {
            bucket: get("bucket").ok_or_else(|| anyhow!("snapshot of {}: no bucket recorded", rec.name))?,
            prefix: get("prefix").unwrap_or_default(),
            clone_bucket: get("clone_bucket")
                .ok_or_else(|| anyhow!("snapshot of {}: no clone bucket recorded", rec.name))?,
            endpoint: get("endpoint"),
            region: get("region"),
            tags: match get("tags").as_deref() {
                Some("with-content") => S3Tags::WithContent,
                _ => S3Tags::Exact,
            },
            // A record serves inspection only; what guard writes is encrypted as the policy says.
            sse: None,
        };
        Ok(S3Target::new(
            TargetSpec::new(rec.name.clone(), KindSpec::S3(s3.clone())),
            s3,
        ))
    }

    fn client(&self) -> Client {
        client(self.s3.endpoint.as_deref(), self.s3.region.as_deref())
    }

    fn clone_prefix(&self, policy: &str) -> String {
        format!("guard/{policy}/{}/objects/", self.spec.name)
    }

    fn where_(&self) -> String {
        format!("s3://{}/{}", self.s3.bucket, self.s3.prefix)
    }
}

impl Target for S3Target {
    fn spec(&self) -> &TargetSpec {
        &self.spec
    }

    fn source(&self) -> String {
        self.where_()
    }

    fn preflight(&self) -> Result<()> {
        let s3 = &self.s3;
        if s3.clone_bucket == s3.bucket && ("guard/".starts_with(&s3.prefix) || s3.prefix.starts_with("guard/")) {
            bail!(
                "target {}: clone_bucket {} is the source bucket and the clones (under guard/) would be inside the cloned prefix {:?}; use another clone bucket or prefix",
                self.spec.name,
                s3.clone_bucket,
                s3.prefix
            );
        }
        let c = self.client();
        for (b, role) in [(&s3.bucket, "bucket"), (&s3.clone_bucket, "clone_bucket")] {
            wait(c.head_bucket().bucket(b).send()).map_err(|e| {
                let hint = if status_of(&e) == Some(404) {
                    " (it does not exist; create it first)"
                } else {
                    ""
                };
                sdk_error(
                    format!("target {}: {role} {b} is not reachable{hint}", self.spec.name),
                    e,
                )
            })?;
        }
        Ok(())
    }

    fn snapshot(&self, ctx: &SnapshotCtx) -> Result<TargetRecord> {
        let s3 = &self.s3;
        let mut rec = TargetRecord {
            name: self.spec.name.clone(),
            kind: "s3".into(),
            source: self.source(),
            ..Default::default()
        };
        rec.meta.insert("bucket".into(), s3.bucket.clone());
        rec.meta.insert("prefix".into(), s3.prefix.clone());
        rec.meta.insert("clone_bucket".into(), s3.clone_bucket.clone());
        rec.meta.insert("tags".into(), s3.tags.as_str().into());
        if let Some(e) = &s3.endpoint {
            rec.meta.insert("endpoint".into(), e.clone());
        }
        if let Some(r) = &s3.region {
            rec.meta.insert("region".into(), r.clone());
        }
        if let Some(sse) = &s3.sse {
            rec.meta.insert("sse".into(), sse.as_str().into());
            if let Some(k) = &sse.kms_key_id {
                rec.meta.insert("kms_key_id".into(), k.clone());
            }
        }
        let c = self.client();
        if ctx.allow_absent {
            if let Err(e) = wait(c.head_bucket().bucket(&s3.bucket).send()) {
                if status_of(&e) == Some(404) {
                    rec.absent = true;
                    return Ok(rec);
                }
            }
        }
        self.preflight()?;
        let clone_prefix = self.clone_prefix(ctx.policy);
        rec.meta.insert("clone_prefix".into(), clone_prefix.clone());
        let previous = self.previous_listing(ctx.store);
        let (entries, st) = wait(self.clone_all(c, clone_prefix, ctx.snapshot_id.to_string(), previous))
            .with_context(|| format!("cloning {} into s3://{}", self.where_(), s3.clone_bucket))?;
        let bytes: u64 = entries.iter().map(|e| e.size).sum();
        for (k, v) in [
            ("objects", entries.len() as u64),
            ("bytes", bytes),
            ("copied", st.copied),
            ("copied_bytes", st.copied_bytes),
            ("reused", st.reused),
            ("hashed", st.hashed),
            ("server_checksums", st.server_checksums),
            ("listings", st.listings),
            ("recopied", st.recopied),
            ("copy_mismatches", st.copy_mismatches),
        ] {
            rec.meta.insert(k.into(), v.to_string());
        }
        rec.tools
            .insert("copy".into(), "S3 CopyObject / UploadPartCopy (server-side)".into());
        for item in ctx.fingerprint {
            rec.fingerprints.insert(
                item.clone(),
                fingerprint_of(
                    &s3.prefix,
                    entries.iter().map(|e| (e.key.as_str(), e.sha256.as_str())),
                    item,
                ),
            );
        }
        let data = to_jsonl(&entries);
        let artifact = ctx.write_artifact(ctx.key(&self.spec.name, "objects.jsonl.gz"), "jsonl", &data[..])?;
        rec.artifacts.push(artifact);
        self.remember(&entries);
        Ok(rec)
    }

    fn deep_verify(&self, rec: &TargetRecord, store: &dyn Store, _scratch: &std::path::Path) -> Result<()> {
        let entries = self.read_listing(rec, store)?;
        let clone_prefix = rec
            .meta
            .get("clone_prefix")
            .ok_or_else(|| anyhow!("snapshot of {}: no clone prefix recorded", rec.name))?;
        let c = self.client();
        let clones: HashMap<String, (u64, String)> = wait(list_all(&c, &self.s3.clone_bucket, clone_prefix))?
            .into_iter()
            .map(|l| (l.key, (l.size, l.etag)))
            .collect();
        let mut diffs = Vec::new();
        for e in &entries {
            match clones.get(&e.clone_key) {
                None => diffs.push(format!(
                    "{}: clone s3://{}/{} is missing",
                    e.key, self.s3.clone_bucket, e.clone_key
                )),
                Some((n, etag)) if *n != e.size || (!e.clone_etag.is_empty() && *etag != e.clone_etag) => {
                    diffs.push(format!(
                        "{}: clone s3://{}/{} was replaced ({n} bytes, ETag {etag})",
                        e.key, self.s3.clone_bucket, e.clone_key
                    ))
                }
                _ => {}
            }
        }
        summarize(diffs).context("the clones do not match the snapshot's listing")
    }

    /// Retention: delete the clone objects of a pruned snapshot that no kept snapshot's listing
    /// references. Stops (deleting nothing) if any kept listing cannot be read.
    fn release(&self, rec: &TargetRecord, kept: &[TargetRecord], store: &dyn Store) -> Result<()> {
        let Some(a) = rec.artifacts.first() else { return Ok(()) };
        if store.size(&a.key)?.is_none() {
            // Release runs before the artifacts are deleted: a missing listing means an
            // interrupted prune already released this snapshot.
            return Ok(());
        }
        let mine = self.read_listing(rec, store)?;
        let mut referenced: HashSet<String> = HashSet::new();
        for k in kept.iter().filter(|k| k.kind == "s3" && !k.absent) {
            if k.meta.get("clone_bucket") != rec.meta.get("clone_bucket") {
                continue;
            }
            let listing = self
                .read_listing(k, store)
                .with_context(|| format!("reading a kept snapshot's listing of {} (nothing was deleted)", k.name))?;
            referenced.extend(listing.into_iter().map(|e| e.clone_key));
        }
        let clone_prefix = rec.meta.get("clone_prefix").cloned().unwrap_or_default();
        let mut doomed: Vec<String> = mine
            .into_iter()
            .map(|e| e.clone_key)
            .filter(|k| !referenced.contains(k))
            .collect();
        doomed.sort();
        doomed.dedup();
        // Never anything outside guard's own clone prefix.
        if let Some(bad) = doomed
            .iter()
            .find(|k| !k.starts_with("guard/") || (!clone_prefix.is_empty() && !k.starts_with(&clone_prefix)))
        {
            bail!(
                "refusing to delete s3://{}/{bad}: not under guard's clone prefix",
                self.s3.clone_bucket
            );
        }
        let c = self.client();
        let bucket = rec
            .meta
            .get("clone_bucket")
            .cloned()
            .unwrap_or_else(|| self.s3.clone_bucket.clone());
        wait(delete_keys(&c, &bucket, &doomed, "clone object(s)"))
    }

    fn release_needs_kept(&self) -> bool {
        true
    }

    fn restore(&self, rec: &TargetRecord, store: &dyn Store) -> Result<Restored> {
        self.restore_bucket(rec, store).map(|()| Restored::Done)
    }

    fn verify_restored(&self, rec: &TargetRecord) -> Result<()> {
        self.verify_bucket(rec)
    }

    fn fingerprint(&self, items: &[String]) -> Result<BTreeMap<String, Fingerprint>> {
        let c = self.client();
        let live = wait(list_all(&c, &self.s3.bucket, &self.s3.prefix))?;
        let hashes = wait(self.live_hashes(&c, live))?;
        Ok(items
            .iter()
            .map(|i| {
                (
                    i.clone(),
                    fingerprint_of(&self.s3.prefix, hashes.iter().map(|(k, s)| (k.as_str(), s.as_str())), i),
                )
            })
            .collect())
    }

    fn objects(&self, prefix: &str) -> Result<(u64, u64)> {
        let c = self.client();
        let full = format!("{}{prefix}", self.s3.prefix);
        let live = wait(list_all(&c, &self.s3.bucket, &full))?;
        Ok((live.len() as u64, live.iter().map(|o| o.size).sum()))
    }

    fn query(&self, _sql: &str) -> Result<String> {
        bail!(
            "target {} is an S3 bucket; it does not answer SQL (use `objects` or `bytes` checks)",
            self.spec.name
        )
    }
}
