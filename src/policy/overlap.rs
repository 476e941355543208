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

/// Refuse two targets that read and replace the same local path: the same SQLite file (or its
/// `-wal`, `-journal`, `-shm`) named twice, however spelled, or a path of one inside a `dir`
/// target's tree that its `exclude` does not leave out. Both would be snapshotted and restored,
/// one over the other: a tree's restore moves the other target's restored file (or its failed
/// state, set aside beside it) with it. Reported at the later target's line.
pub fn check_targets(targets: &[TargetSpec], cx: &ParseCtx) -> Result<()> {
    let seen: Vec<(&TargetSpec, Vec<(PathBuf, PathBuf)>)> = targets
        .iter()
        .filter(|t| t.unresolved.is_empty())
        .map(|t| {
            let paths = t.kind.local_paths().into_iter().map(|p| {
                let c = canonical(&p);
                (p, c)
            });
            (t, paths.collect())
        })
        .collect();
    for (j, (b, b_paths)) in seen.iter().enumerate() {
        for (a, a_paths) in &seen[..j] {
            for (p, cp) in b_paths {
                for (q, cq) in a_paths {
                    let msg = if cp == cq {
                        format!(
                            "target {:?}: its path {} is also target {:?}'s ({}): both would snapshot it and each restore would undo the other's. Name it in one target only.",
                            b.name,
                            shown(p, cp),
                            a.name,
                            q.display()
                        )
                    } else if let Some((outer, inner, o_path, i_path)) = nested(a, cq, b, cp, q, p) {
                        let root = outer.kind.root().map(canonical);
                        // A SQLite target's fix names its file, whichever sibling matched.
                        let main = inner.kind.local_paths().first().map(|m| canonical(m));
                        let rel = match inner.kind.as_str() {
                            "sqlite" => root
                                .zip(main)
                                .and_then(|(r, m)| inner_rel(&r, &m))
                                .map(|r| format!("{r}*")),
                            _ => root.and_then(|r| inner_rel(&r, i_path.1)).map(|r| format!("{r}/")),
                        };
                        let fix = match rel {
                            Some(glob) if inner.kind.as_str() == "sqlite" => format!(
                                "Leave it out of {:?} with `exclude = [\"{glob}\"]` (the file and its -wal, -journal and -shm), or drop one of the two",
                                outer.name
                            ),
                            Some(glob) => format!("Leave it out of {:?} with `exclude = [\"{glob}\"]`, or drop one of the two", outer.name),
                            None => format!("Leave it out of {:?} with `exclude`, or drop one of the two", outer.name),
                        };
                        format!(
                            "target {:?}: {} lies inside target {:?}'s {}: both would snapshot it, and restoring the tree would move the other target's restore (or its failed state) away. {fix}.",
                            b.name,
                            match std::ptr::eq(inner, *b) {
                                true => format!("its path {}", shown(i_path.0, i_path.1)),
                                false => format!("target {:?}'s path {}", inner.name, shown(i_path.0, i_path.1)),
                            },
                            outer.name,
                            o_path.display()
                        )
                    } else {
                        continue;
                    };
                    return Err(cx.err_line(b.line, msg));
                }
            }
        }
    }
    Ok(())
}

type Named<'a> = (&'a Path, &'a Path);

/// Which of two targets' paths lies inside the other's, unless the outer one leaves it out:
/// `(outer target, inner target, the outer path as written, the inner path as written and
/// canonical)`.
fn nested<'a>(
    a: &'a TargetSpec,
    ca: &'a Path,
    b: &'a TargetSpec,
    cb: &'a Path,
    pa: &'a Path,
    pb: &'a Path,
) -> Option<(&'a TargetSpec, &'a TargetSpec, &'a Path, Named<'a>)> {
    let (outer, inner, o_path, o_canon, i_path, i_canon) = if cb.starts_with(ca) {
        (a, b, pa, ca, pb, cb)
    } else if ca.starts_with(cb) {
        (b, a, pb, cb, pa, ca)
    } else {
        return None;
    };
    let root = outer
        .kind
        .root()
        .map(canonical)
        .unwrap_or_else(|| o_canon.to_path_buf());
    let is_dir = inner.kind.as_str() == "dir";
    if outer.kind.leaves_out(&root, i_canon, is_dir) {
        return None;
    }
    Some((outer, inner, o_path, (i_path, i_canon)))
}

/// `inner` relative to `root`, as an `exclude` glob names it.
fn inner_rel(root: &Path, inner: &Path) -> Option<String> {
    inner
        .strip_prefix(root)
        .ok()?
        .to_str()
        .map(str::to_string)
        .filter(|s| !s.is_empty())
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
