//! The policy's TOML shape, as serde reads it. Every table denies unknown fields so a typo is an
//! error with a line number; a `[[target]]` table keeps its kind's keys as a table for the
//! kind's own `config.rs`, which denies the keys it does not know (serde cannot combine
//! `flatten` with `deny_unknown_fields`: serde-rs/serde#1600).

use serde::Deserialize;
use toml::Spanned;

use crate::parse_ctx::{line_of, ParseCtx};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    pub name: Spanned<String>,
    pub store: Option<Spanned<String>>,
    #[serde(default)]
    pub confirm: bool,
    pub retention: Option<RawRetention>,
    pub compression: Option<RawCompression>,
    #[serde(default)]
    pub target: Vec<Spanned<RawTarget>>,
    pub hooks: Option<RawHooks>,
    #[serde(default)]
    pub check: Vec<Spanned<RawCheck>>,
    pub drill: Option<RawDrill>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDrill {
    pub max_age: Option<Spanned<String>>,
    pub on_failure: Option<String>,
    #[serde(default)]
    pub check: Vec<Spanned<RawCheck>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetention {
    pub keep_within: Option<Spanned<String>>,
    pub keep_last: Option<Spanned<usize>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCompression {
    pub level: Option<Spanned<u32>>,
    pub threads: Option<Spanned<usize>>,
}

/// `[[target]]`: `name`, `kind`, and the kind's own keys.
#[derive(Deserialize)]
pub struct RawTarget {
    pub name: String,
    pub kind: String,
    #[serde(flatten)]
    pub keys: toml::Table,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHooks {
    #[serde(default)]
    pub before: Vec<String>,
    #[serde(default)]
    pub after: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCheck {
    pub name: String,
    pub target: Option<String>,
    pub untouched: Option<Vec<String>>,
    pub sql: Option<String>,
    pub expect: Option<String>,
    pub command: Option<String>,
    /// s3 targets: count of objects / total bytes under this key prefix.
    pub objects: Option<String>,
    pub bytes: Option<String>,
}

/// Read the TOML; a syntax or shape error names its line.
pub fn from_str(text: &str, cx: &ParseCtx) -> anyhow::Result<RawPolicy> {
    toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(0);
        cx.err_line(line, e.message().trim())
    })
}
