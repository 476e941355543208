//! Retention with the real binary: snapshots aged with the test clock (`GUARD_TEST_NOW`).

use crate::common::*;

const NOW: &str = "2026-06-01T12:00:00Z";

fn days_ago(d: i64) -> String {
    let t = time::OffsetDateTime::parse(NOW, &time::format_description::well_known::Rfc3339).unwrap()
        - time::Duration::days(d);
    guard::clock::rfc3339(t)
}

fn snap_at(env: &Env, when: &str) -> String {
    let r: Run = env
        .cmd(&["snapshot"])
        .env("GUARD_TEST_NOW", when)
        .output()
        .unwrap()
        .into();
    assert_eq!(r.code, 0, "{r:?}");
    r.stdout.trim().to_string()
}

fn prune(env: &Env, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["prune", "--json"];
    a.extend_from_slice(args);
    let r: Run = env.cmd(&a).env("GUARD_TEST_NOW", NOW).output().unwrap().into();
    assert_eq!(r.code, 0, "{r:?}");
    serde_json::from_str(&r.stdout).unwrap()
}

fn ids(env: &Env) -> Vec<String> {
    snapshots(env)
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn old_snapshots_are_pruned_keeping_the_newest_per_target() {
    let env = simple_env("[retention]\nkeep_within = \"30d\"\nkeep_last = 2");
    let old: Vec<String> = (0..4).map(|i| snap_at(&env, &days_ago(40 - i))).collect();
    let recent = snap_at(&env, &days_ago(1));
    let v = prune(&env, &[]);
    let left = ids(&env);
    assert!(left.contains(&recent));
    assert!(
        left.contains(&old[3]),
        "keep_last = 2: the newest old one stays too: {v}"
    );
    assert!(
        !left.contains(&old[0]) && !left.contains(&old[1]) && !left.contains(&old[2]),
        "{v}"
    );
    assert!(v["bytes_freed"].as_u64().unwrap() > 0);
    for id in &old[..3] {
        assert!(
            !env.path(&format!("backups/snapshots/{id}")).exists(),
            "artifacts of {id} deleted"
        );
    }
}

#[test]
fn keep_last_is_honoured_when_everything_is_old_and_dry_run_deletes_nothing() {
    let env = simple_env("");
    let all: Vec<String> = (0..5).map(|i| snap_at(&env, &days_ago(100 - i))).collect();
    let v = prune(&env, &["--dry-run"]);
    assert_eq!(ids(&env).len(), 5, "dry run deletes nothing");
    let decisions = v["decisions"].as_array().unwrap();
    let kept: Vec<&serde_json::Value> = decisions.iter().filter(|d| d["keep"] == true).collect();
    assert_eq!(kept.len(), 3, "{v}");
    assert!(
        kept.iter().all(|d| d["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r.as_str().unwrap().contains("newest"))),
        "{v}"
    );
    prune(&env, &[]);
    let left = ids(&env);
    assert_eq!(left.len(), 3);
    assert!(left.contains(&all[4]) && left.contains(&all[3]) && left.contains(&all[2]));
}

#[test]
fn pins_and_the_newest_verified_snapshot_survive() {
    let env = simple_env("");
    let a = snap_at(&env, &days_ago(90));
    let b = snap_at(&env, &days_ago(80));
    let c = snap_at(&env, &days_ago(70));
    let d = snap_at(&env, &days_ago(60));
    let r = env.guard(&["pin", &a, "--reason", "audit 2026"]);
    assert_eq!(r.code, 0, "{r:?}");
    // c and d fail verification: b is the newest snapshot that passed.
    for id in [&c, &d] {
        let f = env.path(&format!("backups/snapshots/{id}/app.sqlite.gz"));
        let mut bytes = std::fs::read(&f).unwrap();
        let n = bytes.len();
        bytes[n / 2] ^= 0xff;
        std::fs::write(&f, bytes).unwrap();
        assert_eq!(env.guard(&["verify", id]).code, 65);
    }
    let v = prune(&env, &["--keep-last", "1", "--keep-within", "1d"]);
    let left = ids(&env);
    assert!(left.contains(&a), "pinned: {v}");
    assert!(left.contains(&b), "newest verified: {v}");
    assert!(left.contains(&d), "keep_last 1: {v}");
    assert!(!left.contains(&c), "{v}");
    env.guard(&["unpin", &a]);
    prune(&env, &["--keep-last", "1", "--keep-within", "1d"]);
    assert!(!ids(&env).contains(&a));
}

#[test]
fn an_interrupted_prune_is_finished_by_the_next_one() {
    let env = simple_env("");
    let old = snap_at(&env, &days_ago(100));
    for i in 0..3 {
        snap_at(&env, &days_ago(10 - i));
    }
    let mut cmd = env.cmd(&["prune"]);
    cmd.env("GUARD_TEST_NOW", NOW);
    let mut child = spawn_paused(cmd, "prune-marked", &env.path("paused"));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(env.path(&format!("backups/snapshots/{old}/prune.json")).exists());
    assert!(
        !ids(&env).contains(&old),
        "a snapshot marked for pruning is no longer listed"
    );
    let r = env.guard(&["restore", &old, "--yes"]);
    assert_eq!(r.code, 64, "nor restorable: {r:?}");
    let v = prune(&env, &[]);
    assert_eq!(v["finished_interrupted_prunes"][0], old.as_str(), "{v}");
    assert!(!env.path(&format!("backups/snapshots/{old}")).exists());
}

#[test]
fn incomplete_snapshots_older_than_a_day_are_garbage() {
    let env = simple_env("");
    snap_at(&env, &days_ago(0));
    let stale = "20260520T000000.000Z-dead";
    let fresh = "20260601T110000.000Z-beef";
    for id in [stale, fresh] {
        env.write(&format!("backups/snapshots/{id}/app.sqlite.gz"), "partial");
    }
    let v = prune(&env, &[]);
    assert_eq!(v["garbage"], serde_json::json!([stale]), "{v}");
    assert!(!env.path(&format!("backups/snapshots/{stale}")).exists());
    assert!(
        env.path(&format!("backups/snapshots/{fresh}")).exists(),
        "a young incomplete snapshot may belong to a run in progress"
    );
}

#[test]
fn snapshots_of_an_unrecovered_run_are_kept() {
    let env = simple_env("");
    for i in 0..4 {
        snap_at(&env, &days_ago(200 - i));
    }
    // A run interrupted long ago: its pre-run snapshot must survive until it is recovered.
    // (Without a hot copy, so the pre-run snapshot is in the store before the command starts:
    // with one, its artifact is written while the command runs and may not exist yet.)
    let mut cmd = env.cmd(&["--", "true"]);
    cmd.env("GUARD_TEST_NOW", days_ago(300)).env("GUARD_TEST_HOT_FREE", "0");
    let mut child = spawn_paused(cmd, "command-running", &env.path("paused"));
    child.kill().unwrap();
    child.wait().unwrap();
    let status: serde_json::Value = serde_json::from_str(&env.guard(&["status", "--json"]).stdout).unwrap();
    let pre_run = status["interrupted"][0]["snapshot_id"].as_str().unwrap().to_string();
    let v = prune(&env, &[]);
    assert!(ids(&env).contains(&pre_run), "{v}");
}

#[test]
fn a_policy_that_keeps_nothing_is_refused() {
    let env = simple_env("");
    snap_at(&env, &days_ago(100));
    let r = env.guard(&["prune", "--keep-last", "0", "--keep-within", "0s"]);
    assert_eq!(r.code, 64, "{r:?}");
    assert_eq!(ids(&env).len(), 1);
}

/// The same with a hot copy: the run was killed while its pre-run snapshot's artifact was still
/// being written (issue 17), so the store holds only a partial artifact; prune may remove that,
/// but never the hot copy beside the database, which is what `recover` restores from.
#[test]
fn prune_keeps_the_hot_copy_of_an_unrecovered_run_for_recover() {
    let env = simple_env("");
    let before = dump(&env.path("app.db"));
    let mut cmd = env.cmd(&["--", "sqlite3", "app.db", "DELETE FROM payment"]);
    cmd.env("GUARD_TEST_HOLD", "deferred-artifact");
    let mut child = spawn_paused(cmd, "command-running", &env.path("paused"));
    child.kill().unwrap();
    child.wait().unwrap();
    let hot = |env: &Env| -> Vec<String> {
        std::fs::read_dir(env.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".app.db.guard-hot-"))
            .collect()
    };
    assert_eq!(hot(&env).len(), 1, "the hot copy is there");
    let _ = prune(&env, &[]);
    assert_eq!(hot(&env).len(), 1, "prune left the hot copy of the unrecovered run");
    let r = env.guard(&["recover", "--yes"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(dump(&env.path("app.db")), before, "recover put the database back");
}
