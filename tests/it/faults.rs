//! Faults, bad input and attackers: guard killed in every phase, dead lock holders, corrupt
//! artifacts and manifests, a full disk, binary output, and secrets.

use crate::common::*;
use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

fn script() -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/migrate_cashback_tables.py")
        .display()
        .to_string()
}

/// Start a guarded run of the buggy migration that pauses at `point`, wait for the pause, and
/// SIGKILL guard there.
fn kill_at(env: &Env, point: &str) {
    kill_at_held(env, point, false)
}

/// [`kill_at`]; with `held`, the pre-run snapshot's deferred store artifact (issue 17) is never
/// written before the kill (`GUARD_TEST_HOLD`): its hot copy is all there is.
fn kill_at_held(env: &Env, point: &str, held: bool) {
    let db = db(env).display().to_string();
    let mut cmd = env.cmd(&["--", "python3", &script(), &db, "--bug"]);
    if held {
        cmd.env("GUARD_TEST_HOLD", "deferred-artifact")
            .env("GUARD_TEST_HOLD_RELEASE", env.path("never"));
    }
    if point == "restore-between-targets" {
        // Both targets keep a hot copy and come back by rename; between two restores from the
        // store is reached only without one.
        cmd.env("GUARD_TEST_HOT_FREE", "0");
    }
    let mut child = spawn_paused(cmd, point, &env.path("paused.pid"));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

#[test]
fn sigkill_in_every_phase_then_status_and_recover_bring_targets_back() {
    let points = [
        ("snapshotting", "snapshotting", false),
        ("snapshot-between-targets", "snapshotting", false),
        ("snapshot-verified", "snapshot-verified", false),
        ("command-running", "command-running", false),
        ("checking", "checking", true),
        // Issue 17: both targets' store artifacts are written while the command runs; killed
        // before they exist, recover restores the database and the directory from their hot
        // copies.
        ("held:command-running", "command-running", false),
        ("held:checking", "checking", true),
        // Issue 17: the SQLite target is put back by renaming its hot copy, the failed state
        // set aside beside it, before the rescue snapshot compresses that into the store.
        ("swapping", "swapping", true),
        ("sqlite-swap", "swapping", true),
        ("swapped", "swapping", false),
        // From here the SQLite database is already back (by rename).
        ("rescuing", "rescuing", false),
        ("restoring", "restoring", false),
        ("restore-between-targets", "restoring", true),
    ];
    for (point, phase, changed) in points {
        let env = lending_env("");
        let before_db = dump(&db(&env));
        let before_file = std::fs::read_to_string(env.path("data/rent_history/2025-01.json")).unwrap();
        let (held, point) = match point.strip_prefix("held:") {
            Some(p) => (true, p),
            None => (false, point),
        };
        kill_at_held(&env, point, held);

        let status = env.guard(&["status", "--json"]);
        assert_eq!(status.code, 82, "{point}: needs attention: {status:?}");
        let v: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
        let interrupted = v["interrupted"].as_array().unwrap();
        assert_eq!(interrupted.len(), 1, "{point}: {v}");
        assert_eq!(interrupted[0]["phase"], phase, "{point}: {v}");
        assert!(!interrupted[0]["todo"].as_str().unwrap().is_empty());
        if point == "snapshot-between-targets" {
            // The SQLite target's state is in its hot copy so far (its store artifact is written
            // once the command runs): a partial snapshot, never listed as complete.
            let hot = std::fs::read_dir(db(&env).parent().unwrap())
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .contains(".guard-hot-")
                })
                .count();
            assert_eq!(hot, 1, "{v}");
            assert!(
                snapshots(&env).is_empty(),
                "a partial snapshot is never listed as complete"
            );
        }
        if changed && point != "restore-between-targets" {
            assert_ne!(dump(&db(&env)), before_db, "{point}: the buggy migration had run");
        }
        let human = env.guard(&["status"]);
        assert!(human.stdout.contains("INTERRUPTED"), "{point}: {human:?}");

        // A new run is refused until the interrupted one is dealt with.
        let refused = env.guard(&["--", "true"]);
        assert_eq!(refused.code, 82, "{point}: {refused:?}");
        assert!(refused.stderr.contains("interrupted"), "{point}: {refused:?}");
        // The first guard after the crash takes over the dead holder's lock, and says so.
        assert!(
            refused.stderr.contains("took over the lock of a guard that died"),
            "{point}: the dead holder is named: {refused:?}"
        );

        let r = env.guard(&["recover", "--yes"]);
        assert_eq!(r.code, 0, "{point}: {r:?}");
        let dir = db(&env).parent().unwrap().to_path_buf();
        let guard_files = |infix: &str| -> Vec<String> {
            std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(infix))
                .collect()
        };
        assert!(
            guard_files(".guard-hot-").is_empty(),
            "{point}: recover removes the hot copy: {r:?}"
        );
        let aside = guard_files(".guard-failed-");
        if matches!(point, "sqlite-swap" | "swapped" | "rescuing") {
            // The failed state set aside is the only copy of it: kept, and named.
            assert!(!aside.is_empty(), "{point}: {r:?}");
            assert!(r.stderr.contains(".guard-failed-"), "{point}: recover names it: {r:?}");
        } else {
            assert!(aside.is_empty(), "{point}: {aside:?} {r:?}");
        }
        assert_eq!(
            dump(&db(&env)),
            before_db,
            "{point}: database back to the pre-run state"
        );
        assert_eq!(
            std::fs::read_to_string(env.path("data/rent_history/2025-01.json")).unwrap(),
            before_file
        );
        let after = env.guard(&["status", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&after.stdout).unwrap();
        assert!(v["interrupted"].as_array().unwrap().is_empty(), "{point}: {v}");
    }
}

#[test]
fn recover_keep_accepts_the_current_state() {
    let env = lending_env("");
    kill_at(&env, "checking");
    let changed = dump(&db(&env));
    let r = env.guard(&["recover", "--keep"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(dump(&db(&env)), changed);
    let s = env.guard(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&s.stdout).unwrap();
    assert!(v["interrupted"].as_array().unwrap().is_empty());
}

fn snapshot_id(env: &Env) -> String {
    let r = env.guard(&["snapshot"]);
    assert_eq!(r.code, 0, "{r:?}");
    r.stdout.trim().to_string()
}

#[test]
fn truncated_missing_and_tampered_snapshots_are_refused_naming_the_file() {
    // truncated
    let env = lending_env("");
    let id = snapshot_id(&env);
    let f = env.path(&format!("backups/snapshots/{id}/app.sqlite.gz"));
    let len = std::fs::metadata(&f).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let r = env.guard(&["verify", &id]);
    assert_eq!(r.code, 65, "{r:?}");
    assert!(
        r.stderr.contains("app.sqlite.gz") && r.stderr.contains("truncated"),
        "{r:?}"
    );
    let r = env.guard(&["restore", &id, "--yes"]);
    assert_eq!(r.code, 65, "{r:?}");

    // missing
    let id2 = snapshot_id(&env);
    std::fs::remove_file(env.path(&format!("backups/snapshots/{id2}/rent-history.tar.gz"))).unwrap();
    let r = env.guard(&["verify", &id2]);
    assert_eq!(r.code, 65, "{r:?}");
    assert!(r.stderr.contains("rent-history.tar.gz: missing"), "{r:?}");

    // tampered manifest: the checksum of the artifact is rewritten to match a replaced artifact
    let id3 = snapshot_id(&env);
    let mpath = env.path(&format!("backups/snapshots/{id3}/manifest.json"));
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
    m["targets"][0]["fingerprints"]["payment"]["rows"] = serde_json::json!(1);
    std::fs::write(&mpath, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    let r = env.guard(&["verify", &id3]);
    assert_eq!(r.code, 65, "{r:?}");
    assert!(
        r.stderr.contains("manifest.json") && r.stderr.contains("tampered"),
        "{r:?}"
    );
    let before = dump(&db(&env));
    let r = env.guard(&["restore", &id3, "--yes"]);
    assert_eq!(r.code, 65, "{r:?}");
    assert_eq!(dump(&db(&env)), before);
    // A manifest that is not even JSON
    std::fs::write(&mpath, b"{ not json").unwrap();
    let r = env.guard(&["show", &id3]);
    assert_ne!(r.code, 0, "{r:?}");
}

#[test]
fn disk_full_while_snapshotting_runs_nothing_and_leaves_no_complete_snapshot() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: disk-full test needs root to mount a small tmpfs");
        return;
    }
    let env = simple_env("");
    // A database of incompressible data, larger than the store's filesystem.
    let c = rusqlite::Connection::open(env.path("app.db")).unwrap();
    c.execute_batch(
        "CREATE TABLE blob (b BLOB); INSERT INTO blob SELECT randomblob(100000) FROM generate_series(1, 40);",
    )
    .unwrap_or_else(|_| {
        for _ in 0..40 {
            c.execute("INSERT INTO blob VALUES (randomblob(100000))", []).unwrap();
        }
    });
    drop(c);
    let store = env.path("backups");
    std::fs::create_dir_all(&store).unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&store)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("SKIPPED: cannot mount a tmpfs here");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _u = Unmount(store.clone());
    let r = refused(&env, 69, |a| env.guard(a));
    assert!(r.stderr.contains("No space left on device"), "clear error: {r:?}");
    let leftovers: Vec<String> = walkdir::WalkDir::new(&store)
        .into_iter()
        .filter_map(|e| e.ok())
        .map(|e| e.path().display().to_string())
        .filter(|p| {
            p.ends_with("manifest.json") || p.contains(".guard-tmp-") || p.ends_with(".gz") || p.contains("/tmp/guard-")
        })
        .collect();
    assert!(
        leftovers.is_empty(),
        "no partial snapshot or temp file left: {leftovers:?}"
    );
}

#[test]
fn megabytes_of_binary_output_are_streamed_and_logged_intact() {
    let env = simple_env("");
    let py = "import sys\nb = bytes(range(256)) * 4096 * 5\nsys.stdout.buffer.write(b)\nsys.stdout.buffer.write(b'\\xff\\xfe not utf-8 \\x00 end')\n";
    env.write("spew.py", py);
    let out = env.cmd(&["--", "python3", "spew.py"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let mut expected: Vec<u8> = (0..=255u8).collect::<Vec<u8>>().repeat(4096 * 5);
    expected.extend_from_slice(b"\xff\xfe not utf-8 \x00 end");
    assert!(
        out.stdout == expected,
        "stdout intact ({} vs {} bytes)",
        out.stdout.len(),
        expected.len()
    );
    let runs: Vec<_> = std::fs::read_dir(env.path("backups/runs")).unwrap().collect();
    let mut log = Vec::new();
    std::fs::File::open(runs[0].as_ref().unwrap().path().join("run.log"))
        .unwrap()
        .read_to_end(&mut log)
        .unwrap();
    assert!(log == expected, "run log intact ({} bytes)", log.len());
}

#[test]
fn bad_input_gets_one_clear_message_and_runs_nothing() {
    let env = simple_env("");
    let marker = env.path("ran");
    let touch = ["--", "touch", marker.to_str().unwrap()];
    let cases: &[(&str, &str, &[&str])] = &[
        ("confirm = \"yes\"\n", "guard.toml:1", &["invalid type"]),
        (
            "store = \"${GUARD_FAULTS_UNSET_VAR}\"\n",
            "guard.toml:1",
            &["GUARD_FAULTS_UNSET_VAR"],
        ),
        (
            "[[target]]\nname = \"x\"\nkind = \"mysql\"\npath = \"a\"\n",
            "guard.toml:1",
            &["unknown kind"],
        ),
        (
            "[[check]]\nname = \"c\"\ntarget = \"app\"\nsql = \"select 1\"\n",
            "guard.toml:1",
            &["expect"],
        ),
        (
            "[retention]\nkeep_within = \"forever\"\n",
            "guard.toml:2",
            &["keep_within"],
        ),
    ];
    for (text, at, words) in cases {
        env.write(
            "guard.toml",
            &format!("name = \"p\"\n{text}\n[[target]]\nname = \"app\"\nkind = \"sqlite\"\npath = \"app.db\"\n"),
        );
        let r = env.guard(&touch);
        assert_eq!(r.code, 64, "{text}: {r:?}");
        let line_shift = at.replace(":2", ":3").replace(":1", ":2");
        assert!(
            r.stderr.contains(&line_shift),
            "{text}: names the line ({line_shift}): {r:?}"
        );
        for w in *words {
            assert!(r.stderr.contains(w), "{text}: mentions {w}: {r:?}");
        }
        assert_eq!(
            r.stderr.lines().filter(|l| l.starts_with("guard: error")).count(),
            1,
            "one message: {r:?}"
        );
        assert!(!marker.exists());
    }
}

#[test]
fn secrets_never_appear_in_output_logs_manifests_or_child_argv() {
    let secret = "s3cr3t-guard-token-4242";
    let env = simple_env("");
    let text = std::fs::read_to_string(env.path("guard.toml")).unwrap();
    // The check compares the token with the secret written in two quoted halves: the policy's
    // own text must not put the secret in the check's argv (the scan below would find it there).
    let (head, tail) = secret.split_at(secret.len() - 1);
    env.write(
        "guard.toml",
        &format!(
            "{text}\n[hooks]\nbefore = [\"test -n \\\"${{GUARD_FAULTS_API_TOKEN}}\\\"\"]\n\n[[check]]\nname = \"token works\"\ncommand = \"test \\\"${{GUARD_FAULTS_API_TOKEN}}\\\" = '{head}''{tail}'\"\n"
        ),
    );
    let child = env
        .cmd(&[
            "--json",
            "--",
            "sh",
            "-c",
            "echo token is $GUARD_FAULTS_API_TOKEN; echo err $GUARD_FAULTS_API_TOKEN >&2; sleep 1",
        ])
        .env("GUARD_FAULTS_API_TOKEN", secret)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // While it runs, no process's argv may hold the secret.
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut seen_children = 0;
    while Instant::now() < deadline {
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(format!("/proc/{p}/cmdline")) else {
                continue;
            };
            assert!(
                !String::from_utf8_lossy(&cmdline).contains(secret),
                "secret in argv of pid {p}: {:?}",
                String::from_utf8_lossy(&cmdline)
            );
            if let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) {
                if stat.split_whitespace().nth(3) == Some(&pid.to_string()) {
                    seen_children += 1;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(seen_children > 0, "the scan saw guard's children");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stdout.contains(secret) && !stderr.contains(secret),
        "{stdout}\n{stderr}"
    );
    assert!(stderr.contains("token is ***"), "redacted, not dropped: {stderr}");
    for e in walkdir::WalkDir::new(env.path("backups")).into_iter().flatten() {
        if e.file_type().is_file() {
            let bytes = std::fs::read(e.path()).unwrap();
            let mut all = bytes.clone();
            if e.path().extension().and_then(|x| x.to_str()) == Some("gz") {
                all.clear();
                flate2::read::MultiGzDecoder::new(&bytes[..])
                    .read_to_end(&mut all)
                    .unwrap();
            }
            assert!(
                !all.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "secret in {}",
                e.path().display()
            );
        }
    }
}

/// Scan every process's argv until `child` exits; panics when one holds `secret`. Returns how
/// many times a child of `child` was seen, and `child`'s output.
fn scan_argv_until_exit(child: std::process::Child, secret: &str) -> (usize, std::process::Output) {
    let pid = child.id();
    let mut child = child;
    let mut seen_children = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(format!("/proc/{p}/cmdline")) else {
                continue;
            };
            assert!(
                !String::from_utf8_lossy(&cmdline).contains(secret),
                "secret in argv of pid {p}: {:?}",
                String::from_utf8_lossy(&cmdline)
            );
            if let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) {
                let rest = stat.rsplit(')').next().unwrap_or("");
                if rest.split_whitespace().nth(1) == Some(&pid.to_string()) {
                    seen_children += 1;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    (seen_children, child.wait_with_output().unwrap())
}

/// Item 2 of issue 15's rest: a variable guard reads from the `.env` beside the policy (not the
/// real environment) reaches hooks and `command` checks through their environment, expanded by
/// the shell, never on a command line; also through `guard restore`'s hooks.
#[test]
fn dotenv_secrets_reach_hooks_and_checks_through_the_environment_not_argv() {
    let secret = "d0tenv-guard-secret-7171";
    let env = simple_env("");
    let text = std::fs::read_to_string(env.path("guard.toml")).unwrap();
    env.write(".env", &format!("GUARD_FAULTS_DOTENV_TOKEN={secret}\n"));
    env.write(
        "guard.toml",
        &format!(
            "{text}\n[hooks]\nbefore = [\"printf %s \\\"${{GUARD_FAULTS_DOTENV_TOKEN}}\\\" >> seen-before; sleep 1\"]\nafter = [\"printf %s \\\"${{GUARD_FAULTS_DOTENV_TOKEN}}\\\" >> seen-after; sleep 1\"]\n\n[[check]]\nname = \"token works\"\ncommand = \"sleep 1; printf %s \\\"${{GUARD_FAULTS_DOTENV_TOKEN}}\\\" >> seen-check\"\n"
        ),
    );
    let child = env
        .cmd(&["--json", "--", "true"])
        .env_remove("GUARD_FAULTS_DOTENV_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (seen, out) = scan_argv_until_exit(child, secret);
    assert_eq!(
        out.status.code(),
        Some(0),
        "hooks and check saw the value: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(seen > 0, "the scan saw guard's children");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["checks"][0]["passed"], true, "{v}");
    // `guard restore` runs the hooks too.
    let child = env
        .cmd(&["restore", "latest", "--yes"])
        .env_remove("GUARD_FAULTS_DOTENV_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (seen, out) = scan_argv_until_exit(child, secret);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(seen > 0, "the scan saw restore's hooks");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!all.contains(secret), "{all}");
    // The shell expanded the value each time: twice for the run and the restore's hooks.
    let seen = |f: &str| std::fs::read_to_string(env.path(f)).unwrap_or_default();
    assert_eq!(seen("seen-before"), format!("{secret}{secret}"));
    assert_eq!(seen("seen-after"), format!("{secret}{secret}"));
    assert_eq!(seen("seen-check"), secret);
}

fn wait_for(path: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        assert!(Instant::now() < deadline, "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_during_the_command_goes_to_the_command() {
    let env = lending_env("");
    let before = dump(&db(&env));
    let ready = env.path("ready");
    let script = format!(
        "trap 'echo got-term > {got}; exit 143' TERM; touch {ready}; sleep 20 & wait",
        got = env.path("got-term").display(),
        ready = ready.display()
    );
    let child = env
        .cmd(&["--", "sh", "-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&ready);
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(143),
        "guard survives and passes the command's code through: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(env.path("got-term").exists(), "the command received SIGTERM");
    assert!(String::from_utf8_lossy(&out.stderr).contains("restored"));
    assert_eq!(dump(&db(&env)), before);
}

#[test]
fn sigterm_during_a_restore_is_deferred_until_targets_are_consistent() {
    let env = lending_env("");
    let before = dump(&db(&env));
    let before_file = std::fs::read_to_string(env.path("data/rent_history/2025-01.json")).unwrap();
    let pause = env.path("paused");
    let child = env
        .cmd(&["--", "sh", "-c", "echo broken > data/rent_history/2025-01.json; exit 3"])
        .env("GUARD_TEST_PAUSE", "restore-between-targets")
        .env("GUARD_TEST_PAUSE_FILE", &pause)
        .env("GUARD_TEST_PAUSE_SECS", "1")
        // Restores from the store, one target after the other (a hot copy would rename them in).
        .env("GUARD_TEST_HOT_FREE", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&pause);
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("deferred"), "{stderr}");
    assert_eq!(dump(&db(&env)), before);
    assert_eq!(
        std::fs::read_to_string(env.path("data/rent_history/2025-01.json")).unwrap(),
        before_file,
        "every target restored"
    );
}

/// The journal of every run and restore in the env's store, oldest first.
fn journals(env: &Env) -> Vec<serde_json::Value> {
    let mut v: Vec<serde_json::Value> = std::fs::read_dir(env.path("backups/runs"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read(e.path().join("journal.json")).ok())
                .map(|b| serde_json::from_slice(&b).unwrap())
                .collect()
        })
        .unwrap_or_default();
    v.sort_by(|a, b| a["run_id"].as_str().cmp(&b["run_id"].as_str()));
    v
}

#[test]
fn a_killed_guard_restore_is_named_by_status_and_finished_by_recover() {
    // issue 14 item 10 (R18): `guard restore` keeps a journal like a guarded run.
    let env = lending_env("");
    let id = snapshot_id(&env);
    let snap_db = dump(&db(&env));
    let snap_file = std::fs::read_to_string(env.path("data/rent_history/2025-01.json")).unwrap();
    sql(&db(&env), "DELETE FROM payment WHERE id % 2 = 0");
    env.write("data/rent_history/2025-01.json", "{\"rent\": 0}\n");
    let cmd = env.cmd(&["restore", &id, "--yes"]);
    let mut child = spawn_paused(cmd, "restore-between-targets", &env.path("paused.pid"));
    child.kill().unwrap(); // SIGKILL after the first target, before the second
    child.wait().unwrap();
    assert_eq!(dump(&db(&env)), snap_db, "the first target was restored");
    assert_eq!(
        std::fs::read_to_string(env.path("data/rent_history/2025-01.json")).unwrap(),
        "{\"rent\": 0}\n",
        "the second was not"
    );

    let status = env.guard(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    let interrupted = v["interrupted"].as_array().unwrap();
    assert_eq!(interrupted.len(), 1, "status names the killed restore: {v}");
    assert_eq!(interrupted[0]["phase"], "restoring", "{v}");
    assert_eq!(interrupted[0]["snapshot_id"], id.as_str(), "{v}");
    assert!(interrupted[0]["rescue_id"].is_string(), "{v}");
    let human = env.guard(&["status"]);
    assert!(
        human.stdout.contains("INTERRUPTED") && human.stdout.contains(&format!("guard restore {id}")),
        "{human:?}"
    );
    let refused = env.guard(&["--", "true"]);
    assert_ne!(
        refused.code, 0,
        "no new run while the restore is unfinished: {refused:?}"
    );

    let r = env.guard(&["recover", "--yes"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(dump(&db(&env)), snap_db);
    assert_eq!(
        std::fs::read_to_string(env.path("data/rent_history/2025-01.json")).unwrap(),
        snap_file,
        "recover finished the restore"
    );
    let j = journals(&env);
    let last = j.last().unwrap();
    assert_eq!(last["op"], "restore", "{last}");
    assert_eq!(last["phase"], "done", "{last}");
    assert_eq!(last["outcome"], "recovered", "{last}");
    let v: serde_json::Value = serde_json::from_str(&env.guard(&["status", "--json"]).stdout).unwrap();
    assert!(v["interrupted"].as_array().unwrap().is_empty(), "{v}");
}

#[test]
fn recover_of_a_killed_restore_of_one_target_restores_only_that_target() {
    let env = lending_env("");
    let id = snapshot_id(&env);
    let snap_db = dump(&db(&env));
    sql(&db(&env), "DELETE FROM payment WHERE id % 2 = 0");
    env.write("data/rent_history/2025-01.json", "{\"rent\": 0}\n");
    let cmd = env.cmd(&["restore", &id, "--yes", "--target", "app"]);
    let mut child = spawn_paused(cmd, "restoring", &env.path("paused.pid"));
    child.kill().unwrap();
    child.wait().unwrap();
    let r = env.guard(&["recover", "--yes"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(dump(&db(&env)), snap_db);
    assert_eq!(
        std::fs::read_to_string(env.path("data/rent_history/2025-01.json")).unwrap(),
        "{\"rent\": 0}\n",
        "the target the restore was not asked for is left alone"
    );
}

#[test]
fn recover_warns_when_an_after_hook_fails() {
    // Drift (issue 18): recover ignored a failing after hook; the run and `guard restore` warn.
    let env = lending_env("\n[hooks]\nafter = [\"exit 3\"]\n");
    kill_at(&env, "checking");
    let r = env.guard(&["recover", "--yes"]);
    assert_eq!(r.code, 0, "the restore itself succeeded: {r:?}");
    assert!(
        r.stderr.contains("warning: after hook \"exit 3\" failed (exit 3)"),
        "{r:?}"
    );
}

#[test]
fn recover_runs_the_after_hooks_when_a_before_hook_fails() {
    // Drift (issue 18): the guarded run runs its after hooks whatever happened once the before
    // hooks started; recover returned before them.
    let env = lending_env("");
    kill_at(&env, "checking");
    let changed = dump(&db(&env));
    let text = std::fs::read_to_string(env.path("guard.toml")).unwrap();
    env.write(
        "guard.toml",
        &format!("{text}\n[hooks]\nbefore = [\"exit 4\"]\nafter = [\"touch after-ran\"]\n"),
    );
    let r = env.guard(&["recover", "--yes"]);
    assert_eq!(r.code, 70, "a before hook failed: {r:?}");
    assert!(r.stderr.contains("before hook \"exit 4\" failed"), "{r:?}");
    assert!(env.path("after-ran").exists(), "after hooks ran: {r:?}");
    assert_eq!(dump(&db(&env)), changed, "nothing was restored");
    let v: serde_json::Value = serde_json::from_str(&env.guard(&["status", "--json"]).stdout).unwrap();
    assert_eq!(v["interrupted"].as_array().unwrap().len(), 1, "still to recover: {v}");
}

#[test]
fn a_corrupt_pre_run_snapshot_is_refused_before_the_rescue_and_nothing_is_restored() {
    // Drift (issue 18): `guard restore` and `recover` check every artifact's size and SHA-256
    // before touching anything; the run now does too, so a command that damaged the store
    // gets no half-restore from it. (A hot copy, which needs nothing from the store, would
    // restore a target by rename: here there is none — `GUARD_TEST_HOT_FREE=0`, no room for one —
    // so the damaged directory artifact can only come from the store, and nothing is touched.)
    let env = lending_env("");
    let changed_db = "sqlite3 instances/prod/database/lending_app_prod.db 'DELETE FROM payment'";
    let r: Run = env
        .cmd(&[
            "--",
            "sh",
            "-c",
            &format!("{changed_db}; for f in backups/snapshots/*/rent-history.tar.gz; do printf x >> $f; done; echo broken > data/rent_history/2025-01.json; exit 1"),
        ])
        .env("GUARD_TEST_HOT_FREE", "0")
        .output()
        .unwrap()
        .into();
    assert_eq!(r.code, 80, "{r:?}");
    assert!(
        r.stderr.contains("failed verification") && r.stderr.contains("rent-history.tar.gz"),
        "{r:?}"
    );
    assert_eq!(
        count(&db(&env), "SELECT count(*) FROM payment"),
        0,
        "the database was not swapped back either: {r:?}"
    );
    assert!(
        snapshots(&env).iter().all(|s| s["kind"] != "rescue"),
        "no rescue snapshot was taken: {r:?}"
    );
    assert_eq!(
        std::fs::read_to_string(env.path("data/rent_history/2025-01.json")).unwrap(),
        "broken\n",
        "nothing was restored from a snapshot that failed verification"
    );
}
