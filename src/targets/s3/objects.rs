//! Requests about one object, or a batch of keys: attributes, tags, SHA-256, deletes.

use std::collections::{BTreeMap, HashSet};

use anyhow::{anyhow, bail, Result};
use aws_sdk_s3::types::{ChecksumMode, Delete, ObjectIdentifier, Tag, Tagging};
use aws_sdk_s3::Client;
use sha2::{Digest as _, Sha256};

use super::listing::{Attrs, ObjectEntry};
use super::tasks::Each;
use super::wire::{read_error, server_sha256, unquote, Raced};
use crate::aws::{sdk_error, status_of};

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
