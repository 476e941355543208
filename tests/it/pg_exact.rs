//! PostgreSQL restores are exact (issue 14 item 7; red-team findings 7, 8 and 16): one
//! differential test over a corpus holding every kind of object a database can hold
//! (`fixtures/pg/corpus.sql`), a migration that changes each of them and fails
//! (`fixtures/pg/corpus_migration.sql`), and a comparison of `pg_dump --create` (which also
//! shows the database's own comment, ACL, connection limit and settings) and of what no dump
//! shows (extension versions; the same database-level state read from the catalog) before the
//! command and after guard's restore — the server's own view, never guard's bookkeeping. Real
//! binary, throwaway clusters.

use crate::common::pg::Cluster;
use crate::common::*;
use std::path::Path;

const CORPUS: &str = include_str!("../fixtures/pg/corpus.sql");
const MIGRATION: &str = include_str!("../fixtures/pg/corpus_migration.sql");

/// `pg_dump -Fp --create` of `db` with everything (comments, owners, ACLs, large objects, and
/// with `--create` the database's own comment, ACL, connection limit, `ALTER DATABASE … SET`
/// and `ALTER ROLE … IN DATABASE … SET`), minus the per-run `\restrict` key lines.
fn full_dump(cluster: &Cluster, db: &str) -> String {
    cluster.dump_with(db, &["-Fp", "--create"])
}

/// What `pg_dump` of one database leaves out: the database's owner, comment, connection limit
/// and ACL, its settings and the role-in-database settings, and the installed extension
/// versions (a dump records only `CREATE EXTENSION name`).
fn database_state(cluster: &Cluster, db: &str) -> String {
    cluster.psql(
        db,
        "SELECT 'owner ' || pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()
         UNION ALL SELECT 'comment ' || coalesce(shobj_description(oid, 'pg_database'), '<none>') FROM pg_database WHERE datname = current_database()
         UNION ALL SELECT 'connlimit ' || datconnlimit FROM pg_database WHERE datname = current_database()
         UNION ALL SELECT 'acl ' || (SELECT string_agg(a::text, ' ' ORDER BY a::text) FROM unnest(coalesce(datacl, acldefault('d', datdba))) a)
           FROM pg_database WHERE datname = current_database()
         UNION ALL (SELECT 'setting ' || coalesce(r.rolname, '-') || ' ' || s.setconfig::text
           FROM pg_db_role_setting s LEFT JOIN pg_roles r ON r.oid = s.setrole
           WHERE s.setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database()) ORDER BY 1)
         UNION ALL (SELECT 'extension ' || extname || ' ' || extversion FROM pg_extension ORDER BY 1)",
    )
}

/// Roles of the cluster (names only: a recreated role is `NOLOGIN`, by design).
fn roles(cluster: &Cluster) -> Vec<String> {
    cluster
        .psql(
            "postgres",
            "SELECT rolname FROM pg_roles WHERE rolname NOT LIKE 'pg\\_%' ORDER BY 1",
        )
        .lines()
        .map(str::to_string)
        .collect()
}

fn policy_env(extra_target: &str) -> Env {
    let env = Env::new();
    env.write(
        "guard.toml",
        &format!(
            "name = \"corpus\"\nstore = \"backups\"\n\n[[target]]\nname = \"rent\"\nkind = \"postgres\"\nurl = \"${{DATABASE_URL}}\"\n{extra_target}\n"
        ),
    );
    env
}

/// `guard ARGS` with DATABASE_URL and the libpq environment pointing at `db`.
fn guard(env: &Env, cluster: &Cluster, db: &str, args: &[&str]) -> Run {
    let mut cmd = env.cmd(args);
    cmd.env("DATABASE_URL", cluster.url(db))
        .env("PGHOST", cluster.sock())
        .env("PGPORT", cluster.port.to_string())
        .env("PGUSER", "postgres")
        .env("PGDATABASE", db);
    if let Some(pw) = &cluster.password {
        cmd.env("PGPASSWORD", pw);
    }
    cmd.output().expect("run guard").into()
}

/// `guard --yes ARGS -- psql -X -v ON_ERROR_STOP=1 -f FILE` on `db`.
fn guard_psql(env: &Env, cluster: &Cluster, db: &str, flags: &[&str], sql: &Path) -> Run {
    let psql = cluster.bin.join("psql").display().to_string();
    let file = sql.display().to_string();
    let mut args: Vec<&str> = vec!["--yes"];
    args.extend_from_slice(flags);
    args.extend(["--", &psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", &file]);
    guard(env, cluster, db, &args)
}

/// A cluster whose database `db` holds the corpus.
fn corpus_cluster(env: &Env, db: &str) -> Cluster {
    let cluster = Cluster::start();
    cluster.createdb(db);
    cluster.psql_file(db, &env.write("corpus.sql", CORPUS));
    cluster
}

/// Line-by-line difference of two texts, for a readable failure.
fn diff(before: &str, after: &str) -> String {
    let b: Vec<&str> = before.lines().collect();
    let a: Vec<&str> = after.lines().collect();
    let mut out = String::new();
    for l in b.iter().filter(|l| !a.contains(l)) {
        out.push_str(&format!("- {l}\n"));
    }
    for l in a.iter().filter(|l| !b.contains(l)) {
        out.push_str(&format!("+ {l}\n"));
    }
    if out.is_empty() && before != after {
        out.push_str("(same lines, different order)\n");
    }
    out
}

/// The differential test: every object of the corpus changed by a failing migration comes back
/// exactly — `pg_dump` before the command equals `pg_dump` after guard's restore, and so does
/// the database-level state pg_dump does not show. The role the migration dropped is recreated
/// `NOLOGIN` with a warning naming it.
#[test]
fn a_failed_migration_over_the_corpus_is_restored_exactly() {
    let db = "rent";
    // `@database` as a check: the migration changes the database-level state.
    let env = policy_env(
        "\n[[check]]\nname = \"database-level state untouched\"\ntarget = \"rent\"\nuntouched = [\"@database\"]",
    );
    let cluster = corpus_cluster(&env, db);
    let before_dump = full_dump(&cluster, db);
    let before_db = database_state(&cluster, db);
    let before_roles = roles(&cluster);
    if let Some(f) = std::env::var_os("GUARD_TEST_DUMP_TO") {
        std::fs::write(f, &before_dump).unwrap();
    }
    // The corpus holds what the test claims to cover.
    for needle in [
        "COMMENT ON SCHEMA public IS 'rent data lives here'",
        "CREATE PUBLICATION rent_pub",
        "CREATE EVENT TRIGGER rent_ddl",
        "SELECT pg_catalog.lo_create('9001')",
        "REFRESH MATERIALIZED VIEW billing.tenant_totals",
        "CREATE EXTENSION IF NOT EXISTS pgcrypto",
        "ALTER DEFAULT PRIVILEGES FOR ROLE postgres GRANT SELECT ON TABLES  TO auditor",
        "CREATE POLICY reporter_sees_2025",
        "GENERATED ALWAYS AS (round",
        "ATTACH PARTITION public.reading_2024",
        "CREATE TYPE public.mood AS ENUM",
        "SELECT pg_catalog.setval('public.ticket_seq', 555, true)",
        "CREATE SERVER rent_files",
        // database-level properties, which `--create` adds to the dump
        "COMMENT ON DATABASE rent IS 'rent database'",
        "ALTER DATABASE rent CONNECTION LIMIT = 50",
        "ALTER DATABASE rent SET work_mem TO '7MB'",
        "ALTER ROLE reporter IN DATABASE rent SET search_path TO 'billing', 'odd, schema', 'public'",
        "GRANT CONNECT,TEMPORARY ON DATABASE rent TO reporter",
    ] {
        assert!(before_dump.contains(needle), "corpus dump lacks {needle:?}");
    }
    for needle in [
        "comment rent database",
        "setting - {work_mem=7MB",
        "setting reporter {\"search_path=billing, \\\"odd, schema\\\", public\"}",
        "reporter=Tc/postgres",
        "connlimit 50",
    ] {
        assert!(before_db.contains(needle), "corpus lacks {needle:?}:\n{before_db}");
    }

    let migration = env.write("migration.sql", MIGRATION);
    let r = guard_psql(&env, &cluster, db, &[], &migration);
    if std::env::var_os("GUARD_TEST_SHOW").is_some() {
        eprintln!("{r:?}");
    }
    assert_eq!(r.code, 3, "psql's exit code passes through after the restore: {r:?}");
    assert!(r.stderr.contains("restored rent"), "{r:?}");
    assert!(
        r.stderr
            .lines()
            .any(|l| l.contains("database-level state untouched") && l.contains("FAIL")),
        "the @database check saw the change: {r:?}"
    );
    assert!(
        r.stderr.contains("role reporter") && r.stderr.contains("NOLOGIN"),
        "the dropped role is recreated NOLOGIN, with a warning naming it: {r:?}"
    );

    let after_dump = full_dump(&cluster, db);
    assert!(
        after_dump == before_dump,
        "pg_dump after the restore differs from before the command:\n{}",
        diff(&before_dump, &after_dump)
    );
    let after_db = database_state(&cluster, db);
    assert!(
        after_db == before_db,
        "database-level state after the restore differs from before the command:\n{}",
        diff(&before_db, &after_db)
    );
    let after_roles = roles(&cluster);
    for role in &before_roles {
        assert!(after_roles.contains(role), "role {role} is back: {after_roles:?}");
    }
    assert_eq!(
        cluster.psql(
            "postgres",
            "SELECT rolcanlogin FROM pg_roles WHERE rolname = 'reporter'"
        ),
        "f",
        "a recreated role cannot log in: guard does not know its password"
    );
}

/// A database whose dump cannot be replayed: an index on a SQL function that reads a table
/// through `search_path`, which pg_dump empties (the restore's `CREATE INDEX` fails, in the
/// post-data section, after the large objects' data).
const UNRESTORABLE: &str = r#"
CREATE TABLE lookup (id int PRIMARY KEY, x int);
INSERT INTO lookup SELECT i, i * 10 FROM generate_series(1, 50) i;
CREATE FUNCTION lookup_x(int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT x FROM lookup WHERE id = $1';
CREATE TABLE t (id int PRIMARY KEY, v text);
INSERT INTO t SELECT i, 'v' || i FROM generate_series(1, 50) i;
CREATE INDEX t_lookup ON t (lookup_x(id));
CREATE ROLE viewer;
GRANT SELECT ON t TO viewer;
DO $$ BEGIN PERFORM lo_from_bytea(9001, 'a large object'); END $$;
GRANT SELECT ON LARGE OBJECT 9001 TO viewer;
CREATE MATERIALIZED VIEW tv AS SELECT count(*) AS n FROM t;
"#;

/// Red-team finding 7: the dump's own `BEGIN;`/`COMMIT;` around large-object data must not
/// split guard's single transaction. A restore that fails after that point (here: an index the
/// dump cannot rebuild) leaves the live database exactly as it was, in both formats, and says
/// so.
#[test]
fn a_restore_failing_after_the_large_objects_changes_nothing() {
    for format in ["custom", "plain"] {
        let env = policy_env(&format!("format = \"{format}\""));
        let cluster = Cluster::start();
        cluster.createdb("rent");
        cluster.psql("rent", UNRESTORABLE);
        let snap = guard(&env, &cluster, "rent", &["snapshot", "--json"]);
        assert_eq!(snap.code, 0, "{snap:?}");
        let id = serde_json::from_str::<serde_json::Value>(&snap.stdout).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();

        cluster.psql(
            "rent",
            "UPDATE t SET v = 'BAD' WHERE id <= 10; CREATE TABLE junk (x int); SELECT lo_unlink(9001)",
        );
        let changed = full_dump(&cluster, "rent");
        let r = guard(&env, &cluster, "rent", &["restore", &id, "--yes", "--no-rescue"]);
        assert_eq!(r.code, 80, "{format}: {r:?}");
        assert!(
            r.stderr.contains("rolled back") && r.stderr.contains("lookup"),
            "{format}: says why, and that nothing changed: {r:?}"
        );
        let after = full_dump(&cluster, "rent");
        assert!(
            after == changed,
            "{format}: the failed restore changed the live database:\n{}",
            diff(&changed, &after)
        );
    }
}

/// What a restore cannot put back is found before the command runs, never during the restore.
/// As a superuser: a subscription (a restore of a custom archive leaves subscriptions as they
/// are) and an extension at a version other than its default (a restore installs the default)
/// are named in warnings before the command starts, and the restore then does what they said.
/// With a plain dump, which would recreate the subscription, the run is refused (exit 69, the
/// command never runs). As a role that is not a superuser, an event trigger (only a superuser
/// can recreate one) is refused the same way.
#[test]
fn what_a_restore_cannot_put_back_is_reported_before_the_command_runs() {
    let env = policy_env("");
    let cluster = Cluster::start();
    cluster.createdb("rent");
    cluster.psql(
        "rent",
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 10) g;
         CREATE EXTENSION hstore VERSION '1.4';
         CREATE SUBSCRIPTION rent_sub CONNECTION 'dbname=elsewhere' PUBLICATION rent_pub WITH (connect = false);",
    );
    let before = full_dump(&cluster, "rent");
    let mig = env.write("mig.sql", "UPDATE t SET v = 'BAD';\nSELECT 1 / 0;\n");
    let r = guard_psql(&env, &cluster, "rent", &[], &mig);
    if std::env::var_os("GUARD_TEST_SHOW").is_some() {
        eprintln!("{r:?}");
    }
    assert_eq!(r.code, 3, "{r:?}");
    let running = r.stderr.find("verified; running").expect("the command ran");
    for needle in [
        "subscription(s) rent_sub stay as the command leaves them",
        "extension hstore is at version 1.4; a restore recreates it at 1.8",
    ] {
        let at = r
            .stderr
            .find(needle)
            .unwrap_or_else(|| panic!("no warning {needle:?}: {r:?}"));
        assert!(at < running, "reported before the command runs: {r:?}");
    }
    assert!(r.stderr.contains("restored rent"), "{r:?}");
    assert_eq!(
        full_dump(&cluster, "rent"),
        before,
        "restored; the subscription left as it was"
    );
    assert_eq!(
        cluster.psql("rent", "SELECT extversion FROM pg_extension WHERE extname = 'hstore'"),
        "1.8",
        "as the warning said"
    );

    // A plain dump recreates subscriptions: guard could not restore it in place.
    let plain = policy_env("format = \"plain\"");
    let marker = plain.path("ran");
    let r = guard(
        &plain,
        &cluster,
        "rent",
        &["--yes", "--", "touch", marker.to_str().unwrap()],
    );
    assert_eq!(r.code, 69, "{r:?}");
    assert!(!marker.exists(), "the command never ran");
    assert!(
        r.stderr.contains("rent_sub") && r.stderr.contains("format = \"custom\""),
        "names it and what to do: {r:?}"
    );

    // Not a superuser: the database's owner cannot recreate an event trigger.
    cluster.psql("postgres", "CREATE ROLE owner LOGIN");
    cluster.psql("postgres", "CREATE DATABASE app OWNER owner");
    cluster.psql(
        "app",
        "SET ROLE owner; CREATE TABLE a (id int PRIMARY KEY); RESET ROLE;
         CREATE FUNCTION note() RETURNS event_trigger LANGUAGE plpgsql AS $$ BEGIN END $$;
         CREATE EVENT TRIGGER app_ddl ON ddl_command_end EXECUTE FUNCTION note();",
    );
    let owner = Env::new();
    owner.write(
        "guard.toml",
        &format!(
            "name = \"app\"\nstore = \"backups\"\n\n[[target]]\nname = \"app\"\nkind = \"postgres\"\nurl = \"postgres://owner@/app?host={}&port={}\"\n",
            cluster.sock().display(),
            cluster.port
        ),
    );
    let marker = owner.path("ran");
    let r: Run = owner
        .cmd(&["--yes", "--", "touch", marker.to_str().unwrap()])
        .output()
        .expect("run guard")
        .into();
    assert_eq!(r.code, 69, "{r:?}");
    assert!(!marker.exists(), "the command never ran");
    if std::env::var_os("GUARD_TEST_SHOW").is_some() {
        eprintln!("{r:?}");
    }
    assert!(
        r.stderr.contains("event trigger(s) app_ddl") && r.stderr.contains("superuser"),
        "names it and why: {r:?}"
    );
}
