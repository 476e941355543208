//! Files and directory trees, as applications keep them.
//!
//! A target is one `path` (a directory or a file) or several `paths` under a root (the deepest
//! directory holding the policy's directory and every path), minus the `exclude` globs and,
//! always, guard's own store, state directory and temporary files. Snapshot: walk each path
//! (walkdir, sorted, links below a path stored as links, not followed) into one tar stream,
//! names relative to the root, compressed on the fly; every file is hashed while it is read
//! into the tar and listed in the manifest, which also records the paths and the exclusions. A
//! file that changes size while being read fails the snapshot.
//!
//! Restore, fast path: a single directory that can be swapped whole is unpacked into a private
//! sibling, checked against the manifest, and exchanged with the live tree in one
//! `renameat2(RENAME_EXCHANGE)` ([`staged`], [`swap`]). Every other case — the working directory, a mount
//! point, the policy's own directory (or one holding the store), a target with exclusions,
//! files, several paths — is restored in place ([`inplace`]): contents replaced, file by file.
//!
//! A symlinked `path` (or item of `paths`) is followed: the snapshot records where it leads
//! (`meta.resolved`, `meta["resolved:ITEM"]`), and a restore writes there, keeping the link,
//! and only while the link still leads there.

pub mod config;
mod copy;
mod hot;
mod inplace;
mod late;
mod owners;
mod staged;
pub mod swap;
mod tree;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use super::{Restored, SnapshotCtx, Target};
use crate::manifest::{Fingerprint, TargetRecord};
use crate::store::local::create_dir_all_private;
use crate::store::Store;
use crate::targets::{KindSpec, TargetSpec};
pub use config::DirSpec;

use staged::{is_replaced_by_file, root_meta};
use tree::{compare_listings, fingerprint_of, listing_of_tar, scan_items, write_tar, Filter};

pub struct DirTarget {
    spec: TargetSpec,
    /// `path`, or the root of `paths`.
    path: PathBuf,
    /// `paths`, relative to [`DirTarget::path`]; empty for a single `path`.
    paths: Vec<String>,
    exclude: Vec<String>,
    policy_dir: PathBuf,
    /// A view over the failed tree a swap set aside ([`hot`]): the policy's path and the
    /// directory it led to, recorded as the source of its rescue snapshot.
    shown: Option<Shown>,
}

/// What a view over a failed tree set aside stands for.
struct Shown {
    path: PathBuf,
    resolved: Option<String>,
}

impl DirTarget {
    pub fn new(spec: TargetSpec, path: PathBuf) -> Self {
        let (paths, exclude, policy_dir) = match &spec.kind {
            KindSpec::Dir(d) => (d.paths.clone(), d.exclude.clone(), d.policy_dir.clone()),
            _ => Default::default(),
        };
        DirTarget {
            spec,
            path,
            paths,
            exclude,
            policy_dir,
            shown: None,
        }
    }

    /// The root and items as they are now: `paths`; a directory `path` is the root itself
    /// (`[""]`); a file `path` is its name under its parent.
    fn live_layout(&self) -> (PathBuf, Vec<String>) {
        if !self.paths.is_empty() {
            return (self.path.clone(), self.paths.clone());
        }
        match (fs::metadata(&self.path), self.path.parent(), self.path.file_name()) {
            (Ok(m), Some(parent), Some(name)) if !m.is_dir() => {
                (parent.to_path_buf(), vec![name.to_string_lossy().into_owned()])
            }
            _ => (self.path.clone(), vec![String::new()]),
        }
    }

    /// The root and items a record was taken with, checked against the policy: a restore writes
    /// where the policy says, the record only tells a file `path` from a directory one.
    fn layout_for(&self, rec: &TargetRecord) -> Result<(PathBuf, Vec<String>)> {
        if !self.paths.is_empty() {
            if rec.paths != self.paths {
                bail!(
                    "target {}: the snapshot holds paths {:?}, the policy protects {:?}; restore it by hand (docs/store.md, \"Restoring by hand\")",
                    self.spec.name,
                    rec.paths,
                    self.paths
                );
            }
            return Ok((self.path.clone(), self.paths.clone()));
        }
        if rec.paths.is_empty() {
            return Ok((self.path.clone(), vec![String::new()]));
        }
        match (self.path.parent(), self.path.file_name()) {
            (Some(parent), Some(name)) if rec.paths == [name.to_string_lossy().into_owned()] => {
                Ok((parent.to_path_buf(), rec.paths.clone()))
            }
            _ => bail!(
                "target {}: the snapshot holds paths {:?}, the policy protects {}",
                self.spec.name,
                rec.paths,
                self.path.display()
            ),
        }
    }

    fn filter(&self, root: &Path) -> Result<Filter> {
        Filter::new(root, &self.exclude).with_context(|| format!("target {}: exclude", self.spec.name))
    }

    /// Refuse a tree an in-place restore left half done, and a target inside guard's own store.
    fn refuse_if_half_restored(&self, root: &Path) -> Result<()> {
        self.refuse_inside_store(root)?;
        if let Some((staging, snap)) = inplace::interrupted(root) {
            bail!(
                "target {}: an in-place restore from snapshot {snap} was interrupted ({} is its record), so its files are half restored. Finish it: `guard recover` after an interrupted run, else `guard restore {snap} --target {}`",
                self.spec.name,
                staging.display(),
                self.spec.name
            );
        }
        Ok(())
    }

    /// Refuse a target that is guard's store or lies inside it.
    fn refuse_inside_store(&self, root: &Path) -> Result<()> {
        if let Ok(real) = fs::canonicalize(root) {
            for d in crate::store::state::local_dirs() {
                if fs::canonicalize(&d).is_ok_and(|d| real.starts_with(d)) {
                    bail!(
                        "target {}: {} lies inside guard's store {}; protect the application's files, not the store",
                        self.spec.name,
                        root.display(),
                        d.display()
                    );
                }
            }
        }
        Ok(())
    }

    /// Can the directory at `dest` be swapped whole by rename? Not when it is in use or holds
    /// what must stay: the working directory, a mount point, the policy's directory, guard's
    /// store or state directory, or anything an `exclude` glob keeps.
    fn swappable(&self, dest: &Path) -> bool {
        if !self.exclude.is_empty() {
            return false;
        }
        let Ok(real) = fs::canonicalize(dest) else {
            return true;
        };
        let Some(parent) = real.parent() else {
            return false;
        };
        match (fs::metadata(&real), fs::metadata(parent)) {
            (Ok(m), Ok(p)) if m.is_dir() && m.dev() != p.dev() => return false,
            (Ok(m), _) if !m.is_dir() => return true,
            _ => {}
        }
        let inside = |p: &Path| fs::canonicalize(p).is_ok_and(|c| c.starts_with(&real));
        let cwd = std::env::current_dir().ok();
        !(cwd.as_deref().is_some_and(inside)
            || inside(&self.policy_dir)
            || crate::store::state::local_dirs().iter().any(|d| inside(d)))
    }
}

/// The entries of `files` that `filter` does not exclude (a snapshot taken before a glob was
/// added still restores: what the glob now covers is left alone).
fn kept(files: &[crate::manifest::FileEntry], filter: &Filter) -> Vec<crate::manifest::FileEntry> {
    files
        .iter()
        .filter(|f| !filter.excluded(&f.path, f.kind == "dir"))
        .cloned()
        .collect()
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
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(super::missing_path(name, "directory", p)),
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

impl DirTarget {
    /// Today's snapshot: the live tree as a tar stream into the store, each file hashed as it
    /// is read. Its listing and artifact.
    fn store_live(
        &self,
        ctx: &SnapshotCtx,
        root: &Path,
        items: &[String],
        filter: &Filter,
    ) -> Result<(Vec<crate::manifest::FileEntry>, crate::manifest::Artifact)> {
        let (reader, writer) = std::io::pipe()?;
        let (artifact, listing) = std::thread::scope(|s| {
            let producer =
                s.spawn(|| write_tar(root, items, filter, std::io::BufWriter::with_capacity(1 << 20, writer)));
            let artifact = ctx.write_artifact(ctx.key(&self.spec.name, "tar.gz"), "tar", reader);
            let listing = producer.join().map_err(|_| anyhow!("tar writer panicked"));
            (artifact, listing)
        });
        let listing = listing?.with_context(|| format!("target {}", self.spec.name))?;
        Ok((listing, artifact?))
    }

    /// The fingerprints the policy's `untouched` checks name, from the snapshot's listing.
    fn fingerprint_items(
        &self,
        ctx: &SnapshotCtx,
        rec: &mut TargetRecord,
        root: &Path,
        items: &[String],
        filter: &Filter,
        listing: &[crate::manifest::FileEntry],
    ) -> Result<()> {
        for item in ctx.fingerprint {
            let rel = item.trim_matches('/');
            let p = if rel.is_empty() || rel == "." {
                root.to_path_buf()
            } else {
                root.join(rel)
            };
            // A rescue records what is there: a path the command deleted is absent (its
            // fingerprint says so), never a reason to keep no rescue and restore nothing.
            let gone = !p.exists();
            if (gone && !ctx.allow_absent) || !(rel.is_empty() || rel == "." || tree::within(items, rel)) {
                bail!(
                    "target {}: {} is not among its files (named by an `untouched` check; it is relative to {})",
                    self.spec.name,
                    p.display(),
                    root.display()
                );
            }
            if filter.excluded(rel, p.is_dir()) {
                bail!(
                    "target {}: {item} is excluded by `exclude` but named by an `untouched` check",
                    self.spec.name
                );
            }
            rec.fingerprints.insert(item.clone(), fingerprint_of(listing, item));
        }
        Ok(())
    }
}

/// The file listing of `rec` read back from its store artifact (its stored bytes and content
/// checked against the SHA-256 the record holds): for a record the run journal held without it
/// ([`crate::journal::without_listing`]).
pub fn listing_from_store(rec: &TargetRecord, store: &dyn Store) -> Result<Vec<crate::manifest::FileEntry>> {
    let a = rec
        .artifacts
        .first()
        .ok_or_else(|| anyhow!("target {}: no store artifact to read its listing from", rec.name))?;
    if is_replaced_by_file(rec) {
        bail!("target {}: a file's artifact holds no listing", rec.name);
    }
    let (reader, writer) = std::io::pipe()?;
    let consumer = std::thread::spawn(move || listing_of_tar(std::io::BufReader::new(reader)));
    let r = crate::artifact::read_artifact(store, a, writer);
    let listing = consumer.join().map_err(|_| anyhow!("tar reader panicked"))?;
    r?;
    listing.with_context(|| format!("{}/{}: not a valid tar stream", store.location(), a.key))
}

impl Target for DirTarget {
    fn spec(&self) -> &TargetSpec {
        &self.spec
    }

    fn source(&self) -> String {
        match &self.shown {
            Some(s) => s.path.display().to_string(),
            None => self.path.display().to_string(),
        }
    }

    fn preflight(&self) -> Result<()> {
        let (root, items) = self.live_layout();
        if items == [""] {
            self.finish_interrupted_swap()?;
            self.live_dir()?;
            fs::read_dir(&self.path)
                .with_context(|| format!("target {}: cannot read {}", self.spec.name, self.path.display()))?;
        } else {
            for i in &items {
                let p = root.join(i);
                match fs::metadata(&p) {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Err(super::missing_path(&self.spec.name, "", &p))
                    }
                    Err(e) => {
                        return Err(e)
                            .with_context(|| format!("target {}: cannot read {}", self.spec.name, p.display()))
                    }
                }
            }
        }
        self.refuse_if_half_restored(&root)
    }

    fn snapshot(&self, ctx: &SnapshotCtx) -> Result<TargetRecord> {
        let mut rec = TargetRecord {
            name: self.spec.name.clone(),
            kind: "dir".into(),
            source: self.source(),
            ..Default::default()
        };
        let (root, items) = self.live_layout();
        if items == [""] {
            self.finish_interrupted_swap()?;
        }
        let missing = items
            .iter()
            .all(|i| fs::symlink_metadata(if i.is_empty() { root.clone() } else { root.join(i) }).is_err());
        if missing && ctx.allow_absent {
            rec.absent = true;
            rec.paths = self.paths.clone();
            for item in ctx.fingerprint {
                rec.fingerprints.insert(item.clone(), Fingerprint::absent());
            }
            return Ok(rec);
        }
        if ctx.allow_absent {
            // A rescue keeps whatever is there: paths the command deleted are simply absent,
            // and a tree an interrupted in-place restore left half done is kept as it is (so
            // `guard recover` of a `guard restore --no-rescue` can finish), saying so.
            self.refuse_inside_store(&root)?;
            if let Some((_, snap)) = inplace::interrupted(&root) {
                rec.meta.insert("half_restored_from".into(), snap);
            }
        } else {
            self.preflight()?;
        }
        if items == [""] {
            let real = self.live_dir()?;
            match &self.shown {
                Some(s) => {
                    if let Some(r) = &s.resolved {
                        rec.meta.insert("resolved".into(), r.clone());
                    }
                }
                None if real != self.path => {
                    rec.meta.insert("resolved".into(), real.display().to_string());
                }
                None => {}
            }
            let meta = fs::metadata(&real)?;
            rec.meta
                .insert("mode".into(), format!("{:o}", meta.permissions().mode() & 0o7777));
            rec.meta.insert("uid".into(), meta.uid().to_string());
            rec.meta.insert("gid".into(), meta.gid().to_string());
        } else {
            rec.paths = items.clone();
            let shown_root = self.shown.as_ref().and_then(|s| s.path.parent());
            rec.meta
                .insert("root".into(), shown_root.unwrap_or(&root).display().to_string());
            for i in items.iter().filter(|_| self.shown.is_none()) {
                let p = root.join(i);
                if fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink()) {
                    if let Ok(real) = fs::canonicalize(&p) {
                        rec.meta.insert(format!("resolved:{i}"), real.display().to_string());
                    }
                }
            }
        }
        rec.exclude = self.exclude.clone();
        rec.tools.insert("format".into(), "tar (GNU headers)".into());
        let filter = self.filter(&root)?;
        let hot = self.hot_copy(ctx, &mut rec, &root, &items, &filter)?;
        let taken = (|| -> Result<(Vec<crate::manifest::FileEntry>, Option<crate::manifest::Artifact>)> {
            let (listing, artifact) = match &hot {
                Some((copy, listing)) => (listing.clone(), self.store_now(ctx, &mut rec, copy, listing)?),
                None => {
                    let (l, a) = self.store_live(ctx, &root, &items, &filter)?;
                    (l, Some(a))
                }
            };
            self.fingerprint_items(ctx, &mut rec, &root, &items, &filter, &listing)?;
            Ok((listing, artifact))
        })();
        let (listing, artifact) = match taken {
            Ok(t) => t,
            Err(e) => {
                if let Some((copy, _)) = &hot {
                    let _ = hot::remove_tree(copy);
                }
                return Err(e);
            }
        };
        rec.files = listing;
        rec.artifacts.extend(artifact);
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
            tree::unpack(ar, &unpack_to)
        });
        let r = crate::artifact::read_artifact(store, a, writer);
        let unpacked = consumer.join().map_err(|_| anyhow!("tar reader panicked"))?;
        r?;
        unpacked.with_context(|| format!("{}/{}: not a valid tar stream", store.location(), a.key))?;
        let items = if rec.paths.is_empty() {
            vec![String::new()]
        } else {
            rec.paths.clone()
        };
        compare_listings(&rec.files, &scan_items(&dest, &items, &Filter::none())?).with_context(|| {
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
                    paths: rec.paths.clone(),
                    ..DirSpec::default()
                }),
            )
        };
        Ok(Some(Box::new(DirTarget::new(spec, dest))))
    }

    fn restore(&self, rec: &TargetRecord, store: &dyn Store) -> Result<Restored> {
        if let Some(done) =
            crate::targets::restore_unstored(rec, &self.path.display().to_string(), || Ok(self.renamed_in(rec)))
        {
            return done;
        }
        let (root, items) = self.layout_for(rec)?;
        let filter = self.filter(&root)?;
        if items == [""] {
            self.finish_interrupted_swap()?;
            let dest = self.restore_dest(rec)?;
            let is_dir = fs::metadata(&dest).is_ok_and(|m| m.is_dir());
            if is_replaced_by_file(rec) || !is_dir || self.swappable(&dest) {
                return self.restore_by_swap(rec, store, &dest);
            }
            let dest_of = |rel: &str| dest.join(rel);
            inplace::restore(
                &dest,
                &items,
                &filter,
                rec,
                &kept(&rec.files, &filter),
                store,
                &dest_of,
                self.setid_mask(),
            )
            .with_context(|| format!("restoring {} in place", self.path.display()))?;
            // The directory itself stays, with its own mode and owner (R17).
            return Ok(Restored::Done);
        }
        // Items that were symlinks are written where they led, while they still lead there.
        let mut resolved: BTreeMap<String, PathBuf> = BTreeMap::new();
        for i in &items {
            if let Some(r) = rec.meta.get(&format!("resolved:{i}")) {
                let now = fs::canonicalize(root.join(i)).ok();
                if now.as_deref() != Some(Path::new(r)) {
                    bail!(
                        "target {}: the snapshot read {r} through {}, which now leads to {}; nothing was restored for this target. Point it back at {r} (ln -sfn) and run the restore again",
                        self.spec.name,
                        root.join(i).display(),
                        now.map(|p| p.display().to_string()).unwrap_or_else(|| "nothing".into())
                    );
                }
                resolved.insert(i.clone(), PathBuf::from(r));
            }
        }
        let dest_of = |rel: &str| resolved.get(rel).cloned().unwrap_or_else(|| root.join(rel));
        inplace::restore(
            &root,
            &items,
            &filter,
            rec,
            &kept(&rec.files, &filter),
            store,
            &dest_of,
            self.setid_mask(),
        )
        .with_context(|| format!("restoring {} in place", self.source()))?;
        Ok(Restored::Done)
    }

    fn verify_restored(&self, rec: &TargetRecord) -> Result<()> {
        let (root, items) = self.layout_for(rec)?;
        let filter = self.filter(&root)?;
        if items != [""] {
            for i in &items {
                if let Some(r) = rec.meta.get(&format!("resolved:{i}")) {
                    let now = fs::canonicalize(root.join(i)).ok();
                    if now.as_deref() != Some(Path::new(r)) {
                        bail!("{} no longer leads to {r}", root.join(i).display());
                    }
                }
            }
            return compare_listings(&kept(&rec.files, &filter), &scan_items(&root, &items, &filter)?);
        }
        if rec.absent {
            let left = if fs::metadata(&self.path).is_ok_and(|m| m.is_dir()) {
                scan_items(&self.path, &items, &filter)?
            } else {
                Vec::new()
            };
            // Swapped away, or (in use) emptied of everything but what is left out.
            let emptied = left.is_empty() && !self.swappable(&self.path);
            if fs::symlink_metadata(&self.path).is_ok() && !emptied {
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
        if crate::targets::is_deferred(rec) {
            // No content checksum reached the store: the proof is that the live path names the
            // hot copy, unchanged (a stat pass) since its files were hashed.
            if !self.renamed_in(rec) {
                bail!("{} is not the hot copy the snapshot recorded", self.path.display());
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
        compare_listings(&kept(&rec.files, &filter), &scan_items(&self.path, &items, &filter)?)
    }

    fn fingerprint(&self, items: &[String]) -> Result<BTreeMap<String, Fingerprint>> {
        let (root, layout) = self.live_layout();
        let listing = scan_items(&root, &layout, &self.filter(&root)?)?;
        Ok(items.iter().map(|i| (i.clone(), fingerprint_of(&listing, i))).collect())
    }

    fn query(&self, _sql: &str) -> Result<String> {
        bail!("target {} is a directory; it does not answer SQL", self.spec.name)
    }

    fn swap_in(&self, rec: &TargetRecord, run_id: &str) -> Result<Option<Box<dyn Target>>> {
        if self.shown.is_some() {
            return Ok(None);
        }
        Ok(self.swap_hot(rec, run_id)?.map(|aside| {
            let spec = self.spec.clone();
            let mut view = DirTarget::new(spec, aside);
            view.shown = Some(Shown {
                path: self.path.clone(),
                resolved: rec.meta.get("resolved").cloned(),
            });
            Box::new(view) as Box<dyn Target>
        }))
    }

    fn stage_late(&self, rec: &TargetRecord, store: &dyn Store, run_id: &str) -> Result<Option<String>> {
        self.late_copy(rec, store, run_id)
    }

    fn write_deferred(
        &self,
        ctx: &SnapshotCtx,
        rec: &mut TargetRecord,
        cancel: &std::sync::atomic::AtomicBool,
    ) -> Result<()> {
        self.write_hot(ctx, rec, cancel)
    }

    fn drop_hot(&self, run_id: &str) {
        if self.shown.is_some() {
            return;
        }
        let (did, kept) = match hot::drop_copy(&self.swap_path(), run_id) {
            Ok(None) => return,
            Ok(Some(hot::Dropped::Exchanged(p))) => (
                "was killed after its exchange: the live tree is the pre-run copy, and the failed tree under the hot copy's name was set aside",
                p,
            ),
            Ok(Some(hot::Dropped::RenamedIn(p))) => (
                "was killed between its two renames: the pre-run copy was renamed into the free live path, and the failed tree is kept",
                p,
            ),
            Err(e) => return crate::errln!("guard: warning: target {}: {e:#}", self.spec.name),
        };
        crate::errln!(
            "guard: target {}: a restore by rename {did} in {}",
            self.spec.name,
            kept.display()
        );
    }

    fn drop_aside(&self) -> Result<()> {
        match (&self.shown, self.path.parent()) {
            (Some(_), Some(holder)) => {
                hot::remove_tree(holder).with_context(|| format!("cannot remove {}", holder.display()))
            }
            _ => Ok(()),
        }
    }

    fn aside(&self, run_id: &str) -> Option<String> {
        let own = self.shown.is_some().then(|| self.path.clone());
        own.or_else(|| hot::aside_entry(&self.swap_path(), run_id))
            .filter(|p| fs::symlink_metadata(p).is_ok())
            .map(|p| p.display().to_string())
    }
}

/// Does the target `spec` leave `inner` (a path under its root, canonical like the root
/// `canonical_root`) out of its snapshots and restores through `exclude`? For the policy's
/// check that two targets never snapshot the same path.
pub fn excludes(spec: &DirSpec, canonical_root: &Path, inner: &Path, is_dir: bool) -> bool {
    let Some(rel) = inner.strip_prefix(canonical_root).ok().and_then(Path::to_str) else {
        return false;
    };
    !rel.is_empty() && Filter::new(&spec.path, &spec.exclude).is_ok_and(|f| f.excluded(rel, is_dir))
}

/// Where run `tag` sets the failed state of the tree at `live` aside (`.NAME.guard-failed-RUN/NAME`),
/// for messages about an interrupted run.
pub fn aside_of(live: &Path, tag: &str) -> Option<PathBuf> {
    hot::aside_entry(live, tag)
}
