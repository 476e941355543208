//! Connected sessions found before the command, not after the damage (issue 15, F3): with
//! `sessions = "refuse"` (the default) a guarded run whose restore would be refused is refused
//! before anything runs (exit 69), naming the sessions once; `guard restore` and `guard recover`
//! take a one-off `--terminate-sessions`. Seed 003's RDS ERP: ECS tasks stay connected.

use crate::common::pg::Cluster;
use crate::common::*;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const ERP: &str = r#"
CREATE TABLE "User" (id text PRIMARY KEY, email text NOT NULL);
CREATE TABLE "OvertimeSettings" (id text PRIMARY KEY, weekly_hours int NOT NULL);
CREATE TABLE "TimeEntry" (id serial PRIMARY KEY, "userId" text REFERENCES "User"(id), hours numeric NOT NULL);
INSERT INTO "User" SELECT 'u' || i, 'u' || i || '@ortmeier.example' FROM generate_series(1, 9) i;
INSERT INTO "OvertimeSettings" VALUES ('default', 40), ('night', 35);
INSERT INTO "TimeEntry" ("userId", hours) SELECT 'u' || (1 + i % 9), 7.5 FROM generate_series(1, 5) i;
"#;

/// The ERP database on a fresh cluster.
fn erp() -> Cluster {
    let c = Cluster::start();
    c.createdb("erp");
    c.psql("erp", ERP);
    c
}

fn erp_env(extra_target: &str, extra: &str) -> Env {
    let env = Env::new();
    env.write(
        "guard.toml",
        &format!(
            "name = \"erp\"\nstore = \"backups\"\n\n[[target]]\nname = \"erp\"\nkind = \"postgres\"\nurl = \"${{DATABASE_URL}}\"\n{extra_target}\n\n[[check]]\nname = \"users untouched\"\ntarget = \"erp\"\nuntouched = [\"User\"]\n{extra}"
        ),
    );
    env
}

fn guard(env: &Env, cluster: &Cluster, args: &[&str]) -> Run {
    env.cmd(args)
        .env("DATABASE_URL", cluster.url("erp"))
        .env("PGHOST", cluster.sock())
        .env("PGPORT", cluster.port.to_string())
        .env("PGUSER", "postgres")
        .env("PGDATABASE", "erp")
        .output()
        .unwrap()
        .into()
}

/// `n` app sessions (application `ots-erp-app`) connected to erp, idle in a long sleep.
fn app_sessions(cluster: &Cluster, n: usize) -> Vec<Child> {
    let apps: Vec<Child> = (0..n)
        .map(|_| {
            cluster
                .client("psql", "erp")
                .env("PGAPPNAME", "ots-erp-app")
                .args(["-X", "-c", "SELECT pg_sleep(300)"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster.psql(
        "postgres",
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'ots-erp-app'",
    ) != n.to_string()
    {
        assert!(Instant::now() < deadline, "the app sessions never connected");
        std::thread::sleep(Duration::from_millis(100));
    }
    apps
}

fn stop(apps: Vec<Child>) {
    for mut a in apps {
        let _ = a.kill();
        let _ = a.wait();
    }
}

const DAMAGE: &str = r#"DELETE FROM "TimeEntry"; UPDATE "User" SET email = 'x'"#;

#[test]
fn app_sessions_refuse_the_run_before_the_command_and_a_before_hook_that_stops_the_app_lets_it_run() {
    let cluster = erp();
    let original = cluster.dump("erp");
    let env = erp_env("", "");
    let apps = app_sessions(&cluster, 2);
    let psql = cluster.bin.join("psql").display().to_string();
    let r = guard(&env, &cluster, &["--", &psql, "-X", "-c", DAMAGE]);
    assert_eq!(r.code, 69, "refused before the command: {r:?}");
    assert_eq!(cluster.dump("erp"), original, "the command never ran");
    assert_eq!(
        r.stderr.matches("application \"ots-erp-app\"").count(),
        1,
        "the sessions are named once: {r:?}"
    );
    for w in [
        "2 other sessions on database erp",
        "×2",
        "user postgres",
        "client local",
        "`before` hook",
        "sessions = \"terminate\"",
        "nothing was run",
    ] {
        assert!(r.stderr.contains(w), "says {w:?}: {r:?}");
    }
    assert!(snapshots(&env).is_empty(), "no snapshot was taken");
    assert_eq!(
        cluster.psql(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'ots-erp-app'"
        ),
        "2",
        "the sessions were left alone"
    );
    // `guard status` has nothing to say: nothing was run.
    let s = guard(&env, &cluster, &["status"]);
    assert_eq!(s.code, 0, "{s:?}");
    // `guard check` counts them too, read-only.
    let c = guard(&env, &cluster, &["check"]);
    assert_eq!(c.code, 69, "{c:?}");
    assert!(
        c.stdout
            .contains("FAIL  target erp: sessions: 2 other sessions on database erp"),
        "{c:?}"
    );

    // Way out 1: a `before` hook that stops the app. The bug is then caught and undone.
    let env = erp_env(
        "",
        &format!(
            "\n[hooks]\nbefore = [\"{psql} -X -q -c \\\"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'ots-erp-app'\\\" >/dev/null\"]\n"
        ),
    );
    let r = guard(&env, &cluster, &["--", &psql, "-X", "-c", DAMAGE]);
    assert_eq!(r.code, 79, "ran, the check failed, restored: {r:?}");
    assert_eq!(cluster.dump("erp"), original, "restored exactly");
    stop(apps);
    let c = guard(&env, &cluster, &["check"]);
    assert_eq!(c.code, 0, "no session left: {c:?}");
    assert!(c.stdout.contains("pg_dump, pg_restore, psql "), "{c:?}");
}

#[test]
fn sessions_terminate_lets_the_run_start_with_sessions_connected() {
    let cluster = erp();
    let original = cluster.dump("erp");
    let env = erp_env("sessions = \"terminate\"", "");
    let apps = app_sessions(&cluster, 1);
    let psql = cluster.bin.join("psql").display().to_string();
    let r = guard(&env, &cluster, &["--", &psql, "-X", "-c", DAMAGE]);
    assert_eq!(r.code, 79, "{r:?}");
    assert!(r.stderr.contains("terminated 1 other session on database erp"), "{r:?}");
    assert_eq!(cluster.dump("erp"), original, "restored exactly");
    stop(apps);
}

#[test]
fn restore_and_recover_take_terminate_sessions_once() {
    let cluster = erp();
    let original = cluster.dump("erp");
    let env = erp_env("", "");
    let psql = cluster.bin.join("psql").display().to_string();

    // A failed state kept (--no-restore), then the app reconnects.
    let r = guard(&env, &cluster, &["--no-restore", "--", &psql, "-X", "-c", DAMAGE]);
    assert_eq!(r.code, 81, "{r:?}");
    let damaged = cluster.dump("erp");
    assert_ne!(damaged, original);
    let apps = app_sessions(&cluster, 2);
    let r = guard(&env, &cluster, &["recover", "--yes"]);
    assert_ne!(r.code, 0, "refused: {r:?}");
    assert_eq!(cluster.dump("erp"), damaged, "nothing was changed");
    assert_eq!(
        r.stderr.matches("application \"ots-erp-app\"").count(),
        1,
        "the sessions are named once: {r:?}"
    );
    assert_eq!(
        r.stderr.matches("--terminate-sessions").count(),
        1,
        "one way out given once: {r:?}"
    );
    assert!(r.stderr.contains("recover --terminate-sessions"), "{r:?}");
    let r = guard(&env, &cluster, &["recover", "--yes", "--terminate-sessions"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains("terminated 2 other sessions on database erp"),
        "{r:?}"
    );
    assert_eq!(cluster.dump("erp"), original, "recovered exactly");
    stop(apps);

    // `guard restore`: the snapshot taken before the run, over new damage.
    let id = snapshots(&env)
        .iter()
        .find(|s| s["kind"] == "pre-run")
        .map(|s| s["id"].as_str().unwrap().to_string())
        .expect("a pre-run snapshot");
    cluster.psql("erp", DAMAGE);
    let apps = app_sessions(&cluster, 1);
    let r = guard(&env, &cluster, &["restore", &id, "--yes", "--no-rescue"]);
    assert_ne!(r.code, 0, "{r:?}");
    assert_eq!(r.stderr.matches("application \"ots-erp-app\"").count(), 1, "{r:?}");
    assert!(
        r.stderr.contains(&format!("restore {id} --terminate-sessions")),
        "{r:?}"
    );
    let r = guard(
        &env,
        &cluster,
        &["restore", &id, "--yes", "--no-rescue", "--terminate-sessions"],
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(cluster.dump("erp"), original, "restored exactly");
    stop(apps);
}
