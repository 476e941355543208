//! Owners and modes of restored entries when the snapshot's record is not authenticated
//! (issue 16, R17): read from the store without a store key, or used with `--trust-unsigned`.
//! Such a tar's headers are whatever someone with write access to the store put there, so as
//! root they would hand files to any user and set any mode. Instead:
//!
//! - an entry that exists live (same kind) keeps its live owner and mode;
//! - a new entry takes the owner its parent ends up with (the live root's for a top-level
//!   entry; the running user's when the root itself is gone) and the recorded mode without
//!   setuid, setgid, sticky and world-write bits (the group is the live parent's, so group
//!   bits grant nothing to anyone the live tree does not already trust).
//!
//! Records guard itself holds (the guarded run's own snapshot, in memory) and records whose
//! manifest the store key authenticates restore the owners and modes they recorded.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::manifest::FileEntry;

/// Owner and mode an entry gets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Meta {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

/// The owner and mode of each entry of `want` (paths relative to the target's root, parents
/// before children as a sorted listing has them), read from the live tree before anything is
/// written: `dest_of` maps an entry to its live path, `root` is the live root. `setid_mask`
/// is cleared from every mode, the live ones too: the content is the snapshot's.
pub(super) fn from_live(
    want: &[FileEntry],
    dest_of: &dyn Fn(&str) -> PathBuf,
    root: &Path,
    setid_mask: u32,
) -> BTreeMap<String, Meta> {
    let root_owner = match fs::metadata(root) {
        Ok(m) => (m.uid(), m.gid()),
        // SAFETY: geteuid/getegid have no preconditions and cannot fail.
        Err(_) => unsafe { (libc::geteuid(), libc::getegid()) },
    };
    let mut sorted: Vec<&FileEntry> = want.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    let mut out: BTreeMap<String, Meta> = BTreeMap::new();
    for w in sorted {
        let live = fs::symlink_metadata(dest_of(&w.path))
            .ok()
            .filter(|m| kind_of(m) == w.kind);
        let meta = match live {
            Some(m) => Meta {
                uid: m.uid(),
                gid: m.gid(),
                mode: m.permissions().mode() & 0o7777 & !setid_mask,
            },
            None => {
                let parent = w.path.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
                let (uid, gid) = match out.get(parent) {
                    Some(p) if !w.path.is_empty() => (p.uid, p.gid),
                    _ => root_owner,
                };
                Meta {
                    uid,
                    gid,
                    mode: w.mode & 0o775 & !setid_mask,
                }
            }
        };
        out.insert(w.path.clone(), meta);
    }
    out
}

fn kind_of(m: &fs::Metadata) -> &'static str {
    let t = m.file_type();
    if t.is_symlink() {
        "symlink"
    } else if t.is_dir() {
        "dir"
    } else {
        "file"
    }
}

/// Give each entry of `metas` its owner (as root) and mode, at `at(path)`: owners first, since
/// a chown clears set-user-ID bits; links keep their mode (Linux has none to set).
pub(super) fn apply(metas: &BTreeMap<String, Meta>, at: &dyn Fn(&str) -> PathBuf) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() == 0 };
    for (path, m) in metas {
        let p = at(path);
        let now = fs::symlink_metadata(&p).with_context(|| format!("reading {}", p.display()))?;
        if root && (now.uid(), now.gid()) != (m.uid, m.gid) {
            std::os::unix::fs::lchown(&p, Some(m.uid), Some(m.gid))
                .with_context(|| format!("giving {} to {}:{}", p.display(), m.uid, m.gid))?;
        }
        if !now.file_type().is_symlink() {
            let now = fs::symlink_metadata(&p)?;
            if now.permissions().mode() & 0o7777 != m.mode {
                fs::set_permissions(&p, fs::Permissions::from_mode(m.mode))
                    .with_context(|| format!("setting the mode of {}", p.display()))?;
            }
        }
    }
    Ok(())
}
