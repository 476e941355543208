//! `[[check]]` and `[[drill.check]]`: what is verified after the command (or in a drill's
//! restored copy), and the rules of which check applies to which target kind (asked of the
//! kind's [`crate::targets::Caps`], never of its name).

use std::collections::BTreeSet;

use anyhow::{bail, Result};
use toml::Spanned;

use super::raw::{RawCheck, RawExpect};
use crate::parse_ctx::fail;
use crate::parse_ctx::{ParseCtx, Scope, Seg};
use crate::targets::{Kind, TargetSpec};
use crate::vars::Unresolved;

/// One verification run after the command.
#[derive(Debug, Clone)]
pub struct CheckSpec {
    pub name: String,
    pub line: usize,
    pub target: Option<String>,
    pub what: CheckWhat,
}

#[derive(Debug, Clone)]
pub enum CheckWhat {
    /// Existing data untouched: every row and every value of the columns these tables had
    /// before the command is unchanged (columns added pass; rows added or deleted, values
    /// changed, columns dropped or retyped fail). Paths (directory, s3 targets): their
    /// fingerprints must not change.
    Untouched(Vec<String>),
    /// The strict form: the whole tables' fingerprints (every column) must not change.
    Identical(Vec<String>),
    /// A query whose single value is compared with `expect`.
    Sql { sql: String, expect: Expect },
    /// A shell command that must exit 0 within `timeout`.
    Command {
        command: String,
        timeout: std::time::Duration,
    },
    /// Object count or total bytes under a key prefix of an s3 target, compared with `expect`.
    Objects {
        prefix: String,
        measure: Measure,
        expect: Expect,
    },
}

/// What an [`CheckWhat::Objects`] check measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    /// `objects = "prefix/"`: how many objects.
    Count,
    /// `bytes = "prefix/"`: their total size.
    Bytes,
}

/// What a check's value must satisfy.
#[derive(Debug, Clone, PartialEq)]
pub enum Expect {
    Unchanged,
    Changed,
    Compare(Op, f64),
    Literal(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "==",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
        }
    }
}

impl std::fmt::Display for Expect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expect::Unchanged => f.write_str("unchanged"),
            Expect::Changed => f.write_str("changed"),
            Expect::Compare(op, n) => write!(f, "{} {}", op.as_str(), n),
            Expect::Literal(s) => write!(f, "{s:?}"),
        }
    }
}

impl Expect {
    /// Parse the `expect` string of a check. A string that starts like a comparison (`=`, `<`,
    /// `>`, `!`) must be one: `"= 6"` is refused with "did you mean `== 6`?" (a literal text
    /// that starts that way is written `expect = { text = "= 6" }`).
    pub fn parse(s: &str) -> Result<Expect> {
        let t = s.trim();
        match t {
            "unchanged" => return Ok(Expect::Unchanged),
            "changed" => return Ok(Expect::Changed),
            _ => {}
        }
        let ops_len = t.find(|c| !matches!(c, '=' | '<' | '>' | '!')).unwrap_or(t.len());
        if ops_len == 0 {
            return Ok(Expect::Literal(t.to_string()));
        }
        let (ops, rest) = t.split_at(ops_len);
        let rest = rest.trim();
        let exact = [
            ("==", Op::Eq),
            ("!=", Op::Ne),
            ("<=", Op::Le),
            (">=", Op::Ge),
            ("<", Op::Lt),
            (">", Op::Gt),
        ]
        .into_iter()
        .find(|(w, _)| *w == ops);
        if let (Some((_, op)), Ok(n)) = (exact, rest.parse::<f64>()) {
            return Ok(Expect::Compare(op, n));
        }
        let literal = format!("for a literal text, write expect = {{ text = {t:?} }}");
        let Some(op) = meant_op(ops) else {
            bail!("expect {s:?} is not a comparison (`==`, `!=`, `<`, `<=`, `>` or `>=` and a number); {literal}");
        };
        match leading_number(rest) {
            Some(n) => bail!("expect {s:?} is not a comparison: did you mean `{op} {n}`? ({literal})"),
            None if exact.is_some() && !rest.is_empty() => {
                bail!("expect {s:?}: {rest:?} is not a number after {op} ({literal})")
            }
            None => bail!("expect {s:?}: `{op}` needs a number after it, as in `{op} 1` ({literal})"),
        }
    }
}

/// The comparison a mistyped operator most likely means: `=` and `===` are `==`, `=>` is `>=`,
/// `=<` is `<=`, `!` and `<>` are `!=`.
fn meant_op(ops: &str) -> Option<&'static str> {
    Some(match ops {
        "=" | "==" | "===" => "==",
        "!" | "!=" | "!==" | "<>" | "=!" => "!=",
        "<=" | "=<" | "<==" => "<=",
        ">=" | "=>" | ">==" => ">=",
        "<" => "<",
        ">" => ">",
        _ => return None,
    })
}

/// The number `s` starts with (`6 rows` → `6`).
fn leading_number(s: &str) -> Option<&str> {
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E')))
        .unwrap_or(s.len());
    let word = &s[..end];
    word.parse::<f64>().ok().map(|_| word)
}

/// The policy's checks and its drill checks, in file order, each with the unset variables it
/// uses (which its target then needs).
#[allow(clippy::type_complexity)]
pub fn parse(
    checks: &[Spanned<RawCheck>],
    drill_checks: &[Spanned<RawCheck>],
    targets: &[TargetSpec],
    cx: &mut ParseCtx,
) -> Result<(Vec<(CheckSpec, Vec<Unresolved>)>, Vec<(CheckSpec, Vec<Unresolved>)>)> {
    let mut seen = BTreeSet::new();
    let mut out = (Vec::new(), Vec::new());
    for (is_drill, list) in [(false, checks), (true, drill_checks)] {
        for (i, c) in list.iter().enumerate() {
            let path = match is_drill {
                false => vec![Seg::Key("check"), Seg::Index(i)],
                true => vec![Seg::Key("drill"), Seg::Key("check"), Seg::Index(i)],
            };
            let mut name_path = path.clone();
            name_path.push(Seg::Key("name"));
            let name = cx.expand_at(&name_path, &c.get_ref().name)?.text;
            if !seen.insert((is_drill, name.clone())) {
                fail!(cx, @c.span(), "check {name:?} is defined twice");
            }
            let mark = cx.unresolved_len();
            let spec = one(c, name, path, is_drill, targets, cx)?;
            let used = cx.unresolved_since(mark).to_vec();
            if is_drill { &mut out.1 } else { &mut out.0 }.push((spec, used));
        }
    }
    Ok(out)
}

/// One check: its name, its target (defined, and of a kind that answers it), and what it checks.
fn one(
    raw: &Spanned<RawCheck>,
    name: String,
    path: Vec<Seg>,
    is_drill: bool,
    targets: &[TargetSpec],
    cx: &mut ParseCtx,
) -> Result<CheckSpec> {
    let span = raw.span();
    let c = raw.get_ref();
    let mut target_path = path.clone();
    target_path.push(Seg::Key("target"));
    let target = match &c.target {
        Some(t) => Some(cx.expand_at(&target_path, t)?.text),
        None => None,
    };
    let kind = match &target {
        None => None,
        Some(t) => match targets.iter().find(|x| &x.name == t) {
            Some(x) => Some(x.kind.kind()),
            None => fail!(
                cx,
                @span.clone(),
                "check {name:?} names target {t:?}, which the policy does not define"
            ),
        },
    };
    let scope = Scope::new(format!("check {name:?}"), span.clone(), path);
    let what = cx.within(scope, |cx| what(c, kind, cx))?;
    if let (Some(t), Some(k)) = (&target, kind) {
        applies(&what, t, k).map_err(|msg| cx.err_at(span.clone(), format!("check {name:?}: target {msg}")))?;
    }
    if is_drill && needs_before(&what) {
        fail!(
            cx,
            @span,
            "drill check {name:?}: a drill has no \"before\" value; use a comparison such as \">= 1\""
        );
    }
    Ok(CheckSpec {
        name,
        line: cx.line(span.start),
        target,
        what,
    })
}

/// Which of `untouched`, `sql`, `objects`/`bytes` or `command` the check is, with its keys.
fn what(c: &RawCheck, target: Option<Kind>, cx: &mut ParseCtx) -> Result<CheckWhat> {
    let set = [
        c.untouched.is_some(),
        c.identical.is_some(),
        c.sql.is_some(),
        c.command.is_some(),
        c.objects.is_some(),
        c.bytes.is_some(),
    ];
    if set.iter().filter(|&&k| k).count() != 1 {
        return Err(
            cx.fail_sentence("needs exactly one of `untouched`, `identical`, `sql`, `command`, `objects` or `bytes`")
        );
    }
    if c.timeout.is_some() && c.command.is_none() {
        fail!(cx, "`timeout` applies to `command` checks only");
    }
    for (key, list) in [("untouched", &c.untouched), ("identical", &c.identical)] {
        let Some(u) = list else { continue };
        if target.is_none() {
            fail!(cx, "`{key}` needs `target`");
        }
        if c.expect.is_some() {
            fail!(cx, "`expect` does not apply to `{key}`");
        }
        if u.is_empty() {
            fail!(cx, "`{key}` lists nothing");
        }
        let items = cx.list(key, Some(u.clone()))?;
        return Ok(if key == "untouched" {
            CheckWhat::Untouched(items)
        } else {
            CheckWhat::Identical(items)
        });
    }
    if let Some(sql) = &c.sql {
        if target.is_none() {
            fail!(cx, "`sql` needs `target`");
        }
        let expect = expect(c, "sql", "\"unchanged\" or \">= 1\"", cx)?;
        return Ok(CheckWhat::Sql {
            sql: cx.expand("sql", sql)?,
            expect,
        });
    }
    let measured = (c.objects.as_ref().map(|p| (p, Measure::Count, "objects")))
        .or(c.bytes.as_ref().map(|p| (p, Measure::Bytes, "bytes")));
    if let Some((prefix, measure, key)) = measured {
        if target.is_none() {
            fail!(cx, "`{key}` needs `target` (an s3 target)");
        }
        let expect = expect(c, key, "\">= 2000\" or \"unchanged\"", cx)?;
        return Ok(CheckWhat::Objects {
            prefix: cx.expand(key, prefix)?,
            measure,
            expect,
        });
    }
    if target.is_some() {
        fail!(cx, "a `command` check takes no `target`");
    }
    if c.expect.is_some() {
        fail!(
            cx,
            "a `command` check passes when the command exits 0; `expect` does not apply"
        );
    }
    let subject = cx.subject().to_string();
    let mut path = cx.scope_path();
    path.push(Seg::Key("command"));
    let command = cx.shell(&path, &subject, c.command.as_deref().unwrap_or_default());
    let mut tpath = cx.scope_path();
    tpath.push(Seg::Key("timeout"));
    let timeout = match &c.timeout {
        Some(t) => super::sections::duration(cx, &tpath, t, "timeout")?,
        None => crate::process::DEFAULT_CHECK_TIMEOUT,
    };
    Ok(CheckWhat::Command { command, timeout })
}

/// The check's `expect`, required for `sql`, `objects` and `bytes`.
fn expect(c: &RawCheck, key: &str, example: &str, cx: &mut ParseCtx) -> Result<Expect> {
    let Some(e) = &c.expect else {
        fail!(cx, "`{key}` needs `expect` (for example {example})");
    };
    let mut path = cx.scope_path();
    path.push(Seg::Key("expect"));
    let (text, literal) = match e {
        RawExpect::Words(w) => (w, false),
        RawExpect::Text(t) => {
            path.push(Seg::Key("text"));
            (t, true)
        }
    };
    let e = cx.expand_at(&path, text)?;
    if literal {
        return Ok(Expect::Literal(e.text));
    }
    if !e.missing.is_empty() {
        // Its target is deferred too: this value is never compared.
        return Ok(Expect::Literal(e.text));
    }
    Expect::parse(&e.text).map_err(|err| cx.fail_key("expect", err))
}

/// Does a check of this shape apply to a target of this kind? `Err` says why not.
fn applies(what: &CheckWhat, target: &str, kind: Kind) -> Result<(), String> {
    let caps = kind.caps();
    let k = kind.as_str();
    match what {
        CheckWhat::Objects { .. } if !caps.objects => Err(format!(
            "{target:?} is of kind {k}; `objects` and `bytes` checks need a target of kind {}",
            Kind::names_with(|c| c.objects)
        )),
        CheckWhat::Sql { .. } if !caps.sql => Err(format!(
            "{target:?} is of kind {k}; `sql` checks need a database target ({})",
            Kind::names_with(|c| c.sql)
        )),
        _ => Ok(()),
    }
}

/// A check whose expectation compares with a value read before the command.
fn needs_before(what: &CheckWhat) -> bool {
    matches!(
        what,
        CheckWhat::Sql {
            expect: Expect::Unchanged | Expect::Changed,
            ..
        } | CheckWhat::Objects {
            expect: Expect::Unchanged | Expect::Changed,
            ..
        }
    )
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::{raw, targets};
    use super::*;

    const TARGETS: &str = "name = \"p\"\n[[target]]\nname = \"db\"\nkind = \"sqlite\"\npath = \"a.db\"\n[[target]]\nname = \"files\"\nkind = \"dir\"\npath = \"f\"\n";

    fn checks(extra: &str) -> Result<(Vec<CheckSpec>, Vec<CheckSpec>), String> {
        let text = format!("{TARGETS}{extra}");
        let mut cx = ParseCtx::new(&text, Path::new("/nonexistent-guard-c/policy.toml"));
        let raw = raw::from_str(&text, &cx).map_err(|e| e.to_string())?;
        let t = targets::parse(raw.target, &mut cx).map_err(|e| e.to_string())?;
        let drill = raw.drill.as_ref().map(|d| d.check.as_slice()).unwrap_or(&[]);
        let (c, d) = parse(&raw.check, drill, &t, &mut cx).map_err(|e| format!("{e:#}"))?;
        let specs = |v: Vec<(CheckSpec, Vec<Unresolved>)>| v.into_iter().map(|(c, _)| c).collect();
        Ok((specs(c), specs(d)))
    }

    #[test]
    fn each_shape_parses() {
        let (c, d) = checks(concat!(
            "[[check]]\nname = \"u\"\ntarget = \"files\"\nuntouched = [\"x\"]\n",
            "[[check]]\nname = \"q\"\ntarget = \"db\"\nsql = \"select 1\"\nexpect = \"== 1\"\n",
            "[[check]]\nname = \"c\"\ncommand = \"true\"\n",
            "[[drill.check]]\nname = \"q\"\ntarget = \"db\"\nsql = \"select 1\"\nexpect = \">= 1\"\n",
        ))
        .unwrap();
        assert_eq!(c.iter().map(|c| c.line).collect::<Vec<_>>(), [10, 14, 19]);
        assert!(matches!(&c[0].what, CheckWhat::Untouched(u) if u == &["x"]));
        assert!(matches!(&c[1].what, CheckWhat::Sql { expect: Expect::Compare(Op::Eq, n), .. } if *n == 1.0));
        assert!(matches!(&c[2].what, CheckWhat::Command { command, .. } if command == "true"));
        assert_eq!((d.len(), d[0].line), (1, 22));
    }

    #[test]
    fn expectations_that_look_like_comparisons_suggest_one() {
        for (text, hint) in [
            ("= 6", "did you mean `== 6`?"),
            ("=> 3", "did you mean `>= 3`?"),
            ("=< 3.5", "did you mean `<= 3.5`?"),
            ("==6 rows", "did you mean `== 6`?"),
            ("=== 6", "did you mean `== 6`?"),
            ("!6", "did you mean `!= 6`?"),
            ("<> 6", "did you mean `!= 6`?"),
            ("=<", "`<=` needs a number after it"),
            (">= x", "\"x\" is not a number after >="),
            ("=<>", "is not a comparison"),
        ] {
            let e = Expect::parse(text).unwrap_err().to_string();
            assert!(e.contains(hint), "{text}: {e}");
            assert!(e.contains("expect = { text = "), "{text}: {e}");
        }
        assert_eq!(Expect::parse(" >=  4 ").unwrap(), Expect::Compare(Op::Ge, 4.0));
        assert_eq!(Expect::parse("ok = 6").unwrap(), Expect::Literal("ok = 6".into()));
        let (c, _) =
            checks("[[check]]\nname = \"c\"\ntarget = \"db\"\nsql = \"s\"\nexpect = { text = \"= 6\" }\n").unwrap();
        assert!(matches!(&c[0].what, CheckWhat::Sql { expect: Expect::Literal(t), .. } if t == "= 6"));
        let e = checks("[[check]]\nname = \"c\"\ntarget = \"db\"\nsql = \"s\"\nexpect = \"= 6\"\n").unwrap_err();
        assert!(e.contains("policy.toml:14: check \"c\": expect \"= 6\""), "{e}");
        let e =
            checks("[[check]]\nname = \"c\"\ntarget = \"db\"\nsql = \"s\"\nexpect = { txt = \"= 6\" }\n").unwrap_err();
        assert!(e.contains("unknown field `txt`, expected `text`"), "{e}");
    }

    #[test]
    fn kind_rules_come_from_caps() {
        let e =
            checks("[[check]]\nname = \"q\"\ntarget = \"files\"\nsql = \"select 1\"\nexpect = \"== 1\"\n").unwrap_err();
        assert!(e.contains("policy.toml:10: check \"q\": target \"files\" is of kind dir; `sql` checks need a database target (sqlite, postgres, turso)"), "{e}");
        let e = checks("[[check]]\nname = \"o\"\ntarget = \"db\"\nobjects = \"p/\"\nexpect = \">= 1\"\n").unwrap_err();
        assert!(e.contains("policy.toml:10: check \"o\": target \"db\" is of kind sqlite; `objects` and `bytes` checks need a target of kind s3"), "{e}");
    }

    #[test]
    fn shape_errors_name_the_checks_line() {
        let cases = [
            ("[[check]]\nname = \"x\"\n", "check \"x\" needs exactly one of"),
            (
                "[[check]]\nname = \"x\"\ntarget = \"nope\"\ncommand = \"true\"\n",
                "names target \"nope\", which the policy does not define",
            ),
            (
                "[[check]]\nname = \"x\"\nuntouched = [\"t\"]\n",
                "check \"x\": `untouched` needs `target`",
            ),
            (
                "[[check]]\nname = \"x\"\ntarget = \"db\"\nuntouched = []\n",
                "`untouched` lists nothing",
            ),
            (
                "[[check]]\nname = \"x\"\ntarget = \"db\"\nsql = \"select 1\"\n",
                "`sql` needs `expect`",
            ),
            (
                "[[check]]\nname = \"x\"\ntarget = \"db\"\nsql = \"s\"\nexpect = \">= x\"\n",
                "\"x\" is not a number after >=",
            ),
            (
                "[[check]]\nname = \"x\"\ntarget = \"db\"\ncommand = \"true\"\n",
                "a `command` check takes no `target`",
            ),
            (
                "[[check]]\nname = \"x\"\ncommand = \"true\"\nexpect = \"ok\"\n",
                "`expect` does not apply",
            ),
            (
                "[[check]]\nname = \"x\"\ncommand = \"true\"\n[[check]]\nname = \"x\"\ncommand = \"true\"\n",
                "policy.toml:13: check \"x\" is defined twice",
            ),
            (
                "[[drill.check]]\nname = \"x\"\ntarget = \"db\"\nsql = \"s\"\nexpect = \"unchanged\"\n",
                "drill check \"x\": a drill has no \"before\" value",
            ),
        ];
        for (extra, want) in cases {
            let e = checks(extra).unwrap_err();
            assert!(e.contains("policy.toml:1"), "{e}");
            assert!(e.contains(want), "{extra}: {e}");
        }
    }
}
