//! Where snapshots live: a small [`Store`] trait with two implementations, a local directory
//! ([`local`]) and an S3 bucket ([`s3`]).
//!
//! Keys are `/`-separated paths relative to the store's root; [`keys`] is the one place that
//! spells them. [`state`] is what guard keeps on this machine beside a store (catalog, lock
//! files, scratch); [`files`]: private directories and atomic writes on local disk.
//!
//! Every write is atomic: an [`Upload`] becomes visible under its key only on `commit`.

pub mod files;
pub mod keys;
pub mod local;
pub mod s3;
pub mod state;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::Result;

/// Where snapshots are kept (`store` in the policy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSpec {
    Local(PathBuf),
    /// `s3://bucket/prefix`; `sse` is sent on every object written there (`[store] sse`).
    S3 {
        bucket: String,
        prefix: String,
        sse: Option<crate::aws::Sse>,
    },
}

impl StoreSpec {
    /// The store's [`Store::location`], known before it is opened.
    pub fn location(&self) -> String {
        match self {
            StoreSpec::Local(p) => p.display().to_string(),
            StoreSpec::S3 { bucket, prefix, .. } if prefix.is_empty() => format!("s3://{bucket}"),
            StoreSpec::S3 { bucket, prefix, .. } => format!("s3://{bucket}/{prefix}"),
        }
    }
}

impl std::fmt::Display for StoreSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreSpec::Local(p) => write!(f, "{}", p.display()),
            StoreSpec::S3 { bucket, prefix, .. } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

/// One stored object.
#[derive(Debug, Clone)]
pub struct Entry {
    pub key: String,
    pub size: u64,
}

/// An object being written; invisible under its key until committed, discarded if dropped.
pub trait Upload: Write + Send {
    /// Make the object durable and visible under its key.
    fn commit(self: Box<Self>) -> Result<()>;
}

/// A place that keeps snapshot artifacts, manifests and run records.
pub trait Store: Send + Sync {
    /// Human-readable location, for messages.
    fn location(&self) -> String;
    /// Start writing `key`.
    fn create(&self, key: &str) -> Result<Box<dyn Upload>>;
    /// Read `key`.
    fn open(&self, key: &str) -> Result<Box<dyn Read + Send>>;
    /// Every object whose key starts with `prefix`, in key order.
    fn list(&self, prefix: &str) -> Result<Vec<Entry>>;
    /// Size of `key`, or `None` when it does not exist.
    fn size(&self, key: &str) -> Result<Option<u64>>;
    /// Delete `key`; deleting a missing key is not an error.
    fn remove(&self, key: &str) -> Result<()>;
    /// The directory behind the store, when it is local (scratch space, catalog).
    fn local_root(&self) -> Option<&Path>;
    /// The store's own store-wide lock, when it has one (an S3 store's lease object).
    fn leaser(&self) -> Option<&dyn Leaser> {
        None
    }

    /// Write a small object atomically.
    fn put(&self, key: &str, data: &[u8]) -> Result<()> {
        let mut u = self.create(key)?;
        u.write_all(data)?;
        u.commit()
    }
    /// Write many small objects, each atomically, durable together when this returns (a local
    /// store syncs the filesystem once instead of twice per object).
    fn put_many(&self, items: &[(String, Vec<u8>)]) -> Result<()> {
        for (k, v) in items {
            self.put(k, v)?;
        }
        Ok(())
    }
    /// Make every earlier `remove` durable.
    fn sync(&self) -> Result<()> {
        Ok(())
    }
    /// Read a small object whole.
    fn get(&self, key: &str) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.open(key)?.read_to_end(&mut buf)?;
        Ok(buf)
    }
}

/// A lock kept in the store itself, for guards on several machines sharing it (an S3 store's
/// lease object). A local store has none: the `flock` on its lock file is enough.
pub trait Leaser {
    /// Take the lease `key` for `holder`, or say who holds it.
    fn lease(&self, key: &str, holder: &serde_json::Value) -> Result<LeaseOutcome>;
    /// Who holds the lease `key`, without taking it: `(held_by_a_live_guard, holder)`.
    fn inspect_lease(&self, key: &str) -> Result<(bool, Option<serde_json::Value>)>;
}

/// The outcome of trying to take a lease.
pub enum LeaseOutcome {
    /// Ours; `taken_over` is the stale holder it replaced.
    Acquired {
        /// Renewed while it lives, released when dropped.
        lease: Box<dyn Send>,
        taken_over: Option<serde_json::Value>,
    },
    /// Held by a live holder.
    Held {
        holder: Option<serde_json::Value>,
        expires: i64,
    },
}

/// Open the store a policy names.
pub fn open(spec: &StoreSpec) -> Result<Box<dyn Store>> {
    match spec {
        StoreSpec::Local(path) => Ok(Box::new(local::LocalStore::open(path)?)),
        StoreSpec::S3 { bucket, prefix, sse } => Ok(Box::new(s3::S3Store::open(bucket, prefix, sse.clone())?)),
    }
}

/// After a command ran, and again after the `after` hooks (`last`): a remote store receives the
/// run log written locally meanwhile (`runs/RUN/run.log` in [`state::state_dir`]), whole each
/// time; the local copy is removed after the last upload. Nothing to do for a local store.
pub fn publish_log(store: &dyn Store, run_id: &str, last: bool) -> Result<()> {
    if store.local_root().is_some() {
        return Ok(());
    }
    let key = keys::log_key(run_id);
    let path = state::state_dir(store)?.join(&key);
    let mut u = store.create(&key)?;
    std::io::copy(&mut std::fs::File::open(&path)?, &mut u)?;
    u.commit()?;
    if last {
        std::fs::remove_file(&path)?;
    }
    Ok(())
}
