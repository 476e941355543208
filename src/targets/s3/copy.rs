//! Server-side copy of one object: CopyObject, or UploadPartCopy above the multipart threshold
//! (which carries neither attributes nor tags, so they are set on the upload).

use anyhow::{anyhow, Context, Result};
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedPart, MetadataDirective, TaggingDirective};
use aws_sdk_s3::Client;

use super::listing::Attrs;
use super::objects::read_attrs;
use super::tasks::{multipart_threshold, part_size};
use super::wire::{encode_key, form_encode, read_error, server_sha256, unquote, Raced};
use crate::aws::{complete_multipart, sdk_error, status_of, Sse};

/// What a server-side copy made.
pub(super) struct Copied {
    pub(super) etag: String,
    /// Last-Modified of the copy, Unix seconds.
    pub(super) modified: i64,
    /// SHA-256 (hex) of the copy, when the server computed it.
    pub(super) sha256: Option<String>,
}

/// One server-side copy: `src_bucket/src_key`, pinned to `src_etag`, to `dst_bucket/dst_key`.
pub(super) struct CopyReq<'a> {
    pub(super) src_bucket: &'a str,
    pub(super) src_key: &'a str,
    pub(super) src_etag: &'a str,
    pub(super) size: u64,
    /// The source's attributes, when the caller has them (needed above the multipart
    /// threshold, where UploadPartCopy does not carry them; read from the source otherwise).
    pub(super) attrs: Option<&'a Attrs>,
    pub(super) dst_bucket: &'a str,
    pub(super) dst_key: &'a str,
    /// Server-side encryption to ask for (and check) on the copy.
    pub(super) sse: Option<&'a Sse>,
}

impl CopyReq<'_> {
    fn source(&self) -> String {
        format!("{}/{}", self.src_bucket, encode_key(self.src_key))
    }

    fn what(&self) -> String {
        format!(
            "copying s3://{}/{} to s3://{}/{}",
            self.src_bucket, self.src_key, self.dst_bucket, self.dst_key
        )
    }

    /// The source changed (412: its ETag is no longer the pinned one) or went (404) while it was
    /// copied: a race the caller resolves, not a failure.
    fn raced(&self, status: Option<u16>) -> Option<anyhow::Error> {
        let (b, k) = (self.src_bucket, self.src_key);
        match status {
            Some(412) => Some(anyhow::Error::new(Raced(format!(
                "s3://{b}/{k} changed while guard was copying it (stop writers with a `before` hook and retry)"
            )))),
            Some(404) => Some(anyhow::Error::new(Raced(format!("s3://{b}/{k} no longer exists")))),
            _ => None,
        }
    }
}

/// Server-side copy as `req` says, keeping content-type, metadata and tags, and asking the
/// server for the copy's SHA-256.
pub(super) async fn copy_object(c: &Client, req: &CopyReq<'_>) -> Result<Copied> {
    if req.size <= multipart_threshold() {
        return copy_single(c, req).await;
    }
    // Multipart: the attributes do not come along by themselves.
    let read;
    let attrs = match req.attrs {
        Some(a) => a,
        None => {
            read = read_attrs(c, req.src_bucket, req.src_key, Some(req.src_etag)).await?.0;
            &read
        }
    };
    let id = start_multipart(c, req, attrs).await?;
    let result = copy_parts(c, req, &id).await;
    let result = match result {
        Ok((copied, sse)) => encrypted(c, req, sse.as_ref(), copied).await,
        Err(e) => Err(e),
    };
    if result.is_err() {
        let _ = c
            .abort_multipart_upload()
            .bucket(req.dst_bucket)
            .key(req.dst_key)
            .upload_id(&id)
            .send()
            .await;
    }
    result
}

/// One CopyObject request.
async fn copy_single(c: &Client, req: &CopyReq<'_>) -> Result<Copied> {
    let r = c
        .copy_object()
        .bucket(req.dst_bucket)
        .key(req.dst_key)
        .copy_source(req.source())
        .copy_source_if_match(format!("\"{}\"", req.src_etag))
        .metadata_directive(MetadataDirective::Copy)
        .tagging_directive(TaggingDirective::Copy)
        .checksum_algorithm(ChecksumAlgorithm::Sha256)
        .set_server_side_encryption(Sse::header_of(req.sse))
        .set_ssekms_key_id(Sse::key_of(req.sse))
        .send()
        .await
        .map_err(|e| req.raced(status_of(&e)).unwrap_or_else(|| sdk_error(req.what(), e)))?;
    let sse = r.server_side_encryption().cloned();
    let r = r.copy_object_result();
    let copied = Copied {
        etag: r.and_then(|x| x.e_tag()).map(unquote).unwrap_or_default(),
        modified: r.and_then(|x| x.last_modified()).map(|t| t.secs()).unwrap_or(0),
        sha256: server_sha256(r.and_then(|x| x.checksum_sha256())),
    };
    encrypted(c, req, sse.as_ref(), copied).await
}

/// `copied` when the server reports the encryption `req` asked for; otherwise the copy is
/// deleted (no unencrypted copy stays behind) and the copy fails.
async fn encrypted(
    c: &Client,
    req: &CopyReq<'_>,
    got: Option<&aws_sdk_s3::types::ServerSideEncryption>,
    copied: Copied,
) -> Result<Copied> {
    let shown = format!("s3://{}/{}", req.dst_bucket, req.dst_key);
    if let Err(e) = Sse::check(req.sse, got, &shown) {
        let _ = c.delete_object().bucket(req.dst_bucket).key(req.dst_key).send().await;
        return Err(e);
    }
    Ok(copied)
}

/// Start the multipart upload of a copy, with the source's attributes and tags (so the object
/// never exists without them); its upload id.
async fn start_multipart(c: &Client, req: &CopyReq<'_>, attrs: &Attrs) -> Result<String> {
    let up = c
        .create_multipart_upload()
        .bucket(req.dst_bucket)
        .key(req.dst_key)
        .set_content_type(attrs.content_type.clone())
        .set_content_encoding(attrs.content_encoding.clone())
        .set_cache_control(attrs.cache_control.clone())
        .set_content_disposition(attrs.content_disposition.clone())
        .set_content_language(attrs.content_language.clone())
        .set_server_side_encryption(Sse::header_of(req.sse))
        .set_ssekms_key_id(Sse::key_of(req.sse))
        .set_metadata(if attrs.metadata.is_empty() {
            None
        } else {
            Some(attrs.metadata.clone().into_iter().collect())
        })
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
        .map_err(|e| sdk_error(req.what(), e))?;
    Ok(up
        .upload_id()
        .ok_or_else(|| anyhow!("{}: no upload id", req.what()))?
        .to_string())
}

/// Copy the parts of upload `id` (each pinned to the source's ETag), complete it, and read the
/// result's Last-Modified and encryption.
async fn copy_parts(
    c: &Client,
    req: &CopyReq<'_>,
    id: &str,
) -> Result<(Copied, Option<aws_sdk_s3::types::ServerSideEncryption>)> {
    let (size, ps) = (req.size, part_size());
    let mut parts = Vec::new();
    let mut start = 0u64;
    let mut n = 1;
    while start < size {
        let end = (start + ps).min(size) - 1;
        let r = c
            .upload_part_copy()
            .bucket(req.dst_bucket)
            .key(req.dst_key)
            .upload_id(id)
            .part_number(n)
            .copy_source(req.source())
            .copy_source_range(format!("bytes={start}-{end}"))
            .copy_source_if_match(format!("\"{}\"", req.src_etag))
            .send()
            .await
            .map_err(|e| {
                req.raced(status_of(&e))
                    .unwrap_or_else(|| sdk_error(format!("{} (part {n})", req.what()), e))
            })?;
        let etag = r.copy_part_result().and_then(|p| p.e_tag()).map(str::to_string);
        parts.push(CompletedPart::builder().part_number(n).set_e_tag(etag).build());
        start = end + 1;
        n += 1;
    }
    let etag = complete_multipart(c, req.dst_bucket, req.dst_key, id, parts, size)
        .await
        .with_context(|| req.what())?;
    let etag = unquote(&etag);
    let h = c
        .head_object()
        .bucket(req.dst_bucket)
        .key(req.dst_key)
        .if_match(format!("\"{etag}\""))
        .send()
        .await
        .map_err(|e| read_error(req.dst_bucket, req.dst_key, e))?;
    Ok((
        Copied {
            etag,
            modified: h.last_modified().map(|t| t.secs()).unwrap_or(0),
            sha256: None,
        },
        h.server_side_encryption().cloned(),
    ))
}
