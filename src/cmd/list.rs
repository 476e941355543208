//! `guard list`: the policy's complete snapshots, newest first.

use super::Session;
use crate::error::Failure;
use crate::policy::Policy;
use crate::ui::{self, Ui};

pub fn list(policy: &Policy, ui: &Ui) -> Result<u8, Failure> {
    let s = Session::open(policy)?;
    let snaps = s.catalog.snapshots(Some(&policy.name))?;
    // A damaged snapshot is not listed as complete; opening the catalog named it on stderr.
    if ui.json {
        ui::print_json(&serde_json::json!({"policy": policy.name, "snapshots": snaps}));
        return Ok(0);
    }
    if snaps.is_empty() {
        crate::errln!("no snapshots of policy {} yet", policy.name);
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
    crate::out!(
        "{}",
        ui::table(&["id", "kind", "targets", "size", "verified", "label"], &rows)
    );
    Ok(0)
}
