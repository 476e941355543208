//! The rescue snapshot of the state a restore replaces: into the store, or — when the store is
//! full after a guarded run's command — into a private directory outside it; and the failures
//! when it cannot be taken (nothing restored, or only what was restored by rename).

use super::hot::Swapped;
use super::{left_as, Caller, Ctx};
use crate::error::{Failure, Kind};
use crate::journal::Journal;
use crate::manifest::{Manifest, SnapshotKind};
use crate::snapshot::{self, Request};
use crate::store::Store;
use crate::targets::Target;

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
