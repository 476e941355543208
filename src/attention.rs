//! What needs attention before guard changes anything again, and which snapshots hold a state
//! guard knows is damaged.
//!
//! A policy needs attention when one of these is pending:
//!
//! - an **interrupted** run or restore (its journal is not `done` and its guard is gone);
//! - a **failed state that stuck**: a run (or restore) that ended after it may have changed the
//!   targets without leaving them in a known state — exit 80 (restore failed, or not automatic),
//!   exit 81 (`--no-restore` kept the failed state), or an error after the command started;
//! - a **damaged journal** (one that cannot be read: what its run did is unknown);
//! - a **failed drill** of the newest snapshot.
//!
//! A failed state stays pending until a later `guard recover` restores or accepts (`--keep`) it,
//! or a `guard restore` of every target succeeds; a failed drill until a newer snapshot exists, a
//! drill of the same snapshot passes, or `guard recover --keep` accepts it. `guard status` lists
//! what is pending first and exits 82; a guarded run is refused with 82.
//!
//! The rules are pure functions of the journals and the catalog's rows, tested below.

use serde_json::json;
use time::OffsetDateTime;

use crate::catalog::{Catalog, DrillRow, SnapshotRow};
use crate::journal::{Damaged, Journal, Journals, Op, Phase};
use crate::manifest::SnapshotKind;
use crate::outcome::Outcome;
use crate::policy::Policy;
use crate::store::Store;

/// One thing that needs attention.
#[derive(Debug, Clone)]
pub enum Item {
    /// A run (or restore) whose guard died before `done`.
    Interrupted(Journal),
    /// A run (or restore) that ended leaving the targets in a failed or unknown state.
    Failed(Journal),
    /// A journal that cannot be read; the pre-run snapshot of its run, when the catalog has one.
    Damaged(Damaged, Option<String>),
    /// The newest snapshot's last drill failed.
    FailedDrill(DrillRow),
}

/// Everything pending for one policy: interrupted (newest first), damaged journals, failed
/// states (newest first), a failed drill.
#[derive(Debug, Clone, Default)]
pub struct Attention {
    pub items: Vec<Item>,
}

impl Attention {
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
    pub fn interrupted(&self) -> impl Iterator<Item = &Journal> {
        self.items.iter().filter_map(|i| match i {
            Item::Interrupted(j) => Some(j),
            _ => None,
        })
    }
    pub fn failed(&self) -> impl Iterator<Item = &Journal> {
        self.items.iter().filter_map(|i| match i {
            Item::Failed(j) => Some(j),
            _ => None,
        })
    }
    pub fn damaged(&self) -> impl Iterator<Item = (&Damaged, Option<&String>)> {
        self.items.iter().filter_map(|i| match i {
            Item::Damaged(d, pre) => Some((d, pre.as_ref())),
            _ => None,
        })
    }
    pub fn failed_drill(&self) -> Option<&DrillRow> {
        self.items.iter().find_map(|i| match i {
            Item::FailedDrill(d) => Some(d),
            _ => None,
        })
    }
}

/// What is pending for `policy` in `store` now.
pub fn assess(store: &dyn Store, catalog: &Catalog, policy: &Policy) -> anyhow::Result<Attention> {
    let journals = crate::journal::read_all(store)?;
    let (held, holder) = crate::lock::inspect(store, &policy.name)?;
    let live = if held { holder.and_then(|h| h.run_id) } else { None };
    let snaps = catalog.snapshots(Some(&policy.name))?;
    let drills = catalog.drills(Some(&policy.name), 1000)?;
    Ok(pending(&policy.name, &journals, live.as_deref(), &snaps, &drills))
}

/// Did `j` leave the targets in a failed or unknown state when it ended?
fn left_failed(j: &Journal) -> bool {
    j.phase == Phase::Done && j.outcome.is_some_and(Outcome::is_failure) && j.may_have_changed_targets()
}

/// Does `j` put the targets in a state the user chose, ending every failure before it?
fn resolves(j: &Journal) -> bool {
    if j.phase != Phase::Done {
        return false;
    }
    match j.outcome {
        Some(Outcome::Accepted | Outcome::KeptAfterInterrupt) => true,
        // A restore of some targets only leaves the others as they were.
        Some(Outcome::Recovered) => j.op != Op::Restore || j.only.is_empty(),
        Some(Outcome::Restored) => j.op == Op::Restore && j.only.is_empty(),
        _ => false,
    }
}

/// The done journals of `policy`, in the order they ended.
fn ended<'a>(policy: &str, journals: &'a [Journal]) -> Vec<&'a Journal> {
    let mut v: Vec<&Journal> = journals
        .iter()
        .filter(|j| j.policy == policy && j.phase == Phase::Done)
        .collect();
    v.sort_by(|a, b| a.updated_at.cmp(&b.updated_at).then_with(|| a.run_id.cmp(&b.run_id)));
    v
}

/// What the journals and the catalog's rows of `policy` leave pending. `live` is the run id of
/// a guard holding the policy's lock now (its journal is not interrupted).
pub fn pending(
    policy: &str,
    journals: &Journals,
    live: Option<&str>,
    snaps: &[SnapshotRow],
    drills: &[DrillRow],
) -> Attention {
    let mut items: Vec<Item> = journals
        .ok
        .iter()
        .rev()
        .filter(|j| j.policy == policy && j.phase != Phase::Done && Some(j.run_id.as_str()) != live)
        .map(|j| Item::Interrupted(j.clone()))
        .collect();
    for d in &journals.damaged {
        if d.policy.as_deref().is_none_or(|p| p == policy) && Some(d.run_id.as_str()) != live {
            let pre = snaps
                .iter()
                .find(|s| s.run_id.as_deref() == Some(&d.run_id) && s.kind == SnapshotKind::PreRun.as_str())
                .map(|s| s.id.clone());
            items.push(Item::Damaged(d.clone(), pre));
        }
    }
    let mut failed: Vec<&Journal> = Vec::new();
    for j in ended(policy, &journals.ok) {
        if resolves(j) {
            failed.clear();
        }
        if left_failed(j) {
            failed.push(j);
        }
    }
    items.extend(failed.into_iter().rev().map(|j| Item::Failed(j.clone())));
    if let Some(d) = failed_drill(policy, &journals.ok, snaps, drills) {
        items.push(Item::FailedDrill(d));
    }
    Attention { items }
}

/// The last drill of the newest snapshot, when it failed and nothing accepted it since.
fn failed_drill(policy: &str, journals: &[Journal], snaps: &[SnapshotRow], drills: &[DrillRow]) -> Option<DrillRow> {
    let newest = snaps.iter().find(|s| s.kind != SnapshotKind::Rescue.as_str())?;
    let last = drills.iter().find(|d| d.snapshot_id == newest.id)?;
    if last.ok {
        return None;
    }
    let at = parse(&last.started_at)?;
    let accepted = ended(policy, journals)
        .iter()
        .any(|j| j.outcome == Some(Outcome::Accepted) && j.updated_at > at);
    (!accepted).then(|| last.clone())
}

fn parse(t: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
}

/// When the targets were in a failed state that `j` left, if it did: from its start until it
/// was resolved (`None`: still unresolved).
fn failed_period(j: &Journal, later: &[&Journal]) -> Option<(OffsetDateTime, Option<OffsetDateTime>)> {
    let touched_phase = matches!(
        j.phase,
        Phase::CommandRunning | Phase::Checking | Phase::Storing | Phase::Swapping | Phase::Rescuing | Phase::Restoring
    );
    if j.phase != Phase::Done {
        return touched_phase.then_some((j.started_at, None));
    }
    // Closed by `guard recover` in place: in a failed state from its start until then.
    if j.op != Op::Recover && matches!(j.outcome, Some(Outcome::Recovered | Outcome::KeptAfterInterrupt)) {
        return Some((j.started_at, Some(j.updated_at)));
    }
    if !left_failed(j) {
        return None;
    }
    let end = later
        .iter()
        .filter(|k| k.updated_at > j.updated_at && k.run_id != j.run_id && resolves(k))
        .map(|k| k.updated_at)
        .min();
    Some((j.started_at, end))
}

/// Why snapshot `s` holds a state guard knows is damaged: it was taken while a run of the
/// policy had left the targets in a failed or unknown state that nothing had resolved yet.
pub fn taken_while_damaged(s: &SnapshotRow, journals: &Journals) -> Option<String> {
    let t = parse(&s.created_at)?;
    let mine: Vec<&Journal> = journals.ok.iter().filter(|j| j.policy == s.policy).collect();
    let done = ended(&s.policy, &journals.ok);
    for j in &mine {
        if s.run_id.as_deref() == Some(j.run_id.as_str()) {
            continue;
        }
        if let Some((from, to)) = failed_period(j, &done) {
            if from < t && to.is_none_or(|to| t < to) {
                return Some(format!("taken while {}", what_was_pending(j)));
            }
        }
    }
    journals
        .damaged
        .iter()
        .filter(|d| d.policy.as_deref().is_none_or(|p| p == s.policy))
        .find(|d| crate::manifest::id_time(&d.run_id).is_some_and(|from| from < t))
        .map(|d| format!("taken after run {}, whose journal is damaged", d.run_id))
}

/// "run X's failed state was kept (exit 81)", for a journal that left a failed state.
fn what_was_pending(j: &Journal) -> String {
    let who = match j.op {
        Op::Run => format!("run {}", j.run_id),
        _ => format!("`{}` ({})", j.command.join(" "), j.run_id),
    };
    match (j.phase, j.outcome) {
        (Phase::Done, Some(Outcome::FailedKept)) => format!("{who}'s failed state was kept (exit 81)"),
        (Phase::Done, Some(Outcome::Recovered | Outcome::KeptAfterInterrupt)) | (_, None) => {
            format!("{who} was interrupted and not yet recovered")
        }
        (_, Some(o)) => format!(
            "{who} had left the targets in a failed state ({o}, exit {})",
            j.exit_code.map(|c| c.to_string()).unwrap_or_else(|| "-".into())
        ),
    }
}

/// The snapshot `guard restore latest` uses: the newest that is not a rescue, did not fail
/// verification or its last drill, and was not taken of a state guard knows is damaged. The
/// newer ones it passed over come with the reason.
pub struct Latest<'a> {
    pub chosen: Option<&'a SnapshotRow>,
    pub skipped: Vec<(&'a SnapshotRow, String)>,
}

/// See [`Latest`]; `snaps` newest first.
pub fn latest<'a>(snaps: &'a [SnapshotRow], journals: &Journals) -> Latest<'a> {
    let mut skipped = Vec::new();
    for s in snaps.iter().filter(|s| s.kind != SnapshotKind::Rescue.as_str()) {
        let why = if s.verified_ok == Some(false) {
            Some("it failed verification".to_string())
        } else if s.drilled_ok == Some(false) {
            Some("it failed its last drill".to_string())
        } else {
            taken_while_damaged(s, journals)
        };
        match why {
            Some(w) => skipped.push((s, w)),
            None => {
                return Latest {
                    chosen: Some(s),
                    skipped,
                }
            }
        }
    }
    Latest { chosen: None, skipped }
}

impl Item {
    /// `interrupted`, `failed`, `damaged_journal` or `failed_drill`.
    pub fn kind(&self) -> &'static str {
        match self {
            Item::Interrupted(_) => "interrupted",
            Item::Failed(_) => "failed",
            Item::Damaged(..) => "damaged_journal",
            Item::FailedDrill(_) => "failed_drill",
        }
    }

    /// A heading for people: what it is and whose.
    pub fn title(&self) -> String {
        match self {
            Item::Interrupted(j) => format!(
                "INTERRUPTED {} (started {}, pid {} on {}), stopped in phase {}",
                subject(j),
                crate::clock::local(j.started_at),
                j.pid,
                j.host,
                j.phase.as_str()
            ),
            Item::Failed(j) => format!(
                "FAILED STATE left by {} (started {}): it ended {} (exit {})",
                subject(j),
                crate::clock::local(j.started_at),
                j.outcome.map(|o| o.as_str()).unwrap_or("-"),
                j.exit_code.map(|c| c.to_string()).unwrap_or_else(|| "-".into())
            ),
            Item::Damaged(d, _) => format!("DAMAGED JOURNAL of run {}: {}", d.run_id, d.location),
            Item::FailedDrill(d) => format!(
                "FAILED DRILL of the newest snapshot {} ({})",
                d.snapshot_id, d.started_at
            ),
        }
    }

    /// What it means for the targets, and what to do (commands for `policy_file`).
    pub fn advice(&self, policy_file: &str) -> (String, String) {
        let recover = format!("guard --policy {policy_file} recover");
        match self {
            Item::Interrupted(j) => advice(j, policy_file),
            Item::Failed(j) => {
                let snap = j.snapshot_id.as_deref().unwrap_or("(none)");
                let rescue = j
                    .rescue_id
                    .as_deref()
                    .map(|r| format!(" The failed state is kept in rescue snapshot {r}."))
                    .unwrap_or_default();
                let msg = j.message.as_deref().map(|m| format!(" ({m})")).unwrap_or_default();
                let state = match (j.op, j.outcome) {
                    (Op::Run, Some(Outcome::FailedKept)) => format!(
                        "the command `{}` failed and --no-restore kept the failed state. The pre-run state is in snapshot {snap}.",
                        j.command.join(" ")
                    ),
                    (Op::Run, _) => format!(
                        "the command `{}` had run, and the targets were not put back{msg}. The pre-run state is in snapshot {snap}.{rescue}",
                        j.command.join(" ")
                    ),
                    _ => format!("the restore of snapshot {snap} did not finish{msg}: targets may be partly restored.{rescue}"),
                };
                (
                    state,
                    format!("{recover}   (rescue snapshot, then restore {snap})\n  or: {recover} --keep   (accept the current state)"),
                )
            }
            Item::Damaged(d, pre) => {
                let state = format!("its journal cannot be read ({}): what that run did to the targets is unknown.", d.error);
                match pre {
                    Some(p) => (
                        format!("{state} Its pre-run snapshot is {p}."),
                        format!("{recover}   (rescue snapshot, then restore {p})\n  or: {recover} --keep   (accept the current state)"),
                    ),
                    None => (
                        format!("{state} guard has no snapshot of that run."),
                        format!("{recover} --keep   (accept the current state; there is nothing to restore)"),
                    ),
                }
            }
            Item::FailedDrill(d) => (
                format!(
                    "the last drill of snapshot {} failed{}: a restore would have to fall back to an older snapshot.",
                    d.snapshot_id,
                    d.report["failure"].as_str().map(|f| format!(" ({f})")).unwrap_or_default()
                ),
                format!(
                    "guard --policy {policy_file} snapshot   (a new snapshot; then `guard drill` it)\n  or: {recover} --keep   (accept, and run anyway)"
                ),
            ),
        }
    }

    /// Why a guarded run is refused, with what to do.
    pub fn refusal(&self, policy: &str, policy_file: &str) -> String {
        let (state, todo) = self.advice(policy_file);
        let todo = todo.replace("\n  or: ", "; or ");
        match self {
            Item::Interrupted(j) => format!(
                "{} of policy {policy} was interrupted in phase {}; nothing was run. {state} `guard status` explains the state; to do: {todo}",
                subject(j),
                j.phase.as_str()
            ),
            _ => format!(
                "policy {policy} needs attention: {}; nothing was run. {state} `guard status` explains the state; to do: {todo}",
                self.title()
            ),
        }
    }

    /// The `--json` form.
    pub fn to_json(&self, policy_file: &str) -> serde_json::Value {
        let (state, todo) = self.advice(policy_file);
        let mut v = match self {
            Item::Interrupted(j) | Item::Failed(j) => json!({
                "run_id": j.run_id, "op": j.op, "phase": j.phase.as_str(), "outcome": j.outcome,
                "exit_code": j.exit_code, "snapshot_id": j.snapshot_id, "rescue_id": j.rescue_id,
            }),
            Item::Damaged(d, pre) => {
                json!({"run_id": d.run_id, "location": d.location, "error": d.error, "snapshot_id": pre})
            }
            Item::FailedDrill(d) => {
                json!({"drill_id": d.id, "snapshot_id": d.snapshot_id, "started_at": d.started_at, "failure": d.report["failure"]})
            }
        };
        v["kind"] = json!(self.kind());
        v["state"] = json!(state);
        v["todo"] = json!(todo);
        v
    }
}

/// "run X", or "`guard restore S` (X)" for a restore.
fn subject(j: &Journal) -> String {
    match j.op {
        Op::Run => format!("run {}", j.run_id),
        _ => format!("`{}` ({})", j.command.join(" "), j.run_id),
    }
}

/// What an interrupted run (or restore) means for the targets, and what to do.
pub fn advice(j: &Journal, policy_file: &str) -> (String, String) {
    let snap = j.snapshot_id.as_deref().unwrap_or("(none)");
    let recover = format!("guard --policy {policy_file} recover");
    if j.op != Op::Run {
        return match j.phase {
            Phase::Rescuing => (
                format!("`{}` was taking a rescue snapshot of the current state; nothing was restored yet.", j.command.join(" ")),
                format!("{recover}   (rescue snapshot, then restore {snap})\n  or: {recover} --keep   (leave the targets as they are)"),
            ),
            Phase::Restoring => (
                format!(
                    "`{}` was interrupted while restoring: targets may be partly restored. The state it replaced is in rescue snapshot {}.",
                    j.command.join(" "),
                    j.rescue_id.as_deref().unwrap_or("(none)")
                ),
                format!("{recover}   (finishes restoring {snap})\n  or: {recover} --keep   (accept the current state)"),
            ),
            Phase::Done => ("finished.".into(), String::new()),
            _ => (
                format!("`{}` stopped before changing anything.", j.command.join(" ")),
                format!("{recover}   (marks it closed; nothing to restore)"),
            ),
        };
    }
    match j.phase {
        Phase::Locked | Phase::Snapshotting | Phase::SnapshotVerified => (
            "guard stopped before the command started: the targets were not touched by it.".into(),
            format!("{recover}   (marks the run closed; nothing to restore)"),
        ),
        Phase::CommandRunning | Phase::Checking | Phase::Storing if !j.pending.is_empty() => (
            format!(
                "the command `{}` had started: the targets may hold its changes. The pre-run state is in the hot copy kept beside {} (.NAME.guard-hot-{} or a guard_hot_ database): snapshot {snap} was still being written into the store.",
                j.command.join(" "),
                j.pending.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(", "),
                j.run_id
            ),
            format!("{recover}   (rescue snapshot, then rename the hot copy back)\n  or: {recover} --keep   (accept the current state; removes the hot copy)"),
        ),
        Phase::CommandRunning | Phase::Checking | Phase::Storing => (
            format!("the command `{}` had started: the targets may hold its changes. The pre-run state is in snapshot {snap}.", j.command.join(" ")),
            format!("{recover}   (rescue snapshot, then restore {snap})\n  or: {recover} --keep   (accept the current state)"),
        ),
        Phase::Swapping | Phase::Rescuing if !j.set_aside.is_empty() => (
            format!(
                "the command failed and guard was restoring by rename: {} may already be back (hot copy renamed into place), the failed state set aside beside it ({}) until a rescue snapshot holds it. The pre-run state is in snapshot {snap}.",
                j.set_aside.join(", "),
                set_aside_where(j)
            ),
            format!("{recover}   (restores {snap}; names the failed state set aside, kept until you delete it)"),
        ),
        Phase::Swapping | Phase::Rescuing => (
            format!("the command failed and guard was taking a rescue snapshot; nothing was restored yet. The pre-run state is in snapshot {snap}."),
            format!("{recover}   (rescue snapshot, then restore {snap})"),
        ),
        Phase::Restoring => (
            format!(
                "a restore of snapshot {snap} was interrupted: targets may be partly restored. The failed state is in rescue snapshot {}.",
                j.rescue_id.as_deref().unwrap_or("(none)")
            ),
            format!("{recover}   (finishes restoring {snap})"),
        ),
        Phase::Done => ("finished.".into(), String::new()),
    }
}

/// Where the failed state of each target in `j.set_aside` was put: the path (or database) the
/// journal recorded for it, or the naming pattern for a journal written before it recorded one.
fn set_aside_where(j: &Journal) -> String {
    let at: Vec<String> = j
        .set_aside
        .iter()
        .map(|name| {
            j.set_aside_at
                .get(name)
                .cloned()
                .unwrap_or_else(|| format!(".NAME.guard-failed-{}", j.run_id))
        })
        .collect();
    at.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Kind;

    /// `2026-12-01T10:MM:00Z`
    fn at(min: i64) -> String {
        format!("2026-12-01T{:02}:{:02}:00Z", 10 + min / 60, min % 60)
    }

    /// A journal of policy `p` started at minute `from` and last written at minute `to`.
    fn journal(id: &str, op: &str, phase: &str, outcome: Option<&str>, touched: bool, from: i64, to: i64) -> Journal {
        serde_json::from_value(json!({
            "run_id": id, "op": op, "policy": "p", "policy_file": "guard.toml", "host": "h", "pid": 1,
            "started_at": at(from), "updated_at": at(to), "phase": phase, "command": ["migrate"],
            "snapshot_id": format!("pre-{id}"), "outcome": outcome, "touched": touched,
        }))
        .unwrap()
    }

    fn run(id: &str, outcome: &str, touched: bool, from: i64, to: i64) -> Journal {
        journal(id, "run", "done", Some(outcome), touched, from, to)
    }

    fn snap(id: &str, kind: &str, run_id: Option<&str>, min: i64) -> SnapshotRow {
        SnapshotRow {
            id: id.into(),
            policy: "p".into(),
            kind: kind.into(),
            label: None,
            run_id: run_id.map(str::to_string),
            created_at: at(min),
            targets: "app".into(),
            bytes: 1,
            raw_bytes: 1,
            verified_at: None,
            verified_ok: None,
            drilled_ok: None,
        }
    }

    fn drill(id: &str, snapshot: &str, ok: bool, min: i64) -> DrillRow {
        DrillRow {
            id: id.into(),
            policy: "p".into(),
            snapshot_id: snapshot.into(),
            started_at: at(min),
            seconds: 1.0,
            ok,
            report: json!({"failure": if ok { serde_json::Value::Null } else { json!("payments restored 0 rows") }}),
        }
    }

    fn of(ok: Vec<Journal>) -> Journals {
        Journals {
            ok,
            damaged: Vec::new(),
        }
    }

    /// The kinds and run ids pending.
    fn pending_ids(j: &Journals, snaps: &[SnapshotRow], drills: &[DrillRow]) -> Vec<String> {
        pending("p", j, None, snaps, drills)
            .items
            .iter()
            .map(|i| match i {
                Item::Interrupted(j) | Item::Failed(j) => format!("{} {}", i.kind(), j.run_id),
                Item::Damaged(d, _) => format!("{} {}", i.kind(), d.run_id),
                Item::FailedDrill(d) => format!("{} {}", i.kind(), d.snapshot_id),
            })
            .collect()
    }

    #[test]
    fn kept_restored_and_early_failures_need_nothing() {
        let j = of(vec![
            run("r1", "kept", true, 0, 1),
            run("r2", "restored", true, 2, 3),
            run("r3", "snapshot_failed", false, 4, 5),
            run("r4", "hook_failed", false, 6, 7),
        ]);
        assert!(pending_ids(&j, &[], &[]).is_empty());
    }

    #[test]
    fn a_failed_state_sticks_until_recover_restores_or_accepts_it() {
        for stuck in ["failed-kept", "restore_failed", "internal"] {
            let mut v = vec![run("r1", stuck, true, 0, 1)];
            assert_eq!(pending_ids(&of(v.clone()), &[], &[]), ["failed r1"], "{stuck}");
            // A later guarded run (guard before the failure stuck) does not end it: its
            // pre-run snapshot was of the failed state.
            v.push(run("r2", "kept", true, 2, 3));
            assert_eq!(pending_ids(&of(v.clone()), &[], &[]), ["failed r1"], "{stuck}");
            for closing in ["recovered", "accepted"] {
                let mut w = v.clone();
                w.push(journal("k", "recover", "done", Some(closing), true, 4, 5));
                assert!(pending_ids(&of(w), &[], &[]).is_empty(), "{stuck} {closing}");
            }
        }
    }

    #[test]
    fn a_failed_recovery_stays_pending_with_what_it_recovered() {
        let j = of(vec![
            run("r1", "failed-kept", true, 0, 1),
            journal("k1", "recover", "done", Some("restore_failed"), true, 2, 3),
        ]);
        assert_eq!(pending_ids(&j, &[], &[]), ["failed k1", "failed r1"], "newest first");
    }

    #[test]
    fn a_restore_of_every_target_ends_a_failed_state_a_partial_one_does_not() {
        let mut partial = journal("s1", "restore", "done", Some("restored"), true, 2, 3);
        partial.only = vec!["app".into()];
        let v = vec![run("r1", "restore_failed", true, 0, 1), partial];
        assert_eq!(pending_ids(&of(v.clone()), &[], &[]), ["failed r1"]);
        let mut w = v;
        w.push(journal("s2", "restore", "done", Some("restored"), true, 4, 5));
        assert!(pending_ids(&of(w), &[], &[]).is_empty());
        // A restore that failed after it began is a failed state of its own.
        let j = of(vec![journal(
            "s3",
            "restore",
            "done",
            Some("restore_failed"),
            true,
            0,
            1,
        )]);
        assert_eq!(pending_ids(&j, &[], &[]), ["failed s3"]);
        // One whose rescue failed changed nothing.
        let j = of(vec![journal(
            "s4",
            "restore",
            "done",
            Some("restore_failed"),
            false,
            0,
            1,
        )]);
        assert!(pending_ids(&j, &[], &[]).is_empty());
    }

    #[test]
    fn journals_written_before_touched_existed_count_by_the_command_exit() {
        let mut old = run("r1", "failed-kept", false, 0, 1);
        assert!(pending_ids(&of(vec![old.clone()]), &[], &[]).is_empty());
        old.command_exit = Some(3);
        assert_eq!(pending_ids(&of(vec![old]), &[], &[]), ["failed r1"]);
    }

    #[test]
    fn an_interrupted_run_is_pending_unless_its_guard_still_runs() {
        let j = of(vec![journal("r1", "run", "checking", None, true, 0, 1)]);
        assert_eq!(pending_ids(&j, &[], &[]), ["interrupted r1"]);
        assert!(pending("p", &j, Some("r1"), &[], &[]).is_empty());
        let other = of(vec![Journal {
            policy: "q".into(),
            ..journal("r1", "run", "checking", None, true, 0, 1)
        }]);
        assert!(pending_ids(&other, &[], &[]).is_empty(), "another policy's");
    }

    #[test]
    fn a_damaged_journal_is_pending_for_its_policy_or_every_policy_when_unknown() {
        let damaged = |policy: Option<&str>| Journals {
            ok: Vec::new(),
            damaged: vec![Damaged {
                run_id: "r9".into(),
                location: "backups/runs/r9/journal.json".into(),
                error: "EOF while parsing".into(),
                policy: policy.map(str::to_string),
            }],
        };
        let snaps = [snap("s9", "pre-run", Some("r9"), 0)];
        assert_eq!(pending_ids(&damaged(Some("p")), &snaps, &[]), ["damaged_journal r9"]);
        assert_eq!(pending_ids(&damaged(None), &snaps, &[]), ["damaged_journal r9"]);
        assert!(pending_ids(&damaged(Some("q")), &snaps, &[]).is_empty());
        match &pending("p", &damaged(None), None, &snaps, &[]).items[0] {
            Item::Damaged(_, pre) => assert_eq!(pre.as_deref(), Some("s9"), "its pre-run snapshot"),
            i => panic!("{i:?}"),
        }
    }

    #[test]
    fn a_failed_drill_of_the_newest_snapshot_is_pending_until_a_newer_one_or_acceptance() {
        let snaps = vec![snap("s2", "manual", None, 10), snap("s1", "pre-run", Some("r1"), 0)];
        let failed = [drill("d1", "s2", false, 20)];
        assert_eq!(pending_ids(&of(vec![]), &snaps, &failed), ["failed_drill s2"]);
        let passed_again = [drill("d2", "s2", true, 30), drill("d1", "s2", false, 20)];
        assert!(pending_ids(&of(vec![]), &snaps, &passed_again).is_empty());
        let older_failed = [drill("d1", "s1", false, 20)];
        assert!(
            pending_ids(&of(vec![]), &snaps, &older_failed).is_empty(),
            "not the newest"
        );
        let rescue_newer = [vec![snap("s3", "rescue", None, 25)], snaps.clone()].concat();
        assert_eq!(pending_ids(&of(vec![]), &rescue_newer, &failed), ["failed_drill s2"]);
        let accepted = of(vec![journal("k", "recover", "done", Some("accepted"), false, 21, 22)]);
        assert!(pending_ids(&accepted, &snaps, &failed).is_empty());
        let accepted_before = of(vec![journal("k", "recover", "done", Some("accepted"), false, 11, 12)]);
        assert_eq!(pending_ids(&accepted_before, &snaps, &failed), ["failed_drill s2"]);
        assert_eq!(Kind::NeedsAttention.exit_code(), 82);
    }

    #[test]
    fn snapshots_taken_while_a_failed_state_was_pending_are_known_damaged() {
        let j = of(vec![
            run("r1", "failed-kept", true, 10, 11),
            journal("k", "recover", "done", Some("accepted"), false, 30, 31),
            journal("r2", "run", "done", Some("recovered"), true, 40, 50),
        ]);
        let before = snap("s0", "manual", None, 5);
        let own = snap("s1", "pre-run", Some("r1"), 10);
        let during = snap("s2", "manual", None, 20);
        let after = snap("s3", "manual", None, 35);
        let interrupted = snap("s4", "manual", None, 45);
        assert_eq!(taken_while_damaged(&before, &j), None);
        assert_eq!(taken_while_damaged(&own, &j), None, "its own pre-run snapshot");
        assert_eq!(
            taken_while_damaged(&during, &j).as_deref(),
            Some("taken while run r1's failed state was kept (exit 81)")
        );
        assert_eq!(taken_while_damaged(&after, &j), None, "accepted since");
        assert_eq!(
            taken_while_damaged(&interrupted, &j).as_deref(),
            Some("taken while run r2 was interrupted and not yet recovered"),
            "r2 was closed in place at minute 50"
        );
    }

    #[test]
    fn latest_passes_over_what_a_restore_cannot_trust() {
        let j = of(vec![run("r1", "failed-kept", true, 10, 11)]);
        let mut bad_verify = snap("s5", "manual", None, 3);
        bad_verify.verified_ok = Some(false);
        let mut bad_drill = snap("s4", "manual", None, 2);
        bad_drill.drilled_ok = Some(false);
        let snaps = vec![
            snap("s7", "rescue", Some("r1"), 12),
            snap("s6", "pre-run", Some("r2"), 20),
            bad_verify,
            bad_drill,
            snap("s1", "pre-run", Some("r1"), 1),
        ];
        let l = latest(&snaps, &j);
        assert_eq!(l.chosen.map(|s| s.id.as_str()), Some("s1"));
        let skipped: Vec<(&str, &str)> = l.skipped.iter().map(|(s, w)| (s.id.as_str(), w.as_str())).collect();
        assert_eq!(
            skipped,
            [
                ("s6", "taken while run r1's failed state was kept (exit 81)"),
                ("s5", "it failed verification"),
                ("s4", "it failed its last drill"),
            ]
        );
        assert!(latest(&snaps[..1], &j).chosen.is_none(), "a rescue is never latest");
    }
}
