//! Artifacts in a store: writing one (gzip + SHA-256 in one pass, committed atomically) and
//! reading one back against the digests its manifest records.

use std::io::{Read, Write};

use anyhow::{bail, Result};

use crate::archive::Compression;
use crate::archive::{self, Compressed};
use crate::manifest::Artifact;
use crate::store::Store;

/// Stream `input` through gzip + SHA-256 into `store` under `key`, with compression `c`.
pub fn write_artifact(
    store: &dyn Store,
    key: String,
    format: &str,
    input: impl Read,
    c: Compression,
) -> Result<Artifact> {
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
    })
}

/// Open the artifact of `rec` with the given format and check the gzip's stored digest and
/// content digest while streaming the content to `sink`.
pub fn read_artifact(store: &dyn Store, a: &Artifact, sink: impl Write + Send) -> Result<()> {
    let input = store.open(&a.key)?;
    let got = archive::decompress(input, sink).map_err(|e| anyhow::anyhow!("{}/{}: {e:#}", store.location(), a.key))?;
    compare_digests(store, a, &got)
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
