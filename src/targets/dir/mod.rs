//! Directory trees.
//!
//! Snapshot: walk the tree (walkdir, sorted, links not followed) into a tar stream that is
//! compressed on the fly; every file is hashed while it is read into the tar, and the manifest
//! lists each entry with its SHA-256. A file that changes size while being read fails the
//! snapshot. Restore: unpack into a private sibling directory, check every file against the
//! manifest, then swap it in place of the live tree, so files created since the snapshot are
//! gone and nothing is ever half-restored under the live name.

pub mod config;
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
            kind: KindSpec::Dir(DirSpec { path: dest.clone() }),
        };
        Ok(Some(Box::new(DirTarget::new(spec, dest))))
    }

    fn restore(&self, rec: &TargetRecord, store: &dyn Store) -> Result<Restored> {
        let parent = self.path.parent().unwrap_or(Path::new("."));
        if rec.absent {
            if self.path.exists() {
                let old = sibling(&self.path, "old");
                fs::rename(&self.path, &old)?;
                sync_dir(parent)?;
                fs::remove_dir_all(&old)?;
            }
            return Ok(Restored::Done);
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
        result
            .with_context(|| format!("restoring {}", self.path.display()))
            .map(|()| Restored::Done)
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
