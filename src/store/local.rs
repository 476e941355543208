//! A store in a local directory: temp file + fsync + rename for every write, 0700 directories
//! and 0600 files.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

// The private-file helpers live in `store::files` (a leaf: `state` uses them too, and `local`
// uses `state`); `targets::dir` still names them through this module.
pub use super::files::{create_dir_all_private, private_dir, private_temp_beside, sync_dir, write_atomic};
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
        // One flush of the store's filesystem makes every write and rename durable.
        crate::store::files::syncfs(&self.root).context("syncfs on the store")
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
