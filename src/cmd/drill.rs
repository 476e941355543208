//! `guard drill [ID]`: restore a snapshot into scratch, check it, record it
//! ([`crate::drill`]).

use super::Session;
use crate::drill;
use crate::error::{Failure, Kind};
use crate::policy::Policy;
use crate::ui::{self, Ui};

pub fn drill(policy: &Policy, id: Option<&str>, ui: &Ui) -> Result<u8, Failure> {
    let s = Session::open(policy)?;
    let _lock = s.lock(policy, "guard drill", None, ui)?;
    let id = s.resolve(policy, id.unwrap_or("latest"))?;
    // With a store key, a snapshot it does not authenticate is refused (exit 65), not drilled.
    if let Ok(m) = s.catalog.load_manifest(s.store(), &id) {
        m.authentic()?;
    }
    ui.info(&format!("guard: drill of snapshot {id} ({})", policy.name));
    let report = drill::drill(policy, s.store(), &s.catalog, &id, ui)?;
    if ui.json {
        ui::print_json(&serde_json::to_value(&report)?);
    } else {
        let rows: Vec<Vec<String>> = report
            .targets
            .iter()
            .map(|t| {
                vec![
                    t.target.clone(),
                    t.kind.clone(),
                    format!("{:.2}s", t.restore_seconds),
                    ui::bytes(t.bytes),
                    if t.ok { "ok".into() } else { "FAILED".into() },
                ]
            })
            .collect();
        crate::out!(
            "{}",
            ui::table(&["target", "kind", "time to restore", "restored", "result"], &rows)
        );
        crate::run::plan::print_checks(
            &report.checks,
            &Ui {
                json: false,
                ..ui.clone()
            },
        );
        crate::outln!(
            "drill {} of snapshot {}: {} in {:.2}s",
            report.drill_id,
            report.snapshot_id,
            if report.ok { "PASSED" } else { "FAILED" },
            report.seconds
        );
    }
    match &report.failure {
        None => Ok(0),
        Some(f) => {
            let failure = Failure::msg(Kind::DrillFailed, format!("drill of snapshot {id} failed: {f}"));
            Err(if ui.json { failure.reported() } else { failure })
        }
    }
}
