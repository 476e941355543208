//! PostgreSQL `snapshot = "clone"` (issue 17): the restore by rename, and the dump written
//! from the frozen clone while the command runs (docs/targets/postgres.md, "Clones").

use crate::common::pg::Cluster;
use crate::common::*;

const SHOP: &str = r#"
CREATE ROLE shop_owner;
CREATE ROLE shop_app;
CREATE TABLE item (id int PRIMARY KEY, name text NOT NULL, price numeric);
INSERT INTO item SELECT g, 'item ' || g, g * 1.5 FROM generate_series(1, 500) g;
COMMENT ON DATABASE shop IS 'the shop';
ALTER DATABASE shop SET work_mem = '8MB';
ALTER ROLE shop_app IN DATABASE shop SET search_path = public;
GRANT CONNECT, TEMPORARY ON DATABASE shop TO shop_app;
REVOKE TEMPORARY ON DATABASE shop FROM PUBLIC;
ALTER DATABASE shop OWNER TO shop_owner;
"#;

/// The database-level state a dump leaves out: owner, comment, ACL, settings.
fn db_state(c: &Cluster) -> String {
    c.psql(
        "postgres",
        "SELECT pg_get_userbyid(d.datdba) || ' | ' || coalesce(shobj_description(d.oid, 'pg_database'), '') || ' | ' || coalesce(d.datacl::text, '') || ' | ' || d.datallowconn || ' | ' ||
                (SELECT string_agg(coalesce(r.rolname, '-') || '=' || array_to_string(s.setconfig, ','), ';' ORDER BY r.rolname NULLS FIRST)
                   FROM pg_db_role_setting s LEFT JOIN pg_roles r ON r.oid = s.setrole WHERE s.setdatabase = d.oid)
           FROM pg_database d WHERE d.datname = 'shop'",
    )
}

fn guard_dbs(c: &Cluster) -> String {
    c.psql(
        "postgres",
        "SELECT string_agg(datname, ',') FROM pg_database WHERE datname LIKE 'guard_%'",
    )
}

fn shop_env(c: &Cluster, extra: &str) -> Env {
    let env = Env::new();
    env.write(
        "guard.toml",
        &format!(
            "name = \"shop\"\nstore = \"backups\"\n[[target]]\nname = \"shop\"\nkind = \"postgres\"\nurl = \"{}\"\nsnapshot = \"clone\"\n{extra}\n",
            c.url("shop")
        ),
    );
    env
}

/// `-- psql -c S1 -c S2 …`: each statement its own transaction.
fn psql_cmd(c: &Cluster, sql: &str) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "--".into(),
        c.bin.join("psql").display().to_string(),
        "-X".into(),
        "-v".into(),
        "ON_ERROR_STOP=1".into(),
    ];
    for s in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        v.push("-c".into());
        v.push(s.into());
    }
    v
}

fn run_with_pg(env: &Env, c: &Cluster, args: &[String]) -> Run {
    let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    env.cmd(&a)
        .env("PGHOST", c.sock())
        .env("PGPORT", c.port.to_string())
        .env("PGUSER", "postgres")
        .env("PGDATABASE", "shop")
        .output()
        .unwrap()
        .into()
}

/// A cluster with database `shop` (the [`SHOP`] schema), then `sql` run on `postgres`.
fn shop_cluster(sql: &str) -> Cluster {
    let c = Cluster::start();
    c.createdb("shop");
    c.psql("shop", SHOP);
    if !sql.is_empty() {
        c.psql("postgres", sql);
    }
    c
}

/// A clone run of `sql` that fails (it ends with `SELECT 1/0`): exit 1, `shop` back by the
/// clone's rename exactly as it was (`pg_dump`, and its owner, comment, ACL and settings), no
/// clone or set-aside database left. `why` says what the case is about.
fn failed_run_comes_back_by_rename(c: &Cluster, env: &Env, sql: &str, why: &str) -> Run {
    let (before, state) = (c.dump("shop"), db_state(c));
    let r = run_with_pg(env, c, &psql_cmd(c, &format!("{sql}; SELECT 1/0;")));
    assert_eq!(r.code, 1, "{why}: {r:?}");
    assert!(r.stderr.contains("clone renamed into place"), "{why}: {r:?}");
    assert_eq!(c.dump("shop"), before, "{why}: the database came back exactly");
    assert_eq!(db_state(c), state, "{why}: owner, comment, ACL and settings came back");
    assert_eq!(guard_dbs(c), "", "{why}: no clone or set-aside database is left");
    r
}

#[test]
fn postgres_clone_restores_by_rename_with_the_database_state_and_rescues_the_failed_one() {
    let c = shop_cluster("");
    let env = shop_env(&c, "");
    let before = c.dump("shop");
    let state = db_state(&c);
    let oid_before = c.psql("postgres", "SELECT oid FROM pg_database WHERE datname = 'shop'");

    // The migration changes data, the database's comment and ACL, then fails.
    let r = run_with_pg(
        &env,
        &c,
        &psql_cmd(
            &c,
            "DELETE FROM item WHERE id > 100; COMMENT ON DATABASE shop IS 'changed'; GRANT CREATE ON DATABASE shop TO shop_app; SELECT 1/0;",
        ),
    );
    assert_eq!(r.code, 1, "psql's own exit code passes through: {r:?}");
    assert!(
        r.stderr.contains("clone renamed into place"),
        "restored by rename: {r:?}"
    );
    assert_eq!(c.dump("shop"), before, "the database came back exactly");
    assert_eq!(db_state(&c), state, "owner, comment, ACL and settings came back");
    assert_ne!(
        c.psql("postgres", "SELECT oid FROM pg_database WHERE datname = 'shop'"),
        oid_before,
        "the live name names the clone now"
    );
    assert_eq!(guard_dbs(&c), "", "no clone or set-aside database is left");

    // The rescue snapshot holds the failed state: 100 items.
    let snaps = snapshots_pg(&env, &c);
    let rescue = snaps.iter().find(|s| s["kind"] == "rescue").expect("a rescue snapshot");
    let id = rescue["id"].as_str().unwrap().to_string();
    let back = run_with_pg(&env, &c, &["restore".into(), id, "--yes".into(), "--no-rescue".into()]);
    assert_eq!(back.code, 0, "{back:?}");
    assert_eq!(c.psql("shop", "SELECT count(*) FROM item"), "100");
}

fn snapshots_pg(env: &Env, c: &Cluster) -> Vec<serde_json::Value> {
    listed(&run_with_pg(env, c, &["list".into(), "--json".into()]))
}

#[test]
fn postgres_clone_kept_run_drops_the_clone_and_refused_sessions_fall_back_to_the_dump() {
    let c = shop_cluster("");
    let env = shop_env(&c, "");
    let r = run_with_pg(
        &env,
        &c,
        &psql_cmd(&c, "UPDATE item SET price = price + 1 WHERE id = 1;"),
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(guard_dbs(&c), "", "the clone is dropped once the run is kept");

    // Another session on the database and `sessions = "refuse"`: a restore would be refused, so
    // the run is refused before any snapshot (issue 15, F3): no clone, nothing run.
    let mut other = c
        .client("psql", "shop")
        .args(["-X", "-q", "-c", "SELECT pg_sleep(600)"])
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while c.psql("postgres", "SELECT count(*) FROM pg_stat_activity WHERE datname = 'shop' AND query LIKE '%pg_sleep%' AND pid <> pg_backend_pid()") != "1" {
        assert!(std::time::Instant::now() < deadline, "the other session never showed up");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let r = run_with_pg(&env, &c, &psql_cmd(&c, "UPDATE item SET price = 0;"));
    let _ = other.kill();
    let _ = other.wait();
    assert_eq!(r.code, 69, "{r:?}");
    assert!(r.stderr.contains("nothing was run"), "{r:?}");
    assert!(r.stderr.contains("1 other session on database shop"), "{r:?}");
    assert_ne!(
        c.psql("shop", "SELECT price FROM item WHERE id = 1"),
        "0",
        "the command did not run"
    );
    assert_eq!(guard_dbs(&c), "", "no clone was made");
}

#[test]
fn postgres_clone_sigkill_while_swapping_then_recover_brings_the_database_back() {
    for point in ["swapping", "pg-swap", "swapped"] {
        let c = Cluster::start();
        c.createdb("shop");
        c.psql("shop", SHOP);
        let env = shop_env(&c, "sessions = \"terminate\"");
        let before = c.dump("shop");
        let state = db_state(&c);
        let cmd = psql_cmd(&c, "DELETE FROM item WHERE id > 100; SELECT 1/0;");
        let a: Vec<&str> = cmd.iter().map(|s| s.as_str()).collect();
        let mut cmd = env.cmd(&a);
        cmd.env("PGHOST", c.sock())
            .env("PGPORT", c.port.to_string())
            .env("PGUSER", "postgres");
        let mut child = spawn_paused(cmd, point, &env.path("paused.pid"));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let status = run_with_pg(&env, &c, &["status".into(), "--json".into()]);
        assert_eq!(status.code, 82, "{point}: {status:?}");
        assert!(status.stdout.contains("\"swapping\""), "{point}: {status:?}");
        let r = run_with_pg(&env, &c, &["recover".into(), "--yes".into()]);
        assert_eq!(r.code, 0, "{point}: {r:?}");
        assert_eq!(c.dump("shop"), before, "{point}: the database is back");
        assert_eq!(db_state(&c), state, "{point}");
        let left = guard_dbs(&c);
        if point == "swapped" {
            // The failed database set aside is the only copy of that state: kept, and named.
            assert!(
                left.starts_with("guard_failed_") && !left.contains(','),
                "{point}: {left}"
            );
            assert!(r.stderr.contains(&left), "{point}: recover names it: {r:?}");
        } else {
            assert_eq!(left, "", "{point}: {r:?}");
        }
    }
}

// --- The dump written from the frozen clone while the command runs -------------------------
//
// `GUARD_TEST_HOLD=deferred-artifact` holds the deferred store write (pg_dump waiting on its
// pipe) until the file `GUARD_TEST_HOLD_RELEASE` exists or the command failed.

/// `guard ARGS` with the PostgreSQL client environment (psql commands reach `shop`).
fn pg_cmd(env: &Env, c: &Cluster, args: &[String]) -> std::process::Command {
    let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let mut cmd = env.cmd(&a);
    cmd.env("PGHOST", c.sock())
        .env("PGPORT", c.port.to_string())
        .env("PGUSER", "postgres")
        .env("PGDATABASE", "shop");
    cmd
}

/// [`pg_cmd`] with the deferred store write held until `release` exists.
fn held_pg(env: &Env, c: &Cluster, release: &str, args: &[String]) -> std::process::Command {
    let mut cmd = pg_cmd(env, c, args);
    cmd.env("GUARD_TEST_HOLD", "deferred-artifact")
        .env("GUARD_TEST_HOLD_RELEASE", env.path(release));
    cmd
}

fn sh(script: &str) -> Vec<String> {
    vec!["--".into(), "sh".into(), "-c".into(), script.into()]
}

/// (a), (b), (d): the command starts while nothing is in the store and pg_dump is connected to
/// the clone, which refuses the command's own connection; guard exits only once the manifest
/// and the dump are written and verified; that dump restores the pre-run database exactly.
#[test]
fn a_clone_run_starts_the_command_before_the_dump_which_is_verified_before_guard_exits() {
    let c = shop_cluster("");
    // More than pg_dump's output buffer and pipe hold (2 MiB): it is still connected, waiting
    // to write, while the command runs.
    c.psql(
        "shop",
        "CREATE TABLE stock AS SELECT g AS id, repeat(md5(g::text), 4) AS note FROM generate_series(1, 60000) g",
    );
    let env = shop_env(&c, "");
    let before = c.dump("shop");
    let state = db_state(&c);
    let psql = c.bin.join("psql").display().to_string();
    let script = format!(
        r#"set -e
clone=$({psql} -X -At -d postgres -c "SELECT datname FROM pg_database WHERE datname LIKE 'guard_hot_%'")
echo "clone=$clone" > seen
ls backups/snapshots/*/* >> seen 2>/dev/null || true
{psql} -X -At -d postgres -c "SELECT count(*) FROM pg_stat_activity WHERE datname = '$clone' AND application_name LIKE 'guard % pg_dump'" > dumping
if {psql} -X -d "$clone" -c 'SELECT 1' 2> refused; then echo CONNECTED >> refused; fi
{psql} -X -q -v ON_ERROR_STOP=1 -c 'UPDATE item SET price = price + 1'
touch go"#
    );
    let r: Run = held_pg(&env, &c, "go", &sh(&script)).output().unwrap().into();
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains("written into the store while the command runs"),
        "{r:?}"
    );
    // A clone is called one (not "hot copy", the SQLite and directory word).
    assert!(
        r.stderr.contains("clone verified") && r.stderr.contains("(the clone of shop;"),
        "{r:?}"
    );
    let seen = std::fs::read_to_string(env.path("seen")).unwrap();
    assert!(seen.starts_with("clone=guard_hot_"), "the clone existed: {seen}");
    assert_eq!(
        seen.lines().count(),
        1,
        "nothing was in the store while the command ran: {seen}"
    );
    assert_eq!(
        std::fs::read_to_string(env.path("dumping")).unwrap().trim(),
        "1",
        "pg_dump was connected to the clone while the command ran"
    );
    let refused = std::fs::read_to_string(env.path("refused")).unwrap();
    assert!(
        refused.contains("is not currently accepting connections") && !refused.contains("CONNECTED"),
        "the clone refused the command's connection: {refused}"
    );
    // guard exited: the snapshot is complete and verified, the clone dropped.
    let snaps = snapshots_pg(&env, &c);
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    assert_eq!(snaps[0]["kind"], "pre-run");
    let id = snaps[0]["id"].as_str().unwrap().to_string();
    assert_eq!(guard_dbs(&c), "", "the clone is dropped once its dump is verified");
    let v = run_with_pg(&env, &c, &["verify".into(), id.clone()]);
    assert_eq!(v.code, 0, "{v:?}");
    assert_ne!(c.dump("shop"), before, "the command's change is kept");
    let back = run_with_pg(&env, &c, &["restore".into(), id, "--yes".into(), "--no-rescue".into()]);
    assert_eq!(back.code, 0, "{back:?}");
    assert_eq!(
        c.dump("shop"),
        before,
        "the dump written during the command is the pre-run state"
    );
    assert_eq!(
        db_state(&c),
        state,
        "and so are the database's owner, comment, ACL and settings"
    );
}

/// (c): the command fails while the dump is still held: the restore swaps the clone in (ending
/// guard's own dump sessions on it first) without the dump, which is abandoned.
#[test]
fn a_command_failing_during_the_clone_dump_is_restored_by_rename_without_waiting_for_it() {
    let c = shop_cluster("");
    let env = shop_env(&c, "");
    let before = c.dump("shop");
    let state = db_state(&c);
    let cmd = psql_cmd(
        &c,
        "DELETE FROM item WHERE id > 100; COMMENT ON DATABASE shop IS 'changed'; REVOKE CONNECT ON DATABASE shop FROM PUBLIC; SELECT 1/0;",
    );
    let r: Run = held_pg(&env, &c, "never", &cmd).output().unwrap().into();
    assert_eq!(r.code, 1, "psql's own exit code passes through: {r:?}");
    assert!(r.stderr.contains("clone renamed into place"), "{r:?}");
    assert!(r.stderr.contains("its store artifact was still being written"), "{r:?}");
    assert_eq!(c.dump("shop"), before, "the database came back exactly");
    assert_eq!(
        db_state(&c),
        state,
        "with its owner, comment, ACL (CONNECT too) and settings"
    );
    assert_eq!(guard_dbs(&c), "", "no clone or set-aside database is left");
    let snaps = snapshots_pg(&env, &c);
    assert_eq!(snaps.len(), 1, "only the rescue snapshot: {snaps:?}");
    assert_eq!(snaps[0]["kind"], "rescue");
    let status = run_with_pg(&env, &c, &["status".into()]);
    assert_eq!(status.code, 0, "nothing needs attention: {status:?}");
}

/// The proof that the clone was not written: between its creation and its closing only guard's
/// role (or a superuser) can connect to it — a role with CONNECT on the live database cannot —
/// and a session found on it when it is closed makes the run drop the clone and take the dump
/// of the live database instead, saying why.
#[test]
fn a_session_reaching_the_clone_before_it_is_closed_makes_the_run_dump_the_live_database() {
    use std::time::{Duration, Instant};
    let c = shop_cluster("");
    c.psql("postgres", "CREATE ROLE shop_login LOGIN");
    let env = shop_env(&c, "");
    let before = c.dump("shop");
    let pause = env.path("paused.pid");
    let err = std::fs::File::create(env.path("guard.err")).unwrap();
    let mut guard = pg_cmd(&env, &c, &psql_cmd(&c, "DELETE FROM item; SELECT 1/0;"))
        .env("GUARD_TEST_PAUSE", "pg-clone-open")
        .env("GUARD_TEST_PAUSE_FILE", &pause)
        .env("GUARD_TEST_PAUSE_RELEASE", env.path("release"))
        .stdout(std::process::Stdio::null())
        .stderr(err)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !pause.exists() {
        assert!(guard.try_wait().unwrap().is_none(), "guard finished first");
        assert!(Instant::now() < deadline, "never reached pg-clone-open");
        std::thread::sleep(Duration::from_millis(20));
    }
    let clone = guard_dbs(&c);
    assert!(clone.starts_with("guard_hot_") && !clone.contains(','), "{clone}");
    // shop_login may connect to shop (PUBLIC has CONNECT there), not to the clone.
    let denied = c
        .client("psql", &clone)
        .env("PGUSER", "shop_login")
        .args(["-X", "-c", "SELECT 1"])
        .output()
        .unwrap();
    assert!(!denied.status.success());
    let denied = String::from_utf8_lossy(&denied.stderr).to_string();
    assert!(denied.contains("permission denied for database"), "{denied}");
    let shop = c
        .client("psql", "shop")
        .env("PGUSER", "shop_login")
        .args(["-X", "-c", "SELECT 1"])
        .output()
        .unwrap();
    assert!(shop.status.success(), "shop_login can connect to the live database");
    // A superuser can, and stays connected.
    let mut intruder = c
        .client("psql", &clone)
        .args(["-X", "-q", "-c", "SELECT pg_sleep(600)"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let seen = format!("SELECT count(*) FROM pg_stat_activity WHERE datname = '{clone}' AND query LIKE '%pg_sleep%' AND pid <> pg_backend_pid()");
    while c.psql("postgres", &seen) != "1" {
        assert!(Instant::now() < deadline, "the intruder never showed up");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::write(env.path("release"), "").unwrap();
    let code = guard.wait().unwrap().code();
    let stderr = std::fs::read_to_string(env.path("guard.err")).unwrap();
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("another session reached the clone") && stderr.contains("the clone was dropped"),
        "{stderr}"
    );
    assert!(stderr.contains("decompresses the snapshot from the store"), "{stderr}");
    assert_eq!(c.dump("shop"), before, "restored from the dump of the live database");
    assert_eq!(guard_dbs(&c), "", "the clone is gone");
    let ended = intruder.wait().unwrap();
    assert!(!ended.success(), "guard ended the intruding session");
}

/// SIGKILL while the dump is still being written from the clone, in every phase that can
/// happen in: `status` says where the pre-run state is (the clone), and `recover` renames it
/// back, ending what is left of guard's dump sessions, and drops nothing it needs.
#[test]
fn sigkill_while_the_clone_dump_is_written_then_recover_renames_the_clone_back() {
    let c = shop_cluster("");
    let before = c.dump("shop");
    let state = db_state(&c);
    for point in ["command-running", "checking", "storing"] {
        let env = shop_env(&c, "");
        let pause = env.path("paused.pid");
        let cmd = held_pg(&env, &c, "never", &psql_cmd(&c, "DELETE FROM item WHERE id > 100;"));
        let mut child = spawn_paused(cmd, point, &pause);
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        assert!(snapshots_pg(&env, &c).is_empty(), "{point}: no complete snapshot");
        let status = run_with_pg(&env, &c, &["status".into(), "--json".into()]);
        assert_eq!(status.code, 82, "{point}: {status:?}");
        assert!(status.stdout.contains(&format!("\"{point}\"")), "{point}: {status:?}");
        assert!(
            status.stdout.contains("guard_hot_"),
            "{point}: names the clone: {status:?}"
        );
        let r = run_with_pg(&env, &c, &["recover".into(), "--yes".into()]);
        assert_eq!(r.code, 0, "{point}: {r:?}");
        assert!(r.stderr.contains("never reached the store"), "{point}: {r:?}");
        assert_eq!(c.dump("shop"), before, "{point}: the database is back");
        assert_eq!(db_state(&c), state, "{point}");
        assert_eq!(guard_dbs(&c), "", "{point}: {r:?}");
        let status = run_with_pg(&env, &c, &["status".into()]);
        assert_eq!(status.code, 0, "{point}: {status:?}");
    }
}

/// The checks' `untouched` fingerprints are read from the clone before the command (its dump may
/// not exist yet when they run): `@database` is the live database's own state, not the clone's
/// (whose CONNECT only guard's role holds), so an untouched database passes; a changed row fails
/// the check and the run restores by rename without waiting for the dump.
#[test]
fn untouched_checks_of_a_clone_run_compare_fingerprints_read_before_the_command() {
    let c = shop_cluster("");
    let checks = "\n[[check]]\nname = \"items and database untouched\"\ntarget = \"shop\"\nuntouched = [\"item\", \"@database\"]\n";
    let env = shop_env(&c, checks);
    let kept: Run = held_pg(
        &env,
        &c,
        "go",
        &sh(&format!(
            "{} -X -q -v ON_ERROR_STOP=1 -c 'CREATE TABLE log (x int)' -c 'INSERT INTO log VALUES (1)' && touch go",
            c.bin.join("psql").display()
        )),
    )
    .output()
    .unwrap()
    .into();
    assert_eq!(
        kept.code, 0,
        "item and the database-level state are untouched: {kept:?}"
    );
    assert!(
        kept.stderr
            .lines()
            .any(|l| l.contains("items and database untouched") && l.contains("pass")),
        "{kept:?}"
    );
    assert_eq!(c.psql("shop", "SELECT count(*) FROM log"), "1", "kept");
    let before = c.dump("shop");
    let state = db_state(&c);
    let r: Run = held_pg(
        &env,
        &c,
        "never",
        &psql_cmd(&c, "UPDATE item SET price = 0 WHERE id = 1;"),
    )
    .output()
    .unwrap()
    .into();
    assert_eq!(r.code, 79, "the check failed, restored: {r:?}");
    assert!(
        r.stderr
            .lines()
            .any(|l| l.contains("items and database untouched") && l.contains("FAIL")),
        "{r:?}"
    );
    assert!(r.stderr.contains("clone renamed into place"), "{r:?}");
    assert_eq!(c.dump("shop"), before, "the database came back exactly");
    assert_eq!(db_state(&c), state);
    assert_eq!(guard_dbs(&c), "");
}

/// The clone's dump failing after a kept run (here the command puts a directory where the
/// artifact goes): exit 83, the changes and the clone kept, new runs refused (82) until
/// `recover` renames the clone back (`pg_dump` equal) or `recover --keep` accepts and drops it.
#[test]
fn a_clone_dump_that_fails_after_a_kept_run_exits_83_and_keeps_the_clone_until_recover() {
    let c = shop_cluster("");
    let before = c.dump("shop");
    let state = db_state(&c);
    for keep in [false, true] {
        let env = shop_env(&c, "");
        let script = format!(
            "id=$(python3 -c \"import glob, json; print(json.load(open(glob.glob('backups/runs/*/journal.json')[0]))['snapshot_id'])\") && mkdir -p backups/snapshots/$id/shop.dump.gz && {} -X -q -c 'DELETE FROM item WHERE id > 100' && touch go",
            c.bin.join("psql").display()
        );
        let r: Run = held_pg(&env, &c, "go", &sh(&script)).output().unwrap().into();
        assert_eq!(r.code, 83, "{keep}: {r:?}");
        assert!(r.stderr.contains("its changes are kept"), "{r:?}");
        assert_eq!(
            c.psql("shop", "SELECT count(*) FROM item"),
            "100",
            "the changes are kept"
        );
        let clone = guard_dbs(&c);
        assert!(
            clone.starts_with("guard_hot_") && !clone.contains(','),
            "the clone is kept: {clone}"
        );
        assert!(snapshots_pg(&env, &c).is_empty(), "no complete snapshot");
        let refused = run_with_pg(&env, &c, &["--".into(), "true".into()]);
        assert_eq!(refused.code, 82, "{refused:?}");
        let mut args: Vec<String> = vec!["recover".into(), "--yes".into()];
        if keep {
            args.push("--keep".into());
        }
        let rec = run_with_pg(&env, &c, &args);
        assert_eq!(rec.code, 0, "{keep}: {rec:?}");
        if keep {
            assert_eq!(c.psql("shop", "SELECT count(*) FROM item"), "100", "accepted");
        } else {
            assert!(rec.stderr.contains("renamed into place"), "{rec:?}");
            assert_eq!(c.dump("shop"), before, "the clone brought the pre-run state back");
            assert_eq!(db_state(&c), state);
        }
        assert_eq!(guard_dbs(&c), "", "{keep}: the clone is gone: {rec:?}");
        let status = run_with_pg(&env, &c, &["status".into()]);
        assert_eq!(status.code, 0, "{keep}: {status:?}");
    }
}

/// The command fails after the clone's dump reached the store: the complete snapshot is kept
/// (and listed) and the restore still renames the clone in, ending no session of guard's (the
/// dump's are gone).
#[test]
fn a_command_failing_after_the_clone_dump_is_stored_keeps_the_snapshot_and_renames_the_clone_in() {
    let c = shop_cluster("");
    let env = shop_env(&c, "");
    let before = c.dump("shop");
    let state = db_state(&c);
    let script = format!(
        "for i in $(seq 600); do ls backups/snapshots/*/manifest.json >/dev/null 2>&1 && break; sleep 0.05; done; {} -X -q -c 'DELETE FROM item'; exit 4",
        c.bin.join("psql").display()
    );
    let r: Run = pg_cmd(&env, &c, &sh(&script)).output().unwrap().into();
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("clone renamed into place"), "{r:?}");
    assert!(
        !r.stderr.contains("still being written"),
        "the dump was stored first: {r:?}"
    );
    assert_eq!(c.dump("shop"), before);
    assert_eq!(db_state(&c), state);
    assert_eq!(guard_dbs(&c), "");
    let snaps = snapshots_pg(&env, &c);
    let pre = snaps
        .iter()
        .find(|s| s["kind"] == "pre-run")
        .expect("the pre-run snapshot is complete");
    assert!(snaps.iter().any(|s| s["kind"] == "rescue"), "{snaps:?}");
    let v = run_with_pg(&env, &c, &["verify".into(), pre["id"].as_str().unwrap().into()]);
    assert_eq!(v.code, 0, "{v:?}");
}

/// Not a superuser: a role with `CREATEDB` that owns its database gets the clone run too — it
/// restricts `CONNECT` on the clone to itself, ends its own dump sessions, and the swap puts
/// the live ACL back.
#[test]
fn a_clone_run_as_the_databases_owner_without_superuser_restores_by_rename() {
    let c = Cluster::start();
    c.psql("postgres", "CREATE ROLE app_owner LOGIN CREATEDB");
    c.psql("postgres", "CREATE DATABASE app OWNER app_owner");
    c.psql(
        "app",
        "SET ROLE app_owner; CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 1000) g; RESET ROLE; COMMENT ON DATABASE app IS 'the app'",
    );
    let before = c.dump("app");
    let acl = || {
        c.psql("postgres", "SELECT pg_get_userbyid(datdba) || ' ' || coalesce(datacl, acldefault('d', datdba))::text || ' ' || coalesce(shobj_description(oid, 'pg_database'), '') FROM pg_database WHERE datname = 'app'")
    };
    let state = acl();
    let env = Env::new();
    env.write(
        "guard.toml",
        &format!(
            "name = \"app\"\nstore = \"backups\"\n[[target]]\nname = \"app\"\nkind = \"postgres\"\nurl = \"postgres://app_owner@/app?host={}&port={}\"\nsnapshot = \"clone\"\n",
            c.sock().display(),
            c.port
        ),
    );
    let cmd = psql_cmd(&c, "DELETE FROM t WHERE id > 10; SELECT 1/0;");
    let args: Vec<&str> = std::iter::once("--yes").chain(cmd.iter().map(|s| s.as_str())).collect();
    let r: Run = env
        .cmd(&args)
        .env("PGHOST", c.sock())
        .env("PGPORT", c.port.to_string())
        .env("PGUSER", "app_owner")
        .env("PGDATABASE", "app")
        .output()
        .unwrap()
        .into();
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("clone renamed into place"), "{r:?}");
    assert_eq!(c.dump("app"), before, "the database came back exactly");
    // The ACL compared as in effect: one never set (NULL, the default) comes back written out.
    assert_eq!(acl(), state, "owner, ACL and comment too");
    assert_eq!(guard_dbs(&c), "");
}

/// The swap runs on a session guard opened before the command (issue 17: no connection after
/// the command's exit). A command that restarts the server ends that session too: the swap
/// opens a new one and the clone is still renamed in — the database back exactly, its state
/// too, nothing of guard's left.
#[test]
fn a_command_that_restarts_the_server_is_still_restored_by_rename() {
    let c = shop_cluster("");
    let env = shop_env(&c, "");
    let before = c.dump("shop");
    let state = db_state(&c);
    let psql = c.bin.join("psql").display().to_string();
    let sh = format!(
        "{} && '{psql}' -X -q -v ON_ERROR_STOP=1 -c 'DELETE FROM item WHERE id > 7' && exit 3",
        c.restart_sh()
    );
    let r = run_with_pg(&env, &c, &["--".into(), "sh".into(), "-c".into(), sh]);
    assert_eq!(r.code, 3, "{r:?}");
    assert!(
        r.stderr.contains("clone renamed into place"),
        "restored by rename: {r:?}"
    );
    assert_eq!(c.dump("shop"), before, "the database came back exactly");
    assert_eq!(db_state(&c), state, "owner, comment, ACL and settings came back");
    assert_eq!(guard_dbs(&c), "", "no clone or set-aside database is left");
}

/// The swap's one `DO` block recreates, `NOLOGIN`, a grantee of the live ACL that the command
/// dropped, before it puts the grants back: the ACL comes back as it was.
#[test]
fn a_clone_swap_recreates_a_grantee_the_command_dropped() {
    let c = shop_cluster("CREATE ROLE shop_ro LOGIN; GRANT CONNECT ON DATABASE shop TO shop_ro");
    let env = shop_env(&c, "");
    failed_run_comes_back_by_rename(
        &c,
        &env,
        "DELETE FROM item; REVOKE CONNECT ON DATABASE shop FROM shop_ro; DROP ROLE shop_ro",
        "the ACL names shop_ro again",
    );
    assert_eq!(
        c.psql("postgres", "SELECT rolcanlogin FROM pg_roles WHERE rolname = 'shop_ro'"),
        "f",
        "recreated NOLOGIN"
    );
}

/// A command may drop a role that held privileges on the database once it has revoked them
/// there: the clone must not hold them too (it did: `TEMPORARY` granted on the live database
/// was carried to the clone, so `DROP ROLE` failed — "privileges for database guard_hot_…" —
/// and a migration that succeeds without guard failed and was undone). The clone holds
/// `CONNECT` for guard's role only and no other privilege until the swap puts the live ACL
/// back.
#[test]
fn a_command_dropping_a_role_with_privileges_on_the_database_succeeds_on_a_clone_run() {
    let c = shop_cluster("");
    let env = shop_env(&c, "");
    let r = run_with_pg(
        &env,
        &c,
        &psql_cmd(
            &c,
            "REVOKE ALL ON DATABASE shop FROM shop_app; ALTER ROLE shop_app IN DATABASE shop RESET ALL; DROP ROLE shop_app;",
        ),
    );
    assert_eq!(r.code, 0, "the migration succeeds as it does without guard: {r:?}");
    assert_eq!(
        c.psql("postgres", "SELECT count(*) FROM pg_roles WHERE rolname = 'shop_app'"),
        "0",
        "dropped"
    );
    assert_eq!(guard_dbs(&c), "", "the clone is dropped once the run is kept");

    // A failed run still puts the whole live ACL back by rename (TEMPORARY included).
    c.psql(
        "postgres",
        "CREATE ROLE shop_tmp; GRANT TEMPORARY ON DATABASE shop TO shop_tmp",
    );
    failed_run_comes_back_by_rename(
        &c,
        &env,
        "DELETE FROM item; REVOKE TEMPORARY ON DATABASE shop FROM shop_tmp",
        "the ACL came back with TEMPORARY for shop_tmp",
    );
}

/// A role with settings in the database (`ALTER ROLE … IN DATABASE … SET`) but no privilege on
/// it, dropped by a command that then fails: the swap recreates it `NOLOGIN` (as a restore from
/// the dump does) and puts its settings back — the database is restored by rename, not left
/// as the command left it.
#[test]
fn a_clone_swap_recreates_a_role_with_settings_the_command_dropped() {
    let c = shop_cluster("CREATE ROLE reporter; ALTER ROLE reporter IN DATABASE shop SET work_mem = '64MB'");
    let env = shop_env(&c, "");
    failed_run_comes_back_by_rename(
        &c,
        &env,
        "DELETE FROM item; DROP ROLE reporter",
        "reporter's setting is back",
    );
}
