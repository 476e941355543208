//! The rescue snapshot of the state a restore replaces: into the store, or — when the store is
//! full after a guarded run's command — into a private directory outside it; and the failures
//! when it cannot be taken (nothing restored, or only what was restored by rename).

use super::hot::Swapped;
use super::{left_as, Caller, Ctx};
use crate::error::{Failure, Kind, ResultExt};
use crate::journal::{Journal, Op, Phase};
use crate::manifest::{Manifest, SnapshotKind};
use crate::snapshot::{self, Request};
use crate::store::Store;
use crate::targets::Target;

/// Step 3: the rescue snapshot of `views` (the live targets, or for those restored by rename
/// the failed state set aside), labelled `label`, under phase `rescuing`; outside the store when
/// a guarded run's command has run and the store is full. Then what was set aside is removed
/// (the rescue snapshot holds it). Its id, and the directory outside the store it went to.
pub(super) fn take(
    cx: &Ctx,
    views: &[&(dyn Target + 'static)],
    label: String,
    j: &mut Journal,
    m: &Manifest,
    caller: &Caller,
    swapped: &[Swapped],
) -> Result<(String, Option<std::path::PathBuf>), Failure> {
    let mut rescue_dir = None;
    j.advance(cx.store, Phase::Rescuing, cx.ui).kind(Kind::Internal)?;
    let command = (j.op == Op::Run).then(|| j.command.clone());
    let run_id = j.run_id.clone();
    let r = match crate::error::no_panic("the rescue snapshot", || {
        take_rescue(cx, cx.store, views, label.clone(), run_id.clone(), command.clone())
    }) {
        Ok(r) => r,
        // After a guarded run's command the restore must still run when the store is
        // full: the failed state goes to a private directory outside the store.
        Err(e) if j.command_started() && no_space(&e) => {
            match rescue_outside_store(cx, views, label, &run_id, command) {
                Ok((r, dir)) => {
                    cx.ui.warn(&format!(
                        "the store {} is full ({e:#}): the rescue snapshot {r} of the failed state was written to {} instead. Keep it: once the store has room, move it in with `mv {}/snapshots/{r} {}/snapshots/` (its artifacts also restore by hand)",
                        cx.store.location(),
                        dir.display(),
                        dir.display(),
                        cx.store.location()
                    ));
                    rescue_dir = Some(dir);
                    r
                }
                Err(e2) => {
                    let e = e.context(format!("nor outside the store: {e2:#}"));
                    return Err(if swapped.is_empty() {
                        rescue_failed(cx, m, caller, e)
                    } else {
                        rescue_failed_after_swap(cx, m, caller, swapped, j, e)
                    });
                }
            }
        }
        Err(e) if !swapped.is_empty() => return Err(rescue_failed_after_swap(cx, m, caller, swapped, j, e)),
        Err(e) => return Err(rescue_failed(cx, m, caller, e)),
    };
    cx.ui.info(&format!(
        "guard: the state being replaced is kept in rescue snapshot {r}"
    ));
    for (name, view) in swapped {
        if let Err(e) = view.drop_aside() {
            cx.ui.warn(&format!(
                "target {name}: could not remove the failed state set aside (rescue snapshot {r} holds it): {e:#}"
            ));
        }
    }
    Ok((r, rescue_dir))
}

/// The rescue snapshot failed after targets were restored by rename: they are restored, their
/// failed state is kept where it was set aside; the others are as the command left them.
pub(super) fn rescue_failed_after_swap(
    cx: &Ctx,
    m: &Manifest,
    caller: &Caller,
    swapped: &[Swapped],
    j: &Journal,
    e: anyhow::Error,
) -> Failure {
    let kept: Vec<String> = swapped
        .iter()
        .map(|(name, view)| {
            format!(
                "{name} in {}",
                view.aside(&j.run_id)
                    .unwrap_or_else(|| "(no file: there was none)".into())
            )
        })
        .collect();
    let others: Vec<&str> = m
        .targets
        .iter()
        .map(|r| r.name.as_str())
        .filter(|n| !swapped.iter().any(|(s, _)| s == n))
        .collect();
    let others = if others.is_empty() {
        String::new()
    } else {
        format!(
            " {} are as the command left them; to restore them without a rescue snapshot: guard --policy {} restore {} --no-rescue",
            others.join(", "),
            cx.policy.file.display(),
            m.id
        )
    };
    Failure::msg(
        Kind::RestoreFailed,
        format!(
            "{}restored {} by rename and verified, but the rescue snapshot of the failed state could not be written ({e:#}); the failed state is kept where it was set aside: {}.{others}",
            match caller {
                Caller::Run { why } => format!("{why}; "),
                _ => String::new(),
            },
            swapped.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", "),
            kept.join(", ")
        ),
    )
}

/// Did `e` come from a full filesystem (ENOSPC, EDQUOT, SQLite's "disk is full")?
pub fn no_space(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| matches!(io.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)))
    }) || {
        let s = format!("{e:#}");
        s.contains("No space left on device")
            || s.contains("database or disk is full")
            || s.contains("Disk quota exceeded")
    }
}

/// The rescue snapshot into a private store directory of its own under the system's temp
/// directory (`guard-rescue-RUN`), for when the store is full. Its id and directory.
pub(super) fn rescue_outside_store(
    cx: &Ctx,
    targets: &[&(dyn Target + 'static)],
    label: String,
    run_id: &str,
    command: Option<Vec<String>>,
) -> anyhow::Result<(String, std::path::PathBuf)> {
    let dir = std::env::temp_dir().join(format!("guard-rescue-{run_id}"));
    let store = crate::store::local::LocalStore::open(&dir)?;
    let id = crate::error::no_panic("the rescue snapshot", || {
        take_rescue(cx, &store, targets, label, run_id.to_string(), command)
    })?;
    Ok((id, dir))
}

pub(super) fn take_rescue(
    cx: &Ctx,
    store: &dyn Store,
    targets: &[&(dyn Target + 'static)],
    label: String,
    run_id: String,
    command: Option<Vec<String>>,
) -> anyhow::Result<String> {
    let rescue = snapshot::take(
        cx.policy,
        targets,
        store,
        Request {
            kind: SnapshotKind::Rescue,
            label: Some(label),
            run_id: Some(run_id),
            command,
            only: None,
            allow_absent: true,
        },
        cx.ui,
    )?;
    if std::ptr::addr_eq(store, cx.store) {
        let _ = cx.catalog.record_snapshot(&rescue);
    }
    Ok(rescue.id)
}

/// The rescue snapshot could not be taken: nothing was restored.
pub(super) fn rescue_failed(cx: &Ctx, m: &Manifest, caller: &Caller, e: anyhow::Error) -> Failure {
    let why = match caller {
        Caller::Run { why } => format!("{why}, and the"),
        _ => "the".into(),
    };
    Failure::msg(
        Kind::RestoreFailed,
        format!(
            "{why} rescue snapshot of the current state could not be taken ({e:#}); nothing was restored, so nothing is lost{}. To restore {} anyway, without a rescue snapshot: guard --policy {} restore {} --no-rescue",
            left_as(caller),
            m.id,
            cx.policy.file.display(),
            m.id
        ),
    )
}
