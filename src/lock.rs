//! One guard per policy at a time.
//!
//! The lock is an `flock` on `locks/<policy>.lock` in the store, held for the whole run, with
//! the holder's host, pid, start time and command written inside. The kernel releases an
//! `flock` when its holder dies, so a lock file that still names a holder but can be locked
//! belonged to a guard that died: it is taken over, loudly.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::error::{Failure, Kind};
use crate::store::{keys, LeaseOutcome, Store};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Holder {
    pub host: String,
    pub pid: u32,
    pub since: String,
    pub command: String,
    #[serde(default)]
    pub run_id: Option<String>,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pid {} on {} since {} ({})",
            self.pid,
            self.host,
            crate::clock::local_str(&self.since),
            self.command
        )
    }
}

pub struct Lock {
    file: File,
    pub path: PathBuf,
    /// The holder found in the file when the lock was taken: a guard that died holding it.
    pub taken_over: Option<Holder>,
    /// On a store with its own lock (S3: a lease object, store/s3/lease.rs), that lease,
    /// released before the flock.
    remote: Option<Box<dyn Send>>,
}

fn read_holder(f: &mut File) -> Option<Holder> {
    let mut s = String::new();
    f.seek(SeekFrom::Start(0)).ok()?;
    f.read_to_string(&mut s).ok()?;
    serde_json::from_str(&s).ok()
}

/// Open (or with `create`, create 0600) the lock file at `path`, never through a symlink
/// (`O_NOFOLLOW`): the store is writable by others, and a planted link would have guard
/// truncate whatever it points to. The file must be a regular file with one link, owned by
/// the running user; anything else is refused, naming it, and left as it is.
fn open_lock_file(path: &Path, create: bool) -> Result<File, Failure> {
    let file = OpenOptions::new()
        .read(true)
        .write(create)
        .create(create)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                Failure::msg(
                    Kind::Corrupt,
                    format!(
                        "lock file {} is a symbolic link; guard never opens a lock through a link (someone with write access to the store made it): remove it and look at who did",
                        path.display()
                    ),
                )
            } else {
                Failure::new(
                    Kind::Internal,
                    anyhow::Error::new(e).context(format!("cannot open lock file {}", path.display())),
                )
            }
        })?;
    let m = file.metadata().map_err(|e| Failure::new(Kind::Internal, e))?;
    let me = unsafe { libc::geteuid() };
    let why = if !m.file_type().is_file() {
        Some("is not a regular file".to_string())
    } else if m.nlink() != 1 {
        Some(format!("has {} hard links (a link to another file?)", m.nlink()))
    } else if m.uid() != me {
        Some(format!(
            "belongs to uid {}, not to the running user (uid {me})",
            m.uid()
        ))
    } else {
        None
    };
    if let Some(why) = why {
        return Err(Failure::msg(
            Kind::Corrupt,
            format!(
                "lock file {} {why}; guard refuses to use it (remove it if it is not yours)",
                path.display()
            ),
        ));
    }
    Ok(file)
}

/// What the lock file of `policy` says, without taking it: `(held_by_a_live_process, holder)`.
pub fn inspect(store: &dyn Store, policy: &str) -> Result<(bool, Option<Holder>)> {
    if let Some(leaser) = store.leaser() {
        let (held, holder) = leaser.inspect_lease(&keys::lock_key(policy))?;
        return Ok((held, holder.and_then(|h| serde_json::from_value(h).ok())));
    }
    let Some(root) = store.local_root() else {
        return Ok((false, None));
    };
    let path = root.join(keys::lock_key(policy));
    let Ok(mut f) = open_lock_file(&path, false) else {
        return Ok((false, None));
    };
    let holder = read_holder(&mut f);
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    let held = rc != 0;
    if !held {
        unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_UN) };
    }
    Ok((held, holder))
}

/// Take the policy's lock or fail with [`Kind::Locked`] naming the holder.
pub fn acquire(store: &dyn Store, policy: &str, command: &str, run_id: Option<&str>) -> Result<Lock, Failure> {
    // The flock lives in the store directory, or for a remote store in its local state
    // directory (guards on this machine); a remote store adds a lease object (other machines).
    let root = crate::store::state::state_dir(store)?;
    let path = root.join(keys::lock_key(policy));
    crate::store::local::private_dir(&root, "locks")?;
    let mut file = open_lock_file(&path, true)?;
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let who = read_holder(&mut file)
                .map(|h| h.to_string())
                .unwrap_or_else(|| "another process".into());
            return Err(Failure::msg(
                Kind::Locked,
                format!(
                    "policy {policy} is locked by another guard: {who}; lock file {}",
                    path.display()
                ),
            ));
        }
        return Err(Failure::new(Kind::Internal, err));
    }
    let mut taken_over = read_holder(&mut file);
    let me = Holder {
        host: crate::clock::hostname(),
        pid: std::process::id(),
        since: crate::clock::rfc3339(crate::clock::now()),
        command: crate::secrets::redact(command),
        run_id: run_id.map(str::to_string),
    };
    let remote = match store.leaser() {
        None => None,
        Some(leaser) => match leaser.lease(&keys::lock_key(policy), &serde_json::to_value(&me)?)? {
            LeaseOutcome::Acquired {
                lease,
                taken_over: stale,
            } => {
                taken_over = stale.and_then(|h| serde_json::from_value(h).ok()).or(taken_over);
                Some(lease)
            }
            LeaseOutcome::Held { holder, .. } => {
                let who = holder
                    .and_then(|h| serde_json::from_value::<Holder>(h).ok())
                    .map(|h| h.to_string());
                return Err(Failure::msg(
                    Kind::Locked,
                    format!(
                        "policy {policy} is locked by another guard: {}; lock object {}/{}",
                        who.unwrap_or_else(|| "unknown holder".into()),
                        store.location(),
                        keys::lock_key(policy)
                    ),
                ));
            }
        },
    };
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    file.write_all(serde_json::to_string(&me)?.as_bytes())?;
    file.sync_all()?;
    Ok(Lock {
        file,
        path,
        taken_over,
        remote,
    })
}

impl Drop for Lock {
    fn drop(&mut self) {
        drop(self.remote.take());
        // Clear the holder first: an empty lock file means "released cleanly".
        let _ = self.file.set_len(0);
        let _ = self.file.sync_all();
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// [`acquire`], but while another guard holds the lock wait up to `wait` for it (`--wait`),
/// calling `waiting` once with what holds it. A lock still held at the deadline is exit 75, as
/// without `--wait`. Nothing has been done yet while guard waits, so a signal simply ends it.
pub fn acquire_waiting(
    store: &dyn Store,
    policy: &str,
    command: &str,
    run_id: Option<&str>,
    wait: Option<std::time::Duration>,
    mut waiting: impl FnMut(&str),
) -> Result<Lock, Failure> {
    let Some(wait) = wait else {
        return acquire(store, policy, command, run_id);
    };
    let deadline = std::time::Instant::now() + wait;
    let mut said = false;
    loop {
        match acquire(store, policy, command, run_id) {
            Err(f) if f.kind == Kind::Locked => {
                let now = std::time::Instant::now();
                if now >= deadline {
                    return Err(Failure::new(
                        Kind::Locked,
                        f.error.context(format!(
                            "still locked after waiting {}",
                            humantime::format_duration(wait)
                        )),
                    ));
                }
                if !said {
                    waiting(&format!("{:#}", f.error));
                    said = true;
                }
                std::thread::sleep((deadline - now).min(std::time::Duration::from_millis(250)));
            }
            other => return other,
        }
    }
}
