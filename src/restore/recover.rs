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
use crate::manifest::Manifest;
use crate::outcome::Outcome;
use crate::policy::Policy;
use crate::store::keys;
use crate::targets::Target;

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

/// The live targets of a snapshot's records: the policy's ([`super::targets_for`]), or fakes in
/// the unit tests.
type Live<'a> = &'a dyn Fn(&Policy, &Manifest) -> Result<Vec<Box<dyn Target>>, Failure>;

/// Close everything pending for the policy. Returns what was closed; an error when something
/// could not be (a failed restore, or a failed drill without `keep`).
pub fn recover(cx: &Ctx, keep: bool, yes: bool) -> Result<Vec<Closed>, Failure> {
    recover_with(cx, keep, yes, &super::targets_for)
}

fn recover_with(cx: &Ctx, keep: bool, yes: bool, live: Live) -> Result<Vec<Closed>, Failure> {
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
        done.push(close_interrupted(cx, j, keep, yes, live)?);
    }
    for (d, pre) in assess(cx)?
        .damaged()
        .map(|(d, p)| (d.clone(), p.cloned()))
        .collect::<Vec<_>>()
    {
        done.push(repair_damaged(cx, &d, pre, keep, yes, live)?);
    }
    let failed: Vec<Journal> = assess(cx)?.failed().cloned().collect();
    if !failed.is_empty() {
        done.extend(close_failed(cx, &failed, keep, yes, live)?);
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
fn close_interrupted(cx: &Ctx, mut j: Journal, keep: bool, yes: bool, live: Live) -> Result<Closed, Failure> {
    let phase = j.phase.as_str();
    let touched = matches!(
        j.phase,
        Phase::CommandRunning | Phase::Checking | Phase::Storing | Phase::Swapping | Phase::Rescuing | Phase::Restoring
    );
    let outcome = if !touched {
        Outcome::Abandoned
    } else if keep {
        Outcome::KeptAfterInterrupt
    } else {
        finish_restore(cx, &mut j, yes, live)?;
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
fn repair_damaged(
    cx: &Ctx,
    d: &Damaged,
    pre: Option<String>,
    keep: bool,
    yes: bool,
    live: Live,
) -> Result<Closed, Failure> {
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
        finish_restore(cx, &mut j, yes, live)?;
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
fn close_failed(cx: &Ctx, failed: &[Journal], keep: bool, yes: bool, live: Live) -> Result<Vec<Closed>, Failure> {
    let newest = &failed[0];
    let mut k = recovery_journal(cx, keep);
    k.closes = failed.iter().map(|j| j.run_id.clone()).collect();
    k.snapshot_id = newest.snapshot_id.clone();
    k.only = newest.only.clone();
    if !newest.pending.is_empty() {
        k.pending = newest.pending.clone();
        k.hot_of = Some(newest.run_id.clone());
    }
    // Its failed run's restore made hot copies late (issue 17): the live tree may be one.
    if !newest.late_hot.is_empty() {
        k.late_hot = newest.late_hot.clone();
        k.hot_of = Some(newest.run_id.clone());
    }
    let result = if keep {
        Ok((0, Outcome::Accepted))
    } else {
        k.save(cx.store).kind(Kind::Internal)?;
        finish_restore(cx, &mut k, yes, live).map(|()| (0, Outcome::Recovered))
    };
    super::close(cx, &mut k, result.as_ref().map(|r| *r));
    let (_, outcome) = result?;
    for j in failed {
        release_hot(cx, &j.run_id);
    }
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
fn finish_restore(cx: &Ctx, j: &mut Journal, yes: bool, live: Live) -> Result<(), Failure> {
    let snap_id = j.snapshot_id.clone().ok_or_else(|| {
        Failure::msg(
            Kind::RestoreFailed,
            format!("run {} has no pre-run snapshot to restore", j.run_id),
        )
    })?;
    // A run killed (or whose store write failed) while its snapshot's store artifact was still
    // being written (issue 17) left no manifest: its journal's records and hot copies are it.
    let m = match cx.catalog.load_manifest(cx.store, &snap_id) {
        Ok(m) => m,
        Err(e) => match j.pending_manifest(cx.policy, cx.store).kind(Kind::Corrupt)? {
            Some(m) => {
                cx.ui.info(&format!(
                    "guard: snapshot {snap_id} never reached the store ({e:#}); restoring from the hot copies run {} kept",
                    j.hot_of.as_deref().unwrap_or(&j.run_id)
                ));
                m
            }
            None => return Err(e).kind(Kind::Corrupt),
        },
    };
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
    let targets = live(cx.policy, &m)?;
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::catalog::Catalog;
    use crate::manifest::SnapshotKind;
    use crate::snapshot::{self, Request};
    use crate::testing::{self, FakeHooks, FakeTarget, MemStore, RestoreAs, World};

    const POLICY: &str = "name = \"unit\"\nstore = \"store\"\n[[target]]\nname = \"app\"\nkind = \"sqlite\"\npath = \"app.db\"\n[hooks]\nbefore = [\"stop\"]\nafter = [\"start\"]\n";
    const RUN: &str = "20261201T000000.000Z-0001";

    struct Recovered {
        result: Result<Vec<Closed>, (Kind, String)>,
        events: Vec<String>,
        world: Arc<World>,
        /// Every journal in the store afterwards, by run id.
        journals: Vec<Journal>,
    }

    /// A guarded run took its pre-run snapshot of `app` ("v1"), its command changed it to
    /// "v2", and `leave` says how its journal was left; then `guard recover --yes` (`keep`),
    /// `app` restoring as `restore_as` and the hooks in `fail_hooks` failing.
    fn recover_after(
        leave: impl FnOnce(&mut Journal),
        keep: bool,
        restore_as: RestoreAs,
        fail_hooks: &[&str],
    ) -> Recovered {
        let (policy, _dir) = testing::policy(POLICY);
        let world = World::new(&[("app", "v1")]);
        let store = MemStore::new();
        let catalog = Catalog::open(&store).unwrap();
        let ui = testing::ui();
        let req = Request {
            kind: SnapshotKind::PreRun,
            label: None,
            run_id: Some(RUN.into()),
            command: Some(vec!["migrate".into()]),
            only: None,
            allow_absent: false,
        };
        let taken: Vec<Box<dyn Target>> = vec![Box::new(FakeTarget::new(&policy, "app", &world))];
        let m = snapshot::take(&policy, &taken, &store, req, &ui).unwrap();
        catalog.record_snapshot(&m).unwrap();
        world.set("app", "v2");
        let mut j = Journal::new(RUN, &policy, &["migrate".into()]);
        j.snapshot_id = Some(m.id.clone());
        j.phase = Phase::CommandRunning;
        j.touched = true;
        leave(&mut j);
        j.save(&store).unwrap();
        let _ = catalog.record_run(&j);
        world.events.lock().unwrap().clear();
        let hooks = FakeHooks {
            world: Arc::clone(&world),
            fail: fail_hooks.iter().map(|h| h.to_string()).collect(),
        };
        let cx = Ctx {
            policy: &policy,
            store: &store,
            catalog: &catalog,
            hooks: &hooks,
            ui: &ui,
        };
        let live = |p: &Policy, _m: &Manifest| -> Result<Vec<Box<dyn Target>>, Failure> {
            let mut t = FakeTarget::new(p, "app", &world);
            t.restore_as = restore_as;
            Ok(vec![Box::new(t)])
        };
        let result = recover_with(&cx, keep, true, &live).map_err(|f| (f.kind, format!("{:#}", f.error)));
        Recovered {
            result,
            events: world.events(),
            journals: crate::journal::read_all(&store).unwrap().ok,
            world,
        }
    }

    fn journal<'a>(r: &'a Recovered, run_id: &str) -> &'a Journal {
        r.journals.iter().find(|j| j.run_id == run_id).expect("journal")
    }

    #[test]
    fn an_interrupted_run_is_restored_under_the_hooks_with_a_rescue_snapshot() {
        let r = recover_after(|_| {}, false, RestoreAs::Done, &[]);
        let closed = r.result.as_ref().unwrap();
        assert_eq!(closed.len(), 1);
        assert_eq!((closed[0].kind, closed[0].outcome), ("interrupted", Outcome::Recovered));
        assert!(closed[0].rescue_id.is_some(), "the state it replaced is kept");
        assert_eq!(
            r.events,
            [
                "before hook stop",
                "snapshot app",
                "restore app",
                "verify app",
                "after hook start"
            ]
        );
        assert_eq!(r.world.get("app"), "v1");
        let j = journal(&r, RUN);
        assert_eq!((j.phase, j.outcome), (Phase::Done, Some(Outcome::Recovered)));
        assert_eq!(j.restored, ["app"]);
    }

    #[test]
    fn keep_accepts_an_interrupted_run_and_touches_nothing() {
        let r = recover_after(|_| {}, true, RestoreAs::Done, &[]);
        assert_eq!(r.result.as_ref().unwrap()[0].outcome, Outcome::KeptAfterInterrupt);
        assert!(r.events.is_empty(), "{:?}", r.events);
        assert_eq!(r.world.get("app"), "v2");
    }

    #[test]
    fn a_run_interrupted_before_its_command_is_abandoned_and_nothing_restored() {
        let r = recover_after(
            |j| {
                j.phase = Phase::Snapshotting;
                j.touched = false;
            },
            false,
            RestoreAs::Done,
            &[],
        );
        assert_eq!(r.result.as_ref().unwrap()[0].outcome, Outcome::Abandoned);
        assert!(r.events.is_empty(), "{:?}", r.events);
        assert_eq!(r.world.get("app"), "v2");
    }

    #[test]
    fn a_failed_state_kept_is_closed_by_a_recovery_journal_that_restores_it() {
        let r = recover_after(
            |j| {
                j.phase = Phase::Done;
                j.outcome = Some(Outcome::FailedKept);
                j.exit_code = Some(81);
                j.command_exit = Some(3);
            },
            false,
            RestoreAs::Done,
            &[],
        );
        let closed = r.result.as_ref().unwrap();
        assert_eq!((closed[0].run_id.as_str(), closed[0].kind), (RUN, "failed"));
        assert_eq!(closed[0].outcome, Outcome::Recovered);
        assert_eq!(r.world.get("app"), "v1");
        let k = r
            .journals
            .iter()
            .find(|j| j.op == Op::Recover)
            .expect("a recovery journal");
        assert_eq!(k.closes, [RUN]);
        assert_eq!(k.outcome, Some(Outcome::Recovered));
        assert_eq!(
            journal(&r, RUN).outcome,
            Some(Outcome::FailedKept),
            "the failed run's own journal stays as it ended"
        );
    }

    /// Drift fixed in issue 18: recover said a manual step (Turso `promote`) was a failure.
    #[test]
    fn a_manual_step_is_reported_as_one_and_names_recover_keep() {
        let r = recover_after(|_| {}, false, RestoreAs::Manual, &[]);
        let (kind, msg) = r.result.as_ref().unwrap_err();
        assert_eq!(*kind, Kind::RestoreFailed);
        assert!(msg.contains("is not automatic for app"), "{msg}");
        assert!(msg.contains("recover --keep"), "{msg}");
        assert!(!msg.contains("RESTORE FAILED"), "{msg}");
        assert_ne!(journal(&r, RUN).phase, Phase::Done, "still pending until --keep");
    }

    #[test]
    fn a_failed_restore_leaves_the_run_pending_and_says_to_retry_recover() {
        let r = recover_after(|_| {}, false, RestoreAs::Fails, &[]);
        let (kind, msg) = r.result.as_ref().unwrap_err();
        assert_eq!(*kind, Kind::RestoreFailed);
        assert!(msg.contains("RESTORE FAILED for app"), "{msg}");
        assert!(msg.ends_with("recover"), "{msg}");
        assert_eq!(r.events.last().map(String::as_str), Some("after hook start"));
        assert_ne!(journal(&r, RUN).phase, Phase::Done);
    }

    /// Drift fixed in issue 18: recover ignored a failing `after` hook; it is warned about and
    /// changes no outcome, as in the run and `guard restore`.
    #[test]
    fn a_failing_after_hook_changes_no_outcome() {
        let r = recover_after(|_| {}, false, RestoreAs::Done, &["start"]);
        assert_eq!(r.result.as_ref().unwrap()[0].outcome, Outcome::Recovered);
        assert_eq!(r.world.get("app"), "v1");
    }

    #[test]
    fn a_failing_before_hook_restores_nothing_and_still_runs_the_after_hooks() {
        let r = recover_after(|_| {}, false, RestoreAs::Done, &["stop"]);
        let (kind, _) = r.result.as_ref().unwrap_err();
        assert_eq!(*kind, Kind::Hook);
        assert_eq!(r.events, ["before hook stop", "after hook start"]);
        assert_eq!(r.world.get("app"), "v2");
        assert_ne!(journal(&r, RUN).phase, Phase::Done);
    }
}
