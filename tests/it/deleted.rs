//! What the command deleted is part of the failed state. When a check names a path or table
//! the command removed, the rescue snapshot records it as absent (it never fails because of
//! it), and the restore puts every path and table back. Proven against the original: the tree
//! with the SHA-256 of every file, or the database's dump, before the command and after the
//! restore.

use crate::common::*;
use crate::files::{app_env, tree};
use std::collections::BTreeMap;

/// Seed 000's policy (docs/targets/dir.md): one `dir` target with `paths`, an `untouched` check
/// on the JSON directory.
const RENT_POLICY: &str = "name = \"rent\"\nstore = \"backups\"\n[[target]]\nname = \"files\"\nkind = \"dir\"\npaths = [\"data/rent_history\", \"electricity_bills_history.txt\"]\n\n[[check]]\nname = \"rent JSON untouched\"\ntarget = \"files\"\nuntouched = [\"data/rent_history/\"]\n";

/// The app directory without the store.
fn app(env: &Env) -> BTreeMap<String, String> {
    let mut t = tree(env.dir.path());
    t.retain(|p, _| !p.starts_with("backups"));
    t
}

/// Run `script` under guard with the seed-000 policy; assert the exit code, that the rescue was
/// kept and that the tree is back as it was.
fn deleted_and_restored(policy: &str, script: &str, code: i32) -> Env {
    let env = app_env(policy);
    let before = app(&env);
    let r = env.guard(&["--yes", "--", "sh", "-c", script]);
    assert_eq!(r.code, code, "{script}: {r:?}");
    assert!(r.stderr.contains("verified"), "{script}: restored and verified: {r:?}");
    assert_eq!(app(&env), before, "{script}: every path is back as it was");
    let snaps = snapshots(&env);
    let rescue = snaps
        .iter()
        .find(|s| s["kind"] == "rescue")
        .unwrap_or_else(|| panic!("{script}: a rescue snapshot: {snaps:?}"));
    let id = rescue["id"].as_str().unwrap();
    assert_eq!(env.guard(&["verify", id]).code, 0, "{script}: the rescue verifies");
    env
}

/// The bug (session 3): `rm -r data/rent_history; exit 3` made the rescue fail ("… is not among
/// its files"), nothing was restored, exit 80.
#[test]
fn a_directory_the_command_deletes_under_an_untouched_check_is_restored() {
    let env = deleted_and_restored(RENT_POLICY, "rm -r data/rent_history; exit 3", 3);
    // The rescue holds the failed state: the bills file, no JSON directory, and restoring it
    // brings that state back exactly (the deleted directory deleted again).
    let rescue = snapshots(&env).iter().find(|s| s["kind"] == "rescue").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let before = app(&env);
    let r = env.guard(&["restore", &rescue, "--yes", "--no-rescue"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        !env.path("data/rent_history").exists(),
        "the rescue's state: no JSON directory"
    );
    let mut expect = before.clone();
    expect.retain(|p, _| !p.starts_with("data/rent_history"));
    assert_eq!(app(&env), expect);
    let m: serde_json::Value = serde_json::from_str(&env.guard(&["show", &rescue, "--json"]).stdout).unwrap();
    let fp = &m["targets"][0]["fingerprints"]["data/rent_history/"];
    assert_eq!(fp["rows"], 0, "the deleted directory is recorded with no files: {m}");
    assert_eq!(fp["absent"], true, "and as absent: {m}");
}

#[test]
fn a_file_the_command_deletes_is_restored() {
    deleted_and_restored(RENT_POLICY, "rm electricity_bills_history.txt; exit 3", 3);
    // The file named by the check itself.
    let policy = RENT_POLICY.replace(
        "untouched = [\"data/rent_history/\"]",
        "untouched = [\"data/rent_history/\", \"electricity_bills_history.txt\"]",
    );
    deleted_and_restored(&policy, "rm electricity_bills_history.txt; exit 3", 3);
}

#[test]
fn both_paths_the_command_deletes_are_restored() {
    let env = deleted_and_restored(
        RENT_POLICY,
        "rm -r data/rent_history electricity_bills_history.txt; exit 3",
        3,
    );
    // The rescue recorded the target absent; restoring it deletes both again, and verifies.
    let rescue = snapshots(&env).iter().find(|s| s["kind"] == "rescue").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut expect = app(&env);
    expect.retain(|p, _| !(p.starts_with("data/rent_history") || p == "electricity_bills_history.txt"));
    let r = env.guard(&["restore", &rescue, "--yes", "--no-rescue"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(app(&env), expect, "the failed state: both paths gone");
}

/// The command succeeds but deleted what the check names: the check fails, and the restore
/// brings it back (exit 79).
#[test]
fn a_successful_command_that_deleted_a_checked_path_fails_the_check_and_restores() {
    deleted_and_restored(RENT_POLICY, "rm -r data/rent_history", 79);
    deleted_and_restored(RENT_POLICY, "rm data/rent_history/2025_03_v1.json", 79);
    // A single-directory target whose check names a subdirectory the command removed.
    let env = Env::new();
    env.write("data/json/a.json", "{\"a\": 1}\n");
    env.write("data/json/b.json", "{\"b\": 2}\n");
    env.write("data/bills.txt", "2025-08 1420\n");
    env.write(
        "guard.toml",
        "name = \"one\"\nstore = \"backups\"\n[[target]]\nname = \"data\"\nkind = \"dir\"\npath = \"data\"\n\n[[check]]\nname = \"json untouched\"\ntarget = \"data\"\nuntouched = [\"json\"]\n",
    );
    let before = app(&env);
    let r = env.guard(&["--yes", "--", "sh", "-c", "rm -r data/json"]);
    assert_eq!(r.code, 79, "{r:?}");
    assert_eq!(app(&env), before);
}

// ---- SQLite: a table the migration dropped (seed 001's loan-splitting rebuild) ----

/// The rescue of a database whose checked table the command dropped is a consistent copy
/// (not a raw copy of the bytes "because SQLite could not copy it"), recording the table as
/// absent; the restore brings the table back (dump equal). Two ways: the rebuild dies between
/// DROP TABLE and the rename (exit 1), or never renames and exits 0 (the check fails, 79).
#[test]
fn a_sqlite_table_the_migration_dropped_is_recorded_absent_and_restored() {
    use crate::checks::{check, guarded, json, loan_env, loan_splitting};
    for (bug, code) in [("crash", 1), ("unrenamed", 79)] {
        let env = loan_env();
        let before = dump(&db(&env));
        let r = guarded(&env, &["--json"], &loan_splitting(&env, Some(bug)));
        assert_eq!(r.code, code, "{bug}: {r:?}");
        let v = json(&r);
        assert_eq!(v["outcome"], "restored", "{bug}: {v}");
        assert_eq!(dump(&db(&env)), before, "{bug}: restored exactly");
        if code == 79 {
            let c = check(&v, "existing data untouched");
            assert_eq!(c["passed"], false, "{bug}: {v}");
            assert!(c["detail"].as_str().unwrap().contains("payment"), "{bug}: {v}");
        }
        let rescue = v["rescue_id"].as_str().expect("a rescue").to_string();
        let m: serde_json::Value = serde_json::from_str(&env.guard(&["show", &rescue, "--json"]).stdout).unwrap();
        let t = &m["targets"][0];
        assert!(
            t["meta"].get("raw_copy").is_none(),
            "{bug}: a consistent copy, not raw bytes: {m}"
        );
        assert_eq!(t["fingerprints"]["payment"]["absent"], true, "{bug}: {m}");
        assert_eq!(t["fingerprints"]["payment_new"]["rows"], 150, "{bug}: {m}");
        assert_eq!(
            env.guard(&["verify", &rescue]).code,
            0,
            "{bug}: the rescue verifies deep"
        );
        // Restoring the rescue brings back the failed state, and verifies it (the table absent).
        let r = env.guard(&["restore", &rescue, "--yes", "--no-rescue"]);
        assert_eq!(r.code, 0, "{bug}: {r:?}");
        assert_eq!(
            count(&db(&env), "SELECT count(*) FROM sqlite_master WHERE name = 'payment'"),
            0,
            "{bug}"
        );
        assert_eq!(count(&db(&env), "SELECT count(*) FROM payment_new"), 150, "{bug}");
    }
}

// ---- PostgreSQL: a table the migration dropped (seed 000's rent database) ----

/// seed 000's migration, broken: it replaces "RentLedger" by a new table and dies before the
/// rename. The rescue records the checked table as absent; the restore is exact (pg_dump).
#[test]
fn a_postgres_table_the_migration_dropped_is_recorded_absent_and_restored() {
    use crate::checks::{guard_psql, json, rent, rent_env, RENT_MIGRATION};
    let check =
        "\n[[check]]\nname = \"ledger untouched\"\ntarget = \"rent\"\nuntouched = [\"RentLedger\", \"Tenant\"]\n";
    let broken = format!(
        "{RENT_MIGRATION}\nCREATE TABLE \"RentLedger_new\" (LIKE \"RentLedger\" INCLUDING ALL);\nINSERT INTO \"RentLedger_new\" SELECT * FROM \"RentLedger\";\nDROP TABLE \"RentLedger\";\nSELECT 1/0;\n"
    );
    for (stop_on_error, code) in [(true, 3), (false, 79)] {
        let c = rent();
        let env = rent_env(check);
        let before = c.dump("rent");
        let r = guard_psql(&env, &c, &["--json"], &broken, stop_on_error);
        assert_eq!(r.code, code, "ON_ERROR_STOP={stop_on_error}: {r:?}");
        let v = json(&r);
        assert_eq!(v["outcome"], "restored", "{v}");
        assert_eq!(c.dump("rent"), before, "restored exactly (pg_dump)");
        let rescue = v["rescue_id"].as_str().expect("a rescue").to_string();
        let m: serde_json::Value = serde_json::from_str(&env.guard(&["show", &rescue, "--json"]).stdout).unwrap();
        assert_eq!(m["targets"][0]["fingerprints"]["RentLedger"]["absent"], true, "{m}");
        assert_eq!(m["targets"][0]["fingerprints"]["Tenant"]["rows"], 8, "{m}");
    }
}

/// A SQLite database file the command deleted (with its `-wal`): the rescue records the target
/// absent, the restore brings the database back (dump equal); with exit 0 the `untouched` check
/// fails (and creates no empty database in its place).
#[test]
fn a_sqlite_file_the_command_deleted_is_restored() {
    for (script, code) in [
        ("rm -f instances/prod/database/lending_app_prod.db*; exit 3", 3),
        ("rm -f instances/prod/database/lending_app_prod.db*", 79),
    ] {
        let env = lending_env("");
        let before = dump(&db(&env));
        let r = env.guard(&["--yes", "--json", "--", "sh", "-c", script]);
        assert_eq!(r.code, code, "{script}: {r:?}");
        let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        assert_eq!(v["outcome"], "restored", "{script}: {v}");
        assert_eq!(dump(&db(&env)), before, "{script}: restored exactly");
        let rescue = v["rescue_id"].as_str().expect("a rescue").to_string();
        let m: serde_json::Value = serde_json::from_str(&env.guard(&["show", &rescue, "--json"]).stdout).unwrap();
        assert_eq!(m["targets"][0]["absent"], true, "{script}: the file was gone: {m}");
    }
}
