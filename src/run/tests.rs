//! Every branch of the guarded run, without a process: an in-memory store, fake targets, hooks
//! and command (`crate::testing`). Each test asserts the exit code and outcome, the order of
//! what was done, the journal's phases, and what the targets hold at the end.

use std::sync::Arc;

use super::*;
use crate::catalog::Catalog;
use crate::policy::Policy;
use crate::store::Store;
use crate::testing::{self, FailingStore, FakeHooks, FakeTarget, MemStore, RestoreAs, World};

const POLICY: &str = r#"name = "unit"
store = "store"

[[target]]
name = "app"
kind = "sqlite"
path = "app.db"

[[target]]
name = "files"
kind = "dir"
path = "files"

[[check]]
name = "app is fine"
target = "app"
sql = "SELECT ok"
expect = "== 1"

[hooks]
before = ["stop"]
after = ["start"]
"#;

/// One guarded run and everything it touched.
struct Case {
    policy: Policy,
    _dir: tempfile::TempDir,
    world: Arc<World>,
    store: MemStore,
    app: FakeTarget,
    files: FakeTarget,
    fail_hooks: Vec<String>,
    /// Wrap the store so its `n`th write under the prefix fails.
    fail_write: Option<(&'static str, usize)>,
    no_restore: bool,
}

impl Case {
    fn new() -> Case {
        let (policy, dir) = testing::policy(POLICY);
        let world = World::new(&[("app", "app v1"), ("files", "files v1")]);
        let app = FakeTarget::new(&policy, "app", &world);
        let files = FakeTarget::new(&policy, "files", &world);
        Case {
            policy,
            _dir: dir,
            world,
            store: MemStore::new(),
            app,
            files,
            fail_hooks: Vec::new(),
            fail_write: None,
            no_restore: false,
        }
    }

    /// Run a command that writes `writes` and exits `exit`; guard's result and the run's journal.
    fn run(self, writes: &[(&str, &str)], exit: i32) -> Ran {
        let failing = self.fail_write.map(|(p, n)| FailingStore::new(&self.store, p, n));
        let store: &dyn Store = match &failing {
            Some(f) => f,
            None => &self.store,
        };
        let catalog = Catalog::open(store).unwrap();
        let ui = testing::ui();
        let hooks = FakeHooks {
            world: Arc::clone(&self.world),
            fail: self.fail_hooks.clone(),
        };
        let cx = Ctx {
            policy: &self.policy,
            store,
            catalog: &catalog,
            hooks: &hooks,
            ui: &ui,
        };
        let command = FakeCommand {
            world: Arc::clone(&self.world),
            writes: writes.iter().map(|(t, c)| (t.to_string(), c.to_string())).collect(),
            exit,
        };
        let opts = Options {
            yes: true,
            dry_run: false,
            no_restore: self.no_restore,
            command: vec!["migrate".into()],
        };
        let targets: Vec<Box<dyn Target>> = vec![Box::new(self.app), Box::new(self.files)];
        let result = guarded(&cx, &targets, &command, &opts);
        let journals = crate::journal::read_all(store).unwrap().ok;
        assert_eq!(journals.len(), 1, "one run, one journal");
        let snapshots = catalog.snapshots(None).unwrap();
        Ran {
            result: result.map_err(|f| (f.kind, format!("{:#}", f.error))),
            journal: journals.into_iter().next().unwrap(),
            phases: self.store.journal_phases(),
            events: self.world.events(),
            kinds: snapshots.iter().rev().map(|s| s.kind.clone()).collect(),
            world: self.world,
        }
    }
}

struct Ran {
    result: Result<u8, (Kind, String)>,
    journal: Journal,
    phases: Vec<String>,
    events: Vec<String>,
    /// Kinds of the snapshots taken, oldest first.
    kinds: Vec<String>,
    world: Arc<World>,
}

impl Ran {
    fn error(&self) -> &str {
        &self.result.as_ref().expect_err("the run failed").1
    }
}

// The `sql` check expects "== 1": read after the command only (an `unchanged` one is read before too).
const PREFIX: [&str; 7] = [
    "before hook stop",
    "preflight app",
    "preflight files",
    "snapshot app",
    "snapshot files",
    "command",
    "query app",
];

fn events(parts: &[&[&str]]) -> Vec<String> {
    parts.iter().flat_map(|p| p.iter().map(|s| s.to_string())).collect()
}

fn phases(p: &[&str]) -> Vec<String> {
    p.iter().map(|s| s.to_string()).collect()
}

const UP_TO_CHECKS: [&str; 5] = [
    "locked",
    "snapshotting",
    "snapshot-verified",
    "command-running",
    "checking",
];

#[test]
fn a_good_command_is_kept() {
    let r = Case::new().run(&[("app", "app v2")], 0);
    assert_eq!(r.result, Ok(0));
    assert_eq!(r.journal.outcome, Some(Outcome::Kept));
    assert_eq!(r.events, events(&[&PREFIX, &["after hook start"]]));
    assert_eq!(r.phases, phases(&[&UP_TO_CHECKS[..], &["done"]].concat()));
    assert_eq!(r.kinds, ["pre-run"]);
    assert_eq!(r.world.get("app"), "app v2", "changes kept");
    assert_eq!(r.journal.checks.len(), 1);
    assert!(r.journal.checks[0].passed);
}

#[test]
fn a_failing_command_is_rescued_and_restored_with_its_exit_code() {
    let r = Case::new().run(&[("app", "app v2"), ("files", "files v2")], 3);
    assert_eq!(r.result, Ok(3), "the command's own code");
    assert_eq!(r.journal.outcome, Some(Outcome::Restored));
    assert_eq!(r.journal.command_exit, Some(3));
    let restore = [
        "snapshot app",
        "snapshot files",
        "restore app",
        "verify app",
        "restore files",
        "verify files",
        "after hook start",
    ];
    assert_eq!(r.events, events(&[&PREFIX, &restore]));
    assert_eq!(
        r.phases,
        phases(&[&UP_TO_CHECKS[..], &["rescuing", "restoring", "done"]].concat())
    );
    assert_eq!(r.kinds, ["pre-run", "rescue"]);
    assert_eq!(r.world.get("app"), "app v1");
    assert_eq!(r.world.get("files"), "files v1");
    assert_eq!(r.journal.restored, ["app", "files"]);
    assert!(r.journal.rescue_id.is_some());
}

#[test]
fn a_failed_check_restores_and_exits_79() {
    let r = Case::new().run(&[("app", "app v2 bad")], 0);
    assert_eq!(r.result, Ok(79));
    assert_eq!(r.journal.outcome, Some(Outcome::Restored));
    assert!(!r.journal.checks[0].passed);
    assert_eq!(r.world.get("app"), "app v1");
}

#[test]
fn no_restore_keeps_the_failed_state() {
    let mut c = Case::new();
    c.no_restore = true;
    let r = c.run(&[("app", "app v2 bad")], 0);
    assert_eq!(r.result, Ok(81));
    assert_eq!(r.journal.outcome, Some(Outcome::FailedKept));
    assert_eq!(r.events, events(&[&PREFIX, &["after hook start"]]));
    assert_eq!(r.phases, phases(&[&UP_TO_CHECKS[..], &["done"]].concat()));
    assert_eq!(r.kinds, ["pre-run"], "no rescue");
    assert_eq!(r.world.get("app"), "app v2 bad", "the failed state is kept");
}

#[test]
fn a_manual_step_is_reported_as_one_and_the_other_targets_are_restored() {
    let mut c = Case::new();
    c.files.restore_as = RestoreAs::Manual;
    let r = c.run(&[("app", "app v2"), ("files", "files v2")], 1);
    assert_eq!(r.result.as_ref().unwrap_err().0, Kind::RestoreFailed);
    assert!(
        r.error().contains("restore is not automatic for files") && !r.error().contains("FAILED"),
        "{}",
        r.error()
    );
    assert!(r.error().contains("Restored and verified: app."), "{}", r.error());
    assert_eq!(r.journal.outcome, Some(Outcome::Failed(Kind::RestoreFailed)));
    assert_eq!(r.journal.restored, ["app"]);
    assert_eq!(r.world.get("app"), "app v1");
    assert_eq!(r.world.get("files"), "files v2", "a manual step changes nothing");
    assert!(!r.events.contains(&"verify files".to_string()), "nothing to verify");
}

#[test]
fn a_failed_restore_names_the_target_and_the_command_to_retry() {
    let mut c = Case::new();
    c.app.restore_as = RestoreAs::Fails;
    let r = c.run(&[("app", "app v2"), ("files", "files v2")], 1);
    assert_eq!(r.result.as_ref().unwrap_err().0, Kind::RestoreFailed);
    let e = r.error();
    assert!(e.contains("RESTORE FAILED for app (injected restore failure)"), "{e}");
    assert!(
        e.contains("restore ") && e.contains("--no-rescue"),
        "names the retry: {e}"
    );
    assert_eq!(r.journal.restored, ["files"], "the other target was restored");
    assert_eq!(r.world.get("files"), "files v1");
    assert_eq!(r.events.last().unwrap(), "after hook start");
    assert_eq!(
        r.phases,
        phases(&[&UP_TO_CHECKS[..], &["rescuing", "restoring", "done"]].concat())
    );
}

#[test]
fn a_restore_that_does_not_match_the_snapshot_is_a_failure() {
    let mut c = Case::new();
    c.app.restore_as = RestoreAs::Wrong;
    let r = c.run(&[("app", "app v2")], 1);
    assert_eq!(r.result.as_ref().unwrap_err().0, Kind::RestoreFailed);
    assert!(r.error().contains("does not match the snapshot"), "{}", r.error());
}

#[test]
fn a_failed_rescue_restores_nothing_and_says_how_to_restore_anyway() {
    let mut c = Case::new();
    c.files.snapshot_fails = Some(2);
    let r = c.run(&[("app", "app v2"), ("files", "files v2")], 1);
    assert_eq!(r.result.as_ref().unwrap_err().0, Kind::RestoreFailed);
    let e = r.error();
    assert!(
        e.contains("rescue snapshot of the current state could not be taken"),
        "{e}"
    );
    assert!(e.contains("--no-rescue"), "{e}");
    assert!(!r.events.iter().any(|e| e.starts_with("restore ")), "{:?}", r.events);
    assert_eq!(r.events.last().unwrap(), "after hook start", "after hooks still run");
    assert_eq!(r.phases, phases(&[&UP_TO_CHECKS[..], &["rescuing", "done"]].concat()));
    assert_eq!(r.kinds, ["pre-run"], "the partial rescue was discarded");
    assert_eq!(r.world.get("app"), "app v2", "left as the command left it");
}

#[test]
fn a_full_store_during_the_rescue_keeps_the_failed_state_outside_it_and_restores() {
    let mut c = Case::new();
    // pre-run: app, files, manifest; the rescue's first artifact fails with ENOSPC: the rescue
    // goes to a private directory outside the store and the restore still runs (issue 14 item 9).
    c.fail_write = Some(("snapshots/", 4));
    let r = c.run(&[("app", "app v2")], 1);
    assert_eq!(*r.result.as_ref().unwrap(), 1, "the command's exit code passes through");
    assert!(r.events.iter().any(|e| e.starts_with("restore ")), "{:?}", r.events);
    assert_eq!(r.world.get("app"), "app v1");
}

#[test]
fn a_failed_pre_run_snapshot_runs_nothing() {
    let mut c = Case::new();
    c.files.snapshot_fails = Some(1);
    let r = c.run(&[("app", "app v2")], 0);
    assert_eq!(r.result.as_ref().unwrap_err().0, Kind::Snapshot);
    assert!(!r.events.contains(&"command".to_string()), "{:?}", r.events);
    assert_eq!(r.events.last().unwrap(), "after hook start");
    assert_eq!(r.phases, phases(&["locked", "snapshotting", "done"]));
    assert!(r.kinds.is_empty(), "no snapshot is left");
    assert_eq!(r.world.get("app"), "app v1");
}

#[test]
fn a_journal_that_cannot_be_written_stops_the_run_before_the_command() {
    let mut c = Case::new();
    // 1 = locked, 2 = snapshotting
    c.fail_write = Some(("runs/", 2));
    let r = c.run(&[("app", "app v2")], 0);
    assert_eq!(r.result.as_ref().unwrap_err().0, Kind::Snapshot);
    assert!(!r.events.contains(&"command".to_string()));
    assert_eq!(r.world.get("app"), "app v1");
}

#[test]
fn a_failing_before_hook_snapshots_and_runs_nothing_but_the_after_hooks_run() {
    let mut c = Case::new();
    c.fail_hooks = vec!["stop".into()];
    let r = c.run(&[("app", "app v2")], 0);
    assert_eq!(r.result.as_ref().unwrap_err().0, Kind::Hook);
    assert_eq!(Kind::Hook.exit_code(), 70);
    assert_eq!(r.events, ["before hook stop", "after hook start"]);
    assert_eq!(r.phases, phases(&["locked", "done"]));
    assert_eq!(r.journal.outcome, Some(Outcome::Failed(Kind::Hook)));
    assert!(r.kinds.is_empty());
}

#[test]
fn a_failing_after_hook_is_warned_about_and_changes_no_outcome() {
    let mut c = Case::new();
    c.fail_hooks = vec!["start".into()];
    let r = c.run(&[("app", "app v2")], 3);
    assert_eq!(r.result, Ok(3));
    assert_eq!(r.journal.outcome, Some(Outcome::Restored));
    assert_eq!(r.events.last().unwrap(), "after hook start");
}

/// The wrapped command: writes `writes` into the world and exits `exit`.
pub struct FakeCommand {
    pub world: Arc<World>,
    pub writes: Vec<(String, String)>,
    pub exit: i32,
}

impl Runner for FakeCommand {
    fn run(
        &self,
        _cmd: &[String],
        _log: std::fs::File,
        _ui: &crate::ui::Ui,
        _started: &mut dyn FnMut(u32),
    ) -> anyhow::Result<i32> {
        self.world.event("command");
        for (t, content) in &self.writes {
            self.world.set(t, content);
        }
        Ok(self.exit)
    }
}
