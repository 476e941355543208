//! `guard recover [--keep]`: deal with everything that needs attention
//! ([`crate::attention`]), restoring the snapshot each pending item was protecting or restoring,
//! or with `--keep` accepting the state it left.
//!
//! - an interrupted run or restore is closed in its own journal (`abandoned` when it stopped
//!   before touching the targets, else `recovered` or `kept-after-interrupt`);
//! - a damaged journal is replaced by a readable one (the damaged bytes are kept beside it, as
//!   `journal.damaged`), after its run's pre-run snapshot is restored or the state accepted;
//! - failed states that stuck are closed together by a journal of the recovery itself (`"op":
//!   "recover"`, with the run ids it closes), which restores the newest one's snapshot or
//!   accepts the state (`accepted`);
//! - a failed drill of the newest snapshot is accepted by `--keep` only (restoring would not
//!   help: the targets are fine, a snapshot is not).
//!
//! A recovery that fails leaves what it was recovering pending, so `guard recover` can run again.

use serde::Serialize;

use super::{Caller, Ctx, Rescue};
use crate::attention::{self, Attention};
use crate::error::{Failure, Kind, ResultExt};
use crate::journal::{Damaged, Journal, Op, Phase};
use crate::outcome::Outcome;
use crate::store::keys;

/// One pending item closed.
#[derive(Debug, Clone, Serialize)]
pub struct Closed {
    /// The run (or drill) it was about.
    pub run_id: String,
    /// `interrupted`, `failed`, `damaged_journal` or `failed_drill`.
    pub kind: &'static str,
    pub outcome: Outcome,
    pub restored: Vec<String>,
    pub rescue_id: Option<String>,
}

fn assess(cx: &Ctx) -> Result<Attention, Failure> {
    Ok(attention::assess(cx.store, cx.catalog, cx.policy)?)
}

/// Close everything pending for the policy. Returns what was closed; an error when something
/// could not be (a failed restore, or a failed drill without `keep`).
pub fn recover(cx: &Ctx, keep: bool, yes: bool) -> Result<Vec<Closed>, Failure> {
    // A command that outlived its guard would write over what is restored: wait for it.
    for j in assess(cx)?.interrupted() {
        let alive = j.command_still_running();
        if !alive.is_empty() {
            return Err(Failure::msg(
                Kind::Locked,
                format!("{}; nothing was recovered", still_running(j, &alive)),
            ));
        }
    }
    let mut done = Vec::new();
    for j in assess(cx)?.interrupted().cloned().collect::<Vec<_>>() {
        done.push(close_interrupted(cx, j, keep, yes)?);
    }
    for (d, pre) in assess(cx)?
        .damaged()
        .map(|(d, p)| (d.clone(), p.cloned()))
        .collect::<Vec<_>>()
    {
        done.push(repair_damaged(cx, &d, pre, keep, yes)?);
    }
    let failed: Vec<Journal> = assess(cx)?.failed().cloned().collect();
    if !failed.is_empty() {
        done.extend(close_failed(cx, &failed, keep, yes)?);
    }
    if let Some(d) = assess(cx)?.failed_drill().cloned() {
        if !keep {
            return Err(Failure::msg(
                Kind::NeedsAttention,
                format!(
                    "the last drill of the newest snapshot {} failed; a restore would not help (the targets are fine, the snapshot is not). Take a new snapshot and drill it (`guard --policy {file} snapshot`, then `guard --policy {file} drill`), or accept: `guard --policy {file} recover --keep`",
                    d.snapshot_id,
                    file = cx.policy.file.display()
                ),
            ));
        }
        let mut k = recovery_journal(cx, keep);
        k.closes = vec![d.id.clone()];
        super::close(cx, &mut k, Ok((0, Outcome::Accepted)));
        cx.ui.info(&format!(
            "guard: the failed drill of snapshot {} → accepted",
            d.snapshot_id
        ));
        done.push(Closed {
            run_id: d.id,
            kind: "failed_drill",
            outcome: Outcome::Accepted,
            restored: Vec::new(),
            rescue_id: None,
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

/// The journal of a recovery: a new run id, `"op": "recover"`.
fn recovery_journal(cx: &Ctx, keep: bool) -> Journal {
    let mut command = vec!["guard".to_string(), "recover".into()];
    if keep {
        command.push("--keep".into());
    }
    let mut k = Journal::new(&crate::manifest::new_id(crate::clock::now()), cx.policy, &command);
    k.op = Op::Recover;
    k
}

/// Close an interrupted journal in place: abandoned when it stopped before touching the targets,
/// else its snapshot restored (asking first unless `yes`) or, with `keep`, the state accepted.
fn close_interrupted(cx: &Ctx, mut j: Journal, keep: bool, yes: bool) -> Result<Closed, Failure> {
    let phase = j.phase.as_str();
    let touched = matches!(
        j.phase,
        Phase::CommandRunning | Phase::Checking | Phase::Swapping | Phase::Rescuing | Phase::Restoring
    );
    let outcome = if !touched {
        Outcome::Abandoned
    } else if keep {
        Outcome::KeptAfterInterrupt
    } else {
        finish_restore(cx, &mut j, yes)?;
        Outcome::Recovered
    };
    cx.ui.info(&format!("guard: run {} ({phase}) → {outcome}", j.run_id));
    release_hot(cx, &j.run_id);
    j.outcome = Some(outcome);
    j.phase = Phase::Done;
    j.save(cx.store)?;
    let _ = cx.catalog.record_run(&j);
    Ok(Closed {
        run_id: j.run_id,
        kind: "interrupted",
        outcome,
        restored: j.restored,
        rescue_id: j.rescue_id,
    })
}

/// What interrupted run `run_id` left beside the targets (issue 17): its hot copies are
/// removed (the store holds the snapshot they copied); a failed state it set aside and no
/// rescue snapshot holds is kept and named.
fn release_hot(cx: &Ctx, run_id: &str) {
    let Ok(targets) = crate::targets::build_all(&cx.policy.targets) else {
        return;
    };
    for t in &targets {
        t.drop_hot(run_id);
        if let Some(p) = t.aside(run_id) {
            cx.ui.warn(&format!(
                "target {}: the failed state run {run_id} set aside is kept in {p}; no rescue snapshot may hold it. Delete it once you no longer need it",
                t.name()
            ));
        }
    }
}

/// Replace a damaged journal with a readable one, after restoring its run's pre-run snapshot
/// (`pre`) or, with `keep`, accepting the current state. The damaged bytes are kept beside it.
fn repair_damaged(cx: &Ctx, d: &Damaged, pre: Option<String>, keep: bool, yes: bool) -> Result<Closed, Failure> {
    if !keep && pre.is_none() {
        return Err(Failure::msg(
            Kind::NeedsAttention,
            format!(
                "the journal of run {} is damaged ({}) and guard has no snapshot of that run: there is nothing to restore. Accept the current state: guard --policy {} recover --keep",
                d.run_id,
                d.location,
                cx.policy.file.display()
            ),
        ));
    }
    let key = keys::journal_key(&d.run_id);
    if let Ok(bytes) = cx.store.get(&key) {
        cx.store
            .put(&keys::damaged_journal_key(&d.run_id), &bytes)
            .kind(Kind::Internal)?;
    }
    let command = ["(unknown: the journal was damaged)".to_string()];
    let mut j = Journal::new(&d.run_id, cx.policy, &command);
    if let Some(t) = crate::manifest::id_time(&d.run_id) {
        j.started_at = t;
    }
    j.snapshot_id = pre;
    j.message = Some(format!(
        "the journal was damaged ({}); closed by guard recover",
        d.error
    ));
    let outcome = if keep {
        Outcome::Accepted
    } else {
        j.phase = Phase::CommandRunning;
        j.touched = true;
        j.save(cx.store).kind(Kind::Internal)?;
        finish_restore(cx, &mut j, yes)?;
        Outcome::Recovered
    };
    cx.ui
        .info(&format!("guard: run {} (damaged journal) → {outcome}", d.run_id));
    j.outcome = Some(outcome);
    j.phase = Phase::Done;
    j.save(cx.store).kind(Kind::Internal)?;
    let _ = cx.catalog.record_run(&j);
    Ok(Closed {
        run_id: j.run_id,
        kind: "damaged_journal",
        outcome,
        restored: j.restored,
        rescue_id: j.rescue_id,
    })
}

/// Close the failed states that stuck (`failed`, newest first) with one recovery journal:
/// restore the newest one's snapshot, or with `keep` accept the state.
fn close_failed(cx: &Ctx, failed: &[Journal], keep: bool, yes: bool) -> Result<Vec<Closed>, Failure> {
    let newest = &failed[0];
    let mut k = recovery_journal(cx, keep);
    k.closes = failed.iter().map(|j| j.run_id.clone()).collect();
    k.snapshot_id = newest.snapshot_id.clone();
    k.only = newest.only.clone();
    let result = if keep {
        Ok((0, Outcome::Accepted))
    } else {
        k.save(cx.store).kind(Kind::Internal)?;
        finish_restore(cx, &mut k, yes).map(|()| (0, Outcome::Recovered))
    };
    super::close(cx, &mut k, result.as_ref().map(|r| *r));
    let (_, outcome) = result?;
    Ok(failed
        .iter()
        .map(|j| {
            cx.ui.info(&format!(
                "guard: run {} ({}) → {outcome}",
                j.run_id,
                j.outcome.map(|o| o.as_str()).unwrap_or("-")
            ));
            Closed {
                run_id: j.run_id.clone(),
                kind: "failed",
                outcome,
                restored: k.restored.clone(),
                rescue_id: k.rescue_id.clone(),
            }
        })
        .collect())
}

/// Put back the snapshot a journal was protecting (a run's pre-run snapshot) or restoring (a
/// restore), with a rescue snapshot of what is there now unless an earlier attempt took one.
/// A failure leaves the journal open (or failed), so `guard recover` can run again.
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
