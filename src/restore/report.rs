//! [`Restoration::failure`]: a restore's result in one set of words, each naming the next
//! command to run (a manual step points at its instructions; a failed restore names each target,
//! the intact snapshot, the rescue snapshot, and the retry for the caller).

use super::{Caller, Ctx, Restoration, TargetRestore};
use crate::error::{Failure, Kind};
use crate::manifest::Manifest;

impl Restoration {
    /// `None` when every target was restored and verified; otherwise the failure to report:
    /// a manual step (Turso `promote`) says so and points at the instructions printed above,
    /// a failed restore names each target and what to run next.
    pub fn failure(&self, cx: &Ctx, m: &Manifest, caller: &Caller) -> Option<Failure> {
        let failed: Vec<&TargetRestore> = self.targets.iter().filter(|r| !r.ok).collect();
        if failed.is_empty() {
            return None;
        }
        let restored: Vec<&str> = self
            .targets
            .iter()
            .filter(|r| r.ok)
            .map(|r| r.target.as_str())
            .collect();
        let restored = if restored.is_empty() {
            String::new()
        } else {
            format!(" Restored and verified: {}.", restored.join(", "))
        };
        let why = match caller {
            Caller::Run { why } => format!("{why}; "),
            _ => String::new(),
        };
        let rescue = match (&self.rescue_id, &self.rescue_dir) {
            (Some(r), Some(d)) => format!(
                " The state it replaced is kept in rescue snapshot {r}, in {} (outside the full store).",
                d.display()
            ),
            (Some(r), None) => format!(" The state it replaced is kept in rescue snapshot {r}."),
            _ => String::new(),
        };
        let file = cx.policy.file.display();
        let msg = if failed.iter().all(|r| r.manual) {
            let then = match caller {
                Caller::Recover => format!(" When that is done: guard --policy {file} recover --keep"),
                _ => String::new(),
            };
            format!(
                "{why}restore is not automatic for {} — act now, following the instructions above.{restored}{rescue} The snapshot is {}.{then}",
                failed.iter().map(|r| r.target.as_str()).collect::<Vec<_>>().join(", "),
                m.id
            )
        } else {
            let retry = match caller {
                Caller::Run { .. } => format!("guard --policy {file} restore {} --no-rescue", m.id),
                Caller::Restore => format!("guard --policy {file} restore {}", m.id),
                Caller::Recover => format!("guard --policy {file} recover"),
            };
            // Each target's error was printed as it failed; other sessions' ways out come once.
            let sessions = if failed.iter().any(|r| r.sessions) {
                let flag = match caller {
                    Caller::Recover => format!("guard --policy {file} recover --terminate-sessions"),
                    _ => format!("guard --policy {file} restore {} --terminate-sessions", m.id),
                };
                format!(" Other sessions are connected: stop them (the app), then retry; or end them: {flag} (or set `sessions = \"terminate\"` on the target).")
            } else {
                String::new()
            };
            format!(
                "{why}RESTORE FAILED for {} — act now.{restored} Snapshot {} is intact.{rescue}{sessions} Retry with: {retry}",
                failed
                    .iter()
                    .map(|r| {
                        if r.sessions {
                            format!("{} (other sessions, above)", r.target)
                        } else {
                            format!("{} ({})", r.target, r.error.as_deref().unwrap_or("?"))
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
                m.id
            )
        };
        Some(Failure::msg(Kind::RestoreFailed, msg))
    }
}
