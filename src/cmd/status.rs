//! `guard status`: what needs attention first ([`crate::attention`]), then the last run, the
//! snapshots and the drills. Exits 82 when something needs attention, 0 otherwise.

use serde_json::json;

use super::Session;
use crate::attention::{self, Attention};
use crate::catalog::{DrillRow, RunRow, SnapshotRow};
use crate::error::Failure;
use crate::lock::Holder;
use crate::policy::Policy;
use crate::ui::{self, Ui};

/// What `status` reports.
struct Facts {
    attention: Attention,
    running: Option<Option<Holder>>,
    last_run: Option<RunRow>,
    snaps: Vec<SnapshotRow>,
    /// The snapshot `guard restore latest` would use.
    restorable: Option<SnapshotRow>,
    drills: Vec<DrillRow>,
    incomplete: Vec<String>,
    /// Snapshots whose manifest cannot be read ([`crate::damaged`]).
    damaged: Vec<crate::damaged::Damaged>,
    /// What killed guards left behind ([`crate::leftovers`]).
    leftovers: Vec<crate::leftovers::Leftover>,
    warnings: Vec<String>,
}

pub fn status(policy: &Policy, ui: &Ui) -> Result<u8, Failure> {
    // On a full disk or a read-only store the catalog cannot be brought up to date, and
    // status must still work (read-only, as last indexed).
    let s = Session::open_read_only(policy, ui)?;
    let f = facts(&s, policy)?;
    let file = policy.file.display().to_string();
    if ui.json {
        let last_drill = f.drills.first();
        let last_good = f.drills.iter().find(|d| d.ok);
        ui::print_json(&json!({
            "policy": policy.name,
            "store": s.store().location(),
            "needs_attention": f.attention.items.iter().map(|i| i.to_json(&file)).collect::<Vec<_>>(),
            "running": match &f.running { Some(h) => serde_json::to_value(h)?, None => serde_json::Value::Null },
            "last_run": f.last_run,
            "snapshots": f.snaps.len(),
            "newest_snapshot": f.snaps.first(),
            "interrupted": f.attention.interrupted().map(|j| {
                let (state, todo) = attention::advice(j, &file);
                json!({"run_id": j.run_id, "op": j.op, "phase": j.phase.as_str(), "snapshot_id": j.snapshot_id, "rescue_id": j.rescue_id, "state": state, "todo": todo,
                       "command_pgid": j.command_pgid, "command_running": j.command_still_running()})
            }).collect::<Vec<_>>(),
            "incomplete_snapshots": f.incomplete,
            "damaged_snapshots": f.damaged,
            "leftovers": f.leftovers,
            "last_drill": last_drill.map(|d| json!({"id": d.id, "snapshot_id": d.snapshot_id, "started_at": d.started_at, "ok": d.ok, "seconds": d.seconds})),
            "last_good_drill": last_good.map(|d| json!({"id": d.id, "snapshot_id": d.snapshot_id, "started_at": d.started_at, "seconds": d.seconds})),
            "newest_restorable_snapshot": f.restorable.as_ref().map(|s| s.id.clone()),
            "warnings": f.warnings,
        }));
    } else {
        crate::out!("{}", crate::secrets::redact(&human(&f, policy, &s.store().location())));
    }
    Ok(if f.attention.is_empty() {
        0
    } else {
        crate::error::Kind::NeedsAttention.exit_code()
    })
}

fn facts(s: &Session, policy: &Policy) -> Result<Facts, Failure> {
    let (store, catalog) = (s.store(), &s.catalog);
    let (held, holder) = crate::lock::inspect(store, &policy.name)?;
    let journals = crate::journal::read_all(store)?;
    let live = if held {
        holder.as_ref().and_then(|h| h.run_id.clone())
    } else {
        None
    };
    let snaps = catalog.snapshots(Some(&policy.name))?;
    let drills = catalog.drills(Some(&policy.name), 1000)?;
    let attention = attention::pending(&policy.name, &journals, live.as_deref(), &snaps, &drills);
    let restorable = attention::latest(&snaps, &journals).chosen.cloned();
    let mut warnings = Vec::new();
    warnings.extend(stale(policy, restorable.as_ref())?);
    let damaged = crate::damaged::find(store, catalog, &policy.name)?;
    warnings.extend(damaged.iter().map(|d| d.line()));
    Ok(Facts {
        attention,
        running: held.then_some(holder),
        last_run: catalog.runs(Some(&policy.name), 1)?.into_iter().next(),
        incomplete: crate::manifest::incomplete_snapshots(store)?,
        damaged,
        leftovers: crate::leftovers::find(store, policy, None),
        snaps,
        restorable,
        drills,
        warnings,
    })
}

/// The warning when the snapshot a restore would use is older than `drill.max_age`.
fn stale(policy: &Policy, restorable: Option<&SnapshotRow>) -> Result<Option<String>, Failure> {
    Ok(match (policy.drill.max_age, restorable) {
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
    })
}

fn human(f: &Facts, policy: &Policy, location: &str) -> String {
    let file = policy.file.display().to_string();
    let mut s = format!("policy {} — store {location}\n", policy.name);
    if !f.attention.is_empty() {
        s.push_str("NEEDS ATTENTION — a new guarded run is refused (exit 82) until this is dealt with:\n");
        for item in &f.attention.items {
            let (state, todo) = item.advice(&file);
            s.push_str(&format!("\n{}:\n  {state}\n  to do: {todo}\n", item.title()));
            if let attention::Item::Interrupted(j) = item {
                let alive = j.command_still_running();
                if !alive.is_empty() {
                    s.push_str(&format!("  {}\n", crate::restore::recover::still_running(j, &alive)));
                }
            }
        }
        s.push('\n');
    }
    if let Some(h) = &f.running {
        s.push_str(&format!(
            "running now: {}\n",
            h.as_ref()
                .map(|h| h.to_string())
                .unwrap_or_else(|| "another guard".into())
        ));
    }
    match &f.last_run {
        Some(r) => s.push_str(&format!(
            "last run: {} started {} `{}` → {} (exit {})\n",
            r.id,
            crate::clock::local_str(&r.started_at),
            crate::process::shell_words(&r.command),
            r.outcome.as_deref().unwrap_or(&r.phase),
            r.exit_code.map(|c| c.to_string()).unwrap_or_else(|| "-".into())
        )),
        None => s.push_str("last run: none\n"),
    }
    match f.snaps.first() {
        Some(n) => s.push_str(&format!(
            "snapshots: {} complete; newest {} ({}, {})\n",
            f.snaps.len(),
            n.id,
            n.kind,
            crate::clock::local_str(&n.created_at)
        )),
        None => s.push_str("snapshots: none\n"),
    }
    if let Some(r) = &f.restorable {
        if f.snaps.first().map(|n| &n.id) != Some(&r.id) {
            s.push_str(&format!(
                "newest restorable: {} ({}, {})\n",
                r.id,
                r.kind,
                crate::clock::local_str(&r.created_at)
            ));
        }
    }
    drills(&mut s, &f.drills);
    for w in &f.warnings {
        s.push_str(&format!("WARNING: {w}\n"));
    }
    if !f.incomplete.is_empty() {
        s.push_str(&format!(
            "\nincomplete snapshots (no manifest; never listed or used): {}\n",
            f.incomplete.join(", ")
        ));
    }
    if !f.leftovers.is_empty() {
        s.push_str("\nleft behind by guards that died (`guard prune` removes them):\n");
        for l in &f.leftovers {
            s.push_str(&format!(
                "  {} — {} ({})\n",
                l.path.display(),
                l.what,
                ui::bytes(l.bytes)
            ));
        }
    }
    if f.attention.is_empty() && f.running.is_none() && f.warnings.is_empty() {
        s.push_str("nothing needs attention\n");
    }
    s
}

fn drills(s: &mut String, drills: &[DrillRow]) {
    let last = drills.first();
    let good = drills.iter().find(|d| d.ok);
    match (last, good) {
        (None, _) => s.push_str("drills: none yet (`guard drill`)\n"),
        (Some(d), Some(g)) if d.id == g.id => s.push_str(&format!(
            "last drill: passed {} (snapshot {}, {:.2}s)\n",
            crate::clock::local_str(&d.started_at),
            d.snapshot_id,
            d.seconds
        )),
        (Some(d), g) => {
            s.push_str(&format!(
                "last drill: FAILED {} (snapshot {})\n",
                crate::clock::local_str(&d.started_at),
                d.snapshot_id
            ));
            match g {
                Some(g) => s.push_str(&format!(
                    "last good drill: {} (snapshot {}, {:.2}s)\n",
                    crate::clock::local_str(&g.started_at),
                    g.snapshot_id,
                    g.seconds
                )),
                None => s.push_str("last good drill: none\n"),
            }
        }
    }
}
