//! PostgreSQL targets end to end with the real binary against throwaway clusters: the
//! rent-data migration of seed 000 kept and (with a bug) restored exactly, tool version
//! mismatches refused before anything runs, passwords kept out of every output and argv,
//! plain-format restores through psql, and other sessions refused or terminated.

use crate::common::pg::Cluster;
use crate::common::*;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The rent database before the migration of seed 000 (Prisma-style quoted names).
pub(crate) const RENT_SCHEMA: &str = r#"
CREATE TABLE "Tenant" (
    id text PRIMARY KEY,
    name text NOT NULL,
    email text UNIQUE,
    "startDate" timestamp(3),
    "departureDate" timestamp(3),
    "roomAdjustment" double precision,
    "createdAt" timestamp(3) NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE TABLE "RentConfig" (
    id text PRIMARY KEY,
    key text NOT NULL,
    value text NOT NULL,
    period timestamp(3) NOT NULL,
    period_month integer GENERATED ALWAYS AS ((extract(year FROM period) * 100 + extract(month FROM period))::integer) STORED,
    "createdAt" timestamp(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    UNIQUE (key, period)
);
CREATE TABLE "RentLedger" (
    id text PRIMARY KEY,
    "tenantId" text NOT NULL REFERENCES "Tenant"(id),
    period timestamp(3) NOT NULL,
    "amountDue" double precision NOT NULL,
    "amountPaid" double precision NOT NULL DEFAULT 0,
    "paymentDate" timestamp(3),
    "updatedAt" timestamp(3)
);
CREATE INDEX "RentLedger_tenantId_period_idx" ON "RentLedger" ("tenantId", period);
CREATE FUNCTION touch_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW."updatedAt" := '2025-10-04 12:00:00'; RETURN NEW; END $$;
CREATE TRIGGER "RentLedger_touch" BEFORE UPDATE ON "RentLedger" FOR EACH ROW EXECUTE FUNCTION touch_updated_at();

INSERT INTO "Tenant" (id, name, email, "startDate", "roomAdjustment")
SELECT 't' || i, 'Tenant ' || i, 'tenant' || i || '@example.com', timestamp '2024-01-01' + (i || ' days')::interval,
       CASE WHEN i % 3 = 0 THEN -1400.5 ELSE NULL END
FROM generate_series(1, 8) i;
INSERT INTO "RentConfig" (id, key, value, period)
SELECT 'c' || k || '-' || m, k, (1000 + m * 17)::text, timestamp '2025-01-01' + ((m - 1) || ' months')::interval
FROM unnest(ARRAY['el', 'drift_rakning', 'larm', 'internet', 'vattenavgift']) k, generate_series(1, 10) m;
INSERT INTO "RentLedger" (id, "tenantId", period, "amountDue", "amountPaid", "paymentDate")
SELECT 'l' || i, 't' || (1 + i % 8), timestamp '2025-01-01' + ((i % 10) || ' months')::interval, 7045.0 + i, 7045.0 + i,
       timestamp '2025-01-25' + ((i % 10) || ' months')::interval
FROM generate_series(1, 31) i;
"#;

/// The migration of seed 000: schema change (Prisma migration.sql) then data migration.
pub(crate) const RENT_MIGRATION: &str = r#"
ALTER TABLE "RentConfig" DROP COLUMN "period_month";
ALTER TABLE "RentLedger" ADD COLUMN "daysStayed" DOUBLE PRECISION;
ALTER TABLE "RentLedger" ADD COLUMN "baseMonthlyRent" DOUBLE PRECISION;
ALTER TABLE "RentLedger" ADD COLUMN "calculationTitle" TEXT;
ALTER TABLE "RentLedger" ADD COLUMN "calculationDate" TIMESTAMP(3);
CREATE TABLE "ElectricityBill" (
    id TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    "billDate" TIMESTAMP(3) NOT NULL,
    amount DOUBLE PRECISION NOT NULL,
    "billPeriod" TIMESTAMP(3) NOT NULL,
    UNIQUE (provider, "billDate")
);
-- data migration: individual provider bills and the ledger's audit trail
INSERT INTO "ElectricityBill" (id, provider, "billDate", amount, "billPeriod")
SELECT p || '-' || m, p, timestamp '2023-01-28' + (m || ' months')::interval, 900 + m * 3, timestamp '2023-01-01' + (m || ' months')::interval
FROM unnest(ARRAY['Vattenfall', 'Fortum']) p, generate_series(1, 31) m;
UPDATE "RentLedger" SET "daysStayed" = 30, "baseMonthlyRent" = 24530, "calculationTitle" = 'Hyran ' || to_char(period, 'YYYY-MM'),
       "calculationDate" = period - interval '5 days';
"#;

fn env_with(cluster: &Cluster, extra_target: &str, checks: &str) -> Env {
    let env = Env::new();
    env.write(
        "guard.toml",
        &format!(
            r#"name = "rent-data"
store = "backups"

[[target]]
name = "rent"
kind = "postgres"
url = "${{DATABASE_URL}}"
{extra_target}
{checks}"#
        ),
    );
    let _ = cluster;
    env
}

const RENT_CHECKS: &str = r#"
[[check]]
name = "tenants untouched"
target = "rent"
untouched = ["Tenant"]

[[check]]
name = "no trigger changed"
target = "rent"
untouched = ["@schema.triggers"]

[[check]]
name = "ledger rows kept"
target = "rent"
sql = 'SELECT count(*) FROM "RentLedger"'
expect = "unchanged"

[[check]]
name = "audit columns added"
target = "rent"
sql = "SELECT count(*) FROM information_schema.columns WHERE table_name = 'RentLedger' AND column_name IN ('daysStayed', 'baseMonthlyRent', 'calculationTitle', 'calculationDate')"
expect = "== 4"

[[check]]
name = "electricity bills migrated"
target = "rent"
# The table does not exist before the migration: count it only when it does.
sql = """SELECT CASE WHEN to_regclass('"ElectricityBill"') IS NULL THEN 0
  ELSE (xpath('/row/n/text()', query_to_xml('SELECT count(*) AS n FROM "ElectricityBill"', false, true, '')))[1]::text::int END"""
expect = "== 62"
"#;

fn rent_cluster() -> Cluster {
    let c = Cluster::start();
    c.createdb("rent");
    c.psql("rent", RENT_SCHEMA);
    c
}

/// `guard ARGS -- psql -f FILE` with DATABASE_URL set; the migration connects through the
/// environment like the guide's `psql $DATABASE_URL -f migration.sql`.
fn guard_psql(env: &Env, cluster: &Cluster, flags: &[&str], sql_file: &Path) -> Run {
    let psql = cluster.bin.join("psql");
    let mut args: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
    args.extend([
        "--".into(),
        psql.display().to_string(),
        "-X".into(),
        "-v".into(),
        "ON_ERROR_STOP=1".into(),
        "-f".into(),
    ]);
    args.push(sql_file.display().to_string());
    let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    run_env(env, cluster, &a)
}

/// `guard ARGS` with DATABASE_URL and the libpq environment pointing at the rent database.
fn pg_cmd(env: &Env, cluster: &Cluster, args: &[&str]) -> std::process::Command {
    let mut cmd = env.cmd(args);
    cmd.env("DATABASE_URL", cluster.url("rent"))
        .env("PGHOST", cluster.sock())
        .env("PGPORT", cluster.port.to_string())
        .env("PGUSER", "postgres")
        .env("PGDATABASE", "rent");
    if let Some(pw) = &cluster.password {
        cmd.env("PGPASSWORD", pw);
    }
    cmd
}

fn run_env(env: &Env, cluster: &Cluster, args: &[&str]) -> Run {
    pg_cmd(env, cluster, args).output().expect("run guard").into()
}

const TENANT_CHECK: &str = "\n[[check]]\nname = \"tenants untouched\"\ntarget = \"rent\"\nuntouched = [\"Tenant\"]\n";

fn manifest(env: &Env, cluster: &Cluster, id: &str) -> serde_json::Value {
    let r = run_env(env, cluster, &["show", id, "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    serde_json::from_str(&r.stdout).unwrap()
}

fn artifact_path(env: &Env, m: &serde_json::Value, suffix: &str) -> PathBuf {
    let arts = m["targets"][0]["artifacts"].as_array().unwrap();
    let a = arts
        .iter()
        .find(|a| a["key"].as_str().unwrap().ends_with(suffix))
        .unwrap_or_else(|| panic!("no {suffix} in {m}"));
    env.path("backups").join(a["key"].as_str().unwrap())
}

fn list(env: &Env, cluster: &Cluster) -> Vec<serde_json::Value> {
    listed(&run_env(env, cluster, &["list", "--json"]))
}

fn gunzip(path: &Path) -> Vec<u8> {
    let gz = std::fs::read(path).unwrap();
    let mut raw = Vec::new();
    flate2::read::MultiGzDecoder::new(&gz[..])
        .read_to_end(&mut raw)
        .unwrap();
    raw
}

/// `gunzip -c ARTIFACT | pg_restore --list`, by hand, with the stock tools.
fn pg_restore_list(cluster: &Cluster, artifact: &Path) -> String {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "gunzip -c '{}' | '{}' --list",
            artifact.display(),
            cluster.bin.join("pg_restore").display()
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_restore --list failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn rent_migration_is_kept_with_count_checks() {
    let cluster = rent_cluster();
    let env = env_with(&cluster, "csv_tables = [\"Tenant\"]", RENT_CHECKS);
    let migration = env.write("migration.sql", RENT_MIGRATION);
    let r = guard_psql(&env, &cluster, &[], &migration);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("pass"), "{r:?}");
    assert_eq!(cluster.psql("rent", r#"SELECT count(*) FROM "ElectricityBill""#), "62");
    assert_eq!(
        cluster.psql("rent", r#"SELECT count(*) FROM "RentLedger" WHERE "daysStayed" = 30"#),
        "31"
    );

    let snaps = list(&env, &cluster);
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    let m = manifest(&env, &cluster, snaps[0]["id"].as_str().unwrap());
    let t = &m["targets"][0];
    assert_eq!(t["kind"], "postgres");
    assert_eq!(t["fingerprints"]["RentLedger"]["rows"], 31);
    assert_eq!(t["fingerprints"]["RentConfig"]["rows"], 50);
    assert!(t["fingerprints"]["Tenant"]["hash"].is_string(), "{t}");
    assert!(t["fingerprints"]["@schema"]["hash"].is_string(), "{t}");
    assert!(
        t["tools"]["pg_dump"].as_str().unwrap().starts_with(char::is_numeric),
        "{t}"
    );
    assert!(t["tools"]["server"].is_string(), "{t}");

    // The dump restores by hand with stock tools.
    let dump = artifact_path(&env, &m, ".dump.gz");
    let list = pg_restore_list(&cluster, &dump);
    assert!(
        list.contains("TABLE public RentLedger") && !list.contains("ElectricityBill"),
        "{list}"
    );
    // The CSV export is a plain gzip'd CSV with a header.
    let csv = String::from_utf8(gunzip(&artifact_path(&env, &m, "rent.Tenant.csv.gz"))).unwrap();
    assert!(csv.starts_with("id,name,email,"), "{csv}");
    assert_eq!(csv.lines().count(), 9, "{csv}");

    // Deep verification (pg_restore reads the whole archive) passes.
    let v = run_env(&env, &cluster, &["verify"]);
    assert_eq!(v.code, 0, "{v:?}");
}

#[test]
fn buggy_rent_migration_is_restored_exactly() {
    let cluster = rent_cluster();
    let env = env_with(&cluster, "", &format!("{RENT_CHECKS}\n[[check]]\nname = \"schema fingerprint recorded\"\ntarget = \"rent\"\nsql = \"SELECT 1\"\nexpect = \"== 1\"\n"));
    let before = cluster.dump("rent");
    // The bug: the data migration also deletes the first quarter's ledger rows.
    let buggy = format!("{RENT_MIGRATION}\nDELETE FROM \"RentLedger\" WHERE period < '2025-04-01';\n");
    let migration = env.write("migration.sql", &buggy);
    let r = guard_psql(&env, &cluster, &["--json"], &migration);
    assert_eq!(r.code, 79, "a check failed and the snapshot was restored: {r:?}");
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("one JSON document");
    assert_eq!(v["outcome"], "restored", "{v}");
    let failed: Vec<_> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["passed"] == false)
        .collect();
    assert_eq!(failed.len(), 1, "{v}");
    assert_eq!(failed[0]["name"], "ledger rows kept");

    // Everything came back: data, the dropped generated column; and what the migration
    // created (table, columns) is gone.
    assert_eq!(cluster.dump("rent"), before, "the database came back exactly");
    assert_eq!(
        cluster.psql(
            "rent",
            "SELECT count(*) FROM pg_tables WHERE tablename = 'ElectricityBill'"
        ),
        "0"
    );
    assert_eq!(
        cluster.psql("rent", "SELECT count(*) FROM information_schema.columns WHERE table_name = 'RentLedger' AND column_name = 'daysStayed'"),
        "0"
    );
    assert_eq!(cluster.psql("rent", r#"SELECT count(*) FROM "RentLedger""#), "31");
    assert_eq!(
        cluster.psql(
            "rent",
            "SELECT count(*) FROM pg_trigger WHERE tgname = 'RentLedger_touch'"
        ),
        "1"
    );

    // The fingerprints taken at snapshot time match the restored database.
    let pre = manifest(&env, &cluster, v["snapshot_id"].as_str().unwrap());
    let rescue_id = v["rescue_id"].as_str().unwrap();
    let rescue = manifest(&env, &cluster, rescue_id);
    let fp_pre = &pre["targets"][0]["fingerprints"];
    let fp_rescue = &rescue["targets"][0]["fingerprints"];
    assert_eq!(
        fp_rescue["RentLedger"]["rows"], 21,
        "rescue snapshot holds the failed state: {fp_rescue}"
    );
    assert!(fp_rescue["ElectricityBill"].is_object(), "{fp_rescue}");
    assert_ne!(fp_pre["@schema"], fp_rescue["@schema"]);
    assert_ne!(fp_pre["@schema.columns"], fp_rescue["@schema.columns"]);
    assert_eq!(
        fp_pre["@schema.triggers"], fp_rescue["@schema.triggers"],
        "the migration added no trigger"
    );
    // The failed state is kept in the rescue dump, readable by hand.
    let list = pg_restore_list(&cluster, &artifact_path(&env, &rescue, ".dump.gz"));
    assert!(list.contains("TABLE public ElectricityBill"), "{list}");

    // A second, manual restore of the rescue snapshot brings the failed state back, then the
    // pre-run snapshot again: restore is repeatable in both directions.
    let r2 = run_env(&env, &cluster, &["restore", rescue_id, "--yes", "--no-rescue"]);
    assert_eq!(r2.code, 0, "{r2:?}");
    assert_eq!(cluster.psql("rent", r#"SELECT count(*) FROM "ElectricityBill""#), "62");
    let r3 = run_env(
        &env,
        &cluster,
        &["restore", v["snapshot_id"].as_str().unwrap(), "--yes", "--no-rescue"],
    );
    assert_eq!(r3.code, 0, "{r3:?}");
    assert_eq!(cluster.dump("rent"), before);
}

#[test]
fn migration_failing_halfway_restores_plain_format_through_psql() {
    let cluster = rent_cluster();
    let env = env_with(&cluster, "format = \"plain\"", RENT_CHECKS);
    let before = cluster.dump("rent");
    let broken = format!("{RENT_MIGRATION}\nSELECT * FROM \"NoSuchTable\";\n");
    let migration = env.write("migration.sql", &broken);
    let r = guard_psql(&env, &cluster, &[], &migration);
    assert_eq!(r.code, 3, "psql's own exit code passes through: {r:?}");
    assert!(r.stderr.contains("restored"), "{r:?}");
    assert_eq!(cluster.dump("rent"), before);

    let snaps = list(&env, &cluster);
    let pre = snaps.iter().find(|s| s["kind"] == "pre-run").unwrap();
    let m = manifest(&env, &cluster, pre["id"].as_str().unwrap());
    let sql = String::from_utf8(gunzip(&artifact_path(&env, &m, "rent.sql.gz"))).unwrap();
    assert!(sql.contains("CREATE TABLE public.\"RentLedger\""), "a stock plain dump");
    assert!(sql.contains("PostgreSQL database dump complete"));
}

#[test]
fn old_pg_dump_is_refused_before_anything_runs() {
    let cluster = rent_cluster();
    let env = Env::new();
    let bin = env.path("oldbin");
    std::fs::create_dir_all(&bin).unwrap();
    for tool in ["pg_dump", "pg_restore", "psql"] {
        let p = bin.join(tool);
        std::fs::write(&p, format!("#!/bin/sh\necho '{tool} (PostgreSQL) 9.6.0'\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    env.write(
        "guard.toml",
        "name = \"rent-data\"\nstore = \"backups\"\n\n[[target]]\nname = \"rent\"\nkind = \"postgres\"\nurl = \"${DATABASE_URL}\"\npg_bin = \"oldbin\"\n",
    );
    let marker = env.path("command-ran");
    let r = run_env(&env, &cluster, &["--", "touch", marker.to_str().unwrap()]);
    assert_eq!(r.code, 69, "{r:?}");
    let server_major = cluster.psql("postgres", "SELECT current_setting('server_version_num')::int / 10000");
    assert!(
        r.stderr.contains(&format!("pg_dump {server_major} or newer is needed")),
        "{r:?}"
    );
    assert!(r.stderr.contains("9.6.0"), "names what it found: {r:?}");
    assert!(
        r.stderr.contains(&format!("postgresql-client-{server_major}")),
        "says how to install: {r:?}"
    );
    assert!(!marker.exists(), "the command must not run without a snapshot");
    assert!(
        !env.path("backups/snapshots").exists()
            || std::fs::read_dir(env.path("backups/snapshots"))
                .unwrap()
                .next()
                .is_none()
    );
}

/// Wrappers for pg_dump, pg_restore and psql that record their argv and whether they got a
/// password through the environment, then run the real tool.
fn wrapper_bin(env: &Env, real: &Path) -> (PathBuf, PathBuf) {
    let bin = env.path("wrapbin");
    let log = env.path("argv.log");
    std::fs::create_dir_all(&bin).unwrap();
    for tool in ["pg_dump", "pg_restore", "psql"] {
        let p = bin.join(tool);
        std::fs::write(
            &p,
            format!(
                // One write per line: pg_dump and the pg_restore checking its stream run at
                // the same time, and their lines must not interleave.
                "#!/bin/sh\nline='{tool}'\nfor a in \"$@\"; do line=\"$line $a\"; done\nline=\"$line | cmdline=$(tr '\\0' ' ' < /proc/$$/cmdline)\"\n[ -n \"$PGPASSWORD\" ] && line=\"$line | env-password\"\nprintf '%s\\n' \"$line\" >> '{}'\nexec '{}' \"$@\"\n",
                log.display(),
                real.join(tool).display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    (bin, log)
}

#[test]
fn password_never_appears_in_output_files_or_child_argv() {
    let password = "Sekr1t-pw-4711-zebra";
    let cluster = Cluster::start_with_password(password);
    cluster.createdb("rent");
    cluster.psql("rent", RENT_SCHEMA);
    let env = Env::new();
    let (bin, log) = wrapper_bin(&env, &cluster.bin);
    env.write(
        "guard.toml",
        &format!(
            "name = \"rent-data\"\nstore = \"backups\"\n\n[[target]]\nname = \"rent\"\nkind = \"postgres\"\nurl = \"${{DATABASE_URL}}\"\npg_bin = \"{}\"\n{RENT_CHECKS}",
            bin.display()
        ),
    );
    let migration = env.write(
        "migration.sql",
        &format!("{RENT_MIGRATION}\nDELETE FROM \"RentLedger\";\n"),
    );
    // The migration itself authenticates through PGPASSWORD (run_env sets it).
    let r = guard_psql(&env, &cluster, &[], &migration);
    assert_eq!(r.code, 79, "{r:?}");
    let r_json = guard_psql(&env, &cluster, &["--json"], &migration);
    assert_eq!(r_json.code, 79, "{r_json:?}");
    assert_eq!(cluster.psql("rent", r#"SELECT count(*) FROM "RentLedger""#), "31");
    let list = run_env(&env, &cluster, &["list", "--json"]);
    let snaps: serde_json::Value = serde_json::from_str(&list.stdout).unwrap();
    let mut outputs = vec![r.all(), r_json.all(), list.all()];
    for s in snaps["snapshots"].as_array().unwrap() {
        outputs.push(run_env(&env, &cluster, &["show", s["id"].as_str().unwrap()]).all());
    }
    outputs.push(run_env(&env, &cluster, &["status", "--json"]).all());
    outputs.push(run_env(&env, &cluster, &["--dry-run", "--", "true"]).all());
    for (i, o) in outputs.iter().enumerate() {
        assert!(!o.contains(password), "output {i} holds the password: {o}");
    }
    assert!(
        outputs[2].contains("postgres:***@") || outputs.iter().any(|o| o.contains(":***@")),
        "URLs are shown masked"
    );

    // Every file guard wrote: manifests, journals, run logs, the catalog.
    let mut files = 0;
    for e in walkdir(&env.path("backups")) {
        let bytes = std::fs::read(&e).unwrap();
        assert!(
            !bytes.windows(password.len()).any(|w| w == password.as_bytes()),
            "{} holds the password",
            e.display()
        );
        files += 1;
    }
    assert!(files > 5 && env.path("backups/catalog.db").exists(), "{files}");

    // Children got the password through their environment, never on their command line.
    let argv = std::fs::read_to_string(&log).unwrap();
    assert!(
        argv.lines()
            .any(|l| l.starts_with("pg_dump") && l.contains("--snapshot=")),
        "{argv}"
    );
    assert!(
        argv.lines()
            .any(|l| l.starts_with("psql") && l.contains("ON_ERROR_STOP=1")),
        "{argv}"
    );
    assert!(
        argv.lines()
            .filter(|l| !l.contains("--version"))
            .all(|l| l.contains("env-password")),
        "{argv}"
    );
    assert!(!argv.contains(password), "{argv}");
}

fn walkdir(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walkdir(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn other_sessions_are_refused_by_name_or_terminated() {
    let cluster = rent_cluster();
    let env = env_with(&cluster, "", "");
    let snap = run_env(&env, &cluster, &["snapshot", "--json"]);
    assert_eq!(snap.code, 0, "{snap:?}");
    let id = serde_json::from_str::<serde_json::Value>(&snap.stdout).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    cluster.psql("rent", r#"DELETE FROM "RentLedger"; CREATE TABLE stray (x int)"#);

    // An app session holding the database open.
    let mut app = cluster
        .client("psql", "rent")
        .env("PGAPPNAME", "rent-kiosk")
        .args(["-X", "-c", "SELECT pg_sleep(300)"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while cluster.psql(
        "postgres",
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'rent-kiosk'",
    ) != "1"
    {
        assert!(std::time::Instant::now() < deadline, "the app session never connected");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let r = run_env(&env, &cluster, &["restore", &id, "--yes", "--no-rescue"]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains("application \"rent-kiosk\""),
        "names the session: {r:?}"
    );
    assert!(
        r.stderr.contains("sessions = \\\"terminate\\\"") || r.stderr.contains("sessions = \"terminate\""),
        "{r:?}"
    );
    assert_eq!(
        cluster.psql("rent", r#"SELECT count(*) FROM "RentLedger""#),
        "0",
        "nothing was changed"
    );
    assert!(app.try_wait().unwrap().is_none(), "the session was left alone");

    let env2 = env_with(&cluster, "sessions = \"terminate\"", "");
    std::fs::rename(env.path("backups"), env2.path("backups")).unwrap();
    let r = run_env(&env2, &cluster, &["restore", &id, "--yes", "--no-rescue"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("terminated 1 other session"), "{r:?}");
    assert_eq!(cluster.psql("rent", r#"SELECT count(*) FROM "RentLedger""#), "31");
    assert_eq!(
        cluster.psql("rent", "SELECT count(*) FROM pg_tables WHERE tablename = 'stray'"),
        "0"
    );
    let status = app.wait().unwrap();
    assert!(!status.success(), "the app session was terminated");
}

/// A restore that fails partway — here an index whose function finds its table through
/// `search_path`, which pg_dump empties, so the replay's `CREATE INDEX` fails after every table
/// and its rows were recreated — leaves the live database exactly as it was, including the role
/// the restore had recreated in the same transaction. A role dropped since the snapshot is
/// recreated `NOLOGIN`, named in a warning, and owns its objects again.
#[test]
fn a_restore_that_fails_midway_rolls_back_whole() {
    let cluster = rent_cluster();
    // Tenant belongs to an app role; the snapshots' dumps say so.
    cluster.psql("rent", r#"CREATE ROLE rentapp; ALTER TABLE "Tenant" OWNER TO rentapp"#);
    let env = env_with(&cluster, "", "");
    let snapshot = |env: &Env| {
        let snap = run_env(env, &cluster, &["snapshot", "--json"]);
        assert_eq!(snap.code, 0, "{snap:?}");
        serde_json::from_str::<serde_json::Value>(&snap.stdout).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    cluster.psql(
        "rent",
        r#"CREATE FUNCTION tenant_name(text) RETURNS text LANGUAGE sql IMMUTABLE AS 'SELECT name FROM "Tenant" WHERE id = $1';
           CREATE INDEX ledger_tenant_name ON "RentLedger" (tenant_name("tenantId"))"#,
    );
    let broken = snapshot(&env);
    cluster.psql("rent", "DROP INDEX ledger_tenant_name; DROP FUNCTION tenant_name(text)");
    let good = snapshot(&env);

    // Later the role is dropped and the data changes.
    cluster.psql("rent", r#"REASSIGN OWNED BY rentapp TO postgres"#);
    cluster.psql("rent", r#"DROP OWNED BY rentapp; DROP ROLE rentapp"#);
    cluster.psql(
        "rent",
        r#"DELETE FROM "RentLedger" WHERE id = 'l1'; CREATE TABLE stray (x int)"#,
    );
    let changed = cluster.dump("rent");
    let r = run_env(&env, &cluster, &["restore", &broken, "--yes", "--no-rescue"]);
    assert_eq!(r.code, 80, "{r:?}");
    assert!(
        r.stderr.contains("rolled back") && r.stderr.contains("\"Tenant\" does not exist"),
        "says why and that nothing changed: {r:?}"
    );
    assert_eq!(
        cluster.dump("rent"),
        changed,
        "the live database is exactly as before the attempt"
    );
    assert_eq!(
        cluster.psql("postgres", "SELECT count(*) FROM pg_roles WHERE rolname = 'rentapp'"),
        "0",
        "the role recreated for the restore was rolled back with it"
    );

    // The snapshot without that index restores, recreating the role for its objects.
    let r = run_env(&env, &cluster, &["restore", &good, "--yes", "--no-rescue"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains("role rentapp no longer exists") && r.stderr.contains("NOLOGIN"),
        "names the role it recreated: {r:?}"
    );
    assert_eq!(
        cluster.psql("rent", "SELECT count(*) FROM pg_tables WHERE tablename = 'stray'"),
        "0"
    );
    assert_eq!(
        cluster.psql("rent", r#"SELECT tableowner FROM pg_tables WHERE tablename = 'Tenant'"#),
        "rentapp"
    );
    assert_eq!(
        cluster.psql("postgres", "SELECT rolcanlogin FROM pg_roles WHERE rolname = 'rentapp'"),
        "f"
    );

    // A truncated artifact is refused before anything is touched, naming the file.
    cluster.psql("rent", r#"DELETE FROM "RentLedger" WHERE id = 'l2'"#);
    let changed = cluster.dump("rent");
    let m = manifest(&env, &cluster, &good);
    let art = artifact_path(&env, &m, ".dump.gz");
    let bytes = std::fs::read(&art).unwrap();
    std::fs::write(&art, &bytes[..bytes.len() / 2]).unwrap();
    let r = run_env(&env, &cluster, &["restore", &good, "--yes", "--no-rescue"]);
    assert_eq!(r.code, 65, "{r:?}");
    assert!(r.stderr.contains("rent.dump.gz"), "{r:?}");
    assert_eq!(cluster.dump("rent"), changed, "the live database is untouched");
}

/// A pg_bin whose pg_dump reports the real version but then runs `body` instead of dumping.
fn broken_pg_dump_bin(env: &Env, real: &Path, body: &str) -> PathBuf {
    let bin = env.path("brokenbin");
    std::fs::create_dir_all(&bin).unwrap();
    for tool in ["pg_restore", "psql"] {
        std::os::unix::fs::symlink(real.join(tool), bin.join(tool)).unwrap();
    }
    let p = bin.join("pg_dump");
    std::fs::write(
        &p,
        format!(
            "#!/bin/sh\n[ \"$1\" = --version ] && exec '{}' --version\n{body}\n",
            real.join("pg_dump").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

#[test]
fn pg_dump_failing_or_writing_nothing_stops_the_run() {
    let cluster = rent_cluster();
    // A real dump whose last bytes never arrive, from a pg_dump that still exits 0: its table
    // of contents is whole (`pg_restore --list` reads it), a data block is cut short.
    let truncated = format!(
        "f=$(mktemp); '{}' \"$@\" > \"$f\"; n=$(wc -c < \"$f\"); head -c $((n - 40)) \"$f\"; rm -f \"$f\"; exit 0",
        cluster.bin.join("pg_dump").display()
    );
    for (format, body, expect) in [
        (
            "custom",
            "echo 'pg_dump: error: connection lost' >&2; exit 1",
            "pg_dump exited 1: pg_dump: error: connection lost",
        ),
        ("custom", "exit 0", "pg_dump wrote nothing"),
        (
            "custom",
            "printf 'PGDMP-not-really'; exit 0",
            "pg_restore cannot read the archive",
        ),
        ("custom", truncated.as_str(), "pg_restore cannot read the archive"),
        (
            "plain",
            "printf -- '--\\n-- PostgreSQL database dump\\n--\\nCREATE TABLE x (id int);\\n'; exit 0",
            "lacks pg_dump's \"dump complete\" trailer",
        ),
    ] {
        let env = Env::new();
        let bin = broken_pg_dump_bin(&env, &cluster.bin, body);
        env.write(
            "guard.toml",
            &format!(
                "name = \"rent-data\"\nstore = \"backups\"\n\n[[target]]\nname = \"rent\"\nkind = \"postgres\"\nurl = \"${{DATABASE_URL}}\"\npg_bin = \"{}\"\nformat = \"{format}\"\n",
                bin.display()
            ),
        );
        let marker = env.path("command-ran");
        let r = run_env(&env, &cluster, &["--", "touch", marker.to_str().unwrap()]);
        assert_eq!(r.code, 69, "{body}: {r:?}");
        assert!(r.stderr.contains(expect), "{body}: {r:?}");
        assert!(!marker.exists(), "{body}: the command ran without a snapshot");
        let snaps = std::fs::read_dir(env.path("backups/snapshots"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(snaps, 0, "{body}: nothing partial is left in the store");
    }
}

#[test]
fn without_stdbuf_the_tools_run_alone_and_the_lifecycle_is_unchanged() {
    // guard gives pg_dump, pg_restore and psql 1 MiB stdio buffers through coreutils' stdbuf
    // when it works here; on a machine without it (here: a PATH where it cannot be found) they
    // run alone, and snapshot, validation, restore and its proof all still happen.
    let cluster = rent_cluster();
    let env = env_with(&cluster, "", TENANT_CHECK);
    let before = cluster.dump("rent");
    let psql = cluster.bin.join("psql");
    let empty = env.path("empty-path");
    std::fs::create_dir_all(&empty).unwrap();
    let r: Run = pg_cmd(
        &env,
        &cluster,
        &[
            "--",
            psql.to_str().unwrap(),
            "-X",
            "-c",
            "UPDATE \"Tenant\" SET name = name || ' (moved)'",
        ],
    )
    .env("PATH", &empty)
    .output()
    .expect("run guard")
    .into();
    assert_eq!(r.code, 79, "the check fails and the database is restored: {r:?}");
    assert!(r.stderr.contains("restored"), "{r:?}");
    assert_eq!(cluster.dump("rent"), before);
}

#[test]
fn a_database_dropped_by_the_command_is_recreated_and_restored() {
    let cluster = rent_cluster();
    let env = env_with(&cluster, "", TENANT_CHECK);
    let before = cluster.dump("rent");
    let psql = cluster.bin.join("psql");
    let r = run_env(
        &env,
        &cluster,
        &[
            "--",
            psql.to_str().unwrap(),
            "-X",
            "-d",
            "postgres",
            "-c",
            "DROP DATABASE rent",
        ],
    );
    assert_eq!(r.code, 79, "the check cannot read a dropped database: {r:?}");
    assert!(r.stderr.contains("created it"), "{r:?}");
    assert_eq!(cluster.dump("rent"), before);
    let snaps = list(&env, &cluster);
    let rescue = snaps.iter().find(|s| s["kind"] == "rescue").expect("a rescue snapshot");
    let m = manifest(&env, &cluster, rescue["id"].as_str().unwrap());
    assert_eq!(m["targets"][0]["absent"], true, "the failed state: no database: {m}");
}

#[test]
fn drills_restore_into_a_scratch_database_and_drop_it() {
    let cluster = rent_cluster();
    let drill_checks = r#"
[drill]
max_age = "2d"

[[drill.check]]
name = "ledger restored"
target = "rent"
sql = 'SELECT count(*) FROM "RentLedger"'
expect = "== 31"

[[drill.check]]
name = "drill reads the scratch copy"
target = "rent"
sql = "SELECT current_database() LIKE 'guard_drill_rent_%' OR current_database() = 'rent_drill'"
expect = "t"
"#;
    // Beside the live database (no drill_url): a generated scratch name.
    let env = env_with(&cluster, "", drill_checks);
    let snap = run_env(&env, &cluster, &["snapshot", "--json"]);
    assert_eq!(snap.code, 0, "{snap:?}");
    cluster.psql("rent", r#"DELETE FROM "RentLedger""#);
    let r = run_env(&env, &cluster, &["drill", "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("one JSON document");
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["checks"].as_array().unwrap().len(), 2, "{v}");
    assert_eq!(
        cluster.psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'guard_drill%'"
        ),
        "0",
        "scratch dropped"
    );
    assert_eq!(
        cluster.psql("rent", r#"SELECT count(*) FROM "RentLedger""#),
        "0",
        "the live database is not touched"
    );

    // On drill_url's server, into its database; an existing database there is never touched.
    let env2 = env_with(
        &cluster,
        &format!("drill_url = \"{}\"", cluster.url("rent_drill")),
        drill_checks,
    );
    std::fs::rename(env.path("backups"), env2.path("backups")).unwrap();
    let r = run_env(&env2, &cluster, &["drill", "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        cluster.psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname = 'rent_drill'"
        ),
        "0"
    );
    cluster.createdb("rent_drill");
    cluster.psql("rent_drill", "CREATE TABLE precious (x int)");
    let r = run_env(&env2, &cluster, &["drill", "--json"]);
    assert_eq!(r.code, 66, "{r:?}");
    assert!(r.all().contains("already exists"), "{r:?}");
    assert_eq!(
        cluster.psql(
            "rent_drill",
            "SELECT count(*) FROM pg_tables WHERE tablename = 'precious'"
        ),
        "1"
    );
}

/// Issue 6: a healthy SQLite + PostgreSQL policy drills green and records each target's time to
/// restore; a damaged artifact fails the drill naming it, and no scratch database or file is
/// left behind even though the drill failed halfway (after the PostgreSQL target).
#[test]
fn sqlite_and_postgres_policy_drills_green_then_fails_cleanly() {
    let cluster = rent_cluster();
    let env = env_with(
        &cluster,
        "",
        r#"
[[target]]
name = "app"
kind = "sqlite"
path = "app.db"

[[drill.check]]
name = "ledger restored"
target = "rent"
sql = 'SELECT count(*) FROM "RentLedger"'
expect = "== 31"

[[drill.check]]
name = "payments restored"
target = "app"
sql = "SELECT count(*) FROM payment"
expect = "== 30"
"#,
    );
    lending_db(&env.path("app.db"), 10);
    let snap = run_env(&env, &cluster, &["snapshot"]);
    assert_eq!(snap.code, 0, "{snap:?}");
    let id = snap.stdout.trim().to_string();

    let r = run_env(&env, &cluster, &["drill", "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    let targets = v["targets"].as_array().unwrap();
    assert_eq!(
        targets
            .iter()
            .map(|t| t["target"].as_str().unwrap())
            .collect::<Vec<_>>(),
        vec!["rent", "app"]
    );
    assert!(
        targets
            .iter()
            .all(|t| t["ok"] == true && t["restore_seconds"].as_f64().is_some()),
        "{v}"
    );
    assert!(
        v["checks"].as_array().unwrap().iter().all(|c| c["passed"] == true),
        "{v}"
    );
    let history = run_env(&env, &cluster, &["drills", "--json"]);
    let h: serde_json::Value = serde_json::from_str(&history.stdout).unwrap();
    assert_eq!(h["drills"].as_array().unwrap().len(), 1, "{h}");

    // Damage the SQLite artifact: the drill restores `rent` into scratch first, then fails on `app`.
    let gz = env.path(&format!("backups/snapshots/{id}/app.sqlite.gz"));
    let mut bytes = std::fs::read(&gz).unwrap();
    let n = bytes.len();
    bytes[n / 3] ^= 0x40;
    std::fs::write(&gz, bytes).unwrap();
    let r = run_env(&env, &cluster, &["drill"]);
    assert_eq!(r.code, 66, "{r:?}");
    assert!(r.all().contains("app.sqlite.gz"), "names the artifact: {r:?}");
    assert_eq!(
        cluster.psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'guard_drill%'"
        ),
        "0",
        "no scratch database left"
    );
    let leftovers = std::fs::read_dir(env.path("backups/tmp"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(leftovers, 0, "no scratch files left");
    let s: serde_json::Value = serde_json::from_str(&run_env(&env, &cluster, &["status", "--json"]).stdout).unwrap();
    assert_eq!(s["last_drill"]["ok"], false, "{s}");
    assert_eq!(s["last_good_drill"]["snapshot_id"], id.as_str(), "{s}");
}
