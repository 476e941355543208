//! docs/cookbook.md, run: one test per seed guide (`../shared/seeds/000…004`). Each builds a
//! small, realistic version of that seed's data on real parts (a SQLite file and a directory, a
//! throwaway PostgreSQL cluster, the Turso fake, moto), loads the policy the cookbook shows from
//! `policies/` (only the service hooks, the HTTP health check and the endpoints are replaced:
//! [`shipped`] names each replacement and fails when the policy no longer has it), runs the
//! seed's migration under guard once failing and once succeeding, and compares what is there
//! afterwards with the original: `sqlite3 .dump`, `pg_dump`, the tree's SHA-256 listing, the
//! bucket's objects.

use crate::common::pg::Cluster;
use crate::common::s3::{bucket_state, diff_states, put_all, Moto, Obj};
use crate::common::turso::{TursoFake, API_TOKEN, ORG};
use crate::common::*;
use crate::files::{sql_dump, tree};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `policies/NAME.toml` with each `(from, to)` replaced once; a `from` the policy no longer has
/// fails the test (the cookbook and the policy must change together).
fn shipped(name: &str, edits: &[(&str, &str)]) -> String {
    let path = repo().join(format!("policies/{name}.toml"));
    let mut text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    for (from, to) in edits {
        assert!(text.contains(from), "{} no longer has {from:?}", path.display());
        text = text.replacen(from, to, 1);
    }
    text
}

/// The one JSON document of a `--json` run.
fn doc(r: &Run) -> Value {
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("not one JSON document ({e}): {r:?}"))
}

/// The checks of a run document that failed, by name.
fn failed_checks(v: &Value) -> Vec<String> {
    v["checks"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .filter(|c| c["passed"] == false)
                .map(|c| c["name"].as_str().unwrap_or("?").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// `guard --policy FILE --yes --json -- sh -c SCRIPT` in `env`, with `vars` in its environment.
fn guarded(env: &Env, policy: &str, script: &str, vars: &[(&str, &str)]) -> Run {
    let mut c = env.cmd(&["--policy", policy, "--yes", "--json", "--", "sh", "-c", script]);
    for (k, v) in vars {
        c.env(k, v);
    }
    c.output().expect("run guard").into()
}

/// Seed 001: the lending app's SQLite database and rent-history directory, the cashback
/// migration (six new tables). A crash half way is restored to the byte-identical dump and
/// tree; the finished migration is kept with the existing tables unchanged.
#[test]
fn seed_001_lending_cashback_migration_restored_after_a_crash_and_kept_when_it_succeeds() {
    let env = Env::new();
    let db = env.path("instances/prod/database/lending_app_prod.db");
    lending_db(&db, 40);
    env.write("data/rent_history/2025-01.json", "{\"rent\": 1200}\n");
    env.write("data/rent_history/2025-02.json", "{\"rent\": 1250}\n");
    env.write(
        "lending-prod.toml",
        &shipped(
            "lending-prod",
            &[
                ("systemctl stop lending-app", "echo stopping lending-app"),
                ("systemctl start lending-app", "echo starting lending-app"),
                (
                    "curl -fsS http://localhost:3001/healthz",
                    "test -s instances/prod/database/lending_app_prod.db",
                ),
            ],
        ),
    );
    let migrate = format!(
        "python3 '{}' '{}'",
        repo().join("tests/fixtures/migrate_cashback_tables.py").display(),
        db.display()
    );
    let (dump0, tree0) = (sql_dump(&db), tree(&env.path("data/rent_history")));

    let r = guarded(&env, "lending-prod.toml", &format!("{migrate} --crash"), &[]);
    assert_eq!(r.code, 2, "the migration's own exit code: {r:?}");
    let v = doc(&r);
    assert_eq!(v["outcome"], "restored", "{v}");
    assert_eq!(sql_dump(&db), dump0, "the database is back exactly");
    assert_eq!(tree(&env.path("data/rent_history")), tree0, "the tree is back exactly");

    let r = guarded(&env, "lending-prod.toml", &migrate, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    let v = doc(&r);
    assert_eq!(v["outcome"], "kept", "{v}");
    assert!(failed_checks(&v).is_empty(), "{v}");
    let after = sql_dump(&db);
    for line in dump0.lines().filter(|l| l.starts_with("INSERT INTO")) {
        assert!(after.contains(line), "existing rows kept: {line}");
    }
    assert!(after.contains("CREATE TABLE cashback_redemption"), "{after}");
    assert_eq!(tree(&env.path("data/rent_history")), tree0);
}

/// `guard … -- psql -f` environment for a PostgreSQL seed: the policy's `${DATABASE_URL}`, and
/// the same URL for the migration (as the guides run `psql "$DATABASE_URL" -f …`).
fn pg_vars(cluster: &Cluster, db: &str) -> Vec<(&'static str, String)> {
    vec![("DATABASE_URL", cluster.url(db))]
}

fn psql_files(cluster: &Cluster, files: &[&Path]) -> String {
    let psql = cluster.bin.join("psql");
    files
        .iter()
        .map(|f| {
            format!(
                "'{}' \"$DATABASE_URL\" -X -q -v ON_ERROR_STOP=1 -f '{}'",
                psql.display(),
                f.display()
            )
        })
        .collect::<Vec<_>>()
        .join(" && ")
}

fn with_vars<'a>(vars: &'a [(&'static str, String)]) -> Vec<(&'a str, &'a str)> {
    vars.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// Seed 000: the rent database (Prisma schema + a Ruby data migration, here SQL): RentConfig
/// loses its generated column, RentLedger gains audit columns, ElectricityBill gets 62 bills.
/// A migration that fails after the schema change is restored to the original `pg_dump`; the
/// whole migration is kept and its checks pass.
#[test]
fn seed_000_rent_data_migration_restored_when_the_data_step_fails_and_kept_when_it_succeeds() {
    let cluster = Cluster::start();
    cluster.createdb("rent");
    cluster.psql("rent", crate::postgres::RENT_SCHEMA);
    let env = Env::new();
    env.write(
        "rent-data.toml",
        &shipped(
            "rent-data",
            &[
                ("systemctl stop kiosk-backend", "echo stopping kiosk-backend"),
                ("systemctl start kiosk-backend", "echo starting kiosk-backend"),
                ("curl -fsS http://localhost:3001/api/rent/friendly_message", "true"),
            ],
        ),
    );
    let schema_step = env.write(
        "migration.sql",
        crate::postgres::RENT_MIGRATION
            .split("-- data migration")
            .next()
            .unwrap(),
    );
    let data_step = env.write("data.sql", crate::postgres::RENT_MIGRATION);
    let broken_data = env.write(
        "data-broken.sql",
        "INSERT INTO \"ElectricityBill\" (id, provider, \"billDate\", amount, \"billPeriod\") VALUES ('x', 'Vattenfall', now(), 1, now());\n\
         INSERT INTO \"ElectricityBill\" (id, provider, \"billDate\", amount, \"billPeriod\") VALUES ('x', 'Fortum', now(), 1, now());\n",
    );
    let vars = pg_vars(&cluster, "rent");
    let dump0 = cluster.dump("rent");

    // The schema change lands, then the data step hits a duplicate key.
    let r = guarded(
        &env,
        "rent-data.toml",
        &psql_files(&cluster, &[&schema_step, &broken_data]),
        &with_vars(&vars),
    );
    assert_eq!(r.code, 3, "psql's exit code passes through: {r:?}");
    assert_eq!(doc(&r)["outcome"], "restored", "{r:?}");
    assert_eq!(cluster.dump("rent"), dump0, "the database is back exactly (pg_dump)");

    // The schema change and the data migration (the guide's two commands) in one guarded run.
    let r = guarded(
        &env,
        "rent-data.toml",
        &psql_files(&cluster, &[&data_step]),
        &with_vars(&vars),
    );
    assert_eq!(r.code, 0, "{r:?}");
    let v = doc(&r);
    assert_eq!(v["outcome"], "kept", "{v}");
    assert!(failed_checks(&v).is_empty(), "{v}");
    assert_eq!(cluster.psql("rent", r#"SELECT count(*) FROM "ElectricityBill""#), "62");
    assert_eq!(cluster.psql("rent", r#"SELECT count(*) FROM "RentLedger""#), "31");
}

/// The OTS-ERP database of seed 003 before its migration: users, customers, jobs, time entries,
/// overtime settings with the `default` id that blocks the UUID change, a trigger and FKs.
const ERP_SCHEMA: &str = r#"
CREATE TABLE "User" (id uuid PRIMARY KEY, name text NOT NULL, email text UNIQUE NOT NULL, role text NOT NULL,
                     "updatedAt" timestamp(3) NOT NULL DEFAULT '2025-10-01');
CREATE TABLE "Customer" (id uuid PRIMARY KEY, name text NOT NULL, phone text);
CREATE TABLE "Job" (id uuid PRIMARY KEY, "customerId" uuid NOT NULL REFERENCES "Customer"(id), title text NOT NULL,
                    status text NOT NULL DEFAULT 'open');
CREATE TABLE "TimeEntry" (id uuid PRIMARY KEY, "userId" uuid NOT NULL REFERENCES "User"(id),
                          "jobId" uuid REFERENCES "Job"(id), hours numeric(5,2) NOT NULL, "legacyRate" numeric, "legacyCode" text);
CREATE TABLE "OvertimeSettings" (id text PRIMARY KEY, "dailyRegularHours" numeric NOT NULL, "overtimeMultiplier" numeric NOT NULL);
CREATE FUNCTION set_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW."updatedAt" := '2025-10-06'; RETURN NEW; END $$;
CREATE TRIGGER "User_updatedAt" BEFORE UPDATE ON "User" FOR EACH ROW EXECUTE FUNCTION set_updated_at();
INSERT INTO "User" SELECT md5('u' || i)::uuid, 'User ' || i, 'user' || i || '@ots.example', CASE WHEN i = 1 THEN 'OWNER_ADMIN' ELSE 'EMPLOYEE' END
  FROM generate_series(1, 9) i;
INSERT INTO "Customer" SELECT md5('c' || i)::uuid, 'Customer ' || i, '+1 555 01' || lpad(i::text, 2, '0') FROM generate_series(1, 20) i;
INSERT INTO "Job" SELECT md5('j' || i)::uuid, md5('c' || (1 + i % 20))::uuid, 'Job ' || i FROM generate_series(1, 36) i;
INSERT INTO "TimeEntry" SELECT md5('t' || i)::uuid, md5('u' || (1 + i % 9))::uuid, md5('j' || i)::uuid, 7.5 + i, 42, 'L' || i
  FROM generate_series(1, 5) i;
INSERT INTO "OvertimeSettings" VALUES ('default', 8, 1.5), ('0b6e3f0c-6a8e-4a43-9d7e-1f0b9c1d2e3f', 8, 1.5);
"#;

/// The seed's migration scripts 01–06, small: fixes, new tables, altered tables, functions,
/// triggers, imported role data.
const ERP_STEPS: &[(&str, &str)] = &[
    (
        "01-pre-migration-fixes.sql",
        r#"DELETE FROM "OvertimeSettings" WHERE id = 'default';
ALTER TABLE "OvertimeSettings" ALTER COLUMN id TYPE uuid USING id::uuid;"#,
    ),
    (
        "02-create-missing-tables.sql",
        r#"CREATE TABLE "Role" (id text PRIMARY KEY, name text UNIQUE NOT NULL);
CREATE TABLE "Permission" (id text PRIMARY KEY, description text);
CREATE TABLE "RolePermission" ("roleId" text REFERENCES "Role"(id), "permissionId" text REFERENCES "Permission"(id), PRIMARY KEY ("roleId", "permissionId"));
CREATE TABLE "RoleAssignment" (id serial PRIMARY KEY, "userId" uuid NOT NULL REFERENCES "User"(id), "roleId" text NOT NULL REFERENCES "Role"(id));
CREATE TABLE "TimeEntryPhoto" (id serial PRIMARY KEY, "timeEntryId" uuid NOT NULL REFERENCES "TimeEntry"(id), url text NOT NULL);
CREATE TABLE "TimeEntryRejectionNote" (id serial PRIMARY KEY, "timeEntryId" uuid NOT NULL REFERENCES "TimeEntry"(id), note text NOT NULL);
CREATE TABLE "RoleAudit" (id serial PRIMARY KEY, "userId" uuid, old text, new text);"#,
    ),
    (
        "03-alter-existing-tables.sql",
        r#"ALTER TABLE "TimeEntry" DROP COLUMN "legacyRate", DROP COLUMN "legacyCode", ADD COLUMN "approvedAt" timestamp(3), ADD COLUMN "approvedBy" uuid;
ALTER TABLE "OvertimeSettings" ADD COLUMN "weekStartDay" integer NOT NULL DEFAULT 1;"#,
    ),
    (
        "04-create-functions.sql",
        r#"CREATE FUNCTION log_role_changes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN IF NEW.role IS DISTINCT FROM OLD.role THEN INSERT INTO "RoleAudit" ("userId", old, new) VALUES (NEW.id, OLD.role, NEW.role); END IF; RETURN NEW; END $$;"#,
    ),
    (
        "05-create-triggers.sql",
        r#"CREATE TRIGGER "User_roleAudit" AFTER UPDATE ON "User" FOR EACH ROW EXECUTE FUNCTION log_role_changes();"#,
    ),
    (
        "06-import-role-data.sql",
        r#"INSERT INTO "Role" SELECT 'r' || i, 'Role ' || i FROM generate_series(1, 8) i;
INSERT INTO "Permission" SELECT 'p' || i, 'Permission ' || i FROM generate_series(1, 12) i;
INSERT INTO "RolePermission" SELECT 'r' || (1 + i % 8), 'p' || i FROM generate_series(1, 12) i;
INSERT INTO "RoleAssignment" ("userId", "roleId") SELECT id, 'r1' FROM "User" WHERE role = 'OWNER_ADMIN';
INSERT INTO "TimeEntryRejectionNote" ("timeEntryId", note) SELECT id, 'missing photo' FROM "TimeEntry" LIMIT 3;"#,
    ),
];

/// Seed 003: the OTS-ERP database on RDS (here a local cluster): pre-migration fixes, new tables,
/// altered tables, functions and triggers, imported role data. Script 05 failing (a trigger on
/// a function that script 04 did not create) is restored to the original `pg_dump`, CSV copies
/// of the critical tables included in the snapshot; the whole migration is kept.
#[test]
fn seed_003_rds_schema_sync_restored_when_a_trigger_script_fails_and_kept_when_it_succeeds() {
    let cluster = Cluster::start();
    cluster.createdb("ortmeier");
    cluster.psql("ortmeier", ERP_SCHEMA);
    let env = Env::new();
    env.write("ots-erp-rds.toml", &shipped("ots-erp-rds", &[]));
    let files: Vec<PathBuf> = ERP_STEPS
        .iter()
        .map(|(name, sql)| env.write(&format!("migrations/{name}"), sql))
        .collect();
    let broken: Vec<PathBuf> = ERP_STEPS
        .iter()
        .map(|(name, sql)| {
            let sql = if name.starts_with("04") {
                sql.replace("log_role_changes()", "log_role_change()")
            } else {
                sql.to_string()
            };
            env.write(&format!("broken/{name}"), &sql)
        })
        .collect();
    let vars = pg_vars(&cluster, "ortmeier");
    let dump0 = cluster.dump("ortmeier");

    let refs: Vec<&Path> = broken.iter().map(PathBuf::as_path).collect();
    let r = guarded(
        &env,
        "ots-erp-rds.toml",
        &psql_files(&cluster, &refs),
        &with_vars(&vars),
    );
    assert_eq!(r.code, 3, "script 05 fails: {r:?}");
    let v = doc(&r);
    assert_eq!(v["outcome"], "restored", "{v}");
    assert_eq!(
        cluster.dump("ortmeier"),
        dump0,
        "the database is back exactly (pg_dump)"
    );
    // The snapshot kept the critical tables as CSV too, like the guide's \COPY backups.
    let m = doc(&env.guard(&[
        "--policy",
        "ots-erp-rds.toml",
        "show",
        v["snapshot_id"].as_str().unwrap(),
        "--json",
    ]));
    let artifacts: Vec<&str> = m["targets"][0]["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["key"].as_str().unwrap())
        .collect();
    for t in ["User", "Customer", "Job", "TimeEntry", "OvertimeSettings"] {
        assert!(
            artifacts.iter().any(|k| k.contains(&format!("{t}.csv"))),
            "{t}.csv in {artifacts:?}"
        );
    }

    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let r = guarded(
        &env,
        "ots-erp-rds.toml",
        &psql_files(&cluster, &refs),
        &with_vars(&vars),
    );
    assert_eq!(r.code, 0, "{r:?}");
    let v = doc(&r);
    assert_eq!(v["outcome"], "kept", "{v}");
    assert!(failed_checks(&v).is_empty(), "{v}");
    assert_eq!(cluster.psql("ortmeier", r#"SELECT count(*) FROM "Role""#), "8");
}

/// Seed 002: the liveone solar readings on Turso (the fake): the points migration. A crash after
/// it deleted readings is restored (the database file's full dump equal to the original); the
/// finished migration is kept.
#[test]
fn seed_002_turso_points_migration_restored_after_a_crash_and_kept_when_it_succeeds() {
    let fake = TursoFake::start();
    let db = crate::turso::DB;
    crate::turso::seed(&fake.create_db(db));
    let db_token = fake.mint(db);
    let env = Env::new();
    let api = format!("organization = \"{ORG}\"\napi_url = \"{}\"", fake.api_url);
    let db_url = format!("db_url = \"{}\"", fake.url_of(db));
    env.write(
        "liveone-turso.toml",
        &shipped(
            "liveone-turso",
            &[
                ("organization = \"liveone\"", &api),
                ("db_url = \"libsql://liveone-tokyo-liveone.turso.io\"", &db_url),
            ],
        ),
    );
    let migrate = format!(
        "python3 '{}' '{}'",
        repo().join("tests/fakes/points_migration.py").display(),
        fake.url_of(db)
    );
    let vars = [("TURSO_API_TOKEN", API_TOKEN), ("TURSO_DB_TOKEN", db_token.as_str())];
    let dump0 = crate::turso::full_dump(&fake.path_of(db));

    let r = guarded(&env, "liveone-turso.toml", &format!("{migrate} --crash"), &vars);
    assert_eq!(r.code, 3, "the migration's own exit code: {r:?}");
    assert_eq!(doc(&r)["outcome"], "restored", "{r:?}");
    assert_eq!(
        crate::turso::full_dump(&fake.path_of(db)),
        dump0,
        "the database is back exactly"
    );

    let r = guarded(&env, "liveone-turso.toml", &migrate, &vars);
    assert_eq!(r.code, 0, "{r:?}");
    let v = doc(&r);
    assert_eq!(v["outcome"], "kept", "{v}");
    assert!(failed_checks(&v).is_empty(), "{v}");
}

/// The art exchange's product images (seed 004), a few of them: originals and products.
fn art_images(n: usize) -> Vec<Obj> {
    let mut out = Vec::new();
    for i in 0..n {
        for (prefix, tag) in [("originals", "master"), ("products", "shop")] {
            let mut o = Obj {
                key: format!("{prefix}/{i:04}.jpg"),
                body: format!("{prefix} image {i} ").repeat(40 + i % 13).into_bytes(),
                content_type: Some("image/jpeg".into()),
                ..Default::default()
            };
            o.metadata.insert("artist".into(), format!("artist-{}", i % 7));
            o.tags.insert("use".into(), tag.into());
            out.push(o);
        }
    }
    out
}

/// The WebP migration of seed 004, small: every product image gets a `.webp` sibling and the
/// catalog points at it; with `fail`, it also overwrites an original and deletes a product
/// image, then fails.
const ART_MIGRATION: &str = r#"
import sqlite3, sys
import boto3
endpoint, bucket, db, fail = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "fail"
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
keys = [o["Key"] for p in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="products/") for o in p.get("Contents", [])]
for k in keys:
    s3.put_object(Bucket=bucket, Key=k[:-4] + ".webp", Body=b"webp of " + k.encode(), ContentType="image/webp")
con = sqlite3.connect(db)
con.execute("UPDATE product SET image = replace(image, '.jpg', '.webp')")
con.commit()
if fail:
    s3.put_object(Bucket=bucket, Key="originals/0000.jpg", Body=b"overwritten by mistake")
    s3.delete_object(Bucket=bucket, Key=keys[0])
    print("converted; then the cleanup step went wrong", file=sys.stderr)
    sys.exit(1)
print(f"converted {len(keys)} images")
"#;

/// Seed 004: the image bucket (moto) and the shop's catalog database, snapshots in an S3 store.
/// A migration that overwrites an original and deletes a product image is restored: the bucket
/// listing (bytes, content-type, metadata, tags) and the catalog dump equal the originals; the
/// finished migration is kept.
#[test]
fn seed_004_art_exchange_image_migration_restored_exactly_and_kept_when_it_succeeds() {
    let moto = Moto::start();
    for b in ["the-art-exchange", "the-art-exchange-guard", "acme-guard"] {
        moto.create_bucket(b);
    }
    put_all(moto.client(), "the-art-exchange", art_images(20));
    let env = Env::new();
    let catalog = env.path("instances/prod/catalog.db");
    std::fs::create_dir_all(catalog.parent().unwrap()).unwrap();
    sql(
        &catalog,
        "CREATE TABLE product (id INTEGER PRIMARY KEY, title TEXT NOT NULL, image TEXT NOT NULL, price_cents INTEGER);
         WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 19)
         INSERT INTO product SELECT i + 1, 'Print ' || i, printf('products/%04d.jpg', i), 4500 + i * 100 FROM n;",
    );
    env.write(
        "art-exchange.toml",
        &shipped(
            "art-exchange",
            &[
                (
                    "systemctl stop art-exchange-worker",
                    "echo stopping art-exchange-worker",
                ),
                (
                    "systemctl start art-exchange-worker",
                    "echo starting art-exchange-worker",
                ),
                ("region = \"eu-central-1\"", "region = \"us-east-1\""),
                ("expect = \">= 2000\"", "expect = \">= 20\""),
                ("curl -fsS https://the-art-exchange.example/healthz", "true"),
            ],
        ),
    );
    let script = env.write("migrate_images_to_webp.py", ART_MIGRATION);
    let migrate = |mode: &str| {
        format!(
            "python3 '{}' \"$S3_ENDPOINT\" the-art-exchange '{}' {mode}",
            script.display(),
            catalog.display()
        )
    };
    let run = |script: &str| -> Run {
        let mut c = env.cmd(&[
            "--policy",
            "art-exchange.toml",
            "--yes",
            "--json",
            "--",
            "sh",
            "-c",
            script,
        ]);
        moto.env(&mut c, &env.path("cache"));
        c.output().expect("run guard").into()
    };
    let (bucket0, dump0) = (bucket_state(moto.client(), "the-art-exchange"), sql_dump(&catalog));

    let r = run(&migrate("fail"));
    assert_eq!(r.code, 1, "the migration's own exit code: {r:?}");
    let v = doc(&r);
    assert_eq!(v["outcome"], "restored", "{v}");
    let d = diff_states(&bucket0, &bucket_state(moto.client(), "the-art-exchange"));
    assert!(d.is_empty(), "the bucket is back exactly: {d:?}");
    assert_eq!(sql_dump(&catalog), dump0, "the catalog is back exactly");
    assert!(
        !moto_keys(&moto, "acme-guard").is_empty(),
        "the snapshots live in the S3 store"
    );

    let r = run(&migrate("ok"));
    assert_eq!(r.code, 0, "{r:?}");
    let v = doc(&r);
    assert_eq!(v["outcome"], "kept", "{v}");
    assert!(failed_checks(&v).is_empty(), "{v}");
    assert_eq!(
        bucket_state(moto.client(), "the-art-exchange").len(),
        60,
        "20 originals, 20 products, 20 webp"
    );
}

fn moto_keys(moto: &Moto, bucket: &str) -> Vec<String> {
    crate::common::s3::keys(moto.client(), bucket, "")
}

/// docs/cookbook.md has a section per seed guide and names the policy and the test of each.
#[test]
fn the_cookbook_has_a_worked_example_per_seed_with_its_policy_and_test() {
    let book = std::fs::read_to_string(repo().join("docs/cookbook.md")).expect("docs/cookbook.md");
    for (seed, policy, test) in [
        ("000", "rent-data", "seed_000_"),
        ("001", "lending-prod", "seed_001_"),
        ("002", "liveone-turso", "seed_002_"),
        ("003", "ots-erp-rds", "seed_003_"),
        ("004", "art-exchange", "seed_004_"),
    ] {
        assert!(
            book.contains(&format!("## Seed {seed}")),
            "docs/cookbook.md has a section for seed {seed}"
        );
        assert!(
            book.contains(&format!("policies/{policy}.toml")),
            "names policies/{policy}.toml"
        );
        assert!(repo().join(format!("policies/{policy}.toml")).exists());
        assert!(book.contains(test), "names the test {test}…");
        let me = std::fs::read_to_string(repo().join("tests/it/cookbook.rs")).unwrap();
        assert!(me.contains(&format!("fn {test}")), "the test {test}… exists");
    }
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    assert!(readme.contains("docs/cookbook.md"), "README links the cookbook");
}
