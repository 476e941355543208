//! The keys of a `kind = "postgres"` target.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
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
    /// How a guarded run's pre-run snapshot is taken: a dump (`"dump"`, the default), or a
    /// clone database first, dumped into the store and kept for a restore by rename (`"clone"`,
    /// issue 17).
    pub snapshot: PgSnapshot,
    /// Prisma's `?schema=NAME` in the URL (taken out of `url`, which libpq would refuse): the
    /// schema checks and fingerprints resolve unqualified names in (their `search_path`).
    pub schema: Option<String>,
    /// The password read from `password_file` (never printed; masked in output).
    pub password: Option<String>,
}

impl std::fmt::Debug for PostgresSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSpec")
            .field("url", &secrets::redact_url(&self.url))
            .field("format", &self.format)
            .field("csv_tables", &self.csv_tables)
            .field("pg_bin", &self.pg_bin)
            .field("sessions", &self.sessions)
            .field("snapshot", &self.snapshot)
            .field("schema", &self.schema)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgFormat {
    Custom,
    Plain,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PgSnapshot {
    #[default]
    Dump,
    Clone,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sessions {
    /// Refuse to restore while other sessions are connected, naming them.
    Refuse,
    /// Terminate other sessions before restoring.
    Terminate,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    url: Option<String>,
    format: Option<String>,
    csv_tables: Option<Vec<String>>,
    pg_bin: Option<String>,
    sessions: Option<String>,
    drill_url: Option<String>,
    snapshot: Option<String>,
    password_file: Option<String>,
}

pub fn parse(raw: Raw, cx: &mut ParseCtx) -> Result<PostgresSpec> {
    let url = cx.need("url", raw.url)?;
    if let Some(pw) = secrets::url_password(&url) {
        secrets::register(&pw);
    }
    let in_url = secrets::url_password(&url).is_some();
    let (url, schema) = take_schema(&url);
    let password = match cx.opt("password_file", raw.password_file)? {
        Some(_) if in_url => {
            return Err(cx.fail_key(
                "password_file",
                "password_file is set but the url already holds a password; give it once (take it out of the url)"
                    .to_string(),
            ))
        }
        Some(f) if !cx.deferred() => {
            let path = cx.resolve(&f);
            let pw = read_password_file(&path).map_err(|e| cx.fail_key("password_file", format!("{e:#}")))?;
            secrets::register(&pw);
            Some(pw)
        }
        _ => None,
    };
    if !cx.deferred() {
        if let Err(e) = super::conn::ConnInfo::parse(&url) {
            return Err(cx.fail_key("url", format!("{e:#}")));
        }
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
    let snapshot = cx.one_of(
        "snapshot",
        raw.snapshot,
        PgSnapshot::Dump,
        &[("dump", PgSnapshot::Dump), ("clone", PgSnapshot::Clone)],
    )?;
    Ok(PostgresSpec {
        url,
        snapshot,
        format,
        csv_tables: cx.list("csv_tables", raw.csv_tables)?,
        pg_bin: cx.opt("pg_bin", raw.pg_bin)?.map(|p| cx.resolve(&p)),
        sessions,
        drill_url: cx.opt("drill_url", raw.drill_url)?,
        schema,
        password,
    })
}

/// The password in `path`: its first line (a trailing newline is not part of it). The file
/// must be a regular file only its owner can read or write, as libpq demands of `~/.pgpass`.
pub fn read_password_file(path: &std::path::Path) -> Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let m = std::fs::metadata(path).with_context(|| format!("cannot read password file {}", path.display()))?;
    if !m.is_file() {
        bail!("password file {} is not a regular file", path.display());
    }
    let mode = m.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "password file {} can be read or written by group or others (mode {mode:o}); make it private: chmod 600 {}",
            path.display(),
            path.display()
        );
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read password file {}", path.display()))?;
    let pw = text.lines().next().unwrap_or("").to_string();
    if pw.is_empty() {
        bail!(
            "password file {} is empty (its first line is the password)",
            path.display()
        );
    }
    Ok(pw)
}

/// Take Prisma's `schema` query parameter out of a URL: (the URL without it, its value).
fn take_schema(url: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_string(), None);
    };
    let mut schema = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|kv| match kv.strip_prefix("schema=") {
            Some(v) => {
                schema = super::conn::percent_decode(v).ok().filter(|s| !s.is_empty());
                false
            }
            None => true,
        })
        .collect();
    let url = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (url, schema)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prismas_schema_parameter_is_taken_out_of_the_url() {
        assert_eq!(
            take_schema("postgres://u@h/db?schema=public"),
            ("postgres://u@h/db".to_string(), Some("public".to_string()))
        );
        assert_eq!(
            take_schema("postgres://u@/db?host=/s&schema=app%20x&sslmode=disable"),
            (
                "postgres://u@/db?host=/s&sslmode=disable".to_string(),
                Some("app x".to_string())
            )
        );
        assert_eq!(take_schema("postgres://h/db"), ("postgres://h/db".to_string(), None));
    }
}
