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
    super::local::create_dir_all_private(&dir)?;
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

/// A private scratch directory, inside the store when it is local (same disk, same quota).
/// It is 0700 whatever the umask, and `tmp/` in a store is checked to be a real directory of
/// the running user first (never a planted link).
pub fn scratch_dir(store: &dyn Store) -> Result<tempfile::TempDir> {
    let base = match store.local_root() {
        Some(root) => super::local::private_dir(root, "tmp")?,
        None => {
            let base = std::env::temp_dir();
            super::local::create_dir_all_private(&base)?;
            base
        }
    };
    Ok(tempfile::Builder::new()
        .prefix("guard-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir_in(&base)?)
}
