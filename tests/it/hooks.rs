//! Hooks and `command` checks as unattended runs need them (issue 15, F11, F13): their output
//! in the run log, stdout one JSON document under `--json`, and a timeout that kills a hung
//! hook or check with its process group.

use crate::common::*;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Run guard, killing it if it has not finished after `limit` (a hang fails the test instead
/// of hanging the suite; nothing is asserted about how long it took).
fn guard_bounded(env: &Env, args: &[&str], limit: Duration) -> Run {
    let mut child = env
        .cmd(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let end = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > end {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("guard hung: {:?}", Run::from(out));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap().into()
}

fn run_log(env: &Env, run_id: &str) -> String {
    std::fs::read_to_string(env.path(&format!("backups/runs/{run_id}/run.log"))).unwrap_or_default()
}

const HOOKS: &str = r#"
[hooks]
before = ["echo before-out-1; echo before-err-1 >&2"]
after = ["echo after-out-1"]
"#;

#[test]
fn hook_output_goes_to_the_run_log_and_stdout_stays_one_json_document() {
    let env = simple_env("");
    let text = std::fs::read_to_string(env.path("guard.toml")).unwrap();
    env.write("guard.toml", &format!("{text}{HOOKS}"));
    let r = env.guard(&["--json", "--", "sh", "-c", "echo cmd-out-1"]);
    assert_eq!(r.code, 0, "{r:?}");
    let v: serde_json::Value =
        serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("stdout is one JSON document ({e}): {r:?}"));
    for w in ["before-out-1", "before-err-1", "after-out-1", "cmd-out-1"] {
        assert!(r.stderr.contains(w), "under --json {w} is on stderr: {r:?}");
    }
    let log = run_log(&env, v["run_id"].as_str().unwrap());
    for w in [
        "guard: before hook: echo before-out-1",
        "before-out-1",
        "before-err-1",
        "cmd-out-1",
        "guard: after hook: echo after-out-1",
        "after-out-1",
    ] {
        assert!(log.contains(w), "run log holds {w:?}: {log:?}");
    }
    // In order: before hook, command, after hook.
    let at = |w: &str| log.find(w).unwrap();
    assert!(
        at("before-out-1") < at("cmd-out-1") && at("cmd-out-1") < at("after-out-1"),
        "{log:?}"
    );

    // Without --json the hooks' stdout is guard's stdout, as before.
    let r = env.guard(&["--", "true"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("before-out-1") && r.stdout.contains("after-out-1"),
        "{r:?}"
    );
}

#[test]
fn a_hung_before_hook_is_killed_with_its_process_group_and_nothing_runs() {
    let env = simple_env("");
    let before = dump(&env.path("app.db"));
    let text = std::fs::read_to_string(env.path("guard.toml")).unwrap();
    env.write(
        "guard.toml",
        &format!(
            "{text}\n[hooks]\ntimeout = \"1s\"\nbefore = [\"sleep 300 & echo $! > bg.pid; echo hook-started; sleep 300\"]\nafter = [\"touch after-ran\"]\n"
        ),
    );
    let r = guard_bounded(&env, &["--", "touch", "command-ran"], Duration::from_secs(120));
    assert_eq!(r.code, 70, "a before hook failed: {r:?}");
    assert!(
        r.stderr
            .contains("did not finish within 1s: killed it with its process group"),
        "reported: {r:?}"
    );
    assert_eq!(r.stderr.matches("did not finish within").count(), 1, "said once: {r:?}");
    assert!(!env.path("command-ran").exists(), "the command never ran");
    assert!(env.path("after-ran").exists(), "the after hooks still ran");
    // The group was killed: the hook's background child is gone too.
    assert_killed(&env.path("bg.pid"), "the hook's background process");
    assert_eq!(dump(&env.path("app.db")), before, "nothing was changed");
    let v = snapshots(&env);
    assert!(v.is_empty(), "nothing was snapshotted: {v:?}");
}

#[test]
fn a_hung_command_check_fails_with_its_timeout_and_the_run_restores() {
    let env = simple_env("");
    let before = dump(&env.path("app.db"));
    let text = std::fs::read_to_string(env.path("guard.toml")).unwrap();
    env.write(
        "guard.toml",
        &format!(
            "{text}\n[[check]]\nname = \"health endpoint\"\ncommand = \"sleep 300 & echo $! > bg.pid; sleep 300\"\ntimeout = \"1s\"\n"
        ),
    );
    let r = guard_bounded(
        &env,
        &["--json", "--", "sqlite3", "app.db", "DELETE FROM payment"],
        Duration::from_secs(120),
    );
    assert_eq!(r.code, 79, "the check failed, restored: {r:?}");
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {r:?}"));
    let c = &v["checks"][0];
    assert_eq!(c["passed"], false, "{v}");
    assert!(
        c["detail"].as_str().unwrap_or("").contains("did not finish within 1s"),
        "{v}"
    );
    assert_eq!(dump(&env.path("app.db")), before, "restored exactly");
    assert_killed(&env.path("bg.pid"), "the check's background process");
}

#[test]
fn timeouts_that_cannot_work_are_refused_when_the_policy_loads() {
    for (extra, line, words) in [
        ("[hooks]\ntimeout = \"0s\"\n", "guard.toml:", "more than zero"),
        ("[hooks]\ntimeout = \"soon\"\n", "guard.toml:", "hooks.timeout"),
        (
            "[[check]]\nname = \"c\"\ntarget = \"app\"\nsql = \"select 1\"\nexpect = \"== 1\"\ntimeout = \"5s\"\n",
            "guard.toml:",
            "`timeout` applies to `command` checks only",
        ),
    ] {
        let env = simple_env("");
        let text = std::fs::read_to_string(env.path("guard.toml")).unwrap();
        env.write("guard.toml", &format!("{text}\n{extra}"));
        let r = env.guard(&["--", "true"]);
        assert_eq!(r.code, 64, "{extra}: {r:?}");
        assert!(r.stderr.contains(line) && r.stderr.contains(words), "{extra}: {r:?}");
    }
}
