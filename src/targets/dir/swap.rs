//! Putting a verified tree in place of the live one by rename, so the live path never goes
//! missing: `renameat2(RENAME_EXCHANGE)` swaps the two names in one step. Where the filesystem
//! cannot exchange (`EINVAL`, `ENOSYS`, `EOPNOTSUPP`), two renames are used, and a marker file
//! beside the tree (`.NAME.guard-swap`) names both siblings first, so the next restore, snapshot
//! or `guard recover` of the target finishes the swap ([`finish_interrupted`]).

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::store::local::{sync_dir, write_atomic};

/// The marker of a swap in progress beside `live`.
fn marker(live: &Path) -> PathBuf {
    super::sibling_named(live, "swap")
}

/// Swap two existing paths atomically. `Ok(false)`: this filesystem cannot.
pub(super) fn exchange(a: &Path, b: &Path) -> io::Result<bool> {
    if crate::faults::test_flag("GUARD_TEST_NO_RENAME_EXCHANGE") {
        return Ok(false);
    }
    let a = CString::new(a.as_os_str().as_bytes())?;
    let b = CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: two NUL-terminated paths; renameat2 reads them and touches nothing else.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP) => Ok(false),
        _ => Err(e),
    }
}

/// Replace `live` (a directory, a file, or nothing) with the verified tree at `staging`, a
/// sibling of it, and remove what was live.
pub(super) fn swap_in(staging: &Path, live: &Path) -> Result<()> {
    let parent = live.parent().unwrap_or(Path::new("."));
    if fs::symlink_metadata(live).is_err() {
        fs::rename(staging, live)?;
        return sync_dir(parent).map_err(Into::into);
    }
    let m = marker(live);
    let staging_name = name_of(staging);
    // Whether or not the exchange happens, the live name holds a whole tree and `staging` is
    // to be removed: the marker says so before anything moves.
    write_atomic(
        &m,
        format!("{{\"mode\":\"exchanged\",\"remove\":{staging_name:?}}}\n").as_bytes(),
    )?;
    if exchange(staging, live)? {
        // The live name now holds the restored tree, and `staging` the replaced one.
        sync_dir(parent)?;
        crate::faults::test_pause("dir-swap");
        remove_any(staging).with_context(|| format!("removing the replaced tree {}", staging.display()))?;
    } else {
        let old = super::sibling(live, "old");
        let old_name = name_of(&old);
        write_atomic(
            &m,
            format!("{{\"mode\":\"renames\",\"old\":{old_name:?},\"staging\":{staging_name:?}}}\n").as_bytes(),
        )?;
        fs::rename(live, &old)?;
        crate::faults::test_pause("dir-swap");
        if let Err(e) = fs::rename(staging, live) {
            let _ = fs::rename(&old, live);
            let _ = fs::remove_file(&m);
            return Err(e.into());
        }
        sync_dir(parent)?;
        remove_any(&old).with_context(|| format!("removing the replaced tree {}", old.display()))?;
    }
    fs::remove_file(&m)?;
    sync_dir(parent)?;
    Ok(())
}

fn name_of(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

pub(super) fn remove_any(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Finish a swap that a killed guard left half done beside `live`: put the verified tree (or,
/// failing that, the replaced one) under the live name and remove the leftovers. Returns what
/// it did, for a warning; `None` when there was nothing to finish.
pub fn finish_interrupted(live: &Path) -> Result<Option<String>> {
    let m = marker(live);
    let text = match fs::read_to_string(&m) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", m.display())),
    };
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not a guard swap marker", m.display()))?;
    // Only siblings guard names itself: never a path the marker could point elsewhere with.
    let prefix = format!(".{}.guard-", name_of(live));
    let sib = |k: &str| -> Result<Option<PathBuf>> {
        match v.get(k).and_then(|x| x.as_str()) {
            None => Ok(None),
            Some(n) if n.starts_with(&prefix) && !n.contains('/') => Ok(Some(live.with_file_name(n))),
            Some(n) => bail!("{}: names {n:?}, not a sibling guard made", m.display()),
        }
    };
    let parent = live.parent().unwrap_or(Path::new("."));
    let did = match v.get("mode").and_then(|x| x.as_str()) {
        Some("exchanged") => {
            if let Some(r) = sib("remove")? {
                remove_any(&r)?;
            }
            format!(
                "removed the tree a killed restore had replaced beside {}",
                live.display()
            )
        }
        Some("renames") => {
            let (old, staging) = (sib("old")?, sib("staging")?);
            let mut did = String::new();
            if fs::symlink_metadata(live).is_err() {
                // Killed between the two renames: the verified tree goes in (it was checked
                // against the manifest before the first rename), or else the replaced one back.
                for (from, what) in [(&staging, "restored"), (&old, "replaced")] {
                    if let Some(p) = from.as_ref().filter(|p| p.exists()) {
                        fs::rename(p, live)?;
                        did = format!(
                            "put the {what} tree back under {} (a restore was killed between its two renames)",
                            live.display()
                        );
                        break;
                    }
                }
            }
            for p in [old, staging].into_iter().flatten() {
                remove_any(&p)?;
            }
            if did.is_empty() {
                format!("removed what a killed restore left beside {}", live.display())
            } else {
                did
            }
        }
        _ => bail!("{}: not a guard swap marker", m.display()),
    };
    sync_dir(parent)?;
    fs::remove_file(&m)?;
    sync_dir(parent)?;
    Ok(Some(did))
}
