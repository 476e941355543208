//! Where snapshots live: a small trait with a local-directory implementation.
//!
//! Keys are `/`-separated paths relative to the store's root:
//!
//! ```text
//! snapshots/<id>/manifest.json     written last: a snapshot without it is incomplete
//! snapshots/<id>/<target>.<ext>.gz artifacts
//! runs/<run-id>/journal.json       the guarded run's phases and results
//! runs/<run-id>/run.log            the wrapped command's output
//! locks/<policy>.lock              who is running the policy now
//! catalog.db                       index over the above (rebuildable)
//! ```
//!
//! Every write is atomic: an [`Upload`] becomes visible under its key only on `commit`.

pub mod local;

use std::io::{Read, Write};
use std::path::Path;

use anyhow::Result;

use crate::policy::StoreSpec;

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

    /// Write a small object atomically.
    fn put(&self, key: &str, data: &[u8]) -> Result<()> {
        let mut u = self.create(key)?;
        u.write_all(data)?;
        u.commit()
    }
    /// Read a small object whole.
    fn get(&self, key: &str) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.open(key)?.read_to_end(&mut buf)?;
        Ok(buf)
    }
}

/// Open the store a policy names.
pub fn open(spec: &StoreSpec) -> Result<Box<dyn Store>> {
    match spec {
        StoreSpec::Local(path) => Ok(Box::new(local::LocalStore::open(path)?)),
        StoreSpec::S3 { .. } => anyhow::bail!(
            "store {spec}: S3 stores are not supported by this build yet; use a local directory"
        ),
    }
}
