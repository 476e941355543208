//! Test doubles for the lifecycle's unit tests: an in-memory [`Store`], a store that fails a
//! chosen write, a [`Target`] that records what is done to it, and hooks that do the same (the
//! fake command is in `run/tests.rs`, so this module does not depend on `run`). Everything they do goes into one [`World`], so a test can assert the order of the
//! phases, and what the targets hold at the end.

use std::collections::BTreeMap;
use std::io::{Cursor, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Result};

use crate::journal::Journal;
use crate::manifest::{Fingerprint, TargetRecord};
use crate::policy::Policy;
use crate::process::{HookRun, Hooks};
use crate::store::{Entry, Store, Upload};
use crate::targets::TargetSpec;
use crate::targets::{Restored, SnapshotCtx, Target};
use crate::ui::Ui;

/// What the fakes did, in order, and the content of each fake target.
#[derive(Default)]
pub struct World {
    pub events: Mutex<Vec<String>>,
    pub state: Mutex<BTreeMap<String, String>>,
}

impl World {
    pub fn new(targets: &[(&str, &str)]) -> Arc<World> {
        let w = World::default();
        for (name, content) in targets {
            w.set(name, content);
        }
        Arc::new(w)
    }
    pub fn event(&self, e: impl Into<String>) {
        self.events.lock().unwrap().push(e.into());
    }
    pub fn events(&self) -> Vec<String> {
        self.events.lock().unwrap().clone()
    }
    pub fn get(&self, target: &str) -> String {
        self.state.lock().unwrap().get(target).cloned().unwrap_or_default()
    }
    pub fn set(&self, target: &str, content: &str) {
        self.state.lock().unwrap().insert(target.into(), content.into());
    }
}

type Objects = Arc<Mutex<BTreeMap<String, Vec<u8>>>>;
/// Every committed write, in order: (key, bytes).
type Writes = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A store in memory; its local state (catalog, lock files, scratch) in a temporary directory.
pub struct MemStore {
    objects: Objects,
    writes: Writes,
    state: tempfile::TempDir,
}

impl Default for MemStore {
    fn default() -> Self {
        MemStore::new()
    }
}

impl MemStore {
    pub fn new() -> MemStore {
        MemStore {
            objects: Arc::default(),
            writes: Arc::default(),
            state: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// The phases of every journal written, in order, consecutive repeats folded.
    pub fn journal_phases(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (key, bytes) in self.writes.lock().unwrap().iter() {
            if crate::store::keys::journal_run_id(key).is_some() {
                let j: Journal = serde_json::from_slice(bytes).expect("a journal");
                let p = j.phase.as_str().to_string();
                if out.last() != Some(&p) {
                    out.push(p);
                }
            }
        }
        out
    }

    /// Overwrite an object (a damaged store).
    pub fn replace(&self, key: &str, bytes: &[u8]) {
        self.objects.lock().unwrap().insert(key.into(), bytes.into());
    }

    pub fn keys(&self) -> Vec<String> {
        self.objects.lock().unwrap().keys().cloned().collect()
    }
}

struct MemUpload {
    key: String,
    buf: Vec<u8>,
    objects: Objects,
    writes: Writes,
}

impl Write for MemUpload {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Upload for MemUpload {
    fn commit(self: Box<Self>) -> Result<()> {
        self.writes.lock().unwrap().push((self.key.clone(), self.buf.clone()));
        self.objects.lock().unwrap().insert(self.key, self.buf);
        Ok(())
    }
}

impl Store for MemStore {
    fn location(&self) -> String {
        "mem://test".into()
    }
    fn create(&self, key: &str) -> Result<Box<dyn Upload>> {
        Ok(Box::new(MemUpload {
            key: key.into(),
            buf: Vec::new(),
            objects: Arc::clone(&self.objects),
            writes: Arc::clone(&self.writes),
        }))
    }
    fn open(&self, key: &str) -> Result<Box<dyn Read + Send>> {
        let v = self.objects.lock().unwrap().get(key).cloned();
        Ok(Box::new(Cursor::new(
            v.ok_or_else(|| anyhow!("mem://test/{key}: no such object"))?,
        )))
    }
    fn list(&self, prefix: &str) -> Result<Vec<Entry>> {
        Ok(self
            .objects
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| Entry {
                key: k.clone(),
                size: v.len() as u64,
            })
            .collect())
    }
    fn size(&self, key: &str) -> Result<Option<u64>> {
        Ok(self.objects.lock().unwrap().get(key).map(|v| v.len() as u64))
    }
    fn remove(&self, key: &str) -> Result<()> {
        self.objects.lock().unwrap().remove(key);
        Ok(())
    }
    fn local_root(&self) -> Option<&Path> {
        Some(self.state.path())
    }
}

/// A store whose `n`th write (1-based) of a key starting with `prefix` fails.
pub struct FailingStore<'a> {
    pub inner: &'a dyn Store,
    pub prefix: &'static str,
    pub n: usize,
    seen: AtomicUsize,
}

impl<'a> FailingStore<'a> {
    pub fn new(inner: &'a dyn Store, prefix: &'static str, n: usize) -> Self {
        FailingStore {
            inner,
            prefix,
            n,
            seen: AtomicUsize::new(0),
        }
    }
}

impl Store for FailingStore<'_> {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn create(&self, key: &str) -> Result<Box<dyn Upload>> {
        if key.starts_with(self.prefix) && self.seen.fetch_add(1, Ordering::SeqCst) + 1 == self.n {
            bail!(
                "{}/{key}: injected write failure (No space left on device)",
                self.location()
            );
        }
        self.inner.create(key)
    }
    fn open(&self, key: &str) -> Result<Box<dyn Read + Send>> {
        self.inner.open(key)
    }
    fn list(&self, prefix: &str) -> Result<Vec<Entry>> {
        self.inner.list(prefix)
    }
    fn size(&self, key: &str) -> Result<Option<u64>> {
        self.inner.size(key)
    }
    fn remove(&self, key: &str) -> Result<()> {
        self.inner.remove(key)
    }
    fn local_root(&self) -> Option<&Path> {
        self.inner.local_root()
    }
}

/// How a [`FakeTarget`]'s restore behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreAs {
    /// Puts the snapshot's content back.
    Done,
    /// Needs a person (like a Turso `promote`); changes nothing.
    Manual,
    /// Fails, changing nothing.
    Fails,
    /// Says it restored, but the content is not the snapshot's (caught by `verify_restored`).
    Wrong,
}

/// A target whose content is a string in the [`World`]. `sql` checks read `1` while the content
/// does not contain `bad`, else `0`.
pub struct FakeTarget {
    spec: TargetSpec,
    world: Arc<World>,
    /// The `n`th snapshot (1-based) fails.
    pub snapshot_fails: Option<usize>,
    pub restore_as: RestoreAs,
    snapshots: AtomicUsize,
}

impl FakeTarget {
    /// The policy's target `name`, faked.
    pub fn new(policy: &Policy, name: &str, world: &Arc<World>) -> FakeTarget {
        FakeTarget {
            spec: policy
                .targets
                .iter()
                .find(|t| t.name == name)
                .expect("policy names it")
                .clone(),
            world: Arc::clone(world),
            snapshot_fails: None,
            restore_as: RestoreAs::Done,
            snapshots: AtomicUsize::new(0),
        }
    }
}

impl Target for FakeTarget {
    fn spec(&self) -> &TargetSpec {
        &self.spec
    }
    fn source(&self) -> String {
        format!("fake:{}", self.spec.name)
    }
    fn preflight(&self) -> Result<()> {
        self.world.event(format!("preflight {}", self.name()));
        Ok(())
    }
    fn snapshot(&self, ctx: &SnapshotCtx) -> Result<TargetRecord> {
        let n = self.snapshots.fetch_add(1, Ordering::SeqCst) + 1;
        self.world.event(format!("snapshot {}", self.name()));
        if self.snapshot_fails == Some(n) {
            bail!("injected snapshot failure");
        }
        let content = self.world.get(self.name());
        let a = ctx.write_artifact(ctx.key(self.name(), "txt.gz"), "txt", content.as_bytes())?;
        Ok(TargetRecord {
            name: self.name().into(),
            kind: self.kind().into(),
            source: self.source(),
            artifacts: vec![a],
            ..Default::default()
        })
    }
    fn deep_verify(&self, _rec: &TargetRecord, _store: &dyn Store, _scratch: &Path) -> Result<()> {
        Ok(())
    }
    fn restore(&self, rec: &TargetRecord, store: &dyn Store) -> Result<Restored> {
        self.world.event(format!("restore {}", self.name()));
        match self.restore_as {
            RestoreAs::Fails => bail!("injected restore failure"),
            RestoreAs::Manual => Ok(Restored::Manual(format!("repoint the app at {} by hand", rec.name))),
            RestoreAs::Wrong => {
                self.world.set(self.name(), "not what was snapshotted");
                Ok(Restored::Done)
            }
            RestoreAs::Done => {
                let mut buf = Vec::new();
                crate::artifact::read_artifact(store, &rec.artifacts[0], &mut buf)?;
                self.world.set(self.name(), &String::from_utf8(buf)?);
                Ok(Restored::Done)
            }
        }
    }
    fn verify_restored(&self, rec: &TargetRecord) -> Result<()> {
        self.world.event(format!("verify {}", self.name()));
        let d = crate::archive::digest(self.world.get(self.name()).as_bytes())?;
        if d.sha256 != rec.artifacts[0].raw_sha256 {
            bail!("{} differs from the snapshot", self.name());
        }
        Ok(())
    }
    fn fingerprint(&self, _items: &[String]) -> Result<BTreeMap<String, Fingerprint>> {
        Ok(BTreeMap::new())
    }
    fn query(&self, _sql: &str) -> Result<String> {
        self.world.event(format!("query {}", self.name()));
        Ok(if self.world.get(self.name()).contains("bad") {
            "0"
        } else {
            "1"
        }
        .into())
    }
}

/// Hooks that record themselves; those in `fail` fail.
pub struct FakeHooks {
    pub world: Arc<World>,
    pub fail: Vec<String>,
}

impl Hooks for FakeHooks {
    fn run(&self, run: &HookRun, _ui: &Ui) -> Result<()> {
        let which = run.which;
        for h in run.hooks {
            self.world.event(format!("{which} hook {h}"));
            if self.fail.contains(h) {
                bail!("{which} hook {h:?} failed (exit 1)");
            }
        }
        Ok(())
    }
}

/// A policy loaded from `toml` (written into a temporary directory, returned with it).
pub fn policy(toml: &str) -> (Policy, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("guard.toml");
    std::fs::write(&file, toml).expect("write policy");
    (crate::policy::load(&file).expect("policy loads"), dir)
}

/// A quiet UI (no terminal, no JSON).
pub fn ui() -> Ui {
    Ui::default()
}
