//! `guard show ID`: a snapshot's manifest, for people.

use super::Session;
use crate::error::{Failure, Kind, ResultExt};
use crate::policy::Policy;
use crate::ui::{self, Ui};

pub fn show(policy: &Policy, id: &str, ui: &Ui) -> Result<u8, Failure> {
    let s = Session::open(policy)?;
    let store = s.store();
    let id = s.resolve(policy, id)?;
    let m = s.catalog.load_manifest(store, &id).kind(Kind::Corrupt)?;
    if ui.json {
        ui::print_json(&serde_json::to_value(&m)?);
        return Ok(0);
    }
    let mut s = format!("snapshot {} ({}) of policy {}\n", m.id, m.kind.as_str(), m.policy);
    s.push_str(&format!(
        "taken {} → {} on {} by guard {}\n",
        crate::clock::local(m.created_at),
        crate::clock::local(m.completed_at),
        m.host,
        m.guard_version
    ));
    if let Some(l) = &m.label {
        s.push_str(&format!("label: {l}\n"));
    }
    if let Some(c) = &m.command {
        s.push_str(&format!("command: {}\n", crate::process::shell_words(c)));
    }
    if let Some(r) = &m.run_id {
        s.push_str(&format!("run: {r}\n"));
    }
    s.push_str(&crate::auth::describe(m.unauthenticated.as_deref(), m.hmac.is_some()));
    for t in &m.targets {
        s.push_str(&format!(
            "\ntarget {} ({}) {}{}\n",
            t.name,
            t.kind,
            t.source,
            if t.absent { " — absent" } else { "" }
        ));
        for a in &t.artifacts {
            s.push_str(&format!(
                "  {}/{}\n    {} ({} uncompressed) sha256 {}\n",
                store.location(),
                a.key,
                ui::bytes(a.bytes),
                ui::bytes(a.raw_bytes),
                a.sha256
            ));
        }
        for (k, f) in &t.fingerprints {
            s.push_str(&format!("  {k}: {f}\n"));
        }
        if !t.files.is_empty() {
            s.push_str(&format!("  {} entries\n", t.files.len()));
        }
    }
    crate::out!("{}", crate::secrets::redact(&s));
    Ok(0)
}
