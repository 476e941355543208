//! Directory trees.
//!
//! Snapshot: walk the tree (walkdir, sorted, links not followed) into a tar stream that is
//! compressed on the fly; every file is hashed while it is read into the tar, and the manifest
//! lists each entry with its SHA-256. A file that changes size while being read fails the
//! snapshot. Restore: unpack into a private sibling directory, check every file against the
//! manifest, then swap it in place of the live tree, so files created since the snapshot are
//! gone and nothing is ever half-restored under the live name.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest as _, Sha256};

use super::{SnapshotCtx, Target};
use crate::archive::HashingReader;
use crate::manifest::{FileEntry, Fingerprint, TargetRecord};
use crate::policy::{TargetKind, TargetSpec};
use crate::store::local::{create_dir_all_private, sync_dir};
use crate::store::Store;

pub struct DirTarget {
    spec: TargetSpec,
    path: PathBuf,
}

impl DirTarget {
    pub fn new(spec: TargetSpec, path: PathBuf) -> Self {
        DirTarget { spec, path }
    }
}

fn rel_string(root: &Path, p: &Path) -> String {
    p.strip_prefix(root)
        .expect("under root")
        .to_string_lossy()
        .replace('\\', "/")
}

fn file_entry(path: String, size: u64, sha256: String, mode: u32) -> FileEntry {
    FileEntry {
        path,
        kind: "file".into(),
        size,
        sha256: Some(sha256),
        link: None,
        mode,
    }
}

fn dir_entry(path: String, mode: u32) -> FileEntry {
    FileEntry {
        path,
        kind: "dir".into(),
        size: 0,
        sha256: None,
        link: None,
        mode,
    }
}

fn symlink_entry(path: String, link: Option<String>, mode: u32) -> FileEntry {
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
fn scan(root: &Path) -> Result<Vec<FileEntry>> {
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
fn fingerprint_of(entries: &[FileEntry], item: &str) -> Fingerprint {
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
fn compare_listings(expected: &[FileEntry], got: &[FileEntry]) -> Result<()> {
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
fn write_tar(root: &Path, w: impl Write) -> Result<Vec<FileEntry>> {
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
fn listing_of_tar(r: impl Read) -> Result<Vec<FileEntry>> {
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

fn sibling(path: &Path, what: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.guard-{what}-{:08x}", rand::random::<u32>()))
}

impl Target for DirTarget {
    fn spec(&self) -> &TargetSpec {
        &self.spec
    }

    fn source(&self) -> String {
        self.path.display().to_string()
    }

    fn preflight(&self) -> Result<()> {
        if !self.path.is_dir() {
            bail!(
                "target {}: directory {} does not exist",
                self.spec.name,
                self.path.display()
            );
        }
        fs::read_dir(&self.path)
            .with_context(|| format!("target {}: cannot read {}", self.spec.name, self.path.display()))?;
        Ok(())
    }

    fn snapshot(&self, ctx: &SnapshotCtx) -> Result<TargetRecord> {
        let mut rec = TargetRecord {
            name: self.spec.name.clone(),
            kind: "dir".into(),
            source: self.source(),
            ..Default::default()
        };
        if !self.path.exists() && ctx.allow_absent {
            rec.absent = true;
            return Ok(rec);
        }
        self.preflight()?;
        let meta = fs::metadata(&self.path)?;
        rec.meta
            .insert("mode".into(), format!("{:o}", meta.permissions().mode() & 0o7777));
        rec.meta.insert("uid".into(), meta.uid().to_string());
        rec.meta.insert("gid".into(), meta.gid().to_string());
        rec.tools.insert("format".into(), "tar (GNU headers)".into());

        let (reader, writer) = std::io::pipe()?;
        let root = self.path.clone();
        let producer = std::thread::spawn(move || write_tar(&root, std::io::BufWriter::with_capacity(1 << 20, writer)));
        let artifact = ctx.write_artifact(ctx.key(&self.spec.name, "tar.gz"), "tar", reader);
        let listing = producer.join().map_err(|_| anyhow!("tar writer panicked"))?;
        let listing = listing.with_context(|| format!("target {}", self.spec.name))?;
        let artifact = artifact?;
        for item in ctx.fingerprint {
            let p = self.path.join(item.trim_matches('/'));
            if !p.exists() {
                bail!(
                    "target {}: {} does not exist (named by an `untouched` check)",
                    self.spec.name,
                    p.display()
                );
            }
            rec.fingerprints.insert(item.clone(), fingerprint_of(&listing, item));
        }
        rec.files = listing;
        rec.artifacts.push(artifact);
        Ok(rec)
    }

    fn deep_verify(&self, rec: &TargetRecord, store: &dyn Store, _scratch: &Path) -> Result<()> {
        let Some(a) = rec.artifacts.first() else {
            return Ok(());
        };
        let (reader, writer) = std::io::pipe()?;
        let consumer = std::thread::spawn(move || listing_of_tar(std::io::BufReader::new(reader)));
        let r = crate::artifact::read_artifact(store, a, writer);
        let listing = consumer.join().map_err(|_| anyhow!("tar reader panicked"))?;
        r?;
        let listing = listing.with_context(|| format!("{}/{}: not a valid tar stream", store.location(), a.key))?;
        compare_listings(&rec.files, &listing)
            .with_context(|| format!("{}/{}: content differs from the manifest", store.location(), a.key))
    }

    fn drill(&self, rec: &TargetRecord, store: &dyn Store, scratch: &Path) -> Result<Option<Box<dyn Target>>> {
        let Some(a) = rec.artifacts.first() else {
            return Ok(None);
        };
        let dest = scratch.join(&rec.name);
        create_dir_all_private(&dest)?;
        let (reader, writer) = std::io::pipe()?;
        let unpack_to = dest.clone();
        let consumer = std::thread::spawn(move || -> Result<()> {
            let mut ar = tar::Archive::new(std::io::BufReader::new(reader));
            ar.set_preserve_permissions(true);
            ar.unpack(&unpack_to)?;
            Ok(())
        });
        let r = crate::artifact::read_artifact(store, a, writer);
        let unpacked = consumer.join().map_err(|_| anyhow!("tar reader panicked"))?;
        r?;
        unpacked.with_context(|| format!("{}/{}: not a valid tar stream", store.location(), a.key))?;
        compare_listings(&rec.files, &scan(&dest)?).with_context(|| {
            format!(
                "{}/{}: restored tree differs from the manifest",
                store.location(),
                a.key
            )
        })?;
        let spec = TargetSpec {
            name: rec.name.clone(),
            line: self.spec.line,
            kind: TargetKind::Dir { path: dest.clone() },
        };
        Ok(Some(Box::new(DirTarget::new(spec, dest))))
    }

    fn restore(&self, rec: &TargetRecord, store: &dyn Store) -> Result<()> {
        let parent = self.path.parent().unwrap_or(Path::new("."));
        if rec.absent {
            if self.path.exists() {
                let old = sibling(&self.path, "old");
                fs::rename(&self.path, &old)?;
                sync_dir(parent)?;
                fs::remove_dir_all(&old)?;
            }
            return Ok(());
        }
        let a = rec
            .artifacts
            .first()
            .ok_or_else(|| anyhow!("snapshot of {} has no artifact", rec.name))?;
        fs::create_dir_all(parent)?;
        let staging = sibling(&self.path, "restore");
        create_dir_all_private(&staging)?;
        let result = (|| -> Result<()> {
            let (reader, writer) = std::io::pipe()?;
            let dest = staging.clone();
            let consumer = std::thread::spawn(move || -> Result<()> {
                let mut ar = tar::Archive::new(std::io::BufReader::new(reader));
                ar.set_preserve_permissions(true);
                ar.set_overwrite(true);
                ar.unpack(&dest)?;
                Ok(())
            });
            let r = crate::artifact::read_artifact(store, a, writer);
            let unpacked = consumer.join().map_err(|_| anyhow!("tar reader panicked"))?;
            r?;
            unpacked.context("unpacking")?;
            compare_listings(&rec.files, &scan(&staging)?).context("unpacked tree differs from the manifest")?;
            if let Some(mode) = rec.meta.get("mode").and_then(|m| u32::from_str_radix(m, 8).ok()) {
                fs::set_permissions(&staging, fs::Permissions::from_mode(mode))?;
            }
            if let (Some(Ok(u)), Some(Ok(g))) = (
                rec.meta.get("uid").map(|s| s.parse::<u32>()),
                rec.meta.get("gid").map(|s| s.parse::<u32>()),
            ) {
                let _ = std::os::unix::fs::chown(&staging, Some(u), Some(g));
            }
            // Swap: the live tree steps aside, the verified one takes its name.
            let old = sibling(&self.path, "old");
            let had_live = self.path.exists();
            if had_live {
                fs::rename(&self.path, &old)?;
            }
            if let Err(e) = fs::rename(&staging, &self.path) {
                if had_live {
                    let _ = fs::rename(&old, &self.path);
                }
                return Err(e.into());
            }
            sync_dir(parent)?;
            if had_live {
                fs::remove_dir_all(&old).with_context(|| format!("removing the replaced tree {}", old.display()))?;
            }
            Ok(())
        })();
        if result.is_err() && staging.exists() {
            let _ = fs::remove_dir_all(&staging);
        }
        result.with_context(|| format!("restoring {}", self.path.display()))
    }

    fn verify_restored(&self, rec: &TargetRecord) -> Result<()> {
        if rec.absent {
            if self.path.exists() {
                bail!("{} exists but the snapshot recorded none", self.path.display());
            }
            return Ok(());
        }
        compare_listings(&rec.files, &scan(&self.path)?)
    }

    fn fingerprint(&self, items: &[String]) -> Result<BTreeMap<String, Fingerprint>> {
        let listing = scan(&self.path)?;
        Ok(items.iter().map(|i| (i.clone(), fingerprint_of(&listing, i))).collect())
    }

    fn query(&self, _sql: &str) -> Result<String> {
        bail!("target {} is a directory; it does not answer SQL", self.spec.name)
    }
}
