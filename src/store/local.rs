//! A store in a local directory: temp file + fsync + rename for every write, 0700 directories
//! and 0600 files.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::{Entry, Store, Upload};

pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    /// Open (creating if needed, mode 0700) a store directory.
    pub fn open(root: &Path) -> Result<Self> {
        create_dir_all_private(root).with_context(|| format!("cannot create store directory {}", root.display()))?;
        let root = fs::canonicalize(root)?;
        // Whoever may write the store could have planted links in place of guard's own
        // directories: each that exists must be a real directory of the running user.
        for sub in STORE_DIRS {
            if fs::symlink_metadata(root.join(sub)).is_ok() {
                private_dir(&root, sub)?;
            }
        }
        // A `dir` target holding the store leaves it out (targets::dir).
        super::state::note_local_dir(&root);
        Ok(LocalStore { root })
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        if key.is_empty()
            || key.starts_with('/')
            || key.contains('\0')
            || key.split('/').any(|c| c.is_empty() || c == "." || c == "..")
        {
            bail!("invalid store key {key:?}");
        }
        Ok(self.root.join(key))
    }

    /// [`LocalStore::path`] of a key about to be written or removed: its directories are
    /// created if missing and checked by [`private_dir`] (never through a symbolic link).
    fn checked_path(&self, key: &str) -> Result<PathBuf> {
        let p = self.path(key)?;
        let dir = match key.rfind('/') {
            Some(i) => &key[..i],
            None => "",
        };
        private_dir(&self.root, dir)?;
        Ok(p)
    }
}

/// The directories guard keeps in a store (and in a remote store's state directory).
pub const STORE_DIRS: [&str; 5] = ["tmp", "snapshots", "runs", "locks", "pins"];

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

struct LocalUpload {
    file: Option<io::BufWriter<File>>,
    tmp: PathBuf,
    dest: PathBuf,
}

impl Write for LocalUpload {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.as_mut().expect("upload open").write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.as_mut().expect("upload open").flush()
    }
}

impl Upload for LocalUpload {
    fn commit(mut self: Box<Self>) -> Result<()> {
        let f = self.file.take().expect("upload open");
        let f = f.into_inner().map_err(|e| e.into_error())?;
        f.sync_all().with_context(|| format!("fsync {}", self.tmp.display()))?;
        drop(f);
        fs::rename(&self.tmp, &self.dest).with_context(|| format!("rename into {}", self.dest.display()))?;
        sync_dir(self.dest.parent().expect("key has a parent"))?;
        Ok(())
    }
}

impl Drop for LocalUpload {
    fn drop(&mut self) {
        if self.file.is_some() {
            self.file = None;
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

impl Store for LocalStore {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn create(&self, key: &str) -> Result<Box<dyn Upload>> {
        let dest = self.checked_path(key)?;
        let parent = dest.parent().expect("key has a parent");
        let (file, tmp) =
            private_temp_beside(&dest).with_context(|| format!("cannot create a file in {}", parent.display()))?;
        Ok(Box::new(LocalUpload {
            file: Some(io::BufWriter::with_capacity(1 << 20, file)),
            tmp,
            dest,
        }))
    }

    fn open(&self, key: &str) -> Result<Box<dyn Read + Send>> {
        let p = self.path(key)?;
        // Never read through a planted link (an artifact "pointing" at a file outside the
        // store); a link where an object should be is an error naming it.
        let f = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&p)
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::ELOOP) {
                    anyhow::anyhow!(
                        "{} is a symbolic link; guard never reads a store object through a link",
                        p.display()
                    )
                } else {
                    anyhow::Error::new(e).context(format!("cannot open {}", p.display()))
                }
            })?;
        Ok(Box::new(io::BufReader::with_capacity(1 << 20, f)))
    }

    fn list(&self, prefix: &str) -> Result<Vec<Entry>> {
        let dir_part = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let start = if dir_part.is_empty() {
            self.root.clone()
        } else {
            self.root.join(dir_part)
        };
        if !start.exists() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for e in walkdir::WalkDir::new(&start).sort_by_file_name() {
            let e = e?;
            if !e.file_type().is_file() {
                continue;
            }
            let name = e.file_name().to_string_lossy();
            if name.contains(".guard-tmp-") {
                continue;
            }
            let rel = e.path().strip_prefix(&self.root).expect("under root");
            let key = rel.to_string_lossy().replace('\\', "/");
            if key.starts_with(prefix) {
                out.push(Entry {
                    key,
                    size: e.metadata()?.len(),
                });
            }
        }
        Ok(out)
    }

    fn size(&self, key: &str) -> Result<Option<u64>> {
        match fs::symlink_metadata(self.path(key)?) {
            Ok(m) if m.file_type().is_symlink() => bail!(
                "{}/{key} is a symbolic link; guard never reads a store object through a link",
                self.root.display()
            ),
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn remove(&self, key: &str) -> Result<()> {
        let p = self.path(key)?;
        if fs::symlink_metadata(p.parent().expect("key has a parent")).is_err() {
            return Ok(()); // its directory is gone: so is the object
        }
        // Never unlink through a planted directory link.
        let p = self.checked_path(key)?;
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot remove {}", p.display())),
        }
        // Tidy empty parent directories up to the root.
        let mut dir = p.parent();
        while let Some(d) = dir {
            if d == self.root || fs::remove_dir(d).is_err() {
                break;
            }
            dir = d.parent();
        }
        Ok(())
    }

    fn local_root(&self) -> Option<&Path> {
        Some(&self.root)
    }

    fn put_many(&self, items: &[(String, Vec<u8>)]) -> Result<()> {
        for (key, data) in items {
            let dest = self.checked_path(key)?;
            let (mut f, tmp) = private_temp_beside(&dest)?;
            f.write_all(data)?;
            drop(f);
            fs::rename(&tmp, &dest)?;
        }
        self.sync()
    }

    fn sync(&self) -> Result<()> {
        let f = File::open(&self.root)?;
        // syncfs: one flush of the store's filesystem makes every write and rename durable.
        let rc = unsafe { libc::syncfs(std::os::unix::io::AsRawFd::as_raw_fd(&f)) };
        if rc != 0 {
            return Err(io::Error::last_os_error()).context("syncfs on the store");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn uploads_are_atomic_and_private() {
        let d = tempfile::tempdir().unwrap();
        let s = LocalStore::open(&d.path().join("store")).unwrap();
        {
            let mut u = s.create("snapshots/a/x.gz").unwrap();
            u.write_all(b"partial").unwrap();
            // dropped without commit
        }
        assert_eq!(s.size("snapshots/a/x.gz").unwrap(), None);
        assert!(s.list("snapshots/").unwrap().is_empty());
        s.put("snapshots/a/x.gz", b"hello").unwrap();
        assert_eq!(s.get("snapshots/a/x.gz").unwrap(), b"hello");
        let mode = fs::metadata(d.path().join("store/snapshots/a/x.gz"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let dmode = fs::metadata(d.path().join("store/snapshots"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dmode & 0o777, 0o700);
        assert!(s.path("../etc/passwd").is_err());
    }
}
