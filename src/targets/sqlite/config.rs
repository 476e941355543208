//! The keys of a `kind = "sqlite"` target.

use std::path::PathBuf;

use anyhow::Result;
use serde::Deserialize;

use crate::parse_ctx::ParseCtx;

/// `kind = "sqlite"`: a SQLite database file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SqliteSpec {
    /// The database file (absolute, resolved against the policy's directory).
    pub path: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    path: Option<String>,
}

pub fn parse(raw: Raw, cx: &mut ParseCtx) -> Result<SqliteSpec> {
    let path = cx.need_path("path", raw.path)?;
    Ok(SqliteSpec { path })
}
