//! The run journal: each guarded run's phase, written atomically to the store at every step.
//!
//! If guard dies, the journal says how far the run got, which snapshot holds the pre-run
//! state, and so what to do next (`guard status` reads it).

use anyhow::Result;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::checks::CheckResult;
use crate::store::Store;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Locked,
    Snapshotting,
    SnapshotVerified,
    CommandRunning,
    Checking,
    Rescuing,
    Restoring,
    Done,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Locked => "locked",
            Phase::Snapshotting => "snapshotting",
            Phase::SnapshotVerified => "snapshot-verified",
            Phase::CommandRunning => "command-running",
            Phase::Checking => "checking",
            Phase::Rescuing => "rescuing",
            Phase::Restoring => "restoring",
            Phase::Done => "done",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Journal {
    pub run_id: String,
    pub policy: String,
    pub policy_file: String,
    pub host: String,
    pub pid: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    pub phase: Phase,
    pub command: Vec<String>,
    #[serde(default)]
    pub snapshot_id: Option<String>,
    #[serde(default)]
    pub rescue_id: Option<String>,
    #[serde(default)]
    pub command_exit: Option<i32>,
    #[serde(default)]
    pub checks: Vec<CheckResult>,
    #[serde(default)]
    pub restored: Vec<String>,
    #[serde(default)]
    pub outcome: Option<String>,
    #[serde(default)]
    pub exit_code: Option<u8>,
    #[serde(default)]
    pub message: Option<String>,
}

pub fn key(run_id: &str) -> String {
    format!("runs/{run_id}/journal.json")
}

pub fn log_key(run_id: &str) -> String {
    format!("runs/{run_id}/run.log")
}

impl Journal {
    pub fn save(&mut self, store: &dyn Store) -> Result<()> {
        self.updated_at = crate::now();
        let mut v = serde_json::to_vec_pretty(self)?;
        v.push(b'\n');
        store.put(&key(&self.run_id), &v)
    }

    /// Move to `phase` and persist it before doing that phase's work.
    pub fn enter(&mut self, store: &dyn Store, phase: Phase) -> Result<()> {
        self.phase = phase;
        self.save(store)?;
        test_pause(phase.as_str());
        Ok(())
    }

    pub fn load(store: &dyn Store, run_id: &str) -> Result<Journal> {
        Ok(serde_json::from_slice(&store.get(&key(run_id))?)?)
    }
}

/// Fault injection for the crash-recovery tests. When the environment variable
/// `GUARD_TEST_PAUSE` names `point` (a phase such as `command-running`, or
/// `snapshot-between-targets`, `restore-between-targets`), guard writes its pid to the file
/// named by `GUARD_TEST_PAUSE_FILE` and sleeps (`GUARD_TEST_PAUSE_SECS`, default 120), so a
/// test can SIGKILL it at exactly that moment. Without the variable this does nothing.
pub fn test_pause(point: &str) {
    if std::env::var("GUARD_TEST_PAUSE").ok().as_deref() == Some(point) {
        if let Ok(f) = std::env::var("GUARD_TEST_PAUSE_FILE") {
            let _ = std::fs::write(f, std::process::id().to_string());
        }
        let secs = std::env::var("GUARD_TEST_PAUSE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(120);
        std::thread::sleep(std::time::Duration::from_secs(secs));
    }
}
