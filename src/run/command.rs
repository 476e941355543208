//! Running the wrapped command: its output streamed live and into the run log, signals
//! forwarded to it, its exit code as a shell reports it.

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
    fn run(&self, cmd: &[String], log: File, ui: &Ui) -> Result<i32>;
}

/// The command as a child process ([`run_command`]).
pub struct Spawn;

impl Runner for Spawn {
    fn run(&self, cmd: &[String], log: File, ui: &Ui) -> Result<i32> {
        run_command(cmd, log, ui)
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
            let chunk = crate::secrets::redact_bytes(&buf[..n]);
            if to_stdout {
                let mut o = std::io::stdout().lock();
                let _ = o.write_all(&chunk);
                let _ = o.flush();
            } else {
                let mut e = std::io::stderr().lock();
                let _ = e.write_all(&chunk);
                let _ = e.flush();
            }
            if let Ok(mut l) = log.lock() {
                let _ = l.write_all(&chunk);
            }
        }
    })
}

/// Run the wrapped command, streaming its output live and into `log`. Signals received by
/// guard meanwhile are forwarded to it. Returns its exit code.
pub fn run_command(cmd: &[String], log: File, ui: &Ui) -> Result<i32> {
    let log = Arc::new(Mutex::new(log));
    let mut child = crate::process::user_umask(&mut Command::new(&cmd[0]))
        .args(&cmd[1..])
        .stdin(Stdio::inherit())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {:?}", cmd[0]))?;
    let out = tee(child.stdout.take().expect("piped"), !ui.json, Arc::clone(&log));
    let err = tee(child.stderr.take().expect("piped"), false, Arc::clone(&log));
    let status = loop {
        if let Some(sig) = crate::signals::take() {
            crate::signals::forward(child.id(), sig);
        }
        match child.try_wait()? {
            Some(s) => break s,
            None => std::thread::sleep(Duration::from_millis(25)),
        }
    };
    // The command has exited, but a process it left behind (a daemon, `sleep &`) may still hold
    // its stdout/stderr open: drain what is there for a moment, then stop waiting for EOF.
    let grace = std::time::Instant::now() + Duration::from_secs(2);
    while !(out.is_finished() && err.is_finished()) && std::time::Instant::now() < grace {
        std::thread::sleep(Duration::from_millis(10));
    }
    if !(out.is_finished() && err.is_finished()) {
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
    store::local::create_dir_all_private(path.parent().expect("has parent"))?;
    Ok(OpenOptions::new().create(true).append(true).mode(0o600).open(&path)?)
}
