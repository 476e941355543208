//! What killed guards leave behind, that no listing counts (red-team finding 19):
//!
//! - **scratch directories** (`tmp/guard-XXXXXX` in the store's state directory: the store when
//!   it is local, the private cache directory of a remote store) holding uncompressed copies of
//!   the data; a live guard holds its own with an `flock` ([`crate::store::state::scratch_is_held`]),
//!   so one whose lock can be taken is a dead guard's;
//! - **partial artifacts** and **cut-short prune markers** in a local store
//!   (`snapshots/ID/.NAME.guard-tmp-*`), which `LocalStore::list` hides; written only by a guard
//!   holding a policy lock, so they are reported only while no lock in the store is held;
//! - **temporary files beside a live target** (`.NAME.guard-tmp-*`, a SQLite restore's copy;
//!   `.NAME.guard-restore-*` / `.NAME.guard-old-*`, a directory restore's trees), written only by a
//!   restore under the policy's lock. Those of a directory swap in progress (its
//!   `.NAME.guard-swap` marker exists) are `guard recover`'s to finish and are left alone.
//!
//! `guard status` names them ([`find`]); `guard prune`, which holds the policy's lock, removes
//! them ([`remove`]) — never while another guard holds a lock in the store, never a scratch
//! directory whose guard is alive, and never a file some process has open.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Serialize;

use crate::policy::Policy;
use crate::store::{keys, state, Store};

/// One leftover: where, what it is, how many bytes it holds.
#[derive(Debug, Clone, Serialize)]
pub struct Leftover {
    pub path: PathBuf,
    pub what: &'static str,
    pub bytes: u64,
}

const SCRATCH: &str = "scratch copy of a guard that died";
const PARTIAL: &str = "partial artifact of a snapshot whose guard died";
const MARKER: &str = "prune marker whose write was cut short";
const BESIDE: &str = "temporary copy beside the live target, left by a restore whose guard died";

fn size_of(p: &Path) -> u64 {
    walkdir::WalkDir::new(p)
        .follow_links(false)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// The entries of `dir` (not following links), sorted by name.
fn entries(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<(String, PathBuf)> = rd
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    v.sort();
    v
}

/// The state directory of `store` when it exists (nothing is created).
fn state_root(store: &dyn Store) -> Option<PathBuf> {
    match store.local_root() {
        Some(r) => Some(r.to_path_buf()),
        None => state::remote_state_dir(&store.location()).ok().filter(|d| d.is_dir()),
    }
}

/// What killed guards left for `policy`: in its store, and beside its targets. `except` is a
/// policy whose lock the caller holds (prune), not counted as another guard at work.
pub fn find(store: &dyn Store, policy: &Policy, except: Option<&str>) -> Vec<Leftover> {
    let mut out = Vec::new();
    let Some(root) = state_root(store) else {
        return out;
    };
    for (name, p) in entries(&root.join(state::SCRATCH)) {
        if name.starts_with(state::SCRATCH_PREFIX) && !state::scratch_is_held(&p) {
            out.push(Leftover {
                bytes: size_of(&p),
                path: p,
                what: SCRATCH,
            });
        }
    }
    // Partial artifacts, prune markers and the files beside the targets are written only under
    // a policy's lock: while a guard holds one they may be its own.
    if other_guard_at_work(&root, except) {
        return out;
    }
    if store.local_root().is_some() {
        for (_, dir) in entries(&root.join(keys::SNAPSHOTS.trim_end_matches('/'))) {
            if !std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
                continue;
            }
            for (name, f) in entries(&dir) {
                if name.starts_with('.') && name.contains(".guard-tmp-") {
                    out.push(Leftover {
                        bytes: size_of(&f),
                        what: if name.starts_with(".prune.json.") {
                            MARKER
                        } else {
                            PARTIAL
                        },
                        path: f,
                    });
                }
            }
        }
    }
    for t in policy.targets.iter().filter(|t| t.unresolved.is_empty()) {
        for live in t.kind.local_paths() {
            out.extend(beside(&live));
        }
    }
    out
}

/// guard's temporary siblings of the live path `live`, unless a directory swap in progress
/// needs them.
fn beside(live: &Path) -> Vec<Leftover> {
    let (Some(parent), Some(name)) = (live.parent(), live.file_name()) else {
        return Vec::new();
    };
    let name = name.to_string_lossy();
    let prefix = format!(".{name}.guard-");
    if std::fs::symlink_metadata(parent.join(format!("{prefix}swap"))).is_ok() {
        return Vec::new();
    }
    entries(parent)
        .into_iter()
        .filter(|(n, _)| {
            n.strip_prefix(&prefix).is_some_and(|rest| {
                ["tmp-", "restore-", "old-"]
                    .iter()
                    .any(|w| rest.strip_prefix(w).is_some_and(|x| !x.is_empty() && !x.contains('.')))
            })
        })
        .map(|(_, p)| Leftover {
            bytes: size_of(&p),
            path: p,
            what: BESIDE,
        })
        .collect()
}

/// Is a lock in `root/locks/` held by a live guard, other than the lock of `except`?
fn other_guard_at_work(root: &Path, except: Option<&str>) -> bool {
    let own = except.map(|p| root.join(keys::lock_key(p)));
    for (_, p) in entries(&root.join("locks")) {
        if Some(&p) == own.as_ref() {
            continue;
        }
        let Ok(f) = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&p)
        else {
            continue;
        };
        // SAFETY: flock on a descriptor we own; closing `f` releases it.
        if unsafe { libc::flock(std::os::unix::io::AsRawFd::as_raw_fd(&f), libc::LOCK_SH | libc::LOCK_NB) } != 0 {
            return true;
        }
    }
    false
}

use std::os::unix::fs::OpenOptionsExt;

/// Does a live process have `path` (or anything under it) open, or as its working directory?
/// Read from `/proc`; where that cannot be read, assume it is in use.
pub fn in_use(path: &Path) -> bool {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return true;
    };
    for p in rd.flatten() {
        if !p.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let base = p.path();
        if std::fs::read_link(base.join("cwd")).is_ok_and(|c| c.starts_with(path)) {
            return true;
        }
        let Ok(fds) = std::fs::read_dir(base.join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|t| t.starts_with(path)) {
                return true;
            }
        }
    }
    false
}

/// What [`remove`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Removed {
    pub removed: Vec<Leftover>,
    /// Kept because a process has them open.
    pub in_use: Vec<Leftover>,
    pub bytes_freed: u64,
}

/// Remove `items` (from [`find`], by a caller holding the policy's lock), except what a live
/// process has open; a snapshot directory left empty goes too.
pub fn remove(items: Vec<Leftover>) -> Result<Removed> {
    let mut r = Removed::default();
    for l in items {
        if in_use(&l.path) || (l.what == SCRATCH && state::scratch_is_held(&l.path)) {
            r.in_use.push(l);
            continue;
        }
        let res = match std::fs::symlink_metadata(&l.path) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&l.path),
            Ok(_) => std::fs::remove_file(&l.path),
            Err(e) => Err(e),
        };
        match res {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => anyhow::bail!("cannot remove {}: {e}", l.path.display()),
        }
        if matches!(l.what, PARTIAL | MARKER) {
            if let Some(dir) = l.path.parent() {
                // Only when empty: a snapshot directory holding nothing else.
                let _ = std::fs::remove_dir(dir);
            }
        }
        r.bytes_freed += l.bytes;
        r.removed.push(l);
    }
    Ok(r)
}
