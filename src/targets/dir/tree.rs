//! The tree itself: walking it into a listing (one entry per file, directory and link, files
//! hashed), writing it as a tar stream, reading a tar's listing back, and comparing listings.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use sha2::{Digest as _, Sha256};

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

/// Walk `root` and describe every entry, hashing files.
pub(super) fn scan(root: &Path) -> Result<Vec<FileEntry>> {
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name()
        .min_depth(1)
    {
        let e = e?;
        let meta = e.path().symlink_metadata()?;
        let path = rel_string(root, e.path());
        let mode = meta.permissions().mode() & 0o7777;
        let ft = meta.file_type();
        if ft.is_symlink() {
            let link = fs::read_link(e.path())?.to_string_lossy().into_owned();
            out.push(symlink_entry(path, Some(link), mode));
        } else if ft.is_dir() {
            out.push(dir_entry(path, mode));
        } else if ft.is_file() {
            let d = crate::archive::digest(fs::File::open(e.path())?)?;
            out.push(file_entry(path, d.bytes, d.sha256, mode));
        }
    }
    Ok(out)
}

/// Fingerprint of the entries under `item` (a path relative to the root; "" or "." is all).
pub(super) fn fingerprint_of(entries: &[FileEntry], item: &str) -> Fingerprint {
    let item = item.trim_matches('/');
    let inside = |p: &str| item.is_empty() || item == "." || p == item || p.starts_with(&format!("{item}/"));
    let mut h = Sha256::new();
    let mut n = 0;
    for e in entries.iter().filter(|e| inside(&e.path)) {
        for part in [
            e.path.as_str(),
            e.kind.as_str(),
            e.sha256.as_deref().unwrap_or(""),
            e.link.as_deref().unwrap_or(""),
        ] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        if e.kind == "file" {
            n += 1;
        }
    }
    Fingerprint {
        rows: n,
        hash: Some(hex::encode(&h.finalize()[..16])),
    }
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

/// Write the tree at `root` as a tar stream into `w`, returning the listing with hashes.
pub(super) fn write_tar(root: &Path, w: impl Write) -> Result<Vec<FileEntry>> {
    let mut b = tar::Builder::new(w);
    b.follow_symlinks(false);
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name()
        .min_depth(1)
    {
        let e = e?;
        let meta = e.path().symlink_metadata()?;
        let path = rel_string(root, e.path());
        let mode = meta.permissions().mode() & 0o7777;
        let ft = meta.file_type();
        let mut h = tar::Header::new_gnu();
        h.set_metadata(&meta);
        if ft.is_file() {
            let f = fs::File::open(e.path()).with_context(|| format!("cannot read {}", e.path().display()))?;
            let size = f.metadata()?.len();
            h.set_size(size);
            h.set_cksum();
            let mut r = HashingReader::new(f.take(size));
            b.append_data(&mut h, &path, &mut r)?;
            let d = r.finish();
            if d.bytes != size {
                bail!(
                    "{} changed while it was being read; stop writers (a `before` hook) and retry",
                    e.path().display()
                );
            }
            out.push(file_entry(path, size, d.sha256, mode));
        } else if ft.is_dir() {
            b.append_data(&mut h, &path, std::io::empty())?;
            out.push(dir_entry(path, mode));
        } else if ft.is_symlink() {
            let link = fs::read_link(e.path())?;
            b.append_link(&mut h, &path, &link)?;
            out.push(symlink_entry(path, Some(link.to_string_lossy().into_owned()), mode));
        }
        // Sockets, fifos and devices are not data: skipped.
    }
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
    Ok(out)
}
