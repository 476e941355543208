//! The snapshot-management subcommands: `snapshot`, `list`, `show`, `verify`, `restore`,
//! `reindex`. The guarded run lives in [`crate::run`]; `status` and `recover` in
//! [`crate::status`].

use anyhow::Result;
use serde_json::json;

use crate::catalog::Catalog;
use crate::error::{Failure, Kind, ResultExt};
use crate::manifest::{Manifest, SnapshotKind};
use crate::policy::Policy;
use crate::snapshot::{self, Depth, Request};
use crate::store::{self, Store};
use crate::targets::{self, Target};
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
    let names: Vec<String> = m
        .targets
        .iter()
        .map(|t| t.name.clone())
        .filter(|n| only.is_empty() || only.contains(n))
        .collect();
    let _lock = crate::lock::acquire(store, &policy.name, &format!("guard restore {id}"), None)?;
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
    // Refuse a corrupt snapshot before touching anything: every stored artifact must have its
    // recorded size and SHA-256, i.e. be the very bytes whose content was checked when the
    // snapshot was taken. (Each target's restore decompresses its artifacts once more and
    // compares the content checksum before it commits; checking it here too would read and
    // inflate every artifact twice.)
    snapshot::verify_artifacts(store, &m, Depth::Checksums).kind(Kind::Corrupt)?;
    crate::process::run_hooks("before", &policy.hooks.before, ui).kind(Kind::RestoreFailed)?;
    let result = (|| -> Result<(Option<String>, Vec<crate::restore::TargetRestore>), Failure> {
        let mut rescue_id = None;
        if !no_rescue {
            let targets: Vec<Box<dyn Target>> = names
                .iter()
                .map(|n| crate::targets::target_for(&policy.targets, m.target(n).expect("checked")))
                .collect::<Result<_>>()
                .kind(Kind::Usage)?;
            let rescue = snapshot::take(
                policy,
                &targets,
                store,
                Request {
                    kind: SnapshotKind::Rescue,
                    label: Some(format!("state before restore of {id}")),
                    run_id: None,
                    command: None,
                    only: None,
                    allow_absent: true,
                },
                ui,
            )
            .map_err(|e| Failure::msg(Kind::RestoreFailed, format!("the rescue snapshot of the current state failed ({e:#}); nothing was restored. Use --no-rescue to restore without one")))?;
            catalog.record_snapshot(&rescue)?;
            ui.info(&format!("guard: current state kept in rescue snapshot {}", rescue.id));
            rescue_id = Some(rescue.id);
        }
        let sub = Manifest {
            targets: m.targets.iter().filter(|t| names.contains(&t.name)).cloned().collect(),
            ..m.clone()
        };
        let results = crate::restore::restore_deferring_signals(policy, store, &sub, ui);
        Ok((rescue_id, results))
    })();
    let after = crate::process::run_hooks("after", &policy.hooks.after, ui);
    if let Err(e) = &after {
        ui.warn(&format!("{e:#}"));
    }
    let (rescue_id, results) = result?;
    let failed: Vec<_> = results.iter().filter(|r| !r.ok).collect();
    if ui.json {
        ui::print_json(&json!({"snapshot_id": id, "rescue_id": rescue_id, "targets": results}));
    }
    if !failed.is_empty() {
        let names = failed.iter().map(|r| r.target.as_str()).collect::<Vec<_>>().join(", ");
        let msg = if failed.iter().all(|r| r.manual) {
            format!("{names} is not restored in place automatically — act now, following the instructions above")
        } else {
            format!("restore failed for {names} — act now; the snapshot is intact, retry with `guard restore {id}`")
        };
        let f = Failure::msg(Kind::RestoreFailed, msg);
        return Err(if ui.json { f.reported() } else { f });
    }
    ui.info(&format!("guard: restored {} from {id} and verified", names.join(", ")));
    Ok(0)
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
