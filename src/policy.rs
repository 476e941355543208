//! The policy file: what to protect, where snapshots go, what to check.
//!
//! A policy is TOML. Parsing is strict: unknown keys and wrong types are errors that name the
//! file and line; `${VAR}` references are expanded from the environment after the file has been
//! checked, and a missing variable is an error naming it and its line. Nothing is run or touched
//! while loading a policy.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use toml::Spanned;

use crate::secrets;

/// A loaded, validated policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    /// The policy file.
    pub file: PathBuf,
    /// Directory relative paths in the policy are resolved against.
    pub base_dir: PathBuf,
    pub store: StoreSpec,
    pub confirm: bool,
    pub retention: Retention,
    pub compression: Compression,
    pub targets: Vec<TargetSpec>,
    pub hooks: Hooks,
    pub checks: Vec<CheckSpec>,
    pub drill: Drill,
}

/// `[drill]`: restore drills.
#[derive(Debug, Clone, Default)]
pub struct Drill {
    /// `guard status` warns when the newest restorable snapshot is older than this.
    pub max_age: Option<Duration>,
    /// Shell command run when a drill fails, with the report's facts in `GUARD_DRILL_*`.
    pub on_failure: Option<String>,
    /// `[[drill.check]]`: checks run against the restored scratch copy.
    pub checks: Vec<CheckSpec>,
}

/// Where snapshots are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSpec {
    Local(PathBuf),
    S3 { bucket: String, prefix: String },
}

impl std::fmt::Display for StoreSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreSpec::Local(p) => write!(f, "{}", p.display()),
            StoreSpec::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    pub keep_within: Duration,
    pub keep_last: usize,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            keep_within: Duration::from_secs(30 * 86400),
            keep_last: 3,
        }
    }
}

/// gzip level and worker threads for artifacts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compression {
    pub level: u32,
    pub threads: usize,
    /// `[compression] level` is set in the policy: it then applies to every artifact, over the
    /// default of a target kind that has its own (PostgreSQL dumps).
    pub level_set: bool,
}

impl Default for Compression {
    fn default() -> Self {
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        Compression {
            level: 6,
            threads,
            level_set: false,
        }
    }
}

impl Compression {
    /// These settings with `level` as the default: the policy's own level still wins when set.
    pub fn default_level(self, level: u32) -> Compression {
        if self.level_set {
            self
        } else {
            Compression { level, ..self }
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Hooks {
    pub before: Vec<String>,
    pub after: Vec<String>,
}

/// One thing guard protects.
#[derive(Debug, Clone)]
pub struct TargetSpec {
    pub name: String,
    pub line: usize,
    pub kind: TargetKind,
}

#[derive(Debug, Clone)]
pub enum TargetKind {
    /// A SQLite database file.
    Sqlite { path: PathBuf },
    /// A directory tree.
    Dir { path: PathBuf },
    /// A PostgreSQL database, dumped with pg_dump.
    Postgres(PostgresSpec),
    /// An S3 bucket (or a prefix of one), cloned server-side.
    S3(S3Spec),
    /// A Turso database, branched through the Platform API.
    Turso(TursoSpec),
}

impl TargetKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            TargetKind::Sqlite { .. } => "sqlite",
            TargetKind::Dir { .. } => "dir",
            TargetKind::Postgres(_) => "postgres",
            TargetKind::S3(_) => "s3",
            TargetKind::Turso(_) => "turso",
        }
    }

    /// Does this kind answer `sql` checks?
    pub fn answers_sql(&self) -> bool {
        matches!(
            self,
            TargetKind::Sqlite { .. } | TargetKind::Postgres(_) | TargetKind::Turso(_)
        )
    }
}

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

/// `kind = "s3"`.
#[derive(Debug, Clone)]
pub struct S3Spec {
    pub bucket: String,
    pub prefix: String,
    pub clone_bucket: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub tags: S3Tags,
}

/// `tags` of an s3 target: how object tags are snapshotted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum S3Tags {
    /// Every snapshot reads every object's tag set; restore puts tag sets back exactly.
    Exact,
    /// Tags travel with the clone made when an object's content or metadata last changed;
    /// tag-only changes are neither seen nor undone. No per-object request for unchanged objects.
    WithContent,
}

impl S3Tags {
    pub fn as_str(self) -> &'static str {
        match self {
            S3Tags::Exact => "exact",
            S3Tags::WithContent => "with-content",
        }
    }
}

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

/// One verification run after the command.
#[derive(Debug, Clone)]
pub struct CheckSpec {
    pub name: String,
    pub line: usize,
    pub target: Option<String>,
    pub what: CheckWhat,
}

#[derive(Debug, Clone)]
pub enum CheckWhat {
    /// Fingerprints of these tables (or paths, for directory targets) must not change.
    Untouched(Vec<String>),
    /// A query whose single value is compared with `expect`.
    Sql { sql: String, expect: Expect },
    /// A shell command that must exit 0.
    Command { command: String },
    /// Object count or total bytes under a key prefix of an s3 target, compared with `expect`.
    Objects {
        prefix: String,
        measure: Measure,
        expect: Expect,
    },
}

/// What an [`CheckWhat::Objects`] check measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    /// `objects = "prefix/"`: how many objects.
    Count,
    /// `bytes = "prefix/"`: their total size.
    Bytes,
}

/// What a check's value must satisfy.
#[derive(Debug, Clone, PartialEq)]
pub enum Expect {
    Unchanged,
    Changed,
    Compare(Op, f64),
    Literal(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "==",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
        }
    }
}

impl std::fmt::Display for Expect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expect::Unchanged => f.write_str("unchanged"),
            Expect::Changed => f.write_str("changed"),
            Expect::Compare(op, n) => write!(f, "{} {}", op.as_str(), n),
            Expect::Literal(s) => write!(f, "{s:?}"),
        }
    }
}

impl Expect {
    /// Parse the `expect` string of a check.
    pub fn parse(s: &str) -> Result<Expect> {
        let t = s.trim();
        match t {
            "unchanged" => return Ok(Expect::Unchanged),
            "changed" => return Ok(Expect::Changed),
            _ => {}
        }
        for (prefix, op) in [
            ("==", Op::Eq),
            ("!=", Op::Ne),
            ("<=", Op::Le),
            (">=", Op::Ge),
            ("<", Op::Lt),
            (">", Op::Gt),
        ] {
            if let Some(rest) = t.strip_prefix(prefix) {
                let n: f64 = rest
                    .trim()
                    .parse()
                    .map_err(|_| anyhow!("expect {s:?}: {:?} is not a number after {prefix}", rest.trim()))?;
                return Ok(Expect::Compare(op, n));
            }
        }
        Ok(Expect::Literal(t.to_string()))
    }
}

// ---------------------------------------------------------------------------------------------
// Raw TOML shape. Every table denies unknown fields so a typo is an error with a line number.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    name: Spanned<String>,
    store: Option<Spanned<String>>,
    #[serde(default)]
    confirm: bool,
    retention: Option<RawRetention>,
    compression: Option<RawCompression>,
    #[serde(default)]
    target: Vec<Spanned<RawTarget>>,
    hooks: Option<RawHooks>,
    #[serde(default)]
    check: Vec<Spanned<RawCheck>>,
    drill: Option<RawDrill>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDrill {
    max_age: Option<Spanned<String>>,
    on_failure: Option<String>,
    #[serde(default)]
    check: Vec<Spanned<RawCheck>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    keep_within: Option<Spanned<String>>,
    keep_last: Option<Spanned<usize>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCompression {
    level: Option<Spanned<u32>>,
    threads: Option<Spanned<usize>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    name: String,
    kind: String,
    // sqlite, dir
    path: Option<String>,
    // postgres
    url: Option<String>,
    format: Option<String>,
    csv_tables: Option<Vec<String>>,
    pg_bin: Option<String>,
    sessions: Option<String>,
    drill_url: Option<String>,
    // s3
    bucket: Option<String>,
    prefix: Option<String>,
    clone_bucket: Option<String>,
    endpoint: Option<String>,
    region: Option<String>,
    tags: Option<String>,
    // turso
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

impl RawTarget {
    /// Keys that are set, by name, for "does not apply to this kind" errors.
    fn present_keys(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        macro_rules! k {
            ($($f:ident),*) => { $( if self.$f.is_some() { v.push(stringify!($f)); } )* };
        }
        k!(
            path,
            url,
            format,
            csv_tables,
            pg_bin,
            sessions,
            drill_url,
            bucket,
            prefix,
            clone_bucket,
            endpoint,
            region,
            tags,
            organization,
            database,
            group,
            api_token,
            api_url,
            db_url,
            db_token,
            export,
            restore
        );
        v
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHooks {
    #[serde(default)]
    before: Vec<String>,
    #[serde(default)]
    after: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    name: String,
    target: Option<String>,
    untouched: Option<Vec<String>>,
    sql: Option<String>,
    expect: Option<String>,
    command: Option<String>,
    /// s3 targets: count of objects / total bytes under this key prefix.
    objects: Option<String>,
    bytes: Option<String>,
}

/// Line (1-based) of a byte offset in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Find the policy file the user means.
///
/// `--policy PATH` (an existing file), `--policy NAME` (`policies/NAME.toml`), `$GUARD_POLICY`,
/// or `./guard.toml`, in that order.
pub fn locate(arg: Option<&str>) -> Result<PathBuf> {
    let chosen = match arg {
        Some(a) => Some(a.to_string()),
        None => std::env::var("GUARD_POLICY").ok().filter(|s| !s.is_empty()),
    };
    match chosen {
        Some(p) => {
            let path = PathBuf::from(&p);
            if path.is_file() {
                return Ok(path);
            }
            let named = PathBuf::from("policies").join(format!("{p}.toml"));
            if !p.contains('/') && !p.ends_with(".toml") && named.is_file() {
                return Ok(named);
            }
            bail!(
                "policy {p:?} not found (looked for the file {p:?} and {})",
                named.display()
            )
        }
        None => {
            let path = PathBuf::from("guard.toml");
            if path.is_file() {
                Ok(path)
            } else {
                bail!("no policy given: pass --policy PATH|NAME, set GUARD_POLICY, or create ./guard.toml")
            }
        }
    }
}

/// Read and validate a policy file.
pub fn load(path: &Path) -> Result<Policy> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read policy {}", path.display()))?;
    parse(&text, path)
}

/// Parse policy text; `path` names the file in messages and anchors relative paths.
pub fn parse(text: &str, path: &Path) -> Result<Policy> {
    let shown = path.display().to_string();
    check_variables(text, &shown)?;
    let raw: RawPolicy = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| line_of(text, s.start));
        let msg = e.message().trim().to_string();
        match line {
            Some(l) => anyhow!("{shown}:{l}: {msg}"),
            None => anyhow!("{shown}: {msg}"),
        }
    })?;
    let at = |span: std::ops::Range<usize>| format!("{shown}:{}", line_of(text, span.start));
    let base_dir = path
        .parent()
        .map(|p| if p.as_os_str().is_empty() { Path::new(".") } else { p })
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let base_dir = std::fs::canonicalize(&base_dir).unwrap_or(base_dir);
    let resolve = |p: &str| -> PathBuf {
        let p = PathBuf::from(p);
        if p.is_absolute() {
            p
        } else {
            base_dir.join(p)
        }
    };

    let name = expand(raw.name.get_ref());
    if !valid_name(&name) {
        bail!(
            "{}: policy name {name:?} must be 1-64 characters of letters, digits, '-', '_' or '.'",
            at(raw.name.span())
        );
    }

    let store = match &raw.store {
        None => StoreSpec::Local(base_dir.join("backups")),
        Some(s) => {
            let v = expand(s.get_ref());
            if let Some(rest) = v.strip_prefix("s3://") {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    bail!("{}: store {v:?} names no bucket", at(s.span()));
                }
                StoreSpec::S3 {
                    bucket: bucket.to_string(),
                    prefix: prefix.trim_matches('/').to_string(),
                }
            } else if v.contains("://") {
                bail!(
                    "{}: store {v:?}: only local directories and s3:// are supported",
                    at(s.span())
                );
            } else if v.is_empty() {
                bail!("{}: store is empty", at(s.span()));
            } else {
                StoreSpec::Local(resolve(&v))
            }
        }
    };

    let mut retention = Retention::default();
    if let Some(r) = &raw.retention {
        let mut span = 0..0;
        if let Some(w) = &r.keep_within {
            span = w.span();
            let w = w.get_ref();
            retention.keep_within = humantime::parse_duration(&expand(w))
                .map_err(|e| anyhow!("{}: retention.keep_within {w:?}: {e}", at(span.clone())))?;
        }
        if let Some(n) = &r.keep_last {
            span = n.span();
            retention.keep_last = *n.get_ref();
        }
        if retention.keep_last == 0 && retention.keep_within.is_zero() {
            bail!(
                "{}: retention keeps nothing (keep_last = 0 and keep_within = 0); guard refuses a policy that would prune every snapshot",
                at(span)
            );
        }
    }

    let mut compression = Compression::default();
    if let Some(c) = &raw.compression {
        if let Some(l) = &c.level {
            if *l.get_ref() > 9 {
                bail!("{}: compression.level {} must be 0-9", at(l.span()), l.get_ref());
            }
            compression.level = *l.get_ref();
            compression.level_set = true;
        }
        if let Some(t) = &c.threads {
            if *t.get_ref() == 0 {
                bail!("{}: compression.threads must be at least 1", at(t.span()));
            }
            compression.threads = *t.get_ref();
        }
    }

    let mut targets = Vec::new();
    let mut seen = BTreeSet::new();
    for t in &raw.target {
        let span = t.span();
        let line = line_of(text, span.start);
        let t = t.get_ref();
        let tname = expand(&t.name);
        if !valid_name(&tname) {
            bail!(
                "{}: target name {tname:?} must be 1-64 characters of letters, digits, '-', '_' or '.'",
                at(span)
            );
        }
        if !seen.insert(tname.clone()) {
            bail!("{}: target {tname:?} is defined twice", at(span));
        }
        let need_path = |what: &str| -> Result<PathBuf> {
            match &t.path {
                Some(p) if !p.trim().is_empty() => Ok(resolve(&expand(p))),
                _ => bail!("{}: target {tname:?} of kind {what:?} needs `path`", at(span.clone())),
            }
        };
        let allowed: &[&str] = match t.kind.as_str() {
            "sqlite" | "dir" => &["path"],
            "postgres" => &["url", "format", "csv_tables", "pg_bin", "sessions", "drill_url"],
            "s3" => &["bucket", "prefix", "clone_bucket", "endpoint", "region", "tags"],
            "turso" => &[
                "organization",
                "database",
                "group",
                "api_token",
                "api_url",
                "db_url",
                "db_token",
                "export",
                "restore",
            ],
            other => bail!(
                "{}: target {tname:?}: unknown kind {other:?} (known: sqlite, dir, postgres, s3, turso)",
                at(span)
            ),
        };
        if let Some(k) = t.present_keys().into_iter().find(|k| !allowed.contains(k)) {
            bail!(
                "{}: target {tname:?}: key `{k}` does not apply to kind {:?}",
                at(span),
                t.kind
            );
        }
        let need = |key: &str, v: &Option<String>| -> Result<String> {
            match v {
                Some(s) if !expand(s).trim().is_empty() => Ok(expand(s)),
                _ => bail!(
                    "{}: target {tname:?} of kind {:?} needs `{key}`",
                    at(span.clone()),
                    t.kind
                ),
            }
        };
        let opt = |v: &Option<String>| v.as_ref().map(|s| expand(s)).filter(|s| !s.trim().is_empty());
        let kind = match t.kind.as_str() {
            "sqlite" => TargetKind::Sqlite {
                path: need_path("sqlite")?,
            },
            "dir" => TargetKind::Dir {
                path: need_path("dir")?,
            },
            "postgres" => {
                let url = need("url", &t.url)?;
                if let Some(pw) = secrets::url_password(&url) {
                    secrets::register(&pw);
                }
                let format = match t.format.as_deref().unwrap_or("custom") {
                    "custom" => PgFormat::Custom,
                    "plain" => PgFormat::Plain,
                    f => bail!(
                        "{}: target {tname:?}: format {f:?} must be \"custom\" or \"plain\"",
                        at(span)
                    ),
                };
                let sessions = match t.sessions.as_deref().unwrap_or("refuse") {
                    "refuse" => Sessions::Refuse,
                    "terminate" => Sessions::Terminate,
                    x => bail!(
                        "{}: target {tname:?}: sessions {x:?} must be \"refuse\" or \"terminate\"",
                        at(span)
                    ),
                };
                TargetKind::Postgres(PostgresSpec {
                    url,
                    format,
                    csv_tables: t
                        .csv_tables
                        .clone()
                        .unwrap_or_default()
                        .iter()
                        .map(|s| expand(s))
                        .collect(),
                    pg_bin: opt(&t.pg_bin).map(|p| resolve(&p)),
                    sessions,
                    drill_url: opt(&t.drill_url),
                })
            }
            "s3" => TargetKind::S3(S3Spec {
                bucket: need("bucket", &t.bucket)?,
                prefix: opt(&t.prefix).unwrap_or_default(),
                clone_bucket: need("clone_bucket", &t.clone_bucket)?,
                endpoint: opt(&t.endpoint),
                region: opt(&t.region),
                tags: match t.tags.as_deref().unwrap_or("exact") {
                    "exact" => S3Tags::Exact,
                    "with-content" => S3Tags::WithContent,
                    x => bail!(
                        "{}: target {tname:?}: tags {x:?} must be \"exact\" or \"with-content\"",
                        at(span)
                    ),
                },
            }),
            "turso" => {
                let api_token = need("api_token", &t.api_token)?;
                secrets::register(&api_token);
                let db_token = opt(&t.db_token);
                if let Some(tok) = &db_token {
                    secrets::register(tok);
                }
                TargetKind::Turso(TursoSpec {
                    organization: need("organization", &t.organization)?,
                    database: need("database", &t.database)?,
                    group: opt(&t.group).unwrap_or_else(|| "default".into()),
                    api_token,
                    api_url: opt(&t.api_url).unwrap_or_else(|| "https://api.turso.tech".into()),
                    db_url: opt(&t.db_url),
                    db_token,
                    export: t.export.unwrap_or(true),
                    restore: match t.restore.as_deref().unwrap_or("reload") {
                        "reload" => TursoRestore::Reload,
                        "promote" => TursoRestore::Promote,
                        x => bail!(
                            "{}: target {tname:?}: restore {x:?} must be \"reload\" or \"promote\"",
                            at(span)
                        ),
                    },
                })
            }
            _ => unreachable!("kind checked above"),
        };
        targets.push(TargetSpec {
            name: tname,
            line,
            kind,
        });
    }

    // Hooks and command checks are shell commands: `${VAR}` in them is left for the shell to
    // expand from the environment, so a secret never appears on `sh -c`'s command line.
    let hooks = raw
        .hooks
        .map(|h| Hooks {
            before: h.before,
            after: h.after,
        })
        .unwrap_or_default();

    let mut checks = Vec::new();
    let mut drill_checks = Vec::new();
    let mut seen_checks = BTreeSet::new();
    let raw_drill_checks: &[Spanned<RawCheck>] = raw.drill.as_ref().map(|d| d.check.as_slice()).unwrap_or(&[]);
    let all_checks = raw
        .check
        .iter()
        .map(|c| (false, c))
        .chain(raw_drill_checks.iter().map(|c| (true, c)));
    for (is_drill, c) in all_checks {
        let span = c.span();
        let line = line_of(text, span.start);
        let c = c.get_ref();
        let cname = expand(&c.name);
        if !seen_checks.insert((is_drill, cname.clone())) {
            bail!("{}: check {cname:?} is defined twice", at(span));
        }
        let target = c.target.as_ref().map(|t| expand(t));
        if let Some(t) = &target {
            if !targets.iter().any(|x| &x.name == t) {
                bail!(
                    "{}: check {cname:?} names target {t:?}, which the policy does not define",
                    at(span)
                );
            }
        }
        let kinds = [
            c.untouched.is_some(),
            c.sql.is_some(),
            c.command.is_some(),
            c.objects.is_some(),
            c.bytes.is_some(),
        ];
        if kinds.iter().filter(|&&k| k).count() != 1 {
            bail!(
                "{}: check {cname:?} needs exactly one of `untouched`, `sql`, `command`, `objects` or `bytes`",
                at(span)
            );
        }
        let what = if let Some(u) = &c.untouched {
            if target.is_none() {
                bail!("{}: check {cname:?}: `untouched` needs `target`", at(span));
            }
            if c.expect.is_some() {
                bail!("{}: check {cname:?}: `expect` does not apply to `untouched`", at(span));
            }
            if u.is_empty() {
                bail!("{}: check {cname:?}: `untouched` lists nothing", at(span));
            }
            CheckWhat::Untouched(u.iter().map(|s| expand(s)).collect())
        } else if let Some(sql) = &c.sql {
            if target.is_none() {
                bail!("{}: check {cname:?}: `sql` needs `target`", at(span));
            }
            let Some(e) = &c.expect else {
                bail!(
                    "{}: check {cname:?}: `sql` needs `expect` (for example \"unchanged\" or \">= 1\")",
                    at(span)
                );
            };
            let expect =
                Expect::parse(&expand(e)).map_err(|e| anyhow!("{}: check {cname:?}: {e}", at(span.clone())))?;
            CheckWhat::Sql {
                sql: expand(sql),
                expect,
            }
        } else if let Some((prefix, measure)) = c
            .objects
            .as_ref()
            .map(|p| (p, Measure::Count))
            .or(c.bytes.as_ref().map(|p| (p, Measure::Bytes)))
        {
            let key = if measure == Measure::Count { "objects" } else { "bytes" };
            if target.is_none() {
                bail!("{}: check {cname:?}: `{key}` needs `target` (an s3 target)", at(span));
            }
            let Some(e) = &c.expect else {
                bail!(
                    "{}: check {cname:?}: `{key}` needs `expect` (for example \">= 2000\" or \"unchanged\")",
                    at(span)
                );
            };
            let expect =
                Expect::parse(&expand(e)).map_err(|e| anyhow!("{}: check {cname:?}: {e}", at(span.clone())))?;
            if is_drill && matches!(expect, Expect::Unchanged | Expect::Changed) {
                bail!(
                    "{}: drill check {cname:?}: a drill has no \"before\" value; use a comparison such as \">= 1\"",
                    at(span)
                );
            }
            CheckWhat::Objects {
                prefix: expand(prefix),
                measure,
                expect,
            }
        } else {
            if target.is_some() {
                bail!("{}: check {cname:?}: a `command` check takes no `target`", at(span));
            }
            if c.expect.is_some() {
                bail!(
                    "{}: check {cname:?}: a `command` check passes when the command exits 0; `expect` does not apply",
                    at(span)
                );
            }
            CheckWhat::Command {
                command: c.command.clone().unwrap_or_default(),
            }
        };
        if is_drill {
            if let CheckWhat::Sql {
                expect: Expect::Unchanged | Expect::Changed,
                ..
            } = &what
            {
                bail!(
                    "{}: drill check {cname:?}: a drill has no \"before\" value; use a comparison such as \">= 1\"",
                    at(span)
                );
            }
            drill_checks.push(CheckSpec {
                name: cname,
                line,
                target,
                what,
            });
        } else {
            checks.push(CheckSpec {
                name: cname,
                line,
                target,
                what,
            });
        }
    }
    // Directory targets answer `untouched` but not SQL.
    for c in checks.iter().chain(drill_checks.iter()) {
        if let (Some(t), CheckWhat::Objects { .. }) = (&c.target, &c.what) {
            let spec = targets.iter().find(|x| &x.name == t).expect("validated above");
            if !matches!(spec.kind, TargetKind::S3(_)) {
                bail!("{shown}:{}: check {:?}: target {t:?} is of kind {}; `objects` and `bytes` checks need an s3 target", c.line, c.name, spec.kind.as_str());
            }
        }
        if let (Some(t), CheckWhat::Sql { .. }) = (&c.target, &c.what) {
            let spec = targets.iter().find(|x| &x.name == t).expect("validated above");
            if !spec.kind.answers_sql() {
                bail!(
                    "{shown}:{}: check {:?}: target {t:?} is of kind {}; `sql` checks need a database target",
                    c.line,
                    c.name,
                    spec.kind.as_str()
                );
            }
        }
    }

    let mut drill = Drill {
        checks: drill_checks,
        ..Drill::default()
    };
    if let Some(d) = &raw.drill {
        if let Some(a) = &d.max_age {
            let text = a.get_ref();
            drill.max_age = Some(
                humantime::parse_duration(&expand(text))
                    .map_err(|e| anyhow!("{}: drill.max_age {text:?}: {e}", at(a.span())))?,
            );
        }
        drill.on_failure = d.on_failure.clone();
    }

    Ok(Policy {
        name,
        drill,
        file: path.to_path_buf(),
        base_dir,
        store,
        confirm: raw.confirm,
        retention,
        compression,
        targets,
        hooks,
        checks,
    })
}

/// Names used in file names and ids: letters, digits, `-`, `_`, `.`; not starting with `.`.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('.')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Every `${VAR}` outside comments must be set; report the first missing one with its line.
fn check_variables(text: &str, shown: &str) -> Result<()> {
    for (i, line) in text.lines().enumerate() {
        let code = strip_comment(line);
        for name in variables(code) {
            match std::env::var(&name) {
                // Secret-looking values are masked in all output, including what hooks, checks
                // and the wrapped command print.
                Ok(value) => secrets::register_from_env(&name, &value),
                Err(_) => bail!(
                    "{shown}:{}: environment variable {name} is not set (the policy uses ${{{name}}})",
                    i + 1
                ),
            }
        }
    }
    Ok(())
}

/// The part of a TOML line before a `#` that is not inside a string.
fn strip_comment(line: &str) -> &str {
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, ch) in line.char_indices() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if ch == '\\' && q == '"' {
                    escaped = true;
                } else if ch == q {
                    quote = None;
                }
            }
            None => match ch {
                '"' | '\'' => quote = Some(ch),
                '#' => return &line[..i],
                _ => {}
            },
        }
    }
    line
}

fn variables(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        match after.find('}') {
            Some(end) => {
                out.push(after[..end].to_string());
                rest = &after[end + 1..];
            }
            None => break,
        }
    }
    out
}

/// Expand `${VAR}` from the environment. Values that come from the environment are registered
/// as secrets when their variable name suggests one, so they are redacted from all output.
pub fn expand(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find('}') {
            Some(end) => {
                let name = &after[..end];
                let value = std::env::var(name).unwrap_or_default();
                secrets::register_from_env(name, &value);
                out.push_str(&value);
                rest = &after[end + 1..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Policy> {
        parse(text, Path::new("/tmp/x/policy.toml"))
    }

    #[test]
    fn unknown_key_names_line() {
        let e =
            p("name = \"a\"\n\n[[target]]\nname = \"db\"\nkind = \"sqlite\"\npath = \"a.db\"\npaht = 1\n").unwrap_err();
        let s = format!("{e:#}");
        assert!(s.contains("policy.toml:7"), "{s}");
        assert!(s.contains("paht"), "{s}");
    }

    #[test]
    fn missing_variable_names_it_and_line() {
        let e = p("name = \"a\"\nstore = \"${GUARD_TEST_SURELY_UNSET}\"\n").unwrap_err();
        let s = format!("{e:#}");
        assert!(s.contains(":2:") && s.contains("GUARD_TEST_SURELY_UNSET"), "{s}");
    }

    #[test]
    fn a_set_compression_level_wins_over_a_kinds_default() {
        let t = "[[target]]\nname = \"db\"\nkind = \"sqlite\"\npath = \"a.db\"\n";
        let unset = p(&format!("name = \"a\"\n{t}")).unwrap().compression;
        assert_eq!((unset.level, unset.default_level(2).level), (6, 2));
        let set = p(&format!("name = \"a\"\n[compression]\nlevel = 6\n{t}"))
            .unwrap()
            .compression;
        assert_eq!(set.default_level(2).level, 6);
    }

    #[test]
    fn variables_in_comments_are_ignored() {
        p("name = \"a\" # uses ${NOT_SET_ANYWHERE}\n").unwrap();
    }

    #[test]
    fn expectations_parse() {
        assert_eq!(Expect::parse(">= 4").unwrap(), Expect::Compare(Op::Ge, 4.0));
        assert_eq!(Expect::parse("== 6").unwrap(), Expect::Compare(Op::Eq, 6.0));
        assert_eq!(Expect::parse("<1").unwrap(), Expect::Compare(Op::Lt, 1.0));
        assert_eq!(Expect::parse("unchanged").unwrap(), Expect::Unchanged);
        assert_eq!(Expect::parse("ok").unwrap(), Expect::Literal("ok".into()));
        assert!(Expect::parse(">= x").is_err());
    }

    #[test]
    fn check_must_name_known_target() {
        let e = p("name = \"a\"\n[[check]]\nname = \"c\"\ntarget = \"nope\"\nsql = \"select 1\"\nexpect = \"== 1\"\n")
            .unwrap_err();
        assert!(format!("{e:#}").contains("policy.toml:2"), "{e:#}");
    }

    #[test]
    fn keys_of_other_kinds_are_refused() {
        let e = p("name = \"a\"\n[[target]]\nname = \"db\"\nkind = \"sqlite\"\npath = \"a.db\"\nbucket = \"b\"\n")
            .unwrap_err();
        let s = format!("{e:#}");
        assert!(s.contains("policy.toml:2") && s.contains("bucket"), "{s}");
    }

    #[test]
    fn s3_tags_mode_parses_and_bad_values_name_the_line() {
        let s3 = |extra: &str| {
            p(&format!(
                "name = \"a\"\n[[target]]\nname = \"img\"\nkind = \"s3\"\nbucket = \"b\"\nclone_bucket = \"c\"\n{extra}"
            ))
        };
        let tags = |pol: Policy| match &pol.targets[0].kind {
            TargetKind::S3(s) => s.tags,
            _ => unreachable!(),
        };
        assert_eq!(tags(s3("").unwrap()), S3Tags::Exact);
        assert_eq!(tags(s3("tags = \"with-content\"\n").unwrap()), S3Tags::WithContent);
        let e = format!("{:#}", s3("tags = \"none\"\n").unwrap_err());
        assert!(e.contains("policy.toml:2") && e.contains("with-content"), "{e}");
    }

    #[test]
    fn postgres_password_is_not_in_debug_output() {
        std::env::set_var("GUARD_TEST_PG_URL", "postgres://app:pw-in-url-123@db/x");
        let pol = p("name = \"a\"\n[[target]]\nname = \"db\"\nkind = \"postgres\"\nurl = \"${GUARD_TEST_PG_URL}\"\n")
            .unwrap();
        let dbg = format!("{pol:?}");
        assert!(!dbg.contains("pw-in-url-123"), "{dbg}");
        assert_eq!(crate::secrets::redact("x pw-in-url-123 y"), "x *** y");
    }

    #[test]
    fn implicit_tables_parse() {
        let pol = p("name = \"a\"\nretention.keep_last = 5\n[[target]]\nname = \"app\"\nkind = \"sqlite\"\npath = \"a.db\"\n[[drill.check]]\nname = \"c\"\ntarget = \"app\"\nsql = \"select 1\"\nexpect = \"== 1\"\n").unwrap();
        assert_eq!(pol.retention.keep_last, 5);
        assert_eq!(pol.drill.checks.len(), 1);
        let e = p("name = \"a\"\n[drill]\nmax_age = \"soon\"\n").unwrap_err();
        assert!(format!("{e:#}").contains("policy.toml:3"), "{e:#}");
    }

    #[test]
    fn retention_that_keeps_nothing_is_refused() {
        let e = p("name = \"a\"\n[retention]\nkeep_within = \"0s\"\nkeep_last = 0\n").unwrap_err();
        assert!(format!("{e:#}").contains("keeps nothing"));
    }
}
