//! Retention: pruning old snapshots, boringly safely.
//!
//! Ages come from the `created_at` recorded in each manifest (through the catalog), never from
//! ids, names or file times. A snapshot is kept when any rail holds:
//!
//! - it is younger than `keep_within`;
//! - it is one of the `keep_last` newest non-rescue snapshots holding one of its targets;
//! - it is the newest snapshot that passed verification or a drill;
//! - it is pinned (`guard pin ID --reason …`);
//! - it belongs to a run that is in progress, was interrupted, left a failed state not yet
//!   recovered, or whose journal cannot be read (its recovery needs it).
//!
//! Deleting is crash-safe: a `prune.json` marker is written into the snapshot first (from then
//! on it is no longer listed or restorable), external resources are released (Turso branches,
//! bucket clones), artifacts are deleted, then the manifest, then the marker, then the catalog
//! row. A rerun finishes any snapshot it finds marked. Incomplete snapshots (no manifest) more
//! than a day old are removed as garbage.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;
use time::OffsetDateTime;

use crate::catalog::{Catalog, SnapshotRow};
use crate::error::{Failure, Kind, ResultExt};
use crate::manifest::{id_time, Manifest, SnapshotKind};
use crate::policy::{Policy, Retention};
use crate::store::{keys, Store};

/// Why a snapshot stays or goes.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub id: String,
    pub kind: String,
    pub created_at: String,
    pub keep: bool,
    pub reasons: Vec<String>,
    pub bytes: u64,
}

/// A pin: a snapshot retention must never delete.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pin {
    pub id: String,
    pub reason: String,
    pub pinned_at: String,
}

/// Every pin in the store.
pub fn pins(store: &dyn Store) -> Result<BTreeMap<String, Pin>> {
    let mut out = BTreeMap::new();
    for e in store.list(keys::PINS)? {
        if let Ok(p) = serde_json::from_slice::<Pin>(&store.get(&e.key)?) {
            out.insert(p.id.clone(), p);
        }
    }
    Ok(out)
}

fn parse_time(s: &str) -> Result<OffsetDateTime> {
    Ok(OffsetDateTime::parse(
        s,
        &time::format_description::well_known::Rfc3339,
    )?)
}

fn age_text(d: time::Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.whole_seconds().max(0) as u64)).to_string()
}

/// Decide what stays. Pure: no I/O besides what is passed in.
pub fn plan(
    snaps: &[SnapshotRow],
    retention: &Retention,
    now: OffsetDateTime,
    pinned: &BTreeMap<String, Pin>,
    protected_runs: &BTreeSet<String>,
    protected_snaps: &BTreeSet<String>,
) -> Result<Vec<Decision>> {
    let mut rows: Vec<(&SnapshotRow, OffsetDateTime)> = snaps
        .iter()
        .map(|s| Ok((s, parse_time(&s.created_at)?)))
        .collect::<Result<_>>()?;
    // Newest first, by recorded time (ids only break ties).
    rows.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.id.cmp(&a.0.id)));
    if let Some((s, t)) = rows.first() {
        if *t > now + time::Duration::days(1) {
            anyhow::bail!(
                "snapshot {} was recorded at {} — more than a day in the future of this machine's clock ({}); refusing to prune with a clock that looks wrong",
                s.id, s.created_at, crate::clock::rfc3339(now)
            );
        }
    }
    let keep_within = time::Duration::try_from(retention.keep_within).unwrap_or(time::Duration::MAX);
    let mut per_target: BTreeMap<&str, usize> = BTreeMap::new();
    let newest_verified = rows
        .iter()
        .find(|(s, _)| s.verified_ok == Some(true) || s.drilled_ok == Some(true))
        .map(|(s, _)| s.id.clone());
    let mut out = Vec::new();
    for (s, t) in &rows {
        let mut reasons = Vec::new();
        let age = now - *t;
        if age < keep_within {
            reasons.push(format!(
                "younger than {} ({} old)",
                humantime::format_duration(retention.keep_within),
                age_text(age)
            ));
        }
        if s.kind != SnapshotKind::Rescue.as_str() {
            for target in s.targets.split(',').filter(|t| !t.is_empty()) {
                let n = per_target.entry(target).or_default();
                if *n < retention.keep_last {
                    *n += 1;
                    reasons.push(format!("one of the {} newest of target {target}", retention.keep_last));
                }
            }
        }
        if newest_verified.as_deref() == Some(s.id.as_str()) {
            reasons.push("the newest snapshot that passed verification or a drill".into());
        }
        if let Some(p) = pinned.get(&s.id) {
            reasons.push(format!("pinned: {}", p.reason));
        }
        if s.run_id.as_ref().is_some_and(|r| protected_runs.contains(r)) || protected_snaps.contains(&s.id) {
            reasons.push("belongs to a run in progress or not yet recovered".into());
        }
        let keep = !reasons.is_empty();
        if !keep {
            reasons.push(format!(
                "older than {} ({} old)",
                humantime::format_duration(retention.keep_within),
                age_text(age)
            ));
        }
        out.push(Decision {
            id: s.id.clone(),
            kind: s.kind.clone(),
            created_at: s.created_at.clone(),
            keep,
            reasons,
            bytes: s.bytes as u64,
        });
    }
    Ok(out)
}

/// Delete snapshots and everything they own. Safe to call again after a crash: every snapshot
/// is marked (durably) before anything of it is deleted, and a marked snapshot is finished by the
/// next prune. Returns the bytes freed.
fn delete_snapshots(
    policy: &Policy,
    store: &dyn Store,
    catalog: &Catalog,
    ids: &[String],
    kept: &dyn Fn(&str) -> Result<Vec<crate::manifest::TargetRecord>>,
) -> Result<u64> {
    if ids.is_empty() {
        return Ok(0);
    }
    // 1. mark them all, durably, and drop them from the catalog: from here on they are neither
    //    listed nor restorable.
    let marker = serde_json::to_vec(&json!({"pruning_since": crate::clock::rfc3339(crate::clock::now())}))?;
    store.put_many(
        &ids.iter()
            .map(|id| (keys::prune_marker_key(id), marker.clone()))
            .collect::<Vec<_>>(),
    )?;
    catalog.forget_snapshots(ids)?;
    crate::faults::test_pause("prune-marked");
    // Only a policy with a target of an external kind can own something outside the store (and
    // only its credentials can release it), so only then are manifests read.
    let external = policy.targets.iter().any(|t| t.kind.caps().owns_external);
    let mut freed = 0;
    let progress = crate::progress::count("prune", ids.len() as u64);
    for id in ids {
        // 2. release what lives outside the store
        let entries = store.list(&keys::snapshot_prefix(id))?;
        let has_manifest = entries.iter().any(|e| keys::is_manifest(&e.key));
        if has_manifest && external {
            // Only what an authenticated manifest names is released (with a store key).
            if let Some(m) = Manifest::load(store, id).ok().filter(|m| m.authentic().is_ok()) {
                for rec in m.targets.iter().filter(|r| {
                    !r.absent && crate::targets::Kind::parse(&r.kind).is_some_and(|k| k.caps().owns_external)
                }) {
                    let target = match crate::targets::target_for(&policy.targets, rec) {
                        Ok(t) => t,
                        Err(e) => {
                            crate::errln!(
                                "guard: warning: snapshot {id}: cannot release target {}: {e:#}",
                                rec.name
                            );
                            continue;
                        }
                    };
                    let others = if target.release_needs_kept() {
                        kept(&rec.name)?
                    } else {
                        Vec::new()
                    };
                    target
                        .release(rec, &others, store)
                        .with_context(|| format!("snapshot {id}: releasing target {}", rec.name))?;
                }
            }
        }
        // 3. artifacts, then the manifest, then the marker and any pin
        for e in entries
            .iter()
            .filter(|e| !keys::is_manifest(&e.key) && !keys::is_prune_marker(&e.key))
        {
            store.remove(&e.key)?;
            freed += e.size;
        }
        if let Some(e) = entries.iter().find(|e| keys::is_manifest(&e.key)) {
            store.remove(&e.key)?;
            freed += e.size;
        }
        store.remove(&keys::prune_marker_key(id))?;
        let _ = store.remove(&keys::pin_key(id));
        progress.inc(1);
    }
    store.sync()?;
    Ok(freed)
}

/// Ids of snapshots marked for pruning (a prune that did not finish).
fn marked(store: &dyn Store) -> Result<Vec<String>> {
    Ok(store
        .list(keys::SNAPSHOTS)?
        .into_iter()
        .filter_map(|e| keys::prune_marker_id(&e.key).map(str::to_string))
        .collect())
}

/// What a prune decided and did.
#[derive(Debug, Clone, Serialize)]
pub struct Pruned {
    pub decisions: Vec<Decision>,
    /// Snapshots whose earlier prune was interrupted, finished now.
    pub finished_interrupted_prunes: Vec<String>,
    /// Incomplete snapshots (no manifest) more than a day old.
    pub garbage: Vec<String>,
    pub deleted: Vec<String>,
    /// What killed guards left behind ([`crate::leftovers`]): removed, or kept while in use.
    pub leftovers: crate::leftovers::Removed,
    pub bytes_freed: u64,
}

/// Snapshots a recovery may need: those of runs that are not done (in progress elsewhere, or
/// interrupted) or whose journal cannot be read, and those of the policy's failed states that
/// are still pending. Returns (run ids, snapshot ids).
fn protected(store: &dyn Store, catalog: &Catalog, policy: &Policy) -> Result<(BTreeSet<String>, BTreeSet<String>)> {
    let mut runs = BTreeSet::new();
    let mut snaps = BTreeSet::new();
    let journals = crate::journal::read_all(store)?;
    for j in &journals.ok {
        if j.phase != crate::journal::Phase::Done {
            runs.insert(j.run_id.clone());
            snaps.extend(j.snapshot_id.clone());
            snaps.extend(j.rescue_id.clone());
        }
    }
    runs.extend(journals.damaged.iter().map(|d| d.run_id.clone()));
    for j in crate::attention::assess(store, catalog, policy)?.failed() {
        snaps.extend(j.snapshot_id.clone());
        snaps.extend(j.rescue_id.clone());
    }
    Ok((runs, snaps))
}

/// Plan the prune of `policy`'s snapshots under `retention` and, unless `dry_run`, delete what
/// goes (and finish interrupted prunes, and remove old incomplete snapshots).
pub fn prune(
    policy: &Policy,
    store: &dyn Store,
    catalog: &Catalog,
    retention: &Retention,
    dry_run: bool,
) -> Result<Pruned, Failure> {
    let now = crate::clock::now();
    let (protected_runs, protected_snaps) = protected(store, catalog, policy)?;
    let snaps = catalog.snapshots(Some(&policy.name))?;
    let decisions = plan(&snaps, retention, now, &pins(store)?, &protected_runs, &protected_snaps).kind(Kind::Usage)?;
    let unfinished = marked(store)?;
    let garbage: Vec<String> = crate::manifest::incomplete_snapshots(store)?
        .into_iter()
        .filter(|id| !unfinished.contains(id))
        .filter(|id| id_time(id).is_some_and(|t| now - t > time::Duration::days(1)))
        .collect();
    let mut out = Pruned {
        decisions,
        finished_interrupted_prunes: unfinished,
        garbage,
        deleted: Vec::new(),
        leftovers: crate::leftovers::Removed::default(),
        bytes_freed: 0,
    };
    // The caller holds the policy's lock; another guard at work in the store keeps its files.
    let leftovers = crate::leftovers::find(store, policy, Some(&policy.name));
    if dry_run {
        out.leftovers.removed = leftovers;
        return Ok(out);
    }
    out.leftovers = crate::leftovers::remove(leftovers).kind(Kind::Internal)?;
    out.bytes_freed += out.leftovers.bytes_freed;
    let kept_ids: Vec<String> = out.decisions.iter().filter(|d| d.keep).map(|d| d.id.clone()).collect();
    // Fail closed: a kept snapshot whose manifest cannot be read might reference what a
    // release would delete, so it stops the prune instead of being skipped.
    let kept_records = |target: &str| -> Result<Vec<crate::manifest::TargetRecord>> {
        let mut records = Vec::new();
        for id in &kept_ids {
            let m = Manifest::load(store, id)
                .with_context(|| format!("kept snapshot {id} is unreadable; nothing it may share was released"))?;
            records.extend(m.target(target).cloned());
        }
        Ok(records)
    };
    let ids: Vec<String> = out
        .finished_interrupted_prunes
        .iter()
        .cloned()
        .chain(out.decisions.iter().filter(|d| !d.keep).map(|d| d.id.clone()))
        .collect();
    out.bytes_freed += delete_snapshots(policy, store, catalog, &ids, &kept_records).kind(Kind::Internal)?;
    out.deleted = ids;
    for id in &out.garbage {
        for e in store.list(&keys::snapshot_prefix(id))? {
            store.remove(&e.key)?;
            out.bytes_freed += e.size;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, days_ago: i64, kind: &str, targets: &str, verified: bool) -> SnapshotRow {
        let now = time::macros::datetime!(2026-06-01 00:00 UTC);
        SnapshotRow {
            id: id.into(),
            policy: "p".into(),
            kind: kind.into(),
            label: None,
            run_id: None,
            created_at: crate::clock::rfc3339(now - time::Duration::days(days_ago)),
            targets: targets.into(),
            bytes: 10,
            raw_bytes: 20,
            verified_at: None,
            verified_ok: verified.then_some(true),
            drilled_ok: None,
        }
    }

    fn decide(rows: &[SnapshotRow], within_days: u64, last: usize) -> BTreeMap<String, bool> {
        let r = Retention {
            keep_within: Duration::from_secs(within_days * 86400),
            keep_last: last,
        };
        plan(
            rows,
            &r,
            time::macros::datetime!(2026-06-01 00:00 UTC),
            &BTreeMap::new(),
            &BTreeSet::new(),
            &BTreeSet::new(),
        )
        .unwrap()
        .into_iter()
        .map(|d| (d.id, d.keep))
        .collect()
    }

    #[test]
    fn old_snapshots_go_but_keep_last_stays_whatever_the_age() {
        let rows = vec![
            row("a", 100, "pre-run", "app", false),
            row("b", 90, "pre-run", "app", false),
            row("c", 80, "pre-run", "app", false),
            row("d", 70, "pre-run", "app", false),
            row("e", 2, "pre-run", "app", false),
        ];
        let d = decide(&rows, 30, 3);
        assert!(d["e"]);
        assert!(d["d"]);
        assert!(d["c"]);
        assert!(!d["b"]);
        assert!(!d["a"]);
    }

    #[test]
    fn ordering_is_by_recorded_time_not_by_id() {
        // ids sort the other way round from their times: a keep rule sorting names would
        // delete the newest.
        let rows = vec![
            row("z-old", 100, "pre-run", "app", false),
            row("a-new", 50, "pre-run", "app", false),
        ];
        let d = decide(&rows, 30, 1);
        assert!(d["a-new"]);
        assert!(!d["z-old"]);
    }

    #[test]
    fn rescue_snapshots_do_not_count_toward_keep_last_and_verified_one_stays() {
        let rows = vec![
            row("r", 40, "rescue", "app", false),
            row("old-verified", 60, "pre-run", "app", true),
            row("p", 50, "pre-run", "app", false),
        ];
        let d = decide(&rows, 30, 1);
        assert!(d["p"]);
        assert!(!d["r"]);
        assert!(d["old-verified"], "newest verified snapshot survives");
    }

    #[test]
    fn a_clock_in_the_past_refuses() {
        let rows = vec![row("future", -10, "pre-run", "app", false)];
        let r = Retention::default();
        assert!(plan(
            &rows,
            &r,
            time::macros::datetime!(2026-06-01 00:00 UTC),
            &BTreeMap::new(),
            &BTreeSet::new(),
            &BTreeSet::new()
        )
        .is_err());
    }

    #[test]
    fn ids_carry_their_time() {
        let t = id_time("20261123T164800.123Z-a3f2").unwrap();
        assert_eq!(crate::clock::rfc3339(t), "2026-11-23T16:48:00.123Z");
    }
}
