//! The policy's checks: what must hold after the command for its changes to be kept.
//!
//! `untouched` compares fingerprints recorded in the pre-run snapshot with the live target;
//! `sql` compares a query's value with its expectation (`unchanged`/`changed` against the value
//! read before the command; every other expectation is evaluated after the command only, and
//! shows `—` as its before value); `command` runs a shell command that must exit 0. Each result is a
//! [`CheckResult`], recorded in the run's journal.

use std::collections::BTreeMap;

use anyhow::{anyhow, Context, Result};

use crate::journal::CheckResult;
use crate::manifest::{Fingerprint, Manifest};
use crate::policy::{CheckSpec, CheckWhat, Expect, Measure, Op, Policy};
use crate::targets::Target;

fn target<'a>(targets: &'a [Box<dyn Target>], name: &str) -> Result<&'a dyn Target> {
    targets
        .iter()
        .find(|t| t.name() == name)
        .map(|t| t.as_ref())
        .ok_or_else(|| anyhow!("no target {name:?}"))
}

/// Does `expect` compare the value after the command with the one before it?
pub fn needs_before(expect: &Expect) -> bool {
    matches!(expect, Expect::Unchanged | Expect::Changed)
}

/// Values read before the command, for the `sql` and `objects`/`bytes` checks whose expectation
/// compares with them (`unchanged`, `changed`). Every other check is read only after the
/// command, so a check about what the command creates (`SELECT count(*) FROM "Role"` with
/// `== 8`) works although its table does not exist yet. An error here stops the run: a check
/// that cannot read its before value cannot protect anything after.
pub fn before_values(policy: &Policy, targets: &[Box<dyn Target>]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for c in &policy.checks {
        let Some(t) = &c.target else { continue };
        let hint = "an `unchanged`/`changed` check reads its value before the command too; a check about what the command creates can use `==`, `>=` and the like, read only after it";
        match &c.what {
            CheckWhat::Sql { sql, expect } if needs_before(expect) => {
                let v = target(targets, t)?.query(sql).with_context(|| {
                    format!(
                        "check {:?} (policy line {}): query failed before the command ({hint})",
                        c.name, c.line
                    )
                })?;
                out.insert(c.name.clone(), v);
            }
            CheckWhat::Objects {
                prefix,
                measure,
                expect,
            } if needs_before(expect) => {
                let v = objects_value(target(targets, t)?, prefix, *measure).with_context(|| {
                    format!(
                        "check {:?} (policy line {}): could not read it before the command ({hint})",
                        c.name, c.line
                    )
                })?;
                out.insert(c.name.clone(), v);
            }
            _ => {}
        }
    }
    Ok(out)
}

/// The value of an `objects`/`bytes` check now.
fn objects_value(t: &dyn Target, prefix: &str, measure: Measure) -> Result<String> {
    let (count, bytes) = t.objects(prefix)?;
    Ok(match measure {
        Measure::Count => count,
        Measure::Bytes => bytes,
    }
    .to_string())
}

/// Whether the value read after the command (`after`, with `before` from before it) meets
/// `expect`.
fn meets(expect: &Expect, before: Option<&str>, after: &str) -> Result<bool> {
    Ok(match expect {
        Expect::Unchanged => before == Some(after),
        Expect::Changed => before != Some(after),
        Expect::Compare(op, n) => compare(after, *op, *n)?,
        Expect::Literal(s) => after == s,
    })
}

fn compare(value: &str, op: Op, n: f64) -> Result<bool> {
    let v: f64 = value.trim().parse().map_err(|_| anyhow!("{value:?} is not a number"))?;
    Ok(match op {
        Op::Eq => v == n,
        Op::Ne => v != n,
        Op::Lt => v < n,
        Op::Le => v <= n,
        Op::Gt => v > n,
        Op::Ge => v >= n,
    })
}

fn kind_of(c: &CheckSpec) -> &'static str {
    match c.what {
        CheckWhat::Untouched(_) => "untouched",
        CheckWhat::Identical(_) => "identical",
        CheckWhat::Sql { .. } => "sql",
        CheckWhat::Command { .. } => "command",
        CheckWhat::Objects {
            measure: Measure::Count,
            ..
        } => "objects",
        CheckWhat::Objects {
            measure: Measure::Bytes,
            ..
        } => "bytes",
    }
}

/// Evaluate one check after the command. Errors become failed checks, never panics.
fn evaluate_one(
    c: &CheckSpec,
    targets: &[Box<dyn Target>],
    before: &BTreeMap<String, String>,
    snapshot: &Manifest,
) -> CheckResult {
    let mut r = CheckResult {
        name: c.name.clone(),
        target: c.target.clone(),
        kind: kind_of(c).into(),
        expect: String::new(),
        before: None,
        after: None,
        passed: false,
        detail: None,
    };
    let target_of = || target(targets, c.target.as_deref().expect("validated"));
    let outcome: Result<()> = match &c.what {
        CheckWhat::Untouched(items) => target_of().and_then(|t| fingerprints(c, t, items, false, snapshot, &mut r)),
        CheckWhat::Identical(items) => target_of().and_then(|t| fingerprints(c, t, items, true, snapshot, &mut r)),
        CheckWhat::Sql { sql, expect } => target_of().and_then(|t| value(c, expect, before, &mut r, || t.query(sql))),
        CheckWhat::Objects {
            prefix,
            measure,
            expect,
        } => target_of().and_then(|t| value(c, expect, before, &mut r, || objects_value(t, prefix, *measure))),
        CheckWhat::Command { command, timeout } => shell_check(command, *timeout, &mut r),
    };
    if let Err(e) = outcome {
        r.passed = false;
        r.detail = Some(crate::secrets::redact(&format!("{e:#}")));
    }
    r
}

/// `untouched` (`strict`: `identical`): the live fingerprints of `items` against the ones the
/// snapshot recorded — over the columns each table had then, or whole rows.
fn fingerprints(
    c: &CheckSpec,
    t: &dyn Target,
    items: &[String],
    strict: bool,
    snapshot: &Manifest,
    r: &mut CheckResult,
) -> Result<()> {
    r.expect = format!(
        "{} {}",
        items.join(", "),
        if strict { "identical" } else { "untouched" }
    );
    let tname = c.target.as_deref().expect("validated");
    let rec = snapshot
        .target(tname)
        .ok_or_else(|| anyhow!("snapshot has no target {tname}"))?;
    let recorded = |i: &String| {
        rec.fingerprints
            .get(i)
            .ok_or_else(|| anyhow!("snapshot recorded no fingerprint of {i}"))
    };
    // Whole fingerprints: `identical`, paths and schema items, and tables whose snapshot
    // (taken by an older guard) recorded no column list.
    let whole: Vec<String> = items
        .iter()
        .filter(|i| strict || recorded(i).map(|b| b.columns.is_none()).unwrap_or(true))
        .cloned()
        .collect();
    let now_whole = if whole.is_empty() {
        BTreeMap::new()
    } else {
        t.fingerprint(&whole)?
    };
    let mut rows_before = 0;
    let mut rows_after = 0;
    let mut diffs = Vec::new();
    for i in items {
        let b = recorded(i)?;
        rows_before += b.rows;
        let a = match (&b.columns, whole.contains(i)) {
            (Some(cols), false) => match t.fingerprint_existing(i, cols) {
                Ok(a) => a,
                Err(e) => {
                    diffs.push(format!("{e:#}"));
                    continue;
                }
            },
            _ => now_whole
                .get(i)
                .cloned()
                .ok_or_else(|| anyhow!("no fingerprint of {i}"))?,
        };
        rows_after += a.rows;
        if let Some(d) = difference(i, b, &a, strict) {
            diffs.push(d);
        }
    }
    r.before = Some(format!("{rows_before} rows"));
    r.after = Some(format!("{rows_after} rows"));
    r.passed = diffs.is_empty();
    if !r.passed {
        r.detail = Some(diffs.join("; "));
    }
    Ok(())
}

/// How `i`'s fingerprint `a` after the command differs from `b` before it, in words.
fn difference(i: &str, b: &Fingerprint, a: &Fingerprint, strict: bool) -> Option<String> {
    let old = if !strict && b.columns.is_none() && a.columns.is_some() {
        " (the snapshot, taken by an older guard, recorded no column list: whole rows were compared, as `identical` does)"
    } else {
        ""
    };
    if a.absent != b.absent {
        Some(if a.absent {
            format!("{i}: deleted ({} rows before)", b.rows)
        } else {
            format!("{i}: exists ({} rows), absent before", a.rows)
        })
    } else if a.rows != b.rows {
        Some(format!("{i}: {} → {} rows{old}", b.rows, a.rows))
    } else if a.hash != b.hash {
        let what = if strict || b.columns.is_none() {
            "content"
        } else {
            "existing data"
        };
        Some(format!("{i}: {what} changed ({} rows){old}", a.rows))
    } else {
        None
    }
}

/// A `sql` or `objects`/`bytes` check: the value now (`read`) against `expect`, with the value
/// read before the command when there is one.
fn value(
    c: &CheckSpec,
    expect: &Expect,
    before: &BTreeMap<String, String>,
    r: &mut CheckResult,
    read: impl FnOnce() -> Result<String>,
) -> Result<()> {
    r.expect = expect.to_string();
    r.before = before.get(&c.name).cloned();
    let after = read()?;
    r.after = Some(after.clone());
    r.passed = meets(expect, r.before.as_deref(), &after)?;
    Ok(())
}

/// A `command` check: `sh -c command` must exit 0 within `timeout`; its last stderr line
/// explains a failure.
fn shell_check(command: &str, timeout: std::time::Duration, r: &mut CheckResult) -> Result<()> {
    r.expect = "exit 0".into();
    let out = crate::process::run_shell(command, timeout, crate::process::Sink::Capture)
        .with_context(|| format!("cannot run {command:?}"))?;
    if let Some(pgid) = out.timed_out {
        r.after = Some("timed out".into());
        anyhow::bail!(
            "did not finish within {}: killed it with its process group {pgid} (the check's `timeout` sets how long it may take)",
            humantime::format_duration(timeout)
        );
    }
    let code = out
        .status
        .code()
        .map(|c| c.to_string())
        .unwrap_or_else(|| "signal".into());
    r.after = Some(format!("exit {code}"));
    r.passed = out.status.success();
    if !r.passed {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
        if !last.is_empty() {
            r.detail = Some(crate::secrets::redact(last));
        }
    }
    Ok(())
}

/// Evaluate every check of the policy.
pub fn evaluate(
    policy: &Policy,
    targets: &[Box<dyn Target>],
    before: &BTreeMap<String, String>,
    snapshot: &Manifest,
) -> Vec<CheckResult> {
    evaluate_checks(&policy.checks, targets, before, snapshot)
}

/// Evaluate `checks` (the policy's, or its `[[drill.check]]`s against restored copies).
pub fn evaluate_checks(
    checks: &[CheckSpec],
    targets: &[Box<dyn Target>],
    before: &BTreeMap<String, String>,
    snapshot: &Manifest,
) -> Vec<CheckResult> {
    checks
        .iter()
        .map(|c| evaluate_one(c, targets, before, snapshot))
        .collect()
}
