//! Restoring every target of a snapshot, in manifest order, each proven equal to what the
//! snapshot recorded; with SIGINT/SIGTERM deferred until every target is consistent.

use super::TargetRestore;
use crate::manifest::Manifest;
use crate::store::Store;
use crate::targets::{Restored, Target};
use crate::ui::Ui;

/// Restore every target of `m`, in manifest order, and verify each. `targets` are the live
/// targets, found by record name.
pub fn restore_all(targets: &[Box<dyn Target>], store: &dyn Store, m: &Manifest, ui: &Ui) -> Vec<TargetRestore> {
    let mut out = Vec::new();
    for rec in &m.targets {
        let started = std::time::Instant::now();
        let spinner = ui.spinner(&format!("restore {}", rec.name));
        let r = match targets.iter().find(|t| t.name() == rec.name) {
            None => Err(anyhow::anyhow!("no live target {} to restore into", rec.name)),
            Some(t) => crate::error::no_panic(&format!("the restore of {}", rec.name), || {
                t.restore(rec, store).and_then(|done| match done {
                    Restored::Done => t
                        .verify_restored(rec)
                        .map(|()| Restored::Done)
                        .map_err(|e| anyhow::anyhow!("restored, but it does not match the snapshot: {e:#}")),
                    manual => Ok(manual),
                })
            }),
        };
        spinner.finish();
        let seconds = started.elapsed().as_secs_f64();
        let sessions = r.as_ref().is_err_and(|e| {
            e.chain()
                .any(|c| c.downcast_ref::<crate::targets::SessionsBlock>().is_some())
        });
        let (ok, manual, error) = match r {
            Ok(Restored::Done) => {
                ui.info(&format!("  {:<16} restored and verified in {seconds:.1}s", rec.name));
                (true, false, None)
            }
            Ok(Restored::Manual(steps)) => {
                let steps = crate::secrets::redact(&steps);
                crate::errln!(
                    "guard: {} is not restored in place automatically — it needs you:\n{steps}",
                    rec.name
                );
                (false, true, Some(steps))
            }
            Err(e) => {
                let e = crate::secrets::redact(&format!("{e:#}"));
                crate::errln!("guard: restore of {} FAILED: {e}", rec.name);
                (false, false, Some(e))
            }
        };
        out.push(TargetRestore {
            target: rec.name.clone(),
            ok,
            seconds,
            error,
            manual,
            sessions,
        });
        crate::faults::test_pause("restore-between-targets");
    }
    out
}

/// Restore with SIGINT/SIGTERM deferred until every target is consistent.
pub fn restore_deferring_signals(
    targets: &[Box<dyn Target>],
    store: &dyn Store,
    m: &Manifest,
    ui: &Ui,
) -> Vec<TargetRestore> {
    crate::signals::install();
    let r = restore_all(targets, store, m, ui);
    if let Some(sig) = crate::signals::take() {
        ui.warn(&format!(
            "signal {sig} arrived during the restore; it was deferred until the targets were consistent"
        ));
    }
    r
}
