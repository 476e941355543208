//! `guard status`: what state things are in, and how to get back.
//!
//! A run whose journal is not `done` and whose guard no longer holds the policy's lock was
//! interrupted. Its phase says what may have happened to the targets; its pre-run snapshot,
//! if complete, is the way back.

use serde_json::json;

use super::Session;
use crate::error::Failure;
use crate::journal::{Journal, Op, Phase};
use crate::policy::Policy;
use crate::ui::{self, Ui};

/// What an interrupted run (or restore) means for the targets, and what to do.
pub fn advice(j: &Journal, policy_file: &str) -> (String, String) {
    let snap = j.snapshot_id.as_deref().unwrap_or("(none)");
    let recover = format!("guard --policy {policy_file} recover");
    if j.op != Op::Run {
        return match j.phase {
            Phase::Rescuing => (
                format!("`{}` was taking a rescue snapshot of the current state; nothing was restored yet.", j.command.join(" ")),
                format!("{recover}   (rescue snapshot, then restore {snap})\n  or: {recover} --keep   (leave the targets as they are)"),
            ),
            Phase::Restoring => (
                format!(
                    "`{}` was interrupted while restoring: targets may be partly restored. The state it replaced is in rescue snapshot {}.",
                    j.command.join(" "),
                    j.rescue_id.as_deref().unwrap_or("(none)")
                ),
                format!("{recover}   (finishes restoring {snap})\n  or: {recover} --keep   (accept the current state)"),
            ),
            Phase::Done => ("finished.".into(), String::new()),
            _ => (
                format!("`{}` stopped before changing anything.", j.command.join(" ")),
                format!("{recover}   (marks it closed; nothing to restore)"),
            ),
        };
    }
    match j.phase {
        Phase::Locked | Phase::Snapshotting | Phase::SnapshotVerified => (
            "guard stopped before the command started: the targets were not touched by it.".into(),
            format!("{recover}   (marks the run closed; nothing to restore)"),
        ),
        Phase::CommandRunning | Phase::Checking => (
            format!("the command `{}` had started: the targets may hold its changes. The pre-run state is in snapshot {snap}.", j.command.join(" ")),
            format!("{recover}   (rescue snapshot, then restore {snap})\n  or: {recover} --keep   (accept the current state)"),
        ),
        Phase::Rescuing => (
            format!("the command failed and guard was taking a rescue snapshot; nothing was restored yet. The pre-run state is in snapshot {snap}."),
            format!("{recover}   (rescue snapshot, then restore {snap})"),
        ),
        Phase::Restoring => (
            format!(
                "a restore of snapshot {snap} was interrupted: targets may be partly restored. The failed state is in rescue snapshot {}.",
                j.rescue_id.as_deref().unwrap_or("(none)")
            ),
            format!("{recover}   (finishes restoring {snap})"),
        ),
        Phase::Done => ("finished.".into(), String::new()),
    }
}

/// `guard status`.
pub fn status(policy: &Policy, ui: &Ui) -> Result<u8, Failure> {
    let s = Session::open(policy)?;
    let (store, catalog) = (s.store(), &s.catalog);
    let (held, holder) = crate::lock::inspect(store, &policy.name)?;
    let interrupted = crate::journal::interrupted_runs(store, &policy.name)?;
    let incomplete = crate::manifest::incomplete_snapshots(store)?;
    let snaps = catalog.snapshots(Some(&policy.name))?;
    let runs = catalog.runs(Some(&policy.name), 1)?;
    let file = policy.file.display().to_string();
    let drills = catalog.drills(Some(&policy.name), 1000)?;
    let last_drill = drills.first();
    let last_good_drill = drills.iter().find(|d| d.ok);
    // The newest snapshot nothing has found wrong with: what a restore would use.
    let restorable = snaps.iter().find(|s| {
        s.kind != crate::manifest::SnapshotKind::Rescue.as_str()
            && s.verified_ok != Some(false)
            && s.drilled_ok != Some(false)
    });
    let stale = match (policy.drill.max_age, restorable) {
        (Some(max), Some(s)) => {
            let t = time::OffsetDateTime::parse(&s.created_at, &time::format_description::well_known::Rfc3339)?;
            let age = crate::clock::now() - t;
            (age > time::Duration::try_from(max).unwrap_or(time::Duration::MAX)).then(|| {
                format!(
                    "the newest restorable snapshot ({}) is {} old, more than drill.max_age = {}",
                    s.id,
                    humantime::format_duration(std::time::Duration::from_secs(age.whole_seconds().max(0) as u64)),
                    humantime::format_duration(max)
                )
            })
        }
        (Some(max), None) => Some(format!(
            "there is no restorable snapshot (drill.max_age = {})",
            humantime::format_duration(max)
        )),
        _ => None,
    };
    if ui.json {
        ui::print_json(&json!({
            "policy": policy.name,
            "store": store.location(),
            "running": if held { serde_json::to_value(&holder)? } else { serde_json::Value::Null },
            "last_run": runs.first(),
            "snapshots": snaps.len(),
            "newest_snapshot": snaps.first(),
            "interrupted": interrupted.iter().map(|j| {
                let (state, todo) = advice(j, &file);
                json!({"run_id": j.run_id, "phase": j.phase.as_str(), "snapshot_id": j.snapshot_id, "rescue_id": j.rescue_id, "state": state, "todo": todo,
                       "command_pgid": j.command_pgid, "command_running": j.command_still_running()})
            }).collect::<Vec<_>>(),
            "incomplete_snapshots": incomplete,
            "last_drill": last_drill.map(|d| json!({"id": d.id, "snapshot_id": d.snapshot_id, "started_at": d.started_at, "ok": d.ok, "seconds": d.seconds})),
            "last_good_drill": last_good_drill.map(|d| json!({"id": d.id, "snapshot_id": d.snapshot_id, "started_at": d.started_at, "seconds": d.seconds})),
            "newest_restorable_snapshot": restorable.map(|s| s.id.clone()),
            "warnings": stale.iter().collect::<Vec<_>>(),
        }));
        return Ok(0);
    }
    let mut s = format!("policy {} — store {}\n", policy.name, store.location());
    if held {
        s.push_str(&format!(
            "running now: {}\n",
            holder.map(|h| h.to_string()).unwrap_or_else(|| "another guard".into())
        ));
    }
    match runs.first() {
        Some(r) => s.push_str(&format!(
            "last run: {} started {} `{}` → {} (exit {})\n",
            r.id,
            r.started_at,
            r.command,
            r.outcome.as_deref().unwrap_or(&r.phase),
            r.exit_code.map(|c| c.to_string()).unwrap_or_else(|| "-".into())
        )),
        None => s.push_str("last run: none\n"),
    }
    match snaps.first() {
        Some(n) => s.push_str(&format!(
            "snapshots: {} complete; newest {} ({}, {})\n",
            snaps.len(),
            n.id,
            n.kind,
            n.created_at
        )),
        None => s.push_str("snapshots: none\n"),
    }
    match (last_drill, last_good_drill) {
        (None, _) => s.push_str("drills: none yet (`guard drill`)\n"),
        (Some(d), Some(g)) if d.id == g.id => s.push_str(&format!(
            "last drill: passed {} (snapshot {}, {:.2}s)\n",
            d.started_at, d.snapshot_id, d.seconds
        )),
        (Some(d), g) => {
            s.push_str(&format!(
                "last drill: FAILED {} (snapshot {})\n",
                d.started_at, d.snapshot_id
            ));
            match g {
                Some(g) => s.push_str(&format!(
                    "last good drill: {} (snapshot {}, {:.2}s)\n",
                    g.started_at, g.snapshot_id, g.seconds
                )),
                None => s.push_str("last good drill: none\n"),
            }
        }
    }
    if let Some(w) = &stale {
        s.push_str(&format!("WARNING: {w}\n"));
    }
    for j in &interrupted {
        let (state, todo) = advice(j, &file);
        s.push_str(&format!(
            "\nINTERRUPTED run {} (started {}, pid {} on {}), stopped in phase {}:\n  {state}\n  to do: {todo}\n",
            j.run_id,
            crate::clock::rfc3339(j.started_at),
            j.pid,
            j.host,
            j.phase.as_str()
        ));
        let alive = j.command_still_running();
        if !alive.is_empty() {
            s.push_str(&format!("  {}\n", crate::restore::recover::still_running(j, &alive)));
        }
    }
    if !incomplete.is_empty() {
        s.push_str(&format!(
            "\nincomplete snapshots (no manifest; never listed or used): {}\n",
            incomplete.join(", ")
        ));
    }
    if interrupted.is_empty() && !held && stale.is_none() {
        s.push_str("nothing needs attention\n");
    }
    crate::out!("{}", crate::secrets::redact(&s));
    Ok(0)
}
