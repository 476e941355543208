//! `guard recover [--keep]`: deal with everything that needs attention
//! ([`crate::restore::recover`]).

use serde_json::json;

use super::Session;
use crate::error::Failure;
use crate::policy::Policy;
use crate::restore::recover;
use crate::ui::{self, Ui};

pub fn recover(policy: &Policy, keep: bool, yes: bool, ui: &Ui) -> Result<u8, Failure> {
    let s = Session::open(policy)?;
    let _lock = s.lock(
        policy,
        if keep { "guard recover --keep" } else { "guard recover" },
        None,
        ui,
    )?;
    let done = recover::recover(&s.ctx(policy, ui), keep, yes)?;
    if done.is_empty() {
        ui.info("guard: nothing needs attention; nothing to recover");
    }
    if ui.json {
        ui::print_json(&json!({"recovered": done}));
    }
    Ok(0)
}
