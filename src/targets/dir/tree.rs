//! The tree itself: walking it into a listing (one entry per file, directory and link, files
//! hashed), writing it as a tar stream, reading a tar's listing back, and comparing listings.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::archive::HashingReader;
use crate::manifest::{FileEntry, Fingerprint};

pub(super) fn rel_string(root: &Path, p: &Path) -> String {
    p.strip_prefix(root)
        .expect("under root")
        .to_string_lossy()
        .replace('\\', "/")
}

pub(super) fn file_entry(path: String, size: u64, sha256: String, mode: u32) -> FileEntry {
    FileEntry {
        path,
        kind: "file".into(),
        size,
        sha256: Some(sha256),
        link: None,
        mode,
    }
}

pub(super) fn dir_entry(path: String, mode: u32) -> FileEntry {
    FileEntry {
        path,
        kind: "dir".into(),
        size: 0,
        sha256: None,
        link: None,
        mode,
    }
}

pub(super) fn symlink_entry(path: String, link: Option<String>, mode: u32) -> FileEntry {
    FileEntry {
        path,
        kind: "symlink".into(),
        size: 0,
        sha256: None,
        link,
        mode,
    }
}

/// What a walk leaves out: the policy's `exclude` globs (gitignore rules, relative to the
/// root), and always guard's own store and state directories (by device and inode, wherever
/// they sit) and guard's temporary files.
pub(super) struct Filter {
    rules: Option<ignore::gitignore::Gitignore>,
    guard_dirs: Vec<(u64, u64)>,
}

/// Is `name` one of guard's own temporary files or directories?
pub(super) fn is_guard_temp(name: &str) -> bool {
    name.starts_with('.')
        && (name.contains(".guard-tmp-")
            || name.contains(".guard-restore-")
            || name.contains(".guard-old-")
            || name.contains(".guard-hot-")
            || name.contains(".guard-failed-")
            || name.ends_with(".guard-swap")
            || name.starts_with(".guard-inplace-"))
}

impl Filter {
    /// Nothing left out but guard's own files.
    pub(super) fn none() -> Filter {
        Filter {
            rules: None,
            guard_dirs: Vec::new(),
        }
    }

    pub(super) fn new(root: &Path, globs: &[String]) -> Result<Filter> {
        let rules = if globs.is_empty() {
            None
        } else {
            let mut b = ignore::gitignore::GitignoreBuilder::new(root);
            for g in globs {
                b.add_line(None, g).with_context(|| format!("exclude {g:?}"))?;
            }
            Some(b.build()?)
        };
        let guard_dirs = crate::store::state::local_dirs()
            .iter()
            .filter_map(|d| fs::metadata(d).ok())
            .map(|m| (m.dev(), m.ino()))
            .collect();
        Ok(Filter { rules, guard_dirs })
    }

    /// Does an `exclude` glob match `rel` (or a directory above it)?
    pub(super) fn excluded(&self, rel: &str, is_dir: bool) -> bool {
        self.rules
            .as_ref()
            .is_some_and(|r| r.matched_path_or_any_parents(rel, is_dir).is_ignore())
    }

    /// Is `rel` (with metadata `m`, not followed) left out of snapshots and restores?
    pub(super) fn skips(&self, rel: &str, m: &fs::Metadata) -> bool {
        let name = rel.rsplit('/').next().unwrap_or(rel);
        is_guard_temp(name)
            || (m.is_dir() && self.guard_dirs.contains(&(m.dev(), m.ino())))
            || self.excluded(rel, m.is_dir())
    }
}

/// Is `rel` one of `items` or inside one? (`""` is the whole root.)
pub(super) fn within(items: &[String], rel: &str) -> bool {
    items
        .iter()
        .any(|i| i.is_empty() || rel == i || rel.strip_prefix(i.as_str()).is_some_and(|r| r.starts_with('/')))
}

/// Every entry of the target (each item, and everything below it that `filter` keeps), in
/// order, with its path relative to `root` and its metadata (an item itself is followed if it
/// is a symlink; nothing below it is). Items that do not exist are passed over.
pub(super) fn walk(
    root: &Path,
    items: &[String],
    filter: &Filter,
    mut f: impl FnMut(&str, &Path, &fs::Metadata) -> Result<()>,
) -> Result<()> {
    for item in items {
        let top = if item.is_empty() {
            root.to_path_buf()
        } else {
            root.join(item)
        };
        let meta = match fs::metadata(&top) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", top.display())),
        };
        if !item.is_empty() {
            f(item, &top, &meta)?;
        }
        if !meta.is_dir() {
            continue;
        }
        let mut it = walkdir::WalkDir::new(&top)
            .follow_links(false)
            .sort_by_file_name()
            .min_depth(1)
            .into_iter();
        while let Some(e) = it.next() {
            let e = e?;
            let m = e.path().symlink_metadata()?;
            let rel = rel_string(root, e.path());
            if filter.skips(&rel, &m) {
                if m.is_dir() {
                    it.skip_current_dir();
                }
                continue;
            }
            f(&rel, e.path(), &m)?;
        }
    }
    Ok(())
}

/// Walk `root` and describe every entry, hashing files.
pub(super) fn scan(root: &Path) -> Result<Vec<FileEntry>> {
    scan_items(root, &[String::new()], &Filter::none())
}

/// Describe every entry of the target, hashing files.
pub(super) fn scan_items(root: &Path, items: &[String], filter: &Filter) -> Result<Vec<FileEntry>> {
    let mut out = Vec::new();
    walk(root, items, filter, |path, abs, meta| {
        let mode = meta.permissions().mode() & 0o7777;
        let ft = meta.file_type();
        let path = path.to_string();
        if ft.is_symlink() {
            let link = fs::read_link(abs)?.to_string_lossy().into_owned();
            out.push(symlink_entry(path, Some(link), mode));
        } else if ft.is_dir() {
            out.push(dir_entry(path, mode));
        } else if ft.is_file() {
            let d = crate::archive::digest(fs::File::open(abs)?)?;
            out.push(file_entry(path, d.bytes, d.sha256, mode));
        }
        Ok(())
    })?;
    Ok(out)
}

/// Fingerprint of the entries under `item` (a path relative to the root; "" or "." is all).
/// A path with no entry at all (not even itself) is absent: the command deleted it.
pub(super) fn fingerprint_of(entries: &[FileEntry], item: &str) -> Fingerprint {
    let item = item.trim_matches('/');
    let whole = item.is_empty() || item == ".";
    let inside = |p: &str| whole || p == item || p.starts_with(&format!("{item}/"));
    if !whole && !entries.iter().any(|e| inside(&e.path)) {
        return Fingerprint::absent();
    }
    let mut h = crate::manifest::ListingHash::default();
    for e in entries.iter().filter(|e| inside(&e.path)) {
        let parts = [
            e.path.as_str(),
            e.kind.as_str(),
            e.sha256.as_deref().unwrap_or(""),
            e.link.as_deref().unwrap_or(""),
        ];
        h.entry(&parts, e.kind == "file");
    }
    h.finish()
}

/// Name every difference between two listings.
pub(super) fn compare_listings(expected: &[FileEntry], got: &[FileEntry]) -> Result<()> {
    let e: BTreeMap<&str, &FileEntry> = expected.iter().map(|f| (f.path.as_str(), f)).collect();
    let g: BTreeMap<&str, &FileEntry> = got.iter().map(|f| (f.path.as_str(), f)).collect();
    let mut diffs = Vec::new();
    for (p, f) in &e {
        match g.get(p) {
            None => diffs.push(format!("{p}: missing")),
            Some(x) if x.kind != f.kind || x.sha256 != f.sha256 || x.link != f.link => {
                diffs.push(format!("{p}: differs"))
            }
            _ => {}
        }
    }
    for p in g.keys() {
        if !e.contains_key(p) {
            diffs.push(format!("{p}: not in the snapshot"));
        }
    }
    if diffs.is_empty() {
        return Ok(());
    }
    let n = diffs.len();
    diffs.truncate(10);
    bail!(
        "{} difference(s): {}{}",
        n,
        diffs.join(", "),
        if n > 10 { ", …" } else { "" }
    )
}

/// Write the target's entries as a tar stream into `w` (names relative to `root`), returning
/// the listing with hashes.
pub(super) fn write_tar(root: &Path, items: &[String], filter: &Filter, w: impl Write) -> Result<Vec<FileEntry>> {
    let mut b = tar::Builder::new(w);
    b.follow_symlinks(false);
    let mut out = Vec::new();
    walk(root, items, filter, |path, abs, meta| {
        let mode = meta.permissions().mode() & 0o7777;
        let ft = meta.file_type();
        let mut h = tar::Header::new_gnu();
        h.set_metadata(meta);
        if ft.is_file() {
            let f = fs::File::open(abs).with_context(|| format!("cannot read {}", abs.display()))?;
            let size = f.metadata()?.len();
            h.set_size(size);
            h.set_cksum();
            let mut r = HashingReader::new(f.take(size));
            b.append_data(&mut h, path, &mut r)?;
            let d = r.finish();
            if d.bytes != size {
                bail!(
                    "{} changed while it was being read; stop writers (a `before` hook) and retry",
                    abs.display()
                );
            }
            out.push(file_entry(path.to_string(), size, d.sha256, mode));
        } else if ft.is_dir() {
            b.append_data(&mut h, path, std::io::empty())?;
            out.push(dir_entry(path.to_string(), mode));
        } else if ft.is_symlink() {
            let link = fs::read_link(abs)?;
            b.append_link(&mut h, path, &link)?;
            out.push(symlink_entry(
                path.to_string(),
                Some(link.to_string_lossy().into_owned()),
                mode,
            ));
        }
        // Sockets, fifos and devices are not data: skipped.
        Ok(())
    })?;
    b.into_inner()?.flush()?;
    Ok(out)
}

/// Hash every file in a tar stream without writing it anywhere.
pub(super) fn listing_of_tar(r: impl Read) -> Result<Vec<FileEntry>> {
    let mut a = tar::Archive::new(r);
    let mut out = Vec::new();
    for e in a.entries()? {
        let mut e = e?;
        let path = e.path()?.to_string_lossy().trim_end_matches('/').to_string();
        let mode = e.header().mode()? & 0o7777;
        let et = e.header().entry_type();
        if et.is_file() {
            let d = crate::archive::digest(&mut e)?;
            out.push(file_entry(path, d.bytes, d.sha256, mode));
        } else if et.is_dir() {
            out.push(dir_entry(path, mode));
        } else if et.is_symlink() {
            let link = e.link_name()?.map(|l| l.to_string_lossy().into_owned());
            out.push(symlink_entry(path, link, mode));
        }
    }
    drain(a.into_inner())?;
    Ok(out)
}

/// Unpack `ar` into `dst` as `tar::Archive::unpack` does (directories last, deepest first, so
/// their modes never stop a child from being written), and then give every directory the mtime
/// its header records (tar sets the mtimes of files and links only). Reads the stream to its end.
pub(super) fn unpack<R: Read>(mut ar: tar::Archive<R>, dst: &Path) -> Result<()> {
    let dst = &dst.canonicalize().unwrap_or_else(|_| dst.to_path_buf());
    let mut dirs = Vec::new();
    for e in ar.entries()? {
        let mut e = e.context("failed to iterate over archive")?;
        if e.header().entry_type() == tar::EntryType::Directory {
            dirs.push(e);
        } else {
            e.unpack_in(dst)?;
        }
    }
    dirs.sort_by(|a, b| b.path_bytes().cmp(&a.path_bytes()));
    let mut times = Vec::new();
    for mut d in dirs {
        if d.unpack_in(dst)? {
            let rel = d.path()?.into_owned();
            // Only plain names below `dst` (unpack_in refused anything else already).
            if rel.components().all(|c| matches!(c, std::path::Component::Normal(_))) {
                times.push((dst.join(rel), d.header().mtime()?));
            }
        }
    }
    for (p, mtime) in times {
        let c = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(p.as_os_str()))?;
        let t = libc::timespec {
            tv_sec: mtime as libc::time_t,
            tv_nsec: 0,
        };
        // SAFETY: a NUL-terminated path and two timespecs; utimensat reads them only.
        if unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), [t, t].as_ptr(), libc::AT_SYMLINK_NOFOLLOW) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("cannot set the mtime of {}", p.display()));
        }
    }
    drain(ar.into_inner())?;
    Ok(())
}

/// Read what follows the end of a tar archive (tar stops at the first of its two zero blocks)
/// to the end of the stream, so the writer feeding it through a pipe never meets a closed pipe.
pub(super) fn drain(mut r: impl Read) -> std::io::Result<()> {
    std::io::copy(&mut r, &mut std::io::sink()).map(|_| ())
}
