//! `guard drills`: the drill history — when, which snapshot, time to restore, result.

use serde_json::json;

use super::Session;
use crate::error::Failure;
use crate::policy::Policy;
use crate::ui::{self, Ui};

pub fn drills(policy: &Policy, ui: &Ui) -> Result<u8, Failure> {
    let s = Session::open(policy)?;
    let drills = s.catalog.drills(Some(&policy.name), 1000)?;
    if ui.json {
        let list: Vec<_> = drills
            .iter()
            .map(|d| json!({"id": d.id, "snapshot_id": d.snapshot_id, "started_at": d.started_at, "seconds": d.seconds, "ok": d.ok,
                             "targets": d.report["targets"], "failure": d.report["failure"]}))
            .collect();
        ui::print_json(&json!({"policy": policy.name, "drills": list}));
        return Ok(0);
    }
    if drills.is_empty() {
        crate::errln!("no drills of policy {} yet (run `guard drill`)", policy.name);
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = drills
        .iter()
        .map(|d| {
            let per_target = d.report["targets"]
                .as_array()
                .map(|ts| {
                    ts.iter()
                        .map(|t| {
                            format!(
                                "{} {:.2}s",
                                t["target"].as_str().unwrap_or("?"),
                                t["restore_seconds"].as_f64().unwrap_or(0.0)
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            vec![
                crate::clock::local_str(&d.started_at),
                d.snapshot_id.clone(),
                if d.ok { "passed".into() } else { "FAILED".into() },
                format!("{:.2}s", d.seconds),
                per_target,
                d.report["failure"].as_str().unwrap_or("").to_string(),
            ]
        })
        .collect();
    crate::out!(
        "{}",
        ui::table(
            &["when", "snapshot", "result", "total", "time to restore", "failure"],
            &rows
        )
    );
    Ok(0)
}
