//! Directory trees.
//!
//! Snapshot: walk the tree (walkdir, sorted, links not followed) into a tar stream that is
//! compressed on the fly; every file is hashed while it is read into the tar, and the manifest
//! lists each entry with its SHA-256. A file that changes size while being read fails the
//! snapshot. Restore: unpack into a private sibling directory, check every file against the
//! manifest, then swap it in place of the live tree, so files created since the snapshot are
//! gone and nothing is ever half-restored under the live name. The swap is one
//! `renameat2(RENAME_EXCHANGE)`, so the live path never goes missing ([`swap`]).
//!
//! A symlinked `path` is followed: the snapshot records the directory it read
//! (`meta.resolved`), and a restore swaps that directory, keeping the link, and only while the
//! link still leads there. A rescue of a directory the command replaced with a file keeps the
//! file (`meta.replaced_by = "file"`, a `raw-file` artifact).

pub mod config;
pub mod swap;
mod tree;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use super::{Restored, SnapshotCtx, Target};
use crate::manifest::{Fingerprint, TargetRecord};
use crate::store::local::{create_dir_all_private, sync_dir};
use crate::store::Store;
use crate::targets::{KindSpec, TargetSpec};
pub use config::DirSpec;

use tree::{compare_listings, fingerprint_of, listing_of_tar, scan, write_tar};

pub struct DirTarget {
    spec: TargetSpec,
    path: PathBuf,
}

impl DirTarget {
    pub fn new(spec: TargetSpec, path: PathBuf) -> Self {
        DirTarget { spec, path }
    }
}

/// `.NAME.guard-WHAT` beside `path`.
fn sibling_named(path: &Path, what: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.guard-{what}"))
}

/// A fresh `.NAME.guard-WHAT-XXXXXXXX` beside `path`.
fn sibling(path: &Path, what: &str) -> PathBuf {
    let n = sibling_named(path, what);
    n.with_file_name(format!(
        "{}-{:08x}",
        n.file_name().expect("named").to_string_lossy(),
        rand::random::<u32>()
    ))
}

fn is_replaced_by_file(rec: &TargetRecord) -> bool {
    rec.meta.get("replaced_by").map(String::as_str) == Some("file")
}

/// The restored root directory's own mode and owner come from the live directory `live`, never
/// from the store (R17: a record saying `mode = "777"` or another owner is not obeyed). When the
/// command removed the directory, the recorded mode is used without setuid, setgid, sticky and
/// group/other write bits, and the directory stays the running user's.
fn root_meta(rec: &TargetRecord, live: &Path, staging: &Path) -> Result<()> {
    match fs::metadata(live) {
        Ok(m) if m.is_dir() => {
            // Owner first: a chown may clear the mode's setgid bit.
            let _ = std::os::unix::fs::chown(staging, Some(m.uid()), Some(m.gid()));
            fs::set_permissions(staging, fs::Permissions::from_mode(m.permissions().mode() & 0o7777))?;
        }
        _ => {
            let mode = rec
                .meta
                .get("mode")
                .and_then(|m| u32::from_str_radix(m, 8).ok())
                .unwrap_or(0o700);
            fs::set_permissions(staging, fs::Permissions::from_mode(mode & 0o755))?;
        }
    }
    Ok(())
}

impl DirTarget {
    /// Mode bits a restore or drill never takes from an archive: setuid and setgid, unless the
    /// policy says `keep_setid = true`.
    fn setid_mask(&self) -> u32 {
        match &self.spec.kind {
            KindSpec::Dir(d) if d.keep_setid => 0,
            _ => 0o6000,
        }
    }

    /// The directory behind the policy's path, symlinks resolved, or why there is none.
    fn live_dir(&self) -> Result<PathBuf> {
        let (name, p) = (&self.spec.name, &self.path);
        match fs::metadata(p) {
            Ok(m) if m.is_dir() => {
                fs::canonicalize(p).with_context(|| format!("target {name}: cannot resolve {}", p.display()))
            }
            Ok(m) if m.is_file() => bail!(
                "target {name}: {} is a file; a dir target protects a directory (name the directory that holds it)",
                p.display()
            ),
            Ok(_) => bail!("target {name}: {} is not a directory", p.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match fs::read_link(p) {
                Ok(to) => bail!(
                    "target {name}: {} is a symlink to {}, which does not exist",
                    p.display(),
                    to.display()
                ),
                Err(_) => bail!("target {name}: directory {} does not exist", p.display()),
            },
            Err(e) => Err(e).with_context(|| format!("target {name}: cannot read {}", p.display())),
        }
    }

    /// The path a swap renames: the policy's path with its symlinks resolved, even while the
    /// last one dangles (a swap killed between its renames).
    fn swap_path(&self) -> PathBuf {
        if let Ok(p) = fs::canonicalize(&self.path) {
            return p;
        }
        if let Ok(to) = fs::read_link(&self.path) {
            let to = self.path.parent().unwrap_or(Path::new("/")).join(to);
            if let (Some(parent), Some(name)) = (to.parent(), to.file_name()) {
                if let Ok(parent) = fs::canonicalize(parent) {
                    return parent.join(name);
                }
            }
        }
        self.path.clone()
    }

    /// Finish a swap a killed guard left half done (the live path may be missing until then).
    fn finish_interrupted_swap(&self) -> Result<()> {
        if let Some(did) = swap::finish_interrupted(&self.swap_path())
            .with_context(|| format!("target {}: finishing an interrupted restore", self.spec.name))?
        {
            crate::errln!("guard: target {}: {did}", self.spec.name);
        }
        Ok(())
    }

    /// Where a restore of `rec` swaps: the directory the snapshot read. A symlinked path must
    /// still lead there (the link is kept); the manifest alone never decides.
    fn restore_dest(&self, rec: &TargetRecord) -> Result<PathBuf> {
        let Some(recorded) = rec.meta.get("resolved") else {
            return Ok(self.path.clone());
        };
        let now = self.swap_path();
        if now != Path::new(recorded) {
            bail!(
                "target {}: the snapshot read {recorded} through {}, which now leads to {}; nothing was restored for this target. Point {} back at {recorded} (ln -sfn) and run the restore again",
                self.spec.name,
                self.path.display(),
                now.display(),
                self.path.display()
            );
        }
        Ok(now)
    }
}

impl Target for DirTarget {
    fn spec(&self) -> &TargetSpec {
        &self.spec
    }

    fn source(&self) -> String {
        self.path.display().to_string()
    }

    fn preflight(&self) -> Result<()> {
        self.finish_interrupted_swap()?;
        self.live_dir()?;
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
        self.finish_interrupted_swap()?;
        if !self.path.exists() && ctx.allow_absent {
            rec.absent = true;
            return Ok(rec);
        }
        if ctx.allow_absent && self.path.is_file() {
            // The command replaced the directory with a file: that file is the failed state.
            rec.meta.insert("replaced_by".into(), "file".into());
            let f = fs::File::open(&self.path).with_context(|| format!("cannot read {}", self.path.display()))?;
            rec.artifacts
                .push(ctx.write_artifact(ctx.key(&self.spec.name, "raw.gz"), "raw-file", f)?);
            return Ok(rec);
        }
        self.preflight()?;
        let real = self.live_dir()?;
        if real != self.path {
            rec.meta.insert("resolved".into(), real.display().to_string());
        }
        let meta = fs::metadata(&real)?;
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
        if is_replaced_by_file(rec) {
            // A file's bytes: its checksums are all there is to check.
            return crate::artifact::read_artifact(store, a, std::io::sink()).map(|_| ());
        }
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
        if is_replaced_by_file(rec) {
            self.deep_verify(rec, store, scratch)?;
            return Ok(None);
        }
        let dest = scratch.join(&rec.name);
        create_dir_all_private(&dest)?;
        let (reader, writer) = std::io::pipe()?;
        let unpack_to = dest.clone();
        let mask = self.setid_mask();
        let consumer = std::thread::spawn(move || -> Result<()> {
            let mut ar = tar::Archive::new(std::io::BufReader::new(reader));
            ar.set_preserve_permissions(true);
            ar.set_mask(mask);
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
            line: self.spec.line,
            ..TargetSpec::new(
                rec.name.clone(),
                KindSpec::Dir(DirSpec {
                    path: dest.clone(),
                    keep_setid: false,
                }),
            )
        };
        Ok(Some(Box::new(DirTarget::new(spec, dest))))
    }

    fn restore(&self, rec: &TargetRecord, store: &dyn Store) -> Result<Restored> {
        self.finish_interrupted_swap()?;
        let dest = self.restore_dest(rec)?;
        let parent = dest.parent().unwrap_or(Path::new(".")).to_path_buf();
        if rec.absent {
            if fs::symlink_metadata(&dest).is_ok() {
                let old = sibling(&dest, "old");
                fs::rename(&dest, &old)?;
                sync_dir(&parent)?;
                swap::remove_any(&old)?;
            }
            return Ok(Restored::Done);
        }
        let a = rec
            .artifacts
            .first()
            .ok_or_else(|| anyhow!("snapshot of {} has no artifact", rec.name))?;
        fs::create_dir_all(&parent)?;
        if is_replaced_by_file(rec) {
            // A rescue of a directory the command had replaced with a file: put the file back.
            let (f, tmp) = crate::store::local::private_temp_beside(&dest)?;
            let result = (|| -> Result<()> {
                let mut w = std::io::BufWriter::new(f);
                crate::artifact::read_artifact(store, a, &mut w)?;
                w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
                swap::swap_in(&tmp, &dest)
            })();
            if result.is_err() {
                let _ = fs::remove_file(&tmp);
            }
            return result
                .with_context(|| format!("restoring {}", self.path.display()))
                .map(|()| Restored::Done);
        }
        let staging = sibling(&dest, "restore");
        create_dir_all_private(&staging)?;
        let result = (|| -> Result<()> {
            let (reader, writer) = std::io::pipe()?;
            let unpack_to = staging.clone();
            let mask = self.setid_mask();
            let consumer = std::thread::spawn(move || -> Result<()> {
                let mut ar = tar::Archive::new(std::io::BufReader::new(reader));
                ar.set_preserve_permissions(true);
                ar.set_mask(mask);
                ar.set_overwrite(true);
                ar.unpack(&unpack_to)?;
                Ok(())
            });
            let r = crate::artifact::read_artifact(store, a, writer);
            let unpacked = consumer.join().map_err(|_| anyhow!("tar reader panicked"))?;
            r?;
            unpacked.context("unpacking")?;
            compare_listings(&rec.files, &scan(&staging)?).context("unpacked tree differs from the manifest")?;
            root_meta(rec, &dest, &staging)?;
            // The verified tree takes the live name in one exchange; the replaced one goes.
            swap::swap_in(&staging, &dest)
        })();
        if result.is_err() && staging.exists() && !sibling_named(&dest, "swap").exists() {
            let _ = fs::remove_dir_all(&staging);
        }
        result
            .with_context(|| format!("restoring {}", self.path.display()))
            .map(|()| Restored::Done)
    }

    fn verify_restored(&self, rec: &TargetRecord) -> Result<()> {
        if rec.absent {
            if fs::symlink_metadata(&self.path).is_ok() {
                bail!("{} exists but the snapshot recorded none", self.path.display());
            }
            return Ok(());
        }
        if is_replaced_by_file(rec) {
            let a = rec.artifacts.first().ok_or_else(|| anyhow!("no artifact"))?;
            let d = crate::archive::digest(fs::File::open(&self.path)?)?;
            if d.sha256 != a.raw_sha256 || d.bytes != a.raw_bytes {
                bail!("{} differs from the snapshot's content checksum", self.path.display());
            }
            return Ok(());
        }
        // The tree the application reaches through the policy's path; through a link, that
        // link must still lead to the directory the snapshot read.
        let real = self.live_dir()?;
        match rec.meta.get("resolved") {
            Some(r) if real != Path::new(r) => {
                bail!("{} leads to {}, not to {r}", self.path.display(), real.display())
            }
            None if fs::symlink_metadata(&self.path)?.file_type().is_symlink() => {
                bail!(
                    "{} is a symlink; the snapshot read a plain directory",
                    self.path.display()
                )
            }
            _ => {}
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
