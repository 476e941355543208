//! A target must not overlap the store: a snapshot of a tree that holds the store copies the
//! store into itself, and restoring it replaces the store with its old copy, deleting the very
//! snapshots (pre-run and rescue) the run depends on (red-team finding 1). Any local path of a
//! target (a SQLite file and its `-wal`/`-journal`/`-shm` siblings, a directory) that is the
//! store or guard's state directory, holds it, or lies inside it is refused when the policy is
//! loaded. Paths are compared after resolving symlinks (`canonicalize` of the longest existing
//! part), so `.`, the policy's directory written absolutely and a link to either are caught.
//!
//! A kind that can hold the store safely (one that leaves it out of its snapshots and restores
//! around it) says so through [`crate::targets::KindSpec::may_contain_store`]; nothing else
//! needs to change here.

use std::path::{Component, Path, PathBuf};

use anyhow::Result;

use crate::parse_ctx::ParseCtx;
use crate::store::StoreSpec;
use crate::targets::TargetSpec;

/// Refuse a target whose paths overlap the store or guard's state directory.
pub fn check(targets: &[TargetSpec], store: &StoreSpec, cx: &ParseCtx) -> Result<()> {
    let guarded = guarded_dirs(store)?;
    // A target with unset variables has partial paths; it is refused when used.
    for t in targets.iter().filter(|t| t.unresolved.is_empty()) {
        let paths = t.kind.local_paths();
        for p in &paths {
            let cp = canonical(p);
            for (what, g) in &guarded {
                let cg = canonical(g);
                let relation = if cp == cg {
                    "is"
                } else if cg.starts_with(&cp) {
                    if t.kind.may_contain_store() {
                        continue;
                    }
                    "holds"
                } else if cp.starts_with(&cg) {
                    "lies inside"
                } else {
                    continue;
                };
                let mut mine = shown(p, &cp);
                if p != &paths[0] {
                    mine = format!("{mine} (beside {})", paths[0].display());
                }
                let fix = if relation == "lies inside" {
                    "Move the store elsewhere, or the target out of it"
                } else {
                    "Move the store out of the target (`store = \"/var/backups/guard\"`, or any path outside it), or protect a path that does not hold it"
                };
                return Err(cx.err_line(
                    t.line,
                    format!(
                        "target {:?}: its path {mine} {relation} {what} {}: a snapshot would copy the store into itself, and a restore would put an old copy in its place, deleting the snapshots. {fix}.",
                        t.name,
                        shown(g, &cg)
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The directories a target must stay clear of: the store (when local) and the state
/// directory guard keeps beside it (the store itself, or a cache directory for a remote store).
fn guarded_dirs(store: &StoreSpec) -> Result<Vec<(&'static str, PathBuf)>> {
    Ok(match store {
        StoreSpec::Local(p) => vec![("the store", p.clone())],
        StoreSpec::S3 { .. } => vec![(
            "guard's state directory for this store",
            crate::store::state::remote_state_dir(&store.location())?,
        )],
    })
}

/// `p`, and its canonical form when that differs.
fn shown(p: &Path, canonical: &Path) -> String {
    if p == canonical {
        p.display().to_string()
    } else {
        format!("{} (= {})", p.display(), canonical.display())
    }
}

/// `p` with symlinks resolved as far as it exists, and `.`/`..` applied to the rest.
pub fn canonical(p: &Path) -> PathBuf {
    let comps: Vec<Component> = p.components().collect();
    for n in (1..=comps.len()).rev() {
        let head: PathBuf = comps[..n].iter().collect();
        if let Ok(mut out) = std::fs::canonicalize(&head) {
            for c in &comps[n..] {
                match c {
                    Component::ParentDir => {
                        out.pop();
                    }
                    Component::CurDir => {}
                    other => out.push(other.as_os_str()),
                }
            }
            return out;
        }
    }
    p.to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_resolves_what_exists_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let real = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::create_dir(real.join("data")).unwrap();
        std::os::unix::fs::symlink(real.join("data"), real.join("link")).unwrap();
        assert_eq!(canonical(&real.join("link/new/x")), real.join("data/new/x"));
        assert_eq!(canonical(&real.join("link/../data/./y")), real.join("data/y"));
        assert_eq!(canonical(&real.join("nope/../z")), real.join("z"));
    }
}
