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

/// The S3 example policy (seed 004) passes `guard check` against moto: its image bucket (images
/// under `products/` and `originals/`), its clone bucket and its `s3://` store, with the policy
/// file as shipped (the endpoint comes from `S3_ENDPOINT` and `AWS_ENDPOINT_URL`, as its
/// comment says). Nothing is written: no clone, no store object, no hook run.
#[test]
fn the_s3_example_policy_passes_guard_check_against_moto() {
    use crate::common::s3::{keys, put_all, Moto, Obj};
    let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let moto = Moto::start();
    for b in ["the-art-exchange", "the-art-exchange-guard", "acme-guard"] {
        moto.create_bucket(b);
    }
    let objs: Vec<Obj> = (0..40)
        .map(|i| Obj {
            key: format!("{}/{i:04}.jpg", if i % 4 == 0 { "originals" } else { "products" }),
            body: format!("jpeg bytes of image {i}").into_bytes(),
            ..Obj::default()
        })
        .collect();
    put_all(moto.client(), "the-art-exchange", objs);
    let env = Env::new();
    std::fs::create_dir_all(env.path("instances/prod")).unwrap();
    sql(
        &env.path("instances/prod/catalog.db"),
        "CREATE TABLE product (id INTEGER PRIMARY KEY, image_key TEXT); INSERT INTO product (image_key) VALUES ('products/0001.jpg');",
    );
    std::fs::copy(policies.join("art-exchange.toml"), env.path("art-exchange.toml")).unwrap();
    let before = tree(env.dir.path());
    let mut c = env.cmd(&["--policy", "art-exchange.toml", "check"]);
    moto.env(&mut c, &env.path("cache"));
    let r: Run = c.output().unwrap().into();
    assert_eq!(r.code, 0, "art-exchange: {r:?}");
    assert!(r.stdout.contains("images"), "the bucket target is named: {r:?}");
    assert!(r.stdout.contains("catalog"), "the SQLite target is named: {r:?}");
    assert!(
        keys(moto.client(), "the-art-exchange-guard", "").is_empty(),
        "no clone made"
    );
    assert!(
        keys(moto.client(), "acme-guard", "").is_empty(),
        "nothing written to the store"
    );
    let mut after = tree(env.dir.path());
    after.retain(|(p, _)| !p.starts_with("cache/"));
    assert_eq!(after, before, "nothing written beside the policy");

    // Without its clone bucket the same policy fails the check, naming it.
    let moto2 = Moto::start();
    moto2.create_bucket("the-art-exchange");
    moto2.create_bucket("acme-guard");
    let mut c = env.cmd(&["--policy", "art-exchange.toml", "check"]);
    moto2.env(&mut c, &env.path("cache2"));
    let r: Run = c.output().unwrap().into();
    assert_ne!(r.code, 0, "{r:?}");
    assert!(
        r.all().contains("the-art-exchange-guard"),
        "names the missing bucket: {r:?}"
    );
}

/// The Turso example policy (seed 002) passes `guard check` against the Turso fake holding the
/// seed's database. Only the service's addresses change (`api_url` added, `db_url`'s host made
/// the fake's); every check, key and token variable is as shipped. Nothing is written: no
/// branch, no store.
#[test]
fn the_turso_example_policy_passes_guard_check_against_the_fake() {
    use crate::common::turso::{TursoFake, API_TOKEN};
    let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let fake = TursoFake::start();
    let db = fake.create_db("liveone-tokyo");
    sql(
        &db,
        "CREATE TABLE readings (id INTEGER PRIMARY KEY, system_id INTEGER NOT NULL, inverter_time INTEGER NOT NULL, solar_w REAL);
         CREATE TABLE readings_agg_5m (system_id INTEGER, interval_end INTEGER, solar_w_avg REAL, PRIMARY KEY (system_id, interval_end)) WITHOUT ROWID;
         CREATE TABLE point_readings (id INTEGER PRIMARY KEY AUTOINCREMENT, system_id INTEGER, point_id INTEGER, measurement_time INTEGER, value REAL);
         CREATE TABLE migration_progress (migration_name TEXT, system_id INTEGER, rows_migrated INTEGER, PRIMARY KEY (migration_name, system_id));
         INSERT INTO readings (system_id, inverter_time, solar_w) VALUES (1, 1762400000, 10.5), (2, 1762400060, 11.0);
         INSERT INTO readings_agg_5m VALUES (1, 1762400300, 10.5);
         INSERT INTO migration_progress VALUES ('readings_to_points', 1, 1), ('readings_to_points', 2, 1);",
    );
    let shipped = std::fs::read_to_string(policies.join("liveone-turso.toml")).unwrap();
    let host = fake.db("liveone-tokyo").unwrap()["Hostname"]
        .as_str()
        .unwrap()
        .to_string();
    let line = "db_url = \"libsql://liveone-tokyo-liveone.turso.io\"";
    assert!(shipped.contains(line), "the shipped db_url line");
    let policy = shipped.replace(
        line,
        &format!("db_url = \"libsql://{host}\"\napi_url = \"{}\"", fake.api_url),
    );
    let env = Env::new();
    env.write("liveone-turso.toml", &policy);
    let before_dbs = fake.databases().len();
    let r: Run = env
        .cmd(&["--policy", "liveone-turso.toml", "check"])
        .env("TURSO_API_TOKEN", API_TOKEN)
        .env("TURSO_DB_TOKEN", fake.mint("liveone-tokyo"))
        .output()
        .unwrap()
        .into();
    assert_eq!(r.code, 0, "liveone-turso: {r:?}");
    assert!(r.stdout.contains("readings"), "{r:?}");
    assert_eq!(fake.databases().len(), before_dbs, "no branch made");
    assert!(!env.path("backups").exists(), "no store written");

    // A table a check names that the database lacks fails the check, naming it.
    sql(&db, "DROP TABLE readings_agg_5m");
    let r: Run = env
        .cmd(&["--policy", "liveone-turso.toml", "check"])
        .env("TURSO_API_TOKEN", API_TOKEN)
        .env("TURSO_DB_TOKEN", fake.mint("liveone-tokyo"))
        .output()
        .unwrap()
        .into();
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.all().contains("readings_agg_5m"), "{r:?}");
}
