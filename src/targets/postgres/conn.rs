//! Connection parameters: the URL parsed once ([`ConnInfo`]), handed to child tools through
//! their environment and to sqlx, and the connections guard opens itself; SQL quoting.

use std::process::Command;

use anyhow::{anyhow, bail, Result};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgSslMode};
use sqlx::Connection as _;

use super::{PostgresTarget, SESSION_SETTINGS};
use crate::secrets;
use crate::targets::Target;

/// A parsed `postgres://` URL.
#[derive(Clone, Default)]
pub struct ConnInfo {
    pub user: Option<String>,
    pub password: Option<String>,
    /// Host name, address, or socket directory (starts with `/`).
    pub host: Option<String>,
    pub port: Option<u16>,
    pub dbname: Option<String>,
    /// Other libpq parameters (`sslmode`, …) as (libpq name, value).
    pub params: Vec<(String, String)>,
}

pub(super) fn percent_decode(s: &str) -> Result<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .ok_or_else(|| anyhow!("bad percent-escape in URL"))?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| anyhow!("bad percent-escape in URL"))?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| anyhow!("URL is not UTF-8 after percent-decoding"))
}

/// libpq environment variable for a URL query parameter.
pub(super) fn param_env(name: &str) -> Option<&'static str> {
    Some(match name {
        "sslmode" => "PGSSLMODE",
        "sslrootcert" => "PGSSLROOTCERT",
        "sslcert" => "PGSSLCERT",
        "sslkey" => "PGSSLKEY",
        "connect_timeout" => "PGCONNECT_TIMEOUT",
        "target_session_attrs" => "PGTARGETSESSIONATTRS",
        _ => return None,
    })
}

impl ConnInfo {
    /// Parse `postgres[ql]://[user[:password]@][host][:port][/dbname][?param=value&…]`.
    pub fn parse(url: &str) -> Result<ConnInfo> {
        let rest = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
            .ok_or_else(|| anyhow!("url must start with postgres:// or postgresql://"))?;
        let (main, query) = match rest.split_once('?') {
            Some((m, q)) => (m, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match main.find('/') {
            Some(i) => (&main[..i], &main[i + 1..]),
            None => (main, ""),
        };
        let mut ci = ConnInfo::default();
        let hostport = match authority.rsplit_once('@') {
            Some((userinfo, hp)) => {
                let (u, p) = match userinfo.split_once(':') {
                    Some((u, p)) => (u, Some(p)),
                    None => (userinfo, None),
                };
                if !u.is_empty() {
                    ci.user = Some(percent_decode(u)?);
                }
                if let Some(p) = p {
                    ci.password = Some(percent_decode(p)?);
                }
                hp
            }
            None => authority,
        };
        if hostport.contains(',') {
            bail!("url: several hosts are not supported; name one");
        }
        let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
            let (h, after) = h.split_once(']').ok_or_else(|| anyhow!("url: unclosed [ in host"))?;
            (h.to_string(), after.strip_prefix(':').map(str::to_string))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (percent_decode(h)?, Some(p.to_string())),
                None => (percent_decode(hostport)?, None),
            }
        };
        if !host.is_empty() {
            ci.host = Some(host);
        }
        if let Some(p) = port.filter(|p| !p.is_empty()) {
            ci.port = Some(p.parse().map_err(|_| anyhow!("url: port {p:?} is not a number"))?);
        }
        if !path.is_empty() {
            ci.dbname = Some(percent_decode(path)?);
        }
        for kv in query.unwrap_or("").split('&').filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let v = percent_decode(v)?;
            match k {
                "host" => ci.host = Some(v),
                "port" => ci.port = Some(v.parse().map_err(|_| anyhow!("url: port {v:?} is not a number"))?),
                "user" => ci.user = Some(v),
                "password" => ci.password = Some(v),
                "dbname" => ci.dbname = Some(v),
                "application_name" => {}
                k if param_env(k).is_some() => ci.params.push((k.to_string(), v)),
                k => bail!("url: parameter {k:?} is not supported (known: host, port, user, password, dbname, sslmode, sslrootcert, sslcert, sslkey, connect_timeout, target_session_attrs)"),
            }
        }
        Ok(ci)
    }

    /// Put the connection parameters into a child's environment (never its argv).
    pub fn apply_env(&self, cmd: &mut Command, dbname: Option<&str>) {
        // The URL is authoritative for what it names; a service file could override it.
        cmd.env_remove("PGSERVICE").env_remove("PGHOSTADDR");
        if let Some(h) = &self.host {
            cmd.env("PGHOST", h);
        }
        if let Some(p) = self.port {
            cmd.env("PGPORT", p.to_string());
        }
        if let Some(u) = &self.user {
            cmd.env("PGUSER", u);
        }
        if let Some(p) = &self.password {
            cmd.env("PGPASSWORD", p);
        }
        if let Some(d) = dbname.or(self.dbname.as_deref()) {
            cmd.env("PGDATABASE", d);
        }
        for (k, v) in &self.params {
            if let Some(e) = param_env(k) {
                cmd.env(e, v);
            }
        }
        cmd.env("PGAPPNAME", "guard");
        // Keep NOTICEs (drop cascades to …) out of what guard reports.
        cmd.env("PGOPTIONS", "-c client_min_messages=warning");
    }

    /// sqlx options for the same parameters, with the fixed session settings.
    pub fn sqlx(&self, dbname: Option<&str>) -> Result<PgConnectOptions> {
        let mut o = PgConnectOptions::new();
        if let Some(p) = self.port {
            o = o.port(p);
        }
        if let Some(h) = &self.host {
            o = if h.starts_with('/') { o.socket(h) } else { o.host(h) };
        }
        if let Some(u) = &self.user {
            o = o.username(u);
        }
        if let Some(p) = &self.password {
            o = o.password(p);
        }
        if let Some(d) = dbname.or(self.dbname.as_deref()) {
            o = o.database(d);
        } else if let Some(u) = &self.user {
            o = o.database(u);
        }
        for (k, v) in &self.params {
            match k.as_str() {
                "sslmode" => {
                    o = o.ssl_mode(
                        v.parse::<PgSslMode>()
                            .map_err(|_| anyhow!("url: sslmode {v:?} is not valid"))?,
                    )
                }
                "sslrootcert" => o = o.ssl_root_cert(v),
                "sslcert" => o = o.ssl_client_cert(v),
                "sslkey" => o = o.ssl_client_key(v),
                _ => {}
            }
        }
        let settings: Vec<(&str, &str)> = SESSION_SETTINGS
            .iter()
            .copied()
            .filter(|(k, _)| *k != "extra_float_digits")
            .collect();
        Ok(o.application_name("guard").extra_float_digits(3).options(settings))
    }
}

/// Quote an identifier for SQL.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

pub(super) fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `Table` → `"Table"`, `schema.Table` → `"schema"."Table"`.
pub(super) fn qualified(name: &str) -> String {
    match name.split_once('.') {
        Some((s, t)) => format!("{}.{}", quote_ident(s), quote_ident(t)),
        None => quote_ident(name),
    }
}

impl PostgresTarget {
    pub(super) async fn connect_to(&self, dbname: Option<&str>) -> Result<PgConnection> {
        let o = self.conn.sqlx(dbname)?;
        PgConnection::connect_with(&o).await.map_err(|e| {
            anyhow!(
                "target {}: cannot connect to {}: {}",
                self.spec.name,
                self.source(),
                secrets::redact(&e.to_string())
            )
        })
    }

    pub(super) fn connect(&self) -> Result<PgConnection> {
        self.live()?;
        crate::runtime::block_on(self.connect_to(None))
    }

    /// A connection to the target's database, or to a maintenance database of the same
    /// server when the target's does not exist (a command dropped it).
    pub(super) fn connect_server(&self) -> Result<PgConnection> {
        self.live()?;
        match crate::runtime::block_on(self.connect_to(None)) {
            Ok(c) => Ok(c),
            Err(e) if format!("{e:#}").contains("does not exist") => {
                crate::runtime::block_on(self.connect_to(Some("postgres")))
                    .or_else(|_| crate::runtime::block_on(self.connect_to(Some("template1"))))
                    .map_err(|_| e)
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let c = ConnInfo::parse("postgres://app:p%40ss@db.example:6543/rent?sslmode=require").unwrap();
        assert_eq!(c.user.as_deref(), Some("app"));
        assert_eq!(c.password.as_deref(), Some("p@ss"));
        assert_eq!(c.host.as_deref(), Some("db.example"));
        assert_eq!(c.port, Some(6543));
        assert_eq!(c.dbname.as_deref(), Some("rent"));
        assert_eq!(c.params, vec![("sslmode".to_string(), "require".to_string())]);
        let s = ConnInfo::parse("postgresql://postgres@/rent?host=/tmp/x%20y&port=5433").unwrap();
        assert_eq!(s.host.as_deref(), Some("/tmp/x y"));
        assert_eq!(s.port, Some(5433));
        assert!(s.password.is_none());
        let v6 = ConnInfo::parse("postgres://[::1]:5432/db").unwrap();
        assert_eq!(v6.host.as_deref(), Some("::1"));
        assert!(ConnInfo::parse("mysql://x/y").is_err());
        assert!(ConnInfo::parse("postgres://a,b/db").is_err());
        assert!(ConnInfo::parse("postgres://h/db?bogus=1").is_err());
    }
}
