//! Time to recovery (issue 17): a failed guarded run puts SQLite back by renaming the hot copy
//! its pre-run snapshot kept beside the database, sets the failed state aside, and compresses
//! that into the rescue snapshot afterwards. Proven with `sqlite3 .dump`-style comparisons.

use crate::common::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

/// Guard's files beside `app.db` (hot copies, failed states set aside), by name.
fn guard_files(env: &Env) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(env.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".app.db.guard-"))
        .collect();
    v.sort();
    v
}

/// A command that deletes every payment and exits 3 without closing its connection, so its
/// committed transaction is left in `app.db-wal`.
fn failing_migration() -> Vec<&'static str> {
    vec![
        "--",
        "python3",
        "-c",
        "import os, sqlite3; c = sqlite3.connect('app.db'); c.execute('DELETE FROM payment'); c.commit(); os._exit(3)",
    ]
}

#[test]
fn a_failed_run_restores_sqlite_by_renaming_its_hot_copy_and_rescues_the_failed_state() {
    let env = simple_env("");
    let db = env.path("app.db");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o640)).unwrap();
    let before = dump(&db);
    let ino_before = std::fs::metadata(&db).unwrap().ino();

    let r = env.guard(&failing_migration());
    assert_eq!(r.code, 3, "the command's exit code passes through: {r:?}");
    assert!(
        r.stderr.contains("hot copy renamed into place"),
        "restored by rename: {r:?}"
    );
    assert_eq!(dump(&db), before, "database back exactly");
    let m = std::fs::metadata(&db).unwrap();
    assert_ne!(m.ino(), ino_before, "the live path names the hot copy now");
    assert_eq!(m.permissions().mode() & 0o7777, 0o640, "the live file's mode is kept");
    assert!(
        !env.path("app.db-wal").exists(),
        "the failed state's WAL is not left beside it"
    );
    assert!(
        guard_files(&env).is_empty(),
        "no hot copy or set-aside file is left: {:?}",
        guard_files(&env)
    );

    // The rescue snapshot holds the failed state, WAL included: no payments.
    let snaps = snapshots(&env);
    let id_of = |kind: &str| -> String {
        let s: Vec<_> = snaps.iter().filter(|s| s["kind"] == kind).collect();
        assert_eq!(s.len(), 1, "one {kind} snapshot: {snaps:?}");
        s[0]["id"].as_str().unwrap().to_string()
    };
    let (rescue, pre) = (id_of("rescue"), id_of("pre-run"));
    let show = env.guard(&["show", &rescue, "--json"]);
    let sm: serde_json::Value = serde_json::from_str(&show.stdout).unwrap();
    assert_eq!(sm["kind"], "rescue", "{sm}");
    assert_eq!(
        sm["targets"][0]["source"],
        db.display().to_string(),
        "recorded as the policy's path, not the set-aside file: {sm}"
    );
    let back = env.guard(&["restore", &rescue, "--yes", "--no-rescue"]);
    assert_eq!(back.code, 0, "{back:?}");
    assert_eq!(
        count(&db, "SELECT count(*) FROM payment"),
        0,
        "the failed state came back"
    );
    assert_ne!(dump(&db), before);
    let again = env.guard(&["restore", &pre, "--yes", "--no-rescue"]);
    assert_eq!(again.code, 0, "{again:?}");
    assert_eq!(dump(&db), before, "the pre-run snapshot in the store restores too");
}

#[test]
fn a_kept_run_and_a_refused_one_leave_no_hot_copy() {
    let env = simple_env("");
    let r = env.guard(&["--", "true"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(guard_files(&env).is_empty(), "{:?}", guard_files(&env));
    let r = env.guard(&["--no-restore", "--", "false"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(guard_files(&env).is_empty(), "{:?}", guard_files(&env));
}

#[test]
fn without_room_for_a_hot_copy_the_run_says_so_and_restores_from_the_store() {
    let env = simple_env("");
    let db = env.path("app.db");
    let before = dump(&db);
    let r = env
        .cmd(&failing_migration())
        .env("GUARD_TEST_HOT_FREE", "1000")
        .output()
        .unwrap();
    let r: Run = r.into();
    assert_eq!(r.code, 3, "{r:?}");
    assert!(r.stderr.contains("no hot copy"), "the fallback is said: {r:?}");
    assert!(r.stderr.contains("a hot copy needs"), "{r:?}");
    assert!(!r.stderr.contains("renamed into place"), "{r:?}");
    assert_eq!(dump(&db), before);
    assert!(guard_files(&env).is_empty(), "{:?}", guard_files(&env));
}

#[test]
fn a_hot_copy_changed_during_the_command_is_not_used() {
    let env = simple_env("");
    let db = env.path("app.db");
    let before = dump(&db);
    // Once the pre-run snapshot is in the store, the command corrupts guard's hot copy (as a
    // stray `find -exec` might), then fails.
    let r = env.guard(&[
        "--",
        "sh",
        "-c",
        "until [ -e backups/snapshots/*/manifest.json ]; do sleep 0.05; done; for f in .app.db.guard-hot-*; do printf garbage >> \"$f\"; done; exit 4",
    ]);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("hot copy was not used"), "{r:?}");
    assert!(r.stderr.contains("changed after its checksum was taken"), "{r:?}");
    assert_eq!(dump(&db), before, "restored from the store instead");
    assert!(guard_files(&env).is_empty(), "{:?}", guard_files(&env));
}

/// The restore by rename needs nothing from the store, so it no longer waits for the checksum
/// pass over the pre-run snapshot's artifacts (which grows with the data): a store artifact
/// damaged while the command ran (here by the command itself) does not stop the restore from the
/// intact hot copy; guard then says the snapshot is damaged, and `guard verify` fails. (Before:
/// "failed verification; nothing was restored", exit 80, the database left as the command made it.)
#[test]
fn a_store_artifact_damaged_during_the_command_does_not_stop_the_restore_by_rename() {
    let env = simple_env("");
    let db = env.path("app.db");
    let before = dump(&db);
    let r = env.guard(&[
        "--",
        "sh",
        "-c",
        "until [ -e backups/snapshots/*/manifest.json ]; do sleep 0.05; done; sqlite3 app.db 'DELETE FROM payment' && for f in backups/snapshots/*/app*; do printf garbage | dd of=\"$f\" bs=1 seek=40 conv=notrunc 2>/dev/null; done; exit 3",
    ]);
    assert_eq!(r.code, 3, "the command's exit code passes through: {r:?}");
    assert!(
        r.stderr.contains("hot copy renamed into place"),
        "restored by rename: {r:?}"
    );
    assert_eq!(dump(&db), before, "database back exactly");
    assert!(
        r.stderr.contains("is damaged in the store") && r.stderr.contains("SHA-256 mismatch"),
        "the damage is said: {r:?}"
    );
    let v = env.guard(&["verify"]);
    assert_ne!(v.code, 0, "verify finds the damaged snapshot: {v:?}");
}

/// When the hot copy cannot be used either, the damaged store artifact stops the restore before
/// anything is touched, as before: exit 80, the snapshot named, nothing restored.
#[test]
fn a_damaged_store_artifact_and_an_unusable_hot_copy_restore_nothing_and_say_so() {
    let env = simple_env("");
    let r = env.guard(&[
        "--",
        "sh",
        "-c",
        "until [ -e backups/snapshots/*/manifest.json ]; do sleep 0.05; done; sqlite3 app.db 'DELETE FROM payment' && for f in .app.db.guard-hot-*; do printf garbage >> \"$f\"; done && for f in backups/snapshots/*/app*; do printf garbage | dd of=\"$f\" bs=1 seek=40 conv=notrunc 2>/dev/null; done; exit 3",
    ]);
    assert_eq!(r.code, 80, "{r:?}");
    assert!(
        r.stderr.contains("failed verification") && r.stderr.contains("nothing was restored"),
        "{r:?}"
    );
    assert_eq!(
        count(&db_of(&env), "SELECT count(*) FROM payment"),
        0,
        "left as the command made it"
    );
}

// --- The deferred store artifact (issue 17, added downtime) --------------------------------
//
// The command starts once the hot copy is verified; the pre-run snapshot's store artifact is
// written while it runs. `GUARD_TEST_HOLD=deferred-artifact` holds that write until the file
// `GUARD_TEST_HOLD_RELEASE` exists (or the command failed), so these tests know it has not
// happened yet.

/// `env.guard(args)` with the deferred store write held until `release` exists.
fn held(env: &Env, release: &str, args: &[&str]) -> Run {
    env.cmd(args)
        .env("GUARD_TEST_HOLD", "deferred-artifact")
        .env("GUARD_TEST_HOLD_RELEASE", env.path(release))
        .output()
        .unwrap()
        .into()
}

/// Every object under the store's `snapshots/`, by path.
fn store_objects(env: &Env) -> Vec<String> {
    fn walk(d: &std::path::Path, base: &std::path::Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, base, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    let mut v = Vec::new();
    let base = env.path("backups");
    walk(&base.join("snapshots"), &base, &mut v);
    v.sort();
    v
}

#[test]
fn a_kept_run_starts_the_command_before_the_store_artifact_and_exits_only_once_it_is_verified() {
    let env = simple_env("");
    let db = env.path("app.db");
    let before = dump(&db);
    // The command sees the verified hot copy and no store artifact or manifest yet, records
    // that, changes the database, and lets the held store write go on.
    let r = held(
        &env,
        "go",
        &[
            "--",
            "sh",
            "-c",
            "ls .app.db.guard-hot-* > seen && ls backups/snapshots/*/* >> seen 2>/dev/null; sqlite3 app.db 'UPDATE payment SET amount = amount + 1' && touch go",
        ],
    );
    assert_eq!(r.code, 0, "{r:?}");
    let seen = std::fs::read_to_string(env.path("seen")).unwrap();
    assert!(seen.starts_with(".app.db.guard-hot-"), "the hot copy existed: {seen}");
    assert_eq!(
        seen.lines().count(),
        1,
        "nothing was in the store yet when the command ran: {seen}"
    );
    // Right after guard exited: the snapshot is complete, verified, and restores the pre-run state.
    let snaps = snapshots(&env);
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    assert_eq!(snaps[0]["kind"], "pre-run");
    let id = snaps[0]["id"].as_str().unwrap().to_string();
    assert!(
        store_objects(&env).contains(&format!("snapshots/{id}/manifest.json")),
        "{:?}",
        store_objects(&env)
    );
    assert!(
        guard_files(&env).is_empty(),
        "the hot copy is gone: {:?}",
        guard_files(&env)
    );
    let v = env.guard(&["verify", &id]);
    assert_eq!(v.code, 0, "{v:?}");
    assert_ne!(dump(&db), before, "the command's change is kept");
    let back = env.guard(&["restore", &id, "--yes", "--no-rescue"]);
    assert_eq!(back.code, 0, "{back:?}");
    assert_eq!(dump(&db), before, "the deferred artifact holds the pre-run state");
}

#[test]
fn a_command_failing_before_the_store_artifact_exists_is_restored_from_the_hot_copy() {
    let env = simple_env("");
    let db = env.path("app.db");
    let before = dump(&db);
    let r = held(&env, "never", &failing_migration());
    assert_eq!(r.code, 3, "{r:?}");
    assert!(r.stderr.contains("hot copy renamed into place"), "{r:?}");
    assert!(r.stderr.contains("its store artifact was still being written"), "{r:?}");
    assert_eq!(dump(&db), before, "database back exactly, without any store artifact");
    assert!(guard_files(&env).is_empty(), "{:?}", guard_files(&env));
    // The store holds the rescue snapshot only: the incomplete pre-run snapshot was removed.
    let snaps = snapshots(&env);
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    assert_eq!(snaps[0]["kind"], "rescue");
    let rescue = snaps[0]["id"].as_str().unwrap();
    assert!(
        store_objects(&env)
            .iter()
            .all(|o| o.starts_with(&format!("snapshots/{rescue}/"))),
        "{:?}",
        store_objects(&env)
    );
    let status = env.guard(&["status", "--json"]);
    assert_eq!(status.code, 0, "nothing needs attention: {status:?}");
    let v: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert!(v["incomplete_snapshots"].as_array().is_none_or(|a| a.is_empty()), "{v}");
}

#[test]
fn a_hot_copy_damaged_before_its_store_artifact_exists_restores_nothing_and_says_so() {
    let env = simple_env("");
    let db = env.path("app.db");
    let r = held(
        &env,
        "never",
        &[
            "--",
            "sh",
            "-c",
            "sqlite3 app.db 'DELETE FROM payment' && for f in .app.db.guard-hot-*; do printf garbage >> \"$f\"; done; exit 3",
        ],
    );
    assert_eq!(r.code, 80, "{r:?}");
    assert!(r.stderr.contains("hot copy was not used"), "{r:?}");
    assert!(
        r.stderr.contains("the hot copy was the only copy of the pre-run state")
            && r.stderr.contains("nothing was restored"),
        "{r:?}"
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM payment"),
        0,
        "left as the command made it"
    );
    let status = env.guard(&["status"]);
    assert_eq!(status.code, 82, "{status:?}");
}

/// The store write fails after the command and every check passed (here the command puts a
/// directory where the artifact goes): the changes are kept, guard exits 83 and keeps the hot
/// copy, a new run is refused, and `guard recover` renames the hot copy back; `--keep` instead
/// accepts the changes and removes it.
#[test]
fn a_store_artifact_that_fails_after_a_kept_run_exits_83_and_keeps_the_hot_copy_until_recover() {
    for keep in [false, true] {
        let env = simple_env("");
        let db = env.path("app.db");
        let before = dump(&db);
        let r = held(
            &env,
            "go",
            &[
                "--",
                "sh",
                "-c",
                "id=$(python3 -c \"import glob, json; print(json.load(open(glob.glob('backups/runs/*/journal.json')[0]))['snapshot_id'])\") && mkdir -p backups/snapshots/$id/app.sqlite.gz && sqlite3 app.db 'DELETE FROM payment' && touch go",
            ],
        );
        assert_eq!(r.code, 83, "{keep}: {r:?}");
        assert!(r.stderr.contains("its changes are kept"), "{r:?}");
        assert!(r.stderr.contains("could not be written into the store"), "{r:?}");
        assert_eq!(count(&db, "SELECT count(*) FROM payment"), 0, "the changes are kept");
        assert_eq!(
            guard_files(&env).len(),
            1,
            "the hot copy is kept: {:?}",
            guard_files(&env)
        );
        assert!(
            snapshots(&env).is_empty(),
            "no complete snapshot: {:?}",
            snapshots(&env)
        );
        let refused = env.guard(&["--", "true"]);
        assert_eq!(refused.code, 82, "{refused:?}");
        let status = env.guard(&["status"]);
        assert_eq!(status.code, 82, "{status:?}");
        for e in std::fs::read_dir(env.path("backups/snapshots")).unwrap() {
            let _ = std::fs::remove_dir(e.unwrap().path().join("app.sqlite.gz"));
        }
        let args: &[&str] = if keep {
            &["recover", "--keep", "--yes"]
        } else {
            &["recover", "--yes"]
        };
        let rec = env.guard(args);
        assert_eq!(rec.code, 0, "{keep}: {rec:?}");
        if keep {
            assert_eq!(count(&db, "SELECT count(*) FROM payment"), 0, "accepted");
        } else {
            assert!(rec.stderr.contains("renamed into place"), "{rec:?}");
            assert_eq!(dump(&db), before, "the hot copy brought the pre-run state back");
        }
        assert!(guard_files(&env).is_empty(), "{keep}: {:?}", guard_files(&env));
        let status = env.guard(&["status"]);
        assert_eq!(status.code, 0, "{keep}: {status:?}");
    }
}

/// SIGKILL while the store artifact is still being written, in every phase that can happen in
/// (the command running, the checks, waiting for the store): `status` says where the pre-run
/// state is, and `recover` brings it back from the hot copy (or `--keep` accepts).
#[test]
fn sigkill_while_the_store_artifact_is_written_then_recover_restores_from_the_hot_copy() {
    for point in ["command-running", "checking", "storing"] {
        let env = simple_env("");
        let db = env.path("app.db");
        let before = dump(&db);
        let pause = env.path("paused.pid");
        let mut cmd = env.cmd(&["--", "sqlite3", "app.db", "DELETE FROM payment"]);
        cmd.env("GUARD_TEST_HOLD", "deferred-artifact")
            .env("GUARD_TEST_HOLD_RELEASE", env.path("never"));
        let mut child = spawn_paused(cmd, point, &pause);
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        assert!(snapshots(&env).is_empty(), "{point}: no complete snapshot");
        let status = env.guard(&["status", "--json"]);
        assert_eq!(status.code, 82, "{point}: {status:?}");
        assert!(status.stdout.contains(&format!("\"{point}\"")), "{point}: {status:?}");
        assert!(
            status.stdout.contains("guard-hot-"),
            "{point}: names the hot copy: {status:?}"
        );
        let r = env.guard(&["recover", "--yes"]);
        assert_eq!(r.code, 0, "{point}: {r:?}");
        assert!(r.stderr.contains("never reached the store"), "{point}: {r:?}");
        assert_eq!(dump(&db), before, "{point}: the database is back");
        assert!(guard_files(&env).is_empty(), "{point}: {:?}", guard_files(&env));
        let status = env.guard(&["status"]);
        assert_eq!(status.code, 0, "{point}: {status:?}");
    }
}

fn db_of(env: &Env) -> std::path::PathBuf {
    env.path("app.db")
}
