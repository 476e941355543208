//! What people see of a run beside the command's own output: the `--dry-run` plan and the
//! checks table.

use serde_json::json;

use super::Options;
use crate::journal::CheckResult;
use crate::policy::{CheckWhat, Policy};
use crate::process::shell_words;
use crate::targets::Target;
use crate::ui::{self, Ui};

/// Print what a run would do, touching nothing.
/// `extra`'s keys are added to the `--json` document (the preflight's items).
pub fn print_plan(policy: &Policy, targets: &[Box<dyn Target>], opts: &Options, ui: &Ui, extra: serde_json::Value) {
    if ui.json {
        let mut doc = json!({
            "policy": policy.name,
            "store": policy.store.to_string(),
            "targets": targets.iter().map(|t| json!({"name": t.name(), "kind": t.kind(), "source": t.source()})).collect::<Vec<_>>(),
            "hooks": {"before": policy.hooks.before, "after": policy.hooks.after},
            "checks": policy.checks.iter().map(|c| json!({"name": c.name, "target": c.target})).collect::<Vec<_>>(),
            "command": opts.command,
            "confirm": policy.confirm && !opts.yes,
        });
        if let (Some(d), Some(e)) = (doc.as_object_mut(), extra.as_object()) {
            d.extend(e.clone());
        }
        ui::print_json(&doc);
        return;
    }
    let mut s = format!(
        "dry run of policy {} ({}): nothing will be touched\n",
        policy.name,
        policy.file.display()
    );
    s.push_str(&format!("store: {}\n", policy.store));
    if policy.confirm && !opts.yes {
        s.push_str("confirm: guard would ask before running (--yes skips)\n");
    }
    for h in &policy.hooks.before {
        s.push_str(&format!("before hook: {h}\n"));
    }
    for t in targets {
        s.push_str(&format!("snapshot: {} ({}) {}\n", t.name(), t.kind(), t.source()));
    }
    s.push_str(&format!("run: {}\n", shell_words(&opts.command)));
    for c in &policy.checks {
        let what = match &c.what {
            CheckWhat::Untouched(items) => format!("{} untouched", items.join(", ")),
            CheckWhat::Identical(items) => format!("{} identical", items.join(", ")),
            CheckWhat::Sql { sql, expect } => format!("{sql} → {expect}"),
            CheckWhat::Command { command, .. } => format!("`{command}` exits 0"),
            CheckWhat::Objects {
                prefix,
                measure,
                expect,
            } => format!("{measure:?} under {prefix:?} → {expect}"),
        };
        s.push_str(&format!(
            "check: {} [{}] {what}\n",
            c.name,
            c.target.as_deref().unwrap_or("-")
        ));
    }
    s.push_str(if opts.no_restore {
        "on failure: keep the failed state (--no-restore)\n"
    } else {
        "on failure: rescue snapshot, restore, verify\n"
    });
    for h in &policy.hooks.after {
        s.push_str(&format!("after hook: {h}\n"));
    }
    crate::out!("{}", crate::secrets::redact(&s));
}

/// Print the checks table for people.
pub fn print_checks(results: &[CheckResult], ui: &Ui) {
    // `-q` shows the table only when a check failed.
    if ui.json || results.is_empty() || (ui.verbosity == ui::Verbosity::Quiet && results.iter().all(|r| r.passed)) {
        return;
    }
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                r.before.clone().unwrap_or_else(|| "—".into()),
                r.after.clone().unwrap_or_else(|| "—".into()),
                r.expect.clone(),
                if r.passed {
                    "pass".into()
                } else {
                    format!(
                        "FAIL{}",
                        r.detail.as_ref().map(|d| format!(": {d}")).unwrap_or_default()
                    )
                },
            ]
        })
        .collect();
    // The result is the last column (never padded), so its color cannot upset the alignment.
    let table = crate::secrets::redact(&ui::table(&["check", "before", "after", "expect", "result"], &rows));
    // Columns are aligned by characters ("—" is one), so the result column starts at the same
    // character on every line: where the header's "result" does.
    let at = table.lines().next().and_then(|h| h.find("result")).unwrap_or(0);
    let colored: String = table
        .lines()
        .map(|line| {
            let result = line.char_indices().nth(at).map(|(b, _)| b);
            match result.map(|b| (b, &line[b..])) {
                Some((b, r)) if r.starts_with("pass") || r.starts_with("FAIL") => {
                    let style = if r.starts_with("pass") {
                        ui::color::PASS
                    } else {
                        ui::color::FAIL
                    };
                    format!("{}{}\n", &line[..b], ui::paint(style, r))
                }
                _ => format!("{line}\n"),
            }
        })
        .collect();
    crate::err!("{colored}");
}
