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

/// R6: `data -> real` and `app.db -> realdb/app.db`. The restore reaches the real data, keeps both
/// links, and "verified" means the data behind them is the snapshot's. (The database lives
/// outside `real/`: one inside the tree would be two targets on one file, refused at load.)
#[test]
fn symlinked_sqlite_and_dir_targets_restore_the_real_data_and_keep_the_links() {
    let env = Env::new();
    env.write("real/f.txt", "orig\n");
    std::fs::create_dir(env.path("realdb")).unwrap();
    sql(
        &env.path("realdb/app.db"),
        "create table t(x); insert into t values (1);",
    );
    std::os::unix::fs::symlink(env.path("real"), env.path("data")).unwrap();
    std::os::unix::fs::symlink(env.path("realdb/app.db"), env.path("app.db")).unwrap();
    env.write(
        "guard.toml",
        "name = \"s1\"\nstore = \"backups\"\n\n[[target]]\nname = \"data\"\nkind = \"dir\"\npath = \"data\"\nhot_copy = \"always\"\n\n[[target]]\nname = \"app\"\nkind = \"sqlite\"\npath = \"app.db\"\n",
    );
    // The database is proven by its dump (the sqlite target restores a backup-API copy, equal in
    // content, not in bytes); every file of the tree by its SHA-256.
    let files = |env: &Env| tree(&env.path("real"));
    let (tree_before, dump_before) = (files(&env), sql_dump(&env.path("realdb/app.db")));
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
        r.stderr.contains("hot copy renamed into place"),
        "the directory came back by rename, its hot copy beside the real one: {r:?}"
    );
    assert!(
        is_symlink(&env.path("data")) && is_symlink(&env.path("app.db")),
        "links kept: {r:?}"
    );
    assert_eq!(files(&env), tree_before, "the real directory came back");
    assert_eq!(
        sql_dump(&env.path("realdb/app.db")),
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
        std::fs::canonicalize(env.path("realdb/app.db"))
            .unwrap()
            .display()
            .to_string()
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

/// R26: a directory, `/dev/null`, a missing file or a dangling symlink as a SQLite path each
/// say what they are; nothing runs. (A file as a dir target is legal: issue 21.)
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
        "name = \"lk\"\nstore = \"backups\"\n[[target]]\nname = \"app\"\nkind = \"sqlite\"\npath = \"app.db\"\nbusy_timeout = \"3s\"\n",
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

/// `guard restore` of a snapshot of the tree after it was changed; guard paused at `dir-swap`
/// (the exchange of a tree unpacked from the store) and killed. (A failed guarded run swaps a
/// copy unpacked beside the tree by `swap_in` instead: tests/it/dir_hot.rs.)
fn kill_in_dir_swap(env: &Env, no_exchange: bool) -> bool {
    let snap = env.guard(&["snapshot"]);
    assert_eq!(snap.code, 0, "{snap:?}");
    let id = snapshots(env)[0]["id"].as_str().unwrap().to_string();
    env.write("data/a.json", "BAD\n");
    std::fs::remove_file(env.path("data/sub/b.json")).unwrap();
    env.write("data/new.json", "new\n");
    let pause = env.path("paused.pid");
    let mut c = env.cmd(&["restore", &id, "--yes"]);
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

/// The seed-000 app directory: rent JSON files, the bills file at the root, and what an app
/// keeps beside them (`node_modules/`, `log/`, `*.tmp`).
pub fn app_env(policy: &str) -> Env {
    let env = Env::new();
    for m in 1..=8 {
        env.write(
            &format!("data/rent_history/2025_0{m}_v1.json"),
            &format!("{{\"month\": {m}, \"rent\": {}}}\n", 24000 + m),
        );
    }
    env.write(
        "electricity_bills_history.txt",
        "2025-08 vattenfall 1420\n2025-08 fortum 980\n",
    );
    env.write("prisma/schema.prisma", "model RentLedger { id Int @id }\n");
    env.write("node_modules/left-pad/index.js", "module.exports = 1;\n");
    env.write("log/app.log", "boot\n");
    env.write("guard.toml", policy);
    env
}

/// A listing of the app directory without what the policy excludes and without the store.
fn app_tree(env: &Env) -> BTreeMap<String, String> {
    tree(env.dir.path())
        .into_iter()
        .filter(|(p, _)| {
            !(p.starts_with("backups") || p.starts_with("node_modules") || p.starts_with("log") || p.ends_with(".tmp"))
        })
        .collect()
}

const MIGRATION: &str = "echo '2025-09 vattenfall 1500' >> electricity_bills_history.txt; rm data/rent_history/2025_03_v1.json; echo '{}' > data/rent_history/2025_09_v1.json; echo new > NOTES.md; mkdir -p data/cache && echo x > data/cache/c.bin; echo migrating >> log/app.log; echo scratch > build.tmp; exit 1";

/// Issue 21: the policy's own directory as the target (`path = "."`), with the store inside it
/// and `exclude` set. A failing migration edits a root-level file, deletes a JSON file and adds
/// files; the restore puts back exactly the snapshot's files (SHA-256 listing), in place (the
/// directory is guard's working directory and holds the store), never touches what is
/// excluded, and every snapshot — an earlier one, the pre-run and the rescue — is kept and
/// verifies.
#[test]
fn failed_migration_under_a_dot_target_holding_the_store_is_restored_exactly() {
    let env = app_env(
        "name = \"app\"\nstore = \"backups\"\n[[target]]\nname = \"app\"\nkind = \"dir\"\npath = \".\"\nexclude = [\"node_modules/\", \"log/\", \"*.tmp\"]\n",
    );
    let r = env.guard(&["snapshot", "--label", "earlier"]);
    assert_eq!(r.code, 0, "{r:?}");
    let before = app_tree(&env);
    let r = env.guard(&["--yes", "--json", "--", "sh", "-c", MIGRATION]);
    assert_eq!(r.code, 1, "{r:?}");
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["outcome"], "restored", "{r:?}");
    assert_eq!(app_tree(&env), before, "restored exactly");
    // Excluded paths are never touched: they keep what the command wrote.
    assert_eq!(
        std::fs::read_to_string(env.path("log/app.log")).unwrap(),
        "boot\nmigrating\n"
    );
    assert_eq!(std::fs::read_to_string(env.path("build.tmp")).unwrap(), "scratch\n");
    assert!(env.path("node_modules/left-pad/index.js").exists());
    // Every snapshot is kept and verifies; none holds the store or an excluded path.
    let snaps = snapshots(&env);
    assert_eq!(snaps.len(), 3, "{snaps:?}");
    for s in &snaps {
        let id = s["id"].as_str().unwrap();
        let r = env.guard(&["verify", id]);
        assert_eq!(r.code, 0, "{id}: {r:?}");
        let out = std::process::Command::new("tar")
            .arg("-tzf")
            .arg(env.path(&format!("backups/snapshots/{id}/app.tar.gz")))
            .output()
            .unwrap();
        let names = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(names.contains("electricity_bills_history.txt"), "{names}");
        for gone in ["backups", "node_modules", "log/", ".tmp", ".guard-"] {
            assert!(!names.contains(gone), "{id} holds {gone}: {names}");
        }
    }
    let m: serde_json::Value = serde_json::from_str(
        &env.guard(&["show", v["snapshot_id"].as_str().unwrap(), "--json"])
            .stdout,
    )
    .unwrap();
    assert_eq!(
        m["targets"][0]["exclude"],
        serde_json::json!(["node_modules/", "log/", "*.tmp"])
    );
    // The rescue holds the failed state: the new files, the edited bills file.
    let rescue = v["rescue_id"].as_str().unwrap();
    let r = env.guard(&["restore", rescue, "--yes", "--no-rescue"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(std::fs::read_to_string(env.path("NOTES.md")).unwrap(), "new\n");
    assert!(!env.path("data/rent_history/2025_03_v1.json").exists());
    assert_eq!(snapshots(&env).len(), 3, "a restore deletes no snapshot");
}

/// Issue 21, seed 000's policy: one dir target protecting the JSON directory and the bills file
/// at the root (`paths`), with an `untouched` check on the JSON directory. Deleting both, as
/// the guide's last step does, fails the run and both come back; the artifact unpacks by hand
/// with the paths as written in the policy.
#[test]
fn paths_protect_the_json_directory_and_the_bills_file_as_one_target() {
    let env = app_env(
        "name = \"rent\"\nstore = \"backups\"\n[[target]]\nname = \"files\"\nkind = \"dir\"\npaths = [\"data/rent_history\", \"electricity_bills_history.txt\"]\n\n[[check]]\nname = \"json untouched\"\ntarget = \"files\"\nuntouched = [\"data/rent_history/\"]\n",
    );
    let before = tree(env.dir.path());
    let r = env.guard(&[
        "--yes",
        "--",
        "sh",
        "-c",
        "rm -r data/rent_history electricity_bills_history.txt; echo changed > prisma/schema.prisma",
    ]);
    assert_eq!(r.code, 79, "the untouched check fails: {r:?}");
    let mut now = tree(env.dir.path());
    now.retain(|p, _| !p.starts_with("backups"));
    let mut expect = before.clone();
    expect.insert("prisma/schema.prisma".into(), now["prisma/schema.prisma"].clone());
    assert_eq!(
        now, expect,
        "both paths restored; a file outside them is left as the command made it"
    );
    let snaps = snapshots(&env);
    let pre = snaps.iter().find(|s| s["kind"] == "pre-run").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let m: serde_json::Value = serde_json::from_str(&env.guard(&["show", &pre, "--json"]).stdout).unwrap();
    assert_eq!(
        m["targets"][0]["paths"],
        serde_json::json!(["data/rent_history", "electricity_bills_history.txt"])
    );
    assert_eq!(env.guard(&["verify", &pre]).code, 0);
    let by_hand = env.path("by-hand");
    std::fs::create_dir_all(&by_hand).unwrap();
    let out = std::process::Command::new("tar")
        .arg("-xzf")
        .arg(env.path(&format!("backups/snapshots/{pre}/files.tar.gz")))
        .arg("-C")
        .arg(&by_hand)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut hand = tree(&by_hand);
    let mut orig = before.clone();
    orig.retain(|p, _| p.starts_with("data/rent_history/") || p == "electricity_bills_history.txt");
    hand.retain(|p, _| p != "data" && p != "data/rent_history");
    assert_eq!(hand, orig, "tar -xzf gives back the files under their policy paths");
}

/// Issue 21: a single file as a dir target (`path = "electricity_bills_history.txt"`): edited,
/// then deleted by failing commands, it comes back each time; its artifact is a tar of one file.
#[test]
fn a_single_file_target_is_restored() {
    let env = app_env(
        "name = \"bills\"\nstore = \"backups\"\n[[target]]\nname = \"bills\"\nkind = \"dir\"\npath = \"electricity_bills_history.txt\"\n",
    );
    let f = env.path("electricity_bills_history.txt");
    let before = tree(env.dir.path())["electricity_bills_history.txt"].clone();
    for cmd in [
        "echo 'x' >> electricity_bills_history.txt; exit 3",
        "rm electricity_bills_history.txt; exit 3",
    ] {
        let r = env.guard(&["--yes", "--", "sh", "-c", cmd]);
        assert_eq!(r.code, 3, "{cmd}: {r:?}");
        assert_eq!(tree(env.dir.path())["electricity_bills_history.txt"], before, "{cmd}");
    }
    assert!(f.is_file());
    let snaps = snapshots(&env);
    let id = snaps.iter().find(|s| s["kind"] == "pre-run").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let out = std::process::Command::new("tar")
        .arg("-tzf")
        .arg(env.path(&format!("backups/snapshots/{id}/bills.tar.gz")))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "electricity_bills_history.txt"
    );
}

/// Issue 21: guard killed in the middle of an in-place restore (after it removed what the
/// snapshot lacks, before it wrote anything back). The half-restored tree is never snapshotted
/// as if it were a state; `guard recover` finishes the restore exactly.
#[test]
fn a_crash_in_the_middle_of_an_in_place_restore_is_finished_by_recover() {
    let env = app_env(
        "name = \"app\"\nstore = \"backups\"\n[[target]]\nname = \"app\"\nkind = \"dir\"\npath = \".\"\nexclude = [\"node_modules/\", \"log/\", \"*.tmp\"]\n",
    );
    let before = app_tree(&env);
    let pause = env.path("paused.pid");
    let mut child = env
        .cmd(&["--yes", "--", "sh", "-c", MIGRATION])
        .env("GUARD_TEST_PAUSE", "dir-inplace-commit")
        .env("GUARD_TEST_PAUSE_FILE", &pause)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&pause, "the in-place commit pause");
    child.kill().unwrap();
    child.wait().unwrap();
    std::fs::remove_file(&pause).unwrap();
    assert!(!env.path("NOTES.md").exists(), "killed after the removals");
    assert_ne!(app_tree(&env), before, "half restored");
    let r = env.guard(&["snapshot"]);
    assert_eq!(r.code, 69, "a half-restored tree is not a state to snapshot: {r:?}");
    assert!(
        r.stderr.contains("in-place restore") && r.stderr.contains("interrupted"),
        "{r:?}"
    );
    let r = env.guard(&["recover", "--yes"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(app_tree(&env), before, "recover finished the restore");
    assert!(
        !tree(env.dir.path()).keys().any(|p| p.contains(".guard-")),
        "no leftovers"
    );
    assert_eq!(env.guard(&["snapshot"]).code, 0);
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `path → "uid:gid"` of every entry under `root` (links not followed), plus the mtime of files
/// and links.
fn owners(root: &Path) -> BTreeMap<String, String> {
    use std::os::unix::fs::MetadataExt;
    tree(root)
        .into_keys()
        .map(|p| {
            let m = std::fs::symlink_metadata(root.join(&p)).unwrap();
            let t = if m.is_dir() {
                String::new()
            } else {
                format!(" {}", m.mtime())
            };
            (p, format!("{}:{}{t}", m.uid(), m.gid()))
        })
        .collect()
}

/// As root, a restore gives every file, directory and link back to its owner and its mtime —
/// in place (`path = "."`, the store inside) and by swap (`path = "data"`) — also where the
/// command changed only the owner and left the content alone.
#[test]
fn restores_as_root_give_every_entry_back_its_owner() {
    if !running_as_root() {
        eprintln!("skipped: giving files away needs root");
        return;
    }
    for (path, how) in [(".", "in place"), ("data", "by swap")] {
        let env = Env::new();
        env.write("data/a.txt", "a\n");
        env.write("data/b.txt", "b\n");
        env.write("data/sub/c.txt", "c\n");
        std::os::unix::fs::symlink("a.txt", env.path("data/l")).unwrap();
        for (p, o) in [
            ("data", 1234),
            ("data/a.txt", 1234),
            ("data/b.txt", 2000),
            ("data/sub", 1234),
            ("data/sub/c.txt", 3000),
            ("data/l", 1234),
        ] {
            std::os::unix::fs::lchown(env.path(p), Some(o), Some(o + 1)).unwrap();
        }
        let t = |rel: &str| {
            let p = env.path(rel);
            let old = filetime_secs(&p) - 86_400;
            set_file_mtime(&p, old);
        };
        t("data/a.txt");
        t("data/b.txt");
        env.write(
            "guard.toml",
            &format!(
                "name = \"own\"\nstore = \"backups\"\n[[target]]\nname = \"data\"\nkind = \"dir\"\npath = \"{path}\"\n"
            ),
        );
        let root = if path == "." {
            env.dir.path().to_path_buf()
        } else {
            env.path("data")
        };
        let keep = |m: BTreeMap<String, String>| -> BTreeMap<String, String> {
            m.into_iter()
                .filter(|(p, _)| !p.starts_with("backups") && p != "guard.toml")
                .collect()
        };
        let before = keep(owners(&root));
        let tree_before = keep(tree(&root));
        let r = env.guard(&[
            "--yes",
            "--",
            "sh",
            "-c",
            "chown -R 0:0 data; echo x >> data/a.txt; touch data/b.txt; exit 1",
        ]);
        assert_eq!(r.code, 1, "{how}: {r:?}");
        assert_eq!(keep(tree(&root)), tree_before, "{how}: content");
        assert_eq!(keep(owners(&root)), before, "{how}: owners and mtimes");
    }
}

fn filetime_secs(p: &Path) -> i64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(p).unwrap().mtime()
}

fn set_file_mtime(p: &Path, secs: i64) {
    let f = std::fs::File::options().write(true).open(p).unwrap();
    f.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(secs as u64))
        .unwrap();
}

/// The journal of a `guard restore` killed in the middle of its in-place commit (after the
/// removals, before anything is written back): `guard recover` finishes that restore exactly,
/// with or without the restore's rescue snapshot (`--no-rescue`).
#[test]
fn a_killed_guard_restore_in_place_is_finished_by_recover() {
    for no_rescue in [false, true] {
        let env = app_env(
            "name = \"app\"\nstore = \"backups\"\n[[target]]\nname = \"app\"\nkind = \"dir\"\npath = \".\"\nexclude = [\"node_modules/\", \"log/\", \"*.tmp\"]\n",
        );
        let r = env.guard(&["snapshot"]);
        assert_eq!(r.code, 0, "{r:?}");
        let id = r.stdout.trim().to_string();
        let before = app_tree(&env);
        let r = env.guard(&["--yes", "--", "sh", "-c", &MIGRATION.replace("exit 1", "exit 0")]);
        assert_eq!(r.code, 0, "{r:?}");
        assert_ne!(app_tree(&env), before);
        let pause = env.path("paused.pid");
        let mut args = vec!["restore", id.as_str(), "--yes"];
        if no_rescue {
            args.push("--no-rescue");
        }
        let mut child = env
            .cmd(&args)
            .env("GUARD_TEST_PAUSE", "dir-inplace-commit")
            .env("GUARD_TEST_PAUSE_FILE", &pause)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for(&pause, "the in-place commit pause");
        child.kill().unwrap();
        child.wait().unwrap();
        std::fs::remove_file(&pause).unwrap();
        assert!(
            !env.path("NOTES.md").exists(),
            "no_rescue={no_rescue}: killed after the removals"
        );
        assert_ne!(app_tree(&env), before, "no_rescue={no_rescue}: half restored");
        // (`guard status` exiting 82 here is core's part of the attention work.)
        let r = env.guard(&["status"]);
        assert!(
            r.stdout.contains("INTERRUPTED") && r.stdout.contains("recover"),
            "no_rescue={no_rescue}: {r:?}"
        );
        let n = snapshots(&env).len();
        let r = env.guard(&["recover", "--yes"]);
        assert_eq!(r.code, 0, "no_rescue={no_rescue}: {r:?}");
        assert_eq!(
            app_tree(&env),
            before,
            "no_rescue={no_rescue}: recover finished the restore"
        );
        if no_rescue {
            // Recover kept the half-restored tree it found in a rescue snapshot that says so.
            let snaps = snapshots(&env);
            assert_eq!(snaps.len(), n + 1, "{snaps:?}");
            let newest = snaps
                .iter()
                .filter(|s| s["kind"] == "rescue")
                .map(|s| s["id"].as_str().unwrap())
                .max()
                .unwrap();
            let m: serde_json::Value = serde_json::from_str(&env.guard(&["show", newest, "--json"]).stdout).unwrap();
            assert_eq!(m["targets"][0]["meta"]["half_restored_from"], id.as_str(), "{m}");
        }
        assert!(
            !tree(env.dir.path()).keys().any(|p| p.contains(".guard-")),
            "no_rescue={no_rescue}: no leftovers"
        );
        let r = env.guard(&["status"]);
        assert!(!r.stdout.contains("INTERRUPTED"), "no_rescue={no_rescue}: {r:?}");
        assert_eq!(env.guard(&["snapshot"]).code, 0, "no_rescue={no_rescue}");
    }
}

/// R1's reproductions, now that a `dir` target leaves the store out: the store inside the
/// target (`path = "data"`, `store = "data/backups"`), the policy's own directory given
/// absolutely with the default store, and the same through `paths`. A failed run restores the
/// tree exactly (SHA-256 listing) and keeps every snapshot — the pre-run and the rescue — each
/// verifying; none of them holds the store.
#[test]
fn a_failed_run_under_a_dir_target_holding_the_store_keeps_every_snapshot() {
    // (what, store, does the target protect notes.txt, policy body)
    type Case = (&'static str, &'static str, bool, Box<dyn Fn(&Env) -> String>);
    let cases: Vec<Case> = vec![
        (
            "store inside the target",
            "data/backups",
            false,
            Box::new(|_| "[[target]]\nname = \"data\"\nkind = \"dir\"\npath = \"data\"\n".into()),
        ),
        (
            "the policy's directory, absolute",
            "backups",
            true,
            Box::new(|env| {
                format!(
                    "[[target]]\nname = \"data\"\nkind = \"dir\"\npath = \"{}\"\n",
                    env.dir.path().display()
                )
            }),
        ),
        (
            "paths, one of them holding the store",
            "data/backups",
            true,
            Box::new(|_| "[[target]]\nname = \"data\"\nkind = \"dir\"\npaths = [\"data\", \"notes.txt\"]\n".into()),
        ),
    ];
    for (what, store, protects_notes, body) in &cases {
        let env = Env::new();
        env.write("data/f1.txt", "hello\n");
        env.write("data/sub/f2.txt", "two\n");
        env.write("notes.txt", "notes\n");
        env.write(
            "guard.toml",
            &format!("name = \"a1\"\nstore = \"{store}\"\n{}", body(&env)),
        );
        let listing = |env: &Env| -> BTreeMap<String, String> {
            tree(env.dir.path())
                .into_iter()
                .filter(|(p, _)| !p.starts_with(store))
                .collect()
        };
        let before = listing(&env);
        let r = env.guard(&[
            "--yes",
            "--json",
            "--",
            "sh",
            "-c",
            "echo changed > data/f1.txt; echo new > data/new.txt; rm -r data/sub; echo x >> notes.txt; exit 4",
        ]);
        assert_eq!(r.code, 4, "{what}: {r:?}");
        let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        assert_eq!(v["outcome"], "restored", "{what}: {r:?}");
        let mut expect = before.clone();
        if !protects_notes {
            // notes.txt is not protected by `path = "data"`: it keeps the command's change.
            let now = listing(&env);
            expect.insert("notes.txt".into(), now["notes.txt"].clone());
        }
        assert_eq!(listing(&env), expect, "{what}: restored exactly");
        let snaps = snapshots(&env);
        let ids: Vec<&str> = snaps.iter().map(|s| s["id"].as_str().unwrap()).collect();
        for want in [&v["snapshot_id"], &v["rescue_id"]] {
            assert!(ids.contains(&want.as_str().unwrap()), "{what}: {want} kept: {ids:?}");
        }
        for id in &ids {
            let r = env.guard(&["verify", id]);
            assert_eq!(r.code, 0, "{what}: {id}: {r:?}");
            let out = std::process::Command::new("tar")
                .arg("-tzf")
                .arg(env.path(&format!("{store}/snapshots/{id}/data.tar.gz")))
                .output()
                .unwrap();
            let names = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(names.contains("f1.txt"), "{what}: {names}");
            assert!(
                !names.contains("backups") && !names.contains(".guard-"),
                "{what}: {id} holds the store: {names}"
            );
        }
        // The rescue holds the failed state.
        let rescue = v["rescue_id"].as_str().unwrap();
        let r = env.guard(&["restore", rescue, "--yes", "--no-rescue"]);
        assert_eq!(r.code, 0, "{what}: {r:?}");
        assert_eq!(
            std::fs::read_to_string(env.path("data/f1.txt")).unwrap(),
            "changed\n",
            "{what}"
        );
        assert!(
            snapshots(&env).len() >= ids.len(),
            "{what}: a restore deletes no snapshot"
        );
    }
}

/// A `dir` target inside guard's store (or that is the store) is refused when the policy loads
/// (exit 64), before anything runs: it would snapshot the store into itself.
#[test]
fn a_dir_target_inside_the_store_is_refused() {
    for path in ["backups", "backups/snapshots"] {
        let env = Env::new();
        env.write("data/f.txt", "f\n");
        env.write(
            "guard.toml",
            "name = \"in\"\nstore = \"backups\"\n[[target]]\nname = \"data\"\nkind = \"dir\"\npath = \"data\"\n",
        );
        assert_eq!(env.guard(&["snapshot"]).code, 0);
        env.write(
            "guard.toml",
            &format!(
                "name = \"in\"\nstore = \"backups\"\n[[target]]\nname = \"b\"\nkind = \"dir\"\npath = \"{path}\"\n"
            ),
        );
        // (`guard list` refuses the policy too: count the store's snapshot directories.)
        let count = || std::fs::read_dir(env.path("backups/snapshots")).unwrap().count();
        let n = count();
        let r = env.guard(&["--yes", "--", "touch", "ran"]);
        assert_eq!(r.code, 64, "{path}: refused when the policy loads: {r:?}");
        assert!(r.stderr.contains("store"), "{path}: {r:?}");
        assert!(!env.path("ran").exists(), "{path}: the command ran");
        assert_eq!(count(), n, "{path}");
    }
}

/// Issue 21: `untouched` checks and drills with several paths and exclusions. The check on the
/// JSON directory ignores what `exclude` leaves out (an `import.tmp` the command drops there),
/// so a run that only does that and appends to the bills file is kept; one that edits a JSON
/// file fails the check and is restored, the excluded file left as it is. A drill restores
/// both paths into scratch and its `untouched` drill check passes on them (8 JSON files and the
/// bills file, no excluded file); so does a drill of the app's own directory (`path = "."`,
/// the store inside it, `exclude` set).
#[test]
fn untouched_checks_and_drills_work_with_several_paths_and_exclusions() {
    let env = app_env(
        "name = \"rent\"\nstore = \"backups\"\n[[target]]\nname = \"files\"\nkind = \"dir\"\npaths = [\"data/rent_history\", \"electricity_bills_history.txt\"]\nexclude = [\"*.tmp\"]\n\n[[check]]\nname = \"json untouched\"\ntarget = \"files\"\nuntouched = [\"data/rent_history/\"]\n\n[[drill.check]]\nname = \"both paths in the drill\"\ntarget = \"files\"\nuntouched = [\"data/rent_history/\", \"electricity_bills_history.txt\"]\n",
    );
    let r = env.guard(&[
        "--yes",
        "--json",
        "--",
        "sh",
        "-c",
        "echo scratch > data/rent_history/import.tmp; echo '2025-09 fortum 990' >> electricity_bills_history.txt",
    ]);
    assert_eq!(r.code, 0, "an excluded file does not touch the JSON directory: {r:?}");
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["outcome"], "kept", "{r:?}");
    assert!(std::fs::read_to_string(env.path("electricity_bills_history.txt"))
        .unwrap()
        .contains("2025-09 fortum 990"));
    let before = tree(env.dir.path());
    let r = env.guard(&[
        "--yes",
        "--json",
        "--",
        "sh",
        "-c",
        "echo '{}' > data/rent_history/2025_01_v1.json; echo more >> data/rent_history/import.tmp",
    ]);
    assert_eq!(r.code, 79, "the untouched check fails: {r:?}");
    let mut expect = before.clone();
    let now = tree(env.dir.path());
    expect.insert(
        "data/rent_history/import.tmp".into(),
        now["data/rent_history/import.tmp"].clone(),
    );
    let outside_store = |m: &BTreeMap<String, String>| -> BTreeMap<String, String> {
        m.iter()
            .filter(|(p, _)| !p.starts_with("backups"))
            .map(|(p, s)| (p.clone(), s.clone()))
            .collect()
    };
    assert_eq!(outside_store(&now), outside_store(&expect), "restored exactly");
    assert_eq!(
        std::fs::read_to_string(env.path("data/rent_history/import.tmp")).unwrap(),
        "scratch\nmore\n",
        "an excluded file is never touched"
    );
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let pre = v["snapshot_id"].as_str().unwrap().to_string();
    let r = env.guard(&["drill", "--json", &pre]);
    assert_eq!(r.code, 0, "{r:?}");
    let d: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(d["ok"], true, "{d}");
    assert_eq!(d["checks"][0]["passed"], true, "{d}");
    assert_eq!(
        d["checks"][0]["after"], "9 rows",
        "8 JSON files and the bills file: {d}"
    );

    // The app's own directory, store inside, exclusions: the drill passes and checks the tree.
    env.write(
        "guard.toml",
        "name = \"app\"\nstore = \"backups\"\n[[target]]\nname = \"app\"\nkind = \"dir\"\npath = \".\"\nexclude = [\"node_modules/\", \"log/\", \"*.tmp\"]\n\n[[drill.check]]\nname = \"json in the drill\"\ntarget = \"app\"\nuntouched = [\"data/rent_history/\", \"prisma\"]\n",
    );
    let r = env.guard(&["snapshot"]);
    assert_eq!(r.code, 0, "{r:?}");
    let id = r.stdout.trim().to_string();
    let r = env.guard(&["drill", "--json", &id]);
    assert_eq!(r.code, 0, "{r:?}");
    let d: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(d["checks"][0]["passed"], true, "{d}");
    assert_eq!(d["checks"][0]["after"], "9 rows", "8 JSON files and the schema: {d}");
    let r = env.guard(&["verify", &id]);
    assert_eq!(r.code, 0, "{r:?}");
}
