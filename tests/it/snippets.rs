//! Every policy snippet the README and `docs/` show works on the migration it describes (issue
//! 15, F1: the README's own example rolled back seed 001's correct migration). A full policy is
//! run through the real binary against a fixture modelled on its seed: the correct migration
//! is kept, a broken variant restored exactly. A fragment (a `[[target]]` or `[drill]` table)
//! must load inside the lending policy. A full policy this test has no scenario for fails it.

use crate::common::pg::Cluster;
use crate::common::*;
use std::path::{Path, PathBuf};

/// The ```toml blocks of README.md and every Markdown file under docs/, with where they are.
fn snippets() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md")];
    // docs/recipes/ shows where guard runs (systemd, CI, Kubernetes), not a migration: its
    // policies are loaded by `docs::every_recipe_policy_loads`.
    for e in walkdir::WalkDir::new(root.join("docs")).into_iter().flatten() {
        if e.path().starts_with(root.join("docs/recipes")) {
            continue;
        }
        if e.path().extension().and_then(|x| x.to_str()) == Some("md") {
            files.push(e.path().to_path_buf());
        }
    }
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let mut cur: Option<(usize, String)> = None;
        for (i, line) in text.lines().enumerate() {
            match &mut cur {
                None if line.trim_start().starts_with("```toml") => cur = Some((i + 1, String::new())),
                Some((start, body)) if line.trim_start().starts_with("```") => {
                    out.push((
                        format!("{}:{}", f.strip_prefix(root).unwrap().display(), start),
                        std::mem::take(body),
                    ));
                    cur = None;
                }
                Some((_, body)) => {
                    body.push_str(line);
                    body.push('\n');
                }
                None => {}
            }
        }
    }
    out
}

/// Commands of the machine the docs were written for (services, a health endpoint) have
/// stand-ins here; everything else in the snippet is used as it is.
fn localize(snippet: &str) -> String {
    snippet
        .lines()
        .map(|l| {
            if l.contains("systemctl ") || l.contains("curl ") {
                let (key, _) = l.split_once('=').unwrap();
                if key.trim() == "command" {
                    "command = \"true\"".to_string()
                } else {
                    format!("{key}= [\"true\"]")
                }
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn top_level_name(snippet: &str) -> Option<String> {
    for l in snippet.lines() {
        let l = l.trim();
        if l.starts_with('[') {
            return None;
        }
        if let Some(v) = l.strip_prefix("name = ") {
            return Some(v.split('"').nth(1).unwrap_or_default().to_string());
        }
    }
    None
}

fn cashback_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/migrate_cashback_tables.py")
}

/// Seed 001: the lending app, its cashback migration kept, the buggy one restored.
fn lending(at: &str, policy: &str) {
    let env = Env::new();
    let db = env.path("instances/prod/database/lending_app_prod.db");
    lending_db(&db, 30);
    env.write("data/rent_history/2025-01.json", "{\"rent\": 1200}\n");
    env.write("guard.toml", policy);
    let script = cashback_script().display().to_string();
    let dbs = db.display().to_string();
    let r = env.guard(&["--yes", "--", "python3", &script, &dbs]);
    assert_eq!(r.code, 0, "{at}: the correct migration is kept: {r:?}");
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM sqlite_master WHERE name = 'cashback_redemption'"
        ),
        1
    );
    // The buggy variant, from the state before the migration.
    let env = Env::new();
    let db = env.path("instances/prod/database/lending_app_prod.db");
    lending_db(&db, 30);
    env.write("data/rent_history/2025-01.json", "{\"rent\": 1200}\n");
    env.write("guard.toml", policy);
    let before = dump(&db);
    let dbs = db.display().to_string();
    let r = env.guard(&["--yes", "--", "python3", &script, &dbs, "--bug"]);
    assert_eq!(r.code, 79, "{at}: the buggy migration is restored: {r:?}");
    assert_eq!(dump(&db), before, "{at}: restored exactly");
}

/// Seed 000: the rent database and its files; the Prisma migration kept, a broken one restored.
fn rent(at: &str, policy: &str) {
    let cluster = Cluster::start();
    cluster.createdb("rent");
    cluster.psql("rent", crate::postgres::RENT_SCHEMA);
    let env = Env::new();
    env.write("data/rent_history/2025-01.json", "{\"rent\": 1200}\n");
    env.write("electricity_bills_history.txt", "2025-01 Vattenfall 912\n");
    env.write("guard.toml", policy);
    env.write("migration.sql", crate::postgres::RENT_MIGRATION);
    let psql = cluster.bin.join("psql").display().to_string();
    let run = |script: &str| -> Run {
        env.cmd(&["--yes", "--", "sh", "-c", script])
            .env("DATABASE_URL", cluster.url("rent"))
            .output()
            .unwrap()
            .into()
    };
    let original = cluster.dump("rent");
    let r = run(&format!(
        "'{psql}' -X -q -v ON_ERROR_STOP=1 -d \"$DATABASE_URL\" -f migration.sql"
    ));
    assert_eq!(r.code, 0, "{at}: the migration is kept: {r:?}");
    assert_ne!(cluster.dump("rent"), original);
    let migrated = cluster.dump("rent");
    let r = run(&format!(
        "'{psql}' -X -q -d \"$DATABASE_URL\" -c 'DELETE FROM \"RentLedger\"' && echo '{{}}' > data/rent_history/2025-01.json && exit 3"
    ));
    assert_eq!(r.code, 3, "{at}: a broken one is restored: {r:?}");
    assert_eq!(cluster.dump("rent"), migrated, "{at}: restored exactly");
    assert_eq!(
        std::fs::read_to_string(env.path("data/rent_history/2025-01.json")).unwrap(),
        "{\"rent\": 1200}\n",
        "{at}: files restored"
    );
}

/// A Rails (or Node) app's own directory with the store inside: a deploy kept, a broken one
/// restored.
fn app_dir(at: &str, policy: &str) {
    let env = Env::new();
    env.write("app/models/user.rb", "class User; end\n");
    env.write("config/database.yml", "production: {}\n");
    env.write("node_modules/x/index.js", "// excluded\n");
    env.write("guard.toml", policy);
    let r = env.guard(&[
        "--yes",
        "--",
        "sh",
        "-c",
        "echo 'class Cashback; end' > app/models/cashback.rb",
    ]);
    assert_eq!(r.code, 0, "{at}: {r:?}");
    let before = std::fs::read_to_string(env.path("app/models/user.rb")).unwrap();
    let r = env.guard(&["--yes", "--", "sh", "-c", "rm -r app config; exit 5"]);
    assert_eq!(r.code, 5, "{at}: {r:?}");
    assert_eq!(
        std::fs::read_to_string(env.path("app/models/user.rb")).unwrap(),
        before,
        "{at}"
    );
    assert!(
        env.path("app/models/cashback.rb").exists() && env.path("config/database.yml").exists(),
        "{at}"
    );
}

/// A fragment loads inside the lending policy (its variables given values).
fn fragment(at: &str, snippet: &str) {
    let env = Env::new();
    let mut base = lending_policy("");
    // A `[store]` table replaces the lending policy's `store = "backups"`. Its location may be
    // a bucket or a directory of the docs' machine: it is loaded, and opening it may then fail
    // (exit 69 naming the store) — what must not happen is a refusal of the policy (exit 64).
    let store_table = snippet.lines().any(|l| l.trim() == "[store]");
    if store_table {
        base = base
            .lines()
            .filter(|l| !l.starts_with("store ="))
            .map(|l| format!("{l}\n"))
            .collect();
    }
    // The docs' machine's absolute store directory and key file are this test's own.
    let mut snippet = snippet.to_string();
    if store_table {
        let key = env.path("store.key");
        let r = env.guard(&["key", "generate", key.to_str().unwrap()]);
        assert_eq!(r.code, 0, "{r:?}");
        snippet = snippet
            .lines()
            .map(|l| match l.split_once('=') {
                Some((k, v)) if k.trim() == "path" && v.trim().starts_with("\"/") => "path = \"backups\"".to_string(),
                Some((k, _)) if k.trim() == "key_file" => format!("key_file = {:?}", key.display().to_string()),
                _ => l.to_string(),
            })
            .map(|l| format!("{l}\n"))
            .collect();
    }
    let snippet = snippet.as_str();
    env.write("guard.toml", &format!("{base}\n{snippet}"));
    let mut c = env.cmd(&["list"]);
    if store_table {
        c.env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .env("GUARD_S3_CONNECT_TIMEOUT", "2");
    }
    for var in snippet
        .split("${")
        .skip(1)
        .filter_map(|s| s.split_once('}'))
        .map(|(v, _)| v)
    {
        let value = if var.ends_with("_URL") {
            "postgres://app:pw@db.example:5432/app".to_string()
        } else if var.ends_with("_ENDPOINT") {
            "http://127.0.0.1:9".to_string()
        } else {
            format!("value-of-{var}")
        };
        c.env(var, value);
    }
    let r: Run = c.output().unwrap().into();
    if store_table && r.code == 69 {
        assert!(
            r.stderr.contains("store") && !r.stderr.contains("guard.toml:"),
            "{at}: the [store] fragment loads and only opening the store fails: {r:?}\n{snippet}"
        );
        return;
    }
    assert_eq!(r.code, 0, "{at}: the fragment loads: {r:?}\n{snippet}");
}

#[test]
fn every_policy_snippet_in_the_docs_works_on_the_migration_it_describes() {
    let all = snippets();
    assert!(!all.is_empty(), "no ```toml snippets found");
    let mut ran = Vec::new();
    for (at, snippet) in &all {
        let policy = localize(snippet);
        match top_level_name(snippet).as_deref() {
            Some("lending-prod") => lending(at, &policy),
            Some("rent") => rent(at, &policy),
            Some("shop") => app_dir(at, &policy),
            Some(other) => panic!("{at}: a full policy {other:?} with no scenario in tests/it/snippets.rs: add one"),
            None => fragment(at, snippet),
        }
        ran.push(top_level_name(snippet));
    }
    assert!(
        ran.iter().any(|n| n.as_deref() == Some("lending-prod")),
        "the lending example (seed 001) was found and run"
    );
}
