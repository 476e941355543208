//! `${NAME}` in a policy: references, their expansion from the environment, `.env` files.
//!
//! Only `${NAME}` with `NAME` a plain identifier (`[A-Za-z_][A-Za-z0-9_]*`) is guard's, and
//! `$${` is a literal `${`. In values guard uses itself (paths, URLs, queries) a `${…}` that is
//! not a plain name is an error; in shell commands (hooks, `command` checks, `on_failure`) it
//! belongs to the shell (`${VAR:-x}`, `${VAR%%…}`) and reaches it untouched, as do `$VAR` and
//! `$(…)`. guard never substitutes into a shell command: the shell expands `${NAME}` from the
//! environment, so a secret never appears on a command line; guard only checks that it is set.
//!
//! References are found in the decoded TOML strings, so `\u0024{VAR}` or a name split by a
//! line-ending backslash are references like any other.
//!
//! A leaf module (used by the policy loader and by each kind's `config.rs` through
//! [`crate::parse_ctx::ParseCtx`]): values that come from the environment are registered with
//! [`crate::secrets`] when their variable name suggests a secret, so they are masked in output.

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::secrets;

/// A variable the policy uses that is not set: what needs it and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unresolved {
    pub var: String,
    /// `file:line` of the reference.
    pub at: String,
    /// What uses it: `target "db"`, `check "rows"`, `hooks.before`.
    pub user: String,
}

impl std::fmt::Display for Unresolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} needs environment variable {}, which is not set (the policy uses ${{{}}}; set it, or put it in the .env file beside the policy)",
            self.at, self.user, self.var, self.var
        )
    }
}

/// One `${…}` (or `$${`) in a string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ref {
    /// `${NAME}`, a plain identifier.
    Name(String),
    /// `$${`: a literal `${`.
    Escape,
    /// `${…}` that is not a plain name (`${VAR:-x}`, `${}`), or a `${` with no `}`.
    Other(String),
}

/// A reference and where it is in the string: `start..end` covers `${NAME}` (or `$${`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub start: usize,
    pub end: usize,
    pub r: Ref,
}

/// Is `s` a plain identifier?
pub fn is_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch == '_' || ch.is_ascii_alphabetic())
        && c.all(|ch| ch == '_' || ch.is_ascii_alphanumeric())
}

/// Every `${…}` and `$${` in `s`, in order.
pub fn refs(s: &str) -> Vec<Found> {
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(off) = s[i..].find("${") {
        let start = i + off;
        if start > 0 && s.as_bytes()[start - 1] == b'$' && !escaped_before(s, start - 1) {
            out.push(Found {
                start: start - 1,
                end: start + 2,
                r: Ref::Escape,
            });
            i = start + 2;
            continue;
        }
        match s[start + 2..].find('}') {
            Some(len) => {
                let inner = &s[start + 2..start + 2 + len];
                let end = start + 3 + len;
                let r = if is_name(inner) {
                    Ref::Name(inner.to_string())
                } else {
                    Ref::Other(s[start..end].to_string())
                };
                out.push(Found { start, end, r });
                i = end;
            }
            None => {
                out.push(Found {
                    start,
                    end: s.len(),
                    r: Ref::Other(s[start..].to_string()),
                });
                break;
            }
        }
    }
    out
}

/// Is the `$` at `at` itself the second of a `$$` pair already taken as an escape? (`$$${X}` is
/// an escape followed by… nothing: guard reads `$$` + `${X}` left to right, so a `$` preceded by
/// an odd run of `$` is part of a pair.)
fn escaped_before(s: &str, at: usize) -> bool {
    let run = s[..at].bytes().rev().take_while(|&b| b == b'$').count();
    run % 2 == 1
}

/// The value of `name` from the environment (a `.env` beside the policy has been merged in by
/// [`load_dotenv`]); a secret-looking value is registered for masking.
pub fn lookup(name: &str) -> Option<String> {
    let v = std::env::var(name).ok()?;
    secrets::register_from_env(name, &v);
    Some(v)
}

/// A value with its `${NAME}`s expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expanded {
    pub text: String,
    /// Unset variables (replaced by nothing in `text`), with their byte offset in the input.
    pub missing: Vec<(String, usize)>,
}

/// Expand a value guard uses itself: `${NAME}` from the environment, `$${` to `${`. A `${…}`
/// that is not a plain name is an error (`Err` holds it).
pub fn expand_value(s: &str) -> Result<Expanded, String> {
    let mut text = String::with_capacity(s.len());
    let mut missing = Vec::new();
    let mut last = 0;
    for f in refs(s) {
        text.push_str(&s[last..f.start]);
        match f.r {
            Ref::Name(name) => match lookup(&name) {
                Some(v) => text.push_str(&v),
                None => missing.push((name, f.start)),
            },
            Ref::Escape => text.push_str("${"),
            Ref::Other(o) => return Err(o),
        }
        last = f.end;
    }
    text.push_str(&s[last..]);
    Ok(Expanded { text, missing })
}

/// A shell command as the shell gets it (`$${` made `${`, everything else untouched), and the
/// `${NAME}`s in it that are not set (with their byte offsets). Set ones are registered for
/// masking: the shell expands them, and what the command prints is masked.
pub fn shell_command(s: &str) -> (String, Vec<(String, usize)>) {
    let mut text = String::with_capacity(s.len());
    let mut missing = Vec::new();
    let mut last = 0;
    for f in refs(s) {
        text.push_str(&s[last..f.start]);
        match &f.r {
            Ref::Name(name) => {
                if lookup(name).is_none() {
                    missing.push((name.clone(), f.start));
                }
                text.push_str(&s[f.start..f.end]);
            }
            Ref::Escape => text.push_str("${"),
            Ref::Other(o) => text.push_str(o),
        }
        last = f.end;
    }
    text.push_str(&s[last..]);
    (text, missing)
}

/// Read `dir/.env` when it exists and set each variable it defines that the environment does
/// not already have (the real environment wins). Returns the names it set.
pub fn load_dotenv(dir: &Path) -> Result<Vec<String>> {
    load_env_file(&dir.join(".env"), false)
}

/// The environment file `GUARD_ENV_FILE` names (what `guard schedule`'s crontab line sets; the
/// systemd unit's `EnvironmentFile=` is the same file): required (optional as `-PATH`), read like `.env`,
/// before the `.env` beside the policy, so it wins over that one and the real environment over
/// both.
pub fn load_guard_env_file() -> Result<Vec<String>> {
    // `-PATH`: optional, as systemd's `EnvironmentFile=-PATH`.
    let Some(v) = std::env::var("GUARD_ENV_FILE").ok().filter(|v| !v.is_empty()) else {
        return Ok(Vec::new());
    };
    let (path, required) = match v.strip_prefix('-') {
        Some(p) => (p, false),
        None => (v.as_str(), true),
    };
    load_env_file(Path::new(path), required).context("GUARD_ENV_FILE")
}

/// Set each variable `path` defines (`.env` syntax) that the environment does not have. A
/// missing file is an error when `required`, nothing otherwise.
fn load_env_file(path: &Path, required: bool) -> Result<Vec<String>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut set = Vec::new();
    for (name, value) in parse_dotenv(&text).with_context(|| path.display().to_string())? {
        if std::env::var_os(&name).is_none() {
            // Set before any thread or child exists: the policy is loaded first thing.
            std::env::set_var(&name, &value);
            set.push(name);
        }
    }
    Ok(set)
}

/// `.env` syntax (as dotenv, docker compose and Prisma read it): `NAME=value` lines, an optional
/// `export `, `#` comments; a value is bare (trimmed, ending at ` #`), `'single-quoted'`
/// (literal) or `"double-quoted"` (`\n`, `\"`, `\\` escapes; may span lines). Values are not
/// expanded.
pub fn parse_dotenv(text: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((i, line)) = lines.next() {
        let line = line.trim_start_matches('\u{feff}').trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").map(str::trim_start).unwrap_or(line);
        let Some((name, rest)) = line.split_once('=') else {
            bail!("line {}: expected NAME=value", i + 1);
        };
        let name = name.trim();
        if !is_name(name) {
            bail!("line {}: {name:?} is not a variable name", i + 1);
        }
        let rest = rest.trim_start();
        let value = if let Some(body) = rest.strip_prefix('\'') {
            match body.find('\'') {
                Some(end) => body[..end].to_string(),
                None => bail!("line {}: unclosed ' in the value of {name}", i + 1),
            }
        } else if let Some(body) = rest.strip_prefix('"') {
            let mut buf = body.to_string();
            loop {
                if let Some(v) = double_quoted(&buf) {
                    break v;
                }
                match lines.next() {
                    Some((_, more)) => {
                        buf.push('\n');
                        buf.push_str(more);
                    }
                    None => bail!("line {}: unclosed \" in the value of {name}", i + 1),
                }
            }
        } else {
            let bare = match rest.find(" #") {
                Some(c) => &rest[..c],
                None => rest,
            };
            bare.trim().to_string()
        };
        out.push((name.to_string(), value));
    }
    Ok(out)
}

/// The content of a double-quoted value up to its closing quote, escapes applied; `None` when
/// the quote does not close in `s`.
fn double_quoted(s: &str) -> Option<String> {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => match chars.next()? {
                'n' => out.push('\n'),
                'r' => out.push('\r'),
                't' => out.push('\t'),
                other @ ('"' | '\\' | '$') => out.push(other),
                other => {
                    out.push('\\');
                    out.push(other);
                }
            },
            c => out.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(s: &str) -> Vec<Ref> {
        refs(s).into_iter().map(|f| f.r).collect()
    }

    #[test]
    fn only_plain_names_are_references() {
        assert_eq!(
            names("${A} ${B_2}x ${VAR:-d} ${V%%?*} $${C} $HOME $(id) ${"),
            vec![
                Ref::Name("A".into()),
                Ref::Name("B_2".into()),
                Ref::Other("${VAR:-d}".into()),
                Ref::Other("${V%%?*}".into()),
                Ref::Escape,
                Ref::Other("${".into()),
            ]
        );
        assert_eq!(names("${}"), vec![Ref::Other("${}".into())]);
        assert_eq!(names("$$${X}"), vec![Ref::Name("X".into())], "$$ then ${{X}}");
        assert!(!is_name("1A") && !is_name("") && is_name("_a1"));
    }

    #[test]
    fn values_expand_names_and_unescape() {
        std::env::set_var("GUARD_TEST_VARS_X", "ex");
        let e = expand_value("a${GUARD_TEST_VARS_X}b${GUARD_TEST_VARS_UNSET_Q}c$${d}").unwrap();
        assert_eq!(e.text, "aexbc${d}");
        assert_eq!(e.missing, vec![("GUARD_TEST_VARS_UNSET_Q".to_string(), 22)]);
        assert_eq!(expand_value("x ${A:-b}").unwrap_err(), "${A:-b}");
    }

    #[test]
    fn shell_commands_keep_everything_but_the_escape() {
        std::env::set_var("GUARD_TEST_VARS_S", "1");
        let (text, missing) =
            shell_command("echo ${GUARD_TEST_VARS_S} ${GUARD_TEST_VARS_UNSET_S} ${X:-y} $${Z} $$ $(id)");
        assert_eq!(
            text,
            "echo ${GUARD_TEST_VARS_S} ${GUARD_TEST_VARS_UNSET_S} ${X:-y} ${Z} $$ $(id)"
        );
        assert_eq!(missing, vec![("GUARD_TEST_VARS_UNSET_S".to_string(), 26)]);
    }

    #[test]
    fn dotenv_syntax() {
        let got = parse_dotenv(concat!(
            "\u{feff}# comment\n",
            "\n",
            "DATABASE_URL=\"postgres://u:p@h/db?schema=public&sslmode=require\"\n",
            "export TOKEN='a \"b\" $c'\n",
            "BARE = value with spaces # comment\n",
            "HASH=a#b\n",
            "EMPTY=\n",
            "ESC=\"line1\\nline2 \\\"q\\\" \\\\\"\n",
            "MULTI=\"one\n",
            "two\"\n",
        ))
        .unwrap();
        let want = [
            ("DATABASE_URL", "postgres://u:p@h/db?schema=public&sslmode=require"),
            ("TOKEN", "a \"b\" $c"),
            ("BARE", "value with spaces"),
            ("HASH", "a#b"),
            ("EMPTY", ""),
            ("ESC", "line1\nline2 \"q\" \\"),
            ("MULTI", "one\ntwo"),
        ];
        let got: Vec<(&str, &str)> = got.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(got, want);
        assert!(parse_dotenv("NOEQUALS\n").unwrap_err().to_string().contains("line 1"));
        assert!(parse_dotenv("A=\"open\n").is_err());
        assert!(parse_dotenv("1X=a\n").is_err());
    }

    #[test]
    fn the_real_environment_wins_over_dotenv() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(".env"),
            "GUARD_TEST_DOTENV_A=from-file\nGUARD_TEST_DOTENV_B=from-file\n",
        )
        .unwrap();
        std::env::set_var("GUARD_TEST_DOTENV_A", "from-env");
        std::env::remove_var("GUARD_TEST_DOTENV_B");
        let set = load_dotenv(dir.path()).unwrap();
        assert_eq!(set, ["GUARD_TEST_DOTENV_B"]);
        assert_eq!(std::env::var("GUARD_TEST_DOTENV_A").unwrap(), "from-env");
        assert_eq!(std::env::var("GUARD_TEST_DOTENV_B").unwrap(), "from-file");
        assert!(load_dotenv(&dir.path().join("none")).unwrap().is_empty());
    }
}
