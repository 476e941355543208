//! A hot copy made late (issue 17): a `dir` target whose pre-run snapshot kept no hot copy
//! (`hot_copy = "never"`, or `"auto"` on a filesystem that cannot clone files) is restored
//! after a failed run the way a hot copy is, in one pass before "restored": the snapshot's tar
//! is unpacked from the store into `.NAME.guard-hot-RUN` beside the live tree (the hot copy's
//! own name), every file's SHA-256 checked against the manifest's listing as the staged restore
//! checks it ([`super::staged`]), and the copy's identity ([`super::hot::identity`]) taken; the
//! restore journals that identity, then [`super::hot`]'s `swap_hot` exchanges the copy with the
//! failed tree, which is set aside as `.NAME.guard-failed-RUN/NAME` (the same marker and names),
//! and the rescue snapshot tars the failed tree once every target is back.
//!
//! Only a whole directory that a restore swaps by rename takes this path; the others (in
//! place: the working directory, a mount point, the policy's or the store's directory,
//! `paths`, `exclude`, a file) are restored as before, after their rescue.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use anyhow::{Context, Result};

use super::hot::{aside_path, hot_path, identity, remove_tree};
use super::staged::is_replaced_by_file;
use super::DirTarget;
use crate::manifest::TargetRecord;
use crate::store::Store;

impl DirTarget {
    /// [`crate::targets::Target::stage_late`] for a directory tree ([module docs](self)).
    pub(super) fn late_copy(&self, rec: &TargetRecord, store: &dyn Store, tag: &str) -> Result<Option<String>> {
        if self.shown.is_some()
            || rec.absent
            || !rec.paths.is_empty()
            || !self.paths.is_empty()
            || !self.exclude.is_empty()
            || rec.meta.contains_key("hot")
            || is_replaced_by_file(rec)
        {
            return Ok(None);
        }
        let Some(a) = rec.artifacts.first() else {
            return Ok(None);
        };
        self.finish_interrupted_swap()?;
        let live = self.restore_dest(rec)?;
        if !fs::symlink_metadata(&live).is_ok_and(|m| m.is_dir()) || !self.swappable(&live) {
            return Ok(None);
        }
        let (Some(copy), Some(holder)) = (hot_path(&live, tag), aside_path(&live, tag)) else {
            return Ok(None);
        };
        let exists = |p: &Path| fs::symlink_metadata(p).is_ok();
        if exists(&copy) || exists(&holder) {
            // Left by an earlier attempt of this run: not ours to reuse; the usual path.
            return Ok(None);
        }
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&copy)
            .with_context(|| format!("cannot create {}", copy.display()))?;
        let made = (|| -> Result<String> {
            self.unpack_checked(rec, a, store, &live, &copy)?;
            crate::faults::test_pause("dir-late-unpacked");
            identity(&copy)
        })();
        if made.is_err() {
            let _ = remove_tree(&copy);
        }
        made.map(Some)
            .with_context(|| format!("unpacking snapshot of {} into {}", self.path.display(), copy.display()))
    }
}
