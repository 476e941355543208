//! Snapshots whose `manifest.json` is there but cannot be read (truncated, not JSON, not a
//! manifest, another id): red-team finding 19's fourth case.
//!
//! A manifest is written last, by temp file + fsync + rename, so a damaged one is damage from
//! outside guard (a disk, a hand, a sync tool). Such a snapshot is never complete: the catalog
//! does not index it and nothing restores from it. It is not hidden either: `list`, `status` and
//! `prune` name it, `verify` (every snapshot) reports it as failed beside the others it checks,
//! and `show`, `restore`, `verify`, `drill` and `pin` given its id refuse with exit 65 naming
//! the file. `prune` never deletes it: guard cannot tell what it holds or references, and its
//! artifacts may still restore by hand (docs/store.md, "Restoring by hand"); remove it yourself
//! once you know you do not need it.

use std::collections::BTreeSet;

use anyhow::Result;
use serde::Serialize;

use crate::catalog::Catalog;
use crate::manifest::Manifest;
use crate::store::{keys, Store};

/// One damaged snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct Damaged {
    pub id: String,
    /// Where the manifest is (`STORE/snapshots/ID/manifest.json`).
    pub manifest: String,
    /// Why it cannot be read.
    pub error: String,
    /// The policy named in what is left of it, when that can be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
}

impl Damaged {
    /// One line for people: what is wrong, and what to do.
    pub fn line(&self) -> String {
        format!(
            "snapshot {} cannot be used: its manifest {} is damaged ({}). guard never restores from it nor prunes it; its artifacts may still restore by hand (docs/store.md, \"Restoring by hand\"); remove its directory yourself once you know you do not need it",
            self.id, self.manifest, self.error
        )
    }
}

/// Damaged snapshots in `store` that may be `policy`'s: those naming it, and those whose policy
/// cannot be read. The catalog (just synced) indexes every manifest that loads, so only the
/// manifests it lacks are read again.
pub fn find(store: &dyn Store, catalog: &Catalog, policy: &str) -> Result<Vec<Damaged>> {
    let listed = store.list(keys::SNAPSHOTS)?;
    let pruning: BTreeSet<&str> = listed.iter().filter_map(|e| keys::prune_marker_id(&e.key)).collect();
    let known: BTreeSet<String> = catalog.snapshots(None)?.into_iter().map(|s| s.id).collect();
    let mut out = Vec::new();
    for id in listed
        .iter()
        .filter_map(|e| keys::manifest_id(&e.key))
        .filter(|id| !pruning.contains(id) && !known.contains(*id))
    {
        let Err(e) = Manifest::load(store, id) else {
            // Completed since the catalog was synced.
            continue;
        };
        let named = store.get(&keys::manifest_key(id)).ok().and_then(|b| policy_named(&b));
        if named.as_deref().is_some_and(|p| p != policy) {
            continue;
        }
        out.push(Damaged {
            id: id.to_string(),
            manifest: format!("{}/{}", store.location(), keys::manifest_key(id)),
            error: crate::secrets::redact(&format!("{e:#}")),
            policy: named,
        });
    }
    Ok(out)
}

/// The damaged snapshot `id` (or the one unique prefix `id` names) of `policy`, if there is one.
pub fn named(store: &dyn Store, catalog: &Catalog, policy: &str, id: &str) -> Option<Damaged> {
    let found = find(store, catalog, policy).ok()?;
    let mut m = found.into_iter().filter(|d| d.id.starts_with(id));
    match (m.next(), m.next()) {
        (Some(d), None) => Some(d),
        _ => None,
    }
}

/// The `"policy"` string of a (possibly truncated) manifest, when it is still whole.
fn policy_named(bytes: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(bytes);
    let at = text.find("\"policy\"")? + "\"policy\"".len();
    let rest = text[at..].trim_start().strip_prefix(':')?.trim_start();
    let mut de = serde_json::Deserializer::from_str(rest).into_iter::<String>();
    de.next()?.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_is_read_from_what_is_left_of_a_manifest() {
        assert_eq!(
            policy_named(br#"{"format": 1, "id": "x", "policy": "lending", "kind": "pre"#).as_deref(),
            Some("lending")
        );
        assert_eq!(policy_named(br#"{"format":1,"id":"x","policy":"lend"#), None);
        assert_eq!(policy_named(br#"{"format":1,"id""#), None);
        assert_eq!(policy_named(b"\x00\xff garbage"), None);
    }
}
