//! Hot copies of directory trees (issue 17): the pre-run copy of a guarded run kept beside the
//! live tree, so a failure is put back by a rename instead of an unpack.
//!
//! The copy is written to `.NAME.guard-hot-RUN` in the tree's own parent directory (created
//! 0700; same filesystem, checked by `st_dev`, so a rename is atomic) when there is room for it
//! there. Every file is read once from the live tree, hashed as it is read and written into the
//! copy (a reflink with `FICLONE` where the filesystem has one — the bytes are still read for
//! their SHA-256); a file whose size or mtime changes while it is read fails the snapshot, as
//! the tar path does. Directories, symlinks, modes (setuid/setgid masked as a restore masks
//! them), owners (as root) and mtimes are then set as a restore from the tar sets them, and the
//! filesystem is synced. No hard link ever points into the live tree: a command writing a file
//! in place cannot change the copy.
//!
//! Its **identity** ([`identity`]) is a digest of a stat pass over it: device and inode of its
//! root, and for every entry below it the path, kind, inode, size, mode, mtime and ctime. No
//! write, chmod, rename or new entry leaves that unchanged (ctime cannot be set by a user), so
//! the same stat pass later proves the copy is what was checked without reading its data. It
//! is recorded with the snapshot (`meta.hot_id`, journaled). The tar artifact for the store is
//! written from the copy, and its listing (every file's SHA-256, read back from the copy) must
//! equal the one taken while copying from the live tree.
//!
//! On a failure ([`swap_in`]): the copy's identity is checked again, its root takes the live
//! directory's mode and owner, a marker naming the copy's root is synced into
//! `.NAME.guard-failed-RUN/` ([`EXCHANGING`]), and the copy is exchanged with the live tree in
//! one `renameat2(RENAME_EXCHANGE)`; the failed tree, now under the hot copy's name, is renamed
//! to `.NAME.guard-failed-RUN/NAME`, where the rescue snapshot reads it once the targets are
//! back. Removing the copy after a run ([`drop_copy`]) reads the marker, so a guard killed
//! between the two steps never has the failed tree removed as if it were the copy.
//!
//! When a copy is kept at all is the target's `hot_copy` ([`HotCopy`]): by default only where
//! the filesystem clones files ([`clones_files`]), since elsewhere the copy is a full write of
//! the tree that every kept run pays for, with its removal.
//!
//! Names are computed from the policy's path and the run id; a manifest never names a path.

use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context, Result};
use sha2::{Digest as _, Sha256};

use super::config::HotCopy;
use super::copy::copy_tree;
use super::tree::{walk, Filter};
use crate::manifest::FileEntry;

/// Is `tag` a run id guard could have made (no path separators, no `..`)?
fn valid_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= 64
        && tag.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        && !tag.contains("..")
}

/// `.NAME.guard-WHAT-TAG` beside `live`.
fn beside(live: &Path, what: &str, tag: &str) -> Option<PathBuf> {
    if !valid_tag(tag) {
        return None;
    }
    let name = live.file_name()?.to_string_lossy().into_owned();
    Some(live.with_file_name(format!(".{name}.guard-{what}-{tag}")))
}

/// The hot copy of the tree at `live` kept for run `tag`.
pub(super) fn hot_path(live: &Path, tag: &str) -> Option<PathBuf> {
    beside(live, "hot", tag)
}

/// The private directory (0700) in which run `tag` sets the failed state of `live` aside, under
/// `live`'s own name (a tree, or the file or link the command left in its place).
pub(super) fn aside_path(live: &Path, tag: &str) -> Option<PathBuf> {
    beside(live, "failed", tag)
}

/// The failed state of `live` set aside by run `tag`: `aside_path/NAME`.
pub(super) fn aside_entry(live: &Path, tag: &str) -> Option<PathBuf> {
    Some(aside_path(live, tag)?.join(live.file_name()?))
}

/// Create the private (0700) directory that holds `entry`, the failed state set aside.
fn create_holder(entry: &Path) -> Result<&Path> {
    let holder = entry.parent().expect("an aside entry has a parent");
    match fs::DirBuilder::new().mode(0o700).create(holder) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            Err(e).with_context(|| format!("cannot create {}", holder.display()))
        }
        _ => Ok(holder),
    }
}

/// Move what is at `from` (the failed state) to `entry`, creating its private parent; the
/// exchange marker ([`EXCHANGING`]) goes once it is there.
fn set_aside(from: &Path, entry: &Path) -> Result<()> {
    let holder = create_holder(entry)?;
    fs::rename(from, entry).with_context(|| format!("cannot set the failed state aside as {}", entry.display()))?;
    let _ = fs::remove_file(holder.join(EXCHANGING));
    Ok(())
}

/// The marker in the aside holder, written (and synced) just before the hot copy is exchanged
/// with the live tree: the device and inode of the hot copy's root. While it is there, a live
/// path naming that root means the exchange was made and the hot copy's name holds the failed
/// tree, not a copy to remove (a guard killed between the exchange and the rename aside).
const EXCHANGING: &str = ".exchanging";

/// Record, durably, that the hot copy at `copy` is about to be exchanged with the live tree
/// whose failed state goes to `entry`.
fn mark_exchanging(copy: &Path, entry: &Path) -> Result<()> {
    let holder = create_holder(entry)?;
    let m = fs::symlink_metadata(copy).with_context(|| format!("cannot stat {}", copy.display()))?;
    crate::store::local::write_atomic(
        &holder.join(EXCHANGING),
        format!("{}:{}\n", m.dev(), m.ino()).as_bytes(),
    )
    .with_context(|| format!("cannot write {}", holder.join(EXCHANGING).display()))?;
    crate::store::local::sync_dir(holder.parent().unwrap_or(Path::new("/")))?;
    Ok(())
}

/// Was the hot copy of run `tag` exchanged with the live tree at `live` (the marker names the
/// root `live` now has)?
fn exchanged(live: &Path, tag: &str) -> bool {
    let Some(entry) = aside_entry(live, tag) else {
        return false;
    };
    let holder = entry.parent().expect("an aside entry has a parent");
    let (Ok(text), Ok(m)) = (fs::read_to_string(holder.join(EXCHANGING)), fs::symlink_metadata(live)) else {
        return false;
    };
    text.trim() == format!("{}:{}", m.dev(), m.ino())
}

/// The run `tag` is over: remove its hot copy beside `live`, unless a restore by rename that a
/// guard was killed in needs it otherwise ([`Dropped`]).
pub(super) fn drop_copy(live: &Path, tag: &str) -> Result<Option<Dropped>> {
    let (Some(copy), Some(entry)) = (hot_path(live, tag), aside_entry(live, tag)) else {
        return Ok(None);
    };
    let there = |p: &Path| fs::symlink_metadata(p).is_ok();
    let parent = live.parent().unwrap_or(Path::new("/"));
    if there(&copy) && !there(&entry) && exchanged(live, tag) {
        set_aside(&copy, &entry)?;
        crate::store::local::sync_dir(parent)?;
        return Ok(Some(Dropped::Exchanged(entry)));
    }
    if there(&copy) && there(&entry) && !there(live) {
        // Killed between the two renames (no exchange): the failed tree is aside and the live
        // path free. The live path is never left missing: the copy goes in, as the swap would
        // have done.
        fs::rename(&copy, live).with_context(|| format!("cannot rename {} to {}", copy.display(), live.display()))?;
        crate::store::local::sync_dir(parent)?;
        return Ok(Some(Dropped::RenamedIn(entry)));
    }
    remove_tree(&copy).with_context(|| format!("cannot remove the hot copy {}", copy.display()))?;
    Ok(None)
}

/// The identity of the tree at `root` ([module docs](self)): `dev:ino:entries:digest`.
pub(super) fn identity(root: &Path) -> Result<String> {
    let top = fs::symlink_metadata(root).with_context(|| format!("cannot stat {}", root.display()))?;
    if !top.is_dir() {
        bail!("{} is not a directory", root.display());
    }
    let mut h = Sha256::new();
    let mut n: u64 = 0;
    for e in walkdir::WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name()
        .min_depth(1)
    {
        let e = e.with_context(|| format!("cannot read {}", root.display()))?;
        let m = e.path().symlink_metadata()?;
        let rel = e.path().strip_prefix(root).expect("under root").as_os_str().as_bytes();
        let ft = m.file_type();
        let kind = if ft.is_dir() {
            'd'
        } else if ft.is_symlink() {
            'l'
        } else if ft.is_file() {
            'f'
        } else {
            'o'
        };
        h.update((rel.len() as u64).to_le_bytes());
        h.update(rel);
        h.update(
            format!(
                "{kind}:{}:{}:{:o}:{}.{:09}:{}.{:09}\n",
                m.ino(),
                m.size(),
                m.mode(),
                m.mtime(),
                m.mtime_nsec(),
                m.ctime(),
                m.ctime_nsec()
            )
            .as_bytes(),
        );
        n += 1;
    }
    Ok(format!("{}:{}:{n}:{}", top.dev(), top.ino(), hex::encode(h.finalize())))
}

/// Is the directory at `p` the root (device and inode) of the tree identity `id` names?
fn is_root_of(p: &Path, id: &str) -> bool {
    let Ok(m) = fs::symlink_metadata(p) else {
        return false;
    };
    m.is_dir() && id.split(':').take(2).eq([m.dev().to_string(), m.ino().to_string()])
}

/// Bytes a copy of the tree at `live` takes (files rounded up to 4 KiB, 4 KiB per directory
/// and link), from a stat pass.
fn tree_bytes(live: &Path, filter: &Filter) -> Result<u64> {
    let mut total: u64 = 0;
    walk(live, &[String::new()], filter, |_, _, m| {
        total += if m.is_file() {
            m.size().div_ceil(4096) * 4096
        } else {
            4096
        };
        Ok(())
    })?;
    Ok(total)
}

/// Create the empty, private (0700) hot copy root for the tree at `live` (a directory, its
/// symlinks resolved) for run `tag`, or `Err(why)` when there is none to be had: not enough
/// free space on its filesystem (the tree plus 1/16 and 16 MiB), another filesystem, no
/// permission to write its parent. The snapshot then takes the path through the store.
pub(super) fn create(live: &Path, tag: &str, filter: &Filter) -> std::result::Result<PathBuf, String> {
    let hot = hot_path(live, tag).ok_or_else(|| format!("run id {tag:?} cannot name a directory"))?;
    let parent = live.parent().unwrap_or(Path::new("/"));
    let need = tree_bytes(live, filter).map_err(|e| format!("{e:#}"))?;
    let need = need + need / 16 + (16 << 20);
    let free = crate::targets::sqlite::hot::free_bytes(parent).map_err(|e| format!("{e:#}"))?;
    if free < need {
        return Err(format!(
            "{} has {} free, a hot copy needs {}",
            parent.display(),
            crate::ui::bytes(free),
            crate::ui::bytes(need)
        ));
    }
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&hot)
        .map_err(|e| format!("cannot create {}: {e}", hot.display()))?;
    let devs = (fs::metadata(live).map(|m| m.dev()), fs::metadata(&hot).map(|m| m.dev()));
    match devs {
        (Ok(a), Ok(b)) if a == b => Ok(hot),
        _ => {
            let _ = fs::remove_dir(&hot);
            Err(format!(
                "{} and its parent {} are not on one filesystem, so a rename cannot put a copy in place",
                live.display(),
                parent.display()
            ))
        }
    }
}

/// Can this error from [`copy_tree`] be taken as "no hot copy here" (the filesystem filled up,
/// a quota, no permission), so the snapshot goes on without one?
pub(super) fn is_room_or_permission(e: &anyhow::Error) -> bool {
    use std::io::ErrorKind as K;
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                K::StorageFull | K::QuotaExceeded | K::PermissionDenied | K::ReadOnlyFilesystem
            )
        })
    })
}

/// Can the filesystem of the tree at `live` clone files (`FICLONE`)? Two empty files are made
/// beside it (`.NAME.guard-tmp-XXXXXXXX`: guard's temporary names, which `status` names and
/// `prune` removes if a guard dies in between), one cloned onto the other, and both removed. `None`:
/// they could not be made (the copy would fail too, and says why). `GUARD_TEST_CLONES=1` says
/// yes (a test's stand-in for XFS or btrfs).
fn clones_files(live: &Path) -> Option<bool> {
    if crate::faults::test_flag("GUARD_TEST_CLONES") {
        return Some(true);
    }
    let (a, b) = (super::sibling(live, "tmp"), super::sibling(live, "tmp"));
    let open = |p: &Path| {
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(p)
    };
    let cloned = match (open(&a), open(&b)) {
        (Ok(from), Ok(to)) => {
            use std::os::fd::AsRawFd;
            // SAFETY: two valid open descriptors; FICLONE shares the source's extents or fails.
            Some(unsafe { libc::ioctl(to.as_raw_fd(), libc::FICLONE, from.as_raw_fd()) == 0 })
        }
        _ => None,
    };
    let _ = fs::remove_file(&a);
    let _ = fs::remove_file(&b);
    cloned
}

/// What [`drop_copy`] did instead of removing the hot copy: the failed tree is at the path.
pub(super) enum Dropped {
    /// Killed after the exchange: the failed tree, under the hot copy's name, was set aside.
    Exchanged(PathBuf),
    /// Killed between the two renames: the hot copy was renamed into the free live path.
    RenamedIn(PathBuf),
}

/// Remove a tree guard made (a hot copy, a failed state set aside), whatever the modes of its
/// directories: unwritable ones are made writable first when removal is refused.
pub(super) fn remove_tree(p: &Path) -> std::io::Result<()> {
    match fs::symlink_metadata(p) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
        Ok(m) if !m.is_dir() => return fs::remove_file(p),
        Ok(_) => {}
    }
    if fs::remove_dir_all(p).is_ok() {
        return Ok(());
    }
    for e in walkdir::WalkDir::new(p).follow_links(false).into_iter().flatten() {
        if e.file_type().is_dir() {
            let _ = fs::set_permissions(e.path(), fs::Permissions::from_mode(0o700));
        }
    }
    fs::remove_dir_all(p)
}

/// The hot copy at `hot` is still what `want` records, or why not.
pub(super) fn check(hot: &Path, want: &str, when: &str) -> Result<()> {
    let got = identity(hot)?;
    if got != want {
        bail!(
            "the hot copy {} changed {when} (a stat pass over it differs from the one recorded when it was taken): it is no longer the state that was checked",
            hot.display()
        );
    }
    Ok(())
}

/// Write the tar of the hot copy at `hot` into `w`, returning its listing (each file hashed as
/// it is read back from the copy). Stops with an error once `cancel` is set.
pub(super) fn tar_of(hot: &Path, w: impl Write, cancel: &AtomicBool) -> Result<Vec<FileEntry>> {
    let w = Cancelled { inner: w, cancel };
    super::tree::write_tar(hot, &[String::new()], &Filter::none(), w)
}

/// A writer that fails once `cancel` is set.
struct Cancelled<'a, W> {
    inner: W,
    cancel: &'a AtomicBool,
}

impl<W: Write> Write for Cancelled<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(std::io::Error::other(
                "stopped: the command failed, and the targets are restored from the hot copy",
            ));
        }
        self.inner.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl super::DirTarget {
    /// Why this target keeps no hot copy, when it cannot: only a whole directory that a restore
    /// swaps by rename can be put back by one.
    fn hot_refused(&self, items: &[String], real: &Path) -> Option<String> {
        if !self.paths.is_empty() {
            return Some("the target protects several `paths`, which are restored in place".into());
        }
        if items != [""] {
            return Some("the target is a single file, restored in place".into());
        }
        if !self.exclude.is_empty() {
            return Some("`exclude` is set: what it leaves out stays, so the tree is restored in place".into());
        }
        if !self.swappable(real) {
            return Some(format!(
                "{} is guard's working directory, a mount point, the policy's directory or holds guard's store, so it is restored in place",
                real.display()
            ));
        }
        None
    }

    /// A guarded run's pre-run hot copy of the tree at `root` (issue 17), when it can be had:
    /// the copy and the listing taken while copying; its run and identity recorded in `rec`.
    /// `Ok(None)` with `meta.hot_skipped` saying why when not (the snapshot takes today's path).
    pub(super) fn hot_copy(
        &self,
        ctx: &crate::targets::SnapshotCtx,
        rec: &mut crate::manifest::TargetRecord,
        root: &Path,
        items: &[String],
        filter: &Filter,
    ) -> Result<Option<(PathBuf, Vec<FileEntry>)>> {
        let Some(tag) = ctx.hot else {
            return Ok(None);
        };
        if self.shown.is_some() || ctx.allow_absent {
            return Ok(None);
        }
        if let Some(why) = self.hot_refused(items, root) {
            // The target's own shape, the same on every run: said, not warned about.
            rec.meta.insert("hot_none".into(), why);
            return Ok(None);
        }
        let mode = match &self.spec.kind {
            crate::targets::KindSpec::Dir(d) => d.hot_copy,
            _ => HotCopy::Auto,
        };
        if mode == HotCopy::Never {
            rec.meta.insert("hot_none".into(), "`hot_copy = \"never\"`".into());
            return Ok(None);
        }
        // Beside the directory itself: a symlinked `path` is followed, as a restore follows it.
        let root = &self.live_dir()?;
        // Asked first, before the stat pass that sizes the copy (0.2 s for 100k files).
        if mode == HotCopy::Auto && clones_files(root) == Some(false) {
            rec.meta.insert(
                "hot_none".into(),
                format!(
                    "{} cannot clone files, so a copy would write the whole tree again and a kept run would wait for that and its removal; `hot_copy = \"always\"` keeps one anyway",
                    root.parent().unwrap_or(Path::new("/")).display()
                ),
            );
            return Ok(None);
        }
        let copy = match create(root, tag, filter) {
            Ok(p) => p,
            Err(why) => {
                rec.meta.insert("hot_skipped".into(), why);
                return Ok(None);
            }
        };
        let copied = copy_tree(root, &copy, filter, self.setid_mask()).and_then(|l| {
            crate::faults::test_pause("dir-hot-copied");
            Ok((l, identity(&copy)?))
        });
        match copied {
            Ok((listing, id)) => {
                rec.meta.insert("hot".into(), tag.to_string());
                rec.meta.insert("hot_id".into(), id);
                Ok(Some((copy, listing)))
            }
            Err(e) => {
                let _ = remove_tree(&copy);
                if is_room_or_permission(&e) {
                    rec.meta.insert(
                        "hot_skipped".into(),
                        format!("copying into {} failed: {e:#}", copy.display()),
                    );
                    return Ok(None);
                }
                Err(e).with_context(|| format!("target {}", self.spec.name))
            }
        }
    }

    /// The store artifact of the hot copy at `copy`: its tar, written only while its identity
    /// is `want`, and whose listing (read back from the copy) must equal `listing`, taken while
    /// copying from the live tree. Stops once `cancel` is set.
    pub(super) fn store_hot(
        &self,
        ctx: &crate::targets::SnapshotCtx,
        copy: &Path,
        want: &str,
        listing: &[FileEntry],
        cancel: &AtomicBool,
    ) -> Result<crate::manifest::Artifact> {
        check(copy, want, "before its store artifact was written")?;
        let (reader, writer) = std::io::pipe()?;
        let (artifact, got) = std::thread::scope(|s| {
            let producer = s.spawn(|| tar_of(copy, std::io::BufWriter::with_capacity(1 << 20, writer), cancel));
            let input = crate::targets::Cancellable { inner: reader, cancel };
            let artifact = ctx.write_artifact(ctx.key(&self.spec.name, "tar.gz"), "tar", input);
            let got = producer.join().map_err(|_| anyhow::anyhow!("tar writer panicked"));
            (artifact, got)
        });
        let got = got??;
        let artifact = artifact?;
        super::tree::compare_listings(listing, &got).with_context(|| {
            format!(
                "the hot copy {} differs from what was read from the live tree",
                copy.display()
            )
        })?;
        check(copy, want, "while its store artifact was written")?;
        Ok(artifact)
    }

    /// The hot copy at `copy` is the verified snapshot from here (its identity is recorded and
    /// journaled): its store artifact is written while the command runs
    /// ([`crate::targets::Target::write_deferred`]), `None` — unless a local store has less room
    /// than the uncompressed tree (plus 1/16 and 16 MiB): then it is written now, before the
    /// command, so a full store still stops the run before it starts.
    pub(super) fn store_now(
        &self,
        ctx: &crate::targets::SnapshotCtx,
        rec: &mut crate::manifest::TargetRecord,
        copy: &Path,
        listing: &[FileEntry],
    ) -> Result<Option<crate::manifest::Artifact>> {
        let raw: u64 = listing.iter().map(|f| f.size).sum();
        let room = match ctx.store.local_root() {
            Some(root) => crate::targets::sqlite::hot::store_room(root, raw),
            None => Ok(()),
        };
        match room {
            Ok(()) => Ok(None),
            Err(why) => {
                rec.meta.insert("defer_skipped".into(), why);
                let want = rec.meta.get("hot_id").cloned().unwrap_or_default();
                Ok(Some(self.store_hot(
                    ctx,
                    copy,
                    &want,
                    listing,
                    &AtomicBool::new(false),
                )?))
            }
        }
    }

    /// The deferred store artifact of a pre-run snapshot: the hot copy's tar ([`Self::store_hot`]).
    pub(super) fn write_hot(
        &self,
        ctx: &crate::targets::SnapshotCtx,
        rec: &mut crate::manifest::TargetRecord,
        cancel: &AtomicBool,
    ) -> Result<()> {
        let (Some(tag), Some(want)) = (rec.meta.get("hot").cloned(), rec.meta.get("hot_id").cloned()) else {
            bail!("target {}: the snapshot names no hot copy", self.spec.name);
        };
        let live = self.restore_dest(rec)?;
        let copy = hot_path(&live, &tag).ok_or_else(|| anyhow::anyhow!("run id {tag:?} cannot name a directory"))?;
        let a = self.store_hot(ctx, &copy, &want, &rec.files, cancel)?;
        rec.artifacts.push(a);
        Ok(())
    }

    /// Is the live tree the hot copy `rec` records, renamed into place and unchanged since? (Its
    /// root's device and inode first: the stat pass over the whole tree only when they match.)
    pub(super) fn renamed_in(&self, rec: &crate::manifest::TargetRecord) -> bool {
        let Some(want) = rec.meta.get("hot_id") else {
            return false;
        };
        let Ok(live) = self.restore_dest(rec) else {
            return false;
        };
        is_root_of(&live, want) && identity(&live).is_ok_and(|got| &got == want)
    }

    /// Put `rec` back by renaming run `tag`'s hot copy into place ([module docs](self)).
    /// `Ok(None)`: no usable hot copy, nothing changed. `Ok(Some(aside))`: restored and proven
    /// (the live path names the copy, whose stat pass is the recorded one); the failed state is
    /// at `aside` ([`aside_entry`]), which does not exist when there was none.
    pub(super) fn swap_hot(&self, rec: &crate::manifest::TargetRecord, tag: &str) -> Result<Option<PathBuf>> {
        let (Some(want), Some(rec_tag)) = (rec.meta.get("hot_id"), rec.meta.get("hot")) else {
            return Ok(None);
        };
        if rec_tag != tag || rec.absent || !rec.paths.is_empty() || super::is_replaced_by_file(rec) {
            return Ok(None);
        }
        self.finish_interrupted_swap()?;
        let live = self.restore_dest(rec)?;
        let (Some(copy), Some(aside)) = (hot_path(&live, tag), aside_entry(&live, tag)) else {
            return Ok(None);
        };
        let parent = live.parent().unwrap_or(Path::new("/")).to_path_buf();
        let exists = |p: &Path| fs::symlink_metadata(p).is_ok();
        if self.renamed_in(rec) {
            // A guard killed after the exchange: the copy is in place, and its old name holds
            // the failed tree.
            if exists(&copy) && !exists(&aside) {
                set_aside(&copy, &aside)?;
                crate::store::local::sync_dir(&parent)?;
            }
            return Ok(Some(aside));
        }
        if !exists(&copy) {
            bail!("the hot copy {} is gone", copy.display());
        }
        check(&copy, want, "after it was taken")?;
        let live_there = exists(&live);
        if live_there && fs::metadata(&live).is_ok_and(|m| m.is_dir()) && !self.swappable(&live) {
            bail!(
                "{} is now guard's working directory, a mount point or holds guard's store",
                live.display()
            );
        }
        if exists(&aside) && live_there {
            // An earlier attempt set a failed state aside already: it is kept as it is
            // (`guard recover` names it), and this restore takes the path through the store.
            bail!(
                "an earlier restore set a failed state aside in {}, which is kept",
                aside.display()
            );
        }
        // The restored root keeps the live directory's own mode and owner (R17).
        let like = if live_there { live.clone() } else { aside.clone() };
        super::root_meta(rec, &like, &copy)?;
        crate::faults::test_pause("dir-hot-swap");
        if !live_there {
            // The command removed the tree (or a killed swap between two renames did).
            fs::rename(&copy, &live)?;
        } else {
            // Said durably first: a guard killed right after the exchange leaves the failed
            // tree under the hot copy's name, which `drop_hot` must not remove.
            mark_exchanging(&copy, &aside)?;
            let swapped = super::swap::exchange(&copy, &live).inspect_err(|_| {
                if let Some(holder) = aside.parent() {
                    let _ = fs::remove_file(holder.join(EXCHANGING));
                    let _ = fs::remove_dir(holder);
                }
            })?;
            if swapped {
                crate::faults::test_pause("dir-hot-exchanged");
                set_aside(&copy, &aside)?;
            } else {
                set_aside(&live, &aside)?;
                crate::faults::test_pause("dir-hot-renamed-aside");
                if let Err(e) = fs::rename(&copy, &live) {
                    let _ = fs::rename(&aside, &live);
                    return Err(e).with_context(|| format!("cannot rename {} to {}", copy.display(), live.display()));
                }
            }
        }
        crate::store::local::sync_dir(&parent)?;
        // The proof: the live path names the root of the hot copy whose stat pass was just
        // checked (a rename changes no entry below it).
        if !is_root_of(&live, want) {
            bail!("{} is not the hot copy after the rename", live.display());
        }
        Ok(Some(aside))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("t/sub")).unwrap();
        fs::write(d.path().join("t/a"), "a").unwrap();
        fs::write(d.path().join("t/sub/b"), "b").unwrap();
        std::os::unix::fs::symlink("a", d.path().join("t/l")).unwrap();
        d
    }

    #[test]
    fn identity_changes_with_any_write_chmod_or_new_entry_and_not_with_a_read() {
        let d = tree();
        let t = d.path().join("t");
        let id = identity(&t).unwrap();
        assert_eq!(fs::read_to_string(t.join("sub/b")).unwrap(), "b");
        assert_eq!(identity(&t).unwrap(), id, "a read changes nothing");
        let changes: [&dyn Fn(); 4] = [
            &|| fs::write(t.join("sub/b"), "b").unwrap(),
            &|| fs::set_permissions(t.join("a"), fs::Permissions::from_mode(0o600)).unwrap(),
            &|| fs::write(t.join("sub/new"), "").unwrap(),
            &|| fs::remove_file(t.join("l")).unwrap(),
        ];
        let mut last = id;
        for (i, change) in changes.iter().enumerate() {
            // ctime has a clock tick's resolution: step past it so that a rewrite of the same
            // bytes is still a change.
            std::thread::sleep(std::time::Duration::from_millis(10));
            change();
            let now = identity(&t).unwrap();
            assert_ne!(now, last, "change {i}");
            last = now;
        }
    }

    #[test]
    fn the_root_is_named_by_device_and_inode_and_survives_a_rename() {
        let d = tree();
        let t = d.path().join("t");
        let id = identity(&t).unwrap();
        assert!(is_root_of(&t, &id));
        fs::rename(&t, d.path().join("u")).unwrap();
        assert!(is_root_of(&d.path().join("u"), &id));
        assert_eq!(
            identity(&d.path().join("u")).unwrap(),
            id,
            "a rename of the root changes no entry"
        );
        fs::create_dir(&t).unwrap();
        assert!(!is_root_of(&t, &id));
    }

    #[test]
    fn names_are_siblings_and_a_run_id_cannot_leave_the_directory() {
        let live = Path::new("/srv/app/data");
        assert_eq!(hot_path(live, "r1").unwrap(), Path::new("/srv/app/.data.guard-hot-r1"));
        assert_eq!(
            aside_entry(live, "r1").unwrap(),
            Path::new("/srv/app/.data.guard-failed-r1/data")
        );
        for bad in ["", "../x", "a/b", ".."] {
            assert!(hot_path(live, bad).is_none(), "{bad:?}");
        }
    }
}
