//! Putting targets back to a snapshot's state.
//!
//! Used by the guarded run (after a failure) and by `guard restore`/`guard recover`. Each
//! target restores atomically on its own; afterwards the live target is compared with what the
//! snapshot recorded (content checksums and fingerprints), so "restored" means "proven equal".

use serde::Serialize;

use crate::manifest::Manifest;
use crate::policy::Policy;
use crate::store::Store;
use crate::targets::{target_for, Restored};
use crate::ui::Ui;

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
}

/// Restore every target of `m` (or those in `only`), in manifest order, and verify each.
pub fn restore_all(
    policy: &Policy,
    store: &dyn Store,
    m: &Manifest,
    only: Option<&[String]>,
    ui: &Ui,
) -> Vec<TargetRestore> {
    let mut out = Vec::new();
    for rec in &m.targets {
        if let Some(only) = only {
            if !only.iter().any(|o| o == &rec.name) {
                continue;
            }
        }
        let started = std::time::Instant::now();
        let spinner = ui.spinner(&format!("restore {}", rec.name));
        let r = target_for(&policy.targets, rec).and_then(|t| match t.restore(rec, store)? {
            Restored::Done => t
                .verify_restored(rec)
                .map(|()| Restored::Done)
                .map_err(|e| anyhow::anyhow!("restored, but it does not match the snapshot: {e:#}")),
            manual => Ok(manual),
        });
        spinner.finish();
        let seconds = started.elapsed().as_secs_f64();
        let (ok, manual, error) = match r {
            Ok(Restored::Done) => {
                ui.info(&format!("  {:<16} restored and verified in {seconds:.1}s", rec.name));
                (true, false, None)
            }
            Ok(Restored::Manual(steps)) => {
                let steps = crate::secrets::redact(&steps);
                eprintln!(
                    "guard: {} is not restored in place automatically — it needs you:\n{steps}",
                    rec.name
                );
                (false, true, Some(steps))
            }
            Err(e) => {
                let e = crate::secrets::redact(&format!("{e:#}"));
                eprintln!("guard: restore of {} FAILED: {e}", rec.name);
                (false, false, Some(e))
            }
        };
        out.push(TargetRestore {
            target: rec.name.clone(),
            ok,
            seconds,
            error,
            manual,
        });
        crate::faults::test_pause("restore-between-targets");
    }
    out
}

/// Restore with SIGINT/SIGTERM deferred until every target is consistent.
pub fn restore_deferring_signals(policy: &Policy, store: &dyn Store, m: &Manifest, ui: &Ui) -> Vec<TargetRestore> {
    crate::signals::install();
    let r = restore_all(policy, store, m, None, ui);
    if let Some(sig) = crate::signals::take() {
        ui.warn(&format!(
            "signal {sig} arrived during the restore; it was deferred until the targets were consistent"
        ));
    }
    r
}
