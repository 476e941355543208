//! S3 buckets (or a prefix of one), cloned server-side into a clone bucket.
//!
//! Snapshot: list the source (every page) and the clone prefix, then server-side copy each
//! object that has no usable clone into the clone bucket under
//! `guard/<policy>/<target>/objects/<sha256(key)>/<etag>-<size>-<last-modified>`: CopyObject
//! with `MetadataDirective`/`TaggingDirective` COPY and `x-amz-checksum-algorithm: SHA256`, so
//! the server hands back the copy's SHA-256 in the same request (objects above the multipart
//! threshold go through UploadPartCopy with their attributes set explicitly and are hashed by
//! reading the clone). Each copy is pinned to the listed version with
//! `x-amz-copy-source-if-match`, so an object that changes meanwhile fails the snapshot instead
//! of being cloned half-old.
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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};
use aws_sdk_s3::types::{
    ChecksumAlgorithm, ChecksumMode, CompletedPart, Delete, MetadataDirective, ObjectIdentifier, Tag, Tagging,
    TaggingDirective,
};
use aws_sdk_s3::Client;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::{SnapshotCtx, Target};
use crate::manifest::{Artifact, Fingerprint, TargetRecord};
use crate::policy::{S3Spec, S3Tags, TargetKind, TargetSpec};
use crate::runtime::wait;
use crate::store::s3::{client, complete_multipart, sdk_error, status_of};
use crate::store::{keys, Store};

/// Objects larger than this are copied with multipart UploadPartCopy (CopyObject stops at 5 GiB).
const DEFAULT_MULTIPART_THRESHOLD: u64 = 5 << 30;
/// Part size of multipart copies.
const DEFAULT_PART_SIZE: u64 = 512 << 20;
/// Requests in flight at once.
const DEFAULT_CONCURRENCY: usize = 16;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|s| s.trim().parse().ok())
}

fn multipart_threshold() -> u64 {
    env_u64("GUARD_S3_MULTIPART_THRESHOLD")
        .unwrap_or(DEFAULT_MULTIPART_THRESHOLD)
        .min(DEFAULT_MULTIPART_THRESHOLD)
}

fn part_size() -> u64 {
    env_u64("GUARD_S3_PART_SIZE").unwrap_or(DEFAULT_PART_SIZE).max(5 << 20)
}

fn concurrency() -> usize {
    env_u64("GUARD_S3_CONCURRENCY")
        .map(|n| n as usize)
        .unwrap_or(DEFAULT_CONCURRENCY)
        .clamp(1, 256)
}

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
    fn same_object(&self, l: &Listed) -> bool {
        self.etag == l.etag && self.size == l.size && self.modified == l.modified
    }

    /// The clone was copied in a later second than the object's last change, so nothing can
    /// have changed the object since without changing its Last-Modified.
    fn settled(&self) -> bool {
        self.cloned > self.modified
    }
}

/// What a snapshot does for one listed object.
#[derive(Debug, PartialEq)]
enum Plan {
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
fn plan(
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

/// Counters of a snapshot or restore, for the record and for tests.
#[derive(Debug, Default, Clone)]
struct Stats {
    copied: u64,
    copied_bytes: u64,
    reused: u64,
    hashed: u64,
    server_checksums: u64,
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

/// A listing a restore read, and what it put back: key → the attributes the object must now have.
type RestoredListing = (Arc<Vec<ObjectEntry>>, HashMap<String, Attrs>);

fn unquote(e: &str) -> String {
    e.trim_matches('"').to_string()
}

/// Percent-encode a key for `x-amz-copy-source` (slashes kept).
fn encode_key(k: &str) -> String {
    let mut out = String::with_capacity(k.len());
    for b in k.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Percent-encode a tag key or value for `x-amz-tagging`.
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decode standard base64 (the encoding of S3 checksums).
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let s = s.trim().trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        acc = (acc << 6) | val(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// The server's full-object SHA-256 as hex, when it gave one (composite checksums of
/// multipart uploads, `…-N`, are not a hash of the content and are ignored).
fn server_sha256(v: Option<&str>) -> Option<String> {
    let v = v?;
    if v.contains('-') {
        return None;
    }
    let raw = base64_decode(v)?;
    (raw.len() == 32).then(|| hex::encode(raw))
}

/// Run `f` over `items` with at most `limit` in flight; the first error stops the rest.
async fn bounded<I, T, F, Fut>(items: Vec<I>, limit: usize, f: F) -> Result<Vec<T>>
where
    I: Send + 'static,
    T: Send + 'static,
    F: Fn(I) -> Fut,
    Fut: Future<Output = Result<T>> + Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    let mut out = Vec::with_capacity(items.len());
    let mut it = items.into_iter();
    loop {
        while set.len() < limit {
            match it.next() {
                Some(i) => {
                    set.spawn(f(i));
                }
                None => break,
            }
        }
        match set.join_next().await {
            None => break,
            Some(Ok(Ok(t))) => out.push(t),
            Some(Ok(Err(e))) => {
                set.abort_all();
                return Err(e);
            }
            Some(Err(e)) => {
                set.abort_all();
                return Err(anyhow!("an S3 task failed: {e}"));
            }
        }
    }
    Ok(out)
}

/// A listed object: key, size, ETag, Last-Modified (Unix seconds).
#[derive(Debug, Clone)]
struct Listed {
    key: String,
    size: u64,
    etag: String,
    modified: i64,
}

async fn list_all(c: &Client, bucket: &str, prefix: &str) -> Result<Vec<Listed>> {
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

/// Attributes and (when given) the server's SHA-256 of `bucket/key`, pinned to `etag`.
async fn read_attrs(
    c: &Client,
    bucket: &str,
    key: &str,
    etag: Option<&str>,
) -> Result<(Attrs, Option<String>, u64, String)> {
    let mut req = c
        .head_object()
        .bucket(bucket)
        .key(key)
        .checksum_mode(ChecksumMode::Enabled);
    if let Some(e) = etag {
        req = req.if_match(format!("\"{e}\""));
    }
    let h = req.send().await.map_err(|e| read_error(bucket, key, e))?;
    let tags = get_tags(c, bucket, key).await?;
    let attrs = Attrs {
        content_type: h.content_type().map(str::to_string),
        content_encoding: h.content_encoding().map(str::to_string),
        cache_control: h.cache_control().map(str::to_string),
        content_disposition: h.content_disposition().map(str::to_string),
        content_language: h.content_language().map(str::to_string),
        metadata: h
            .metadata()
            .map(|m| m.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.clone())).collect())
            .unwrap_or_default(),
        tags,
    };
    Ok((
        attrs,
        server_sha256(h.checksum_sha256()),
        h.content_length().unwrap_or(0).max(0) as u64,
        unquote(h.e_tag().unwrap_or_default()),
    ))
}

/// The tag set of `bucket/key`.
async fn get_tags(c: &Client, bucket: &str, key: &str) -> Result<BTreeMap<String, String>> {
    let t = c
        .get_object_tagging()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| sdk_error(format!("reading the tags of s3://{bucket}/{key}"), e))?;
    Ok(t.tag_set()
        .iter()
        .map(|t| (t.key().to_string(), t.value().to_string()))
        .collect())
}

/// Whether a snapshot was taken with `tags = "exact"`.
fn exact_tags(rec: &TargetRecord) -> bool {
    rec.meta.get("tags").map(String::as_str) == Some(S3Tags::Exact.as_str())
}

/// The tag set object `e` had when its snapshot was taken, if the snapshot knows it: recorded
/// in the listing, or (`exact`: the snapshot copied the object and did not read its tags) the
/// clone's, which the copy took from the object at that moment.
async fn snapshot_tags(
    c: &Client,
    clone_bucket: &str,
    e: &ObjectEntry,
    exact: bool,
) -> Result<Option<BTreeMap<String, String>>> {
    match &e.tags {
        Some(t) => Ok(Some(t.clone())),
        None if exact => Ok(Some(get_tags(c, clone_bucket, &e.clone_key).await?)),
        None => Ok(None),
    }
}

/// SHA-256 of `bucket/key` (pinned to `etag`) and where it came from: the server's
/// full-object checksum when it gives one (the body is then not read), otherwise the body is
/// read and hashed.
async fn object_sha256(c: &Client, bucket: &str, key: &str, etag: &str, size: u64) -> Result<(String, &'static str)> {
    let r = c
        .get_object()
        .bucket(bucket)
        .key(key)
        .if_match(format!("\"{etag}\""))
        .checksum_mode(ChecksumMode::Enabled)
        .send()
        .await
        .map_err(|e| read_error(bucket, key, e))?;
    if let Some(s) = server_sha256(r.checksum_sha256()) {
        return Ok((s, "server"));
    }
    let mut body = r.body;
    let mut h = Sha256::new();
    let mut n = 0u64;
    while let Some(chunk) = body
        .try_next()
        .await
        .map_err(|e| anyhow!("reading s3://{bucket}/{key}: {e}"))?
    {
        h.update(&chunk);
        n += chunk.len() as u64;
    }
    if n != size {
        bail!("s3://{bucket}/{key}: read {n} bytes, listed with {size} (changing while guard reads it?)");
    }
    Ok((hex::encode(h.finalize()), "computed"))
}

/// The error of a read pinned to an ETag: 412 means the object changed under guard.
fn read_error<E>(
    bucket: &str,
    key: &str,
    e: aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> anyhow::Error
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    if status_of(&e) == Some(412) {
        anyhow!("s3://{bucket}/{key} changed while guard was reading it (stop writers with a `before` hook and retry)")
    } else {
        sdk_error(format!("reading s3://{bucket}/{key}"), e)
    }
}

/// What a server-side copy made.
struct Copied {
    etag: String,
    /// Last-Modified of the copy, Unix seconds.
    modified: i64,
    /// SHA-256 (hex) of the copy, when the server computed it.
    sha256: Option<String>,
}

/// Server-side copy `src_bucket/src_key` (pinned to `src_etag`) to `dst_bucket/dst_key`,
/// keeping content-type, metadata and tags, and asking the server for the copy's SHA-256.
/// `attrs` are needed only above the multipart threshold (UploadPartCopy does not carry them):
/// they are read from the source when not given.
#[allow(clippy::too_many_arguments)]
async fn copy_object(
    c: &Client,
    src_bucket: &str,
    src_key: &str,
    src_etag: &str,
    size: u64,
    attrs: Option<&Attrs>,
    dst_bucket: &str,
    dst_key: &str,
) -> Result<Copied> {
    let source = format!("{src_bucket}/{}", encode_key(src_key));
    let what = || format!("copying s3://{src_bucket}/{src_key} to s3://{dst_bucket}/{dst_key}");
    let changed = || {
        anyhow!("s3://{src_bucket}/{src_key} changed while guard was copying it (stop writers with a `before` hook and retry)")
    };
    if size <= multipart_threshold() {
        let r = c
            .copy_object()
            .bucket(dst_bucket)
            .key(dst_key)
            .copy_source(&source)
            .copy_source_if_match(format!("\"{src_etag}\""))
            .metadata_directive(MetadataDirective::Copy)
            .tagging_directive(TaggingDirective::Copy)
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .send()
            .await
            .map_err(|e| {
                if status_of(&e) == Some(412) {
                    changed()
                } else {
                    sdk_error(what(), e)
                }
            })?;
        let r = r.copy_object_result();
        return Ok(Copied {
            etag: r.and_then(|x| x.e_tag()).map(unquote).unwrap_or_default(),
            modified: r.and_then(|x| x.last_modified()).map(|t| t.secs()).unwrap_or(0),
            sha256: server_sha256(r.and_then(|x| x.checksum_sha256())),
        });
    }
    // Multipart: the attributes do not come along by themselves.
    let read;
    let attrs = match attrs {
        Some(a) => a,
        None => {
            read = read_attrs(c, src_bucket, src_key, Some(src_etag)).await?.0;
            &read
        }
    };
    let up = c
        .create_multipart_upload()
        .bucket(dst_bucket)
        .key(dst_key)
        .set_content_type(attrs.content_type.clone())
        .set_content_encoding(attrs.content_encoding.clone())
        .set_cache_control(attrs.cache_control.clone())
        .set_content_disposition(attrs.content_disposition.clone())
        .set_content_language(attrs.content_language.clone())
        .set_metadata(if attrs.metadata.is_empty() {
            None
        } else {
            Some(attrs.metadata.clone().into_iter().collect())
        })
        // Tags go with the upload, so the object never exists without them.
        .set_tagging(if attrs.tags.is_empty() {
            None
        } else {
            Some(
                attrs
                    .tags
                    .iter()
                    .map(|(k, v)| format!("{}={}", form_encode(k), form_encode(v)))
                    .collect::<Vec<_>>()
                    .join("&"),
            )
        })
        .send()
        .await
        .map_err(|e| sdk_error(what(), e))?;
    let id = up
        .upload_id()
        .ok_or_else(|| anyhow!("{}: no upload id", what()))?
        .to_string();
    let result: Result<Copied> = async {
        let ps = part_size();
        let mut parts = Vec::new();
        let mut start = 0u64;
        let mut n = 1;
        while start < size {
            let end = (start + ps).min(size) - 1;
            let r = c
                .upload_part_copy()
                .bucket(dst_bucket)
                .key(dst_key)
                .upload_id(&id)
                .part_number(n)
                .copy_source(&source)
                .copy_source_range(format!("bytes={start}-{end}"))
                .copy_source_if_match(format!("\"{src_etag}\""))
                .send()
                .await
                .map_err(|e| {
                    if status_of(&e) == Some(412) {
                        changed()
                    } else {
                        sdk_error(format!("{} (part {n})", what()), e)
                    }
                })?;
            let etag = r.copy_part_result().and_then(|p| p.e_tag()).map(str::to_string);
            parts.push(CompletedPart::builder().part_number(n).set_e_tag(etag).build());
            start = end + 1;
            n += 1;
        }
        let etag = complete_multipart(c, dst_bucket, dst_key, &id, parts, size)
            .await
            .with_context(what)?;
        let etag = unquote(&etag);
        let h = c
            .head_object()
            .bucket(dst_bucket)
            .key(dst_key)
            .if_match(format!("\"{etag}\""))
            .send()
            .await
            .map_err(|e| read_error(dst_bucket, dst_key, e))?;
        Ok(Copied {
            etag,
            modified: h.last_modified().map(|t| t.secs()).unwrap_or(0),
            sha256: None,
        })
    }
    .await;
    if result.is_err() {
        let _ = c
            .abort_multipart_upload()
            .bucket(dst_bucket)
            .key(dst_key)
            .upload_id(&id)
            .send()
            .await;
    }
    result
}

/// Delete `keys` from `bucket` with DeleteObjects, 1,000 keys a request; `what` names them in
/// errors. The first key the server refuses fails the call.
async fn delete_keys(c: &Client, bucket: &str, keys: &[String], what: &str) -> Result<()> {
    for batch in keys.chunks(1000) {
        let ids = batch
            .iter()
            .map(|k| {
                ObjectIdentifier::builder()
                    .key(k)
                    .build()
                    .map_err(|e| anyhow!("{k}: {e}"))
            })
            .collect::<Result<Vec<_>>>()?;
        let r = c
            .delete_objects()
            .bucket(bucket)
            .delete(
                Delete::builder()
                    .set_objects(Some(ids))
                    .quiet(true)
                    .build()
                    .map_err(|e| anyhow!("{e}"))?,
            )
            .send()
            .await
            .map_err(|e| sdk_error(format!("deleting {} {what} from s3://{bucket}", batch.len()), e))?;
        if let Some(err) = r.errors().first() {
            bail!(
                "deleting s3://{bucket}/{} failed: {} {}",
                err.key().unwrap_or("?"),
                err.code().unwrap_or(""),
                err.message().unwrap_or("")
            );
        }
    }
    Ok(())
}

/// Make the tag set of `bucket/key` exactly `tags`.
async fn set_tags(c: &Client, bucket: &str, key: &str, tags: &BTreeMap<String, String>) -> Result<()> {
    let what = || format!("setting the tags of s3://{bucket}/{key}");
    if tags.is_empty() {
        c.delete_object_tagging()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| sdk_error(what(), e))?;
        return Ok(());
    }
    let set = tags
        .iter()
        .map(|(k, v)| {
            Tag::builder()
                .key(k)
                .value(v)
                .build()
                .map_err(|e| anyhow!("tag {k}: {e}"))
        })
        .collect::<Result<Vec<_>>>()?;
    c.put_object_tagging()
        .bucket(bucket)
        .key(key)
        .tagging(
            Tagging::builder()
                .set_tag_set(Some(set))
                .build()
                .map_err(|e| anyhow!("tags: {e}"))?,
        )
        .send()
        .await
        .map_err(|e| sdk_error(what(), e))?;
    Ok(())
}

/// Fingerprint of the objects under `item` (relative to the target's prefix; "" is all):
/// the count and a hash of every key with its SHA-256.
fn fingerprint_of<'a>(prefix: &str, objects: impl Iterator<Item = (&'a str, &'a str)>, item: &str) -> Fingerprint {
    let mut h = Sha256::new();
    let mut n = 0;
    for (key, sha) in objects {
        let rel = key.strip_prefix(prefix).unwrap_or(key);
        if !rel.starts_with(item) {
            continue;
        }
        for part in [rel, sha] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        n += 1;
    }
    Fingerprint {
        rows: n,
        hash: Some(hex::encode(&h.finalize()[..16])),
    }
}

fn to_jsonl(entries: &[ObjectEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        out.extend_from_slice(&serde_json::to_vec(e).expect("serializes"));
        out.push(b'\n');
    }
    out
}

fn from_jsonl(bytes: &[u8], what: &str) -> Result<Vec<ObjectEntry>> {
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
fn summarize(diffs: Vec<String>) -> Result<()> {
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
        };
        Ok(S3Target::new(
            TargetSpec {
                name: rec.name.clone(),
                line: 0,
                kind: TargetKind::S3(s3.clone()),
            },
            s3,
        ))
    }

    fn client(&self) -> Client {
        client(self.s3.endpoint.as_deref(), self.s3.region.as_deref())
    }

    fn clone_prefix(&self, policy: &str) -> String {
        format!("guard/{policy}/{}/objects/", self.spec.name)
    }

    fn remember(&self, entries: &[ObjectEntry]) {
        let mut k = self.known.lock().expect("known");
        for e in entries {
            k.insert((e.key.clone(), e.etag.clone(), e.size), e.sha256.clone());
        }
    }

    /// The listing of the newest complete snapshot in `store` holding this target, if any.
    fn previous_listing(&self, store: &dyn Store) -> Vec<ObjectEntry> {
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
            {
                continue;
            }
            match self.read_listing(rec, store) {
                Ok(l) => return l,
                Err(e) => {
                    eprintln!(
                        "guard: warning: {}: cannot use the listing of snapshot {id}, copying everything: {e:#}",
                        self.spec.name
                    );
                    return Vec::new();
                }
            }
        }
        Vec::new()
    }

    /// Read and check (checksums) a snapshot's listing artifact.
    fn read_listing(&self, rec: &TargetRecord, store: &dyn Store) -> Result<Vec<ObjectEntry>> {
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

    /// Clone every object that has no usable clone yet; returns the listing and what it cost.
    async fn clone_all(
        &self,
        c: Client,
        clone_prefix: String,
        snapshot_id: String,
        previous: Vec<ObjectEntry>,
    ) -> Result<(Vec<ObjectEntry>, Stats)> {
        let s3 = &self.s3;
        let source = list_all(&c, &s3.bucket, &s3.prefix).await?;
        let clones: HashMap<String, Listed> = list_all(&c, &s3.clone_bucket, &clone_prefix)
            .await?
            .into_iter()
            .map(|l| (l.key.clone(), l))
            .collect();
        let clones = Arc::new(clones);
        let prev: Arc<HashMap<String, ObjectEntry>> =
            Arc::new(previous.into_iter().map(|e| (e.key.clone(), e)).collect());
        let (bucket, clone_bucket) = (s3.bucket.clone(), s3.clone_bucket.clone());
        let exact_tags = s3.tags == S3Tags::Exact;
        type Done = (ObjectEntry, Stats);
        let results: Vec<Done> = bounded(source, concurrency(), move |o: Listed| {
            let (c, clones, prev, bucket, clone_bucket, clone_prefix, snapshot_id) = (
                c.clone(),
                Arc::clone(&clones),
                Arc::clone(&prev),
                bucket.clone(),
                clone_bucket.clone(),
                clone_prefix.clone(),
                snapshot_id.clone(),
            );
            async move {
                let mut st = Stats::default();
                let key_hash = hex::encode(Sha256::digest(o.key.as_bytes()));
                let base = format!("{clone_prefix}{}/{}-{}-{}", &key_hash[..32], o.etag, o.size, o.modified);
                let plan = plan(&o, prev.get(&o.key), &clones, base, &snapshot_id);
                // With exact tags, an object copied now needs no read: the copy carries the
                // tag set it has at this moment (TaggingDirective COPY), so the listing leaves
                // `tags` out and restore takes them from the clone. A reused clone may carry
                // older tags: read the object's current set.
                let tags = if exact_tags && !matches!(plan, Plan::Copy(_)) {
                    Some(get_tags(&c, &bucket, &o.key).await?)
                } else {
                    None
                };
                let (clone_key, clone_etag, cloned, (sha256, from)) = match plan {
                    Plan::Reuse(p) => {
                        st.reused += 1;
                        return Ok((ObjectEntry { tags, ..p }, st));
                    }
                    Plan::Adopt(key) => {
                        st.reused += 1;
                        let cl = &clones[&key];
                        let sha = object_sha256(&c, &clone_bucket, &key, &cl.etag, cl.size).await?;
                        (key, cl.etag.clone(), cl.modified, sha)
                    }
                    Plan::Copy(key) => {
                        let copied =
                            copy_object(&c, &bucket, &o.key, &o.etag, o.size, None, &clone_bucket, &key).await?;
                        st.copied += 1;
                        st.copied_bytes += o.size;
                        let sha = match copied.sha256 {
                            Some(s) => (s, "server"),
                            None => object_sha256(&c, &clone_bucket, &key, &copied.etag, o.size).await?,
                        };
                        (key, copied.etag, copied.modified, sha)
                    }
                };
                if from == "server" {
                    st.server_checksums += 1;
                } else {
                    st.hashed += 1;
                }
                Ok((
                    ObjectEntry {
                        key: o.key,
                        size: o.size,
                        etag: o.etag,
                        modified: o.modified,
                        sha256,
                        sha256_from: from.to_string(),
                        tags,
                        clone_key,
                        clone_etag,
                        cloned,
                    },
                    st,
                ))
            }
        })
        .await?;
        let mut total = Stats::default();
        let mut entries = Vec::with_capacity(results.len());
        for (e, st) in results {
            total.copied += st.copied;
            total.copied_bytes += st.copied_bytes;
            total.reused += st.reused;
            total.hashed += st.hashed;
            total.server_checksums += st.server_checksums;
            entries.push(e);
        }
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        Ok((entries, total))
    }

    /// SHA-256 of live objects, reusing what listings already told us for unchanged ones.
    async fn live_hashes(&self, c: &Client, live: Vec<Listed>) -> Result<Vec<(String, String)>> {
        let known = Arc::new(self.known.lock().expect("known").clone());
        let bucket = self.s3.bucket.clone();
        let mut out = bounded(live, concurrency(), move |o: Listed| {
            let (c, known, bucket) = (c.clone(), Arc::clone(&known), bucket.clone());
            async move {
                if let Some(s) = known.get(&(o.key.clone(), o.etag.clone(), o.size)) {
                    return Ok((o.key, s.clone()));
                }
                let (sha, _) = object_sha256(&c, &bucket, &o.key, &o.etag, o.size).await?;
                Ok((o.key, sha))
            }
        })
        .await?;
        out.sort();
        Ok(out)
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

    fn restore(&self, rec: &TargetRecord, store: &dyn Store) -> Result<()> {
        if rec.absent {
            bail!(
                "target {}: bucket {} did not exist when the snapshot was taken; guard does not delete buckets",
                rec.name,
                self.s3.bucket
            );
        }
        let entries = Arc::new(self.read_listing(rec, store)?);
        let a = rec.artifacts.first().expect("read_listing checked");
        let c = self.client();
        let s3 = self.s3.clone();
        let listing = Arc::clone(&entries);
        let exact = exact_tags(rec);
        let confirmed = wait(async move {
            // Every clone must be there before anything live is touched.
            let clone_prefix = rec.meta.get("clone_prefix").cloned().unwrap_or_default();
            let clones: HashMap<String, (u64, String)> = list_all(&c, &s3.clone_bucket, &clone_prefix)
                .await?
                .into_iter()
                .map(|l| (l.key, (l.size, l.etag)))
                .collect();
            let missing: Vec<String> = entries
                .iter()
                .filter(|e| clones.get(&e.clone_key).map(|(n, _)| *n != e.size).unwrap_or(true))
                .map(|e| format!("s3://{}/{}", s3.clone_bucket, e.clone_key))
                .collect();
            if !missing.is_empty() {
                bail!(
                    "{} clone object(s) missing or replaced, nothing was changed: {}",
                    missing.len(),
                    missing.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
                );
            }
            let live = list_all(&c, &s3.bucket, &s3.prefix).await?;
            let live_map: HashMap<&str, &Listed> = live.iter().map(|l| (l.key.as_str(), l)).collect();
            let wanted: HashSet<&str> = entries.iter().map(|e| e.key.as_str()).collect();
            // Same key, size, ETag and Last-Modified as a settled entry: the object's bytes and
            // metadata are the snapshot's and it is left alone (its tag set is put back when
            // the snapshot read it). Everything else is copied back from its clone.
            let (same, put_back): (Vec<ObjectEntry>, Vec<ObjectEntry>) = entries
                .iter()
                .cloned()
                .partition(|e| e.settled() && live_map.get(e.key.as_str()).is_some_and(|l| e.same_object(l)));
            let (c2, b2) = (c.clone(), s3.bucket.clone());
            let tagged: Vec<ObjectEntry> = same.into_iter().filter(|e| exact || e.tags.is_some()).collect();
            let cb = s3.clone_bucket.clone();
            bounded(tagged, concurrency(), move |e: ObjectEntry| {
                let (c, b, cb) = (c2.clone(), b2.clone(), cb.clone());
                async move {
                    let want = snapshot_tags(&c, &cb, &e, exact).await?.expect("exact or recorded");
                    if get_tags(&c, &b, &e.key).await? != want {
                        set_tags(&c, &b, &e.key, &want).await?;
                    }
                    Ok(())
                }
            })
            .await?;
            let (c2, s2) = (c.clone(), s3.clone());
            let put_back: HashMap<String, Attrs> = bounded(put_back, concurrency(), move |e: ObjectEntry| {
                let (c, s3) = (c2.clone(), s2.clone());
                async move {
                    // The clone carries the object's content-type and metadata (and its tags,
                    // unless the snapshot read them itself).
                    let (mut attrs, _, _, _) =
                        read_attrs(&c, &s3.clone_bucket, &e.clone_key, Some(&e.clone_etag)).await?;
                    if let Some(t) = &e.tags {
                        attrs.tags = t.clone();
                    }
                    let copied = copy_object(
                        &c,
                        &s3.clone_bucket,
                        &e.clone_key,
                        &e.clone_etag,
                        e.size,
                        Some(&attrs),
                        &s3.bucket,
                        &e.key,
                    )
                    .await?;
                    if let Some(sha) = copied.sha256 {
                        if sha != e.sha256 {
                            bail!(
                                "s3://{}/{}: the restored copy's SHA-256 {sha} is not the snapshot's {}",
                                s3.bucket,
                                e.key,
                                e.sha256
                            );
                        }
                    }
                    // Set the tag set explicitly: some servers keep an overwritten key's old
                    // tags when the copy brings none.
                    set_tags(&c, &s3.bucket, &e.key, &attrs.tags).await?;
                    Ok((e.key, attrs))
                }
            })
            .await?
            .into_iter()
            .collect();
            let extra: Vec<String> = live
                .iter()
                .filter(|l| !wanted.contains(l.key.as_str()))
                .map(|l| l.key.clone())
                .collect();
            delete_keys(&c, &s3.bucket, &extra, "object(s) created since the snapshot").await?;
            Ok(put_back)
        })
        .with_context(|| format!("restoring {}", self.where_()))?;
        self.restored
            .lock()
            .expect("restored")
            .insert(a.sha256.clone(), (listing, confirmed));
        Ok(())
    }

    fn verify_restored(&self, rec: &TargetRecord) -> Result<()> {
        let a = rec
            .artifacts
            .first()
            .ok_or_else(|| anyhow!("snapshot of {} has no listing artifact", rec.name))?;
        let (entries, put_back) = self
            .restored
            .lock()
            .expect("restored")
            .get(&a.sha256)
            .cloned()
            .ok_or_else(|| {
                anyhow!(
                    "target {}: the snapshot's listing was not read; restore first",
                    rec.name
                )
            })?;
        let c = self.client();
        let s3 = self.s3.clone();
        let exact = exact_tags(rec);
        wait(async move {
            let live = list_all(&c, &s3.bucket, &s3.prefix).await?;
            let live_map: HashMap<String, Listed> = live.into_iter().map(|l| (l.key.clone(), l)).collect();
            let mut diffs = Vec::new();
            let wanted: HashSet<&str> = entries.iter().map(|e| e.key.as_str()).collect();
            for k in live_map.keys() {
                if !wanted.contains(k.as_str()) {
                    diffs.push(format!("{k}: not in the snapshot"));
                }
            }
            // What each object must be now: a put-back object its clone's attributes and the
            // snapshot's content; a left-alone one its snapshot identity (and tag set).
            let mut to_check = Vec::new();
            for e in entries.iter() {
                match live_map.get(&e.key) {
                    None => diffs.push(format!("{}: missing", e.key)),
                    Some(l) if l.size != e.size => {
                        diffs.push(format!("{}: {} bytes, snapshot has {}", e.key, l.size, e.size))
                    }
                    Some(l) => match put_back.get(&e.key) {
                        Some(attrs) => to_check.push((e.clone(), l.etag.clone(), Some(attrs.clone()))),
                        None if !e.same_object(l) => {
                            diffs.push(format!("{}: changed since the restore left it alone", e.key))
                        }
                        None if exact || e.tags.is_some() => to_check.push((e.clone(), l.etag.clone(), None)),
                        None => {}
                    },
                }
            }
            let (b, cb) = (s3.bucket.clone(), s3.clone_bucket.clone());
            type Check = (ObjectEntry, String, Option<Attrs>);
            let found = bounded(to_check, concurrency(), move |(e, live_etag, want): Check| {
                let (c, b, cb) = (c.clone(), b.clone(), cb.clone());
                async move {
                    let mut d = Vec::new();
                    let Some(want) = want else {
                        if Some(get_tags(&c, &b, &e.key).await?) != snapshot_tags(&c, &cb, &e, exact).await? {
                            d.push(format!("{}: tags differ", e.key));
                        }
                        return Ok(d);
                    };
                    let (attrs, server, _, _) = read_attrs(&c, &b, &e.key, Some(&live_etag)).await?;
                    if live_etag != e.etag {
                        let sha = match server {
                            Some(s) => s,
                            None => object_sha256(&c, &b, &e.key, &live_etag, e.size).await?.0,
                        };
                        if sha != e.sha256 {
                            d.push(format!("{}: content differs (SHA-256)", e.key));
                        }
                    }
                    if attrs != want {
                        d.push(format!("{}: content-type, metadata or tags differ", e.key));
                    }
                    Ok(d)
                }
            })
            .await?;
            diffs.extend(found.into_iter().flatten());
            diffs.sort();
            summarize(diffs)
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_and_server_checksums() {
        // SHA-256 of "hello", as S3 would return it.
        let b64 = "LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ=";
        assert_eq!(
            server_sha256(Some(b64)).unwrap(),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(
            server_sha256(Some("abc-3")),
            None,
            "composite checksums are not content hashes"
        );
        assert_eq!(server_sha256(None), None);
    }

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
    fn copy_source_keys_are_encoded() {
        assert_eq!(encode_key("a b/ü+c.jpg"), "a%20b/%C3%BC%2Bc.jpg");
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
