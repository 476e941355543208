//! PostgreSQL databases (`kind = "postgres"`).
//!
//! Snapshot: one REPEATABLE READ transaction exports its snapshot; the fingerprints (row
//! counts, content hashes, schema) and CSV exports are read in that transaction while
//! `pg_dump --snapshot=…` dumps exactly the same state. pg_dump writes uncompressed (`-Fc -Z0`
//! or `-Fp`) to a pipe and guard compresses (level [`DUMP_LEVEL`] unless the policy sets one)
//! and hashes the stream on every core. The artifact is then read back from the store, its
//! checksums compared, and parsed whole by `pg_restore` (custom) or checked for pg_dump's
//! completion trailer (plain) before the guarded command may run.
//!
//! Tools: the newest `pg_dump` whose major version is at least the server's, from `pg_bin` (only
//! there when set), `PATH` and `/usr/lib/postgresql/*/bin`, with `pg_restore` and `psql` beside it.
//!
//! Restore, in one transaction on the live database through `psql -v ON_ERROR_STOP=1`: every
//! user schema is dropped (so tables, columns, functions and triggers a failed migration added
//! are gone too), `public` is recreated with its recorded owner and grants, large objects are
//! unlinked, then the dump's SQL (from `pg_restore -f -` for custom archives) is replayed and
//! `COMMIT` is sent only after the artifact's checksums verified and `pg_restore` exited 0.
//! Anything else rolls back and the database is left exactly as it was.
//!
//! Connection parameters reach children through `PGHOST`/`PGPORT`/`PGUSER`/`PGDATABASE`/
//! `PGPASSWORD` in their environment, never on their argv.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest as _, Sha256};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgSslMode};
use sqlx::{Connection as _, Row as _};

use super::{SnapshotCtx, Target};
use crate::artifact::read_artifact;
use crate::manifest::{Fingerprint, TargetRecord};
use crate::policy::{PgFormat, PostgresSpec, Sessions, TargetKind, TargetSpec};
use crate::secrets;
use crate::store::Store;

/// gzip level of PostgreSQL artifacts when the policy sets no `[compression] level`. Measured on
/// the bench's 416 MB `pg_dump -Fc -Z0` stream (README, Performance): level 2 (zlib-rs's "fast"
/// deflate) costs two thirds of level 6's CPU for an artifact 2% larger, about as large as
/// `pg_dump -Fc`'s own; level 1 ("quick") is 46% larger than that.
pub const DUMP_LEVEL: u32 = 2;

/// Session settings under which `row::text` is stable, for content hashes.
const SESSION_SETTINGS: [(&str, &str); 5] = [
    ("DateStyle", "ISO"),
    ("TimeZone", "UTC"),
    ("IntervalStyle", "postgres"),
    ("bytea_output", "hex"),
    ("extra_float_digits", "3"),
];

// ---------------------------------------------------------------------------------------------
// Connection parameters

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

fn percent_decode(s: &str) -> Result<String> {
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
fn param_env(name: &str) -> Option<&'static str> {
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

/// `CREATE DATABASE name` with the encoding and collation the snapshot recorded (and its owner,
/// with `owner`), from `template0` so the restore starts empty.
fn create_database_sql(name: &str, rec: &TargetRecord, owner: bool) -> String {
    let mut sql = format!("CREATE DATABASE {} TEMPLATE template0", quote_ident(name));
    if let Some(o) = rec.meta.get("db_owner").filter(|_| owner) {
        sql.push_str(&format!(" OWNER {}", quote_ident(o)));
    }
    for (key, clause) in [
        ("db_encoding", "ENCODING"),
        ("db_collate", "LC_COLLATE"),
        ("db_ctype", "LC_CTYPE"),
    ] {
        if let Some(v) = rec.meta.get(key) {
            sql.push_str(&format!(" {clause} {}", quote_literal(v)));
        }
    }
    sql
}

// ---------------------------------------------------------------------------------------------
// Tools

/// The client tools chosen for a server.
#[derive(Clone, Debug)]
pub struct Tools {
    pub dir: PathBuf,
    /// `pg_dump --version`'s number, e.g. `15.18`.
    pub version: String,
    pub major: u32,
}

impl Tools {
    fn bin(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// `name` with 1 MiB stdio buffers on the streams `streams` names (`-i` stdin, `-o`
    /// stdout), through coreutils' `stdbuf` when it works here, else the tool alone.
    /// pg_dump, pg_restore and psql move a dump through stdio in 4 KiB calls: 100,000
    /// write(2)s for a 400 MB dump, a tenth of a second of a core each way (README,
    /// Performance). The bytes are the same either way.
    fn buffered(&self, name: &str, streams: &[&str]) -> Command {
        static STDBUF: OnceLock<bool> = OnceLock::new();
        let works = *STDBUF.get_or_init(|| {
            Command::new("stdbuf")
                .args(["-i1M", "-o1M", "true"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        });
        if !works {
            return Command::new(self.bin(name));
        }
        let mut c = Command::new("stdbuf");
        for s in streams {
            c.arg(format!("{s}1M"));
        }
        c.arg(self.bin(name));
        c
    }
}

/// Let a pipe hold 1 MiB instead of 64 KiB, so the processes on either end wake each other
/// less often. Best effort: a kernel that refuses keeps the default.
fn widen_pipe(fd: &impl std::os::fd::AsRawFd) {
    // SAFETY: fcntl on a descriptor we own, with an integer argument.
    unsafe {
        libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20);
    }
}

/// A comparable major version: 15 → 1500, 9.6 → 906.
pub fn major_of(version: &str) -> Option<u32> {
    let mut it = version.split(|c: char| !c.is_ascii_digit());
    let a: u32 = it.next()?.parse().ok()?;
    if a >= 10 {
        Some(a * 100)
    } else {
        Some(a * 100 + it.next().and_then(|b| b.parse().ok()).unwrap_or(0))
    }
}

/// `1500` → `15`, `906` → `9.6`.
pub fn major_name(m: u32) -> String {
    if m >= 1000 {
        (m / 100).to_string()
    } else {
        format!("{}.{}", m / 100, m % 100)
    }
}

/// The version number in `pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)`.
pub fn parse_tool_version(out: &str) -> Option<String> {
    let line = out.lines().next()?;
    let after = line.split_once(')').map(|(_, a)| a).unwrap_or(line);
    let v = after.split_whitespace().next()?;
    v.chars().next()?.is_ascii_digit().then(|| v.to_string())
}

fn tool_version(bin: &Path) -> Result<String> {
    let out = Command::new(bin)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    let s = String::from_utf8_lossy(&out.stdout);
    parse_tool_version(&s).ok_or_else(|| anyhow!("{} --version printed {:?}", bin.display(), s.trim()))
}

/// Directories that may hold pg_dump: `pg_bin` alone when set, else PATH and Debian's
/// `/usr/lib/postgresql/*/bin`. Debian's `pg_wrapper` symlinks in PATH are skipped (they pick
/// a version by themselves); the real binaries they point at are in the Debian directories.
fn candidate_dirs(pg_bin: Option<&Path>) -> Vec<PathBuf> {
    if let Some(d) = pg_bin {
        return vec![d.to_path_buf()];
    }
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            let p = d.join("pg_dump");
            let real = std::fs::canonicalize(&p).ok();
            if real
                .as_ref()
                .map(|r| r.file_name() == Some("pg_dump".as_ref()))
                .unwrap_or(false)
            {
                dirs.push(d);
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut v: Vec<PathBuf> = rd.flatten().map(|e| e.path().join("bin")).collect();
        v.sort();
        dirs.extend(v);
    }
    let mut seen = Vec::new();
    dirs.retain(|d| {
        let c = std::fs::canonicalize(d).unwrap_or_else(|_| d.clone());
        if seen.contains(&c) {
            false
        } else {
            seen.push(c);
            true
        }
    });
    dirs
}

/// The newest pg_dump (with pg_restore and psql beside it) of major `need` or newer.
pub fn find_tools(pg_bin: Option<&Path>, need: u32, why: &str) -> Result<Tools> {
    let mut found = Vec::new();
    let mut best: Option<Tools> = None;
    for d in candidate_dirs(pg_bin) {
        let dump = d.join("pg_dump");
        if !dump.is_file() {
            continue;
        }
        let version = match tool_version(&dump) {
            Ok(v) => v,
            Err(e) => {
                found.push(format!("{} ({e:#})", dump.display()));
                continue;
            }
        };
        let Some(major) = major_of(&version) else {
            continue;
        };
        let missing: Vec<&str> = ["pg_restore", "psql"]
            .into_iter()
            .filter(|t| !d.join(t).is_file())
            .collect();
        if !missing.is_empty() {
            found.push(format!(
                "{} {version} (no {} beside it)",
                dump.display(),
                missing.join(", ")
            ));
            continue;
        }
        found.push(format!("{} {version}", dump.display()));
        if major >= need && best.as_ref().map(|b| major > b.major).unwrap_or(true) {
            best = Some(Tools { dir: d, version, major });
        }
    }
    if let Some(b) = best {
        return Ok(b);
    }
    let n = major_name(need);
    bail!(
        "{why} is PostgreSQL {n}; pg_dump {n} or newer is needed (with pg_restore and psql beside it); found: {}. Install it with `apt-get install postgresql-client-{n}` (Debian/Ubuntu, PGDG repository for versions the distribution lacks), or set `pg_bin` to a directory holding pg_dump {n} or newer",
        if found.is_empty() { "none".to_string() } else { found.join(", ") },
    )
}

// ---------------------------------------------------------------------------------------------
// Children

/// Collect a child's stderr on a thread (a full pipe would block the child).
fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        v
    })
}

/// The last meaningful lines of a child's stderr, redacted.
fn tail(stderr: &[u8]) -> String {
    let s = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(6);
    let t = lines[start..].join(" | ");
    if t.is_empty() {
        "no message".into()
    } else {
        secrets::redact(&t)
    }
}

fn status_text(s: ExitStatus) -> String {
    match s.code() {
        Some(c) => format!("exited {c}"),
        None => "was killed by a signal".into(),
    }
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Quote an identifier for SQL.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `Table` → `"Table"`, `schema.Table` → `"schema"."Table"`.
fn qualified(name: &str) -> String {
    match name.split_once('.') {
        Some((s, t)) => format!("{}.{}", quote_ident(s), quote_ident(t)),
        None => quote_ident(name),
    }
}

// ---------------------------------------------------------------------------------------------
// The target

pub struct PostgresTarget {
    spec: TargetSpec,
    pg: PostgresSpec,
    conn: ConnInfo,
    /// Rebuilt from a manifest: the URL is the redacted one, so only offline checks work.
    from_manifest: bool,
    tools: OnceLock<Tools>,
    /// A drill's scratch database, dropped with the target (held only for its `Drop`).
    #[allow(dead_code)]
    scratch: Option<ScratchDb>,
}

/// A scratch database created for a restore drill; dropped when this is.
struct ScratchDb {
    conn: ConnInfo,
    name: String,
}

impl ScratchDb {
    fn drop_now(&self) -> Result<()> {
        crate::runtime::block_on(async {
            let mut c = match PgConnection::connect_with(&self.conn.sqlx(Some("postgres"))?).await {
                Ok(c) => c,
                Err(_) => PgConnection::connect_with(&self.conn.sqlx(Some("template1"))?).await?,
            };
            let r = sqlx::query(&format!("DROP DATABASE IF EXISTS {}", quote_ident(&self.name)))
                .execute(&mut c)
                .await;
            let _ = c.close().await;
            r?;
            Ok(())
        })
    }
}

impl Drop for ScratchDb {
    fn drop(&mut self) {
        if let Err(e) = self.drop_now() {
            eprintln!(
                "guard: could not drop the drill's scratch database {}: {}; drop it by hand",
                self.name,
                secrets::redact(&format!("{e:#}"))
            );
        }
    }
}

impl PostgresTarget {
    pub fn new(spec: TargetSpec, pg: PostgresSpec) -> Result<Self> {
        let conn = ConnInfo::parse(&pg.url).with_context(|| format!("target {}", spec.name))?;
        if let Some(p) = &conn.password {
            secrets::register(p);
        }
        Ok(PostgresTarget {
            spec,
            pg,
            conn,
            from_manifest: false,
            tools: OnceLock::new(),
            scratch: None,
        })
    }

    /// A target rebuilt from a manifest's record: it can check artifacts offline (`guard
    /// verify`), but reaching the database needs the policy's URL, which guard never stores.
    pub fn from_record(rec: &TargetRecord) -> Result<Self> {
        let pg = PostgresSpec {
            url: rec.source.clone(),
            format: if rec.artifacts.first().map(|a| a.format.as_str()) == Some("pg-plain") {
                PgFormat::Plain
            } else {
                PgFormat::Custom
            },
            csv_tables: Vec::new(),
            pg_bin: None,
            sessions: Sessions::Refuse,
            drill_url: None,
        };
        let spec = TargetSpec {
            name: rec.name.clone(),
            line: 0,
            kind: TargetKind::Postgres(pg.clone()),
        };
        let conn = ConnInfo::parse(&pg.url).unwrap_or_default();
        Ok(PostgresTarget {
            spec,
            pg,
            conn,
            from_manifest: true,
            tools: OnceLock::new(),
            scratch: None,
        })
    }

    fn dbname(&self) -> String {
        self.conn
            .dbname
            .clone()
            .or_else(|| std::env::var("PGDATABASE").ok())
            .or_else(|| self.conn.user.clone())
            .or_else(|| std::env::var("PGUSER").ok())
            .unwrap_or_else(|| "postgres".into())
    }

    fn live(&self) -> Result<()> {
        if self.from_manifest {
            bail!(
                "target {}: the policy no longer names this postgres target, and guard does not store database URLs (they may hold passwords); add the target back to the policy to restore or query it",
                self.spec.name
            );
        }
        Ok(())
    }

    async fn connect_to(&self, dbname: Option<&str>) -> Result<PgConnection> {
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

    fn connect(&self) -> Result<PgConnection> {
        self.live()?;
        crate::runtime::block_on(self.connect_to(None))
    }

    /// A connection to the target's database, or to a maintenance database of the same
    /// server when the target's does not exist (a command dropped it).
    fn connect_server(&self) -> Result<PgConnection> {
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

    /// Recreate the target's database when it is gone, as recorded at snapshot time (owner,
    /// encoding, collation), so the dump has somewhere to go.
    fn ensure_database(&self, rec: &TargetRecord, db: &str) -> Result<()> {
        if let Ok(c) = crate::runtime::block_on(self.connect_to(Some(db))) {
            crate::runtime::block_on(async {
                let _ = c.close().await;
            });
            return Ok(());
        }
        let mut c = crate::runtime::block_on(self.connect_to(Some("postgres")))
            .or_else(|_| crate::runtime::block_on(self.connect_to(Some("template1"))))?;
        let r: Result<()> = crate::runtime::block_on(async {
            let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
                .bind(db)
                .fetch_optional(&mut c)
                .await?;
            if exists.is_some() {
                return Ok(());
            }
            let sql = create_database_sql(db, rec, true);
            sqlx::query(&sql).execute(&mut c).await?;
            eprintln!(
                "guard: target {}: database {db} did not exist; created it to restore into",
                self.spec.name
            );
            Ok(())
        });
        crate::runtime::block_on(async {
            let _ = c.close().await;
        });
        r.with_context(|| format!("target {}: cannot recreate database {db}", self.spec.name))
    }

    /// Client tools for the live server (chosen once).
    fn tools(&self) -> Result<Tools> {
        if let Some(t) = self.tools.get() {
            return Ok(t.clone());
        }
        let mut c = self.connect_server()?;
        let num: String = crate::runtime::block_on(async {
            let r = sqlx::query_scalar::<_, String>("SHOW server_version_num")
                .fetch_one(&mut c)
                .await;
            let _ = c.close().await;
            r
        })?;
        let num: u32 = num.trim().parse().map_err(|_| anyhow!("server_version_num {num:?}"))?;
        let need = if num >= 100000 { num / 10000 * 100 } else { num / 100 };
        let t = find_tools(
            self.pg.pg_bin.as_deref(),
            need,
            &format!("target {}: the server", self.spec.name),
        )?;
        let _ = self.tools.set(t.clone());
        Ok(t)
    }

    /// Tools able to read a dump made by pg_dump `dump_version` (for offline checks).
    fn tools_for_dump(&self, rec: &TargetRecord) -> Result<Tools> {
        if let Some(t) = self.tools.get() {
            return Ok(t.clone());
        }
        let need = rec.tools.get("pg_dump").and_then(|v| major_of(v)).unwrap_or(0);
        find_tools(
            self.pg.pg_bin.as_deref(),
            need,
            &format!("target {}: the snapshot's pg_dump", rec.name),
        )
    }

    /// A client tool connecting to this target's server, with 1 MiB stdio buffers on
    /// `streams` (see [`Tools::buffered`]).
    fn child(&self, tools: &Tools, name: &str, streams: &[&str]) -> Command {
        let mut c = tools.buffered(name, streams);
        self.conn.apply_env(&mut c, None);
        c
    }

    fn artifact_ext(&self) -> (&'static str, &'static str) {
        match self.pg.format {
            PgFormat::Custom => ("dump.gz", "pg-custom"),
            PgFormat::Plain => ("sql.gz", "pg-plain"),
        }
    }

    /// Sessions on the database other than guard's own; waits briefly for ones that are
    /// closing (guard's own check connections, a finished migration).
    fn other_sessions(&self, db: &str) -> Result<Vec<String>> {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let mut c = self.connect_server()?;
            let rows = crate::runtime::block_on(async {
                let r = sqlx::query(
                    "SELECT pid, coalesce(usename, ''), coalesce(application_name, ''), coalesce(client_addr::text, 'local'), coalesce(state, '')
                     FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid() AND backend_type = 'client backend' ORDER BY pid",
                )
                .bind(db)
                .fetch_all(&mut c)
                .await;
                let _ = c.close().await;
                r
            })?;
            let list: Vec<String> = rows
                .iter()
                .map(|r| {
                    format!(
                        "pid {} (user {}, application {:?}, client {}, {})",
                        r.get::<i32, _>(0),
                        r.get::<String, _>(1),
                        r.get::<String, _>(2),
                        r.get::<String, _>(3),
                        r.get::<String, _>(4)
                    )
                })
                .collect();
            if list.is_empty() || Instant::now() >= deadline {
                return Ok(list);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Refuse, or terminate, other sessions on the database, per the policy.
    fn handle_sessions(&self, db: &str) -> Result<()> {
        let others = self.other_sessions(db)?;
        if others.is_empty() {
            return Ok(());
        }
        match self.pg.sessions {
            Sessions::Refuse => bail!(
                "target {}: {} other session(s) are connected to database {db}: {}. Stop them (the app: a `before` hook), or set `sessions = \"terminate\"` on the target to end them before restoring; nothing was changed",
                self.spec.name,
                others.len(),
                others.join("; ")
            ),
            Sessions::Terminate => {
                let mut c = self.connect_server()?;
                crate::runtime::block_on(async {
                    let r = sqlx::query(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
                    )
                    .bind(db)
                    .execute(&mut c)
                    .await;
                    let _ = c.close().await;
                    r
                })
                .with_context(|| format!("target {}: cannot terminate the other sessions on {db}", self.spec.name))?;
                let left = self.other_sessions(db)?;
                if !left.is_empty() {
                    bail!("target {}: sessions on {db} survived pg_terminate_backend: {}", self.spec.name, left.join("; "));
                }
                eprintln!("guard: target {}: terminated {} other session(s) on {db}: {}", self.spec.name, others.len(), others.join("; "));
                Ok(())
            }
        }
    }

    /// Check a stored dump whole with the stock tools: `pg_restore` parses every entry and
    /// data block of a custom archive and writes out the SQL it would run (and must write
    /// some); a plain dump must end with pg_dump's completion trailer. The artifact is read
    /// back from the store on the way, its stored and content checksums compared.
    fn validate_artifact(&self, rec: &TargetRecord, store: &dyn Store, tools: &Tools) -> Result<()> {
        let Some(a) = rec
            .artifacts
            .iter()
            .find(|a| a.format == "pg-custom" || a.format == "pg-plain")
        else {
            bail!("snapshot of {} has no dump artifact", rec.name);
        };
        let where_ = format!("{}/{}", store.location(), a.key);
        if a.format == "pg-plain" {
            let mut w = TailWriter::default();
            read_artifact(store, a, &mut w)?;
            w.plain_dump_complete().with_context(|| where_.clone())?;
            return Ok(());
        }
        let mut child = Command::new(tools.bin("pg_restore"))
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot run {}", tools.bin("pg_restore").display()))?;
        let err = drain(child.stderr.take().expect("piped"));
        let mut out = child.stdout.take().expect("piped");
        // Bytes of SQL pg_restore wrote: an archive with nothing in it is not a dump.
        let counter = std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()).unwrap_or(0));
        let mut stdin = WriteFailed {
            inner: child.stdin.take().expect("piped"),
            failed: false,
        };
        let fed = read_artifact(store, a, &mut stdin);
        drop(stdin.inner);
        let status = child.wait()?;
        let n = counter.join().map_err(|_| anyhow!("reader thread panicked"))?;
        let stderr = err.join().unwrap_or_default();
        // pg_restore stopping early breaks the pipe: then its own error is the one to report.
        if fed.is_ok() || status.success() || !stdin.failed {
            fed.with_context(|| format!("{where_}: reading the artifact for pg_restore"))?;
        }
        if !status.success() {
            bail!(
                "{where_}: pg_restore cannot read the archive ({}): {}",
                status_text(status),
                tail(&stderr)
            );
        }
        if n == 0 {
            bail!("{where_}: pg_restore found nothing in the archive");
        }
        Ok(())
    }

    /// pg_dump into the store, fingerprints and CSV exports, all from one database snapshot.
    fn snapshot_live(&self, ctx: &SnapshotCtx, rec: &mut TargetRecord, tools: &Tools) -> Result<()> {
        let name = &self.spec.name;
        let mut conn = self.connect()?;
        let (snapshot_id, server_version) = crate::runtime::block_on(async {
            sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .execute(&mut conn)
                .await?;
            let id: String = sqlx::query_scalar("SELECT pg_export_snapshot()")
                .fetch_one(&mut conn)
                .await?;
            let v: String = sqlx::query_scalar("SHOW server_version").fetch_one(&mut conn).await?;
            Ok::<_, sqlx::Error>((id, v))
        })
        .with_context(|| format!("target {name}: cannot open a snapshot transaction"))?;
        rec.tools.insert("server".into(), server_version);
        rec.tools.insert("pg_dump".into(), tools.version.clone());
        let dbmeta: Option<(String, String, String, String)> = crate::runtime::block_on(
            sqlx::query_as(
                "SELECT pg_encoding_to_char(d.encoding)::text, d.datcollate::text, d.datctype::text, r.rolname::text
                 FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba WHERE d.datname = current_database()",
            )
            .fetch_optional(&mut conn),
        )?;
        if let Some((enc, collate, ctype, owner)) = dbmeta {
            rec.meta.insert("db_encoding".into(), enc);
            rec.meta.insert("db_collate".into(), collate);
            rec.meta.insert("db_ctype".into(), ctype);
            rec.meta.insert("db_owner".into(), owner);
        }

        // public schema's owner and grants, to recreate it exactly on restore.
        let public: Option<(String, Vec<(String, String)>)> = crate::runtime::block_on(async {
            let owner: Option<String> =
                sqlx::query_scalar("SELECT r.rolname::text FROM pg_namespace n JOIN pg_roles r ON r.oid = n.nspowner WHERE n.nspname = 'public'")
                    .fetch_optional(&mut conn)
                    .await?;
            let Some(owner) = owner else {
                return Ok::<_, sqlx::Error>(None);
            };
            let grants: Vec<(String, String)> = sqlx::query_as(
                "SELECT CASE WHEN a.grantee = 0 THEN '' ELSE (SELECT rolname::text FROM pg_roles WHERE oid = a.grantee) END, a.privilege_type
                 FROM pg_namespace n, aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a
                 WHERE n.nspname = 'public' AND a.grantee <> n.nspowner ORDER BY 1, 2",
            )
            .fetch_all(&mut conn)
            .await?;
            Ok(Some((owner, grants)))
        })?;
        if let Some((owner, grants)) = public {
            rec.meta.insert(
                "public_schema".into(),
                serde_json::json!({"owner": owner, "grants": grants}).to_string(),
            );
        }

        let (ext, format) = self.artifact_ext();
        let mut cmd = self.child(tools, "pg_dump", &["-o"]);
        cmd.arg("--no-password")
            .arg("--lock-wait-timeout=120s")
            .arg(format!("--snapshot={snapshot_id}"));
        match self.pg.format {
            PgFormat::Custom => cmd.args(["-Fc", "-Z0"]),
            PgFormat::Plain => cmd.args(["-Fp"]),
        };
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot run {}", tools.bin("pg_dump").display()))?;
        let err = drain(child.stderr.take().expect("piped"));
        let mut check = match DumpCheck::start(tools, self.pg.format) {
            Ok(c) => c,
            Err(e) => {
                kill(&mut child);
                return Err(e);
            }
        };
        let out = child.stdout.take().expect("piped");
        widen_pipe(&out);
        let stdout = Tee {
            inner: out,
            check: &mut check,
        };
        let compression = ctx.compression.default_level(DUMP_LEVEL);
        let items = ctx.fingerprint.to_vec();
        let lenient = ctx.allow_absent;

        // Fingerprints run in the exported snapshot while pg_dump streams into the store.
        let (written, (conn_back, fps)) = std::thread::scope(|s| {
            let fp = s.spawn(move || {
                let r = crate::runtime::block_on(fingerprints(&mut conn, &items, lenient));
                (conn, r)
            });
            let w = ctx.write_artifact_with(ctx.key(name, ext), format, stdout, compression);
            (w, fp.join().expect("fingerprint thread"))
        });
        let mut conn = conn_back;
        let written = match written {
            Ok(a) => a,
            Err(e) => {
                kill(&mut child);
                return Err(e.context(format!("target {name}: storing pg_dump's output")));
            }
        };
        // A failed fingerprint query aborts the exporting transaction, which then fails
        // pg_dump's snapshot import: report the cause, not the symptom.
        let fps = match fps {
            Ok(f) => f,
            Err(e) => {
                kill(&mut child);
                return Err(e.context(format!("target {name}: fingerprints")));
            }
        };
        let status = child.wait()?;
        let stderr = err.join().unwrap_or_default();
        if !status.success() {
            bail!("target {name}: pg_dump {}: {}", status_text(status), tail(&stderr));
        }
        if written.raw_bytes == 0 {
            bail!("target {name}: pg_dump wrote nothing");
        }
        check
            .finish()
            .with_context(|| format!("target {name}: the dump failed validation"))?;
        rec.artifacts.push(written);
        rec.fingerprints = fps;

        for table in &self.pg.csv_tables {
            let stmt = format!("COPY {} TO STDOUT WITH (FORMAT csv, HEADER)", qualified(table));
            let a = {
                let stream = crate::runtime::block_on(conn.copy_out_raw(&stmt))
                    .with_context(|| format!("target {name}: exporting {table} as CSV"))?;
                let reader = StreamReader {
                    stream,
                    buf: Vec::new(),
                    pos: 0,
                };
                ctx.write_artifact_with(ctx.key(name, &format!("{table}.csv.gz")), "csv", reader, compression)
                    .with_context(|| format!("target {name}: exporting {table} as CSV"))?
            };
            rec.artifacts.push(a);
        }
        crate::runtime::block_on(async {
            let _ = sqlx::query("COMMIT").execute(&mut conn).await;
            let _ = conn.close().await;
        });
        // The artifacts are read back from the store, against their checksums, by
        // snapshot::take; the compressor proved each block inflates to what pg_dump wrote.
        Ok(())
    }
}

/// The stock tools' check of a dump, on pg_dump's output as it streams into the store:
/// `pg_restore` parses every entry and data block of a custom archive (into /dev/null); a
/// plain dump must end with pg_dump's completion trailer.
enum DumpCheck {
    Custom {
        child: Child,
        stdin: Option<std::process::ChildStdin>,
        stderr: Option<std::thread::JoinHandle<Vec<u8>>>,
    },
    Plain(TailWriter),
}

impl DumpCheck {
    fn start(tools: &Tools, format: PgFormat) -> Result<DumpCheck> {
        if format == PgFormat::Plain {
            return Ok(DumpCheck::Plain(TailWriter::default()));
        }
        let mut child = tools
            .buffered("pg_restore", &["-i"])
            .args(["-f", "/dev/null"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot run {}", tools.bin("pg_restore").display()))?;
        let stderr = Some(drain(child.stderr.take().expect("piped")));
        let stdin = child.stdin.take();
        if let Some(w) = &stdin {
            widen_pipe(w);
        }
        Ok(DumpCheck::Custom { child, stdin, stderr })
    }

    /// Feed the checker. A pg_restore that stopped reading is not an error here: its exit
    /// status, in [`DumpCheck::finish`], says why.
    fn feed(&mut self, buf: &[u8]) {
        match self {
            DumpCheck::Plain(t) => {
                let _ = t.write_all(buf);
            }
            DumpCheck::Custom { stdin, .. } => {
                if let Some(w) = stdin {
                    if w.write_all(buf).is_err() {
                        *stdin = None;
                    }
                }
            }
        }
    }

    fn finish(mut self) -> Result<()> {
        match &mut self {
            DumpCheck::Plain(t) => t.plain_dump_complete(),
            DumpCheck::Custom { child, stdin, stderr } => {
                stdin.take();
                let status = child.wait()?;
                let stderr = stderr.take().and_then(|h| h.join().ok()).unwrap_or_default();
                if !status.success() {
                    bail!(
                        "pg_restore cannot read the archive ({}): {}",
                        status_text(status),
                        tail(&stderr)
                    );
                }
                Ok(())
            }
        }
    }
}

impl Drop for DumpCheck {
    fn drop(&mut self) {
        if let DumpCheck::Custom { child, stdin, .. } = self {
            stdin.take();
            // Finished already, or stopped early: never leave a pg_restore behind.
            if let Ok(None) = child.try_wait() {
                kill(child);
            }
        }
    }
}

/// pg_dump's output on its way into the store, fed to the [`DumpCheck`] as it is read.
struct Tee<'a, R> {
    inner: R,
    check: &'a mut DumpCheck,
}

impl<R: Read> Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.check.feed(&buf[..n]);
        Ok(n)
    }
}

/// Passes writes through, remembering whether one failed.
struct WriteFailed<W> {
    inner: W,
    failed: bool,
}

impl<W: Write> Write for WriteFailed<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let r = self.inner.write(buf);
        self.failed |= r.is_err();
        r
    }
    fn flush(&mut self) -> std::io::Result<()> {
        let r = self.inner.flush();
        self.failed |= r.is_err();
        r
    }
}

/// Keeps the last 4 KiB written to it.
#[derive(Default)]
struct TailWriter {
    tail: Vec<u8>,
}

impl TailWriter {
    /// Did a plain dump end with pg_dump's completion trailer?
    fn plain_dump_complete(&self) -> Result<()> {
        if !String::from_utf8_lossy(&self.tail).contains("PostgreSQL database dump complete") {
            bail!("the plain dump lacks pg_dump's \"dump complete\" trailer (truncated)");
        }
        Ok(())
    }
}

impl Write for TailWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tail.extend_from_slice(buf);
        if self.tail.len() > 8192 {
            let cut = self.tail.len() - 4096;
            self.tail.drain(..cut);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A blocking reader over sqlx's COPY OUT stream.
struct StreamReader<S> {
    stream: S,
    buf: Vec<u8>,
    pos: usize,
}

impl<S, B> Read for StreamReader<S>
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

// ---------------------------------------------------------------------------------------------
// Fingerprints

/// Schema fingerprint parts: (key suffix, query returning one text line per object).
const SCHEMA_PARTS: [(&str, &str); 7] = [
    (
        "schemas",
        "SELECT n.nspname || ' owner ' || n.nspowner::regrole::text FROM pg_namespace n
         WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'",
    ),
    (
        "tables",
        "SELECT n.nspname || '.' || c.relname || ' ' || c.relkind::text || ' owner ' || c.relowner::regrole::text
           || coalesce(' ' || md5(CASE WHEN c.relkind IN ('v','m') THEN pg_get_viewdef(c.oid) END), '')
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind IN ('r','p','v','m','f','S') AND n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'",
    ),
    (
        "columns",
        "SELECT n.nspname || '.' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
           || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
           || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
           || CASE WHEN a.attgenerated <> '' THEN ' generated' ELSE '' END
         FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
         LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r','p','v','m','f')
           AND n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'",
    ),
    (
        "indexes",
        "SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
         JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'",
    ),
    (
        "constraints",
        "SELECT n.nspname || '.' || coalesce(r.relname, t.typname, '') || ' ' || con.conname || ' ' || pg_get_constraintdef(con.oid)
         FROM pg_constraint con JOIN pg_namespace n ON n.oid = con.connamespace
         LEFT JOIN pg_class r ON r.oid = con.conrelid LEFT JOIN pg_type t ON t.oid = con.contypid
         WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'",
    ),
    (
        "triggers",
        "SELECT pg_get_triggerdef(t.oid) || CASE t.tgenabled WHEN 'D' THEN ' disabled' ELSE '' END
         FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE NOT t.tgisinternal AND n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'",
    ),
    (
        "functions",
        "SELECT p.oid::regprocedure::text || ' ' || p.prokind::text || ' returns ' || format_type(p.prorettype, NULL) || ' ' || md5(coalesce(p.prosrc, ''))
         FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'
           AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')",
    ),
];

fn hash_lines(lines: &[String]) -> Fingerprint {
    let mut h = Sha256::new();
    for l in lines {
        h.update((l.len() as u64).to_le_bytes());
        h.update(l.as_bytes());
    }
    Fingerprint {
        rows: lines.len() as u64,
        hash: Some(hex::encode(&h.finalize()[..16])),
    }
}

/// `@schema` (everything) and `@schema.PART` fingerprints.
async fn schema_fingerprints(c: &mut PgConnection) -> Result<BTreeMap<String, Fingerprint>> {
    let mut out = BTreeMap::new();
    let mut all = Vec::new();
    for (part, q) in SCHEMA_PARTS {
        let mut lines: Vec<String> = sqlx::query_scalar::<_, Option<String>>(q)
            .fetch_all(&mut *c)
            .await
            .with_context(|| format!("schema fingerprint ({part})"))?
            .into_iter()
            .map(|l| l.unwrap_or_default())
            .collect();
        lines.sort();
        out.insert(format!("@schema.{part}"), hash_lines(&lines));
        all.extend(lines.into_iter().map(|l| format!("{part}: {l}")));
    }
    out.insert("@schema".into(), hash_lines(&all));
    Ok(out)
}

/// Row count and order-independent content hash of one table: the sum (not xor, so duplicate
/// rows do not cancel) of a 64-bit hash of each row's text form.
async fn table_fingerprint(c: &mut PgConnection, table: &str) -> Result<Fingerprint> {
    let q = qualified(table);
    let exists: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
        .bind(&q)
        .fetch_one(&mut *c)
        .await?;
    if exists.is_none() {
        bail!("table {table:?} does not exist");
    }
    let (rows, hash): (i64, String) = sqlx::query_as(&format!(
        "SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)), 0)::text FROM {q} t"
    ))
    .fetch_one(&mut *c)
    .await
    .with_context(|| format!("fingerprint of {table}"))?;
    Ok(Fingerprint {
        rows: rows as u64,
        hash: Some(hash),
    })
}

/// Row counts of every user table, hashes of `hashed`, and the schema fingerprints. With
/// `lenient` (rescue snapshots of a failed state), a hashed table that no longer exists is
/// skipped instead of failing.
async fn fingerprints(c: &mut PgConnection, hashed: &[String], lenient: bool) -> Result<BTreeMap<String, Fingerprint>> {
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT n.nspname::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind IN ('r','p') AND n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'
           AND NOT c.relispartition ORDER BY 1, 2",
    )
    .fetch_all(&mut *c)
    .await?;
    let mut out = BTreeMap::new();
    for (schema, table) in tables {
        let key = if schema == "public" {
            table.clone()
        } else {
            format!("{schema}.{table}")
        };
        let n: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {}.{}",
            quote_ident(&schema),
            quote_ident(&table)
        ))
        .fetch_one(&mut *c)
        .await?;
        out.insert(
            key,
            Fingerprint {
                rows: n as u64,
                hash: None,
            },
        );
    }
    for t in hashed {
        if t.starts_with('@') {
            continue;
        }
        match table_fingerprint(c, t).await {
            Ok(f) => {
                out.insert(t.clone(), f);
            }
            Err(_) if lenient => {}
            Err(e) => return Err(e),
        }
    }
    out.extend(schema_fingerprints(c).await?);
    Ok(out)
}

/// The SQL run before the dump's own, in the restore's transaction: drop every user schema
/// (with everything in it, including what a failed migration added), recreate `public` as
/// recorded, and unlink large objects (the dump recreates its own).
fn restore_preamble(rec: &TargetRecord) -> Result<String> {
    let mut s = String::from(
        "\\set ON_ERROR_STOP 1\nBEGIN;\nSET LOCAL lock_timeout = '60s';\n\
         DO $guard$ DECLARE s text; BEGIN\n\
           FOR s IN SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema' LOOP\n\
             EXECUTE format('DROP SCHEMA %I CASCADE', s);\n\
           END LOOP;\n\
           PERFORM pg_catalog.lo_unlink(oid) FROM pg_catalog.pg_largeobject_metadata;\n\
         END $guard$;\n",
    );
    if let Some(p) = rec.meta.get("public_schema") {
        let v: serde_json::Value = serde_json::from_str(p).context("manifest: public_schema")?;
        let owner = v["owner"]
            .as_str()
            .ok_or_else(|| anyhow!("manifest: public_schema.owner"))?;
        s.push_str(&format!("CREATE SCHEMA public AUTHORIZATION {};\n", quote_ident(owner)));
        for g in v["grants"].as_array().cloned().unwrap_or_default() {
            let grantee = g[0].as_str().unwrap_or("");
            let privilege = g[1].as_str().unwrap_or("");
            if !matches!(privilege, "USAGE" | "CREATE") {
                continue;
            }
            let to = if grantee.is_empty() {
                "PUBLIC".to_string()
            } else {
                quote_ident(grantee)
            };
            s.push_str(&format!("GRANT {privilege} ON SCHEMA public TO {to};\n"));
        }
    }
    Ok(s)
}

impl PostgresTarget {
    /// Restore `rec` into a new scratch database — on `drill_url`'s server (its database name
    /// is the scratch database's) or beside the live one — and prove it matches the snapshot.
    fn drill_into_scratch(&self, rec: &TargetRecord, store: &dyn Store) -> Result<PostgresTarget> {
        let (mut conn, shown, name) = match &self.pg.drill_url {
            Some(u) => {
                let c = ConnInfo::parse(u).context("drill_url")?;
                if let Some(p) = &c.password {
                    secrets::register(p);
                }
                let name = c
                    .dbname
                    .clone()
                    .unwrap_or_else(|| format!("guard_drill_{}", self.spec.name.replace(['-', '.'], "_")));
                (c, secrets::redact_url(u), name)
            }
            None => (
                self.conn.clone(),
                self.source(),
                format!(
                    "guard_drill_{}_{:08x}",
                    self.spec.name.replace(['-', '.'], "_").to_lowercase(),
                    rand::random::<u32>()
                ),
            ),
        };
        conn.dbname = Some(name.clone());
        let maint = {
            let o = conn.sqlx(Some("postgres"))?;
            let o1 = conn.sqlx(Some("template1"))?;
            crate::runtime::block_on(PgConnection::connect_with(&o))
                .or_else(|_| crate::runtime::block_on(PgConnection::connect_with(&o1)))
                .map_err(|e| {
                    anyhow!(
                        "cannot connect to the drill server {shown}: {}",
                        secrets::redact(&e.to_string())
                    )
                })?
        };
        let mut maint = maint;
        let created: Result<()> = crate::runtime::block_on(async {
            let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
                .bind(&name)
                .fetch_optional(&mut maint)
                .await?;
            if exists.is_some() {
                bail!("the drill's scratch database {name} already exists on {shown}; guard never drops a database it did not create (drop it by hand if a killed drill left it)");
            }
            let sql = create_database_sql(&name, rec, false);
            sqlx::query(&sql).execute(&mut maint).await.with_context(|| format!("creating the drill's scratch database {name} on {shown} (set drill_url to a server where guard may create databases)"))?;
            Ok(())
        });
        crate::runtime::block_on(async {
            let _ = maint.close().await;
        });
        created?;
        let scratch = ScratchDb {
            conn: conn.clone(),
            name: name.clone(),
        };
        let pg = PostgresSpec {
            url: format!("{shown} (scratch database {name})"),
            sessions: Sessions::Refuse,
            drill_url: None,
            ..self.pg.clone()
        };
        let t = PostgresTarget {
            spec: TargetSpec {
                kind: TargetKind::Postgres(pg.clone()),
                ..self.spec.clone()
            },
            pg,
            conn,
            from_manifest: false,
            tools: OnceLock::new(),
            scratch: Some(scratch),
        };
        t.restore(rec, store)?;
        t.verify_restored(rec)
            .context("the restored copy does not match the snapshot")?;
        Ok(t)
    }
}

impl Target for PostgresTarget {
    fn spec(&self) -> &TargetSpec {
        &self.spec
    }

    fn source(&self) -> String {
        secrets::redact(&secrets::redact_url(&self.pg.url))
    }

    fn preflight(&self) -> Result<()> {
        self.live()?;
        self.tools().map(|_| ())
    }

    fn snapshot(&self, ctx: &SnapshotCtx) -> Result<TargetRecord> {
        self.live()?;
        let mut rec = TargetRecord {
            name: self.spec.name.clone(),
            kind: "postgres".into(),
            source: self.source(),
            ..Default::default()
        };
        rec.meta.insert("database".into(), self.dbname());
        if ctx.allow_absent {
            // A rescue of a dropped database records it as absent.
            match crate::runtime::block_on(self.connect_to(None)) {
                Ok(c) => crate::runtime::block_on(async {
                    let _ = c.close().await;
                }),
                Err(e) if format!("{e:#}").contains("does not exist") => {
                    rec.absent = true;
                    return Ok(rec);
                }
                Err(e) => return Err(e),
            }
        }
        let tools = self.tools()?;
        self.snapshot_live(ctx, &mut rec, &tools)?;
        Ok(rec)
    }

    fn drill(&self, rec: &TargetRecord, store: &dyn Store, scratch: &Path) -> Result<Option<Box<dyn Target>>> {
        self.deep_verify(rec, store, scratch)?;
        if rec.absent {
            return Ok(None);
        }
        self.live()?;
        Ok(Some(Box::new(self.drill_into_scratch(rec, store)?)))
    }

    fn deep_verify(&self, rec: &TargetRecord, store: &dyn Store, _scratch: &Path) -> Result<()> {
        let tools = self.tools_for_dump(rec)?;
        self.validate_artifact(rec, store, &tools)?;
        for a in rec.artifacts.iter().filter(|a| a.format == "csv") {
            read_artifact(store, a, std::io::sink())?;
        }
        Ok(())
    }

    fn restore(&self, rec: &TargetRecord, store: &dyn Store) -> Result<()> {
        self.live()?;
        let name = &self.spec.name;
        let db = self.dbname();
        if rec.absent {
            self.handle_sessions(&db)?;
            let mut c = crate::runtime::block_on(self.connect_to(Some("postgres")))?;
            crate::runtime::block_on(async {
                let r = sqlx::query(&format!("DROP DATABASE IF EXISTS {}", quote_ident(&db)))
                    .execute(&mut c)
                    .await;
                let _ = c.close().await;
                r
            })?;
            return Ok(());
        }
        let a = rec
            .artifacts
            .iter()
            .find(|a| a.format == "pg-custom" || a.format == "pg-plain")
            .ok_or_else(|| anyhow!("snapshot of {name} has no dump artifact"))?;
        let tools = self.tools()?;
        if let Some(need) = rec.tools.get("pg_dump").and_then(|v| major_of(v)) {
            if tools.major < need {
                bail!(
                    "target {name}: the dump was made by pg_dump {}; pg_restore {} cannot read it. Install postgresql-client-{} or set pg_bin",
                    rec.tools["pg_dump"],
                    tools.version,
                    major_name(need)
                );
            }
        }
        self.ensure_database(rec, &db)?;
        self.handle_sessions(&db)?;
        let preamble = restore_preamble(rec)?;

        // psql reads one pipe: guard writes the preamble into it, then pg_restore writes the
        // dump's SQL straight into it (no copy through guard), then guard writes COMMIT.
        let (from_guard, mut to_psql) = std::io::pipe().context("creating a pipe for psql")?;
        widen_pipe(&to_psql);
        let mut psql = self
            .child(&tools, "psql", &["-i"])
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-"])
            .stdin(from_guard)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot run {}", tools.bin("psql").display()))?;
        let psql_err = drain(psql.stderr.take().expect("piped"));
        let psql_out = drain(psql.stdout.take().expect("piped"));

        // Feed psql: preamble, the dump's SQL, and COMMIT only when all of it arrived intact.
        let fed: Result<()> = (|| {
            to_psql.write_all(preamble.as_bytes()).context("psql stopped reading")?;
            match a.format.as_str() {
                "pg-plain" => {
                    read_artifact(store, a, &mut to_psql)?;
                }
                _ => {
                    // The Command (holding the other copy of the pipe's write end) is dropped
                    // at the end of this statement: pg_restore's is the only one left open.
                    let mut pr = tools
                        .buffered("pg_restore", &["-i", "-o"])
                        .args(["-f", "-"])
                        .stdin(Stdio::piped())
                        .stdout(to_psql.try_clone().context("creating a pipe for psql")?)
                        .stderr(Stdio::piped())
                        .spawn()
                        .with_context(|| format!("cannot run {}", tools.bin("pg_restore").display()))?;
                    let pr_err = drain(pr.stderr.take().expect("piped"));
                    let pr_in = pr.stdin.take().expect("piped");
                    widen_pipe(&pr_in);
                    let fed = read_artifact(store, a, pr_in);
                    let status = pr.wait()?;
                    let stderr = pr_err.join().unwrap_or_default();
                    fed.context("reading the artifact")?;
                    if !status.success() {
                        bail!("pg_restore {}: {}", status_text(status), tail(&stderr));
                    }
                }
            }
            to_psql.write_all(b"\nCOMMIT;\n").context("psql stopped reading")?;
            Ok(())
        })();
        drop(to_psql);
        if fed.is_err() {
            // No COMMIT was sent: make sure the transaction cannot complete.
            kill(&mut psql);
        }
        let status = psql.wait()?;
        let stderr = psql_err.join().unwrap_or_default();
        let _ = psql_out.join();
        if let Err(e) = fed {
            if !status.success() && !stderr.is_empty() {
                bail!(
                    "target {name}: restore rolled back, the database is unchanged: psql {}: {}",
                    status_text(status),
                    tail(&stderr)
                );
            }
            return Err(e.context(format!("target {name}: restore rolled back, the database is unchanged")));
        }
        if !status.success() {
            bail!(
                "target {name}: restore rolled back, the database is unchanged: psql {}: {}",
                status_text(status),
                tail(&stderr)
            );
        }
        Ok(())
    }

    fn verify_restored(&self, rec: &TargetRecord) -> Result<()> {
        self.live()?;
        if rec.absent {
            let c = crate::runtime::block_on(self.connect_to(None));
            return match c {
                Err(e) if format!("{e:#}").contains("does not exist") => Ok(()),
                Ok(_) => bail!("database {} exists but the snapshot recorded none", self.dbname()),
                Err(e) => Err(e),
            };
        }
        let mut c = self.connect()?;
        let hashed = rec.hashed_items();
        let got = crate::runtime::block_on(async {
            let r = fingerprints(&mut c, &hashed, false).await;
            let _ = c.close().await;
            r
        })?;
        super::sqlite::compare_fingerprints(&rec.fingerprints, &got)
    }

    fn fingerprint(&self, items: &[String]) -> Result<BTreeMap<String, Fingerprint>> {
        let mut c = self.connect()?;
        crate::runtime::block_on(async {
            let mut out = BTreeMap::new();
            let r: Result<()> = async {
                let schema =
                    if items.iter().any(|i| i.starts_with('@')) { schema_fingerprints(&mut c).await? } else { BTreeMap::new() };
                for t in items {
                    if t.starts_with('@') {
                        let f = schema.get(t).ok_or_else(|| anyhow!("unknown fingerprint {t:?} (known: @schema, @schema.tables, @schema.columns, @schema.indexes, @schema.constraints, @schema.triggers, @schema.functions, @schema.schemas)"))?;
                        out.insert(t.clone(), f.clone());
                    } else {
                        out.insert(t.clone(), table_fingerprint(&mut c, t).await?);
                    }
                }
                Ok(())
            }
            .await;
            let _ = c.close().await;
            r.map(|_| out)
        })
    }

    fn query(&self, sql: &str) -> Result<String> {
        let mut c = self.connect()?;
        crate::runtime::block_on(async {
            // The simple protocol returns every value in its text form, whatever its type.
            use futures_util::StreamExt as _;
            let r: Result<String> = async {
                let mut rows = sqlx::raw_sql(sql).fetch(&mut c);
                let first = rows
                    .next()
                    .await
                    .transpose()
                    .map_err(|e| anyhow!("{}", secrets::redact(&e.to_string())))?;
                // Read the rest so errors in later statements are not silently dropped.
                while let Some(r) = rows.next().await {
                    r.map_err(|e| anyhow!("{}", secrets::redact(&e.to_string())))?;
                }
                let Some(row) = first else {
                    return Ok("NULL".to_string());
                };
                if row.is_empty() {
                    return Ok("NULL".to_string());
                }
                let v: Option<String> = row.try_get_unchecked(0)?;
                Ok(v.unwrap_or_else(|| "NULL".into()))
            }
            .await;
            let _ = c.close().await;
            r
        })
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
    fn versions_parse() {
        assert_eq!(
            parse_tool_version("pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n").as_deref(),
            Some("15.18")
        );
        assert_eq!(
            parse_tool_version("pg_dump (PostgreSQL) 9.6.0").as_deref(),
            Some("9.6.0")
        );
        assert_eq!(
            parse_tool_version("pg_dump (PostgreSQL) 17beta1").as_deref(),
            Some("17beta1")
        );
        assert_eq!(major_of("15.18"), Some(1500));
        assert_eq!(major_of("9.6.0"), Some(906));
        assert_eq!(major_of("17beta1"), Some(1700));
        assert_eq!(major_name(1500), "15");
        assert_eq!(major_name(906), "9.6");
        assert!(major_of("9.6.0").unwrap() < major_of("10.1").unwrap());
    }

    fn fake_bin(version: &str, with_psql: bool) -> tempfile::TempDir {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let mut tools = vec!["pg_dump", "pg_restore"];
        if with_psql {
            tools.push("psql");
        }
        for t in tools {
            let p = d.path().join(t);
            std::fs::write(&p, format!("#!/bin/sh\necho '{t} (PostgreSQL) {version}'\n")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        d
    }

    #[test]
    fn tools_are_chosen_by_major_version() {
        let new = fake_bin("16.2", true);
        let t = find_tools(Some(new.path()), 1500, "the server").unwrap();
        assert_eq!((t.major, t.version.as_str()), (1600, "16.2"));
        assert_eq!(t.dir, new.path());

        let old = fake_bin("9.6.0", true);
        let e = format!("{:#}", find_tools(Some(old.path()), 1500, "the server").unwrap_err());
        assert!(
            e.contains("the server is PostgreSQL 15; pg_dump 15 or newer is needed"),
            "{e}"
        );
        assert!(e.contains("pg_dump 9.6.0") && e.contains("postgresql-client-15"), "{e}");

        let incomplete = fake_bin("17.0", false);
        let e = format!(
            "{:#}",
            find_tools(Some(incomplete.path()), 1500, "the server").unwrap_err()
        );
        assert!(e.contains("no psql beside it"), "{e}");
    }

    #[test]
    fn preamble_recreates_public_as_recorded() {
        let mut rec = TargetRecord::default();
        rec.meta.insert(
            "public_schema".into(),
            serde_json::json!({"owner": "pg_database_owner", "grants": [["", "USAGE"], ["bob\"x", "CREATE"]]})
                .to_string(),
        );
        let p = restore_preamble(&rec).unwrap();
        assert!(p.contains("BEGIN;"), "{p}");
        assert!(p.contains("DROP SCHEMA %I CASCADE"), "{p}");
        assert!(
            p.contains("CREATE SCHEMA public AUTHORIZATION \"pg_database_owner\";"),
            "{p}"
        );
        assert!(p.contains("GRANT USAGE ON SCHEMA public TO PUBLIC;"), "{p}");
        assert!(p.contains("GRANT CREATE ON SCHEMA public TO \"bob\"\"x\";"), "{p}");
        assert!(!p.contains("COMMIT"), "the preamble never commits: {p}");
    }
}
