//! Failures that stick (issue 14, F2, R23): after exit 80, exit 81, a failed drill of the newest
//! snapshot or a damaged journal, `guard status` says so first and exits 82, and a new guarded
//! run is refused with 82 until `guard recover` (restore) or `guard recover --keep` (accept).
//! `guard restore latest` says what it picked and passes over snapshots of a damaged state.

use crate::common::*;

fn migrate(env: &Env, extra: &[&str]) -> Vec<String> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/migrate_cashback_tables.py");
    let mut v = vec![
        "--".to_string(),
        "python3".into(),
        script.display().to_string(),
        db(env).display().to_string(),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn run(env: &Env, args: &[String]) -> Run {
    env.guard(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn status_json(env: &Env) -> (i32, serde_json::Value) {
    let r = env.guard(&["status", "--json"]);
    (
        r.code,
        serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {r:?}")),
    )
}

/// A guarded run is refused with 82 and runs nothing.
fn assert_refused(env: &Env) {
    let r = refused(env, 82, |a| env.guard(a));
    assert!(r.stderr.contains("recover --keep"), "says what to do: {r:?}");
}

fn assert_clear(env: &Env) {
    let (code, v) = status_json(env);
    assert_eq!(code, 0, "{v}");
    assert!(v["needs_attention"].as_array().unwrap().is_empty(), "{v}");
    // Runs are allowed again: the command runs (the lending checks then judge it as usual).
    let marker = env.path("ran-again");
    let r = env.guard(&["--", "touch", marker.to_str().unwrap()]);
    assert_ne!(r.code, 82, "{r:?}");
    assert!(marker.exists(), "the command ran: {r:?}");
}

#[test]
fn after_exit_81_status_says_so_first_and_runs_are_refused_until_recover_restores() {
    let env = lending_env("");
    let before = dump(&db(&env));
    let mut a = vec!["--no-restore".to_string()];
    a.extend(migrate(&env, &["--bug"]));
    let r = run(&env, &a);
    assert_eq!(r.code, 81, "a check failed, --no-restore kept it: {r:?}");
    let r = run(&env, &a);
    assert_eq!(r.code, 82, "the second run is refused: {r:?}");

    let human = env.guard(&["status"]);
    assert_eq!(human.code, 82, "{human:?}");
    let second = human.stdout.lines().nth(1).unwrap_or_default();
    assert!(second.starts_with("NEEDS ATTENTION"), "said first: {human:?}");
    assert!(human.stdout.contains("--no-restore kept the failed state"), "{human:?}");
    let (code, v) = status_json(&env);
    assert_eq!(code, 82);
    assert_eq!(v["needs_attention"][0]["kind"], "failed", "{v}");
    assert_eq!(v["needs_attention"][0]["outcome"], "failed-kept", "{v}");
    assert_refused(&env);

    let r = env.guard(&["recover", "--yes"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(dump(&db(&env)), before, "recover restored the pre-run snapshot");
    assert_clear(&env);
}

#[test]
fn after_exit_81_recover_keep_accepts_the_failed_state() {
    let env = lending_env("");
    let mut a = vec!["--no-restore".to_string()];
    a.extend(migrate(&env, &["--bug"]));
    let r = run(&env, &a);
    assert_eq!(r.code, 81, "{r:?}");
    let failed = dump(&db(&env));
    assert_refused(&env);
    let r = env.guard(&["recover", "--keep"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(dump(&db(&env)), failed, "accepted as it is");
    assert_clear(&env);
}

#[test]
fn after_exit_80_runs_are_refused_until_recover_puts_the_targets_back() {
    let env = lending_env("");
    let before_db = dump(&db(&env));
    let before_file = std::fs::read_to_string(env.path("data/rent_history/2025-01.json")).unwrap();
    // The command replaces the directory target's parent with a file: the rescue snapshot
    // cannot be taken, so nothing is restored (exit 80) and the failed state stays.
    let r = env.guard(&[
        "--",
        "sh",
        "-c",
        "python3 -c \"import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute('DELETE FROM payment'); c.commit()\" $0; rm -rf data && echo x > data; exit 1",
        db(&env).to_str().unwrap(),
    ]);
    assert_eq!(r.code, 80, "{r:?}");
    let (code, v) = status_json(&env);
    assert_eq!(code, 82, "{v}");
    assert_eq!(v["needs_attention"][0]["exit_code"], 80, "{v}");
    assert_refused(&env);

    // Still in the way: recover cannot take its rescue snapshot either, and says so.
    let r = env.guard(&["recover", "--yes"]);
    assert_eq!(r.code, 80, "{r:?}");
    assert_eq!(status_json(&env).0, 82, "still needs attention");
    std::fs::remove_file(env.path("data")).unwrap();
    let r = env.guard(&["recover", "--yes"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(dump(&db(&env)), before_db);
    assert_eq!(
        std::fs::read_to_string(env.path("data/rent_history/2025-01.json")).unwrap(),
        before_file
    );
    assert_clear(&env);
}

#[test]
fn a_failed_drill_of_the_newest_snapshot_needs_attention_until_a_new_snapshot() {
    let env = lending_env(
        "\n[[drill.check]]\nname = \"payments restored\"\ntarget = \"app\"\nsql = \"SELECT count(*) FROM payment\"\nexpect = \"== 1\"\n",
    );
    let r = env.guard(&["snapshot"]);
    assert_eq!(r.code, 0, "{r:?}");
    let id = r.stdout.trim().to_string();
    let r = env.guard(&["drill"]);
    assert_eq!(r.code, 66, "{r:?}");
    let (code, v) = status_json(&env);
    assert_eq!(code, 82, "{v}");
    assert_eq!(v["needs_attention"][0]["kind"], "failed_drill", "{v}");
    assert_eq!(v["needs_attention"][0]["snapshot_id"], id.as_str(), "{v}");
    assert_refused(&env);
    let r = env.guard(&["recover", "--yes"]);
    assert_eq!(r.code, 82, "a restore would not help, and recover says so: {r:?}");
    assert!(
        r.stderr.contains("recover --keep") && r.stderr.contains("snapshot"),
        "{r:?}"
    );
    // A newer snapshot is what a restore would use now.
    let r = env.guard(&["snapshot"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_clear(&env);
}

#[test]
fn a_failed_drill_can_be_accepted_with_recover_keep() {
    let env = lending_env(
        "\n[[drill.check]]\nname = \"payments restored\"\ntarget = \"app\"\nsql = \"SELECT count(*) FROM payment\"\nexpect = \"== 1\"\n",
    );
    assert_eq!(env.guard(&["snapshot"]).code, 0);
    assert_eq!(env.guard(&["drill"]).code, 66);
    assert_refused(&env);
    let r = env.guard(&["recover", "--keep"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_clear(&env);
}

/// A kept run whose journal is then truncated, as a damaged disk or a bad copy leaves it.
fn damaged_env() -> (Env, String, String) {
    let env = lending_env("");
    let before = dump(&db(&env));
    let r = run(&env, &migrate(&env, &[]));
    assert_eq!(r.code, 0, "{r:?}");
    let runs: Vec<_> = std::fs::read_dir(env.path("backups/runs")).unwrap().flatten().collect();
    assert_eq!(runs.len(), 1);
    let run_id = runs[0].file_name().to_string_lossy().into_owned();
    let j = runs[0].path().join("journal.json");
    let bytes = std::fs::read(&j).unwrap();
    std::fs::write(&j, &bytes[..bytes.len() / 2]).unwrap();
    (env, run_id, before)
}

#[test]
fn a_truncated_journal_is_reported_blocks_runs_and_keeps_its_snapshot_from_prune() {
    let (env, run_id, _) = damaged_env();
    let human = env.guard(&["status"]);
    assert_eq!(human.code, 82, "{human:?}");
    assert!(
        human.stdout.contains("DAMAGED JOURNAL") && human.stdout.contains(&run_id),
        "{human:?}"
    );
    let (_, v) = status_json(&env);
    assert_eq!(v["needs_attention"][0]["kind"], "damaged_journal", "{v}");
    assert_refused(&env);
    // Newer snapshots would otherwise push the run's pre-run snapshot out of keep_last = 1.
    assert_eq!(env.guard(&["snapshot"]).code, 0);
    let r = env.guard(&[
        "prune",
        "--keep-within",
        "1s",
        "--keep-last",
        "1",
        "--dry-run",
        "--json",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    let p: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let pre = snapshots(&env)
        .into_iter()
        .find(|s| s["run_id"] == run_id.as_str() && s["kind"] == "pre-run")
        .unwrap();
    let d = p["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == pre["id"])
        .unwrap()
        .clone();
    assert_eq!(d["keep"], true, "{p}");

    let r = env.guard(&["recover", "--keep"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        env.path(&format!("backups/runs/{run_id}/journal.damaged")).exists(),
        "the damaged bytes are kept"
    );
    assert_clear(&env);
}

#[test]
fn recover_of_a_truncated_journal_restores_that_runs_pre_run_snapshot() {
    let (env, _, before) = damaged_env();
    let r = env.guard(&["recover", "--yes"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(dump(&db(&env)), before);
    assert_clear(&env);
}

#[test]
fn restore_latest_says_what_it_picked_and_passes_over_a_snapshot_of_the_failed_state() {
    let env = lending_env("");
    let before = dump(&db(&env));
    let mut a = vec!["--no-restore".to_string()];
    a.extend(migrate(&env, &["--bug"]));
    assert_eq!(run(&env, &a).code, 81);
    let pre = snapshots(&env)[0]["id"].as_str().unwrap().to_string();
    // A snapshot taken now is of the failed state; guard says so.
    let r = env.guard(&["snapshot"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("needs attention"), "{r:?}");
    let damaged = r.stdout.trim().to_string();

    let r = env.guard(&["restore", "latest", "--yes"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains(&format!("passed over {damaged}")) && r.stderr.contains("failed state was kept (exit 81)"),
        "{r:?}"
    );
    assert!(
        r.stderr.contains(&format!("restoring snapshot {pre} (pre-run,")) && r.stderr.contains("taken before `python3"),
        "says what it picked: {r:?}"
    );
    assert_eq!(dump(&db(&env)), before, "the pre-run state, not the failed one");
    // A restore of every target puts the targets in a known state: nothing pending.
    assert_clear(&env);
}
