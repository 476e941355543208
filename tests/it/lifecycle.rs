//! The guarded run's own lifecycle under hostile surroundings: a terminal or pipe that goes
//! away, a guard killed while its command runs, a store whose disk fills up, a read-only
//! store, signals before the command.

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

/// A tmpfs of `size` mounted at `dir`, unmounted when dropped; `None` where that is not possible
/// (not root, no mount): the test then says SKIPPED.
fn small_tmpfs(dir: &Path, size: &str) -> Option<Unmount> {
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    std::fs::create_dir_all(dir).unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    ok.then(|| Unmount(dir.to_path_buf()))
}

struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// R14: the store's filesystem (a 2 MiB tmpfs, really filled by the command with `dd`) fills up
/// while the command runs. The restore needs no store space and runs; the rescue snapshot of the
/// failed state goes to a private directory outside the store, and says where; the journal
/// writes that fail are warned about, not fatal; `guard status` works on the full disk.
#[test]
fn the_store_filling_up_during_the_command_still_restores_and_status_still_works() {
    let env = simple_env("");
    let Some(_mounted) = small_tmpfs(&env.path("backups"), "2m") else {
        eprintln!("SKIPPED: needs root to mount a small tmpfs as the store");
        return;
    };
    let before = sqlite_dump(&env.path("app.db"));
    let tmp = env.path("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let r: Run = env
        .cmd(&[
            "--yes",
            "--",
            "sh",
            "-c",
            "sqlite3 app.db 'DELETE FROM payment'; dd if=/dev/zero of=backups/filler bs=64k count=100 2>/dev/null; \
             df backups | tail -1; exit 1",
        ])
        .env("TMPDIR", &tmp)
        .output()
        .unwrap()
        .into();
    assert_eq!(r.code, 1, "restored, the command's own exit code: {r:?}");
    assert!(
        r.stdout.contains("100%") || r.stdout.contains(" 0 "),
        "the store really was full: {r:?}"
    );
    assert!(
        r.stderr.contains("No space left on device") && r.stderr.contains("is full"),
        "{r:?}"
    );
    assert_eq!(sqlite_dump(&env.path("app.db")), before, "restored exactly");
    // The failed state is kept, outside the store, where the message says.
    let rescue_dirs: Vec<_> = std::fs::read_dir(&tmp)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("guard-rescue-"))
        .collect();
    assert_eq!(rescue_dirs.len(), 1, "{r:?}");
    let dir = rescue_dirs[0].path();
    assert!(r.stderr.contains(&dir.display().to_string()), "{r:?}");
    let snaps: Vec<_> = std::fs::read_dir(dir.join("snapshots")).unwrap().flatten().collect();
    assert_eq!(snaps.len(), 1);
    let gz = snaps[0].path().join("app.sqlite.gz");
    let rescued = env.path("rescued.db");
    let out = std::process::Command::new("gunzip")
        .arg("-c")
        .arg(&gz)
        .output()
        .unwrap();
    assert!(out.status.success(), "the rescue restores by hand with gunzip");
    std::fs::write(&rescued, &out.stdout).unwrap();
    assert_eq!(
        count(&rescued, "SELECT count(*) FROM payment"),
        0,
        "the rescue holds the failed state"
    );

    // `guard status` on the full disk: read-only, no "disk is full".
    let s = env.guard(&["status"]);
    assert!(s.code == 0 || s.code == 82, "{s:?}");
    assert!(
        !s.stderr.contains("guard: error") && s.stderr.contains("read-only"),
        "{s:?}"
    );
    assert!(s.stdout.contains("policy simple"), "{s:?}");

    // Once there is room, the run whose end could not be written is closed.
    std::fs::remove_file(env.path("backups/filler")).unwrap();
    let k = env.guard(&["recover", "--keep"]);
    assert_eq!(k.code, 0, "{k:?}");
    let s = env.guard(&["status"]);
    assert!(!s.stdout.contains("INTERRUPTED"), "{s:?}");
    assert_eq!(sqlite_dump(&env.path("app.db")), before);
}

/// R26: a read-only store runs nothing and exits 69 naming the store (it exited 1).
#[test]
fn a_read_only_store_exits_69_naming_it_and_runs_nothing() {
    let env = simple_env("");
    let Some(_mounted) = small_tmpfs(&env.path("backups"), "4m") else {
        eprintln!("SKIPPED: needs root to mount a tmpfs and remount it read-only");
        return;
    };
    let r = env.guard(&["snapshot"]);
    assert_eq!(r.code, 0, "{r:?}");
    let ok = std::process::Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(env.path("backups"))
        .status()
        .unwrap()
        .success();
    assert!(ok, "remount read-only");
    let marker = env.path("ran");
    let r = env.guard(&["--yes", "--", "touch", marker.to_str().unwrap()]);
    assert_eq!(r.code, 69, "{r:?}");
    assert!(
        r.stderr
            .contains(&env.path("backups").canonicalize().unwrap().display().to_string())
            && r.stderr.contains("Read-only file system"),
        "names the store and why: {r:?}"
    );
    assert!(!marker.exists(), "nothing ran");
    // status still reads it
    let s = env.guard(&["status"]);
    assert!(s.code == 0 || s.code == 82, "{s:?}");
}

/// R25: SIGINT or SIGTERM during the pre-run snapshot stops the run: the command never starts,
/// the partial snapshot is discarded, guard exits 128 + the signal (it used to finish the
/// snapshot, start the command and hand it the stale signal).
#[test]
fn a_signal_during_the_pre_run_snapshot_stops_the_run_before_the_command() {
    for (sig, code) in [(libc::SIGINT, 130), (libc::SIGTERM, 143)] {
        let env = lending_env("");
        let marker = env.path("ran");
        let pause = env.path("paused.pid");
        let child = env
            .cmd(&["--yes", "--", "touch", marker.to_str().unwrap()])
            .env("GUARD_TEST_PAUSE", "snapshot-between-targets")
            .env("GUARD_TEST_PAUSE_FILE", &pause)
            .env("GUARD_TEST_PAUSE_SECS", "2")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_for("the snapshot to reach its second target", 60, || pause.exists());
        unsafe {
            libc::kill(child.id() as i32, sig);
        }
        let r: Run = child.wait_with_output().unwrap().into();
        assert_eq!(r.code, code, "signal {sig}: {r:?}");
        assert!(
            r.stderr.contains("the command was not run") && r.stderr.contains("partial snapshot was discarded"),
            "{r:?}"
        );
        assert!(!marker.exists(), "signal {sig}: the command never started");
        assert!(snapshots(&env).is_empty(), "no snapshot listed");
        let v: serde_json::Value = serde_json::from_str(&env.guard(&["status", "--json"]).stdout).unwrap();
        assert!(v["interrupted"].as_array().unwrap().is_empty(), "{v}");
        assert!(v["incomplete_snapshots"].as_array().unwrap().is_empty(), "{v}");
        let j = journals(&env);
        assert_eq!(j[0]["outcome"], "abandoned", "{:?}", j[0]);
    }
}

/// R21: an artifact deleted while `guard verify` reads it (the open file stays readable after
/// the unlink) fails the verify, exit 65 naming it, and is not marked verified.
#[test]
fn an_artifact_deleted_during_verify_fails_it() {
    let env = simple_env("");
    let r = env.guard(&["snapshot"]);
    assert_eq!(r.code, 0, "{r:?}");
    let id = r.stdout.trim().to_string();
    let pause = env.path("paused.pid");
    let child = env
        .cmd(&["verify", &id])
        .env("GUARD_TEST_PAUSE", "verify-before-final-check")
        .env("GUARD_TEST_PAUSE_FILE", &pause)
        .env("GUARD_TEST_PAUSE_SECS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("verify to have read every artifact", 60, || pause.exists());
    let artifact = env.path(&format!("backups/snapshots/{id}/app.sqlite.gz"));
    std::fs::remove_file(&artifact).unwrap();
    let r: Run = child.wait_with_output().unwrap().into();
    assert_eq!(r.code, 65, "{r:?}");
    assert!(r.stderr.contains("app.sqlite.gz: missing"), "{r:?}");
    let list = snapshots(&env);
    let s = list.iter().find(|s| s["id"] == id.as_str()).unwrap();
    assert_ne!(s["verified_ok"], serde_json::json!(true), "{s}");
}

/// R20: a catalog.db overwritten with garbage (it is a cache) no longer blocks anything: the
/// first command moves it aside, rebuilds it from the manifests and journals and says what was
/// lost; `list`, `status`, `reindex`, `restore`, `recover` and a run all work.
#[test]
fn a_damaged_catalog_is_rebuilt_from_the_manifests_and_blocks_nothing() {
    let env = simple_env("");
    let before = sqlite_dump(&env.path("app.db"));
    let r = env.guard(&["snapshot"]);
    assert_eq!(r.code, 0, "{r:?}");
    let id = r.stdout.trim().to_string();
    let garbage: Vec<u8> = (0..8192u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let damage = || {
        std::fs::write(env.path("backups/catalog.db"), &garbage).unwrap();
        let _ = std::fs::remove_file(env.path("backups/catalog.db-wal"));
        let _ = std::fs::remove_file(env.path("backups/catalog.db-shm"));
    };
    let cases: &[&[&str]] = &[&["list"], &["status"], &["reindex"], &["recover", "--yes"], &["verify"]];
    for args in cases {
        damage();
        let r = env.guard(args);
        assert_eq!(r.code, 0, "{args:?}: {r:?}");
        assert!(
            r.stderr.contains("was damaged") && r.stderr.contains("rebuilt from the manifests"),
            "{args:?}: says what happened: {r:?}"
        );
        assert!(
            r.stderr.contains("catalog.db.damaged-"),
            "{args:?}: names where the old one went: {r:?}"
        );
    }
    damage();
    sql(&env.path("app.db"), "DELETE FROM payment");
    let r = env.guard(&["restore", &id, "--yes"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(sqlite_dump(&env.path("app.db")), before);
    damage();
    let r = env.guard(&["--yes", "--", "true"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        snapshots(&env).iter().any(|s| s["id"] == id.as_str()),
        "the snapshot is indexed again"
    );
}
