//! `guard key generate [FILE]`: a new store key ([`crate::auth`]).

use std::path::Path;

use crate::error::{Failure, Kind, ResultExt};
use crate::policy::Policy;
use crate::ui::{self, Ui};

/// Write a new key to `file` (0600, never over an existing file).
pub fn generate(file: &Path, ui: &Ui) -> Result<u8, Failure> {
    crate::auth::generate(file).kind(Kind::Usage)?;
    if ui.json {
        ui::print_json(&serde_json::json!({"key_file": file.display().to_string()}));
    } else {
        ui.info(&format!(
            "guard: wrote a new store key to {} (0600). Keep a copy somewhere safe, away from the store: without it guard refuses the snapshots it signed until --trust-unsigned (docs/security.md \"Store key\")",
            file.display()
        ));
    }
    Ok(0)
}

/// Without FILE: the policy's `[store] key_file`.
pub fn generate_for(policy: &Policy, ui: &Ui) -> Result<u8, Failure> {
    match &policy.store_key_file {
        Some(file) => generate(file, ui),
        None => Err(Failure::msg(
            Kind::Usage,
            format!(
                "policy {} has no [store] key_file; name the file: guard key generate FILE",
                policy.name
            ),
        )),
    }
}
