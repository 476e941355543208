//! `guard check` (also run by `guard --dry-run`): the read-only preflight. Everything a guarded
//! run does before the command, except writing: the policy has targets and its variables are
//! set; every target opens (file, database, bucket) and its tools are found (pg_dump/pg_restore
//! and their version); every table or path an `untouched`/`identical` check names is read; the
//! `sql` and `objects`/`bytes` checks that read a value before the command read it; other
//! sessions that would make a restore refuse are counted; the store can be written and has room.
//!
//! Every problem is reported, not only the first. Exit 0 when the run could start; 64 when the
//! policy is wrong (no targets, an unset variable, a target it cannot describe); 69 when a run
//! would stop before the command (a target, table or tool missing, a query failing, sessions
//! blocking a restore, a store that cannot be written) — the code the run itself would exit.

use std::path::Path;

use serde::Serialize;
use serde_json::json;

use crate::checks::needs_before;
use crate::error::{Failure, Kind};
use crate::policy::{CheckWhat, Policy};
use crate::store::StoreSpec;
use crate::targets::{self, Target};
use crate::ui::{self, Ui};

/// One thing the preflight looked at.
#[derive(Debug, Clone, Serialize)]
pub struct Item {
    pub what: String,
    pub ok: bool,
    pub detail: String,
    /// The exit code this problem means (64 or 69); 0 when it passed.
    #[serde(skip)]
    pub code: u8,
}

fn ok(what: impl Into<String>, detail: impl Into<String>) -> Item {
    Item {
        what: what.into(),
        ok: true,
        detail: detail.into(),
        code: 0,
    }
}

fn bad(code: u8, what: impl Into<String>, detail: impl std::fmt::Display) -> Item {
    Item {
        what: what.into(),
        ok: false,
        detail: crate::secrets::redact(&format!("{detail:#}")),
        code,
    }
}

/// `guard check`: run the preflight, print it, exit 0, 64 or 69.
pub fn check(policy: &Policy, ui: &Ui) -> Result<u8, Failure> {
    let items = preflight(policy);
    if ui.json {
        ui::print_json(&json!({
            "policy": policy.name,
            "ok": items.iter().all(|i| i.ok),
            "items": items,
        }));
    } else {
        print(policy, &items);
    }
    verdict(&items).map_err(|f| if ui.json { f.reported() } else { f })
}

/// Print the preflight as a table on stdout.
pub fn print(policy: &Policy, items: &[Item]) {
    let mut s = format!(
        "preflight of policy {} ({}), read-only:\n",
        policy.name,
        policy.file.display()
    );
    for i in items {
        s.push_str(&format!(
            "  {:<4}  {}: {}\n",
            if i.ok { "ok" } else { "FAIL" },
            i.what,
            i.detail
        ));
    }
    crate::out!("{s}");
}

/// `Ok(0)` when every item passed; otherwise the failure a run would stop with (64 when any
/// problem is the policy's, else 69), counting the problems.
pub fn verdict(items: &[Item]) -> Result<u8, Failure> {
    let failed: Vec<&Item> = items.iter().filter(|i| !i.ok).collect();
    if failed.is_empty() {
        return Ok(0);
    }
    let kind = if failed.iter().any(|i| i.code == 64) {
        Kind::Usage
    } else {
        Kind::Snapshot
    };
    let n = failed.len();
    Err(Failure::msg(
        kind,
        format!(
            "preflight: {n} problem{} ({}); a guarded run would stop before the command",
            if n == 1 { "" } else { "s" },
            failed.iter().map(|i| i.what.as_str()).collect::<Vec<_>>().join(", ")
        ),
    ))
}

/// Everything a run checks before the command, read-only, every problem collected.
pub fn preflight(policy: &Policy) -> Vec<Item> {
    let mut out = Vec::new();
    if policy.targets.is_empty() {
        out.push(bad(64, "policy", "names no target: nothing to protect"));
        return out;
    }
    if let Err(e) = policy.require_env() {
        out.push(bad(64, "variables", e));
        return out;
    }
    let targets = match targets::build_all(&policy.targets) {
        Ok(t) => t,
        Err(e) => {
            out.push(bad(64, "targets", e));
            return out;
        }
    };
    for t in &targets {
        target_items(policy, t.as_ref(), &mut out);
    }
    out.push(store_item(&policy.store));
    out
}

/// A target opens, its tools are found, the tables and before values its checks read can be
/// read, and no session would refuse its restore.
fn target_items(policy: &Policy, t: &dyn Target, out: &mut Vec<Item>) {
    let what = format!("target {}", t.name());
    if let Err(e) = t.preflight() {
        out.push(bad(69, what, e));
        return;
    }
    let mut detail = format!("{} {}", t.kind(), t.source());
    match t.tool_versions() {
        Ok(v) if !v.is_empty() => detail.push_str(&format!(" ({})", v.join(", "))),
        Ok(_) => {}
        Err(e) => {
            out.push(bad(69, what, e));
            return;
        }
    }
    out.push(ok(what, detail));
    let mine = policy.checks.iter().filter(|c| c.target.as_deref() == Some(t.name()));
    let mut items: Vec<String> = Vec::new();
    for c in mine.clone() {
        if let CheckWhat::Untouched(list) | CheckWhat::Identical(list) = &c.what {
            items.extend(list.iter().filter(|i| !items.contains(i)).cloned().collect::<Vec<_>>());
        }
    }
    if !items.is_empty() {
        let what = format!("target {}: fingerprints of {}", t.name(), items.join(", "));
        out.push(match t.fingerprint(&items) {
            Ok(f) => ok(what, format!("read ({} rows)", f.values().map(|f| f.rows).sum::<u64>())),
            Err(e) => bad(69, what, e),
        });
    }
    for c in mine {
        let what = format!("check {:?}", c.name);
        let read = match &c.what {
            CheckWhat::Sql { sql, expect } if needs_before(expect) => t.query(sql),
            CheckWhat::Objects { prefix, expect, .. } if needs_before(expect) => {
                t.objects(prefix).map(|(n, b)| format!("{n} objects, {b} bytes"))
            }
            CheckWhat::Sql { .. } | CheckWhat::Objects { .. } => {
                out.push(ok(what, "read after the command only (not run now)"));
                continue;
            }
            _ => continue,
        };
        out.push(match read {
            Ok(v) => ok(what, format!("before value {v:?}")),
            Err(e) => bad(69, what, e),
        });
    }
    match t.restore_blocked() {
        Ok(None) => {}
        Ok(Some(b)) => out.push(bad(
            69,
            format!("target {}: sessions", t.name()),
            format!(
                "{}: a restore would be refused. Stop the app in a `before` hook, or set `sessions = \"terminate\"` on the target",
                b.summary
            ),
        )),
        Err(e) => out.push(bad(69, format!("target {}: sessions", t.name()), e)),
    }
}

/// The store: a local directory that exists or can be created, writable, with its free space.
fn store_item(spec: &StoreSpec) -> Item {
    let what = format!("store {spec}");
    let StoreSpec::Local(path) = spec else {
        return ok(what, "remote: reached when the run writes to it (not checked here)");
    };
    if path.exists() && !path.is_dir() {
        return bad(69, what, format!("{} is not a directory", path.display()));
    }
    let mut dir: &Path = path;
    while !dir.exists() {
        match dir.parent() {
            Some(p) => dir = p,
            None => break,
        }
    }
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return bad(69, what, "path holds a NUL byte");
    };
    // SAFETY: `c` is a valid C string; access and statvfs only read it.
    let writable = unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) == 0 };
    if !writable {
        return bad(
            69,
            what,
            format!(
                "{} cannot be written (permissions or a read-only file system)",
                dir.display()
            ),
        );
    }
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `st` is a valid out-pointer.
    let free = if unsafe { libc::statvfs(c.as_ptr(), &mut st) } == 0 {
        format!(
            ", {:.1} GiB free",
            (st.f_bavail as f64 * st.f_frsize as f64) / (1u64 << 30) as f64
        )
    } else {
        String::new()
    };
    let created = if path.exists() {
        ""
    } else {
        " (created by the first run)"
    };
    ok(what, format!("writable{free}{created}"))
}
