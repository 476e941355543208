//! Hot copies (issue 17): the pre-run copy of a guarded run kept beside the live database, so
//! a failure is put back by renames instead of a decompression.
//!
//! The online-backup copy is written to `.<file>.guard-hot-<run>` in the database's own
//! directory (same filesystem: a rename is atomic), `quick_check`ed and given the live file's
//! mode and owner; its identity (device, inode, size, mtime and ctime, which no write can leave
//! unchanged) is recorded with the snapshot (`meta.hot_id`, journaled as `pending`), and the
//! command starts: the hot copy is the verified snapshot. Its store artifact is compressed from
//! it while the command runs ([`super::SqliteTarget::write_hot`]), only while its identity is
//! the recorded one before and after the read, so the bytes the artifact's content checksum
//! covers are the bytes of the file. (A local store without room for it gets it first.)
//!
//! On a failure ([`swap_in`]): the failed database is hard-linked to `.<file>.guard-failed-<run>`,
//! its `-wal` renamed beside that, its `-shm`/`-journal` removed, and the hot copy renamed over
//! the live path (one `rename(2)`: the path always holds a database), then the directory is
//! fsynced. The proof of the restore is the identity: the live path now names the very inode
//! whose bytes the snapshot's checksum covers, unchanged since. The failed state set aside is
//! then compressed into the store as the rescue snapshot and removed.
//!
//! Names are computed from the policy's path and the run id; a manifest never names a file.

use std::fs;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::{locks, sidecars, SqliteTarget};
use crate::manifest::TargetRecord;
use crate::store::local::sync_dir;

/// Is `tag` a run id guard could have made (no path separators, no `..`)?
fn valid_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= 64
        && tag.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        && !tag.contains("..")
}

/// `dir/.<name><infix><tag>` beside `file`.
fn beside(file: &Path, infix: &str, tag: &str) -> Option<PathBuf> {
    if !valid_tag(tag) {
        return None;
    }
    let name = file.file_name()?.to_string_lossy().into_owned();
    Some(file.with_file_name(format!(".{name}{infix}{tag}")))
}

/// The hot copy of `file` kept for run `tag`.
pub fn hot_path(file: &Path, tag: &str) -> Option<PathBuf> {
    beside(file, ".guard-hot-", tag)
}

/// Where run `tag` sets the failed state of `file` aside.
pub fn aside_path(file: &Path, tag: &str) -> Option<PathBuf> {
    beside(file, ".guard-failed-", tag)
}

/// The identity of a file: device, inode, size, mtime and ctime (ns). A write, truncate,
/// chmod or rename of it changes one of them.
pub fn identity(p: &Path) -> Result<String> {
    let m = fs::symlink_metadata(p).with_context(|| format!("cannot stat {}", p.display()))?;
    Ok(format!(
        "{}:{}:{}:{}.{:09}:{}.{:09}",
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec()
    ))
}

/// Bytes free for an unprivileged writer on the filesystem of `dir` (`GUARD_TEST_HOT_FREE`
/// stands in for it in tests).
pub(crate) fn free_bytes(dir: &Path) -> Result<u64> {
    if let Some(v) = std::env::var("GUARD_TEST_HOT_FREE").ok().and_then(|v| v.parse().ok()) {
        return Ok(v);
    }
    statvfs_free(dir)
}

/// Is there room in the local store at `root` for the artifact of a `raw`-byte copy, however
/// little it compresses (its raw size plus 1/16 and 16 MiB)? `Err(why)` when not: the
/// artifact is then written before the command, so a full store still stops the run there.
pub fn store_room(root: &Path, raw: u64) -> std::result::Result<(), String> {
    let need = raw + raw / 16 + (16 << 20);
    match statvfs_free(root) {
        Ok(free) if free < need => Err(format!(
            "the store {} has {} free, the copy is {}",
            root.display(),
            crate::ui::bytes(free),
            crate::ui::bytes(raw)
        )),
        Ok(_) => Ok(()),
        Err(e) => Err(format!("{e:#}")),
    }
}

fn statvfs_free(dir: &Path) -> Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())?;
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("statvfs {}", dir.display()));
    }
    Ok(s.f_bavail as u64 * s.f_frsize as u64)
}

/// Where the pre-run copy of `file` goes for run `tag`: beside it, created empty and private
/// (0600) for SQLite to fill — or `Err(why)` when it cannot (not enough free space there: the
/// database and its WAL plus a 1/16 margin and 16 MiB; the directory not writable), and the
/// copy goes to scratch as before.
pub fn create(file: &Path, tag: &str) -> std::result::Result<PathBuf, String> {
    let hot = hot_path(file, tag).ok_or_else(|| format!("run id {tag:?} cannot name a file"))?;
    let dir = file.parent().unwrap_or(Path::new("."));
    let size = |p: &Path| fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let need = size(file) + size(&sidecars(file)[0]);
    let need = need + need / 16 + (16 << 20);
    let free = free_bytes(dir).map_err(|e| format!("{e:#}"))?;
    if free < need {
        return Err(format!(
            "{} has {} free, a hot copy needs {}",
            dir.display(),
            crate::ui::bytes(free),
            crate::ui::bytes(need)
        ));
    }
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&hot)
        .map_err(|e| format!("cannot create {}: {e}", hot.display()))?;
    Ok(hot)
}

/// Give the hot copy the live file's mode and owner (recorded in `rec`), before its identity
/// is taken.
pub fn finish(hot: &Path, rec: &TargetRecord) -> Result<()> {
    for s in sidecars(hot) {
        let _ = fs::remove_file(s);
    }
    if let Some(mode) = rec.meta.get("mode").and_then(|m| u32::from_str_radix(m, 8).ok()) {
        fs::set_permissions(hot, fs::Permissions::from_mode(mode))?;
    }
    if let (Some(u), Some(g)) = (rec.meta.get("uid"), rec.meta.get("gid")) {
        if let (Ok(u), Ok(g)) = (u.parse::<u32>(), g.parse::<u32>()) {
            let _ = std::os::unix::fs::chown(hot, Some(u), Some(g));
        }
    }
    Ok(())
}

/// Remove run `tag`'s hot copy of `file` (and any sidecar SQLite left), if there is one.
pub fn remove(file: &Path, tag: &str) {
    if let Some(hot) = hot_path(file, tag) {
        let _ = fs::remove_file(&hot);
        for s in sidecars(&hot) {
            let _ = fs::remove_file(s);
        }
    }
}

/// The live file a swap replaces: the policy's path itself, a plain file (a symlinked path
/// takes the decompressing restore, which keeps the link).
fn plain_live(t: &SqliteTarget) -> Option<PathBuf> {
    let m = fs::symlink_metadata(&t.path).ok()?;
    m.is_file().then(|| t.path.clone())
}

/// Put `rec` back by renaming run `tag`'s hot copy over the live file, the failed state set
/// aside beside it. `Ok(None)`: there is no usable hot copy (nothing was changed; restore from
/// the store). `Ok(Some(aside))`: restored and proven (the live path names the hot copy's
/// inode, unchanged since its checksum was taken); the failed database is at `aside` (its WAL
/// beside it), or `aside` does not exist when there was no live database.
pub fn swap_in(t: &SqliteTarget, rec: &TargetRecord, tag: &str) -> Result<Option<PathBuf>> {
    let (Some(want), Some(rec_tag)) = (rec.meta.get("hot_id"), rec.meta.get("hot")) else {
        return Ok(None);
    };
    if rec_tag != tag || rec.absent || rec.meta.contains_key("resolved") {
        return Ok(None);
    }
    let live = match plain_live(t) {
        Some(p) => p,
        None if !t.path.exists() && fs::symlink_metadata(&t.path).is_err() => t.path.clone(),
        None => return Ok(None),
    };
    let (Some(hot), Some(aside)) = (hot_path(&live, tag), aside_path(&live, tag)) else {
        return Ok(None);
    };
    if !hot.exists() {
        return Ok(None);
    }
    let got = identity(&hot)?;
    if &got != want {
        bail!(
            "the hot copy {} changed after its checksum was taken ({got}, recorded {want}); it is not used",
            hot.display()
        );
    }
    if let Some((pid, what)) = locks::user_of(&live) {
        bail!(
            "target {}: {} is in use: {} holds {what}; nothing was changed. Stop that process (or let it finish), then restore again",
            t.spec.name,
            t.path.display(),
            locks::describe(pid)
        );
    }
    if locks::hot_journal(&live) {
        // Its last transaction never finished: the decompressing restore (and its raw rescue)
        // handle that case.
        return Ok(None);
    }
    let [wal, shm, journal] = sidecars(&live);
    let [aside_wal, aside_shm, aside_journal] = sidecars(&aside);
    // An earlier attempt that was interrupted set a failed state aside already: it is kept as
    // it is (`guard recover` names it), and this restore takes the path through the store.
    if [&aside, &aside_wal, &aside_shm, &aside_journal]
        .iter()
        .any(|p| fs::symlink_metadata(p).is_ok())
    {
        return Ok(None);
    }
    let had_live = live.exists();
    if had_live {
        fs::hard_link(&live, &aside)
            .with_context(|| format!("cannot set the failed state aside as {}", aside.display()))?;
    }
    let undo = |moved_wal: bool| {
        if moved_wal {
            let _ = fs::rename(&aside_wal, &wal);
        }
        let _ = fs::remove_file(&aside);
    };
    let moved_wal = match fs::rename(&wal, &aside_wal) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => {
            undo(false);
            return Err(e).with_context(|| format!("cannot set {} aside", wal.display()));
        }
    };
    for p in [&shm, &journal] {
        match fs::remove_file(p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                undo(moved_wal);
                return Err(e).with_context(|| format!("cannot remove {}", p.display()));
            }
        }
    }
    crate::faults::test_pause("sqlite-swap");
    if let Err(e) = fs::rename(&hot, &live) {
        undo(moved_wal);
        return Err(e).with_context(|| format!("cannot rename {} over {}", hot.display(), live.display()));
    }
    sync_dir(live.parent().unwrap_or(Path::new(".")))?;
    // The proof: the live path names the hot copy's inode, of the recorded size.
    let now = fs::symlink_metadata(&live)?;
    let want_ino_size: Vec<&str> = want.split(':').skip(1).take(2).collect();
    if want_ino_size != [now.ino().to_string(), now.size().to_string()] {
        bail!("{} is not the hot copy after the rename", live.display());
    }
    Ok(Some(aside))
}

/// Remove the failed state set aside at `aside` (with its sidecars), once a rescue snapshot
/// holds it.
pub fn remove_aside(aside: &Path) -> Result<()> {
    for s in sidecars(aside) {
        let _ = fs::remove_file(s);
    }
    match fs::remove_file(aside) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", aside.display()))
        }
        _ => Ok(()),
    }
}
