//! `guard [--dry-run] [--no-restore] -- COMMAND`: the guarded run ([`crate::run`]).

use super::Session;
use crate::error::{Failure, Kind};
use crate::policy::Policy;
use crate::run::{self, begin, command::Spawn, plan, Options};
use crate::ui::Ui;

pub fn run(policy: &Policy, opts: &Options, ui: &Ui) -> Result<u8, Failure> {
    let targets = begin::targets(policy, opts)?;
    if opts.dry_run {
        // The plan, then the read-only preflight a run does before the command (`guard check`).
        let items = super::check::preflight(policy);
        plan::print_plan(policy, &targets, opts, ui, serde_json::json!({ "preflight": items }));
        if !ui.json {
            super::check::print(policy, &items);
        }
        return super::check::verdict(&items).map_err(|f| if ui.json { f.reported() } else { f });
    }
    begin::preconditions(policy, opts)?;
    // An encrypted policy's run must be able to decrypt what it snapshots: exit 64 otherwise.
    crate::crypt::configure(policy.encryption.as_ref())?;
    crate::crypt::require_restorable()?;
    // A store or catalog that cannot be opened means no snapshot: exit 69, nothing run.
    let s = Session::open(policy).map_err(|f| Failure {
        kind: Kind::Snapshot,
        ..f
    })?;
    run::guarded(&s.ctx(policy, ui), &targets, &Spawn, opts)
}
