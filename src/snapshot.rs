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
use crate::targets::{self, SnapshotCtx, Target};
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

/// Take, verify and complete a snapshot of `targets`.
pub fn take<T: std::ops::Deref<Target = dyn Target>>(
    policy: &Policy,
    targets: &[T],
    store: &dyn Store,
    req: Request,
    ui: &Ui,
) -> Result<Manifest> {
    let created_at = crate::clock::now();
    let id = manifest::new_id(created_at);
    let scratch = crate::store::state::scratch_dir(store)?;
    let items = fingerprint_items(policy);
    // Records of the targets snapshotted so far, so a failure can release what they created
    // outside the store.
    let mut taken: Vec<crate::manifest::TargetRecord> = Vec::new();
    let result = (|| -> Result<Manifest> {
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
            let rec = t
                .snapshot(&ctx)
                .with_context(|| format!("snapshot of target {} failed", t.name()))?;
            spinner.finish();
            let (raw, stored): (u64, u64) = rec
                .artifacts
                .iter()
                .fold((0, 0), |(r, s), a| (r + a.raw_bytes, s + a.bytes));
            if let Some(why) = rec.meta.get("hot_skipped") {
                ui.warn(&format!(
                    "target {}: no hot copy ({why}); a restore after a failure decompresses the snapshot from the store instead of renaming",
                    t.name()
                ));
            }
            if rec.absent {
                ui.info(&format!("  {:<16} absent (recorded as missing)", t.name()));
            } else {
                ui.info(&format!(
                    "  {:<16} {} → {} in {:.1}s",
                    t.name(),
                    crate::ui::bytes(raw),
                    crate::ui::bytes(stored),
                    started.elapsed().as_secs_f64()
                ));
            }
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
        let mut m = Manifest {
            format: manifest::FORMAT,
            id: id.clone(),
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
            targets: records.clone(),
            hmac: None,
            unauthenticated: None,
        };
        // Every artifact is read back from the store against its size and SHA-256. Its
        // content needs no second inflate: the compressor proved each block inflates to the
        // bytes it read, and those are what the content checksum covers.
        verify_artifacts(store, &m, Depth::Checksums).context("the new snapshot failed verification")?;
        m.save(store)?;
        Ok(m)
    })();
    if result.is_err() {
        discard(store, &id);
        // A Turso branch made for this snapshot would otherwise outlive it. (Bucket clones share
        // objects with earlier snapshots: what only this one copied is left for prune.)
        for rec in &taken {
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
    result
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
