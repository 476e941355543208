//! The keys of a `kind = "turso"` target.

use anyhow::Result;
use serde::Deserialize;

use crate::parse_ctx::ParseCtx;
use crate::secrets;

/// `kind = "turso"`.
#[derive(Clone)]
pub struct TursoSpec {
    pub organization: String,
    pub database: String,
    pub group: String,
    pub api_token: String,
    /// Platform API base URL (default `https://api.turso.tech`).
    pub api_url: String,
    pub db_url: Option<String>,
    pub db_token: Option<String>,
    pub export: bool,
    pub restore: TursoRestore,
}

impl std::fmt::Debug for TursoSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TursoSpec")
            .field("organization", &self.organization)
            .field("database", &self.database)
            .field("group", &self.group)
            .field("api_url", &self.api_url)
            .field("db_url", &self.db_url)
            .field("export", &self.export)
            .field("restore", &self.restore)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TursoRestore {
    /// Replace the source's tables from the branch in one transaction.
    Reload,
    /// Leave the branch as the new database and say what to repoint.
    Promote,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    organization: Option<String>,
    database: Option<String>,
    group: Option<String>,
    api_token: Option<String>,
    api_url: Option<String>,
    db_url: Option<String>,
    db_token: Option<String>,
    export: Option<bool>,
    restore: Option<String>,
}

pub fn parse(raw: Raw, cx: &mut ParseCtx) -> Result<TursoSpec> {
    let api_token = cx.need("api_token", raw.api_token)?;
    secrets::register(&api_token);
    let db_token = cx.opt("db_token", raw.db_token)?;
    if let Some(tok) = &db_token {
        secrets::register(tok);
    }
    Ok(TursoSpec {
        organization: cx.need("organization", raw.organization)?,
        database: cx.need("database", raw.database)?,
        group: cx.opt("group", raw.group)?.unwrap_or_else(|| "default".into()),
        api_token,
        api_url: cx
            .opt("api_url", raw.api_url)?
            .unwrap_or_else(|| "https://api.turso.tech".into()),
        db_url: cx.opt("db_url", raw.db_url)?,
        db_token,
        export: raw.export.unwrap_or(true),
        restore: cx.one_of(
            "restore",
            raw.restore,
            TursoRestore::Reload,
            &[("reload", TursoRestore::Reload), ("promote", TursoRestore::Promote)],
        )?,
    })
}
