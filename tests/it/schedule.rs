//! `guard schedule` for unattended drills (issue 15, F7, F12, F13): the units and the crontab
//! line load an environment file holding the policy's variables and say which it needs; every
//! path is quoted (a policy path with spaces or `;$(…)` is inert); a failed drill prunes
//! nothing under cron as under systemd; `--snapshot` drills a fresh snapshot of today's data.
//! The crontab line is run the way cron runs it: `sh -c` in an almost empty environment.

use crate::common::*;
use std::path::Path;

/// A lending app whose policy lives in a directory named like an attack, and finds its
/// database through `${GUARD_IT_SCHED_DB}`.
fn odd_env(drill_expect: &str) -> (Env, String) {
    let env = Env::new();
    let dir = "odd dir;$(touch pwned)";
    lending_db(&env.path(&format!("{dir}/app.db")), 20);
    env.write(
        &format!("{dir}/guard.toml"),
        &format!(
            "name = \"sched\"\nstore = \"backups\"\n\n[retention]\nkeep_within = \"1s\"\nkeep_last = 1\n\n[[target]]\nname = \"app\"\nkind = \"sqlite\"\npath = \"${{GUARD_IT_SCHED_DB}}\"\n\n[[drill.check]]\nname = \"payments restored\"\ntarget = \"app\"\nsql = \"SELECT count(*) FROM payment\"\nexpect = \"{drill_expect}\"\n"
        ),
    );
    let db = env.path(&format!("{dir}/app.db")).display().to_string();
    env.write(
        "etc guard/sched.env",
        &format!("# the app's secrets\nGUARD_IT_SCHED_DB=\"{db}\"\n"),
    );
    (env, format!("{dir}/guard.toml"))
}

/// `guard ARGS` with the policy's variable set.
fn with_var(env: &Env, args: &[&str]) -> Run {
    let (e, _) = (env, ());
    let db = std::fs::read_to_string(e.path("etc guard/sched.env")).unwrap();
    let db = db
        .lines()
        .find_map(|l| l.strip_prefix("GUARD_IT_SCHED_DB="))
        .unwrap()
        .trim_matches('"')
        .to_string();
    e.cmd(args).env("GUARD_IT_SCHED_DB", db).output().unwrap().into()
}

/// The crontab line's command as cron runs it: after the five time fields, `\%` unescaped,
/// through `sh -c` with only cron's environment (no policy variable).
fn run_cron_line(env: &Env, line: &str) -> Run {
    let cmd = line.splitn(6, ' ').nth(5).unwrap().replace("\\%", "%");
    std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(&cmd)
        .current_dir(env.dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("HOME", env.dir.path())
        .output()
        .unwrap()
        .into()
}

fn schedule_json(env: &Env, policy: &str, extra: &[&str]) -> serde_json::Value {
    let envfile = env.path("etc guard/sched.env").display().to_string();
    let mut args = vec!["--policy", policy, "schedule", "--json", "--env-file", &envfile];
    args.extend(extra);
    // No variable set: schedule needs none, and says which the job needs.
    let r = env.guard(&args);
    assert_eq!(r.code, 0, "{r:?}");
    serde_json::from_str(&r.stdout).unwrap()
}

fn no_pwned(env: &Env) {
    for e in walkdir::WalkDir::new(env.dir.path()).into_iter().flatten() {
        assert!(
            e.file_name() != "pwned",
            "a path ran as a command: {}",
            e.path().display()
        );
    }
}

#[test]
fn the_crontab_line_loads_the_env_file_quotes_every_path_and_drills() {
    let (env, policy) = odd_env("== 60");
    let v = schedule_json(&env, &policy, &[]);
    assert_eq!(v["needs"], serde_json::json!(["GUARD_IT_SCHED_DB"]), "{v}");
    let envfile = env.path("etc guard/sched.env").display().to_string();
    let service = v["service"].as_str().unwrap();
    assert!(
        service.contains(&format!("EnvironmentFile={envfile}\n")),
        "required: {service}"
    );
    assert!(
        service.contains("\"drill\"") || service.contains(" drill\n"),
        "{service}"
    );
    // Quoted for systemd: the policy path is one word, its `$` doubled.
    assert!(service.contains("odd dir;$$(touch pwned)/guard.toml\""), "{service}");
    let r = env.guard(&["--policy", &policy, "schedule", "--env-file", &envfile]);
    assert!(r.stdout.contains("the policy needs GUARD_IT_SCHED_DB"), "{r:?}");

    assert_eq!(with_var(&env, &["--policy", &policy, "snapshot"]).code, 0);
    let r = run_cron_line(&env, v["crontab"].as_str().unwrap());
    assert_eq!(r.code, 0, "the job ran with the env file's variables: {r:?}");
    assert!(r.stdout.contains("pruned "), "prune ran after the drill: {r:?}");
    no_pwned(&env);
    let d = with_var(&env, &["--policy", &policy, "drills", "--json"]);
    let drills: serde_json::Value = serde_json::from_str::<serde_json::Value>(&d.stdout).unwrap()["drills"].clone();
    assert_eq!(drills.as_array().unwrap().len(), 1, "{drills}");
    assert_eq!(drills[0]["ok"], true, "{drills}");

    // Without the file the job fails loudly, naming it.
    std::fs::rename(env.path("etc guard/sched.env"), env.path("moved.env")).unwrap();
    let r = run_cron_line(&env, v["crontab"].as_str().unwrap());
    assert_eq!(r.code, 64, "{r:?}");
    assert!(
        r.stderr.contains("GUARD_ENV_FILE") && r.stderr.contains("sched.env"),
        "{r:?}"
    );
}

#[test]
fn a_failed_drill_prunes_nothing_under_cron_as_under_systemd() {
    let (env, policy) = odd_env("== 0");
    let v = schedule_json(&env, &policy, &[]);
    let service = v["service"].as_str().unwrap();
    // systemd: prune is ExecStartPost, which runs only when every ExecStart succeeded.
    assert!(
        service.contains("ExecStartPost=")
            && service
                .lines()
                .filter(|l| l.starts_with("ExecStart="))
                .all(|l| !l.contains("prune")),
        "{service}"
    );
    assert_eq!(with_var(&env, &["--policy", &policy, "snapshot"]).code, 0);
    assert_eq!(with_var(&env, &["--policy", &policy, "snapshot"]).code, 0);
    let r = run_cron_line(&env, v["crontab"].as_str().unwrap());
    assert_eq!(r.code, 66, "the drill failed: {r:?}");
    assert!(!r.stdout.contains("pruned "), "prune did not run: {r:?}");
    assert_eq!(snapshots_of(&env, &policy), 2, "nothing was pruned");
}

fn snapshots_of(env: &Env, policy: &str) -> usize {
    let r = with_var(env, &["--policy", policy, "list", "--json"]);
    serde_json::from_str::<serde_json::Value>(&r.stdout).unwrap()["snapshots"]
        .as_array()
        .unwrap()
        .len()
}

#[test]
fn schedule_snapshot_drills_a_fresh_snapshot_of_todays_data() {
    let (env, policy) = odd_env("== 61");
    let v = schedule_json(&env, &policy, &["--snapshot"]);
    assert_eq!(v["snapshot"], true);
    assert!(
        v["service"]
            .as_str()
            .unwrap()
            .contains("snapshot --label \"scheduled drill\""),
        "{v}"
    );
    // The migration ran since the last snapshot: the drill check is about today's data.
    assert_eq!(with_var(&env, &["--policy", &policy, "snapshot"]).code, 0);
    let db = Path::new(env.dir.path()).join("odd dir;$(touch pwned)/app.db");
    sql(
        &db,
        "INSERT INTO payment (loan_id, amount, paid_at) VALUES (1, 5, '2025-02-01')",
    );
    let r = run_cron_line(&env, v["crontab"].as_str().unwrap());
    assert_eq!(r.code, 0, "the drill tested the fresh snapshot: {r:?}");
    no_pwned(&env);
    let list = with_var(&env, &["--policy", &policy, "list", "--json"]);
    let snaps: serde_json::Value = serde_json::from_str(&list.stdout).unwrap();
    let fresh = snaps["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["label"] == "scheduled drill")
        .unwrap_or_else(|| panic!("{snaps}"));
    let d = with_var(&env, &["--policy", &policy, "drills", "--json"]);
    let drills: serde_json::Value = serde_json::from_str::<serde_json::Value>(&d.stdout).unwrap()["drills"].clone();
    assert_eq!(drills[0]["snapshot_id"], fresh["id"], "{drills}");
}
