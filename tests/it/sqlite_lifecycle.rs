//! The guarded run end to end on SQLite and directories, with the real binary.

use crate::common::*;
use std::io::Read;

fn migrate(env: &Env, extra: &[&str]) -> Vec<String> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/migrate_cashback_tables.py");
    let mut v = vec![
        "python3".to_string(),
        script.display().to_string(),
        db(env).display().to_string(),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn guarded(env: &Env, flags: &[&str], cmd: &[String]) -> Run {
    let mut args: Vec<&str> = flags.to_vec();
    args.push("--");
    args.extend(cmd.iter().map(|s| s.as_str()));
    env.guard(&args)
}

#[test]
fn good_migration_is_kept() {
    let env = lending_env("");
    let r = guarded(&env, &[], &migrate(&env, &[]));
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("cashback_transaction table created"),
        "command output streams through: {r:?}"
    );
    assert_eq!(
        count(
            &db(&env),
            "SELECT count(*) FROM sqlite_master WHERE name LIKE 'cashback%'"
        ),
        2
    );
    assert!(r.stderr.contains("pass"), "{r:?}");
    let snaps = snapshots(&env);
    assert_eq!(snaps.len(), 1, "one pre-run snapshot: {snaps:?}");
    assert_eq!(snaps[0]["kind"], "pre-run");
    // The run log holds the command's output.
    let runs: Vec<_> = std::fs::read_dir(env.path("backups/runs")).unwrap().collect();
    assert_eq!(runs.len(), 1);
    let log = std::fs::read_to_string(runs[0].as_ref().unwrap().path().join("run.log")).unwrap();
    assert!(log.contains("migration complete"), "{log}");
}

#[test]
fn failing_migration_is_restored_with_its_exit_code() {
    let env = lending_env("");
    let before = dump(&db(&env));
    let r = guarded(&env, &[], &migrate(&env, &["--crash"]));
    assert_eq!(r.code, 2, "the command's own exit code passes through: {r:?}");
    assert!(r.stderr.contains("restored"), "{r:?}");
    assert_eq!(dump(&db(&env)), before, "database came back exactly");
    let wal = env.path("instances/prod/database/lending_app_prod.db-wal");
    let shm = env.path("instances/prod/database/lending_app_prod.db-shm");
    assert!(!wal.exists() && !shm.exists(), "no stale -wal/-shm left behind");
    let status = env.guard(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(v["last_run"]["outcome"], "restored", "{status:?}");
}

#[test]
fn deleting_untouched_rows_fails_the_check_and_restores() {
    let env = lending_env("");
    let before = dump(&db(&env));
    let r = guarded(&env, &["--json"], &migrate(&env, &["--bug"]));
    assert_eq!(r.code, 79, "checks failed, restored: {r:?}");
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("one JSON document on stdout");
    assert_eq!(v["outcome"], "restored");
    let failed: Vec<_> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["passed"] == false)
        .collect();
    assert_eq!(failed.len(), 1, "{v}");
    assert!(
        failed[0]["detail"]
            .as_str()
            .unwrap()
            .contains("payment: 150 → 135 rows"),
        "{v}"
    );
    assert_eq!(dump(&db(&env)), before);

    // The rescue snapshot holds the failed state: payments deleted, cashback tables created.
    let rescue = v["rescue_id"].as_str().unwrap().to_string();
    let show = env.guard(&["show", &rescue, "--json"]);
    let m: serde_json::Value = serde_json::from_str(&show.stdout).unwrap();
    assert_eq!(m["kind"], "rescue");
    let key = m["targets"][0]["artifacts"][0]["key"].as_str().unwrap();
    let gz = std::fs::read(env.path("backups").join(key)).unwrap();
    let mut raw = Vec::new();
    flate2::read::MultiGzDecoder::new(&gz[..])
        .read_to_end(&mut raw)
        .unwrap();
    let copy = env.path("rescued.db");
    std::fs::write(&copy, raw).unwrap();
    assert_eq!(count(&copy, "SELECT count(*) FROM payment"), 135);
    assert_eq!(
        count(&copy, "SELECT count(*) FROM sqlite_master WHERE name LIKE 'cashback%'"),
        2
    );
}

#[test]
fn directory_target_comes_back_exactly() {
    let env = lending_env("");
    let cmd = vec![
        "sh".to_string(),
        "-c".to_string(),
        "echo new > data/rent_history/2025-03.json && echo changed > data/rent_history/2025-01.json && exit 5"
            .to_string(),
    ];
    let r = guarded(&env, &[], &cmd);
    assert_eq!(r.code, 5, "{r:?}");
    let mut names: Vec<String> = std::fs::read_dir(env.path("data/rent_history"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec!["2025-01.json", "2025-02.json"],
        "file added since the snapshot removed"
    );
    assert_eq!(
        std::fs::read_to_string(env.path("data/rent_history/2025-01.json")).unwrap(),
        "{\"rent\": 1200}\n"
    );
}

#[test]
fn no_restore_keeps_the_failed_state_and_says_how_to_restore() {
    let env = lending_env("");
    let r = guarded(&env, &["--no-restore"], &migrate(&env, &["--bug"]));
    assert_eq!(r.code, 81, "{r:?}");
    assert_eq!(
        count(&db(&env), "SELECT count(*) FROM payment"),
        135,
        "failed state kept"
    );
    assert!(r.stderr.contains("restore"), "{r:?}");
    let snaps = snapshots(&env);
    let id = snaps[0]["id"].as_str().unwrap();
    let r = env.guard(&["restore", id, "--yes"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(count(&db(&env), "SELECT count(*) FROM payment"), 150);
    // restore took a rescue snapshot of what it replaced
    assert!(snapshots(&env).iter().any(|s| s["kind"] == "rescue"));
}

#[test]
fn dry_run_touches_nothing() {
    let env = lending_env("");
    let before = dump(&db(&env));
    let r = guarded(&env, &["--dry-run"], &migrate(&env, &["--bug"]));
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("snapshot: app (sqlite)"), "{r:?}");
    assert!(r.stdout.contains("check: existing data untouched"), "{r:?}");
    assert!(!env.path("backups").exists(), "store not even created");
    assert_eq!(dump(&db(&env)), before);
}

#[test]
fn snapshot_while_another_process_writes_is_consistent_and_restores() {
    let env = lending_env("");
    let path = db(&env);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let path = path.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let c = rusqlite::Connection::open(&path).unwrap();
            c.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                c.execute(
                    "INSERT INTO payment (loan_id, amount, paid_at) VALUES (1, ?1, 'now')",
                    [n as i64],
                )
                .unwrap();
                n += 1;
            }
            n
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(200));
    let mut ids = Vec::new();
    for _ in 0..3 {
        let r = env.guard(&["snapshot"]);
        assert_eq!(r.code, 0, "{r:?}");
        ids.push(r.stdout.trim().to_string());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let inserted = writer.join().unwrap();
    assert!(inserted > 0);
    // Deep verification runs PRAGMA integrity_check on every copy and re-checks fingerprints.
    let r = env.guard(&["verify"]);
    assert_eq!(r.code, 0, "{r:?}");
    // Restore the middle snapshot: row count equals what its manifest recorded.
    let show = env.guard(&["show", &ids[1], "--json"]);
    let m: serde_json::Value = serde_json::from_str(&show.stdout).unwrap();
    let recorded = m["targets"][0]["fingerprints"]["payment"]["rows"].as_u64().unwrap();
    let r = env.guard(&["restore", &ids[1], "--yes", "--target", "app"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(count(&path, "SELECT count(*) FROM payment") as u64, recorded);
    let c = rusqlite::Connection::open(&path).unwrap();
    let ok: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(ok, "ok");
}

#[test]
fn flipped_byte_fails_verify_naming_the_file() {
    let env = lending_env("");
    let r = env.guard(&["snapshot"]);
    assert_eq!(r.code, 0, "{r:?}");
    let id = r.stdout.trim().to_string();
    let artifact = env.path(&format!("backups/snapshots/{id}/app.sqlite.gz"));
    let mut bytes = std::fs::read(&artifact).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&artifact, bytes).unwrap();
    let r = env.guard(&["verify", &id]);
    assert_eq!(r.code, 65, "{r:?}");
    assert!(r.stderr.contains("app.sqlite.gz"), "names the file: {r:?}");
    let r = env.guard(&["verify", &id, "--quick"]);
    assert_eq!(r.code, 65, "{r:?}");
    // restore refuses a corrupt snapshot before touching anything
    let before = dump(&db(&env));
    let r = env.guard(&["restore", &id, "--yes"]);
    assert_eq!(r.code, 65, "{r:?}");
    assert_eq!(dump(&db(&env)), before);
}

#[test]
fn malformed_policy_reports_its_line() {
    let env = lending_env("");
    env.write("bad.toml", "name = \"x\"\nstore = \"b\"\n\n[[target]]\nname = \"app\"\nkind = \"sqlite\"\npath = \"a.db\"\ncolour = \"blue\"\n");
    let r = env.guard(&["--policy", "bad.toml", "--", "true"]);
    assert_eq!(r.code, 64, "{r:?}");
    assert!(r.stderr.contains("bad.toml:8"), "{r:?}");
    assert!(r.stderr.contains("colour"), "{r:?}");
    env.write("syntax.toml", "name = \"x\"\n[[target]\n");
    let r = env.guard(&["--policy", "syntax.toml", "list"]);
    assert_eq!(r.code, 64, "{r:?}");
    assert!(r.stderr.contains("syntax.toml:2"), "{r:?}");
}

#[test]
fn snapshot_failure_runs_nothing() {
    let env = lending_env("");
    std::fs::remove_file(db(&env)).unwrap();
    let r = refused(&env, 69, |a| env.guard(a));
    assert!(r.stderr.contains("does not exist"), "{r:?}");
    assert!(snapshots(&env).is_empty(), "no partial snapshot listed");
}

#[test]
fn unknown_command_is_refused_before_anything() {
    let env = lending_env("");
    let r = env.guard(&["--", "surely-not-a-command-guard-test"]);
    assert_eq!(r.code, 64, "{r:?}");
    assert!(r.stderr.contains("command not found"), "{r:?}");
    assert!(!env.path("backups/snapshots").exists());
}

#[test]
fn second_guard_on_the_same_policy_is_refused_naming_the_holder() {
    let env = simple_env("");
    // The first guard's command runs until the test lets it end: no time window to hit (a
    // `sleep 3` could end before a loaded machine let the test look).
    let (started, go) = (env.path("started"), env.path("go"));
    let script = format!(
        "touch '{}'; while [ ! -e '{}' ]; do sleep 0.05; done",
        started.display(),
        go.display()
    );
    let mut first = env
        .cmd(&["--", "sh", "-c", &script])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !started.exists() {
        assert!(
            first.try_wait().unwrap().is_none(),
            "the first guard ended before its command started"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the first guard's command never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let s = env.guard(&["status", "--json"]);
    assert!(
        s.stdout.contains(&format!("\"pid\": {}", first.id())),
        "status names the running guard: {s:?}"
    );
    let r = env.guard(&["--", "true"]);
    std::fs::write(&go, "").unwrap();
    assert_eq!(r.code, 75, "{r:?}");
    assert!(
        r.stderr.contains(&format!("pid {}", first.id())),
        "names the holder: {r:?}"
    );
    assert!(first.wait().unwrap().success());
}

#[test]
fn hooks_run_before_and_after_even_when_restoring() {
    let env = lending_env(
        r#"
[hooks]
before = ["echo stop >> hooks.log"]
after = ["echo start >> hooks.log"]
"#,
    );
    let r = env.guard(&["--", "sh", "-c", "echo run >> hooks.log; exit 1"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(
        std::fs::read_to_string(env.path("hooks.log")).unwrap(),
        "stop\nrun\nstart\n"
    );
}

#[test]
fn confirm_without_a_terminal_refuses_unless_yes() {
    let env = simple_env("confirm = true");
    let r = env.guard(&["--", "true"]);
    assert_eq!(r.code, 76, "{r:?}");
    assert!(!env.path("backups/snapshots").exists(), "{r:?}");
    let r = env.guard(&["--yes", "--", "true"]);
    assert_eq!(r.code, 0, "{r:?}");
}

#[test]
fn artifacts_restore_by_hand_with_gunzip_and_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let env = lending_env("");
    let r = env.guard(&["snapshot"]);
    let id = r.stdout.trim();
    let gz = env.path(&format!("backups/snapshots/{id}/app.sqlite.gz"));
    assert_eq!(std::fs::metadata(&gz).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(
        std::fs::metadata(env.path("backups")).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let out = std::process::Command::new("gunzip")
        .arg("-c")
        .arg(&gz)
        .output()
        .unwrap();
    assert!(out.status.success());
    let copy = env.path("by-hand.db");
    std::fs::write(&copy, out.stdout).unwrap();
    assert_eq!(dump(&copy), dump(&db(&env)));
    let tgz = env.path(&format!("backups/snapshots/{id}/rent-history.tar.gz"));
    let out = std::process::Command::new("tar")
        .arg("-tzf")
        .arg(&tgz)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("2025-01.json"));
}

#[test]
fn catalog_rebuilds_from_manifests() {
    let env = lending_env("");
    env.guard(&["snapshot"]);
    env.guard(&["snapshot", "--label", "second"]);
    std::fs::remove_file(env.path("backups/catalog.db")).unwrap();
    let snaps = snapshots(&env);
    assert_eq!(snaps.len(), 2);
    assert!(snaps.iter().any(|s| s["label"] == "second"));
    let r = env.guard(&["reindex"]);
    assert_eq!(r.code, 0, "{r:?}");
}

#[test]
fn every_example_policy_parses() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().and_then(|x| x.to_str()) != Some("toml") {
            continue;
        }
        // Example policies use ${VARS}; give every one a value.
        let text = std::fs::read_to_string(&p).unwrap();
        for var in text
            .split("${")
            .skip(1)
            .filter_map(|s| s.split_once('}'))
            .map(|(v, _)| v.to_string())
        {
            // A URL variable gets a URL (PostgreSQL URLs are checked when the policy loads).
            let value = match var.ends_with("_URL") {
                true => format!("postgres://app:value-of-{var}@db.example:5432/app"),
                false => format!("value-of-{var}"),
            };
            std::env::set_var(&var, value);
        }
        guard::policy::load(&p).unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
        n += 1;
    }
    assert!(n >= 1, "no example policies found");
}

#[test]
fn a_migration_that_corrupts_the_database_file_is_still_restored() {
    let env = lending_env("");
    let before = dump(&db(&env));
    let garbage: Vec<u8> = (0..50_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    env.write("garbage.bin", "");
    std::fs::write(env.path("garbage.bin"), &garbage).unwrap();
    let dbp = db(&env).display().to_string();
    let r = env.guard(&["--json", "--", "sh", "-c", &format!("cp garbage.bin {dbp}; exit 4")]);
    assert_eq!(r.code, 4, "{r:?}");
    assert_eq!(dump(&db(&env)), before, "restored over the broken file");
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let rescue = v["rescue_id"].as_str().unwrap();
    // The rescue snapshot kept the broken bytes exactly as the command left them.
    let gz = std::fs::read(env.path(&format!("backups/snapshots/{rescue}/app.raw.gz"))).unwrap();
    let mut raw = Vec::new();
    flate2::read::MultiGzDecoder::new(&gz[..])
        .read_to_end(&mut raw)
        .unwrap();
    assert!(raw == garbage);
    assert_eq!(env.guard(&["verify", rescue]).code, 0);
}

#[test]
fn restore_runs_the_after_hooks_when_a_before_hook_fails() {
    // Drift (issue 18): `guard restore` returned before its after hooks when a before hook failed.
    let env = lending_env("\n[hooks]\nbefore = [\"exit 4\"]\nafter = [\"touch after-ran\"]\n");
    let r = env.guard(&["snapshot"]);
    assert_eq!(r.code, 0, "{r:?}");
    let id = r.stdout.trim().to_string();
    sql(&db(&env), "DELETE FROM payment");
    let changed = dump(&db(&env));
    let r = env.guard(&["restore", &id, "--yes"]);
    assert_eq!(r.code, 70, "a before hook failed: {r:?}");
    assert!(r.stderr.contains("before hook \"exit 4\" failed"), "{r:?}");
    assert!(env.path("after-ran").exists(), "after hooks ran: {r:?}");
    assert_eq!(dump(&db(&env)), changed, "nothing was restored");
}

#[test]
fn a_failing_before_hook_exits_70_and_runs_nothing() {
    let env = lending_env("\n[hooks]\nbefore = [\"exit 4\"]\nafter = [\"touch after-ran\"]\n");
    refused(&env, 70, |a| env.guard(a));
    assert!(!env.path("backups/snapshots").exists(), "nothing was snapshotted");
    assert!(env.path("after-ran").exists(), "after hooks ran");
}
