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
use serde_json::json;

use crate::catalog::{Catalog, DrillRow};
use crate::checks;
use crate::error::{Failure, Kind, ResultExt};
use crate::journal::CheckResult;
use crate::policy::Policy;
use crate::snapshot::{self, Depth};
use crate::store::{self, Store};
use crate::targets::Target;
use crate::ui::{self, Ui};

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
    if let Err(e) = snapshot::verify_artifacts(store, &m, Depth::Checksums) {
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
    let status = Command::new("sh")
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

/// `guard drill [SNAPSHOT]`.
pub fn drill(policy: &Policy, id: Option<&str>, ui: &Ui) -> Result<u8, Failure> {
    let store = store::open(&policy.store).kind(Kind::Usage)?;
    let store = store.as_ref();
    let _lock = crate::lock::acquire(store, &policy.name, "guard drill", None)?;
    let catalog = Catalog::open(store)?;
    let id = crate::commands::resolve_id(&catalog, policy, id.unwrap_or("latest"))?;
    ui.info(&format!("guard: drill of snapshot {id} ({})", policy.name));
    let report = run_drill(policy, store, &catalog, &id, ui)?;
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
        print!(
            "{}",
            ui::table(&["target", "kind", "time to restore", "restored", "result"], &rows)
        );
        crate::run::plan::print_checks(
            &report.checks,
            &Ui {
                json: false,
                tty: ui.tty,
            },
        );
        println!(
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

/// `guard drills`: the drill history.
pub fn history(policy: &Policy, ui: &Ui) -> Result<u8, Failure> {
    let store = store::open(&policy.store).kind(Kind::Usage)?;
    let catalog = Catalog::open(store.as_ref())?;
    let drills = catalog.drills(Some(&policy.name), 1000)?;
    if ui.json {
        ui::print_json(&json!(drills
            .iter()
            .map(|d| json!({"id": d.id, "snapshot_id": d.snapshot_id, "started_at": d.started_at, "seconds": d.seconds, "ok": d.ok,
                             "targets": d.report["targets"], "failure": d.report["failure"]}))
            .collect::<Vec<_>>()));
        return Ok(0);
    }
    if drills.is_empty() {
        eprintln!("no drills of policy {} yet (run `guard drill`)", policy.name);
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
                d.started_at.clone(),
                d.snapshot_id.clone(),
                if d.ok { "passed".into() } else { "FAILED".into() },
                format!("{:.2}s", d.seconds),
                per_target,
                d.report["failure"].as_str().unwrap_or("").to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        ui::table(
            &["when", "snapshot", "result", "total", "time to restore", "failure"],
            &rows
        )
    );
    Ok(0)
}

/// `guard schedule --every daily [--install]`: systemd units (or a crontab line) that run
/// drills and retention for the policy.
pub fn schedule(
    policy: &Policy,
    every: &str,
    install: bool,
    unit_dir: &std::path::Path,
    no_enable: bool,
    ui: &Ui,
) -> Result<u8, Failure> {
    let (calendar, cron) = match every {
        "hourly" => ("hourly", "0 * * * *"),
        "daily" => ("daily", "17 3 * * *"),
        "weekly" => ("weekly", "17 3 * * 1"),
        other => {
            return Err(Failure::msg(
                Kind::Usage,
                format!("--every {other:?}: use hourly, daily or weekly"),
            ))
        }
    };
    let exe = std::env::current_exe().map_err(|e| Failure::new(Kind::Internal, e))?;
    let policy_file = std::fs::canonicalize(&policy.file).unwrap_or_else(|_| policy.file.clone());
    let exe = exe.display();
    let pf = policy_file.display();
    let unit = format!("guard-{}", policy.name);
    let service = format!(
        "[Unit]\nDescription=guard restore drill and retention for policy {name}\n\n[Service]\nType=oneshot\nExecStart={exe} --policy {pf} drill\nExecStartPost={exe} --policy {pf} prune\n",
        name = policy.name
    );
    let timer = format!(
        "[Unit]\nDescription=guard drill + prune for policy {name}, {calendar}\n\n[Timer]\nOnCalendar={calendar}\nRandomizedDelaySec=15m\nPersistent=true\n\n[Install]\nWantedBy=timers.target\n",
        name = policy.name
    );
    let cron_line = format!("{cron} {exe} --policy {pf} drill; {exe} --policy {pf} prune");
    let systemd =
        std::path::Path::new("/run/systemd/system").is_dir() || unit_dir != std::path::Path::new("/etc/systemd/system");
    if !install {
        if ui.json {
            ui::print_json(&json!({"service": service, "timer": timer, "crontab": cron_line, "unit": unit}));
        } else if systemd {
            println!(
                "# {}/{unit}.service\n{service}\n# {}/{unit}.timer\n{timer}",
                unit_dir.display(),
                unit_dir.display()
            );
            println!("# install: guard --policy {pf} schedule --every {every} --install");
        } else {
            println!("# systemd is not running here; add this line with `crontab -e`:\n{cron_line}");
        }
        return Ok(0);
    }
    if systemd {
        crate::store::local::create_dir_all_private(unit_dir).map_err(|e| Failure::new(Kind::Internal, e))?;
        for (name, text) in [(format!("{unit}.service"), &service), (format!("{unit}.timer"), &timer)] {
            let p = unit_dir.join(name);
            crate::store::local::write_atomic(&p, text.as_bytes())
                .map_err(|e| Failure::msg(Kind::Internal, format!("cannot write {}: {e}", p.display())))?;
            ui.info(&format!("wrote {}", p.display()));
        }
        if !no_enable {
            for args in [vec!["daemon-reload"], vec!["enable", "--now", &format!("{unit}.timer")]] {
                let st = Command::new("systemctl")
                    .args(&args)
                    .status()
                    .map_err(|e| Failure::msg(Kind::Internal, format!("systemctl: {e}")))?;
                if !st.success() {
                    return Err(Failure::msg(
                        Kind::Internal,
                        format!("systemctl {} failed", args.join(" ")),
                    ));
                }
            }
            ui.info(&format!("enabled {unit}.timer"));
        }
    } else {
        let existing = Command::new("crontab")
            .arg("-l")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        if existing.lines().any(|l| l == cron_line) {
            ui.info("crontab already has the line");
        } else {
            let mut child = Command::new("crontab")
                .arg("-")
                .stdin(Stdio::piped())
                .spawn()
                .map_err(|e| Failure::msg(Kind::Internal, format!("crontab: {e}")))?;
            use std::io::Write;
            let mut input = existing;
            if !input.is_empty() && !input.ends_with('\n') {
                input.push('\n');
            }
            input.push_str(&cron_line);
            input.push('\n');
            child
                .stdin
                .take()
                .expect("piped")
                .write_all(input.as_bytes())
                .map_err(|e| Failure::new(Kind::Internal, e))?;
            if !child.wait().map_err(|e| Failure::new(Kind::Internal, e))?.success() {
                return Err(Failure::msg(Kind::Internal, "crontab - failed"));
            }
            ui.info("added the drill + prune line to the crontab");
        }
    }
    Ok(0)
}
