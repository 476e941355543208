//! `guard pin ID --reason R` / `guard unpin ID`: keep a snapshot whatever retention says.

use serde_json::json;

use super::Session;
use crate::error::{Failure, Kind};
use crate::policy::Policy;
use crate::retention;
use crate::store::keys;
use crate::ui::{self, Ui};

pub fn pin(policy: &Policy, id: &str, reason: Option<&str>, unpin: bool, ui: &Ui) -> Result<u8, Failure> {
    let s = Session::open(policy)?;
    let store = s.store();
    let id = s.resolve(policy, id)?;
    if unpin {
        if store.size(&keys::pin_key(&id))?.is_none() {
            return Err(Failure::msg(Kind::Usage, format!("snapshot {id} is not pinned")));
        }
        store.remove(&keys::pin_key(&id))?;
        ui.info(&format!("unpinned {id}"));
    } else {
        let reason = reason
            .filter(|r| !r.trim().is_empty())
            .ok_or_else(|| Failure::msg(Kind::Usage, "say why: guard pin ID --reason \"…\""))?;
        let p = retention::Pin {
            id: id.clone(),
            reason: reason.to_string(),
            pinned_at: crate::clock::rfc3339(crate::clock::now()),
        };
        store.put(&keys::pin_key(&id), &serde_json::to_vec_pretty(&p)?)?;
        ui.info(&format!("pinned {id}: {reason}"));
    }
    if ui.json {
        ui::print_json(&json!({"id": id, "pinned": !unpin}));
    }
    Ok(0)
}
