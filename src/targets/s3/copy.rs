//! Server-side copies: one object (CopyObject, or UploadPartCopy above the multipart threshold),
//! every object of a snapshot into the clone bucket, tags, deletes, and the bounded concurrency they
//! run under.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};
use aws_sdk_s3::types::{
    ChecksumAlgorithm, ChecksumMode, CompletedPart, Delete, MetadataDirective, ObjectIdentifier, Tag, Tagging,
    TaggingDirective,
};
use aws_sdk_s3::Client;
use sha2::{Digest as _, Sha256};

use super::listing::{list_all, plan, Attrs, Listed, ObjectEntry, Plan};
use super::wire::{encode_key, form_encode, is_raced, read_error, server_sha256, unquote, Raced};
use super::S3Tags;
use super::{S3Target, Stats};
use crate::aws::{complete_multipart, sdk_error, status_of};

/// Objects larger than this are copied with multipart UploadPartCopy (CopyObject stops at 5 GiB).
pub(super) const DEFAULT_MULTIPART_THRESHOLD: u64 = 5 << 30;

/// Part size of multipart copies.
pub(super) const DEFAULT_PART_SIZE: u64 = 512 << 20;

/// Requests in flight at once.
pub(super) const DEFAULT_CONCURRENCY: usize = 16;

pub(super) fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|s| s.trim().parse().ok())
}

pub(super) fn multipart_threshold() -> u64 {
    env_u64("GUARD_S3_MULTIPART_THRESHOLD")
        .unwrap_or(DEFAULT_MULTIPART_THRESHOLD)
        .min(DEFAULT_MULTIPART_THRESHOLD)
}

pub(super) fn part_size() -> u64 {
    env_u64("GUARD_S3_PART_SIZE").unwrap_or(DEFAULT_PART_SIZE).max(5 << 20)
}

pub(super) fn concurrency() -> usize {
    env_u64("GUARD_S3_CONCURRENCY")
        .map(|n| n as usize)
        .unwrap_or(DEFAULT_CONCURRENCY)
        .clamp(1, 256)
}

/// Run `f` over `items` with at most `limit` in flight; the first error stops the rest.
pub(super) async fn bounded<I, T, F, Fut>(items: Vec<I>, limit: usize, f: F) -> Result<Vec<T>>
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

/// What [`bounded_each`] did.
pub(super) struct Each<T> {
    pub(super) done: Vec<T>,
    /// Items that failed on their own, by key.
    pub(super) failed: Vec<(String, anyhow::Error)>,
    /// The server stopped answering ([`crate::aws::unavailable`]): that error, and the keys of
    /// the items not done or not confirmed (not started, or in flight when it stopped).
    pub(super) stopped: Option<(anyhow::Error, Vec<String>)>,
}

/// Run `f` over `items` with at most `limit` in flight, each on its own: an item's failure is
/// recorded under its `key` and the others go on — unless the server stopped answering, which
/// stops everything at once (asking it about each remaining item would only wait out every
/// timeout again).
pub(super) async fn bounded_each<I, T, F, Fut>(items: Vec<I>, limit: usize, key: fn(&I) -> String, f: F) -> Each<T>
where
    I: Send + 'static,
    T: Send + 'static,
    F: Fn(I) -> Fut,
    Fut: Future<Output = Result<T>> + Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    let mut in_flight: HashMap<tokio::task::Id, String> = HashMap::new();
    let mut out = Each {
        done: Vec::new(),
        failed: Vec::new(),
        stopped: None,
    };
    let mut not_started = Vec::new();
    let mut it = items.into_iter();
    loop {
        while out.stopped.is_none() && set.len() < limit {
            let Some(i) = it.next() else { break };
            let k = key(&i);
            let h = set.spawn(f(i));
            in_flight.insert(h.id(), k);
        }
        match set.join_next_with_id().await {
            None => break,
            Some(Ok((id, Ok(t)))) => {
                in_flight.remove(&id);
                out.done.push(t);
            }
            Some(Ok((id, Err(e)))) if crate::aws::unavailable(&e) => {
                if out.stopped.is_none() {
                    set.abort_all();
                    not_started.extend(it.by_ref().map(|i| key(&i)));
                    out.stopped = Some((e, Vec::new()));
                }
                let _ = id; // stays in `in_flight`: not confirmed
            }
            Some(Ok((id, Err(e)))) => {
                if let Some(k) = in_flight.remove(&id) {
                    out.failed.push((k, e));
                }
            }
            Some(Err(e)) if e.is_cancelled() => {}
            Some(Err(e)) => {
                if let Some(k) = in_flight.remove(&e.id()) {
                    out.failed.push((k, anyhow!("an S3 task failed: {e}")));
                }
            }
        }
    }
    if let Some((_, rest)) = &mut out.stopped {
        rest.extend(in_flight.into_values());
        rest.extend(not_started);
        rest.sort();
    }
    out
}

/// Attributes and (when given) the server's SHA-256 of `bucket/key`, pinned to `etag`.
pub(super) async fn read_attrs(
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
pub(super) async fn get_tags(c: &Client, bucket: &str, key: &str) -> Result<BTreeMap<String, String>> {
    let t = c
        .get_object_tagging()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| {
            if status_of(&e) == Some(404) {
                anyhow::Error::new(Raced(format!("s3://{bucket}/{key} no longer exists")))
            } else {
                sdk_error(format!("reading the tags of s3://{bucket}/{key}"), e)
            }
        })?;
    Ok(t.tag_set()
        .iter()
        .map(|t| (t.key().to_string(), t.value().to_string()))
        .collect())
}

/// The tag set object `e` had when its snapshot was taken, if the snapshot knows it: recorded
/// in the listing, or (`exact`: the snapshot copied the object and did not read its tags) the
/// clone's, which the copy took from the object at that moment.
pub(super) async fn snapshot_tags(
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
pub(super) async fn object_sha256(
    c: &Client,
    bucket: &str,
    key: &str,
    etag: &str,
    size: u64,
) -> Result<(String, &'static str)> {
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

/// What a server-side copy made.
pub(super) struct Copied {
    pub(super) etag: String,
    /// Last-Modified of the copy, Unix seconds.
    pub(super) modified: i64,
    /// SHA-256 (hex) of the copy, when the server computed it.
    pub(super) sha256: Option<String>,
}

/// Server-side copy `src_bucket/src_key` (pinned to `src_etag`) to `dst_bucket/dst_key`,
/// keeping content-type, metadata and tags, and asking the server for the copy's SHA-256.
/// `attrs` are needed only above the multipart threshold (UploadPartCopy does not carry them):
/// they are read from the source when not given.
#[allow(clippy::too_many_arguments)]
pub(super) async fn copy_object(
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
    let raced = |status: Option<u16>| {
        match status {
        Some(412) => Some(anyhow::Error::new(Raced(format!(
            "s3://{src_bucket}/{src_key} changed while guard was copying it (stop writers with a `before` hook and retry)"
        )))),
        Some(404) => Some(anyhow::Error::new(Raced(format!(
            "s3://{src_bucket}/{src_key} no longer exists"
        )))),
        _ => None,
    }
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
            .map_err(|e| raced(status_of(&e)).unwrap_or_else(|| sdk_error(what(), e)))?;
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
                .map_err(|e| raced(status_of(&e)).unwrap_or_else(|| sdk_error(format!("{} (part {n})", what()), e)))?;
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

/// Delete `batch` (at most 1,000 keys) from `bucket` with one DeleteObjects request; returns
/// the keys the server refused, with why.
async fn delete_batch(c: &Client, bucket: &str, batch: &[String], what: &str) -> Result<Vec<(String, String)>> {
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
    Ok(r.errors()
        .iter()
        .map(|err| {
            (
                err.key().unwrap_or("?").to_string(),
                format!(
                    "deleting s3://{bucket}/{} failed: {} {}",
                    err.key().unwrap_or("?"),
                    err.code().unwrap_or(""),
                    err.message().unwrap_or("")
                ),
            )
        })
        .collect())
}

/// Delete `keys` from `bucket` with DeleteObjects, 1,000 keys a request; `what` names them in
/// errors. The first key the server refuses fails the call.
pub(super) async fn delete_keys(c: &Client, bucket: &str, keys: &[String], what: &str) -> Result<()> {
    for batch in keys.chunks(1000) {
        if let Some((_, why)) = delete_batch(c, bucket, batch, what).await?.into_iter().next() {
            bail!("{why}");
        }
    }
    Ok(())
}

/// Delete `keys` from `bucket` (objects created since a snapshot), each key on its own: the keys
/// the server refuses are recorded and the rest still deleted; a server that stops answering
/// stops the rest.
pub(super) async fn delete_keys_each(c: &Client, bucket: &str, keys: &[String]) -> Each<String> {
    let mut out = Each {
        done: Vec::new(),
        failed: Vec::new(),
        stopped: None,
    };
    for (i, batch) in keys.chunks(1000).enumerate() {
        match delete_batch(c, bucket, batch, "object(s) created since the snapshot").await {
            Ok(refused) => {
                let bad: HashSet<&str> = refused.iter().map(|(k, _)| k.as_str()).collect();
                out.done
                    .extend(batch.iter().filter(|k| !bad.contains(k.as_str())).cloned());
                out.failed
                    .extend(refused.into_iter().map(|(k, why)| (k, anyhow!("{why}"))));
            }
            Err(e) if crate::aws::unavailable(&e) => {
                out.stopped = Some((e, keys[i * 1000..].to_vec()));
                break;
            }
            Err(e) => {
                let why = format!("{e:#}");
                out.failed.extend(batch.iter().map(|k| (k.clone(), anyhow!("{why}"))));
            }
        }
    }
    out
}

/// Make the tag set of `bucket/key` exactly `tags`.
pub(super) async fn set_tags(c: &Client, bucket: &str, key: &str, tags: &BTreeMap<String, String>) -> Result<()> {
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

/// Source listings a snapshot may take before it gives up on objects that keep changing: the
/// first, then one after each round of copies.
pub(super) const MAX_LISTINGS: u64 = 5;

/// What a snapshot shares between the copies of one round.
struct CloneCtx {
    c: Client,
    bucket: String,
    clone_bucket: String,
    clone_prefix: String,
    snapshot_id: String,
    exact_tags: bool,
    /// The clone prefix as listed when the snapshot started.
    clones: HashMap<String, Listed>,
    /// The previous snapshot's entries, by key.
    prev: HashMap<String, ObjectEntry>,
    /// Clone keys this snapshot wrote (so none is written twice).
    made: Mutex<HashSet<String>>,
}

impl CloneCtx {
    /// `key`, or (when a clone is listed there or this snapshot wrote it) a key of this
    /// snapshot's own beside it.
    fn claim(&self, key: String) -> String {
        let mut made = self.made.lock().expect("made");
        let mut k = key.clone();
        let mut n = 1;
        while self.clones.contains_key(&k) || made.contains(&k) {
            k = if n == 1 {
                format!("{key}-{}", self.snapshot_id)
            } else {
                format!("{key}-{}-{n}", self.snapshot_id)
            };
            n += 1;
        }
        made.insert(k.clone());
        k
    }
}

/// What one object's turn in a round gave.
enum Cloned {
    Entry(Box<ObjectEntry>, Stats),
    /// The object changed (or went) between its listing and its copy; the next listing decides.
    Raced(Stats),
}

/// Whether a server-side copy holds the listed version `o` of its source: the copy's ETag is
/// the listed one (a copy keeps a single-part object's MD5 ETag), or — where ETags of a copy
/// and its source differ by design (a multipart source, KMS encryption) — the source still
/// shows exactly the listed ETag, size and Last-Modified after the copy, so no write reached it
/// in between. Where the SHA-256 of the listed version is known (an earlier snapshot recorded
/// it) the copy's, when the server returned it, must be that too. `bucket/key` is the source.
async fn copy_matches(
    c: &Client,
    bucket: &str,
    o: &Listed,
    copied: &Copied,
    known_sha256: Option<&str>,
) -> Result<bool> {
    if let (Some(got), Some(want)) = (copied.sha256.as_deref(), known_sha256) {
        if got != want {
            return Ok(false);
        }
    }
    if copied.etag == o.etag {
        return Ok(true);
    }
    match c.head_object().bucket(bucket).key(&o.key).send().await {
        Ok(h) => Ok(unquote(h.e_tag().unwrap_or_default()) == o.etag
            && h.content_length().unwrap_or(-1) == o.size as i64
            && h.last_modified().map(|t| t.secs()) == Some(o.modified)),
        Err(e) if status_of(&e) == Some(404) => Ok(false),
        Err(e) => Err(read_error(bucket, &o.key, e)),
    }
}

/// One object's turn: reuse, adopt or copy its clone; a copy is checked against the listing.
async fn clone_one(cx: Arc<CloneCtx>, o: Listed) -> Result<Cloned> {
    let c = &cx.c;
    let mut st = Stats::default();
    let key_hash = hex::encode(Sha256::digest(o.key.as_bytes()));
    let base = format!(
        "{}{}/{}-{}-{}",
        cx.clone_prefix,
        &key_hash[..32],
        o.etag,
        o.size,
        o.modified
    );
    let prev = cx.prev.get(&o.key);
    let plan = plan(&o, prev, &cx.clones, base, &cx.snapshot_id);
    // With exact tags, an object copied now needs no read: the copy carries the tag set it has
    // at this moment (TaggingDirective COPY), so the listing leaves `tags` out and restore takes
    // them from the clone. A reused clone may carry older tags: read the object's current set.
    let tags = if cx.exact_tags && !matches!(plan, Plan::Copy(_)) {
        match get_tags(c, &cx.bucket, &o.key).await {
            Ok(t) => Some(t),
            Err(e) if is_raced(&e) => return Ok(Cloned::Raced(st)),
            Err(e) => return Err(e),
        }
    } else {
        None
    };
    let (clone_key, clone_etag, cloned, (sha256, from)) = match plan {
        Plan::Reuse(p) => {
            st.reused += 1;
            return Ok(Cloned::Entry(Box::new(ObjectEntry { tags, ..p }), st));
        }
        Plan::Adopt(key) => {
            st.reused += 1;
            let cl = &cx.clones[&key];
            let sha = object_sha256(c, &cx.clone_bucket, &key, &cl.etag, cl.size).await?;
            (key, cl.etag.clone(), cl.modified, sha)
        }
        Plan::Copy(key) => {
            let key = cx.claim(key);
            let copied = match copy_object(c, &cx.bucket, &o.key, &o.etag, o.size, None, &cx.clone_bucket, &key).await {
                Ok(x) => x,
                Err(e) if is_raced(&e) => return Ok(Cloned::Raced(st)),
                Err(e) => return Err(e),
            };
            st.copied += 1;
            st.copied_bytes += o.size;
            let known = prev
                .filter(|p| p.etag == o.etag && p.size == o.size)
                .map(|p| p.sha256.as_str());
            if !copy_matches(c, &cx.bucket, &o, &copied, known).await? {
                st.copy_mismatches += 1;
                return Ok(Cloned::Raced(st));
            }
            let sha = match copied.sha256 {
                Some(s) => (s, "server"),
                None => object_sha256(c, &cx.clone_bucket, &key, &copied.etag, o.size).await?,
            };
            (key, copied.etag, copied.modified, sha)
        }
    };
    if from == "server" {
        st.server_checksums += 1;
    } else {
        st.hashed += 1;
    }
    Ok(Cloned::Entry(
        Box::new(ObjectEntry {
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
        }),
        st,
    ))
}

impl S3Target {
    /// Clone every object that has no usable clone yet; returns the listing and what it cost.
    ///
    /// The snapshot is the bucket as one listing shows it: after a round of copies the source is
    /// listed again, and every object whose key, size, ETag or Last-Modified differ from its
    /// entry (or that is new, or whose copy did not match its listing) gets another round;
    /// objects gone since are dropped. When a listing shows nothing new the snapshot is that
    /// listing, every clone proven to be the listed version. After [`MAX_LISTINGS`] listings
    /// that still differ, the snapshot fails naming the objects that kept changing.
    pub(super) async fn clone_all(
        &self,
        c: Client,
        clone_prefix: String,
        snapshot_id: String,
        previous: Vec<ObjectEntry>,
    ) -> Result<(Vec<ObjectEntry>, Stats)> {
        let s3 = &self.s3;
        let mut todo = list_all(&c, &s3.bucket, &s3.prefix).await?;
        crate::faults::test_pause("s3-listed");
        let clones: HashMap<String, Listed> = list_all(&c, &s3.clone_bucket, &clone_prefix)
            .await?
            .into_iter()
            .map(|l| (l.key.clone(), l))
            .collect();
        let cx = Arc::new(CloneCtx {
            c: c.clone(),
            bucket: s3.bucket.clone(),
            clone_bucket: s3.clone_bucket.clone(),
            clone_prefix,
            snapshot_id,
            exact_tags: s3.tags == S3Tags::Exact,
            clones,
            prev: previous.into_iter().map(|e| (e.key.clone(), e)).collect(),
            made: Mutex::new(HashSet::new()),
        });
        let mut entries: HashMap<String, ObjectEntry> = HashMap::new();
        let mut total = Stats {
            listings: 1,
            ..Default::default()
        };
        let result = async {
            loop {
                let round = bounded(todo, concurrency(), {
                    let cx = Arc::clone(&cx);
                    move |o: Listed| clone_one(Arc::clone(&cx), o)
                })
                .await?;
                for r in round {
                    let st = match r {
                        Cloned::Entry(e, st) => {
                            entries.insert(e.key.clone(), *e);
                            st
                        }
                        Cloned::Raced(st) => st,
                    };
                    if total.listings > 1 {
                        total.recopied += st.copied;
                    }
                    total.add(&st);
                }
                let now = list_all(&c, &s3.bucket, &s3.prefix).await?;
                total.listings += 1;
                crate::faults::test_pause("s3-listed");
                let live: HashSet<&str> = now.iter().map(|o| o.key.as_str()).collect();
                entries.retain(|k, _| live.contains(k.as_str()));
                let changed: Vec<Listed> = now
                    .iter()
                    .filter(|o| !entries.get(&o.key).is_some_and(|e| e.same_object(o)))
                    .cloned()
                    .collect();
                if changed.is_empty() {
                    return Ok(());
                }
                if total.listings >= MAX_LISTINGS {
                    let n = changed.len();
                    let shown: Vec<&str> = changed.iter().take(10).map(|o| o.key.as_str()).collect();
                    bail!(
                        "{n} object(s) under s3://{}/{} kept changing while guard copied them ({} listings, each differing from the copies before it): {}{}; stop writers with a `before` hook and retry",
                        s3.bucket,
                        s3.prefix,
                        total.listings,
                        shown.join(", "),
                        if n > 10 { ", …" } else { "" }
                    );
                }
                todo = changed;
            }
        }
        .await;
        // Clones this snapshot wrote that its listing does not name (copies that did not match
        // their listing, versions superseded by a later round) hold nothing anyone needs.
        let named: HashSet<&str> = entries.values().map(|e| e.clone_key.as_str()).collect();
        let stray: Vec<String> = cx
            .made
            .lock()
            .expect("made")
            .iter()
            .filter(|k| !named.contains(k.as_str()))
            .cloned()
            .collect();
        if result.is_ok() && !stray.is_empty() {
            if let Err(e) = delete_keys(&c, &s3.clone_bucket, &stray, "stray clone(s)").await {
                crate::errln!(
                    "guard: warning: {}: could not delete {} clone(s) that no snapshot uses: {e:#}",
                    self.spec.name,
                    stray.len()
                );
            }
        }
        result?;
        let mut entries: Vec<ObjectEntry> = entries.into_values().collect();
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        Ok((entries, total))
    }

    /// SHA-256 of live objects, reusing what listings already told us for unchanged ones.
    pub(super) async fn live_hashes(&self, c: &Client, live: Vec<Listed>) -> Result<Vec<(String, String)>> {
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
}
