//! Restore by rename (issue 17): a guarded run that kept a hot copy of a target swaps it back
//! into place, proven equal as it is renamed in, the failed state set aside beside it for the
//! rescue snapshot to take.

use super::{restrict, Caller, Ctx, Rescue, TargetRestore};
use crate::error::{Failure, Kind, ResultExt};
use crate::journal::{Journal, Phase};
use crate::manifest::Manifest;
use crate::snapshot::{self, Depth};
use crate::targets::Target;

/// A target restored by rename: its name, and the view over its failed state set aside.
pub(super) type Swapped = (String, Box<dyn Target>);

/// Restore by rename every target of `m` with a hot copy of run `j` (issue 17), in manifest
/// order, each proven equal as it is renamed in ([`Target::swap_in`]). Returns each swapped
/// target's name and the view over its failed state set aside. A target whose hot copy cannot
/// be used is left as it was, for the restore from the store.
pub(super) fn swap_hot_copies(
    cx: &Ctx,
    targets: &[Box<dyn Target>],
    m: &Manifest,
    j: &mut Journal,
) -> Result<Vec<Swapped>, Failure> {
    let Some(tag) = j.hot_tag().map(str::to_string) else {
        return Ok(Vec::new());
    };
    let hot: Vec<&crate::manifest::TargetRecord> =
        m.targets.iter().filter(|r| r.meta.get("hot") == Some(&tag)).collect();
    if hot.is_empty() {
        return Ok(Vec::new());
    }
    j.set_aside = hot.iter().map(|r| r.name.clone()).collect();
    j.set_aside_at = hot
        .iter()
        .filter_map(|r| Some((r.name.clone(), crate::targets::set_aside_at(r, &tag)?)))
        .collect();
    j.advance(cx.store, Phase::Swapping, cx.ui).kind(Kind::Internal)?;
    crate::signals::install();
    let mut out = Vec::new();
    for rec in hot {
        let Some(t) = targets.iter().find(|t| t.name() == rec.name) else {
            continue;
        };
        let started = std::time::Instant::now();
        match crate::error::no_panic(&format!("the swap of {}", rec.name), || t.swap_in(rec, &tag)) {
            Ok(Some(view)) => {
                let how = match j.late_hot.contains_key(&rec.name) {
                    true => "the snapshot unpacked beside it, checked and exchanged with the failed tree, which is set aside beside it".to_string(),
                    false => format!(
                        "its {} renamed into place; the failed state set aside beside it",
                        crate::targets::held_in(rec)
                    ),
                };
                cx.ui.info(&format!(
                    "  {:<16} restored and verified in {:.3}s ({how})",
                    rec.name,
                    started.elapsed().as_secs_f64(),
                ));
                out.push((rec.name.clone(), view));
            }
            Ok(None) => {}
            Err(e) => cx.ui.warn(&format!(
                "target {}: the hot copy was not used ({e:#}); restoring it from the store",
                rec.name
            )),
        }
    }
    j.set_aside = out.iter().map(|(n, _)| n.clone()).collect();
    let _ = j.save(cx.store);
    crate::faults::test_pause("swapped");
    Ok(out)
}

/// The results of the targets restored by rename, for [`Restoration::targets`].
pub(super) fn swapped_results(swapped: &[Swapped], m: &Manifest) -> Vec<TargetRestore> {
    m.targets
        .iter()
        .filter(|r| swapped.iter().any(|(n, _)| *n == r.name))
        .map(|r| TargetRestore::instant(&r.name, None))
        .collect()
}

/// The targets of `m` a guarded run restores by renaming their hot copy in (if the copy is
/// still usable): after the command, with a rescue to take, their record names this run's copy.
pub(super) fn hot_swappable(m: &Manifest, rescue: &Rescue, j: &Journal) -> Vec<String> {
    let Some(tag) = j.hot_tag().filter(|_| matches!(rescue, Rescue::Take(_))) else {
        return Vec::new();
    };
    m.targets
        .iter()
        .filter(|r| r.meta.get("hot").map(String::as_str) == Some(tag))
        .map(|r| r.name.clone())
        .collect()
}

/// The store's artifacts of `names`, checked (sizes and SHA-256) after those targets were put
/// back without them: `Err` says which artifact is damaged.
pub(super) fn verify_later(cx: &Ctx, m: &Manifest, names: &[String]) -> anyhow::Result<()> {
    if names.is_empty() {
        return Ok(());
    }
    snapshot::verify_artifacts(cx.store, &restrict(m, names), Depth::Checksums)
}

/// The targets of `swappable` whose hot copy was not used (`swapped` lacks them) are restored
/// from the store: their artifacts are checked first. With nothing touched yet (no swap), a
/// damaged one stops the restore as before; after a swap, that target alone is not restored,
/// and its result says why. A target whose store artifact was deferred and never written (issue
/// 17) has nothing in the store: it is already restored when its hot copy is in place (a guard
/// killed after its swap; its result is a success), else it is not restored.
pub(super) fn check_unswapped(
    cx: &Ctx,
    targets: &[Box<dyn Target>],
    m: &Manifest,
    swappable: &[String],
    swapped: &[Swapped],
    caller: &Caller,
) -> Result<Vec<TargetRestore>, Failure> {
    let mut unverified: Vec<TargetRestore> = Vec::new();
    for name in swappable.iter().filter(|n| !swapped.iter().any(|(s, _)| s == *n)) {
        let rec = m.targets.iter().find(|r| r.name == *name);
        let never_stored = rec.is_some_and(crate::targets::is_deferred);
        let target = targets.iter().find(|t| t.name() == name);
        if let (true, Some(rec), Some(t)) = (never_stored, rec, target) {
            if t.verify_restored(rec).is_ok() {
                cx.ui
                    .info(&format!("  {name:<16} already restored (its hot copy is in place)"));
                unverified.push(TargetRestore::instant(name, None));
                continue;
            }
        }
        let checked = match never_stored {
            true => Err(anyhow::anyhow!(
                "its store artifact was still being written when the command failed, so the hot copy was the only copy of the pre-run state"
            )),
            false => verify_later(cx, m, std::slice::from_ref(name)),
        };
        if let Err(e) = checked {
            if swapped.is_empty() {
                return Err(super::unverified_failure(caller, m, e));
            }
            let error = format!(
                "its hot copy could not be used and snapshot {} failed verification ({e:#}); it was not restored",
                m.id
            );
            crate::errln!("guard: restore of {name} FAILED: {error}");
            unverified.push(TargetRestore::instant(name, Some(error)));
        }
    }
    Ok(unverified)
}

/// A guarded run's restore (issue 17): every target of `m` without a hot copy that can have
/// one made late ([`Target::stage_late`]: a `dir` tree swapped whole) has the snapshot unpacked
/// beside it and checked now; its identity goes into `j.late_hot` (journaled with the next
/// phase, before any exchange). A target whose unpack fails has its artifact checked as every
/// other target's is: damaged, the restore stops before anything is touched (the copies made so
/// far removed), as before; else it is restored after its rescue, as before, saying so.
pub(super) fn stage_late(
    cx: &Ctx,
    targets: &[Box<dyn Target>],
    m: &Manifest,
    j: &mut Journal,
    caller: &Caller,
) -> Result<(), Failure> {
    let Some(tag) = j.hot_tag().map(str::to_string) else {
        return Ok(());
    };
    for rec in m.targets.iter().filter(|r| !r.meta.contains_key("hot")) {
        let Some(t) = targets.iter().find(|t| t.name() == rec.name) else {
            continue;
        };
        let started = std::time::Instant::now();
        match crate::error::no_panic(&format!("the unpack of {}", rec.name), || {
            t.stage_late(rec, cx.store, &tag)
        }) {
            Ok(Some(id)) => {
                cx.ui.info(&format!(
                    "  {:<16} snapshot {} unpacked beside it and every file checked in {:.3}s",
                    rec.name,
                    m.id,
                    started.elapsed().as_secs_f64()
                ));
                j.late_hot.insert(rec.name.clone(), id);
            }
            Ok(None) => {}
            Err(e) => {
                if let Err(v) = verify_later(cx, m, std::slice::from_ref(&rec.name)) {
                    for name in std::mem::take(&mut j.late_hot).into_keys() {
                        if let Some(t) = targets.iter().find(|t| t.name() == name) {
                            t.drop_hot(&tag);
                        }
                    }
                    return Err(super::unverified_failure(caller, m, v));
                }
                cx.ui.warn(&format!(
                    "target {}: the snapshot could not be unpacked beside it ({e:#}); it is restored after its rescue snapshot",
                    rec.name
                ));
            }
        }
    }
    Ok(())
}

/// `m` with the hot copies made late that `j` records named in their records (`meta.hot`,
/// `meta.hot_id`), for [`swap_hot_copies`]; `None` when there are none.
pub(super) fn with_late(m: &Manifest, j: &Journal) -> Option<Manifest> {
    let tag = j.hot_tag()?;
    if j.late_hot.is_empty() {
        return None;
    }
    let mut m = m.clone();
    for rec in m.targets.iter_mut() {
        if let Some(id) = j.late_hot.get(&rec.name) {
            if !rec.meta.contains_key("hot") {
                rec.meta.insert("hot".into(), tag.to_string());
                rec.meta.insert("hot_id".into(), id.clone());
            }
        }
    }
    Some(m)
}
