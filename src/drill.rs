//! Restore drills: prove a snapshot restores, measure how long it takes, and remember.
//!
//! A drill verifies the snapshot's checksums, restores every target into scratch (temp
//! directories, scratch databases — never the live data), checks engine integrity and the
//! fingerprints recorded at snapshot time, runs the policy's `[[drill.check]]`s against the
//! restored copies, and records the result with each target's time-to-restore in the catalog.
//! Scratch is removed whatever happens.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use anyhow::Result;
use serde::Serialize;

use crate::catalog::{Catalog, DrillRow};
use crate::checks;
use crate::journal::CheckResult;
use crate::policy::Policy;
use crate::snapshot::{self, Depth};
use crate::store::{self, Store};
use crate::targets::Target;
use crate::ui::Ui;

/// One target's part of a drill.
#[derive(Debug, Clone, Serialize)]
pub struct TargetDrill {
    pub target: String,
    pub kind: String,
    pub ok: bool,
    /// Time to restore into scratch and check it.
    pub restore_seconds: f64,
    /// Content bytes restored.
    pub bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Everything a drill found; also the `--json` document and the catalog record.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub drill_id: String,
    pub policy: String,
    pub snapshot_id: String,
    pub snapshot_created_at: String,
    pub started_at: String,
    pub seconds: f64,
    pub ok: bool,
    pub targets: Vec<TargetDrill>,
    pub checks: Vec<CheckResult>,
    /// The first failure, naming the target (or artifact) and the reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

fn run_drill(policy: &Policy, store: &dyn Store, catalog: &Catalog, id: &str, ui: &Ui) -> Result<Report> {
    let started = std::time::Instant::now();
    let started_at = crate::clock::rfc3339(crate::clock::now());
    let mut report = Report {
        drill_id: crate::manifest::new_id(crate::clock::now()),
        policy: policy.name.clone(),
        snapshot_id: id.to_string(),
        snapshot_created_at: String::new(),
        started_at,
        seconds: 0.0,
        ok: false,
        targets: Vec::new(),
        checks: Vec::new(),
        failure: None,
    };
    let m = match catalog.load_manifest(store, id) {
        Ok(m) => m,
        Err(e) => {
            report.failure = Some(format!("{e:#}"));
            return Ok(report);
        }
    };
    report.snapshot_created_at = crate::clock::rfc3339(m.created_at);
    if let Err(e) = snapshot::verify_artifacts(store, &m, Depth::Checksums)
        .and_then(|()| crate::artifact::check_decryptable(store, &m))
    {
        report.failure = Some(format!("{e:#}"));
        return Ok(report);
    }
    let scratch = store::state::scratch_dir(store)?;
    let mut restored: Vec<Box<dyn Target>> = Vec::new();
    for rec in &m.targets {
        if rec.absent {
            continue;
        }
        let t0 = std::time::Instant::now();
        let spinner = ui.spinner(&format!("drill {}", rec.name));
        let r = crate::targets::target_for(&policy.targets, rec).and_then(|t| t.drill(rec, store, scratch.path()));
        spinner.finish();
        let seconds = t0.elapsed().as_secs_f64();
        let bytes = rec.artifacts.iter().map(|a| a.raw_bytes).sum();
        match r {
            Ok(scratch_target) => {
                ui.info(&format!(
                    "  {:<16} restored into scratch and checked in {seconds:.2}s",
                    rec.name
                ));
                report.targets.push(TargetDrill {
                    target: rec.name.clone(),
                    kind: rec.kind.clone(),
                    ok: true,
                    restore_seconds: seconds,
                    bytes,
                    error: None,
                });
                restored.extend(scratch_target);
            }
            Err(e) => {
                let msg = crate::secrets::redact(&format!("{e:#}"));
                ui.info(&format!("  {:<16} FAILED: {msg}", rec.name));
                report
                    .failure
                    .get_or_insert_with(|| format!("target {}: {msg}", rec.name));
                report.targets.push(TargetDrill {
                    target: rec.name.clone(),
                    kind: rec.kind.clone(),
                    ok: false,
                    restore_seconds: seconds,
                    bytes,
                    error: Some(msg),
                });
            }
        }
    }
    if report.failure.is_none() && !policy.drill.checks.is_empty() {
        report.checks = checks::evaluate_checks(&policy.drill.checks, &restored, &BTreeMap::new(), &m);
        if let Some(c) = report.checks.iter().find(|c| !c.passed) {
            report.failure = Some(format!(
                "drill check {:?} failed{}",
                c.name,
                c.detail.as_ref().map(|d| format!(": {d}")).unwrap_or_default()
            ));
        }
    }
    // Scratch databases go with their targets, scratch files with the directory.
    drop(restored);
    drop(scratch);
    report.ok = report.failure.is_none();
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Run the policy's `on_failure` command with the report's facts in its environment.
fn on_failure(policy: &Policy, report: &Report, ui: &Ui) {
    let Some(cmd) = &policy.drill.on_failure else { return };
    let failed = report
        .targets
        .iter()
        .find(|t| !t.ok)
        .map(|t| t.target.clone())
        .unwrap_or_default();
    let status = crate::process::user_umask(&mut Command::new("sh"))
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::null())
        .env("GUARD_DRILL_POLICY", &report.policy)
        .env("GUARD_DRILL_SNAPSHOT", &report.snapshot_id)
        .env("GUARD_DRILL_ID", &report.drill_id)
        .env("GUARD_DRILL_OK", if report.ok { "1" } else { "0" })
        .env("GUARD_DRILL_FAILED_TARGET", failed)
        .env("GUARD_DRILL_REASON", report.failure.as_deref().unwrap_or(""))
        .env("GUARD_DRILL_SECONDS", format!("{:.3}", report.seconds))
        .env(
            "GUARD_DRILL_REPORT",
            crate::secrets::redact(&serde_json::to_string(report).unwrap_or_default()),
        )
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => ui.warn(&format!("drill on_failure command failed ({s})")),
        Err(e) => ui.warn(&format!("drill on_failure command could not start: {e}")),
    }
}

/// Drill snapshot `id`, record the drill in the catalog, and run the policy's `on_failure`
/// command when it failed.
pub fn drill(policy: &Policy, store: &dyn Store, catalog: &Catalog, id: &str, ui: &Ui) -> Result<Report> {
    let report = run_drill(policy, store, catalog, id, ui)?;
    catalog.record_drill(&DrillRow {
        id: report.drill_id.clone(),
        policy: report.policy.clone(),
        snapshot_id: report.snapshot_id.clone(),
        started_at: report.started_at.clone(),
        seconds: report.seconds,
        ok: report.ok,
        report: serde_json::to_value(&report)?,
    })?;
    if !report.ok {
        on_failure(policy, &report, ui);
    }
    Ok(report)
}
