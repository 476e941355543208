//! What killed guards leave behind (red-team finding 19, issue 14 item 11): scratch copies,
//! partial artifacts, cut-short prune markers, temporary copies beside a live target. `guard
//! status` names them; `guard prune` removes them, but never what a live guard or process still
//! uses.

use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The scratch directories (`tmp/guard-*`) in the env's store.
fn scratch_dirs(env: &Env) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(env.path("backups/tmp")) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("guard-"))
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

/// `guard ARGS` started paused at `point` (the `GUARD_TEST_PAUSE` hook), once it is there.
fn paused(env: &Env, args: &[&str], point: &str) -> Child {
    let pause = env.path(&format!("paused-{point}.pid"));
    let child = env
        .cmd(args)
        .env("GUARD_TEST_PAUSE", point)
        .env("GUARD_TEST_PAUSE_FILE", &pause)
        .env("GUARD_TEST_PAUSE_SECS", "120")
        .env("GUARD_TEST_PAUSE_RELEASE", env.path("release-pause"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(point, 120, || pause.exists());
    child
}

fn kill9(mut child: Child) {
    unsafe {
        libc::kill(child.id() as i32, libc::SIGKILL);
    }
    child.wait().unwrap();
}

fn status_json(env: &Env) -> serde_json::Value {
    let r = env.guard(&["status", "--json"]);
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {r:?}"))
}

fn leftover_paths(v: &serde_json::Value) -> Vec<String> {
    v["leftovers"]
        .as_array()
        .unwrap_or_else(|| panic!("status --json has leftovers: {v}"))
        .iter()
        .map(|l| l["path"].as_str().unwrap().to_string())
        .collect()
}

fn shown(p: &Path) -> String {
    p.display().to_string()
}

/// A `guard snapshot` killed with SIGKILL in the middle (between its two targets) leaves its
/// scratch directory in the store's `tmp/`: `status` names it, `prune` removes it. (Before: status
/// said "nothing needs attention" and the directory stayed for good.)
#[test]
fn a_killed_snapshots_scratch_copy_is_named_by_status_and_removed_by_prune() {
    let env = lending_env("");
    let child = paused(&env, &["snapshot"], "snapshot-between-targets");
    kill9(child);
    let left = scratch_dirs(&env);
    assert_eq!(left.len(), 1, "the killed guard left its scratch directory: {left:?}");

    let s = env.guard(&["status"]);
    assert!(
        s.stdout.contains("left behind by guards that died") && s.stdout.contains(&shown(&left[0])),
        "status names the scratch directory: {s:?}"
    );
    assert_eq!(leftover_paths(&status_json(&env)), vec![shown(&left[0])]);

    let d = env.guard(&["prune", "--dry-run"]);
    assert_eq!(d.code, 0, "{d:?}");
    assert!(
        d.stdout.contains(&shown(&left[0])) && d.stdout.contains("would remove"),
        "{d:?}"
    );
    assert!(left[0].exists(), "a dry run removes nothing");

    let p = env.guard(&["prune"]);
    assert_eq!(p.code, 0, "{p:?}");
    assert!(
        p.stdout.contains(&shown(&left[0])) && p.stdout.contains("removed"),
        "{p:?}"
    );
    assert!(scratch_dirs(&env).is_empty(), "{p:?}");
    assert!(leftover_paths(&status_json(&env)).is_empty());
    // guard still works over the cleaned store.
    let r = env.guard(&["snapshot"]);
    assert_eq!(r.code, 0, "{r:?}");
}

/// The scratch directory of a live `guard verify` (which takes no policy lock) is not a
/// leftover: status does not name it, prune leaves it, and the verify finishes.
#[test]
fn a_live_guards_scratch_copy_is_neither_named_nor_removed() {
    let env = simple_env("");
    let r = env.guard(&["snapshot"]);
    assert_eq!(r.code, 0, "{r:?}");
    let id = r.stdout.trim().to_string();
    let child = paused(&env, &["verify", &id], "verify-before-final-check");
    let live = scratch_dirs(&env);
    assert_eq!(live.len(), 1, "{live:?}");

    assert!(
        leftover_paths(&status_json(&env)).is_empty(),
        "a live guard's scratch copy is no leftover"
    );
    let p = env.guard(&["prune"]);
    assert_eq!(p.code, 0, "{p:?}");
    assert!(live[0].exists(), "prune left the live guard's scratch directory: {p:?}");

    // Let the verify go on: it finishes and cleans up after itself.
    std::fs::write(env.path("release-pause"), "").unwrap();
    let r: Run = child.wait_with_output().unwrap().into();
    assert_eq!(r.code, 0, "{r:?}");
    assert!(scratch_dirs(&env).is_empty());
}

/// Partial artifacts, a cut-short prune marker and a SQLite restore's temporary copy beside the
/// live database (made by hand with the names guard uses: a kill inside one write is not
/// reproducible) are named by status and removed by prune; the live database, the complete
/// snapshot, a copy some process has open and the trees of a directory swap that `recover` must
/// finish are kept.
#[test]
fn partial_artifacts_and_temporary_copies_beside_a_target_are_named_and_removed() {
    let env = lending_env("");
    let before = dump(&db(&env));
    let r = env.guard(&["snapshot"]);
    assert_eq!(r.code, 0, "{r:?}");
    let good = r.stdout.trim().to_string();

    let partial = env.write(
        "backups/snapshots/20261201T000000.000Z-dead/.app.sqlite.gz.guard-tmp-0a1b2c3d",
        &"y".repeat(3000),
    );
    let marker = env.write(
        &format!("backups/snapshots/{good}/.prune.json.guard-tmp-1e2f3a4b"),
        "{\"id\":",
    );
    let dbdir = db(&env).parent().unwrap().to_path_buf();
    let beside = dbdir.join(".lending_app_prod.db.guard-tmp-5c6d7e8f");
    std::fs::write(&beside, "z".repeat(4000)).unwrap();
    let open = dbdir.join(".lending_app_prod.db.guard-tmp-00ff00ff");
    std::fs::write(&open, "still open").unwrap();
    let holder = std::process::Command::new("sleep")
        .arg("60")
        .stdin(std::fs::File::open(&open).unwrap())
        .spawn()
        .unwrap();
    // A directory swap a killed restore left half done: recover's to finish, not prune's.
    let swap_staging = env.path("data/.rent_history.guard-restore-12345678");
    std::fs::create_dir_all(&swap_staging).unwrap();
    std::fs::write(swap_staging.join("2025-01.json"), "{}").unwrap();
    env.write("data/.rent_history.guard-swap", "{\"mode\":\"renames\"}");
    // Not guard's: a user's dotfile with a similar name.
    let users = dbdir.join(".lending_app_prod.db.guard-tmp-notes.txt");
    std::fs::write(&users, "mine").unwrap();

    let v = status_json(&env);
    let named = leftover_paths(&v);
    for p in [&partial, &marker, &beside, &open] {
        assert!(named.contains(&shown(p)), "status names {}: {v}", p.display());
    }
    assert_eq!(named.len(), 4, "{named:?}");
    let s = env.guard(&["status"]);
    assert!(
        s.stdout.contains("partial artifact") && s.stdout.contains("beside the live target"),
        "{s:?}"
    );

    let p = env.guard(&["prune"]);
    assert_eq!(p.code, 0, "{p:?}");
    assert!(
        !partial.exists() && !partial.parent().unwrap().exists(),
        "partial artifact and its empty dir: {p:?}"
    );
    assert!(!marker.exists(), "{p:?}");
    assert!(!beside.exists(), "{p:?}");
    assert!(open.exists(), "a copy a process has open is kept: {p:?}");
    assert!(p.stdout.contains("kept, a process has it open"), "{p:?}");
    assert!(
        swap_staging.join("2025-01.json").exists(),
        "recover's files are kept: {p:?}"
    );
    assert!(users.exists(), "a file guard did not name is kept");
    assert_eq!(dump(&db(&env)), before, "the live database is untouched");
    assert!(
        snapshots(&env).iter().any(|s| s["id"] == good.as_str()),
        "the snapshot stays"
    );
    let v = env.guard(&["verify", &good]);
    assert_eq!(v.code, 0, "the snapshot whose marker was removed still verifies: {v:?}");

    let mut holder = holder;
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert_eq!(
        leftover_paths(&status_json(&env)),
        vec![shown(&open)],
        "only the copy that was open"
    );
}

/// While another guard holds a lock in the store (another policy's run, between its snapshot and
/// its command's end), a partial artifact may be its own: status does not call it a leftover and
/// a prune of the other policy keeps it.
#[test]
fn while_another_guard_runs_in_the_store_its_files_are_kept() {
    let env = simple_env("");
    lending_db(&env.path("other.db"), 5);
    env.write(
        "other.toml",
        "name = \"other\"\nstore = \"backups\"\n[[target]]\nname = \"o\"\nkind = \"sqlite\"\npath = \"other.db\"\n",
    );
    let r = env.guard(&["snapshot"]);
    assert_eq!(r.code, 0, "{r:?}");
    let release = env.path("release");
    let child = env
        .cmd(&[
            "--yes",
            "--",
            "sh",
            "-c",
            &format!("while [ ! -e {} ]; do sleep 0.05; done", release.display()),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the run to hold its lock", 120, || {
        status_json(&env)["running"].is_object()
    });
    let partial = env.write(
        "backups/snapshots/20261201T000000.000Z-busy/.o.sqlite.gz.guard-tmp-0a1b2c3d",
        "being written",
    );
    let s = env.guard(&["--policy", "other.toml", "status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&s.stdout).unwrap();
    assert!(leftover_paths(&v).is_empty(), "{v}");
    let p = env.guard(&["--policy", "other.toml", "prune"]);
    assert_eq!(p.code, 0, "{p:?}");
    assert!(partial.exists(), "kept while another guard is at work: {p:?}");

    std::fs::write(&release, "").unwrap();
    let r: Run = child.wait_with_output().unwrap().into();
    assert_eq!(r.code, 0, "{r:?}");
    let p = env.guard(&["--policy", "other.toml", "prune"]);
    assert_eq!(p.code, 0, "{p:?}");
    assert!(!partial.exists(), "removed once no guard is at work: {p:?}");
}

/// Cut `snapshots/ID/manifest.json` to half its length, as a disk or a sync tool might.
fn truncate_manifest(env: &Env, id: &str) -> PathBuf {
    let p = env.path(&format!("backups/snapshots/{id}/manifest.json"));
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    p
}

/// R19, fourth case: a snapshot whose `manifest.json` is truncated. Before, `reindex` skipped it
/// and nothing named it again (never listed, never pruned, never reported). Now it is named by
/// `list`, `status`, `verify` and `prune`, never fatal to the other snapshots, never called
/// verified, never restored from (exit 65 naming the file), and `prune` keeps it (guard cannot
/// tell what it holds; its artifacts may restore by hand).
#[test]
fn a_truncated_manifest_is_named_everywhere_never_used_and_never_fatal_to_the_others() {
    let env = simple_env("");
    let mut ids = Vec::new();
    let mut dumps = Vec::new();
    for i in 0..3 {
        sql(
            &env.path("app.db"),
            &format!("INSERT INTO user (name) VALUES ('state {i}')"),
        );
        dumps.push(dump(&env.path("app.db")));
        let r = env.guard(&["snapshot"]);
        assert_eq!(r.code, 0, "{r:?}");
        ids.push(r.stdout.trim().to_string());
    }
    sql(&env.path("app.db"), "INSERT INTO user (name) VALUES ('state 3')");
    let live = dump(&env.path("app.db"));
    let (a, b, c) = (&ids[0], &ids[1], &ids[2]);

    // Damaged after the catalog indexed it: the first command that reads it (`verify`) fails it
    // and drops it from the catalog, so from then on it is named as damaged, like one `reindex`
    // could not index.
    let manifest = truncate_manifest(&env, b);
    let r = env.guard(&["verify", b]);
    assert_eq!(r.code, 65, "{r:?}");
    assert!(
        r.stderr.contains(&manifest.display().to_string()),
        "names the file: {r:?}"
    );
    let r = env.guard(&["reindex"]);
    assert_eq!(r.code, 0, "{r:?}");
    let l = env.guard(&["list"]);
    assert_eq!(l.code, 0, "{l:?}");
    assert!(l.stdout.contains(a.as_str()) && l.stdout.contains(c.as_str()), "{l:?}");
    assert!(!l.stdout.contains(b.as_str()), "not listed as complete: {l:?}");
    assert!(l.stderr.contains(&format!("skipping snapshot {b}")), "named: {l:?}");
    assert!(
        l.stderr.contains(&manifest.display().to_string()),
        "with its file: {l:?}"
    );
    let l = env.guard(&["list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&l.stdout).expect("stdout stays one JSON document");
    assert_eq!(v["snapshots"].as_array().unwrap().len(), 2, "{l:?}");

    let st = env.guard(&["status"]);
    assert_eq!(
        st.code, 0,
        "a damaged snapshot is not a target in a failed state: {st:?}"
    );
    assert!(
        st.stdout.contains(b.as_str()) && st.stdout.contains("damaged"),
        "{st:?}"
    );
    assert!(!st.stdout.contains("nothing needs attention"), "{st:?}");
    let v = status_json(&env);
    assert_eq!(v["damaged_snapshots"][0]["id"], b.as_str(), "{v}");
    assert_eq!(
        v["damaged_snapshots"][0]["manifest"],
        manifest.display().to_string(),
        "{v}"
    );
    assert_eq!(
        v["damaged_snapshots"][0]["policy"], "simple",
        "read from what is left: {v}"
    );

    // `verify` of every snapshot checks the others and fails the damaged one.
    let r = env.guard(&["verify", "--json"]);
    assert_eq!(r.code, 65, "{r:?}");
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let results = v["verified"].as_array().unwrap();
    assert_eq!(results.len(), 3, "{v}");
    for r in results {
        assert_eq!(r["ok"], r["id"] != b.as_str(), "{v}");
    }

    // Given its id, nothing uses it: exit 65 naming the file, the live database untouched.
    for args in [
        vec!["show", b.as_str()],
        vec!["verify", b.as_str()],
        vec!["restore", b.as_str(), "--yes"],
        vec!["drill", b.as_str()],
    ] {
        let r = env.guard(&args);
        assert_eq!(r.code, 65, "{args:?}: {r:?}");
        assert!(r.stderr.contains(&manifest.display().to_string()), "{args:?}: {r:?}");
    }
    assert_eq!(dump(&env.path("app.db")), live, "nothing was restored");

    // `restore latest` passes over a damaged newest snapshot, saying so, and restores the one
    // before it exactly.
    truncate_manifest(&env, c);
    let r = env.guard(&["restore", "latest", "--yes", "--no-rescue"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains(&format!("passed over {c}")), "{r:?}");
    assert!(r.stderr.contains(&format!("restoring snapshot {a}")), "{r:?}");
    assert_eq!(dump(&env.path("app.db")), dumps[0], "the older snapshot, exactly");

    // `prune` keeps and names them: their directories are still there.
    let r = env.guard(&["prune", "--keep-within", "0s", "--keep-last", "1"]);
    assert_eq!(r.code, 0, "{r:?}");
    for id in [b, c] {
        assert!(r.stdout.contains(&format!("{id}: kept")), "{r:?}");
        assert!(
            env.path(&format!("backups/snapshots/{id}/app.sqlite.gz")).exists(),
            "{id}"
        );
    }
    assert_eq!(env.guard(&["verify", a]).code, 0, "the good snapshot is still whole");
}
