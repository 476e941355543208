//! `guard restore ID [--target T]... [--no-rescue]`: put a snapshot back over the live targets
//! ([`crate::restore::requested`]).
//!
//! `latest` is the newest snapshot a restore can trust ([`crate::attention::latest`]): never a
//! rescue, one that failed verification or its last drill, or one taken of a state guard knows
//! is damaged. The prompt and the output say which snapshot it is (kind, age, the command it
//! preceded) and which newer ones were passed over, and why.

use serde_json::json;

use super::Session;
use crate::attention;
use crate::error::{Failure, Kind, ResultExt};
use crate::journal::Journals;
use crate::manifest::Manifest;
use crate::policy::Policy;
use crate::process::shell_words;
use crate::restore;
use crate::ui::{self, Ui};

pub fn restore(policy: &Policy, id: &str, only: &[String], no_rescue: bool, yes: bool, ui: &Ui) -> Result<u8, Failure> {
    let s = Session::open(policy)?;
    let journals = crate::journal::read_all(s.store())?;
    let (id, why_not_newer) = pick(&s, policy, id, &journals)?;
    let m = s.catalog.load_manifest(s.store(), &id).kind(Kind::Corrupt)?;
    for o in only {
        if m.target(o).is_none() {
            return Err(Failure::msg(Kind::Usage, format!("snapshot {id} has no target {o:?}")));
        }
    }
    let what = describe(&s, policy, &m, &journals)?;
    for line in &why_not_newer {
        ui.info(&format!("guard: passed over {line}"));
    }
    ui.info(&format!("guard: restoring snapshot {id} ({what})"));
    let sub = restore::restrict(&m, only);
    let names: Vec<&str> = sub.targets.iter().map(|t| t.name.as_str()).collect();
    let run_id = crate::manifest::new_id(crate::clock::now());
    let command = ["guard".to_string(), "restore".into(), id.clone()];
    let _lock = s.lock(policy, &shell_words(&command), Some(&run_id), ui)?;
    if !yes
        && !ui.confirm(&format!(
            "guard: replace the live data of {} with snapshot {id} ({what})?",
            names.join(", ")
        ))
    {
        return Err(Failure::msg(
            Kind::Declined,
            "not confirmed (pass --yes to restore without asking); nothing was changed",
        ));
    }
    let (j, done, failure) = restore::requested(&s.ctx(policy, ui), &sub, only, no_rescue, &run_id, &command)?;
    if ui.json {
        ui::print_json(&json!({
            "run_id": j.run_id,
            "snapshot_id": id,
            "snapshot": what,
            "passed_over": why_not_newer,
            "rescue_id": done.rescue_id,
            "targets": done.targets,
            "after_hooks_failed": done.after_hooks,
        }));
    }
    match failure {
        None => {
            ui.info(&format!("guard: restored {} from {id} and verified", names.join(", ")));
            Ok(0)
        }
        Some(f) if ui.json => Err(f.reported()),
        Some(f) => Err(f),
    }
}

/// The snapshot `id` names; for `latest`, also the newer ones passed over, each with its reason.
fn pick(s: &Session, policy: &Policy, id: &str, journals: &Journals) -> Result<(String, Vec<String>), Failure> {
    if id != "latest" {
        return Ok((s.resolve(policy, id)?, Vec::new()));
    }
    let mut snaps = s.catalog.snapshots(Some(&policy.name))?;
    // A candidate whose manifest no longer reads is passed over (and marked failed), saying so.
    let mut unreadable = Vec::new();
    while let Some(c) = attention::latest(&snaps, journals).chosen.map(|c| c.id.clone()) {
        let Err(e) = s.catalog.load_manifest(s.store(), &c) else {
            break;
        };
        let _ = s.catalog.mark_verified(&c, false);
        unreadable.push((c.clone(), format!("{c}: {}", crate::secrets::redact(&format!("{e:#}")))));
        snaps.retain(|x| x.id != c);
    }
    let l = attention::latest(&snaps, journals);
    let mut passed: Vec<String> = unreadable.iter().map(|(_, why)| why.clone()).collect();
    passed.extend(
        l.skipped
            .iter()
            .map(|(r, why)| format!("{} ({}, {}): {why}", r.id, r.kind, r.created_at)),
    );
    // A damaged snapshot newer than the one picked (ids sort by time) is passed over, saying so.
    let picked = l.chosen.map(|c| c.id.clone()).unwrap_or_default();
    for d in crate::damaged::find(s.store(), &s.catalog, &policy.name)? {
        if d.id > picked && !unreadable.iter().any(|(id, _)| *id == d.id) {
            passed.push(format!(
                "{}: its manifest {} is damaged ({})",
                d.id, d.manifest, d.error
            ));
        }
    }
    match l.chosen {
        Some(c) => Ok((c.id.clone(), passed)),
        None => Err(Failure::msg(
            Kind::Usage,
            if passed.is_empty() {
                format!("policy {} has no snapshot to restore yet", policy.name)
            } else {
                format!(
                    "no snapshot of policy {} can be trusted as `latest`: {}. Name one explicitly if you mean it (`guard list`)",
                    policy.name,
                    passed.join("; ")
                )
            },
        )),
    }
}

/// "pre-run, 3h 12m old, taken before `python3 migrate.py`", and what guard knows is wrong
/// with it.
fn describe(s: &Session, policy: &Policy, m: &Manifest, journals: &Journals) -> Result<String, Failure> {
    let secs = (crate::clock::now() - m.created_at).whole_seconds().max(0) as u64;
    let age = humantime::format_duration(std::time::Duration::from_secs(if secs >= 3600 {
        secs / 60 * 60
    } else {
        secs
    }));
    let mut what = format!("{}, {age} old", m.kind.as_str());
    if let Some(c) = &m.command {
        what.push_str(&format!(", taken before `{}`", shell_words(c)));
    }
    if let Some(l) = &m.label {
        what.push_str(&format!(", label {l:?}"));
    }
    let row = s
        .catalog
        .snapshots(Some(&policy.name))?
        .into_iter()
        .find(|r| r.id == m.id);
    if let Some(why) = row.as_ref().and_then(|r| attention::taken_while_damaged(r, journals)) {
        what.push_str(&format!("; WARNING: {why}"));
    }
    Ok(what)
}
