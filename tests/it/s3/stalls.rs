//! A server that stops answering (issue 14 item 8, red-team R13): the test's own moto gets
//! SIGSTOP (it keeps its port and accepts connections, but answers nothing) at a chosen moment,
//! and guard must turn the hang into a clear error within its stated bound.
//!
//! The tests use short limits (`GUARD_S3_READ_TIMEOUT=3`, `GUARD_S3_ATTEMPTS=2`,
//! `GUARD_S3_CONNECT_TIMEOUT=2`): a stalled request fails after about 2 × 3 s plus backoff. A
//! guard still waiting [`HANG`] after the server stopped is hung; the server is then resumed so
//! that guard can finish, and the test fails.

use super::*;
use std::process::{Command, Stdio};
use std::sync::mpsc;

const HANG: Duration = Duration::from_secs(120);

fn short_limits(cmd: &mut Command) -> &mut Command {
    cmd.env("GUARD_S3_READ_TIMEOUT", "3")
        .env("GUARD_S3_CONNECT_TIMEOUT", "2")
        .env("GUARD_S3_ATTEMPTS", "2")
}

/// Start `cmd` with its output captured, in a thread that reports when it ends.
fn spawn(mut cmd: Command) -> mpsc::Receiver<Run> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().expect("start guard");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(Run::from(child.wait_with_output().expect("guard's output")));
    });
    rx
}

/// Wait until `ready` holds (checked every 20 ms), or panic after a minute.
fn until(what: &str, mut ready: impl FnMut() -> bool) {
    let t = Instant::now();
    while !ready() {
        assert!(t.elapsed() < Duration::from_secs(60), "never happened: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Freeze the server, wait for guard to end, thaw the server. Returns guard's run and how long
/// after the freeze it ended.
fn freeze_until_guard_ends(moto: &Moto, guard: mpsc::Receiver<Run>) -> (Run, Duration) {
    moto.freeze();
    let t = Instant::now();
    let r = guard.recv_timeout(HANG);
    let took = t.elapsed();
    moto.thaw();
    match r {
        Ok(r) => (r, took),
        Err(_) => {
            let r = guard.recv().expect("guard's run");
            panic!("guard was still waiting on the stopped server after {HANG:?} (it then went on once the server was resumed): {r:?}");
        }
    }
}

/// The keys listed under the line of `text` that contains `heading`, one per line, indented.
fn named_under(text: &str, heading: &str) -> Vec<String> {
    text.lines()
        .skip_while(|l| !l.contains(heading))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .map(|l| l.trim().split(": ").next().unwrap().to_string())
        .collect()
}

#[test]
fn a_stalled_server_fails_the_snapshot_within_the_bound_and_runs_nothing() {
    let (e, c) = art_env(300, "");
    let marker = e.env.path("command-ran");
    let mut cmd = e.cmd(&["--", "sh", "-c", &format!("touch {}", marker.display())]);
    short_limits(&mut cmd).env("GUARD_S3_CONCURRENCY", "1");
    let guard = spawn(cmd);
    until("guard copies", || keys(&c, CLONES, "guard/").len() >= 5);
    let (r, took) = freeze_until_guard_ends(&e.moto, guard);
    eprintln!("snapshot against a stopped server: guard exited {took:.1?} after SIGSTOP");
    assert_eq!(r.code, 69, "{r:?}");
    assert!(!marker.exists(), "the command must not run without a snapshot");
    assert!(
        r.stderr.contains("snapshot of target images failed") && r.stderr.contains("did not answer in time"),
        "says what happened: {r:?}"
    );
    let l = e.guard(&["list", "--json"]);
    assert_eq!(
        serde_json::from_str::<Value>(&l.stdout).unwrap()["snapshots"],
        serde_json::json!([]),
        "the partial snapshot was discarded: {l:?}"
    );
}

#[test]
fn a_server_stalling_during_the_restore_gives_exit_80_naming_what_was_not_restored() {
    let (e, c) = art_env(200, "");
    let before = bucket_state(&c, SRC);
    let state = e.env.path("before-command.json");
    let restoring = e.env.path("restoring");
    let mut cmd = e.cmd(&["--json", "--"]);
    cmd.args(e.migrate("wipe")).arg(&state);
    short_limits(&mut cmd)
        .env("GUARD_S3_CONCURRENCY", "1")
        .env("GUARD_TEST_PAUSE", "restoring")
        .env("GUARD_TEST_PAUSE_SECS", "1")
        .env("GUARD_TEST_PAUSE_FILE", &restoring);
    let guard = spawn(cmd);
    // The migration emptied the bucket, the rescue snapshot is taken, and the restore is
    // putting objects back.
    until("guard enters its restore", || restoring.exists());
    until("the restore puts objects back", || keys(&c, SRC, "").len() >= 20);
    let (r, took) = freeze_until_guard_ends(&e.moto, guard);
    eprintln!("restore against a stopped server: guard exited {took:.1?} after SIGSTOP");
    assert_eq!(r.code, 80, "{r:?}");
    assert!(r.stderr.contains("the S3 server stopped answering"), "{r:?}");
    let not_restored = named_under(&r.stderr, "were not restored (or not confirmed):");
    assert!(!not_restored.is_empty(), "{r:?}");
    // Honest: every object missing now is among those named (objects in flight when the
    // server stopped may have made it).
    let now: std::collections::HashSet<String> = keys(&c, SRC, "").into_iter().collect();
    let missing: Vec<&String> = before.keys().filter(|k| !now.contains(*k)).collect();
    assert!(!missing.is_empty() && missing.len() < before.len(), "{missing:?}");
    for k in &missing {
        assert!(
            not_restored.contains(k),
            "{k} is not back, and guard did not say so: {r:?}"
        );
    }
    // Once the server answers again, restoring the pre-run snapshot brings everything back.
    let id = json(&r)["snapshot_id"].as_str().unwrap().to_string();
    let again = e.guard(&["restore", &id, "--yes", "--no-rescue"]);
    assert_eq!(again.code, 0, "{again:?}");
    let d = diff_states(&before, &bucket_state(&c, SRC));
    assert!(d.is_empty(), "{d:?}");
}

#[test]
fn a_stalled_s3_store_fails_the_snapshot_within_the_bound_and_runs_nothing() {
    let e = S3Env::new(Moto::start());
    sqlite_env(&e);
    let marker = e.env.path("command-ran");
    let paused = e.env.path("paused");
    let mut cmd = e.cmd(&["--", "sh", "-c", &format!("touch {}", marker.display())]);
    short_limits(&mut cmd)
        .env("GUARD_TEST_PAUSE", "snapshotting")
        .env("GUARD_TEST_PAUSE_SECS", "2")
        .env("GUARD_TEST_PAUSE_FILE", &paused);
    let guard = spawn(cmd);
    // The run's journal is in the store; the snapshot's upload starts when the pause ends.
    until("guard pauses before its snapshot", || paused.exists());
    let (r, took) = freeze_until_guard_ends(&e.moto, guard);
    eprintln!("snapshot into a stopped S3 store: guard exited {took:.1?} after SIGSTOP");
    assert_eq!(r.code, 69, "{r:?}");
    assert!(!marker.exists(), "the command must not run without a snapshot");
    assert!(
        r.stderr.contains("s3://guard-store/prod") && r.stderr.contains("did not answer in time"),
        "says what happened: {r:?}"
    );
    let l = e.guard(&["list", "--json"]);
    assert_eq!(l.code, 0, "{l:?}");
    assert_eq!(
        serde_json::from_str::<Value>(&l.stdout).unwrap()["snapshots"],
        serde_json::json!([]),
        "no complete snapshot: {l:?}"
    );
}

/// An `s3://` store that cannot be reached (nothing listens at the endpoint) is "the store is
/// unavailable" (exit 69, naming the store), not "bad usage or policy" (64, what it was): for
/// `list` and for a guarded run, which runs nothing.
#[test]
fn an_unreachable_s3_store_exits_69_naming_it_and_runs_nothing() {
    let env = Env::new();
    lending_db(&env.path("app.db"), 20);
    env.write(
        "guard.toml",
        "name = \"lending\"\nstore = \"s3://guard-store/prod\"\n\n[[target]]\nname = \"app\"\nkind = \"sqlite\"\npath = \"app.db\"\n",
    );
    // A port nothing listens on: bound, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let marker = env.path("command-ran");
    let run = |args: &[&str]| -> Run {
        let mut c = env.cmd(args);
        c.env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"))
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("XDG_CACHE_HOME", env.path("cache"))
            .env("GUARD_S3_CONNECT_TIMEOUT", "2");
        c.output().unwrap().into()
    };
    let l = run(&["list"]);
    assert_eq!(l.code, 69, "{l:?}");
    assert!(l.stderr.contains("s3://guard-store/prod"), "names the store: {l:?}");
    let r = run(&["--yes", "--", "touch", marker.to_str().unwrap()]);
    assert_eq!(r.code, 69, "{r:?}");
    assert!(!marker.exists(), "nothing ran");
}
