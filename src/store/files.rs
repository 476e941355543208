//! Private files and directories on this machine: 0700 directories (checked to be the running
//! user's, never a planted link), 0600 temp files, and atomic writes (temp file, fsync, rename,
//! fsync of the directory). The local store, the state directory and the targets that write
//! local files all use these; this module uses nothing else of guard.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// `root/rel`, every directory of `rel` created 0700 when missing and checked — not through a
/// symbolic link — to be a real directory owned by the running user, so that nothing guard
/// writes, truncates or deletes below it lands outside `root`. `root` itself is the policy's
/// choice and is trusted; `rel` is a `/`-separated relative path.
pub fn private_dir(root: &Path, rel: &str) -> Result<PathBuf> {
    let me = unsafe { libc::geteuid() };
    let mut p = root.to_path_buf();
    for part in rel.split('/').filter(|c| !c.is_empty()) {
        if part == "." || part == ".." {
            bail!("invalid store path {rel:?}");
        }
        p.push(part);
        match fs::DirBuilder::new().mode(0o700).create(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("cannot create {}", p.display())),
        }
        let m = fs::symlink_metadata(&p).with_context(|| format!("cannot stat {}", p.display()))?;
        let why = if m.file_type().is_symlink() {
            let to = fs::read_link(&p).map(|t| t.display().to_string()).unwrap_or_default();
            Some(format!("is a symbolic link (to {to})"))
        } else if !m.is_dir() {
            Some("is not a directory".to_string())
        } else if std::os::unix::fs::MetadataExt::uid(&m) != me {
            Some(format!(
                "belongs to uid {}, not to the running user (uid {me})",
                std::os::unix::fs::MetadataExt::uid(&m)
            ))
        } else {
            None
        };
        if let Some(why) = why {
            bail!(
                "store directory {} {why}; guard never writes through it (someone with write access to the store may have planted it): remove it, then run guard again",
                p.display()
            );
        }
    }
    Ok(p)
}

/// `mkdir -p` with mode 0700 for the directories it creates.
pub fn create_dir_all_private(p: &Path) -> io::Result<()> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(p)
}

/// fsync a directory so a rename in it is durable.
pub fn sync_dir(p: &Path) -> io::Result<()> {
    File::open(p)?.sync_all()
}

/// Flush the whole filesystem holding `p` (`syncfs`): every write and rename on it is durable,
/// in one call instead of an fsync per file.
pub fn syncfs(p: &Path) -> io::Result<()> {
    let f = File::open(p)?;
    // SAFETY: a valid open descriptor; syncfs touches nothing else.
    if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&f)) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Create a new private (0600) temp file next to `dest`, named so it is recognisably guard's.
pub fn private_temp_beside(dest: &Path) -> io::Result<(File, PathBuf)> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    for _ in 0..100 {
        let tmp = dir.join(format!(".{name}.guard-tmp-{:08x}", rand::random::<u32>()));
        match OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp) {
            Ok(f) => return Ok((f, tmp)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("could not create a temporary file"))
}

/// Write `data` to `dest` atomically: private temp file, fsync, rename, fsync the directory.
pub fn write_atomic(dest: &Path, data: &[u8]) -> io::Result<()> {
    let (mut f, tmp) = private_temp_beside(dest)?;
    let r = (|| {
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, dest)?;
        sync_dir(dest.parent().unwrap_or(Path::new(".")))
    })();
    if r.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    r
}
