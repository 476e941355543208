//! Wire details: ETag quoting, key and tag encoding, base64 checksums, and the errors of reads
//! pinned to an ETag.

use crate::aws::{sdk_error, status_of};

pub(super) fn unquote(e: &str) -> String {
    e.trim_matches('"').to_string()
}

/// Percent-encode a key for `x-amz-copy-source` (slashes kept).
pub(super) fn encode_key(k: &str) -> String {
    let mut out = String::with_capacity(k.len());
    for b in k.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Percent-encode a tag key or value for `x-amz-tagging`.
pub(super) fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decode standard base64 (the encoding of S3 checksums).
pub(super) fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let s = s.trim().trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        acc = (acc << 6) | val(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// The server's full-object SHA-256 as hex, when it gave one (composite checksums of
/// multipart uploads, `…-N`, are not a hash of the content and are ignored).
pub(super) fn server_sha256(v: Option<&str>) -> Option<String> {
    let v = v?;
    if v.contains('-') {
        return None;
    }
    let raw = base64_decode(v)?;
    (raw.len() == 32).then(|| hex::encode(raw))
}

/// An object that changed or went away between its listing and a copy or read of it: for a
/// snapshot, a reason to list again; for a restore, a clone that is not what it was.
#[derive(Debug)]
pub(super) struct Raced(pub(super) String);

impl std::fmt::Display for Raced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raced {}

/// Whether `e` is (or was caused by) a [`Raced`].
pub(super) fn is_raced(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<Raced>().is_some())
}

/// The error of a read pinned to an ETag: 412 means the object changed under guard, 404 that it
/// is gone (both [`Raced`]).
pub(super) fn read_error<E>(
    bucket: &str,
    key: &str,
    e: aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> anyhow::Error
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match status_of(&e) {
        Some(412) => anyhow::Error::new(Raced(format!(
            "s3://{bucket}/{key} changed while guard was reading it (stop writers with a `before` hook and retry)"
        ))),
        Some(404) => anyhow::Error::new(Raced(format!("s3://{bucket}/{key} no longer exists"))),
        _ => sdk_error(format!("reading s3://{bucket}/{key}"), e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_and_server_checksums() {
        // SHA-256 of "hello", as S3 would return it.
        let b64 = "LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ=";
        assert_eq!(
            server_sha256(Some(b64)).unwrap(),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(
            server_sha256(Some("abc-3")),
            None,
            "composite checksums are not content hashes"
        );
        assert_eq!(server_sha256(None), None);
    }

    #[test]
    fn copy_source_keys_are_encoded() {
        assert_eq!(encode_key("a b/ü+c.jpg"), "a%20b/%C3%BC%2Bc.jpg");
    }
}
