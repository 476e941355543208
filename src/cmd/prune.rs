//! `guard prune [--keep-within D] [--keep-last N] [--dry-run]`: retention
//! ([`crate::retention::prune`]).

use std::time::Duration;

use serde_json::json;

use super::Session;
use crate::error::{Failure, Kind};
use crate::policy::{Policy, Retention};
use crate::retention;
use crate::ui::{self, Ui};

pub fn prune(
    policy: &Policy,
    keep_within: Option<Duration>,
    keep_last: Option<usize>,
    dry_run: bool,
    ui: &Ui,
) -> Result<u8, Failure> {
    let r = Retention {
        keep_within: keep_within.unwrap_or(policy.retention.keep_within),
        keep_last: keep_last.unwrap_or(policy.retention.keep_last),
    };
    if r.keep_last == 0 && r.keep_within.is_zero() {
        return Err(Failure::msg(
            Kind::Usage,
            "refusing to prune with keep_last = 0 and keep_within = 0: that keeps nothing",
        ));
    }
    let s = Session::open(policy)?;
    let _lock = s.lock(policy, "guard prune", None, ui)?;
    let p = retention::prune(policy, s.store(), &s.catalog, &r, dry_run)?;
    // Never deleted: guard cannot tell what a snapshot it cannot read holds or references.
    let damaged = crate::damaged::find(s.store(), &s.catalog, &policy.name)?;
    if ui.json {
        ui::print_json(&json!({
            "policy": policy.name,
            "dry_run": dry_run,
            "keep_within": humantime::format_duration(r.keep_within).to_string(),
            "keep_last": r.keep_last,
            "decisions": p.decisions,
            "finished_interrupted_prunes": p.finished_interrupted_prunes,
            "garbage": p.garbage,
            "damaged_kept": damaged,
            "deleted": p.deleted,
            "leftovers": p.leftovers,
            "bytes_freed": p.bytes_freed,
        }));
        return Ok(0);
    }
    print(&p, dry_run);
    for d in &damaged {
        crate::outln!("{}: kept: {}", d.id, d.line());
    }
    Ok(0)
}

fn print(p: &retention::Pruned, dry_run: bool) {
    let rows: Vec<Vec<String>> = p
        .decisions
        .iter()
        .map(|d| {
            vec![
                d.id.clone(),
                d.kind.clone(),
                if d.keep {
                    "keep".into()
                } else if dry_run {
                    "would prune".into()
                } else {
                    "pruned".into()
                },
                d.reasons.join("; "),
            ]
        })
        .collect();
    if !rows.is_empty() {
        crate::out!("{}", ui::table(&["id", "kind", "decision", "why"], &rows));
    }
    for id in &p.finished_interrupted_prunes {
        crate::outln!("{id}: finished an interrupted prune");
    }
    for id in &p.garbage {
        crate::outln!(
            "{id}: incomplete (no manifest), more than a day old: {}",
            if dry_run { "would remove" } else { "removed" }
        );
    }
    for l in &p.leftovers.removed {
        crate::outln!(
            "{}: {} ({}): {}",
            l.path.display(),
            l.what,
            ui::bytes(l.bytes),
            if dry_run { "would remove" } else { "removed" }
        );
    }
    for l in &p.leftovers.in_use {
        crate::outln!("{}: {}: kept, a process has it open", l.path.display(), l.what);
    }
    if dry_run {
        let doomed: Vec<_> = p.decisions.iter().filter(|d| !d.keep).collect();
        crate::outln!(
            "dry run: {} of {} snapshot(s) would be pruned ({})",
            doomed.len(),
            p.decisions.len(),
            ui::bytes(doomed.iter().map(|d| d.bytes).sum())
        );
    } else {
        crate::outln!(
            "pruned {} snapshot(s), freed {}",
            p.deleted.len(),
            ui::bytes(p.bytes_freed)
        );
    }
}
