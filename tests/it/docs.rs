//! The documentation is part of the product: README's tour runs as written, every relative link
//! in README.md and docs/ leads to a file and heading that exist, and README stays an entry page.

use crate::common::*;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// README.md and every Markdown file under docs/.
fn doc_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "md") {
                out.push(p);
            }
        }
    }
    let mut out = vec![repo().join("README.md")];
    walk(&repo().join("docs"), &mut out);
    out.sort();
    out
}

/// The first fenced block after the heading `heading` in `md`.
fn block_after(md: &str, heading: &str) -> String {
    let start = md
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("no heading {heading:?}"));
    let rest = &md[start..];
    let open = rest.find("\n```").expect("a fenced block") + 1;
    let body = &rest[open..];
    let body = &body[body.find('\n').unwrap() + 1..];
    body[..body.find("\n```").expect("the block's end") + 1].to_string()
}

/// Heading anchors as GitHub makes them: lower case, punctuation dropped, spaces to hyphens,
/// a repeated heading gets `-1`, `-2`, … Headings inside fenced blocks are not headings.
fn anchors(md: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut fence = false;
    for line in md.lines() {
        if line.starts_with("```") {
            fence = !fence;
        }
        if fence || !line.starts_with('#') {
            continue;
        }
        let text = line.trim_start_matches('#');
        if !text.starts_with(' ') {
            continue;
        }
        let slug: String = text
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let mut s = slug.clone();
        let mut n = 0;
        while seen.contains(&s) {
            n += 1;
            s = format!("{slug}-{n}");
        }
        seen.insert(s);
    }
    seen
}

/// Every `](target)` of a Markdown file outside fenced blocks and code spans.
fn links(md: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fence = false;
    for line in md.lines() {
        if line.starts_with("```") {
            fence = !fence;
        }
        if fence {
            continue;
        }
        // drop code spans: `[a](b)` inside backticks is not a link
        let mut plain = String::new();
        for (i, part) in line.split('`').enumerate() {
            if i % 2 == 0 {
                plain.push_str(part);
            }
        }
        let mut rest = plain.as_str();
        while let Some(i) = rest.find("](") {
            let after = &rest[i + 2..];
            let Some(end) = after.find(')') else { break };
            out.push(after[..end].to_string());
            rest = &after[end..];
        }
    }
    out
}

#[test]
fn every_relative_link_in_the_docs_leads_to_a_file_and_heading_that_exist() {
    let mut broken = Vec::new();
    let files = doc_files();
    assert!(files.len() > 10, "docs/ holds the manual: {files:?}");
    for file in &files {
        let md = read(file);
        for link in links(&md) {
            if link.starts_with("http://") || link.starts_with("https://") || link.starts_with("mailto:") {
                continue;
            }
            let (path, anchor) = match link.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (link.as_str(), None),
            };
            let target = if path.is_empty() {
                file.clone()
            } else {
                file.parent().unwrap().join(path)
            };
            if !target.exists() {
                broken.push(format!("{}: {link}: no such file", file.display()));
                continue;
            }
            if let Some(a) = anchor {
                if !anchors(&read(&target)).contains(a) {
                    broken.push(format!("{}: {link}: no such heading", file.display()));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn readme_is_an_entry_page_and_the_manual_is_in_docs() {
    let readme = read(&repo().join("README.md"));
    let lines = readme.lines().count();
    assert!(lines <= 300, "README.md has {lines} lines; the manual goes in docs/");
    for page in [
        "docs/policy.md",
        "docs/targets/sqlite.md",
        "docs/targets/dir.md",
        "docs/targets/postgres.md",
        "docs/targets/s3.md",
        "docs/targets/turso.md",
        "docs/store.md",
        "docs/operations.md",
        "docs/security.md",
        "docs/performance.md",
        "docs/guarantees.md",
    ] {
        assert!(repo().join(page).is_file(), "{page} is missing");
        assert!(
            readme.contains(&format!("]({page}")),
            "README's contents do not link {page}"
        );
    }
    // The exit codes are the public contract: README keeps the table, one row per code.
    let codes = block_between(&readme, "### Exit codes", "## ");
    for code in [
        "| 0 |", "| 1 |", "| 64 |", "| 65 |", "| 66 |", "| 69 |", "| 70 |", "| 75 |", "| 76 |", "| 79 |", "| 80 |",
        "| 81 |", "| 82 |",
    ] {
        assert!(codes.contains(code), "README's exit codes lack {code}");
    }
}

/// The text from `from` up to the next line starting with `until`.
fn block_between(md: &str, from: &str, until: &str) -> String {
    let start = md.find(from).unwrap_or_else(|| panic!("no {from:?}"));
    let rest = &md[start + from.len()..];
    let end = rest
        .lines()
        .scan(0, |pos, l| {
            let p = *pos;
            *pos += l.len() + 1;
            Some((p, l))
        })
        .find(|(_, l)| l.starts_with(until))
        .map(|(p, _)| p)
        .unwrap_or(rest.len());
    rest[..end].to_string()
}

#[test]
fn the_readme_tour_runs_as_written() {
    let tour = block_after(&read(&repo().join("README.md")), "## A 60-second tour");
    let env = Env::new();
    let bin_dir = Path::new(&guard_bin()).parent().unwrap().to_path_buf();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let out = Command::new("bash")
        .arg("-c")
        .arg(&tour)
        .current_dir(env.dir.path())
        .env("PATH", path)
        .env_remove("GUARD_POLICY")
        .stdin(Stdio::null())
        .output()
        .expect("bash");
    let run: Run = out.into();
    assert_eq!(run.code, 0, "the tour's last command fails: {run:?}");
    // The bad migration was caught and restored, the good one kept: both users, and the column.
    let db = env.path("app.db");
    assert_eq!(count(&db, "SELECT count(*) FROM user"), 2, "{run:?}");
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM pragma_table_info('user') WHERE name = 'email'"
        ),
        1,
        "{run:?}"
    );
    assert!(
        run.stdout.contains("ada\nbob\n"),
        "the tour's SELECT shows both users: {run:?}"
    );
    assert!(run.stderr.contains("restored app"), "{run:?}");
    assert!(run.stderr.contains("changes kept"), "{run:?}");
    assert!(
        run.stdout.contains("rescue"),
        "`guard list` shows the rescue snapshot: {run:?}"
    );
    assert!(run.stdout.contains("nothing needs attention"), "{run:?}");
}

/// Every ```toml block of a Markdown file.
fn toml_blocks(md: &str) -> Vec<String> {
    md.split("```toml\n")
        .skip(1)
        .map(|b| b.split("\n```").next().unwrap().to_string())
        .collect()
}

#[test]
fn every_recipe_policy_loads() {
    let dir = repo().join("docs/recipes");
    let mut n = 0;
    let mut pages: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    pages.sort();
    for page in pages {
        for (i, policy) in toml_blocks(&read(&page)).iter().enumerate() {
            let env = Env::new();
            env.write("guard.toml", policy);
            // The variables the recipes read from their platform's secrets.
            let r: Run = env
                .cmd(&["--dry-run", "--", "true"])
                .env("DATABASE_URL", "postgres://app:pw@127.0.0.1:1/app")
                .env("AWS_ACCESS_KEY_ID", "test")
                .env("AWS_SECRET_ACCESS_KEY", "test")
                .env("AWS_REGION", "us-east-1")
                .output()
                .unwrap()
                .into();
            // It loads (64 would be a policy error); the preflight that follows the plan may
            // find the recipe's targets missing here (69).
            assert!(
                r.code != 64 && r.stdout.contains("dry run of policy"),
                "{} policy {i} does not load: {r:?}\n{policy}",
                page.display()
            );
            n += 1;
        }
    }
    assert!(n >= 6, "the recipes' policies: {n}");
    // The Dockerfile builds guard with the command README's Install gives.
    let docker = read(&dir.join("Dockerfile"));
    let readme = read(&repo().join("README.md"));
    assert!(
        readme.contains("cargo install --locked --path ."),
        "README's install command"
    );
    assert!(
        docker.contains("RUN cargo install --locked --path ."),
        "the Dockerfile uses it:\n{docker}"
    );
    assert!(
        docker.contains("postgresql-client-${PG_MAJOR}"),
        "with the PostgreSQL client tools"
    );
}
