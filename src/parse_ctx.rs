//! [`ParseCtx`]: the one home of the `file:line:` prefix of every policy error.
//!
//! The policy loader (`policy/`) and each target kind's `config.rs` parse their sections through
//! one context that knows the file, its text (for line numbers), where every key sits (a
//! `toml_edit` view of the same text), the directory relative paths are resolved against, and
//! the table being parsed (a "scope": `target "db"` of kind `postgres`, `check "rows"`). Errors
//! raised inside a scope carry its subject and line, so a kind's parser writes only what is
//! wrong: `cx.need("url", raw.url)?`, `fail!(cx, "format {f:?} …")`.
//!
//! It is a leaf module (not `policy/ctx.rs`) so that `targets/<kind>/config.rs` can use it
//! without the targets importing the policy, which imports the targets' registry.

use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use serde::de::DeserializeOwned;

use crate::vars::{self, Expanded, Unresolved};

/// Return an error located by the context: `fail!(cx, "…", args)` at the current scope (its
/// line and subject), `fail!(cx, @span, "…", args)` at the line of a byte span.
macro_rules! fail {
    ($cx:expr, @$span:expr, $($arg:tt)+) => {
        return Err($cx.err_at($span, format!($($arg)+)))
    };
    ($cx:expr, $($arg:tt)+) => {
        return Err($cx.fail(format!($($arg)+)))
    };
}
pub(crate) use fail;

/// One step of a path into the TOML document: a key or an index into an array of tables.
#[derive(Debug, Clone)]
pub enum Seg {
    Key(&'static str),
    Index(usize),
}

/// The table being parsed.
#[derive(Debug, Clone)]
pub struct Scope {
    /// How errors name it: `target "db"`, `check "rows"`.
    pub subject: String,
    /// Its kind, for "needs `url`" messages (targets).
    pub kind: Option<String>,
    /// Byte span of the table in the text.
    pub span: Range<usize>,
    /// Where it is in the document (`["target", 2]`), to find its keys' lines.
    pub path: Vec<Seg>,
}

impl Scope {
    /// A scope for the table at `path` spanning `span`.
    pub fn new(subject: String, span: Range<usize>, path: Vec<Seg>) -> Scope {
        Scope {
            subject,
            kind: None,
            span,
            path,
        }
    }
}

/// Parsing state shared by every section of one policy file.
pub struct ParseCtx<'a> {
    shown: String,
    text: &'a str,
    doc: Option<toml_edit::ImDocument<&'a str>>,
    base_dir: PathBuf,
    scope: Option<Scope>,
    /// Unset variables found so far inside scopes (targets, checks) and in shell commands:
    /// they are needed only by the commands that use them.
    unresolved: Vec<Unresolved>,
    /// `unresolved.len()` when the current scope was entered.
    scope_mark: usize,
}

impl<'a> ParseCtx<'a> {
    /// A context for `text`, read from `path` (named in messages; its directory anchors
    /// relative paths).
    pub fn new(text: &'a str, path: &Path) -> ParseCtx<'a> {
        let base_dir = path
            .parent()
            .map(|p| if p.as_os_str().is_empty() { Path::new(".") } else { p })
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let base_dir = std::fs::canonicalize(&base_dir).unwrap_or(base_dir);
        ParseCtx {
            shown: path.display().to_string(),
            text,
            doc: toml_edit::ImDocument::parse(text).ok(),
            base_dir,
            scope: None,
            unresolved: Vec::new(),
            scope_mark: 0,
        }
    }

    /// The file as messages name it.
    pub fn file(&self) -> &str {
        &self.shown
    }

    /// The directory relative paths are resolved against (the policy file's, canonical).
    pub fn base_dir(&self) -> &Path {
        &self.base_dir
    }

    /// Line (1-based) of a byte offset.
    pub fn line(&self, offset: usize) -> usize {
        line_of(self.text, offset)
    }

    /// `file:line` of a byte span.
    pub fn at(&self, span: Range<usize>) -> String {
        format!("{}:{}", self.shown, self.line(span.start))
    }

    /// An error at the line of `span`.
    pub fn err_at(&self, span: Range<usize>, msg: impl std::fmt::Display) -> anyhow::Error {
        anyhow!("{}: {msg}", self.at(span))
    }

    /// An error at line `line` (`0`: no line known).
    pub fn err_line(&self, line: usize, msg: impl std::fmt::Display) -> anyhow::Error {
        if line == 0 {
            anyhow!("{}: {msg}", self.shown)
        } else {
            anyhow!("{}:{line}: {msg}", self.shown)
        }
    }

    /// An error about the current scope, at its line: `file:line: target "db": msg`.
    pub fn fail(&self, msg: impl std::fmt::Display) -> anyhow::Error {
        match &self.scope {
            Some(s) => anyhow!("{}: {}: {msg}", self.at(s.span.clone()), s.subject),
            None => anyhow!("{}: {msg}", self.shown),
        }
    }

    /// An error whose text continues the scope's subject: `file:line: target "db" needs …`.
    pub fn fail_sentence(&self, msg: impl std::fmt::Display) -> anyhow::Error {
        match &self.scope {
            Some(s) => anyhow!("{}: {} {msg}", self.at(s.span.clone()), s.subject),
            None => anyhow!("{}: {msg}", self.shown),
        }
    }

    /// An error about `key` of the current scope, at the key's own line.
    pub fn fail_key(&self, key: &str, msg: impl std::fmt::Display) -> anyhow::Error {
        let subject = self
            .scope
            .as_ref()
            .map(|s| format!("{}: ", s.subject))
            .unwrap_or_default();
        self.err_line(self.key_line(key), format!("{subject}{msg}"))
    }

    /// Run `f` with `scope` as the current scope.
    pub fn within<T>(&mut self, scope: Scope, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        let outer = self.scope.replace(scope);
        let outer_mark = std::mem::replace(&mut self.scope_mark, self.unresolved.len());
        let r = f(self);
        self.scope = outer;
        self.scope_mark = outer_mark;
        r
    }

    /// Does the current scope use a variable that is not set? (Its values are then partial:
    /// checks that need the real value are left to the command that resolves it.)
    pub fn deferred(&self) -> bool {
        self.scope.is_some() && self.unresolved.len() > self.scope_mark
    }

    /// How many unset variables have been found so far (a mark for [`ParseCtx::unresolved_since`]).
    pub fn unresolved_len(&self) -> usize {
        self.unresolved.len()
    }

    /// The unset variables found since `mark`.
    pub fn unresolved_since(&self, mark: usize) -> &[Unresolved] {
        &self.unresolved[mark.min(self.unresolved.len())..]
    }

    /// Every unset variable the policy uses.
    pub fn unresolved(&self) -> &[Unresolved] {
        &self.unresolved
    }

    /// The current scope's subject (`target "db"`), or "" outside one.
    pub fn subject(&self) -> &str {
        self.scope.as_ref().map(|s| s.subject.as_str()).unwrap_or("")
    }

    /// Line of `key` in the current scope's table; the table's own line when the key is not
    /// found; 0 outside a scope.
    pub fn key_line(&self, key: &str) -> usize {
        let Some(scope) = &self.scope else { return 0 };
        let span = self
            .table_at(&scope.path)
            .and_then(|t| t.key(key))
            .and_then(|k| k.span());
        self.line(span.unwrap_or(scope.span.clone()).start)
    }

    fn table_at(&self, path: &[Seg]) -> Option<&dyn toml_edit::TableLike> {
        self.item_at(path)?.as_table_like()
    }

    fn item_at(&self, path: &[Seg]) -> Option<&toml_edit::Item> {
        let mut item = self.doc.as_ref()?.as_item();
        for seg in path {
            item = match seg {
                Seg::Key(k) => item.get(*k)?,
                Seg::Index(i) => item.get(*i)?,
            };
        }
        Some(item)
    }

    /// Line where the decoded string at `path` starts (a multi-line string's first line
    /// break is not part of it); the enclosing table's line when unknown.
    fn string_line(&self, path: &[Seg]) -> usize {
        let span = self.item_at(path).and_then(|i| i.span());
        match span {
            Some(sp) => {
                let raw = &self.text[sp.start.min(self.text.len())..];
                let opens_line = ["\"\"\"\n", "\"\"\"\r\n", "'''\n", "'''\r\n"]
                    .iter()
                    .any(|q| raw.starts_with(q));
                self.line(sp.start) + usize::from(opens_line)
            }
            None => match &self.scope {
                Some(s) => self.line(s.span.start),
                None => 0,
            },
        }
    }

    /// The document path of the current scope's table (empty outside a scope).
    pub fn scope_path(&self) -> Vec<Seg> {
        self.scope.as_ref().map(|s| s.path.clone()).unwrap_or_default()
    }

    /// The document path of `key` in the current scope.
    fn key_path(&self, key: &'static str) -> Vec<Seg> {
        let mut p = self.scope_path();
        p.push(Seg::Key(key));
        p
    }

    /// Expand the string at `path` (`${NAME}` from the environment, `$${` to `${`). Inside a
    /// scope an unset variable is recorded and expands to nothing (see [`ParseCtx::deferred`]);
    /// outside one (the policy's name, store, retention, drill.max_age) it is an error.
    pub fn expand_at(&mut self, path: &[Seg], s: &str) -> Result<Expanded> {
        let line = self.string_line(path);
        let e = vars::expand_value(s).map_err(|other| {
            self.err_line(
                line,
                format!("`{other}`: guard expands only `${{NAME}}` (a plain name); write `$${{` for a literal `${{`"),
            )
        })?;
        for (var, offset) in &e.missing {
            let at = format!("{}:{}", self.shown, line + s[..*offset].matches('\n').count());
            match &self.scope {
                Some(scope) => self.unresolved.push(Unresolved {
                    var: var.clone(),
                    at,
                    user: scope.subject.clone(),
                }),
                None => bail!("{at}: environment variable {var} is not set (the policy uses ${{{var}}})"),
            }
        }
        Ok(e)
    }

    /// [`ParseCtx::expand_at`] for `key` of the current scope.
    pub fn expand(&mut self, key: &'static str, s: &str) -> Result<String> {
        let path = self.key_path(key);
        Ok(self.expand_at(&path, s)?.text)
    }

    /// A shell command at `path` as the shell gets it (`$${` made `${`); its unset `${NAME}`s
    /// are recorded as needed by `user`.
    pub fn shell(&mut self, path: &[Seg], user: &str, s: &str) -> String {
        let line = self.string_line(path);
        let (text, missing) = vars::shell_command(s);
        for (var, offset) in missing {
            let at = format!("{}:{}", self.shown, line + s[..offset].matches('\n').count());
            self.unresolved.push(Unresolved {
                var,
                at,
                user: user.to_string(),
            });
        }
        text
    }

    /// A path from the policy: absolute, or relative to the policy's directory.
    pub fn resolve(&self, p: &str) -> PathBuf {
        let p = PathBuf::from(p);
        if p.is_absolute() {
            p
        } else {
            self.base_dir.join(p)
        }
    }

    /// A required string key, expanded; missing or empty is an error naming the key (unless
    /// it is empty because a variable is unset: the target is then deferred).
    pub fn need(&mut self, key: &'static str, v: Option<String>) -> Result<String> {
        let Some(v) = v else { return Err(self.needs(key)) };
        let path = self.key_path(key);
        let e = self.expand_at(&path, &v)?;
        if e.text.trim().is_empty() && e.missing.is_empty() {
            return Err(self.needs(key));
        }
        Ok(e.text)
    }

    /// `file:line: target "db" of kind "postgres" needs `url``.
    fn needs(&self, key: &str) -> anyhow::Error {
        let of = self.scope.as_ref().and_then(|s| s.kind.as_ref());
        let of = of.map(|k| format!("of kind {k:?} ")).unwrap_or_default();
        self.fail_sentence(format!("{of}needs `{key}`"))
    }

    /// A required path key, expanded and resolved against the policy's directory.
    pub fn need_path(&mut self, key: &'static str, v: Option<String>) -> Result<PathBuf> {
        let p = self.need(key, v)?;
        Ok(self.resolve(&p))
    }

    /// An optional string key, expanded; empty counts as unset.
    pub fn opt(&mut self, key: &'static str, v: Option<String>) -> Result<Option<String>> {
        let Some(v) = v else { return Ok(None) };
        let t = self.expand(key, &v)?;
        Ok(Some(t).filter(|s| !s.trim().is_empty()))
    }

    /// An optional list of strings, each expanded.
    pub fn list(&mut self, key: &'static str, v: Option<Vec<String>>) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for (i, s) in v.unwrap_or_default().iter().enumerate() {
            let mut path = self.key_path(key);
            path.push(Seg::Index(i));
            out.push(self.expand_at(&path, s)?.text);
        }
        Ok(out)
    }

    /// A key that takes one of a few words; unset gives `default`.
    pub fn one_of<T: Copy>(
        &mut self,
        key: &'static str,
        v: Option<String>,
        default: T,
        choices: &[(&str, T)],
    ) -> Result<T> {
        let Some(v) = v else {
            return Ok(default);
        };
        let path = self.key_path(key);
        let e = self.expand_at(&path, &v)?;
        if !e.missing.is_empty() {
            return Ok(default);
        }
        let v = e.text;
        if let Some((_, t)) = choices.iter().find(|(w, _)| *w == v) {
            return Ok(*t);
        }
        let words: Vec<String> = choices.iter().map(|(w, _)| format!("{w:?}")).collect();
        let words = match words.split_last() {
            Some((last, [])) => last.clone(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        };
        Err(self.fail(format!("{key} {v:?} must be {words}")))
    }

    /// Deserialize the current scope's remaining keys (a kind's `Raw`, which denies unknown
    /// fields): errors name the key's line, and serde's list of the valid keys.
    pub fn keys<R: DeserializeOwned>(&self, table: toml::Table) -> Result<R> {
        toml::Value::Table(table).try_into().map_err(|e: toml::de::Error| {
            let msg = e.message().trim().to_string();
            // "unknown field `x`, expected …" names the key in the message; a type error names
            // it in the error's display ("… \nin `x`").
            let shown = e.to_string();
            let key = between_backticks(&msg)
                .filter(|_| msg.starts_with("unknown field"))
                .or_else(|| shown.lines().find_map(|l| l.strip_prefix("in `")?.strip_suffix('`')));
            let line = key.map(|k| self.key_line(k.split('.').next().unwrap_or(k)));
            let what = match self.scope.as_ref() {
                Some(Scope {
                    subject, kind: Some(k), ..
                }) => format!("{subject} of kind {k:?}: "),
                Some(s) => format!("{}: ", s.subject),
                None => String::new(),
            };
            let line = line.unwrap_or_else(|| self.scope.as_ref().map(|s| self.line(s.span.start)).unwrap_or(0));
            let msg = msg.replace("unknown field", "unknown key");
            self.err_line(line, format!("{what}{msg}"))
        })
    }
}

fn between_backticks(s: &str) -> Option<&str> {
    let (_, rest) = s.split_once('`')?;
    Some(rest.split_once('`')?.0)
}

/// Line (1-based) of a byte offset in `text`.
pub fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "name = \"p\"\n[[target]]\nname = \"db\"\nkind = \"x\"\nurl = \"\"\nmode = \"b\"\n";

    fn scoped<T>(f: impl FnOnce(&mut ParseCtx) -> Result<T>) -> Result<T> {
        let mut cx = ParseCtx::new(TEXT, Path::new("/tmp/p/policy.toml"));
        let scope = Scope {
            subject: "target \"db\"".into(),
            kind: Some("x".into()),
            span: 11..70,
            path: vec![Seg::Key("target"), Seg::Index(0)],
        };
        cx.within(scope, f)
    }

    #[test]
    fn need_names_the_key_the_kind_and_the_tables_line() {
        let e = scoped(|cx| cx.need("url", Some(String::new()))).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/tmp/p/policy.toml:2: target \"db\" of kind \"x\" needs `url`"
        );
    }

    #[test]
    fn one_of_lists_the_words() {
        let e = scoped(|cx| cx.one_of("mode", Some("b".into()), 0, &[("a", 1), ("c", 2)])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/tmp/p/policy.toml:2: target \"db\": mode \"b\" must be \"a\" or \"c\""
        );
        assert_eq!(scoped(|cx| cx.one_of("mode", None, 0, &[("a", 1)])).unwrap(), 0);
        let e = scoped(|cx| cx.one_of("mode", Some("z".into()), 0, &[("a", 1), ("b", 2), ("c", 3)])).unwrap_err();
        assert!(e.to_string().ends_with("must be \"a\", \"b\" or \"c\""), "{e}");
    }

    #[test]
    fn keys_errors_name_the_keys_line_and_the_valid_keys() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Raw {
            url: Option<String>,
            flag: Option<bool>,
        }
        let mut t = toml::Table::new();
        t.insert("mode".into(), toml::Value::String("b".into()));
        let e = scoped(|cx| cx.keys::<Raw>(t)).unwrap_err().to_string();
        assert!(
            e.starts_with("/tmp/p/policy.toml:6: target \"db\" of kind \"x\": unknown key `mode`"),
            "{e}"
        );
        assert!(e.ends_with("expected `url` or `flag`"), "{e}");
        let mut t = toml::Table::new();
        t.insert("url".into(), toml::Value::Integer(1));
        let e = scoped(|cx| cx.keys::<Raw>(t)).unwrap_err().to_string();
        assert!(e.starts_with("/tmp/p/policy.toml:5: "), "{e}");
    }

    #[test]
    fn relative_paths_resolve_against_the_policy_directory() {
        let cx = ParseCtx::new(TEXT, Path::new("/nonexistent-guard-dir/policy.toml"));
        assert_eq!(cx.resolve("a.db"), PathBuf::from("/nonexistent-guard-dir/a.db"));
        assert_eq!(cx.resolve("/x/a.db"), PathBuf::from("/x/a.db"));
        assert_eq!(cx.at(12..13), "/nonexistent-guard-dir/policy.toml:2");
    }
}
