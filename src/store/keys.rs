//! Every key guard uses in a store, in one place.
//!
//! Keys are `/`-separated paths relative to the store's root:
//!
//! ```text
//! snapshots/<id>/manifest.json     written last: a snapshot without it is incomplete
//! snapshots/<id>/<target>.<ext>.gz artifacts
//! snapshots/<id>/prune.json        marker: the snapshot is being pruned (no longer complete)
//! runs/<run-id>/journal.json       the guarded run's phases and results
//! runs/<run-id>/run.log            the wrapped command's output
//! runs/<run-id>/journal.damaged    a journal that could not be read, kept by `guard recover`
//! locks/<policy>.lock              who is running the policy now
//! pins/<id>.json                   a snapshot retention must never delete
//! catalog.db                       index over the above (rebuildable; in the state directory)
//! ```

/// Prefix of every snapshot's objects.
pub const SNAPSHOTS: &str = "snapshots/";
/// Prefix of every run's journal and log.
pub const RUNS: &str = "runs/";
/// Prefix of every pin.
pub const PINS: &str = "pins/";
/// The catalog's file name in the store's state directory.
pub const CATALOG: &str = "catalog.db";

/// Prefix of the objects of snapshot `id`.
pub fn snapshot_prefix(id: &str) -> String {
    format!("snapshots/{id}/")
}

/// The manifest of snapshot `id`.
pub fn manifest_key(id: &str) -> String {
    format!("snapshots/{id}/manifest.json")
}

/// An artifact of `target` in snapshot `id`, with extension `ext`.
pub fn artifact_key(id: &str, target: &str, ext: &str) -> String {
    format!("snapshots/{id}/{target}.{ext}")
}

/// The prune marker of snapshot `id`.
pub fn prune_marker_key(id: &str) -> String {
    format!("snapshots/{id}/prune.json")
}

/// The journal of run `run_id`.
pub fn journal_key(run_id: &str) -> String {
    format!("runs/{run_id}/journal.json")
}

/// Where `guard recover` keeps the bytes of run `run_id`'s journal that could not be read.
pub fn damaged_journal_key(run_id: &str) -> String {
    format!("runs/{run_id}/journal.damaged")
}

/// The wrapped command's output of run `run_id`.
pub fn log_key(run_id: &str) -> String {
    format!("runs/{run_id}/run.log")
}

/// The lock (a lease object on S3, a lock file in the state directory) of `policy`.
pub fn lock_key(policy: &str) -> String {
    format!("locks/{policy}.lock")
}

/// The pin of snapshot `id`.
pub fn pin_key(id: &str) -> String {
    format!("pins/{id}.json")
}

/// Is `key` a snapshot's manifest?
pub fn is_manifest(key: &str) -> bool {
    key.ends_with("/manifest.json")
}

/// Is `key` a snapshot's prune marker?
pub fn is_prune_marker(key: &str) -> bool {
    key.ends_with("/prune.json")
}

/// The snapshot id of a manifest key (`snapshots/<id>/manifest.json`).
pub fn manifest_id(key: &str) -> Option<&str> {
    key.strip_prefix(SNAPSHOTS)?.strip_suffix("/manifest.json")
}

/// The snapshot id of a prune marker key (`snapshots/<id>/prune.json`).
pub fn prune_marker_id(key: &str) -> Option<&str> {
    key.strip_prefix(SNAPSHOTS)?.strip_suffix("/prune.json")
}

/// The run id of a journal key (`runs/<run-id>/journal.json`).
pub fn journal_run_id(key: &str) -> Option<&str> {
    key.strip_prefix(RUNS)?.strip_suffix("/journal.json")
}

/// A snapshot object's key split into the snapshot id and the rest (`snapshots/<id>/<file>`).
pub fn split_snapshot_key(key: &str) -> Option<(&str, &str)> {
    key.strip_prefix(SNAPSHOTS)?.split_once('/')
}
