//! `guard init [FILE]`: look at the current directory and environment and write a commented
//! starter policy (default `guard.toml`) with what was found: SQLite files (and their tables, for
//! an `untouched` check), `DATABASE_URL` (environment or `.env`) and Prisma's
//! `prisma/schema.prisma`, a `data/` tree, Turso and S3 settings in the environment. A retention
//! block and a `#:schema` line for Taplo-based editors come with it. An existing file is never
//! overwritten. Secrets are never written: URLs and tokens stay `${VARIABLE}` references.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::error::{Failure, Kind};
use crate::ui::Ui;

/// What `init` found, in the order it writes it.
#[derive(Debug, Default)]
struct Found {
    /// SQLite files (relative paths) with their tables.
    sqlite: Vec<(String, Vec<String>)>,
    /// The variable holding a PostgreSQL URL, and where it was seen.
    postgres: Option<(String, String)>,
    /// A `data/` directory.
    data_dir: bool,
    /// Turso variables seen in the environment.
    turso: Vec<String>,
    /// S3 variables seen in the environment.
    s3: Vec<String>,
    /// A bucket name from the environment (`S3_BUCKET`, `AWS_S3_BUCKET`, `BUCKET`).
    bucket_var: Option<String>,
}

/// Directories never searched for SQLite files: tools' and guard's own.
const SKIP_DIRS: &[&str] = &[
    "node_modules",
    "target",
    "backups",
    "vendor",
    "venv",
    "__pycache__",
    "dist",
    "build",
];

pub fn init(file: Option<&Path>, ui: &Ui) -> Result<u8, Failure> {
    let file = file
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("guard.toml"));
    if file.exists() || file.is_symlink() {
        return Err(Failure::msg(
            Kind::Usage,
            format!(
                "{} already exists; guard init never overwrites a policy (move it away, or give another file: guard init FILE)",
                file.display()
            ),
        ));
    }
    let dir = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let found = look(&dir);
    let name = policy_name(&dir);
    let text = render(&name, &found);
    let schema = dir.join("guard.schema.json");
    if !schema.exists() {
        let s = super::schema::schema_text();
        write_new(&schema, s.as_bytes())?;
    }
    write_new(&file, text.as_bytes())?;
    let mut what: Vec<String> = found.sqlite.iter().map(|(p, _)| format!("SQLite {p}")).collect();
    if let Some((var, from)) = &found.postgres {
        what.push(format!("PostgreSQL ${{{var}}} ({from})"));
    }
    if found.data_dir {
        what.push("directory data/".into());
    }
    if !found.turso.is_empty() {
        what.push("Turso settings (commented out)".into());
    }
    if !found.s3.is_empty() {
        what.push("S3 settings (commented out)".into());
    }
    if ui.json {
        crate::ui::print_json(&serde_json::json!({
            "file": file.display().to_string(),
            "schema": schema.display().to_string(),
            "policy": name,
            "found": what,
        }));
    }
    ui.notice(&format!(
        "guard: wrote {} ({}); edit it, then try `guard --dry-run -- true`",
        file.display(),
        if what.is_empty() {
            "no data found: every target is commented out".to_string()
        } else {
            format!("found {}", what.join(", "))
        }
    ));
    Ok(0)
}

/// Create `path` (never replacing a file), 0600 like everything guard writes.
fn write_new(path: &Path, bytes: &[u8]) -> Result<(), Failure> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Failure::msg(Kind::Usage, format!("cannot create {}: {e}", path.display())))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| Failure::msg(Kind::Internal, format!("cannot write {}: {e}", path.display())))
}

/// The policy's name: the directory's name made a valid policy name.
fn policy_name(dir: &Path) -> String {
    let abs = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let raw = abs.file_name().and_then(|n| n.to_str()).unwrap_or("app");
    let mut n: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    n = n.trim_start_matches('.').chars().take(64).collect();
    if n.is_empty() || !crate::names::valid_name(&n) {
        "app".into()
    } else {
        n
    }
}

fn look(dir: &Path) -> Found {
    let mut found = Found::default();
    let mut files = Vec::new();
    sqlite_files(dir, dir, 0, &mut files);
    files.sort();
    for rel in files {
        let tables = tables(&dir.join(&rel));
        found.sqlite.push((rel, tables));
    }
    let dotenv: Vec<(String, String)> = std::fs::read_to_string(dir.join(".env"))
        .ok()
        .and_then(|t| crate::vars::parse_dotenv(&t).ok())
        .unwrap_or_default();
    let var = |name: &str| -> Option<(String, &'static str)> {
        if let Ok(v) = std::env::var(name) {
            return Some((v, "environment"));
        }
        dotenv.iter().find(|(k, _)| k == name).map(|(_, v)| (v.clone(), ".env"))
    };
    // Prisma names the variable its datasource reads; else DATABASE_URL.
    let prisma = std::fs::read_to_string(dir.join("prisma/schema.prisma")).ok();
    let (provider, url_var, url_literal) = prisma.as_deref().map(prisma_datasource).unwrap_or_default();
    let url_var = url_var.unwrap_or_else(|| "DATABASE_URL".into());
    if let Some((url, from)) = var(&url_var) {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            found.postgres = Some((url_var.clone(), from.to_string()));
        } else if let Some(p) = url.strip_prefix("file:") {
            // Prisma resolves a SQLite file: URL against the schema's directory.
            let base = if prisma.is_some() {
                dir.join("prisma")
            } else {
                dir.to_path_buf()
            };
            add_sqlite(&mut found, dir, &base.join(p));
        }
    } else if provider.as_deref() == Some("postgresql") {
        found.postgres = Some((url_var.clone(), "prisma/schema.prisma".into()));
    }
    if let Some(p) = url_literal.as_deref().and_then(|u| u.strip_prefix("file:")) {
        add_sqlite(&mut found, dir, &dir.join("prisma").join(p));
    }
    found.data_dir = dir.join("data").is_dir();
    let seen = |names: &[&str]| -> Vec<String> {
        names
            .iter()
            .filter(|v| var(v).is_some())
            .map(|v| v.to_string())
            .collect()
    };
    found.turso = seen(&[
        "TURSO_API_TOKEN",
        "TURSO_ORG",
        "TURSO_ORGANIZATION",
        "TURSO_DATABASE_URL",
        "TURSO_AUTH_TOKEN",
    ]);
    found.s3 = seen(&[
        "S3_BUCKET",
        "AWS_S3_BUCKET",
        "BUCKET",
        "AWS_ACCESS_KEY_ID",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
    ]);
    found.bucket_var = seen(&["S3_BUCKET", "AWS_S3_BUCKET", "BUCKET"]).into_iter().next();
    found
}

/// A SQLite file named by a URL, once (it may also have been found by the search).
fn add_sqlite(found: &mut Found, dir: &Path, path: &Path) {
    let Some(rel) = relative(dir, path) else { return };
    if found.sqlite.iter().any(|(p, _)| *p == rel) {
        return;
    }
    let tables = if path.exists() { tables(path) } else { Vec::new() };
    found.sqlite.push((rel, tables));
}

/// `path` relative to `dir`, `/`-separated, lexically normalised (`prisma/./dev.db` → `prisma/dev.db`).
fn relative(dir: &Path, path: &Path) -> Option<String> {
    let rel = path.strip_prefix(dir).ok()?;
    let mut parts: Vec<String> = Vec::new();
    for c in rel.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                parts.pop()?;
            }
            std::path::Component::Normal(s) => parts.push(s.to_str()?.to_string()),
            _ => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// `provider`, the variable in `url = env("…")` and a literal `url = "…"` of Prisma's
/// `datasource` block.
fn prisma_datasource(text: &str) -> (Option<String>, Option<String>, Option<String>) {
    let Some(start) = text.find("datasource") else {
        return (None, None, None);
    };
    let block = &text[start..];
    let block = &block[..block.find('}').unwrap_or(block.len())];
    let mut provider = None;
    let mut var = None;
    let mut literal = None;
    for line in block.lines() {
        let line = line.trim();
        let Some((k, v)) = line.split_once('=') else { continue };
        let (k, v) = (k.trim(), v.trim());
        let quoted = |s: &str| {
            s.trim()
                .strip_prefix('"')
                .and_then(|s| s.split('"').next())
                .map(str::to_string)
        };
        match k {
            "provider" => provider = quoted(v),
            "url" => match v.strip_prefix("env(") {
                Some(inner) => var = quoted(inner.trim_end_matches(')')),
                None => literal = quoted(v),
            },
            _ => {}
        }
    }
    (provider, var, literal)
}

/// SQLite database files under `dir` (their first 16 bytes), three levels deep, relative paths.
fn sqlite_files(root: &Path, dir: &Path, depth: usize, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let Ok(ft) = e.file_type() else { continue };
        let path = e.path();
        if ft.is_dir() {
            if depth < 3 && !name.starts_with('.') && !SKIP_DIRS.contains(&name) {
                sqlite_files(root, &path, depth + 1, out);
            }
        } else if ft.is_file() && is_sqlite(&path) {
            if let Some(rel) = relative(root, &path) {
                out.push(rel);
            }
        }
    }
}

fn is_sqlite(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 16];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .map(|_| &head == b"SQLite format 3\0")
        .unwrap_or(false)
}

/// The database's tables (not SQLite's own), read-only; none when it cannot be read.
fn tables(path: &Path) -> Vec<String> {
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let Ok(c) = rusqlite::Connection::open_with_flags(path, flags) else {
        return Vec::new();
    };
    let q =
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name";
    let Ok(mut st) = c.prepare(q) else { return Vec::new() };
    st.query_map([], |r| r.get::<_, String>(0))
        .map(|rows| rows.flatten().collect())
        .unwrap_or_default()
}

/// A TOML basic string literal.
fn q(s: &str) -> String {
    let mut out = String::from("\"");
    // `${` would be read as a variable: `$${` is a literal one.
    for c in s.replace("${", "$${").chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Target names: the file's stem made a name, unique in the policy.
fn target_name(path: &str, taken: &mut Vec<String>) -> String {
    let stem = Path::new(path).file_stem().and_then(|s| s.to_str()).unwrap_or("db");
    let mut base: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if base.is_empty() || !crate::names::valid_name(&base) {
        base = "db".into();
    }
    let mut name = base.clone();
    let mut n = 2;
    while taken.contains(&name) {
        name = format!("{base}-{n}");
        n += 1;
    }
    taken.push(name.clone());
    name
}

/// The policy text: the header, one `[[target]]` per thing found (its suggested check gathered
/// after the targets), commented-out Turso/S3 targets for settings seen in the environment, and
/// the commented examples at the end.
fn render(name: &str, f: &Found) -> String {
    let mut s = format!(
        r#"#:schema ./guard.schema.json
# guard policy written by `guard init`: check every line, then try
#   guard --dry-run -- true
# Every key: docs/policy.md (or `guard schema` for the JSON Schema editors use).

name = {name}
store = "backups"                 # snapshots go here (add it to .gitignore); or "s3://BUCKET/PREFIX"
confirm = false                   # true: ask before each guarded run (--yes skips)

[retention]
keep_within = "30d"               # keep every snapshot younger than this
keep_last = 3                     # and always the newest 3 of each target
"#,
        name = q(name)
    );
    let mut taken = Vec::new();
    let mut checks = String::new();
    for (path, tables) in &f.sqlite {
        let t = target_name(path, &mut taken);
        let _ = write!(
            s,
            "\n[[target]]\nname = {}\nkind = \"sqlite\"\npath = {}\n",
            q(&t),
            q(path)
        );
        checks.push_str(&untouched_check(&t, tables));
    }
    if let Some((var, from)) = &f.postgres {
        let t = target_name("db", &mut taken);
        let _ = write!(
            s,
            r#"
[[target]]                        # PostgreSQL, URL from ${{{var}}} ({from})
name = {}
kind = "postgres"
url = "${{{var}}}"                # read when guard runs; the password is never written here
"#,
            q(&t)
        );
        checks.push_str(&untouched_check(&t, &[]));
    }
    if f.data_dir {
        let t = target_name("data", &mut taken);
        let _ = write!(
            s,
            r#"
[[target]]                        # a directory tree, snapshotted as one tar
name = {}
kind = "dir"
path = "data"
# exclude = ["*.tmp", "cache/"]   # gitignore-style, left out of snapshots and restores
"#,
            q(&t)
        );
    }
    if !f.turso.is_empty() {
        s.push_str(&from_environment(
            "Turso",
            &f.turso,
            r#"# name = "turso"
# kind = "turso"
# organization = "ORG"
# database = "DATABASE"
# api_token = "${TURSO_API_TOKEN}"   # Platform API token (not the database token)
"#,
        ));
    }
    if !f.s3.is_empty() {
        let bucket = f
            .bucket_var
            .as_ref()
            .map(|v| format!("${{{v}}}"))
            .unwrap_or_else(|| "BUCKET".into());
        let target = format!(
            r#"# name = "bucket"
# kind = "s3"
# bucket = "{bucket}"
# clone_bucket = "{bucket}-guard"  # must exist: snapshots copy objects there
"#
        );
        s.push_str(&from_environment("S3", &f.s3, &target));
    }
    if taken.is_empty() {
        s.push_str(
            r#"
# guard init found no data here. A target, for example:
# [[target]]
# name = "app"
# kind = "sqlite"                 # or dir, postgres, s3, turso (docs/targets/)
# path = "app.db"
"#,
        );
    }
    s.push_str(&checks);
    let _ = write!(
        s,
        r#"
# A check of your own: a query whose first value must satisfy `expect`.
# [[check]]
# name = "new table exists"
# target = "{}"
# sql = "SELECT count(*) FROM sqlite_master WHERE name = 'NEW_TABLE'"
# expect = "== 1"

# [hooks]
# before = ["systemctl stop app"]  # stop writers before the snapshot
# after = ["systemctl start app"]  # runs whatever happened
"#,
        taken.first().map(String::as_str).unwrap_or("app")
    );
    s
}

/// The `untouched` check of target `t`: over `tables` when they are known, else commented out
/// with a placeholder.
fn untouched_check(t: &str, tables: &[String]) -> String {
    if tables.is_empty() {
        return format!(
            r#"
# [[check]]
# name = "existing data untouched"
# target = {}
# untouched = ["TABLE"]          # the tables whose existing rows must not change
"#,
            q(t)
        );
    }
    let list: Vec<String> = tables.iter().map(|t| q(t)).collect();
    format!(
        r#"
[[check]]
name = {}
target = {}
# Existing rows and columns must not change (added columns pass); drop the
# tables your migration is meant to change.
untouched = [{}]
"#,
        q(&format!("existing data of {t} untouched")),
        q(t),
        list.join(", ")
    )
}

/// A commented-out target of `kind` for the settings `vars` seen in the environment; `target`
/// is its commented keys.
fn from_environment(kind: &str, vars: &[String], target: &str) -> String {
    format!(
        "\n# {kind} settings are in the environment ({}): fill in and uncomment.\n# [[target]]\n{target}",
        vars.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prisma_datasources_are_read() {
        let (p, v, l) = prisma_datasource(
            "generator client {\n provider = \"prisma-client-js\"\n}\n\ndatasource db {\n  provider = \"postgresql\"\n  url      = env(\"RENT_DB\")\n}\n",
        );
        assert_eq!(
            (p.as_deref(), v.as_deref(), l),
            (Some("postgresql"), Some("RENT_DB"), None)
        );
        let (p, v, l) = prisma_datasource("datasource db {\n provider = \"sqlite\"\n url = \"file:./dev.db\"\n}");
        assert_eq!(
            (p.as_deref(), v, l.as_deref()),
            (Some("sqlite"), None, Some("file:./dev.db"))
        );
    }

    #[test]
    fn names_are_made_valid() {
        assert_eq!(policy_name(Path::new("/nonexistent/My App!")), "My-App-");
        let mut taken = vec![];
        assert_eq!(target_name("a/app.db", &mut taken), "app");
        assert_eq!(target_name("b/app.db", &mut taken), "app-2");
    }
}
