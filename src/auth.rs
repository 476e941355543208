//! Authenticated store objects (issue 16): with a store key (`[store] key_file`, or the key
//! itself in `GUARD_STORE_KEY`), every manifest and journal guard writes carries an
//! HMAC-SHA256 over its canonical bytes (the object serialized without its `hmac` field, after
//! a domain string), and one read back without a valid one is refused where guard would act on
//! it (restore, recover, drill; `verify` reports it), unless `--trust-unsigned` says to use it
//! anyway. A manifest lists every artifact's SHA-256, so its HMAC authenticates the artifacts too.
//!
//! The key is the policy's store's: [`configure`] is called when a policy's store is opened
//! (`cmd::Session::open`), so with `--all` each policy uses its own.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use anyhow::{bail, Context, Result};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::{Failure, Kind};

/// The environment variable holding the key itself (64 hex digits), for when no `key_file` is set.
pub const KEY_ENV: &str = "GUARD_STORE_KEY";

/// Domain strings: a journal's HMAC never passes for a manifest's.
pub const MANIFEST: &str = "guard-manifest-v1";
pub const JOURNAL: &str = "guard-journal-v1";

/// A store key: 32 bytes, and where it came from (for messages; never the key).
pub struct StoreKey {
    bytes: [u8; 32],
    pub from: String,
}

static CURRENT: RwLock<Option<Arc<StoreKey>>> = RwLock::new(None);
static TRUST_UNSIGNED: AtomicBool = AtomicBool::new(false);

/// `--trust-unsigned`: unsigned or mis-signed objects are used, with a warning each.
pub fn set_trust_unsigned(on: bool) {
    TRUST_UNSIGNED.store(on, Ordering::SeqCst);
}

/// Parse a key's text: 64 hex digits (surrounding whitespace ignored).
pub fn parse_key(text: &str, from: &str) -> Result<StoreKey> {
    let t = text.trim();
    let bytes = hex::decode(t).ok().and_then(|b| <[u8; 32]>::try_from(b).ok());
    match bytes {
        Some(bytes) => Ok(StoreKey {
            bytes,
            from: from.to_string(),
        }),
        None => bail!("{from} is not a guard store key (64 hex digits; `guard key generate FILE` makes one)"),
    }
}

/// Read a key file: a regular file not readable or writable by group or others.
pub fn read_key_file(path: &Path) -> Result<StoreKey> {
    use std::os::unix::fs::PermissionsExt;
    let m = std::fs::metadata(path).with_context(|| format!("cannot read store key file {}", path.display()))?;
    if !m.is_file() {
        bail!("store key file {} is not a regular file", path.display());
    }
    let mode = m.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "store key file {} is readable or writable by others (mode {mode:o}); make it private: chmod 600 {}",
            path.display(),
            path.display()
        );
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read store key file {}", path.display()))?;
    parse_key(&text, &format!("store key file {}", path.display()))
}

/// Use the key of the policy whose store is being opened: its `key_file`, else
/// `GUARD_STORE_KEY`, else none. A key that cannot be read is a usage error (exit 64).
pub fn configure(key_file: Option<&Path>) -> Result<(), Failure> {
    let key = match key_file {
        Some(p) => Some(read_key_file(p).map_err(|e| Failure::new(Kind::Usage, e))?),
        None => match std::env::var(KEY_ENV) {
            Ok(v) if !v.trim().is_empty() => {
                Some(parse_key(&v, &format!("${KEY_ENV}")).map_err(|e| Failure::new(Kind::Usage, e))?)
            }
            _ => None,
        },
    };
    *CURRENT.write().expect("key lock") = key.map(Arc::new);
    Ok(())
}

/// Is a store key configured (so a manifest that passed [`check`] was written by guard)?
pub fn has_key() -> bool {
    current().is_some()
}

fn current() -> Option<Arc<StoreKey>> {
    CURRENT.read().expect("key lock").clone()
}

fn mac(key: &StoreKey, domain: &str, bytes: &[u8]) -> Hmac<Sha256> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&key.bytes).expect("any key length");
    m.update(domain.as_bytes());
    m.update(&[0]);
    m.update(bytes);
    m
}

/// The HMAC (hex) of `canonical` under the current key, or `None` without a key.
pub fn sign(domain: &str, canonical: &[u8]) -> Option<String> {
    current().map(|k| hex::encode(mac(&k, domain, canonical).finalize().into_bytes()))
}

/// Check `tag` over `canonical`: `None` when it is good or there is no key to check with,
/// else why not, naming `what` (the file).
pub fn check(domain: &str, canonical: &[u8], tag: Option<&str>, what: &str) -> Option<String> {
    let key = current()?;
    let Some(tag) = tag else {
        return Some(format!(
            "{what} is not signed, but the store has a key ({}); it was not written by a guard holding the key (planted, or older than the key)",
            key.from
        ));
    };
    let ok = hex::decode(tag)
        .ok()
        .is_some_and(|t| mac(&key, domain, canonical).verify_slice(&t).is_ok());
    if ok {
        None
    } else {
        Some(format!(
            "{what}: its signature does not match the store key ({}); it was changed after guard wrote it, or signed with another key",
            key.from
        ))
    }
}

/// One line for `guard show`: whether the store key authenticates the manifest.
pub fn describe(problem: Option<&str>, signed: bool) -> String {
    match (problem, signed, current().is_some()) {
        (Some(p), _, _) => format!("NOT AUTHENTICATED: {p}; restore, recover and drill refuse it\n"),
        (None, true, true) => "signature: valid (store key)\n".to_string(),
        (None, true, false) => "signature: present, not checked (no store key configured)\n".to_string(),
        (None, false, _) => String::new(),
    }
}

/// Act on an object whose check said `problem`: fine when there is none; with
/// `--trust-unsigned` a warning; otherwise exit 65, naming it and what to do.
pub fn require(problem: Option<&str>) -> Result<(), Failure> {
    let Some(p) = problem else { return Ok(()) };
    if TRUST_UNSIGNED.load(Ordering::SeqCst) {
        crate::ui::to_stderr(&format!("guard: warning: {p}; used anyway (--trust-unsigned)\n"));
        return Ok(());
    }
    Err(Failure::msg(
        Kind::Corrupt,
        format!(
            "{p}; refusing to use it. If you trust it (say the key was lost or replaced), run again with --trust-unsigned; docs/security.md \"Store key\" says how to restore by hand"
        ),
    ))
}

/// `guard key generate FILE`: 32 random bytes as hex, written to a new file 0600 (never over
/// an existing one).
pub fn generate(path: &Path) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {} (guard never overwrites a key file)", path.display()))?;
    f.write_all(format!("{}\n", hex::encode(bytes)).as_bytes())?;
    f.sync_all()?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::store::local::sync_dir(dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_only_as_64_hex_digits() {
        assert!(parse_key(&"ab".repeat(32), "t").is_ok());
        assert!(parse_key(&format!(" {}\n", "0f".repeat(32)), "t").is_ok());
        for bad in ["", "abc", &"ab".repeat(31), &"zz".repeat(32), &"ab".repeat(33)] {
            assert!(parse_key(bad, "t").is_err(), "{bad:?}");
        }
    }
}
