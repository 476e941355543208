//! `guard restore ID [--target T]... [--no-rescue]`: put a snapshot back over the live targets
//! ([`crate::restore::requested`]).

use serde_json::json;

use super::Session;
use crate::error::{Failure, Kind, ResultExt};
use crate::policy::Policy;
use crate::process::shell_words;
use crate::restore;
use crate::ui::{self, Ui};

pub fn restore(policy: &Policy, id: &str, only: &[String], no_rescue: bool, yes: bool, ui: &Ui) -> Result<u8, Failure> {
    let s = Session::open(policy)?;
    let id = s.resolve(policy, id)?;
    let m = s.catalog.load_manifest(s.store(), &id).kind(Kind::Corrupt)?;
    for o in only {
        if m.target(o).is_none() {
            return Err(Failure::msg(Kind::Usage, format!("snapshot {id} has no target {o:?}")));
        }
    }
    let sub = restore::restrict(&m, only);
    let names: Vec<&str> = sub.targets.iter().map(|t| t.name.as_str()).collect();
    let run_id = crate::manifest::new_id(crate::clock::now());
    let command = ["guard".to_string(), "restore".into(), id.clone()];
    let _lock = s.lock(policy, &shell_words(&command), Some(&run_id), ui)?;
    if !yes
        && !ui.confirm(&format!(
            "guard: replace the live data of {} with snapshot {id}?",
            names.join(", ")
        ))
    {
        return Err(Failure::msg(
            Kind::Declined,
            "not confirmed (pass --yes to restore without asking); nothing was changed",
        ));
    }
    let (j, done, failure) = restore::requested(&s.ctx(policy, ui), &sub, only, no_rescue, &run_id, &command)?;
    if ui.json {
        ui::print_json(
            &json!({"run_id": j.run_id, "snapshot_id": id, "rescue_id": done.rescue_id, "targets": done.targets}),
        );
    }
    match failure {
        None => {
            ui.info(&format!("guard: restored {} from {id} and verified", names.join(", ")));
            Ok(0)
        }
        Some(f) if ui.json => Err(f.reported()),
        Some(f) => Err(f),
    }
}
