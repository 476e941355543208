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
use std::sync::atomic::{AtomicBool, Ordering};

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
    // The run is over: the hot copies its pre-run snapshot kept beside the targets go — unless
    // they are the only copy of the pre-run state (its store artifact failed, or a restore
    // needing them failed): then they stay until `guard recover`.
    if begun.journal.pending.is_empty() {
        for t in targets {
            t.drop_hot(&begun.journal.run_id);
        }
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
    let (pending, before) = taken?;
    if let Some(sig) = crate::signals::take() {
        if pending.deferred().is_empty() {
            return Ok(stopped_by_signal(cx, sig, Some(&pending.manifest.id)));
        }
        snapshot::abandon(targets, cx.store, &pending, cx.ui);
        j.pending.clear();
        let _ = j.save(cx.store);
        return Ok(stopped_by_signal(cx, sig, None));
    }
    let snap = pending.manifest.clone();
    let cancel = AtomicBool::new(false);
    let worker_tid = std::sync::atomic::AtomicI32::new(0);
    std::thread::scope(|s| {
        let handle = (!pending.deferred().is_empty()).then(|| {
            let (policy, store, cancel, tid) = (cx.policy, cx.store, &cancel, &worker_tid);
            s.spawn(move || {
                // SAFETY: gettid has no preconditions.
                tid.store(unsafe { libc::gettid() }, Ordering::Relaxed);
                lower_priority();
                crate::error::no_panic("the deferred snapshot", || {
                    snapshot::complete(policy, targets, store, pending, cancel)
                })
            })
        });
        let mut worker = Deferred {
            handle,
            cancel: &cancel,
            tid: &worker_tid,
        };
        let r = after_snapshot(cx, targets, runner, opts, j, &snap, &before, &mut worker);
        // An early error (a journal that cannot be written): the store write stops too.
        if let Some(Ok(m)) = worker.stop() {
            stored(cx, &m, j);
        }
        if r.is_err() && !j.command_started() && !j.pending.is_empty() {
            // The command never ran: the incomplete snapshot and its hot copies are not needed.
            snapshot::discard(cx.store, &snap.id);
            j.pending.clear();
        }
        r
    })
}

/// The pre-run snapshot's deferred store artifacts, written by a worker thread while the
/// command runs (issue 17).
struct Deferred<'scope, 'a> {
    handle: Option<std::thread::ScopedJoinHandle<'scope, anyhow::Result<Manifest>>>,
    cancel: &'a AtomicBool,
    /// The worker thread's id, once it runs (0 before).
    tid: &'a std::sync::atomic::AtomicI32,
}

impl Deferred<'_, '_> {
    /// The command is done and guard now only waits for the worker: it no longer needs to
    /// yield to the command, so it gets guard's own CPU and I/O priority back (a kept run's
    /// total would otherwise wait behind any other load). Raising a nice value back needs
    /// `CAP_SYS_NICE` (root); without it the CPU priority stays lowered, the I/O one is raised.
    fn hurry(&self) {
        let tid = self.tid.load(Ordering::Relaxed);
        if tid <= 0 || self.handle.as_ref().is_none_or(|h| h.is_finished()) {
            return;
        }
        // Every thread the worker started inherited its priority (the tar or dump reader, the
        // compressors): all of this process's threads running below guard's own priority get
        // it back, not the worker's alone (the others went on at nice 10 and idle-level I/O).
        // Twice: a thread the worker started between the listing and its own raise is caught.
        for _ in 0..2 {
            raise(tid);
        }
    }

    /// Wait for the worker: `None` when there was none (the snapshot was complete before the
    /// command), else the complete snapshot or why it is not.
    fn wait(&mut self) -> Option<anyhow::Result<Manifest>> {
        let h = self.handle.take()?;
        Some(
            h.join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the deferred snapshot's worker panicked"))),
        )
    }

    /// Stop the worker (it stops within one read) and wait for it.
    fn stop(&mut self) -> Option<anyhow::Result<Manifest>> {
        self.cancel.store(true, Ordering::Relaxed);
        self.wait()
    }
}

/// Give the deferred worker thread `tid`, and every thread of this process running below
/// guard's own priority, that priority and the default best-effort I/O level back.
fn raise(tid: i32) {
    let mut tids = vec![tid];
    if let Ok(rd) = std::fs::read_dir("/proc/self/task") {
        tids.extend(rd.flatten().filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok()));
    }
    tids.sort_unstable();
    tids.dedup();
    // SAFETY: plain syscalls on this process's threads; a refusal changes nothing.
    unsafe {
        *libc::__errno_location() = 0;
        let own = libc::getpriority(libc::PRIO_PROCESS, 0);
        let own = (*libc::__errno_location() == 0).then_some(own);
        for t in tids {
            *libc::__errno_location() = 0;
            let nice = libc::getpriority(libc::PRIO_PROCESS, t as libc::id_t);
            let lowered = *libc::__errno_location() == 0 && own.is_some_and(|o| nice > o);
            if !lowered && t != tid {
                continue;
            }
            if let Some(own) = own {
                let _ = libc::setpriority(libc::PRIO_PROCESS, t as libc::id_t, own);
            }
            // ioprio_set(IOPRIO_WHO_PROCESS, t, IOPRIO_CLASS_BE << 13 | 4): the default.
            let _ = libc::syscall(libc::SYS_ioprio_set, 1, t, (2 << 13) | 4);
        }
    }
}

/// The worker runs at a lower CPU and I/O priority than the command (nice 10, best-effort I/O
/// class at its lowest level), on this thread only.
fn lower_priority() {
    // SAFETY: plain syscalls on the calling thread; failure leaves the priority as it was.
    unsafe {
        let tid = libc::gettid() as libc::id_t;
        let _ = libc::setpriority(libc::PRIO_PROCESS, tid, 10);
        // ioprio_set(IOPRIO_WHO_PROCESS, this thread, IOPRIO_CLASS_BE << 13 | 7)
        let _ = libc::syscall(libc::SYS_ioprio_set, 1, tid, (2 << 13) | 7);
    }
}

/// The deferred snapshot `m` is complete: in the catalog, and no longer pending in the journal.
fn stored(cx: &Ctx, m: &Manifest, j: &mut Journal) {
    let _ = cx.catalog.record_snapshot(m);
    let _ = cx.catalog.mark_verified(&m.id, true);
    j.pending.clear();
    if let Err(e) = j.save(cx.store) {
        j.unsaved = true;
        cx.ui.warn(&format!("could not write the run journal: {e:#}; going on"));
    }
}

/// Command, checks, decision, once the pre-run snapshot `snap` is verified (its deferred store
/// artifacts may still be in `worker`'s hands).
#[allow(clippy::too_many_arguments)]
fn after_snapshot(
    cx: &Ctx,
    targets: &[Box<dyn Target>],
    runner: &dyn Runner,
    opts: &Options,
    j: &mut Journal,
    snap: &Manifest,
    before: &BTreeMap<String, String>,
    worker: &mut Deferred,
) -> Result<(u8, Outcome), Failure> {
    let code = run_command(cx, runner, opts, j)?;
    if code != 0 && !opts.no_restore {
        // Restored whatever the checks say: the deferred store write is not needed for that,
        // and it stops now rather than after the checks, leaving the disk to the journal's
        // writes and the restore (issue 17).
        worker.cancel.store(true, Ordering::Relaxed);
    }
    let checks_ok = check(cx, targets, before, snap, j)?;
    let file = cx.policy.file.display();
    match decide(code, checks_ok, opts.no_restore) {
        Decision::Keep => {
            if worker.handle.is_some() {
                worker.hurry();
                j.advance(cx.store, Phase::Storing, cx.ui).kind(Kind::Internal)?;
                if !worker.handle.as_ref().is_some_and(|h| h.is_finished()) {
                    cx.ui.info(&format!(
                        "guard: command succeeded and every check passed; waiting for snapshot {} to be written into the store and verified",
                        snap.id
                    ));
                }
            }
            if let Some(r) = worker.wait() {
                match r {
                    Ok(m) => stored(cx, &m, j),
                    Err(e) => return Err(unstored(cx, snap, j, e)),
                }
            }
            cx.ui.info(&format!(
                "guard: command succeeded and every check passed; changes kept (pre-run snapshot {})",
                snap.id
            ));
            Ok((0, Outcome::Kept))
        }
        Decision::KeepFailed { why, exit } => {
            // The failed state is kept, so the snapshot that undoes it must be complete.
            worker.hurry();
            if let Some(r) = worker.wait() {
                match r {
                    Ok(m) => stored(cx, &m, j),
                    Err(e) => cx.ui.warn(&format!(
                        "the pre-run snapshot {} could not be written into the store ({e:#}); its state is kept in the hot copy beside {}, which `guard --policy {file} recover` renames back",
                        snap.id,
                        j.pending.iter().filter(|r| crate::targets::is_deferred(r)).map(|r| r.name.as_str()).collect::<Vec<_>>().join(", ")
                    )),
                }
            }
            cx.ui.notice(&format!(
                "guard: {why}; --no-restore keeps the failed state. To roll back later: guard --policy {file} restore {}",
                snap.id
            ));
            Ok((exit, Outcome::FailedKept))
        }
        Decision::Restore { why, exit } => {
            // Written already: the complete snapshot is what is restored.
            if worker.handle.as_ref().is_some_and(|h| h.is_finished()) {
                if let Some(Ok(m)) = worker.wait() {
                    stored(cx, &m, j);
                    return restore_after(cx, targets, &m, why, exit, j, false);
                }
            }
            // Otherwise the restore needs no store artifact of a target with a hot copy: the
            // write is told to stop, and the restore does not wait for it (it runs at a lower
            // priority).
            let unstored = !j.pending.is_empty();
            worker.cancel.store(true, Ordering::Relaxed);
            let r = restore_after(cx, targets, snap, why, exit, j, unstored);
            match worker.wait() {
                // It finished before it saw the stop: a complete snapshot of the pre-run state.
                Some(Ok(m)) => stored(cx, &m, j),
                _ if r.is_ok() && unstored => {
                    // Every target is back to the pre-run state; the snapshot that never reached
                    // the store is not needed (the rescue snapshot holds the failed state).
                    snapshot::discard(cx.store, &snap.id);
                    j.pending.clear();
                    let _ = j.save(cx.store);
                }
                _ => {}
            }
            r
        }
    }
}

/// The command and its checks passed and its changes are kept, but the pre-run snapshot never
/// reached the store: exit 83, the hot copies kept (the journal names them) until recover.
fn unstored(cx: &Ctx, snap: &Manifest, j: &Journal, e: anyhow::Error) -> Failure {
    let file = cx.policy.file.display();
    let held: Vec<&str> = j
        .pending
        .iter()
        .filter(|r| crate::targets::is_deferred(r))
        .map(|r| r.name.as_str())
        .collect();
    Failure::msg(
        Kind::Unstored,
        format!(
            "the command succeeded and every check passed, and its changes are kept; but the pre-run snapshot {} could not be written into the store ({e:#}), so it is not complete. The pre-run state of {} is kept in its hot copy (.NAME.guard-hot-{}, or a guard_hot_ database) until you choose: `guard --policy {file} recover --keep` keeps the changes and removes it; `guard --policy {file} recover` puts it back, undoing the command. Until then a new run is refused (exit 82)",
            snap.id,
            held.join(", "),
            j.run_id
        ),
    )
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
) -> Result<(snapshot::Pending, BTreeMap<String, String>), Failure> {
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
    let mut pending = snapshot::begin(policy, targets, store, req, ui).kind(Kind::Snapshot)?;
    let deferred = pending.deferred();
    if deferred.is_empty() {
        let cancel = AtomicBool::new(false);
        let taken = snapshot::Pending {
            manifest: pending.manifest.clone(),
        };
        let m = snapshot::complete(policy, targets, store, pending, &cancel);
        let m = m
            .inspect_err(|_| snapshot::abandon(targets, store, &taken, ui))
            .kind(Kind::Snapshot)?;
        let _ = cx.catalog.record_snapshot(&m);
        let _ = cx.catalog.mark_verified(&m.id, true);
        pending = snapshot::Pending { manifest: m };
    } else {
        // The hot copies are the verified snapshot until the store holds it: the journal
        // records them (with their identity) before the command may start. No record's file
        // listing goes into it (every journal write would carry it: 22 MB for a tree of 100k
        // files): a deferred record is restored by renaming its copy in, proven by that
        // identity; one stored already has the listing in its artifact, whose SHA-256 the
        // record holds ([`crate::journal::Journal::pending_manifest`] reads it back).
        j.pending = pending
            .manifest
            .targets
            .iter()
            .map(crate::journal::without_listing)
            .collect();
    }
    j.snapshot_id = Some(pending.manifest.id.clone());
    if let Err(e) = j.enter(store, Phase::SnapshotVerified) {
        snapshot::abandon(targets, store, &pending, ui);
        return Err(Failure::new(Kind::Snapshot, e));
    }
    ui.info(&format!(
        "guard: snapshot {} verified{}; running {}",
        pending.manifest.id,
        if deferred.is_empty() {
            String::new()
        } else {
            let held: Vec<String> = pending
                .manifest
                .targets
                .iter()
                .filter(|r| deferred.contains(&r.name))
                .map(|r| format!("the {} of {}", crate::targets::held_in(r), r.name))
                .collect();
            format!(" ({}; written into the store while the command runs)", held.join(", "))
        },
        shell_words(&opts.command)
    ));
    Ok((pending, before))
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
    // No check ran: the phase already recorded says all there is (one fsynced write less
    // between a failed command and its restore).
    if results.is_empty() {
        return Ok(ok);
    }
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
    unstored: bool,
) -> Result<(u8, Outcome), Failure> {
    cx.ui.info(&format!(
        "guard: {why}; restoring {} and keeping the failed state in a rescue snapshot",
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
    let from = if unstored {
        format!(
            "from the hot copy of snapshot {} (its store artifact was still being written)",
            snap.id
        )
    } else {
        format!("from snapshot {}", snap.id)
    };
    cx.ui.notice(&format!(
        "guard: {why}; restored {} {from} and verified it. The failed state is kept in rescue snapshot {}{outside}.",
        j.restored.join(", "),
        done.rescue_id.as_deref().unwrap_or("-")
    ));
    Ok((exit, Outcome::Restored))
}
