//! The PostgreSQL client tools (`pg_dump`, `pg_restore`, `psql`): finding the newest ones whose
//! major version fits the server, and running them as children.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context, Result};

use super::PostgresTarget;
use crate::manifest::TargetRecord;
use crate::secrets;

/// The client tools chosen for a server.
#[derive(Clone, Debug)]
pub struct Tools {
    pub dir: PathBuf,
    /// `pg_dump --version`'s number, e.g. `15.18`.
    pub version: String,
    pub major: u32,
}

impl Tools {
    pub(super) fn bin(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// `name` with 1 MiB stdio buffers on the streams `streams` names (`-i` stdin, `-o`
    /// stdout), through coreutils' `stdbuf` when it works here, else the tool alone.
    /// pg_dump, pg_restore and psql move a dump through stdio in 4 KiB calls: 100,000
    /// write(2)s for a 400 MB dump, a tenth of a second of a core each way (docs/performance.md). The bytes are the same either way.
    pub(super) fn buffered(&self, name: &str, streams: &[&str]) -> Command {
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
pub(super) fn widen_pipe(fd: &impl std::os::fd::AsRawFd) {
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

pub(super) fn tool_version(bin: &Path) -> Result<String> {
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
pub(super) fn candidate_dirs(pg_bin: Option<&Path>) -> Vec<PathBuf> {
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

/// Collect a child's stderr on a thread (a full pipe would block the child).
pub(super) fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        v
    })
}

/// The last meaningful lines of a child's stderr, redacted.
pub(super) fn tail(stderr: &[u8]) -> String {
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

pub(super) fn status_text(s: ExitStatus) -> String {
    match s.code() {
        Some(c) => format!("exited {c}"),
        None => "was killed by a signal".into(),
    }
}

pub(super) fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

impl PostgresTarget {
    /// Client tools for the live server (chosen once).
    pub(super) fn tools(&self) -> Result<Tools> {
        if let Some(t) = self.tools.get() {
            return Ok(t.clone());
        }
        let num: String = self.server_session()?.scalar("SHOW server_version_num")?;
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
    pub(super) fn tools_for_dump(&self, rec: &TargetRecord) -> Result<Tools> {
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
    pub(super) fn child(&self, tools: &Tools, name: &str, streams: &[&str]) -> Command {
        let mut c = tools.buffered(name, streams);
        self.conn.apply_env(&mut c, None);
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
