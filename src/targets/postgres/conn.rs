//! Connection parameters: the URL parsed once ([`ConnInfo`]), handed to child tools through
//! their environment and to sqlx, and the connections guard opens itself; SQL quoting.

use std::future::Future;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgRow, PgSslMode};
use sqlx::Connection as _;
use sqlx::Postgres;

use super::{PostgresTarget, SESSION_SETTINGS};
use crate::secrets;
use crate::targets::Target;

/// How long any of guard's own sessions waits for a lock before it gives up: the `lock_timeout`
/// of guard's connections and the restore's psql, pg_dump's `--lock-wait-timeout`, and how long
/// [`super::watch::BlockerWatch`] lets a statement of guard's sit blocked (docs/targets/postgres.md,
/// "Bounded waits").
pub const LOCK_WAIT: Duration = Duration::from_secs(30);

/// The `statement_timeout` of guard's own queries (fingerprints, checks, catalog reads): a
/// backstop, far above what a fingerprint of a large table takes, so nothing guard asks the
/// server waits without end. The restore's psql has none: a `COPY` of a big table takes as long
/// as it takes, and its lock waits are bounded by [`LOCK_WAIT`].
pub const STATEMENT_TIMEOUT: &str = "30min";

/// How long guard waits for a connection to be established.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Settings of every session guard opens, whatever the database's or role's defaults say: a
/// command may have run `ALTER DATABASE … SET statement_timeout = '2s'`,
/// `idle_in_transaction_session_timeout`, `default_transaction_read_only = on` or `lock_timeout
/// = 0`, and guard's rescue and restore must not inherit them.
pub(super) fn bounded_settings(statement_timeout: &str) -> Vec<(&'static str, String)> {
    vec![
        ("lock_timeout", format!("{}s", LOCK_WAIT.as_secs())),
        ("statement_timeout", statement_timeout.to_string()),
        ("idle_in_transaction_session_timeout", "0".into()),
        ("default_transaction_read_only", "off".into()),
        ("standard_conforming_strings", "on".into()),
    ]
}

/// The `application_name` of every session this guard process opens (`guard PID`): how its
/// watch tells its own sessions from the ones that block them.
pub fn app_name() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| format!("guard {}", std::process::id()))
}

/// The `application_name` of the `pg_dump` a clone run leaves dumping the clone while the
/// command runs (`guard PID pg_dump`): how guard finds its backend on the clone.
pub fn dump_app_name() -> String {
    format!("{} pg_dump", app_name())
}

/// Polling the server without a fixed sleep: 1 ms, then twice as long each time, at most
/// 50 ms, never past the caller's deadline.
pub(super) struct Backoff(Duration);

impl Backoff {
    pub(super) fn new() -> Backoff {
        Backoff(Duration::from_millis(1))
    }

    /// Sleep the next step, or until `deadline` if that comes first.
    pub(super) fn sleep(&mut self, deadline: std::time::Instant) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        std::thread::sleep(self.0.min(left));
        self.0 = (self.0 * 2).min(Duration::from_millis(50));
    }
}

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
        if !self.params.iter().any(|(k, _)| k == "connect_timeout") {
            cmd.env("PGCONNECT_TIMEOUT", CONNECT_TIMEOUT.as_secs().to_string());
        }
        cmd.env("PGAPPNAME", app_name());
        // Keep NOTICEs (drop cascades to …) out of what guard reports; bound the session's
        // lock waits and override what the database's defaults may say (pg_dump sets its own
        // timeouts and bounds its locks with --lock-wait-timeout).
        let mut options = String::from("-c client_min_messages=warning");
        for (k, v) in bounded_settings("0") {
            options.push_str(&format!(" -c {k}={v}"));
        }
        cmd.env("PGOPTIONS", options).env("PGCLIENTENCODING", "UTF8");
    }

    /// The URL's `connect_timeout`, if it sets one.
    pub fn connect_timeout(&self) -> Option<Duration> {
        let (_, v) = self.params.iter().find(|(k, _)| k == "connect_timeout")?;
        v.parse::<u64>().ok().filter(|&s| s > 0).map(Duration::from_secs)
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
        let mut settings: Vec<(&str, String)> = SESSION_SETTINGS
            .iter()
            .filter(|(k, _)| *k != "extra_float_digits")
            .map(|(k, v)| (*k, v.to_string()))
            .collect();
        settings.extend(bounded_settings(STATEMENT_TIMEOUT));
        Ok(o.application_name(app_name()).extra_float_digits(3).options(settings))
    }
}

/// The password libpq would take from the password file for `ci` — `$PGPASSFILE`, else
/// `~/.pgpass` — or `None` when there is no such file or no line matches. A file group or
/// others can read or write is refused, naming it (libpq ignores one, which would fail later
/// and more obscurely). Lines are `host:port:database:user:password`, `*` matching anything,
/// `\` escaping `:` and `\`; a socket in the default directory matches `localhost`.
pub fn passfile_password(ci: &ConnInfo) -> Result<Option<String>> {
    use std::os::unix::fs::PermissionsExt;
    let (path, named) = match std::env::var_os("PGPASSFILE").filter(|v| !v.is_empty()) {
        Some(p) => (std::path::PathBuf::from(p), true),
        None => match std::env::var_os("HOME") {
            Some(h) => (std::path::Path::new(&h).join(".pgpass"), false),
            None => return Ok(None),
        },
    };
    let m = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !named => return Ok(None),
        Err(e) => bail!("password file {} ($PGPASSFILE): {e}", path.display()),
    };
    if !m.is_file() {
        bail!("password file {} is not a regular file", path.display());
    }
    let mode = m.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "password file {} can be read or written by group or others (mode {mode:o}); libpq ignores such a file and guard refuses it: chmod 600 {}",
            path.display(),
            path.display()
        );
    }
    let text =
        std::fs::read_to_string(&path).map_err(|e| anyhow!("cannot read password file {}: {e}", path.display()))?;
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let host = ci.host.clone().or_else(|| env("PGHOST"));
    let host = match host.as_deref() {
        None | Some("/var/run/postgresql") | Some("/run/postgresql") | Some("/tmp") => "localhost".to_string(),
        Some(h) => h.to_string(),
    };
    let port = ci
        .port
        .map(|p| p.to_string())
        .or_else(|| env("PGPORT"))
        .unwrap_or_else(|| "5432".into());
    let user = ci.user.clone().or_else(|| env("PGUSER")).unwrap_or_else(os_user);
    let db = ci
        .dbname
        .clone()
        .or_else(|| env("PGDATABASE"))
        .unwrap_or_else(|| user.clone());
    Ok(passfile_lookup(&text, [&host, &port, &db, &user]))
}

/// The first line of a passfile `text` whose four fields match `want` (host, port, database,
/// user): its password.
fn passfile_lookup(text: &str, want: [&str; 4]) -> Option<String> {
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        // Split on unescaped colons into four fields and the rest (the password).
        let mut fields: Vec<String> = vec![String::new()];
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    if let Some(n) = chars.next() {
                        fields.last_mut().expect("one").push(n);
                    }
                }
                ':' if fields.len() < 5 => fields.push(String::new()),
                c => fields.last_mut().expect("one").push(c),
            }
        }
        if fields.len() < 5 {
            continue;
        }
        if fields[..4].iter().zip(want).all(|(f, w)| f == "*" || f == w) {
            return Some(fields[4].clone());
        }
    }
    None
}

/// The name of the user guard runs as (libpq's default user name).
fn os_user() -> String {
    // SAFETY: getpwuid returns a pointer to static storage or NULL; read at once.
    unsafe {
        let pw = libc::getpwuid(libc::geteuid());
        if pw.is_null() || (*pw).pw_name.is_null() {
            return std::env::var("USER").unwrap_or_default();
        }
        std::ffi::CStr::from_ptr((*pw).pw_name).to_string_lossy().into_owned()
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

/// One of guard's own PostgreSQL sessions, driven synchronously: the `block_on` of every round
/// trip guard's synchronous code makes is here, so sqlx's async stays in this file and in the
/// `async fn` helpers [`Session::run`] drives (fingerprint.rs, database.rs). The connection is
/// closed (a clean `Terminate`, not a dropped socket) when the session is dropped.
pub(super) struct Session(Option<PgConnection>);

impl Session {
    /// Connect with `o`.
    pub(super) fn open(o: &PgConnectOptions) -> std::result::Result<Session, sqlx::Error> {
        crate::runtime::block_on(PgConnection::connect_with(o)).map(|c| Session(Some(c)))
    }

    /// Connect with `o`, giving up after `within`.
    pub(super) fn open_within(o: &PgConnectOptions, within: Duration) -> Result<Session> {
        crate::runtime::block_on(async { tokio::time::timeout(within, PgConnection::connect_with(o)).await })
            .map_err(|_| anyhow!("no answer within {} s", within.as_secs()))?
            .map(|c| Session(Some(c)))
            .map_err(|e| anyhow!("{}", secrets::redact(&e.to_string())))
    }

    fn conn(&mut self) -> &mut PgConnection {
        self.0
            .as_mut()
            .expect("a session's connection lives until it is dropped")
    }

    /// Run `f`'s future (sqlx calls on the connection, or an `async fn` taking it) to completion.
    pub(super) fn run<'s, F: Future>(&'s mut self, f: impl FnOnce(&'s mut PgConnection) -> F) -> F::Output {
        crate::runtime::block_on(f(self.conn()))
    }

    /// Execute `sql` (no parameters, the extended protocol): the rows it affected.
    pub(super) fn execute(&mut self, sql: &str) -> Result<u64> {
        Ok(self.run(|c| sqlx::query(sql).execute(c))?.rows_affected())
    }

    /// Execute `sql` with one parameter `$1`.
    pub(super) fn execute_with<A>(&mut self, sql: &str, a: A) -> Result<u64>
    where
        A: for<'q> sqlx::Encode<'q, Postgres> + sqlx::Type<Postgres> + Send,
    {
        Ok(self.run(|c| sqlx::query(sql).bind(a).execute(c))?.rows_affected())
    }

    /// The one value of `sql`'s one row.
    pub(super) fn scalar<T>(&mut self, sql: &str) -> Result<T>
    where
        T: for<'r> sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres> + Send + Unpin,
    {
        Ok(self.run(|c| sqlx::query_scalar(sql).fetch_one(c))?)
    }

    /// The one value of `sql`'s one row with `$1` = `a`.
    pub(super) fn scalar_with<T, A>(&mut self, sql: &str, a: A) -> Result<T>
    where
        T: for<'r> sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres> + Send + Unpin,
        A: for<'q> sqlx::Encode<'q, Postgres> + sqlx::Type<Postgres> + Send,
    {
        Ok(self.run(|c| sqlx::query_scalar(sql).bind(a).fetch_one(c))?)
    }

    /// The one value of `sql`'s first row with `$1` = `a`, if it returns one.
    pub(super) fn scalar_optional<T, A>(&mut self, sql: &str, a: A) -> Result<Option<T>>
    where
        T: for<'r> sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres> + Send + Unpin,
        A: for<'q> sqlx::Encode<'q, Postgres> + sqlx::Type<Postgres> + Send,
    {
        Ok(self.run(|c| sqlx::query_scalar(sql).bind(a).fetch_optional(c))?)
    }

    /// Every row of `sql` with `$1` = `a`.
    pub(super) fn fetch_all_with<A>(&mut self, sql: &str, a: A) -> Result<Vec<PgRow>>
    where
        A: for<'q> sqlx::Encode<'q, Postgres> + sqlx::Type<Postgres> + Send,
    {
        Ok(self.run(|c| sqlx::query(sql).bind(a).fetch_all(c))?)
    }
}

impl Session {
    /// `COPY … TO STDOUT` as a blocking reader over the stream's chunks; the session is busy
    /// until the reader is dropped.
    pub(super) fn copy_out(&mut self, stmt: &str) -> Result<impl std::io::Read + '_> {
        let stream = crate::runtime::block_on(self.conn().copy_out_raw(stmt))?;
        Ok(CopyOut {
            stream,
            buf: Vec::new(),
            pos: 0,
        })
    }

    /// Drop the connection without closing it (it failed: nothing to say goodbye to).
    pub(super) fn abandon(mut self) {
        drop(self.0.take());
    }
}

/// A blocking reader over sqlx's COPY OUT stream: one chunk of the stream at a time.
struct CopyOut<S> {
    stream: S,
    buf: Vec<u8>,
    pos: usize,
}

impl<S, B> std::io::Read for CopyOut<S>
where
    S: futures_util::Stream<Item = sqlx::Result<B>> + Unpin,
    B: AsRef<[u8]>,
{
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        use futures_util::StreamExt as _;
        while self.pos >= self.buf.len() {
            match crate::runtime::block_on(self.stream.next()) {
                None => return Ok(0),
                Some(Ok(b)) => {
                    self.buf = b.as_ref().to_vec();
                    self.pos = 0;
                }
                Some(Err(e)) => return Err(std::io::Error::other(e.to_string())),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..n + self.pos]);
        self.pos += n;
        Ok(n)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            crate::runtime::block_on(async {
                let _ = c.close().await;
            });
        }
    }
}

impl PostgresTarget {
    pub(super) async fn connect_to(&self, dbname: Option<&str>) -> Result<PgConnection> {
        let o = self.conn.sqlx(dbname)?;
        let timeout = self.conn.connect_timeout().unwrap_or(CONNECT_TIMEOUT);
        match tokio::time::timeout(timeout, PgConnection::connect_with(&o)).await {
            Ok(r) => r.map_err(|e| {
                anyhow!(
                    "target {}: cannot connect to {}: {}",
                    self.spec.name,
                    self.source(),
                    secrets::redact(&e.to_string())
                )
            }),
            Err(_) => bail!(
                "target {}: cannot connect to {}: no answer within {} s",
                self.spec.name,
                self.source(),
                timeout.as_secs()
            ),
        }
    }

    /// A session on database `dbname` of the target's server (`None`: the target's own).
    pub(super) fn session_on(&self, dbname: Option<&str>) -> Result<Session> {
        crate::runtime::block_on(self.connect_to(dbname)).map(|c| Session(Some(c)))
    }

    /// A session on a maintenance database of the target's server: `postgres`, else `template1`.
    pub(super) fn maintenance_session(&self) -> Result<Session> {
        self.session_on(Some("postgres"))
            .or_else(|_| self.session_on(Some("template1")))
    }

    /// A session on the target's database.
    pub(super) fn session(&self) -> Result<Session> {
        self.live()?;
        self.session_on(None)
    }

    /// A session on the target's database, or on a maintenance database of the same server
    /// when the target's does not exist (a command dropped it).
    pub(super) fn server_session(&self) -> Result<Session> {
        self.live()?;
        match self.session_on(None) {
            Ok(c) => Ok(c),
            Err(e) if format!("{e:#}").contains("does not exist") => self.maintenance_session().map_err(|_| e),
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

    #[test]
    fn passfile_lines_match_as_libpq_reads_them() {
        let text = "# comment\nother:5432:*:app:wrong\n*:5433:rent:app:a\\:b\\\\c:d\nlocalhost:*:*:*:fallback\n";
        assert_eq!(
            passfile_lookup(text, ["db", "5433", "rent", "app"]).as_deref(),
            Some("a:b\\c:d")
        );
        assert_eq!(
            passfile_lookup(text, ["localhost", "5432", "x", "y"]).as_deref(),
            Some("fallback")
        );
        assert_eq!(passfile_lookup(text, ["db", "5432", "rent", "app"]), None);
        assert_eq!(
            passfile_lookup(text, ["other", "5432", "rent", "app"]).as_deref(),
            Some("wrong")
        );
    }
}
