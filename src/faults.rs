//! Named fault points for the crash-recovery tests (`tests/it/faults.rs`).

/// Fault injection for the crash-recovery tests. When the environment variable
/// `GUARD_TEST_PAUSE` names `point` (a phase such as `command-running`, or
/// `snapshot-between-targets`, `restore-between-targets`), guard writes its pid to the file
/// named by `GUARD_TEST_PAUSE_FILE` and sleeps (`GUARD_TEST_PAUSE_SECS`, default 120), so a
/// test can SIGKILL it at exactly that moment. With `GUARD_TEST_PAUSE_RELEASE` naming a file,
/// the sleep ends as soon as that file exists (a test lets guard go on when it is done looking).
/// Without the variable this does nothing.
pub fn test_pause(point: &str) {
    if std::env::var("GUARD_TEST_PAUSE").ok().as_deref() == Some(point) {
        if let Ok(f) = std::env::var("GUARD_TEST_PAUSE_FILE") {
            let _ = std::fs::write(f, std::process::id().to_string());
        }
        let secs = std::env::var("GUARD_TEST_PAUSE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(120);
        let until = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        let release = std::env::var_os("GUARD_TEST_PAUSE_RELEASE").map(std::path::PathBuf::from);
        while std::time::Instant::now() < until && !release.as_ref().is_some_and(|r| r.exists()) {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// A test-only switch: is the environment variable `name` set to `1`? (For example
/// `GUARD_TEST_NO_RENAME_EXCHANGE`, which makes the directory swap act as on a filesystem
/// without `renameat2(RENAME_EXCHANGE)`.)
pub fn test_flag(name: &str) -> bool {
    std::env::var(name).ok().as_deref() == Some("1")
}

/// Hold a deferred store write (issue 17) at `point` while the environment variable
/// `GUARD_TEST_HOLD` names it: until the file `GUARD_TEST_HOLD_RELEASE` exists, `cancel` is
/// set, or 120 s pass. A test uses it to make a command fail, or guard die, while the pre-run
/// snapshot's store artifact does not exist yet. Without the variable this does nothing.
pub fn test_hold(point: &str, cancel: &std::sync::atomic::AtomicBool) {
    if std::env::var("GUARD_TEST_HOLD").ok().as_deref() != Some(point) {
        return;
    }
    let release = std::env::var_os("GUARD_TEST_HOLD_RELEASE").map(std::path::PathBuf::from);
    let until = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while std::time::Instant::now() < until
        && !cancel.load(std::sync::atomic::Ordering::Relaxed)
        && !release.as_ref().is_some_and(|r| r.exists())
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
