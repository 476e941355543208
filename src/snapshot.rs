//! Taking a snapshot of a policy's targets, and verifying one.
//!
//! A snapshot is complete only when its manifest exists, and the manifest is written only after
//! every artifact has been written, fsynced, and read back against its checksums. A failure at
//! any point removes the artifacts already written, so nothing partial is left behind.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::manifest::{self, Manifest, SnapshotKind};
use crate::policy::{CheckWhat, Policy};
use crate::store::{keys, Store};
use crate::targets::{self, is_deferred, SnapshotCtx, Target};
use crate::ui::Ui;

/// How thoroughly to verify a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Depth {
    /// Re-read every stored artifact and compare its SHA-256.
    Checksums,
    /// Also decompress it and compare the content's SHA-256.
    Content,
    /// Also check the content with its engine (SQLite integrity check, fingerprints, tar listing).
    Deep,
}

/// What the new snapshot is for.
pub struct Request<'a> {
    pub kind: SnapshotKind,
    pub label: Option<String>,
    pub run_id: Option<String>,
    pub command: Option<Vec<String>>,
    /// Only these targets (all when `None`).
    pub only: Option<&'a [String]>,
    /// Record missing targets as absent instead of failing.
    pub allow_absent: bool,
}

/// Tables/paths each target must fingerprint because an `untouched` check names them.
pub fn fingerprint_items(policy: &Policy) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for c in policy.checks.iter().chain(policy.drill.checks.iter()) {
        if let (Some(t), CheckWhat::Untouched(items) | CheckWhat::Identical(items)) = (&c.target, &c.what) {
            let v = out.entry(t.clone()).or_default();
            for i in items {
                if !v.contains(i) {
                    v.push(i.clone());
                }
            }
        }
    }
    out
}

/// A snapshot taken as far as its deferred store artifacts (issue 17): every target's state is
/// held and verified — in the store, or, for a deferred record ([`is_deferred`]), in the hot
/// copy or clone it names — but no manifest is written yet, so it is not complete.
pub struct Pending {
    /// The manifest to be; the deferred records have no artifact yet.
    pub manifest: Manifest,
}

impl Pending {
    /// The targets whose store artifact is still to be written.
    pub fn deferred(&self) -> Vec<String> {
        self.manifest
            .targets
            .iter()
            .filter(|r| is_deferred(r))
            .map(|r| r.name.clone())
            .collect()
    }
}

/// Take, verify and complete a snapshot of `targets`.
pub fn take<T: std::ops::Deref<Target = dyn Target>>(
    policy: &Policy,
    targets: &[T],
    store: &dyn Store,
    req: Request,
    ui: &Ui,
) -> Result<Manifest> {
    let pending = begin(policy, targets, store, req, ui)?;
    let id = pending.manifest.id.clone();
    let records = pending.manifest.targets.clone();
    complete(
        policy,
        targets,
        store,
        pending,
        &std::sync::atomic::AtomicBool::new(false),
    )
    .inspect_err(|_| {
        discard(store, &id);
        release_taken(targets, store, &records, ui);
    })
}

/// Take a snapshot of `targets` up to its deferred store artifacts: each target's state is
/// captured and verified (the artifacts written so far are read back against their SHA-256);
/// a guarded run's pre-run snapshot defers the artifacts of the targets that keep a hot copy
/// or clone ([`complete`] writes them). A failure removes everything it made.
pub fn begin<T: std::ops::Deref<Target = dyn Target>>(
    policy: &Policy,
    targets: &[T],
    store: &dyn Store,
    req: Request,
    ui: &Ui,
) -> Result<Pending> {
    let created_at = crate::clock::now();
    let id = manifest::new_id(created_at);
    let scratch = crate::store::state::scratch_dir(store)?;
    let items = fingerprint_items(policy);
    // Records of the targets snapshotted so far, so a failure can release what they created
    // outside the store.
    let mut taken: Vec<crate::manifest::TargetRecord> = Vec::new();
    let result = (|| -> Result<Pending> {
        let records = &mut taken;
        for t in targets {
            if let Some(only) = req.only {
                if !only.iter().any(|o| o == t.name()) {
                    continue;
                }
            }
            let empty = Vec::new();
            let ctx = SnapshotCtx {
                store,
                snapshot_id: &id,
                policy: &policy.name,
                compression: policy.compression,
                scratch: scratch.path(),
                fingerprint: items.get(t.name()).unwrap_or(&empty),
                allow_absent: req.allow_absent,
                // In a guarded run the pre-run and rescue snapshots are taken after the before
                // hooks (which stop the app) and before the after hooks.
                quiesced: req.command.is_some()
                    && matches!(req.kind, SnapshotKind::PreRun | SnapshotKind::Rescue)
                    && !policy.hooks.before.is_empty(),
                hot: match req.kind {
                    SnapshotKind::PreRun if req.command.is_some() => req.run_id.as_deref(),
                    _ => None,
                },
            };
            let started = std::time::Instant::now();
            let spinner = ui.spinner(&format!("snapshot {} ({})", t.name(), t.kind()));
            let mut rec = t
                .snapshot(&ctx)
                .with_context(|| format!("snapshot of target {} failed", t.name()))?;
            spinner.finish();
            say_taken(ui, t.name(), &mut rec, started);
            records.push(rec);
            crate::faults::test_pause("snapshot-between-targets");
            // Ctrl-C/SIGTERM during a guarded run's pre-run snapshot stops it here: the partial
            // snapshot is discarded below and the command never starts.
            if req.kind == SnapshotKind::PreRun {
                if let Some(sig) = crate::signals::pending() {
                    return Err(crate::signals::Interrupted(sig).into());
                }
            }
        }
        if records.is_empty() {
            bail!("no target to snapshot");
        }
        let m = new_manifest(policy, &req, &id, created_at, records.clone());
        // Every artifact is read back from the store against its size and SHA-256. Its
        // content needs no second inflate: the compressor proved each block inflates to the
        // bytes it read, and those are what the content checksum covers.
        verify_artifacts(store, &m, Depth::Checksums).context("the new snapshot failed verification")?;
        Ok(Pending { manifest: m })
    })();
    if result.is_err() {
        discard(store, &id);
        release_taken(targets, store, &taken, ui);
    }
    result
}

/// One line for the target just snapshotted (and a warning when it could not keep a hot copy).
fn say_taken(ui: &Ui, name: &str, rec: &mut crate::manifest::TargetRecord, started: std::time::Instant) {
    let (raw, stored): (u64, u64) = rec
        .artifacts
        .iter()
        .fold((0, 0), |(r, s), a| (r + a.raw_bytes, s + a.bytes));
    if let Some(why) = rec.meta.remove("hot_none") {
        ui.info(&format!(
            "  {name:<16} no hot copy ({why}); a restore after a failure comes from the store"
        ));
    }
    if let Some(why) = rec.meta.get("hot_skipped") {
        ui.warn(&format!(
            "target {}: no hot copy ({why}); a restore after a failure decompresses the snapshot from the store instead of renaming",
            name
        ));
    }
    if let Some(why) = rec.meta.remove("defer_skipped") {
        ui.info(&format!(
            "  {:<16} written into the store before the command ({why})",
            name
        ));
    }
    if rec.absent {
        ui.info(&format!("  {:<16} absent (recorded as missing)", name));
    } else if is_deferred(rec) {
        ui.info(&format!(
            "  {:<16} {} verified in {:.1}s (written into the store while the command runs)",
            name,
            crate::targets::held_in(rec),
            started.elapsed().as_secs_f64()
        ));
    } else {
        ui.info(&format!(
            "  {:<16} {} → {} in {:.1}s",
            name,
            crate::ui::bytes(raw),
            crate::ui::bytes(stored),
            started.elapsed().as_secs_f64()
        ));
    }
}

/// The manifest of snapshot `id` of `records`, for `req` (its hmac is set when it is saved).
fn new_manifest(
    policy: &Policy,
    req: &Request,
    id: &str,
    created_at: time::OffsetDateTime,
    records: Vec<crate::manifest::TargetRecord>,
) -> Manifest {
    Manifest {
        format: manifest::FORMAT,
        id: id.to_string(),
        policy: policy.name.clone(),
        kind: req.kind,
        label: req.label.clone(),
        run_id: req.run_id.clone(),
        created_at,
        completed_at: crate::clock::now(),
        host: crate::clock::hostname(),
        guard_version: env!("CARGO_PKG_VERSION").to_string(),
        command: req
            .command
            .clone()
            .map(|c| c.iter().map(|a| crate::secrets::redact(a)).collect()),
        targets: records,
        hmac: None,
        unauthenticated: None,
    }
}

/// Finish `p`: write its deferred artifacts ([`Target::write_deferred`]), read them back
/// against their SHA-256, and write the manifest, which makes the snapshot complete. Stops once
/// `cancel` is set. An error leaves the snapshot incomplete (no manifest) with what was written
/// before: the caller keeps it while a restore may need it, or [`abandon`]s it.
pub fn complete<T: std::ops::Deref<Target = dyn Target>>(
    policy: &Policy,
    targets: &[T],
    store: &dyn Store,
    p: Pending,
    cancel: &std::sync::atomic::AtomicBool,
) -> Result<Manifest> {
    let mut m = p.manifest;
    let deferred: Vec<String> = m
        .targets
        .iter()
        .filter(|r| is_deferred(r))
        .map(|r| r.name.clone())
        .collect();
    if !deferred.is_empty() {
        crate::faults::test_hold("deferred-artifact", cancel);
        let scratch = crate::store::state::scratch_dir(store)?;
        let items = fingerprint_items(policy);
        let empty = Vec::new();
        for rec in m.targets.iter_mut().filter(|r| is_deferred(r)) {
            let t = targets
                .iter()
                .find(|t| t.name() == rec.name)
                .ok_or_else(|| anyhow::anyhow!("no target {} to finish the snapshot of", rec.name))?;
            let tag = rec.meta.get("hot").cloned();
            let ctx = SnapshotCtx {
                store,
                snapshot_id: &m.id,
                policy: &policy.name,
                compression: policy.compression,
                scratch: scratch.path(),
                fingerprint: items.get(&rec.name).unwrap_or(&empty),
                allow_absent: false,
                quiesced: false,
                hot: tag.as_deref(),
            };
            t.write_deferred(&ctx, rec, cancel)
                .with_context(|| format!("writing the snapshot of target {} into the store", rec.name))?;
        }
        let written = Manifest {
            targets: m
                .targets
                .iter()
                .filter(|r| deferred.contains(&r.name))
                .cloned()
                .collect(),
            ..m.clone()
        };
        verify_artifacts(store, &written, Depth::Checksums).context("the new snapshot failed verification")?;
    }
    m.completed_at = crate::clock::now();
    m.save(store)?;
    Ok(m)
}

/// Give up on snapshot `p` (never completed): its objects in the store, the hot copies and
/// what its targets made outside the store go.
pub fn abandon<T: std::ops::Deref<Target = dyn Target>>(targets: &[T], store: &dyn Store, p: &Pending, ui: &Ui) {
    discard(store, &p.manifest.id);
    release_taken(targets, store, &p.manifest.targets, ui);
}

/// After a failed snapshot: drop the hot copies its records name, and release what their
/// targets made outside the store (a Turso branch database; bucket clones share objects with
/// earlier snapshots: what only this one copied is left for prune).
fn release_taken<T: std::ops::Deref<Target = dyn Target>>(
    targets: &[T],
    store: &dyn Store,
    taken: &[crate::manifest::TargetRecord],
    ui: &Ui,
) {
    for rec in taken {
        if let Some(t) = targets.iter().find(|t| t.name() == rec.name) {
            if let Some(tag) = rec.meta.get("hot") {
                t.drop_hot(tag);
            }
            if !t.release_needs_kept() {
                if let Err(e) = t.release(rec, &[], store) {
                    ui.warn(&format!(
                        "could not release what the failed snapshot made for {}: {e:#}",
                        rec.name
                    ));
                }
            }
        }
    }
}

/// Remove every object of a snapshot (manifest first, so it stops counting as complete).
pub fn discard(store: &dyn Store, id: &str) {
    let _ = store.remove(&keys::manifest_key(id));
    if let Ok(entries) = store.list(&keys::snapshot_prefix(id)) {
        for e in entries {
            let _ = store.remove(&e.key);
        }
    }
}

/// Check every artifact of a manifest at `depth` (up to [`Depth::Content`]).
pub fn verify_artifacts(store: &dyn Store, m: &Manifest, depth: Depth) -> Result<()> {
    for t in &m.targets {
        for a in &t.artifacts {
            let where_ = format!("{}/{}", store.location(), a.key);
            match store.size(&a.key)? {
                None => bail!("{where_}: missing"),
                Some(n) if n != a.bytes => {
                    bail!("{where_}: {n} bytes, manifest says {} (truncated or replaced)", a.bytes)
                }
                _ => {}
            }
            if depth == Depth::Checksums {
                let d = crate::archive::digest(store.open(&a.key)?)?;
                if d.sha256 != a.sha256 {
                    bail!("{where_}: SHA-256 mismatch (the stored file is corrupt or was modified)");
                }
            } else if a.encryption.is_some() {
                crate::artifact::read_artifact(store, a, std::io::sink())?;
            } else {
                let got = crate::archive::decompress(store.open(&a.key)?, std::io::sink());
                match got {
                    Ok(got) => crate::artifact::compare_digests(store, a, &got)?,
                    Err(e) => {
                        // Say which is wrong: the stored bytes or the gzip inside them.
                        let d = crate::archive::digest(store.open(&a.key)?)?;
                        if d.sha256 != a.sha256 {
                            bail!("{where_}: SHA-256 mismatch (the stored file is corrupt or was modified)");
                        }
                        bail!("{where_}: {e:#}");
                    }
                }
            }
        }
    }
    Ok(())
}

/// Full verification: checksums, content, and each target's engine-level checks.
pub fn verify(store: &dyn Store, m: &Manifest, depth: Depth, scratch: &Path) -> Result<()> {
    verify_for(None, store, m, depth, scratch)
}

/// [`verify`], falling back on the policy's target when a record alone cannot rebuild one (a
/// Turso target needs the policy's tokens).
pub fn verify_for(
    policy: Option<&Policy>,
    store: &dyn Store,
    m: &Manifest,
    depth: Depth,
    scratch: &Path,
) -> Result<()> {
    verify_artifacts(store, m, depth.min(Depth::Content))?;
    if depth == Depth::Deep {
        for rec in &m.targets {
            if rec.absent {
                continue;
            }
            // The policy's own target when it still names this one as it was (its settings,
            // such as `pg_bin`, apply); otherwise one rebuilt read-only from the record.
            let t = match policy {
                Some(p) => targets::for_inspection(&p.targets, rec)?,
                None => targets::from_record(rec)?,
            };
            t.deep_verify(rec, store, scratch)
                .with_context(|| format!("target {}", rec.name))?;
        }
    }
    crate::faults::test_pause("verify-before-final-check");
    // An artifact deleted or replaced while it was read (an open file stays readable after
    // unlink) must not pass: every artifact is still there, with its recorded size, at the end.
    all_present(store, m).context("after verifying")?;
    Ok(())
}

/// Every artifact of `m` exists in the store with the size the manifest records.
fn all_present(store: &dyn Store, m: &Manifest) -> Result<()> {
    for t in &m.targets {
        for a in &t.artifacts {
            let where_ = format!("{}/{}", store.location(), a.key);
            match store.size(&a.key)? {
                None => bail!("{where_}: missing"),
                Some(n) if n != a.bytes => {
                    bail!("{where_}: {n} bytes, manifest says {} (truncated or replaced)", a.bytes)
                }
                _ => {}
            }
        }
    }
    Ok(())
}
