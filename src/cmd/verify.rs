//! `guard verify [ID] [--quick]`: re-read snapshots (every one of the policy without an id).

use serde_json::json;

use super::Session;
use crate::error::{Failure, Kind};
use crate::policy::Policy;
use crate::snapshot::{self, Depth};
use crate::ui::{self, Ui};

pub fn verify(policy: &Policy, id: Option<&str>, quick: bool, ui: &Ui) -> Result<u8, Failure> {
    let s = Session::open(policy)?;
    let (store, catalog) = (s.store(), &s.catalog);
    let ids: Vec<String> = match id {
        Some(id) => vec![s.resolve(policy, id)?],
        None => catalog
            .snapshots(Some(&policy.name))?
            .into_iter()
            .map(|s| s.id)
            .collect(),
    };
    // Every snapshot: the damaged ones fail beside the others, which are still checked.
    let damaged = match id {
        Some(_) => Vec::new(),
        None => crate::damaged::find(store, catalog, &policy.name)?,
    };
    if ids.is_empty() && damaged.is_empty() {
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
        let r = catalog.load_manifest(store, id).and_then(|m| {
            m.authentic().map_err(|f| f.error)?;
            snapshot::verify_for(Some(policy), store, &m, depth, scratch.path())
        });
        spinner.finish();
        let _ = catalog.mark_verified(id, r.is_ok());
        match &r {
            Ok(()) => ui.info(&format!("{id}: ok")),
            Err(e) => {
                bad += 1;
                crate::errln!("{id}: FAILED: {}", crate::secrets::redact(&format!("{e:#}")));
            }
        }
        results.push(
            json!({"id": id, "ok": r.is_ok(), "error": r.err().map(|e| crate::secrets::redact(&format!("{e:#}")))}),
        );
    }
    for d in &damaged {
        bad += 1;
        crate::errln!("{}: FAILED: {}", d.id, d.line());
        results.push(json!({"id": d.id, "ok": false, "error": d.line()}));
    }
    if ui.json {
        ui::print_json(&json!({"verified": results, "failed": bad}));
    }
    if bad > 0 {
        let f = Failure::msg(
            Kind::Corrupt,
            format!("{bad} of {} snapshot(s) failed verification", results.len()),
        );
        return Err(if ui.json { f.reported() } else { f });
    }
    Ok(0)
}
