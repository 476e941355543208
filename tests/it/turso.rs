//! Turso targets end to end with the real binary, against the local fake of Turso's documented
//! Platform API and Hrana-over-HTTP contract (tests/fakes/turso_fake.py): the live service is
//! not reachable from here.

use std::io::{Read, Write as _};
use std::path::Path;

use crate::common::turso::{TursoFake, API_TOKEN, ORG};
use crate::common::*;

pub(crate) const DB: &str = "liveone-tokyo";

/// The seed-002 database: readings of several systems, their 5-minute aggregates, point metadata,
/// the (empty) point tables, and objects of every kind a reload must bring back.
pub(crate) fn seed(path: &Path) {
    let mut c = rusqlite::Connection::open(path).unwrap();
    c.execute_batch(
        "CREATE TABLE readings (id INTEGER PRIMARY KEY, system_id INTEGER NOT NULL, inverter_time INTEGER NOT NULL,
                                solar_w REAL, load_w REAL, battery_soc REAL, raw BLOB);
         CREATE INDEX readings_system_time ON readings (system_id, inverter_time);
         CREATE TABLE readings_agg_5m (system_id INTEGER, interval_end INTEGER, solar_w_avg REAL, load_w_avg REAL,
                                       PRIMARY KEY (system_id, interval_end)) WITHOUT ROWID;
         CREATE TABLE point_info (system_id INTEGER, point_id INTEGER, name TEXT, unit TEXT);
         CREATE TABLE point_readings (id INTEGER PRIMARY KEY AUTOINCREMENT, system_id INTEGER, point_id INTEGER,
                                      measurement_time INTEGER, value REAL, created_at TEXT);
         CREATE TABLE migration_progress (migration_name TEXT, system_id INTEGER, rows_migrated INTEGER,
                                          last_migrated_timestamp INTEGER, PRIMARY KEY (migration_name, system_id));
         CREATE TABLE audit (what TEXT, at INTEGER);
         CREATE TRIGGER readings_audit AFTER DELETE ON readings BEGIN INSERT INTO audit VALUES ('delete', old.id); END;
         CREATE VIEW system_totals AS SELECT system_id, count(*) AS n, sum(solar_w) AS solar FROM readings GROUP BY system_id;",
    )
    .unwrap();
    let tx = c.transaction().unwrap();
    for sys in [1i64, 2, 3, 5] {
        for i in 0..300i64 {
            let t = 1_762_400_000 + i * 60;
            tx.execute(
                "INSERT INTO readings (system_id, inverter_time, solar_w, load_w, battery_soc, raw) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                (sys, t, (i as f64) * 10.1 / 3.0, if i % 7 == 0 { None } else { Some(0.1 + i as f64 / 9.0) }, 55.5, vec![sys as u8, (i % 256) as u8, 0]),
            )
            .unwrap();
            if i % 5 == 0 {
                tx.execute(
                    "INSERT INTO readings_agg_5m VALUES (?1, ?2, ?3, ?4)",
                    (sys, t, i as f64 / 3.0, 1.0 / (i as f64 + 1.0)),
                )
                .unwrap();
            }
        }
        for p in 1..=4i64 {
            tx.execute(
                "INSERT INTO point_info VALUES (?1, ?2, ?3, ?4)",
                (sys, p, format!("point {p} of system {sys} — é"), "W"),
            )
            .unwrap();
        }
    }
    // A point_readings row deleted again: the AUTOINCREMENT counter is ahead of the rows.
    tx.execute_batch(
        "INSERT INTO point_readings (system_id, point_id, measurement_time, value, created_at) VALUES (1, 1, 0, 0.5, 'test');
         DELETE FROM point_readings;
         DELETE FROM audit;",
    )
    .unwrap();
    // Rows whose rowids are not contiguous, in a table without INTEGER PRIMARY KEY.
    tx.execute_batch("INSERT INTO point_info VALUES (9, 9, 'gone', 'W'); DELETE FROM point_info WHERE system_id = 9;")
        .unwrap();
    tx.execute("INSERT INTO point_info VALUES (6, 1, 'mondo', NULL)", [])
        .unwrap();
    tx.commit().unwrap();
}

/// Everything in a database, rowids and the AUTOINCREMENT counters included.
pub(crate) fn full_dump(path: &Path) -> String {
    let mut out = dump(path);
    let c = rusqlite::Connection::open(path).unwrap();
    let mut st = c.prepare("SELECT rowid, * FROM point_info ORDER BY rowid").unwrap();
    let n = st.column_count();
    let mut rows = st.query([]).unwrap();
    while let Some(r) = rows.next().unwrap() {
        out.push_str(
            &(0..n)
                .map(|i| format!("{:?}", r.get_ref(i).unwrap()))
                .collect::<Vec<_>>()
                .join("|"),
        );
        out.push('\n');
    }
    let seq: i64 = c
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = 'point_readings'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    out.push_str(&format!("sqlite_sequence point_readings {seq}\n"));
    out
}

fn policy(fake: &TursoFake, target_extra: &str, checks: &str) -> String {
    format!(
        r#"name = "liveone"
store = "backups"

[[target]]
name = "readings"
kind = "turso"
organization = "{ORG}"
database = "{DB}"
group = "default"
api_token = "${{TURSO_API_TOKEN}}"
api_url = "{}"
{target_extra}
{checks}"#,
        fake.api_url
    )
}

const CHECKS: &str = r#"
[[check]]
name = "raw readings untouched"
target = "readings"
untouched = ["readings", "readings_agg_5m"]

[[check]]
name = "points migrated"
target = "readings"
sql = "SELECT count(*) FROM point_readings"
expect = ">= 2400"

[[check]]
name = "readings count unchanged"
target = "readings"
sql = "SELECT count(*) FROM readings"
expect = "unchanged"
"#;

struct Setup {
    fake: TursoFake,
    env: Env,
    db_token: String,
}

fn setup(target_extra: &str, checks: &str) -> Setup {
    setup_with(|_| target_extra.to_string(), checks)
}

/// `target_extra` may depend on the fake (the source's hostname, known once it runs).
fn setup_with(target_extra: impl Fn(&TursoFake) -> String, checks: &str) -> Setup {
    let fake = TursoFake::start();
    seed(&fake.create_db(DB));
    let db_token = fake.mint(DB);
    let env = Env::new();
    env.write("guard.toml", &policy(&fake, &target_extra(&fake), checks));
    Setup { fake, env, db_token }
}

impl Setup {
    fn guard(&self, args: &[&str]) -> Run {
        self.guard_with_api_token(API_TOKEN, args)
    }

    fn guard_with_api_token(&self, api_token: &str, args: &[&str]) -> Run {
        self.env
            .cmd(args)
            .env("TURSO_API_TOKEN", api_token)
            .env("TURSO_DB_TOKEN", &self.db_token)
            .output()
            .expect("run guard")
            .into()
    }

    fn migrate(&self, extra: &[&str]) -> Run {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fakes/points_migration.py");
        let url = self.fake.url_of(DB);
        let mut args = vec!["--", "python3", script.to_str().unwrap(), url.as_str()];
        args.extend_from_slice(extra);
        self.guard(&args)
    }

    /// Snapshots as `guard list --json` reports them.
    fn snapshots(&self) -> Vec<serde_json::Value> {
        listed(&self.guard(&["list", "--json"]))
    }

    /// The target as the library builds it from the policy's settings.
    fn target(&self) -> guard::targets::turso::TursoTarget {
        let spec = guard::targets::TargetSpec::new(
            "readings",
            guard::targets::KindSpec::Turso(guard::targets::TursoSpec {
                organization: ORG.into(),
                database: DB.into(),
                group: "default".into(),
                api_token: API_TOKEN.into(),
                api_url: self.fake.api_url.clone(),
                db_url: None,
                db_token: None,
                export: true,
                restore: guard::targets::TursoRestore::Reload,
            }),
        );
        guard::targets::turso::TursoTarget::from_spec(&spec).unwrap()
    }

    fn source(&self) -> std::path::PathBuf {
        self.fake.path_of(DB)
    }

    fn manifest(&self, id: &str) -> serde_json::Value {
        let r = self.guard(&["show", id, "--json"]);
        assert_eq!(r.code, 0, "{r:?}");
        serde_json::from_str(&r.stdout).unwrap()
    }

    fn branches(&self) -> Vec<String> {
        self.fake
            .databases()
            .iter()
            .map(|d| d["Name"].as_str().unwrap().to_string())
            .filter(|n| n.starts_with("guard-"))
            .collect()
    }

    /// Nothing guard wrote or printed holds a token (the platform token, the database token, or
    /// any JWT guard minted: JWTs start with `eyJ`).
    fn assert_no_tokens(&self, runs: &[&Run]) {
        let mut texts: Vec<(String, String)> = runs.iter().map(|r| ("output".to_string(), r.all())).collect();
        for e in walk(&self.env.path("backups")) {
            if e.extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| ["json", "log"].contains(&x))
            {
                texts.push((e.display().to_string(), std::fs::read_to_string(&e).unwrap()));
            }
        }
        assert!(
            texts.iter().any(|(p, _)| p.ends_with("manifest.json")),
            "manifests were checked"
        );
        assert!(
            texts.iter().any(|(p, _)| p.ends_with("run.log")),
            "run logs were checked"
        );
        for (p, t) in texts {
            for secret in [API_TOKEN, self.db_token.as_str(), "eyJ"] {
                assert!(!t.contains(secret), "{p} contains a token ({secret:.6}…):\n{t}");
            }
        }
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn gunzip(path: &Path) -> Vec<u8> {
    let out = std::process::Command::new("gunzip")
        .arg("-c")
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "gunzip -c {}", path.display());
    out.stdout
}

#[test]
fn point_migration_is_kept_with_a_branch_and_an_export() {
    // db_url in its libsql:// form and the policy's own database token.
    let s = setup_with(
        |fake| {
            format!(
                "db_url = \"libsql://{}\"\ndb_token = \"${{TURSO_DB_TOKEN}}\"",
                fake.db(DB).unwrap()["Hostname"].as_str().unwrap()
            )
        },
        CHECKS,
    );
    let before = full_dump(&s.source());

    let r = s.migrate(&[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("point_readings inserted: 2400"),
        "command output streams through: {r:?}"
    );
    assert_eq!(
        count(&s.source(), "SELECT count(*) FROM point_readings"),
        2400,
        "changes kept"
    );
    assert_eq!(
        count(&s.source(), "SELECT count(*) FROM point_info WHERE migrated = 1"),
        17
    );

    // The branch: named for the snapshot, a child of the source, holding the pre-run state.
    let snaps = s.snapshots();
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    let id = snaps[0]["id"].as_str().unwrap();
    let m = s.manifest(id);
    let t = &m["targets"][0];
    let branch = guard::targets::turso::branch_name(DB, id);
    assert_eq!(t["meta"]["branch"], branch.as_str(), "{t}");
    assert!(
        branch.starts_with("guard-liveone-tokyo-") && branch.len() <= 64,
        "{branch}"
    );
    assert_eq!(s.branches(), vec![branch.clone()]);
    let b = s.fake.db(&branch).unwrap();
    assert_eq!(b["parent"]["name"], DB);
    assert_eq!(
        full_dump(Path::new(b["path"].as_str().unwrap())),
        before,
        "the branch holds the pre-run state"
    );
    assert_eq!(t["fingerprints"]["readings"]["rows"], 1200);
    assert!(t["fingerprints"]["readings"]["hash"].is_string() && t["fingerprints"]["@schema"]["hash"].is_string());
    assert_eq!(
        t["fingerprints"]["point_readings"]["rows"], 0,
        "row counts of every table"
    );

    // The Platform API saw the documented request: a database seed at an RFC 3339 timestamp.
    let creates: Vec<_> = s
        .fake
        .requests()
        .into_iter()
        .filter(|q| q["method"] == "POST" && q["path"] == format!("/v1/organizations/{ORG}/databases"))
        .collect();
    assert_eq!(creates.len(), 1, "{creates:?}");
    let body = &creates[0]["body"];
    assert_eq!(body["name"], branch.as_str());
    assert_eq!(body["group"], "default");
    assert_eq!(body["seed"]["type"], "database");
    assert_eq!(body["seed"]["name"], DB);
    let ts = body["seed"]["timestamp"].as_str().unwrap();
    time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{ts}: {e}"));
    assert_eq!(t["meta"]["seed_timestamp"], ts);

    // The export: stock gunzip gives SQL that Python's sqlite3 loads into the pre-run data.
    let a = &t["artifacts"][0];
    assert_eq!(a["format"], "sql");
    let gz = s.env.path("backups").join(a["key"].as_str().unwrap());
    assert!(gz.to_str().unwrap().ends_with("readings.sql.gz"), "{}", gz.display());
    let sql = gunzip(&gz);
    assert!(sql.len() > 100_000, "{} bytes", sql.len());
    let loaded = s.env.path("export.db");
    let mut py = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.executescript(sys.stdin.read()); c.commit()",
            loaded.to_str().unwrap(),
        ])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    py.stdin.take().unwrap().write_all(&sql).unwrap();
    assert!(py.wait().unwrap().success());
    assert_eq!(full_dump(&loaded), before, "the export holds the pre-run state");

    // Deep verification: the branch answers with the recorded fingerprints, the export loads.
    let v = s.guard(&["verify"]);
    assert_eq!(v.code, 0, "{v:?}");
    s.assert_no_tokens(&[&r, &v]);
}

#[test]
fn failing_migration_is_reloaded_from_the_branch() {
    // No db_url or db_token: the URL comes from the API, the tokens are minted.
    let s = setup("", CHECKS);
    let before = full_dump(&s.source());
    let r = s.migrate(&["--crash"]);
    assert_eq!(r.code, 3, "the command's own exit code passes through: {r:?}");
    assert!(r.stderr.contains("restored"), "{r:?}");
    assert_eq!(
        full_dump(&s.source()),
        before,
        "every table, index, trigger, view, rowid and counter came back"
    );

    let st = s.guard(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&st.stdout).unwrap();
    let run = &v["last_run"];
    assert_eq!(run["outcome"], "restored", "{st:?}");
    let pre = s.manifest(run["snapshot_id"].as_str().unwrap());
    let rescue = s.manifest(run["rescue_id"].as_str().unwrap());
    assert_eq!(rescue["kind"], "rescue");

    // The rescue snapshot is a branch of the failed state.
    let rb = rescue["targets"][0]["meta"]["branch"].as_str().unwrap().to_string();
    let failed = s.fake.path_of(&rb);
    assert_eq!(
        count(&failed, "SELECT count(*) FROM readings"),
        900,
        "system 2's readings were deleted"
    );
    assert_eq!(count(&failed, "SELECT count(*) FROM point_readings"), 2400);
    assert_eq!(
        count(&failed, "SELECT count(*) FROM audit"),
        300,
        "the trigger fired in the failed state"
    );
    assert_eq!(rescue["targets"][0]["fingerprints"]["readings"]["rows"], 900);

    // Fingerprints of the reloaded source equal the pre-run snapshot's.
    let pre_fp = &pre["targets"][0]["fingerprints"];
    use guard::targets::Target as _;
    let now = s
        .target()
        .fingerprint(&[
            "readings".to_string(),
            "readings_agg_5m".to_string(),
            "point_info".to_string(),
        ])
        .unwrap();
    for t in ["readings", "readings_agg_5m"] {
        assert_eq!(serde_json::to_value(&now[t]).unwrap(), pre_fp[t], "{t}");
    }
    assert_eq!(now["point_info"].rows, pre_fp["point_info"]["rows"].as_u64().unwrap());
    assert_eq!(
        s.branches().len(),
        2,
        "pre-run and rescue branches are kept for retention to prune"
    );
    s.assert_no_tokens(&[&r, &st]);
}

#[test]
fn deleting_untouched_readings_fails_the_check_and_reloads() {
    let s = setup("", CHECKS);
    let before = full_dump(&s.source());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fakes/points_migration.py");
    let url = s.fake.url_of(DB);
    let r = s.guard(&["--json", "--", "python3", script.to_str().unwrap(), &url, "--bug"]);
    assert_eq!(r.code, 79, "checks failed, restored: {r:?}");
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("one JSON document on stdout");
    assert_eq!(v["outcome"], "restored");
    let failed: Vec<_> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["passed"] == false)
        .collect();
    assert_eq!(failed.len(), 2, "{v}");
    assert!(
        failed
            .iter()
            .any(|c| c["detail"].as_str().unwrap_or("").contains("readings: 1200 → 900 rows")),
        "{v}"
    );
    assert_eq!(full_dump(&s.source()), before);
}

#[test]
fn rejected_api_token_is_reported_before_anything_runs() {
    let s = setup("", CHECKS);
    let wrong = "plat-token-wrong-0000";
    let r = refused(&s.env, 69, |a| s.guard_with_api_token(wrong, a));
    assert!(
        r.stderr.contains("the Platform API token was rejected") && r.stderr.contains("401"),
        "{r:?}"
    );
    assert!(!r.all().contains(wrong), "the token is masked: {r:?}");
    assert!(s.branches().is_empty());
}

#[test]
fn taken_branch_name_is_reported_before_anything_runs() {
    let s = setup("", CHECKS);
    // Another client takes the name guard is about to use: a genuine 409 from the API.
    s.fake.squat("guard-liveone-tokyo-");
    let r = refused(&s.env, 69, |a| s.guard(a));
    assert!(
        r.stderr.contains("409") && r.stderr.contains("the name is taken"),
        "{r:?}"
    );
    // guard never deletes a database it did not create: the squatter is still there.
    assert_eq!(s.branches().len(), 1, "{:?}", s.branches());
    assert!(s.snapshots().is_empty());
}

#[test]
fn unknown_group_is_reported_before_anything_runs() {
    let s = setup("", "");
    let text = std::fs::read_to_string(s.env.path("guard.toml"))
        .unwrap()
        .replace("group = \"default\"", "group = \"tokyo\"");
    s.env.write("guard.toml", &text);
    let r = refused(&s.env, 69, |a| s.guard(a));
    assert!(
        r.stderr.contains("group not found") && r.stderr.contains("\"tokyo\""),
        "{r:?}"
    );
}

#[test]
fn promote_prints_what_to_repoint_and_leaves_the_source_alone() {
    let s = setup("restore = \"promote\"", CHECKS);
    let before = full_dump(&s.source());
    let r = s.migrate(&["--crash"]);
    assert_eq!(r.code, 80, "restore is not automatic, and guard says so: {r:?}");
    let snaps = s.snapshots();
    let pre = snaps.iter().find(|x| x["kind"] == "pre-run").unwrap();
    let branch = guard::targets::turso::branch_name(DB, pre["id"].as_str().unwrap());
    let host = s.fake.db(&branch).unwrap()["Hostname"].as_str().unwrap().to_string();
    assert!(r.stderr.contains(&format!("libsql://{host}")), "{r:?}");
    assert!(r.stderr.contains(&format!("turso db tokens create {branch}")), "{r:?}");
    let source_host = s.fake.db(DB).unwrap()["Hostname"].as_str().unwrap().to_string();
    assert!(
        r.stderr.contains(&format!("(instead of libsql://{source_host})")),
        "{r:?}"
    );
    assert!(
        r.stderr.contains("TURSO_DATABASE_URL") && r.stderr.contains("not automatic"),
        "{r:?}"
    );
    assert_eq!(
        count(&s.source(), "SELECT count(*) FROM readings"),
        900,
        "the failed state is left in place"
    );
    assert_eq!(count(&s.source(), "SELECT count(*) FROM point_readings"), 2400);
    assert_eq!(
        full_dump(&s.fake.path_of(&branch)),
        before,
        "the branch to promote holds the pre-run state"
    );
    s.assert_no_tokens(&[&r]);
}

#[test]
fn branch_deletion_refuses_anything_but_guards_own_branches() {
    let s = setup("", CHECKS);
    let r = s.guard(&["snapshot"]);
    assert_eq!(r.code, 0, "{r:?}");
    let id = r.stdout.trim().to_string();
    let branch = guard::targets::turso::branch_name(DB, &id);
    s.fake.create_db("liveone-tokyo-pre-migration");
    s.fake.create_db("guard-other-20261123t164800123z-a3f2");
    // A database named like guard's branches of liveone-tokyo, but branched from another one.
    let lookalike = "guard-liveone-tokyo-20261123t164800123z-a3f2";
    s.fake.create_db("other-db");
    let (code, body) = s.fake.api(
        reqwest::Method::POST,
        "",
        Some(serde_json::json!({"name": lookalike, "group": "default", "seed": {"type": "database", "name": "other-db"}})),
    );
    assert_eq!(code, 200, "{body}");
    let t = s.target();
    for name in [
        DB,
        "liveone-tokyo-pre-migration",
        "guard-other-20261123t164800123z-a3f2",
        lookalike,
    ] {
        let e = t.delete_branch(name).unwrap_err();
        assert!(format!("{e:#}").contains("refusing to delete"), "{name}: {e:#}");
        assert!(s.fake.db(name).is_some(), "{name} still exists");
    }
    for name in [
        "guard-liveone-tokyo",
        "guard-liveone-tokyo-2026",
        "Guard-liveone-tokyo-20261123t164800123z-a3f2",
    ] {
        let e = t.delete_branch(name).unwrap_err();
        assert!(format!("{e:#}").contains("refusing to delete"), "{name}: {e:#}");
    }
    assert!(t.delete_branch(&branch).unwrap(), "guard's own branch is deleted");
    assert!(s.fake.db(&branch).is_none());
    assert!(!t.delete_branch(&branch).unwrap(), "deleting it again is not an error");
    // A snapshot whose branch is gone fails deep verification, naming it.
    let v = s.guard(&["verify", &id]);
    assert_eq!(v.code, 65, "{v:?}");
    assert!(
        v.stderr.contains(&branch) && v.stderr.contains("no longer exists"),
        "{v:?}"
    );
}

#[test]
fn corrupted_export_fails_verification() {
    let s = setup("", CHECKS);
    let r = s.guard(&["snapshot"]);
    assert_eq!(r.code, 0, "{r:?}");
    let id = r.stdout.trim();
    let gz = s.env.path(&format!("backups/snapshots/{id}/readings.sql.gz"));
    let mut raw = Vec::new();
    flate2::read::MultiGzDecoder::new(&std::fs::read(&gz).unwrap()[..])
        .read_to_end(&mut raw)
        .unwrap();
    assert!(String::from_utf8_lossy(&raw).trim_end().ends_with("COMMIT;"));
    let mut bytes = std::fs::read(&gz).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&gz, bytes).unwrap();
    let v = s.guard(&["verify", id]);
    assert_eq!(v.code, 65, "{v:?}");
    assert!(v.stderr.contains("readings.sql.gz"), "{v:?}");
}

#[test]
fn no_restore_keeps_the_failed_state_and_guard_restore_reloads_later() {
    let s = setup("", CHECKS);
    let before = full_dump(&s.source());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fakes/points_migration.py");
    let url = s.fake.url_of(DB);
    let r = s.guard(&[
        "--no-restore",
        "--",
        "python3",
        script.to_str().unwrap(),
        &url,
        "--crash",
    ]);
    assert_eq!(r.code, 3, "{r:?}");
    assert_eq!(
        count(&s.source(), "SELECT count(*) FROM readings"),
        900,
        "failed state kept"
    );
    let pre = s.snapshots().into_iter().find(|x| x["kind"] == "pre-run").unwrap();
    let r = s.guard(&["restore", pre["id"].as_str().unwrap(), "--yes"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(full_dump(&s.source()), before);
    assert!(
        s.snapshots().iter().any(|x| x["kind"] == "rescue"),
        "restore took a rescue branch first"
    );
    assert_eq!(s.branches().len(), 2);
}

#[test]
fn virtual_tables_refuse_reload_before_anything_runs_and_leave_no_branch() {
    let s = setup("", "");
    rusqlite::Connection::open(s.source())
        .unwrap()
        .execute_batch("CREATE VIRTUAL TABLE notes USING fts5(body); INSERT INTO notes VALUES ('inverter swapped');")
        .unwrap();
    let r = refused(&s.env, 69, |a| s.guard(a));
    assert!(
        r.stderr.contains("virtual tables") && r.stderr.contains("promote"),
        "{r:?}"
    );
    assert!(
        s.branches().is_empty(),
        "the branch made for the failed snapshot was deleted: {:?}",
        s.branches()
    );
    // promote copies nothing row by row, so it takes such a database.
    let text = std::fs::read_to_string(s.env.path("guard.toml")).unwrap();
    s.env.write(
        "guard.toml",
        &text.replace(
            "group = \"default\"",
            "group = \"default\"\nrestore = \"promote\"\nexport = false",
        ),
    );
    let r = s.guard(&["snapshot"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(s.branches().len(), 1);
}

#[test]
fn prune_deletes_the_branches_of_pruned_snapshots_only() {
    let s = setup("", CHECKS);
    s.fake.create_db("liveone-tokyo-pre-migration");
    let mut ids = Vec::new();
    for _ in 0..3 {
        let r = s.guard(&["snapshot"]);
        assert_eq!(r.code, 0, "{r:?}");
        ids.push(r.stdout.trim().to_string());
    }
    assert_eq!(s.branches().len(), 3);
    let r = s.guard(&["prune", "--keep-within", "0s", "--keep-last", "1"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        s.branches(),
        vec![guard::targets::turso::branch_name(DB, &ids[2])],
        "only the kept snapshot's branch is left"
    );
    assert!(
        s.fake.db(DB).is_some() && s.fake.db("liveone-tokyo-pre-migration").is_some(),
        "no other database is touched"
    );
}

#[test]
fn restore_falls_back_on_the_export_when_the_branch_is_gone() {
    let s = setup("", CHECKS);
    let before = dump(&s.source());
    let r = s.guard(&["snapshot"]);
    assert_eq!(r.code, 0, "{r:?}");
    let id = r.stdout.trim().to_string();
    let branch = guard::targets::turso::branch_name(DB, &id);
    // Someone ran `turso db destroy` on the branch, then the data went wrong.
    let (code, body) = s.fake.api(reqwest::Method::DELETE, &format!("/{branch}"), None);
    assert_eq!(code, 200, "{body}");
    rusqlite::Connection::open(s.source())
        .unwrap()
        .execute_batch(
            "DELETE FROM readings WHERE system_id = 1; DROP VIEW system_totals; UPDATE sqlite_sequence SET seq = 99;",
        )
        .unwrap();
    let r = s.guard(&["restore", &id, "--yes", "--no-rescue"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr
            .contains(&format!("branch database {branch} no longer exists; reloading")),
        "{r:?}"
    );
    assert_eq!(
        dump(&s.source()),
        before,
        "the export brought every table, index, trigger and view back"
    );
    assert_eq!(
        count(
            &s.source(),
            "SELECT seq FROM sqlite_sequence WHERE name = 'point_readings'"
        ),
        1
    );
    // Without the branch and without an export there is nothing to reload from: say so.
    let text = std::fs::read_to_string(s.env.path("guard.toml")).unwrap();
    s.env.write(
        "guard.toml",
        &text.replace("group = \"default\"", "group = \"default\"\nexport = false"),
    );
    let r = s.guard(&["snapshot"]);
    let id2 = r.stdout.trim().to_string();
    let (code, _) = s.fake.api(
        reqwest::Method::DELETE,
        &format!("/{}", guard::targets::turso::branch_name(DB, &id2)),
        None,
    );
    assert_eq!(code, 200);
    let r = s.guard(&["restore", &id2, "--yes", "--no-rescue"]);
    assert_eq!(r.code, 80, "{r:?}");
    assert!(
        r.stderr.contains("no longer exists and the snapshot has no export"),
        "{r:?}"
    );
    assert_eq!(dump(&s.source()), before, "nothing was touched");
}

#[test]
fn writes_during_the_snapshot_are_reported_as_a_branch_gap() {
    let s = setup("", CHECKS);
    let path = s.source();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let c = rusqlite::Connection::open(&path).unwrap();
            c.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
            let mut n = 0i64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                c.execute("INSERT INTO audit VALUES ('app write', ?1)", [n]).unwrap();
                n += 1;
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            n
        })
    };
    let r = s.guard(&["snapshot"]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(writer.join().unwrap() > 0);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains("warning")
            && r.stderr.contains("differs from liveone-tokyo as it is now")
            && r.stderr.contains("audit"),
        "{r:?}"
    );
    let m = s.manifest(r.stdout.trim());
    assert!(
        m["targets"][0]["meta"]["branch_differs_from_source"]
            .as_str()
            .unwrap()
            .contains("audit"),
        "{m}"
    );
    // The branch itself is one consistent state, the one the fingerprints describe.
    let v = s.guard(&["verify", r.stdout.trim()]);
    assert_eq!(v.code, 0, "{v:?}");
}

#[test]
fn drill_restores_the_export_into_scratch_and_checks_it() {
    let drill = r#"
[drill]
max_age = "2d"

[[drill.check]]
name = "readings restored"
target = "readings"
sql = "SELECT count(*) FROM readings"
expect = "== 1200"
"#;
    let s = setup("", drill);
    let r = s.guard(&["snapshot"]);
    assert_eq!(r.code, 0, "{r:?}");
    // The live data changes afterwards; the drill reads the snapshot, not the source.
    rusqlite::Connection::open(s.source())
        .unwrap()
        .execute_batch("DELETE FROM readings")
        .unwrap();
    let r = s.guard(&["drill", "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["checks"][0]["after"], "1200", "{v}");
    // With the branch gone, the drill fails and names it.
    let id = s.snapshots()[0]["id"].as_str().unwrap().to_string();
    let (code, _) = s.fake.api(
        reqwest::Method::DELETE,
        &format!("/{}", guard::targets::turso::branch_name(DB, &id)),
        None,
    );
    assert_eq!(code, 200);
    let r = s.guard(&["drill"]);
    assert_eq!(r.code, 66, "{r:?}");
    assert!(r.all().contains("no longer exists"), "{r:?}");
}

// ---------------------------------------------------------------------------------------------
// Issue 19: Turso as the real service behaves (the fake enforces sqld's limits).

fn setup_on(fake: TursoFake, target_extra: &str, checks: &str) -> Setup {
    seed(&fake.create_db(DB));
    let db_token = fake.mint(DB);
    let env = Env::new();
    env.write("guard.toml", &policy(&fake, target_extra, checks));
    Setup { fake, env, db_token }
}

/// A table of `n` rows added to the source, enough to make a reload take a while.
fn add_bulk(path: &Path, n: i64) {
    let mut c = rusqlite::Connection::open(path).unwrap();
    c.execute_batch(
        "CREATE TABLE bulk (k INTEGER PRIMARY KEY, system_id INTEGER, v TEXT, x REAL);
         CREATE INDEX bulk_system ON bulk (system_id);",
    )
    .unwrap();
    let tx = c.transaction().unwrap();
    for i in 0..n {
        tx.execute(
            "INSERT INTO bulk (system_id, v, x) VALUES (?1, ?2, ?3)",
            (i % 7, format!("reading {i} of the bulk table"), i as f64 / 3.0),
        )
        .unwrap();
    }
    tx.commit().unwrap();
}

fn snapshot_id(s: &Setup) -> String {
    let r = s.guard(&["snapshot"]);
    assert_eq!(r.code, 0, "{r:?}");
    r.stdout.trim().to_string()
}

fn damage(s: &Setup) {
    rusqlite::Connection::open(s.source())
        .unwrap()
        .execute_batch(
            "DELETE FROM readings WHERE system_id = 2; UPDATE point_info SET name = 'changed';
             DROP VIEW system_totals; CREATE TABLE stray (x);",
        )
        .unwrap();
}

#[test]
fn reload_larger_than_the_transaction_window_restores_in_short_transactions() {
    // A test-sized window (Turso's is 5 s): reloading this database in one transaction takes
    // several times longer than it (about 10 s here), so only a reload made of short
    // transactions gets through while another writer waits for the lock (sqld rolls the old
    // transaction back then). The longest of guard's transactions took 0.65 s on a loaded
    // 2-core machine.
    let s = setup_on(TursoFake::start_with(&["--txn-timeout", "2.5"]), "", CHECKS);
    add_bulk(&s.source(), 20_000);
    let before = full_dump(&s.source());
    let id = snapshot_id(&s);
    damage(&s);
    rusqlite::Connection::open(s.source())
        .unwrap()
        .execute_batch("UPDATE bulk SET v = 'overwritten' WHERE k % 3 = 0; DELETE FROM bulk WHERE k > 15000;")
        .unwrap();
    s.fake.contend(DB);
    let r = s.guard(&["restore", &id, "--yes", "--no-rescue"]);
    s.fake.stop_contending(DB);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        full_dump(&s.source()),
        before,
        "every table, row, rowid, index, trigger, view and counter came back"
    );
    let d = s.fake.db(DB).unwrap();
    assert_eq!(
        d["forced_rollbacks"], 0,
        "no transaction of the restore outlived the window: {d}"
    );
    eprintln!("longest write transaction: {} s", d["longest_write_txn"]);
}

#[test]
fn a_failing_swap_leaves_the_source_as_it_was() {
    let s = setup("", CHECKS);
    let id = snapshot_id(&s);
    damage(&s);
    let damaged = full_dump(&s.source());
    let damaged_schema = dump(&s.source());
    // The last transaction of the reload, which swaps the staged tables in, fails at a step.
    s.fake
        .config(serde_json::json!({"fail_statements": ["^INSERT INTO .* SELECT .* FROM \"_guard_reload_"]}));
    let r = s.guard(&["restore", &id, "--yes", "--no-rescue"]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains("injected failure") && r.stderr.contains("nothing visible changed"),
        "{r:?}"
    );
    assert_eq!(
        full_dump(&s.source()),
        damaged,
        "the source is exactly as it was: the swap rolled back and the loaded tables were dropped"
    );
    assert_eq!(dump(&s.source()), damaged_schema);
    // With the fault gone the same restore goes through.
    s.fake.config(serde_json::json!({"fail_statements": []}));
    let r = s.guard(&["restore", &id, "--yes", "--no-rescue"]);
    assert_eq!(r.code, 0, "{r:?}");
}

const DOCS_CHECK: &str = r#"
[[check]]
name = "documents untouched"
target = "readings"
untouched = ["docs"]
"#;

fn add_docs(path: &Path, rows: usize, size: usize) {
    let mut c = rusqlite::Connection::open(path).unwrap();
    c.execute_batch("CREATE TABLE docs (id INTEGER PRIMARY KEY, body BLOB, note TEXT)")
        .unwrap();
    let tx = c.transaction().unwrap();
    for i in 0..rows {
        let body: Vec<u8> = (0..size).map(|j| ((i * 31 + j * 7) % 251) as u8).collect();
        tx.execute(
            "INSERT INTO docs (body, note) VALUES (?1, ?2)",
            (body, format!("doc {i}")),
        )
        .unwrap();
    }
    tx.commit().unwrap();
}

#[test]
fn rows_too_large_for_one_response_are_read_and_copied_in_smaller_pages() {
    // A test-sized response cap (sqld's default is 10 MB): 500 rows of these are 6 MB.
    let s = setup_on(
        TursoFake::start_with(&["--max-response-size", "300000"]),
        "",
        DOCS_CHECK,
    );
    add_docs(&s.source(), 400, 12_000);
    let before = full_dump(&s.source());
    let docs_before = dump(&s.source());
    let id = snapshot_id(&s);
    rusqlite::Connection::open(s.source())
        .unwrap()
        .execute_batch("DELETE FROM docs WHERE id % 2 = 0; UPDATE docs SET note = 'x';")
        .unwrap();
    let r = s.guard(&["restore", &id, "--yes", "--no-rescue"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(full_dump(&s.source()), before);
    assert_eq!(dump(&s.source()), docs_before);
}

#[test]
fn a_row_larger_than_the_response_cap_is_named_before_anything_runs() {
    let s = setup_on(
        TursoFake::start_with(&["--max-response-size", "300000"]),
        "",
        DOCS_CHECK,
    );
    add_docs(&s.source(), 3, 400_000);
    let r = refused(&s.env, 69, |a| s.guard(a));
    assert!(
        r.stderr.contains("docs") && r.stderr.contains("RESPONSE_TOO_LARGE") && r.stderr.contains("single row"),
        "{r:?}"
    );
    assert!(s.branches().is_empty(), "{:?}", s.branches());
}

fn creates(s: &Setup) -> Vec<serde_json::Value> {
    s.fake
        .requests()
        .into_iter()
        .filter(|q| q["method"] == "POST" && q["path"] == format!("/v1/organizations/{ORG}/databases"))
        .map(|q| q["body"].clone())
        .collect()
}

#[test]
fn with_before_hooks_the_branch_is_the_current_state_without_a_timestamp() {
    let s = setup("", CHECKS);
    let text = std::fs::read_to_string(s.env.path("guard.toml")).unwrap();
    s.env.write(
        "guard.toml",
        &text.replace(
            "store = \"backups\"",
            "store = \"backups\"\n\n[hooks]\nbefore = [\"true\"]",
        ),
    );
    let before = full_dump(&s.source());
    let r = s.migrate(&["--crash"]);
    assert_eq!(r.code, 3, "{r:?}");
    assert_eq!(full_dump(&s.source()), before);
    let c = creates(&s);
    assert_eq!(c.len(), 2, "pre-run and rescue branches: {c:?}");
    for body in &c {
        assert_eq!(body["seed"]["name"], DB);
        assert!(
            body["seed"].get("timestamp").is_none(),
            "the app is stopped: the branch is the current state, no timestamp: {body}"
        );
    }
    let pre = s.snapshots().into_iter().find(|x| x["kind"] == "pre-run").unwrap();
    let m = s.manifest(pre["id"].as_str().unwrap());
    let meta = &m["targets"][0]["meta"];
    assert!(meta.get("seed_timestamp").is_none(), "{meta}");
    assert!(
        meta["point_in_time"].as_str().unwrap().contains("current state"),
        "{meta}"
    );
}

#[test]
fn the_seed_timestamp_is_never_ahead_of_the_services_clock() {
    // The service's clock is 30 s behind this machine's.
    let s = setup_on(TursoFake::start_with(&["--clock-offset", "-30"]), "", CHECKS);
    let id = snapshot_id(&s);
    let c = creates(&s);
    let ts = c[0]["seed"]["timestamp"].as_str().unwrap();
    let t = time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).unwrap();
    let server_now = time::OffsetDateTime::now_utc() - time::Duration::seconds(30);
    assert!(t <= server_now, "{ts} is ahead of the service's clock ({server_now})");
    let m = s.manifest(&id);
    let meta = &m["targets"][0]["meta"];
    assert_eq!(meta["seed_timestamp"], ts);
    assert!(
        meta["point_in_time"].as_str().unwrap().contains("15 s"),
        "the gap is recorded: {meta}"
    );
}

#[test]
fn a_branch_the_service_did_not_seed_fails_the_snapshot() {
    let s = setup("", CHECKS);
    // A service that ignores `seed.name` (Turso's CLI sends `seed.value`) creates an empty
    // database without a parent.
    s.fake.config(serde_json::json!({"seed_fields": ["value"]}));
    let r = refused(&s.env, 69, |a| s.guard(a));
    assert!(
        r.stderr.contains("parent") && r.stderr.contains(DB) && r.stderr.contains("seed"),
        "{r:?}"
    );
    assert!(
        s.branches().is_empty(),
        "the unseeded branch was deleted: {:?}",
        s.branches()
    );
}

#[test]
fn infinities_are_snapshotted_and_restored() {
    let s = setup("", CHECKS);
    rusqlite::Connection::open(s.source())
        .unwrap()
        .execute_batch(
            "UPDATE readings SET solar_w = 9e999 WHERE id = 1; UPDATE readings SET load_w = -9e999 WHERE id = 2;
             UPDATE readings_agg_5m SET solar_w_avg = 9e999 WHERE interval_end = (SELECT min(interval_end) FROM readings_agg_5m);",
        )
        .unwrap();
    let before = full_dump(&s.source());
    assert!(before.contains("inf"), "{}", &before[..2000.min(before.len())]);
    let r = s.migrate(&["--crash"]);
    assert_eq!(r.code, 3, "{r:?}");
    assert_eq!(full_dump(&s.source()), before, "±Infinity came back with their signs");
    assert_eq!(
        count(&s.source(), "SELECT count(*) FROM readings WHERE solar_w = 9e999"),
        1
    );
    assert_eq!(
        count(&s.source(), "SELECT count(*) FROM readings WHERE load_w = -9e999"),
        1
    );
}

#[test]
fn a_new_branch_whose_token_is_refused_at_first_is_retried() {
    let s = setup("", CHECKS);
    // Every database refuses tokens for its first second (the source's has passed by then).
    s.fake.config(serde_json::json!({"token_not_before": 1.0}));
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let r = s.guard(&["snapshot"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(s.branches().len(), 1);
}

#[test]
fn a_403_names_every_scope_guard_needs() {
    let s = setup("", CHECKS);
    s.fake
        .config(serde_json::json!({"scopes": ["db:create", "db:delete", "db:mint-token"]}));
    let r = refused(&s.env, 69, |a| s.guard(a));
    assert!(
        r.stderr.contains("403") && r.stderr.contains("scopes read, db:create, db:delete and db:mint-token"),
        "guard's hint names every scope: {r:?}"
    );
}

#[test]
fn a_422_says_the_branch_name_is_not_available() {
    let s = setup("", CHECKS);
    s.fake.config(serde_json::json!({"unavailable": ["guard-"]}));
    let r = refused(&s.env, 69, |a| s.guard(a));
    assert!(
        r.stderr.contains("422")
            && r.stderr.contains("Turso does not allow this name")
            && r.stderr.contains("guard-liveone-tokyo-"),
        "{r:?}"
    );
}

#[test]
fn restore_from_the_export_keeps_rowids() {
    let s = setup("", CHECKS);
    // A gap in the rowids of a table without an INTEGER PRIMARY KEY: a dump that renumbers
    // them would close it.
    rusqlite::Connection::open(s.source())
        .unwrap()
        .execute_batch("DELETE FROM point_info WHERE system_id = 2 AND point_id = 1")
        .unwrap();
    let before = full_dump(&s.source());
    let id = snapshot_id(&s);
    let branch = guard::targets::turso::branch_name(DB, &id);
    let (code, body) = s.fake.api(reqwest::Method::DELETE, &format!("/{branch}"), None);
    assert_eq!(code, 200, "{body}");
    damage(&s);
    let r = s.guard(&["restore", &id, "--yes", "--no-rescue"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        full_dump(&s.source()),
        before,
        "rowids of tables without an INTEGER PRIMARY KEY came back from the export too"
    );
}

#[test]
fn with_before_hooks_a_branch_that_differs_from_the_source_fails_the_snapshot() {
    // The hooks say the application is stopped, but something still writes: the branch (the
    // current state) cannot be checked against the source, so no snapshot, no command.
    let s = setup("", CHECKS);
    let text = std::fs::read_to_string(s.env.path("guard.toml")).unwrap();
    s.env.write(
        "guard.toml",
        &text.replace(
            "store = \"backups\"",
            "store = \"backups\"\n\n[hooks]\nbefore = [\"true\"]",
        ),
    );
    let path = s.source();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let c = rusqlite::Connection::open(&path).unwrap();
            c.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
            let mut n = 0i64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                c.execute("INSERT INTO audit VALUES ('still writing', ?1)", [n])
                    .unwrap();
                n += 1;
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            n
        })
    };
    let marker = s.env.path("ran");
    let r = s.guard(&["--", "touch", marker.to_str().unwrap()]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(writer.join().unwrap() > 0);
    assert_eq!(r.code, 69, "{r:?}");
    assert!(
        r.stderr.contains("although the before hooks stopped the application") && r.stderr.contains("audit"),
        "{r:?}"
    );
    assert!(!marker.exists(), "the command must not run");
    assert!(s.branches().is_empty(), "{:?}", s.branches());
}

#[test]
fn recover_of_a_promote_target_says_it_needs_you_not_that_it_failed() {
    // Drift (issue 18): the guarded run and `guard restore` report a promote as a manual step;
    // recover reported it as a failed restore.
    let s = setup("restore = \"promote\"", CHECKS);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fakes/points_migration.py");
    let url = s.fake.url_of(DB);
    let mut cmd = s
        .env
        .cmd(&["--", "python3", script.to_str().unwrap(), url.as_str(), "--crash"]);
    cmd.env("TURSO_API_TOKEN", API_TOKEN).env("TURSO_DB_TOKEN", &s.db_token);
    let mut child = spawn_paused(cmd, "checking", &s.env.path("paused.pid"));
    child.kill().unwrap();
    child.wait().unwrap();
    let r = s.guard(&["recover", "--yes"]);
    assert_eq!(r.code, 80, "the restore is not done: {r:?}");
    let error = r
        .stderr
        .lines()
        .find(|l| l.starts_with("guard: error:"))
        .unwrap_or_default();
    assert!(
        error.contains("restore is not automatic for readings") && !error.contains("failed"),
        "a manual step, not a failure: {r:?}"
    );
    assert!(
        error.contains("recover --keep"),
        "says how to close the run afterwards: {r:?}"
    );
    let r = s.guard(&["recover", "--keep"]);
    assert_eq!(r.code, 0, "{r:?}");
    s.assert_no_tokens(&[&r]);
}

/// The migration drops a table the `untouched` check names (readings_agg_5m) and then fails:
/// the rescue branch records the table as absent instead of failing ("table does not exist"
/// left nothing restored, exit 80), and the reload brings every table back (full dump equal).
#[test]
fn a_table_the_migration_dropped_is_recorded_absent_in_the_rescue_and_reloaded() {
    let s = setup("", CHECKS);
    let before = full_dump(&s.source());
    let r = s.migrate(&["--drop-agg", "--crash"]);
    assert_eq!(r.code, 3, "the command's own exit code, restored: {r:?}");
    assert!(r.stderr.contains("restored"), "{r:?}");
    assert_eq!(full_dump(&s.source()), before, "every table came back");
    let st = s.guard(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&st.stdout).unwrap();
    let rescue = s.manifest(v["last_run"]["rescue_id"].as_str().unwrap());
    let fp = &rescue["targets"][0]["fingerprints"];
    assert_eq!(fp["readings_agg_5m"]["absent"], true, "{rescue}");
    assert_eq!(fp["readings"]["rows"], 900, "{rescue}");
    let id = rescue["id"].as_str().unwrap();
    let r = s.guard(&["verify", id]);
    assert_eq!(r.code, 0, "the rescue verifies: {r:?}");
}

/// Issue 15 F6 on Turso through the binary: the point migration adds a column to `point_info`
/// (`migrated`, filled in); `untouched = ["point_info"]` means the existing data is untouched,
/// so the run is kept. `identical` (the strict form) fails on the same migration and reloads.
#[test]
fn untouched_passes_a_migration_that_adds_a_column_and_identical_does_not() {
    let untouched = "\n[[check]]\nname = \"points untouched\"\ntarget = \"readings\"\nuntouched = [\"point_info\"]\n";
    let s = setup("", untouched);
    let r = s.guard(&[
        "--json",
        "--",
        "python3",
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fakes/points_migration.py")
            .to_str()
            .unwrap(),
        &s.fake.url_of(DB),
    ]);
    assert_eq!(r.code, 0, "adding a column leaves existing data untouched: {r:?}");
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["outcome"], "kept", "{v}");
    assert_eq!(
        count(&s.source(), "SELECT count(*) FROM point_info WHERE migrated = 1"),
        17,
        "the migration's column is kept"
    );

    let s = setup("", &untouched.replace("untouched = ", "identical = "));
    let before = full_dump(&s.source());
    let r = s.migrate(&[]);
    assert_eq!(r.code, 79, "identical compares whole rows: {r:?}");
    assert_eq!(full_dump(&s.source()), before, "reloaded exactly");
}
