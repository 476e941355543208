//! The keys of a `kind = "sqlite"` target.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use serde::Deserialize;

use crate::parse_ctx::ParseCtx;

/// `kind = "sqlite"`: a SQLite database file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteSpec {
    /// The database file (absolute, resolved against the policy's directory).
    pub path: PathBuf,
    /// How long to wait for another process's lock (`busy_timeout = "30s"`, the default).
    pub busy_timeout: Duration,
}

impl Default for SqliteSpec {
    fn default() -> Self {
        SqliteSpec {
            path: PathBuf::new(),
            busy_timeout: super::BUSY_TIMEOUT,
        }
    }
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    path: Option<String>,
    busy_timeout: Option<String>,
}

pub fn parse(raw: Raw, cx: &mut ParseCtx) -> Result<SqliteSpec> {
    let busy_timeout = match cx.opt("busy_timeout", raw.busy_timeout)? {
        None => super::BUSY_TIMEOUT,
        Some(t) => match humantime::parse_duration(&t) {
            Ok(d) if d > Duration::ZERO && d <= Duration::from_secs(3600) => d,
            Ok(_) => return Err(cx.fail_key("busy_timeout", format!("{t:?} must be more than 0 and at most 1h"))),
            Err(e) => return Err(cx.fail_key("busy_timeout", format!("{t:?}: {e} (for example \"30s\")"))),
        },
    };
    Ok(SqliteSpec {
        path: cx.need_path("path", raw.path)?,
        busy_timeout,
    })
}

impl SqliteSpec {
    /// A database at `path` with the default settings.
    pub fn at(path: PathBuf) -> SqliteSpec {
        SqliteSpec {
            path,
            ..SqliteSpec::default()
        }
    }
}
