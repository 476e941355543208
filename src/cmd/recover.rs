//! `guard recover [--keep]`: close interrupted runs, restoring their pre-run snapshot unless
//! `--keep` ([`crate::restore::recover`]).

use serde_json::json;

use super::Session;
use crate::error::Failure;
use crate::policy::Policy;
use crate::restore::recover;
use crate::ui::{self, Ui};

pub fn recover(policy: &Policy, keep: bool, yes: bool, ui: &Ui) -> Result<u8, Failure> {
    let s = Session::open(policy)?;
    let _lock = s.lock(policy, "guard recover", None, ui)?;
    let done = recover::recover(&s.ctx(policy, ui), keep, yes)?;
    if done.is_empty() {
        ui.info("guard: no interrupted run; nothing to recover");
    }
    if ui.json {
        ui::print_json(&json!({"recovered": done}));
    }
    Ok(0)
}
