//! `guard recover [--keep]`: close interrupted runs (and restores), restoring the snapshot each
//! was protecting or restoring unless `--keep`.
//!
//! A run that stopped before touching the targets is closed `abandoned`; one that may have
//! changed them is `recovered` (its snapshot put back) or, with `--keep`, `kept-after-interrupt`.
//! A recovery that fails leaves the journal open, so `guard recover` can run again.

use serde::Serialize;

use super::{Caller, Ctx, Rescue};
use crate::error::{Failure, Kind, ResultExt};
use crate::journal::{Journal, Phase};
use crate::outcome::Outcome;

/// One interrupted run closed.
#[derive(Debug, Clone, Serialize)]
pub struct Closed {
    pub run_id: String,
    pub outcome: Outcome,
    pub restored: Vec<String>,
    pub rescue_id: Option<String>,
}

/// Close the policy's interrupted runs. Returns what was closed.
pub fn recover(cx: &Ctx, keep: bool, yes: bool) -> Result<Vec<Closed>, Failure> {
    let interrupted = crate::journal::interrupted_runs(cx.store, &cx.policy.name)?;
    // A command that outlived its guard would write over what is restored: wait for it.
    for j in &interrupted {
        let alive = j.command_still_running();
        if !alive.is_empty() {
            return Err(Failure::msg(
                Kind::Locked,
                format!("{}; nothing was recovered", still_running(j, &alive)),
            ));
        }
    }
    let mut done = Vec::new();
    for mut j in interrupted {
        let touched = matches!(
            j.phase,
            Phase::CommandRunning | Phase::Checking | Phase::Rescuing | Phase::Restoring
        );
        let outcome = if !touched {
            Outcome::Abandoned
        } else if keep {
            Outcome::KeptAfterInterrupt
        } else {
            finish_restore(cx, &mut j, yes)?;
            Outcome::Recovered
        };
        cx.ui
            .info(&format!("guard: run {} ({}) → {outcome}", j.run_id, j.phase.as_str()));
        j.outcome = Some(outcome);
        j.phase = Phase::Done;
        j.save(cx.store)?;
        let _ = cx.catalog.record_run(&j);
        done.push(Closed {
            run_id: j.run_id.clone(),
            outcome,
            restored: j.restored.clone(),
            rescue_id: j.rescue_id.clone(),
        });
    }
    Ok(done)
}

/// The words for an interrupted run whose command group still has live processes.
pub fn still_running(j: &Journal, alive: &[u32]) -> String {
    let pgid = j.command_pgid.or(j.command_pid).unwrap_or(0);
    format!(
        "STILL RUNNING: the command of run {} (process group {pgid}, pids {}) outlived its guard and may still change the targets; recover only once it has stopped (wait for it, or stop it: kill -TERM -- -{pgid})",
        j.run_id,
        alive.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(" ")
    )
}

/// Put back the snapshot an interrupted journal was protecting (a run's pre-run snapshot) or
/// restoring (`guard restore`), with a rescue snapshot of what is there now unless an earlier
/// attempt took one. A failure leaves the journal open, so `guard recover` can run again.
fn finish_restore(cx: &Ctx, j: &mut Journal, yes: bool) -> Result<(), Failure> {
    let snap_id = j.snapshot_id.clone().ok_or_else(|| {
        Failure::msg(
            Kind::RestoreFailed,
            format!("run {} has no pre-run snapshot to restore", j.run_id),
        )
    })?;
    let m = cx.catalog.load_manifest(cx.store, &snap_id).kind(Kind::Corrupt)?;
    let m = super::restrict(&m, &j.only);
    if !yes
        && !cx.ui.confirm(&format!(
            "guard: restore {} (targets: {}) from snapshot {snap_id}?",
            cx.policy.name,
            m.targets.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", ")
        ))
    {
        return Err(Failure::msg(
            Kind::Declined,
            "not confirmed (pass --yes); nothing was changed",
        ));
    }
    let targets = super::targets_for(cx.policy, &m)?;
    let rescue = match (&j.phase, &j.rescue_id) {
        (Phase::Restoring, Some(r)) => Rescue::Taken(r.clone()),
        _ => Rescue::Take(format!("state found by recover of run {}", j.run_id)),
    };
    let r = super::rescue_then_restore(cx, &targets, &m, rescue, true, j, &Caller::Recover)?;
    match r.failure(cx, &m, &Caller::Recover) {
        Some(f) => Err(f),
        None => Ok(()),
    }
}
