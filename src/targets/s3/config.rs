//! The keys of a `kind = "s3"` target.

use anyhow::Result;
use serde::Deserialize;

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
}

pub fn parse(raw: Raw, cx: &mut ParseCtx) -> Result<S3Spec> {
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
    })
}
