//! SQLite files and directory trees as applications keep them: symlinked paths, a writer's
//! lock, paths that are not what the target kind expects, and directory swaps killed half way.
//! Every restore is proven against the original: a SQL dump of the database, and a listing of
//! the tree with the SHA-256 of every file, taken before the command and after the restore.

use crate::common::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Every entry under `root` (the root itself followed if it is a link, nothing below it):
/// `path → "file <sha256> <mode>" | "dir <mode>" | "link -> target"`.
pub fn tree(root: &Path) -> BTreeMap<String, String> {
    use sha2::Digest;
    use std::os::unix::fs::PermissionsExt;
    let mut out = BTreeMap::new();
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        entries.sort();
        for p in entries {
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let mode = m.permissions().mode() & 0o7777;
            if m.file_type().is_symlink() {
                out.insert(rel, format!("link -> {}", std::fs::read_link(&p).unwrap().display()));
            } else if m.is_dir() {
                out.insert(rel, format!("dir {mode:o}"));
                walk(root, &p, out);
            } else {
                let h = hex::encode(sha2::Sha256::digest(std::fs::read(&p).unwrap()));
                out.insert(rel, format!("file {h} {mode:o}"));
            }
        }
    }
    walk(root, root, &mut out);
    out
}

/// The database as SQL, like `sqlite3 DB .dump` (Python's `iterdump`, so no sqlite3 CLI needed).
pub fn sql_dump(db: &Path) -> String {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; print('\\n'.join(sqlite3.connect(sys.argv[1]).iterdump()))",
        ])
        .arg(db)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn is_symlink(p: &Path) -> bool {
    std::fs::symlink_metadata(p).unwrap().file_type().is_symlink()
}

fn wait_for(path: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !path.exists() {
        assert!(Instant::now() < deadline, "{what}: {} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// R6: `data -> real` and `app.db -> real/app.db`. The restore reaches the real data, keeps both
/// links, and "verified" means the data behind them is the snapshot's.
#[test]
fn symlinked_sqlite_and_dir_targets_restore_the_real_data_and_keep_the_links() {
    let env = Env::new();
    env.write("real/f.txt", "orig\n");
    sql(&env.path("real/app.db"), "create table t(x); insert into t values (1);");
    std::os::unix::fs::symlink(env.path("real"), env.path("data")).unwrap();
    std::os::unix::fs::symlink(env.path("real/app.db"), env.path("app.db")).unwrap();
    env.write(
        "guard.toml",
        "name = \"s1\"\nstore = \"backups\"\n\n[[target]]\nname = \"data\"\nkind = \"dir\"\npath = \"data\"\n\n[[target]]\nname = \"app\"\nkind = \"sqlite\"\npath = \"app.db\"\n",
    );
    // The database inside `real/` is proven by its dump (the sqlite target restores a backup-API
    // copy, equal in content, not in bytes); every other file by its SHA-256.
    let files = |env: &Env| {
        let mut t = tree(&env.path("real"));
        t.remove("app.db");
        t
    };
    let (tree_before, dump_before) = (files(&env), sql_dump(&env.path("real/app.db")));
    let r = env.guard(&[
        "--yes",
        "--",
        "sh",
        "-c",
        "echo BAD > data/f.txt; echo new > data/new.txt; python3 -c \"import sqlite3; c=sqlite3.connect('app.db'); c.execute('insert into t values (666)'); c.commit()\"; exit 5",
    ]);
    assert_eq!(r.code, 5, "{r:?}");
    assert!(r.stderr.contains("verified"), "{r:?}");
    assert!(
        is_symlink(&env.path("data")) && is_symlink(&env.path("app.db")),
        "links kept: {r:?}"
    );
    assert_eq!(files(&env), tree_before, "the real directory came back");
    assert_eq!(
        sql_dump(&env.path("real/app.db")),
        dump_before,
        "the real database came back"
    );
    // The snapshot says what it read.
    let snaps = snapshots(&env);
    let pre = snaps.iter().find(|s| s["kind"] == "pre-run").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let m: serde_json::Value = serde_json::from_str(&env.guard(&["show", &pre, "--json"]).stdout).unwrap();
    let real = std::fs::canonicalize(env.path("real")).unwrap();
    assert_eq!(m["targets"][0]["meta"]["resolved"], real.display().to_string());
    assert_eq!(
        m["targets"][1]["meta"]["resolved"],
        real.join("app.db").display().to_string()
    );

    // A link the command repointed: the restore refuses (nothing written anywhere), naming both.
    env.write("other/f.txt", "other\n");
    let r = env.guard(&["--yes", "--", "sh", "-c", "ln -sfn other data; exit 3"]);
    assert_eq!(r.code, 80, "{r:?}");
    assert!(
        r.stderr.contains("now leads to") && r.stderr.contains("ln -sfn"),
        "{r:?}"
    );
    assert_eq!(std::fs::read_to_string(env.path("other/f.txt")).unwrap(), "other\n");
    assert_eq!(files(&env), tree_before);
}

/// R26: a directory, `/dev/null` or a missing file as a SQLite path, and a file as a dir target,
/// each say what they are; nothing runs.
#[test]
fn paths_that_are_not_what_the_target_expects_say_what_they_are() {
    let env = Env::new();
    std::fs::create_dir_all(env.path("adir.db")).unwrap();
    env.write("notes.txt", "x\n");
    let policy = |kind: &str, path: &str| {
        format!("name = \"p\"\nstore = \"backups\"\n[[target]]\nname = \"t\"\nkind = \"{kind}\"\npath = \"{path}\"\n")
    };
    let marker = env.path("ran");
    for (kind, path, says) in [
        ("sqlite", "adir.db", "is a directory, not a SQLite database file"),
        (
            "sqlite",
            "/dev/null",
            "is a character device, not a SQLite database file",
        ),
        ("sqlite", "missing.db", "database"),
        ("dir", "notes.txt", "is a file; a dir target protects a directory"),
    ] {
        env.write("guard.toml", &policy(kind, path));
        let r = env.guard(&["--", "touch", marker.to_str().unwrap()]);
        assert_eq!(r.code, 69, "{kind} {path}: {r:?}");
        assert!(r.stderr.contains(says), "{kind} {path}: {r:?}");
        assert!(!marker.exists(), "nothing ran");
    }
    std::os::unix::fs::symlink(env.path("gone.db"), env.path("dangling.db")).unwrap();
    env.write("guard.toml", &policy("sqlite", "dangling.db"));
    let r = env.guard(&["--", "touch", marker.to_str().unwrap()]);
    assert_eq!(r.code, 69, "{r:?}");
    assert!(
        r.stderr.contains("is a symlink to") && r.stderr.contains("which does not exist"),
        "{r:?}"
    );
}

/// R26: a dir target the command replaced with a file is rescued (the file kept), restored,
/// and the rescue itself restores the file.
#[test]
fn dir_target_replaced_by_a_file_is_rescued_and_restored() {
    let env = Env::new();
    env.write("data/a.json", "{\"a\": 1}\n");
    env.write("data/sub/b.json", "{\"b\": 2}\n");
    env.write(
        "guard.toml",
        "name = \"d\"\nstore = \"backups\"\n[[target]]\nname = \"data\"\nkind = \"dir\"\npath = \"data\"\n",
    );
    let before = tree(&env.path("data"));
    let r = env.guard(&["--json", "--", "sh", "-c", "rm -r data && echo flat > data; exit 2"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert_eq!(tree(&env.path("data")), before);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let rescue = v["rescue_id"].as_str().unwrap().to_string();
    assert_eq!(env.guard(&["verify", &rescue]).code, 0);
    let r = env.guard(&["restore", &rescue, "--yes", "--no-rescue"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(std::fs::read_to_string(env.path("data")).unwrap(), "flat\n");
}

/// A rollback-journal database with the lending tables and a `note` table.
fn locked_env() -> Env {
    let env = Env::new();
    let db = env.path("app.db");
    lending_db(&db, 300);
    sql(&db, "PRAGMA journal_mode=DELETE; CREATE TABLE note (v TEXT);");
    env.write(
        "guard.toml",
        "name = \"lk\"\nstore = \"backups\"\n[[target]]\nname = \"app\"\nkind = \"sqlite\"\npath = \"app.db\"\n",
    );
    env
}

fn holder_script() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hold_sqlite_lock.py")
        .display()
        .to_string()
}

/// R11: the command leaves a writer holding `BEGIN EXCLUSIVE` with uncommitted pages in the
/// file. The rescue waits for the lock (bounded), then stops with exit 80 naming the holder:
/// no raw copy of uncommitted pages, no restore, the writer's `-journal` untouched. Once the
/// writer rolls back, the database is its committed state and the pre-run snapshot restores.
#[test]
fn sqlite_rescue_under_a_writers_lock_stops_and_keeps_no_uncommitted_pages() {
    let env = locked_env();
    let db = env.path("app.db");
    let before = sql_dump(&db);
    let (ready, go) = (env.path("ready"), env.path("go"));
    let cmd = format!(
        "python3 {} app.db ready go & while [ ! -e ready ]; do sleep 0.05; done; exit 1",
        holder_script()
    );
    let r = env.guard(&["--yes", "--", "sh", "-c", &cmd]);
    let holder: i32 = std::fs::read_to_string(&ready).unwrap().trim().parse().unwrap();
    assert_eq!(r.code, 80, "{r:?}");
    assert!(
        r.stderr.contains("is locked") && r.stderr.contains(&format!("pid {holder}")),
        "names the holder: {r:?}"
    );
    assert!(r.stderr.contains("nothing was restored"), "{r:?}");
    assert!(env.path("app.db-journal").exists(), "the writer's journal is untouched");
    let snaps = snapshots(&env);
    assert_eq!(snaps.len(), 1, "no rescue of uncommitted pages: {snaps:?}");
    assert_eq!(snaps[0]["kind"], "pre-run");
    // The writer rolls back: the file holds exactly what was committed.
    std::fs::write(&go, "").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::path::Path::new(&format!("/proc/{holder}")).exists() {
        assert!(Instant::now() < deadline, "holder never exited");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(count(&db, "SELECT count(*) FROM note WHERE v = 'uncommitted'"), 0);
    assert_eq!(
        count(&db, "SELECT count(*) FROM payment WHERE paid_at LIKE 'uncommitted%'"),
        0
    );
    assert_eq!(count(&db, "SELECT count(*) FROM note WHERE v = 'committed'"), 1);
    let id = snaps[0]["id"].as_str().unwrap();
    let r = env.guard(&["restore", id, "--yes"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(sql_dump(&db), before);
}

/// R11, second half: a restore under a live writer refuses at once, naming it, and never
/// deletes its `-journal`; the writer's rollback then leaves a sound database.
#[test]
fn restore_under_a_writers_lock_refuses_and_keeps_its_journal() {
    let env = locked_env();
    let db = env.path("app.db");
    let r = env.guard(&["snapshot"]);
    assert_eq!(r.code, 0, "{r:?}");
    let id = r.stdout.trim().to_string();
    let (ready, go) = (env.path("ready"), env.path("go"));
    let mut holder = std::process::Command::new("python3")
        .args([
            &holder_script(),
            db.to_str().unwrap(),
            ready.to_str().unwrap(),
            go.to_str().unwrap(),
        ])
        .spawn()
        .unwrap();
    wait_for(&ready, "holder");
    let journal = std::fs::read(env.path("app.db-journal")).unwrap();
    let r = env.guard(&["restore", &id, "--yes", "--no-rescue"]);
    assert_eq!(r.code, 80, "{r:?}");
    assert!(
        r.stderr.contains("is in use") && r.stderr.contains(&format!("pid {}", holder.id())),
        "{r:?}"
    );
    assert_eq!(
        std::fs::read(env.path("app.db-journal")).unwrap(),
        journal,
        "journal untouched"
    );
    std::fs::write(&go, "").unwrap();
    assert!(holder.wait().unwrap().success());
    let c = rusqlite::Connection::open(&db).unwrap();
    let ok: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(ok, "ok");
    assert_eq!(count(&db, "SELECT count(*) FROM note WHERE v = 'uncommitted'"), 0);
}

/// A dir policy whose failing command changes the tree; guard paused at `dir-swap` and killed.
fn kill_in_dir_swap(env: &Env, no_exchange: bool) -> bool {
    let pause = env.path("paused.pid");
    let mut c = env.cmd(&[
        "--",
        "sh",
        "-c",
        "echo BAD > data/a.json; rm data/sub/b.json; echo new > data/new.json; exit 3",
    ]);
    c.env("GUARD_TEST_PAUSE", "dir-swap")
        .env("GUARD_TEST_PAUSE_FILE", &pause)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if no_exchange {
        c.env("GUARD_TEST_NO_RENAME_EXCHANGE", "1");
    }
    let mut child = c.spawn().unwrap();
    wait_for(&pause, "the dir-swap pause");
    let live_there = env.path("data").exists();
    child.kill().unwrap();
    child.wait().unwrap();
    live_there
}

fn dir_env() -> Env {
    let env = Env::new();
    for i in 0..20 {
        env.write(&format!("data/f{i:02}.json"), &format!("{{\"n\": {i}}}\n"));
    }
    env.write("data/a.json", "{\"a\": 1}\n");
    env.write("data/sub/b.json", "{\"b\": 2}\n");
    env.write(
        "guard.toml",
        "name = \"d\"\nstore = \"backups\"\n[[target]]\nname = \"data\"\nkind = \"dir\"\npath = \"data\"\n",
    );
    env
}

fn leftovers(env: &Env) -> Vec<String> {
    std::fs::read_dir(env.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".guard-"))
        .collect()
}

/// R18: SIGKILL in the middle of a directory swap. With `renameat2(RENAME_EXCHANGE)` the live
/// path holds a whole tree at every instant; `recover` then finishes and leaves nothing behind.
#[test]
fn dir_restore_killed_mid_swap_never_leaves_the_live_path_missing() {
    let env = dir_env();
    let before = tree(&env.path("data"));
    assert!(
        kill_in_dir_swap(&env, false),
        "the live path exists during the exchange"
    );
    assert_eq!(tree(&env.path("data")), before, "already the restored tree");
    assert!(!leftovers(&env).is_empty(), "the replaced tree is still beside it");
    let r = env.guard(&["recover", "--yes"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(tree(&env.path("data")), before);
    assert_eq!(leftovers(&env), Vec::<String>::new());
}

/// R18 where the filesystem cannot exchange: two renames, with a marker naming both siblings
/// first. Killed between them, the live path is missing until `recover`, which puts the
/// verified tree in place.
#[test]
fn dir_restore_killed_between_two_renames_is_finished_by_recover() {
    let env = dir_env();
    let before = tree(&env.path("data"));
    assert!(
        !kill_in_dir_swap(&env, true),
        "between the two renames the live name is free"
    );
    let r = env.guard(&["recover", "--yes"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("killed between its two renames"), "{r:?}");
    assert_eq!(tree(&env.path("data")), before);
    assert_eq!(leftovers(&env), Vec::<String>::new());
}
