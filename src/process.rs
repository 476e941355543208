//! Child processes: shell hooks, exit statuses as people and shells read them, and command
//! lines quoted for display.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

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

/// How long a hook or a `command` check may run when the policy does not say
/// (`[hooks] timeout`, a check's `timeout`).
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// See [`DEFAULT_HOOK_TIMEOUT`].
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// One group of hooks to run: `which` ("before"/"after"), the shell commands, how long each
/// may take, and the run log their output is appended to.
pub struct HookRun<'a> {
    pub which: &'a str,
    pub hooks: &'a [String],
    pub timeout: Duration,
    pub log: Option<&'a Path>,
}

/// Runs the policy's `before` and `after` hooks. [`ShellHooks`] runs them with `sh -c`; the
/// lifecycle's unit tests record them instead.
pub trait Hooks: Sync {
    /// Run the hooks in order; stop at the first failure.
    fn run(&self, run: &HookRun, ui: &Ui) -> Result<()>;
}

/// The policy's hooks as shell commands ([`run_hooks`]).
pub struct ShellHooks;

impl Hooks for ShellHooks {
    fn run(&self, run: &HookRun, ui: &Ui) -> Result<()> {
        run_hooks(run, ui)
    }
}

/// Run shell hooks in order; stop at the first failure. Their output goes to the terminal
/// (stdout to stderr under `--json`, so stdout stays one JSON document) and into the run log,
/// after a `guard: before hook: …` line; secrets are masked in both. A hook still running after
/// `timeout` is killed with its process group and reported as failed.
pub fn run_hooks(run: &HookRun, ui: &Ui) -> Result<()> {
    let which = run.which;
    if run.hooks.is_empty() {
        return Ok(());
    }
    // A run log that cannot be written (a read-only or full store) loses the hooks' output
    // there, not the hooks.
    let log = run.log.and_then(|p| match open_append(p) {
        Ok(f) => Some(f),
        Err(e) => {
            ui.warn(&format!(
                "cannot write the {which} hooks' output into the run log {}: {e}",
                p.display()
            ));
            None
        }
    });
    for h in run.hooks {
        let line = format!("guard: {which} hook: {h}");
        ui.info(&line);
        if let Some(mut l) = log.as_ref() {
            let _ = l.write_all(crate::secrets::redact(&format!("{line}\n")).as_bytes());
        }
        let sink = Sink::Stream {
            stdout_to_stderr: ui.json,
            log: log.as_ref(),
        };
        let done = run_shell(h, run.timeout, sink).with_context(|| format!("{which} hook {h:?} could not start"))?;
        if let Some(pgid) = done.timed_out {
            let msg = format!(
                "{which} hook {h:?} did not finish within {}: killed it with its process group {pgid}",
                humantime::format_duration(run.timeout)
            );
            if let Some(mut l) = log.as_ref() {
                let _ = l.write_all(format!("guard: {msg}\n").as_bytes());
            }
            anyhow::bail!("{msg} (`[hooks] timeout` sets how long hooks may take)");
        }
        if !done.status.success() {
            anyhow::bail!("{which} hook {h:?} failed ({})", describe_status(&done.status));
        }
    }
    if let Some(l) = &log {
        let _ = l.sync_all();
    }
    Ok(())
}

/// Open `path` for appending (0600), creating it and its directory.
fn open_append(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// Where a shell command's output goes.
pub enum Sink<'a> {
    /// Live to guard's stdout/stderr (stdout to stderr when `stdout_to_stderr`) and into `log`.
    Stream {
        stdout_to_stderr: bool,
        log: Option<&'a File>,
    },
    /// Kept in [`Finished`] (a `command` check's output).
    Capture,
}

/// How a shell command ended.
pub struct Finished {
    pub status: ExitStatus,
    /// The process group that was killed because the command outlived its timeout.
    pub timed_out: Option<u32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Run `script` with `sh -c` in a process group of its own, stdin from /dev/null, with the
/// user's umask; after `timeout` the whole group is killed (SIGTERM, then SIGKILL 2 s later).
/// SIGINT/SIGTERM/SIGHUP guard receives meanwhile are forwarded to the group (they stay
/// pending for guard). Variables reach the shell through the environment, never its argv.
pub fn run_shell(script: &str, timeout: Duration, sink: Sink) -> Result<Finished> {
    use std::os::unix::process::CommandExt;
    let mut child = user_umask(&mut Command::new("sh"))
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()?;
    let pgid = child.id();
    let (out, err) = (child.stdout.take(), child.stderr.take());
    let capture = matches!(sink, Sink::Capture);
    let (to_err, log) = match sink {
        Sink::Stream { stdout_to_stderr, log } => (stdout_to_stderr, log),
        Sink::Capture => (false, None),
    };
    std::thread::scope(|s| -> Result<Finished> {
        let o = out.map(|r| s.spawn(move || pump(r, capture, !to_err, log)));
        let e = err.map(|r| s.spawn(move || pump(r, capture, false, log)));
        let deadline = Instant::now() + timeout;
        let mut forwarded = None;
        let mut timed_out = None;
        let mut killed_at: Option<Instant> = None;
        let status = loop {
            if let Some(sig) = crate::signals::pending() {
                if forwarded != Some(sig) {
                    crate::signals::forward_group(pgid, sig);
                    forwarded = Some(sig);
                }
            }
            if let Some(st) = child.try_wait()? {
                break st;
            }
            let now = Instant::now();
            match killed_at {
                None if now >= deadline => {
                    crate::signals::forward_group(pgid, libc::SIGTERM);
                    killed_at = Some(now);
                    timed_out = Some(pgid);
                }
                Some(at) if now >= at + Duration::from_secs(2) => {
                    crate::signals::forward_group(pgid, libc::SIGKILL);
                    killed_at = Some(now + Duration::from_secs(3600));
                }
                _ => {}
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if timed_out.is_some() {
            // What the shell left behind in its group goes too.
            crate::signals::forward_group(pgid, libc::SIGKILL);
        }
        // A process the command left behind may hold its output open: stop waiting after 2 s.
        let finished = |h: &Option<std::thread::ScopedJoinHandle<Vec<u8>>>| h.as_ref().is_none_or(|h| h.is_finished());
        let grace = Instant::now() + Duration::from_secs(2);
        while !(finished(&o) && finished(&e)) && Instant::now() < grace {
            std::thread::sleep(Duration::from_millis(10));
        }
        if !(finished(&o) && finished(&e)) {
            // Close the pipes' last holders so the readers end.
            crate::signals::forward_group(pgid, libc::SIGKILL);
        }
        let join = |h: Option<std::thread::ScopedJoinHandle<Vec<u8>>>| {
            h.map(|h| h.join().unwrap_or_default()).unwrap_or_default()
        };
        Ok(Finished {
            status,
            timed_out,
            stdout: join(o),
            stderr: join(e),
        })
    })
}

/// Copy a child's stream: kept (`capture`), or to guard's stdout/stderr and `log`, masked.
fn pump(mut from: impl Read, capture: bool, to_stdout: bool, log: Option<&File>) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => return kept,
            Ok(n) => n,
        };
        if capture {
            kept.extend_from_slice(&buf[..n]);
            continue;
        }
        let chunk = echo_masked(&buf[..n], to_stdout);
        if let Some(mut l) = log {
            let _ = l.write_all(&chunk);
        }
    }
}

/// Write a child's bytes, secrets masked, to guard's stdout or stderr; the masked bytes, for a log.
/// A write that fails (a closed pipe) is ignored: nothing printed may abort a run.
pub fn echo_masked(bytes: &[u8], to_stdout: bool) -> Vec<u8> {
    let chunk = crate::secrets::redact_bytes(bytes).into_owned();
    if to_stdout {
        let mut o = std::io::stdout().lock();
        let _ = o.write_all(&chunk);
        let _ = o.flush();
    } else {
        let mut e = std::io::stderr().lock();
        let _ = e.write_all(&chunk);
        let _ = e.flush();
    }
    crate::ui::log_bytes(&chunk);
    chunk
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
