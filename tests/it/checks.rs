//! Checks as migration authors write them from the seed guides (issue 15): checks about what
//! the command creates (F5), `untouched` meaning "existing data untouched" (F6), with SQLite
//! and PostgreSQL migrations through the real binary.

use crate::common::pg::Cluster;
use crate::common::*;
use std::path::Path;

fn cashback(env: &Env, extra: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/migrate_cashback_tables.py");
    let mut s = format!("python3 '{}' '{}'", script.display(), db(env).display());
    for e in extra {
        s.push(' ');
        s.push_str(e);
    }
    s
}

/// `guard FLAGS -- sh -c SCRIPT` in the env.
fn guard_sh(env: &Env, flags: &[&str], script: &str) -> Run {
    let mut args: Vec<&str> = flags.to_vec();
    args.extend(["--", "sh", "-c", script]);
    env.guard(&args)
}

pub fn json(r: &Run) -> serde_json::Value {
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("one JSON document on stdout ({e}): {r:?}"))
}

pub fn check<'a>(v: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name:?} in {v}"))
}

const NEW_TABLE_CHECK: &str = r#"
[[check]]
name = "redemptions table created empty"
target = "app"
sql = "SELECT count(*) FROM cashback_redemption"
expect = "== 0"
"#;

#[test]
fn sqlite_check_on_a_table_the_command_creates_is_read_after_it_only() {
    let env = lending_env(NEW_TABLE_CHECK);
    let r = guard_sh(&env, &[], &cashback(&env, &[]));
    assert_eq!(
        r.code, 0,
        "the table does not exist before; the check reads it after: {r:?}"
    );
    let row = r
        .stderr
        .lines()
        .find(|l| l.starts_with("redemptions table created empty"))
        .unwrap_or_else(|| panic!("{r:?}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert!(
        cells.ends_with(&["—", "0", "==", "0", "pass"]),
        "before is shown as —: {row:?}"
    );
    let status = env.guard(&["status", "--json"]);
    assert_eq!(json(&status)["last_run"]["outcome"], "kept", "{status:?}");
}

#[test]
fn sqlite_check_whose_query_fails_after_the_command_fails_and_restores() {
    let env = lending_env(NEW_TABLE_CHECK);
    let before = dump(&db(&env));
    // The migration stops halfway (before cashback_redemption) and its wrapper hides the error.
    let r = guard_sh(&env, &["--json"], &format!("{}; exit 0", cashback(&env, &["--crash"])));
    assert_eq!(r.code, 79, "a failed check restores: {r:?}");
    let v = json(&r);
    let c = check(&v, "redemptions table created empty");
    assert_eq!(c["passed"], false, "{v}");
    assert!(c["before"].is_null(), "{v}");
    assert!(
        c["detail"]
            .as_str()
            .unwrap()
            .contains("no such table: cashback_redemption"),
        "the query's error is shown: {v}"
    );
    assert_eq!(dump(&db(&env)), before, "restored exactly");
}

#[test]
fn sqlite_unchanged_check_still_reads_before_and_says_why_it_stops() {
    let env = lending_env(
        "\n[[check]]\nname = \"redemptions unchanged\"\ntarget = \"app\"\nsql = \"SELECT count(*) FROM cashback_redemption\"\nexpect = \"unchanged\"\n",
    );
    let before = dump(&db(&env));
    let r = guard_sh(&env, &[], &cashback(&env, &[]));
    assert_eq!(
        r.code, 69,
        "an `unchanged` value cannot be read before: nothing runs: {r:?}"
    );
    assert!(r.stderr.contains("query failed before the command"), "{r:?}");
    assert!(r.stderr.contains("read only after it"), "the way out is named: {r:?}");
    assert_eq!(dump(&db(&env)), before, "nothing ran");
}

// ---- PostgreSQL: the rent migration of seed 000 ----

/// The rent database of seed 000 before its migration (Prisma-style quoted names).
const RENT_SCHEMA: &str = r#"
CREATE TABLE "Tenant" (id text PRIMARY KEY, name text NOT NULL, email text UNIQUE, "startDate" timestamp(3),
    "roomAdjustment" double precision);
CREATE TABLE "RentConfig" (id text PRIMARY KEY, key text NOT NULL, value text NOT NULL, period timestamp(3) NOT NULL,
    period_month integer GENERATED ALWAYS AS ((extract(year FROM period) * 100 + extract(month FROM period))::integer) STORED);
CREATE TABLE "RentLedger" (id text PRIMARY KEY, "tenantId" text NOT NULL REFERENCES "Tenant"(id),
    period timestamp(3) NOT NULL, "amountDue" double precision NOT NULL, "amountPaid" double precision NOT NULL DEFAULT 0);
INSERT INTO "Tenant" (id, name, email, "startDate", "roomAdjustment")
SELECT 't' || i, 'Tenant ' || i, 'tenant' || i || '@example.com', timestamp '2024-01-01' + (i || ' days')::interval,
       CASE WHEN i % 3 = 0 THEN -1400.5 ELSE NULL END FROM generate_series(1, 8) i;
INSERT INTO "RentConfig" (id, key, value, period)
SELECT 'c' || k || '-' || m, k, (1000 + m * 17)::text, timestamp '2025-01-01' + ((m - 1) || ' months')::interval
FROM unnest(ARRAY['el', 'larm', 'internet']) k, generate_series(1, 10) m;
INSERT INTO "RentLedger" (id, "tenantId", period, "amountDue", "amountPaid")
SELECT 'l' || i, 't' || (1 + i % 8), timestamp '2025-01-01' + ((i % 10) || ' months')::interval, 7045.0 + i, 7045.0 + i
FROM generate_series(1, 31) i;
"#;

/// The migration of seed 000: new ledger columns, the ElectricityBill table and its 62 bills.
pub const RENT_MIGRATION: &str = r#"
ALTER TABLE "RentLedger" ADD COLUMN "daysStayed" DOUBLE PRECISION;
ALTER TABLE "RentLedger" ADD COLUMN "calculationTitle" TEXT;
CREATE TABLE "ElectricityBill" (id TEXT PRIMARY KEY, provider TEXT NOT NULL, "billDate" TIMESTAMP(3) NOT NULL,
    amount DOUBLE PRECISION NOT NULL);
INSERT INTO "ElectricityBill" (id, provider, "billDate", amount)
SELECT p || '-' || m, p, timestamp '2023-01-28' + (m || ' months')::interval, 900 + m * 3
FROM unnest(ARRAY['Vattenfall', 'Fortum']) p, generate_series(1, 31) m;
UPDATE "RentLedger" SET "daysStayed" = 30, "calculationTitle" = 'Hyran ' || to_char(period, 'YYYY-MM');
"#;

pub fn rent() -> Cluster {
    let c = Cluster::start();
    c.createdb("rent");
    c.psql("rent", RENT_SCHEMA);
    c
}

pub fn rent_env(checks: &str) -> Env {
    let env = Env::new();
    env.write(
        "guard.toml",
        &format!("name = \"rent-data\"\nstore = \"backups\"\n\n[[target]]\nname = \"rent\"\nkind = \"postgres\"\nurl = \"${{DATABASE_URL}}\"\n{checks}"),
    );
    env
}

/// `guard FLAGS -- psql [-v ON_ERROR_STOP=1] -f migration.sql` with DATABASE_URL set, as the
/// guides run their migrations.
pub fn guard_psql(env: &Env, c: &Cluster, flags: &[&str], sql: &str, stop_on_error: bool) -> Run {
    let file = env.write("migration.sql", sql);
    let psql = c.bin.join("psql").display().to_string();
    let file = file.display().to_string();
    let mut args: Vec<&str> = flags.to_vec();
    args.extend(["--", &psql, "-X", "-q"]);
    if stop_on_error {
        args.extend(["-v", "ON_ERROR_STOP=1"]);
    }
    args.extend(["-f", &file]);
    pg_guard(env, c, &args)
}

fn pg_guard(env: &Env, c: &Cluster, args: &[&str]) -> Run {
    env.cmd(args)
        .env("DATABASE_URL", c.url("rent"))
        .env("PGHOST", c.sock())
        .env("PGPORT", c.port.to_string())
        .env("PGUSER", "postgres")
        .env("PGDATABASE", "rent")
        .output()
        .expect("run guard")
        .into()
}

const BILLS_CHECK: &str = r#"
[[check]]
name = "electricity bills migrated"
target = "rent"
sql = 'SELECT count(*) FROM "ElectricityBill"'
expect = "== 62"
"#;

#[test]
fn postgres_check_on_a_table_the_migration_creates_passes_and_a_broken_one_restores() {
    let c = rent();
    let env = rent_env(BILLS_CHECK);
    let r = guard_psql(&env, &c, &["--json"], RENT_MIGRATION, true);
    assert_eq!(r.code, 0, "{r:?}");
    let v = json(&r);
    let bills = check(&v, "electricity bills migrated");
    assert_eq!(
        (&bills["before"], &bills["after"], &bills["passed"]),
        (&serde_json::Value::Null, &"62".into(), &true.into()),
        "{v}"
    );

    // The same migration with a typo in CREATE TABLE, run by psql without ON_ERROR_STOP (the
    // guide's way): psql exits 0, the check's query fails after the command, guard restores.
    let c = rent();
    let env = rent_env(BILLS_CHECK);
    let before = c.dump("rent");
    let broken = RENT_MIGRATION.replace("CREATE TABLE \"ElectricityBill\"", "CREATE TABEL \"ElectricityBill\"");
    let r = guard_psql(&env, &c, &["--json"], &broken, false);
    assert_eq!(r.code, 79, "{r:?}");
    let v = json(&r);
    let bills = check(&v, "electricity bills migrated");
    assert_eq!(bills["passed"], false, "{v}");
    assert!(
        bills["detail"]
            .as_str()
            .unwrap()
            .contains("\"ElectricityBill\" does not exist"),
        "{v}"
    );
    assert_eq!(c.dump("rent"), before, "restored exactly (pg_dump)");
}

// ---- `untouched`: existing data untouched (F6) ----

pub fn loan_splitting(env: &Env, bug: Option<&str>) -> Vec<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/migrate_loan_splitting.py");
    let mut v = vec![
        "python3".to_string(),
        script.display().to_string(),
        db(env).display().to_string(),
    ];
    if let Some(b) = bug {
        v.push(format!("--bug={b}"));
    }
    v
}

/// The lending env with the loan-splitting guide's one check: existing data untouched.
pub fn loan_env() -> Env {
    let env = lending_env("");
    let p = std::fs::read_to_string(env.path("guard.toml")).unwrap();
    let cut = p
        .find("[[check]]\nname = \"cashback tables exist\"")
        .expect("lending policy");
    env.write("guard.toml", &p[..cut]);
    env
}

pub fn guarded(env: &Env, flags: &[&str], cmd: &[String]) -> Run {
    let mut args: Vec<&str> = flags.to_vec();
    args.push("--");
    args.extend(cmd.iter().map(|s| s.as_str()));
    env.guard(&args)
}

#[test]
fn sqlite_untouched_passes_added_columns_and_fails_changed_deleted_dropped_retyped() {
    // The correct migration (two columns added and filled in) is kept.
    let env = loan_env();
    let r = guarded(&env, &["--json"], &loan_splitting(&env, None));
    assert_eq!(r.code, 0, "adding columns leaves existing data untouched: {r:?}");
    let v = json(&r);
    assert_eq!(check(&v, "existing data untouched")["passed"], true, "{v}");
    assert_eq!(
        count(&db(&env), "SELECT count(*) FROM payment WHERE split_part = 1"),
        150
    );

    for (bug, says) in [
        ("values", "payment: existing data changed (150 rows)"),
        ("rows", "payment: 150 → 135 rows"),
        ("drop", "payment: column \"paid_at\" was dropped"),
        ("retype", "payment: column \"amount\" changed type (NUMERIC → TEXT)"),
    ] {
        let env = loan_env();
        let before = dump(&db(&env));
        let r = guarded(&env, &["--json"], &loan_splitting(&env, Some(bug)));
        assert_eq!(r.code, 79, "{bug}: {r:?}");
        let v = json(&r);
        let c = check(&v, "existing data untouched");
        assert_eq!(c["passed"], false, "{bug}: {v}");
        assert!(c["detail"].as_str().unwrap().contains(says), "{bug}: {v}");
        assert_eq!(dump(&db(&env)), before, "{bug}: restored exactly");
    }
}

#[test]
fn sqlite_identical_is_the_strict_whole_table_form() {
    let env = loan_env();
    let p = std::fs::read_to_string(env.path("guard.toml")).unwrap();
    env.write(
        "guard.toml",
        &format!("{p}\n[[check]]\nname = \"payments identical\"\ntarget = \"app\"\nidentical = [\"payment\"]\n\n[[check]]\nname = \"users identical\"\ntarget = \"app\"\nidentical = [\"user\"]\n"),
    );
    let before = dump(&db(&env));
    let r = guarded(&env, &["--json"], &loan_splitting(&env, None));
    assert_eq!(
        r.code, 79,
        "an added column changes every row of an `identical` table: {r:?}"
    );
    let v = json(&r);
    assert_eq!(check(&v, "existing data untouched")["passed"], true, "{v}");
    assert_eq!(check(&v, "users identical")["passed"], true, "{v}");
    let c = check(&v, "payments identical");
    assert_eq!((&c["passed"], &c["kind"]), (&false.into(), &"identical".into()), "{v}");
    assert!(
        c["detail"]
            .as_str()
            .unwrap()
            .contains("payment: content changed (150 rows)"),
        "{v}"
    );
    assert_eq!(dump(&db(&env)), before);
}

#[test]
fn a_snapshot_without_column_lists_is_restorable_and_compared_whole() {
    // A snapshot as guards before column lists wrote it: fingerprints of rows and hash only.
    let env = lending_env(
        "\n[[drill.check]]\nname = \"restored payments untouched\"\ntarget = \"app\"\nuntouched = [\"payment\"]\n",
    );
    let before = dump(&db(&env));
    let s = env.guard(&["snapshot", "--json"]);
    assert_eq!(s.code, 0, "{s:?}");
    let id = snapshots(&env)[0]["id"].as_str().unwrap().to_string();
    let path = env.path(&format!("backups/snapshots/{id}/manifest.json"));
    let mut m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut stripped = 0;
    for t in m["targets"].as_array_mut().unwrap() {
        for (_, f) in t
            .get_mut("fingerprints")
            .and_then(|f| f.as_object_mut())
            .into_iter()
            .flatten()
        {
            stripped += f.as_object_mut().unwrap().remove("columns").is_some() as usize;
        }
    }
    assert_eq!(stripped, 3, "the hashed tables user, loan, payment: {m}");
    std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    // The catalog indexes the store's manifests as they are (an older guard's snapshot).
    let ri = env.guard(&["reindex"]);
    assert_eq!(ri.code, 0, "{ri:?}");
    // Its drill compares the restored copy's whole rows with the recorded hash.
    let d = env.guard(&["drill", "--json"]);
    assert_eq!(d.code, 0, "{d:?}");
    // And it restores: damage the database, restore it, compare with the original.
    sql(
        &db(&env),
        "DELETE FROM payment WHERE id < 20; ALTER TABLE loan ADD COLUMN x INTEGER;",
    );
    let r = env.guard(&["restore", &id, "--yes"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(dump(&db(&env)), before, "restored exactly");
}

const PG_UNTOUCHED: &str = r#"
[[check]]
name = "existing data untouched"
target = "rent"
untouched = ["Tenant", "RentLedger"]
"#;

#[test]
fn postgres_untouched_passes_added_columns_and_fails_changed_dropped_retyped() {
    let c = rent();
    let env = rent_env(PG_UNTOUCHED);
    let r = guard_psql(&env, &c, &["--json"], RENT_MIGRATION, true);
    assert_eq!(
        r.code, 0,
        "RentLedger gained two filled-in columns; its existing data is untouched: {r:?}"
    );
    assert_eq!(check(&json(&r), "existing data untouched")["passed"], true);
    assert_eq!(
        c.psql("rent", r#"SELECT count(*) FROM "RentLedger" WHERE "daysStayed" = 30"#),
        "31"
    );

    for (bug, says) in [
        (
            r#"UPDATE "RentLedger" SET "amountPaid" = 0 WHERE id = 'l7';"#,
            "RentLedger: existing data changed (31 rows)",
        ),
        (
            r#"INSERT INTO "Tenant" (id, name) VALUES ('t9', 'Tenant 9');"#,
            "Tenant: 8 → 9 rows",
        ),
        (
            r#"ALTER TABLE "RentLedger" DROP COLUMN "amountPaid";"#,
            "RentLedger: column \"amountPaid\" was dropped",
        ),
        (
            r#"ALTER TABLE "RentLedger" ALTER COLUMN "amountDue" TYPE numeric(10,2);"#,
            "RentLedger: column \"amountDue\" changed type (double precision → numeric(10,2))",
        ),
    ] {
        let c = rent();
        let env = rent_env(PG_UNTOUCHED);
        let before = c.dump("rent");
        let r = guard_psql(&env, &c, &["--json"], &format!("{RENT_MIGRATION}\n{bug}\n"), true);
        assert_eq!(r.code, 79, "{bug}: {r:?}");
        let v = json(&r);
        let chk = check(&v, "existing data untouched");
        assert_eq!(chk["passed"], false, "{bug}: {v}");
        assert!(chk["detail"].as_str().unwrap().contains(says), "{bug}: {v}");
        assert_eq!(c.dump("rent"), before, "{bug}: restored exactly (pg_dump)");
    }
}

#[test]
fn postgres_identical_fails_on_added_columns() {
    let c = rent();
    let env = rent_env("\n[[check]]\nname = \"ledger identical\"\ntarget = \"rent\"\nidentical = [\"RentLedger\"]\n");
    let before = c.dump("rent");
    let r = guard_psql(&env, &c, &["--json"], RENT_MIGRATION, true);
    assert_eq!(r.code, 79, "{r:?}");
    let chk = check(&json(&r), "ledger identical").clone();
    assert!(
        chk["detail"]
            .as_str()
            .unwrap()
            .contains("RentLedger: content changed (31 rows)"),
        "{chk}"
    );
    assert_eq!(c.dump("rent"), before);
}
