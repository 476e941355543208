//! Signal handling for the guarded run.
//!
//! While the command runs, SIGINT/SIGTERM/SIGHUP are caught (not ignored: an ignored signal
//! would stay ignored in the child) and forwarded to the command's process group; a Ctrl-C at
//! the terminal reaches the command directly (its group is the terminal's foreground group
//! while it runs). While a restore runs they are
//! only recorded, so a target is never left half-restored.

use std::sync::atomic::{AtomicI32, Ordering};

static PENDING: AtomicI32 = AtomicI32::new(0);

extern "C" fn record(sig: libc::c_int) {
    PENDING.store(sig, Ordering::SeqCst);
}

/// Catch SIGINT, SIGTERM and SIGHUP from now on.
pub fn install() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = record as *const () as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// The signal received and not yet taken, if any (it stays pending).
pub fn pending() -> Option<i32> {
    match PENDING.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// The error that stops a guarded run's pre-run snapshot when SIGINT/SIGTERM/SIGHUP arrives
/// (the command is then never started).
#[derive(Debug, Clone, Copy)]
pub struct Interrupted(pub i32);

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "signal {} arrived", self.0)
    }
}

impl std::error::Error for Interrupted {}

/// The last signal received since the previous call, if any.
pub fn take() -> Option<i32> {
    match PENDING.swap(0, Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// Send `sig` to every process of process group `pgid` (the command's).
pub fn forward_group(pgid: u32, sig: i32) {
    unsafe {
        libc::kill(-(pgid as libc::pid_t), sig);
    }
}
