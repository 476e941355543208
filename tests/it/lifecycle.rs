//! The guarded run's own lifecycle under hostile surroundings: a terminal or pipe that goes
//! away, a guard killed while its command runs, a store whose disk fills up.

use crate::common::*;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// `sqlite3 DB .dump`: the restore is proven with the stock tool, not with guard's bookkeeping.
fn sqlite_dump(db: &Path) -> String {
    let o = std::process::Command::new("sqlite3")
        .arg(db)
        .arg(".dump")
        .output()
        .expect("sqlite3 runs");
    assert!(o.status.success(), "sqlite3 .dump: {o:?}");
    String::from_utf8(o.stdout).unwrap()
}

/// The journals in the env's store (`backups/runs/*/journal.json`).
fn journals(env: &Env) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(env.path("backups/runs")).unwrap().flatten() {
        if let Ok(b) = std::fs::read(e.path().join("journal.json")) {
            out.push(serde_json::from_slice(&b).unwrap());
        }
    }
    out
}

/// Is `pid` a live process (not a zombie)?
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(s) => {
            let state = s[s.rfind(')').unwrap() + 1..].split_whitespace().next().unwrap_or("");
            state != "Z" && state != "X"
        }
    }
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// R9: `guard -- cmd 2>&1 | head -3`. The reader of guard's stdout and stderr goes away while
/// the command runs; the command then fails. Every message guard writes after that meets
/// EPIPE, and the restore must still happen (it used to panic, exit 101, before the rescue).
#[test]
fn a_closed_output_pipe_does_not_stop_the_restore() {
    let env = simple_env("");
    let before = sqlite_dump(&env.path("app.db"));
    let (reader, writer) = std::io::pipe().unwrap();
    let writer2 = writer.try_clone().unwrap();
    let mut child = env
        .cmd(&[
            "--yes",
            "--",
            "sh",
            "-c",
            "sqlite3 app.db 'DELETE FROM payment; INSERT INTO user (name) VALUES (666)'; echo l1; echo l2; echo l3; \
             while [ ! -e closed ]; do sleep 0.05; done; echo l4; echo l5 >&2; exit 3",
        ])
        .stdout(writer)
        .stderr(writer2)
        .spawn()
        .unwrap();
    // `head -3` of the command's output, then the reader exits.
    let mut lines = BufReader::new(reader).lines();
    for l in lines.by_ref() {
        if l.unwrap() == "l3" {
            break;
        }
    }
    drop(lines);
    env.write("closed", "");
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(3),
        "the command's exit code passes through after the restore: {status}"
    );
    assert_eq!(
        sqlite_dump(&env.path("app.db")),
        before,
        "restored exactly (sqlite3 .dump)"
    );
    let j = journals(&env);
    assert_eq!(j.len(), 1);
    assert_eq!(j[0]["phase"], "done", "{:?}", j[0]);
    assert_eq!(j[0]["outcome"], "restored", "{:?}", j[0]);
    // The run log still has what the terminal never got.
    let run_id = j[0]["run_id"].as_str().unwrap();
    let log = std::fs::read_to_string(env.path(&format!("backups/runs/{run_id}/run.log"))).unwrap();
    assert!(log.contains("l4") && log.contains("l5"), "{log}");
    let s = env.guard(&["status"]);
    assert!(!s.stdout.contains("INTERRUPTED"), "{s:?}");
}

/// The same with `--json` on a closed stdout: the JSON document cannot be written, the
/// restore happens anyway.
#[test]
fn a_closed_stdout_does_not_stop_the_restore_with_json() {
    let env = simple_env("");
    let before = sqlite_dump(&env.path("app.db"));
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let r = env
        .cmd(&[
            "--yes",
            "--json",
            "--",
            "sh",
            "-c",
            "sqlite3 app.db 'DELETE FROM payment'; exit 4",
        ])
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(4), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(sqlite_dump(&env.path("app.db")), before);
}

/// R10: guard is killed with SIGKILL while its command runs. The command dies with it
/// (PR_SET_PDEATHSIG), so it cannot write over what `recover` puts back; a process the command
/// left in the background (same process group) keeps `recover` refusing, naming the group,
/// until it is gone.
#[test]
fn a_killed_guard_takes_its_command_with_it_and_recover_waits_for_the_group() {
    let env = simple_env("");
    let before = sqlite_dump(&env.path("app.db"));
    let mut g = env
        .cmd(&[
            "--yes",
            "--",
            "sh",
            "-c",
            "sqlite3 app.db 'DELETE FROM payment'; sleep 30 & echo $! > bg.pid; touch started; \
             sleep 1; sqlite3 app.db 'INSERT INTO user (name) VALUES (666)'; exit 1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the command to start", 60, || env.path("started").exists());
    g.kill().unwrap(); // SIGKILL
    g.wait().unwrap();

    let j = journals(&env);
    assert_eq!(j.len(), 1);
    assert_eq!(j[0]["phase"], "command-running", "{:?}", j[0]);
    let pid = j[0]["command_pid"]
        .as_u64()
        .expect("the journal records the command's pid") as u32;
    assert_eq!(j[0]["command_pgid"].as_u64(), Some(pid as u64), "{:?}", j[0]);
    wait_for("the command to die with its guard", 10, || !alive(pid));
    let bg: u32 = std::fs::read_to_string(env.path("bg.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        alive(bg),
        "the background process is still there (it is what recover waits for)"
    );

    // While a process of the command's group lives, status says so and recover refuses.
    let s = env.guard(&["status"]);
    assert!(
        s.stdout.contains("STILL RUNNING") && s.stdout.contains(&format!("process group {pid}")),
        "{s:?}"
    );
    let v: serde_json::Value = serde_json::from_str(&env.guard(&["status", "--json"]).stdout).unwrap();
    let running = v["interrupted"][0]["command_running"].as_array().unwrap();
    assert!(running.contains(&serde_json::json!(bg)), "{v}");
    let r = env.guard(&["recover", "--yes"]);
    assert_eq!(r.code, 75, "{r:?}");
    assert!(
        r.stderr.contains(&format!("process group {pid}")) && r.stderr.contains("nothing was recovered"),
        "{r:?}"
    );
    assert_ne!(sqlite_dump(&env.path("app.db")), before, "recover changed nothing");

    unsafe {
        libc::kill(-(pid as i32), libc::SIGKILL);
    }
    wait_for("the background process to go", 10, || !alive(bg));
    let r = env.guard(&["recover", "--yes"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(sqlite_dump(&env.path("app.db")), before);
    // The command's second write (one second after the kill) never happens.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        sqlite_dump(&env.path("app.db")),
        before,
        "nothing wrote over the recovered state"
    );
}

/// Signals guard receives while the command runs reach the command's whole process group,
/// including what it started in the background.
#[test]
fn sigterm_to_guard_reaches_the_whole_command_group() {
    let env = simple_env("");
    let before = sqlite_dump(&env.path("app.db"));
    let g = env
        .cmd(&[
            "--yes",
            "--",
            "sh",
            "-c",
            "sqlite3 app.db 'DELETE FROM payment'; sleep 60 & echo $! > bg.pid; touch started; wait",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the command to start", 60, || env.path("started").exists());
    let bg: u32 = std::fs::read_to_string(env.path("bg.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    unsafe {
        libc::kill(g.id() as i32, libc::SIGTERM);
    }
    let r: Run = g.wait_with_output().unwrap().into();
    assert_eq!(r.code, 143, "{r:?}");
    wait_for("the background sleep to get the signal", 10, || !alive(bg));
    assert_eq!(sqlite_dump(&env.path("app.db")), before);
}
