//! `guard reindex`: rebuild the catalog from the manifests in the store.

use serde_json::json;

use super::Session;
use crate::error::Failure;
use crate::policy::Policy;
use crate::ui::{self, Ui};

pub fn reindex(policy: &Policy, ui: &Ui) -> Result<u8, Failure> {
    let s = Session::open(policy)?;
    s.catalog.rebuild(s.store())?;
    let n = s.catalog.snapshots(None)?.len();
    if ui.json {
        ui::print_json(&json!({"snapshots": n}));
    } else {
        crate::outln!("catalog rebuilt: {n} snapshot(s) in {}", s.store().location());
    }
    Ok(0)
}
