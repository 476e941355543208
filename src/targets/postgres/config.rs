//! The keys of a `kind = "postgres"` target.

use std::path::PathBuf;

use anyhow::Result;
use serde::Deserialize;

use crate::parse_ctx::ParseCtx;
use crate::secrets;

/// `kind = "postgres"`.
#[derive(Clone)]
pub struct PostgresSpec {
    /// Connection URL (`postgres://user:pass@host:port/db`, or `?host=/socket/dir`).
    pub url: String,
    pub format: PgFormat,
    /// Tables also exported as CSV.
    pub csv_tables: Vec<String>,
    /// Directory holding pg_dump/pg_restore/psql, overriding the search.
    pub pg_bin: Option<PathBuf>,
    /// What to do about other sessions connected to the database during a restore.
    pub sessions: Sessions,
    /// Where drills restore (a server URL whose database is created and dropped).
    pub drill_url: Option<String>,
}

impl std::fmt::Debug for PostgresSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSpec")
            .field("url", &secrets::redact_url(&self.url))
            .field("format", &self.format)
            .field("csv_tables", &self.csv_tables)
            .field("pg_bin", &self.pg_bin)
            .field("sessions", &self.sessions)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgFormat {
    Custom,
    Plain,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sessions {
    /// Refuse to restore while other sessions are connected, naming them.
    Refuse,
    /// Terminate other sessions before restoring.
    Terminate,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    url: Option<String>,
    format: Option<String>,
    csv_tables: Option<Vec<String>>,
    pg_bin: Option<String>,
    sessions: Option<String>,
    drill_url: Option<String>,
}

pub fn parse(raw: Raw, cx: &mut ParseCtx) -> Result<PostgresSpec> {
    let url = cx.need("url", raw.url)?;
    if let Some(pw) = secrets::url_password(&url) {
        secrets::register(&pw);
    }
    let format = cx.one_of(
        "format",
        raw.format,
        PgFormat::Custom,
        &[("custom", PgFormat::Custom), ("plain", PgFormat::Plain)],
    )?;
    let sessions = cx.one_of(
        "sessions",
        raw.sessions,
        Sessions::Refuse,
        &[("refuse", Sessions::Refuse), ("terminate", Sessions::Terminate)],
    )?;
    Ok(PostgresSpec {
        url,
        format,
        csv_tables: cx.list(raw.csv_tables),
        pg_bin: cx.opt(raw.pg_bin).map(|p| cx.resolve(&p)),
        sessions,
        drill_url: cx.opt(raw.drill_url),
    })
}
