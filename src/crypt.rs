//! Encryption at rest (issue 16): with `[encryption] recipients` in the policy, every artifact
//! is gzip, then [age](https://age-encryption.org) (X25519 recipients), as it streams into the
//! store (`*.gz.age`): the plaintext never touches the store. The manifest records, per artifact,
//! the recipients' public keys and the checksum of both layers (the stored ciphertext in
//! `bytes`/`sha256`, the gzip inside in `encryption`, the content in `raw_*`).
//!
//! Reading an encrypted artifact's content (restore, drill, deep verify) needs an identity:
//! `[encryption] identity_file`, or `GUARD_AGE_IDENTITY` (the `AGE-SECRET-KEY-1…` itself, or
//! the path of an identity file). Checking the stored bytes (`verify --quick`, the check after
//! a snapshot) and `prune` need none. By hand: `age -d -i key.txt FILE.gz.age | gunzip`.
//!
//! Like the store key ([`crate::auth`]), the settings are the policy's whose store is being
//! opened: [`configure`] is called from `cmd::Session::open`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, RwLock};

use anyhow::{anyhow, bail, Context, Result};

use crate::error::{Failure, Kind};

/// The environment variable naming the identity (the key itself, or a file holding it).
pub const IDENTITY_ENV: &str = "GUARD_AGE_IDENTITY";

/// `[encryption]` of a policy, parsed.
#[derive(Debug, Clone, Default)]
pub struct EncryptionSpec {
    /// The recipients' public keys (`age1…`), from `recipients` and `recipients_file`.
    pub recipients: Vec<String>,
    /// Where the identity (secret key) is, for restores, drills and deep verifies.
    pub identity_file: Option<PathBuf>,
}

impl EncryptionSpec {
    /// Parse one recipient (`age1…`), saying what is wrong.
    pub fn check_recipient(r: &str) -> Result<()> {
        age::x25519::Recipient::from_str(r.trim())
            .map(|_| ())
            .map_err(|e| anyhow!("{r:?} is not an age X25519 recipient (age1…): {e}"))
    }

    /// The recipients of a recipients file: one `age1…` per line, `#` comments.
    pub fn read_recipients_file(path: &Path) -> Result<Vec<String>> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read recipients file {}", path.display()))?;
        let mut out = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let l = line.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            Self::check_recipient(l).with_context(|| format!("{}:{}", path.display(), n + 1))?;
            out.push(l.to_string());
        }
        if out.is_empty() {
            bail!("recipients file {} names no recipient", path.display());
        }
        Ok(out)
    }
}

struct Current {
    recipients: Vec<age::x25519::Recipient>,
    shown: Vec<String>,
    identity_file: Option<PathBuf>,
}

static CURRENT: RwLock<Option<Arc<Current>>> = RwLock::new(None);

/// Use the encryption settings of the policy whose store is being opened.
pub fn configure(spec: Option<&EncryptionSpec>) -> Result<(), Failure> {
    let cur = match spec {
        None => None,
        Some(s) => {
            let mut recipients = Vec::new();
            for r in &s.recipients {
                recipients.push(
                    age::x25519::Recipient::from_str(r)
                        .map_err(|e| Failure::msg(Kind::Usage, format!("encryption recipient {r:?}: {e}")))?,
                );
            }
            Some(Arc::new(Current {
                recipients,
                shown: s.recipients.clone(),
                identity_file: s.identity_file.clone(),
            }))
        }
    };
    *CURRENT.write().expect("encryption lock") = cur;
    Ok(())
}

fn current() -> Option<Arc<Current>> {
    CURRENT.read().expect("encryption lock").clone()
}

/// Does the policy encrypt new artifacts?
pub fn encrypting() -> bool {
    current().is_some_and(|c| !c.recipients.is_empty())
}

/// An identity and where it came from (for messages; never the key).
pub struct Identities {
    pub keys: Vec<age::x25519::Identity>,
    pub from: String,
}

/// Parse the identities in `text` (`AGE-SECRET-KEY-1…` lines, `#` comments), from `from`.
fn parse_identities(text: &str, from: &str) -> Result<Identities> {
    let mut keys = Vec::new();
    for line in text.lines() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        keys.push(
            age::x25519::Identity::from_str(l)
                .map_err(|_| anyhow!("{from} holds a line that is not an age identity (AGE-SECRET-KEY-1…)"))?,
        );
    }
    if keys.is_empty() {
        bail!("{from} holds no age identity (AGE-SECRET-KEY-1…; `age-keygen -o FILE` makes one)");
    }
    Ok(Identities {
        keys,
        from: from.to_string(),
    })
}

/// Read an identity file: a regular file not readable or writable by group or others.
fn read_identity_file(path: &Path) -> Result<Identities> {
    use std::os::unix::fs::PermissionsExt;
    let m = std::fs::metadata(path).with_context(|| format!("cannot read age identity file {}", path.display()))?;
    if !m.is_file() {
        bail!("age identity file {} is not a regular file", path.display());
    }
    let mode = m.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "age identity file {} is readable or writable by others (mode {mode:o}); make it private: chmod 600 {}",
            path.display(),
            path.display()
        );
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read age identity file {}", path.display()))?;
    parse_identities(&text, &format!("age identity file {}", path.display()))
}

/// The identities to decrypt with: `GUARD_AGE_IDENTITY` (the key, or a file), else the
/// policy's `identity_file`; an error saying how to give one when there is none.
pub fn identities() -> Result<Identities> {
    if let Ok(v) = std::env::var(IDENTITY_ENV) {
        let v = v.trim();
        if v.starts_with("AGE-SECRET-KEY-") {
            return parse_identities(v, &format!("${IDENTITY_ENV}"));
        }
        if !v.is_empty() {
            return read_identity_file(Path::new(v));
        }
    }
    match current().and_then(|c| c.identity_file.clone()) {
        Some(p) => read_identity_file(&p),
        None => bail!(
            "it is encrypted (age), and no identity is configured: set [encryption] identity_file in the policy or {IDENTITY_ENV} (the AGE-SECRET-KEY-1… or its file)"
        ),
    }
}

/// For a guarded run (which must be able to restore what it snapshots): with encryption on,
/// an identity must be there and be one of the recipients'. Exit 64 otherwise, before anything.
pub fn require_restorable() -> Result<(), Failure> {
    let Some(c) = current().filter(|c| !c.recipients.is_empty()) else {
        return Ok(());
    };
    let ids = identities().map_err(|e| {
        Failure::msg(
            Kind::Usage,
            format!("the policy encrypts its snapshots and a guarded run restores on failure, so it needs the identity: {e:#}"),
        )
    })?;
    let publics: Vec<String> = ids.keys.iter().map(|k| k.to_public().to_string()).collect();
    if !publics.iter().any(|p| c.shown.contains(p)) {
        return Err(Failure::msg(
            Kind::Usage,
            format!(
                "{} holds no identity of the policy's recipients ({}; it holds {}): a guarded run could not restore what it snapshots",
                ids.from,
                c.shown.join(", "),
                publics.join(", ")
            ),
        ));
    }
    Ok(())
}

/// Wrap `out` in an age encryption stream to the current recipients: the writer, and the
/// recipients' public keys to record.
pub fn encrypt<W: Write>(out: W) -> Result<Option<(age::stream::StreamWriter<W>, Vec<String>)>> {
    let Some(c) = current().filter(|c| !c.recipients.is_empty()) else {
        return Ok(None);
    };
    let enc = age::Encryptor::with_recipients(c.recipients.iter().map(|r| r as &dyn age::Recipient))
        .map_err(|e| anyhow!("cannot encrypt: {e}"))?;
    let w = enc.wrap_output(out).context("starting the age stream")?;
    Ok(Some((w, c.shown.clone())))
}

/// A reader of the plaintext of the age stream `input`, decrypted with [`identities`];
/// `recipients` (from the manifest) name who can decrypt it in the error.
pub fn decrypt<'a, R: Read + 'a>(input: R, recipients: &[String]) -> Result<Box<dyn Read + 'a>> {
    let ids = identities()?;
    let d = age::Decryptor::new(input).map_err(|e| anyhow!("not an age file: {e}"))?;
    let r = d
        .decrypt(ids.keys.iter().map(|k| k as &dyn age::Identity))
        .map_err(|e| match e {
            age::DecryptError::NoMatchingKeys => anyhow!(
                "{} cannot decrypt it: it was encrypted to {}, and no identity given is one of theirs",
                ids.from,
                recipients.join(", ")
            ),
            e => anyhow!("cannot decrypt it: {e}"),
        })?;
    Ok(Box::new(r))
}

#[cfg(test)]
mod tests {
    use super::*;
    use age::secrecy::ExposeSecret;

    #[test]
    fn recipients_and_identities_parse_or_say_why() {
        let id = age::x25519::Identity::generate();
        let public = id.to_public().to_string();
        assert!(EncryptionSpec::check_recipient(&public).is_ok());
        assert!(EncryptionSpec::check_recipient("age1nope").is_err());
        let text = format!(
            "# created: now\n# public key: {public}\n{}\n",
            id.to_string().expose_secret()
        );
        let ids = parse_identities(&text, "t").unwrap();
        assert_eq!(ids.keys.len(), 1);
        assert_eq!(ids.keys[0].to_public().to_string(), public);
        assert!(parse_identities("# nothing\n", "t").is_err());
        assert!(parse_identities("AGE-SECRET-KEY-1XYZ\n", "t").is_err());
    }
}
