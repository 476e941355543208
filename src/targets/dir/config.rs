//! The keys of a `kind = "dir"` target: `path` (a directory or a file) or `paths` (several),
//! `exclude` (gitignore-style globs), `keep_setid`, and `hot_copy` (when a guarded run keeps a
//! hot copy of the tree beside it).

use std::path::{Component, Path, PathBuf};

use anyhow::Result;
use serde::Deserialize;

use crate::parse_ctx::{fail, ParseCtx};

/// `kind = "dir"`: files and directory trees, snapshotted as one tar artifact.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirSpec {
    /// With `path`: that file or directory (absolute, resolved against the policy's directory).
    /// With `paths`: the target's root, the deepest directory holding the policy's directory and
    /// every path; entry names in the artifact, `untouched` items and `exclude` globs are
    /// relative to it.
    pub path: PathBuf,
    /// `keep_setid = true`: a restore keeps the setuid/setgid bits the archive holds (by
    /// default they are dropped: an archive from the store never plants a setuid file).
    pub keep_setid: bool,
    /// With `paths`: each path relative to [`DirSpec::path`] (`""` is the root itself). Empty
    /// for `path`.
    pub paths: Vec<String>,
    /// gitignore-style globs, relative to the root: what is neither snapshotted nor restored.
    pub exclude: Vec<String>,
    /// The policy file's directory (a restore never swaps a directory holding it).
    pub policy_dir: PathBuf,
    /// `hot_copy`: when a guarded run keeps a hot copy of the tree beside it.
    pub hot_copy: HotCopy,
}

/// `hot_copy = "auto" | "always" | "never"`: whether a guarded run's pre-run snapshot keeps a
/// copy of the tree beside it, so that a failure is put back by a rename (issue 17).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum HotCopy {
    /// Where the filesystem clones files (`FICLONE`: XFS, btrfs, bcachefs…), whose copies share
    /// the data; not where a copy would write the whole tree again (ext4), which costs a kept
    /// run a full copy, its sync and its removal.
    #[default]
    Auto,
    /// On every filesystem.
    Always,
    /// Never: a failure is restored from the store.
    Never,
}

impl DirSpec {
    /// A single path with no exclusions (drills, records).
    pub fn at(path: PathBuf) -> DirSpec {
        DirSpec {
            path,
            ..DirSpec::default()
        }
    }
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    path: Option<String>,
    keep_setid: Option<bool>,
    paths: Option<Vec<String>>,
    exclude: Option<Vec<String>>,
    hot_copy: Option<String>,
}

/// `a/./b/../c` → `a/c`, without touching the filesystem.
pub fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            c => out.push(c.as_os_str()),
        }
    }
    out
}

fn common_ancestor(a: &Path, b: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for (x, y) in a.components().zip(b.components()) {
        if x != y {
            break;
        }
        out.push(x.as_os_str());
    }
    out
}

pub fn parse(raw: Raw, cx: &mut ParseCtx) -> Result<DirSpec> {
    let policy_dir = normalize(cx.base_dir());
    let exclude = cx.list("exclude", raw.exclude)?;
    for g in &exclude {
        if g.trim().is_empty() {
            fail!(cx, "`exclude` holds an empty pattern");
        }
        if let Err(e) = ignore::gitignore::GitignoreBuilder::new("/").add_line(None, g) {
            return Err(cx.fail_key("exclude", format!("{g:?} is not a valid glob: {e}")));
        }
    }
    let (path, paths) = match (raw.path, raw.paths) {
        (Some(_), Some(_)) => fail!(cx, "has both `path` and `paths`; use one (`paths` for several)"),
        (p @ Some(_), None) => (normalize(&cx.need_path("path", p)?), Vec::new()),
        (None, Some(list)) => {
            let list = cx.list("paths", Some(list))?;
            if list.is_empty() {
                return Err(cx.fail_key("paths", "lists nothing"));
            }
            let abs: Vec<PathBuf> = list.iter().map(|p| normalize(&cx.resolve(p))).collect();
            for (i, a) in abs.iter().enumerate() {
                for (j, b) in abs.iter().enumerate() {
                    if i != j && a.starts_with(b) {
                        return Err(cx.fail_key(
                            "paths",
                            format!("{:?} lies inside {:?}; list each path once", list[i], list[j]),
                        ));
                    }
                }
            }
            let root = abs.iter().fold(policy_dir.clone(), |r, p| common_ancestor(&r, p));
            let rel = abs
                .iter()
                .map(|p| {
                    p.strip_prefix(&root)
                        .expect("under the root")
                        .to_string_lossy()
                        .into_owned()
                })
                .collect();
            (root, rel)
        }
        (None, None) => return Err(cx.fail_sentence("needs `path` (a file or a directory) or `paths = [...]`")),
    };
    let hot_copy = cx.one_of(
        "hot_copy",
        raw.hot_copy,
        HotCopy::Auto,
        &[
            ("auto", HotCopy::Auto),
            ("always", HotCopy::Always),
            ("never", HotCopy::Never),
        ],
    )?;
    Ok(DirSpec {
        hot_copy,
        keep_setid: raw.keep_setid.unwrap_or(false),
        path,
        paths,
        exclude,
        policy_dir,
    })
}
