//! Shared harness for integration tests: a temp directory, the real `guard` binary, and
//! helpers to make SQLite databases and read results back.
#![allow(dead_code)]

pub mod pg;
pub mod s3;
pub mod turso;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub struct Env {
    pub dir: tempfile::TempDir,
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// The binary under test: this build's `guard`, or `GUARD_TEST_BIN` (to show that a test fails
/// on an older build).
pub fn guard_bin() -> String {
    std::env::var("GUARD_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_guard").to_string())
}

impl Env {
    pub fn new() -> Env {
        Env {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn write(&self, rel: &str, content: &str) -> PathBuf {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, content).unwrap();
        p
    }

    /// A `guard` command running in the env's directory, with no policy from the environment.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(guard_bin());
        c.current_dir(self.dir.path())
            .args(args)
            .env_remove("GUARD_POLICY")
            .stdin(Stdio::null());
        c
    }

    pub fn guard(&self, args: &[&str]) -> Run {
        self.cmd(args).output().expect("run guard").into()
    }
}

/// Run SQL against a SQLite file.
pub fn sql(db: &Path, sql: &str) {
    let c = rusqlite::Connection::open(db).unwrap();
    c.execute_batch(sql).unwrap();
}

/// A single integer from a query.
pub fn count(db: &Path, sql: &str) -> i64 {
    let c = rusqlite::Connection::open(db).unwrap();
    c.query_row(sql, [], |r| r.get(0)).unwrap()
}

/// The lending app database of seed 001: users, loans, payments.
pub fn lending_db(db: &Path, users: usize) {
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    let mut c = rusqlite::Connection::open(db).unwrap();
    c.execute_batch(
        "PRAGMA journal_mode=WAL;
         CREATE TABLE user (id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT);
         CREATE TABLE loan (id INTEGER PRIMARY KEY, user_id INTEGER REFERENCES user(id), principal NUMERIC, rate REAL);
         CREATE TABLE payment (id INTEGER PRIMARY KEY, loan_id INTEGER REFERENCES loan(id), amount NUMERIC, paid_at TEXT);",
    )
    .unwrap();
    let tx = c.transaction().unwrap();
    for i in 0..users {
        tx.execute(
            "INSERT INTO user (name, email) VALUES (?1, ?2)",
            (format!("user {i}"), format!("u{i}@example.com")),
        )
        .unwrap();
        tx.execute(
            "INSERT INTO loan (user_id, principal, rate) VALUES (?1, ?2, 0.05)",
            (i as i64 + 1, 1000 + i as i64),
        )
        .unwrap();
        for k in 0..3 {
            tx.execute(
                "INSERT INTO payment (loan_id, amount, paid_at) VALUES (?1, ?2, '2025-01-0' || ?3)",
                (i as i64 + 1, 50 + k, k + 1),
            )
            .unwrap();
        }
    }
    tx.commit().unwrap();
}

/// Digest of every row of every table, for "came back exactly" assertions.
pub fn dump(db: &Path) -> String {
    let c = rusqlite::Connection::open(db).unwrap();
    let mut out = String::new();
    let mut st = c
        .prepare("SELECT name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name")
        .unwrap();
    let tables: Vec<(String, Option<String>)> = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    for (t, s) in tables {
        out.push_str(&format!("{t}: {}\n", s.unwrap_or_default()));
        if let Ok(mut q) = c.prepare(&format!("SELECT * FROM \"{t}\" ORDER BY 1")) {
            let n = q.column_count();
            let mut rows = q.query([]).unwrap();
            while let Some(r) = rows.next().unwrap() {
                let vals: Vec<String> = (0..n).map(|i| format!("{:?}", r.get_ref(i).unwrap())).collect();
                out.push_str(&vals.join("|"));
                out.push('\n');
            }
        }
    }
    out
}

/// The lending policy used by several tests (paths relative to the env).
pub fn lending_policy(extra: &str) -> String {
    format!(
        r#"name = "lending"
store = "backups"

[[target]]
name = "app"
kind = "sqlite"
path = "instances/prod/database/lending_app_prod.db"

[[target]]
name = "rent-history"
kind = "dir"
path = "data/rent_history"
# A hot copy on every filesystem (the default keeps one only where files clone): the
# tests of every phase cover it.
hot_copy = "always"

[[check]]
name = "existing data untouched"
target = "app"
untouched = ["user", "loan", "payment"]

[[check]]
name = "cashback tables exist"
target = "app"
sql = "SELECT count(*) FROM sqlite_master WHERE type='table' AND name LIKE 'cashback%'"
expect = ">= 2"
{extra}"#
    )
}

/// A lending env: database, a directory target, and the policy at guard.toml.
pub fn lending_env(extra: &str) -> Env {
    let env = Env::new();
    lending_db(&env.path("instances/prod/database/lending_app_prod.db"), 50);
    env.write("data/rent_history/2025-01.json", "{\"rent\": 1200}\n");
    env.write("data/rent_history/2025-02.json", "{\"rent\": 1250}\n");
    env.write("guard.toml", &lending_policy(extra));
    env
}

pub fn db(env: &Env) -> PathBuf {
    env.path("instances/prod/database/lending_app_prod.db")
}

/// Snapshot ids in the env's store, as `guard list --json` reports them.
pub fn snapshots(env: &Env) -> Vec<serde_json::Value> {
    listed(&env.guard(&["list", "--json"]))
}

/// The snapshots of a `guard list --json` run (which must have exited 0).
pub fn listed(r: &Run) -> Vec<serde_json::Value> {
    assert_eq!(r.code, 0, "{r:?}");
    serde_json::from_str::<serde_json::Value>(&r.stdout).unwrap()["snapshots"]
        .as_array()
        .unwrap()
        .clone()
}

/// A guarded run of `touch ran` (through `guard`: the env's guard with whatever settings it
/// needs) that guard must refuse with exit `code` before the command runs. The run, for the
/// caller's assertions on what it said.
pub fn refused(env: &Env, code: i32, guard: impl FnOnce(&[&str]) -> Run) -> Run {
    let marker = env.path("ran");
    let r = guard(&["--", "touch", marker.to_str().unwrap()]);
    assert_eq!(r.code, code, "{r:?}");
    assert!(!marker.exists(), "the command must not run: {r:?}");
    r
}

/// Spawn `cmd` (a guard command, output discarded) with fault point `point` set
/// (`GUARD_TEST_PAUSE`), and return once guard has paused there: it writes its pid to `pause`
/// and waits. Panics when guard exits first or never gets there (60 s: a bound on a hang, not a
/// timing).
pub fn spawn_paused(mut cmd: Command, point: &str, pause: &Path) -> std::process::Child {
    let _ = std::fs::remove_file(pause);
    let mut child = cmd
        .env("GUARD_TEST_PAUSE", point)
        .env("GUARD_TEST_PAUSE_FILE", pause)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !pause.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("guard finished ({status}) before reaching {point}");
        }
        assert!(std::time::Instant::now() < deadline, "guard never reached {point}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child
}

/// Is `pid` a live process (a zombie counts as gone)?
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(s) => {
            let state = s[s.rfind(')').map_or(0, |i| i + 1)..]
                .split_whitespace()
                .next()
                .unwrap_or("");
            state != "Z" && state != "X"
        }
    }
}

/// The pid a test's shell wrote to `file`, once that process is gone: the kernel gets up to
/// 10 s to reap it (a bound that only turns a survivor into a failure).
pub fn assert_killed(file: &Path, what: &str) {
    let pid: u32 = std::fs::read_to_string(file)
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
        .trim()
        .parse()
        .unwrap();
    let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while alive(pid) && std::time::Instant::now() < end {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(!alive(pid), "{what} {pid} was killed with its group");
}

/// A minimal env: one SQLite target, no checks; `top` goes before the first table.
pub fn simple_env(top: &str) -> Env {
    let env = Env::new();
    lending_db(&env.path("app.db"), 10);
    env.write(
        "guard.toml",
        &format!("name = \"simple\"\nstore = \"backups\"\n{top}\n[[target]]\nname = \"app\"\nkind = \"sqlite\"\npath = \"app.db\"\n"),
    );
    env
}
