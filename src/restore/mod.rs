//! Putting targets back to a snapshot's state: the one protocol the guarded run, `guard restore`
//! and `guard recover` share ([`rescue_then_restore`]).
//!
//! 1. verify the snapshot before touching anything: every artifact has its recorded size and
//!    SHA-256 (each target's restore decompresses its artifacts and compares the content
//!    checksum again before it commits). A guarded run's targets with a hot copy are restored by
//!    rename first, proven by the copy's identity, and their artifacts checked after (a damage
//!    is reported; the restore did not need them); one whose copy cannot be used is checked
//!    before it is restored from the store. A guarded run's `dir` trees without a hot copy get
//!    one made late ([`hot::stage_late`]: the snapshot unpacked beside them, every file checked)
//!    and are then restored by rename the same way;
//! 2. the `before` hooks (`guard restore`, `guard recover`; a guarded run ran them already);
//! 3. a rescue snapshot of the state about to be replaced;
//! 4. the restore, with SIGINT/SIGTERM deferred until every target is consistent; each target
//!    restores atomically on its own and is then compared with what the snapshot recorded
//!    (content checksums and fingerprints), so "restored" means "proven equal";
//! 5. the `after` hooks, whatever happened once the `before` hooks had started.
//!
//! The journal records each step before it starts. [`Restoration::failure`] classifies the
//! result in one set of words, each naming the next command to run.
//!
//! Files: this one holds the protocol ([`rescue_then_restore`], [`requested`] for `guard
//! restore`, [`with_hooks`]) and its types; `hot.rs` restores by rename what a run kept a hot
//! copy of; `rescue.rs` takes the rescue snapshot (outside a full store if need be) and words
//! its failures; `apply.rs` restores and verifies each target; `report.rs` words the result;
//! [`recover`] is `guard recover`.

mod apply;
mod hot;
pub mod recover;
mod report;
mod rescue;

pub use apply::{restore_all, restore_deferring_signals};

use serde::Serialize;

use crate::catalog::Catalog;
use crate::error::{Failure, Kind, ResultExt};
use crate::journal::{Journal, Op, Phase};
use crate::manifest::Manifest;
use crate::outcome::Outcome;
use crate::policy::Policy;
use crate::process::{HookRun, Hooks};
use crate::snapshot::{self, Depth};
use crate::store::Store;
use crate::targets::{target_for, Target};
use crate::ui::Ui;

/// What a restore needs around it.
pub struct Ctx<'a> {
    pub policy: &'a Policy,
    pub store: &'a dyn Store,
    pub catalog: &'a Catalog,
    pub hooks: &'a dyn Hooks,
    pub ui: &'a Ui,
}

/// How one target's restore went.
#[derive(Debug, Clone, Serialize)]
pub struct TargetRestore {
    pub target: String,
    pub ok: bool,
    pub seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The target cannot be restored in place by guard; `error` holds what a person must do.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub manual: bool,
    /// Refused because other sessions hold the database ([`crate::targets::SessionsBlock`]).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub sessions: bool,
}

impl TargetRestore {
    /// A target that needed no restore from the store (renamed in, found in place: `error`
    /// `None`), or could not get one (`error` says why).
    pub(crate) fn instant(target: &str, error: Option<String>) -> TargetRestore {
        TargetRestore {
            target: target.to_string(),
            ok: error.is_none(),
            seconds: 0.0,
            error,
            manual: false,
            sessions: false,
        }
    }
}

/// The rescue snapshot of the state a restore replaces.
#[derive(Debug, Clone)]
pub enum Rescue {
    /// Take one, with this label.
    Take(String),
    /// `--no-rescue`: none.
    Skip,
    /// An earlier, interrupted attempt took this one already.
    Taken(String),
}

/// Who restores: it decides the words of a failure, and the command each one names.
#[derive(Debug, Clone)]
pub enum Caller {
    /// The guarded run, after the command or a check failed (`why`).
    Run { why: String },
    /// `guard restore`.
    Restore,
    /// `guard recover`.
    Recover,
}

/// What a restore did.
#[derive(Debug, Clone, Default)]
pub struct Restoration {
    pub rescue_id: Option<String>,
    /// The rescue snapshot went outside the store, into this directory (the store was full).
    pub rescue_dir: Option<std::path::PathBuf>,
    pub targets: Vec<TargetRestore>,
    /// The `after` hooks failed (already warned about).
    pub after_hooks: Option<String>,
}

/// Close a journal: its outcome, exit code and error, phase `done`, saved and indexed. A journal
/// that cannot be written is warned about (the work is done either way).
pub fn close(cx: &Ctx, j: &mut Journal, result: Result<(u8, Outcome), &Failure>) {
    let (code, outcome) = match result {
        Ok((code, outcome)) => (code, outcome),
        Err(f) => (f.kind.exit_code(), Outcome::Failed(f.kind)),
    };
    j.outcome = Some(outcome);
    j.exit_code = Some(code);
    if let Err(f) = result {
        j.message = Some(crate::secrets::redact(&format!("{:#}", f.error)));
    }
    j.phase = Phase::Done;
    if let Err(e) = j.save(cx.store) {
        cx.ui.warn(&format!(
            "could not write the end of the journal of {} ({e:#}): until it is closed, `guard status` shows it as interrupted. What really happened: outcome {outcome}, exit {code} (said above). Once the store has room: `guard --policy {} recover --keep` closes it if the targets are as this run left them, `guard --policy {} recover` restores its snapshot",
            j.run_id,
            cx.policy.file.display(),
            cx.policy.file.display()
        ));
    }
    let _ = cx.catalog.record_run(j);
}

/// `m` with only the targets named in `only` (all of them when `only` is empty).
pub fn restrict(m: &Manifest, only: &[String]) -> Manifest {
    Manifest {
        targets: m
            .targets
            .iter()
            .filter(|t| only.is_empty() || only.contains(&t.name))
            .cloned()
            .collect(),
        ..m.clone()
    }
}

/// The live target of every record of `m`: the policy's target of that name, kind and source
/// ([`target_for`]); a record the policy does not name as it was refuses the whole restore,
/// naming it, before anything is touched.
pub fn targets_for(policy: &Policy, m: &Manifest) -> Result<Vec<Box<dyn Target>>, Failure> {
    // With a store key, only a manifest it authenticates is restored (exit 65 otherwise).
    m.authentic()?;
    if m.policy != policy.name {
        return Err(Failure::msg(
            Kind::Usage,
            format!(
                "snapshot {} was taken by policy {}, not {}; guard restores a snapshot only through the policy that took it",
                m.id, m.policy, policy.name
            ),
        ));
    }
    m.targets
        .iter()
        .map(|rec| target_for(&policy.targets, rec))
        .collect::<anyhow::Result<_>>()
        .kind(Kind::Usage)
}

/// Verify `m`, take a rescue snapshot of `targets`, and restore `m` over them, with the policy's
/// hooks around the rescue and the restore when `hooks` is set. `targets` are the live targets
/// of `m`'s records (by name). Phases go into `j`. An error means nothing was restored: the
/// snapshot failed verification, a `before` hook failed, or the rescue snapshot could not be
/// taken.
pub fn rescue_then_restore(
    cx: &Ctx,
    targets: &[Box<dyn Target>],
    m: &Manifest,
    rescue: Rescue,
    hooks: bool,
    j: &mut Journal,
    caller: &Caller,
) -> Result<Restoration, Failure> {
    // The targets a guarded run will restore by renaming their hot copy in are proven by the
    // copy's identity, not by the store's artifact: the checksum pass over their artifacts,
    // which grows with the data, runs after the swap ([`rescue_and_restore`]), not before it.
    // A guarded run's dir targets without a hot copy get one made late: the snapshot unpacked
    // beside them and checked, then renamed in like a hot copy; the rescue follows.
    if matches!((caller, &rescue), (Caller::Run { .. }, Rescue::Take(_))) {
        hot::stage_late(cx, targets, m, j, caller)?;
    }
    let late = hot::with_late(m, j);
    let m = late.as_ref().unwrap_or(m);
    let swappable = hot::hot_swappable(m, &rescue, j);
    let first = Manifest {
        targets: m
            .targets
            .iter()
            .filter(|r| !swappable.contains(&r.name))
            .cloned()
            .collect(),
        ..m.clone()
    };
    snapshot::verify_artifacts(cx.store, &first, Depth::Checksums)
        .and_then(|()| crate::artifact::check_decryptable(cx.store, m))
        .map_err(|e| unverified_failure(caller, m, e))?;
    if !hooks {
        return rescue_and_restore(cx, targets, m, rescue, j, caller);
    }
    let run_id = j.run_id.clone();
    let (result, after) = with_hooks(cx, &run_id, || rescue_and_restore(cx, targets, m, rescue, j, caller));
    result.map(|r| Restoration {
        after_hooks: after,
        ..r
    })
}

/// The snapshot failed verification before anything was touched.
fn unverified_failure(caller: &Caller, m: &Manifest, e: anyhow::Error) -> Failure {
    Failure::msg(
        if matches!(caller, Caller::Run { .. }) {
            Kind::RestoreFailed
        } else {
            Kind::Corrupt
        },
        format!(
            "{}snapshot {} failed verification ({e:#}); nothing was restored{}",
            lead(caller),
            m.id,
            left_as(caller)
        ),
    )
}

/// `guard restore`: restore `m` (the snapshot, restricted to the targets asked for in `only`)
/// under a journal of its own (`run_id`, op `restore`), closed when done. Returns the journal, what
/// was restored and, when not every target came back, the failure to report; an error means
/// nothing was restored.
pub fn requested(
    cx: &Ctx,
    m: &Manifest,
    only: &[String],
    no_rescue: bool,
    run_id: &str,
    command: &[String],
) -> Result<(Journal, Restoration, Option<Failure>), Failure> {
    let targets = targets_for(cx.policy, m)?;
    let mut j = Journal::new(run_id, cx.policy, command);
    j.op = Op::Restore;
    j.only = only.to_vec();
    j.snapshot_id = Some(m.id.clone());
    j.save(cx.store).kind(Kind::Internal)?;
    let rescue = if no_rescue {
        Rescue::Skip
    } else {
        Rescue::Take(format!("state before restore of {}", m.id))
    };
    let done = match rescue_then_restore(cx, &targets, m, rescue, true, &mut j, &Caller::Restore) {
        Ok(done) => done,
        Err(f) => {
            close(cx, &mut j, Err(&f));
            return Err(f);
        }
    };
    let failure = done.failure(cx, m, &Caller::Restore);
    close(cx, &mut j, failure.as_ref().map_or(Ok((0, Outcome::Restored)), Err));
    Ok((j, done, failure))
}

/// Run `f` between the policy's `before` and `after` hooks. The `after` hooks run whatever `f`
/// did, and also when a `before` hook failed (it may have stopped half of what it stops);
/// their failure is warned about and returned beside `f`'s result.
/// The hooks' output is appended to run `run_id`'s log (a remote store receives it at the end).
pub fn with_hooks<T>(
    cx: &Ctx,
    run_id: &str,
    f: impl FnOnce() -> Result<T, Failure>,
) -> (Result<T, Failure>, Option<String>) {
    let log = crate::store::state::state_dir(cx.store)
        .ok()
        .map(|d| d.join(crate::store::keys::log_key(run_id)));
    let hooks = |which, list| HookRun {
        which,
        hooks: list,
        timeout: cx.policy.hooks.timeout,
        log: log.as_deref(),
    };
    let result = cx
        .hooks
        .run(&hooks("before", &cx.policy.hooks.before), cx.ui)
        .map_err(|e| Failure::msg(Kind::Hook, format!("{e:#}; nothing was changed")))
        .and_then(|()| f());
    let after = cx
        .hooks
        .run(&hooks("after", &cx.policy.hooks.after), cx.ui)
        .err()
        .map(|e| {
            let e = format!("{e:#}");
            cx.ui.warn(&e);
            e
        });
    if log.as_deref().is_some_and(|p| p.exists()) {
        if let Err(e) = crate::store::publish_log(cx.store, run_id, true) {
            cx.ui.warn(&format!(
                "could not upload the run log to {}: {e:#}",
                cx.store.location()
            ));
        }
    }
    (result, after)
}

fn rescue_and_restore(
    cx: &Ctx,
    targets: &[Box<dyn Target>],
    m: &Manifest,
    rescue: Rescue,
    j: &mut Journal,
    caller: &Caller,
) -> Result<Restoration, Failure> {
    let mut rescue_dir = None;
    // A guarded run restores by rename what it kept a hot copy of, first, the failed state set
    // aside beside it; the rescue snapshot then holds the set-aside state.
    let swappable = hot::hot_swappable(m, &rescue, j);
    let swapped = match (&rescue, j.hot_tag()) {
        (Rescue::Take(_), Some(_)) => hot::swap_hot_copies(cx, targets, m, j)?,
        _ => Vec::new(),
    };
    // A target whose hot copy could not be used is restored from the store: its artifacts are
    // checked first, as every other target's were.
    let unverified = hot::check_unswapped(cx, targets, m, &swappable, &swapped, caller)?;
    let views: Vec<&(dyn Target + 'static)> = targets
        .iter()
        .map(|t| match swapped.iter().find(|(name, _)| name == t.name()) {
            Some((_, view)) => &**view,
            None => &**t,
        })
        .collect();
    let rescue_id = match rescue {
        Rescue::Skip => None,
        Rescue::Taken(id) => Some(id),
        Rescue::Take(label) => {
            let (r, dir) = rescue::take(cx, &views, label, j, m, caller, &swapped)?;
            rescue_dir = dir;
            Some(r)
        }
    };
    j.rescue_id = rescue_id.clone().or(j.rescue_id.take());
    j.advance(cx.store, Phase::Restoring, cx.ui).kind(Kind::Internal)?;
    let rest = Manifest {
        targets: m
            .targets
            .iter()
            .filter(|r| !swapped.iter().any(|(name, _)| *name == r.name))
            .filter(|r| !unverified.iter().any(|u| u.target == r.name))
            .cloned()
            .collect(),
        ..m.clone()
    };
    let mut results = hot::swapped_results(&swapped, m);
    results.extend(restore_deferring_signals(targets, cx.store, &rest, cx.ui));
    results.extend(unverified);
    // The targets restored by rename are back; the snapshot they were restored to must still be
    // sound in the store for later (`guard restore`, drills): checked now, said if not.
    // (A hot copy made late was unpacked from those artifacts and checked file by file.)
    let renamed: Vec<String> = swapped
        .iter()
        .map(|(n, _)| n.clone())
        .filter(|n| !j.late_hot.contains_key(n))
        .collect();
    if let Err(e) = hot::verify_later(cx, m, &renamed) {
        cx.ui.warn(&format!(
            "snapshot {} is damaged in the store ({e:#}); {} came back from the hot copy it was taken from and is restored, but that snapshot cannot restore it again: run `guard verify` and take a new snapshot",
            m.id,
            renamed.join(", ")
        ));
    }
    j.restored = results.iter().filter(|r| r.ok).map(|r| r.target.clone()).collect();
    Ok(Restoration {
        rescue_id,
        rescue_dir,
        targets: results,
        after_hooks: None,
    })
}

/// The words that open a failure: the run says why it restored.
fn lead(caller: &Caller) -> String {
    match caller {
        Caller::Run { why } => format!("{why}, and the pre-run "),
        _ => String::new(),
    }
}

/// Where an early failure leaves the targets, when that is not "as they were".
fn left_as(caller: &Caller) -> &'static str {
    match caller {
        Caller::Run { .. } => ": the targets are as the command left them",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::manifest::SnapshotKind;
    use crate::snapshot::Request;
    use crate::testing::{self, FakeHooks, FakeTarget, MemStore, World};

    const POLICY: &str = "name = \"unit\"\nstore = \"store\"\n[[target]]\nname = \"app\"\nkind = \"sqlite\"\npath = \"app.db\"\n[hooks]\nbefore = [\"stop\"]\nafter = [\"start\"]\n";

    /// `guard restore` of a snapshot of `app`, after `prepare` had its way with the store and
    /// the target; the result, the events and the journal's phases.
    fn restore(
        prepare: impl FnOnce(&MemStore, &Manifest, &mut FakeTarget),
    ) -> (Result<Restoration, Failure>, Vec<String>, Vec<String>, Arc<World>) {
        let (policy, _dir) = testing::policy(POLICY);
        let world = World::new(&[("app", "v1")]);
        let store = MemStore::new();
        let catalog = Catalog::open(&store).unwrap();
        let ui = testing::ui();
        let mut app = FakeTarget::new(&policy, "app", &world);
        let req = Request {
            kind: SnapshotKind::Manual,
            label: None,
            run_id: None,
            command: None,
            only: None,
            allow_absent: false,
        };
        let taken: Vec<Box<dyn Target>> = vec![Box::new(FakeTarget::new(&policy, "app", &world))];
        let m = snapshot::take(&policy, &taken, &store, req, &ui).unwrap();
        world.set("app", "v2");
        prepare(&store, &m, &mut app);
        world.events.lock().unwrap().clear();
        let hooks = FakeHooks {
            world: Arc::clone(&world),
            fail: Vec::new(),
        };
        let cx = Ctx {
            policy: &policy,
            store: &store,
            catalog: &catalog,
            hooks: &hooks,
            ui: &ui,
        };
        let mut j = Journal::new(
            "20261201T000000.000Z-0001",
            &policy,
            &["guard".into(), "restore".into()],
        );
        j.op = Op::Restore;
        let targets: Vec<Box<dyn Target>> = vec![Box::new(app)];
        let rescue = Rescue::Take("state before restore".into());
        let r = rescue_then_restore(&cx, &targets, &m, rescue, true, &mut j, &Caller::Restore);
        (r, world.events(), store.journal_phases(), world)
    }

    #[test]
    fn hooks_wrap_the_rescue_and_the_restore() {
        let (r, events, phases, world) = restore(|_, _, _| {});
        let r = r.unwrap();
        assert!(r.rescue_id.is_some() && r.targets.iter().all(|t| t.ok));
        assert_eq!(
            events,
            [
                "before hook stop",
                "snapshot app",
                "restore app",
                "verify app",
                "after hook start"
            ]
        );
        assert_eq!(phases, ["rescuing", "restoring"]);
        assert_eq!(world.get("app"), "v1");
    }

    #[test]
    fn a_failed_rescue_still_runs_the_after_hooks() {
        let (r, events, _, world) = restore(|_, _, app| app.snapshot_fails = Some(1));
        let f = r.unwrap_err();
        assert_eq!(f.kind, Kind::RestoreFailed);
        assert!(
            format!("{:#}", f.error).contains("--no-rescue"),
            "names the way forward: {:#}",
            f.error
        );
        assert_eq!(events, ["before hook stop", "snapshot app", "after hook start"]);
        assert_eq!(world.get("app"), "v2", "nothing restored");
    }

    #[test]
    fn a_snapshot_that_fails_verification_touches_nothing_not_even_the_hooks() {
        let (r, events, phases, world) = restore(|store, m, _| {
            let key = &m.targets[0].artifacts[0].key;
            let mut bytes = store.get(key).unwrap();
            bytes[20] ^= 1;
            store.replace(key, &bytes);
        });
        let f = r.unwrap_err();
        assert_eq!(f.kind, Kind::Corrupt);
        assert!(format!("{:#}", f.error).contains("SHA-256 mismatch"), "{:#}", f.error);
        assert!(events.is_empty(), "{events:?}");
        assert!(phases.is_empty());
        assert_eq!(world.get("app"), "v2");
    }
}
