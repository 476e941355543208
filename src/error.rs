//! Failure kinds and the stable exit codes they map to.
//!
//! Library functions return `anyhow::Result`; the command layer classifies a failure with
//! [`Kind`] so `main` can turn it into a documented exit code. The codes are part of guard's
//! public contract (README, "Exit codes") and must never change meaning.

use std::fmt;

/// Run `f`, turning a panic inside it into an error that names `what`. The steps between the
/// command's exit and the end of the restore (checks, rescue, each target's restore) run
/// through this, so a bug in one of them still reaches the restore of the others.
pub fn no_panic<T>(what: &str, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".into());
            Err(anyhow::anyhow!("{what} panicked (a bug in guard): {msg}"))
        }
    }
}

/// What went wrong, from the user's point of view. Each kind has one exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Anything unexpected: I/O errors outside a snapshot, bugs.
    Internal,
    /// Bad command line or policy (malformed TOML, unknown key, missing `${VAR}`, unknown id).
    Usage,
    /// A snapshot could not be taken or verified; the command was not run.
    Snapshot,
    /// The wrapped command ran, a check failed, and the targets were restored.
    ChecksFailedRestored,
    /// A restore (automatic or requested) failed or could not be started: act now.
    RestoreFailed,
    /// An artifact or manifest failed verification.
    Corrupt,
    /// Another guard holds the policy's lock.
    Locked,
    /// The command failed or a check failed and `--no-restore` kept the failed state.
    KeptFailed,
    /// The user declined the confirmation prompt.
    Declined,
    /// A restore drill failed.
    DrillFailed,
    /// A `before` hook failed; nothing was snapshotted, run or restored.
    Hook,
    /// An earlier run left the targets in a failed or unknown state (interrupted, restore
    /// failed, failed state kept, failed drill): `guard recover` first.
    NeedsAttention,
    /// The command and every check passed and its changes are kept, but the pre-run snapshot's
    /// store artifact, deferred while the command ran (issue 17), could not be written or
    /// verified: the hot copy (or clone) is kept until `guard recover`.
    Unstored,
}

impl Kind {
    /// Every kind, for reading [`Kind::as_str`] back.
    pub const ALL: [Kind; 13] = [
        Kind::Internal,
        Kind::Usage,
        Kind::Snapshot,
        Kind::ChecksFailedRestored,
        Kind::RestoreFailed,
        Kind::Corrupt,
        Kind::Locked,
        Kind::KeptFailed,
        Kind::Declined,
        Kind::DrillFailed,
        Kind::Hook,
        Kind::NeedsAttention,
        Kind::Unstored,
    ];

    /// The process exit code for this kind. Stable: documented in README.
    pub fn exit_code(self) -> u8 {
        match self {
            Kind::Internal => 1,
            Kind::Usage => 64,
            Kind::Corrupt => 65,
            Kind::DrillFailed => 66,
            Kind::Snapshot => 69,
            Kind::Hook => 70,
            Kind::Locked => 75,
            Kind::Declined => 76,
            Kind::ChecksFailedRestored => 79,
            Kind::RestoreFailed => 80,
            Kind::KeptFailed => 81,
            Kind::NeedsAttention => 82,
            Kind::Unstored => 83,
        }
    }

    /// Short machine-readable name used in `--json` output.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Internal => "internal",
            Kind::Usage => "usage",
            Kind::Corrupt => "corrupt",
            Kind::DrillFailed => "drill_failed",
            Kind::Snapshot => "snapshot_failed",
            Kind::Locked => "locked",
            Kind::Declined => "declined",
            Kind::ChecksFailedRestored => "checks_failed_restored",
            Kind::RestoreFailed => "restore_failed",
            Kind::KeptFailed => "kept_failed",
            Kind::Hook => "hook_failed",
            Kind::NeedsAttention => "needs_attention",
            Kind::Unstored => "snapshot_unstored",
        }
    }
}

/// An error with the kind that decides guard's exit code.
#[derive(Debug)]
pub struct Failure {
    pub kind: Kind,
    pub error: anyhow::Error,
    /// The command already printed its `--json` document (which carries the failure).
    pub reported: bool,
}

impl Failure {
    pub fn new(kind: Kind, error: impl Into<anyhow::Error>) -> Self {
        Failure {
            kind,
            error: error.into(),
            reported: false,
        }
    }
    pub fn msg(kind: Kind, msg: impl fmt::Display) -> Self {
        Failure {
            kind,
            error: anyhow::anyhow!("{msg}"),
            reported: false,
        }
    }
    /// Mark that the `--json` document describing this failure was already printed, so stdout
    /// keeps exactly one JSON document.
    pub fn reported(mut self) -> Self {
        self.reported = true;
        self
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.error)
    }
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure {
            kind: Kind::Internal,
            error: e.into(),
            reported: false,
        }
    }
}

/// Attach a [`Kind`] to any error result.
pub trait ResultExt<T> {
    fn kind(self, kind: Kind) -> Result<T, Failure>;
}

impl<T, E: Into<anyhow::Error>> ResultExt<T> for Result<T, E> {
    fn kind(self, kind: Kind) -> Result<T, Failure> {
        self.map_err(|e| Failure {
            kind,
            error: e.into(),
            reported: false,
        })
    }
}
