//! The keys of a `kind = "dir"` target.

use std::path::PathBuf;

use anyhow::Result;
use serde::Deserialize;

use crate::parse_ctx::ParseCtx;

/// `kind = "dir"`: a directory tree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirSpec {
    /// The directory (absolute, resolved against the policy's directory).
    pub path: PathBuf,
    /// `keep_setid = true`: a restore keeps the setuid/setgid bits the archive holds (by
    /// default they are dropped: an archive from the store never plants a setuid file).
    pub keep_setid: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    path: Option<String>,
    keep_setid: Option<bool>,
}

pub fn parse(raw: Raw, cx: &mut ParseCtx) -> Result<DirSpec> {
    Ok(DirSpec {
        path: cx.need_path("path", raw.path)?,
        keep_setid: raw.keep_setid.unwrap_or(false),
    })
}
