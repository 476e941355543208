//! A restore from the store's artifact by exchange: the tree (or the file a command replaced a
//! directory with) is unpacked into a private sibling, checked against the manifest, given the
//! live root's own mode and owner, and takes the live name in one `renameat2(RENAME_EXCHANGE)`
//! ([`super::swap`]).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use anyhow::{anyhow, Context, Result};

use super::tree::{compare_listings, scan};
use super::{inplace, owners, sibling, sibling_named, swap, tree, DirTarget};
use crate::manifest::TargetRecord;
use crate::store::local::{create_dir_all_private, sync_dir};
use crate::store::Store;
use crate::targets::Restored;

impl DirTarget {
    /// The fast path: a verified tree (or file) takes the live name in one exchange.
    pub(super) fn restore_by_swap(&self, rec: &TargetRecord, store: &dyn Store, dest: &Path) -> Result<Restored> {
        let dest = dest.to_path_buf();
        let parent = dest.parent().unwrap_or(Path::new(".")).to_path_buf();
        if rec.absent {
            if fs::symlink_metadata(&dest).is_ok() {
                let old = sibling(&dest, "old");
                fs::rename(&dest, &old)?;
                sync_dir(&parent)?;
                swap::remove_any(&old)?;
            }
            return Ok(Restored::Done);
        }
        let a = rec
            .artifacts
            .first()
            .ok_or_else(|| anyhow!("snapshot of {} has no artifact", rec.name))?;
        fs::create_dir_all(&parent)?;
        if is_replaced_by_file(rec) {
            // A rescue of a directory the command had replaced with a file: put the file back.
            let (f, tmp) = crate::store::local::private_temp_beside(&dest)?;
            let result = (|| -> Result<()> {
                let mut w = std::io::BufWriter::new(f);
                crate::artifact::read_artifact(store, a, &mut w)?;
                w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
                swap::swap_in(&tmp, &dest)
            })();
            if result.is_err() {
                let _ = fs::remove_file(&tmp);
            }
            return result
                .with_context(|| format!("restoring {}", self.path.display()))
                .map(|()| Restored::Done);
        }
        let staging = sibling(&dest, "restore");
        create_dir_all_private(&staging)?;
        let result = (|| -> Result<()> {
            self.unpack_checked(rec, a, store, &dest, &staging)?;
            root_meta(rec, &dest, &staging)?;
            // The verified tree takes the live name in one exchange; the replaced one goes.
            swap::swap_in(&staging, &dest)
        })();
        if result.is_err() && staging.exists() && !sibling_named(&dest, "swap").exists() {
            let _ = fs::remove_dir_all(&staging);
        }
        result
            .with_context(|| format!("restoring {}", self.path.display()))
            .map(|()| Restored::Done)
    }

    /// Unpack `a`, the artifact of `rec`, into the empty private directory `staging` beside the
    /// live tree `dest`, and check it against the manifest: every file's SHA-256, modes, links
    /// (the artifact's own checksums are checked as it is read). Owners as a restore sets them.
    pub(super) fn unpack_checked(
        &self,
        rec: &TargetRecord,
        a: &crate::manifest::Artifact,
        store: &dyn Store,
        dest: &Path,
        staging: &Path,
    ) -> Result<()> {
        let (reader, writer) = std::io::pipe()?;
        let unpack_to = staging.to_path_buf();
        let mask = self.setid_mask();
        let untrusted = rec.untrusted;
        let consumer = std::thread::spawn(move || -> Result<()> {
            let mut ar = tar::Archive::new(std::io::BufReader::new(reader));
            ar.set_preserve_permissions(true);
            ar.set_mask(mask);
            // As root, every entry goes back to its owner (elsewhere they are ours) — when
            // the record can be trusted with owners ([`owners`]).
            ar.set_preserve_ownerships(inplace::running_as_root() && !untrusted);
            ar.set_overwrite(true);
            tree::unpack(ar, &unpack_to)
        });
        let r = crate::artifact::read_artifact(store, a, writer);
        let unpacked = consumer.join().map_err(|_| anyhow!("tar reader panicked"))?;
        r?;
        unpacked.context("unpacking")?;
        compare_listings(&rec.files, &scan(staging)?).context("unpacked tree differs from the manifest")?;
        if rec.untrusted {
            let metas = owners::from_live(&rec.files, &|p| dest.join(p), dest, self.setid_mask());
            owners::apply(&metas, &|p| staging.join(p))?;
        }
        // On disk before it can take the live name (the exchange is synced; without this the
        // rename could reach the disk ahead of the files): one flush of its filesystem.
        crate::store::files::syncfs(staging).with_context(|| format!("syncing {}", staging.display()))
    }
}

pub(super) fn is_replaced_by_file(rec: &TargetRecord) -> bool {
    rec.meta.get("replaced_by").map(String::as_str) == Some("file")
}

/// The restored root directory's own mode and owner come from the live directory `live`, never
/// from the store (R17: a record saying `mode = "777"` or another owner is not obeyed). When the
/// command removed the directory, the recorded mode is used without setuid, setgid, sticky and
/// group/other write bits, and the directory stays the running user's.
pub(super) fn root_meta(rec: &TargetRecord, live: &Path, staging: &Path) -> Result<()> {
    match fs::metadata(live) {
        Ok(m) if m.is_dir() => {
            // Owner first: a chown may clear the mode's setgid bit.
            let _ = std::os::unix::fs::chown(staging, Some(m.uid()), Some(m.gid()));
            fs::set_permissions(staging, fs::Permissions::from_mode(m.permissions().mode() & 0o7777))?;
        }
        _ => {
            let mode = rec
                .meta
                .get("mode")
                .and_then(|m| u32::from_str_radix(m, 8).ok())
                .unwrap_or(0o700);
            fs::set_permissions(staging, fs::Permissions::from_mode(mode & 0o755))?;
        }
    }
    Ok(())
}
