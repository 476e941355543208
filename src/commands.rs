//! The snapshot-management subcommands: `snapshot`, `list`, `show`, `verify`, `restore`,
//! `reindex`. The guarded run lives in [`crate::run`]; `status` and `recover` in
//! [`crate::status`].

use anyhow::Result;
use serde_json::json;

use crate::catalog::Catalog;
use crate::error::{Failure, Kind, ResultExt};
use crate::journal::{Journal, Op};
use crate::manifest::SnapshotKind;
use crate::outcome::Outcome;
use crate::policy::Policy;
use crate::process::{shell_words, ShellHooks};
use crate::restore::{self, Caller, Ctx, Rescue};
use crate::snapshot::{self, Depth, Request};
use crate::store::{self, Store};
use crate::targets;
use crate::ui::{self, Ui};

fn open(policy: &Policy) -> Result<(Box<dyn Store>, Catalog), Failure> {
    let store = store::open(&policy.store).kind(Kind::Usage)?;
    let catalog = Catalog::open(store.as_ref())?;
    Ok((store, catalog))
}

/// Resolve `latest`, a full id or a unique prefix to a snapshot id of the policy.
pub fn resolve_id(catalog: &Catalog, policy: &Policy, id: &str) -> Result<String, Failure> {
    let snaps = catalog.snapshots(Some(&policy.name))?;
    if id == "latest" {
        return snaps
            .iter()
            .find(|s| s.kind != SnapshotKind::Rescue.as_str())
            .or(snaps.first())
            .map(|s| s.id.clone())
            .ok_or_else(|| Failure::msg(Kind::Usage, format!("policy {} has no snapshot yet", policy.name)));
    }
    let matches: Vec<&str> = snaps
        .iter()
        .filter(|s| s.id.starts_with(id))
        .map(|s| s.id.as_str())
        .collect();
    match matches.as_slice() {
        [one] => Ok(one.to_string()),
        [] => Err(Failure::msg(
            Kind::Usage,
            format!(
                "no complete snapshot {id:?} of policy {} (see `guard list`)",
                policy.name
            ),
        )),
        many => Err(Failure::msg(
            Kind::Usage,
            format!("{id:?} matches {} snapshots; give more of the id", many.len()),
        )),
    }
}

/// `guard snapshot [--target T]... [--label L]`.
pub fn snapshot_cmd(policy: &Policy, only: &[String], label: Option<String>, ui: &Ui) -> Result<u8, Failure> {
    for o in only {
        if !policy.targets.iter().any(|t| &t.name == o) {
            return Err(Failure::msg(
                Kind::Usage,
                format!("policy {} has no target {o:?}", policy.name),
            ));
        }
    }
    let targets = targets::build_all(&policy.targets).kind(Kind::Usage)?;
    if targets.is_empty() {
        return Err(Failure::msg(
            Kind::Usage,
            format!("policy {} names no target", policy.name),
        ));
    }
    let (store, catalog) = open(policy)?;
    let store = store.as_ref();
    let _lock = crate::lock::acquire(store, &policy.name, "guard snapshot", None)?;
    for t in &targets {
        if only.is_empty() || only.iter().any(|o| o == t.name()) {
            t.preflight().kind(Kind::Snapshot)?;
        }
    }
    let m = snapshot::take(
        policy,
        &targets,
        store,
        Request {
            kind: SnapshotKind::Manual,
            label,
            run_id: None,
            command: None,
            only: if only.is_empty() { None } else { Some(only) },
            allow_absent: false,
        },
        ui,
    )
    .kind(Kind::Snapshot)?;
    catalog.record_snapshot(&m)?;
    catalog.mark_verified(&m.id, true)?;
    if ui.json {
        ui::print_json(&serde_json::to_value(&m)?);
    } else {
        println!("{}", m.id);
    }
    Ok(0)
}

/// `guard list`.
pub fn list(policy: &Policy, ui: &Ui) -> Result<u8, Failure> {
    let (_store, catalog) = open(policy)?;
    let snaps = catalog.snapshots(Some(&policy.name))?;
    if ui.json {
        ui::print_json(&serde_json::to_value(&snaps)?);
        return Ok(0);
    }
    if snaps.is_empty() {
        eprintln!("no snapshots of policy {} yet", policy.name);
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = snaps
        .iter()
        .map(|s| {
            vec![
                s.id.clone(),
                s.kind.clone(),
                s.targets.clone(),
                ui::bytes(s.bytes as u64),
                match s.verified_ok {
                    Some(true) => "ok".into(),
                    Some(false) => "FAILED".into(),
                    None => "-".into(),
                },
                s.label.clone().unwrap_or_default(),
            ]
        })
        .collect();
    print!(
        "{}",
        ui::table(&["id", "kind", "targets", "size", "verified", "label"], &rows)
    );
    Ok(0)
}

/// `guard show ID`.
pub fn show(policy: &Policy, id: &str, ui: &Ui) -> Result<u8, Failure> {
    let (store, catalog) = open(policy)?;
    let id = resolve_id(&catalog, policy, id)?;
    let m = catalog.load_manifest(store.as_ref(), &id).kind(Kind::Corrupt)?;
    if ui.json {
        ui::print_json(&serde_json::to_value(&m)?);
        return Ok(0);
    }
    let mut s = format!("snapshot {} ({}) of policy {}\n", m.id, m.kind.as_str(), m.policy);
    s.push_str(&format!(
        "taken {} → {} on {} by guard {}\n",
        crate::clock::rfc3339(m.created_at),
        crate::clock::rfc3339(m.completed_at),
        m.host,
        m.guard_version
    ));
    if let Some(l) = &m.label {
        s.push_str(&format!("label: {l}\n"));
    }
    if let Some(c) = &m.command {
        s.push_str(&format!("command: {}\n", crate::process::shell_words(c)));
    }
    if let Some(r) = &m.run_id {
        s.push_str(&format!("run: {r}\n"));
    }
    for t in &m.targets {
        s.push_str(&format!(
            "\ntarget {} ({}) {}{}\n",
            t.name,
            t.kind,
            t.source,
            if t.absent { " — absent" } else { "" }
        ));
        for a in &t.artifacts {
            s.push_str(&format!(
                "  {}/{}\n    {} ({} uncompressed) sha256 {}\n",
                store.location(),
                a.key,
                ui::bytes(a.bytes),
                ui::bytes(a.raw_bytes),
                a.sha256
            ));
        }
        for (k, f) in &t.fingerprints {
            s.push_str(&format!("  {k}: {f}\n"));
        }
        if !t.files.is_empty() {
            s.push_str(&format!("  {} entries\n", t.files.len()));
        }
    }
    print!("{}", crate::secrets::redact(&s));
    Ok(0)
}

/// `guard verify [ID] [--quick]`: every snapshot of the policy when no id is given.
pub fn verify(policy: &Policy, id: Option<&str>, quick: bool, ui: &Ui) -> Result<u8, Failure> {
    let (store, catalog) = open(policy)?;
    let store = store.as_ref();
    let ids: Vec<String> = match id {
        Some(id) => vec![resolve_id(&catalog, policy, id)?],
        None => catalog
            .snapshots(Some(&policy.name))?
            .into_iter()
            .map(|s| s.id)
            .collect(),
    };
    if ids.is_empty() {
        return Err(Failure::msg(
            Kind::Usage,
            format!("policy {} has no snapshot to verify", policy.name),
        ));
    }
    let depth = if quick { Depth::Checksums } else { Depth::Deep };
    let scratch = crate::store::state::scratch_dir(store)?;
    let mut results = Vec::new();
    let mut bad = 0;
    for id in &ids {
        let spinner = ui.spinner(&format!("verify {id}"));
        let r = catalog
            .load_manifest(store, id)
            .and_then(|m| snapshot::verify_for(Some(policy), store, &m, depth, scratch.path()));
        spinner.finish();
        let _ = catalog.mark_verified(id, r.is_ok());
        match &r {
            Ok(()) => ui.info(&format!("{id}: ok")),
            Err(e) => {
                bad += 1;
                eprintln!("{id}: FAILED: {}", crate::secrets::redact(&format!("{e:#}")));
            }
        }
        results.push(
            json!({"id": id, "ok": r.is_ok(), "error": r.err().map(|e| crate::secrets::redact(&format!("{e:#}")))}),
        );
    }
    if ui.json {
        ui::print_json(&json!({"verified": results, "failed": bad}));
    }
    if bad > 0 {
        let f = Failure::msg(
            Kind::Corrupt,
            format!("{bad} of {} snapshot(s) failed verification", ids.len()),
        );
        return Err(if ui.json { f.reported() } else { f });
    }
    Ok(0)
}

/// `guard restore ID [--target T]... [--no-rescue]`.
pub fn restore(policy: &Policy, id: &str, only: &[String], no_rescue: bool, yes: bool, ui: &Ui) -> Result<u8, Failure> {
    let (store, catalog) = open(policy)?;
    let store = store.as_ref();
    let id = resolve_id(&catalog, policy, id)?;
    let m = catalog.load_manifest(store, &id).kind(Kind::Corrupt)?;
    for o in only {
        if m.target(o).is_none() {
            return Err(Failure::msg(Kind::Usage, format!("snapshot {id} has no target {o:?}")));
        }
    }
    let sub = restore::restrict(&m, only);
    let names: Vec<&str> = sub.targets.iter().map(|t| t.name.as_str()).collect();
    let run_id = crate::manifest::new_id(crate::clock::now());
    let command = ["guard".to_string(), "restore".into(), id.clone()];
    let _lock = crate::lock::acquire(store, &policy.name, &shell_words(&command), Some(&run_id))?;
    if !yes
        && !ui.confirm(&format!(
            "guard: replace the live data of {} with snapshot {id}?",
            names.join(", ")
        ))
    {
        return Err(Failure::msg(
            Kind::Declined,
            "not confirmed (pass --yes to restore without asking); nothing was changed",
        ));
    }
    let targets = restore::targets_for(policy, &sub)?;
    let mut j = Journal::new(&run_id, policy, &command);
    j.op = Op::Restore;
    j.only = only.to_vec();
    j.snapshot_id = Some(id.clone());
    j.save(store).kind(Kind::Internal)?;
    let cx = Ctx {
        policy,
        store,
        catalog: &catalog,
        hooks: &ShellHooks,
        ui,
    };
    let rescue = if no_rescue {
        Rescue::Skip
    } else {
        Rescue::Take(format!("state before restore of {id}"))
    };
    let done = match restore::rescue_then_restore(&cx, &targets, &sub, rescue, true, &mut j, &Caller::Restore) {
        Ok(done) => done,
        Err(f) => {
            // Nothing was restored: the error is the whole report.
            let result = Err(f);
            restore::close(&cx, &mut j, &result);
            return result.map(|(code, _)| code);
        }
    };
    let result = match done.failure(&cx, &sub, &Caller::Restore) {
        None => Ok((0, Outcome::Restored)),
        Some(f) => Err(f),
    };
    restore::close(&cx, &mut j, &result);
    if ui.json {
        ui::print_json(
            &json!({"run_id": j.run_id, "snapshot_id": id, "rescue_id": done.rescue_id, "targets": done.targets}),
        );
    }
    match result {
        Ok(_) => {
            ui.info(&format!("guard: restored {} from {id} and verified", names.join(", ")));
            Ok(0)
        }
        Err(f) if ui.json => Err(f.reported()),
        Err(f) => Err(f),
    }
}

/// `guard reindex`: rebuild the catalog from the manifests in the store.
pub fn reindex(policy: &Policy, ui: &Ui) -> Result<u8, Failure> {
    let (store, catalog) = open(policy)?;
    catalog.rebuild(store.as_ref())?;
    let n = catalog.snapshots(None)?.len();
    if ui.json {
        ui::print_json(&json!({"snapshots": n}));
    } else {
        println!("catalog rebuilt: {n} snapshot(s) in {}", store.location());
    }
    Ok(0)
}
