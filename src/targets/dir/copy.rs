//! The copy that makes a directory's hot copy (see [`super::hot`]): every file read once from
//! the live tree, hashed as it is read and written into the copy (a reflink with `FICLONE`
//! where the filesystem has one), then directories, symlinks, modes, owners and times set as a
//! restore from the tar sets them, and the filesystem synced. No hard link ever points into the
//! live tree.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context, Result};
use sha2::{Digest as _, Sha256};

use super::tree::{dir_entry, file_entry, symlink_entry, walk, Filter};
use crate::manifest::FileEntry;

/// Reflink support, learnt from the first file: `FICLONE` failing once means a copy for the
/// rest of this process.
static NO_REFLINK: AtomicBool = AtomicBool::new(false);

/// Copy the tree at `live` into the empty directory `hot` ([module docs](self)), returning its
/// listing (the SHA-256 of every file as it was read from the live tree), in walk order.
pub(super) fn copy_tree(live: &Path, hot: &Path, filter: &Filter, setid_mask: u32) -> Result<Vec<FileEntry>> {
    let mut listing = Vec::new();
    let mut made: Vec<(PathBuf, fs::Metadata)> = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    walk(live, &[String::new()], filter, |rel, abs, m| {
        let dst = hot.join(rel);
        let mode = m.permissions().mode() & 0o7777;
        let ft = m.file_type();
        if ft.is_dir() {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&dst)
                .with_context(|| format!("cannot create {}", dst.display()))?;
            listing.push(dir_entry(rel.to_string(), mode));
        } else if ft.is_symlink() {
            let to = fs::read_link(abs)?;
            std::os::unix::fs::symlink(&to, &dst).with_context(|| format!("cannot create {}", dst.display()))?;
            listing.push(symlink_entry(
                rel.to_string(),
                Some(to.to_string_lossy().into_owned()),
                mode,
            ));
        } else if ft.is_file() {
            let (size, sha) = copy_file(abs, &dst, m, &mut buf)?;
            listing.push(file_entry(rel.to_string(), size, sha, mode));
        } else {
            // Sockets, fifos and devices are not data: skipped, as in the tar.
            return Ok(());
        }
        made.push((dst, m.clone()));
        Ok(())
    })?;
    // Children before their parents: a directory's mtime is set once nothing more is made in it.
    let root = super::inplace::running_as_root();
    for (p, m) in made.iter().rev() {
        set_meta(p, m, root, setid_mask).with_context(|| format!("cannot set the metadata of {}", p.display()))?;
    }
    // The root keeps 0700 until it is renamed into place; its times are the live root's.
    let top = fs::metadata(live)?;
    set_times(hot, &top)?;
    crate::store::files::syncfs(hot).with_context(|| format!("syncing {}", hot.display()))?;
    Ok(listing)
}

/// Copy one file, hashing what is read; `(size, sha256)`.
fn copy_file(src: &Path, dst: &Path, before: &fs::Metadata, buf: &mut [u8]) -> Result<(u64, String)> {
    let mut from = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(src)
        .with_context(|| format!("cannot read {}", src.display()))?;
    let mut to = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dst)
        .with_context(|| format!("cannot create {}", dst.display()))?;
    let reflinked = !NO_REFLINK.load(Ordering::Relaxed) && {
        use std::os::fd::AsRawFd;
        // SAFETY: two valid open descriptors; FICLONE shares the source's extents or fails.
        let ok = unsafe { libc::ioctl(to.as_raw_fd(), libc::FICLONE, from.as_raw_fd()) } == 0;
        if !ok {
            NO_REFLINK.store(true, Ordering::Relaxed);
        }
        ok
    };
    let mut h = Sha256::new();
    let mut n: u64 = 0;
    loop {
        let k = match from.read(buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", src.display())),
        };
        h.update(&buf[..k]);
        if !reflinked {
            to.write_all(&buf[..k])
                .with_context(|| format!("cannot write {}", dst.display()))?;
        }
        n += k as u64;
    }
    if !reflinked {
        // Start writing it back now, while the next files are copied: the `syncfs` at the end
        // then waits for less.
        use std::os::fd::AsRawFd;
        // SAFETY: a valid open descriptor; the call only schedules writeback.
        unsafe { libc::sync_file_range(to.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
    }
    let after = from.metadata()?;
    if n != before.size()
        || after.size() != before.size()
        || (after.mtime(), after.mtime_nsec()) != (before.mtime(), before.mtime_nsec())
    {
        bail!(
            "{} changed while it was being read; stop writers (a `before` hook) and retry",
            src.display()
        );
    }
    Ok((n, hex::encode(h.finalize())))
}

/// Owner (as root), mode and times of `m` on the copy at `p`, never following a link.
fn set_meta(p: &Path, m: &fs::Metadata, root: bool, setid_mask: u32) -> Result<()> {
    let link = m.file_type().is_symlink();
    if root {
        std::os::unix::fs::lchown(p, Some(m.uid()), Some(m.gid()))?;
    }
    if !link {
        // After the chown, which may clear setuid and setgid bits.
        fs::set_permissions(p, fs::Permissions::from_mode(m.mode() & 0o7777 & !setid_mask))?;
    }
    set_times(p, m)
}

/// The access and modification times of `m` on `p`, never following a link.
fn set_times(p: &Path, m: &fs::Metadata) -> Result<()> {
    let c = std::ffi::CString::new(p.as_os_str().as_bytes())?;
    let times = [
        libc::timespec {
            tv_sec: m.atime(),
            tv_nsec: m.atime_nsec(),
        },
        libc::timespec {
            tv_sec: m.mtime(),
            tv_nsec: m.mtime_nsec(),
        },
    ];
    // SAFETY: a NUL-terminated path and two timespecs; utimensat reads them only.
    if unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}
