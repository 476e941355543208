//! `guard check` and `--dry-run`: the read-only preflight (issue 15, F10). It finds what a run
//! would stop on before the command — a missing file or table, a failing before-query, a policy
//! without targets, connected sessions — writes nothing (not even the store), and the example
//! policies in `policies/` pass it where their targets exist.

use crate::common::pg::Cluster;
use crate::common::*;
use std::path::Path;

/// Every file under `dir` with its bytes, to prove nothing was written.
fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            (
                e.path().strip_prefix(dir).unwrap().display().to_string(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn a_ready_policy_passes_and_nothing_is_written() {
    let env = lending_env("");
    let before = tree(env.dir.path());
    for args in [&["check"][..], &["--dry-run", "--", "true"][..]] {
        let r = env.guard(args);
        assert_eq!(r.code, 0, "{args:?}: {r:?}");
        for w in [
            "ok    target app: sqlite",
            "ok    target app: fingerprints of user, loan, payment: read (",
            "ok    target rent-history: dir",
            "ok    check \"cashback tables exist\": read after the command only",
            "backups: writable,",
        ] {
            assert!(r.stdout.contains(w), "{args:?} says {w:?}: {r:?}");
        }
        assert!(!env.path("backups").exists(), "the store is not even created");
        assert_eq!(tree(env.dir.path()), before, "{args:?} wrote nothing");
    }
    let r = env.guard(&["check", "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    assert!(v["items"].as_array().unwrap().iter().all(|i| i["ok"] == true), "{v}");
}

#[test]
fn what_a_run_would_stop_on_fails_check_and_dry_run_with_every_problem_named() {
    // Before: --dry-run passed all of these with exit 0; the real run stopped with 69.
    let env = lending_env(
        r#"
[[check]]
name = "users unchanged"
target = "app"
sql = "SELECT count(*) FROM usr"
expect = "unchanged"

[[check]]
name = "typo untouched"
target = "app"
untouched = ["usr"]
"#,
    );
    let before = dump(&db(&env));
    for args in [&["check"][..], &["--dry-run", "--", "touch", "ran"][..]] {
        let r = env.guard(args);
        assert_eq!(r.code, 69, "{args:?}: {r:?}");
        assert!(r.stdout.contains("FAIL  check \"users unchanged\""), "{r:?}");
        assert!(r.stdout.contains("no such table: usr"), "{r:?}");
        assert!(
            r.stdout
                .contains("FAIL  target app: fingerprints of user, loan, payment, usr"),
            "{r:?}"
        );
        assert!(r.stderr.contains("preflight: 2 problems"), "{r:?}");
        assert!(!env.path("ran").exists() && !env.path("backups").exists());
    }
    assert_eq!(dump(&db(&env)), before);
    // The real run stops there too, with the same code.
    let r = env.guard(&["--", "touch", "ran"]);
    assert_eq!(r.code, 69, "{r:?}");
    assert!(!env.path("ran").exists());

    // A missing database file.
    std::fs::remove_file(db(&env)).unwrap();
    let r = env.guard(&["check"]);
    assert_eq!(r.code, 69, "{r:?}");
    assert!(r.stdout.contains("FAIL  target app:"), "{r:?}");

    // A policy with no target: 64, as the run says.
    let env = Env::new();
    env.write("guard.toml", "name = \"empty\"\nstore = \"backups\"\n");
    for args in [&["check"][..], &["--dry-run", "--", "true"][..]] {
        let r = env.guard(args);
        assert_eq!(r.code, 64, "{args:?}: {r:?}");
        assert!(r.stdout.contains("names no target"), "{r:?}");
    }
}

#[test]
fn a_store_that_cannot_be_written_fails_the_preflight() {
    // A store path that is a file.
    let env = lending_env("");
    env.write("backups", "not a directory\n");
    let r = env.guard(&["check"]);
    assert_eq!(r.code, 69, "{r:?}");
    assert!(
        r.stdout.contains("FAIL  store ") && r.stdout.contains("backups is not a directory"),
        "{r:?}"
    );
    if unsafe { libc::geteuid() } == 0 {
        return; // root writes into a 0555 directory
    }
    let env = lending_env("");
    std::fs::create_dir(env.path("ro")).unwrap();
    std::fs::set_permissions(env.path("ro"), std::os::unix::fs::PermissionsExt::from_mode(0o555)).unwrap();
    let text = std::fs::read_to_string(env.path("guard.toml")).unwrap();
    env.write(
        "guard.toml",
        &text.replace("store = \"backups\"", "store = \"ro/backups\""),
    );
    let r = env.guard(&["check"]);
    assert_eq!(r.code, 69, "{r:?}");
    assert!(r.stdout.contains("cannot be written"), "{r:?}");
}

/// The example policies pass `guard check` against targets modelled on their seeds.
#[test]
fn the_example_policies_pass_guard_check_where_their_targets_exist() {
    let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");

    // lending-prod (seed 001): the SQLite app and its rent history beside the policy.
    let env = Env::new();
    lending_db(&env.path("instances/prod/database/lending_app_prod.db"), 20);
    env.write("data/rent_history/2025-01.json", "{\"rent\": 1200}\n");
    std::fs::copy(policies.join("lending-prod.toml"), env.path("lending-prod.toml")).unwrap();
    let r = env.guard(&["--policy", "lending-prod.toml", "check"]);
    assert_eq!(r.code, 0, "lending-prod: {r:?}");

    // rent-data (seed 000): the Prisma rent database on a throwaway cluster.
    let cluster = Cluster::start();
    cluster.createdb("rent");
    cluster.psql("rent", crate::postgres::RENT_SCHEMA);
    let env = Env::new();
    std::fs::copy(policies.join("rent-data.toml"), env.path("rent-data.toml")).unwrap();
    let r: Run = env
        .cmd(&["--policy", "rent-data.toml", "check"])
        .env("DATABASE_URL", cluster.url("rent"))
        .output()
        .unwrap()
        .into();
    assert_eq!(r.code, 0, "rent-data: {r:?}");
    assert!(
        r.stdout.contains("pg_dump, pg_restore, psql "),
        "tool versions named: {r:?}"
    );
    assert!(
        r.stdout.contains("check \"ledger entries kept\": before value \"31\""),
        "{r:?}"
    );
}
