//! Running the wrapped command: its output streamed live and into the run log, signals
//! forwarded to it, its exit code as a shell reports it.
//!
//! The command runs in a process group of its own (its pid is the group id) and dies with
//! guard: `PR_SET_PDEATHSIG` (SIGKILL) is set in the child between fork and exec, and the
//! child checks that guard did not die before that (its parent pid changed) and exits if so.
//! PDEATHSIG fires when the *thread* that forked the child exits, not the process: the command
//! is spawned from guard's main thread, which lives as long as guard (a spawn from any other
//! thread is refused, [`spawn_thread_ok`]). Processes the command starts in the background
//! stay in its group; a guard killed with SIGKILL cannot stop those, so the journal records the
//! pid and group and `guard status`/`guard recover` refuse to act while any of them is alive
//! ([`crate::process::group_members`]). Signals guard receives are forwarded to the whole group. When guard's
//! stdin is the terminal and guard is in its foreground, the command's group becomes the
//! foreground group while it runs (so it can read the terminal and gets Ctrl-C directly), and
//! guard takes the terminal back when it exits.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::process::exit_code_of;
use crate::store::{self, keys, Store};
use crate::ui::Ui;

/// Runs the wrapped command. [`Spawn`] starts it as a child process; the lifecycle's unit tests
/// stand in for it.
pub trait Runner: Sync {
    /// Run `cmd` with its output going to the terminal and into `log`; its exit code.
    /// `started` is told the command's pid (also its process group) as soon as it runs.
    fn run(&self, cmd: &[String], log: File, ui: &Ui, started: &mut dyn FnMut(u32)) -> Result<i32>;
}

/// The command as a child process ([`run_command`]).
pub struct Spawn;

impl Runner for Spawn {
    fn run(&self, cmd: &[String], log: File, ui: &Ui, started: &mut dyn FnMut(u32)) -> Result<i32> {
        run_command(cmd, log, ui, started)
    }
}

/// Copy a child's stream to our own stream and the run log, bytes intact (secrets masked).
fn tee(mut from: impl Read + Send + 'static, to_stdout: bool, log: Arc<Mutex<File>>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let chunk = crate::process::echo_masked(&buf[..n], to_stdout);
            if let Ok(mut l) = log.lock() {
                let _ = l.write_all(&chunk);
            }
        }
    })
}

/// Wakes as soon as the command exits (a pidfd, Linux 5.3+), or after the timeout: the loop
/// that waits for the command also forwards signals, so it cannot block in `waitpid`, and a
/// plain sleep between polls would add up to its length to every time to recovery.
struct ExitWatch(Option<std::os::fd::OwnedFd>);

impl ExitWatch {
    fn new(pid: u32) -> ExitWatch {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        ExitWatch((fd >= 0).then(|| {
            // SAFETY: the kernel just returned this descriptor; nothing else owns it.
            unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) }
        }))
    }

    /// Return once the process has exited, a signal arrived, or `most` has passed.
    fn wait(&self, most: Duration) {
        match &self.0 {
            Some(fd) => {
                let mut p = libc::pollfd {
                    fd: std::os::fd::AsRawFd::as_raw_fd(fd),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd for the call's duration.
                unsafe { libc::poll(&mut p, 1, most.as_millis() as i32) };
            }
            None => std::thread::sleep(most),
        }
    }
}

/// Is this guard's main thread? PDEATHSIG is tied to the thread that forks the child.
fn spawn_thread_ok() -> bool {
    // SAFETY: getpid and gettid have no preconditions.
    unsafe { libc::getpid() == libc::gettid() }
}

/// Is fd 0 a terminal whose foreground process group is guard's own?
fn own_terminal_foreground() -> bool {
    // SAFETY: isatty, tcgetpgrp and getpgrp only read process state.
    unsafe { libc::isatty(0) == 1 && libc::tcgetpgrp(0) == libc::getpgrp() }
}

/// Make `pgid` the terminal's foreground process group, with SIGTTOU ignored meanwhile (a
/// background process may not change it otherwise). Errors are ignored: the terminal is a
/// courtesy, never a reason to stop.
fn give_terminal(pgid: libc::pid_t) {
    // SAFETY: signal and tcsetpgrp are async-signal-safe and take plain integers.
    unsafe {
        let old = libc::signal(libc::SIGTTOU, libc::SIG_IGN);
        libc::tcsetpgrp(0, pgid);
        libc::signal(libc::SIGTTOU, old);
    }
}

/// Run the wrapped command, streaming its output live and into `log`. Signals received by
/// guard meanwhile are forwarded to its process group. Returns its exit code.
pub fn run_command(cmd: &[String], log: File, ui: &Ui, started: &mut dyn FnMut(u32)) -> Result<i32> {
    use std::os::unix::process::CommandExt;
    if !spawn_thread_ok() {
        anyhow::bail!(
            "internal: the command must be started from guard's main thread (PR_SET_PDEATHSIG is per thread)"
        );
    }
    let log = Arc::new(Mutex::new(log));
    let foreground = own_terminal_foreground();
    // SAFETY: getpid has no preconditions.
    let guard_pid = unsafe { libc::getpid() };
    let mut command = Command::new(&cmd[0]);
    crate::process::user_umask(&mut command);
    command
        .args(&cmd[1..])
        .stdin(Stdio::inherit())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // SAFETY: the closure runs in the child between fork and exec and calls only
    // async-signal-safe functions (prctl, getppid, getpid, signal, tcsetpgrp, _exit).
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // guard died between fork and prctl: the death signal will never come.
            if libc::getppid() != guard_pid {
                libc::_exit(137);
            }
            if foreground {
                give_terminal(libc::getpid());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().with_context(|| format!("cannot start {:?}", cmd[0]))?;
    let pgid = child.id();
    if foreground {
        // Also from this side, as shells do: whichever runs first wins the race harmlessly.
        give_terminal(pgid as libc::pid_t);
    }
    started(pgid);
    let out = child.stdout.take().map(|s| tee(s, !ui.json, Arc::clone(&log)));
    let err = child.stderr.take().map(|s| tee(s, false, Arc::clone(&log)));
    let exited = ExitWatch::new(pgid);
    let status = loop {
        if let Some(sig) = crate::signals::take() {
            crate::signals::forward_group(pgid, sig);
        }
        match child.try_wait() {
            Ok(Some(s)) => break Ok(s),
            Ok(None) => exited.wait(Duration::from_millis(25)),
            Err(e) => break Err(e),
        }
    };
    drop(exited);
    if foreground {
        // SAFETY: getpgrp has no preconditions.
        give_terminal(unsafe { libc::getpgrp() });
    }
    let status = status.context("waiting for the command")?;
    // The command has exited, but a process it left behind (a daemon, `sleep &`) may still hold
    // its stdout/stderr open: drain what is there for a moment, then stop waiting for EOF.
    let finished = |h: &Option<std::thread::JoinHandle<()>>| h.as_ref().is_none_or(|h| h.is_finished());
    let grace = std::time::Instant::now() + Duration::from_secs(2);
    while !(finished(&out) && finished(&err)) && std::time::Instant::now() < grace {
        // The readers see EOF as the command exits: a short sleep, so the restore that
        // follows a failure does not wait for a long one (time to recovery, issue 17).
        std::thread::sleep(Duration::from_millis(1));
    }
    if !(finished(&out) && finished(&err)) {
        ui.warn("the command exited but something it started still holds its output open; no longer waiting for it");
    }
    if let Ok(l) = log.lock() {
        let _ = l.sync_all();
    }
    Ok(exit_code_of(&status))
}

/// The run log, a private file in the state directory (a remote store receives it when the
/// command ends: [`store::publish_log`]).
pub fn open_log(store: &dyn Store, run_id: &str) -> Result<File> {
    // A remote store's log is written locally and uploaded when the command ends (publish_log).
    let path = store::state::state_dir(store)?.join(keys::log_key(run_id));
    if let Some(parent) = path.parent() {
        store::local::create_dir_all_private(parent)?;
    }
    Ok(OpenOptions::new().create(true).append(true).mode(0o600).open(&path)?)
}
