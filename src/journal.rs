//! The run journal: each guarded run's phase, written atomically to the store at every step.
//!
//! If guard dies, the journal says how far the run got, which snapshot holds the pre-run
//! state, and so what to do next (`guard status` reads it). [`read_all`] reads every journal
//! of a store, and names those that cannot be read; [`crate::attention`] says which need
//! attention.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::outcome::Outcome;
use crate::store::{keys, Store};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Locked,
    Snapshotting,
    SnapshotVerified,
    CommandRunning,
    Checking,
    /// The command and every check passed; the pre-run snapshot's deferred store artifacts
    /// (issue 17) are being finished before the run is kept.
    Storing,
    /// Restoring by rename: hot copies into place, the failed state set aside beside them.
    Swapping,
    Rescuing,
    Restoring,
    Done,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Locked => "locked",
            Phase::Snapshotting => "snapshotting",
            Phase::SnapshotVerified => "snapshot-verified",
            Phase::CommandRunning => "command-running",
            Phase::Checking => "checking",
            Phase::Storing => "storing",
            Phase::Swapping => "swapping",
            Phase::Rescuing => "rescuing",
            Phase::Restoring => "restoring",
            Phase::Done => "done",
        }
    }
}

/// What a journal records: a guarded run, or a restore that `guard restore` or `guard recover`
/// started. All three change the targets, so each has its phases written before their work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Op {
    /// `guard -- COMMAND`.
    #[default]
    Run,
    /// `guard restore ID`.
    Restore,
    /// `guard recover` restoring, or accepting, the state an earlier run left.
    Recover,
}

impl Op {
    fn is_run(&self) -> bool {
        *self == Op::Run
    }
}

/// The outcome of one check, as the journal (and `--json`) records it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckResult {
    pub name: String,
    #[serde(default)]
    pub target: Option<String>,
    pub kind: String,
    pub expect: String,
    #[serde(default)]
    pub before: Option<String>,
    #[serde(default)]
    pub after: Option<String>,
    pub passed: bool,
    #[serde(default)]
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Journal {
    pub run_id: String,
    /// What this journal records (absent in a guarded run's journal, as before it existed).
    #[serde(default, skip_serializing_if = "Op::is_run")]
    pub op: Op,
    /// The targets a restore was asked for (empty: every target of the snapshot).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub only: Vec<String>,
    pub policy: String,
    pub policy_file: String,
    pub host: String,
    pub pid: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    pub phase: Phase,
    pub command: Vec<String>,
    /// The pre-run snapshot (a run), or the snapshot being restored (`guard restore`, `guard recover`).
    #[serde(default)]
    pub snapshot_id: Option<String>,
    #[serde(default)]
    pub rescue_id: Option<String>,
    /// The wrapped command's pid, which is also its process group id (it runs in a group of
    /// its own), recorded as soon as it starts: `status` and `recover` refuse to act while a
    /// process of that group is alive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_pid: Option<u32>,
    /// The wrapped command's process group (equal to `command_pid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_pgid: Option<u32>,
    #[serde(default)]
    pub command_exit: Option<i32>,
    #[serde(default)]
    pub checks: Vec<CheckResult>,
    #[serde(default)]
    pub restored: Vec<String>,
    /// Targets restored by rename from their hot copy (issue 17) whose failed state was set
    /// aside beside them, until the rescue snapshot holds it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set_aside: Vec<String>,
    /// Targets of a failed run that had no hot copy, whose snapshot was unpacked from the store
    /// beside them and checked before the restore (issue 17: a hot copy made late, `.NAME.guard-hot-RUN`),
    /// by name: the identity of that copy ([`crate::targets::Target::stage_late`]). Recorded
    /// before the exchange, so `guard recover` knows the live tree may be that copy.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub late_hot: std::collections::BTreeMap<String, String>,
    /// Where each target of `set_aside` has its failed state set aside (a path, or the kind of
    /// database), for `guard status` after a kill.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub set_aside_at: std::collections::BTreeMap<String, String>,
    /// The pre-run snapshot's records whose store artifact was deferred (issue 17): written
    /// while the command runs, from the hot copy or clone, which is the verified snapshot until
    /// the manifest exists (each record names it: `meta.hot`, its identity `meta.hot_id` or OID
    /// `meta.hot_oid`). Emptied once the manifest is written, or the targets are back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<crate::manifest::TargetRecord>,
    /// A recovery restoring from the hot copies of run `hot_of` (whose snapshot never reached
    /// the store): the tag those copies carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hot_of: Option<String>,
    /// The runs (or drill) this recovery closed (`"op": "recover"`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub closes: Vec<String>,
    /// The targets may have been changed: the command started, or a restore began.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub touched: bool,
    #[serde(default)]
    pub outcome: Option<Outcome>,
    #[serde(default)]
    pub exit_code: Option<u8>,
    #[serde(default)]
    pub message: Option<String>,
    /// The last save failed: the journal in the store is behind (a full disk).
    #[serde(skip)]
    pub unsaved: bool,
    /// HMAC-SHA256 (hex) of the journal's canonical bytes under the store key, when the policy
    /// has one ([`crate::auth`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hmac: Option<String>,
    /// Why this journal, as read from the store, is not authenticated by the store key
    /// (`None`: it is, or there is no key).
    #[serde(skip)]
    pub unauthenticated: Option<String>,
}

impl Journal {
    /// The journal of a new run of `policy` by this process, in phase `locked`.
    pub fn new(run_id: &str, policy: &crate::policy::Policy, command: &[String]) -> Journal {
        let now = crate::clock::now();
        Journal {
            run_id: run_id.to_string(),
            op: Op::Run,
            only: Vec::new(),
            policy: policy.name.clone(),
            policy_file: policy.file.display().to_string(),
            host: crate::clock::hostname(),
            pid: std::process::id(),
            started_at: now,
            updated_at: now,
            phase: Phase::Locked,
            command: command.iter().map(|a| crate::secrets::redact(a)).collect(),
            snapshot_id: None,
            rescue_id: None,
            command_pid: None,
            command_pgid: None,
            command_exit: None,
            checks: Vec::new(),
            restored: Vec::new(),
            set_aside: Vec::new(),
            late_hot: Default::default(),
            set_aside_at: Default::default(),
            pending: Vec::new(),
            hot_of: None,
            closes: Vec::new(),
            touched: false,
            outcome: None,
            exit_code: None,
            message: None,
            unsaved: false,
            hmac: None,
            unauthenticated: None,
        }
    }

    pub fn save(&mut self, store: &dyn Store) -> Result<()> {
        self.updated_at = crate::clock::now();
        self.hmac = None;
        self.hmac = crate::auth::sign(crate::auth::JOURNAL, &self.canonical_json());
        let mut v = serde_json::to_vec_pretty(self)?;
        v.push(b'\n');
        store.put(&keys::journal_key(&self.run_id), &v)
    }

    /// The bytes the HMAC covers: the journal as guard writes it, without its `hmac`.
    fn canonical_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(&Journal {
            hmac: None,
            ..self.clone()
        })
        .expect("journal serializes");
        v.push(b'\n');
        v
    }

    /// Parse the journal of run `run_id` read from `what`: it must be that run's; with a store
    /// key, [`Journal::unauthenticated`] says whether the key signed it.
    pub fn from_json(bytes: &[u8], run_id: &str, what: &str) -> Result<Journal> {
        let mut j: Journal =
            serde_json::from_slice(bytes).map_err(|e| anyhow::anyhow!("{what}: not a guard journal: {e}"))?;
        if j.run_id != run_id || !crate::names::valid_name(&j.run_id) {
            anyhow::bail!("{what}: names run {:?}, not {run_id} (moved or planted)", j.run_id);
        }
        j.unauthenticated = crate::auth::check(crate::auth::JOURNAL, &j.canonical_json(), j.hmac.as_deref(), what);
        Ok(j)
    }

    /// Move to `phase` and persist it before doing that phase's work.
    pub fn enter(&mut self, store: &dyn Store, phase: Phase) -> Result<()> {
        self.phase = phase;
        self.touched |= matches!(phase, Phase::CommandRunning | Phase::Swapping | Phase::Restoring);
        self.save(store)?;
        crate::faults::test_pause(phase.as_str());
        Ok(())
    }

    /// The live processes of this run's command group, when the command may still be running
    /// on this host after its guard died (empty otherwise). Nothing may restore the targets
    /// while one is alive: it would write over what was restored.
    pub fn command_still_running(&self) -> Vec<u32> {
        match self.command_pgid.or(self.command_pid) {
            Some(pgid) if self.host == crate::clock::hostname() => crate::process::group_members(pgid),
            _ => Vec::new(),
        }
    }

    /// Has this guarded run's command started? From then on the targets may hold its changes
    /// and the restore must run whatever happens to the store.
    pub fn command_started(&self) -> bool {
        self.op == Op::Run
            && matches!(
                self.phase,
                Phase::CommandRunning
                    | Phase::Checking
                    | Phase::Storing
                    | Phase::Swapping
                    | Phase::Rescuing
                    | Phase::Restoring
                    | Phase::Done
            )
    }

    /// The run whose hot copies (or clones) a restore under this journal may rename into place:
    /// a guarded run's own once its command started, or the run a recovery names (`hot_of`).
    pub fn hot_tag(&self) -> Option<&str> {
        match self.op {
            Op::Run if self.command_started() => Some(&self.run_id),
            Op::Recover => self.hot_of.as_deref(),
            _ => None,
        }
    }

    /// The pre-run snapshot as far as it got when its store artifact was deferred: the records
    /// in `pending` (the deferred ones without artifacts: their hot copies hold the state, for
    /// a restore by rename), each stored record's file listing read back from its artifact
    /// ([`without_listing`]). `Ok(None)` when nothing is pending.
    pub fn pending_manifest(
        &self,
        policy: &crate::policy::Policy,
        store: &dyn Store,
    ) -> Result<Option<crate::manifest::Manifest>> {
        if self.pending.is_empty() {
            return Ok(None);
        }
        let mut targets = self.pending.clone();
        for rec in targets.iter_mut() {
            if rec.meta.remove(LISTING).as_deref() == Some(IN_ARTIFACT) {
                rec.files = crate::targets::dir::listing_from_store(rec, store).with_context(|| {
                    format!(
                        "target {}: reading its file listing back from its store artifact",
                        rec.name
                    )
                })?;
            }
        }
        let Some(id) = self.snapshot_id.clone() else {
            return Ok(None);
        };
        let now = crate::clock::now();
        Ok(Some(crate::manifest::Manifest {
            format: crate::manifest::FORMAT,
            id,
            policy: policy.name.clone(),
            kind: crate::manifest::SnapshotKind::PreRun,
            label: None,
            run_id: Some(self.hot_of.clone().unwrap_or_else(|| self.run_id.clone())),
            created_at: self.started_at,
            completed_at: now,
            host: self.host.clone(),
            guard_version: env!("CARGO_PKG_VERSION").to_string(),
            command: None,
            targets,
            hmac: None,
            unauthenticated: None,
        }))
    }

    /// [`Journal::enter`] for a step that must run whatever the store does: once a guarded
    /// run's command has started (the targets may hold its changes, and a restore needs no
    /// store space), a journal that cannot be written — a full disk, a store gone read-only —
    /// is warned about, not fatal; the next step's save tries again. Before that, an error.
    pub fn advance(&mut self, store: &dyn Store, phase: Phase, ui: &crate::ui::Ui) -> Result<()> {
        let started = self.command_started();
        match self.enter(store, phase) {
            Err(e) if started => {
                self.unsaved = true;
                ui.warn(&format!(
                    "could not write the run journal (phase {}): {e:#}; going on — the targets come first",
                    phase.as_str()
                ));
                Ok(())
            }
            r => {
                if r.is_ok() {
                    self.unsaved = false;
                }
                r
            }
        }
    }

    pub fn load(store: &dyn Store, run_id: &str) -> Result<Journal> {
        let key = keys::journal_key(run_id);
        let bytes = store.get(&key)?;
        let j = Journal::from_json(&bytes, run_id, &format!("{}/{key}", store.location()))?;
        crate::auth::require(j.unauthenticated.as_deref()).map_err(|f| f.error)?;
        Ok(j)
    }

    /// Might this run have changed the targets? (Journals written before `touched` existed:
    /// the command had run when its exit code is recorded.)
    pub fn may_have_changed_targets(&self) -> bool {
        self.touched || self.command_exit.is_some()
    }
}

/// A journal that cannot be read (truncated, not JSON, not a journal): its run's state is
/// unknown, so it is reported and blocks new runs, never skipped.
#[derive(Debug, Clone, Serialize)]
pub struct Damaged {
    pub run_id: String,
    /// Where it is, for messages.
    pub location: String,
    pub error: String,
    /// The policy it names, when that much of it can still be read.
    pub policy: Option<String>,
}

/// Every journal in a store, read or not.
#[derive(Debug, Default)]
pub struct Journals {
    /// Oldest first.
    pub ok: Vec<Journal>,
    pub damaged: Vec<Damaged>,
}

/// Every journal in the store (any policy), oldest first, and those that cannot be read.
pub fn read_all(store: &dyn Store) -> Result<Journals> {
    let mut out = Journals::default();
    for e in store.list(keys::RUNS)? {
        let Some(id) = keys::journal_run_id(&e.key) else {
            continue;
        };
        let location = format!("{}/{}", store.location(), e.key);
        let read = store
            .get(&e.key)
            .map(|bytes| match Journal::from_json(&bytes, id, &location) {
                // With a store key, a journal it does not authenticate is never acted on: its
                // run's state is unknown, so it is reported like a damaged one.
                Ok(j) => match crate::auth::require(j.unauthenticated.as_deref()) {
                    Ok(()) => Ok(j),
                    Err(f) => Err((format!("{:#}", f.error), bytes)),
                },
                Err(e) => Err((format!("{e:#}"), bytes)),
            });
        let (error, bytes) = match read {
            Ok(Ok(j)) => {
                out.ok.push(j);
                continue;
            }
            Ok(Err((e, bytes))) => (e, bytes),
            Err(e) => (format!("{e:#}"), Vec::new()),
        };
        out.damaged.push(Damaged {
            run_id: id.to_string(),
            location,
            error,
            policy: policy_named_in(&bytes),
        });
    }
    out.ok.sort_by(|a, b| a.run_id.cmp(&b.run_id));
    Ok(out)
}

/// The `"policy": "NAME"` of a journal too damaged to parse (guard writes it near the top).
fn policy_named_in(bytes: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(bytes);
    let rest = &text[text.find("\"policy\"")? + "\"policy\"".len()..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start().strip_prefix('"')?;
    let name = &rest[..rest.find('"')?];
    (!name.is_empty() && !name.contains('\\')).then(|| name.to_string())
}

/// `meta` key of a pending record journaled without its file listing ([`without_listing`]).
const LISTING: &str = "listing";
/// Its value: the listing is the one of the record's store artifact.
const IN_ARTIFACT: &str = "in-artifact";

/// `rec` as the run journal holds it while pending: without its file listing, which would make
/// every journal write as large as the tree's listing. A deferred record needs none (its hot
/// copy is renamed in, proven by its identity); a record whose artifact is stored gets it back
/// from that artifact, checked against the SHA-256 the record holds
/// ([`Journal::pending_manifest`]).
pub fn without_listing(rec: &crate::manifest::TargetRecord) -> crate::manifest::TargetRecord {
    let mut r = rec.clone();
    if !r.files.is_empty() {
        r.files = Vec::new();
        if !crate::targets::is_deferred(rec) {
            r.meta.insert(LISTING.into(), IN_ARTIFACT.into());
        }
    }
    r
}
