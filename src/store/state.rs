//! What guard keeps on this machine beside a store: its state directory (catalog, lock
//! files, run logs being written) and private scratch directories.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Result;

use super::Store;

/// A local directory for what a store keeps on this machine: the store's own directory when
/// it is local; for a remote store, a private cache directory named after the store's
/// location (`$XDG_CACHE_HOME/guard/<hash>`, else `~/.cache/guard/<hash>`) holding its
/// catalog (rebuildable from the manifests), lock files and run logs being written.
pub fn state_dir(store: &dyn Store) -> Result<PathBuf> {
    if let Some(root) = store.local_root() {
        note_local_dir(root);
        return Ok(root.to_path_buf());
    }
    let dir = remote_state_dir(&store.location())?;
    super::files::create_dir_all_private(&dir)?;
    note_local_dir(&dir);
    Ok(dir)
}

/// Where [`state_dir`] puts a remote store's state, for its `location()`; nothing is created.
pub fn remote_state_dir(location: &str) -> Result<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        })
        .unwrap_or_else(std::env::temp_dir);
    let id = crate::archive::digest(location.as_bytes())?.sha256;
    Ok(base.join("guard").join(&id[..16]))
}

/// Local directories guard itself writes in this process (a local store's root, a remote
/// store's state directory).
static LOCAL_DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Remember a directory guard writes in, so that a `dir` target holding it leaves it out.
pub fn note_local_dir(dir: &Path) {
    if let Ok(mut v) = LOCAL_DIRS.lock() {
        if !v.iter().any(|d| d == dir) {
            v.push(dir.to_path_buf());
        }
    }
}

/// Every directory [`note_local_dir`] was told of: a `dir` target never snapshots, restores or
/// removes what lies in them.
pub fn local_dirs() -> Vec<PathBuf> {
    LOCAL_DIRS.lock().map(|v| v.clone()).unwrap_or_default()
}

/// A private scratch directory: `tmp/guard-XXXXXX` in the store's state directory (the store
/// itself when it is local: same disk, same quota). It is 0700 whatever the umask, and `tmp/`
/// is checked to be a real directory of the running user first (never a planted link).
///
/// The directory is held with an exclusive `flock` for as long as it lives, so a scratch
/// directory whose lock can be taken belonged to a guard that died ([`scratch_is_held`]):
/// `guard status` names it and `guard prune` removes it; the kernel drops the lock with its
/// holder, however it died.
pub fn scratch_dir(store: &dyn Store) -> Result<Scratch> {
    let base = super::files::private_dir(&state_dir(store)?, SCRATCH)?;
    let dir = tempfile::Builder::new()
        .prefix(SCRATCH_PREFIX)
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir_in(&base)?;
    let held = open_dir(dir.path())?;
    // SAFETY: flock on a descriptor we own.
    if unsafe {
        libc::flock(
            std::os::unix::io::AsRawFd::as_raw_fd(&held),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    } != 0
    {
        anyhow::bail!(
            "cannot lock scratch directory {}: {}",
            dir.path().display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(Scratch { dir, _held: held })
}

/// The directory, under a state directory, that holds scratch directories.
pub const SCRATCH: &str = "tmp";
/// How a scratch directory's name begins.
pub const SCRATCH_PREFIX: &str = "guard-";

/// A scratch directory from [`scratch_dir`], removed (and its lock released) when dropped.
pub struct Scratch {
    dir: tempfile::TempDir,
    _held: std::fs::File,
}

impl Scratch {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

fn open_dir(p: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(p)
}

/// Is the scratch directory `p` held by a live guard? `false` when its lock can be taken (its
/// guard died, or it is gone); `true` when it cannot be opened or locked for another reason
/// (fail safe: it is then never removed).
pub fn scratch_is_held(p: &Path) -> bool {
    let Ok(f) = open_dir(p) else {
        return std::fs::symlink_metadata(p).is_ok();
    };
    let fd = std::os::unix::io::AsRawFd::as_raw_fd(&f);
    // SAFETY: flock on a descriptor we own; closing `f` releases it.
    unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) != 0 }
}
