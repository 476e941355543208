//! The two ends of a guarded run: what is checked before anything is touched (the request, the
//! lock, earlier runs, the confirmation) and how the run is closed (journal, catalog, `--json`).

use serde_json::json;

use super::Options;
use crate::error::{Failure, Kind, ResultExt};
use crate::journal::Journal;
use crate::lock::Lock;
use crate::outcome::Outcome;
use crate::policy::Policy;
use crate::process::{command_exists, shell_words};
use crate::restore::Ctx;
use crate::store::keys;
use crate::targets::{self, Target};
use crate::ui;

/// A run that holds the lock and has a journal.
pub struct Begun {
    pub journal: Journal,
    lock: Lock,
}

/// Check the request itself, touching nothing: a command to run, targets to protect, and each
/// target buildable from the policy.
pub fn targets(policy: &Policy, opts: &Options) -> Result<Vec<Box<dyn Target>>, Failure> {
    if opts.command.is_empty() {
        return Err(Failure::msg(
            Kind::Usage,
            "nothing to run: use `guard [--policy P] -- COMMAND [ARGS...]`",
        ));
    }
    targets::build_all(&policy.targets).kind(Kind::Usage)
}

/// What must hold before the store is opened: the command exists and there is something to
/// protect.
pub fn preconditions(policy: &Policy, opts: &Options) -> Result<(), Failure> {
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
    Ok(())
}

/// Take the lock, refuse while an earlier run needs attention (exit 82), ask for confirmation, and write
/// the journal's first phase. Signals are caught from here on (forwarded to the command,
/// deferred during a restore).
pub fn begin(cx: &Ctx, opts: &Options) -> Result<Begun, Failure> {
    let (policy, store, ui) = (cx.policy, cx.store, cx.ui);
    let run_id = crate::manifest::new_id(crate::clock::now());
    let cmdline = shell_words(&opts.command);
    // A store that cannot be written (read-only, full, permissions) is a store the snapshot
    // cannot go into: exit 69 with the path, nothing run.
    let waiting = |who: &str| ui.info(&format!("guard: {who}; waiting for it (--wait)"));
    let lock = crate::lock::acquire_waiting(store, &policy.name, &cmdline, Some(&run_id), ui.lock_wait, waiting);
    let lock = lock.map_err(|f| match f.kind {
        Kind::Internal => Failure::new(
            Kind::Snapshot,
            f.error.context(format!(
                "the store {} cannot be written; nothing was run",
                store.location()
            )),
        ),
        _ => f,
    })?;
    if let Some(h) = &lock.taken_over {
        ui.warn(&format!(
            "took over the lock of a guard that died ({h}); `guard status` shows what it left behind"
        ));
    }
    refuse_if_needs_attention(cx)?;
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
    let mut journal = Journal::new(&run_id, policy, &opts.command);
    journal.save(store).kind(Kind::Snapshot)?;
    crate::signals::install();
    Ok(Begun { journal, lock })
}

/// Refuse to start while an earlier run of this policy needs attention: interrupted, a failed
/// state kept, a damaged journal, a failed drill of the newest snapshot (exit 82).
fn refuse_if_needs_attention(cx: &Ctx) -> Result<(), Failure> {
    let att = crate::attention::assess(cx.store, cx.catalog, cx.policy).kind(Kind::Internal)?;
    match att.items.first() {
        None => Ok(()),
        Some(item) => Err(Failure::msg(
            Kind::NeedsAttention,
            item.refusal(&cx.policy.name, &cx.policy.file.display().to_string()),
        )),
    }
}

/// Close the run: the journal's last phase with the outcome, the catalog, the lock, and the
/// `--json` document. Returns guard's exit code.
pub fn finish(
    cx: &Ctx,
    begun: Begun,
    result: Result<(u8, Outcome), Failure>,
    after_hooks: Option<String>,
) -> Result<u8, Failure> {
    let Begun { journal: mut j, lock } = begun;
    crate::restore::close(cx, &mut j, result.as_ref().map(|r| *r));
    drop(lock);
    if cx.ui.json {
        ui::print_json(&json!({
            "run_id": j.run_id,
            "policy": j.policy,
            "outcome": j.outcome,
            "exit_code": j.exit_code,
            "command": j.command,
            "command_exit": j.command_exit,
            "snapshot_id": j.snapshot_id,
            "rescue_id": j.rescue_id,
            "checks": j.checks,
            "restored": j.restored,
            "error": j.message,
            "log": format!("{}/{}", cx.store.location(), keys::log_key(&j.run_id)),
            "after_hooks_failed": after_hooks,
        }));
    }
    match result {
        Ok((code, _)) => Ok(code),
        Err(f) if cx.ui.json => Err(f.reported()),
        Err(f) => Err(f),
    }
}
