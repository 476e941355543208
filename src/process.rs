//! Child processes: shell hooks, exit statuses as people and shells read them, and command
//! lines quoted for display.

use std::process::{Command, Stdio};

use anyhow::{Context, Result};

use crate::ui::Ui;

/// The umask guard was started with, before [`private_umask`] (0o022 if never set).
static USER_UMASK: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0o022);

/// Make every file guard creates 0600 and every directory 0700 at most, whatever umask it was
/// started with — the store's temp files, scratch copies, the catalog and its `-wal`/`-shm`,
/// files made by libraries (SQLite, tar) included. Called once, first thing; the commands guard
/// runs for the user ([`user_umask`]) get the original umask back.
pub fn private_umask() {
    let old = unsafe { libc::umask(0o077) };
    USER_UMASK.store(old as u32, std::sync::atomic::Ordering::SeqCst);
}

/// Give `cmd` the umask guard was started with: the wrapped command, hooks, `command` checks
/// and the drill's `on_failure` create files as they would without guard.
pub fn user_umask(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    let mask = USER_UMASK.load(std::sync::atomic::Ordering::SeqCst) as libc::mode_t;
    // SAFETY: umask(2) is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(move || {
            libc::umask(mask);
            Ok(())
        })
    }
}

/// Quote a command line for display.
pub fn shell_words(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c)) {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Is `program` something we can execute? (PATH lookup for bare names.)
pub fn command_exists(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &std::path::Path| {
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if program.contains('/') {
        return executable(std::path::Path::new(program));
    }
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| executable(&d.join(program))))
        .unwrap_or(false)
}

/// Runs the policy's `before` and `after` hooks. [`ShellHooks`] runs them with `sh -c`; the
/// lifecycle's unit tests record them instead.
pub trait Hooks: Sync {
    /// Run `hooks` (the `which` ones: "before" or "after") in order; stop at the first failure.
    fn run(&self, which: &str, hooks: &[String], ui: &Ui) -> Result<()>;
}

/// The policy's hooks as shell commands ([`run_hooks`]).
pub struct ShellHooks;

impl Hooks for ShellHooks {
    fn run(&self, which: &str, hooks: &[String], ui: &Ui) -> Result<()> {
        run_hooks(which, hooks, ui)
    }
}

/// Run shell hooks in order; stop at the first failure.
pub fn run_hooks(which: &str, hooks: &[String], ui: &Ui) -> Result<()> {
    for h in hooks {
        ui.info(&format!("guard: {which} hook: {h}"));
        let status = user_umask(&mut Command::new("sh"))
            .arg("-c")
            .arg(h)
            .stdin(Stdio::null())
            .stdout(if ui.json { Stdio::null() } else { Stdio::inherit() })
            .status()
            .with_context(|| format!("{which} hook {h:?} could not start"))?;
        if !status.success() {
            anyhow::bail!("{which} hook {h:?} failed ({})", describe_status(&status));
        }
    }
    Ok(())
}

pub fn describe_status(s: &std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "unknown status".into(),
    }
}

/// Exit code of a finished child, with signals as 128+n like a shell.
pub fn exit_code_of(s: &std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))
}

/// The live (not zombie) processes of process group `pgid`, read from `/proc`. Empty when the
/// group is gone. Where `/proc` cannot be read, `kill(-pgid, 0)` decides (a zombie counts).
pub fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        // SAFETY: signal 0 only checks that the group exists.
        let alive = unsafe { libc::kill(-(pgid as libc::pid_t), 0) == 0 };
        return if alive { vec![pgid] } else { Vec::new() };
    };
    let mut out = Vec::new();
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.len() > 2 && f[0] != "Z" && f[0] != "X" && f[2].parse::<u32>().ok() == Some(pgid) {
            out.push(pid);
        }
    }
    out.sort_unstable();
    out
}
