//! PostgreSQL waits are bounded (issue 14 item 8; red-team finding 12): a session holding a
//! lock — running, or idle in a transaction — never makes guard wait for as long as it likes.
//! Real binary, throwaway clusters; each guard run is killed if it outlives a generous hang
//! limit, which turns a hang into a failure instead of a stuck suite (no timing is asserted).

use crate::common::pg::Cluster;
use crate::common::*;
use std::time::{Duration, Instant};

/// Far above guard's documented bounds (30 s lock waits), far below the 200 s the lock holders
/// below would hold their locks for.
const HANG: Duration = Duration::from_secs(150);

fn policy_env(extra_target: &str) -> Env {
    let env = Env::new();
    env.write(
        "guard.toml",
        &format!(
            "name = \"locks\"\nstore = \"backups\"\n\n[[target]]\nname = \"rent\"\nkind = \"postgres\"\nurl = \"${{DATABASE_URL}}\"\n{extra_target}\n"
        ),
    );
    env
}

/// `guard ARGS` on database `rent`, killed (and the test failed) if it runs past [`HANG`].
fn guard_bounded(env: &Env, cluster: &Cluster, args: &[&str]) -> Run {
    let mut cmd = env.cmd(args);
    cmd.env("DATABASE_URL", cluster.url("rent"))
        .env("PGHOST", cluster.sock())
        .env("PGPORT", cluster.port.to_string())
        .env("PGUSER", "postgres")
        .env("PGDATABASE", "rent")
        .env("PSQL", cluster.bin.join("psql"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().expect("run guard");
    let pid = child.id();
    let started = Instant::now();
    let watchdog = std::thread::spawn(move || {
        while started.elapsed() < HANG {
            std::thread::sleep(Duration::from_millis(200));
            // Still running? (kill -0)
            if unsafe { libc::kill(pid as i32, 0) } != 0 {
                return false;
            }
        }
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        true
    });
    let out = child.wait_with_output().expect("wait for guard");
    let hung = watchdog.join().unwrap();
    let r: Run = out.into();
    assert!(!hung, "guard hung for {HANG:?} and was killed: {r:?}");
    if std::env::var_os("GUARD_TEST_SHOW").is_some() {
        eprintln!("{r:?}");
    }
    r
}

fn rent_cluster() -> Cluster {
    let c = Cluster::start();
    c.createdb("rent");
    c.psql(
        "rent",
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 1000) g;
         CREATE TABLE t2 (id int PRIMARY KEY); INSERT INTO t2 SELECT generate_series(1, 10);",
    );
    c
}

/// A migration that changes `t` and leaves two sessions behind, in their own sessions (setsid,
/// so nothing that ends the command's process group ends them): one running `pg_sleep(200)`
/// inside a transaction holding `ACCESS EXCLUSIVE` on `t` (red-team finding 12's
/// reproduction), one idle in a transaction holding it on `t2`. It returns once both locks are
/// granted, then fails.
const LEAVE_LOCKS: &str = r#"#!/bin/sh
set -e
"$PSQL" -X -q -c "UPDATE t SET v = 'LOCKED'"
setsid -f "$PSQL" -X -q -c "BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(200); COMMIT;" >/dev/null 2>&1
setsid -f sh -c '(echo "BEGIN; LOCK TABLE t2 IN ACCESS EXCLUSIVE MODE;"; sleep 200) | "$PSQL" -X -q' >/dev/null 2>&1
n=0
while [ "$("$PSQL" -X -A -t -c "SELECT count(*) FROM pg_locks WHERE mode = 'AccessExclusiveLock' AND granted AND relation IN ('t'::regclass, 't2'::regclass)")" != 2 ]; do
    n=$((n + 1)); [ $n -lt 200 ] || { echo "locks never granted" >&2; exit 99; }
    sleep 0.1
done
exit 1
"#;

/// The sessions [`LEAVE_LOCKS`] left on `rent` that are still there.
fn lock_holders(cluster: &Cluster) -> String {
    cluster.psql(
        "postgres",
        "SELECT count(*) FROM pg_stat_activity WHERE datname = 'rent' AND (query LIKE 'LOCK TABLE%' OR query LIKE 'BEGIN; LOCK TABLE%')",
    )
}

/// `sessions = "terminate"`: the sessions that block the rescue snapshot and the restore —
/// the active one and the idle-in-transaction one — are terminated, named, and the database
/// is restored.
#[test]
fn sessions_holding_locks_after_the_command_are_terminated_and_the_restore_runs() {
    let cluster = rent_cluster();
    let env = policy_env("sessions = \"terminate\"");
    let before = cluster.dump("rent");
    let mig = env.write("mig.sh", LEAVE_LOCKS);
    std::fs::set_permissions(&mig, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let r = guard_bounded(&env, &cluster, &["--yes", "--", mig.to_str().unwrap()]);
    assert_eq!(r.code, 1, "the command's exit code, after the restore: {r:?}");
    assert!(r.stderr.contains("restored rent"), "{r:?}");
    assert!(
        r.stderr.contains("terminated")
            && r.stderr.contains("pg_sleep(200)")
            && r.stderr.contains("idle in transaction"),
        "names the sessions it terminated: {r:?}"
    );
    assert_eq!(cluster.dump("rent"), before, "the database is back");
    assert_eq!(lock_holders(&cluster), "0", "both lock holders are gone");
}

/// `sessions = "refuse"` (the default): a lock left behind is a clear error within the bound —
/// naming the session that holds it and what to do — not a wait for as long as it is held.
/// Nothing is restored (the restore would have to end that session), and guard says so.
#[test]
fn with_sessions_refuse_a_lock_left_behind_is_a_clear_error_within_the_bound() {
    let cluster = rent_cluster();
    let env = policy_env("");
    let mig = env.write("mig.sh", LEAVE_LOCKS);
    std::fs::set_permissions(&mig, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let r = guard_bounded(&env, &cluster, &["--yes", "--", mig.to_str().unwrap()]);
    assert_eq!(r.code, 80, "{r:?}");
    assert!(
        r.stderr.contains("pg_sleep(200)") && r.stderr.contains("pid "),
        "names the session holding the lock: {r:?}"
    );
    assert!(r.stderr.contains("sessions = \"terminate\""), "says what to do: {r:?}");
    assert!(r.stderr.contains("nothing was restored"), "{r:?}");
    assert_eq!(lock_holders(&cluster), "2", "the sessions were left alone");
}

/// A lock the app holds before the command: the pre-run snapshot gives up within the bound,
/// naming the session, and the command never runs (exit 69).
#[test]
fn a_lock_held_before_the_command_stops_the_run_within_the_bound() {
    let cluster = rent_cluster();
    let env = policy_env("sessions = \"terminate\"");
    let mut holder = cluster
        .client("psql", "rent")
        .env("PGAPPNAME", "rent-batch")
        .args([
            "-X",
            "-q",
            "-c",
            "BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(200); COMMIT;",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while cluster.psql(
        "rent",
        "SELECT count(*) FROM pg_locks WHERE mode = 'AccessExclusiveLock' AND granted AND relation = 't'::regclass",
    ) != "1"
    {
        assert!(Instant::now() < deadline, "the lock was never granted");
        std::thread::sleep(Duration::from_millis(100));
    }
    let marker = env.path("ran");
    let r = guard_bounded(&env, &cluster, &["--yes", "--", "touch", marker.to_str().unwrap()]);
    assert_eq!(r.code, 69, "{r:?}");
    assert!(!marker.exists(), "the command never ran");
    assert!(
        r.stderr.contains("rent-batch") && r.stderr.contains("lock"),
        "names the session holding the lock: {r:?}"
    );
    assert!(
        holder.try_wait().unwrap().is_none(),
        "before the command, guard ends no session"
    );
    let _ = holder.kill();
}
