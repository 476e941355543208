//! `--json` documents (issue 20): every subcommand prints one JSON object carrying
//! `"schema_version": 1`, every list in it is an array (never a comma-joined string), and
//! `docs/json.md` documents every field the binary emits, with its type.

use crate::common::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Subcommands whose output is not a `--json` document: a shell script, roff, the policy's JSON
/// Schema itself (JSON already, the same with or without `--json`), clap's help.
const NOT_DOCUMENTS: &[&str] = &["completions", "man", "schema", "help"];

/// What one `guard` invocation printed under `--json`: the docs/json.md section it belongs to,
/// the subcommand, and the parsed document.
struct Doc {
    section: &'static str,
    sub: &'static str,
    args: String,
    value: Value,
}

/// The one JSON document on stdout (the whole of stdout must parse as a single value).
fn one_document(args: &[&str], r: &Run) -> Value {
    serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("guard {}: stdout is not one JSON document ({e}): {r:?}", args.join(" ")))
}

struct Session {
    env: Env,
    docs: Vec<Doc>,
}

impl Session {
    /// Run `guard --json ARGS` in `env` (or in `dir` when given), expect `code`, keep the document.
    fn run(&mut self, section: &'static str, sub: &'static str, args: &[&str], code: i32) -> Value {
        self.run_in(None, section, sub, args, code)
    }

    fn run_in(
        &mut self,
        dir: Option<&Path>,
        section: &'static str,
        sub: &'static str,
        args: &[&str],
        code: i32,
    ) -> Value {
        let mut full = vec!["--json"];
        full.extend_from_slice(args);
        let mut c = self.env.cmd(&full);
        if let Some(d) = dir {
            c.current_dir(d);
        }
        let r: Run = c.output().expect("run guard").into();
        assert_eq!(r.code, code, "guard {}: {r:?}", full.join(" "));
        let value = one_document(&full, &r);
        self.docs.push(Doc {
            section,
            sub,
            args: full.join(" "),
            value: value.clone(),
        });
        value
    }
}

/// Every `--json` document guard prints, from a realistic session: a two-target policy (a SQLite
/// database and a directory), a kept run, a restored run, a failed run kept for inspection, recovery, drills,
/// retention, scheduling, pins, `init`, `--all` and an error.
fn every_document() -> Vec<Doc> {
    let env = lending_env("");
    let mut s = Session { env, docs: Vec::new() };
    let migrate = format!(
        "python3 '{}' '{}'",
        repo().join("tests/fixtures/migrate_cashback_tables.py").display(),
        db(&s.env).display()
    );
    s.run("plan", "", &["--dry-run", "--", "true"], 0);
    s.run("check", "check", &["check"], 0);
    let snap = s.run("snapshot", "snapshot", &["snapshot", "-l", "before the migration"], 0);
    let first = snap["id"].as_str().expect("snapshot id").to_string();
    s.run("run", "", &["--yes", "--", "sh", "-c", "exit 3"], 3);
    s.run("run", "", &["--yes", "--", "sh", "-c", &migrate], 0);
    s.run("list", "list", &["list"], 0);
    s.run("show", "show", &["show", "latest"], 0);
    s.run("verify", "verify", &["verify"], 0);
    s.run("verify", "verify", &["verify", "--quick", &first], 0);
    s.run("restore", "restore", &["restore", &first, "--yes"], 0);
    s.run("pin", "pin", &["pin", &first, "-r", "audit"], 0);
    s.run("pin", "unpin", &["unpin", &first], 0);
    s.run("drill", "drill", &["drill"], 0);
    s.run("drills", "drills", &["drills"], 0);
    s.run("reindex", "reindex", &["reindex"], 0);
    s.run(
        "prune",
        "prune",
        &["prune", "--dry-run", "--keep-last", "1", "--keep-within", "1s"],
        0,
    );
    s.run(
        "prune",
        "prune",
        &["prune", "--keep-last", "1", "--keep-within", "1s"],
        0,
    );
    // A failure kept for inspection: status needs attention (82), recover restores it.
    s.run("run", "", &["--yes", "--no-restore", "--", "sh", "-c", "exit 4"], 4);
    s.run("status", "status", &["status"], 82);
    s.run("recover", "recover", &["recover", "--yes"], 0);
    s.run("status", "status", &["status"], 0);
    let units = s.env.path("units");
    let units = units.to_str().unwrap();
    s.run("schedule", "schedule", &["schedule", "--every", "weekly"], 0);
    s.run(
        "schedule-install",
        "schedule",
        &["schedule", "--install", "--no-enable", "--unit-dir", units],
        0,
    );
    s.run("error", "show", &["show", "no-such-snapshot"], 64);
    let key = s.env.path("store.key");
    s.run("key", "key", &["key", "generate", key.to_str().unwrap()], 0);
    // `--all`: one document listing every policy's (./policies/*.toml).
    lending_db(&s.env.path("policies/side.db"), 5);
    s.env.write(
        "policies/side.toml",
        "name = \"side\"\nstore = \"side-backups\"\n\n[[target]]\nname = \"side\"\nkind = \"sqlite\"\npath = \"side.db\"\n",
    );
    let r = s.env.guard(&["--policy", "policies/side.toml", "snapshot"]);
    assert_eq!(r.code, 0, "{r:?}");
    s.run("all", "drill", &["drill", "--all"], 0);
    s.run("all", "prune", &["prune", "--all", "--dry-run"], 0);
    // `init` in a directory of its own (it writes guard.toml there).
    let fresh = Env::new();
    lending_db(&fresh.path("app.db"), 3);
    fresh.write("data/a.txt", "a\n");
    s.run_in(Some(fresh.path("").as_path()), "init", "init", &["init"], 0);
    s.docs
}

/// Every subcommand `guard --help` lists.
fn subcommands() -> Vec<String> {
    let help = Env::new().guard(&["--help"]).stdout;
    let mut subs = Vec::new();
    let mut in_commands = false;
    for line in help.lines() {
        if line.starts_with("Commands:") {
            in_commands = true;
            continue;
        }
        if in_commands {
            if !line.starts_with("  ") {
                break;
            }
            if let Some(w) = line.split_whitespace().next() {
                if !line.starts_with("   ") {
                    subs.push(w.to_string());
                }
            }
        }
    }
    assert!(subs.len() > 10, "parsed the subcommands from --help: {subs:?}\n{help}");
    subs
}

/// A JSON type as docs/json.md names it.
fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Every field path in `v` (`targets[].artifacts[].key`) with the values seen there.
fn fields<'a>(v: &'a Value, prefix: &str, out: &mut BTreeMap<String, Vec<&'a Value>>) {
    if let Value::Object(o) = v {
        for (k, child) in o {
            let path = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            out.entry(path.clone()).or_default().push(child);
            match child {
                Value::Object(_) => fields(child, &path, out),
                Value::Array(items) => {
                    for item in items {
                        fields(item, &format!("{path}[]"), out);
                    }
                }
                _ => {}
            }
        }
    }
}

/// Strings that are lists in disguise: `app,rent-history`, `a, b, c` (every part one word).
fn comma_lists<'a>(v: &'a Value, path: &str, out: &mut Vec<(String, &'a str)>) {
    match v {
        Value::String(s) => {
            let parts: Vec<&str> = s.split(',').map(str::trim).collect();
            let wordy = |p: &&str| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || "_-./:".contains(c));
            if parts.len() >= 2 && parts.iter().all(wordy) {
                out.push((path.to_string(), s));
            }
        }
        Value::Array(items) => items.iter().for_each(|i| comma_lists(i, &format!("{path}[]"), out)),
        Value::Object(o) => o.iter().for_each(|(k, c)| comma_lists(c, &format!("{path}.{k}"), out)),
        _ => {}
    }
}

/// docs/json.md: for each `## ` section whose heading names a document (`` `list` ``), the
/// rows `` | `path` | type | meaning | ``.
fn documented() -> BTreeMap<String, BTreeMap<String, String>> {
    let text = std::fs::read_to_string(repo().join("docs/json.md")).expect("docs/json.md");
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut section: Option<String> = None;
    for line in text.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            section = h.split('`').nth(1).map(str::to_string);
            if let Some(s) = &section {
                out.entry(s.clone()).or_default();
            }
            continue;
        }
        let Some(sec) = &section else { continue };
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() >= 4 && cells[0].is_empty() && cells[1].starts_with('`') {
            let path = cells[1].trim_matches('`').to_string();
            out.get_mut(sec).unwrap().insert(path, cells[2].to_string());
        }
    }
    out
}

/// Does the documented path (`*` standing for any key of a map) name `emitted`?
fn path_matches(doc: &str, emitted: &str) -> bool {
    let (d, e): (Vec<&str>, Vec<&str>) = (doc.split('.').collect(), emitted.split('.').collect());
    d.len() == e.len()
        && d.iter().zip(&e).all(|(d, e)| {
            let (dn, da) = (d.trim_end_matches("[]"), d.ends_with("[]"));
            let (en, ea) = (e.trim_end_matches("[]"), e.ends_with("[]"));
            da == ea && (dn == "*" || dn == en)
        })
}

/// Does the documented type (`string or null`, `array of object`) admit `v`?
fn type_admits(doc: &str, v: &Value) -> bool {
    doc.split(" or ").any(|alt| {
        let alt = alt.trim();
        match alt.strip_prefix("array of ") {
            Some(elem) => v
                .as_array()
                .is_some_and(|items| items.iter().all(|i| type_admits(elem, i))),
            None => alt == type_name(v) || (alt == "number" && v.is_number()),
        }
    })
}

#[test]
fn every_subcommand_prints_one_versioned_document_with_arrays_for_lists_and_every_field_documented() {
    let docs = every_document();

    // Every subcommand is covered (a new one fails this test until it is added here).
    let covered: BTreeSet<&str> = docs.iter().map(|d| d.sub).filter(|s| !s.is_empty()).collect();
    for sub in subcommands() {
        assert!(
            covered.contains(sub.as_str()) || NOT_DOCUMENTS.contains(&sub.as_str()),
            "`guard {sub} --json` is not exercised by this test"
        );
    }

    let book = documented();
    let mut problems = Vec::new();
    let mut missing: BTreeMap<&str, BTreeMap<String, BTreeSet<&str>>> = BTreeMap::new();
    for d in &docs {
        let v = &d.value;
        if !v.is_object() {
            problems.push(format!("{}: not an object: {v}", d.args));
            continue;
        }
        if v["schema_version"] != 1 {
            problems.push(format!("{}: schema_version is {}", d.args, v["schema_version"]));
        }
        // `--all` nests every policy's document; each carries its own version too.
        if d.section == "all" {
            for inner in v["policies"].as_array().into_iter().flatten() {
                if inner["schema_version"] != 1 {
                    problems.push(format!(
                        "{}: a policy's document has no schema_version: {inner}",
                        d.args
                    ));
                }
            }
        }
        let mut lists = Vec::new();
        comma_lists(v, "", &mut lists);
        for (path, s) in lists {
            problems.push(format!(
                "{}: {path} is a comma-joined list {s:?}; make it an array",
                d.args
            ));
        }
        let Some(section) = book.get(d.section) else {
            problems.push(format!(
                "docs/json.md has no section \"## `{}`\" ({})",
                d.section, d.args
            ));
            continue;
        };
        let mut seen = BTreeMap::new();
        fields(v, "", &mut seen);
        for (path, values) in &seen {
            // `--all` wraps other documents, documented in their own sections.
            if d.section == "all" && path.starts_with("policies[].") {
                continue;
            }
            match section.iter().find(|(p, _)| path_matches(p, path)) {
                None => {
                    let types = missing.entry(d.section).or_default().entry(path.clone()).or_default();
                    types.extend(values.iter().map(|v| type_name(v)));
                }
                Some((p, ty)) => {
                    for val in values {
                        if !type_admits(ty, val) {
                            problems.push(format!(
                                "{}: `{path}` is {} ({val}) but docs/json.md says `{p}` is {ty:?}",
                                d.args,
                                type_name(val)
                            ));
                        }
                    }
                }
            }
        }
    }
    // The rows to add, generated from the real output.
    for (section, paths) in &missing {
        let mut rows = format!("docs/json.md, section `{section}`: fields the binary emits that are not documented:\n");
        for (p, types) in paths {
            rows.push_str(&format!(
                "| `{p}` | {} | |\n",
                types.iter().cloned().collect::<Vec<_>>().join(" or ")
            ));
        }
        problems.push(rows);
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn docs_json_is_linked_from_the_readme_and_names_the_schema_version() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    assert!(readme.contains("docs/json.md"), "README links docs/json.md");
    let doc = std::fs::read_to_string(repo().join("docs/json.md")).unwrap();
    assert!(doc.contains("`schema_version`"), "docs/json.md explains schema_version");
}
