//! `guard schema`: the policy's JSON Schema ([`crate::policy::schema`]), for editors (Taplo's
//! `#:schema` line, which `guard init` writes) and for validating policies in CI.

use crate::error::Failure;

/// The schema as pretty JSON, with a final newline.
pub fn schema_text() -> String {
    let v = crate::policy::schema::schema();
    let mut s = serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string());
    s.push('\n');
    s
}

pub fn schema() -> Result<u8, Failure> {
    crate::ui::to_stdout(&schema_text());
    Ok(0)
}
