//! Artifacts in a store: writing one (gzip + SHA-256 in one pass, committed atomically) and
//! reading one back against the digests its manifest records.

use std::io::{Read, Write};

use anyhow::{bail, Context, Result};

use crate::archive::Compression;
use crate::archive::{self, Compressed};
use crate::manifest::{Artifact, Encryption};
use crate::store::Store;

/// Stream `input` through gzip + SHA-256 into `store` under `key`, with compression `c`.
pub fn write_artifact(
    store: &dyn Store,
    key: String,
    format: &str,
    input: impl Read,
    c: Compression,
) -> Result<Artifact> {
    // A snapshot's stream has no known size until it ends: a spinner with bytes and rate.
    let input = crate::progress::reader(input, &format!("writing {}", file_name(&key)), None);
    if crate::crypt::encrypting() {
        return write_encrypted(store, format!("{key}.age"), format, input, c);
    }
    let upload = store.create(&key)?;
    let (c, upload) = archive::compress(input, upload, c)?;
    upload.commit()?;
    Ok(Artifact {
        key,
        format: format.to_string(),
        bytes: c.stored.bytes,
        sha256: c.stored.sha256,
        raw_bytes: c.raw.bytes,
        raw_sha256: c.raw.sha256,
        encryption: None,
    })
}

/// [`write_artifact`] with the policy's recipients: gzip, then age, then the store, in one
/// stream; each layer hashed as it passes.
fn write_encrypted(store: &dyn Store, key: String, format: &str, input: impl Read, c: Compression) -> Result<Artifact> {
    let upload = archive::HashingWriter::new(store.create(&key)?);
    let (age_w, recipients) = crate::crypt::encrypt(upload)?.ok_or_else(|| anyhow::anyhow!("no recipients"))?;
    let (c, age_w) = archive::compress(input, age_w, c)?;
    let (upload, stored) = age_w.finish().context("finishing the age stream")?.finish();
    upload.commit()?;
    Ok(Artifact {
        key,
        format: format.to_string(),
        bytes: stored.bytes,
        sha256: stored.sha256,
        raw_bytes: c.raw.bytes,
        raw_sha256: c.raw.sha256,
        encryption: Some(Encryption {
            scheme: "age".into(),
            recipients,
            gz_bytes: c.stored.bytes,
            gz_sha256: c.stored.sha256,
        }),
    })
}

/// Open the artifact of `rec` with the given format and check the gzip's stored digest and
/// content digest while streaming the content to `sink`.
pub fn read_artifact(store: &dyn Store, a: &Artifact, sink: impl Write + Send) -> Result<()> {
    let input = store.open(&a.key)?;
    let sink = crate::progress::writer(sink, &format!("reading {}", file_name(&a.key)), Some(a.raw_bytes));
    let Some(e) = &a.encryption else {
        let got =
            archive::decompress(input, sink).map_err(|e| anyhow::anyhow!("{}/{}: {e:#}", store.location(), a.key))?;
        return compare_digests(store, a, &got);
    };
    // Encrypted: the ciphertext is hashed as age reads it, the gzip as gunzip reads it.
    let where_ = format!("{}/{}", store.location(), a.key);
    let mut ct = archive::HashingReader::new(input);
    let result = (|| -> Result<archive::Compressed> {
        let plain = crate::crypt::decrypt(&mut ct, &e.recipients)?;
        archive::decompress(plain, sink)
    })();
    // Read what age left (nothing, for a whole stream) so the ciphertext digest is complete.
    let drained = std::io::copy(&mut ct, &mut std::io::sink());
    let stored = ct.finish();
    if drained.is_ok() && (stored.bytes != a.bytes || stored.sha256 != a.sha256) {
        // Say which is wrong: a changed stored file before a failed decryption.
        bail!("{where_}: SHA-256 mismatch (the stored file is corrupt or was modified)");
    }
    let got = result.map_err(|err| anyhow::anyhow!("{where_}: {err:#}"))?;
    if got.stored.bytes != e.gz_bytes || got.stored.sha256 != e.gz_sha256 {
        bail!("{where_}: the gzip inside the encryption does not match the manifest");
    }
    if got.raw.sha256 != a.raw_sha256 || got.raw.bytes != a.raw_bytes {
        bail!("{where_}: content checksum mismatch after decryption and decompression");
    }
    Ok(())
}

/// The last part of a store key (`snapshots/ID/app.sqlite.gz` → `app.sqlite.gz`), for progress.
fn file_name(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

/// Compare what was read back with what the manifest promises; name the file on mismatch.
pub fn compare_digests(store: &dyn Store, a: &Artifact, got: &Compressed) -> Result<()> {
    let where_ = format!("{}/{}", store.location(), a.key);
    if got.stored.bytes != a.bytes {
        bail!(
            "{where_}: {} bytes, manifest says {} (truncated or replaced)",
            got.stored.bytes,
            a.bytes
        );
    }
    if got.stored.sha256 != a.sha256 {
        bail!("{where_}: SHA-256 mismatch (the stored file is corrupt or was modified)");
    }
    if got.raw.sha256 != a.raw_sha256 || got.raw.bytes != a.raw_bytes {
        bail!("{where_}: content checksum mismatch after decompression");
    }
    Ok(())
}

/// Before a restore or drill touches anything: can every encrypted artifact of `m` be
/// decrypted (an identity is there, and it is one of the recipients')? Reads only each
/// file's header.
pub fn check_decryptable(store: &dyn Store, m: &crate::manifest::Manifest) -> Result<()> {
    for a in m.targets.iter().flat_map(|t| t.artifacts.iter()) {
        if let Some(e) = &a.encryption {
            crate::crypt::decrypt(store.open(&a.key)?, &e.recipients)
                .map(drop)
                .with_context(|| format!("{}/{}", store.location(), a.key))?;
        }
    }
    Ok(())
}
