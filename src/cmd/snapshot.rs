//! `guard snapshot [--target T]... [--label L]`: a manual snapshot, now.

use super::Session;
use crate::error::{Failure, Kind, ResultExt};
use crate::manifest::SnapshotKind;
use crate::policy::Policy;
use crate::snapshot::{self, Request};
use crate::targets;
use crate::ui::{self, Ui};

pub fn snapshot(policy: &Policy, only: &[String], label: Option<String>, ui: &Ui) -> Result<u8, Failure> {
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
    let s = Session::open(policy)?;
    let _lock = s.lock(policy, "guard snapshot", None, ui)?;
    if let Some(item) = crate::attention::assess(s.store(), &s.catalog, policy)?.items.first() {
        if item.kind() != "failed_drill" {
            ui.warn(&format!(
                "policy {} needs attention ({}): this snapshot holds that state, and `guard restore latest` passes it over (`guard status`)",
                policy.name,
                item.title()
            ));
        }
    }
    for t in &targets {
        if only.is_empty() || only.iter().any(|o| o == t.name()) {
            t.preflight().kind(Kind::Snapshot)?;
        }
    }
    let req = Request {
        kind: SnapshotKind::Manual,
        label,
        run_id: None,
        command: None,
        only: if only.is_empty() { None } else { Some(only) },
        allow_absent: false,
    };
    let m = snapshot::take(policy, &targets, s.store(), req, ui).kind(Kind::Snapshot)?;
    s.catalog.record_snapshot(&m)?;
    s.catalog.mark_verified(&m.id, true)?;
    if ui.json {
        ui::print_json(&serde_json::to_value(&m)?);
    } else {
        crate::outln!("{}", m.id);
    }
    Ok(0)
}
