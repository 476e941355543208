//! Restoring a target's files in place: for a directory that cannot be swapped whole (the
//! working directory, a mount point, the policy's own directory, one with exclusions) and for
//! files and several paths. The directories stay; their contents are put back.
//!
//! 1. **Stage** (nothing live changes): the artifact is streamed once; every entry must lie in
//!    the target's paths and not be excluded; files whose content differs from the live file
//!    are written into a private staging directory under the root
//!    (`.guard-inplace-XXXXXXXX`), and the whole stream is compared with the manifest's
//!    listing. Any difference stops the restore with nothing changed.
//! 2. **Commit**, recorded first in `progress.json` in the staging directory: remove what the
//!    snapshot does not have (never an excluded path, never guard's store), create its
//!    directories, rename each staged file over its live name (one atomic rename per file),
//!    replace changed symlinks, then set every mode and mtime, fsync, and remove the staging
//!    directory.
//!
//! A guard killed during the commit leaves the staging directory and its `progress.json`: the
//! target then refuses to be snapshotted ("an in-place restore … was interrupted") until a
//! restore runs again (`guard recover` does, in a guarded run's journal), which starts over:
//! it compares the live files with the snapshot again and finishes the job.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest as _, Sha256};

use super::tree::{compare_listings, dir_entry, file_entry, scan_items, symlink_entry, within, Filter};
use crate::manifest::{FileEntry, TargetRecord};
use crate::store::local::{create_dir_all_private, private_temp_beside, sync_dir, write_atomic};
use crate::store::Store;

const STAGING_PREFIX: &str = ".guard-inplace-";

/// An in-place restore a killed guard left in its commit step under `root`: (staging dir, the
/// snapshot it was restoring).
pub(super) fn interrupted(root: &Path) -> Option<(PathBuf, String)> {
    let rd = fs::read_dir(root).ok()?;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with(STAGING_PREFIX) {
            continue;
        }
        let p = e.path();
        let v: serde_json::Value = fs::read(p.join("progress.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        if v["step"] == "commit" {
            return Some((p, v["snapshot"].as_str().unwrap_or("?").to_string()));
        }
    }
    None
}

/// Remove staging directories earlier restores left under `root`.
fn clear_stale(root: &Path) -> Result<()> {
    let Ok(rd) = fs::read_dir(root) else {
        return Ok(());
    };
    for e in rd.flatten() {
        if e.file_name().to_string_lossy().starts_with(STAGING_PREFIX) && e.file_type()?.is_dir() {
            fs::remove_dir_all(e.path()).with_context(|| format!("removing {}", e.path().display()))?;
        }
    }
    Ok(())
}

/// A file of the snapshot, written into staging when the live file differs.
struct Staged {
    file: PathBuf,
}

#[derive(Default)]
struct StageResult {
    listing: Vec<FileEntry>,
    staged: BTreeMap<String, Staged>,
    mtimes: BTreeMap<String, i64>,
    /// Each entry's owner (uid, gid) as its tar header recorded it.
    owners: BTreeMap<String, (u32, u32)>,
}

impl StageResult {
    fn note(&mut self, rel: String, mtime: i64, owner: Option<(u32, u32)>) {
        if let Some(o) = owner {
            self.owners.insert(rel.clone(), o);
        }
        self.mtimes.insert(rel, mtime);
    }
}

/// An entry name from the artifact, checked: relative, no `..`, inside the target's paths and
/// not excluded (a crafted artifact writes nowhere else).
fn checked_name(raw: &Path, items: &[String], filter: &Filter, is_dir: bool) -> Result<String> {
    let mut parts = Vec::new();
    for c in raw.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            Component::CurDir => {}
            _ => bail!("the artifact holds {:?}, a path outside the target", raw),
        }
    }
    let rel = parts.join("/");
    if rel.is_empty() || !within(items, &rel) {
        bail!("the artifact holds {rel:?}, outside the target's paths");
    }
    let name = parts.last().map(String::as_str).unwrap_or("");
    if super::tree::is_guard_temp(name) {
        bail!("the artifact holds {rel:?}, a name guard keeps for its own temporary files");
    }
    // What an `exclude` glob now covers is read (the listing must match) but never written.
    let _ = (filter, is_dir);
    Ok(rel)
}

/// Step 1: stream the artifact, stage what differs from `live`, and list what it holds.
fn stage(
    ar: impl Read,
    items: &[String],
    filter: &Filter,
    need: &BTreeSet<String>,
    staging: &Path,
) -> Result<StageResult> {
    let mut a = tar::Archive::new(ar);
    let mut out = StageResult::default();
    for (n, e) in a.entries()?.enumerate() {
        let mut e = e?;
        let et = e.header().entry_type();
        let raw = e.path()?.into_owned();
        let mode = e.header().mode()? & 0o7777;
        let mtime = e.header().mtime().unwrap_or(0) as i64;
        let owner = match (e.header().uid(), e.header().gid()) {
            (Ok(u), Ok(g)) => u32::try_from(u).ok().zip(u32::try_from(g).ok()),
            _ => None,
        };
        if et.is_file() {
            let rel = checked_name(&raw, items, filter, false)?;
            // Written only where the live file differs from the manifest's; hashed either way
            // (the listing must match the manifest as a whole before anything is committed).
            let mut sink = if need.contains(&rel) {
                let p = staging.join(format!("{n:08}"));
                let f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode_private()
                    .open(&p)?;
                Some((std::io::BufWriter::with_capacity(1 << 20, f), p))
            } else {
                None
            };
            let mut h = Sha256::new();
            let mut buf = vec![0u8; 256 * 1024];
            let mut bytes = 0u64;
            loop {
                let k = e.read(&mut buf)?;
                if k == 0 {
                    break;
                }
                h.update(&buf[..k]);
                bytes += k as u64;
                if let Some((w, _)) = &mut sink {
                    w.write_all(&buf[..k])?;
                }
            }
            if let Some((w, p)) = sink {
                w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
                out.staged.insert(rel.clone(), Staged { file: p });
            }
            out.listing
                .push(file_entry(rel.clone(), bytes, hex::encode(h.finalize()), mode));
            out.note(rel, mtime, owner);
        } else if et.is_dir() {
            let rel = checked_name(&raw, items, filter, true)?;
            out.listing.push(dir_entry(rel.clone(), mode));
            out.note(rel, mtime, owner);
        } else if et.is_symlink() {
            let rel = checked_name(&raw, items, filter, false)?;
            let link = e.link_name()?.map(|l| l.to_string_lossy().into_owned());
            out.listing.push(symlink_entry(rel.clone(), link, mode));
            out.note(rel, mtime, owner);
        } else {
            bail!("the artifact holds {:?} of a kind guard never writes ({et:?})", raw);
        }
    }
    super::tree::drain(a.into_inner())?;
    Ok(out)
}

/// Is guard running as root (so it can give files back to their owners)?
pub(super) fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

trait PrivateMode {
    fn mode_private(&mut self) -> &mut Self;
}

impl PrivateMode for fs::OpenOptions {
    fn mode_private(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.mode(0o600)
    }
}

fn remove_live(p: &Path, is_dir: bool) -> std::io::Result<bool> {
    let r = if is_dir { fs::remove_dir(p) } else { fs::remove_file(p) };
    match r {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        // A directory that still holds excluded entries stays.
        Err(e) if is_dir && e.raw_os_error() == Some(libc::ENOTEMPTY) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Set the mtime of `p` (not following a symlink), to the second.
fn set_mtime(p: &Path, secs: i64) -> std::io::Result<()> {
    let c = CString::new(p.as_os_str().as_bytes())?;
    let t = libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: 0,
    };
    let times = [t, t];
    // SAFETY: a NUL-terminated path and two timespecs, read only.
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Rename `from` over `to`; across filesystems (an item that is a mount point), copy to a
/// temporary file beside `to` first.
fn put(from: &Path, to: &Path) -> Result<()> {
    match fs::rename(from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            let (mut f, tmp) = private_temp_beside(to)?;
            let r = (|| -> Result<()> {
                std::io::copy(&mut fs::File::open(from)?, &mut f)?;
                f.sync_all()?;
                fs::rename(&tmp, to)?;
                Ok(())
            })();
            if r.is_err() {
                let _ = fs::remove_file(&tmp);
            }
            r
        }
        Err(e) => Err(e.into()),
    }
}

/// Restore `rec` in place under `root`. `dest_of` maps an entry's relative path to where it is
/// written (an item that is a symlink to a file is written at the file it leads to).
/// `setid_mask`: mode bits never taken from the artifact (setuid/setgid unless `keep_setid`).
#[allow(clippy::too_many_arguments)] // one call site per layout; a struct would only rename them
pub(super) fn restore(
    root: &Path,
    items: &[String],
    filter: &Filter,
    rec: &TargetRecord,
    want_files: &[FileEntry],
    store: &dyn Store,
    dest_of: &dyn Fn(&str) -> PathBuf,
    setid_mask: u32,
) -> Result<()> {
    clear_stale(root)?;
    fs::create_dir_all(root)?;
    let live: BTreeMap<String, FileEntry> = scan_items(root, items, filter)?
        .into_iter()
        .map(|e| (e.path.clone(), e))
        .collect();
    let staging = root.join(format!("{STAGING_PREFIX}{:08x}", rand::random::<u32>()));
    create_dir_all_private(&staging)?;
    let snapshot = rec
        .artifacts
        .first()
        .and_then(|a| a.key.split('/').nth(1))
        .unwrap_or("?")
        .to_string();
    let progress = |step: &str| {
        write_atomic(
            &staging.join("progress.json"),
            serde_json::json!({"target": rec.name, "snapshot": snapshot, "step": step})
                .to_string()
                .as_bytes(),
        )
    };
    let result = (|| -> Result<()> {
        progress("stage")?;
        // 1. Stage: nothing live changes.
        let need = needed(want_files, &live);
        let staged = stage_artifact(rec, store, items, filter, &need, &staging)?;
        compare_listings(&rec.files, &staged.listing).context("the artifact differs from the manifest")?;

        // Owners and modes of an unauthenticated record come from the live tree, read before
        // anything changes ([`super::owners`]).
        let live_metas = rec
            .untrusted
            .then(|| super::owners::from_live(want_files, dest_of, root, setid_mask));

        // 2. Commit.
        progress("commit")?;
        let want: BTreeMap<&str, &FileEntry> = want_files.iter().map(|f| (f.path.as_str(), f)).collect();
        let mut touched: BTreeSet<PathBuf> = BTreeSet::new();
        remove_unwanted(root, &live, &want, dest_of, &mut touched)?;
        crate::faults::test_pause("dir-inplace-commit");
        write_wanted(root, &want, &staged, dest_of, &mut touched)?;
        set_metadata(&want, &staged, live_metas.as_ref(), dest_of, setid_mask)?;
        for d in &touched {
            if d.is_dir() {
                sync_dir(d)?;
            }
        }
        Ok(())
    })();
    // A failed stage changed nothing: its staging goes. A failed commit keeps its record, so
    // the target says an in-place restore was interrupted until one completes.
    let committing = fs::read(staging.join("progress.json")).is_ok_and(|b| b.windows(8).any(|w| w == b"\"commit\""));
    if result.is_ok() || !committing {
        fs::remove_dir_all(&staging).with_context(|| format!("removing {}", staging.display()))?;
        sync_dir(root)?;
    }
    result
}

/// The snapshot's files whose content the live tree does not already hold.
fn needed(want_files: &[FileEntry], live: &BTreeMap<String, FileEntry>) -> BTreeSet<String> {
    want_files
        .iter()
        .filter(|f| f.kind == "file")
        .filter(|f| {
            !live
                .get(&f.path)
                .is_some_and(|l| l.kind == "file" && l.sha256 == f.sha256)
        })
        .map(|f| f.path.clone())
        .collect()
}

/// Step 1: stream `rec`'s artifact through [`stage`] into `staging`. An absent record (no path
/// existed) has no artifact: everything goes.
fn stage_artifact(
    rec: &TargetRecord,
    store: &dyn Store,
    items: &[String],
    filter: &Filter,
    need: &BTreeSet<String>,
    staging: &Path,
) -> Result<StageResult> {
    let Some(a) = rec.artifacts.first() else {
        return Ok(StageResult::default());
    };
    let (reader, writer) = std::io::pipe()?;
    std::thread::scope(|s| -> Result<StageResult> {
        let h = s.spawn(|| {
            stage(
                std::io::BufReader::with_capacity(1 << 20, reader),
                items,
                filter,
                need,
                staging,
            )
        });
        let r = crate::artifact::read_artifact(store, a, writer);
        let staged = h.join().map_err(|_| anyhow!("tar reader panicked"))?;
        r?;
        staged.context("reading the artifact")
    })
}

/// Step 2a: remove what the snapshot does not have, or has as another kind: children first.
fn remove_unwanted(
    root: &Path,
    live: &BTreeMap<String, FileEntry>,
    want: &BTreeMap<&str, &FileEntry>,
    dest_of: &dyn Fn(&str) -> PathBuf,
    touched: &mut BTreeSet<PathBuf>,
) -> Result<()> {
    for (path, l) in live.iter().rev() {
        if want.get(path.as_str()).is_some_and(|w| w.kind == l.kind) {
            continue;
        }
        let p = dest_of(path);
        let removed = remove_live(&p, l.kind == "dir").with_context(|| format!("removing {}", p.display()))?;
        if !removed && want.contains_key(path.as_str()) {
            bail!(
                "{} must become a {} again, but it holds excluded entries; move them away and restore again",
                p.display(),
                want[path.as_str()].kind
            );
        }
        touched.insert(p.parent().unwrap_or(root).to_path_buf());
    }
    Ok(())
}

/// Step 2b: the snapshot's directories, files and links, parents first.
fn write_wanted(
    root: &Path,
    want: &BTreeMap<&str, &FileEntry>,
    staged: &StageResult,
    dest_of: &dyn Fn(&str) -> PathBuf,
    touched: &mut BTreeSet<PathBuf>,
) -> Result<()> {
    let parent_of = |p: &Path| p.parent().unwrap_or(root).to_path_buf();
    for (path, w) in want {
        let p = dest_of(path);
        match w.kind.as_str() {
            "dir" if !p.is_dir() => {
                fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
                touched.insert(parent_of(&p));
            }
            "file" => {
                if let Some(s) = staged.staged.get(*path) {
                    if let Some(d) = p.parent() {
                        fs::create_dir_all(d)?;
                    }
                    put(&s.file, &p).with_context(|| format!("writing {}", p.display()))?;
                    touched.insert(parent_of(&p));
                }
            }
            "symlink" => {
                let to = w.link.as_deref().unwrap_or("");
                let same = fs::read_link(&p).is_ok_and(|l| l.as_os_str().as_bytes() == to.as_bytes());
                if !same {
                    let tmp = super::sibling(&p, "tmp");
                    std::os::unix::fs::symlink(to, &tmp)?;
                    fs::rename(&tmp, &p).with_context(|| format!("writing {}", p.display()))?;
                    touched.insert(parent_of(&p));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Step 2c: owners (as root: only root can give files away; before the modes, since a chown
/// clears set-user-ID bits), modes, then mtimes (directories last, deepest first: writing in
/// them moved theirs). `live_metas`: an unauthenticated record's owners and modes, read from
/// the live tree.
fn set_metadata(
    want: &BTreeMap<&str, &FileEntry>,
    staged: &StageResult,
    live_metas: Option<&BTreeMap<String, super::owners::Meta>>,
    dest_of: &dyn Fn(&str) -> PathBuf,
    setid_mask: u32,
) -> Result<()> {
    if let Some(metas) = live_metas {
        super::owners::apply(metas, dest_of)?;
    } else if running_as_root() {
        for (path, (uid, gid)) in want.keys().filter_map(|p| Some((*p, staged.owners.get(*p)?))) {
            let p = dest_of(path);
            let m = fs::symlink_metadata(&p)?;
            if (m.uid(), m.gid()) != (*uid, *gid) {
                std::os::unix::fs::lchown(&p, Some(*uid), Some(*gid))
                    .with_context(|| format!("giving {} back to {uid}:{gid}", p.display()))?;
            }
        }
    }
    for (path, w) in want {
        if w.kind == "symlink" || live_metas.is_some() {
            continue;
        }
        let p = dest_of(path);
        let m = fs::symlink_metadata(&p)?;
        let mode = w.mode & !setid_mask;
        if m.permissions().mode() & 0o7777 != mode {
            fs::set_permissions(&p, fs::Permissions::from_mode(mode))?;
        }
    }
    for (path, w) in want {
        if w.kind != "dir" {
            if let Some(t) = staged.mtimes.get(*path) {
                set_mtime(&dest_of(path), *t)?;
            }
        }
    }
    for (path, w) in want.iter().rev() {
        if w.kind == "dir" {
            if let Some(t) = staged.mtimes.get(*path) {
                set_mtime(&dest_of(path), *t)?;
            }
        }
    }
    Ok(())
}
