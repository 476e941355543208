//! The guarded run: lock → confirm → hooks → snapshot → verify → run → check → restore.
//!
//! Every phase is written to the run's journal before its work starts, so a guard that dies
//! leaves a record of exactly how far it got. The command runs only after its snapshot has
//! been completed and verified; a failure before that point runs nothing.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::json;

use crate::checks;
use crate::error::{Failure, Kind, ResultExt};
use crate::journal::{CheckResult, Journal, Phase};
use crate::manifest::SnapshotKind;
use crate::policy::{CheckWhat, Policy};
use crate::process::{command_exists, exit_code_of, run_hooks, shell_words};
use crate::restore::{restore_deferring_signals, TargetRestore};
use crate::snapshot::{self, Request};
use crate::store::{self, keys, Store};
use crate::targets::{self, Target};
use crate::ui::{self, Ui};

pub struct Options {
    pub yes: bool,
    pub dry_run: bool,
    pub no_restore: bool,
    pub command: Vec<String>,
}

/// Print what a run would do, touching nothing.
fn print_plan(policy: &Policy, targets: &[Box<dyn Target>], opts: &Options, ui: &Ui) {
    if ui.json {
        ui::print_json(&json!({
            "policy": policy.name,
            "store": policy.store.to_string(),
            "targets": targets.iter().map(|t| json!({"name": t.name(), "kind": t.kind(), "source": t.source()})).collect::<Vec<_>>(),
            "hooks": {"before": policy.hooks.before, "after": policy.hooks.after},
            "checks": policy.checks.iter().map(|c| json!({"name": c.name, "target": c.target})).collect::<Vec<_>>(),
            "command": opts.command,
            "confirm": policy.confirm && !opts.yes,
        }));
        return;
    }
    let mut s = format!(
        "dry run of policy {} ({}): nothing will be touched\n",
        policy.name,
        policy.file.display()
    );
    s.push_str(&format!("store: {}\n", policy.store));
    if policy.confirm && !opts.yes {
        s.push_str("confirm: guard would ask before running (--yes skips)\n");
    }
    for h in &policy.hooks.before {
        s.push_str(&format!("before hook: {h}\n"));
    }
    for t in targets {
        s.push_str(&format!("snapshot: {} ({}) {}\n", t.name(), t.kind(), t.source()));
    }
    s.push_str(&format!("run: {}\n", shell_words(&opts.command)));
    for c in &policy.checks {
        let what = match &c.what {
            CheckWhat::Untouched(items) => format!("{} untouched", items.join(", ")),
            CheckWhat::Sql { sql, expect } => format!("{sql} → {expect}"),
            CheckWhat::Command { command } => format!("`{command}` exits 0"),
            CheckWhat::Objects {
                prefix,
                measure,
                expect,
            } => format!("{measure:?} under {prefix:?} → {expect}"),
        };
        s.push_str(&format!(
            "check: {} [{}] {what}\n",
            c.name,
            c.target.as_deref().unwrap_or("-")
        ));
    }
    s.push_str(if opts.no_restore {
        "on failure: keep the failed state (--no-restore)\n"
    } else {
        "on failure: rescue snapshot, restore, verify\n"
    });
    for h in &policy.hooks.after {
        s.push_str(&format!("after hook: {h}\n"));
    }
    print!("{}", crate::secrets::redact(&s));
}

/// Copy a child's stream to our own stream and the run log, bytes intact (secrets masked).
fn tee(mut from: impl Read + Send + 'static, to_stdout: bool, log: Arc<Mutex<File>>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let chunk = crate::secrets::redact_bytes(&buf[..n]);
            if to_stdout {
                let mut o = std::io::stdout().lock();
                let _ = o.write_all(&chunk);
                let _ = o.flush();
            } else {
                let mut e = std::io::stderr().lock();
                let _ = e.write_all(&chunk);
                let _ = e.flush();
            }
            if let Ok(mut l) = log.lock() {
                let _ = l.write_all(&chunk);
            }
        }
    })
}

/// Run the wrapped command, streaming its output live and into `log`. Signals received by
/// guard meanwhile are forwarded to it. Returns its exit code.
fn run_command(cmd: &[String], log: File, ui: &Ui) -> Result<i32> {
    let log = Arc::new(Mutex::new(log));
    let mut child = Command::new(&cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::inherit())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {:?}", cmd[0]))?;
    let out = tee(child.stdout.take().expect("piped"), !ui.json, Arc::clone(&log));
    let err = tee(child.stderr.take().expect("piped"), false, Arc::clone(&log));
    let status = loop {
        if let Some(sig) = crate::signals::take() {
            crate::signals::forward(child.id(), sig);
        }
        match child.try_wait()? {
            Some(s) => break s,
            None => std::thread::sleep(Duration::from_millis(25)),
        }
    };
    // The command has exited, but a process it left behind (a daemon, `sleep &`) may still hold
    // its stdout/stderr open: drain what is there for a moment, then stop waiting for EOF.
    let grace = std::time::Instant::now() + Duration::from_secs(2);
    while !(out.is_finished() && err.is_finished()) && std::time::Instant::now() < grace {
        std::thread::sleep(Duration::from_millis(10));
    }
    if !(out.is_finished() && err.is_finished()) {
        ui.warn("the command exited but something it started still holds its output open; no longer waiting for it");
    }
    if let Ok(l) = log.lock() {
        let _ = l.sync_all();
    }
    Ok(exit_code_of(&status))
}

fn open_log(store: &dyn Store, run_id: &str) -> Result<File> {
    // A remote store's log is written locally and uploaded when the command ends (publish_log).
    let path = store::state::state_dir(store)?.join(keys::log_key(run_id));
    store::local::create_dir_all_private(path.parent().expect("has parent"))?;
    Ok(OpenOptions::new().create(true).append(true).mode(0o600).open(&path)?)
}

/// Print the checks table for people.
pub fn print_checks(results: &[CheckResult], ui: &Ui) {
    if ui.json || results.is_empty() {
        return;
    }
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                r.before.clone().unwrap_or_else(|| "-".into()),
                r.after.clone().unwrap_or_else(|| "-".into()),
                r.expect.clone(),
                if r.passed {
                    "pass".into()
                } else {
                    format!(
                        "FAIL{}",
                        r.detail.as_ref().map(|d| format!(": {d}")).unwrap_or_default()
                    )
                },
            ]
        })
        .collect();
    eprint!(
        "{}",
        crate::secrets::redact(&ui::table(&["check", "before", "after", "expect", "result"], &rows))
    );
}

/// The guarded run. Returns guard's exit code.
pub fn guarded(policy: &Policy, opts: &Options, ui: &Ui) -> Result<u8, Failure> {
    if opts.command.is_empty() {
        return Err(Failure::msg(
            Kind::Usage,
            "nothing to run: use `guard [--policy P] -- COMMAND [ARGS...]`",
        ));
    }
    let targets = targets::build_all(&policy.targets).kind(Kind::Usage)?;
    if opts.dry_run {
        print_plan(policy, &targets, opts, ui);
        return Ok(0);
    }
    if !command_exists(&opts.command[0]) {
        return Err(Failure::msg(
            Kind::Usage,
            format!("command not found: {:?} (nothing was run)", opts.command[0]),
        ));
    }
    if policy.targets.is_empty() {
        return Err(Failure::msg(
            Kind::Usage,
            format!("policy {} names no target: nothing to protect", policy.name),
        ));
    }
    let store = store::open(&policy.store).kind(Kind::Snapshot)?;
    let store = store.as_ref();
    let run_id = crate::manifest::new_id(crate::clock::now());
    let cmdline = shell_words(&opts.command);
    let lock = crate::lock::acquire(store, &policy.name, &cmdline, Some(&run_id))?;
    if let Some(h) = &lock.taken_over {
        ui.warn(&format!(
            "took over the lock of a guard that died ({h}); `guard status` shows what it left behind"
        ));
    }
    refuse_if_interrupted(store, policy)?;
    let catalog = crate::catalog::Catalog::open(store).kind(Kind::Snapshot)?;

    if policy.confirm && !opts.yes {
        let q = format!(
            "guard: run `{}` on {} (targets: {})?",
            cmdline,
            policy.name,
            policy
                .targets
                .iter()
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        if !ui.confirm(&q) {
            return Err(Failure::msg(
                Kind::Declined,
                "not confirmed (pass --yes to skip the question); nothing was run",
            ));
        }
    }

    let mut j = Journal {
        run_id: run_id.clone(),
        policy: policy.name.clone(),
        policy_file: policy.file.display().to_string(),
        host: crate::clock::hostname(),
        pid: std::process::id(),
        started_at: crate::clock::now(),
        updated_at: crate::clock::now(),
        phase: Phase::Locked,
        command: opts.command.iter().map(|a| crate::secrets::redact(a)).collect(),
        snapshot_id: None,
        rescue_id: None,
        command_exit: None,
        checks: Vec::new(),
        restored: Vec::new(),
        outcome: None,
        exit_code: None,
        message: None,
    };
    j.save(store).kind(Kind::Snapshot)?;
    crate::signals::install();

    let result = lifecycle(policy, &targets, store, &catalog, opts, ui, &mut j);
    // After hooks run whatever happened once guard got as far as the before hooks.
    let after_err = run_hooks("after", &policy.hooks.after, ui).err();
    if let Some(e) = &after_err {
        ui.warn(&format!("{e:#}"));
    }
    let (code, outcome) = match &result {
        Ok((code, outcome)) => (*code, outcome.clone()),
        Err(f) => (f.kind.exit_code(), f.kind.as_str().to_string()),
    };
    j.outcome = Some(outcome.clone());
    j.exit_code = Some(code);
    if let Err(f) = &result {
        j.message = Some(crate::secrets::redact(&format!("{:#}", f.error)));
    }
    j.phase = Phase::Done;
    if let Err(e) = j.save(store) {
        ui.warn(&format!("could not write the run journal: {e:#}"));
    }
    let _ = catalog.record_run(&j);
    drop(lock);

    if ui.json {
        ui::print_json(&json!({
            "run_id": j.run_id,
            "policy": j.policy,
            "outcome": outcome,
            "exit_code": code,
            "command": j.command,
            "command_exit": j.command_exit,
            "snapshot_id": j.snapshot_id,
            "rescue_id": j.rescue_id,
            "checks": j.checks,
            "restored": j.restored,
            "error": j.message,
            "log": format!("{}/{}", store.location(), keys::log_key(&j.run_id)),
            "after_hooks_failed": after_err.map(|e| format!("{e:#}")),
        }));
    }
    match result {
        Ok((code, _)) => Ok(code),
        Err(f) if ui.json => Err(f.reported()),
        Err(f) => Err(f),
    }
}

/// Refuse to start while an earlier run of this policy was interrupted and not yet recovered.
fn refuse_if_interrupted(store: &dyn Store, policy: &Policy) -> Result<(), Failure> {
    if let Some(j) = crate::journal::interrupted_runs(store, &policy.name)
        .kind(Kind::Internal)?
        .into_iter()
        .next()
    {
        return Err(Failure::msg(
            Kind::Usage,
            format!(
                "run {} of policy {} was interrupted in phase {}; nothing was run. `guard status` explains the state; `guard recover` restores its pre-run snapshot, or `guard recover --keep` accepts the current state",
                j.run_id,
                policy.name,
                j.phase.as_str()
            ),
        ));
    }
    Ok(())
}

/// Phases 2-7. Returns (exit code, outcome) or a failure.
fn lifecycle(
    policy: &Policy,
    targets: &[Box<dyn Target>],
    store: &dyn Store,
    catalog: &crate::catalog::Catalog,
    opts: &Options,
    ui: &Ui,
    j: &mut Journal,
) -> Result<(u8, String), Failure> {
    run_hooks("before", &policy.hooks.before, ui).kind(Kind::Snapshot)?;
    j.enter(store, Phase::Snapshotting).kind(Kind::Snapshot)?;
    for t in targets {
        t.preflight().kind(Kind::Snapshot)?;
    }
    let before: BTreeMap<String, String> = checks::before_values(policy, targets).kind(Kind::Snapshot)?;

    ui.info(&format!("guard: snapshot of {} into {}", policy.name, store.location()));
    let snap = snapshot::take(
        policy,
        targets,
        store,
        Request {
            kind: SnapshotKind::PreRun,
            label: None,
            run_id: Some(j.run_id.clone()),
            command: Some(opts.command.clone()),
            only: None,
            allow_absent: false,
        },
        ui,
    )
    .kind(Kind::Snapshot)?;
    let _ = catalog.record_snapshot(&snap);
    let _ = catalog.mark_verified(&snap.id, true);
    j.snapshot_id = Some(snap.id.clone());
    j.enter(store, Phase::SnapshotVerified).kind(Kind::Snapshot)?;
    ui.info(&format!(
        "guard: snapshot {} verified; running {}",
        snap.id,
        shell_words(&opts.command)
    ));

    let log = open_log(store, &j.run_id).kind(Kind::Snapshot)?;
    j.enter(store, Phase::CommandRunning).kind(Kind::Internal)?;
    let code = match run_command(&opts.command, log, ui) {
        Ok(c) => c,
        Err(e) => {
            // The command could not even start: nothing changed, but say so plainly.
            ui.warn(&format!("{e:#}"));
            127
        }
    };
    j.command_exit = Some(code);
    if let Err(e) = store::publish_log(store, &j.run_id) {
        ui.warn(&format!("could not upload the run log to {}: {e:#}", store.location()));
    }
    j.enter(store, Phase::Checking).kind(Kind::Internal)?;
    let results = checks::evaluate(policy, targets, &before, &snap);
    print_checks(&results, ui);
    let checks_ok = results.iter().all(|r| r.passed);
    j.checks = results;
    j.save(store).kind(Kind::Internal)?;

    if code == 0 && checks_ok {
        ui.info(&format!(
            "guard: command succeeded and every check passed; changes kept (pre-run snapshot {})",
            snap.id
        ));
        return Ok((0, "kept".into()));
    }
    let why = if code != 0 {
        format!("the command exited {code}")
    } else {
        "a check failed".to_string()
    };
    if opts.no_restore {
        ui.info(&format!(
            "guard: {why}; --no-restore keeps the failed state. To roll back later: guard --policy {} restore {}",
            policy.file.display(),
            snap.id
        ));
        let exit = if code != 0 {
            clamp(code)
        } else {
            Kind::KeptFailed.exit_code()
        };
        return Ok((exit, "failed-kept".into()));
    }

    ui.info(&format!(
        "guard: {why}; taking a rescue snapshot of the failed state, then restoring {}",
        snap.id
    ));
    j.enter(store, Phase::Rescuing).kind(Kind::Internal)?;
    let rescue = snapshot::take(
        policy,
        targets,
        store,
        Request {
            kind: SnapshotKind::Rescue,
            label: Some(format!("failed state of run {}", j.run_id)),
            run_id: Some(j.run_id.clone()),
            command: Some(opts.command.clone()),
            only: None,
            allow_absent: true,
        },
        ui,
    );
    let rescue = match rescue {
        Ok(r) => r,
        Err(e) => {
            return Err(Failure::msg(
                Kind::RestoreFailed,
                format!(
                    "{why}, and the rescue snapshot of the failed state could not be taken ({e:#}); nothing was restored so nothing is lost. Targets are in the state the command left. To restore the pre-run state anyway: guard --policy {} restore {} --no-rescue",
                    policy.file.display(),
                    snap.id
                ),
            ))
        }
    };
    let _ = catalog.record_snapshot(&rescue);
    j.rescue_id = Some(rescue.id.clone());
    j.enter(store, Phase::Restoring).kind(Kind::Internal)?;
    let restored = restore_deferring_signals(policy, store, &snap, ui);
    j.restored = restored.iter().filter(|r| r.ok).map(|r| r.target.clone()).collect();
    let failed: Vec<&TargetRestore> = restored.iter().filter(|r| !r.ok).collect();
    if !failed.is_empty() && failed.iter().all(|r| r.manual) {
        // Nothing went wrong, but guard cannot finish: the instructions were printed above.
        return Err(Failure::msg(
            Kind::RestoreFailed,
            format!(
                "{why}; restore is not automatic for {} — act now, following the instructions above.{} The failed state is kept in rescue snapshot {}; the pre-run snapshot is {}.",
                failed.iter().map(|r| r.target.as_str()).collect::<Vec<_>>().join(", "),
                if j.restored.is_empty() { String::new() } else { format!(" Restored and verified: {}.", j.restored.join(", ")) },
                rescue.id,
                snap.id
            ),
        ));
    }
    if !failed.is_empty() {
        return Err(Failure::msg(
            Kind::RestoreFailed,
            format!(
                "RESTORE FAILED for {} — act now. Pre-run snapshot: {}; failed state kept in rescue snapshot {}. Retry with: guard --policy {} restore {} --no-rescue",
                failed.iter().map(|r| format!("{} ({})", r.target, r.error.as_deref().unwrap_or("?"))).collect::<Vec<_>>().join(", "),
                snap.id,
                rescue.id,
                policy.file.display(),
                snap.id
            ),
        ));
    }
    ui.info(&format!(
        "guard: {why}; restored {} from snapshot {} and verified it. The failed state is kept in rescue snapshot {}.",
        j.restored.join(", "),
        snap.id,
        rescue.id
    ));
    if code != 0 {
        Ok((clamp(code), "restored".into()))
    } else {
        Ok((Kind::ChecksFailedRestored.exit_code(), "restored".into()))
    }
}

fn clamp(code: i32) -> u8 {
    if (1..=255).contains(&code) {
        code as u8
    } else {
        1
    }
}
