//! The keys of a `kind = "s3"` target.

use anyhow::Result;
use serde::Deserialize;

use crate::aws::Sse;
use crate::parse_ctx::ParseCtx;

/// `kind = "s3"`.
#[derive(Debug, Clone)]
pub struct S3Spec {
    pub bucket: String,
    pub prefix: String,
    pub clone_bucket: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub tags: S3Tags,
    /// Server-side encryption of the clones guard writes into `clone_bucket` (`sse`,
    /// `kms_key_id`).
    pub sse: Option<Sse>,
}

/// `tags` of an s3 target: how object tags are snapshotted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum S3Tags {
    /// Every snapshot reads every object's tag set; restore puts tag sets back exactly.
    Exact,
    /// Tags travel with the clone made when an object's content or metadata last changed;
    /// tag-only changes are neither seen nor undone. No per-object request for unchanged objects.
    WithContent,
}

impl S3Tags {
    pub fn as_str(self) -> &'static str {
        match self {
            S3Tags::Exact => "exact",
            S3Tags::WithContent => "with-content",
        }
    }
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    bucket: Option<String>,
    prefix: Option<String>,
    clone_bucket: Option<String>,
    endpoint: Option<String>,
    region: Option<String>,
    tags: Option<String>,
    sse: Option<String>,
    kms_key_id: Option<String>,
}

pub fn parse(raw: Raw, cx: &mut ParseCtx) -> Result<S3Spec> {
    let sse = sse(raw.sse, raw.kms_key_id, cx)?;
    Ok(S3Spec {
        bucket: cx.need("bucket", raw.bucket)?,
        prefix: cx.opt("prefix", raw.prefix)?.unwrap_or_default(),
        clone_bucket: cx.need("clone_bucket", raw.clone_bucket)?,
        endpoint: cx.opt("endpoint", raw.endpoint)?,
        region: cx.opt("region", raw.region)?,
        tags: cx.one_of(
            "tags",
            raw.tags,
            S3Tags::Exact,
            &[("exact", S3Tags::Exact), ("with-content", S3Tags::WithContent)],
        )?,
        sse,
    })
}

/// `sse = "AES256" | "aws:kms"` and `kms_key_id` (only with `aws:kms`), for an s3 target's clones
/// and the `s3://` store.
pub fn sse(sse: Option<String>, kms_key_id: Option<String>, cx: &mut ParseCtx) -> Result<Option<Sse>> {
    let kind = cx.one_of("sse", sse, None, Sse::CHOICES)?;
    let kms_key_id = cx.opt("kms_key_id", kms_key_id)?;
    Sse::pair(kind, kms_key_id).map_err(|why| cx.fail_key("kms_key_id", why))
}
