//! The guarded run: lock → confirm → hooks → snapshot → verify → run → check → restore.
//!
//! Every phase is written to the run's journal before its work starts, so a guard that dies
//! leaves a record of exactly how far it got. The command runs only after its snapshot has
//! been completed and verified; a failure before that point runs nothing.
//!
//! - [`begin`]: the request checked, the lock, earlier runs, the confirmation; closing the run
//! - [`command`]: the wrapped command, its output and log
//! - [`decide`]: keep, keep the failed state, or restore — a pure function
//! - [`plan`]: the `--dry-run` plan and the checks table
//!
//! The restore after a failure is [`crate::restore::rescue_then_restore`], shared with
//! `guard restore` and `guard recover`.

pub mod begin;
pub mod command;
pub mod decide;
pub mod plan;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use crate::checks;
use crate::error::{Failure, Kind, ResultExt};
use crate::journal::{Journal, Phase};
use crate::manifest::{Manifest, SnapshotKind};
use crate::outcome::Outcome;
use crate::process::shell_words;
use crate::restore::{self, Caller, Ctx, Rescue};
use crate::snapshot::{self, Request};
use crate::store;
use crate::targets::Target;
use command::Runner;
use decide::{decide, Decision, Why};

pub struct Options {
    pub yes: bool,
    pub dry_run: bool,
    pub no_restore: bool,
    pub command: Vec<String>,
}

/// The guarded run of `opts.command` over `targets` (the policy's). Returns guard's exit code.
pub fn guarded(cx: &Ctx, targets: &[Box<dyn Target>], runner: &dyn Runner, opts: &Options) -> Result<u8, Failure> {
    let mut begun = begin::begin(cx, opts)?;
    // The after hooks run whatever happened once guard got as far as the before hooks.
    let run_id = begun.journal.run_id.clone();
    let (result, after_hooks) =
        restore::with_hooks(cx, &run_id, || lifecycle(cx, targets, runner, opts, &mut begun.journal));
    // The run is over: the hot copies its pre-run snapshot kept beside the targets go.
    for t in targets {
        t.drop_hot(&begun.journal.run_id);
    }
    begin::finish(cx, begun, result, after_hooks)
}

/// Snapshot, command, checks, decision. Returns (exit code, outcome) or a failure.
fn lifecycle(
    cx: &Ctx,
    targets: &[Box<dyn Target>],
    runner: &dyn Runner,
    opts: &Options,
    j: &mut Journal,
) -> Result<(u8, Outcome), Failure> {
    let taken = take_snapshot(cx, targets, opts, j);
    let interrupted = match &taken {
        Err(f) => f
            .error
            .chain()
            .find_map(|c| c.downcast_ref::<crate::signals::Interrupted>())
            .map(|i| i.0),
        Ok(_) => None,
    };
    if let Some(sig) = interrupted {
        return Ok(stopped_by_signal(cx, sig, None));
    }
    let (snap, before) = taken?;
    if let Some(sig) = crate::signals::take() {
        return Ok(stopped_by_signal(cx, sig, Some(&snap.id)));
    }
    let code = run_command(cx, runner, opts, j)?;
    let checks_ok = check(cx, targets, &before, &snap, j)?;
    let file = cx.policy.file.display();
    match decide(code, checks_ok, opts.no_restore) {
        Decision::Keep => {
            cx.ui.info(&format!(
                "guard: command succeeded and every check passed; changes kept (pre-run snapshot {})",
                snap.id
            ));
            Ok((0, Outcome::Kept))
        }
        Decision::KeepFailed { why, exit } => {
            cx.ui.notice(&format!(
                "guard: {why}; --no-restore keeps the failed state. To roll back later: guard --policy {file} restore {}",
                snap.id
            ));
            Ok((exit, Outcome::FailedKept))
        }
        Decision::Restore { why, exit } => restore_after(cx, targets, &snap, why, exit, j),
    }
}

/// SIGINT/SIGTERM/SIGHUP arrived before the command started: the run stops, the command is
/// never run, guard exits 128 + the signal (130 for Ctrl-C, 143 for SIGTERM) like a shell.
/// `complete` is the pre-run snapshot when it had been completed (it is kept); otherwise the
/// partial one was discarded.
fn stopped_by_signal(cx: &Ctx, sig: i32, complete: Option<&str>) -> (u8, Outcome) {
    crate::signals::take();
    let snap = match complete {
        Some(id) => format!("snapshot {id} was complete and is kept"),
        None => "the partial snapshot was discarded".into(),
    };
    cx.ui.warn(&format!(
        "signal {sig} arrived before the command started: the command was not run and nothing was changed ({snap})"
    ));
    ((128 + sig).clamp(0, 255) as u8, Outcome::Abandoned)
}

/// Preflight, the checks' before values, and the pre-run snapshot (verified as it is taken).
fn take_snapshot(
    cx: &Ctx,
    targets: &[Box<dyn Target>],
    opts: &Options,
    j: &mut Journal,
) -> Result<(Manifest, BTreeMap<String, String>), Failure> {
    let (policy, store, ui) = (cx.policy, cx.store, cx.ui);
    j.enter(store, Phase::Snapshotting).kind(Kind::Snapshot)?;
    if let Some(sig) = crate::signals::pending() {
        return Err(Failure::new(Kind::Snapshot, crate::signals::Interrupted(sig)));
    }
    for t in targets {
        t.preflight().kind(Kind::Snapshot)?;
    }
    refuse_if_restore_blocked(targets)?;
    let before = checks::before_values(policy, targets).kind(Kind::Snapshot)?;
    ui.info(&format!("guard: snapshot of {} into {}", policy.name, store.location()));
    let req = Request {
        kind: SnapshotKind::PreRun,
        label: None,
        run_id: Some(j.run_id.clone()),
        command: Some(opts.command.clone()),
        only: None,
        allow_absent: false,
    };
    let snap = snapshot::take(policy, targets, store, req, ui).kind(Kind::Snapshot)?;
    let _ = cx.catalog.record_snapshot(&snap);
    let _ = cx.catalog.mark_verified(&snap.id, true);
    j.snapshot_id = Some(snap.id.clone());
    j.enter(store, Phase::SnapshotVerified).kind(Kind::Snapshot)?;
    ui.info(&format!(
        "guard: snapshot {} verified; running {}",
        snap.id,
        shell_words(&opts.command)
    ));
    Ok((snap, before))
}

/// A restore that would be refused (other sessions on a PostgreSQL target under
/// `sessions = "refuse"`) refuses the run now, before the command could change anything:
/// exit 69, one short line per target and the two ways out, once (F3).
fn refuse_if_restore_blocked(targets: &[Box<dyn Target>]) -> Result<(), Failure> {
    let mut blocked = Vec::new();
    for t in targets {
        if let Some(b) = t.restore_blocked().kind(Kind::Snapshot)? {
            blocked.push(format!("target {}: {}", b.target, b.summary));
        }
    }
    if blocked.is_empty() {
        return Ok(());
    }
    Err(Failure::msg(
        Kind::Snapshot,
        format!(
            "nothing was run: if the command failed, the restore would be refused ({}). Stop the app in a `before` hook, or set `sessions = \"terminate\"` on the target so that a restore ends them",
            blocked.join("; ")
        ),
    ))
}

/// Run the command; its exit code (127 when it could not even start).
fn run_command(cx: &Ctx, runner: &dyn Runner, opts: &Options, j: &mut Journal) -> Result<i32, Failure> {
    let store = cx.store;
    let log = command::open_log(store, &j.run_id).kind(Kind::Snapshot)?;
    // Nothing has run yet: a journal that cannot say so stops the run (exit 69).
    j.enter(store, Phase::CommandRunning).kind(Kind::Snapshot)?;
    let mut started = |pid: u32| {
        j.command_pid = Some(pid);
        j.command_pgid = Some(pid);
        if let Err(e) = j.save(store) {
            cx.ui.warn(&format!(
                "could not record the command's pid {pid} (its process group) in the journal: {e:#}"
            ));
        }
    };
    let code = runner.run(&opts.command, log, cx.ui, &mut started).unwrap_or_else(|e| {
        // The command could not even start: nothing changed, but say so plainly.
        cx.ui.warn(&format!("{e:#}"));
        127
    });
    j.command_exit = Some(code);
    if let Err(e) = store::publish_log(store, &j.run_id, false) {
        cx.ui
            .warn(&format!("could not upload the run log to {}: {e:#}", store.location()));
    }
    Ok(code)
}

/// Run the policy's checks against the live targets; do they all pass?
fn check(
    cx: &Ctx,
    targets: &[Box<dyn Target>],
    before: &BTreeMap<String, String>,
    snap: &Manifest,
    j: &mut Journal,
) -> Result<bool, Failure> {
    j.advance(cx.store, Phase::Checking, cx.ui).kind(Kind::Internal)?;
    let results = crate::error::no_panic("the checks", || Ok(checks::evaluate(cx.policy, targets, before, snap)))
        .unwrap_or_else(|e| {
            vec![crate::journal::CheckResult {
                name: "(checks)".into(),
                target: None,
                kind: "internal".into(),
                expect: "the checks run".into(),
                before: None,
                after: None,
                passed: false,
                detail: Some(format!("{e:#}")),
            }]
        });
    plan::print_checks(&results, cx.ui);
    let ok = results.iter().all(|r| r.passed);
    j.checks = results;
    if let Err(e) = j.save(cx.store) {
        j.unsaved = true;
        cx.ui.warn(&format!(
            "could not write the checks into the run journal: {e:#}; going on"
        ));
    }
    Ok(ok)
}

/// After a failure: rescue the failed state, restore the pre-run snapshot, and exit `exit`
/// when every target is back.
fn restore_after(
    cx: &Ctx,
    targets: &[Box<dyn Target>],
    snap: &Manifest,
    why: Why,
    exit: u8,
    j: &mut Journal,
) -> Result<(u8, Outcome), Failure> {
    cx.ui.info(&format!(
        "guard: {why}; taking a rescue snapshot of the failed state, then restoring {}",
        snap.id
    ));
    let caller = Caller::Run { why: why.to_string() };
    let rescue = Rescue::Take(format!("failed state of run {}", j.run_id));
    let done = restore::rescue_then_restore(cx, targets, snap, rescue, false, j, &caller)?;
    if let Some(f) = done.failure(cx, snap, &caller) {
        return Err(f);
    }
    let outside = match &done.rescue_dir {
        Some(d) => format!(", in {} (outside the full store)", d.display()),
        None => String::new(),
    };
    cx.ui.notice(&format!(
        "guard: {why}; restored {} from snapshot {} and verified it. The failed state is kept in rescue snapshot {}{outside}.",
        j.restored.join(", "),
        snap.id,
        done.rescue_id.as_deref().unwrap_or("-")
    ));
    Ok((exit, Outcome::Restored))
}
