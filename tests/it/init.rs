//! `guard init` (a starter policy from what is in the directory) and `guard schema` (the
//! policy's JSON Schema, derived from the parser's types).

use crate::common::*;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn schema(env: &Env) -> serde_json::Value {
    let r = env.guard(&["schema"]);
    assert_eq!(r.code, 0, "{r:?}");
    serde_json::from_str(&r.stdout).expect("guard schema prints JSON")
}

fn toml_to_json(text: &str) -> serde_json::Value {
    let v: toml::Value = toml::from_str(text).expect("TOML");
    serde_json::to_value(v).unwrap()
}

/// The schema's verdict on a policy text: the errors, none when it is valid.
fn errors(validator: &jsonschema::Validator, text: &str) -> Vec<String> {
    validator
        .iter_errors(&toml_to_json(text))
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect()
}

#[test]
fn every_shipped_policy_validates_against_the_schema_and_a_typo_does_not() {
    let env = Env::new();
    let s = schema(&env);
    let validator = jsonschema::draft202012::new(&s).expect("a valid JSON Schema");
    let mut n = 0;
    for e in std::fs::read_dir(repo().join("policies")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            let errs = errors(&validator, &std::fs::read_to_string(&p).unwrap());
            assert!(errs.is_empty(), "{}: {errs:?}", p.display());
            n += 1;
        }
    }
    assert!(n >= 3, "policies/ has the examples: {n}");
    // The example in docs/policy.md and every recipe's policy too.
    for doc in [
        "docs/policy.md",
        "docs/recipes/systemd.md",
        "docs/recipes/kubernetes.md",
    ] {
        let md = std::fs::read_to_string(repo().join(doc)).unwrap();
        let block = md
            .split("```toml\n")
            .nth(1)
            .expect("a toml block")
            .split("\n```")
            .next()
            .unwrap();
        let errs = errors(&validator, block);
        assert!(errs.is_empty(), "{doc}: {errs:?}");
    }
    // What the parser refuses, the schema refuses: an unknown key, a key of another kind, a
    // wrong type, an unknown kind.
    let base = "name = \"p\"\n[[target]]\nname = \"app\"\nkind = \"sqlite\"\npath = \"app.db\"\n";
    assert!(errors(&validator, base).is_empty(), "{:?}", errors(&validator, base));
    for (bad, why) in [
        (format!("{base}[retention]\nkeep_lst = 3\n"), "unknown key"),
        (format!("{base}bucket = \"b\"\n"), "an s3 key on a sqlite target"),
        (
            "name = \"p\"\n[retention]\nkeep_last = \"three\"\n".to_string(),
            "wrong type",
        ),
        (
            "name = \"p\"\n[[target]]\nname = \"x\"\nkind = \"mysql\"\n".to_string(),
            "unknown kind",
        ),
        ("store = \"b\"\n".to_string(), "no name"),
    ] {
        assert!(!errors(&validator, &bad).is_empty(), "the schema accepts {why}:\n{bad}");
        env.write("bad.toml", &bad);
        let r = env.guard(&["--policy", "bad.toml", "list"]);
        assert_eq!(r.code, 64, "the parser refuses {why} too: {r:?}");
    }
}

/// Every property name anywhere in the schema.
fn keys(v: &serde_json::Value, out: &mut std::collections::BTreeSet<String>) {
    match v {
        serde_json::Value::Object(o) => {
            if let Some(serde_json::Value::Object(props)) = o.get("properties") {
                out.extend(props.keys().cloned());
            }
            o.values().for_each(|x| keys(x, out));
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| keys(x, out)),
        _ => {}
    }
}

#[test]
fn every_key_in_the_schema_is_documented_in_policy_md() {
    let env = Env::new();
    let mut all = std::collections::BTreeSet::new();
    keys(&schema(&env), &mut all);
    assert!(
        all.contains("busy_timeout") && all.contains("clone_bucket") && all.contains("keep_last"),
        "{all:?}"
    );
    let doc = std::fs::read_to_string(repo().join("docs/policy.md")).unwrap();
    // A key is documented as `key`, in a `[table] key` row, as a `[table]`/`[[table]]` heading
    // of the key table, or (`text`) in `{ text = … }`.
    let documented = |k: &str| {
        [
            format!("`{k}`"),
            format!("] {k}`"),
            format!("`[{k}]"),
            format!("`[[{k}]]"),
            format!("{{ {k} = "),
        ]
        .iter()
        .any(|p| doc.contains(p.as_str()))
    };
    let missing: Vec<&String> = all.iter().filter(|k| !documented(k)).collect();
    assert!(
        missing.is_empty(),
        "keys the schema has and docs/policy.md does not document: {missing:?}"
    );
}

fn init_dir() -> Env {
    let env = Env::new();
    lending_db(&env.path("instances/prod/app.db"), 10);
    env.write("data/rent/2025-01.json", "{\"rent\": 1200}\n");
    env.write("node_modules/x/cache.db", "not searched");
    env
}

#[test]
fn init_writes_a_policy_from_what_it_finds_that_runs_and_never_overwrites() {
    let env = init_dir();
    // A Prisma app whose datasource reads RENT_DB from .env: the URL stays a variable.
    env.write(
        "prisma/schema.prisma",
        "datasource db {\n  provider = \"postgresql\"\n  url      = env(\"RENT_DB\")\n}\n",
    );
    env.write(".env", "RENT_DB=\"postgres://rent:s3cret-pw@127.0.0.1:1/rent\"\n");
    let r = env.guard(&["init"]);
    assert_eq!(r.code, 0, "{r:?}");
    let text = std::fs::read_to_string(env.path("guard.toml")).unwrap();
    assert!(text.starts_with("#:schema ./guard.schema.json\n"), "{text}");
    assert!(text.contains("path = \"instances/prod/app.db\""), "{text}");
    assert!(
        text.contains("untouched = [\"loan\", \"payment\", \"user\"]"),
        "the tables found: {text}"
    );
    assert!(
        text.contains("kind = \"postgres\"") && text.contains("url = \"${RENT_DB}\""),
        "{text}"
    );
    assert!(
        text.contains("kind = \"dir\"") && text.contains("path = \"data\""),
        "{text}"
    );
    assert!(text.contains("[retention]"), "{text}");
    assert!(!text.contains("s3cret"), "no secret in the policy: {text}");
    assert!(!r.all().contains("s3cret"), "{r:?}");
    assert!(r.stderr.contains("PostgreSQL ${RENT_DB} (.env)"), "{r:?}");
    // The schema file it points at is `guard schema`, and the policy validates against it.
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(env.path("guard.schema.json")).unwrap()).unwrap();
    assert_eq!(s, schema(&env));
    let validator = jsonschema::draft202012::new(&s).unwrap();
    assert!(errors(&validator, &text).is_empty(), "{:?}", errors(&validator, &text));
    // It loads: the dry run shows the three targets (its preflight then finds no server on
    // port 1: 69, not a policy error, 64).
    let plan = env.guard(&["--dry-run", "--", "true"]);
    assert!(plan.code == 69 && plan.stdout.contains("dry run of policy"), "{plan:?}");
    for t in ["app", "db", "data"] {
        assert!(plan.all().contains(t), "{plan:?}");
    }
    // Never overwrites.
    let again = env.guard(&["init"]);
    assert_eq!(again.code, 64, "{again:?}");
    assert!(again.stderr.contains("already exists"), "{again:?}");
    assert_eq!(std::fs::read_to_string(env.path("guard.toml")).unwrap(), text);
}

#[test]
fn an_initialised_sqlite_policy_guards_a_run_and_restores_a_bad_one() {
    let env = init_dir();
    let r = env.guard(&["init"]);
    assert_eq!(r.code, 0, "{r:?}");
    let db = env.path("instances/prod/app.db");
    let before = dump(&db);
    let ok = env.guard(&["--", "true"]);
    assert_eq!(ok.code, 0, "the starter policy passes an untouching run: {ok:?}");
    let bad = env.guard(&["--", "sqlite3", db.to_str().unwrap(), "DELETE FROM payment"]);
    assert_eq!(bad.code, 79, "its untouched check catches a deletion: {bad:?}");
    assert_eq!(dump(&db), before, "and the restore puts the database back");
    // A Prisma SQLite datasource (`file:./dev.db`, relative to prisma/) is found too, once.
    let env = Env::new();
    lending_db(&env.path("prisma/dev.db"), 3);
    env.write(
        "prisma/schema.prisma",
        "datasource db {\n  provider = \"sqlite\"\n  url = \"file:./dev.db\"\n}\n",
    );
    let r = env.guard(&["init", "policy.toml"]);
    assert_eq!(r.code, 0, "{r:?}");
    let text = std::fs::read_to_string(env.path("policy.toml")).unwrap();
    assert_eq!(text.matches("kind = \"sqlite\"").count(), 1, "{text}");
    assert!(text.contains("path = \"prisma/dev.db\""), "{text}");
    let ok = env.guard(&["--policy", "policy.toml", "--", "true"]);
    assert_eq!(ok.code, 0, "{ok:?}");
}

#[test]
fn init_in_an_empty_directory_writes_a_template_that_loads() {
    let env = Env::new();
    let r = env.guard(&["init"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("no data found"), "{r:?}");
    let l = env.guard(&["list"]);
    assert_eq!(l.code, 0, "the template loads: {l:?}");
    let _ = Path::new("");
}
